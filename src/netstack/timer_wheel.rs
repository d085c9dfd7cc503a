//! One hashed hierarchical timer wheel for the whole stack (every TCB's
//! next deadline lives here), after Varghese & Lauck's scheme as Linux's
//! `kernel/time/timer.c` and tokio's time driver use it.
//!
//! Six levels of 64 slots; a slot of level L spans 64^L ticks, so the wheel
//! covers 2^36 ticks (2.2 years at 1 ms) and farther timers wait in the top
//! level and are re-placed when it turns. Each level keeps a 64-bit
//! occupancy mask, so finding the next expiring slot is a rotate and a
//! `trailing_zeros`. Timers live in a slab of doubly linked nodes indexed by
//! a key → node map: `schedule` and `cancel` are O(1).
//!
//! Firing is exact, not rounded to ticks: a timer whose tick has come is
//! moved to a short `due` list and fires at the first [`TimerWheel::expire`]
//! whose `now` reaches its deadline — never before it, never later.
//! [`TimerWheel::next_deadline`] may be earlier than the earliest timer
//! (when a higher level must cascade) but never later.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::{Duration, Instant, take_earlier};

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Ticks the levels cover.
const MAX_TICKS: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// The `due` list's index in `heads`.
const DUE: usize = LEVELS * SLOTS;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    at: Instant,
    tick: u64,
    prev: u32,
    next: u32,
    /// Index into `heads` (level * 64 + slot, or DUE).
    list: u16,
}

/// A timer wheel keyed by `K`; each key is scheduled at most once. Keys
/// must be the stack's own values, never bytes a peer chooses: the key →
/// node index hashes with the unkeyed [`KeyHasher`].
#[derive(Debug)]
pub struct TimerWheel<K: Copy + Eq + Hash> {
    origin: Instant,
    tick_us: u64,
    /// Ticks processed: every slot ending at or before it has been emptied.
    elapsed: u64,
    heads: Box<[u32]>,
    occupied: [u64; LEVELS],
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    index: HashMap<K, u32, BuildHasherDefault<KeyHasher>>,
}

/// The key → node map's hasher. Timer keys are the stack's own small
/// integers (a connection's slot), never bytes a peer chooses, so a keyed
/// hash buys nothing here; one multiply per word mixes them into the high
/// bits the map's probing uses (the scheme of rustc's `FxHasher`).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl KeyHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    #[inline]
    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // the map takes its probe position from the low bits and its tag
        // from the top seven: fold the well-mixed high half down
        self.0.rotate_left(26)
    }
}

#[derive(Debug, Clone, Copy)]
struct Expiration {
    level: usize,
    slot: usize,
    /// Tick at which the slot starts.
    deadline: u64,
}

#[inline]
fn slot_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * level)
}

#[inline]
fn level_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * (level + 1))
}

impl<K: Copy + Eq + Hash> TimerWheel<K> {
    /// A wheel whose tick 0 is `now`, with `tick` resolution (1 ms).
    pub fn new(now: Instant, tick: Duration) -> Self {
        TimerWheel {
            origin: now,
            tick_us: tick.total_micros().max(1),
            elapsed: 0,
            heads: vec![NIL; DUE + 1].into_boxed_slice(),
            occupied: [0; LEVELS],
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// Timers scheduled.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// When `key` is scheduled, if it is.
    pub fn deadline(&self, key: K) -> Option<Instant> {
        self.index.get(&key).map(|&i| self.nodes[i as usize].at)
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let us = at.total_micros().saturating_sub(self.origin.total_micros());
        u64::try_from(us).unwrap_or(0) / self.tick_us
    }

    fn instant_of(&self, tick: u64) -> Instant {
        let us = i64::try_from(tick.saturating_mul(self.tick_us)).unwrap_or(i64::MAX);
        Instant::from_micros(self.origin.total_micros().saturating_add(us))
    }

    /// Schedule `key` at `at`, replacing an earlier schedule of it.
    pub fn schedule(&mut self, key: K, at: Instant) {
        let tick = self.tick_of(at);
        let idx = match self.index.get(&key) {
            Some(&i) if self.nodes[i as usize].tick == tick => {
                // Same tick: the node's list is still the right one (the
                // common case of a deadline pushed by less than a tick).
                self.nodes[i as usize].at = at;
                return;
            }
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => {
                let node = Node {
                    key,
                    at,
                    tick,
                    prev: NIL,
                    next: NIL,
                    list: 0,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i as usize] = node;
                        i
                    }
                    None => {
                        self.nodes.push(node);
                        (self.nodes.len() - 1) as u32
                    }
                };
                self.index.insert(key, i);
                i
            }
        };
        let n = &mut self.nodes[idx as usize];
        n.at = at;
        n.tick = tick;
        self.place(idx);
    }

    /// Remove `key`'s timer, if any.
    pub fn cancel(&mut self, key: K) {
        if let Some(i) = self.index.remove(&key) {
            self.unlink(i);
            self.free.push(i);
        }
    }

    /// Never later than the earliest timer (may be earlier when a higher
    /// level needs to cascade); `None` when no timer is scheduled.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut i = self.heads[DUE];
        while i != NIL {
            let n = &self.nodes[i as usize];
            take_earlier(&mut best, n.at);
            i = n.next;
        }
        if let Some(e) = self.next_expiration() {
            take_earlier(&mut best, self.instant_of(e.deadline));
        }
        best
    }

    /// Append to `out` every key due at or before `now` (each once; the
    /// keys are unscheduled).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<K>) {
        let now_tick = self.tick_of(now);
        while let Some(e) = self.next_expiration() {
            if e.deadline > now_tick {
                break;
            }
            self.process(e);
        }
        self.elapsed = self.elapsed.max(now_tick);
        let mut i = self.heads[DUE];
        while i != NIL {
            let n = &self.nodes[i as usize];
            let next = n.next;
            if n.at <= now {
                let key = n.key;
                self.unlink(i);
                self.index.remove(&key);
                self.free.push(i);
                out.push(key);
            }
            i = next;
        }
    }

    /// Empty one slot: its timers go to `due` or to a lower level.
    fn process(&mut self, e: Expiration) {
        let h = e.level * SLOTS + e.slot;
        self.elapsed = self.elapsed.max(e.deadline);
        let mut i = self.heads[h];
        self.heads[h] = NIL;
        self.occupied[e.level] &= !(1 << e.slot);
        while i != NIL {
            let next = self.nodes[i as usize].next;
            self.place(i);
            i = next;
        }
    }

    /// Put an unlinked node in the list its tick calls for.
    fn place(&mut self, i: u32) {
        let tick = self.nodes[i as usize].tick;
        let list = if tick <= self.elapsed {
            DUE
        } else {
            let top = LEVELS - 1;
            let top_shift = SLOT_BITS as usize * top;
            let cur = (self.elapsed >> top_shift) & SLOT_MASK;
            let masked = ((self.elapsed ^ tick) | SLOT_MASK).min(MAX_TICKS - 1);
            let level = ((63 - masked.leading_zeros()) / SLOT_BITS) as usize;
            let slot = (tick >> (SLOT_BITS as usize * level)) & SLOT_MASK;
            // Beyond the wheel, or in the current top slot's index of the
            // next turn: the top-level slot just before the current one
            // (the last to turn, still before the deadline); from there
            // the timer is placed again.
            let wraps = level == top
                && (tick - self.elapsed >= MAX_TICKS
                    || (slot == cur && tick >> (top_shift + 6) != self.elapsed >> (top_shift + 6)));
            if wraps {
                top * SLOTS + ((cur + SLOT_MASK) & SLOT_MASK) as usize
            } else {
                level * SLOTS + slot as usize
            }
        };
        let head = self.heads[list];
        {
            let n = &mut self.nodes[i as usize];
            n.list = list as u16;
            n.prev = NIL;
            n.next = head;
        }
        if head != NIL {
            self.nodes[head as usize].prev = i;
        }
        self.heads[list] = i;
        if list != DUE {
            self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, list) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.list as usize)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.heads[list] = next;
            if next == NIL && list != DUE {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let n = &mut self.nodes[i as usize];
        n.prev = NIL;
        n.next = NIL;
    }

    /// The earliest occupied slot over all levels (a lower level's slots
    /// always end before a higher level's occupied slots begin).
    fn next_expiration(&self) -> Option<Expiration> {
        (0..LEVELS).find_map(|level| {
            let occ = self.occupied[level];
            if occ == 0 {
                return None;
            }
            let now_slot = (self.elapsed / slot_range(level)) & SLOT_MASK;
            let zeros = occ.rotate_right(now_slot as u32).trailing_zeros() as u64;
            let slot = (zeros + now_slot) & SLOT_MASK;
            let level_start = self.elapsed & !(level_range(level) - 1);
            let mut deadline = level_start + slot * slot_range(level);
            if deadline <= self.elapsed && level > 0 {
                deadline += level_range(level);
            }
            Some(Expiration {
                level,
                slot: slot as usize,
                deadline,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn t(ms: i64) -> Instant {
        Instant::from_millis(1_000_000 + ms)
    }

    fn wheel() -> TimerWheel<u32> {
        TimerWheel::new(t(0), Duration::from_millis(1))
    }

    #[test]
    fn fires_at_its_deadline_once() {
        let mut w = wheel();
        w.schedule(1, t(10));
        w.schedule(2, t(5000));
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_deadline(), Some(t(10)));
        let mut out = Vec::new();
        w.expire(t(9), &mut out);
        assert!(out.is_empty());
        w.expire(t(10), &mut out);
        assert_eq!(out, [1]);
        w.expire(t(10), &mut out);
        assert_eq!(out, [1]);
        assert!(w.next_deadline().is_some_and(|d| d <= t(5000)));
        w.expire(t(4999), &mut out);
        assert_eq!(out, [1]);
        w.expire(t(6000), &mut out);
        assert_eq!(out, [1, 2]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn schedule_replaces_and_cancel_removes() {
        let mut w = wheel();
        w.schedule(1, t(100));
        w.schedule(1, t(50));
        assert_eq!(w.len(), 1);
        assert_eq!(w.deadline(1), Some(t(50)));
        w.schedule(2, t(70));
        w.cancel(2);
        w.cancel(3);
        let mut out = Vec::new();
        w.expire(t(200), &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn past_and_sub_tick_deadlines_are_exact() {
        let mut w = wheel();
        let mut out = Vec::new();
        w.expire(t(100), &mut out);
        w.schedule(1, t(50));
        w.schedule(2, t(100) + Duration::from_micros(500));
        assert_eq!(w.next_deadline(), Some(t(50)));
        w.expire(t(100), &mut out);
        assert_eq!(out, [1]);
        assert_eq!(w.next_deadline(), Some(t(100) + Duration::from_micros(500)));
        w.expire(t(100) + Duration::from_micros(499), &mut out);
        assert_eq!(out, [1]);
        w.expire(t(100) + Duration::from_micros(500), &mut out);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn far_timers_beyond_the_wheel() {
        let mut w = wheel();
        let far = t(0) + Duration::from_millis(MAX_TICKS * 3 + 12345);
        w.schedule(7, far);
        w.schedule(8, t(1));
        let mut out = Vec::new();
        let mut now = t(0);
        let mut steps = 0;
        while let Some(d) = w.next_deadline() {
            assert!(d <= far);
            now = now.max(d);
            w.expire(now, &mut out);
            steps += 1;
            assert!(steps < 1000);
        }
        assert_eq!(out, [8, 7]);
        assert_eq!(now, far);
    }

    #[test]
    fn extreme_instants_never_panic() {
        let mut w = wheel();
        let mut out = Vec::new();
        w.schedule(1, Instant::from_micros(i64::MAX));
        w.schedule(2, Instant::from_micros(i64::MIN));
        assert!(
            w.next_deadline()
                .is_some_and(|d| d <= Instant::from_micros(i64::MIN))
        );
        w.expire(t(0), &mut out);
        assert_eq!(out, [2]);
        assert!(w.next_deadline().is_some());
        w.expire(Instant::from_micros(i64::MAX), &mut out);
        assert_eq!(out, [2, 1]);
        w.schedule(3, Instant::from_micros(i64::MAX));
        assert!(w.next_deadline().is_some());
        w.expire(Instant::from_micros(i64::MAX), &mut out);
        assert_eq!(out, [2, 1, 3]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule(u32, u64),
        Cancel(u32),
        Advance(u64),
        /// Jump straight to the wheel's next deadline.
        Next,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..24, prop_oneof![0u64..100_000, 0u64..200, 0u64..(1 << 40), 0u64..(1 << 48)])
                .prop_map(|(k, d)| Op::Schedule(k, d)),
            1 => (0u32..24).prop_map(Op::Cancel),
            3 => prop_oneof![0u64..5_000, 0u64..200_000_000].prop_map(Op::Advance),
            2 => Just(Op::Next),
        ]
    }

    proptest! {
        /// Against a BTreeMap model (delays in µs, tick 1 ms): every key
        /// fires exactly once, never before its deadline, and at the first
        /// expire() at or after it; next_deadline is never later than the
        /// earliest timer.
        #[test]
        fn wheel_matches_model(ops in proptest::collection::vec(op(), 0..300)) {
            let mut w = wheel();
            let mut model: BTreeMap<u32, Instant> = BTreeMap::new();
            let mut now = t(0);
            let mut out = Vec::new();
            for o in ops {
                match o {
                    Op::Schedule(k, d) => {
                        let at = now + Duration::from_micros(d);
                        w.schedule(k, at);
                        model.insert(k, at);
                    }
                    Op::Cancel(k) => {
                        w.cancel(k);
                        model.remove(&k);
                    }
                    Op::Advance(d) => now += Duration::from_micros(d),
                    Op::Next => {
                        if let Some(d) = w.next_deadline() {
                            now = now.max(d);
                        }
                    }
                }
                out.clear();
                w.expire(now, &mut out);
                let mut want: Vec<u32> =
                    model.iter().filter(|(_, at)| **at <= now).map(|(k, _)| *k).collect();
                model.retain(|_, at| *at > now);
                let mut got = out.clone();
                got.sort_unstable();
                want.sort_unstable();
                prop_assert_eq!(got, want);
                prop_assert_eq!(w.len(), model.len());
                let earliest = model.values().min().copied();
                match (w.next_deadline(), earliest) {
                    (None, None) => {}
                    (Some(d), Some(e)) => prop_assert!(d <= e, "{:?} > {:?}", d, e),
                    (d, e) => prop_assert!(false, "{:?} vs {:?}", d, e),
                }
            }
        }
    }
}
