//! TCP connections: states, the connection table, limits, release reasons (SPEC A.4).

/// Why a connection was released (each counted as `sipedge_tcp_released_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    ParseError,
    FramingError,
    Oversize,
    NoContentLength,
    MessageTimeout,
    FirstMessageTimeout,
    Eof,
    Reset,
    IdleTimeout,
    WriteQueueFull,
    Limit,
    Evicted,
    ConnectFailed,
    Shutdown,
}

impl ReleaseReason {
    pub const ALL: [ReleaseReason; 14] = [
        ReleaseReason::ParseError,
        ReleaseReason::FramingError,
        ReleaseReason::Oversize,
        ReleaseReason::NoContentLength,
        ReleaseReason::MessageTimeout,
        ReleaseReason::FirstMessageTimeout,
        ReleaseReason::Eof,
        ReleaseReason::Reset,
        ReleaseReason::IdleTimeout,
        ReleaseReason::WriteQueueFull,
        ReleaseReason::Limit,
        ReleaseReason::Evicted,
        ReleaseReason::ConnectFailed,
        ReleaseReason::Shutdown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::ParseError => "parse_error",
            ReleaseReason::FramingError => "framing_error",
            ReleaseReason::Oversize => "oversize",
            ReleaseReason::NoContentLength => "no_content_length",
            ReleaseReason::MessageTimeout => "message_timeout",
            ReleaseReason::FirstMessageTimeout => "first_message_timeout",
            ReleaseReason::Eof => "eof",
            ReleaseReason::Reset => "reset",
            ReleaseReason::IdleTimeout => "idle_timeout",
            ReleaseReason::WriteQueueFull => "write_queue_full",
            ReleaseReason::Limit => "limit",
            ReleaseReason::Evicted => "evicted",
            ReleaseReason::ConnectFailed => "connect_failed",
            ReleaseReason::Shutdown => "shutdown",
        }
    }
}

use crate::core::ConnId;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The backend's part of a connection: kernel `KernelIo` (tokio Notify,
/// the stream, the bounded write queue), stack `StackIo` (a netstack TCP
/// handle and its pending writes).
pub trait ConnIo: Send + Sync + 'static {
    /// A new, not yet attached handle with a write queue of at most
    /// `write_limit` bytes (the table makes one per admitted / outbound
    /// connection).
    fn new(write_limit: usize) -> Self
    where
        Self: Sized;
    /// A kill was requested (wake the owner: kernel → Notify; stack →
    /// nothing, the stack thread checks kill reasons itself).
    fn wake(&self);
    /// release: drop queued data, forget the socket; returns bytes dropped.
    fn close(&self) -> usize;
    /// Data is queued for writing (the drain leaves such connections open).
    fn has_backlog(&self) -> bool {
        false
    }
}

/// Connection state (Kamailio's `S_CONN_*`): Init until the first complete
/// SIP message, then Ok; Bad after a parse/framing error, Eof after the peer
/// closed; then released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    Init = 0,
    Ok = 1,
    Bad = 2,
    Eof = 3,
    Released = 4,
}

impl ConnState {
    fn from_u8(v: u8) -> ConnState {
        match v {
            0 => ConnState::Init,
            1 => ConnState::Ok,
            2 => ConnState::Bad,
            3 => ConnState::Eof,
            _ => ConnState::Released,
        }
    }
}

/// Why a send on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("connection closed")]
    Closed,
    #[error("write queue full")]
    QueueFull,
    #[error("write error")]
    Io,
}

/// One TCP connection, shared by its reader and every task that sends on it.
#[derive(Debug)]
pub struct Conn<B: ConnIo> {
    pub id: ConnId,
    pub peer: SocketAddr,
    /// Listen socket index (inbound) or the local address named in our Via (outbound).
    pub local: usize,
    /// Opened by us (towards an upstream or a client's Via address).
    pub outbound: bool,
    state: AtomicU8,
    /// Set (then `io.wake()`) to make the reader release the connection.
    kill: AtomicU8,
    /// Seconds since the backend's epoch of the last byte sent (idle lifetime).
    last_tx: AtomicU32,
    /// Same clock: the last bytes received (the drain closes idle connections).
    last_rx: AtomicU32,
    pub io: B,
}

const NO_KILL: u8 = u8::MAX;

/// Seconds on the connection clock, stored in 32 bits (136 years).
fn secs32(s: u64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl<B: ConnIo> Conn<B> {
    fn new(id: ConnId, peer: SocketAddr, local: usize, outbound: bool, io: B) -> Self {
        Conn {
            id,
            peer,
            local,
            outbound,
            state: AtomicU8::new(if outbound {
                ConnState::Ok
            } else {
                ConnState::Init
            } as u8),
            kill: AtomicU8::new(NO_KILL),
            last_tx: AtomicU32::new(0),
            last_rx: AtomicU32::new(0),
            io,
        }
    }

    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// First complete SIP message: Init → Ok.
    pub fn mark_ok(&self) {
        let _ = self.state.compare_exchange(
            ConnState::Init as u8,
            ConnState::Ok as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub fn is_alive(&self) -> bool {
        self.state() != ConnState::Released && self.kill.load(Ordering::Acquire) == NO_KILL
    }

    /// Ask the reader to release the connection for `reason` (first reason wins).
    pub fn kill(&self, reason: ReleaseReason) {
        let idx = ReleaseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0) as u8;
        let _ = self
            .kill
            .compare_exchange(NO_KILL, idx, Ordering::AcqRel, Ordering::Acquire);
        self.io.wake();
    }

    pub fn kill_reason(&self) -> Option<ReleaseReason> {
        let k = self.kill.load(Ordering::Acquire);
        ReleaseReason::ALL.get(k as usize).copied()
    }

    pub fn has_backlog(&self) -> bool {
        self.io.has_backlog()
    }

    pub fn last_tx(&self) -> u64 {
        self.last_tx.load(Ordering::Relaxed).into()
    }

    /// Bytes sent at `now_s` (a store only when the second changed).
    pub fn touch_tx(&self, now_s: u64) {
        let now_s = secs32(now_s);
        if self.last_tx.load(Ordering::Relaxed) != now_s {
            self.last_tx.store(now_s, Ordering::Relaxed);
        }
    }

    /// Bytes arrived at `now_s` (the reader; a store only when the second changed).
    pub fn touch_rx(&self, now_s: u64) {
        let now_s = secs32(now_s);
        if self.last_rx.load(Ordering::Relaxed) != now_s {
            self.last_rx.store(now_s, Ordering::Relaxed);
        }
    }

    /// The last second anything was sent or received.
    pub fn last_active(&self) -> u64 {
        self.last_tx()
            .max(self.last_rx.load(Ordering::Relaxed).into())
    }
}

/// An admitted connection and the one evicted for it, if any.
pub type Admitted<B> = (Arc<Conn<B>>, Option<Arc<Conn<B>>>);

/// Connection limits (SPEC A.4).
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub write_queue_bytes: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is full and no connection is waiting for its first message.
    TableFull,
    /// The source IP has its maximum of connections.
    PerIp,
}

#[derive(Debug)]
struct Inner<B: ConnIo> {
    by_id: HashMap<ConnId, Arc<Conn<B>>>,
    by_addr: HashMap<SocketAddr, ConnId>,
    per_ip: HashMap<IpAddr, usize>,
    /// Inbound connections in admission order, for eviction of the oldest one
    /// still in Init (stale entries are skipped lazily, compacted when large).
    init_fifo: VecDeque<ConnId>,
    next_id: ConnId,
    /// Ids advance by this much: the number of tables ([`ConnTable::for_shard`]).
    id_step: ConnId,
    /// `init_fifo.len()` after its last compaction.
    fifo_kept: usize,
}

/// All TCP connections: by id (Via `i=`), by peer address (reuse), with O(1)
/// limit checks per accept (per-IP counts in a map, Kamailio issue #3759).
#[derive(Debug)]
pub struct ConnTable<B: ConnIo> {
    inner: RwLock<Inner<B>>,
    /// [`TableLimits`], replaceable by a reload (read once per admission).
    max_connections: AtomicUsize,
    max_per_ip: AtomicUsize,
    write_queue_bytes: AtomicUsize,
}

/// The shard (of `count`) whose table assigned connection id `id`
/// ([`ConnTable::for_shard`]); 0 when `count` is 0 or 1.
pub fn shard_of_conn(id: ConnId, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    (id % count as ConnId) as usize
}

impl<B: ConnIo> ConnTable<B> {
    pub fn new(limits: TableLimits) -> Self {
        Self::for_shard(limits, 0, 1)
    }

    /// The table of shard `index` of `count` (afpacket mode, one table per
    /// stack shard): it assigns the ids `seq * count + index` (seq = 1, 2,
    /// …), so [`shard_of_conn`] names the owner of any id (a Via `;i=`
    /// routes a reply to its shard). `count` 1: ids 1, 2, 3, … as before.
    pub fn for_shard(limits: TableLimits, index: usize, count: usize) -> Self {
        let count = count.max(1) as ConnId;
        let index = (index as ConnId).min(count - 1);
        ConnTable {
            inner: RwLock::new(Inner {
                by_id: HashMap::new(),
                by_addr: HashMap::new(),
                per_ip: HashMap::new(),
                init_fifo: VecDeque::new(),
                next_id: count + index,
                id_step: count,
                fifo_kept: 0,
            }),
            max_connections: AtomicUsize::new(limits.max_connections),
            max_per_ip: AtomicUsize::new(limits.max_per_ip),
            write_queue_bytes: AtomicUsize::new(limits.write_queue_bytes),
        }
    }

    /// The limits now.
    pub fn limits(&self) -> TableLimits {
        TableLimits {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            max_per_ip: self.max_per_ip.load(Ordering::Relaxed),
            write_queue_bytes: self.write_queue_bytes.load(Ordering::Relaxed),
        }
    }

    /// New limits (reload): they apply to the next admissions and new
    /// connections; open connections keep theirs and are not evicted.
    pub fn set_limits(&self, l: TableLimits) {
        self.max_connections
            .store(l.max_connections, Ordering::Relaxed);
        self.max_per_ip.store(l.max_per_ip, Ordering::Relaxed);
        self.write_queue_bytes
            .store(l.write_queue_bytes, Ordering::Relaxed);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<B>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<B>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admit an accepted connection. When the table is full, the oldest
    /// connection that never delivered a complete SIP message is evicted
    /// (returned so the caller can count it); when there is none, refuse.
    pub fn admit(&self, peer: SocketAddr, local: usize) -> Result<Admitted<B>, Refused> {
        let lim = self.limits();
        let mut t = self.write();
        if t.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= lim.max_per_ip {
            return Err(Refused::PerIp);
        }
        let mut evicted = None;
        if t.by_id.len() >= lim.max_connections {
            while let Some(id) = t.init_fifo.pop_front() {
                let victim = t.by_id.get(&id).cloned();
                if let Some(v) = victim
                    && v.state() == ConnState::Init
                    && v.is_alive()
                {
                    Self::remove_locked(&mut t, &v);
                    evicted = Some(v);
                    break;
                }
            }
            if evicted.is_none() {
                return Err(Refused::TableFull);
            }
        }
        let conn = Self::insert_locked(&mut t, peer, local, false, lim.write_queue_bytes);
        t.init_fifo.push_back(conn.id);
        // stale entries (released, or delivered a message) are dropped when
        // the queue has doubled since its last compaction: amortized O(1),
        // at most about twice the connections still in Init
        if t.init_fifo.len() > 2 * t.fifo_kept + 16 {
            let Inner {
                init_fifo,
                by_id,
                fifo_kept,
                ..
            } = &mut *t;
            init_fifo.retain(|id| by_id.get(id).is_some_and(|c| c.state() == ConnState::Init));
            if init_fifo.capacity() > 4 * init_fifo.len() + 64 {
                init_fifo.shrink_to_fit();
            }
            *fifo_kept = init_fifo.len();
        }
        Ok((conn, evicted))
    }

    fn insert_locked(
        t: &mut Inner<B>,
        peer: SocketAddr,
        local: usize,
        outbound: bool,
        limit: usize,
    ) -> Arc<Conn<B>> {
        let id = t.next_id;
        t.next_id += t.id_step;
        let conn = Arc::new(Conn::new(id, peer, local, outbound, B::new(limit)));
        t.by_id.insert(id, conn.clone());
        t.by_addr.insert(peer, id);
        *t.per_ip.entry(peer.ip()).or_insert(0) += 1;
        conn
    }

    /// The open connection to `peer`, or a new outbound one (second value true:
    /// the caller must connect it). Outbound connections count against the
    /// total (`None` when the table is full) but not against per-IP limits.
    pub fn get_or_create_outbound(
        &self,
        peer: SocketAddr,
        local: usize,
    ) -> Option<(Arc<Conn<B>>, bool)> {
        if let Some(c) = self.by_addr(peer) {
            return Some((c, false));
        }
        let mut t = self.write();
        if let Some(c) = t.by_addr.get(&peer).and_then(|id| t.by_id.get(id))
            && c.is_alive()
        {
            return Some((c.clone(), false));
        }
        let lim = self.limits();
        if t.by_id.len() >= lim.max_connections {
            return None;
        }
        let c = Self::insert_locked(&mut t, peer, local, true, lim.write_queue_bytes);
        Some((c, true))
    }

    pub fn get(&self, id: ConnId) -> Option<Arc<Conn<B>>> {
        self.read().by_id.get(&id).filter(|c| c.is_alive()).cloned()
    }

    pub fn by_addr(&self, peer: SocketAddr) -> Option<Arc<Conn<B>>> {
        let t = self.read();
        t.by_addr
            .get(&peer)
            .and_then(|id| t.by_id.get(id))
            .filter(|c| c.is_alive())
            .cloned()
    }

    fn remove_locked(t: &mut Inner<B>, c: &Conn<B>) -> bool {
        if t.by_id.remove(&c.id).is_none() {
            return false;
        }
        if t.by_addr.get(&c.peer) == Some(&c.id) {
            t.by_addr.remove(&c.peer);
        }
        if let Some(n) = t.per_ip.get_mut(&c.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&c.peer.ip());
            }
        }
        true
    }

    /// `release_conn`: remove from the table, drop the write queue and our
    /// socket reference. Returns the bytes of queued data dropped. Idempotent.
    pub fn release(&self, c: &Conn<B>) -> usize {
        Self::remove_locked(&mut self.write(), c);
        c.set_state(ConnState::Released);
        c.io.close()
    }

    /// Visit every connection under the table's read lock (keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn<B>>)) {
        for c in self.read().by_id.values() {
            f(c);
        }
    }

    /// Every connection (shutdown).
    pub fn all(&self) -> Vec<Arc<Conn<B>>> {
        self.read().by_id.values().cloned().collect()
    }
}

/// A tiny per-task cache of connection handles, so the hot path (a reader
/// forwarding to the same upstream connection, replies to the same client)
/// does not take the table lock for every message.
#[derive(Debug)]
pub struct ConnCache<B: ConnIo> {
    by_id: Vec<Arc<Conn<B>>>,
}

impl<B: ConnIo> Default for ConnCache<B> {
    fn default() -> Self {
        ConnCache { by_id: Vec::new() }
    }
}

const CACHE_SIZE: usize = 8;

impl<B: ConnIo> ConnCache<B> {
    pub fn by_id(&mut self, table: &ConnTable<B>, id: ConnId) -> Option<Arc<Conn<B>>> {
        self.lookup(|c| c.id == id, || table.get(id))
    }

    pub fn by_addr(&mut self, table: &ConnTable<B>, addr: SocketAddr) -> Option<Arc<Conn<B>>> {
        self.lookup(|c| c.peer == addr, || table.by_addr(addr))
    }

    /// A live cached handle matching `hit`, else `fetch` from the table (and cache it).
    fn lookup(
        &mut self,
        hit: impl Fn(&Conn<B>) -> bool,
        fetch: impl FnOnce() -> Option<Arc<Conn<B>>>,
    ) -> Option<Arc<Conn<B>>> {
        self.by_id.retain(|c| c.is_alive());
        if let Some(c) = self.by_id.iter().find(|c| hit(c)) {
            return Some(c.clone());
        }
        let c = fetch()?;
        self.put(c.clone());
        Some(c)
    }

    pub fn contains(&self, id: ConnId) -> bool {
        self.by_id.iter().any(|c| c.id == id)
    }

    pub fn put(&mut self, c: Arc<Conn<B>>) {
        if self.by_id.len() >= CACHE_SIZE {
            self.by_id.remove(0);
        }
        self.by_id.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::kernel::KernelIo;
    type ConnTable = super::ConnTable<KernelIo>;
    type ConnCache = super::ConnCache<KernelIo>;

    #[test]
    fn a4_reloaded_limits_apply_to_new_admissions() {
        let t = ConnTable::new(limits(10, 1));
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let c: SocketAddr = "192.0.2.1:1002".parse().unwrap();
        let (first, _) = t.admit(a, 0).unwrap();
        assert_eq!(t.admit(b, 0).unwrap_err(), Refused::PerIp);
        t.set_limits(limits(10, 2));
        assert_eq!(t.limits().max_per_ip, 2);
        t.admit(b, 0).unwrap();
        assert_eq!(t.admit(c, 0).unwrap_err(), Refused::PerIp);
        // lowering a limit closes nothing that is open
        t.set_limits(limits(1, 1));
        assert_eq!(t.len(), 2);
        assert!(first.is_alive());
    }

    fn limits(max: usize, per_ip: usize) -> TableLimits {
        TableLimits {
            max_connections: max,
            max_per_ip: per_ip,
            write_queue_bytes: 1024,
        }
    }

    fn addr(i: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], port))
    }

    #[test]
    fn a4_eviction_queue_stays_small_when_connections_deliver() {
        let t = ConnTable::new(limits(100_000, 100_000));
        let mut kept = Vec::new();
        for i in 0..10_000u32 {
            let peer = SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 5060));
            let (c, _) = t.admit(peer, 0).unwrap();
            c.mark_ok();
            kept.push(c);
        }
        let n = t.read().init_fifo.len();
        assert!(
            n <= 64,
            "eviction queue holds {n} ids for 0 connections in Init"
        );
        // the oldest Init one is still found
        let (a, _) = t.admit(addr(3, 1), 0).unwrap();
        t.set_limits(limits(t.len(), 100_000));
        let (_b, ev) = t.admit(addr(3, 2), 0).unwrap();
        assert_eq!(ev.map(|c| c.id), Some(a.id));
    }

    #[test]
    fn a4_per_ip_limit_refuses() {
        let t = ConnTable::new(limits(10, 2));
        t.admit(addr(1, 1), 0).unwrap();
        t.admit(addr(1, 2), 0).unwrap();
        assert_eq!(t.admit(addr(1, 3), 0).unwrap_err(), Refused::PerIp);
        t.admit(addr(2, 1), 0).unwrap();
    }

    #[test]
    fn a4_full_table_evicts_oldest_never_delivered() {
        let t = ConnTable::new(limits(3, 10));
        let (a, _) = t.admit(addr(1, 1), 0).unwrap();
        let (b, _) = t.admit(addr(1, 2), 0).unwrap();
        let (c, _) = t.admit(addr(1, 3), 0).unwrap();
        a.mark_ok();
        let (_d, ev) = t.admit(addr(1, 4), 0).unwrap();
        assert_eq!(
            ev.unwrap().id,
            b.id,
            "oldest Init connection evicted, not the Ok one"
        );
        assert_eq!(t.len(), 3);
        c.mark_ok();
        let (_e, ev) = t.admit(addr(1, 5), 0).unwrap();
        assert!(ev.is_some()); // d was still Init
    }

    #[test]
    fn a4_full_table_of_delivering_connections_refuses() {
        let t = ConnTable::new(limits(2, 10));
        let (a, _) = t.admit(addr(1, 1), 0).unwrap();
        let (b, _) = t.admit(addr(1, 2), 0).unwrap();
        a.mark_ok();
        b.mark_ok();
        assert_eq!(t.admit(addr(1, 3), 0).unwrap_err(), Refused::TableFull);
    }

    #[test]
    fn a4_release_removes_from_table_and_per_ip_count() {
        let t = ConnTable::new(limits(10, 1));
        let (a, _) = t.admit(addr(1, 1), 0).unwrap();
        assert!(t.get(a.id).is_some());
        t.release(&a);
        t.release(&a); // idempotent
        assert!(t.get(a.id).is_none());
        assert!(t.by_addr(addr(1, 1)).is_none());
        assert_eq!(a.state(), ConnState::Released);
        t.admit(addr(1, 2), 0).unwrap();
    }

    #[test]
    fn a4_write_queue_over_limit_kills_connection() {
        let t = ConnTable::new(limits(10, 10));
        let (c, _) = t.get_or_create_outbound(addr(9, 9), 0).unwrap();
        // not connected yet: everything queues
        c.send(&[0u8; 600], 0).unwrap();
        assert!(c.has_backlog());
        assert_eq!(c.send(&[0u8; 600], 0), Err(SendError::QueueFull));
        assert_eq!(c.kill_reason(), Some(ReleaseReason::WriteQueueFull));
        assert!(!c.is_alive());
        assert_eq!(t.release(&c), 600);
    }

    #[test]
    fn a4_outbound_connection_is_reused_by_address() {
        let t = ConnTable::new(limits(10, 10));
        let (a, new_a) = t.get_or_create_outbound(addr(9, 9), 0).unwrap();
        let (b, new_b) = t.get_or_create_outbound(addr(9, 9), 0).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        let mut cache = ConnCache::default();
        assert_eq!(cache.by_addr(&t, addr(9, 9)).unwrap().id, a.id);
        assert_eq!(cache.by_id(&t, a.id).unwrap().id, a.id);
        a.kill(ReleaseReason::Eof);
        assert!(cache.by_id(&t, a.id).is_none());
    }

    #[test]
    fn a4_outbound_connections_count_against_the_total() {
        let t = ConnTable::new(limits(2, 10));
        t.admit(addr(1, 1), 0).unwrap();
        assert!(t.get_or_create_outbound(addr(9, 1), 0).is_some());
        assert!(
            t.get_or_create_outbound(addr(9, 2), 0).is_none(),
            "table full"
        );
        assert!(
            t.get_or_create_outbound(addr(9, 1), 0).is_some(),
            "existing one reused"
        );
    }

    /// Issue 9: the table of shard k of N assigns ids `seq * N + k`, so the
    /// id names its owning shard; one table (kernel mode) keeps 1, 2, 3, ….
    #[test]
    fn shard_tables_assign_ids_that_name_their_shard() {
        for n in 1..=4usize {
            for k in 0..n {
                let t = ConnTable::for_shard(limits(100, 100), k, n);
                let mut ids = Vec::new();
                for i in 0..5u8 {
                    let (c, _) = t.admit(addr(1, 1000 + u16::from(i)), 0).unwrap();
                    ids.push(c.id);
                    let (o, _) = t
                        .get_or_create_outbound(addr(9, 1000 + u16::from(i)), 0)
                        .unwrap();
                    ids.push(o.id);
                }
                for (j, id) in ids.iter().enumerate() {
                    assert_eq!(*id, (j as u64 + 1) * n as u64 + k as u64, "n={n} k={k}");
                    assert_eq!(shard_of_conn(*id, n), k);
                }
            }
        }
        let t = ConnTable::new(limits(10, 10));
        let (c, _) = t.admit(addr(1, 1), 0).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(shard_of_conn(7, 1), 0);
        assert_eq!(shard_of_conn(7, 0), 0);
    }
}
