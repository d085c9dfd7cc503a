//! sipedge: a SIP edge proxy.
//!
//! Layers (lower never import higher): [`sip`] (framing, header index, header
//! edits) → [`core`] (`receive_msg`, routing, the nosip hook) → [`transport`]
//! (connections, the Kamailio-shaped TCP reader loop, UDP, kernel backend).
//! [`config`] and [`metrics`] are shared by all of them.
//!
//! Embedders build a [`config::Config`], optionally register their own
//! [`core::nosip::NosipHook`], and call [`run`].

pub mod config;
pub mod core;
pub mod metrics;
pub mod netstack;
pub mod readiness;
pub mod sip;
pub mod transport;

pub use crate::core::nosip::{NosipCtx, NosipHook, NosipVerdict};
pub use transport::{Hooks, run, run_with_hooks};
