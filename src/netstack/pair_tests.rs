//! Two stacks back to back over in-memory devices, optionally through the
//! fault injector: ARP/NDP resolution, fragmentation and reassembly, and the
//! checksums, exercised end to end without a kernel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::device::{FaultConfig, FaultInjector, FaultRates, MemoryDevice};
use super::driver::Driver;
use super::testutil::*;
use super::{
    DropReason, Duration, EthernetAddress, Instant, Ipv4Cidr, Ipv6Cidr, Mib, SocketEvent, Stack,
    UdpHandle,
};

const PORT: u16 = 5060;

/// Stack A (our addresses) and stack B (the peer's), linked by a device pair.
struct Link {
    a: Stack,
    b: Stack,
    dev_a: FaultInjector<MemoryDevice>,
    dev_b: MemoryDevice,
    drv_a: Driver,
    drv_b: Driver,
    now: Instant,
}

impl Link {
    fn new(faults: FaultRates, seed: u64) -> Link {
        let (da, db) =
            MemoryDevice::pair(EthernetAddress(OUR_MAC), EthernetAddress(PEER_MAC), 1500);
        let mut cb = config();
        cb.mac = EthernetAddress(PEER_MAC);
        cb.ipv4 = Some(Ipv4Cidr::new(PEER4, 24));
        cb.ipv6 = Some(Ipv6Cidr::new(PEER6, 64));
        Link {
            a: Stack::new(config(), t0()),
            b: Stack::new(cb, t0()),
            dev_a: FaultInjector::new(
                da,
                FaultConfig {
                    rx: faults,
                    tx: faults,
                    seed,
                },
            ),
            dev_b: db,
            drv_a: Driver::new(),
            drv_b: Driver::new(),
            now: t0(),
        }
    }

    /// One round on both sides; B echoes everything on `hb`.
    fn round(&mut self, hb: UdpHandle, got: &mut dyn FnMut(&mut Stack)) {
        self.now += Duration::from_millis(10);
        let now = self.now;
        self.drv_a
            .step(&mut self.dev_a, &mut self.a, now, &mut |s, _| got(s))
            .expect("step a");
        self.drv_b
            .step(&mut self.dev_b, &mut self.b, now, &mut |s, t| {
                while let Some(ev) = s.poll_event() {
                    if let SocketEvent::UdpReadable(h) = ev {
                        while let Some(d) = s.udp_recv_from(h) {
                            let _ = s.udp_send_to(t, h, d.src, &d.data);
                            s.recycle(d.data);
                        }
                    }
                }
            })
            .expect("step b");
        let _ = hb;
    }
}

/// Datagram `seq` of `len` bytes: the sequence number, then a pattern
/// derived from it, so a corrupted or mixed-up echo is recognisable.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend((0..len.saturating_sub(4)).map(|i| (i as u32 * 7 + seq) as u8));
    v.truncate(len.max(4));
    v
}

/// Send `sizes` to B's echo over v4 and v6 and collect what comes back.
fn exchange(link: &mut Link, sizes: &[usize], rounds: usize) -> (usize, HashMap<u32, Vec<u8>>) {
    let ha4 = link.a.udp_bind(SocketAddr::new(OUR4.into(), 0)).unwrap();
    let ha6 = link.a.udp_bind(SocketAddr::new(OUR6.into(), 0)).unwrap();
    let hb4 = link
        .b
        .udp_bind(SocketAddr::new(PEER4.into(), PORT))
        .unwrap();
    let _hb6 = link
        .b
        .udp_bind(SocketAddr::new(PEER6.into(), PORT))
        .unwrap();
    let mut sent = HashMap::new();
    let mut seq = 0u32;
    for &len in sizes {
        for (h, ip) in [(ha4, IpAddr::from(PEER4)), (ha6, IpAddr::from(PEER6))] {
            let p = payload(seq, len);
            link.a
                .udp_send_to(link.now, h, SocketAddr::new(ip, PORT), &p)
                .unwrap();
            sent.insert(seq, p);
            seq += 1;
        }
    }
    let mut back: HashMap<u32, Vec<u8>> = HashMap::new();
    for _ in 0..rounds {
        link.round(hb4, &mut |s| {
            for h in [ha4, ha6] {
                while let Some(d) = s.udp_recv_from(h) {
                    if d.data.len() >= 4 {
                        let k = u32::from_be_bytes([d.data[0], d.data[1], d.data[2], d.data[3]]);
                        back.insert(k, d.data.clone());
                    }
                    s.recycle(d.data);
                }
                while s.poll_event().is_some() {}
            }
        });
        if back.len() == sent.len() {
            break;
        }
    }
    for (k, v) in &back {
        assert_eq!(sent.get(k), Some(v), "echo {k} differs from what was sent");
    }
    (sent.len(), back)
}

#[test]
fn stack_to_stack_udp_with_fragmentation_both_families() {
    let mut link = Link::new(FaultRates::NONE, 1);
    let (n, back) = exchange(&mut link, &[1, 200, 1472, 1473, 4000, 20000, 65000], 200);
    assert_eq!(
        back.len(),
        n,
        "every datagram echoed; a: {:?}\nb: {:?}",
        link.a.counters().nonzero(),
        link.b.counters().nonzero()
    );
    for s in [&link.a, &link.b] {
        let c = s.counters();
        assert!(c.get(Mib::IpReasmOKs) >= 4 && c.get(Mib::Ip6ReasmOKs) >= 4);
        assert!(c.get(Mib::IpFragCreates) > 0 && c.get(Mib::Ip6FragCreates) > 0);
        // the only frames not taken are the other side's gratuitous ARP
        // (its target is not us) and its MLD report and retransmission
        // (to ff02::16's MAC)
        let mld = c.drops(DropReason::EthOtherHost);
        assert!(mld <= 2, "{:?}", c.nonzero());
        let ignored = c.drops(DropReason::ArpNotForUs) + mld;
        assert_eq!(c.total_drops() - ignored, 0, "{:?}", c.nonzero());
    }
    assert!(link.a.neighbor(link.now, PEER4.into()).is_some());
    assert!(link.a.neighbor(link.now, PEER6.into()).is_some());
}

#[test]
fn lossy_link_never_delivers_damaged_data_and_stays_bounded() {
    let faults = FaultRates {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        corrupt: 0.05,
    };
    for seed in 1..=4 {
        let mut link = Link::new(faults, seed);
        let sizes: Vec<usize> = (0..60).map(|i| [30, 500, 1400, 3000][i % 4]).collect();
        // `exchange` asserts every echo that arrives is exactly what was sent
        let (n, back) = exchange(&mut link, &sizes, 600);
        assert!(
            back.len() * 2 > n,
            "seed {seed}: only {} of {n} echoed",
            back.len()
        );
        let st = link.dev_a.stats();
        assert!(
            st.rx.corrupted + st.tx.corrupted > 0,
            "the injector corrupted frames"
        );
        for s in [&link.a, &link.b] {
            let u = s.usage();
            let l = &s.config().limits;
            assert!(u.frag4_bytes <= l.frag4_mem && u.frag6_bytes <= l.frag6_mem);
            assert!(u.neigh_entries <= l.neigh_entries && u.tx_frames <= l.tx_queue);
        }
        // the damage was seen and counted somewhere (checksums, headers,
        // foreign MACs, overlapping fragments…)
        let drops = link.a.counters().total_drops() + link.b.counters().total_drops();
        assert!(drops > 0, "seed {seed}");
    }
}
