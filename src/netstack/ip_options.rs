//! IPv4 options of received datagrams (SPEC B.1; RFC 791 §3.1, RFC 1108,
//! RFC 2113), validated as Linux's `__ip_options_compile` does for a
//! received packet, and Linux's `ip_rcv_options` around it:
//!
//! - End of Option List ends the list; No Operation is skipped;
//! - every other option needs a length byte, 2 ≤ length ≤ the bytes left;
//! - Loose/Strict Source Route: length ≥ 3, pointer ≥ 4, only one;
//! - Record Route: only one, length ≥ 3, pointer ≥ 4, a pointer inside the
//!   option must leave room for an address (pointer + 3 ≤ length);
//! - Timestamp: only one, length ≥ 4, pointer ≥ 5; a pointer inside the
//!   option must leave room for the entry (4 bytes, 8 with an address);
//!   a full option with an overflow count of 15 is an error;
//! - Router Alert: length ≥ 4 (value 0 marks the alert);
//! - CIPSO: with no CIPSO DOI configured (this stack has none) Linux's
//!   `cipso_v4_validate` rejects it (length < 8 → the length byte,
//!   else → the DOI);
//! - Security, Stream ID and unknown options are accepted and skipped.
//!
//! A malformed option → ICMP Parameter Problem (type 12, code 0) whose
//! pointer is the offending byte's offset in the IP header, the datagram
//! dropped, InHdrErrors. A valid source route option is dropped silently
//! (Linux `accept_source_route` = 0, a host's default). Nothing else is
//! acted on: this host neither forwards nor echoes options.

use super::{DropReason, Instant, Mib, Stack};

/// Fixed IPv4 header length.
const IPV4_HDR: usize = 20;
/// Largest IPv4 header (IHL 15).
const IPV4_MAX_HDR: usize = 60;

pub const IPOPT_END: u8 = 0;
pub const IPOPT_NOOP: u8 = 1;
pub const IPOPT_RR: u8 = 7;
pub const IPOPT_TIMESTAMP: u8 = 68;
pub const IPOPT_SEC: u8 = 130;
pub const IPOPT_LSRR: u8 = 131;
pub const IPOPT_CIPSO: u8 = 134;
pub const IPOPT_SID: u8 = 136;
pub const IPOPT_SSRR: u8 = 137;
pub const IPOPT_RA: u8 = 148;

/// Timestamp option flags (RFC 791 "Internet Timestamp").
const IPOPT_TS_TSONLY: u8 = 0;
const IPOPT_TS_TSANDADDR: u8 = 1;
const IPOPT_TS_PRESPEC: u8 = 3;

/// ICMP Parameter Problem (RFC 792).
const ICMP_PARAMETERPROB: u8 = 12;

/// What the options say (Linux `struct ip_options`); offsets are from the
/// start of the IP header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IpOptions {
    /// Bytes of options (IHL·4 − 20).
    pub optlen: u8,
    /// Loose or strict source route option.
    pub srr: Option<u8>,
    pub is_strictroute: bool,
    /// Record route option.
    pub rr: Option<u8>,
    /// The record route option has room for our address.
    pub rr_needaddr: bool,
    /// Timestamp option.
    pub ts: Option<u8>,
    pub ts_needtime: bool,
    pub ts_needaddr: bool,
    /// Router alert option with value 0 (RFC 2113).
    pub router_alert: Option<u8>,
}

/// A malformed option: `pointer` is the offset of the offending byte from
/// the start of the IP header (the Parameter Problem pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionError {
    pub pointer: u8,
}

/// Validate the options of a received IPv4 header (`hdr` is the whole
/// header, IHL·4 bytes; bytes beyond 60 are ignored). Linux
/// `__ip_options_compile` with an skb, without its packet edits.
pub fn ip_options_compile(hdr: &[u8]) -> Result<IpOptions, OptionError> {
    let end = hdr.len().min(IPV4_MAX_HDR);
    let mut o = IpOptions {
        optlen: end.saturating_sub(IPV4_HDR) as u8,
        ..IpOptions::default()
    };
    // `end` ≤ 60, so every offset fits in a u8.
    let err = |at: usize| Err(OptionError { pointer: at as u8 });
    let mut i = IPV4_HDR;
    while i < end {
        let kind = hdr[i];
        match kind {
            IPOPT_END => break,
            IPOPT_NOOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let left = end - i;
        if left < 2 {
            return err(i);
        }
        let optlen = usize::from(hdr[i + 1]);
        if optlen < 2 || optlen > left {
            return err(i);
        }
        let opt = &hdr[i..i + optlen];
        match kind {
            IPOPT_SSRR | IPOPT_LSRR => {
                if optlen < 3 {
                    return err(i + 1);
                }
                if opt[2] < 4 {
                    return err(i + 2);
                }
                // RFC 1812 §5.2.4.1: at most one source route.
                if o.srr.is_some() {
                    return err(i);
                }
                o.is_strictroute = kind == IPOPT_SSRR;
                o.srr = Some(i as u8);
            }
            IPOPT_RR => {
                if o.rr.is_some() {
                    return err(i);
                }
                if optlen < 3 {
                    return err(i + 1);
                }
                let ptr = usize::from(opt[2]);
                if ptr < 4 {
                    return err(i + 2);
                }
                if ptr <= optlen {
                    if ptr + 3 > optlen {
                        return err(i + 2);
                    }
                    o.rr_needaddr = true;
                }
                o.rr = Some(i as u8);
            }
            IPOPT_TIMESTAMP => {
                if o.ts.is_some() {
                    return err(i);
                }
                if optlen < 4 {
                    return err(i + 1);
                }
                let ptr = usize::from(opt[2]);
                if ptr < 5 {
                    return err(i + 2);
                }
                let flag = opt[3] & 0xf;
                if ptr <= optlen {
                    if ptr + 3 > optlen {
                        return err(i + 2);
                    }
                    match flag {
                        IPOPT_TS_TSONLY => o.ts_needtime = true,
                        IPOPT_TS_TSANDADDR | IPOPT_TS_PRESPEC => {
                            if ptr + 7 > optlen {
                                return err(i + 2);
                            }
                            if flag == IPOPT_TS_TSANDADDR {
                                o.ts_needaddr = true;
                                o.ts_needtime = true;
                            }
                        }
                        // Other flags: accepted on receive.
                        _ => {}
                    }
                } else if flag != IPOPT_TS_PRESPEC && opt[3] >> 4 == 15 {
                    // Full, and the overflow counter cannot count on.
                    return err(i + 3);
                }
                o.ts = Some(i as u8);
            }
            IPOPT_RA => {
                if optlen < 4 {
                    return err(i + 1);
                }
                if opt[2] == 0 && opt[3] == 0 {
                    o.router_alert = Some(i as u8);
                }
            }
            IPOPT_CIPSO => {
                // `cipso_v4_validate` with no DOI configured: never valid
                // (so a second CIPSO option is never reached).
                return err(if optlen < 8 { i + 1 } else { i + 2 });
            }
            // IPOPT_SEC, IPOPT_SID and unknown options.
            _ => {}
        }
        i += optlen;
    }
    Ok(o)
}

impl Stack {
    /// Linux `ip_rcv_options` for a datagram with options (IHL > 5) that is
    /// for us: validate them; a malformed option → ICMP Parameter Problem
    /// pointing at it, InHdrErrors, drop; a source route → drop (host).
    /// Returns whether the datagram goes on. `pkt` passed `ip_rcv`'s
    /// header checks; `bcast`: it came as a link-layer broadcast/multicast
    /// or to a broadcast address, and then gets no ICMP error (Linux
    /// `__icmp_send`: "no replies to physical multicast/broadcast").
    pub(crate) fn ip_rcv_options(&mut self, now: Instant, pkt: &[u8], bcast: bool) -> bool {
        let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
        let Some(hdr) = pkt.get(..ihl) else {
            return true;
        };
        match ip_options_compile(hdr) {
            Err(e) => {
                if !bcast {
                    self.icmp_send(now, pkt, ICMP_PARAMETERPROB, 0, u32::from(e.pointer));
                }
                self.drop_pkt(DropReason::Ipv4BadOptions, Some(Mib::IpInHdrErrors));
                false
            }
            Ok(o) if o.srr.is_some() => {
                self.drop_pkt(DropReason::Ipv4SourceRoute, None);
                false
            }
            Ok(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use smoltcp::wire::{IpProtocol, Ipv4Packet};

    use super::super::ipv4::tests::{eth4, fix_csum, tx_ip, udp4};
    use super::super::testutil::*;
    use super::*;

    /// A header with `opts` (padded with EOL to a multiple of 4).
    fn hdr(opts: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h.extend_from_slice(opts);
        while !h.len().is_multiple_of(4) {
            h.push(0);
        }
        h[0] = 0x40 | (h.len() / 4) as u8;
        h
    }

    fn compile(opts: &[u8]) -> Result<IpOptions, u8> {
        ip_options_compile(&hdr(opts)).map_err(|e| e.pointer)
    }

    /// A UDP datagram from the peer to us (port 5060) with `opts`.
    fn udp_with_options(opts: &[u8]) -> Vec<u8> {
        let mut p = udp4(PEER4, OUR4, 5070, 5060, b"INVITE");
        let h = hdr(opts);
        p.splice(20..20, h[20..].iter().copied());
        p[0] = h[0];
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        fix_csum(&mut p);
        p
    }

    /// Receive `opts` in a UDP datagram to a bound port; returns the stack.
    fn rx_opts(opts: &[u8]) -> (Stack, Vec<u8>) {
        let mut s = ready_stack();
        s.udp_bind("0.0.0.0:5060".parse().expect("addr"))
            .expect("bind");
        let p = udp_with_options(opts);
        s.receive_frame(t0(), super::super::RxMeta::HOST, &eth4(&p));
        (s, p)
    }

    fn assert_delivered(s: &mut Stack) {
        assert_eq!(
            s.counters.get(Mib::IpInDelivers),
            1,
            "{:?}",
            s.counters.nonzero()
        );
        assert_eq!(s.counters.get(Mib::UdpInDatagrams), 1);
        assert_eq!(s.counters.total_drops(), 0, "{:?}", s.counters.nonzero());
    }

    /// Exactly one ICMP Parameter Problem with `pointer`, quoting `p`'s
    /// header and 8 bytes; the datagram dropped under InHdrErrors.
    fn assert_param_problem(s: &mut Stack, p: &[u8], pointer: u8) {
        assert_eq!(
            s.counters.get(Mib::IpInHdrErrors),
            1,
            "{:?}",
            s.counters.nonzero()
        );
        assert_eq!(s.counters.drops(DropReason::Ipv4BadOptions), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 0);
        assert_eq!(s.counters.get(Mib::IcmpOutParmProbs), 1);
        let out = drain(s);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(tx_ip(&out[0])).expect("ipv4");
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR4, PEER4));
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = ip.payload();
        assert!(smoltcp::wire::Icmpv4Packet::new_unchecked(icmp).verify_checksum());
        assert_eq!(&icmp[..2], &[12, 0], "type 12 code 0");
        assert_eq!(&icmp[4..8], &[pointer, 0, 0, 0], "pointer");
        let ihl = usize::from(p[0] & 0xf) * 4;
        assert_eq!(&icmp[8..], &p[..ihl + 8]);
    }

    #[test]
    fn b1_ip_options_nop_and_eol_are_accepted() {
        let (mut s, _) = rx_opts(&[IPOPT_NOOP, IPOPT_NOOP, IPOPT_NOOP, IPOPT_END]);
        assert_delivered(&mut s);
        // Bytes after EOL are not looked at.
        assert_eq!(compile(&[IPOPT_END, 0xff, 0xff, 0xff]), Ok(hdr_opts(4)));
    }

    fn hdr_opts(optlen: u8) -> IpOptions {
        IpOptions {
            optlen,
            ..IpOptions::default()
        }
    }

    #[test]
    fn b1_ip_options_length_below_2_is_param_problem_at_the_option() {
        let (mut s, p) = rx_opts(&[IPOPT_NOOP, 0x99, 1, 0]);
        assert_param_problem(&mut s, &p, 21);
    }

    #[test]
    fn b1_ip_options_length_beyond_header_is_param_problem_at_the_option() {
        let (mut s, p) = rx_opts(&[0x99, 5, 0, 0]);
        assert_param_problem(&mut s, &p, 20);
    }

    #[test]
    fn b1_ip_options_single_byte_left_is_param_problem() {
        // NOP NOP NOP then a lone type byte (no room for its length).
        let (mut s, p) = rx_opts(&[IPOPT_NOOP, IPOPT_NOOP, IPOPT_NOOP, 0x99]);
        assert_param_problem(&mut s, &p, 23);
    }

    #[test]
    fn b1_ip_options_unknown_security_and_stream_id_are_skipped() {
        let (mut s, _) = rx_opts(&[0x99, 4, 1, 2, IPOPT_SID, 4, 0, 1]);
        assert_delivered(&mut s);
        assert!(compile(&[IPOPT_SEC, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn b1_ip_options_record_route_rules() {
        // Room for one address, pointer at it.
        let rr = [IPOPT_RR, 7, 4, 0, 0, 0, 0, IPOPT_NOOP];
        let (mut s, _) = rx_opts(&rr);
        assert_delivered(&mut s);
        let o = compile(&rr).expect("valid");
        assert_eq!((o.rr, o.rr_needaddr), (Some(20), true));
        // Full (pointer past the end): valid, nothing to add.
        let o = compile(&[IPOPT_RR, 7, 8, 0, 0, 0, 0]).expect("full");
        assert_eq!((o.rr, o.rr_needaddr), (Some(20), false));
        // Length < 3 → the length byte.
        let (mut s, p) = rx_opts(&[IPOPT_RR, 2, IPOPT_NOOP, IPOPT_NOOP]);
        assert_param_problem(&mut s, &p, 21);
        // Pointer < 4 → the pointer.
        let (mut s, p) = rx_opts(&[IPOPT_RR, 7, 3, 0, 0, 0, 0]);
        assert_param_problem(&mut s, &p, 22);
        // Pointer inside but no room for an address → the pointer.
        assert_eq!(compile(&[IPOPT_RR, 7, 5, 0, 0, 0, 0]), Err(22));
        // A second record route → its type byte.
        let (mut s, p) = rx_opts(&[IPOPT_RR, 3, 4, IPOPT_RR, 3, 4]);
        assert_param_problem(&mut s, &p, 23);
    }

    #[test]
    fn b1_ip_options_timestamp_rules() {
        let ts = |ptr: u8, oflw_flag: u8, len: u8| {
            let mut v = vec![IPOPT_TIMESTAMP, len, ptr, oflw_flag];
            v.resize(usize::from(len.max(4)), 0);
            v
        };
        // Timestamps only, room for one.
        let (mut s, _) = rx_opts(&ts(5, 0, 8));
        assert_delivered(&mut s);
        assert!(compile(&ts(5, 0, 8)).expect("ok").ts_needtime);
        // Address + timestamp needs 8 bytes of room.
        let o = compile(&ts(5, 1, 12)).expect("ok");
        assert!(o.ts_needaddr && o.ts_needtime && o.ts == Some(20));
        let (mut s, p) = rx_opts(&ts(5, 1, 8));
        assert_param_problem(&mut s, &p, 22);
        assert_eq!(compile(&ts(5, 3, 8)), Err(22), "prespecified too");
        // Length < 4 → the length byte; pointer < 5 → the pointer.
        let (mut s, p) = rx_opts(&[IPOPT_TIMESTAMP, 3, 5, IPOPT_NOOP]);
        assert_param_problem(&mut s, &p, 21);
        let (mut s, p) = rx_opts(&ts(4, 0, 8));
        assert_param_problem(&mut s, &p, 22);
        // Pointer inside without 4 bytes of room.
        assert_eq!(compile(&ts(7, 0, 8)), Err(22));
        // Full: the overflow count goes on, but not past 15.
        assert!(compile(&ts(9, 0xe0, 8)).is_ok());
        let (mut s, p) = rx_opts(&ts(9, 0xf0, 8));
        assert_param_problem(&mut s, &p, 23);
        assert!(
            compile(&ts(9, 0xf3, 8)).is_ok(),
            "prespecified: no overflow"
        );
        // Unknown flag: accepted on receive.
        assert!(compile(&ts(5, 2, 8)).is_ok());
        // Only one timestamp option.
        let mut two = ts(5, 0, 8);
        two.extend(ts(5, 0, 8));
        assert_eq!(compile(&two), Err(28));
    }

    #[test]
    fn b1_ip_options_router_alert() {
        let (mut s, _) = rx_opts(&[IPOPT_RA, 4, 0, 0]);
        assert_delivered(&mut s);
        assert_eq!(
            compile(&[IPOPT_RA, 4, 0, 0]).expect("ok").router_alert,
            Some(20)
        );
        assert_eq!(
            compile(&[IPOPT_RA, 4, 0, 1]).expect("ok").router_alert,
            None
        );
        let (mut s, p) = rx_opts(&[IPOPT_RA, 3, 0, IPOPT_NOOP]);
        assert_param_problem(&mut s, &p, 21);
    }

    #[test]
    fn b1_ip_options_source_route_is_dropped_by_a_host() {
        let lsrr = [IPOPT_LSRR, 7, 4, 198, 18, 0, 9, IPOPT_NOOP];
        let (mut s, _) = rx_opts(&lsrr);
        assert_eq!(s.counters.drops(DropReason::Ipv4SourceRoute), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 0);
        assert_eq!(s.counters.get(Mib::IpInHdrErrors), 0);
        assert!(drain(&mut s).is_empty(), "silently");
        let o = compile(&[IPOPT_SSRR, 7, 4, 1, 2, 3, 4]).expect("ok");
        assert!(o.is_strictroute && o.srr == Some(20));
        // Malformed: length < 3, pointer < 4, two source routes.
        let (mut s, p) = rx_opts(&[IPOPT_SSRR, 2, IPOPT_NOOP, IPOPT_NOOP]);
        assert_param_problem(&mut s, &p, 21);
        let (mut s, p) = rx_opts(&[IPOPT_LSRR, 3, 3, IPOPT_NOOP]);
        assert_param_problem(&mut s, &p, 22);
        assert_eq!(
            compile(&[IPOPT_LSRR, 3, 4, IPOPT_SSRR, 3, 4]),
            Err(23),
            "RFC 1812 §5.2.4.1"
        );
    }

    #[test]
    fn b1_ip_options_cipso_without_doi_is_param_problem() {
        let (mut s, p) = rx_opts(&[IPOPT_CIPSO, 8, 0, 0, 0, 1, 0, 0]);
        assert_param_problem(&mut s, &p, 22);
        assert_eq!(compile(&[IPOPT_CIPSO, 6, 0, 0, 0, 1]), Err(21));
    }

    #[test]
    fn b1_ip_options_param_problem_not_sent_about_broadcast() {
        let mut s = ready_stack();
        let mut p = udp_with_options(&[0x99, 1, 0, 0]);
        p[16..20].copy_from_slice(&[255, 255, 255, 255]);
        fix_csum(&mut p);
        s.receive_frame(t0(), super::super::RxMeta::HOST, &eth4(&p));
        assert_eq!(s.counters.get(Mib::IpInHdrErrors), 1);
        assert_eq!(s.counters.drops(DropReason::Ipv4BadOptions), 1);
        assert!(drain(&mut s).is_empty());
        // To our address but in a link-layer broadcast frame: no ICMP
        // either (Linux checks the packet type).
        let mut s = ready_stack();
        let mut f = eth4(&udp_with_options(&[0x99, 1, 0, 0]));
        f[..6].copy_from_slice(&[0xff; 6]);
        s.receive_frame(t0(), super::super::RxMeta::HOST, &f);
        assert_eq!(
            s.counters.get(Mib::IpInHdrErrors),
            1,
            "{:?}",
            s.counters.nonzero()
        );
        assert_eq!(s.counters.drops(DropReason::Ipv4BadOptions), 1);
        assert!(drain(&mut s).is_empty());
    }

    proptest! {
        /// Any option bytes: no panic; an error points inside the options.
        #[test]
        fn b1_ip_options_any_bytes_never_panic(opts in proptest::collection::vec(any::<u8>(), 0..40)) {
            let h = hdr(&opts);
            match ip_options_compile(&h) {
                Ok(o) => prop_assert_eq!(usize::from(o.optlen), h.len() - 20),
                Err(e) => {
                    prop_assert!(usize::from(e.pointer) >= 20);
                    prop_assert!(usize::from(e.pointer) < h.len());
                }
            }
            // Truncated or over-long slices too.
            let _ = ip_options_compile(&h[..h.len().min(23)]);
            let mut long = h.clone();
            long.resize(80, 0x99);
            let _ = ip_options_compile(&long);
        }

        /// Through the stack: delivered, or dropped with one reason and
        /// at most one ICMP error; never a panic.
        #[test]
        fn b1_ip_options_stack_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (mut s, _) = rx_opts(&opts);
            let out = drain(&mut s);
            let delivered = s.counters.get(Mib::IpInDelivers);
            prop_assert!(delivered + s.counters.total_drops() == 1, "{:?}", s.counters.nonzero());
            prop_assert!(out.len() <= 1);
        }
    }
}
