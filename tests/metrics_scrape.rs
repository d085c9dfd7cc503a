//! The `/metrics` endpoint: every line of the text exposition format is
//! well formed, every sample is `sipedge_*`, the families the tests and
//! dashboards rely on exist, histograms are consistent, and — when promtool
//! is installed — `promtool check metrics` passes.
//!
//! Traffic first (a local OPTIONS, a forwarded OPTIONS answered by a tiny
//! UDP upstream written here) so that the labelled families have samples.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Families the integration tests assert on (the contract with the proxy).
const REQUIRED: &[(&str, &str)] = &[
    ("sipedge_requests_received_total", "counter"),
    ("sipedge_replies_received_total", "counter"),
    ("sipedge_forwarded_total", "counter"),
    ("sipedge_local_replies_total", "counter"),
    ("sipedge_dropped_total", "counter"),
    ("sipedge_parse_failures_total", "counter"),
    ("sipedge_nosip_total", "counter"),
    ("sipedge_tcp_accepted_total", "counter"),
    ("sipedge_tcp_connections", "gauge"),
    ("sipedge_tcp_released_total", "counter"),
    ("sipedge_bytes_received_total", "counter"),
    ("sipedge_bytes_sent_total", "counter"),
    ("sipedge_forward_latency_seconds", "histogram"),
];

/// Strict line-by-line check of the text format; returns the TYPE of each
/// family. Errors list every bad line.
fn check_exposition(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut seen_samples: BTreeSet<String> = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if parse_sample(&format!("{name} 0")).is_err() || !helps.insert(name.to_string()) {
                errors.push(format!("line {n}: bad or duplicate HELP: {line:?}"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ok_type = f.len() == 2
                && ["counter", "gauge", "histogram", "summary", "untyped"].contains(&f[1]);
            if !ok_type || parse_sample(&format!("{} 0", f[0])).is_err() {
                errors.push(format!("line {n}: bad TYPE: {line:?}"));
            } else if types.insert(f[0].to_string(), f[1].to_string()).is_some() {
                errors.push(format!("line {n}: duplicate TYPE for {}", f[0]));
            } else if seen_samples.contains(f[0]) {
                errors.push(format!("line {n}: TYPE after samples of {}", f[0]));
            }
        } else if line.starts_with('#') {
            // other comments are allowed
        } else {
            match parse_sample(line) {
                Err(e) => errors.push(format!("line {n}: {e}")),
                Ok(s) => {
                    if !s.name.starts_with("sipedge_") {
                        errors.push(format!("line {n}: sample not named sipedge_*: {line:?}"));
                    }
                    let family = family_of(&s.name, &types);
                    match types.get(&family).map(String::as_str) {
                        None => errors.push(format!("line {n}: no TYPE for {}", s.name)),
                        Some("counter") if s.value < 0.0 || s.value.is_nan() => {
                            errors.push(format!("line {n}: counter not >= 0: {line:?}"))
                        }
                        _ => {}
                    }
                    seen_samples.insert(family);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(errors)
    }
}

/// `x_bucket` / `x_sum` / `x_count` belong to family `x` when `x` is a
/// histogram or summary.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        if matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        ) {
            return base.to_string();
        }
    }
    name.to_string()
}

/// Buckets non-decreasing in `le`, a `+Inf` bucket equal to `_count`.
fn check_histogram(text: &str, name: &str) -> Result<(), String> {
    let all = samples(text);
    type Labels = Vec<(String, String)>;
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in all.iter().filter(|s| s.name == format!("{name}_bucket")) {
        let le = s
            .labels
            .get("le")
            .and_then(|v| parse_prom_float(v))
            .ok_or_else(|| format!("bucket without a valid le: {s:?}"))?;
        let key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.entry(key).or_default().push((le, s.value));
    }
    if series.is_empty() {
        return Err(format!("{name}: no _bucket samples"));
    }
    for (key, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!(
                "{name}{key:?}: bucket counts decrease: {buckets:?}"
            ));
        }
        let inf = buckets
            .last()
            .filter(|b| b.0.is_infinite())
            .ok_or_else(|| format!("{name}{key:?}: no +Inf bucket"))?
            .1;
        let count = all
            .iter()
            .find(|s| {
                s.name == format!("{name}_count")
                    && s.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<Vec<_>>()
                        == key
            })
            .ok_or_else(|| format!("{name}{key:?}: no _count"))?
            .value;
        if inf != count {
            return Err(format!("{name}{key:?}: +Inf bucket {inf} != count {count}"));
        }
        if !all.iter().any(|s| s.name == format!("{name}_sum")) {
            return Err(format!("{name}: no _sum"));
        }
    }
    Ok(())
}

/// Generate some traffic: one local OPTIONS over UDP and TCP, one OPTIONS
/// forwarded to the echo upstream and answered. Returns the forwarded
/// exchange's result (callers decide whether it must have worked).
fn traffic(proxy: &Proxy, upstream_port: u16) -> Result<String, String> {
    let _ = udp_exchange(proxy.sip_addr(), |local| {
        options_to_proxy(proxy.sip_port, "UDP", local, "m-local-udp")
    });
    let mut s = connect(proxy.sip_addr());
    let local = s.local_addr().expect("local");
    let _ = s.write_all(options_to_proxy(proxy.sip_port, "TCP", local, "m-local-tcp").as_bytes());
    let _ = read_sip_message(&mut s, Duration::from_secs(2));
    let ruri = format!("sip:echo@{LOCALHOST}:{upstream_port}");
    udp_exchange(proxy.sip_addr(), |local| {
        sip_request("OPTIONS", &ruri, "UDP", local, "m-fwd", 70)
    })
}

#[test]
fn metrics_exposition_is_well_formed() {
    let upstream = EchoUpstream::start();
    let proxy = Proxy::start(upstream.port);
    let _ = traffic(&proxy, upstream.port);
    let text = proxy.metrics();
    let types = check_exposition(&text).unwrap_or_else(|errs| {
        panic!(
            "malformed /metrics ({} problems):\n{}\n--- scrape ---\n{text}",
            errs.len(),
            errs.join("\n")
        )
    });
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(name, ty)| types.get(*name).map(String::as_str) != Some(*ty))
        .map(|(name, ty)| format!("{name} ({ty}): found {:?}", types.get(*name)))
        .collect();
    assert!(
        missing.is_empty(),
        "families missing or mistyped:\n{}\n--- scrape ---\n{text}",
        missing.join("\n")
    );
    check_histogram(&text, "sipedge_forward_latency_seconds")
        .unwrap_or_else(|e| panic!("{e}\n--- scrape ---\n{text}"));
}

#[test]
fn promtool_check_metrics_passes() {
    let Some(promtool) = which("promtool") else {
        let msg =
            "promtool not installed (apt-get install prometheus; scripts/test.sh does it as root)";
        if strict() {
            panic!("{msg}, and SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true forbids skipping");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let upstream = EchoUpstream::start();
    let proxy = Proxy::start(upstream.port);
    let _ = traffic(&proxy, upstream.port);
    let text = proxy.metrics();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "promtool check metrics: {}\nstdout:\n{}\nstderr:\n{}\n--- scrape ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    eprintln!("{report}");
}

/// Forwarding over UDP both ways, as the counters see it.
#[test]
fn udp_forwarding_round_trip_is_counted() {
    let upstream = EchoUpstream::start();
    let proxy = Proxy::start(upstream.port);
    let before = proxy.metrics();
    let ruri = format!("sip:echo@{LOCALHOST}:{}", upstream.port);
    let reply = udp_exchange(proxy.sip_addr(), |local| {
        sip_request("OPTIONS", &ruri, "UDP", local, "fwd-1", 70)
    })
    .unwrap_or_else(|e| panic!("forwarded OPTIONS: {e}\n{}", proxy.log_tail()));
    assert_eq!(status_code(&reply), Some(200), "reply:\n{reply}");
    let vias = reply
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("via:") || l.starts_with("v:")
        })
        .count();
    assert_eq!(
        vias, 1,
        "the proxy's Via must be removed from the reply:\n{reply}"
    );
    let after = proxy.metrics();
    let d =
        |q: &str| metric_value(&after, q).unwrap_or(0.0) - metric_value(&before, q).unwrap_or(0.0);
    for q in [
        "sipedge_forwarded_total{kind=\"request\"}",
        "sipedge_forwarded_total{kind=\"reply\"}",
        "sipedge_requests_received_total{method=\"OPTIONS\"}",
        "sipedge_replies_received_total{class=\"2xx\"}",
        "sipedge_forward_latency_seconds_count",
    ] {
        assert!(d(q) >= 1.0, "{q} did not move\n--- scrape ---\n{after}");
    }
    assert!(d("sipedge_bytes_received_total") > 0.0, "{after}");
    assert!(d("sipedge_bytes_sent_total") > 0.0, "{after}");
}

#[test]
fn parser_self_check() {
    let text = "# HELP a_total x\n# TYPE a_total counter\n\
                a_total{reason=\"parse_error\",transport=\"tcp\"} 2\n\
                a_total{reason=\"oversize\"} 1\n# TYPE b gauge\nb 3.5 1700000000\n\
                # TYPE c gauge\nc{v=\"q\\\"x\"} +Inf\n";
    assert_eq!(
        metric_value(text, "a_total{reason=\"parse_error\"}"),
        Some(2.0)
    );
    assert_eq!(metric_value(text, "a_total"), Some(3.0));
    assert_eq!(metric_value(text, "b"), Some(3.5));
    assert_eq!(metric_value(text, "a_total{reason=\"eof\"}"), None);
    assert_eq!(metric_value(text, "c{v=\"q\\\"x\"}"), Some(f64::INFINITY));
    assert!(check_exposition(text).is_err(), "names must be sipedge_*");
    let good = text
        .replace("a_total", "sipedge_a_total")
        .replace("\nb ", "\nsipedge_b ");
    let good = good
        .replace("TYPE b ", "TYPE sipedge_b ")
        .replace("TYPE c ", "TYPE sipedge_c ");
    let good = good.replace("\nc{", "\nsipedge_c{");
    assert_eq!(check_exposition(&good).map(|t| t.len()), Ok(3), "{good}");
    assert!(check_exposition("x_total 1\n").is_err());
    assert!(parse_sample("bad name 1").is_err());
    assert!(parse_sample("x{a=b} 1").is_err());
    let csv = "StartTime;SuccessfulCall(C);FailedCall(C);\n1;0;0;\n2;500;0;\n";
    let m = parse_stat_csv(csv);
    assert_eq!(m.get("SuccessfulCall(C)").map(String::as_str), Some("500"));
    let h = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    assert!(check_histogram(h, "h").is_ok());
    assert!(check_histogram(&h.replace("h_count 2", "h_count 3"), "h").is_err());
}
