//! The embedded stack's TCP against Linux TCP on a real link (issue 7):
//! network namespaces joined by a veth pair (tests/common/netns.rs), the
//! `netstack_echo` example serving TCP in the stack namespace (198.18.N.2,
//! 2001:db8:N::2), and the `tcp_peer` example as the Linux side in the
//! peer namespace (198.18.N.1 and extra addresses, 2001:db8:N::1).
//!
//! Every test that runs `netstack_echo` runs twice (issue 9):
//! `rx_ring::NAME` with the TPACKET_V3 receive ring, `rx_socket::NAME`
//! with one recvmsg per frame.
//!
//! Needs root (namespaces, AF_PACKET, raw sockets): skipped with a message
//! otherwise, a failure under SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true. Runs
//! the example binaries, built by `cargo test --all-targets` or
//! `cargo build --examples`. The load-heavy tests (bulk, netem, 10,000
//! connections, SYN flood) take `load_lock` so they never overlap on the
//! two cores. Only addresses in 198.18.0.0/15 and 2001:db8::/32, only
//! inside the namespaces each test creates; every run is bounded in time.

mod common;

use std::time::{Duration, Instant};

use common::netns::*;
use common::{load_lock, skip_unless_root};

const ECHO: u16 = 5060;
const ABORT: u16 = 5061;
const SINK: u16 = 5062;
const SOURCE: u16 = 5063;
/// The example's TCP ports beyond its defaults (echo 5060, abort 5061).
const BULK_PORTS: [&str; 4] = ["--sink-port", "5062", "--source-port", "5063"];
const MIB: u64 = 1024 * 1024;

fn v4(pair: &NetnsPair, port: u16) -> String {
    format!("{}:{port}", pair.stack_v4())
}

fn v6(pair: &NetnsPair, port: u16) -> String {
    format!("[{}]:{port}", pair.stack_v6())
}

/// Run `tcp_peer` in the peer namespace (1024 files, `secs` bound), log its
/// JSON line and how long it took.
fn peer(pair: &NetnsPair, args: &[&str], secs: u64) -> PeerRun {
    let t0 = Instant::now();
    let r = pair.tcp_peer(args, 1024, Duration::from_secs(secs));
    eprintln!(
        "tcp_peer {} ({:.1} s): {}",
        args.join(" "),
        t0.elapsed().as_secs_f64(),
        r.json
    );
    r
}

/// Stop the example; every run must be ok and the example must exit 0.
/// Returns its stderr.
fn finish(echo: EchoProc, runs: &[&PeerRun]) -> String {
    let (status, stderr) = echo.stop();
    let bad: Vec<_> = runs.iter().filter(|r| !r.ok()).collect();
    assert!(
        bad.is_empty(),
        "failed runs: {bad:#?}\nstack stderr:\n{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; stderr:\n{stderr}"
    );
    stderr
}

/// Linux connects to the stack (passive open), v4 and v6: 5 connections
/// each echoing 300 kB, every byte checked, FIN/FIN close.
fn tcp_linux_connects_to_stack_echo_v4_v6(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let echo = EchoProc::start_rx(&pair, rx, &[]);
    let mut runs = Vec::new();
    for t in [v4(&pair, ECHO), v6(&pair, ECHO)] {
        runs.push(peer(
            &pair,
            &[
                "echo",
                "--target",
                &t,
                "--bytes",
                "300000",
                "--connects",
                "5",
            ],
            60,
        ));
    }
    let stderr = finish(echo, &runs.iter().collect::<Vec<_>>());
    assert!(stderr.contains("Tcp.PassiveOpens=10"), "{stderr}");
}

/// The stack connects to Linux (active open), v4 and v6: 1 MB to a Linux
/// echo server, the echo checked byte by byte.
fn tcp_stack_connects_to_linux_echo_v4_v6(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let s4 = format!("{}:7000", pair.peer_v4());
    let s6 = format!("[{}]:7000", pair.peer_v6());
    let server = pair.tcp_peer_server(&["--echo", &s4, "--echo", &s6]);
    let mut echo = EchoProc::start_rx(
        &pair,
        rx,
        &[
            "--connect",
            &s4,
            "--connect",
            &s6,
            "--connect-bytes",
            "1000000",
        ],
    );
    let done = echo.wait_for_lines(&["tcp connect done"], 2, Duration::from_secs(60));
    let (_, server_err) = server.stop();
    let stderr = finish(echo, &[]);
    assert!(
        done,
        "connects did not finish\nstack:\n{stderr}\nserver:\n{server_err}"
    );
    let oks = stderr
        .lines()
        .filter(|l| l.contains("tcp connect done") && l.contains("ok=true"))
        .count();
    assert_eq!(oks, 2, "{stderr}");
    assert!(stderr.contains("Tcp.ActiveOpens=2"), "{stderr}");
}

/// 64 MiB each way over IPv4 (Linux → sink: count and FNV-1a returned;
/// source → Linux: every byte checked), 4 MiB each way over IPv6.
fn tcp_bulk_64mib_each_way_verified(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    let echo = EchoProc::start_rx(&pair, rx, &BULK_PORTS);
    let big = (64 * MIB).to_string();
    let small = (4 * MIB).to_string();
    let runs = [
        peer(
            &pair,
            &["send", "--target", &v4(&pair, SINK), "--bytes", &big],
            120,
        ),
        peer(
            &pair,
            &["recv", "--target", &v4(&pair, SOURCE), "--bytes", &big],
            120,
        ),
        peer(
            &pair,
            &["send", "--target", &v6(&pair, SINK), "--bytes", &small],
            60,
        ),
        peer(
            &pair,
            &["recv", "--target", &v6(&pair, SOURCE), "--bytes", &small],
            60,
        ),
    ];
    finish(echo, &runs.iter().collect::<Vec<_>>());
}

/// The transfer still completes, every byte intact, through 2 % loss,
/// 25 % reordering and 1 % duplication in both directions. The kernel here
/// has no netem (CONFIG_NET_SCH_NETEM unset), so a userspace middlebox in
/// a third namespace applies them (tests/common/netns.rs `Impairment`):
/// the same figures as `tc qdisc add dev PEER root netem loss 2% reorder
/// 25% 50% duplicate 1%`, on both directions instead of the peer's only.
fn tcp_bulk_completes_under_loss_reorder_duplicate(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new_impaired(Impairment {
        loss_pct: 2.0,
        reorder_pct: 25.0,
        duplicate_pct: 1.0,
    });
    let echo = EchoProc::start_rx(&pair, rx, &BULK_PORTS);
    let n = (16 * MIB).to_string();
    let runs = [
        peer(
            &pair,
            &["send", "--target", &v4(&pair, SINK), "--bytes", &n],
            150,
        ),
        peer(
            &pair,
            &["recv", "--target", &v4(&pair, SOURCE), "--bytes", &n],
            150,
        ),
        peer(
            &pair,
            &["echo", "--target", &v6(&pair, ECHO), "--bytes", "1000000"],
            60,
        ),
    ];
    let mid = pair
        .mid
        .as_ref()
        .map(|m| m.stats.summary())
        .unwrap_or_default();
    eprintln!("middlebox: {mid}");
    let stderr = finish(echo, &runs.iter().collect::<Vec<_>>());
    let st = &pair.mid.as_ref().expect("impaired pair").stats;
    for (what, c) in [
        ("dropped", &st.dropped),
        ("reordered", &st.reordered),
        ("duplicated", &st.duplicated),
    ] {
        assert!(
            c.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "nothing {what}: {mid}"
        );
    }
    // The stack saw it: it retransmitted what was lost.
    assert!(
        exit_counter(&stderr, "Tcp.RetransSegs").unwrap_or(0) > 0,
        "no retransmission counted:\n{stderr}"
    );
}

/// 10,000 connections established at once from four Linux addresses
/// (each answered a 1-byte echo), then all closed cleanly: Linux's FIN,
/// the stack's FIN, no RST, no error.
fn tcp_10k_concurrent_connections_held_and_closed_cleanly(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    pair.sysctl_peer("net.ipv4.ip_local_port_range=1024 65000");
    let binds: Vec<String> = (11..15).map(|h| pair.add_peer_v4(h).to_string()).collect();
    let echo = EchoProc::start_rx(&pair, rx, &["--tcp-max-conns", "20000"]);
    let t0 = Instant::now();
    let run = pair.tcp_peer(
        &[
            "hold",
            "--target",
            &v4(&pair, ECHO),
            "--conns",
            "10000",
            "--bind",
            &binds.join(","),
            "--parallel",
            "256",
        ],
        12_000,
        Duration::from_secs(150),
    );
    eprintln!("hold ({:.1} s): {}", t0.elapsed().as_secs_f64(), run.json);
    let stderr = finish(echo, &[&run]);
    assert_eq!(run.num("established"), Some(10000.0));
    assert_eq!(run.num("closed_clean"), Some(10000.0));
    let exit = stderr
        .lines()
        .rev()
        .find(|l| l.contains("tcp stats at exit"))
        .unwrap_or("");
    assert!(exit.contains("accepted=10000"), "{stderr}");
    assert!(exit.contains("closed_by_error=0"), "{stderr}");
    // A clean close is what every client saw (its FIN answered by ours,
    // no RST before it: closed_clean above). The stack may still answer a
    // late retransmission for a connection it has already freed with a
    // RST, as Linux does, so its OutRsts is only reported.
    eprintln!("Tcp.OutRsts={:?}", exit_counter(&stderr, "Tcp.OutRsts"));
}

/// connect() to a port nobody listens on: the stack's RST makes Linux's
/// connect fail with ECONNREFUSED (v4 and v6).
fn tcp_connect_to_closed_port_gets_econnrefused(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let echo = EchoProc::start_rx(&pair, rx, &[]);
    let runs = [
        peer(&pair, &["refused", "--target", &v4(&pair, 5999)], 30),
        peer(&pair, &["refused", "--target", &v6(&pair, 5999)], 30),
    ];
    let stderr = finish(echo, &runs.iter().collect::<Vec<_>>());
    assert!(stderr.contains("Tcp.OutRsts="), "{stderr}");
}

/// The abort port closes with Linux's data unread: the close sends RST and
/// Linux's next read fails with ECONNRESET (v4 and v6).
fn tcp_close_with_unread_data_gives_econnreset(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let echo = EchoProc::start_rx(&pair, rx, &[]);
    let runs = [
        peer(&pair, &["reset", "--target", &v4(&pair, ABORT)], 30),
        peer(&pair, &["reset", "--target", &v6(&pair, ABORT)], 30),
    ];
    let stderr = finish(echo, &runs.iter().collect::<Vec<_>>());
    let exit = stderr
        .lines()
        .rev()
        .find(|l| l.contains("tcp stats at exit"))
        .unwrap_or("");
    assert!(exit.contains("aborted=2"), "{stderr}");
}

/// 50,000 SYNs from spoofed sources in 198.19.N.0/24 (off-link: the
/// stack's SYN-ACKs go to the peer as gateway, which drops them) at 5,000
/// per second, while a real Linux client connects and echoes again and
/// again: it must keep succeeding, and the stack must have answered with
/// SYN cookies (the SYN queue is full after the first few thousand).
/// The rate is what a debug build absorbs: above it (13,000/s measured)
/// the AF_PACKET socket buffer overflows and drops frames blindly, the
/// legitimate client's ACKs and retransmissions with them — CPU
/// exhaustion, which cookies do not address (they address the queue).
fn tcp_syn_flood_does_not_stop_a_legitimate_client(rx: Rx) {
    if skip_unless_root() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    let gw = pair.peer_v4().to_string();
    let echo = EchoProc::start_rx(&pair, rx, &["--gateway4", &gw]);
    let src_net = format!("198.19.{}.0/24", pair.n);
    let run = peer(
        &pair,
        &[
            "syn-flood",
            "--target",
            &v4(&pair, ECHO),
            "--count",
            "50000",
            "--src-net",
            &src_net,
            "--pps",
            "5000",
        ],
        120,
    );
    let stderr = finish(echo, &[&run]);
    assert!(run.num("legit_during_ok").unwrap_or(0.0) >= 1.0, "{run:?}");
    let cookies = exit_counter(&stderr, "TcpExt.SyncookiesSent").unwrap_or(0);
    assert!(cookies > 0, "SyncookiesSent did not move:\n{stderr}");
}

/// The harness itself, without the embedded stack: Linux to Linux through
/// the impairing middlebox (Linux addresses on the stack-side veth and
/// `tcp_peer serve` there): the same bulk runs complete and the middlebox
/// really drops, reorders and duplicates. Tells a harness fault from a
/// stack fault.
#[test]
fn harness_linux_to_linux_bulk_through_the_middlebox() {
    if skip_unless_root() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new_impaired(Impairment {
        loss_pct: 2.0,
        reorder_pct: 25.0,
        duplicate_pct: 1.0,
    });
    let ns = pair.stack_ns.clone();
    let sif = pair.stack_if.clone();
    must(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{sif}.disable_ipv6=0"),
        ],
    );
    must(
        "ip",
        &[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", pair.stack_v4()),
            "dev",
            &sif,
        ],
    );
    must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
    let (sink, source) = (v4(&pair, SINK), v4(&pair, SOURCE));
    let mut cmd = netns_exec(&ns, tcp_peer_bin());
    cmd.args(["serve", "--sink", &sink, "--source", &source]);
    let server = EchoProc::spawn(cmd, "tcp_peer serving");
    let n = (4 * MIB).to_string();
    let runs = [
        peer(&pair, &["send", "--target", &sink, "--bytes", &n], 120),
        peer(&pair, &["recv", "--target", &source, "--bytes", &n], 120),
    ];
    let (_, server_err) = server.stop();
    let mid = pair
        .mid
        .as_ref()
        .map(|m| m.stats.summary())
        .unwrap_or_default();
    eprintln!("middlebox: {mid}");
    assert!(runs.iter().all(|r| r.ok()), "{runs:#?}\n{server_err}");
    let st = &pair.mid.as_ref().expect("impaired pair").stats;
    assert!(
        st.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "{mid}"
    );
    assert!(
        st.reordered.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "{mid}"
    );
}

// Every test above that runs netstack_echo, with the TPACKET_V3 ring and
// with the plain socket (`rx_ring::NAME`, `rx_socket::NAME`).
in_both_rx_modes!(
    tcp_linux_connects_to_stack_echo_v4_v6,
    tcp_stack_connects_to_linux_echo_v4_v6,
    tcp_bulk_64mib_each_way_verified,
    tcp_bulk_completes_under_loss_reorder_duplicate,
    tcp_10k_concurrent_connections_held_and_closed_cleanly,
    tcp_connect_to_closed_port_gets_econnrefused,
    tcp_close_with_unread_data_gives_econnreset,
    tcp_syn_flood_does_not_stop_a_legitimate_client,
);
