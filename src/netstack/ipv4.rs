//! IPv4 receive (SPEC B.1, seed 001: `ip_rcv` → `ip_rcv_finish` →
//! `ip_local_deliver` → `ip_local_deliver_finish`) and output
//! (`ip_output` with fragmentation, RFC 791 §2.3 / §3.2). The stack is a host
//! (RFC 1122): it never forwards.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr};

use super::csum;
use super::frag::{FragKey, FragResult};
use super::{
    DropReason, ETH_HDR, HookPoint, Instant, IpRx, Mib, RxChecksum, RxMeta, Stack, StackError,
    Verdict,
};

/// Fixed IPv4 header length (no options; we never emit options).
const IPV4_HDR: usize = 20;
/// Default TTL of datagrams we originate (Linux `ip_default_ttl`).
const DEFAULT_TTL: u8 = 64;
/// 224.0.0.1, the all-systems group every IPv4 host is a member of
/// (RFC 1112 §4).
const ALL_SYSTEMS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// IPv4 output state.
#[derive(Debug, Default)]
pub struct Ipv4State {
    /// Identification of the next datagram we send (RFC 791 §3.2).
    next_id: u16,
}

/// How `ip_rcv_finish`'s input route classifies a destination.
enum Route {
    /// One of our unicast addresses.
    Local,
    /// Limited or subnet-directed broadcast, or the all-systems group.
    LocalBroadcast,
}

impl Stack {
    /// `ip_rcv`: an IPv4 packet (Ethernet payload, may carry link padding).
    /// `link_bcast` is true when the frame went to the Ethernet broadcast or
    /// a multicast MAC.
    ///
    /// Header checks in Linux's order (seed 001, RFC 1122 §3.2.1.1–3.2.1.2):
    /// InReceives for everything; runt / version / IHL → InHdrErrors; bad
    /// header checksum → InCsumErrors + InHdrErrors, silently; `tot_len`
    /// beyond the data → InTruncatedPkts; `tot_len` below the header →
    /// InHdrErrors; link padding trimmed; then the PRE_ROUTING hook.
    pub(crate) fn ip_rcv(&mut self, now: Instant, meta: &RxMeta, pkt: &[u8], link_bcast: bool) {
        self.counters.inc(Mib::IpInReceives);
        if pkt.len() < IPV4_HDR {
            self.drop_pkt(DropReason::Ipv4TooShort, Some(Mib::IpInHdrErrors));
            return;
        }
        let p = Ipv4Packet::new_unchecked(pkt);
        if p.version() != 4 {
            self.drop_pkt(DropReason::Ipv4BadVersion, Some(Mib::IpInHdrErrors));
            return;
        }
        let ihl = p.header_len() as usize;
        if ihl < IPV4_HDR {
            self.drop_pkt(DropReason::Ipv4BadIhl, Some(Mib::IpInHdrErrors));
            return;
        }
        if pkt.len() < ihl {
            // `pskb_may_pull(skb, ihl * 4)` fails: the header is cut off.
            self.drop_pkt(DropReason::Ipv4TooShort, Some(Mib::IpInHdrErrors));
            return;
        }
        // Always verified: the device's checksum status concerns L4 only.
        if !p.verify_checksum() {
            self.drop_pkt(DropReason::Ipv4BadChecksum, Some(Mib::IpInCsumErrors));
            self.counters.inc(Mib::IpInHdrErrors);
            return;
        }
        let tot_len = p.total_len() as usize;
        if tot_len > pkt.len() {
            self.drop_pkt(DropReason::Ipv4Truncated, Some(Mib::IpInTruncatedPkts));
            return;
        }
        if tot_len < ihl {
            self.drop_pkt(DropReason::Ipv4BadTotLen, Some(Mib::IpInHdrErrors));
            return;
        }
        // `pskb_trim_rcsum`: drop the link layer's padding.
        let pkt = &pkt[..tot_len];
        if self.filters.run(HookPoint::PreRouting, pkt) == Verdict::Drop {
            self.drop_pkt(DropReason::FilterPreRouting, None);
            return;
        }
        self.ip_rcv_finish(now, meta, pkt, link_bcast);
    }

    /// `ip_rcv_finish`: the input route (Linux `ip_route_input_slow` for a
    /// host with forwarding off). Martian sources (RFC 1122 §3.2.1.3:
    /// broadcast, multicast, 0/8 except 0.0.0.0 → 255.255.255.255, 127/8,
    /// our own address or subnet broadcast) are dropped with no IP MIB
    /// counter, as Linux does (`in_martian_src` is a route-cache statistic,
    /// not an SNMP counter). Destinations: ours, broadcast (limited or our
    /// subnet's) and 224.0.0.1 are local; multicast groups we are not in and
    /// martian destinations (0/8, 127/8) are dropped uncounted (Linux
    /// `-EINVAL`); any other unicast address → InAddrErrors (Linux
    /// `ip_error` with forwarding off). Options (`ihl > 5`) are validated
    /// by `ip_rcv_options` (ip_options.rs).
    fn ip_rcv_finish(&mut self, now: Instant, meta: &RxMeta, pkt: &[u8], link_bcast: bool) {
        let p = Ipv4Packet::new_unchecked(pkt);
        let (src, dst) = (p.src_addr(), p.dst_addr());
        if self.is_martian_source(src, dst) {
            self.drop_pkt(DropReason::Ipv4BadSource, None);
            return;
        }
        let route = if self.is_our_v4(dst) {
            Route::Local
        } else if self.is_v4_broadcast(dst) || dst == ALL_SYSTEMS {
            Route::LocalBroadcast
        } else if dst.is_multicast() || dst.octets()[0] == 0 || dst.is_loopback() {
            self.drop_pkt(DropReason::Ipv4NotOurs, None);
            return;
        } else {
            self.drop_pkt(DropReason::Ipv4NotOurs, Some(Mib::IpInAddrErrors));
            return;
        };
        let bcast = link_bcast || matches!(route, Route::LocalBroadcast);
        if p.header_len() > 20 && !self.ip_rcv_options(now, pkt, bcast) {
            return;
        }
        self.ip_local_deliver(now, meta, pkt, bcast);
    }

    /// Source addresses Linux's input route rejects as martian.
    fn is_martian_source(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if src.is_multicast() || src.is_broadcast() {
            return true;
        }
        if src.is_unspecified() && dst.is_broadcast() {
            // "Accept zero addresses only to limited broadcast" (BOOTP/DHCP).
            return false;
        }
        src.octets()[0] == 0
            || src.is_loopback()
            || self.is_our_v4(src)
            || self.is_v4_broadcast(src)
    }

    /// `ip_local_deliver`: reassemble fragments (`ip_defrag`, RFC 791 §3.2 /
    /// RFC 815), then run the LOCAL_IN hook on the whole datagram.
    fn ip_local_deliver(&mut self, now: Instant, meta: &RxMeta, pkt: &[u8], bcast: bool) {
        let p = Ipv4Packet::new_unchecked(pkt);
        let whole = if p.more_frags() || p.frag_offset() != 0 {
            match self.ip_defrag(now, pkt) {
                Some(buf) => Some(buf),
                None => return,
            }
        } else {
            None
        };
        // A reassembled datagram's L4 checksum was never seen by the device.
        let defrag_meta = RxMeta {
            l4_csum: RxChecksum::Unverified,
            ..*meta
        };
        let (pkt, meta) = match &whole {
            Some(b) => (&b[..], &defrag_meta),
            None => (pkt, meta),
        };
        if self.filters.run(HookPoint::LocalIn, pkt) == Verdict::Drop {
            self.drop_pkt(DropReason::FilterLocalIn, None);
        } else {
            self.ip_local_deliver_finish(now, meta, pkt, bcast);
        }
        if let Some(b) = whole {
            self.recycle(b);
        }
    }

    /// `ip_defrag`: hand one fragment to the reassembler. ReasmReqds per
    /// fragment, ReasmOKs per completed datagram, ReasmFails (plus the
    /// reassembler's drop reason) per failure, including each datagram
    /// evicted for memory (`FragMemLimit`). Returns the complete datagram
    /// with its header patched (total length, flags and offset cleared,
    /// checksum recomputed).
    fn ip_defrag(&mut self, now: Instant, pkt: &[u8]) -> Option<Vec<u8>> {
        self.counters.inc(Mib::IpReasmReqds);
        let p = Ipv4Packet::new_unchecked(pkt);
        let ihl = p.header_len() as usize;
        let key = FragKey::V4 {
            src: p.src_addr(),
            dst: p.dst_addr(),
            id: p.ident(),
            proto: u8::from(p.next_header()),
        };
        let offset = p.frag_offset() as usize;
        let header = (offset == 0).then(|| &pkt[..ihl]);
        let res = self
            .frag4
            .add(now, key, offset, p.more_frags(), &pkt[ihl..], header);
        // Datagrams evicted to make room (Linux `inet_frag_evictor`).
        for _ in 0..self.frag4.take_evicted() {
            self.drop_pkt(DropReason::FragMemLimit, Some(Mib::IpReasmFails));
        }
        let done = match res {
            FragResult::Incomplete => return None,
            FragResult::Dropped(reason) => {
                self.drop_pkt(reason, Some(Mib::IpReasmFails));
                return None;
            }
            FragResult::Complete(r) => r,
        };
        let mut buf = done.buf;
        let hl = done.header_len;
        let sane = hl >= IPV4_HDR && buf.len() >= hl && (buf[0] & 0x0f) as usize * 4 == hl;
        if !sane {
            self.drop_pkt(DropReason::FragBadLength, Some(Mib::IpReasmFails));
            return None;
        }
        let Ok(total) = u16::try_from(buf.len()) else {
            // "Oversized IP datagram" (Linux `ip_frag_reasm`).
            self.drop_pkt(DropReason::FragTooBig, Some(Mib::IpReasmFails));
            return None;
        };
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_total_len(total);
        p.clear_flags();
        p.set_frag_offset(0);
        p.fill_checksum();
        self.counters.inc(Mib::IpReasmOKs);
        Some(buf)
    }

    /// `ip_local_deliver_finish` / `ip_protocol_deliver_rcu`: dispatch by
    /// protocol. ICMP and UDP count InDelivers after their handler ran, as
    /// Linux does for every registered protocol; TCP is not implemented yet
    /// (counted as a drop only); an unknown protocol → InUnknownProtos and
    /// ICMP protocol unreachable (RFC 1122 §3.2.2.1), never about broadcast.
    fn ip_local_deliver_finish(&mut self, now: Instant, meta: &RxMeta, pkt: &[u8], bcast: bool) {
        let p = Ipv4Packet::new_unchecked(pkt);
        let (src, dst) = (p.src_addr(), p.dst_addr());
        let ihl = p.header_len() as usize;
        let proto = u8::from(p.next_header());
        let ip = IpRx {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            packet: pkt,
            mcast_or_bcast: bcast || dst.is_multicast() || self.is_v4_broadcast(dst),
            hop_limit: p.hop_limit(),
        };
        let payload = &pkt[ihl..];
        match proto {
            1 => {
                self.icmp_rcv(now, meta, &ip, payload);
                self.counters.inc(Mib::IpInDelivers);
            }
            17 => {
                self.udp_rcv(now, meta, &ip, payload);
                self.counters.inc(Mib::IpInDelivers);
            }
            6 => {
                self.tcp_v4_rcv(now, meta, &ip, payload);
                self.counters.inc(Mib::IpInDelivers);
            }
            _ => {
                self.drop_pkt(DropReason::Ipv4UnknownProto, Some(Mib::IpInUnknownProtos));
                self.icmp_unreach_for(now, &ip, false);
            }
        }
    }

    /// Send an IPv4 datagram from `src` (one of ours) to `dst` carrying
    /// `l4_len` bytes of protocol `proto`, written by `fill`. Fragments when
    /// larger than the MTU, routes (on-link or gateway), resolves the next hop.
    ///
    /// Linux `ip_queue_xmit` / `ip_output` / `ip_fragment`: OutNoRoutes when
    /// there is no route; OutRequests per datagram; TTL 64 unless given; an
    /// incrementing identification; DF clear (RFC 791 §3.2).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ip_output(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: Option<u8>,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        let Some(next_hop) = self.next_hop_v4(dst) else {
            self.counters.inc(Mib::IpOutNoRoutes);
            return Err(StackError::NetUnreachable(dst.into()));
        };
        let total = IPV4_HDR + l4_len;
        if total > u16::MAX as usize {
            self.counters.inc(Mib::IpOutDiscards);
            return Err(StackError::MessageTooLong(l4_len));
        }
        self.counters.inc(Mib::IpOutRequests);
        let id = self.ipv4.next_id;
        self.ipv4.next_id = id.wrapping_add(1);
        let repr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::from(proto),
            payload_len: l4_len,
            hop_limit: ttl.unwrap_or(DEFAULT_TTL),
        };
        let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
        if total <= self.cfg.mtu {
            let mut f = self.alloc_frame(ETH_HDR + total);
            f.resize(ETH_HDR + total, 0);
            emit_ipv4_header(&repr, &mut f[ETH_HDR..], id, 0, false);
            fill(&mut f[ETH_HDR + IPV4_HDR..]);
            let partial = self.cfg.tx_csum_offload;
            csum::finish_l4(&mut f[ETH_HDR + IPV4_HDR..], &s, &d, proto, partial);
            return self.neigh_output(now, next_hop.into(), f);
        }
        // A device sees one piece: the checksum is computed here.
        let mut fill = |l4: &mut [u8]| {
            fill(l4);
            csum::finish_l4(l4, &s, &d, proto, false);
        };
        self.ip_fragment(now, next_hop, &repr, id, &mut fill)
    }

    /// `ip_fragment` (RFC 791 §3.2 "fragmentation"): 8-byte-aligned pieces
    /// of at most MTU − 20 bytes, each with a copy of the header, through
    /// [`Stack::send_fragments`].
    fn ip_fragment(
        &mut self,
        now: Instant,
        next_hop: Ipv4Addr,
        repr: &Ipv4Repr,
        id: u16,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        let l4_len = repr.payload_len;
        let per = self.cfg.mtu.saturating_sub(IPV4_HDR) & !7;
        if per == 0 {
            self.counters.inc(Mib::IpFragFails);
            return Err(StackError::MessageTooLong(l4_len));
        }
        self.send_fragments(
            now,
            next_hop.into(),
            l4_len,
            per,
            IPV4_HDR,
            fill,
            &mut |hdr, off, n, more| {
                let frag = Ipv4Repr {
                    payload_len: n,
                    ..*repr
                };
                // `off` < 65535 - 20: checked by the caller.
                emit_ipv4_header(&frag, hdr, id, off as u16, more);
            },
        )
    }

    /// Expire incomplete reassemblies (ICMP Time Exceeded code 1 when the
    /// first fragment had arrived). Linux `ip_expire`: ReasmTimeout and
    /// ReasmFails; RFC 792 / RFC 1122 §3.2.2.4.
    pub(crate) fn frag4_expire(&mut self, now: Instant) {
        for e in self.frag4.expire(now) {
            self.drop_pkt(DropReason::FragTimeout, Some(Mib::IpReasmTimeout));
            self.counters.inc(Mib::IpReasmFails);
            if let Some(first) = e.first {
                self.icmp_send(now, &first, 11, 1, 0);
            }
        }
    }
}

/// Write a 20-byte IPv4 header (smoltcp `Ipv4Repr`) with our identification,
/// DF clear and the given fragment offset (bytes) and MF flag.
fn emit_ipv4_header(repr: &Ipv4Repr, buf: &mut [u8], id: u16, offset: u16, more: bool) {
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..IPV4_HDR]);
    repr.emit(&mut p, &ChecksumCapabilities::ignored());
    p.set_ident(id);
    p.clear_flags();
    p.set_more_frags(more);
    p.set_frag_offset(offset);
    p.fill_checksum();
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use smoltcp::wire::{IpAddress, UdpPacket};

    use super::super::testutil::*;
    use super::super::{Duration, HookPoint, Verdict};
    use super::*;

    /// An IPv4 packet (20-byte header, TTL 64, DF clear) from smoltcp.
    pub(crate) fn ip4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::from(proto),
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut v = vec![0u8; IPV4_HDR + payload.len()];
        emit_ipv4_header(&repr, &mut v, id, 0, false);
        v[IPV4_HDR..].copy_from_slice(payload);
        v
    }

    /// Recompute the header checksum after editing a header.
    pub(crate) fn fix_csum(pkt: &mut [u8]) {
        Ipv4Packet::new_unchecked(pkt).fill_checksum();
    }

    /// IPv4 + UDP packet (valid checksums) from `src` to `dst`.
    pub(crate) fn udp4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        udp4_frame(OUR_MAC, src, dst, sport, dport, data)[14..].to_vec()
    }

    /// The IPv4 packet of an emitted Ethernet frame.
    pub(crate) fn tx_ip(frame: &[u8]) -> &[u8] {
        assert_eq!(&frame[12..14], &[0x08, 0x00], "not IPv4: {frame:02x?}");
        &frame[14..]
    }

    /// Split `pkt` (an unfragmented datagram, 20-byte header) into
    /// fragments at the given payload offsets (multiples of 8).
    pub(crate) fn fragments(pkt: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let payload = &pkt[IPV4_HDR..];
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(payload.len());
        bounds
            .windows(2)
            .map(|w| frag(pkt, w[0], &payload[w[0]..w[1]], w[1] < payload.len()))
            .collect()
    }

    /// One fragment of `pkt`'s datagram: `data` at `offset`, MF = `more`.
    pub(crate) fn frag(pkt: &[u8], offset: usize, data: &[u8], more: bool) -> Vec<u8> {
        let mut f = pkt[..IPV4_HDR].to_vec();
        f.extend_from_slice(data);
        let mut p = Ipv4Packet::new_unchecked(&mut f[..]);
        p.set_total_len((IPV4_HDR + data.len()) as u16);
        p.clear_flags();
        p.set_more_frags(more);
        p.set_frag_offset(offset as u16);
        p.fill_checksum();
        f
    }

    /// Ethernet (type IPv4 whatever the version nibble says) to us.
    pub(crate) fn eth4(pkt: &[u8]) -> Vec<u8> {
        let mut f = eth(pkt);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    fn rx(s: &mut Stack, pkt: &[u8]) {
        rx_at(s, t0(), pkt);
    }

    fn rx_at(s: &mut Stack, now: Instant, pkt: &[u8]) {
        s.receive_frame(now, RxMeta::HOST, &eth4(pkt));
    }

    fn bound(s: &mut Stack, port: u16) -> super::super::UdpHandle {
        s.udp_bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
            .expect("bind")
    }

    /// Assert one drop for `reason`, `mib` bumped (if any), nothing emitted.
    fn assert_dropped(s: &mut Stack, reason: DropReason, mib: Option<Mib>) {
        assert_eq!(s.counters.drops(reason), 1, "{:?}", s.counters.nonzero());
        assert_eq!(s.counters.total_drops(), 1, "{:?}", s.counters.nonzero());
        if let Some(m) = mib {
            assert_eq!(s.counters.get(m), 1, "{m:?}: {:?}", s.counters.nonzero());
        }
        assert_eq!(s.counters.get(Mib::IpInDelivers), 0);
        assert!(drain(s).is_empty());
    }

    #[test]
    fn b1_shorter_than_20_bytes_is_hdr_error() {
        let mut s = ready_stack();
        let p = udp4(PEER4, OUR4, 1, 2, b"x");
        rx(&mut s, &p[..19]);
        assert_eq!(s.counters.get(Mib::IpInReceives), 1);
        assert_dropped(&mut s, DropReason::Ipv4TooShort, Some(Mib::IpInHdrErrors));
    }

    #[test]
    fn b1_version_not_4_is_hdr_error() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"x");
        p[0] = 0x65;
        fix_csum(&mut p);
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv4BadVersion, Some(Mib::IpInHdrErrors));
    }

    #[test]
    fn b1_ihl_below_5_is_hdr_error() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"x");
        p[0] = 0x44;
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv4BadIhl, Some(Mib::IpInHdrErrors));
    }

    #[test]
    fn b1_header_longer_than_packet_is_hdr_error() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"");
        p[0] = 0x4f; // 60-byte header in a 28-byte packet
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv4TooShort, Some(Mib::IpInHdrErrors));
    }

    #[test]
    fn b1_bad_header_checksum_counts_csum_and_hdr_errors_silently() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"x");
        p[10] ^= 0x55;
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::IpInHdrErrors), 1);
        assert_dropped(
            &mut s,
            DropReason::Ipv4BadChecksum,
            Some(Mib::IpInCsumErrors),
        );
    }

    #[test]
    fn b1_header_checksum_is_verified_even_when_l4_is_offloaded() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"x");
        p[10] ^= 0x55;
        let meta = RxMeta {
            l4_csum: RxChecksum::Valid,
            ..RxMeta::HOST
        };
        s.receive_frame(t0(), meta, &eth4(&p));
        assert_dropped(
            &mut s,
            DropReason::Ipv4BadChecksum,
            Some(Mib::IpInCsumErrors),
        );
    }

    #[test]
    fn b1_tot_len_beyond_data_is_truncated() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"hello");
        let n = p.len() as u16 + 1;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        fix_csum(&mut p);
        rx(&mut s, &p);
        assert_dropped(
            &mut s,
            DropReason::Ipv4Truncated,
            Some(Mib::IpInTruncatedPkts),
        );
    }

    #[test]
    fn b1_tot_len_below_header_is_hdr_error() {
        let mut s = ready_stack();
        let mut p = udp4(PEER4, OUR4, 1, 2, b"hello");
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        fix_csum(&mut p);
        rx(&mut s, &p);
        assert_dropped(&mut s, DropReason::Ipv4BadTotLen, Some(Mib::IpInHdrErrors));
    }

    #[test]
    fn b1_link_padding_is_trimmed() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let mut p = udp4(PEER4, OUR4, 5070, 5060, b"ab");
        p.extend_from_slice(&[0xee; 16]); // Ethernet minimum-size padding
        rx(&mut s, &p);
        let d = s.udp_recv_from(h).expect("delivered");
        assert_eq!(d.data, b"ab");
        assert_eq!(s.counters.get(Mib::IpInDelivers), 1);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b1_prerouting_filter_drop_runs_before_routing() {
        let mut s = ready_stack();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        s.add_filter(Box::new(move |hook: HookPoint, _p: &[u8]| {
            c.fetch_add(1, Ordering::Relaxed);
            match hook {
                HookPoint::PreRouting => Verdict::Drop,
                HookPoint::LocalIn => Verdict::Accept,
            }
        }));
        // Not ours: the hook still sees it first (PRE_ROUTING precedes routing).
        rx(&mut s, &udp4(PEER4, Ipv4Addr::new(10, 9, 9, 9), 1, 2, b"x"));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.get(Mib::IpInAddrErrors), 0);
        assert_dropped(&mut s, DropReason::FilterPreRouting, None);
    }

    #[test]
    fn b1_local_in_filter_drop_after_routing() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let seen = Arc::new(AtomicUsize::new(0));
        let c = seen.clone();
        s.add_filter(Box::new(move |hook: HookPoint, p: &[u8]| {
            if hook == HookPoint::LocalIn {
                c.store(p.len(), Ordering::Relaxed);
                Verdict::Drop
            } else {
                Verdict::Accept
            }
        }));
        let p = udp4(PEER4, OUR4, 5070, 5060, b"abc");
        rx(&mut s, &p);
        assert_eq!(seen.load(Ordering::Relaxed), p.len());
        assert!(s.udp_recv_from(h).is_none());
        assert_dropped(&mut s, DropReason::FilterLocalIn, None);
    }

    #[test]
    fn b1_filters_accepting_at_both_hooks_deliver() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let hooks = Arc::new(AtomicUsize::new(0));
        let c = hooks.clone();
        s.add_filter(Box::new(move |hook: HookPoint, _p: &[u8]| {
            let bit = if hook == HookPoint::PreRouting { 1 } else { 2 };
            c.fetch_or(bit, Ordering::Relaxed);
            Verdict::Accept
        }));
        rx(&mut s, &udp4(PEER4, OUR4, 5070, 5060, b"abc"));
        assert_eq!(hooks.load(Ordering::Relaxed), 3);
        assert!(s.udp_recv_from(h).is_some());
    }

    #[test]
    fn b1_destination_not_ours_is_addr_error() {
        let mut s = ready_stack();
        rx(
            &mut s,
            &udp4(PEER4, Ipv4Addr::new(198, 18, 0, 9), 1, 2, b"x"),
        );
        assert_dropped(&mut s, DropReason::Ipv4NotOurs, Some(Mib::IpInAddrErrors));
    }

    #[test]
    fn b1_multicast_group_not_joined_dropped_uncounted_by_mib() {
        let mut s = ready_stack();
        rx(
            &mut s,
            &udp4(PEER4, Ipv4Addr::new(239, 1, 1, 1), 1, 2, b"x"),
        );
        assert_eq!(s.counters.get(Mib::IpInAddrErrors), 0);
        assert_dropped(&mut s, DropReason::Ipv4NotOurs, None);
    }

    #[test]
    fn b1_martian_sources_are_dropped() {
        for src in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(0, 1, 2, 3),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(224, 0, 0, 5),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(198, 18, 0, 255),
            OUR4,
        ] {
            let mut s = ready_stack();
            bound(&mut s, 2);
            rx(&mut s, &udp4(src, OUR4, 1, 2, b"x"));
            assert_eq!(s.counters.get(Mib::IpInAddrErrors), 0, "{src}");
            assert_dropped(&mut s, DropReason::Ipv4BadSource, None);
        }
    }

    #[test]
    fn b1_zero_source_accepted_to_limited_broadcast() {
        let mut s = ready_stack();
        let h = bound(&mut s, 67);
        rx(
            &mut s,
            &udp4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, b"dhcp"),
        );
        assert_eq!(s.udp_recv_from(h).expect("delivered").data, b"dhcp");
    }

    #[test]
    fn b1_subnet_broadcast_is_local_and_never_gets_icmp() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let bcast = Ipv4Addr::new(198, 18, 0, 255);
        rx(&mut s, &udp4(PEER4, bcast, 5070, 5060, b"hi"));
        assert_eq!(s.udp_recv_from(h).expect("delivered").dst.ip(), bcast);
        // Closed port on broadcast: NoPorts but no ICMP.
        rx(&mut s, &udp4(PEER4, bcast, 5070, 5999, b"hi"));
        assert_eq!(s.counters.get(Mib::UdpNoPorts), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 2);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b1_options_are_skipped() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let p = udp4(PEER4, OUR4, 5070, 5060, b"opts");
        // Insert 8 bytes of options (Router Alert + NOP + EOL): ihl 7.
        let mut q = p[..20].to_vec();
        q.extend_from_slice(&[0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00]);
        q.extend_from_slice(&p[20..]);
        q[0] = 0x47;
        let n = q.len() as u16;
        q[2..4].copy_from_slice(&n.to_be_bytes());
        fix_csum(&mut q);
        rx(&mut s, &q);
        let d = s.udp_recv_from(h).expect("delivered despite options");
        assert_eq!(d.data, b"opts");
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b1_unknown_protocol_sends_protocol_unreachable_quoting_header_and_8_bytes() {
        let mut s = ready_stack();
        let payload: Vec<u8> = (0u8..40).collect();
        let mut p = ip4(PEER4, OUR4, 253, 0x4242, &payload);
        // With an option, to check the quote keeps it.
        p.splice(20..20, [0x01, 0x01, 0x01, 0x00]);
        p[0] = 0x46;
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        fix_csum(&mut p);
        rx(&mut s, &p);
        assert_eq!(s.counters.get(Mib::IpInUnknownProtos), 1);
        assert_eq!(s.counters.drops(DropReason::Ipv4UnknownProto), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 0);
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..6], &PEER_MAC);
        let ip = Ipv4Packet::new_checked(tx_ip(&out[0])).expect("ipv4");
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR4, PEER4));
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(ip.hop_limit(), 64);
        let icmp = ip.payload();
        assert_eq!(&icmp[..2], &[3, 2]);
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(&icmp[8..], &p[..24 + 8]);
        assert!(smoltcp::wire::Icmpv4Packet::new_unchecked(icmp).verify_checksum());
        assert_eq!(s.counters.get(Mib::IcmpOutDestUnreachs), 1);
        assert_eq!(s.counters.get(Mib::IcmpOutMsgs), 1);
    }

    #[test]
    fn b1_unknown_protocol_to_broadcast_gets_no_icmp() {
        let mut s = ready_stack();
        rx(&mut s, &ip4(PEER4, Ipv4Addr::BROADCAST, 253, 1, &[0; 16]));
        assert_eq!(s.counters.get(Mib::IpInUnknownProtos), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b1_in_delivers_counts_udp_icmp_and_tcp() {
        let mut s = ready_stack();
        rx(&mut s, &udp4(PEER4, OUR4, 5070, 5999, b"x")); // closed port: still delivered to UDP
        drain(&mut s);
        let echo = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        rx(&mut s, &ip4(PEER4, OUR4, 1, 2, &echo));
        assert_eq!(s.counters.get(Mib::IpInDelivers), 2);
        rx(&mut s, &ip4(PEER4, OUR4, 6, 3, &[0; 20]));
        assert_eq!(s.counters.get(Mib::IpInDelivers), 3);
        assert_eq!(s.counters.get(Mib::IpInReceives), 3);
    }

    #[test]
    fn b1_tcp_is_delivered_to_tcp_v4_rcv() {
        let mut s = ready_stack();
        // data offset 0: TCP's header check drops it (InErrs), silently
        rx(&mut s, &ip4(PEER4, OUR4, 6, 3, &[0; 20]));
        assert_eq!(s.counters.drops(DropReason::TcpBadOffset), 1);
        assert_eq!(s.counters.get(Mib::TcpInErrs), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 1);
        assert!(drain(&mut s).is_empty());
    }

    // ----- output -----

    #[test]
    fn b1_output_header_ttl_id_df() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let to = SocketAddr::new(PEER4.into(), 5070);
        s.udp_send_to(t0(), h, to, b"one").expect("send");
        s.udp_send_to(t0(), h, to, b"two").expect("send");
        let out = drain(&mut s);
        assert_eq!(out.len(), 2);
        let a = Ipv4Packet::new_checked(tx_ip(&out[0])).expect("ipv4");
        let b = Ipv4Packet::new_checked(tx_ip(&out[1])).expect("ipv4");
        assert!(a.verify_checksum() && b.verify_checksum());
        assert_eq!(a.hop_limit(), 64);
        assert!(!a.dont_frag() && !a.more_frags() && a.frag_offset() == 0);
        assert_eq!(b.ident(), a.ident().wrapping_add(1));
        assert_eq!((a.src_addr(), a.dst_addr()), (OUR4, PEER4));
        assert_eq!(s.counters.get(Mib::IpOutRequests), 2);
        // Off-link goes to the gateway's MAC (same as the peer's here).
        s.udp_send_to(t0(), h, SocketAddr::new([203, 0, 113, 1].into(), 9), b"x")
            .expect("via gateway");
        assert_eq!(&drain(&mut s)[0][..6], &PEER_MAC);
    }

    #[test]
    fn b1_output_without_route_is_out_no_routes() {
        let mut c = config();
        c.gateway4 = None;
        let mut s = Stack::new(c, t0());
        drain(&mut s);
        let h = bound(&mut s, 5060);
        let r = s.udp_send_to(t0(), h, SocketAddr::new([203, 0, 113, 1].into(), 9), b"x");
        assert!(matches!(r, Err(StackError::NetUnreachable(_))));
        assert_eq!(s.counters.get(Mib::IpOutNoRoutes), 1);
        assert_eq!(s.counters.get(Mib::IpOutRequests), 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b1_output_fragments_a_3000_byte_udp_datagram() {
        let mut s = ready_stack();
        let h = s
            .udp_bind(SocketAddr::new(OUR4.into(), 5060))
            .expect("bind");
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        s.udp_send_to(t0(), h, SocketAddr::new(PEER4.into(), 5070), &data)
            .expect("send");
        let out = drain(&mut s);
        assert_eq!(out.len(), 3);
        let mut whole = Vec::new();
        let mut ident = None;
        let expect = [
            (0usize, 1480usize, true),
            (1480, 1480, true),
            (2960, 48, false),
        ];
        for (f, (off, len, mf)) in out.iter().zip(expect) {
            assert!(f.len() <= 14 + 1500);
            let p = Ipv4Packet::new_checked(tx_ip(f)).expect("ipv4");
            assert!(p.verify_checksum());
            assert_eq!(p.frag_offset() as usize, off);
            assert_eq!(p.more_frags(), mf);
            assert!(!p.dont_frag());
            assert_eq!(p.payload().len(), len);
            assert_eq!(*ident.get_or_insert(p.ident()), p.ident());
            assert_eq!(whole.len(), off);
            whole.extend_from_slice(p.payload());
        }
        let udp = UdpPacket::new_checked(&whole[..]).expect("udp");
        assert_eq!(udp.len() as usize, 3008);
        assert!(udp.verify_checksum(&IpAddress::Ipv4(OUR4), &IpAddress::Ipv4(PEER4)));
        assert_eq!(udp.payload(), &data[..]);
        assert_eq!(s.counters.get(Mib::IpOutRequests), 1);
        assert_eq!(s.counters.get(Mib::IpFragOKs), 1);
        assert_eq!(s.counters.get(Mib::IpFragCreates), 3);
    }

    // ----- reassembly through ip_rcv (needs the real frag.rs) -----

    fn big_udp(id: u16) -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..200u32).map(|i| (i % 256) as u8).collect();
        let mut p = udp4(PEER4, OUR4, 5070, 5060, &data);
        p[4..6].copy_from_slice(&id.to_be_bytes());
        fix_csum(&mut p);
        (p, data)
    }

    #[test]
    fn b1_reassembly_in_order() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let (p, data) = big_udp(7);
        for f in fragments(&p, &[64, 128]) {
            rx(&mut s, &f);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        assert_eq!(s.counters.get(Mib::IpReasmReqds), 3);
        assert_eq!(s.counters.get(Mib::IpReasmOKs), 1);
        assert_eq!(s.counters.get(Mib::IpInDelivers), 1);
        assert_eq!(s.usage().frag4_bytes, 0);
    }

    #[test]
    fn b1_reassembly_out_of_order_and_local_in_sees_whole_datagram() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let lens = Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lens.clone();
        s.add_filter(Box::new(move |hook: HookPoint, p: &[u8]| {
            if hook == HookPoint::LocalIn {
                l.lock().expect("lock").push(p.len());
            }
            Verdict::Accept
        }));
        let (p, data) = big_udp(8);
        let mut fs = fragments(&p, &[64, 128]);
        fs.reverse();
        for f in &fs {
            rx(&mut s, f);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        assert_eq!(*lens.lock().expect("lock"), vec![p.len()]);
        assert_eq!(s.counters.get(Mib::IpReasmOKs), 1);
    }

    #[test]
    fn b1_reassembly_duplicate_fragment_delivers_once() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let (p, data) = big_udp(9);
        let fs = fragments(&p, &[64, 128]);
        rx(&mut s, &fs[0]);
        rx(&mut s, &fs[0]);
        rx(&mut s, &fs[1]);
        rx(&mut s, &fs[2]);
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
        assert!(s.udp_recv_from(h).is_none());
        assert_eq!(s.counters.get(Mib::IpReasmOKs), 1);
    }

    #[test]
    fn b1_reassembly_overlap_drops_the_datagram() {
        let mut s = ready_stack();
        let h = bound(&mut s, 5060);
        let (p, _) = big_udp(10);
        let payload = &p[20..];
        rx(&mut s, &frag(&p, 0, &payload[..64], true));
        // Overlaps [56, 64) with different bytes.
        let mut evil = payload[56..128].to_vec();
        evil[0] ^= 0xff;
        rx(&mut s, &frag(&p, 56, &evil, true));
        rx(&mut s, &frag(&p, 128, &payload[128..], false));
        assert!(s.udp_recv_from(h).is_none());
        assert!(s.counters.get(Mib::IpReasmFails) >= 1);
        assert_eq!(s.counters.drops(DropReason::FragOverlap), 1);
        assert_eq!(s.counters.get(Mib::IpReasmOKs), 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b1_reassembly_timeout_sends_time_exceeded_code_1() {
        let mut s = ready_stack();
        bound(&mut s, 5060);
        let (p, _) = big_udp(11);
        let fs = fragments(&p, &[64, 128]);
        rx(&mut s, &fs[0]);
        rx(&mut s, &fs[2]);
        assert!(drain(&mut s).is_empty());
        s.poll(t0() + Duration::from_secs(29));
        assert!(drain(&mut s).is_empty());
        let later = t0() + Duration::from_secs(31);
        // Keep the peer resolved past the default 30 s reachable time.
        s.neigh_update(
            later,
            PEER4.into(),
            smoltcp::wire::EthernetAddress(PEER_MAC),
            true,
        );
        s.poll(later);
        assert_eq!(s.counters.get(Mib::IpReasmTimeout), 1);
        assert_eq!(s.counters.get(Mib::IpReasmFails), 1);
        assert_eq!(s.counters.drops(DropReason::FragTimeout), 1);
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(tx_ip(&out[0])).expect("ipv4");
        assert_eq!(ip.dst_addr(), PEER4);
        let icmp = ip.payload();
        assert_eq!(&icmp[..2], &[11, 1]);
        // The first fragment's header and its first 8 data bytes.
        assert_eq!(&icmp[8..], &fs[0][..28]);
        assert_eq!(s.counters.get(Mib::IcmpOutTimeExcds), 1);
    }

    #[test]
    fn b1_reassembly_timeout_without_first_fragment_sends_nothing() {
        let mut s = ready_stack();
        let (p, _) = big_udp(12);
        let fs = fragments(&p, &[64, 128]);
        rx(&mut s, &fs[1]);
        s.poll(t0() + Duration::from_secs(31));
        assert_eq!(s.counters.get(Mib::IpReasmTimeout), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b1_reassembly_memory_is_capped_under_a_flood() {
        let mut c = config();
        c.limits.frag4_mem = 64 * 1024;
        let mut s = Stack::new(c, t0());
        drain(&mut s);
        let payload = [0x5au8; 1024];
        for id in 0..1000u16 {
            let p = ip4(PEER4, OUR4, 17, id, &payload);
            // Only the first half of each datagram arrives.
            rx_at(&mut s, t0(), &frag(&p, 0, &payload[..512], true));
            assert!(s.usage().frag4_bytes <= 64 * 1024);
        }
        assert!(s.counters.get(Mib::IpReasmFails) > 0);
        assert_eq!(
            s.counters.drops(DropReason::FragMemLimit),
            s.counters.get(Mib::IpReasmFails)
        );
        assert_eq!(s.counters.get(Mib::IpReasmReqds), 1000);
        assert!(drain(&mut s).is_empty());
        // The flood does not lock out a real datagram.
        let h = bound(&mut s, 5060);
        let (p, data) = big_udp(4242);
        for f in fragments(&p, &[64, 128]) {
            rx(&mut s, &f);
        }
        assert_eq!(s.udp_recv_from(h).expect("reassembled").data, data);
    }
}
