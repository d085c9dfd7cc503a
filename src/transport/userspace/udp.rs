//! UDP on the userspace stack: the listen sockets' receive path (the
//! datagram receive body is shared with kernel mode).

use super::{App, BATCH};
use crate::config::Transport;
use crate::core::{Outcome, RcvInfo};
use crate::netstack::{Instant, Stack, UdpHandle};
use std::time::Instant as StdInstant;

impl App {
    pub(super) fn readable(&mut self, s: &mut Stack, now: Instant, h: UdpHandle) {
        let Some(local) = self.handles.iter().position(|(x, _)| *x == h) else {
            return;
        };
        for _ in 0..BATCH {
            let Some(d) = s.udp_recv_from(h) else {
                return;
            };
            let received_at = StdInstant::now();
            self.metrics.bytes_in(Transport::Udp, d.data.len());
            let rcv = RcvInfo {
                src: d.src,
                local,
                transport: Transport::Udp,
                conn: None,
                outbound: false,
            };
            let outcome = self.core.receive_datagram(&d.data, &rcv, &mut self.sc);
            s.recycle(d.data);
            match outcome {
                Outcome::Txn => {
                    let out = std::mem::take(&mut self.sc.txn);
                    self.deliver_txn(s, now, &out, received_at);
                    self.sc.txn = out;
                }
                Outcome::Send { dest, kind } => {
                    let out = std::mem::take(&mut self.sc.out);
                    self.deliver(s, now, &dest, kind, &out, received_at, false);
                    self.sc.out = out;
                }
                Outcome::Resolve { dest, kind } => self.resolve(s, now, dest, kind, received_at),
                _ => {}
            }
        }
        // more queued: come back after other sockets had their turn
        if s.udp_pending(h) {
            s.requeue_readable(h);
        }
    }
}
