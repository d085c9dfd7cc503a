//! IPv6 receive (SPEC B.5; seed 004: `ipv6_rcv`, `ip6_rcv_finish`,
//! `ip6_input`, `ip6_input_finish`, `ipv6_parse_hopopts` / `ip6_parse_tlv`,
//! `ipv6_rthdr_rcv`, `ipv6_frag_rcv`, `ipv6_destopt_rcv`; RFC 8200) and
//! output with fragmentation (`ip6_output` / `ip6_fragment`).
//!
//! ```text
//! ipv6_rcv ─ header checks, trim, hop-by-hop options, PRE_ROUTING
//!   └ ip6_rcv_finish ─ routing: ours / a group we are in, else InAddrErrors
//!       └ ip6_input ─ routing header, destination options, fragments (reassembly)
//!           └ ip6_input_finish ─ LOCAL_IN, then ICMPv6 / UDP / TCP / unknown
//! ```

use std::net::Ipv6Addr;

use smoltcp::wire::{
    IPV6_HEADER_LEN, IpAddress, IpProtocol, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6FragmentRepr,
    Ipv6Option, Ipv6OptionType, Ipv6Packet, Ipv6Repr, Ipv6RoutingHeader,
};

use super::csum;
use super::frag::{FragKey, FragResult, Reassembled};
use super::{
    DropReason, ETH_HDR, HookPoint, Instant, IpRx, Mib, RxChecksum, RxMeta, Stack, StackError,
    Verdict,
};

/// Fixed IPv6 header length.
const HDR: usize = IPV6_HEADER_LEN;
/// Offset of the Next Header field in the fixed header.
const NEXTHDR_OFF: usize = 6;
/// Offset of the Payload Length field (RFC 2675 / Linux point here).
const PAYLOAD_LEN_OFF: usize = 4;
/// Fragment header length (RFC 8200 §4.5).
const FRAG_HDR: usize = 8;
/// Largest payload length without Jumbo (Linux `IPV6_MAXPLEN`).
const IPV6_MAXPLEN: usize = 65535;
/// Jumbo Payload option type (RFC 2675; Linux `IPV6_TLV_JUMBO`).
const IPV6_TLV_JUMBO: u8 = 0xc2;
/// Non-padding options allowed per options header (Linux
/// `max_hbh_opts_cnt` / `max_dst_opts_cnt` default).
const MAX_TLV_OPTS: usize = 8;
/// Default hop limit of packets we originate (Linux `hop_limit` sysctl).
pub(crate) const DEFAULT_HOP_LIMIT: u8 = 64;

// ICMPv6 Parameter Problem codes (RFC 4443 §3.4).
const PP_HDR_FIELD: u8 = 0;
const PP_UNK_NEXTHDR: u8 = 1;
const PP_UNK_OPTION: u8 = 2;
/// Parameter Problem code 3: first fragment has incomplete header chain
/// (RFC 8200 §4.5, RFC 7112).
const PP_HDR_INCOMPLETE: u8 = 3;

/// IPv6 output state.
#[derive(Debug, Default)]
pub struct Ipv6State {
    /// Identification of the last fragmented datagram we sent.
    frag_id: u32,
}

/// What the extension-header walk of `ip6_input` ended with.
enum Ext {
    /// An upper-layer (or unknown) header at `off`, named by the Next
    /// Header byte at `nhoff`.
    Upper { off: usize, nhoff: usize },
    /// Reassembly completed: continue with this packet.
    Reassembled {
        buf: Vec<u8>,
        off: usize,
        nhoff: usize,
    },
    /// Dropped (counted) or held for reassembly.
    Consumed,
}

/// What `ipv6_frag_rcv` did with a fragment header.
enum Frag {
    /// Offset 0 and M = 0 (RFC 8200 §4.5, RFC 6946): skip the header.
    Atomic,
    Complete {
        buf: Vec<u8>,
        off: usize,
        nhoff: usize,
    },
    Consumed,
}

/// Length in bytes of an extension header (`(hdrlen + 1) * 8`).
#[inline]
fn ext_len<T: AsRef<[u8]>>(h: &Ipv6ExtHeader<T>) -> usize {
    (h.header_len() as usize + 1) * 8
}

/// Walk the unfragmentable part of a reassembled datagram (fixed header and
/// the extension headers in front of the fragment header at `frag_at`) and
/// return the offset of the Next Header byte that names the fragment header.
fn unfrag_nhoff(buf: &[u8], frag_at: usize) -> Option<usize> {
    let mut nhoff = NEXTHDR_OFF;
    let mut o = HDR;
    while o < frag_at {
        let h = Ipv6ExtHeader::new_checked(buf.get(o..frag_at)?).ok()?;
        nhoff = o;
        o += ext_len(&h);
    }
    (o == frag_at && buf.get(nhoff).copied() == Some(u8::from(IpProtocol::Ipv6Frag)))
        .then_some(nhoff)
}

/// RFC 4291 §2.7: multicast scope 0 (reserved) and 1 (interface-local)
/// never arrive from the wire.
fn bad_mcast_scope(a: Ipv6Addr) -> bool {
    a.is_multicast() && (a.segments()[0] & 0x000f) <= 1
}

impl Stack {
    /// `ipv6_rcv` (Linux `ipv6_rcv` / `ip6_rcv_core`, RFC 8200 §3): an IPv6
    /// packet (Ethernet payload, may carry link padding). InReceives; header
    /// checks (InHdrErrors), truncation (InTruncatedPkts), padding trimmed,
    /// hop-by-hop options, then the PRE_ROUTING hook.
    pub(crate) fn ipv6_rcv(&mut self, now: Instant, meta: &RxMeta, pkt: &[u8], link_mcast: bool) {
        self.counters.inc(Mib::Ip6InReceives);
        if pkt.len() < HDR {
            self.drop_pkt(DropReason::Ipv6TooShort, Some(Mib::Ip6InHdrErrors));
            return;
        }
        let ip = Ipv6Packet::new_unchecked(pkt);
        if ip.version() != 6 {
            self.drop_pkt(DropReason::Ipv6BadVersion, Some(Mib::Ip6InHdrErrors));
            return;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        // RFC 4291 §2.7 / §2.5.3: multicast or loopback sources never
        // arrive from the wire (Linux: `goto err`, InHdrErrors).
        if src.is_multicast() || src.is_loopback() {
            self.drop_pkt(DropReason::Ipv6BadSource, Some(Mib::Ip6InHdrErrors));
            return;
        }
        if dst.is_loopback() || bad_mcast_scope(dst) {
            self.drop_pkt(DropReason::Ipv6NotOurs, Some(Mib::Ip6InHdrErrors));
            return;
        }
        let plen = ip.payload_len() as usize;
        let hbh = ip.next_header() == IpProtocol::HopByHop;
        let mut pkt = pkt;
        // Payload length 0 with hop-by-hop options announces a Jumbo
        // payload (RFC 2675): its option gives the length.
        if plen != 0 || !hbh {
            if HDR + plen > pkt.len() {
                self.drop_pkt(DropReason::Ipv6Truncated, Some(Mib::Ip6InTruncatedPkts));
                return;
            }
            pkt = &pkt[..HDR + plen];
        }
        let (mut off, mut nhoff) = (HDR, NEXTHDR_OFF);
        if hbh {
            match self.ipv6_parse_hopopts(now, pkt, link_mcast) {
                Ok((len, jumbo)) => {
                    if let Some(j) = jumbo {
                        pkt = &pkt[..HDR + j];
                    }
                    off = HDR + len;
                    nhoff = HDR;
                }
                Err(()) => {
                    self.counters.inc(Mib::Ip6InHdrErrors);
                    return;
                }
            }
        }
        if self.filters.run(HookPoint::PreRouting, pkt) == Verdict::Drop {
            self.drop_pkt(DropReason::FilterPreRouting, None);
            return;
        }
        self.ip6_rcv_finish(now, meta, pkt, off, nhoff, link_mcast);
    }

    /// `ipv6_parse_hopopts`: the hop-by-hop options header right after the
    /// fixed header (RFC 8200 §4.3). Returns its length and the Jumbo
    /// payload length if there was one. On `Err` the drop is counted (the
    /// caller adds InHdrErrors, as `ipv6_rcv` does).
    fn ipv6_parse_hopopts(
        &mut self,
        now: Instant,
        pkt: &[u8],
        link_mcast: bool,
    ) -> Result<(usize, Option<usize>), ()> {
        let Ok(h) = Ipv6ExtHeader::new_checked(&pkt[HDR..]) else {
            self.counters.drop_reason(DropReason::Ipv6ExtTruncated);
            return Err(());
        };
        let len = ext_len(&h);
        let jumbo = self.ip6_parse_tlv(now, pkt, HDR, len, true, link_mcast)?;
        if jumbo.is_none() && Ipv6Packet::new_unchecked(pkt).payload_len() == 0 {
            // RFC 2675 §3: payload length 0 with hop-by-hop options but no
            // Jumbo option → Parameter Problem code 0 at the payload length.
            self.counters.drop_reason(DropReason::Ipv6BadOption);
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, PAYLOAD_LEN_OFF);
            return Err(());
        }
        Ok((len, jumbo))
    }

    /// `ip6_parse_tlv`: the TLV options of a hop-by-hop (`hbh`) or
    /// destination options header of `len` bytes at `off` (RFC 8200 §4.2).
    /// Pad1/PadN (at most 7 bytes of padding in a row, PadN all zero, RFC
    /// 4942 §2.1.9.5), Router Alert (RFC 2711) and Jumbo (RFC 2675) in
    /// hop-by-hop only, unknown options by their two high bits. Returns the
    /// Jumbo payload length; `Err` = dropped (counted, ICMP sent).
    fn ip6_parse_tlv(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        len: usize,
        hbh: bool,
        link_mcast: bool,
    ) -> Result<Option<usize>, ()> {
        let end = off + len;
        let mut i = off + 2;
        let mut pad = 0usize;
        let mut count = 0usize;
        let mut jumbo = None;
        let bad = |s: &Self| {
            s.counters.drop_reason(DropReason::Ipv6BadOption);
            Err(())
        };
        while i < end {
            let Ok(opt) = Ipv6Option::new_checked(&pkt[i..end]) else {
                return bad(self);
            };
            let ty = opt.option_type();
            if ty == Ipv6OptionType::Pad1 {
                pad += 1;
                if pad > 7 {
                    return bad(self);
                }
                i += 1;
                continue;
            }
            let optlen = opt.data_len() as usize + 2;
            match ty {
                Ipv6OptionType::PadN => {
                    pad += optlen;
                    if pad > 7 || opt.data().iter().any(|&b| b != 0) {
                        return bad(self);
                    }
                }
                _ => {
                    pad = 0;
                    count += 1;
                    if count > MAX_TLV_OPTS {
                        return bad(self);
                    }
                    if hbh && ty == Ipv6OptionType::RouterAlert {
                        // Linux `ipv6_hop_ra`: exactly 2 bytes of value.
                        if opt.data_len() != 2 {
                            return bad(self);
                        }
                    } else if hbh && u8::from(ty) == IPV6_TLV_JUMBO {
                        jumbo = Some(self.ipv6_hop_jumbo(now, pkt, i, opt.data(), link_mcast)?);
                    } else {
                        self.ip6_tlvopt_unknown(now, pkt, i, link_mcast)?;
                    }
                }
            }
            i += optlen;
        }
        Ok(jumbo)
    }

    /// `ip6_tlvopt_unknown` (RFC 8200 §4.2): act on the two high bits of an
    /// unrecognised option type at `optoff`: 00 skip, 01 discard, 10 discard
    /// and send Parameter Problem code 2 (even to multicast), 11 the same
    /// unless the destination is multicast.
    fn ip6_tlvopt_unknown(
        &mut self,
        now: Instant,
        pkt: &[u8],
        optoff: usize,
        link_mcast: bool,
    ) -> Result<(), ()> {
        let action = pkt[optoff] >> 6;
        if action == 0 {
            return Ok(());
        }
        self.counters.drop_reason(DropReason::Ipv6UnknownOption);
        let dst_mcast = Ipv6Packet::new_unchecked(pkt).dst_addr().is_multicast();
        if action == 2 || (action == 3 && !dst_mcast) {
            self.ip6_param_prob(now, pkt, link_mcast, PP_UNK_OPTION, optoff);
        }
        Err(())
    }

    /// `ipv6_hop_jumbo` (RFC 2675 §2/§3): length 4 at alignment 4n+2, value
    /// above 65535 (else Parameter Problem code 0 at the value), payload
    /// length 0 (else Parameter Problem code 0 at the option), value within
    /// what arrived (else InTruncatedPkts).
    fn ipv6_hop_jumbo(
        &mut self,
        now: Instant,
        pkt: &[u8],
        optoff: usize,
        data: &[u8],
        link_mcast: bool,
    ) -> Result<usize, ()> {
        let Ok(v) = <[u8; 4]>::try_from(data) else {
            self.counters.drop_reason(DropReason::Ipv6BadOption);
            return Err(());
        };
        if optoff & 3 != 2 {
            self.counters.drop_reason(DropReason::Ipv6BadOption);
            return Err(());
        }
        let v = u32::from_be_bytes(v) as usize;
        if v <= IPV6_MAXPLEN {
            self.counters.drop_reason(DropReason::Ipv6BadOption);
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, optoff + 2);
            return Err(());
        }
        if Ipv6Packet::new_unchecked(pkt).payload_len() != 0 {
            self.counters.drop_reason(DropReason::Ipv6BadOption);
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, optoff);
            return Err(());
        }
        if v > pkt.len() - HDR {
            self.drop_pkt(DropReason::Ipv6Truncated, Some(Mib::Ip6InTruncatedPkts));
            return Err(());
        }
        Ok(v)
    }

    /// `icmpv6_param_prob`: Parameter Problem `code` pointing at `ptr`
    /// (offset from the IPv6 header) about `pkt`.
    fn ip6_param_prob(&mut self, now: Instant, pkt: &[u8], link_mcast: bool, code: u8, ptr: usize) {
        self.icmpv6_send_ex(now, pkt, link_mcast, 4, code, ptr as u32);
    }

    /// `ip6_rcv_finish` (`ip6_route_input`): deliver locally when the
    /// destination is ours or a multicast group we are in (InMcastPkts);
    /// anything else → InAddrErrors (the stack never forwards).
    fn ip6_rcv_finish(
        &mut self,
        now: Instant,
        meta: &RxMeta,
        pkt: &[u8],
        off: usize,
        nhoff: usize,
        link_mcast: bool,
    ) {
        let dst = Ipv6Packet::new_unchecked(pkt).dst_addr();
        let ours = if dst.is_multicast() {
            self.counters.inc(Mib::Ip6InMcastPkts);
            self.is_our_v6_multicast(dst)
        } else {
            self.is_our_v6(dst)
        };
        if !ours {
            self.drop_pkt(DropReason::Ipv6NotOurs, Some(Mib::Ip6InAddrErrors));
            return;
        }
        self.ip6_input(now, meta, pkt, off, nhoff, link_mcast);
    }

    /// `ip6_input`: the extension headers after hop-by-hop (Linux's
    /// `ip6_input_finish` resubmit loop over the non-final protocols:
    /// routing, fragment, destination options), continuing inside the
    /// reassembled datagram when a fragment completes one.
    fn ip6_input(
        &mut self,
        now: Instant,
        meta: &RxMeta,
        pkt: &[u8],
        off: usize,
        nhoff: usize,
        link_mcast: bool,
    ) {
        let mut owned: Option<Vec<u8>> = None;
        let (mut off, mut nhoff) = (off, nhoff);
        loop {
            let cur = owned.as_deref().unwrap_or(pkt);
            match self.ip6_exthdrs(now, cur, off, nhoff, link_mcast) {
                Ext::Upper { off, nhoff } => {
                    let reasm = owned.is_some();
                    self.ip6_input_finish(now, meta, cur, off, nhoff, link_mcast, reasm);
                    break;
                }
                Ext::Reassembled {
                    buf,
                    off: o,
                    nhoff: n,
                } => {
                    if let Some(old) = owned.replace(buf) {
                        self.recycle(old);
                    }
                    off = o;
                    nhoff = n;
                }
                Ext::Consumed => break,
            }
        }
        if let Some(b) = owned {
            self.recycle(b);
        }
    }

    /// One pass over the extension headers starting at `off`.
    fn ip6_exthdrs(
        &mut self,
        now: Instant,
        pkt: &[u8],
        mut off: usize,
        mut nhoff: usize,
        link_mcast: bool,
    ) -> Ext {
        loop {
            match IpProtocol::from(pkt[nhoff]) {
                IpProtocol::HopByHop => {
                    // RFC 8200 §4.1: hop-by-hop only right after the fixed
                    // header. Linux has no handler for it here, so it is an
                    // unknown next header (InUnknownProtos, code 1).
                    self.drop_pkt(DropReason::Ipv6HbhNotFirst, Some(Mib::Ip6InUnknownProtos));
                    self.ip6_param_prob(now, pkt, link_mcast, PP_UNK_NEXTHDR, nhoff);
                    return Ext::Consumed;
                }
                IpProtocol::Ipv6Route => match self.ipv6_rthdr_rcv(now, pkt, off, link_mcast) {
                    Some(len) => {
                        nhoff = off;
                        off += len;
                    }
                    None => return Ext::Consumed,
                },
                IpProtocol::Ipv6Opts => match self.ipv6_destopt_rcv(now, pkt, off, link_mcast) {
                    Some(len) => {
                        nhoff = off;
                        off += len;
                    }
                    None => return Ext::Consumed,
                },
                IpProtocol::Ipv6Frag => match self.ipv6_frag_rcv(now, pkt, off, link_mcast) {
                    Frag::Atomic => {
                        nhoff = off;
                        off += FRAG_HDR;
                    }
                    Frag::Complete { buf, off, nhoff } => {
                        return Ext::Reassembled { buf, off, nhoff };
                    }
                    Frag::Consumed => return Ext::Consumed,
                },
                _ => return Ext::Upper { off, nhoff },
            }
        }
    }

    /// `ipv6_rthdr_rcv` (RFC 8200 §4.4, RFC 5095): to a multicast
    /// destination or in a link-level multicast → InAddrErrors; Segments
    /// Left 0 → skip the header; otherwise (we implement no routing type,
    /// type 0 included) Parameter Problem code 0 at the Routing Type field.
    fn ipv6_rthdr_rcv(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        link_mcast: bool,
    ) -> Option<usize> {
        let Ok(h) = Ipv6ExtHeader::new_checked(&pkt[off..]) else {
            self.drop_pkt(DropReason::Ipv6ExtTruncated, Some(Mib::Ip6InHdrErrors));
            return None;
        };
        let len = ext_len(&h);
        if link_mcast || Ipv6Packet::new_unchecked(pkt).dst_addr().is_multicast() {
            self.drop_pkt(DropReason::Ipv6BadRoutingHeader, Some(Mib::Ip6InAddrErrors));
            return None;
        }
        let rh = Ipv6RoutingHeader::new_unchecked(h.payload());
        if rh.segments_left() == 0 {
            return Some(len);
        }
        self.drop_pkt(DropReason::Ipv6BadRoutingHeader, Some(Mib::Ip6InHdrErrors));
        self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, off + 2);
        None
    }

    /// `ipv6_destopt_rcv` (RFC 8200 §4.6): options parsed like hop-by-hop;
    /// any failure → InHdrErrors.
    fn ipv6_destopt_rcv(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        link_mcast: bool,
    ) -> Option<usize> {
        let Ok(h) = Ipv6ExtHeader::new_checked(&pkt[off..]) else {
            self.drop_pkt(DropReason::Ipv6ExtTruncated, Some(Mib::Ip6InHdrErrors));
            return None;
        };
        let len = ext_len(&h);
        match self.ip6_parse_tlv(now, pkt, off, len, false, link_mcast) {
            Ok(_) => Some(len),
            Err(()) => {
                self.counters.inc(Mib::Ip6InHdrErrors);
                None
            }
        }
    }

    /// `ipv6_frag_rcv` / `ip6_frag_queue` (RFC 8200 §4.5, RFC 5722):
    /// ReasmReqds per fragment header; atomic fragments pass (ReasmOKs);
    /// Jumbo payload, a non-last fragment not a multiple of 8 bytes or an
    /// end beyond 65535 → InHdrErrors + Parameter Problem code 0; otherwise
    /// into the reassembler keyed by (src, dst, id).
    fn ipv6_frag_rcv(&mut self, now: Instant, pkt: &[u8], off: usize, link_mcast: bool) -> Frag {
        self.counters.inc(Mib::Ip6ReasmReqds);
        let ip = Ipv6Packet::new_unchecked(pkt);
        if ip.payload_len() == 0 {
            // A Jumbo payload inhibits the fragment header (RFC 2675 §3).
            self.drop_pkt(DropReason::FragBadLength, Some(Mib::Ip6InHdrErrors));
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, off);
            return Frag::Consumed;
        }
        let Some(Ok(fh)) = pkt
            .get(off + 2..off + FRAG_HDR)
            .map(Ipv6FragmentHeader::new_checked)
        else {
            self.drop_pkt(DropReason::Ipv6ExtTruncated, Some(Mib::Ip6InHdrErrors));
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, off);
            return Frag::Consumed;
        };
        let Ok(fr) = Ipv6FragmentRepr::parse(&fh) else {
            return Frag::Consumed;
        };
        if fr.frag_offset == 0 && !fr.more_frags {
            self.counters.inc(Mib::Ip6ReasmOKs);
            return Frag::Atomic;
        }
        // RFC 8200 §4.5 / RFC 7112 (Linux `ipv6frag_thdr_truncated`): a
        // first fragment must hold every header up to and including the
        // upper-layer header, else it is discarded with Parameter Problem
        // code 3, pointer 0.
        if fr.frag_offset == 0 && first_fragment_truncated(pkt) {
            self.drop_pkt(
                DropReason::Ipv6FirstFragmentIncomplete,
                Some(Mib::Ip6InHdrErrors),
            );
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_INCOMPLETE, 0);
            return Frag::Consumed;
        }
        let data = &pkt[off + FRAG_HDR..];
        let start = fr.frag_offset as usize * 8;
        let end = start + data.len();
        if end > IPV6_MAXPLEN {
            self.drop_pkt(DropReason::FragTooBig, Some(Mib::Ip6InHdrErrors));
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, off + 2);
            return Frag::Consumed;
        }
        if fr.more_frags && !end.is_multiple_of(8) {
            self.drop_pkt(DropReason::FragBadLength, Some(Mib::Ip6InHdrErrors));
            self.ip6_param_prob(now, pkt, link_mcast, PP_HDR_FIELD, PAYLOAD_LEN_OFF);
            return Frag::Consumed;
        }
        if data.is_empty() {
            self.drop_pkt(DropReason::FragBadLength, Some(Mib::Ip6ReasmFails));
            return Frag::Consumed;
        }
        let key = FragKey::V6 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            id: fr.ident,
        };
        // The first fragment's unfragmentable part is kept together with
        // its fragment header (as Linux keeps the first skb's headers): the
        // Next Header for the reassembled datagram comes from the first
        // fragment (RFC 8200 §4.5), and an expiry quotes the first fragment
        // as it arrived.
        let header = (start == 0).then(|| &pkt[..off + FRAG_HDR]);
        let res = self.frag6.add(now, key, start, fr.more_frags, data, header);
        // Datagrams evicted to make room each failed (`inet_frag_evictor`).
        for _ in 0..self.frag6.take_evicted() {
            self.drop_pkt(DropReason::FragMemLimit, Some(Mib::Ip6ReasmFails));
        }
        match res {
            FragResult::Incomplete => Frag::Consumed,
            FragResult::Dropped(r) => {
                self.drop_pkt(r, Some(Mib::Ip6ReasmFails));
                Frag::Consumed
            }
            FragResult::Complete(r) => self.ip6_frag_reasm(r),
        }
    }

    /// `ip6_frag_reasm`: drop the first fragment's fragment header, put its
    /// Next Header into the last unfragmentable header, fix the payload
    /// length (ReasmOKs).
    fn ip6_frag_reasm(&mut self, r: Reassembled) -> Frag {
        let Reassembled {
            mut buf,
            header_len: hl,
        } = r;
        let frag_at = hl.wrapping_sub(FRAG_HDR);
        let nhoff = (hl >= HDR + FRAG_HDR && hl <= buf.len())
            .then(|| unfrag_nhoff(&buf, frag_at))
            .flatten();
        let Some(nhoff) = nhoff else {
            self.drop_pkt(DropReason::FragBadLength, Some(Mib::Ip6ReasmFails));
            self.recycle(buf);
            return Frag::Consumed;
        };
        buf[nhoff] = buf[frag_at];
        buf.drain(frag_at..hl);
        let plen = buf.len() - HDR;
        if plen > IPV6_MAXPLEN {
            self.drop_pkt(DropReason::FragTooBig, Some(Mib::Ip6ReasmFails));
            self.recycle(buf);
            return Frag::Consumed;
        }
        Ipv6Packet::new_unchecked(&mut buf[..]).set_payload_len(plen as u16);
        self.counters.inc(Mib::Ip6ReasmOKs);
        Frag::Complete {
            buf,
            off: frag_at,
            nhoff,
        }
    }

    /// `ip6_input_finish`: the LOCAL_IN hook (after reassembly), then the
    /// final protocol: ICMPv6, UDP (InDelivers), TCP (issue 4), No Next
    /// Header (discarded; Linux's `dst_discard` handler still counts
    /// InDelivers), anything else → InUnknownProtos + Parameter Problem
    /// code 1 at the Next Header field that named it.
    #[allow(clippy::too_many_arguments)]
    fn ip6_input_finish(
        &mut self,
        now: Instant,
        meta: &RxMeta,
        pkt: &[u8],
        off: usize,
        nhoff: usize,
        link_mcast: bool,
        reassembled: bool,
    ) {
        if self.filters.run(HookPoint::LocalIn, pkt) == Verdict::Drop {
            self.drop_pkt(DropReason::FilterLocalIn, None);
            return;
        }
        let p = Ipv6Packet::new_unchecked(pkt);
        let dst = p.dst_addr();
        let ip = IpRx {
            src: p.src_addr().into(),
            dst: dst.into(),
            packet: pkt,
            mcast_or_bcast: dst.is_multicast() || link_mcast,
            hop_limit: p.hop_limit(),
        };
        // A reassembled datagram's checksum was never seen by the NIC.
        let meta = if reassembled {
            RxMeta {
                l4_csum: RxChecksum::Unverified,
                ..*meta
            }
        } else {
            *meta
        };
        let l4 = &pkt[off..];
        match IpProtocol::from(pkt[nhoff]) {
            IpProtocol::Icmpv6 => {
                self.counters.inc(Mib::Ip6InDelivers);
                self.icmpv6_rcv(now, &meta, &ip, l4);
            }
            IpProtocol::Udp => {
                self.counters.inc(Mib::Ip6InDelivers);
                self.udp_rcv(now, &meta, &ip, l4);
            }
            IpProtocol::Tcp => {
                self.counters.inc(Mib::Ip6InDelivers);
                self.tcp_v4_rcv(now, &meta, &ip, l4);
            }
            IpProtocol::Ipv6NoNxt => {
                self.counters.inc(Mib::Ip6InDelivers);
                self.counters.drop_reason(DropReason::Ipv6NoNextHeader);
            }
            _ => {
                self.drop_pkt(
                    DropReason::Ipv6UnknownNextHeader,
                    Some(Mib::Ip6InUnknownProtos),
                );
                self.ip6_param_prob(now, pkt, link_mcast, PP_UNK_NEXTHDR, nhoff);
            }
        }
    }

    /// `ip6_output` (RFC 8200): send an IPv6 packet from `src` to `dst`
    /// with `l4_len` bytes of `next_header` written by `fill`. No route →
    /// OutNoRoutes; larger than the MTU → `ip6_fragment`. Hop limit 64
    /// unless given.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ip6_output(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop_limit: Option<u8>,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        let Some(next_hop) = self.next_hop_v6(dst) else {
            self.counters.inc(Mib::Ip6OutNoRoutes);
            return Err(StackError::NetUnreachable(dst.into()));
        };
        if l4_len > IPV6_MAXPLEN {
            self.counters.inc(Mib::Ip6OutDiscards);
            return Err(StackError::MessageTooLong(l4_len));
        }
        self.counters.inc(Mib::Ip6OutRequests);
        let repr = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::from(next_header),
            payload_len: l4_len,
            hop_limit: hop_limit.unwrap_or(DEFAULT_HOP_LIMIT),
        };
        let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(dst));
        if HDR + l4_len > self.cfg.mtu {
            // A device sees one piece: the checksum is computed here.
            let mut fill = |l4: &mut [u8]| {
                fill(l4);
                csum::finish_l4(l4, &s, &d, next_header, false);
            };
            return self.ip6_fragment(now, repr, next_hop, &mut fill);
        }
        let total = ETH_HDR + HDR + l4_len;
        let mut f = self.alloc_frame(total);
        f.resize(total, 0);
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut f[ETH_HDR..]));
        fill(&mut f[ETH_HDR + HDR..]);
        let partial = self.cfg.tx_csum_offload;
        csum::finish_l4(&mut f[ETH_HDR + HDR..], &s, &d, next_header, partial);
        self.neigh_output(now, next_hop.into(), f)
    }

    /// `ip6_fragment` (RFC 8200 §4.5): fragments of at most MTU bytes, each
    /// with a Fragment header (8-byte aligned offsets, one identification
    /// per datagram), through [`Stack::send_fragments`].
    fn ip6_fragment(
        &mut self,
        now: Instant,
        repr: Ipv6Repr,
        next_hop: Ipv6Addr,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        let l4_len = repr.payload_len;
        let per = self.cfg.mtu.saturating_sub(HDR + FRAG_HDR) & !7;
        if per == 0 {
            self.counters.inc(Mib::Ip6FragFails);
            return Err(StackError::MessageTooLong(l4_len));
        }
        self.ipv6.frag_id = self.ipv6.frag_id.wrapping_add(1);
        let ident = self.ipv6.frag_id;
        self.send_fragments(
            now,
            next_hop.into(),
            l4_len,
            per,
            HDR + FRAG_HDR,
            fill,
            &mut |hdr, o, chunk, more| {
                let ip = Ipv6Repr {
                    next_header: IpProtocol::Ipv6Frag,
                    payload_len: FRAG_HDR + chunk,
                    ..repr
                };
                ip.emit(&mut Ipv6Packet::new_unchecked(&mut hdr[..HDR]));
                let mut ext = Ipv6ExtHeader::new_unchecked(&mut hdr[HDR..]);
                ext.set_next_header(repr.next_header);
                ext.set_header_len(0);
                Ipv6FragmentRepr {
                    frag_offset: (o / 8) as u16,
                    more_frags: more,
                    ident,
                }
                .emit(&mut Ipv6FragmentHeader::new_unchecked(ext.payload_mut()));
            },
        )
    }

    /// `ip6_expire_frag_queue` (RFC 8200 §4.5): expire incomplete
    /// reassemblies (ReasmTimeout + ReasmFails); Time Exceeded code 1
    /// quoting the first fragment when it had arrived.
    pub(crate) fn frag6_expire(&mut self, now: Instant) {
        for e in self.frag6.expire(now) {
            self.counters.inc(Mib::Ip6ReasmTimeout);
            self.drop_pkt(DropReason::FragTimeout, Some(Mib::Ip6ReasmFails));
            if let Some(mut first) = e.first
                && first.len() >= HDR
            {
                let plen = (first.len() - HDR).min(IPV6_MAXPLEN) as u16;
                Ipv6Packet::new_unchecked(&mut first[..]).set_payload_len(plen);
                self.icmpv6_send(now, &first, 3, 1, 0);
            }
        }
    }
}

/// Does this first fragment (offset 0, more to come) stop before the end
/// of its upper-layer header? The minimum lengths are Linux's: TCP 20,
/// UDP 8, ICMPv6 4, anything else 1 byte.
fn first_fragment_truncated(pkt: &[u8]) -> bool {
    let Some((nh, off, _)) = super::icmpv6::skip_exthdr(pkt) else {
        return true;
    };
    let need = match nh {
        IpProtocol::Tcp => 20,
        IpProtocol::Udp => 8,
        IpProtocol::Icmpv6 => 4,
        _ => 1,
    };
    off + need > pkt.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::{Arc, Mutex};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv6Address, UdpPacket, UdpRepr};

    use super::super::testutil::*;
    use super::super::{DropReason, Duration, HookPoint, Mib, RxMeta, Stack, Verdict};
    use super::*;

    pub(crate) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    pub(crate) const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
    const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);

    /// An IPv6 packet: fixed header (`next_header`, `hop`) + `payload`.
    pub(crate) fn ip6_hop(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = vec![0u8; HDR + payload.len()];
        Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::from(next_header),
            payload_len: payload.len(),
            hop_limit: hop,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut b[..]));
        b[HDR..].copy_from_slice(payload);
        b
    }

    pub(crate) fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
        ip6_hop(src, dst, next_header, 64, payload)
    }

    /// A UDP datagram with a valid checksum for `src` → `dst`.
    pub(crate) fn udp6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let mut b = vec![0u8; 8 + data.len()];
        UdpRepr {
            src_port: sport,
            dst_port: dport,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut b[..]),
            &IpAddress::Ipv6(src),
            &IpAddress::Ipv6(dst),
            data.len(),
            |p| p.copy_from_slice(data),
            &ChecksumCapabilities::default(),
        );
        b
    }

    /// Ethernet frame to `mac` carrying `pkt`.
    pub(crate) fn eth_to(mac: [u8; 6], pkt: &[u8]) -> Vec<u8> {
        let mut f = eth(pkt);
        f[..6].copy_from_slice(&mac);
        f
    }

    pub(crate) fn rx(s: &mut Stack, pkt: &[u8]) {
        s.receive_frame(t0(), RxMeta::HOST, &eth(pkt));
    }

    /// An NDP message `repr` from `src` to `dst` with `hop`, in a frame to `mac`.
    pub(crate) fn ndisc_frame(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop: u8,
        repr: smoltcp::wire::NdiscRepr<'_>,
        mac: [u8; 6],
    ) -> Vec<u8> {
        let r = smoltcp::wire::Icmpv6Repr::Ndisc(repr);
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(
            &src,
            &dst,
            &mut smoltcp::wire::Icmpv6Packet::new_unchecked(&mut b[..]),
            &ChecksumCapabilities::default(),
        );
        eth_to(mac, &ip6_hop(src, dst, 58, hop, &b))
    }

    /// An emitted IPv6 frame, parsed.
    #[derive(Debug)]
    pub(crate) struct Out {
        pub eth_dst: [u8; 6],
        pub src: Ipv6Addr,
        pub dst: Ipv6Addr,
        pub hop: u8,
        pub nh: u8,
        /// Everything after the fixed header.
        pub payload: Vec<u8>,
    }

    pub(crate) fn out(f: &[u8]) -> Out {
        let e = EthernetFrame::new_checked(f).expect("ethernet");
        assert_eq!(e.ethertype(), smoltcp::wire::EthernetProtocol::Ipv6);
        assert_eq!(e.src_addr().0, OUR_MAC);
        let ip = Ipv6Packet::new_checked(e.payload()).expect("ipv6");
        assert_eq!(
            ip.total_len(),
            e.payload().len(),
            "no padding in our frames"
        );
        Out {
            eth_dst: e.dst_addr().0,
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            hop: ip.hop_limit(),
            nh: u8::from(ip.next_header()),
            payload: ip.payload().to_vec(),
        }
    }

    /// The one frame emitted, as an ICMPv6 message with a valid checksum.
    pub(crate) fn one_icmp6(s: &mut Stack) -> Out {
        let frames = drain(s);
        assert_eq!(
            frames.len(),
            1,
            "expected exactly one frame: {:?}",
            frames.iter().map(|f| out(f)).collect::<Vec<_>>()
        );
        let o = out(&frames[0]);
        assert_eq!(o.nh, 58);
        let p = smoltcp::wire::Icmpv6Packet::new_checked(&o.payload[..]).expect("icmpv6");
        assert!(p.verify_checksum(&o.src, &o.dst), "ICMPv6 checksum");
        o
    }

    /// Exactly one Parameter Problem `code`/`ptr` to the peer quoting `offending`.
    pub(crate) fn assert_pp(s: &mut Stack, code: u8, ptr: u32, offending: &[u8]) {
        let o = one_icmp6(s);
        assert_eq!(o.eth_dst, PEER_MAC);
        assert_eq!(o.dst, PEER6);
        assert_eq!(o.hop, 64);
        assert_eq!(&o.payload[..2], &[4, code], "type/code");
        assert_eq!(u32::from_be_bytes(o.payload[4..8].try_into().unwrap()), ptr);
        assert_eq!(&o.payload[8..], offending, "quoted packet");
        assert_eq!(s.counters.get(Mib::Icmp6OutParmProblems), 1);
    }

    /// Dropped: counted under `reason` (and `mib`), nothing emitted, nothing delivered.
    fn assert_dropped(s: &mut Stack, reason: DropReason, mib: Option<Mib>) {
        assert_eq!(
            s.counters.drops(reason),
            1,
            "{reason:?}: {:?}",
            s.counters.nonzero()
        );
        if let Some(m) = mib {
            assert_eq!(s.counters.get(m), 1, "{m:?}");
        }
        assert!(drain(s).is_empty(), "nothing emitted");
        assert_eq!(s.counters.get(Mib::Udp6InDatagrams), 0);
    }

    /// An extension header: next header, then `body` padded with PadN/Pad1 to
    /// a multiple of 8 (options headers) — the caller gives whole bodies.
    fn ext(nh: u8, body: &[u8]) -> Vec<u8> {
        assert_eq!((body.len() + 2) % 8, 0, "extension header length");
        let mut v = vec![nh, ((body.len() + 2) / 8 - 1) as u8];
        v.extend_from_slice(body);
        v
    }

    fn bound(s: &mut Stack) -> super::super::UdpHandle {
        s.udp_bind("[::]:5060".parse().unwrap()).unwrap()
    }

    /// UDP to OUR6:5060 behind `headers` (first next header `first`).
    fn with_headers(first: u8, headers: &[u8], dst: Ipv6Addr) -> Vec<u8> {
        let mut p = headers.to_vec();
        p.extend_from_slice(&udp6(PEER6, dst, 4000, 5060, b"hello"));
        ip6(PEER6, dst, first, &p)
    }

    #[test]
    fn b5_udp_delivered_counts_indelivers() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        rx(
            &mut s,
            &ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 4000, 5060, b"hi")),
        );
        let d = s.udp_recv_from(h).expect("datagram");
        assert_eq!(d.data, b"hi");
        assert_eq!(d.src, SocketAddr::new(PEER6.into(), 4000));
        assert_eq!(s.counters.get(Mib::Ip6InReceives), 1);
        assert_eq!(s.counters.get(Mib::Ip6InDelivers), 1);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_shorter_than_40_bytes_inhdrerrors() {
        let mut s = ready_stack();
        let p = ip6(PEER6, OUR6, 59, &[]);
        rx(&mut s, &p[..39]);
        assert_dropped(&mut s, DropReason::Ipv6TooShort, Some(Mib::Ip6InHdrErrors));
        assert_eq!(s.counters.get(Mib::Ip6InReceives), 1);
    }

    #[test]
    fn b5_version_not_6_inhdrerrors() {
        let mut s = ready_stack();
        let mut p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 5060, b"x"));
        p[0] = 0x40 | (p[0] & 0x0f);
        // eth() picks the EtherType from the version nibble: force 86dd.
        let mut f = eth(&p);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_dropped(
            &mut s,
            DropReason::Ipv6BadVersion,
            Some(Mib::Ip6InHdrErrors),
        );
    }

    #[test]
    fn b5_payload_len_beyond_received_intruncatedpkts() {
        let mut s = ready_stack();
        let mut p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 5060, b"xyz"));
        p[5] += 1;
        rx(&mut s, &p);
        assert_dropped(
            &mut s,
            DropReason::Ipv6Truncated,
            Some(Mib::Ip6InTruncatedPkts),
        );
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 0);
    }

    #[test]
    fn b5_link_padding_is_trimmed() {
        // An echo request with 20 bytes of Ethernet padding: the checksum
        // only verifies (and the reply only matches) if they are trimmed.
        let mut s = ready_stack();
        let icmp = super::super::icmpv6::tests::echo6(PEER6, OUR6, 7, 9, b"ping");
        let mut p = ip6(PEER6, OUR6, 58, &icmp);
        p.extend_from_slice(&[0u8; 20]);
        rx(&mut s, &p);
        let o = one_icmp6(&mut s);
        assert_eq!(o.payload[0], 129);
        assert_eq!(&o.payload[8..], b"ping");
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_multicast_source_dropped_inhdrerrors() {
        let mut s = ready_stack();
        let m = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        rx(&mut s, &ip6(m, OUR6, 17, &udp6(m, OUR6, 1, 5060, b"x")));
        assert_dropped(&mut s, DropReason::Ipv6BadSource, Some(Mib::Ip6InHdrErrors));
    }

    #[test]
    fn b5_not_ours_inaddrerrors_never_forwarded() {
        let mut s = ready_stack();
        rx(
            &mut s,
            &ip6(PEER6, OTHER6, 17, &udp6(PEER6, OTHER6, 1, 5060, b"x")),
        );
        assert_dropped(&mut s, DropReason::Ipv6NotOurs, Some(Mib::Ip6InAddrErrors));
    }

    #[test]
    fn b5_multicast_group_not_joined_inaddrerrors() {
        let mut s = ready_stack();
        // ff02::2 (all-routers): we are a host. Its MAC is not accepted
        // either, so hand it over with our MAC to reach the IP check.
        let g = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        rx(&mut s, &ip6(PEER6, g, 17, &udp6(PEER6, g, 1, 5060, b"x")));
        assert_dropped(&mut s, DropReason::Ipv6NotOurs, Some(Mib::Ip6InAddrErrors));
        assert_eq!(s.counters.get(Mib::Ip6InMcastPkts), 1);
    }

    #[test]
    fn b5_multicast_group_joined_delivered() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        let p = ip6(PEER6, ALL_NODES, 17, &udp6(PEER6, ALL_NODES, 1, 5060, b"m"));
        s.receive_frame(t0(), RxMeta::HOST, &eth_to(ALL_NODES_MAC, &p));
        assert_eq!(s.udp_recv_from(h).expect("delivered").data, b"m");
        assert_eq!(s.counters.get(Mib::Ip6InMcastPkts), 1);
    }

    type HookLog = Arc<Mutex<Vec<(HookPoint, usize)>>>;

    fn hook(s: &mut Stack, drop_at: Option<HookPoint>) -> HookLog {
        let log: HookLog = Arc::default();
        let l = log.clone();
        s.add_filter(Box::new(move |h: HookPoint, p: &[u8]| {
            l.lock().unwrap().push((h, p.len()));
            if Some(h) == drop_at {
                Verdict::Drop
            } else {
                Verdict::Accept
            }
        }));
        log
    }

    #[test]
    fn b5_hooks_pre_routing_then_local_in() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        let log = hook(&mut s, None);
        let p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 5060, b"x"));
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 10]);
        rx(&mut s, &padded);
        assert!(s.udp_recv_from(h).is_some());
        let seen = log.lock().unwrap().clone();
        // Both hooks see the trimmed packet.
        assert_eq!(
            seen,
            vec![
                (HookPoint::PreRouting, p.len()),
                (HookPoint::LocalIn, p.len())
            ]
        );
    }

    #[test]
    fn b5_pre_routing_drop() {
        let mut s = ready_stack();
        let _h = bound(&mut s);
        let log = hook(&mut s, Some(HookPoint::PreRouting));
        // Even a packet not for us passes PRE_ROUTING first.
        rx(
            &mut s,
            &ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 5060, b"x")),
        );
        assert_dropped(&mut s, DropReason::FilterPreRouting, None);
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(s.counters.get(Mib::Ip6InDelivers), 0);
    }

    #[test]
    fn b5_local_in_drop() {
        let mut s = ready_stack();
        let _h = bound(&mut s);
        let log = hook(&mut s, Some(HookPoint::LocalIn));
        rx(
            &mut s,
            &ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 1, 5060, b"x")),
        );
        assert_dropped(&mut s, DropReason::FilterLocalIn, None);
        assert_eq!(log.lock().unwrap().len(), 2);
        // A packet not for us never reaches LOCAL_IN.
        rx(
            &mut s,
            &ip6(PEER6, OTHER6, 17, &udp6(PEER6, OTHER6, 1, 5060, b"x")),
        );
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    /// HBH header with one 2-byte-value option of type `ty` (+ PadN).
    fn hbh_with_option(ty: u8) -> Vec<u8> {
        ext(17, &[ty, 2, 0xaa, 0xbb, 1, 0])
    }

    #[test]
    fn b5_unknown_option_actions_unicast_and_multicast() {
        // (type, action bits) × (unicast, multicast): expected PP?
        for (ty, bits) in [(0x1e, 0u8), (0x5e, 1), (0x9e, 2), (0xde, 3)] {
            for mcast in [false, true] {
                for in_hbh in [true, false] {
                    let mut s = ready_stack();
                    let h = bound(&mut s);
                    let dst = if mcast { ALL_NODES } else { OUR6 };
                    let hdr = hbh_with_option(ty);
                    let p = with_headers(if in_hbh { 0 } else { 60 }, &hdr, dst);
                    let mac = if mcast { ALL_NODES_MAC } else { OUR_MAC };
                    s.receive_frame(t0(), RxMeta::HOST, &eth_to(mac, &p));
                    let what = format!("type {ty:#x} mcast {mcast} hbh {in_hbh}");
                    if bits == 0 {
                        assert!(s.udp_recv_from(h).is_some(), "{what}: skipped");
                        assert!(drain(&mut s).is_empty(), "{what}");
                        continue;
                    }
                    assert!(s.udp_recv_from(h).is_none(), "{what}: discarded");
                    assert_eq!(s.counters.drops(DropReason::Ipv6UnknownOption), 1, "{what}");
                    assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1, "{what}");
                    let pp = bits == 2 || (bits == 3 && !mcast);
                    if pp {
                        // Pointer at the option type byte: 40 + 2.
                        assert_pp(&mut s, 2, 42, &p);
                    } else {
                        assert!(drain(&mut s).is_empty(), "{what}: no ICMP");
                    }
                }
            }
        }
    }

    #[test]
    fn b5_router_alert_and_padn_accepted() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        // Router Alert (MLD) + PadN(0), Pad1s in a second header.
        let mut hdrs = ext(60, &[5, 2, 0, 0, 1, 0]);
        hdrs.extend(ext(17, &[0, 0, 0, 0, 0, 0]));
        rx(&mut s, &with_headers(0, &hdrs, OUR6));
        assert!(s.udp_recv_from(h).is_some());
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_malformed_tlv_inhdrerrors() {
        for body in [
            [5u8, 3, 0, 0, 0, 0],  // Router Alert with length 3 (runs past the end)
            [5, 1, 0, 1, 0, 0],    // Router Alert with length 1 (+ PadN)
            [1, 4, 0, 0, 0, 1],    // PadN with a non-zero byte
            [0x3e, 5, 0, 0, 0, 0], // option longer than the header
        ] {
            let mut s = ready_stack();
            let _h = bound(&mut s);
            rx(&mut s, &with_headers(0, &ext(17, &body), OUR6));
            assert_dropped(&mut s, DropReason::Ipv6BadOption, Some(Mib::Ip6InHdrErrors));
        }
        // More than 7 bytes of padding in a row (16-byte header of PadN).
        let mut s = ready_stack();
        rx(
            &mut s,
            &with_headers(
                0,
                &ext(17, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                OUR6,
            ),
        );
        assert_dropped(&mut s, DropReason::Ipv6BadOption, Some(Mib::Ip6InHdrErrors));
    }

    fn jumbo_hbh(value: u32) -> Vec<u8> {
        let v = value.to_be_bytes();
        ext(17, &[0xc2, 4, v[0], v[1], v[2], v[3]])
    }

    #[test]
    fn b5_jumbo_value_not_above_65535_param_problem_at_value() {
        let mut s = ready_stack();
        let mut p = with_headers(0, &jumbo_hbh(1000), OUR6);
        p[4..6].copy_from_slice(&[0, 0]);
        p.extend_from_slice(&[0; 4]);
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_pp(&mut s, 0, 44, &p);
    }

    #[test]
    fn b5_jumbo_with_payload_len_param_problem_at_option() {
        let mut s = ready_stack();
        let p = with_headers(0, &jumbo_hbh(70000), OUR6);
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_pp(&mut s, 0, 42, &p);
    }

    #[test]
    fn b5_jumbo_longer_than_received_truncated() {
        let mut s = ready_stack();
        let mut p = with_headers(0, &jumbo_hbh(70000), OUR6);
        p[4..6].copy_from_slice(&[0, 0]);
        rx(&mut s, &p);
        assert_dropped(
            &mut s,
            DropReason::Ipv6Truncated,
            Some(Mib::Ip6InTruncatedPkts),
        );
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
    }

    #[test]
    fn b5_jumbo_bad_length_or_alignment_dropped_silently() {
        let mut s = ready_stack();
        let mut p = with_headers(0, &ext(17, &[1, 0, 0xc2, 2, 0, 0]), OUR6);
        p[4..6].copy_from_slice(&[0, 0]);
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv6BadOption, Some(Mib::Ip6InHdrErrors));
        // Right length, wrong alignment (offset 4n+3).
        let mut s = ready_stack();
        let mut p = with_headers(
            0,
            &ext(17, &[0, 0xc2, 4, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0]),
            OUR6,
        );
        p[4..6].copy_from_slice(&[0, 0]);
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv6BadOption, Some(Mib::Ip6InHdrErrors));
    }

    #[test]
    fn b5_zero_payload_len_without_jumbo_param_problem() {
        // RFC 2675 §3: pointer at the payload length field.
        let mut s = ready_stack();
        let mut p = with_headers(0, &ext(17, &[1, 4, 0, 0, 0, 0]), OUR6);
        p[4..6].copy_from_slice(&[0, 0]);
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_pp(&mut s, 0, 4, &p);
    }

    #[test]
    fn b5_jumbo_in_destination_options_is_unknown() {
        // 0xc2 has action bits 11: Parameter Problem code 2 at the option.
        let mut s = ready_stack();
        let p = with_headers(60, &jumbo_hbh(70000), OUR6);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::Ipv6UnknownOption), 1);
        assert_pp(&mut s, 2, 42, &p);
    }

    #[test]
    fn b5_routing_header_segments_left_zero_skipped() {
        for ty in [0u8, 2, 4, 253] {
            let mut s = ready_stack();
            let h = bound(&mut s);
            rx(
                &mut s,
                &with_headers(43, &ext(17, &[ty, 0, 0, 0, 0, 0]), OUR6),
            );
            assert!(s.udp_recv_from(h).is_some(), "type {ty}");
            assert_eq!(s.counters.total_drops(), 0);
        }
    }

    #[test]
    fn b5_routing_header_with_segments_left_param_problem_at_type() {
        for ty in [0u8, 2, 4, 253] {
            let mut s = ready_stack();
            let _h = bound(&mut s);
            // Type 0 with one address (RFC 5095 deprecated it).
            let mut body = vec![ty, 1, 0, 0, 0, 0];
            body.extend_from_slice(&OTHER6.octets());
            // Behind a destination options header: pointer 48 + 2.
            let mut hdrs = ext(43, &[1, 4, 0, 0, 0, 0]);
            hdrs.extend(ext(17, &body));
            let p = with_headers(60, &hdrs, OUR6);
            rx(&mut s, &p);
            assert_eq!(s.counters.drops(DropReason::Ipv6BadRoutingHeader), 1);
            assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
            assert_pp(&mut s, 0, 50, &p);
        }
    }

    #[test]
    fn b5_routing_header_to_multicast_inaddrerrors() {
        let mut s = ready_stack();
        let p = with_headers(43, &ext(17, &[0, 0, 0, 0, 0, 0]), ALL_NODES);
        s.receive_frame(t0(), RxMeta::HOST, &eth_to(ALL_NODES_MAC, &p));
        assert_dropped(
            &mut s,
            DropReason::Ipv6BadRoutingHeader,
            Some(Mib::Ip6InAddrErrors),
        );
    }

    #[test]
    fn b5_hop_by_hop_not_first_param_problem_code1() {
        let mut s = ready_stack();
        let mut hdrs = ext(0, &[1, 4, 0, 0, 0, 0]);
        hdrs.extend(ext(17, &[1, 4, 0, 0, 0, 0]));
        let p = with_headers(60, &hdrs, OUR6);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::Ipv6HbhNotFirst), 1);
        assert_eq!(s.counters.get(Mib::Ip6InUnknownProtos), 1);
        // Pointer at the destination options' Next Header field.
        assert_pp(&mut s, 1, 40, &p);
    }

    #[test]
    fn b5_unknown_next_header_param_problem_code1() {
        let mut s = ready_stack();
        let p = ip6(PEER6, OUR6, 253, b"whatever");
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::Ipv6UnknownNextHeader), 1);
        assert_eq!(s.counters.get(Mib::Ip6InUnknownProtos), 1);
        assert_pp(&mut s, 1, 6, &p);
        // Behind an extension header: pointer at its Next Header field.
        let mut s = ready_stack();
        let mut pl = ext(253, &[1, 4, 0, 0, 0, 0]);
        pl.extend_from_slice(b"data");
        let p = ip6(PEER6, OUR6, 60, &pl);
        rx(&mut s, &p);
        assert_pp(&mut s, 1, 40, &p);
    }

    #[test]
    fn b5_no_next_header_discarded_silently() {
        let mut s = ready_stack();
        rx(&mut s, &ip6(PEER6, OUR6, 59, b"ignored bytes"));
        assert_dropped(&mut s, DropReason::Ipv6NoNextHeader, None);
        let mut s = ready_stack();
        rx(&mut s, &ip6(PEER6, OUR6, 60, &ext(59, &[1, 4, 0, 0, 0, 0])));
        assert_dropped(&mut s, DropReason::Ipv6NoNextHeader, None);
        assert_eq!(s.counters.get(Mib::Ip6InUnknownProtos), 0);
    }

    #[test]
    fn b5_tcp_is_delivered_to_tcp_v6_rcv() {
        let mut s = ready_stack();
        rx(&mut s, &ip6(PEER6, OUR6, 6, &[0u8; 20]));
        assert_dropped(&mut s, DropReason::TcpBadOffset, Some(Mib::TcpInErrs));
        assert_eq!(s.counters.get(Mib::Ip6InDelivers), 1);
    }

    /// A fragment: fixed header, Fragment header (`nh`, offset, M, id), data.
    pub(crate) fn frag6(id: u32, offset: usize, more: bool, nh: u8, data: &[u8]) -> Vec<u8> {
        let off = ((offset / 8) as u16) << 3 | more as u16;
        let mut pl = vec![nh, 0];
        pl.extend_from_slice(&off.to_be_bytes());
        pl.extend_from_slice(&id.to_be_bytes());
        pl.extend_from_slice(data);
        ip6(PEER6, OUR6, 44, &pl)
    }

    #[test]
    fn b5_atomic_fragment_delivered() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        rx(
            &mut s,
            &frag6(7, 0, false, 17, &udp6(PEER6, OUR6, 1, 5060, b"atomic")),
        );
        assert_eq!(s.udp_recv_from(h).expect("delivered").data, b"atomic");
        assert_eq!(s.counters.get(Mib::Ip6ReasmReqds), 1);
        assert_eq!(s.counters.get(Mib::Ip6ReasmOKs), 1);
        assert_eq!(s.usage().frag6_bytes, 0);
    }

    #[test]
    fn b5_fragment_not_multiple_of_8_param_problem_at_payload_len() {
        let mut s = ready_stack();
        let p = frag6(7, 0, true, 17, &[0u8; 13]);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::FragBadLength), 1);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_pp(&mut s, 0, 4, &p);
    }

    #[test]
    fn b5_first_fragment_without_the_whole_upper_layer_header_param_problem_code3() {
        let mut s = ready_stack();
        // UDP needs 8 header bytes in the first fragment; 4 arrive
        let p = frag6(7, 0, true, 17, &[0u8; 4]);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::Ipv6FirstFragmentIncomplete), 1);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_eq!(s.usage().frag6_bytes, 0, "not queued for reassembly");
        assert_pp(&mut s, 3, 0, &p);
        // a later fragment is not checked (its data holds no header)
        let mut s = ready_stack();
        rx(&mut s, &frag6(7, 8, true, 17, &[0u8; 8]));
        assert_eq!(s.counters.drops(DropReason::Ipv6FirstFragmentIncomplete), 0);
        assert!(s.usage().frag6_bytes > 0);
    }

    #[test]
    fn b5_fragment_end_beyond_65535_param_problem_at_offset() {
        let mut s = ready_stack();
        let p = frag6(7, 65528, false, 17, &[0u8; 16]);
        rx(&mut s, &p);
        assert_eq!(s.counters.drops(DropReason::FragTooBig), 1);
        assert_eq!(s.counters.get(Mib::Ip6InHdrErrors), 1);
        assert_pp(&mut s, 0, 42, &p);
    }

    #[test]
    fn b5_udp_closed_port_destination_unreachable_code4() {
        let mut s = ready_stack();
        let p = ip6(PEER6, OUR6, 17, &udp6(PEER6, OUR6, 4000, 9, b"knock"));
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::Udp6NoPorts), 1);
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.dst, o.eth_dst), (OUR6, PEER6, PEER_MAC));
        assert_eq!(
            &o.payload[..8],
            &[1, 4, o.payload[2], o.payload[3], 0, 0, 0, 0]
        );
        assert_eq!(&o.payload[8..], &p[..]);
        assert_eq!(s.counters.get(Mib::Icmp6OutDestUnreachs), 1);
    }

    #[test]
    fn b5_udp_zero_checksum_dropped() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        let mut u = udp6(PEER6, OUR6, 4000, 5060, b"x");
        u[6..8].copy_from_slice(&[0, 0]);
        rx(&mut s, &ip6(PEER6, OUR6, 17, &u));
        assert_dropped(
            &mut s,
            DropReason::UdpZeroChecksumV6,
            Some(Mib::Udp6InCsumErrors),
        );
        assert!(s.udp_recv_from(h).is_none());
    }

    #[test]
    fn b5_ip6_output_fragments_3000_byte_udp() {
        let mut s = ready_stack();
        let h = s.udp_bind(SocketAddr::new(OUR6.into(), 5060)).unwrap();
        let req0 = s.counters.get(Mib::Ip6OutRequests);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        s.udp_send_to(t0(), h, SocketAddr::new(PEER6.into(), 7000), &data)
            .unwrap();
        let frames = drain(&mut s);
        assert_eq!(frames.len(), 3);
        let mut whole = Vec::new();
        let mut ids = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= 14 + 1500);
            let o = out(f);
            assert_eq!((o.src, o.dst, o.nh, o.eth_dst), (OUR6, PEER6, 44, PEER_MAC));
            assert_eq!(o.payload[0], 17, "fragment's next header");
            let fo = u16::from_be_bytes([o.payload[2], o.payload[3]]);
            assert_eq!((fo >> 3) as usize * 8, whole.len(), "offset");
            assert_eq!(fo & 1 == 1, i < 2, "M flag");
            ids.push(u32::from_be_bytes(o.payload[4..8].try_into().unwrap()));
            let d = &o.payload[8..];
            if i < 2 {
                assert_eq!(d.len() % 8, 0);
                assert_eq!(d.len(), 1448);
            }
            whole.extend_from_slice(d);
        }
        assert!(ids.iter().all(|&i| i == ids[0]));
        assert_eq!(whole, udp6(OUR6, PEER6, 5060, 7000, &data));
        assert_eq!(s.counters.get(Mib::Ip6FragOKs), 1);
        assert_eq!(s.counters.get(Mib::Ip6FragCreates), 3);
        assert_eq!(s.counters.get(Mib::Ip6OutRequests), req0 + 1);
        // The next datagram gets another identification.
        s.udp_send_to(t0(), h, SocketAddr::new(PEER6.into(), 7000), &data)
            .unwrap();
        let o = out(&drain(&mut s)[0]);
        assert_ne!(
            u32::from_be_bytes(o.payload[4..8].try_into().unwrap()),
            ids[0]
        );
    }

    #[test]
    fn b5_ip6_output_without_route_outnoroutes() {
        let mut c = config();
        c.gateway6 = None;
        let mut s = Stack::new(c, t0());
        drain(&mut s);
        let h = s.udp_bind("[::]:0".parse().unwrap()).unwrap();
        let far: Ipv6Address = Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1);
        let r = s.udp_send_to(t0(), h, SocketAddr::new(far.into(), 9), b"x");
        assert_eq!(r, Err(StackError::NetUnreachable(IpAddr::V6(far))));
        assert_eq!(s.counters.get(Mib::Ip6OutNoRoutes), 1);
        assert!(drain(&mut s).is_empty());
    }

    /// `l4` (upper-layer packet with next header `nh`) as fragments of at
    /// most `size` bytes of data (a multiple of 8), identification `id`.
    fn frags_of(l4: &[u8], nh: u8, id: u32, size: usize) -> Vec<Vec<u8>> {
        l4.chunks(size)
            .enumerate()
            .map(|(i, c)| frag6(id, i * size, (i + 1) * size < l4.len(), nh, c))
            .collect()
    }

    fn big_udp() -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let u = udp6(PEER6, OUR6, 4000, 5060, &data);
        (data, u)
    }

    #[test]
    fn b5_reassembly_in_order() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        let log = hook(&mut s, None);
        let (data, u) = big_udp();
        let fr = frags_of(&u, 17, 0xabcd, 1448);
        assert_eq!(fr.len(), 3);
        for f in &fr {
            rx(&mut s, f);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        assert_eq!(s.counters.get(Mib::Ip6ReasmReqds), 3);
        assert_eq!(s.counters.get(Mib::Ip6ReasmOKs), 1);
        assert_eq!(s.counters.get(Mib::Ip6InDelivers), 1);
        assert_eq!(s.counters.total_drops(), 0);
        assert_eq!(s.usage().frag6_bytes, 0);
        // PRE_ROUTING saw each fragment, LOCAL_IN the reassembled datagram.
        let seen = log.lock().unwrap().clone();
        let pre = seen
            .iter()
            .filter(|(h, _)| *h == HookPoint::PreRouting)
            .count();
        assert_eq!(pre, 3);
        assert_eq!(seen.last(), Some(&(HookPoint::LocalIn, 40 + u.len())));
    }

    #[test]
    fn b5_reassembly_out_of_order_and_duplicates() {
        let mut s = ready_stack();
        let h = bound(&mut s);
        let (data, u) = big_udp();
        let fr = frags_of(&u, 17, 1, 1448);
        for i in [2, 1, 1, 2, 0] {
            rx(&mut s, &fr[i]);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        assert!(s.udp_recv_from(h).is_none());
        assert_eq!(s.counters.get(Mib::Ip6ReasmReqds), 5);
        assert_eq!(s.counters.get(Mib::Ip6ReasmOKs), 1);
        assert_eq!(s.counters.get(Mib::Ip6ReasmFails), 0);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_reassembly_overlap_drops_the_datagram() {
        // RFC 5722: overlapping fragments → the whole datagram is dropped.
        let mut s = ready_stack();
        let h = bound(&mut s);
        let (_, u) = big_udp();
        let fr = frags_of(&u, 17, 2, 1448);
        rx(&mut s, &fr[0]);
        rx(&mut s, &frag6(2, 1440, true, 17, &u[1440..1448 + 16]));
        assert_eq!(s.counters.drops(DropReason::FragOverlap), 1);
        assert_eq!(s.counters.get(Mib::Ip6ReasmFails), 1);
        assert_eq!(s.usage().frag6_bytes, 0);
        // What follows cannot complete the dropped datagram.
        rx(&mut s, &fr[1]);
        rx(&mut s, &fr[2]);
        assert!(s.udp_recv_from(h).is_none());
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.counters.get(Mib::Ip6ReasmOKs), 0);
    }

    #[test]
    fn b5_reassembly_timeout_time_exceeded_when_first_arrived() {
        let mut s = ready_stack();
        let (_, u) = big_udp();
        let fr = frags_of(&u, 17, 3, 1448);
        rx(&mut s, &fr[0]);
        rx(&mut s, &fr[2]);
        assert!(s.poll(t0() + Duration::from_secs(59)).is_some());
        assert!(drain(&mut s).is_empty());
        let later = t0() + Duration::from_secs(60);
        // Keep the peer resolved (its entry would have gone stale by now).
        s.neigh_update(
            later,
            PEER6.into(),
            smoltcp::wire::EthernetAddress(PEER_MAC),
            true,
        );
        s.poll(later);
        assert_eq!(s.counters.get(Mib::Ip6ReasmTimeout), 1);
        assert_eq!(s.counters.get(Mib::Ip6ReasmFails), 1);
        assert_eq!(s.counters.drops(DropReason::FragTimeout), 1);
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.dst), (OUR6, PEER6));
        assert_eq!(&o.payload[..2], &[3, 1]);
        assert_eq!(&o.payload[4..8], &[0; 4]);
        // The quote is the first fragment as it arrived, up to 1280 bytes.
        assert_eq!(&o.payload[8..], &fr[0][..1232]);
        assert_eq!(s.counters.get(Mib::Icmp6OutTimeExcds), 1);
        assert_eq!(s.usage().frag6_bytes, 0);
    }

    #[test]
    fn b5_reassembly_timeout_silent_without_first_fragment() {
        let mut s = ready_stack();
        let (_, u) = big_udp();
        let fr = frags_of(&u, 17, 4, 1448);
        rx(&mut s, &fr[1]);
        s.poll(t0() + Duration::from_secs(61));
        assert_eq!(s.counters.get(Mib::Ip6ReasmTimeout), 1);
        assert_eq!(s.counters.get(Mib::Ip6ReasmFails), 1);
        assert_eq!(s.counters.drops(DropReason::FragTimeout), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_reassembly_memory_bounded_under_flood() {
        let mut c = config();
        c.limits.frag6_mem = 64 << 10;
        let mut s = Stack::new(c, t0());
        drain(&mut s);
        let h = bound(&mut s);
        for id in 0..1000u32 {
            rx(&mut s, &frag6(id, 0, true, 17, &[0x11; 1000]));
            assert!(s.usage().frag6_bytes <= 64 << 10);
        }
        let fails = s.counters.get(Mib::Ip6ReasmFails);
        assert!(fails > 900, "evictions counted: {fails}");
        assert_eq!(s.counters.drops(DropReason::FragMemLimit), fails);
        assert!(drain(&mut s).is_empty());
        // A datagram still reassembles afterwards.
        let (data, u) = big_udp();
        for f in frags_of(&u, 17, 5000, 1448) {
            rx(&mut s, &f);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
    }

    #[test]
    fn b5_reassembly_with_extension_headers() {
        // Unfragmentable: hop-by-hop (Router Alert). Fragmentable:
        // destination options + UDP.
        let mut s = ready_stack();
        let h = bound(&mut s);
        let log: Arc<Mutex<Vec<u8>>> = Arc::default();
        let l = log.clone();
        s.add_filter(Box::new(move |hp: HookPoint, p: &[u8]| {
            if hp == HookPoint::LocalIn {
                *l.lock().unwrap() = p.to_vec();
            }
            Verdict::Accept
        }));
        let (data, u) = big_udp();
        let mut l4 = ext(17, &[1, 4, 0, 0, 0, 0]);
        l4.extend_from_slice(&u);
        for (i, c) in l4.chunks(1440).enumerate() {
            let mut pl = ext(44, &[5, 2, 0, 0, 1, 0]);
            let fo = ((i * 1440) as u16) | ((i + 1) * 1440 < l4.len()) as u16;
            pl.extend_from_slice(&[60, 0]);
            pl.extend_from_slice(&fo.to_be_bytes());
            pl.extend_from_slice(&9u32.to_be_bytes());
            pl.extend_from_slice(c);
            rx(&mut s, &ip6(PEER6, OUR6, 0, &pl));
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        let p = log.lock().unwrap().clone();
        assert_eq!(p.len(), 40 + 8 + l4.len());
        assert_eq!(p[6], 0, "fixed header still names hop-by-hop");
        assert_eq!(p[40], 60, "hop-by-hop now names the destination options");
        let plen = u16::from_be_bytes([p[4], p[5]]) as usize;
        assert_eq!(plen, p.len() - 40);
    }

    #[test]
    fn b5_reassembled_udp_checksum_always_verified() {
        // The device's checksum status describes a fragment, not the datagram.
        let mut s = ready_stack();
        let h = bound(&mut s);
        let (_, mut u) = big_udp();
        u[6] ^= 0x55;
        let meta = RxMeta {
            pkt_type: super::super::PacketType::Host,
            l4_csum: RxChecksum::Valid,
        };
        for f in frags_of(&u, 17, 6, 1448) {
            s.receive_frame(t0(), meta, &eth(&f));
        }
        assert!(s.udp_recv_from(h).is_none());
        assert_eq!(s.counters.get(Mib::Udp6InCsumErrors), 1);
    }

    #[test]
    fn b5_ip6_output_fragments_reassemble_in_a_peer_stack() {
        let mut a = ready_stack();
        let ha = a.udp_bind(SocketAddr::new(OUR6.into(), 5060)).unwrap();
        // The peer: a stack whose address is PEER6.
        let mut c = config();
        c.mac = smoltcp::wire::EthernetAddress(PEER_MAC);
        c.ipv6 = Some(smoltcp::wire::Ipv6Cidr::new(PEER6, 64));
        let mut b = Stack::new(c, t0());
        drain(&mut b);
        let hb = b.udp_bind("[::]:7000".parse().unwrap()).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        a.udp_send_to(t0(), ha, SocketAddr::new(PEER6.into(), 7000), &data)
            .unwrap();
        for f in drain(&mut a) {
            b.receive_frame(t0(), RxMeta::HOST, &f);
        }
        let d = b.udp_recv_from(hb).expect("reassembled by the peer");
        assert_eq!(d.data, data);
        assert_eq!(d.src, SocketAddr::new(OUR6.into(), 5060));
    }
}
