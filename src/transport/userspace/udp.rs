//! UDP on the userspace stack: the listen sockets' receive path. The
//! datagram receive body (bytes in, RcvInfo, the core, dispatch) is the
//! shared [`crate::transport::egress::Step::receive_datagram`].

use super::egress::StepParts;
use super::{App, BATCH};
use crate::netstack::{Instant, Stack, UdpHandle};
use std::time::Instant as StdInstant;

impl App {
    /// `UdpReadable`: up to [`BATCH`] datagrams, then other sockets get a turn.
    pub(super) fn readable(&mut self, s: &mut Stack, now: Instant, h: UdpHandle) {
        let Some(local) = self.net.udp.iter().position(|x| *x == Some(h)) else {
            return;
        };
        for _ in 0..BATCH {
            let Some(d) = s.udp_recv_from(h) else {
                return;
            };
            let received_at = StdInstant::now();
            let StepParts {
                step, mut eg, sc, ..
            } = self.split(s, now);
            step.receive_datagram(&mut eg, &d.data, d.src, local, sc, received_at);
            s.recycle(d.data);
        }
        // more queued: come back after other sockets had their turn
        if s.udp_pending(h) {
            s.requeue_readable(h);
        }
    }
}
