//! The reloadable part of the running configuration: what a SIGHUP reload
//! replaces without a restart. One struct, swapped whole with `arc-swap`:
//! the hot path loads it once per message (lock-free, no waiting), a reload
//! builds a new one and stores it; messages in flight finish with the old.
//!
//! To make a setting reloadable: add it here (built in [`Live::new`]), read
//! it through [`crate::core::Core::live`], and name its config key in
//! [`crate::config::RELOADABLE`].

use super::nosip::NosipHook;
use crate::config::{Config, Selection, TcpLimits, UpstreamSpec};
use std::sync::Arc;
use std::time::Duration;

/// See the module doc.
pub struct Live {
    /// `proxy.upstreams`.
    pub upstreams: Vec<UpstreamSpec>,
    /// `proxy.selection`.
    pub selection: Selection,
    /// `nosip.*`: the hook in use (an embedder's own hook survives reloads).
    pub nosip: Arc<dyn NosipHook>,
    /// `[tcp]`: taken by each connection when it opens (and by accept).
    pub tcp: TcpLimits,
    /// `proxy.drain_timeout_secs`: read when SIGTERM arrives.
    pub drain_timeout: Duration,
}

impl Live {
    pub fn new(cfg: &Config, nosip: Arc<dyn NosipHook>) -> Live {
        Live {
            upstreams: cfg.upstreams.clone(),
            selection: cfg.selection,
            nosip,
            tcp: cfg.tcp.clone(),
            drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("upstreams", &self.upstreams)
            .field("selection", &self.selection)
            .field("tcp", &self.tcp)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}
