//! `receive_msg`: the stateless proxy core (SPEC A.1; RFC 3261 §16.3–16.6,
//! §16.11, §18.2, RFC 3581). Bytes and receive info in, one [`Outcome`] out;
//! the bytes to send are left in [`Scratch::out`]. No I/O, no clock.

use super::DropReason;
use super::live::Live;
use super::nosip::{NosipCtx, NosipHook, NosipVerdict};
use super::transaction::stateful::Pre;
use super::upstream::{self, ProbeDue, ProbeReply, SetId, UpstreamSets};
use crate::config::{Config, ListenSpec, Transport};
use crate::metrics::Metrics;
use crate::sip::framer::{
    FrameError, find_header_end, frame_datagram, parse_framed, parsed_content_length,
};
use crate::sip::msg::{
    Defect, HeaderKind, HeaderSpan, NameAddr, ParseError, SipMsg, Span, StartLine, UriParts, Via,
    check_addr_value, header_param, parse_cseq, parse_name_addr, parse_sip_uri, parse_u32,
    parse_via, sip_uri_valid, uri_scheme, via_sent_by_port,
};
use arc_swap::ArcSwap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Connection identifier (Kamailio's `;i=` Via parameter carries it).
pub type ConnId = u64;

/// Where and how a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcvInfo {
    pub src: SocketAddr,
    /// Index of the listen socket (config order) it arrived on.
    pub local: usize,
    pub transport: Transport,
    /// The TCP connection it arrived on.
    pub conn: Option<ConnId>,
    /// The connection was opened by us (towards an upstream).
    pub outbound: bool,
}

/// Where to send the bytes in [`Scratch::out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// Prefer this TCP connection when it is still open.
    pub conn: Option<ConnId>,
    /// Listen socket to send from (UDP) / whose address our Via names.
    pub local: usize,
}

/// What kind of message is being sent (metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    Request,
    Reply,
    /// A reply the proxy generated itself (400, 483, 200 to OPTIONS, ...).
    LocalReply(u16),
    /// Bytes the nosip hook asked to send back.
    NosipReply,
}

/// The result of `receive_msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Send {
        dest: Dest,
        kind: SendKind,
    },
    /// Like `Send`, but the next hop is a host name ([`Scratch::resolve`]):
    /// the transport resolves it (A/AAAA) and sends to `dest.addr`'s port.
    Resolve {
        dest: Dest,
        kind: SendKind,
    },
    /// The nosip hook consumed the data; nothing to send.
    Consumed,
    Dropped(DropReason),
    /// Unparseable and not consumed: on TCP the connection must be released.
    ParseError,
    /// The transaction layer took it (stateful mode): send
    /// [`Scratch::txn`]'s messages (none for an absorbed retransmission).
    Txn,
}

/// A message's top Via, found and parsed once per message: the transaction
/// layer (key, reply destination), the §16.3 checks, forwarding (§16.6 step
/// 8, §18.2.1 `received`) and reply routing (§16.7 step 3) all read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopVia {
    /// Its header (the first Via header of the message).
    pub h: HeaderSpan,
    /// Index of `h` in the message's headers.
    pub index: usize,
    /// Its first via-parm; `None` when it does not parse.
    pub via: Option<Via>,
    /// [`Core::branch_hash`] of `via`, once the transaction layer computed it.
    pub branch_hash: Option<u64>,
}

impl TopVia {
    /// The top Via of `msg` (`None`: the message has no Via header).
    pub(crate) fn of(msg: &SipMsg<'_>) -> Option<TopVia> {
        let (index, h) = msg
            .headers
            .iter()
            .enumerate()
            .find(|(_, h)| h.kind == HeaderKind::Via)?;
        Some(TopVia {
            h: *h,
            index,
            via: parse_via(msg.buf, h.value).ok(),
            branch_hash: None,
        })
    }
}

/// Per-worker reusable buffers (no per-message allocation in steady state).
#[derive(Debug, Default)]
pub struct Scratch {
    pub headers: Vec<HeaderSpan>,
    /// The message to send.
    pub out: Vec<u8>,
    /// The host name to resolve for [`Outcome::Resolve`].
    pub resolve: String,
    edits: Vec<Edit>,
    tmp: Vec<u8>,
    routes: Vec<(usize, NameAddr)>,
    /// Messages of the transaction layer for [`Outcome::Txn`] (stateful mode).
    pub txn: super::transaction::Out,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            headers: Vec::with_capacity(32),
            out: Vec::with_capacity(2048),
            resolve: String::new(),
            edits: Vec::with_capacity(16),
            tmp: Vec::with_capacity(512),
            routes: Vec::with_capacity(8),
            txn: super::transaction::Out::default(),
        }
    }
}

/// [`Scratch`] without its header index, which a parsed message borrows.
struct Work<'s> {
    out: &'s mut Vec<u8>,
    resolve: &'s mut String,
    edits: &'s mut Vec<Edit>,
    tmp: &'s mut Vec<u8>,
    routes: &'s mut Vec<(usize, NameAddr)>,
    txn: &'s mut super::transaction::Out,
}

impl Scratch {
    /// The header index and the rest, borrowed apart.
    fn split(&mut self) -> (&mut Vec<HeaderSpan>, Work<'_>) {
        (
            &mut self.headers,
            Work {
                out: &mut self.out,
                resolve: &mut self.resolve,
                edits: &mut self.edits,
                tmp: &mut self.tmp,
                routes: &mut self.routes,
                txn: &mut self.txn,
            },
        )
    }
}

/// Replace `buf[start..end]` by `tmp[t0..t1]` (insertion when start == end).
#[derive(Debug, Clone, Copy)]
struct Edit {
    start: u32,
    end: u32,
    t0: u32,
    t1: u32,
}

/// One of our addresses, precomputed for the hot path.
#[derive(Debug, Clone)]
struct Local {
    transport: Transport,
    ip: IpAddr,
    port: u16,
    host: Vec<u8>,
    adv_ip: Option<IpAddr>,
    adv_port: u16,
    /// `Via: SIP/2.0/UDP host:port;branch=`
    via_prefix: Vec<u8>,
    /// `<sip:host:port;lr>` (with `;transport=tcp` on TCP)
    rr: Vec<u8>,
}

/// Called on every parse failure after the nosip hook passed (Kamailio's
/// `event_route[core:receive-parse-error]`).
pub type ParseErrorHook = Box<dyn Fn(&[u8], &RcvInfo) + Send + Sync>;

/// Receives the replies to our OPTIONS probes (recognised by their Via
/// branch, consumed instead of routed); the backend hands them to its
/// [`upstream::Prober`].
pub type ProbeSink = Box<dyn Fn(ProbeReply) + Send + Sync>;

/// The proxy core, shared by all workers.
pub struct Core {
    locals: Vec<Local>,
    /// Upstream sets (with their health), selection, nosip hook, TCP
    /// limits: replaced by reloads.
    live: ArcSwap<Live>,
    /// The set requests without a Route go to (the first).
    default_set: SetId,
    /// When health moves are stamped ([`Self::now_ms`]).
    epoch: std::time::Instant,
    probe_sink: Option<ProbeSink>,
    record_route: bool,
    rr_methods: Vec<Vec<u8>>,
    secret: u64,
    parse_error_hook: Option<ParseErrorHook>,
    pub metrics: Arc<Metrics>,
    log_window: AtomicU64,
    /// The stateful mode's transaction tables (`None`: stateless).
    stateful: Option<super::transaction::Stateful>,
}

/// Magic cookie + our marker; the rest of the branch is a hash.
const BRANCH_PREFIX: &[u8] = b"z9hG4bKsE";
const MAX_ROUTE_ENTRIES: usize = 32;
const DEFAULT_MAX_FORWARDS: u32 = 70;
/// Parse-failure log lines allowed per second.
const PARSE_LOG_PER_SEC: u64 = 10;

/// Parse a host (IPv6 in brackets) as an IP literal.
fn host_ip(host: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(host) {
        return Some(IpAddr::V4(v4));
    }
    let h = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    std::str::from_utf8(h).ok()?.parse().ok()
}

/// The common host, a dotted-quad IPv4 address, without the UTF-8 check and
/// the general address parser: exactly what `Ipv4Addr`'s `FromStr` accepts
/// (four decimal octets of at most 255, no leading zeros); `None` for
/// anything else, which then goes to that parser.
#[inline]
fn dotted_quad(h: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    // `i`: the octet being read; `v`, `n`: its value and digit count.
    let (mut i, mut v, mut n) = (0usize, 0u16, 0u8);
    for &b in h {
        match b {
            b'0'..=b'9' => {
                // a fourth digit, or a digit after a leading zero
                if n == 3 || (n == 1 && v == 0) {
                    return None;
                }
                v = v * 10 + u16::from(b - b'0');
                n += 1;
            }
            b'.' if n > 0 && i < 3 => {
                octets[i] = u8::try_from(v).ok()?;
                (i, v, n) = (i + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if n == 0 || i != 3 {
        return None;
    }
    octets[3] = u8::try_from(v).ok()?;
    Some(std::net::Ipv4Addr::from(octets))
}

impl Core {
    /// Build the core from the config; `hook` is the nosip hook in use.
    pub fn new(cfg: &Config, hook: Box<dyn NosipHook>, metrics: Arc<Metrics>) -> Core {
        let locals = cfg.listen.iter().map(Local::from_spec).collect();
        let secret = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::time::SystemTime::now().hash(&mut h);
            std::process::id().hash(&mut h);
            h.finish()
        };
        let upstream = Arc::new(UpstreamSets::new(
            &cfg.upstream_set_specs(),
            Some(&metrics.registry),
        ));
        // every target down: not ready (`/ready` 503) until one is back
        let m = metrics.clone();
        upstream.set_readiness_hook(Box::new(move |up| m.readiness().set_upstreams_up(up)));
        Core {
            locals,
            live: ArcSwap::from_pointee(Live::new(cfg, Arc::from(hook), upstream)),
            default_set: SetId(0),
            epoch: std::time::Instant::now(),
            probe_sink: None,
            record_route: cfg.record_route,
            rr_methods: cfg
                .record_route_methods
                .iter()
                .map(|m| m.as_bytes().to_vec())
                .collect(),
            secret,
            parse_error_hook: None,
            metrics,
            log_window: AtomicU64::new(0),
            stateful: None,
        }
    }

    /// Fix the branch secret (tests; several processes sharing one address set).
    pub fn with_secret(mut self, secret: u64) -> Core {
        self.secret = secret;
        self
    }

    /// The reloadable settings now (one lock-free load; hold it for one message).
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Replace the reloadable settings (SIGHUP); messages being processed
    /// finish with the ones they loaded.
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// Register a parse-error hook.
    pub fn with_parse_error_hook(mut self, f: ParseErrorHook) -> Core {
        self.parse_error_hook = Some(f);
        self
    }

    /// Replace the upstream sets (embedders, tests; the config's sets are
    /// built by [`Self::new`]).
    pub fn with_upstreams(self, sets: Arc<UpstreamSets>) -> Core {
        let live = self.live.load().with_upstream(sets);
        self.live.store(Arc::new(live));
        self
    }

    /// Register where probe replies go (the backend's prober).
    pub fn with_probe_sink(mut self, f: ProbeSink) -> Core {
        self.probe_sink = Some(f);
        self
    }

    /// The upstream sets: selection and health (for the probe driver, the
    /// transaction layer, passive signals from the transports): the ones in
    /// force now (a reload replaces them; a driver holding an older `Arc`
    /// compares with [`Arc::ptr_eq`] to notice).
    pub fn upstreams(&self) -> Arc<UpstreamSets> {
        self.live.load().upstream.clone()
    }

    /// Milliseconds since the core was built: the clock of health changes
    /// the core and the backends report ([`upstream::Millis`]).
    pub fn now_ms(&self) -> upstream::Millis {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Write the OPTIONS probe `p` into `out` (RFC 3261 §11; Max-Forwards 0
    /// would make a proxy answer for the target, so 70) and say where it goes:
    /// the target's address over its transport (UDP when it has none), from
    /// the listen socket of that transport and family. `None`: unknown target.
    pub fn write_probe(&self, p: ProbeDue, out: &mut Vec<u8>) -> Option<Dest> {
        let ups = self.upstreams();
        let t = ups.target(p.target)?;
        let transport = t.transport().unwrap_or(Transport::Udp);
        let addr = t.addr();
        let local = self.probe_local(transport, addr)?;
        let l = &self.locals[local];
        let host = String::from_utf8_lossy(&l.host);
        out.clear();
        let _ = write!(out, "OPTIONS {} SIP/2.0\r\n", t.uri());
        out.extend_from_slice(&l.via_prefix);
        upstream::write_probe_branch(out, self.secret, p);
        let tag = (self.secret ^ u64::from(p.target.0)) as u32;
        let _ = write!(
            out,
            "\r\nMax-Forwards: {DEFAULT_MAX_FORWARDS}\r\n\
             From: <sip:sipedge@{host}>;tag=sEp{tag:08x}\r\n\
             To: <{uri}>\r\n\
             Call-ID: sEp{tag:08x}-{t:x}-{seq:x}@{host}\r\n\
             CSeq: {seq} OPTIONS\r\n\
             Accept: application/sdp\r\n\
             User-Agent: sipedge/{ver}\r\n\
             Content-Length: 0\r\n\r\n",
            uri = t.uri(),
            t = p.target.0,
            seq = p.seq,
            ver = env!("CARGO_PKG_VERSION"),
        );
        Some(Dest {
            transport,
            addr,
            conn: None,
            local,
        })
    }

    /// The listen socket probes to `addr` over `t` go from: same transport
    /// and family, else none.
    fn probe_local(&self, t: Transport, addr: SocketAddr) -> Option<usize> {
        self.locals
            .iter()
            .position(|l| l.transport == t && l.ip.is_ipv4() == addr.is_ipv4())
    }

    /// Number of listen sockets (indices for [`RcvInfo::local`]).
    pub fn local_count(&self) -> usize {
        self.locals.len()
    }

    /// A datagram (RFC 3261 §18.3 framing) → [`Self::receive_msg`].
    pub fn receive_datagram(&self, dgram: &[u8], rcv: &RcvInfo, sc: &mut Scratch) -> Outcome {
        if !dgram.is_empty() && dgram.iter().all(|&b| b == b'\r' || b == b'\n') {
            self.metrics.keepalive_ping();
            return Outcome::Dropped(DropReason::Keepalive);
        }
        // One walk over the header lines: it finds the head's end and
        // indexes it, and Content-Length is read from its spans.
        let (headers, mut work) = sc.split();
        let mut msg = match SipMsg::parse_head(dgram, headers) {
            Ok(Some(m)) => m,
            // FrameError::Unterminated
            Ok(None) => return self.parse_failure(dgram, rcv, sc),
            // cold: the framing rules decide first, as they would before a
            // parse (an unterminated head is a parse failure whatever its
            // lines hold)
            Err(_) if find_header_end(dgram, 0).is_none() => {
                return self.parse_failure(dgram, rcv, sc);
            }
            Err(_) => return self.receive_datagram_unparsed(dgram, rcv, sc),
        };
        let head = msg.body_offset;
        match parsed_content_length(&msg) {
            Ok(Some(cl)) if cl <= dgram.len() - head => {
                // bytes beyond Content-Length are discarded (§18.3)
                msg.buf = &dgram[..head + cl];
                self.receive_parsed(msg, false, rcv, &mut work)
            }
            // no Content-Length on UDP: the body is the rest of the datagram
            Ok(None) => self.receive_parsed(msg, true, rcv, &mut work),
            // BodyTooShort or BadContentLength: the parseable head is answered
            Ok(Some(_)) | Err(_) => {
                msg.buf = &dgram[..head];
                self.bad_content_length_msg(&msg, rcv, work.out)
            }
        }
    }

    /// A datagram whose head does not parse strictly: framing as
    /// [`frame_datagram`] says, then the error paths. Cold path.
    fn receive_datagram_unparsed(&self, dgram: &[u8], rcv: &RcvInfo, sc: &mut Scratch) -> Outcome {
        match frame_datagram(dgram) {
            Ok(f) => self.receive_msg(
                &dgram[..f.len],
                f.body_offset,
                !f.has_content_length,
                rcv,
                sc,
            ),
            Err(FrameError::BodyTooShort) | Err(FrameError::BadContentLength) => {
                // parseable head, bad Content-Length: 400 (or drop for ACK / replies)
                let head = find_header_end(dgram, 0).unwrap_or(dgram.len());
                self.bad_content_length(&dgram[..head], rcv, sc)
            }
            Err(_) => self.parse_failure(dgram, rcv, sc),
        }
    }

    fn bad_content_length(&self, head: &[u8], rcv: &RcvInfo, sc: &mut Scratch) -> Outcome {
        let Scratch { headers, out, .. } = sc;
        let msg = match SipMsg::parse(head, head.len(), headers) {
            Ok(m) => m,
            Err(_) => return self.parse_failure(head, rcv, sc),
        };
        self.bad_content_length_msg(&msg, rcv, out)
    }

    /// A message whose Content-Length is bad or larger than its body: a
    /// request is answered 400, an ACK or a reply dropped.
    fn bad_content_length_msg(
        &self,
        msg: &SipMsg<'_>,
        rcv: &RcvInfo,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if !msg.is_request() {
            self.metrics.dropped(DropReason::ParseFailure);
            return Outcome::Dropped(DropReason::ParseFailure);
        }
        self.metrics.request(msg.method());
        if msg.method() == b"ACK" {
            self.metrics.dropped(DropReason::BadAck);
            return Outcome::Dropped(DropReason::BadAck);
        }
        self.local_reply(msg, rcv, 400, "Bad Content-Length", out)
    }

    /// The transport-independent core (Kamailio's `receive_msg`): `buf` is one
    /// framed message whose body starts at `body_offset`. `add_content_length`:
    /// the message had none (allowed on UDP) and one must be added when forwarding.
    pub fn receive_msg(
        &self,
        buf: &[u8],
        body_offset: usize,
        add_content_length: bool,
        rcv: &RcvInfo,
        sc: &mut Scratch,
    ) -> Outcome {
        let (headers, mut work) = sc.split();
        let msg = match SipMsg::parse(buf, body_offset, headers) {
            Ok(m) => m,
            Err(ParseError::StartLine | ParseError::HeaderLine) => {
                return self.malformed_request(buf, body_offset, rcv, sc);
            }
            Err(_) => return self.parse_failure(buf, rcv, sc),
        };
        self.receive_parsed(msg, add_content_length, rcv, &mut work)
    }

    /// A stream's next message framed and parsed in one walk
    /// ([`parse_framed`]: SPEC A.2's framing rules, read from the index the
    /// parse builds) and handled as [`Self::receive_msg`] handles it. `head`
    /// is what [`crate::sip::framer::Framer::message_start`] offered.
    /// `Some((length of the message, outcome))`; `None` when it is not one
    /// whole message that parses strictly with a Content-Length: then the
    /// framer frames it and `receive_msg` takes it (errors, partial reads).
    pub fn receive_stream_head(
        &self,
        head: &[u8],
        rcv: &RcvInfo,
        sc: &mut Scratch,
    ) -> Option<(usize, Outcome)> {
        let (headers, mut work) = sc.split();
        let msg = parse_framed(head, headers)?;
        let len = msg.buf.len();
        Some((len, self.receive_parsed(msg, false, rcv, &mut work)))
    }

    /// [`Self::receive_msg`] after the parse.
    fn receive_parsed(
        &self,
        msg: SipMsg<'_>,
        add_content_length: bool,
        rcv: &RcvInfo,
        work: &mut Work<'_>,
    ) -> Outcome {
        let Work {
            out,
            resolve,
            edits,
            tmp,
            routes,
            txn,
        } = work;
        let top_via = TopVia::of(&msg);
        let top = top_via.as_ref();
        out.clear();
        resolve.clear();
        edits.clear();
        tmp.clear();
        routes.clear();
        let mut b = Builder {
            out,
            edits,
            tmp,
            resolve,
        };
        if let Some(st) = &self.stateful {
            // stateful mode: the transaction layer first (RFC 3261 §16 / §17)
            txn.clear();
            match msg.start {
                StartLine::Response { code, .. } => {
                    if st.on_reply(self, &msg, top, code, rcv, txn) {
                        return Outcome::Txn;
                    }
                }
                StartLine::Request { version_ok, .. } => {
                    match st.before_request(self, &msg, top, rcv, txn) {
                        Pre::Done => return Outcome::Txn,
                        Pre::Stateless => {}
                        Pre::Route { hash, caller } => {
                            // our Via's branch is this hash: not computed twice
                            let mut hashed = top_via;
                            if let Some(t) = hashed.as_mut() {
                                t.branch_hash = Some(hash);
                            }
                            let o = self.route_request(
                                &msg,
                                hashed.as_ref(),
                                version_ok,
                                add_content_length,
                                rcv,
                                &mut b,
                                routes,
                            );
                            return st.after_route(self, o, b.out, hash, caller, txn);
                        }
                    }
                }
            }
        }
        match msg.start {
            StartLine::Response { code, .. } => self.route_reply(&msg, top, code, rcv, &mut b),
            StartLine::Request { version_ok, .. } => self.route_request(
                &msg,
                top,
                version_ok,
                add_content_length,
                rcv,
                &mut b,
                routes,
            ),
        }
    }

    /// A message that does not parse strictly but may be a request that can
    /// be answered: a recognisable request line with bad white space (RFC 4475
    /// §3.1.2.8–3.1.2.10) or a malformed header line (a control byte or
    /// separator in a header name, no colon). Such a request is answered
    /// `400` with a reason phrase naming the problem (`Bad Request-Line`,
    /// `Bad header NAME`), on UDP and TCP alike (the message was framed, so
    /// a TCP stream stays in step); an ACK is dropped as `bad_ack`. Anything
    /// else takes the parse-failure path. Cold path.
    fn malformed_request(
        &self,
        buf: &[u8],
        body_offset: usize,
        rcv: &RcvInfo,
        sc: &mut Scratch,
    ) -> Outcome {
        let Scratch { headers, out, .. } = sc;
        let (msg, defect) = match SipMsg::parse_lenient(buf, body_offset, headers) {
            Ok((m, d)) if m.is_request() && d != Defect::None => (m, d),
            _ => return self.parse_failure(buf, rcv, sc),
        };
        self.metrics.request(msg.method());
        if msg.method() == b"ACK" {
            self.metrics.dropped(DropReason::BadAck);
            return Outcome::Dropped(DropReason::BadAck);
        }
        let mut reason = String::new();
        match defect {
            Defect::HeaderLine(line) => {
                let l = line.get(buf);
                let name_end = l
                    .iter()
                    .position(|&b| b == b':' || b == b'\r' || b == b'\n')
                    .unwrap_or(l.len());
                reason.push_str("Bad header ");
                push_reason_text(&mut reason, crate::sip::msg::trim_bytes(&l[..name_end]));
            }
            _ => reason.push_str("Bad Request-Line"),
        }
        self.local_reply(&msg, rcv, 400, &reason, out)
    }

    /// Stateful mode: run transaction shard `shard`'s timers; the messages
    /// to send are left in `out`. Nothing in stateless mode.
    pub fn poll_transactions(&self, shard: usize, out: &mut super::transaction::Out) {
        if let Some(st) = &self.stateful {
            st.poll(self, shard, out);
        }
    }

    /// Stateful mode: claim the transaction timer round due at `now` (true
    /// for one caller per round, which then polls every shard and calls
    /// [`Core::plan_transaction_round`]). False in stateless mode.
    pub fn claim_transaction_round(&self, now: u64) -> bool {
        self.stateful.as_ref().is_some_and(|st| st.claim_round(now))
    }

    /// Stateful mode: after a timer round run at `now`, when the next one is
    /// due (ms on [`Core::now_ms`]'s clock).
    pub fn plan_transaction_round(&self, now: u64) -> Option<u64> {
        Some(self.stateful.as_ref()?.plan_round(now))
    }

    /// Stateful mode: sending a try failed; fail over (messages in `out`).
    pub fn transaction_send_failed(
        &self,
        r: super::transaction::TxnRef,
        out: &mut super::transaction::Out,
    ) {
        if let Some(st) = &self.stateful {
            st.send_failed(self, r, out);
        }
    }

    /// Stateful mode: transaction shard `shard`'s next timer deadline, in
    /// [`Core::now_ms`] milliseconds (a lower bound; `None`: nothing armed,
    /// or stateless mode). The backend sleeps until then.
    pub fn next_transaction_deadline(&self, shard: usize) -> Option<u64> {
        self.stateful.as_ref()?.next_deadline(shard)
    }

    /// Stateful mode: a transport error towards `addr` (a refused or failed
    /// TCP connect, a RST from the upstream): every client transaction whose
    /// current try went there fails over now instead of waiting for Timer
    /// B / F; the messages to send are left in `out`. Returns the number of
    /// tries failed (0 in stateless mode).
    pub fn transport_failed(
        &self,
        addr: std::net::SocketAddr,
        transport: crate::config::Transport,
        out: &mut super::transaction::Out,
    ) -> usize {
        match &self.stateful {
            Some(st) => st.transport_failed(self, addr, transport, out),
            None => 0,
        }
    }

    /// The stateful mode's tables (`None`: stateless mode).
    pub fn stateful(&self) -> Option<&super::transaction::Stateful> {
        self.stateful.as_ref()
    }

    /// Switch to the stateful mode with these transaction settings and
    /// `shards` tables (one per worker is plenty).
    pub fn with_stateful(mut self, cfg: &super::transaction::TxnConfig, shards: usize) -> Core {
        self.stateful = Some(super::transaction::Stateful::new(
            cfg,
            shards,
            self.metrics.clone(),
            self.now_ms(),
        ));
        self
    }

    /// Parse failure (seed 000): offer the bytes to the nosip hook; if it does
    /// not consume them, log (rate-limited), run the parse-error hook, count,
    /// and return [`Outcome::ParseError`].
    pub fn parse_failure(&self, buf: &[u8], rcv: &RcvInfo, sc: &mut Scratch) -> Outcome {
        sc.out.clear();
        let mut ctx = NosipCtx {
            src: rcv.src,
            transport: rcv.transport,
            reply: &mut sc.out,
        };
        let verdict = self.live.load().nosip.on_nosip(buf, &mut ctx);
        self.metrics.nosip(verdict);
        if verdict == NosipVerdict::Drop {
            if sc.out.is_empty() {
                return Outcome::Consumed;
            }
            return Outcome::Send {
                dest: Dest {
                    transport: rcv.transport,
                    addr: rcv.src,
                    conn: rcv.conn,
                    local: rcv.local,
                },
                kind: SendKind::NosipReply,
            };
        }
        sc.out.clear();
        if self.log_allowed() {
            tracing::warn!(
                "core parsing of SIP message failed ({}:{}/{})",
                rcv.src.ip(),
                rcv.src.port(),
                rcv.transport.as_str()
            );
        }
        if let Some(h) = &self.parse_error_hook {
            h(buf, rcv);
        }
        self.metrics.parse_failure(rcv.transport);
        self.metrics.dropped(DropReason::ParseFailure);
        Outcome::ParseError
    }

    /// At most [`PARSE_LOG_PER_SEC`] log lines per second (coarse window, lock-free).
    fn log_allowed(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cur = self.log_window.load(Ordering::Relaxed);
        if cur >> 16 != now {
            self.log_window.store(now << 16 | 1, Ordering::Relaxed);
            return true;
        }
        if cur & 0xffff < PARSE_LOG_PER_SEC {
            self.log_window.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn local_index(&self, host: &[u8], port: Option<u16>, sips: bool) -> Option<usize> {
        let port = port.unwrap_or(if sips { 5061 } else { 5060 });
        let ip = host_ip(host);
        self.locals.iter().position(|l| {
            (port == l.adv_port || port == l.port)
                && (l.host.eq_ignore_ascii_case(host)
                    || ip.is_some_and(|ip| {
                        Some(ip) == l.adv_ip || (ip == l.ip && !l.ip.is_unspecified())
                    }))
        })
    }

    fn uri_is_ours(&self, buf: &[u8], uri: &UriParts) -> bool {
        !uri.user
            && self
                .local_index(uri.host.get(buf), uri.port, uri.sips)
                .is_some()
    }

    /// `addr` is one of our own listen sockets (a request sent there would loop).
    pub fn is_local_addr(&self, addr: SocketAddr, t: Transport) -> bool {
        self.locals
            .iter()
            .any(|l| l.transport == t && l.port == addr.port() && l.ip == addr.ip())
    }

    /// The listen socket to send from / to name in Via for `t` towards `addr`.
    fn out_local(&self, t: Transport, addr: SocketAddr, rcv: &RcvInfo) -> usize {
        let fam = |l: &Local| l.ip.is_ipv4() == addr.is_ipv4();
        let inbound = &self.locals[rcv.local];
        if inbound.transport == t && fam(inbound) {
            return rcv.local;
        }
        self.locals
            .iter()
            .position(|l| l.transport == t && fam(l))
            .or_else(|| self.locals.iter().position(fam))
            .unwrap_or(rcv.local)
    }

    /// A target of the default set for a request without a Route
    /// (round-robin, Call-ID hash, weighted, priority: the set's algorithm),
    /// among the targets that are up.
    fn pick_upstream<'l>(&self, live: &'l Live, msg: &SipMsg<'_>) -> Option<&'l upstream::Target> {
        let cid = msg
            .first(HeaderKind::CallId)
            .map_or(&b""[..], |h| msg.value(h));
        live.upstream
            .pick(self.default_set, cid, &[])
            .map(|(_, t)| t)
    }

    /// RFC 3261 §16.11: a branch that is the same for a retransmission, and for
    /// the CANCEL / non-2xx ACK of an INVITE (they carry the INVITE's branch,
    /// or, from RFC 2543 clients, the same Call-ID / tags / CSeq number / R-URI).
    pub(crate) fn branch_hash(&self, msg: &SipMsg<'_>, via: &Via) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.secret.hash(&mut h);
        via.sent_by.get(msg.buf).hash(&mut h);
        match via.branch.map(|b| b.get(msg.buf)) {
            Some(br) if br.starts_with(b"z9hG4bK") => br.hash(&mut h),
            _ => {
                let v = |k| msg.first(k).map_or(&b""[..], |x| msg.value(x));
                v(HeaderKind::CallId).hash(&mut h);
                header_param(v(HeaderKind::From), b"tag").hash(&mut h);
                // no To tag: the ACK of a non-2xx carries the UAS's tag, the INVITE had none
                parse_cseq(v(HeaderKind::CSeq)).map(|c| c.0).hash(&mut h);
                msg.uri().hash(&mut h);
            }
        }
        h.finish()
    }

    /// RFC 3261 §16.3 request validation (plus §8.2.2.1 scheme, §18.3 length).
    /// Returns the parsed Request-URI when it is a SIP or SIPS URI.
    fn sanity(
        &self,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
    ) -> Result<Option<UriParts>, (u16, &'static str)> {
        let top = top.ok_or((400, "Missing Via"))?;
        // one pass over the headers counts the ones that must appear once
        let (mut from, mut to, mut call_id, mut cseq, mut mf) = (0u32, 0u32, 0u32, 0u32, 0u32);
        for h in msg.headers {
            match h.kind {
                HeaderKind::From => from += 1,
                HeaderKind::To => to += 1,
                HeaderKind::CallId => call_id += 1,
                HeaderKind::CSeq => cseq += 1,
                HeaderKind::MaxForwards => mf += 1,
                _ => {}
            }
        }
        for (n, missing) in [
            (from, "Missing From"),
            (to, "Missing To"),
            (call_id, "Missing Call-ID"),
            (cseq, "Missing CSeq"),
        ] {
            if n == 0 {
                return Err((400, missing));
            }
        }
        for (n, why) in [
            (from, "Duplicate From"),
            (to, "Duplicate To"),
            (call_id, "Duplicate Call-ID"),
            (cseq, "Duplicate CSeq"),
            (mf, "Duplicate Max-Forwards"),
        ] {
            if n > 1 {
                return Err((400, why));
            }
        }
        let via = top.via.ok_or((400, "Bad Via"))?;
        // RFC 4475 §3.2.1: the magic cookie without an identifier cannot be
        // told apart from other such requests; reject it statelessly
        if via.branch.is_some_and(|b| b.get(msg.buf) == b"z9hG4bK") {
            return Err((400, "Bad Via branch"));
        }
        // the other headers the proxy reads or copies into its replies, in
        // every form RFC 3261 allows (folding, quoting, unknown schemes)
        for h in msg.headers {
            let bad = match h.kind {
                HeaderKind::From => {
                    (!check_addr_value(msg.buf, h.value, false)).then_some("Bad From")
                }
                HeaderKind::To => (!check_addr_value(msg.buf, h.value, false)).then_some("Bad To"),
                HeaderKind::Contact => {
                    (!check_addr_value(msg.buf, h.value, true)).then_some("Bad Contact")
                }
                HeaderKind::Route => {
                    (!check_addr_value(msg.buf, h.value, true)).then_some("Bad Route")
                }
                HeaderKind::RecordRoute => {
                    (!check_addr_value(msg.buf, h.value, true)).then_some("Bad Record-Route")
                }
                HeaderKind::CallId => {
                    let v = msg.value(h);
                    (v.is_empty() || v.iter().any(|&b| b <= b' ' || b == 0x7f))
                        .then_some("Bad Call-ID")
                }
                _ => None,
            };
            if let Some(why) = bad {
                return Err((400, why));
            }
        }
        let cseq = msg
            .first(HeaderKind::CSeq)
            .map(|h| msg.value(h))
            .unwrap_or_default();
        match parse_cseq(cseq) {
            Some((_, m)) if m == msg.method() => {}
            Some(_) => return Err((400, "CSeq method does not match request method")),
            None => return Err((400, "Bad CSeq")),
        }
        if let Some(h) = msg.first(HeaderKind::MaxForwards)
            && parse_u32(msg.value(h)).is_none()
        {
            return Err((400, "Bad Max-Forwards"));
        }
        let uri = msg.uri();
        let mut ruri = None;
        match uri_scheme(uri) {
            Some(s) if s.eq_ignore_ascii_case(b"sip") || s.eq_ignore_ascii_case(b"sips") => {
                let span = match msg.start {
                    StartLine::Request { uri, .. } => uri,
                    StartLine::Response { .. } => Span::default(),
                };
                let Some(parts) = parse_sip_uri(msg.buf, span) else {
                    return Err((400, "Bad Request-URI"));
                };
                // RFC 3261 §19.1.1: headers are not allowed in a Request-URI
                // (RFC 4475 §3.1.2.11)
                if parts.headers {
                    return Err((400, "Bad Request-URI"));
                }
                // URI characters and host (allocation-free; was an rsip parse)
                if !sip_uri_valid(msg.buf, span, &parts) {
                    return Err((400, "Bad Request-URI"));
                }
                ruri = Some(parts);
            }
            Some(s) if s.eq_ignore_ascii_case(b"tel") => {}
            Some(_) => return Err((416, "Unsupported URI Scheme")),
            None => return Err((400, "Bad Request-URI")),
        }
        // §16.3 step 5: this proxy supports no extensions; the reply lists
        // the option tags in Unsupported (see `local_reply`)
        if msg.headers.iter().any(|h| is_proxy_require(msg, h)) {
            return Err((420, "Bad Extension"));
        }
        Ok(ruri)
    }

    /// RFC 3261 §16 for one request, one function per step: validate (§16.3),
    /// preprocess routing information (§16.4), determine the target (§16.5),
    /// forward (§16.6). A step that refuses the request ends it with a local
    /// reply or a counted drop ([`Refuse`]).
    #[allow(clippy::too_many_arguments)]
    fn route_request(
        &self,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        version_ok: bool,
        add_content_length: bool,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
        routes: &mut Vec<(usize, NameAddr)>,
    ) -> Outcome {
        self.metrics.request(msg.method());
        match self.route_request_steps(msg, top, version_ok, add_content_length, rcv, b, routes) {
            Ok(o) => o,
            Err(r) => self.refuse(msg, rcv, r, b),
        }
    }

    /// The §16 steps in order; see [`Self::route_request`].
    #[allow(clippy::too_many_arguments)]
    fn route_request_steps(
        &self,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        version_ok: bool,
        add_content_length: bool,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
        routes: &mut Vec<(usize, NameAddr)>,
    ) -> Result<Outcome, Refuse> {
        // the Request-URI as the §16.3 checks parsed it (a tel: URI: parsed here)
        let ruri = match self.rfc3261_16_3_validate(msg, top, version_ok)? {
            Some(u) => Some(u),
            None => parse_sip_uri(msg.buf, ruri_span(msg)),
        };
        let pre = self.rfc3261_16_4_preprocess_route(msg, ruri.as_ref(), routes)?;
        let remaining = &routes[pre.popped..pre.live];
        // OPTIONS to the proxy itself: answer it (§16.3 step 3 / §11)
        let ruri_ours =
            pre.new_ruri.is_none() && ruri.as_ref().is_some_and(|u| self.uri_is_ours(msg.buf, u));
        if ruri_ours && remaining.is_empty() && msg.method() == b"OPTIONS" {
            return Ok(self.local_reply(msg, rcv, 200, "OK", b.out));
        }
        let mf = rfc3261_16_3_step3_max_forwards(msg)?;
        let hop = self.rfc3261_16_5_targets(msg, ruri, &pre, remaining, ruri_ours, rcv)?;
        self.rfc3261_16_6_forward(msg, top, add_content_length, rcv, b, routes, &pre, mf, hop)
    }

    /// Answer or drop a refused request: a local reply, except for an ACK,
    /// which gets none (RFC 3261 §17.2.3: an ACK is never answered).
    fn refuse(&self, msg: &SipMsg<'_>, rcv: &RcvInfo, r: Refuse, b: &mut Builder<'_>) -> Outcome {
        match r {
            Refuse::Reply(..) if msg.method() == b"ACK" => {
                self.metrics.dropped(DropReason::BadAck);
                Outcome::Dropped(DropReason::BadAck)
            }
            Refuse::Reply(code, reason) => self.local_reply(msg, rcv, code, reason, b.out),
            Refuse::Drop(d) => {
                self.metrics.dropped(d);
                Outcome::Dropped(d)
            }
        }
    }

    /// RFC 3261 §16.3 request validation: SIP version (505), then the
    /// reasonable-syntax checks of [`Self::sanity`] (400 / 416). Max-Forwards
    /// (step 3) is [`rfc3261_16_3_step3_max_forwards`], after the OPTIONS-to-us
    /// check.
    fn rfc3261_16_3_validate(
        &self,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        version_ok: bool,
    ) -> Result<Option<UriParts>, Refuse> {
        if !version_ok {
            return Err(Refuse::Reply(505, "Version Not Supported"));
        }
        self.sanity(msg, top).map_err(|(c, r)| Refuse::Reply(c, r))
    }

    /// RFC 3261 §16.4 route information preprocessing: parse the Route
    /// entries into `routes` (bounded), undo a strict-routing previous hop
    /// (the Request-URI is our Record-Route URI: the last Route entry becomes
    /// the Request-URI), and pop the top Route entries naming us (two after a
    /// double Record-Route). Decides only; [`Self::rfc3261_16_6_forward`]
    /// applies the edits.
    fn rfc3261_16_4_preprocess_route(
        &self,
        msg: &SipMsg<'_>,
        ruri: Option<&UriParts>,
        routes: &mut Vec<(usize, NameAddr)>,
    ) -> Result<RoutePre, Refuse> {
        let buf = msg.buf;
        for (i, h) in msg.headers.iter().enumerate() {
            if h.kind != HeaderKind::Route {
                continue;
            }
            let mut v = h.value;
            while routes.len() < MAX_ROUTE_ENTRIES {
                let Some(na) = parse_name_addr(buf, v) else {
                    return Err(Refuse::Reply(400, "Bad Route"));
                };
                routes.push((i, na));
                match na.next {
                    Some(n) => v = Span::new(n as usize, h.value.end as usize),
                    None => break,
                }
            }
        }
        // strict-router case: the R-URI is our Record-Route URI
        let mut new_ruri: Option<Span> = None;
        let mut removed_last = false;
        if let Some(u) = ruri
            && self.uri_is_ours(buf, u)
            && !routes.is_empty()
            && let Some((_, last)) = routes.last()
        {
            new_ruri = Some(last.uri);
            removed_last = true;
        }
        let live = routes.len() - usize::from(removed_last);
        // pop the top Route(s) naming us (two after a double Record-Route)
        let mut popped = 0;
        while popped < live.min(2) {
            let uri = routes[popped].1.uri;
            match parse_sip_uri(buf, uri) {
                Some(u) if self.uri_is_ours(buf, &u) => popped += 1,
                _ => break,
            }
        }
        Ok(RoutePre {
            new_ruri,
            removed_last,
            popped,
            live,
        })
    }

    /// RFC 3261 §16.5 determining request targets (and §16.6 step 6/7, the
    /// next-hop address): the top remaining Route entry; else, for a request
    /// from an upstream towards a client, the (possibly strict-route
    /// rewritten) Request-URI; else an upstream ([`Self::pick_upstream`]).
    fn rfc3261_16_5_targets(
        &self,
        msg: &SipMsg<'_>,
        ruri: Option<UriParts>,
        pre: &RoutePre,
        remaining: &[(usize, NameAddr)],
        ruri_ours: bool,
        rcv: &RcvInfo,
    ) -> Result<NextHop, Refuse> {
        let buf = msg.buf;
        if let Some((_, top)) = remaining.first() {
            let Some(u) = parse_sip_uri(buf, top.uri) else {
                return Err(Refuse::Reply(400, "Bad Route"));
            };
            let (addr, name) = self
                .next_hop(buf, &u, rcv)
                .ok_or(Refuse::Drop(DropReason::NoRoute))?;
            let transport = uri_transport(buf, &u).unwrap_or(rcv.transport);
            return Ok(NextHop {
                transport,
                addr,
                name,
            });
        }
        let live = self.live.load();
        if self.is_from_upstream(&live, rcv) && !ruri_ours {
            // towards a client: follow the (possibly strict-route-rewritten) Request-URI
            let target = match pre.new_ruri {
                Some(s) => parse_sip_uri(buf, s),
                None => ruri,
            };
            let (addr, name) = target
                .and_then(|u| self.next_hop(buf, &u, rcv))
                .ok_or(Refuse::Drop(DropReason::NoRoute))?;
            let transport = target
                .and_then(|u| uri_transport(buf, &u))
                .unwrap_or(Transport::Udp);
            return Ok(NextHop {
                transport,
                addr,
                name,
            });
        }
        // no target up: 503 (RFC 3261 §16.7 step 6 / §21.5.4), an ACK is dropped
        let Some(up) = self.pick_upstream(&live, msg) else {
            return Err(match msg.method() {
                b"ACK" => Refuse::Drop(DropReason::NoRoute),
                _ => Refuse::Reply(503, "Service Unavailable"),
            });
        };
        Ok(NextHop {
            transport: up.transport().unwrap_or(rcv.transport),
            addr: up.addr(),
            name: None,
        })
    }

    /// RFC 3261 §16.6 request forwarding: the copy is built by splicing
    /// edits over the received bytes ([`Builder`]), one helper per numbered
    /// step, then handed to the transport (step 10). Steps 5 (optional
    /// headers) and 11 (timer C) do not apply to this stateless proxy.
    #[allow(clippy::too_many_arguments)]
    fn rfc3261_16_6_forward(
        &self,
        msg: &SipMsg<'_>,
        top: Option<&TopVia>,
        add_content_length: bool,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
        routes: &[(usize, NameAddr)],
        pre: &RoutePre,
        mf: Option<(&HeaderSpan, Option<u32>)>,
        hop: NextHop,
    ) -> Result<Outcome, Refuse> {
        let out_local = self.rfc3261_16_6_step7_next_hop(&hop, rcv)?;
        let buf = msg.buf;
        let Some(top) = top else {
            return Err(Refuse::Reply(400, "Missing Via"));
        };
        let Some(via) = top.via else {
            return Err(Refuse::Reply(400, "Bad Via"));
        };
        rfc3261_16_6_step2_request_uri(msg, pre, b);
        // inserted right after the start line in this order (edits at one
        // offset keep their order): Via on top, Record-Route, Max-Forwards
        let branch = top
            .branch_hash
            .unwrap_or_else(|| self.branch_hash(msg, &via));
        self.rfc3261_16_6_step8_via(msg, branch, out_local, rcv, b);
        self.rfc3261_16_6_step4_record_route(msg, out_local, rcv, b);
        rfc3261_16_6_step3_max_forwards_add(msg, mf, b);
        rfc3261_18_2_1_received(msg, &via, rcv, b);
        rfc3261_16_6_step3_max_forwards_decrement(mf, b);
        rfc3261_16_4_strip_routes(msg, routes, pre, b);
        rfc3261_16_6_step9_content_length(msg, add_content_length, b);
        Ok(self.rfc3261_16_6_step10_send(buf, hop, out_local, b))
    }

    /// RFC 3261 §16.6 step 7: the next hop must not be one of our own
    /// sockets (a loop; a host name is checked after resolution); choose the
    /// listen socket to send from.
    fn rfc3261_16_6_step7_next_hop(&self, hop: &NextHop, rcv: &RcvInfo) -> Result<usize, Refuse> {
        if hop.name.is_none() && self.is_local_addr(hop.addr, hop.transport) {
            return Err(Refuse::Drop(DropReason::Loop));
        }
        Ok(self.out_local(hop.transport, hop.addr, rcv))
    }

    /// RFC 3261 §16.6 step 8: our Via on top, its branch from
    /// [`Self::branch_hash`] (§16.11), with `;i=` naming the inbound TCP
    /// connection.
    fn rfc3261_16_6_step8_via(
        &self,
        msg: &SipMsg<'_>,
        branch: u64,
        out_local: usize,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
    ) {
        let at = msg.start_line.end;
        let t0 = b.tmp.len();
        b.tmp.extend_from_slice(&self.locals[out_local].via_prefix);
        b.tmp.extend_from_slice(BRANCH_PREFIX);
        push_hex16(b.tmp, branch);
        if let (Transport::Tcp, Some(c)) = (rcv.transport, rcv.conn) {
            b.tmp.extend_from_slice(b";i=");
            push_dec(b.tmp, c);
        }
        b.tmp.extend_from_slice(b"\r\n");
        b.push_tmp(at, at, t0);
    }

    /// RFC 3261 §16.6 step 4: Record-Route for an initial request of a
    /// configured method; two entries (outbound, then inbound socket) when
    /// the request changes sockets (RFC 5658 double Record-Route).
    fn rfc3261_16_6_step4_record_route(
        &self,
        msg: &SipMsg<'_>,
        out_local: usize,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
    ) {
        let initial = msg
            .first(HeaderKind::To)
            .is_none_or(|h| header_param(msg.value(h), b"tag").is_none());
        if !(self.record_route && initial && self.rr_methods.iter().any(|m| m == msg.method())) {
            return;
        }
        let at = msg.start_line.end;
        let t0 = b.tmp.len();
        b.tmp.extend_from_slice(b"Record-Route: ");
        b.tmp.extend_from_slice(&self.locals[out_local].rr);
        b.tmp.extend_from_slice(b"\r\n");
        if out_local != rcv.local {
            b.tmp.extend_from_slice(b"Record-Route: ");
            b.tmp.extend_from_slice(&self.locals[rcv.local].rr);
            b.tmp.extend_from_slice(b"\r\n");
        }
        b.push_tmp(at, at, t0);
    }

    /// RFC 3261 §16.6 step 10: emit the copy and say where to send it (a
    /// host name is resolved by the transport: [`Outcome::Resolve`]).
    fn rfc3261_16_6_step10_send(
        &self,
        buf: &[u8],
        hop: NextHop,
        out_local: usize,
        b: &mut Builder<'_>,
    ) -> Outcome {
        b.emit(buf);
        self.metrics.forwarded_request();
        let dest = Dest {
            transport: hop.transport,
            addr: hop.addr,
            conn: None,
            local: out_local,
        };
        match hop.name {
            Some(host) => {
                b.resolve
                    .push_str(std::str::from_utf8(host.get(buf)).unwrap_or_default());
                Outcome::Resolve {
                    dest,
                    kind: SendKind::Request,
                }
            }
            None => Outcome::Send {
                dest,
                kind: SendKind::Request,
            },
        }
    }

    fn is_from_upstream(&self, live: &Live, rcv: &RcvInfo) -> bool {
        live.upstream.is_target_addr(rcv.src, rcv.outbound)
    }

    /// Address of a SIP URI's host (maddr ignored): an IP literal, or a host
    /// name (returned as a span, to be resolved by the transport; the address
    /// then holds the port and an unspecified IP of the inbound family).
    fn next_hop(
        &self,
        buf: &[u8],
        u: &UriParts,
        rcv: &RcvInfo,
    ) -> Option<(SocketAddr, Option<Span>)> {
        let port = u.port.unwrap_or(if u.sips { 5061 } else { 5060 });
        let host = u.host.get(buf);
        if let Some(ip) = host_ip(host) {
            return Some((SocketAddr::new(ip, port), None));
        }
        // RFC 1123 host name: letters, digits, '-', '.'; not a bracketed literal
        let valid = host.len() <= 253
            && host.first().is_some_and(u8::is_ascii_alphanumeric)
            && host
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
        if !valid {
            return None;
        }
        let any: IpAddr = match rcv.src.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        Some((SocketAddr::new(any, port), Some(u.host)))
    }

    /// RFC 3261 §16.7 step 3 / §18.2.2: remove our Via, send to the next one.
    fn route_reply(
        &self,
        msg: &SipMsg<'_>,
        top_via: Option<&TopVia>,
        code: u16,
        rcv: &RcvInfo,
        b: &mut Builder<'_>,
    ) -> Outcome {
        self.metrics.reply(code);
        let buf = msg.buf;
        let drop = |r: DropReason| {
            self.metrics.dropped(r);
            Outcome::Dropped(r)
        };
        if !reply_sane(msg) {
            return drop(DropReason::BadReply);
        }
        let Some(&TopVia {
            h: top_h,
            index: vi,
            via,
            ..
        }) = top_via
        else {
            return drop(DropReason::ReplyNoVia);
        };
        let Some(top) = via else {
            return drop(DropReason::ReplyNotOurs);
        };
        if self
            .local_index(top.host.get(buf), top.port, false)
            .is_none()
        {
            return drop(DropReason::ReplyNotOurs);
        }
        // a reply to one of our OPTIONS probes: to the prober, not routed
        if let Some(br) = top.branch.map(|b| b.get(buf))
            && br.starts_with(upstream::PROBE_BRANCH)
        {
            let Some(p) = upstream::parse_probe_branch(br, self.secret) else {
                return drop(DropReason::ReplyNotOurs);
            };
            if let Some(sink) = &self.probe_sink {
                sink(ProbeReply {
                    target: p.target,
                    seq: p.seq,
                    code,
                });
            }
            return Outcome::Consumed;
        }
        // passive health: a final reply from a target (503 counts as a failure)
        if code >= 200 {
            let live = self.live.load();
            if live.upstream.health_on() {
                for id in live.upstream.targets_at(rcv.src, Some(rcv.transport)) {
                    live.upstream.mark_reply(id, code, self.now_ms());
                }
            }
        }
        // the next Via: in the same header after a comma, or the next Via header
        let next = match top.next {
            Some(n) => parse_via(buf, Span::new(n as usize, top_h.value.end as usize)).ok(),
            None => msg.headers[vi + 1..]
                .iter()
                .find(|h| h.kind == HeaderKind::Via)
                .and_then(|h| parse_via(buf, h.value).ok()),
        };
        let Some(next) = next else {
            return drop(DropReason::ReplyNoVia);
        };
        let t = next.transport.get(buf);
        let transport = if t.eq_ignore_ascii_case(b"UDP") {
            Transport::Udp
        } else if t.eq_ignore_ascii_case(b"TCP") {
            Transport::Tcp
        } else {
            return drop(DropReason::NoRoute);
        };
        let ip = match next.received {
            Some(r) => host_ip(r.get(buf)),
            None => host_ip(next.host.get(buf)),
        };
        let Some(ip) = ip else {
            return drop(DropReason::NoRoute);
        };
        if !is_unicast(ip) {
            return drop(DropReason::BadReply);
        }
        let port = match next.rport {
            Some(Some(p)) => p,
            _ => next.port.unwrap_or(5060),
        };
        let addr = SocketAddr::new(ip, port);
        // remove our via-parm
        match top.next {
            Some(n) => b.replace(top_h.value.start, n, b""),
            None => b.replace(top_h.line.start, top_h.line.end, b""),
        }
        b.emit(buf);
        self.metrics.forwarded_reply();
        let local = self.out_local(transport, addr, rcv);
        Outcome::Send {
            dest: Dest {
                transport,
                addr,
                conn: if transport == Transport::Tcp {
                    top.conn_id
                } else {
                    None
                },
                local,
            },
            kind: SendKind::Reply,
        }
    }

    /// A reply generated by the proxy (rsip builds it), sent back the way
    /// RFC 3261 §18.2.2 / RFC 3581 §4 say: same connection on TCP; on UDP
    /// the source address (with rport) or source IP + sent-by port.
    fn local_reply(
        &self,
        msg: &SipMsg<'_>,
        rcv: &RcvInfo,
        code: u16,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let buf = msg.buf;
        // RFC 3261 §18.2.2 / RFC 3581 §4: where a UDP reply goes. A Via whose
        // parameters are malformed (RFC 4475 §3.1.2.1) is still answered to
        // its sent-by port; without a usable Via there is nothing to answer.
        let udp_port = msg
            .first(HeaderKind::Via)
            .and_then(|h| match parse_via(buf, h.value) {
                Ok(top) if top.rport.is_some() => Some(None),
                Ok(top) => Some(Some(top.port.unwrap_or(5060))),
                Err(_) => via_sent_by_port(buf, h.value).map(|p| Some(p.unwrap_or(5060))),
            });
        let Some(udp_port) = udp_port else {
            self.metrics.dropped(DropReason::BadRequest);
            return Outcome::Dropped(DropReason::BadRequest);
        };
        let text = |h: &HeaderSpan| String::from_utf8_lossy(msg.value(h)).into_owned();
        let mut headers = rsip::Headers::default();
        for h in msg.headers.iter().filter(|h| h.kind == HeaderKind::Via) {
            headers.push(rsip::Header::Via(rsip::headers::Via::from(text(h))));
        }
        if let Some(h) = msg.first(HeaderKind::From) {
            headers.push(rsip::Header::From(rsip::headers::From::from(text(h))));
        }
        if let Some(h) = msg.first(HeaderKind::To) {
            let mut to = text(h);
            if code > 100 && header_param(msg.value(h), b"tag").is_none() {
                let mut hs = std::collections::hash_map::DefaultHasher::new();
                self.secret.hash(&mut hs);
                msg.first(HeaderKind::CallId)
                    .map(|c| msg.value(c))
                    .hash(&mut hs);
                msg.first(HeaderKind::From)
                    .and_then(|f| header_param(msg.value(f), b"tag"))
                    .hash(&mut hs);
                to.push_str(&format!(";tag=sE{:08x}", hs.finish() as u32));
            }
            headers.push(rsip::Header::To(rsip::headers::To::from(to)));
        }
        if let Some(h) = msg.first(HeaderKind::CallId) {
            headers.push(rsip::Header::CallId(rsip::headers::CallId::from(text(h))));
        }
        if let Some(h) = msg.first(HeaderKind::CSeq) {
            headers.push(rsip::Header::CSeq(rsip::headers::CSeq::from(text(h))));
        }
        if code == 420 {
            let mut tags = String::new();
            for h in msg.headers.iter().filter(|h| is_proxy_require(msg, h)) {
                if !tags.is_empty() {
                    tags.push_str(", ");
                }
                tags.push_str(&text(h));
            }
            headers.push(rsip::Header::Unsupported(rsip::headers::Unsupported::from(
                tags,
            )));
        }
        headers.push(rsip::Header::Server(rsip::headers::Server::from(format!(
            "sipedge/{}",
            env!("CARGO_PKG_VERSION")
        ))));
        headers.push(rsip::Header::ContentLength(
            rsip::headers::ContentLength::from(0u32),
        ));
        let status = match rsip::StatusCode::from(code) {
            rsip::StatusCode::Other(..) => rsip::StatusCode::Other(code, reason.to_string()),
            s if reason != default_reason(&s) => rsip::StatusCode::Other(code, reason.to_string()),
            s => s,
        };
        let resp = rsip::Response {
            status_code: status,
            version: rsip::Version::V2,
            headers,
            body: Vec::new(),
        };
        out.clear();
        let _ = write!(out, "{resp}");
        self.metrics.local_reply(code);
        Outcome::Send {
            dest: self.reply_dest(rcv, udp_port),
            kind: SendKind::LocalReply(code),
        }
    }

    /// Where a reply to a request that came in with `rcv` goes (RFC 3261
    /// §18.2.2, RFC 3581 §4): the same connection on TCP; on UDP the source
    /// address (`udp_port` None: the Via asked for rport) or the source IP
    /// and the sent-by port.
    pub(crate) fn reply_dest(&self, rcv: &RcvInfo, udp_port: Option<u16>) -> Dest {
        let addr = match rcv.transport {
            Transport::Tcp => rcv.src,
            Transport::Udp => match udp_port {
                None => rcv.src,
                Some(port) => SocketAddr::new(rcv.src.ip(), port),
            },
        };
        Dest {
            transport: rcv.transport,
            addr,
            conn: rcv.conn,
            local: rcv.local,
        }
    }
}

/// A reply worth forwarding: exactly one CSeq, whose number fits 32 bits
/// (RFC 4475 §3.1.2.5: a reply with overlarge scalars is discarded).
fn reply_sane(msg: &SipMsg<'_>) -> bool {
    let mut cseqs = msg.headers.iter().filter(|h| h.kind == HeaderKind::CSeq);
    matches!((cseqs.next(), cseqs.next()), (Some(h), None) if parse_cseq(msg.value(h)).is_some())
}

/// An address a reply may be sent to: not broadcast, multicast or
/// unspecified (RFC 4475 §3.3.10: a proxy drops a reply whose next Via is
/// 255.255.255.255 rather than broadcast it).
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
}

/// A `Proxy-Require` header (RFC 3261 §20.29; it has no compact form).
fn is_proxy_require(msg: &SipMsg<'_>, h: &HeaderSpan) -> bool {
    h.kind == HeaderKind::Other && h.name.get(msg.buf).eq_ignore_ascii_case(b"proxy-require")
}

/// Append message bytes to a reason phrase (RFC 3261 §25.1 Reason-Phrase):
/// at most 32 of them, anything but unreserved / reserved characters shown as `?`.
fn push_reason_text(reason: &mut String, bytes: &[u8]) {
    for &b in bytes.iter().take(32) {
        let ok = b.is_ascii_alphanumeric() || b"-_.!~*'();/?:@&=+$,%".contains(&b);
        reason.push(if ok { b as char } else { '?' });
    }
}

/// rsip's canonical reason phrase of a known status code.
fn default_reason(s: &rsip::StatusCode) -> String {
    let full = s.to_string();
    full.split_once(' ')
        .map(|(_, r)| r.to_string())
        .unwrap_or_default()
}

fn uri_transport(buf: &[u8], u: &UriParts) -> Option<Transport> {
    let t = u.transport?.get(buf);
    if t.eq_ignore_ascii_case(b"tcp") {
        Some(Transport::Tcp)
    } else if t.eq_ignore_ascii_case(b"udp") {
        Some(Transport::Udp)
    } else {
        None
    }
}

/// Why a request is not forwarded ([`Core::refuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refuse {
    /// Answer with this status (an ACK is dropped instead).
    Reply(u16, &'static str),
    /// Drop silently, counted.
    Drop(DropReason),
}

/// What §16.4 route preprocessing decided; the parsed Route entries are in
/// [`Scratch`]'s `routes`, in order.
#[derive(Debug, Clone, Copy)]
struct RoutePre {
    /// Strict-routing previous hop: the last Route entry, the new Request-URI.
    new_ruri: Option<Span>,
    /// That last Route entry is removed.
    removed_last: bool,
    /// Top Route entries naming us, removed.
    popped: usize,
    /// Route entries still in force: `routes[popped..live]`.
    live: usize,
}

/// Where §16.5 decided to send the request.
#[derive(Debug, Clone, Copy)]
struct NextHop {
    transport: Transport,
    /// With `name`: the port and an unspecified IP of the inbound family.
    addr: SocketAddr,
    /// A host name the transport resolves.
    name: Option<Span>,
}

/// The Request-URI of a request (an empty span for a reply).
fn ruri_span(msg: &SipMsg<'_>) -> Span {
    match msg.start {
        StartLine::Request { uri, .. } => uri,
        StartLine::Response { .. } => Span::default(),
    }
}

/// RFC 3261 §16.3 step 3 (Max-Forwards): zero refuses the request with 483;
/// returns the header and its value (`None`: unparseable, left alone) for
/// §16.6 step 3.
fn rfc3261_16_3_step3_max_forwards<'m>(
    msg: &'m SipMsg<'_>,
) -> Result<Option<(&'m HeaderSpan, Option<u32>)>, Refuse> {
    let Some(h) = msg.first(HeaderKind::MaxForwards) else {
        return Ok(None);
    };
    match parse_u32(msg.value(h)) {
        Some(0) => Err(Refuse::Reply(483, "Too Many Hops")),
        v => Ok(Some((h, v))),
    }
}

/// RFC 3261 §16.6 step 2: the copy's Request-URI — unchanged, or the last
/// Route entry that §16.4 moved there (strict-routing previous hop).
fn rfc3261_16_6_step2_request_uri(msg: &SipMsg<'_>, pre: &RoutePre, b: &mut Builder<'_>) {
    if let Some(s) = pre.new_ruri {
        let span = ruri_span(msg);
        b.replace(span.start, span.end, s.get(msg.buf));
    }
}

/// RFC 3261 §16.6 step 3, a request without Max-Forwards: add one (70).
fn rfc3261_16_6_step3_max_forwards_add(
    msg: &SipMsg<'_>,
    mf: Option<(&HeaderSpan, Option<u32>)>,
    b: &mut Builder<'_>,
) {
    if mf.is_none() {
        let at = msg.start_line.end;
        let t0 = b.tmp.len();
        let _ = write!(b.tmp, "Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\n");
        b.push_tmp(at, at, t0);
    }
}

/// `n` as 16 lower-case hex digits (what `{:016x}` writes), without the
/// formatting machinery.
fn push_hex16(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut d = [0u8; 16];
    for (i, x) in d.iter_mut().enumerate() {
        *x = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out.extend_from_slice(&d);
}

/// `n` in decimal (what `{}` writes), without the formatting machinery.
fn push_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// RFC 3261 §16.6 step 3: decrement Max-Forwards.
fn rfc3261_16_6_step3_max_forwards_decrement(
    mf: Option<(&HeaderSpan, Option<u32>)>,
    b: &mut Builder<'_>,
) {
    if let Some((h, Some(v))) = mf {
        let t0 = b.tmp.len();
        push_dec(b.tmp, u64::from(v - 1));
        b.push_tmp(h.value.start, h.value.end, t0);
    }
}

/// RFC 3261 §18.2.1 / RFC 3581 §4: the client's Via gets `received` (source
/// IP differs from sent-by, or rport asked) and the `rport` value.
fn rfc3261_18_2_1_received(msg: &SipMsg<'_>, via: &Via, rcv: &RcvInfo, b: &mut Builder<'_>) {
    if via.received.is_some() {
        return;
    }
    let src_ip = rcv.src.ip();
    let sent_ip = host_ip(via.host.get(msg.buf));
    if let (Some(None), Some(end)) = (via.rport, via.rport_name_end) {
        let t0 = b.tmp.len();
        let _ = write!(b.tmp, "={}", rcv.src.port());
        b.push_tmp(end, end, t0);
    }
    if via.rport.is_some() || sent_ip != Some(src_ip) {
        let t0 = b.tmp.len();
        b.tmp.extend_from_slice(b";received=");
        let _ = match src_ip {
            IpAddr::V4(v4) => write!(b.tmp, "{v4}"),
            IpAddr::V6(v6) => write!(b.tmp, "{v6}"),
        };
        b.push_tmp(via.parm.end, via.parm.end, t0);
    }
}

/// RFC 3261 §16.4, applied: remove the popped top Route entries and the
/// strict-routing last entry (a header left empty goes entirely).
fn rfc3261_16_4_strip_routes(
    msg: &SipMsg<'_>,
    routes: &[(usize, NameAddr)],
    pre: &RoutePre,
    b: &mut Builder<'_>,
) {
    let is_removed = |k: usize| k < pre.popped || (pre.removed_last && k == routes.len() - 1);
    let mut i = 0;
    while i < routes.len() {
        let hi = routes[i].0;
        let j = routes[i..].iter().take_while(|r| r.0 == hi).count() + i;
        let h = &msg.headers[hi];
        let first_kept = (i..j).find(|&k| !is_removed(k));
        let last_kept = (i..j).rev().find(|&k| !is_removed(k));
        match (first_kept, last_kept) {
            (Some(fk), Some(lk)) => {
                if fk > i {
                    b.replace(h.value.start, routes[fk].1.entry.start, b"");
                }
                if lk + 1 < j {
                    b.replace(routes[lk].1.entry.end, h.value.end, b"");
                }
            }
            _ => b.replace(h.line.start, h.line.end, b""),
        }
        i = j;
    }
}

/// RFC 3261 §16.6 step 9 / §18.3: a UDP message that had no Content-Length
/// gets one (the copy may go over TCP).
fn rfc3261_16_6_step9_content_length(msg: &SipMsg<'_>, add: bool, b: &mut Builder<'_>) {
    if add {
        let t0 = b.tmp.len();
        let _ = write!(
            b.tmp,
            "Content-Length: {}\r\n",
            msg.buf.len() - msg.body_offset
        );
        b.push_tmp(msg.headers_end as u32, msg.headers_end as u32, t0);
    }
}

impl Local {
    fn from_spec(s: &ListenSpec) -> Local {
        let host = s.advertise_host.clone();
        let via_prefix = format!(
            "Via: SIP/2.0/{} {}:{};branch=",
            s.transport.via_str(),
            host,
            s.advertise_port
        )
        .into_bytes();
        let rr = match s.transport {
            Transport::Udp => format!("<sip:{}:{};lr>", host, s.advertise_port),
            Transport::Tcp => format!("<sip:{}:{};transport=tcp;lr>", host, s.advertise_port),
        }
        .into_bytes();
        Local {
            transport: s.transport,
            ip: s.addr.ip(),
            port: s.addr.port(),
            adv_ip: host_ip(host.as_bytes()),
            host: host.into_bytes(),
            adv_port: s.advertise_port,
            via_prefix,
            rr,
        }
    }
}

/// Output assembly: a sorted list of splices over the input.
struct Builder<'s> {
    out: &'s mut Vec<u8>,
    edits: &'s mut Vec<Edit>,
    tmp: &'s mut Vec<u8>,
    resolve: &'s mut String,
}

impl Builder<'_> {
    /// Replace `buf[start..end]` by bytes written to `tmp` since `t0`.
    fn push_tmp(&mut self, start: u32, end: u32, t0: usize) {
        self.edits.push(Edit {
            start,
            end,
            t0: t0 as u32,
            t1: self.tmp.len() as u32,
        });
    }

    fn replace(&mut self, start: u32, end: u32, with: &[u8]) {
        let t0 = self.tmp.len();
        self.tmp.extend_from_slice(with);
        self.push_tmp(start, end, t0);
    }

    /// Write `buf` with all edits applied into `out`.
    fn emit(&mut self, buf: &[u8]) {
        // stable: insertions at one offset keep their order
        self.edits.sort_by_key(|e| (e.start, e.end));
        self.out.clear();
        self.out.reserve(buf.len() + self.tmp.len());
        let mut pos = 0usize;
        for e in self.edits.iter() {
            let (s, en) = (e.start as usize, e.end as usize);
            if s < pos {
                continue; // overlapping edit: never produced by the router; ignore defensively
            }
            self.out.extend_from_slice(&buf[pos..s]);
            self.out
                .extend_from_slice(&self.tmp[e.t0 as usize..e.t1 as usize]);
            pos = en;
        }
        self.out.extend_from_slice(&buf[pos..]);
    }
}

/// Fuzz entry: run arbitrary bytes through `receive_msg` (as a TCP message
/// and as a UDP datagram) with a default configuration. Never panics.
pub fn fuzz_receive_msg(data: &[u8]) {
    use std::sync::OnceLock;
    static CORE: OnceLock<Core> = OnceLock::new();
    let core = CORE.get_or_init(|| {
        let mut cfg = Config::default_config();
        cfg.listen = vec![
            crate::config::parse_listen("l", "udp:127.0.0.1:5060").expect("static"),
            crate::config::parse_listen("l", "tcp:127.0.0.1:5060").expect("static"),
        ];
        Core::new(
            &cfg,
            Box::new(super::nosip::NoneHook),
            Arc::new(Metrics::new()),
        )
    });
    let mut sc = Scratch::new();
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 2], 5062));
    let udp = RcvInfo {
        src,
        local: 0,
        transport: Transport::Udp,
        conn: None,
        outbound: false,
    };
    let _ = core.receive_datagram(data, &udp, &mut sc);
    let tcp = RcvInfo {
        transport: Transport::Tcp,
        local: 1,
        conn: Some(7),
        ..udp
    };
    let body = find_header_end(data, 0).unwrap_or(data.len());
    let _ = core.receive_msg(data, body, false, &tcp, &mut sc);
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "upstream_core_tests.rs"]
mod upstream_core_tests;
