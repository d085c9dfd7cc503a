//! IPv6 receive (SPEC B.5) and output. STUB: to be implemented.

use std::net::Ipv6Addr;

use super::{Instant, RxMeta, Stack, StackError};

#[derive(Debug, Default)]
pub struct Ipv6State {}

impl Stack {
    /// `ipv6_rcv`: an IPv6 packet (Ethernet payload, may carry padding).
    pub(crate) fn ipv6_rcv(
        &mut self,
        _now: Instant,
        _meta: &RxMeta,
        _pkt: &[u8],
        _link_mcast: bool,
    ) {
    }

    /// Send an IPv6 packet from `src` to `dst` with `l4_len` bytes of
    /// `next_header` written by `fill`; adds a fragment header and fragments
    /// when larger than the MTU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ip6_output(
        &mut self,
        _now: Instant,
        _src: Ipv6Addr,
        dst: Ipv6Addr,
        _next_header: u8,
        _hop_limit: Option<u8>,
        _l4_len: usize,
        _fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StackError> {
        Err(StackError::NetUnreachable(dst.into()))
    }

    /// Expire incomplete reassemblies (Time Exceeded code 1 when the first
    /// fragment had arrived).
    pub(crate) fn frag6_expire(&mut self, _now: Instant) {}
}
