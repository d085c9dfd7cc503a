//! sipedge in afpacket mode (`stack.mode = "afpacket"`) end to end: the
//! binary runs in the stack namespace of a `NetnsPair` (its veth end has no
//! kernel address) and carries SIP over UDP on its own IPv4/IPv6 stack; sipp
//! (UAS and UAC) and raw sockets run on the Linux stack of the peer
//! namespace (198.18.N.1, 2001:db8:N::1). The metrics endpoint stays on a
//! kernel socket, 127.0.0.1 inside the stack namespace.
//!
//! Needs root (namespaces, AF_PACKET) and sipp: skipped with a message
//! otherwise, a failure under SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true. The
//! configuration errors of `afpacket_mode_startup_errors_are_clear` are
//! checked without root too.
//!
//! Every wait is bounded; every process started here is stopped by its own
//! PID (`ip netns exec` execs the program, so the child's PID is its own);
//! the namespaces go with the `NetnsPair` guard.

mod common;

use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::netns::*;
use common::*;

const SIP_PORT: u16 = 5060;
const UPSTREAM_PORT: u16 = 5080;
/// Inside the stack namespace (fresh, so free).
const METRICS_PORT: u16 = 9090;
const READY_LINE: &str = "sipedge running on the userspace stack";
const CALLS_V4: u32 = 200;
const CALLS_V6: u32 = 100;
const RATE: u32 = 100;

/// The afpacket configuration for `pair`: both stack addresses listen,
/// the upstream is the peer's 198.18.N.1:5080.
fn afpacket_config(pair: &NetnsPair) -> String {
    let (v4, v6, up) = (pair.stack_v4(), pair.stack_v6(), pair.peer_v4());
    format!(
        "[proxy]\n\
         listen = [\"udp:{v4}:{SIP_PORT}\", \"udp:[{v6}]:{SIP_PORT}\"]\n\
         upstreams = [\"sip:{up}:{UPSTREAM_PORT}\"]\n\n\
         [metrics]\n\
         listen = \"127.0.0.1:{METRICS_PORT}\"\n\n\
         [log]\n\
         level = \"info\"\n\n\
         [stack]\n\
         mode = \"afpacket\"\n\
         interface = \"{}\"\n\
         ipv4 = \"{v4}/24\"\n\
         ipv6 = \"{v6}/64\"\n",
        pair.stack_if
    )
}

// ---------------------------------------------------------------------------
// sipedge in the stack namespace
// ---------------------------------------------------------------------------

/// sipedge running in afpacket mode inside the stack namespace; SIGKILLed
/// by PID on drop if still running. Its stderr is in `log`; the temp dir is
/// kept when the test panics.
struct AfSipedge {
    child: Child,
    stack_ns: String,
    dir: PathBuf,
    log: PathBuf,
}

impl AfSipedge {
    /// Write `config`, start `ip netns exec STACK sipedge --config FILE`, and
    /// wait (≤ 10 s) for its "running on the userspace stack" log line and
    /// an answer from `/metrics`.
    fn start(pair: &NetnsPair, config: &str) -> AfSipedge {
        let dir = unique_temp_dir("afpacket");
        let cfg = dir.join("sipedge.toml");
        fs::write(&cfg, config).expect("write the config");
        let log = dir.join("sipedge.log");
        let logf = File::create(&log).expect("create the log");
        let child = netns_exec(&pair.stack_ns, sipedge_bin())
            .arg("--config")
            .arg(&cfg)
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
                panic!("sipedge exited during start-up ({st})\n{}", p.log_tail());
            }
            if fs::read_to_string(&p.log).is_ok_and(|t| t.contains(READY_LINE)) {
                match p.try_metrics() {
                    Ok(_) => return p,
                    Err(e) => last = format!("metrics: {e}"),
                }
            }
            sleep(Duration::from_millis(50));
        }
        panic!("sipedge not ready within 10 s ({last})\n{}", p.log_tail());
    }

    /// `GET /metrics` from a thread inside the stack namespace.
    fn try_metrics(&self) -> Result<String, String> {
        in_netns(&self.stack_ns, || {
            metrics_scrape(SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)))
        })
    }

    fn metrics(&self) -> String {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("scrape /metrics: {e}\n{}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        format!(
            "--- sipedge log tail ({}) ---\n{}",
            self.log.display(),
            tail(&self.log, 40)
        )
    }

    /// SIGTERM to its PID; the exit status if it exits within 5 s (else it
    /// is SIGKILLed and None returned), and the whole log.
    fn stop(&mut self) -> (Option<ExitStatus>, String) {
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

/// tests/sipp/uac.xml over UDP inside the peer namespace, from `local`.
fn run_uac_in(ns: &str, local: IpAddr, target: SocketAddr, calls: u32, rate: u32) -> SippResult {
    run_uac(&UacOpts {
        target,
        transport: SippTransport::U1,
        calls,
        rate,
        netns: Some(ns.to_string()),
        local: Some(local),
    })
}

/// `ip -n NS neigh show ADDR` has a `lladdr` equal to `mac`.
fn neigh_has(pair: &NetnsPair, addr: IpAddr, mac: [u8; 6]) -> (bool, String) {
    let out = pair.ip_peer(&["neigh", "show", &addr.to_string()]);
    let want = fmt_mac(mac);
    let ok = out
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .is_some_and(|m| m.eq_ignore_ascii_case(&want));
    (ok, out)
}

fn metric(text: &str, q: &str) -> f64 {
    metric_value(text, q).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

#[test]
fn afpacket_udp_calls_pass_through_the_userspace_stack() {
    if skip_unless_root() || skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let mut proxy = AfSipedge::start(&pair, &afpacket_config(&pair));
    let uas = SippUas::start_in(&pair.peer_ns, pair.peer_v4().into(), UPSTREAM_PORT);

    // IPv4: UAC 198.18.N.1 → sipedge 198.18.N.2:5060 → UAS 198.18.N.1:5080.
    let v4 = run_uac_in(
        &pair.peer_ns,
        pair.peer_v4().into(),
        SocketAddr::new(pair.stack_v4().into(), SIP_PORT),
        CALLS_V4,
        RATE,
    );
    assert!(
        v4.all_ok(CALLS_V4),
        "{CALLS_V4} calls over IPv4 through sipedge (afpacket): expected all successful, 0 failed\n{}\n{}",
        v4.report(),
        proxy.log_tail()
    );
    eprintln!("IPv4: {} calls ok in {:?}", v4.successful, v4.wall);

    // IPv6 client, IPv4 upstream: the proxy switches family and routes the
    // replies back to the IPv6 Via.
    let v6 = run_uac_in(
        &pair.peer_ns,
        pair.peer_v6().into(),
        SocketAddr::new(pair.stack_v6().into(), SIP_PORT),
        CALLS_V6,
        RATE,
    );
    assert!(
        v6.all_ok(CALLS_V6),
        "{CALLS_V6} calls over IPv6 (to an IPv4 upstream) through sipedge (afpacket): \
         expected all successful, 0 failed\n{}\n{}",
        v6.report(),
        proxy.log_tail()
    );
    eprintln!("IPv6: {} calls ok in {:?}", v6.successful, v6.wall);

    // Metrics, scraped inside the stack namespace.
    let m = proxy.metrics();
    let calls = f64::from(CALLS_V4 + CALLS_V6);
    let fwd_req = metric(&m, "sipedge_forwarded_total{kind=\"request\"}");
    let fwd_rep = metric(&m, "sipedge_forwarded_total{kind=\"reply\"}");
    let udp_in = metric(
        &m,
        "sipedge_netstack_mib_total{group=\"Udp\",counter=\"InDatagrams\"}",
    );
    let udp6_in = metric(
        &m,
        "sipedge_netstack_mib_total{group=\"Udp6\",counter=\"InDatagrams\"}",
    );
    let ip_in = metric(
        &m,
        "sipedge_netstack_mib_total{group=\"Ip\",counter=\"InReceives\"}",
    );
    let ip6_in = metric(
        &m,
        "sipedge_netstack_mib_total{group=\"Ip6\",counter=\"InReceives\"}",
    );
    let report = format!(
        "forwarded requests {fwd_req}, replies {fwd_rep}; Udp InDatagrams {udp_in}, \
         Udp6 InDatagrams {udp6_in}; Ip InReceives {ip_in}, Ip6 InReceives {ip6_in}\n\
         --- metrics ---\n{m}"
    );
    eprintln!("{}", report.lines().next().unwrap_or(""));
    // Per call: INVITE, ACK, BYE forwarded; 200 (INVITE) and 200 (BYE)
    // always, plus the 180 (optional in the scenario).
    assert!(fwd_req >= 3.0 * calls, "{report}");
    assert!(fwd_rep >= 2.0 * calls, "{report}");
    // Received by the stack at least: per IPv4 call INVITE, ACK, BYE and
    // both 200s over UDP/IPv4; per IPv6 call the requests over UDP/IPv6 and
    // the 200s from the IPv4 upstream.
    let (c4, c6) = (f64::from(CALLS_V4), f64::from(CALLS_V6));
    assert!(udp_in >= 5.0 * c4 + 2.0 * c6, "{report}");
    assert!(udp6_in >= 3.0 * c6, "{report}");
    assert!(ip_in > 0.0 && ip6_in > 0.0, "{report}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("sipedge_netstack_drops_total{")),
        "no sipedge_netstack_drops_total samples\n{report}"
    );

    // Linux learned the stack's MAC through ARP and NDP.
    let mac = pair.stack_mac();
    let (ok4, out4) = neigh_has(&pair, pair.stack_v4().into(), mac);
    assert!(
        ok4,
        "peer ARP entry for {} is not {}: {out4:?}",
        pair.stack_v4(),
        fmt_mac(mac)
    );
    let (ok6, out6) = neigh_has(&pair, pair.stack_v6().into(), mac);
    assert!(
        ok6,
        "peer NDP entry for {} is not {}: {out6:?}",
        pair.stack_v6(),
        fmt_mac(mac)
    );

    drop(uas);
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Stateful mode on the userspace stack (issue #10): the transaction
/// timers run on the stack thread. Two upstreams in round-robin, the first
/// silent (nobody on 198.18.N.1:5081): its tries time out after
/// `fr_timeout_ms` and fail over to the sipp UAS; every call succeeds.
#[test]
fn afpacket_stateful_calls_fail_over_from_a_dead_upstream() {
    if skip_unless_root() || skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let up = pair.peer_v4();
    let cfg = afpacket_config(&pair).replace(
        &format!("upstreams = [\"sip:{up}:{UPSTREAM_PORT}\"]\n"),
        &format!(
            "upstreams = [\"sip:{up}:5081\", \"sip:{up}:{UPSTREAM_PORT}\"]\n\
             mode = \"stateful\"\n\n[transaction]\nfr_timeout_ms = 1000\n"
        ),
    );
    assert!(cfg.contains("stateful"), "{cfg}");
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let uas = SippUas::start_in(&pair.peer_ns, up.into(), UPSTREAM_PORT);
    const CALLS: u32 = 60;
    let run = run_uac_in(
        &pair.peer_ns,
        up.into(),
        SocketAddr::new(pair.stack_v4().into(), SIP_PORT),
        CALLS,
        20,
    );
    let m = proxy.metrics();
    let report = format!(
        "{}\nfailovers {} timeouts {} created {}\n{}",
        run.report(),
        metric(&m, "sipedge_transaction_failovers_total"),
        metric(&m, "sipedge_transaction_timeouts_total"),
        metric(&m, "sipedge_transactions_created_total"),
        proxy.log_tail()
    );
    assert!(run.all_ok(CALLS), "every call succeeds\n{report}");
    assert!(
        metric(&m, "sipedge_transaction_failovers_total") >= 1.0,
        "{report}"
    );
    assert!(
        metric(&m, "sipedge_transaction_timeouts_total") >= 1.0,
        "{report}"
    );
    assert!(
        metric(&m, "sipedge_transactions_created_total") >= f64::from(2 * CALLS),
        "{report}"
    );
    eprintln!("{}", report.lines().take(2).collect::<Vec<_>>().join("\n"));
    drop(uas);
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

#[test]
fn afpacket_upstream_down_is_reported_by_icmp() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let mut proxy = AfSipedge::start(&pair, &afpacket_config(&pair));
    let before = proxy.metrics();
    let q = "sipedge_netstack_mib_total{group=\"Icmp\",counter=\"InDestUnreachs\"}";
    assert_eq!(metric(&before, q), 0.0, "{before}");

    // One OPTIONS for the upstream (nobody listens on 198.18.N.1:5080).
    let (from, to) = (pair.peer_v4(), pair.stack_v4());
    let upstream = format!("sip:bob@{}:{UPSTREAM_PORT}", pair.peer_v4());
    pair.in_peer(move || {
        let s = UdpSocket::bind((from, 0)).expect("bind in the peer namespace");
        let local = s.local_addr().expect("local addr");
        let req = sip_request("OPTIONS", &upstream, "UDP", local, "af-icmp", 70);
        s.send_to(req.as_bytes(), (to, SIP_PORT))
            .expect("send the OPTIONS");
    });

    let t0 = Instant::now();
    let mut m = before;
    while metric(&m, q) < 1.0 && t0.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    let fwd = metric(&m, "sipedge_forwarded_total{kind=\"request\"}");
    assert!(
        metric(&m, q) >= 1.0,
        "no ICMP destination unreachable counted within 5 s (forwarded requests {fwd})\n\
         --- metrics ---\n{m}\n{}",
        proxy.log_tail()
    );
    assert!(fwd >= 1.0, "{m}");

    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Upstream health in afpacket mode: the stack thread sends the OPTIONS
/// probes; a target whose port is closed is reported by ICMP port
/// unreachable (a passive signal) and probe timeouts and goes down; it
/// comes back up once a server answers there.
#[test]
fn afpacket_upstream_health_probes_and_icmp() {
    use common::uas::{TestUas, UasMode};
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let peer = pair.peer_v4();
    let (pa, pb) = (UPSTREAM_PORT, UPSTREAM_PORT + 1);
    let a = pair
        .in_peer(move || TestUas::start_on(peer.into(), pa, UasMode::Normal))
        .expect("UAS A in the peer namespace");
    let sets = format!(
        "\n[[upstream_set]]\nname = \"core\"\nalgorithm = \"priority\"\n\
         ping_interval_ms = 300\nping_timeout_ms = 250\ndown_after = 2\nup_after = 2\n\
         [[upstream_set.target]]\nuri = \"sip:{peer}:{pb}\"\n\
         [[upstream_set.target]]\nuri = \"sip:{peer}:{pa}\"\npriority = 1\n"
    );
    let mut proxy = AfSipedge::start(&pair, &(afpacket_config(&pair) + &sets));
    let up = |port: u16| {
        let m = proxy.metrics();
        samples(&m)
            .into_iter()
            .find(|s| {
                s.name == "sipedge_upstream_up"
                    && s.labels
                        .get("target")
                        .is_some_and(|t| t.ends_with(&format!(":{port}")))
            })
            .map(|s| s.value)
    };
    let wait = |port: u16, want: f64| {
        let t0 = Instant::now();
        while up(port) != Some(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "target :{port} not {want} within 5 s\n{}",
                proxy.log_tail()
            );
            sleep(Duration::from_millis(50));
        }
    };
    wait(pb, 0.0);
    assert_eq!(up(pa), Some(1.0));
    let log = fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        log.contains("signal=\"unreachable\""),
        "{}",
        proxy.log_tail()
    );
    assert!(a.counts.get("OPTIONS") >= 1, "probes reach the live target");
    // a server on B's port: up again
    let b = pair
        .in_peer(move || TestUas::start_on(peer.into(), pb, UasMode::Normal))
        .expect("UAS B in the peer namespace");
    wait(pb, 1.0);
    assert!(b.counts.get("OPTIONS") >= 2);
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

// ---------------------------------------------------------------------------
// SIP over the userspace TCP
// ---------------------------------------------------------------------------

/// The afpacket configuration with `tcp:` listen addresses on both stack
/// addresses and a TCP upstream (198.18.N.1:5080;transport=tcp).
fn afpacket_tcp_config(pair: &NetnsPair) -> String {
    let (v4, v6, up) = (pair.stack_v4(), pair.stack_v6(), pair.peer_v4());
    afpacket_config(pair)
        .replace(
            &format!("listen = [\"udp:{v4}:{SIP_PORT}\", \"udp:[{v6}]:{SIP_PORT}\"]"),
            &format!(
                "listen = [\"udp:{v4}:{SIP_PORT}\", \"tcp:{v4}:{SIP_PORT}\", \
                 \"udp:[{v6}]:{SIP_PORT}\", \"tcp:[{v6}]:{SIP_PORT}\"]"
            ),
        )
        .replace(
            &format!("upstreams = [\"sip:{up}:{UPSTREAM_PORT}\"]"),
            &format!("upstreams = [\"sip:{up}:{UPSTREAM_PORT};transport=tcp\"]"),
        )
}

/// Is a TCP socket of process `pid`'s namespace listening on `addr`
/// (`/proc/PID/net/tcp`, state 0A)?
fn tcp_listening_in_pid(pid: u32, addr: SocketAddr) -> bool {
    let (file, ip_hex) = match addr.ip() {
        IpAddr::V4(ip) => ("tcp", format!("{:08X}", u32::from_ne_bytes(ip.octets()))),
        IpAddr::V6(ip) => (
            "tcp6",
            ip.octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
    };
    let want = format!("{ip_hex}:{:04X}", addr.port());
    fs::read_to_string(format!("/proc/{pid}/net/{file}")).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let mut w = l.split_whitespace();
            w.nth(1) == Some(want.as_str()) && w.nth(1) == Some("0A")
        })
    })
}

/// `sipp -sn uas -t t1` on `ip:port` inside `ns`; stopped (SIGINT by PID)
/// on drop.
struct TcpUas {
    child: Child,
    dir: PathBuf,
}

impl TcpUas {
    fn start_in(ns: &str, ip: IpAddr, port: u16) -> TcpUas {
        let dir = unique_temp_dir("tcpuas");
        let out = File::create(dir.join("uas.out")).expect("create uas.out");
        let child = netns_exec(ns, "sipp")
            .args(["-sn", "uas", "-i", &ip.to_string(), "-p", &port.to_string()])
            .args(["-t", "t1", "-nostdin", "-buff_size", "4194304"])
            .args(["-max_socket", "1000"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn sipp UAS");
        let mut uas = TcpUas { child, dir };
        let addr = SocketAddr::new(ip, port);
        let t0 = Instant::now();
        while !tcp_listening_in_pid(uas.child.id(), addr) {
            let st = uas.child.try_wait();
            if t0.elapsed() > Duration::from_secs(10) || !matches!(st, Ok(None)) {
                panic!(
                    "sipp TCP UAS not listening on {addr} in {ns} within 10 s (status {st:?})\n{}",
                    tail(&uas.dir.join("uas.out"), 20)
                );
            }
            sleep(Duration::from_millis(25));
        }
        uas
    }
}

impl Drop for TcpUas {
    fn drop(&mut self) {
        stop_child(&mut self.child, "INT", Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("sipp TCP UAS files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// sipp over TCP (`transport`) from the peer's Linux stack to sipedge's
/// TCP listener on its own stack (`v6`: the IPv6 address) → an outbound
/// connection from the stack to a sipp TCP UAS (IPv4); replies travel
/// back over the client's own connection (`;i=` in Via). All `calls`
/// succeed; the stack's TCP counters moved.
fn tcp_calls_through_the_stack(transport: SippTransport, v6: bool, calls: u32, rate: u32) {
    let _load = load_lock();
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let mut proxy = AfSipedge::start(&pair, &afpacket_tcp_config(&pair));
    let uas = TcpUas::start_in(&pair.peer_ns, pair.peer_v4().into(), UPSTREAM_PORT);
    let (local, target): (IpAddr, IpAddr) = if v6 {
        (pair.peer_v6().into(), pair.stack_v6().into())
    } else {
        (pair.peer_v4().into(), pair.stack_v4().into())
    };
    let run = run_uac(&UacOpts {
        target: SocketAddr::new(target, SIP_PORT),
        transport,
        calls,
        rate,
        netns: Some(pair.peer_ns.clone()),
        local: Some(local),
    });
    let m = proxy.metrics();
    let q = |g: &str, c: &str| {
        metric(
            &m,
            &format!("sipedge_netstack_mib_total{{group=\"{g}\",counter=\"{c}\"}}"),
        )
    };
    let (passive, active, in_segs) = (
        q("Tcp", "PassiveOpens"),
        q("Tcp", "ActiveOpens"),
        q("Tcp", "InSegs"),
    );
    let fwd_req = metric(&m, "sipedge_forwarded_total{kind=\"request\"}");
    let tcp_in = metric(&m, "sipedge_bytes_received_total{transport=\"tcp\"}");
    let report = format!(
        "{}\nTcp PassiveOpens {passive} ActiveOpens {active} InSegs {in_segs}; forwarded \
         requests {fwd_req}; tcp bytes in {tcp_in}\n{}",
        run.report(),
        proxy.log_tail()
    );
    let name = format!(
        "TCP {} over IPv{}",
        transport.flag(),
        if v6 { 6 } else { 4 }
    );
    assert!(
        run.all_ok(calls),
        "{calls} calls, {name}, through sipedge (afpacket): expected all successful, 0 failed\n{report}"
    );
    let per_call = |c: &str| q("Tcp", c) / f64::from(calls);
    eprintln!(
        "{name}: {} calls ok in {:?}; per call: Tcp InSegs {:.1} OutSegs {:.1}, delayed ACKs {:.1}",
        run.successful,
        run.wall,
        per_call("InSegs"),
        per_call("OutSegs"),
        metric(
            &m,
            "sipedge_netstack_mib_total{group=\"TcpExt\",counter=\"DelayedACKs\"}"
        ) / f64::from(calls)
    );
    // the UAC's connection(s) accepted, one to the UAS opened
    assert!(passive >= 1.0 && active >= 1.0, "{report}");
    if transport == SippTransport::Tn {
        assert!(
            passive >= f64::from(calls),
            "one connection per call\n{report}"
        );
    }
    assert!(fwd_req >= 3.0 * f64::from(calls), "{report}");
    assert!(in_segs > 0.0 && tcp_in > 0.0, "{report}");
    drop(uas);
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Issue 8: SIP over the userspace TCP end to end, sipp `-t t1` (one
/// connection for all calls), IPv4.
#[test]
fn afpacket_tcp_t1_calls_pass_through_the_userspace_stack() {
    if skip_unless_root() || skip_unless_sipp() {
        return;
    }
    tcp_calls_through_the_stack(SippTransport::T1, false, 200, RATE);
}

/// Issue 8: sipp `-t tn` (a connection per call) over IPv6 to the stack,
/// IPv4 TCP to the upstream.
#[test]
fn afpacket_tcp_tn_v6_calls_pass_through_the_userspace_stack() {
    if skip_unless_root() || skip_unless_sipp() {
        return;
    }
    tcp_calls_through_the_stack(SippTransport::Tn, true, 100, RATE);
}

/// SPEC A.2 on the userspace TCP: a connection that sends nothing is
/// released at the first-message deadline (RST by default) and counted.
#[test]
fn afpacket_tcp_first_message_deadline_fires() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let cfg = afpacket_tcp_config(&pair) + "\n[tcp]\nfirst_message_timeout_secs = 1\n";
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let q = "sipedge_tcp_released_total{reason=\"first_message_timeout\"}";
    let before = metric(&proxy.metrics(), q);
    let (from, to): (IpAddr, IpAddr) = (pair.peer_v4().into(), pair.stack_v4().into());
    let end = pair.in_peer(move || -> Result<(String, Duration), String> {
        let mut s = connect_from(from, to)?;
        let t0 = Instant::now();
        Ok((read_end(&mut s, Duration::from_secs(5)), t0.elapsed()))
    });
    let (end, after) = end.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(
        end,
        "reset",
        "released after {after:?}\n{}",
        proxy.log_tail()
    );
    assert!(
        after >= Duration::from_millis(900),
        "released too early: {after:?}"
    );
    let t0 = Instant::now();
    let mut m = proxy.metrics();
    while metric(&m, q) < before + 1.0 && t0.elapsed() < Duration::from_secs(3) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    assert!(metric(&m, q) >= before + 1.0, "{m}");
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Issue 8 / SPEC A.2: non-SIP bytes on a TCP connection to the stack →
/// released at once with reason parse_error, and (`stack.tcp_release`
/// default "rst") the client sees a reset, not an orderly close.
#[test]
fn afpacket_tcp_non_sip_bytes_are_released_with_rst() {
    use std::io::{ErrorKind, Read, Write};
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let mut proxy = AfSipedge::start(&pair, &afpacket_tcp_config(&pair));
    let released = "sipedge_tcp_released_total{reason=\"parse_error\"}";
    let before = metric(&proxy.metrics(), released);
    let (from, to) = (pair.peer_v4(), pair.stack_v4());
    let outcome = pair.in_peer(move || -> Result<String, String> {
        let mut s = connect_from(from.into(), to.into())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GARBAGE\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 512];
        for _ in 0..100 {
            match s.read(&mut buf) {
                Ok(0) => return Ok("orderly close (FIN)".into()),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok("reset".into()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Err("no close".into())
    });
    let t0 = Instant::now();
    let mut m = proxy.metrics();
    while metric(&m, released) < before + 1.0 && t0.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    assert_eq!(
        outcome.as_deref(),
        Ok("reset"),
        "the client sees RST\n{}",
        proxy.log_tail()
    );
    assert!(
        metric(&m, released) >= before + 1.0,
        "{released} did not move\n--- metrics ---\n{m}\n{}",
        proxy.log_tail()
    );
    assert!(
        metric(
            &m,
            "sipedge_netstack_mib_total{group=\"Tcp\",counter=\"OutRsts\"}"
        ) >= 1.0,
        "{m}"
    );
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// A TCP connection from `from` (the peer namespace's Linux stack; call
/// inside it) to sipedge at `to`:5060.
fn connect_from(from: IpAddr, to: IpAddr) -> Result<std::net::TcpStream, String> {
    let domain = if to.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock =
        socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::new(from, 0).into())
        .map_err(|e| e.to_string())?;
    sock.connect_timeout(
        &SocketAddr::new(to, SIP_PORT).into(),
        Duration::from_secs(3),
    )
    .map_err(|e| format!("connect {to}:{SIP_PORT}: {e}"))?;
    let s: std::net::TcpStream = sock.into();
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Read until the connection ends: "fin" (EOF), "reset", or "open" when
/// nothing ended it within `timeout`.
fn read_end(s: &mut std::net::TcpStream, timeout: Duration) -> String {
    use std::io::{ErrorKind, Read};
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => return "fin".into(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return "reset".into(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return format!("error {e}"),
        }
    }
    "open".into()
}

/// Issue 8 on the userspace TCP: `stack.tcp_release = "fin"` closes a
/// connection released for non-SIP bytes in order (FIN, still counted as
/// parse_error); an OPTIONS to the proxy is answered on the connection and
/// a CRLFCRLF ping gets its CRLF pong (RFC 5626 §4.4.1); on SIGTERM the
/// drain closes the idle connection with FIN and sipedge exits 0.
#[test]
fn afpacket_tcp_release_fin_keepalive_and_drain() {
    use std::io::{Read, Write};
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let cfg = afpacket_tcp_config(&pair) + "tcp_release = \"fin\"\n";
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let parse_error = "sipedge_tcp_released_total{reason=\"parse_error\"}";
    let before = metric(&proxy.metrics(), parse_error);
    let (from, to): (IpAddr, IpAddr) = (pair.peer_v4().into(), pair.stack_v4().into());
    let r = pair.in_peer(move || -> Result<_, String> {
        let mut a = connect_from(from, to)?;
        a.write_all(b"GARBAGE\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let a_end = read_end(&mut a, Duration::from_secs(5));
        let mut b = connect_from(from, to)?;
        let local = b.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-fin",
            70,
        );
        b.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let reply = read_sip_message(&mut b, Duration::from_secs(3))?;
        b.write_all(b"\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut pong = [0u8; 2];
        b.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        b.read_exact(&mut pong).map_err(|e| format!("pong: {e}"))?;
        Ok((a_end, reply, pong, b))
    });
    let (a_end, reply, pong, mut b) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(
        a_end,
        "fin",
        "tcp_release = fin: orderly close\n{}",
        proxy.log_tail()
    );
    assert_eq!(status_code(&reply), Some(200), "{reply}");
    assert_eq!(&pong, b"\r\n");
    let t0 = Instant::now();
    let mut m = proxy.metrics();
    while metric(&m, parse_error) < before + 1.0 && t0.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    assert!(metric(&m, parse_error) >= before + 1.0, "{m}");
    assert!(
        metric(&m, "sipedge_keepalives_total{kind=\"pong\"}") >= 1.0,
        "{m}"
    );
    // drain: the idle connection gets FIN
    signal_pid(proxy.child.id(), "TERM");
    let b_end = read_end(&mut b, Duration::from_secs(8));
    assert_eq!(
        b_end,
        "fin",
        "drain closes idle connections with FIN\n{}",
        proxy.log_tail()
    );
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 after SIGTERM ({st:?})\n{log}"
    );
}

/// SPEC A.2 on the userspace TCP, the other deadlines: a message trickled
/// byte by byte is released at the message deadline (slowloris: the
/// trickle does not extend it; RST), an idle connection after its idle
/// lifetime (FIN).
#[test]
fn afpacket_tcp_slowloris_and_idle_deadlines_fire() {
    use std::io::Write;
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let cfg =
        afpacket_tcp_config(&pair) + "\n[tcp]\nmessage_timeout_secs = 1\nidle_lifetime_secs = 2\n";
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let (from, to): (IpAddr, IpAddr) = (pair.peer_v4().into(), pair.stack_v4().into());
    let r = pair.in_peer(move || -> Result<_, String> {
        // slowloris: one byte every 200 ms
        let mut a = connect_from(from, to)?;
        let local = a.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-slow",
            70,
        );
        let t0 = Instant::now();
        let mut a_end = String::from("open");
        for b in req.as_bytes().iter().take(40) {
            if a.write_all(std::slice::from_ref(b)).is_err() {
                a_end = "write failed".into();
                break;
            }
            let e = read_end(&mut a, Duration::from_millis(200));
            if e != "open" {
                a_end = e;
                break;
            }
        }
        let a_after = t0.elapsed();
        // idle: one message, then nothing
        let mut b = connect_from(from, to)?;
        let local = b.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-idle",
            70,
        );
        b.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        read_sip_message(&mut b, Duration::from_secs(3))?;
        let t1 = Instant::now();
        let b_end = read_end(&mut b, Duration::from_secs(6));
        Ok((a_end, a_after, b_end, t1.elapsed()))
    });
    let (a_end, a_after, b_end, b_after) =
        r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(
        a_end,
        "reset",
        "slowloris after {a_after:?}\n{}",
        proxy.log_tail()
    );
    assert!(
        a_after < Duration::from_secs(3),
        "the trickle extended the message deadline: {a_after:?}"
    );
    assert_eq!(b_end, "fin", "idle after {b_after:?}\n{}", proxy.log_tail());
    assert!(
        b_after >= Duration::from_millis(1500),
        "idle release too early: {b_after:?}"
    );
    let released = |r: &str| format!("sipedge_tcp_released_total{{reason=\"{r}\"}}");
    let t0 = Instant::now();
    let mut m = proxy.metrics();
    while metric(&m, &released("idle_timeout")) < 1.0 && t0.elapsed() < Duration::from_secs(3) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    assert!(metric(&m, &released("message_timeout")) >= 1.0, "{m}");
    assert!(metric(&m, &released("idle_timeout")) >= 1.0, "{m}");
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// The nosip `match` hook on the userspace TCP: matching junk is consumed
/// (counted, not a release) and the connection keeps serving SIP.
#[test]
fn afpacket_tcp_nosip_match_keeps_the_connection() {
    use std::io::Write;
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let cfg = afpacket_tcp_config(&pair) + "\n[nosip]\nhook = \"match\"\npattern = '^GARBAGE'\n";
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let (from, to): (IpAddr, IpAddr) = (pair.peer_v4().into(), pair.stack_v4().into());
    let r = pair.in_peer(move || -> Result<_, String> {
        let mut s = connect_from(from, to)?;
        s.write_all(b"GARBAGE\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let end = read_end(&mut s, Duration::from_millis(500));
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-nosip",
            70,
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let reply = read_sip_message(&mut s, Duration::from_secs(3))?;
        Ok((end, status_code(&reply)))
    });
    let (end, code) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(
        end,
        "open",
        "matched junk must not close the connection\n{}",
        proxy.log_tail()
    );
    assert_eq!(code, Some(200));
    let m = proxy.metrics();
    assert!(
        metric(&m, "sipedge_nosip_total{verdict=\"drop\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "sipedge_tcp_released_total{reason=\"parse_error\"}"),
        0.0,
        "{m}"
    );
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// SPEC A.4 on the userspace TCP: the connection table's admission applies
/// (here `max_connections_per_ip = 1`): a connection over the limit is
/// aborted (the client sees RST) and counted; the admitted one still works.
#[test]
fn afpacket_tcp_connection_over_the_per_ip_limit_is_refused() {
    use std::io::Write;
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let cfg = afpacket_tcp_config(&pair) + "\n[tcp]\nmax_connections_per_ip = 1\n";
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let (from, to): (IpAddr, IpAddr) = (pair.peer_v4().into(), pair.stack_v4().into());
    let r = pair.in_peer(move || -> Result<(String, u16), String> {
        // A is admitted and served first; B (same IP) is over the limit
        let mut a = connect_from(from, to)?;
        let local = a.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-lim",
            70,
        );
        a.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let reply = read_sip_message(&mut a, Duration::from_secs(3))?;
        // the RST can beat connect()'s own completion check
        let b_end = match connect_from(from, to) {
            Ok(mut b) => read_end(&mut b, Duration::from_secs(3)),
            Err(e) if e.contains("reset") => "reset".to_string(),
            Err(e) => return Err(e),
        };
        Ok((b_end, status_code(&reply).unwrap_or(0)))
    });
    let (b_end, code) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(b_end, "reset", "{}", proxy.log_tail());
    assert_eq!(code, 200);
    let m = proxy.metrics();
    assert!(metric(&m, "sipedge_tcp_refused_total") >= 1.0, "{m}");
    assert!(
        metric(&m, "sipedge_tcp_released_total{reason=\"limit\"}") >= 1.0,
        "{m}"
    );
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Issue 8: a refused TCP connect to an upstream target (the peer's Linux
/// answers the stack's SYN with RST) is a passive signal: with
/// `hold_down_ms` the target goes down at the first one, and the failed
/// connect is counted (release reason connect_failed, Tcp AttemptFails).
#[test]
fn afpacket_refused_tcp_connect_marks_the_upstream_down() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let peer = pair.peer_v4();
    let sets = format!(
        "\n[[upstream_set]]\nname = \"core\"\nping_interval_ms = 500\nping_timeout_ms = 400\n\
         down_after = 3\nup_after = 2\nhold_down_ms = 60000\n\
         [[upstream_set.target]]\nuri = \"sip:{peer}:5099;transport=tcp\"\n"
    );
    let mut proxy = AfSipedge::start(&pair, &(afpacket_tcp_config(&pair) + &sets));
    let t0 = Instant::now();
    let up = |m: &str| {
        samples(m)
            .into_iter()
            .find(|s| s.name == "sipedge_upstream_up")
            .map(|s| s.value)
    };
    let mut m = proxy.metrics();
    while up(&m) != Some(0.0) && t0.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50));
        m = proxy.metrics();
    }
    let took = t0.elapsed();
    assert_eq!(
        up(&m),
        Some(0.0),
        "target not down within 5 s\n{m}\n{}",
        proxy.log_tail()
    );
    let log = fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        log.contains("signal=\"connect_failed\""),
        "{}",
        proxy.log_tail()
    );
    assert!(
        metric(&m, "sipedge_tcp_released_total{reason=\"connect_failed\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sipedge_upstream_failure_signals_total{signal=\"connect_failed\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sipedge_netstack_mib_total{group=\"Tcp\",counter=\"AttemptFails\"}"
        ) >= 1.0,
        "{m}"
    );
    eprintln!("refused upstream down after {took:?}");
    let (st, log) = proxy.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "sipedge did not exit 0 within 5 s of SIGTERM ({st:?})\n{log}"
    );
}

/// Issue 8, CLI overrides: afpacket mode from flags alone (no file):
/// `--stack afpacket --iface --ipv4 --ipv6 --listen tcp:… --upstream`;
/// an OPTIONS over TCP to the stack's address is answered.
#[test]
fn afpacket_mode_from_command_line_flags_only() {
    use std::io::Write;
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    must("ip", &["-n", &pair.stack_ns, "link", "set", "lo", "up"]);
    let (v4, v6, up) = (pair.stack_v4(), pair.stack_v6(), pair.peer_v4());
    let dir = unique_temp_dir("afflags");
    let log = dir.join("sipedge.log");
    let logf = File::create(&log).expect("create the log");
    let mut child = netns_exec(&pair.stack_ns, sipedge_bin())
        .args(["--stack", "afpacket", "--iface", &pair.stack_if])
        .args(["--ipv4", &format!("{v4}/24"), "--ipv6", &format!("{v6}/64")])
        .args(["--listen", &format!("tcp:{v4}:{SIP_PORT}")])
        .args(["--listen", &format!("udp:{v4}:{SIP_PORT}")])
        .args([
            "--upstream",
            &format!("sip:{up}:{UPSTREAM_PORT};transport=tcp"),
        ])
        .args(["--metrics", "off"])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup"))
        .stderr(logf)
        .spawn()
        .expect("spawn sipedge");
    let t0 = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|t| t.contains(READY_LINE)) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("sipedge exited during start-up ({st})\n{}", tail(&log, 40));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not ready within 10 s\n{}",
            tail(&log, 40)
        );
        sleep(Duration::from_millis(50));
    }
    let to: IpAddr = v4.into();
    let from: IpAddr = up.into();
    let r = pair.in_peer(move || -> Result<Option<u16>, String> {
        let mut s = connect_from(from, to)?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let req = sip_request(
            "OPTIONS",
            &format!("sip:{to}:{SIP_PORT}"),
            "TCP",
            local,
            "af-cli",
            70,
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        Ok(status_code(&read_sip_message(
            &mut s,
            Duration::from_secs(3),
        )?))
    });
    let code = r.unwrap_or_else(|e| panic!("{e}\n{}", tail(&log, 40)));
    assert_eq!(code, Some(200), "{}", tail(&log, 40));
    signal_pid(child.id(), "TERM");
    let st = wait_child(&mut child, Duration::from_secs(5));
    if st.is_none() {
        let _ = child.kill();
        let _ = wait_child(&mut child, Duration::from_secs(5));
    }
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        tail(&log, 40)
    );
    let _ = fs::remove_dir_all(&dir);
}

/// `sipedge check-config FILE` with `text` in FILE: (exit code, stderr).
fn check_config(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let path = dir.join(name);
    fs::write(&path, text).expect("write config");
    let out = run_bounded(
        Command::new(sipedge_bin()).arg("check-config").arg(&path),
        Duration::from_secs(10),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn afpacket_mode_startup_errors_are_clear() {
    let dir = unique_temp_dir("afcfg");
    let base = "[proxy]\nupstreams = [\"sip:198.18.0.10:5060\"]\n";

    // No stack.interface.
    let no_if = format!(
        "{base}listen = [\"udp:198.18.0.2:5060\"]\n\n[stack]\nmode = \"afpacket\"\nipv4 = \"198.18.0.2/24\"\n"
    );
    let (code, err) = check_config(&dir, "no-interface.toml", &no_if);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("stack.interface"), "{err}");

    // A TCP listen address that is not the stack's own is refused...
    let tcp = format!(
        "{base}listen = [\"tcp:198.18.0.3:5060\"]\n\n[stack]\nmode = \"afpacket\"\n\
         interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n"
    );
    let (code, err) = check_config(&dir, "tcp.toml", &tcp);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("proxy.listen[0]"), "{err}");
    // ... one on the stack's address is fine, and so is the example file.
    let (code, err) = check_config(
        &dir,
        "tcp-ok.toml",
        &tcp.replace("198.18.0.3:5060", "198.18.0.2:5060"),
    );
    assert_eq!(code, Some(0), "{err}");
    let example =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/sipedge-afpacket.toml"))
            .expect("read etc/sipedge-afpacket.toml");
    let (code, err) = check_config(&dir, "example.toml", &example);
    assert_eq!(code, Some(0), "{err}");
    // A bad stack.tcp_release names the key.
    let (code, err) = check_config(
        &dir,
        "release.toml",
        &format!(
            "{}tcp_release = \"drop\"\n",
            tcp.replace("198.18.0.3:5060", "198.18.0.2:5060")
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("stack.tcp_release"), "{err}");

    // An interface that does not exist: a runtime error naming it.
    if skip_unless_root() {
        let _ = fs::remove_dir_all(&dir);
        return;
    }
    let path = dir.join("missing-interface.toml");
    fs::write(
        &path,
        format!(
            "{base}listen = [\"udp:198.18.0.2:5060\"]\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n\
             [stack]\nmode = \"afpacket\"\ninterface = \"sedoesnotexist\"\nipv4 = \"198.18.0.2/24\"\n",
            free_port()
        ),
    )
    .expect("write config");
    let t0 = Instant::now();
    let out = run_bounded(
        Command::new(sipedge_bin()).arg("--config").arg(&path),
        Duration::from_secs(10),
    );
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: {err}", out.status);
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(
        err.contains("sedoesnotexist") && err.contains("no such network interface"),
        "{err}"
    );
    eprintln!(
        "missing interface: {} after {took:?}; stderr:\n{err}",
        out.status
    );

    // Without CAP_NET_RAW (dropped from the bounding set, so even root
    // lacks it): a clear permission error naming what is needed. `lo`
    // exists, so the check reached is the AF_PACKET socket itself.
    if skip_unless_tool("setpriv", "util-linux") {
        return;
    }
    let path = dir.join("no-cap.toml");
    fs::write(
        &path,
        format!(
            "{base}listen = [\"udp:198.18.0.2:5060\"]\n\n[metrics]\nlisten = \"\"\n\n\
             [stack]\nmode = \"afpacket\"\ninterface = \"lo\"\nipv4 = \"198.18.0.2/24\"\n"
        ),
    )
    .expect("write config");
    let out = run_bounded(
        Command::new("setpriv")
            .arg("--bounding-set=-net_raw")
            .arg(sipedge_bin())
            .arg("--config")
            .arg(&path),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: {err}", out.status);
    assert!(
        err.contains("permission denied") && err.contains("CAP_NET_RAW"),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);
}
