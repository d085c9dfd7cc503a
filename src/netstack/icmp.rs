//! ICMPv4 (SPEC B.2): echo, errors with rate limiting, incoming errors
//! delivered to sockets. STUB: to be implemented.

use super::{Instant, IpRx, Limits, RxMeta, Stack};

#[derive(Debug)]
pub struct IcmpState {}

impl IcmpState {
    pub fn new(_l: &Limits) -> Self {
        IcmpState {}
    }
}

impl Stack {
    /// An ICMP message (IP payload) arrived for us.
    pub(crate) fn icmp_rcv(
        &mut self,
        _now: Instant,
        _meta: &RxMeta,
        _ip: &IpRx<'_>,
        _payload: &[u8],
    ) {
    }

    /// `icmp_send`: an ICMP error of `icmp_type`/`code` about `offending`
    /// (the received IPv4 datagram from its header). `info` is the pointer
    /// (parameter problem) or next-hop MTU (frag needed), else 0.
    pub(crate) fn icmp_send(
        &mut self,
        _now: Instant,
        _offending: &[u8],
        _icmp_type: u8,
        _code: u8,
        _info: u32,
    ) {
    }
}
