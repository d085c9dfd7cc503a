//! The [`Egress`] of the stack thread: UDP from the listen sockets, TCP on
//! the stack's connections (opening one when needed), host names resolved
//! by the resolver thread. The send and dispatch rules themselves are the
//! shared [`crate::transport::egress::Step`]'s (one copy for both modes).

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::Instant as StdInstant;

use super::App;
use super::tcp::{Ctx, TcpSide};
use crate::core::{Core, Dest, DropReason, Scratch};
use crate::metrics::Metrics;
use crate::netstack::{Instant, Stack, UdpHandle};
use crate::transport::egress::{Egress, Pending, SendResult, Step, pick_local};

/// Everything a send from the stack thread touches, borrowed for one step.
pub(super) struct StackEgress<'a> {
    pub s: &'a mut Stack,
    pub now: Instant,
    pub core: &'a Core,
    pub metrics: &'a Metrics,
    /// Per listen index: the UDP socket (None for a `tcp:` listen).
    pub udp: &'a [Option<UdpHandle>],
    /// Per listen index: its address when it is a UDP one ([`pick_local`]).
    pub udp_locals: &'a [Option<SocketAddr>],
    /// Per listen index: its address (outbound TCP leaves from its IP).
    pub locals: &'a [SocketAddr],
    pub tcp: &'a mut TcpSide,
    /// To the resolver thread, tagged with this shard (the answer comes back here).
    pub req_tx: &'a mpsc::SyncSender<(usize, Pending)>,
    pub shard: usize,
}

impl Egress for StackEgress<'_> {
    fn send_udp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
        let Some(h) = pick_local(self.udp_locals, dest).and_then(|i| self.udp[i]) else {
            return SendResult::Failed;
        };
        match self.s.udp_send_to(self.now, h, dest.addr, out) {
            Ok(_) => SendResult::Sent,
            Err(crate::netstack::StackError::NoBufferSpace) => SendResult::WouldBlock,
            Err(_) => SendResult::Failed,
        }
    }

    fn send_tcp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
        let cx = Ctx {
            core: self.core,
            metrics: self.metrics,
        };
        self.tcp
            .send_tcp(self.s, &cx, self.now, self.locals, dest, out)
    }

    fn resolve_later(&mut self, p: Pending) {
        if self.req_tx.try_send((self.shard, p)).is_err() {
            self.metrics.dropped(DropReason::NoRoute);
        }
    }
}

/// `App` split for one step: the shared send rules ([`Step`]), the stack
/// thread's [`StackEgress`], and the parts of `App` neither borrows.
pub(super) struct StepParts<'a> {
    pub step: Step<'a>,
    pub eg: StackEgress<'a>,
    pub sc: &'a mut Scratch,
    pub probes: &'a mut Option<super::Probes>,
}

impl App {
    /// Borrow what a step needs: the [`Step`] and the [`StackEgress`] over
    /// `s` at `now`, with the scratch and the probes still free.
    pub(super) fn split<'a>(&'a mut self, s: &'a mut Stack, now: Instant) -> StepParts<'a> {
        let App {
            core,
            metrics,
            net,
            sc,
            dns,
            req_tx,
            probes,
            shard,
            ..
        } = self;
        let net: &'a mut super::Net = net;
        StepParts {
            step: Step { core, metrics, dns },
            eg: StackEgress {
                s,
                now,
                core,
                metrics,
                udp: &net.udp,
                udp_locals: &net.udp_locals,
                locals: &net.locals,
                tcp: &mut net.tcp,
                req_tx,
                shard: shard.index(),
            },
            sc,
            probes,
        }
    }

    /// A host name came back from the resolver thread: cache it and send.
    pub(super) fn resolved(&mut self, s: &mut Stack, now: Instant, p: Pending, ip: Option<IpAddr>) {
        let StepParts { step, mut eg, .. } = self.split(s, now);
        step.deliver_resolved(&mut eg, &p, ip);
    }

    /// Stateful mode: the transaction layer's timer sends.
    pub(super) fn deliver_txn(
        &mut self,
        s: &mut Stack,
        now: Instant,
        out: &crate::core::transaction::Out,
        at: StdInstant,
    ) {
        let StepParts { step, mut eg, .. } = self.split(s, now);
        step.deliver_txn(&mut eg, out, at);
    }

    /// Stateful mode: the transactions waiting on outbound connections that
    /// failed this round fail over now (not at Timer B / F).
    pub(super) fn fail_over_failed_connections(&mut self, s: &mut Stack, now: Instant) {
        let failed = self.net.tcp.take_failed_outbound();
        if failed.is_empty() || self.core.stateful().is_none() {
            return;
        }
        let StepParts { step, mut eg, .. } = self.split(s, now);
        for (peer, why) in failed {
            crate::transport::tcp::txn_transport_failed(&step, &mut eg, peer, true, why);
        }
    }
}
