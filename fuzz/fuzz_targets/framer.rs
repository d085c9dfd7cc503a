//! Fuzz the streaming framer (SPEC A.2) and datagram framing (RFC 3261 §18.3).
//!
//! Input layout: byte 0 picks the read size (1..=64), byte 1 the size cap
//! (16..=4111) and whether Content-Length is required; the rest is the
//! stream, fed to the framer one read at a time like the transport does.
//! Where the read path would frame and parse a message in one walk
//! (`parse_framed`), that must give what the framer gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::sip::framer::{
    Frame, Framer, FramerConfig, find_header_end, frame_datagram, parse_content_length,
    parse_framed,
};

fuzz_target!(|data: &[u8]| {
    let (chunk, max, require, stream) = match data {
        [a, b, rest @ ..] => (
            usize::from(a % 64) + 1,
            16 + usize::from(b >> 1) * 32,
            b & 1 == 1,
            rest,
        ),
        _ => return,
    };
    let mut framer = Framer::new(FramerConfig {
        max_msg_size: max,
        require_content_length: require,
    });
    let mut buf: Vec<u8> = Vec::new();
    'reads: for read in stream.chunks(chunk) {
        buf.extend_from_slice(read);
        loop {
            // the read path's one walk takes exactly what the framer frames
            if let Some(head) = framer.message_start(&buf) {
                let mut hs = Vec::new();
                if let Some(m) = parse_framed(head, &mut hs) {
                    let want = Frame::Message {
                        len: m.buf.len(),
                        body_offset: m.body_offset,
                    };
                    assert_eq!(framer.clone().next(&buf), Ok(want));
                }
            }
            let consumed = match framer.next(&buf) {
                Ok(Frame::NeedMore) => {
                    assert!(buf.len() < max, "NeedMore with the cap buffered");
                    continue 'reads;
                }
                Err(_) => break 'reads,
                Ok(Frame::Message { len, body_offset }) => {
                    assert!(body_offset <= len);
                    assert!(find_header_end(&buf[..len], 0).is_some());
                    len
                }
                Ok(Frame::Skip(n)) => {
                    assert!(buf[..n].iter().all(|&b| b == b'\r' || b == b'\n'));
                    n
                }
                Ok(Frame::Ping) => {
                    assert!(buf.starts_with(b"\r\n\r\n"));
                    4
                }
                Ok(Frame::NotSip { len }) => len,
            };
            assert!(consumed > 0 && consumed <= buf.len() && consumed <= max.max(4));
            assert!(!framer.in_message());
            buf.drain(..consumed);
        }
    }

    if let Ok(d) = frame_datagram(stream) {
        assert!(d.body_offset <= d.len && d.len <= stream.len());
    }
    let _ = parse_content_length(stream);
});
