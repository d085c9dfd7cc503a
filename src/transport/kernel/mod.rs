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
/// the kernel spreads flows over them) and large buffers.
pub fn udp_socket(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_port(true)?;
    // best effort: the kernel caps these at net.core.{r,w}mem_max
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
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
use super::egress::{Egress, SendResult, pick_addr, pick_local};
use crate::core::{Dest, DropReason, SendKind};
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

pub mod tcp;

/// Longest wait for a UDP send the socket did not take at once.
const UDP_SEND_WAIT: Duration = Duration::from_millis(500);
/// UDP sends waiting for socket room at most (beyond: not sent).
pub(crate) const UDP_RETRIES_MAX: usize = 1024;
/// Longest wait for the resolver.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct WriteState {
    stream: Option<Arc<TcpStream>>,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The reader task, woken for a kill request or queued data.
    waker: Option<Waker>,
}

/// The kernel backend's part of a connection: the reader task's waker, the
/// stream (once connected) and the bounded write queue.
#[derive(Debug)]
pub struct KernelIo {
    backlog: AtomicBool,
    write_limit: usize,
    write: Mutex<WriteState>,
}

impl ConnIo for KernelIo {
    fn new(write_limit: usize) -> Self {
        KernelIo {
            backlog: AtomicBool::new(false),
            write_limit,
            write: Mutex::new(WriteState::default()),
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.lock().waker {
            w.wake_by_ref();
        }
    }

    /// Drop the write queue and our reference to the socket.
    fn close(&self) -> usize {
        let mut w = self.lock();
        let dropped = w.queued;
        w.queue = VecDeque::new();
        w.queued = 0;
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
    /// The reader task to wake for a kill request or queued data.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.lock();
        if !w.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
            w.waker = Some(waker.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Conn<KernelIo> {
    /// Attach the socket (outbound: once connected) and push out what queued meanwhile.
    pub fn attach(&self, stream: Arc<TcpStream>) {
        let mut w = self.io.lock();
        w.stream = Some(stream);
        if !w.queue.is_empty() {
            self.io.backlog.store(true, Ordering::Release);
            drop(w);
            self.io.wake();
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
        if w.queue.is_empty()
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
        if w.queued + rest.len() > self.io.write_limit {
            drop(w);
            self.kill(ReleaseReason::WriteQueueFull);
            return Err(SendError::QueueFull);
        }
        w.queued += rest.len();
        w.queue.push_back(Bytes::copy_from_slice(rest));
        self.io.backlog.store(true, Ordering::Release);
        let wake = w.waker.clone();
        drop(w);
        if let Some(w) = wake {
            w.wake();
        }
        Ok(())
    }

    /// Write queued data until the socket would block (called by the reader
    /// task when the socket is writable).
    pub fn flush(&self) -> io::Result<()> {
        let mut guard = self.io.lock();
        let w = &mut *guard;
        let Some(s) = w.stream.clone() else {
            return Ok(());
        };
        while let Some(front) = w.queue.front_mut() {
            match s.try_write(front) {
                Ok(n) => {
                    front.advance(n);
                    w.queued -= n;
                    if front.is_empty() {
                        w.queue.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if w.queue.is_empty() {
            w.queue = VecDeque::new();
            self.io.backlog.store(false, Ordering::Release);
        }
        Ok(())
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
        match sock.try_send_to(out, dest.addr) {
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
                    let r = tokio::time::timeout(UDP_SEND_WAIT, sock.send_to(&out, to)).await;
                    ctx.udp_retries.fetch_sub(1, Ordering::AcqRel);
                    if !matches!(r, Ok(Ok(_))) {
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

    fn resolve_later(
        &mut self,
        host: &str,
        dest: Dest,
        kind: SendKind,
        out: &[u8],
        received_at: Instant,
    ) {
        tokio::spawn(resolve_and_send(
            self.ctx.clone(),
            host.to_string(),
            dest,
            kind,
            out.to_vec(),
            received_at,
        ));
    }
}

/// Resolve `host` (A/AAAA, preferring the family of the socket our Via
/// names), cache it, then send `out` there.
async fn resolve_and_send(
    ctx: Arc<Ctx>,
    host: String,
    mut dest: Dest,
    kind: SendKind,
    out: Vec<u8>,
    received_at: Instant,
) {
    let port = dest.addr.port();
    let want_v4 = dest.addr.is_ipv4();
    let found =
        match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
        {
            Ok(Ok(addrs)) => pick_addr(addrs, want_v4),
            _ => None,
        };
    let Some(addr) = found else {
        tracing::debug!(%host, "next hop does not resolve");
        ctx.metrics.dropped(DropReason::NoRoute);
        return;
    };
    ctx.dns.put(&host, addr.ip());
    dest.addr = addr;
    let mut cache = ConnCache::default();
    let mut eg = KernelEgress {
        ctx: &ctx,
        own_udp: None,
        cache: &mut cache,
    };
    ctx.step()
        .deliver(&mut eg, &dest, kind, &out, received_at, true);
}
