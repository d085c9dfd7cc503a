//! The Linux-kernel side of the embedded TCP stack's tests and benchmarks:
//! run inside the peer network namespace (std/tokio sockets, socket2 for
//! the raw SYN flood), it talks to `netstack_echo`'s TCP ports (or to its
//! own `serve` mode, the Linux reference server) and prints its result as
//! one JSON line on stdout (`"ok":true|false`; exit status 0 only when ok).
//!
//! ```text
//! tcp_peer echo     --target ADDR [--bytes 100000] [--connects 1] [--bind IP]
//! tcp_peer send     --target ADDR --bytes N          bulk to a sink port; checks count + FNV-1a
//! tcp_peer recv     --target ADDR --bytes N          bulk from a source port; checks every byte
//! tcp_peer hold     --target ADDR --conns N [--bind IP,IP..] [--parallel 256]
//!                   [--release-file F] [--max-hold-secs S]
//!                   N connections established at once (1-byte echo each), then closed cleanly
//! tcp_peer refused  --target ADDR                    connect() must fail with ECONNREFUSED
//! tcp_peer reset    --target ADDR                    send to the abort port; next read ECONNRESET
//! tcp_peer syn-flood --target ADDR --count 50000 --src-net 198.19.N.0/24 [--pps 0]
//!                   [--legit ADDR]  raw spoofed SYNs while a real client connects and echoes
//! tcp_peer rate     --target ADDR --secs S [--parallel 16] [--size 100] [--bind IP,IP..]
//!                   connect + request + response + close, as fast as possible
//! tcp_peer serve    [--echo ADDR].. [--sink ADDR].. [--source ADDR].. [--abort ADDR].. [--reuseport]
//!                   the same protocol served by Linux TCP (tokio, one thread), until SIGTERM
//! ```
//!
//! The byte protocol (pattern, sink reply, source request) is in
//! `examples/tcp_common/mod.rs`. Every wait is bounded (`--timeout-secs`,
//! default 120, bounds the whole run). The flood is bounded by `--count`
//! and only sends to `--target`, from addresses in `--src-net`, which must
//! lie in 198.18.0.0/15.

#[path = "tcp_common/mod.rs"]
mod tcp_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use tcp_common::{Fnv, pattern_fill, pattern_mismatch};

#[derive(Debug, Parser)]
#[command(name = "tcp_peer", version)]
struct Args {
    /// Bound on the whole run.
    #[arg(long, default_value_t = 120, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Connect, send pattern bytes while reading the echo, FIN, read to EOF.
    Echo {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        connects: u32,
        #[arg(long)]
        bind: Option<IpAddr>,
    },
    /// Bulk send to a sink port; the reply must carry our count and hash.
    Send {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// Bulk receive from a source port; every byte is checked.
    Recv {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// Hold N established connections at once, then close them cleanly.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        conns: usize,
        /// Local addresses to spread the connections over.
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
        /// Connections being set up at the same time.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Hold until this file exists (bounded by --max-hold-secs).
        #[arg(long)]
        release_file: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 0)]
        max_hold_secs: u64,
    },
    /// connect() to a closed port must fail with ECONNREFUSED.
    Refused {
        #[arg(long)]
        target: SocketAddr,
    },
    /// Send to the abort port (closed with our data unread): the next read
    /// must fail with ECONNRESET.
    Reset {
        #[arg(long)]
        target: SocketAddr,
    },
    /// Bounded raw SYN flood from spoofed sources, a real client meanwhile.
    SynFlood {
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// Spoofed source addresses (within 198.18.0.0/15), e.g. 198.19.1.0/24.
        #[arg(long)]
        src_net: String,
        /// SYNs per second (0: as fast as the socket takes them).
        #[arg(long, default_value_t = 0)]
        pps: u64,
        /// Echo port for the legitimate client (default: --target).
        #[arg(long)]
        legit: Option<SocketAddr>,
    },
    /// Connection rate: connect + request + response + close per loop.
    Rate {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
    },
    /// Linux reference server for the same protocol (until SIGTERM/SIGINT).
    Serve {
        #[arg(long)]
        echo: Vec<SocketAddr>,
        #[arg(long)]
        sink: Vec<SocketAddr>,
        #[arg(long)]
        source: Vec<SocketAddr>,
        #[arg(long)]
        abort: Vec<SocketAddr>,
        #[arg(long, default_value_t = 65535)]
        backlog: u32,
        /// SO_REUSEPORT: several server processes share the ports (each
        /// process is limited by its open-file limit).
        #[arg(long)]
        reuseport: bool,
    },
}

/// One JSON object, fields in order.
#[derive(Default)]
struct Json(Vec<(String, String)>);

impl Json {
    fn new(mode: &str) -> Json {
        let mut j = Json::default();
        j.str("mode", mode);
        j
    }
    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let esc: String = v
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
                c => vec![c],
            })
            .collect();
        self.0.push((k.into(), format!("\"{esc}\"")));
        self
    }
    fn num(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        self.0.push((k.into(), v.to_string()));
        self
    }
    fn float(&mut self, k: &str, v: f64) -> &mut Self {
        let s = if v.is_finite() {
            format!("{v:.3}")
        } else {
            "null".into()
        };
        self.0.push((k.into(), s));
        self
    }
    fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.0.push((k.into(), v.to_string()));
        self
    }
    fn render(&self) -> String {
        let body: Vec<String> = self.0.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }
}

type Res = Result<Json, String>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("{{\"ok\":false,\"error\":\"runtime: {e}\"}}");
            return ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.timeout_secs);
    let mode_name = format!("{:?}", args.mode)
        .split([' ', '{'])
        .next()
        .unwrap_or("?")
        .to_lowercase();
    let res = rt.block_on(async move {
        match tokio::time::timeout(limit, run(args.mode)).await {
            Ok(r) => r,
            Err(_) => Err(format!("did not finish within {limit:?}")),
        }
    });
    match res {
        Ok(mut j) => {
            let ok = j.0.iter().all(|(k, v)| k != "ok" || v == "true");
            if !j.0.iter().any(|(k, _)| k == "ok") {
                j.bool("ok", true);
            }
            println!("{}", j.render());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            let mut j = Json::new(&mode_name);
            j.bool("ok", false).str("error", &e);
            println!("{}", j.render());
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> Res {
    match mode {
        Mode::Echo {
            target,
            bytes,
            connects,
            bind,
        } => {
            let t0 = Instant::now();
            let mut connect_us = Vec::new();
            for k in 0..connects {
                let (us, n) = echo_once(target, bind, bytes)
                    .await
                    .map_err(|e| format!("connection {k} to {target}: {e}"))?;
                connect_us.push(us);
                if n != bytes {
                    return Err(format!("echoed {n} of {bytes} bytes"));
                }
            }
            let mut j = Json::new("echo");
            j.str("target", &target.to_string())
                .num("connects", connects)
                .num("bytes", bytes)
                .num(
                    "connect_us_max",
                    connect_us.iter().max().copied().unwrap_or(0),
                )
                .float("secs", t0.elapsed().as_secs_f64());
            Ok(j)
        }
        Mode::Send { target, bytes } => bulk_send(target, bytes).await,
        Mode::Recv { target, bytes } => bulk_recv(target, bytes).await,
        Mode::Hold {
            target,
            conns,
            bind,
            parallel,
            release_file,
            max_hold_secs,
        } => hold(target, conns, bind, parallel, release_file, max_hold_secs).await,
        Mode::Refused { target } => {
            let r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await;
            let (ok, what) = match r {
                Err(_) => (false, "connect timed out".to_string()),
                Ok(Ok(_)) => (false, "connect succeeded".to_string()),
                Ok(Err(e)) => (
                    e.kind() == std::io::ErrorKind::ConnectionRefused,
                    format!("{e} ({:?})", e.kind()),
                ),
            };
            let mut j = Json::new("refused");
            j.str("target", &target.to_string())
                .bool("ok", ok)
                .str("result", &what);
            Ok(j)
        }
        Mode::Reset { target } => reset(target).await,
        Mode::SynFlood {
            target,
            count,
            src_net,
            pps,
            legit,
        } => syn_flood(target, count, &src_net, pps, legit).await,
        Mode::Rate {
            target,
            secs,
            parallel,
            size,
            bind,
        } => rate(target, secs, parallel.max(1), size.max(1), bind).await,
        Mode::Serve {
            echo,
            sink,
            source,
            abort,
            backlog,
            reuseport,
        } => serve(echo, sink, source, abort, backlog, reuseport).await,
    }
}

/// A socket of `target`'s family, bound to `bind` (port 0) if given.
fn socket_for(target: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpSocket> {
    let s = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        s.bind(SocketAddr::new(ip, 0))?;
    }
    Ok(s)
}

async fn connect(target: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let s = socket_for(target, bind).map_err(|e| format!("socket/bind {bind:?}: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(target)).await {
        Ok(Ok(st)) => {
            let _ = st.set_nodelay(true);
            Ok(st)
        }
        Ok(Err(e)) => Err(format!("connect {target}: {e}")),
        Err(_) => Err(format!("connect {target}: timed out")),
    }
}

/// Write `bytes` pattern bytes, then FIN. Returns the hash of what was sent.
async fn write_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, bytes: u64) -> Result<Fnv, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut h = Fnv::default();
    while off < bytes {
        let n = (bytes - off).min(CHUNK as u64) as usize;
        pattern_fill(off, &mut buf[..n]);
        h.update(&buf[..n]);
        match tokio::time::timeout(IO_TIMEOUT, w.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write at {off}: {e}")),
            Err(_) => return Err(format!("write at {off}: stalled for {IO_TIMEOUT:?}")),
        }
        off += n as u64;
    }
    match tokio::time::timeout(IO_TIMEOUT, w.shutdown()).await {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => Err(format!("shutdown: {e}")),
        Err(_) => Err("shutdown stalled".into()),
    }
}

/// Read to EOF, checking every byte against the pattern; returns the count.
async fn read_pattern<R: AsyncReadExt + Unpin>(r: &mut R, max: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = match tokio::time::timeout(IO_TIMEOUT, r.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(off),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("read at {off}: {e}")),
            Err(_) => return Err(format!("read at {off}: nothing for {IO_TIMEOUT:?}")),
        };
        if let Some(at) = pattern_mismatch(off, &buf[..n]) {
            return Err(format!("byte {at} differs from the pattern"));
        }
        off += n as u64;
        if off > max {
            return Err(format!("more bytes than expected ({off} > {max})"));
        }
    }
}

/// One echo connection: (connect µs, bytes echoed back).
async fn echo_once(
    target: SocketAddr,
    bind: Option<IpAddr>,
    bytes: u64,
) -> Result<(u64, u64), String> {
    let t0 = Instant::now();
    let st = connect(target, bind).await?;
    let us = t0.elapsed().as_micros() as u64;
    let (mut r, mut w) = st.into_split();
    let (wr, rr) = tokio::join!(write_pattern(&mut w, bytes), read_pattern(&mut r, bytes));
    wr?;
    Ok((us, rr?))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

async fn bulk_send(target: SocketAddr, bytes: u64) -> Res {
    let st = connect(target, None).await?;
    let t0 = Instant::now();
    let (mut r, mut w) = st.into_split();
    let h = write_pattern(&mut w, bytes).await?;
    let mut reply = Vec::new();
    let rd = tokio::time::timeout(
        IO_TIMEOUT,
        (&mut r)
            .take(tcp_common::MAX_REPLY_LINE as u64)
            .read_to_end(&mut reply),
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    match rd {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("reading the sink reply: {e}")),
        Err(_) => return Err("no sink reply".into()),
    }
    let line = String::from_utf8_lossy(&reply).into_owned();
    let (n, got) =
        tcp_common::parse_sink_reply(&line).ok_or_else(|| format!("bad sink reply {line:?}"))?;
    let mut j = Json::new("send");
    j.str("target", &target.to_string())
        .bool("ok", n == bytes && got == h.0)
        .num("bytes", bytes)
        .num("sink_bytes", n)
        .str("fnv", &format!("{:016x}", h.0))
        .str("sink_fnv", &format!("{got:016x}"))
        .float("secs", secs)
        .float("mbps", mbps(bytes, secs));
    Ok(j)
}

async fn bulk_recv(target: SocketAddr, bytes: u64) -> Res {
    let mut st = connect(target, None).await?;
    let t0 = Instant::now();
    st.write_all(format!("{bytes}\n").as_bytes())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let n = read_pattern(&mut st, bytes).await?;
    let secs = t0.elapsed().as_secs_f64();
    let mut j = Json::new("recv");
    j.str("target", &target.to_string())
        .bool("ok", n == bytes)
        .num("bytes", n)
        .float("secs", secs)
        .float("mbps", mbps(n, secs));
    Ok(j)
}

/// Connect, 1-byte echo (the server has accepted and answered).
async fn open_idle(target: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let mut st = connect(target, bind).await?;
    let mut b = [0u8; 1];
    let io = async {
        st.write_all(b"h").await?;
        st.read_exact(&mut b).await
    };
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(Ok(_)) if b[0] == b'h' => Ok(st),
        Ok(Ok(_)) => Err(format!("echo returned {:?}", b[0])),
        Ok(Err(e)) => Err(format!("1-byte echo: {e}")),
        Err(_) => Err("1-byte echo timed out".into()),
    }
}

/// FIN, then the peer's FIN must come (no data, no RST).
async fn close_clean(mut st: TcpStream) -> Result<(), String> {
    let io = async {
        st.shutdown().await?;
        let mut b = [0u8; 16];
        st.read(&mut b).await
    };
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => Err(format!("{n} unexpected bytes before EOF")),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("no FIN from the server".into()),
    }
}

fn pick(bind: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!bind.is_empty()).then(|| bind[i % bind.len()])
}

async fn hold(
    target: SocketAddr,
    conns: usize,
    bind: Vec<IpAddr>,
    parallel: usize,
    release: Option<std::path::PathBuf>,
    max_hold_secs: u64,
) -> Res {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        let sem = sem.clone();
        let b = pick(&bind, i);
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            open_idle(target, b).await
        });
    }
    let mut open = Vec::with_capacity(conns);
    let mut first_err = None;
    let mut errors = 0u64;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(st)) => open.push(st),
            Ok(Err(e)) => {
                errors += 1;
                first_err.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let established = open.len();
    eprintln!("tcp_peer holding {established} connections");
    if let Some(f) = &release {
        let until = Instant::now() + Duration::from_secs(max_hold_secs);
        while !f.exists() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else if max_hold_secs > 0 {
        tokio::time::sleep(Duration::from_secs(max_hold_secs)).await;
    }
    let t1 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for st in open {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            close_clean(st).await
        });
    }
    let mut clean = 0u64;
    let mut close_errors = 0u64;
    let mut first_close_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => clean += 1,
            Ok(Err(e)) => {
                close_errors += 1;
                first_close_err.get_or_insert(e);
            }
            Err(e) => {
                close_errors += 1;
                first_close_err.get_or_insert(e.to_string());
            }
        }
    }
    let mut j = Json::new("hold");
    j.str("target", &target.to_string())
        .bool("ok", established == conns && clean == conns as u64)
        .num("conns", conns)
        .num("established", established)
        .num("connect_errors", errors)
        .num("closed_clean", clean)
        .num("close_errors", close_errors)
        .float("connect_secs", connect_secs)
        .float("close_secs", t1.elapsed().as_secs_f64());
    if let Some(e) = first_err {
        j.str("first_connect_error", &e);
    }
    if let Some(e) = first_close_err {
        j.str("first_close_error", &e);
    }
    Ok(j)
}

async fn reset(target: SocketAddr) -> Res {
    let mut st = connect(target, None).await?;
    st.write_all(b"data the server will not read\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(IO_TIMEOUT, st.read(&mut b)).await;
    let (ok, what) = match r {
        Err(_) => (false, "read timed out".to_string()),
        Ok(Ok(0)) => (false, "EOF (FIN, not RST)".to_string()),
        Ok(Ok(n)) => (false, format!("{n} bytes")),
        Ok(Err(e)) => (
            e.kind() == std::io::ErrorKind::ConnectionReset,
            format!("{e} ({:?})", e.kind()),
        ),
    };
    let mut j = Json::new("reset");
    j.str("target", &target.to_string())
        .bool("ok", ok)
        .str("result", &what);
    Ok(j)
}

// ---------------------------------------------------------------------------
// raw SYN flood
// ---------------------------------------------------------------------------

/// xorshift64*: cheap, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `a.b.c.d/p` within 198.18.0.0/15 → (network, host mask).
fn parse_src_net(s: &str) -> Result<(u32, u32), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR/PREFIX"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| format!("bad address in {s:?}"))?;
    let p: u32 = p
        .parse()
        .ok()
        .filter(|p| (15..=30).contains(p))
        .ok_or_else(|| format!("prefix of {s:?} must be 15..=30"))?;
    let host = (1u32 << (32 - p)) - 1;
    let net = u32::from(a) & !host;
    if net & 0xfffe_0000 != 0xc612_0000 {
        return Err(format!("{s} is not inside 198.18.0.0/15"));
    }
    Ok((net, host))
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN (MSS 1460 option), checksums filled.
fn syn_packet(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, seq: u32, id: u16) -> [u8; 44] {
    let mut p = [0u8; 44];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&44u16.to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ipc = csum_fold(csum_add(0, &p[..20]));
    p[10..12].copy_from_slice(&ipc.to_be_bytes());
    let t = 20;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&dst.port().to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 12] = 6 << 4; // 24-byte header
    p[t + 13] = 0x02; // SYN
    p[t + 14..t + 16].copy_from_slice(&64240u16.to_be_bytes());
    p[t + 20..t + 24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let tc = csum_fold(csum_add(csum_add(0, &pseudo), &p[t..]));
    p[t + 16..t + 18].copy_from_slice(&tc.to_be_bytes());
    p
}

struct FloodOut {
    sent: u64,
    send_errors: u64,
    secs: f64,
}

fn flood(
    target: SocketAddrV4,
    count: u64,
    net: (u32, u32),
    pps: u64,
    sent: &AtomicU64,
) -> Result<FloodOut, String> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
        .map_err(|e| format!("raw socket (needs CAP_NET_RAW): {e}"))?;
    sock.set_header_included_v4(true)
        .map_err(|e| format!("IP_HDRINCL: {e}"))?;
    let dst = SockAddr::from(SocketAddr::V4(target));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut errors = 0u64;
    for i in 0..count {
        if pps > 0 {
            let due = Duration::from_secs_f64(i as f64 / pps as f64);
            if let Some(w) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(w);
            }
        }
        let r = rng.next();
        // Never the network or broadcast address of the source net.
        let host = ((r as u32) % net.1.max(2)).max(1);
        let src = Ipv4Addr::from(net.0 | host);
        let sport = 1024 + ((r >> 32) as u16 % 64000);
        let pkt = syn_packet(src, sport, target, (r >> 16) as u32, i as u16);
        // ENOBUFS when the qdisc is full: a few short retries, then count it.
        let mut tries = 0;
        loop {
            match sock.send_to(&pkt, &dst) {
                Ok(_) => break,
                Err(_) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        sent.store(i + 1, Ordering::Relaxed);
    }
    Ok(FloodOut {
        sent: count - errors,
        send_errors: errors,
        secs: t0.elapsed().as_secs_f64(),
    })
}

async fn syn_flood(
    target: SocketAddrV4,
    count: u64,
    src_net: &str,
    pps: u64,
    legit: Option<SocketAddr>,
) -> Res {
    let net = parse_src_net(src_net)?;
    let legit = legit.unwrap_or(SocketAddr::V4(target));
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let th = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            let r = flood(target, count, net, pps, &progress);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    // A real client while the flood runs (after a tenth of it), then once after.
    let t0 = Instant::now();
    while progress.load(Ordering::Relaxed) < count / 10
        && !done.load(Ordering::Relaxed)
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut during_ok, mut during_fail, mut first_err) = (0u64, 0u64, None);
    let mut worst_us = 0u64;
    while !done.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
        let at = progress.load(Ordering::Relaxed);
        match echo_once(legit, None, 1000).await {
            Ok((us, 1000)) => {
                during_ok += 1;
                worst_us = worst_us.max(us);
            }
            Ok((_, n)) => {
                during_fail += 1;
                first_err.get_or_insert(format!("after {at} SYNs: echoed {n} of 1000"));
            }
            Err(e) => {
                during_fail += 1;
                first_err.get_or_insert(format!("after {at} SYNs: {e}"));
            }
        }
    }
    let fl = tokio::task::spawn_blocking(move || th.join())
        .await
        .map_err(|e| format!("join: {e}"))?
        .map_err(|_| "flood thread panicked".to_string())??;
    let after = echo_once(legit, None, 1000).await;
    let after_ok = matches!(after, Ok((_, 1000)));
    let mut j = Json::new("syn-flood");
    j.str("target", &target.to_string())
        .bool(
            "ok",
            after_ok && during_ok > 0 && fl.send_errors < count / 100 + 1,
        )
        .num("syns_sent", fl.sent)
        .num("send_errors", fl.send_errors)
        .float("flood_secs", fl.secs)
        .float("pps", fl.sent as f64 / fl.secs.max(1e-9))
        .num("legit_during_ok", during_ok)
        .num("legit_during_fail", during_fail)
        .num("legit_connect_us_max", worst_us)
        .bool("legit_after_ok", after_ok);
    if let Some(e) = first_err {
        j.str("first_legit_error", &e);
    }
    if let Err(e) = after {
        j.str("legit_after_error", &e);
    }
    Ok(j)
}

// ---------------------------------------------------------------------------
// connection rate
// ---------------------------------------------------------------------------

/// connect + `size`-byte request + its echo + FIN/FIN.
async fn one_transaction(
    target: SocketAddr,
    bind: Option<IpAddr>,
    req: &[u8],
) -> Result<(), String> {
    let mut st = connect(target, bind).await?;
    let mut back = vec![0u8; req.len()];
    let io = async {
        st.write_all(req).await?;
        st.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(Ok(())) if back == req => close_clean(st).await,
        Ok(Ok(())) => Err("echo differs".into()),
        Ok(Err(e)) => Err(format!("request/response: {e}")),
        Err(_) => Err("request/response timed out".into()),
    }
}

async fn rate(
    target: SocketAddr,
    secs: f64,
    parallel: usize,
    size: usize,
    bind: Vec<IpAddr>,
) -> Res {
    let end = Instant::now() + Duration::from_secs_f64(secs.clamp(0.1, 600.0));
    let mut req = vec![0u8; size];
    pattern_fill(0, &mut req);
    let req: Arc<[u8]> = req.into();
    let bind: Arc<[IpAddr]> = bind.into();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..parallel {
        let (req, bind) = (req.clone(), bind.clone());
        set.spawn(async move {
            let (mut ok, mut err, mut first) = (0u64, 0u64, None);
            let mut lat = Vec::new();
            let mut i = w;
            while Instant::now() < end {
                let t = Instant::now();
                match one_transaction(target, pick(&bind, i), &req).await {
                    Ok(()) => {
                        ok += 1;
                        if lat.len() < 1_000_000 {
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) => {
                        err += 1;
                        first.get_or_insert(e);
                    }
                }
                i += parallel;
            }
            (ok, err, first, lat)
        });
    }
    let (mut ok, mut err, mut first, mut lat) = (0u64, 0u64, None, Vec::new());
    while let Some(r) = set.join_next().await {
        let (o, e, f, l) = r.map_err(|e| format!("worker: {e}"))?;
        ok += o;
        err += e;
        if first.is_none() {
            first = f;
        }
        lat.extend(l);
    }
    let el = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mut j = Json::new("rate");
    j.str("target", &target.to_string())
        .bool("ok", ok > 0 && err == 0)
        .num("conns", ok)
        .num("errors", err)
        .float("secs", el)
        .float("cps", ok as f64 / el)
        .num("p50_us", pct(0.5))
        .num("p99_us", pct(0.99))
        .num("parallel", parallel)
        .num("size", size);
    if let Some(e) = first {
        j.str("first_error", &e);
    }
    Ok(j)
}

// ---------------------------------------------------------------------------
// Linux reference server
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Role {
    Echo,
    Sink,
    Source,
    Abort,
}

#[derive(Default)]
struct ServeStats {
    accepted: AtomicU64,
    errors: AtomicU64,
}

fn listener(addr: SocketAddr, backlog: u32, reuseport: bool) -> Result<TcpListener, String> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    s.set_reuseaddr(true).map_err(|e| format!("{e}"))?;
    if reuseport {
        s.set_reuseport(true)
            .map_err(|e| format!("SO_REUSEPORT: {e}"))?;
    }
    s.bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    s.listen(backlog).map_err(|e| format!("listen {addr}: {e}"))
}

/// Reads into a buffer that exists only while data is being handled (an
/// idle connection holds no user-space buffer, as the stack's lazy buffers).
async fn read_some(st: &TcpStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        st.readable().await?;
        let mut buf = vec![0u8; max];
        match st.try_read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn serve_conn(role: Role, mut st: TcpStream) -> std::io::Result<()> {
    let _ = st.set_nodelay(true);
    match role {
        Role::Echo => {
            while let Some(b) = read_some(&st, CHUNK).await? {
                st.write_all(&b).await?;
            }
            st.shutdown().await
        }
        Role::Sink => {
            let (mut n, mut h) = (0u64, Fnv::default());
            while let Some(b) = read_some(&st, CHUNK).await? {
                n += b.len() as u64;
                h.update(&b);
            }
            st.write_all(tcp_common::sink_reply(n, h).as_bytes())
                .await?;
            st.shutdown().await
        }
        Role::Source => {
            let mut line = Vec::new();
            let want = loop {
                match read_some(&st, tcp_common::MAX_REQUEST_LINE).await? {
                    None => return Ok(()),
                    Some(b) => line.extend_from_slice(&b),
                }
                match tcp_common::parse_source_request(&line) {
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(()) => return Err(std::io::ErrorKind::InvalidData.into()),
                }
            };
            write_pattern(&mut st, want)
                .await
                .map(|_| ())
                .map_err(std::io::Error::other)
        }
        Role::Abort => {
            st.readable().await?;
            // Unread data + close → RST (as Linux does); SO_LINGER 0 not needed.
            drop(st);
            Ok(())
        }
    }
}

async fn serve(
    echo: Vec<SocketAddr>,
    sink: Vec<SocketAddr>,
    source: Vec<SocketAddr>,
    abort: Vec<SocketAddr>,
    backlog: u32,
    reuseport: bool,
) -> Res {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let stats = Arc::new(ServeStats::default());
    let mut tasks = tokio::task::JoinSet::new();
    let roles = [
        (Role::Echo, echo),
        (Role::Sink, sink),
        (Role::Source, source),
        (Role::Abort, abort),
    ];
    for (role, addrs) in roles {
        for a in addrs {
            let l = listener(a, backlog, reuseport)?;
            let stats = stats.clone();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((st, _)) => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                            let stats = stats.clone();
                            tokio::spawn(async move {
                                if serve_conn(role, st).await.is_err() {
                                    stats.errors.fetch_add(1, Ordering::Relaxed);
                                }
                            });
                        }
                        Err(_) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            // EMFILE and the like: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
    }
    eprintln!("tcp_peer serving");
    // Never ends on its own: the caller's timeout bounds it.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let mut j = Json::new("serve");
    j.num("accepted", stats.accepted.load(Ordering::Relaxed))
        .num("errors", stats.errors.load(Ordering::Relaxed));
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_packet_checksums_verify() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 5060);
        let p = syn_packet(Ipv4Addr::new(198, 19, 1, 7), 40000, dst, 12345, 9);
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(csum_fold(csum_add(csum_add(0, &pseudo), &p[20..])), 0);
    }

    #[test]
    fn src_net_must_be_inside_the_benchmark_range() {
        assert_eq!(
            parse_src_net("198.19.3.0/24"),
            Ok((u32::from(Ipv4Addr::new(198, 19, 3, 0)), 255))
        );
        assert!(parse_src_net("10.0.0.0/24").is_err());
        assert!(parse_src_net("198.16.0.0/15").is_err());
        assert!(parse_src_net("198.18.0.0/8").is_err());
    }

    #[test]
    fn json_escapes() {
        let mut j = Json::new("x");
        j.str("e", "a\"b\\c\n").num("n", 3).bool("ok", true);
        assert_eq!(
            j.render(),
            r#"{"mode":"x","e":"a\"b\\c\u000a","n":3,"ok":true}"#
        );
    }
}
