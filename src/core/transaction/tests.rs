//! Transaction-layer rules, one test each, in virtual time (ms).

use super::*;
use crate::sip::framer::find_header_end;
use std::net::SocketAddr;

const T1: u64 = 500;
const T2: u64 = 4000;
const T4: u64 = 5000;

fn dest(t: Transport, port: u16) -> Dest {
    Dest {
        transport: t,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        conn: None,
        local: 0,
    }
}

fn caller(t: Transport) -> Dest {
    dest(t, 5062)
}

fn rcv_from(d: Dest) -> RcvInfo {
    RcvInfo {
        src: d.addr,
        local: 0,
        transport: d.transport,
        conn: d.conn,
        outbound: false,
    }
}

/// A request as the caller sends it.
fn incoming(method: &str, t: Transport, branch: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@example.org SIP/2.0\r\n\
         Via: SIP/2.0/{} 127.0.0.1:5062;branch={branch}\r\n\
         From: <sip:alice@example.org>;tag=f1\r\n\
         To: <sip:bob@example.org>\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 {method}\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        t.via_str()
    )
    .into_bytes()
}

/// The same request as the stateless core forwards it (our Via on top).
fn forwarded(method: &str, t: Transport, branch: &str) -> Vec<u8> {
    let inc = incoming(method, t, branch);
    let at = inc.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut v = inc[..at].to_vec();
    v.extend_from_slice(
        format!(
            "Via: SIP/2.0/{} 127.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\n",
            t.via_str()
        )
        .as_bytes(),
    );
    v.extend_from_slice(&inc[at..]);
    v
}

fn with<R>(bytes: &[u8], f: impl FnOnce(&SipMsg<'_>) -> R) -> R {
    let mut h = Vec::new();
    let end = find_header_end(bytes, 0).unwrap_or(bytes.len());
    let m = SipMsg::parse(bytes, end, &mut h).expect("parse");
    f(&m)
}

fn code_of(bytes: &[u8]) -> u16 {
    with(bytes, |m| match m.start {
        StartLine::Response { code, .. } => code,
        _ => 0,
    })
}

fn method_of(bytes: &[u8]) -> Vec<u8> {
    with(bytes, |m| m.method().to_vec())
}

/// The upstream's answer to a request it received (its Via headers, To tag).
fn answer(req: &[u8], code: u16) -> Vec<u8> {
    answer_tagged(req, code, "uas1")
}

/// [`answer`] with the UAS's To tag `tag` (also used by `core_tests`).
pub(super) fn answer_tagged(req: &[u8], code: u16, tag: &str) -> Vec<u8> {
    with(req, |m| {
        let mut o = format!("SIP/2.0 {code} X\r\n").into_bytes();
        for h in m.headers.iter() {
            let line = &req[h.line.start as usize..h.value.end as usize];
            match h.kind {
                HeaderKind::Via | HeaderKind::From | HeaderKind::CallId | HeaderKind::CSeq => {
                    o.extend_from_slice(line);
                    o.extend_from_slice(b"\r\n");
                }
                HeaderKind::To => {
                    o.extend_from_slice(line);
                    if code > 100 {
                        o.extend_from_slice(b";tag=");
                        o.extend_from_slice(tag.as_bytes());
                    }
                    o.extend_from_slice(b"\r\n");
                }
                _ => {}
            }
        }
        o.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        o
    })
}

use crate::sip::msg::StartLine;

/// Fake upstream set: targets 0.. at ports 5080.., records reports.
#[derive(Default)]
struct Set {
    targets: Vec<(TargetId, Dest)>,
    failures: Vec<(TargetId, Signal)>,
    successes: Vec<TargetId>,
}

impl Set {
    fn new(n: u16, t: Transport) -> Set {
        Set {
            targets: (0..n)
                .map(|i| (TargetId(u32::from(i)), dest(t, 5080 + i)))
                .collect(),
            ..Set::default()
        }
    }
}

impl Upstreams for Set {
    fn pick(&mut self, _: &[u8], exclude: &[TargetId], _: &Dest) -> Option<(TargetId, Dest)> {
        self.targets
            .iter()
            .find(|(id, _)| !exclude.contains(id))
            .copied()
    }
    fn failure(&mut self, t: TargetId, s: Signal, _: u64) {
        self.failures.push((t, s));
    }
    fn success(&mut self, t: TargetId, _: u64) {
        self.successes.push(t);
    }
}

struct H {
    tab: TxnTable,
    out: Out,
    set: Set,
    t: Transport,
    now: u64,
    hash: u64,
}

impl H {
    fn new(t: Transport, targets: u16) -> H {
        // the 100 Trying at once, as most rules below expect it
        H::with_cfg(
            t,
            targets,
            TxnConfig {
                trying_delay_ms: 0,
                ..TxnConfig::default()
            },
        )
    }
    fn with_cfg(t: Transport, targets: u16, cfg: TxnConfig) -> H {
        H {
            tab: TxnTable::new(cfg, 0),
            out: Out::default(),
            set: Set::new(targets, t),
            t,
            now: 0,
            hash: 0x1234_5678_9abc_def0,
        }
    }
    /// Route a new request from the caller to target 0 (as the core would).
    fn start(&mut self, method: &str) -> Option<TxnRef> {
        self.out.clear();
        let inc = incoming(method, self.t, "z9hG4bKc1");
        let v = with(&inc, |m| {
            self.tab
                .on_request(self.now, m, self.hash, caller(self.t), &mut self.out)
        });
        assert_eq!(v, ReqVerdict::New);
        let fwd = forwarded(method, self.t, "z9hG4bKc1");
        let (tid, d) = self.set.targets[0];
        self.tab.create(
            self.now,
            &fwd,
            self.hash,
            caller(self.t),
            Some(tid),
            d,
            &mut self.out,
        )
    }
    fn request_again(&mut self, method: &str, branch: &str) -> ReqVerdict {
        self.out.clear();
        let inc = incoming(method, self.t, branch);
        with(&inc, |m| {
            self.tab
                .on_request(self.now, m, self.hash, caller(self.t), &mut self.out)
        })
    }
    /// The last request sent upstream.
    fn last_request_up(&self) -> Vec<u8> {
        let s = self
            .out
            .sends
            .iter()
            .rev()
            .find(|s| s.kind == SendKind::Request)
            .expect("a request was sent");
        self.out.bytes(s).to_vec()
    }
    fn reply(&mut self, req: &[u8], code: u16, from: Dest) -> bool {
        self.out.clear();
        let a = answer(req, code);
        with(&a, |m| {
            self.tab
                .on_reply(self.now, m, &rcv_from(from), &mut self.out, &mut self.set)
        })
    }
    fn advance(&mut self, to: u64) {
        self.out.clear();
        self.now = to;
        self.tab.poll(self.now, &mut self.out, &mut self.set);
    }
    /// (dest port, kind, code or method) of each send.
    fn sent(&self) -> Vec<(u16, String)> {
        self.out
            .sends
            .iter()
            .map(|s| {
                let b = self.out.bytes(s);
                let what = if b.starts_with(b"SIP/2.0") {
                    code_of(b).to_string()
                } else {
                    String::from_utf8_lossy(&method_of(b)).into_owned()
                };
                (s.dest.addr.port(), what)
            })
            .collect()
    }
}

fn sends(v: &[(u16, &str)]) -> Vec<(u16, String)> {
    v.iter().map(|(p, s)| (*p, s.to_string())).collect()
}

#[test]
fn s16_2_invite_gets_100_trying_and_is_forwarded_with_our_stateful_branch() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE").expect("created");
    assert_eq!(h.sent(), sends(&[(5062, "100"), (5080, "INVITE")]));
    let req = h.last_request_up();
    let text = String::from_utf8_lossy(&req);
    assert!(text.contains(";branch=z9hG4bKsT"), "{text}");
    // the 100 carries the caller's Via only, no To tag
    let t = String::from_utf8_lossy(h.out.bytes(&h.out.sends[0])).into_owned();
    assert!(!t.contains("127.0.0.1:5060"), "{t}");
    assert!(
        t.contains("branch=z9hG4bKc1") && !t.contains("tag=sE"),
        "{t}"
    );
    assert_eq!(h.tab.active(), 1);
    assert_eq!(h.tab.stats.created, 1);
}

#[test]
fn timer_a_invite_retransmitted_over_udp_doubling_from_t1() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let mut at = 0;
    let mut iv = T1;
    for _ in 0..5 {
        h.advance(at + iv - 1);
        assert!(h.sent().is_empty(), "early at {}", h.now);
        at += iv;
        h.advance(at);
        assert_eq!(h.sent(), sends(&[(5080, "INVITE")]), "at {at}");
        iv *= 2;
    }
}

#[test]
fn timer_a_not_used_over_tcp() {
    let mut h = H::new(Transport::Tcp, 1);
    h.start("INVITE");
    for k in 1..60 {
        h.advance(k * T1);
        assert!(h.sent().is_empty(), "at {}", h.now);
    }
}

#[test]
fn timer_b_invite_timeout_answers_408_s16_8() {
    let mut h = H::new(Transport::Tcp, 1);
    h.start("INVITE");
    h.advance(64 * T1 - 1);
    assert!(h.sent().is_empty());
    h.advance(64 * T1);
    assert_eq!(h.sent(), sends(&[(5062, "408")]));
    assert_eq!(h.out.sends[0].kind, SendKind::LocalReply(408));
    let t = String::from_utf8_lossy(h.out.bytes(&h.out.sends[0])).into_owned();
    assert!(t.contains(";tag=sE"), "{t}");
    assert_eq!(h.tab.stats.timeouts, 1);
    assert_eq!(
        h.set.failures,
        vec![(TargetId(0), Signal::TransactionTimeout)]
    );
}

#[test]
fn timer_c_cancels_a_ringing_invite_and_answers_408() {
    let cfg = TxnConfig {
        timer_c_ms: 200_000,
        ..TxnConfig::default()
    };
    let mut h = H::with_cfg(Transport::Tcp, 2, cfg);
    h.start("INVITE");
    let req = h.last_request_up();
    h.now = 100;
    assert!(h.reply(&req, 180, dest(Transport::Tcp, 5080)));
    assert_eq!(h.sent(), sends(&[(5062, "180")]));
    h.advance(100 + 64 * T1); // Timer B no longer applies after a provisional
    assert!(h.sent().is_empty());
    h.advance(100 + 200_000);
    // CANCEL downstream, 408 to the caller, no failover after a provisional
    assert_eq!(h.sent(), sends(&[(5080, "CANCEL"), (5062, "408")]));
}

#[test]
fn timer_d_completed_invite_client_acks_final_retransmissions_32s() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.now = 50;
    assert!(h.reply(&req, 486, dest(Transport::Udp, 5080)));
    assert_eq!(h.sent(), sends(&[(5080, "ACK"), (5062, "486")]));
    // the caller's ACK (same branch) is absorbed
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Absorbed);
    // the upstream did not get our ACK: its 486 again → ACK again, not forwarded
    h.now = 10_000;
    assert!(h.reply(&req, 486, dest(Transport::Udp, 5080)));
    assert_eq!(h.sent(), sends(&[(5080, "ACK")]));
    h.advance(50 + 32_000 - 10);
    assert_eq!(h.tab.active(), 1);
    h.advance(50 + 32_000 + 10);
    assert_eq!(h.tab.active(), 0);
}

#[test]
fn timer_e_non_invite_retransmission_doubles_capped_at_t2() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("OPTIONS");
    assert_eq!(h.sent(), sends(&[(5080, "OPTIONS")]));
    let mut at = 0;
    for iv in [T1, 2 * T1, 4 * T1, T2, T2, T2] {
        at += iv;
        h.advance(at - 1);
        assert!(h.sent().is_empty());
        h.advance(at);
        assert_eq!(h.sent(), sends(&[(5080, "OPTIONS")]), "at {at}");
    }
}

#[test]
fn timer_e_continues_at_t2_after_a_provisional() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("OPTIONS");
    let req = h.last_request_up();
    h.now = 10;
    h.reply(&req, 180, dest(Transport::Udp, 5080));
    h.advance(T1); // first retransmission still due at T1
    assert_eq!(h.sent(), sends(&[(5080, "OPTIONS")]));
    h.advance(T1 + T2 - 1);
    assert!(h.sent().is_empty());
    h.advance(T1 + T2);
    assert_eq!(h.sent(), sends(&[(5080, "OPTIONS")]));
}

#[test]
fn timer_f_non_invite_timeout_answers_408() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("OPTIONS");
    h.advance(64 * T1);
    assert!(
        h.sent().contains(&(5062, "408".to_string())),
        "{:?}",
        h.sent()
    );
    assert_eq!(h.tab.stats.timeouts, 1);
}

#[test]
fn timer_g_final_retransmitted_to_udp_caller_until_the_ack() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.now = 0;
    h.reply(&req, 486, dest(Transport::Udp, 5080));
    let mut at = 0;
    for iv in [T1, 2 * T1, 4 * T1, T2, T2] {
        at += iv;
        h.advance(at);
        assert_eq!(h.sent(), sends(&[(5062, "486")]), "at {at}");
    }
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Absorbed);
    h.advance(at + T2);
    assert!(h.sent().is_empty());
}

#[test]
fn timer_h_ends_the_transaction_when_no_ack_comes() {
    let mut h = H::new(Transport::Tcp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.reply(&req, 486, dest(Transport::Tcp, 5080));
    h.advance(64 * T1 - 10);
    assert_eq!(h.tab.active(), 1);
    assert!(h.sent().is_empty(), "no Timer G over TCP");
    h.advance(64 * T1);
    assert_eq!(h.tab.active(), 0);
}

#[test]
fn timer_i_confirmed_absorbs_ack_retransmissions_for_t4() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.now = 40_000; // past Timer D (32 s): only Timer I keeps the slot
    h.reply(&req, 486, dest(Transport::Udp, 5080));
    h.now = 40_001;
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Absorbed);
    h.advance(40_001 + T4 - 10);
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Absorbed);
    h.advance(72_100);
    assert_eq!(h.tab.active(), 0);
    // gone: a late ACK is forwarded statelessly
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Forward);
}

#[test]
fn timer_j_non_invite_server_absorbs_retransmissions_for_64_t1() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("BYE");
    let req = h.last_request_up();
    h.reply(&req, 200, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    h.now = 1000;
    assert_eq!(h.request_again("BYE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    h.advance(64 * T1 - 10);
    assert_eq!(h.tab.active(), 1);
    h.advance(64 * T1 + 10);
    assert_eq!(h.tab.active(), 0);
    assert_eq!(h.request_again("BYE", "z9hG4bKc1"), ReqVerdict::New);
}

#[test]
fn timer_j_zero_and_timer_k_t4_for_tcp_caller_udp_upstream() {
    let mut h = H::new(Transport::Udp, 1);
    // caller over TCP (J = 0), upstream over UDP (K = T4)
    h.out.clear();
    let fwd = forwarded("BYE", Transport::Tcp, "z9hG4bKc1");
    let d = dest(Transport::Udp, 5080);
    h.tab.create(
        0,
        &fwd,
        h.hash,
        caller(Transport::Tcp),
        Some(TargetId(0)),
        d,
        &mut h.out,
    );
    let req = h.last_request_up();
    h.reply(&req, 200, d);
    // a retransmitted 200 within T4 is absorbed, not forwarded twice
    h.now = T4 - 100;
    assert!(h.reply(&req, 200, d));
    assert!(h.sent().is_empty());
    h.advance(T4 + 10);
    assert_eq!(h.tab.active(), 0);
}

#[test]
fn s17_2_retransmitted_invite_gets_the_last_provisional_again() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "100")]));
    h.reply(&req, 180, dest(Transport::Udp, 5080));
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "180")]));
    assert_eq!(h.tab.stats.absorbed, 2);
    // the upstream's 100 is not forwarded (§16.7 step 5)
    h.reply(&req, 100, dest(Transport::Udp, 5080));
    assert!(h.sent().is_empty());
}

#[test]
fn s16_10_cancel_answered_200_and_sent_hop_by_hop_then_487_acked() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.reply(&req, 180, dest(Transport::Udp, 5080));
    assert_eq!(h.request_again("CANCEL", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "200"), (5080, "CANCEL")]));
    // the CANCEL carries the INVITE's branch, CSeq number, no To tag
    let c = String::from_utf8_lossy(h.out.bytes(&h.out.sends[1])).into_owned();
    let inv = String::from_utf8_lossy(&req).into_owned();
    let branch = |s: &str| s.split("branch=").nth(1).unwrap()[..25].to_string();
    assert_eq!(branch(&c), branch(&inv));
    assert!(
        c.contains("CSeq: 1 CANCEL") && !c.contains("tag=uas"),
        "{c}"
    );
    assert_eq!(c.matches("Via:").count(), 1, "{c}");
    h.reply(&req, 487, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5080, "ACK"), (5062, "487")]));
}

#[test]
fn s9_1_cancel_waits_for_a_provisional() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    assert_eq!(h.request_again("CANCEL", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    h.reply(&req, 180, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "180"), (5080, "CANCEL")]));
    // the CANCEL is retransmitted on UDP, and stops with its 200
    h.advance(T1 + 1);
    assert_eq!(h.sent(), sends(&[(5080, "CANCEL")]));
    let mut c = req.clone();
    let at = c.windows(8).position(|w| w == b"1 INVITE").unwrap();
    c.splice(at..at + 8, b"1 CANCEL".iter().copied());
    assert!(h.reply(&c, 200, dest(Transport::Udp, 5080)));
    assert!(h.sent().is_empty());
    h.advance(10 * T1);
    assert!(h.sent().is_empty());
}

#[test]
fn s16_10_unmatched_cancel_is_forwarded_statelessly() {
    let mut h = H::new(Transport::Udp, 1);
    assert_eq!(h.request_again("CANCEL", "z9hG4bKzz"), ReqVerdict::Forward);
}

#[test]
fn s17_1_1_3_local_ack_for_non_2xx_is_hop_by_hop() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.reply(&req, 404, dest(Transport::Udp, 5080));
    let ack = String::from_utf8_lossy(h.out.bytes(&h.out.sends[0])).into_owned();
    assert!(
        ack.starts_with("ACK sip:bob@example.org SIP/2.0\r\n"),
        "{ack}"
    );
    assert_eq!(ack.matches("Via:").count(), 1, "{ack}");
    assert!(ack.contains("127.0.0.1:5060;branch=z9hG4bKsT"), "{ack}");
    assert!(
        ack.contains("To: <sip:bob@example.org>;tag=uas1\r\n"),
        "{ack}"
    );
    assert!(ack.contains("CSeq: 1 ACK\r\n"), "{ack}");
    // the 404 to the caller has lost our Via
    let r = String::from_utf8_lossy(h.out.bytes(&h.out.sends[1])).into_owned();
    assert!(!r.contains("127.0.0.1:5060"), "{r}");
}

#[test]
fn s17_1_1_3_ack_for_2xx_is_forwarded_end_to_end() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    h.reply(&req, 200, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    // a new branch (RFC 3261 2xx ACK): no transaction
    assert_eq!(h.request_again("ACK", "z9hG4bKack"), ReqVerdict::Forward);
    // same branch (RFC 2543 style): Accepted passes it on too
    assert_eq!(h.request_again("ACK", "z9hG4bKc1"), ReqVerdict::Forward);
    // a 2xx retransmission is forwarded, the INVITE retransmission absorbed
    assert!(h.reply(&req, 200, dest(Transport::Udp, 5080)));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert!(h.sent().is_empty());
    // Timer L
    h.advance(64 * T1 + 10);
    assert_eq!(h.tab.active(), 0);
}

#[test]
fn s16_7_best_response_order() {
    assert!(better(408, 0));
    assert!(better(603, 486)); // 6xx first
    assert!(!better(486, 603));
    assert!(better(302, 486)); // lowest class
    assert!(better(486, 503));
    assert!(!better(503, 408));
    assert!(better(401, 404)); // helps a resubmission
    assert!(!better(404, 408)); // same class: the first stays
}

#[test]
fn s16_7_all_tries_503_answer_500() {
    let mut h = H::new(Transport::Udp, 2);
    h.start("INVITE");
    let r0 = h.last_request_up();
    h.reply(&r0, 503, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5080, "ACK"), (5081, "INVITE")]));
    let r1 = h.last_request_up();
    h.reply(&r1, 503, dest(Transport::Udp, 5081));
    assert_eq!(h.sent(), sends(&[(5081, "ACK"), (5062, "500")]));
}

#[test]
fn s16_7_best_of_timeout_and_503_is_408() {
    let mut h = H::new(Transport::Udp, 2);
    h.start("INVITE");
    let r0 = h.last_request_up();
    h.reply(&r0, 503, dest(Transport::Udp, 5080));
    h.advance(64 * T1);
    let s = h.sent();
    assert_eq!(s.last(), Some(&(5062, "408".to_string())), "{s:?}");
}

#[test]
fn failover_on_503_caller_sees_only_the_final_answer() {
    let mut h = H::new(Transport::Udp, 3);
    let r = h.start("INVITE").unwrap();
    assert_eq!(r.attempt, 0);
    let r0 = h.last_request_up();
    h.reply(&r0, 503, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5080, "ACK"), (5081, "INVITE")]));
    let r1 = h.last_request_up();
    assert_ne!(r0, r1, "a new branch for the new try");
    assert_eq!(h.tab.stats.failovers, 1);
    h.reply(&r1, 180, dest(Transport::Udp, 5081));
    h.reply(&r1, 200, dest(Transport::Udp, 5081));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    assert_eq!(h.set.failures, vec![(TargetId(0), Signal::Reply(503))]);
    assert_eq!(h.set.successes, vec![TargetId(1)]);
}

#[test]
fn failover_on_timeout_then_success() {
    let mut h = H::new(Transport::Udp, 2);
    h.start("OPTIONS");
    h.advance(64 * T1);
    assert_eq!(h.sent(), sends(&[(5081, "OPTIONS")]));
    let r1 = h.last_request_up();
    h.reply(&r1, 200, dest(Transport::Udp, 5081));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    assert_eq!(
        h.set.failures,
        vec![(TargetId(0), Signal::TransactionTimeout)]
    );
}

#[test]
fn failover_on_transport_error() {
    let mut h = H::new(Transport::Tcp, 2);
    let r = h.start("INVITE").unwrap();
    h.out.clear();
    h.tab.transport_error(5, r, &mut h.out, &mut h.set);
    assert_eq!(h.sent(), sends(&[(5081, "INVITE")]));
    assert_eq!(h.set.failures, vec![(TargetId(0), Signal::SendFailed)]);
    // a stale report (old try) changes nothing
    h.out.clear();
    h.tab.transport_error(6, r, &mut h.out, &mut h.set);
    assert!(h.sent().is_empty());
}

#[test]
fn failover_bounded_by_max_tries() {
    let cfg = TxnConfig {
        max_tries: 2,
        ..TxnConfig::default()
    };
    let mut h = H::with_cfg(Transport::Tcp, 3, cfg);
    h.start("INVITE");
    let r0 = h.last_request_up();
    h.reply(&r0, 503, dest(Transport::Tcp, 5080));
    let r1 = h.last_request_up();
    h.reply(&r1, 503, dest(Transport::Tcp, 5081));
    assert_eq!(h.sent(), sends(&[(5081, "ACK"), (5062, "500")]));
}

#[test]
fn no_failover_for_other_codes() {
    let mut h = H::new(Transport::Udp, 2);
    h.start("INVITE");
    let r0 = h.last_request_up();
    h.reply(&r0, 486, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5080, "ACK"), (5062, "486")]));
    assert_eq!(h.set.successes, vec![TargetId(0)]);
}

#[test]
fn late_final_of_an_earlier_try_is_acked_not_forwarded() {
    let mut h = H::new(Transport::Udp, 2);
    h.start("INVITE");
    let r0 = h.last_request_up();
    h.reply(&r0, 503, dest(Transport::Udp, 5080));
    // the first target repeats its 503 (our ACK was lost)
    assert!(h.reply(&r0, 503, dest(Transport::Udp, 5080)));
    assert_eq!(h.sent(), sends(&[(5080, "ACK")]));
    let ack = String::from_utf8_lossy(h.out.bytes(&h.out.sends[0])).into_owned();
    let b0 = String::from_utf8_lossy(&r0).into_owned();
    let branch = |s: &str| s.split("branch=").nth(1).unwrap()[..25].to_string();
    assert_eq!(branch(&ack), branch(&b0), "the earlier try's branch");
}

#[test]
fn cap_full_answers_503_with_retry_after() {
    let cfg = TxnConfig {
        max_transactions: 1,
        ..TxnConfig::default()
    };
    let mut h = H::with_cfg(Transport::Udp, 1, cfg);
    h.start("INVITE").unwrap();
    assert!(!h.tab.has_room());
    h.out.clear();
    let inc = incoming("INVITE", Transport::Udp, "z9hG4bKc2");
    with(&inc, |m| {
        h.tab.reject_full(m, 99, caller(Transport::Udp), &mut h.out)
    });
    assert_eq!(h.sent(), sends(&[(5062, "503")]));
    let t = String::from_utf8_lossy(h.out.bytes(&h.out.sends[0])).into_owned();
    assert!(t.contains("Retry-After: 5\r\n"), "{t}");
    assert_eq!(h.tab.stats.cap_rejects, 1);
    // create refuses too
    let fwd = forwarded("INVITE", Transport::Udp, "z9hG4bKc2");
    let d = dest(Transport::Udp, 5080);
    assert!(
        h.tab
            .create(0, &fwd, 99, caller(Transport::Udp), None, d, &mut h.out)
            .is_none()
    );
}

#[test]
fn reply_not_of_a_transaction_is_left_to_the_stateless_core() {
    let mut h = H::new(Transport::Udp, 1);
    let fwd = forwarded("INVITE", Transport::Udp, "z9hG4bKc1");
    assert!(!h.reply(&fwd, 200, dest(Transport::Udp, 5080)));
}

#[test]
fn slots_are_reused_and_memory_is_bounded() {
    let mut h = H::new(Transport::Tcp, 1);
    for k in 0..1000u64 {
        h.hash = k * 7919 + 1;
        h.now = k;
        h.start("BYE").unwrap();
        let r = h.last_request_up();
        h.reply(&r, 200, dest(Transport::Tcp, 5080));
        h.advance(k + 1);
    }
    assert_eq!(h.tab.active(), 0);
    // freed within a wheel tick (10 ms)
    assert!(h.tab.slots.len() <= 16, "{}", h.tab.slots.len());
    println!(
        "size_of Slot = {} bytes, TxnRef = {}, Dest = {}; buffer bytes held = {}",
        SLOT_SIZE,
        std::mem::size_of::<TxnRef>(),
        std::mem::size_of::<Dest>(),
        h.tab.buffer_bytes()
    );
}

#[test]
fn branch_round_trip() {
    let mut b = b"z9hG4bKsE0123456789abcdef".to_vec();
    write_branch(&mut b, 0, 0xdead_beef_1234_5678, 0xA12_3456, 0x7f, 3);
    assert_eq!(decode_branch(&b), Some((0x34_5678, 0xA12_3456, 0x7f, 3)));
    assert_eq!(branch_shard(&b), Some(0xA));
    assert_eq!(decode_branch(b"z9hG4bKsE0123456789abcdef"), None);
}

#[test]
fn wheel_fires_each_entry_once_at_its_deadline() {
    let mut w = wheel::Wheel::new(8, 10, 0);
    let mut due = Vec::new();
    for (slot, at) in [(1, 5), (2, 95), (3, 1000)] {
        w.insert(wheel::Entry {
            slot,
            generation: 0,
            at,
        });
    }
    w.expire(4, &mut due);
    assert!(due.is_empty());
    w.expire(50, &mut due);
    assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![1]);
    w.expire(999, &mut due);
    assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![2]);
    w.expire(5000, &mut due);
    assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![3]);
    assert_eq!(w.entries(), 0);
}

#[test]
fn linger_caps_timers_j_and_l() {
    let cfg = TxnConfig {
        linger_ms: 5000,
        ..TxnConfig::default()
    };
    let mut h = H::with_cfg(Transport::Udp, 1, cfg);
    h.start("BYE");
    let req = h.last_request_up();
    h.reply(&req, 200, dest(Transport::Udp, 5080));
    h.hash ^= 1;
    h.start("INVITE");
    let inv = h.last_request_up();
    h.reply(&inv, 200, dest(Transport::Udp, 5080));
    h.advance(4990);
    assert_eq!(h.tab.active(), 2);
    h.advance(5010);
    assert_eq!(h.tab.active(), 0);
}

/// Start an INVITE with server key `hash` towards target `target`.
fn start_to(h: &mut H, hash: u64, target: usize) -> TxnRef {
    h.hash = hash;
    h.out.clear();
    let inc = incoming("INVITE", h.t, "z9hG4bKc1");
    let v = with(&inc, |m| {
        h.tab.on_request(h.now, m, h.hash, caller(h.t), &mut h.out)
    });
    assert_eq!(v, ReqVerdict::New);
    let fwd = forwarded("INVITE", h.t, "z9hG4bKc1");
    let (tid, d) = h.set.targets[target];
    h.tab
        .create(h.now, &fwd, h.hash, caller(h.t), Some(tid), d, &mut h.out)
        .expect("created")
}

#[test]
fn s17_2_1_trying_sent_only_when_no_answer_within_200ms() {
    let mut h = H::with_cfg(Transport::Udp, 1, TxnConfig::default());
    h.start("INVITE").expect("created");
    assert_eq!(h.sent(), sends(&[(5080, "INVITE")]));
    h.advance(199);
    assert!(h.sent().is_empty());
    h.advance(200);
    assert_eq!(h.sent(), sends(&[(5062, "100")]));
    assert_eq!(h.out.sends[0].kind, SendKind::LocalReply(100));
    // a retransmission now gets that 100 again
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "100")]));
}

#[test]
fn s17_2_1_no_trying_when_a_provisional_is_forwarded_within_200ms() {
    let mut h = H::with_cfg(Transport::Udp, 1, TxnConfig::default());
    h.start("INVITE").expect("created");
    let req = h.last_request_up();
    h.now = 50;
    h.reply(&req, 180, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "180")]));
    h.advance(250);
    assert!(h.sent().is_empty(), "no 100 after the 180");
    h.now = 300;
    h.reply(&req, 200, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
}

#[test]
fn s17_2_1_retransmitted_invite_before_the_delay_gets_the_100_at_once() {
    let mut h = H::with_cfg(Transport::Udp, 1, TxnConfig::default());
    h.start("INVITE").expect("created");
    h.now = 150;
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "100")]));
    h.advance(400);
    assert!(h.sent().is_empty(), "sent once");
}

#[test]
fn trying_delay_zero_sends_the_100_at_once() {
    let cfg = TxnConfig {
        trying_delay_ms: 0,
        ..TxnConfig::default()
    };
    let mut h = H::with_cfg(Transport::Udp, 1, cfg);
    h.start("INVITE").expect("created");
    assert_eq!(h.sent(), sends(&[(5062, "100"), (5080, "INVITE")]));
}

#[test]
fn rfc6026_accepted_invite_keeps_no_buffer_and_still_absorbs_and_forwards() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("INVITE");
    let req = h.last_request_up();
    let d = dest(Transport::Udp, 5080);
    h.reply(&req, 200, d);
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    // the finished transaction holds no buffer; the pool has it for the next one
    assert!(h.tab.slots.iter().all(|s| s.buf.capacity() == 0));
    assert_eq!(h.tab.pool.len(), 1);
    assert_eq!(h.tab.active(), 1);
    // a retransmitted INVITE is absorbed without an answer
    assert_eq!(h.request_again("INVITE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert!(h.sent().is_empty());
    // a retransmitted 2xx still reaches the caller (§16.7 step 5)
    assert!(h.reply(&req, 200, d));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    // the next transaction takes the pooled buffer
    h.hash ^= 0xff;
    h.start("INVITE");
    assert!(h.tab.pool.is_empty());
}

#[test]
fn s16_9_transport_failed_fails_over_every_try_to_that_destination_at_once() {
    let mut h = H::new(Transport::Tcp, 3);
    start_to(&mut h, 0x1111_0000_0000_0001, 0);
    start_to(&mut h, 0x2222_0000_0000_0002, 0);
    start_to(&mut h, 0x3333_0000_0000_0003, 1);
    h.out.clear();
    h.now = 5;
    let (_, d0) = h.set.targets[0];
    let n = h
        .tab
        .transport_failed(h.now, d0.addr, Transport::Tcp, &mut h.out, &mut h.set);
    assert_eq!(n, 2);
    // both tries to target 0 went to the next target, without Timer B
    assert_eq!(h.sent(), sends(&[(5081, "INVITE"), (5081, "INVITE")]));
    assert_eq!(h.tab.stats.failovers, 2);
    assert_eq!(h.tab.stats.timeouts, 0);
    // the transport reported the target itself: no second report
    assert!(h.set.failures.is_empty());
    // the same error again finds no try waiting there
    h.out.clear();
    let n = h
        .tab
        .transport_failed(h.now, d0.addr, Transport::Tcp, &mut h.out, &mut h.set);
    assert_eq!(n, 0);
    assert!(h.sent().is_empty());
}

#[test]
fn s16_9_transport_failed_with_no_target_left_answers_408() {
    let mut h = H::new(Transport::Tcp, 1);
    h.start("INVITE");
    h.out.clear();
    let (_, d0) = h.set.targets[0];
    h.tab
        .transport_failed(1, d0.addr, Transport::Tcp, &mut h.out, &mut h.set);
    assert_eq!(h.sent(), sends(&[(5062, "408")]));
}

#[test]
fn transport_failed_ignores_other_transports_and_answered_tries() {
    let mut h = H::new(Transport::Tcp, 2);
    h.start("INVITE");
    let req = h.last_request_up();
    let (_, d0) = h.set.targets[0];
    // another transport to the same address: not this try
    h.out.clear();
    let n = h
        .tab
        .transport_failed(1, d0.addr, Transport::Udp, &mut h.out, &mut h.set);
    assert_eq!(n, 0);
    // a final answer came: a later reset of the connection changes nothing
    h.reply(&req, 486, d0);
    h.out.clear();
    let n = h
        .tab
        .transport_failed(2, d0.addr, Transport::Tcp, &mut h.out, &mut h.set);
    assert_eq!(n, 0);
    assert!(h.sent().is_empty());
}

#[test]
fn next_deadline_is_the_earliest_armed_timer() {
    let mut h = H::with_cfg(Transport::Tcp, 1, TxnConfig::default());
    assert_eq!(h.tab.next_deadline(), None);
    h.start("INVITE");
    // the delayed 100 Trying first, then Timer B
    assert_eq!(h.tab.next_deadline(), Some(200));
    h.advance(200);
    assert_eq!(h.sent(), sends(&[(5062, "100")]));
    assert_eq!(h.tab.next_deadline(), Some(64 * T1));
}

#[test]
fn wheel_next_deadline_is_a_lower_bound_beyond_the_horizon() {
    let mut w = Wheel::new(16, 10, 0);
    assert_eq!(w.next_deadline(), None);
    w.insert(Entry {
        slot: 1,
        generation: 0,
        at: 35,
    });
    assert_eq!(w.next_deadline(), Some(35));
    // beyond one turn (160 ms): its bucket's end, early but never late
    let mut w = Wheel::new(16, 10, 0);
    w.insert(Entry {
        slot: 2,
        generation: 0,
        at: 1_005,
    });
    let d = w.next_deadline().expect("armed");
    assert!(d <= 1_005);
    let mut due = Vec::new();
    w.expire(d, &mut due);
    assert!(due.is_empty());
}

#[test]
fn timer_j_completed_non_invite_keeps_only_its_answer_for_retransmissions() {
    let mut h = H::new(Transport::Udp, 1);
    h.start("BYE");
    let req = h.last_request_up();
    h.reply(&req, 200, dest(Transport::Udp, 5080));
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    let s = h.tab.slots.iter().find(|s| s.key != 0).expect("lingering");
    assert_eq!(s.req_len, 0, "the request is not kept");
    assert_eq!(s.buf.len(), s.sent_end as usize);
    assert!(s.buf.starts_with(b"SIP/2.0 200"));
    // §17.2.2: a retransmitted BYE gets the same 200 again
    h.now = 1000;
    assert_eq!(h.request_again("BYE", "z9hG4bKc1"), ReqVerdict::Absorbed);
    assert_eq!(h.sent(), sends(&[(5062, "200")]));
    assert!(h.out.bytes(&h.out.sends[0]).starts_with(b"SIP/2.0 200"));
}

#[test]
fn wheel_next_deadline_finds_the_earliest_bucket_across_the_wrap() {
    let mut w = Wheel::new(256, 10, 0);
    let mut due = Vec::new();
    // move the current tick near the end of the turn
    w.expire(2_500, &mut due);
    for (slot, at) in [(1, 2_700), (2, 2_520), (3, 2_900)] {
        w.insert(Entry {
            slot,
            generation: 0,
            at,
        });
    }
    // 2_700 lies past the wrap (bucket 14); 2_520 before it (bucket 252)
    assert_eq!(w.next_deadline(), Some(2_520));
    w.expire(2_520, &mut due);
    assert_eq!(due.len(), 1);
    assert_eq!(w.next_deadline(), Some(2_700));
    w.expire(2_700, &mut due);
    assert_eq!(w.next_deadline(), Some(2_900));
    w.expire(2_900, &mut due);
    assert_eq!(w.next_deadline(), None);
    assert_eq!(w.entries(), 0);
}
