//! Zero-copy SIP message index: the start line and one span per header over
//! the message bytes (RFC 3261 §7). Nothing is copied or normalised; the
//! forwarding path splices these spans into its output buffer.

/// A byte range `start..end` into the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    #[inline]
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// Headers the proxy looks at; everything else is `Other` and forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    ContentLength,
    Contact,
    Other,
}

impl HeaderKind {
    /// Classify a header name, long or compact form (RFC 3261 §7.3.3), case-insensitively.
    pub fn classify(name: &[u8]) -> HeaderKind {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderKind::Via,
                b'f' => HeaderKind::From,
                b't' => HeaderKind::To,
                b'i' => HeaderKind::CallId,
                b'l' => HeaderKind::ContentLength,
                b'm' => HeaderKind::Contact,
                _ => HeaderKind::Other,
            };
        }
        // by length first, then literal comparisons (the compiler unrolls
        // them): at most two names compared
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is(b"to") => HeaderKind::To,
            3 if is(b"via") => HeaderKind::Via,
            4 if is(b"from") => HeaderKind::From,
            4 if is(b"cseq") => HeaderKind::CSeq,
            5 if is(b"route") => HeaderKind::Route,
            7 if is(b"call-id") => HeaderKind::CallId,
            7 if is(b"contact") => HeaderKind::Contact,
            12 if is(b"max-forwards") => HeaderKind::MaxForwards,
            12 if is(b"record-route") => HeaderKind::RecordRoute,
            14 if is(b"content-length") => HeaderKind::ContentLength,
            _ => HeaderKind::Other,
        }
    }
}

/// One header field: its whole line(s) including the line break(s), its
/// name, and its value with surrounding whitespace trimmed (folded lines included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub kind: HeaderKind,
    pub line: Span,
    pub name: Span,
    pub value: Span,
}

/// The first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `version_ok` is false for a request line of another SIP version (`SIP/3.0`): answer 505.
    Request {
        method: Span,
        uri: Span,
        version_ok: bool,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// Why the bytes are not a SIP message at all (goes to the nosip path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("bad start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed header line")]
    HeaderLine,
    #[error("too many headers")]
    TooManyHeaders,
}

/// Hard cap on header fields per message (bounded work and memory).
pub const MAX_HEADERS: usize = 256;

/// A parsed message: borrowed bytes plus spans.
#[derive(Debug)]
pub struct SipMsg<'a> {
    pub buf: &'a [u8],
    pub start: StartLine,
    /// The start line including its line break.
    pub start_line: Span,
    pub headers: &'a [HeaderSpan],
    /// Offset of the empty line that ends the header section.
    pub headers_end: usize,
    /// Offset of the body (after the empty line).
    pub body_offset: usize,
}

/// A 256-entry byte-class table, built at compile time from a predicate
/// on the byte `$b`.
macro_rules! byte_table {
    (|$b:ident| $pred:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            t[i] = $pred;
            i += 1;
        }
        t
    }};
}

/// RFC 3261 §25.1 `token` characters, as a lookup table.
static TOKEN: [bool; 256] = byte_table!(|b| b.is_ascii_alphanumeric()
    || matches!(
        b,
        b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
    ));

#[inline]
pub fn is_token_char(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Bytes a URI never holds inside a header value: CTL, SP and the
/// delimiters `<`, `>`, `"` (RFC 3261 §25.1).
static URI_BAD: [bool; 256] = byte_table!(|b| b <= b' ' || matches!(b, b'<' | b'>' | b'"' | 0x7f));

/// The bytes of a SIP URI that stand for themselves (RFC 3261 §25.1
/// `unreserved`, `reserved`, and the `[`, `]` of an IPv6 reference); `%`
/// starts an escape and is checked apart.
static URI_CHAR: [bool; 256] = byte_table!(|b| b.is_ascii_alphanumeric()
    || matches!(
        b,
        b'-' | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')'
            | b';'
            | b'/'
            | b'?'
            | b':'
            | b'@'
            | b'&'
            | b'='
            | b'+'
            | b'$'
            | b','
            | b'['
            | b']'
    ));

#[inline]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Trim SP/HTAB/CR/LF at both ends of `buf[s..e]`.
fn trim(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(buf[s], b' ' | b'\t' | b'\r' | b'\n') {
        s += 1;
    }
    while e > s && matches!(buf[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

/// The common header line: a token name at `pos`, optional white space, a
/// colon. Returns (colon, name end); `None` sends the caller to the general
/// rule (first colon of the line, the trimmed name all token characters),
/// which gives the same answer for every line this one accepts.
#[inline]
fn header_name_fast(buf: &[u8], pos: usize, e: usize) -> Option<(usize, usize)> {
    let line = &buf[pos..e];
    let mut i = pos
        + line
            .iter()
            .position(|&b| !is_token_char(b))
            .unwrap_or(line.len());
    if i == pos {
        return None;
    }
    let ne = i;
    while i < e && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    (i < e && buf[i] == b':').then_some((i, ne))
}

/// End of the line starting at `from` (index after its `\n`), or `limit`.
fn line_end(buf: &[u8], from: usize, limit: usize) -> usize {
    match memchr::memchr(b'\n', &buf[from..limit]) {
        Some(i) => from + i + 1,
        None => limit,
    }
}

/// Line content end without the line break.
fn content_end(buf: &[u8], s: usize, e: usize) -> usize {
    let mut e = e;
    if e > s && buf[e - 1] == b'\n' {
        e -= 1;
    }
    if e > s && buf[e - 1] == b'\r' {
        e -= 1;
    }
    e
}

/// What a lenient parse ([`SipMsg::parse_lenient`]) had to skip: enough to
/// answer a request `400` naming the problem instead of dropping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Nothing: the message parses strictly.
    None,
    /// The request line is malformed but recognisable: a method token, then
    /// (with extra, missing or embedded whitespace) a URI and `SIP/x.y`.
    RequestLine,
    /// The first header line that is not `token *WSP ":" value` (control
    /// bytes or separators in the name, no colon); that line is not indexed.
    HeaderLine(Span),
}

impl<'a> SipMsg<'a> {
    /// Index `buf` (one framed message, its body starting at `body_offset`)
    /// into `headers` (cleared first; reused across messages).
    pub fn parse(
        buf: &'a [u8],
        body_offset: usize,
        headers: &'a mut Vec<HeaderSpan>,
    ) -> Result<SipMsg<'a>, ParseError> {
        Self::parse_inner(buf, Some(body_offset), headers, false).map(|(m, _)| m)
    }

    /// Like [`Self::parse`] for a buffer whose head end is not known yet (a
    /// datagram): the walk over the lines also finds the empty line that
    /// ends the head, where [`crate::sip::framer::find_header_end`] would,
    /// instead of a walk of its own before the parse. `Ok(None)`: the
    /// lines before any malformed one parsed, and no empty line follows.
    pub fn parse_head(
        buf: &'a [u8],
        headers: &'a mut Vec<HeaderSpan>,
    ) -> Result<Option<SipMsg<'a>>, ParseError> {
        // unterminated: the walk ran to the end of the buffer
        Self::parse_inner(buf, None, headers, false)
            .map(|(m, _)| (m.headers_end < buf.len()).then_some(m))
    }

    /// Like [`Self::parse`], but a malformed request line or header line is
    /// reported as a [`Defect`] instead of failing the parse (the cold
    /// parse-failure path uses it to answer such a request `400`).
    pub fn parse_lenient(
        buf: &'a [u8],
        body_offset: usize,
        headers: &'a mut Vec<HeaderSpan>,
    ) -> Result<(SipMsg<'a>, Defect), ParseError> {
        Self::parse_inner(buf, Some(body_offset), headers, true)
    }

    /// `body_offset: None`: the head ends at the first empty line the walk
    /// meets (an LF followed by LF or CRLF); when there is none, the walk
    /// runs to the end of `buf` and `headers_end` is `buf.len()`.
    fn parse_inner(
        buf: &'a [u8],
        body_offset: Option<usize>,
        headers: &'a mut Vec<HeaderSpan>,
        lenient: bool,
    ) -> Result<(SipMsg<'a>, Defect), ParseError> {
        headers.clear();
        let find_end = body_offset.is_none();
        let mut body_offset = body_offset.unwrap_or(buf.len()).min(buf.len());
        // the empty line before the body: the last line break(s) of the head
        let mut headers_end = body_offset;
        if !find_end && headers_end > 0 && buf[headers_end - 1] == b'\n' {
            headers_end -= 1;
            if headers_end > 0 && buf[headers_end - 1] == b'\r' {
                headers_end -= 1;
            }
        }
        let sl_end = line_end(buf, 0, headers_end.max(1).min(buf.len()));
        let sl_content = content_end(buf, 0, sl_end);
        let mut defect = Defect::None;
        let start = match parse_start_line(buf, 0, sl_content) {
            Ok(s) => s,
            Err(ParseError::StartLine) if lenient => {
                defect = Defect::RequestLine;
                parse_request_line_lenient(buf, sl_content).ok_or(ParseError::StartLine)?
            }
            Err(e) => return Err(e),
        };
        let mut pos = sl_end;
        while pos < headers_end {
            // every line starts just after an LF: an empty one ends the head
            if find_end && let Some(b) = crate::sip::framer::empty_line_end(buf, pos) {
                (headers_end, body_offset) = (pos, b);
                break;
            }
            let mut e = line_end(buf, pos, headers_end);
            // folded continuation lines (RFC 3261 §7.3.1) belong to this header
            while e < headers_end && is_ws(buf[e]) {
                e = line_end(buf, e, headers_end);
            }
            let (colon, name) = match header_name_fast(buf, pos, e) {
                Some((c, ne)) => (Some(c), Some((pos, ne))),
                None => {
                    let colon = memchr::memchr(b':', &buf[pos..e]).map(|i| pos + i);
                    let name = colon.map(|c| trim(buf, pos, c)).filter(|&(ns, ne)| {
                        ns == pos && ns < ne && buf[ns..ne].iter().all(|&b| is_token_char(b))
                    });
                    (colon, name)
                }
            };
            let (Some(colon), Some((ns, ne))) = (colon, name) else {
                if !lenient {
                    return Err(ParseError::HeaderLine);
                }
                if defect == Defect::None {
                    defect = Defect::HeaderLine(Span::new(pos, e));
                }
                pos = e;
                continue;
            };
            let (vs, ve) = trim(buf, colon + 1, e);
            if headers.len() >= MAX_HEADERS {
                return Err(ParseError::TooManyHeaders);
            }
            headers.push(HeaderSpan {
                kind: HeaderKind::classify(&buf[ns..ne]),
                line: Span::new(pos, e),
                name: Span::new(ns, ne),
                value: Span::new(vs, ve),
            });
            pos = e;
        }
        Ok((
            SipMsg {
                buf,
                start,
                start_line: Span::new(0, sl_end),
                headers,
                headers_end,
                body_offset,
            },
            defect,
        ))
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { method, .. } => method.get(self.buf),
            StartLine::Response { .. } => b"",
        }
    }

    pub fn uri(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { uri, .. } => uri.get(self.buf),
            StartLine::Response { .. } => b"",
        }
    }

    pub fn first(&self, kind: HeaderKind) -> Option<&'a HeaderSpan> {
        self.headers.iter().find(|h| h.kind == kind)
    }

    pub fn count(&self, kind: HeaderKind) -> usize {
        self.headers.iter().filter(|h| h.kind == kind).count()
    }

    pub fn value(&self, h: &HeaderSpan) -> &'a [u8] {
        h.value.get(self.buf)
    }

    pub fn body(&self) -> &'a [u8] {
        &self.buf[self.body_offset..]
    }
}

fn parse_start_line(buf: &[u8], s: usize, e: usize) -> Result<StartLine, ParseError> {
    let line = &buf[s..e];
    if let Some(rest) = line.strip_prefix(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        if !rest.starts_with(b"2.0 ") {
            return if rest.iter().take(8).any(|&b| b == b' ') {
                Err(ParseError::Version)
            } else {
                Err(ParseError::StartLine)
            };
        }
        let code_s = s + 8;
        if e < code_s + 3 {
            return Err(ParseError::StartLine);
        }
        let digits = &buf[code_s..code_s + 3];
        if !digits.iter().all(u8::is_ascii_digit) || (e > code_s + 3 && buf[code_s + 3] != b' ') {
            return Err(ParseError::StartLine);
        }
        let code = digits.iter().fold(0u16, |a, &d| a * 10 + (d - b'0') as u16);
        if !(100..700).contains(&code) {
            return Err(ParseError::StartLine);
        }
        let rs = (code_s + 4).min(e);
        return Ok(StartLine::Response {
            code,
            reason: Span::new(rs, e),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::StartLine)?;
    if sp1 == 0 || sp2 <= sp1 + 1 {
        return Err(ParseError::StartLine);
    }
    if !line[..sp1].iter().all(|&b| is_token_char(b)) {
        return Err(ParseError::StartLine);
    }
    let uri = &line[sp1 + 1..sp2];
    if uri.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(ParseError::StartLine);
    }
    let version = &line[sp2 + 1..];
    // `SIP/x.y` is a SIP request of a version we do not support (505); anything else is not SIP
    let version_ok = version == b"SIP/2.0";
    let sip_like = version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/");
    if !version_ok && !sip_like {
        return Err(ParseError::StartLine);
    }
    Ok(StartLine::Request {
        method: Span::new(s, s + sp1),
        uri: Span::new(s + sp1 + 1, s + sp2),
        version_ok,
    })
}

/// A request line with whitespace where RFC 3261 §7.1 allows exactly one SP
/// (RFC 4475 §3.1.2.8–3.1.2.10: `lwsruri`, `lwsstart`, `trws`): a method
/// token, whitespace, a URI (possibly with embedded whitespace), whitespace
/// and `SIP/x.y`, then optional trailing whitespace. `None` when it is not
/// recognisably a SIP request line at all.
fn parse_request_line_lenient(buf: &[u8], e: usize) -> Option<StartLine> {
    let line = &buf[..e];
    let m_end = line.iter().position(|&b| !is_token_char(b))?;
    if m_end == 0 || !is_ws(line[m_end]) || line.iter().any(|&b| b < b' ' && b != b'\t') {
        return None;
    }
    let (us, le) = trim(buf, m_end, e);
    let v_start = line[us..le].iter().rposition(|&b| is_ws(b))? + us + 1;
    let version = &line[v_start..le];
    if version.len() <= 4 || !version[..4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    let (us, ue) = trim(buf, us, v_start);
    if us >= ue {
        return None;
    }
    Some(StartLine::Request {
        method: Span::new(0, m_end),
        uri: Span::new(us, ue),
        version_ok: version == b"SIP/2.0",
    })
}

/// A parsed via-parm (RFC 3261 §20.42): the first one of a Via header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    /// The whole via-parm (without a following comma and other via-parms).
    pub parm: Span,
    /// `UDP`, `TCP`, ...
    pub transport: Span,
    pub host: Span,
    pub port: Option<u16>,
    /// Span of the sent-by (host[:port]).
    pub sent_by: Span,
    pub branch: Option<Span>,
    pub received: Option<Span>,
    /// `rport` present; `Some(value)` when it has one.
    pub rport: Option<Option<u16>>,
    /// End of the `rport` param name (to splice `=PORT` after it).
    pub rport_name_end: Option<u32>,
    /// Kamailio-style connection id (`i=`).
    pub conn_id: Option<u64>,
    /// Where the next via-parm in the same header value begins, if any.
    pub next: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Via")]
pub struct ViaError;

fn parse_u16(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = b.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
    u16::try_from(v).ok()
}

/// Parse an unsigned decimal (e.g. CSeq number, Max-Forwards); `None` when not all digits or too large.
pub fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    u32::try_from(b.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64)).ok()
}

/// Split host[:port] at `s..e`; IPv6 references in brackets keep the brackets in the host span.
pub fn split_host_port(buf: &[u8], s: usize, e: usize) -> Result<(Span, Option<u16>), ViaError> {
    if s >= e {
        return Err(ViaError);
    }
    if buf[s] == b'[' {
        let close = memchr::memchr(b']', &buf[s..e]).ok_or(ViaError)? + s;
        let host = Span::new(s, close + 1);
        return match &buf[close + 1..e] {
            [] => Ok((host, None)),
            [b':', p @ ..] => Ok((host, Some(parse_u16(p).ok_or(ViaError)?))),
            _ => Err(ViaError),
        };
    }
    match memchr::memchr(b':', &buf[s..e]) {
        Some(i) => {
            let p = parse_u16(&buf[s + i + 1..e]).ok_or(ViaError)?;
            if i == 0 {
                return Err(ViaError);
            }
            Ok((Span::new(s, s + i), Some(p)))
        }
        None => Ok((Span::new(s, e), None)),
    }
}

/// `SIP / 2.0 / UDP` (RFC 3261 §20.42 sent-protocol, LWS allowed around
/// each `/`) at the start of `parm`: the index just past the transport token,
/// and the transport's range in `parm`.
fn sent_protocol(parm: &[u8]) -> Option<(usize, usize)> {
    let name = token_end(parm, 0);
    if !parm[..name].eq_ignore_ascii_case(b"SIP") {
        return None;
    }
    let mut i = name;
    let mut field = (0, 0);
    for _ in 0..2 {
        i = skip_lws(parm, i);
        if parm.get(i) != Some(&b'/') {
            return None;
        }
        i = skip_lws(parm, i + 1);
        let t = token_end(parm, i);
        if t == i {
            return None;
        }
        field = (i, t);
        i = t;
    }
    Some((i, field.0))
}

/// End of the token starting at `i` in `b`.
fn token_end(b: &[u8], i: usize) -> usize {
    run_end(b, i, &TOKEN)
}

/// Skip linear white space (SP, HTAB, and the CRLF of a folded line).
fn skip_lws(b: &[u8], mut i: usize) -> usize {
    // usually none or one byte: a plain loop beats an iterator here
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    i
}

/// The end of the run of `class` bytes starting at `b[i]` (`i` itself when
/// `b[i]` is not one, `b.len()` when the run goes to the end; `i` may be
/// past the end). An iterator over a table: no bounds check per byte.
#[inline]
fn run_end(b: &[u8], i: usize, class: &[bool; 256]) -> usize {
    let rest = b.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|&c| !class[c as usize])
        .unwrap_or(rest.len())
}

/// A display name's bytes before `<`: token characters and LWS.
static TOKEN_OR_LWS: [bool; 256] =
    byte_table!(|b| TOKEN[b as usize] || matches!(b, b' ' | b'\t' | b'\r' | b'\n'));

/// Anything but `;` and LWS: the bytes of a Via sent-by or unquoted
/// parameter value, which end at either.
static NOT_SEMI_LWS: [bool; 256] =
    byte_table!(|b| !matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n'));

/// SP, HTAB, CR, LF: the bytes of RFC 3261 LWS (a folded line keeps its CRLF
/// inside a header value).
#[inline]
fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Parse the first via-parm of the Via value at `value` in `buf`. Linear
/// white space, folded lines included, is accepted wherever RFC 3261 §20.42
/// allows it: around the `/` of the sent-protocol, before the sent-by, and
/// around `;` and `=` of the parameters.
pub fn parse_via(buf: &[u8], value: Span) -> Result<Via, ViaError> {
    let (s, e) = (value.start as usize, value.end as usize);
    // the via-parm ends at the first comma outside a quoted string
    let mut end = e;
    let mut next = None;
    let mut quoted = false;
    for i in memchr::memchr2_iter(b',', b'"', &buf[s..e]) {
        if buf[s + i] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            end = s + i;
            let n = skip_lws(&buf[..e], s + i + 1);
            if n < e {
                next = Some(n as u32);
            }
            break;
        }
    }
    let (ps, pe) = trim(buf, s, end);
    let parm = &buf[ps..pe];
    let (mut i, ts) = sent_protocol(parm).ok_or(ViaError)?;
    let transport = Span::new(ps + ts, ps + i);
    if i >= parm.len() || !is_lws(parm[i]) {
        return Err(ViaError);
    }
    i = skip_lws(parm, i);
    let hs = i;
    i = run_end(parm, i, &NOT_SEMI_LWS);
    let sent_by = Span::new(ps + hs, ps + i);
    let (host, port) = split_host_port(buf, ps + hs, ps + i)?;
    let mut via = Via {
        parm: Span::new(ps, pe),
        transport,
        host,
        port,
        sent_by,
        branch: None,
        received: None,
        rport: None,
        rport_name_end: None,
        conn_id: None,
        next,
    };
    // params: *( SEMI via-params ), LWS tolerated around ';' and '='
    loop {
        i = skip_lws(parm, i);
        if i >= parm.len() {
            break;
        }
        if parm[i] != b';' {
            return Err(ViaError);
        }
        let ns = skip_lws(parm, i + 1);
        let ne = token_end(parm, ns);
        if ns == ne {
            return Err(ViaError);
        }
        i = skip_lws(parm, ne);
        let mut val = None;
        if i < parm.len() && parm[i] == b'=' {
            i = skip_lws(parm, i + 1);
            let vs = i;
            if i < parm.len() && parm[i] == b'"' {
                i = quoted_end(parm, i).ok_or(ViaError)?;
            } else {
                i = run_end(parm, i, &NOT_SEMI_LWS);
            }
            if i == vs {
                return Err(ViaError);
            }
            val = Some(Span::new(ps + vs, ps + i));
        } else {
            i = ne;
        }
        let name = &parm[ns..ne];
        if name.eq_ignore_ascii_case(b"branch") {
            via.branch = val;
        } else if name.eq_ignore_ascii_case(b"received") {
            via.received = val;
        } else if name.eq_ignore_ascii_case(b"rport") {
            via.rport = Some(val.and_then(|v| parse_u16(v.get(buf))));
            via.rport_name_end = Some((ps + ne) as u32);
        } else if name == b"i" {
            via.conn_id = val.and_then(|v| {
                let v = v.get(buf);
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                Some(v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64))
            });
        }
    }
    Ok(via)
}

/// The sent-by port of a Via value whose parameters may be malformed (the
/// cold path that still answers such a request): `Some(port)` when the
/// sent-protocol and sent-by parse.
pub fn via_sent_by_port(buf: &[u8], value: Span) -> Option<Option<u16>> {
    let (ps, pe) = trim(buf, value.start as usize, value.end as usize);
    let parm = &buf[ps..pe];
    let (i, _) = sent_protocol(parm)?;
    let hs = skip_lws(parm, i);
    let mut he = hs;
    while he < parm.len() && !matches!(parm[he], b';' | b',') && !is_lws(parm[he]) {
        he += 1;
    }
    split_host_port(buf, ps + hs, ps + he).ok().map(|(_, p)| p)
}

/// Index just past the quoted string starting at `b[i] == '"'`
/// (quoted-pair escapes honoured), `None` when it is not terminated or holds
/// a control byte that is neither escaped nor LWS (RFC 3261 §25.1 qdtext).
fn quoted_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => {
                if matches!(b.get(j + 1), None | Some(b'\r' | b'\n')) {
                    return None;
                }
                j += 2;
            }
            c if (c < b' ' && !is_lws(c)) || c == 0x7f => return None,
            _ => j += 1,
        }
    }
    None
}

/// Is the value at `value` a well-formed From / To (`list == false`) or
/// Contact / Route / Record-Route (`list == true`) value (RFC 3261 §20.10,
/// §20.20, §20.39, §25.1)? `( name-addr / addr-spec ) *( ";" param )`,
/// comma-separated when `list` (Contact may also be `*`). A display name is
/// tokens and LWS or a terminated quoted string; the URI has a scheme (any:
/// unknown schemes are valid in headers, RFC 4475 §3.3.4) and no white
/// space or control bytes; an addr-spec without `<>` holds no `?` or `,`
/// (§20: such a URI must be in angle brackets). LWS, folded lines included,
/// is accepted between all elements. No allocation.
pub fn check_addr_value(buf: &[u8], value: Span, list: bool) -> bool {
    let v = value.get(buf);
    if list && v == b"*" {
        return true;
    }
    let mut i = 0;
    loop {
        i = skip_lws(v, i);
        let Some(after) = addr_entry(v, i, list) else {
            return false;
        };
        i = skip_lws(v, after);
        // header parameters
        while i < v.len() && v[i] == b';' {
            let ns = skip_lws(v, i + 1);
            let ne = token_end(v, ns);
            if ns == ne {
                return false;
            }
            i = skip_lws(v, ne);
            if i < v.len() && v[i] == b'=' {
                let vs = skip_lws(v, i + 1);
                if vs < v.len() && v[vs] == b'"' {
                    let Some(q) = quoted_end(v, vs) else {
                        return false;
                    };
                    i = q;
                } else {
                    i = vs;
                    while i < v.len()
                        && !is_lws(v[i])
                        && !matches!(v[i], b';' | b',' | b'"' | b'<' | b'>')
                    {
                        if v[i] < b' ' || v[i] == 0x7f {
                            return false;
                        }
                        i += 1;
                    }
                    if i == vs {
                        return false;
                    }
                }
                i = skip_lws(v, i);
            }
        }
        if i >= v.len() {
            return true;
        }
        if !(list && v[i] == b',') {
            return false;
        }
        i += 1;
    }
}

/// One name-addr or addr-spec starting at `v[i]`; the index after it.
fn addr_entry(v: &[u8], i: usize, list: bool) -> Option<usize> {
    // a table and no early exit: two instructions a byte over a short URI
    let uri_ok = |u: &[u8]| {
        uri_scheme(u).is_some() && !u.iter().fold(false, |bad, &c| bad | URI_BAD[c as usize])
    };
    let laquot = if v.get(i) == Some(&b'"') {
        // quoted display name, then optional LWS and '<'
        let j = skip_lws(v, quoted_end(v, i)?);
        (v.get(j) == Some(&b'<')).then_some(j)?
    } else {
        // *(token LWS) display name before '<', or the addr-spec itself
        let j = run_end(v, i, &TOKEN_OR_LWS);
        if v.get(j) == Some(&b'<') {
            j
        } else {
            // addr-spec: the URI runs to the first ';' (header params) or ','
            let rest = &v[i..];
            let k = i + if list {
                memchr::memchr2(b';', b',', rest)
            } else {
                memchr::memchr(b';', rest)
            }
            .unwrap_or(rest.len());
            let mut ue = k;
            while ue > i && is_lws(v[ue - 1]) {
                ue -= 1;
            }
            let uri = &v[i..ue];
            let spec_bad = uri
                .iter()
                .fold(false, |bad, &c| bad | (c == b'?') | (c == b','));
            return (uri_ok(uri) && !spec_bad).then_some(k);
        }
    };
    let close = memchr::memchr(b'>', &v[laquot..])? + laquot;
    uri_ok(&v[laquot + 1..close]).then_some(close + 1)
}

/// A name-addr or addr-spec (RFC 3261 §25.1) as found in Route / Record-Route:
/// the first one of a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr {
    /// The whole entry (up to, not including, a separating comma).
    pub entry: Span,
    /// The URI (inside `<>` when present).
    pub uri: Span,
    /// Where the next entry begins, if any.
    pub next: Option<u32>,
}

/// First name-addr of a header value.
pub fn parse_name_addr(buf: &[u8], value: Span) -> Option<NameAddr> {
    let (s, e) = (value.start as usize, value.end as usize);
    let mut quoted = false;
    let mut angle: Option<usize> = None;
    let mut uri = None;
    let mut end = e;
    let mut next = None;
    let mut i = s;
    while i < e {
        let b = buf[i];
        match b {
            b'"' if angle.is_none() => quoted = !quoted,
            b'\\' if quoted => i += 1,
            b'<' if !quoted && angle.is_none() && uri.is_none() => angle = Some(i + 1),
            b'>' if !quoted && angle.is_some() => {
                uri = angle.map(|a| Span::new(a, i));
                angle = None;
            }
            b',' if !quoted && angle.is_none() => {
                end = i;
                let mut n = i + 1;
                while n < e && matches!(buf[n], b' ' | b'\t' | b'\r' | b'\n') {
                    n += 1;
                }
                if n < e {
                    next = Some(n as u32);
                }
                break;
            }
            _ => {}
        }
        i += 1;
    }
    if quoted || angle.is_some() {
        return None;
    }
    let (es, ee) = trim(buf, s, end);
    if es == ee {
        return None;
    }
    let uri = match uri {
        Some(u) => u,
        // addr-spec without brackets: header params would be ambiguous, URI runs to ';'
        None => {
            let stop = memchr::memchr(b';', &buf[es..ee]).map_or(ee, |j| es + j);
            Span::new(es, stop)
        }
    };
    Some(NameAddr {
        entry: Span::new(es, ee),
        uri,
        next,
    })
}

/// The parts of a SIP URI the router needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriParts {
    pub sips: bool,
    pub user: bool,
    pub host: Span,
    pub port: Option<u16>,
    /// `transport=` parameter value.
    pub transport: Option<Span>,
    /// `lr` parameter present.
    pub lr: bool,
    /// `maddr=` parameter present.
    pub maddr: Option<Span>,
    /// A `?headers` part is present (not allowed in a Request-URI).
    pub headers: bool,
}

/// Scheme of a URI, lower-cased check; `None` when there is no `scheme:`.
pub fn uri_scheme(uri: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', uri)?;
    let scheme = &uri[..colon];
    if scheme.is_empty()
        || !scheme[0].is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    Some(scheme)
}

/// Split a `sip:`/`sips:` URI at `uri` in `buf` (RFC 3261 §19.1.1).
pub fn parse_sip_uri(buf: &[u8], uri: Span) -> Option<UriParts> {
    let (s, e) = (uri.start as usize, uri.end as usize);
    let u = &buf[s..e];
    let (sips, mut i) = if u.len() > 4 && u[..4].eq_ignore_ascii_case(b"sip:") {
        (false, 4)
    } else if u.len() > 5 && u[..5].eq_ignore_ascii_case(b"sips:") {
        (true, 5)
    } else {
        return None;
    };
    // the userinfo ends at the last '@': it cannot appear unescaped in the
    // host, the parameters or the headers, while the user part may hold
    // ';', '?', '/', ... (RFC 3261 §25.1 user-unreserved; RFC 4475 §3.1.1.2,
    // §3.1.1.9)
    let user = match memchr::memrchr(b'@', &u[i..]) {
        Some(at) => {
            i += at + 1;
            true
        }
        None => false,
    };
    let hp_end = u[i..]
        .iter()
        .position(|&b| b == b';' || b == b'?')
        .map_or(u.len(), |p| i + p);
    let (host, port) = split_host_port(buf, s + i, s + hp_end).ok()?;
    if host.is_empty() {
        return None;
    }
    let mut parts = UriParts {
        sips,
        user,
        host,
        port,
        transport: None,
        lr: false,
        maddr: None,
        headers: false,
    };
    let params_end = u[hp_end..]
        .iter()
        .position(|&b| b == b'?')
        .map_or(u.len(), |p| hp_end + p);
    parts.headers = params_end < u.len();
    let mut j = hp_end;
    while j < params_end && u[j] == b';' {
        let ps = j + 1;
        let pe = u[ps..params_end]
            .iter()
            .position(|&b| b == b';')
            .map_or(params_end, |p| ps + p);
        let p = &u[ps..pe];
        let (name, val) = match memchr::memchr(b'=', p) {
            Some(k) => (&p[..k], Some(Span::new(s + ps + k + 1, s + pe))),
            None => (p, None),
        };
        if name.eq_ignore_ascii_case(b"lr") {
            parts.lr = true;
        } else if name.eq_ignore_ascii_case(b"transport") {
            parts.transport = val;
        } else if name.eq_ignore_ascii_case(b"maddr") {
            parts.maddr = val;
        }
        j = pe;
    }
    Some(parts)
}

/// RFC 3261 §19.1.1 / §25.1 rules for a SIP URI that [`parse_sip_uri`] has
/// split: only URI characters (unreserved, reserved, `%HH` escapes, the
/// brackets of an IPv6 reference), and a host that is an IPv6 reference or a
/// host name / IPv4 address (letters, digits, `-`, `.`, `_`). No allocation.
pub fn sip_uri_valid(buf: &[u8], uri: Span, parts: &UriParts) -> bool {
    let u = uri.get(buf);
    let mut i = 0;
    while i < u.len() {
        let c = u[i];
        if c == b'%' {
            if i + 2 >= u.len() || !u[i + 1].is_ascii_hexdigit() || !u[i + 2].is_ascii_hexdigit() {
                return false;
            }
            i += 3;
            continue;
        }
        if !URI_CHAR[c as usize] {
            return false;
        }
        i += 1;
    }
    let host = parts.host.get(buf);
    if let Some(v6) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        return std::str::from_utf8(v6)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
    }
    !host.is_empty()
        && host
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// `CSeq` value: (number, method); LWS, folded lines included, separates them.
pub fn parse_cseq(v: &[u8]) -> Option<(u32, &[u8])> {
    let mut it = v.split(|&b| is_lws(b)).filter(|p| !p.is_empty());
    let num = parse_u32(it.next()?)?;
    let method = it.next()?;
    if it.next().is_some() || !method.iter().all(|&b| is_token_char(b)) {
        return None;
    }
    Some((num, method))
}

/// Value of a header parameter (e.g. `tag`) in a From/To value, outside the `<>` URI.
pub fn header_param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let after = match memchr::memrchr(b'>', v) {
        Some(p) => p + 1,
        None => 0,
    };
    for p in v[after..].split(|&b| b == b';').skip(1) {
        let p = trim_bytes(p);
        let (n, val) = match memchr::memchr(b'=', p) {
            Some(k) => (trim_bytes(&p[..k]), trim_bytes(&p[k + 1..])),
            None => (p, &p[p.len()..]),
        };
        if n.eq_ignore_ascii_case(name) {
            return Some(val);
        }
    }
    None
}

pub fn trim_bytes(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'));
    match s {
        None => &b[b.len()..],
        Some(s) => {
            let e = b
                .iter()
                .rposition(|&c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
                .map_or(s, |e| e + 1);
            &b[s..e]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    /// The general header-name rule of `parse_inner`: (colon, name end).
    fn header_name_general(buf: &[u8], pos: usize, e: usize) -> Option<(usize, usize)> {
        let colon = memchr::memchr(b':', &buf[pos..e]).map(|i| pos + i)?;
        let (ns, ne) = trim(buf, pos, colon);
        (ns == pos && ns < ne && buf[ns..ne].iter().all(|&b| is_token_char(b)))
            .then_some((colon, ne))
    }

    proptest::proptest! {
        #[test]
        fn rfc3261_7_3_1_header_name_fast_path_agrees_with_the_general_rule(
            line in proptest::collection::vec(
                proptest::sample::select(b"aZ9-.!%*_+`'~:; \t\r\n,<>\"@[]/".to_vec()),
                0..24,
            )
        ) {
            let fast = header_name_fast(&line, 0, line.len());
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, header_name_general(&line, 0, line.len()));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// RFC 3261 §7 / §18.3: one walk that finds a datagram's head end
        /// while it indexes the head gives what the header-end search and
        /// then the parse give: the same message, the same error, and "no
        /// end" exactly when the search finds none (or an error before it).
        #[test]
        fn rfc3261_18_3_parse_head_agrees_with_header_end_then_parse(
            pieces in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(vec![
                    &b"INVITE sip:a@b SIP/2.0"[..], b"SIP/2.0 200 OK", b"\r\n", b"\n",
                    b"\r", b"Via: SIP/2.0/UDP h;branch=z9hG4bK1", b"l: 3", b" folded",
                    b"\tx", b"To: <sip:t>", b"bad line", b":", b"X:", b"", b"body",
                ]).prop_map(|s| s.to_vec()),
                proptest::collection::vec(
                    proptest::sample::select(b"aZ:; \t\r\n".to_vec()), 0..12),
            ], 0..16),
        ) {
            let buf = pieces.concat();
            let (mut h1, mut h2) = (Vec::new(), Vec::new());
            let fused = SipMsg::parse_head(&buf, &mut h2);
            match crate::sip::framer::find_header_end(&buf, 0) {
                None => proptest::prop_assert!(!matches!(fused, Ok(Some(_))), "{fused:?}"),
                Some(end) => match (SipMsg::parse(&buf, end, &mut h1), fused) {
                    (Ok(a), Ok(Some(b))) => {
                        proptest::prop_assert_eq!(a.start, b.start);
                        proptest::prop_assert_eq!(a.start_line, b.start_line);
                        proptest::prop_assert_eq!(a.headers, b.headers);
                        proptest::prop_assert_eq!(a.headers_end, b.headers_end);
                        proptest::prop_assert_eq!(a.body_offset, b.body_offset);
                    }
                    (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                    (a, b) => proptest::prop_assert!(false, "{a:?} vs {b:?}"),
                },
            }
        }
    }

    #[test]
    fn rfc3261_7_3_1_header_name_fast_path_cases() {
        for (line, want) in [
            (&b"Via: x"[..], Some((3, 3))),
            (b"Via : x", Some((4, 3))),
            (b"Via\t:x", Some((4, 3))),
            (b": x", None),
            (b" Via: x", None),
            (b"Via x: y", None),
            (b"Vi@a: x", None),
            (b"Via", None),
        ] {
            assert_eq!(header_name_fast(line, 0, line.len()), want, "{:?}", line);
            if let Some(w) = want {
                assert_eq!(header_name_general(line, 0, line.len()), Some(w));
            }
        }
    }

    #[test]
    fn rfc3261_7_3_3_header_names_long_and_compact_any_case() {
        use HeaderKind as K;
        for (name, kind) in [
            (&b"Via"[..], K::Via),
            (b"v", K::Via),
            (b"FROM", K::From),
            (b"f", K::From),
            (b"to", K::To),
            (b"T", K::To),
            (b"Call-ID", K::CallId),
            (b"i", K::CallId),
            (b"CSeq", K::CSeq),
            (b"Max-Forwards", K::MaxForwards),
            (b"Route", K::Route),
            (b"Record-Route", K::RecordRoute),
            (b"content-LENGTH", K::ContentLength),
            (b"l", K::ContentLength),
            (b"Contact", K::Contact),
            (b"m", K::Contact),
            // near misses stay Other
            (b"Vias", K::Other),
            (b"Tx", K::Other),
            (b"Content-Type", K::Other),
            (b"Proxy-Require", K::Other),
            (b"Record-Routes", K::Other),
            (b"x", K::Other),
            (b"", K::Other),
            (b"Max_Forwards", K::Other),
        ] {
            assert_eq!(HeaderKind::classify(name), kind, "{:?}", name);
        }
    }

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
v: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx , SIP/2.0/UDP h2;received=1.2.3.4\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Subject: folded\r\n value\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:p2.example.com;lr>\r\n\
l: 4\r\n\
\r\n\
abcd";

    fn parse(buf: &[u8]) -> (StartLine, Vec<HeaderSpan>) {
        let body = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut h = Vec::new();
        let m = SipMsg::parse(buf, body, &mut h).unwrap();
        (m.start, m.headers.to_vec())
    }

    #[test]
    fn a1_index_start_line_and_headers() {
        let (sl, hs) = parse(INVITE);
        match sl {
            StartLine::Request { method, uri, .. } => {
                assert_eq!(method.get(INVITE), b"INVITE");
                assert_eq!(uri.get(INVITE), b"sip:bob@example.com");
            }
            _ => panic!(),
        }
        let kinds: Vec<_> = hs.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                HeaderKind::Via,
                HeaderKind::Via,
                HeaderKind::MaxForwards,
                HeaderKind::To,
                HeaderKind::From,
                HeaderKind::CallId,
                HeaderKind::CSeq,
                HeaderKind::Other,
                HeaderKind::Route,
                HeaderKind::ContentLength
            ]
        );
        assert_eq!(hs[7].value.get(INVITE), b"folded\r\n value");
        assert_eq!(hs[9].value.get(INVITE), b"4");
        // lines tile the header section exactly
        let mut pos = hs[0].line.start;
        for h in &hs {
            assert_eq!(h.line.start, pos);
            pos = h.line.end;
        }
        assert_eq!(&INVITE[pos as usize..], b"\r\nabcd");
    }

    #[test]
    fn a1_via_params_and_multiple_values() {
        let (_, hs) = parse(INVITE);
        let v = parse_via(INVITE, hs[0].value).unwrap();
        assert_eq!(v.transport.get(INVITE), b"UDP");
        assert_eq!(v.host.get(INVITE), b"10.0.0.1");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch.unwrap().get(INVITE), b"z9hG4bK776asdhds");
        assert_eq!(v.rport, Some(None));
        let v2 = parse_via(INVITE, hs[1].value).unwrap();
        assert_eq!(v2.host.get(INVITE), b"[2001:db8::1]");
        assert_eq!(v2.port, Some(5070));
        let next = v2.next.unwrap();
        let v3 = parse_via(INVITE, Span::new(next as usize, hs[1].value.end as usize)).unwrap();
        assert_eq!(v3.host.get(INVITE), b"h2");
        assert_eq!(v3.received.unwrap().get(INVITE), b"1.2.3.4");
    }

    #[test]
    fn a1_route_name_addr_list() {
        let (_, hs) = parse(INVITE);
        let r = parse_name_addr(INVITE, hs[8].value).unwrap();
        assert_eq!(r.uri.get(INVITE), b"sip:127.0.0.1:5060;lr");
        let u = parse_sip_uri(INVITE, r.uri).unwrap();
        assert_eq!(u.host.get(INVITE), b"127.0.0.1");
        assert_eq!(u.port, Some(5060));
        assert!(u.lr && !u.user);
        let r2 = parse_name_addr(
            INVITE,
            Span::new(r.next.unwrap() as usize, hs[8].value.end as usize),
        )
        .unwrap();
        assert_eq!(r2.uri.get(INVITE), b"sip:p2.example.com;lr");
        assert!(r2.next.is_none());
    }

    #[test]
    fn a1_status_line_and_versions() {
        let mut h = Vec::new();
        let r = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP x\r\n\r\n";
        let m = SipMsg::parse(r, r.len(), &mut h).unwrap();
        assert_eq!(
            m.start,
            StartLine::Response {
                code: 180,
                reason: Span::new(12, 19)
            }
        );
        let m = SipMsg::parse(b"INVITE sip:a SIP/3.0\r\n\r\n", 24, &mut h).unwrap();
        assert!(matches!(
            m.start,
            StartLine::Request {
                version_ok: false,
                ..
            }
        ));
        assert_eq!(
            SipMsg::parse(b"GET / HTTP/1.1\r\n\r\n", 18, &mut h).unwrap_err(),
            ParseError::StartLine
        );
        assert_eq!(
            SipMsg::parse(b"SIP/2.0 99 x\r\n\r\n", 16, &mut h).unwrap_err(),
            ParseError::StartLine
        );
    }

    #[test]
    fn a1_header_line_without_colon_is_unparseable() {
        let mut h = Vec::new();
        let m = b"OPTIONS sip:a SIP/2.0\r\nVia SIP/2.0/UDP x\r\n\r\n";
        assert_eq!(
            SipMsg::parse(m, m.len(), &mut h).unwrap_err(),
            ParseError::HeaderLine
        );
    }

    #[test]
    fn a1_bare_lf_lines() {
        let m = b"OPTIONS sip:a SIP/2.0\nVia: SIP/2.0/UDP x\nCSeq: 1 OPTIONS\n\n";
        let mut h = Vec::new();
        let p = SipMsg::parse(m, m.len(), &mut h).unwrap();
        assert_eq!(p.headers.len(), 2);
        assert_eq!(p.value(&p.headers[1]), b"1 OPTIONS");
        assert_eq!(p.headers[1].line.end as usize, m.len() - 1);
    }

    #[test]
    fn a1_cseq_and_tag_params() {
        assert_eq!(parse_cseq(b"314159 INVITE"), Some((314159, &b"INVITE"[..])));
        assert_eq!(parse_cseq(b"x INVITE"), None);
        assert_eq!(parse_cseq(b"1"), None);
        assert_eq!(
            header_param(b"Alice <sip:a@b;tag=no>;tag=abc ;x=1", b"tag"),
            Some(&b"abc"[..])
        );
        assert_eq!(header_param(b"<sip:a@b;tag=no>", b"tag"), None);
    }

    #[test]
    fn a1_malformed_via_rejected() {
        let b = b"SIP/2.0/UDP ;branch=x";
        assert!(parse_via(b, Span::new(0, b.len())).is_err());
        let b = b"SIP/2.0/UDP h:99999";
        assert!(parse_via(b, Span::new(0, b.len())).is_err());
        let b = b"garbage";
        assert!(parse_via(b, Span::new(0, b.len())).is_err());
    }

    #[test]
    fn rfc4475_via_lws_and_folding_everywhere() {
        let b = b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2 ;\r\n branch =\r\n z9hG4bK30239 ; rport";
        let v = parse_via(b, Span::new(0, b.len())).unwrap();
        assert_eq!(v.transport.get(b), b"UDP");
        assert_eq!(v.host.get(b), b"192.0.2.2");
        assert_eq!(v.branch.unwrap().get(b), b"z9hG4bK30239");
        assert_eq!(v.rport, Some(None));
        // empty params / separators (RFC 4475 §3.1.2.1) are not a via-parm
        let b = b"SIP/2.0/UDP 192.0.2.15;;,;,,";
        assert!(parse_via(b, Span::new(0, b.len())).is_err());
        assert_eq!(via_sent_by_port(b, Span::new(0, b.len())), Some(None));
        let b = b"SIP/2.0/UDP h:5070;;";
        assert_eq!(via_sent_by_port(b, Span::new(0, b.len())), Some(Some(5070)));
        let b = b"SIP/2.0 UDP h";
        assert!(parse_via(b, Span::new(0, b.len())).is_err());
    }

    #[test]
    fn rfc4475_cseq_folded() {
        assert_eq!(parse_cseq(b"0009\r\n  INVITE"), Some((9, &b"INVITE"[..])));
        assert_eq!(parse_cseq(b"36893488147419103232 REGISTER"), None);
    }

    #[test]
    fn rfc4475_addr_values() {
        let ok = |v: &[u8], list: bool| check_addr_value(v, Span::new(0, v.len()), list);
        // valid (§3.1.1 and §3.3.4)
        assert!(ok(
            b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
            false
        ));
        assert!(ok(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
            false
        ));
        assert!(ok(b"\"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>", false));
        assert!(ok(b"token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\xd1\x80\";tag=_token~1'+`*%!-.", false));
        assert!(ok(b"caller<sip:caller@example.com>;tag=323", false));
        assert!(ok(b"isbn:2983792873", false));
        assert!(ok(b"<http://www.example.com>;tag=3234233", false));
        assert!(ok(b"sip:+16505552222@ss1.example.net;user=phone", false));
        assert!(ok(b"*", true));
        assert!(ok(
            b"<sip:a@b>;expires=3600, \"x\" <sip:c@d>;+sip.instance=\"<urn:uuid:1>\"",
            true
        ));
        assert!(ok(
            b"\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
            true
        ));
        assert!(ok(
            b"<sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
            true
        ));
        // invalid (§3.1.2.6, .13, .14, .15)
        assert!(!ok(b"\"Mr. J. User <sip:j.user@example.com>", false));
        assert!(!ok(
            b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            true
        ));
        assert!(!ok(
            b"\"Watson, Thomas\" < sip:t.watson@example.org >",
            false
        ));
        assert!(!ok(
            b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            false
        ));
        assert!(!ok(b"<sip:a@b>, <sip:c@d>", false));
        assert!(!ok(b"<sip:a@b>;;", false));
        assert!(!ok(b"Bob", false));
        assert!(!ok(b"", false));
    }

    #[test]
    fn rfc4475_sip_uri_userinfo_with_separators() {
        let u = b"sip:user;par=u%40example.net@example.com";
        let p = parse_sip_uri(u, Span::new(0, u.len())).unwrap();
        assert!(p.user && !p.headers);
        assert_eq!(p.host.get(u), b"example.com");
        let u = b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let p = parse_sip_uri(u, Span::new(0, u.len())).unwrap();
        assert_eq!(p.host.get(u), b"example.com");
        assert!(!p.headers);
        let u = b"sip:user@example.com?Route=%3Csip:example.com%3E";
        let p = parse_sip_uri(u, Span::new(0, u.len())).unwrap();
        assert!(p.headers);
        assert_eq!(p.host.get(u), b"example.com");
    }

    #[test]
    fn rfc4475_lenient_parse_reports_the_defect() {
        let mut h = Vec::new();
        let m = b"INVITE  sip:user@example.com  SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n";
        assert!(SipMsg::parse(m, m.len(), &mut h).is_err());
        let (p, d) = SipMsg::parse_lenient(m, m.len(), &mut h).unwrap();
        assert_eq!(d, Defect::RequestLine);
        assert_eq!(p.method(), b"INVITE");
        assert_eq!(p.uri(), b"sip:user@example.com");
        let m =
            b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nX-B\x01d: 1\r\nTo: <sip:a>\r\n\r\n";
        assert_eq!(
            SipMsg::parse(m, m.len(), &mut h).unwrap_err(),
            ParseError::HeaderLine
        );
        let (p, d) = SipMsg::parse_lenient(m, m.len(), &mut h).unwrap();
        match d {
            Defect::HeaderLine(l) => assert_eq!(l.get(m), b"X-B\x01d: 1\r\n"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.headers.len(), 2);
        // not SIP at all: still an error
        let m = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(SipMsg::parse_lenient(m, m.len(), &mut h).is_err());
        let m = b"SIP/2.0 4294967301 x\r\n\r\n";
        assert!(SipMsg::parse_lenient(m, m.len(), &mut h).is_err());
    }

    #[test]
    fn rfc3261_19_1_1_request_uri_characters_and_host() {
        let ok = |u: &[u8]| {
            let span = Span::new(0, u.len());
            parse_sip_uri(u, span).is_some_and(|p| sip_uri_valid(u, span, &p))
        };
        assert!(ok(b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"));
        assert!(ok(b"sip:sips%3Auser%40example.com@example.net"));
        assert!(ok(b"sip:[2001:db8::1]:5060;transport=tcp"));
        assert!(ok(b"sip:vivekg@chair-dnrc.example.com;unknownparam"));
        assert!(!ok(b"sip:user@exa mple.com"));
        assert!(!ok(b"sip:user@example.com%4"));
        assert!(!ok(b"sip:user@[2001:db8::zz]"));
        assert!(!ok(b"sip:user@ex<ample.com"));
        assert!(!ok(b"sip:us\"er@example.com"));
    }
}
