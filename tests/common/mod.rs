//! Shared helpers for the integration tests: free ports, the `Proxy` guard
//! (spawns the sipedge binary, waits until it is ready, stops it by PID), a
//! bounded `sipp` runner, a raw HTTP `/metrics` scraper with a small parser
//! of the Prometheus text format, and raw SIP socket helpers.
//!
//! Every wait here is bounded in count and time; every process started here
//! is stopped by its own PID. Traffic stays on 127.0.0.1.
#![allow(dead_code)]

pub mod afpacket;
pub mod netns;
pub mod uas;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test: cargo's build of it, or `$SIPEDGE_BIN` (e.g. a
/// release build).
pub fn sipedge_bin() -> PathBuf {
    std::env::var_os("SIPEDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sipedge")))
}
pub const LOCALHOST: &str = "127.0.0.1";

// ---------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------

/// True when skipping a test for a missing tool or privilege is a failure:
/// `SIPEDGE_REQUIRE_ROOT_TESTS=1` or `CI=true`.
pub fn strict() -> bool {
    std::env::var("SIPEDGE_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Full path of `prog` if it is on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `if skip_unless_sipp() { return; }`: prints why and skips when sipp is
/// missing; panics instead in strict mode (see [`strict`]).
pub fn skip_unless_sipp() -> bool {
    if which("sipp").is_some() {
        return false;
    }
    let msg = "sipp not installed (apt-get install sip-tester; scripts/test.sh does it as root)";
    if strict() {
        panic!("{msg}, and SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true forbids skipping");
    }
    eprintln!("SKIPPED: {msg}");
    true
}

/// `if skip_unless_root() { return; }`: same policy for tests that need root.
pub fn skip_unless_root() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    if uid == Some(0) {
        return false;
    }
    let msg = "this test needs root";
    if strict() {
        panic!("{msg}, and SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true forbids skipping");
    }
    eprintln!("SKIPPED: {msg}");
    true
}

/// A process-wide lock for tests that generate load (sipp): the box has two
/// cores, so running several sipp pairs at once only produces noise.
pub fn load_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// temp dirs and ports
// ---------------------------------------------------------------------------

/// A unique fresh directory under the system temp dir.
pub fn unique_temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sipedge-test-{tag}-{}-{nanos}-{n}",
            std::process::id()
        ));
        if fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!("cannot create a temp dir under {:?}", std::env::temp_dir());
}

/// A port number free for both UDP and TCP on 127.0.0.1, never handed out
/// twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..200 {
        let Ok(tcp) = TcpListener::bind((LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        let port = addr.port();
        if UdpSocket::bind((LOCALHOST, port)).is_err() {
            continue;
        }
        let mut g = given.lock().unwrap_or_else(|e| e.into_inner());
        if g.insert(port) {
            return port;
        }
    }
    panic!("no free UDP+TCP port on 127.0.0.1 after 200 attempts");
}

/// Is something listening on 127.0.0.1:`port` (TCP LISTEN, or a bound UDP
/// socket)? Reads /proc/net so that probing does not open a connection.
pub fn port_listening(port: u16, tcp: bool) -> bool {
    let file = if tcp {
        "/proc/net/tcp"
    } else {
        "/proc/net/udp"
    };
    let want = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    let Ok(text) = fs::read_to_string(file) else {
        return false;
    };
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && (f[1] == want || f[1] == any) && (!tcp || f[3] == "0A")
    })
}

/// Wait (bounded) until `port` listens; false on timeout.
pub fn wait_listening(port: u16, tcp: bool, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if port_listening(port, tcp) {
            return true;
        }
        sleep(Duration::from_millis(25));
    }
    false
}

/// Send SIGTERM (or another signal name) to one PID we started.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait for `child` up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Stop a child we started: `sig` to its PID, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, sig: &str, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal_pid(child.id(), sig);
    if let Some(st) = wait_child(child, grace) {
        return Some(st);
    }
    let _ = child.kill();
    wait_child(child, Duration::from_secs(5))
}

/// Last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// the proxy under test
// ---------------------------------------------------------------------------

/// How to start sipedge. Listens on UDP and TCP `127.0.0.1:sip_port`.
pub struct ProxyOpts {
    pub upstream: String,
    /// TOML text written to a config file and passed with `--config`. The
    /// `[proxy]` and `[metrics]` sections are generated from the ports
    /// (they match the CLI flags, which are passed as well).
    pub config: Option<String>,
    /// More `[proxy]` keys (TOML lines) for the generated `[proxy]` section.
    pub proxy_keys: String,
    pub extra_args: Vec<String>,
    pub ready_timeout: Duration,
}

impl ProxyOpts {
    /// Forward to `sip:127.0.0.1:upstream_port` (transport of the request).
    pub fn new(upstream_port: u16) -> ProxyOpts {
        ProxyOpts {
            upstream: format!("sip:{LOCALHOST}:{upstream_port}"),
            config: None,
            proxy_keys: String::new(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(10),
        }
    }
    pub fn config(mut self, toml: &str) -> ProxyOpts {
        self.config = Some(toml.to_string());
        self
    }
    /// `[proxy]` keys besides listen / upstreams (needs [`Self::config`]).
    pub fn proxy_keys(mut self, toml: &str) -> ProxyOpts {
        self.proxy_keys = toml.to_string();
        self
    }
}

/// A running sipedge; stopped (SIGTERM, then SIGKILL) on drop. Its stderr
/// is in `log`; the temp dir is kept when the test panics.
pub struct Proxy {
    child: Child,
    pub sip_port: u16,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Proxy {
    /// Start with defaults (no config file).
    pub fn start(upstream_port: u16) -> Proxy {
        Proxy::start_with(ProxyOpts::new(upstream_port))
    }

    /// Start and wait until the TCP and UDP ports listen and `/metrics`
    /// answers 200; panics with the log tail otherwise.
    pub fn start_with(opts: ProxyOpts) -> Proxy {
        match Proxy::try_start(opts) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_start(opts: ProxyOpts) -> Result<Proxy, String> {
        let sip_port = free_port();
        let metrics_port = free_port();
        let dir = unique_temp_dir("proxy");
        let log = dir.join("sipedge.log");
        let listen_udp = format!("udp:{LOCALHOST}:{sip_port}");
        let listen_tcp = format!("tcp:{LOCALHOST}:{sip_port}");
        let metrics = format!("{LOCALHOST}:{metrics_port}");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen_udp.clone(),
            "--listen".into(),
            listen_tcp.clone(),
            "--upstream".into(),
            opts.upstream.clone(),
            "--metrics".into(),
            metrics.clone(),
            "--log-level".into(),
            "debug".into(),
        ];
        if let Some(cfg) = &opts.config {
            let path = dir.join("sipedge.toml");
            let text = format!(
                "{cfg}\n\n[proxy]\nlisten = [\"{listen_udp}\", \"{listen_tcp}\"]\n\
                 upstreams = [\"{}\"]\n{}\n\n[metrics]\nlisten = \"{metrics}\"\n",
                opts.upstream, opts.proxy_keys
            );
            fs::write(&path, text).map_err(|e| format!("write {path:?}: {e}"))?;
            args.push("--config".into());
            args.push(path.to_string_lossy().into_owned());
        }
        args.extend(opts.extra_args.iter().cloned());
        let logf = File::create(&log).map_err(|e| format!("create {log:?}: {e}"))?;
        let bin = sipedge_bin();
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn {bin:?}: {e}"))?;
        let mut proxy = Proxy {
            child,
            sip_port,
            metrics_port,
            dir,
            log,
        };
        let t0 = Instant::now();
        let mut last = String::from("not polled");
        while t0.elapsed() < opts.ready_timeout {
            if let Ok(Some(st)) = proxy.child.try_wait() {
                return Err(format!(
                    "sipedge exited during start-up ({st}); args {args:?}\n--- log tail ---\n{}",
                    tail(&proxy.log, 30)
                ));
            }
            if port_listening(sip_port, true) && port_listening(sip_port, false) {
                match metrics_scrape(proxy.metrics_addr()) {
                    Ok(_) => return Ok(proxy),
                    Err(e) => last = format!("metrics: {e}"),
                }
            } else {
                last = format!("SIP port {sip_port} not listening on both UDP and TCP");
            }
            sleep(Duration::from_millis(50));
        }
        Err(format!(
            "sipedge not ready after {:?} ({last}); args {args:?}\n--- log tail ---\n{}",
            opts.ready_timeout,
            tail(&proxy.log, 30)
        ))
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Current metrics text; panics with context on failure.
    pub fn metrics(&self) -> String {
        metrics_scrape(self.metrics_addr())
            .unwrap_or_else(|e| panic!("scrape {}: {e}\n{}", self.metrics_addr(), self.log_tail()))
    }
    /// `metric_value`, absent = 0.
    pub fn metric(&self, query: &str) -> f64 {
        metric_value(&self.metrics(), query).unwrap_or(0.0)
    }
    /// Poll (bounded) until `metric(query) >= want`; returns the last value.
    pub fn wait_metric_at_least(&self, query: &str, want: f64, timeout: Duration) -> f64 {
        poll_at_least(|| self.metric(query), want, timeout)
    }
    pub fn log_tail(&self) -> String {
        format!("--- sipedge log tail ---\n{}", tail(&self.log, 40))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop_child(&mut self.child, "TERM", Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("sipedge files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// sipp
// ---------------------------------------------------------------------------

/// sipp transport mode (`-t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SippTransport {
    /// UDP, one socket.
    U1,
    /// TCP, one connection for all calls.
    T1,
    /// TCP, one connection per call.
    Tn,
}

impl SippTransport {
    pub fn flag(self) -> &'static str {
        match self {
            SippTransport::U1 => "u1",
            SippTransport::T1 => "t1",
            SippTransport::Tn => "tn",
        }
    }
    pub fn is_tcp(self) -> bool {
        self != SippTransport::U1
    }
    /// Transport for the UAS facing this UAC: UDP for u1, one TCP socket otherwise.
    pub fn uas_side(self) -> SippTransport {
        if self.is_tcp() {
            SippTransport::T1
        } else {
            SippTransport::U1
        }
    }
}

/// The harness's UAC scenario (transaction-aware copy of sipp's `uac`).
pub fn uac_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uac.xml")
}

/// `sipp -sn uas` on 127.0.0.1:port, stopped (SIGINT by PID) on drop.
pub struct SippUas {
    child: Child,
    pub port: u16,
    pub transport: SippTransport,
    pub dir: PathBuf,
}

impl SippUas {
    pub fn start(transport: SippTransport) -> SippUas {
        let port = free_port();
        let mut cmd = Command::new("sipp");
        cmd.args(["-sn", "uas"]);
        let mut uas = Self::spawn(cmd, LOCALHOST, port, transport);
        if !wait_listening(port, transport.is_tcp(), Duration::from_secs(10)) {
            let st = uas.child.try_wait();
            panic!(
                "sipp UAS did not listen on {port} within 10 s (status {st:?})\n{}",
                tail(&uas.dir.join("uas.out"), 20)
            );
        }
        uas
    }

    /// A UDP UAS on `ip:port` inside network namespace `ns`.
    pub fn start_in(ns: &str, ip: IpAddr, port: u16) -> SippUas {
        Self::start_in_with(ns, ip, port, SippTransport::U1)
    }

    /// A UAS on `ip:port` inside network namespace `ns` over `transport`
    /// (u1: a bound UDP socket; t1: a listening TCP socket).
    pub fn start_in_with(ns: &str, ip: IpAddr, port: u16, transport: SippTransport) -> SippUas {
        Self::start_in_args(ns, ip, port, transport, &[])
    }

    /// [`Self::start_in_with`] with more sipp arguments.
    pub fn start_in_args(
        ns: &str,
        ip: IpAddr,
        port: u16,
        transport: SippTransport,
        extra: &[&str],
    ) -> SippUas {
        let mut cmd = netns::netns_exec(ns, "sipp");
        if !extra.contains(&"-sf") {
            cmd.args(["-sn", "uas"]);
        }
        cmd.args(extra);
        let mut uas = Self::spawn(cmd, &ip.to_string(), port, transport);
        let addr = SocketAddr::new(ip, port);
        let ready = |pid: u32| {
            if transport.is_tcp() {
                netns::tcp_listening_in_pid(pid, addr)
            } else {
                netns::udp_bound_in_pid(pid, addr)
            }
        };
        let t0 = Instant::now();
        while !ready(uas.child.id()) {
            let st = uas.child.try_wait();
            if t0.elapsed() > Duration::from_secs(10) || !matches!(st, Ok(None)) {
                panic!(
                    "sipp UAS not bound to {addr} in {ns} within 10 s (status {st:?})\n{}",
                    tail(&uas.dir.join("uas.out"), 20)
                );
            }
            sleep(Duration::from_millis(25));
        }
        uas
    }

    fn spawn(mut cmd: Command, ip: &str, port: u16, transport: SippTransport) -> SippUas {
        let dir = unique_temp_dir("uas");
        let out = File::create(dir.join("uas.out")).expect("create uas.out");
        let child = cmd
            .args(["-i", ip, "-p", &port.to_string()])
            .args(["-t", transport.flag(), "-nostdin", "-buff_size", "4194304"])
            .args(["-trace_err", "-error_file"])
            .arg(dir.join("uas_err.log"))
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(dir.join("uas_stat.csv"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn sipp UAS");
        SippUas {
            child,
            port,
            transport,
            dir,
        }
    }
}

impl Drop for SippUas {
    fn drop(&mut self) {
        stop_child(&mut self.child, "INT", Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("sipp UAS files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One UAC run.
#[derive(Debug, Clone)]
pub struct UacOpts {
    pub target: SocketAddr,
    pub transport: SippTransport,
    pub calls: u32,
    /// Calls per second.
    pub rate: u32,
    /// Run sipp inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Local address (`-i`); default 127.0.0.1.
    pub local: Option<IpAddr>,
}

/// What a UAC run produced.
#[derive(Debug)]
pub struct SippResult {
    /// sipp's exit code (0: every call succeeded); None if killed by a signal.
    pub exit_code: Option<i32>,
    /// Stopped by the harness after the wall-clock bound.
    pub killed: bool,
    pub successful: u64,
    pub failed: u64,
    /// The final `-trace_stat` row, by column name.
    pub stats: BTreeMap<String, String>,
    pub wall: Duration,
    pub dir: PathBuf,
}

impl SippResult {
    /// Everything useful for a failure message.
    pub fn report(&self) -> String {
        let pick = |k: &str| self.stats.get(k).cloned().unwrap_or_default();
        let failed_detail: Vec<String> = self
            .stats
            .iter()
            .filter(|(k, v)| k.starts_with("Failed") && k.ends_with("(C)") && v.as_str() != "0")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "sipp exit={:?} killed={} successful={} failed={} created={} retrans={} \
             failed_detail={failed_detail:?} wall={:?} dir={:?}\n--- sipp errors ---\n{}\n--- sipp output ---\n{}",
            self.exit_code,
            self.killed,
            self.successful,
            self.failed,
            pick("TotalCallCreated"),
            pick("Retransmissions(C)"),
            self.wall,
            self.dir,
            tail(&self.dir.join("uac_err.log"), 15),
            tail(&self.dir.join("uac.out"), 15),
        )
    }
    /// True when every planned call succeeded.
    pub fn all_ok(&self, calls: u32) -> bool {
        self.exit_code == Some(0)
            && !self.killed
            && self.successful == u64::from(calls)
            && self.failed == 0
    }
}

impl Drop for SippResult {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sipp UAC files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Last row of a sipp `-trace_stat` CSV (semicolon separated), by column.
pub fn parse_stat_csv(text: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < 2 {
        return BTreeMap::new();
    }
    let hdr = lines[0].split(';');
    let val = lines[lines.len() - 1].split(';');
    hdr.zip(val)
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Run `sipp -sf tests/sipp/uac.xml` to completion, bounded by `-m`, sipp's
/// own `-timeout`, and a wall-clock limit after which it is SIGINTed.
pub fn run_uac(opts: &UacOpts) -> SippResult {
    let dir = unique_temp_dir("uac");
    let local_port = free_port();
    let planned = f64::from(opts.calls) / f64::from(opts.rate.max(1));
    let sipp_timeout = (planned + 30.0).ceil() as u64;
    let wall_limit = Duration::from_secs_f64(planned * 1.5 + 40.0);
    let out = File::create(dir.join("uac.out")).expect("create uac.out");
    let mut cmd = match &opts.netns {
        Some(ns) => netns::netns_exec(ns, "sipp"),
        None => Command::new("sipp"),
    };
    let local_ip = opts
        .local
        .map_or(LOCALHOST.to_string(), |ip| ip.to_string());
    cmd.arg("-sf")
        .arg(uac_scenario())
        .arg(opts.target.to_string())
        .args(["-i", &local_ip, "-p", &local_port.to_string()])
        .args(["-t", opts.transport.flag()])
        .args(["-r", &opts.rate.to_string(), "-rp", "1000"])
        .args(["-m", &opts.calls.to_string()])
        .args(["-l", &(opts.rate * 3).max(100).to_string()])
        .args(["-nostdin", "-buff_size", "4194304"])
        .args(["-timeout", &format!("{sipp_timeout}s"), "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(dir.join("uac_stat.csv"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("uac_err.log"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    if opts.transport == SippTransport::Tn {
        cmd.args(["-max_socket", &(opts.calls + 100).min(4000).to_string()]);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn sipp UAC");
    let mut killed = false;
    let status = match wait_child(&mut child, wall_limit) {
        Some(st) => Some(st),
        None => {
            killed = true;
            stop_child(&mut child, "INT", Duration::from_secs(5))
        }
    };
    let wall = t0.elapsed();
    let stats = parse_stat_csv(&fs::read_to_string(dir.join("uac_stat.csv")).unwrap_or_default());
    let num = |k: &str| {
        stats
            .get(k)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    SippResult {
        exit_code: status.and_then(|s| s.code()),
        killed,
        successful: num("SuccessfulCall(C)"),
        failed: num("FailedCall(C)"),
        stats,
        wall,
        dir,
    }
}

// ---------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------

/// `GET /metrics` over HTTP/1.1 (Connection: close); the body on status 200.
pub fn metrics_scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
        if raw.len() > 64 << 20 || t0.elapsed() > Duration::from_secs(10) {
            return Err("response too large or too slow".into());
        }
    }
    let split = find(&raw, b"\r\n\r\n").ok_or("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status line {status:?}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    String::from_utf8(body).map_err(|e| format!("metrics body not UTF-8: {e}"))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let eol = find(b, b"\r\n").ok_or("bad chunk header")?;
        let size_txt = String::from_utf8_lossy(&b[..eol]);
        let size_txt = size_txt.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_txt, 16).map_err(|e| format!("chunk size: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    Err("too many chunks".into())
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub timestamp: Option<i64>,
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Prometheus float: also `+Inf`, `-Inf`, `NaN`.
pub fn parse_prom_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// Parse `name{k="v",...} value [timestamp]`.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let line = line.trim_end();
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| format!("no value: {line:?}"))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?} in {line:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        for _ in 0..1000 {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("label without '=' in {line:?}"))?;
            let key = rest[..eq].trim();
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?} in {line:?}"));
            }
            rest = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or_else(|| format!("label value not quoted in {line:?}"))?;
            let mut val = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => val.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated label value in {line:?}"))?;
            if labels.insert(key.to_string(), val).is_some() {
                return Err(format!("duplicate label {key:?} in {line:?}"));
            }
            rest = rest[end + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!("expected ',' or '}}' in {line:?}"));
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value_txt = fields
        .next()
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = parse_prom_float(value_txt)
        .ok_or_else(|| format!("bad value {value_txt:?} in {line:?}"))?;
    let timestamp = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("bad timestamp {t:?} in {line:?}"))?,
        ),
    };
    if fields.next().is_some() {
        return Err(format!("trailing fields in {line:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
    })
}

/// All sample lines of a scrape (comments and blank lines skipped; lines
/// that do not parse are skipped too: see `parse_sample` for strict checks).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse_sample(l).ok())
        .collect()
}

/// The proxy's metrics moved as `calls` successful sipp calls of
/// tests/sipp/uac.xml over `transport` require, between the scrapes
/// `before` and `after`: per call INVITE, ACK and BYE forwarded, at least
/// the two 200s forwarded back (plus the 180), one INVITE received, no
/// parse failure; over TCP at least one accepted connection (t1) or one per
/// call (tn). `what` names the run in the failure message.
///
/// `lossy`: SIP runs over UDP on a path that drops datagrams (the
/// impairing middlebox). Then an ACK for a 200 may be lost end to end and
/// the call still completes: no transaction retransmits it (RFC 3261
/// §13.2.2.4, §17.1.1.1), and uac.xml sends its BYE right after the ACK
/// (0 ms pause), so the UAS answers the BYE instead of retransmitting its
/// 200 for a new ACK (seen in CI: ACK +197 of 200 calls, no drop in the
/// proxy, all calls successful). So per call INVITE and BYE must arrive (their
/// transactions retransmit them until answered), every request that
/// arrived must be forwarded, and ACKs are only counted.
pub fn assert_calls_forwarded(
    before: &str,
    after: &str,
    transport: SippTransport,
    calls: u32,
    lossy: bool,
    what: &str,
) {
    let value = |text: &str, q: &str| metric_value(text, q).unwrap_or(0.0);
    let delta = |q: &str| value(after, q) - value(before, q);
    let fwd_req = delta("sipedge_forwarded_total{kind=\"request\"}");
    let fwd_rep = delta("sipedge_forwarded_total{kind=\"reply\"}");
    let invites = delta("sipedge_requests_received_total{method=\"INVITE\"}");
    let acks = delta("sipedge_requests_received_total{method=\"ACK\"}");
    let byes = delta("sipedge_requests_received_total{method=\"BYE\"}");
    let parse_failures = value(after, "sipedge_parse_failures_total");
    let report = format!(
        "{what}: forwarded requests +{fwd_req}, replies +{fwd_rep}, received INVITE \
         +{invites} ACK +{acks} BYE +{byes}, parse failures {parse_failures}\n\
         --- metrics ---\n{after}"
    );
    if lossy {
        assert!(fwd_req >= invites + acks + byes, "{report}");
    } else {
        assert!(fwd_req >= f64::from(3 * calls), "{report}");
        assert!(acks >= f64::from(calls), "{report}");
    }
    assert!(fwd_rep >= f64::from(2 * calls), "{report}");
    assert!(invites >= f64::from(calls), "{report}");
    assert!(byes >= f64::from(calls), "{report}");
    assert_eq!(parse_failures, 0.0, "{report}");
    if transport.is_tcp() {
        let accepted = delta("sipedge_tcp_accepted_total");
        let want = if transport == SippTransport::Tn {
            calls
        } else {
            1
        };
        assert!(
            accepted >= f64::from(want),
            "tcp accepted +{accepted}\n{report}"
        );
    }
}

/// `metric_value(text, "sipedge_tcp_released_total{reason=\"oversize\"}")`:
/// the sum of every sample of that name whose labels include the given ones
/// (so a query without labels sums the whole family, and extra labels the
/// proxy may add do not break a query). None when no sample matches.
pub fn metric_value(text: &str, query: &str) -> Option<f64> {
    let (name, want) = match query.find('{') {
        None => (query.trim(), BTreeMap::new()),
        Some(_) => {
            let s = parse_sample(&format!("{query} 0")).ok()?;
            let name = &query[..query.find('{')?];
            (name.trim(), s.labels)
        }
    };
    let mut found = None;
    for s in samples(text) {
        if s.name == name && want.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

// ---------------------------------------------------------------------------
// raw SIP
// ---------------------------------------------------------------------------

/// An OPTIONS addressed to the proxy itself (answered 200 by it).
pub fn options_to_proxy(proxy_port: u16, transport: &str, local: SocketAddr, tag: &str) -> String {
    sip_request(
        "OPTIONS",
        &format!("sip:{LOCALHOST}:{proxy_port}"),
        transport,
        local,
        tag,
        70,
    )
}

/// A minimal well-formed request (Via, Max-Forwards, From, To, Call-ID,
/// CSeq, Content-Length: 0).
pub fn sip_request(
    method: &str,
    ruri: &str,
    transport: &str,
    local: SocketAddr,
    tag: &str,
    max_forwards: u32,
) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{tag};rport\r\n\
         Max-Forwards: {max_forwards}\r\n\
         From: <sip:tester@{LOCALHOST}>;tag=f-{tag}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {tag}@{LOCALHOST}\r\n\
         CSeq: 1 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Read one SIP message (headers + Content-Length body) from a TCP stream
/// within `timeout`. Err on timeout, EOF or reset.
pub fn read_sip_message(s: &mut TcpStream, timeout: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..10_000 {
        if let Some(h) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).into_owned();
            let clen = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    let k = k.trim().to_ascii_lowercase();
                    (k == "content-length" || k == "l").then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + clen {
                return Ok(String::from_utf8_lossy(&buf[..h + 4 + clen]).into_owned());
            }
        }
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(format!(
                "no complete SIP message within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "connection closed by the proxy; got {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read error {e}")),
        }
    }
    Err("too many reads".into())
}

/// How a wait for the peer to close ended.
#[derive(Debug)]
pub enum CloseOutcome {
    /// EOF or reset after this long; bytes received before it.
    Closed(Duration, Vec<u8>),
    /// Still open at the deadline; bytes received meanwhile.
    StillOpen(Vec<u8>),
}

/// Read until the peer closes (EOF / reset) or `timeout` passes.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> CloseOutcome {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..100_000 {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        if s.set_read_timeout(Some(left)).is_err() {
            return CloseOutcome::Closed(t0.elapsed(), got);
        }
        match s.read(&mut chunk) {
            Ok(0) => return CloseOutcome::Closed(t0.elapsed(), got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return CloseOutcome::Closed(t0.elapsed(), got),
        }
    }
    CloseOutcome::StillOpen(got)
}

/// Connect to the proxy's TCP port with sane timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Send a request over UDP from a fresh socket and wait (bounded) for one
/// datagram back.
pub fn udp_exchange(
    to: SocketAddr,
    build: impl Fn(SocketAddr) -> String,
) -> Result<String, String> {
    let sock = UdpSocket::bind((LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let msg = build(local);
    sock.send_to(msg.as_bytes(), to)
        .map_err(|e| format!("send_to {to}: {e}"))?;
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => Err(format!("no UDP answer from {to} within 2 s: {e}")),
    }
}

/// The status code of a SIP reply's start line.
pub fn status_code(msg: &str) -> Option<u16> {
    let line = msg.lines().next()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

// ---------------------------------------------------------------------------
// a tiny UDP upstream
// ---------------------------------------------------------------------------

/// A UDP "upstream" that answers every request 200 (Vias, From, To,
/// Call-ID, CSeq copied), until stopped (bounded to 60 s anyway).
pub struct EchoUpstream {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u32>>,
}

impl EchoUpstream {
    /// On 127.0.0.1 (a free port).
    pub fn start() -> EchoUpstream {
        EchoUpstream::start_on(LOCALHOST)
    }

    /// On `ip` (e.g. "::1"), a port free on 127.0.0.1 (tried on `ip` too).
    pub fn start_on(ip: &str) -> EchoUpstream {
        let port = free_port();
        let sock = UdpSocket::bind((ip, port)).expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut answered = 0;
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                if req.starts_with("SIP/2.0") {
                    continue;
                }
                let _ = sock.send_to(reply_200(&req).as_bytes(), from);
                answered += 1;
            }
            answered
        });
        EchoUpstream {
            port,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// 200 OK for a request: Via (all, in order), From, To (+tag), Call-ID, CSeq.
pub fn reply_200(req: &str) -> String {
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in head.lines().skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if !line.contains(";tag=") {
                    out.push_str(";tag=upstream");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// OPTIONS to the proxy over this TCP connection → 200 (within 2 s).
pub fn assert_options_200(proxy: &Proxy, s: &mut TcpStream, tag: &str) {
    let local = s.local_addr().expect("local addr");
    let req = options_to_proxy(proxy.sip_port, "TCP", local, tag);
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("send OPTIONS ({tag}): {e}\n{}", proxy.log_tail()));
    let reply = read_sip_message(s, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("OPTIONS ({tag}) on TCP: {e}\n{}", proxy.log_tail()));
    assert_eq!(
        status_code(&reply),
        Some(200),
        "OPTIONS ({tag}) on TCP: expected 200, got:\n{reply}"
    );
}

/// Poll `value` every 50 ms until it is `>= want` or `timeout` ran out;
/// returns the last value.
pub fn poll_at_least(value: impl Fn() -> f64, want: f64, timeout: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = value();
        if v >= want || t0.elapsed() >= timeout {
            return v;
        }
        sleep(Duration::from_millis(50));
    }
}
