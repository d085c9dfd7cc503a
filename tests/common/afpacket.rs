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
    metric_value, metrics_scrape, signal_pid, sipedge_bin, tail, unique_temp_dir, wait_child,
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
/// `[nosip]`) is appended.
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
         ipv6 = \"{v6}/64\"\n\n\
         {extra}\n",
        listen.join(", "),
        pair.stack_if
    )
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
        let t0 = Instant::now();
        loop {
            let v = self.metric(query);
            if v >= want || t0.elapsed() >= timeout {
                return v;
            }
            sleep(Duration::from_millis(50));
        }
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

    /// SIGTERM to its PID; the exit status if it exits within 5 s (else it
    /// is SIGKILLed and None returned), and the whole log.
    pub fn stop(&mut self) -> (Option<ExitStatus>, String) {
        signal_pid(self.child.id(), "TERM");
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

/// What one raw TCP exchange in the peer namespace saw.
#[derive(Debug, Clone)]
pub struct TcpScript {
    /// Bytes received before the end.
    pub got: Vec<u8>,
    pub end: TcpEnd,
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
        let mut s: TcpStream = sock.into();
        let _ = s.set_nodelay(true);
        let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for (bytes, wait) in steps {
            if !bytes.is_empty()
                && let Err(e) = s.write_all(&bytes)
            {
                return Ok(TcpScript {
                    got,
                    end: match e.kind() {
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                            TcpEnd::Reset(t0.elapsed())
                        }
                        _ => TcpEnd::Error(format!("write: {e}")),
                    },
                });
            }
            let until = Instant::now() + wait;
            for _ in 0..100_000 {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = s.set_read_timeout(Some(left));
                match s.read(&mut buf) {
                    Ok(0) => {
                        return Ok(TcpScript {
                            got,
                            end: TcpEnd::Eof(t0.elapsed()),
                        });
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        return Ok(TcpScript {
                            got,
                            end: TcpEnd::Reset(t0.elapsed()),
                        });
                    }
                    Err(e) => {
                        return Ok(TcpScript {
                            got,
                            end: TcpEnd::Error(format!("read: {e}")),
                        });
                    }
                }
            }
        }
        Ok(TcpScript {
            got,
            end: TcpEnd::Open,
        })
    })
}
