//! Neighbour discovery (RFC 4861; Linux `ndisc_rcv`, `ndisc_recv_ns`,
//! `ndisc_recv_na`, `ndisc_send_na`, `ndisc_solicit`): answer solicitations
//! for our addresses (incl. solicited-node multicast and DAD), learn from
//! solicitations and advertisements, solicit for `neigh`, announce at start.

use std::net::{IpAddr, Ipv6Addr};

use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::wire::{
    HardwareAddress, IPV6_LINK_LOCAL_ALL_NODES, Icmpv6Packet, Icmpv6Repr, NdiscNeighborFlags,
    NdiscRepr, RawHardwareAddress,
};

use super::{DropReason, EthernetAddress, Instant, IpRx, Mib, Stack};

/// RFC 4861 §6.1 / §7.1: NDP messages are sent and accepted with hop
/// limit 255 only.
const NDISC_HOP_LIMIT: u8 = 255;

/// The Ethernet address in a link-layer address option.
fn eth_addr(l: RawHardwareAddress) -> Option<EthernetAddress> {
    match l.parse(Medium::Ethernet) {
        Ok(HardwareAddress::Ethernet(m)) => Some(m),
        _ => None,
    }
}

/// ff02::1:ffXX:XXXX (RFC 4291 §2.7.1).
fn is_solicited_node(a: Ipv6Addr) -> bool {
    let s = a.segments();
    s[..6] == [0xff02, 0, 0, 0, 0, 1] && (s[6] >> 8) == 0xff
}

impl Stack {
    /// `ndisc_rcv` (RFC 4861 §6.1.2, §7.1): hop limit 255 and code 0, else
    /// NdpMalformed; then neighbour solicitations (`ndisc_recv_ns`) and
    /// advertisements (`ndisc_recv_na`). Router advertisements are counted
    /// (by `icmpv6_rcv`) and ignored; we are a host without autoconfiguration.
    pub(crate) fn ndisc_rcv(&mut self, now: Instant, ip: &IpRx<'_>, icmp: &[u8]) {
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (ip.src, ip.dst) else {
            return;
        };
        if ip.hop_limit != NDISC_HOP_LIMIT || icmp.get(1) != Some(&0) {
            self.counters.drop_reason(DropReason::NdpMalformed);
            return;
        }
        let repr = Icmpv6Packet::new_checked(icmp)
            .ok()
            .and_then(|p| NdiscRepr::parse(&p).ok());
        let Some(repr) = repr else {
            self.counters.drop_reason(DropReason::NdpMalformed);
            return;
        };
        match repr {
            NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            } => self.ndisc_recv_ns(now, src, dst, target_addr, lladdr),
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => self.ndisc_recv_na(now, dst, flags, target_addr, lladdr),
            NdiscRepr::RouterAdvert { .. } => {}
            // Router solicitations are for routers; redirects are ignored.
            _ => self.counters.drop_reason(DropReason::IcmpUnhandledType),
        }
    }

    /// `ndisc_recv_ns` (RFC 4861 §7.1.1, §7.2.3): validate, learn the
    /// sender's link-layer address, answer for our addresses (solicited +
    /// override, target link-layer address option) — to the sender, or to
    /// all-nodes for duplicate address detection (unspecified source).
    fn ndisc_recv_ns(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        lladdr: Option<RawHardwareAddress>,
    ) {
        let dad = src.is_unspecified();
        // §7.1.1: target not multicast; with an unspecified source the
        // destination is a solicited-node group and there is no source
        // link-layer address option.
        let sll = match lladdr {
            Some(l) => match eth_addr(l) {
                Some(m) => Some(m),
                None => {
                    self.counters.drop_reason(DropReason::NdpMalformed);
                    return;
                }
            },
            None => None,
        };
        if target.is_multicast() || (dad && (!is_solicited_node(dst) || sll.is_some())) {
            self.counters.drop_reason(DropReason::NdpMalformed);
            return;
        }
        let ours = target == self.ll6 || self.cfg.ipv6.is_some_and(|c| c.address() == target);
        if !ours {
            self.counters.drop_reason(DropReason::NdpNotForUs);
            return;
        }
        if dad {
            // Someone probes an address we hold: defend it.
            let flags = NdiscNeighborFlags::OVERRIDE;
            self.ndisc_send_na(now, IPV6_LINK_LOCAL_ALL_NODES, target, flags);
            return;
        }
        if let Some(mac) = sll {
            self.neigh_update(now, src.into(), mac, true);
        }
        let flags = NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE;
        self.ndisc_send_na(now, src, target, flags);
    }

    /// `ndisc_recv_na` (RFC 4861 §7.1.2, §7.2.5): validate, then update an
    /// existing neighbour entry from the target link-layer address option
    /// (flushing packets queued while it resolved). Advertisements never
    /// create entries.
    fn ndisc_recv_na(
        &mut self,
        now: Instant,
        dst: Ipv6Addr,
        flags: NdiscNeighborFlags,
        target: Ipv6Addr,
        lladdr: Option<RawHardwareAddress>,
    ) {
        if target.is_multicast()
            || (dst.is_multicast() && flags.contains(NdiscNeighborFlags::SOLICITED))
        {
            self.counters.drop_reason(DropReason::NdpMalformed);
            return;
        }
        let Some(l) = lladdr else {
            return;
        };
        let Some(mac) = eth_addr(l) else {
            self.counters.drop_reason(DropReason::NdpMalformed);
            return;
        };
        self.neigh_update(now, target.into(), mac, false);
    }

    /// `ndisc_send_na` (RFC 4861 §7.2.4): an advertisement for our `target`
    /// (also its source) to `dst`, with our link-layer address.
    fn ndisc_send_na(
        &mut self,
        now: Instant,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        flags: NdiscNeighborFlags,
    ) {
        let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            lladdr: Some(self.cfg.mac.into()),
        });
        if self.ndisc_send(now, target, dst, &repr) {
            self.counters.inc(Mib::Icmp6OutNeighborAdvertisements);
        }
    }

    /// `ndisc_send_skb`: one NDP message with hop limit 255. Returns whether
    /// it was sent (OutMsgs) or not (OutErrors).
    fn ndisc_send(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        repr: &Icmpv6Repr<'_>,
    ) -> bool {
        if self.replicating {
            // a replica from another shard: learn only, never answer
            return false;
        }
        let len = repr.buffer_len();
        let res = self.ip6_output(now, src, dst, 58, Some(NDISC_HOP_LIMIT), len, &mut |buf| {
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            )
        });
        let ok = res.is_ok();
        self.counters.inc(if ok {
            Mib::Icmp6OutMsgs
        } else {
            Mib::Icmp6OutErrors
        });
        ok
    }

    /// `ndisc_solicit` (RFC 4861 §7.2.2): a neighbour solicitation for
    /// `target` to its solicited-node group, from the address we would use
    /// to reach it, with our link-layer address (called by `neigh`).
    pub(crate) fn ndisc_solicit(&mut self, now: Instant, target: Ipv6Addr) {
        let Some(src) = self.src_for_v6(target) else {
            return;
        };
        let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(self.cfg.mac.into()),
        });
        if self.ndisc_send(now, src, super::solicited_node(target), &repr) {
            self.counters.inc(Mib::Icmp6OutNeighborSolicits);
        }
    }

    /// Unsolicited neighbour advertisements (RFC 4861 §7.2.6: override, not
    /// solicited, to all-nodes) for our link-local and global addresses, so
    /// the link learns our MAC at start.
    pub(crate) fn ndisc_announce(&mut self, now: Instant) {
        let mut addrs = vec![self.ll6];
        if let Some(c) = self.cfg.ipv6 {
            addrs.push(c.address());
        }
        for a in addrs {
            self.ndisc_send_na(
                now,
                IPV6_LINK_LOCAL_ALL_NODES,
                a,
                NdiscNeighborFlags::OVERRIDE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    use smoltcp::wire::{
        EthernetAddress, Icmpv6Packet, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
    };

    use super::super::ipv6::tests::*;
    use super::super::testutil::*;
    use super::super::{DropReason, Mib, RxMeta, Stack, multicast_mac_v6, solicited_node};

    const NEW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
    const NEW_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x05];

    fn peer_ll() -> Ipv6Addr {
        super::super::link_local_from_mac(EthernetAddress(PEER_MAC))
    }

    fn ns(target: Ipv6Addr, sll: Option<[u8; 6]>) -> NdiscRepr<'static> {
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: sll.map(|m| RawHardwareAddress::from(EthernetAddress(m))),
        }
    }

    /// The emitted frame as a neighbour advertisement: (flags, target, TLL).
    fn na_of(o: &Out) -> (NdiscNeighborFlags, Ipv6Addr, Option<EthernetAddress>) {
        assert_eq!(o.hop, 255);
        let p = Icmpv6Packet::new_checked(&o.payload[..]).unwrap();
        assert!(p.verify_checksum(&o.src, &o.dst));
        match NdiscRepr::parse(&p).unwrap() {
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => (
                flags,
                target_addr,
                lladdr.map(|l| EthernetAddress::from_bytes(l.as_bytes())),
            ),
            r => panic!("not an NA: {r:?}"),
        }
    }

    fn fresh() -> Stack {
        let mut s = stack();
        drain(&mut s);
        s
    }

    #[test]
    fn b5_ns_for_global_via_solicited_node_answered() {
        let mut s = fresh();
        let sn = solicited_node(OUR6);
        let f = ndisc_frame(
            PEER6,
            sn,
            255,
            ns(OUR6, Some(PEER_MAC)),
            multicast_mac_v6(sn).0,
        );
        s.receive_frame(t0(), RxMeta::HOST, &f);
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.dst, o.eth_dst), (OUR6, PEER6, PEER_MAC));
        let (flags, target, tll) = na_of(&o);
        assert_eq!(
            flags,
            NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE
        );
        assert_eq!(target, OUR6);
        assert_eq!(tll, Some(EthernetAddress(OUR_MAC)));
        // The solicitation taught us the sender's MAC.
        assert_eq!(
            s.neighbor(t0(), PEER6.into()),
            Some(EthernetAddress(PEER_MAC))
        );
        assert_eq!(s.counters.get(Mib::Icmp6InNeighborSolicits), 1);
        assert_eq!(s.counters.get(Mib::Icmp6OutNeighborAdvertisements), 3);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_ns_for_link_local_answered() {
        let mut s = fresh();
        let ll = s.link_local_v6();
        let f = ndisc_frame(peer_ll(), ll, 255, ns(ll, Some(PEER_MAC)), OUR_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.dst, o.eth_dst), (ll, peer_ll(), PEER_MAC));
        let (flags, target, tll) = na_of(&o);
        assert_eq!(
            flags,
            NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE
        );
        assert_eq!((target, tll), (ll, Some(EthernetAddress(OUR_MAC))));
    }

    #[test]
    fn b5_ns_for_duplicate_address_detection_answered_to_all_nodes() {
        let mut s = fresh();
        let sn = solicited_node(OUR6);
        let f = ndisc_frame(
            Ipv6Addr::UNSPECIFIED,
            sn,
            255,
            ns(OUR6, None),
            multicast_mac_v6(sn).0,
        );
        s.receive_frame(t0(), RxMeta::HOST, &f);
        let o = one_icmp6(&mut s);
        assert_eq!((o.src, o.dst, o.eth_dst), (OUR6, ALL_NODES, ALL_NODES_MAC));
        let (flags, target, tll) = na_of(&o);
        assert_eq!(flags, NdiscNeighborFlags::OVERRIDE);
        assert_eq!((target, tll), (OUR6, Some(EthernetAddress(OUR_MAC))));
        assert_eq!(s.usage().neigh_entries, 0);
    }

    #[test]
    fn b5_dad_ns_with_source_link_layer_option_malformed() {
        let mut s = fresh();
        let sn = solicited_node(OUR6);
        let f = ndisc_frame(
            Ipv6Addr::UNSPECIFIED,
            sn,
            255,
            ns(OUR6, Some(PEER_MAC)),
            multicast_mac_v6(sn).0,
        );
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::NdpMalformed), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_ns_for_another_target_not_for_us() {
        let mut s = fresh();
        let f = ndisc_frame(PEER6, OUR6, 255, ns(NEW6, Some(PEER_MAC)), OUR_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::NdpNotForUs), 1);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.usage().neigh_entries, 0);
    }

    #[test]
    fn b5_ndp_hop_limit_not_255_malformed() {
        let mut s = fresh();
        let f = ndisc_frame(PEER6, OUR6, 64, ns(OUR6, Some(PEER_MAC)), OUR_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::NdpMalformed), 1);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.usage().neigh_entries, 0);
    }

    #[test]
    fn b5_ndp_bad_option_length_malformed() {
        let mut s = fresh();
        let mut f = ndisc_frame(PEER6, OUR6, 255, ns(OUR6, Some(PEER_MAC)), OUR_MAC);
        // The option length byte (after 14 + 40 + 24 + 1 bytes): 0 is invalid.
        let at = 14 + 40 + 24 + 1;
        f[at] = 0;
        // Keep the checksum right so the option rule is what trips.
        let (src, dst) = (PEER6, OUR6);
        let mut p = Icmpv6Packet::new_unchecked(&mut f[54..]);
        p.fill_checksum(&src, &dst);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::NdpMalformed), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_neighbour_resolution_then_queued_packet_flushed() {
        let mut s = fresh();
        let h = s.udp_bind(SocketAddr::new(OUR6.into(), 5060)).unwrap();
        s.udp_send_to(t0(), h, SocketAddr::new(NEW6.into(), 7000), b"queued")
            .unwrap();
        // A solicitation to NEW6's solicited-node group.
        let o = one_icmp6(&mut s);
        let sn = solicited_node(NEW6);
        assert_eq!(
            (o.src, o.dst, o.eth_dst, o.hop),
            (OUR6, sn, multicast_mac_v6(sn).0, 255)
        );
        let p = Icmpv6Packet::new_checked(&o.payload[..]).unwrap();
        assert_eq!(
            NdiscRepr::parse(&p).unwrap(),
            ns(NEW6, Some(OUR_MAC)),
            "target + source link-layer address"
        );
        assert_eq!(s.counters.get(Mib::Icmp6OutNeighborSolicits), 1);
        // The answer flushes the UDP datagram to the learned MAC.
        let na = NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            target_addr: NEW6,
            lladdr: Some(EthernetAddress(NEW_MAC).into()),
        };
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &ndisc_frame(NEW6, OUR6, 255, na, OUR_MAC),
        );
        let frames = drain(&mut s);
        assert_eq!(frames.len(), 1);
        let o = out(&frames[0]);
        assert_eq!((o.eth_dst, o.dst, o.nh), (NEW_MAC, NEW6, 17));
        assert_eq!(&o.payload[8..], b"queued");
        assert_eq!(
            s.neighbor(t0(), NEW6.into()),
            Some(EthernetAddress(NEW_MAC))
        );
        assert_eq!(s.counters.get(Mib::Icmp6InNeighborAdvertisements), 1);
    }

    #[test]
    fn b5_unsolicited_na_creates_no_entry() {
        let mut s = fresh();
        let na = NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: NEW6,
            lladdr: Some(EthernetAddress(NEW_MAC).into()),
        };
        let f = ndisc_frame(NEW6, ALL_NODES, 255, na, ALL_NODES_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.neighbor(t0(), IpAddr::V6(NEW6)), None);
        assert_eq!(s.usage().neigh_entries, 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_solicited_na_to_multicast_malformed() {
        let mut s = fresh();
        let na = NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED,
            target_addr: NEW6,
            lladdr: Some(EthernetAddress(NEW_MAC).into()),
        };
        let f = ndisc_frame(NEW6, ALL_NODES, 255, na, ALL_NODES_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::NdpMalformed), 1);
    }

    #[test]
    fn b5_router_advertisement_counted_and_ignored() {
        let mut s = fresh();
        let ra = NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags: smoltcp::wire::NdiscRouterFlags::empty(),
            router_lifetime: smoltcp::time::Duration::from_secs(1800),
            reachable_time: smoltcp::time::Duration::from_millis(0),
            retrans_time: smoltcp::time::Duration::from_millis(0),
            lladdr: Some(EthernetAddress(PEER_MAC).into()),
            mtu: None,
            prefix_info: None,
        };
        let f = ndisc_frame(peer_ll(), ALL_NODES, 255, ra, ALL_NODES_MAC);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.get(Mib::Icmp6InRouterAdvertisements), 1);
        assert_eq!(s.counters.total_drops(), 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn b5_announce_at_start() {
        let mut s = stack();
        let ll = s.link_local_v6();
        let frames = drain(&mut s);
        let nas: Vec<_> = frames
            .iter()
            .filter(|f| f[12..14] == [0x86, 0xdd])
            .map(|f| out(f))
            .filter(|o| o.nh == 58) // the MLD report has a hop-by-hop header
            .collect();
        assert_eq!(nas.len(), 2);
        for (o, addr) in nas.iter().zip([ll, OUR6]) {
            assert_eq!((o.src, o.dst, o.eth_dst), (addr, ALL_NODES, ALL_NODES_MAC));
            let (flags, target, tll) = na_of(o);
            assert_eq!(flags, NdiscNeighborFlags::OVERRIDE);
            assert_eq!((target, tll), (addr, Some(EthernetAddress(OUR_MAC))));
        }
    }
}
