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
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::task::{Context, Poll};
use std::time::Duration;
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

    /// Read readiness of the socket (registers the task's waker).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io.lock().stream {
            Some(s) => s.poll_read_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Write readiness of the socket (registers the task's waker).
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io.lock().stream {
            Some(s) => s.poll_write_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Read what the socket has into `buf` (never waits).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.io.lock().stream {
            Some(s) => s.try_read(buf),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The kernel backend's [`Egress`]: `own_udp` is the calling UDP worker's
/// socket and its listen index; `cache` the caller's connection handles.
pub struct KernelEgress<'a> {
    pub ctx: &'a Arc<Ctx>,
    pub own_udp: Option<(&'a Arc<UdpSocket>, usize)>,
    pub cache: &'a mut ConnCache<KernelIo>,
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
        let sent = |c: &Conn<KernelIo>| match c.send(out, now) {
            Ok(()) => SendResult::Sent,
            Err(_) => SendResult::Failed,
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
    };
    ctx.step()
        .deliver_resolved(&mut eg, &p, found.map(|a| a.ip()));
}
