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

#[derive(Debug, Default)]
pub struct NdpState {}

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
