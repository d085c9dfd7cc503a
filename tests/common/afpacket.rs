//! sipedge in afpacket mode inside the stack namespace of a `NetnsPair`:
//! the configuration (the stack owns 198.18.N.2 and 2001:db8:N::2 on the
//! veth end that has no kernel address; the upstream is the peer's
//! 198.18.N.1:5080), the running binary (`AfSipedge`, stopped by its own
//! PID), `/metrics` scraped from a thread inside the stack namespace (the
//! management plane stays on a kernel socket, 127.0.0.1:9090 there), and a
//! raw TCP client in the peer namespace.
//!
//! Every wait here is bounded; every process started here is stopped by its
//! own PID (`ip netns exec` execs the program, so the child's PID is its own).

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::netns::{NetnsPair, in_netns, must, netns_exec};
use super::{
    SippTransport, UacOpts, assert_calls_forwarded, metric_value, metrics_scrape, poll_at_least,
    read_sip_message, run_uac, signal_pid, sip_request, sipedge_bin, tail, unique_temp_dir,
    wait_child,
};

/// The stack's SIP port (UDP and TCP).
pub const AF_SIP_PORT: u16 = 5060;
/// The upstream (sipp UAS) port on the peer's 198.18.N.1.
pub const AF_UPSTREAM_PORT: u16 = 5080;
/// `/metrics` on 127.0.0.1 inside the stack namespace (fresh, so free).
pub const AF_METRICS_PORT: u16 = 9090;
/// The log line sipedge prints once the stack runs.
pub const AF_READY_LINE: &str = "sipedge running on the userspace stack";

/// The afpacket configuration for `pair`: UDP listeners on both stack
/// addresses, TCP listeners too when `tcp`, the upstream
/// `sip:198.18.N.1:5080`; `extra` (TOML tables such as `[tcp]` or
/// `[nosip]`) is appended. One stack shard (`stack.workers = 1`, not the
/// CPU count; [`with_workers`] for more).
pub fn af_config(pair: &NetnsPair, tcp: bool, extra: &str) -> String {
    let (v4, v6, up) = (pair.stack_v4(), pair.stack_v6(), pair.peer_v4());
    let p = AF_SIP_PORT;
    let mut listen = vec![format!("\"udp:{v4}:{p}\""), format!("\"udp:[{v6}]:{p}\"")];
    if tcp {
        listen.push(format!("\"tcp:{v4}:{p}\""));
        listen.push(format!("\"tcp:[{v6}]:{p}\""));
    }
    format!(
        "[proxy]\n\
         listen = [{}]\n\
         upstreams = [\"sip:{up}:{AF_UPSTREAM_PORT}\"]\n\n\
         [metrics]\n\
         listen = \"127.0.0.1:{AF_METRICS_PORT}\"\n\n\
         [log]\n\
         level = \"info\"\n\n\
         [stack]\n\
         mode = \"afpacket\"\n\
         interface = \"{}\"\n\
         ipv4 = \"{v4}/24\"\n\
         ipv6 = \"{v6}/64\"\n\
         workers = 1\n\n\
         {extra}\n",
        listen.join(", "),
        pair.stack_if
    )
}

/// `config` (from [`af_config`] / [`af_tcp_config`], one stack shard)
/// with `stack.workers = n`.
pub fn with_workers(config: &str, n: usize) -> String {
    config.replacen("workers = 1\n", &format!("workers = {n}\n"), 1)
}

/// [`af_config`] with TCP listeners and a TCP upstream
/// (`sip:198.18.N.1:5080;transport=tcp`); `extra` is appended.
pub fn af_tcp_config(pair: &NetnsPair, extra: &str) -> String {
    let up = format!("\"sip:{}:{AF_UPSTREAM_PORT}\"", pair.peer_v4());
    af_config(pair, true, extra).replacen(
        &up,
        &format!(
            "\"sip:{}:{AF_UPSTREAM_PORT};transport=tcp\"",
            pair.peer_v4()
        ),
        1,
    )
}

/// `sipedge_tcp_released_total{reason="REASON"}`.
pub fn released(reason: &str) -> String {
    format!("sipedge_tcp_released_total{{reason=\"{reason}\"}}")
}

/// `sipedge_netstack_mib_total{group="GROUP",counter="COUNTER"}`.
pub fn mib(group: &str, counter: &str) -> String {
    format!("sipedge_netstack_mib_total{{group=\"{group}\",counter=\"{counter}\"}}")
}

/// `metric_value` of a scrape, absent = 0.
pub fn metric(text: &str, q: &str) -> f64 {
    metric_value(text, q).unwrap_or(0.0)
}

/// The peer's address and the stack's SIP address, of one family.
pub fn target(pair: &NetnsPair, v6: bool) -> (IpAddr, SocketAddr) {
    if v6 {
        (
            pair.peer_v6().into(),
            SocketAddr::new(pair.stack_v6().into(), AF_SIP_PORT),
        )
    } else {
        (
            pair.peer_v4().into(),
            SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT),
        )
    }
}

/// An OPTIONS to the proxy itself (R-URI = its own IPv4 address), answered
/// 200.
pub fn options_to_stack(pair: &NetnsPair, tag: &str) -> Vec<u8> {
    let ruri = format!("sip:{}:{AF_SIP_PORT}", pair.stack_v4());
    let via = SocketAddr::new(pair.peer_v4().into(), 5999);
    sip_request("OPTIONS", &ruri, "TCP", via, tag, 70).into_bytes()
}

/// The same set-up as [`af_config`] with TCP, on the command line only
/// (`--stack afpacket --iface … --ipv4 … --ipv6 … --listen …`): afpacket
/// mode needs no configuration file.
pub fn af_cli_args(pair: &NetnsPair) -> Vec<String> {
    let (v4, v6, up) = (pair.stack_v4(), pair.stack_v6(), pair.peer_v4());
    let p = AF_SIP_PORT;
    let mut a: Vec<String> = vec![
        "--stack".into(),
        "afpacket".into(),
        "--iface".into(),
        pair.stack_if.clone(),
        "--ipv4".into(),
        format!("{v4}/24"),
        "--ipv6".into(),
        format!("{v6}/64"),
    ];
    for l in [
        format!("udp:{v4}:{p}"),
        format!("udp:[{v6}]:{p}"),
        format!("tcp:{v4}:{p}"),
        format!("tcp:[{v6}]:{p}"),
    ] {
        a.push("--listen".into());
        a.push(l);
    }
    a.extend([
        "--upstream".into(),
        format!("sip:{up}:{AF_UPSTREAM_PORT}"),
        "--metrics".into(),
        format!("127.0.0.1:{AF_METRICS_PORT}"),
    ]);
    a
}

/// sipedge running in afpacket mode inside the stack namespace; SIGKILLed
/// by PID on drop if still running. Its output is in `log`; the temp dir
/// is kept when the test panics.
pub struct AfSipedge {
    child: Child,
    pub stack_ns: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl AfSipedge {
    /// Write `config`, start `ip netns exec STACK sipedge --config FILE`,
    /// and wait (≤ 10 s) until it is ready (see [`Self::start_args`]).
    pub fn start(pair: &NetnsPair, config: &str) -> AfSipedge {
        let dir = unique_temp_dir("afpacket");
        let cfg = dir.join("sipedge.toml");
        fs::write(&cfg, config).expect("write the config");
        let args = vec!["--config".to_string(), cfg.to_string_lossy().into_owned()];
        Self::start_in_dir(pair, dir, &args)
    }

    /// Start `ip netns exec STACK sipedge ARGS…` and wait (≤ 10 s) for its
    /// "running on the userspace stack" log line and an answer from
    /// `/metrics`; panics with the log tail otherwise. Brings the stack
    /// namespace's `lo` up (for `/metrics`).
    pub fn start_args(pair: &NetnsPair, args: &[String]) -> AfSipedge {
        Self::start_in_dir(pair, unique_temp_dir("afpacket"), args)
    }

    fn start_in_dir(pair: &NetnsPair, dir: PathBuf, args: &[String]) -> AfSipedge {
        must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
        let log = dir.join("sipedge.log");
        let logf = File::create(&log).expect("create the log");
        let child = netns_exec(&pair.stack_ns, sipedge_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn sipedge");
        let mut p = AfSipedge {
            child,
            stack_ns: pair.stack_ns.clone(),
            dir,
            log,
        };
        let t0 = Instant::now();
        let mut last = String::from("no ready line in the log");
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "sipedge exited during start-up ({st}); args {args:?}\n{}",
                    p.log_tail()
                );
            }
            if fs::read_to_string(&p.log).is_ok_and(|t| t.contains(AF_READY_LINE)) {
                match p.try_metrics() {
                    Ok(_) => return p,
                    Err(e) => last = format!("metrics: {e}"),
                }
            }
            sleep(Duration::from_millis(50));
        }
        panic!(
            "sipedge not ready within 10 s ({last}); args {args:?}\n{}",
            p.log_tail()
        );
    }

    /// `GET /metrics` from a thread inside the stack namespace.
    pub fn try_metrics(&self) -> Result<String, String> {
        in_netns(&self.stack_ns, || {
            metrics_scrape(SocketAddr::from(([127, 0, 0, 1], AF_METRICS_PORT)))
        })
    }

    pub fn metrics(&self) -> String {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("scrape /metrics: {e}\n{}", self.log_tail()))
    }

    /// `metric_value` of one scrape, absent = 0.
    pub fn metric(&self, query: &str) -> f64 {
        metric_value(&self.metrics(), query).unwrap_or(0.0)
    }

    /// Poll (bounded) until `metric(query) >= want`; returns the last value.
    pub fn wait_metric_at_least(&self, query: &str, want: f64, timeout: Duration) -> f64 {
        poll_at_least(|| self.metric(query), want, timeout)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        format!(
            "--- sipedge log tail ({}) ---\n{}",
            self.log.display(),
            tail(&self.log, 40)
        )
    }

    /// Send `sig` (a `kill -s` name such as "TERM") to its PID.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.child.id(), sig);
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`Self::stop`], asserting that sipedge exited 0 within 5 s.
    pub fn stop_clean(&mut self) {
        let (st, log) = self.stop();
        assert!(
            st.is_some_and(|s| s.success()),
            "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
        );
    }

    /// SIGTERM to its PID; the exit status if it exits within 5 s (else it
    /// is SIGKILLed and None returned), and the whole log.
    pub fn stop(&mut self) -> (Option<ExitStatus>, String) {
        self.signal("TERM");
        let st = wait_child(&mut self.child, Duration::from_secs(5));
        if st.is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
        (st, fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for AfSipedge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("sipedge files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// How a raw TCP connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpEnd {
    /// A read failed with ECONNRESET (the peer sent RST) after this long.
    Reset(Duration),
    /// A read returned 0 (the peer sent FIN) after this long.
    Eof(Duration),
    /// Another error.
    Error(String),
    /// Still open at the deadline.
    Open,
}

impl TcpEnd {
    pub fn is_reset(&self) -> bool {
        matches!(self, TcpEnd::Reset(_))
    }

    pub fn is_eof(&self) -> bool {
        matches!(self, TcpEnd::Eof(_))
    }
}

/// What one raw TCP exchange in the peer namespace saw.
#[derive(Debug, Clone)]
pub struct TcpScript {
    /// Bytes received before the end.
    pub got: Vec<u8>,
    pub end: TcpEnd,
}

/// A TCP connection from `from` (a peer address; call inside the peer
/// namespace) to `to`, Nagle off.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream, String> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| format!("socket: {e}"))?;
    sock.bind(&SocketAddr::new(from, 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    sock.connect_timeout(&to.into(), Duration::from_secs(3))
        .map_err(|e| format!("connect {to}: {e}"))?;
    let s: TcpStream = sock.into();
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    Ok(s)
}

/// Read what arrives on `s` into `got` until the connection ends or
/// `wait` runs out (then `TcpEnd::Open`); the durations in the result
/// count from `t0`.
pub fn read_until_end(s: &mut TcpStream, wait: Duration, t0: Instant, got: &mut Vec<u8>) -> TcpEnd {
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    for _ in 0..100_000 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return TcpEnd::Eof(t0.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return TcpEnd::Reset(t0.elapsed());
            }
            Err(e) => return TcpEnd::Error(format!("read: {e}")),
        }
    }
    TcpEnd::Open
}

/// [`read_until_end`] discarding what arrives, durations from now.
pub fn read_end(s: &mut TcpStream, wait: Duration) -> TcpEnd {
    read_until_end(s, wait, Instant::now(), &mut Vec::new())
}

/// Connect from `from` to `to` and wait up to `wait` for the connection to
/// end. A reset that beats connect()'s own completion check (the peer's RST
/// right after its SYN-ACK) counts as [`TcpEnd::Reset`] too.
pub fn connect_and_read_end(
    from: IpAddr,
    to: SocketAddr,
    wait: Duration,
) -> Result<TcpEnd, String> {
    match connect_from(from, to) {
        Ok(mut s) => Ok(read_end(&mut s, wait)),
        Err(e) if e.contains("reset") => Ok(TcpEnd::Reset(Duration::ZERO)),
        Err(e) => Err(e),
    }
}

/// Send an OPTIONS for `sip:TO` (Via: the socket's own address) on `s`
/// and read the reply (≤ 3 s).
pub fn options_over(s: &mut TcpStream, to: SocketAddr, tag: &str) -> Result<String, String> {
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let req = sip_request("OPTIONS", &format!("sip:{to}"), "TCP", local, tag, 70);
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_sip_message(s, Duration::from_secs(3))
}

/// Connect from `from` (a peer address) to `to`, then for each step send
/// its bytes and wait up to its duration for the connection to end,
/// reading what arrives (the next step starts when the wait ran out with
/// the connection still open). Runs on a thread inside the peer namespace.
/// `Err` when the connection cannot be made.
pub fn tcp_script(
    pair: &NetnsPair,
    from: IpAddr,
    to: SocketAddr,
    steps: Vec<(Vec<u8>, Duration)>,
) -> Result<TcpScript, String> {
    pair.in_peer(move || {
        let mut s = connect_from(from, to)?;
        let t0 = Instant::now();
        let mut got = Vec::new();
        for (bytes, wait) in steps {
            if !bytes.is_empty()
                && let Err(e) = s.write_all(&bytes)
            {
                let end = match e.kind() {
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                        TcpEnd::Reset(t0.elapsed())
                    }
                    _ => TcpEnd::Error(format!("write: {e}")),
                };
                return Ok(TcpScript { got, end });
            }
            let end = read_until_end(&mut s, wait, t0, &mut got);
            if end != TcpEnd::Open {
                return Ok(TcpScript { got, end });
            }
        }
        Ok(TcpScript {
            got,
            end: TcpEnd::Open,
        })
    })
}

/// The non-zero drop counters and the neighbour / ARP / NDP and UDP
/// error counters of a scrape (for failure messages).
pub fn drop_lines(m: &str) -> String {
    m.lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            l.contains("drop")
                || l.contains("Neigh")
                || l.contains("neigh")
                || l.contains("Errors")
                || l.contains("Arp")
                || l.contains("Icmp6")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `calls` calls of tests/sipp/uac.xml over `transport` from the peer
/// namespace to the stack's address of one family; asserts that every
/// call succeeded and the proxy forwarded them (metric deltas as in the
/// kernel-mode suite).
pub fn calls_through(
    pair: &NetnsPair,
    proxy: &mut AfSipedge,
    transport: SippTransport,
    v6: bool,
    calls: u32,
    rate: u32,
) {
    let (local, to) = target(pair, v6);
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let before = proxy.metrics();
    let res = run_uac(&UacOpts {
        target: to,
        transport,
        calls,
        rate,
        netns: Some(pair.peer_ns.clone()),
        local: Some(local),
    });
    let alive = proxy.alive();
    assert!(
        alive,
        "sipedge (afpacket) died during the {} {fam} run\n{}\n{}",
        transport.flag(),
        res.report(),
        proxy.log_tail()
    );
    assert!(
        res.all_ok(calls),
        "{calls} calls through sipedge (afpacket) over {} {fam}: expected all successful, \
         0 failed\n{}\n{}\n--- drops and neighbour counters ---\n{}",
        transport.flag(),
        res.report(),
        proxy.log_tail(),
        drop_lines(&proxy.metrics())
    );
    let after = proxy.metrics();
    assert_calls_forwarded(
        &before,
        &after,
        transport,
        calls,
        pair.mid.is_some() && !transport.is_tcp(),
        &format!("{} {fam}", transport.flag()),
    );
    eprintln!(
        "{} {fam}: {} calls ok in {:?} (retransmissions {})",
        transport.flag(),
        res.successful,
        res.wall,
        res.stats
            .get("Retransmissions(C)")
            .map_or("?", String::as_str)
    );
}
