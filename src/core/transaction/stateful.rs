//! The stateful proxy mode (`proxy.mode = "stateful"`): the transaction
//! tables, sharded by the server transaction's branch hash, between the
//! core's parse and its routing. A shard's lock is held only while its table
//! runs (no I/O, no await inside); the stateless mode does not build any of
//! this and pays one `Option` test per message.
//!
//! Request path: [`Stateful::before_request`] (retransmission, ACK, CANCEL
//! matching; the cap) → the core's §16 routing → [`Stateful::after_route`]
//! (the transaction takes the forwarded copy). Reply path:
//! [`Stateful::on_reply`] before the core's stateless reply routing, which
//! still handles replies of no transaction (2xx retransmissions after the
//! end, probe replies). Timers: [`Stateful::poll`] per shard, driven by the
//! backend.

use super::{
    MAX_SHARDS, Out, ReqVerdict, Stats, TargetId, TxnConfig, TxnRef, TxnTable, Upstreams,
    branch_shard,
};
use crate::core::proxy::{Core, Dest, Outcome, RcvInfo, SendKind, TopVia};
use crate::core::upstream::{Signal, UpstreamSets};
use crate::metrics::Metrics;
use crate::sip::msg::SipMsg;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Shortest gap between two timer rounds (the timers' resolution), ms.
pub const ROUND_TICK_MS: u64 = 20;
/// Longest gap between two timer rounds, ms (a deadline armed meanwhile is
/// at least 200 ms away, so this bounds its lateness too).
pub const ROUND_MAX_MS: u64 = 50;

struct Shard {
    table: TxnTable,
    /// Stats already exported to the metrics.
    published: Stats,
    active: usize,
}

/// The transaction tables of the stateful mode.
pub struct Stateful {
    shards: Box<[Mutex<Shard>]>,
    metrics: Arc<Metrics>,
    /// When the next timer round (every shard's [`Stateful::poll`]) is due,
    /// ms on the core's clock: whichever thread sees it due first claims it
    /// ([`Stateful::claim_round`]).
    next_round: AtomicU64,
}

/// What [`Stateful::before_request`] decided.
pub(crate) enum Pre {
    /// Handled: send what is in the transaction output.
    Done,
    /// No transaction: route and forward statelessly.
    Stateless,
    /// A new transaction: route, then [`Stateful::after_route`].
    Route { hash: u64, caller: Dest },
}

impl Stateful {
    /// `shards` tables (at most [`MAX_SHARDS`]) sharing `cfg.max_transactions`.
    pub fn new(cfg: &TxnConfig, shards: usize, metrics: Arc<Metrics>, now: u64) -> Stateful {
        let n = shards.clamp(1, MAX_SHARDS);
        let per = cfg.max_transactions.div_ceil(n as u32).max(1);
        let shards = (0..n)
            .map(|i| {
                let c = TxnConfig {
                    max_transactions: per,
                    ..cfg.clone()
                };
                Mutex::new(Shard {
                    table: TxnTable::shard(c, i, now),
                    published: Stats::default(),
                    active: 0,
                })
            })
            .collect();
        Stateful {
            shards,
            metrics,
            next_round: AtomicU64::new(0),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 40) % self.shards.len() as u64) as usize
    }

    /// A request: match it to a transaction first.
    pub(crate) fn before_request(
        &self,
        core: &Core,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        rcv: &RcvInfo,
        out: &mut Out,
    ) -> Pre {
        let Some(via) = top.and_then(|t| t.via) else {
            return Pre::Stateless; // the core answers 400
        };
        let hash = core.branch_hash(msg, &via);
        let udp_port = if via.rport.is_some() {
            None
        } else {
            Some(via.port.unwrap_or(5060))
        };
        let caller = core.reply_dest(rcv, udp_port);
        let now = core.now_ms();
        let mut sh = self.lock(self.shard_of(hash));
        let v = sh.table.on_request(now, msg, hash, caller, out);
        let pre = match v {
            ReqVerdict::Absorbed => Pre::Done,
            ReqVerdict::Forward => Pre::Stateless,
            ReqVerdict::New if msg.method() == b"ACK" || msg.method() == b"CANCEL" => {
                Pre::Stateless
            }
            ReqVerdict::New if !sh.table.has_room() => {
                sh.table.reject_full(msg, hash, caller, out);
                Pre::Done
            }
            ReqVerdict::New => Pre::Route { hash, caller },
        };
        self.publish(&mut sh);
        drop(sh);
        if let Pre::Done = pre {
            self.metrics.request(msg.method());
            self.count(out, 0);
        }
        pre
    }

    /// The core routed a new request (`fwd`: the copy it built): the
    /// transaction takes it when it goes to a target of an upstream set or
    /// another literal address; a host-name next hop stays stateless.
    pub(crate) fn after_route(
        &self,
        core: &Core,
        o: Outcome,
        fwd: &[u8],
        hash: u64,
        caller: Dest,
        out: &mut Out,
    ) -> Outcome {
        let Outcome::Send {
            dest,
            kind: SendKind::Request,
        } = o
        else {
            return o;
        };
        let target = core
            .upstreams()
            .targets_at(dest.addr, Some(dest.transport))
            .next();
        let now = core.now_ms();
        let mut sh = self.lock(self.shard_of(hash));
        let r = sh.table.create(now, fwd, hash, caller, target, dest, out);
        self.publish(&mut sh);
        drop(sh);
        match r {
            Some(_) => {
                // the request itself was counted by the core's forwarding step
                self.count_local(out);
                Outcome::Txn
            }
            None => o,
        }
    }

    /// A reply: `true` when a transaction took it.
    pub(crate) fn on_reply(
        &self,
        core: &Core,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        code: u16,
        rcv: &RcvInfo,
        out: &mut Out,
    ) -> bool {
        let Some(TopVia {
            h: vh,
            via: Some(via),
            ..
        }) = top
        else {
            return false;
        };
        let Some(shard) = via.branch.and_then(|b| branch_shard(b.get(msg.buf))) else {
            return false;
        };
        if shard >= self.shards.len() {
            return false;
        }
        let now = core.now_ms();
        let mut up = Sets(core.upstreams());
        let mut sh = self.lock(shard);
        let taken = sh
            .table
            .on_reply_via(now, msg, via, vh.value, rcv, out, &mut up);
        self.publish(&mut sh);
        drop(sh);
        if taken {
            self.metrics.reply(code);
            self.count(out, 0);
        }
        taken
    }

    /// Shard `shard`'s next timer deadline (core milliseconds; a lower
    /// bound), `None` when no timer is armed.
    pub fn next_deadline(&self, shard: usize) -> Option<u64> {
        self.lock(shard).table.next_deadline()
    }

    /// A transport error towards `addr` (refused / failed connect, RST):
    /// every try waiting on it, in every shard, fails over now. Returns the
    /// tries failed.
    pub fn transport_failed(
        &self,
        core: &Core,
        addr: std::net::SocketAddr,
        transport: crate::config::Transport,
        out: &mut Out,
    ) -> usize {
        let now = core.now_ms();
        let mut up = Sets(core.upstreams());
        let start = out.sends.len();
        let mut n = 0;
        for i in 0..self.shards.len() {
            let mut sh = self.lock(i);
            n += sh
                .table
                .transport_failed(now, addr, transport, out, &mut up);
            self.publish(&mut sh);
        }
        self.count(out, start);
        n
    }

    /// Run shard `shard`'s timers (when [`Stateful::next_deadline`] is due).
    pub fn poll(&self, core: &Core, shard: usize, out: &mut Out) {
        let now = core.now_ms();
        let mut up = Sets(core.upstreams());
        let mut sh = self.lock(shard);
        let start = out.sends.len();
        sh.table.poll(now, out, &mut up);
        self.publish(&mut sh);
        drop(sh);
        self.count(out, start);
    }

    /// Claim the timer round due at `now`: true for one caller per round
    /// (it runs [`Stateful::poll`] on every shard, then
    /// [`Stateful::plan_round`]); false while the round is not due or
    /// another thread took it. Lets the threads that receive traffic run
    /// the timers on the way, instead of a timer thread waking for them.
    pub fn claim_round(&self, now: u64) -> bool {
        let due = self.next_round.load(Ordering::Relaxed);
        now >= due
            && self
                .next_round
                .compare_exchange(
                    due,
                    now + ROUND_TICK_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// After a round run at `now`: the next one is due at the earliest
    /// deadline of any shard, within [`ROUND_TICK_MS`]..=[`ROUND_MAX_MS`]
    /// from `now` (returned).
    pub fn plan_round(&self, now: u64) -> u64 {
        let next = (0..self.shards.len())
            .filter_map(|s| self.next_deadline(s))
            .min()
            .unwrap_or(u64::MAX)
            .clamp(now + ROUND_TICK_MS, now + ROUND_MAX_MS);
        self.next_round.store(next, Ordering::Relaxed);
        next
    }

    /// Sending try `r` failed (no connection, socket error): fail over.
    pub fn send_failed(&self, core: &Core, r: TxnRef, out: &mut Out) {
        let now = core.now_ms();
        let mut up = Sets(core.upstreams());
        let mut sh = self.lock(TxnTable::ref_shard(r));
        let start = out.sends.len();
        sh.table.transport_error(now, r, out, &mut up);
        self.publish(&mut sh);
        drop(sh);
        self.count(out, start);
    }

    /// Transactions alive (all shards).
    pub fn active(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).active).sum()
    }

    /// Export the shard's counter changes.
    fn publish(&self, sh: &mut Shard) {
        let s = sh.table.stats;
        let p = sh.published;
        let active = sh.table.active();
        if s != p || active != sh.active {
            let d = Stats {
                created: s.created - p.created,
                timeouts: s.timeouts - p.timeouts,
                failovers: s.failovers - p.failovers,
                cap_rejects: s.cap_rejects - p.cap_rejects,
                absorbed: s.absorbed - p.absorbed,
            };
            self.metrics
                .transactions(&d, active as i64 - sh.active as i64);
            sh.published = s;
            sh.active = active;
        }
    }

    /// Count the sends from `start` on (forwarded / local replies).
    fn count(&self, out: &Out, start: usize) {
        for s in &out.sends[start.min(out.sends.len())..] {
            match s.kind {
                SendKind::Request => self.metrics.forwarded_request(),
                SendKind::Reply => self.metrics.forwarded_reply(),
                SendKind::LocalReply(c) => self.metrics.local_reply(c),
                SendKind::NosipReply => {}
            }
        }
    }

    fn count_local(&self, out: &Out) {
        for s in &out.sends {
            if let SendKind::LocalReply(c) = s.kind {
                self.metrics.local_reply(c);
            }
        }
    }
}

/// The upstream sets as the transaction layer's [`Upstreams`]: the next
/// target of the first try's set, health reported to the sets.
struct Sets(Arc<UpstreamSets>);

impl Upstreams for Sets {
    fn pick(
        &mut self,
        call_id: &[u8],
        exclude: &[TargetId],
        like: &Dest,
    ) -> Option<(TargetId, Dest)> {
        let set = self.0.target(*exclude.first()?)?.set;
        let (id, t) = self.0.pick(set, call_id, exclude)?;
        let addr = t.addr();
        if addr.is_ipv4() != like.addr.is_ipv4() {
            return None;
        }
        Some((
            id,
            Dest {
                transport: t.transport().unwrap_or(like.transport),
                addr,
                conn: None,
                local: like.local,
            },
        ))
    }
    fn failure(&mut self, target: TargetId, signal: Signal, now_ms: u64) {
        self.0.mark_failure(target, signal, now_ms);
    }
    fn success(&mut self, target: TargetId, now_ms: u64) {
        self.0.mark_success(target, now_ms);
    }
}
