//! Retransmission timeout estimator (RFC 6298), with Linux's bounds.
//!
//! Linux (`tcp_rtt_estimator`, `tcp_set_rto`) keeps the RFC's algorithm but
//! floors the variance term at `tcp_rto_min` (200 ms) rather than at the
//! clock granularity, so RTO = SRTT + max(200 ms, 4·RTTVAR); this estimator
//! does the same by using `min_rto` as the RFC's G. Samples must follow
//! Karn's algorithm (RFC 6298 §3: none from retransmitted segments unless
//! the timestamp option disambiguates them); that is the caller's job.

use crate::netstack::Duration;

/// RFC 6298 §2.1: "Until a round-trip time (RTT) measurement has been made
/// ..., the sender SHOULD set RTO <- 1 second".
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Linux `TCP_RTO_MIN` (HZ/5). RFC 6298 §2.4 says 1 s; Linux and this stack
/// use 200 ms (also the floor of the variance term, see the module doc).
pub const MIN_RTO: Duration = Duration::from_millis(200);
/// Linux `TCP_RTO_MAX`. RFC 6298 §2.5: "A maximum value MAY be placed on
/// RTO provided it is at least 60 seconds."
pub const MAX_RTO: Duration = Duration::from_secs(120);

/// RFC 6298 §5.7 / Linux `TCP_TIMEOUT_FALLBACK`: the RTO once data flows
/// when the SYN (or SYN-ACK) had to be retransmitted and no RTT was
/// measured.
pub const FALLBACK_RTO: Duration = Duration::from_secs(3);

/// RFC 6298 §2.3: alpha = 1/8 (SRTT gain), as a shift.
const ALPHA_SHIFT: u32 = 3;
/// RFC 6298 §2.3: beta = 1/4 (RTTVAR gain), as a shift.
const BETA_SHIFT: u32 = 2;
/// RFC 6298 §2.2/§2.3: K = 4.
const K: u64 = 4;
/// Backoff count limit: keeps the shift defined; 2^31 times any base is
/// far beyond any max_rto anyway.
const MAX_BACKOFF: u32 = 31;

/// RFC 6298 estimator state. All times in microseconds. 32 bytes (one per
/// TCB): the bounds in 32 bits (up to 71 minutes; larger ones are capped),
/// no SRTT as [`NO_SRTT`], the backoff count in 8 bits.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: u64,
    rttvar: u64,
    initial: u32,
    min: u32,
    max: u32,
    backoff: u8,
}

/// `srtt` before the first sample.
const NO_SRTT: u64 = u64::MAX;

/// Microseconds in 32 bits, capped.
fn us32(d: u64) -> u32 {
    u32::try_from(d).unwrap_or(u32::MAX)
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator::new(INITIAL_RTO, MIN_RTO, MAX_RTO)
    }
}

impl RttEstimator {
    /// `initial_rto` before any sample (1 s, §2.1); RTO kept within
    /// [`min_rto`, `max_rto`] (Linux: 200 ms, 120 s).
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        let min = us32(min_rto.total_micros());
        RttEstimator {
            srtt: NO_SRTT,
            rttvar: 0,
            backoff: 0,
            initial: us32(initial_rto.total_micros()),
            min,
            max: us32(max_rto.total_micros()).max(min),
        }
    }

    /// One RTT measurement R. Clears the backoff (RFC 6298 §5.7: after the
    /// backoff a new sample recomputes RTO).
    pub fn sample(&mut self, rtt: Duration) {
        // NO_SRTT is never a sample
        let r = rtt.total_micros().min(NO_SRTT - 1);
        match self.srtt_us() {
            // §2.2: SRTT <- R, RTTVAR <- R/2.
            None => {
                self.srtt = r;
                self.rttvar = r / 2;
            }
            // §2.3: RTTVAR <- (1 - beta) * RTTVAR + beta * |SRTT - R'|,
            // then SRTT <- (1 - alpha) * SRTT + alpha * R' (RTTVAR first,
            // with the old SRTT).
            Some(srtt) => {
                let delta = srtt.abs_diff(r);
                self.rttvar = self.rttvar - (self.rttvar >> BETA_SHIFT) + (delta >> BETA_SHIFT);
                self.srtt = srtt - (srtt >> ALPHA_SHIFT) + (r >> ALPHA_SHIFT);
            }
        }
        self.backoff = 0;
    }

    /// RTO without backoff: §2.1 before a sample, else §2.2/§2.3
    /// SRTT + max(G, K·RTTVAR) with G = min_rto (Linux), clamped (§2.4/§2.5).
    fn base_rto(&self) -> u64 {
        let (min, max) = (u64::from(self.min), u64::from(self.max));
        let rto = match self.srtt_us() {
            None => u64::from(self.initial),
            Some(srtt) => srtt.saturating_add(min.max(K.saturating_mul(self.rttvar))),
        };
        rto.clamp(min, max)
    }

    fn srtt_us(&self) -> Option<u64> {
        (self.srtt != NO_SRTT).then_some(self.srtt)
    }

    /// The current RTO, with the backoff applied and clamped to max_rto.
    pub fn rto(&self) -> Duration {
        let base = self.base_rto();
        let rto = base
            .checked_shl(u32::from(self.backoff))
            .filter(|v| v >> self.backoff == base)
            .unwrap_or(u64::MAX);
        Duration::from_micros(rto.min(u64::from(self.max)))
    }

    /// §5.5: "the host MUST set RTO <- RTO * 2 ("back off the timer")";
    /// the maximum of §2.5 applies.
    pub fn backoff(&mut self) {
        if u32::from(self.backoff) < MAX_BACKOFF {
            self.backoff += 1;
        }
    }

    /// RFC 6298 §5.7: "If the timer expires awaiting the ACK of a SYN
    /// segment and the TCP implementation is using an RTO less than 3
    /// seconds, the RTO MUST be re-initialized to 3 seconds when data
    /// transmission begins". Call when the connection is established after
    /// a SYN/SYN-ACK retransmission; no effect once an RTT was measured.
    /// Clears the backoff.
    pub fn syn_retransmitted(&mut self) {
        if self.srtt == NO_SRTT {
            self.initial = self.initial.max(us32(FALLBACK_RTO.total_micros()));
        }
        self.backoff = 0;
    }

    /// How many times the timer backed off since the last sample.
    pub fn backoffs(&self) -> u32 {
        u32::from(self.backoff)
    }

    /// Forget the backoff without a sample (e.g. when an ACK for new data
    /// arrives but no valid sample can be taken).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt_us().map(Duration::from_micros)
    }

    /// RTTVAR (zero before the first sample).
    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(self.rttvar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn rfc6298_s2_1_initial_rto_is_one_second() {
        let e = RttEstimator::default();
        assert_eq!(e.rto(), ms(1000));
        assert_eq!(e.srtt(), None);
    }

    #[test]
    fn rfc6298_s2_2_first_sample() {
        let mut e = RttEstimator::default();
        e.sample(ms(100));
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rttvar(), ms(50));
        // SRTT + max(G, 4 * RTTVAR) = 100 + 200.
        assert_eq!(e.rto(), ms(300));
        let mut e = RttEstimator::default();
        e.sample(ms(400));
        assert_eq!(e.rto(), ms(400 + 800));
    }

    #[test]
    fn rfc6298_s2_3_later_samples() {
        let mut e = RttEstimator::default();
        e.sample(ms(400)); // SRTT 400, RTTVAR 200
        e.sample(ms(200));
        // RTTVAR = 3/4 * 200 + 1/4 * |400 - 200| = 200; SRTT = 7/8*400 + 1/8*200 = 375.
        assert_eq!(e.rttvar(), ms(200));
        assert_eq!(e.srtt(), Some(ms(375)));
        assert_eq!(e.rto(), ms(375 + 800));
        // Steady samples converge: RTTVAR decays, RTO tends to SRTT + G.
        for _ in 0..200 {
            e.sample(ms(375));
        }
        assert!(e.rttvar() < ms(1));
        assert!(e.rto() >= ms(575) && e.rto() <= ms(576));
    }

    #[test]
    fn rfc6298_s2_4_linux_min_rto_200ms() {
        let mut e = RttEstimator::default();
        for _ in 0..50 {
            e.sample(Duration::from_micros(300));
        }
        // A LAN RTT: SRTT + 200 ms, never below 200 ms.
        assert!(e.rto() >= ms(200) && e.rto() <= ms(201));
        let mut e = RttEstimator::new(ms(100), ms(200), ms(120_000));
        assert_eq!(e.rto(), ms(200), "initial below min is clamped");
        e.sample(Duration::from_micros(0));
        assert_eq!(e.rto(), ms(200));
    }

    #[test]
    fn rfc6298_s2_5_max_rto_120s() {
        let mut e = RttEstimator::default();
        e.sample(ms(200_000));
        assert_eq!(e.rto(), ms(120_000));
    }

    #[test]
    fn rfc6298_s5_5_backoff_doubles_capped_and_sample_clears_it() {
        let mut e = RttEstimator::default();
        assert_eq!(e.rto(), ms(1000));
        e.backoff();
        assert_eq!(e.rto(), ms(2000));
        e.backoff();
        assert_eq!(e.rto(), ms(4000));
        assert_eq!(e.backoffs(), 2);
        for _ in 0..100 {
            e.backoff();
        }
        assert_eq!(e.rto(), ms(120_000));
        e.sample(ms(100));
        assert_eq!(e.backoffs(), 0);
        assert_eq!(e.rto(), ms(300));
        e.backoff();
        e.reset_backoff();
        assert_eq!(e.rto(), ms(300));
    }

    #[test]
    fn rfc6298_s5_7_three_seconds_after_a_lost_syn() {
        let mut e = RttEstimator::default();
        e.backoff();
        e.syn_retransmitted();
        assert_eq!(e.rto(), ms(3000));
        assert_eq!(e.backoffs(), 0);
        e.sample(ms(100));
        assert_eq!(e.rto(), ms(300));
        // With a sample already taken (e.g. from the SYN-ACK's timestamp
        // echo): unchanged.
        e.syn_retransmitted();
        assert_eq!(e.rto(), ms(300));
    }

    proptest::proptest! {
        /// Any samples and backoffs: RTO stays within [min, max] and never
        /// shrinks on a backoff.
        #[test]
        fn rto_always_within_bounds(
            ops in proptest::collection::vec(proptest::option::of(0u64..400_000_000), 0..200),
        ) {
            let mut e = RttEstimator::default();
            for o in ops {
                let before = e.rto();
                match o {
                    Some(us) => e.sample(Duration::from_micros(us)),
                    None => {
                        e.backoff();
                        proptest::prop_assert!(e.rto() >= before);
                    }
                }
                proptest::prop_assert!(e.rto() >= MIN_RTO && e.rto() <= MAX_RTO);
            }
        }
    }
}
