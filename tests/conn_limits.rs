//! SPEC A.4: connection limits and release logic with the real binary:
//! the first-message deadline, the idle lifetime, eviction of the oldest
//! connection that never delivered a SIP message when the table is full (a
//! flood of idle sockets must not lock out real clients), refusal when there
//! is nothing to evict, and the per-IP cap. Each release counted by reason.

mod common;

use common::*;
use std::net::TcpStream;
use std::time::Duration;

fn released(reason: &str) -> String {
    format!("sipedge_tcp_released_total{{reason=\"{reason}\"}}")
}

/// Wait (bounded) until `query` reaches `want`; fail with the log otherwise.
fn expect_metric(proxy: &Proxy, query: &str, want: f64) {
    let v = proxy.wait_metric_at_least(query, want, Duration::from_secs(3));
    assert!(
        v >= want,
        "{query} = {v}, want >= {want}\n{}",
        proxy.log_tail()
    );
}

fn start(tcp: &str) -> Proxy {
    Proxy::start_with(ProxyOpts::new(free_port()).config(&format!("[tcp]\n{tcp}\n")))
}

#[test]
fn a4_connection_without_a_first_message_is_released_at_its_deadline() {
    let proxy = start("first_message_timeout_secs = 1\nmessage_timeout_secs = 10");
    let mut s = connect(proxy.sip_addr());
    match wait_closed(&mut s, Duration::from_secs(4)) {
        CloseOutcome::Closed(after, _) => assert!(
            after >= Duration::from_millis(800),
            "closed too early: {after:?}"
        ),
        CloseOutcome::StillOpen(_) => panic!("still open after 4 s\n{}", proxy.log_tail()),
    }
    expect_metric(&proxy, &released("first_message_timeout"), 1.0);
}

#[test]
fn a4_idle_connection_is_released_after_its_lifetime() {
    let proxy = start("idle_lifetime_secs = 1\nfirst_message_timeout_secs = 30");
    let mut s = connect(proxy.sip_addr());
    assert_options_200(&proxy, &mut s, "idle");
    match wait_closed(&mut s, Duration::from_secs(5)) {
        CloseOutcome::Closed(..) => {}
        CloseOutcome::StillOpen(_) => panic!("still open after 5 s\n{}", proxy.log_tail()),
    }
    expect_metric(&proxy, &released("idle_timeout"), 1.0);
}

#[test]
fn a4_full_table_evicts_an_idle_socket_for_a_real_client() {
    let proxy = start("max_connections = 4\nfirst_message_timeout_secs = 60");
    // four sockets that never send anything fill the table
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(proxy.sip_addr())).collect();
    expect_metric(&proxy, "sipedge_tcp_connections", 4.0);
    // a real client still gets in and is served
    let mut real = connect(proxy.sip_addr());
    assert_options_200(&proxy, &mut real, "real");
    expect_metric(&proxy, &released("evicted"), 1.0);
    // the oldest idle socket is the one that was closed
    match wait_closed(&mut idle[0], Duration::from_secs(2)) {
        CloseOutcome::Closed(..) => {}
        CloseOutcome::StillOpen(_) => {
            panic!("oldest idle socket not evicted\n{}", proxy.log_tail())
        }
    }
    for s in idle.iter_mut().skip(1) {
        assert!(
            matches!(
                wait_closed(s, Duration::from_millis(200)),
                CloseOutcome::StillOpen(_)
            ),
            "only the oldest idle socket is evicted"
        );
    }
}

#[test]
fn a4_full_table_of_real_clients_refuses_a_new_connection() {
    let proxy = start("max_connections = 2");
    let mut a = connect(proxy.sip_addr());
    let mut b = connect(proxy.sip_addr());
    assert_options_200(&proxy, &mut a, "a");
    assert_options_200(&proxy, &mut b, "b");
    let mut c = connect(proxy.sip_addr());
    match wait_closed(&mut c, Duration::from_secs(2)) {
        CloseOutcome::Closed(..) => {}
        CloseOutcome::StillOpen(_) => panic!("third connection not refused\n{}", proxy.log_tail()),
    }
    expect_metric(&proxy, "sipedge_tcp_refused_total", 1.0);
    expect_metric(&proxy, &released("limit"), 1.0);
    // the admitted clients are untouched
    assert_options_200(&proxy, &mut a, "a2");
}

#[test]
fn a4_per_ip_cap_refuses_the_extra_connection() {
    let proxy = start("max_connections_per_ip = 2");
    let mut a = connect(proxy.sip_addr());
    let _b = connect(proxy.sip_addr());
    assert_options_200(&proxy, &mut a, "a");
    let mut c = connect(proxy.sip_addr());
    match wait_closed(&mut c, Duration::from_secs(2)) {
        CloseOutcome::Closed(..) => {}
        CloseOutcome::StillOpen(_) => panic!("third connection from one IP not refused"),
    }
    expect_metric(&proxy, "sipedge_tcp_refused_total", 1.0);
}
