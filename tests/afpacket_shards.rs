//! afpacket mode with two stack shards (`stack.workers = 2`, issue 9):
//! two AF_PACKET sockets in one PACKET_FANOUT group steered by
//! `steer::program`, a stack, connection table and SIP application per
//! shard. sipedge runs in the stack namespace of a `NetnsPair`; sipp, the
//! test UAS and raw sockets run on the Linux stack of the peer namespace.
//!
//! - the sipp suite (u1, t1, tn; IPv4 and IPv6; 300 calls each), zero
//!   failed calls;
//! - a TCP connection's segments are handled by one shard: after a t1 run
//!   from a client address, the shard `steer::shard_of_addr` names for it
//!   counted the segments of the client's connection and of the upstream
//!   connection it opened (its ephemeral port p has p % 2 == that shard),
//!   the other shard (nearly) none, and no shard dropped a misdirected one;
//! - outbound TCP from each shard: two client addresses steered to
//!   different shards make calls over TCP; the upstream sees two
//!   connections, their source ports p % 2 == 0 and == 1;
//! - fragmented UDP: a ~3000-byte INVITE (MTU 1500, so two fragments) from
//!   client addresses of either shard, and one over IPv6, is reassembled
//!   and proxied;
//! - cross-shard handoff: a TCP client on shard A, the upstream on UDP with
//!   its address steered to shard B: every reply arrives on B, is routed
//!   by the Via `;i=` connection id to A's mailbox and sent by A; zero
//!   failed calls and `sipedge_shard_handoffs_total{shard=A}` moved;
//!   stateless and stateful;
//! - the per-IP connection limit per address on both shards, and the drain
//!   closing every shard's idle connections with FIN.
//!
//! Needs root (namespaces, AF_PACKET) and sipp: skipped with a message
//! otherwise, a failure under SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true. The
//! sipp tests take the process-wide load lock (two cores).
//!
//! Every wait is bounded; every process started here is stopped by its own
//! PID; the namespaces go with the `NetnsPair` guard.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::afpacket::*;
use common::netns::*;
use common::uas::{TestUas, UasMode};
use common::*;
use sipedge::netstack::device::steer::shard_of_addr;

const SHARDS: usize = 2;
const CALLS: u32 = 300;
const RATE: u32 = 300;

fn skip() -> bool {
    skip_unless_root() || skip_unless_sipp()
}

fn shard_of(ip: IpAddr) -> usize {
    usize::from(shard_of_addr(ip, SHARDS as u16))
}

/// `sipedge_shard_FAMILY{shard="K"}`.
fn per_shard(family: &str, k: usize) -> String {
    format!("sipedge_{family}{{shard=\"{k}\"}}")
}

/// Sum of a per-shard family over the shards.
fn shard_total(m: &str, family: &str) -> f64 {
    (0..SHARDS).map(|k| metric(m, &per_shard(family, k))).sum()
}

/// An extra client address on the peer's veth steered to shard `want`
/// (198.18.N.10 and up; the first that fits).
fn client_on_shard(pair: &NetnsPair, want: usize, not: &BTreeSet<u8>) -> Ipv4Addr {
    let host = (10u8..200)
        .find(|h| !not.contains(h) && shard_of(Ipv4Addr::new(198, 18, pair.n, *h).into()) == want)
        .expect("an address of each shard among 190");
    pair.add_peer_v4(host)
}

/// One client address on each shard (added to the peer's interface).
fn client_per_shard(pair: &NetnsPair) -> Vec<Ipv4Addr> {
    let mut used = BTreeSet::new();
    (0..SHARDS)
        .map(|k| {
            let c = client_on_shard(pair, k, &used);
            used.insert(c.octets()[3]);
            c
        })
        .collect()
}

/// sipedge with two shards on `config`; asserts the start-up line says so.
fn start_sharded(pair: &NetnsPair, config: &str) -> AfSipedge {
    let proxy = AfSipedge::start(pair, &with_workers(config, SHARDS));
    let log = proxy.log_text();
    assert!(
        log.contains("shards=2") && log.contains("fanout=\"group "),
        "expected 2 shards in a fanout group\n{}",
        proxy.log_tail()
    );
    proxy
}

/// The peer ports of the connections established to the peer's :5080 (the
/// upstream's view: our ephemeral ports).
fn upstream_conn_ports(pair: &NetnsPair) -> Vec<u16> {
    let out = run_bounded(
        netns_exec(&pair.peer_ns, "ss").args(["-Htn", "state", "established", "( sport = :5080 )"]),
        Duration::from_secs(5),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|peer| peer.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

fn suite(transport: SippTransport) {
    if skip() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    let mut proxy = start_sharded(&pair, &af_config(&pair, transport.is_tcp(), ""));
    let uas = SippUas::start_in_with(
        &pair.peer_ns,
        pair.peer_v4().into(),
        AF_UPSTREAM_PORT,
        transport.uas_side(),
    );
    calls_through(&pair, &mut proxy, transport, false, CALLS, RATE);
    if transport == SippTransport::T1 {
        one_shard_per_connection(&pair, &proxy);
    }
    calls_through(&pair, &mut proxy, transport, true, CALLS, RATE);
    let m = proxy.metrics();
    assert_eq!(
        shard_total(&m, "shard_misdirected_total"),
        0.0,
        "misdirected segments\n{m}"
    );
    // client and upstream share the peer's address: one shard gets most
    assert!(shard_total(&m, "shard_rx_frames_total") > 0.0, "{m}");
    drop(uas);
    proxy.stop_clean();
}

/// After the IPv4 t1 run (one client connection from the peer's
/// address, one upstream connection): both connections live on the
/// client's shard, whose TCP counted the segments; the other shard saw
/// (nearly) no TCP.
fn one_shard_per_connection(pair: &NetnsPair, proxy: &AfSipedge) {
    let m = proxy.metrics();
    let a = shard_of(pair.peer_v4().into());
    let b = 1 - a;
    let ports = upstream_conn_ports(pair);
    let seg_a = metric(&m, &per_shard("shard_tcp_in_segments_total", a));
    let seg_b = metric(&m, &per_shard("shard_tcp_in_segments_total", b));
    let report = format!(
        "client shard {a}: in segments {seg_a}; shard {b}: {seg_b}; upstream connection \
         ports {ports:?}\n{m}"
    );
    assert!(
        ports.iter().any(|p| usize::from(*p) % SHARDS == a),
        "the upstream connection does not leave from a port of shard {a}\n{report}"
    );
    // per call at least INVITE, ACK, BYE from the client and 180, 200,
    // 200 from the upstream
    assert!(seg_a >= 6.0 * f64::from(CALLS), "{report}");
    assert!(seg_b < f64::from(CALLS) / 10.0, "{report}");
    // the upstream connection stays open (sipp closed its own)
    assert!(
        metric(&m, &per_shard("shard_tcp_connections", a)) >= 1.0,
        "{report}"
    );
    assert_eq!(
        metric(&m, &per_shard("shard_tcp_connections", b)),
        0.0,
        "{report}"
    );
    assert_eq!(shard_total(&m, "shard_misdirected_total"), 0.0, "{report}");
}

#[test]
fn shards_sipp_calls_udp_u1_ipv4_and_ipv6() {
    suite(SippTransport::U1);
}

#[test]
fn shards_sipp_calls_tcp_t1_ipv4_and_ipv6_one_shard_per_connection() {
    suite(SippTransport::T1);
}

#[test]
fn shards_sipp_calls_tcp_tn_ipv4_and_ipv6() {
    suite(SippTransport::Tn);
}

/// Two client addresses steered to shards 0 and 1 make TCP calls: each
/// shard opens its own connection to the upstream, from a port of its own
/// (p % 2 == shard).
#[test]
fn shards_open_outbound_tcp_from_each_shard() {
    if skip() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    let clients = client_per_shard(&pair);
    let proxy = start_sharded(&pair, &af_tcp_config(&pair, ""));
    let uas = SippUas::start_in_with(
        &pair.peer_ns,
        pair.peer_v4().into(),
        AF_UPSTREAM_PORT,
        SippTransport::T1,
    );
    let to = SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT);
    for &c in &clients {
        let res = run_uac(&UacOpts {
            target: to,
            transport: SippTransport::T1,
            calls: 50,
            rate: 100,
            netns: Some(pair.peer_ns.clone()),
            local: Some(c.into()),
        });
        assert!(
            res.all_ok(50),
            "calls from {c} (shard {})\n{}\n{}",
            shard_of(c.into()),
            res.report(),
            proxy.log_tail()
        );
    }
    let ports = upstream_conn_ports(&pair);
    let m = proxy.metrics();
    let shards: BTreeSet<usize> = ports.iter().map(|p| usize::from(*p) % SHARDS).collect();
    assert!(
        ports.len() >= 2 && shards.len() == SHARDS,
        "upstream connections from ports {ports:?}: expected one per shard\n{m}"
    );
    for k in 0..SHARDS {
        assert!(
            metric(&m, &per_shard("shard_tcp_connections", k)) >= 1.0,
            "shard {k}: its upstream connection\n{m}"
        );
    }
    assert_eq!(shard_total(&m, "shard_misdirected_total"), 0.0, "{m}");
    // each call stays on its client's shard: nothing crosses
    assert_eq!(shard_total(&m, "shard_handoffs_total"), 0.0, "{m}");
    drop(uas);
    let mut proxy = proxy;
    proxy.stop_clean();
}

/// A UDP INVITE with a padding header to `size` bytes (Via: `from`).
fn big_invite(to: SocketAddr, from: SocketAddr, tag: &str, size: usize) -> Vec<u8> {
    let req = sip_request("INVITE", &format!("sip:bob@{to}"), "UDP", from, tag, 70);
    let head = req.strip_suffix("\r\n\r\n").expect("blank line");
    let pad = size.saturating_sub(req.len() + 12);
    format!("{head}\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad)).into_bytes()
}

/// Send `msg` from `from` (a UDP socket in the peer namespace) and wait
/// (≤ 3 s, resending every 500 ms) for a final 200; the start lines seen.
fn udp_exchange(pair: &NetnsPair, from: SocketAddr, to: SocketAddr, msg: Vec<u8>) -> Vec<String> {
    pair.in_peer(move || {
        let sock = UdpSocket::bind(from).expect("bind the client");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut seen = Vec::new();
        let mut last_send: Option<Instant> = None;
        let mut buf = [0u8; 65536];
        while t0.elapsed() < Duration::from_secs(3) {
            if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
                let _ = sock.send_to(&msg, to);
                last_send = Some(Instant::now());
            }
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let done = line.starts_with("SIP/2.0 200");
                seen.push(line);
                if done {
                    break;
                }
            }
        }
        seen
    })
}

/// A ~3000-byte UDP INVITE (two IPv4 fragments at MTU 1500) from client
/// addresses of each shard: reassembled on whichever shard the fragments
/// land, proxied to the UAS, answered 200.
#[test]
fn shards_reassemble_fragmented_udp_whichever_shard() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let clients = client_per_shard(&pair);
    let up = pair.peer_v4();
    let uas = pair
        .in_peer(move || TestUas::start_on(up.into(), AF_UPSTREAM_PORT, UasMode::Normal))
        .expect("start the UAS");
    let proxy = start_sharded(&pair, &af_config(&pair, false, ""));
    let to = SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT);
    let before = proxy.metrics();
    for (i, c) in clients.iter().enumerate() {
        let from = SocketAddr::new((*c).into(), 5900 + i as u16);
        let msg = big_invite(to, from, &format!("frag{i}"), 3000);
        assert!(msg.len() >= 2900, "{}", msg.len());
        let seen = udp_exchange(&pair, from, to, msg);
        assert!(
            seen.iter().any(|l| l.starts_with("SIP/2.0 200")),
            "no 200 to the fragmented INVITE from {c} (shard {i}): saw {seen:?}\n{}\n{}",
            proxy.log_tail(),
            proxy.metrics()
        );
    }
    // IPv6 too (fragment header; the peer's address, its shard)
    let to6 = SocketAddr::new(pair.stack_v6().into(), AF_SIP_PORT);
    let from6 = SocketAddr::new(pair.peer_v6().into(), 5950);
    let seen = udp_exchange(&pair, from6, to6, big_invite(to6, from6, "frag6", 3000));
    assert!(
        seen.iter().any(|l| l.starts_with("SIP/2.0 200")),
        "no 200 to the fragmented IPv6 INVITE (shard {}): saw {seen:?}\n{}\n{}",
        shard_of(pair.peer_v6().into()),
        proxy.log_tail(),
        proxy.metrics()
    );
    let m = proxy.metrics();
    let delta = |q: &str| metric(&m, q) - metric(&before, q);
    let reasm = delta(&mib("Ip", "ReasmOKs"));
    assert!(reasm >= SHARDS as f64, "Ip ReasmOKs +{reasm}\n{m}");
    let reasm6 = delta(&mib("Ip6", "ReasmOKs"));
    assert!(reasm6 >= 1.0, "Ip6 ReasmOKs +{reasm6}\n{m}");
    assert!(uas.counts.get("INVITE") > SHARDS as u64, "{m}");
    let mut proxy = proxy;
    proxy.stop_clean();
}

/// A TCP client steered to shard A, the upstream on UDP with its address
/// steered to shard B: the upstream's replies arrive on B and go to the
/// client's connection on A through A's mailbox.
fn handoff(stateful: bool) {
    if skip() {
        return;
    }
    let _load = load_lock();
    let pair = NetnsPair::new();
    let b = shard_of(pair.peer_v4().into());
    let a = 1 - b;
    let client = client_on_shard(&pair, a, &BTreeSet::new());
    let up = format!("\"sip:{}:{AF_UPSTREAM_PORT}\"", pair.peer_v4());
    let cfg = af_config(&pair, true, "").replacen(
        &up,
        &format!(
            "\"sip:{}:{AF_UPSTREAM_PORT};transport=udp\"",
            pair.peer_v4()
        ),
        1,
    );
    let proxy = start_sharded(&pair, &cfg);
    let uas = SippUas::start_in_with(
        &pair.peer_ns,
        pair.peer_v4().into(),
        AF_UPSTREAM_PORT,
        SippTransport::U1,
    );
    let calls = 100;
    let res = run_uac(&UacOpts {
        target: SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT),
        transport: SippTransport::T1,
        calls,
        rate: 100,
        netns: Some(pair.peer_ns.clone()),
        local: Some(client.into()),
    });
    let m = proxy.metrics();
    assert!(
        res.all_ok(calls),
        "TCP client {client} on shard {a}, UDP upstream on shard {b} (stateful: {stateful})\n{}\n{}\n{m}",
        res.report(),
        proxy.log_tail()
    );
    // per call the 180, the 200 (INVITE) and the 200 (BYE)
    let handoffs = metric(&m, &per_shard("shard_handoffs_total", a));
    assert!(
        handoffs >= f64::from(2 * calls),
        "shard {a} handoffs {handoffs}\n{m}"
    );
    assert_eq!(
        metric(&m, &per_shard("shard_mailbox_full_total", a)),
        0.0,
        "{m}"
    );
    drop(uas);
    let mut proxy = proxy;
    proxy.stop_clean();
}

#[test]
fn shards_hand_replies_over_to_the_connections_shard() {
    handoff(false);
}

/// The same in stateful mode: the transactions' replies (and their timer
/// sends, polled by one shard per table) reach the client's shard.
#[test]
fn shards_hand_replies_over_to_the_connections_shard_stateful() {
    handoff(true);
}

/// Connections on both shards: the per-IP limit holds per address (all of
/// an address's connections are on its shard), and the drain after
/// SIGTERM closes every shard's idle connections with FIN; clean exit.
#[test]
fn shards_per_ip_limit_and_drain_cover_every_shard() {
    if skip_unless_root() {
        return;
    }
    let pair = NetnsPair::new();
    let clients: Vec<IpAddr> = client_per_shard(&pair)
        .into_iter()
        .map(IpAddr::from)
        .collect();
    let mut proxy = start_sharded(
        &pair,
        &af_tcp_config(&pair, "[tcp]\nmax_connections_per_ip = 1\n"),
    );
    let to = SocketAddr::new(pair.stack_v4().into(), AF_SIP_PORT);
    let cs = clients.clone();
    let r = pair.in_peer(move || -> Result<_, String> {
        let mut open = Vec::new();
        let mut ends = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            let mut s = connect_from(*c, to)?;
            let reply = options_over(&mut s, to, &format!("drain{i}"))?;
            if !reply.starts_with("SIP/2.0 200") {
                return Err(format!("{c}: {reply}"));
            }
            open.push(s);
            // a second connection from the same address: over the limit
            ends.push(connect_and_read_end(*c, to, Duration::from_secs(3))?);
        }
        Ok((open, ends))
    });
    let (mut open, ends) = r.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    let m = proxy.metrics();
    assert!(
        ends.iter().all(TcpEnd::is_reset),
        "second connections per address: {ends:?}\n{m}"
    );
    for k in 0..SHARDS {
        assert_eq!(
            metric(&m, &per_shard("shard_tcp_connections", k)),
            1.0,
            "shard {k}\n{m}"
        );
    }
    proxy.signal("TERM");
    for (c, s) in clients.iter().zip(open.iter_mut()) {
        let end = read_end(s, Duration::from_secs(8));
        assert!(
            end.is_eof(),
            "drain closes {c}'s idle connection (shard {}) with FIN, got {end:?}\n{}",
            shard_of(*c),
            proxy.log_tail()
        );
    }
    proxy.stop_clean();
}
