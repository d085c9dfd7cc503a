//! A [`Device`] wrapper that misbehaves on purpose, for tests of the layers
//! above: it drops, duplicates, reorders and corrupts (flips bits in one
//! byte) a configurable fraction of the frames in each direction, and counts
//! what it did. Decisions come from a small seeded xorshift PRNG, so a run
//! is reproducible from its seed.
//!
//! Reordering holds one frame back and releases it right after the next
//! frame in the same direction; a held frame is also released on the next
//! `recv_batch` call (rx: at its end; tx: at its start), so nothing is held
//! for more than one driver round.

use std::io;
use std::os::fd::RawFd;

use super::{Device, is_transient_send_error};
use crate::netstack::{EthernetAddress, RxMeta};

/// Fractions (0.0 ..= 1.0) of the frames of one direction to mess with.
/// Each is decided independently per frame; a dropped frame gets no other
/// fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub corrupt: f64,
}

impl FaultRates {
    /// No faults.
    pub const NONE: FaultRates = FaultRates {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        corrupt: 0.0,
    };
}

/// Faults for both directions and the PRNG seed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultConfig {
    /// Frames received from the wrapped device.
    pub rx: FaultRates,
    /// Frames sent to the wrapped device.
    pub tx: FaultRates,
    pub seed: u64,
}

/// What the injector did in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Frames that came in (from the device for rx, from the caller for tx).
    pub seen: u64,
    /// Frames passed on (duplicates and released held frames included).
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub rx: DirStats,
    pub tx: DirStats,
}

/// xorshift64 (Marsaglia, "Xorshift RNGs", 2003; shifts 13, 7, 17).
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed` (0 is replaced: the all-zero state is fixed).
    pub fn new(seed: u64) -> Self {
        XorShift64(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `p` (≤ 0: never, ≥ 1: always).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Flip some bits of exactly one byte of `buf` (nothing for an empty one).
fn corrupt(rng: &mut XorShift64, buf: &mut [u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    let i = rng.below(buf.len());
    let mask = 1 + rng.below(255) as u8;
    buf[i] ^= mask;
    true
}

/// The fault-injecting wrapper.
pub struct FaultInjector<D: Device> {
    inner: D,
    cfg: FaultConfig,
    rng: XorShift64,
    stats: FaultStats,
    scratch: Vec<u8>,
    rx_held: Option<(RxMeta, Vec<u8>)>,
    tx_held: Option<Vec<u8>>,
    spare: Vec<u8>,
}

impl<D: Device> FaultInjector<D> {
    pub fn new(inner: D, cfg: FaultConfig) -> Self {
        FaultInjector {
            inner,
            rng: XorShift64::new(cfg.seed),
            cfg,
            stats: FaultStats::default(),
            scratch: Vec::new(),
            rx_held: None,
            tx_held: None,
            spare: Vec::new(),
        }
    }

    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    pub fn config(&self) -> FaultConfig {
        self.cfg
    }

    /// Change the rates (the PRNG keeps its state).
    pub fn set_config(&mut self, rx: FaultRates, tx: FaultRates) {
        self.cfg.rx = rx;
        self.cfg.tx = tx;
    }

    pub fn get_ref(&self) -> &D {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    /// Send a transmit frame held back for reordering, if any. A transient
    /// error keeps it held; any other error drops it.
    pub fn flush_held(&mut self) -> io::Result<()> {
        let Some(h) = self.tx_held.take() else {
            return Ok(());
        };
        match self.inner.send(&h) {
            Ok(()) => {
                self.stats.tx.delivered += 1;
                self.spare = h;
                Ok(())
            }
            Err(e) if is_transient_send_error(&e) => {
                self.tx_held = Some(h);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

impl<D: Device> Device for FaultInjector<D> {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        // A transmit frame held for reordering goes out now at the latest.
        let _ = self.flush_held();
        let held_before = self.rx_held.is_some();
        let FaultInjector {
            inner,
            cfg,
            rng,
            stats,
            scratch,
            rx_held,
            spare,
            ..
        } = self;
        let r = cfg.rx;
        let st = &mut stats.rx;
        let mut delivered = 0usize;
        inner.recv_batch(max, &mut |meta, frame| {
            st.seen += 1;
            if rng.chance(r.drop) {
                st.dropped += 1;
                return;
            }
            let data: &[u8] = if rng.chance(r.corrupt) {
                scratch.clear();
                scratch.extend_from_slice(frame);
                if corrupt(rng, scratch) {
                    st.corrupted += 1;
                }
                scratch
            } else {
                frame
            };
            if rx_held.is_none() && rng.chance(r.reorder) {
                let mut b = std::mem::take(spare);
                b.clear();
                b.extend_from_slice(data);
                *rx_held = Some((meta, b));
                st.reordered += 1;
                return;
            }
            let dup = rng.chance(r.duplicate);
            f(meta, data);
            delivered += 1;
            if dup {
                f(meta, data);
                delivered += 1;
                st.duplicated += 1;
            }
            if let Some((m, b)) = rx_held.take() {
                f(m, &b);
                delivered += 1;
                *spare = b;
            }
        })?;
        if held_before && let Some((m, b)) = self.rx_held.take() {
            f(m, &b);
            delivered += 1;
            self.spare = b;
        }
        self.stats.rx.delivered += delivered as u64;
        Ok(delivered)
    }

    /// Counts are updated only once the wrapped device took the frame, so a
    /// frame retried after `WouldBlock` is counted once.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let r = self.cfg.tx;
        if self.rng.chance(r.drop) {
            self.stats.tx.seen += 1;
            self.stats.tx.dropped += 1;
            return Ok(());
        }
        let corrupted = if self.rng.chance(r.corrupt) {
            self.scratch.clear();
            self.scratch.extend_from_slice(frame);
            corrupt(&mut self.rng, &mut self.scratch)
        } else {
            false
        };
        let data: &[u8] = if corrupted { &self.scratch } else { frame };
        if self.tx_held.is_none() && self.rng.chance(r.reorder) {
            let mut b = std::mem::take(&mut self.spare);
            b.clear();
            b.extend_from_slice(data);
            self.tx_held = Some(b);
            let st = &mut self.stats.tx;
            st.seen += 1;
            st.reordered += 1;
            st.corrupted += u64::from(corrupted);
            return Ok(());
        }
        let dup = self.rng.chance(r.duplicate);
        self.inner.send(data)?;
        let st = &mut self.stats.tx;
        st.seen += 1;
        st.delivered += 1;
        st.corrupted += u64::from(corrupted);
        if dup && self.inner.send(data).is_ok() {
            st.duplicated += 1;
            st.delivered += 1;
        }
        // A held frame goes out after the one that overtook it.
        let _ = self.flush_held();
        Ok(())
    }

    fn mtu(&self) -> usize {
        self.inner.mtu()
    }

    fn mac(&self) -> EthernetAddress {
        self.inner.mac()
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.inner.poll_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryDevice;
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const N: usize = 50;

    fn frames() -> Vec<Vec<u8>> {
        (0..N)
            .map(|i| {
                let mut f = MAC.0.to_vec();
                f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x88, 0xb5]);
                f.extend((0..40).map(|j| (i * 7 + j) as u8));
                f
            })
            .collect()
    }

    fn injector(rx: FaultRates, tx: FaultRates) -> FaultInjector<MemoryDevice> {
        let mut dev = MemoryDevice::new(MAC, 1500);
        for f in frames() {
            dev.push_rx(&f);
        }
        FaultInjector::new(dev, FaultConfig { rx, tx, seed: 42 })
    }

    /// Receive everything (two calls, so held frames come out), send every
    /// test frame; return (received, sent).
    fn run(fi: &mut FaultInjector<MemoryDevice>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut rx = Vec::new();
        let n1 = fi
            .recv_batch(usize::MAX, &mut |_, f| rx.push(f.to_vec()))
            .unwrap();
        let n2 = fi
            .recv_batch(usize::MAX, &mut |_, f| rx.push(f.to_vec()))
            .unwrap();
        assert_eq!(n1 + n2, rx.len());
        for f in frames() {
            fi.send(&f).unwrap();
        }
        fi.flush_held().unwrap();
        (rx, fi.get_mut().drain_tx())
    }

    fn all(p: f64) -> FaultRates {
        FaultRates {
            drop: p,
            duplicate: p,
            reorder: p,
            corrupt: p,
        }
    }

    #[test]
    fn zero_rates_change_nothing() {
        let mut fi = injector(FaultRates::NONE, FaultRates::NONE);
        let (rx, tx) = run(&mut fi);
        assert_eq!(rx, frames());
        assert_eq!(tx, frames());
        let d = DirStats {
            seen: N as u64,
            delivered: N as u64,
            ..Default::default()
        };
        assert_eq!(fi.stats(), FaultStats { rx: d, tx: d });
    }

    #[test]
    fn full_drop_drops_everything_both_ways() {
        let mut fi = injector(all(1.0), all(1.0));
        let (rx, tx) = run(&mut fi);
        assert!(rx.is_empty() && tx.is_empty());
        let d = DirStats {
            seen: N as u64,
            dropped: N as u64,
            ..Default::default()
        };
        assert_eq!(fi.stats(), FaultStats { rx: d, tx: d });
    }

    fn differing_bytes(a: &[u8], b: &[u8]) -> usize {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn corrupt_changes_exactly_one_byte() {
        let c = FaultRates {
            corrupt: 1.0,
            ..FaultRates::NONE
        };
        let mut fi = injector(c, c);
        let (rx, tx) = run(&mut fi);
        assert_eq!(rx.len(), N);
        assert_eq!(tx.len(), N);
        for (orig, (r, t)) in frames().iter().zip(rx.iter().zip(&tx)) {
            assert_eq!(differing_bytes(orig, r), 1);
            assert_eq!(differing_bytes(orig, t), 1);
        }
        let d = DirStats {
            seen: N as u64,
            delivered: N as u64,
            corrupted: N as u64,
            ..Default::default()
        };
        assert_eq!(fi.stats(), FaultStats { rx: d, tx: d });
    }

    #[test]
    fn duplicate_sends_each_frame_twice() {
        let c = FaultRates {
            duplicate: 1.0,
            ..FaultRates::NONE
        };
        let mut fi = injector(c, c);
        let (rx, tx) = run(&mut fi);
        let want: Vec<Vec<u8>> = frames().into_iter().flat_map(|f| [f.clone(), f]).collect();
        assert_eq!(rx, want);
        assert_eq!(tx, want);
        assert_eq!(fi.stats().rx.duplicated, N as u64);
        assert_eq!(fi.stats().tx.delivered, 2 * N as u64);
    }

    #[test]
    fn reorder_swaps_pairs_and_releases_the_last() {
        let c = FaultRates {
            reorder: 1.0,
            ..FaultRates::NONE
        };
        let mut fi = injector(c, c);
        let (rx, tx) = run(&mut fi);
        let want: Vec<Vec<u8>> = frames()
            .chunks(2)
            .flat_map(|p| p.iter().rev().cloned().collect::<Vec<_>>())
            .collect();
        assert_eq!(rx, want);
        assert_eq!(tx, want);
        let s = fi.stats();
        assert_eq!(s.rx.reordered, N as u64 / 2);
        assert_eq!(s.rx.delivered, N as u64);
        assert_eq!(s.tx.reordered, N as u64 / 2);
        assert_eq!(s.tx.delivered, N as u64);
    }

    #[test]
    fn held_rx_frame_released_on_next_call_without_new_frames() {
        let c = FaultRates {
            reorder: 1.0,
            ..FaultRates::NONE
        };
        let mut dev = MemoryDevice::new(MAC, 1500);
        dev.push_rx(&[1; 60]);
        let mut fi = FaultInjector::new(
            dev,
            FaultConfig {
                rx: c,
                tx: FaultRates::NONE,
                seed: 1,
            },
        );
        assert_eq!(fi.recv_batch(8, &mut |_, _| {}).unwrap(), 0);
        let mut got = Vec::new();
        assert_eq!(fi.recv_batch(8, &mut |_, f| got.push(f[0])).unwrap(), 1);
        assert_eq!(got, [1]);
    }

    #[test]
    fn partial_rates_count_consistently_and_reproducibly() {
        let rates = FaultRates {
            drop: 0.2,
            duplicate: 0.1,
            reorder: 0.1,
            corrupt: 0.1,
        };
        let go = || {
            let mut fi = injector(rates, rates);
            run(&mut fi);
            fi.stats()
        };
        let s = go();
        assert_eq!(s, go(), "same seed, same faults");
        for d in [s.rx, s.tx] {
            assert_eq!(d.seen, N as u64);
            assert_eq!(d.delivered, d.seen - d.dropped + d.duplicated);
            assert!(d.dropped > 0 && d.dropped < N as u64 / 2, "{d:?}");
        }
    }

    #[test]
    fn xorshift_chance_bounds() {
        let mut r = XorShift64::new(0);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
        assert!((0..100).all(|_| !r.chance(0.0) && r.chance(1.0)));
    }
}
