//! A TCP segment interpreter shared by the fuzz target
//! (`fuzz/fuzz_targets/netstack_tcp.rs`) and the property tests: bytes
//! become a session of plausible segments (sequence and acknowledgment
//! numbers near what the stack expects, so established, closing and
//! TIME_WAIT states are reached), clock steps and socket calls, against a
//! stack with a listener and an outgoing connection and small limits.
//! After every step: no panic, and nothing past the caps.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Cidr, Ipv4Packet,
    Ipv4Repr, Ipv6Cidr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    TcpTimestampRepr,
};

use super::super::{Duration, Instant, Limits, RxMeta, SocketEvent, Stack, StackConfig};
use super::{Shutdown, TcpHandle};

const OUR_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x01];
const OUR4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const LPORT: u16 = 5060;

/// The small limits the session runs with (so the caps are reached).
pub fn limits() -> Limits {
    Limits {
        tx_queue: 64,
        tcp_max_conns: 6,
        tcp_syn_backlog_max: 2,
        tcp_max_tw_buckets: 2,
        tcp_rmem: 8192,
        tcp_wmem: 8192,
        tcp_fin_timeout: Duration::from_secs(5),
        tcp_time_wait: Duration::from_secs(7),
        tcp_challenge_ack_limit: 20,
        tcp_retries2: 4,
        tcp_syn_retries: 2,
        ..Limits::default()
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// What the peer side knows of one 4-tuple: our next sequence number and
/// the acknowledgment we last sent (the peer's next sequence number).
#[derive(Default, Clone, Copy)]
struct Track {
    our_next: u32,
    peer_next: u32,
}

/// Run one session. Panics only on a broken invariant.
pub fn run(data: &[u8]) {
    let mut now = Instant::from_millis(1_000_000);
    let mut c = StackConfig::new(EthernetAddress(OUR_MAC));
    c.ipv4 = Some(Ipv4Cidr::new(OUR4, 24));
    c.ipv6 = Some(Ipv6Cidr::new(OUR6, 64));
    c.limits = limits();
    c.limits.neigh_reachable = Duration::from_secs(1_000_000);
    let mut s = Stack::new(c, now);
    for ip in [IpAddr::V4(PEER4), IpAddr::V6(PEER6)] {
        s.neigh_update(now, ip, EthernetAddress(PEER_MAC), true);
    }
    let mut handles: Vec<TcpHandle> = Vec::new();
    if let Ok(l) = s.tcp_listen(SocketAddr::new(OUR4.into(), LPORT), 2) {
        handles.push(l);
    }
    if let Ok(l) = s.tcp_listen(SocketAddr::new(OUR6.into(), LPORT), 2) {
        handles.push(l);
    }
    if let Ok(h) = s.tcp_connect(now, None, SocketAddr::new(PEER4.into(), 5070)) {
        handles.push(h);
    }
    let mut track: HashMap<(SocketAddr, SocketAddr), Track> = HashMap::new();
    let mut ts_clock = 1u32;
    let mut buf = [0u8; 4096];
    let mut cur = Cursor(data);
    observe(&mut s, &mut track);
    for _ in 0..10_000 {
        let Some(op) = cur.u8() else {
            break;
        };
        match op % 8 {
            0..=2 => {
                let Some(seg) = segment(&mut cur, &track, &mut ts_clock) else {
                    break;
                };
                s.receive_frame(now, RxMeta::HOST, &seg);
            }
            3 => {
                let b = cur.u8().unwrap_or(0) as u64;
                now += Duration::from_millis(if b < 128 { b * 10 } else { (b - 127) * 1000 });
                s.poll(now);
            }
            4 => {
                while let Some(ev) = s.poll_event() {
                    if let SocketEvent::TcpAcceptable(l) = ev {
                        while let Some((h, _)) = s.tcp(l).and_then(|mut l| l.accept()) {
                            handles.push(h);
                        }
                    }
                }
                for &h in &handles {
                    if let Some(mut t) = s.tcp(h) {
                        let _ = t.recv(&mut buf);
                    }
                }
            }
            5 => {
                let i = cur.u8().unwrap_or(0) as usize;
                let n = cur.u16().unwrap_or(0) as usize % buf.len();
                if let Some(&h) = handles.get(i % handles.len().max(1))
                    && let Some(mut t) = s.tcp(h)
                {
                    let _ = t.send(&buf[..n]);
                }
            }
            6 => {
                let i = cur.u8().unwrap_or(0) as usize;
                if let Some(&h) = handles.get(i % handles.len().max(1))
                    && let Some(mut t) = s.tcp(h)
                {
                    match i % 7 {
                        0 => t.close(),
                        1 => t.abort(),
                        2 => t.shutdown(Shutdown::Write),
                        3 => t.shutdown(Shutdown::Read),
                        4 => t.set_linger_zero(true),
                        5 => t.set_keepalive(Some(Duration::from_secs(2))),
                        _ => t.set_nodelay(false),
                    }
                }
            }
            _ => {
                let n = cur.u8().unwrap_or(0) as usize;
                let n = n.min(cur.0.len());
                let (f, rest) = cur.0.split_at(n);
                cur.0 = rest;
                s.receive_frame(now, RxMeta::HOST, f);
            }
        }
        observe(&mut s, &mut track);
        check(&s);
    }
    // Run every timer out: everything must end (TIME_WAIT, orphans).
    for &h in &handles {
        if let Some(mut t) = s.tcp(h) {
            t.close();
        }
    }
    for _ in 0..5000 {
        match s.poll(now) {
            Some(t) if t > now => now = t,
            Some(_) => now += Duration::from_millis(1),
            None => break,
        }
        observe(&mut s, &mut track);
        check(&s);
    }
    let u = s.usage();
    assert_eq!(u.tcp_time_wait, 0, "TIME_WAIT drained: {u:?}");
    assert_eq!(u.tcp_conns, 0, "every connection ended: {u:?}");
    assert_eq!(u.tcp_buffer_bytes, 0, "{u:?}");
}

fn check(s: &Stack) {
    let u = s.usage();
    let l = &s.config().limits;
    assert!(u.tcp_conns <= l.tcp_max_conns, "{u:?}");
    assert!(u.tcp_time_wait <= l.tcp_max_tw_buckets, "{u:?}");
    assert!(
        u.tcp_buffer_bytes <= u.tcp_conns * (l.tcp_rmem + l.tcp_wmem),
        "{u:?}"
    );
    assert!(u.tx_frames <= l.tx_queue, "{u:?}");
}

/// Learn our sequence numbers from what we sent.
fn observe(s: &mut Stack, track: &mut HashMap<(SocketAddr, SocketAddr), Track>) {
    while let Some(f) = s.pop_tx() {
        if let Some((from, to, seq, len, ack)) = parse(&f) {
            let t = track.entry((to, from)).or_default();
            t.our_next = seq.wrapping_add(len);
            if let Some(a) = ack {
                t.peer_next = a;
            }
            if track.len() > 64 {
                track.clear();
            }
        }
        s.recycle(f);
    }
}

/// (source, destination, seq, SEG.LEN, ack) of one of our TCP segments.
fn parse(f: &[u8]) -> Option<(SocketAddr, SocketAddr, u32, u32, Option<u32>)> {
    let e = EthernetFrame::new_checked(f).ok()?;
    let (src, dst, l4): (IpAddr, IpAddr, &[u8]) = match e.ethertype() {
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(e.payload()).ok()?;
            if p.next_header() != IpProtocol::Tcp {
                return None;
            }
            let hl = p.header_len() as usize;
            let end = (p.total_len() as usize).min(e.payload().len());
            (
                p.src_addr().into(),
                p.dst_addr().into(),
                e.payload().get(hl..end)?,
            )
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(e.payload()).ok()?;
            if p.next_header() != IpProtocol::Tcp {
                return None;
            }
            (
                p.src_addr().into(),
                p.dst_addr().into(),
                e.payload().get(40..)?,
            )
        }
        _ => return None,
    };
    let p = TcpPacket::new_checked(l4).ok()?;
    let len = p.payload().len() as u32 + p.syn() as u32 + p.fin() as u32;
    Some((
        SocketAddr::new(src, p.src_port()),
        SocketAddr::new(dst, p.dst_port()),
        p.seq_number().0 as u32,
        len,
        p.ack().then(|| p.ack_number().0 as u32),
    ))
}

/// One segment from the peer, its fields drawn from the input near what
/// the stack expects.
fn segment(
    cur: &mut Cursor<'_>,
    track: &HashMap<(SocketAddr, SocketAddr), Track>,
    ts_clock: &mut u32,
) -> Option<Vec<u8>> {
    let sel = cur.u8()?;
    let flags = cur.u8()?;
    let v6 = sel & 0x80 != 0;
    let (our, peer) = if v6 {
        (IpAddr::V6(OUR6), IpAddr::V6(PEER6))
    } else {
        (IpAddr::V4(OUR4), IpAddr::V4(PEER4))
    };
    // Ports: a few peers towards the listener, or a 4-tuple we have seen.
    let known: Vec<_> = track.keys().copied().collect();
    let (local, remote) = if sel & 0x40 != 0 && !known.is_empty() {
        known[(sel as usize) % known.len()]
    } else {
        (
            SocketAddr::new(our, LPORT),
            SocketAddr::new(peer, 40000 + (sel & 3) as u16),
        )
    };
    let t = track.get(&(local, remote)).copied().unwrap_or_default();
    let seq = match flags >> 6 {
        0 => t.peer_next,
        1 => t.peer_next.wrapping_add(cur.u8()? as u32),
        2 => t.peer_next.wrapping_sub(cur.u8()? as u32),
        _ => cur.u32()?,
    };
    let ackv = match (flags >> 4) & 3 {
        0 => t.our_next,
        1 => t.our_next.wrapping_sub(cur.u8()? as u32),
        2 => t.our_next.wrapping_add(cur.u8()? as u32),
        _ => cur.u32()?,
    };
    let control = match flags & 7 {
        1 => TcpControl::Syn,
        2 => TcpControl::Fin,
        3 => TcpControl::Rst,
        4 => TcpControl::Psh,
        _ => TcpControl::None,
    };
    let opts = cur.u8()?;
    let wnd = cur.u16()?;
    let len = match cur.u8()? {
        n if n < 200 => n as usize,
        n => (n as usize - 199) * 700,
    };
    *ts_clock = ts_clock.wrapping_add(if opts & 0x80 != 0 { 1 } else { 0 });
    let payload = vec![0x5au8; len];
    let r = TcpRepr {
        src_port: remote.port(),
        dst_port: local.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: (flags & 8 != 0).then_some(TcpSeqNumber(ackv as i32)),
        window_len: wnd,
        window_scale: (opts & 1 != 0).then_some(opts >> 4),
        max_seg_size: (opts & 2 != 0).then_some(wnd | 64),
        sack_permitted: opts & 4 != 0,
        sack_ranges: if opts & 0x40 != 0 {
            [
                Some((t.our_next.wrapping_sub(3000), t.our_next.wrapping_sub(1000))),
                None,
                None,
            ]
        } else {
            [None; 3]
        },
        timestamp: (opts & 8 != 0).then(|| {
            let v = if opts & 0x20 != 0 {
                ts_clock.wrapping_sub(1000)
            } else {
                *ts_clock
            };
            TcpTimestampRepr::new(v, cur.u8().unwrap_or(0) as u32)
        }),
        payload: &payload,
    };
    let l4 = r.buffer_len();
    let cc = ChecksumCapabilities::default();
    let (s, d) = (IpAddress::from(remote.ip()), IpAddress::from(local.ip()));
    let mut ip = match (remote.ip(), local.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let ir = Ipv4Repr {
                src_addr: a,
                dst_addr: b,
                next_header: IpProtocol::Tcp,
                payload_len: l4,
                hop_limit: 64,
            };
            let mut v = vec![0u8; 20 + l4];
            ir.emit(&mut Ipv4Packet::new_unchecked(&mut v[..]), &cc);
            r.emit(&mut TcpPacket::new_unchecked(&mut v[20..]), &s, &d, &cc);
            v
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let ir = Ipv6Repr {
                src_addr: a,
                dst_addr: b,
                next_header: IpProtocol::Tcp,
                payload_len: l4,
                hop_limit: 64,
            };
            let mut v = vec![0u8; 40 + l4];
            ir.emit(&mut Ipv6Packet::new_unchecked(&mut v[..]));
            r.emit(&mut TcpPacket::new_unchecked(&mut v[40..]), &s, &d, &cc);
            v
        }
        _ => return None,
    };
    if opts & 0x10 != 0 && flags & 0x80 != 0 {
        // a corrupted checksum now and then
        let n = ip.len();
        ip[n - 1] ^= 0x01;
    }
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&if v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
    f.append(&mut ip);
    Some(f)
}
