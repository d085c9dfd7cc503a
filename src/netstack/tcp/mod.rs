//! TCP for the embedded stack (SPEC B.3, B.4; seeds 003 and 004 give the
//! Linux code paths; RFC 9293 with Linux behaviour, RFC 5961, RFC 6298,
//! RFC 7323, RFC 2018, RFC 4987).
//!
//! Layout, named after Linux:
//!
//! ```text
//! tcp_v4_rcv / tcp_v6_rcv (tcp_ipv4.rs): checksum, header checks, O(1) demux
//!   ├─ 4-tuple hash → TCB slot ─→ tcp_rcv_state_process (tcp_input.rs,
//!   │                              RFC 9293 §3.10.7 step by step)
//!   ├─ 4-tuple hash → TIME_WAIT bucket → tcp_timewait_state_process (minisocks.rs)
//!   ├─ (family, port) → listener → tcp_v4_do_rcv LISTEN (tcp_input.rs, SYN cookies)
//!   └─ nothing → tcp_v4_send_reset (SPEC B.3)
//! tcp_output.rs: tcp_transmit_skb, tcp_write_xmit, tcp_send_ack, resets
//! tcp_timer.rs:  RTO, delayed ACK, zero-window probe, keep-alive,
//!                FIN_WAIT_2 and TIME_WAIT; one deadline per TCB on the
//!                stack's single timer wheel
//! ```
//!
//! Connections live in a slab (`Vec<Option<Tcb>>` + a generation per slot,
//! so a stale [`TcpHandle`] is detected) indexed by a `HashMap` keyed by the
//! 4-tuple (std's SipHash with a per-process random key: an attacker cannot
//! aim segments at one bucket). Listeners are keyed by (family, port).
//! TIME_WAIT is a compact [`minisocks::TwBucket`], not a TCB. A TCB holds no
//! heap memory while its buffers are empty.
//!
//! Congestion control: **CUBIC** by default (as Linux), NewReno available
//! (`congestion.rs`). Nagle is off by default (SIP wants no delay).

// The pure modules (branch tcp-parts) have API the core does not use yet.
#[allow(dead_code)]
pub(crate) mod buffer;
#[allow(dead_code)]
pub(crate) mod congestion;
/// Segment-session interpreter for the fuzz target and property tests.
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod minisocks;
#[allow(dead_code)]
pub(crate) mod rtt;
#[allow(dead_code)]
pub(crate) mod sack;
#[allow(dead_code)]
pub(crate) mod syncookies;
pub(crate) mod tcp_input;
pub(crate) mod tcp_ipv4;
pub(crate) mod tcp_output;
pub(crate) mod tcp_timer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pair;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::TcpSeqNumber;

use super::timer_wheel::TimerWheel;
use super::{Duration, Instant, Limits, Mib, SocketEvent, Stack};
use buffer::{RecvBuf, SendBuf};
use congestion::{Congestion, CongestionKind};
use rtt::RttEstimator;
use sack::Scoreboard;

pub(crate) type Seq = TcpSeqNumber;

/// `a + n` in sequence space (never panics).
#[inline]
pub(crate) fn seq_add(a: Seq, n: u32) -> Seq {
    TcpSeqNumber(a.0.wrapping_add(n as i32))
}

/// `a - b` in sequence space, signed.
#[inline]
pub(crate) fn seq_diff(a: Seq, b: Seq) -> i32 {
    a.0.wrapping_sub(b.0)
}

#[inline]
pub(crate) fn seq_lt(a: Seq, b: Seq) -> bool {
    seq_diff(a, b) < 0
}

#[inline]
pub(crate) fn seq_le(a: Seq, b: Seq) -> bool {
    seq_diff(a, b) <= 0
}

/// A TCP socket of the stack: slot + generation (a handle of a closed
/// socket never reaches the slot's next occupant).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TcpHandle {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// RFC 9293 §3.3.2 states (LISTEN included).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl TcpState {
    /// Synchronized states (RFC 9293 §3.10.7.4: a connection that has
    /// completed its handshake, for RST / SYN / ACK validation).
    pub fn is_synchronized(self) -> bool {
        !matches!(
            self,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        )
    }
}

/// Errors of the TCP socket API (the `errno` Linux would give).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TcpError {
    #[error("operation would block")]
    WouldBlock,
    #[error("not connected")]
    NotConnected,
    #[error("broken pipe")]
    BrokenPipe,
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connection reset by peer")]
    ConnectionReset,
    #[error("connection timed out")]
    TimedOut,
    #[error("host unreachable")]
    HostUnreachable,
    #[error("address in use")]
    AddrInUse,
    #[error("address not available")]
    AddrNotAvailable,
    #[error("too many connections")]
    TooManyConnections,
    #[error("invalid socket handle")]
    InvalidHandle,
}

impl TcpError {
    pub fn io_kind(self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            TcpError::WouldBlock => K::WouldBlock,
            TcpError::NotConnected => K::NotConnected,
            TcpError::BrokenPipe => K::BrokenPipe,
            TcpError::ConnectionRefused => K::ConnectionRefused,
            TcpError::ConnectionReset => K::ConnectionReset,
            TcpError::TimedOut => K::TimedOut,
            TcpError::HostUnreachable => K::HostUnreachable,
            TcpError::AddrInUse => K::AddrInUse,
            TcpError::AddrNotAvailable => K::AddrNotAvailable,
            TcpError::TooManyConnections => K::OutOfMemory,
            TcpError::InvalidHandle => K::InvalidInput,
        }
    }
}

/// `shutdown(2)` directions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shutdown {
    Read,
    Write,
    Both,
}

/// An optional deadline in 8 bytes (`Option<Instant>` takes 16; a TCB
/// holds six): the stack clock's microseconds, `i64::MIN` for none.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct At(i64);

impl At {
    pub const NONE: At = At(i64::MIN);

    #[inline]
    pub fn get(self) -> Option<Instant> {
        (self.0 != i64::MIN).then(|| Instant::from_micros(self.0))
    }

    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == i64::MIN
    }

    /// The earliest of `xs` that is set, [`At::NONE`] when none is: plain
    /// integer compares (NONE ranks after every instant).
    #[inline]
    pub fn earliest<const N: usize>(xs: [At; N]) -> At {
        let m = xs.iter().fold(u64::MAX, |m, a| m.min(a.rank()));
        At(((m.wrapping_add(1)) ^ (1 << 63)) as i64)
    }

    /// An order-preserving map to `u64` in which NONE (`i64::MIN`) comes
    /// last: flip the sign bit (i64 order becomes u64 order, NONE becomes
    /// 0), then subtract one (NONE wraps to `u64::MAX`). `earliest` undoes it.
    #[inline]
    fn rank(self) -> u64 {
        ((self.0 as u64) ^ (1 << 63)).wrapping_sub(1)
    }
}

impl From<Option<Instant>> for At {
    #[inline]
    fn from(x: Option<Instant>) -> At {
        // i64::MIN µs is some 292,000 years before the stack's epoch
        x.map_or(At::NONE, |i| At(i.total_micros().max(i64::MIN + 1)))
    }
}

/// A vector that takes 8 bytes in its owner while empty (a `Vec` takes 24
/// even without capacity): for state an idle connection does not use (the
/// SACK scoreboard, the out-of-order ranges). No heap after
/// [`LazyVec::clear`].
#[derive(Debug, Clone)]
#[allow(clippy::box_collection)] // deliberate: 8 bytes while empty, not 24
pub(crate) struct LazyVec<T>(Option<Box<Vec<T>>>);

impl<T> Default for LazyVec<T> {
    fn default() -> Self {
        LazyVec(None)
    }
}

impl<T> LazyVec<T> {
    pub fn new() -> Self {
        LazyVec(None)
    }

    /// The vector, allocated on first use.
    pub fn vec_mut(&mut self) -> &mut Vec<T> {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn pop(&mut self) -> Option<T> {
        self.0.as_mut().and_then(|v| v.pop())
    }

    /// Elements the heap part has room for (0 while unallocated).
    pub fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.capacity())
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }
}

impl<T> std::ops::Deref for LazyVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }
}

impl<T> std::ops::DerefMut for LazyVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self.0.as_deref_mut() {
            Some(v) => v.as_mut_slice(),
            None => &mut [],
        }
    }
}

/// The connection map's key: the 4-tuple in 38 bytes (a `Tuple` takes 64
/// and its map entry 68): both addresses as 16 bytes (IPv4 mapped), the
/// ports, the family. IPv6 flow label and scope id are not part of it
/// (the stack has one interface; received segments carry neither).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ConnKey {
    ips: [[u8; 16]; 2],
    ports: [u16; 2],
    v6: bool,
}

/// All 37 bytes in one `write`: the map's keyed hasher then runs once over
/// the tuple instead of once per field (a derived `Hash` makes seven calls,
/// two of them length prefixes), which was most of a segment's lookup.
/// Every byte still goes through the keyed hash, so a peer choosing its
/// address and port gains nothing against the table.
impl std::hash::Hash for ConnKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 37];
        b[..16].copy_from_slice(&self.ips[0]);
        b[16..32].copy_from_slice(&self.ips[1]);
        b[32..34].copy_from_slice(&self.ports[0].to_ne_bytes());
        b[34..36].copy_from_slice(&self.ports[1].to_ne_bytes());
        b[36] = u8::from(self.v6);
        state.write(&b);
    }
}

impl ConnKey {
    #[inline]
    pub fn new(local: SocketAddr, remote: SocketAddr) -> ConnKey {
        let ip = |a: &SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        ConnKey {
            ips: [ip(&local), ip(&remote)],
            ports: [local.port(), remote.port()],
            v6: local.is_ipv6(),
        }
    }
}

/// Connection 4-tuple: (local, remote).
pub(crate) type Tuple = (SocketAddr, SocketAddr);

/// What the stack's timer wheel holds for TCP.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum TimerKey {
    Conn(u32),
    Tw(u32),
}

/// Keep-alive probe interval and count (Linux `tcp_keepalive_intvl` 75 s,
/// `tcp_keepalive_probes` 9).
pub(crate) const KEEPALIVE_INTVL: Duration = Duration::from_secs(75);
pub(crate) const KEEPALIVE_PROBES: u8 = 9;
/// Delayed-ACK timeout (Linux `TCP_DELACK_MIN` 40 ms; max 200 ms).
pub(crate) const DELACK: Duration = Duration::from_millis(40);
/// Segments ACKed at once after the start of a connection and after
/// out-of-order data (Linux quick-ACK mode, `TCP_MAX_QUICKACKS` 16).
pub(crate) const QUICKACKS: u8 = 16;
/// SYN-ACK retransmissions (Linux `tcp_synack_retries`).
pub(crate) const SYNACK_RETRIES: u8 = 5;
/// Largest backlog (Linux `somaxconn`, 4096).
pub(crate) const SOMAXCONN: usize = 4096;

/// Per-listener queues (Linux `request_sock_queue` + accept queue).
#[derive(Debug, Default)]
pub(crate) struct ListenQ {
    /// listen(backlog), capped at [`SOMAXCONN`]: the accept queue bound.
    pub backlog: usize,
    /// SYN queue bound: min(backlog, `tcp_syn_backlog_max`).
    pub syn_max: usize,
    /// SYN_RECEIVED children (slots).
    pub syn: Vec<u32>,
    /// Established children not yet accepted (slots), oldest first.
    pub accept: VecDeque<u32>,
    /// Last time the SYN queue overflowed (cookies are only checked
    /// within 2 minutes of it: Linux `tcp_synq_no_recent_overflow`).
    pub last_overflow: Option<Instant>,
}

/// One connection (transmission control block). Small on purpose: no heap
/// while its buffers are empty; the listener queues are boxed.
pub(crate) struct Tcb {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    // send sequence space (RFC 9293 §3.3.1)
    pub iss: Seq,
    pub snd_una: Seq,
    pub snd_nxt: Seq,
    /// Highest sequence sent (snd_nxt goes back to snd_una after an RTO).
    pub snd_max: Seq,
    pub snd_wnd: u32,
    pub max_wnd: u32,
    pub snd_wl1: Seq,
    pub snd_wl2: Seq,
    // receive sequence space
    pub irs: Seq,
    pub rcv_nxt: Seq,
    /// Window (bytes) in the last segment we sent.
    pub rcv_wnd_adv: u32,
    /// Effective send MSS (payload bytes per segment, options deducted).
    pub mss: u16,
    /// Path MTU learned from ICMP (frag needed / packet too big), 0 if
    /// none: caps the MSS set when the handshake completes.
    pub pmtu: u16,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Window scaling negotiated (both SYNs carried the option).
    pub ws_ok: bool,
    pub sack_ok: bool,
    pub ts_ok: bool,
    pub nodelay: bool,
    pub linger0: bool,
    /// close() was called: the handle is gone, no events are sent.
    pub orphan: bool,
    /// The application will send no more (close / shutdown(write)): a FIN
    /// follows the queued data.
    pub fin_queued: bool,
    /// Our FIN was acknowledged.
    pub fin_acked: bool,
    /// The peer's FIN was received (recv returns 0 after the data).
    pub rcv_fin: bool,
    /// shutdown(read): reads return 0, data is still ACKed.
    pub rd_shut: bool,
    /// A send returned WouldBlock: report TcpWritable when space frees.
    pub want_writable: bool,
    /// Our SYN or SYN-ACK had to be retransmitted (RFC 6298 §5.7 RTO of
    /// 3 s and RFC 6928 §2 initial window of one segment afterwards).
    pub syn_rexmit: bool,
    /// RFC 7323 TS.Recent and when it was set (PAWS).
    pub ts_recent: u32,
    pub ts_recent_at: Instant,
    pub ts_off: u32,
    pub sndbuf: SendBuf,
    pub rcvbuf: RecvBuf,
    pub rtt: RttEstimator,
    pub cc: Congestion,
    pub sacks: Scoreboard,
    /// Timing one segment for an RTT sample when there are no timestamps
    /// (Karn: never a retransmitted one).
    /// (`rtt_seq`, `rtt_at`; none while `rtt_at` is none: see
    /// [`Tcb::rtt_probe`].)
    pub rtt_seq: Seq,
    pub rtt_at: At,
    /// In fast recovery until snd_una passes this (RFC 6582 "recover").
    pub recover: Option<Seq>,
    /// Highest sequence retransmitted in this recovery.
    pub high_rxt: Seq,
    pub dupacks: u8,
    /// Consecutive RTO expirations (reset by a new ACK).
    pub retries: u8,
    /// Unanswered zero-window or keep-alive probes.
    pub probes: u8,
    /// Full segments received and not yet ACKed.
    pub ack_pending: u8,
    /// What waits for [`Stack::tcp_uncork`] while the table is corked
    /// ([`CORK_PUSH`], [`CORK_ACK`]).
    pub cork: u8,
    pub quickack: u8,
    /// Keep-alive idle time, µs; [`NO_KEEPALIVE`] when off (see
    /// [`Tcb::keepalive`]).
    pub keepalive_us: u64,
    pub last_rcv: Instant,
    pub last_snd: Instant,
    // timers (the wheel holds the earliest)
    pub rto_at: At,
    pub delack_at: At,
    pub probe_at: At,
    pub keep_at: At,
    /// FIN_WAIT_2 orphan timeout.
    pub fin_at: At,
    pub armed: At,
    pub err: Option<TcpError>,
    /// The listener this child belongs to until accepted.
    pub parent: Option<u32>,
    pub listen: Option<Box<ListenQ>>,
}

/// `Tcb::keepalive_us` while keep-alive is off.
pub(crate) const NO_KEEPALIVE: u64 = u64::MAX;

impl Tcb {
    /// The segment timed for an RTT sample and when it was sent.
    #[inline]
    pub fn rtt_probe(&self) -> Option<(Seq, Instant)> {
        self.rtt_at.get().map(|at| (self.rtt_seq, at))
    }

    #[inline]
    pub fn set_rtt_probe(&mut self, p: Option<(Seq, Instant)>) {
        if let Some((s, _)) = p {
            self.rtt_seq = s;
        }
        self.rtt_at = At::from(p.map(|(_, at)| at));
    }

    /// Keep-alive idle time (`None`: off).
    #[inline]
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_us != NO_KEEPALIVE).then(|| Duration::from_micros(self.keepalive_us))
    }

    #[inline]
    pub fn set_keepalive(&mut self, idle: Option<Duration>) {
        self.keepalive_us = idle.map_or(NO_KEEPALIVE, |d| d.total_micros().min(NO_KEEPALIVE - 1));
    }
}

/// TCP limits taken from [`Limits`].
#[derive(Debug, Clone)]
pub(crate) struct TcpLimits {
    pub max_conns: usize,
    pub syn_backlog_max: usize,
    pub max_tw: usize,
    pub rmem: usize,
    pub wmem: usize,
    pub fin_timeout: Duration,
    pub time_wait: Duration,
    pub syncookies: bool,
    pub challenge_ack_limit: u32,
    pub retries2: u8,
    pub syn_retries: u8,
}

/// Every TCP connection, listener and TIME_WAIT bucket of a stack.
pub struct TcpTable {
    pub(crate) slots: Vec<Option<Tcb>>,
    pub(crate) gens: Vec<u32>,
    pub(crate) free: Vec<u32>,
    pub(crate) count: usize,
    pub(crate) conns: HashMap<ConnKey, u32>,
    pub(crate) listeners: HashMap<(bool, u16), u32>,
    /// Local ports in use by connections and TIME_WAIT buckets (refcount),
    /// so connect() picks a port nothing else uses.
    pub(crate) ports: HashMap<(bool, u16), u32>,
    pub(crate) tw: minisocks::TwTable,
    pub(crate) wheel: TimerWheel<TimerKey>,
    pub(crate) expired: Vec<TimerKey>,
    /// Payload of the segment being built (taken out while in use).
    pub(crate) scratch: Vec<u8>,
    /// Keyed hash for ISNs and timestamp offsets (RFC 6528).
    pub(crate) secret: std::collections::hash_map::RandomState,
    pub(crate) cookie: syncookies::CookieSecret,
    /// RFC 5961 §7 challenge-ACK limit: (second it counts, ACKs sent in it).
    pub(crate) challenge: (i64, u32),
    pub(crate) next_ephemeral: u16,
    /// The stack's clock as last seen (socket calls without a time use it).
    pub(crate) now: Instant,
    pub(crate) lim: TcpLimits,
    pub(crate) cc_kind: CongestionKind,
    /// Set by [`Stack::tcp_cork`]: sends and in-order data ACKs wait for
    /// [`Stack::tcp_uncork`].
    pub(crate) corked: bool,
    /// Slots with something corked (each once: its `cork` bits were 0).
    pub(crate) cork_slots: Vec<u32>,
}

/// Corked: queued data to push.
pub(crate) const CORK_PUSH: u8 = 1;
/// Corked: an ACK for in-order data is due.
pub(crate) const CORK_ACK: u8 = 2;

pub(crate) use super::EPHEMERAL;

/// The send MSS a path MTU of `mtu` bytes allows: `mtu` − IP − TCP headers
/// (40 bytes for IPv4, 60 for IPv6), within 88..=65495.
pub(crate) fn mss_for_mtu(mtu: usize, v6: bool) -> u16 {
    let hdr = if v6 { 60 } else { 40 };
    mtu.saturating_sub(hdr).clamp(88, 65495) as u16
}

/// A random u64 from std's per-process random hash keys.
pub(crate) fn random_u64(rs: &std::collections::hash_map::RandomState, x: u64) -> u64 {
    rs.hash_one(x)
}

impl TcpTable {
    pub fn new(l: &Limits, now: Instant) -> Self {
        let secret = std::collections::hash_map::RandomState::new();
        let mut key = [0u8; 32];
        for (i, c) in key.chunks_mut(8).enumerate() {
            c.copy_from_slice(&random_u64(&secret, 0xc00c_1e00 + i as u64).to_le_bytes());
        }
        let span = (EPHEMERAL.end() - EPHEMERAL.start()) as u64 + 1;
        TcpTable {
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            count: 0,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            ports: HashMap::new(),
            tw: minisocks::TwTable::default(),
            wheel: TimerWheel::new(now, Duration::from_millis(1)),
            expired: Vec::new(),
            scratch: Vec::new(),
            cookie: syncookies::CookieSecret::new(key),
            next_ephemeral: EPHEMERAL.start() + (random_u64(&secret, 7) % span) as u16,
            secret,
            challenge: (0, 0),
            now,
            corked: false,
            cork_slots: Vec::new(),
            lim: TcpLimits {
                max_conns: l.tcp_max_conns,
                syn_backlog_max: l.tcp_syn_backlog_max,
                max_tw: l.tcp_max_tw_buckets,
                rmem: l.tcp_rmem,
                wmem: l.tcp_wmem,
                fin_timeout: l.tcp_fin_timeout,
                time_wait: l.tcp_time_wait,
                syncookies: l.tcp_syncookies,
                challenge_ack_limit: l.tcp_challenge_ack_limit,
                retries2: l.tcp_retries2,
                syn_retries: l.tcp_syn_retries,
            },
            cc_kind: CongestionKind::Cubic,
        }
    }

    /// Connections, listeners and half-open connections (TIME_WAIT not
    /// included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// TIME_WAIT buckets.
    pub fn time_wait_len(&self) -> usize {
        self.tw.len()
    }

    /// Heap bytes held by all send and receive buffers.
    pub fn buffer_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|t| t.sndbuf.heap_bytes() + t.rcvbuf.heap_bytes())
            .sum()
    }

    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&Tcb> {
        self.slots.get(slot as usize)?.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Tcb> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The slot of a live handle.
    pub(crate) fn slot_of(&self, h: TcpHandle) -> Option<u32> {
        (self.gens.get(h.slot as usize) == Some(&h.generation)
            && self.get(h.slot).is_some_and(|t| !t.orphan))
        .then_some(h.slot)
    }

    pub(crate) fn handle(&self, slot: u32) -> TcpHandle {
        TcpHandle {
            slot,
            generation: self.gens[slot as usize],
        }
    }

    pub(crate) fn insert(&mut self, tcb: Tcb) -> u32 {
        self.count += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(tcb);
                i
            }
            None => {
                self.slots.push(Some(tcb));
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub(crate) fn port_ref(&mut self, a: SocketAddr) {
        *self.ports.entry((a.is_ipv6(), a.port())).or_insert(0) += 1;
    }

    pub(crate) fn port_unref(&mut self, a: SocketAddr) {
        let k = (a.is_ipv6(), a.port());
        if let Some(n) = self.ports.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.ports.remove(&k);
            }
        }
    }

    /// RFC 6528 initial sequence number: a keyed hash of the 4-tuple plus
    /// a 4 µs clock.
    pub(crate) fn isn(&self, now: Instant, local: SocketAddr, remote: SocketAddr) -> Seq {
        let clock = (now.total_micros() / 4) as u32;
        TcpSeqNumber((self.secret.hash_one((local, remote)) as u32).wrapping_add(clock) as i32)
    }

    /// Per-connection timestamp offset (Linux `ts_off`: a keyed hash of
    /// the addresses, so the clock is not exposed).
    pub(crate) fn ts_off(&self, local: SocketAddr, remote: SocketAddr) -> u32 {
        self.secret.hash_one((remote, local, 0x75u8)) as u32
    }

    /// Our timestamp clock (ms) for a connection.
    #[inline]
    pub(crate) fn tsval(now: Instant, off: u32) -> u32 {
        (now.total_millis() as u32).wrapping_add(off)
    }

    /// Window scale we use: the smallest shift that lets `tcp_rmem` be
    /// advertised (RFC 7323 §2.3, at most 14).
    pub(crate) fn our_wscale(&self) -> u8 {
        let mut s = 0u8;
        while s < 14 && (self.lim.rmem >> s) > 65535 {
            s += 1;
        }
        s
    }

    pub(crate) fn new_tcb(
        &self,
        now: Instant,
        state: TcpState,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Tcb {
        let zero = TcpSeqNumber(0);
        let mss = default_mss(remote.is_ipv6());
        Tcb {
            state,
            local,
            remote,
            iss: zero,
            snd_una: zero,
            snd_nxt: zero,
            snd_max: zero,
            snd_wnd: 0,
            max_wnd: 0,
            snd_wl1: zero,
            snd_wl2: zero,
            irs: zero,
            rcv_nxt: zero,
            rcv_wnd_adv: 0,
            mss,
            pmtu: 0,
            snd_wscale: 0,
            rcv_wscale: 0,
            ws_ok: false,
            sack_ok: false,
            ts_ok: false,
            nodelay: true,
            linger0: false,
            orphan: false,
            fin_queued: false,
            fin_acked: false,
            rcv_fin: false,
            rd_shut: false,
            want_writable: false,
            syn_rexmit: false,
            ts_recent: 0,
            ts_recent_at: now,
            ts_off: self.ts_off(local, remote),
            sndbuf: SendBuf::new(self.lim.wmem),
            rcvbuf: RecvBuf::new(self.lim.rmem),
            rtt: RttEstimator::new(
                Duration::from_secs(1),
                Duration::from_millis(200),
                Duration::from_secs(120),
            ),
            cc: Congestion::new(self.cc_kind, mss as u32, now),
            sacks: Scoreboard::new(),
            rtt_seq: TcpSeqNumber(0),
            rtt_at: At::NONE,
            recover: None,
            high_rxt: zero,
            dupacks: 0,
            retries: 0,
            probes: 0,
            ack_pending: 0,
            cork: 0,
            quickack: QUICKACKS,
            keepalive_us: NO_KEEPALIVE,
            last_rcv: now,
            last_snd: now,
            rto_at: At::NONE,
            delack_at: At::NONE,
            probe_at: At::NONE,
            keep_at: At::NONE,
            fin_at: At::NONE,
            armed: At::NONE,
            err: None,
            parent: None,
            listen: None,
        }
    }
}

/// RFC 9293 §3.7.1 default send MSS when the peer sends no option (536 for
/// IPv4, 1220 for IPv6).
pub(crate) fn default_mss(v6: bool) -> u16 {
    if v6 { 1220 } else { 536 }
}

impl Tcb {
    /// Bytes sent and not yet acknowledged (SYN and FIN included).
    #[inline]
    pub(crate) fn in_flight(&self) -> u32 {
        seq_diff(self.snd_nxt, self.snd_una).max(0) as u32
    }

    /// The window to advertise (bytes): the free receive space (what the
    /// receive buffer will take), at most what the scale can express.
    pub(crate) fn rcv_window(&self) -> u32 {
        (self.rcvbuf.window() as u32).min(65535u32 << self.rcv_wscale)
    }
}

/// A TCP socket borrowed from the stack ([`Stack::tcp`]).
pub struct TcpSocketMut<'a> {
    pub(crate) stack: &'a mut Stack,
    pub(crate) slot: u32,
    handle: TcpHandle,
    local: SocketAddr,
    remote: SocketAddr,
    /// close() / abort() was called through this view.
    gone: bool,
}

impl Stack {
    /// `listen(2)` on `addr` (unspecified or one of ours; port required).
    /// One listener per (family, port). `backlog` bounds the accept queue
    /// (capped at 4096 like `somaxconn`) and, with `tcp_syn_backlog_max`,
    /// the SYN queue.
    pub fn tcp_listen(&mut self, addr: SocketAddr, backlog: usize) -> Result<TcpHandle, TcpError> {
        self.tcp_check_local(addr.ip())?;
        if addr.port() == 0 {
            return Err(TcpError::AddrNotAvailable);
        }
        let key = (addr.is_ipv6(), addr.port());
        if self.tcp.listeners.contains_key(&key) {
            return Err(TcpError::AddrInUse);
        }
        if self.tcp.count >= self.tcp.lim.max_conns {
            return Err(TcpError::TooManyConnections);
        }
        let now = self.tcp.now;
        let unspec = SocketAddr::new(
            if addr.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            0,
        );
        let mut t = self.tcp.new_tcb(now, TcpState::Listen, addr, unspec);
        let backlog = backlog.clamp(1, SOMAXCONN);
        t.listen = Some(Box::new(ListenQ {
            backlog,
            syn_max: backlog.min(self.tcp.lim.syn_backlog_max).max(1),
            ..ListenQ::default()
        }));
        let slot = self.tcp.insert(t);
        self.tcp.listeners.insert(key, slot);
        Ok(self.tcp.handle(slot))
    }

    /// `connect(2)`: sends the SYN now. `local` None (or port 0) picks
    /// our address and an ephemeral port no other connection uses.
    pub fn tcp_connect(
        &mut self,
        now: Instant,
        local: Option<SocketAddr>,
        remote: SocketAddr,
    ) -> Result<TcpHandle, TcpError> {
        self.tcp.now = now;
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return Err(TcpError::AddrNotAvailable);
        }
        let ip = match local.map(|l| l.ip()) {
            Some(ip) if !ip.is_unspecified() => {
                self.tcp_check_local(ip)?;
                if ip.is_ipv6() != remote.is_ipv6() {
                    return Err(TcpError::AddrNotAvailable);
                }
                ip
            }
            _ => match remote.ip() {
                IpAddr::V4(d) => IpAddr::V4(self.src_for_v4(d).ok_or(TcpError::HostUnreachable)?),
                IpAddr::V6(d) => IpAddr::V6(self.src_for_v6(d).ok_or(TcpError::HostUnreachable)?),
            },
        };
        if self.tcp.count >= self.tcp.lim.max_conns {
            return Err(TcpError::TooManyConnections);
        }
        let port = match local.map(|l| l.port()).unwrap_or(0) {
            0 => self.tcp_ephemeral(remote.is_ipv6())?,
            p => {
                let t = (SocketAddr::new(ip, p), remote);
                if self.tcp.conns.contains_key(&ConnKey::new(t.0, t.1))
                    || self.tcp.tw.lookup(&t).is_some()
                {
                    return Err(TcpError::AddrInUse);
                }
                p
            }
        };
        let local = SocketAddr::new(ip, port);
        let mut t = self.tcp.new_tcb(now, TcpState::SynSent, local, remote);
        t.iss = self.tcp.isn(now, local, remote);
        t.snd_una = t.iss;
        t.snd_nxt = t.iss;
        t.snd_max = t.iss;
        t.rcv_wscale = self.tcp.our_wscale();
        t.mss = self.tcp_route_mss(remote.is_ipv6());
        let slot = self.tcp.insert(t);
        self.tcp.conns.insert(ConnKey::new(local, remote), slot);
        self.tcp.port_ref(local);
        self.counters.inc(Mib::TcpActiveOpens);
        self.tcp_send_syn(now, slot);
        self.tcp_arm(slot);
        Ok(self.tcp.handle(slot))
    }

    /// The socket behind `h`, or None for a closed / stale handle.
    pub fn tcp(&mut self, h: TcpHandle) -> Option<TcpSocketMut<'_>> {
        let slot = self.tcp.slot_of(h)?;
        let t = self.tcp.get(slot)?;
        let (local, remote) = (t.local, t.remote);
        Some(TcpSocketMut {
            stack: self,
            slot,
            handle: h,
            local,
            remote,
            gone: false,
        })
    }

    /// TCP connections, listeners and TIME_WAIT buckets (for tests and
    /// metrics).
    pub fn tcp_table(&self) -> &TcpTable {
        &self.tcp
    }

    fn tcp_check_local(&self, ip: IpAddr) -> Result<(), TcpError> {
        let ours = ip.is_unspecified()
            || match ip {
                IpAddr::V4(a) => self.is_our_v4(a),
                IpAddr::V6(a) => self.is_our_v6(a),
            };
        if ours {
            Ok(())
        } else {
            Err(TcpError::AddrNotAvailable)
        }
    }

    /// An ephemeral port no connection, TIME_WAIT bucket or listener of the
    /// family uses (Linux `inet_hash_connect` with a random start).
    fn tcp_ephemeral(&mut self, v6: bool) -> Result<u16, TcpError> {
        let t = &mut self.tcp;
        let (ports, listeners) = (&t.ports, &t.listeners);
        self.cfg
            .shard
            .pick_ephemeral(&mut t.next_ephemeral, |p| {
                !ports.contains_key(&(v6, p)) && !listeners.contains_key(&(v6, p))
            })
            .ok_or(TcpError::AddrNotAvailable)
    }

    /// The send MSS the route allows: link MTU − IP − TCP headers.
    pub(crate) fn tcp_route_mss(&self, v6: bool) -> u16 {
        mss_for_mtu(self.cfg.mtu, v6)
    }

    /// Report an event for a connection the application still holds.
    pub(crate) fn tcp_event(&mut self, slot: u32, f: fn(TcpHandle) -> SocketEvent) {
        if self
            .tcp
            .get(slot)
            .is_some_and(|t| !t.orphan && t.parent.is_none())
        {
            let h = self.tcp.handle(slot);
            self.push_event(f(h));
        }
    }

    /// Free a slot for good: out of the demux table and the wheel, buffers
    /// released, the handle invalid.
    pub(crate) fn tcp_free(&mut self, slot: u32) {
        let Some(t) = self.tcp.slots.get_mut(slot as usize).and_then(|s| s.take()) else {
            return;
        };
        self.tcp.count -= 1;
        self.tcp.gens[slot as usize] = self.tcp.gens[slot as usize].wrapping_add(1);
        self.tcp.free.push(slot);
        self.tcp.wheel.cancel(TimerKey::Conn(slot));
        if t.state == TcpState::Listen {
            let k = (t.local.is_ipv6(), t.local.port());
            if self.tcp.listeners.get(&k) == Some(&slot) {
                self.tcp.listeners.remove(&k);
            }
        } else if self.tcp.conns.get(&ConnKey::new(t.local, t.remote)) == Some(&slot) {
            self.tcp.conns.remove(&ConnKey::new(t.local, t.remote));
            self.tcp.port_unref(t.local);
        }
        if let Some(p) = t.parent {
            self.tcp_unlink_child(p, slot);
        }
    }

    /// Remove `child` from its listener's queues.
    pub(crate) fn tcp_unlink_child(&mut self, parent: u32, child: u32) {
        if let Some(q) = self.tcp.get_mut(parent).and_then(|l| l.listen.as_mut()) {
            if let Some(i) = q.syn.iter().position(|&c| c == child) {
                q.syn.swap_remove(i);
            }
            if let Some(i) = q.accept.iter().position(|&c| c == child) {
                q.accept.remove(i);
            }
        }
    }

    /// Linux `tcp_set_state`: the state change with its counters
    /// (CurrEstab, EstabResets are counted by the callers that reset).
    /// Entering ESTABLISHED after a retransmitted SYN / SYN-ACK starts
    /// with an initial window of one segment and an RTO of 3 s (Linux
    /// `tcp_init_transfer`).
    pub(crate) fn tcp_set_state(&mut self, slot: u32, new: TcpState) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let old = t.state;
        t.state = new;
        if new == TcpState::Established && t.syn_rexmit {
            t.syn_rexmit = false;
            t.rtt.syn_retransmitted();
            t.cc.syn_retransmitted();
        }
        let estab = |s: TcpState| matches!(s, TcpState::Established | TcpState::CloseWait);
        if estab(new) && !estab(old) {
            self.counters.inc(Mib::TcpCurrEstab);
        } else if estab(old) && !estab(new) {
            self.counters.dec(Mib::TcpCurrEstab);
        }
    }
}

impl TcpSocketMut<'_> {
    /// The connection, unless close() / abort() on this view let it go.
    fn tcb(&self) -> Option<&Tcb> {
        if self.gone {
            return None;
        }
        self.stack.tcp.get(self.slot)
    }

    fn tcb_mut(&mut self) -> Option<&mut Tcb> {
        if self.gone {
            return None;
        }
        self.stack.tcp.get_mut(self.slot)
    }

    pub fn handle(&self) -> TcpHandle {
        self.handle
    }

    /// Take the oldest established connection of a listener. Data (or a
    /// FIN) that arrived before accept is announced with TcpReadable.
    pub fn accept(&mut self) -> Option<(TcpHandle, SocketAddr)> {
        let child = self.tcb_mut()?.listen.as_mut()?.accept.pop_front()?;
        let t = self.stack.tcp.get_mut(child)?;
        t.parent = None;
        let remote = t.remote;
        let readable = t.rcvbuf.readable() > 0 || t.rcv_fin;
        let h = self.stack.tcp.handle(child);
        if readable {
            self.stack.push_event(SocketEvent::TcpReadable(h));
        }
        Some((h, remote))
    }

    /// Queue `data` for sending (sent at once as far as the windows allow).
    /// WouldBlock when the send buffer is full; a TcpWritable event follows
    /// when space frees. A pending error is returned first (once), then
    /// BrokenPipe once the connection is closed or shut down for writing.
    pub fn send(&mut self, data: &[u8]) -> Result<usize, TcpError> {
        let now = self.stack.tcp.now;
        let slot = self.slot;
        let t = self.tcb_mut().ok_or(TcpError::InvalidHandle)?;
        if let Some(e) = t.err.take() {
            return Err(e);
        }
        match t.state {
            TcpState::Listen => return Err(TcpError::NotConnected),
            TcpState::SynSent
            | TcpState::SynReceived
            | TcpState::Established
            | TcpState::CloseWait
                if !t.fin_queued => {}
            _ => return Err(TcpError::BrokenPipe),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = t.sndbuf.write(data);
        if n == 0 {
            t.want_writable = true;
            return Err(TcpError::WouldBlock);
        }
        if t.state.is_synchronized() {
            if self.stack.tcp.corked {
                self.stack.tcp_cork_mark(slot, CORK_PUSH);
            } else {
                self.stack.tcp_write_xmit(now, slot);
                self.stack.tcp_arm(slot);
            }
        }
        Ok(n)
    }

    /// Read received bytes. Ok(0): the peer sent FIN (or shutdown(read),
    /// or the connection closed in order); a pending error is returned
    /// once when nothing is left to read.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        let slot = self.slot;
        let t = self.tcb_mut().ok_or(TcpError::InvalidHandle)?;
        if t.state == TcpState::Listen {
            return Err(TcpError::NotConnected);
        }
        if t.rd_shut {
            return Ok(0);
        }
        if t.rcvbuf.readable() == 0 {
            if let Some(e) = t.err.take() {
                return Err(e);
            }
            return match t.state {
                _ if t.rcv_fin => Ok(0),
                TcpState::Closed | TcpState::TimeWait => Ok(0),
                _ => Err(TcpError::WouldBlock),
            };
        }
        let n = t.rcvbuf.read(buf);
        let after = t.rcvbuf.window() as u32;
        let mss = t.mss as u32;
        let adv = t.rcv_wnd_adv;
        let sync = t.state.is_synchronized() && !t.rcv_fin;
        // Linux tcp_cleanup_rbuf: announce a window that opened by two
        // segments, or reopened from below one segment.
        if sync && (after >= adv + 2 * mss || (adv < mss && after >= mss)) {
            let now = self.stack.tcp.now;
            self.stack.tcp_send_ack(now, slot);
            self.stack.tcp_arm(slot);
        }
        Ok(n)
    }

    /// `close(2)` (seed 004 `tcp_close`): unread data → RST; linger 0 →
    /// RST; otherwise the FIN state table, the FIN after the queued data.
    /// The handle is invalid afterwards (this view answers as CLOSED).
    pub fn close(&mut self) {
        if self.tcb().is_some() {
            let now = self.stack.tcp.now;
            self.stack.tcp_close(now, self.slot);
        }
        self.gone = true;
    }

    /// Abort: RST now (for synchronized states), free the connection.
    pub fn abort(&mut self) {
        if self.tcb().is_some() {
            let now = self.stack.tcp.now;
            self.stack.tcp_abort(now, self.slot, true);
        }
        self.gone = true;
    }

    /// shutdown(write) sends FIN after the queued data; shutdown(read)
    /// only stops reads (data still arriving is ACKed and dropped).
    pub fn shutdown(&mut self, how: Shutdown) {
        let now = self.stack.tcp.now;
        let Some(t) = self.tcb_mut() else {
            return;
        };
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            t.rd_shut = true;
            t.rcvbuf.clear();
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.stack.tcp_shutdown_write(now, self.slot);
        }
    }

    /// SO_LINGER with a zero timeout: close() aborts with RST.
    pub fn set_linger_zero(&mut self, on: bool) {
        if let Some(t) = self.tcb_mut() {
            t.linger0 = on;
        }
    }

    /// SO_KEEPALIVE with `TCP_KEEPIDLE` = idle (probes every 75 s, 9 of
    /// them, then ETIMEDOUT).
    pub fn set_keepalive(&mut self, idle: Option<Duration>) {
        let now = self.stack.tcp.now;
        let Some(t) = self.tcb_mut() else {
            return;
        };
        t.set_keepalive(idle);
        t.probes = 0;
        t.keep_at = At::from(idle.map(|d| now + d));
        self.stack.tcp_arm(self.slot);
    }

    /// TCP_NODELAY (on by default).
    pub fn set_nodelay(&mut self, on: bool) {
        if let Some(t) = self.tcb_mut() {
            t.nodelay = on;
        }
    }

    pub fn state(&self) -> TcpState {
        self.tcb().map_or(TcpState::Closed, |t| t.state)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Bytes queued for sending (unsent + unacknowledged).
    pub fn send_queue(&self) -> usize {
        self.tcb().map_or(0, |t| t.sndbuf.len())
    }

    /// Bytes ready to read.
    pub fn recv_queue(&self) -> usize {
        self.tcb().map_or(0, |t| t.rcvbuf.readable())
    }

    /// Free space in the send buffer.
    pub fn send_capacity(&self) -> usize {
        self.tcb().map_or(0, |t| t.sndbuf.free())
    }

    /// Take the pending error (`SO_ERROR`).
    pub fn take_error(&mut self) -> Option<TcpError> {
        self.tcb_mut()?.err.take()
    }
}
