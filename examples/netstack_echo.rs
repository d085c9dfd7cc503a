//! The embedded stack's smallest real user: a UDP and TCP echo server on an
//! `AF_PACKET` socket, answering ARP, NDP and ping on its own (no kernel
//! address needed on the interface).
//!
//! ```text
//! netstack_echo --iface IF [--mac MAC] [--ipv4 ADDR/PREFIX] [--ipv6 ADDR/PREFIX]
//!               [--gateway4 A] [--gateway6 A] [--echo-port 5060] [--abort-port 5061]
//!               [--sink-port P] [--source-port P] [--connect ADDR].. [--connect-bytes N]
//!               [--tcp-max-conns N] [--tcp-backlog N] [--stats-interval S] [--pcap FILE]
//!               [--rx-ring auto|on|off] [--rx-ring-block-bytes N] [--rx-ring-blocks N]
//!               [--rx-ring-timeout-ms MS] [--busy-poll-us US]
//! ```
//!
//! Receive path (`--rx-ring`, default `off`, the plain socket: one
//! recvmsg per frame): `on` uses a TPACKET_V3 mmap'd ring and fails if it
//! cannot be set up; `auto` tries the ring and falls back to the plain
//! socket with a warning. The start-up line says which is in use
//! (`rx_mode=ring|socket`). `--busy-poll-us` sets SO_BUSY_POLL and makes
//! the driver spin that long after the last frame before sleeping.
//!
//! TCP (IPv4 and IPv6, all ports listened on the unspecified address):
//! - `--echo-port`: every byte is echoed; after the peer's FIN the
//!   connection is closed (FIN after the echoed data);
//! - `--abort-port`: accept, wait for data, close without reading it: the
//!   unread data makes the close a RST (the peer's next read: ECONNRESET);
//! - `--sink-port`: read and discard until the peer's FIN, then answer
//!   `bytes=N fnv=HHHHHHHHHHHHHHHH\n` (count and 64-bit FNV-1a) and close;
//! - `--source-port`: read a request line `N\n`, send N bytes of the
//!   pattern of examples/tcp_common/mod.rs, close;
//! - `--connect ADDR` (repeatable): the stack connects out to an echo
//!   server, sends `--connect-bytes` pattern bytes, FIN, reads the echo to
//!   EOF and checks every byte; each logs `tcp connect done` with `ok=`.
//!
//! Needs root or CAP_NET_RAW. Stops on SIGTERM / SIGINT and logs every
//! non-zero counter (TCP's included: `Tcp.*`, `TcpExt.*`); every
//! `--stats-interval` (10 s) it logs the drop reasons that moved and a
//! `tcp stats` line (connections, TIME_WAIT, accepted, RSS). Logs go to
//! stderr (`RUST_LOG` respected, default `info`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing::{debug, error, info, warn};

#[path = "tcp_common/mod.rs"]
mod tcp_common;
use tcp_common::{Fnv, pattern_fill, pattern_mismatch};

use sipedge::netstack::device::afpacket::{
    AfPacket, AfPacketOptions, AfPacketStats, RingConfig, kernel_addresses,
};
use sipedge::netstack::device::{Device, Tracer};
use sipedge::netstack::driver::{self, Driver, DriverStats};
use sipedge::netstack::{
    Counters, EthernetAddress, Instant, Ipv4Cidr, Ipv6Cidr, Shutdown, SocketEvent, Stack,
    StackConfig, TcpError, TcpHandle, TcpSocketMut, TcpState, UdpHandle, link_local_from_mac,
};

/// UDP and TCP echo over the embedded userspace stack (AF_PACKET).
#[derive(Debug, Parser)]
#[command(name = "netstack_echo", version, after_long_help = TCP_HELP)]
#[command(group(clap::ArgGroup::new("address").required(true).multiple(true).args(["ipv4", "ipv6"])))]
struct Args {
    /// Interface to open (an Ethernet interface; the kernel should have no
    /// address of ours on it).
    #[arg(long)]
    iface: String,
    /// MAC address the stack uses (default: the interface's).
    #[arg(long, value_parser = parse_mac)]
    mac: Option<EthernetAddress>,
    /// IPv4 address and prefix length, e.g. 198.18.0.2/24.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_cidr4)]
    ipv4: Option<Ipv4Cidr>,
    /// IPv6 address and prefix length, e.g. 2001:db8::2/64.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_cidr6)]
    ipv6: Option<Ipv6Cidr>,
    /// IPv4 default gateway (on the --ipv4 subnet).
    #[arg(long)]
    gateway4: Option<Ipv4Addr>,
    /// IPv6 default gateway.
    #[arg(long)]
    gateway6: Option<Ipv6Addr>,
    /// UDP and TCP port echoing every datagram / byte back (IPv4 and IPv6).
    #[arg(long, default_value_t = 5060)]
    echo_port: u16,
    /// TCP port whose connections are closed with the peer's data unread
    /// (a RST).
    #[arg(long, default_value_t = 5061)]
    abort_port: u16,
    /// TCP port that reads to EOF and answers `bytes=N fnv=HASH`.
    #[arg(long)]
    sink_port: Option<u16>,
    /// TCP port that answers a request line `N` with N pattern bytes.
    #[arg(long)]
    source_port: Option<u16>,
    /// Connect out to this TCP echo server and check the echo (repeatable).
    #[arg(long, value_name = "ADDR")]
    connect: Vec<SocketAddr>,
    /// Bytes each --connect sends (at least 1).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    connect_bytes: u64,
    /// Limit on TCP connections (stack.limits.tcp_max_conns).
    #[arg(long)]
    tcp_max_conns: Option<usize>,
    /// Listen backlog (accept queue) of every TCP port.
    #[arg(long, default_value_t = 4096)]
    tcp_backlog: usize,
    /// Seconds between the periodic drop / stats log lines.
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
    /// Write every received and sent frame to this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Receive through a TPACKET_V3 ring: on (required), auto (fall back to
    /// the plain socket), off (recvmsg per frame).
    #[arg(long, value_enum, default_value_t = RxRingArg::Off)]
    rx_ring: RxRingArg,
    /// Ring block size (a multiple of the page size).
    #[arg(long, default_value_t = RingConfig::default().block_bytes)]
    rx_ring_block_bytes: usize,
    /// Ring blocks.
    #[arg(long, default_value_t = RingConfig::default().blocks)]
    rx_ring_blocks: usize,
    /// Milliseconds after which the kernel hands over a block that is not
    /// full (latency under light load).
    #[arg(long, default_value_t = RingConfig::default().timeout_ms)]
    rx_ring_timeout_ms: u32,
    /// Busy-poll microseconds (SO_BUSY_POLL and the driver's spin); 0: off.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u32,
}

/// `--rx-ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RxRingArg {
    Auto,
    On,
    Off,
}

const TCP_HELP: &str = "\
TCP modes (IPv4 and IPv6; protocol in examples/tcp_common/mod.rs):
  --echo-port     every byte echoed; FIN after the echo once the peer's FIN came
  --abort-port    accept, wait for data, close without reading it: RST
                  (the peer's next read fails with ECONNRESET)
  --sink-port     read to the peer's FIN, answer `bytes=N fnv=HHHHHHHHHHHHHHHH`
                  (count and 64-bit FNV-1a), close
  --source-port   read a line `N`, send N pattern bytes (byte i = pattern_byte(i)), close
  --connect ADDR  connect out to an echo server, send --connect-bytes pattern bytes,
                  FIN, check the echo to EOF; logs `tcp connect done ... ok=true|false`
At exit: `counters at exit` (Tcp.*, TcpExt.* included) and `tcp stats at exit`
(conns, time_wait, accepted, aborted, closed_by_error, sinks/sources done,
connects ok/failed, rss_kib); the same `tcp stats` line every --stats-interval.
The Linux side of the tests and benchmarks is examples/tcp_peer.rs.";

/// The device, traced to a pcap file or not.
enum Link {
    Plain(AfPacket),
    Traced(Tracer<AfPacket, BufWriter<File>>),
}

impl Link {
    fn dev(&mut self) -> &mut dyn Device {
        match self {
            Link::Plain(d) => d,
            Link::Traced(t) => t,
        }
    }

    fn af(&self) -> &AfPacket {
        match self {
            Link::Plain(d) => d,
            Link::Traced(t) => t.get_ref(),
        }
    }

    fn af_mut(&mut self) -> &mut AfPacket {
        match self {
            Link::Plain(d) => d,
            Link::Traced(t) => t.get_mut(),
        }
    }
}

fn parse_prefix(p: &str, max: u8) -> Result<u8, String> {
    p.parse::<u8>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("bad prefix length {p:?} (expected 0..={max})"))
}

fn parse_cidr4(s: &str) -> Result<Ipv4Cidr, String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 198.18.0.2/24)"))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| format!("bad IPv4 address {a:?}"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("{addr} is not a unicast address"));
    }
    Ok(Ipv4Cidr::new(addr, parse_prefix(p, 32)?))
}

fn parse_cidr6(s: &str) -> Result<Ipv6Cidr, String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 2001:db8::2/64)"))?;
    let addr: Ipv6Addr = a.parse().map_err(|_| format!("bad IPv6 address {a:?}"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("{addr} is not a unicast address"));
    }
    Ok(Ipv6Cidr::new(addr, parse_prefix(p, 128)?))
}

fn parse_mac(s: &str) -> Result<EthernetAddress, String> {
    let bad = || format!("bad MAC address {s:?} (expected xx:xx:xx:xx:xx:xx)");
    let mut m = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in m.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    let mac = EthernetAddress(m);
    if !mac.is_unicast() {
        return Err(format!("{mac} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// What the echo application did (written by the stack thread only).
#[derive(Default)]
struct EchoStats {
    echoed: AtomicU64,
    send_errors: AtomicU64,
    socket_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Echo every queued datagram of `h` back to its sender.
fn echo(stack: &mut Stack, now: Instant, h: UdpHandle, st: &EchoStats) {
    while let Some(d) = stack.udp_recv_from(h) {
        match stack.udp_send_to(now, h, d.src, &d.data) {
            Ok(()) => bump(&st.echoed),
            Err(e) => {
                bump(&st.send_errors);
                debug!(to = %d.src, len = d.data.len(), error = %e, "echo not sent");
            }
        }
        stack.recycle(d.data);
    }
}

/// The application side of each driver round.
fn app(stack: &mut Stack, now: Instant, st: &EchoStats, tcp: &mut TcpApp) {
    tcp.start_connects(stack, now);
    while let Some(ev) = stack.poll_event() {
        match ev {
            SocketEvent::UdpReadable(h) => echo(stack, now, h, st),
            SocketEvent::UdpError(h) => {
                if let Some(e) = stack.udp_take_error(h) {
                    bump(&st.socket_errors);
                    let local = stack.udp_local_addr(h).ok();
                    info!(?local, remote = %e.remote, kind = ?e.kind, "socket error");
                }
            }
            SocketEvent::TcpAcceptable(l) => tcp.accept_all(stack, l),
            SocketEvent::TcpConnected(h)
            | SocketEvent::TcpReadable(h)
            | SocketEvent::TcpWritable(h) => tcp.service(stack, h),
            SocketEvent::TcpClosed(h, err) => tcp.closed(stack, h, err),
        }
    }
    let t = stack.tcp_table();
    tcp.stats.conns.store(t.len() as u64, Ordering::Relaxed);
    tcp.stats
        .time_wait
        .store(t.time_wait_len() as u64, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// TCP: echo, abort, sink, source, connect (protocol: examples/tcp_common)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Echo,
    Abort,
    Sink,
    Source,
}

/// Per-connection application state (kept small: an idle echo connection
/// holds no heap memory here either).
enum Conn {
    /// Echo: bytes read but not yet taken by the send buffer.
    Echo {
        pending: Vec<u8>,
        at: usize,
    },
    Abort,
    Sink {
        bytes: u64,
        fnv: Fnv,
    },
    Source {
        req: Vec<u8>,
        want: Option<u64>,
        sent: u64,
    },
    /// Outgoing (`--connect`): pattern sent / echoed so far.
    Client {
        target: SocketAddr,
        sent: u64,
        recvd: u64,
        started: Instant,
    },
}

/// What the TCP side did (written by the stack thread, read for logging).
#[derive(Default)]
struct TcpStats {
    accepted: AtomicU64,
    aborted: AtomicU64,
    closed_by_error: AtomicU64,
    echoed_bytes: AtomicU64,
    sinks_done: AtomicU64,
    sources_done: AtomicU64,
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
    conns: AtomicU64,
    time_wait: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

struct TcpApp {
    listeners: HashMap<TcpHandle, Role>,
    conns: HashMap<TcpHandle, Conn>,
    to_connect: Vec<SocketAddr>,
    connect_bytes: u64,
    scratch: Vec<u8>,
    stats: Arc<TcpStats>,
}

/// Reads per service call before yielding (bounded work per event).
const MAX_READS: usize = 64;

impl TcpApp {
    fn new(to_connect: Vec<SocketAddr>, connect_bytes: u64, stats: Arc<TcpStats>) -> Self {
        TcpApp {
            listeners: HashMap::new(),
            conns: HashMap::new(),
            to_connect,
            connect_bytes,
            scratch: vec![0; 64 * 1024],
            stats,
        }
    }

    /// Listen on `port` for IPv4 (when configured) and IPv6.
    fn listen(
        &mut self,
        stack: &mut Stack,
        v4: bool,
        port: u16,
        role: Role,
        backlog: usize,
    ) -> anyhow::Result<()> {
        let mut addrs = vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)];
        if v4 {
            addrs.push(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
        }
        for a in addrs {
            let h = stack
                .tcp_listen(a, backlog)
                .map_err(|e| anyhow::anyhow!("TCP listen on {a} ({role:?}): {e}"))?;
            self.listeners.insert(h, role);
        }
        Ok(())
    }

    fn start_connects(&mut self, stack: &mut Stack, now: Instant) {
        for target in std::mem::take(&mut self.to_connect) {
            match stack.tcp_connect(now, None, target) {
                Ok(h) => {
                    let c = Conn::Client {
                        target,
                        sent: 0,
                        recvd: 0,
                        started: now,
                    };
                    self.conns.insert(h, c);
                }
                Err(e) => {
                    bump(&self.stats.connects_failed);
                    warn!(%target, ok = false, error = %e, "tcp connect done");
                }
            }
        }
    }

    fn accept_all(&mut self, stack: &mut Stack, l: TcpHandle) {
        let Some(role) = self.listeners.get(&l).copied() else {
            return;
        };
        let mut accepted = Vec::new();
        if let Some(mut ls) = stack.tcp(l) {
            while let Some((h, _peer)) = ls.accept() {
                accepted.push(h);
            }
        }
        for h in accepted {
            bump(&self.stats.accepted);
            let c = match role {
                Role::Echo => Conn::Echo {
                    pending: Vec::new(),
                    at: 0,
                },
                Role::Abort => Conn::Abort,
                Role::Sink => Conn::Sink {
                    bytes: 0,
                    fnv: Fnv::default(),
                },
                Role::Source => Conn::Source {
                    req: Vec::new(),
                    want: None,
                    sent: 0,
                },
            };
            self.conns.insert(h, c);
            // Data may have come with the handshake's last ACK.
            self.service(stack, h);
        }
    }

    fn closed(&mut self, stack: &mut Stack, h: TcpHandle, err: Option<TcpError>) {
        if err.is_none() {
            // A graceful end (e.g. TIME_WAIT reached): what was received
            // is still readable; let the connection finish on it.
            self.service(stack, h);
        }
        if let Some(c) = self.conns.remove(&h) {
            if let Conn::Client { target, .. } = c {
                bump(&self.stats.connects_failed);
                warn!(%target, ok = false, error = ?err, "tcp connect done");
            }
            if err.is_some() {
                bump(&self.stats.closed_by_error);
                debug!(?err, "connection closed by an error");
            }
        }
        if let Some(mut s) = stack.tcp(h) {
            s.close();
        }
    }

    /// Move `h` forward as far as it can go now.
    fn service(&mut self, stack: &mut Stack, h: TcpHandle) {
        let Some(mut conn) = self.conns.remove(&h) else {
            return;
        };
        let Some(mut s) = stack.tcp(h) else {
            return;
        };
        let keep = match &mut conn {
            Conn::Echo { pending, at } => {
                echo_tcp(&mut s, pending, at, &mut self.scratch, &self.stats)
            }
            Conn::Abort => {
                if s.recv_queue() > 0 {
                    // Close with the data unread: RST (RFC 2525 §2.17).
                    s.close();
                    bump(&self.stats.aborted);
                    false
                } else {
                    true
                }
            }
            Conn::Sink { bytes, fnv } => {
                sink_tcp(&mut s, bytes, fnv, &mut self.scratch, &self.stats)
            }
            Conn::Source { req, want, sent } => {
                source_tcp(&mut s, req, want, sent, &mut self.scratch, &self.stats)
            }
            Conn::Client {
                target,
                sent,
                recvd,
                started,
            } => client_tcp(
                &mut s,
                *target,
                self.connect_bytes,
                sent,
                recvd,
                *started,
                &mut self.scratch,
                &self.stats,
            ),
        };
        if keep {
            self.conns.insert(h, conn);
        }
    }
}

/// The send side of a socket that failed: abort it, count it.
fn fail(s: &mut TcpSocketMut<'_>, e: TcpError, st: &TcpStats) -> bool {
    debug!(error = %e, peer = %s.peer_addr(), "connection failed");
    bump(&st.closed_by_error);
    s.abort();
    false
}

/// Echo: flush what is pending, then read and send until one side blocks.
/// Returns false once the connection is closed (handle released).
fn echo_tcp(
    s: &mut TcpSocketMut<'_>,
    pending: &mut Vec<u8>,
    at: &mut usize,
    buf: &mut [u8],
    st: &TcpStats,
) -> bool {
    for _ in 0..MAX_READS {
        while *at < pending.len() {
            match s.send(&pending[*at..]) {
                Ok(n) => {
                    *at += n;
                    add(&st.echoed_bytes, n as u64);
                }
                Err(TcpError::WouldBlock) => return true,
                Err(e) => return fail(s, e, st),
            }
        }
        // Sent: release the memory (an idle connection holds none).
        *pending = Vec::new();
        *at = 0;
        let n = match s.recv(buf) {
            Ok(0) => {
                s.close();
                return false;
            }
            Ok(n) => n,
            Err(TcpError::WouldBlock) => return true,
            Err(e) => return fail(s, e, st),
        };
        match s.send(&buf[..n]) {
            Ok(k) => {
                add(&st.echoed_bytes, k as u64);
                if k < n {
                    pending.extend_from_slice(&buf[k..n]);
                }
            }
            Err(TcpError::WouldBlock) => pending.extend_from_slice(&buf[..n]),
            Err(e) => return fail(s, e, st),
        }
    }
    true
}

fn sink_tcp(
    s: &mut TcpSocketMut<'_>,
    bytes: &mut u64,
    fnv: &mut Fnv,
    buf: &mut [u8],
    st: &TcpStats,
) -> bool {
    for _ in 0..MAX_READS {
        match s.recv(buf) {
            Ok(0) => {
                let reply = tcp_common::sink_reply(*bytes, *fnv);
                // A fresh send buffer takes a 40-byte line at once.
                return match s.send(reply.as_bytes()) {
                    Ok(n) if n == reply.len() => {
                        bump(&st.sinks_done);
                        info!(
                            bytes = *bytes,
                            fnv = format!("{:016x}", fnv.0),
                            "tcp sink done"
                        );
                        s.close();
                        false
                    }
                    Ok(_) | Err(TcpError::WouldBlock) => fail(s, TcpError::WouldBlock, st),
                    Err(e) => fail(s, e, st),
                };
            }
            Ok(n) => {
                *bytes += n as u64;
                fnv.update(&buf[..n]);
            }
            Err(TcpError::WouldBlock) => return true,
            Err(e) => return fail(s, e, st),
        }
    }
    true
}

fn source_tcp(
    s: &mut TcpSocketMut<'_>,
    req: &mut Vec<u8>,
    want: &mut Option<u64>,
    sent: &mut u64,
    buf: &mut [u8],
    st: &TcpStats,
) -> bool {
    while want.is_none() {
        let room = tcp_common::MAX_REQUEST_LINE - req.len();
        match s.recv(&mut buf[..room]) {
            Ok(0) => {
                s.close();
                return false;
            }
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(TcpError::WouldBlock) => return true,
            Err(e) => return fail(s, e, st),
        }
        match tcp_common::parse_source_request(req) {
            Ok(Some(n)) => *want = Some(n),
            Ok(None) => {}
            Err(()) => {
                debug!("bad source request: aborting");
                s.abort();
                return false;
            }
        }
    }
    let total = want.unwrap_or(0);
    while *sent < total {
        let n = (total - *sent).min(buf.len() as u64) as usize;
        pattern_fill(*sent, &mut buf[..n]);
        match s.send(&buf[..n]) {
            Ok(k) => *sent += k as u64,
            Err(TcpError::WouldBlock) => return true,
            Err(e) => return fail(s, e, st),
        }
    }
    bump(&st.sources_done);
    info!(bytes = total, "tcp source done");
    s.close();
    false
}

#[allow(clippy::too_many_arguments)]
fn client_tcp(
    s: &mut TcpSocketMut<'_>,
    target: SocketAddr,
    total: u64,
    sent: &mut u64,
    recvd: &mut u64,
    started: Instant,
    buf: &mut [u8],
    st: &TcpStats,
) -> bool {
    let done = |s: &mut TcpSocketMut<'_>, ok: bool, why: &str, recvd: u64| {
        if ok {
            bump(&st.connects_ok);
        } else {
            bump(&st.connects_failed);
        }
        let ms = (driver::now() - started).total_millis();
        info!(%target, ok, bytes = recvd, ms, why, "tcp connect done");
        s.close();
        false
    };
    if matches!(s.state(), TcpState::SynSent | TcpState::SynReceived) {
        return match s.take_error() {
            Some(e) => done(s, false, &e.to_string(), *recvd),
            None => true,
        };
    }
    while *sent < total {
        let n = (total - *sent).min(buf.len() as u64) as usize;
        pattern_fill(*sent, &mut buf[..n]);
        match s.send(&buf[..n]) {
            Ok(k) => {
                *sent += k as u64;
                if *sent == total {
                    s.shutdown(Shutdown::Write);
                }
            }
            Err(TcpError::WouldBlock) => break,
            Err(e) => return done(s, false, &e.to_string(), *recvd),
        }
    }
    for _ in 0..MAX_READS {
        match s.recv(buf) {
            Ok(0) => {
                let ok = *recvd == total;
                return done(
                    s,
                    ok,
                    if ok { "echo complete" } else { "short echo" },
                    *recvd,
                );
            }
            Ok(n) => {
                if let Some(at) = pattern_mismatch(*recvd, &buf[..n]) {
                    return done(s, false, &format!("byte {at} differs"), *recvd);
                }
                *recvd += n as u64;
            }
            Err(TcpError::WouldBlock) => return true,
            Err(e) => return done(s, false, &e.to_string(), *recvd),
        }
    }
    true
}

/// Resident set size of this process in KiB (/proc/self/status VmRSS).
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `aa:bb:cc:dd:ee:ff`, as `ip link` shows it.
fn fmt_mac(m: EthernetAddress) -> String {
    m.0.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn fmt_counters(v: &[(&str, &str, u64)]) -> String {
    if v.is_empty() {
        return "(all zero)".to_string();
    }
    v.iter()
        .map(|(g, c, n)| format!("{g}.{c}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Warn when the kernel owns one of our addresses on the interface.
fn warn_kernel_owned(iface: &str, ours: &[IpAddr]) {
    match kernel_addresses(iface) {
        Ok(kernel) => {
            for a in ours.iter().filter(|a| kernel.contains(a)) {
                warn!(
                    "the kernel also owns {a} on {iface}: the kernel would answer too \
                     (ARP/NDP, ICMP errors, TCP resets); remove it from the interface"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot list the kernel's addresses on {iface}"),
    }
}

fn log_tcp_stats(t: &TcpStats, what: &str) {
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    info!(
        conns = g(&t.conns),
        time_wait = g(&t.time_wait),
        accepted = g(&t.accepted),
        aborted = g(&t.aborted),
        closed_by_error = g(&t.closed_by_error),
        echoed_bytes = g(&t.echoed_bytes),
        sinks_done = g(&t.sinks_done),
        sources_done = g(&t.sources_done),
        connects_ok = g(&t.connects_ok),
        connects_failed = g(&t.connects_failed),
        rss_kib = rss_kib().unwrap_or(0),
        "{what}"
    );
}

struct Outcome {
    driver: DriverStats,
    device: AfPacketStats,
    /// PACKET_STATISTICS could be read (`device.kernel_*` are valid).
    kernel_ok: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let opts = AfPacketOptions {
        rx_ring: (args.rx_ring != RxRingArg::Off).then_some(RingConfig {
            block_bytes: args.rx_ring_block_bytes,
            blocks: args.rx_ring_blocks,
            timeout_ms: args.rx_ring_timeout_ms,
        }),
        ring_required: args.rx_ring == RxRingArg::On,
        busy_poll_us: args.busy_poll_us,
        tx_csum_offload: true,
    };
    let dev = AfPacket::open_with(&args.iface, &opts)
        .with_context(|| format!("cannot open interface {:?}", args.iface))?;
    let rx_mode = dev.rx_mode();
    if !dev.ignores_outgoing() {
        info!("PACKET_IGNORE_OUTGOING not supported: own frames are filtered by the stack");
    }

    let mac = args.mac.unwrap_or_else(|| dev.mac());
    let mut cfg = StackConfig::new(mac);
    cfg.ipv4 = args.ipv4;
    cfg.ipv6 = args.ipv6;
    cfg.gateway4 = args.gateway4;
    cfg.gateway6 = args.gateway6;
    cfg.mtu = dev.mtu();
    // The kernel completes UDP / TCP checksums when the device could open
    // its PACKET_VNET_HDR socket.
    cfg.tx_csum_offload = dev.tx_csum_offload();
    if let Some(n) = args.tcp_max_conns {
        cfg.limits.tcp_max_conns = n;
    }
    if cfg.mtu < 1280 && cfg.ipv6.is_some() {
        bail!(
            "{}: MTU {} is below the IPv6 minimum 1280",
            args.iface,
            cfg.mtu
        );
    }
    if let (Some(g), Some(c)) = (cfg.gateway4, cfg.ipv4)
        && !c.contains_addr(&g)
    {
        warn!("gateway {g} is not on {c}: it will not be used");
    }
    if cfg.gateway4.is_some() && cfg.ipv4.is_none() {
        warn!("--gateway4 without --ipv4 is ignored");
    }

    let mut ours: Vec<IpAddr> = Vec::new();
    ours.extend(cfg.ipv4.map(|c| IpAddr::V4(c.address())));
    ours.extend(cfg.ipv6.map(|c| IpAddr::V6(c.address())));
    ours.push(IpAddr::V6(link_local_from_mac(mac)));
    warn_kernel_owned(&args.iface, &ours);

    let mut stack = Stack::new(cfg.clone(), driver::now());
    let counters: Arc<Counters> = stack.counters();
    let port = args.echo_port;
    // The sockets live in the stack; the application finds them through
    // the events.
    if cfg.ipv4.is_some() {
        stack
            .udp_bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
            .context("binding the IPv4 echo socket")?;
    }
    stack
        .udp_bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .context("binding the IPv6 echo socket")?;
    let tcp_stats = Arc::new(TcpStats::default());
    let mut tcp = TcpApp::new(args.connect.clone(), args.connect_bytes, tcp_stats.clone());
    let v4 = cfg.ipv4.is_some();
    let mut ports = vec![(port, Role::Echo), (args.abort_port, Role::Abort)];
    ports.extend(args.sink_port.map(|p| (p, Role::Sink)));
    ports.extend(args.source_port.map(|p| (p, Role::Source)));
    for (p, role) in ports {
        tcp.listen(&mut stack, v4, p, role, args.tcp_backlog)?;
    }

    let mut link = match &args.pcap {
        Some(path) => Link::Traced(
            Tracer::create(dev, path)
                .with_context(|| format!("cannot create the pcap file {}", path.display()))?,
        ),
        None => Link::Plain(dev),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

        let stop = Arc::new(AtomicBool::new(false));
        let echo_stats = Arc::new(EchoStats::default());
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let stop = stop.clone();
            let st = echo_stats.clone();
            std::thread::Builder::new()
                .name("netstack".into())
                .spawn(move || {
                    let mut drv = Driver::new().with_busy_poll(Duration::from_micros(
                        u64::from(args.busy_poll_us),
                    ));
                    let res = drv.run(link.dev(), &mut stack, &stop, &mut |s, now| {
                        app(s, now, &st, &mut tcp)
                    });
                    if let Link::Traced(t) = &mut link
                        && let Err(e) = t.flush()
                    {
                        warn!(error = %e, "flushing the pcap file");
                    }
                    drop(done_tx);
                    let kernel = link.af_mut().update_kernel_stats();
                    res.map(|()| Outcome {
                        driver: drv.stats(),
                        device: link.af().stats(),
                        kernel_ok: kernel.is_ok(),
                    })
                })
                .context("spawning the stack thread")?
        };
        let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
        info!(
            iface = %args.iface,
            mac = %fmt_mac(mac),
            ipv4 = %show(cfg.ipv4.map(|c| c.to_string())),
            ipv6 = %show(cfg.ipv6.map(|c| c.to_string())),
            link_local = %link_local_from_mac(mac),
            mtu = cfg.mtu,
            rx_mode = %rx_mode,
            busy_poll_us = args.busy_poll_us,
            echo_port = port,
            abort_port = args.abort_port,
            sink_port = ?args.sink_port,
            source_port = ?args.source_port,
            "netstack_echo ready"
        );

        let mut tick = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
        tick.tick().await;
        let mut last: HashMap<&'static str, u64> = HashMap::new();
        let mut last_echo = (0, 0, 0);
        let early = loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); break false; }
                _ = int.recv() => { info!("SIGINT: stopping"); break false; }
                _ = &mut done_rx => { break true; }
                _ = tick.tick() => {
                    let changed: Vec<_> = counters
                        .nonzero()
                        .into_iter()
                        .filter(|(g, c, n)| *g == "drop" && last.insert(c, *n) != Some(*n))
                        .collect();
                    if !changed.is_empty() {
                        info!("drops (totals, changed in the last 10 s): {}", fmt_counters(&changed));
                    }
                    let e = (
                        echo_stats.echoed.load(Ordering::Relaxed),
                        echo_stats.send_errors.load(Ordering::Relaxed),
                        echo_stats.socket_errors.load(Ordering::Relaxed),
                    );
                    if e != last_echo {
                        info!(echoed = e.0, send_errors = e.1, socket_errors = e.2, "echo");
                        last_echo = e;
                    }
                    log_tcp_stats(&tcp_stats, "tcp stats");
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        let outcome = match thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the stack thread panicked"),
        };
        info!(
            "counters at exit: {}",
            fmt_counters(&counters.nonzero())
        );
        info!(
            echoed = echo_stats.echoed.load(Ordering::Relaxed),
            send_errors = echo_stats.send_errors.load(Ordering::Relaxed),
            socket_errors = echo_stats.socket_errors.load(Ordering::Relaxed),
            "echo at exit"
        );
        log_tcp_stats(&tcp_stats, "tcp stats at exit");
        let outcome = outcome.context("the stack thread stopped")?;
        info!(driver = ?outcome.driver, device = ?outcome.device, kernel_stats = outcome.kernel_ok, "device at exit");
        if early {
            bail!("the stack thread stopped unexpectedly");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_mac_parsing() {
        let c = parse_cidr4("198.18.3.2/24").unwrap();
        assert_eq!(
            (c.address(), c.prefix_len()),
            (Ipv4Addr::new(198, 18, 3, 2), 24)
        );
        for bad in [
            "198.18.3.2",
            "198.18.3.2/33",
            "198.18.3/24",
            "0.0.0.0/0",
            "x/1",
            "198.18.3.2/-1",
        ] {
            assert!(parse_cidr4(bad).is_err(), "{bad}");
        }
        let c = parse_cidr6("2001:db8:3::2/64").unwrap();
        assert_eq!(c.prefix_len(), 64);
        for bad in ["2001:db8::2", "2001:db8::2/129", "ff02::1/64", "::/0"] {
            assert!(parse_cidr6(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mac("02:5e:00:00:00:0a").unwrap(),
            EthernetAddress([2, 0x5e, 0, 0, 0, 0xa])
        );
        for bad in [
            "02:5e:00:00:00",
            "02:5e:00:00:00:0a:0b",
            "01:00:5e:00:00:01",
            "zz:5e:00:00:00:0a",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
