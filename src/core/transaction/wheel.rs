//! A small hashed timer wheel keyed by transaction slot (virtual time in
//! milliseconds). Each bucket keeps its capacity, so arming a timer does not
//! allocate in steady state. Entries are `(slot, generation, deadline)`; the
//! table ignores an entry whose slot was re-armed or reused since (lazy
//! cancellation: nothing is ever removed except by expiry).
//!
//! Written here because the netstack's timer wheel had not landed on main
//! when the transaction layer was written; it is 60 lines and has no other user.

/// One armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub slot: u32,
    pub generation: u8,
    pub at: u64,
}

#[derive(Debug)]
pub struct Wheel {
    buckets: Vec<Vec<Entry>>,
    /// One bit per bucket: it holds entries (finds the next deadline
    /// without visiting empty buckets).
    occupied: Vec<u64>,
    tick_ms: u64,
    /// First tick not yet wholly expired.
    cur: u64,
}

impl Wheel {
    /// `buckets` (a power of two) of `tick_ms` each; deadlines past the
    /// horizon stay in their bucket until a later turn reaches them.
    pub fn new(buckets: usize, tick_ms: u64, now: u64) -> Wheel {
        let n = buckets.next_power_of_two().max(2);
        let tick_ms = tick_ms.max(1);
        Wheel {
            buckets: (0..n).map(|_| Vec::new()).collect(),
            occupied: vec![0; n.div_ceil(64)],
            tick_ms,
            cur: now / tick_ms,
        }
    }

    pub fn insert(&mut self, e: Entry) {
        let t = (e.at / self.tick_ms).max(self.cur);
        let mask = self.buckets.len() as u64 - 1;
        let b = (t & mask) as usize;
        self.buckets[b].push(e);
        self.occupied[b / 64] |= 1 << (b % 64);
    }

    /// The first occupied bucket at or after `from` (wrapping), if any.
    fn next_occupied(&self, from: usize) -> Option<usize> {
        let words = self.occupied.len();
        let (w0, bit) = (from / 64, from % 64);
        // the first word from `from` on, the others in order, the first
        // word's bits before `from` last
        let first = self.occupied[w0] & (!0u64 << bit);
        if first != 0 {
            return Some(w0 * 64 + first.trailing_zeros() as usize);
        }
        for k in 1..=words {
            let w = (w0 + k) % words;
            let mut v = self.occupied[w];
            if k == words {
                v &= !(!0u64 << bit);
            }
            if v != 0 {
                return Some(w * 64 + v.trailing_zeros() as usize);
            }
        }
        None
    }

    /// Move every entry due at `now` into `due` (cleared first).
    pub fn expire(&mut self, now: u64, due: &mut Vec<Entry>) {
        due.clear();
        let end = now / self.tick_ms;
        if end < self.cur {
            return;
        }
        let n = self.buckets.len() as u64;
        // a long gap visits each bucket once
        let first = if end - self.cur >= n {
            end + 1 - n
        } else {
            self.cur
        };
        for t in first..=end {
            let bi = (t & (n - 1)) as usize;
            let b = &mut self.buckets[bi];
            let mut i = 0;
            while i < b.len() {
                if b[i].at <= now {
                    due.push(b.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if b.is_empty() {
                self.occupied[bi / 64] &= !(1 << (bi % 64));
            }
        }
        // the last tick may be only partly over: visit it again next time
        self.cur = end;
    }

    /// A lower bound of the earliest deadline held (`None`: empty): the
    /// first non-empty bucket from the current tick on, and there the
    /// earliest entry, or the bucket's end when its entries are for a later
    /// turn (the caller then wakes early and asks again).
    pub fn next_deadline(&self) -> Option<u64> {
        let n = self.buckets.len();
        let from = (self.cur & (n as u64 - 1)) as usize;
        let b = self.next_occupied(from)?;
        let t = self.cur + ((b + n - from) % n) as u64;
        let min = self.buckets[b].iter().map(|e| e.at).min()?;
        Some(min.min((t + 1) * self.tick_ms))
    }

    /// Entries held (armed and stale).
    pub fn entries(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }
}
