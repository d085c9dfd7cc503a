//! `tcp_v4_rcv` / `tcp_v6_rcv`: the TCP receive entry for both families
//! (seed 003): checksum first, header checks, then an O(1) demux — the
//! 4-tuple hash (established and half-open connections, then TIME_WAIT),
//! then the (family, port) listener — and `tcp_v4_send_reset` for segments
//! that reach no socket (SPEC B.3). Also the IP output glue every TCP
//! segment goes through ([`Stack::tcp_emit`]).

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use super::minisocks::{TwSeg, TwStatus};
use super::tcp_input::Seg;
use super::{ConnKey, TcpState, seq_add};
use crate::netstack::{DropReason, Instant, IpRx, Mib, RxMeta, SocketErrorKind, Stack, StackError};

impl Stack {
    /// `tcp_v4_rcv` / `tcp_v6_rcv` (one function: the families differ only
    /// in their addresses). `l4` is the IP payload after reassembly.
    pub(crate) fn tcp_v4_rcv(&mut self, now: Instant, meta: &RxMeta, ip: &IpRx<'_>, l4: &[u8]) {
        if now > self.tcp.now {
            self.tcp.now = now;
        }
        self.counters.inc(Mib::TcpInSegs);
        if ip.mcast_or_bcast {
            // Linux: `skb->pkt_type != PACKET_HOST` → discard, no reply.
            self.drop_pkt(DropReason::TcpNotForUs, None);
            return;
        }
        if l4.len() < 20 {
            self.drop_pkt(DropReason::TcpTruncated, Some(Mib::TcpInErrs));
            return;
        }
        let pkt = TcpPacket::new_unchecked(l4);
        let hl = pkt.header_len() as usize;
        if hl < 20 || hl > l4.len() {
            self.drop_pkt(DropReason::TcpBadOffset, Some(Mib::TcpInErrs));
            return;
        }
        let (s, d) = (IpAddress::from(ip.src), IpAddress::from(ip.dst));
        if meta.verify_l4_csum() && !pkt.verify_checksum(&s, &d) {
            // SPEC B.3: CsumErrors + InErrs, silently (never a RST).
            self.drop_pkt(DropReason::TcpBadChecksum, Some(Mib::TcpInCsumErrors));
            self.counters.inc(Mib::TcpInErrs);
            return;
        }
        let Ok(repr) = TcpRepr::parse(&pkt, &s, &d, &ChecksumCapabilities::ignored()) else {
            // Port 0, malformed options, impossible flag combinations.
            self.drop_pkt(DropReason::TcpBadHeader, Some(Mib::TcpInErrs));
            return;
        };
        let local = SocketAddr::new(ip.dst, repr.dst_port);
        let remote = SocketAddr::new(ip.src, repr.src_port);
        let seg = Seg::new(local, remote, &repr);
        let tuple = (local, remote);
        if let Some(&slot) = self.tcp.conns.get(&ConnKey::new(local, remote)) {
            self.tcp_rcv_state_process(now, slot, &seg);
            return;
        }
        if let Some(i) = self.tcp.tw.lookup(&tuple) {
            let listener = self.tcp_lookup_listener(local);
            let tws = TwSeg {
                seq: seg.seq,
                end_seq: seg.end_seq(),
                syn: seg.syn,
                rst: seg.rst,
                ack: seg.ack.is_some(),
                tsval: seg.ts.map(|t| t.0),
            };
            match self.tcp_timewait_state_process(now, i, &tws, listener.is_some()) {
                TwStatus::Success => {}
                TwStatus::Ack => self.tcp_v4_timewait_ack(now, i),
                TwStatus::Syn(isn) => {
                    if let Some(l) = listener {
                        self.tcp_listen_rcv(now, l, &seg, Some(isn));
                    }
                }
            }
            return;
        }
        if let Some(l) = self.tcp_lookup_listener(local) {
            self.tcp_listen_rcv(now, l, &seg, None);
            return;
        }
        if !self.cfg.shard.owns_port(local.port()) {
            // Another shard's connection (steering put it here by mistake,
            // e.g. behind an IPv6 extension header): no RST.
            self.drop_pkt(DropReason::OtherShard, None);
            return;
        }
        self.drop_pkt(DropReason::TcpNoSocket, None);
        self.tcp_v4_send_reset(now, &seg);
    }

    /// The listener for a local address: (family, port), address matching
    /// or bound to the unspecified address.
    #[inline]
    pub(crate) fn tcp_lookup_listener(&self, local: SocketAddr) -> Option<u32> {
        let slot = *self.tcp.listeners.get(&(local.is_ipv6(), local.port()))?;
        let l = self.tcp.get(slot)?;
        (l.local.ip().is_unspecified() || l.local.ip() == local.ip()).then_some(slot)
    }

    /// `tcp_v4_send_reset` / `tcp_v6_send_reset` (SPEC B.3, RFC 9293
    /// §3.10.7.1): a reset built only from the arriving segment — ports
    /// swapped, no options; with ACK: `seq = SEG.ACK`, no ACK flag; without:
    /// `seq = 0`, ACK = SEG.SEQ + SEG.LEN. Never a reset for a reset.
    /// OutSegs + OutRsts.
    pub(crate) fn tcp_v4_send_reset(&mut self, now: Instant, seg: &Seg<'_>) {
        if seg.rst {
            return;
        }
        let (seq, ack) = match seg.ack {
            Some(a) => (a, None),
            None => (TcpSeqNumber(0), Some(seq_add(seg.seq, seg.len()))),
        };
        let repr = TcpRepr {
            src_port: seg.local.port(),
            dst_port: seg.remote.port(),
            control: TcpControl::Rst,
            seq_number: seq,
            ack_number: ack,
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        if self.tcp_emit(now, seg.local, seg.remote, &repr).is_ok() {
            self.counters.inc(Mib::TcpOutSegs);
            self.counters.inc(Mib::TcpOutRsts);
        }
    }

    /// ACK from a TIME_WAIT bucket (Linux `tcp_v4_timewait_ack`).
    pub(crate) fn tcp_v4_timewait_ack(&mut self, now: Instant, i: u32) {
        let Some(b) = self.tcp.tw.get(i) else {
            return;
        };
        let repr = TcpRepr {
            src_port: b.local.port(),
            dst_port: b.remote.port(),
            control: TcpControl::None,
            seq_number: b.snd_nxt,
            ack_number: Some(b.rcv_nxt),
            window_len: b.rcv_wnd_field,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: b.ts_ok.then(|| {
                smoltcp::wire::TcpTimestampRepr::new(
                    super::TcpTable::tsval(now, b.ts_off),
                    b.ts_recent,
                )
            }),
            payload: &[],
        };
        let (l, r) = (b.local, b.remote);
        if self.tcp_emit(now, l, r, &repr).is_ok() {
            self.counters.inc(Mib::TcpOutSegs);
        }
    }

    /// Hand one TCP segment to IP (`ip_queue_xmit` / `inet6_csk_xmit`);
    /// IP fills the checksum (`csum::finish_l4`).
    pub(crate) fn tcp_emit(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        repr: &TcpRepr<'_>,
    ) -> Result<(), StackError> {
        let len = repr.buffer_len();
        match (local.ip(), remote.ip()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => {
                let (s, d) = (IpAddress::Ipv4(l), IpAddress::Ipv4(r));
                self.ip_output(now, l, r, 6, None, len, &mut |buf| {
                    let mut p = TcpPacket::new_unchecked(buf);
                    repr.emit(&mut p, &s, &d, &ChecksumCapabilities::ignored());
                })
            }
            (IpAddr::V6(l), IpAddr::V6(r)) => {
                let (s, d) = (IpAddress::Ipv6(l), IpAddress::Ipv6(r));
                self.ip6_output(now, l, r, 6, None, len, &mut |buf| {
                    let mut p = TcpPacket::new_unchecked(buf);
                    repr.emit(&mut p, &s, &d, &ChecksumCapabilities::ignored());
                })
            }
            _ => Err(StackError::FamilyMismatch),
        }
    }

    /// `tcp_v4_err` / `tcp_v6_err`: an ICMP error quoting a segment we
    /// sent. Only a hard error during the handshake (SYN_SENT /
    /// SYN_RECEIVED) aborts the connection, after checking that the quoted
    /// sequence number is one we have outstanding (RFC 5927 §4.1); on a
    /// synchronized connection errors are soft (Linux `sk_err_soft`).
    /// Fragmentation needed / packet too big lowers the connection's path
    /// MTU instead (`tcp_v4_mtu_reduced`). Returns whether a connection
    /// matched.
    pub(crate) fn tcp_v4_err(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        l4: &[u8],
        kind: SocketErrorKind,
        mtu: u32,
    ) -> bool {
        let Some(&slot) = self.tcp.conns.get(&ConnKey::new(src, dst)) else {
            return false;
        };
        let Some(t) = self.tcp.get(slot) else {
            return false;
        };
        if l4.len() < 8 {
            return false;
        }
        let seq = TcpSeqNumber(i32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]));
        if !(super::seq_le(t.snd_una, seq) && super::seq_lt(seq, seq_add(t.snd_max, 1))) {
            return false;
        }
        let err = match kind {
            SocketErrorKind::ConnectionRefused => super::TcpError::ConnectionRefused,
            SocketErrorKind::HostUnreachable
            | SocketErrorKind::NetUnreachable
            | SocketErrorKind::ProtocolUnreachable => super::TcpError::HostUnreachable,
            SocketErrorKind::MessageTooLong => {
                self.tcp_mtu_reduced(slot, mtu);
                return true;
            }
        };
        if matches!(t.state, TcpState::SynSent | TcpState::SynReceived) {
            self.tcp_done(slot, Some(err));
        }
        true
    }

    /// `tcp_v4_mtu_reduced` / `tcp_v6_mtu_reduced` + `tcp_sync_mss`: the
    /// path to the peer carries at most `mtu` bytes (RFC 1191, RFC 8201).
    /// Linux's floors apply (`ip_rt_min_pmtu` 552 for IPv4, 1280 for IPv6),
    /// the link MTU caps it, and it only ever lowers the send MSS (the
    /// congestion window keeps its size in segments). 0 (no MTU given) is
    /// ignored. The next transmission and retransmission use the new MSS.
    pub(crate) fn tcp_mtu_reduced(&mut self, slot: u32, mtu: u32) {
        if mtu == 0 {
            return;
        }
        let link = self.cfg.mtu as u32;
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let v6 = t.remote.is_ipv6();
        let floor = if v6 { 1280 } else { 552 };
        let pmtu = mtu.max(floor).min(link).min(65535);
        if t.pmtu == 0 || pmtu < u32::from(t.pmtu) {
            t.pmtu = pmtu as u16;
        }
        let mut mss = u32::from(super::mss_for_mtu(pmtu as usize, v6));
        if t.ts_ok {
            mss -= 12;
        }
        if mss < u32::from(t.mss) {
            t.mss = mss as u16;
            t.cc.set_mss(mss);
        }
    }
}
