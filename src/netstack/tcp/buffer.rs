//! The send and receive buffers of one TCP connection.
//!
//! Thousands of mostly idle SIP connections must cost (almost) nothing, so
//! both buffers hold no heap memory while empty and give it back as soon as
//! they drain; storage grows on demand (doubling, at least [`MIN_ALLOC`]) up
//! to the buffer's cap and never beyond it.
//!
//! Storage given back goes to a small pool of the thread (a shard's stack
//! runs on one thread), bounded by [`POOL_ENTRIES`] and [`POOL_BYTES`]; the
//! next buffer of that thread to need storage takes the one given back
//! last if its cap allows, else the largest pooled one that it allows. A
//! busy connection that drains every round (SIP over TCP: a message in,
//! the application reads it) so neither asks the allocator nor zero-fills
//! nor regrows by doubling each round, and an idle one still holds
//! nothing. Pooled storage is not cleared: a ring only ever exposes bytes
//! written to it since it took the storage (`RecvBuf` the readable and
//! out-of-order ranges it recorded, `SendBuf` the bytes from SND.UNA it
//! was given), which `pooled_storage_never_shows_an_earlier_connections_bytes`
//! checks.
//!
//! - [`SendBuf`]: the bytes from SND.UNA on (sent but unacknowledged, then
//!   unsent), a ring addressed by offset from SND.UNA.
//! - [`RecvBuf`]: in-order bytes not yet read by the application, followed
//!   in the same ring by out-of-order data at its final place (RFC 9293
//!   §3.10.7.4 "segments with higher beginning sequence numbers may be held
//!   for later processing"). The out-of-order ranges are bounded (at most
//!   [`MAX_OOO_RANGES`], all inside the advertised window) and remember the
//!   order of reception for SACK (RFC 2018 §4).

use std::cell::RefCell;

use super::LazyVec;

/// Smallest storage a buffer allocates (less only when its cap is smaller).
pub const MIN_ALLOC: usize = 2048;

/// Most separate out-of-order ranges a [`RecvBuf`] holds; a segment that
/// would open one more is dropped (the peer retransmits it). Linux bounds
/// its out-of-order queue by memory (`tcp_prune_ofo_queue`); a count bound
/// keeps every operation here O(ranges) with a small constant.
pub const MAX_OOO_RANGES: usize = 16;

/// Most ring storages the pool of one thread keeps.
pub const POOL_ENTRIES: usize = 16;

/// Most bytes the pool of one thread keeps.
pub const POOL_BYTES: usize = 256 * 1024;

/// Ring storage given back by drained buffers of this thread.
struct Pool {
    bufs: Vec<Box<[u8]>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bufs: Vec::new(),
            bytes: 0,
        })
    };
}

/// A pooled storage of `min..=max` bytes, if any: the one given back last
/// when it fits (a connection that drains every round takes back the
/// storage it just gave, without a search), else the largest that fits.
fn pool_take(min: usize, max: usize) -> Option<Box<[u8]>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let fits = |b: &[u8]| (min..=max).contains(&b.len());
        let i = match p.bufs.last() {
            Some(b) if fits(b) => p.bufs.len() - 1,
            _ => {
                p.bufs
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| fits(b))
                    .max_by_key(|(_, b)| b.len())?
                    .0
            }
        };
        let b = p.bufs.swap_remove(i);
        p.bytes -= b.len();
        Some(b)
    })
}

/// Keep `buf` for a later [`pool_take`] when the pool has room; else free it.
fn pool_give(buf: Box<[u8]>) {
    if buf.is_empty() {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.bufs.len() < POOL_ENTRIES && p.bytes + buf.len() <= POOL_BYTES {
            p.bytes += buf.len();
            p.bufs.push(buf);
        }
    });
}

/// Bytes the pool of this thread holds now.
#[cfg(test)]
fn pool_bytes() -> usize {
    POOL.with(|p| p.borrow().bytes)
}

/// Storages the pool of this thread holds now.
#[cfg(test)]
fn pool_entries() -> usize {
    POOL.with(|p| p.borrow().bufs.len())
}

#[cfg(test)]
fn pool_clear() {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.bufs.clear();
        p.bytes = 0;
    });
}

/// Ring storage allocated on demand. `buf` is empty (no heap) when released.
#[derive(Debug, Default)]
struct Ring {
    buf: Box<[u8]>,
    head: usize,
}

impl Ring {
    #[inline]
    fn size(&self) -> usize {
        self.buf.len()
    }

    fn release(&mut self) {
        pool_give(std::mem::take(&mut self.buf));
        self.head = 0;
    }

    /// Make the storage at least `need` bytes, keeping the first `keep`
    /// bytes from the head: pooled storage the cap allows ([`pool_take`]),
    /// else a new one grown by doubling (at least [`MIN_ALLOC`], clamped to
    /// `cap` unless `need` itself is larger).
    fn reserve(&mut self, need: usize, keep: usize, cap: usize) {
        if need <= self.size() {
            return;
        }
        let max = cap.max(need);
        let new = need
            .max(self.size().saturating_mul(2))
            .max(MIN_ALLOC)
            .min(max);
        let mut nb = pool_take(new, max).unwrap_or_else(|| vec![0u8; new].into_boxed_slice());
        let keep = keep.min(self.size());
        self.read_at(0, &mut nb[..keep]);
        pool_give(std::mem::replace(&mut self.buf, nb));
        self.head = 0;
    }

    /// Copy `data` to `pos` bytes after the head (`pos + len <= size`).
    fn write_at(&mut self, pos: usize, data: &[u8]) {
        let size = self.size();
        if data.is_empty() || size == 0 {
            return;
        }
        let start = (self.head + pos) % size;
        let first = data.len().min(size - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.buf[..rest].copy_from_slice(&data[first..]);
    }

    /// Copy `dst.len()` bytes from `pos` bytes after the head.
    fn read_at(&self, pos: usize, dst: &mut [u8]) {
        let (a, b) = self.slices(pos, dst.len());
        dst[..a.len()].copy_from_slice(a);
        dst[a.len()..a.len() + b.len()].copy_from_slice(b);
    }

    /// The `n` bytes from `pos` after the head as (up to) two slices.
    fn slices(&self, pos: usize, n: usize) -> (&[u8], &[u8]) {
        let size = self.size();
        if n == 0 || size == 0 {
            return (&[], &[]);
        }
        let n = n.min(size);
        let start = (self.head + pos) % size;
        let first = n.min(size - start);
        (&self.buf[start..start + first], &self.buf[..n - first])
    }

    fn advance(&mut self, n: usize) {
        if self.size() > 0 {
            self.head = (self.head + n % self.size()) % self.size();
        }
    }
}

/// A buffer cap in 32 bits (4 GiB; larger caps are cut to it): lengths
/// and caps are u32 so that a TCB's two buffers stay small.
fn cap32(cap: usize) -> u32 {
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// Send buffer: the bytes from SND.UNA on. Offset 0 is SND.UNA.
#[derive(Debug)]
pub struct SendBuf {
    ring: Ring,
    len: u32,
    cap: u32,
}

impl SendBuf {
    /// An empty buffer holding at most `cap` bytes (no allocation).
    pub fn new(cap: usize) -> Self {
        SendBuf {
            ring: Ring::default(),
            len: 0,
            cap: cap32(cap),
        }
    }

    /// Bytes held (unacknowledged + unsent).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that [`SendBuf::write`] would take now.
    pub fn free(&self) -> usize {
        self.cap.saturating_sub(self.len) as usize
    }

    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Append up to [`SendBuf::free`] bytes of `data`; returns how many.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        let len = self.len();
        self.ring.reserve(len + n, len, self.cap());
        self.ring.write_at(len, &data[..n]);
        // n <= free(): the sum stays within cap (u32)
        self.len += n as u32;
        n
    }

    /// Drop `n` bytes from the front (acknowledged); releases the memory
    /// when the buffer drains.
    pub fn ack(&mut self, n: usize) {
        let n = n.min(self.len());
        self.ring.advance(n);
        self.len -= n as u32;
        if self.len == 0 {
            self.ring.release();
        }
    }

    /// Copy the bytes at offset `off` from the front into `dst`; returns
    /// how many (0 when `off >= len`).
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) -> usize {
        if off >= self.len() {
            return 0;
        }
        let n = dst.len().min(self.len() - off);
        self.ring.read_at(off, &mut dst[..n]);
        n
    }

    /// Up to `n` bytes at offset `off` as two slices (the ring may wrap),
    /// for building a segment without an intermediate copy.
    pub fn slices(&self, off: usize, n: usize) -> (&[u8], &[u8]) {
        if off >= self.len() {
            return (&[], &[]);
        }
        self.ring.slices(off, n.min(self.len() - off))
    }

    /// Purge everything and release the memory.
    pub fn clear(&mut self) {
        self.len = 0;
        self.ring.release();
    }

    /// Heap memory held now.
    pub fn heap_bytes(&self) -> usize {
        self.ring.size()
    }

    /// Change the cap. Bytes already held stay (free() is 0 until they
    /// drain below the new cap).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap32(cap);
    }
}

/// One out-of-order range, offsets from RCV.NXT.
#[derive(Debug, Clone, Copy)]
struct OooRange {
    start: usize,
    end: usize,
    /// Reception order of the latest segment that joined this range.
    seen: u64,
}

/// Receive buffer: in-order bytes not yet read, then out-of-order data.
/// Offsets given to [`RecvBuf::insert`] are from RCV.NXT (the first byte
/// after the readable ones).
#[derive(Debug)]
pub struct RecvBuf {
    ring: Ring,
    readable: u32,
    cap: u32,
    /// Sorted by start, disjoint and not adjacent.
    ooo: LazyVec<OooRange>,
    clock: u64,
}

impl RecvBuf {
    /// An empty buffer holding at most `cap` bytes (no allocation).
    pub fn new(cap: usize) -> Self {
        RecvBuf {
            ring: Ring::default(),
            readable: 0,
            cap: cap32(cap),
            ooo: LazyVec::new(),
            clock: 0,
        }
    }

    /// In-order bytes the application can read.
    pub fn readable(&self) -> usize {
        self.readable as usize
    }

    /// Space after RCV.NXT: what may be advertised (RFC 9293 RCV.WND).
    pub fn window(&self) -> usize {
        self.cap.saturating_sub(self.readable) as usize
    }

    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Change the cap (later inserts are cut to the new window).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap32(cap);
    }

    /// Data at offset `off` from RCV.NXT; returns how far RCV.NXT advances
    /// (in-order bytes that became readable, including queued out-of-order
    /// data that now joins). Bytes beyond [`RecvBuf::window`] are cut.
    /// Overlaps and duplicates are harmless. A segment that would open more
    /// than [`MAX_OOO_RANGES`] separate ranges is dropped (returns 0).
    pub fn insert(&mut self, off: usize, data: &[u8]) -> usize {
        let win = self.window();
        if off >= win || data.is_empty() {
            return 0;
        }
        let len = data.len().min(win - off);
        let (s, e) = (off, off + len);
        // Ranges [i, j) touch (overlap or adjoin) [s, e).
        let i = self.ooo.partition_point(|r| r.end < s);
        let j = self.ooo.partition_point(|r| r.start <= e);
        if s > 0 && i == j && self.ooo.len() >= MAX_OOO_RANGES {
            return 0;
        }
        let stored_end = self.ooo.last().map_or(0, |r| r.end);
        let readable = self.readable();
        self.ring
            .reserve(readable + e, readable + stored_end, self.cap());
        self.ring.write_at(readable + s, &data[..len]);
        self.clock += 1;
        if s == 0 {
            // Everything touching [0, e) joins the in-order data; i == 0.
            let adv = if j > 0 { e.max(self.ooo[j - 1].end) } else { e };
            // (the usual case, nothing out of order: the list stays
            // unallocated; `vec_mut` would allocate it for every segment)
            if !self.ooo.is_empty() {
                self.ooo.vec_mut().drain(..j);
                for r in self.ooo.iter_mut() {
                    r.start -= adv;
                    r.end -= adv;
                }
                if self.ooo.is_empty() {
                    self.ooo.clear();
                }
            }
            // adv <= window(): the sum stays within cap (u32)
            self.readable += adv as u32;
            return adv;
        }
        let merged = if i < j {
            OooRange {
                start: s.min(self.ooo[i].start),
                end: e.max(self.ooo[j - 1].end),
                seen: self.clock,
            }
        } else {
            OooRange {
                start: s,
                end: e,
                seen: self.clock,
            }
        };
        if i < j {
            self.ooo[i] = merged;
            self.ooo.vec_mut().drain(i + 1..j);
        } else {
            self.ooo.vec_mut().insert(i, merged);
        }
        0
    }

    /// Read up to `dst.len()` in-order bytes.
    pub fn read(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.readable());
        self.ring.read_at(0, &mut dst[..n]);
        self.consume(n);
        n
    }

    /// The readable bytes as (up to) two slices, for reading without a copy;
    /// follow with [`RecvBuf::consume`].
    pub fn readable_slices(&self) -> (&[u8], &[u8]) {
        self.ring.slices(0, self.readable())
    }

    /// Drop `n` readable bytes (read by the application).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.readable());
        self.ring.advance(n);
        self.readable -= n as u32;
        if self.readable == 0 && self.ooo.is_empty() {
            self.ring.release();
        }
    }

    /// Is out-of-order data queued (a gap after RCV.NXT)?
    pub fn has_ooo(&self) -> bool {
        !self.ooo.is_empty()
    }

    /// Number of separate out-of-order ranges.
    pub fn ooo_ranges(&self) -> usize {
        self.ooo.len()
    }

    /// Up to `max` SACK blocks as (start, end) offsets from RCV.NXT, the
    /// block holding the most recently received segment first, then the
    /// others by recency (RFC 2018 §4: "the first SACK block MUST specify
    /// the contiguous block of data containing the segment which triggered
    /// this ACK" and later blocks repeat the most recently reported ones).
    pub fn sack_blocks(&self, max: usize, out: &mut [(u32, u32)]) -> usize {
        let n = max.min(out.len()).min(self.ooo.len());
        let mut below = u64::MAX;
        for slot in out.iter_mut().take(n) {
            // The most recent range older than the previous pick (`seen`
            // values are unique: each insert takes a new one).
            let Some(r) = self
                .ooo
                .iter()
                .filter(|r| r.seen < below)
                .max_by_key(|r| r.seen)
            else {
                break;
            };
            below = r.seen;
            let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
            *slot = (c(r.start), c(r.end));
        }
        n
    }

    /// Purge everything and release the memory.
    pub fn clear(&mut self) {
        self.readable = 0;
        self.ooo.clear();
        self.ring.release();
    }

    /// Heap memory held now.
    pub fn heap_bytes(&self) -> usize {
        self.ring.size() + self.ooo.capacity() * std::mem::size_of::<OooRange>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn sendbuf_no_heap_while_empty_released_when_drained() {
        let mut b = SendBuf::new(64 * 1024);
        assert_eq!(b.heap_bytes(), 0);
        assert_eq!(b.write(b"hello"), 5);
        assert!(b.heap_bytes() >= 5 && b.heap_bytes() <= 64 * 1024);
        b.ack(3);
        assert!(b.heap_bytes() > 0);
        b.ack(2);
        assert!(b.is_empty());
        assert_eq!(b.heap_bytes(), 0);
        b.write(b"x");
        b.clear();
        assert_eq!(b.heap_bytes(), 0);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn sendbuf_write_stops_at_cap_and_never_allocates_beyond() {
        let mut b = SendBuf::new(1000);
        let s = stream(3000);
        assert_eq!(b.write(&s), 1000);
        assert_eq!(b.free(), 0);
        assert_eq!(b.write(&s), 0);
        assert_eq!(b.heap_bytes(), 1000);
        b.ack(10);
        assert_eq!(b.write(&s[1000..]), 10);
        let mut out = vec![0; 1000];
        assert_eq!(b.copy_out(0, &mut out), 1000);
        assert_eq!(&out[..990], &s[10..1000]);
        assert_eq!(&out[990..], &s[1000..1010]);
        assert_eq!(b.copy_out(995, &mut out), 5);
        assert_eq!(&out[..5], &s[1005..1010]);
        assert_eq!(b.copy_out(1000, &mut out), 0);
        let (a, c) = b.slices(985, 100);
        assert_eq!([a, c].concat(), &s[995..1010]);
    }

    #[test]
    fn sendbuf_set_cap_keeps_data() {
        let mut b = SendBuf::new(100);
        b.write(&[1; 100]);
        b.set_cap(50);
        assert_eq!(b.free(), 0);
        assert_eq!(b.len(), 100);
        b.ack(60);
        assert_eq!(b.free(), 10);
    }

    #[test]
    fn pooled_storage_never_shows_an_earlier_connections_bytes() {
        pool_clear();
        // An earlier connection leaves its storages, full of its bytes.
        let mut old_snd = SendBuf::new(8192);
        assert_eq!(old_snd.write(&[0xbb; 3000]), 3000);
        old_snd.ack(3000);
        let mut old = RecvBuf::new(8192);
        assert_eq!(old.insert(0, &[0xaa; 4000]), 4000);
        let mut sink = vec![0; 4000];
        assert_eq!(old.read(&mut sink), 4000);
        assert_eq!(pool_entries(), 2);

        // A new receive buffer takes that storage: out-of-order data first,
        // so a gap of stale bytes lies before it.
        let mut r = RecvBuf::new(8192);
        assert_eq!(r.insert(100, b"xyz"), 0);
        assert!(r.heap_bytes() >= 4096, "took pooled storage");
        assert_eq!(r.readable(), 0);
        assert_eq!(r.readable_slices(), (&[][..], &[][..]));
        assert_eq!(r.insert(0, &[0x11; 100]), 103);
        let (a, b) = r.readable_slices();
        let got = [a, b].concat();
        let mut want = vec![0x11; 100];
        want.extend_from_slice(b"xyz");
        assert_eq!(got, want);

        // A new send buffer: only the bytes written, whatever is asked for.
        let mut w = SendBuf::new(8192);
        assert_eq!(w.write(b"hello"), 5);
        assert!(w.heap_bytes() >= 2048, "took pooled storage");
        let (a, b) = w.slices(0, 4096);
        assert_eq!([a, b].concat(), b"hello");
        let mut out = [0u8; 64];
        assert_eq!(w.copy_out(0, &mut out), 5);
        assert_eq!(&out[..5], b"hello");
        assert_eq!(w.copy_out(5, &mut out), 0);
    }

    #[test]
    fn drained_storage_is_reused_within_the_cap_and_the_pool_is_bounded() {
        pool_clear();
        let mut r = RecvBuf::new(64 * 1024);
        assert_eq!(r.insert(0, &[1; 20_000]), 20_000);
        let size = r.heap_bytes();
        let mut sink = vec![0; 20_000];
        r.read(&mut sink);
        assert_eq!(r.heap_bytes(), 0, "an idle connection holds nothing");
        assert_eq!(pool_bytes(), size);
        // The next small message of the thread gets that storage back, so
        // the rest of the round's data needs no regrowth.
        assert_eq!(r.insert(0, b"INVITE"), 6);
        assert_eq!(r.heap_bytes(), size);
        assert_eq!(pool_bytes(), 0);
        r.read(&mut sink);
        // A buffer whose cap is smaller does not take it.
        let mut small = RecvBuf::new(4096);
        assert_eq!(small.insert(0, b"ACK"), 3);
        assert!(small.heap_bytes() <= 4096);
        assert_eq!(pool_bytes(), size);
        // Bounded: many drained buffers leave at most the pool's limits.
        let mut many: Vec<SendBuf> = (0..40).map(|_| SendBuf::new(64 * 1024)).collect();
        for b in &mut many {
            assert_eq!(b.write(&[7; 30_000]), 30_000);
        }
        for b in &mut many {
            b.ack(30_000);
            assert_eq!(b.heap_bytes(), 0);
        }
        assert!(pool_bytes() <= POOL_BYTES);
        assert!(pool_entries() <= POOL_ENTRIES);
    }

    #[test]
    fn recvbuf_in_order_then_read_releases_memory() {
        let mut r = RecvBuf::new(4096);
        assert_eq!(r.heap_bytes(), 0);
        assert_eq!(r.window(), 4096);
        assert_eq!(r.insert(0, b"abc"), 3);
        assert_eq!(r.readable(), 3);
        assert_eq!(r.window(), 4093);
        let mut d = [0; 2];
        assert_eq!(r.read(&mut d), 2);
        assert_eq!(&d, b"ab");
        assert!(r.heap_bytes() > 0);
        assert_eq!(r.read(&mut d), 1);
        assert_eq!(d[0], b'c');
        assert_eq!(r.heap_bytes(), 0);
    }

    #[test]
    fn rfc9293_ooo_segment_is_held_and_joins_when_the_gap_fills() {
        let s = stream(30);
        let mut r = RecvBuf::new(100);
        assert_eq!(r.insert(20, &s[20..30]), 0);
        assert_eq!(r.insert(10, &s[10..15]), 0);
        assert!(r.has_ooo());
        assert_eq!(r.ooo_ranges(), 2);
        // The gap [0, 10) arrives: RCV.NXT moves over [10, 15) too.
        assert_eq!(r.insert(0, &s[0..10]), 15);
        assert_eq!(r.ooo_ranges(), 1);
        // Offsets are now from the new RCV.NXT (stream byte 15).
        assert_eq!(r.insert(0, &s[15..20]), 15);
        assert!(!r.has_ooo());
        let mut out = [0; 64];
        assert_eq!(r.read(&mut out), 30);
        assert_eq!(&out[..30], &s[..]);
        assert_eq!(r.heap_bytes(), 0);
    }

    #[test]
    fn recvbuf_bytes_beyond_the_window_are_cut() {
        let mut r = RecvBuf::new(10);
        assert_eq!(r.insert(0, &[1; 8]), 8);
        assert_eq!(r.window(), 2);
        assert_eq!(r.insert(0, &[2; 5]), 2);
        assert_eq!(r.window(), 0);
        assert_eq!(r.insert(0, &[3; 5]), 0);
        assert_eq!(r.insert(5, &[3; 5]), 0);
        assert!(r.heap_bytes() <= 10);
        let mut r = RecvBuf::new(10);
        assert_eq!(r.insert(10, &[1]), 0);
        assert_eq!(r.insert(7, &[1; 9]), 0);
        assert_eq!(r.sack_blocks(4, &mut [(0, 0); 4]), 1);
        let mut b = [(0, 0); 1];
        r.sack_blocks(1, &mut b);
        assert_eq!(b[0], (7, 10));
    }

    #[test]
    fn recvbuf_duplicates_and_overlaps_are_harmless() {
        let s = stream(50);
        let mut r = RecvBuf::new(100);
        assert_eq!(r.insert(0, &s[0..10]), 10);
        // Overlapping retransmission starting before RCV.NXT is trimmed by
        // the caller; here: a partial overlap with OOO data.
        assert_eq!(r.insert(20, &s[30..40]), 0);
        assert_eq!(r.insert(15, &s[25..35]), 0);
        assert_eq!(r.insert(20, &s[30..40]), 0);
        assert_eq!(r.ooo_ranges(), 1);
        assert_eq!(r.insert(0, &s[10..26]), 30);
        let mut out = [0; 64];
        assert_eq!(r.read(&mut out), 40);
        assert_eq!(&out[..40], &s[..40]);
    }

    #[test]
    fn recvbuf_adjacent_ranges_merge() {
        let mut r = RecvBuf::new(100);
        r.insert(10, &[1; 5]);
        r.insert(15, &[1; 5]);
        r.insert(5, &[1; 5]);
        assert_eq!(r.ooo_ranges(), 1);
        let mut b = [(0, 0); 4];
        assert_eq!(r.sack_blocks(4, &mut b), 1);
        assert_eq!(b[0], (5, 20));
    }

    #[test]
    fn recvbuf_ooo_ranges_are_bounded() {
        let mut r = RecvBuf::new(1 << 20);
        for k in 0..MAX_OOO_RANGES {
            r.insert(10 + k * 10, &[1; 5]);
        }
        assert_eq!(r.ooo_ranges(), MAX_OOO_RANGES);
        // A new separate range is dropped; one that touches a range is not.
        r.insert(5000, &[1; 5]);
        assert_eq!(r.ooo_ranges(), MAX_OOO_RANGES);
        r.insert(15, &[1; 2]);
        assert_eq!(r.ooo_ranges(), MAX_OOO_RANGES);
        let mut b = [(0, 0); 1];
        r.sack_blocks(1, &mut b);
        assert_eq!(b[0], (10, 17));
        // In-order data is always taken.
        assert_eq!(r.insert(0, &[1; 10]), 17);
    }

    #[test]
    fn rfc2018_s4_first_block_holds_the_latest_segment_then_by_recency() {
        let mut r = RecvBuf::new(1000);
        r.insert(100, &[0; 10]); // A
        r.insert(200, &[0; 10]); // B
        r.insert(300, &[0; 10]); // C
        r.insert(400, &[0; 10]); // D
        r.insert(210, &[0; 10]); // extends B
        let mut b = [(0, 0); 3];
        assert_eq!(r.sack_blocks(3, &mut b), 3);
        assert_eq!(b, [(200, 220), (400, 410), (300, 310)]);
        // `max` and `out.len()` both bound the count.
        let mut b2 = [(0, 0); 2];
        assert_eq!(r.sack_blocks(4, &mut b2), 2);
        assert_eq!(r.sack_blocks(1, &mut b), 1);
        assert_eq!(b[0], (200, 220));
        // After RCV.NXT advances, blocks are relative to the new RCV.NXT.
        assert_eq!(r.insert(0, &[0; 100]), 110);
        assert_eq!(r.sack_blocks(3, &mut b), 3);
        assert_eq!(b, [(90, 110), (290, 300), (190, 200)]);
    }

    #[test]
    fn recvbuf_clear_releases_everything() {
        let mut r = RecvBuf::new(1000);
        r.insert(0, &[1; 10]);
        r.insert(100, &[1; 10]);
        assert!(r.heap_bytes() > 0);
        r.clear();
        assert_eq!(r.heap_bytes(), 0);
        assert_eq!(r.readable(), 0);
        assert!(!r.has_ooo());
    }

    #[test]
    fn recvbuf_readable_slices_and_consume() {
        let s = stream(3000);
        let mut r = RecvBuf::new(3000);
        r.insert(0, &s[..2500]);
        let mut tmp = vec![0; 2000];
        r.read(&mut tmp);
        r.insert(0, &s[2500..]);
        let (a, b) = r.readable_slices();
        assert_eq!([a, b].concat(), &s[2000..]);
        r.consume(1000);
        assert_eq!(r.readable(), 0);
        assert_eq!(r.heap_bytes(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { off: usize, len: usize },
        Read(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..3000, 0usize..1500).prop_map(|(off, len)| Op::Insert { off, len }),
            1 => (0usize..3000).prop_map(Op::Read),
        ]
    }

    #[derive(Debug, Clone)]
    enum SOp {
        Write(usize),
        Ack(usize),
        Copy(usize, usize),
    }

    fn sop() -> impl Strategy<Value = SOp> {
        prop_oneof![
            (0usize..3000).prop_map(SOp::Write),
            (0usize..3000).prop_map(SOp::Ack),
            (0usize..3000, 0usize..3000).prop_map(|(o, n)| SOp::Copy(o, n)),
        ]
    }

    proptest! {
        /// Random in-window inserts (out of order, overlapping, duplicated)
        /// and reads reproduce the byte stream exactly; RCV.NXT never
        /// passes a byte that was not received; memory stays within cap.
        #[test]
        fn recvbuf_random_inserts_reproduce_the_stream(
            cap in 1usize..4000,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let s = stream(1 << 16);
            let mut r = RecvBuf::new(cap);
            let mut have = vec![false; s.len()];
            let mut nxt = 0usize; // stream offset of RCV.NXT
            let mut read = Vec::new();
            let mut buf = vec![0; 3000];
            for o in ops {
                match o {
                    Op::Insert { off, len } => {
                        let start = (nxt + off).min(s.len());
                        let end = (start + len).min(s.len());
                        let win_end = nxt + r.window();
                        let adv = r.insert(off, &s[start..end]);
                        for h in have.iter_mut().take(end.min(win_end)).skip(start) {
                            *h = true;
                        }
                        nxt += adv;
                        prop_assert!(have[..nxt].iter().all(|&h| h));
                    }
                    Op::Read(n) => {
                        let n = r.read(&mut buf[..n]);
                        read.extend_from_slice(&buf[..n]);
                    }
                }
                prop_assert!(r.readable() <= cap);
                prop_assert!(r.ring.size() <= cap);
                prop_assert!(r.ooo_ranges() <= MAX_OOO_RANGES);
                prop_assert_eq!(read.len() + r.readable(), nxt);
            }
            // Deliver the rest in order: the whole stream comes out.
            let total = nxt + 5000;
            while nxt < total {
                let chunk = r.window().min(total - nxt).min(1000);
                nxt += r.insert(0, &s[nxt..nxt + chunk]);
                let n = r.read(&mut buf);
                read.extend_from_slice(&buf[..n]);
            }
            let n = r.read(&mut buf);
            read.extend_from_slice(&buf[..n]);
            prop_assert_eq!(&read[..], &s[..total]);
            prop_assert_eq!(r.heap_bytes(), 0);
        }

        /// SendBuf against a VecDeque model.
        #[test]
        fn sendbuf_matches_model(
            cap in 0usize..4000,
            ops in proptest::collection::vec(sop(), 0..200),
        ) {
            let s = stream(1 << 20);
            let mut pos = 0usize;
            let mut b = SendBuf::new(cap);
            let mut m = std::collections::VecDeque::new();
            let mut buf = vec![0; 3000];
            for o in ops {
                match o {
                    SOp::Write(n) => {
                        let w = b.write(&s[pos..pos + n]);
                        prop_assert_eq!(w, n.min(cap - m.len()));
                        m.extend(&s[pos..pos + w]);
                        pos += w;
                    }
                    SOp::Ack(n) => {
                        b.ack(n);
                        m.drain(..n.min(m.len()));
                    }
                    SOp::Copy(off, n) => {
                        let got = b.copy_out(off, &mut buf[..n]);
                        let want: Vec<u8> = m.iter().skip(off).take(n).copied().collect();
                        prop_assert_eq!(&buf[..got], &want[..]);
                    }
                }
                prop_assert_eq!(b.len(), m.len());
                prop_assert!(b.heap_bytes() <= cap);
                prop_assert_eq!(b.heap_bytes() == 0, m.is_empty());
            }
        }
    }
}
