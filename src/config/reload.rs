//! What a reload (SIGHUP) may change: the keys whose new values take effect
//! without a restart, and the comparison of the running configuration with
//! the re-read file that names every changed key.

use super::{Config, ConfigError, to_raw};

/// Config keys a reload applies without a restart. A changed key matches an
/// entry equal to it or below it (`tcp` covers `tcp.max_connections`). Every
/// other changed key is refused (named in the log) and keeps its old value.
/// Keep in step with [`merge_reloadable`] and [`crate::core::live::Live`].
pub const RELOADABLE: &[&str] = &[
    "proxy.upstreams",
    "proxy.selection",
    "upstream_set",
    "proxy.drain_timeout_secs",
    "nosip",
    "log.level",
    "tcp",
];

/// Is the dotted key `key` reloadable ([`RELOADABLE`])?
pub fn is_reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|r| {
        key == *r
            || key
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The keys whose values differ between two configurations, as dotted
/// paths in the file's layout (`proxy.upstreams`, `stack.limits.tx_queue`),
/// sorted.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (toml_value(old), toml_value(new));
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn toml_value(c: &Config) -> toml::Value {
    // Plain strings, integers, booleans and arrays: serialising cannot fail.
    toml::Value::try_from(to_raw(c)).unwrap_or(toml::Value::Table(toml::Table::new()))
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// The outcome of comparing the running configuration with the re-read one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The configuration to run from now on: the old one with every
    /// reloadable key taken from the new one (validated).
    pub config: Config,
    /// Changed keys that take effect now.
    pub applied: Vec<String>,
    /// Changed keys that need a restart: they keep their old values.
    pub refused: Vec<String>,
}

/// Compare `old` (running) with `new` (the re-read file, valid on its own)
/// and build the configuration to run. Errors when the mix of new
/// reloadable keys and old restart-only keys is invalid (e.g. a
/// `transport=udp` upstream while the UDP listen address is refused).
pub fn plan_reload(old: &Config, new: &Config) -> Result<ReloadPlan, ConfigError> {
    let (applied, refused): (Vec<String>, Vec<String>) = changed_keys(old, new)
        .into_iter()
        .partition(|k| is_reloadable(k));
    let config = merge_reloadable(old, new);
    config.validate()?;
    Ok(ReloadPlan {
        config,
        applied,
        refused,
    })
}

/// `old` with the values of every [`RELOADABLE`] key taken from `new`.
pub fn merge_reloadable(old: &Config, new: &Config) -> Config {
    let mut c = old.clone();
    c.upstreams = new.upstreams.clone();
    c.selection = new.selection;
    c.upstream_sets = new.upstream_sets.clone();
    c.drain_timeout_secs = new.drain_timeout_secs;
    c.nosip = new.nosip.clone();
    c.log_level = new.log_level.clone();
    c.tcp = new.tcp.clone();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERYTHING: &str = r#"
[proxy]
listen = ["udp:127.0.0.1:5070"]
upstreams = ["sip:127.0.0.1:5090"]
selection = "call-id-hash"
record_route = false
record_route_methods = ["INVITE"]
workers = 3
drain_timeout_secs = 4
[tcp]
max_connections = 10
idle_lifetime_secs = 7
[nosip]
hook = "match"
pattern = "^x$"
health_path = "/h"
[metrics]
listen = "127.0.0.1:9191"
[log]
level = "debug"
format = "json"
[stack.limits]
tx_queue = 100
"#;

    #[test]
    fn no_change_no_keys() {
        let c = Config::default_config();
        assert!(changed_keys(&c, &c.clone()).is_empty());
        let p = plan_reload(&c, &c).unwrap();
        assert!(p.applied.is_empty() && p.refused.is_empty());
        assert_eq!(p.config, c);
    }

    #[test]
    fn changed_keys_are_named_by_path() {
        let old = Config::default_config();
        let new = Config::from_toml(EVERYTHING).unwrap();
        let keys = changed_keys(&old, &new);
        for k in [
            "proxy.listen",
            "proxy.upstreams",
            "proxy.selection",
            "proxy.workers",
            "proxy.drain_timeout_secs",
            "tcp.max_connections",
            "tcp.idle_lifetime_secs",
            "nosip.hook",
            "nosip.pattern",
            "metrics.listen",
            "log.level",
            "log.format",
            "stack.limits.tx_queue",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        assert!(
            !keys.iter().any(|x| x == "tcp.max_message_size"),
            "{keys:?}"
        );
    }

    #[test]
    fn reloadable_keys_applied_the_rest_refused() {
        let old = Config::default_config();
        let new = Config::from_toml(EVERYTHING).unwrap();
        let p = plan_reload(&old, &new).unwrap();
        assert!(p.applied.iter().all(|k| is_reloadable(k)), "{p:?}");
        assert!(p.refused.iter().all(|k| !is_reloadable(k)), "{p:?}");
        for k in [
            "proxy.listen",
            "proxy.workers",
            "log.format",
            "metrics.listen",
        ] {
            assert!(p.refused.iter().any(|x| x == k), "{k}: {:?}", p.refused);
        }
        // merge_reloadable and RELOADABLE agree: what changed from the old
        // config is exactly the applied keys; what still differs from the
        // new one is exactly the refused keys.
        assert_eq!(changed_keys(&old, &p.config), p.applied);
        assert_eq!(changed_keys(&p.config, &new), p.refused);
        assert_eq!(p.config.upstreams, new.upstreams);
        assert_eq!(p.config.listen, old.listen);
    }

    #[test]
    fn prefix_match_is_by_whole_key() {
        assert!(is_reloadable("tcp"));
        assert!(is_reloadable("tcp.max_connections"));
        assert!(is_reloadable("nosip.pattern"));
        assert!(!is_reloadable("tcpx.a"));
        assert!(!is_reloadable("proxy.upstreams_extra"));
        assert!(!is_reloadable("proxy"));
        assert!(!is_reloadable("log.format"));
    }

    #[test]
    fn mixed_result_is_validated() {
        // new: TCP-only listen with a UDP upstream is valid on its own; the
        // listen change is refused, and the old listen has UDP: fine.
        let old = Config::from_toml("[proxy]\nlisten = [\"tcp:127.0.0.1:5060\"]\n").unwrap();
        let new = Config::from_toml(
            "[proxy]\nlisten = [\"udp:127.0.0.1:5060\"]\nupstreams = [\"sip:127.0.0.1:5080;transport=udp\"]\n",
        )
        .unwrap();
        let e = plan_reload(&old, &new).unwrap_err();
        assert!(e.to_string().contains("proxy.upstreams[0]"), "{e}");
    }
}
