//! Process life cycle, for both backends: signals (SIGTERM / SIGINT drain,
//! a second one stops at once; SIGHUP reloads), the graceful drain, and the
//! configuration reload that swaps the core's [`Live`] settings.

use super::conn::{ConnTable, ReleaseReason, TableLimits};
use crate::config::{Config, TcpLimits, plan_reload};
use crate::core::Core;
use crate::core::live::Live;
use crate::metrics::{Metrics, ReloadResult};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
    conns: Option<(&ConnTable, &dyn Fn() -> u64)>,
    timeout: Duration,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> bool {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    tracing::info!(
        timeout_secs = timeout.as_secs_f64(),
        connections = conns.map_or(0, |(t, _)| t.len()),
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
            let now_s = now_s();
            for c in table.all() {
                if now_s.saturating_sub(c.last_active()) >= idle_secs && !c.has_backlog() {
                    c.kill(ReleaseReason::Shutdown);
                }
            }
        }
        let udp = metrics.udp_bytes_in();
        if udp != udp_seen {
            udp_seen = udp;
            udp_quiet_since = now;
        }
        let open = conns.map_or(0, |(t, _)| t.len());
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

/// Ask every connection to close (reason `shutdown`, FIN) and wait a little
/// ([`CLOSE_WAIT`]) for their tasks to do it; skipped when `graceful` is false.
pub async fn close_all(table: &ConnTable, graceful: bool) {
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
        self.core.set_live(Live::new(&plan.config, hook));
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
