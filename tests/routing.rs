//! Routing with the real binary: IPv6 listen sockets (OPTIONS to the proxy
//! over UDP and TCP on ::1), an INVITE from an IPv6 client forwarded to an
//! IPv4 upstream whose 200 OK comes back to the IPv6 client with only the
//! client's Via left, and a Route whose host is a name (`localhost`),
//! resolved by the proxy.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// ::1 usable here? (IPv6 can be disabled in a container.)
fn ipv6_loopback() -> bool {
    let ok = UdpSocket::bind("[::1]:0").is_ok();
    if !ok {
        if strict() {
            panic!("::1 is not available and SIPEDGE_REQUIRE_ROOT_TESTS/CI demand every test");
        }
        eprintln!("skipping: ::1 is not available");
    }
    ok
}

fn start_v6(upstream_port: u16) -> (Proxy, u16) {
    let p6 = free_port();
    let mut opts = ProxyOpts::new(upstream_port);
    opts.extra_args = vec![
        "--listen".into(),
        format!("udp:[::1]:{p6}"),
        "--listen".into(),
        format!("tcp:[::1]:{p6}"),
    ];
    let proxy = Proxy::start_with(opts);
    assert!(
        wait_listening_v6(p6),
        "no IPv6 listen on {p6}\n{}",
        proxy.log_tail()
    );
    (proxy, p6)
}

/// Bounded wait until a TCP connect to [::1]:port succeeds.
fn wait_listening_v6(port: u16) -> bool {
    for _ in 0..100 {
        if TcpStream::connect_timeout(
            &SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            Duration::from_millis(100),
        )
        .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn ipv6_options_to_the_proxy_answered_over_udp_and_tcp() {
    if !ipv6_loopback() {
        return;
    }
    let (proxy, p6) = start_v6(free_port());
    let ruri = format!("sip:[::1]:{p6}");
    // UDP
    let s = UdpSocket::bind("[::1]:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = s.local_addr().expect("addr");
    let req = sip_request("OPTIONS", &ruri, "UDP", local, "v6u", 70);
    s.send_to(req.as_bytes(), ("::1", p6)).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no reply over UDP/IPv6: {e}\n{}", proxy.log_tail()));
    let rep = String::from_utf8_lossy(&buf[..n]);
    assert!(rep.starts_with("SIP/2.0 200 "), "{rep}");
    // TCP
    let mut t = TcpStream::connect(("::1", p6)).expect("connect");
    let local = t.local_addr().expect("addr");
    let req = sip_request("OPTIONS", &ruri, "TCP", local, "v6t", 70);
    t.write_all(req.as_bytes()).expect("write");
    let rep = read_sip_message(&mut t, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("no reply over TCP/IPv6: {e}\n{}", proxy.log_tail()));
    assert!(rep.starts_with("SIP/2.0 200 "), "{rep}");
}

#[test]
fn ipv6_client_to_ipv4_upstream_and_reply_back() {
    if !ipv6_loopback() {
        return;
    }
    let upstream = EchoUpstream::start();
    let (proxy, p6) = start_v6(upstream.port);
    let s = UdpSocket::bind("[::1]:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = s.local_addr().expect("addr");
    let req = sip_request("INVITE", "sip:bob@example.com", "UDP", local, "v6inv", 70);
    s.send_to(req.as_bytes(), ("::1", p6)).expect("send");
    let mut buf = [0u8; 4096];
    let (n, from) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no 200 back over IPv6: {e}\n{}", proxy.log_tail()));
    assert_eq!(
        from.port(),
        p6,
        "the reply comes from the proxy's IPv6 socket"
    );
    let rep = String::from_utf8_lossy(&buf[..n]);
    assert!(rep.starts_with("SIP/2.0 200 "), "{rep}");
    let vias: Vec<&str> = rep.lines().filter(|l| l.starts_with("Via:")).collect();
    assert_eq!(vias.len(), 1, "only the client's Via is left: {rep}");
    assert!(
        vias[0].contains(&format!("rport={}", local.port())),
        "{rep}"
    );
    assert!(vias[0].contains("received=::1"), "{rep}");
    let m = proxy.metrics();
    assert!(metric_value(&m, "sipedge_forwarded_total{kind=\"request\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric_value(&m, "sipedge_forwarded_total{kind=\"reply\"}").unwrap_or(0.0) >= 1.0);
}

#[test]
fn route_with_a_host_name_is_resolved_and_followed() {
    let echo = EchoUpstream::start();
    // the configured upstream is a dead port: only the Route reaches the echo
    let proxy = Proxy::start(free_port());
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(4)))
        .expect("timeout");
    let local = s.local_addr().expect("addr");
    let req = sip_request("OPTIONS", "sip:bob@example.com", "UDP", local, "dns", 70).replacen(
        "Max-Forwards:",
        &format!(
            "Route: <sip:127.0.0.1:{};lr>, <sip:localhost:{};lr>\r\nMax-Forwards:",
            proxy.sip_port, echo.port
        ),
        1,
    );
    s.send_to(req.as_bytes(), proxy.sip_addr()).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no reply through the resolved Route: {e}\n{}",
            proxy.log_tail()
        )
    });
    let rep = String::from_utf8_lossy(&buf[..n]);
    assert!(rep.starts_with("SIP/2.0 200 "), "{rep}");
    let m = proxy.metrics();
    assert!(metric_value(&m, "sipedge_forwarded_total{kind=\"reply\"}").unwrap_or(0.0) >= 1.0);
}
