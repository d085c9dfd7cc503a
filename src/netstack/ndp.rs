//! Neighbour discovery (RFC 4861): answer solicitations for our addresses
//! (incl. solicited-node multicast), learn from advertisements, solicit for
//! `neigh`. STUB: to be implemented.

use std::net::Ipv6Addr;

use super::{Instant, IpRx, Stack};

#[derive(Debug, Default)]
pub struct NdpState {}

impl Stack {
    /// An NDP message (the whole ICMPv6 message) arrived.
    pub(crate) fn ndisc_rcv(&mut self, _now: Instant, _ip: &IpRx<'_>, _icmp: &[u8]) {}

    /// Multicast a neighbour solicitation for `target` (called by `neigh`).
    pub(crate) fn ndisc_solicit(&mut self, _now: Instant, _target: Ipv6Addr) {}

    /// Unsolicited neighbour advertisement for our addresses (at start).
    pub(crate) fn ndisc_announce(&mut self, _now: Instant) {}
}
