//! The TCP read path, shaped like Kamailio's (seed 000, SPEC A.2):
//!
//! ```text
//! handle_io(conn)                 readiness / timers / kill requests on a connection
//!   → read_req(conn)              read bytes, frame complete SIP messages
//!     → receive_tcp_msg(conn, msg)
//!       → Core::receive_msg(bytes, rcv_info)
//! ```
//!
//! An error travelling up marks the connection Bad (unless it was plain EOF)
//! and `release_conn` removes it from the table, drops its write queue and
//! closes the socket. Unlike Kamailio, every release reason is distinct and
//! counted.

use super::conn::{Conn, ConnCache, ConnState, ReleaseReason};
use super::{Ctx, dispatch};
use crate::config::Transport;
use crate::core::upstream::Signal;
use crate::core::{Outcome, RcvInfo, Scratch, SendKind};
use crate::sip::framer::{Frame, FrameError, Framer, FramerConfig};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Initial and shrink-back size of a connection's read buffer.
const READ_BUF_MIN: usize = 4096;
/// Bytes read per `try_read`.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_WAKEUP: usize = 8;

/// Accept loop of one TCP listen socket: admission (limits, eviction) then one
/// `handle_io` task per connection.
pub async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, local: usize) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.metrics.tcp_opened(false);
        match ctx.conns.admit(peer, local) {
            Ok((conn, evicted)) => {
                if let Some(v) = evicted {
                    tracing::debug!(peer = %v.peer, "evicting idle connection for {peer}");
                    v.kill(ReleaseReason::Evicted);
                }
                let _ = stream.set_nodelay(true);
                let stream = Arc::new(stream);
                conn.attach(stream.clone());
                tokio::spawn(handle_io(ctx.clone(), conn, stream));
            }
            Err(why) => {
                tracing::debug!(%peer, ?why, "connection refused by limits");
                ctx.metrics.tcp_refused();
                ctx.metrics.tcp_released(ReleaseReason::Limit);
                drop(stream);
            }
        }
    }
}

/// Open an outbound connection (to an upstream or a client's Via address),
/// then run its reader loop. Data queued while connecting is sent first.
pub async fn connect_and_run(ctx: Arc<Ctx>, conn: Arc<Conn>) {
    let timeout = Duration::from_secs(ctx.core.live().tcp.connect_timeout_secs.max(1));
    match tokio::time::timeout(timeout, TcpStream::connect(conn.peer)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let stream = Arc::new(stream);
            conn.attach(stream.clone());
            handle_io(ctx, conn, stream).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %conn.peer, "connect failed: {e}");
            upstream_signal(&ctx, &conn, Signal::ConnectFailed);
            release_conn(&ctx, &conn, ReleaseReason::ConnectFailed);
            super::txn_transport_failed(&ctx, &conn, ReleaseReason::ConnectFailed).await;
        }
        Err(_) => {
            tracing::warn!(peer = %conn.peer, "connect timed out");
            upstream_signal(&ctx, &conn, Signal::ConnectFailed);
            release_conn(&ctx, &conn, ReleaseReason::ConnectFailed);
            super::txn_transport_failed(&ctx, &conn, ReleaseReason::ConnectFailed).await;
        }
    }
}

/// Per-connection read state.
struct Reader {
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    len: usize,
    framer: Framer,
    sc: Scratch,
    cache: ConnCache,
    /// When the message being framed began (its deadline is not extended by trickled bytes).
    msg_started: Option<Instant>,
    last_rx: Instant,
    /// `[tcp]` as it was when the connection opened (a reload changes new connections only).
    tcp: crate::config::TcpLimits,
}

/// `handle_io`: wait for readiness, a kill request or a timer; on error
/// release the connection (state Bad unless the cause is EOF).
pub async fn handle_io(ctx: Arc<Ctx>, conn: Arc<Conn>, stream: Arc<TcpStream>) {
    let created = Instant::now();
    let tcp = ctx.core.live().tcp.clone();
    let mut r = Reader {
        buf: vec![0; READ_BUF_MIN],
        len: 0,
        framer: Framer::new(FramerConfig {
            max_msg_size: tcp.max_message_size,
            require_content_length: !tcp.accept_no_content_length,
        }),
        sc: Scratch::new(),
        cache: ConnCache::default(),
        msg_started: None,
        last_rx: created,
        tcp,
    };
    let idle = Duration::from_secs(r.tcp.idle_lifetime_secs);
    let msg_timeout = Duration::from_secs(r.tcp.message_timeout_secs);
    let first_timeout = Duration::from_secs(r.tcp.first_message_timeout_secs);
    let reason = loop {
        if let Some(reason) = conn.kill_reason() {
            break reason;
        }
        // deadlines: idle lifetime, the current message's, the first message's
        let last_tx = ctx.epoch + Duration::from_secs(conn.last_tx());
        let mut deadline = r.last_rx.max(last_tx) + idle;
        let mut why = ReleaseReason::IdleTimeout;
        if let Some(s) = r.msg_started
            && s + msg_timeout < deadline
        {
            deadline = s + msg_timeout;
            why = ReleaseReason::MessageTimeout;
        }
        if !conn.outbound && conn.state() == ConnState::Init && created + first_timeout < deadline {
            deadline = created + first_timeout;
            why = ReleaseReason::FirstMessageTimeout;
        }
        let want_write = conn.has_backlog();
        tokio::select! {
            biased;
            _ = conn.notify.notified() => {}
            res = stream.writable(), if want_write => {
                if res.is_err() || conn.flush().is_err() {
                    break ReleaseReason::Reset;
                }
            }
            res = stream.readable() => {
                if res.is_err() {
                    break ReleaseReason::Reset;
                }
                if let Err(reason) = read_req(&ctx, &conn, &stream, &mut r).await {
                    break reason;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                // the idle deadline may have moved (a send on this connection)
                if why != ReleaseReason::IdleTimeout
                    || Instant::now() >= r.last_rx.max(ctx.epoch + Duration::from_secs(conn.last_tx())) + idle
                {
                    break why;
                }
            }
        }
    };
    if reason == ReleaseReason::Reset {
        upstream_signal(&ctx, &conn, Signal::Reset);
    }
    if reason != ReleaseReason::Eof {
        conn.set_state(ConnState::Bad);
    } else {
        conn.set_state(ConnState::Eof);
    }
    release_conn(&ctx, &conn, reason);
    super::txn_transport_failed(&ctx, &conn, reason).await;
}

/// Passive upstream health: a connection we opened to an upstream target
/// failed (connect refused / timed out, reset).
fn upstream_signal(ctx: &Ctx, conn: &Conn, signal: Signal) {
    if conn.outbound {
        let ups = ctx.core.upstreams();
        ups.mark_failure_at(conn.peer, Some(Transport::Tcp), signal, ctx.core.now_ms());
    }
}

/// `release_conn`: remove the connection from the table, drop its write
/// queue, close the socket, count the reason.
pub fn release_conn(ctx: &Ctx, conn: &Conn, reason: ReleaseReason) {
    if conn.state() == ConnState::Released {
        return;
    }
    let dropped = ctx.conns.release(conn);
    ctx.metrics.tcp_released(reason);
    tracing::debug!(
        conn = conn.id,
        peer = %conn.peer,
        reason = reason.as_str(),
        dropped_bytes = dropped,
        "connection released"
    );
}

fn frame_error_reason(e: FrameError) -> ReleaseReason {
    match e {
        FrameError::Oversize => ReleaseReason::Oversize,
        FrameError::NoContentLength => ReleaseReason::NoContentLength,
        _ => ReleaseReason::FramingError,
    }
}

/// `read_req`: read what is available, frame every complete message and hand
/// each to `receive_tcp_msg`. Any error is returned up to `handle_io`.
async fn read_req(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    stream: &TcpStream,
    r: &mut Reader,
) -> Result<(), ReleaseReason> {
    for _ in 0..READS_PER_WAKEUP {
        // room for one chunk, never more than the size cap plus one chunk
        if r.buf.len() - r.len < READ_CHUNK {
            let want = (r.len + READ_CHUNK).min(r.tcp.max_message_size + READ_CHUNK);
            if want > r.buf.len() {
                r.buf.resize(want, 0);
            }
        }
        let n = match stream.try_read(&mut r.buf[r.len..]) {
            Ok(0) => return Err(ReleaseReason::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReleaseReason::Reset),
        };
        let now = Instant::now();
        r.last_rx = now;
        conn.touch_rx(now.saturating_duration_since(ctx.epoch).as_secs());
        r.len += n;
        ctx.metrics.bytes_in(Transport::Tcp, n);
        let consumed = frame_all(ctx, conn, r, now).await?;
        if consumed > 0 {
            r.buf.copy_within(consumed..r.len, 0);
            r.len -= consumed;
        }
        if r.len == 0 && r.buf.len() > 4 * READ_BUF_MIN {
            r.buf.truncate(READ_BUF_MIN);
            r.buf.shrink_to(READ_BUF_MIN);
        }
    }
    Ok(())
}

/// Frame and process every complete message in the buffer; returns the bytes consumed.
async fn frame_all(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    r: &mut Reader,
    now: Instant,
) -> Result<usize, ReleaseReason> {
    let mut pos = 0;
    loop {
        let step = r
            .framer
            .next(&r.buf[pos..r.len])
            .map_err(frame_error_reason)?;
        // a message, or non-SIP bytes (the core offers those to the nosip hook)
        if let Some((len, body_offset)) = step.for_core() {
            let (s, e) = (pos, pos + len);
            pos = e;
            r.msg_started = None;
            receive_tcp_msg(ctx, conn, r, s, e, body_offset, now).await?;
            continue;
        }
        match step {
            Frame::NeedMore => break,
            Frame::Skip(n) => pos += n,
            Frame::Ping => {
                pos += 4;
                ctx.metrics.keepalive_ping();
                if r.tcp.crlf_pong && conn.send(b"\r\n", ctx.now_s()).is_ok() {
                    ctx.metrics.keepalive_pong();
                }
            }
            Frame::Message { .. } | Frame::NotSip { .. } => {}
        }
    }
    if r.framer.in_message() {
        r.msg_started.get_or_insert(now);
    } else {
        r.msg_started = None;
    }
    Ok(pos)
}

/// `receive_tcp_msg`: one framed message (`r.buf[s..e]`) → the core; its
/// error (unparseable, not consumed by the nosip hook) fails the read.
async fn receive_tcp_msg(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    r: &mut Reader,
    s: usize,
    e: usize,
    body_offset: usize,
    received_at: Instant,
) -> Result<(), ReleaseReason> {
    let rcv = RcvInfo {
        src: conn.peer,
        local: conn.local,
        transport: Transport::Tcp,
        conn: Some(conn.id),
        outbound: conn.outbound,
    };
    let outcome = ctx
        .core
        .receive_msg(&r.buf[s..e], body_offset, false, &rcv, &mut r.sc);
    match outcome {
        Outcome::ParseError => return Err(ReleaseReason::ParseError),
        Outcome::Consumed => return Ok(()),
        Outcome::Send {
            kind: SendKind::NosipReply,
            ..
        } => {}
        Outcome::Send { .. } | Outcome::Resolve { .. } | Outcome::Dropped(_) | Outcome::Txn => {
            conn.mark_ok()
        }
    }
    // the connection we read from is the first candidate for replies
    if !r.cache.contains(conn.id) {
        r.cache.put(conn.clone());
    }
    dispatch(ctx, outcome, &r.sc, received_at, None, &mut r.cache).await;
    Ok(())
}
