//! The shards' `PACKET_FANOUT_CBPF` steering program on a real link
//! (issue 9): in a namespace pair (tests/common/netns.rs) 2 and 3
//! `AfPacket` sockets on the stack-side veth join one fanout group in order
//! with `steer::program`; the peer namespace's kernel sends UDP (small and
//! fragmented, 4000 bytes at MTU 1500) and TCP SYNs over IPv4 and IPv6 from
//! many source addresses to the stack's addresses, on a listen port and on
//! ephemeral ports. Every frame must arrive on exactly the socket that
//! `steer::interpret` predicts (offset 0 = network header, EtherType from
//! `SKF_AD_PROTOCOL`) and, for the test traffic, the socket the rules give
//! (`shard_of_addr` / `shard_of_port`).
//!
//! Needs root (namespaces, AF_PACKET, setns): skipped with a message
//! otherwise, a failure under SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use common::netns::*;
use common::skip_unless_root;
use sipedge::netstack::PacketType;
use sipedge::netstack::device::Device;
use sipedge::netstack::device::afpacket::{AfPacket, wait_fds};
use sipedge::netstack::device::steer::{
    Insn, SteerConfig, interpret, interpret_frame, program, shard_of_addr, shard_of_port,
};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet};
use socket2::{Domain, Protocol, Socket, Type};

/// The stack's ephemeral range (src/netstack/tcp/mod.rs, udp.rs).
const EPH: std::ops::RangeInclusive<u16> = 32768..=60999;
const LISTEN: u16 = 5060;
/// Ephemeral ports with every residue mod 2 and mod 3.
const EPH_PORTS: [u16; 4] = [40000, 40001, 40002, 40003];
/// Peer source hosts: 16 consecutive values, so the address hash covers
/// every shard (they differ only in the low nibble of the mixed value).
const HOSTS: std::ops::Range<u8> = 0x20..0x30;

/// What a received frame is, for the coverage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    UdpListen,
    UdpEph,
    TcpListen,
    TcpEph,
    Frag,
    Other,
}

/// Classify `frame` and give the shard the rules (independently of the
/// program) say it belongs to, for test traffic from `srcs` to `dsts`.
fn rule(frame: &[u8], n: u16, srcs: &[IpAddr], dsts: &[IpAddr]) -> (Kind, Option<(IpAddr, u16)>) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return (Kind::Other, None);
    };
    let (src, dst, proto, frag, l4): (IpAddr, IpAddr, IpProtocol, bool, &[u8]) =
        match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return (Kind::Other, None);
                };
                let frag = ip.more_frags() || ip.frag_offset() != 0;
                let hl = usize::from(ip.header_len());
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.next_header(),
                    frag,
                    &eth.payload()[hl..],
                )
            }
            EthernetProtocol::Ipv6 => {
                let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                    return (Kind::Other, None);
                };
                let nh = ip.next_header();
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    nh,
                    nh == IpProtocol::Ipv6Frag,
                    &eth.payload()[40..],
                )
            }
            _ => return (Kind::Other, None),
        };
    if !srcs.contains(&src) || !dsts.contains(&dst) {
        return (Kind::Other, None);
    }
    let by_addr = shard_of_addr(src, n);
    if frag {
        return (Kind::Frag, Some((src, by_addr)));
    }
    let tcp = match proto {
        IpProtocol::Tcp => true,
        IpProtocol::Udp => false,
        _ => return (Kind::Other, None),
    };
    let port = u16::from_be_bytes([l4[2], l4[3]]);
    let (kind, shard) = match (tcp, EPH.contains(&port)) {
        (false, false) => (Kind::UdpListen, by_addr),
        (false, true) => (Kind::UdpEph, shard_of_port(port, n)),
        (true, false) => (Kind::TcpListen, by_addr),
        (true, true) => (Kind::TcpEph, shard_of_port(port, n)),
    };
    (kind, Some((src, shard)))
}

/// Open `n` sockets on the stack-side veth and join them, in order, to
/// fanout group `group` with the steering program; then drain what each
/// received on its own before it joined.
fn open_group(pair: &NetnsPair, n: u16, group: u16, prog: &[Insn]) -> Vec<AfPacket> {
    let sif = pair.stack_if.clone();
    let prog = prog.to_vec();
    let mut socks = pair.in_stack(move || {
        (0..n)
            .map(|i| {
                let d = AfPacket::open(&sif).expect("open stack-side socket");
                d.join_fanout(group, &prog)
                    .unwrap_or_else(|e| panic!("join_fanout #{i}: {e}"));
                d
            })
            .collect::<Vec<_>>()
    });
    for s in &mut socks {
        // Bounded: each batch takes queued frames; stop when none.
        for _ in 0..100 {
            if s.recv_batch(256, &mut |_, _| {}).expect("drain") == 0 {
                break;
            }
        }
    }
    socks
}

/// Receive on all sockets until `quiet` passes with no frame (after at
/// least `min_frames`) or `limit` runs out; returns (socket index, meta
/// packet type, frame).
fn collect_all(
    socks: &mut [AfPacket],
    min_frames: usize,
    quiet: Duration,
    limit: Duration,
) -> Vec<(usize, PacketType, Vec<u8>)> {
    let fds: Vec<(RawFd, bool)> = socks
        .iter()
        .map(|s| (s.poll_fd().expect("fd"), false))
        .collect();
    let t0 = Instant::now();
    let mut last = Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < limit {
        wait_fds(&fds, Duration::from_millis(50)).expect("poll");
        let before = got.len();
        for (i, s) in socks.iter_mut().enumerate() {
            s.recv_batch(256, &mut |m, f| got.push((i, m.pkt_type, f.to_vec())))
                .expect("recv_batch");
        }
        if got.len() > before {
            last = Instant::now();
        } else if got.len() >= min_frames && last.elapsed() >= quiet {
            break;
        }
    }
    got
}

/// The peer's kernel sends the test traffic (see the module doc) from every
/// source in `srcs` to `dst`; returns the connecting TCP sockets (kept open
/// until the frames are collected).
fn send_traffic(pair: &NetnsPair, srcs: Vec<IpAddr>, dst: IpAddr) -> Vec<Socket> {
    pair.in_peer(move || {
        let mut tcp = Vec::new();
        for (i, &src) in srcs.iter().enumerate() {
            let u = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind peer UDP");
            for port in std::iter::once(LISTEN).chain(EPH_PORTS) {
                let msg = format!("steer {src} -> {port}");
                u.send_to(msg.as_bytes(), SocketAddr::new(dst, port))
                    .expect("send small UDP");
            }
            if i < 4 {
                // Fragmented at MTU 1500: three pieces.
                u.send_to(&[0x5a; 4000], SocketAddr::new(dst, LISTEN))
                    .expect("send fragmented UDP");
            }
            for port in [LISTEN, EPH_PORTS[i % EPH_PORTS.len()]] {
                let dom = if src.is_ipv4() {
                    Domain::IPV4
                } else {
                    Domain::IPV6
                };
                let s = Socket::new(dom, Type::STREAM, Some(Protocol::TCP)).expect("tcp socket");
                s.bind(&SocketAddr::new(src, 0).into())
                    .expect("bind peer TCP");
                s.set_nonblocking(true).expect("nonblocking");
                // EINPROGRESS: the SYN is on its way.
                let _ = s.connect(&SocketAddr::new(dst, port).into());
                tcp.push(s);
            }
        }
        tcp
    })
}

/// Linux release ≥ major.minor (from /proc/sys/kernel/osrelease).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn fanout_steers_as_predicted(n: u16, group: u16) {
    let pair = NetnsPair::new();
    let pi = pair.peer_if.clone();
    // The stack side has no kernel to answer ARP / NDP: static neighbours.
    pair.peer_knows_stack_mac();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for h in HOSTS {
        v4.push(IpAddr::V4(pair.add_peer_v4(h)));
        let a = Ipv6Addr::new(0x2001, 0xdb8, u16::from(pair.n), 0, 0, 0, 0, u16::from(h));
        pair.ip_peer(&["addr", "add", &format!("{a}/64"), "dev", &pi, "nodad"]);
        v6.push(IpAddr::V6(a));
    }
    let srcs: Vec<IpAddr> = v4.iter().chain(&v6).copied().collect();
    let dsts = [IpAddr::V4(pair.stack_v4()), IpAddr::V6(pair.stack_v6())];

    let prog = program(&SteerConfig {
        shards: n,
        ephemeral: EPH,
    });
    let mut socks = open_group(&pair, n, group, &prog);

    let tcp4 = send_traffic(&pair, v4.clone(), dsts[0]);
    let tcp6 = send_traffic(&pair, v6.clone(), dsts[1]);
    // Per family: 16 sources × 5 small UDP, 4 × 3 fragments, 16 × 2 SYNs.
    let want_min = 2 * (16 * 5 + 4 * 3 + 16 * 2);
    let got = collect_all(
        &mut socks,
        want_min,
        Duration::from_millis(700),
        Duration::from_secs(10),
    );
    drop((tcp4, tcp6));

    let mut count: BTreeMap<(Kind, bool), usize> = BTreeMap::new();
    let mut listen_shards = vec![0usize; usize::from(n)];
    let mut wrong = Vec::new();
    // Frames the other hypothesis (offset 0 = the Ethernet header) mispredicts.
    let mut refuted = 0usize;
    for (i, ptype, f) in &got {
        if *ptype == PacketType::Outgoing {
            wrong.push(format!("outgoing frame on socket {i}"));
            continue;
        }
        let predicted = interpret_frame(&prog, f).expect("program runs") % u32::from(n);
        if predicted != *i as u32 {
            wrong.push(format!(
                "socket {i}, interpreter says {predicted}: {:02x?}",
                &f[..f.len().min(64)]
            ));
        }
        if f.len() >= 14 {
            let proto = u16::from_be_bytes([f[12], f[13]]);
            let at_mac = interpret(&prog, proto, f).expect("program runs") % u32::from(n);
            refuted += usize::from(at_mac != *i as u32);
        }
        let (kind, r) = rule(f, n, &srcs, &dsts);
        if let Some((src, shard)) = r {
            if usize::from(shard) != *i {
                wrong.push(format!(
                    "{kind:?} from {src} on socket {i}, rule says {shard}"
                ));
            }
            if matches!(kind, Kind::UdpListen | Kind::TcpListen) {
                listen_shards[*i] += 1;
            }
            *count.entry((kind, src.is_ipv6())).or_default() += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misrouted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    eprintln!(
        "n={n}: {} frames; {count:?}; listen traffic per socket {listen_shards:?}; \
         {refuted} would be misrouted with offset 0 at the MAC header",
        got.len()
    );
    for v6 in [false, true] {
        let c = |k| count.get(&(k, v6)).copied().unwrap_or(0);
        assert!(c(Kind::UdpListen) >= 16, "v6={v6} {count:?}");
        assert!(c(Kind::UdpEph) >= 64, "v6={v6} {count:?}");
        assert!(c(Kind::Frag) >= 12, "v6={v6} {count:?}");
        assert!(c(Kind::TcpListen) >= 16, "v6={v6} {count:?}");
        assert!(c(Kind::TcpEph) >= 16, "v6={v6} {count:?}");
    }
    assert!(refuted > 0, "offset 0 = MAC header would predict the same");
    // The address hash really spreads the listen-port traffic.
    assert!(listen_shards.iter().all(|&c| c > 0), "{listen_shards:?}");

    outgoing_frames_do_not_reach_the_group(&pair, &mut socks, &prog, n);
}

/// Frames the host's kernel sends on the interface (the stack's own
/// sockets bypass the qdisc and so the taps) are not delivered to the group
/// (`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`, Linux 6.2+). For this the stack
/// side gets a kernel address for a moment and sends UDP to the peer: its
/// ARP request goes out, and the peer's ARP reply comes in on the group.
fn outgoing_frames_do_not_reach_the_group(
    pair: &NetnsPair,
    socks: &mut [AfPacket],
    prog: &[Insn],
    n: u16,
) {
    let extra = Ipv4Addr::new(198, 18, pair.n, 250);
    let (sns, sif) = (pair.stack_ns.clone(), pair.stack_if.clone());
    must(
        "ip",
        &[
            "-n",
            &sns,
            "addr",
            "add",
            &format!("{extra}/24"),
            "dev",
            &sif,
        ],
    );
    let peer = SocketAddr::new(IpAddr::V4(pair.peer_v4()), 9);
    pair.in_stack(move || {
        let u = UdpSocket::bind(SocketAddr::new(IpAddr::V4(extra), 0)).expect("bind");
        for _ in 0..3 {
            let _ = u.send_to(b"kernel-sent", peer);
        }
    });
    let got = collect_all(socks, 1, Duration::from_millis(500), Duration::from_secs(3));
    must(
        "ip",
        &[
            "-n",
            &sns,
            "addr",
            "del",
            &format!("{extra}/24"),
            "dev",
            &sif,
        ],
    );
    let outgoing = got
        .iter()
        .filter(|(_, t, _)| *t == PacketType::Outgoing)
        .count();
    let arp_in = got
        .iter()
        .filter(|(_, t, f)| *t != PacketType::Outgoing && f.get(12..14) == Some(&[8, 6][..]))
        .count();
    for (i, t, f) in &got {
        if *t != PacketType::Outgoing {
            let p = interpret_frame(prog, f).expect("program runs") % u32::from(n);
            assert_eq!(p, *i as u32, "{:02x?}", &f[..f.len().min(64)]);
        }
    }
    eprintln!("kernel-sent probe: {outgoing} outgoing frames on the group, {arp_in} ARP in");
    assert!(arp_in > 0, "the kernel's ARP request got no reply: {got:?}");
    if kernel_at_least(6, 2) {
        assert_eq!(outgoing, 0, "outgoing frames reached the fanout group");
    }
}

#[test]
fn fanout_two_shards_steer_every_frame_as_the_program_predicts() {
    if skip_unless_root() {
        return;
    }
    fanout_steers_as_predicted(2, 0x5e02);
}

#[test]
fn fanout_three_shards_steer_every_frame_as_the_program_predicts() {
    if skip_unless_root() {
        return;
    }
    fanout_steers_as_predicted(3, 0x5e03);
}
