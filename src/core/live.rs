//! The reloadable part of the running configuration: what a SIGHUP reload
//! replaces without a restart. One struct, swapped whole with `arc-swap`:
//! the hot path loads it once per message (lock-free, no waiting), a reload
//! builds a new one and stores it; messages in flight finish with the old.
//!
//! To make a setting reloadable: add it here (built in [`Live::new`]), read
//! it through [`crate::core::Core::live`], and name its config key in
//! [`crate::config::RELOADABLE`].

use super::nosip::NosipHook;
use super::upstream::UpstreamSets;
use crate::config::{Config, TcpLimits};
use std::sync::Arc;
use std::time::Duration;

/// See the module doc.
pub struct Live {
    /// `[[upstream_set]]` (or `proxy.upstreams` + `proxy.selection`, the
    /// one-set shorthand): the targets, their selection and their health.
    /// Shared with the probe drivers and the transaction layer, which
    /// notice a reload by comparing the `Arc`.
    pub upstream: Arc<UpstreamSets>,
    /// `nosip.*`: the hook in use (an embedder's own hook survives reloads).
    pub nosip: Arc<dyn NosipHook>,
    /// `[tcp]`: taken by each connection when it opens (and by accept).
    pub tcp: TcpLimits,
    /// `proxy.drain_timeout_secs`: read when SIGTERM arrives.
    pub drain_timeout: Duration,
}

impl Live {
    pub fn new(cfg: &Config, nosip: Arc<dyn NosipHook>, upstream: Arc<UpstreamSets>) -> Live {
        Live {
            upstream,
            nosip,
            tcp: cfg.tcp.clone(),
            drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
        }
    }
}

impl Live {
    /// The settings of a reload to `cfg`: the upstream sets are rebuilt
    /// only when they changed (then keeping the health of the targets that
    /// stay, [`UpstreamSets::rebuild`]); otherwise the same sets go on.
    pub fn reload(&self, cfg: &Config, nosip: Arc<dyn NosipHook>) -> Live {
        let specs = cfg.upstream_set_specs();
        let upstream = if self.upstream.specs() == specs.as_slice() {
            self.upstream.clone()
        } else {
            Arc::new(self.upstream.rebuild(&specs))
        };
        Live::new(cfg, nosip, upstream)
    }

    /// The same settings with other upstream sets.
    pub fn with_upstream(&self, upstream: Arc<UpstreamSets>) -> Live {
        Live {
            upstream,
            nosip: self.nosip.clone(),
            tcp: self.tcp.clone(),
            drain_timeout: self.drain_timeout,
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("upstream", &self.upstream)
            .field("tcp", &self.tcp)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Transport, parse_upstream};
    use crate::core::nosip::{MatchHook, NoneHook};
    use crate::core::{Core, Outcome, RcvInfo, Scratch};
    use crate::metrics::Metrics;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-live\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: live@198.51.100.7\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";

    fn rcv() -> RcvInfo {
        RcvInfo {
            src: "198.51.100.7:5062".parse().unwrap(),
            local: 0,
            transport: Transport::Udp,
            conn: None,
            outbound: false,
        }
    }

    fn dest(core: &Core) -> std::net::SocketAddr {
        let mut sc = Scratch::new();
        match core.receive_datagram(INVITE, &rcv(), &mut sc) {
            Outcome::Send { dest, .. } => dest.addr,
            o => panic!("not forwarded: {o:?}"),
        }
    }

    #[test]
    fn set_live_moves_the_next_request_to_the_new_upstream() {
        let cfg = Config::default_config();
        let core = Core::new(&cfg, Box::new(NoneHook), Arc::new(Metrics::new()));
        assert_eq!(dest(&core), cfg.upstreams[0].addr);
        let mut new = cfg.clone();
        new.upstreams = vec![parse_upstream("t", "sip:127.0.0.1:5090").unwrap()];
        let hook = core.live().nosip.clone();
        let old = core.upstreams();
        core.set_live(core.live().reload(&new, hook));
        assert_eq!(dest(&core), "127.0.0.1:5090".parse().unwrap());
        assert_eq!(
            core.live().upstream.specs(),
            new.upstream_set_specs().as_slice()
        );
        assert!(!Arc::ptr_eq(&old, &core.upstreams()));
        // unchanged upstreams: the same sets (health and probes go on)
        let hook = core.live().nosip.clone();
        let now = core.upstreams();
        core.set_live(core.live().reload(&new, hook));
        assert!(Arc::ptr_eq(&now, &core.upstreams()));
    }

    #[test]
    fn set_live_replaces_the_nosip_hook() {
        let cfg = Config::default_config();
        let core = Core::new(&cfg, Box::new(NoneHook), Arc::new(Metrics::new()));
        let mut sc = Scratch::new();
        assert_eq!(
            core.receive_datagram(b"ping\r\n", &rcv(), &mut sc),
            Outcome::ParseError
        );
        let hook: Arc<dyn NosipHook> = Arc::new(MatchHook::new("^ping").unwrap());
        core.set_live(core.live().reload(&cfg, hook));
        assert_eq!(
            core.receive_datagram(b"ping\r\n", &rcv(), &mut sc),
            Outcome::Consumed
        );
    }
}
