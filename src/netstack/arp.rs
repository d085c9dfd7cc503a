//! ARP (RFC 826): answer requests for our IPv4 address, learn senders,
//! resolve next hops for `neigh`, announce ourselves at start. Behaviour
//! follows Linux `arp_process` with its defaults (`arp_accept=0`,
//! `arp_ignore=0`).

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

use super::{DropReason, Instant, Mib, RxMeta, Stack};

/// Ethernet header + Ethernet/IPv4 ARP packet.
const ARP_FRAME_LEN: usize = 14 + 28;

impl Stack {
    /// An ARP packet (Ethernet payload) arrived.
    ///
    /// RFC 826 "Packet Reception" as Linux `arp_process` does it:
    /// - only Ethernet/IPv4 requests and replies (else `ArpMalformed`); a
    ///   multicast/loopback sender or target address, or a non-unicast
    ///   sender MAC, is bogus (`ArpMalformed`);
    /// - target is our address: a request creates/refreshes the sender's
    ///   entry and is answered (InRequests, OutReplies); a reply refreshes
    ///   an existing (e.g. incomplete) entry only, so unsolicited replies
    ///   create nothing (InReplies); a request from 0.0.0.0 (RFC 5227
    ///   probe) is answered without learning;
    /// - target is not ours (gratuitous ARP included): refresh an existing
    ///   entry for the sender only, count `ArpNotForUs`;
    /// - a packet claiming our own address as sender is not learned.
    pub(crate) fn arp_rcv(&mut self, now: Instant, _meta: &RxMeta, pkt: &[u8]) {
        let parsed = ArpPacket::new_checked(pkt).and_then(|p| ArpRepr::parse(&p));
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: sha,
            source_protocol_addr: sip,
            target_hardware_addr: _,
            target_protocol_addr: tip,
        }) = parsed
        else {
            self.counters.drop_reason(DropReason::ArpMalformed);
            return;
        };
        let request = match operation {
            ArpOperation::Request => true,
            ArpOperation::Reply => false,
            _ => {
                self.counters.drop_reason(DropReason::ArpMalformed);
                return;
            }
        };
        if tip.is_multicast()
            || tip.is_loopback()
            || sip.is_multicast()
            || sip.is_loopback()
            || !sha.is_unicast()
        {
            self.counters.drop_reason(DropReason::ArpMalformed);
            return;
        }
        let for_us = self.is_our_v4(tip);
        if self.is_our_v4(sip) {
            // Someone else claims our address (or our own frame looped):
            // never learn it.
            self.counters.drop_reason(DropReason::ArpNotForUs);
            return;
        }
        if !for_us {
            if !sip.is_unspecified() {
                self.neigh_update(now, IpAddr::V4(sip), sha, false);
            }
            self.counters.drop_reason(DropReason::ArpNotForUs);
            return;
        }
        if request {
            self.counters.inc(Mib::ArpInRequests);
            if !sip.is_unspecified() {
                self.neigh_update(now, IpAddr::V4(sip), sha, true);
            }
            self.arp_send(ArpOperation::Reply, sha, tip, sha, sip);
        } else {
            self.counters.inc(Mib::ArpInReplies);
            if !sip.is_unspecified() {
                self.neigh_update(now, IpAddr::V4(sip), sha, false);
            }
        }
    }

    /// Broadcast a who-has for `target` (called by `neigh`). RFC 826;
    /// Linux `arp_solicit` (sender = our address, target MAC zero).
    pub(crate) fn arp_solicit(&mut self, _now: Instant, target: Ipv4Addr) {
        let Some(ours) = self.cfg.ipv4.map(|c| c.address()) else {
            return;
        };
        let zero = EthernetAddress([0; 6]);
        self.arp_send(
            ArpOperation::Request,
            EthernetAddress::BROADCAST,
            ours,
            zero,
            target,
        );
    }

    /// Gratuitous ARP for our address (at start): a broadcast request with
    /// sender and target both our address (RFC 5227 §3 announcement, as
    /// Linux sends when an address comes up).
    pub(crate) fn arp_announce(&mut self, _now: Instant) {
        let Some(ours) = self.cfg.ipv4.map(|c| c.address()) else {
            return;
        };
        let zero = EthernetAddress([0; 6]);
        self.arp_send(
            ArpOperation::Request,
            EthernetAddress::BROADCAST,
            ours,
            zero,
            ours,
        );
    }

    /// Build one ARP frame from our MAC (smoltcp `EthernetRepr` +
    /// `ArpRepr`) and queue it. Counts OutRequests / OutReplies when queued.
    fn arp_send(
        &mut self,
        op: ArpOperation,
        eth_dst: EthernetAddress,
        spa: Ipv4Addr,
        tha: EthernetAddress,
        tpa: Ipv4Addr,
    ) {
        if self.replicating {
            // a replica from another shard: learn only, never answer
            return;
        }
        let our_mac = self.cfg.mac;
        let mut f = self.alloc_frame(ARP_FRAME_LEN);
        f.resize(ARP_FRAME_LEN, 0);
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: our_mac,
            dst_addr: eth_dst,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut eth);
        let mut arp = ArpPacket::new_unchecked(eth.payload_mut());
        ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: our_mac,
            source_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        }
        .emit(&mut arp);
        if self.transmit(f).is_ok() {
            self.counters.inc(if op == ArpOperation::Request {
                Mib::ArpOutRequests
            } else {
                Mib::ArpOutReplies
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::testutil::*;
    use super::*;

    const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
    const OTHER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x07];

    /// A fresh stack with the start-up announcements drained.
    fn quiet_stack() -> Stack {
        let mut s = stack();
        drain(&mut s);
        s
    }

    /// Ethernet + ARP frame built with smoltcp.
    fn arp_frame(
        eth_dst: [u8; 6],
        op: ArpOperation,
        sha: [u8; 6],
        spa: Ipv4Addr,
        tha: [u8; 6],
        tpa: Ipv4Addr,
    ) -> Vec<u8> {
        let mut f = vec![0u8; ARP_FRAME_LEN];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: EthernetAddress(sha),
            dst_addr: EthernetAddress(eth_dst),
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut eth);
        ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(sha),
            source_protocol_addr: spa,
            target_hardware_addr: EthernetAddress(tha),
            target_protocol_addr: tpa,
        }
        .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        f
    }

    fn rx(s: &mut Stack, f: &[u8]) {
        s.receive_frame(t0(), RxMeta::HOST, f);
    }

    /// The expected bytes of an ARP frame, written out by hand (RFC 826).
    fn arp_bytes(
        eth_dst: [u8; 6],
        op: u8,
        sha: [u8; 6],
        spa: Ipv4Addr,
        tha: [u8; 6],
        tpa: Ipv4Addr,
    ) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&eth_dst);
        v.extend_from_slice(&sha);
        v.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0, op]);
        v.extend_from_slice(&sha);
        v.extend_from_slice(&spa.octets());
        v.extend_from_slice(&tha);
        v.extend_from_slice(&tpa.octets());
        v
    }

    #[test]
    fn arp_request_for_us_is_answered_and_sender_learned() {
        let mut s = quiet_stack();
        let req = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            PEER_MAC,
            PEER4,
            [0; 6],
            OUR4,
        );
        rx(&mut s, &req);
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![arp_bytes(PEER_MAC, 2, OUR_MAC, OUR4, PEER_MAC, PEER4)]
        );
        assert_eq!(
            s.neighbor(t0(), PEER4.into()),
            Some(EthernetAddress(PEER_MAC))
        );
        assert_eq!(s.counters.get(Mib::ArpInRequests), 1);
        assert_eq!(s.counters.get(Mib::ArpOutReplies), 1);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn arp_probe_from_zero_address_is_answered_without_learning() {
        let mut s = quiet_stack();
        let probe = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            PEER_MAC,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            OUR4,
        );
        rx(&mut s, &probe);
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![arp_bytes(
                PEER_MAC,
                2,
                OUR_MAC,
                OUR4,
                PEER_MAC,
                Ipv4Addr::UNSPECIFIED
            )]
        );
        assert_eq!(s.usage().neigh_entries, 0);
    }

    #[test]
    fn arp_request_not_for_us_only_refreshes_existing_entries() {
        let mut s = quiet_stack();
        let req = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            OTHER_MAC,
            OTHER4,
            [0; 6],
            PEER4,
        );
        rx(&mut s, &req);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.neighbor(t0(), OTHER4.into()), None);
        assert_eq!(s.counters.drops(DropReason::ArpNotForUs), 1);
        // A known sender with a new MAC is refreshed.
        s.neigh_update(t0(), OTHER4.into(), EthernetAddress(PEER_MAC), true);
        rx(&mut s, &req);
        assert_eq!(
            s.neighbor(t0(), OTHER4.into()),
            Some(EthernetAddress(OTHER_MAC))
        );
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn arp_gratuitous_refreshes_existing_entry_only() {
        let mut s = quiet_stack();
        let grat = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            OTHER_MAC,
            OTHER4,
            [0; 6],
            OTHER4,
        );
        rx(&mut s, &grat);
        assert_eq!(s.neighbor(t0(), OTHER4.into()), None);
        s.neigh_update(t0(), OTHER4.into(), EthernetAddress(PEER_MAC), true);
        rx(&mut s, &grat);
        assert_eq!(
            s.neighbor(t0(), OTHER4.into()),
            Some(EthernetAddress(OTHER_MAC))
        );
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn arp_unsolicited_reply_creates_no_entry() {
        let mut s = quiet_stack();
        let rep = arp_frame(
            OUR_MAC,
            ArpOperation::Reply,
            OTHER_MAC,
            OTHER4,
            OUR_MAC,
            OUR4,
        );
        rx(&mut s, &rep);
        assert_eq!(s.neighbor(t0(), OTHER4.into()), None);
        assert_eq!(s.counters.get(Mib::ArpInReplies), 1);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn arp_solicit_on_output_then_queued_datagram_leaves_on_reply() {
        let mut s = quiet_stack();
        let h = s
            .udp_bind(SocketAddr::new(OUR4.into(), 5060))
            .expect("bind");
        s.udp_send_to(t0(), h, SocketAddr::new(PEER4.into(), 5070), b"REGISTER")
            .expect("queued");
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![arp_bytes([0xff; 6], 1, OUR_MAC, OUR4, [0; 6], PEER4)]
        );
        assert_eq!(s.counters.get(Mib::ArpOutRequests), 2); // + the announcement
        let rep = arp_frame(OUR_MAC, ArpOperation::Reply, PEER_MAC, PEER4, OUR_MAC, OUR4);
        rx(&mut s, &rep);
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..6], &PEER_MAC);
        assert_eq!(&out[0][6..12], &OUR_MAC);
        assert_eq!(&out[0][12..14], &[0x08, 0x00]);
        assert!(out[0].ends_with(b"REGISTER"));
        assert_eq!(
            s.neighbor(t0(), PEER4.into()),
            Some(EthernetAddress(PEER_MAC))
        );
        assert_eq!(s.counters.get(Mib::ArpInReplies), 1);
    }

    #[test]
    fn arp_announce_at_start_is_gratuitous() {
        let mut s = stack();
        let arps: Vec<_> = drain(&mut s)
            .into_iter()
            .filter(|f| f[12..14] == [0x08, 0x06])
            .collect();
        assert_eq!(
            arps,
            vec![arp_bytes([0xff; 6], 1, OUR_MAC, OUR4, [0; 6], OUR4)]
        );
        // No IPv4 address: nothing to announce.
        let mut c = config();
        c.ipv4 = None;
        let mut s = Stack::new(c, t0());
        assert!(drain(&mut s).iter().all(|f| f[12..14] != [0x08, 0x06]));
    }

    #[test]
    fn arp_malformed_is_dropped() {
        let mut s = quiet_stack();
        let good = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            PEER_MAC,
            PEER4,
            [0; 6],
            OUR4,
        );
        // Truncated.
        rx(&mut s, &good[..30]);
        // Not Ethernet hardware.
        let mut f = good.clone();
        f[15] = 6;
        rx(&mut s, &f);
        // Unknown operation.
        let mut f = good.clone();
        f[21] = 9;
        rx(&mut s, &f);
        // Multicast sender MAC.
        let bad = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            [0x01, 0, 0x5e, 0, 0, 1],
            PEER4,
            [0; 6],
            OUR4,
        );
        rx(&mut s, &bad);
        // Loopback sender address.
        let bad = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            PEER_MAC,
            Ipv4Addr::LOCALHOST,
            [0; 6],
            OUR4,
        );
        rx(&mut s, &bad);
        assert_eq!(s.counters.drops(DropReason::ArpMalformed), 5);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.usage().neigh_entries, 0);
    }

    #[test]
    fn arp_claiming_our_address_is_not_learned() {
        let mut s = quiet_stack();
        let f = arp_frame(
            [0xff; 6],
            ArpOperation::Request,
            OTHER_MAC,
            OUR4,
            [0; 6],
            OUR4,
        );
        rx(&mut s, &f);
        assert_eq!(s.neighbor(t0(), OUR4.into()), None);
        assert!(drain(&mut s).is_empty());
    }
}
