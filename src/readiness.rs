//! Liveness and readiness for load balancers and Kubernetes, served on the
//! metrics listener: `/healthz` is 200 while the process runs; `/ready` is
//! 200 only when the proxy takes new traffic, 503 while it is starting,
//! draining (SIGTERM) or has no upstream up.
//!
//! The state is three atomics: the metrics server reads it, the transport
//! (start-up, drain) and upstream health checks set it. No locks.

use std::sync::atomic::{AtomicBool, Ordering};

/// Why `/ready` answers what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    /// Listeners not bound yet.
    Starting,
    /// SIGTERM received: no new connections, finishing what runs.
    Draining,
    /// Health checks find no upstream up.
    NoUpstream,
    Ready,
}

impl ReadyState {
    /// The word in the `/ready` body.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyState::Starting => "starting",
            ReadyState::Draining => "draining",
            ReadyState::NoUpstream => "no upstream up",
            ReadyState::Ready => "ready",
        }
    }
}

/// The readiness flags (see the module doc).
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
    upstreams_up: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Starting, not draining, upstreams up.
    pub const fn new() -> Readiness {
        Readiness {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            upstreams_up: AtomicBool::new(true),
        }
    }

    /// Every listener is bound: ready unless draining or no upstream is up.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The drain began (SIGTERM); it never ends.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Upstream health checks: `false` when no upstream is up (default `true`).
    pub fn set_upstreams_up(&self, up: bool) {
        self.upstreams_up.store(up, Ordering::Release);
    }

    pub fn state(&self) -> ReadyState {
        if self.draining.load(Ordering::Acquire) {
            ReadyState::Draining
        } else if !self.started.load(Ordering::Acquire) {
            ReadyState::Starting
        } else if !self.upstreams_up.load(Ordering::Acquire) {
            ReadyState::NoUpstream
        } else {
            ReadyState::Ready
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == ReadyState::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_until_started() {
        let r = Readiness::new();
        assert_eq!(r.state(), ReadyState::Starting);
        r.set_started();
        assert!(r.is_ready());
    }

    #[test]
    fn no_upstream_up_is_not_ready_and_recovers() {
        let r = Readiness::new();
        r.set_started();
        r.set_upstreams_up(false);
        assert_eq!(r.state(), ReadyState::NoUpstream);
        r.set_upstreams_up(true);
        assert!(r.is_ready());
    }

    #[test]
    fn draining_wins_and_stays() {
        let r = Readiness::new();
        r.set_started();
        r.set_draining();
        assert_eq!(r.state(), ReadyState::Draining);
        r.set_upstreams_up(true);
        r.set_started();
        assert_eq!(r.state(), ReadyState::Draining);
        assert!(r.is_draining());
        // draining before start-up finished: still draining
        let r = Readiness::new();
        r.set_draining();
        assert_eq!(r.state(), ReadyState::Draining);
    }
}
