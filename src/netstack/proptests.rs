//! Property tests for the frame receive path (SPEC B: "bad input: never
//! panic, never unbounded memory") and for fragment reassembly alone.
//!
//! The stack runs with small limits so the caps are actually reached:
//! after every frame and every `poll`, [`Stack::usage`] must stay within
//! them.

use std::net::SocketAddr;

use etherparse::PacketBuilder;
use proptest::prelude::*;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr};

use super::frag::{FragKey, FragResult, MAX_FRAGMENTS, Reassembler};
use super::testutil::{self, OUR_MAC, OUR4, OUR6, PEER4, PEER6, t0};
use super::{
    DropReason, Duration, Instant, Limits, PacketType, RxChecksum, RxMeta, Stack, StackConfig,
};

/// Port the property stacks have a UDP socket on (both families).
const PORT: u16 = 5060;

fn small_limits() -> Limits {
    Limits {
        neigh_entries: 4,
        neigh_pending_bytes: 3000,
        frag4_mem: 6000,
        frag6_mem: 6000,
        frag4_timeout: Duration::from_secs(3),
        frag6_timeout: Duration::from_secs(4),
        icmp_msgs_burst: 4,
        udp_sockets: 4,
        udp_rx_queue: 4,
        tx_queue: 8,
        ..Limits::default()
    }
}

fn small_config() -> StackConfig {
    let mut c = testutil::config();
    c.limits = small_limits();
    c
}

/// A stack with small limits and a UDP socket on [`PORT`] in each family.
fn small_stack() -> (Stack, Vec<super::UdpHandle>) {
    let mut s = Stack::new(small_config(), t0());
    let h4 = s.udp_bind(SocketAddr::from((OUR4, PORT))).expect("bind v4");
    let h6 = s.udp_bind(SocketAddr::from((OUR6, PORT))).expect("bind v6");
    (s, vec![h4, h6])
}

fn assert_within_limits(s: &Stack) {
    let u = s.usage();
    let l = &s.config().limits;
    assert!(u.frag4_bytes <= l.frag4_mem, "{u:?}");
    assert!(u.frag6_bytes <= l.frag6_mem, "{u:?}");
    assert!(u.neigh_entries <= l.neigh_entries, "{u:?}");
    assert!(u.tx_frames <= l.tx_queue, "{u:?}");
    assert!(u.udp_sockets <= l.udp_sockets, "{u:?}");
}

/// One step of a receive sequence: a frame, then the clock moves and
/// (maybe) the stack is polled, the tx queue drained and the sockets read.
#[derive(Debug, Clone)]
struct Step {
    frame: Vec<u8>,
    meta: RxMeta,
    dt_ms: u64,
    poll: bool,
    drain: bool,
}

fn run(steps: &[Step]) {
    let (mut s, socks) = small_stack();
    let mut now: Instant = t0();
    assert_within_limits(&s);
    for st in steps {
        s.receive_frame(now, st.meta, &st.frame);
        assert_within_limits(&s);
        now += Duration::from_millis(st.dt_ms);
        if st.poll {
            let next = s.poll(now);
            if let Some(n) = next {
                assert!(n > now, "poll asked to run again at {n} <= {now}");
            }
            assert_within_limits(&s);
        }
        if st.drain {
            while let Some(f) = s.pop_tx() {
                s.recycle(f);
            }
            for &h in &socks {
                while let Some(d) = s.udp_recv_from(h) {
                    s.recycle(d.data);
                }
                let _ = s.udp_take_error(h);
            }
            while s.poll_event().is_some() {}
        }
    }
    // Every timer runs out eventually: nothing stays held.
    s.poll(now + Duration::from_secs(3600));
    assert_within_limits(&s);
    assert_eq!(s.usage().frag_datagrams, 0);
}

fn meta_strategy() -> impl Strategy<Value = RxMeta> {
    let pkt = prop_oneof![
        8 => Just(PacketType::Host),
        1 => Just(PacketType::Broadcast),
        1 => Just(PacketType::Multicast),
        1 => Just(PacketType::OtherHost),
        1 => Just(PacketType::Outgoing),
    ];
    let csum = prop_oneof![
        4 => Just(RxChecksum::Unverified),
        1 => Just(RxChecksum::NotReady),
        1 => Just(RxChecksum::Valid),
    ];
    (pkt, csum).prop_map(|(pkt_type, l4_csum)| RxMeta { pkt_type, l4_csum })
}

/// Arbitrary bytes, or arbitrary bytes behind an Ethernet header that gets
/// past `eth_rcv` (our MAC / broadcast / all-nodes; IPv4, IPv6, ARP).
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..2000);
    let dst = prop_oneof![
        Just(OUR_MAC),
        Just([0xff; 6]),
        Just([0x33, 0x33, 0, 0, 0, 1]),
        Just([0x33, 0x33, 0xff, 0, 0, 2]),
    ];
    let et = prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806)];
    let body = proptest::collection::vec(any::<u8>(), 0..1500);
    let framed = (dst, et, body).prop_map(|(dst, et, body)| {
        let mut f = Vec::with_capacity(14 + body.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&testutil::PEER_MAC);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(&body);
        f
    });
    prop_oneof![1 => raw, 3 => framed]
}

fn step_strategy(frame: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Step> {
    (
        frame,
        meta_strategy(),
        prop_oneof![3 => 0u64..50, 1 => 0u64..5000],
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(frame, meta, dt_ms, poll, drain)| Step {
            frame,
            meta,
            dt_ms,
            poll,
            drain,
        })
}

// ----- valid frames to mutate -----

fn udp4_packet(id: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(PEER4.octets(), OUR4.octets(), 64).udp(4000, PORT);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write to Vec");
    let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
    p.set_ident(id);
    p.fill_checksum();
    out
}

/// The IPv4 fragments (Ethernet frames) of a UDP datagram, `chunk` bytes
/// (a multiple of 8) of the fragmentable part each.
fn ipv4_fragments(id: u16, payload: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let pkt = udp4_packet(id, payload);
    let (hdr, body) = pkt.split_at(20);
    let n = body.len();
    (0..n)
        .step_by(chunk)
        .map(|off| {
            let end = (off + chunk).min(n);
            let mut ip = hdr.to_vec();
            ip.extend_from_slice(&body[off..end]);
            let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
            p.set_total_len((20 + end - off) as u16);
            p.set_more_frags(end < n);
            p.set_frag_offset(off as u16);
            p.fill_checksum();
            testutil::eth(&ip)
        })
        .collect()
}

/// The IPv6 fragments (Ethernet frames) of a UDP datagram.
fn ipv6_fragments(id: u32, payload: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let full = testutil::udp6_frame(OUR_MAC, PEER6, OUR6, 4000, PORT, payload);
    let body = &full[14 + 40..];
    let n = body.len();
    (0..n)
        .step_by(chunk)
        .map(|off| {
            let end = (off + chunk).min(n);
            let repr = Ipv6Repr {
                src_addr: PEER6,
                dst_addr: OUR6,
                next_header: IpProtocol::Ipv6Frag,
                payload_len: 8 + end - off,
                hop_limit: 64,
            };
            let mut ip = vec![0u8; 40 + 8 + end - off];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut ip[..]));
            // Fragment header (RFC 8200 §4.5): next header, reserved,
            // offset (8-byte units) << 3 | M, identification.
            let off_m = (off as u16) | u16::from(end < n);
            ip[40] = 17;
            ip[41] = 0;
            ip[42..44].copy_from_slice(&off_m.to_be_bytes());
            ip[44..48].copy_from_slice(&id.to_be_bytes());
            ip[48..].copy_from_slice(&body[off..end]);
            testutil::eth(&ip)
        })
        .collect()
}

/// Valid frames of every kind the receive path handles.
fn seeds() -> Vec<Vec<u8>> {
    let data: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
    let mut v = vec![
        testutil::udp4_frame(OUR_MAC, PEER4, OUR4, 4000, PORT, &data[..200]),
        testutil::udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 9, &data[..20]),
        testutil::udp6_frame(OUR_MAC, PEER6, OUR6, 4000, PORT, &data[..200]),
        testutil::udp6_frame(OUR_MAC, PEER6, OUR6, 4000, 9, &data[..20]),
    ];
    v.extend(ipv4_fragments(7, &data, 128));
    v.extend(ipv6_fragments(7, &data, 128));
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut f: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = f.len();
        match *m {
            Mutation::Flip(p, b) if n > 0 => f[p % n] ^= 1 << b,
            Mutation::Set(p, b) if n > 0 => f[p % n] = b,
            Mutation::Insert(p, b) => f.insert(p % (n + 1), b),
            Mutation::Remove(p) if n > 0 => {
                f.remove(p % n);
            }
            Mutation::Truncate(p) => f.truncate(p % (n + 1)),
            _ => {}
        }
    }
    f
}

/// A seed frame (by index), unchanged a quarter of the time, else mutated.
fn mutated_frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let n = seeds().len();
    (
        0..n,
        prop_oneof![
            1 => Just(Vec::new()),
            3 => proptest::collection::vec(mutation_strategy(), 1..4),
        ],
    )
        .prop_map(|(i, muts)| {
            // `seeds()` is cheap (a few small frames) next to a stack run.
            let f = seeds().swap_remove(i);
            mutate(f, &muts)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) Arbitrary frames interleaved with polls at increasing times
    /// never panic and never hold more than the limits.
    #[test]
    fn b_arbitrary_frames_stay_within_limits(
        steps in proptest::collection::vec(step_strategy(frame_strategy()), 1..24)
    ) {
        run(&steps);
    }

    /// (b) Mutated valid frames (UDP over both families, IPv4 and IPv6
    /// fragments): same properties.
    #[test]
    fn b_mutated_frames_stay_within_limits(
        steps in proptest::collection::vec(step_strategy(mutated_frame_strategy()), 1..32)
    ) {
        run(&steps);
    }

    /// (c) Any permutation of a datagram's fragments reassembles to the
    /// original, in both families; memory is released on completion.
    #[test]
    fn b1_b5_reasm_any_permutation_completes(
        (len, chunk, pieces) in (1usize..4000)
            // at most MAX_FRAGMENTS pieces
            .prop_flat_map(|len| (Just(len), len.div_ceil(8 * MAX_FRAGMENTS)..200))
            .prop_flat_map(|(len, c8)| {
                let pieces: Vec<usize> = (0..len).step_by(c8 * 8).collect();
                (Just(len), Just(c8 * 8), Just(pieces).prop_shuffle())
            }),
        seed in any::<u64>(),
        v6 in any::<bool>(),
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
        let key = if v6 {
            FragKey::V6 { src: PEER6, dst: OUR6, id: seed as u32 }
        } else {
            FragKey::V4 { src: PEER4, dst: OUR4, id: seed as u16, proto: 17 }
        };
        let hdr = [0xab; 20];
        let mut r = Reassembler::new(1 << 20, Duration::from_secs(30));
        let n = pieces.len();
        for (k, &off) in pieces.iter().enumerate() {
            let end = (off + chunk).min(len);
            let res = r.add(t0(), key, off, end < len, &data[off..end], (off == 0).then_some(&hdr[..]));
            if k + 1 < n {
                prop_assert!(matches!(res, FragResult::Incomplete), "{:?}", res);
            } else {
                match res {
                    FragResult::Complete(c) => {
                        prop_assert_eq!(c.header_len, 20);
                        prop_assert_eq!(&c.buf[..20], &hdr[..]);
                        prop_assert_eq!(&c.buf[20..], &data[..]);
                    }
                    other => prop_assert!(false, "expected Complete, got {:?}", other),
                }
            }
        }
        prop_assert_eq!(r.mem_used(), 0);
        prop_assert!(r.is_empty());
    }

    /// (c) Arbitrary `(key, offset, len, more, dt)` sequences never take
    /// more than `mem_limit`; completed datagrams have the length their
    /// last fragment said; everything is gone after the timeout.
    #[test]
    fn b1_reasm_arbitrary_fragments_bounded(
        limit in 0usize..8000,
        frags in proptest::collection::vec(
            (0u16..4, 0usize..70_000, 0usize..1600, any::<bool>(), any::<bool>(), 0u64..500),
            1..200,
        ),
    ) {
        let data = vec![0x5au8; 1600];
        let hdr = [0x45u8; 20];
        let mut r = Reassembler::new(limit, Duration::from_secs(2));
        let mut now = t0();
        for (id, offset, len, more, with_hdr, dt) in frags {
            let key = FragKey::V4 { src: PEER4, dst: OUR4, id, proto: 17 };
            // mostly 8-aligned offsets, as on the wire
            let offset = if with_hdr { offset & !7 } else { offset };
            let h = (offset == 0 && with_hdr).then_some(&hdr[..]);
            match r.add(now, key, offset, more, &data[..len], h) {
                FragResult::Complete(c) => {
                    prop_assert!(c.buf.len() <= c.header_len + 65535);
                    if !more {
                        prop_assert_eq!(c.buf.len(), c.header_len + offset + len);
                    }
                }
                FragResult::Dropped(reason) => prop_assert!(matches!(
                    reason,
                    DropReason::FragOverlap
                        | DropReason::FragMemLimit
                        | DropReason::FragTooBig
                        | DropReason::FragBadLength
                )),
                FragResult::Incomplete => {}
            }
            prop_assert!(r.mem_used() <= limit, "{} > {}", r.mem_used(), limit);
            now += Duration::from_millis(dt);
            r.expire(now);
            prop_assert!(r.mem_used() <= limit);
            if let Some(d) = r.next_deadline() {
                prop_assert!(d > now);
            }
        }
        let _ = r.take_evicted();
        r.expire(now + Duration::from_secs(2));
        prop_assert_eq!(r.mem_used(), 0);
        prop_assert!(r.is_empty());
    }
}

/// The fragment builders used above produce what the reassembler expects
/// (guards the property tests themselves).
#[test]
fn fragment_builders_cover_the_datagram() {
    let data = [7u8; 300];
    let f4 = ipv4_fragments(1, &data, 128);
    assert_eq!(f4.len(), 3);
    let p = Ipv4Packet::new_checked(&f4[2][14..]).expect("ipv4");
    assert!(p.verify_checksum());
    assert_eq!(p.frag_offset(), 256);
    assert!(!p.more_frags());
    let f6 = ipv6_fragments(1, &data, 128);
    assert_eq!(f6.len(), 3);
    let p = Ipv6Packet::new_checked(&f6[1][14..]).expect("ipv6");
    assert_eq!(p.next_header(), IpProtocol::Ipv6Frag);
    assert_eq!(usize::from(p.payload_len()), 8 + 128);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// SPEC B.3/B.4 under arbitrary input: sessions of plausible segments
    /// (near the expected sequence numbers, so every state is reached),
    /// clock steps and socket calls never panic, never pass the TCP caps,
    /// and every connection and TIME_WAIT bucket ends once closed.
    #[test]
    fn tcp_sessions_never_panic_or_exceed_caps(
        data in proptest::collection::vec(any::<u8>(), 0..3000)
    ) {
        super::tcp::fuzzing::run(&data);
    }

    /// The same, biased towards segments (op bytes 0-2) on the handshake
    /// path: every third byte is a segment op.
    #[test]
    fn tcp_segment_streams_never_panic(
        ops in proptest::collection::vec((0u8..3, any::<[u8; 12]>()), 0..200)
    ) {
        let mut data = Vec::new();
        for (op, rest) in ops {
            data.push(op);
            data.extend_from_slice(&rest);
        }
        super::tcp::fuzzing::run(&data);
    }
}
