//! Closed-loop UDP echo load generator for `bench/netstack_udp_echo.sh`.
//!
//! `udp_echo_load --target ADDR:PORT [--size 200] [--window 64] [--duration 5]
//!                [--sockets 1] [--warmup 1] [--timeout-ms 200]`
//!
//! Each socket (one thread each, connected to the target) keeps `window`
//! datagrams in flight: it sends `window` at the start, then one new datagram
//! per echo received. When no echo arrives for `timeout-ms` the datagrams in
//! flight are written off as lost and the window is primed again; echoes of
//! written-off datagrams that turn up later are ignored.
//!
//! Every datagram carries a magic, the socket index, a sequence number and
//! its send time (ns since the run start). The measurement window opens after
//! `warmup` seconds and lasts `duration` seconds. A datagram counts as sent
//! when its send time is inside the window, and as received when its echo
//! comes back intact (sockets stop sending at the end of the window and wait
//! at most `timeout-ms` for the echoes still in flight). Latency is the round
//! trip from the embedded send time, in 1 us buckets (clamped at 1 s).
//!
//! Prints one JSON line on stdout:
//! `{"target","size","window","sockets","sent","received","lost","timeouts",
//!   "seconds","pps","mbps","p50_us","p99_us"}` where `pps` is echoes per
//! second and `mbps` the echoed UDP payload in Mbit/s (one direction).
//! Exit status 0 when at least one echo was received in the window, 2 when
//! none was (so a short run doubles as a readiness probe). The run always
//! ends after warmup + duration + timeout (+ thread start-up).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

const MAGIC: u32 = 0x5545_4c31; // "UEL1"
const HDR: usize = 24; // magic u32, socket u32, seq u64, send time u64
const HIST_US: usize = 1_000_000;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop UDP echo load: window in flight per socket, JSON summary")]
struct Args {
    /// Echo server, e.g. 198.18.200.2:5060 or [2001:db8:200::2]:5060.
    #[arg(long)]
    target: SocketAddr,
    /// UDP payload bytes per datagram (at least 24).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Datagrams kept in flight per socket.
    #[arg(long, default_value_t = 64)]
    window: u32,
    /// Measurement seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Number of sockets (one thread each).
    #[arg(long, default_value_t = 1)]
    sockets: u32,
    /// Warm-up seconds before the measurement window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Write off the window when no echo arrives for this long.
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
}

/// Phase boundaries shared by all sockets, as ns since `base`.
#[derive(Clone, Copy)]
struct Plan {
    base: Instant,
    m_start_ns: u64,
    m_end_ns: u64,
    timeout: Duration,
}

impl Plan {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn measured(&self, t_ns: u64) -> bool {
        (self.m_start_ns..self.m_end_ns).contains(&t_ns)
    }
}

/// Per-socket result.
struct SockResult {
    sent: u64,
    received: u64,
    timeouts: u64,
    hist: Vec<u32>,
}

struct Gen<'a> {
    sock: &'a UdpSocket,
    plan: Plan,
    idx: u32,
    buf: Vec<u8>,
    next_seq: u64,
    in_flight: u32,
    sent: u64,
}

impl Gen<'_> {
    /// Sends one datagram; false when the kernel refused it.
    fn send_one(&mut self) -> bool {
        let t = self.plan.now_ns();
        self.buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        self.buf[4..8].copy_from_slice(&self.idx.to_be_bytes());
        self.buf[8..16].copy_from_slice(&self.next_seq.to_be_bytes());
        self.buf[16..24].copy_from_slice(&t.to_be_bytes());
        match self.sock.send(&self.buf) {
            Ok(_) => {
                self.next_seq += 1;
                self.in_flight += 1;
                if self.plan.measured(t) {
                    self.sent += 1;
                }
                true
            }
            Err(_) => false,
        }
    }

    fn prime(&mut self, window: u32) {
        while self.in_flight < window {
            if !self.send_one() {
                break;
            }
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn run_socket(args: &Args, plan: Plan, idx: u32) -> Result<SockResult> {
    let local: SocketAddr = if args.target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).context("bind")?;
    sock.connect(args.target).context("connect")?;
    sock.set_read_timeout(Some(plan.timeout))
        .context("SO_RCVTIMEO")?;

    let mut g = Gen {
        sock: &sock,
        plan,
        idx,
        buf: vec![0u8; args.size],
        next_seq: 0,
        in_flight: 0,
        sent: 0,
    };
    let mut rbuf = vec![0u8; args.size + 64];
    let mut received = 0u64;
    let mut timeouts = 0u64;
    let mut hist = vec![0u32; HIST_US];
    // Echoes of sequence numbers below `floor` were written off as lost.
    let mut floor = 0u64;
    let drain_end_ns = plan.m_end_ns + u64::try_from(plan.timeout.as_nanos()).unwrap_or(0);

    g.prime(args.window);
    loop {
        let now = plan.now_ns();
        let sending = now < plan.m_end_ns;
        if !sending && (g.in_flight == 0 || now >= drain_end_ns) {
            break;
        }
        match sock.recv(&mut rbuf) {
            Ok(n) => {
                let d = &rbuf[..n];
                let (Some(magic), Some(si), Some(seq), Some(ts)) =
                    (u32_at(d, 0), u32_at(d, 4), u64_at(d, 8), u64_at(d, 16))
                else {
                    continue;
                };
                if n != args.size || magic != MAGIC || si != idx || seq >= g.next_seq {
                    continue;
                }
                if seq < floor {
                    continue; // late echo of a written-off datagram
                }
                g.in_flight = g.in_flight.saturating_sub(1);
                let t = plan.now_ns();
                if plan.measured(ts) {
                    received += 1;
                    let us = usize::try_from(t.saturating_sub(ts) / 1000).unwrap_or(usize::MAX);
                    hist[us.min(HIST_US - 1)] += 1;
                }
                if t < plan.m_end_ns {
                    g.prime(args.window);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // Nothing for `timeout`: write off what is in flight, start again.
                timeouts += 1;
                floor = g.next_seq;
                g.in_flight = 0;
                if plan.now_ns() < plan.m_end_ns {
                    g.prime(args.window);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                // ICMP error (e.g. port unreachable) reported on the connected
                // socket: same as a timeout, without busy-looping.
                timeouts += 1;
                floor = g.next_seq;
                g.in_flight = 0;
                thread::sleep(Duration::from_millis(20));
                if plan.now_ns() < plan.m_end_ns {
                    g.prime(args.window);
                }
            }
        }
    }
    Ok(SockResult {
        sent: g.sent,
        received,
        timeouts,
        hist,
    })
}

fn percentile_us(hist: &[u64], total: u64, q: f64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    // Smallest bucket whose cumulative count reaches ceil(q * total).
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut acc = 0u64;
    for (us, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= rank {
            return Some(us);
        }
    }
    None
}

fn json_opt(v: Option<usize>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    if args.size < HDR || args.size > 65_507 {
        bail!("--size must be between {HDR} and 65507");
    }
    if args.window == 0 || args.window > 65_536 {
        bail!("--window must be between 1 and 65536");
    }
    if args.sockets == 0 || args.sockets > 64 {
        bail!("--sockets must be between 1 and 64");
    }
    let times_ok =
        args.duration > 0.0 && args.duration <= 3600.0 && (0.0..=60.0).contains(&args.warmup);
    if !times_ok {
        bail!("--duration must be in (0, 3600] and --warmup in [0, 60]");
    }
    if args.timeout_ms == 0 || args.timeout_ms > 10_000 {
        bail!("--timeout-ms must be between 1 and 10000");
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    // Leave the threads a moment to start before anything is measured.
    let base = Instant::now();
    let startup = Duration::from_millis(20);
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let plan = Plan {
        base,
        m_start_ns: ns(startup + warmup),
        m_end_ns: ns(startup + warmup + duration),
        timeout: Duration::from_millis(args.timeout_ms),
    };

    let results: Vec<Result<SockResult>> = thread::scope(|s| {
        let handles: Vec<_> = (0..args.sockets)
            .map(|i| {
                let args = &args;
                s.spawn(move || run_socket(args, plan, i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("load thread panicked")))
            })
            .collect()
    });

    let mut sent = 0u64;
    let mut received = 0u64;
    let mut timeouts = 0u64;
    let mut hist = vec![0u64; HIST_US];
    for r in results {
        let r = r?;
        sent += r.sent;
        received += r.received;
        timeouts += r.timeouts;
        for (a, b) in hist.iter_mut().zip(&r.hist) {
            *a += u64::from(*b);
        }
    }
    let seconds = duration.as_secs_f64();
    let pps = received as f64 / seconds;
    let mbps = pps * args.size as f64 * 8.0 / 1e6;
    println!(
        "{{\"target\":\"{}\",\"size\":{},\"window\":{},\"sockets\":{},\"sent\":{},\"received\":{},\"lost\":{},\"timeouts\":{},\"seconds\":{:.3},\"pps\":{:.0},\"mbps\":{:.2},\"p50_us\":{},\"p99_us\":{}}}",
        args.target,
        args.size,
        args.window,
        args.sockets,
        sent,
        received,
        sent.saturating_sub(received),
        timeouts,
        seconds,
        pps,
        mbps,
        json_opt(percentile_us(&hist, received, 0.50)),
        json_opt(percentile_us(&hist, received, 0.99)),
    );
    Ok(if received > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
