//! Transport: connections, the Kamailio-shaped TCP reader loop, UDP receive,
//! and the kernel backend (tokio + socket2).
//!
//! Shared by both backends: [`stream`] (the sans-IO framing and deadline
//! state of a TCP connection), [`egress`] (the synchronous per-message step
//! that sends through a backend's [`egress::Egress`]), [`tcp`]
//! (`receive_tcp_msg`, release), [`conn`] (the connection table, generic
//! over the backend's handle).
//!
//! Kernel backend ([`kernel`]): one tokio multi-thread runtime; UDP is read
//! outside it, by one blocking receive thread per worker on its own
//! SO_REUSEPORT socket ([`udp`]). TCP: one small task per connection
//! (`handle_io`, a hand-written poll over readiness, kill requests and the
//! stream's deadline, woken for deadlines by one sweeper task); reads go
//! into a per-worker buffer. Sends to a connection
//! are written directly by the sending task when the connection has no
//! backlog, else queued (bounded) and flushed by the connection's own task.

pub mod conn;
pub mod egress;
pub mod kernel;
pub mod lifecycle;
pub mod probe;
pub mod stream;
pub mod tcp;
pub mod udp;
pub mod userspace;

use crate::config::{Config, Transport};
use crate::core::Core;
use crate::core::nosip::NosipHook;
use crate::metrics::Metrics;
use conn::{ConnCache, ConnTable, ReleaseReason};
pub use egress::{DNS_TTL, DnsCache, Step};
use kernel::{KernelEgress, KernelIo};
pub use lifecycle::{Control, RunOpts};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the I/O tasks share.
pub struct Ctx {
    /// `core.live()` holds the reloadable settings, `[tcp]` among them.
    pub core: Arc<Core>,
    pub metrics: Arc<Metrics>,
    pub conns: ConnTable<KernelIo>,
    /// Per listen index: a UDP socket to send from (for tasks that do not own one).
    pub udp: Vec<Option<Arc<std::net::UdpSocket>>>,
    /// Per listen index: the address of its UDP socket ([`egress::pick_local`]).
    pub udp_locals: Vec<Option<std::net::SocketAddr>>,
    /// UDP sends waiting for socket room ([`kernel::UDP_RETRIES_MAX`]).
    pub(crate) udp_retries: std::sync::atomic::AtomicUsize,
    /// Time base of the clocks of connections (ms for deadlines, s for idle).
    pub epoch: Instant,
    /// Host names of next hops (Route / Request-URI) resolved recently.
    pub dns: DnsCache,
}

impl Ctx {
    /// Seconds since start (coarse clock for idle lifetimes).
    pub fn now_s(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Milliseconds since start (the stream deadlines' clock).
    pub fn now_ms(&self) -> stream::Millis {
        self.now_ms_at(Instant::now())
    }

    /// `t` on the milliseconds clock.
    pub fn now_ms_at(&self, t: Instant) -> stream::Millis {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The instant of `ms` on the milliseconds clock (far away when out of range).
    pub fn instant_at(&self, ms: stream::Millis) -> Instant {
        self.epoch
            .checked_add(Duration::from_millis(ms))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86400))
    }

    /// The synchronous per-message step over this context.
    pub fn step(&self) -> Step<'_> {
        Step {
            core: &self.core,
            metrics: &self.metrics,
            dns: &self.dns,
        }
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
        // one table per worker (per stack shard in afpacket mode; each
        // table polled by one shard)
        let shards = match cfg.stack.mode {
            crate::config::StackMode::Afpacket => cfg.stack.shards(),
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
    let mut udp_socks: Vec<Vec<Arc<std::net::UdpSocket>>> = Vec::new();
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
        udp_locals: udp_socks
            .iter()
            .map(|v| v.first().and_then(|s| s.local_addr().ok()))
            .collect(),
        udp_retries: Default::default(),
        epoch: Instant::now(),
        dns: DnsCache::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut udp_threads = udp::UdpThreads::default();
    for (i, socks) in udp_socks.into_iter().enumerate() {
        for s in socks {
            udp_threads
                .start(&ctx, s, i)
                .context("udp receive thread")?;
        }
    }
    // aborting an accept task drops (closes) its listener: the drain's first step
    let mut accepting = Vec::new();
    for (i, l) in tcp_listeners.into_iter().flatten() {
        accepting.push(tasks.spawn(tcp::accept_loop(ctx.clone(), l, i)));
    }
    if ctx.core.stateful().is_some() {
        tasks.spawn(transaction_timers(ctx.clone()));
    }
    tasks.spawn(kernel::sweep_deadlines(ctx.clone()));
    // always: a reload (SIGHUP) may turn health checks on
    tasks.spawn(probe::run(ctx.clone(), probe_rx));
    if let Some(serve) = bind_metrics(&cfg, &metrics).await? {
        tasks.spawn(serve);
    }
    metrics.readiness().set_started();
    tracing::info!(
        listen = ?listen_specs(&cfg),
        upstreams = ?upstream_uris(&cfg),
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
        Some((&ctx.conns as &dyn lifecycle::DrainConns, &now_s)),
        ctx.core.live().drain_timeout,
        &mut control,
    )
    .await;
    lifecycle::close_all(&ctx.conns, graceful).await;
    tracing::info!("shutting down");
    udp_threads.stop().await;
    tasks.abort_all();
    for c in ctx.conns.all() {
        ctx.conns.release(&c);
        ctx.metrics.tcp_released(ReleaseReason::Shutdown);
    }
    Ok(())
}

/// The `/metrics` endpoint of both backends (a kernel socket: the
/// management plane): bound now, so a busy address fails start-up naming
/// `metrics.listen`; the returned future serves it (spawn it).
pub(crate) async fn bind_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<impl std::future::Future<Output = ()> + Send + 'static>> {
    use anyhow::Context as _;
    let Some(addr) = cfg.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics.listen {addr}"))?;
    let m = metrics.clone();
    Ok(Some(async move {
        if let Err(e) = crate::metrics::serve_listener(listener, m).await {
            tracing::error!("metrics endpoint failed: {e}");
        }
    }))
}

/// `proxy.listen` as `transport:addr` strings (the start-up log line).
pub(crate) fn listen_specs(cfg: &Config) -> Vec<String> {
    cfg.listen
        .iter()
        .map(|l| format!("{}:{}", l.transport.as_str(), l.addr))
        .collect()
}

/// The upstream URIs (the start-up log line).
pub(crate) fn upstream_uris(cfg: &Config) -> Vec<&str> {
    cfg.upstreams.iter().map(|u| u.uri.as_str()).collect()
}

/// `/ready` answers 503 from now on.
fn metrics_ready_off(ctx: &Ctx) {
    ctx.metrics.readiness().set_draining();
}

/// Stateful mode: run the transaction timer rounds nobody else runs. The
/// UDP receive threads run a due round after a datagram
/// ([`udp::udp_receive_thread`]); this task sleeps until the next round is
/// due and runs it if it is still due then. If another thread ran it, traffic
/// is flowing: it looks again only after [`TXN_HANDOFF`] (so it does not
/// wake every round for nothing), which bounds a round's lateness when the
/// traffic stops.
async fn transaction_timers(ctx: Arc<Ctx>) {
    let mut out = crate::core::transaction::Out::default();
    let mut cache = ConnCache::default();
    let mut wait = TXN_HANDOFF;
    loop {
        tokio::time::sleep(wait).await;
        let now = ctx.core.now_ms();
        wait = if ctx.core.claim_transaction_round(now) {
            let mut eg = KernelEgress {
                ctx: &ctx,
                own_udp: None,
                cache: &mut cache,
                cork: None,
            };
            let next = kernel::transaction_round(&ctx, &mut eg, &mut out);
            Duration::from_millis(next.saturating_sub(ctx.core.now_ms()).max(1))
        } else {
            TXN_HANDOFF
        };
    }
}

/// How long the transaction timer task leaves the rounds to the UDP receive
/// threads once it found one run by them (the longest a round is late when
/// the traffic stops).
const TXN_HANDOFF: Duration = Duration::from_millis(100);
