//! Segment output (Linux `tcp_output.c`): `tcp_transmit_skb` builds every
//! segment of a connection (options by state: MSS / window scale / SACK
//! permitted on SYNs, timestamps when negotiated, SACK blocks while data
//! is out of order), `tcp_write_xmit` sends what the peer's window and
//! the congestion window allow (sender SWS avoidance, Nagle only when
//! asked for, FIN after the queued data), plus ACKs, challenge ACKs
//! (RFC 5961 §7 limit), probes, resets — and the close paths of `tcp.c`
//! (`tcp_close`, `tcp_disconnect`, `tcp_shutdown`, listener stop).

use smoltcp::wire::{TcpControl, TcpRepr, TcpTimestampRepr};

use super::{At, Seq, TcpError, TcpState, TcpTable, seq_add, seq_diff, seq_lt};
use crate::netstack::{Instant, Mib, Stack};

/// One segment to build from a TCB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxSeg {
    pub seq: Seq,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub ack: bool,
    /// Payload: `len` bytes from offset `off` of the send buffer.
    pub off: usize,
    pub len: usize,
    /// A retransmission (RetransSegs instead of OutSegs).
    pub retrans: bool,
}

impl Stack {
    /// Linux `tcp_transmit_skb`: one segment of connection `slot`.
    /// Returns whether IP took it.
    pub(crate) fn tcp_transmit_skb(&mut self, now: Instant, slot: u32, s: TxSeg) -> bool {
        let mut scratch = std::mem::take(&mut self.tcp.scratch);
        let route_mss = self
            .tcp
            .get(slot)
            .map(|t| self.tcp_route_mss(t.remote.is_ipv6()))
            .unwrap_or(536);
        let Some(t) = self.tcp.get_mut(slot) else {
            self.tcp.scratch = scratch;
            return false;
        };
        scratch.clear();
        scratch.resize(s.len, 0);
        let n = t.sndbuf.copy_out(s.off, &mut scratch);
        scratch.truncate(n);
        let syn_sent = t.state == TcpState::SynSent;
        let window = if s.syn {
            (t.rcvbuf.window() as u32).min(65535)
        } else {
            (t.rcv_window() >> t.rcv_wscale).min(65535)
        };
        t.rcv_wnd_adv = if s.syn {
            window
        } else {
            window << t.rcv_wscale
        };
        let ts = (t.ts_ok || (s.syn && syn_sent)).then(|| {
            TcpTimestampRepr::new(
                TcpTable::tsval(now, t.ts_off),
                if syn_sent { 0 } else { t.ts_recent },
            )
        });
        let mut sack_ranges = [None; 3];
        if t.sack_ok && !s.syn && !s.rst && t.rcvbuf.has_ooo() {
            let room = (t.mss as usize).saturating_sub(n);
            let max = (room.saturating_sub(2) / 8).min(3);
            let mut b = [(0u32, 0u32); 3];
            let k = t.rcvbuf.sack_blocks(max, &mut b[..max]);
            for (i, (a, e)) in b[..k].iter().enumerate() {
                sack_ranges[i] = Some((
                    seq_add(t.rcv_nxt, *a).0 as u32,
                    seq_add(t.rcv_nxt, *e).0 as u32,
                ));
            }
        }
        let control = if s.rst {
            TcpControl::Rst
        } else if s.syn {
            TcpControl::Syn
        } else if s.fin {
            TcpControl::Fin
        } else if n > 0 {
            TcpControl::Psh
        } else {
            TcpControl::None
        };
        let repr = TcpRepr {
            src_port: t.local.port(),
            dst_port: t.remote.port(),
            control,
            seq_number: s.seq,
            ack_number: s.ack.then_some(t.rcv_nxt),
            window_len: window as u16,
            window_scale: (s.syn && (syn_sent || t.ws_ok)).then_some(t.rcv_wscale),
            max_seg_size: s.syn.then_some(route_mss),
            sack_permitted: s.syn && (syn_sent || t.sack_ok),
            sack_ranges,
            timestamp: ts,
            payload: &scratch,
        };
        if s.ack {
            t.ack_pending = 0;
            t.delack_at = At::NONE;
        }
        t.last_snd = now;
        let (local, remote) = (t.local, t.remote);
        let ok = self.tcp_emit(now, local, remote, &repr).is_ok();
        self.tcp.scratch = scratch;
        if ok {
            self.counters.inc(if s.retrans {
                Mib::TcpRetransSegs
            } else {
                Mib::TcpOutSegs
            });
            if s.rst {
                self.counters.inc(Mib::TcpOutRsts);
            }
        }
        ok
    }

    /// Cork the TCP output for one round of the driver (received frames,
    /// then the application): data the application sends is queued, not
    /// pushed, and the ACK that in-order data asks for waits, until
    /// [`Self::tcp_uncork`]. Messages written to one connection in the
    /// round leave in as few segments as the windows allow, carrying the
    /// ACK (Linux gets the same from GRO, TCP autocorking and delayed ACKs
    /// in its pingpong mode). Nothing waits on a timer: the driver uncorks
    /// before its transmit flush.
    pub fn tcp_cork(&mut self) {
        self.tcp.corked = true;
    }

    /// End the cork: push each corked connection's queued data (which
    /// carries the ACK), then send the ACKs still due.
    pub fn tcp_uncork(&mut self, now: Instant) {
        self.tcp.corked = false;
        let mut slots = std::mem::take(&mut self.tcp.cork_slots);
        for &slot in &slots {
            let Some(t) = self.tcp.get_mut(slot) else {
                continue;
            };
            let what = std::mem::take(&mut t.cork);
            if what & super::CORK_PUSH != 0 {
                self.tcp_write_xmit(now, slot);
                self.tcp_arm(slot);
            }
            if what & super::CORK_ACK != 0 && self.tcp.get(slot).is_some_and(|t| t.ack_pending > 0)
            {
                self.tcp_send_ack(now, slot);
            }
        }
        slots.clear();
        self.tcp.cork_slots = slots;
    }

    /// Note `what` as corked for `slot`.
    pub(crate) fn tcp_cork_mark(&mut self, slot: u32, what: u8) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let first = t.cork == 0;
        t.cork |= what;
        if first {
            self.tcp.cork_slots.push(slot);
        }
    }

    /// Linux `tcp_write_xmit`: send queued data (and the FIN after it) as
    /// far as the send window, the congestion window and SWS avoidance
    /// (RFC 9293 §3.8.6.2.1) allow. After an RTO (SND.NXT back at SND.UNA)
    /// this also retransmits, skipping what the peer SACKed.
    pub(crate) fn tcp_write_xmit(&mut self, now: Instant, slot: u32) {
        // Bounded: every round sends or stops; 4096 segments is more than
        // any window allows per call.
        for _ in 0..4096 {
            let Some(t) = self.tcp.get_mut(slot) else {
                return;
            };
            if !matches!(
                t.state,
                TcpState::Established
                    | TcpState::CloseWait
                    | TcpState::FinWait1
                    | TcpState::Closing
                    | TcpState::LastAck
            ) {
                return;
            }
            let total = t.sndbuf.len() as u32;
            let off = seq_diff(t.snd_nxt, t.snd_una).max(0) as u32;
            if off > total || t.fin_acked {
                return;
            }
            let mss = t.mss as u32;
            let retrans = seq_lt(t.snd_nxt, t.snd_max);
            if retrans && t.sack_ok {
                let end = seq_add(t.snd_nxt, mss.min(seq_diff(t.snd_max, t.snd_nxt) as u32));
                if t.sacks.is_sacked(t.snd_nxt, end) {
                    t.snd_nxt = end;
                    continue;
                }
            }
            let flight = t.in_flight();
            if flight == 0 && !retrans {
                let idle = now - t.last_snd.min(now);
                let rto = t.rtt.rto();
                if idle > rto {
                    t.cc.on_idle(now, idle, rto);
                }
            }
            let unsent = total - off;
            if unsent == 0 {
                if t.fin_queued {
                    let seg = TxSeg {
                        seq: t.snd_nxt,
                        fin: true,
                        ack: true,
                        off: off as usize,
                        retrans,
                        ..TxSeg::default()
                    };
                    self.tcp_transmit_skb(now, slot, seg);
                    self.tcp_sent(now, slot, 1, retrans);
                }
                return;
            }
            let wnd_end = seq_add(t.snd_una, t.snd_wnd);
            let usable = seq_diff(wnd_end, t.snd_nxt).max(0) as u32;
            let pipe = flight.saturating_sub(t.sacks.sacked_bytes());
            let cwnd_room = t.cc.cwnd().saturating_sub(pipe);
            let want = unsent.min(mss);
            let mut len = want;
            if usable < want {
                if usable > 0 && usable >= t.max_wnd / 2 {
                    len = usable;
                } else {
                    if usable == 0 && flight == 0 && t.probe_at.is_none() {
                        // Zero window: the persist timer probes it.
                        t.probe_at = At::from(Some(now + t.rtt.rto()));
                    }
                    return;
                }
            }
            if cwnd_room < len && flight > 0 {
                return;
            }
            if !t.nodelay && len < mss && flight > 0 && !retrans {
                // Nagle (RFC 896), only with set_nodelay(false).
                return;
            }
            let fin = t.fin_queued && off + len == total;
            let seg = TxSeg {
                seq: t.snd_nxt,
                fin,
                ack: true,
                off: off as usize,
                len: len as usize,
                retrans,
                ..TxSeg::default()
            };
            self.tcp_transmit_skb(now, slot, seg);
            self.tcp_sent(now, slot, len + fin as u32, retrans);
        }
    }

    /// Advance SND.NXT past a segment just sent; start the RTO and RTT
    /// timing.
    fn tcp_sent(&mut self, now: Instant, slot: u32, n: u32, retrans: bool) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        t.snd_nxt = seq_add(t.snd_nxt, n);
        if seq_lt(t.snd_max, t.snd_nxt) {
            t.snd_max = t.snd_nxt;
        }
        if t.rto_at.is_none() {
            t.rto_at = At::from(Some(now + t.rtt.rto()));
        }
        if !retrans && !t.ts_ok && t.rtt_probe().is_none() {
            t.set_rtt_probe(Some((t.snd_nxt, now)));
        }
    }

    /// Retransmit the first segment not known to have arrived: the next
    /// SACK hole after what this recovery already resent (RFC 6675
    /// NextSeg), or SND.UNA (RFC 6582).
    pub(crate) fn tcp_retransmit_next(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let mss = t.mss as u32;
        let (seq, lim) = if t.sack_ok {
            match t.sacks.next_hole(t.snd_una, t.high_rxt, t.snd_max) {
                Some((a, b)) => (a, seq_diff(b, a).max(0) as u32),
                None if t.high_rxt == t.snd_una => (t.snd_una, mss),
                None => return,
            }
        } else {
            (t.snd_una, mss)
        };
        let total = t.sndbuf.len() as u32;
        let off = seq_diff(seq, t.snd_una).max(0) as u32;
        let fin_sent = t.fin_queued && seq_diff(t.snd_max, t.snd_una) as u32 == total + 1;
        let (len, fin) = if off < total {
            let len = lim.min(mss).min(total - off).max(1);
            (len, fin_sent && off + len == total)
        } else if off == total && fin_sent {
            (0, true)
        } else {
            return;
        };
        let seg = TxSeg {
            seq,
            fin,
            ack: true,
            off: off as usize,
            len: len as usize,
            retrans: true,
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
        if let Some(t) = self.tcp.get_mut(slot) {
            t.high_rxt = seq_add(seq, len + fin as u32);
            t.rto_at = At::from(Some(now + t.rtt.rto()));
        }
    }

    /// Linux `tcp_send_ack`: a bare ACK at SND.NXT.
    pub(crate) fn tcp_send_ack(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        if matches!(
            t.state,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent
        ) {
            return;
        }
        let seg = TxSeg {
            seq: t.snd_nxt,
            ack: true,
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
    }

    /// Linux `tcp_send_challenge_ack` (RFC 5961 §7): an ACK, at most
    /// `tcp_challenge_ack_limit` per second across the stack.
    /// TCPChallengeACK counts those sent.
    pub(crate) fn tcp_send_challenge_ack(&mut self, now: Instant, slot: u32) {
        let sec = now.total_millis() / 1000;
        let c = &mut self.tcp.challenge;
        if c.0 != sec {
            *c = (sec, 0);
        }
        if c.1 >= self.tcp.lim.challenge_ack_limit {
            return;
        }
        c.1 += 1;
        self.counters.inc(Mib::TcpExtTCPChallengeACK);
        self.tcp_send_ack(now, slot);
    }

    /// Linux `tcp_xmit_probe_skb`: an ACK with an old sequence number
    /// (SND.UNA − 1), which the peer must answer (zero-window probe,
    /// keep-alive).
    pub(crate) fn tcp_xmit_probe_skb(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let seg = TxSeg {
            seq: seq_add(t.snd_una, u32::MAX),
            ack: true,
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
    }

    /// `tcp_connect`'s SYN (and its retransmissions).
    pub(crate) fn tcp_send_syn(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let seg = TxSeg {
            seq: t.iss,
            syn: true,
            retrans: t.retries > 0,
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
        self.tcp_syn_sent(now, slot);
    }

    /// Linux `tcp_make_synack`: SYN-ACK from a SYN_RECEIVED connection.
    pub(crate) fn tcp_send_synack(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let seg = TxSeg {
            seq: t.iss,
            syn: true,
            ack: true,
            retrans: seq_lt(t.iss, t.snd_max),
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
        self.tcp_syn_sent(now, slot);
    }

    fn tcp_syn_sent(&mut self, now: Instant, slot: u32) {
        if let Some(t) = self.tcp.get_mut(slot) {
            t.snd_nxt = seq_add(t.iss, 1);
            if seq_lt(t.snd_max, t.snd_nxt) {
                t.snd_max = t.snd_nxt;
            }
            t.rto_at = At::from(Some(now + t.rtt.rto()));
            if t.retries == 0 {
                t.set_rtt_probe(Some((t.snd_nxt, now)));
            } else {
                t.set_rtt_probe(None);
            }
        }
    }

    /// Linux `tcp_send_active_reset`: RST|ACK at SND.NXT.
    pub(crate) fn tcp_send_active_reset(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let seg = TxSeg {
            seq: t.snd_nxt,
            rst: true,
            ack: true,
            ..TxSeg::default()
        };
        self.tcp_transmit_skb(now, slot, seg);
    }

    // ----- closing (Linux tcp.c) -----

    /// Linux `tcp_close` (seed 004): unread data → RST (RFC 2525 §2.17,
    /// TCPAbortOnClose); linger 0 → RST (TCPAbortOnData, as Linux counts
    /// it); otherwise the FIN state table (`tcp_close_state`):
    /// ESTABLISHED / SYN_RECEIVED → FIN_WAIT_1, CLOSE_WAIT → LAST_ACK,
    /// SYN_SENT → CLOSED; the FIN follows the queued data. The connection
    /// becomes an orphan (its handle invalid); an orphan in FIN_WAIT_2 is
    /// dropped after `tcp_fin_timeout`.
    pub(crate) fn tcp_close(&mut self, now: Instant, slot: u32) {
        let fin_timeout = self.tcp.lim.fin_timeout;
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        match t.state {
            TcpState::Listen => {
                self.tcp_listen_stop(now, slot);
                return;
            }
            TcpState::Closed | TcpState::TimeWait => {
                self.tcp_free(slot);
                return;
            }
            _ => {}
        }
        t.orphan = true;
        if t.rcvbuf.readable() > 0 {
            self.counters.inc(Mib::TcpExtTCPAbortOnClose);
            self.tcp_send_active_reset(now, slot);
            self.tcp_done(slot, Some(TcpError::ConnectionReset));
            return;
        }
        if t.linger0 {
            self.counters.inc(Mib::TcpExtTCPAbortOnData);
            self.tcp_disconnect(now, slot);
            return;
        }
        t.rd_shut = true;
        t.rcvbuf.clear();
        match t.state {
            TcpState::SynSent => {
                self.tcp_set_state(slot, TcpState::Closed);
                self.tcp_free(slot);
                return;
            }
            TcpState::SynReceived | TcpState::Established => {
                t.fin_queued = true;
                self.tcp_set_state(slot, TcpState::FinWait1);
                self.tcp_write_xmit(now, slot);
            }
            TcpState::CloseWait => {
                t.fin_queued = true;
                self.tcp_set_state(slot, TcpState::LastAck);
                self.tcp_write_xmit(now, slot);
            }
            TcpState::FinWait2 => {
                t.fin_at = At::from(Some(now + fin_timeout));
            }
            _ => {}
        }
        self.tcp_arm(slot);
    }

    /// Abort (SO_LINGER 0 close / `abort()`): RST for synchronized states
    /// (and SYN_RECEIVED), then CLOSED and freed.
    pub(crate) fn tcp_abort(&mut self, now: Instant, slot: u32, count: bool) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if t.state == TcpState::Listen {
            self.tcp_listen_stop(now, slot);
            return;
        }
        t.orphan = true;
        if count {
            self.counters.inc(Mib::TcpExtTCPAbortOnData);
        }
        self.tcp_disconnect(now, slot);
    }

    /// Linux `tcp_disconnect`: RST when `tcp_need_reset(state)`, CLOSED.
    fn tcp_disconnect(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        let need_reset = matches!(
            t.state,
            TcpState::Established
                | TcpState::CloseWait
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::SynReceived
        );
        if need_reset {
            self.tcp_send_active_reset(now, slot);
            self.tcp_done(slot, Some(TcpError::ConnectionReset));
        } else {
            self.tcp_set_state(slot, TcpState::Closed);
            self.tcp_free(slot);
        }
    }

    /// Linux `inet_csk_listen_stop`: established connections never
    /// accepted are reset; half-open ones dropped; the listener freed.
    pub(crate) fn tcp_listen_stop(&mut self, now: Instant, lslot: u32) {
        let Some(q) = self.tcp.get_mut(lslot).and_then(|l| l.listen.take()) else {
            self.tcp_free(lslot);
            return;
        };
        for c in q.syn {
            self.tcp_free(c);
        }
        for c in q.accept {
            self.tcp_send_active_reset(now, c);
            self.tcp_done(c, Some(TcpError::ConnectionReset));
        }
        self.tcp_free(lslot);
    }

    /// Linux `tcp_shutdown(SEND_SHUTDOWN)`: FIN after the queued data.
    pub(crate) fn tcp_shutdown_write(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if t.fin_queued {
            return;
        }
        let next = match t.state {
            TcpState::Established => TcpState::FinWait1,
            TcpState::CloseWait => TcpState::LastAck,
            TcpState::SynSent | TcpState::SynReceived => t.state,
            _ => return,
        };
        t.fin_queued = true;
        self.tcp_set_state(slot, next);
        self.tcp_write_xmit(now, slot);
        self.tcp_arm(slot);
    }
}
