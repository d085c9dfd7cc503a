//! The transaction layer of the stateful proxy mode (RFC 3261 §17 as used by
//! a stateful proxy, §16). Sans-IO: parsed messages and a millisecond clock
//! in, messages to send ([`Out`]) out. Timers A–K (and L, RFC 6026) run in
//! virtual time: the caller passes `now` and calls [`TxnTable::poll`].
//!
//! One slot per server transaction, holding its one client transaction (the
//! current try towards an upstream; failover runs the tries one after the
//! other, RFC 3261 §16.7 picks the best answer among them):
//!
//! - The slot table is a fixed-capacity `Vec` with a free list and a
//!   key → slot map sized at creation (`max_transactions`; beyond it the
//!   request is answered `503` with `Retry-After`, counted).
//! - Each slot keeps one buffer: `[forwarded request][last response sent to
//!   the caller][best final response held back]`. A freed slot keeps the
//!   buffer's capacity, so steady-state traffic does not allocate.
//! - Our client branch is `z9hG4bKsT` + 16 hex digits: 6 of the server key,
//!   1 of the shard (table), 6 of the slot index, 2 of its generation and 1
//!   of the try. A reply finds
//!   its transaction without a lookup (§17.1.3: branch + CSeq method); the
//!   try digit tells a late reply of an earlier try.
//! - Server transactions are keyed by the core's branch hash (the client's
//!   branch + sent-by, or for RFC 2543 clients Call-ID, From tag, CSeq number,
//!   Request-URI and sent-by; §17.2.3) mixed with the method (ACK → INVITE,
//!   CANCEL on its own). With RFC 2543 clients the To tag of the ACK is not
//!   compared with the one of our response.

mod client;
mod server;
pub mod stateful;
pub mod wheel;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod tests;

use crate::config::Transport;
use crate::core::proxy::{Dest, RcvInfo, SendKind};
use crate::sip::msg::{HeaderKind, HeaderSpan, SipMsg, header_param, parse_cseq};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write as _;
use wheel::{Entry, Wheel};

pub use super::upstream::{Signal, TargetId};
pub use stateful::Stateful;

/// Tries per request at most (the try is one hex digit of the branch).
pub const MAX_TRIES: usize = 8;
/// Bits of the slot index in the branch (the shard's 4 bits above them).
pub const SLOT_BITS: u32 = 24;
/// Slots per table at most.
pub const MAX_SLOTS: u32 = (1 << SLOT_BITS) - 1;
/// Bits of the server key written into the branch (checked on replies).
const KEY_MASK: u64 = 0xFF_FFFF;
/// Shards (tables) at most.
pub const MAX_SHARDS: usize = 16;
/// Timer wheel: 10 ms ticks, 4096 buckets (a 41 s turn).
const WHEEL_TICK_MS: u64 = 10;
const WHEEL_BUCKETS: usize = 4096;
/// Pooled buffers per table at most (beyond it they go back to the allocator).
const POOL_MAX: usize = 1024;
/// Marker of our stateful branches (the stateless core writes `z9hG4bKsE`).
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKsT";
const STATELESS_PREFIX: &[u8] = b"z9hG4bKsE";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The upstream sets as the transaction layer sees them (implemented over
/// `UpstreamSets` by the integration; by fakes in tests).
pub trait Upstreams {
    /// The next target for a request of this Call-ID, skipping `exclude`
    /// (the targets tried; the first one names the set). `like`: where the
    /// first try went (its transport and listen socket).
    fn pick(
        &mut self,
        call_id: &[u8],
        exclude: &[TargetId],
        like: &Dest,
    ) -> Option<(TargetId, Dest)>;
    fn failure(&mut self, target: TargetId, signal: Signal, now_ms: u64);
    fn success(&mut self, target: TargetId, now_ms: u64);
}

/// No upstream sets: no failover.
pub struct NoUpstreams;

impl Upstreams for NoUpstreams {
    fn pick(&mut self, _: &[u8], _: &[TargetId], _: &Dest) -> Option<(TargetId, Dest)> {
        None
    }
    fn failure(&mut self, _: TargetId, _: Signal, _: u64) {}
    fn success(&mut self, _: TargetId, _: u64) {}
}

/// Transaction-layer settings (`[transaction]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// RTT estimate (RFC 3261 default 500 ms).
    pub t1_ms: u64,
    /// Longest non-INVITE / final-response retransmission interval (4 s).
    pub t2_ms: u64,
    /// Longest time a message stays in the network (5 s).
    pub t4_ms: u64,
    /// Timer B and F: the wait for a final (INVITE: any) answer before the
    /// try fails (64·T1 when 0; Kamailio's `fr_timer`).
    pub fr_timeout_ms: u64,
    /// Timer C (§16.6 step 11): an INVITE with a provisional answer but no
    /// final one is cancelled after this long (> 3 min).
    pub timer_c_ms: u64,
    /// Transactions at most; beyond it `503` + `Retry-After`.
    pub max_transactions: u32,
    /// Final reply codes that make the request go to the next target.
    pub failover_codes: Vec<u16>,
    /// Tries per request at most (first one included), 1..=[`MAX_TRIES`].
    pub max_tries: u8,
    /// `Retry-After` seconds of the cap's 503.
    pub retry_after_s: u32,
    /// Longest stay of a finished transaction absorbing retransmissions
    /// (Timers D, I, J, K, L; RFC 3261: up to 64·T1 = 32 s on UDP). 0: the
    /// RFC values. Kamailio's `wait_timer` (5 s) is the usual shortcut: the
    /// table then holds ~5 s of traffic instead of ~32 s.
    pub linger_ms: u64,
    /// The 100 Trying for an INVITE goes to the caller only when no answer
    /// was forwarded this long after the INVITE (RFC 3261 §17.2.1 allows
    /// skipping it when the TU answers within 200 ms). 0: at once.
    pub trying_delay_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> TxnConfig {
        TxnConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            fr_timeout_ms: 0,
            timer_c_ms: 180_000,
            max_transactions: 262_144,
            failover_codes: vec![503],
            max_tries: 3,
            retry_after_s: 5,
            linger_ms: 0,
            trying_delay_ms: 200,
        }
    }
}

impl TxnConfig {
    fn linger(&self, rfc: u64) -> u64 {
        if self.linger_ms > 0 {
            rfc.min(self.linger_ms)
        } else {
            rfc
        }
    }
    /// Timers J and L (64·T1), capped by `linger_ms`.
    fn wait_long(&self) -> u64 {
        self.linger(64 * self.t1_ms)
    }
    /// Timer D (at least 32 s, 64·T1), capped by `linger_ms`.
    fn timer_d(&self) -> u64 {
        self.linger(32_000u64.max(64 * self.t1_ms))
    }
    /// Timers I and K (T4), capped by `linger_ms`.
    fn wait_t4(&self) -> u64 {
        self.linger(self.t4_ms)
    }
    fn timer_b(&self) -> u64 {
        if self.fr_timeout_ms > 0 {
            self.fr_timeout_ms
        } else {
            64 * self.t1_ms
        }
    }
}

/// Counters of the table (the integration exports them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub created: u64,
    pub timeouts: u64,
    pub failovers: u64,
    /// Requests refused with 503 because the table was full.
    pub cap_rejects: u64,
    /// Retransmitted requests absorbed (answered from the transaction).
    pub absorbed: u64,
}

/// Where a try was sent (to report a transport error back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRef {
    /// Shard << [`SLOT_BITS`] | slot.
    pub slot: u32,
    pub generation: u8,
    pub attempt: u8,
}

/// One message to send: `Out::buf[range]` to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxSend {
    pub dest: Dest,
    pub range: std::ops::Range<usize>,
    pub kind: SendKind,
    /// Set for requests sent by a client transaction.
    pub txn: Option<TxnRef>,
}

/// Messages produced by one call (reused: no allocation in steady state).
#[derive(Debug, Default)]
pub struct Out {
    pub buf: Vec<u8>,
    pub sends: Vec<TxSend>,
}

impl Out {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.sends.clear();
    }
    pub fn bytes(&self, s: &TxSend) -> &[u8] {
        &self.buf[s.range.clone()]
    }
    fn push(&mut self, dest: Dest, bytes: &[u8], kind: SendKind, txn: Option<TxnRef>) {
        let s = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.sends.push(TxSend {
            dest,
            range: s..self.buf.len(),
            kind,
            txn,
        });
    }
    /// Record `buf[s..]` (written by a builder) as a send.
    fn push_built(&mut self, s: usize, dest: Dest, kind: SendKind, txn: Option<TxnRef>) {
        self.sends.push(TxSend {
            dest,
            range: s..self.buf.len(),
            kind,
            txn,
        });
    }
}

/// What to do with a request after [`TxnTable::on_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqVerdict {
    /// No transaction: route it, then [`TxnTable::create`] one (ACK and an
    /// unmatched CANCEL are forwarded statelessly instead).
    New,
    /// Handled here (retransmission, non-2xx ACK, CANCEL); see [`Out`].
    Absorbed,
    /// Forward statelessly (2xx ACK, unmatched CANCEL).
    Forward,
}

/// The method classes that key transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Invite,
    Ack,
    Cancel,
    Other,
}

impl MethodKind {
    pub fn of(method: &[u8]) -> MethodKind {
        match method {
            b"INVITE" => MethodKind::Invite,
            b"ACK" => MethodKind::Ack,
            b"CANCEL" => MethodKind::Cancel,
            _ => MethodKind::Other,
        }
    }
}

/// Server transaction key: the core's branch hash mixed with the method
/// (§17.2.3: ACK matches the INVITE; CANCEL is a transaction of its own).
pub fn server_key(branch_hash: u64, method: &[u8]) -> u64 {
    let m: u64 = match MethodKind::of(method) {
        MethodKind::Invite | MethodKind::Ack => 1,
        MethodKind::Cancel => 2,
        MethodKind::Other => {
            // FNV-1a of the method name
            method.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        }
    };
    let k = branch_hash ^ m.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if k == 0 { 1 } else { k }
}

/// The key is already a hash: pass it through.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Srv {
    /// No final answer sent yet.
    Proceeding,
    /// A final non-2xx sent (INVITE: Timer G/H; non-INVITE: Timer J).
    Completed,
    /// The ACK came (Timer I).
    Confirmed,
    /// A 2xx forwarded (RFC 6026 Accepted, Timer L).
    Accepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cli {
    /// Calling (INVITE) / Trying (non-INVITE).
    Calling,
    Proceeding,
    /// A final answer came (or the try was given up).
    Done,
}

/// What the retransmission timer re-sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retx {
    None,
    /// Timer A / E: the request to the upstream.
    Request,
    /// The CANCEL to the upstream (Timer E of the CANCEL's transaction).
    Cancel,
    /// Timer G: the final answer to the caller.
    Response,
}

/// What the timeout timer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tmo {
    None,
    /// Timer B (INVITE) / F (non-INVITE).
    Final,
    /// Timer C (INVITE after a provisional answer).
    C,
    /// Timer H (wait for the ACK of our non-2xx final).
    H,
}

/// One server transaction and its current client transaction.
#[derive(Debug)]
struct Slot {
    /// Server key; 0 = free.
    key: u64,
    generation: u8,
    invite: bool,
    srv: Srv,
    cli: Cli,
    attempt: u8,
    ntried: u8,
    tried: [TargetId; MAX_TRIES],
    /// The request went to an upstream set (failover possible).
    from_set: bool,
    /// CANCEL received from the caller; CANCEL sent downstream.
    cancelled: bool,
    cancel_sent: bool,
    /// Best final answer held back (§16.7): code, and whether it must be
    /// generated (a 408 for a timeout) rather than taken from `buf`.
    best_code: u16,
    best_local: bool,
    /// Code of the last answer sent to the caller (0: none).
    sent_code: u16,
    retx: Retx,
    retx_iv: u64,
    retx_at: u64,
    /// CANCEL retransmissions stop here (64·T1 after it was sent).
    retx_until: u64,
    tmo: Tmo,
    tmo_at: u64,
    /// The slot is freed at this time (Timers D, I, J, K, L); 0: not yet.
    end_at: u64,
    /// The delayed 100 Trying is due at this time (0: none pending).
    trying_at: u64,
    /// Deadline of this slot's live wheel entry (0: none).
    armed: u64,
    caller: Dest,
    up: Dest,
    buf: Vec<u8>,
    req_len: u32,
    sent_end: u32,
    /// Offset of the 16 hex digits of our branch in `buf`.
    branch_at: u32,
}

const NO_DEST: Dest = Dest {
    transport: Transport::Udp,
    addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    conn: None,
    local: 0,
};

impl Slot {
    fn empty() -> Slot {
        Slot {
            key: 0,
            generation: 0,
            invite: false,
            srv: Srv::Proceeding,
            cli: Cli::Calling,
            attempt: 0,
            ntried: 0,
            tried: [TargetId(0); MAX_TRIES],
            from_set: false,
            cancelled: false,
            cancel_sent: false,
            best_code: 0,
            best_local: false,
            sent_code: 0,
            retx: Retx::None,
            retx_iv: 0,
            retx_at: 0,
            retx_until: 0,
            tmo: Tmo::None,
            tmo_at: 0,
            end_at: 0,
            trying_at: 0,
            armed: 0,
            caller: NO_DEST,
            up: NO_DEST,
            buf: Vec::new(),
            req_len: 0,
            sent_end: 0,
            branch_at: 0,
        }
    }

    fn request(&self) -> &[u8] {
        &self.buf[..self.req_len as usize]
    }
    fn sent(&self) -> &[u8] {
        &self.buf[self.req_len as usize..self.sent_end as usize]
    }
    /// Replace the stored answer sent to the caller (the held-back best stays).
    fn set_sent(&mut self, bytes: &[u8]) {
        let (a, b) = (self.req_len as usize, self.sent_end as usize);
        if b == self.buf.len() {
            // no best answer held back (the usual case): no shifting
            self.buf.truncate(a);
            self.buf.extend_from_slice(bytes);
        } else {
            self.buf.splice(a..b, bytes.iter().copied());
        }
        self.sent_end = (a + bytes.len()) as u32;
    }
    fn set_best(&mut self, bytes: &[u8]) {
        self.buf.truncate(self.sent_end as usize);
        self.buf.extend_from_slice(bytes);
    }
    fn txn_ref(&self, slot: u32) -> TxnRef {
        TxnRef {
            slot,
            generation: self.generation,
            attempt: self.attempt,
        }
    }
    /// Earliest pending deadline.
    fn next_deadline(&self) -> u64 {
        let mut d = u64::MAX;
        if self.retx != Retx::None {
            d = d.min(self.retx_at);
        }
        if self.tmo != Tmo::None {
            d = d.min(self.tmo_at);
        }
        if self.end_at != 0 {
            d = d.min(self.end_at);
        }
        if self.trying_at != 0 {
            d = d.min(self.trying_at);
        }
        d
    }
}

/// The transaction table of one shard.
pub struct TxnTable {
    cfg: TxnConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    map: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    wheel: Wheel,
    due: Vec<Entry>,
    /// Buffers of finished transactions that no longer need theirs (an
    /// accepted INVITE), for the next new transaction (bounded).
    pool: Vec<Vec<u8>>,
    hdrs: Vec<HeaderSpan>,
    cap: u32,
    /// This table's shard number (written into our branches).
    shard: u32,
    pub stats: Stats,
}

/// Size in bytes of one slot's fixed part (its buffer comes on top).
pub const SLOT_SIZE: usize = std::mem::size_of::<Slot>();

impl TxnTable {
    /// A table for `cfg.max_transactions` transactions (slots are created
    /// on first use; the map is sized up front).
    pub fn new(cfg: TxnConfig, now: u64) -> TxnTable {
        TxnTable::shard(cfg, 0, now)
    }

    /// Table number `shard` (< [`MAX_SHARDS`]) of a sharded set.
    pub fn shard(cfg: TxnConfig, shard: usize, now: u64) -> TxnTable {
        let cap = cfg.max_transactions.clamp(1, MAX_SLOTS);
        let mut cfg = cfg;
        cfg.max_tries = cfg.max_tries.clamp(1, MAX_TRIES as u8);
        TxnTable {
            cfg,
            slots: Vec::new(),
            free: Vec::new(),
            // sized for the usual load; it grows (rarely) towards the cap
            map: HashMap::with_capacity_and_hasher(cap.min(65536) as usize, Default::default()),
            wheel: Wheel::new(WHEEL_BUCKETS, WHEEL_TICK_MS, now),
            due: Vec::new(),
            pool: Vec::new(),
            hdrs: Vec::with_capacity(32),
            cap,
            shard: (shard % MAX_SHARDS) as u32,
            stats: Stats::default(),
        }
    }

    /// The shard a [`TxnRef`] belongs to.
    pub fn ref_shard(r: TxnRef) -> usize {
        (r.slot >> SLOT_BITS) as usize
    }

    pub fn config(&self) -> &TxnConfig {
        &self.cfg
    }

    /// Transactions alive.
    pub fn active(&self) -> usize {
        self.map.len()
    }

    /// Room for one more transaction.
    pub fn has_room(&self) -> bool {
        (self.map.len() as u32) < self.cap
    }

    /// Bytes held by the slots' buffers (capacity, live and free slots).
    pub fn buffer_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.buf.capacity()).sum::<usize>()
            + self.pool.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Earliest deadline armed in the wheel (a lower bound: a cancelled
    /// timer may still be counted), `None` when nothing is armed. The
    /// backend sleeps until then instead of ticking.
    pub fn next_deadline(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// A completed non-INVITE transaction (Timer J): only its answer is
    /// resent from now on (to a retransmitted request), so the buffer keeps
    /// just that answer and gives the rest of its memory back.
    fn keep_only_sent(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        let (a, b) = (s.req_len as usize, s.sent_end as usize);
        s.buf.truncate(b);
        s.buf.drain(..a);
        s.req_len = 0;
        s.sent_end = (b - a) as u32;
        s.branch_at = 0;
        s.buf.shrink_to(s.buf.len());
    }

    /// The slot's buffer is no longer needed (its answer need not be
    /// retransmitted nor its request re-sent): give it to the pool, so a
    /// finished transaction holds only its fixed part.
    fn drop_buffer(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        let mut buf = std::mem::take(&mut s.buf);
        s.req_len = 0;
        s.sent_end = 0;
        s.branch_at = 0;
        buf.clear();
        if self.pool.len() < POOL_MAX && buf.capacity() <= 16 * 1024 {
            self.pool.push(buf);
        }
    }

    fn alloc(&mut self, key: u64) -> Option<u32> {
        if !self.has_room() {
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::empty());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[i as usize];
        let generation = s.generation.wrapping_add(1);
        let mut buf = std::mem::take(&mut s.buf);
        if buf.capacity() == 0
            && let Some(b) = self.pool.pop()
        {
            buf = b;
        }
        *s = Slot::empty();
        s.generation = generation;
        s.key = key;
        s.buf = buf;
        s.buf.clear();
        self.map.insert(key, i);
        Some(i)
    }

    fn release(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        if s.key == 0 {
            return;
        }
        self.map.remove(&s.key);
        s.key = 0;
        s.armed = 0;
        // a big message's buffer is not kept for reuse
        if s.buf.capacity() > 16 * 1024 {
            s.buf = Vec::new();
        }
        self.free.push(i);
    }

    /// (Re-)arm the slot's wheel entry at its earliest deadline.
    fn arm(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        let d = s.next_deadline();
        if d == u64::MAX || d == s.armed {
            return;
        }
        s.armed = d;
        self.wheel.insert(Entry {
            slot: i,
            generation: s.generation,
            at: d,
        });
    }

    /// Run the timers due at `now`.
    pub fn poll(&mut self, now: u64, out: &mut Out, up: &mut dyn Upstreams) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        for e in due.iter() {
            let Some(s) = self.slots.get_mut(e.slot as usize) else {
                continue;
            };
            if s.key == 0 || s.generation != e.generation || s.armed != e.at {
                continue; // stale entry
            }
            s.armed = 0;
            self.fire(now, e.slot, out, up);
            if self.slots[e.slot as usize].key != 0 {
                self.arm(e.slot);
            }
        }
        self.due = due;
    }

    /// Wheel entries held (live and stale): bounded by the slots' re-arms.
    pub fn wheel_len(&self) -> usize {
        self.wheel.entries()
    }

    fn fire(&mut self, now: u64, i: u32, out: &mut Out, up: &mut dyn Upstreams) {
        // the timeout first: it stops the retransmissions it ends
        let s = &self.slots[i as usize];
        if s.tmo != Tmo::None && s.tmo_at <= now {
            match s.tmo {
                Tmo::Final | Tmo::C => self.client_timeout(now, i, out, up),
                Tmo::H => self.timer_h(now, i),
                Tmo::None => {}
            }
        }
        let s = &self.slots[i as usize];
        if s.trying_at != 0 && s.trying_at <= now {
            self.send_trying(i, out);
        }
        let s = &self.slots[i as usize];
        if s.retx != Retx::None && s.retx_at <= now {
            self.fire_retx(now, i, out);
        }
        let s = &self.slots[i as usize];
        if s.end_at != 0 && s.end_at <= now && s.retx == Retx::None && s.tmo == Tmo::None {
            self.release(i);
        }
    }

    /// The 100 Trying of an INVITE (§16.2, §17.2.1), unless an answer was
    /// forwarded meanwhile.
    pub(super) fn send_trying(&mut self, i: u32, out: &mut Out) {
        let s = &mut self.slots[i as usize];
        s.trying_at = 0;
        if !s.invite || s.srv != Srv::Proceeding || s.sent_code != 0 || s.req_len == 0 {
            return;
        }
        let start = out.buf.len();
        if let Some(m) = TxnTable::parse_request(&s.buf[..s.req_len as usize], &mut self.hdrs) {
            build_reply(&m, 1, 100, 0, None, &mut out.buf);
        }
        if out.buf.len() > start {
            out.push_built(start, s.caller, SendKind::LocalReply(100), None);
            s.set_sent(&out.buf[start..]);
            s.sent_code = 100;
        }
    }

    /// Timers A, E (request), E of the CANCEL, G (final answer).
    fn fire_retx(&mut self, now: u64, i: u32, out: &mut Out) {
        let t2 = self.cfg.t2_ms;
        let s = &mut self.slots[i as usize];
        match s.retx {
            Retx::Request => {
                let r = s.txn_ref(self.shard << SLOT_BITS | i);
                out.push(s.up, s.request(), SendKind::Request, Some(r));
                // Timer A doubles without bound; Timer E is capped at T2
                s.retx_iv = if s.invite {
                    s.retx_iv * 2
                } else {
                    (s.retx_iv * 2).min(t2)
                };
                s.retx_at = now + s.retx_iv;
            }
            Retx::Cancel => {
                if now >= s.retx_until {
                    s.retx = Retx::None;
                    return;
                }
                self.send_cancel(i, out);
                let s = &mut self.slots[i as usize];
                s.retx_iv = (s.retx_iv * 2).min(t2);
                s.retx_at = now + s.retx_iv;
            }
            Retx::Response => {
                out.push(s.caller, s.sent(), SendKind::Reply, None);
                s.retx_iv = (s.retx_iv * 2).min(t2);
                s.retx_at = now + s.retx_iv;
            }
            Retx::None => {}
        }
    }

    /// Parse the stored request (spans into the slot's buffer).
    fn parse_request<'a>(buf: &'a [u8], hdrs: &'a mut Vec<HeaderSpan>) -> Option<SipMsg<'a>> {
        let end = crate::sip::framer::find_header_end(buf, 0).unwrap_or(buf.len());
        SipMsg::parse(buf, end, hdrs).ok()
    }
}

/// A To tag for the answers we generate: stable per transaction (the ACK of
/// a retransmitted answer carries the same tag).
fn local_tag(key: u64) -> u32 {
    (key ^ (key >> 32)) as u32
}

/// Reason phrase of the answers we generate.
fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        408 => "Request Timeout",
        481 => "Call/Transaction Does Not Exist",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// An answer to `req` (§8.2.6.2): its Via headers after the first `skip`
/// ones (ours, in a stored forwarded request), From, To (with a tag above
/// 100 when it had none), Call-ID, CSeq. Written to `out`.
fn build_reply(
    req: &SipMsg<'_>,
    skip_vias: usize,
    code: u16,
    tag: u32,
    retry_after: Option<u32>,
    out: &mut Vec<u8>,
) {
    let buf = req.buf;
    let line = |h: &HeaderSpan| &buf[h.line.start as usize..h.value.end as usize];
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", reason(code));
    for h in req
        .headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Via)
        .skip(skip_vias)
    {
        out.extend_from_slice(line(h));
        out.extend_from_slice(b"\r\n");
    }
    for k in [
        HeaderKind::From,
        HeaderKind::To,
        HeaderKind::CallId,
        HeaderKind::CSeq,
    ] {
        if let Some(h) = req.first(k) {
            out.extend_from_slice(line(h));
            if k == HeaderKind::To && code > 100 && header_param(req.value(h), b"tag").is_none() {
                let _ = write!(out, ";tag=sE{tag:08x}");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(s) = retry_after {
        let _ = write!(out, "Retry-After: {s}\r\n");
    }
    let _ = write!(
        out,
        "Server: sipedge/{}\r\nContent-Length: 0\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
}

/// ACK (§17.1.1.3) or CANCEL (§9.1) for the stored forwarded request: its
/// Request-URI, our Via only (its branch), Route headers, From, Call-ID, the
/// CSeq number; To from the final answer (ACK) or the request (CANCEL).
fn build_hop_request(
    req: &SipMsg<'_>,
    method: &[u8],
    to: Option<&[u8]>,
    attempt_digit: Option<(usize, u8)>,
    out: &mut Vec<u8>,
) {
    let buf = req.buf;
    let line = |h: &HeaderSpan| &buf[h.line.start as usize..h.value.end as usize];
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(req.uri());
    out.extend_from_slice(b" SIP/2.0\r\n");
    if let Some(h) = req.first(HeaderKind::Via) {
        let s = out.len();
        out.extend_from_slice(line(h));
        // an earlier try's branch: patch its try digit
        if let Some((at, d)) = attempt_digit
            && let Some(off) = at.checked_sub(h.line.start as usize)
            && let Some(b) = out.get_mut(s + off)
        {
            *b = d;
        }
        out.extend_from_slice(b"\r\n");
    }
    for h in req.headers.iter().filter(|h| h.kind == HeaderKind::Route) {
        out.extend_from_slice(line(h));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\n");
    for k in [HeaderKind::From, HeaderKind::CallId] {
        if let Some(h) = req.first(k) {
            out.extend_from_slice(line(h));
            out.extend_from_slice(b"\r\n");
        }
    }
    match to {
        Some(v) => {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        None => {
            if let Some(h) = req.first(HeaderKind::To) {
                out.extend_from_slice(line(h));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    let num = req
        .first(HeaderKind::CSeq)
        .and_then(|h| parse_cseq(req.value(h)))
        .map_or(0, |c| c.0);
    let _ = write!(out, "CSeq: {num} ");
    out.extend_from_slice(method);
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
}

/// Offset of the 16 hex digits after our stateless branch prefix in the
/// first Via header of a forwarded request.
fn find_branch(msg: &SipMsg<'_>) -> Option<usize> {
    let h = msg.first(HeaderKind::Via)?;
    let v = msg.value(h);
    let pat = b"branch=";
    let p = memchr::memmem::find(v, pat)? + pat.len();
    let rest = &v[p..];
    if rest.len() < STATELESS_PREFIX.len() + 16 || !rest.starts_with(STATELESS_PREFIX) {
        return None;
    }
    Some(h.value.start as usize + p)
}

/// Write our stateful branch (prefix + 16 hex digits) at `at`.
fn write_branch(buf: &mut [u8], at: usize, key: u64, slot: u32, generation: u8, attempt: u8) {
    let field = u64::from(slot) & ((1 << (SLOT_BITS + 4)) - 1);
    let v = ((key & KEY_MASK) << 40)
        | (field << 12)
        | (u64::from(generation) << 4)
        | u64::from(attempt & 0xf);
    buf[at..at + BRANCH_PREFIX.len()].copy_from_slice(BRANCH_PREFIX);
    let d = at + BRANCH_PREFIX.len();
    for k in 0..16 {
        buf[d + k] = HEX[((v >> (60 - 4 * k)) & 0xf) as usize];
    }
}

/// Decode our stateful branch: (key's low 24 bits, shard << [`SLOT_BITS`] |
/// slot, generation, try).
fn decode_branch(b: &[u8]) -> Option<(u32, u32, u8, u8)> {
    let h = b.strip_prefix(BRANCH_PREFIX)?;
    if h.len() != 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in h {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some((
        (v >> 40) as u32,
        ((v >> 12) as u32) & ((1 << (SLOT_BITS + 4)) - 1),
        (v >> 4) as u8,
        (v & 0xf) as u8,
    ))
}

/// §16.7 step 6: is `new` a better final answer than `old` (0: none)?
/// 6xx first, then the lowest class; within a class the answers that help a
/// resubmission (401, 407, 415, 420, 484) are preferred, else the first stays.
fn better(new: u16, old: u16) -> bool {
    if old == 0 {
        return true;
    }
    let (cn, co) = (new / 100, old / 100);
    if (cn == 6) != (co == 6) {
        return cn == 6;
    }
    if cn != co {
        return cn < co;
    }
    let pref = |c: u16| matches!(c, 401 | 407 | 415 | 420 | 484);
    pref(new) && !pref(old)
}

/// Dest to answer a message that came in with `rcv` on its own connection / address.
fn source_dest(rcv: &RcvInfo) -> Dest {
    Dest {
        transport: rcv.transport,
        addr: rcv.src,
        conn: rcv.conn,
        local: rcv.local,
    }
}

/// The shard a reply's top-Via branch names, if it is one of our stateful
/// branches.
pub fn branch_shard(branch: &[u8]) -> Option<usize> {
    decode_branch(branch).map(|(_, f, _, _)| (f >> SLOT_BITS) as usize)
}
