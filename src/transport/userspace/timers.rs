//! Per-connection deadlines on the stack thread: a min-heap of (deadline,
//! slot, generation) with lazy deletion. Scheduling a connection again
//! bumps its generation, so older entries are skipped when they surface;
//! a deadline that moved later (a read or a send extended the idle
//! lifetime) is not rescheduled at once — the old entry fires, the owner
//! finds nothing due and schedules the new deadline. Work per round is
//! proportional to the entries that are due, never to the number of
//! connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Milliseconds on the stack clock.
type Millis = u64;

/// The deadline heap. `slot` is the owner's index of the connection,
/// `generation` its scheduling generation at the time of the push.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Millis, u32, u32)>>,
}

impl Deadlines {
    pub(super) fn push(&mut self, at: Millis, slot: u32, generation: u32) {
        self.heap.push(Reverse((at, slot, generation)));
    }

    /// The earliest entry due at `now` (deadline ≤ now), removed.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, s, g))| (s, g))
            }
            _ => None,
        }
    }

    /// The earliest deadline (stale entries included).
    #[cfg(test)]
    pub(super) fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drop stale entries (`live(slot, generation)` false) when the heap
    /// has grown well past the number of live connections: bounds memory
    /// when deadlines move earlier again and again.
    pub(super) fn compact_if_large(&mut self, live_conns: usize, live: impl Fn(u32, u32) -> bool) {
        if self.heap.len() <= 2 * live_conns + 1024 {
            return;
        }
        let old = std::mem::take(&mut self.heap).into_vec();
        self.heap = old
            .into_iter()
            .filter(|Reverse((_, s, g))| live(*s, *g))
            .collect::<Vec<_>>()
            .into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_fire_in_order_and_only_when_due() {
        let mut d = Deadlines::default();
        d.push(300, 3, 0);
        d.push(100, 1, 0);
        d.push(200, 2, 0);
        assert_eq!(d.next(), Some(100));
        assert_eq!(d.pop_due(99), None);
        assert_eq!(d.pop_due(250), Some((1, 0)));
        assert_eq!(d.pop_due(250), Some((2, 0)));
        assert_eq!(d.pop_due(250), None);
        assert_eq!(d.pop_due(1000), Some((3, 0)));
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn rescheduled_connection_leaves_a_stale_entry_the_owner_skips() {
        let mut d = Deadlines::default();
        // slot 7 scheduled at 500 (generation 1), then earlier at 100 (generation 2)
        d.push(500, 7, 1);
        d.push(100, 7, 2);
        assert_eq!(d.pop_due(100), Some((7, 2)));
        // the generation-1 entry surfaces later; the owner sees it is stale
        assert_eq!(d.pop_due(600), Some((7, 1)));
    }

    #[test]
    fn compaction_keeps_only_live_entries() {
        let mut d = Deadlines::default();
        for g in 0..3000u32 {
            d.push(u64::from(g), 1, g);
        }
        d.compact_if_large(1, |_, g| g == 2999);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(u64::MAX), Some((1, 2999)));
        // small heaps are left alone
        d.push(1, 1, 0);
        d.compact_if_large(1, |_, _| false);
        assert_eq!(d.len(), 1);
    }
}
