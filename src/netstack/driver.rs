//! The thread that moves frames between a [`Device`] and a [`Stack`]
//! (DESIGN.md "Threads and data flow": the stack runs to completion on its
//! own thread). One round ([`Driver::step`]):
//!
//! 1. receive up to [`RX_BATCH`] frames → [`Stack::receive_frame`];
//! 2. `app(stack, now)`: the application drains [`Stack::poll_event`] and
//!    its socket queues, and sends;
//! 3. [`Stack::poll`] runs the timers and says when it next needs to run;
//! 4. flush [`Stack::pop_tx`] to the device in batches of [`TX_BATCH`]
//!    ([`Device::send_batch`]: one `sendmmsg(2)` per batch on an
//!    `AF_PACKET` socket instead of one `send` per frame), recycling sent
//!    buffers. A frame the device cannot take now (`EAGAIN` / `ENOBUFS`) is
//!    kept, with the rest of its batch behind it in order, and retried
//!    first next round; one blocked for longer than [`TX_BLOCK_LIMIT`] is
//!    dropped and counted, so a wedged device cannot stall the stack.
//!
//! Between rounds [`Driver::run`] waits in poll(2) on the device's fd for at
//! most min(the stack's next deadline, [`MAX_WAIT`]) — never a busy loop;
//! devices without an fd sleep up to 1 ms instead.
//!
//! Busy-poll ([`Driver::with_busy_poll`], `stack.busy_poll`, off by
//! default): for operators who dedicate a core to the stack. When a round
//! found no frame, the driver keeps running rounds without sleeping for up
//! to the busy-poll time after the last frame, and only then waits in
//! poll(2); a timer of the stack that falls due meanwhile is run by those
//! rounds, on time. It saves the
//! wake-up latency of poll(2) at the cost of a core spinning while
//! traffic is light; whether it pays must be measured. The wake fd
//! ([`Driver::with_wake`]) is not polled while spinning: the `app`
//! callback runs every round and sees its work anyway.
//!
//! Time is a monotonic clock ([`now`]): `std::time::Instant` since the
//! first call, as a smoltcp [`Instant`]. Never the wall clock, so timers do
//! not jump when the system time is set.

use std::collections::VecDeque;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use super::device::afpacket::wait_fds;
use super::device::{Device, is_transient_send_error};
use super::{Instant, Stack};

/// Frames taken from the device per round.
pub const RX_BATCH: usize = 64;
/// Frames handed to the device per [`Device::send_batch`] call (one
/// `sendmmsg(2)` on [`AfPacket`](super::device::AfPacket)). The driver holds
/// at most this many frames taken from the stack's queue.
pub const TX_BATCH: usize = 64;
/// Longest wait between rounds (bounds the reaction time to `stop`).
pub const MAX_WAIT: StdDuration = StdDuration::from_millis(50);
/// Retry interval while the device refuses a frame.
pub const TX_RETRY_WAIT: StdDuration = StdDuration::from_millis(1);
/// A frame the device keeps refusing for this long is dropped.
pub const TX_BLOCK_LIMIT: StdDuration = StdDuration::from_secs(1);
/// Minimum interval between two warnings of the same kind.
const WARN_EVERY: StdDuration = StdDuration::from_secs(10);

/// The stack's clock: monotonic time since the first call in this process.
/// Create the [`Stack`] with it (`Stack::new(cfg, driver::now())`) so that
/// its timers and the driver's agree.
pub fn now() -> Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(std::time::Instant::now);
    Instant::from_micros(i64::try_from(e.elapsed().as_micros()).unwrap_or(i64::MAX))
}

/// What the driver did (the device's and the stack's own counters are
/// separate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub rounds: u64,
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Transient receive errors (ENETDOWN: the link went down).
    pub rx_errors: u64,
    /// Sends refused with EAGAIN / ENOBUFS (the frame was kept).
    pub tx_retries: u64,
    /// Frames dropped after being refused for [`TX_BLOCK_LIMIT`].
    pub tx_dropped_blocked: u64,
    /// Frames the device rejected for good (EMSGSIZE, ENETDOWN, ...).
    pub tx_errors: u64,
}

/// The result of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Frames received this round.
    pub rx: usize,
    /// Frames sent this round.
    pub tx: usize,
    /// A frame is waiting for the device to take it.
    pub tx_blocked: bool,
    /// How long the caller may wait before the next round (zero: at once,
    /// e.g. the receive batch was full).
    pub wait: StdDuration,
}

/// The loop's state between rounds: the frames taken from the stack and
/// not yet sent (the head is the one the device refused), counters.
#[derive(Debug, Default)]
pub struct Driver {
    /// At most [`TX_BATCH`] frames, in transmit order. Non-empty between
    /// rounds only while the device refuses the head.
    held: VecDeque<Vec<u8>>,
    blocked_since: Option<Instant>,
    stats: DriverStats,
    last_rx_warn: Option<Instant>,
    last_tx_warn: Option<Instant>,
    /// A second fd that ends the wait between rounds ([`Self::with_wake`]).
    wake: Option<std::os::fd::RawFd>,
    /// Spin this long after the last frame before waiting
    /// ([`Self::with_busy_poll`]).
    busy_poll: Option<StdDuration>,
}

fn elapsed(since: Instant, now: Instant) -> StdDuration {
    StdDuration::from_micros(u64::try_from(now.total_micros() - since.total_micros()).unwrap_or(0))
}

/// Should a warning be logged now (at most one per [`WARN_EVERY`])?
fn warn_due(last: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_some_and(|l| elapsed(l, now) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

impl Driver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also end the wait between rounds when `fd` becomes readable (e.g.
    /// one end of a `UnixStream` pair another thread writes to, to hand this
    /// stack work). The `app` callback must drain it, or the next wait
    /// returns at once.
    pub fn with_wake(mut self, fd: std::os::fd::RawFd) -> Self {
        self.wake = Some(fd);
        self
    }

    /// Busy-poll: after a round with frames, keep running rounds without
    /// sleeping for up to `spin` before waiting in poll(2) (module doc).
    /// Zero turns it off (the default).
    pub fn with_busy_poll(mut self, spin: StdDuration) -> Self {
        self.busy_poll = (!spin.is_zero()).then_some(spin);
        self
    }

    /// Should [`Self::run`] go on with another round at once instead of
    /// waiting, the last frame having come `idle` ago? Only with busy-poll
    /// and inside its time (a stack deadline inside the spin is met by the
    /// spinning rounds themselves).
    fn keep_spinning(&self, idle: StdDuration) -> bool {
        self.busy_poll.is_some_and(|spin| idle < spin)
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// One round at time `now` (see the module doc). Returns an error only
    /// for a receive error that will not go away (e.g. EBADF); transient
    /// ones and every send error are counted and logged.
    pub fn step<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        stack: &mut Stack,
        now: Instant,
        app: &mut dyn FnMut(&mut Stack, Instant),
    ) -> io::Result<Step> {
        self.stats.rounds += 1;
        // TCP output waits for the end of the round (after the app), so a
        // connection's messages and ACKs leave in as few segments as the
        // windows allow
        stack.tcp_cork();
        let rx = match dev.recv_batch(RX_BATCH, &mut |meta, frame| {
            stack.receive_frame(now, meta, frame)
        }) {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::ENETDOWN) =>
            {
                self.rx_error(&e, now);
                0
            }
            Err(e) => {
                stack.tcp_uncork(now);
                return Err(e);
            }
        };
        self.stats.rx_frames += rx as u64;

        app(stack, now);
        stack.tcp_uncork(now);
        let deadline = stack.poll(now);
        let tx = self.flush(dev, stack, now);

        let tx_blocked = !self.held.is_empty();
        let wait = if rx >= RX_BATCH || (!tx_blocked && stack.tx_pending() > 0) {
            StdDuration::ZERO
        } else {
            let until = deadline.map_or(MAX_WAIT, |d| elapsed(now, d));
            let w = until.min(MAX_WAIT);
            if tx_blocked { w.min(TX_RETRY_WAIT) } else { w }
        };
        Ok(Step {
            rx,
            tx,
            tx_blocked,
            wait,
        })
    }

    /// Count and (rate-limited) log a transient receive error.
    fn rx_error(&mut self, e: &io::Error, now: Instant) {
        self.stats.rx_errors += 1;
        if warn_due(&mut self.last_rx_warn, now) {
            tracing::warn!(error = %e, total = self.stats.rx_errors, "device receive error");
        }
    }

    /// Send the held frames (the refused one first), then the stack's
    /// queue, in batches of up to [`TX_BATCH`] through
    /// [`Device::send_batch`], until the device refuses a frame or nothing
    /// is left. Returns frames sent.
    fn flush<D: Device + ?Sized>(&mut self, dev: &mut D, stack: &mut Stack, now: Instant) -> usize {
        let mut sent = 0;
        // Bounded: every iteration sends at least one frame, drops one, or
        // leaves.
        loop {
            while self.held.len() < TX_BATCH {
                match stack.pop_tx() {
                    Some(f) => self.held.push_back(f),
                    None => break,
                }
            }
            if self.held.is_empty() {
                break;
            }
            let mut refs: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
            let n = self.held.len().min(TX_BATCH);
            for (r, f) in refs.iter_mut().zip(self.held.iter()) {
                *r = f;
            }
            let res = match dev.send_batch(&refs[..n]) {
                // The contract says "at least one or an error"; a device
                // that took none is treated as full.
                Ok(0) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                r => r,
            };
            match res {
                Ok(k) => {
                    sent += k;
                    self.blocked_since = None;
                    for f in self.held.drain(..k.min(n)) {
                        stack.recycle(f);
                    }
                }
                Err(e) if is_transient_send_error(&e) => {
                    self.stats.tx_retries += 1;
                    let since = *self.blocked_since.get_or_insert(now);
                    if elapsed(since, now) >= TX_BLOCK_LIMIT {
                        self.stats.tx_dropped_blocked += 1;
                        self.blocked_since = None;
                        if let Some(f) = self.held.pop_front() {
                            stack.recycle(f);
                        }
                        if warn_due(&mut self.last_tx_warn, now) {
                            tracing::warn!(
                                error = %e,
                                total = self.stats.tx_dropped_blocked,
                                "device refused a frame for {TX_BLOCK_LIMIT:?}; dropped"
                            );
                        }
                        // Try the next one; it gets its own time limit.
                        continue;
                    }
                    // The head frame is the blocked one; it and the rest
                    // stay held, in order, for the next round.
                    break;
                }
                Err(e) => {
                    self.stats.tx_errors += 1;
                    let f = self.held.pop_front();
                    if warn_due(&mut self.last_tx_warn, now) {
                        tracing::warn!(
                            error = %e,
                            len = f.as_ref().map_or(0, Vec::len),
                            total = self.stats.tx_errors,
                            "device send failed; frame dropped"
                        );
                    }
                    if let Some(f) = f {
                        stack.recycle(f);
                    }
                }
            }
        }
        self.stats.tx_frames += sent as u64;
        sent
    }

    /// Run rounds until `stop` is set (checked at least every
    /// [`MAX_WAIT`]). Returns early only on a fatal receive error.
    pub fn run<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        stack: &mut Stack,
        stop: &AtomicBool,
        app: &mut dyn FnMut(&mut Stack, Instant),
    ) -> io::Result<()> {
        self.run_with(dev, stack, stop, app, &mut |_, _| {})
    }

    /// [`Self::run`], calling `after_round` with the driver's counters and
    /// the device after every round (e.g. to publish them as metrics).
    pub fn run_with<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        stack: &mut Stack,
        stop: &AtomicBool,
        app: &mut dyn FnMut(&mut Stack, Instant),
        after_round: &mut dyn FnMut(&DriverStats, &mut D),
    ) -> io::Result<()> {
        // When the busy-poll spin started (the last round with frames).
        let mut spin_from: Option<std::time::Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let st = self.step(dev, stack, now(), app)?;
            after_round(&self.stats, dev);
            if st.wait.is_zero() {
                spin_from = None;
                continue;
            }
            if self.busy_poll.is_some() {
                if st.rx > 0 {
                    spin_from = Some(std::time::Instant::now());
                }
                if let Some(from) = spin_from
                    && self.keep_spinning(from.elapsed())
                {
                    std::hint::spin_loop();
                    continue;
                }
                // The next spin starts with the next frame.
                spin_from = None;
            }
            let errs = match (dev.poll_fd(), self.wake) {
                (Some(fd), Some(w)) => wait_fds(&[(fd, false), (w, false)], st.wait)?,
                (Some(fd), None) => wait_fds(&[(fd, false)], st.wait)?,
                (None, _) => {
                    std::thread::sleep(st.wait.min(StdDuration::from_millis(1)));
                    0
                }
            };
            // An error condition on the device (e.g. ENETDOWN: the link went
            // down) stays until collected; with a receive ring no recvmsg
            // collects it, and every poll would return at once.
            if errs & 1 != 0
                && let Err(e) = dev.take_error()
            {
                self.rx_error(&e, now());
            }
        }
        Ok(())
    }
}

/// Run the stack on `dev` until `stop` is set: [`Driver::run`] with a fresh
/// [`Driver`]. `app` is called once per round, after the received frames
/// were processed and before the timers and the transmit flush.
pub fn run<D: Device>(
    dev: &mut D,
    stack: &mut Stack,
    stop: &AtomicBool,
    mut app: impl FnMut(&mut Stack, Instant),
) -> io::Result<()> {
    Driver::new().run(dev, stack, stop, &mut app)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::device::MemoryDevice;
    use super::super::testutil::*;
    use super::super::{ETH_HDR, EthernetAddress, Mib};
    use super::*;

    fn dev() -> MemoryDevice {
        MemoryDevice::new(EthernetAddress(OUR_MAC), 1500)
    }

    fn frame(tag: u8) -> Vec<u8> {
        let mut f = vec![tag; 60];
        f[..6].copy_from_slice(&PEER_MAC);
        f[6..12].copy_from_slice(&OUR_MAC);
        f
    }

    #[test]
    fn step_feeds_received_frames_then_app_then_flushes() {
        let mut d = dev();
        let mut s = ready_stack();
        // an open port: the datagrams are queued, nothing is answered
        s.udp_bind("0.0.0.0:7".parse().unwrap()).unwrap();
        for _ in 0..3 {
            d.push_rx(&udp4_frame(OUR_MAC, PEER4, OUR4, 1000, 7, b"x"));
        }
        let mut calls = Vec::new();
        let now = t0() + super::super::Duration::from_millis(5);
        let st = Driver::new()
            .step(&mut d, &mut s, now, &mut |stack, t| {
                // The frames were processed before the app runs.
                calls.push((t, stack.counters().get(Mib::LinkInFrames)));
                stack.transmit(frame(1)).unwrap();
                stack.transmit(frame(2)).unwrap();
            })
            .unwrap();
        assert_eq!(calls, [(now, 3)]);
        assert_eq!((st.rx, st.tx, st.tx_blocked), (3, 2, false));
        assert_eq!(d.drain_tx(), vec![frame(1), frame(2)]);
        assert_eq!(s.tx_pending(), 0);
        assert!(st.wait > StdDuration::ZERO && st.wait <= MAX_WAIT);
    }

    #[test]
    fn full_batch_asks_for_another_round_at_once() {
        let mut d = dev();
        let mut s = ready_stack();
        for i in 0..(RX_BATCH + 10) {
            d.push_rx(&frame(i as u8));
        }
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.rx, st.wait), (RX_BATCH, StdDuration::ZERO));
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!(st.rx, 10);
        assert!(st.wait > StdDuration::ZERO);
        assert_eq!(drv.stats().rx_frames, RX_BATCH as u64 + 10);
        assert_eq!(s.counters().get(Mib::LinkInFrames), RX_BATCH as u64 + 10);
    }

    #[test]
    fn refused_frame_is_kept_and_retried_in_order() {
        let mut d = dev();
        d.set_tx_capacity(0);
        let mut s = ready_stack();
        s.transmit(frame(1)).unwrap();
        s.transmit(frame(2)).unwrap();
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (0, true));
        assert!(st.wait <= TX_RETRY_WAIT && !st.wait.is_zero());
        assert_eq!(s.tx_pending(), 0, "the batch left the stack");
        assert_eq!(
            drv.held.len(),
            2,
            "the driver holds the refused frame and the next"
        );
        d.set_tx_capacity(usize::MAX);
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (2, false));
        assert_eq!(d.drain_tx(), vec![frame(1), frame(2)]);
        let stats = drv.stats();
        assert_eq!((stats.tx_retries, stats.tx_frames), (1, 2));
        assert_eq!(stats.tx_dropped_blocked, 0);
    }

    #[test]
    fn frame_refused_too_long_is_dropped() {
        let mut d = dev();
        d.set_tx_capacity(0);
        let mut s = ready_stack();
        s.transmit(frame(1)).unwrap();
        s.transmit(frame(2)).unwrap();
        let mut drv = Driver::new();
        drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        let later = t0() + super::super::Duration::from_millis(1500);
        let st = drv.step(&mut d, &mut s, later, &mut |_, _| {}).unwrap();
        assert_eq!(drv.stats().tx_dropped_blocked, 1);
        // The next frame is now the blocked one, with a fresh time limit.
        assert!(st.tx_blocked);
        d.set_tx_capacity(usize::MAX);
        drv.step(&mut d, &mut s, later, &mut |_, _| {}).unwrap();
        assert_eq!(d.drain_tx(), vec![frame(2)]);
    }

    /// A device whose sends fail for good.
    struct Broken(MemoryDevice);
    impl Device for Broken {
        fn recv_batch(
            &mut self,
            max: usize,
            f: &mut dyn FnMut(super::super::RxMeta, &[u8]),
        ) -> io::Result<usize> {
            self.0.recv_batch(max, f)
        }
        fn send(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EMSGSIZE))
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn mac(&self) -> EthernetAddress {
            self.0.mac()
        }
        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    #[test]
    fn hard_send_error_drops_the_frame_and_goes_on() {
        let mut d = Broken(dev());
        let mut s = ready_stack();
        s.transmit(frame(1)).unwrap();
        s.transmit(frame(2)).unwrap();
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (0, false));
        assert_eq!(drv.stats().tx_errors, 2);
        assert_eq!(s.tx_pending(), 0);
    }

    /// A memory device that records each `send_batch` call's size and
    /// rejects for good (EMSGSIZE) frames whose payload byte is `bad`.
    struct Batches {
        inner: MemoryDevice,
        calls: Vec<usize>,
        bad: Option<u8>,
    }
    impl Batches {
        fn new() -> Self {
            Batches {
                inner: dev(),
                calls: Vec::new(),
                bad: None,
            }
        }
    }
    impl Device for Batches {
        fn recv_batch(
            &mut self,
            max: usize,
            f: &mut dyn FnMut(super::super::RxMeta, &[u8]),
        ) -> io::Result<usize> {
            self.inner.recv_batch(max, f)
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            if self.bad.is_some() && frame.get(20).copied() == self.bad {
                return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
            }
            self.inner.send(frame)
        }
        fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
            self.calls.push(frames.len());
            for (i, f) in frames.iter().enumerate() {
                if let Err(e) = self.send(f) {
                    return if i == 0 { Err(e) } else { Ok(i) };
                }
            }
            Ok(frames.len())
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn mac(&self) -> EthernetAddress {
            self.inner.mac()
        }
        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    #[test]
    fn flush_hands_frames_over_in_batches_in_order() {
        let mut d = Batches::new();
        let mut s = ready_stack();
        let total = 2 * TX_BATCH + 5;
        for i in 0..total {
            s.transmit(frame(i as u8)).unwrap();
        }
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (total, false));
        assert_eq!(d.calls, [TX_BATCH, TX_BATCH, 5]);
        let want: Vec<Vec<u8>> = (0..total).map(|i| frame(i as u8)).collect();
        assert_eq!(d.inner.drain_tx(), want);
        assert_eq!(drv.stats().tx_frames, total as u64);
        assert!(drv.held.is_empty());
    }

    #[test]
    fn partial_batch_keeps_the_rest_in_order_for_the_next_round() {
        let mut d = Batches::new();
        d.inner.set_tx_capacity(3);
        let mut s = ready_stack();
        for i in 0..10 {
            s.transmit(frame(i)).unwrap();
        }
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        // Three taken, the fourth refused: blocked, retried soon.
        assert_eq!((st.tx, st.tx_blocked), (3, true));
        assert!(!st.wait.is_zero() && st.wait <= TX_RETRY_WAIT);
        assert_eq!(drv.held.len(), 7);
        assert_eq!(drv.held.front(), Some(&frame(3)));
        let stats = drv.stats();
        assert_eq!((stats.tx_frames, stats.tx_retries), (3, 1));
        let mut out = d.inner.drain_tx();
        // More frames queued meanwhile go after the held ones.
        s.transmit(frame(10)).unwrap();
        d.inner.set_tx_capacity(usize::MAX);
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (8, false));
        out.extend(d.inner.drain_tx());
        let want: Vec<Vec<u8>> = (0..11).map(frame).collect();
        assert_eq!(out, want);
        let stats = drv.stats();
        assert_eq!((stats.tx_frames, stats.tx_retries), (11, 1));
        assert_eq!((stats.tx_dropped_blocked, stats.tx_errors), (0, 0));
    }

    #[test]
    fn blocked_head_of_a_batch_is_dropped_after_the_limit_and_the_rest_follow() {
        let mut d = Batches::new();
        d.inner.set_tx_capacity(0);
        let mut s = ready_stack();
        for i in 0..4 {
            s.transmit(frame(i)).unwrap();
        }
        let mut drv = Driver::new();
        drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        let later = t0() + super::super::Duration::from_millis(500);
        let st = drv.step(&mut d, &mut s, later, &mut |_, _| {}).unwrap();
        assert!(st.tx_blocked);
        assert_eq!(drv.stats().tx_dropped_blocked, 0, "not yet the limit");
        // Past the limit: frame 0 goes, frame 1 gets a fresh limit.
        let later = t0() + super::super::Duration::from_millis(1000);
        let st = drv.step(&mut d, &mut s, later, &mut |_, _| {}).unwrap();
        assert!(st.tx_blocked);
        let stats = drv.stats();
        assert_eq!((stats.tx_dropped_blocked, stats.tx_retries), (1, 4));
        d.inner.set_tx_capacity(usize::MAX);
        let st = drv.step(&mut d, &mut s, later, &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (3, false));
        assert_eq!(d.inner.drain_tx(), vec![frame(1), frame(2), frame(3)]);
    }

    #[test]
    fn hard_error_inside_a_batch_drops_that_frame_only() {
        let mut d = Batches::new();
        d.bad = Some(2);
        let mut s = ready_stack();
        for i in 0..5 {
            s.transmit(frame(i)).unwrap();
        }
        let mut drv = Driver::new();
        let st = drv.step(&mut d, &mut s, t0(), &mut |_, _| {}).unwrap();
        assert_eq!((st.tx, st.tx_blocked), (4, false));
        // [0,1,2,3,4] → 2 sent, frame 2 fails alone, [3,4] in the next call.
        assert_eq!(d.calls, [5, 3, 2]);
        assert_eq!(
            d.inner.drain_tx(),
            vec![frame(0), frame(1), frame(3), frame(4)]
        );
        assert_eq!((drv.stats().tx_errors, drv.stats().tx_frames), (1, 4));
    }

    #[test]
    fn default_send_batch_stops_at_the_first_refused_frame() {
        let mut d = dev();
        d.set_tx_capacity(2);
        let (a, b, c) = (frame(1), frame(2), frame(3));
        assert_eq!(d.send_batch(&[]).unwrap(), 0);
        assert_eq!(d.send_batch(&[&a, &b, &c]).unwrap(), 2);
        let e = d.send_batch(&[&c]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(d.drain_tx(), vec![a, b]);
    }

    #[test]
    fn wait_follows_the_stack_deadline() {
        let mut cfg = config();
        cfg.limits.neigh_retrans = super::super::Duration::from_millis(10);
        let mut s = Stack::new(cfg, t0());
        drain(&mut s);
        // An unresolved next hop arms the retransmit timer.
        let f = vec![0u8; ETH_HDR + 20];
        s.neigh_output(t0(), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)), f)
            .unwrap();
        let mut d = dev();
        let st = Driver::new()
            .step(&mut d, &mut s, t0(), &mut |_, _| {})
            .unwrap();
        assert!(
            st.wait > StdDuration::ZERO && st.wait <= StdDuration::from_millis(10),
            "{st:?}"
        );
    }

    #[test]
    fn run_stops_when_asked_and_sends_what_the_app_queued() {
        let mut d = dev();
        let mut s = ready_stack();
        d.push_rx(&frame(9));
        let stop = AtomicBool::new(false);
        let mut rounds = 0;
        run(&mut d, &mut s, &stop, |stack, _| {
            rounds += 1;
            if rounds == 1 {
                stack.transmit(frame(3)).unwrap();
            }
            if rounds == 3 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
        assert_eq!(rounds, 3);
        assert_eq!(d.drain_tx(), vec![frame(3)]);
        assert_eq!(s.counters().get(Mib::LinkInFrames), 1);
    }

    #[test]
    fn busy_poll_spins_only_inside_its_time() {
        let ms = StdDuration::from_millis;
        assert!(
            !Driver::new().keep_spinning(StdDuration::ZERO),
            "off by default"
        );
        let zero = Driver::new().with_busy_poll(StdDuration::ZERO);
        assert!(!zero.keep_spinning(StdDuration::ZERO));
        let d = Driver::new().with_busy_poll(ms(5));
        assert!(d.keep_spinning(StdDuration::ZERO));
        assert!(d.keep_spinning(ms(4)));
        assert!(!d.keep_spinning(ms(5)));
        assert!(!d.keep_spinning(ms(50)));
        // Both options together, in either order.
        let w = Driver::new().with_wake(7).with_busy_poll(ms(5));
        assert_eq!((w.wake, w.busy_poll), (Some(7), Some(ms(5))));
        let w = Driver::new().with_busy_poll(ms(5)).with_wake(7);
        assert_eq!((w.wake, w.busy_poll), (Some(7), Some(ms(5))));
    }

    /// A device with nothing to receive whose fd never becomes readable:
    /// every wait lasts as long as the driver asks.
    struct Idle(MemoryDevice, std::os::unix::net::UnixDatagram);
    impl Device for Idle {
        fn recv_batch(
            &mut self,
            max: usize,
            f: &mut dyn FnMut(super::super::RxMeta, &[u8]),
        ) -> io::Result<usize> {
            self.0.recv_batch(max, f)
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            self.0.send(frame)
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn mac(&self) -> EthernetAddress {
            self.0.mac()
        }
        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            use std::os::fd::AsRawFd;
            Some(self.1.as_raw_fd())
        }
    }

    /// How long `drv.run` takes for `max_rounds` rounds on an idle device
    /// whose first round receives one frame.
    fn idle_rounds(drv: Driver, max_rounds: u32) -> StdDuration {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut d = Idle(dev(), a);
        d.0.push_rx(&frame(1));
        let mut s = ready_stack();
        let stop = AtomicBool::new(false);
        let mut rounds = 0;
        let t = std::time::Instant::now();
        let mut drv = drv;
        drv.run(&mut d, &mut s, &stop, &mut |_, _| {
            rounds += 1;
            if rounds >= max_rounds {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
        t.elapsed()
    }

    #[test]
    fn busy_poll_runs_rounds_without_waiting_after_a_frame() {
        // Without busy-poll every idle round waits in poll(2) (the stack
        // has no timer: up to MAX_WAIT each).
        let waited = idle_rounds(Driver::new(), 4);
        assert!(waited >= 2 * MAX_WAIT, "{waited:?}");
        // With a long spin, a thousand rounds go by without one wait.
        let spun = idle_rounds(
            Driver::new().with_busy_poll(StdDuration::from_secs(30)),
            1000,
        );
        assert!(spun < 2 * MAX_WAIT, "{spun:?}");
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now();
        let b = now();
        assert!(b >= a);
    }
}
