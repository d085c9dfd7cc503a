//! Drives the upstream health probes ([`crate::core::upstream::Prober`],
//! sans-IO) in kernel mode: one tokio task sends the due OPTIONS and feeds
//! back the replies the core recognised by their Via branch, ICMP errors
//! and the clock. The afpacket backend drives the same state machine on
//! its stack thread (`userspace.rs`).
//!
//! UDP probes leave from a socket connected to the target, bound to the
//! listen socket's IP, so the kernel reports ICMP port / host unreachable
//! for them (ECONNREFUSED and friends on that socket; the listen sockets
//! are not connected and never see these). The Via names the listen
//! socket, where the reply arrives and the core consumes it; a reply sent
//! to the probe's source port instead (servers forcing rport) goes through
//! the core the same way. TCP probes use the connection to the target.

use super::Ctx;
use super::conn::ConnCache;
use super::egress::{Egress, SendResult, rcv_udp};
use super::kernel::KernelEgress;
use crate::config::Transport;
use crate::core::upstream::{ProbeReply, Prober, TargetId};
use crate::core::{ProbeSink, Scratch};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Probe replies waiting for the prober (one per probe in flight at most,
/// unless forged: the rest is dropped).
const PROBE_QUEUE: usize = 1024;
/// Longest wait for a probe socket to take a datagram.
const SEND_WAIT: Duration = Duration::from_millis(100);
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

/// Is this error an ICMP unreachable reported on a connected UDP socket?
fn unreachable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
    )
}

/// A UDP socket connected to `target` from `ip`, with a task reading it:
/// data goes through the core (a probe reply is consumed there), an ICMP
/// error is reported on `icmp`.
async fn probe_socket(
    ctx: &Arc<Ctx>,
    ip: IpAddr,
    local: usize,
    target: SocketAddr,
    icmp: mpsc::Sender<SocketAddr>,
) -> std::io::Result<Arc<UdpSocket>> {
    let s = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
    s.connect(target).await?;
    let (r, ctx) = (s.clone(), ctx.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        let mut sc = Scratch::new();
        loop {
            match r.recv(&mut buf).await {
                Ok(n) => {
                    let rcv = rcv_udp(target, local);
                    ctx.metrics.bytes_in(Transport::Udp, n);
                    let _ = ctx.core.receive_datagram(&buf[..n], &rcv, &mut sc);
                }
                Err(e) if unreachable(&e) => {
                    tracing::debug!(%target, "probe socket: {e}");
                    if icmp.send(target).await.is_err() {
                        return;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok(s)
}

/// The kernel backend's probe task (runs while the proxy runs).
pub async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<ProbeReply>) {
    let core = &ctx.core;
    // runs whatever the config: a reload (SIGHUP) may turn probes on
    let mut prober = Prober::new(core.upstreams(), core.now_ms());
    let (icmp_tx, mut icmp_rx) = mpsc::channel::<SocketAddr>(PROBE_QUEUE);
    let mut socks: HashMap<TargetId, Arc<UdpSocket>> = HashMap::new();
    let mut due = Vec::new();
    let mut out = Vec::with_capacity(512);
    let mut cache = ConnCache::default();
    loop {
        let now = core.now_ms();
        if prober.follow(&core.upstreams(), now) {
            // a reload: target ids of the old sets are gone
            socks.clear();
        }
        // a draining proxy sends no probes (their replies would keep UDP
        // from going quiet, and it takes no new calls anyway)
        if !ctx.metrics.readiness().is_draining() {
            prober.poll(now, &mut due);
        }
        for p in due.drain(..) {
            let Some(dest) = core.write_probe(p, &mut out) else {
                prober.send_failed(p, now);
                continue;
            };
            let ok = match dest.transport {
                // the backend's TCP send (not `Step::deliver`: a probe is
                // not forwarded traffic, its failure is the prober's)
                Transport::Tcp => {
                    let mut eg = KernelEgress {
                        ctx: &ctx,
                        own_udp: None,
                        cache: &mut cache,
                        cork: None,
                    };
                    eg.send_tcp(&dest, &out) == SendResult::Sent
                }
                Transport::Udp => {
                    if let Entry::Vacant(slot) = socks.entry(p.target) {
                        let ip = ctx
                            .udp
                            .get(dest.local)
                            .and_then(|s| s.as_ref()?.local_addr().ok())
                            .map(|a| a.ip());
                        let made = match ip {
                            Some(ip) => {
                                probe_socket(&ctx, ip, dest.local, dest.addr, icmp_tx.clone()).await
                            }
                            None => Err(ErrorKind::AddrNotAvailable.into()),
                        };
                        match made {
                            Ok(s) => {
                                slot.insert(s);
                            }
                            Err(e) => tracing::debug!(target = %dest.addr, "probe socket: {e}"),
                        }
                    }
                    let sent = match socks.get(&p.target) {
                        // a fresh tokio socket is not known writable yet: await
                        Some(s) => tokio::time::timeout(SEND_WAIT, s.send(&out)).await.ok(),
                        None => None,
                    };
                    match sent {
                        Some(Ok(_)) => true,
                        // an ICMP error of an earlier probe, reported now
                        Some(Err(e)) if unreachable(&e) => {
                            tracing::debug!(target = %dest.addr, "probe: {e}");
                            prober.on_unreachable(dest.addr, Some(Transport::Udp), now);
                            continue;
                        }
                        _ => false,
                    }
                }
            };
            if ok {
                ctx.metrics.bytes_out(dest.transport, out.len());
            } else {
                prober.send_failed(p, now);
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
            a = icmp_rx.recv() => {
                if let Some(a) = a {
                    prober.on_unreachable(a, Some(Transport::Udp), core.now_ms());
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
