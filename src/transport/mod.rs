//! Transport: connections, the Kamailio-shaped TCP reader loop, UDP receive,
//! and the kernel backend (tokio + socket2).
//!
//! Threads: one tokio multi-thread runtime. UDP: one receive task per worker
//! on its own SO_REUSEPORT socket. TCP: one task per connection running
//! `handle_io`; sends to a connection are written directly by the sending
//! task when the connection has no backlog, else queued (bounded) and flushed
//! by the connection's own task.

pub mod conn;
pub mod kernel;
pub mod lifecycle;
pub mod probe;
pub mod tcp;
pub mod udp;
pub mod userspace;

use crate::config::{Config, Transport};
use crate::core::nosip::NosipHook;
use crate::core::{Core, Dest, DropReason, Outcome, Scratch, SendKind};
use crate::metrics::Metrics;
use conn::{ConnCache, ConnTable, ReleaseReason};
pub use lifecycle::{Control, RunOpts};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Everything the I/O tasks share.
pub struct Ctx {
    /// `core.live()` holds the reloadable settings, `[tcp]` among them.
    pub core: Arc<Core>,
    pub metrics: Arc<Metrics>,
    pub conns: ConnTable,
    /// Per listen index: a UDP socket to send from (for tasks that do not own one).
    pub udp: Vec<Option<Arc<UdpSocket>>>,
    /// Time base of the coarse clock used for idle timers.
    pub epoch: Instant,
    /// Host names of next hops (Route / Request-URI) resolved recently.
    pub dns: DnsCache,
}

/// A small cache of host name → address, so a dialog's requests do not each
/// wait for the resolver. Bounded; entries live [`DNS_TTL`].
#[derive(Debug, Default)]
pub struct DnsCache {
    map: std::sync::RwLock<std::collections::HashMap<String, (std::net::IpAddr, Instant)>>,
}

/// How long a resolved name is reused.
pub const DNS_TTL: Duration = Duration::from_secs(60);
/// Names kept at most (the cache is emptied when full).
const DNS_CACHE_MAX: usize = 4096;
/// Longest wait for the resolver.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

impl DnsCache {
    pub(crate) fn get(&self, host: &str) -> Option<std::net::IpAddr> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.get(host)
            .filter(|(_, at)| at.elapsed() < DNS_TTL)
            .map(|(ip, _)| *ip)
    }

    pub(crate) fn put(&self, host: &str, ip: std::net::IpAddr) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DNS_CACHE_MAX {
            m.clear();
        }
        m.insert(host.to_string(), (ip, Instant::now()));
    }
}

impl Ctx {
    /// Seconds since start (coarse clock for idle lifetimes).
    pub fn now_s(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }
}

/// What an embedder can plug into the core.
#[derive(Default)]
pub struct Hooks {
    /// Replaces the nosip hook chosen in the config.
    pub nosip: Option<Box<dyn NosipHook>>,
    /// Runs on every parse failure the nosip hook did not consume.
    pub parse_error: Option<crate::core::ParseErrorHook>,
}

/// Run the proxy until SIGINT/SIGTERM (drain, see [`lifecycle`]). `hook`
/// overrides the configured nosip hook.
pub fn run(cfg: Config, hook: Option<Box<dyn NosipHook>>) -> anyhow::Result<()> {
    run_with_hooks(
        cfg,
        Hooks {
            nosip: hook,
            parse_error: None,
        },
    )
}

/// [`run`] with every hook point.
pub fn run_with_hooks(cfg: Config, hooks: Hooks) -> anyhow::Result<()> {
    run_with_opts(cfg, hooks, RunOpts::default())
}

/// [`run_with_hooks`] with what the command line adds: the configuration
/// source re-read on SIGHUP and the log filter it may change.
pub fn run_with_opts(cfg: Config, hooks: Hooks, opts: RunOpts) -> anyhow::Result<()> {
    if cfg.stack.mode == crate::config::StackMode::Afpacket {
        return userspace::run(cfg, hooks, opts);
    }
    let workers = cfg.effective_workers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("sipedge-worker")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let control = lifecycle::signals();
        serve(cfg, hooks, workers, control, opts).await
    })
}

/// The core with the configured (or embedder's) hooks.
pub(crate) fn build_core(
    cfg: &Config,
    hooks: Hooks,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Core> {
    use anyhow::Context as _;
    let hook = match hooks.nosip {
        Some(h) => h,
        None => crate::core::nosip::from_config(&cfg.nosip).context("nosip.pattern")?,
    };
    let mut core = Core::new(cfg, hook, metrics);
    if let Some(h) = hooks.parse_error {
        core = core.with_parse_error_hook(h);
    }
    if cfg.mode == crate::config::ProxyMode::Stateful {
        // one table per worker (the stack thread in afpacket mode)
        let shards = match cfg.stack.mode {
            crate::config::StackMode::Afpacket => 1,
            crate::config::StackMode::Kernel => cfg.effective_workers(),
        };
        core = core.with_stateful(&cfg.transaction, shards);
    }
    Ok(core)
}

/// Bind everything and serve; `control` events reload (SIGHUP) and stop:
/// the first stop drains ([`lifecycle::drain`]), then every connection is
/// released (reason `shutdown`).
pub async fn serve(
    cfg: Config,
    hooks: Hooks,
    workers: usize,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
    opts: RunOpts,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let metrics = Arc::new(Metrics::new());
    let custom_nosip = hooks.nosip.is_some();
    let (probe_sink, probe_rx) = probe::channel();
    let core = Arc::new(build_core(&cfg, hooks, metrics.clone())?.with_probe_sink(probe_sink));
    let mut udp_socks: Vec<Vec<Arc<UdpSocket>>> = Vec::new();
    let mut tcp_listeners = Vec::new();
    for (i, l) in cfg.listen.iter().enumerate() {
        match l.transport {
            Transport::Udp => {
                let mut v = Vec::new();
                for _ in 0..workers.max(1) {
                    let s = kernel::udp_socket(l.addr)
                        .with_context(|| format!("listen udp:{}", l.addr))?;
                    v.push(Arc::new(s));
                }
                udp_socks.push(v);
                tcp_listeners.push(None);
            }
            Transport::Tcp => {
                let s = kernel::tcp_listener(l.addr)
                    .with_context(|| format!("listen tcp:{}", l.addr))?;
                udp_socks.push(Vec::new());
                tcp_listeners.push(Some((i, s)));
            }
        }
    }
    let ctx = Arc::new(Ctx {
        core: core.clone(),
        metrics: metrics.clone(),
        conns: ConnTable::new(lifecycle::table_limits(&cfg.tcp)),
        udp: udp_socks.iter().map(|v| v.first().cloned()).collect(),
        epoch: Instant::now(),
        dns: DnsCache::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, socks) in udp_socks.into_iter().enumerate() {
        for s in socks {
            tasks.spawn(udp::udp_worker(ctx.clone(), s, i));
        }
    }
    // aborting an accept task drops (closes) its listener: the drain's first step
    let mut accepting = Vec::new();
    for (i, l) in tcp_listeners.into_iter().flatten() {
        accepting.push(tasks.spawn(tcp::accept_loop(ctx.clone(), l, i)));
    }
    if let Some(st) = ctx.core.stateful() {
        for shard in 0..st.shard_count() {
            tasks.spawn(transaction_timers(ctx.clone(), shard));
        }
    }
    // always: a reload (SIGHUP) may turn health checks on
    tasks.spawn(probe::run(ctx.clone(), probe_rx));
    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen {addr}"))?;
        let m = metrics.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve_listener(listener, m).await {
                tracing::error!("metrics endpoint failed: {e}");
            }
        });
    }
    metrics.readiness().set_started();
    tracing::info!(
        listen = ?cfg.listen.iter().map(|l| format!("{}:{}", l.transport.as_str(), l.addr)).collect::<Vec<_>>(),
        upstreams = ?cfg.upstreams.iter().map(|u| u.uri.as_str()).collect::<Vec<_>>(),
        workers,
        "sipedge running"
    );
    let table = {
        let ctx = ctx.clone();
        Arc::new(move |l| ctx.conns.set_limits(l)) as Arc<dyn Fn(_) + Send + Sync>
    };
    let mut reloader =
        lifecycle::Reloader::new(cfg, opts, custom_nosip, core.clone(), metrics, Some(table));
    lifecycle::until_stop(&mut control, &mut reloader).await;
    metrics_ready_off(&ctx);
    for a in &accepting {
        a.abort();
    }
    let now_s = || ctx.now_s();
    let graceful = lifecycle::drain(
        &ctx.metrics,
        Some((&ctx.conns, &now_s)),
        ctx.core.live().drain_timeout,
        &mut control,
    )
    .await;
    lifecycle::close_all(&ctx.conns, graceful).await;
    tracing::info!("shutting down");
    tasks.abort_all();
    for c in ctx.conns.all() {
        ctx.conns.release(&c);
        ctx.metrics.tcp_released(ReleaseReason::Shutdown);
    }
    Ok(())
}

/// `/ready` answers 503 from now on.
fn metrics_ready_off(ctx: &Ctx) {
    ctx.metrics.readiness().set_draining();
}

/// Send what the core produced (`sc.out`). `own_udp`: the calling UDP
/// worker's socket and its listen index; `cache`: the calling task's
/// connection handles. A next hop given by name is resolved first (cached;
/// on a miss the send continues in its own task so this one is not held up).
pub async fn dispatch(
    ctx: &Arc<Ctx>,
    outcome: Outcome,
    sc: &Scratch,
    received_at: Instant,
    own_udp: Option<(&UdpSocket, usize)>,
    cache: &mut ConnCache,
) {
    let (dest, kind) = match outcome {
        Outcome::Txn => {
            deliver_txn(ctx, &sc.txn, received_at, own_udp, cache).await;
            return;
        }
        Outcome::Send { dest, kind } => (dest, kind),
        Outcome::Resolve { dest, kind } => match ctx.dns.get(&sc.resolve) {
            Some(ip) => {
                let mut d = dest;
                d.addr.set_ip(ip);
                (d, kind)
            }
            None => {
                tokio::spawn(resolve_and_send(
                    ctx.clone(),
                    sc.resolve.clone(),
                    dest,
                    kind,
                    sc.out.clone(),
                    received_at,
                ));
                return;
            }
        },
        _ => return,
    };
    let resolved = matches!(outcome, Outcome::Resolve { .. });
    deliver(
        ctx,
        &dest,
        kind,
        &sc.out,
        received_at,
        resolved,
        own_udp,
        cache,
    )
    .await;
}

/// Send to `dest` and count it. `resolved`: the address came from a host
/// name, so it may turn out to be our own (dropped as a loop). `false`:
/// not sent.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    ctx: &Arc<Ctx>,
    dest: &Dest,
    kind: SendKind,
    out: &[u8],
    received_at: Instant,
    resolved: bool,
    own_udp: Option<(&UdpSocket, usize)>,
    cache: &mut ConnCache,
) -> bool {
    if resolved_to_self(&ctx.core, &ctx.metrics, dest, resolved) {
        return false;
    }
    let ok = match dest.transport {
        Transport::Udp => send_udp(ctx, dest, out, own_udp).await,
        Transport::Tcp => send_tcp(ctx, dest, out, cache),
    };
    count_send(&ctx.metrics, dest, kind, out.len(), received_at, ok);
    ok
}

/// Send the transaction layer's messages (stateful mode). A try that
/// cannot be sent fails over at once (bounded: each round uses up a try).
async fn deliver_txn(
    ctx: &Arc<Ctx>,
    out: &crate::core::transaction::Out,
    received_at: Instant,
    own_udp: Option<(&UdpSocket, usize)>,
    cache: &mut ConnCache,
) {
    let mut failed = Vec::new();
    for s in &out.sends {
        let ok = deliver(
            ctx,
            &s.dest,
            s.kind,
            out.bytes(s),
            received_at,
            false,
            own_udp,
            cache,
        )
        .await;
        if !ok && let Some(r) = s.txn {
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
            ctx.core.transaction_send_failed(r, &mut next);
        }
        for s in &next.sends {
            let ok = deliver(
                ctx,
                &s.dest,
                s.kind,
                next.bytes(s),
                received_at,
                false,
                own_udp,
                cache,
            )
            .await;
            if !ok && let Some(r) = s.txn {
                failed.push(r);
            }
        }
    }
}

/// Stateful mode: run the transaction shards' timers when they are due and
/// send what they produce. One task serves every shard (the task of shard 0;
/// the others end at once): one wake-up per round instead of one per shard.
/// It sleeps until the earliest deadline of any shard, at least
/// [`TXN_TICK`] after its last run (timers due within that window run
/// together) and at most [`TXN_MAX_SLEEP`] (a deadline armed meanwhile is at
/// least 200 ms away, so this bounds its lateness too).
async fn transaction_timers(ctx: Arc<Ctx>, shard: usize) {
    if shard != 0 {
        return;
    }
    let shards = ctx.core.stateful().map_or(0, |st| st.shard_count());
    let mut out = crate::core::transaction::Out::default();
    let mut cache = ConnCache::default();
    loop {
        let now = ctx.core.now_ms();
        let next = (0..shards)
            .filter_map(|s| ctx.core.next_transaction_deadline(s))
            .min();
        let wait = next
            .map_or(TXN_MAX_SLEEP, |d| {
                Duration::from_millis(d.saturating_sub(now)).min(TXN_MAX_SLEEP)
            })
            .max(TXN_TICK);
        tokio::time::sleep(wait).await;
        for s in 0..shards {
            out.clear();
            ctx.core.poll_transactions(s, &mut out);
            if !out.sends.is_empty() {
                deliver_txn(&ctx, &out, Instant::now(), None, &mut cache).await;
            }
        }
    }
}

/// Shortest pause of the transaction timer task (the timers' resolution).
const TXN_TICK: Duration = Duration::from_millis(20);
/// Longest pause of the transaction timer task.
const TXN_MAX_SLEEP: Duration = Duration::from_millis(50);

/// Stateful mode: a transport error towards `peer` over TCP (a refused or
/// failed connect, a RST on an outbound connection): the transactions
/// waiting on it fail over now ([`Core::transport_failed`]). Called from the
/// TCP connection task; nothing for inbound connections or other reasons.
pub(crate) async fn txn_transport_failed(ctx: &Arc<Ctx>, conn: &conn::Conn, why: ReleaseReason) {
    if !conn.outbound
        || ctx.core.stateful().is_none()
        || !matches!(why, ReleaseReason::ConnectFailed | ReleaseReason::Reset)
    {
        return;
    }
    let mut out = crate::core::transaction::Out::default();
    if ctx
        .core
        .transport_failed(conn.peer, Transport::Tcp, &mut out)
        > 0
    {
        deliver_txn(ctx, &out, Instant::now(), None, &mut ConnCache::default()).await;
    }
}

/// A next hop that came from a host name (`resolved`) and turned out to be
/// this proxy: a loop, dropped and counted. Both backends check it.
pub(crate) fn resolved_to_self(
    core: &Core,
    metrics: &Metrics,
    dest: &Dest,
    resolved: bool,
) -> bool {
    let looped = resolved && core.is_local_addr(dest.addr, dest.transport);
    if looped {
        metrics.dropped(DropReason::Loop);
    }
    looped
}

/// Count what became of one send, for both backends: bytes out and the
/// forwarding latency of requests and replies, or a `send_failed` drop.
pub(crate) fn count_send(
    metrics: &Metrics,
    dest: &Dest,
    kind: SendKind,
    out_len: usize,
    received_at: Instant,
    ok: bool,
) {
    if ok {
        metrics.bytes_out(dest.transport, out_len);
        if matches!(kind, SendKind::Request | SendKind::Reply) {
            metrics.forward_latency(received_at.elapsed().as_secs_f64());
        }
    } else {
        metrics.dropped(DropReason::SendFailed);
        tracing::debug!(dest = %dest.addr, transport = dest.transport.as_str(), "send failed");
    }
}

/// The address a host-name next hop resolves to: the first of the family
/// our Via names (`want_v4`), else the first of any family.
pub(crate) fn pick_addr(
    addrs: impl IntoIterator<Item = std::net::SocketAddr>,
    want_v4: bool,
) -> Option<std::net::SocketAddr> {
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() == want_v4 {
            return Some(a);
        }
        first.get_or_insert(a);
    }
    first
}

/// Resolve `host` (A/AAAA, preferring the family of the socket our Via
/// names), cache it, then send `out` there.
async fn resolve_and_send(
    ctx: Arc<Ctx>,
    host: String,
    mut dest: Dest,
    kind: SendKind,
    out: Vec<u8>,
    received_at: Instant,
) {
    let port = dest.addr.port();
    let want_v4 = dest.addr.is_ipv4();
    let found =
        match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
        {
            Ok(Ok(addrs)) => pick_addr(addrs, want_v4),
            _ => None,
        };
    let Some(addr) = found else {
        tracing::debug!(%host, "next hop does not resolve");
        ctx.metrics.dropped(DropReason::NoRoute);
        return;
    };
    ctx.dns.put(&host, addr.ip());
    dest.addr = addr;
    let mut cache = ConnCache::default();
    deliver(&ctx, &dest, kind, &out, received_at, true, None, &mut cache).await;
}

async fn send_udp(
    ctx: &Arc<Ctx>,
    dest: &Dest,
    out: &[u8],
    own_udp: Option<(&UdpSocket, usize)>,
) -> bool {
    let sock: &UdpSocket = match own_udp {
        Some((s, i)) if i == dest.local => s,
        _ => match ctx.udp.get(dest.local).and_then(|s| s.as_deref()) {
            Some(s) => s,
            None => match ctx.udp.iter().flatten().find(|s| {
                s.local_addr()
                    .is_ok_and(|a| a.is_ipv4() == dest.addr.is_ipv4())
            }) {
                Some(s) => s,
                None => return false,
            },
        },
    };
    match sock.try_send_to(out, dest.addr) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let r = tokio::time::timeout(Duration::from_millis(500), sock.send_to(out, dest.addr));
            matches!(r.await, Ok(Ok(_)))
        }
        Err(_) => false,
    }
}

pub(crate) fn send_tcp(ctx: &Arc<Ctx>, dest: &Dest, out: &[u8], cache: &mut ConnCache) -> bool {
    let now = ctx.now_s();
    // RFC 3261 §18.2.2: the connection the request came on, if still open
    if let Some(id) = dest.conn
        && let Some(c) = cache.by_id(&ctx.conns, id)
    {
        return c.send(out, now).is_ok();
    }
    if let Some(c) = cache.by_addr(&ctx.conns, dest.addr) {
        return c.send(out, now).is_ok();
    }
    let Some((c, is_new)) = ctx.conns.get_or_create_outbound(dest.addr, dest.local) else {
        tracing::debug!(dest = %dest.addr, "connection table full: not opening an outbound connection");
        return false;
    };
    if is_new {
        ctx.metrics.tcp_opened(true);
        tokio::spawn(tcp::connect_and_run(ctx.clone(), c.clone()));
    }
    cache.put(c.clone());
    c.send(out, now).is_ok()
}
