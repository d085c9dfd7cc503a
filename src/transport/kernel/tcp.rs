//! The kernel driver of the TCP reader loop: one tokio task per connection
//! runs `handle_io`, a thin `select!` over readiness, kill requests and one
//! timer; `read_req` reads into the worker's buffer and hands the bytes to
//! the sans-IO [`StreamState`]; each message goes through the shared,
//! synchronous [`receive_tcp_msg`].

use super::{Cork, KernelEgress, KernelIo};
use crate::config::Transport;
use crate::core::Scratch;
use crate::core::upstream::Signal;
use crate::transport::Ctx;
use crate::transport::conn::{Conn, ConnCache, ConnState, ReleaseReason};
use crate::transport::egress::rcv_tcp;
use crate::transport::stream::{StreamConfig, StreamState};
use crate::transport::tcp::{read_chunk, release_conn, txn_transport_failed, upstream_signal};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Size of the per-worker read buffer.
pub const READ_BUF: usize = 64 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_WAKEUP: usize = 8;

/// What every connection task on a worker thread shares: the read buffer,
/// the core's scratch and a few connection handles. Only used between two
/// `.await`s (never held across one).
struct Worker {
    buf: Box<[u8]>,
    sc: Scratch,
    cache: ConnCache<KernelIo>,
    cork: Cork,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Run `f` with this worker thread's buffer, scratch and cache (made on
/// first use; a nested call, which the driver never makes, gets fresh ones).
fn with_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> R {
    let fresh = || Worker {
        buf: vec![0u8; READ_BUF].into_boxed_slice(),
        sc: Scratch::new(),
        cache: ConnCache::default(),
        cork: Cork::default(),
    };
    WORKER.with(|w| match w.try_borrow_mut() {
        Ok(mut slot) => f(slot.get_or_insert_with(fresh)),
        Err(_) => f(&mut fresh()),
    })
}

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
                conn.attach(stream);
                tokio::spawn(handle_io(ctx.clone(), conn));
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
pub async fn connect_and_run(ctx: Arc<Ctx>, conn: Arc<Conn<KernelIo>>) {
    let timeout = Duration::from_secs(ctx.core.live().tcp.connect_timeout_secs.max(1));
    let err = match tokio::time::timeout(timeout, TcpStream::connect(conn.peer)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            conn.attach(stream);
            handle_io(ctx, conn).await;
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    // refused or timed out: a passive signal, the connection released, its
    // transactions failed over
    tracing::warn!(peer = %conn.peer, "connect failed: {err}");
    upstream_signal(&ctx.core, &conn, Signal::ConnectFailed);
    release_conn(
        &ctx.conns,
        &ctx.metrics,
        &conn,
        ReleaseReason::ConnectFailed,
    );
    fail_over(&ctx, &conn, ReleaseReason::ConnectFailed);
}

/// `handle_io`: wait for readiness, a kill request or the stream's next
/// deadline; on error release the connection (state Bad unless the cause
/// is EOF). The wait is one hand-written poll (`poll_io`) rather than a
/// `select!`, and the deadline is woken by the table-wide sweeper
/// ([`super::sweep_deadlines`]) rather than a timer per connection: it keeps
/// the task small (memory per idle connection) — the readiness wakers live
/// in tokio's I/O registration, the kill / backlog / deadline waker in the
/// connection.
pub fn handle_io(ctx: Arc<Ctx>, conn: Arc<Conn<KernelIo>>) -> HandleIo {
    let cfg = StreamConfig::from_limits(&ctx.core.live().tcp);
    let st = StreamState::new(cfg, conn.outbound, ctx.now_ms());
    HandleIo { ctx, conn, st }
}

/// The future of [`handle_io`]: a connection's whole reader task, two
/// pointers and the stream state (no async state machine around it).
pub struct HandleIo {
    ctx: Arc<Ctx>,
    conn: Arc<Conn<KernelIo>>,
    st: StreamState,
}

impl Future for HandleIo {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let HandleIo { ctx, conn, st } = self.get_mut();
        if conn.state() == ConnState::Released {
            // released already (a poll after completion does nothing)
            return Poll::Ready(());
        }
        let Poll::Ready(reason) = poll_io(cx, ctx, conn, st) else {
            return Poll::Pending;
        };
        if reason == ReleaseReason::Reset {
            upstream_signal(&ctx.core, conn, Signal::Reset);
        }
        if reason != ReleaseReason::Eof {
            conn.set_state(ConnState::Bad);
        } else {
            conn.set_state(ConnState::Eof);
        }
        release_conn(&ctx.conns, &ctx.metrics, conn, reason);
        fail_over(ctx, conn, reason);
        Poll::Ready(())
    }
}

/// Stateful mode: the transactions waiting on a connection we opened fail
/// over at once when it could not be opened or was reset.
fn fail_over(ctx: &Arc<Ctx>, conn: &Conn<KernelIo>, reason: ReleaseReason) {
    if ctx.core.stateful().is_none() {
        return;
    }
    with_worker(|w| {
        let mut eg = KernelEgress {
            ctx,
            own_udp: None,
            cache: &mut w.cache,
            cork: None,
        };
        txn_transport_failed(&ctx.step(), &mut eg, conn.peer, conn.outbound, reason);
    });
}

/// Rounds of work per poll before yielding to other tasks.
const PASSES: usize = 4;

/// One poll of a connection: a kill request, queued writes, reads, the
/// deadline. Ready with the release reason.
fn poll_io(
    cx: &mut Context<'_>,
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn<KernelIo>>,
    st: &mut StreamState,
) -> Poll<ReleaseReason> {
    // before the checks: a kill, a queued write or the sweeper after them wakes us
    conn.io.register(cx.waker());
    for _ in 0..PASSES {
        if let Some(reason) = conn.kill_reason() {
            return Poll::Ready(reason);
        }
        if conn.has_backlog() {
            match conn.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if conn.flush().is_err() {
                        return Poll::Ready(ReleaseReason::Reset);
                    }
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(ReleaseReason::Reset),
                Poll::Pending => {}
            }
        }
        match read_req(cx, ctx, conn, st) {
            Err(reason) => return Poll::Ready(reason),
            // drained, nothing read: the read waker is registered
            Ok(Read::Drained) => {}
            // drained after reading: what was read may have queued a write
            // or asked for a kill, so go round once more
            Ok(Read::Some) => continue,
            // more to read: let other connections have a turn
            Ok(Read::Budget) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let last_tx = conn.last_tx().saturating_mul(1000);
        if let Some(why) = st.handle_timeout(ctx.now_ms(), last_tx) {
            return Poll::Ready(why);
        }
        conn.io.set_deadline(st.poll_timeout(last_tx).0);
        return Poll::Pending;
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// How a [`read_req`] ended.
enum Read {
    /// The socket had nothing: the task's read waker is registered.
    Drained,
    /// Messages were read and the socket is drained (or its readiness not
    /// yet known again).
    Some,
    /// The read budget is used up; more may be waiting.
    Budget,
}

/// `read_req`: read what is available into the worker's buffer, frame it
/// (the stream state keeps only an incomplete message) and hand each
/// message to `receive_tcp_msg` ([`read_chunk`]); a ping is answered with
/// CRLF. Any error is returned up to `handle_io`. A read that does not fill
/// the buffer drained the socket: the next call's read costs no syscall.
fn read_req(
    cx: &mut Context<'_>,
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn<KernelIo>>,
    st: &mut StreamState,
) -> Result<Read, ReleaseReason> {
    with_worker(|w| {
        let mut got = false;
        for _ in 0..READS_PER_WAKEUP {
            let n = match conn.poll_read(cx, &mut w.buf) {
                Poll::Pending if got => return Ok(Read::Some),
                Poll::Pending => return Ok(Read::Drained),
                Poll::Ready(Ok(0)) => return Err(ReleaseReason::Eof),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(_)) => return Err(ReleaseReason::Reset),
            };
            got = true;
            let received_at = Instant::now();
            let now = ctx.now_ms_at(received_at);
            let now_s = now / 1000;
            conn.touch_rx(now_s);
            ctx.metrics.bytes_in(Transport::Tcp, n);
            let rcv = rcv_tcp(conn.peer, conn.local, conn.id, conn.outbound);
            let step = ctx.step();
            let Worker {
                buf,
                sc,
                cache,
                cork,
            } = &mut *w;
            // the connection we read from is the first candidate for replies
            if !cache.contains(conn.id) {
                cache.put(conn.clone());
            }
            // what this read's messages send leaves corked, one write per
            // connection after the last of them
            let mut eg = KernelEgress {
                ctx,
                own_udp: None,
                cache,
                cork: Some(cork),
            };
            let r = read_chunk(
                st,
                &buf[..n],
                now,
                &step,
                &mut eg,
                conn,
                &rcv,
                sc,
                received_at,
                |_| conn.send(b"\r\n", now_s).is_ok(),
            );
            cork.flush(&ctx.metrics, now_s);
            r?;
        }
        Ok(Read::Budget)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::Core;
    use crate::core::nosip::NoneHook;
    use crate::metrics::Metrics;
    use crate::transport::conn::{ConnTable, TableLimits};
    use crate::transport::egress::DnsCache;

    /// Memory per idle connection: the reader task's future stays small
    /// (no buffer, no scratch in it; the stream state and one timer).
    #[tokio::test]
    async fn idle_connection_task_future_is_small() {
        let cfg = Config::default_config();
        let metrics = Arc::new(Metrics::new());
        let core = Arc::new(Core::new(&cfg, Box::new(NoneHook), metrics.clone()));
        let ctx = Arc::new(Ctx {
            core,
            metrics,
            conns: ConnTable::new(TableLimits {
                max_connections: 4,
                max_per_ip: 4,
                write_queue_bytes: 1024,
            }),
            udp: Vec::new(),
            udp_locals: Vec::new(),
            udp_retries: Default::default(),
            epoch: Instant::now(),
            dns: DnsCache::default(),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let (conn, _) = ctx.conns.admit(peer, 0).unwrap();
        conn.attach(stream);
        let fut = handle_io(ctx.clone(), conn);
        let n = std::mem::size_of_val(&fut);
        let c = std::mem::size_of::<Conn<KernelIo>>();
        println!("handle_io future: {n} bytes; Conn<KernelIo>: {c} bytes");
        assert!(n <= 160, "handle_io future is {n} bytes");
        drop((fut, client));
    }
}
