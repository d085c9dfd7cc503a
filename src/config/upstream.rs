//! `[[upstream_set]]`: upstream sets with weights, priorities, an algorithm
//! and health checks (issue #10). Without any, `proxy.upstreams` /
//! `proxy.selection` form one set named `default` with health off.

use super::{
    Config, ConfigError, MAX_TIMEOUT_SECS, Transport, UpstreamSpec, int_i64, invalid, non_negative,
    parse_upstream,
};
use crate::core::upstream::{Algorithm, CodeSet, HealthSpec, SetSpec, TargetSpec};
use serde::{Deserialize, Serialize};

/// Largest `weight`.
pub const MAX_WEIGHT: u32 = 10_000;
/// Smallest non-zero `ping_interval_ms`.
pub const MIN_PING_INTERVAL_MS: u64 = 100;
/// Largest `down_after` / `up_after`.
pub const MAX_THRESHOLD: u32 = 100;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstreamSet {
    name: String,
    algorithm: String,
    ping_interval_ms: i64,
    ping_timeout_ms: i64,
    down_after: i64,
    up_after: i64,
    alive_codes: Vec<String>,
    failure_codes: Vec<String>,
    hold_down_ms: i64,
    target: Vec<RawTarget>,
}

impl Default for RawUpstreamSet {
    fn default() -> Self {
        let h = HealthSpec::default();
        RawUpstreamSet {
            name: String::new(),
            algorithm: Algorithm::RoundRobin.as_str().into(),
            ping_interval_ms: int_i64(h.ping_interval_ms),
            ping_timeout_ms: int_i64(h.ping_timeout_ms),
            down_after: i64::from(h.down_after),
            up_after: i64::from(h.up_after),
            alive_codes: h.alive_codes.items(),
            failure_codes: h.failure_codes.items(),
            hold_down_ms: int_i64(h.hold_down_ms),
            target: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTarget {
    uri: String,
    weight: i64,
    priority: i64,
}

impl Default for RawTarget {
    fn default() -> Self {
        RawTarget {
            uri: String::new(),
            weight: 1,
            priority: 0,
        }
    }
}

fn codes(key: &str, items: &[String]) -> Result<CodeSet, ConfigError> {
    let mut c = CodeSet::default();
    for (i, it) in items.iter().enumerate() {
        c.add_item(it.trim()).ok_or_else(|| {
            invalid(
                &format!("{key}[{i}]"),
                it,
                "must be \"any\", a class like \"5xx\" or a code 100..699",
            )
        })?;
    }
    Ok(c)
}

fn bounded(key: &str, v: i64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    let n = non_negative(key, v)?;
    if n < lo || n > hi {
        return Err(invalid(key, v, format!("must be between {lo} and {hi}")));
    }
    Ok(n)
}

pub(super) fn from_raw(raw: &[RawUpstreamSet]) -> Result<Vec<SetSpec>, ConfigError> {
    let mut sets: Vec<SetSpec> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let key = |k: &str| format!("upstream_set[{i}].{k}");
        let name = r.name.trim().to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                &key("name"),
                &r.name,
                "required: letters, digits, `-`, `_`, `.`",
            ));
        }
        if let Some(j) = sets.iter().position(|s| s.name == name) {
            return Err(invalid(
                &key("name"),
                &r.name,
                format!("duplicate of upstream_set[{j}].name"),
            ));
        }
        let algorithm = Algorithm::parse(r.algorithm.trim()).ok_or_else(|| {
            invalid(
                &key("algorithm"),
                &r.algorithm,
                "must be \"round-robin\", \"call-id-hash\", \"weighted\" or \"priority\"",
            )
        })?;
        let max_ms = MAX_TIMEOUT_SECS * 1000;
        let ping_interval_ms = non_negative(&key("ping_interval_ms"), r.ping_interval_ms)?;
        if ping_interval_ms != 0 && !(MIN_PING_INTERVAL_MS..=max_ms).contains(&ping_interval_ms) {
            return Err(invalid(
                &key("ping_interval_ms"),
                r.ping_interval_ms,
                format!(
                    "must be 0 (no probes, health off) or between {MIN_PING_INTERVAL_MS} and {max_ms}"
                ),
            ));
        }
        let ping_timeout_ms = bounded(&key("ping_timeout_ms"), r.ping_timeout_ms, 1, max_ms)?;
        if ping_interval_ms != 0 && ping_timeout_ms > ping_interval_ms {
            return Err(invalid(
                &key("ping_timeout_ms"),
                r.ping_timeout_ms,
                "must not be longer than ping_interval_ms (one probe in flight per target)",
            ));
        }
        let t = u64::from(MAX_THRESHOLD);
        let health = HealthSpec {
            ping_interval_ms,
            ping_timeout_ms,
            down_after: bounded(&key("down_after"), r.down_after, 1, t)? as u32,
            up_after: bounded(&key("up_after"), r.up_after, 1, t)? as u32,
            alive_codes: codes(&key("alive_codes"), &r.alive_codes)?,
            failure_codes: codes(&key("failure_codes"), &r.failure_codes)?,
            hold_down_ms: bounded(&key("hold_down_ms"), r.hold_down_ms, 0, max_ms)?,
        };
        if r.target.is_empty() {
            return Err(invalid(
                &key("target"),
                "[]",
                "at least one [[upstream_set.target]] is required",
            ));
        }
        let mut targets = Vec::with_capacity(r.target.len());
        for (j, t) in r.target.iter().enumerate() {
            let tk = |k: &str| format!("upstream_set[{i}].target[{j}].{k}");
            let u = parse_upstream(&tk("uri"), &t.uri)?;
            targets.push(TargetSpec {
                uri: u.uri,
                addr: u.addr,
                transport: u.transport,
                weight: bounded(&tk("weight"), t.weight, 1, u64::from(MAX_WEIGHT))? as u32,
                priority: bounded(&tk("priority"), t.priority, 0, u64::from(u32::MAX))? as u32,
            });
        }
        sets.push(SetSpec {
            name,
            algorithm,
            targets,
            health,
        });
    }
    Ok(sets)
}

pub(super) fn to_raw(sets: &[SetSpec]) -> Vec<RawUpstreamSet> {
    sets.iter()
        .map(|s| RawUpstreamSet {
            name: s.name.clone(),
            algorithm: s.algorithm.as_str().into(),
            ping_interval_ms: int_i64(s.health.ping_interval_ms),
            ping_timeout_ms: int_i64(s.health.ping_timeout_ms),
            down_after: i64::from(s.health.down_after),
            up_after: i64::from(s.health.up_after),
            alive_codes: s.health.alive_codes.items(),
            failure_codes: s.health.failure_codes.items(),
            hold_down_ms: int_i64(s.health.hold_down_ms),
            target: s
                .targets
                .iter()
                .map(|t| RawTarget {
                    uri: t.uri.clone(),
                    weight: i64::from(t.weight),
                    priority: i64::from(t.priority),
                })
                .collect(),
        })
        .collect()
}

impl Config {
    /// The upstream sets in force: `[[upstream_set]]`, else `proxy.upstreams`
    /// as one set named `default` (algorithm `proxy.selection`, weight 1,
    /// priority 0, health off).
    pub fn upstream_set_specs(&self) -> Vec<SetSpec> {
        if !self.upstream_sets.is_empty() {
            return self.upstream_sets.clone();
        }
        vec![SetSpec {
            name: "default".into(),
            algorithm: match self.selection {
                super::Selection::RoundRobin => Algorithm::RoundRobin,
                super::Selection::CallIdHash => Algorithm::CallIdHash,
            },
            targets: self
                .upstreams
                .iter()
                .map(|u| TargetSpec {
                    uri: u.uri.clone(),
                    addr: u.addr,
                    transport: u.transport,
                    weight: 1,
                    priority: 0,
                })
                .collect(),
            health: HealthSpec::default(),
        }]
    }

    /// `[[upstream_set]]` rules against `proxy.listen` (as for
    /// `proxy.upstreams`); a target without `transport` is probed over UDP,
    /// so with probes on it needs a UDP listen socket of its family too.
    pub(super) fn validate_upstream_sets(&self) -> Result<(), ConfigError> {
        for (i, s) in self.upstream_sets.iter().enumerate() {
            for (j, t) in s.targets.iter().enumerate() {
                let key = format!("upstream_set[{i}].target[{j}].uri");
                let u = UpstreamSpec {
                    uri: t.uri.clone(),
                    addr: t.addr,
                    transport: t.transport,
                };
                let udp = match t.transport {
                    Some(tr) => tr == Transport::Udp,
                    None => s.health.ping_interval_ms > 0,
                };
                self.check_upstream(&key, &u, udp)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::err_for;
    use crate::core::upstream::Algorithm;

    const SETS: &str = r#"
[[upstream_set]]
name = "core"
algorithm = "priority"
ping_interval_ms = 1000
ping_timeout_ms = 500
down_after = 2
up_after = 3
alive_codes = ["2xx", "404"]
failure_codes = ["503", "6xx"]
hold_down_ms = 30000
[[upstream_set.target]]
uri = "sip:127.0.0.1:5081"
priority = 1
[[upstream_set.target]]
uri = "sip:127.0.0.1:5082;transport=tcp"
weight = 5

[[upstream_set]]
name = "edge"
[[upstream_set.target]]
uri = "sip:127.0.0.1:5083"
"#;

    #[test]
    fn upstream_sets_parse_with_defaults_and_round_trip() {
        let c = Config::from_toml(SETS).unwrap();
        let s = c.upstream_set_specs();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "core");
        assert_eq!(s[0].algorithm, Algorithm::Priority);
        assert_eq!(s[0].health.ping_interval_ms, 1000);
        assert_eq!((s[0].health.down_after, s[0].health.up_after), (2, 3));
        assert!(s[0].health.alive_codes.contains(204) && s[0].health.alive_codes.contains(404));
        assert!(!s[0].health.alive_codes.contains(503));
        assert!(s[0].health.failure_codes.contains(603));
        assert_eq!(s[0].health.hold_down_ms, 30000);
        assert_eq!(s[1].health.hold_down_ms, 0, "default: no hold-down");
        assert_eq!((s[0].targets[0].weight, s[0].targets[0].priority), (1, 1));
        assert_eq!(s[0].targets[1].weight, 5);
        assert_eq!(s[1].algorithm, Algorithm::RoundRobin);
        assert_eq!(s[1].health.ping_interval_ms, 0, "health off by default");
        assert!(s[1].health.failure_codes.contains(503));
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn without_sets_proxy_upstreams_is_the_default_set() {
        let c = Config::default_config();
        let s = c.upstream_set_specs();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "default");
        assert_eq!(s[0].targets[0].uri, "sip:127.0.0.1:5080");
        assert_eq!(s[0].health.ping_interval_ms, 0);
    }

    #[test]
    fn upstream_set_errors_name_the_key() {
        let set = |body: &str| format!("[[upstream_set]]\nname = \"a\"\n{body}\n");
        let tgt = "[[upstream_set.target]]\nuri = \"sip:127.0.0.1:5081\"\n";
        err_for(&set(""), "upstream_set[0].target");
        err_for(&format!("[[upstream_set]]\n{tgt}"), "upstream_set[0].name");
        err_for(&format!("{}{}", set(tgt), set(tgt)), "upstream_set[1].name");
        err_for(
            &set(&format!("algorithm = \"random\"\n{tgt}")),
            "upstream_set[0].algorithm",
        );
        err_for(
            &set(&format!("ping_interval_ms = 50\n{tgt}")),
            "upstream_set[0].ping_interval_ms",
        );
        err_for(
            &set(&format!(
                "ping_interval_ms = 1000\nping_timeout_ms = 2000\n{tgt}"
            )),
            "upstream_set[0].ping_timeout_ms",
        );
        err_for(
            &set(&format!("down_after = 0\n{tgt}")),
            "upstream_set[0].down_after",
        );
        err_for(
            &set(&format!("hold_down_ms = -1\n{tgt}")),
            "upstream_set[0].hold_down_ms",
        );
        err_for(
            &set(&format!("alive_codes = [\"7xx\"]\n{tgt}")),
            "upstream_set[0].alive_codes[0]",
        );
        err_for(
            &set("[[upstream_set.target]]\nuri = \"sip:127.0.0.1:5081\"\nweight = 0\n"),
            "upstream_set[0].target[0].weight",
        );
        err_for(
            &set("[[upstream_set.target]]\nuri = \"127.0.0.1:5081\"\n"),
            "upstream_set[0].target[0].uri",
        );
        err_for(
            &set("[[upstream_set.target]]\nuri = \"sip:127.0.0.1:5060\"\n"),
            "upstream_set[0].target[0].uri",
        );
    }
}
