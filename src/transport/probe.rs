//! Drives the upstream health probes ([`crate::core::upstream::Prober`],
//! sans-IO) in kernel mode: one tokio task sends the due OPTIONS from the
//! listen sockets (UDP) or over the outbound connection to the target
//! (TCP), and feeds back the replies the core recognised by their Via
//! branch and the probe timeouts. The afpacket backend drives the same
//! state machine on its stack thread (`userspace.rs`).

use super::conn::ConnCache;
use super::{Ctx, send_tcp, send_udp};
use crate::config::Transport;
use crate::core::ProbeSink;
use crate::core::upstream::{ProbeReply, Prober};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Probe replies waiting for the prober (one per probe in flight at most,
/// unless forged: the rest is dropped).
const PROBE_QUEUE: usize = 1024;
/// Longest sleep when nothing is scheduled (health off never starts the task).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// A probe sink for the core and the receiver its replies come out of.
/// Never blocks: a full queue drops the reply (the probe then times out).
pub fn channel() -> (ProbeSink, mpsc::Receiver<ProbeReply>) {
    let (tx, rx) = mpsc::channel(PROBE_QUEUE);
    let sink: ProbeSink = Box::new(move |r| {
        let _ = tx.try_send(r);
    });
    (sink, rx)
}

/// The kernel backend's probe task (runs while the proxy runs).
pub async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<ProbeReply>) {
    let core = &ctx.core;
    // runs whatever the config: a reload (SIGHUP) may turn probes on
    let mut prober = Prober::new(core.upstreams(), core.now_ms());
    let mut due = Vec::new();
    let mut out = Vec::with_capacity(512);
    let mut cache = ConnCache::default();
    loop {
        let now = core.now_ms();
        prober.follow(&core.upstreams(), now);
        prober.poll(now, &mut due);
        for p in due.drain(..) {
            let sent = match core.write_probe(p, &mut out) {
                Some(dest) => {
                    let ok = match dest.transport {
                        Transport::Udp => send_udp(&ctx, &dest, &out, None).await,
                        Transport::Tcp => send_tcp(&ctx, &dest, &out, &mut cache),
                    };
                    ok.then_some(dest.transport)
                }
                None => None,
            };
            match sent {
                Some(t) => ctx.metrics.bytes_out(t, out.len()),
                None => prober.send_failed(p, now),
            }
        }
        let wait = prober
            .next_wakeup()
            .map_or(IDLE_WAIT, |t| {
                Duration::from_millis(t.saturating_sub(core.now_ms()))
            })
            .min(IDLE_WAIT);
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    prober.on_reply(r, core.now_ms());
                }
                None => return,
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
