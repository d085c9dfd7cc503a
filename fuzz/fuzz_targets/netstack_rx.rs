//! Fuzz the embedded stack's frame receive path (SPEC B.1, B.2, B.5): any
//! sequence of frames, with the clock moving and timers run in between,
//! must never panic and never hold more than the configured limits.
//!
//! Input layout, repeated: 2 bytes big-endian frame length (mod 2048), one
//! byte of time step, one control byte, then the frame bytes (cut short at
//! the end of the input). Control byte: bits 0-2 packet type, bits 3-4
//! checksum status, bit 5 drain the tx queue and the sockets, bit 6 prepend
//! an Ethernet header to us (bit 7 then picks IPv6 over IPv4 as EtherType).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sipedge::netstack::{
    Duration, EthernetAddress, Instant, Ipv4Cidr, Ipv6Cidr, Limits, PacketType, RxChecksum, RxMeta,
    Stack, StackConfig,
};

const OUR_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x01];

fn config() -> StackConfig {
    let mut c = StackConfig::new(EthernetAddress(OUR_MAC));
    c.ipv4 = Some(Ipv4Cidr::new(Ipv4Addr::new(198, 18, 0, 2), 24));
    c.ipv6 = Some(Ipv6Cidr::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        64,
    ));
    c.gateway4 = Some(Ipv4Addr::new(198, 18, 0, 254));
    c.gateway6 = Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe));
    c.limits = Limits {
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
    };
    c
}

fn check(s: &Stack) {
    let u = s.usage();
    let l = &s.config().limits;
    assert!(u.frag4_bytes <= l.frag4_mem, "{u:?}");
    assert!(u.frag6_bytes <= l.frag6_mem, "{u:?}");
    assert!(u.neigh_entries <= l.neigh_entries, "{u:?}");
    assert!(u.tx_frames <= l.tx_queue, "{u:?}");
    assert!(u.udp_sockets <= l.udp_sockets, "{u:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::from_millis(1_000_000);
    let mut s = Stack::new(config(), now);
    let socks: Vec<_> = [
        SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 5060)),
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 5060)),
    ]
    .into_iter()
    .filter_map(|a| s.udp_bind(a).ok())
    .collect();
    let mut frame = Vec::with_capacity(2048 + 14);
    let mut rest = data;
    while let [l0, l1, dt, ctl, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*l0, *l1])) % 2048;
        let (body, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        frame.clear();
        if ctl & 0x40 != 0 {
            frame.extend_from_slice(&OUR_MAC);
            frame.extend_from_slice(&PEER_MAC);
            let et: u16 = if ctl & 0x80 != 0 { 0x86dd } else { 0x0800 };
            frame.extend_from_slice(&et.to_be_bytes());
        }
        frame.extend_from_slice(body);
        let meta = RxMeta {
            pkt_type: match ctl & 7 {
                5 => PacketType::Broadcast,
                6 => PacketType::Multicast,
                7 => PacketType::OtherHost,
                4 if body.len() % 7 == 0 => PacketType::Outgoing,
                _ => PacketType::Host,
            },
            l4_csum: match (ctl >> 3) & 3 {
                1 => RxChecksum::NotReady,
                2 => RxChecksum::Valid,
                _ => RxChecksum::Unverified,
            },
        };
        s.receive_frame(now, meta, &frame);
        check(&s);
        // Small steps mostly; large ones (high bit) jump past timeouts.
        let step = if dt & 0x80 != 0 {
            u64::from(dt & 0x7f) * 1000
        } else {
            u64::from(*dt) * 10
        };
        now += Duration::from_millis(step);
        if let Some(next) = s.poll(now) {
            assert!(next > now);
        }
        check(&s);
        if ctl & 0x20 != 0 {
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
    s.poll(now + Duration::from_secs(3600));
    check(&s);
    assert_eq!(s.usage().frag_datagrams, 0);
});
