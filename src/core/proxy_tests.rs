//! SPEC A.1 rules, one test each, byte arrays in, bytes out.

use super::*;
use crate::config::{Selection, UpstreamSpec, parse_listen, parse_upstream};

fn parse_listen_unchecked(t: Transport, a: SocketAddr) -> crate::config::ListenSpec {
    parse_listen("test", &format!("{}:{a}", t.as_str())).unwrap()
}

fn parse_upstream_unchecked(u: &str) -> UpstreamSpec {
    parse_upstream("test", u).unwrap()
}
use crate::core::nosip::{MatchHook, NoneHook};

fn cfg(upstreams: &[&str]) -> Config {
    let mut c = Config::default_config();
    c.listen = vec![
        parse_listen_unchecked(Transport::Udp, "192.0.2.10:5060".parse().unwrap()),
        parse_listen_unchecked(Transport::Tcp, "192.0.2.10:5060".parse().unwrap()),
    ];
    c.upstreams = upstreams
        .iter()
        .map(|u| parse_upstream_unchecked(u))
        .collect();
    c.selection = Selection::RoundRobin;
    c.record_route = true;
    c
}

fn core_with(c: &Config) -> Core {
    Core::new(c, Box::new(NoneHook), Arc::new(Metrics::new())).with_secret(42)
}

fn core() -> Core {
    core_with(&cfg(&["sip:192.0.2.20:5080"]))
}

const CLIENT: &str = "198.51.100.7:5062";

fn udp() -> RcvInfo {
    RcvInfo {
        src: CLIENT.parse().unwrap(),
        local: 0,
        transport: Transport::Udp,
        conn: None,
        outbound: false,
    }
}

fn tcp(conn: ConnId) -> RcvInfo {
    RcvInfo {
        local: 1,
        transport: Transport::Tcp,
        conn: Some(conn),
        ..udp()
    }
}

fn invite(extra: &str) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-abc;rport\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@example.com>\r\n\
Call-ID: a84b4c76e66710@pc33\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@198.51.100.7:5062>\r\n\
{extra}Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n"
    )
}

/// Feed a datagram; return the outcome and the output as text.
fn run(core: &Core, msg: &str, rcv: &RcvInfo) -> (Outcome, String) {
    let mut sc = Scratch::new();
    let o = match rcv.transport {
        Transport::Udp => core.receive_datagram(msg.as_bytes(), rcv, &mut sc),
        Transport::Tcp => {
            let b = msg.as_bytes();
            let body = b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            core.receive_msg(b, body, false, rcv, &mut sc)
        }
    };
    (o, String::from_utf8_lossy(&sc.out).into_owned())
}

fn headers<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

fn status(out: &str) -> &str {
    out.split("\r\n").next().unwrap()
}

fn forwarded(o: &Outcome) -> Dest {
    match o {
        Outcome::Send {
            dest,
            kind: SendKind::Request | SendKind::Reply,
        } => *dest,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn local_reply(o: &Outcome) -> u16 {
    match o {
        Outcome::Send {
            kind: SendKind::LocalReply(c),
            ..
        } => *c,
        other => panic!("no local reply: {other:?}"),
    }
}

/// `msg` over UDP is answered locally with `code` and exactly this status line.
fn expect_local_reply(msg: &str, code: u16, status_line: &str) -> String {
    let (o, out) = run(&core(), msg, &udp());
    assert_eq!(local_reply(&o), code, "{out}");
    assert_eq!(status(&out), status_line);
    out
}

fn branch(out: &str) -> String {
    let v = headers(out, "Via")[0];
    v.split(';')
        .find_map(|p| p.strip_prefix("branch="))
        .unwrap()
        .to_string()
}

#[test]
fn a1_forward_adds_top_via_and_keeps_everything_else_byte_for_byte() {
    let msg = invite("X-Custom:   odd  spacing ;x\r\n");
    let (o, out) = run(&core(), &msg, &udp());
    let d = forwarded(&o);
    assert_eq!(d.addr, "192.0.2.20:5080".parse().unwrap());
    assert_eq!(d.transport, Transport::Udp);
    let vias = headers(&out, "Via");
    assert_eq!(vias.len(), 2);
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"),
        "{out}"
    );
    assert!(out.contains("X-Custom:   odd  spacing ;x\r\n"));
    assert!(out.ends_with("Content-Length: 4\r\n\r\nv=0\n"));
    assert!(out.starts_with("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10"));
}

#[test]
fn a1_sanity_missing_mandatory_headers_get_400_with_reason() {
    for (hdr, reason) in [
        ("From", "Missing From"),
        ("To", "Missing To"),
        ("Call-ID", "Missing Call-ID"),
        ("CSeq", "Missing CSeq"),
    ] {
        let msg: String = invite("")
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with(&format!("{hdr}:")))
            .collect();
        let (o, out) = run(&core(), &msg, &udp());
        assert_eq!(local_reply(&o), 400, "{hdr}");
        assert_eq!(status(&out), format!("SIP/2.0 400 {reason}"));
        assert_eq!(headers(&out, "Via").len(), 1);
    }
}

#[test]
fn a1_sanity_missing_via_is_dropped_not_answered() {
    let msg: String = invite("")
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("Via:"))
        .collect();
    let (o, _) = run(&core(), &msg, &udp());
    assert!(matches!(o, Outcome::Dropped(_)), "{o:?}");
}

#[test]
fn a1_sanity_cseq_method_mismatch_400() {
    let msg = invite("").replace("CSeq: 314159 INVITE", "CSeq: 1 OPTIONS");
    expect_local_reply(
        &msg,
        400,
        "SIP/2.0 400 CSeq method does not match request method",
    );
}

#[test]
fn a1_sanity_failure_on_ack_is_never_answered() {
    let msg = invite("")
        .replace("INVITE sip:", "ACK sip:")
        .replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
    let (o, out) = run(&core(), &msg, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::BadAck));
    assert!(out.is_empty());
}

#[test]
fn a1_unsupported_sip_version_505() {
    let msg = invite("").replace("bob@example.com SIP/2.0", "bob@example.com SIP/3.0");
    let (o, out) = run(&core(), &msg, &udp());
    assert_eq!(local_reply(&o), 505);
    assert!(status(&out).starts_with("SIP/2.0 505 "));
}

#[test]
fn a1_unsupported_uri_scheme_416() {
    let msg = invite("").replace(
        "INVITE sip:bob@example.com",
        "INVITE http://bob.example.com/",
    );
    let (o, _) = run(&core(), &msg, &udp());
    assert_eq!(local_reply(&o), 416);
}

#[test]
fn a1_bad_request_uri_400() {
    let msg = invite("").replace("INVITE sip:bob@example.com", "INVITE sip:");
    expect_local_reply(&msg, 400, "SIP/2.0 400 Bad Request-URI");
}

#[test]
fn a1_ipv6_request_uri_is_accepted() {
    let msg = invite("").replace(
        "INVITE sip:bob@example.com",
        "INVITE sip:bob@[2001:db8::5]:5070",
    );
    forwarded(&run(&core(), &msg, &udp()).0);
    let msg = invite("").replace("INVITE sip:bob@example.com", "INVITE sip:bob@[2001:db8::5");
    assert_eq!(local_reply(&run(&core(), &msg, &udp()).0), 400);
}

#[test]
fn a1_max_forwards_zero_gets_483() {
    let msg = invite("").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (o, out) = run(&core(), &msg, &udp());
    assert_eq!(local_reply(&o), 483);
    assert_eq!(status(&out), "SIP/2.0 483 Too Many Hops");
    // the reply goes back to the source (rport) and carries a To tag
    match o {
        Outcome::Send { dest, .. } => assert_eq!(dest.addr, CLIENT.parse().unwrap()),
        _ => unreachable!(),
    }
    assert!(headers(&out, "To")[0].contains(";tag="));
}

#[test]
fn a1_max_forwards_decremented() {
    let msg = invite("").replace("Max-Forwards: 70", "Max-Forwards: 5");
    let (_, out) = run(&core(), &msg, &udp());
    assert_eq!(headers(&out, "Max-Forwards"), ["4"]);
}

#[test]
fn a1_max_forwards_missing_inserted_70() {
    let msg = invite("").replace("Max-Forwards: 70\r\n", "");
    let (_, out) = run(&core(), &msg, &udp());
    assert_eq!(headers(&out, "Max-Forwards"), ["70"]);
}

#[test]
fn a1_options_to_the_proxy_itself_answered_200_even_with_max_forwards_0() {
    let msg = invite("")
        .replace("INVITE sip:bob@example.com", "OPTIONS sip:192.0.2.10:5060")
        .replace("CSeq: 314159 INVITE", "CSeq: 1 OPTIONS")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (o, out) = run(&core(), &msg, &udp());
    assert_eq!(local_reply(&o), 200);
    assert_eq!(status(&out), "SIP/2.0 200 OK");
    assert_eq!(headers(&out, "CSeq"), ["1 OPTIONS"]);
    assert_eq!(headers(&out, "Content-Length"), ["0"]);
}

#[test]
fn a1_loose_routing_pops_our_route() {
    let msg = invite("Route: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.99:5070;lr>\r\n");
    let (o, out) = run(&core(), &msg, &udp());
    let d = forwarded(&o);
    assert_eq!(
        d.addr,
        "192.0.2.99:5070".parse().unwrap(),
        "next hop is the remaining Route"
    );
    assert_eq!(headers(&out, "Route"), ["<sip:192.0.2.99:5070;lr>"]);
    assert!(out.starts_with("INVITE sip:bob@example.com SIP/2.0\r\n"));
}

#[test]
fn a1_loose_routing_pops_both_entries_of_a_double_record_route() {
    let msg = invite(
        "Route: <sip:192.0.2.10:5060;transport=tcp;lr>\r\nRoute: <sip:192.0.2.10:5060;lr>\r\n",
    );
    let (o, out) = run(&core(), &msg, &udp());
    assert!(headers(&out, "Route").is_empty(), "{out}");
    assert_eq!(forwarded(&o).addr, "192.0.2.20:5080".parse().unwrap());
}

#[test]
fn a1_strict_router_request_uri_replaced_by_last_route() {
    // the previous hop was a strict router: our RR URI is the Request-URI
    let msg = invite("Route: <sip:192.0.2.99:5070;lr>, <sip:bob@203.0.113.5:5090>\r\n").replace(
        "INVITE sip:bob@example.com",
        "INVITE sip:192.0.2.10:5060;lr",
    );
    let (o, out) = run(&core(), &msg, &udp());
    assert!(
        out.starts_with("INVITE sip:bob@203.0.113.5:5090 SIP/2.0\r\n"),
        "{out}"
    );
    assert_eq!(headers(&out, "Route"), ["<sip:192.0.2.99:5070;lr>"]);
    assert_eq!(forwarded(&o).addr, "192.0.2.99:5070".parse().unwrap());
}

#[test]
fn a1_record_route_added_for_dialog_creating_invite() {
    let (_, out) = run(&core(), &invite(""), &udp());
    assert_eq!(headers(&out, "Record-Route"), ["<sip:192.0.2.10:5060;lr>"]);
}

#[test]
fn a1_record_route_not_added_in_dialog_or_for_other_methods() {
    let msg = invite("").replace(
        "To: Bob <sip:bob@example.com>",
        "To: Bob <sip:bob@example.com>;tag=x",
    );
    let (_, out) = run(&core(), &msg, &udp());
    assert!(headers(&out, "Record-Route").is_empty());
    let msg = invite("")
        .replace("INVITE sip:", "MESSAGE sip:")
        .replace("314159 INVITE", "314159 MESSAGE");
    let (_, out) = run(&core(), &msg, &udp());
    assert!(headers(&out, "Record-Route").is_empty());
}

#[test]
fn a1_double_record_route_when_transports_differ() {
    let c = core_with(&cfg(&["sip:192.0.2.20:5080;transport=tcp"]));
    let (o, out) = run(&c, &invite(""), &udp());
    assert_eq!(forwarded(&o).transport, Transport::Tcp);
    assert_eq!(
        headers(&out, "Record-Route"),
        [
            "<sip:192.0.2.10:5060;transport=tcp;lr>",
            "<sip:192.0.2.10:5060;lr>"
        ]
    );
    assert!(headers(&out, "Via")[0].starts_with("SIP/2.0/TCP 192.0.2.10:5060;"));
}

#[test]
fn a1_upstream_without_transport_uses_the_inbound_transport() {
    let (o, out) = run(&core(), &invite(""), &tcp(9));
    let d = forwarded(&o);
    assert_eq!(d.transport, Transport::Tcp);
    assert_eq!(d.local, 1);
    assert!(headers(&out, "Via")[0].ends_with(";i=9"), "{out}");
}

#[test]
fn a1_branch_is_deterministic_for_retransmissions() {
    let c = core();
    let (_, a) = run(&c, &invite(""), &udp());
    let (_, b) = run(&c, &invite(""), &udp());
    assert_eq!(branch(&a), branch(&b));
    assert!(branch(&a).starts_with("z9hG4bK"));
    let other = invite("").replace("z9hG4bK-abc", "z9hG4bK-def");
    let (_, d) = run(&c, &other, &udp());
    assert_ne!(branch(&a), branch(&d));
}

#[test]
fn a1_cancel_and_non_2xx_ack_get_the_invites_branch() {
    let c = core();
    let (_, inv) = run(&c, &invite(""), &udp());
    let cancel = invite("")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("314159 INVITE", "314159 CANCEL");
    let (_, can) = run(&c, &cancel, &udp());
    assert_eq!(branch(&inv), branch(&can));
    let ack = invite("")
        .replace("INVITE sip:", "ACK sip:")
        .replace("314159 INVITE", "314159 ACK")
        .replace(
            "To: Bob <sip:bob@example.com>",
            "To: Bob <sip:bob@example.com>;tag=u1",
        );
    let (_, ack) = run(&c, &ack, &udp());
    assert_eq!(branch(&inv), branch(&ack));
}

#[test]
fn a1_rfc2543_branch_derived_from_dialog_fields() {
    let c = core();
    let old = invite("").replace(";branch=z9hG4bK-abc", "");
    let (_, inv) = run(&c, &old, &udp());
    let (_, inv2) = run(&c, &old, &udp());
    assert_eq!(branch(&inv), branch(&inv2));
    let ack = old
        .replace("INVITE sip:", "ACK sip:")
        .replace("314159 INVITE", "314159 ACK")
        .replace(
            "To: Bob <sip:bob@example.com>",
            "To: Bob <sip:bob@example.com>;tag=u1",
        );
    let (_, ack) = run(&c, &ack, &udp());
    assert_eq!(branch(&inv), branch(&ack));
    let bye = old
        .replace("INVITE sip:", "BYE sip:")
        .replace("314159 INVITE", "314160 BYE");
    let (_, bye) = run(&c, &bye, &udp());
    assert_ne!(branch(&inv), branch(&bye));
}

#[test]
fn a1_received_and_rport_added_to_the_clients_via() {
    let msg = invite("").replace("198.51.100.7:5062;branch", "10.1.1.1:5062;branch");
    let (_, out) = run(&core(), &msg, &udp());
    assert_eq!(
        headers(&out, "Via")[1],
        "SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-abc;rport=5062;received=198.51.100.7"
    );
}

#[test]
fn a1_received_only_when_source_differs_and_no_rport() {
    let msg = invite("").replace(";rport", "");
    let (_, out) = run(&core(), &msg, &udp());
    assert_eq!(
        headers(&out, "Via")[1],
        "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-abc"
    );
    let msg = msg.replace("198.51.100.7:5062;branch", "client.example.com;branch");
    let (_, out) = run(&core(), &msg, &udp());
    assert_eq!(
        headers(&out, "Via")[1],
        "SIP/2.0/UDP client.example.com;branch=z9hG4bK-abc;received=198.51.100.7"
    );
}

fn reply(vias: &str) -> String {
    format!(
        "SIP/2.0 180 Ringing\r\n{vias}From: A <sip:a@x>;tag=1\r\nTo: B <sip:b@x>;tag=2\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a1_reply_removes_our_via_and_goes_to_received_rport() {
    let msg = reply(
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsEabc\r\n\
Via: SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-abc;rport=40000;received=198.51.100.7\r\n",
    );
    let mut up = udp();
    up.src = "192.0.2.20:5080".parse().unwrap();
    let (o, out) = run(&core(), &msg, &up);
    let d = forwarded(&o);
    assert_eq!(d.addr, "198.51.100.7:40000".parse().unwrap());
    assert_eq!(d.transport, Transport::Udp);
    assert_eq!(headers(&out, "Via").len(), 1);
    assert!(out.starts_with("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.1.1.1:5062;"));
}

#[test]
fn a1_reply_over_the_same_tcp_connection_by_conn_id() {
    let msg = reply(
        "Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKsEabc;i=17, SIP/2.0/TCP 10.1.1.1:5062;branch=z9hG4bK-abc;received=198.51.100.7\r\n",
    );
    let (o, out) = run(&core(), &msg, &tcp(3));
    let d = forwarded(&o);
    assert_eq!(d.conn, Some(17));
    assert_eq!(d.transport, Transport::Tcp);
    assert_eq!(d.addr, "198.51.100.7:5062".parse().unwrap());
    assert_eq!(
        headers(&out, "Via"),
        ["SIP/2.0/TCP 10.1.1.1:5062;branch=z9hG4bK-abc;received=198.51.100.7"]
    );
}

#[test]
fn a1_reply_whose_top_via_is_not_ours_is_dropped() {
    let msg = reply("Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKx\r\n");
    let (o, out) = run(&core(), &msg, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::ReplyNotOurs));
    assert!(out.is_empty());
    let msg = reply("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx\r\n");
    let (o, _) = run(&core(), &msg, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::ReplyNoVia));
}

#[test]
fn a1_udp_octets_beyond_content_length_are_discarded() {
    let msg = invite("") + "GARBAGE-AFTER-BODY";
    let (o, out) = run(&core(), &msg, &udp());
    forwarded(&o);
    assert!(out.ends_with("\r\n\r\nv=0\n"), "{out}");
}

#[test]
fn a1_udp_content_length_larger_than_body_is_400() {
    let msg = invite("").replace("Content-Length: 4", "Content-Length: 400");
    expect_local_reply(&msg, 400, "SIP/2.0 400 Bad Content-Length");
}

#[test]
fn a1_udp_without_content_length_gets_one_when_forwarded() {
    let msg = invite("").replace("Content-Length: 4\r\n", "");
    let (o, out) = run(&core(), &msg, &udp());
    forwarded(&o);
    assert_eq!(headers(&out, "Content-Length"), ["4"]);
    assert!(out.ends_with("\r\n\r\nv=0\n"));
}

#[test]
fn a1_round_robin_and_call_id_hash_selection() {
    let mut c = cfg(&["sip:192.0.2.20:5080", "sip:192.0.2.21:5080"]);
    let rr = core_with(&c);
    let a = forwarded(&run(&rr, &invite(""), &udp()).0).addr;
    let b = forwarded(&run(&rr, &invite(""), &udp()).0).addr;
    assert_ne!(a, b);
    c.selection = Selection::CallIdHash;
    let h = core_with(&c);
    let first = forwarded(&run(&h, &invite(""), &udp()).0).addr;
    for _ in 0..5 {
        assert_eq!(forwarded(&run(&h, &invite(""), &udp()).0).addr, first);
    }
}

#[test]
fn a1_request_from_upstream_follows_the_request_uri() {
    let msg = invite("").replace(
        "INVITE sip:bob@example.com",
        "INVITE sip:bob@198.51.100.9:5070;transport=tcp",
    );
    let mut up = udp();
    up.src = "192.0.2.20:5080".parse().unwrap();
    let (o, _) = run(&core(), &msg, &up);
    let d = forwarded(&o);
    assert_eq!(d.addr, "198.51.100.9:5070".parse().unwrap());
    assert_eq!(d.transport, Transport::Tcp);
}

#[test]
fn a1_route_host_name_is_handed_to_the_resolver() {
    let msg = invite(
        "Route: <sip:192.0.2.10:5060;lr>, <sip:edge2.example.com:5070;transport=tcp;lr>\r\n",
    );
    let c = core();
    let mut sc = Scratch::new();
    let o = c.receive_datagram(msg.as_bytes(), &udp(), &mut sc);
    match o {
        Outcome::Resolve { dest, kind } => {
            assert_eq!(kind, SendKind::Request);
            assert_eq!(dest.addr.port(), 5070);
            assert!(dest.addr.ip().is_unspecified());
            assert_eq!(dest.transport, Transport::Tcp);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sc.resolve, "edge2.example.com");
    let out = String::from_utf8_lossy(&sc.out);
    assert_eq!(
        headers(&out, "Route"),
        ["<sip:edge2.example.com:5070;transport=tcp;lr>"]
    );
    // something that is neither an IP literal nor a host name: no route
    let bad = invite("Route: <sip:bad_host!:5070;lr>\r\n");
    let (o, _) = run(&c, &bad, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::NoRoute));
}

#[test]
fn a1_request_that_would_loop_to_ourselves_is_dropped() {
    let msg = invite("Route: <sip:192.0.2.10:5061;lr>\r\n");
    let mut c = cfg(&["sip:192.0.2.10:5060"]);
    c.listen.push(parse_listen_unchecked(
        Transport::Udp,
        "192.0.2.10:5061".parse().unwrap(),
    ));
    let core = core_with(&c);
    let (o, _) = run(&core, &invite(""), &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::Loop));
    let _ = msg;
}

#[test]
fn a2_unparseable_bytes_pass_the_none_hook_and_fail() {
    let (o, out) = run(&core(), "\x16\x03\x01\x00garbage\r\n\r\n", &tcp(1));
    assert_eq!(o, Outcome::ParseError);
    assert!(out.is_empty(), "never forwarded");
}

#[test]
fn a3_match_hook_consumes_non_sip_data() {
    let c = Core::new(
        &cfg(&["sip:192.0.2.20:5080"]),
        Box::new(MatchHook::new("^JUNK").unwrap()),
        Arc::new(Metrics::new()),
    );
    let (o, _) = run(&c, "JUNK JUNK\r\n\r\n", &tcp(1));
    assert_eq!(o, Outcome::Consumed);
    let (o, _) = run(&c, "OTHER\r\n\r\n", &tcp(1));
    assert_eq!(o, Outcome::ParseError);
}

#[test]
fn a1_proxy_never_answers_a_reply() {
    let msg = reply("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx\r\n")
        .replace("CSeq: 1 INVITE", "CSeq: x");
    let (o, _) = run(&core(), &msg, &udp());
    assert!(!matches!(
        o,
        Outcome::Send {
            kind: SendKind::LocalReply(_),
            ..
        }
    ));
}

#[test]
fn a1_ipv6_client_gets_received_without_brackets_and_reply_routes_back() {
    let mut c = cfg(&["sip:[2001:db8::20]:5080"]);
    c.listen = vec![parse_listen("t", "udp:[2001:db8::10]:5060").unwrap()];
    let core = core_with(&c);
    let mut r = udp();
    r.src = "[2001:db8::7]:5062".parse().unwrap();
    let msg = invite("").replace("198.51.100.7:5062;branch", "[2001:db8::99]:5062;branch");
    let (o, out) = run(&core, &msg, &r);
    assert_eq!(forwarded(&o).addr, "[2001:db8::20]:5080".parse().unwrap());
    let vias = headers(&out, "Via");
    assert!(vias[0].starts_with("SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bK"));
    assert_eq!(
        vias[1],
        "SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bK-abc;rport=5062;received=2001:db8::7"
    );
    assert_eq!(
        headers(&out, "Record-Route"),
        ["<sip:[2001:db8::10]:5060;lr>"]
    );
    // the upstream's reply comes back and goes to received/rport
    let rep = reply(&format!("Via: {}\r\nVia: {}\r\n", vias[0], vias[1]));
    let mut up = udp();
    up.src = "[2001:db8::20]:5080".parse().unwrap();
    let (o, _) = run(&core, &rep, &up);
    assert_eq!(forwarded(&o).addr, "[2001:db8::7]:5062".parse().unwrap());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the core, over UDP or TCP.
        #[test]
        fn a1_arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_receive_msg(&data);
        }

        /// A valid request with one byte replaced anywhere never panics, and
        /// whatever is forwarded still starts with a start line and our Via.
        #[test]
        fn a1_mutated_request_never_panics(pos in 0usize..600, byte in any::<u8>()) {
            let mut m = invite("Route: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.99;lr>\r\n").into_bytes();
            let p = pos % m.len();
            m[p] = byte;
            let mut sc = Scratch::new();
            let core = core();
            if let Outcome::Send { kind: SendKind::Request, .. } = core.receive_datagram(&m, &udp(), &mut sc) {
                let out = String::from_utf8_lossy(&sc.out);
                let second = out.split("\r\n").nth(1).unwrap_or("");
                prop_assert!(second.starts_with("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"), "{}", out);
            }
        }
    }
}

#[test]
fn rfc4475_malformed_ack_is_dropped_not_answered() {
    let c = core();
    let m = invite("")
        .replacen("INVITE sip:bob", "ACK  sip:bob", 1)
        .replace("314159 INVITE", "314159 ACK");
    let (o, _) = run(&c, &m, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::BadAck));
}

#[test]
fn rfc4475_request_without_via_cannot_be_answered() {
    let c = core();
    let m = invite("").replace(
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-abc;rport\r\n",
        "",
    );
    let (o, _) = run(&c, &m, &udp());
    assert_eq!(o, Outcome::Dropped(DropReason::BadRequest));
    let m = invite("X\x7fY: 1\r\n").replace(
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-abc;rport\r\n",
        "",
    );
    let (o, _) = run(&c, &m, &tcp(3));
    assert_eq!(o, Outcome::Dropped(DropReason::BadRequest));
}

#[test]
fn rfc4475_bad_header_name_answered_naming_it() {
    let c = core();
    let (o, out) = run(&c, &invite("Sub ject: x\r\n"), &tcp(3));
    assert_eq!(local_reply(&o), 400);
    assert_eq!(status(&out), "SIP/2.0 400 Bad header Sub?ject");
}

/// Every header the proxy reads, folded (CRLF + WSP) and spaced as RFC 3261
/// §7.3.1 allows: the request is forwarded, only our edits applied.
#[test]
fn rfc4475_folding_in_every_header_the_proxy_reads() {
    let msg = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via :\r\n SIP / 2.0 /\r\n UDP 198.51.100.7:5062 ;\r\n branch =\r\n z9hG4bK-fold ;\r\n rport\r\n\
Max-Forwards :\r\n 70\r\n\
From :\r\n \"Alice \\\"A\\\"\"\r\n <sip:alice@example.com> ;\r\n tag = 1928\r\n\
To:\r\n Bob\r\n <sip:bob@example.com>\r\n\
Call-ID :\r\n fold@pc33\r\n\
CSeq :\r\n 314159\r\n INVITE\r\n\
Route :\r\n <sip:192.0.2.10:5060;lr> ,\r\n <sip:192.0.2.30;lr>\r\n\
Record-Route :\r\n <sip:rr.example.com;lr>\r\n\
Contact :\r\n <sip:alice@198.51.100.7:5062>\r\n\
Content-Length :\r\n 4\r\n\
\r\n\
v=0\n";
    let (o, out) = run(&core(), msg, &udp());
    let d = forwarded(&o);
    assert_eq!(
        d.addr,
        "192.0.2.30:5060".parse().unwrap(),
        "the second Route"
    );
    let want = msg
        .replace("Max-Forwards :\r\n 70", "Max-Forwards :\r\n 69")
        .replace("rport\r\nMax", "rport=5062;received=198.51.100.7\r\nMax")
        .replace(
            "Route :\r\n <sip:192.0.2.10:5060;lr> ,\r\n <sip:192.0.2.30;lr>",
            "Route :\r\n <sip:192.0.2.30;lr>",
        );
    let (head, rest) = out.split_once("\r\n").unwrap();
    assert_eq!(head, "INVITE sip:bob@example.com SIP/2.0");
    let (via, rest) = rest.split_once("\r\n").unwrap();
    assert!(
        via.starts_with("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsE"),
        "{via}"
    );
    let (rr, rest) = rest.split_once("\r\n").unwrap();
    assert_eq!(rr, "Record-Route: <sip:192.0.2.10:5060;lr>");
    assert_eq!(rest, want.split_once("\r\n").unwrap().1);
}

#[test]
fn rfc3261_16_6_step8_branch_digits_and_numbers_as_the_formatter_writes_them() {
    for n in [
        0u64,
        1,
        9,
        10,
        255,
        0xdead_beef,
        u64::MAX,
        1 << 63,
        12_345_678_901,
    ] {
        let mut h = Vec::new();
        super::push_hex16(&mut h, n);
        assert_eq!(h, format!("{n:016x}").into_bytes());
        let mut d = Vec::new();
        super::push_dec(&mut d, n);
        assert_eq!(d, n.to_string().into_bytes());
    }
}

/// The UDP receive path that reads Content-Length from the parse
/// ([`Core::receive_datagram`]) answers every datagram as the framing-first
/// path does (RFC 3261 §18.3, SPEC A.2): same outcome, same bytes out.
fn same_as_framing_first(msg: &[u8]) {
    let (a, b) = (core(), core());
    let (mut sa, mut sb) = (Scratch::new(), Scratch::new());
    let oa = a.receive_datagram(msg, &udp(), &mut sa);
    let ob = if !msg.is_empty() && msg.iter().all(|&b| b == b'\r' || b == b'\n') {
        b.receive_datagram(msg, &udp(), &mut sb)
    } else {
        b.receive_datagram_unparsed(msg, &udp(), &mut sb)
    };
    assert_eq!(oa, ob, "{}", String::from_utf8_lossy(msg));
    assert_eq!(sa.out, sb.out, "{}", String::from_utf8_lossy(msg));
}

#[test]
fn s18_3_udp_content_length_cases_match_framing_first() {
    let inv = invite("");
    let ack = inv
        .replace("INVITE sip:bob", "ACK sip:bob")
        .replace("314159 INVITE", "314159 ACK");
    let rep = reply("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsEabc\r\n");
    for m in [
        inv.clone(),
        inv.clone() + "beyond",
        inv.replace("Content-Length: 4", "Content-Length: 400"),
        inv.replace("Content-Length: 4", "Content-Length: x"),
        inv.replace("Content-Length: 4", "Content-Length: 4\r\nl: 5"),
        inv.replace("Content-Length: 4", "l:\r\n 4"),
        inv.replace("Content-Length: 4\r\n", ""),
        inv.replace("Content-Length: 4", "Content-Length\r: 400"),
        inv.replace("Content-Length: 4", "Content-Length: 400\r\nBad Header: 1"),
        inv.replace("Content-Length: 4", "Content-Length: 4\r\nBad Header: 1"),
        inv.replace("\r\n\r\n", "\r\n"),
        ack.replace("Content-Length: 4", "Content-Length: 400"),
        rep.replace("Content-Length: 0", "Content-Length: 9"),
        rep.replace("Content-Length: 0", "Content-Length: -1"),
        "\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ] {
        same_as_framing_first(m.as_bytes());
    }
}

proptest::proptest! {
    #[test]
    fn s18_3_prop_udp_receive_matches_framing_first(
        cut in 0usize..400,
        extra in proptest::collection::vec(proptest::sample::select(vec![
            "Content-Length: 0\r\n", "l: 4\r\n", "l: 40\r\n", "Content-Length:\r\n 4\r\n",
            "Content-Length: 4 4\r\n", "Bad Header: 1\r\n", " folded\r\n", "X: y\r\n",
        ]), 0..4),
        tail in proptest::sample::select(vec!["", "v=0\n", "junk-after-body", "\r\n"]),
    ) {
        let m = invite(&extra.concat()) + tail;
        let b = m.as_bytes();
        same_as_framing_first(&b[..cut.min(b.len())]);
        same_as_framing_first(b);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
    /// The dotted-quad fast path of `host_ip` gives exactly what the
    /// standard parser gives, or steps aside: octets over 255, leading
    /// zeros, empty or extra parts, other bytes.
    #[test]
    fn host_ip_fast_path_agrees_with_std(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "0", "00", "01", "1", "9", "10", "99", "100", "127", "199", "255",
                "256", "300", "999", "1000", "0x1", "", "a", " 1", "1 ", "+1", "-1",
            ]),
            0..6,
        ),
        bracket in proptest::prelude::any::<bool>(),
    ) {
        let s = parts.join(".");
        let host = if bracket { format!("[{s}]") } else { s.clone() };
        if let Some(v4) = dotted_quad(host.as_bytes()) {
            proptest::prop_assert_eq!(Some(v4), s.parse::<std::net::Ipv4Addr>().ok());
            proptest::prop_assert!(!bracket);
        }
        // as before the fast path: brackets stripped, then the std parser
        proptest::prop_assert_eq!(host_ip(host.as_bytes()), s.parse::<IpAddr>().ok());
    }
}
