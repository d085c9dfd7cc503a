//! ICMPv4 (SPEC B.2, seed 002, RFC 792, RFC 1122 §3.2.2): echo, errors
//! with rate limiting, incoming errors delivered to sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// ICMP output state: the global token bucket for errors (Linux
/// `icmp_global_allow`: `icmp_msgs_per_sec`, `icmp_msgs_burst`).
#[derive(Debug)]
pub struct IcmpState {
    per_sec: u64,
    burst: u64,
    tokens: u64,
    /// When tokens were last added (None: bucket untouched, full).
    stamp: Option<Instant>,
}

impl IcmpState {
    pub fn new(l: &Limits) -> Self {
        IcmpState {
            per_sec: l.icmp_msgs_per_sec as u64,
            burst: l.icmp_msgs_burst as u64,
            tokens: l.icmp_msgs_burst as u64,
            stamp: None,
        }
    }

    /// Take one token, refilling by the time elapsed since the last refill
    /// (at most one second's worth, as Linux does).
    fn allow(&mut self, now: Instant) -> bool {
        let stamp = *self.stamp.get_or_insert(now);
        let elapsed = if now > stamp {
            (now - stamp).total_millis().min(1000)
        } else {
            0
        };
        let incr = self.per_sec * elapsed / 1000;
        if incr > 0 {
            self.stamp = Some(now);
        }
        self.tokens = (self.tokens + incr).min(self.burst);
        if self.tokens > 0 {
            self.tokens -= 1;
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
                self.icmp_unreach(icmp_type, pkt.msg_code(), &payload[8..])
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
    fn icmp_unreach(&mut self, icmp_type: u8, code: u8, quote: &[u8]) {
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
        let l4 = &quote[ihl..];
        let matched = u8::from(q.next_header()) == 17 && self.is_our_v4(qsrc) && {
            let sport = u16::from_be_bytes([l4[0], l4[1]]);
            let dport = u16::from_be_bytes([l4[2], l4[3]]);
            let local = SocketAddr::new(IpAddr::V4(qsrc), sport);
            let remote = SocketAddr::new(IpAddr::V4(qdst), dport);
            self.udp_err(local, remote, kind)
        };
        if !matched {
            self.counters.drop_reason(DropReason::IcmpErrorUnmatched);
        }
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
        if !exempt && !self.icmp.allow(now) {
            self.drop_pkt(DropReason::IcmpRateLimited, Some(Mib::IcmpOutRateLimitHost));
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
