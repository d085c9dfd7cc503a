//! ICMPv6 (RFC 4443; Linux `icmpv6_rcv`, `icmp6_send`): echo, errors with
//! rate limiting, incoming errors delivered to the socket that sent the
//! offending packet; NDP messages go to `ndp`.

use std::net::Ipv6Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IPV6_HEADER_LEN, IPV6_MIN_MTU, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet,
};

use super::{DropReason, Instant, IpRx, Mib, RxMeta, SocketErrorKind, Stack};

/// ICMPv6 header length of the error messages (type, code, checksum,
/// 32-bit parameter).
const ICMP6_ERR_HDR: usize = 8;

/// Where the upper-layer header of an IPv6 packet starts (the quoted one in
/// an ICMPv6 error, or an offending one): skips hop-by-hop, routing,
/// destination options and fragment headers (Linux `ipv6_skip_exthdr`).
/// The flag is set when the walk stopped at a non-first fragment: the
/// protocol is known but its header is not there. None when truncated.
pub(crate) fn skip_exthdr(pkt: &[u8]) -> Option<(IpProtocol, usize, bool)> {
    let mut nh = IpProtocol::from(*pkt.get(6)?);
    let mut off = IPV6_HEADER_LEN;
    loop {
        match nh {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                let h = Ipv6ExtHeader::new_unchecked(pkt.get(off..off + 2)?);
                nh = h.next_header();
                off += (h.header_len() as usize + 1) * 8;
            }
            IpProtocol::Ipv6Frag => {
                let fh = Ipv6FragmentHeader::new_checked(pkt.get(off + 2..off + 8)?).ok()?;
                nh = IpProtocol::from(pkt[off]);
                off += 8;
                if fh.frag_offset() != 0 {
                    return Some((nh, off, true));
                }
            }
            _ => return Some((nh, off, false)),
        }
    }
}

/// RFC 4443 §2.4(e.1): is `pkt` an ICMPv6 error message, or an ICMPv6
/// message whose type cannot be read (Linux `is_ineligible`)?
fn is_ineligible(pkt: &[u8]) -> bool {
    match skip_exthdr(pkt) {
        Some((IpProtocol::Icmpv6, off, nonfirst)) => {
            nonfirst
                || pkt
                    .get(off)
                    .is_none_or(|&t| Icmpv6Message::from(t).is_error())
        }
        _ => false,
    }
}

impl Stack {
    /// `icmpv6_rcv` (RFC 4443 §2.4, §4): InMsgs; checksum (mandatory,
    /// skipped only when the device vouched for it) → InCsumErrors +
    /// InErrors; per-type In counters; echo request answered; errors
    /// delivered to the UDP socket; NDP to `ndisc_rcv`, MLD to `mld_rcv`.
    pub(crate) fn icmpv6_rcv(
        &mut self,
        now: Instant,
        meta: &RxMeta,
        ip: &IpRx<'_>,
        payload: &[u8],
    ) {
        self.counters.inc(Mib::Icmp6InMsgs);
        let (std::net::IpAddr::V6(src), std::net::IpAddr::V6(dst)) = (ip.src, ip.dst) else {
            return;
        };
        if payload.len() < 4 {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::Icmp6InErrors));
            return;
        }
        let pkt = Icmpv6Packet::new_unchecked(payload);
        if meta.verify_l4_csum() && !pkt.verify_checksum(&src, &dst) {
            self.drop_pkt(DropReason::IcmpBadChecksum, Some(Mib::Icmp6InCsumErrors));
            self.counters.inc(Mib::Icmp6InErrors);
            return;
        }
        let ty = payload[0];
        if let Some(m) = match ty {
            1 => Some(Mib::Icmp6InDestUnreachs),
            2 => Some(Mib::Icmp6InPktTooBigs),
            3 => Some(Mib::Icmp6InTimeExcds),
            4 => Some(Mib::Icmp6InParmProblems),
            128 => Some(Mib::Icmp6InEchos),
            129 => Some(Mib::Icmp6InEchoReplies),
            130 => Some(Mib::Icmp6InGroupMembQueries),
            131 => Some(Mib::Icmp6InGroupMembResponses),
            132 => Some(Mib::Icmp6InGroupMembReductions),
            134 => Some(Mib::Icmp6InRouterAdvertisements),
            135 => Some(Mib::Icmp6InNeighborSolicits),
            136 => Some(Mib::Icmp6InNeighborAdvertisements),
            143 => Some(Mib::Icmp6InMLDv2Reports),
            _ => None,
        } {
            self.counters.inc(m);
        }
        match ty {
            1..=4 => self.icmpv6_notify(payload),
            128 => self.icmpv6_echo_reply(now, src, dst, payload),
            130..=132 | 143 => self.mld_rcv(now, ip, payload),
            133..=137 => self.ndisc_rcv(now, ip, payload),
            // 129: no ping sockets; the rest are not handled.
            _ => self.counters.drop_reason(DropReason::IcmpUnhandledType),
        }
    }

    /// `icmpv6_echo_reply` (RFC 4443 §4.2): same identifier, sequence and
    /// data, from the address the request was sent to. A request to a
    /// multicast group is answered too (Linux default,
    /// `icmpv6_echo_ignore_multicast = 0`), from our unicast address chosen
    /// for the requester.
    fn icmpv6_echo_reply(&mut self, now: Instant, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) {
        let Ok(pkt) = Icmpv6Packet::new_checked(payload) else {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::Icmp6InErrors));
            return;
        };
        if pkt.msg_code() != 0 {
            self.counters.drop_reason(DropReason::IcmpUnhandledType);
            return;
        }
        if src.is_unspecified() || src.is_multicast() {
            self.counters.drop_reason(DropReason::Ipv6BadSource);
            return;
        }
        let from = if self.is_our_v6(dst) {
            Some(dst)
        } else {
            self.src_for_v6(src)
        };
        let Some(from) = from else {
            return;
        };
        let repr = Icmpv6Repr::EchoReply {
            ident: pkt.echo_ident(),
            seq_no: pkt.echo_seq_no(),
            data: pkt.payload(),
        };
        let len = repr.buffer_len();
        let res = self.ip6_output(now, from, src, 58, None, len, &mut |buf| {
            repr.emit(
                &from,
                &src,
                &mut Icmpv6Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            )
        });
        match res {
            Ok(()) => {
                self.counters.inc(Mib::Icmp6OutMsgs);
                self.counters.inc(Mib::Icmp6OutEchoReplies);
            }
            Err(_) => self.counters.inc(Mib::Icmp6OutErrors),
        }
    }

    /// `icmpv6_notify` / `udpv6_err`: an incoming Destination Unreachable,
    /// Packet Too Big, Time Exceeded or Parameter Problem. The quoted IPv6
    /// header (extension headers skipped) and first upper-layer bytes name
    /// the UDP socket that sent the offending datagram; it gets the error
    /// (`icmpv6_err_convert`).
    fn icmpv6_notify(&mut self, payload: &[u8]) {
        let (ty, code) = (payload[0], payload[1]);
        let quoted = payload.get(ICMP6_ERR_HDR..).unwrap_or(&[]);
        if quoted.len() < IPV6_HEADER_LEN {
            self.drop_pkt(DropReason::IcmpTruncated, Some(Mib::Icmp6InErrors));
            return;
        }
        let q = Ipv6Packet::new_unchecked(quoted);
        let (qsrc, qdst) = (q.src_addr(), q.dst_addr());
        let kind = match (ty, code) {
            (1, 0) => SocketErrorKind::NetUnreachable,
            (1, 4) => SocketErrorKind::ConnectionRefused,
            (1, _) => SocketErrorKind::HostUnreachable,
            (2, _) => SocketErrorKind::MessageTooLong,
            (3, _) => SocketErrorKind::HostUnreachable,
            _ => SocketErrorKind::ProtocolUnreachable,
        };
        // a non-first fragment quotes no transport header: nothing to match
        let (proto, l4) = match skip_exthdr(quoted) {
            Some((p, off, false)) => (u8::from(p), quoted.get(off..).unwrap_or(&[])),
            _ => (0, &[][..]),
        };
        // Packet Too Big carries the MTU in the 32-bit field after the
        // checksum (RFC 4443 §3.2)
        let mtu = if ty == 2 {
            u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])
        } else {
            0
        };
        self.icmp_err_deliver(proto, qsrc.into(), qdst.into(), l4, kind, mtu);
    }

    /// An ICMPv6 error of `icmp_type`/`code` about `offending` (the received
    /// IPv6 packet from its header). `info`: pointer (parameter problem),
    /// MTU (packet too big), else 0.
    pub(crate) fn icmpv6_send(
        &mut self,
        now: Instant,
        offending: &[u8],
        icmp_type: u8,
        code: u8,
        info: u32,
    ) {
        self.icmpv6_send_ex(now, offending, false, icmp_type, code, info);
    }

    /// `icmp6_send` (RFC 4443 §2.4): never about an ICMPv6 error (or an
    /// unreadable ICMPv6 message), never to an unspecified or multicast
    /// source; about a packet sent to a multicast address (or in a
    /// link-level multicast, `link_mcast`) only Packet Too Big and Parameter
    /// Problem code 2 for an option whose high bits are 10 (§2.4(e.3));
    /// rate limited (Packet Too Big excepted, as Linux). The error quotes as
    /// much of `offending` as fits in 1280 bytes (§2.4(c)), from the
    /// offending destination if it is our unicast address.
    pub(crate) fn icmpv6_send_ex(
        &mut self,
        now: Instant,
        offending: &[u8],
        link_mcast: bool,
        icmp_type: u8,
        code: u8,
        info: u32,
    ) {
        if self.replicating {
            // a replica from another shard: learn only, never answer
            return;
        }
        if offending.len() < IPV6_HEADER_LEN {
            return;
        }
        let o = Ipv6Packet::new_unchecked(offending);
        let (osrc, odst) = (o.src_addr(), o.dst_addr());
        if osrc.is_unspecified() || osrc.is_multicast() {
            return;
        }
        if odst.is_multicast() || link_mcast {
            let unrec_option = icmp_type == 4
                && code == 2
                && offending
                    .get(info as usize)
                    .is_some_and(|&b| b & 0xc0 == 0x80);
            if icmp_type != 2 && !unrec_option {
                return;
            }
        }
        if is_ineligible(offending) {
            return;
        }
        if icmp_type != 2
            && let Err(which) = self.icmp.allow(now, osrc.into())
        {
            let mib = match which {
                super::icmp::RateLimited::Global => Mib::Icmp6OutRateLimitGlobal,
                super::icmp::RateLimited::Host => Mib::Icmp6OutRateLimitHost,
            };
            self.drop_pkt(DropReason::IcmpRateLimited, Some(mib));
            return;
        }
        let from = if self.is_our_v6(odst) {
            Some(odst)
        } else {
            self.src_for_v6(osrc)
        };
        let Some(from) = from else {
            return;
        };
        let quote = offending
            .len()
            .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP6_ERR_HDR);
        let quoted = &offending[..quote];
        let res = self.ip6_output(
            now,
            from,
            osrc,
            58,
            None,
            ICMP6_ERR_HDR + quote,
            &mut |buf| {
                buf[..ICMP6_ERR_HDR].fill(0);
                let mut p = Icmpv6Packet::new_unchecked(buf);
                p.set_msg_type(Icmpv6Message::from(icmp_type));
                p.set_msg_code(code);
                match icmp_type {
                    2 => p.set_pkt_too_big_mtu(info),
                    4 => p.set_param_problem_ptr(info),
                    _ => {}
                }
                p.payload_mut()[..quote].copy_from_slice(quoted);
                p.fill_checksum(&from, &osrc);
            },
        );
        match res {
            Ok(()) => {
                self.counters.inc(Mib::Icmp6OutMsgs);
                match icmp_type {
                    1 => self.counters.inc(Mib::Icmp6OutDestUnreachs),
                    3 => self.counters.inc(Mib::Icmp6OutTimeExcds),
                    4 => self.counters.inc(Mib::Icmp6OutParmProblems),
                    _ => {}
                }
            }
            Err(_) => self.counters.inc(Mib::Icmp6OutErrors),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv6Addr, SocketAddr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr};

    use super::super::ipv6::tests::*;
    use super::super::testutil::*;
    use super::super::{
        DropReason, Duration, Mib, PacketType, RxChecksum, RxMeta, SocketErrorKind, Stack,
    };

    /// An ICMPv6 echo request with a valid checksum.
    pub(crate) fn echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let r = Icmpv6Repr::EchoRequest {
            ident: id,
            seq_no: seq,
            data,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(&mut b[..]),
            &ChecksumCapabilities::default(),
        );
        b
    }

    /// An ICMPv6 error `ty`/`code` from `from` to us quoting `quoted`.
    fn icmp6_err(from: Ipv6Addr, ty: u8, code: u8, info: u32, quoted: &[u8]) -> Vec<u8> {
        let mut b = vec![ty, code, 0, 0];
        b.extend_from_slice(&info.to_be_bytes());
        b.extend_from_slice(quoted);
        let mut p = Icmpv6Packet::new_unchecked(&mut b[..]);
        p.fill_checksum(&from, &OUR6);
        ip6(from, OUR6, 58, &b)
    }

    fn assert_echo_reply(o: &Out, from: Ipv6Addr, data: &[u8]) {
        assert_eq!((o.src, o.dst, o.eth_dst), (from, PEER6, PEER_MAC));
        assert_eq!(&o.payload[..2], &[129, 0]);
        assert_eq!(&o.payload[4..8], &[0x12, 0x34, 0, 5], "id and seq");
        assert_eq!(&o.payload[8..], data);
    }

    #[test]
    fn b5_echo_request_answered() {
        let mut s = ready_stack();
        // (the start-up neighbour advertisements were messages too)
        let out0 = s.counters.get(Mib::Icmp6OutMsgs);
        rx(
            &mut s,
            &ip6(PEER6, OUR6, 58, &echo6(PEER6, OUR6, 0x1234, 5, b"abcdef")),
        );
        let o = one_icmp6(&mut s);
        assert_echo_reply(&o, OUR6, b"abcdef");
        assert_eq!(s.counters.get(Mib::Icmp6InMsgs), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InEchos), 1);
        assert_eq!(s.counters.get(Mib::Icmp6OutEchoReplies), 1);
        assert_eq!(s.counters.get(Mib::Icmp6OutMsgs), out0 + 1);
        assert_eq!(s.counters.get(Mib::Ip6InDelivers), 1);
    }

    #[test]
    fn b5_echo_to_link_local_answered_from_link_local() {
        let mut s = ready_stack();
        let ll = s.link_local_v6();
        rx(
            &mut s,
            &ip6(PEER6, ll, 58, &echo6(PEER6, ll, 0x1234, 5, b"x")),
        );
        assert_echo_reply(&one_icmp6(&mut s), ll, b"x");
    }

    #[test]
    fn b5_echo_to_multicast_answered_from_unicast() {
        let mut s = ready_stack();
        let p = ip6(
            PEER6,
            ALL_NODES,
            58,
            &echo6(PEER6, ALL_NODES, 0x1234, 5, b"m"),
        );
        s.receive_frame(t0(), RxMeta::HOST, &eth_to(ALL_NODES_MAC, &p));
        assert_echo_reply(&one_icmp6(&mut s), OUR6, b"m");
    }

    #[test]
    fn b5_icmpv6_bad_checksum_dropped() {
        let mut s = ready_stack();
        let mut e = echo6(PEER6, OUR6, 0x1234, 5, b"abc");
        e[9] ^= 0xff;
        let p = ip6(PEER6, OUR6, 58, &e);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::IcmpBadChecksum), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InCsumErrors), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InErrors), 1);
        assert!(drain(&mut s).is_empty());
        // The device vouched for the checksum (or left it to offload): no check.
        for l4_csum in [RxChecksum::Valid, RxChecksum::NotReady] {
            let meta = RxMeta {
                pkt_type: PacketType::Host,
                l4_csum,
            };
            s.receive_frame(t0(), meta, &eth(&p));
            assert_eq!(drain(&mut s).len(), 1);
        }
    }

    #[test]
    fn b5_icmpv6_truncated_dropped() {
        let mut s = ready_stack();
        rx(&mut s, &ip6(PEER6, OUR6, 58, &[128, 0]));
        assert_eq!(s.counters.drops(DropReason::IcmpTruncated), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InErrors), 1);
        assert!(drain(&mut s).is_empty());
    }

    /// What we sent: IPv6 + UDP from OUR6:5060 to PEER6:7000.
    fn sent_udp() -> Vec<u8> {
        ip6(OUR6, PEER6, 17, &udp6(OUR6, PEER6, 5060, 7000, b"INVITE"))
    }

    #[test]
    fn b5_incoming_errors_reach_the_udp_socket() {
        for (ty, code, kind) in [
            (1, 4, SocketErrorKind::ConnectionRefused),
            (1, 0, SocketErrorKind::NetUnreachable),
            (1, 1, SocketErrorKind::HostUnreachable),
            (1, 3, SocketErrorKind::HostUnreachable),
            (2, 0, SocketErrorKind::MessageTooLong),
            (3, 0, SocketErrorKind::HostUnreachable),
        ] {
            let mut s = ready_stack();
            let h = s.udp_bind(SocketAddr::new(OUR6.into(), 5060)).unwrap();
            rx(&mut s, &icmp6_err(PEER6, ty, code, 1280, &sent_udp()));
            let e = s.udp_take_error(h).expect("socket error");
            assert_eq!(e.kind, kind, "type {ty} code {code}");
            assert_eq!(e.remote, SocketAddr::new(PEER6.into(), 7000));
            assert!(drain(&mut s).is_empty(), "never an error about an error");
            let m = [
                Mib::Icmp6InDestUnreachs,
                Mib::Icmp6InPktTooBigs,
                Mib::Icmp6InTimeExcds,
            ][ty as usize - 1];
            assert_eq!(s.counters.get(m), 1);
            assert_eq!(s.counters.total_drops(), 0);
        }
    }

    #[test]
    fn b5_incoming_error_quoting_extension_headers() {
        let mut s = ready_stack();
        let h = s.udp_bind(SocketAddr::new(OUR6.into(), 5060)).unwrap();
        let mut pl = vec![17, 0, 1, 4, 0, 0, 0, 0];
        pl.extend(udp6(OUR6, PEER6, 5060, 7000, b"x"));
        let q = ip6(OUR6, PEER6, 60, &pl);
        rx(&mut s, &icmp6_err(PEER6, 1, 4, 0, &q));
        assert_eq!(
            s.udp_take_error(h).map(|e| e.kind),
            Some(SocketErrorKind::ConnectionRefused)
        );
    }

    #[test]
    fn b5_incoming_error_without_socket_unmatched() {
        let mut s = ready_stack();
        rx(&mut s, &icmp6_err(PEER6, 1, 4, 0, &sent_udp()));
        assert_eq!(s.counters.drops(DropReason::IcmpErrorUnmatched), 1);
        // Quoting a packet that was not from us.
        let mut s = ready_stack();
        let _h = s.udp_bind("[::]:5060".parse().unwrap()).unwrap();
        let other = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 5060, 7000, b"x"));
        rx(&mut s, &icmp6_err(PEER6, 1, 4, 0, &other));
        assert_eq!(s.counters.drops(DropReason::IcmpErrorUnmatched), 1);
        // Quoting less than an IPv6 header.
        let mut s = ready_stack();
        rx(&mut s, &icmp6_err(PEER6, 1, 4, 0, &sent_udp()[..30]));
        assert_eq!(s.counters.drops(DropReason::IcmpTruncated), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InErrors), 1);
    }

    fn closed_port(s: &mut Stack, n: usize) {
        for i in 0..n {
            let p = ip6(
                PEER6,
                OUR6,
                17,
                &udp6(PEER6, OUR6, 4000 + i as u16, 9, b"x"),
            );
            rx(s, &p);
        }
    }

    #[test]
    fn b5_icmp_errors_rate_limited() {
        let mut s = ready_stack();
        // the global bucket alone (one source would hit its per-host limit)
        s.icmp = super::super::icmp::IcmpState::new(&super::super::Limits {
            icmp_ratelimit_ms: 0,
            ..s.config().limits.clone()
        });
        let burst = s.config().limits.icmp_msgs_burst as usize;
        closed_port(&mut s, burst + 5);
        assert_eq!(drain(&mut s).len(), burst);
        assert_eq!(s.counters.drops(DropReason::IcmpRateLimited), 5);
        assert_eq!(s.counters.get(Mib::Icmp6OutRateLimitGlobal), 5);
        // 10 ms at 1000/s is 10 more messages.
        let later = t0() + Duration::from_millis(10);
        for i in 0..12u16 {
            let p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, i, 9, b"x"));
            s.receive_frame(later, RxMeta::HOST, &eth(&p));
        }
        assert_eq!(drain(&mut s).len(), 10);
        assert_eq!(s.counters.drops(DropReason::IcmpRateLimited), 7);
    }

    #[test]
    fn b5_no_error_about_an_icmpv6_error() {
        // An ICMPv6 error carrying an unknown destination option with
        // action 10 would earn a Parameter Problem; not for an error.
        let mut s = ready_stack();
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend(sent_udp());
        let mut pl = vec![58, 0, 0x9e, 2, 0, 0, 1, 0];
        pl.extend(icmp);
        rx(&mut s, &ip6(PEER6, OUR6, 60, &pl));
        assert_eq!(s.counters.drops(DropReason::Ipv6UnknownOption), 1);
        assert!(drain(&mut s).is_empty());
        // … while an echo request with the same option does earn one.
        let mut pl = vec![58, 0, 0x9e, 2, 0, 0, 1, 0];
        pl.extend(echo6(PEER6, OUR6, 1, 1, b""));
        rx(&mut s, &ip6(PEER6, OUR6, 60, &pl));
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn b5_no_error_to_unspecified_source() {
        let mut s = ready_stack();
        let u = Ipv6Addr::UNSPECIFIED;
        rx(&mut s, &ip6(u, OUR6, 17, &udp6(u, OUR6, 1, 9, b"x")));
        assert_eq!(s.counters.get(Mib::Udp6NoPorts), 1);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.get(Mib::Icmp6OutDestUnreachs), 0);
    }

    #[test]
    fn b5_no_port_unreachable_for_multicast() {
        let mut s = ready_stack();
        let p = ip6(PEER6, ALL_NODES, 17, &udp6(PEER6, ALL_NODES, 1, 9, b"x"));
        s.receive_frame(t0(), RxMeta::HOST, &eth_to(ALL_NODES_MAC, &p));
        assert_eq!(s.counters.get(Mib::Udp6NoPorts), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_error_quote_fits_1280_bytes() {
        let mut s = ready_stack();
        let p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 9, &[0x5a; 1400]));
        rx(&mut s, &p);
        let o = one_icmp6(&mut s);
        assert_eq!(40 + o.payload.len(), 1280);
        assert_eq!(&o.payload[8..], &p[..1232]);
    }

    #[test]
    fn b5_error_from_the_address_the_packet_was_sent_to() {
        let mut s = ready_stack();
        let ll = s.link_local_v6();
        rx(&mut s, &ip6(PEER6, ll, 253, b"x"));
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.payload[0]), (ll, 4));
    }
}
