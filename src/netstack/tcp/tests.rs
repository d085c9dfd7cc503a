//! TCP unit tests: byte arrays in, segments out, named after the rule they
//! check (SPEC B.3 / B.4, RFC sections). Time is virtual: the tests move
//! the clock and call `poll`.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
};

use super::super::testutil::*;
use super::super::{
    DropReason, Duration, Instant, Limits, Mib, RxChecksum, RxMeta, SocketEvent, Stack,
};
use super::{Shutdown, TcpError, TcpHandle, TcpState};

const LP: u16 = 5060;
const PP: u16 = 40000;

fn ours(port: u16) -> SocketAddr {
    SocketAddr::new(OUR4.into(), port)
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::new(PEER4.into(), port)
}

/// A segment, owned (test side).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct S {
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    wnd: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_perm: bool,
    ts: Option<(u32, u32)>,
    sacks: Vec<(u32, u32)>,
    data: Vec<u8>,
    sport: u16,
    dport: u16,
}

impl S {
    fn new(seq: u32) -> S {
        S {
            seq,
            wnd: 65535,
            sport: PP,
            dport: LP,
            ..S::default()
        }
    }
    fn ack(mut self, a: u32) -> S {
        self.ack = Some(a);
        self
    }
    fn syn(mut self) -> S {
        self.syn = true;
        self
    }
    fn fin(mut self) -> S {
        self.fin = true;
        self
    }
    fn rst(mut self) -> S {
        self.rst = true;
        self
    }
    fn data(mut self, d: &[u8]) -> S {
        self.data = d.to_vec();
        self
    }
    fn ts(mut self, v: u32, e: u32) -> S {
        self.ts = Some((v, e));
        self
    }
    fn wnd(mut self, w: u16) -> S {
        self.wnd = w;
        self
    }
    fn ports(mut self, s: u16, d: u16) -> S {
        self.sport = s;
        self.dport = d;
        self
    }
    fn flags(&self) -> &'static str {
        match (self.syn, self.fin, self.rst, self.ack.is_some()) {
            (true, _, _, false) => "S",
            (true, _, _, true) => "SA",
            (_, _, true, false) => "R",
            (_, _, true, true) => "RA",
            (_, true, _, _) => "FA",
            _ => "A",
        }
    }
}

/// Ethernet + IP + TCP from `src` to `dst` (valid checksums).
fn frame(src: IpAddr, dst: IpAddr, s: &S) -> Vec<u8> {
    let mut sacks = [None; 3];
    for (i, b) in s.sacks.iter().take(3).enumerate() {
        sacks[i] = Some(*b);
    }
    let control = if s.syn {
        TcpControl::Syn
    } else if s.fin {
        TcpControl::Fin
    } else if s.rst {
        TcpControl::Rst
    } else {
        TcpControl::None
    };
    let r = TcpRepr {
        src_port: s.sport,
        dst_port: s.dport,
        control,
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: s.wnd,
        window_scale: s.ws,
        max_seg_size: s.mss,
        sack_permitted: s.sack_perm,
        sack_ranges: sacks,
        timestamp: s.ts.map(|(v, e)| TcpTimestampRepr::new(v, e)),
        payload: &s.data,
    };
    let len = r.buffer_len();
    let (sa, da) = (IpAddress::from(src), IpAddress::from(dst));
    let cc = ChecksumCapabilities::default();
    let ip = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let ir = Ipv4Repr {
                src_addr: a,
                dst_addr: b,
                next_header: IpProtocol::Tcp,
                payload_len: len,
                hop_limit: 64,
            };
            let mut v = vec![0u8; 20 + len];
            let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
            ir.emit(&mut p, &cc);
            r.emit(&mut TcpPacket::new_unchecked(&mut v[20..]), &sa, &da, &cc);
            v
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let ir = Ipv6Repr {
                src_addr: a,
                dst_addr: b,
                next_header: IpProtocol::Tcp,
                payload_len: len,
                hop_limit: 64,
            };
            let mut v = vec![0u8; 40 + len];
            let mut p = Ipv6Packet::new_unchecked(&mut v[..]);
            ir.emit(&mut p);
            r.emit(&mut TcpPacket::new_unchecked(&mut v[40..]), &sa, &da, &cc);
            v
        }
        _ => unreachable!(),
    };
    eth(&ip)
}

/// The TCP segment in an outgoing frame, if it is one (checksum verified).
fn parse(f: &[u8]) -> Option<S> {
    let e = EthernetFrame::new_checked(f).ok()?;
    let (src, dst, l4): (IpAddress, IpAddress, &[u8]) = match e.ethertype() {
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(e.payload()).ok()?;
            if p.next_header() != IpProtocol::Tcp {
                return None;
            }
            let hl = p.header_len() as usize;
            (
                p.src_addr().into(),
                p.dst_addr().into(),
                &e.payload()[hl..p.total_len() as usize],
            )
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(e.payload()).ok()?;
            if p.next_header() != IpProtocol::Tcp {
                return None;
            }
            (p.src_addr().into(), p.dst_addr().into(), &e.payload()[40..])
        }
        _ => return None,
    };
    let p = TcpPacket::new_checked(l4).ok()?;
    assert!(p.verify_checksum(&src, &dst), "our checksum");
    let r = TcpRepr::parse(&p, &src, &dst, &ChecksumCapabilities::default()).ok()?;
    Some(S {
        seq: r.seq_number.0 as u32,
        ack: r.ack_number.map(|a| a.0 as u32),
        syn: r.control == TcpControl::Syn,
        fin: r.control == TcpControl::Fin,
        rst: r.control == TcpControl::Rst,
        wnd: r.window_len,
        mss: r.max_seg_size,
        ws: r.window_scale,
        sack_perm: r.sack_permitted,
        ts: r.timestamp.map(|t| (t.tsval, t.tsecr)),
        sacks: r.sack_ranges.iter().flatten().copied().collect(),
        data: r.payload.to_vec(),
        sport: r.src_port,
        dport: r.dst_port,
    })
}

/// A stack under test, the peer at 198.18.0.1:40000 talking to our :5060.
struct H {
    s: Stack,
    now: Instant,
}

/// An established connection seen from the peer: the next sequence numbers
/// each way.
#[derive(Debug, Clone, Copy)]
struct Conn {
    #[allow(dead_code)]
    listener: TcpHandle,
    h: TcpHandle,
    /// Peer's next sequence number.
    p: u32,
    /// Our next sequence number.
    o: u32,
}

impl H {
    fn new() -> H {
        Self::with_limits(|_| {})
    }

    /// A stack with these limits, its start-up traffic done (the clock is
    /// at t0 + 1 s), the peer's MAC known for good (tests run for minutes
    /// of virtual time without ARP in between).
    fn with_limits(f: impl FnOnce(&mut Limits)) -> H {
        let mut c = config();
        c.limits.neigh_reachable = Duration::from_secs(1_000_000);
        f(&mut c.limits);
        let mut s = Stack::new(c, t0());
        settle(&mut s);
        for ip in [IpAddr::V4(PEER4), IpAddr::V6(PEER6)] {
            s.neigh_update(t0(), ip, smoltcp::wire::EthernetAddress(PEER_MAC), true);
        }
        drain(&mut s);
        H {
            s,
            now: t0() + Duration::from_secs(1),
        }
    }

    fn rx(&mut self, s: S) {
        let f = frame(PEER4.into(), OUR4.into(), &s);
        self.s.receive_frame(self.now, RxMeta::HOST, &f);
    }

    fn out(&mut self) -> Vec<S> {
        drain(&mut self.s).iter().filter_map(|f| parse(f)).collect()
    }

    fn one(&mut self) -> S {
        let o = self.out();
        if o.len() != 1 {
            eprintln!(
                "now {:?} counters {:?}",
                self.now,
                self.s.counters.nonzero()
            );
        }
        assert_eq!(o.len(), 1, "one segment expected: {o:?}");
        o.into_iter().next().expect("one")
    }

    fn none(&mut self) {
        let o = self.out();
        assert!(o.is_empty(), "nothing expected: {o:?}");
    }

    /// Move the clock to `t`, running every timer due on the way.
    fn until(&mut self, t: Instant) {
        for _ in 0..100_000 {
            match self.s.poll(self.now) {
                Some(n) if n <= t && n > self.now => self.now = n,
                Some(n) if n <= self.now => self.now += Duration::from_millis(1),
                _ => break,
            }
            if self.now >= t {
                break;
            }
        }
        self.now = t;
        self.s.poll(t);
    }

    fn after(&mut self, d: Duration) {
        let t = self.now + d;
        self.until(t);
    }

    /// End the driver's round: what was corked leaves now.
    fn uncork(&mut self) {
        self.s.tcp_uncork(self.now);
    }

    fn events(&mut self) -> Vec<SocketEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn c(&self) -> &super::super::Counters {
        &self.s.counters
    }

    fn listen(&mut self) -> TcpHandle {
        self.s.tcp_listen(ours(LP), 8).expect("listen")
    }

    /// Peer SYN (MSS 1460, wscale 7, SACK, timestamps when `ts`) → our
    /// SYN-ACK → peer ACK → accept.
    fn establish_opts(&mut self, ts: bool) -> Conn {
        let l = self.listen();
        let mut syn = S::new(1000).syn();
        syn.mss = Some(1460);
        syn.ws = Some(7);
        syn.sack_perm = true;
        if ts {
            syn.ts = Some((500, 0));
        }
        self.rx(syn);
        let sa = self.one();
        assert_eq!(sa.flags(), "SA");
        assert_eq!(sa.ack, Some(1001));
        let o = sa.seq.wrapping_add(1);
        let mut a = S::new(1001).ack(o).wnd(512);
        if ts {
            a.ts = Some((501, sa.ts.expect("ts echoed").0));
        }
        self.rx(a);
        self.none();
        let ev = self.events();
        assert_eq!(ev, vec![SocketEvent::TcpAcceptable(l)]);
        let (h, from) = self.s.tcp(l).and_then(|mut x| x.accept()).expect("accept");
        assert_eq!(from, peer(PP));
        Conn {
            listener: l,
            h,
            p: 1001,
            o,
        }
    }

    fn establish(&mut self) -> Conn {
        self.establish_opts(false)
    }

    fn state(&mut self, h: TcpHandle) -> TcpState {
        self.s.tcp(h).expect("live handle").state()
    }
}

// ----- SPEC B.3: segments to no socket -----

#[test]
fn b3_rst_for_syn_to_closed_port() {
    let mut h = H::new();
    let mut syn = S::new(7000).syn();
    syn.mss = Some(1460);
    syn.ts = Some((1, 0));
    h.rx(syn);
    let r = h.one();
    // seq 0, ACK = SEG.SEQ + SEG.LEN (the SYN counts one), no options
    assert_eq!((r.flags(), r.seq, r.ack), ("RA", 0, Some(7001)));
    assert_eq!((r.sport, r.dport), (LP, PP));
    assert_eq!((r.mss, r.ts, r.wnd), (None, None, 0));
    assert_eq!(h.c().get(Mib::TcpOutRsts), 1);
    assert_eq!(h.c().get(Mib::TcpOutSegs), 1);
    assert_eq!(h.c().drops(DropReason::TcpNoSocket), 1);
}

#[test]
fn b3_rst_for_ack_to_closed_port_takes_seq_from_seg_ack() {
    let mut h = H::new();
    h.rx(S::new(7000).ack(123_456).data(b"hello"));
    let r = h.one();
    assert_eq!((r.flags(), r.seq, r.ack), ("R", 123_456, None));
}

#[test]
fn b3_rst_ack_counts_data_and_fin() {
    let mut h = H::new();
    h.rx(S::new(7000).fin().data(b"abc"));
    let r = h.one();
    assert_eq!((r.flags(), r.seq, r.ack), ("RA", 0, Some(7004)));
}

#[test]
fn b3_never_a_reset_for_a_reset() {
    let mut h = H::new();
    h.rx(S::new(7000).rst());
    h.rx(S::new(7000).rst().ack(5));
    h.none();
    assert_eq!(h.c().get(Mib::TcpOutRsts), 0);
}

#[test]
fn b3_bad_checksum_is_counted_and_silent() {
    let mut h = H::new();
    let mut f = frame(PEER4.into(), OUR4.into(), &S::new(7000).syn());
    let n = f.len();
    f[n - 1] ^= 0xff; // urgent pointer low byte: checksum now wrong
    h.s.receive_frame(h.now, RxMeta::HOST, &f);
    h.none();
    assert_eq!(h.c().get(Mib::TcpInCsumErrors), 1);
    assert_eq!(h.c().get(Mib::TcpInErrs), 1);
    assert_eq!(h.c().drops(DropReason::TcpBadChecksum), 1);
}

#[test]
fn b3_checksum_not_ready_is_not_verified() {
    let mut h = H::new();
    let mut f = frame(PEER4.into(), OUR4.into(), &S::new(7000).syn());
    let n = f.len();
    f[n - 1] ^= 0xff;
    let meta = RxMeta {
        l4_csum: RxChecksum::NotReady,
        ..RxMeta::HOST
    };
    h.s.receive_frame(h.now, meta, &f);
    assert_eq!(h.one().flags(), "RA");
    assert_eq!(h.c().get(Mib::TcpInCsumErrors), 0);
}

#[test]
fn b3_v6_rst_for_syn_to_closed_port() {
    let mut h = H::new();
    let f = frame(PEER6.into(), OUR6.into(), &S::new(9).syn());
    h.s.receive_frame(h.now, RxMeta::HOST, &f);
    let r = h.one();
    assert_eq!((r.flags(), r.seq, r.ack), ("RA", 0, Some(10)));
}

#[test]
fn b3_short_header_and_bad_offset_are_in_errs() {
    let mut h = H::new();
    let mut f = frame(PEER4.into(), OUR4.into(), &S::new(1).syn());
    // data offset 15 words = 60 bytes > segment
    f[14 + 20 + 12] = 0xf0;
    h.s.receive_frame(h.now, RxMeta::HOST, &f);
    h.none();
    assert_eq!(h.c().drops(DropReason::TcpBadOffset), 1);
    assert_eq!(h.c().get(Mib::TcpInErrs), 1);
}

#[test]
fn b3_segment_to_broadcast_is_dropped() {
    let mut h = H::new();
    let f = frame(
        PEER4.into(),
        std::net::Ipv4Addr::new(198, 18, 0, 255).into(),
        &S::new(1).syn(),
    );
    h.s.receive_frame(h.now, RxMeta::HOST, &f);
    h.none();
    assert_eq!(h.c().drops(DropReason::TcpNotForUs), 1);
}

// ----- SPEC B.4: LISTEN -----

#[test]
fn b4_listen_rst_is_ignored() {
    let mut h = H::new();
    let l = h.listen();
    h.rx(S::new(1).rst());
    h.none();
    assert_eq!(h.state(l), TcpState::Listen);
    assert_eq!(h.c().drops(DropReason::TcpListenRst), 1);
}

#[test]
fn b4_listen_ack_is_answered_with_rst() {
    let mut h = H::new();
    h.listen();
    h.rx(S::new(1).ack(777));
    let r = h.one();
    assert_eq!((r.flags(), r.seq), ("R", 777));
}

#[test]
fn b4_listen_syn_gets_synack_with_options_mss_clamped_to_route() {
    let mut h = H::with_limits(|_| {});
    h.s.cfg.mtu = 1400;
    h.listen();
    let mut syn = S::new(1000).syn().ts(500, 0);
    syn.mss = Some(1460);
    syn.ws = Some(7);
    syn.sack_perm = true;
    h.rx(syn);
    let sa = h.one();
    assert_eq!(sa.flags(), "SA");
    assert_eq!(sa.ack, Some(1001));
    assert_eq!(sa.mss, Some(1360), "MSS = route MTU − 40");
    assert_eq!(sa.ws, Some(3), "256 KiB receive buffer → shift 3");
    assert!(sa.sack_perm);
    assert_eq!(sa.ts.map(|t| t.1), Some(500), "TSecr echoes TSval");
    assert_eq!(sa.wnd, 65535, "SYN windows are never scaled");
}

#[test]
fn b4_synack_omits_options_the_peer_did_not_offer() {
    let mut h = H::new();
    h.listen();
    h.rx(S::new(1000).syn());
    let sa = h.one();
    assert_eq!((sa.ws, sa.sack_perm, sa.ts), (None, false, None));
    assert_eq!(sa.mss, Some(1460));
}

#[test]
fn b4_syn_data_is_not_delivered_before_the_handshake() {
    let mut h = H::new();
    let l = h.listen();
    h.rx(S::new(1000).syn().data(b"early"));
    let sa = h.one();
    assert_eq!(sa.ack, Some(1001), "the data is not acknowledged");
    h.rx(S::new(1001).ack(sa.seq.wrapping_add(1)));
    let (c, _) = h.s.tcp(l).and_then(|mut x| x.accept()).expect("accept");
    assert_eq!(h.s.tcp(c).expect("c").recv_queue(), 0);
    // the peer sends it again after the handshake: now it is delivered
    h.rx(S::new(1001).ack(sa.seq.wrapping_add(1)).data(b"early"));
    let mut b = [0u8; 16];
    assert_eq!(h.s.tcp(c).expect("c").recv(&mut b), Ok(5));
}

#[test]
fn b4_accept_queue_full_drops_syn_listen_overflows() {
    let mut h = H::new();
    let l = h.s.tcp_listen(ours(LP), 1).expect("listen");
    h.rx(S::new(1000).syn());
    let sa = h.one();
    h.rx(S::new(1001).ack(sa.seq.wrapping_add(1)));
    // one connection waits in the accept queue; the next SYN is dropped
    h.rx(S::new(5000).syn().ports(PP + 1, LP));
    h.none();
    assert_eq!(h.c().get(Mib::TcpExtListenOverflows), 1);
    assert_eq!(h.c().get(Mib::TcpExtListenDrops), 1);
    assert!(h.s.tcp(l).and_then(|mut x| x.accept()).is_some());
}

#[test]
fn rfc4987_full_syn_queue_answers_with_a_cookie_and_the_ack_completes() {
    let mut h = H::with_limits(|l| l.tcp_syn_backlog_max = 1);
    let l = h.listen();
    h.rx(S::new(1000).syn()); // fills the SYN queue (not completed)
    assert_eq!(h.one().flags(), "SA");
    let mut syn = S::new(3000).syn().ports(PP + 1, LP).ts(77, 0);
    syn.mss = Some(1460);
    syn.ws = Some(6);
    syn.sack_perm = true;
    h.rx(syn);
    let sa = h.one();
    assert_eq!(sa.flags(), "SA");
    assert_eq!(h.c().get(Mib::TcpExtSyncookiesSent), 1);
    assert_eq!(h.s.tcp_table().len(), 2, "no state for the cookie");
    let tsecr = sa.ts.expect("ts").0;
    h.rx(S::new(3001)
        .ack(sa.seq.wrapping_add(1))
        .ports(PP + 1, LP)
        .ts(78, tsecr)
        .data(b"INVITE"));
    assert_eq!(h.c().get(Mib::TcpExtSyncookiesRecv), 1);
    let (c, from) = h.s.tcp(l).and_then(|mut x| x.accept()).expect("accept");
    assert_eq!(from, peer(PP + 1));
    let mut b = [0u8; 16];
    assert_eq!(h.s.tcp(c).expect("c").recv(&mut b), Ok(6));
    // window scale and SACK came back from the timestamp
    let t = h.s.tcp.get(c.slot).expect("tcb");
    assert!(t.ws_ok && t.sack_ok && t.ts_ok);
    assert_eq!(t.snd_wscale, 6);
}

#[test]
fn rfc4987_forged_cookie_ack_is_reset() {
    let mut h = H::with_limits(|l| l.tcp_syn_backlog_max = 1);
    h.listen();
    h.rx(S::new(1000).syn());
    h.out();
    h.rx(S::new(3000).syn().ports(PP + 1, LP));
    let sa = h.one();
    h.rx(S::new(3001).ack(sa.seq.wrapping_add(99)).ports(PP + 1, LP));
    let r = h.one();
    assert_eq!(r.flags(), "R");
    assert_eq!(h.c().get(Mib::TcpExtSyncookiesFailed), 1);
}

#[test]
fn b4_closing_a_listener_resets_connections_never_accepted() {
    let mut h = H::new();
    let l = h.listen();
    h.rx(S::new(1000).syn());
    let sa = h.one();
    h.rx(S::new(1001).ack(sa.seq.wrapping_add(1)));
    h.rx(S::new(5000).syn().ports(PP + 1, LP)); // half-open: dropped silently
    h.out();
    h.s.tcp(l).expect("l").close();
    let r = h.one();
    assert_eq!(
        (r.flags(), r.seq, r.ack),
        ("RA", sa.seq.wrapping_add(1), Some(1001))
    );
    assert!(h.s.tcp(l).is_none());
    assert!(h.s.tcp_table().is_empty());
    assert_eq!(h.c().get(Mib::TcpCurrEstab), 0);
}

#[test]
fn b4_third_ack_with_wrong_ack_gets_rst() {
    let mut h = H::new();
    h.listen();
    h.rx(S::new(1000).syn());
    let sa = h.one();
    h.rx(S::new(1001).ack(sa.seq.wrapping_add(5)));
    let r = h.one();
    assert_eq!((r.flags(), r.seq), ("R", sa.seq.wrapping_add(5)));
}

// ----- RFC 5961 and reset effects -----

#[test]
fn rfc5961_rst_with_exact_seq_resets() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).rst());
    h.none();
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c.h, Some(TcpError::ConnectionReset))]
    );
    let mut s = h.s.tcp(c.h).expect("held until close");
    assert_eq!(s.state(), TcpState::Closed);
    let mut b = [0u8; 4];
    assert_eq!(s.recv(&mut b), Err(TcpError::ConnectionReset));
    assert_eq!(s.send(b"x"), Err(TcpError::BrokenPipe));
    assert_eq!(h.c().get(Mib::TcpEstabResets), 1);
    assert_eq!(h.c().get(Mib::TcpCurrEstab), 0);
}

#[test]
fn rfc5961_rst_in_window_gets_challenge_ack() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p + 100).rst());
    let a = h.one();
    assert_eq!((a.flags(), a.seq, a.ack), ("A", c.o, Some(c.p)));
    assert_eq!(h.state(c.h), TcpState::Established);
    assert_eq!(h.c().get(Mib::TcpExtTCPChallengeACK), 1);
}

#[test]
fn rfc5961_rst_outside_window_is_ignored() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p.wrapping_add(10_000_000)).rst());
    h.rx(S::new(c.p.wrapping_sub(10)).rst());
    h.none();
    assert_eq!(h.state(c.h), TcpState::Established);
}

#[test]
fn rfc5961_syn_on_established_gets_challenge_ack() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p + 5).syn());
    let a = h.one();
    assert_eq!((a.flags(), a.ack), ("A", Some(c.p)));
    assert_eq!(h.state(c.h), TcpState::Established);
    assert_eq!(h.c().get(Mib::TcpExtTCPSYNChallenge), 1);
}

#[test]
fn rfc5961_ack_of_unsent_data_is_dropped_with_an_ack() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o + 1000).data(b"x"));
    let a = h.one();
    assert_eq!(a.ack, Some(c.p), "the data was not taken");
    assert_eq!(h.c().drops(DropReason::TcpAckUnsentData), 1);
}

#[test]
fn rfc5961_challenge_acks_are_rate_limited() {
    let mut h = H::with_limits(|l| l.tcp_challenge_ack_limit = 3);
    let c = h.establish();
    for i in 0..10 {
        h.rx(S::new(c.p + 10 + i).rst());
    }
    assert_eq!(h.out().len(), 3);
    h.after(Duration::from_secs(1));
    h.rx(S::new(c.p + 50).rst());
    assert_eq!(h.out().len(), 1);
    assert_eq!(h.c().get(Mib::TcpExtTCPChallengeACK), 4);
}

#[test]
fn b4_rst_in_close_wait_is_broken_pipe() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).fin());
    assert_eq!(h.one().ack, Some(c.p + 1));
    assert_eq!(h.state(c.h), TcpState::CloseWait);
    h.events();
    h.rx(S::new(c.p + 1).rst());
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c.h, Some(TcpError::BrokenPipe))]
    );
}

#[test]
fn b4_rst_in_syn_sent_is_refused_and_bad_ack_gets_rst() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    let syn = h.one();
    assert_eq!(syn.flags(), "S");
    assert_eq!(syn.mss, Some(1460));
    assert!(syn.ws.is_some() && syn.sack_perm && syn.ts.is_some());
    let me = syn.sport;
    // an ACK that does not cover our SYN: RST, stays in SYN_SENT
    h.rx(S::new(1).ack(syn.seq.wrapping_add(9)).syn().ports(5070, me));
    assert_eq!(h.one().flags(), "R");
    assert_eq!(h.state(c), TcpState::SynSent);
    // RST without ACK: ignored
    h.rx(S::new(1).rst().ports(5070, me));
    h.none();
    h.rx(S::new(0).rst().ack(syn.seq.wrapping_add(1)).ports(5070, me));
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c, Some(TcpError::ConnectionRefused))]
    );
    assert_eq!(h.c().get(Mib::TcpAttemptFails), 1);
}

#[test]
fn b4_connect_handshake_and_window_scaling() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    let syn = h.one();
    let me = syn.sport;
    assert!((32768..=60999).contains(&me), "ephemeral port {me}");
    let mut sa = S::new(9000)
        .syn()
        .ack(syn.seq.wrapping_add(1))
        .ports(5070, me)
        .wnd(1000);
    sa.ws = Some(2);
    sa.mss = Some(1000);
    h.rx(sa);
    let a = h.one();
    assert_eq!(
        (a.flags(), a.seq, a.ack),
        ("A", syn.seq.wrapping_add(1), Some(9001))
    );
    assert_eq!(h.events(), vec![SocketEvent::TcpConnected(c)]);
    assert_eq!(h.c().get(Mib::TcpCurrEstab), 1);
    // window of the SYN-ACK is unscaled (1000), later ones scaled by 4
    h.rx(S::new(9001)
        .ack(syn.seq.wrapping_add(1))
        .ports(5070, me)
        .wnd(2000));
    let mut s = h.s.tcp(c).expect("c");
    let data = vec![7u8; 10_000];
    assert_eq!(s.send(&data), Ok(10_000));
    let segs = h.out();
    let total: usize = segs.iter().map(|s| s.data.len()).sum();
    assert_eq!(total, 8000, "peer window 2000 << 2");
    assert!(segs.iter().all(|s| s.data.len() <= 1000), "peer MSS");
}

// ----- close (seed 004 tcp_close) -----

#[test]
fn b4_close_with_unread_data_sends_rst() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).data(b"unread"));
    h.out();
    h.s.tcp(c.h).expect("c").close();
    let r = h.one();
    assert_eq!((r.flags(), r.seq, r.ack), ("RA", c.o, Some(c.p + 6)));
    assert_eq!(h.c().get(Mib::TcpExtTCPAbortOnClose), 1);
    assert!(h.s.tcp(c.h).is_none());
    assert_eq!(h.s.tcp_table().len(), 1, "only the listener");
}

#[test]
fn b4_linger_zero_close_sends_rst() {
    let mut h = H::new();
    let c = h.establish();
    let mut s = h.s.tcp(c.h).expect("c");
    s.set_linger_zero(true);
    s.close();
    assert_eq!(h.one().flags(), "RA");
    assert_eq!(h.c().get(Mib::TcpExtTCPAbortOnData), 1);
    assert_eq!(h.c().get(Mib::TcpEstabResets), 1);
}

#[test]
fn b4_abort_sends_rst_and_invalidates_the_handle() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h).expect("c").abort();
    assert_eq!(h.one().flags(), "RA");
    assert!(h.s.tcp(c.h).is_none());
}

#[test]
fn b4_close_sends_fin_after_queued_data_fin_wait_states_and_time_wait() {
    let mut h = H::new();
    let c = h.establish();
    let mut s = h.s.tcp(c.h).expect("c");
    assert_eq!(s.send(b"BYE"), Ok(3));
    s.close();
    let o = h.out();
    // data first, the FIN with or after it
    let data: Vec<u8> = o.iter().flat_map(|s| s.data.clone()).collect();
    assert_eq!(data, b"BYE");
    let fin = o.iter().find(|s| s.fin).expect("FIN");
    assert_eq!(fin.seq + fin.data.len() as u32, c.o + 3);
    assert!(h.s.tcp(c.h).is_none(), "handle invalid after close");
    let slot = c.h.slot;
    assert_eq!(h.s.tcp.get(slot).map(|t| t.state), Some(TcpState::FinWait1));
    h.rx(S::new(c.p).ack(c.o + 4));
    assert_eq!(h.s.tcp.get(slot).map(|t| t.state), Some(TcpState::FinWait2));
    h.rx(S::new(c.p).ack(c.o + 4).fin());
    let a = h.one();
    assert_eq!(a.ack, Some(c.p + 1));
    assert!(h.s.tcp.get(slot).is_none(), "TCB freed");
    assert_eq!(h.s.tcp_table().time_wait_len(), 1);
    // a retransmitted FIN is ACKed again from the bucket
    h.after(Duration::from_secs(30));
    h.rx(S::new(c.p).ack(c.o + 4).fin());
    assert_eq!(h.one().ack, Some(c.p + 1));
    // 2·MSL = 60 s after that
    h.after(Duration::from_secs(59));
    assert_eq!(h.s.tcp_table().time_wait_len(), 1);
    h.after(Duration::from_secs(2));
    assert_eq!(h.s.tcp_table().time_wait_len(), 0);
    assert_eq!(h.c().get(Mib::TcpExtTW), 1);
    // now the 4-tuple is unknown: RST
    h.rx(S::new(c.p + 1).ack(c.o + 4));
    assert_eq!(h.one().flags(), "R");
}

#[test]
fn b4_close_in_close_wait_goes_to_last_ack() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).fin());
    h.out();
    let ev = h.events();
    assert!(ev.contains(&SocketEvent::TcpReadable(c.h)));
    let mut s = h.s.tcp(c.h).expect("c");
    let mut b = [0u8; 4];
    assert_eq!(s.recv(&mut b), Ok(0), "EOF");
    s.close();
    let f = h.one();
    assert_eq!((f.flags(), f.seq), ("FA", c.o));
    assert_eq!(
        h.s.tcp.get(c.h.slot).map(|t| t.state),
        Some(TcpState::LastAck)
    );
    h.rx(S::new(c.p + 1).ack(c.o + 1));
    assert!(h.s.tcp.get(c.h.slot).is_none());
    assert_eq!(h.s.tcp_table().time_wait_len(), 0);
}

#[test]
fn b4_close_in_syn_sent_goes_closed_silently() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    h.out();
    h.s.tcp(c).expect("c").close();
    h.none();
    assert!(h.s.tcp_table().is_empty());
}

#[test]
fn b4_orphan_fin_wait2_times_out() {
    let mut h = H::with_limits(|l| l.tcp_fin_timeout = Duration::from_secs(30));
    let c = h.establish();
    h.s.tcp(c.h).expect("c").close();
    h.out();
    h.rx(S::new(c.p).ack(c.o + 1));
    assert_eq!(
        h.s.tcp.get(c.h.slot).map(|t| t.state),
        Some(TcpState::FinWait2)
    );
    h.after(Duration::from_secs(29));
    assert!(h.s.tcp.get(c.h.slot).is_some());
    h.after(Duration::from_secs(2));
    assert!(
        h.s.tcp.get(c.h.slot).is_none(),
        "dropped after tcp_fin_timeout"
    );
    h.none();
}

#[test]
fn b4_data_after_close_gets_rst_abort_on_data() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h).expect("c").close();
    h.out();
    h.rx(S::new(c.p).ack(c.o + 1).data(b"late"));
    let r = h.one();
    assert_eq!((r.flags(), r.seq), ("R", c.o + 1));
    assert_eq!(h.c().get(Mib::TcpExtTCPAbortOnData), 1);
    assert!(h.s.tcp.get(c.h.slot).is_none());
}

#[test]
fn b4_shutdown_read_only_stops_reads() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h).expect("c").shutdown(Shutdown::Read);
    h.rx(S::new(c.p).ack(c.o).data(b"more"));
    assert_eq!(h.one().ack, Some(c.p + 4), "still ACKed");
    let mut s = h.s.tcp(c.h).expect("c");
    let mut b = [0u8; 8];
    assert_eq!(s.recv(&mut b), Ok(0));
    assert_eq!(s.state(), TcpState::Established);
    assert_eq!(s.send(b"ok"), Ok(2));
}

#[test]
fn b4_time_wait_buckets_are_bounded() {
    let mut h = H::with_limits(|l| l.tcp_max_tw_buckets = 1);
    h.listen();
    for i in 0..2u16 {
        let port = PP + i;
        h.rx(S::new(1000).syn().ports(port, LP));
        let sa = h.one();
        let o = sa.seq.wrapping_add(1);
        h.rx(S::new(1001).ack(o).ports(port, LP));
        let l = h.s.tcp_listen(ours(LP), 1).err();
        assert_eq!(l, Some(TcpError::AddrInUse));
        let lh =
            h.s.tcp_table()
                .listeners
                .values()
                .next()
                .copied()
                .expect("l");
        let lh = h.s.tcp.handle(lh);
        let (ch, _) = h.s.tcp(lh).and_then(|mut x| x.accept()).expect("accept");
        h.s.tcp(ch).expect("c").close();
        h.out();
        h.rx(S::new(1001).ack(o + 1).fin().ports(port, LP));
        h.out();
    }
    assert_eq!(h.s.tcp_table().time_wait_len(), 1);
    assert_eq!(h.c().get(Mib::TcpExtTCPTimeWaitOverflow), 1);
}

#[test]
fn b4_time_wait_reuse_for_a_syn_with_a_higher_sequence() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h).expect("c").close();
    h.out();
    h.rx(S::new(c.p).ack(c.o + 1).fin());
    h.out();
    assert_eq!(h.s.tcp_table().time_wait_len(), 1);
    // an old SYN (sequence below RCV.NXT): answered with an ACK
    h.rx(S::new(c.p - 100).syn());
    let a = h.one();
    assert_eq!((a.flags(), a.ack), ("A", Some(c.p + 1)));
    // a new SYN above RCV.NXT takes over the 4-tuple
    h.rx(S::new(c.p + 100_000).syn());
    let sa = h.one();
    assert_eq!(sa.flags(), "SA");
    assert_eq!(sa.seq, c.o + 1 + 65535 + 2, "ISN = TW SND.NXT + 65537");
    assert_eq!(h.s.tcp_table().time_wait_len(), 0);
}

#[test]
fn b4_time_wait_reuse_for_a_syn_with_a_newer_timestamp() {
    let mut h = H::new();
    let c = h.establish_opts(true);
    h.s.tcp(c.h).expect("c").close();
    let fin = h.one();
    h.rx(S::new(c.p)
        .ack(c.o + 1)
        .fin()
        .ts(600, fin.ts.expect("ts").0));
    h.out();
    // same sequence as before, but a newer clock
    h.rx(S::new(c.p - 5).syn().ts(700, 0));
    assert_eq!(h.one().flags(), "SA");
}

#[test]
fn b4_time_wait_rst_kills_the_bucket() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h).expect("c").close();
    h.out();
    h.rx(S::new(c.p).ack(c.o + 1).fin());
    h.out();
    h.rx(S::new(c.p + 1).rst());
    h.none();
    assert_eq!(h.s.tcp_table().time_wait_len(), 0);
}

// ----- timestamps, PAWS -----

#[test]
fn rfc7323_paws_drops_a_segment_with_an_old_timestamp() {
    let mut h = H::new();
    let c = h.establish_opts(true);
    h.rx(S::new(c.p).ack(c.o).data(b"new").ts(1000, 0));
    assert_eq!(h.one().ack, Some(c.p + 3));
    // an old duplicate carrying data at the right sequence
    h.rx(S::new(c.p + 3).ack(c.o).data(b"old").ts(900, 0));
    let a = h.one();
    assert_eq!(a.ack, Some(c.p + 3), "not accepted");
    assert_eq!(h.c().get(Mib::TcpExtPAWSEstabRejected), 1);
    assert_eq!(h.s.tcp(c.h).expect("c").recv_queue(), 3);
    assert_eq!(a.ts.map(|t| t.1), Some(1000), "TS.Recent unchanged");
}

// ----- timers -----

#[test]
fn rfc6298_rto_backs_off_and_gives_up_with_etimedout() {
    let mut h = H::with_limits(|l| l.tcp_retries2 = 3);
    let c = h.establish();
    h.s.tcp(c.h).expect("c").send(b"ping").expect("send");
    assert_eq!(h.one().data, b"ping");
    // The handshake measured an RTT of ~0: RTO = the 200 ms floor (Linux
    // TCP_RTO_MIN), doubled by each expiry (RFC 6298 §5.5).
    for wait in [200, 400, 800] {
        h.after(Duration::from_millis(wait - 1));
        h.none();
        h.after(Duration::from_millis(1));
        let r = h.one();
        assert_eq!((r.seq, r.data.as_slice()), (c.o, &b"ping"[..]));
    }
    assert_eq!(h.c().get(Mib::TcpRetransSegs), 3);
    assert_eq!(h.c().get(Mib::TcpExtTCPTimeouts), 3);
    h.after(Duration::from_millis(1600));
    h.none();
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c.h, Some(TcpError::TimedOut))]
    );
    assert_eq!(h.c().get(Mib::TcpExtTCPAbortOnTimeout), 1);
}

#[test]
fn rfc6298_initial_rto_is_one_second_without_a_sample() {
    let mut h = H::new();
    h.listen();
    h.rx(S::new(1000).syn());
    let sa = h.one();
    h.after(Duration::from_millis(999));
    h.none();
    h.after(Duration::from_millis(1));
    assert_eq!(h.one().seq, sa.seq, "SYN-ACK again after 1 s");
}

#[test]
fn syn_retries_then_etimedout() {
    let mut h = H::with_limits(|l| l.tcp_syn_retries = 2);
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    h.out();
    h.after(Duration::from_secs(1));
    assert_eq!(h.one().flags(), "S");
    h.after(Duration::from_secs(2));
    assert_eq!(h.one().flags(), "S");
    h.after(Duration::from_secs(4));
    h.none();
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c, Some(TcpError::TimedOut))]
    );
}

#[test]
fn synack_retransmitted_then_half_open_dropped() {
    let mut h = H::new();
    h.listen();
    h.rx(S::new(1000).syn());
    let sa = h.one();
    h.after(Duration::from_secs(1));
    let r = h.one();
    assert_eq!((r.flags(), r.seq), ("SA", sa.seq));
    // a retransmitted SYN gets the SYN-ACK again
    h.rx(S::new(1000).syn());
    assert_eq!(h.one().flags(), "SA");
    h.after(Duration::from_secs(200));
    assert_eq!(h.s.tcp_table().len(), 1, "only the listener");
}

#[test]
fn delayed_ack_after_quickack_mode() {
    let mut h = H::new();
    let c = h.establish();
    let mut p = c.p;
    // quick-ACK mode at the start: every segment ACKed at once
    for _ in 0..super::QUICKACKS {
        h.rx(S::new(p).ack(c.o).data(&[1u8; 100]));
        p += 100;
        assert_eq!(h.one().ack, Some(p));
    }
    // then one segment waits for the 40 ms timer...
    h.rx(S::new(p).ack(c.o).data(&[1u8; 100]));
    p += 100;
    h.none();
    h.after(Duration::from_millis(39));
    h.none();
    h.after(Duration::from_millis(1));
    assert_eq!(h.one().ack, Some(p));
    assert_eq!(h.c().get(Mib::TcpExtDelayedACKs), 1);
    // ...and the second one forces the ACK
    h.rx(S::new(p).ack(c.o).data(&[1u8; 100]));
    h.none();
    h.rx(S::new(p + 100).ack(c.o).data(&[1u8; 100]));
    assert_eq!(h.one().ack, Some(p + 200));
}

#[test]
fn out_of_order_data_is_acked_at_once_with_sack() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p + 100).ack(c.o).data(&[2u8; 50]));
    let a = h.one();
    assert_eq!(a.ack, Some(c.p));
    assert_eq!(a.sacks, vec![(c.p + 100, c.p + 150)]);
    h.rx(S::new(c.p).ack(c.o).data(&[1u8; 100]));
    let a = h.one();
    assert_eq!(a.ack, Some(c.p + 150), "the hole filled");
    assert!(a.sacks.is_empty());
    assert_eq!(h.s.tcp(c.h).expect("c").recv_queue(), 150);
}

#[test]
fn zero_window_probe_with_backoff() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).wnd(0));
    h.s.tcp(c.h).expect("c").send(b"blocked").expect("send");
    h.none();
    // first probe after one RTO (200 ms here), then backed off
    h.after(Duration::from_millis(200));
    let p = h.one();
    assert_eq!((p.seq, p.data.len()), (c.o - 1, 0), "probe: SND.UNA − 1");
    h.after(Duration::from_millis(399));
    h.none();
    h.after(Duration::from_millis(1));
    assert_eq!(h.one().seq, c.o - 1, "backed off to 400 ms");
    // the window opens: the data goes
    h.rx(S::new(c.p).ack(c.o).wnd(100));
    assert_eq!(h.one().data, b"blocked");
}

#[test]
fn keepalive_probes_then_reset_and_etimedout() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp(c.h)
        .expect("c")
        .set_keepalive(Some(Duration::from_secs(100)));
    h.after(Duration::from_secs(99));
    h.none();
    h.after(Duration::from_secs(1));
    assert_eq!(h.one().seq, c.o - 1, "keep-alive probe");
    // an answer resets the count
    h.rx(S::new(c.p).ack(c.o));
    h.after(Duration::from_secs(100));
    assert_eq!(h.out().len(), 1);
    for _ in 0..8 {
        h.after(Duration::from_secs(75));
        assert_eq!(h.out().len(), 1);
    }
    h.after(Duration::from_secs(75));
    assert_eq!(h.one().flags(), "RA");
    assert!(
        h.events()
            .contains(&SocketEvent::TcpClosed(c.h, Some(TcpError::TimedOut)))
    );
}

#[test]
fn rfc5681_fast_retransmit_on_three_duplicate_acks() {
    let mut h = H::new();
    let c = h.establish();
    let data = vec![9u8; 4 * 1460];
    h.s.tcp(c.h).expect("c").send(&data).expect("send");
    assert_eq!(h.out().len(), 4);
    // one new ACK, then three duplicates
    for _ in 0..4 {
        h.rx(S::new(c.p).ack(c.o + 1460).wnd(512));
    }
    let o = h.out();
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].seq, c.o + 1460);
    assert_eq!(h.c().get(Mib::TcpExtTCPFastRetrans), 1);
}

#[test]
fn send_buffer_full_is_would_block_then_writable() {
    let mut h = H::with_limits(|l| l.tcp_wmem = 4000);
    let c = h.establish();
    let mut s = h.s.tcp(c.h).expect("c");
    assert_eq!(s.send(&[1u8; 5000]), Ok(4000));
    assert_eq!(s.send(b"x"), Err(TcpError::WouldBlock));
    h.out();
    h.events();
    h.rx(S::new(c.p).ack(c.o + 1460).wnd(512));
    assert_eq!(h.events(), vec![SocketEvent::TcpWritable(c.h)]);
    assert_eq!(h.s.tcp(c.h).expect("c").send_capacity(), 1460);
}

#[test]
fn icmp_unreachable_aborts_syn_sent() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    let f = drain(&mut h.s).pop().expect("syn");
    let ip = &f[14..];
    let mut icmp = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&ip[..28]);
    smoltcp::wire::Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    let repr = Ipv4Repr {
        src_addr: PEER4,
        dst_addr: OUR4,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.len(),
        hop_limit: 64,
    };
    let mut v = vec![0u8; 20 + icmp.len()];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut v[..]),
        &ChecksumCapabilities::default(),
    );
    v[20..].copy_from_slice(&icmp);
    h.s.receive_frame(h.now, RxMeta::HOST, &eth(&v));
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c, Some(TcpError::HostUnreachable))]
    );
}

// ----- memory -----

#[test]
fn idle_established_connection_costs_under_1_kib() {
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).data(b"x"));
    let mut b = [0u8; 4];
    h.s.tcp(c.h).expect("c").recv(&mut b).expect("recv");
    h.s.tcp(c.h).expect("c").send(b"y").expect("send");
    h.rx(S::new(c.p + 1).ack(c.o + 1));
    assert_eq!(h.s.usage().tcp_buffer_bytes, 0, "buffers released");
    let tcb = std::mem::size_of::<Option<super::Tcb>>();
    // slab slot + generation + hash entry (4-tuple + slot + control byte)
    let entry = std::mem::size_of::<(super::ConnKey, u32)>() + 1;
    eprintln!("idle connection: TCB slot {tcb} B + generation 4 B + hash entry {entry} B");
    assert!(tcb + 4 + entry < 1024, "TCB {tcb} + entry {entry}");
}

#[test]
fn connection_cap_is_too_many_connections() {
    let mut h = H::with_limits(|l| l.tcp_max_conns = 2);
    h.s.tcp_connect(h.now, None, peer(1)).expect("1");
    h.s.tcp_connect(h.now, None, peer(2)).expect("2");
    assert_eq!(
        h.s.tcp_connect(h.now, None, peer(3)).err(),
        Some(TcpError::TooManyConnections)
    );
}

#[test]
fn ephemeral_ports_avoid_ports_in_use() {
    let mut h = H::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..50 {
        let c = h.s.tcp_connect(h.now, None, peer(1000 + i)).expect("c");
        let p = h.s.tcp(c).expect("c").local_addr().port();
        assert!(seen.insert(p), "port {p} reused");
    }
}

#[test]
fn stale_handles_are_rejected() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(1)).expect("c");
    h.s.tcp(c).expect("c").abort();
    let d = h.s.tcp_connect(h.now, None, peer(2)).expect("d");
    assert_eq!(c.slot, d.slot, "slot reused");
    assert!(h.s.tcp(c).is_none());
    assert!(h.s.tcp(d).is_some());
}

#[test]
fn a_view_used_after_close_answers_closed_without_panicking() {
    let mut h = H::new();
    let c = h.establish();
    let mut s = h.s.tcp(c.h).expect("c");
    s.close();
    assert_eq!(s.state(), TcpState::Closed);
    assert_eq!(s.send(b"x"), Err(TcpError::InvalidHandle));
    let mut b = [0u8; 4];
    assert_eq!(s.recv(&mut b), Err(TcpError::InvalidHandle));
    s.close();
    s.abort();
    assert_eq!(s.peer_addr(), peer(PP));
    assert_eq!(h.one().flags(), "FA", "one FIN, nothing else");
}

#[test]
fn rfc5961_s5_too_old_ack_gets_challenge_ack() {
    let mut h = H::new();
    let c = h.establish();
    // SND.UNA − MAX.SND.WND − 1: outside what the peer could have seen
    h.rx(S::new(c.p).ack(c.o.wrapping_sub(65536 + 10)).data(b"x"));
    let a = h.one();
    assert_eq!((a.flags(), a.ack), ("A", Some(c.p)), "data not taken");
    assert_eq!(h.c().drops(DropReason::TcpTooOldAck), 1);
    assert_eq!(h.c().get(Mib::TcpExtTCPChallengeACK), 1);
}

#[test]
fn rst_at_rcv_nxt_minus_one_after_the_peers_fin_resets() {
    // Linux tcp_reset_check: the peer's RST may carry the sequence of its
    // FIN (RCV.NXT − 1) in CLOSE_WAIT / LAST_ACK / CLOSING.
    let mut h = H::new();
    let c = h.establish();
    h.rx(S::new(c.p).ack(c.o).fin());
    h.out();
    h.events();
    h.rx(S::new(c.p).rst());
    assert_eq!(
        h.events(),
        vec![SocketEvent::TcpClosed(c.h, Some(TcpError::BrokenPipe))]
    );
}

#[test]
fn reading_reopens_a_closed_window_with_an_update() {
    let mut h = H::with_limits(|l| l.tcp_rmem = 8192);
    let c = h.establish();
    let mut p = c.p;
    for _ in 0..8 {
        h.rx(S::new(p).ack(c.o).data(&[3u8; 1024]));
        p += 1024;
    }
    let last = h.out().pop().expect("acks");
    assert_eq!((last.ack, last.wnd), (Some(p), 0), "window full");
    // more data is not taken
    h.rx(S::new(p).ack(c.o).data(&[3u8; 100]));
    assert_eq!(h.one().ack, Some(p));
    let mut b = [0u8; 8192];
    assert_eq!(h.s.tcp(c.h).expect("c").recv(&mut b), Ok(8192));
    let upd = h.one();
    assert_eq!(upd.ack, Some(p));
    assert!(upd.wnd > 0, "window update after the read");
}

#[test]
fn v6_handshake_data_and_time_wait() {
    let mut h = H::new();
    let l =
        h.s.tcp_listen(SocketAddr::new(OUR6.into(), LP), 4)
            .expect("listen");
    let rx6 = |h: &mut H, s: S| {
        let f = frame(PEER6.into(), OUR6.into(), &s);
        h.s.receive_frame(h.now, RxMeta::HOST, &f);
    };
    let mut syn = S::new(50).syn();
    syn.mss = Some(1440);
    rx6(&mut h, syn);
    let sa = h.one();
    assert_eq!((sa.flags(), sa.mss), ("SA", Some(1440)));
    let o = sa.seq.wrapping_add(1);
    rx6(&mut h, S::new(51).ack(o).data(b"hi"));
    let (c, from) = h.s.tcp(l).and_then(|mut x| x.accept()).expect("accept");
    assert_eq!(from, SocketAddr::new(PEER6.into(), PP));
    let mut b = [0u8; 4];
    assert_eq!(h.s.tcp(c).expect("c").recv(&mut b), Ok(2));
    h.s.tcp(c).expect("c").close();
    let fin = h.out().into_iter().find(|s| s.fin).expect("FIN");
    rx6(&mut h, S::new(53).ack(fin.seq + 1).fin());
    assert_eq!(h.one().ack, Some(54));
    assert_eq!(h.s.tcp_table().time_wait_len(), 1);
}

#[test]
fn rfc6928_one_segment_initial_window_after_a_lost_syn() {
    let mut h = H::new();
    let c = h.s.tcp_connect(h.now, None, peer(5070)).expect("connect");
    let syn = h.one();
    h.after(Duration::from_secs(1));
    assert_eq!(h.one().flags(), "S", "SYN retransmitted");
    let me = syn.sport;
    h.rx(S::new(9000)
        .syn()
        .ack(syn.seq.wrapping_add(1))
        .ports(5070, me));
    h.out();
    h.s.tcp(c).expect("c").send(&[1u8; 5000]).expect("send");
    let o = h.out();
    assert_eq!(o.len(), 1, "IW = 1 segment after a lost SYN: {o:?}");
}

/// Issue 8 (memory per idle connection ≤ 1 KiB in afpacket mode, TCB and
/// connection map entry included): the parts of an idle established TCB,
/// pinned so that growth is a decision (BENCHMARKS.md "Memory per idle TCP
/// connection" has the measured total).
#[test]
fn issue8_idle_tcb_parts_are_pinned() {
    use std::mem::size_of;
    let sizes = [
        ("Tcb", size_of::<super::Tcb>(), 496),
        (
            "Option<Tcb> (slab slot)",
            size_of::<Option<super::Tcb>>(),
            496,
        ),
        ("At (optional deadline)", size_of::<super::At>(), 8),
        (
            "ConnKey + slot (map entry)",
            size_of::<(super::ConnKey, u32)>(),
            44,
        ),
        ("RttEstimator", size_of::<super::rtt::RttEstimator>(), 32),
        (
            "Congestion",
            size_of::<super::congestion::Congestion>(),
            104,
        ),
        ("Scoreboard", size_of::<super::sack::Scoreboard>(), 16),
        ("SendBuf", size_of::<super::buffer::SendBuf>(), 32),
        ("RecvBuf", size_of::<super::buffer::RecvBuf>(), 48),
    ];
    for (what, size, max) in sizes {
        eprintln!("{what}: {size} B (pinned at most {max} B)");
        assert!(size <= max, "{what}: {size} B > {max} B");
    }
}

#[test]
fn issue8_conn_key_tells_families_addresses_and_ports_apart() {
    use super::ConnKey;
    let a: SocketAddr = "198.18.0.2:5060".parse().expect("a");
    let b: SocketAddr = "198.18.0.1:40000".parse().expect("b");
    let mapped: SocketAddr = "[::ffff:198.18.0.2]:5060".parse().expect("m");
    let mapped_b: SocketAddr = "[::ffff:198.18.0.1]:40000".parse().expect("mb");
    assert_eq!(ConnKey::new(a, b), ConnKey::new(a, b));
    assert_ne!(ConnKey::new(a, b), ConnKey::new(b, a));
    assert_ne!(ConnKey::new(a, b), ConnKey::new(mapped, mapped_b));
    let b2: SocketAddr = "198.18.0.1:40001".parse().expect("b2");
    assert_ne!(ConnKey::new(a, b), ConnKey::new(a, b2));
}

/// Cork (the driver's round): the ACK that in-order data asks for waits,
/// and what the application writes in the round leaves in one segment that
/// carries it.
#[test]
fn corked_round_sends_the_replies_in_one_segment_carrying_the_ack() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp_cork();
    h.rx(S::new(c.p).ack(c.o).data(&[1u8; 100]));
    h.none();
    let mut s = h.s.tcp(c.h).expect("c");
    for m in [&b"one\r\n"[..], b"two\r\n", b"three\r\n"] {
        assert_eq!(s.send(m), Ok(m.len()));
    }
    h.none();
    h.uncork();
    let seg = h.one();
    assert_eq!(seg.data, b"one\r\ntwo\r\nthree\r\n");
    assert_eq!((seg.seq, seg.ack), (c.o, Some(c.p + 100)));
    assert_eq!(h.c().get(Mib::TcpOutSegs), 2, "SYN-ACK and the one segment");
}

/// Corked data that the application does not answer is ACKed at the end
/// of the round, as it would have been at once.
#[test]
fn corked_ack_without_a_reply_leaves_at_uncork() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp_cork();
    h.rx(S::new(c.p).ack(c.o).data(&[1u8; 100]));
    h.rx(S::new(c.p + 100).ack(c.o).data(&[1u8; 100]));
    h.none();
    h.uncork();
    let a = h.one();
    assert_eq!(
        (a.ack, a.data.len()),
        (Some(c.p + 200), 0),
        "one ACK for both"
    );
}

/// Out-of-order data is ACKed (with SACK) at once even while corked: the
/// sender's fast retransmit counts those duplicate ACKs.
#[test]
fn out_of_order_data_is_acked_at_once_even_while_corked() {
    let mut h = H::new();
    let c = h.establish();
    h.s.tcp_cork();
    h.rx(S::new(c.p + 100).ack(c.o).data(&[2u8; 50]));
    let a = h.one();
    assert_eq!(a.ack, Some(c.p));
    assert_eq!(a.sacks, vec![(c.p + 100, c.p + 150)]);
    h.uncork();
    h.none();
}

/// `At::earliest` (what `tcp_arm` puts on the wheel): the least set
/// deadline, NONE only when none is set, at the ends of the range too.
#[test]
fn tcp_arm_earliest_deadline_is_the_least_set_one() {
    use super::At;
    let vals = [i64::MIN + 1, -5, 0, 7, 1_000_000, i64::MAX - 1, i64::MAX];
    let cands: Vec<Option<i64>> = std::iter::once(None)
        .chain(vals.iter().copied().map(Some))
        .collect();
    let at = |x: Option<i64>| At::from(x.map(Instant::from_micros));
    for &a in &cands {
        for &b in &cands {
            for &c in &cands {
                let want = [a, b, c].into_iter().flatten().min();
                assert_eq!(
                    At::earliest([at(a), at(b), at(c)]),
                    at(want),
                    "{a:?} {b:?} {c:?}"
                );
            }
        }
    }
    assert_eq!(At::earliest::<0>([]), At::NONE);
}
