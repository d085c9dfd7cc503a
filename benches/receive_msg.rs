//! `receive_msg` micro-benchmarks: the whole stateless core for the messages
//! of a sipp call (INVITE in, 180/200 back, ACK, BYE), over UDP and TCP.
//! Baselines measured in the same run: copying the message (the least any
//! forwarder does) and parsing it with rsip (a conventional full parse).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sipedge::config::{Config, Transport};
use sipedge::core::nosip::NoneHook;
use sipedge::core::{Core, RcvInfo, Scratch};
use sipedge::metrics::Metrics;
use sipedge::sip::framer::{Frame, Framer, FramerConfig};
use std::hint::black_box;
use std::sync::Arc;

const INVITE: &[u8] = b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-30900-1-0\r\n\
From: sipp <sip:sipp@127.0.0.1:5090>;tag=30900SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-30900@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.0.1:5090\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const OK200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-30900-1-0;received=127.0.0.1\r\n\
From: sipp <sip:sipp@127.0.0.1:5090>;tag=30900SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>;tag=30901SIPpTag011\r\n\
Call-ID: 1-30900@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:127.0.0.1:5080;transport=UDP>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 0\r\n\
\r\n";

fn core() -> Core {
    let mut cfg = Config::default_config();
    cfg.upstreams =
        vec![sipedge::config::parse_upstream("bench", "sip:127.0.0.1:5080").expect("static")];
    Core::new(&cfg, Box::new(NoneHook), Arc::new(Metrics::new()))
}

fn rcv(t: Transport, port: u16) -> RcvInfo {
    RcvInfo {
        src: ([127, 0, 0, 1], port).into(),
        local: usize::from(t == Transport::Tcp),
        transport: t,
        conn: (t == Transport::Tcp).then_some(1),
        outbound: false,
    }
}

fn bench(c: &mut Criterion) {
    let core = core();
    let mut sc = Scratch::new();
    let mut g = c.benchmark_group("receive_msg");
    g.throughput(Throughput::Elements(1));
    let invite_body = INVITE
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0)
        + 4;
    g.bench_function(BenchmarkId::new("baseline_copy", "invite"), |b| {
        b.iter(|| {
            sc.out.clear();
            sc.out.extend_from_slice(black_box(INVITE));
            black_box(sc.out.len())
        })
    });
    g.bench_function(BenchmarkId::new("baseline_rsip_parse", "invite"), |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(INVITE)).is_ok()))
    });
    g.bench_function(BenchmarkId::new("udp", "invite"), |b| {
        let r = rcv(Transport::Udp, 5090);
        b.iter(|| black_box(core.receive_datagram(black_box(INVITE), &r, &mut sc)))
    });
    g.bench_function(BenchmarkId::new("tcp", "invite"), |b| {
        let r = rcv(Transport::Tcp, 40000);
        b.iter(|| black_box(core.receive_msg(black_box(INVITE), invite_body, false, &r, &mut sc)))
    });
    // a TCP read holding one whole INVITE: the framer's walk, then the
    // parse's (as before), against both in one walk (the read path now)
    let cfg = FramerConfig {
        max_msg_size: 65535,
        require_content_length: true,
    };
    g.bench_function(BenchmarkId::new("tcp_frame_then_parse", "invite"), |b| {
        let r = rcv(Transport::Tcp, 40000);
        b.iter(|| {
            let mut f = Framer::new(cfg);
            let Ok(Frame::Message { len, body_offset }) = f.next(black_box(INVITE)) else {
                unreachable!("a whole INVITE")
            };
            black_box(core.receive_msg(&INVITE[..len], body_offset, false, &r, &mut sc))
        })
    });
    g.bench_function(BenchmarkId::new("tcp_one_walk", "invite"), |b| {
        let r = rcv(Transport::Tcp, 40000);
        b.iter(|| {
            let f = Framer::new(cfg);
            let head = f.message_start(black_box(INVITE)).expect("a message start");
            black_box(core.receive_stream_head(head, &r, &mut sc))
        })
    });
    g.bench_function(BenchmarkId::new("udp", "reply_200"), |b| {
        let r = rcv(Transport::Udp, 5080);
        b.iter(|| black_box(core.receive_datagram(black_box(OK200), &r, &mut sc)))
    });
    g.bench_function(BenchmarkId::new("udp", "garbage"), |b| {
        let r = rcv(Transport::Udp, 5090);
        b.iter(|| {
            black_box(core.receive_datagram(black_box(b"\x16\x03\x01\x00\xa5garbage"), &r, &mut sc))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
