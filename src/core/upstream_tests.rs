//! Unit tests of upstream selection and health (issue #10), in virtual time.

use super::*;
use std::collections::HashMap;
use std::sync::Arc;

fn target(i: u8, weight: u32, priority: u32) -> TargetSpec {
    TargetSpec {
        uri: format!("sip:127.0.0.{i}:5060"),
        addr: SocketAddr::from(([127, 0, 0, i], 5060)),
        transport: None,
        weight,
        priority,
    }
}

fn health() -> HealthSpec {
    HealthSpec {
        ping_interval_ms: 1000,
        ping_timeout_ms: 500,
        down_after: 2,
        up_after: 2,
        ..HealthSpec::default()
    }
}

fn sets(algorithm: Algorithm, targets: Vec<TargetSpec>) -> UpstreamSets {
    UpstreamSets::new(
        &[SetSpec {
            name: "s".into(),
            algorithm,
            targets,
            health: health(),
        }],
        None,
    )
}

const S: SetId = SetId(0);

fn down(u: &UpstreamSets, i: u32) {
    for _ in 0..u.health_spec(S).map_or(1, |h| h.down_after) {
        u.mark_failure(TargetId(i), Signal::Unreachable, 1);
    }
    assert!(!u.is_up(TargetId(i)));
}

fn pick(u: &UpstreamSets, cid: &str, ex: &[TargetId]) -> Option<u32> {
    u.pick(S, cid.as_bytes(), ex).map(|(id, _)| id.0)
}

#[test]
fn round_robin_takes_each_target_in_turn_and_skips_down_ones() {
    let u = sets(
        Algorithm::RoundRobin,
        vec![target(1, 1, 0), target(2, 1, 0), target(3, 1, 0)],
    );
    let got: Vec<_> = (0..6).filter_map(|_| pick(&u, "c", &[])).collect();
    assert_eq!(got, [0, 1, 2, 0, 1, 2]);
    down(&u, 1);
    let got: Vec<_> = (0..4).filter_map(|_| pick(&u, "c", &[])).collect();
    assert!(!got.contains(&1), "{got:?}");
    assert_eq!(got.len(), 4);
}

#[test]
fn exclude_skips_the_targets_a_transaction_already_tried() {
    let u = sets(
        Algorithm::RoundRobin,
        vec![target(1, 1, 0), target(2, 1, 0)],
    );
    for _ in 0..4 {
        assert_eq!(pick(&u, "c", &[TargetId(0)]), Some(1));
    }
    assert_eq!(pick(&u, "c", &[TargetId(0), TargetId(1)]), None);
}

#[test]
fn call_id_hash_is_sticky_and_spreads() {
    let u = sets(
        Algorithm::CallIdHash,
        vec![target(1, 1, 0), target(2, 1, 0), target(3, 1, 0)],
    );
    let mut per = HashMap::new();
    for n in 0..3000 {
        let cid = format!("call-{n}@host");
        let a = pick(&u, &cid, &[]);
        assert_eq!(a, pick(&u, &cid, &[]), "same Call-ID, same target");
        *per.entry(a.unwrap()).or_insert(0) += 1;
    }
    for t in 0..3 {
        let n = per[&t];
        assert!((800..1200).contains(&n), "{per:?}");
    }
}

#[test]
fn call_id_hash_consistent_a_down_target_moves_only_its_own_calls() {
    let u = sets(
        Algorithm::CallIdHash,
        vec![target(1, 1, 0), target(2, 1, 0), target(3, 1, 0)],
    );
    let calls: Vec<String> = (0..2000).map(|n| format!("{n}-x@y")).collect();
    let before: Vec<_> = calls.iter().map(|c| pick(&u, c, &[]).unwrap()).collect();
    down(&u, 1);
    let mut moved = 0;
    for (c, b) in calls.iter().zip(&before) {
        let a = pick(&u, c, &[]).unwrap();
        if *b == 1 {
            assert_ne!(a, 1);
            moved += 1;
        } else {
            assert_eq!(a, *b, "a call of a healthy target moved");
        }
    }
    assert!(moved > 400, "{moved}");
    // back up: every call returns to where it was
    for _ in 0..2 {
        u.mark_success(TargetId(1), 5);
    }
    let again: Vec<_> = calls.iter().map(|c| pick(&u, c, &[]).unwrap()).collect();
    assert_eq!(again, before);
}

#[test]
fn call_id_hash_follows_the_weights() {
    let u = sets(
        Algorithm::CallIdHash,
        vec![target(1, 3, 0), target(2, 1, 0)],
    );
    let n0 = (0..4000)
        .filter(|n| pick(&u, &format!("w{n}"), &[]) == Some(0))
        .count();
    assert!((2750..3250).contains(&n0), "{n0}");
}

#[test]
fn weighted_follows_the_weights_among_targets_up() {
    let u = sets(
        Algorithm::Weighted,
        vec![target(1, 1, 0), target(2, 3, 0), target(3, 6, 0)],
    );
    let mut per = [0u32; 3];
    for _ in 0..10_000 {
        per[pick(&u, "c", &[]).unwrap() as usize] += 1;
    }
    assert!((800..1200).contains(&per[0]), "{per:?}");
    assert!((2700..3300).contains(&per[1]), "{per:?}");
    assert!((5600..6400).contains(&per[2]), "{per:?}");
    down(&u, 2);
    let mut per = [0u32; 3];
    for _ in 0..4000 {
        per[pick(&u, "c", &[]).unwrap() as usize] += 1;
    }
    assert_eq!(per[2], 0);
    assert!((800..1200).contains(&per[0]), "{per:?}");
}

#[test]
fn priority_uses_the_best_level_then_fails_over() {
    let u = sets(
        Algorithm::Priority,
        vec![target(1, 1, 10), target(2, 1, 0), target(3, 1, 0)],
    );
    let mut seen = [0u32; 3];
    for _ in 0..100 {
        seen[pick(&u, "c", &[]).unwrap() as usize] += 1;
    }
    assert_eq!(seen[0], 0, "{seen:?}");
    assert!(seen[1] > 20 && seen[2] > 20, "{seen:?}");
    down(&u, 1);
    assert_eq!(pick(&u, "c", &[]), Some(2));
    assert_eq!(pick(&u, "c", &[TargetId(2)]), Some(0));
    down(&u, 2);
    assert_eq!(pick(&u, "c", &[]), Some(0));
    down(&u, 0);
    assert_eq!(pick(&u, "c", &[]), None);
}

#[test]
fn down_after_consecutive_failures_up_after_consecutive_successes() {
    let u = sets(Algorithm::RoundRobin, vec![target(1, 1, 0)]);
    let t = TargetId(0);
    u.mark_failure(t, Signal::ProbeTimeout, 1);
    u.mark_success(t, 2); // the run of failures ends
    u.mark_failure(t, Signal::ProbeTimeout, 3);
    assert!(u.is_up(t));
    u.mark_failure(t, Signal::ProbeTimeout, 4);
    assert!(!u.is_up(t));
    assert!(u.all_down());
    assert_eq!(u.changed_at(t), Some(4));
    u.mark_success(t, 5);
    u.mark_failure(t, Signal::ProbeTimeout, 6); // the run of successes ends
    u.mark_success(t, 7);
    assert!(!u.is_up(t));
    u.mark_success(t, 8);
    assert!(u.is_up(t));
    assert!(!u.all_down());
}

#[test]
fn readiness_hook_sees_all_down_and_back() {
    let u = sets(
        Algorithm::RoundRobin,
        vec![target(1, 1, 0), target(2, 1, 0)],
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    u.set_readiness_hook(Box::new(move |up| s2.lock().unwrap().push(up)));
    down(&u, 0);
    assert!(seen.lock().unwrap().is_empty());
    down(&u, 1);
    u.mark_success(TargetId(1), 9);
    u.mark_success(TargetId(1), 9);
    assert_eq!(*seen.lock().unwrap(), [false, true]);
}

#[test]
fn passive_signals_by_address_count_for_every_target_there() {
    let u = sets(
        Algorithm::RoundRobin,
        vec![target(1, 1, 0), target(2, 1, 0)],
    );
    let a = SocketAddr::from(([127, 0, 0, 2], 5060));
    u.mark_failure_at(a, Some(Transport::Udp), Signal::Unreachable, 1);
    u.mark_failure_at(a, None, Signal::ConnectFailed, 2);
    assert!(u.is_up(TargetId(0)));
    assert!(!u.is_up(TargetId(1)));
    // another address: nothing
    u.mark_failure_at(
        SocketAddr::from(([127, 0, 0, 9], 5060)),
        None,
        Signal::Reset,
        3,
    );
    assert!(u.is_up(TargetId(0)));
}

#[test]
fn reply_codes_503_counts_as_failure_others_end_the_run() {
    let u = sets(Algorithm::RoundRobin, vec![target(1, 1, 0)]);
    let t = TargetId(0);
    u.mark_reply(t, 503, 1);
    u.mark_reply(t, 200, 2);
    u.mark_reply(t, 503, 3);
    assert!(u.is_up(t));
    u.mark_reply(t, 503, 4);
    assert!(!u.is_up(t));
    // replies do not bring a down target back: probes do
    for n in 0..5 {
        u.mark_reply(t, 200, 5 + n);
    }
    assert!(!u.is_up(t));
}

#[test]
fn transaction_timeout_is_a_failure_signal() {
    let u = sets(Algorithm::RoundRobin, vec![target(1, 1, 0)]);
    u.mark_failure(TargetId(0), Signal::TransactionTimeout, 1);
    u.mark_failure(TargetId(0), Signal::TransactionTimeout, 2);
    assert!(!u.is_up(TargetId(0)));
}

#[test]
fn health_off_without_probes_targets_stay_up() {
    let u = UpstreamSets::new(
        &[SetSpec {
            name: "s".into(),
            algorithm: Algorithm::RoundRobin,
            targets: vec![target(1, 1, 0)],
            health: HealthSpec::default(),
        }],
        None,
    );
    for n in 0..10 {
        u.mark_failure(TargetId(0), Signal::Unreachable, n);
    }
    assert!(u.is_up(TargetId(0)));
    let mut p = Prober::new(Arc::new(u), 0);
    let mut due = Vec::new();
    p.poll(0, &mut due);
    assert!(due.is_empty() && !p.active() && p.next_wakeup().is_none());
}

#[test]
fn code_set_items() {
    let mut c = CodeSet::default();
    assert!(c.add_item("2xx").is_some());
    assert!(c.add_item("404").is_some());
    assert!(c.add_item("700").is_none());
    assert!(c.add_item("2x").is_none());
    assert!(c.contains(200) && c.contains(299) && c.contains(404));
    assert!(!c.contains(300) && !c.contains(503) && !c.contains(99));
    assert_eq!(c.items(), ["2xx", "404"]);
    assert_eq!(CodeSet::any_final().items(), ["any"]);
    assert!(!CodeSet::any_final().contains(180));
}

// ---- probes (virtual time) ----

fn prober(n: u8) -> (Arc<UpstreamSets>, Prober) {
    let u = Arc::new(sets(
        Algorithm::RoundRobin,
        (1..=n).map(|i| target(i, 1, 0)).collect(),
    ));
    let p = Prober::new(u.clone(), 0);
    (u, p)
}

#[test]
fn probes_are_due_every_interval() {
    let (_, mut p) = prober(2);
    let mut due = Vec::new();
    p.poll(0, &mut due);
    assert_eq!(due.len(), 2);
    assert_eq!(p.next_wakeup(), Some(500)); // the timeout of the probes in flight
    for d in due.drain(..) {
        assert!(p.on_reply(
            ProbeReply {
                target: d.target,
                seq: d.seq,
                code: 200
            },
            10
        ));
    }
    assert_eq!(p.next_wakeup(), Some(1000));
    p.poll(999, &mut due);
    assert!(due.is_empty());
    p.poll(1000, &mut due);
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|d| d.seq == 2));
}

#[test]
fn unanswered_probes_take_a_target_down_answered_ones_bring_it_back() {
    let (u, mut p) = prober(1);
    let t = TargetId(0);
    let mut due = Vec::new();
    let mut now = 0;
    // two probes time out: down (down_after = 2)
    for _ in 0..2 {
        p.poll(now, &mut due);
        assert_eq!(due.len(), 1);
        due.clear();
        now += 500;
        p.poll(now, &mut due);
        assert!(due.is_empty());
        now += 500;
    }
    p.poll(now, &mut due); // times out nothing new; sends probe 3
    assert!(!u.is_up(t));
    // the target answers again: up after two
    for _ in 0..2 {
        let d = due.pop().expect("a probe is due");
        assert!(p.on_reply(
            ProbeReply {
                target: d.target,
                seq: d.seq,
                code: 200
            },
            now + 3
        ));
        now += 1000;
        p.poll(now, &mut due);
    }
    assert!(u.is_up(t));
}

#[test]
fn probe_reply_matching_stale_seq_provisional_and_codes() {
    let (u, mut p) = prober(1);
    let t = TargetId(0);
    let mut due = Vec::new();
    p.poll(0, &mut due);
    let d = due[0];
    let r = |seq, code| ProbeReply {
        target: t,
        seq,
        code,
    };
    assert!(!p.on_reply(r(d.seq + 1, 200), 1), "wrong seq");
    assert!(!p.on_reply(
        ProbeReply {
            target: TargetId(7),
            seq: d.seq,
            code: 200
        },
        1
    ));
    assert!(p.on_reply(r(d.seq, 100), 1), "provisional: still waiting");
    assert!(p.on_reply(r(d.seq, 404), 2), "any final reply is alive");
    assert!(!p.on_reply(r(d.seq, 200), 3), "answered already");
    assert!(u.is_up(t));
    // 503 is a failure code: two in a row take it down
    for now in [1000, 2000] {
        due.clear();
        p.poll(now, &mut due);
        assert!(p.on_reply(r(due[0].seq, 503), now + 1));
    }
    assert!(!u.is_up(t));
}

#[test]
fn probe_send_failure_counts_at_once() {
    let (u, mut p) = prober(1);
    let mut due = Vec::new();
    for now in [0, 1000] {
        due.clear();
        p.poll(now, &mut due);
        p.send_failed(due[0], now);
    }
    assert!(!u.is_up(TargetId(0)));
}

#[test]
fn probe_branch_round_trip_and_forgery() {
    let mut b = Vec::new();
    let p = ProbeDue {
        target: TargetId(3),
        seq: 0x1234,
    };
    write_probe_branch(&mut b, 42, p);
    assert!(b.starts_with(PROBE_BRANCH));
    assert_eq!(parse_probe_branch(&b, 42), Some(p));
    assert_eq!(parse_probe_branch(&b, 43), None, "other secret");
    let mut forged = b.clone();
    let n = forged.len();
    forged[n - 1] = if forged[n - 1] == b'0' { b'1' } else { b'0' };
    assert_eq!(parse_probe_branch(&forged, 42), None);
    assert_eq!(parse_probe_branch(b"z9hG4bKsE0123456789abcdef", 42), None);
    assert_eq!(parse_probe_branch(b"z9hG4bKsEp1.2", 42), None);
    assert_eq!(parse_probe_branch(b"z9hG4bKsEp.2.3", 42), None);
}

#[test]
fn reload_rebuild_keeps_health_of_targets_that_stay_and_retires_old_ids() {
    let u = sets(
        Algorithm::RoundRobin,
        vec![target(1, 1, 0), target(2, 1, 0)],
    );
    down(&u, 1); // 127.0.0.2 down
    let spec = SetSpec {
        name: "s".into(),
        algorithm: Algorithm::RoundRobin,
        // 127.0.0.2 stays (now first), 127.0.0.1 goes, 127.0.0.3 is new
        targets: vec![target(2, 1, 0), target(3, 1, 0)],
        health: health(),
    };
    let n = u.rebuild(std::slice::from_ref(&spec));
    assert_eq!(n.specs(), std::slice::from_ref(&spec));
    let ids: Vec<TargetId> = n.targets().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 2);
    // the target that stayed is still down, the new one is up
    let by_uri = |uri: &str| n.targets().find(|(_, t)| t.uri() == uri).map(|(id, _)| id);
    let stayed = by_uri("sip:127.0.0.2:5060").expect("stayed");
    let new = by_uri("sip:127.0.0.3:5060").expect("new");
    assert!(!n.is_up(stayed) && n.is_up(new));
    // ids of the old sets name nothing in the new ones
    for old in [TargetId(0), TargetId(1)] {
        assert!(n.target(old).is_none() && !n.is_up(old));
        n.mark_failure(old, Signal::Unreachable, 2); // no effect, no panic
    }
    assert!(n.is_up(new));
    assert_eq!(n.pick(S, b"c", &[]).map(|(id, _)| id), Some(new));
    // a prober follows the new sets (and only once)
    let mut p = Prober::new(Arc::new(u), 0);
    let n = Arc::new(n);
    assert!(p.follow(&n, 5));
    assert!(!p.follow(&n, 6));
}

#[test]
fn reload_readiness_follows_the_new_sets() {
    let u = sets(Algorithm::RoundRobin, vec![target(1, 1, 0)]);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    u.set_readiness_hook(Box::new(move |up| s2.lock().unwrap().push(up)));
    down(&u, 0);
    assert_eq!(*seen.lock().unwrap(), [false]);
    // a reload to a new target: one is up again → ready
    let spec = SetSpec {
        name: "s".into(),
        algorithm: Algorithm::RoundRobin,
        targets: vec![target(9, 1, 0)],
        health: health(),
    };
    let n = u.rebuild(&[spec]);
    assert!(!n.all_down());
    assert_eq!(*seen.lock().unwrap(), [false, true]);
}

#[test]
fn icmp_unreachable_ends_the_probe_in_flight_counted_once() {
    let (u, mut p) = prober(2);
    let mut due = Vec::new();
    p.poll(0, &mut due);
    let a = SocketAddr::from(([127, 0, 0, 1], 5060));
    p.on_unreachable(a, Some(Transport::Udp), 3);
    // its timeout does not count again
    due.clear();
    p.poll(600, &mut due);
    assert!(u.is_up(TargetId(0)), "one failure so far (down_after = 2)");
    p.poll(1000, &mut due);
    p.on_unreachable(a, Some(Transport::Udp), 1003);
    assert!(!u.is_up(TargetId(0)));
    assert!(
        u.is_up(TargetId(1)),
        "the other target answers nothing yet but has one timeout"
    );
}

#[test]
fn issue8_passive_signal_holds_a_target_down_for_hold_down_ms() {
    let u = UpstreamSets::new(
        &[SetSpec {
            name: "s".into(),
            algorithm: Algorithm::RoundRobin,
            targets: vec![target(1, 1, 0), target(2, 1, 0)],
            health: HealthSpec {
                hold_down_ms: 5_000,
                ..health()
            },
        }],
        None,
    );
    let (a, b) = (TargetId(0), TargetId(1));
    // a probe timeout is one failure of down_after (2): still up
    u.mark_failure(b, Signal::ProbeTimeout, 10);
    assert!(u.is_up(b));
    // a TCP reset from the target: down at once
    u.mark_failure(a, Signal::Reset, 1_000);
    assert!(!u.is_up(a));
    assert_eq!(pick(&u, "c", &[]), Some(1));
    // good probes during the hold-down do not count
    u.mark_success(a, 2_000);
    u.mark_success(a, 3_000);
    u.mark_success(a, 5_999);
    assert!(!u.is_up(a), "held down until 6000");
    // after it, up_after (2) good probes bring it back
    u.mark_success(a, 6_000);
    assert!(!u.is_up(a));
    u.mark_success(a, 7_000);
    assert!(u.is_up(a));
    // ICMP unreachable and a refused connect hold down too
    for sig in [Signal::Unreachable, Signal::ConnectFailed] {
        u.mark_failure(a, sig, 10_000);
        assert!(!u.is_up(a), "{sig:?}");
        u.mark_success(a, 20_000);
        u.mark_success(a, 21_000);
        assert!(u.is_up(a), "{sig:?}");
    }
}

#[test]
fn without_hold_down_a_passive_signal_is_one_failure() {
    let u = sets(Algorithm::RoundRobin, vec![target(1, 1, 0)]);
    u.mark_failure(TargetId(0), Signal::Reset, 1);
    assert!(u.is_up(TargetId(0)), "down_after = 2");
    u.mark_failure(TargetId(0), Signal::Reset, 2);
    assert!(!u.is_up(TargetId(0)));
}

#[test]
fn a_reload_keeps_a_running_hold_down() {
    let spec = SetSpec {
        name: "s".into(),
        algorithm: Algorithm::RoundRobin,
        targets: vec![target(1, 1, 0)],
        health: HealthSpec {
            hold_down_ms: 5_000,
            ..health()
        },
    };
    let u = UpstreamSets::new(std::slice::from_ref(&spec), None);
    u.mark_failure(TargetId(0), Signal::Unreachable, 1_000);
    let n = u.rebuild(&[spec]);
    let id = n.targets().next().map(|(id, _)| id).unwrap();
    assert!(!n.is_up(id));
    n.mark_success(id, 2_000);
    n.mark_success(id, 3_000);
    assert!(!n.is_up(id), "still held down after the reload");
    n.mark_success(id, 6_000);
    n.mark_success(id, 7_000);
    assert!(n.is_up(id));
}

#[test]
fn issue8_every_failure_signal_is_counted_by_kind() {
    let r = Registry::new();
    let u = UpstreamSets::new(
        &[SetSpec {
            name: "s".into(),
            algorithm: Algorithm::RoundRobin,
            targets: vec![target(1, 1, 0)],
            // health off: still counted
            health: HealthSpec::default(),
        }],
        Some(&r),
    );
    u.mark_failure(TargetId(0), Signal::Reset, 1);
    u.mark_failure(TargetId(0), Signal::Reset, 2);
    u.mark_failure(TargetId(0), Signal::Unreachable, 3);
    let count = |sig: &str| {
        r.gather()
            .iter()
            .filter(|f| f.name() == "sipedge_upstream_failure_signals_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == sig))
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
    };
    assert_eq!(count("reset"), 2.0);
    assert_eq!(count("unreachable"), 1.0);
    assert!(u.is_up(TargetId(0)), "health off: counted, not taken down");
}
