//! RFC 4475 (SIP torture test messages): every message of the corpus in
//! `../shared/corpora/rfc4475`, one test each, named after it.
//!
//! Most tests drive the core directly (`Core::receive_datagram` for UDP, the
//! stream framer + `Core::receive_msg` for TCP) and compare bytes: a §3.1.1
//! (valid) request must come out with only the proxy's own edits (its Via on
//! top, Record-Route, Max-Forwards, `received`/`rport` on the client's Via)
//! and every other byte unchanged; a valid reply must come out with exactly
//! our Via removed. Every other message gets what the RFC says a proxy does
//! with it: an answer (400 naming the header, 416, 420, 483, 505) on UDP and
//! TCP, or a drop counted under its reason.
//!
//! No network is used by these core tests: the core is sans-IO and the test
//! asserts its outcome instead of acting on it, so a corpus host name in a
//! Route (`services.example.com`) comes back as an `Outcome::Resolve` that
//! nobody resolves. The core listens on 127.0.0.1:5060, the upstream is
//! 127.0.0.1:5080 and the client is 127.0.0.2; a reply's client Via is
//! rewritten to a 127/8 address before it goes in.
//!
//! The last tests run a real sipedge on loopback and check, over UDP and
//! TCP, that malformed requests are answered `400` with a reason phrase
//! naming the header; there the corpus messages get the test socket's
//! address as their Via sent-by, and none is forwarded.

mod common;

use common::*;
use sipedge::config::{Config, Transport, parse_listen, parse_upstream};
use sipedge::core::nosip::NoneHook;
use sipedge::core::{Core, Dest, Outcome, RcvInfo, Scratch, SendKind};
use sipedge::metrics::Metrics;
use sipedge::sip::framer::{Frame, Framer, FramerConfig};
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// the corpus
// ---------------------------------------------------------------------------

/// `shared/corpora/rfc4475` beside the clone (CI), or beside the worktree's
/// parent (developer worktrees), or `$SIPEDGE_SHARED_DIR/corpora/rfc4475`.
fn corpus_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SIPEDGE_SHARED_DIR") {
        candidates.push(PathBuf::from(d).join("corpora/rfc4475"));
    }
    candidates.push(manifest.join("../shared/corpora/rfc4475"));
    candidates.push(manifest.join("../../shared/corpora/rfc4475"));
    candidates
        .iter()
        .find(|d| d.join("wsinv.dat").is_file())
        .cloned()
        .unwrap_or_else(|| panic!("RFC 4475 corpus not found; looked in {candidates:?}"))
}

fn load(name: &str) -> Vec<u8> {
    let path = corpus_dir().join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `msg` with `from` (which must occur exactly once) replaced by `to`.
fn replace_once(msg: &[u8], from: &str, to: &str) -> Vec<u8> {
    let f = from.as_bytes();
    let hits: Vec<usize> = msg
        .windows(f.len())
        .enumerate()
        .filter(|(_, w)| *w == f)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{from:?} must occur exactly once");
    let mut out = msg[..hits[0]].to_vec();
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&msg[hits[0] + f.len()..]);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// the core under test
// ---------------------------------------------------------------------------

const CLIENT: &str = "127.0.0.2:5062";
const UPSTREAM: &str = "127.0.0.1:5080";
const CONN: u64 = 7;

fn core() -> Core {
    let mut cfg = Config::default_config();
    cfg.listen = vec![
        parse_listen("test", "udp:127.0.0.1:5060").expect("listen"),
        parse_listen("test", "tcp:127.0.0.1:5060").expect("listen"),
    ];
    cfg.upstreams = vec![parse_upstream("test", &format!("sip:{UPSTREAM}")).expect("upstream")];
    cfg.record_route = true;
    Core::new(&cfg, Box::new(NoneHook), Arc::new(Metrics::new()))
}

fn rcv(t: Transport) -> RcvInfo {
    RcvInfo {
        src: CLIENT.parse().expect("addr"),
        local: match t {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        },
        transport: t,
        conn: (t == Transport::Tcp).then_some(CONN),
        outbound: false,
    }
}

/// One result of the core: the outcome, the bytes to send, the name to resolve.
struct Out {
    outcome: Outcome,
    bytes: Vec<u8>,
    resolve: String,
}

/// The datagram through `receive_datagram`.
fn run_udp(core: &Core, msg: &[u8]) -> Out {
    let mut sc = Scratch::new();
    let outcome = core.receive_datagram(msg, &rcv(Transport::Udp), &mut sc);
    Out {
        outcome,
        bytes: sc.out.clone(),
        resolve: sc.resolve.clone(),
    }
}

/// The bytes as a TCP stream: the framer (Content-Length required, as on a
/// real connection) and `receive_msg` for every message it frames; all
/// bytes must be framed.
fn run_tcp(core: &Core, stream: &[u8]) -> Vec<Out> {
    let (outs, rest) = run_tcp_partial(core, stream);
    assert_eq!(rest, 0, "{rest} unframed bytes left");
    outs
}

/// [`run_tcp`], and how many bytes are left waiting for more.
fn run_tcp_partial(core: &Core, stream: &[u8]) -> (Vec<Out>, usize) {
    let mut framer = Framer::new(FramerConfig {
        max_msg_size: 65535,
        require_content_length: true,
    });
    let mut sc = Scratch::new();
    let mut rest = stream;
    let mut outs = Vec::new();
    for _ in 0..16 {
        let step = framer.next(rest).unwrap_or_else(|e| panic!("framing: {e}"));
        let (len, body) = match step {
            Frame::NeedMore => break,
            Frame::Ping => (4, None),
            Frame::Skip(n) => (n, None),
            f => {
                let (len, body) = f.for_core().expect("message");
                (len, Some(body))
            }
        };
        if let Some(body) = body {
            let outcome =
                core.receive_msg(&rest[..len], body, false, &rcv(Transport::Tcp), &mut sc);
            outs.push(Out {
                outcome,
                bytes: sc.out.clone(),
                resolve: sc.resolve.clone(),
            });
        }
        rest = &rest[len..];
    }
    (outs, rest.len())
}

fn metric(core: &Core, series: &str) -> f64 {
    metric_value(&core.metrics.encode(), series).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// expectations
// ---------------------------------------------------------------------------

/// Where a forwarded request must go.
enum Next {
    /// The configured upstream.
    Upstream,
    /// A Route with an IP literal.
    Addr(&'static str),
    /// A Route with a host name: the core asks the transport to resolve it
    /// (nothing resolves it here), port 5060.
    Name(&'static str),
}

/// A §3.1.1 request forwarded over `t`: the start line unchanged, then our
/// Via (and Record-Route for a dialog-creating INVITE), then the message with
/// exactly `edits` applied (Max-Forwards decrement, `received`/`rport`).
fn check_forwarded(
    name: &str,
    out: &Out,
    t: Transport,
    input: &[u8],
    edits: &[(&str, &str)],
    record_route: bool,
    next: &Next,
) {
    let dest = match (out.outcome, next) {
        (
            Outcome::Send {
                dest,
                kind: SendKind::Request,
            },
            Next::Upstream | Next::Addr(_),
        ) => dest,
        (
            Outcome::Resolve {
                dest,
                kind: SendKind::Request,
            },
            Next::Name(host),
        ) => {
            assert_eq!(out.resolve, *host, "{name}: host name to resolve");
            dest
        }
        (o, _) => panic!(
            "{name} over {t:?}: not forwarded as expected: {o:?}\n{}",
            text(&out.bytes)
        ),
    };
    match next {
        Next::Upstream => assert_eq!(dest.addr, UPSTREAM.parse().expect("addr"), "{name}"),
        Next::Addr(a) => assert_eq!(dest.addr, a.parse().expect("addr"), "{name}"),
        Next::Name(_) => assert_eq!(dest.addr.port(), 5060, "{name}"),
    }
    assert_eq!(dest.transport, t, "{name}: the transport it arrived on");

    let mut rest = input.to_vec();
    for (from, to) in edits {
        rest = replace_once(&rest, from, to);
    }
    let sl = input
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("start line")
        + 2;
    let out_b = &out.bytes;
    assert_eq!(&out_b[..sl], &input[..sl], "{name}: start line unchanged");
    // our Via: fixed prefix, a 16-hex-digit hash, `;i=` of the connection on TCP
    let (via_t, rr) = match t {
        Transport::Udp => ("UDP", "<sip:127.0.0.1:5060;lr>"),
        Transport::Tcp => ("TCP", "<sip:127.0.0.1:5060;transport=tcp;lr>"),
    };
    let prefix = format!("Via: SIP/2.0/{via_t} 127.0.0.1:5060;branch=z9hG4bKsE");
    let via_end = sl
        + out_b[sl..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("our Via")
        + 2;
    let our_via = text(&out_b[sl..via_end]);
    let hash = our_via
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{name}: our Via first, got {our_via:?}"));
    let conn = match t {
        Transport::Udp => String::new(),
        Transport::Tcp => format!(";i={CONN}"),
    };
    let hash = hash
        .strip_suffix(&format!("{conn}\r\n"))
        .unwrap_or_else(|| panic!("{name}: our Via {our_via:?}"));
    assert!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}: branch hash {hash:?}"
    );
    let mut expected = input[..sl].to_vec();
    expected.extend_from_slice(our_via.as_bytes());
    if record_route {
        expected.extend_from_slice(format!("Record-Route: {rr}\r\n").as_bytes());
    }
    expected.extend_from_slice(&rest[sl..]);
    if *out_b != expected {
        panic!(
            "{name} over {t:?}: forwarded bytes differ\n--- expected\n{}\n--- got\n{}",
            text(&expected),
            text(out_b)
        );
    }
}

/// A valid request: forwarded over UDP and over TCP with only our edits.
fn assert_valid_request(
    name: &str,
    edits: &[(&str, &str)],
    record_route: bool,
    next: Next,
) -> Core {
    let input = load(name);
    let core = core();
    let udp = run_udp(&core, &input);
    check_forwarded(
        name,
        &udp,
        Transport::Udp,
        &input,
        edits,
        record_route,
        &next,
    );
    let tcp = run_tcp(&core, &input);
    assert!(!tcp.is_empty(), "{name}: nothing framed over TCP");
    check_forwarded(
        name,
        &tcp[0],
        Transport::Tcp,
        &input,
        edits,
        record_route,
        &next,
    );
    assert_eq!(
        metric(&core, "sipedge_forwarded_total{kind=\"request\"}"),
        tcp.len() as f64 + 1.0,
        "{name}"
    );
    core
}

/// Answered by the proxy itself with `code` and exactly `reason`, over UDP
/// (to the client's address, the Via's sent-by port or its rport) and over
/// TCP (on the connection it came in on). The reply copies the request's
/// Via, Call-ID and CSeq values byte for byte.
fn assert_answered(name: &str, msg: &[u8], code: u16, reason: &str, udp_port: u16) -> Core {
    let core = core();
    let udp = run_udp(&core, msg);
    let tcp = run_tcp(&core, msg);
    assert_eq!(tcp.len(), 1, "{name}: one message over TCP");
    for (t, out) in [(Transport::Udp, &udp), (Transport::Tcp, &tcp[0])] {
        let Outcome::Send {
            dest,
            kind: SendKind::LocalReply(c),
        } = out.outcome
        else {
            panic!("{name} over {t:?}: not answered: {:?}", out.outcome);
        };
        assert_eq!(c, code, "{name} over {t:?}");
        let want = match t {
            Transport::Udp => Dest {
                transport: t,
                addr: SocketAddr::new(CLIENT.parse::<SocketAddr>().expect("a").ip(), udp_port),
                conn: None,
                local: 0,
            },
            Transport::Tcp => Dest {
                transport: t,
                addr: CLIENT.parse().expect("addr"),
                conn: Some(CONN),
                local: 1,
            },
        };
        assert_eq!(dest, want, "{name} over {t:?}: where the reply goes");
        let reply = text(&out.bytes);
        let status = format!("SIP/2.0 {code} {reason}\r\n");
        assert!(
            reply.starts_with(&status),
            "{name} over {t:?}: want {status:?}, got\n{reply}"
        );
        let req = text(msg);
        for h in ["Call-ID", "CSeq", "i"] {
            if let Some(v) = header_value(&req, h) {
                assert!(reply.contains(&v), "{name}: {h} {v:?} copied\n{reply}");
            }
        }
        assert!(reply.ends_with("Content-Length: 0\r\n\r\n"), "{reply}");
    }
    assert_eq!(
        metric(
            &core,
            &format!("sipedge_local_replies_total{{code=\"{code}\"}}")
        ),
        2.0,
        "{name}: counted"
    );
    assert_eq!(
        metric(&core, "sipedge_forwarded_total{kind=\"request\"}"),
        0.0
    );
    core
}

/// First value of header `name` (as written, case-insensitive) in `msg`.
fn header_value(msg: &str, name: &str) -> Option<String> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
}

/// Dropped over UDP and TCP with `reason` counted (twice).
fn assert_dropped(name: &str, msg: &[u8], reason: &str) -> Core {
    let core = core();
    let udp = run_udp(&core, msg);
    let tcp = run_tcp(&core, msg);
    for out in std::iter::once(&udp).chain(tcp.iter()) {
        let dropped = match out.outcome {
            Outcome::Dropped(r) => r.as_str() == reason,
            Outcome::ParseError => reason == "parse_failure",
            _ => false,
        };
        assert!(
            dropped,
            "{name}: want a drop ({reason}), got {:?}\n{}",
            out.outcome,
            text(&out.bytes)
        );
    }
    assert_eq!(
        metric(
            &core,
            &format!("sipedge_dropped_total{{reason=\"{reason}\"}}")
        ),
        1.0 + tcp.len() as f64,
        "{name}: drop counted"
    );
    assert_eq!(
        metric(&core, "sipedge_forwarded_total{kind=\"request\"}"),
        0.0
    );
    assert_eq!(
        metric(&core, "sipedge_forwarded_total{kind=\"reply\"}"),
        0.0
    );
    core
}

/// A reply as if answering a request we forwarded: our Via goes on top and
/// the client's Via (`client_via`, the corpus text) becomes `loopback_via`.
fn reply_through_us(name: &str, client_via: &str, loopback_via: &str) -> (Vec<u8>, Vec<u8>) {
    let orig = replace_once(&load(name), client_via, loopback_via);
    let sl = orig
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("status line")
        + 2;
    let mut ours = orig[..sl].to_vec();
    ours.extend_from_slice(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\n");
    ours.extend_from_slice(&orig[sl..]);
    (ours, orig)
}

/// A valid reply: forwarded over UDP to `to` with only our Via removed.
fn assert_reply_forwarded(name: &str, msg: &[u8], expected: &[u8], to: &str) {
    let core = core();
    let out = run_udp(&core, msg);
    let Outcome::Send {
        dest,
        kind: SendKind::Reply,
    } = out.outcome
    else {
        panic!("{name}: reply not forwarded: {:?}", out.outcome);
    };
    assert_eq!(dest.addr, to.parse().expect("addr"), "{name}");
    assert_eq!(dest.transport, Transport::Udp);
    assert!(
        out.bytes == expected,
        "{name}: forwarded reply differs\n--- expected\n{}\n--- got\n{}",
        text(expected),
        text(&out.bytes)
    );
    assert_eq!(
        metric(&core, "sipedge_forwarded_total{kind=\"reply\"}"),
        1.0
    );
}

// ---------------------------------------------------------------------------
// §3.1.1 valid messages: forwarded, every other byte unchanged
// ---------------------------------------------------------------------------

const RECEIVED: &str = ";received=127.0.0.2";

/// §3.1.1.1: folding, odd spacing and case, compact forms, a comma-separated
/// Via with LWS around every separator, `0068`, an unusual Route.
#[test]
fn rfc4475_wsinv() {
    assert_valid_request(
        "wsinv",
        &[
            ("MaX-fOrWaRdS: 0068", "MaX-fOrWaRdS: 67"),
            (
                "192.0.2.2;branch=390skdjuw",
                "192.0.2.2;branch=390skdjuw;received=127.0.0.2",
            ),
        ],
        false, // the To has a tag: not dialog-creating
        Next::Name("services.example.com"),
    );
}

/// §3.1.1.2: every legal character in method, URI user part, tokens, quoted
/// strings (escaped NUL/BEL/DEL), Call-ID and a UTF-8 header value.
#[test]
fn rfc4475_intmeth() {
    assert_valid_request(
        "intmeth",
        &[
            ("Max-Forwards: 255", "Max-Forwards: 254"),
            ("_+`'~\r\nTo:", "_+`'~;received=127.0.0.2\r\nTo:"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.3: escaped characters in URIs and an escaped method-like header name.
#[test]
fn rfc4475_esc01() {
    assert_valid_request(
        "esc01",
        &[
            ("Max-Forwards: 87", "Max-Forwards: 86"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        true,
        Next::Upstream,
    );
}

/// §3.1.1.4: escaped NULs in URIs.
#[test]
fn rfc4475_escnull() {
    assert_valid_request(
        "escnull",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.5: `%` that is not an escape, in the method and elsewhere.
#[test]
fn rfc4475_esc02() {
    assert_valid_request(
        "esc02",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "z9hG4bK209%fzsnel234",
                "z9hG4bK209%fzsnel234;received=127.0.0.2",
            ),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.6: no LWS between display name and `<`.
#[test]
fn rfc4475_lwsdisp() {
    assert_valid_request(
        "lwsdisp",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.7: long values, 34 Vias in every case and compact form.
#[test]
fn rfc4475_longreq() {
    assert_valid_request(
        "longreq",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "sip33.example.com\r\n",
                "sip33.example.com;received=127.0.0.2\r\n",
            ),
        ],
        true,
        Next::Upstream,
    );
}

/// §3.1.1.8: a REGISTER datagram with an INVITE after its Content-Length:
/// over UDP the extra octets are discarded; over TCP both are messages.
#[test]
fn rfc4475_dblreq() {
    let input = load("dblreq");
    let cut = input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of REGISTER")
        + 4;
    let register = &input[..cut];
    let edits = [
        ("Max-Forwards: 8", "Max-Forwards: 7"),
        ("z9hG4bKkdjuw23492", "z9hG4bKkdjuw23492;received=127.0.0.2"),
    ];
    let core = core();
    let udp = run_udp(&core, &input);
    check_forwarded(
        "dblreq",
        &udp,
        Transport::Udp,
        register,
        &edits,
        false,
        &Next::Upstream,
    );
    let tcp = run_tcp(&core, &input);
    // REGISTER, INVITE (the CRLF between is skipped), then the INVITE's
    // Content-Length (150) leaves `C\r\n\r\n` of its body: not SIP, a parse
    // error that releases a TCP connection
    assert_eq!(tcp.len(), 3);
    assert_eq!(tcp[2].outcome, Outcome::ParseError);
    check_forwarded(
        "dblreq",
        &tcp[0],
        Transport::Tcp,
        register,
        &edits,
        false,
        &Next::Upstream,
    );
    // the second message of the stream is the INVITE (Content-Length: 150),
    // forwarded in turn
    let invite = &input[cut + 2..];
    let invite_head = invite
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of INVITE head")
        + 4;
    let invite = &invite[..invite_head + 150];
    let invite_edits = [
        ("Max-Forwards: 8", "Max-Forwards: 7"),
        (
            "z9hG4bKkdjuw380234",
            "z9hG4bKkdjuw380234;received=127.0.0.2",
        ),
    ];
    check_forwarded(
        "dblreq INVITE",
        &tcp[1],
        Transport::Tcp,
        invite,
        &invite_edits,
        true,
        &Next::Upstream,
    );
}

/// §3.1.1.9: `;` in the user part of the Request-URI; a folded Accept.
#[test]
fn rfc4475_semiuri() {
    assert_valid_request(
        "semiuri",
        &[
            ("Max-Forwards: 3", "Max-Forwards: 2"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.10: Vias with unknown transports below the top one.
#[test]
fn rfc4475_transports() {
    assert_valid_request(
        "transports",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (
                "t1.example.com;branch=z9hG4bKkdjuw\r\n",
                "t1.example.com;branch=z9hG4bKkdjuw;received=127.0.0.2\r\n",
            ),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.1.1.11: a multipart body with binary content; a Route to an IP
/// literal; the client's `rport` filled in.
#[test]
fn rfc4475_mpart01() {
    assert_valid_request(
        "mpart01",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            (";rport\r\n", ";rport=5062;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Addr("127.0.0.1:5080"),
    );
}

/// §3.1.1.12: a reason phrase with UTF-8 and odd characters.
#[test]
fn rfc4475_unreason() {
    let (msg, expected) = reply_through_us(
        "unreason",
        "Via: SIP/2.0/UDP 192.0.2.198;",
        "Via: SIP/2.0/UDP 127.0.0.3;",
    );
    assert_reply_forwarded("unreason", &msg, &expected, "127.0.0.3:5060");
}

/// §3.1.1.13: an empty reason phrase.
#[test]
fn rfc4475_noreason() {
    let (msg, expected) = reply_through_us(
        "noreason",
        "Via: SIP/2.0/UDP 192.0.2.105;",
        "Via: SIP/2.0/UDP 127.0.0.3;",
    );
    assert_reply_forwarded("noreason", &msg, &expected, "127.0.0.3:5060");
}

// ---------------------------------------------------------------------------
// §3.1.2 invalid messages
// ---------------------------------------------------------------------------

/// §3.1.2.1: `;;,;,,` in the Via (its sent-by still says where to answer).
#[test]
fn rfc4475_badinv01() {
    assert_answered("badinv01", &load("badinv01"), 400, "Bad Via", 5060);
}

/// §3.1.2.2: Content-Length larger than the datagram: 400 over UDP; over TCP
/// the message is simply incomplete (the framer waits for more).
#[test]
fn rfc4475_clerr() {
    let core = core();
    let out = run_udp(&core, &load("clerr"));
    assert!(
        matches!(
            out.outcome,
            Outcome::Send {
                kind: SendKind::LocalReply(400),
                ..
            }
        ),
        "{:?}",
        out.outcome
    );
    assert!(text(&out.bytes).starts_with("SIP/2.0 400 Bad Content-Length\r\n"));
    let (outs, waiting) = run_tcp_partial(&core, &load("clerr"));
    assert!(
        outs.is_empty() && waiting == load("clerr").len(),
        "TCP: waits for the body"
    );
}

/// §3.1.2.3: negative Content-Length (over TCP a framing error closes the
/// connection: the stream cannot be delimited).
#[test]
fn rfc4475_ncl() {
    let core = core();
    let out = run_udp(&core, &load("ncl"));
    assert!(
        matches!(
            out.outcome,
            Outcome::Send {
                kind: SendKind::LocalReply(400),
                ..
            }
        ),
        "{:?}",
        out.outcome
    );
    assert!(text(&out.bytes).starts_with("SIP/2.0 400 Bad Content-Length\r\n"));
    let mut framer = Framer::new(FramerConfig {
        max_msg_size: 65535,
        require_content_length: true,
    });
    assert!(framer.next(&load("ncl")).is_err());
}

/// §3.1.2.4: CSeq number beyond 2**32-1 (and Max-Forwards 300).
#[test]
fn rfc4475_scalar02() {
    assert_answered("scalar02", &load("scalar02"), 400, "Bad CSeq", 5060);
}

/// §3.1.2.5: a reply with overlarge scalars is discarded, not forwarded.
#[test]
fn rfc4475_scalarlg() {
    let (msg, _) = reply_through_us("scalarlg", "received=192.0.2.129", "received=127.0.0.3");
    assert_dropped("scalarlg", &msg, "bad_reply");
}

/// §3.1.2.6: unterminated quoted display name.
#[test]
fn rfc4475_quotbal() {
    assert_answered("quotbal", &load("quotbal"), 400, "Bad To", 5050);
}

/// §3.1.2.7: `<>` around the Request-URI.
#[test]
fn rfc4475_ltgtruri() {
    assert_answered("ltgtruri", &load("ltgtruri"), 400, "Bad Request-URI", 5060);
}

/// §3.1.2.8: LWS inside the Request-URI.
#[test]
fn rfc4475_lwsruri() {
    assert_answered("lwsruri", &load("lwsruri"), 400, "Bad Request-Line", 5060);
}

/// §3.1.2.9: several SPs between the request-line elements.
#[test]
fn rfc4475_lwsstart() {
    assert_answered("lwsstart", &load("lwsstart"), 400, "Bad Request-Line", 5060);
}

/// §3.1.2.10: SPs after the version (never forwarded: bytes are not re-serialised).
#[test]
fn rfc4475_trws() {
    assert_answered("trws", &load("trws"), 400, "Bad Request-Line", 5060);
}

/// §3.1.2.11: escaped headers in the Request-URI.
#[test]
fn rfc4475_escruri() {
    assert_answered("escruri", &load("escruri"), 400, "Bad Request-URI", 5060);
}

/// §3.1.2.12: a non-GMT Date: the proxy does not use Date, so it forwards the
/// request unaltered.
#[test]
fn rfc4475_baddate() {
    assert_valid_request(
        "baddate",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        true,
        Next::Upstream,
    );
}

/// §3.1.2.13: a Contact URI with `?headers` not enclosed in `<>`.
#[test]
fn rfc4475_regbadct() {
    assert_answered("regbadct", &load("regbadct"), 400, "Bad Contact", 5060);
}

/// §3.1.2.14: spaces inside `< addr-spec >`.
#[test]
fn rfc4475_badaspec() {
    assert_answered("badaspec", &load("badaspec"), 400, "Bad To", 5060);
}

/// §3.1.2.15: a comma in an unquoted display name (From comes first).
#[test]
fn rfc4475_baddn() {
    assert_answered("baddn", &load("baddn"), 400, "Bad From", 5060);
}

/// §3.1.2.16: SIP/7.0.
#[test]
fn rfc4475_badvers() {
    assert_answered(
        "badvers",
        &load("badvers"),
        505,
        "Version Not Supported",
        5060,
    );
}

/// §3.1.2.17: CSeq method differs from the request method.
#[test]
fn rfc4475_mismatch01() {
    assert_answered(
        "mismatch01",
        &load("mismatch01"),
        400,
        "CSeq method does not match request method",
        5060,
    );
}

/// §3.1.2.18: an unknown method with a mismatching CSeq method.
#[test]
fn rfc4475_mismatch02() {
    assert_answered(
        "mismatch02",
        &load("mismatch02"),
        400,
        "CSeq method does not match request method",
        5060,
    );
}

/// §3.1.2.19: a status code of 4294967301: not a SIP status line; a reply is
/// never answered, so it is dropped as a parse failure.
#[test]
fn rfc4475_bigcode() {
    let core = assert_dropped("bigcode", &load("bigcode"), "parse_failure");
    assert_eq!(
        metric(&core, "sipedge_parse_failures_total{transport=\"udp\"}"),
        1.0
    );
}

// ---------------------------------------------------------------------------
// §3.2 transaction layer, §3.3 application layer, §3.4 RFC 2543
// ---------------------------------------------------------------------------

/// §3.2.1: `branch=z9hG4bK` with no identifier: rejected statelessly.
#[test]
fn rfc4475_badbranch() {
    assert_answered("badbranch", &load("badbranch"), 400, "Bad Via branch", 5060);
}

/// §3.3.1: Call-ID, From, To and Max-Forwards missing.
#[test]
fn rfc4475_insuf() {
    assert_answered("insuf", &load("insuf"), 400, "Missing From", 5060);
}

/// §3.3.2: unknown Request-URI scheme.
#[test]
fn rfc4475_unkscm() {
    assert_answered(
        "unkscm",
        &load("unkscm"),
        416,
        "Unsupported URI Scheme",
        5060,
    );
}

/// §3.3.3: a known but atypical Request-URI scheme the proxy cannot route.
#[test]
fn rfc4475_novelsc() {
    assert_answered(
        "novelsc",
        &load("novelsc"),
        416,
        "Unsupported URI Scheme",
        5060,
    );
}

/// §3.3.4: unknown schemes in To, From and Contact: valid, forwarded.
#[test]
fn rfc4475_unksm2() {
    assert_valid_request(
        "unksm2",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.3.5: a Proxy-Require the proxy does not support: 420 listing the tags
/// in Unsupported (Require is the UAS's business).
#[test]
fn rfc4475_bext01() {
    let core = assert_answered("bext01", &load("bext01"), 420, "Bad Extension", 5060);
    let out = run_udp(&core, &load("bext01"));
    let reply = text(&out.bytes);
    assert_eq!(
        header_value(&reply, "Unsupported").as_deref(),
        Some("noProxiesSupportThis, norDoAnyProxiesSupportThis"),
        "{reply}"
    );
}

/// §3.3.6: unknown Content-Type: the UAS's business; forwarded.
#[test]
fn rfc4475_invut() {
    assert_valid_request(
        "invut",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        true,
        Next::Upstream,
    );
}

/// §3.3.7: unknown Authorization scheme: the registrar's business; forwarded.
#[test]
fn rfc4475_regaut01() {
    assert_valid_request(
        "regaut01",
        &[
            ("Max-Forwards: 8", "Max-Forwards: 7"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.3.8: two CSeq, Call-ID, To, From and Max-Forwards.
#[test]
fn rfc4475_multi01() {
    assert_answered("multi01", &load("multi01"), 400, "Duplicate From", 5060);
}

/// §3.3.9: two different Content-Length values (over TCP the stream cannot be
/// delimited: a framing error).
#[test]
fn rfc4475_mcl01() {
    let core = core();
    let out = run_udp(&core, &load("mcl01"));
    assert!(
        matches!(
            out.outcome,
            Outcome::Send {
                kind: SendKind::LocalReply(400),
                ..
            }
        ),
        "{:?}",
        out.outcome
    );
    assert!(text(&out.bytes).starts_with("SIP/2.0 400 Bad Content-Length\r\n"));
    let mut framer = Framer::new(FramerConfig {
        max_msg_size: 65535,
        require_content_length: true,
    });
    assert!(framer.next(&load("mcl01")).is_err());
}

/// §3.3.10: a 200 whose next Via is 255.255.255.255: dropped, not broadcast.
/// The top Via is made ours (the message as a proxy would receive it).
#[test]
fn rfc4475_bcast() {
    let msg = replace_once(
        &load("bcast"),
        "Via: SIP/2.0/UDP 192.0.2.198;",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;",
    );
    assert_dropped("bcast", &msg, "bad_reply");
}

/// §3.3.11: Max-Forwards 0 on a request not for the proxy.
#[test]
fn rfc4475_zeromf() {
    assert_answered("zeromf", &load("zeromf"), 483, "Too Many Hops", 5060);
}

/// §3.3.12: a REGISTER with a contact parameter: forwarded.
#[test]
fn rfc4475_cparam01() {
    assert_valid_request(
        "cparam01",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.3.13: a REGISTER with a URL parameter: forwarded.
#[test]
fn rfc4475_cparam02() {
    assert_valid_request(
        "cparam02",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.3.14: a REGISTER whose Contact (in `<>`) has an escaped header: valid
/// syntax, the registrar's business; forwarded.
#[test]
fn rfc4475_regescrt() {
    assert_valid_request(
        "regescrt",
        &[
            ("Max-Forwards: 70", "Max-Forwards: 69"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        false,
        Next::Upstream,
    );
}

/// §3.3.15: an SDP offer the UAS cannot accept: forwarded.
#[test]
fn rfc4475_sdp01() {
    assert_valid_request(
        "sdp01",
        &[
            ("Max-Forwards: 5", "Max-Forwards: 4"),
            ("z9hG4bKkdjuw\r\n", "z9hG4bKkdjuw;received=127.0.0.2\r\n"),
        ],
        true,
        Next::Upstream,
    );
}

/// §3.4.1: RFC 2543 syntax (no branch, no Max-Forwards, no tags, no
/// Content-Length on UDP): forwarded with Max-Forwards 70 inserted and the
/// Content-Length a UDP message without one gets.
#[test]
fn rfc4475_inv2543() {
    let input = load("inv2543");
    let body = input.len()
        - (input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4);
    let core = core();
    let out = run_udp(&core, &input);
    let with_mf = replace_once(
        &input,
        "INVITE sip:UserB@example.com SIP/2.0\r\n",
        "INVITE sip:UserB@example.com SIP/2.0\r\nMax-Forwards: 70\r\n",
    );
    // check_forwarded puts our Via and Record-Route before the inserted
    // Max-Forwards; build the expectation with it after them instead
    let out_t = text(&out.bytes);
    assert!(
        matches!(
            out.outcome,
            Outcome::Send {
                kind: SendKind::Request,
                ..
            }
        ),
        "{:?}\n{out_t}",
        out.outcome
    );
    let lines: Vec<&str> = out_t.split("\r\n").collect();
    assert_eq!(lines[0], "INVITE sip:UserB@example.com SIP/2.0");
    assert!(lines[1].starts_with("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsE"));
    assert_eq!(lines[2], "Record-Route: <sip:127.0.0.1:5060;lr>");
    assert_eq!(lines[3], "Max-Forwards: 70");
    let rest = replace_once(
        &with_mf,
        "Via: SIP/2.0/UDP iftgw.example.com\r\n",
        &format!("Via: SIP/2.0/UDP iftgw.example.com{RECEIVED}\r\n"),
    );
    let rest = replace_once(
        &rest,
        "Content-Type: application/sdp\r\n\r\n",
        &format!("Content-Type: application/sdp\r\nContent-Length: {body}\r\n\r\n"),
    );
    let mf_at = text(&rest).find("Max-Forwards: 70\r\n").expect("mf") + 18;
    let want_tail = &rest[mf_at..];
    let got_tail_at = out_t.find("Max-Forwards: 70\r\n").expect("mf") + 18;
    assert_eq!(
        text(&out.bytes[got_tail_at..]),
        text(want_tail),
        "everything after the inserted headers is the message with received= and Content-Length"
    );
}

// ---------------------------------------------------------------------------
// over the wire: malformed requests answered 400 naming the header
// ---------------------------------------------------------------------------

/// The corpus message with its top Via's sent-by replaced by `local` (and
/// `rport` asked for), so the answer comes back to the test socket.
fn with_via(name: &str, corpus_via: &str, transport: &str, local: SocketAddr) -> Vec<u8> {
    replace_once(
        &load(name),
        corpus_via,
        &format!("Via: SIP/2.0/{transport} {local};rport;"),
    )
}

/// lwsdisp (valid) with a header whose name holds a control byte.
fn with_bad_header_name(transport: &str, local: SocketAddr) -> Vec<u8> {
    let m = with_via(
        "lwsdisp",
        "Via: SIP/2.0/UDP funky.example.com;",
        transport,
        local,
    );
    replace_once(
        &m,
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nX-Bad\x01Name: 1\r\n",
    )
}

fn udp_ask(proxy: &Proxy, build: impl Fn(SocketAddr) -> Vec<u8>) -> String {
    let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = sock.local_addr().expect("addr");
    sock.send_to(&build(local), proxy.sip_addr()).expect("send");
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => text(&buf[..n]),
        Err(e) => panic!("no answer over UDP: {e}\n{}", proxy.log_tail()),
    }
}

/// The upstream is a loopback port nobody listens on: nothing may be forwarded.
fn proxy() -> Proxy {
    Proxy::start(free_port())
}

#[test]
fn rfc4475_wire_udp_400_names_the_header() {
    let proxy = proxy();
    let r = udp_ask(&proxy, |l| {
        with_via("quotbal", "Via: SIP/2.0/UDP 192.0.2.59:5050;", "UDP", l)
    });
    assert!(r.starts_with("SIP/2.0 400 Bad To\r\n"), "{r}");
    let r = udp_ask(&proxy, |l| with_bad_header_name("UDP", l));
    assert!(
        r.starts_with("SIP/2.0 400 Bad header X-Bad?Name\r\n"),
        "{r}"
    );
    let r = udp_ask(&proxy, |l| {
        with_via("lwsstart", "Via: SIP/2.0/UDP host1.example.com;", "UDP", l)
    });
    assert!(r.starts_with("SIP/2.0 400 Bad Request-Line\r\n"), "{r}");
    let m = proxy.metrics();
    assert_eq!(
        metric_value(&m, "sipedge_local_replies_total{code=\"400\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&m, "sipedge_forwarded_total{kind=\"request\"}"),
        Some(0.0)
    );
}

#[test]
fn rfc4475_wire_tcp_400_names_the_header_and_keeps_the_connection() {
    let proxy = proxy();
    let mut s = connect(proxy.sip_addr());
    let local = s.local_addr().expect("addr");
    let cases = [
        (
            with_via(
                "badaspec",
                "Via: SIP/2.0/UDP host4.example.com:5060;",
                "TCP",
                local,
            ),
            "SIP/2.0 400 Bad To\r\n",
        ),
        (
            with_bad_header_name("TCP", local),
            "SIP/2.0 400 Bad header X-Bad?Name\r\n",
        ),
        (
            with_via("trws", "Via: SIP/2.0/TCP host1.examle.com;", "TCP", local),
            "SIP/2.0 400 Bad Request-Line\r\n",
        ),
        (
            with_via(
                "baddn",
                "Via:     SIP/2.0/UDP c.example.com:5060;",
                "TCP",
                local,
            ),
            "SIP/2.0 400 Bad From\r\n",
        ),
    ];
    for (msg, want) in cases {
        s.write_all(&msg).expect("write");
        let r = read_sip_message(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
        assert!(r.starts_with(want), "want {want:?}, got\n{r}");
    }
    // the stream stayed in step: the same connection still works
    assert_options_200(&proxy, &mut s, "after-400s");
    let m = proxy.metrics();
    assert_eq!(
        metric_value(&m, "sipedge_local_replies_total{code=\"400\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric_value(&m, "sipedge_tcp_released_total{reason=\"parse_error\"}"),
        Some(0.0)
    );
}
