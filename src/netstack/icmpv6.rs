//! ICMPv6 (RFC 4443): echo, errors with rate limiting, incoming errors
//! delivered to sockets; NDP messages go to `ndp`. STUB: to be implemented.

use super::{Instant, IpRx, Limits, RxMeta, Stack};

#[derive(Debug)]
pub struct Icmpv6State {}

impl Icmpv6State {
    pub fn new(_l: &Limits) -> Self {
        Icmpv6State {}
    }
}

impl Stack {
    /// An ICMPv6 message (upper-layer payload) arrived for us.
    pub(crate) fn icmpv6_rcv(
        &mut self,
        _now: Instant,
        _meta: &RxMeta,
        _ip: &IpRx<'_>,
        _payload: &[u8],
    ) {
    }

    /// An ICMPv6 error of `icmp_type`/`code` about `offending` (the received
    /// IPv6 packet from its header). `info`: pointer (parameter problem),
    /// MTU (packet too big), else 0.
    pub(crate) fn icmpv6_send(
        &mut self,
        _now: Instant,
        _offending: &[u8],
        _icmp_type: u8,
        _code: u8,
        _info: u32,
    ) {
    }
}
