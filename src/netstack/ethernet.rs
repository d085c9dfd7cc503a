//! Ethernet II receive: classify by destination MAC, drop what is not for us
//! (PACKET_OTHERHOST, SPEC B.1 / B.5), dispatch by EtherType.

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IPV6_LINK_LOCAL_ALL_NODES};

use super::{
    DropReason, EthernetAddress, Instant, Mib, PacketType, RxMeta, Stack, multicast_mac_v6,
};

impl Stack {
    /// `eth_rcv`: one frame from the device. The stack may own a MAC other
    /// than the interface's, so "for us" is decided here from the
    /// destination MAC: ours, broadcast, or an IPv6 multicast group we are
    /// in (33:33:…). Everything else is OTHERHOST and dropped uncounted by
    /// the IP MIB (Linux drops it before `ip_rcv`'s InReceives).
    pub(crate) fn eth_rcv(&mut self, now: Instant, meta: RxMeta, frame: &[u8]) {
        self.counters.inc(Mib::LinkInFrames);
        if meta.pkt_type == PacketType::Outgoing {
            self.counters.drop_reason(DropReason::EthOutgoing);
            return;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.drop_reason(DropReason::EthTruncated);
            return;
        };
        let dst = eth.dst_addr();
        let bcast = dst.is_broadcast();
        let mcast = !bcast && dst.is_multicast();
        if !(dst == self.cfg.mac || bcast || (mcast && self.mac_multicast_member(dst.0))) {
            self.counters.drop_reason(DropReason::EthOtherHost);
            return;
        }
        let payload = eth.payload();
        match eth.ethertype() {
            EthernetProtocol::Ipv4 => self.ip_rcv(now, &meta, payload, bcast || mcast),
            EthernetProtocol::Ipv6 => self.ipv6_rcv(now, &meta, payload, bcast || mcast),
            EthernetProtocol::Arp => self.arp_rcv(now, &meta, payload),
            _ => self.counters.drop_reason(DropReason::EthUnknownType),
        }
    }

    /// Multicast MACs we accept: IPv6 all-nodes and our solicited-node
    /// groups (33:33:ff:xx:xx:xx). IPv4 multicast is not joined.
    fn mac_multicast_member(&self, m: [u8; 6]) -> bool {
        let m = EthernetAddress(m);
        let (g, n) = self.solicited_groups();
        m == multicast_mac_v6(IPV6_LINK_LOCAL_ALL_NODES)
            || g[..n].iter().any(|&a| multicast_mac_v6(a) == m)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn b1_otherhost_frame_is_dropped_before_ip() {
        let mut s = ready_stack();
        let f = udp4_frame([0x02, 0, 0, 0, 0, 0x99], PEER4, OUR4, 1000, 7, b"x");
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::EthOtherHost), 1);
        assert_eq!(s.counters.get(Mib::IpInReceives), 0);
        assert!(s.pop_tx().is_none());
    }

    #[test]
    fn outgoing_frames_are_ignored() {
        let mut s = stack();
        let f = udp4_frame(OUR_MAC, PEER4, OUR4, 1000, 7, b"x");
        let meta = RxMeta {
            pkt_type: PacketType::Outgoing,
            ..RxMeta::HOST
        };
        s.receive_frame(t0(), meta, &f);
        assert_eq!(s.counters.drops(DropReason::EthOutgoing), 1);
        assert_eq!(s.counters.get(Mib::IpInReceives), 0);
    }

    #[test]
    fn runt_frame_is_counted() {
        let mut s = stack();
        s.receive_frame(t0(), RxMeta::HOST, &[0u8; 10]);
        assert_eq!(s.counters.drops(DropReason::EthTruncated), 1);
    }
}
