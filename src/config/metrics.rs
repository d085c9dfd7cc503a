//! `[metrics]`: the Prometheus endpoint.

use super::{ConfigError, Host, ListenSpec, Transport, invalid, split_host_port};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

pub(super) fn to_raw(listen: Option<SocketAddr>) -> RawMetrics {
    RawMetrics {
        listen: listen.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// `metrics.listen` rules (it must not take a SIP TCP listen address).
pub(super) fn validate(
    metrics_listen: Option<SocketAddr>,
    listen: &[ListenSpec],
) -> Result<(), ConfigError> {
    if let Some(m) = metrics_listen {
        if m.port() == 0 {
            return Err(invalid(
                "metrics.listen",
                m,
                "port must be between 1 and 65535",
            ));
        }
        if let Some(i) = listen
            .iter()
            .position(|l| l.transport == Transport::Tcp && l.addr == m)
        {
            return Err(invalid(
                "metrics.listen",
                m,
                format!("the same address is already a SIP listen address (proxy.listen[{i}])"),
            ));
        }
    }
    Ok(())
}

/// Parse the metrics endpoint address: `IP:PORT`, or `""` / `"off"` to disable it.
pub fn parse_metrics_listen(key: &str, s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match split_host_port(key, s, t, None)? {
        (Host::Ip(ip), port) => Ok(Some(SocketAddr::new(ip, port))),
        (Host::Name(n), _) => Err(invalid(
            key,
            s,
            format!("`{n}` is not an IP address (expected `IP:PORT`, or \"\" to disable)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::err_for;

    #[test]
    fn metrics_listen_parse() {
        err_for("[metrics]\nlisten = \"9090\"\n", "metrics.listen");
        err_for("[metrics]\nlisten = \"localhost:9090\"\n", "metrics.listen");
        err_for("[metrics]\nlisten = \"127.0.0.1:0\"\n", "metrics.listen");
        err_for("[metrics]\nlisten = \"127.0.0.1:5060\"\n", "metrics.listen");
        let c = Config::from_toml("[metrics]\nlisten = \"[::1]:9100\"\n").unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(
            Config::from_toml("[metrics]\nlisten = \"\"\n")
                .unwrap()
                .metrics_listen,
            None
        );
    }
}
