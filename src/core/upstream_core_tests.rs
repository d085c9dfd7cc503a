//! The stateless core with upstream sets (issue #10): a down target gets no
//! new requests, no target up answers 503, probes are written by the core
//! and their replies consumed by Via branch, 503 replies count against the
//! target that sent them.

use super::*;
use crate::config::{Config, Transport, parse_listen};
use crate::core::upstream::*;
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const T1: &str = "192.0.2.21:5080";
const T2: &str = "192.0.2.22:5080";
const CLIENT: &str = "198.51.100.7:5062";

fn specs(algorithm: Algorithm) -> Vec<SetSpec> {
    let t = |a: &str, transport| TargetSpec {
        uri: format!(
            "sip:{a}{}",
            if transport == Some(Transport::Tcp) {
                ";transport=tcp"
            } else {
                ""
            }
        ),
        addr: a.parse().unwrap(),
        transport,
        weight: 1,
        priority: 0,
    };
    vec![SetSpec {
        name: "core".into(),
        algorithm,
        targets: vec![t(T1, None), t(T2, Some(Transport::Tcp))],
        health: HealthSpec {
            ping_interval_ms: 1000,
            ping_timeout_ms: 500,
            down_after: 2,
            up_after: 1,
            ..HealthSpec::default()
        },
    }]
}

fn core(sink: Option<Arc<Mutex<Vec<ProbeReply>>>>) -> (Core, Arc<UpstreamSets>) {
    let mut c = Config::default_config();
    c.listen = vec![
        parse_listen("t", "udp:192.0.2.10:5060").unwrap(),
        parse_listen("t", "tcp:192.0.2.10:5060").unwrap(),
    ];
    let sets = Arc::new(UpstreamSets::new(&specs(Algorithm::RoundRobin), None));
    let mut core = Core::new(
        &c,
        Box::new(crate::core::nosip::NoneHook),
        Arc::new(Metrics::new()),
    )
    .with_secret(42)
    .with_upstreams(sets.clone());
    if let Some(s) = sink {
        core = core.with_probe_sink(Box::new(move |r| s.lock().unwrap().push(r)));
    }
    (core, sets)
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

fn request(method: &str, n: u32) -> String {
    format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a{n}\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: call-{n}@pc33\r\n\
CSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn send(core: &Core, msg: &str, rcv: &RcvInfo) -> (Outcome, String) {
    let mut sc = Scratch::new();
    let o = core.receive_datagram(msg.as_bytes(), rcv, &mut sc);
    (o, String::from_utf8_lossy(&sc.out).into_owned())
}

fn dest(o: Outcome) -> Option<SocketAddr> {
    match o {
        Outcome::Send { dest, .. } => Some(dest.addr),
        _ => None,
    }
}

#[test]
fn stateless_a_down_target_gets_no_new_requests() {
    let (core, sets) = core(None);
    let mut seen = Vec::new();
    for n in 0..4 {
        seen.push(dest(
            send(&core, &request("INVITE", n), &udp_from(CLIENT)).0,
        ));
    }
    assert!(seen.contains(&Some(T1.parse().unwrap())));
    assert!(seen.contains(&Some(T2.parse().unwrap())));
    sets.mark_failure(TargetId(1), Signal::ConnectFailed, 1);
    sets.mark_failure(TargetId(1), Signal::ConnectFailed, 2);
    for n in 0..6 {
        let (o, _) = send(&core, &request("INVITE", n), &udp_from(CLIENT));
        assert_eq!(dest(o), Some(T1.parse().unwrap()));
    }
}

#[test]
fn rfc3261_16_7_no_target_up_503_and_ack_dropped() {
    let (core, sets) = core(None);
    for t in [0, 1] {
        for n in 0..2 {
            sets.mark_failure(TargetId(t), Signal::ProbeTimeout, n);
        }
    }
    let (o, out) = send(&core, &request("INVITE", 1), &udp_from(CLIENT));
    assert!(
        matches!(
            o,
            Outcome::Send {
                kind: SendKind::LocalReply(503),
                ..
            }
        ),
        "{o:?}"
    );
    assert!(
        out.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{out}"
    );
    let (o, _) = send(&core, &request("ACK", 1), &udp_from(CLIENT));
    assert_eq!(o, Outcome::Dropped(DropReason::NoRoute));
}

fn reply_to(req: &str, code: u16) -> String {
    let mut out = format!("SIP/2.0 {code} Whatever\r\n");
    for l in req.split("\r\n").skip(1) {
        if l.is_empty() {
            break;
        }
        if ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|h| l.starts_with(h))
        {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[test]
fn probe_is_an_options_from_our_socket_and_its_reply_is_consumed() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let (core, _) = core(Some(got.clone()));
    let mut out = Vec::new();
    let p = ProbeDue {
        target: TargetId(1),
        seq: 7,
    };
    let d = core.write_probe(p, &mut out).expect("a known target");
    assert_eq!(d.transport, Transport::Tcp);
    assert_eq!(d.addr, T2.parse().unwrap());
    assert_eq!(d.local, 1, "the TCP listen socket");
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.starts_with("OPTIONS sip:192.0.2.22:5080;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKsEp"),
        "{text}"
    );
    assert!(text.contains("\r\nCSeq: 7 OPTIONS\r\n"), "{text}");
    // it parses as a SIP request with every mandatory header
    let mut hs = Vec::new();
    let body = crate::sip::framer::find_header_end(&out, 0).unwrap();
    let m = crate::sip::msg::SipMsg::parse(&out, body, &mut hs).unwrap();
    assert_eq!(m.method(), b"OPTIONS");
    // the target answers: consumed, handed to the sink
    let rcv = RcvInfo {
        src: T2.parse().unwrap(),
        local: 1,
        transport: Transport::Tcp,
        conn: Some(3),
        outbound: true,
    };
    let mut sc = Scratch::new();
    let r = reply_to(&text, 200);
    let o = core.receive_msg(r.as_bytes(), r.len(), false, &rcv, &mut sc);
    assert_eq!(o, Outcome::Consumed);
    assert_eq!(
        *got.lock().unwrap(),
        [ProbeReply {
            target: TargetId(1),
            seq: 7,
            code: 200
        }]
    );
    // a forged branch (wrong check) is dropped, not handed on
    let forged = r.replace(";branch=z9hG4bKsEp1.7.", ";branch=z9hG4bKsEp1.7.0");
    let o = core.receive_msg(forged.as_bytes(), forged.len(), false, &rcv, &mut sc);
    assert_eq!(o, Outcome::Dropped(DropReason::ReplyNotOurs));
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[test]
fn passive_503_replies_from_a_target_take_it_down() {
    let (core, sets) = core(None);
    // the INVITE went to T1; its 503 comes back through us
    let (o, fwd) = send(&core, &request("INVITE", 1), &udp_from(CLIENT));
    assert_eq!(dest(o), Some(T1.parse().unwrap()));
    let r503 = reply_to(&fwd, 503);
    for _ in 0..2 {
        let (o, _) = send(&core, &r503, &udp_from(T1));
        assert_eq!(dest(o), Some(CLIENT.parse().unwrap()), "still forwarded");
    }
    assert!(!sets.is_up(TargetId(0)));
    // a 503 from the client's side is not a target's: nothing
    let (core, sets) = self::core(None);
    let (_, fwd) = send(&core, &request("INVITE", 2), &udp_from(CLIENT));
    for _ in 0..3 {
        send(&core, &reply_to(&fwd, 503), &udp_from("192.0.2.99:5080"));
    }
    assert!(sets.is_up(TargetId(0)));
}
