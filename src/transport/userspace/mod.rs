//! The userspace backend (`stack.mode = "afpacket"`): SIP over UDP and TCP
//! on the embedded stack ([`crate::netstack`]). Each stack shard
//! (`stack.workers`, `shard.rs`) is one thread that runs its stack to
//! completion — frame in → IP → UDP/TCP → reader loop → `receive_msg` →
//! forward → frame out — with no channel hop on the hot path (DESIGN.md);
//! only sends for another shard's connection and copies of ARP / NDP /
//! ICMP-error frames cross to another shard, through its mailbox.
//! The main thread keeps a small tokio runtime for the signal handler, the
//! drain and the `/metrics` endpoint (a kernel socket: the management plane).
//!
//! - `udp.rs`: the listen sockets' receive path;
//! - `tcp.rs`: listeners, accept, outbound connect, `handle_io` /
//!   `read_req` over the shared [`crate::transport::stream::StreamState`]
//!   and `receive_tcp_msg`, `release_conn` (RST / FIN), deadlines;
//! - `egress.rs`: the [`crate::transport::egress::Egress`] of the stack thread;
//! - `shard.rs`: the shards: fanout set-up, mailboxes, handoff, replicas;
//! - `timers.rs`: the per-connection deadline heap.
//!
//! Host-name next hops are resolved off the stack thread by one resolver
//! thread (the system resolver, whatever interface it uses), cached for
//! [`super::DNS_TTL`]; the message waits for the answer in a bounded queue.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context as _;

mod egress;
mod shard;
mod tcp;
mod timers;
mod udp;

pub use tcp::StackIo;

use super::conn::ConnTable;
use super::egress::{DnsCache, Egress, Pending, SendResult, pick_addr};
use super::{Hooks, lifecycle};
use crate::config::{Config, Transport};
use crate::core::upstream::{Millis, ProbeDue, ProbeReply, Prober};
use crate::core::{Core, Scratch};
use crate::metrics::Metrics;
use crate::netstack::device::afpacket::{AfPacket, kernel_addresses};
use crate::netstack::{Instant, SocketErrorKind, SocketEvent, Stack, UdpHandle, driver};

/// Datagrams handled per readable event before other sockets get a turn.
const BATCH: usize = 64;
/// Messages waiting for a host name to resolve.
const RESOLVE_QUEUE: usize = 256;

/// Run the proxy on the embedded stack until SIGINT/SIGTERM (after a drain
/// of the UDP exchanges); SIGHUP reloads.
pub fn run(cfg: Config, hooks: Hooks, opts: super::RunOpts) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let custom_nosip = hooks.nosip.is_some();
    let (probe_sink, probe_rx) = super::probe::channel();
    let core =
        Arc::new(super::build_core(&cfg, hooks, metrics.clone())?.with_probe_sink(probe_sink));
    let st = &cfg.stack;
    let dev_opts = st.afpacket_options();
    let first = AfPacket::open_with(&st.interface, &dev_opts)
        .with_context(|| format!("stack.interface = {:?}", st.interface))?;
    match kernel_addresses(&st.interface) {
        Ok(addrs) => {
            for a in addrs.into_iter().filter(|a| st.owns(*a)) {
                tracing::warn!(
                    interface = %st.interface, address = %a,
                    "the kernel also owns this stack address on the interface: it would answer too (RSTs, ICMP errors); remove it from the kernel"
                );
            }
        }
        Err(e) => tracing::debug!("cannot list the interface's kernel addresses: {e}"),
    }
    let (mut devs, fanout) = shard::open_shards(first, &st.interface, &dev_opts, st.shards());
    let rx_mode = devs[0].rx_mode();
    // Checksum offload on every shard or on none (each shard's stack
    // follows its own device: `shard::stack_config`).
    let tx_csum_offload = devs.iter().all(AfPacket::tx_csum_offload);
    if !tx_csum_offload {
        devs.iter_mut().for_each(AfPacket::disable_tx_csum_offload);
    }
    let n = devs.len();
    let limits = lifecycle::table_limits(&cfg.tcp);
    let mut built = Vec::with_capacity(n);
    for (k, dev) in devs.into_iter().enumerate() {
        let ncfg = shard::stack_config(st, &dev, k, n);
        let mut stack = Stack::new(ncfg, driver::now());
        let conns = Arc::new(ConnTable::<StackIo>::for_shard(
            shard::split_limits(limits, n),
            k,
            n,
        ));
        let mut net = Net {
            udp: Vec::new(),
            udp_locals: Vec::new(),
            locals: cfg.listen.iter().map(|l| l.addr).collect(),
            tcp: tcp::TcpSide::new(conns.clone(), st.tcp_release),
        };
        for (i, l) in cfg.listen.iter().enumerate() {
            match l.transport {
                Transport::Udp => {
                    let h = stack
                        .udp_bind(l.addr)
                        .with_context(|| format!("listen udp:{} on the userspace stack", l.addr))?;
                    net.udp.push(Some(h));
                    net.udp_locals.push(Some(l.addr));
                }
                Transport::Tcp => {
                    net.tcp
                        .listen(&mut stack, l.addr, i)
                        .with_context(|| format!("listen tcp:{} on the userspace stack", l.addr))?;
                    net.udp.push(None);
                    net.udp_locals.push(None);
                }
            }
        }
        built.push((dev, stack, net, conns));
    }
    let (peers, inboxes) = shard::mailboxes(n)?;
    metrics.register_shards(
        built
            .iter()
            .zip(peers.iter())
            .map(|((_, stack, _, conns), p)| shard::source(stack, conns, p))
            .collect(),
    )?;
    tracing::info!(
        interface = %st.interface,
        mac = %built[0].1.config().mac,
        ipv4 = ?st.ipv4.map(|(a, p)| format!("{a}/{p}")),
        ipv6 = ?st.ipv6.map(|(a, p)| format!("{a}/{p}")),
        listen = ?super::listen_specs(&cfg),
        upstreams = ?super::upstream_uris(&cfg),
        tcp_release = st.tcp_release.as_str(),
        shards = n,
        rx = rx_mode,
        busy_poll_us = st.busy_poll_us,
        tx_csum_offload,
        fanout = fanout.map_or_else(|| "none".to_string(), |g| format!("group {g}")),
        "sipedge running on the userspace stack (afpacket)"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (req_tx, req_rx) = mpsc::sync_channel::<(usize, Pending)>(RESOLVE_QUEUE);
    let mut answer_txs = Vec::with_capacity(n);
    let mut answer_rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<(Pending, Option<IpAddr>)>();
        answer_txs.push(tx);
        answer_rxs.push(rx);
    }
    let resolver = {
        let peers = peers.clone();
        std::thread::Builder::new()
            .name("sipedge-resolve".into())
            .spawn(move || resolver_loop(req_rx, answer_txs, peers))?
    };
    let tables: Vec<Arc<ConnTable<StackIo>>> = built.iter().map(|b| b.3.clone()).collect();
    let mut probe_rx = Some(probe_rx);
    let mut threads = Vec::with_capacity(n);
    for (k, ((mut dev, mut stack, net, _), (inbox, res_rx))) in built
        .into_iter()
        .zip(inboxes.into_iter().zip(answer_rxs))
        .enumerate()
    {
        let stop = stop.clone();
        let stack_core = core.clone();
        let metrics = metrics.clone();
        let peers = peers.clone();
        let shard_tables: Arc<[Arc<ConnTable<StackIo>>]> = tables.clone().into();
        let req_tx = req_tx.clone();
        // health probes: shard 0 only
        let probe_rx = if k == 0 { probe_rx.take() } else { None };
        let busy_poll_us = cfg.stack.busy_poll_us;
        let t = std::thread::Builder::new()
            .name(format!("sipedge-stack-{k}"))
            .spawn(move || -> std::io::Result<()> {
                let probes = probe_rx.map(|rx| {
                    let prober = Prober::new(stack_core.upstreams(), stack_core.now_ms());
                    Probes {
                        next: prober.active().then_some(0),
                        prober,
                        rx,
                        due: Vec::new(),
                        out: Vec::with_capacity(512),
                    }
                });
                let wake_fd = inbox.wake_fd();
                let mut app = App {
                    core: stack_core,
                    metrics,
                    net,
                    sc: Scratch::new(),
                    dns: DnsCache::default(),
                    req_tx,
                    res_rx,
                    txn_timers: Default::default(),
                    probes,
                    shard: shard::Shard::new(k, peers, shard_tables, inbox),
                };
                app.net.tcp.set_shard(app.shard.handoff());
                let mut drv = driver::Driver::new()
                    .with_wake(wake_fd)
                    .with_busy_poll(Duration::from_micros(u64::from(busy_poll_us)));
                let ran = shard::run_loop(&mut drv, &mut dev, &mut stack, &stop, &mut app);
                // stop: every connection left gets its FIN (reason
                // shutdown), flushed by one last round
                app.shutdown(&mut stack);
                let _ = drv.step(&mut dev, &mut stack, driver::now(), &mut |_, _| {});
                ran
            })?;
        threads.push(t);
    }
    drop(req_tx);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served: anyhow::Result<()> = rt.block_on(async {
        // the management plane stays on a kernel socket
        if let Some(serve) = super::bind_metrics(&cfg, &metrics).await? {
            tokio::spawn(serve);
        }
        metrics.readiness().set_started();
        use super::lifecycle;
        let mut control = lifecycle::signals();
        let table = {
            let tables = tables.clone();
            Arc::new(move |l| {
                let l = shard::split_limits(l, tables.len());
                for t in &tables {
                    t.set_limits(l);
                }
            }) as Arc<dyn Fn(_) + Send + Sync>
        };
        let mut reloader =
            lifecycle::Reloader::new(cfg, opts, custom_nosip, core, metrics.clone(), Some(table));
        lifecycle::until_stop(&mut control, &mut reloader).await;
        // the stack threads close the listeners when they see this
        metrics.readiness().set_draining();
        let timeout = reloader.current().drain_timeout_secs;
        let now_s = || tcp::secs(driver::now());
        let all = shard::Tables(tables);
        lifecycle::drain(
            &metrics,
            Some((&all, &now_s)),
            Duration::from_secs(timeout),
            &mut control,
        )
        .await;
        Ok(())
    });
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    // join every shard; the first failure is the result
    let mut result = Ok(());
    for (k, t) in threads.into_iter().enumerate() {
        let joined = match t.join() {
            Ok(r) => r.with_context(|| format!("userspace stack shard {k}")),
            Err(_) => Err(anyhow::anyhow!(
                "userspace stack thread sipedge-stack-{k} panicked"
            )),
        };
        if result.is_ok() {
            result = joined;
        }
    }
    drop(resolver); // exits when the stack threads' senders are gone
    served?;
    result
}

/// The resolver thread: one name at a time, blocking on the system
/// resolver; the answer goes back to the shard that asked (and wakes it).
fn resolver_loop(
    rx: mpsc::Receiver<(usize, Pending)>,
    tx: Vec<mpsc::Sender<(Pending, Option<IpAddr>)>>,
    peers: Arc<[shard::Peer]>,
) {
    while let Ok((k, p)) = rx.recv() {
        let want_v4 = p.dest.addr.is_ipv4();
        let ip = (p.host.as_str(), p.dest.addr.port())
            .to_socket_addrs()
            .ok()
            .and_then(|it| pick_addr(it, want_v4))
            .map(|a| a.ip());
        let Some(t) = tx.get(k) else {
            continue;
        };
        if t.send((p, ip)).is_err() {
            return;
        }
        if let Some(peer) = peers.get(k) {
            peer.wake();
        }
    }
}

/// The sockets of the stack thread (what a send borrows).
struct Net {
    /// Per listen index: the UDP socket (None for a `tcp:` listen).
    udp: Vec<Option<UdpHandle>>,
    /// Per listen index: its address when it is a UDP one.
    udp_locals: Vec<Option<SocketAddr>>,
    /// Per listen index: its address.
    locals: Vec<SocketAddr>,
    tcp: tcp::TcpSide,
}

/// The SIP application on the stack thread.
struct App {
    core: Arc<Core>,
    metrics: Arc<Metrics>,
    net: Net,
    sc: Scratch,
    /// Host-name next hops resolved recently (shared cache type with the
    /// kernel backend).
    dns: DnsCache,
    req_tx: mpsc::SyncSender<(usize, Pending)>,
    res_rx: mpsc::Receiver<(Pending, Option<IpAddr>)>,
    /// Messages of the transaction timers (stateful mode; reused).
    txn_timers: crate::core::transaction::Out,
    /// Upstream health probes: shard 0 only.
    probes: Option<Probes>,
    /// This shard's place among the others: its mailbox, theirs.
    shard: shard::Shard,
}

/// Upstream health probes driven on the stack thread (the sans-IO
/// [`Prober`]; kernel mode drives it from a task, `probe.rs`).
struct Probes {
    prober: Prober,
    /// Replies the core recognised by their Via branch.
    rx: tokio::sync::mpsc::Receiver<ProbeReply>,
    /// When the prober wants to run next (`None`: health off).
    next: Option<Millis>,
    due: Vec<ProbeDue>,
    out: Vec<u8>,
}

impl App {
    /// Called by the driver after each batch of frames.
    fn step(&mut self, s: &mut Stack, now: Instant) {
        self.mail(s, now);
        while let Ok((p, ip)) = self.res_rx.try_recv() {
            self.resolved(s, now, p, ip);
        }
        // stateful mode: the transaction timers (the driver comes back at
        // least every driver::MAX_WAIT); this shard polls the tables i
        // with i % shards == its index (each table by exactly one shard)
        if let Some(n) = self.core.stateful().map(|st| st.shard_count()) {
            let mut out = std::mem::take(&mut self.txn_timers);
            let (me, of) = (self.shard.index(), self.shard.count());
            for shard in (me..n).step_by(of) {
                out.clear();
                self.core.poll_transactions(shard, &mut out);
                if !out.sends.is_empty() {
                    self.deliver_txn(s, now, &out, StdInstant::now());
                }
            }
            self.txn_timers = out;
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                SocketEvent::UdpReadable(h) => self.readable(s, now, h),
                SocketEvent::UdpError(h) => {
                    if let Some(e) = s.udp_take_error(h) {
                        tracing::debug!(remote = %e.remote, kind = ?e.kind, "ICMP error for a datagram we sent");
                        if e.kind != SocketErrorKind::MessageTooLong {
                            // a failure of the target there (once, also
                            // when it was a probe's)
                            let now_ms = self.core.now_ms();
                            if let Some(p) = self.probes.as_mut() {
                                p.prober
                                    .on_unreachable(e.remote, Some(Transport::Udp), now_ms);
                            }
                        }
                    }
                }
                ev => self.handle_io(s, now, ev),
            }
        }
        let cx = tcp::Ctx {
            core: &self.core,
            metrics: &self.metrics,
        };
        if self.metrics.readiness().is_draining() {
            self.net.tcp.close_listeners(s);
        }
        self.net.tcp.poll(s, &cx, now);
        self.fail_over_failed_connections(s, now);
        self.probe(s, now);
        self.replicate(s);
    }

    /// Stop: release every connection (FIN, reason `shutdown`).
    fn shutdown(&mut self, s: &mut Stack) {
        let cx = tcp::Ctx {
            core: &self.core,
            metrics: &self.metrics,
        };
        self.net.tcp.shutdown(s, &cx);
    }

    /// Hand probe replies to the prober; send the probes that are due.
    fn probe(&mut self, s: &mut Stack, now: Instant) {
        // a draining proxy sends no probes: their replies would keep UDP
        // from going quiet, and it takes no new calls anyway
        if self.metrics.readiness().is_draining() {
            return;
        }
        let Some(p) = self.probes.as_mut() else {
            return;
        };
        let now_ms = self.core.now_ms();
        // a reload (SIGHUP) may have replaced the sets
        if p.prober.follow(&self.core.upstreams(), now_ms) {
            p.next = p.prober.active().then_some(now_ms);
        }
        let Some(next) = p.next else {
            return;
        };
        let mut answered = false;
        while let Ok(r) = p.rx.try_recv() {
            answered |= p.prober.on_reply(r, now_ms);
        }
        if now_ms < next && !answered {
            return;
        }
        p.prober.poll(now_ms, &mut p.due);
        let egress::StepParts { mut eg, probes, .. } = self.split(s, now);
        let Some(p) = probes.as_mut() else {
            return;
        };
        for d in p.due.drain(..) {
            let Some(dest) = eg.core.write_probe(d, &mut p.out) else {
                p.prober.send_failed(d, now_ms);
                continue;
            };
            // UDP from the listen socket; TCP on the connection to the target
            let r = match dest.transport {
                Transport::Udp => eg.send_udp(&dest, &p.out),
                Transport::Tcp => eg.send_tcp(&dest, &p.out),
            };
            if r == SendResult::Sent {
                eg.metrics.bytes_out(dest.transport, p.out.len());
            } else {
                p.prober.send_failed(d, now_ms);
            }
        }
        p.next = p.prober.next_wakeup();
    }
}
