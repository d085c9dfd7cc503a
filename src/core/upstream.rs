//! Upstream sets and their health (issue #10).
//!
//! A set is a list of targets (a SIP URI each, with a weight and a
//! priority) and an [`Algorithm`]. [`UpstreamSets::pick`] chooses among the
//! targets that are up and not excluded (the ones a transaction already
//! tried). Health is one small block of atomics per target, written by the
//! probe driver and the passive signals, read lock-free by the hot path.
//!
//! A target goes down after `down_after` consecutive failures
//! ([`UpstreamSets::mark_failure`]: a probe timeout or a non-alive probe
//! reply, ICMP unreachable, a TCP connect failure or reset, a transaction
//! timeout, a reply whose code is in `failure_codes`) and comes back up after
//! `up_after` consecutive successful probes ([`UpstreamSets::mark_success`]).
//! With probing off (`ping_interval_ms = 0`) nothing could bring a target
//! back, so health is off too: every target stays up.
//!
//! The probe state machine is sans-IO ([`Prober`]): due probes out
//! ([`Prober::poll`]), replies ([`Prober::on_reply`]) and the clock in; the
//! backends send the OPTIONS the core writes ([`super::Core::write_probe`])
//! and hand back the replies the core recognised by their Via branch.

use crate::config::Transport;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Milliseconds of a monotonic clock chosen by the caller (virtual in tests).
pub type Millis = u64;

/// Index of a set ([`UpstreamSets::set_id`]; the first set is the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId(pub u16);

/// Index of a target, unique across all sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub u32);

/// How a set picks a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// The next target that is up, in turn.
    RoundRobin,
    /// Weighted rendezvous (HRW) hash of the Call-ID: a dialog sticks to one
    /// target; a target going down moves only its own calls.
    CallIdHash,
    /// At random in proportion to the weights.
    Weighted,
    /// The lowest `priority` value among the targets up; weighted among
    /// equals (as DNS SRV, RFC 2782).
    Priority,
}

impl Algorithm {
    /// Config spelling (`algorithm = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::CallIdHash => "call-id-hash",
            Algorithm::Weighted => "weighted",
            Algorithm::Priority => "priority",
        }
    }

    /// Parse the config spelling.
    pub fn parse(s: &str) -> Option<Algorithm> {
        [
            Algorithm::RoundRobin,
            Algorithm::CallIdHash,
            Algorithm::Weighted,
            Algorithm::Priority,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// A set of SIP status codes 100..=699 (`alive_codes`, `failure_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodeSet([u64; 10]);

impl CodeSet {
    /// Every final reply (200..=699): the default `alive_codes`.
    pub fn any_final() -> CodeSet {
        let mut s = CodeSet::default();
        (200..=699).for_each(|c| s.insert(c));
        s
    }

    /// Only `code`.
    pub fn of(codes: &[u16]) -> CodeSet {
        let mut s = CodeSet::default();
        codes.iter().for_each(|&c| s.insert(c));
        s
    }

    pub fn insert(&mut self, code: u16) {
        if (100..=699).contains(&code) {
            let i = usize::from(code - 100);
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        (100..=699).contains(&code) && {
            let i = usize::from(code - 100);
            self.0[i / 64] & (1 << (i % 64)) != 0
        }
    }

    /// Add one config item: `"any"` (every final reply), a class `"2xx"`,
    /// or a code `"503"`. `None`: not one of those.
    pub fn add_item(&mut self, item: &str) -> Option<()> {
        let b = item.as_bytes();
        match b {
            b"any" => (200..=699).for_each(|c| self.insert(c)),
            [d @ b'1'..=b'6', b'x' | b'X', b'x' | b'X'] => {
                let base = u16::from(d - b'0') * 100;
                (base..base + 100).for_each(|c| self.insert(c));
            }
            _ => {
                let c: u16 = item.parse().ok()?;
                if !(100..=699).contains(&c) {
                    return None;
                }
                self.insert(c);
            }
        }
        Some(())
    }

    /// The items back, compact: `any`, classes, then single codes.
    pub fn items(&self) -> Vec<String> {
        if *self == CodeSet::any_final() {
            return vec!["any".into()];
        }
        let mut out = Vec::new();
        for class in 1..=6u16 {
            let r = class * 100..class * 100 + 100;
            if r.clone().all(|c| self.contains(c)) {
                out.push(format!("{class}xx"));
            } else {
                out.extend(r.filter(|&c| self.contains(c)).map(|c| c.to_string()));
            }
        }
        out
    }
}

/// Health settings of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// OPTIONS probe period per target; 0: no probes and no health (every
    /// target stays up).
    pub ping_interval_ms: u64,
    /// A probe without a final reply after this long failed.
    pub ping_timeout_ms: u64,
    /// Consecutive failures that take a target down.
    pub down_after: u32,
    /// Consecutive successful probes that bring it back up.
    pub up_after: u32,
    /// Probe reply codes that mean alive (default: any final reply).
    pub alive_codes: CodeSet,
    /// Reply codes that count as a failure, to probes and to requests
    /// (default: 503).
    pub failure_codes: CodeSet,
    /// Hold-down after a passive transport signal (ICMP unreachable, TCP
    /// connect failure or reset): when not 0, such a signal takes the
    /// target down at once (not one of `down_after`), and successful probes
    /// bring it back only once this long has passed. 0 (default): a passive
    /// signal is one failure like the others.
    pub hold_down_ms: u64,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            ping_interval_ms: 0,
            ping_timeout_ms: 2000,
            down_after: 3,
            up_after: 2,
            alive_codes: CodeSet::any_final(),
            failure_codes: CodeSet::of(&[503]),
            hold_down_ms: 0,
        }
    }
}

/// One target of a set, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// `sip:HOST:PORT[;transport=udp|tcp]` (what probes use as Request-URI).
    pub uri: String,
    pub addr: SocketAddr,
    /// `None`: the transport a request arrived on.
    pub transport: Option<Transport>,
    /// Share of traffic for `weighted` / `call-id-hash` / `priority` (≥ 1).
    pub weight: u32,
    /// Lower is preferred by `priority`.
    pub priority: u32,
}

/// One upstream set, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub algorithm: Algorithm,
    pub targets: Vec<TargetSpec>,
    pub health: HealthSpec,
}

/// What took a target's health down by one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A probe got no final reply within `ping_timeout_ms`.
    ProbeTimeout,
    /// A probe was answered with a code that is not alive (or is a failure code).
    ProbeReply(u16),
    /// ICMP destination unreachable (UDP), or a connected socket's ECONNREFUSED.
    Unreachable,
    /// A TCP connection to the target could not be opened.
    ConnectFailed,
    /// A TCP connection to the target was reset.
    Reset,
    /// A probe could not be sent at all.
    SendFailed,
    /// A client transaction to the target timed out (Timer B / F).
    TransactionTimeout,
    /// A reply from the target whose code is in `failure_codes`.
    Reply(u16),
}

impl Signal {
    /// A transport-level signal about the target's address (not a probe or
    /// SIP outcome): these start the hold-down (`hold_down_ms`).
    pub fn is_passive_transport(self) -> bool {
        matches!(
            self,
            Signal::Unreachable | Signal::ConnectFailed | Signal::Reset
        )
    }

    /// Label / log form.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ProbeTimeout => "probe_timeout",
            Signal::ProbeReply(_) => "probe_reply",
            Signal::Unreachable => "unreachable",
            Signal::ConnectFailed => "connect_failed",
            Signal::Reset => "reset",
            Signal::SendFailed => "send_failed",
            Signal::TransactionTimeout => "transaction_timeout",
            Signal::Reply(_) => "reply_code",
        }
    }
}

/// Lock-free health of one target.
#[derive(Debug)]
struct Health {
    up: AtomicBool,
    /// Consecutive failures / successes.
    fails: AtomicU32,
    oks: AtomicU32,
    /// When `up` last changed.
    changed_at: AtomicU64,
    /// Successful probes do not count before this (hold-down).
    held_until: AtomicU64,
}

/// Metric children of one target, resolved at start-up.
#[derive(Debug, Clone)]
struct TargetMetrics {
    up: IntGauge,
    probe_seconds: Histogram,
    to_up: IntCounter,
    to_down: IntCounter,
}

/// A target with its live health.
#[derive(Debug)]
pub struct Target {
    pub spec: TargetSpec,
    pub set: SetId,
    /// HRW seed (hash of the URI: stable across restarts and reorderings).
    seed: u64,
    health: Health,
    metrics: TargetMetrics,
}

impl Target {
    pub fn uri(&self) -> &str {
        &self.spec.uri
    }
    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }
    pub fn transport(&self) -> Option<Transport> {
        self.spec.transport
    }
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Set {
    name: String,
    algorithm: Algorithm,
    /// Its targets: `targets[first..first + len]`.
    first: usize,
    len: usize,
    health: HealthSpec,
    /// Round-robin position / weighted draw counter.
    turn: AtomicUsize,
}

/// Called with `false` when every target is down, `true` when one is back
/// (the readiness setter, `set_upstreams_up`).
pub type ReadinessHook = Box<dyn Fn(bool) + Send + Sync>;

/// All upstream sets: selection and health. Shared (`Arc`) by the core, the
/// probe driver and the transaction layer; every method takes `&self`.
pub struct UpstreamSets {
    sets: Vec<Set>,
    targets: Vec<Target>,
    /// Targets up, all sets together.
    up_count: AtomicUsize,
    /// Some set has health on (probes).
    health_on: bool,
    readiness: std::sync::OnceLock<Arc<dyn Fn(bool) + Send + Sync>>,
    /// What these sets were built from (a reload compares it).
    specs: Vec<SetSpec>,
    /// The registered metric vectors (a reload's sets reuse them).
    vecs: Option<Vecs>,
    /// Target ids of these sets are `id_base..id_base + targets.len()`: a
    /// reload's sets start after the old ones, so an id held across a reload
    /// (a transaction in flight, a probe reply) names no target of the new
    /// sets instead of another target.
    id_base: u32,
}

impl std::fmt::Debug for UpstreamSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSets")
            .field("sets", &self.sets)
            .field("targets", &self.targets)
            .finish()
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across runs and builds.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Weighted rendezvous score of a target for a key: `-w / ln(u)`, u in (0, 1).
fn hrw_score(key: u64, seed: u64, weight: u32) -> f64 {
    let u = ((mix(key ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

impl UpstreamSets {
    /// Build the sets; metrics are registered on `registry` when given (a
    /// registration error is logged, the sets work without).
    pub fn new(specs: &[SetSpec], registry: Option<&Registry>) -> UpstreamSets {
        let vecs = registry.and_then(|r| match register(r) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("upstream metrics not registered: {e}");
                None
            }
        });
        Self::build(specs, vecs, 0)
    }

    /// The sets a reload (SIGHUP) installs for `specs`: the same metric
    /// vectors, the readiness hook, and the health (up/down, runs of
    /// failures and successes) of every target that stays (same set name and
    /// URI); removed targets lose their metric series. Ids start after ours.
    pub fn rebuild(&self, specs: &[SetSpec]) -> UpstreamSets {
        let base = self
            .id_base
            .wrapping_add(self.targets.len() as u32)
            .min(u32::MAX / 2);
        let new = Self::build(specs, self.vecs.clone(), base);
        for t in &new.targets {
            let set = &new.sets[usize::from(t.set.0)].name;
            let old = self
                .targets
                .iter()
                .find(|o| o.spec.uri == t.spec.uri && self.sets[usize::from(o.set.0)].name == *set);
            if let Some(o) = old {
                let (a, b) = (&o.health, &t.health);
                let up = a.up.load(Ordering::Relaxed);
                b.up.store(up, Ordering::Relaxed);
                b.fails
                    .store(a.fails.load(Ordering::Relaxed), Ordering::Relaxed);
                b.oks
                    .store(a.oks.load(Ordering::Relaxed), Ordering::Relaxed);
                b.changed_at
                    .store(a.changed_at.load(Ordering::Relaxed), Ordering::Relaxed);
                b.held_until
                    .store(a.held_until.load(Ordering::Relaxed), Ordering::Relaxed);
                t.metrics.up.set(i64::from(up));
                if !up {
                    new.up_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if let Some((up, probe, trans, _)) = &self.vecs {
            for o in &self.targets {
                let set = &self.sets[usize::from(o.set.0)].name;
                let stays = new.targets.iter().any(|t| {
                    t.spec.uri == o.spec.uri && new.sets[usize::from(t.set.0)].name == *set
                });
                if !stays {
                    let l = [set.as_str(), o.spec.uri.as_str()];
                    let _ = up.remove_label_values(&l);
                    let _ = probe.remove_label_values(&l);
                    let _ = trans.remove_label_values(&[l[0], l[1], "up"]);
                    let _ = trans.remove_label_values(&[l[0], l[1], "down"]);
                }
            }
        }
        if let Some(f) = self.readiness.get() {
            let _ = new.readiness.set(f.clone());
            let (was, is) = (!self.all_down(), !new.all_down());
            if was != is {
                f(is);
            }
        }
        new
    }

    /// What these sets were built from.
    pub fn specs(&self) -> &[SetSpec] {
        &self.specs
    }

    fn build(specs: &[SetSpec], vecs: Option<Vecs>, id_base: u32) -> UpstreamSets {
        let mut sets = Vec::with_capacity(specs.len());
        let mut targets = Vec::new();
        for (si, s) in specs.iter().enumerate() {
            let set = SetId(si as u16);
            sets.push(Set {
                name: s.name.clone(),
                algorithm: s.algorithm,
                first: targets.len(),
                len: s.targets.len(),
                health: s.health.clone(),
                turn: AtomicUsize::new(0),
            });
            for t in &s.targets {
                let metrics = match &vecs {
                    Some((up, probe, trans, _)) => TargetMetrics {
                        up: up.with_label_values(&[&s.name, &t.uri]),
                        probe_seconds: probe.with_label_values(&[&s.name, &t.uri]),
                        to_up: trans.with_label_values(&[&s.name, &t.uri, "up"]),
                        to_down: trans.with_label_values(&[&s.name, &t.uri, "down"]),
                    },
                    None => TargetMetrics::detached(),
                };
                metrics.up.set(1);
                targets.push(Target {
                    spec: t.clone(),
                    set,
                    seed: mix(fnv1a(t.uri.as_bytes())),
                    health: Health {
                        up: AtomicBool::new(true),
                        fails: AtomicU32::new(0),
                        oks: AtomicU32::new(0),
                        changed_at: AtomicU64::new(0),
                        held_until: AtomicU64::new(0),
                    },
                    metrics,
                });
            }
        }
        UpstreamSets {
            up_count: AtomicUsize::new(targets.len()),
            health_on: specs.iter().any(|s| s.health.ping_interval_ms > 0),
            sets,
            targets,
            readiness: std::sync::OnceLock::new(),
            specs: specs.to_vec(),
            vecs,
            id_base,
        }
    }

    /// The index of target `id` in these sets (`None`: not one of theirs).
    fn idx(&self, id: TargetId) -> Option<usize> {
        let i = id.0.checked_sub(self.id_base)? as usize;
        (i < self.targets.len()).then_some(i)
    }

    /// The id of the target at index `i`.
    fn id(&self, i: usize) -> TargetId {
        TargetId(self.id_base.wrapping_add(i as u32))
    }

    /// Install the readiness setter (once; later calls are ignored).
    pub fn set_readiness_hook(&self, f: ReadinessHook) {
        let _ = self.readiness.set(Arc::from(f));
    }

    /// The set named `name`.
    pub fn set_id(&self, name: &str) -> Option<SetId> {
        self.sets
            .iter()
            .position(|s| s.name == name)
            .map(|i| SetId(i as u16))
    }

    /// Name of a set.
    pub fn set_name(&self, set: SetId) -> Option<&str> {
        self.sets.get(usize::from(set.0)).map(|s| s.name.as_str())
    }

    /// Number of sets.
    pub fn set_count(&self) -> usize {
        self.sets.len()
    }

    /// Health settings of a set.
    pub fn health_spec(&self, set: SetId) -> Option<&HealthSpec> {
        self.sets.get(usize::from(set.0)).map(|s| &s.health)
    }

    /// The target `id`.
    pub fn target(&self, id: TargetId) -> Option<&Target> {
        self.targets.get(self.idx(id)?)
    }

    /// Every target, with its id.
    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &Target)> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| (self.id(i), t))
    }

    /// The targets of `set`.
    pub fn set_targets(&self, set: SetId) -> impl Iterator<Item = (TargetId, &Target)> {
        let r = self
            .sets
            .get(usize::from(set.0))
            .map_or(0..0, |s| s.first..s.first + s.len);
        r.map(|i| (self.id(i), &self.targets[i]))
    }

    /// Targets at `addr` (one per set it appears in); `transport` narrows
    /// to targets using it (a target without one matches any).
    pub fn targets_at(
        &self,
        addr: SocketAddr,
        transport: Option<Transport>,
    ) -> impl Iterator<Item = TargetId> + '_ {
        self.targets().filter_map(move |(id, t)| {
            let t_ok = match (transport, t.spec.transport) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            (t.spec.addr == addr && t_ok).then_some(id)
        })
    }

    /// `addr` is a target's address (`ip_only`: any port of its IP).
    pub fn is_target_addr(&self, addr: SocketAddr, ip_only: bool) -> bool {
        self.targets
            .iter()
            .any(|t| t.spec.addr == addr || (ip_only && t.spec.addr.ip() == addr.ip()))
    }

    /// Some set probes its targets (health is on).
    pub fn health_on(&self) -> bool {
        self.health_on
    }

    /// Target `id` is up (an unknown id is not).
    pub fn is_up(&self, id: TargetId) -> bool {
        self.target(id).is_some_and(Target::is_up)
    }

    /// Every target of every set is down.
    pub fn all_down(&self) -> bool {
        self.up_count.load(Ordering::Relaxed) == 0
    }

    /// Choose a target of `set` for a request with this Call-ID among the
    /// targets that are up and not in `exclude` (already tried by this
    /// transaction). `None`: no such target (or no such set).
    pub fn pick(
        &self,
        set: SetId,
        call_id: &[u8],
        exclude: &[TargetId],
    ) -> Option<(TargetId, &Target)> {
        let s = self.sets.get(usize::from(set.0))?;
        let range = s.first..s.first + s.len;
        let ok = |i: usize| self.targets[i].is_up() && !exclude.contains(&self.id(i));
        let i = match s.algorithm {
            Algorithm::RoundRobin => {
                let n = s.len.max(1);
                let start = s.turn.fetch_add(1, Ordering::Relaxed) % n;
                (0..s.len)
                    .map(|k| s.first + (start + k) % n)
                    .find(|&i| ok(i))?
            }
            Algorithm::CallIdHash => {
                let key = fnv1a(call_id);
                range.filter(|&i| ok(i)).max_by(|&a, &b| {
                    let t = &self.targets;
                    hrw_score(key, t[a].seed, t[a].spec.weight).total_cmp(&hrw_score(
                        key,
                        t[b].seed,
                        t[b].spec.weight,
                    ))
                })?
            }
            Algorithm::Weighted => self.weighted(s, range.filter(|&i| ok(i)))?,
            Algorithm::Priority => {
                let best = range
                    .clone()
                    .filter(|&i| ok(i))
                    .map(|i| self.targets[i].spec.priority)
                    .min()?;
                self.weighted(
                    s,
                    range.filter(|&i| ok(i) && self.targets[i].spec.priority == best),
                )?
            }
        };
        Some((self.id(i), &self.targets[i]))
    }

    /// A weighted draw among `eligible` (cloned iterator walked twice).
    fn weighted(&self, s: &Set, eligible: impl Iterator<Item = usize> + Clone) -> Option<usize> {
        let total: u64 = eligible
            .clone()
            .map(|i| u64::from(self.targets[i].spec.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = mix(s.turn.fetch_add(1, Ordering::Relaxed) as u64) % total;
        for i in eligible {
            let w = u64::from(self.targets[i].spec.weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// One failure of target `id`: `down_after` in a row take it down.
    /// No effect when its set has health off.
    pub fn mark_failure(&self, id: TargetId, signal: Signal, now: Millis) {
        let Some((t, s)) = self.with_set(id) else {
            return;
        };
        // counted also with health off (`sipedge_upstream_failure_signals_total`)
        if let Some((.., signals)) = &self.vecs {
            signals.with_label_values(&[signal.as_str()]).inc();
        }
        if s.health.ping_interval_ms == 0 {
            return;
        }
        let h = &t.health;
        h.oks.store(0, Ordering::Relaxed);
        let mut fails = h.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if s.health.hold_down_ms > 0 && signal.is_passive_transport() {
            // down at once, and held down
            h.held_until
                .store(now.saturating_add(s.health.hold_down_ms), Ordering::Relaxed);
            fails = fails.max(s.health.down_after);
            h.fails.store(fails, Ordering::Relaxed);
        }
        if fails >= s.health.down_after && h.up.swap(false, Ordering::AcqRel) {
            h.changed_at.store(now, Ordering::Relaxed);
            self.transition(t, s, false, Some(signal), fails);
        }
    }

    /// One success of target `id` (an alive probe reply; a transaction that
    /// got a final reply): a down target comes back after `up_after` in a row.
    pub fn mark_success(&self, id: TargetId, now: Millis) {
        let Some((t, s)) = self.with_set(id) else {
            return;
        };
        let h = &t.health;
        if h.fails.load(Ordering::Relaxed) != 0 {
            h.fails.store(0, Ordering::Relaxed);
        }
        if h.up.load(Ordering::Relaxed) {
            return;
        }
        if now < h.held_until.load(Ordering::Relaxed) {
            // hold-down: this success does not count
            return;
        }
        let oks = h.oks.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if oks >= s.health.up_after && !h.up.swap(true, Ordering::AcqRel) {
            h.changed_at.store(now, Ordering::Relaxed);
            self.transition(t, s, true, None, oks);
        }
    }

    /// A reply from target `id` to a forwarded request (stateless mode): a
    /// code in `failure_codes` is a failure; another final reply ends a
    /// run of failures of a target that is up (it does not bring a down
    /// target back: only probes do).
    pub fn mark_reply(&self, id: TargetId, code: u16, now: Millis) {
        let Some((t, s)) = self.with_set(id) else {
            return;
        };
        if s.health.failure_codes.contains(code) {
            self.mark_failure(id, Signal::Reply(code), now);
        } else if code >= 200 && t.is_up() && t.health.fails.load(Ordering::Relaxed) != 0 {
            t.health.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A passive signal about an address (ICMP error, TCP failure): a
    /// failure of every target there.
    pub fn mark_failure_at(
        &self,
        addr: SocketAddr,
        transport: Option<Transport>,
        signal: Signal,
        now: Millis,
    ) {
        for id in self.targets_at(addr, transport) {
            self.mark_failure(id, signal, now);
        }
    }

    /// When target `id`'s state last changed (0: never).
    pub fn changed_at(&self, id: TargetId) -> Option<Millis> {
        self.target(id)
            .map(|t| t.health.changed_at.load(Ordering::Relaxed))
    }

    fn with_set(&self, id: TargetId) -> Option<(&Target, &Set)> {
        let t = self.targets.get(self.idx(id)?)?;
        Some((t, &self.sets[usize::from(t.set.0)]))
    }

    fn transition(&self, t: &Target, s: &Set, up: bool, signal: Option<Signal>, run: u32) {
        t.metrics.up.set(i64::from(up));
        if up {
            t.metrics.to_up.inc();
            tracing::info!(set = %s.name, target = %t.spec.uri, successes = run, "upstream target up");
            if self.up_count.fetch_add(1, Ordering::AcqRel) == 0 {
                tracing::info!("an upstream target is up again: ready");
                self.readiness(true);
            }
        } else {
            t.metrics.to_down.inc();
            let why = signal.map_or("", Signal::as_str);
            tracing::warn!(set = %s.name, target = %t.spec.uri, signal = why, failures = run, "upstream target down");
            if self.up_count.fetch_sub(1, Ordering::AcqRel) == 1 {
                tracing::warn!("every upstream target is down: not ready");
                self.readiness(false);
            }
        }
    }

    /// Tell the readiness hook (the core wires `Readiness::set_upstreams_up`).
    fn readiness(&self, up: bool) {
        if let Some(f) = self.readiness.get() {
            f(up);
        }
    }

    /// Record a probe's round trip (`sipedge_upstream_probe_seconds`).
    pub fn observe_probe(&self, id: TargetId, secs: f64) {
        if let Some(t) = self.target(id) {
            t.metrics.probe_seconds.observe(secs);
        }
    }
}

/// up, probe latency, transitions, failure signals.
type Vecs = (IntGaugeVec, HistogramVec, IntCounterVec, IntCounterVec);

/// Buckets of `sipedge_upstream_probe_seconds`: 100 µs .. 5 s.
const PROBE_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];

fn register(r: &Registry) -> prometheus::Result<Vecs> {
    let up = IntGaugeVec::new(
        Opts::new(
            "sipedge_upstream_up",
            "1 when the upstream target is up (gets new requests), 0 when down",
        ),
        &["set", "target"],
    )?;
    let probe = HistogramVec::new(
        HistogramOpts::new(
            "sipedge_upstream_probe_seconds",
            "Round trip of answered OPTIONS probes to upstream targets",
        )
        .buckets(PROBE_BUCKETS.to_vec()),
        &["set", "target"],
    )?;
    let trans = IntCounterVec::new(
        Opts::new(
            "sipedge_upstream_transitions_total",
            "Upstream target state changes, by the state entered",
        ),
        &["set", "target", "to"],
    )?;
    let signals = IntCounterVec::new(
        Opts::new(
            "sipedge_upstream_failure_signals_total",
            "Failure signals about upstream targets, by kind (probe_timeout, probe_reply, \
             unreachable, connect_failed, reset, send_failed, transaction_timeout, reply_code)",
        ),
        &["signal"],
    )?;
    r.register(Box::new(up.clone()))?;
    r.register(Box::new(probe.clone()))?;
    r.register(Box::new(trans.clone()))?;
    r.register(Box::new(signals.clone()))?;
    Ok((up, probe, trans, signals))
}

impl TargetMetrics {
    /// Children of unregistered vectors (no registry given).
    fn detached() -> TargetMetrics {
        let h = Histogram::with_opts(HistogramOpts::new("x", "x")).ok();
        let g = IntGauge::new("x", "x").ok();
        let c = || IntCounter::new("x", "x").ok();
        // constant names and help: these constructors do not fail
        match (g, h, c(), c()) {
            (Some(up), Some(probe_seconds), Some(to_up), Some(to_down)) => TargetMetrics {
                up,
                probe_seconds,
                to_up,
                to_down,
            },
            _ => unreachable!("constant metric options are valid"),
        }
    }
}

// ---------------------------------------------------------------------------
// Probes: the sans-IO state machine.
// ---------------------------------------------------------------------------

/// A probe to send now: the core writes it ([`super::Core::write_probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeDue {
    pub target: TargetId,
    pub seq: u32,
}

/// A reply to a probe, recognised by the core by its Via branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReply {
    pub target: TargetId,
    pub seq: u32,
    pub code: u16,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    next_due: Millis,
    seq: u32,
    /// The probe in flight: (seq, sent at).
    outstanding: Option<(u32, Millis)>,
}

/// Per-target probe schedule: which probes are due, which timed out, what a
/// reply means. Owned by one driver (the kernel backend's probe task, the
/// afpacket stack thread); health goes to the shared [`UpstreamSets`].
#[derive(Debug)]
pub struct Prober {
    sets: std::sync::Arc<UpstreamSets>,
    st: Vec<ProbeState>,
}

impl Prober {
    /// First probes of every probed target are due at `now`.
    pub fn new(sets: std::sync::Arc<UpstreamSets>, now: Millis) -> Prober {
        let st = vec![
            ProbeState {
                next_due: now,
                ..ProbeState::default()
            };
            sets.targets.len()
        ];
        Prober { sets, st }
    }

    /// Follow a reload: when `sets` are not the ones probed so far, probe
    /// them from now on (every probed target due at `now`; replies to the old
    /// sets' probes no longer match). Returns whether they changed.
    pub fn follow(&mut self, sets: &Arc<UpstreamSets>, now: Millis) -> bool {
        if Arc::ptr_eq(&self.sets, sets) {
            return false;
        }
        *self = Prober::new(sets.clone(), now);
        true
    }

    /// Some target is probed at all.
    pub fn active(&self) -> bool {
        self.sets.sets.iter().any(|s| s.health.ping_interval_ms > 0)
    }

    fn spec(&self, i: usize) -> &HealthSpec {
        &self.sets.sets[usize::from(self.sets.targets[i].set.0)].health
    }

    /// Time out probes in flight (a failure each) and push the probes due
    /// now to `due`.
    pub fn poll(&mut self, now: Millis, due: &mut Vec<ProbeDue>) {
        for i in 0..self.st.len() {
            let h = self.spec(i).clone();
            if h.ping_interval_ms == 0 {
                continue;
            }
            let id = self.sets.id(i);
            let st = &mut self.st[i];
            if let Some((_, sent)) = st.outstanding
                && now >= sent.saturating_add(h.ping_timeout_ms)
            {
                st.outstanding = None;
                self.sets.mark_failure(id, Signal::ProbeTimeout, now);
            }
            let st = &mut self.st[i];
            if now >= st.next_due {
                st.seq = st.seq.wrapping_add(1);
                st.outstanding = Some((st.seq, now));
                st.next_due = now.saturating_add(h.ping_interval_ms);
                due.push(ProbeDue {
                    target: id,
                    seq: st.seq,
                });
            }
        }
    }

    /// The probe could not be sent: a failure now, no timeout later.
    pub fn send_failed(&mut self, p: ProbeDue, now: Millis) {
        if let Some(st) = self.sets.idx(p.target).and_then(|i| self.st.get_mut(i))
            && st.outstanding.is_some_and(|(s, _)| s == p.seq)
        {
            st.outstanding = None;
            self.sets.mark_failure(p.target, Signal::SendFailed, now);
        }
    }

    /// ICMP unreachable (or ECONNREFUSED) for `addr`: one failure of each
    /// target there; a probe in flight to it is over (it does not also
    /// time out later).
    pub fn on_unreachable(&mut self, addr: SocketAddr, transport: Option<Transport>, now: Millis) {
        let ids: Vec<TargetId> = self.sets.targets_at(addr, transport).collect();
        for id in ids {
            if let Some(st) = self.sets.idx(id).and_then(|i| self.st.get_mut(i)) {
                st.outstanding = None;
            }
            self.sets.mark_failure(id, Signal::Unreachable, now);
        }
    }

    /// A reply to a probe. Returns whether it answered the probe in flight
    /// (a provisional reply is accepted but keeps the probe waiting).
    /// A code in `failure_codes`, or not in `alive_codes`, is a failure.
    pub fn on_reply(&mut self, r: ProbeReply, now: Millis) -> bool {
        let Some(i) = self.sets.idx(r.target) else {
            return false;
        };
        let Some(st) = self.st.get(i) else {
            return false;
        };
        let Some((seq, sent)) = st.outstanding else {
            return false;
        };
        if seq != r.seq {
            return false;
        }
        if r.code < 200 {
            return true;
        }
        self.st[i].outstanding = None;
        self.sets
            .observe_probe(r.target, now.saturating_sub(sent) as f64 / 1000.0);
        let h = self.spec(i);
        if h.failure_codes.contains(r.code) || !h.alive_codes.contains(r.code) {
            self.sets
                .mark_failure(r.target, Signal::ProbeReply(r.code), now);
        } else {
            self.sets.mark_success(r.target, now);
        }
        true
    }

    /// When [`Self::poll`] has something to do next (`None`: never).
    pub fn next_wakeup(&self) -> Option<Millis> {
        self.st
            .iter()
            .enumerate()
            .filter_map(|(i, st)| {
                let h = self.spec(i);
                (h.ping_interval_ms > 0).then(|| {
                    let t = st
                        .outstanding
                        .map_or(st.next_due, |(_, s)| s.saturating_add(h.ping_timeout_ms));
                    t.min(st.next_due)
                })
            })
            .min()
    }
}

/// Branch prefix of our probes (the proxy's own branches continue with hex).
pub const PROBE_BRANCH: &[u8] = b"z9hG4bKsEp";

/// Write a probe's branch: prefix, target, seq and a check of both keyed by
/// `secret` (so a reply cannot be forged without seeing the probe).
pub fn write_probe_branch(out: &mut Vec<u8>, secret: u64, p: ProbeDue) {
    use std::io::Write as _;
    out.extend_from_slice(PROBE_BRANCH);
    let check = probe_check(secret, p.target, p.seq);
    let _ = write!(out, "{:x}.{:x}.{:08x}", p.target.0, p.seq, check);
}

fn probe_check(secret: u64, t: TargetId, seq: u32) -> u32 {
    (mix(secret ^ (u64::from(t.0) << 32 | u64::from(seq))) >> 32) as u32
}

/// Parse a branch written by [`write_probe_branch`]; `None` when it is not
/// one of ours or the check fails.
pub fn parse_probe_branch(branch: &[u8], secret: u64) -> Option<ProbeDue> {
    let rest = branch.strip_prefix(PROBE_BRANCH)?;
    let mut it = rest.split(|&c| c == b'.');
    let hex = |b: Option<&[u8]>| -> Option<u32> {
        let b = b?;
        if b.is_empty() || b.len() > 8 {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
    };
    let p = ProbeDue {
        target: TargetId(hex(it.next())?),
        seq: hex(it.next())?,
    };
    let check = hex(it.next())?;
    (it.next().is_none() && check == probe_check(secret, p.target, p.seq)).then_some(p)
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
