//! Framing throughput (SPEC A.2): the streaming framer over a sipp-style
//! INVITE with SDP, a 200 OK, a pipelined read of 100 mixed messages, and the
//! same stream arriving in 64-byte reads; plus datagram framing.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sipedge::sip::framer::{Frame, Framer, FramerConfig, frame_datagram};

const CFG: FramerConfig = FramerConfig {
    max_msg_size: 64 * 1024,
    require_content_length: true,
};

/// A sipp `uac` INVITE with an SDP body (about 900 bytes).
fn invite() -> Vec<u8> {
    let sdp = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 192.168.1.10\r\n\
s=-\r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";
    format!(
        "INVITE sip:service@192.168.1.20:5060 SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.168.1.10:5060;branch=z9hG4bK-12345-1-0;rport\r\n\
Max-Forwards: 70\r\n\
From: sipp <sip:sipp@192.168.1.10:5060>;tag=12345SIPpTag001\r\n\
To: service <sip:service@192.168.1.20:5060>\r\n\
Call-ID: 1-12345@192.168.1.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:sipp@192.168.1.10:5060;transport=tcp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: SIPp/3.7.1\r\n\
Subject: Performance Test\r\n\
Session-Expires: 1800;refresher=uac\r\n\
P-Asserted-Identity: <sip:sipp@192.168.1.10>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\
\r\n\
{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// A 200 OK to OPTIONS (about 300 bytes).
fn ok200() -> Vec<u8> {
    b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP 192.168.1.10:5060;branch=z9hG4bK-12345-2-0;received=192.168.1.10\r\n\
From: sipp <sip:sipp@192.168.1.10:5060>;tag=12345SIPpTag002\r\n\
To: <sip:service@192.168.1.20:5060>;tag=as1f2e3d4c\r\n\
Call-ID: 2-12345@192.168.1.10\r\n\
CSeq: 1 OPTIONS\r\n\
Server: sipedge-bench/0.1\r\n\
l: 0\r\n\
\r\n"
        .to_vec()
}

/// 100 messages back to back (INVITEs, 200 OKs, and CRLF keep-alives).
fn pipelined() -> (Vec<u8>, u64) {
    let (inv, ok) = (invite(), ok200());
    let mut buf = Vec::new();
    for i in 0..100 {
        buf.extend_from_slice(if i % 2 == 0 { &inv } else { &ok });
        if i % 10 == 0 {
            buf.extend_from_slice(b"\r\n\r\n");
        }
    }
    (buf, 100)
}

/// Frame every complete message at the front of `buf`: (messages, bytes consumed).
fn frame_front(framer: &mut Framer, buf: &[u8]) -> (usize, usize) {
    let mut pos = 0;
    let mut msgs = 0;
    while pos < buf.len() {
        match framer.next(&buf[pos..]) {
            Ok(Frame::Message { len, .. }) => {
                msgs += 1;
                pos += len;
            }
            Ok(Frame::Skip(n)) => pos += n,
            Ok(Frame::Ping) => pos += 4,
            Ok(Frame::NotSip { len }) => pos += len,
            Ok(Frame::NeedMore) | Err(_) => break,
        }
    }
    (msgs, pos)
}

/// Frame everything in `buf` as a caller that already has all the bytes.
fn frame_all(framer: &mut Framer, buf: &[u8]) -> usize {
    frame_front(framer, buf).0
}

/// The transport's read loop: bytes arrive `chunk` at a time into a reused
/// buffer, complete messages are drained from its front.
fn frame_chunked(framer: &mut Framer, stream: &[u8], chunk: usize, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut msgs = 0;
    for read in stream.chunks(chunk) {
        buf.extend_from_slice(read);
        let (n, pos) = frame_front(framer, buf);
        msgs += n;
        buf.drain(..pos);
    }
    msgs
}

fn bench_framing(c: &mut Criterion) {
    let inv = invite();
    let ok = ok200();
    let (pipe, n) = pipelined();

    let mut g = c.benchmark_group("framer");
    for (name, msg) in [("invite_sdp", &inv), ("ok200", &ok)] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        // baseline in the same run: the least a framer does, find the empty line
        let finder = memchr::memmem::Finder::new(b"\r\n\r\n");
        g.bench_function(format!("baseline_memmem_{name}_{}B", msg.len()), |b| {
            b.iter(|| finder.find(black_box(msg)))
        });
        g.bench_function(format!("{name}_{}B", msg.len()), |b| {
            let mut f = Framer::new(CFG);
            b.iter(|| f.next(black_box(msg)))
        });
    }

    g.throughput(Throughput::Elements(n));
    g.bench_function(format!("pipelined_100msgs_{}B", pipe.len()), |b| {
        let mut f = Framer::new(CFG);
        b.iter(|| frame_all(&mut f, black_box(&pipe)))
    });

    g.throughput(Throughput::Elements(n));
    g.bench_function("chunked_64B_reads_100msgs", |b| {
        let mut f = Framer::new(CFG);
        let mut buf = Vec::with_capacity(CFG.max_msg_size);
        b.iter(|| frame_chunked(&mut f, black_box(&pipe), 64, &mut buf))
    });
    g.finish();

    let mut g = c.benchmark_group("datagram");
    g.throughput(Throughput::Bytes(inv.len() as u64));
    g.bench_function("invite_sdp", |b| b.iter(|| frame_datagram(black_box(&inv))));
    g.finish();
}

criterion_group!(benches, bench_framing);
criterion_main!(benches);
