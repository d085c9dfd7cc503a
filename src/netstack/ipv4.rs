//! IPv4 receive (SPEC B.1) and output. STUB: to be implemented.

use std::net::Ipv4Addr;

use super::{Instant, RxMeta, Stack, StackError};

#[derive(Debug, Default)]
pub struct Ipv4State {}

impl Stack {
    /// `ip_rcv`: an IPv4 packet (Ethernet payload, may carry link padding).
    /// `link_bcast` is true when the frame went to the Ethernet broadcast or
    /// a multicast MAC.
    pub(crate) fn ip_rcv(&mut self, _now: Instant, _meta: &RxMeta, _pkt: &[u8], _link_bcast: bool) {
    }

    /// Send an IPv4 datagram from `src` (one of ours) to `dst` carrying
    /// `l4_len` bytes of protocol `proto`, written by `fill`. Fragments when
    /// larger than the MTU, routes (on-link or gateway), resolves the next hop.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ip_output(
        &mut self,
        _now: Instant,
        _src: Ipv4Addr,
        dst: Ipv4Addr,
        _proto: u8,
        _ttl: Option<u8>,
        _l4_len: usize,
        _fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        Err(StackError::NetUnreachable(dst.into()))
    }

    /// Expire incomplete reassemblies (ICMP Time Exceeded code 1 when the
    /// first fragment had arrived).
    pub(crate) fn frag4_expire(&mut self, _now: Instant) {}
}
