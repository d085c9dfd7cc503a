//! Streaming SIP framer (SPEC A.2): stream of bytes → complete messages.
//!
//! Sans-IO. The caller owns the buffer; after every result other than
//! `Frame::NeedMore` the caller removes exactly the reported prefix from the
//! front of its buffer before calling [`Framer::next`] again.

/// Framing limits.
#[derive(Debug, Clone, Copy)]
pub struct FramerConfig {
    /// Largest message (start line + headers + body) accepted, bytes.
    pub max_msg_size: usize,
    /// Missing Content-Length on a stream is a framing error unless this is false.
    pub require_content_length: bool,
}

/// Why a byte stream cannot be framed. Each maps to a connection release reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Message larger than `max_msg_size`, or header section that does not end within it.
    #[error("message exceeds the size limit")]
    Oversize,
    /// A SIP message on a stream without Content-Length.
    #[error("missing Content-Length")]
    NoContentLength,
    /// Content-Length present but not a number, or two different values.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// Datagram: the header section does not end.
    #[error("header section not terminated")]
    Unterminated,
    /// Datagram: Content-Length larger than the body present.
    #[error("Content-Length larger than the body")]
    BodyTooShort,
}

/// One framing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `buf[..len]` is one complete message; its body starts at `body_offset`
    /// (`len - body_offset` == Content-Length, 0 when absent and allowed).
    Message { len: usize, body_offset: usize },
    /// `buf[..n]` are keep-alive line breaks between messages: discard.
    Skip(usize),
    /// `buf[..4]` is a CRLFCRLF ping: discard and answer a CRLF pong (RFC 5626 §4.4.1).
    Ping,
    /// `buf[..len]` cannot be (the start of) a SIP message: hand it to the
    /// nosip / parse-failure path now (early rejection).
    NotSip { len: usize },
    /// Need more bytes.
    NeedMore,
}

/// Streaming framer state (one per connection).
#[derive(Debug, Clone)]
pub struct Framer {
    cfg: FramerConfig,
}

impl Framer {
    pub fn new(cfg: FramerConfig) -> Self {
        Framer { cfg }
    }

    /// Next framing step over `buf` (the unconsumed bytes).
    pub fn next(&mut self, buf: &[u8]) -> Result<Frame, FrameError> {
        let _ = (buf, self.cfg);
        todo!()
    }

    /// True while a message has started (bytes other than keep-alive line
    /// breaks are buffered) and is not complete: the message deadline runs.
    pub fn in_message(&self) -> bool {
        todo!()
    }
}

/// A datagram's framing (RFC 3261 §18.3): body bytes beyond Content-Length are
/// discarded; a Content-Length larger than the body is an error; no
/// Content-Length means the body runs to the end of the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramFrame {
    /// Message length to process (`<= datagram.len()`).
    pub len: usize,
    pub body_offset: usize,
    pub has_content_length: bool,
}

/// Frame one datagram.
pub fn frame_datagram(buf: &[u8]) -> Result<DatagramFrame, FrameError> {
    let _ = buf;
    todo!()
}

/// Offset just past the empty line ending the header section, searching from `from`.
pub fn find_header_end(buf: &[u8], from: usize) -> Option<usize> {
    let _ = (buf, from);
    todo!()
}
