//! Upstream sets and health with the real binary (issue #10): sipp calls
//! through sipedge to three upstreams (tests/common/uas.rs, which answers
//! OPTIONS as a real server does): one answers everything 503, one is
//! stopped in the middle of a sipp run. Probes mark the 503 one and the
//! stopped one down within the configured time; while down they get no new
//! requests (stateless mode) and every call succeeds on the remaining
//! target; the stopped one comes back up after it returns and gets calls
//! again. Over UDP and over TCP.

mod common;

use common::uas::{TestUas, UasMode};
use common::*;
use std::time::{Duration, Instant};

const PING_MS: u64 = 300;
const TIMEOUT_MS: u64 = 250;
const DOWN_AFTER: u64 = 2;
const UP_AFTER: u64 = 2;

/// Longest time to notice a change: the thresholds' probes plus a probe
/// timeout, plus a second of slack for a loaded machine.
fn bound(n: u64) -> Duration {
    Duration::from_millis(n * PING_MS + TIMEOUT_MS + 1000)
}

fn config(transport: &str, algorithm: &str, ports: &[u16]) -> String {
    let mut s = format!(
        "[[upstream_set]]\nname = \"core\"\nalgorithm = \"{algorithm}\"\n\
         ping_interval_ms = {PING_MS}\nping_timeout_ms = {TIMEOUT_MS}\n\
         down_after = {DOWN_AFTER}\nup_after = {UP_AFTER}\n"
    );
    for p in ports {
        s.push_str(&format!(
            "[[upstream_set.target]]\nuri = \"sip:127.0.0.1:{p};transport={transport}\"\n"
        ));
    }
    s
}

/// `sipedge_upstream_up` (or another per-target family) of the target on `port`.
fn target_metric(proxy: &Proxy, name: &str, port: u16, extra: Option<(&str, &str)>) -> Option<f64> {
    let text = proxy.metrics();
    let needle = format!(":{port};");
    samples(&text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| s.labels.get("target").is_some_and(|t| t.contains(&needle)))
        .filter(|s| extra.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// Poll (bounded) until the target's `sipedge_upstream_up` is `want`;
/// returns how long it took.
fn wait_up(proxy: &Proxy, port: u16, want: f64, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let v = target_metric(proxy, "sipedge_upstream_up", port, None);
        if v == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "target :{port} not {} within {limit:?} (now {v:?})\n{}",
            if want == 1.0 { "up" } else { "down" },
            proxy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn calls(proxy: &Proxy, transport: SippTransport, n: u32, rate: u32) -> SippResult {
    run_uac(&UacOpts {
        target: proxy.sip_addr(),
        transport,
        calls: n,
        rate,
        netns: None,
        local: None,
    })
}

/// `algorithm`: with `round-robin` the ACK and BYE of a call may go to
/// another target than its INVITE (the proxy picks for every request
/// without a Route left), so requests are counted per call, all methods but
/// OPTIONS.
///
/// `stateful`: `proxy.mode = "stateful"` — the transactions fail over from
/// the stopped target while the probes mark it down, so not one call of
/// the interrupted run may fail.
fn health_scenario(transport: SippTransport, algorithm: &str, stateful: bool) {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    let t = if transport.is_tcp() { "tcp" } else { "udp" };
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = TestUas::restart(pa, UasMode::Normal);
    let b = TestUas::restart(pb, UasMode::Normal);
    let c = TestUas::restart(pc, UasMode::Unavailable);
    let mut cfg = config(t, algorithm, &[pa, pb, pc]);
    if stateful {
        // Timer B / F: a request sent to B just before its probes mark it
        // down fails over after this long (ICMP for a forwarded UDP request
        // is not seen in kernel mode)
        cfg = format!("[transaction]\nfr_timeout_ms = 1000\n\n{cfg}");
    }
    let mut opts = ProxyOpts::new(pa).config(&cfg);
    if stateful {
        opts = opts.proxy_keys("mode = \"stateful\"");
    }
    let proxy = Proxy::start_with(opts);

    // the 503 target: its probes are answered 503 (a failure code) → down
    wait_up(&proxy, pc, 0.0, bound(DOWN_AFTER));
    assert_eq!(
        target_metric(&proxy, "sipedge_upstream_up", pa, None),
        Some(1.0)
    );
    assert!(
        c.counts.get("OPTIONS") >= DOWN_AFTER,
        "probes reach the 503 target: {:?}",
        c.counts
    );
    assert!(
        a.counts.get("OPTIONS") >= 1,
        "probes reach the healthy target"
    );

    // a sipp run; B is stopped in the middle of it
    let run = std::thread::scope(|s| {
        let h = s.spawn(|| calls(&proxy, transport, 60, 20));
        std::thread::sleep(Duration::from_millis(1500));
        let b_calls = b.counts.calls();
        drop(b);
        let took = wait_up(&proxy, pb, 0.0, bound(DOWN_AFTER));
        eprintln!("stopped target marked down after {took:?} (it had {b_calls} call requests)");
        assert!(b_calls > 0, "B took calls before it stopped");
        h.join().expect("sipp thread")
    });
    if stateful {
        assert!(
            run.all_ok(60),
            "stateful: every call of the interrupted run succeeds (failover)\n{}\n{}",
            run.report(),
            proxy.log_tail()
        );
    } else {
        assert!(
            run.successful >= 30,
            "most calls of the interrupted run succeed\n{}",
            run.report()
        );
    }

    // B and C down: every call goes to A; C gets no new requests
    let c_calls = c.counts.calls();
    let a_invites = a.counts.get("INVITE");
    let run = calls(&proxy, transport, 40, 40);
    assert!(run.all_ok(40), "{}\n{}", run.report(), proxy.log_tail());
    assert_eq!(c.counts.calls(), c_calls, "a down target got new requests");
    assert!(a.counts.get("INVITE") >= a_invites + 40);

    // B returns on its port: up again after up_after probes, gets calls
    let b = TestUas::restart(pb, UasMode::Normal);
    let took = wait_up(&proxy, pb, 1.0, bound(UP_AFTER) + Duration::from_secs(1));
    eprintln!("returned target marked up after {took:?}");
    let run = calls(&proxy, transport, 40, 40);
    assert!(run.all_ok(40), "{}\n{}", run.report(), proxy.log_tail());
    assert!(
        b.counts.calls() >= 10,
        "B back in rotation: {:?} (A {:?})",
        b.counts,
        a.counts
    );
    assert_eq!(c.counts.calls(), c_calls, "the 503 target stays down");

    let down = target_metric(
        &proxy,
        "sipedge_upstream_transitions_total",
        pb,
        Some(("to", "down")),
    );
    let up = target_metric(
        &proxy,
        "sipedge_upstream_transitions_total",
        pb,
        Some(("to", "up")),
    );
    assert!(
        down >= Some(1.0) && up >= Some(1.0),
        "transitions down {down:?} up {up:?}"
    );
    let probes = target_metric(&proxy, "sipedge_upstream_probe_seconds_count", pa, None);
    assert!(probes >= Some(3.0), "probe latency histogram: {probes:?}");
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        log.contains("upstream target down") && log.contains("upstream target up"),
        "transitions are logged\n{}",
        proxy.log_tail()
    );
    // the passive signal that saw B stop: ICMP port unreachable for a UDP
    // probe (its connected socket), a refused / reset TCP connection
    let signal = if transport.is_tcp() {
        ["signal=\"connect_failed\"", "signal=\"reset\""]
    } else {
        ["signal=\"unreachable\""; 2]
    };
    assert!(
        log.lines().any(|l| l.contains(&format!(":{pb}"))
            && l.contains("upstream target down")
            && signal.iter().any(|s| l.contains(s))),
        "B's down transition names a passive signal {signal:?}\n{}",
        proxy.log_tail()
    );
}

#[test]
fn udp_probes_mark_stopped_and_503_targets_down_and_back_up() {
    health_scenario(SippTransport::U1, "call-id-hash", false);
}

#[test]
fn stateful_udp_probes_and_failover_lose_no_call() {
    health_scenario(SippTransport::U1, "call-id-hash", true);
}

#[test]
fn stateful_tcp_probes_and_failover_lose_no_call() {
    health_scenario(SippTransport::T1, "round-robin", true);
}

#[test]
fn tcp_probes_mark_stopped_and_503_targets_down_and_back_up() {
    health_scenario(SippTransport::T1, "round-robin", false);
}

/// `GET path` on the metrics listener: (status, body).
fn http_get(proxy: &Proxy, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&proxy.metrics_addr(), Duration::from_secs(2))
        .expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// Poll (bounded) until `/ready` answers `want`.
fn wait_ready(proxy: &Proxy, want: u16, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let (code, body) = http_get(proxy, "/ready");
        if code == want {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "/ready is {code} ({body:?}), not {want}, after {limit:?}\n{}",
            proxy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn every_target_down_503_and_not_ready_until_one_returns() {
    let p = free_port();
    let uas = TestUas::restart(p, UasMode::Unavailable);
    let proxy = Proxy::start_with(ProxyOpts::new(p).config(&config("udp", "priority", &[p])));
    wait_up(&proxy, p, 0.0, bound(DOWN_AFTER));
    wait_ready(&proxy, 503, Duration::from_secs(2));
    let (_, body) = http_get(&proxy, "/ready");
    assert!(body.contains("no upstream"), "{body}");
    // a request finds no target up: answered 503 by the proxy, not forwarded
    let before = uas.counts.get("INVITE");
    let uri = format!("sip:bob@127.0.0.1:{}", proxy.sip_port);
    let reply = udp_exchange(proxy.sip_addr(), |local| {
        sip_request("INVITE", &uri, "UDP", local, "none-up", 70)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    assert_eq!(status_code(&reply), Some(503), "{reply}");
    assert_eq!(uas.counts.get("INVITE"), before);
    // the target recovers: up, ready again
    drop(uas);
    let _uas = TestUas::restart(p, UasMode::Normal);
    wait_up(&proxy, p, 1.0, bound(UP_AFTER) + Duration::from_secs(1));
    wait_ready(&proxy, 200, Duration::from_secs(2));
}
