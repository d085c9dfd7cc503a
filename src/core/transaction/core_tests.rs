//! The stateful mode through the core: `receive_msg` with the transaction
//! layer in front of the §16 routing (byte arrays in, messages out).

use super::*;
use crate::config::{Config, Selection, parse_listen, parse_upstream};
use crate::core::nosip::NoneHook;
use crate::core::proxy::{Core, Outcome, Scratch};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;

const CLIENT: &str = "198.51.100.7:5062";
const UP1: &str = "192.0.2.20:5080";
const UP2: &str = "192.0.2.21:5080";

fn core(upstreams: &[&str]) -> Core {
    let mut c = Config::default_config();
    c.listen = vec![
        parse_listen("t", "udp:192.0.2.10:5060").unwrap(),
        parse_listen("t", "tcp:192.0.2.10:5060").unwrap(),
    ];
    c.upstreams = upstreams
        .iter()
        .map(|u| parse_upstream("t", &format!("sip:{u}")).unwrap())
        .collect();
    c.selection = Selection::RoundRobin;
    Core::new(&c, Box::new(NoneHook), Arc::new(Metrics::new()))
        .with_secret(42)
        .with_stateful(
            &TxnConfig {
                trying_delay_ms: 0,
                ..TxnConfig::default()
            },
            2,
        )
}

fn udp_from(src: &str) -> RcvInfo {
    RcvInfo {
        src: src.parse().unwrap(),
        local: 0,
        transport: Transport::Udp,
        conn: None,
        outbound: false,
    }
}

fn request(method: &str, branch: &str, to_tag: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@example.org SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5062{branch}\r\n\
         From: <sip:alice@example.org>;tag=a1\r\n\
         To: <sip:bob@example.org>{to_tag}\r\n\
         Call-ID: core-1\r\n\
         CSeq: 7 {method}\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The upstream's answer to a request it received (To tag `uas9`).
fn answer(req: &[u8], code: u16) -> Vec<u8> {
    super::tests::answer_tagged(req, code, "uas9")
}

/// Run one message; (dest, first line) of each send and the sends' bytes.
fn run(
    core: &Core,
    sc: &mut Scratch,
    msg: &[u8],
    from: &str,
) -> Vec<(SocketAddr, String, Vec<u8>)> {
    let o = core.receive_datagram(msg, &udp_from(from), sc);
    assert_eq!(o, Outcome::Txn, "{}", String::from_utf8_lossy(msg));
    sc.txn
        .sends
        .iter()
        .map(|s| {
            let b = sc.txn.bytes(s).to_vec();
            let first = String::from_utf8_lossy(&b)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            (s.dest.addr, first, b)
        })
        .collect()
}

fn lines(v: &[(SocketAddr, String, Vec<u8>)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, l, _)| (a.to_string(), l.clone()))
        .collect()
}

fn pair(a: &str, l: &str) -> (String, String) {
    (a.to_string(), l.to_string())
}

#[test]
fn stateful_invite_100_trying_forward_once_and_absorb_retransmission() {
    let c = core(&[UP1]);
    let mut sc = Scratch::new();
    let inv = request("INVITE", ";branch=z9hG4bKa1", "");
    let s = run(&c, &mut sc, &inv, CLIENT);
    assert_eq!(
        lines(&s),
        vec![
            pair(CLIENT, "SIP/2.0 100 Trying"),
            pair(UP1, "INVITE sip:bob@example.org SIP/2.0")
        ]
    );
    let s = run(&c, &mut sc, &inv, CLIENT);
    assert_eq!(lines(&s), vec![pair(CLIENT, "SIP/2.0 100 Trying")]);
    assert_eq!(c.stateful().map(|st| st.active()), Some(1));
}

#[test]
fn stateful_failover_on_503_caller_sees_only_the_200() {
    let c = core(&[UP1, UP2]);
    let mut sc = Scratch::new();
    let inv = request("INVITE", ";branch=z9hG4bKa2", "");
    let s = run(&c, &mut sc, &inv, CLIENT);
    let (first, _, fwd) = s[1].clone();
    let other = if first.to_string() == UP1 { UP2 } else { UP1 };
    let s = run(&c, &mut sc, &answer(&fwd, 503), &first.to_string());
    assert_eq!(
        lines(&s),
        vec![
            pair(&first.to_string(), "ACK sip:bob@example.org SIP/2.0"),
            pair(other, "INVITE sip:bob@example.org SIP/2.0")
        ]
    );
    let fwd2 = s[1].2.clone();
    let s = run(&c, &mut sc, &answer(&fwd2, 200), other);
    assert_eq!(lines(&s), vec![pair(CLIENT, "SIP/2.0 200 X")]);
    // the caller's Via is on top again
    let text = String::from_utf8_lossy(&s[0].2).into_owned();
    assert!(
        text.contains("Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKa2"),
        "{text}"
    );
    assert!(!text.contains("192.0.2.10"), "{text}");
}

#[test]
fn stateful_send_failure_fails_over_at_once() {
    let c = core(&[UP1, UP2]);
    let mut sc = Scratch::new();
    let inv = request("OPTIONS", ";branch=z9hG4bKa3", "");
    let o = c.receive_datagram(&inv, &udp_from(CLIENT), &mut sc);
    assert_eq!(o, Outcome::Txn);
    let sent = sc.txn.sends[0].clone();
    let r = sent.txn.expect("a try");
    let mut out = Out::default();
    c.transaction_send_failed(r, &mut out);
    assert_eq!(out.sends.len(), 1);
    assert_ne!(out.sends[0].dest.addr, sent.dest.addr);
}

#[test]
fn rfc2543_fallback_ack_without_magic_cookie_matches_its_invite() {
    // §17.2.3 last paragraph: no z9hG4bK branch → Call-ID, From tag, CSeq
    // number, Request-URI and sent-by match the ACK to the INVITE
    let c = core(&[UP1]);
    let mut sc = Scratch::new();
    let inv = request("INVITE", "", "");
    let s = run(&c, &mut sc, &inv, CLIENT);
    let fwd = s[1].2.clone();
    let s = run(&c, &mut sc, &answer(&fwd, 486), UP1);
    assert_eq!(
        lines(&s),
        vec![
            pair(UP1, "ACK sip:bob@example.org SIP/2.0"),
            pair(CLIENT, "SIP/2.0 486 X")
        ]
    );
    let ack = request("ACK", "", ";tag=uas9");
    let s = run(&c, &mut sc, &ack, CLIENT);
    assert!(s.is_empty(), "absorbed, not forwarded: {:?}", lines(&s));
    // the same ACK with an RFC 3261 branch of its own is another transaction
    let ack2 = request("ACK", ";branch=z9hG4bKother", ";tag=uas9");
    let o = c.receive_datagram(&ack2, &udp_from(CLIENT), &mut sc);
    assert!(matches!(o, Outcome::Send { .. }), "{o:?}");
}

#[test]
fn stateful_cancel_through_the_core() {
    let c = core(&[UP1]);
    let mut sc = Scratch::new();
    let inv = request("INVITE", ";branch=z9hG4bKa4", "");
    let s = run(&c, &mut sc, &inv, CLIENT);
    let fwd = s[1].2.clone();
    run(&c, &mut sc, &answer(&fwd, 180), UP1);
    let s = run(
        &c,
        &mut sc,
        &request("CANCEL", ";branch=z9hG4bKa4", ""),
        CLIENT,
    );
    assert_eq!(
        lines(&s),
        vec![
            pair(CLIENT, "SIP/2.0 200 OK"),
            pair(UP1, "CANCEL sip:bob@example.org SIP/2.0")
        ]
    );
}

#[test]
fn stateful_reply_of_no_transaction_is_routed_statelessly() {
    let c = core(&[UP1]);
    let mut sc = Scratch::new();
    // a 2xx retransmission after the transaction ended: our stateless Via
    let r = "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsE0000000000000001\r\n\
             Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKa5\r\n\
             From: <sip:alice@example.org>;tag=a1\r\n\
             To: <sip:bob@example.org>;tag=x\r\n\
             Call-ID: core-5\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n";
    let o = c.receive_datagram(r.as_bytes(), &udp_from(UP1), &mut sc);
    assert!(matches!(o, Outcome::Send { .. }), "{o:?}");
}

#[test]
fn stateful_cap_full_answers_503_retry_after_through_the_core() {
    let mut c = Config::default_config();
    c.listen = vec![parse_listen("t", "udp:192.0.2.10:5060").unwrap()];
    c.upstreams = vec![parse_upstream("t", &format!("sip:{UP1}")).unwrap()];
    let cfg = TxnConfig {
        max_transactions: 1,
        ..TxnConfig::default()
    };
    let core = Core::new(&c, Box::new(NoneHook), Arc::new(Metrics::new()))
        .with_secret(42)
        .with_stateful(&cfg, 1);
    let mut sc = Scratch::new();
    run(
        &core,
        &mut sc,
        &request("INVITE", ";branch=z9hG4bKc1", ""),
        CLIENT,
    );
    let s = run(
        &core,
        &mut sc,
        &request("INVITE", ";branch=z9hG4bKc2", ""),
        CLIENT,
    );
    assert_eq!(
        lines(&s),
        vec![pair(CLIENT, "SIP/2.0 503 Service Unavailable")]
    );
    let text = String::from_utf8_lossy(&s[0].2).into_owned();
    assert!(text.contains("Retry-After: 5\r\n"), "{text}");
    let m = core.metrics.encode();
    assert!(m.contains("sipedge_transactions_refused_total 1"), "{m}");
    assert!(m.contains("sipedge_transactions 1"), "{m}");
}

/// One caller runs each timer round: the first to see it due claims it,
/// nobody else until the round it plans is due; an idle table plans the
/// next round [`stateful::ROUND_MAX_MS`] ahead.
#[test]
fn one_thread_claims_each_timer_round() {
    let c = core(&[UP1]);
    assert!(c.claim_transaction_round(1000));
    assert!(!c.claim_transaction_round(1000));
    assert!(!c.claim_transaction_round(1000 + stateful::ROUND_TICK_MS - 1));
    let next = c.plan_transaction_round(1000).unwrap();
    assert_eq!(next, 1000 + stateful::ROUND_MAX_MS);
    assert!(!c.claim_transaction_round(next - 1));
    assert!(c.claim_transaction_round(next));
    assert!(!c.claim_transaction_round(next));
}

/// Stateless mode has no timer rounds to claim.
#[test]
fn stateless_mode_claims_no_timer_round() {
    let c = Core::new(
        &Config::default_config(),
        Box::new(NoneHook),
        Arc::new(Metrics::new()),
    );
    assert!(!c.claim_transaction_round(1000));
    assert_eq!(c.plan_transaction_round(1000), None);
}
