//! Configuration: TOML schema, built-in defaults (identical to
//! `etc/sipedge.toml`), validation with errors naming the key and the reason.
//!
//! One file per section: each holds its raw serde struct (what the file may
//! contain), the validated struct, the conversion both ways, its defaults
//! (written once, on the validated side where there is one) and its tests.
//! This file holds [`Config`], the load / print entry points, the
//! command-line [`Overrides`] and the helpers the sections share.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

mod log;
mod metrics;
mod nosip;
mod proxy;
mod reload;
mod stack;
mod tcp;
mod transaction;
mod upstream;

pub use log::{LogFormat, check_log_level, parse_log_format};
pub use metrics::parse_metrics_listen;
pub use nosip::{NosipConfig, NosipKind};
pub use proxy::{
    DEFAULT_DRAIN_TIMEOUT_SECS, DEFAULT_SIP_PORT, ListenSpec, MAX_WORKERS, ProxyMode, Selection,
    UpstreamSpec, parse_listen, parse_upstream,
};
pub use reload::{RELOADABLE, ReloadPlan, changed_keys, is_reloadable, plan_reload};
pub use stack::{
    MAX_STACK_WORKERS, RxRing, StackLimits, StackMode, StackOverrides, StackSettings, TcpRelease,
};
pub use tcp::{MAX_MESSAGE_SIZE, MIN_MESSAGE_SIZE, TcpLimits};
pub use upstream::{MAX_THRESHOLD, MAX_WEIGHT, MIN_PING_INTERVAL_MS};

/// A config error: which key, which value, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (message names the key).
    #[error("{0}")]
    Toml(String),
    #[error("invalid value for `{key}` ({value:?}): {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// A SIP transport sipedge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// Lower-case form used in config files and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
    /// Upper-case form used in Via (`SIP/2.0/UDP`).
    pub fn via_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// The validated configuration used by the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<ListenSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub selection: Selection,
    /// `[[upstream_set]]`; empty: `upstreams` / `selection` are the one set
    /// ([`Config::upstream_set_specs`]).
    pub upstream_sets: Vec<crate::core::upstream::SetSpec>,
    pub record_route: bool,
    /// Methods that get Record-Route on dialog-creating requests.
    pub record_route_methods: Vec<String>,
    /// Worker threads (and UDP sockets per UDP listen address); 0 = CPUs.
    pub workers: usize,
    /// SIGTERM: seconds existing connections and UDP exchanges may finish
    /// (0 = stop at once).
    pub drain_timeout_secs: u64,
    pub tcp: TcpLimits,
    pub nosip: NosipConfig,
    /// `None` disables the metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `[stack]`: kernel sockets or the embedded userspace stack.
    pub stack: StackSettings,
    /// `proxy.mode`: stateless (default) or stateful.
    pub mode: ProxyMode,
    /// `[transaction]`: timers, cap and failover of the stateful mode.
    pub transaction: crate::core::transaction::TxnConfig,
}

/// Upper bound for every timeout (one year): keeps `Instant + Duration` far
/// from overflowing.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// The whole file: one raw struct per section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    proxy: proxy::RawProxy,
    tcp: tcp::RawTcp,
    nosip: nosip::RawNosip,
    metrics: metrics::RawMetrics,
    log: log::RawLog,
    stack: stack::RawStack,
    transaction: transaction::RawTransaction,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstream_set: Vec<upstream::RawUpstreamSet>,
}

// ---------------------------------------------------------------------------
// Config: load, validate, print.
// ---------------------------------------------------------------------------

/// Command-line overrides applied on top of the file (see [`apply_overrides`]).
/// Empty vectors / `None` leave the file's value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `proxy.listen` entirely when not empty.
    pub listen: Vec<String>,
    /// Replaces `proxy.upstreams` entirely when not empty.
    pub upstreams: Vec<String>,
    /// Replaces `metrics.listen`; `""` or `"off"` disables the endpoint.
    pub metrics: Option<String>,
    /// Replaces `log.level`.
    pub log_level: Option<String>,
    /// Replaces `log.format` (`text` | `json`).
    pub log_format: Option<String>,
    /// Replaces `proxy.drain_timeout_secs`.
    pub drain_timeout_secs: Option<u64>,
    /// `[stack]` keys (`--stack`, `--iface`, `--ipv4`, ...).
    pub stack: StackOverrides,
}

impl Config {
    /// Built-in defaults: exactly what `etc/sipedge.toml` says.
    pub fn default_config() -> Config {
        // The defaults are constants (IP literals, in-range numbers): failing
        // here is a programming error caught by the unit tests.
        from_raw(RawConfig::default()).expect("built-in default configuration is valid")
    }

    /// Read and validate a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parse and validate TOML text. Missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        from_raw(raw)
    }

    /// The effective configuration as TOML (for `check-config`), in the same
    /// layout as `etc/sipedge.toml`; parsing it back yields an equal `Config`.
    pub fn to_toml(&self) -> String {
        let raw = to_raw(self);
        match toml::to_string(&raw) {
            Ok(body) => format!("# sipedge effective configuration\n\n{body}"),
            // Serialising plain strings, integers and booleans cannot fail.
            Err(e) => format!("# cannot serialise the configuration: {e}\n"),
        }
    }

    /// The number of worker threads to start: `proxy.workers`, or the number
    /// of CPUs when it is 0.
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }

    /// Check the rules that span several fields or that a programmatically
    /// built `Config` could break. Called by [`Config::from_toml`] and
    /// [`apply_overrides`]; embedders building a `Config` by hand should call
    /// it too. Errors name the config key (`proxy.listen[1]`, `tcp.max_connections`…).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_proxy()?;
        self.validate_upstream_sets()?;
        self.tcp.validate()?;
        self.nosip.validate()?;
        self.stack.validate(&self.listen)?;
        metrics::validate(self.metrics_listen, &self.listen)?;
        transaction::validate(&self.transaction)?;
        check_log_level("log.level", &self.log_level)?;
        Ok(())
    }
}

/// Apply command-line overrides to a configuration and validate the result.
/// `--listen` / `--upstream` replace the whole list; errors name the flag
/// (`--listen`) for syntax problems and the config key for the rest.
pub fn apply_overrides(mut cfg: Config, o: &Overrides) -> Result<Config, ConfigError> {
    if !o.listen.is_empty() {
        cfg.listen = o
            .listen
            .iter()
            .map(|s| parse_listen("--listen", s))
            .collect::<Result<_, _>>()?;
    }
    if !o.upstreams.is_empty() {
        cfg.upstreams = o
            .upstreams
            .iter()
            .map(|s| parse_upstream("--upstream", s))
            .collect::<Result<_, _>>()?;
    }
    if let Some(m) = &o.metrics {
        cfg.metrics_listen = parse_metrics_listen("--metrics", m)?;
    }
    if let Some(l) = &o.log_level {
        check_log_level("--log-level", l)?;
        cfg.log_level = l.trim().to_string();
    }
    if let Some(f) = &o.log_format {
        cfg.log_format = parse_log_format("--log-format", f)?;
    }
    if let Some(d) = o.drain_timeout_secs {
        if d > MAX_TIMEOUT_SECS {
            return Err(invalid(
                "--drain-timeout",
                d,
                format!("must be between 0 (= stop at once) and {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        cfg.drain_timeout_secs = d;
    }
    o.stack.apply(&mut cfg.stack)?;
    cfg.validate()?;
    Ok(cfg)
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Convert a TOML integer into a non-negative number.
fn non_negative(key: &str, v: i64) -> Result<u64, ConfigError> {
    u64::try_from(v).map_err(|_| invalid(key, v, "must not be negative"))
}

fn non_negative_usize(key: &str, v: i64) -> Result<usize, ConfigError> {
    let n = non_negative(key, v)?;
    usize::try_from(n).map_err(|_| invalid(key, v, "too large"))
}

fn in_range_usize(key: &str, v: i64, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    let n = non_negative_usize(key, v)?;
    if n < lo || n > hi {
        return Err(invalid(key, v, format!("must be between {lo} and {hi}")));
    }
    Ok(n)
}

/// A count or size back into a TOML integer (saturating).
fn size_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A number of seconds back into a TOML integer (saturating).
fn int_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
    let p = proxy::from_raw(raw.proxy)?;
    let cfg = Config {
        listen: p.listen,
        upstreams: p.upstreams,
        selection: p.selection,
        upstream_sets: upstream::from_raw(&raw.upstream_set)?,
        record_route: p.record_route,
        record_route_methods: p.record_route_methods,
        tcp: tcp::from_raw(raw.tcp)?,
        nosip: nosip::from_raw(raw.nosip)?,
        workers: proxy::workers_from_raw(p.workers)?,
        drain_timeout_secs: p.drain_timeout_secs,
        metrics_listen: parse_metrics_listen("metrics.listen", &raw.metrics.listen)?,
        log_level: raw.log.level.trim().to_string(),
        log_format: parse_log_format("log.format", &raw.log.format)?,
        stack: stack::from_raw(&raw.stack)?,
        mode: p.mode,
        transaction: transaction::from_raw(&raw.transaction)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn to_raw(c: &Config) -> RawConfig {
    RawConfig {
        proxy: proxy::to_raw(c),
        upstream_set: upstream::to_raw(&c.upstream_sets),
        tcp: tcp::to_raw(&c.tcp),
        nosip: nosip::to_raw(&c.nosip),
        metrics: metrics::to_raw(c.metrics_listen),
        log: log::to_raw(c),
        stack: stack::to_raw(&c.stack),
        transaction: transaction::to_raw(&c.transaction),
    }
}

/// Parse "A.B.C.D/P" or "X::Y/P".
fn parse_cidr<A: std::str::FromStr>(key: &str, v: &str, max: u8) -> Result<(A, u8), ConfigError> {
    let (a, p) = v
        .split_once('/')
        .ok_or_else(|| invalid(key, v, "must be ADDRESS/PREFIX, e.g. \"198.51.100.7/24\""))?;
    let addr = a
        .trim()
        .parse::<A>()
        .map_err(|_| invalid(key, v, "not an IP address of the right family"))?;
    let prefix = p
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| invalid(key, v, format!("prefix length must be 0..={max}")))?;
    Ok((addr, prefix))
}

// ---------------------------------------------------------------------------
// Address parsing shared by the sections (`proxy.listen`, `proxy.upstreams`,
// `metrics.listen`).
// ---------------------------------------------------------------------------

/// The host part of an address as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// `IP` or `[IPv6]` as written in Via / Record-Route.
fn host_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Split `HOST[:PORT]` (IPv6 in brackets). `default_port = None` makes the
/// port mandatory. Port 0 is rejected.
fn split_host_port(
    key: &str,
    full: &str,
    text: &str,
    default_port: Option<u16>,
) -> Result<(Host, u16), ConfigError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(invalid(key, full, "missing `]` after the IPv6 address"));
        };
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| invalid(key, full, format!("`{inner}` is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(invalid(
                        key,
                        full,
                        format!("unexpected `{after}` after `]`"),
                    ));
                }
            },
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        if text.bytes().filter(|&b| b == b':').count() > 1 {
            return Err(invalid(
                key,
                full,
                "IPv6 addresses must be written in brackets, e.g. `[::1]:5060`",
            ));
        }
        let (h, p) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if h.is_empty() {
            return Err(invalid(key, full, "the host is empty"));
        }
        let host = match h.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => {
                check_hostname(key, full, h)?;
                Host::Name(h.to_string())
            }
        };
        (host, p)
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(invalid(
                    key,
                    full,
                    format!("port `{p}` must be a number between 1 and 65535"),
                ));
            }
            Ok(n) => n,
        },
        None => match default_port {
            Some(d) => d,
            None => return Err(invalid(key, full, "missing `:PORT`")),
        },
    };
    Ok((host, port))
}

/// A DNS name: labels of letters, digits and `-`, not starting or ending
/// with `-`, the last one not all digits (that would be a broken IPv4).
fn check_hostname(key: &str, full: &str, h: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        invalid(
            key,
            full,
            format!("`{h}` is not an IP address or host name: {why}"),
        )
    };
    if h.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    let labels: Vec<&str> = h.split('.').collect();
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err(bad("empty or over-long label"));
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("only letters, digits, `-` and `.` are allowed"));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err(bad("a label starts or ends with `-`"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("not a valid IPv4 address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse `text` and expect an error whose message names `key`.
    pub(super) fn err_for(text: &str, key: &str) -> String {
        match Config::from_toml(text) {
            Ok(c) => panic!("expected an error naming {key}, got {c:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(key), "error `{msg}` does not name `{key}`");
                msg
            }
        }
    }

    pub(super) fn proxy(extra: &str) -> String {
        format!("[proxy]\n{extra}\n")
    }

    #[test]
    fn default_config_equals_etc_file() {
        let file = Config::from_toml(include_str!("../../etc/sipedge.toml")).expect("etc file");
        assert_eq!(Config::default_config(), file);
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default_config());
    }

    #[test]
    fn default_values() {
        let c = Config::default_config();
        assert_eq!(c.listen.len(), 2);
        assert!(
            c.listen
                .iter()
                .all(|l| l.addr.ip().is_loopback() && l.addr.is_ipv4())
        );
        assert_eq!(c.listen[0].transport, Transport::Udp);
        assert_eq!(c.listen[1].transport, Transport::Tcp);
        assert_eq!(c.listen[0].advertise_host, "127.0.0.1");
        assert_eq!(c.listen[0].advertise_port, 5060);
        assert_eq!(c.upstreams[0].addr, "127.0.0.1:5080".parse().unwrap());
        assert_eq!(c.upstreams[0].transport, None);
        assert_eq!(c.selection, Selection::RoundRobin);
        assert!(c.record_route);
        assert_eq!(c.record_route_methods, ["INVITE", "SUBSCRIBE", "REFER"]);
        assert_eq!(c.workers, 0);
        assert!(c.effective_workers() >= 1);
        assert_eq!(c.tcp.max_message_size, 65535);
        assert_eq!(c.tcp.max_connections, 4096);
        assert_eq!(c.tcp.max_connections_per_ip, 1024);
        assert_eq!(c.tcp.write_queue_bytes, 1 << 20);
        assert_eq!(c.tcp.idle_lifetime_secs, 120);
        assert_eq!(c.tcp.message_timeout_secs, 10);
        assert_eq!(c.tcp.first_message_timeout_secs, 5);
        assert!(!c.tcp.accept_no_content_length);
        assert!(c.tcp.crlf_pong);
        assert_eq!(c.tcp.connect_timeout_secs, 5);
        assert_eq!(c.nosip.hook, NosipKind::None);
        assert_eq!(c.nosip.pattern, None);
        assert_eq!(c.nosip.health_path, "/health");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn to_toml_round_trips_defaults() {
        let c = Config::default_config();
        let text = c.to_toml();
        assert!(text.contains("[proxy]") && text.contains("[tcp]") && text.contains("[log]"));
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn to_toml_round_trips_everything() {
        let text = r#"
[proxy]
listen = ["udp:0.0.0.0:5060 advertise 198.51.100.7:5062", "tcp:[::1]:5061", "udp:[::1]:5060",
          "tcp:0.0.0.0:5060 advertise sip.example.com"]
upstreams = ["sip:127.0.0.1:5080;transport=tcp", "sip:[::1]:5070;transport=udp", "sip:127.0.0.2"]
selection = "call-id-hash"
record_route = false
record_route_methods = []
workers = 3
[tcp]
max_message_size = 4096
max_connections = 10
max_connections_per_ip = 2
write_queue_bytes = 8192
idle_lifetime_secs = 7
message_timeout_secs = 3
first_message_timeout_secs = 2
accept_no_content_length = true
crlf_pong = false
connect_timeout_secs = 1
[nosip]
hook = "match"
pattern = "^[\\r\\n\"]*$"
health_path = "/ready"
[metrics]
listen = ""
[log]
level = "warn,sipedge=debug"
format = "json"
"#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.listen[0].advertise_host, "198.51.100.7");
        assert_eq!(c.listen[0].advertise_port, 5062);
        assert_eq!(c.listen[1].advertise_host, "[::1]");
        assert_eq!(c.listen[3].advertise_host, "sip.example.com");
        assert_eq!(c.listen[3].advertise_port, 5060);
        assert_eq!(c.upstreams[0].transport, Some(Transport::Tcp));
        assert_eq!(c.upstreams[1].addr, "[::1]:5070".parse().unwrap());
        assert_eq!(c.nosip.pattern.as_deref(), Some("^[\\r\\n\"]*$"));
        assert_eq!(c.metrics_listen, None);
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let msg = err_for("[proxy]\nlisten = []\nbogus = 1\n", "bogus");
        assert!(msg.contains("line"), "{msg}");
        err_for("[tcp]\nmax_msg_size = 1\n", "max_msg_size");
        err_for("[nonsense]\n", "nonsense");
    }

    #[test]
    fn wrong_type_is_a_toml_error() {
        let e = Config::from_toml("[tcp]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Toml(_)));
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    #[test]
    fn from_file_reports_io_errors() {
        let e = Config::from_file(Path::new("/nonexistent/sipedge.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/sipedge.toml"));
    }

    #[test]
    fn overrides_replace_lists() {
        let o = Overrides {
            listen: vec!["tcp:127.0.0.1:6060".into()],
            upstreams: vec![
                "sip:127.0.0.1:7070;transport=tcp".into(),
                "sip:127.0.0.2".into(),
            ],
            ..Overrides::default()
        };
        let c = apply_overrides(Config::default_config(), &o).unwrap();
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].transport, Transport::Tcp);
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.upstreams[1].addr, "127.0.0.2:5060".parse().unwrap());
    }

    #[test]
    fn overrides_empty_keep_config() {
        let c = apply_overrides(Config::default_config(), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default_config());
    }

    #[test]
    fn overrides_metrics_and_log() {
        let o = Overrides {
            metrics: Some("off".into()),
            log_level: Some("debug".into()),
            log_format: Some("json".into()),
            ..Overrides::default()
        };
        let c = apply_overrides(Config::default_config(), &o).unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.log_format, LogFormat::Json);
        let o = Overrides {
            metrics: Some("127.0.0.1:9999".into()),
            ..Overrides::default()
        };
        let c = apply_overrides(Config::default_config(), &o).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
    }

    #[test]
    fn overrides_bad_values_name_the_flag() {
        let cases = [
            (
                Overrides {
                    listen: vec!["127.0.0.1:5060".into()],
                    ..Default::default()
                },
                "--listen",
            ),
            (
                Overrides {
                    upstreams: vec!["http://x".into()],
                    ..Default::default()
                },
                "--upstream",
            ),
            (
                Overrides {
                    metrics: Some("nope".into()),
                    ..Default::default()
                },
                "--metrics",
            ),
            (
                Overrides {
                    log_level: Some("loud".into()),
                    ..Default::default()
                },
                "--log-level",
            ),
            (
                Overrides {
                    log_format: Some("xml".into()),
                    ..Default::default()
                },
                "--log-format",
            ),
        ];
        for (o, key) in cases {
            let e = apply_overrides(Config::default_config(), &o).unwrap_err();
            assert!(e.to_string().contains(key), "`{e}` does not name {key}");
        }
    }

    #[test]
    fn overrides_are_revalidated() {
        // The new listen list makes the default transport-less upstream fine,
        // but a transport=udp upstream now has no UDP socket to leave from.
        let o = Overrides {
            listen: vec!["tcp:127.0.0.1:5060".into()],
            upstreams: vec!["sip:127.0.0.1:5080;transport=udp".into()],
            ..Default::default()
        };
        let e = apply_overrides(Config::default_config(), &o).unwrap_err();
        assert!(e.to_string().contains("proxy.upstreams[0]"), "{e}");
        let o = Overrides {
            listen: vec!["udp:127.0.0.1:5060".into(), "udp:127.0.0.1:5060".into()],
            ..Default::default()
        };
        assert!(apply_overrides(Config::default_config(), &o).is_err());
    }
}
