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

/// ARP-specific state (the cache itself is `neigh::NeighCache`).
#[derive(Debug, Default)]
pub struct ArpState {}

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
