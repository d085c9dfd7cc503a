//! Real SIP calls with sipp: UAC (tests/sipp/uac.xml) → sipedge → UAS
//! (`sipp -sn uas`), INVITE / 180 / 200 / ACK / BYE / 200, over UDP (u1),
//! TCP with one connection (t1) and TCP with one connection per call (tn).
//! Every call must succeed, and the proxy's metrics must show the traffic.
//!
//! `sipp_floor_calls_without_proxy` runs the same UAC straight against the
//! UAS: it checks the harness itself (sipp, scenario, runner, stat parsing)
//! independently of the proxy.
//!
//! The sipp tests of this binary take a process-wide lock: two cores do not
//! run several sipp pairs and a proxy at once without noise.

mod common;

use common::*;

const CALLS: u32 = 500;
const RATE: u32 = 250;

fn through_proxy(transport: SippTransport) {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    let uas = SippUas::start(transport.uas_side());
    let mut proxy = Proxy::start(uas.port);
    let before = proxy.metrics();
    let res = run_uac(&UacOpts {
        target: proxy.sip_addr(),
        transport,
        calls: CALLS,
        rate: RATE,
        netns: None,
        local: None,
    });
    let alive = proxy.alive();
    assert!(
        alive,
        "sipedge died during the {} run\n{}\n{}",
        transport.flag(),
        res.report(),
        proxy.log_tail()
    );
    assert!(
        res.all_ok(CALLS),
        "{} calls through sipedge over {}: expected {CALLS} successful, 0 failed\n{}\n{}",
        CALLS,
        transport.flag(),
        res.report(),
        proxy.log_tail()
    );
    assert_eq!(res.successful, u64::from(CALLS));
    assert_eq!(res.failed, 0);

    // Requests: INVITE, ACK, BYE per call; replies: 180, 200, 200 per call.
    let after = proxy.metrics();
    assert_calls_forwarded(&before, &after, transport, CALLS, false, transport.flag());
}

#[test]
fn sipp_calls_udp_u1() {
    through_proxy(SippTransport::U1);
}

#[test]
fn sipp_calls_tcp_t1() {
    through_proxy(SippTransport::T1);
}

#[test]
fn sipp_calls_tcp_tn() {
    through_proxy(SippTransport::Tn);
}

/// Harness self-check: UAC straight to UAS, no proxy, for u1, t1 and tn.
#[test]
fn sipp_floor_calls_without_proxy() {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    for transport in [SippTransport::U1, SippTransport::T1, SippTransport::Tn] {
        let uas = SippUas::start(transport.uas_side());
        let res = run_uac(&UacOpts {
            target: std::net::SocketAddr::from(([127, 0, 0, 1], uas.port)),
            transport,
            calls: 200,
            rate: RATE,
            netns: None,
            local: None,
        });
        assert!(
            res.all_ok(200),
            "floor run over {} (no proxy) failed: the harness or sipp is broken\n{}",
            transport.flag(),
            res.report()
        );
        eprintln!(
            "floor {}: {} calls ok in {:?}",
            transport.flag(),
            res.successful,
            res.wall
        );
    }
}
