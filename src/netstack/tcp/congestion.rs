//! TEMPORARY placeholder until branch tcp-parts lands congestion.rs.
use crate::netstack::{Duration, Instant};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionKind {
    Cubic,
    NewReno,
}
#[derive(Debug, Clone)]
pub struct Congestion {
    mss: u32,
    cwnd: u32,
    ssthresh: u32,
}
impl Congestion {
    pub fn new(_kind: CongestionKind, mss: u32, _now: Instant) -> Self {
        Congestion {
            mss,
            cwnd: 10 * mss,
            ssthresh: u32::MAX,
        }
    }
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }
    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }
    pub fn on_ack(&mut self, _now: Instant, acked: u32, _in_flight: u32, _rtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked.min(self.mss));
        } else {
            self.cwnd = self
                .cwnd
                .saturating_add((self.mss * self.mss / self.cwnd.max(1)).max(1));
        }
    }
    pub fn on_enter_recovery(&mut self, _now: Instant, in_flight: u32) {
        self.ssthresh = (in_flight / 2).max(2 * self.mss);
        self.cwnd = self.ssthresh;
    }
    pub fn on_exit_recovery(&mut self, _now: Instant) {
        self.cwnd = self.ssthresh;
    }
    pub fn on_rto(&mut self, _now: Instant, in_flight: u32) {
        self.ssthresh = (in_flight / 2).max(2 * self.mss);
        self.cwnd = self.mss;
    }
    pub fn on_idle(&mut self, _now: Instant, _idle: Duration, _rto: Duration) {
        self.cwnd = self.cwnd.min(10 * self.mss);
    }
    pub fn set_mss(&mut self, mss: u32) {
        self.mss = mss.max(1);
        self.cwnd = self.cwnd.max(self.mss);
    }
}
