//! The embedded userspace IPv4/IPv6/ICMP/UDP stack used in `afpacket` mode
//! (SPEC B). Sans-IO like smoltcp and quinn-proto: [`Stack::receive_frame`]
//! takes one Ethernet frame and the time, [`Stack::poll`] runs the timers,
//! and outgoing frames are taken with [`Stack::pop_tx`]. Socket readiness is
//! reported through [`Stack::poll_event`]. The only I/O lives in
//! [`device`] (the AF_PACKET socket) and [`driver`] (the thread that moves
//! frames between a device and the stack).
//!
//! Receive path, named after Linux (seeds 001, 002, 004):
//!
//! ```text
//! receive_frame → eth_rcv ─┬─ arp_rcv
//!                          ├─ ip_rcv → ip_rcv_finish → ip_local_deliver → ip_local_deliver_finish ─┐
//!                          └─ ipv6_rcv → ip6_rcv_finish → ip6_input_finish ─────────────────────────┤
//!                                                        udp_rcv / icmp_rcv / icmpv6_rcv (+ ndisc_rcv)
//! ```
//!
//! Packet layouts and checksums come from `smoltcp::wire`; this module owns
//! the behaviour (what is dropped, counted, answered).
//!
//! In afpacket mode with several workers, one `Stack` runs per shard
//! ([`StackConfig::shard`], [`shard`]): ephemeral ports are partitioned by
//! `port % count`, and the shared control frames (ARP, NDP, ICMP errors) one
//! shard receives are replicated to the others ([`Stack::pop_replica`] →
//! [`Stack::receive_replica`]).

pub mod arp;
pub mod csum;
pub mod device;
pub mod driver;
pub mod ethernet;
pub mod frag;
pub mod hooks;
pub mod icmp;
pub mod icmpv6;
pub mod ip_options;
pub mod ipv4;
pub mod ipv6;
pub mod mib;
pub mod mld;
pub mod ndp;
pub mod neigh;
pub mod shard;
pub mod tcp;
pub mod timer_wheel;
pub mod udp;

#[cfg(test)]
mod pair_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IPV6_LINK_LOCAL_ALL_NODES;
pub use smoltcp::wire::{EthernetAddress, Ipv4Cidr, Ipv6Cidr};

pub use hooks::{HookPoint, PacketFilter, Verdict};
pub use mib::{Counters, DropReason, Mib};
pub use shard::{REPLICA_OUTBOX_MAX, is_shared_control};
pub use tcp::{Shutdown, TcpError, TcpHandle, TcpSocketMut, TcpState};
pub use udp::{UdpDatagram, UdpHandle};

/// Lower `earliest` to `at` if that is sooner: how a timer is folded into
/// a kept or computed "next deadline" (the neighbour cache, the timer
/// wheel).
pub(crate) fn take_earlier(earliest: &mut Option<Instant>, at: Instant) {
    *earliest = Some(earliest.map_or(at, |t| t.min(at)));
}

/// Linux `sll_pkttype` of a received frame (`PACKET_HOST` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Host,
    Broadcast,
    Multicast,
    /// Addressed to another MAC (seen because of promiscuous membership).
    /// Note: when the stack owns a MAC other than the interface's, the
    /// kernel reports frames to *our* MAC as OTHERHOST too, so `eth_rcv`
    /// classifies by destination MAC itself and uses this only as a hint.
    OtherHost,
    /// A frame this host sent (looped back by the kernel).
    Outgoing,
}

/// What the kernel says about the L4 checksum of a received frame
/// (PACKET_AUXDATA `tp_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// Nothing known: verify it.
    Unverified,
    /// `TP_STATUS_CSUMNOTREADY`: the sender (e.g. a veth peer) left the L4
    /// checksum to offload; the field holds only the pseudo-header sum. Do
    /// not verify it (DESIGN.md "Known traps").
    NotReady,
    /// `TP_STATUS_CSUM_VALID`: the kernel or NIC already verified it.
    Valid,
}

/// Per-frame metadata from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    pub pkt_type: PacketType,
    pub l4_csum: RxChecksum,
}

impl RxMeta {
    /// A frame addressed to us with nothing known about its checksums.
    pub const HOST: RxMeta = RxMeta {
        pkt_type: PacketType::Host,
        l4_csum: RxChecksum::Unverified,
    };

    /// Whether the L4 (UDP/TCP/ICMP) checksum must be verified in software.
    #[inline]
    pub fn verify_l4_csum(&self) -> bool {
        self.l4_csum == RxChecksum::Unverified
    }
}

/// Bounds on every table and queue (DESIGN.md: "every buffer, queue, table
/// and reassembly list has a configured cap").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Neighbour (ARP + NDP) cache entries.
    pub neigh_entries: usize,
    /// Bytes of packets queued per unresolved neighbour (Linux
    /// `unres_qlen_bytes`); the oldest are dropped beyond it.
    pub neigh_pending_bytes: usize,
    /// How long a resolved neighbour is trusted before re-resolving.
    pub neigh_reachable: Duration,
    /// Interval between solicitations for an unresolved neighbour.
    pub neigh_retrans: Duration,
    /// Solicitations before an unresolved neighbour's queue is dropped.
    pub neigh_retries: u32,
    /// Bytes held by incomplete IPv4 datagrams (Linux `ipfrag_high_thresh`).
    pub frag4_mem: usize,
    /// Bytes held by incomplete IPv6 datagrams.
    pub frag6_mem: usize,
    /// IPv4 reassembly timeout (Linux `ipfrag_time`, 30 s).
    pub frag4_timeout: Duration,
    /// IPv6 reassembly timeout (RFC 8200 §4.5, 60 s).
    pub frag6_timeout: Duration,
    /// ICMP errors per second across all destinations (Linux
    /// `icmp_msgs_per_sec`) and the burst allowed (`icmp_msgs_burst`).
    pub icmp_msgs_per_sec: u32,
    pub icmp_msgs_burst: u32,
    /// Minimum interval between ICMP errors to one destination after a
    /// burst of 6 (Linux `icmp_ratelimit`, 1000 ms); 0 disables it.
    pub icmp_ratelimit_ms: u32,
    /// Open UDP sockets.
    pub udp_sockets: usize,
    /// Datagrams queued per UDP socket before RcvbufErrors.
    pub udp_rx_queue: usize,
    /// Frames waiting in the stack's transmit queue.
    pub tx_queue: usize,
    /// TCP connections (listeners and half-open ones included; TIME_WAIT
    /// buckets not). connect() fails with TooManyConnections and SYNs get
    /// cookies (or are dropped) beyond it. `[stack.limits] tcp_max_conns`.
    pub tcp_max_conns: usize,
    /// Upper bound of every listener's SYN queue (Linux
    /// `tcp_max_syn_backlog`; the queue is min(backlog, this)). Beyond it:
    /// SYN cookies, or drops without them. `tcp_syn_backlog_max`.
    pub tcp_syn_backlog_max: usize,
    /// TIME_WAIT buckets (Linux `tcp_max_tw_buckets`); beyond it a closing
    /// connection skips TIME_WAIT (TCPTimeWaitOverflow). `tcp_max_tw_buckets`.
    pub tcp_max_tw_buckets: usize,
    /// Receive buffer cap per connection, bytes (Linux `tcp_rmem` max); it
    /// also sets the window scale we offer. Allocated on first data,
    /// released when read. `tcp_rmem`.
    pub tcp_rmem: usize,
    /// Send buffer cap per connection, bytes (Linux `tcp_wmem` max); send()
    /// returns WouldBlock beyond it. `tcp_wmem`.
    pub tcp_wmem: usize,
    /// How long an orphaned connection waits in FIN_WAIT_2 for the peer's
    /// FIN (Linux `tcp_fin_timeout`, 60 s). `tcp_fin_timeout_secs`.
    pub tcp_fin_timeout: Duration,
    /// TIME_WAIT length, 2·MSL (Linux `TCP_TIMEWAIT_LEN`, 60 s).
    /// `tcp_time_wait_secs`.
    pub tcp_time_wait: Duration,
    /// SYN cookies when a SYN queue overflows (Linux `tcp_syncookies = 1`).
    /// `tcp_syncookies`.
    pub tcp_syncookies: bool,
    /// RFC 5961 challenge ACKs per second, stack-wide (Linux
    /// `tcp_challenge_ack_limit`, 1000). `tcp_challenge_ack_limit`.
    pub tcp_challenge_ack_limit: u32,
    /// RTO retransmissions (and unanswered zero-window probes) before a
    /// connection fails with ETIMEDOUT (Linux `tcp_retries2`, 15).
    /// `tcp_retries2`.
    pub tcp_retries2: u8,
    /// SYN retransmissions of connect() before ETIMEDOUT (Linux
    /// `tcp_syn_retries`, 6). `tcp_syn_retries`.
    pub tcp_syn_retries: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            neigh_entries: 1024,
            neigh_pending_bytes: 212_992,
            neigh_reachable: Duration::from_secs(30),
            neigh_retrans: Duration::from_secs(1),
            neigh_retries: 3,
            frag4_mem: 4 << 20,
            frag6_mem: 4 << 20,
            frag4_timeout: Duration::from_secs(30),
            frag6_timeout: Duration::from_secs(60),
            icmp_msgs_per_sec: 1000,
            icmp_msgs_burst: 50,
            icmp_ratelimit_ms: 1000,
            udp_sockets: 1024,
            udp_rx_queue: 4096,
            tx_queue: 8192,
            tcp_max_conns: 65536,
            tcp_syn_backlog_max: 4096,
            tcp_max_tw_buckets: 65536,
            tcp_rmem: 256 * 1024,
            tcp_wmem: 256 * 1024,
            tcp_fin_timeout: Duration::from_secs(60),
            tcp_time_wait: Duration::from_secs(60),
            tcp_syncookies: true,
            tcp_challenge_ack_limit: 1000,
            tcp_retries2: 15,
            tcp_syn_retries: 6,
        }
    }
}

/// The stack's identity on the link and its limits.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: EthernetAddress,
    pub ipv4: Option<Ipv4Cidr>,
    pub ipv6: Option<Ipv6Cidr>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// IP MTU of the link (bytes after the Ethernet header).
    pub mtu: usize,
    pub limits: Limits,
    /// Which shard of the interface this stack is (afpacket fan-out, issue
    /// 9); the default is the only one.
    pub shard: ShardId,
    /// The device completes UDP / TCP checksums ([`csum`]): frames leave
    /// with the pseudo-header sum only. Set only for a device that does
    /// (afpacket with `PACKET_VNET_HDR`); off by default.
    pub tx_csum_offload: bool,
}

/// The local ports connect() and bind(port 0) pick from (Linux
/// `ip_local_port_range`), shared by TCP and UDP. With N shards, shard i
/// uses only the ports p with p % N == i, so the fan-out program can steer
/// replies to an outbound connection back to it by port.
pub const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// One stack among `count` copies on one interface (all with the same MAC
/// and addresses), fed by a PACKET_FANOUT group: TCP/UDP to a local port in
/// [`EPHEMERAL`] go to shard `port % count`, everything else to shard
/// `hash(source) % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId {
    pub index: u16,
    pub count: u16,
}

impl Default for ShardId {
    fn default() -> Self {
        ShardId::SINGLE
    }
}

impl ShardId {
    /// The only shard (no fan-out).
    pub const SINGLE: ShardId = ShardId { index: 0, count: 1 };

    /// More than one shard?
    #[inline]
    pub fn is_sharded(self) -> bool {
        self.count > 1
    }

    /// Does a local port in the ephemeral range belong to this shard?
    /// (Ports outside [`EPHEMERAL`] belong to every shard.) A count of 0
    /// is treated as 1.
    #[inline]
    pub fn owns_port(self, port: u16) -> bool {
        self.count <= 1
            || !EPHEMERAL.contains(&port)
            || device::steer::shard_of_port(port, self.count) == self.index
    }

    /// A free ephemeral port of this shard, searched from `*cursor` over
    /// the shard's part of [`EPHEMERAL`] (each port once); `*cursor` moves
    /// past the port taken. `free` says whether a port is unused. None when
    /// every port of the shard is in use (or it owns none).
    pub(crate) fn pick_ephemeral(
        self,
        cursor: &mut u16,
        mut free: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let mut p = self.align_ephemeral(*cursor)?;
        for _ in 0..self.ephemeral_ports() {
            let next = self.next_ephemeral(p)?;
            if free(p) {
                *cursor = next;
                return Some(p);
            }
            p = next;
        }
        None
    }

    /// The first ephemeral port of this shard at or after `p` (wrapping to
    /// the start of the range), `p` clamped into [`EPHEMERAL`]. None when
    /// the shard owns no port of the range (more shards than ports).
    fn align_ephemeral(self, p: u16) -> Option<u16> {
        let (lo, hi) = (*EPHEMERAL.start() as u32, *EPHEMERAL.end() as u32);
        let n = self.count.max(1) as u32;
        let i = self.index as u32 % n;
        let up = |p: u32| p + (i + n - p % n) % n;
        let q = up((p as u32).clamp(lo, hi));
        let q = if q <= hi { q } else { up(lo) };
        (q <= hi).then_some(q as u16)
    }

    /// The ephemeral port of this shard after `p` (wrapping), or None.
    #[inline]
    fn next_ephemeral(self, p: u16) -> Option<u16> {
        let n = self.count.max(1) as u32;
        let q = p as u32 + n;
        if q <= *EPHEMERAL.end() as u32 {
            Some(q as u16)
        } else {
            self.align_ephemeral(*EPHEMERAL.start())
        }
    }

    /// How many ephemeral ports this shard owns.
    pub fn ephemeral_ports(self) -> u32 {
        let hi = *EPHEMERAL.end() as u32;
        let n = self.count.max(1) as u32;
        match self.align_ephemeral(*EPHEMERAL.start()) {
            Some(first) => (hi - first as u32) / n + 1,
            None => 0,
        }
    }

    /// `count` 0 → 1, `index` reduced modulo `count`.
    fn normalized(self) -> ShardId {
        let count = self.count.max(1);
        ShardId {
            index: self.index % count,
            count,
        }
    }
}

impl StackConfig {
    pub fn new(mac: EthernetAddress) -> Self {
        StackConfig {
            mac,
            ipv4: None,
            ipv6: None,
            gateway4: None,
            gateway6: None,
            mtu: 1500,
            limits: Limits::default(),
            shard: ShardId::SINGLE,
            tx_csum_offload: false,
        }
    }
}

/// A socket-level error, as the kernel would report it through `SO_ERROR`
/// (SPEC B.2: an incoming Destination Unreachable becomes "connection
/// refused" on the socket that sent the offending packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketError {
    pub kind: SocketErrorKind,
    /// The remote the failed packet was sent to.
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketErrorKind {
    /// ICMP port unreachable (ECONNREFUSED).
    ConnectionRefused,
    /// ICMP host unreachable / admin prohibited, or neighbour resolution
    /// failed (EHOSTUNREACH).
    HostUnreachable,
    /// ICMP net unreachable (ENETUNREACH).
    NetUnreachable,
    /// ICMP protocol unreachable (ENOPROTOOPT in Linux's table).
    ProtocolUnreachable,
    /// Fragmentation needed / packet too big (EMSGSIZE).
    MessageTooLong,
}

impl SocketErrorKind {
    pub fn io_kind(self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            SocketErrorKind::ConnectionRefused => K::ConnectionRefused,
            SocketErrorKind::HostUnreachable => K::HostUnreachable,
            SocketErrorKind::NetUnreachable => K::NetworkUnreachable,
            SocketErrorKind::ProtocolUnreachable => K::Unsupported,
            SocketErrorKind::MessageTooLong => K::InvalidInput,
        }
    }
}

/// Errors from the socket API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("address already in use: {0}")]
    AddrInUse(SocketAddr),
    #[error("address not owned by the stack: {0}")]
    AddrNotAvailable(IpAddr),
    #[error("no route to {0}")]
    NetUnreachable(IpAddr),
    #[error("invalid socket handle")]
    BadHandle,
    #[error("too many sockets (limit {0})")]
    TooManySockets(usize),
    #[error("message too long ({0} bytes)")]
    MessageTooLong(usize),
    #[error("transmit queue full")]
    NoBufferSpace,
    #[error("address family mismatch")]
    FamilyMismatch,
}

/// Something a socket user should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEvent {
    /// The UDP socket's receive queue went from empty to non-empty.
    UdpReadable(UdpHandle),
    /// A socket error is pending ([`Stack::udp_take_error`]).
    UdpError(UdpHandle),
    /// A listener has a connection to accept ([`TcpSocketMut::accept`]).
    TcpAcceptable(TcpHandle),
    /// connect() completed: the connection is ESTABLISHED.
    TcpConnected(TcpHandle),
    /// Data arrived on an empty receive queue, or the peer's FIN (recv
    /// then returns 0).
    TcpReadable(TcpHandle),
    /// Send space freed after a send returned WouldBlock.
    TcpWritable(TcpHandle),
    /// The connection is CLOSED: None after an orderly close, else why
    /// (refused, reset, broken pipe, timed out, unreachable). The handle
    /// stays valid until close().
    TcpClosed(TcpHandle, Option<TcpError>),
}

/// A received IP datagram as the layers above IP see it: addresses, the
/// whole datagram (from the IP header; after reassembly) for ICMP quoting,
/// and whether it was sent to a multicast/broadcast address (no ICMP errors
/// about those, SPEC B.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpRx<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The datagram from its IP header on (reassembled if it was fragmented).
    pub packet: &'a [u8],
    /// Destination was broadcast or multicast (link or IP level).
    pub mcast_or_bcast: bool,
    /// Hop limit / TTL as received (NDP requires 255).
    pub hop_limit: u8,
}

/// Writes one fragment's IP header(s) for [`Stack::send_fragments`]:
/// (header bytes, offset, length, more fragments).
pub(crate) type FragHeader<'a> = dyn FnMut(&mut [u8], usize, usize, bool) + 'a;

/// Ethernet header room every outgoing frame buffer starts with; IP output
/// writes the packet after it and `neigh_output` fills it in.
pub const ETH_HDR: usize = 14;

/// The embedded stack. One instance per interface (per shard); run it on one
/// thread.
pub struct Stack {
    pub(crate) cfg: StackConfig,
    /// Our link-local IPv6 address (fe80::/64 + modified EUI-64 of the MAC).
    pub(crate) ll6: Ipv6Addr,
    pub(crate) counters: Arc<Counters>,
    pub(crate) filters: hooks::Filters,
    pub(crate) neigh: neigh::NeighCache,
    pub(crate) ipv4: ipv4::Ipv4State,
    /// The ICMP/ICMPv6 error rate limit (one bucket for both, as Linux).
    pub(crate) icmp: icmp::IcmpState,
    pub(crate) ipv6: ipv6::Ipv6State,
    /// MLD: the pending retransmission of the start-up report.
    pub(crate) mld: mld::MldState,
    pub(crate) frag4: frag::Reassembler,
    pub(crate) frag6: frag::Reassembler,
    pub(crate) udp: udp::UdpTable,
    pub(crate) tcp: tcp::TcpTable,
    tx: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// The upper-layer bytes of a datagram being fragmented (reused).
    frag_scratch: Vec<u8>,
    events: VecDeque<SocketEvent>,
    /// Shared control frames this shard processed, for the other shards
    /// ([`Stack::pop_replica`]); only when sharded, at most
    /// [`REPLICA_OUTBOX_MAX`].
    pub(crate) replicas: VecDeque<(RxMeta, Vec<u8>)>,
    /// Processing a replica ([`Stack::receive_replica`]): learn, never
    /// answer.
    pub(crate) replicating: bool,
    /// While replicating, the real counters (and `counters` is a sink for
    /// the In counters and drops a replica must not add again).
    pub(crate) replica_swap: Arc<Counters>,
}

impl Stack {
    /// A stack with its addresses configured. Queues a gratuitous ARP, an
    /// MLDv2 report for our solicited-node groups (so MLD-snooping switches
    /// forward solicitations to us) and unsolicited neighbour advertisements
    /// so the link learns our MAC. Of N shards sharing the MAC and the
    /// addresses only shard 0 announces (and repeats the MLD report): the
    /// link hears each announcement once.
    pub fn new(mut cfg: StackConfig, now: Instant) -> Stack {
        cfg.shard = cfg.shard.normalized();
        let ll6 = link_local_from_mac(cfg.mac);
        let l = cfg.limits.clone();
        let mut s = Stack {
            ll6,
            counters: Arc::new(Counters::new()),
            filters: hooks::Filters::default(),
            neigh: neigh::NeighCache::new(&l),
            ipv4: ipv4::Ipv4State::default(),
            icmp: icmp::IcmpState::new(&l),
            ipv6: ipv6::Ipv6State::default(),
            mld: mld::MldState::default(),
            frag4: frag::Reassembler::new(l.frag4_mem, l.frag4_timeout),
            frag6: frag::Reassembler::new(l.frag6_mem, l.frag6_timeout),
            udp: udp::UdpTable::new(&l),
            tcp: tcp::TcpTable::new(&l, now),
            tx: VecDeque::new(),
            pool: Vec::new(),
            frag_scratch: Vec::new(),
            events: VecDeque::new(),
            replicas: VecDeque::new(),
            replicating: false,
            replica_swap: Arc::new(Counters::new()),
            cfg,
        };
        if s.cfg.shard.index == 0 {
            s.arp_announce(now);
            s.mld_announce(now);
            s.ndisc_announce(now);
        }
        s
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// The counters, to export (`sipedge_netstack_*`) or inspect.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Our link-local IPv6 address.
    pub fn link_local_v6(&self) -> Ipv6Addr {
        self.ll6
    }

    /// Register a packet filter at the PRE_ROUTING and LOCAL_IN hooks.
    pub fn add_filter(&mut self, f: Box<dyn PacketFilter>) {
        self.filters.push(f);
    }

    /// Process one received Ethernet frame (SPEC B.1 / B.5 entry point).
    ///
    /// As one of several shards, a shared control frame (see
    /// [`is_shared_control`]) is also copied, after processing, to the
    /// replica outbox ([`Stack::pop_replica`]).
    pub fn receive_frame(&mut self, now: Instant, meta: RxMeta, frame: &[u8]) {
        self.eth_rcv(now, meta, frame);
        if self.cfg.shard.is_sharded()
            && meta.pkt_type != PacketType::Outgoing
            && is_shared_control(frame)
        {
            self.replica_keep(meta, frame);
        }
    }

    /// Run timers (reassembly expiry, neighbour retransmission, MLD report
    /// retransmission, the TCP timers). Returns when it next needs to run,
    /// if ever.
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        self.frag4_expire(now);
        self.frag6_expire(now);
        self.neigh_poll(now);
        self.mld_poll(now);
        let tcp = self.tcp_poll(now);
        [
            self.neigh.next_deadline(),
            self.frag4.next_deadline(),
            self.frag6.next_deadline(),
            self.mld.next_deadline(),
            tcp,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next frame to transmit.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Frames waiting to be transmitted.
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Give a transmitted (or received-datagram) buffer back for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < 256 && buf.capacity() >= 1514 && buf.capacity() <= 65536 + 128 {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// The next socket event.
    pub fn poll_event(&mut self) -> Option<SocketEvent> {
        self.events.pop_front()
    }

    // ----- crate-internal helpers shared by the layers -----

    /// A cleared buffer for an outgoing frame, with capacity for `len` bytes.
    pub(crate) fn alloc_frame(&mut self, len: usize) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut b) if b.capacity() >= len => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(len.max(1514)),
        }
    }

    /// Send an upper-layer payload too big for the MTU as fragments, for
    /// both families (Linux `ip_fragment` / `ip6_fragment`): `fill` writes
    /// the `l4_len` bytes once into a scratch buffer, which is cut into
    /// pieces of at most `per` bytes (a multiple of 8); `header` writes each
    /// piece's `hdr_len` bytes of IP header(s) given (offset, length, more
    /// fragments). FragCreates for each piece handed on (as Linux, after
    /// the output succeeded), FragOKs or FragFails once per datagram.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_fragments(
        &mut self,
        now: Instant,
        next_hop: IpAddr,
        l4_len: usize,
        per: usize,
        hdr_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
        header: &mut FragHeader<'_>,
    ) -> Result<(), StackError> {
        let (creates, oks, fails) = if next_hop.is_ipv6() {
            (Mib::Ip6FragCreates, Mib::Ip6FragOKs, Mib::Ip6FragFails)
        } else {
            (Mib::IpFragCreates, Mib::IpFragOKs, Mib::IpFragFails)
        };
        let mut scratch = std::mem::take(&mut self.frag_scratch);
        scratch.clear();
        scratch.resize(l4_len, 0);
        fill(&mut scratch);
        let mut res = Ok(());
        let mut off = 0;
        while off < l4_len {
            let n = per.min(l4_len - off);
            let more = off + n < l4_len;
            let total = ETH_HDR + hdr_len + n;
            let mut f = self.alloc_frame(total);
            f.resize(total, 0);
            header(&mut f[ETH_HDR..ETH_HDR + hdr_len], off, n, more);
            f[ETH_HDR + hdr_len..].copy_from_slice(&scratch[off..off + n]);
            if let Err(e) = self.neigh_output(now, next_hop, f) {
                res = Err(e);
                break;
            }
            self.counters.inc(creates);
            off += n;
        }
        self.frag_scratch = scratch;
        self.counters.inc(if res.is_ok() { oks } else { fails });
        res
    }

    /// Queue a complete Ethernet frame for transmission (counted; dropped
    /// with `TxQueueFull` when the queue is at its cap).
    pub(crate) fn transmit(&mut self, frame: Vec<u8>) -> Result<(), StackError> {
        // Output caused by a replica (packets flushed to a neighbour it
        // resolved) is real: counted on the real counters.
        let c = if self.replicating {
            &self.replica_swap
        } else {
            &self.counters
        };
        if self.tx.len() >= self.cfg.limits.tx_queue {
            c.drop_reason(DropReason::TxQueueFull);
            self.recycle(frame);
            return Err(StackError::NoBufferSpace);
        }
        c.inc(Mib::LinkOutFrames);
        self.tx.push_back(frame);
        Ok(())
    }

    pub(crate) fn push_event(&mut self, ev: SocketEvent) {
        self.events.push_back(ev);
    }

    /// Count a drop: its reason, plus the MIB counter Linux would bump.
    #[inline]
    pub(crate) fn drop_pkt(&self, reason: DropReason, mib: Option<Mib>) {
        self.counters.drop_reason(reason);
        if let Some(m) = mib {
            self.counters.inc(m);
        }
    }

    /// Is `a` our IPv4 unicast address?
    #[inline]
    pub(crate) fn is_our_v4(&self, a: Ipv4Addr) -> bool {
        self.cfg.ipv4.is_some_and(|c| c.address() == a)
    }

    /// Is `a` the broadcast address of our IPv4 subnet (or 255.255.255.255)?
    pub(crate) fn is_v4_broadcast(&self, a: Ipv4Addr) -> bool {
        a.is_broadcast() || self.cfg.ipv4.is_some_and(|c| c.broadcast() == Some(a))
    }

    /// Is `a` one of our IPv6 unicast addresses (global or link-local)?
    #[inline]
    pub(crate) fn is_our_v6(&self, a: Ipv6Addr) -> bool {
        a == self.ll6 || self.cfg.ipv6.is_some_and(|c| c.address() == a)
    }

    /// Is `a` a multicast group we are in (all-nodes, or the solicited-node
    /// group of one of our addresses)?
    pub(crate) fn is_our_v6_multicast(&self, a: Ipv6Addr) -> bool {
        let (g, n) = self.solicited_groups();
        a == IPV6_LINK_LOCAL_ALL_NODES || g[..n].contains(&a)
    }

    /// The multicast groups we are in besides all-nodes: the solicited-node
    /// groups of our link-local and global addresses (one when they share
    /// it). Linux joins them in `addrconf_join_solict`; MLD reports them,
    /// and receive accepts them (IP and Ethernet level).
    pub(crate) fn solicited_groups(&self) -> ([Ipv6Addr; 2], usize) {
        let a = solicited_node(self.ll6);
        match self.cfg.ipv6.map(|c| solicited_node(c.address())) {
            Some(b) if b != a => ([a, b], 2),
            _ => ([a, a], 1),
        }
    }

    /// Source address for a packet to `dst` (our IPv4 address), or None.
    pub(crate) fn src_for_v4(&self, _dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.cfg.ipv4.map(|c| c.address())
    }

    /// Source address for a packet to `dst`: link-local for link-local or
    /// link-scope multicast destinations, else the global address (RFC 6724
    /// scope rule, the only one that matters with two addresses).
    pub(crate) fn src_for_v6(&self, dst: Ipv6Addr) -> Option<Ipv6Addr> {
        let link_scope = dst.is_unicast_link_local()
            || (dst.is_multicast() && (dst.segments()[0] & 0x000f) == 2);
        match (link_scope, self.cfg.ipv6) {
            (true, _) | (false, None) => Some(self.ll6),
            (false, Some(c)) => Some(c.address()),
        }
    }

    /// Next hop for an IPv4 destination: on-link → itself, else the gateway.
    pub(crate) fn next_hop_v4(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let c = self.cfg.ipv4?;
        if c.contains_addr(&dst) || dst.is_broadcast() {
            Some(dst)
        } else {
            self.cfg.gateway4
        }
    }

    /// Next hop for an IPv6 destination: link-local, multicast or on-link →
    /// itself, else the gateway.
    pub(crate) fn next_hop_v6(&self, dst: Ipv6Addr) -> Option<Ipv6Addr> {
        if dst.is_unicast_link_local() || dst.is_multicast() {
            return Some(dst);
        }
        match self.cfg.ipv6 {
            Some(c) if c.contains_addr(&dst) => Some(dst),
            _ => self.cfg.gateway6,
        }
    }

    /// An incoming ICMP/ICMPv6 error quoted a datagram of protocol `proto`
    /// from `src` to `dst` whose transport header starts at `l4`: report it
    /// on the socket that sent it (SPEC B.2), or count it unmatched. Shared
    /// by both families (UDP sockets, TCP connections: `tcp_v4_err`).
    /// `mtu`: the next-hop MTU of a fragmentation-needed / packet-too-big
    /// error (0 if none).
    pub(crate) fn icmp_err_deliver(
        &mut self,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        l4: &[u8],
        kind: SocketErrorKind,
        mtu: u32,
    ) {
        let ours = match src {
            IpAddr::V4(a) => self.is_our_v4(a),
            IpAddr::V6(a) => self.is_our_v6(a),
        };
        let (s, d) = if l4.len() >= 4 {
            (
                SocketAddr::new(src, u16::from_be_bytes([l4[0], l4[1]])),
                SocketAddr::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
            )
        } else {
            (SocketAddr::new(src, 0), SocketAddr::new(dst, 0))
        };
        let matched = ours
            && l4.len() >= 4
            && match proto {
                17 => self.udp_err(s, d, kind),
                6 => self.tcp_v4_err(s, d, l4, kind, mtu),
                _ => false,
            };
        if !matched {
            self.counters.drop_reason(DropReason::IcmpErrorUnmatched);
        }
    }

    /// ICMP/ICMPv6 "destination unreachable" for a received datagram, in the
    /// family it arrived in (`port`: port unreachable, else protocol).
    pub(crate) fn icmp_unreach_for(&mut self, now: Instant, ip: &IpRx<'_>, port: bool) {
        if ip.mcast_or_bcast {
            return;
        }
        match ip.src {
            IpAddr::V4(_) => {
                let code = if port { 3 } else { 2 };
                self.icmp_send(now, ip.packet, 3, code, 0);
            }
            IpAddr::V6(_) => {
                // v6 "protocol unreachable" is Parameter Problem code 1,
                // sent by ipv6.rs itself; here only port unreachable.
                self.icmpv6_send(now, ip.packet, 1, 4, 0);
            }
        }
    }
}

/// fe80::/64 with the modified EUI-64 interface identifier of `mac`
/// (RFC 4291 appendix A).
pub fn link_local_from_mac(mac: EthernetAddress) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet multicast MAC for an IPv6 multicast address (33:33 + low 32).
pub fn multicast_mac_v6(a: Ipv6Addr) -> EthernetAddress {
    let o = a.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// How much of each bounded resource the stack holds (tests and the fuzz
/// target check these never pass their limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub frag4_bytes: usize,
    pub frag6_bytes: usize,
    pub frag_datagrams: usize,
    pub neigh_entries: usize,
    pub tx_frames: usize,
    pub udp_sockets: usize,
    /// TCP connections and listeners (TIME_WAIT not included).
    pub tcp_conns: usize,
    pub tcp_time_wait: usize,
    /// Heap bytes in TCP send and receive buffers.
    pub tcp_buffer_bytes: usize,
    /// Copies in the replica outbox (at most [`REPLICA_OUTBOX_MAX`]).
    pub replica_frames: usize,
}

impl Stack {
    pub fn usage(&self) -> Usage {
        Usage {
            frag4_bytes: self.frag4.mem_used(),
            frag6_bytes: self.frag6.mem_used(),
            frag_datagrams: self.frag4.len() + self.frag6.len(),
            neigh_entries: self.neigh.len(),
            tx_frames: self.tx.len(),
            udp_sockets: self.udp.open(),
            tcp_conns: self.tcp.len(),
            tcp_time_wait: self.tcp.time_wait_len(),
            tcp_buffer_bytes: self.tcp.buffer_bytes(),
            replica_frames: self.replicas.len(),
        }
    }
}
