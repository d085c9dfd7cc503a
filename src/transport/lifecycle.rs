//! Process life cycle, for both backends: signals (SIGTERM / SIGINT drain,
//! a second one stops at once; SIGHUP reloads), the graceful drain, and the
//! configuration reload that swaps the core's [`Live`] settings.

use super::conn::{ConnIo, ConnTable, ReleaseReason, TableLimits};
use crate::config::{Config, TcpLimits, plan_reload};
use crate::core::Core;
use crate::metrics::{Metrics, ReloadResult};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: drain, or stop at once when already draining.
    Stop,
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// Re-reads the configuration (file and command-line overrides).
pub type ReloadFn = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;
/// Applies a new `log.level` filter.
pub type LogLevelFn = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What the command line gives the running proxy beyond its configuration.
#[derive(Default)]
pub struct RunOpts {
    /// Called on SIGHUP; without it SIGHUP is logged and ignored.
    pub reload: Option<ReloadFn>,
    /// Changes the log filter; `None` when it is fixed (`RUST_LOG` set).
    pub set_log_level: Option<LogLevelFn>,
}

/// A connection (or UDP) is idle in a drain after this long without a byte.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// How often the drain looks at connections and UDP traffic.
const DRAIN_TICK: Duration = Duration::from_millis(100);
/// After the drain: how long connections get to close themselves.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Install the signal handlers (inside the runtime) and forward them as
/// [`Control`] events. Handlers that cannot be installed are logged;
/// SIGINT then still works through `ctrl_c`.
pub fn signals() -> mpsc::UnboundedReceiver<Control> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!("cannot handle SIGTERM: {e}"))
            .ok();
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot handle SIGHUP: {e}"))
            .ok();
        loop {
            let c = tokio::select! {
                Some(()) = async { term.as_mut()?.recv().await } => Control::Stop,
                Some(()) = async { hup.as_mut()?.recv().await } => Control::Reload,
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => Control::Stop,
                    Err(e) => {
                        tracing::warn!("cannot handle SIGINT: {e}");
                        std::future::pending::<()>().await;
                        continue;
                    }
                },
            };
            if tx.send(c).is_err() {
                return;
            }
        }
    });
    rx
}

/// Serve `control` events until the first stop request; reloads meanwhile.
pub async fn until_stop(control: &mut mpsc::UnboundedReceiver<Control>, reloader: &mut Reloader) {
    while let Some(c) = control.recv().await {
        match c {
            Control::Stop => return,
            Control::Reload => {
                reloader.reload();
            }
        }
    }
}

/// The drain after the first SIGTERM / SIGINT (the caller has closed the
/// listeners and set `/ready` to 503): existing TCP connections and UDP
/// exchanges go on until `timeout`, or until every connection was closed
/// for being idle ([`DRAIN_IDLE`], closed with FIN, counted `shutdown`) and
/// UDP has been quiet as long. A second signal ends it at once. Returns
/// false when it was cut short by a signal.
pub async fn drain(
    metrics: &Metrics,
    conns: Option<(&dyn DrainConns, &dyn Fn() -> u64)>,
    timeout: Duration,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> bool {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    tracing::info!(
        timeout_secs = timeout.as_secs_f64(),
        connections = conns.map_or(0, |(t, _)| t.open()),
        "draining: new TCP connections refused, /ready 503; existing connections and UDP \
         exchanges continue (a second SIGTERM or SIGINT stops at once)"
    );
    let mut udp_seen = metrics.udp_bytes_in();
    let mut udp_quiet_since = t0;
    // the coarse connection clock counts whole seconds: one more for a full DRAIN_IDLE
    let idle_secs = DRAIN_IDLE.as_secs() + 1;
    loop {
        let now = Instant::now();
        if let Some((table, now_s)) = conns {
            table.close_idle(now_s(), idle_secs);
        }
        let udp = metrics.udp_bytes_in();
        if udp != udp_seen {
            udp_seen = udp;
            udp_quiet_since = now;
        }
        let open = conns.map_or(0, |(t, _)| t.open());
        if open == 0 && now.duration_since(udp_quiet_since) >= DRAIN_IDLE {
            tracing::info!(
                after_secs = t0.elapsed().as_secs_f64(),
                "drained: no connection left, UDP quiet"
            );
            return true;
        }
        if now >= deadline {
            tracing::info!(
                connections = open,
                "drain time over: closing the remaining connections"
            );
            return true;
        }
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Reload) => tracing::info!("SIGHUP ignored while draining"),
                Some(Control::Stop) | None => {
                    tracing::warn!("second stop signal: stopping at once");
                    return false;
                }
            },
            _ = tokio::time::sleep(DRAIN_TICK.min(deadline - now)) => {}
        }
    }
}

/// What the drain needs of a connection table (either backend's).
pub trait DrainConns {
    /// Connections open.
    fn open(&self) -> usize;
    /// Ask every connection idle for `idle_secs` (nothing sent or received,
    /// nothing queued) to close, reason `shutdown`.
    fn close_idle(&self, now_s: u64, idle_secs: u64);
}

impl<B: ConnIo> DrainConns for ConnTable<B> {
    fn open(&self) -> usize {
        self.len()
    }

    fn close_idle(&self, now_s: u64, idle_secs: u64) {
        for c in self.all() {
            if now_s.saturating_sub(c.last_active()) >= idle_secs && !c.has_backlog() {
                c.kill(ReleaseReason::Shutdown);
            }
        }
    }
}

/// Ask every connection to close (reason `shutdown`, FIN) and wait a little
/// ([`CLOSE_WAIT`]) for their tasks to do it; skipped when `graceful` is false.
pub async fn close_all<B: ConnIo>(table: &ConnTable<B>, graceful: bool) {
    for c in table.all() {
        c.kill(ReleaseReason::Shutdown);
    }
    if !graceful {
        return;
    }
    let t0 = Instant::now();
    while !table.is_empty() && t0.elapsed() < CLOSE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The connection table limits of `[tcp]`.
pub fn table_limits(t: &TcpLimits) -> TableLimits {
    TableLimits {
        max_connections: t.max_connections,
        max_per_ip: t.max_connections_per_ip,
        write_queue_bytes: t.write_queue_bytes,
    }
}

/// Applies SIGHUP reloads: re-reads the configuration, applies the
/// reloadable keys to the core ([`Live`]) and the connection table, refuses
/// the rest by name, keeps everything when the new file is invalid.
pub struct Reloader {
    /// The configuration running now (refused keys keep their old values).
    current: Config,
    opts: RunOpts,
    /// The nosip hook came from the embedder: reloads keep it.
    custom_nosip: bool,
    core: std::sync::Arc<Core>,
    metrics: std::sync::Arc<Metrics>,
    conns: Option<std::sync::Arc<dyn Fn(TableLimits) + Send + Sync>>,
}

impl Reloader {
    pub fn new(
        current: Config,
        opts: RunOpts,
        custom_nosip: bool,
        core: std::sync::Arc<Core>,
        metrics: std::sync::Arc<Metrics>,
        conns: Option<std::sync::Arc<dyn Fn(TableLimits) + Send + Sync>>,
    ) -> Reloader {
        Reloader {
            current,
            opts,
            custom_nosip,
            core,
            metrics,
            conns,
        }
    }

    /// The configuration running now.
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// One reload; counted in `sipedge_config_reloads_total{result}`.
    pub fn reload(&mut self) -> ReloadResult {
        let r = self.try_reload();
        self.metrics.config_reload(r);
        r
    }

    fn try_reload(&mut self) -> ReloadResult {
        let Some(read) = &self.opts.reload else {
            tracing::warn!("SIGHUP: this process has no configuration source to reload");
            return ReloadResult::Error;
        };
        tracing::info!("SIGHUP: reloading the configuration");
        let plan = match read().and_then(|new| Ok(plan_reload(&self.current, &new)?)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "configuration reload failed: the running configuration is kept"
                );
                return ReloadResult::Error;
            }
        };
        for key in &plan.refused {
            tracing::warn!(
                key = key.as_str(),
                "configuration reload: `{key}` changed but needs a restart; the running value is kept"
            );
        }
        let nosip_changed = plan.applied.iter().any(|k| k.starts_with("nosip"));
        let hook = if nosip_changed && !self.custom_nosip {
            match crate::core::nosip::from_config(&plan.config.nosip) {
                Ok(h) => std::sync::Arc::from(h),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "configuration reload failed (nosip.pattern): the running configuration is kept"
                    );
                    return ReloadResult::Error;
                }
            }
        } else {
            if nosip_changed {
                tracing::warn!(
                    "configuration reload: nosip changed, but the embedder's own nosip hook stays"
                );
            }
            self.core.live().nosip.clone()
        };
        if plan.applied.iter().any(|k| k == "log.level") {
            match &self.opts.set_log_level {
                Some(set) => {
                    if let Err(e) = set(&plan.config.log_level) {
                        tracing::warn!(error = format!("{e:#}"), "log.level not applied");
                    }
                }
                None => tracing::warn!("log.level not applied: RUST_LOG sets the log filter"),
            }
        }
        self.core
            .set_live(self.core.live().reload(&plan.config, hook));
        if let Some(set) = &self.conns {
            set(table_limits(&plan.config.tcp));
        }
        if plan.applied.is_empty() && plan.refused.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else if !plan.applied.is_empty() {
            tracing::info!(
                applied = ?plan.applied,
                upstreams = ?plan.config.upstreams.iter().map(|u| u.uri.as_str()).collect::<Vec<_>>(),
                "configuration reloaded"
            );
        }
        let result = if plan.refused.is_empty() {
            ReloadResult::Ok
        } else {
            ReloadResult::Partial
        };
        self.current = plan.config;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Transport, parse_upstream};
    use crate::core::nosip::NoneHook;
    use std::sync::{Arc, Mutex};

    fn core(cfg: &Config, metrics: &Arc<Metrics>) -> Arc<Core> {
        Arc::new(Core::new(cfg, Box::new(NoneHook), metrics.clone()))
    }

    /// A reloader whose "file" is `text` (TOML), and the limits it set.
    struct Rig {
        text: Arc<Mutex<String>>,
        limits: Arc<Mutex<Option<TableLimits>>>,
        core: Arc<Core>,
        metrics: Arc<Metrics>,
        r: Reloader,
    }

    fn rig(custom_nosip: bool) -> Rig {
        let cfg = Config::default_config();
        let metrics = Arc::new(Metrics::new());
        let core = core(&cfg, &metrics);
        let text = Arc::new(Mutex::new(String::new()));
        let limits = Arc::new(Mutex::new(None));
        let t = text.clone();
        let opts = RunOpts {
            reload: Some(Box::new(move || {
                let text = t.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
                Ok(Config::from_toml(&text)?)
            })),
            set_log_level: None,
        };
        let l = limits.clone();
        let set: Arc<dyn Fn(TableLimits) + Send + Sync> = Arc::new(move |x| {
            if let Ok(mut g) = l.lock() {
                *g = Some(x);
            }
        });
        let r = Reloader::new(
            cfg,
            opts,
            custom_nosip,
            core.clone(),
            metrics.clone(),
            Some(set),
        );
        Rig {
            text,
            limits,
            core,
            metrics,
            r,
        }
    }

    impl Rig {
        fn file(&self, t: &str) {
            *self.text.lock().unwrap() = t.to_string();
        }
        fn count(&self, result: &str) -> bool {
            self.metrics.encode().contains(&format!(
                "sipedge_config_reloads_total{{result=\"{result}\"}} 1"
            ))
        }
    }

    #[test]
    fn reload_applies_upstreams_and_tcp_limits() {
        let mut g = rig(false);
        g.file("[proxy]\nupstreams = [\"sip:127.0.0.1:5090\"]\n[tcp]\nmax_connections = 7\n");
        assert_eq!(g.r.reload(), ReloadResult::Ok);
        assert!(g.count("ok"));
        let live = g.core.live();
        let t = &live.upstream.specs()[0].targets;
        let want = parse_upstream("t", "sip:127.0.0.1:5090").unwrap();
        assert_eq!(
            (t.len(), t[0].addr, t[0].transport),
            (1, want.addr, want.transport)
        );
        assert_eq!(live.tcp.max_connections, 7);
        assert_eq!(g.limits.lock().unwrap().unwrap().max_connections, 7);
        assert_eq!(g.r.current().tcp.max_connections, 7);
    }

    #[test]
    fn invalid_file_keeps_everything() {
        let mut g = rig(false);
        g.file("[proxy]\nupstreams = [\"sip:127.0.0.1:5060\"]\n"); // our own address
        assert_eq!(g.r.reload(), ReloadResult::Error);
        g.file("[proxy\n");
        assert_eq!(g.r.reload(), ReloadResult::Error);
        assert!(
            g.metrics
                .encode()
                .contains("sipedge_config_reloads_total{result=\"error\"} 2")
        );
        assert_eq!(g.r.current(), &Config::default_config());
        assert_eq!(
            g.core.live().upstream.specs(),
            Config::default_config().upstream_set_specs().as_slice()
        );
        assert!(g.limits.lock().unwrap().is_none());
    }

    #[test]
    fn restart_only_keys_refused_rest_applied() {
        let mut g = rig(false);
        g.file(
            "[proxy]\nlisten = [\"udp:127.0.0.1:5070\"]\nupstreams = [\"sip:127.0.0.1:5090;transport=tcp\"]\n",
        );
        assert_eq!(g.r.reload(), ReloadResult::Partial);
        assert!(g.count("partial"));
        assert_eq!(g.r.current().listen, Config::default_config().listen);
        assert_eq!(
            g.core.live().upstream.specs()[0].targets[0].transport,
            Some(Transport::Tcp)
        );
        // the refused key stays refused on the next reload of the same file
        assert_eq!(g.r.reload(), ReloadResult::Partial);
    }

    #[test]
    fn nosip_reload_builds_a_new_hook_unless_the_embedder_set_one() {
        for custom in [false, true] {
            let mut g = rig(custom);
            let before = Arc::as_ptr(&g.core.live().nosip) as *const u8;
            g.file("[nosip]\nhook = \"http-health\"\n");
            assert_eq!(g.r.reload(), ReloadResult::Ok);
            let after = Arc::as_ptr(&g.core.live().nosip) as *const u8;
            assert_eq!(before == after, custom, "custom={custom}");
        }
    }

    #[test]
    fn without_a_source_sighup_is_an_error() {
        let cfg = Config::default_config();
        let metrics = Arc::new(Metrics::new());
        let mut r = Reloader::new(
            cfg.clone(),
            RunOpts::default(),
            false,
            core(&cfg, &metrics),
            metrics,
            None,
        );
        assert_eq!(r.reload(), ReloadResult::Error);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_when_idle_at_timeout_or_on_second_signal() {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // nothing open, UDP quiet: over after DRAIN_IDLE
        let t0 = Instant::now();
        assert!(drain(&metrics, None, Duration::from_secs(30), &mut rx).await);
        let took = t0.elapsed();
        assert!(took >= DRAIN_IDLE && took < DRAIN_IDLE + Duration::from_millis(200));

        // UDP keeps arriving: over at the timeout
        let t0 = Instant::now();
        let traffic = async {
            for _ in 0..100 {
                metrics.bytes_in(Transport::Udp, 100);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            done = drain(&metrics, None, Duration::from_secs(5), &mut rx) => assert!(done),
            _ = traffic => panic!("traffic ran out first"),
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(5) && took < Duration::from_millis(5200));

        // a SIGHUP is ignored, a second stop ends it at once
        tx.send(Control::Reload).unwrap();
        tx.send(Control::Stop).unwrap();
        let t0 = Instant::now();
        assert!(!drain(&metrics, None, Duration::from_secs(30), &mut rx).await);
        assert!(t0.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_closes_idle_connections_only() {
        let metrics = Metrics::new();
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let table = ConnTable::<crate::transport::kernel::KernelIo>::new(TableLimits {
            max_connections: 10,
            max_per_ip: 10,
            write_queue_bytes: 1 << 16,
        });
        let (idle, _) = table.admit("192.0.2.1:1".parse().unwrap(), 0).unwrap();
        let (busy, _) = table.admit("192.0.2.1:2".parse().unwrap(), 0).unwrap();
        let t0 = Instant::now();
        let now_s = move || 100 + t0.elapsed().as_secs();
        idle.touch_rx(90);
        busy.touch_rx(100);
        let keep_busy = async {
            for _ in 0..100 {
                busy.touch_rx(now_s());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            // no reader tasks here: the killed connection stays in the table
            _ = drain(&metrics, Some((&table as &dyn DrainConns, &now_s)), Duration::from_secs(3), &mut rx) => {}
            _ = keep_busy => panic!("keep_busy ran out first"),
        }
        assert_eq!(idle.kill_reason(), Some(ReleaseReason::Shutdown));
        assert_eq!(busy.kill_reason(), None);
        close_all(&table, false).await;
        assert_eq!(busy.kill_reason(), Some(ReleaseReason::Shutdown));
    }
}
