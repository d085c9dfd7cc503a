//! Congestion control: CUBIC (RFC 9438, Linux's default, as `tcp_cubic.c`)
//! and NewReno (RFC 5681 / RFC 6582), with an initial window of 10 segments
//! (RFC 6928, Linux `TCP_INIT_CWND`). Enum dispatch, no allocation.
//!
//! Windows are in bytes; CUBIC's curve is computed in segments like Linux.
//! Loss recovery itself (what to retransmit, the pipe) is the caller's
//! (RFC 6675 with the SACK scoreboard; for a peer without SACK the caller
//! counts duplicate ACKs as SACKed segments, as Linux `tcp_add_reno_sack`
//! does). This module only sets the windows:
//!
//! - entering recovery: ssthresh from the algorithm, cwnd = ssthresh
//!   (RFC 6675 §5 step 4.2 "ssthresh = cwnd = (FlightSize / 2)"; CUBIC
//!   multiplies by β = 0.7 instead). cwnd does not grow during recovery;
//!   on exit it is ssthresh (RFC 6582 §3.2 step 3, option 2).
//! - RTO: ssthresh from the algorithm (held when the previous RTO made no
//!   progress, RFC 5681 §3.1 "(4)"), cwnd = the loss window, 1 SMSS.
//! - idle restart (RFC 5681 §4.1, Linux `tcp_cwnd_restart`).
//!
//! Optionally, the caller drives the window during recovery with
//! Proportional Rate Reduction (RFC 6937, Linux `tcp_cwnd_reduction`):
//! [`Congestion::on_recovery_ack`] per ACK and
//! [`Congestion::on_recovery_sent`] per transmission.
//!
//! Not done: HyStart (CUBIC's slow-start exit heuristic; slow start runs to
//! ssthresh or the first loss, as with `hystart=0`), undo of spurious
//! reductions (RFC 3522/F-RTO), ECN.

use super::At;
use crate::netstack::{Duration, Instant};

/// RFC 6928 §2 / Linux `TCP_INIT_CWND`: the initial window, in segments.
pub const INITIAL_WINDOW_SEGMENTS: u32 = 10;
/// Linux `TCP_INFINITE_SSTHRESH`: slow start until the first loss.
pub const INFINITE_SSTHRESH: u32 = 0x7fff_ffff;
/// RFC 9438 §4.6 / §5 β_cubic (Linux `beta` = 717/1024).
pub const CUBIC_BETA: f64 = 717.0 / 1024.0;
/// RFC 9438 §5 C (Linux `bic_scale` 41/1024·10 ≈ 0.4), segments/s³.
pub const CUBIC_C: f64 = 0.4;
/// RFC 9438 §4.3 α_cubic = 3(1 − β)/(1 + β): the Reno-friendly estimate's
/// growth per RTT (Linux `beta_scale`).
pub const CUBIC_ALPHA: f64 = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);

/// Which algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionKind {
    #[default]
    Cubic,
    NewReno,
}

/// CUBIC state (Linux `struct bictcp`), segments as `f64`.
#[derive(Debug, Clone)]
struct Cubic {
    /// W_max before the last reduction (after fast convergence).
    last_max: f64,
    /// The curve's plateau (W_max) for the current epoch.
    origin: f64,
    /// K, seconds.
    k: f64,
    epoch_start: At,
    /// Smallest RTT seen (Linux `delay_min`), µs; `NO_DELAY` before one.
    delay_min: u64,
    /// Reno-friendly estimate W_est (Linux `tcp_cwnd`), segments.
    w_est: f64,
    /// Segments acked in this epoch not yet counted into `w_est`.
    ack_cnt: f64,
}

/// `Cubic::delay_min` before the first sample.
const NO_DELAY: u64 = u64::MAX;

impl Default for Cubic {
    fn default() -> Self {
        Cubic {
            last_max: 0.0,
            origin: 0.0,
            k: 0.0,
            epoch_start: At::NONE,
            delay_min: NO_DELAY,
            w_est: 0.0,
            ack_cnt: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
enum Algo {
    NewReno,
    Cubic(Cubic),
}

/// Congestion window state of one connection.
#[derive(Debug, Clone)]
pub struct Congestion {
    algo: Algo,
    mss: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Congestion-avoidance credit in segments (Linux `snd_cwnd_cnt`).
    cwnd_cnt: f64,
    in_recovery: bool,
    /// An RTO happened and no new data was acknowledged since.
    in_loss: bool,
    /// RFC 6937 state of the current recovery: RecoverFS, prr_delivered,
    /// prr_out (bytes).
    prr_recover_fs: u32,
    prr_delivered: u32,
    prr_out: u32,
}

impl Congestion {
    /// IW = 10·MSS (RFC 6928, as Linux), ssthresh "infinite".
    pub fn new(kind: CongestionKind, mss: u32, _now: Instant) -> Self {
        let mss = mss.max(1);
        Congestion {
            algo: match kind {
                CongestionKind::Cubic => Algo::Cubic(Cubic::default()),
                CongestionKind::NewReno => Algo::NewReno,
            },
            mss,
            cwnd: mss.saturating_mul(INITIAL_WINDOW_SEGMENTS),
            ssthresh: INFINITE_SSTHRESH,
            cwnd_cnt: 0.0,
            in_recovery: false,
            in_loss: false,
            prr_recover_fs: 0,
            prr_delivered: 0,
            prr_out: 0,
        }
    }

    pub fn kind(&self) -> CongestionKind {
        match self.algo {
            Algo::Cubic(_) => CongestionKind::Cubic,
            Algo::NewReno => CongestionKind::NewReno,
        }
    }

    /// Congestion window, bytes.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Slow-start threshold, bytes.
    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    pub fn mss(&self) -> u32 {
        self.mss
    }

    pub fn in_recovery(&self) -> bool {
        self.in_recovery
    }

    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    fn initial_window(&self) -> u32 {
        self.mss.saturating_mul(INITIAL_WINDOW_SEGMENTS)
    }

    fn segs(&self, bytes: u32) -> f64 {
        f64::from(bytes) / f64::from(self.mss)
    }

    /// An ACK for `acked` new bytes. `in_flight`: bytes outstanding when it
    /// arrived (including the acked ones); `rtt`: a valid sample, if any.
    ///
    /// The window grows only when the sender used it (RFC 7661 §4.2 /
    /// Linux `tcp_is_cwnd_limited`: in slow start while cwnd < 2·flight, in
    /// congestion avoidance while the flight fills cwnd to within a
    /// segment), and never during recovery.
    pub fn on_ack(&mut self, now: Instant, acked: u32, in_flight: u32, rtt: Option<Duration>) {
        if let (Some(r), Algo::Cubic(c)) = (rtt, &mut self.algo) {
            // Linux `bictcp_acked`: no delay samples in the first second
            // after a reduction.
            let fresh = c
                .epoch_start
                .get()
                .is_some_and(|e| now >= e && now - e < Duration::from_secs(1));
            if !fresh && r > Duration::from_micros(0) {
                c.delay_min = c.delay_min.min(r.total_micros());
            }
        }
        if acked == 0 {
            return;
        }
        self.in_loss = false;
        if self.in_recovery {
            return;
        }
        let limited = if self.in_slow_start() {
            self.cwnd < in_flight.saturating_mul(2)
        } else {
            in_flight.saturating_add(self.mss) > self.cwnd
        };
        if !limited {
            return;
        }
        let mut acked = acked;
        if self.in_slow_start() {
            // RFC 5681 §3.1 slow start with byte counting (RFC 3465), as
            // Linux `tcp_slow_start`: grow by the bytes acked, up to
            // ssthresh; the rest goes to congestion avoidance.
            let room = self.ssthresh - self.cwnd;
            let inc = acked.min(room);
            self.cwnd += inc;
            acked -= inc;
            if acked == 0 {
                return;
            }
        }
        let acked_segs = self.segs(acked);
        // Acks per one-segment increase (Linux `cnt`).
        let cnt = match &mut self.algo {
            // RFC 5681 §3.1 (3): one SMSS per cwnd of data acknowledged.
            Algo::NewReno => self.cwnd as f64 / self.mss as f64,
            Algo::Cubic(c) => {
                let cwnd = f64::from(self.cwnd) / f64::from(self.mss);
                c.update(now, cwnd, acked_segs)
            }
        };
        // Linux `tcp_cong_avoid_ai`.
        self.cwnd_cnt += acked_segs;
        let cnt = cnt.max(1.0);
        if self.cwnd_cnt >= cnt {
            let inc = (self.cwnd_cnt / cnt).floor();
            self.cwnd_cnt -= inc * cnt;
            let add = (inc * f64::from(self.mss)).min(f64::from(INFINITE_SSTHRESH)) as u32;
            self.cwnd = self.cwnd.saturating_add(add).min(INFINITE_SSTHRESH);
        }
    }

    /// ssthresh after a congestion event (bytes): NewReno RFC 5681 §3.1 (4)
    /// max(FlightSize/2, 2·SMSS); CUBIC RFC 9438 §4.6 cwnd·β with fast
    /// convergence (§4.7), as Linux `bictcp_recalc_ssthresh` (from cwnd, at
    /// least 2 segments).
    fn reduce(&mut self, in_flight: u32) -> u32 {
        let two = self.mss.saturating_mul(2);
        match &mut self.algo {
            Algo::NewReno => (in_flight / 2).max(two),
            Algo::Cubic(c) => {
                let cwnd = f64::from(self.cwnd) / f64::from(self.mss);
                c.epoch_start = At::NONE;
                c.last_max = if cwnd < c.last_max {
                    // §4.7 fast convergence: release bandwidth to new flows.
                    cwnd * (1.0 + CUBIC_BETA) / 2.0
                } else {
                    cwnd
                };
                let th = (cwnd * CUBIC_BETA * f64::from(self.mss)) as u32;
                th.max(two)
            }
        }
    }

    /// Fast retransmit / SACK loss detection starts a recovery episode:
    /// ssthresh reduced, cwnd = ssthresh (RFC 6675 §5 (4.2), RFC 6582 §3.2
    /// step 2 without the artificial inflation, RFC 9438 §4.6).
    pub fn on_enter_recovery(&mut self, _now: Instant, in_flight: u32) {
        if self.in_recovery {
            return;
        }
        self.ssthresh = self.reduce(in_flight);
        self.cwnd = self.ssthresh;
        self.cwnd_cnt = 0.0;
        self.in_recovery = true;
        // RFC 6937 §3 "at the beginning of recovery".
        self.prr_recover_fs = in_flight.max(1);
        self.prr_delivered = 0;
        self.prr_out = 0;
    }

    /// RFC 6937 §3 "on every ACK during recovery": `delivered` bytes newly
    /// delivered (SND.UNA advance + newly SACKed), `pipe` the RFC 6675 pipe
    /// after the ACK. Returns `sndcnt`, the bytes that may be sent now, and
    /// sets cwnd = pipe + sndcnt. Proportional while pipe > ssthresh, else
    /// the slow-start reduction bound (PRR-SSRB, as Linux). Outside
    /// recovery: 0, nothing changes.
    pub fn on_recovery_ack(&mut self, delivered: u32, pipe: u32) -> u32 {
        if !self.in_recovery {
            return 0;
        }
        self.prr_delivered = self.prr_delivered.saturating_add(delivered);
        let sndcnt = if pipe > self.ssthresh {
            // CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out, in
            // whole segments as Linux counts packets (no runt segments).
            let fs = u64::from(self.prr_recover_fs);
            let want = (u64::from(self.prr_delivered) * u64::from(self.ssthresh)).div_ceil(fs);
            let bytes = want.saturating_sub(u64::from(self.prr_out));
            let mss = u64::from(self.mss);
            (bytes.div_ceil(mss) * mss).min(u64::from(INFINITE_SSTHRESH)) as u32
        } else {
            let limit = self
                .prr_delivered
                .saturating_sub(self.prr_out)
                .max(delivered)
                .saturating_add(self.mss);
            (self.ssthresh - pipe).min(limit)
        };
        self.cwnd = pipe
            .saturating_add(sndcnt)
            .clamp(self.mss, INFINITE_SSTHRESH);
        sndcnt
    }

    /// RFC 6937 §3 "on any data transmission or retransmission" during
    /// recovery: prr_out += bytes.
    pub fn on_recovery_sent(&mut self, bytes: u32) {
        if self.in_recovery {
            self.prr_out = self.prr_out.saturating_add(bytes);
        }
    }

    /// A full ACK ended recovery: cwnd = ssthresh (RFC 6582 §3.2 step 3).
    pub fn on_exit_recovery(&mut self, _now: Instant) {
        if self.in_recovery {
            self.in_recovery = false;
            self.cwnd = self.ssthresh.max(self.mss);
            self.cwnd_cnt = 0.0;
        }
    }

    /// Retransmission timeout: RFC 5681 §3.1 (4) ssthresh (held when the
    /// previous RTO made no progress, or recovery already reduced it),
    /// cwnd = LW = 1 SMSS. CUBIC forgets its state (Linux `bictcp_state`
    /// on `TCP_CA_Loss`) but keeps the ssthresh it computed.
    pub fn on_rto(&mut self, _now: Instant, in_flight: u32) {
        if !self.in_loss && !self.in_recovery {
            self.ssthresh = self.reduce(in_flight);
        }
        if let Algo::Cubic(c) = &mut self.algo {
            *c = Cubic::default();
        }
        self.cwnd = self.mss;
        self.cwnd_cnt = 0.0;
        self.in_recovery = false;
        self.in_loss = true;
    }

    /// Sending resumes after `idle` without data in flight. RFC 5681 §4.1:
    /// after an idle period longer than the RTO, cwnd restarts from
    /// RW = min(IW, cwnd); Linux `tcp_cwnd_restart` halves cwnd once per
    /// RTO idle down to RW and first raises ssthresh to ¾·cwnd
    /// (`tcp_current_ssthresh`). CUBIC moves its epoch by the idle time
    /// (Linux `bictcp_cwnd_event`, RFC 9438 §5.8) so the curve does not
    /// jump.
    pub fn on_idle(&mut self, now: Instant, idle: Duration, rto: Duration) {
        if let Algo::Cubic(c) = &mut self.algo
            && let Some(e) = c.epoch_start.get()
        {
            // Moved by the idle time, but never past now.
            c.epoch_start = At::from(Some(if now > e && idle < now - e {
                e + idle
            } else {
                now
            }));
        }
        if idle <= rto || rto == Duration::from_micros(0) {
            return;
        }
        self.ssthresh = self.ssthresh.max(self.cwnd / 4 * 3);
        let restart = self.initial_window().min(self.cwnd);
        let mut left = idle.total_micros().saturating_sub(rto.total_micros());
        let mut cwnd = self.cwnd;
        while left > 0 && cwnd > restart {
            cwnd >>= 1;
            left = left.saturating_sub(rto.total_micros());
        }
        self.cwnd = cwnd.max(restart);
        self.cwnd_cnt = 0.0;
    }

    /// The SYN or SYN-ACK was retransmitted: RFC 5681 §3.1 / RFC 6928 §2
    /// "the initial window used by a sender after a correctly transmitted
    /// SYN MUST be one segment" (Linux `tcp_init_transfer` sets cwnd 1
    /// when the handshake needed a retransmission). Call before any data.
    pub fn syn_retransmitted(&mut self) {
        self.cwnd = self.mss;
        self.cwnd_cnt = 0.0;
    }

    /// The MSS changed (e.g. path MTU): windows keep their size in
    /// segments, as Linux keeps them in packets.
    pub fn set_mss(&mut self, mss: u32) {
        let mss = mss.max(1);
        let scale = |v: u32| -> u32 {
            let segs = u64::from(v) / u64::from(self.mss);
            u32::try_from(segs * u64::from(mss))
                .unwrap_or(INFINITE_SSTHRESH)
                .min(INFINITE_SSTHRESH)
        };
        self.cwnd = scale(self.cwnd).max(mss);
        if self.ssthresh != INFINITE_SSTHRESH {
            self.ssthresh = scale(self.ssthresh).max(mss.saturating_mul(2));
        }
        self.mss = mss;
    }
}

impl Cubic {
    /// Linux `bictcp_update` (RFC 9438 §4.2–§4.4): the number of segments
    /// that must be acknowledged for cwnd to grow by one.
    fn update(&mut self, now: Instant, cwnd: f64, acked: f64) -> f64 {
        self.ack_cnt += acked;
        let epoch = match self.epoch_start.get() {
            Some(e) => e,
            None => {
                // §4.2: a new epoch; K from W_max and the current window.
                self.epoch_start = At::from(Some(now));
                self.ack_cnt = acked;
                self.w_est = cwnd;
                if self.last_max <= cwnd {
                    self.k = 0.0;
                    self.origin = cwnd;
                } else {
                    self.k = ((self.last_max - cwnd) / CUBIC_C).cbrt();
                    self.origin = self.last_max;
                }
                now
            }
        };
        // §4.2: W_cubic(t + RTT), t since the epoch began.
        let rtt = if self.delay_min == NO_DELAY {
            0.0
        } else {
            self.delay_min as f64 / 1e6
        };
        let t = if now >= epoch {
            (now - epoch).total_micros() as f64 / 1e6
        } else {
            0.0
        } + rtt;
        let target = self.origin + CUBIC_C * (t - self.k).powi(3);
        let mut cnt = if target > cwnd {
            cwnd / (target - cwnd)
        } else {
            100.0 * cwnd
        };
        // Linux: at most 5% growth per RTT before the first loss.
        if self.last_max == 0.0 && cnt > 20.0 {
            cnt = 20.0;
        }
        // §4.3 Reno-friendly region: W_est grows by α_cubic per cwnd acked.
        let per_seg = cwnd / CUBIC_ALPHA;
        if per_seg > 0.0 && self.ack_cnt >= per_seg {
            let n = (self.ack_cnt / per_seg).floor();
            self.ack_cnt -= n * per_seg;
            self.w_est += n;
        }
        if self.w_est > cwnd {
            cnt = cnt.min(cwnd / (self.w_est - cwnd));
        }
        cnt.max(2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    fn t0() -> Instant {
        Instant::from_secs(1000)
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// One RTT of a cwnd-limited sender: a full window acked in MSS-sized
    /// ACKs, returning the time after it.
    fn one_rtt(c: &mut Congestion, now: Instant, rtt: Duration) -> Instant {
        let w = c.cwnd();
        let n = (w / MSS).max(1);
        let step = rtt / n;
        let mut t = now;
        for _ in 0..n {
            t += step;
            // A cwnd-limited sender refills the window on every ACK.
            c.on_ack(t, MSS, c.cwnd(), Some(rtt));
        }
        now + rtt
    }

    #[test]
    fn rfc6928_initial_window_is_10_segments() {
        for k in [CongestionKind::Cubic, CongestionKind::NewReno] {
            let c = Congestion::new(k, 1460, t0());
            assert_eq!(c.cwnd(), 14_600);
            assert_eq!(c.ssthresh(), INFINITE_SSTHRESH);
            assert!(c.in_slow_start());
            assert_eq!(c.kind(), k);
        }
    }

    #[test]
    fn rfc5681_s3_1_slow_start_grows_by_bytes_acked_up_to_ssthresh() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        c.on_ack(t0(), MSS, 10 * MSS, None);
        assert_eq!(c.cwnd(), 11 * MSS);
        // Doubling per RTT.
        let now = one_rtt(&mut c, t0(), ms(100));
        assert_eq!(c.cwnd(), 22 * MSS);
        // Exit at ssthresh, the rest is congestion avoidance.
        c.ssthresh = 23 * MSS;
        c.on_ack(now, 3 * MSS, 22 * MSS, None);
        assert_eq!(c.cwnd(), 23 * MSS);
        assert!(!c.in_slow_start());
    }

    #[test]
    fn rfc5681_s3_1_congestion_avoidance_one_segment_per_rtt() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        c.ssthresh = 10 * MSS;
        let mut now = t0();
        for k in 1..=5 {
            now = one_rtt(&mut c, now, ms(100));
            assert_eq!(c.cwnd(), (10 + k) * MSS);
        }
    }

    #[test]
    fn rfc7661_no_growth_when_not_cwnd_limited() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        c.on_ack(t0(), MSS, 2 * MSS, None);
        assert_eq!(c.cwnd(), 10 * MSS);
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.ssthresh = 10 * MSS;
        for _ in 0..100 {
            c.on_ack(t0(), MSS, 3 * MSS, None);
        }
        assert_eq!(c.cwnd(), 10 * MSS);
    }

    #[test]
    fn rfc6582_recovery_sets_ssthresh_and_exit_sets_cwnd_to_it() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        let mut now = t0();
        now = one_rtt(&mut c, now, ms(50)); // 20 MSS
        c.on_enter_recovery(now, 20 * MSS);
        assert_eq!(c.ssthresh(), 10 * MSS);
        assert_eq!(c.cwnd(), 10 * MSS);
        assert!(c.in_recovery());
        // A second signal in the same episode changes nothing.
        c.on_enter_recovery(now, 8 * MSS);
        assert_eq!(c.ssthresh(), 10 * MSS);
        // No growth during recovery.
        c.on_ack(now, 5 * MSS, 10 * MSS, None);
        assert_eq!(c.cwnd(), 10 * MSS);
        c.on_exit_recovery(now);
        assert!(!c.in_recovery());
        assert_eq!(c.cwnd(), 10 * MSS);
        // ssthresh never below 2 SMSS.
        c.on_enter_recovery(now, MSS);
        assert_eq!(c.ssthresh(), 2 * MSS);
    }

    #[test]
    fn rfc5681_s3_1_rto_sets_loss_window_and_holds_ssthresh_on_repeat() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        c.on_rto(t0(), 10 * MSS);
        assert_eq!(c.cwnd(), MSS);
        assert_eq!(c.ssthresh(), 5 * MSS);
        // The same segment times out again: ssthresh is held.
        c.on_rto(t0(), MSS);
        assert_eq!(c.ssthresh(), 5 * MSS);
        assert_eq!(c.cwnd(), MSS);
        // Slow start from the loss window.
        c.on_ack(t0(), MSS, MSS, None);
        assert_eq!(c.cwnd(), 2 * MSS);
        // After progress a new RTO reduces again.
        c.on_rto(t0(), 4 * MSS);
        assert_eq!(c.ssthresh(), 2 * MSS);
    }

    #[test]
    fn rfc5681_s4_1_idle_restart() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        let mut now = t0();
        for _ in 0..3 {
            now = one_rtt(&mut c, now, ms(10));
        }
        assert_eq!(c.cwnd(), 80 * MSS);
        c.ssthresh = 20 * MSS;
        // Idle shorter than the RTO: nothing.
        c.on_idle(now, ms(200), ms(300));
        assert_eq!(c.cwnd(), 80 * MSS);
        // One RTO beyond: halved once; ssthresh raised to 3/4 cwnd.
        c.on_idle(now, ms(450), ms(300));
        assert_eq!(c.cwnd(), 40 * MSS);
        assert_eq!(c.ssthresh(), 60 * MSS);
        // Long idle: down to RW = min(IW, cwnd).
        c.on_idle(now, ms(60_000), ms(300));
        assert_eq!(c.cwnd(), 10 * MSS);
        // A window below IW is kept.
        c.cwnd = 4 * MSS;
        c.on_idle(now, ms(60_000), ms(300));
        assert_eq!(c.cwnd(), 4 * MSS);
    }

    #[test]
    fn rfc9438_s4_6_cubic_beta_0_7() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 100 * MSS;
        c.on_enter_recovery(t0(), 100 * MSS);
        assert_eq!(c.ssthresh(), 70_019, "100 * 717/1024 segments");
        assert_eq!(c.cwnd(), c.ssthresh());
    }

    #[test]
    fn rfc9438_s4_7_fast_convergence() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 100 * MSS;
        c.on_enter_recovery(t0(), 100 * MSS);
        c.on_exit_recovery(t0());
        let Algo::Cubic(cu) = &c.algo else { panic!() };
        assert!((cu.last_max - 100.0).abs() < 1e-9);
        // The next loss comes below W_max: W_max = cwnd (1 + β) / 2.
        c.cwnd = 80 * MSS;
        c.on_enter_recovery(t0(), 80 * MSS);
        let Algo::Cubic(cu) = &c.algo else { panic!() };
        assert!((cu.last_max - 80.0 * (1.0 + CUBIC_BETA) / 2.0).abs() < 1e-9);
    }

    /// After a loss at W_max the window climbs back concavely, flattens
    /// around K (RFC 9438 §4.2: K = cbrt(W_max (1 − β) / C)) and then grows
    /// convexly beyond W_max.
    #[test]
    fn rfc9438_s4_2_concave_plateau_convex() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 200 * MSS;
        let rtt = ms(100);
        c.on_ack(t0(), MSS, 200 * MSS, Some(rtt)); // delay_min
        let lost_at = t0();
        c.on_enter_recovery(lost_at, 200 * MSS);
        c.on_exit_recovery(lost_at);
        let k = (200.0 * (1.0 - CUBIC_BETA) / CUBIC_C).cbrt();
        let mut now = lost_at;
        let mut samples = Vec::new();
        while now < lost_at + ms(((k + 3.0) * 1000.0) as u64) {
            now = one_rtt(&mut c, now, rtt);
            samples.push((
                (now - lost_at).total_millis() as f64 / 1000.0,
                c.cwnd() / MSS,
            ));
        }
        let at = |secs: f64| {
            samples
                .iter()
                .find(|(t, _)| *t >= secs)
                .map(|s| s.1)
                .unwrap_or(0)
        };
        let w_k = at(k);
        assert!((195..=205).contains(&w_k), "cwnd at K = {w_k}");
        let early = at(1.0) - 140;
        let near_k = at(k) - at(k - 1.0);
        assert!(early > near_k, "concave: {early} vs {near_k}");
        let late = at(k + 2.5) - at(k + 1.5);
        assert!(late > near_k && at(k + 2.5) > 200, "convex: {late}");
    }

    /// With a small W_max and a short RTT the Reno-friendly estimate grows
    /// faster than the cubic curve and leads (RFC 9438 §4.3).
    #[test]
    fn rfc9438_s4_3_reno_friendly_region() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 10 * MSS;
        let rtt = ms(10);
        c.on_ack(t0(), MSS, 10 * MSS, Some(rtt));
        c.on_enter_recovery(t0(), 10 * MSS);
        c.on_exit_recovery(t0());
        let start = c.cwnd() / MSS; // 7
        let mut now = t0();
        for _ in 0..40 {
            now = one_rtt(&mut c, now, rtt);
        }
        // Cubic alone: W(0.4 s + RTT) = 10 + 0.4 (0.41 − 1.96)^3 < 9.
        let k = (10.0 * (1.0 - CUBIC_BETA) / CUBIC_C).cbrt();
        let cubic_only = 10.0 + CUBIC_C * (0.41 - k).powi(3);
        assert!(cubic_only < 9.0);
        // W_est = 7 + α·40 ≈ 28; allow for per-ACK granularity.
        let got = c.cwnd() / MSS;
        assert!(got >= start + 15, "cwnd {got} segments");
    }

    #[test]
    fn rfc9438_cubic_rto_loss_window_and_reset() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 50 * MSS;
        c.on_rto(t0(), 50 * MSS);
        assert_eq!(c.cwnd(), MSS);
        assert_eq!(c.ssthresh(), (50.0 * CUBIC_BETA * MSS as f64) as u32);
        let Algo::Cubic(cu) = &c.algo else { panic!() };
        assert_eq!(cu.last_max, 0.0);
        assert!(cu.epoch_start.is_none());
    }

    #[test]
    fn rfc9438_s5_8_idle_moves_the_epoch() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.cwnd = 100 * MSS;
        c.on_enter_recovery(t0(), 100 * MSS);
        c.on_exit_recovery(t0());
        let now = one_rtt(&mut c, t0(), ms(100));
        let Algo::Cubic(cu) = &c.algo else { panic!() };
        let e = cu.epoch_start.get().expect("epoch");
        c.on_idle(now + ms(500), ms(500), ms(1000));
        let Algo::Cubic(cu) = &c.algo else { panic!() };
        assert_eq!(cu.epoch_start.get(), Some(e + ms(500)));
    }

    #[test]
    fn rfc6928_s2_one_segment_after_a_lost_syn() {
        let mut c = Congestion::new(CongestionKind::Cubic, MSS, t0());
        c.syn_retransmitted();
        assert_eq!(c.cwnd(), MSS);
        assert!(c.in_slow_start());
        c.on_ack(t0(), MSS, MSS, None);
        assert_eq!(c.cwnd(), 2 * MSS);
    }

    /// As in RFC 6937's examples: 20 segments in flight, one lost, Reno halves
    /// ssthresh: PRR sends one segment for every two delivered while pipe
    /// is above ssthresh, and ends with pipe = ssthresh.
    #[test]
    fn rfc6937_prr_proportional_then_ssrb() {
        let mut c = Congestion::new(CongestionKind::NewReno, MSS, t0());
        c.on_enter_recovery(t0(), 20 * MSS);
        assert_eq!(c.ssthresh(), 10 * MSS);
        let mut pipe = 19 * MSS; // the lost segment left the pipe
        let mut sent = Vec::new();
        for _ in 0..18 {
            pipe -= MSS; // one more segment delivered (SACKed)
            let n = c.on_recovery_ack(MSS, pipe);
            assert_eq!(c.cwnd(), (pipe + n).max(MSS));
            let segs = n / MSS; // whole segments go out
            c.on_recovery_sent(segs * MSS);
            pipe += segs * MSS;
            sent.push(segs);
        }
        assert_eq!(&sent[..6], &[1, 0, 1, 0, 1, 0]);
        assert_eq!(pipe, 10 * MSS, "converges to ssthresh");
        // Below ssthresh (more losses): slow-start reduction bound, at
        // most delivered + 1 MSS per ACK, up to ssthresh.
        let n = c.on_recovery_ack(MSS, 5 * MSS);
        assert!(n <= 2 * MSS + (c.prr_delivered - c.prr_out), "{n}");
        assert!(5 * MSS + n <= 10 * MSS);
        c.on_exit_recovery(t0());
        assert_eq!(c.cwnd(), 10 * MSS);
        assert_eq!(c.on_recovery_ack(MSS, MSS), 0, "outside recovery");
    }

    #[test]
    fn set_mss_keeps_segments() {
        let mut c = Congestion::new(CongestionKind::NewReno, 1000, t0());
        c.on_enter_recovery(t0(), 20_000);
        c.set_mss(500);
        assert_eq!(c.cwnd(), 5000);
        assert_eq!(c.ssthresh(), 5000);
        c.set_mss(0);
        assert!(c.cwnd() >= 1);
        // Degenerate inputs never panic.
        let mut c = Congestion::new(CongestionKind::Cubic, 0, t0());
        c.on_ack(t0(), u32::MAX, u32::MAX, Some(ms(0)));
        c.on_idle(t0(), ms(u64::MAX / 4_000_000), ms(0));
        c.on_rto(t0(), 0);
        assert!(c.cwnd() >= 1);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Ack(u32, u32, Option<u64>),
        Enter(u32),
        Exit,
        Rto(u32),
        Idle(u64, u64),
        Mss(u32),
        Wait(u64),
        RecAck(u32, u32),
        RecSent(u32),
    }

    fn ev() -> impl proptest::strategy::Strategy<Value = Ev> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u32..100_000, 0u32..2_000_000, proptest::option::of(0u64..2_000_000))
                .prop_map(|(a, f, r)| Ev::Ack(a, f, r)),
            1 => (0u32..2_000_000).prop_map(Ev::Enter),
            1 => Just(Ev::Exit),
            1 => (0u32..2_000_000).prop_map(Ev::Rto),
            1 => (0u64..10_000_000, 0u64..3_000_000).prop_map(|(i, r)| Ev::Idle(i, r)),
            1 => (0u32..9000).prop_map(Ev::Mss),
            2 => (0u64..5_000_000).prop_map(Ev::Wait),
            2 => (0u32..100_000, 0u32..2_000_000).prop_map(|(d, p)| Ev::RecAck(d, p)),
            1 => (0u32..100_000).prop_map(Ev::RecSent),
        ]
    }

    proptest::proptest! {
        /// Any event sequence, both algorithms: no panic; cwnd at least one
        /// segment and bounded; ssthresh at least 2 segments once reduced.
        #[test]
        fn any_events_keep_windows_sane(
            cubic in proptest::bool::ANY,
            evs in proptest::collection::vec(ev(), 0..300),
        ) {
            let kind = if cubic { CongestionKind::Cubic } else { CongestionKind::NewReno };
            let mut now = t0();
            let mut c = Congestion::new(kind, MSS, now);
            for e in evs {
                match e {
                    Ev::Ack(a, f, r) => c.on_ack(now, a, f, r.map(Duration::from_micros)),
                    Ev::Enter(f) => c.on_enter_recovery(now, f),
                    Ev::Exit => c.on_exit_recovery(now),
                    Ev::Rto(f) => c.on_rto(now, f),
                    Ev::Idle(i, r) => {
                        c.on_idle(now, Duration::from_micros(i), Duration::from_micros(r))
                    }
                    Ev::Mss(m) => c.set_mss(m),
                    Ev::Wait(d) => now += Duration::from_micros(d),
                    Ev::RecAck(d, p) => {
                        let n = c.on_recovery_ack(d, p);
                        if c.in_recovery() && p < c.ssthresh() {
                            proptest::prop_assert!(p + n <= c.ssthresh().max(c.mss()));
                        }
                    }
                    Ev::RecSent(b) => c.on_recovery_sent(b),
                }
                proptest::prop_assert!(c.cwnd() >= c.mss());
                proptest::prop_assert!(c.cwnd() <= INFINITE_SSTHRESH);
                if c.ssthresh() != INFINITE_SSTHRESH {
                    proptest::prop_assert!(c.ssthresh() >= 2 * c.mss());
                }
            }
        }
    }
}
