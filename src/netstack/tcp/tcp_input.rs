//! SEGMENT ARRIVES (RFC 9293 §3.10.7), split by its steps and named after
//! Linux `tcp_input.c`:
//!
//! - LISTEN (§3.10.7.2): [`Stack::tcp_listen_rcv`] → `tcp_conn_request`,
//!   SYN cookies (RFC 4987) when the SYN queue is full;
//! - SYN-SENT (§3.10.7.3): `tcp_rcv_synsent_state_process`;
//! - the other states (§3.10.7.4): `tcp_rcv_state_process` runs
//!   `tcp_validate_incoming` (step 1 sequence + PAWS, step 2 RST with RFC
//!   5961 §3, step 4 SYN with RFC 5961 §4), `tcp_ack` (step 5, RFC 5961
//!   §5 ACK-value check), the state changes an ACK causes, `tcp_data_queue`
//!   (step 7) and `tcp_fin` (step 8).

use std::net::SocketAddr;

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

use super::syncookies::{CookieOpts, cookie_check, cookie_decode_tsecr};
use super::{
    At, ConnKey, Seq, Tcb, TcpError, TcpState, TcpTable, default_mss, seq_add, seq_diff, seq_le,
    seq_lt,
};
use crate::netstack::{DropReason, Duration, Instant, Mib, SocketEvent, Stack};

/// An arriving segment, parsed (the options of interest pulled out).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub seq: Seq,
    pub ack: Option<Seq>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub wnd: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_perm: bool,
    pub sacks: [Option<(u32, u32)>; 3],
    /// (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    pub payload: &'a [u8],
}

impl<'a> Seg<'a> {
    pub fn new(local: SocketAddr, remote: SocketAddr, r: &TcpRepr<'a>) -> Self {
        Seg {
            local,
            remote,
            seq: r.seq_number,
            ack: r.ack_number,
            syn: r.control == TcpControl::Syn,
            fin: r.control == TcpControl::Fin,
            rst: r.control == TcpControl::Rst,
            wnd: r.window_len,
            mss: r.max_seg_size,
            wscale: r.window_scale,
            sack_perm: r.sack_permitted,
            sacks: r.sack_ranges,
            ts: r.timestamp.map(|t| (t.tsval, t.tsecr)),
            payload: r.payload,
        }
    }

    /// SEG.LEN: data plus one for SYN and one for FIN.
    #[inline]
    pub fn len(&self) -> u32 {
        self.payload.len() as u32 + self.syn as u32 + self.fin as u32
    }

    #[inline]
    pub fn end_seq(&self) -> Seq {
        seq_add(self.seq, self.len())
    }
}

/// Result of step 5 (`tcp_ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckRes {
    /// Acceptable (new data acknowledged or a duplicate).
    Ok,
    /// Older than SND.UNA but within the window: ignored, the segment goes
    /// on (Linux "old ack").
    Old,
    /// RFC 5961 §5: outside [SND.UNA − MAX.SND.WND, SND.NXT].
    Bad(DropReason),
}

impl Stack {
    // ----- LISTEN (RFC 9293 §3.10.7.2) -----

    /// A segment for a listener (Linux `tcp_v4_do_rcv` in LISTEN +
    /// `tcp_conn_request`): RST ignored (a forged RST cannot close a
    /// listener), an ACK answered with RST unless it carries a valid SYN
    /// cookie, a SYN creates a half-open connection. `isn`: the ISN chosen
    /// by TIME_WAIT reuse.
    pub(crate) fn tcp_listen_rcv(
        &mut self,
        now: Instant,
        lslot: u32,
        seg: &Seg<'_>,
        isn: Option<Seq>,
    ) {
        if seg.rst {
            self.drop_pkt(DropReason::TcpListenRst, None);
            return;
        }
        if seg.ack.is_some() {
            if !seg.syn
                && self.tcp_cookie_recent(now, lslot)
                && self.tcp_cookie_ack(now, lslot, seg)
            {
                return;
            }
            self.drop_pkt(DropReason::TcpListenAck, None);
            self.tcp_v4_send_reset(now, seg);
            return;
        }
        if !seg.syn {
            self.drop_pkt(DropReason::TcpFlags, None);
            return;
        }
        self.tcp_conn_request(now, lslot, seg, isn);
    }

    /// Were cookies sent on this listener in the last 2 minutes (Linux
    /// `tcp_synq_no_recent_overflow`)? Only then is an ACK checked as one.
    fn tcp_cookie_recent(&self, now: Instant, lslot: u32) -> bool {
        self.tcp.lim.syncookies
            && self
                .tcp
                .get(lslot)
                .and_then(|l| l.listen.as_ref())
                .and_then(|q| q.last_overflow)
                .is_some_and(|t| now < t + Duration::from_secs(120))
    }

    /// Linux `tcp_conn_request`: accept queue full → ListenOverflows +
    /// ListenDrops; SYN queue (or the connection cap) full → a SYN cookie
    /// (SyncookiesSent) or ListenDrops; otherwise a SYN_RECEIVED child and
    /// a SYN-ACK. Data on the SYN is not delivered (no TFO): RCV.NXT stays
    /// at ISN + 1, so the peer sends it again after the handshake.
    fn tcp_conn_request(&mut self, now: Instant, lslot: u32, seg: &Seg<'_>, isn: Option<Seq>) {
        let at_cap = self.tcp.count >= self.tcp.lim.max_conns;
        let cookies = self.tcp.lim.syncookies;
        let Some(q) = self.tcp.get_mut(lslot).and_then(|l| l.listen.as_mut()) else {
            return;
        };
        if q.accept.len() >= q.backlog {
            self.counters.inc(Mib::TcpExtListenOverflows);
            self.drop_pkt(DropReason::TcpListenOverflow, Some(Mib::TcpExtListenDrops));
            return;
        }
        if q.syn.len() >= q.syn_max || at_cap {
            if cookies {
                q.last_overflow = Some(now);
                self.tcp_send_cookie_synack(now, seg);
                return;
            }
            self.drop_pkt(DropReason::TcpSynQueueFull, Some(Mib::TcpExtListenDrops));
            return;
        }
        let iss = isn.unwrap_or_else(|| self.tcp.isn(now, seg.local, seg.remote));
        let opts = seg.ts.map(|_| CookieOpts {
            wscale: seg.wscale,
            sack: seg.sack_perm,
        });
        let Some(child) = self.tcp_create_openreq_child(
            now,
            lslot,
            seg,
            seg.seq,
            iss,
            seg.mss.unwrap_or(default_mss(seg.remote.is_ipv6())),
            opts.map_or(
                CookieOpts {
                    wscale: seg.wscale,
                    sack: seg.sack_perm,
                },
                |o| o,
            ),
        ) else {
            return;
        };
        if let Some(q) = self.tcp.get_mut(lslot).and_then(|l| l.listen.as_mut()) {
            q.syn.push(child);
        }
        self.tcp_send_synack(now, child);
        self.tcp_arm(child);
    }

    /// A child in SYN_RECEIVED (Linux builds a request sock; here it is a
    /// TCB without buffers, counted in the listener's SYN queue).
    #[allow(clippy::too_many_arguments)]
    fn tcp_create_openreq_child(
        &mut self,
        now: Instant,
        lslot: u32,
        seg: &Seg<'_>,
        irs: Seq,
        iss: Seq,
        peer_mss: u16,
        o: CookieOpts,
    ) -> Option<u32> {
        let (local, remote) = (seg.local, seg.remote);
        let mut t = self.tcp.new_tcb(now, TcpState::SynReceived, local, remote);
        t.irs = irs;
        t.rcv_nxt = seq_add(irs, 1);
        t.iss = iss;
        t.snd_una = iss;
        t.snd_nxt = iss;
        t.snd_max = iss;
        t.snd_wnd = seg.wnd as u32;
        t.max_wnd = t.snd_wnd;
        t.snd_wl1 = seg.seq;
        t.snd_wl2 = iss;
        if let Some(w) = o.wscale {
            t.ws_ok = true;
            t.snd_wscale = w.min(14);
            t.rcv_wscale = self.tcp.our_wscale();
        }
        t.sack_ok = o.sack;
        if let Some((tsval, _)) = seg.ts {
            t.ts_ok = true;
            t.ts_recent = tsval;
            t.ts_recent_at = now;
        }
        self.tcp_set_mss(now, &mut t, peer_mss);
        t.parent = Some(lslot);
        let slot = self.tcp.insert(t);
        self.tcp.conns.insert(ConnKey::new(local, remote), slot);
        self.tcp.port_ref(local);
        Some(slot)
    }

    /// Send MSS: the peer's option clamped to the route MTU, less the
    /// timestamp option when used (Linux `tcp_sync_mss` / `mss_cache`).
    /// The congestion controller starts here, once the MSS is known
    /// (initial window 10 segments, RFC 6928, as Linux `tcp_init_transfer`).
    pub(crate) fn tcp_set_mss(&self, now: Instant, t: &mut Tcb, peer_mss: u16) {
        let v6 = t.remote.is_ipv6();
        let mut route = self.tcp_route_mss(v6);
        if t.pmtu != 0 {
            route = route.min(super::mss_for_mtu(usize::from(t.pmtu), v6));
        }
        let mut mss = peer_mss.min(route).max(64);
        if t.ts_ok {
            mss -= 12;
        }
        t.mss = mss;
        t.cc = super::congestion::Congestion::new(self.tcp.cc_kind, mss as u32, now);
    }

    /// A SYN-ACK whose ISN is a cookie (RFC 4987, Linux
    /// `cookie_v4_init_sequence`): no state kept. The peer's MSS is encoded
    /// in the ISN; its window scale and SACK in the low bits of our TSval
    /// (only when it sent timestamps, as Linux). SyncookiesSent.
    fn tcp_send_cookie_synack(&mut self, now: Instant, seg: &Seg<'_>) {
        let peer_mss = seg.mss.unwrap_or(default_mss(seg.remote.is_ipv6()));
        let (isn, _mss) = super::syncookies::cookie_init_sequence(
            &self.tcp.cookie,
            seg.remote,
            seg.local,
            seg.seq,
            peer_mss,
            now,
        );
        let ts_off = self.tcp.ts_off(seg.local, seg.remote);
        let ts = seg.ts.map(|(tsval, _)| {
            let v = super::syncookies::cookie_tsval(
                TcpTable::tsval(now, ts_off),
                CookieOpts {
                    wscale: seg.wscale,
                    sack: seg.sack_perm,
                },
            );
            smoltcp::wire::TcpTimestampRepr::new(v, tsval)
        });
        let with_opts = ts.is_some();
        let repr = TcpRepr {
            src_port: seg.local.port(),
            dst_port: seg.remote.port(),
            control: TcpControl::Syn,
            seq_number: isn,
            ack_number: Some(seq_add(seg.seq, 1)),
            window_len: self.tcp.lim.rmem.min(65535) as u16,
            window_scale: (with_opts && seg.wscale.is_some()).then(|| self.tcp.our_wscale()),
            max_seg_size: Some(self.tcp_route_mss(seg.remote.is_ipv6())),
            sack_permitted: with_opts && seg.sack_perm,
            sack_ranges: [None; 3],
            timestamp: ts,
            payload: &[],
        };
        if self.tcp_emit(now, seg.local, seg.remote, &repr).is_ok() {
            self.counters.inc(Mib::TcpOutSegs);
        }
        self.counters.inc(Mib::TcpExtSyncookiesSent);
    }

    /// An ACK to a listener that may complete a cookie handshake (Linux
    /// `cookie_v4_check`): valid → a child created straight from the ACK
    /// (SyncookiesRecv) and the segment processed by it; invalid →
    /// SyncookiesFailed and false (the caller answers with RST).
    fn tcp_cookie_ack(&mut self, now: Instant, lslot: u32, seg: &Seg<'_>) -> bool {
        let Some(ack) = seg.ack else {
            return false;
        };
        let cookie = seq_add(ack, u32::MAX);
        let peer_isn = seq_add(seg.seq, u32::MAX);
        let Some(mss) = cookie_check(
            &self.tcp.cookie,
            seg.remote,
            seg.local,
            peer_isn,
            cookie,
            now,
        ) else {
            self.counters.inc(Mib::TcpExtSyncookiesFailed);
            return false;
        };
        let opts = match seg.ts {
            Some((_, tsecr)) => match cookie_decode_tsecr(tsecr) {
                Some(o) => o,
                None => {
                    self.counters.inc(Mib::TcpExtSyncookiesFailed);
                    return false;
                }
            },
            None => CookieOpts {
                wscale: None,
                sack: false,
            },
        };
        self.counters.inc(Mib::TcpExtSyncookiesRecv);
        let full = self
            .tcp
            .get(lslot)
            .and_then(|l| l.listen.as_ref())
            .is_none_or(|q| q.accept.len() >= q.backlog);
        if full || self.tcp.count >= self.tcp.lim.max_conns {
            self.counters.inc(Mib::TcpExtListenOverflows);
            self.drop_pkt(DropReason::TcpListenOverflow, Some(Mib::TcpExtListenDrops));
            return true;
        }
        let Some(child) =
            self.tcp_create_openreq_child(now, lslot, seg, peer_isn, cookie, mss, opts)
        else {
            return true;
        };
        if let Some(t) = self.tcp.get_mut(child) {
            // The SYN-ACK (our ISN) was sent, statelessly.
            t.snd_nxt = seq_add(cookie, 1);
            t.snd_max = t.snd_nxt;
        }
        if let Some(q) = self.tcp.get_mut(lslot).and_then(|l| l.listen.as_mut()) {
            q.syn.push(child);
        }
        self.tcp_rcv_state_process(now, child, seg);
        true
    }

    // ----- SYN-SENT (RFC 9293 §3.10.7.3) -----

    /// Linux `tcp_rcv_synsent_state_process`.
    fn tcp_rcv_synsent_state_process(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        if let Some(ack) = seg.ack {
            // "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless
            // the RST bit is set), discard the segment."
            if seq_le(ack, t.iss) || seq_lt(t.snd_max, ack) {
                self.drop_pkt(DropReason::TcpSynSentBadAck, None);
                self.tcp_v4_send_reset(now, seg);
                return;
            }
        }
        if seg.rst {
            if seg.ack.is_some() {
                // SPEC B.4: RST in SYN_SENT → "connection refused".
                self.tcp_reset(slot);
            } else {
                self.drop_pkt(DropReason::TcpResetUnacceptable, None);
            }
            return;
        }
        if !seg.syn {
            self.drop_pkt(DropReason::TcpFlags, None);
            return;
        }
        let route_mss_peer = seg.mss.unwrap_or(default_mss(seg.remote.is_ipv6()));
        let mut t = match self.tcp.slots[slot as usize].take() {
            Some(t) => t,
            None => return,
        };
        t.irs = seg.seq;
        t.rcv_nxt = seq_add(seg.seq, 1);
        match seg.wscale {
            Some(w) => {
                t.ws_ok = true;
                t.snd_wscale = w.min(14);
            }
            None => {
                t.ws_ok = false;
                t.snd_wscale = 0;
                t.rcv_wscale = 0;
            }
        }
        t.sack_ok = seg.sack_perm;
        if let Some((tsval, _)) = seg.ts {
            t.ts_ok = true;
            t.ts_recent = tsval;
            t.ts_recent_at = now;
        }
        self.tcp_set_mss(now, &mut t, route_mss_peer);
        self.tcp.slots[slot as usize] = Some(t);
        let Some(ack) = seg.ack else {
            // Simultaneous open: SYN_RECEIVED, answer with SYN-ACK.
            self.tcp_set_state(slot, TcpState::SynReceived);
            self.tcp_send_synack(now, slot);
            self.tcp_arm(slot);
            return;
        };
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        t.snd_una = ack;
        if seq_lt(t.snd_nxt, ack) {
            t.snd_nxt = ack;
        }
        // The window of a SYN is never scaled (RFC 7323 §2.2).
        t.snd_wnd = seg.wnd as u32;
        t.max_wnd = t.snd_wnd;
        t.snd_wl1 = seg.seq;
        t.snd_wl2 = ack;
        t.retries = 0;
        t.rto_at = At::NONE;
        let sample = Self::tcp_rtt_sample(now, t, seg, ack);
        if let Some(r) = sample {
            t.rtt.sample(r);
        }
        t.set_rtt_probe(None);
        let fin = t.fin_queued;
        self.tcp_set_state(slot, TcpState::Established);
        self.tcp_event(slot, SocketEvent::TcpConnected);
        if fin {
            self.tcp_set_state(slot, TcpState::FinWait1);
        }
        let before = self.tcp.get(slot).map(|t| t.snd_nxt);
        self.tcp_write_xmit(now, slot);
        if self.tcp.get(slot).map(|t| t.snd_nxt) == before {
            self.tcp_send_ack(now, slot);
        }
        self.tcp_arm(slot);
    }

    /// An RTT sample from an ACK (RFC 7323 §4.1 with timestamps; else
    /// Karn's timed segment, RFC 6298 §3).
    pub(crate) fn tcp_rtt_sample(
        now: Instant,
        t: &Tcb,
        seg: &Seg<'_>,
        ack: Seq,
    ) -> Option<Duration> {
        if t.ts_ok
            && let Some((_, tsecr)) = seg.ts
            && tsecr != 0
        {
            let d = TcpTable::tsval(now, t.ts_off).wrapping_sub(tsecr);
            if (d as i32) >= 0 {
                return Some(Duration::from_millis(d as u64));
            }
        }
        match t.rtt_probe() {
            Some((s, t0)) if seq_le(s, ack) && now >= t0 => Some(now - t0),
            _ => None,
        }
    }

    // ----- other states (RFC 9293 §3.10.7.4) -----

    /// Linux `tcp_rcv_state_process` (ESTABLISHED included: there is no
    /// separate header-prediction fast path here; the steps are cheap).
    pub(crate) fn tcp_rcv_state_process(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let state = t.state;
        match state {
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait => {
                self.drop_pkt(DropReason::TcpClosed, None);
                return;
            }
            TcpState::SynSent => {
                self.tcp_rcv_synsent_state_process(now, slot, seg);
                return;
            }
            _ => {}
        }
        t.last_rcv = now;
        if let Some(idle) = t.keepalive() {
            t.keep_at = At::from(Some(now + idle));
            if t.in_flight() == 0 {
                t.probes = 0;
            }
        }
        if state == TcpState::SynReceived && seg.syn && seg.ack.is_none() && seg.seq == t.irs {
            // A retransmitted SYN: the SYN-ACK was lost (Linux
            // `tcp_check_req` → `inet_rtx_syn_ack`).
            self.tcp_send_synack(now, slot);
            return;
        }
        if !self.tcp_validate_incoming(now, slot, seg) {
            self.tcp_arm(slot);
            return;
        }
        if seg.ack.is_none() {
            // "If the ACK bit is off, drop the segment."
            self.drop_pkt(DropReason::TcpFlags, None);
            return;
        }
        // SYN_RECEIVED → ESTABLISHED needs room in the accept queue
        // (Linux `inet_csk_complete_hashdance`): otherwise the ACK is
        // dropped and the SYN-ACK timer retries.
        if state == TcpState::SynReceived && self.tcp_accept_full(slot) {
            self.counters.inc(Mib::TcpExtListenOverflows);
            self.drop_pkt(DropReason::TcpListenOverflow, Some(Mib::TcpExtListenDrops));
            return;
        }
        // step 5: the ACK field
        match self.tcp_ack(now, slot, seg) {
            AckRes::Bad(reason) => {
                self.drop_pkt(reason, None);
                if state == TcpState::SynReceived {
                    self.tcp_v4_send_reset(now, seg);
                } else {
                    self.tcp_send_challenge_ack(now, slot);
                }
                self.tcp_arm(slot);
                return;
            }
            AckRes::Ok | AckRes::Old => {}
        }
        if !self.tcp_ack_state_change(now, slot, seg) {
            return;
        }
        // step 7: the segment text; step 8: FIN
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let state = t.state;
        let mut ack_now = false;
        let new_data = !seg.payload.is_empty() || seg.fin;
        match state {
            TcpState::CloseWait | TcpState::Closing | TcpState::LastAck
                if !seq_lt(seg.seq, t.rcv_nxt) =>
            {
                // Data after the peer's FIN: ignored.
            }
            TcpState::FinWait1 | TcpState::FinWait2
                if t.rd_shut
                    && !seg.payload.is_empty()
                    && seq_lt(t.rcv_nxt, seq_add(seg.end_seq(), u32::MAX * seg.fin as u32)) =>
            {
                // RFC 1122 §4.2.2.13 / seed 004: data for a socket that
                // can no longer read it → RST (TCPAbortOnData).
                self.counters.inc(Mib::TcpExtTCPAbortOnData);
                self.tcp_v4_send_reset(now, seg);
                self.tcp_done(slot, Some(TcpError::ConnectionReset));
                return;
            }
            _ => {
                if !seg.payload.is_empty() {
                    ack_now |= self.tcp_data_queue(slot, seg);
                }
                if seg.fin {
                    ack_now |= self.tcp_fin(now, slot, seg);
                    if self
                        .tcp
                        .get(slot)
                        .is_none_or(|t| t.state == TcpState::Closed)
                    {
                        return;
                    }
                }
            }
        }
        // Output: new data the ACK allowed, then the ACK if still owed.
        self.tcp_write_xmit(now, slot);
        self.tcp_ack_snd_check(now, slot, new_data, ack_now);
        self.tcp_arm(slot);
    }

    fn tcp_accept_full(&self, slot: u32) -> bool {
        let Some(p) = self.tcp.get(slot).and_then(|t| t.parent) else {
            return false;
        };
        self.tcp
            .get(p)
            .and_then(|l| l.listen.as_ref())
            .is_some_and(|q| q.accept.len() >= q.backlog)
    }

    /// Steps 1, 2 and 4 (Linux `tcp_validate_incoming`): PAWS (RFC 7323
    /// §5), the sequence check, RST per RFC 5961 §3 (exact RCV.NXT →
    /// reset; in window → challenge ACK; outside → ignored), SYN per RFC
    /// 5961 §4 (challenge ACK). Returns whether the segment goes on.
    fn tcp_validate_incoming(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) -> bool {
        let Some(t) = self.tcp.get_mut(slot) else {
            return false;
        };
        // RFC 7323 §5.3 H1: PAWS first. An RST passes (Linux).
        if t.ts_ok
            && let Some((tsval, _)) = seg.ts
            && !seg.rst
            && super::minisocks::paws_reject(t.ts_recent, t.ts_recent_at, tsval, now, false)
        {
            if seg.syn {
                self.tcp_syn_challenge(now, slot);
                return false;
            }
            self.counters.inc(Mib::TcpExtPAWSEstabRejected);
            self.drop_pkt(DropReason::TcpPaws, None);
            self.tcp_send_ack(now, slot);
            return false;
        }
        // Step 1 (Linux `tcp_sequence`): the segment must reach RCV.NXT
        // and start within the window.
        let wnd = t.rcv_window();
        let end = seg.end_seq();
        let in_seq = !seq_lt(end, t.rcv_nxt) && seq_le(seg.seq, seq_add(t.rcv_nxt, wnd));
        // An RST at RCV.NXT − 1 after the peer's FIN (Linux
        // `tcp_reset_check`).
        let reset_check = seg.rst
            && seg.seq == seq_add(t.rcv_nxt, u32::MAX)
            && matches!(
                t.state,
                TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
            );
        if !in_seq {
            if seg.rst {
                if reset_check {
                    self.tcp_reset(slot);
                } else {
                    self.drop_pkt(DropReason::TcpResetUnacceptable, None);
                }
                return false;
            }
            if seg.syn {
                self.tcp_syn_challenge(now, slot);
                return false;
            }
            self.drop_pkt(DropReason::TcpInvalidSequence, None);
            self.tcp_send_ack(now, slot);
            return false;
        }
        // Step 2: RST (RFC 5961 §3.2).
        if seg.rst {
            if seg.seq == t.rcv_nxt || reset_check {
                self.tcp_reset(slot);
            } else {
                self.drop_pkt(DropReason::TcpResetUnacceptable, None);
                self.tcp_send_challenge_ack(now, slot);
            }
            return false;
        }
        // Timestamps: remember the peer's clock (RFC 7323 §4.3).
        if t.ts_ok
            && let Some((tsval, _)) = seg.ts
            && seq_le(seg.seq, t.rcv_nxt)
        {
            t.ts_recent = tsval;
            t.ts_recent_at = now;
        }
        // Step 4: SYN on a synchronized connection (RFC 5961 §4.2).
        if seg.syn {
            self.tcp_syn_challenge(now, slot);
            return false;
        }
        true
    }

    fn tcp_syn_challenge(&mut self, now: Instant, slot: u32) {
        self.counters.inc(Mib::TcpExtTCPSYNChallenge);
        self.drop_pkt(DropReason::TcpInvalidSyn, None);
        self.tcp_send_challenge_ack(now, slot);
    }

    /// Step 5 (Linux `tcp_ack`): RFC 5961 §5 ACK-value check, window
    /// update (RFC 9293 SND.WL1/WL2 rule), SACK scoreboard, what the ACK
    /// frees, RTT sample, congestion control, fast retransmit on three
    /// duplicate ACKs or SACK-detected loss (RFC 5681 §3.2, RFC 6675).
    pub(crate) fn tcp_ack(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) -> AckRes {
        let Some(ack) = seg.ack else {
            return AckRes::Old;
        };
        let Some(t) = self.tcp.get_mut(slot) else {
            return AckRes::Old;
        };
        if seq_lt(t.snd_max, ack) {
            return AckRes::Bad(DropReason::TcpAckUnsentData);
        }
        if seq_lt(ack, seq_add(t.snd_una, t.max_wnd.wrapping_neg()))
            || (t.state == TcpState::SynReceived && !seq_lt(t.snd_una, ack))
        {
            return AckRes::Bad(DropReason::TcpTooOldAck);
        }
        if seq_lt(ack, t.snd_una) {
            return AckRes::Old;
        }
        if t.sack_ok && seg.sacks.iter().any(|s| s.is_some()) {
            let mut blocks = [(TcpSeqNumber(0), TcpSeqNumber(0)); 3];
            let mut n = 0;
            for (a, b) in seg.sacks.iter().flatten() {
                let (a, b) = (TcpSeqNumber(*a as i32), TcpSeqNumber(*b as i32));
                // Only blocks within what we sent (RFC 2018 §8 D-SACK and
                // bogus blocks are ignored).
                if seq_lt(ack, b) && seq_le(b, t.snd_max) && seq_lt(a, b) {
                    blocks[n] = (a, b);
                    n += 1;
                }
            }
            t.sacks.update(ack, &blocks[..n]);
        }
        let wnd = (seg.wnd as u32) << t.snd_wscale;
        let wnd_changed = wnd != t.snd_wnd;
        if seq_lt(t.snd_wl1, seg.seq) || (t.snd_wl1 == seg.seq && seq_le(t.snd_wl2, ack)) {
            t.snd_wnd = wnd;
            t.max_wnd = t.max_wnd.max(wnd);
            t.snd_wl1 = seg.seq;
            t.snd_wl2 = ack;
            if wnd > 0 {
                t.probe_at = At::NONE;
            }
        }
        let flight = t.in_flight();
        if ack == t.snd_una {
            // RFC 5681 §2 duplicate ACK: no data, no window change,
            // outstanding data.
            let dup = seg.payload.is_empty()
                && !seg.syn
                && !seg.fin
                && !wnd_changed
                && t.snd_una != t.snd_max;
            if dup {
                t.dupacks = t.dupacks.saturating_add(1);
                self.tcp_fastretrans_alert(now, slot);
            }
            return AckRes::Ok;
        }
        // New data acknowledged.
        let acked = seq_diff(ack, t.snd_una) as u32;
        let mut cnt = acked;
        if t.snd_una == t.iss && !t.state.is_synchronized() {
            cnt -= 1; // our SYN
        }
        let data = (cnt as usize).min(t.sndbuf.len());
        t.sndbuf.ack(data);
        if cnt as usize > data {
            t.fin_acked = true;
        }
        let sample = Self::tcp_rtt_sample(now, t, seg, ack);
        if let Some(r) = sample {
            t.rtt.sample(r);
        }
        if t.rtt_probe().is_some_and(|(s, _)| seq_le(s, ack)) {
            t.set_rtt_probe(None);
        }
        t.snd_una = ack;
        if seq_lt(t.snd_nxt, ack) {
            t.snd_nxt = ack;
        }
        if seq_lt(t.high_rxt, ack) {
            t.high_rxt = ack;
        }
        t.retries = 0;
        t.probes = 0;
        t.dupacks = 0;
        t.sacks.on_cumulative_ack(ack);
        match t.recover {
            Some(r) if seq_le(r, ack) => {
                t.recover = None;
                t.cc.on_exit_recovery(now);
            }
            Some(_) => {
                // RFC 6582 partial ACK: the next hole goes out now.
                self.tcp_retransmit_next(now, slot);
            }
            None => t.cc.on_ack(now, acked, flight, sample),
        }
        let Some(t) = self.tcp.get_mut(slot) else {
            return AckRes::Ok;
        };
        t.rto_at = At::from((t.snd_una != t.snd_max).then(|| now + t.rtt.rto()));
        if t.want_writable && t.sndbuf.free() > 0 {
            t.want_writable = false;
            self.tcp_event(slot, SocketEvent::TcpWritable);
        }
        AckRes::Ok
    }

    /// Linux `tcp_fastretrans_alert` (simplified): enter fast recovery on
    /// the third duplicate ACK or when SACK shows the first segment lost;
    /// within recovery, each further duplicate retransmits the next hole.
    fn tcp_fastretrans_alert(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if t.recover.is_none() {
            let lost = t.dupacks >= 3 || (t.sack_ok && t.sacks.is_lost(t.snd_una, t.mss as u32));
            if !lost {
                return;
            }
            t.recover = Some(t.snd_max);
            let flight = t.in_flight();
            t.cc.on_enter_recovery(now, flight);
            t.high_rxt = t.snd_una;
            t.set_rtt_probe(None);
            self.counters.inc(Mib::TcpExtTCPFastRetrans);
            self.tcp_retransmit_next(now, slot);
        } else if t.sack_ok {
            self.tcp_retransmit_next(now, slot);
        }
    }

    /// The state changes an acceptable ACK causes (end of step 5). Returns
    /// false when the connection is gone or the segment is finished.
    fn tcp_ack_state_change(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) -> bool {
        let fin_timeout = self.tcp.lim.fin_timeout;
        let Some(t) = self.tcp.get_mut(slot) else {
            return false;
        };
        match t.state {
            TcpState::SynReceived => {
                t.snd_wl1 = seg.seq;
                let fin = t.fin_queued;
                let parent = t.parent;
                self.tcp_set_state(slot, TcpState::Established);
                self.counters.inc(Mib::TcpPassiveOpens);
                match parent {
                    Some(p) => {
                        if let Some(q) = self.tcp.get_mut(p).and_then(|l| l.listen.as_mut()) {
                            if let Some(i) = q.syn.iter().position(|&c| c == slot) {
                                q.syn.swap_remove(i);
                            }
                            q.accept.push_back(slot);
                        }
                        let h = self.tcp.handle(p);
                        self.push_event(SocketEvent::TcpAcceptable(h));
                    }
                    None => self.tcp_event(slot, SocketEvent::TcpConnected),
                }
                if fin {
                    self.tcp_set_state(slot, TcpState::FinWait1);
                }
            }
            TcpState::FinWait1 if t.fin_acked => {
                let orphan = t.orphan;
                if orphan {
                    t.fin_at = At::from(Some(now + fin_timeout));
                }
                self.tcp_set_state(slot, TcpState::FinWait2);
            }
            TcpState::Closing if t.fin_acked => {
                self.tcp_time_wait(now, slot);
                return false;
            }
            TcpState::LastAck if t.fin_acked => {
                self.tcp_done(slot, None);
                return false;
            }
            _ => {}
        }
        true
    }

    /// Step 7 (Linux `tcp_data_queue`): in-order data goes to the receive
    /// buffer (what does not fit the window is cut), out-of-order data is
    /// kept for SACK and answered at once. Returns whether to ACK now.
    fn tcp_data_queue(&mut self, slot: u32, seg: &Seg<'_>) -> bool {
        let Some(t) = self.tcp.get_mut(slot) else {
            return false;
        };
        let off = seq_diff(seg.seq, t.rcv_nxt);
        let (off, data) = if off < 0 {
            let trim = off.unsigned_abs() as usize;
            if trim >= seg.payload.len() {
                // All of it was received before: a duplicate, ACK it.
                self.drop_pkt(DropReason::TcpOldData, None);
                return true;
            }
            (0usize, &seg.payload[trim..])
        } else {
            (off as usize, seg.payload)
        };
        if t.rd_shut {
            // shutdown(read): ACKed and dropped.
            if off == 0 {
                t.rcv_nxt = seq_add(t.rcv_nxt, data.len() as u32);
            }
            return true;
        }
        if off > 0 {
            t.rcvbuf.insert(off, data);
            t.quickack = super::QUICKACKS;
            return true;
        }
        let had_ooo = t.rcvbuf.has_ooo();
        let was_empty = t.rcvbuf.readable() == 0;
        let n = t.rcvbuf.insert(0, data);
        t.rcv_nxt = seq_add(t.rcv_nxt, n as u32);
        let cut = n < data.len() && !had_ooo;
        if n > 0 && was_empty {
            self.tcp_event(slot, SocketEvent::TcpReadable);
        }
        if cut {
            self.drop_pkt(DropReason::TcpRcvbufFull, None);
        }
        had_ooo || cut
    }

    /// Step 8 (Linux `tcp_fin`): an in-order FIN. ESTABLISHED /
    /// SYN_RECEIVED → CLOSE_WAIT, FIN_WAIT_1 → CLOSING, FIN_WAIT_2 →
    /// TIME_WAIT. A FIN beyond RCV.NXT (data missing) waits for the
    /// retransmission. Returns whether to ACK now.
    fn tcp_fin(&mut self, now: Instant, slot: u32, seg: &Seg<'_>) -> bool {
        let Some(t) = self.tcp.get_mut(slot) else {
            return false;
        };
        let fin_seq = seq_add(seg.seq, seg.payload.len() as u32);
        if fin_seq != t.rcv_nxt || t.rcv_fin {
            return true;
        }
        t.rcv_nxt = seq_add(t.rcv_nxt, 1);
        t.rcv_fin = true;
        let state = t.state;
        match state {
            TcpState::SynReceived | TcpState::Established => {
                self.tcp_set_state(slot, TcpState::CloseWait)
            }
            TcpState::FinWait1 => self.tcp_set_state(slot, TcpState::Closing),
            TcpState::FinWait2 => {
                self.tcp_send_ack(now, slot);
                self.tcp_time_wait(now, slot);
                return false;
            }
            _ => {}
        }
        self.tcp_event(slot, SocketEvent::TcpReadable);
        true
    }

    /// Linux `__tcp_ack_snd_check`: ACK at once when asked to, in
    /// quick-ACK mode, or every second full segment; otherwise arm the
    /// delayed-ACK timer. While corked ([`Stack::tcp_cork`]) the ACK for
    /// in-order data waits for the end of the round, where data sent on
    /// the connection carries it; an ACK asked for at once (out-of-order
    /// data, a FIN, a full receive buffer) is never held.
    fn tcp_ack_snd_check(&mut self, now: Instant, slot: u32, new_data: bool, ack_now: bool) {
        let corked = self.tcp.corked;
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if ack_now {
            self.tcp_send_ack(now, slot);
            return;
        }
        if !new_data {
            return;
        }
        t.ack_pending = t.ack_pending.saturating_add(1);
        let due = if t.quickack > 0 {
            t.quickack -= 1;
            true
        } else {
            t.ack_pending >= 2
        };
        if due && corked {
            // sent by tcp_uncork, on the data the application answers
            // with if it does
            self.tcp_cork_mark(slot, super::CORK_ACK);
        } else if due {
            self.tcp_send_ack(now, slot);
        } else if t.delack_at.is_none() {
            t.delack_at = At::from(Some(now + super::DELACK));
        }
    }

    /// Linux `tcp_reset`: an accepted RST. SYN_SENT → refused, CLOSE_WAIT
    /// → broken pipe, otherwise → reset (SPEC B.4); queues purged, CLOSED.
    pub(crate) fn tcp_reset(&mut self, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let err = match t.state {
            TcpState::SynSent => TcpError::ConnectionRefused,
            TcpState::CloseWait => TcpError::BrokenPipe,
            TcpState::Closed => return,
            _ => TcpError::ConnectionReset,
        };
        self.tcp_done(slot, Some(err));
    }

    /// Linux `tcp_done`: the connection is CLOSED — out of the demux table,
    /// timers stopped; on an error both queues are purged. Freed at once
    /// when nobody holds it (orphan, or never accepted); otherwise the
    /// application gets TcpClosed and the handle stays until close().
    pub(crate) fn tcp_done(&mut self, slot: u32, err: Option<TcpError>) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if matches!(t.state, TcpState::SynSent | TcpState::SynReceived) {
            self.counters.inc(Mib::TcpAttemptFails);
        }
        if err.is_some() && matches!(t.state, TcpState::Established | TcpState::CloseWait) {
            self.counters.inc(Mib::TcpEstabResets);
        }
        self.tcp_set_state(slot, TcpState::Closed);
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let (local, remote) = (t.local, t.remote);
        t.rto_at = At::NONE;
        t.delack_at = At::NONE;
        t.probe_at = At::NONE;
        t.keep_at = At::NONE;
        t.fin_at = At::NONE;
        t.sndbuf.clear();
        t.sacks.clear();
        if err.is_some() {
            t.rcvbuf.clear();
            t.err = err;
        }
        let gone = t.orphan || t.parent.is_some();
        if gone {
            self.tcp_free(slot);
            return;
        }
        let key = ConnKey::new(local, remote);
        if self.tcp.conns.get(&key) == Some(&slot) {
            self.tcp.conns.remove(&key);
            self.tcp.port_unref(local);
        }
        self.tcp.wheel.cancel(super::TimerKey::Conn(slot));
        if let Some(t) = self.tcp.get_mut(slot) {
            t.armed = At::NONE;
        }
        let h = self.tcp.handle(slot);
        self.push_event(SocketEvent::TcpClosed(h, err));
    }
}
