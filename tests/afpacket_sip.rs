//! sipedge in afpacket mode (`stack.mode = "afpacket"`) end to end: the
//! binary runs in the stack namespace of a `NetnsPair` (its veth end has no
//! kernel address) and carries SIP over UDP on its own IPv4/IPv6 stack; sipp
//! (UAS and UAC) and raw sockets run on the Linux stack of the peer
//! namespace (198.18.N.1, 2001:db8:N::1). The metrics endpoint stays on a
//! kernel socket, 127.0.0.1 inside the stack namespace. The harness is
//! tests/common/afpacket.rs; the sipp suites over TCP, the TCP read path
//! (non-SIP bytes, nosip, deadlines) and the command-line-only start are in
//! tests/afpacket_sipp.rs.
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

use std::fs;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::afpacket::*;
use common::netns::*;
use common::*;

const CALLS_V4: u32 = 200;
const CALLS_V6: u32 = 100;
const RATE: u32 = 100;

/// The UDP-only afpacket configuration (see `af_config`).
fn afpacket_config(pair: &NetnsPair) -> String {
    af_config(pair, false, "")
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
    let mut proxy = AfSipedge::start(&pair, &afpacket_config(&pair));
    let uas = SippUas::start_in(&pair.peer_ns, pair.peer_v4().into(), AF_UPSTREAM_PORT);

    // IPv4: UAC 198.18.N.1 → sipedge 198.18.N.2:5060 → UAS 198.18.N.1:5080.
    let v4 = run_uac_in(
        &pair.peer_ns,
        pair.peer_v4().into(),
        SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT),
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
        SocketAddr::new(pair.stack_v6().into(), AF_SIP_PORT),
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
    proxy.stop_clean();
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
    let up = pair.peer_v4();
    let cfg = afpacket_config(&pair).replace(
        &format!("upstreams = [\"sip:{up}:{AF_UPSTREAM_PORT}\"]\n"),
        &format!(
            "upstreams = [\"sip:{up}:5081\", \"sip:{up}:{AF_UPSTREAM_PORT}\"]\n\
             mode = \"stateful\"\n\n[transaction]\nfr_timeout_ms = 1000\n"
        ),
    );
    assert!(cfg.contains("stateful"), "{cfg}");
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let uas = SippUas::start_in(&pair.peer_ns, up.into(), AF_UPSTREAM_PORT);
    const CALLS: u32 = 60;
    let run = run_uac_in(
        &pair.peer_ns,
        up.into(),
        SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT),
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
    proxy.stop_clean();
}

#[test]
fn afpacket_upstream_down_is_reported_by_icmp() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let mut proxy = AfSipedge::start(&pair, &afpacket_config(&pair));
    let before = proxy.metrics();
    let q = "sipedge_netstack_mib_total{group=\"Icmp\",counter=\"InDestUnreachs\"}";
    assert_eq!(metric(&before, q), 0.0, "{before}");

    // One OPTIONS for the upstream (nobody listens on 198.18.N.1:5080).
    let (from, to) = (pair.peer_v4(), pair.stack_v4());
    let upstream = format!("sip:bob@{}:{AF_UPSTREAM_PORT}", pair.peer_v4());
    pair.in_peer(move || {
        let s = UdpSocket::bind((from, 0)).expect("bind in the peer namespace");
        let local = s.local_addr().expect("local addr");
        let req = sip_request("OPTIONS", &upstream, "UDP", local, "af-icmp", 70);
        s.send_to(req.as_bytes(), (to, AF_SIP_PORT))
            .expect("send the OPTIONS");
    });

    proxy.wait_metric_at_least(q, 1.0, Duration::from_secs(5));
    let m = proxy.metrics();
    let fwd = metric(&m, "sipedge_forwarded_total{kind=\"request\"}");
    assert!(
        metric(&m, q) >= 1.0,
        "no ICMP destination unreachable counted within 5 s (forwarded requests {fwd})\n\
         --- metrics ---\n{m}\n{}",
        proxy.log_tail()
    );
    assert!(fwd >= 1.0, "{m}");

    proxy.stop_clean();
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
    let peer = pair.peer_v4();
    let (pa, pb) = (AF_UPSTREAM_PORT, AF_UPSTREAM_PORT + 1);
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
    let log = proxy.log_text();
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
    proxy.stop_clean();
}

// ---------------------------------------------------------------------------
// SIP over the userspace TCP (the read path and the calls: tests/afpacket_sipp.rs)
// ---------------------------------------------------------------------------

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
    let mut proxy = AfSipedge::start(&pair, &af_tcp_config(&pair, "tcp_release = \"fin\"\n"));
    let before = proxy.metric(&released("parse_error"));
    let (from, to) = target(&pair, false);
    let r = pair.in_peer(move || -> Result<_, String> {
        let mut a = connect_from(from, to)?;
        a.write_all(b"GARBAGE\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let a_end = read_end(&mut a, Duration::from_secs(5));
        let mut b = connect_from(from, to)?;
        let reply = options_over(&mut b, to, "af-fin")?;
        b.write_all(b"\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut pong = [0u8; 2];
        b.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        b.read_exact(&mut pong).map_err(|e| format!("pong: {e}"))?;
        Ok((a_end, reply, pong, b))
    });
    let (a_end, reply, pong, mut b) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert!(
        a_end.is_eof(),
        "tcp_release = fin: orderly close, got {a_end:?}\n{}",
        proxy.log_tail()
    );
    assert_eq!(status_code(&reply), Some(200), "{reply}");
    assert_eq!(&pong, b"\r\n");
    let now = proxy.wait_metric_at_least(
        &released("parse_error"),
        before + 1.0,
        Duration::from_secs(5),
    );
    let m = proxy.metrics();
    assert!(now >= before + 1.0, "{m}");
    assert!(
        metric(&m, "sipedge_keepalives_total{kind=\"pong\"}") >= 1.0,
        "{m}"
    );
    // drain: the idle connection gets FIN
    proxy.signal("TERM");
    let b_end = read_end(&mut b, Duration::from_secs(8));
    assert!(
        b_end.is_eof(),
        "drain closes idle connections with FIN, got {b_end:?}\n{}",
        proxy.log_tail()
    );
    proxy.stop_clean();
}

/// SPEC A.4 on the userspace TCP: the connection table's admission applies
/// (here `max_connections_per_ip = 1`): a connection over the limit is
/// aborted (the client sees RST) and counted; the admitted one still works.
#[test]
fn afpacket_tcp_connection_over_the_per_ip_limit_is_refused() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let cfg = af_tcp_config(&pair, "[tcp]\nmax_connections_per_ip = 1\n");
    let mut proxy = AfSipedge::start(&pair, &cfg);
    let (from, to) = target(&pair, false);
    let r = pair.in_peer(move || -> Result<(bool, u16), String> {
        // A is admitted and served first; B (same IP) is over the limit
        let mut a = connect_from(from, to)?;
        let reply = options_over(&mut a, to, "af-lim")?;
        let b_reset = connect_and_read_end(from, to, Duration::from_secs(3))?.is_reset();
        Ok((b_reset, status_code(&reply).unwrap_or(0)))
    });
    let (b_reset, code) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert!(b_reset, "{}", proxy.log_tail());
    assert_eq!(code, 200);
    let m = proxy.metrics();
    assert!(metric(&m, "sipedge_tcp_refused_total") >= 1.0, "{m}");
    assert!(metric(&m, &released("limit")) >= 1.0, "{m}");
    proxy.stop_clean();
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
    let peer = pair.peer_v4();
    let sets = format!(
        "\n[[upstream_set]]\nname = \"core\"\nping_interval_ms = 500\nping_timeout_ms = 400\n\
         down_after = 3\nup_after = 2\nhold_down_ms = 60000\n\
         [[upstream_set.target]]\nuri = \"sip:{peer}:5099;transport=tcp\"\n"
    );
    let mut proxy = AfSipedge::start(&pair, &(af_tcp_config(&pair, &sets)));
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
    let log = proxy.log_text();
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
    proxy.stop_clean();
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
