//! Sans-IO stream state of one TCP connection (SPEC A.2 framing, A.4
//! deadlines): bytes and time in; messages, pings and release reasons out.
//! No tokio, no netstack: both drivers (kernel `handle_io`, the stack
//! thread) feed it, and the deadline rules are unit-tested in virtual time.
//!
//! Memory: while no partial message is pending the state holds no buffer at
//! all (the driver reads into its per-worker buffer and messages are framed
//! in place); only the bytes of an incomplete message are kept.

use super::conn::ReleaseReason;
use crate::sip::framer::{Frame, FrameError, Framer, FramerConfig};

/// Milliseconds on the driver's monotonic clock (kernel: since `Ctx.epoch`;
/// stack: netstack Instant in ms). Virtual time in tests.
pub type Millis = u64;

/// The `[tcp]` settings a connection keeps for its lifetime (a reload
/// changes new connections only).
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    pub max_message_size: usize,
    pub require_content_length: bool,
    pub idle_ms: u64,
    pub message_timeout_ms: u64,
    pub first_message_timeout_ms: u64,
    pub crlf_pong: bool,
}

impl StreamConfig {
    pub fn from_limits(t: &crate::config::TcpLimits) -> Self {
        StreamConfig {
            max_message_size: t.max_message_size,
            require_content_length: !t.accept_no_content_length,
            idle_ms: t.idle_lifetime_secs.saturating_mul(1000),
            message_timeout_ms: t.message_timeout_secs.saturating_mul(1000),
            first_message_timeout_ms: t.first_message_timeout_secs.saturating_mul(1000),
            crlf_pong: t.crlf_pong,
        }
    }
}

/// What the stream produced. The handler returns how many bytes it took
/// from the front of a [`Item::Head`] (0: none); the other items are taken
/// whole and their handler returns 0.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A message starts here ([`Framer::message_start`]: the unconsumed
    /// bytes, at most `max_message_size`). The handler may frame, parse
    /// and handle one complete message from the front in one walk
    /// ([`crate::sip::framer::parse_framed`]) and return its length; with
    /// 0 the framer frames it and it comes as [`Item::Message`].
    Head(&'a [u8]),
    /// A framed message (or non-SIP bytes, `body_offset == bytes.len()`, for
    /// the nosip hook).
    Message { bytes: &'a [u8], body_offset: usize },
    /// A CRLFCRLF keep-alive (RFC 5626 §4.4.1); the driver sends "\r\n"
    /// when `cfg.crlf_pong`.
    Ping,
}

/// Framing and deadline state of one connection. Kept small (memory per
/// idle connection): the settings are stored compactly (deadlines in u32
/// milliseconds, so at most about 49 days; longer ones are capped).
#[derive(Debug)]
pub struct StreamState {
    framer: Framer,
    /// Bytes of an incomplete message (`None` while none is pending; boxed:
    /// one pointer in the connection's state).
    #[allow(clippy::box_collection)] // deliberate: 8 bytes while idle, not 24
    partial: Option<Box<Vec<u8>>>,
    created: Millis,
    last_rx: Millis,
    /// When the message being framed began ([`NONE`] between messages);
    /// trickled bytes do not move it.
    msg_started: Millis,
    idle_ms: u32,
    message_timeout_ms: u32,
    first_message_timeout_ms: u32,
    max_message_size: u32,
    require_content_length: bool,
    crlf_pong: bool,
    outbound: bool,
    /// A complete SIP message was delivered (Init → Ok).
    ok: bool,
}

/// `msg_started` between messages.
const NONE: Millis = Millis::MAX;

fn ms32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Framing error → release reason (SPEC A.4).
pub fn frame_error_reason(e: FrameError) -> ReleaseReason {
    match e {
        FrameError::Oversize => ReleaseReason::Oversize,
        FrameError::NoContentLength => ReleaseReason::NoContentLength,
        _ => ReleaseReason::FramingError,
    }
}

/// Frame everything complete in `buf`, handing each item on; returns the
/// bytes consumed and whether a message (or non-SIP bytes) was handed on.
fn frame_all(
    framer: &mut Framer,
    buf: &[u8],
    on_item: &mut impl FnMut(Item<'_>) -> Result<usize, ReleaseReason>,
) -> Result<(usize, bool), ReleaseReason> {
    let mut pos = 0;
    let mut delivered = false;
    loop {
        if let Some(head) = framer.message_start(&buf[pos..]) {
            let taken = on_item(Item::Head(head))?.min(head.len());
            if taken > 0 {
                pos += taken;
                delivered = true;
                continue;
            }
        }
        let step = framer.next(&buf[pos..]).map_err(frame_error_reason)?;
        if let Some((len, body_offset)) = step.for_core() {
            let bytes = &buf[pos..pos + len];
            pos += len;
            delivered = true;
            on_item(Item::Message { bytes, body_offset })?;
            continue;
        }
        match step {
            Frame::NeedMore => return Ok((pos, delivered)),
            Frame::Skip(n) => pos += n,
            Frame::Ping => {
                pos += 4;
                on_item(Item::Ping)?;
            }
            Frame::Message { .. } | Frame::NotSip { .. } => {}
        }
    }
}

impl StreamState {
    pub fn new(cfg: StreamConfig, outbound: bool, now: Millis) -> Self {
        StreamState {
            framer: Framer::new(FramerConfig {
                max_msg_size: cfg.max_message_size,
                require_content_length: cfg.require_content_length,
            }),
            partial: None,
            created: now,
            last_rx: now,
            msg_started: NONE,
            idle_ms: ms32(cfg.idle_ms),
            message_timeout_ms: ms32(cfg.message_timeout_ms),
            first_message_timeout_ms: ms32(cfg.first_message_timeout_ms),
            max_message_size: u32::try_from(cfg.max_message_size).unwrap_or(u32::MAX),
            require_content_length: cfg.require_content_length,
            crlf_pong: cfg.crlf_pong,
            outbound,
            ok: outbound,
        }
    }

    /// The settings this connection runs with (deadlines capped as above).
    pub fn config(&self) -> StreamConfig {
        StreamConfig {
            max_message_size: self.max_message_size as usize,
            require_content_length: self.require_content_length,
            idle_ms: self.idle_ms.into(),
            message_timeout_ms: self.message_timeout_ms.into(),
            first_message_timeout_ms: self.first_message_timeout_ms.into(),
            crlf_pong: self.crlf_pong,
        }
    }

    /// Bytes read at `now` (`chunk` is the driver's per-worker read buffer).
    /// Frames in place from `chunk` when nothing is pending, else appends to
    /// the pending partial message first; keeps only an incomplete
    /// message's bytes. Calls `on_item` per item in order; an Err from it,
    /// or a framing error, stops and is returned (the driver then releases
    /// the connection).
    pub fn on_bytes(
        &mut self,
        chunk: &[u8],
        now: Millis,
        mut on_item: impl FnMut(Item<'_>) -> Result<usize, ReleaseReason>,
    ) -> Result<(), ReleaseReason> {
        self.last_rx = now;
        let delivered = match self.partial.take() {
            None => {
                let (pos, delivered) = frame_all(&mut self.framer, chunk, &mut on_item)?;
                if pos < chunk.len() {
                    self.partial = Some(Box::new(chunk[pos..].to_vec()));
                }
                delivered
            }
            Some(mut partial) => {
                partial.extend_from_slice(chunk);
                // on an error the partial message is dropped with `partial`
                let (pos, delivered) = frame_all(&mut self.framer, &partial, &mut on_item)?;
                if pos < partial.len() {
                    partial.drain(..pos);
                    // a large read left only a small tail: give the rest back
                    if partial.capacity() > 2 * partial.len() + 4096 {
                        partial.shrink_to_fit();
                    }
                    self.partial = Some(partial);
                }
                delivered
            }
        };
        if delivered || !self.framer.in_message() {
            self.msg_started = NONE;
        }
        if self.framer.in_message() && self.msg_started == NONE {
            self.msg_started = now;
        }
        Ok(())
    }

    /// First complete SIP message delivered (Init → Ok; stops the
    /// first-message deadline).
    pub fn mark_ok(&mut self) {
        self.ok = true;
    }

    /// Earliest deadline and the reason it would release with: idle
    /// (max(last_rx, last_tx) + idle), message (msg_started +
    /// message_timeout; trickled bytes do not extend it — slowloris), first
    /// message (inbound only, created + first_message_timeout while no
    /// message was delivered).
    pub fn poll_timeout(&self, last_tx: Millis) -> (Millis, ReleaseReason) {
        let mut deadline = self
            .last_rx
            .max(last_tx)
            .saturating_add(self.idle_ms.into());
        let mut why = ReleaseReason::IdleTimeout;
        if self.msg_started != NONE {
            let d = self
                .msg_started
                .saturating_add(self.message_timeout_ms.into());
            if d < deadline {
                deadline = d;
                why = ReleaseReason::MessageTimeout;
            }
        }
        if !self.outbound && !self.ok {
            let d = self
                .created
                .saturating_add(self.first_message_timeout_ms.into());
            if d < deadline {
                deadline = d;
                why = ReleaseReason::FirstMessageTimeout;
            }
        }
        (deadline, why)
    }

    /// `Some(reason)` when a deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Millis, last_tx: Millis) -> Option<ReleaseReason> {
        let (deadline, why) = self.poll_timeout(last_tx);
        (now >= deadline).then_some(why)
    }

    /// Bytes held for an incomplete message (memory accounting / tests).
    pub fn pending(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.len())
    }

    /// Heap capacity held (memory accounting / tests).
    pub fn capacity(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framer::{find_header_end, parse_framed};

    fn cfg() -> StreamConfig {
        StreamConfig {
            max_message_size: 1000,
            require_content_length: true,
            idle_ms: 120_000,
            message_timeout_ms: 10_000,
            first_message_timeout_ms: 5_000,
            crlf_pong: true,
        }
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";
    const WITH_BODY: &[u8] =
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\nContent-Length: 5\r\n\r\nhello";

    type Got = Vec<(Vec<u8>, usize)>;

    /// Feed `chunk` (must not fail), collect (message bytes, body_offset) or "PING".
    fn feed(st: &mut StreamState, chunk: &[u8], now: Millis) -> Got {
        let (got, r) = feed_r(st, chunk, now);
        assert_eq!(r, Ok(()));
        got
    }

    fn feed_r(st: &mut StreamState, chunk: &[u8], now: Millis) -> (Got, Result<(), ReleaseReason>) {
        let mut got = Vec::new();
        let r = st.on_bytes(chunk, now, |it| {
            match it {
                Item::Head(_) => {}
                Item::Message { bytes, body_offset } => got.push((bytes.to_vec(), body_offset)),
                Item::Ping => got.push((b"PING".to_vec(), 0)),
            }
            Ok(0)
        });
        (got, r)
    }

    /// (message bytes, body_offset, taken in one walk) or "PING".
    type GotOneWalk = Vec<(Vec<u8>, usize, bool)>;

    /// [`feed_r`] as the TCP read path handles it: each head offered is
    /// taken in one walk when [`parse_framed`] can; `true` marks those.
    fn feed_one_walk(
        st: &mut StreamState,
        chunk: &[u8],
        now: Millis,
    ) -> (GotOneWalk, Result<(), ReleaseReason>) {
        let mut got = Vec::new();
        let r = st.on_bytes(chunk, now, |it| {
            Ok(match it {
                Item::Head(head) => {
                    let mut hs = Vec::new();
                    match parse_framed(head, &mut hs) {
                        Some(m) => {
                            got.push((m.buf.to_vec(), m.body_offset, true));
                            m.buf.len()
                        }
                        None => 0,
                    }
                }
                Item::Message { bytes, body_offset } => {
                    got.push((bytes.to_vec(), body_offset, false));
                    0
                }
                Item::Ping => {
                    got.push((b"PING".to_vec(), 0, false));
                    0
                }
            })
        });
        (got, r)
    }

    #[test]
    fn a2_one_walk_takes_whole_messages_and_the_framer_the_rest() {
        let mut st = StreamState::new(cfg(), false, 0);
        let off = |m: &[u8]| find_header_end(m, 0).expect("head ends");
        // a whole message, a ping, then a message split across two reads
        let mut chunk = OPTIONS.to_vec();
        chunk.extend_from_slice(b"\r\n\r\n");
        chunk.extend_from_slice(&WITH_BODY[..30]);
        let (got, r) = feed_one_walk(&mut st, &chunk, 1);
        assert_eq!(r, Ok(()));
        assert_eq!(
            got,
            vec![
                (OPTIONS.to_vec(), off(OPTIONS), true),
                (b"PING".to_vec(), 0, false)
            ]
        );
        assert!(
            st.framer.in_message(),
            "the split message waits in the framer"
        );
        assert_eq!(st.pending(), 30);
        // the rest of it: the framer frames it (it started in the last read)
        let (got, r) = feed_one_walk(&mut st, &WITH_BODY[30..], 2);
        assert_eq!(r, Ok(()));
        assert_eq!(got, vec![(WITH_BODY.to_vec(), off(WITH_BODY), false)]);
        assert_eq!(st.pending(), 0);
        assert_eq!(st.msg_started, NONE);
        // a body that is not all here yet, then the rest: the framer again
        let (got, _) = feed_one_walk(&mut st, &WITH_BODY[..WITH_BODY.len() - 2], 3);
        assert!(got.is_empty());
        assert_eq!(st.msg_started, 3, "the message deadline runs");
        let (got, _) = feed_one_walk(&mut st, &WITH_BODY[WITH_BODY.len() - 2..], 4);
        assert_eq!(got, vec![(WITH_BODY.to_vec(), off(WITH_BODY), false)]);
    }

    #[test]
    fn a2_one_walk_leaves_errors_to_the_framer() {
        // no Content-Length on a stream: not taken in one walk; the framer
        // reports the error, as without the one-walk path
        let mut st = StreamState::new(cfg(), false, 0);
        let (got, r) = feed_one_walk(&mut st, b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:b>\r\n\r\n", 1);
        assert_eq!((got, r), (vec![], Err(ReleaseReason::NoContentLength)));
        // a malformed header line goes to the core as framed bytes
        let mut st = StreamState::new(cfg(), false, 0);
        let bad = b"OPTIONS sip:a SIP/2.0\r\nbad line\r\nl: 0\r\n\r\n";
        let (got, r) = feed_one_walk(&mut st, bad, 1);
        assert_eq!((got, r), (vec![(bad.to_vec(), bad.len(), false)], Ok(())));
    }

    #[test]
    fn a2_pipelined_messages_in_one_chunk_are_framed_in_order() {
        let mut st = StreamState::new(cfg(), false, 0);
        let mut chunk = OPTIONS.to_vec();
        chunk.extend_from_slice(b"\r\n\r\n");
        chunk.extend_from_slice(WITH_BODY);
        let got = feed(&mut st, &chunk, 1);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, OPTIONS);
        assert_eq!(got[1].0, b"PING");
        assert_eq!(got[2].0, WITH_BODY);
        assert_eq!(got[2].1, WITH_BODY.len() - 5);
        assert_eq!(st.pending(), 0);
    }

    #[test]
    fn a2_message_split_across_chunks_is_reassembled() {
        let mut st = StreamState::new(cfg(), false, 0);
        for split in 1..WITH_BODY.len() {
            let (a, b) = WITH_BODY.split_at(split);
            let got = feed(&mut st, a, 1);
            assert_eq!(got.len(), 0, "split at {split}");
            assert_eq!(st.pending(), a.len());
            let got = feed(&mut st, b, 2);
            assert_eq!(got, vec![(WITH_BODY.to_vec(), WITH_BODY.len() - 5)]);
        }
    }

    #[test]
    fn a2_nothing_is_retained_after_a_complete_message() {
        let mut st = StreamState::new(cfg(), false, 0);
        let (a, b) = WITH_BODY.split_at(30);
        feed(&mut st, a, 1);
        assert!(st.capacity() > 0);
        let mut rest = b.to_vec();
        rest.extend_from_slice(OPTIONS);
        let got = feed(&mut st, &rest, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(st.pending(), 0);
        assert_eq!(st.capacity(), 0, "no buffer kept while nothing is pending");
        // framed in place: a whole message never allocates
        feed(&mut st, OPTIONS, 3);
        assert_eq!(st.capacity(), 0);
    }

    #[test]
    fn a2_tail_of_next_message_is_kept_after_a_complete_one() {
        let mut st = StreamState::new(cfg(), false, 0);
        let mut chunk = OPTIONS.to_vec();
        chunk.extend_from_slice(&WITH_BODY[..10]);
        let got = feed(&mut st, &chunk, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(st.pending(), 10);
        let got = feed(&mut st, &WITH_BODY[10..], 2);
        assert_eq!(got[0].0, WITH_BODY);
        assert_eq!(st.pending(), 0);
    }

    #[test]
    fn a2_oversize_message_releases() {
        let mut st = StreamState::new(cfg(), false, 0);
        let mut big = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        big.resize(600, b'a');
        feed(&mut st, &big, 1);
        assert_eq!(feed_r(&mut st, &big, 2).1, Err(ReleaseReason::Oversize));
        assert_eq!(st.capacity(), 0);
    }

    #[test]
    fn a2_missing_content_length_releases() {
        let mut st = StreamState::new(cfg(), false, 0);
        let r = feed_r(&mut st, b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 1).1;
        assert_eq!(r, Err(ReleaseReason::NoContentLength));
    }

    #[test]
    fn a2_early_rejection_hands_non_sip_bytes_on() {
        let mut st = StreamState::new(cfg(), false, 0);
        let got = feed(&mut st, b"\x16\x03\x01\x02\x00garbage", 1);
        assert_eq!(got.len(), 1);
        let (bytes, body_offset) = &got[0];
        assert_eq!(*body_offset, bytes.len(), "NotSip: no body");
    }

    #[test]
    fn a2_error_from_the_item_handler_stops_framing() {
        let mut st = StreamState::new(cfg(), false, 0);
        let mut two = OPTIONS.to_vec();
        two.extend_from_slice(OPTIONS);
        let mut n = 0;
        let r = st.on_bytes(&two, 1, |_| {
            n += 1;
            Err(ReleaseReason::ParseError)
        });
        assert_eq!((r, n), (Err(ReleaseReason::ParseError), 1));
    }

    #[test]
    fn a4_slowloris_message_deadline_is_not_extended_by_trickled_bytes() {
        let mut st = StreamState::new(cfg(), false, 0);
        st.mark_ok();
        let mut now = 1_000;
        for b in OPTIONS[..OPTIONS.len() - 1].iter().take(9) {
            feed(&mut st, std::slice::from_ref(b), now);
            now += 1_000;
        }
        // started at 1 s: the message deadline is 11 s whatever came since
        assert_eq!(st.poll_timeout(0), (11_000, ReleaseReason::MessageTimeout));
        assert_eq!(st.handle_timeout(10_999, 0), None);
        assert_eq!(
            st.handle_timeout(11_000, 0),
            Some(ReleaseReason::MessageTimeout)
        );
    }

    #[test]
    fn a4_message_deadline_restarts_with_the_next_message() {
        let mut st = StreamState::new(cfg(), false, 0);
        let mut chunk = OPTIONS.to_vec();
        chunk.extend_from_slice(b"OPT");
        feed(&mut st, &OPTIONS[..5], 1_000);
        feed(&mut st, &chunk[5..], 8_000);
        st.mark_ok();
        assert_eq!(st.poll_timeout(0), (18_000, ReleaseReason::MessageTimeout));
        feed(&mut st, &OPTIONS[3..], 9_000);
        assert_eq!(st.poll_timeout(0), (129_000, ReleaseReason::IdleTimeout));
    }

    #[test]
    fn a4_first_message_deadline_for_inbound_connections() {
        let mut st = StreamState::new(cfg(), false, 1_000);
        assert_eq!(
            st.poll_timeout(0),
            (6_000, ReleaseReason::FirstMessageTimeout)
        );
        // pings do not count as a message
        feed(&mut st, b"\r\n\r\n", 2_000);
        assert_eq!(
            st.handle_timeout(6_000, 0),
            Some(ReleaseReason::FirstMessageTimeout)
        );
        st.mark_ok();
        assert_eq!(st.handle_timeout(6_000, 0), None);
        assert_eq!(st.poll_timeout(0), (122_000, ReleaseReason::IdleTimeout));
    }

    #[test]
    fn a4_outbound_connections_have_no_first_message_deadline() {
        let st = StreamState::new(cfg(), true, 1_000);
        assert_eq!(st.poll_timeout(0), (121_000, ReleaseReason::IdleTimeout));
    }

    #[test]
    fn a4_idle_deadline_moves_with_rx_and_tx() {
        let mut st = StreamState::new(cfg(), false, 0);
        feed(&mut st, OPTIONS, 10_000);
        st.mark_ok();
        assert_eq!(st.poll_timeout(0), (130_000, ReleaseReason::IdleTimeout));
        // a send on the connection at 50 s
        assert_eq!(
            st.poll_timeout(50_000),
            (170_000, ReleaseReason::IdleTimeout)
        );
        assert_eq!(st.handle_timeout(130_000, 50_000), None);
        assert_eq!(
            st.handle_timeout(170_000, 50_000),
            Some(ReleaseReason::IdleTimeout)
        );
        feed(&mut st, b"\r\n\r\n", 100_000);
        assert_eq!(
            st.poll_timeout(50_000),
            (220_000, ReleaseReason::IdleTimeout)
        );
    }

    #[test]
    fn stream_state_is_small() {
        let n = std::mem::size_of::<StreamState>();
        println!("StreamState: {n} bytes");
        assert!(n <= 112, "StreamState is {n} bytes");
    }
}
