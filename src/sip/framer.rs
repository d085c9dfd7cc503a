//! Streaming SIP framer (SPEC A.2): stream of bytes → complete messages.
//!
//! Sans-IO. The caller owns the buffer; after every result other than
//! `Frame::NeedMore` the caller removes exactly the reported prefix from the
//! front of its buffer before calling [`Framer::next`] again.
//!
//! Rules implemented (SPEC A.2, RFC 3261 §7.5 / §18.3, RFC 5626 §4.4.1):
//!
//! * the header section ends at the first empty line (`CRLF CRLF`; bare-LF
//!   line ends `LF LF` / `LF CRLF` are tolerated);
//! * `Content-Length` (or its compact form `l`, RFC 3261 §7.3.3) gives the
//!   body length; bytes past it belong to the next message (pipelining);
//! * a `CRLF CRLF` between messages is a keep-alive ping, lone `CRLF`s / `LF`s
//!   are skipped;
//! * bytes that cannot begin a SIP start-line are rejected as soon as they are
//!   seen (early rejection), not after the size cap or a timeout;
//! * size cap: a message or an unterminated header section of
//!   `max_msg_size` bytes or more is a framing error.

use crate::sip::msg::{HeaderKind, HeaderSpan, SipMsg};
use memchr::memchr;

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

impl Frame {
    /// Bytes to hand to the core, `(len, body_offset)`: a message, or non-SIP
    /// data (whole, no body) for the nosip hook; `None` for the other steps.
    pub fn for_core(self) -> Option<(usize, usize)> {
        match self {
            Frame::Message { len, body_offset } => Some((len, body_offset)),
            Frame::NotSip { len } => Some((len, len)),
            _ => None,
        }
    }
}

/// The RFC 5626 §4.4.1 keep-alive ping.
const PING: &[u8] = b"\r\n\r\n";
/// Start of a status line (RFC 3261 §7.2), including the SP after the version.
const STATUS_PREFIX: &[u8] = b"SIP/2.0 ";
/// End of a request line (RFC 3261 §7.1), including the SP before the version.
const REQUEST_SUFFIX: &[u8] = b" SIP/2.0";
/// Longest method token accepted by early rejection (SPEC A.2).
const MAX_METHOD_LEN: usize = 32;

/// Streaming framer state (one per connection).
///
/// Per-message state (scan offset, parsed header length) is kept across
/// `NeedMore` results so that re-scanning costs O(new bytes), and is reset
/// whenever a frame other than `NeedMore` (or an error) is returned.
#[derive(Debug, Clone)]
pub struct Framer {
    cfg: FramerConfig,
    /// A non-keep-alive byte of the current message has been seen.
    in_msg: bool,
    /// The start of the current message passed early rejection.
    start_ok: bool,
    /// Header-end search resumes here (every empty line starting before it
    /// has already been ruled out).
    scan_from: usize,
    /// `(header_len, total_len)` once the header section has been parsed.
    head: Option<(usize, usize)>,
}

impl Framer {
    /// A framer for a new connection, between messages.
    pub fn new(cfg: FramerConfig) -> Self {
        Framer {
            cfg,
            in_msg: false,
            start_ok: false,
            scan_from: 0,
            head: None,
        }
    }

    /// Next framing step over `buf` (the unconsumed bytes).
    ///
    /// Between messages this reports keep-alives (`Ping`, `Skip`); inside a
    /// message it applies early rejection, the header-end search, the
    /// Content-Length rules and the size cap of SPEC A.2. With
    /// `buf.len() >= max_msg_size` it never returns `NeedMore`.
    pub fn next(&mut self, buf: &[u8]) -> Result<Frame, FrameError> {
        let max = self.cfg.max_msg_size.max(1);
        if !self.in_msg {
            match keepalive(buf, max) {
                Keepalive::Ping => return Ok(Frame::Ping),
                Keepalive::Skip(n) => return Ok(Frame::Skip(n)),
                Keepalive::Wait => return Ok(Frame::NeedMore),
                Keepalive::Message => self.in_msg = true,
            }
        }
        let r = self.message(buf, max);
        if r != Ok(Frame::NeedMore) {
            self.reset();
        }
        r
    }

    /// True while a message has started (bytes other than keep-alive line
    /// breaks are buffered) and is not complete: the message deadline runs.
    pub fn in_message(&self) -> bool {
        self.in_msg
    }

    /// The bytes the next message may be framed and parsed from in one
    /// walk ([`parse_framed`]): `Some` only between messages, when `buf`
    /// starts with a message byte (no keep-alive) that passes early
    /// rejection; capped at `max_msg_size`, the window [`Framer::next`]
    /// searches. `None`, or `parse_framed` declining: call `next`, which
    /// applies every rule as before. State is not changed either way.
    pub fn message_start<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        let max = self.cfg.max_msg_size.max(1);
        if self.in_msg
            || !matches!(keepalive(buf, max), Keepalive::Message)
            || !matches!(start_line_prefix(buf), StartLine::Ok)
        {
            return None;
        }
        Some(&buf[..buf.len().min(max)])
    }

    fn reset(&mut self) {
        self.in_msg = false;
        self.start_ok = false;
        self.scan_from = 0;
        self.head = None;
    }

    /// Framing inside a message: `buf` starts with a non-keep-alive byte.
    fn message(&mut self, buf: &[u8], max: usize) -> Result<Frame, FrameError> {
        if !self.start_ok {
            match start_line_prefix(buf) {
                StartLine::Ok => self.start_ok = true,
                StartLine::Bad => {
                    return Ok(Frame::NotSip {
                        len: not_sip_len(buf, max),
                    });
                }
                StartLine::Pending if buf.len() >= max => return Err(FrameError::Oversize),
                StartLine::Pending => return Ok(Frame::NeedMore),
            }
        }

        let (header_len, total) = match self.head {
            Some(h) => h,
            None => {
                let window = &buf[..buf.len().min(max)];
                let from = self.scan_from.min(window.len());
                // From the start, the header-end search also notes where the
                // Content-Length lines begin: one walk over the lines.
                let mut notes = ClNotes::default();
                let Some(header_len) = scan_head(window, from, Some(&mut notes)) else {
                    if buf.len() >= max {
                        return Err(FrameError::Oversize);
                    }
                    // Any empty line starting before len-2 would have been found.
                    self.scan_from = window.len().saturating_sub(2);
                    return Ok(Frame::NeedMore);
                };
                let head = &window[..header_len];
                let cl = if from == 0 {
                    notes.content_length(head)?
                } else {
                    // the lines before `from` were walked by an earlier call
                    parse_content_length(head)?
                };
                let total = match cl {
                    Some(cl) => header_len
                        .checked_add(cl)
                        .filter(|&t| t <= max)
                        .ok_or(FrameError::Oversize)?,
                    None if is_sip_start_line(first_line(head)) => {
                        if self.cfg.require_content_length {
                            return Err(FrameError::NoContentLength);
                        }
                        header_len
                    }
                    // e.g. `GET /health HTTP/1.1`: let the nosip hook see it.
                    None => return Ok(Frame::NotSip { len: header_len }),
                };
                self.head = Some((header_len, total));
                (header_len, total)
            }
        };

        if buf.len() >= total {
            Ok(Frame::Message {
                len: total,
                body_offset: header_len,
            })
        } else {
            Ok(Frame::NeedMore)
        }
    }
}

/// What the bytes between messages are.
enum Keepalive {
    /// `CRLF CRLF` at the start (RFC 5626 §4.4.1).
    Ping,
    /// This many lone `CRLF` / `LF` bytes.
    Skip(usize),
    /// Empty, or a proper prefix of a ping: wait.
    Wait,
    /// The buffer starts with a message byte.
    Message,
}

/// Classify the start of `buf` between messages. A run of line breaks stops
/// before anything that is, or may still become, a `CRLF CRLF` ping, so that
/// pings are recognised the same however the bytes are chunked.
fn keepalive(buf: &[u8], max: usize) -> Keepalive {
    if buf.starts_with(PING) {
        return Keepalive::Ping;
    }
    let mut i = 0;
    while i < buf.len() && i < max {
        let rest = &buf[i..];
        match rest[0] {
            b'\n' => i += 1,
            b'\r' if rest.starts_with(PING) || PING.starts_with(rest) => break,
            b'\r' if rest.starts_with(b"\r\n") => i += 2,
            _ => break,
        }
    }
    if i > 0 {
        Keepalive::Skip(i.min(max))
    } else if PING.starts_with(buf) {
        Keepalive::Wait
    } else {
        Keepalive::Message
    }
}

/// Early rejection verdict on the first bytes of a message.
enum StartLine {
    /// `SIP/2.0 ` or `token SP` seen.
    Ok,
    /// Consistent with a start line so far.
    Pending,
    /// Cannot begin a SIP start-line.
    Bad,
}

/// RFC 3261 §25.1 `token` characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Early rejection (SPEC A.2): can `buf` begin a status line (`SIP/2.0 `,
/// RFC 3261 §7.2) or a request line (method token of at most 32 chars + SP,
/// RFC 3261 §7.1)? Looks at no more than 33 bytes.
fn start_line_prefix(buf: &[u8]) -> StartLine {
    let n = buf.len().min(STATUS_PREFIX.len());
    if buf[..n].eq_ignore_ascii_case(&STATUS_PREFIX[..n]) {
        return if n == STATUS_PREFIX.len() {
            StartLine::Ok
        } else {
            StartLine::Pending
        };
    }
    for (i, &b) in buf.iter().enumerate() {
        if is_token(b) {
            if i >= MAX_METHOD_LEN {
                return StartLine::Bad;
            }
        } else if b == b' ' && i > 0 {
            return StartLine::Ok;
        } else {
            return StartLine::Bad;
        }
    }
    StartLine::Pending
}

/// Length handed to the nosip path on early rejection: through the first
/// empty line if buffered, else through the first LF, else everything —
/// never more than `max`, never 0 for a non-empty buffer.
fn not_sip_len(buf: &[u8], max: usize) -> usize {
    let w = &buf[..buf.len().min(max)];
    if let Some(end) = find_header_end(w, 0) {
        end
    } else if let Some(lf) = memchr(b'\n', w) {
        lf + 1
    } else {
        w.len()
    }
}

/// The first line of `head` without its line break.
fn first_line(head: &[u8]) -> &[u8] {
    let line = match memchr(b'\n', head) {
        Some(lf) => &head[..lf],
        None => head,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A SIP start line: status line `SIP/2.0 ...` (RFC 3261 §7.2) or request
/// line `... SIP/2.0` (RFC 3261 §7.1). Case-insensitive.
fn is_sip_start_line(line: &[u8]) -> bool {
    let starts = line.len() >= STATUS_PREFIX.len()
        && line[..STATUS_PREFIX.len()].eq_ignore_ascii_case(STATUS_PREFIX);
    let ends = line.len() >= REQUEST_SUFFIX.len()
        && line[line.len() - REQUEST_SUFFIX.len()..].eq_ignore_ascii_case(REQUEST_SUFFIX);
    starts || ends
}

/// End of the header section (RFC 3261 §7): the index just past the first
/// empty line, i.e. past `CRLF CRLF`; bare-LF line ends (`LF LF`, `LF CRLF`)
/// are tolerated. Only empty lines whose preceding LF is at index `from` or
/// later are considered, so a caller that found nothing in `buf[..n]` can
/// resume with `from = n.saturating_sub(2)` and scan only the new bytes.
pub fn find_header_end(buf: &[u8], from: usize) -> Option<usize> {
    scan_head(buf, from, None)
}

/// The empty line that ends a head, if one starts at `buf[pos]` (just after
/// an LF): `LF` or `CRLF`. The index after it, where the body begins.
#[inline]
pub(crate) fn empty_line_end(buf: &[u8], pos: usize) -> Option<usize> {
    match buf.get(pos) {
        Some(b'\n') => Some(pos + 1),
        Some(b'\r') if buf.get(pos + 1) == Some(&b'\n') => Some(pos + 2),
        _ => None,
    }
}

/// [`find_header_end`], noting in `notes` where each line whose name is
/// Content-Length or `l` begins.
#[inline]
fn scan_head(buf: &[u8], from: usize, mut notes: Option<&mut ClNotes>) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let lf = i + memchr(b'\n', &buf[i..])?;
        if let Some(end) = empty_line_end(buf, lf + 1) {
            return Some(end);
        }
        if let Some(n) = notes.as_deref_mut()
            && matches!(buf.get(lf + 1), Some(b'c' | b'C' | b'l' | b'L'))
            && is_cl_name(&buf[lf + 1..])
        {
            n.push(lf + 1);
        }
        i = lf + 1;
    }
    None
}

/// Where a head's Content-Length lines begin, as [`scan_head`] found them.
/// More than fit here sends the head to [`parse_content_length`].
#[derive(Default)]
struct ClNotes {
    n: usize,
    at: [usize; ClNotes::CAP],
}

impl ClNotes {
    const CAP: usize = 4;

    #[inline]
    fn push(&mut self, at: usize) {
        if let Some(slot) = self.at.get_mut(self.n) {
            *slot = at;
        }
        self.n += 1;
    }

    /// The head's Content-Length, by the rules of [`parse_content_length`],
    /// reading only the noted lines (and their continuation lines).
    fn content_length(&self, head: &[u8]) -> Result<Option<usize>, FrameError> {
        if self.n > Self::CAP {
            return parse_content_length(head);
        }
        let mut found = None;
        for &at in &self.at[..self.n] {
            found = merge_cl(found, cl_value_at(head, at)?)?;
        }
        Ok(found)
    }
}

/// The value of the Content-Length header whose line begins at `head[at]`
/// ([`is_cl_name`] holds there): after the colon, and on the folded
/// continuation lines (starting with SP/HT) that follow.
fn cl_value_at(head: &[u8], at: usize) -> Result<ClValue, FrameError> {
    let mut lines = Lines(&head[at..]).map(|raw| raw.strip_suffix(b"\r").unwrap_or(raw));
    let mut cl = ClValue::default();
    if let Some(line) = lines.next()
        && let Some(colon) = memchr(b':', line)
    {
        cl.feed(&line[colon + 1..])?;
    }
    for line in lines.take_while(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
        cl.feed(line)?;
    }
    Ok(cl)
}

/// Does the line at the start of `line` name Content-Length (or its compact
/// form `l`): the name, optional SP/HT, then the colon, all on this line.
#[inline]
fn is_cl_name(line: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    // `[7] == '-'` turns away Contact, Call-ID and CSeq before the compare
    let n = if line.len() > NAME.len()
        && line[7] == b'-'
        && line[..NAME.len()].eq_ignore_ascii_case(NAME)
    {
        NAME.len()
    } else if matches!(line.first(), Some(b'l' | b'L')) {
        1
    } else {
        return false;
    };
    line[n..].iter().find(|&&c| c != b' ' && c != b'\t') == Some(&b':')
}

/// Accumulates the digits of one Content-Length value, which may span
/// folded continuation lines (RFC 3261 §7.3.1).
#[derive(Default)]
struct ClValue {
    value: usize,
    digits: bool,
    /// Whitespace after the digits: any further digit is an error.
    ended: bool,
}

impl ClValue {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        for &b in bytes {
            match b {
                b' ' | b'\t' | b'\r' => self.ended |= self.digits,
                b'0'..=b'9' if !self.ended => {
                    self.digits = true;
                    self.value = self
                        .value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(usize::from(b - b'0')))
                        .ok_or(FrameError::BadContentLength)?;
                }
                _ => return Err(FrameError::BadContentLength),
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<usize, FrameError> {
        if self.digits {
            Ok(self.value)
        } else {
            Err(FrameError::BadContentLength)
        }
    }
}

/// Record one Content-Length value; a second, different one is an error.
fn merge_cl(found: Option<usize>, value: ClValue) -> Result<Option<usize>, FrameError> {
    let v = value.finish()?;
    match found {
        Some(prev) if prev != v => Err(FrameError::BadContentLength),
        _ => Ok(Some(v)),
    }
}

/// Content-Length of a message head (RFC 3261 §20.14, compact form `l`
/// §7.3.3). `head` is the message from its start line (which is skipped)
/// through the empty line; lines after an empty line are ignored.
///
/// Header names match case-insensitively, whitespace around the colon is
/// allowed, and folded continuation lines (starting with SP/HT) belong to
/// the previous header. `Ok(None)` when absent; `BadContentLength` for a
/// value that is empty, not all digits, overflows, or for two headers with
/// different values.
pub fn parse_content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found = None;
    let mut at = 0;
    for (i, raw) in Lines(head).enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        // the start line is skipped; continuation lines fail `is_cl_name`
        // (they start with SP/HT) and are read by `cl_value_at`
        if i > 0 {
            if line.is_empty() {
                break;
            }
            if is_cl_name(line) {
                found = merge_cl(found, cl_value_at(head, at)?)?;
            }
        }
        at += raw.len() + 1;
    }
    Ok(found)
}

/// Lines of `s` split at LF (LF excluded), found with `memchr`.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match memchr(b'\n', self.0) {
            Some(lf) => {
                let (line, rest) = self.0.split_at(lf);
                self.0 = &rest[1..];
                Some(line)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
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

/// Frame one datagram (RFC 3261 §18.3). The header section must end
/// (`Unterminated` otherwise); the size cap is the transport's business.
pub fn frame_datagram(buf: &[u8]) -> Result<DatagramFrame, FrameError> {
    let header_len = find_header_end(buf, 0).ok_or(FrameError::Unterminated)?;
    match parse_content_length(&buf[..header_len])? {
        Some(cl) => {
            if cl > buf.len() - header_len {
                return Err(FrameError::BodyTooShort);
            }
            Ok(DatagramFrame {
                len: header_len + cl,
                body_offset: header_len,
                has_content_length: true,
            })
        }
        None => Ok(DatagramFrame {
            len: buf.len(),
            body_offset: header_len,
            has_content_length: false,
        }),
    }
}

/// Content-Length of a message whose head `SipMsg` has already indexed
/// (the UDP and TCP receive paths: one header pass instead of
/// [`parse_content_length`]'s own scan). Gives exactly what
/// [`parse_content_length`] gives on the same head: a header counts when its
/// name is `Content-Length` or `l` and only SP/HT stand between the name and
/// the colon on its first line; its value is read from after the colon
/// through its folded continuation lines, each without its line break.
pub fn parsed_content_length(msg: &SipMsg<'_>) -> Result<Option<usize>, FrameError> {
    let mut found = None;
    for h in msg.headers {
        if h.kind != HeaderKind::ContentLength {
            continue;
        }
        let buf = msg.buf;
        let mut colon = h.name.end as usize;
        while colon < buf.len() && matches!(buf[colon], b' ' | b'\t') {
            colon += 1;
        }
        if buf.get(colon) != Some(&b':') {
            // a CR or a line break before the colon: not a Content-Length
            // line for the line-by-line rule
            continue;
        }
        let mut cl = ClValue::default();
        let value = h.value.get(buf);
        if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
            // the common value: the digits alone (the trimmed span leaves
            // only SP/HT/CR/LF around them, which read as nothing)
            cl.feed(value)?;
        } else {
            for raw in Lines(&buf[colon + 1..h.line.end as usize]) {
                cl.feed(raw.strip_suffix(b"\r").unwrap_or(raw))?;
            }
        }
        found = merge_cl(found, cl)?;
    }
    Ok(found)
}

/// SPEC A.2 and the parse in one walk over a stream's next message: the
/// walk that indexes the head ([`SipMsg::parse_head`]) also finds its end,
/// and Content-Length is read from the indexed spans
/// ([`parsed_content_length`]). `head` is what [`Framer::message_start`]
/// offered. `Some`: `msg.buf` is the whole message (head and
/// Content-Length bytes of body), exactly what [`Framer::next`] would
/// frame, indexed as [`SipMsg::parse`] would index it. `None` for
/// everything else (a head that does not end or parse strictly, no or a
/// bad Content-Length, a body not all here): the framer's rules decide
/// (NeedMore, the size cap, errors), at the cost of a second walk.
pub fn parse_framed<'a>(head: &'a [u8], headers: &'a mut Vec<HeaderSpan>) -> Option<SipMsg<'a>> {
    let mut msg = SipMsg::parse_head(head, headers).ok()??;
    let cl = parsed_content_length(&msg).ok()??;
    let len = msg
        .body_offset
        .checked_add(cl)
        .filter(|&t| t <= head.len())?;
    msg.buf = &head[..len];
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a2_message_and_non_sip_bytes_both_go_to_the_core() {
        let m = Frame::Message {
            len: 10,
            body_offset: 6,
        };
        assert_eq!(m.for_core(), Some((10, 6)));
        assert_eq!(Frame::NotSip { len: 7 }.for_core(), Some((7, 7)));
        assert_eq!(Frame::Ping.for_core(), None);
        assert_eq!(Frame::Skip(2).for_core(), None);
        assert_eq!(Frame::NeedMore.for_core(), None);
    }
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    fn cfg(max_msg_size: usize, require_content_length: bool) -> FramerConfig {
        FramerConfig {
            max_msg_size,
            require_content_length,
        }
    }

    fn strict() -> FramerConfig {
        cfg(MAX, true)
    }

    /// What the simulated caller saw, with the consumed bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Msg { bytes: Vec<u8>, body_offset: usize },
        Ping,
        Skip(usize),
        NotSip(Vec<u8>),
        Err(FrameError),
    }

    /// Simulated caller (the transport's `read_req`): a `Vec` buffer that
    /// each chunk is appended to, `next` called until `NeedMore`, the
    /// reported prefix drained after every other result. Stops at the
    /// first error (the connection would be released). Checks the framer's
    /// invariants on every step. Returns the events and the unconsumed bytes.
    struct Driver {
        framer: Framer,
        max: usize,
        buf: Vec<u8>,
        events: Vec<Ev>,
        failed: bool,
        /// Offer each message start to [`parse_framed`] first, as the TCP
        /// read path does; `one_walk_taken` counts the messages it took.
        one_walk: bool,
        one_walk_taken: usize,
    }

    impl Driver {
        fn new(c: FramerConfig) -> Self {
            Driver {
                framer: Framer::new(c),
                max: c.max_msg_size,
                buf: Vec::new(),
                events: Vec::new(),
                failed: false,
                one_walk: false,
                one_walk_taken: 0,
            }
        }

        fn one_walk(c: FramerConfig) -> Self {
            Driver {
                one_walk: true,
                ..Driver::new(c)
            }
        }

        /// The one-walk path: a message taken whole from the front of the
        /// buffer, checked against what the two walks give.
        fn take_one_walk(&mut self) -> Option<usize> {
            let head = self.framer.message_start(&self.buf)?;
            let mut hs = Vec::new();
            let m = parse_framed(head, &mut hs)?;
            let (len, body_offset) = (m.buf.len(), m.body_offset);
            assert!(body_offset <= len && len <= self.buf.len() && len <= self.max);
            let mut hs2 = Vec::new();
            let two = SipMsg::parse(&self.buf[..len], body_offset, &mut hs2)
                .unwrap_or_else(|e| panic!("one walk took what the parse rejects: {e}"));
            assert_eq!(
                (m.start, m.start_line, m.headers, m.headers_end),
                (two.start, two.start_line, two.headers, two.headers_end)
            );
            self.events.push(Ev::Msg {
                bytes: self.buf[..len].to_vec(),
                body_offset,
            });
            self.one_walk_taken += 1;
            Some(len)
        }

        fn feed(&mut self, chunk: &[u8]) {
            if self.failed {
                return;
            }
            self.buf.extend_from_slice(chunk);
            loop {
                if self.one_walk
                    && let Some(len) = self.take_one_walk()
                {
                    assert!(len > 0 && !self.framer.in_message());
                    self.buf.drain(..len);
                    continue;
                }
                let r = self.framer.next(&self.buf);
                let consumed = match r {
                    Ok(Frame::NeedMore) => {
                        assert!(
                            self.buf.len() < self.max,
                            "NeedMore with {} >= max {} buffered",
                            self.buf.len(),
                            self.max
                        );
                        return;
                    }
                    Err(e) => {
                        self.events.push(Ev::Err(e));
                        self.failed = true;
                        assert!(!self.framer.in_message());
                        return;
                    }
                    Ok(Frame::Message { len, body_offset }) => {
                        assert!(body_offset <= len && len <= self.buf.len() && len <= self.max);
                        self.events.push(Ev::Msg {
                            bytes: self.buf[..len].to_vec(),
                            body_offset,
                        });
                        len
                    }
                    Ok(Frame::Ping) => {
                        assert!(self.buf.starts_with(b"\r\n\r\n"));
                        self.events.push(Ev::Ping);
                        4
                    }
                    Ok(Frame::Skip(n)) => {
                        assert!(n <= self.buf.len() && n <= self.max);
                        assert!(self.buf[..n].iter().all(|&b| b == b'\r' || b == b'\n'));
                        match self.events.last_mut() {
                            Some(Ev::Skip(m)) => *m += n,
                            _ => self.events.push(Ev::Skip(n)),
                        }
                        n
                    }
                    Ok(Frame::NotSip { len }) => {
                        assert!(len <= self.buf.len() && len <= self.max);
                        self.events.push(Ev::NotSip(self.buf[..len].to_vec()));
                        len
                    }
                };
                assert!(consumed > 0, "zero-length frame {r:?}");
                assert!(!self.framer.in_message(), "in_message after {r:?}");
                self.buf.drain(..consumed);
            }
        }
    }

    fn run_chunks(c: FramerConfig, chunks: &[&[u8]]) -> (Vec<Ev>, Vec<u8>) {
        let mut d = Driver::new(c);
        for ch in chunks {
            d.feed(ch);
        }
        (d.events, d.buf)
    }

    fn run(c: FramerConfig, bytes: &[u8]) -> (Vec<Ev>, Vec<u8>) {
        run_chunks(c, &[bytes])
    }

    /// [`run_sized`] with the one-walk path first; also how many messages
    /// it took.
    fn run_sized_one_walk(
        c: FramerConfig,
        stream: &[u8],
        sizes: &[usize],
    ) -> ((Vec<Ev>, Vec<u8>), usize) {
        let d = feed_sized(Driver::one_walk(c), stream, sizes);
        ((d.events, d.buf), d.one_walk_taken)
    }

    fn run_bytewise(c: FramerConfig, bytes: &[u8]) -> (Vec<Ev>, Vec<u8>) {
        let mut d = Driver::new(c);
        for b in bytes {
            d.feed(std::slice::from_ref(b));
        }
        (d.events, d.buf)
    }

    fn msg(bytes: &[u8], body_offset: usize) -> Ev {
        Ev::Msg {
            bytes: bytes.to_vec(),
            body_offset,
        }
    }

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length: 0\r\n\r\n";
    const OPTIONS_HEAD: usize = OPTIONS.len();
    const MESSAGE: &[u8] =
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

    // ---- framing: header end, Content-Length, pipelining, partial reads ----

    #[test]
    fn a2_single_message_with_body() {
        let (ev, rest) = run(strict(), MESSAGE);
        assert_eq!(ev, vec![msg(MESSAGE, MESSAGE.len() - 5)]);
        assert!(rest.is_empty());
    }

    #[test]
    fn a2_pipelined_messages_split_at_content_length() {
        let mut stream = Vec::new();
        stream.extend_from_slice(MESSAGE);
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(MESSAGE);
        stream.extend_from_slice(&MESSAGE[..20]);
        let (ev, rest) = run(strict(), &stream);
        let m = msg(MESSAGE, MESSAGE.len() - 5);
        assert_eq!(ev, vec![m.clone(), msg(OPTIONS, OPTIONS_HEAD), m]);
        assert_eq!(rest, &MESSAGE[..20]);
    }

    #[test]
    fn a2_body_bytes_are_not_parsed_as_headers() {
        let m = b"MESSAGE sip:a SIP/2.0\r\nl: 26\r\n\r\n\r\n\r\nContent-Length: 99\r\n\r\n";
        assert_eq!(run(strict(), m).0, vec![msg(m, m.len() - 26)]);
    }

    #[test]
    fn a2_message_split_across_reads_byte_by_byte() {
        let mut stream = MESSAGE.to_vec();
        stream.extend_from_slice(OPTIONS);
        let (ev, rest) = run_bytewise(strict(), &stream);
        assert_eq!(
            ev,
            vec![msg(MESSAGE, MESSAGE.len() - 5), msg(OPTIONS, OPTIONS_HEAD)]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn a2_partial_read_needs_more_then_completes() {
        let mut f = Framer::new(strict());
        for cut in [1, 10, MESSAGE.len() - 6, MESSAGE.len() - 1] {
            assert_eq!(f.next(&MESSAGE[..cut]), Ok(Frame::NeedMore), "cut {cut}");
            assert!(f.in_message());
        }
        assert_eq!(
            f.next(MESSAGE),
            Ok(Frame::Message {
                len: MESSAGE.len(),
                body_offset: MESSAGE.len() - 5
            })
        );
        assert!(!f.in_message());
    }

    #[test]
    fn a2_rescan_resumes_after_needmore() {
        // A long header section trickling in: the search offset advances so
        // the bytes already scanned are not scanned again.
        let mut f = Framer::new(strict());
        let mut buf = b"INVITE sip:a SIP/2.0\r\n".to_vec();
        for _ in 0..100 {
            buf.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz\r\n");
            assert_eq!(f.next(&buf), Ok(Frame::NeedMore));
            assert_eq!(f.scan_from, buf.len() - 2);
        }
        buf.extend_from_slice(b"l: 0\r\n\r\n");
        assert_eq!(
            f.next(&buf),
            Ok(Frame::Message {
                len: buf.len(),
                body_offset: buf.len()
            })
        );
        assert_eq!(f.scan_from, 0);
    }

    #[test]
    fn a2_header_end_split_inside_crlfcrlf() {
        let head = b"OPTIONS sip:a SIP/2.0\r\nl:0\r\n\r\n";
        for cut in 1..head.len() {
            let (ev, _) = run_chunks(strict(), &[&head[..cut], &head[cut..]]);
            assert_eq!(ev, vec![msg(head, head.len())], "cut {cut}");
        }
    }

    #[test]
    fn a2_bare_lf_header_end() {
        let lf = b"OPTIONS sip:a SIP/2.0\nl: 2\n\nhi";
        assert_eq!(run(strict(), lf).0, vec![msg(lf, lf.len() - 2)]);
        let mixed = b"OPTIONS sip:a SIP/2.0\r\nl: 2\n\r\nhi";
        assert_eq!(run(strict(), mixed).0, vec![msg(mixed, mixed.len() - 2)]);
        let cr_lf_lf = b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\nhi";
        assert_eq!(
            run(strict(), cr_lf_lf).0,
            vec![msg(cr_lf_lf, cr_lf_lf.len() - 2)]
        );
        assert_eq!(run_bytewise(strict(), lf).0, vec![msg(lf, lf.len() - 2)]);
    }

    #[test]
    fn a2_status_line_is_framed() {
        let ok = b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(run_bytewise(strict(), ok).0, vec![msg(ok, ok.len() - 3)]);
    }

    // ---- keep-alive (RFC 5626 §4.4.1) ----

    #[test]
    fn a2_crlfcrlf_ping_is_answered() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"\r\n\r\n"), Ok(Frame::Ping));
        assert!(!f.in_message());
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n\r\n\r\n\r\n");
        let (ev, rest) = run(strict(), &stream);
        assert_eq!(
            ev,
            vec![Ev::Ping, msg(OPTIONS, OPTIONS_HEAD), Ev::Ping, Ev::Ping]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn a2_ping_recognised_byte_by_byte() {
        let (ev, rest) = run_bytewise(strict(), b"\r\n\r\n\r\n\r\n");
        assert_eq!(ev, vec![Ev::Ping, Ev::Ping]);
        assert!(rest.is_empty());
    }

    #[test]
    fn a2_partial_ping_waits() {
        let mut f = Framer::new(strict());
        for b in [&b""[..], b"\r", b"\r\n", b"\r\n\r"] {
            assert_eq!(f.next(b), Ok(Frame::NeedMore), "{b:?}");
            assert!(!f.in_message());
        }
    }

    #[test]
    fn a2_lone_crlf_between_messages_skipped() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"\r\nOPT"), Ok(Frame::Skip(2)));
        assert!(!f.in_message());
        let mut stream = OPTIONS.to_vec();
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(OPTIONS);
        assert_eq!(
            run(strict(), &stream).0,
            vec![
                msg(OPTIONS, OPTIONS_HEAD),
                Ev::Skip(2),
                msg(OPTIONS, OPTIONS_HEAD)
            ]
        );
    }

    #[test]
    fn a2_bare_lf_keepalive_skipped() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"\n\n\nINVITE"), Ok(Frame::Skip(3)));
        assert_eq!(f.next(b"\n\r\n\r\n"), Ok(Frame::Skip(1)));
        assert_eq!(f.next(b"\n\r\nINVITE"), Ok(Frame::Skip(3)));
        // A trailing CRLF that may still become a ping is held back.
        assert_eq!(f.next(b"\n\r\n"), Ok(Frame::Skip(1)));
        assert!(!f.in_message());
    }

    // ---- early rejection ----

    #[test]
    fn a2_early_rejection_tls_client_hello() {
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let mut f = Framer::new(strict());
        assert_eq!(f.next(&hello[..1]), Ok(Frame::NotSip { len: 1 }));
        assert_eq!(f.next(&hello), Ok(Frame::NotSip { len: hello.len() }));
        assert!(!f.in_message());
    }

    #[test]
    fn a2_early_rejection_nul_byte() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"\0\0\0"), Ok(Frame::NotSip { len: 3 }));
        assert_eq!(f.next(b"INV\0ITE"), Ok(Frame::NotSip { len: 7 }));
    }

    #[test]
    fn a2_early_rejection_long_token() {
        let mut f = Framer::new(strict());
        let t32 = [b'A'; 32];
        assert_eq!(f.next(&t32), Ok(Frame::NeedMore));
        assert!(f.in_message());
        let t33 = [b'A'; 33];
        assert_eq!(f.next(&t33), Ok(Frame::NotSip { len: 33 }));
        assert!(!f.in_message());
    }

    #[test]
    fn a2_method_token_of_32_chars_accepted() {
        let mut m = vec![b'X'; 32];
        m.extend_from_slice(b" sip:a SIP/2.0\r\nl:0\r\n\r\n");
        assert_eq!(run(strict(), &m).0, vec![msg(&m, m.len())]);
        let mut long = vec![b'X'; 33];
        long.extend_from_slice(b" sip:a SIP/2.0\r\nl:0\r\n\r\n");
        assert_eq!(run(strict(), &long).0, vec![Ev::NotSip(long.clone())]);
    }

    #[test]
    fn a2_early_rejection_non_token_before_sp() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"INV(ITE sip:a"), Ok(Frame::NotSip { len: 13 }));
        assert_eq!(f.next(b" INVITE"), Ok(Frame::NotSip { len: 7 }));
        assert_eq!(f.next(b"SIP/2.1 200"), Ok(Frame::NotSip { len: 11 }));
        assert_eq!(f.next(b"{\"json\": 1}"), Ok(Frame::NotSip { len: 11 }));
        // A lone CR not followed by LF is not a keep-alive.
        assert_eq!(f.next(b"\rX"), Ok(Frame::NotSip { len: 2 }));
    }

    #[test]
    fn a2_early_rejection_len_up_to_empty_line_or_lf() {
        let mut f = Framer::new(strict());
        assert_eq!(f.next(b"<x>\r\n\r\nINVITE "), Ok(Frame::NotSip { len: 7 }));
        assert_eq!(f.next(b"<x>\n\nINVITE "), Ok(Frame::NotSip { len: 5 }));
        assert_eq!(f.next(b"<x>\r\nmore"), Ok(Frame::NotSip { len: 5 }));
        let mut f = Framer::new(cfg(16, true));
        assert_eq!(f.next(&[0xff; 100]), Ok(Frame::NotSip { len: 16 }));
    }

    #[test]
    fn a2_start_line_prefix_waits_without_verdict() {
        let mut f = Framer::new(strict());
        for p in [&b"S"[..], b"SIP", b"SIP/", b"SIP/2.0", b"INVITE", b"sip/2."] {
            assert_eq!(f.next(p), Ok(Frame::NeedMore), "{p:?}");
        }
    }

    #[test]
    fn a2_http_get_passes_early_rejection() {
        let mut f = Framer::new(strict());
        assert_eq!(
            f.next(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(Frame::NeedMore)
        );
        assert!(f.in_message());
    }

    #[test]
    fn a2_http_request_goes_to_nosip() {
        let get = b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n";
        let mut stream = get.to_vec();
        stream.extend_from_slice(OPTIONS);
        // Even with Content-Length required: the start line is not SIP.
        assert_eq!(
            run(strict(), &stream).0,
            vec![Ev::NotSip(get.to_vec()), msg(OPTIONS, OPTIONS_HEAD)]
        );
        assert_eq!(
            run_bytewise(strict(), get).0,
            vec![Ev::NotSip(get.to_vec())]
        );
    }

    // ---- Content-Length ----

    #[test]
    fn a2_compact_l_header() {
        let m = b"INVITE sip:a SIP/2.0\r\nL : 3\r\n\r\nabcEXTRA";
        let (ev, rest) = run(strict(), m);
        assert_eq!(ev, vec![msg(&m[..m.len() - 5], m.len() - 8)]);
        assert_eq!(rest, b"EXTRA");
        assert_eq!(parse_content_length(b"X\r\nl:7\r\n\r\n"), Ok(Some(7)));
    }

    #[test]
    fn a2_repeated_content_length_beyond_the_notes_is_still_checked() {
        // six equal values: more than the scan notes, the line scan decides
        let mut m = b"INVITE sip:a SIP/2.0\r\n".to_vec();
        for _ in 0..6 {
            m.extend_from_slice(b"Content-Length: 3\r\n");
        }
        m.extend_from_slice(b"\r\nabc");
        let (ev, rest) = run(strict(), &m);
        assert_eq!(ev, vec![msg(&m, m.len() - 3)]);
        assert!(rest.is_empty());
        // a different sixth value is the A.2 error, whole or byte by byte
        let n = m.len();
        m[n - 8] = b'4';
        assert_eq!(
            run(strict(), &m).0.last(),
            Some(&Ev::Err(FrameError::BadContentLength))
        );
        assert_eq!(
            run_bytewise(strict(), &m).0.last(),
            Some(&Ev::Err(FrameError::BadContentLength))
        );
    }

    #[test]
    fn a2_content_length_name_case_and_whitespace() {
        for h in [
            &b"content-length: 3"[..],
            b"CONTENT-LENGTH:3",
            b"Content-Length \t:\t 3 \t",
            b"cOnTeNt-LeNgTh  :  003",
        ] {
            let mut head = b"INVITE sip:a SIP/2.0\r\n".to_vec();
            head.extend_from_slice(h);
            head.extend_from_slice(b"\r\n\r\n");
            assert_eq!(parse_content_length(&head), Ok(Some(3)), "{h:?}");
        }
        // Names that merely contain it do not count.
        assert_eq!(
            parse_content_length(b"X\r\nX-Content-Length: 5\r\nLl: 5\r\n\r\n"),
            Ok(None)
        );
    }

    #[test]
    fn a2_folded_content_length() {
        let head = b"INVITE sip:a SIP/2.0\r\nContent-Length:\r\n  12\r\nX: y\r\n\r\n";
        assert_eq!(parse_content_length(head), Ok(Some(12)));
        // A folded line after another header is not part of Content-Length.
        let head = b"INVITE sip:a SIP/2.0\r\nl: 1\r\nSubject: a\r\n b c\r\n\r\n";
        assert_eq!(parse_content_length(head), Ok(Some(1)));
        // Digits split by folding are two numbers: bad.
        let head = b"INVITE sip:a SIP/2.0\r\nl: 1\r\n 2\r\n\r\n";
        assert_eq!(
            parse_content_length(head),
            Err(FrameError::BadContentLength)
        );
    }

    #[test]
    fn a2_conflicting_content_length() {
        let m = b"INVITE sip:a SIP/2.0\r\nContent-Length: 3\r\nl: 4\r\n\r\nabcd";
        assert_eq!(
            run(strict(), m).0,
            vec![Ev::Err(FrameError::BadContentLength)]
        );
        let same = b"INVITE sip:a SIP/2.0\r\nContent-Length: 3\r\nl: 003\r\n\r\nabc";
        assert_eq!(run(strict(), same).0, vec![msg(same, same.len() - 3)]);
    }

    #[test]
    fn a2_bad_content_length_values() {
        for v in [
            &b""[..],
            b" ",
            b"abc",
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b"1.0",
            b"99999999999999999999999999",
        ] {
            let mut head = b"INVITE sip:a SIP/2.0\r\nContent-Length: ".to_vec();
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                parse_content_length(&head),
                Err(FrameError::BadContentLength),
                "{v:?}"
            );
            assert_eq!(
                Framer::new(strict()).next(&head),
                Err(FrameError::BadContentLength)
            );
        }
    }

    #[test]
    fn a2_content_length_after_empty_line_ignored() {
        assert_eq!(parse_content_length(b"X\r\nA: b\r\n\r\nl: 5\r\n"), Ok(None));
        // The start line is never a header.
        assert_eq!(parse_content_length(b"l: 5\r\n\r\n"), Ok(None));
    }

    #[test]
    fn a2_missing_content_length_on_stream() {
        let m = b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(
            run(strict(), m).0,
            vec![Ev::Err(FrameError::NoContentLength)]
        );
        let r = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n";
        assert_eq!(
            run(strict(), r).0,
            vec![Ev::Err(FrameError::NoContentLength)]
        );
    }

    #[test]
    fn a2_missing_content_length_allowed_means_empty_body() {
        let m = b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\nOPTIONS sip:b SIP/2.0\r\n\r\n";
        let split = find_header_end(m, 0).unwrap_or(0);
        let (first, second) = m.split_at(split);
        assert_eq!(
            run(cfg(MAX, false), m).0,
            vec![msg(first, first.len()), msg(second, second.len())]
        );
    }

    // ---- size cap ----

    #[test]
    fn a2_oversize_header_never_ending() {
        let max = 1024;
        let mut d = Driver::new(cfg(max, true));
        d.feed(b"INVITE sip:a SIP/2.0\r\n");
        while !d.failed {
            assert!(d.buf.len() < max + 64);
            d.feed(b"X-Pad: 0123456789012345678901234567890123456789012345678\r\n");
        }
        assert_eq!(d.events, vec![Ev::Err(FrameError::Oversize)]);
    }

    #[test]
    fn a2_oversize_content_length_rejected_before_body() {
        let mut f = Framer::new(cfg(1024, true));
        let head = b"INVITE sip:a SIP/2.0\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(f.next(head), Err(FrameError::Oversize));
        let huge = b"INVITE sip:a SIP/2.0\r\nl: 18446744073709551615\r\n\r\n";
        assert_eq!(f.next(huge), Err(FrameError::Oversize));
    }

    #[test]
    fn a2_message_of_exactly_max_size_accepted() {
        let head = b"MESSAGE sip:a SIP/2.0\r\nl: 10\r\n\r\n";
        let mut m = head.to_vec();
        m.extend_from_slice(b"0123456789");
        assert_eq!(run(cfg(m.len(), true), &m).0, vec![msg(&m, head.len())]);
        assert_eq!(
            run(cfg(m.len() - 1, true), &m).0,
            vec![Ev::Err(FrameError::Oversize)]
        );
        // Header section ending exactly at the cap, no body.
        let h = b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n\r\n";
        assert_eq!(run(cfg(h.len(), true), h).0, vec![msg(h, h.len())]);
    }

    // ---- in_message / deadline tracking ----

    #[test]
    fn a2_in_message_tracks_message_bytes_only() {
        let mut f = Framer::new(strict());
        assert!(!f.in_message());
        assert_eq!(f.next(b"\r\n"), Ok(Frame::NeedMore));
        assert!(!f.in_message());
        assert_eq!(f.next(b"\r\nI"), Ok(Frame::Skip(2)));
        assert!(!f.in_message());
        assert_eq!(f.next(b"I"), Ok(Frame::NeedMore));
        assert!(f.in_message());
        assert_eq!(
            f.next(OPTIONS),
            Ok(Frame::Message {
                len: OPTIONS_HEAD,
                body_offset: OPTIONS_HEAD
            })
        );
        assert!(!f.in_message());
        assert_eq!(f.next(&[0x16]), Ok(Frame::NotSip { len: 1 }));
        assert!(!f.in_message());
    }

    // ---- find_header_end ----

    #[test]
    fn a2_find_header_end_resumable() {
        let b = b"A\r\nB: c\r\n\r\nbody\r\n\r\n";
        assert_eq!(find_header_end(b, 0), Some(11));
        for cut in 0usize..11 {
            let from = cut.saturating_sub(2);
            assert_eq!(find_header_end(&b[..cut], 0), None);
            assert_eq!(find_header_end(b, from), Some(11), "cut {cut}");
        }
        assert_eq!(find_header_end(b, 11), Some(19));
        assert_eq!(find_header_end(b, 100), None);
        assert_eq!(find_header_end(b"\n\n", 0), Some(2));
        assert_eq!(find_header_end(b"a\r\n\r", 0), None);
    }

    // ---- datagrams (RFC 3261 §18.3) ----

    #[test]
    fn a2_datagram_extra_body_discarded() {
        let d = b"MESSAGE sip:a SIP/2.0\r\nl: 3\r\n\r\nabcdef";
        assert_eq!(
            frame_datagram(d),
            Ok(DatagramFrame {
                len: d.len() - 3,
                body_offset: d.len() - 6,
                has_content_length: true
            })
        );
    }

    #[test]
    fn a2_datagram_body_too_short() {
        let d = b"MESSAGE sip:a SIP/2.0\r\nl: 10\r\n\r\nabc";
        assert_eq!(frame_datagram(d), Err(FrameError::BodyTooShort));
    }

    #[test]
    fn a2_datagram_without_content_length_runs_to_end() {
        let d = b"MESSAGE sip:a SIP/2.0\r\nTo: b\r\n\r\nabc\r\n\r\nxyz";
        assert_eq!(
            frame_datagram(d),
            Ok(DatagramFrame {
                len: d.len(),
                body_offset: 32,
                has_content_length: false
            })
        );
    }

    #[test]
    fn a2_datagram_unterminated() {
        assert_eq!(
            frame_datagram(b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n"),
            Err(FrameError::Unterminated)
        );
        assert_eq!(frame_datagram(b""), Err(FrameError::Unterminated));
    }

    #[test]
    fn a2_datagram_bad_content_length() {
        let d = b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(frame_datagram(d), Err(FrameError::BadContentLength));
        let d = b"OPTIONS sip:a SIP/2.0\r\nl: x\r\n\r\n";
        assert_eq!(frame_datagram(d), Err(FrameError::BadContentLength));
    }

    #[test]
    fn a2_datagram_bare_lf_and_exact_body() {
        let d = b"SIP/2.0 200 OK\nl: 2\n\nok";
        assert_eq!(
            frame_datagram(d),
            Ok(DatagramFrame {
                len: d.len(),
                body_offset: d.len() - 2,
                has_content_length: true
            })
        );
    }

    // ---- property tests ----

    /// One generated valid message and its body offset.
    fn arb_message() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let start = prop_oneof![
            "[A-Z]{1,12}".prop_map(|m| format!("{m} sip:user@example.com SIP/2.0")),
            (100u16..700).prop_map(|c| format!("SIP/2.0 {c} Reason Phrase")),
        ];
        let headers = prop::collection::vec(("X-[A-Za-z-]{0,12}", "[ -~]{0,40}"), 0..6);
        let body = prop::collection::vec(any::<u8>(), 0..300);
        (
            start,
            headers,
            body,
            0usize..4,
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(start, headers, body, cl_form, at, lf)| {
                let eol = if lf { "\n" } else { "\r\n" };
                let n = body.len();
                let cl = match cl_form {
                    0 => format!("Content-Length: {n}"),
                    1 => format!("l:{n}"),
                    2 => format!("content-LENGTH \t: {n} "),
                    _ => format!("Content-Length:{eol} {n}"),
                };
                let mut lines: Vec<String> = headers
                    .into_iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let at = at.index(lines.len() + 1);
                lines.insert(at, cl);
                let mut m = start.into_bytes();
                m.extend_from_slice(eol.as_bytes());
                for l in lines {
                    m.extend_from_slice(l.as_bytes());
                    m.extend_from_slice(eol.as_bytes());
                }
                m.extend_from_slice(eol.as_bytes());
                let body_offset = m.len();
                m.extend_from_slice(&body);
                (m, body_offset)
            })
    }

    /// A head (start line, up to 12 header lines, the empty line, then body
    /// bytes) made of Content-Length variants (folding, compact form,
    /// spaces or a CR before the colon, repeats, overflow, junk), other
    /// headers whose names start like it, and random bytes from its
    /// alphabet; LF or CRLF line ends.
    fn arb_cl_head() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            prop::sample::select(vec![
                &b"Content-Length: 12"[..],
                b"content-length:0",
                b"l: 3",
                b"L :\t7 ",
                b"Content-Length : 1 2",
                b"Content-Length\r: 4",
                b"l\r\n : 5",
                b"Content-Length:",
                b"Content-Length: x",
                b"Content-Length: 99999999999999999999999",
                b" 4",
                b"\t",
                b" ",
                b"Via: SIP/2.0/UDP h;branch=z9hG4bK1",
                b"Contact: <sip:c>",
                b"Call-ID: a",
                b"CSeq: 1 INVITE",
                b"lx: 1",
                b"l",
                b"Content-Lengthx: 1",
                b"l: 3\r",
                b"Content-Length: 3 \r",
            ])
            .prop_map(|s| s.to_vec()),
            prop::collection::vec(
                prop::sample::select(b"lL:Content- 0123456789\t\rxa".to_vec()),
                0..24
            ),
        ];
        (prop::collection::vec(line, 0..12), any::<bool>()).prop_map(|(lines, lf_only)| {
            let eol: &[u8] = if lf_only { b"\n" } else { b"\r\n" };
            let mut head = b"OPTIONS sip:a SIP/2.0".to_vec();
            head.extend_from_slice(eol);
            for l in &lines {
                head.extend_from_slice(l);
                head.extend_from_slice(eol);
            }
            head.extend_from_slice(eol);
            head.extend_from_slice(b"bodybytes");
            head
        })
    }

    fn arb_keepalive() -> impl Strategy<Value = &'static [u8]> {
        prop::sample::select(vec![
            &b""[..],
            &b""[..],
            b"\r\n",
            b"\r\n\r\n",
            b"\r\n\r\n\r\n",
            b"\n",
        ])
    }

    /// Feed `stream` in chunks whose sizes cycle through `sizes`.
    fn run_sized(c: FramerConfig, stream: &[u8], sizes: &[usize]) -> (Vec<Ev>, Vec<u8>) {
        let d = feed_sized(Driver::new(c), stream, sizes);
        (d.events, d.buf)
    }

    fn feed_sized(mut d: Driver, stream: &[u8], sizes: &[usize]) -> Driver {
        let mut rest = stream;
        for &s in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(s.clamp(1, rest.len()));
            d.feed(a);
            rest = b;
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// SPEC A.2: however a stream of valid messages (with keep-alives
        /// in between) is split into reads, the same messages come out.
        #[test]
        fn a2_prop_any_chunking_yields_same_messages(
            parts in prop::collection::vec((arb_keepalive(), arb_message()), 1..8),
            tail in arb_keepalive(),
            sizes in prop::collection::vec(1usize..80, 1..16),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (ka, (m, off)) in &parts {
                stream.extend_from_slice(ka);
                stream.extend_from_slice(m);
                expected.push(msg(m, *off));
            }
            stream.extend_from_slice(tail);
            let whole = run(strict(), &stream);
            let chunked = run_sized(strict(), &stream, &sizes);
            let bytewise = run_bytewise(strict(), &stream);
            prop_assert_eq!(&chunked, &whole);
            prop_assert_eq!(&bytewise, &whole);
            // the one-walk path: the same events, and whole reads are taken by it
            let (one_whole, taken) = run_sized_one_walk(strict(), &stream, &[stream.len()]);
            prop_assert_eq!(&one_whole, &whole);
            prop_assert_eq!(taken, parts.len());
            let (one_chunked, _) = run_sized_one_walk(strict(), &stream, &sizes);
            prop_assert_eq!(&one_chunked, &whole);
            let msgs: Vec<Ev> = whole
                .0
                .iter()
                .filter(|e| matches!(e, Ev::Msg { .. }))
                .cloned()
                .collect();
            prop_assert_eq!(msgs, expected);
            let only_frames = whole.0.iter().all(|e| matches!(e, Ev::Msg { .. } | Ev::Ping | Ev::Skip(_)));
            prop_assert!(only_frames, "unexpected event in {:?}", whole.0);
            // Only a (possible) partial ping is left over.
            prop_assert!(whole.1.len() < 4);
        }

        /// Arbitrary bytes: no panic, every frame within the buffer and the
        /// cap, never NeedMore with `max_msg_size` bytes buffered (checked
        /// by the driver), datagram framing within bounds.
        #[test]
        fn a2_prop_arbitrary_bytes_are_safe(
            pieces in prop::collection::vec(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::sample::select(vec![
                    &b"INVITE sip:a SIP/2.0"[..], b"SIP/2.0 200 OK", b"\r\n", b"\n",
                    b"\r\n\r\n", b"Content-Length: ", b"l:", b"12", b"0", b" ", b"\t",
                    b":", b"GET / HTTP/1.1", b"\x16\x03\x01", b"99999999999999999999",
                ]).prop_map(|s| s.to_vec()),
            ], 0..40),
            max in 16usize..600,
            require in any::<bool>(),
            sizes in prop::collection::vec(1usize..100, 1..8),
        ) {
            let bytes: Vec<u8> = pieces.concat();
            let c = cfg(max, require);
            let chunked = run_sized(c, &bytes, &sizes);
            let whole = run(c, &bytes);
            // the one-walk path frames exactly as the framer does, errors included
            prop_assert_eq!(run_sized_one_walk(c, &bytes, &sizes).0, chunked);
            prop_assert_eq!(run_sized_one_walk(c, &bytes, &[bytes.len().max(1)]).0, whole);
            if let Ok(d) = frame_datagram(&bytes) {
                prop_assert!(d.body_offset <= d.len && d.len <= bytes.len());
            }
            let _ = parse_content_length(&bytes);
        }

        /// RFC 3261 §18.3 / §20.14 on the UDP path: Content-Length read from
        /// the parsed head's spans is what the line-by-line scan of the same
        /// head reads (value or error), for every head that parses —
        /// folding, compact form, spaces or a CR before the colon, repeated
        /// headers, overflow, junk in the value.
        #[test]
        fn a2_prop_parsed_content_length_agrees_with_line_scan(
            head in arb_cl_head(),
        ) {
            let Some(end) = find_header_end(&head, 0) else { return Ok(()) };
            let mut hs = Vec::new();
            if let Ok(m) = SipMsg::parse(&head, end, &mut hs) {
                prop_assert_eq!(parsed_content_length(&m), parse_content_length(&head[..end]));
            }
        }

        /// RFC 3261 §20.14 on the TCP path: the Content-Length lines noted
        /// while the header end is searched give what the line-by-line scan
        /// gives (value or error), for every head, including more
        /// Content-Length lines than the notes hold.
        #[test]
        fn a2_prop_noted_content_length_agrees_with_line_scan(head in arb_cl_head()) {
            let mut notes = ClNotes::default();
            let end = scan_head(&head, 0, Some(&mut notes));
            prop_assert_eq!(end, find_header_end(&head, 0));
            let Some(end) = end else { return Ok(()) };
            prop_assert_eq!(notes.content_length(&head[..end]), parse_content_length(&head[..end]));
        }
    }

    fn parsed_cl(d: &[u8]) -> Result<Option<usize>, FrameError> {
        let end = find_header_end(d, 0).unwrap_or(d.len());
        let mut hs = Vec::new();
        let m = SipMsg::parse(d, end, &mut hs).unwrap_or_else(|e| panic!("parse: {e}"));
        parsed_content_length(&m)
    }

    #[test]
    fn s20_14_parsed_content_length_long_compact_folded_and_absent() {
        assert_eq!(
            parsed_cl(b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabc"),
            Ok(Some(3))
        );
        assert_eq!(
            parsed_cl(b"OPTIONS sip:a SIP/2.0\r\nContent-Length :\r\n  12\r\n\r\n"),
            Ok(Some(12))
        );
        assert_eq!(
            parsed_cl(b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:b>\r\n\r\n"),
            Ok(None)
        );
    }

    #[test]
    fn s20_14_parsed_content_length_errors_as_line_scan() {
        let two = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(parsed_cl(two), Err(FrameError::BadContentLength));
        let same = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parsed_cl(same), Ok(Some(3)));
        let split = b"OPTIONS sip:a SIP/2.0\r\nl: 1 2\r\n\r\n";
        assert_eq!(parsed_cl(split), Err(FrameError::BadContentLength));
        let empty = b"OPTIONS sip:a SIP/2.0\r\nl:\r\n\r\n";
        assert_eq!(parsed_cl(empty), Err(FrameError::BadContentLength));
    }
}
