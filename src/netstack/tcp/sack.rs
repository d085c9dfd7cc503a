//! The sender's SACK scoreboard: which bytes above SND.UNA the peer says
//! it holds (RFC 2018 blocks), with RFC 6675's IsLost and a NextSeg-style
//! search for the next hole to retransmit.
//!
//! Ranges are kept sorted, disjoint and not adjacent, in sequence space
//! (wrapping comparisons relative to SND.UNA). Their number is bounded by
//! [`MAX_RANGES`]: when a new block would exceed it, the highest range is
//! forgotten — losing SACK information is always safe (at worst a
//! retransmission the peer did not need). No heap while empty.

use smoltcp::wire::TcpSeqNumber;

use super::LazyVec;

/// Most separate SACKed ranges remembered.
pub const MAX_RANGES: usize = 32;
/// RFC 6675 §2 DupThresh.
pub const DUP_THRESH: u32 = 3;
/// Blocks longer than this are nonsense (no window exceeds 2^30, RFC 7323).
const MAX_BLOCK: u32 = 1 << 30;

/// `a - b` in sequence space (wrapping).
#[inline]
fn diff(a: TcpSeqNumber, b: TcpSeqNumber) -> u32 {
    a.0.wrapping_sub(b.0) as u32
}

#[inline]
fn add(a: TcpSeqNumber, n: u32) -> TcpSeqNumber {
    TcpSeqNumber(a.0.wrapping_add(n as i32))
}

/// What the peer told us it has (sequence space).
#[derive(Debug, Default, Clone)]
pub struct Scoreboard {
    /// (start, end) half-open, sorted upward from `base`.
    ranges: LazyVec<(TcpSeqNumber, TcpSeqNumber)>,
    /// SND.UNA as last seen: every range lies above it.
    base: TcpSeqNumber,
    sacked: u32,
}

impl Scoreboard {
    pub fn new() -> Self {
        Scoreboard::default()
    }

    /// Offset of `s` from the base.
    #[inline]
    fn off(&self, s: TcpSeqNumber) -> u32 {
        diff(s, self.base)
    }

    /// Add the SACK blocks of one ACK (RFC 2018 §3). Blocks at or below
    /// `snd_una` (D-SACK, RFC 2883) and empty or absurd blocks are ignored;
    /// a block that straddles SND.UNA is cut to it. The caller should drop
    /// blocks beyond SND.NXT first or use [`Scoreboard::update_within`].
    pub fn update(&mut self, snd_una: TcpSeqNumber, blocks: &[(TcpSeqNumber, TcpSeqNumber)]) {
        self.on_cumulative_ack(snd_una);
        for &(s, e) in blocks {
            let len = diff(e, s);
            if len == 0 || len > MAX_BLOCK {
                continue;
            }
            // Cut to SND.UNA; ignore wholly acknowledged (D-SACK) blocks.
            let (s_off, e_off) = (self.off(s), self.off(e));
            if e_off == 0 || e_off > MAX_BLOCK {
                continue;
            }
            // A start below the base wraps to a large offset.
            let s_off = if s_off > e_off { 0 } else { s_off };
            self.insert(s_off, e_off);
        }
    }

    /// [`Scoreboard::update`] keeping only blocks that end at or below
    /// `snd_nxt` (Linux `tcp_is_sackblock_valid`: a peer cannot SACK what
    /// was never sent).
    pub fn update_within(
        &mut self,
        snd_una: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        blocks: &[(TcpSeqNumber, TcpSeqNumber)],
    ) {
        let lim = diff(snd_nxt, snd_una);
        self.on_cumulative_ack(snd_una);
        for &(s, e) in blocks {
            if diff(e, snd_una) <= lim {
                self.update(snd_una, &[(s, e)]);
            }
        }
    }

    /// Insert [s, e) given as offsets from the base.
    fn insert(&mut self, s: u32, e: u32) {
        let base = self.base;
        let off = |x: TcpSeqNumber| diff(x, base);
        let i = self.ranges.partition_point(|r| off(r.1) < s);
        let j = self.ranges.partition_point(|r| off(r.0) <= e);
        let (mut ns, mut ne) = (s, e);
        if i < j {
            ns = ns.min(off(self.ranges[i].0));
            ne = ne.max(off(self.ranges[j - 1].1));
            for r in &self.ranges[i..j] {
                self.sacked -= diff(r.1, r.0);
            }
            self.ranges.vec_mut().drain(i + 1..j);
            self.ranges[i] = (add(base, ns), add(base, ne));
        } else {
            self.ranges
                .vec_mut()
                .insert(i, (add(base, ns), add(base, ne)));
        }
        self.sacked += ne - ns;
        if self.ranges.len() > MAX_RANGES
            && let Some((a, b)) = self.ranges.pop()
        {
            self.sacked -= diff(b, a);
        }
    }

    /// SND.UNA advanced: forget what is now cumulatively acknowledged.
    pub fn on_cumulative_ack(&mut self, snd_una: TcpSeqNumber) {
        let adv = diff(snd_una, self.base);
        if adv == 0 {
            return;
        }
        if self.ranges.is_empty() {
            self.base = snd_una;
            return;
        }
        if adv > MAX_BLOCK.saturating_mul(2) {
            // An old ACK (SND.UNA behind what we saw): nothing to trim.
            return;
        }
        let base = self.base;
        let n = self.ranges.partition_point(|r| diff(r.1, base) <= adv);
        for r in &self.ranges[..n] {
            self.sacked -= diff(r.1, r.0);
        }
        self.ranges.vec_mut().drain(..n);
        if let Some(first) = self.ranges.first_mut()
            && diff(first.0, base) < adv
        {
            self.sacked -= diff(snd_una, first.0);
            first.0 = snd_una;
        }
        self.base = snd_una;
        if self.ranges.is_empty() {
            self.ranges.clear();
        }
    }

    /// Is all of [start, end) SACKed?
    pub fn is_sacked(&self, start: TcpSeqNumber, end: TcpSeqNumber) -> bool {
        let (s, e) = (self.off(start), self.off(end));
        if e <= s || e > MAX_BLOCK.saturating_mul(2) {
            return false;
        }
        let i = self.ranges.partition_point(|r| self.off(r.1) < e);
        self.ranges
            .get(i)
            .is_some_and(|r| self.off(r.0) <= s && self.off(r.1) >= e)
    }

    /// Bytes SACKed above SND.UNA.
    pub fn sacked_bytes(&self) -> u32 {
        self.sacked
    }

    /// Number of separate SACKed ranges.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// The highest SACKed sequence number + 1, if any.
    pub fn high_sacked(&self) -> Option<TcpSeqNumber> {
        self.ranges.last().map(|r| r.1)
    }

    /// RFC 6675 §4 IsLost(SeqNum): DupThresh discontiguous SACKed ranges
    /// above `seq`, or more than (DupThresh − 1)·SMSS bytes SACKed above it.
    pub fn is_lost(&self, seq: TcpSeqNumber, mss: u32) -> bool {
        let s = self.off(seq);
        // First byte counted; `seq` below the base: every SACKed byte.
        let s1 = if s > MAX_BLOCK.saturating_mul(2) {
            0
        } else {
            s + 1
        };
        let (mut blocks, mut bytes) = (0u32, 0u32);
        for r in self.ranges.iter().rev() {
            let (a, b) = (self.off(r.0), self.off(r.1));
            if b <= s1 {
                break;
            }
            blocks += 1;
            bytes = bytes.saturating_add(b - a.max(s1));
            if blocks >= DUP_THRESH || bytes > (DUP_THRESH - 1).saturating_mul(mss) {
                return true;
            }
        }
        false
    }

    /// The first hole (un-SACKed range) at or after `after` (clamped to
    /// `snd_una`) that lies below the highest SACKed byte and below
    /// `snd_nxt`: RFC 6675 §4 NextSeg rule (1) (a) and (b). The caller
    /// checks (c) with [`Scoreboard::is_lost`] on the hole's start (or
    /// uses [`Scoreboard::next_lost_hole`]).
    pub fn next_hole(
        &self,
        snd_una: TcpSeqNumber,
        after: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        let lim = diff(snd_nxt, self.base);
        if lim > MAX_BLOCK.saturating_mul(2) {
            return None;
        }
        let una = diff(snd_una, self.base);
        let a = diff(after, self.base);
        let mut pos = if a > MAX_BLOCK.saturating_mul(2) {
            una // `after` behind the base
        } else if a >= lim {
            return None;
        } else {
            a.max(una)
        };
        for r in self.ranges.iter() {
            let (rs, re) = (self.off(r.0), self.off(r.1));
            if re <= pos {
                continue;
            }
            if rs > pos {
                let end = rs.min(lim);
                if end <= pos {
                    return None;
                }
                return Some((add(self.base, pos), add(self.base, end)));
            }
            pos = re;
        }
        None
    }

    /// [`Scoreboard::next_hole`] whose start IsLost (NextSeg rule (1)),
    /// limited to `mss` bytes.
    pub fn next_lost_hole(
        &self,
        snd_una: TcpSeqNumber,
        after: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        mss: u32,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        let (s, e) = self.next_hole(snd_una, after, snd_nxt)?;
        if !self.is_lost(s, mss) {
            return None;
        }
        let len = diff(e, s).min(mss.max(1));
        Some((s, add(s, len)))
    }

    /// Forget everything (RTO, RFC 6675 §5.1; or connection reset).
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.sacked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sq(v: u32) -> TcpSeqNumber {
        TcpSeqNumber(v as i32)
    }

    const ISS: u32 = 0xffff_f000; // wraps within the tests

    fn at(off: u32) -> TcpSeqNumber {
        sq(ISS.wrapping_add(off))
    }

    fn board(una: u32, blocks: &[(u32, u32)]) -> Scoreboard {
        let mut b = Scoreboard::new();
        let bl: Vec<_> = blocks.iter().map(|&(s, e)| (at(s), at(e))).collect();
        b.update(at(una), &bl);
        b
    }

    #[test]
    fn rfc2018_blocks_merge_and_count() {
        let mut b = board(0, &[(1000, 2000), (3000, 4000)]);
        assert_eq!(b.sacked_bytes(), 2000);
        assert_eq!(b.ranges(), 2);
        assert!(b.is_sacked(at(1000), at(2000)));
        assert!(b.is_sacked(at(1500), at(1600)));
        assert!(!b.is_sacked(at(1500), at(3500)));
        assert!(!b.is_sacked(at(0), at(100)));
        // Overlapping and adjacent blocks merge.
        b.update(at(0), &[(at(1500), at(3000))]);
        assert_eq!(b.ranges(), 1);
        assert_eq!(b.sacked_bytes(), 3000);
        assert!(b.is_sacked(at(1000), at(4000)));
        assert_eq!(b.high_sacked(), Some(at(4000)));
    }

    #[test]
    fn rfc2883_dsack_and_bogus_blocks_are_ignored() {
        let mut b = board(5000, &[(1000, 2000)]);
        assert_eq!(b.ranges(), 0);
        b.update(at(5000), &[(at(6000), at(6000)), (at(7000), at(6500))]);
        assert_eq!(b.ranges(), 0);
        // Straddling SND.UNA: cut.
        b.update(at(5000), &[(at(4000), at(5500))]);
        assert_eq!(b.sacked_bytes(), 500);
        // Beyond SND.NXT: ignored by update_within.
        let mut b = Scoreboard::new();
        b.update_within(
            at(0),
            at(3000),
            &[(at(1000), at(2000)), (at(2500), at(4000))],
        );
        assert_eq!(b.sacked_bytes(), 1000);
    }

    #[test]
    fn cumulative_ack_trims_and_releases() {
        let mut b = board(0, &[(1000, 2000), (3000, 4000)]);
        b.on_cumulative_ack(at(1500));
        assert_eq!(b.sacked_bytes(), 1500);
        assert!(b.is_sacked(at(1500), at(2000)));
        b.on_cumulative_ack(at(4000));
        assert_eq!(b.sacked_bytes(), 0);
        assert_eq!(b.ranges(), 0);
        assert_eq!(b.ranges.capacity(), 0);
    }

    #[test]
    fn rfc6675_s4_is_lost() {
        let mss = 1000;
        // Two SMSS SACKed above: not lost (needs more than 2 * SMSS).
        let b = board(0, &[(1000, 3000)]);
        assert!(!b.is_lost(at(0), mss));
        // More than (DupThresh - 1) * SMSS bytes above.
        let b = board(0, &[(1000, 3001)]);
        assert!(b.is_lost(at(0), mss));
        // DupThresh discontiguous ranges above, few bytes.
        let b = board(0, &[(1000, 1010), (2000, 2010), (3000, 3010)]);
        assert!(b.is_lost(at(0), mss));
        assert!(!b.is_lost(at(1500), mss));
        // Only bytes strictly above seq count.
        let b = board(0, &[(1000, 4000)]);
        assert!(b.is_lost(at(500), mss));
        assert!(!b.is_lost(at(2500), mss));
        // Below SND.UNA (wrapped) or far above: no panic, sane answers.
        assert!(b.is_lost(sq(ISS.wrapping_sub(10)), mss));
        assert!(!b.is_lost(sq(ISS.wrapping_add(0x7fff_ffff)), mss));
        assert!(b.is_lost(at(u32::MAX), mss), "ISS - 1");
    }

    #[test]
    fn rfc6675_s4_next_seg_holes() {
        let b = board(0, &[(1000, 2000), (3000, 4000)]);
        let snd_nxt = at(10_000);
        assert_eq!(b.next_hole(at(0), at(0), snd_nxt), Some((at(0), at(1000))));
        // After HighRxt.
        assert_eq!(
            b.next_hole(at(0), at(500), snd_nxt),
            Some((at(500), at(1000)))
        );
        assert_eq!(
            b.next_hole(at(0), at(1000), snd_nxt),
            Some((at(2000), at(3000)))
        );
        assert_eq!(
            b.next_hole(at(0), at(2500), snd_nxt),
            Some((at(2500), at(3000)))
        );
        // Nothing below the highest SACKed byte is left.
        assert_eq!(b.next_hole(at(0), at(3000), snd_nxt), None);
        // `after` below SND.UNA is clamped.
        let b2 = board(500, &[(1000, 2000)]);
        assert_eq!(
            b2.next_hole(at(500), at(0), snd_nxt),
            Some((at(500), at(1000)))
        );
        // IsLost applies to the hole (rule 1.c): [2000, 3000) has only
        // 1000 bytes and one range above.
        assert_eq!(
            b.next_lost_hole(at(0), at(0), snd_nxt, 500),
            Some((at(0), at(500)))
        );
        assert_eq!(
            b.next_lost_hole(at(0), at(1000), snd_nxt, 400),
            Some((at(2000), at(2400)))
        );
        assert_eq!(b.next_lost_hole(at(0), at(1000), snd_nxt, 1000), None);
    }

    #[test]
    fn ranges_are_bounded() {
        let mut b = Scoreboard::new();
        for k in 0..(MAX_RANGES as u32 + 10) {
            b.update(at(0), &[(at(1000 + k * 100), at(1050 + k * 100))]);
        }
        assert_eq!(b.ranges(), MAX_RANGES);
        assert_eq!(b.sacked_bytes(), 50 * MAX_RANGES as u32);
        // The lowest ranges are kept.
        assert!(b.is_sacked(at(1000), at(1050)));
        b.clear();
        assert_eq!(b.sacked_bytes(), 0);
        assert_eq!(b.next_hole(at(0), at(0), at(100)), None);
    }

    proptest! {
        /// Random blocks and cumulative ACKs against a byte-map model
        /// (offsets from a wrapping ISS).
        #[test]
        fn scoreboard_matches_model(
            ops in proptest::collection::vec(
                (any::<bool>(), 0u32..4000, 0u32..600), 0..100),
        ) {
            let mut b = Scoreboard::new();
            let mut una = 0u32;
            let nxt = 5000u32;
            let mut model = vec![false; nxt as usize];
            let mut diverged = false;
            b.update(at(0), &[]);
            for (ack, x, len) in ops {
                if ack {
                    una = una.max(x.min(nxt));
                    b.on_cumulative_ack(at(una));
                } else {
                    let (s, e) = (x, (x + len).min(nxt));
                    b.update_within(at(una), at(nxt), &[(at(s), at(e))]);
                    if e > s && e > una {
                        for m in &mut model[s.max(una) as usize..e as usize] {
                            *m = true;
                        }
                    }
                }
                // The model does not forget ranges beyond the bound.
                diverged |= b.ranges() >= MAX_RANGES;
                if diverged {
                    continue;
                }
                let want = model[una as usize..].iter().filter(|&&m| m).count() as u32;
                prop_assert_eq!(b.sacked_bytes(), want);
                for probe in (una..nxt).step_by(97) {
                    prop_assert_eq!(b.is_sacked(at(probe), at(probe + 1)), model[probe as usize]);
                }
                if let Some((hs, he)) = b.next_hole(at(una), at(una), at(nxt)) {
                    let (hs, he) = (diff(hs, at(0)), diff(he, at(0)));
                    prop_assert!(hs >= una && he > hs);
                    prop_assert!(model[hs as usize..he as usize].iter().all(|&m| !m));
                    prop_assert!(model[una as usize..hs as usize].iter().all(|&m| m));
                    prop_assert!(model[he as usize]);
                } else if let Some(high) = model.iter().rposition(|&m| m) {
                    let from = (una as usize).min(high);
                    prop_assert!(model[from..=high].iter().all(|&m| m));
                }
            }
        }
    }
}
