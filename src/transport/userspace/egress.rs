//! Sending from the stack thread: UDP, resolve-on-miss via the resolver
//! thread, the transaction layer's sends.

use super::{App, Pending};
use crate::config::Transport;
use crate::core::{Dest, DropReason, SendKind};
use crate::netstack::{Instant, Stack};
use crate::transport::{count_send, resolved_to_self};
use std::net::IpAddr;
use std::time::Instant as StdInstant;

impl App {
    pub(super) fn resolve(
        &mut self,
        s: &mut Stack,
        now: Instant,
        dest: Dest,
        kind: SendKind,
        at: StdInstant,
    ) {
        let host = self.sc.resolve.clone();
        if let Some(ip) = self.dns.get(&host) {
            let mut d = dest;
            d.addr.set_ip(ip);
            let out = std::mem::take(&mut self.sc.out);
            self.deliver(s, now, &d, kind, &out, at, true);
            self.sc.out = out;
            return;
        }
        let p = Pending {
            host,
            dest,
            kind,
            out: self.sc.out.clone(),
            received_at: at,
        };
        if self.req_tx.try_send(p).is_err() {
            self.metrics.dropped(DropReason::NoRoute);
        }
    }

    pub(super) fn resolved(&mut self, s: &mut Stack, now: Instant, p: Pending, ip: Option<IpAddr>) {
        let Some(ip) = ip else {
            tracing::debug!(host = %p.host, "next hop does not resolve");
            self.metrics.dropped(DropReason::NoRoute);
            return;
        };
        self.dns.put(&p.host, ip);
        let mut d = p.dest;
        d.addr.set_ip(ip);
        self.deliver(s, now, &d, p.kind, &p.out, p.received_at, true);
    }

    /// Send the transaction layer's messages; a try that cannot be sent
    /// fails over at once (bounded: each round uses up a try).
    pub(super) fn deliver_txn(
        &mut self,
        s: &mut Stack,
        now: Instant,
        out: &crate::core::transaction::Out,
        at: StdInstant,
    ) {
        let mut failed = Vec::new();
        for m in &out.sends {
            if !self.deliver(s, now, &m.dest, m.kind, out.bytes(m), at, false)
                && let Some(r) = m.txn
            {
                failed.push(r);
            }
        }
        let mut next = crate::core::transaction::Out::default();
        for _ in 0..crate::core::transaction::MAX_TRIES {
            if failed.is_empty() {
                break;
            }
            next.clear();
            for r in failed.drain(..) {
                self.core.transaction_send_failed(r, &mut next);
            }
            for m in &next.sends {
                if !self.deliver(s, now, &m.dest, m.kind, next.bytes(m), at, false)
                    && let Some(r) = m.txn
                {
                    failed.push(r);
                }
            }
        }
    }

    /// Send `out` to `dest` over the stack and count it (the kernel
    /// backend's `deliver`, for one UDP-only stack thread). `false`: not sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &mut self,
        s: &mut Stack,
        now: Instant,
        dest: &Dest,
        kind: SendKind,
        out: &[u8],
        received_at: StdInstant,
        resolved: bool,
    ) -> bool {
        if resolved_to_self(&self.core, &self.metrics, dest, resolved) {
            return false;
        }
        if dest.transport != Transport::Udp {
            tracing::debug!(dest = %dest.addr, "TCP next hop: not available on the userspace stack yet");
            count_send(&self.metrics, dest, kind, out.len(), received_at, false);
            return false;
        }
        let family = dest.addr.is_ipv4();
        let h = match self.handles.get(dest.local) {
            Some((h, a)) if a.is_ipv4() == family => Some(*h),
            _ => self
                .handles
                .iter()
                .find(|(_, a)| a.is_ipv4() == family)
                .map(|(h, _)| *h),
        };
        let ok = h.is_some_and(|h| s.udp_send_to(now, h, dest.addr, out).is_ok());
        count_send(&self.metrics, dest, kind, out.len(), received_at, ok);
        ok
    }
}
