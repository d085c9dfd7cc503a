//! `[stack]` and `[stack.limits]`: the lower layer (kernel sockets or the
//! embedded userspace stack) and the caps of the embedded stack.

use super::{
    ConfigError, ListenSpec, in_range_usize, int_i64, invalid, non_negative_usize, parse_cidr,
    size_i64,
};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which lower layer carries SIP (`stack.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackMode {
    /// tokio + socket2 kernel sockets (the default).
    Kernel,
    /// The embedded IPv4/IPv6/ICMP/UDP stack over an AF_PACKET socket.
    Afpacket,
}

/// How sipedge closes a TCP connection it releases for bad input (a
/// parse or framing error, an oversize or unframeable message, a message
/// or first-message deadline): `stack.tcp_release`, afpacket mode. An idle,
/// evicted or shut-down connection, and one the peer closed, always gets an
/// orderly FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRelease {
    /// Abort with RST (the default): nothing queued is sent, no FIN_WAIT /
    /// TIME_WAIT state is kept for a misbehaving peer.
    Rst,
    /// Orderly close with FIN after the queued data.
    Fin,
}

impl TcpRelease {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpRelease::Rst => "rst",
            TcpRelease::Fin => "fin",
        }
    }
}

/// Whether the AF_PACKET socket receives through a TPACKET_V3 mmap'd ring
/// (`stack.rx_ring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxRing {
    /// Use the ring; if the kernel refuses it, warn and fall back to one
    /// `recvmsg(2)` per frame (the default).
    Auto,
    /// Use the ring or stop start-up.
    On,
    /// One `recvmsg(2)` per frame (the plain socket).
    Off,
}

impl RxRing {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RxRing::Auto => "auto",
            RxRing::On => "on",
            RxRing::Off => "off",
        }
    }
}

/// Stack shards at most (`stack.workers`; the transaction tables' shard
/// digit bounds it too).
pub const MAX_STACK_WORKERS: usize = 16;

/// `[stack]`: the lower layer. The keys other than `mode` are used in
/// `afpacket` mode only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSettings {
    pub mode: StackMode,
    /// Interface the AF_PACKET socket binds to.
    pub interface: String,
    /// The stack's MAC; `None` = the interface's.
    pub mac: Option<[u8; 6]>,
    /// The stack's IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The stack's IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// IP MTU; 0 = the interface's.
    pub mtu: usize,
    /// How a connection released for bad input is closed.
    pub tcp_release: TcpRelease,
    /// Stack shards (threads, each with its own AF_PACKET socket in one
    /// PACKET_FANOUT group); 0 = one per CPU (see [`Self::shards`]).
    pub workers: usize,
    /// Receive through a TPACKET_V3 ring or the plain socket.
    pub rx_ring: RxRing,
    /// Busy-poll: spin this many microseconds for frames before sleeping in
    /// poll(2) (also `SO_BUSY_POLL`); 0 = off (the default).
    pub busy_poll_us: u32,
    /// Leave UDP / TCP transmit checksums to the kernel (`PACKET_VNET_HDR`;
    /// true, the default) or compute them in the stack (false).
    pub tx_checksum_offload: bool,
    pub limits: StackLimits,
}

/// `[stack.limits]`: caps of the embedded stack's tables and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLimits {
    pub neigh_entries: usize,
    pub neigh_pending_bytes: usize,
    pub frag_mem_bytes: usize,
    pub frag4_timeout_secs: u64,
    pub frag6_timeout_secs: u64,
    pub icmp_msgs_per_sec: u32,
    pub icmp_msgs_burst: u32,
    pub icmp_ratelimit_ms: u32,
    pub udp_rx_queue: usize,
    pub tx_queue: usize,
    /// TCP (the netstack's `Limits` documents each; Linux sysctl names).
    pub tcp_max_conns: usize,
    pub tcp_syn_backlog_max: usize,
    pub tcp_max_tw_buckets: usize,
    pub tcp_rmem: usize,
    pub tcp_wmem: usize,
    pub tcp_fin_timeout_secs: u64,
    pub tcp_time_wait_secs: u64,
    pub tcp_syncookies: bool,
    pub tcp_challenge_ack_limit: u32,
    pub tcp_retries2: u8,
    pub tcp_syn_retries: u8,
    /// TPACKET_V3 receive ring of each shard: block size (a power of two,
    /// a multiple of the page size), number of blocks, and how long the
    /// kernel fills a block before handing it over anyway (ms).
    pub rx_ring_block_bytes: usize,
    pub rx_ring_blocks: usize,
    pub rx_ring_timeout_ms: u32,
}

impl Default for StackSettings {
    /// The built-in defaults (= `etc/sipedge.toml`): kernel sockets.
    fn default() -> Self {
        StackSettings {
            mode: StackMode::Kernel,
            interface: String::new(),
            mac: None,
            ipv4: None,
            ipv6: None,
            gateway4: None,
            gateway6: None,
            mtu: 0,
            tcp_release: TcpRelease::Rst,
            workers: 0,
            rx_ring: RxRing::Auto,
            busy_poll_us: 0,
            tx_checksum_offload: true,
            limits: StackLimits::default(),
        }
    }
}

impl Default for StackLimits {
    /// The embedded stack's own defaults ([`crate::netstack::Limits`]).
    fn default() -> Self {
        let n = crate::netstack::Limits::default();
        StackLimits {
            neigh_entries: n.neigh_entries,
            neigh_pending_bytes: n.neigh_pending_bytes,
            frag_mem_bytes: n.frag4_mem,
            frag4_timeout_secs: n.frag4_timeout.secs(),
            frag6_timeout_secs: n.frag6_timeout.secs(),
            icmp_msgs_per_sec: n.icmp_msgs_per_sec,
            icmp_msgs_burst: n.icmp_msgs_burst,
            icmp_ratelimit_ms: n.icmp_ratelimit_ms,
            udp_rx_queue: n.udp_rx_queue,
            tx_queue: n.tx_queue,
            tcp_max_conns: n.tcp_max_conns,
            tcp_syn_backlog_max: n.tcp_syn_backlog_max,
            tcp_max_tw_buckets: n.tcp_max_tw_buckets,
            tcp_rmem: n.tcp_rmem,
            tcp_wmem: n.tcp_wmem,
            tcp_fin_timeout_secs: n.tcp_fin_timeout.secs(),
            tcp_time_wait_secs: n.tcp_time_wait.secs(),
            tcp_syncookies: n.tcp_syncookies,
            tcp_challenge_ack_limit: n.tcp_challenge_ack_limit,
            tcp_retries2: n.tcp_retries2,
            tcp_syn_retries: n.tcp_syn_retries,
            rx_ring_block_bytes: 1 << 18,
            rx_ring_blocks: 16,
            rx_ring_timeout_ms: 1,
        }
    }
}

impl StackSettings {
    /// The number of stack shards: `workers`, or one per CPU when 0
    /// (at most [`MAX_STACK_WORKERS`]).
    pub fn shards(&self) -> usize {
        let n = if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        n.clamp(1, MAX_STACK_WORKERS)
    }

    /// How each shard's AF_PACKET socket is set up (`rx_ring`, the ring's
    /// sizes from `[stack.limits]`, `busy_poll`).
    pub fn afpacket_options(&self) -> crate::netstack::device::afpacket::AfPacketOptions {
        use crate::netstack::device::afpacket::{AfPacketOptions, RingConfig};
        let l = &self.limits;
        let ring = RingConfig {
            block_bytes: l.rx_ring_block_bytes,
            blocks: l.rx_ring_blocks,
            timeout_ms: l.rx_ring_timeout_ms,
        };
        AfPacketOptions {
            rx_ring: (self.rx_ring != RxRing::Off).then_some(ring),
            ring_required: self.rx_ring == RxRing::On,
            busy_poll_us: self.busy_poll_us,
            tx_csum_offload: self.tx_checksum_offload,
        }
    }

    /// The embedded stack's limits from `[stack.limits]`.
    pub fn netstack_limits(&self) -> crate::netstack::Limits {
        use crate::netstack::Duration;
        let l = &self.limits;
        crate::netstack::Limits {
            neigh_entries: l.neigh_entries,
            neigh_pending_bytes: l.neigh_pending_bytes,
            frag4_mem: l.frag_mem_bytes,
            frag6_mem: l.frag_mem_bytes,
            frag4_timeout: Duration::from_secs(l.frag4_timeout_secs),
            frag6_timeout: Duration::from_secs(l.frag6_timeout_secs),
            icmp_msgs_per_sec: l.icmp_msgs_per_sec,
            icmp_msgs_burst: l.icmp_msgs_burst,
            icmp_ratelimit_ms: l.icmp_ratelimit_ms,
            udp_rx_queue: l.udp_rx_queue,
            tx_queue: l.tx_queue,
            tcp_max_conns: l.tcp_max_conns,
            tcp_syn_backlog_max: l.tcp_syn_backlog_max,
            tcp_max_tw_buckets: l.tcp_max_tw_buckets,
            tcp_rmem: l.tcp_rmem,
            tcp_wmem: l.tcp_wmem,
            tcp_fin_timeout: Duration::from_secs(l.tcp_fin_timeout_secs),
            tcp_time_wait: Duration::from_secs(l.tcp_time_wait_secs),
            tcp_syncookies: l.tcp_syncookies,
            tcp_challenge_ack_limit: l.tcp_challenge_ack_limit,
            tcp_retries2: l.tcp_retries2,
            tcp_syn_retries: l.tcp_syn_retries,
            ..crate::netstack::Limits::default()
        }
    }

    /// The embedded stack's configuration, given the interface's MAC and
    /// MTU (used when `mac` / `mtu` are not set).
    pub fn netstack_config(
        &self,
        iface_mac: [u8; 6],
        iface_mtu: usize,
    ) -> crate::netstack::StackConfig {
        use crate::netstack::{EthernetAddress, Ipv4Cidr, Ipv6Cidr, StackConfig};
        let mut c = StackConfig::new(EthernetAddress(self.mac.unwrap_or(iface_mac)));
        c.ipv4 = self.ipv4.map(|(a, p)| Ipv4Cidr::new(a, p));
        c.ipv6 = self.ipv6.map(|(a, p)| Ipv6Cidr::new(a, p));
        c.gateway4 = self.gateway4;
        c.gateway6 = self.gateway6;
        c.mtu = if self.mtu == 0 { iface_mtu } else { self.mtu };
        c.limits = self.netstack_limits();
        c
    }

    /// Is `ip` one of the stack's addresses?
    pub fn owns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.is_some_and(|(x, _)| x == a),
            IpAddr::V6(a) => self.ipv6.is_some_and(|(x, _)| x == a),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStack {
    mode: String,
    interface: String,
    mac: String,
    ipv4: String,
    ipv6: String,
    gateway4: String,
    gateway6: String,
    mtu: i64,
    tcp_release: String,
    workers: i64,
    rx_ring: String,
    busy_poll: i64,
    tx_checksum_offload: bool,
    limits: RawStackLimits,
}

impl Default for RawStack {
    fn default() -> Self {
        to_raw(&StackSettings::default())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawStackLimits {
    neigh_entries: i64,
    neigh_pending_bytes: i64,
    frag_mem_bytes: i64,
    frag4_timeout_secs: i64,
    frag6_timeout_secs: i64,
    icmp_msgs_per_sec: i64,
    icmp_msgs_burst: i64,
    icmp_ratelimit_ms: i64,
    udp_rx_queue: i64,
    tx_queue: i64,
    tcp_max_conns: i64,
    tcp_syn_backlog_max: i64,
    tcp_max_tw_buckets: i64,
    tcp_rmem: i64,
    tcp_wmem: i64,
    tcp_fin_timeout_secs: i64,
    tcp_time_wait_secs: i64,
    tcp_syncookies: bool,
    tcp_challenge_ack_limit: i64,
    tcp_retries2: i64,
    tcp_syn_retries: i64,
    rx_ring_block_bytes: i64,
    rx_ring_blocks: i64,
    rx_ring_timeout_ms: i64,
}

impl Default for RawStackLimits {
    fn default() -> Self {
        to_raw(&StackSettings::default()).limits
    }
}

pub(super) fn to_raw(s: &StackSettings) -> RawStack {
    let int = int_i64;
    let size = size_i64;
    let opt = |v: Option<String>| v.unwrap_or_default();
    let l = &s.limits;
    RawStack {
        mode: match s.mode {
            StackMode::Kernel => "kernel",
            StackMode::Afpacket => "afpacket",
        }
        .into(),
        interface: s.interface.clone(),
        mac: opt(s.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })),
        ipv4: opt(s.ipv4.map(|(a, p)| format!("{a}/{p}"))),
        ipv6: opt(s.ipv6.map(|(a, p)| format!("{a}/{p}"))),
        gateway4: opt(s.gateway4.map(|a| a.to_string())),
        gateway6: opt(s.gateway6.map(|a| a.to_string())),
        mtu: size(s.mtu),
        tcp_release: s.tcp_release.as_str().into(),
        workers: size(s.workers),
        rx_ring: s.rx_ring.as_str().into(),
        busy_poll: i64::from(s.busy_poll_us),
        tx_checksum_offload: s.tx_checksum_offload,
        limits: RawStackLimits {
            neigh_entries: size(l.neigh_entries),
            neigh_pending_bytes: size(l.neigh_pending_bytes),
            frag_mem_bytes: size(l.frag_mem_bytes),
            frag4_timeout_secs: int(l.frag4_timeout_secs),
            frag6_timeout_secs: int(l.frag6_timeout_secs),
            icmp_msgs_per_sec: i64::from(l.icmp_msgs_per_sec),
            icmp_msgs_burst: i64::from(l.icmp_msgs_burst),
            icmp_ratelimit_ms: i64::from(l.icmp_ratelimit_ms),
            udp_rx_queue: size(l.udp_rx_queue),
            tx_queue: size(l.tx_queue),
            tcp_max_conns: size(l.tcp_max_conns),
            tcp_syn_backlog_max: size(l.tcp_syn_backlog_max),
            tcp_max_tw_buckets: size(l.tcp_max_tw_buckets),
            tcp_rmem: size(l.tcp_rmem),
            tcp_wmem: size(l.tcp_wmem),
            tcp_fin_timeout_secs: int(l.tcp_fin_timeout_secs),
            tcp_time_wait_secs: int(l.tcp_time_wait_secs),
            tcp_syncookies: l.tcp_syncookies,
            tcp_challenge_ack_limit: i64::from(l.tcp_challenge_ack_limit),
            tcp_retries2: i64::from(l.tcp_retries2),
            tcp_syn_retries: i64::from(l.tcp_syn_retries),
            rx_ring_block_bytes: size(l.rx_ring_block_bytes),
            rx_ring_blocks: size(l.rx_ring_blocks),
            rx_ring_timeout_ms: i64::from(l.rx_ring_timeout_ms),
        },
    }
}

/// `"MODE"` → [`StackMode`].
fn parse_mode(key: &str, v: &str) -> Result<StackMode, ConfigError> {
    match v.trim() {
        "kernel" => Ok(StackMode::Kernel),
        "afpacket" => Ok(StackMode::Afpacket),
        other => Err(invalid(key, other, "must be \"kernel\" or \"afpacket\"")),
    }
}

/// `""` → None, else six hex bytes of a unicast MAC.
fn parse_mac(key: &str, v: &str) -> Result<Option<[u8; 6]>, ConfigError> {
    let m = v.trim();
    if m.is_empty() {
        return Ok(None);
    }
    let bad = || invalid(key, m, "must be six hex bytes, e.g. 02:00:5e:00:00:01");
    let parts: Vec<u8> = m
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let mac: [u8; 6] = parts.try_into().map_err(|_| bad())?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(invalid(key, m, "must be a unicast address"));
    }
    Ok(Some(mac))
}

/// `""` → None, else `ADDRESS/PREFIX`.
fn parse_opt_cidr<A: std::str::FromStr>(
    key: &str,
    v: &str,
    max: u8,
) -> Result<Option<(A, u8)>, ConfigError> {
    match v.trim() {
        "" => Ok(None),
        v => parse_cidr::<A>(key, v, max).map(Some),
    }
}

/// `""` → None, else an address.
fn parse_opt_ip<A: std::str::FromStr>(
    key: &str,
    v: &str,
    why: &str,
) -> Result<Option<A>, ConfigError> {
    match v.trim() {
        "" => Ok(None),
        v => v.parse::<A>().map(Some).map_err(|_| invalid(key, v, why)),
    }
}

/// Command-line overrides of `[stack]` (`--stack`, `--iface`, `--ipv4`,
/// `--ipv6`, `--mac`, `--gateway4`, `--gateway6`), so afpacket mode needs
/// no file edit. `None` leaves the file's value; `""` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackOverrides {
    pub mode: Option<String>,
    pub interface: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub mac: Option<String>,
    pub gateway4: Option<String>,
    pub gateway6: Option<String>,
}

impl StackOverrides {
    fn any_address_key(&self) -> Option<&'static str> {
        [
            ("--iface", &self.interface),
            ("--ipv4", &self.ipv4),
            ("--ipv6", &self.ipv6),
            ("--mac", &self.mac),
            ("--gateway4", &self.gateway4),
            ("--gateway6", &self.gateway6),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some())
        .map(|(k, _)| k)
    }

    /// Apply to `s`; errors name the flag. The cross-key rules (listen
    /// addresses, gateways on the prefix) are checked afterwards by
    /// [`crate::config::Config::validate`] and name the config key.
    pub(super) fn apply(&self, s: &mut StackSettings) -> Result<(), ConfigError> {
        if let Some(m) = &self.mode {
            s.mode = parse_mode("--stack", m)?;
        }
        if let Some(i) = &self.interface {
            s.interface = i.trim().to_string();
        }
        if let Some(v) = &self.ipv4 {
            s.ipv4 = parse_opt_cidr::<Ipv4Addr>("--ipv4", v, 32)?;
        }
        if let Some(v) = &self.ipv6 {
            s.ipv6 = parse_opt_cidr::<Ipv6Addr>("--ipv6", v, 128)?;
        }
        if let Some(v) = &self.mac {
            s.mac = parse_mac("--mac", v)?;
        }
        if let Some(v) = &self.gateway4 {
            s.gateway4 = parse_opt_ip::<Ipv4Addr>("--gateway4", v, "not an IPv4 address")?;
        }
        if let Some(v) = &self.gateway6 {
            s.gateway6 = parse_opt_ip::<Ipv6Addr>("--gateway6", v, "not an IPv6 address")?;
        }
        if s.mode == StackMode::Kernel
            && let Some(k) = self.any_address_key()
        {
            return Err(invalid(
                k,
                "",
                "applies to the userspace stack only: add --stack afpacket \
                 (or stack.mode = \"afpacket\" in the file)",
            ));
        }
        Ok(())
    }
}

pub(super) fn from_raw(r: &RawStack) -> Result<StackSettings, ConfigError> {
    let mode = parse_mode("stack.mode", &r.mode)?;
    let mac = parse_mac("stack.mac", &r.mac)?;
    let ipv4 = parse_opt_cidr::<Ipv4Addr>("stack.ipv4", &r.ipv4, 32)?;
    let ipv6 = parse_opt_cidr::<Ipv6Addr>("stack.ipv6", &r.ipv6, 128)?;
    let gateway4 = parse_opt_ip::<Ipv4Addr>("stack.gateway4", &r.gateway4, "not an IPv4 address")?;
    let gateway6 = parse_opt_ip::<Ipv6Addr>("stack.gateway6", &r.gateway6, "not an IPv6 address")?;
    let mtu = match non_negative_usize("stack.mtu", r.mtu)? {
        0 => 0,
        m if (576..=65535).contains(&m) => m,
        _ => {
            return Err(invalid(
                "stack.mtu",
                r.mtu,
                "must be 0 (the interface's) or 576..=65535",
            ));
        }
    };
    let tcp_release = match r.tcp_release.trim() {
        "rst" => TcpRelease::Rst,
        "fin" => TcpRelease::Fin,
        other => {
            return Err(invalid(
                "stack.tcp_release",
                other,
                "must be \"rst\" (abort) or \"fin\" (orderly close)",
            ));
        }
    };
    let l = &r.limits;
    let limits = StackLimits {
        neigh_entries: in_range_usize("stack.limits.neigh_entries", l.neigh_entries, 1, 1 << 20)?,
        neigh_pending_bytes: in_range_usize(
            "stack.limits.neigh_pending_bytes",
            l.neigh_pending_bytes,
            1514,
            1 << 30,
        )?,
        frag_mem_bytes: in_range_usize(
            "stack.limits.frag_mem_bytes",
            l.frag_mem_bytes,
            65536 + 4096,
            1 << 30,
        )?,
        frag4_timeout_secs: in_range_usize(
            "stack.limits.frag4_timeout_secs",
            l.frag4_timeout_secs,
            1,
            3600,
        )? as u64,
        frag6_timeout_secs: in_range_usize(
            "stack.limits.frag6_timeout_secs",
            l.frag6_timeout_secs,
            1,
            3600,
        )? as u64,
        icmp_msgs_per_sec: in_range_usize(
            "stack.limits.icmp_msgs_per_sec",
            l.icmp_msgs_per_sec,
            0,
            1_000_000,
        )? as u32,
        icmp_msgs_burst: in_range_usize(
            "stack.limits.icmp_msgs_burst",
            l.icmp_msgs_burst,
            0,
            1_000_000,
        )? as u32,
        icmp_ratelimit_ms: in_range_usize(
            "stack.limits.icmp_ratelimit_ms",
            l.icmp_ratelimit_ms,
            0,
            3_600_000,
        )? as u32,
        udp_rx_queue: in_range_usize("stack.limits.udp_rx_queue", l.udp_rx_queue, 1, 1 << 20)?,
        tx_queue: in_range_usize("stack.limits.tx_queue", l.tx_queue, 16, 1 << 20)?,
        tcp_max_conns: in_range_usize("stack.limits.tcp_max_conns", l.tcp_max_conns, 1, 1 << 24)?,
        tcp_syn_backlog_max: in_range_usize(
            "stack.limits.tcp_syn_backlog_max",
            l.tcp_syn_backlog_max,
            1,
            1 << 20,
        )?,
        tcp_max_tw_buckets: in_range_usize(
            "stack.limits.tcp_max_tw_buckets",
            l.tcp_max_tw_buckets,
            0,
            1 << 24,
        )?,
        tcp_rmem: in_range_usize("stack.limits.tcp_rmem", l.tcp_rmem, 4096, 1 << 30)?,
        tcp_wmem: in_range_usize("stack.limits.tcp_wmem", l.tcp_wmem, 4096, 1 << 30)?,
        tcp_fin_timeout_secs: in_range_usize(
            "stack.limits.tcp_fin_timeout_secs",
            l.tcp_fin_timeout_secs,
            1,
            3600,
        )? as u64,
        tcp_time_wait_secs: in_range_usize(
            "stack.limits.tcp_time_wait_secs",
            l.tcp_time_wait_secs,
            1,
            3600,
        )? as u64,
        tcp_syncookies: l.tcp_syncookies,
        tcp_challenge_ack_limit: in_range_usize(
            "stack.limits.tcp_challenge_ack_limit",
            l.tcp_challenge_ack_limit,
            1,
            1_000_000,
        )? as u32,
        tcp_retries2: in_range_usize("stack.limits.tcp_retries2", l.tcp_retries2, 1, 255)? as u8,
        tcp_syn_retries: in_range_usize("stack.limits.tcp_syn_retries", l.tcp_syn_retries, 1, 127)?
            as u8,
        rx_ring_block_bytes: {
            let key = "stack.limits.rx_ring_block_bytes";
            let n = in_range_usize(key, l.rx_ring_block_bytes, 4096, 1 << 26)?;
            if !n.is_power_of_two() {
                return Err(invalid(
                    key,
                    l.rx_ring_block_bytes,
                    "must be a power of two (4096 .. 67108864)",
                ));
            }
            n
        },
        rx_ring_blocks: in_range_usize("stack.limits.rx_ring_blocks", l.rx_ring_blocks, 2, 4096)?,
        rx_ring_timeout_ms: in_range_usize(
            "stack.limits.rx_ring_timeout_ms",
            l.rx_ring_timeout_ms,
            1,
            1000,
        )? as u32,
    };
    if limits.rx_ring_block_bytes * limits.rx_ring_blocks > 1 << 30 {
        return Err(invalid(
            "stack.limits.rx_ring_blocks",
            l.rx_ring_blocks,
            "rx_ring_block_bytes * rx_ring_blocks must be at most 1 GiB",
        ));
    }
    let workers = in_range_usize("stack.workers", r.workers, 0, MAX_STACK_WORKERS)?;
    let rx_ring = match r.rx_ring.trim() {
        "auto" => RxRing::Auto,
        "on" => RxRing::On,
        "off" => RxRing::Off,
        other => {
            return Err(invalid(
                "stack.rx_ring",
                other,
                "must be \"auto\", \"on\" or \"off\"",
            ));
        }
    };
    let busy_poll_us = in_range_usize("stack.busy_poll", r.busy_poll, 0, 1_000_000)? as u32;
    Ok(StackSettings {
        mode,
        interface: r.interface.trim().to_string(),
        mac,
        ipv4,
        ipv6,
        gateway4,
        gateway6,
        mtu,
        tcp_release,
        workers,
        rx_ring,
        busy_poll_us,
        tx_checksum_offload: r.tx_checksum_offload,
        limits,
    })
}

impl StackSettings {
    /// `[stack]` rules that span keys (and `proxy.listen` in afpacket mode);
    /// afpacket mode only.
    pub(super) fn validate(&self, listen: &[ListenSpec]) -> Result<(), ConfigError> {
        let s = self;
        if s.mode != StackMode::Afpacket {
            return Ok(());
        }
        if s.interface.is_empty() {
            return Err(invalid(
                "stack.interface",
                "",
                "required when stack.mode = \"afpacket\"",
            ));
        }
        if s.interface.len() > 15 || s.interface.contains(['/', ' ', '\0']) {
            return Err(invalid(
                "stack.interface",
                &s.interface,
                "not a valid interface name",
            ));
        }
        if s.ipv4.is_none() && s.ipv6.is_none() {
            return Err(invalid(
                "stack.ipv4",
                "",
                "stack.mode = \"afpacket\" needs stack.ipv4 and/or stack.ipv6",
            ));
        }
        if let Some((a, p)) = s.ipv4
            && (a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        {
            return Err(invalid(
                "stack.ipv4",
                format!("{a}/{p}"),
                "must be a unicast host address",
            ));
        }
        if let Some((a, p)) = s.ipv6
            && (a.is_unspecified() || a.is_multicast() || a.is_loopback())
        {
            return Err(invalid(
                "stack.ipv6",
                format!("{a}/{p}"),
                "must be a unicast host address",
            ));
        }
        if let Some(g) = s.gateway4 {
            let on_link = s
                .ipv4
                .is_some_and(|(a, p)| crate::netstack::Ipv4Cidr::new(a, p).contains_addr(&g));
            if !on_link {
                return Err(invalid(
                    "stack.gateway4",
                    g,
                    "must be inside the stack.ipv4 prefix",
                ));
            }
        }
        if let Some(g) = s.gateway6 {
            let on_link = g.is_unicast_link_local()
                || s.ipv6
                    .is_some_and(|(a, p)| crate::netstack::Ipv6Cidr::new(a, p).contains_addr(&g));
            if !on_link {
                return Err(invalid(
                    "stack.gateway6",
                    g,
                    "must be link-local or inside the stack.ipv6 prefix",
                ));
            }
        }
        if s.ipv6.is_some() && s.mtu != 0 && s.mtu < 1280 {
            return Err(invalid(
                "stack.mtu",
                s.mtu,
                "IPv6 needs an MTU of at least 1280",
            ));
        }
        for (i, l) in listen.iter().enumerate() {
            let key = format!("proxy.listen[{i}]");
            let ip = l.addr.ip();
            let family_ok = if ip.is_ipv4() {
                s.ipv4.is_some()
            } else {
                s.ipv6.is_some()
            };
            if !(s.owns(ip) || (ip.is_unspecified() && family_ok)) {
                return Err(invalid(
                    &key,
                    l,
                    format!(
                        "in afpacket mode a {} listen address must be stack.ipv4 / stack.ipv6 \
                         (or 0.0.0.0 / [::] of a configured family)",
                        l.transport.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::err_for;

    const AF: &str =
        "[proxy]\nlisten = [\"udp:198.18.0.2:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n";

    fn af(stack: &str) -> String {
        format!("{AF}[stack]\nmode = \"afpacket\"\n{stack}\n")
    }

    #[test]
    fn afpacket_accepts_tcp_listens_on_the_stack_addresses() {
        let text = "[proxy]\nlisten = [\"udp:198.18.0.2:5060\", \"tcp:198.18.0.2:5060\", \"tcp:[2001:db8::2]:5060\"]\nupstreams = [\"sip:198.18.0.10;transport=tcp\"]\n[stack]\nmode = \"afpacket\"\ninterface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nipv6 = \"2001:db8::2/64\"\n";
        let c = Config::from_toml(text).expect("TCP listens on the stack's own addresses");
        assert_eq!(c.listen.len(), 3);
        assert_eq!(
            c.stack.tcp_release,
            TcpRelease::Rst,
            "default: abort with RST"
        );
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let fin = Config::from_toml(&format!("{text}tcp_release = \"fin\"\n")).unwrap();
        assert_eq!(fin.stack.tcp_release, TcpRelease::Fin);
        assert_eq!(Config::from_toml(&fin.to_toml()).unwrap(), fin);
    }

    #[test]
    fn limits_defaults_are_the_netstack_defaults() {
        // Written once, in netstack::Limits: the config only maps them.
        let n = crate::netstack::Limits::default();
        let c = StackSettings::default().netstack_limits();
        assert_eq!(format!("{c:?}"), format!("{n:?}"));
    }

    #[test]
    fn afpacket_example_file_is_valid_and_round_trips() {
        let c =
            Config::from_toml(include_str!("../../etc/sipedge-afpacket.toml")).expect("etc file");
        assert_eq!(c.stack.mode, StackMode::Afpacket);
        assert_eq!(c.stack.interface, "eth1");
        assert_eq!(c.stack.ipv4, Some((Ipv4Addr::new(198, 18, 0, 2), 24)));
        assert_eq!(c.stack.gateway4, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let n = c.stack.netstack_config([2, 0, 0, 0, 0, 1], 1500);
        assert_eq!(n.mac.0, [2, 0, 0, 0, 0, 1]);
        assert_eq!(n.mtu, 1500);
        assert_eq!(n.limits.frag4_mem, 4 * 1024 * 1024);
    }

    #[test]
    fn tcp_limits_reach_the_netstack_and_errors_name_the_key() {
        let c = Config::from_toml(&af(
            "interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n[stack.limits]\ntcp_max_conns = 10\ntcp_rmem = 8192\ntcp_time_wait_secs = 5\ntcp_syncookies = false",
        ))
        .expect("valid");
        let n = c.stack.netstack_limits();
        assert_eq!(n.tcp_max_conns, 10);
        assert_eq!(n.tcp_rmem, 8192);
        assert_eq!(n.tcp_time_wait, crate::netstack::Duration::from_secs(5));
        assert!(!n.tcp_syncookies);
        for (k, v) in [
            ("tcp_max_conns", "0"),
            ("tcp_rmem", "100"),
            ("tcp_wmem", "-1"),
            ("tcp_fin_timeout_secs", "0"),
            ("tcp_retries2", "256"),
            ("tcp_syn_retries", "0"),
        ] {
            err_for(
                &af(&format!(
                    "interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n[stack.limits]\n{k} = {v}"
                )),
                &format!("stack.limits.{k}"),
            );
        }
    }

    #[test]
    fn afpacket_config_errors_name_the_key() {
        err_for(&af("ipv4 = \"198.18.0.2/24\""), "stack.interface");
        err_for(&af("interface = \"veth0\""), "stack.ipv4");
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2\""),
            "stack.ipv4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/33\""),
            "stack.ipv4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv6 = \"198.18.0.2/24\""),
            "stack.ipv6",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\ngateway4 = \"198.19.0.1\""),
            "stack.gateway4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv6 = \"2001:db8::2/64\"\ngateway6 = \"2001:db9::1\""),
            "stack.gateway6",
        );
        for ok in ["fe80::1", "2001:db8::1"] {
            Config::from_toml(&af(&format!(
                "interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nipv6 = \"2001:db8::2/64\"\ngateway6 = \"{ok}\""
            )))
            .unwrap();
        }
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nmac = \"01:00:5e:00:00:01\""),
            "stack.mac",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nmac = \"zz\""),
            "stack.mac",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n[stack.limits]\ntx_queue = 0"),
            "stack.limits.tx_queue",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nbogus = 1"),
            "bogus",
        );
        err_for(&format!("{AF}[stack]\nmode = \"dpdk\"\n"), "stack.mode");
        // the listen address must be one of the stack's, over UDP
        let other_ip = "[proxy]\nlisten = [\"udp:198.18.0.3:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n[stack]\nmode = \"afpacket\"\ninterface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n";
        err_for(other_ip, "proxy.listen[0]");
        let tcp_other = "[proxy]\nlisten = [\"udp:198.18.0.2:5060\", \"tcp:198.18.0.3:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n[stack]\nmode = \"afpacket\"\ninterface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n";
        let m = err_for(tcp_other, "proxy.listen[1]");
        assert!(m.contains("tcp listen address"), "{m}");
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\ntcp_release = \"reset\""),
            "stack.tcp_release",
        );
        // valid minimal afpacket config
        let ok = Config::from_toml(&af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"")).unwrap();
        assert_eq!(ok.stack.mac, None);
        assert_eq!(ok.stack.mtu, 0);
    }
}
