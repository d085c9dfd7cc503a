//! The embedded stack's smallest real user: a UDP echo server on an
//! `AF_PACKET` socket, answering ARP, NDP and ping on its own (no kernel
//! address needed on the interface).
//!
//! ```text
//! netstack_echo --iface IF [--mac MAC] [--ipv4 ADDR/PREFIX] [--ipv6 ADDR/PREFIX]
//!               [--gateway4 A] [--gateway6 A] [--echo-port 5060] [--abort-port 5061]
//!               [--pcap FILE]
//! ```
//!
//! Needs root or CAP_NET_RAW. Stops on SIGTERM / SIGINT and logs every
//! non-zero counter; every 10 s it logs the drop reasons that moved.
//! Logs go to stderr (`RUST_LOG` respected, default `info`).

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

use sipedge::netstack::device::afpacket::{AfPacket, AfPacketStats, kernel_addresses};
use sipedge::netstack::device::{Device, Tracer};
use sipedge::netstack::driver::{self, Driver, DriverStats};
use sipedge::netstack::{
    Counters, EthernetAddress, Instant, Ipv4Cidr, Ipv6Cidr, SocketEvent, Stack, StackConfig,
    UdpHandle, link_local_from_mac,
};

/// UDP echo over the embedded userspace stack (AF_PACKET).
#[derive(Debug, Parser)]
#[command(name = "netstack_echo", version)]
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
    /// UDP port echoing every datagram back to its sender (IPv4 and IPv6).
    #[arg(long, default_value_t = 5060)]
    echo_port: u16,
    /// TCP port that would abort connections (not available yet).
    #[arg(long, default_value_t = 5061)]
    abort_port: u16,
    /// Write every received and sent frame to this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
}

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
fn app(stack: &mut Stack, now: Instant, st: &EchoStats) {
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
            // TCP modes: branch tcp-tests.
            _ => {}
        }
    }
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

struct Outcome {
    driver: DriverStats,
    device: AfPacketStats,
    kernel_drops: Option<u32>,
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
    let dev = AfPacket::open(&args.iface)
        .with_context(|| format!("cannot open interface {:?}", args.iface))?;
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
    info!(
        abort_port = args.abort_port,
        "TCP is not available yet in the embedded stack: --abort-port ignored"
    );

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
                    let mut drv = Driver::new();
                    let res =
                        drv.run(link.dev(), &mut stack, &stop, &mut |s, now| app(s, now, &st));
                    if let Link::Traced(t) = &mut link
                        && let Err(e) = t.flush()
                    {
                        warn!(error = %e, "flushing the pcap file");
                    }
                    drop(done_tx);
                    res.map(|()| Outcome {
                        driver: drv.stats(),
                        device: link.af().stats(),
                        kernel_drops: link.af().kernel_stats().ok().map(|(_, d)| d),
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
            echo_port = port,
            "netstack_echo ready"
        );

        let mut tick = tokio::time::interval(Duration::from_secs(10));
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
        let outcome = outcome.context("the stack thread stopped")?;
        info!(driver = ?outcome.driver, device = ?outcome.device, kernel_drops = ?outcome.kernel_drops, "device at exit");
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
