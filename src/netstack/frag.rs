//! Fragment reassembly for IPv4 (RFC 791 §3.2, RFC 815) and IPv6 (RFC 8200
//! §4.5, RFC 5722), after Linux `ip_defrag` / `ip6_frag_queue` /
//! `inet_frag_queue_insert` / `ip_frag_reasm` (seeds 001, 004).
//!
//! One [`Reassembler`] per family. Each incomplete datagram is a queue of
//! non-overlapping byte ranges of its fragmentable part, sorted by offset.
//! Rules (SPEC B.1, B.5):
//!
//! - the timer of a datagram starts at its first fragment;
//! - an exact duplicate (same offset and length) is ignored;
//! - any other overlap drops the whole datagram (RFC 5722; Linux applies the
//!   same rule to IPv4 since 4.19), later fragments of the key start anew;
//! - a second last fragment with a different end, data beyond a known end,
//!   or an empty fragment drops the whole datagram (Linux `ip_frag_queue`
//!   `discard_qp`);
//! - memory (data + header + a fixed overhead per datagram and per fragment)
//!   is bounded: the oldest incomplete datagrams are evicted to make room
//!   (Linux `inet_frag_evictor`), reported through
//!   [`Reassembler::take_evicted`]; the number of fragments per datagram is
//!   capped so a flood of tiny fragments stays cheap.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{DropReason, Duration, Instant};

/// Which datagram a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragKey {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
        proto: u8,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        id: u32,
    },
}

/// A complete datagram: the first fragment's header bytes (as passed to
/// [`Reassembler::add`]) followed by the whole reassembled payload.
#[derive(Debug)]
pub struct Reassembled {
    pub buf: Vec<u8>,
    pub header_len: usize,
}

/// What became of one fragment.
#[derive(Debug)]
pub enum FragResult {
    /// Stored; the datagram is still incomplete.
    Incomplete,
    /// The datagram is complete.
    Complete(Reassembled),
    /// The datagram (or this fragment) was dropped for `DropReason`.
    Dropped(DropReason),
}

/// An incomplete datagram that timed out.
#[derive(Debug)]
pub struct Expired {
    pub key: FragKey,
    /// Header + the first fragment's data when the offset-0 fragment had
    /// arrived (for ICMP Time Exceeded's quote), else None.
    pub first: Option<Vec<u8>>,
}

/// Bytes accounted to each incomplete datagram besides its data.
pub const DATAGRAM_OVERHEAD: usize = 64;
/// Bytes accounted to each stored fragment besides its data.
pub const FRAGMENT_OVERHEAD: usize = 64;
/// Most fragments one datagram may consist of (a 65535-byte datagram over a
/// 576-byte path needs 117).
pub const MAX_FRAGMENTS: usize = 128;
/// Largest fragmentable part (offset + length) a fragment may reach.
pub const MAX_PAYLOAD: usize = 65535;

/// One incomplete datagram (Linux `struct inet_frag_queue`).
#[derive(Debug)]
struct FragQueue {
    /// First arrival + timeout; with `seq`, the key into `Reassembler::by_age`.
    expires: Instant,
    seq: u64,
    /// Header bytes that came with the offset-0 fragment.
    header: Vec<u8>,
    /// Received ranges `(offset, data)`: sorted, non-overlapping, non-empty.
    ranges: Vec<(usize, Vec<u8>)>,
    /// End of the fragmentable part, once the last fragment arrived.
    end: Option<usize>,
    /// Sum of the ranges' lengths.
    received: usize,
    /// Bytes accounted to this datagram.
    mem: usize,
}

/// How one fragment relates to a queue.
enum Fit {
    /// An exact duplicate of a received range.
    Duplicate,
    /// New data, to insert at this index of `ranges`.
    New(usize),
}

impl FragQueue {
    /// End of the highest received range.
    fn max_end(&self) -> usize {
        self.ranges.last().map_or(0, |(o, d)| o + d.len())
    }

    /// Check `[offset, end)` against what was received (Linux
    /// `ip_frag_queue` length checks + `inet_frag_queue_insert`). An error
    /// means the whole datagram is to be dropped.
    fn fit(&mut self, offset: usize, end: usize, more: bool) -> Result<Fit, DropReason> {
        if !more {
            // A last fragment must agree with the known end and with the
            // data already received.
            if self.end.is_some_and(|e| e != end) || self.max_end() > end {
                return Err(DropReason::FragBadLength);
            }
        } else if self.end.is_some_and(|e| end > e) {
            return Err(DropReason::FragBadLength);
        }
        let idx = self.ranges.partition_point(|(o, _)| *o < offset);
        if let Some((o, d)) = self.ranges.get(idx) {
            if *o == offset && d.len() == end - offset {
                if !more {
                    self.end = Some(end);
                }
                return Ok(Fit::Duplicate);
            }
            if *o < end {
                return Err(DropReason::FragOverlap);
            }
        }
        if idx > 0 {
            let (o, d) = &self.ranges[idx - 1];
            if o + d.len() > offset {
                return Err(DropReason::FragOverlap);
            }
        }
        Ok(Fit::New(idx))
    }

    fn is_complete(&self) -> bool {
        self.end == Some(self.received)
    }

    /// Header ++ payload, with `extra` (not stored) inserted at range index
    /// `idx` (Linux `ip_frag_reasm`). Allocates once, sized exactly.
    fn assemble(&self, header: &[u8], extra: Option<(usize, &[u8])>) -> Reassembled {
        let total = self.received + extra.map_or(0, |(_, d)| d.len());
        let mut buf = Vec::with_capacity(header.len() + total);
        buf.extend_from_slice(header);
        for (i, (_, d)) in self.ranges.iter().enumerate() {
            if let Some((_, x)) = extra.filter(|(idx, _)| *idx == i) {
                buf.extend_from_slice(x);
            }
            buf.extend_from_slice(d);
        }
        if let Some((_, x)) = extra.filter(|(idx, _)| *idx == self.ranges.len()) {
            buf.extend_from_slice(x);
        }
        Reassembled {
            buf,
            header_len: header.len(),
        }
    }
}

/// The reassembly queues of one address family (Linux `struct inet_frags`
/// + its `netns_frags` memory accounting).
#[derive(Debug)]
pub struct Reassembler {
    mem_limit: usize,
    timeout: Duration,
    queues: HashMap<FragKey, FragQueue>,
    /// Datagrams by (expiry, creation order): the oldest first, which is
    /// both the eviction order and the expiry order.
    by_age: BTreeMap<(Instant, u64), FragKey>,
    mem: usize,
    next_seq: u64,
    evicted: usize,
}

impl Reassembler {
    /// Queues bounded to `mem_limit` bytes (Linux `ipfrag_high_thresh`);
    /// each datagram lives at most `timeout` (`ipfrag_time`) from its first
    /// fragment.
    pub fn new(mem_limit: usize, timeout: Duration) -> Self {
        Reassembler {
            mem_limit,
            timeout,
            queues: HashMap::new(),
            by_age: BTreeMap::new(),
            mem: 0,
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Add one fragment: `offset` (bytes) and `more` (MF) of the fragmentable
    /// part, its `data`, and for the offset-0 fragment the `header` bytes to
    /// keep in front of the reassembled payload (Linux `ip_defrag` →
    /// `ip_frag_queue` → `ip_frag_reasm`; `ipv6_frag_rcv` →
    /// `ip6_frag_queue` → `ip6_frag_reasm`).
    ///
    /// An atomic fragment (offset 0, no MF) completes at once without
    /// touching any queue (RFC 6946). `FragTooBig` (offset + length past
    /// 65535) drops only this fragment; overlap, length errors, an empty
    /// fragment and too many fragments drop the whole datagram. Datagrams
    /// evicted to make room are counted for [`Reassembler::take_evicted`].
    pub fn add(
        &mut self,
        now: Instant,
        key: FragKey,
        offset: usize,
        more: bool,
        data: &[u8],
        header: Option<&[u8]>,
    ) -> FragResult {
        let end = match offset.checked_add(data.len()) {
            Some(e) if e <= MAX_PAYLOAD => e,
            _ => return FragResult::Dropped(DropReason::FragTooBig),
        };
        let header = if offset == 0 {
            header.unwrap_or(&[])
        } else {
            &[]
        };
        if offset == 0 && !more {
            let q = FragQueue {
                expires: now,
                seq: 0,
                header: Vec::new(),
                ranges: Vec::new(),
                end: Some(end),
                received: 0,
                mem: 0,
            };
            return FragResult::Complete(q.assemble(header, Some((0, data))));
        }
        if data.is_empty() {
            return self.kill(&key, DropReason::FragBadLength);
        }

        let (idx, cur_mem) = match self.queues.get_mut(&key) {
            Some(q) => match q.fit(offset, end, more) {
                Err(reason) => return self.kill(&key, reason),
                Ok(Fit::Duplicate) => {
                    if q.is_complete() {
                        return self.complete(&key, None);
                    }
                    return FragResult::Incomplete;
                }
                Ok(Fit::New(idx)) => {
                    let final_end = if more { q.end } else { Some(end) };
                    if final_end == Some(q.received + data.len()) {
                        return self.complete(&key, Some((idx, offset, data, header)));
                    }
                    if q.ranges.len() >= MAX_FRAGMENTS {
                        return self.kill(&key, DropReason::FragMemLimit);
                    }
                    (idx, Some(q.mem))
                }
            },
            None => (0, None),
        };

        // Memory: this fragment (+ a new datagram's overhead) must fit next
        // to its own datagram, else the datagram can never complete.
        let need = FRAGMENT_OVERHEAD
            + data.len()
            + header.len()
            + if cur_mem.is_none() {
                DATAGRAM_OVERHEAD
            } else {
                0
            };
        if cur_mem.unwrap_or(0).saturating_add(need) > self.mem_limit {
            return self.kill(&key, DropReason::FragMemLimit);
        }
        self.inet_frag_evictor(need, &key);

        let q = match self.queues.get_mut(&key) {
            Some(q) => q,
            None => {
                let expires = now + self.timeout;
                let seq = self.next_seq;
                self.next_seq += 1;
                self.by_age.insert((expires, seq), key);
                self.queues.entry(key).or_insert(FragQueue {
                    expires,
                    seq,
                    header: Vec::new(),
                    ranges: Vec::new(),
                    end: None,
                    received: 0,
                    mem: DATAGRAM_OVERHEAD,
                })
            }
        };
        if offset == 0 {
            q.header = header.to_vec();
        }
        if !more {
            q.end = Some(end);
        }
        q.ranges.insert(idx, (offset, data.to_vec()));
        q.received += data.len();
        let added = need
            - if cur_mem.is_none() {
                DATAGRAM_OVERHEAD
            } else {
                0
            };
        q.mem += added;
        self.mem += need;
        FragResult::Incomplete
    }

    /// Datagrams evicted for memory since the last call (the caller counts
    /// each as a reassembly failure, Linux `IPSTATS_MIB_REASMFAILS` in
    /// `inet_frag_evictor`). Addition to the stub interface.
    pub fn take_evicted(&mut self) -> usize {
        std::mem::take(&mut self.evicted)
    }

    /// Remove the datagrams whose timer ran out (Linux `ip_expire` /
    /// `ip6_frag_expire`).
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        while let Some((&(t, _), &key)) = self.by_age.first_key_value() {
            if t > now {
                break;
            }
            let Some(q) = self.remove(&key) else { break };
            let first = match q.ranges.first() {
                Some((0, d)) => {
                    let mut v = Vec::with_capacity(q.header.len() + d.len());
                    v.extend_from_slice(&q.header);
                    v.extend_from_slice(d);
                    Some(v)
                }
                _ => None,
            };
            out.push(Expired { key, first });
        }
        out
    }

    /// When the oldest datagram expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_age.first_key_value().map(|(&(t, _), _)| t)
    }

    /// Bytes currently accounted to incomplete datagrams.
    pub fn mem_used(&self) -> usize {
        self.mem
    }

    /// Incomplete datagrams held.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ----- internals -----

    /// Evict the oldest datagrams other than `keep` until `need` more bytes
    /// fit (Linux `inet_frag_evictor`).
    fn inet_frag_evictor(&mut self, need: usize, keep: &FragKey) {
        while self.mem + need > self.mem_limit {
            let victim = self.by_age.values().find(|k| *k != keep).copied();
            match victim {
                Some(k) => {
                    self.remove(&k);
                    self.evicted += 1;
                }
                None => break,
            }
        }
    }

    /// Drop the datagram `key` (if held) and report `reason` (Linux
    /// `inet_frag_kill`).
    fn kill(&mut self, key: &FragKey, reason: DropReason) -> FragResult {
        self.remove(key);
        FragResult::Dropped(reason)
    }

    /// Remove `key`'s datagram and its accounting.
    fn remove(&mut self, key: &FragKey) -> Option<FragQueue> {
        let q = self.queues.remove(key)?;
        self.by_age.remove(&(q.expires, q.seq));
        self.mem -= q.mem;
        Some(q)
    }

    /// Remove `key`'s datagram and build it, with the not-stored final
    /// fragment `(index, offset, data, header)` if any.
    fn complete(
        &mut self,
        key: &FragKey,
        last: Option<(usize, usize, &[u8], &[u8])>,
    ) -> FragResult {
        let Some(q) = self.remove(key) else {
            return FragResult::Incomplete;
        };
        let r = match last {
            // The final fragment is new data, so when it is the offset-0
            // one no header was stored yet.
            Some((idx, 0, data, header)) => q.assemble(header, Some((idx, data))),
            Some((idx, _, data, _)) => q.assemble(&q.header, Some((idx, data))),
            None => q.assemble(&q.header, None),
        };
        FragResult::Complete(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1_000_000 + ms as i64)
    }

    fn k4(id: u16) -> FragKey {
        FragKey::V4 {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            id,
            proto: 17,
        }
    }

    fn k6(id: u32) -> FragKey {
        FragKey::V6 {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            id,
        }
    }

    const HDR: &[u8] = &[0x45, 0, 0, 0, 1, 2, 3, 4];

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn r4() -> Reassembler {
        Reassembler::new(1 << 20, Duration::from_secs(30))
    }

    /// Feed `(offset, len)` pieces of `p` (the last piece is the one ending
    /// at `p.len()`); return the results.
    fn feed(
        r: &mut Reassembler,
        key: FragKey,
        p: &[u8],
        pieces: &[(usize, usize)],
    ) -> Vec<FragResult> {
        pieces
            .iter()
            .map(|&(o, l)| {
                let hdr = (o == 0).then_some(HDR);
                r.add(t(0), key, o, o + l < p.len(), &p[o..o + l], hdr)
            })
            .collect()
    }

    fn expect_complete(res: FragResult, p: &[u8]) {
        match res {
            FragResult::Complete(c) => {
                assert_eq!(c.header_len, HDR.len());
                assert_eq!(&c.buf[..HDR.len()], HDR);
                assert_eq!(&c.buf[HDR.len()..], p);
                assert_eq!(c.buf.capacity(), HDR.len() + p.len());
            }
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    fn check_order(pieces: &[(usize, usize)]) {
        let p = payload(64);
        for key in [k4(1), k6(1)] {
            let mut r = r4();
            let mut res = feed(&mut r, key, &p, pieces);
            let last = res.pop().unwrap();
            for x in res {
                assert!(matches!(x, FragResult::Incomplete), "{x:?}");
            }
            expect_complete(last, &p);
            assert!(r.is_empty());
            assert_eq!(r.mem_used(), 0);
            assert_eq!(r.next_deadline(), None);
        }
    }

    #[test]
    fn b1_reasm_in_order() {
        check_order(&[(0, 16), (16, 16), (32, 16), (48, 16)]);
    }

    #[test]
    fn b1_reasm_out_of_order() {
        check_order(&[(16, 16), (48, 16), (0, 16), (32, 16)]);
    }

    #[test]
    fn b1_reasm_reverse_order() {
        check_order(&[(48, 16), (32, 16), (16, 16), (0, 16)]);
    }

    #[test]
    fn b1_reasm_atomic_completes_at_once() {
        let mut r = r4();
        let p = payload(20);
        expect_complete(r.add(t(0), k4(1), 0, false, &p, Some(HDR)), &p);
        assert!(r.is_empty());
    }

    #[test]
    fn b1_reasm_exact_duplicate_ignored() {
        let p = payload(48);
        for key in [k4(2), k6(2)] {
            let mut r = r4();
            assert!(matches!(
                r.add(t(0), key, 0, true, &p[..16], Some(HDR)),
                FragResult::Incomplete
            ));
            let mem = r.mem_used();
            // duplicate first fragment (with a different header: ignored)
            assert!(matches!(
                r.add(t(1), key, 0, true, &p[..16], Some(&[9; 8])),
                FragResult::Incomplete
            ));
            assert_eq!(r.mem_used(), mem);
            assert!(matches!(
                r.add(t(1), key, 32, false, &p[32..], None),
                FragResult::Incomplete
            ));
            // duplicate last fragment
            assert!(matches!(
                r.add(t(2), key, 32, false, &p[32..], None),
                FragResult::Incomplete
            ));
            assert_eq!(r.len(), 1);
            expect_complete(r.add(t(3), key, 16, true, &p[16..32], None), &p);
            assert_eq!(r.mem_used(), 0);
        }
    }

    #[test]
    fn b1_reasm_partial_overlap_drops_datagram() {
        let p = payload(48);
        for key in [k4(3), k6(3)] {
            let mut r = r4();
            assert!(matches!(
                r.add(t(0), key, 0, true, &p[..16], Some(HDR)),
                FragResult::Incomplete
            ));
            assert!(matches!(
                r.add(t(0), key, 16, true, &p[16..32], None),
                FragResult::Incomplete
            ));
            // overlaps [0,16) and [16,32)
            assert!(matches!(
                r.add(t(0), key, 8, true, &p[8..24], None),
                FragResult::Dropped(DropReason::FragOverlap)
            ));
            assert!(r.is_empty());
            assert_eq!(r.mem_used(), 0);
            // later fragments start a new datagram, which cannot complete
            // without the pieces the overlap discarded
            assert!(matches!(
                r.add(t(1), key, 32, false, &p[32..], None),
                FragResult::Incomplete
            ));
            assert!(matches!(
                r.add(t(1), key, 16, true, &p[16..32], None),
                FragResult::Incomplete
            ));
            assert_eq!(r.len(), 1);
        }
    }

    #[test]
    fn b5_reasm_overlap_same_offset_other_length_drops() {
        let p = payload(48);
        let mut r = r4();
        r.add(t(0), k6(4), 8, true, &p[8..24], None);
        assert!(matches!(
            r.add(t(0), k6(4), 8, true, &p[8..16], None),
            FragResult::Dropped(DropReason::FragOverlap)
        ));
        assert!(r.is_empty());
        // contained inside a received range
        r.add(t(0), k6(4), 8, true, &p[8..32], None);
        assert!(matches!(
            r.add(t(0), k6(4), 16, true, &p[16..24], None),
            FragResult::Dropped(DropReason::FragOverlap)
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn b5_reasm_overlap_with_last_fragment_drops() {
        let p = payload(48);
        for key in [k4(5), k6(5)] {
            let mut r = r4();
            assert!(matches!(
                r.add(t(0), key, 32, false, &p[32..], None),
                FragResult::Incomplete
            ));
            assert!(matches!(
                r.add(t(0), key, 24, true, &p[24..40], None),
                FragResult::Dropped(DropReason::FragOverlap)
            ));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn b1_reasm_bad_lengths_drop_datagram() {
        let p = payload(64);
        let mut r = r4();
        // second last fragment with another end
        r.add(t(0), k4(6), 32, false, &p[32..48], None);
        assert!(matches!(
            r.add(t(0), k4(6), 48, false, &p[48..], None),
            FragResult::Dropped(DropReason::FragBadLength)
        ));
        assert!(r.is_empty());
        // data beyond the known end
        r.add(t(0), k4(6), 16, false, &p[16..32], None);
        assert!(matches!(
            r.add(t(0), k4(6), 32, true, &p[32..48], None),
            FragResult::Dropped(DropReason::FragBadLength)
        ));
        assert!(r.is_empty());
        // a last fragment ending before received data
        r.add(t(0), k4(6), 32, true, &p[32..48], None);
        assert!(matches!(
            r.add(t(0), k4(6), 16, false, &p[16..24], None),
            FragResult::Dropped(DropReason::FragBadLength)
        ));
        assert!(r.is_empty());
        // empty non-last fragment
        assert!(matches!(
            r.add(t(0), k4(6), 8, true, &[], None),
            FragResult::Dropped(DropReason::FragBadLength)
        ));
        assert_eq!(r.mem_used(), 0);
    }

    #[test]
    fn b1_reasm_too_big() {
        let mut r = r4();
        let p = payload(16);
        assert!(matches!(
            r.add(t(0), k4(7), 65528, true, &p, None),
            FragResult::Dropped(DropReason::FragTooBig)
        ));
        assert!(matches!(
            r.add(t(0), k6(7), usize::MAX - 4, false, &p, None),
            FragResult::Dropped(DropReason::FragTooBig)
        ));
        // exactly 65535 is fine
        assert!(matches!(
            r.add(t(0), k4(7), 65528, false, &p[..7], None),
            FragResult::Incomplete
        ));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn b1_reasm_expire_with_first() {
        let p = payload(48);
        let mut r = r4();
        r.add(t(0), k4(8), 0, true, &p[..16], Some(HDR));
        r.add(t(5000), k4(8), 32, false, &p[32..], None);
        assert_eq!(r.next_deadline(), Some(t(30_000)));
        assert!(r.expire(t(29_999)).is_empty());
        let ex = r.expire(t(30_000));
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].key, k4(8));
        let first = ex[0].first.as_ref().unwrap();
        assert_eq!(&first[..HDR.len()], HDR);
        assert_eq!(&first[HDR.len()..], &p[..16]);
        assert!(r.is_empty());
        assert_eq!(r.mem_used(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn b5_reasm_expire_without_first() {
        let p = payload(48);
        let mut r = Reassembler::new(1 << 20, Duration::from_secs(60));
        r.add(t(0), k6(9), 16, true, &p[16..32], None);
        r.add(t(0), k6(9), 32, false, &p[32..], None);
        let ex = r.expire(t(60_000));
        assert_eq!(ex.len(), 1);
        assert!(ex[0].first.is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn b1_reasm_next_deadline_is_earliest() {
        let p = payload(32);
        let mut r = r4();
        assert_eq!(r.next_deadline(), None);
        r.add(t(100), k4(1), 16, false, &p[16..], None);
        r.add(t(200), k4(2), 16, false, &p[16..], None);
        // a later fragment does not restart the timer
        r.add(t(300), k4(1), 0, true, &p[..8], Some(HDR));
        assert_eq!(r.next_deadline(), Some(t(30_100)));
        let ex = r.expire(t(30_150));
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].key, k4(1));
        assert_eq!(r.next_deadline(), Some(t(30_200)));
    }

    #[test]
    fn b1_reasm_memory_cap_evicts_oldest() {
        let limit = 4096;
        let mut r = Reassembler::new(limit, Duration::from_secs(30));
        let p = payload(1200);
        // a flood of incomplete datagrams, each holding a 500-byte piece
        for id in 0..100u16 {
            let res = r.add(t(id as u64), k4(id), 0, true, &p[..500], Some(HDR));
            assert!(matches!(res, FragResult::Incomplete), "{res:?}");
            assert!(r.mem_used() <= limit);
        }
        let evicted = r.take_evicted();
        assert_eq!(evicted + r.len(), 100);
        assert!(evicted > 0);
        assert_eq!(r.take_evicted(), 0);
        // the survivors are the newest
        let ex = r.expire(t(1_000_000));
        assert!(
            ex.iter()
                .all(|e| matches!(e.key, FragKey::V4 { id, .. } if id >= 100 - ex.len() as u16))
        );
        // refill, then a new datagram still completes
        for id in 0..100u16 {
            r.add(t(id as u64), k4(id), 0, true, &p[..500], Some(HDR));
        }
        let key = k4(1000);
        assert!(matches!(
            r.add(t(200), key, 0, true, &p[..600], Some(HDR)),
            FragResult::Incomplete
        ));
        assert!(r.mem_used() <= limit);
        expect_complete(r.add(t(201), key, 600, false, &p[600..], None), &p);
        assert!(r.mem_used() <= limit);
    }

    #[test]
    fn b1_reasm_fragment_alone_over_limit() {
        let mut r = Reassembler::new(1000, Duration::from_secs(30));
        let p = payload(2000);
        r.add(t(0), k4(1), 0, true, &p[..100], Some(HDR));
        assert!(matches!(
            r.add(t(0), k4(2), 0, true, &p[..1000], Some(HDR)),
            FragResult::Dropped(DropReason::FragMemLimit)
        ));
        // the other datagram was not evicted for nothing
        assert_eq!(r.len(), 1);
        assert_eq!(r.take_evicted(), 0);
        // a datagram that outgrows the limit is dropped itself
        r.add(t(0), k4(3), 0, true, &p[..400], Some(HDR));
        assert!(matches!(
            r.add(t(0), k4(3), 400, true, &p[400..900], None),
            FragResult::Dropped(DropReason::FragMemLimit)
        ));
        assert!(r.mem_used() <= 1000);
        assert!(!r.queues.contains_key(&k4(3)));
    }

    #[test]
    fn b1_reasm_fragment_count_cap() {
        let mut r = r4();
        let p = payload(4096);
        let mut dropped = false;
        for i in 0..=MAX_FRAGMENTS {
            let o = 8 + 16 * i;
            match r.add(t(0), k4(1), o, true, &p[o..o + 8], None) {
                FragResult::Incomplete => assert!(i < MAX_FRAGMENTS),
                FragResult::Dropped(DropReason::FragMemLimit) => {
                    assert_eq!(i, MAX_FRAGMENTS);
                    dropped = true;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(dropped);
        assert!(r.is_empty());
        assert_eq!(r.mem_used(), 0);
    }

    #[test]
    fn b1_reasm_families_and_keys_separate() {
        let p = payload(32);
        let mut r = r4();
        r.add(t(0), k4(1), 0, true, &p[..16], Some(HDR));
        r.add(t(0), k4(2), 16, false, &p[16..], None);
        assert_eq!(r.len(), 2);
        let other = FragKey::V4 {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            id: 1,
            proto: 6,
        };
        assert!(matches!(
            r.add(t(0), other, 16, false, &p[16..], None),
            FragResult::Incomplete
        ));
        expect_complete(r.add(t(0), k4(1), 16, false, &p[16..], None), &p);
        assert_eq!(r.len(), 2);
    }
}
