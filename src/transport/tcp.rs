//! The Kamailio-shaped TCP read path, shared by both drivers:
//!
//! ```text
//! handle_io(conn)                 readiness / timers / kill requests on a connection
//!   → read_req(conn)              read bytes into the worker's buffer,
//!                                 StreamState::on_bytes frames complete SIP messages
//!     → receive_tcp_msg(msg)      synchronous: Core::receive_msg → Step::dispatch
//! ```
//!
//! `handle_io` / `read_req` are the drivers' (kernel: `kernel::tcp`, a tokio
//! task per connection; afpacket: the stack thread); framing and deadlines
//! are the sans-IO [`super::stream::StreamState`]; this module holds the
//! per-message step and the release bookkeeping.
//!
//! An error travelling up marks the connection Bad (unless it was plain EOF)
//! and `release_conn` removes it from the table, drops its write queue and
//! closes the socket. Unlike Kamailio, every release reason is distinct and
//! counted.

use super::conn::{Conn, ConnIo, ConnState, ConnTable, ReleaseReason};
use super::egress::{Egress, Step};
use crate::config::Transport;
use crate::core::upstream::Signal;
use crate::core::{Core, Outcome, RcvInfo, Scratch, SendKind};
use crate::metrics::Metrics;
use std::time::Instant;

pub use super::kernel::tcp::{accept_loop, connect_and_run, handle_io};

/// `receive_tcp_msg`: one framed message → `core.receive_msg` → dispatch,
/// all synchronous. A parse error not consumed by the nosip hook is
/// `Err(ParseError)` (the driver releases the connection). A SIP message
/// that is not the nosip hook's reply marks `conn` Ok before anything is
/// sent (eviction spares it from then on) and returns `Ok(true)`: the
/// driver then calls `StreamState::mark_ok`.
#[allow(clippy::too_many_arguments)]
pub fn receive_tcp_msg<B: ConnIo>(
    step: &Step,
    eg: &mut impl Egress,
    conn: &Conn<B>,
    rcv: &RcvInfo,
    bytes: &[u8],
    body_offset: usize,
    sc: &mut Scratch,
    received_at: Instant,
) -> Result<bool, ReleaseReason> {
    let outcome = step.core.receive_msg(bytes, body_offset, false, rcv, sc);
    let ok = match outcome {
        Outcome::ParseError => return Err(ReleaseReason::ParseError),
        Outcome::Consumed => return Ok(false),
        Outcome::Send {
            kind: SendKind::NosipReply,
            ..
        } => false,
        Outcome::Send { .. } | Outcome::Resolve { .. } | Outcome::Dropped(_) | Outcome::Txn => true,
    };
    if ok {
        conn.mark_ok();
    }
    step.dispatch(eg, outcome, sc, received_at);
    Ok(ok)
}

/// Passive upstream health: a connection we opened to an upstream target
/// failed (connect refused / timed out, reset).
pub fn upstream_signal<B: ConnIo>(core: &Core, conn: &Conn<B>, signal: Signal) {
    if conn.outbound {
        let ups = core.upstreams();
        ups.mark_failure_at(conn.peer, Some(Transport::Tcp), signal, core.now_ms());
    }
}

/// `release_conn`: remove the connection from the table, drop its write
/// queue, close the socket, count the reason.
pub fn release_conn<B: ConnIo>(
    table: &ConnTable<B>,
    metrics: &Metrics,
    conn: &Conn<B>,
    reason: ReleaseReason,
) {
    if conn.state() == ConnState::Released {
        return;
    }
    let dropped = table.release(conn);
    metrics.tcp_released(reason);
    tracing::debug!(
        conn = conn.id,
        peer = %conn.peer,
        reason = reason.as_str(),
        dropped_bytes = dropped,
        "connection released"
    );
}
