//! Kernel backend: sockets made with socket2, driven by tokio.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A UDP socket bound with SO_REUSEPORT (one per worker on the same address:
/// the kernel spreads flows over them) and large buffers. It is blocking,
/// with a receive timeout of [`UDP_RECV_TIMEOUT`]: its receive thread
/// ([`super::udp::udp_receive_thread`]) sleeps in `recvfrom` itself, the
/// way Kamailio's UDP workers do, with no epoll round per datagram. Every
/// send on it passes `MSG_DONTWAIT` ([`udp_try_send`]), so no send blocks.
pub fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_port(true)?;
    // best effort: the kernel caps these at net.core.{r,w}mem_max
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(UDP_RECV_TIMEOUT))?;
    Ok(s.into())
}

/// How long a UDP receive thread sleeps in `recvfrom` at most before it
/// looks at its stop flag.
pub const UDP_RECV_TIMEOUT: Duration = Duration::from_millis(200);

/// Send one datagram without waiting (`MSG_DONTWAIT`; the socket itself is
/// blocking for its receive thread).
pub fn udp_try_send(sock: &std::net::UdpSocket, out: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_to_with_flags(out, &to.into(), libc::MSG_DONTWAIT)
}

/// Retry a send the socket had no room for: a few times within
/// [`UDP_SEND_WAIT`], backing off from 1 ms (the socket is not in the
/// runtime's epoll set, so there is no writability to wait for).
async fn udp_send_later(sock: &std::net::UdpSocket, out: &[u8], to: SocketAddr) -> bool {
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        tokio::time::sleep(pause).await;
        match udp_try_send(sock, out, to) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        if start.elapsed() + pause > UDP_SEND_WAIT {
            return false;
        }
        pause = (pause * 2).min(Duration::from_millis(64));
    }
}

/// A TCP listener (SO_REUSEADDR, backlog 1024).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

// ---------------------------------------------------------------------------
// Connections and sends on tokio sockets.

use super::Ctx;
use super::conn::{Conn, ConnCache, ConnIo, ReleaseReason, SendError};
use super::egress::{Egress, Pending, SendResult, pick_addr, pick_local};
use crate::core::{Dest, DropReason};
use crate::metrics::Metrics;
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::net::UdpSocket;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

pub mod tcp;

/// Longest wait for a UDP send the socket did not take at once.
const UDP_SEND_WAIT: Duration = Duration::from_millis(500);
/// UDP sends waiting for socket room at most (beyond: not sent).
pub(crate) const UDP_RETRIES_MAX: usize = 1024;
/// Longest wait for the resolver.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct WriteState {
    /// The socket (once accepted / connected; dropped, i.e. closed, at release).
    stream: Option<TcpStream>,
    /// Data the socket did not take at once (`None` while nothing is queued).
    queue: Option<Box<WriteQueue>>,
    /// The reader task, woken for a kill request, queued data or a deadline.
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct WriteQueue {
    bufs: VecDeque<Bytes>,
    bytes: usize,
}

/// The kernel backend's part of a connection: the socket, the bounded write
/// queue, the reader task's waker and its next deadline (for the sweeper,
/// [`sweep_deadlines`]). Small: memory per idle connection.
#[derive(Debug)]
pub struct KernelIo {
    write: Mutex<WriteState>,
    /// The reader's next deadline, ms on `Ctx`'s clock.
    deadline: AtomicU64,
    write_limit: u32,
    backlog: AtomicBool,
}

impl ConnIo for KernelIo {
    fn new(write_limit: usize) -> Self {
        KernelIo {
            write: Mutex::new(WriteState::default()),
            deadline: AtomicU64::new(u64::MAX),
            write_limit: u32::try_from(write_limit).unwrap_or(u32::MAX),
            backlog: AtomicBool::new(false),
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.lock().waker {
            w.wake_by_ref();
        }
    }

    /// Drop the write queue and the socket (closing it).
    fn close(&self) -> usize {
        let mut w = self.lock();
        let dropped = w.queue.take().map_or(0, |q| q.bytes);
        w.stream = None;
        w.waker = None;
        self.backlog.store(false, Ordering::Release);
        dropped
    }

    fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }
}

impl KernelIo {
    /// The reader task to wake for a kill request, queued data or a deadline.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.lock();
        if !w.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
            w.waker = Some(waker.clone());
        }
    }

    /// The reader's next deadline (ms), for the sweeper.
    pub(crate) fn set_deadline(&self, ms: u64) {
        if self.deadline.load(Ordering::Relaxed) != ms {
            self.deadline.store(ms, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wake every connection whose deadline has passed, every [`SWEEP_TICK`]
/// ([`SWEEP_IDLE`] while there is no connection): one timer for all
/// connections instead of one per connection (memory per idle connection);
/// deadlines fire at most a tick late.
pub async fn sweep_deadlines(ctx: Arc<Ctx>) {
    loop {
        let wait = if ctx.conns.is_empty() {
            SWEEP_IDLE
        } else {
            SWEEP_TICK
        };
        tokio::time::sleep(wait).await;
        let now = ctx.now_ms();
        ctx.conns.for_each(|c| {
            if c.io.deadline.load(Ordering::Relaxed) <= now {
                c.io.wake();
            }
        });
    }
}

/// Period of the deadline sweep.
pub const SWEEP_TICK: Duration = Duration::from_millis(100);
/// Period of the sweep while no connection is open (a new one's first
/// deadline is seconds away).
pub const SWEEP_IDLE: Duration = Duration::from_secs(1);

impl Conn<KernelIo> {
    /// Attach the socket (outbound: once connected) and push out what queued meanwhile.
    pub fn attach(&self, stream: TcpStream) {
        let mut w = self.io.lock();
        w.stream = Some(stream);
        if w.queue.is_some() {
            self.io.backlog.store(true, Ordering::Release);
            if let Some(k) = &w.waker {
                k.wake_by_ref();
            }
        }
    }

    /// Send `data` (a whole message): written at once when nothing is queued,
    /// else queued (bounded by the write-queue limit: over it the connection
    /// is released with `write_queue_full`). `now_s` feeds the idle timer.
    pub fn send(&self, data: &[u8], now_s: u64) -> Result<(), SendError> {
        if !self.is_alive() {
            return Err(SendError::Closed);
        }
        let mut w = self.io.lock();
        let mut rest = data;
        if w.queue.is_none()
            && let Some(s) = &w.stream
        {
            match s.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    drop(w);
                    self.kill(ReleaseReason::Reset);
                    return Err(SendError::Io);
                }
            }
        }
        self.touch_tx(now_s);
        if rest.is_empty() {
            return Ok(());
        }
        let queued = w.queue.as_ref().map_or(0, |q| q.bytes);
        if queued + rest.len() > self.io.write_limit as usize {
            drop(w);
            self.kill(ReleaseReason::WriteQueueFull);
            return Err(SendError::QueueFull);
        }
        let q = w.queue.get_or_insert_with(Default::default);
        q.bytes += rest.len();
        q.bufs.push_back(Bytes::copy_from_slice(rest));
        self.io.backlog.store(true, Ordering::Release);
        if let Some(k) = &w.waker {
            k.wake_by_ref();
        }
        Ok(())
    }

    /// Write queued data until the socket would block (called by the reader
    /// task when the socket is writable).
    pub fn flush(&self) -> io::Result<()> {
        let mut guard = self.io.lock();
        let w = &mut *guard;
        let (Some(s), Some(q)) = (&w.stream, &mut w.queue) else {
            return Ok(());
        };
        while let Some(front) = q.bufs.front_mut() {
            match s.try_write(front) {
                Ok(n) => {
                    front.advance(n);
                    q.bytes -= n;
                    if front.is_empty() {
                        q.bufs.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if q.bufs.is_empty() {
            w.queue = None;
            self.io.backlog.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Write readiness of the socket (registers the task's waker).
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io.lock().stream {
            Some(s) => s.poll_write_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Read what the socket has into `buf`, or register the task's waker
    /// (Pending) when it has nothing. A read that fills less than `buf`
    /// drained the socket: tokio then clears the readiness itself, so the
    /// next call is Pending without a read that would only say EAGAIN (one
    /// syscall per message instead of two).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io.lock().stream {
            Some(s) => {
                let mut rb = ReadBuf::new(buf);
                Pin::new(s)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            }
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// The kernel backend's [`Egress`]: `own_udp` is the calling UDP worker's
/// socket and its listen index; `cache` the caller's connection handles;
/// `cork`, when set, collects TCP sends until the caller flushes it.
pub struct KernelEgress<'a> {
    pub ctx: &'a Arc<Ctx>,
    pub own_udp: Option<(&'a Arc<UdpSocket>, usize)>,
    pub cache: &'a mut ConnCache<KernelIo>,
    pub cork: Option<&'a mut Cork>,
}

/// Bytes a corked connection collects before they are written anyway.
const CORK_MAX: usize = 32 * 1024;
/// Emptied cork buffers kept for reuse (the rest are freed: a read whose
/// messages went to many connections does not pin a buffer for each).
const CORK_SPARE: usize = 8;

/// TCP output corked while a reader handles what one read returned: every
/// message for the same connection is written with one `write` when the
/// read's messages are done ([`Cork::flush`]), instead of one `write` (one
/// segment, one wake-up of the peer) per message. Nothing waits: the flush
/// follows the read's processing at once. Messages keep their order per
/// connection. A connection found closed at the flush drops its messages,
/// each counted as `send_failed` (a write error or a full queue there
/// releases the connection, as a direct send does).
#[derive(Default)]
pub struct Cork {
    /// Connections written to since the last flush, with their bytes and
    /// message count (a handful at most: a linear search).
    held: Vec<(Arc<Conn<KernelIo>>, Vec<u8>, u32)>,
    /// Emptied buffers, kept for the next round (no allocation per round).
    spare: Vec<Vec<u8>>,
}

impl Cork {
    /// Hold `out` for `c` (flushing that connection first when it holds
    /// [`CORK_MAX`] already).
    fn hold(&mut self, c: &Arc<Conn<KernelIo>>, out: &[u8], metrics: &Metrics, now_s: u64) {
        let i = match self.held.iter().position(|(h, _, _)| h.id == c.id) {
            Some(i) => i,
            None => {
                let buf = self.spare.pop().unwrap_or_default();
                self.held.push((c.clone(), buf, 0));
                self.held.len() - 1
            }
        };
        let (_, buf, n) = &mut self.held[i];
        if !buf.is_empty() && buf.len() + out.len() > CORK_MAX {
            write_held(c, buf, n, metrics, now_s);
        }
        buf.extend_from_slice(out);
        *n += 1;
    }

    /// Write what each connection holds (one `write` each).
    pub fn flush(&mut self, metrics: &Metrics, now_s: u64) {
        for (c, mut buf, mut n) in self.held.drain(..) {
            write_held(&c, &mut buf, &mut n, metrics, now_s);
            if self.spare.len() < CORK_SPARE {
                self.spare.push(buf);
            }
        }
    }
}

fn write_held(c: &Conn<KernelIo>, buf: &mut Vec<u8>, n: &mut u32, metrics: &Metrics, now_s: u64) {
    if !buf.is_empty() && c.send(buf, now_s).is_err() {
        for _ in 0..*n {
            metrics.dropped(DropReason::SendFailed);
        }
        tracing::debug!(peer = %c.peer, messages = *n, "corked send failed");
    }
    buf.clear();
    *n = 0;
}

impl Egress for KernelEgress<'_> {
    fn send_udp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
        let ctx = self.ctx;
        let Some(i) = pick_local(&ctx.udp_locals, dest) else {
            return SendResult::Failed;
        };
        let sock = match self.own_udp {
            Some((s, own)) if own == i => s,
            _ => match ctx.udp.get(i).and_then(|s| s.as_ref()) {
                Some(s) => s,
                None => return SendResult::Failed,
            },
        };
        match udp_try_send(sock, out, dest.addr) {
            Ok(_) => SendResult::Sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // socket buffer full: a bounded task waits for room (never
                // this reader); counted sent now, a drop if it fails later
                if ctx.udp_retries.fetch_add(1, Ordering::AcqRel) >= UDP_RETRIES_MAX {
                    ctx.udp_retries.fetch_sub(1, Ordering::AcqRel);
                    return SendResult::WouldBlock;
                }
                let (ctx, sock, out, to) = (ctx.clone(), sock.clone(), out.to_vec(), dest.addr);
                tokio::spawn(async move {
                    let sent = udp_send_later(&sock, &out, to).await;
                    ctx.udp_retries.fetch_sub(1, Ordering::AcqRel);
                    if !sent {
                        ctx.metrics.dropped(DropReason::SendFailed);
                        tracing::debug!(dest = %to, "udp send failed after waiting");
                    }
                });
                SendResult::Sent
            }
            Err(_) => SendResult::Failed,
        }
    }

    fn send_tcp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
        let ctx = self.ctx;
        let now = ctx.now_s();
        let cork = &mut self.cork;
        let mut sent = |c: &Arc<Conn<KernelIo>>| match cork {
            Some(_) if !c.is_alive() => SendResult::Failed,
            Some(k) => {
                k.hold(c, out, &ctx.metrics, now);
                SendResult::Sent
            }
            None => match c.send(out, now) {
                Ok(()) => SendResult::Sent,
                Err(_) => SendResult::Failed,
            },
        };
        // RFC 3261 §18.2.2: the connection the request came on, if still open
        if let Some(id) = dest.conn
            && let Some(c) = self.cache.by_id(&ctx.conns, id)
        {
            return sent(&c);
        }
        if let Some(c) = self.cache.by_addr(&ctx.conns, dest.addr) {
            return sent(&c);
        }
        let Some((c, is_new)) = ctx.conns.get_or_create_outbound(dest.addr, dest.local) else {
            tracing::debug!(dest = %dest.addr, "connection table full: not opening an outbound connection");
            return SendResult::Failed;
        };
        if is_new {
            ctx.metrics.tcp_opened(true);
            tokio::spawn(tcp::connect_and_run(ctx.clone(), c.clone()));
        }
        self.cache.put(c.clone());
        sent(&c)
    }

    fn resolve_later(&mut self, p: Pending) {
        tokio::spawn(resolve_and_send(self.ctx.clone(), p));
    }
}

/// Stateful mode: run one transaction timer round (every shard's timers)
/// and send what it produces through `eg`; the caller claimed the round
/// ([`crate::core::Core::claim_transaction_round`]). Returns when the next
/// round is due (ms on the core's clock).
pub(crate) fn transaction_round(
    ctx: &Ctx,
    eg: &mut KernelEgress<'_>,
    out: &mut crate::core::transaction::Out,
) -> u64 {
    let shards = ctx.core.stateful().map_or(0, |st| st.shard_count());
    for s in 0..shards {
        out.clear();
        ctx.core.poll_transactions(s, out);
        if !out.sends.is_empty() {
            ctx.step().deliver_txn(eg, out, std::time::Instant::now());
        }
    }
    let now = ctx.core.now_ms();
    ctx.core.plan_transaction_round(now).unwrap_or(u64::MAX)
}

/// Resolve `host` (A/AAAA, preferring the family of the socket our Via
/// names), cache it, then send `out` there.
async fn resolve_and_send(ctx: Arc<Ctx>, p: Pending) {
    let (port, want_v4) = (p.dest.addr.port(), p.dest.addr.is_ipv4());
    let found = match tokio::time::timeout(
        DNS_TIMEOUT,
        tokio::net::lookup_host((p.host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => pick_addr(addrs, want_v4),
        _ => None,
    };
    let mut cache = ConnCache::default();
    let mut eg = KernelEgress {
        ctx: &ctx,
        own_udp: None,
        cache: &mut cache,
        cork: None,
    };
    ctx.step()
        .deliver_resolved(&mut eg, &p, found.map(|a| a.ip()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::conn::{ConnTable, TableLimits};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn table() -> ConnTable<KernelIo> {
        ConnTable::new(TableLimits {
            max_connections: 8,
            max_per_ip: 8,
            write_queue_bytes: 64 * 1024,
        })
    }

    fn drops(m: &Metrics) -> f64 {
        m.encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix("sipedge_dropped_total{reason=\"send_failed\"} ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Two messages corked for one connection leave in one write, in order,
    /// and only at the flush.
    #[tokio::test]
    async fn corked_messages_to_one_connection_are_one_write_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = table();
        let (c, _) = t.get_or_create_outbound(addr, 0).unwrap();
        c.attach(TcpStream::connect(addr).await.unwrap());
        let (mut peer, _) = l.accept().await.unwrap();
        let m = Metrics::new();
        let mut cork = Cork::default();
        cork.hold(&c, b"first\r\n", &m, 0);
        cork.hold(&c, b"second\r\n", &m, 0);
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is written before the flush");
        cork.flush(&m, 0);
        let mut got = Vec::new();
        while got.len() < 15 {
            let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"first\r\nsecond\r\n");
        assert!(cork.held.is_empty());
        assert_eq!(cork.spare.len(), 1, "the buffer is kept for the next round");
        assert_eq!(drops(&m), 0.0);
    }

    /// A connection released before the flush drops its held messages, each
    /// counted as send_failed.
    #[tokio::test]
    async fn corked_messages_for_a_released_connection_are_counted_drops() {
        let t = table();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (c, _) = t.get_or_create_outbound(addr, 0).unwrap();
        let m = Metrics::new();
        let mut cork = Cork::default();
        cork.hold(&c, b"a\r\n", &m, 0);
        cork.hold(&c, b"b\r\n", &m, 0);
        t.release(&c);
        cork.flush(&m, 0);
        assert_eq!(drops(&m), 2.0);
    }
}
