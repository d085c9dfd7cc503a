//! SIP over the userspace TCP: the stack-thread driver of the shared TCP
//! reader loop (DESIGN.md "The transport seam").
//!
//! ```text
//! SocketEvent::TcpReadable(h) → handle_io → read_req: recv into the thread's
//!   one read buffer → StreamState::on_bytes → receive_tcp_msg (shared) per message
//! SocketEvent::TcpAcceptable(l) → accept: ConnTable::admit (limits, eviction)
//! SocketEvent::TcpConnected / TcpWritable → flush the connection's queue
//! SocketEvent::TcpClosed(h, err) → release_conn (Eof / Reset / ConnectFailed)
//! ```
//!
//! Everything runs to completion on the stack thread: no channel hop, no
//! lock that can wait (the table's and [`StackIo`]'s locks are only ever
//! taken by this thread, except the drain's scan on the main thread).
//!
//! Per-connection deadlines (idle, message, first message, connect) live
//! in one [`Deadlines`] heap; a round touches only the entries that are
//! due. `release_conn` maps the release reason onto the stack's close:
//! bad input (parse / framing errors, oversize, no Content-Length, the
//! message and first-message deadlines) → abort with RST, or FIN with
//! `stack.tcp_release = "fin"`; idle, evicted, EOF, shutdown → FIN; a
//! reset, a failed connect, a full write queue → abort.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Instant as StdInstant;

use super::App;
use super::egress::StepParts;
use super::timers::Deadlines;
use crate::config::{TcpRelease, Transport};
use crate::core::upstream::Signal;
use crate::core::{Core, Dest};
use crate::metrics::Metrics;
use crate::netstack::{Instant, SocketEvent, Stack, TcpError, TcpHandle};
use crate::transport::conn::{Conn, ConnCache, ConnIo, ConnState, ConnTable, ReleaseReason};
use crate::transport::egress::{SendResult, rcv_tcp};
use crate::transport::stream::{Millis, StreamConfig, StreamState};
use crate::transport::tcp;

/// Size of the stack thread's one read buffer.
pub(super) const READ_BUF: usize = 64 * 1024;
/// Accept backlog of a listener (capped by `stack.limits.tcp_syn_backlog_max`).
const LISTEN_BACKLOG: usize = 4096;

/// A connection killed from outside its stack thread (the drain) or by a
/// send: bumped on every kill; each shard looks at its table's kill
/// reasons when the count moved since it last looked (once per kill
/// burst, not per round; a kill in another shard's table costs a scan).
static KILL_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Milliseconds of the stack clock.
pub(super) fn ms(now: Instant) -> Millis {
    u64::try_from(now.total_millis()).unwrap_or(0)
}

/// The stack clock in whole seconds (the connection table's coarse clock,
/// also what the drain compares `last_active` with).
pub(super) fn secs(now: Instant) -> u64 {
    ms(now) / 1000
}

/// The backend part of a connection on the stack: the netstack handle and
/// the bytes the stack's send buffer did not take yet (bounded by
/// `[tcp] write_queue_bytes`; no allocation while nothing is queued).
/// Only the stack thread takes the lock (so it never waits); the drain on
/// the main thread reads `backlog` only.
#[derive(Debug)]
pub struct StackIo {
    st: Mutex<IoState>,
    /// Data is queued (`IoState::queued > 0`), readable without the lock.
    backlog: AtomicBool,
    /// `[tcp] write_queue_bytes` (capped at 4 GiB: 32 bits keep the
    /// connection record small).
    write_limit: u32,
}

#[derive(Debug, Default)]
struct IoState {
    handle: Option<TcpHandle>,
    /// Established (outbound: after TcpConnected).
    connected: bool,
    /// Bytes not taken by the stack yet; boxed and `None` while nothing is
    /// queued (8 bytes in an idle connection, not 40).
    queue: Option<Box<Queue>>,
    queued: usize,
    /// Last send (idle deadline), stack milliseconds.
    last_tx: Millis,
}

#[derive(Debug, Default)]
struct Queue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of `bufs.front()` already handed to the stack.
    head_sent: usize,
}

impl ConnIo for StackIo {
    fn new(write_limit: usize) -> Self {
        StackIo {
            st: Mutex::new(IoState::default()),
            backlog: AtomicBool::new(false),
            write_limit: u32::try_from(write_limit).unwrap_or(u32::MAX),
        }
    }

    fn wake(&self) {
        KILL_EPOCH.fetch_add(1, Ordering::AcqRel);
    }

    fn close(&self) -> usize {
        let mut st = self.lock();
        let dropped = st.queued;
        st.queue = None;
        st.queued = 0;
        st.handle = None;
        self.backlog.store(false, Ordering::Release);
        dropped
    }

    fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }
}

/// Write as much of `data` as the socket's send buffer takes; stops at
/// WouldBlock (which also asks the stack for a TcpWritable event).
fn write_some(s: &mut Stack, h: TcpHandle, data: &[u8]) -> Result<usize, TcpError> {
    let mut sock = s.tcp(h).ok_or(TcpError::InvalidHandle)?;
    let mut off = 0;
    while off < data.len() {
        match sock.send(&data[off..]) {
            Ok(n) => off += n,
            Err(TcpError::WouldBlock) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

impl StackIo {
    fn lock(&self) -> std::sync::MutexGuard<'_, IoState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attach(&self, h: TcpHandle, connected: bool, now: Millis) {
        let mut st = self.lock();
        st.handle = Some(h);
        st.connected = connected;
        st.last_tx = now;
    }

    fn take_handle(&self) -> Option<TcpHandle> {
        self.lock().handle.take()
    }

    fn last_tx(&self) -> Millis {
        self.lock().last_tx
    }

    fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Send a whole message: written at once when nothing is queued and
    /// the connection is established, the rest queued (over the limit:
    /// `WriteQueueFull`). An error of the socket: `Reset`.
    fn send(&self, s: &mut Stack, data: &[u8], now: Millis) -> Result<(), ReleaseReason> {
        let mut st = self.lock();
        let Some(h) = st.handle else {
            return Err(ReleaseReason::Reset);
        };
        let mut rest = data;
        if st.connected && st.queue.is_none() {
            let n = write_some(s, h, rest).map_err(|_| ReleaseReason::Reset)?;
            rest = &rest[n..];
        }
        st.last_tx = now;
        if rest.is_empty() {
            return Ok(());
        }
        if st.queued + rest.len() > self.write_limit as usize {
            return Err(ReleaseReason::WriteQueueFull);
        }
        st.queued += rest.len();
        st.queue
            .get_or_insert_with(Box::default)
            .bufs
            .push_back(rest.to_vec());
        self.backlog.store(true, Ordering::Release);
        Ok(())
    }

    /// Established / writable: push the queue out until the send buffer is full.
    fn flush(&self, s: &mut Stack, connected: bool) -> Result<(), TcpError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if connected {
            st.connected = true;
        }
        let Some(h) = st.handle else {
            return Ok(());
        };
        if !st.connected {
            return Ok(());
        }
        if let Some(q) = st.queue.as_deref_mut() {
            while let Some(front) = q.bufs.front() {
                let n = write_some(s, h, &front[q.head_sent..])?;
                q.head_sent += n;
                st.queued -= n;
                if q.head_sent < front.len() {
                    break;
                }
                q.bufs.pop_front();
                q.head_sent = 0;
            }
        }
        if st.queue.as_ref().is_none_or(|q| q.bufs.is_empty()) {
            self.backlog.store(false, Ordering::Release);
            st.queue = None;
        }
        Ok(())
    }
}

/// What the stack thread keeps per connection (the table's [`Conn`] is
/// shared; this is not).
struct Entry {
    h: TcpHandle,
    conn: Arc<Conn<StackIo>>,
    /// `None` only while `read_req` runs on it.
    stream: Option<StreamState>,
    /// Outbound, not yet established: fails with `connect_failed` then
    /// (`u64::MAX`: established; 8 bytes, not an `Option`'s 16).
    connect_by: Millis,
    /// Scheduling generation (stale heap entries carry an older one).
    generation: u32,
    /// The deadline in the heap under `generation` (`u64::MAX`: none).
    scheduled: Millis,
}

/// The TCP side of the stack thread.
pub(super) struct TcpSide {
    pub(super) conns: Arc<ConnTable<StackIo>>,
    /// TCP listeners: handle and listen index.
    listeners: Vec<(TcpHandle, usize)>,
    /// Per netstack slot (`TcpHandle::slot`).
    entries: Vec<Option<Entry>>,
    deadlines: Deadlines,
    cache: ConnCache<StackIo>,
    /// The one read buffer of the thread.
    rbuf: Vec<u8>,
    release: TcpRelease,
    listeners_closed: bool,
    /// Scheduling generations come from one counter, so a heap entry of a
    /// released connection never matches the next occupant of its slot.
    next_generation: u32,
    /// Peers of outbound connections that failed (refused / timed-out
    /// connect, reset) since the last round: their transactions fail over
    /// (stateful mode, [`crate::transport::tcp::txn_transport_failed`]).
    failed_outbound: Vec<(SocketAddr, ReleaseReason)>,
    /// [`KILL_EPOCH`] when this shard last scanned its table's kills.
    kill_seen: u64,
    /// This shard and the others: a send on a connection another shard
    /// owns goes to that shard's mailbox.
    handoff: super::shard::Handoff,
}

/// Failed outbound connections remembered per round (more are rare: each
/// one is a connect to a distinct peer that failed within one round).
const MAX_FAILED_OUTBOUND: usize = 1024;

/// How `release_conn` ends the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseHow {
    Fin,
    Rst,
}

/// The stack's close for a release reason (see the module doc).
fn close_how(reason: ReleaseReason, bad_input: TcpRelease) -> CloseHow {
    use ReleaseReason as R;
    match reason {
        R::ParseError
        | R::FramingError
        | R::Oversize
        | R::NoContentLength
        | R::MessageTimeout
        | R::FirstMessageTimeout => match bad_input {
            TcpRelease::Rst => CloseHow::Rst,
            TcpRelease::Fin => CloseHow::Fin,
        },
        R::Eof | R::IdleTimeout | R::Evicted | R::Shutdown => CloseHow::Fin,
        R::Reset | R::WriteQueueFull | R::Limit | R::ConnectFailed => CloseHow::Rst,
    }
}

/// The release reason (and upstream signal) of a connection the stack
/// closed: `err` from `TcpClosed`, `connected` whether it was established.
fn closed_reason(err: Option<TcpError>, connected: bool) -> (ReleaseReason, Option<Signal>) {
    match err {
        None => (ReleaseReason::Eof, None),
        Some(TcpError::HostUnreachable) if !connected => {
            (ReleaseReason::ConnectFailed, Some(Signal::Unreachable))
        }
        Some(_) if !connected => (ReleaseReason::ConnectFailed, Some(Signal::ConnectFailed)),
        Some(TcpError::HostUnreachable) => (ReleaseReason::Reset, Some(Signal::Unreachable)),
        Some(_) => (ReleaseReason::Reset, Some(Signal::Reset)),
    }
}

/// What the TCP code needs from the rest of the stack thread for a step.
pub(super) struct Ctx<'a> {
    pub core: &'a Core,
    pub metrics: &'a Metrics,
}

impl TcpSide {
    pub(super) fn new(conns: Arc<ConnTable<StackIo>>, release: TcpRelease) -> TcpSide {
        TcpSide {
            conns,
            listeners: Vec::new(),
            entries: Vec::new(),
            deadlines: Deadlines::default(),
            cache: ConnCache::default(),
            rbuf: vec![0; READ_BUF],
            release,
            listeners_closed: false,
            next_generation: 0,
            failed_outbound: Vec::new(),
            kill_seen: 0,
            handoff: super::shard::Handoff::single(),
        }
    }

    /// This side's shard and the way to the others.
    pub(super) fn set_shard(&mut self, h: super::shard::Handoff) {
        self.handoff = h;
    }

    /// `listen(2)` on a `tcp:` listen address of index `local`.
    pub(super) fn listen(
        &mut self,
        s: &mut Stack,
        addr: SocketAddr,
        local: usize,
    ) -> Result<(), TcpError> {
        let h = s.tcp_listen(addr, LISTEN_BACKLOG)?;
        self.listeners.push((h, local));
        Ok(())
    }

    /// Draining: close the listeners (new connections get RST from the
    /// stack, as from a closed kernel socket). Once.
    pub(super) fn close_listeners(&mut self, s: &mut Stack) {
        if self.listeners_closed {
            return;
        }
        self.listeners_closed = true;
        for (h, _) in self.listeners.drain(..) {
            if let Some(mut l) = s.tcp(h) {
                l.close();
            }
        }
    }

    fn entry(&mut self, h: TcpHandle) -> Option<&mut Entry> {
        self.entries
            .get_mut(h.slot as usize)
            .and_then(|e| e.as_mut())
            .filter(|e| e.h == h)
    }

    fn insert(
        &mut self,
        h: TcpHandle,
        conn: Arc<Conn<StackIo>>,
        st: StreamState,
        connect_by: Option<Millis>,
    ) {
        let i = h.slot as usize;
        if self.entries.len() <= i {
            self.entries.resize_with(i + 1, || None);
        }
        self.entries[i] = Some(Entry {
            h,
            conn,
            stream: Some(st),
            connect_by: connect_by.unwrap_or(u64::MAX),
            generation: 0,
            scheduled: u64::MAX,
        });
        self.schedule(h);
    }

    /// Put the connection's earliest deadline in the heap when it is
    /// earlier than the one there (a later one is found when the earlier
    /// entry fires).
    fn schedule(&mut self, h: TcpHandle) {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let Some(e) = self.entry(h) else {
            return;
        };
        let Some(st) = &e.stream else {
            return;
        };
        let (at, _) = st.poll_timeout(e.conn.io.last_tx());
        let at = at.min(e.connect_by);
        if at < e.scheduled {
            e.generation = generation;
            e.scheduled = at;
            self.deadlines.push(at, h.slot, generation);
        }
    }

    /// `TcpAcceptable`: accept every queued connection; admission by the
    /// table (limits, eviction of the oldest connection still in Init); a
    /// refused one is aborted and counted.
    pub(super) fn accept(&mut self, s: &mut Stack, cx: &Ctx<'_>, now: Instant, l: TcpHandle) {
        let Some(&(_, local)) = self.listeners.iter().find(|(x, _)| *x == l) else {
            return;
        };
        let now_ms = ms(now);
        let cfg = StreamConfig::from_limits(&cx.core.live().tcp);
        while let Some((h, peer)) = s.tcp(l).and_then(|mut x| x.accept()) {
            cx.metrics.tcp_opened(false);
            match self.conns.admit(peer, local) {
                Ok((conn, evicted)) => {
                    if let Some(v) = evicted {
                        tracing::debug!(peer = %v.peer, "evicting idle connection for {peer}");
                        self.release_conn(s, cx, &v, ReleaseReason::Evicted);
                    }
                    conn.io.attach(h, true, now_ms);
                    conn.touch_rx(secs(now));
                    self.insert(h, conn, StreamState::new(cfg, false, now_ms), None);
                }
                Err(why) => {
                    tracing::debug!(%peer, ?why, "connection refused by limits");
                    cx.metrics.tcp_refused();
                    cx.metrics.tcp_released(ReleaseReason::Limit);
                    if let Some(mut x) = s.tcp(h) {
                        x.abort();
                    }
                }
            }
        }
    }

    /// `TcpConnected` / `TcpWritable`: push the queue out.
    pub(super) fn writable(&mut self, s: &mut Stack, cx: &Ctx<'_>, h: TcpHandle, connected: bool) {
        let Some(conn) = self.entry(h).map(|e| e.conn.clone()) else {
            return;
        };
        if connected && let Some(e) = self.entry(h) {
            e.connect_by = u64::MAX;
        }
        if conn.io.flush(s, connected).is_err() {
            self.release_conn(s, cx, &conn, ReleaseReason::Reset);
        }
    }

    /// `TcpClosed`: the stack closed the connection (peer RST, refused or
    /// timed-out connect, unreachable, or an orderly close both ways).
    pub(super) fn closed(
        &mut self,
        s: &mut Stack,
        cx: &Ctx<'_>,
        h: TcpHandle,
        err: Option<TcpError>,
    ) {
        let Some(conn) = self.entry(h).map(|e| e.conn.clone()) else {
            // released already (our close / abort frees it)
            return;
        };
        let (reason, signal) = closed_reason(err, conn.io.is_connected());
        if let Some(sig) = signal {
            self.upstream_signal(cx, &conn, sig);
        }
        self.release_conn(s, cx, &conn, reason);
    }

    /// Passive upstream health: a connection we opened to an upstream
    /// target failed (refused / unreachable / timed-out connect, reset).
    fn upstream_signal(&self, cx: &Ctx<'_>, conn: &Conn<StackIo>, signal: Signal) {
        if conn.outbound {
            tracing::debug!(peer = %conn.peer, signal = signal.as_str(), "upstream TCP failure");
        }
        tcp::upstream_signal(cx.core, conn, signal);
    }

    /// `Egress::send_tcp` on the stack: the connection `dest.conn` if
    /// still open (RFC 3261 §18.2.2), else an open one to `dest.addr`, else
    /// a new outbound connection (data queued until it is established).
    /// `locals`: the listen addresses (an outbound connection leaves from
    /// the IP of `dest.local` when it is a specific one of dest's family).
    pub(super) fn send_tcp(
        &mut self,
        s: &mut Stack,
        cx: &Ctx<'_>,
        now: Instant,
        locals: &[SocketAddr],
        dest: &Dest,
        out: &[u8],
    ) -> SendResult {
        // a connection of another shard: its owner sends it (next round)
        if let Some(id) = dest.conn
            && let Some(r) = self.handoff.forward(id, dest, out)
        {
            return r;
        }
        let found = match dest.conn {
            Some(id) => self.cache.by_id(&self.conns, id),
            None => None,
        };
        let conn = match found.or_else(|| self.cache.by_addr(&self.conns, dest.addr)) {
            Some(c) => c,
            // another shard holds a connection to the address: it sends
            None if let Some(r) = self.handoff.forward_by_addr(dest, out) => return r,
            None => match self.conns.get_or_create_outbound(dest.addr, dest.local) {
                None => {
                    tracing::debug!(dest = %dest.addr, "connection table full: not opening an outbound connection");
                    return SendResult::Failed;
                }
                Some((c, false)) => c,
                Some((c, true)) => {
                    if !self.connect(s, cx, now, locals, dest, &c) {
                        return SendResult::Failed;
                    }
                    self.cache.put(c.clone());
                    c
                }
            },
        };
        self.send_on(s, now, &conn, out)
    }

    /// Open the outbound connection `c` (table entry made by the caller).
    fn connect(
        &mut self,
        s: &mut Stack,
        cx: &Ctx<'_>,
        now: Instant,
        locals: &[SocketAddr],
        dest: &Dest,
        c: &Arc<Conn<StackIo>>,
    ) -> bool {
        cx.metrics.tcp_opened(true);
        let from = locals
            .get(dest.local)
            .filter(|a| a.is_ipv4() == dest.addr.is_ipv4() && !a.ip().is_unspecified())
            .map(|a| SocketAddr::new(a.ip(), 0));
        match s.tcp_connect(now, from, dest.addr) {
            Ok(h) => {
                let now_ms = ms(now);
                c.io.attach(h, false, now_ms);
                let live = cx.core.live();
                let cfg = StreamConfig::from_limits(&live.tcp);
                let connect_ms = live.tcp.connect_timeout_secs.max(1).saturating_mul(1000);
                let st = StreamState::new(cfg, true, now_ms);
                self.insert(h, c.clone(), st, Some(now_ms.saturating_add(connect_ms)));
                true
            }
            Err(e) => {
                tracing::warn!(peer = %dest.addr, "connect failed: {e}");
                let sig = if e == TcpError::HostUnreachable {
                    Signal::Unreachable
                } else {
                    Signal::ConnectFailed
                };
                self.upstream_signal(cx, c, sig);
                self.release_conn(s, cx, c, ReleaseReason::ConnectFailed);
                false
            }
        }
    }

    /// Send on one connection; a failure kills it (released by the next
    /// [`Self::poll`], or by its own reader right after the message).
    pub(super) fn send_on(
        &mut self,
        s: &mut Stack,
        now: Instant,
        conn: &Conn<StackIo>,
        out: &[u8],
    ) -> SendResult {
        if !conn.is_alive() {
            return SendResult::Failed;
        }
        match conn.io.send(s, out, ms(now)) {
            Ok(()) => {
                conn.touch_tx(secs(now));
                SendResult::Sent
            }
            Err(r) => {
                conn.kill(r);
                SendResult::Failed
            }
        }
    }

    /// `read_req` starts on `h`: its connection and stream state (taken
    /// out of the entry until [`Self::end_read`]).
    pub(super) fn begin_read(&mut self, h: TcpHandle) -> Option<(Arc<Conn<StackIo>>, StreamState)> {
        let e = self.entry(h)?;
        let st = e.stream.take()?;
        Some((e.conn.clone(), st))
    }

    /// `read_req` ended: put the state back and reschedule, or release.
    pub(super) fn end_read(
        &mut self,
        s: &mut Stack,
        cx: &Ctx<'_>,
        h: TcpHandle,
        conn: &Conn<StackIo>,
        st: StreamState,
        result: Result<(), ReleaseReason>,
    ) {
        match result {
            Ok(()) => {
                if let Some(e) = self.entry(h) {
                    e.stream = Some(st);
                    self.schedule(h);
                }
            }
            Err(reason) => {
                if reason == ReleaseReason::Reset {
                    self.upstream_signal(cx, conn, Signal::Reset);
                }
                self.release_conn(s, cx, conn, reason);
            }
        }
    }

    /// Take the thread's read buffer (given back with [`Self::put_rbuf`]).
    pub(super) fn take_rbuf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rbuf)
    }

    pub(super) fn put_rbuf(&mut self, b: Vec<u8>) {
        self.rbuf = b;
    }

    /// `release_conn`: close or abort the socket (see [`close_how`]),
    /// forget the connection, count the reason.
    pub(super) fn release_conn(
        &mut self,
        s: &mut Stack,
        cx: &Ctx<'_>,
        conn: &Conn<StackIo>,
        reason: ReleaseReason,
    ) {
        if conn.state() == ConnState::Released {
            return;
        }
        conn.set_state(if reason == ReleaseReason::Eof {
            ConnState::Eof
        } else {
            ConnState::Bad
        });
        let how = close_how(reason, self.release);
        if let Some(h) = conn.io.take_handle() {
            if let Some(slot) = self.entries.get_mut(h.slot as usize)
                && slot.as_ref().is_some_and(|e| e.h == h)
            {
                *slot = None;
            }
            if let Some(mut x) = s.tcp(h) {
                match how {
                    CloseHow::Rst => x.abort(),
                    CloseHow::Fin => x.close(),
                }
            }
        }
        tcp::release_conn(&self.conns, cx.metrics, conn, reason);
        if conn.outbound
            && matches!(reason, ReleaseReason::ConnectFailed | ReleaseReason::Reset)
            && self.failed_outbound.len() < MAX_FAILED_OUTBOUND
        {
            self.failed_outbound.push((conn.peer, reason));
        }
    }

    /// The outbound connections that failed since the last call.
    pub(super) fn take_failed_outbound(&mut self) -> Vec<(SocketAddr, ReleaseReason)> {
        std::mem::take(&mut self.failed_outbound)
    }

    /// Deadlines due at `now`, and kill requests (drain, write-queue
    /// overflow).
    pub(super) fn poll(&mut self, s: &mut Stack, cx: &Ctx<'_>, now: Instant) {
        let epoch = KILL_EPOCH.load(Ordering::Acquire);
        if epoch != self.kill_seen {
            self.kill_seen = epoch;
            for c in self.conns.all() {
                if let Some(r) = c.kill_reason() {
                    self.release_conn(s, cx, &c, r);
                }
            }
        }
        let now_ms = ms(now);
        while let Some((slot, generation)) = self.deadlines.pop_due(now_ms) {
            let Some(e) = self.entries.get_mut(slot as usize).and_then(|e| e.as_mut()) else {
                continue;
            };
            if e.generation != generation {
                continue;
            }
            e.scheduled = u64::MAX;
            let h = e.h;
            let conn = e.conn.clone();
            let last_tx = conn.io.last_tx();
            let why = if e.connect_by != u64::MAX && now_ms >= e.connect_by {
                Some(ReleaseReason::ConnectFailed)
            } else {
                e.stream
                    .as_mut()
                    .and_then(|st| st.handle_timeout(now_ms, last_tx))
            };
            match why {
                Some(ReleaseReason::ConnectFailed) => {
                    tracing::warn!(peer = %conn.peer, "connect timed out");
                    self.upstream_signal(cx, &conn, Signal::ConnectFailed);
                    self.release_conn(s, cx, &conn, ReleaseReason::ConnectFailed);
                }
                Some(r) => self.release_conn(s, cx, &conn, r),
                None => self.schedule(h),
            }
        }
        let entries = &self.entries;
        self.deadlines
            .compact_if_large(self.conns.len(), |slot, g| {
                entries
                    .get(slot as usize)
                    .and_then(|e| e.as_ref())
                    .is_some_and(|e| e.generation == g)
            });
    }

    /// Stop: every connection released (FIN), reason `shutdown`.
    pub(super) fn shutdown(&mut self, s: &mut Stack, cx: &Ctx<'_>) {
        self.close_listeners(s);
        for c in self.conns.all() {
            self.release_conn(s, cx, &c, ReleaseReason::Shutdown);
        }
    }
}

impl App {
    /// `handle_io` on the stack thread: one TCP socket event.
    pub(super) fn handle_io(&mut self, s: &mut Stack, now: Instant, ev: SocketEvent) {
        let cx = Ctx {
            core: &self.core,
            metrics: &self.metrics,
        };
        let tcp = &mut self.net.tcp;
        match ev {
            SocketEvent::TcpAcceptable(l) => tcp.accept(s, &cx, now, l),
            SocketEvent::TcpConnected(h) => tcp.writable(s, &cx, h, true),
            SocketEvent::TcpWritable(h) => tcp.writable(s, &cx, h, false),
            SocketEvent::TcpClosed(h, err) => tcp.closed(s, &cx, h, err),
            SocketEvent::TcpReadable(h) => self.read_req(s, now, h),
            _ => {}
        }
    }

    /// `read_req`: everything readable on `h` into the thread's one buffer
    /// → [`StreamState::on_bytes`] → [`tcp::read_chunk`] per message (a
    /// CRLFCRLF ping answered with CRLF); an error releases the connection.
    fn read_req(&mut self, s: &mut Stack, now: Instant, h: TcpHandle) {
        let Some((conn, mut st)) = self.net.tcp.begin_read(h) else {
            return;
        };
        let mut buf = self.net.tcp.take_rbuf();
        let now_ms = ms(now);
        let rcv = rcv_tcp(conn.peer, conn.local, conn.id, conn.outbound);
        let result = loop {
            let n = match s.tcp(h).map(|mut x| x.recv(&mut buf)) {
                None => break Err(ReleaseReason::Reset),
                Some(Ok(0)) => break Err(ReleaseReason::Eof),
                Some(Ok(n)) => n,
                Some(Err(TcpError::WouldBlock)) => break Ok(()),
                Some(Err(_)) => break Err(ReleaseReason::Reset),
            };
            self.metrics.bytes_in(Transport::Tcp, n);
            conn.touch_rx(secs(now));
            let received_at = StdInstant::now();
            let StepParts {
                step, mut eg, sc, ..
            } = self.split(s, now);
            let r = tcp::read_chunk(
                &mut st,
                &buf[..n],
                now_ms,
                &step,
                &mut eg,
                &conn,
                &rcv,
                sc,
                received_at,
                |eg| eg.tcp.send_on(eg.s, now, &conn, b"\r\n") == SendResult::Sent,
            );
            if let Err(reason) = r {
                break Err(reason);
            }
            if let Some(reason) = conn.kill_reason() {
                break Err(reason);
            }
        };
        self.net.tcp.put_rbuf(buf);
        let cx = Ctx {
            core: &self.core,
            metrics: &self.metrics,
        };
        self.net.tcp.end_read(s, &cx, h, &conn, st, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8 (memory per idle connection ≤ 1 KiB in afpacket mode): the
    /// stack thread's per-connection records, pinned (the shared
    /// `Conn<StackIo>` is one Arc allocation: 136 B with its counts).
    #[test]
    fn issue8_idle_connection_records_are_pinned() {
        use std::mem::size_of;
        let sizes = [
            ("Conn<StackIo>", size_of::<Conn<StackIo>>(), 120),
            ("StackIo", size_of::<StackIo>(), 56),
            ("Option<Entry>", size_of::<Option<Entry>>(), 152),
        ];
        for (what, size, max) in sizes {
            assert!(size <= max, "{what}: {size} B > {max} B");
        }
    }

    #[test]
    fn issue8_bad_input_is_aborted_with_rst_by_default_or_fin_when_configured() {
        use ReleaseReason as R;
        for r in [
            R::ParseError,
            R::FramingError,
            R::Oversize,
            R::NoContentLength,
            R::MessageTimeout,
            R::FirstMessageTimeout,
        ] {
            assert_eq!(close_how(r, TcpRelease::Rst), CloseHow::Rst, "{r:?}");
            assert_eq!(close_how(r, TcpRelease::Fin), CloseHow::Fin, "{r:?}");
        }
    }

    #[test]
    fn issue8_idle_evicted_eof_shutdown_always_close_with_fin() {
        use ReleaseReason as R;
        for r in [R::IdleTimeout, R::Evicted, R::Eof, R::Shutdown] {
            for how in [TcpRelease::Rst, TcpRelease::Fin] {
                assert_eq!(close_how(r, how), CloseHow::Fin, "{r:?}");
            }
        }
        for r in [R::Reset, R::WriteQueueFull, R::Limit, R::ConnectFailed] {
            assert_eq!(close_how(r, TcpRelease::Fin), CloseHow::Rst, "{r:?}");
        }
        // every reason has a rule
        for r in ReleaseReason::ALL {
            let _ = close_how(r, TcpRelease::Rst);
        }
    }

    #[test]
    fn issue8_upstream_reset_refusal_and_unreachable_are_passive_signals() {
        use ReleaseReason as R;
        use TcpError as E;
        let cases = [
            (None, true, R::Eof, None),
            (
                Some(E::ConnectionRefused),
                false,
                R::ConnectFailed,
                Some(Signal::ConnectFailed),
            ),
            (
                Some(E::TimedOut),
                false,
                R::ConnectFailed,
                Some(Signal::ConnectFailed),
            ),
            (
                Some(E::HostUnreachable),
                false,
                R::ConnectFailed,
                Some(Signal::Unreachable),
            ),
            (
                Some(E::ConnectionReset),
                true,
                R::Reset,
                Some(Signal::Reset),
            ),
            (
                Some(E::HostUnreachable),
                true,
                R::Reset,
                Some(Signal::Unreachable),
            ),
        ];
        for (err, connected, reason, signal) in cases {
            assert_eq!(
                closed_reason(err, connected),
                (reason, signal),
                "{err:?} connected={connected}"
            );
        }
    }

    #[test]
    fn stack_io_holds_nothing_while_idle_and_drops_its_queue_on_close() {
        let io = StackIo::new(100);
        assert!(!io.has_backlog());
        assert!(io.lock().queue.is_none());
        // not attached / not connected: everything queues, bounded
        io.attach(
            TcpHandle {
                slot: 0,
                generation: 0,
            },
            false,
            5,
        );
        let mut st = io.lock();
        st.queue
            .get_or_insert_with(Box::default)
            .bufs
            .push_back(vec![0; 60]);
        st.queued = 60;
        drop(st);
        io.backlog.store(true, Ordering::Release);
        assert!(io.has_backlog());
        assert_eq!(io.close(), 60);
        assert!(!io.has_backlog());
        assert!(io.take_handle().is_none());
    }

    /// Two stacks over an in-memory link in virtual time: A (ours,
    /// 198.18.0.2) and B (the peer, 198.18.0.1, listening on :5080).
    struct Link {
        a: Stack,
        b: Stack,
        da: crate::netstack::device::MemoryDevice,
        db: crate::netstack::device::MemoryDevice,
        now: Instant,
    }

    impl Link {
        fn new(wmem: usize) -> Link {
            use crate::netstack::device::MemoryDevice;
            use crate::netstack::testutil::*;
            use crate::netstack::{EthernetAddress, Ipv4Cidr, Ipv6Cidr};
            let (da, db) =
                MemoryDevice::pair(EthernetAddress(OUR_MAC), EthernetAddress(PEER_MAC), 1500);
            let mut ca = config();
            ca.limits.tcp_wmem = wmem;
            let mut cb = config();
            cb.mac = EthernetAddress(PEER_MAC);
            cb.ipv4 = Some(Ipv4Cidr::new(PEER4, 24));
            cb.ipv6 = Some(Ipv6Cidr::new(PEER6, 64));
            cb.limits.tcp_rmem = 4096;
            Link {
                a: Stack::new(ca, t0()),
                b: Stack::new(cb, t0()),
                da,
                db,
                now: t0(),
            }
        }

        /// One round: frames both ways, timers, 1 ms of virtual time.
        fn round(&mut self) {
            use crate::netstack::device::Device;
            while let Some(f) = self.a.pop_tx() {
                let _ = self.da.send(&f);
                self.a.recycle(f);
            }
            while let Some(f) = self.b.pop_tx() {
                let _ = self.db.send(&f);
                self.b.recycle(f);
            }
            let (now, a, b) = (self.now, &mut self.a, &mut self.b);
            let _ = self
                .da
                .recv_batch(4096, &mut |m, f| a.receive_frame(now, m, f));
            let _ = self
                .db
                .recv_batch(4096, &mut |m, f| b.receive_frame(now, m, f));
            self.a.poll(self.now);
            self.b.poll(self.now);
            self.now += crate::netstack::Duration::from_millis(1);
        }
    }

    fn byte(i: usize) -> u8 {
        (i.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    /// SPEC A.4 on the stack: data sent before the connection is
    /// established, or beyond the stack's send buffer, waits in the
    /// connection's queue and goes out in order on TcpConnected /
    /// TcpWritable; the queue is bounded by `write_queue_bytes` (over it:
    /// `write_queue_full`) and holds no memory once empty.
    #[test]
    fn a4_stack_write_queue_is_bounded_and_flushed_in_order() {
        let peer: SocketAddr = "198.18.0.1:5080".parse().unwrap();
        let mut l = Link::new(4096);
        let lh = l.b.tcp_listen(peer, 16).unwrap();
        let h = l.a.tcp_connect(l.now, None, peer).unwrap();
        let io = StackIo::new(20_000);
        io.attach(h, false, 0);
        // not established yet: queued
        let mut sent = 0usize;
        let msg: Vec<u8> = (0..3000).map(byte).collect();
        io.send(&mut l.a, &msg, 0).unwrap();
        sent += msg.len();
        assert!(io.has_backlog());
        // establish; the application flushes on TcpConnected
        let mut connected = false;
        let mut bh = None;
        for _ in 0..2000 {
            l.round();
            while let Some(ev) = l.a.poll_event() {
                if ev == SocketEvent::TcpConnected(h) {
                    connected = true;
                    io.flush(&mut l.a, true).unwrap();
                }
            }
            while let Some(ev) = l.b.poll_event() {
                if ev == SocketEvent::TcpAcceptable(lh) {
                    bh = l.b.tcp(lh).and_then(|mut x| x.accept()).map(|(h, _)| h);
                }
            }
            if connected && bh.is_some() {
                break;
            }
        }
        let bh = bh.expect("accepted");
        assert!(connected);
        // B does not read: A's send buffer (4 KiB) and B's window fill, the
        // rest queues until the limit
        let mut full = false;
        for k in 0..100 {
            let m: Vec<u8> = (sent..sent + 1000).map(byte).collect();
            match io.send(&mut l.a, &m, k) {
                Ok(()) => sent += m.len(),
                Err(r) => {
                    assert_eq!(r, ReleaseReason::WriteQueueFull);
                    full = true;
                    break;
                }
            }
            assert!(io.lock().queued <= 20_000);
            l.round();
        }
        assert!(full, "the queue is bounded");
        assert!(io.has_backlog());
        // B reads everything; A flushes on TcpWritable
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..20_000 {
            l.round();
            while let Some(ev) = l.a.poll_event() {
                if ev == SocketEvent::TcpWritable(h) {
                    io.flush(&mut l.a, false).unwrap();
                }
            }
            while let Some(ev) = l.b.poll_event() {
                let _ = ev;
            }
            for _ in 0..64 {
                match l.b.tcp(bh).map(|mut x| x.recv(&mut buf)) {
                    Some(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if got.len() >= sent {
                break;
            }
        }
        assert_eq!(got.len(), sent);
        assert!(
            got.iter().enumerate().all(|(i, b)| *b == byte(i)),
            "in order"
        );
        assert!(!io.has_backlog());
        assert!(io.lock().queue.is_none(), "no memory held once empty");
    }
}
