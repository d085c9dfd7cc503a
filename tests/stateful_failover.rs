//! The stateful mode's failover with the real binary (issue #10): sipp
//! calls through sipedge (`proxy.mode = "stateful"`) to three upstreams
//! (tests/common/uas.rs): A answers, B answers every request 503, C answers
//! until it is stopped in the middle of the run. Health checks are off, so
//! only the transaction layer keeps the calls alive: a 503 from B and a
//! timeout from the stopped C (Timer B / F, `fr_timeout_ms`; over TCP its
//! refused connect, at once) send the request to the next target, and the
//! caller sees only the final answer.
//! Zero failed calls, over UDP and over TCP.

mod common;

use common::uas::{TestUas, UasMode};
use common::*;
use std::time::Duration;

/// Timer B / F of the run: a stopped target costs a request this long.
const FR_MS: u64 = 1000;
const CALLS: u32 = 120;
const RATE: u32 = 30;

fn config(transport: &str, ports: &[u16]) -> String {
    let mut s = format!(
        "[transaction]\nfr_timeout_ms = {FR_MS}\nmax_tries = 3\n\n\
         [[upstream_set]]\nname = \"core\"\nalgorithm = \"round-robin\"\n"
    );
    for p in ports {
        s.push_str(&format!(
            "[[upstream_set.target]]\nuri = \"sip:127.0.0.1:{p};transport={transport}\"\n"
        ));
    }
    s
}

fn failover_scenario(transport: SippTransport) {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    let t = if transport.is_tcp() { "tcp" } else { "udp" };
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = TestUas::restart(pa, UasMode::Normal);
    let b = TestUas::restart(pb, UasMode::Unavailable);
    let c = TestUas::restart(pc, UasMode::Normal);
    let proxy = Proxy::start_with(
        ProxyOpts::new(pa)
            .config(&config(t, &[pa, pb, pc]))
            .proxy_keys("mode = \"stateful\""),
    );
    let run = std::thread::scope(|s| {
        let h = s.spawn(|| {
            run_uac(&UacOpts {
                target: proxy.sip_addr(),
                transport,
                calls: CALLS,
                rate: RATE,
                netns: None,
                local: None,
            })
        });
        // C takes calls for a while, then stops in the middle of the run
        std::thread::sleep(Duration::from_millis(1500));
        let c_calls = c.counts.calls();
        drop(c);
        eprintln!("C stopped after {c_calls} call requests");
        assert!(c_calls > 0, "C took calls before it stopped");
        h.join().expect("sipp thread")
    });
    let m = proxy.metrics();
    let v = |q: &str| metric_value(&m, q).unwrap_or(0.0);
    let report = format!(
        "{}\nfailovers {} timeouts {} created {} refused {}; A {:?} B {:?}\n{}",
        run.report(),
        v("sipedge_transaction_failovers_total"),
        v("sipedge_transaction_timeouts_total"),
        v("sipedge_transactions_created_total"),
        v("sipedge_transactions_refused_total"),
        a.counts,
        b.counts,
        proxy.log_tail()
    );
    eprintln!(
        "failovers {} timeouts {} created {}; A {:?} B {:?}",
        v("sipedge_transaction_failovers_total"),
        v("sipedge_transaction_timeouts_total"),
        v("sipedge_transactions_created_total"),
        a.counts,
        b.counts
    );
    assert!(run.all_ok(CALLS), "every call succeeds\n{report}");
    assert_eq!(run.failed, 0, "{report}");
    // B's 503s and C's silence were seen and failed over
    assert!(b.counts.get("INVITE") > 0, "B got INVITEs\n{report}");
    assert!(
        v("sipedge_transaction_failovers_total") >= b.counts.get("INVITE") as f64,
        "every 503 failed over\n{report}"
    );
    if transport.is_tcp() {
        // over TCP the stopped target refuses the connection (or resets
        // it): the tries fail over at once, without Timer B / F
        let errors = v("sipedge_tcp_released_total{reason=\"connect_failed\"}")
            + v("sipedge_tcp_released_total{reason=\"reset\"}");
        assert!(errors >= 1.0, "the stopped target refused\n{report}");
    } else {
        assert!(
            v("sipedge_transaction_timeouts_total") >= 1.0,
            "the stopped target timed out\n{report}"
        );
    }
    assert!(
        v("sipedge_transactions_created_total") >= f64::from(2 * CALLS),
        "INVITE and BYE transactions\n{report}"
    );
    assert_eq!(v("sipedge_transactions_refused_total"), 0.0, "{report}");
    // the caller never saw a 503: only A answered its INVITEs with a 200
    assert!(a.counts.get("INVITE") >= u64::from(CALLS) / 2, "{report}");
}

#[test]
fn udp_stateful_failover_503_and_stopped_target_zero_failed_calls() {
    failover_scenario(SippTransport::U1);
}

#[test]
fn tcp_stateful_failover_503_and_stopped_target_zero_failed_calls() {
    failover_scenario(SippTransport::T1);
}

/// RFC 3261 §16.9 with issue #10's "transport error" trigger: one TCP
/// target refuses connections (a closed port). A try sent there fails over
/// to the next target as soon as the connect is refused, not at Timer B:
/// Timer B here (`fr_timeout_ms`, 10 min) is far beyond sipp's own timeout
/// (the calls' planned time + 30 s), so a call that waited for it would fail.
#[test]
fn tcp_refused_connect_fails_over_at_once_not_at_timer_b() {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    const CALLS: u32 = 20;
    let (pa, refused) = (free_port(), free_port());
    let a = TestUas::restart(pa, UasMode::Normal);
    let cfg = format!(
        "[transaction]\nfr_timeout_ms = 600000\nmax_tries = 3\n\n\
         [[upstream_set]]\nname = \"core\"\nalgorithm = \"round-robin\"\n\
         [[upstream_set.target]]\nuri = \"sip:127.0.0.1:{refused};transport=tcp\"\n\
         [[upstream_set.target]]\nuri = \"sip:127.0.0.1:{pa};transport=tcp\"\n"
    );
    let proxy = Proxy::start_with(
        ProxyOpts::new(pa)
            .config(&cfg)
            .proxy_keys("mode = \"stateful\""),
    );
    let run = run_uac(&UacOpts {
        target: proxy.sip_addr(),
        transport: SippTransport::T1,
        calls: CALLS,
        rate: 10,
        netns: None,
        local: None,
    });
    let m = proxy.metrics();
    let v = |q: &str| metric_value(&m, q).unwrap_or(0.0);
    let report = format!(
        "{}\nfailovers {} timeouts {} connect_failed {}; A {:?}\n{}",
        run.report(),
        v("sipedge_transaction_failovers_total"),
        v("sipedge_transaction_timeouts_total"),
        v("sipedge_tcp_released_total{reason=\"connect_failed\"}"),
        a.counts,
        proxy.log_tail()
    );
    assert!(run.all_ok(CALLS), "every call succeeds\n{report}");
    assert_eq!(run.failed, 0, "{report}");
    // the refused target was tried and failed over, and no try timed out
    assert!(
        v("sipedge_tcp_released_total{reason=\"connect_failed\"}") >= 1.0,
        "a connect was refused\n{report}"
    );
    assert!(
        v("sipedge_transaction_failovers_total") >= 1.0,
        "the refused try failed over\n{report}"
    );
    assert_eq!(
        v("sipedge_transaction_timeouts_total"),
        0.0,
        "nothing waited for Timer B\n{report}"
    );
    assert!(a.counts.get("INVITE") >= u64::from(CALLS), "{report}");
}
