//! Stack-to-stack TCP over the in-memory device pair, in virtual time: when
//! no frame is moving, the clock jumps to the earliest timer of either
//! stack (as quinn-proto's test pair does), so RTOs, delayed ACKs,
//! TIME_WAIT and keep-alive run at their real lengths without sleeping.
//! The A side can go through the fault injector (drop / duplicate /
//! reorder / corrupt).

use std::net::SocketAddr;

use super::super::device::{Device, FaultConfig, FaultInjector, FaultRates, MemoryDevice};
use super::super::testutil::*;
use super::super::{
    Duration, EthernetAddress, Instant, Ipv4Cidr, Ipv6Cidr, Limits, Mib, SocketEvent, Stack, csum,
};
use super::{Shutdown, TcpError, TcpHandle, TcpState};

/// Stack A (our addresses, 198.18.0.2) and stack B (the peer's,
/// 198.18.0.1), linked by a device pair; A's device may inject faults.
pub(crate) struct Pair {
    pub a: Stack,
    pub b: Stack,
    dev_a: FaultInjector<MemoryDevice>,
    dev_b: MemoryDevice,
    pub now: Instant,
    /// Both stacks leave UDP / TCP checksums to the device, and the pair
    /// completes them on the way out, as the kernel does for afpacket
    /// with `PACKET_VNET_HDR` (`csum::complete`).
    offload: bool,
}

impl Pair {
    pub fn new(faults: FaultRates, seed: u64) -> Pair {
        Self::with_limits(faults, seed, Limits::default())
    }

    pub fn with_limits(faults: FaultRates, seed: u64, l: Limits) -> Pair {
        let (da, db) =
            MemoryDevice::pair(EthernetAddress(OUR_MAC), EthernetAddress(PEER_MAC), 1500);
        let mut ca = config();
        ca.limits = l.clone();
        let mut cb = config();
        cb.limits = l;
        cb.mac = EthernetAddress(PEER_MAC);
        cb.ipv4 = Some(Ipv4Cidr::new(PEER4, 24));
        cb.ipv6 = Some(Ipv6Cidr::new(PEER6, 64));
        Pair {
            a: Stack::new(ca, t0()),
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
            now: t0(),
            offload: false,
        }
    }

    /// [`Pair::new`] with transmit checksum offload on both stacks.
    pub fn with_offload(faults: FaultRates, seed: u64) -> Pair {
        let mut p = Self::new(faults, seed);
        let (mut ca, mut cb) = (p.a.config().clone(), p.b.config().clone());
        ca.tx_csum_offload = true;
        cb.tx_csum_offload = true;
        p.a = Stack::new(ca, t0());
        p.b = Stack::new(cb, t0());
        p.offload = true;
        p
    }

    /// What the device does with a frame the stack hands it: complete a
    /// partial checksum when offload is on.
    fn device_out(offload: bool, f: &mut [u8]) {
        if offload && let Some(span) = csum::tx_span(f) {
            csum::complete(f, span);
        }
    }

    pub fn set_faults(&mut self, f: FaultRates) {
        self.dev_a.set_config(f, f);
    }

    /// Move every queued frame once. Returns how many moved.
    fn exchange(&mut self) -> usize {
        let mut n = 0;
        while let Some(mut f) = self.a.pop_tx() {
            Self::device_out(self.offload, &mut f);
            let _ = self.dev_a.send(&f);
            self.a.recycle(f);
            n += 1;
        }
        while let Some(mut f) = self.b.pop_tx() {
            Self::device_out(self.offload, &mut f);
            let _ = self.dev_b.send(&f);
            self.b.recycle(f);
            n += 1;
        }
        let now = self.now;
        let a = &mut self.a;
        n += self
            .dev_a
            .recv_batch(4096, &mut |m, f| a.receive_frame(now, m, f))
            .unwrap_or(0);
        let b = &mut self.b;
        n += self
            .dev_b
            .recv_batch(4096, &mut |m, f| b.receive_frame(now, m, f))
            .unwrap_or(0);
        n
    }

    /// Run until `app` returns true or `limit` of virtual time passed.
    /// `app` runs once per round (drain events, read, write).
    pub fn run(&mut self, limit: Duration, app: &mut dyn FnMut(&mut Pair) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..2_000_000 {
            if app(self) {
                return true;
            }
            let ev_before = self.a.events.len() + self.b.events.len();
            let moved = self.exchange();
            let da = self.a.poll(self.now);
            let db = self.b.poll(self.now);
            // Time stands still while there is something to deliver: frames
            // in flight or socket events the application has not seen yet.
            let idle = moved == 0
                && self.a.events.len() + self.b.events.len() == ev_before
                && self.a.tx_pending() == 0
                && self.b.tx_pending() == 0
                && self.dev_a.get_ref().rx_len() == 0
                && self.dev_b.rx_len() == 0;
            if idle {
                let _ = self.dev_a.flush_held();
                let next = match (da, db) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                let next = next.unwrap_or(end).max(self.now + Duration::from_millis(1));
                if self.now >= end {
                    return app(self);
                }
                self.now = next.min(end);
            }
        }
        false
    }

    /// Run with no application until `limit` passed (timers only).
    pub fn idle(&mut self, limit: Duration) {
        let mut f = |_: &mut Pair| false;
        self.run(limit, &mut f);
    }
}

/// Data byte `i` of a test stream: a pattern with a long period.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A transfer from `a` to `b`'s listener: `len` bytes, then close() on
/// both sides. Returns (received bytes, virtual time it took).
fn transfer(p: &mut Pair, server: SocketAddr, len: usize) -> (Vec<u8>, Duration) {
    let lh = p.b.tcp_listen(server, 16).expect("listen");
    let start = p.now;
    let ch = p.a.tcp_connect(p.now, None, server).expect("connect");
    let mut sent = 0usize;
    let mut got = Vec::new();
    let mut srv: Option<TcpHandle> = None;
    let mut closed_a = false;
    let mut closed_b = false;
    let mut chunk = vec![0u8; 16384];
    let mut buf = vec![0u8; 65536];
    let done = p.run(Duration::from_secs(600), &mut |p| {
        while let Some(ev) = p.b.poll_event() {
            if let SocketEvent::TcpAcceptable(l) = ev {
                assert_eq!(l, lh);
                if let Some((h, _)) = p.b.tcp(lh).and_then(|mut l| l.accept()) {
                    srv = Some(h);
                }
            }
        }
        while p.a.poll_event().is_some() {}
        if !closed_a
            && let Some(mut c) = p.a.tcp(ch)
            && c.state() == TcpState::Established
        {
            while sent < len {
                let n = (len - sent).min(chunk.len());
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(sent + i);
                }
                match c.send(&chunk[..n]) {
                    Ok(k) => sent += k,
                    Err(TcpError::WouldBlock) => break,
                    Err(e) => panic!("send: {e:?}"),
                }
            }
            if sent == len {
                c.close();
                closed_a = true;
            }
        }
        if let Some(h) = srv
            && !closed_b
            && let Some(mut s) = p.b.tcp(h)
        {
            loop {
                match s.recv(&mut buf) {
                    Ok(0) => {
                        s.close();
                        closed_b = true;
                        break;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(TcpError::WouldBlock) => break,
                    Err(e) => panic!("recv: {e:?}"),
                }
            }
        }
        closed_a && closed_b && p.a.tcp_table().is_empty() && p.b.tcp_table().len() == 1
    });
    assert!(
        done,
        "transfer did not finish: {} of {len} bytes",
        got.len()
    );
    let took = p.now - start;
    (got, took)
}

fn check_stream(got: &[u8], len: usize) {
    assert_eq!(got.len(), len, "length");
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, pattern(i), "byte {i}");
    }
}

#[test]
fn pair_handshake_transfer_close_v4() {
    let mut p = Pair::new(FaultRates::NONE, 1);
    let server = SocketAddr::new(PEER4.into(), 5060);
    let (got, _) = transfer(&mut p, server, 300_000);
    check_stream(&got, 300_000);
    let (ca, cb) = (p.a.counters(), p.b.counters());
    assert_eq!(ca.get(Mib::TcpActiveOpens), 1);
    assert_eq!(cb.get(Mib::TcpPassiveOpens), 1);
    assert_eq!(ca.get(Mib::TcpCurrEstab), 0);
    assert_eq!(cb.get(Mib::TcpCurrEstab), 0);
    assert_eq!(ca.get(Mib::TcpOutRsts) + cb.get(Mib::TcpOutRsts), 0);
    assert_eq!(ca.get(Mib::TcpRetransSegs), 0, "{:?}", ca.nonzero());
    // A closed first: its side holds the TIME_WAIT bucket for 60 s.
    assert_eq!(p.a.tcp_table().time_wait_len(), 1);
    assert_eq!(p.b.tcp_table().time_wait_len(), 0);
    p.idle(Duration::from_secs(61));
    assert_eq!(p.a.tcp_table().time_wait_len(), 0);
    assert_eq!(ca.get(Mib::TcpExtTW), 1);
    assert_eq!(p.a.usage().tcp_buffer_bytes, 0);
    assert_eq!(p.b.usage().tcp_buffer_bytes, 0);
}

#[test]
fn pair_handshake_transfer_close_v6() {
    let mut p = Pair::new(FaultRates::NONE, 2);
    let server = SocketAddr::new(PEER6.into(), 5061);
    let (got, _) = transfer(&mut p, server, 100_000);
    check_stream(&got, 100_000);
}

#[test]
fn pair_transfer_through_faults_is_byte_exact() {
    for seed in 1..=4u64 {
        let mut p = Pair::new(FaultRates::NONE, seed);
        // Let ARP resolve cleanly, then turn the faults on.
        p.idle(Duration::from_millis(10));
        p.set_faults(FaultRates {
            drop: 0.05,
            duplicate: 0.03,
            reorder: 0.05,
            corrupt: 0.02,
        });
        let server = SocketAddr::new(PEER4.into(), 5060);
        let (got, _) = transfer(&mut p, server, 200_000);
        check_stream(&got, 200_000);
        let c = p.a.counters();
        assert!(
            c.get(Mib::TcpRetransSegs) > 0,
            "seed {seed}: {:?}",
            c.nonzero()
        );
    }
}

/// Checksum offload end to end: every segment leaves with the
/// pseudo-header sum, the device completes it, the far stack verifies it
/// in software (the memory device says nothing about checksums). Through
/// faults too: a frame corrupted after the device is caught and dropped.
#[test]
fn pair_transfer_with_checksum_offload_is_byte_exact() {
    for (server, len) in [
        (SocketAddr::new(PEER4.into(), 5060), 300_000),
        (SocketAddr::new(PEER6.into(), 5061), 100_000),
    ] {
        let mut p = Pair::with_offload(FaultRates::NONE, 5);
        let (got, _) = transfer(&mut p, server, len);
        check_stream(&got, len);
        let (ca, cb) = (p.a.counters(), p.b.counters());
        assert_eq!(ca.get(Mib::TcpInErrs) + cb.get(Mib::TcpInErrs), 0);
        assert_eq!(ca.get(Mib::TcpRetransSegs), 0, "{:?}", ca.nonzero());
    }
    let mut p = Pair::with_offload(FaultRates::NONE, 6);
    p.idle(Duration::from_millis(10));
    p.set_faults(FaultRates {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        corrupt: 0.05,
    });
    let (got, _) = transfer(&mut p, SocketAddr::new(PEER4.into(), 5060), 200_000);
    check_stream(&got, 200_000);
    let c = p.a.counters().get(Mib::TcpInCsumErrors) + p.b.counters().get(Mib::TcpInCsumErrors);
    assert!(c > 0, "corrupted segments were caught by the checksum");
}

#[test]
fn pair_connect_to_closed_port_is_refused() {
    let mut p = Pair::new(FaultRates::NONE, 3);
    let h =
        p.a.tcp_connect(p.now, None, SocketAddr::new(PEER4.into(), 9))
            .expect("connect");
    let mut ev = None;
    p.run(Duration::from_secs(5), &mut |p| {
        while let Some(e) = p.a.poll_event() {
            if let SocketEvent::TcpClosed(x, err) = e {
                assert_eq!(x, h);
                ev = err;
                return true;
            }
        }
        false
    });
    assert_eq!(ev, Some(TcpError::ConnectionRefused));
    let mut s = p.a.tcp(h).expect("handle valid until close");
    assert_eq!(s.state(), TcpState::Closed);
    // The pending error first (SO_ERROR), then EPIPE.
    assert_eq!(s.send(b"x"), Err(TcpError::ConnectionRefused));
    assert_eq!(s.send(b"x"), Err(TcpError::BrokenPipe));
    s.close();
    assert!(p.a.tcp(h).is_none());
    assert_eq!(p.a.counters().get(Mib::TcpAttemptFails), 1);
    assert_eq!(p.b.counters().get(Mib::TcpOutRsts), 1);
}

#[test]
fn pair_shutdown_write_then_echo_back() {
    let mut p = Pair::new(FaultRates::NONE, 4);
    let server = SocketAddr::new(PEER4.into(), 5062);
    let lh = p.b.tcp_listen(server, 4).expect("listen");
    let ch = p.a.tcp_connect(p.now, None, server).expect("connect");
    let mut srv = None;
    let mut phase = 0;
    let mut echoed = Vec::new();
    let mut buf = [0u8; 4096];
    let ok = p.run(Duration::from_secs(30), &mut |p| {
        while let Some(ev) = p.b.poll_event() {
            if let SocketEvent::TcpAcceptable(_) = ev {
                srv = p.b.tcp(lh).and_then(|mut l| l.accept()).map(|x| x.0);
            }
        }
        while p.a.poll_event().is_some() {}
        if phase == 0
            && p.a
                .tcp(ch)
                .is_some_and(|c| c.state() == TcpState::Established)
        {
            let mut c = p.a.tcp(ch).expect("client");
            c.send(b"REGISTER sip:x SIP/2.0\r\n\r\n").expect("send");
            c.shutdown(Shutdown::Write);
            assert_eq!(c.state(), TcpState::FinWait1);
            phase = 1;
        }
        if let Some(h) = srv
            && let Some(mut s) = p.b.tcp(h)
        {
            let mut req = Vec::new();
            loop {
                match s.recv(&mut buf) {
                    Ok(0) => {
                        // half-closed: still allowed to answer
                        assert_eq!(s.state(), TcpState::CloseWait);
                        s.send(b"SIP/2.0 200 OK\r\n\r\n")
                            .expect("send in CLOSE_WAIT");
                        s.close();
                        srv = None;
                        break;
                    }
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        if phase == 1
            && let Some(mut c) = p.a.tcp(ch)
        {
            loop {
                match c.recv(&mut buf) {
                    Ok(0) => {
                        phase = 2;
                        break;
                    }
                    Ok(n) => echoed.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        phase == 2
    });
    assert!(ok);
    assert_eq!(echoed, b"SIP/2.0 200 OK\r\n\r\n");
    // The client reached TIME_WAIT while still holding its handle: the
    // TCB is CLOSED (TcpClosed without error), the bucket holds the rest.
    p.idle(Duration::from_millis(100));
    let c = p.a.tcp(ch).expect("handle");
    assert_eq!(c.state(), TcpState::Closed);
    assert_eq!(p.a.tcp_table().time_wait_len(), 1);
}

#[test]
fn pair_many_connections_echo_o1_demux() {
    let mut p = Pair::new(FaultRates::NONE, 5);
    let server = SocketAddr::new(PEER4.into(), 5060);
    let lh = p.b.tcp_listen(server, 256).expect("listen");
    const N: usize = 120;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(p.a.tcp_connect(p.now, None, server).expect("connect"));
    }
    let msg = |i: usize| format!("OPTIONS sip:{i}@x SIP/2.0\r\n\r\n").into_bytes();
    let mut sent = [false; N];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); N];
    let mut servers: Vec<TcpHandle> = Vec::new();
    let mut buf = [0u8; 2048];
    let ok = p.run(Duration::from_secs(30), &mut |p| {
        while let Some(ev) = p.b.poll_event() {
            if let SocketEvent::TcpAcceptable(_) = ev {
                while let Some((h, _)) = p.b.tcp(lh).and_then(|mut l| l.accept()) {
                    servers.push(h);
                }
            }
        }
        for &h in &servers {
            let mut s = p.b.tcp(h).expect("server");
            while let Ok(n) = s.recv(&mut buf) {
                if n == 0 {
                    break;
                }
                s.send(&buf[..n]).expect("echo");
            }
        }
        while p.a.poll_event().is_some() {}
        for (i, &h) in clients.iter().enumerate() {
            let mut c = p.a.tcp(h).expect("client");
            if !sent[i] && c.state() == TcpState::Established {
                c.send(&msg(i)).expect("send");
                sent[i] = true;
            }
            while let Ok(n) = c.recv(&mut buf) {
                if n == 0 {
                    break;
                }
                got[i].extend_from_slice(&buf[..n]);
            }
        }
        (0..N).all(|i| got[i] == msg(i))
    });
    assert!(ok, "all {N} echoes back");
    assert_eq!(p.a.counters().get(Mib::TcpCurrEstab), N as u64);
    assert_eq!(p.b.counters().get(Mib::TcpPassiveOpens), N as u64);
}

#[test]
fn pair_flow_control_zero_window_then_resume() {
    let l = Limits {
        tcp_rmem: 16 * 1024,
        ..Limits::default()
    };
    let mut p = Pair::with_limits(FaultRates::NONE, 6, l);
    let server = SocketAddr::new(PEER4.into(), 5060);
    let lh = p.b.tcp_listen(server, 4).expect("listen");
    let ch = p.a.tcp_connect(p.now, None, server).expect("connect");
    const LEN: usize = 200_000;
    let mut sent = 0usize;
    let mut srv = None;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let start = p.now;
    let ok = p.run(Duration::from_secs(120), &mut |p| {
        while let Some(ev) = p.b.poll_event() {
            if let SocketEvent::TcpAcceptable(_) = ev {
                srv = p.b.tcp(lh).and_then(|mut l| l.accept()).map(|x| x.0);
            }
        }
        while p.a.poll_event().is_some() {}
        if let Some(mut c) = p.a.tcp(ch)
            && c.state() == TcpState::Established
        {
            while sent < LEN {
                let n = (LEN - sent).min(buf.len());
                let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
                match c.send(&chunk) {
                    Ok(k) => sent += k,
                    Err(_) => break,
                }
            }
        }
        // The reader sleeps for the first 10 s: the window closes and
        // the sender probes it.
        if p.now >= start + Duration::from_secs(10)
            && let Some(h) = srv
            && let Some(mut s) = p.b.tcp(h)
        {
            while let Ok(n) = s.recv(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        got.len() == LEN
    });
    assert!(ok, "{} of {LEN}", got.len());
    check_stream(&got, LEN);
    // zero-window probes answered the stall
    let c = p.a.counters();
    assert_eq!(c.get(Mib::TcpExtTCPAbortOnTimeout), 0);
}

#[test]
fn pair_keepalive_detects_a_dead_peer() {
    let mut p = Pair::new(FaultRates::NONE, 7);
    let server = SocketAddr::new(PEER4.into(), 5060);
    p.b.tcp_listen(server, 4).expect("listen");
    let ch = p.a.tcp_connect(p.now, None, server).expect("connect");
    let ok = p.run(Duration::from_secs(5), &mut |p| {
        p.a.tcp(ch)
            .is_some_and(|c| c.state() == TcpState::Established)
    });
    assert!(ok);
    p.a.tcp(ch)
        .expect("c")
        .set_keepalive(Some(Duration::from_secs(30)));
    // quiet but alive: probes are answered, nothing happens
    p.idle(Duration::from_secs(200));
    assert_eq!(p.a.tcp(ch).expect("c").state(), TcpState::Established);
    // the link dies: 9 probes 75 s apart, then ETIMEDOUT
    let start = p.now;
    p.set_faults(FaultRates {
        drop: 1.0,
        ..FaultRates::NONE
    });
    let mut closed = None;
    p.run(Duration::from_secs(1200), &mut |p| {
        while let Some(ev) = p.a.poll_event() {
            if let SocketEvent::TcpClosed(_, e) = ev {
                closed = Some(e);
                return true;
            }
        }
        false
    });
    assert_eq!(closed, Some(Some(TcpError::TimedOut)));
    let took = (p.now - start).secs();
    // at most one idle period, then 9 × 75 s
    assert!((9 * 75..=30 + 10 * 75).contains(&took), "{took} s");
}

#[test]
fn pair_rto_gives_up_with_etimedout_when_the_link_dies() {
    let mut p = Pair::new(FaultRates::NONE, 8);
    let server = SocketAddr::new(PEER4.into(), 5060);
    p.b.tcp_listen(server, 4).expect("listen");
    let ch = p.a.tcp_connect(p.now, None, server).expect("connect");
    p.run(Duration::from_secs(5), &mut |p| {
        p.a.tcp(ch)
            .is_some_and(|c| c.state() == TcpState::Established)
    });
    p.set_faults(FaultRates {
        drop: 1.0,
        ..FaultRates::NONE
    });
    p.a.tcp(ch).expect("c").send(b"lost").expect("send");
    let start = p.now;
    let mut closed = None;
    p.run(Duration::from_secs(3600), &mut |p| {
        while let Some(ev) = p.a.poll_event() {
            if let SocketEvent::TcpClosed(_, e) = ev {
                closed = Some(e);
                return true;
            }
        }
        false
    });
    assert_eq!(closed, Some(Some(TcpError::TimedOut)));
    let c = p.a.counters();
    assert_eq!(c.get(Mib::TcpRetransSegs), 15, "tcp_retries2");
    // 200 ms doubling, capped at 120 s: about 15 minutes as Linux
    let took = (p.now - start).secs();
    assert!((600..=1200).contains(&took), "{took} s");
}
