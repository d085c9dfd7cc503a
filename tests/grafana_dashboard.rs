//! etc/grafana/sipedge.json against what sipedge exports: every metric name
//! the dashboard's PromQL queries (panel targets and template variables) must
//! exist in a live `/metrics` scrape of sipedge in kernel mode — or, for
//! `sipedge_netstack_*`, in the exposition of the netstack exporter
//! (`Metrics::register_netstack`, afpacket mode only, so read in-process as
//! it needs no root). Label names used in matchers and `by (...)` must exist
//! on those series, and literal label values (`method="INVITE"`,
//! `counter=~"InReceives|InDelivers"`) must be values the proxy exports.

mod common;

use common::*;
use sipedge::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn dashboard() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/grafana/sipedge.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// One vector selector: `name{label op "value", ...}`.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression reads.
#[derive(Debug, Default, PartialEq)]
struct Query {
    selectors: Vec<Selector>,
    /// Label names of `by (...)` / `without (...)` / `on (...)` / `ignoring (...)`.
    grouping: Vec<String>,
    functions: Vec<String>,
}

/// Aggregation operators and keywords: identifiers that are not metric names.
const KEYWORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL reader: enough to find selectors, their matchers, grouping
/// labels and function names in the expressions a dashboard uses.
fn parse_promql(expr: &str) -> Result<Query, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut pending_grouping = false;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            let close = (i + 1..c.len())
                .find(|&j| c[j] == ch && c[j - 1] != '\\')
                .ok_or(format!("unterminated string in {expr:?}"))?;
            i = close + 1;
        } else if ch == '[' {
            i = (i..c.len())
                .find(|&j| c[j] == ']')
                .ok_or(format!("unterminated range in {expr:?}"))?
                + 1;
        } else if ch == '(' && pending_grouping {
            let close = (i..c.len())
                .find(|&j| c[j] == ')')
                .ok_or(format!("unterminated grouping in {expr:?}"))?;
            let list: String = c[i + 1..close].iter().collect();
            q.grouping.extend(
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
            pending_grouping = false;
            i = close + 1;
        } else if ch.is_ascii_digit() || (ch == '.' && i + 1 < c.len() && c[i + 1].is_ascii_digit())
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(ch) {
            let s = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            let n = skip_ws(i);
            if ["by", "without", "on", "ignoring"].contains(&word.as_str()) {
                pending_grouping = true;
            } else if KEYWORDS.contains(&word.as_str()) {
            } else if n < c.len() && c[n] == '(' {
                q.functions.push(word);
            } else {
                let mut sel = Selector {
                    name: word,
                    matchers: Vec::new(),
                };
                if n < c.len() && c[n] == '{' {
                    i = parse_matchers(&c, n + 1, &mut sel.matchers)
                        .map_err(|e| format!("{e} in {expr:?}"))?;
                }
                q.selectors.push(sel);
            }
        } else if ch == '{' {
            return Err(format!("selector without a metric name in {expr:?}"));
        } else {
            i += 1;
        }
    }
    Ok(q)
}

/// `label op "value"` pairs up to the closing `}`; the index after it.
fn parse_matchers(
    c: &[char],
    mut i: usize,
    out: &mut Vec<(String, String, String)>,
) -> Result<usize, String> {
    loop {
        while i < c.len() && (c[i].is_whitespace() || c[i] == ',') {
            i += 1;
        }
        match c.get(i) {
            None => return Err("unterminated matchers".into()),
            Some('}') => return Ok(i + 1),
            _ => {}
        }
        let s = i;
        while i < c.len() && is_ident(c[i]) {
            i += 1;
        }
        let label: String = c[s..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let os = i;
        while i < c.len() && matches!(c[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = c[os..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        if label.is_empty() || !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
            return Err(format!(
                "bad matcher near {:?}",
                c[s..i].iter().collect::<String>()
            ));
        }
        if c.get(i) != Some(&'"') {
            return Err("matcher value not quoted".into());
        }
        let close = (i + 1..c.len())
            .find(|&j| c[j] == '"' && c[j - 1] != '\\')
            .ok_or("unterminated matcher value")?;
        out.push((label, op, c[i + 1..close].iter().collect()));
        i = close + 1;
    }
}

/// Every PromQL expression of the dashboard: (where, expr). Template
/// variables' `label_values(metric, label)` become `metric` and a grouping
/// on `label`.
fn expressions(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = d["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner.iter());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    format!("panel {:?}", p["title"].as_str().unwrap_or("?")),
                    e.to_string(),
                ));
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"].as_str().or_else(|| v["query"].as_str());
        if v["type"] == "query"
            && let Some(q) = q
        {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!("variable query {q:?}: only label_values(metric, label)")
                });
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            out.push((
                format!("variable {:?}", v["name"].as_str().unwrap_or("?")),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    out
}

/// Labels Prometheus attaches at scrape time (not exported by sipedge).
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Check one query against `series` (sample name → its label sets).
fn check_query(
    place: &str,
    expr: &str,
    q: &Query,
    live: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    netstack: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    errors: &mut Vec<String>,
) {
    if q.selectors.is_empty() {
        errors.push(format!("{place}: no metric in {expr:?}"));
    }
    let mut labels_in_expr: BTreeSet<String> = BTreeSet::new();
    for sel in &q.selectors {
        let source = if sel.name.starts_with("sipedge_netstack_") {
            netstack
        } else {
            live
        };
        let Some(series) = source.get(&sel.name) else {
            errors.push(format!(
                "{place}: metric {} is not exported (query {expr:?})",
                sel.name
            ));
            continue;
        };
        for s in series {
            labels_in_expr.extend(s.keys().cloned());
        }
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !series.iter().any(|s| s.contains_key(label)) {
                errors.push(format!("{place}: {} has no label {label}", sel.name));
                continue;
            }
            let literal = !value.is_empty()
                && value
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '|');
            let wanted: Vec<&str> = match op.as_str() {
                "=" if literal => vec![value.as_str()],
                "=~" if literal => value.split('|').collect(),
                _ => Vec::new(),
            };
            for w in wanted {
                if !series
                    .iter()
                    .any(|s| s.get(label).map(String::as_str) == Some(w))
                {
                    errors.push(format!(
                        "{place}: no {}{{{label}=\"{w}\"}} series is exported",
                        sel.name
                    ));
                }
            }
        }
    }
    for g in &q.grouping {
        if !TARGET_LABELS.contains(&g.as_str()) && !labels_in_expr.contains(g) {
            errors.push(format!(
                "{place}: grouping label {g} is on none of its metrics ({expr:?})"
            ));
        }
    }
}

/// Sample name → label sets.
fn series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut m: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for s in samples(text) {
        m.entry(s.name).or_default().push(s.labels);
    }
    m
}

#[test]
fn grafana_promql_reader_self_check() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le) (rate(sipedge_forward_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) > 0"#,
    )
    .expect("parse");
    assert_eq!(q.selectors.len(), 1);
    assert_eq!(
        q.selectors[0].name,
        "sipedge_forward_latency_seconds_bucket"
    );
    assert_eq!(
        q.selectors[0].matchers,
        [(
            "instance".to_string(),
            "=~".to_string(),
            "$instance".to_string()
        )]
    );
    assert_eq!(q.grouping, ["le"]);
    assert_eq!(q.functions, ["histogram_quantile", "rate"]);
    let q = parse_promql(r#"-sum(a_total{x="y, z}"}) / b"#).expect("parse");
    let names: Vec<&str> = q.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b"]);
    assert!(parse_promql(r#"{x="y"}"#).is_err());
    assert!(parse_promql(r#"a{x="y"#).is_err());
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"], "sipedge");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );

    // a live scrape in kernel mode
    let proxy = Proxy::start(free_port());
    let live = series(&proxy.metrics());
    // the netstack exporter's families (afpacket mode), read in-process
    let m = Metrics::new();
    m.register_netstack(Arc::new(sipedge::netstack::Counters::new()))
        .expect("register the netstack exporter");
    let netstack: BTreeMap<_, _> = series(&m.encode())
        .into_iter()
        .filter(|(k, _)| k.starts_with("sipedge_netstack_"))
        .collect();
    assert!(
        netstack.contains_key("sipedge_netstack_drops_total"),
        "{netstack:?}"
    );
    assert!(
        !live.contains_key("sipedge_netstack_drops_total"),
        "kernel mode has no netstack"
    );

    let exprs = expressions(&d);
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    let mut errors = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut functions: BTreeSet<String> = BTreeSet::new();
    for (place, expr) in &exprs {
        match parse_promql(expr) {
            Ok(q) => {
                check_query(place, expr, &q, &live, &netstack, &mut errors);
                used.extend(q.selectors.iter().map(|s| s.name.clone()));
                functions.extend(q.functions.iter().cloned());
            }
            Err(e) => errors.push(format!("{place}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "dashboard errors:\n{}",
        errors.join("\n")
    );

    // the panels the dashboard promises
    for want in [
        "sipedge_requests_received_total",
        "sipedge_replies_received_total",
        "sipedge_dropped_total",
        "sipedge_tcp_connections",
        "sipedge_tcp_released_total",
        "sipedge_forward_latency_seconds_bucket",
        "sipedge_netstack_drops_total",
    ] {
        assert!(used.contains(want), "no panel queries {want}");
    }
    assert!(
        functions.contains("histogram_quantile"),
        "latency quantiles"
    );
    eprintln!("dashboard queries {} metrics: {used:?}", used.len());
}

#[test]
fn grafana_dashboard_panels_are_well_formed() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24, "panel {id} wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id} title"
        );
        assert!(
            p["description"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id} description"
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {id} data source variable"
        );
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {id} targets"
        );
    }
}

/// Every expression, with Grafana's variables replaced by values, is valid
/// PromQL for Prometheus itself: written as recording rules and checked
/// with `promtool check rules` (skips when promtool is missing, unless
/// SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true).
#[test]
fn grafana_dashboard_promql_passes_promtool() {
    let Some(promtool) = which("promtool") else {
        let msg =
            "promtool not installed (apt-get install prometheus; scripts/test.sh does it as root)";
        if strict() {
            panic!("{msg}, and SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true forbids skipping");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: sipedge_dashboard\n    rules:\n");
    for (i, (_, expr)) in expressions(&d).iter().enumerate() {
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: '{e}'\n"
        ));
    }
    let dir = unique_temp_dir("grafana");
    let path = dir.join("rules.yml");
    std::fs::write(&path, &rules).expect("write rules");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}\n{}\n{}\n--- rules ---\n{rules}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
