//! The Kamailio-shaped TCP read path, shared by both drivers:
//!
//! ```text
//! handle_io(conn)                 readiness / timers / kill requests on a connection
//!   → read_req(conn)              read bytes into the worker's buffer,
//!                                 StreamState::on_bytes frames complete SIP messages
//!     → receive_tcp_msg(msg)      synchronous: Core::receive_msg → Step::dispatch
//!                                 (a whole message at the front of the read:
//!                                 Core::receive_stream_head, framed and parsed
//!                                 in one walk)
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
use super::stream::{Item, Millis, StreamState};
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
    tcp_outcome(step, eg, conn, outcome, sc, received_at)
}

/// The rest of [`receive_tcp_msg`] once the core has handled a message
/// (framed and parsed apart, or in one walk).
fn tcp_outcome<B: ConnIo>(
    step: &Step,
    eg: &mut impl Egress,
    conn: &Conn<B>,
    outcome: Outcome,
    sc: &mut Scratch,
    received_at: Instant,
) -> Result<bool, ReleaseReason> {
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

/// One chunk read from `conn` → [`StreamState::on_bytes`]: every framed
/// message through [`receive_tcp_msg`]; a CRLFCRLF ping is counted and,
/// with `crlf_pong`, answered by `pong` (the backend's send of CRLF on
/// `conn`; `true`: sent, counted). The stream is marked Ok once a message
/// was delivered, even when a later one in the chunk failed.
#[allow(clippy::too_many_arguments)]
pub fn read_chunk<B: ConnIo, E: Egress>(
    st: &mut StreamState,
    chunk: &[u8],
    now: Millis,
    step: &Step,
    eg: &mut E,
    conn: &Conn<B>,
    rcv: &RcvInfo,
    sc: &mut Scratch,
    received_at: Instant,
    mut pong: impl FnMut(&mut E) -> bool,
) -> Result<(), ReleaseReason> {
    let crlf_pong = st.config().crlf_pong;
    let mut delivered = false;
    let r = st.on_bytes(chunk, now, |item| match item {
        // the common case: a whole message, framed and parsed in one walk
        Item::Head(head) => match step.core.receive_stream_head(head, rcv, sc) {
            Some((len, outcome)) => {
                delivered |= tcp_outcome(step, eg, conn, outcome, sc, received_at)?;
                Ok(len)
            }
            None => Ok(0),
        },
        Item::Message { bytes, body_offset } => {
            delivered |= receive_tcp_msg(step, eg, conn, rcv, bytes, body_offset, sc, received_at)?;
            Ok(0)
        }
        Item::Ping => {
            step.metrics.keepalive_ping();
            if crlf_pong && pong(eg) {
                step.metrics.keepalive_pong();
            }
            Ok(0)
        }
    });
    if delivered {
        st.mark_ok();
    }
    r
}

/// Passive upstream health: a connection we opened to an upstream target
/// failed (connect refused / timed out, reset).
pub fn upstream_signal<B: ConnIo>(core: &Core, conn: &Conn<B>, signal: Signal) {
    if conn.outbound {
        let ups = core.upstreams();
        ups.mark_failure_at(conn.peer, Some(Transport::Tcp), signal, core.now_ms());
    }
}

/// Stateful mode: a transport error on a connection we opened (a refused or
/// failed connect, a RST): the client transactions whose current try went
/// to its peer fail over now ([`Core::transport_failed`]) instead of
/// waiting for Timer B / F. Both backends call it after `release_conn`;
/// nothing for inbound connections or other reasons.
pub fn txn_transport_failed(
    step: &Step,
    eg: &mut impl Egress,
    peer: std::net::SocketAddr,
    outbound: bool,
    why: ReleaseReason,
) {
    if !outbound
        || step.core.stateful().is_none()
        || !matches!(why, ReleaseReason::ConnectFailed | ReleaseReason::Reset)
    {
        return;
    }
    let mut out = crate::core::transaction::Out::default();
    if step.core.transport_failed(peer, Transport::Tcp, &mut out) > 0 {
        step.deliver_txn(eg, &out, Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::nosip::NoneHook;
    use crate::core::{Dest, Scratch};
    use crate::transport::conn::{ConnTable, TableLimits};
    use crate::transport::egress::{DnsCache, SendResult, rcv_tcp};
    use crate::transport::kernel::KernelIo;
    use std::net::SocketAddr;
    use std::sync::Arc;

    #[derive(Default)]
    struct Sink(Vec<(Transport, Option<u64>, Vec<u8>)>);

    impl Egress for Sink {
        fn send_udp(&mut self, d: &Dest, out: &[u8]) -> SendResult {
            self.0.push((Transport::Udp, d.conn, out.to_vec()));
            SendResult::Sent
        }
        fn send_tcp(&mut self, d: &Dest, out: &[u8]) -> SendResult {
            self.0.push((Transport::Tcp, d.conn, out.to_vec()));
            SendResult::Sent
        }
        fn resolve_later(&mut self, _: crate::transport::egress::Pending) {}
    }

    fn options(peer: SocketAddr) -> Vec<u8> {
        format!(
            "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/TCP {peer};branch=z9hG4bK-t1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@{peer}>;tag=1\r\nTo: <sip:127.0.0.1:5060>\r\n\
             Call-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// `receive_tcp_msg` of `msg` (headers up to its end) on a fresh
    /// inbound connection from 127.0.0.1:`port`: the result, the
    /// connection after it, and what was sent.
    fn receive_on_new_conn(
        port: u16,
        msg: &[u8],
    ) -> (Result<bool, ReleaseReason>, Arc<Conn<KernelIo>>, Sink) {
        let metrics = Arc::new(Metrics::new());
        let core = Core::new(
            &Config::default_config(),
            Box::new(NoneHook),
            metrics.clone(),
        );
        let dns = DnsCache::default();
        let step = Step {
            core: &core,
            metrics: &metrics,
            dns: &dns,
        };
        let table = ConnTable::<KernelIo>::new(TableLimits {
            max_connections: 4,
            max_per_ip: 4,
            write_queue_bytes: 1024,
        });
        let peer = SocketAddr::from(([127, 0, 0, 1], port));
        let (conn, _) = table.admit(peer, 1).unwrap();
        let rcv = rcv_tcp(peer, 1, conn.id, false);
        let (mut eg, mut sc) = (Sink::default(), Scratch::new());
        let r = receive_tcp_msg(
            &step,
            &mut eg,
            &conn,
            &rcv,
            msg,
            msg.len(),
            &mut sc,
            Instant::now(),
        );
        (r, conn, eg)
    }

    #[test]
    fn a4_first_sip_message_marks_the_connection_ok_and_replies_on_it() {
        let (ok, conn, eg) =
            receive_on_new_conn(40001, &options("127.0.0.1:40001".parse().unwrap()));
        assert_eq!(ok, Ok(true));
        assert_eq!(conn.state(), ConnState::Ok);
        assert_eq!(eg.0.len(), 1);
        let (t, on, out) = &eg.0[0];
        assert_eq!(
            (*t, *on),
            (Transport::Tcp, Some(conn.id)),
            "reply on the same connection"
        );
        assert!(out.starts_with(b"SIP/2.0 200"));
    }

    #[test]
    fn a4_unparseable_bytes_release_with_parse_error_and_send_nothing() {
        let (r, conn, eg) = receive_on_new_conn(40002, b"\x16\x03\x01 not sip at all");
        assert_eq!(r, Err(ReleaseReason::ParseError));
        assert_eq!(conn.state(), ConnState::Init);
        assert!(eg.0.is_empty());
    }
}
