//! ARP (RFC 826): answer requests for our IPv4 address, learn senders,
//! resolve next hops for `neigh`, announce ourselves at start.
//! STUB: to be implemented.

use std::net::Ipv4Addr;

use super::{Instant, RxMeta, Stack};

/// ARP-specific state (the cache itself is `neigh::NeighCache`).
#[derive(Debug, Default)]
pub struct ArpState {}

impl Stack {
    /// An ARP packet (Ethernet payload) arrived.
    pub(crate) fn arp_rcv(&mut self, _now: Instant, _meta: &RxMeta, _pkt: &[u8]) {}

    /// Broadcast a who-has for `target` (called by `neigh`).
    pub(crate) fn arp_solicit(&mut self, _now: Instant, _target: Ipv4Addr) {}

    /// Gratuitous ARP for our address (at start).
    pub(crate) fn arp_announce(&mut self, _now: Instant) {}
}
