//! ICMPv4 (SPEC B.2, seed 002, RFC 792, RFC 1122 §3.2.2): echo, errors
//! with rate limiting, incoming errors delivered to sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Ipv4Packet};

use super::{DropReason, Instant, IpRx, Limits, Mib, RxMeta, SocketErrorKind, Stack};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const ECHO: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAM_PROB: u8 = 12;
/// Highest type Linux knows (`NR_ICMP_TYPES`).
const NR_ICMP_TYPES: u8 = 18;
/// Code 4 of Destination Unreachable: fragmentation needed.
const FRAG_NEEDED: u8 = 4;
const TTL: u8 = 64;

/// ICMP error types (Linux `icmp_pointers[].error`): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem.
fn is_error_type(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Rate limits for ICMP and ICMPv6 errors, as Linux applies them:
///
/// - one global token bucket shared by both families (`icmp_global_allow`:
///   `icmp_msgs_per_sec` messages a second, at most `icmp_msgs_burst` at
///   once), credit kept in thousandths of a message so no fraction of a
///   refill is lost;
/// - then a bucket per destination (`inet_peer_xrlim_allow`): one error per
///   `icmp_ratelimit` (1 s) to the same host after a burst of
///   [`PEER_BURST`], so one prober cannot take the whole global budget.
///   The peer table is bounded ([`PEER_TABLE_MAX`]); when full, idle
///   entries are dropped, else the table is cleared.
#[derive(Debug)]
pub struct IcmpState {
    credit: u64,
    last: Option<Instant>,
    per_sec: u64,
    burst: u64,
    /// Per destination: (token time in ms, last refill).
    peers: HashMap<IpAddr, (u64, Instant)>,
    peer_interval_ms: u64,
}

/// Errors a destination may get at once (Linux `XRLIM_BURST_FACTOR`).
pub const PEER_BURST: u64 = 6;
/// Destinations tracked by the per-destination limit.
pub const PEER_TABLE_MAX: usize = 4096;

/// Which limit refused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateLimited {
    Global,
    Host,
}

impl IcmpState {
    pub fn new(l: &Limits) -> Self {
        let burst = u64::from(l.icmp_msgs_burst);
        IcmpState {
            credit: burst * 1000,
            last: None,
            per_sec: u64::from(l.icmp_msgs_per_sec),
            burst,
            peers: HashMap::new(),
            peer_interval_ms: u64::from(l.icmp_ratelimit_ms),
        }
    }

    /// May an error go to `dst` now? Takes the global credit first, then
    /// the destination's (Linux order: `icmp_global_allow`, then
    /// `icmpv4_xrlim_allow` / `icmpv6_xrlim_allow`).
    pub(crate) fn allow(&mut self, now: Instant, dst: IpAddr) -> Result<(), RateLimited> {
        if !self.allow_global(now) {
            return Err(RateLimited::Global);
        }
        if self.allow_peer(now, dst) {
            Ok(())
        } else {
            Err(RateLimited::Host)
        }
    }

    fn allow_global(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last
            && now > last
        {
            let ms = (now - last).total_millis();
            self.credit = self
                .credit
                .saturating_add(ms.saturating_mul(self.per_sec))
                .min(self.burst * 1000);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
        if self.credit >= 1000 {
            self.credit -= 1000;
            true
        } else {
            false
        }
    }

    fn allow_peer(&mut self, now: Instant, dst: IpAddr) -> bool {
        let iv = self.peer_interval_ms;
        if iv == 0 {
            return true;
        }
        let cap = PEER_BURST * iv;
        if self.peers.len() >= PEER_TABLE_MAX && !self.peers.contains_key(&dst) {
            // idle long enough to be full again: forgetting them changes nothing
            self.peers.retain(|_, (tok, at)| {
                now <= *at || tok.saturating_add((now - *at).total_millis()) < cap
            });
            if self.peers.len() >= PEER_TABLE_MAX {
                self.peers.clear();
            }
        }
        let (tok, at) = self.peers.entry(dst).or_insert((cap, now));
        if now > *at {
            *tok = tok.saturating_add((now - *at).total_millis()).min(cap);
            *at = now;
        }
        if *tok >= iv {
            *tok -= iv;
            true
        } else {
            false
        }
    }
}

impl Stack {
    /// `icmp_rcv`: an ICMP message (IP payload) arrived for us. InMsgs for
    /// all; bad checksum (unless the device vouched for it) → InCsumErrors +
    /// InErrors; the per-type In counter; echo → reply (RFC 792, RFC 1122
    /// §3.2.2.6), except to broadcast/multicast (`icmp_echo_ignore_broadcasts`);
    /// errors → the socket that sent the quoted datagram.
    pub(crate) fn icmp_rcv(&mut self, now: Instant, meta: &RxMeta, ip: &IpRx<'_>, payload: &[u8]) {
        self.counters.inc(Mib::IcmpInMsgs);
        let pkt = Icmpv4Packet::new_unchecked(payload);
        if meta.verify_l4_csum() && !pkt.verify_checksum() {
            self.drop_pkt(DropReason::IcmpBadChecksum, Some(Mib::IcmpInCsumErrors));
            self.counters.inc(Mib::IcmpInErrors);
            return;
        }
        if payload.len() < 8 {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::IcmpInErrors));
            return;
        }
        let icmp_type = payload[0];
        match icmp_type {
            ECHO_REPLY => self.counters.inc(Mib::IcmpInEchoReps),
            DEST_UNREACH => self.counters.inc(Mib::IcmpInDestUnreachs),
            ECHO => self.counters.inc(Mib::IcmpInEchos),
            TIME_EXCEEDED => self.counters.inc(Mib::IcmpInTimeExcds),
            PARAM_PROB => self.counters.inc(Mib::IcmpInParmProbs),
            t if t > NR_ICMP_TYPES => {
                self.drop_pkt(DropReason::IcmpUnhandledType, Some(Mib::IcmpInErrors));
                return;
            }
            _ => {}
        }
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (ip.src, ip.dst) else {
            return;
        };
        // Linux looks at the route (IP destination), not the link address.
        if dst.is_multicast() || self.is_v4_broadcast(dst) {
            // Echo/timestamp to broadcast ignored (RFC 1122 §3.2.2.6 MAY,
            // Linux `icmp_echo_ignore_broadcasts=1`); other types to
            // broadcast are bogus. Both count InErrors in Linux.
            self.drop_pkt(DropReason::IcmpBroadcast, Some(Mib::IcmpInErrors));
            return;
        }
        match icmp_type {
            ECHO => self.icmp_echo(now, src, dst, &pkt),
            DEST_UNREACH | TIME_EXCEEDED | PARAM_PROB => {
                // next-hop MTU of "fragmentation needed" (RFC 1191 §4)
                let mtu = u16::from_be_bytes([payload[6], payload[7]]);
                self.icmp_unreach(icmp_type, pkt.msg_code(), mtu, &payload[8..])
            }
            _ => self.counters.drop_reason(DropReason::IcmpUnhandledType),
        }
    }

    /// `icmp_echo` (RFC 792 "Echo or Echo Reply Message"): the same
    /// identifier, sequence number and data, back to the sender from the
    /// address the request was sent to. Not rate limited (Linux's
    /// `icmp_ratemask` leaves echo replies out).
    fn icmp_echo(
        &mut self,
        now: Instant,
        peer: Ipv4Addr,
        ours: Ipv4Addr,
        req: &Icmpv4Packet<&[u8]>,
    ) {
        let data = &req.as_ref()[8..];
        let repr = Icmpv4Repr::EchoReply {
            ident: req.echo_ident(),
            seq_no: req.echo_seq_no(),
            data,
        };
        let len = repr.buffer_len();
        let res = self.ip_output(now, ours, peer, 1, Some(TTL), len, &mut |buf| {
            let mut p = Icmpv4Packet::new_unchecked(buf);
            repr.emit(&mut p, &ChecksumCapabilities::default());
        });
        match res {
            Ok(()) => {
                self.counters.inc(Mib::IcmpOutMsgs);
                self.counters.inc(Mib::IcmpOutEchoReps);
            }
            Err(super::StackError::NetUnreachable(_)) => {}
            Err(_) => self.counters.inc(Mib::IcmpOutErrors),
        }
    }

    /// `icmp_unreach` → `icmp_socket_deliver` → `udp_err`: an incoming
    /// error quoting a datagram we sent. The quote must hold the IP header
    /// and 8 bytes (else InErrors). A UDP quote from our address is matched
    /// to the socket bound to its source port and reported with Linux's
    /// `icmp_err_convert` meaning: port unreachable → connection refused,
    /// net unreachable/unknown (0, 6, 11) → net unreachable, protocol
    /// unreachable, fragmentation needed → message too long, other codes →
    /// host unreachable. Time Exceeded → host unreachable (Linux
    /// EHOSTUNREACH); Parameter Problem → host unreachable (Linux reports
    /// EPROTO, which has no kind here). TCP has no sockets yet: unmatched.
    fn icmp_unreach(&mut self, icmp_type: u8, code: u8, mtu: u16, quote: &[u8]) {
        if quote.len() < 20 {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::IcmpInErrors));
            return;
        }
        let q = Ipv4Packet::new_unchecked(quote);
        let ihl = q.header_len() as usize;
        if ihl < 20 || quote.len() < ihl + 8 {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::IcmpInErrors));
            return;
        }
        let kind = match (icmp_type, code) {
            (DEST_UNREACH, 3) => SocketErrorKind::ConnectionRefused,
            (DEST_UNREACH, 0 | 6 | 11) => SocketErrorKind::NetUnreachable,
            (DEST_UNREACH, 2) => SocketErrorKind::ProtocolUnreachable,
            (DEST_UNREACH, FRAG_NEEDED) => SocketErrorKind::MessageTooLong,
            _ => SocketErrorKind::HostUnreachable,
        };
        let (qsrc, qdst) = (q.src_addr(), q.dst_addr());
        let proto = u8::from(q.next_header());
        let mtu = if (icmp_type, code) == (DEST_UNREACH, FRAG_NEEDED) {
            u32::from(mtu)
        } else {
            0
        };
        self.icmp_err_deliver(proto, qsrc.into(), qdst.into(), &quote[ihl..], kind, mtu);
    }

    /// `icmp_send`: an ICMP error of `icmp_type`/`code` about `offending`
    /// (the received IPv4 datagram from its header). `info` is the pointer
    /// (parameter problem) or next-hop MTU (frag needed), else 0.
    ///
    /// RFC 1122 §3.2.2 / Linux `__icmp_send`: never about an ICMP error (or
    /// an unreadable ICMP message), a datagram to broadcast/multicast, one
    /// whose source is not a single host (0/8, broadcast, multicast,
    /// loopback, class E), or a non-first fragment. Errors are rate limited
    /// (global token bucket; frag-needed exempt as in Linux). The message
    /// quotes the offending IP header with its options and the first 8
    /// bytes of its payload (RFC 792), from the offending destination if it
    /// is ours, TTL 64.
    pub(crate) fn icmp_send(
        &mut self,
        now: Instant,
        offending: &[u8],
        icmp_type: u8,
        code: u8,
        info: u32,
    ) {
        if self.replicating {
            // a replica from another shard: learn only, never answer
            return;
        }
        if offending.len() < 20 {
            return;
        }
        let p = Ipv4Packet::new_unchecked(offending);
        let ihl = p.header_len() as usize;
        if p.version() != 4 || ihl < 20 || offending.len() < ihl {
            return;
        }
        let (src, dst) = (p.src_addr(), p.dst_addr());
        if dst.is_multicast() || self.is_v4_broadcast(dst) {
            return;
        }
        if src.octets()[0] == 0
            || src.octets()[0] >= 240
            || src.is_multicast()
            || src.is_loopback()
            || self.is_v4_broadcast(src)
            || self.is_our_v4(src)
        {
            return;
        }
        if p.frag_offset() != 0 {
            return;
        }
        if u8::from(p.next_header()) == 1 {
            match offending.get(ihl) {
                Some(&t) if t <= NR_ICMP_TYPES && !is_error_type(t) => {}
                _ => return,
            }
        }
        let Some(ours) = (if self.is_our_v4(dst) {
            Some(dst)
        } else {
            self.src_for_v4(src)
        }) else {
            return;
        };
        let exempt = icmp_type == DEST_UNREACH && code == FRAG_NEEDED;
        if !exempt && let Err(which) = self.icmp.allow(now, IpAddr::V4(src)) {
            let mib = match which {
                RateLimited::Global => Mib::IcmpOutRateLimitGlobal,
                RateLimited::Host => Mib::IcmpOutRateLimitHost,
            };
            self.drop_pkt(DropReason::IcmpRateLimited, Some(mib));
            return;
        }
        let quote = &offending[..offending.len().min(ihl + 8)];
        let rest = if icmp_type == PARAM_PROB {
            [info as u8, 0, 0, 0]
        } else {
            info.to_be_bytes()
        };
        let len = 8 + quote.len();
        let res = self.ip_output(now, ours, src, 1, Some(TTL), len, &mut |buf| {
            buf[4..8].copy_from_slice(&rest);
            buf[8..].copy_from_slice(quote);
            let mut m = Icmpv4Packet::new_unchecked(buf);
            m.set_msg_type(Icmpv4Message::from(icmp_type));
            m.set_msg_code(code);
            m.fill_checksum();
        });
        match res {
            Ok(()) => {
                self.counters.inc(Mib::IcmpOutMsgs);
                match icmp_type {
                    DEST_UNREACH => self.counters.inc(Mib::IcmpOutDestUnreachs),
                    TIME_EXCEEDED => self.counters.inc(Mib::IcmpOutTimeExcds),
                    PARAM_PROB => self.counters.inc(Mib::IcmpOutParmProbs),
                    _ => {}
                }
            }
            Err(super::StackError::NetUnreachable(_)) => {}
            Err(_) => self.counters.inc(Mib::IcmpOutErrors),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::ipv4::tests::{eth4, fix_csum, frag, ip4, tx_ip, udp4};
    use super::super::testutil::*;
    use super::super::{Duration, EthernetAddress, RxChecksum, SocketError, SocketEvent};
    use super::*;

    #[test]
    fn b2_error_rate_limit_is_one_bucket_with_fractional_refill() {
        let l = Limits {
            icmp_msgs_per_sec: 500,
            icmp_msgs_burst: 2,
            ..Limits::default()
        };
        let mut b = IcmpState::new(&l);
        let t = t0();
        assert!(
            b.allow_global(t) && b.allow_global(t) && !b.allow_global(t),
            "burst of 2"
        );
        // 500/s: one message every 2 ms; 1 ms twice adds up to one
        assert!(!b.allow_global(t + Duration::from_millis(1)));
        assert!(b.allow_global(t + Duration::from_millis(2)));
        // a clock that goes backwards neither refills nor panics
        assert!(!b.allow_global(t));
        // never more than the burst, however long the pause
        let later = t + Duration::from_secs(3600);
        assert!(b.allow_global(later) && b.allow_global(later) && !b.allow_global(later));
    }

    #[test]
    fn b2_errors_to_one_destination_are_limited_per_host() {
        let l = Limits {
            icmp_msgs_per_sec: 1_000_000,
            icmp_msgs_burst: 1_000_000,
            ..Limits::default()
        };
        let mut b = IcmpState::new(&l);
        let (t, a, c) = (t0(), IpAddr::V4(PEER4), IpAddr::V4(GW4));
        for _ in 0..PEER_BURST {
            assert_eq!(b.allow(t, a), Ok(()));
        }
        assert_eq!(
            b.allow(t, a),
            Err(RateLimited::Host),
            "burst of 6, then 1/s"
        );
        assert_eq!(b.allow(t, c), Ok(()), "another host has its own bucket");
        assert_eq!(
            b.allow(t + Duration::from_millis(999), a),
            Err(RateLimited::Host)
        );
        assert_eq!(b.allow(t + Duration::from_millis(1000), a), Ok(()));
        // the table stays bounded under a flood of distinct sources
        for i in 0..(PEER_TABLE_MAX as u32 + 100) {
            let _ = b.allow(t, IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)));
        }
        assert!(b.peers.len() <= PEER_TABLE_MAX);
    }

    #[test]
    fn b2_v4_and_v6_errors_share_the_rate_limit() {
        let mut c = config();
        c.limits.icmp_msgs_burst = 1;
        c.limits.icmp_msgs_per_sec = 1;
        let mut s = Stack::new(c, t0());
        for ip in [PEER4.into(), PEER6.into()] {
            s.neigh_update(t0(), ip, EthernetAddress(PEER_MAC), true);
        }
        drain(&mut s);
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 1, 9, b"x"),
        );
        assert_eq!(
            drain(&mut s).len(),
            1,
            "v4 port unreachable uses the only token"
        );
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp6_frame(OUR_MAC, PEER6, OUR6, 1, 9, b"x"),
        );
        assert!(drain(&mut s).is_empty(), "no token left for v6");
        assert_eq!(s.counters.drops(DropReason::IcmpRateLimited), 1);
    }

    fn rx(s: &mut Stack, now: Instant, pkt: &[u8]) {
        s.receive_frame(now, RxMeta::HOST, &eth4(pkt));
    }

    /// An ICMP message with a correct checksum.
    fn icmp_msg(t: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![t, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(body);
        Icmpv4Packet::new_unchecked(&mut m[..]).fill_checksum();
        m
    }

    fn echo_request(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let repr = Icmpv4Repr::EchoRequest {
            ident: id,
            seq_no: seq,
            data,
        };
        let mut m = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut m[..]),
            &ChecksumCapabilities::default(),
        );
        m
    }

    /// The single ICMP message emitted, with its IPv4 header checked.
    fn one_icmp(s: &mut Stack) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
        let out = drain(s);
        assert_eq!(out.len(), 1, "{:?}", s.counters.nonzero());
        let ip = Ipv4Packet::new_checked(tx_ip(&out[0])).expect("ipv4");
        assert!(ip.verify_checksum());
        assert_eq!(u8::from(ip.next_header()), 1);
        assert_eq!(ip.hop_limit(), 64);
        let icmp = ip.payload().to_vec();
        assert!(Icmpv4Packet::new_unchecked(&icmp[..]).verify_checksum());
        (ip.src_addr(), ip.dst_addr(), icmp)
    }

    #[test]
    fn b2_echo_request_gets_exact_reply() {
        let mut s = ready_stack();
        let data = b"0123456789abcdefghijklmnopqrstuvwxyz-ping".to_vec();
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 1, &echo_request(0x1234, 0x0102, &data)),
        );
        let (src, dst, icmp) = one_icmp(&mut s);
        assert_eq!((src, dst), (OUR4, PEER4));
        let p = Icmpv4Packet::new_checked(&icmp[..]).expect("icmp");
        assert_eq!(
            Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()).expect("parse"),
            Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq_no: 0x0102,
                data: &data
            }
        );
        assert_eq!(s.counters.get(Mib::IcmpInMsgs), 1);
        assert_eq!(s.counters.get(Mib::IcmpInEchos), 1);
        assert_eq!(s.counters.get(Mib::IcmpOutEchoReps), 1);
        assert_eq!(s.counters.get(Mib::IcmpOutMsgs), 1);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b2_echo_to_broadcast_is_ignored() {
        let mut s = ready_stack();
        for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(198, 18, 0, 255)] {
            rx(
                &mut s,
                t0(),
                &ip4(PEER4, dst, 1, 1, &echo_request(1, 1, b"x")),
            );
        }
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.drops(DropReason::IcmpBroadcast), 2);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 2);
        assert_eq!(s.counters.get(Mib::IcmpOutMsgs), 0);
    }

    #[test]
    fn b2_icmp_bad_checksum_is_dropped() {
        let mut s = ready_stack();
        let mut m = echo_request(1, 1, b"abc");
        m[6] ^= 1;
        rx(&mut s, t0(), &ip4(PEER4, OUR4, 1, 1, &m));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.drops(DropReason::IcmpBadChecksum), 1);
        assert_eq!(s.counters.get(Mib::IcmpInCsumErrors), 1);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 1);
        assert_eq!(s.counters.get(Mib::IcmpInEchos), 0);
    }

    #[test]
    fn b2_icmp_checksum_not_checked_when_device_says_not_ready() {
        let mut s = ready_stack();
        let mut m = echo_request(1, 1, b"abc");
        m[2] = 0;
        m[3] = 0;
        let meta = RxMeta {
            l4_csum: RxChecksum::NotReady,
            ..RxMeta::HOST
        };
        s.receive_frame(t0(), meta, &eth4(&ip4(PEER4, OUR4, 1, 1, &m)));
        let (_, _, icmp) = one_icmp(&mut s);
        assert_eq!(icmp[0], 0);
    }

    #[test]
    fn b2_icmp_truncated_is_in_error() {
        let mut s = ready_stack();
        let mut m = vec![8, 0, 0, 0, 0, 0];
        Icmpv4Packet::new_unchecked(&mut m[..]).fill_checksum();
        rx(&mut s, t0(), &ip4(PEER4, OUR4, 1, 1, &m));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.drops(DropReason::IcmpTruncated), 1);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 1);
    }

    #[test]
    fn b2_udp_closed_port_gets_port_unreachable_quoting_header_and_8_bytes() {
        let mut s = ready_stack();
        let p = udp4(PEER4, OUR4, 5070, 5999, b"INVITE sip:x SIP/2.0\r\n");
        rx(&mut s, t0(), &p);
        assert_eq!(s.counters.get(Mib::UdpNoPorts), 1);
        let (src, dst, icmp) = one_icmp(&mut s);
        assert_eq!((src, dst), (OUR4, PEER4));
        let mut want = vec![3, 3, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&p[..28]);
        let csum = [icmp[2], icmp[3]];
        want[2..4].copy_from_slice(&csum);
        assert_eq!(icmp, want);
        assert_eq!(s.counters.get(Mib::IcmpOutDestUnreachs), 1);
        assert_eq!(s.counters.get(Mib::IcmpOutMsgs), 1);
    }

    #[test]
    fn b2_no_port_unreachable_for_broadcast_or_link_broadcast() {
        let mut s = ready_stack();
        rx(
            &mut s,
            t0(),
            &udp4(PEER4, Ipv4Addr::BROADCAST, 1, 5999, b"x"),
        );
        // Unicast IP but sent to the Ethernet broadcast address.
        let mut f = eth4(&udp4(PEER4, OUR4, 1, 5999, b"x"));
        f[..6].copy_from_slice(&[0xff; 6]);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.get(Mib::UdpNoPorts), 2);
        assert!(drain(&mut s).is_empty());
        // Directly: an offending datagram to broadcast or multicast.
        let b = udp4(PEER4, Ipv4Addr::new(198, 18, 0, 255), 1, 2, b"x");
        s.icmp_send(t0(), &b, 3, 3, 0);
        let m = udp4(PEER4, Ipv4Addr::new(224, 0, 0, 1), 1, 2, b"x");
        s.icmp_send(t0(), &m, 3, 3, 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b2_no_icmp_error_about_an_icmp_error() {
        let mut s = ready_stack();
        let inner = udp4(OUR4, PEER4, 1, 2, b"x");
        for t in [3u8, 4, 5, 11, 12, 40] {
            let err = ip4(PEER4, OUR4, 1, 1, &icmp_msg(t, 0, [0; 4], &inner[..28]));
            s.icmp_send(t0(), &err, 3, 2, 0);
        }
        // Truncated ICMP (type unreadable): no error either.
        s.icmp_send(t0(), &ip4(PEER4, OUR4, 1, 1, &[]), 3, 2, 0);
        assert!(drain(&mut s).is_empty());
        // ...but an echo request (a query) may be reported on.
        s.icmp_send(
            t0(),
            &ip4(PEER4, OUR4, 1, 1, &echo_request(1, 1, b"")),
            3,
            2,
            0,
        );
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn b2_no_icmp_error_about_a_non_first_fragment() {
        let mut s = ready_stack();
        let p = udp4(PEER4, OUR4, 1, 2, &[0; 64]);
        s.icmp_send(t0(), &frag(&p, 16, &p[36..], false), 3, 3, 0);
        assert!(drain(&mut s).is_empty());
        s.icmp_send(t0(), &frag(&p, 0, &p[20..36], true), 3, 3, 0);
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn b2_no_icmp_error_to_a_source_that_is_not_a_host() {
        let mut s = ready_stack();
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(224, 1, 2, 3),
            Ipv4Addr::new(240, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(198, 18, 0, 255),
        ] {
            s.icmp_send(t0(), &udp4(src, OUR4, 1, 2, b"x"), 3, 3, 0);
        }
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.get(Mib::IcmpOutMsgs), 0);
    }

    #[test]
    fn b2_icmp_errors_are_rate_limited_after_the_burst() {
        let mut s = ready_stack();
        // the global bucket alone (one source would hit its per-host limit)
        s.icmp = IcmpState::new(&Limits {
            icmp_ratelimit_ms: 0,
            ..s.cfg.limits.clone()
        });
        let burst = s.cfg.limits.icmp_msgs_burst as usize;
        let p = udp4(PEER4, OUR4, 5070, 5999, b"x");
        for _ in 0..burst + 5 {
            rx(&mut s, t0(), &p);
        }
        assert_eq!(drain(&mut s).len(), burst);
        assert_eq!(s.counters.drops(DropReason::IcmpRateLimited), 5);
        assert_eq!(s.counters.get(Mib::IcmpOutRateLimitGlobal), 5);
        assert_eq!(s.counters.get(Mib::UdpNoPorts), burst as u64 + 5);
        // 10 ms at 1000/s refills 10 tokens.
        let later = t0() + Duration::from_millis(10);
        for _ in 0..20 {
            rx(&mut s, later, &p);
        }
        assert_eq!(drain(&mut s).len(), 10);
        // A second later the bucket is full again (capped at the burst).
        let much_later = t0() + Duration::from_secs(5);
        for _ in 0..burst + 1 {
            rx(&mut s, much_later, &p);
        }
        assert_eq!(drain(&mut s).len(), burst);
    }

    #[test]
    fn b2_echo_replies_are_not_rate_limited() {
        let mut s = ready_stack();
        let burst = s.cfg.limits.icmp_msgs_burst as usize;
        let req = ip4(PEER4, OUR4, 1, 1, &echo_request(1, 1, b"x"));
        for _ in 0..burst + 10 {
            rx(&mut s, t0(), &req);
        }
        assert_eq!(drain(&mut s).len(), burst + 10);
    }

    /// Send `data` from a socket to PEER4:5070 and return the socket and
    /// the IP datagram that left.
    fn sent_datagram(s: &mut Stack) -> (super::super::UdpHandle, Vec<u8>) {
        let h = s
            .udp_bind(SocketAddr::new(OUR4.into(), 5060))
            .expect("bind");
        s.udp_send_to(t0(), h, SocketAddr::new(PEER4.into(), 5070), b"OPTIONS")
            .expect("send");
        let out = drain(s);
        (h, tx_ip(&out[0]).to_vec())
    }

    #[test]
    fn b2_incoming_port_unreachable_is_connection_refused_on_the_socket() {
        let mut s = ready_stack();
        let (h, dgram) = sent_datagram(&mut s);
        let err = icmp_msg(3, 3, [0; 4], &dgram[..28]);
        rx(&mut s, t0(), &ip4(PEER4, OUR4, 1, 9, &err));
        assert_eq!(
            s.udp_take_error(h),
            Some(SocketError {
                kind: SocketErrorKind::ConnectionRefused,
                remote: SocketAddr::new(PEER4.into(), 5070),
            })
        );
        assert_eq!(s.poll_event(), Some(SocketEvent::UdpError(h)));
        assert_eq!(s.counters.get(Mib::IcmpInDestUnreachs), 1);
        assert_eq!(s.counters.total_drops(), 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b2_incoming_error_codes_map_like_linux() {
        let cases = [
            (3, 0, SocketErrorKind::NetUnreachable),
            (3, 1, SocketErrorKind::HostUnreachable),
            (3, 2, SocketErrorKind::ProtocolUnreachable),
            (3, 4, SocketErrorKind::MessageTooLong),
            (3, 6, SocketErrorKind::NetUnreachable),
            (3, 10, SocketErrorKind::HostUnreachable),
            (3, 13, SocketErrorKind::HostUnreachable),
            (11, 0, SocketErrorKind::HostUnreachable),
            (12, 0, SocketErrorKind::HostUnreachable),
        ];
        for (t, code, kind) in cases {
            let mut s = ready_stack();
            let (h, dgram) = sent_datagram(&mut s);
            let err = icmp_msg(t, code, [0; 4], &dgram[..28]);
            rx(&mut s, t0(), &ip4(PEER4, OUR4, 1, 9, &err));
            assert_eq!(
                s.udp_take_error(h).map(|e| e.kind),
                Some(kind),
                "{t}/{code}"
            );
        }
    }

    #[test]
    fn b2_incoming_error_counted_per_type() {
        let mut s = ready_stack();
        let (_, dgram) = sent_datagram(&mut s);
        for t in [3, 11, 12] {
            let err = icmp_msg(t, 0, [0; 4], &dgram[..28]);
            rx(&mut s, t0(), &ip4(PEER4, OUR4, 1, 9, &err));
        }
        assert_eq!(s.counters.get(Mib::IcmpInDestUnreachs), 1);
        assert_eq!(s.counters.get(Mib::IcmpInTimeExcds), 1);
        assert_eq!(s.counters.get(Mib::IcmpInParmProbs), 1);
        assert_eq!(s.counters.get(Mib::IcmpInMsgs), 3);
    }

    #[test]
    fn b2_incoming_error_without_socket_is_unmatched() {
        let mut s = ready_stack();
        let (h, dgram) = sent_datagram(&mut s);
        s.udp_close(h);
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(3, 3, [0; 4], &dgram[..28])),
        );
        // A quote of a datagram someone else sent.
        let other = udp4(Ipv4Addr::new(198, 18, 0, 7), PEER4, 5060, 5070, b"x");
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(3, 3, [0; 4], &other[..28])),
        );
        // A TCP quote: nothing to match yet.
        let mut tcp = dgram[..28].to_vec();
        tcp[9] = 6;
        fix_csum(&mut tcp);
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(3, 3, [0; 4], &tcp)),
        );
        assert_eq!(s.counters.drops(DropReason::IcmpErrorUnmatched), 3);
        assert!(s.poll_event().is_none());
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b2_incoming_error_with_short_quote_is_in_error() {
        let mut s = ready_stack();
        let (h, dgram) = sent_datagram(&mut s);
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(3, 3, [0; 4], &dgram[..24])),
        );
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(3, 3, [0; 4], &dgram[..12])),
        );
        assert_eq!(s.counters.drops(DropReason::IcmpTruncated), 2);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 2);
        assert_eq!(s.udp_take_error(h), None);
    }

    #[test]
    fn b2_unknown_icmp_types() {
        let mut s = ready_stack();
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(13, 0, [0; 4], &[0; 12])),
        );
        assert_eq!(s.counters.drops(DropReason::IcmpUnhandledType), 1);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 0);
        rx(
            &mut s,
            t0(),
            &ip4(PEER4, OUR4, 1, 9, &icmp_msg(99, 0, [0; 4], &[])),
        );
        assert_eq!(s.counters.drops(DropReason::IcmpUnhandledType), 2);
        assert_eq!(s.counters.get(Mib::IcmpInErrors), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b2_parameter_problem_carries_the_pointer() {
        let mut s = ready_stack();
        let p = udp4(PEER4, OUR4, 1, 2, b"x");
        s.icmp_send(t0(), &p, 12, 0, 9);
        let (_, _, icmp) = one_icmp(&mut s);
        assert_eq!(&icmp[..2], &[12, 0]);
        assert_eq!(&icmp[4..8], &[9, 0, 0, 0]);
        assert_eq!(s.counters.get(Mib::IcmpOutParmProbs), 1);
    }
}
