//! `[proxy]`: listen addresses, upstreams and how one is picked, Record-Route,
//! worker threads.

use super::{
    Config, ConfigError, Host, Transport, host_string, invalid, non_negative_usize, size_i64,
    split_host_port,
};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// One listening socket: `udp:127.0.0.1:5060`, `tcp:[::1]:5060`, optionally
/// followed by ` advertise HOST:PORT` (required when binding an unspecified
/// address: the proxy must know what to write into Via / Record-Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// host (IPv6 in brackets) and port written into Via sent-by and Record-Route.
    pub advertise_host: String,
    pub advertise_port: u16,
}

/// One upstream: `sip:HOST:PORT[;transport=udp|tcp]`. Without `transport`
/// the request goes out over the transport it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub uri: String,
    pub addr: SocketAddr,
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
/// `proxy.selection`: how an upstream is picked for a request.
pub enum Selection {
    /// Next upstream in turn.
    RoundRobin,
    /// Hash over Call-ID: a dialog sticks to one upstream.
    CallIdHash,
}

const DEFAULT_LISTEN: [&str; 2] = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"];
const DEFAULT_UPSTREAMS: [&str; 1] = ["sip:127.0.0.1:5080"];
const DEFAULT_RECORD_ROUTE_METHODS: [&str; 3] = ["INVITE", "SUBSCRIBE", "REFER"];
/// Port used for an upstream URI without an explicit port (RFC 3261 §19.1.2).
pub const DEFAULT_SIP_PORT: u16 = 5060;
/// Upper bound for `proxy.workers`.
pub const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    listen: Vec<String>,
    upstreams: Vec<String>,
    selection: String,
    record_route: bool,
    record_route_methods: Vec<String>,
    workers: i64,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect(),
            upstreams: DEFAULT_UPSTREAMS.iter().map(|s| s.to_string()).collect(),
            selection: "round-robin".into(),
            record_route: true,
            record_route_methods: DEFAULT_RECORD_ROUTE_METHODS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            workers: 0,
        }
    }
}

/// The validated `[proxy]` keys; [`Config`] holds them as its own fields.
pub(super) struct Proxy {
    pub listen: Vec<ListenSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub selection: Selection,
    pub record_route: bool,
    pub record_route_methods: Vec<String>,
    /// Still the raw number: [`workers_from_raw`] converts it after the
    /// `[tcp]` and `[nosip]` sections, the order errors were always reported in.
    pub workers: i64,
}

pub(super) fn from_raw(p: RawProxy) -> Result<Proxy, ConfigError> {
    let listen = p
        .listen
        .iter()
        .enumerate()
        .map(|(i, s)| parse_listen(&format!("proxy.listen[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let upstreams = p
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, s)| parse_upstream(&format!("proxy.upstreams[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let selection = match p.selection.as_str() {
        "round-robin" => Selection::RoundRobin,
        "call-id-hash" => Selection::CallIdHash,
        other => {
            return Err(invalid(
                "proxy.selection",
                other,
                "must be \"round-robin\" or \"call-id-hash\"",
            ));
        }
    };
    Ok(Proxy {
        listen,
        upstreams,
        selection,
        record_route: p.record_route,
        record_route_methods: p.record_route_methods,
        workers: p.workers,
    })
}

/// `proxy.workers` (see [`Proxy::workers`]).
pub(super) fn workers_from_raw(v: i64) -> Result<usize, ConfigError> {
    non_negative_usize("proxy.workers", v)
}

pub(super) fn to_raw(c: &Config) -> RawProxy {
    RawProxy {
        listen: c.listen.iter().map(|l| l.to_string()).collect(),
        upstreams: c.upstreams.iter().map(|u| u.uri.clone()).collect(),
        selection: match c.selection {
            Selection::RoundRobin => "round-robin",
            Selection::CallIdHash => "call-id-hash",
        }
        .into(),
        record_route: c.record_route,
        record_route_methods: c.record_route_methods.clone(),
        workers: size_i64(c.workers),
    }
}

impl Config {
    /// `[proxy]` rules (they also look at each other: upstreams vs listen).
    pub(super) fn validate_proxy(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid(
                "proxy.listen",
                "[]",
                "at least one listen address is required",
            ));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = format!("proxy.listen[{i}]");
            if l.addr.port() == 0 || l.advertise_port == 0 {
                return Err(invalid(&key, l, "port must be between 1 and 65535"));
            }
            if l.advertise_host.is_empty() {
                return Err(invalid(&key, l, "the advertised host is empty"));
            }
            let adv_ip = l
                .advertise_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok();
            if adv_ip.is_some_and(|ip| ip.is_unspecified()) {
                return Err(invalid(
                    &key,
                    l,
                    "the advertised address is unspecified (0.0.0.0 / ::): add ` advertise HOST:PORT` \
                     with the address peers reach this socket on",
                ));
            }
            if let Some(j) = self.listen[..i]
                .iter()
                .position(|o| o.transport == l.transport && o.addr == l.addr)
            {
                return Err(invalid(&key, l, format!("duplicate of proxy.listen[{j}]")));
            }
        }
        if self.upstreams.is_empty() {
            return Err(invalid(
                "proxy.upstreams",
                "[]",
                "at least one upstream is required",
            ));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("proxy.upstreams[{i}]");
            if u.addr.port() == 0 {
                return Err(invalid(&key, &u.uri, "port must be between 1 and 65535"));
            }
            if u.transport == Some(Transport::Udp) {
                let family_ok = self
                    .listen
                    .iter()
                    .any(|l| l.transport == Transport::Udp && l.addr.is_ipv4() == u.addr.is_ipv4());
                if !family_ok {
                    let fam = if u.addr.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(invalid(
                        &key,
                        &u.uri,
                        format!(
                            "transport=udp needs a UDP listen address of the same family ({fam}) in \
                             proxy.listen: UDP is sent from the UDP listen socket"
                        ),
                    ));
                }
            }
            if let Some(j) = self
                .listen
                .iter()
                .position(|l| l.addr == u.addr && u.transport.is_none_or(|t| t == l.transport))
            {
                return Err(invalid(
                    &key,
                    &u.uri,
                    format!("points at our own listen address proxy.listen[{j}] (forwarding loop)"),
                ));
            }
        }
        for (i, m) in self.record_route_methods.iter().enumerate() {
            check_method(&format!("proxy.record_route_methods[{i}]"), m)?;
        }
        if self.workers > MAX_WORKERS {
            return Err(invalid(
                "proxy.workers",
                self.workers,
                format!("must be between 0 (= number of CPUs) and {MAX_WORKERS}"),
            ));
        }
        Ok(())
    }
}

/// Parse `udp:127.0.0.1:5060` / `tcp:[::1]:5060[ advertise HOST:PORT]`; `key` names the setting for errors.
///
/// The address must be an IP literal with a port. Binding an unspecified
/// address (`0.0.0.0`, `[::]`) requires ` advertise HOST[:PORT]`: the
/// proxy writes the advertised address into Via and Record-Route. Without
/// `advertise` the listen IP and port are advertised (IPv6 as `[::1]`).
pub fn parse_listen(key: &str, s: &str) -> Result<ListenSpec, ConfigError> {
    let mut words = s.split_whitespace();
    let Some(spec) = words.next() else {
        return Err(invalid(
            key,
            s,
            "empty; expected `udp:IP:PORT` or `tcp:IP:PORT`",
        ));
    };
    let (proto, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let transport = if proto.eq_ignore_ascii_case("udp") {
        Transport::Udp
    } else if proto.eq_ignore_ascii_case("tcp") {
        Transport::Tcp
    } else {
        return Err(invalid(
            key,
            s,
            "must start with `udp:` or `tcp:` (e.g. `udp:127.0.0.1:5060`)",
        ));
    };
    let ip = match split_host_port(key, s, rest, None)? {
        (Host::Ip(ip), port) => SocketAddr::new(ip, port),
        (Host::Name(n), _) => {
            return Err(invalid(
                key,
                s,
                format!("`{n}` is not an IP address (listen addresses must be IP literals)"),
            ));
        }
    };
    if ip.ip().is_multicast() {
        return Err(invalid(key, s, "cannot listen on a multicast address"));
    }
    let advertise = match words.next() {
        None => None,
        Some(w) if w.eq_ignore_ascii_case("advertise") => {
            let Some(hp) = words.next() else {
                return Err(invalid(key, s, "`advertise` needs `HOST:PORT`"));
            };
            let (host, port) = split_host_port(key, s, hp, Some(ip.port()))?;
            let host = match host {
                Host::Ip(a) if a.is_unspecified() || a.is_multicast() => {
                    return Err(invalid(
                        key,
                        s,
                        "the advertised address must be a unicast address peers can reach",
                    ));
                }
                Host::Ip(a) => host_string(a),
                Host::Name(n) => n,
            };
            Some((host, port))
        }
        Some(w) => {
            return Err(invalid(
                key,
                s,
                format!("unexpected `{w}`; expected ` advertise HOST:PORT`"),
            ));
        }
    };
    if let Some(w) = words.next() {
        return Err(invalid(key, s, format!("unexpected `{w}` at the end")));
    }
    let (advertise_host, advertise_port) = match advertise {
        Some(a) => a,
        None if ip.ip().is_unspecified() => {
            return Err(invalid(
                key,
                s,
                "listening on an unspecified address (0.0.0.0 / [::]) requires \
                 ` advertise HOST:PORT` (the address written into Via and Record-Route)",
            ));
        }
        None => (host_string(ip.ip()), ip.port()),
    };
    Ok(ListenSpec {
        transport,
        addr: ip,
        advertise_host,
        advertise_port,
    })
}

impl std::fmt::Display for ListenSpec {
    /// The config-file form, `advertise` only when it differs from the listen address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.addr)?;
        if self.advertise_host != host_string(self.addr.ip())
            || self.advertise_port != self.addr.port()
        {
            write!(
                f,
                " advertise {}:{}",
                self.advertise_host, self.advertise_port
            )?;
        }
        Ok(())
    }
}

/// Parse `sip:127.0.0.1:5080[;transport=tcp]`; `key` names the setting for errors.
///
/// The port defaults to 5060. A host name is resolved once, here, with the
/// system resolver (the first address wins). Parameters: `transport=udp|tcp`
/// and `lr`; anything else is rejected.
pub fn parse_upstream(key: &str, s: &str) -> Result<UpstreamSpec, ConfigError> {
    let uri = s.trim();
    let rest = match uri.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("sip:") => &uri[4..],
        _ if uri
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("sips:")) =>
        {
            return Err(invalid(
                key,
                s,
                "`sips:` (TLS) is not supported; use `sip:`",
            ));
        }
        _ => {
            return Err(invalid(
                key,
                s,
                "must be a SIP URI `sip:HOST[:PORT][;transport=udp|tcp]`",
            ));
        }
    };
    let mut parts = rest.split(';');
    let hostport = parts.next().unwrap_or("");
    if hostport.contains('@') {
        return Err(invalid(
            key,
            s,
            "a user part is not allowed; write `sip:HOST:PORT`",
        ));
    }
    let (host, port) = split_host_port(key, s, hostport, Some(DEFAULT_SIP_PORT))?;
    let mut transport = None;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.eq_ignore_ascii_case("transport") {
            if transport.is_some() {
                return Err(invalid(key, s, "`transport` given twice"));
            }
            transport = Some(if value.eq_ignore_ascii_case("udp") {
                Transport::Udp
            } else if value.eq_ignore_ascii_case("tcp") {
                Transport::Tcp
            } else {
                return Err(invalid(
                    key,
                    s,
                    format!("transport `{value}` is not supported (udp or tcp)"),
                ));
            });
        } else if name.eq_ignore_ascii_case("lr") && value.is_empty() {
            // loose-routing flag: harmless, ignored.
        } else {
            return Err(invalid(
                key,
                s,
                format!("unsupported URI parameter `{param}` (only `transport` and `lr`)"),
            ));
        }
    }
    let addr = match host {
        Host::Ip(ip) => SocketAddr::new(ip, port),
        Host::Name(name) => match (name.as_str(), port).to_socket_addrs() {
            Ok(mut it) => match it.next() {
                Some(a) => a,
                None => {
                    return Err(invalid(key, s, format!("`{name}` resolved to no address")));
                }
            },
            Err(e) => return Err(invalid(key, s, format!("cannot resolve `{name}`: {e}"))),
        },
    };
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(invalid(key, s, "the upstream must be a unicast address"));
    }
    Ok(UpstreamSpec {
        uri: uri.to_string(),
        addr,
        transport,
    })
}

/// SIP method names are case-sensitive tokens (RFC 3261 §25.1).
fn check_method(key: &str, m: &str) -> Result<(), ConfigError> {
    if m.is_empty() {
        return Err(invalid(key, m, "empty method name"));
    }
    if !m
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    {
        return Err(invalid(key, m, "not a SIP method token"));
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(invalid(
            key,
            m,
            format!(
                "SIP methods are case-sensitive; did you mean `{}`?",
                m.to_ascii_uppercase()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{err_for, proxy};

    #[test]
    fn listen_requires_transport_prefix() {
        let msg = err_for(
            &proxy(r#"listen = ["udp:127.0.0.1:5060", "sctp:127.0.0.1:5060"]"#),
            "proxy.listen[1]",
        );
        assert!(msg.contains("udp:"), "{msg}");
    }

    #[test]
    fn listen_ipv6_needs_brackets() {
        let msg = err_for(&proxy(r#"listen = ["udp:::1:5060"]"#), "proxy.listen[0]");
        assert!(msg.contains("brackets"), "{msg}");
    }

    #[test]
    fn listen_port_range() {
        err_for(&proxy(r#"listen = ["udp:127.0.0.1:0"]"#), "proxy.listen[0]");
        err_for(
            &proxy(r#"listen = ["udp:127.0.0.1:65536"]"#),
            "proxy.listen[0]",
        );
        let msg = err_for(&proxy(r#"listen = ["udp:127.0.0.1"]"#), "proxy.listen[0]");
        assert!(msg.contains("PORT"), "{msg}");
    }

    #[test]
    fn listen_must_be_ip_literal() {
        err_for(
            &proxy(r#"listen = ["udp:localhost:5060"]"#),
            "proxy.listen[0]",
        );
    }

    #[test]
    fn listen_unspecified_requires_advertise() {
        let msg = err_for(
            &proxy(r#"listen = ["udp:0.0.0.0:5060"]"#),
            "proxy.listen[0]",
        );
        assert!(msg.contains("advertise"), "{msg}");
        err_for(&proxy(r#"listen = ["tcp:[::]:5060"]"#), "proxy.listen[0]");
        err_for(
            &proxy(r#"listen = ["udp:0.0.0.0:5060 advertise 0.0.0.0:5060"]"#),
            "proxy.listen[0]",
        );
        err_for(
            &proxy(r#"listen = ["udp:0.0.0.0:5060 advertise"]"#),
            "proxy.listen[0]",
        );
        err_for(
            &proxy(r#"listen = ["udp:0.0.0.0:5060 publish 1.2.3.4:5060"]"#),
            "proxy.listen[0]",
        );
        err_for(
            &proxy(r#"listen = ["udp:0.0.0.0:5060 advertise 1.2.3.4:5060 x"]"#),
            "proxy.listen[0]",
        );
    }

    #[test]
    fn listen_advertise_forms() {
        let l = parse_listen("k", "udp:[::]:5060 advertise [2001:db8::1]:5070").unwrap();
        assert_eq!(l.advertise_host, "[2001:db8::1]");
        assert_eq!(l.advertise_port, 5070);
        assert_eq!(l.to_string(), "udp:[::]:5060 advertise [2001:db8::1]:5070");
        let l = parse_listen("k", "tcp:[::1]:5060").unwrap();
        assert_eq!(
            (l.advertise_host.as_str(), l.advertise_port),
            ("[::1]", 5060)
        );
        assert_eq!(l.to_string(), "tcp:[::1]:5060");
    }

    #[test]
    fn listen_at_least_one() {
        let msg = err_for(&proxy("listen = []"), "proxy.listen");
        assert!(msg.contains("at least one"), "{msg}");
    }

    #[test]
    fn listen_no_duplicates() {
        let msg = err_for(
            &proxy(
                r#"listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "udp:127.0.0.1:5060"]"#,
            ),
            "proxy.listen[2]",
        );
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn upstream_syntax() {
        err_for(
            &proxy(r#"upstreams = ["127.0.0.1:5080"]"#),
            "proxy.upstreams[0]",
        );
        err_for(
            &proxy(r#"upstreams = ["sips:127.0.0.1"]"#),
            "proxy.upstreams[0]",
        );
        err_for(
            &proxy(r#"upstreams = ["sip:127.0.0.1:0"]"#),
            "proxy.upstreams[0]",
        );
        err_for(
            &proxy(r#"upstreams = ["sip:127.0.0.1;transport=sctp"]"#),
            "proxy.upstreams[0]",
        );
        err_for(
            &proxy(r#"upstreams = ["sip:127.0.0.1;maddr=1.2.3.4"]"#),
            "proxy.upstreams[0]",
        );
        err_for(
            &proxy(r#"upstreams = ["sip:bob@127.0.0.1"]"#),
            "proxy.upstreams[0]",
        );
        err_for(&proxy(r#"upstreams = ["sip:::1"]"#), "proxy.upstreams[0]");
        err_for(
            &proxy(r#"upstreams = ["sip:0.0.0.0"]"#),
            "proxy.upstreams[0]",
        );
    }

    #[test]
    fn upstream_defaults_and_params() {
        let u = parse_upstream("k", "sip:127.0.0.1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(u.transport, None);
        let u = parse_upstream("k", " SIP:[::1]:5070;lr;transport=TCP ").unwrap();
        assert_eq!(u.addr, "[::1]:5070".parse().unwrap());
        assert_eq!(u.transport, Some(Transport::Tcp));
        assert_eq!(u.uri, "SIP:[::1]:5070;lr;transport=TCP");
    }

    #[test]
    fn upstream_hostname_resolution() {
        let u = parse_upstream("k", "sip:localhost:5080").unwrap();
        assert!(u.addr.ip().is_loopback());
        assert_eq!(u.addr.port(), 5080);
        // `.invalid` never resolves (RFC 6761).
        let msg = err_for(
            &proxy(r#"upstreams = ["sip:no-such-host.invalid"]"#),
            "proxy.upstreams[0]",
        );
        assert!(msg.contains("resolve"), "{msg}");
    }

    #[test]
    fn upstream_at_least_one() {
        err_for(&proxy("upstreams = []"), "proxy.upstreams");
    }

    #[test]
    fn upstream_tcp_without_tcp_listen_is_fine() {
        let c = Config::from_toml(&proxy(
            "listen = [\"udp:127.0.0.1:5060\"]\nupstreams = [\"sip:127.0.0.1:5080;transport=tcp\"]",
        ))
        .unwrap();
        assert_eq!(c.upstreams[0].transport, Some(Transport::Tcp));
    }

    #[test]
    fn upstream_udp_needs_udp_listen() {
        let msg = err_for(
            &proxy(
                "listen = [\"tcp:127.0.0.1:5060\"]\nupstreams = [\"sip:127.0.0.1:5080;transport=udp\"]",
            ),
            "proxy.upstreams[0]",
        );
        assert!(msg.contains("UDP listen"), "{msg}");
        // Same family required: an IPv6 upstream cannot be reached from an IPv4 socket.
        err_for(
            &proxy(
                "listen = [\"udp:127.0.0.1:5060\"]\nupstreams = [\"sip:[::1]:5080;transport=udp\"]",
            ),
            "proxy.upstreams[0]",
        );
    }

    #[test]
    fn upstream_must_not_be_ourselves() {
        let msg = err_for(
            &proxy(r#"upstreams = ["sip:127.0.0.1:5060"]"#),
            "proxy.upstreams[0]",
        );
        assert!(msg.contains("loop"), "{msg}");
    }

    #[test]
    fn selection_values() {
        let c = Config::from_toml(&proxy("selection = \"call-id-hash\"")).unwrap();
        assert_eq!(c.selection, Selection::CallIdHash);
        err_for(&proxy("selection = \"random\""), "proxy.selection");
    }

    #[test]
    fn record_route_methods_are_tokens() {
        err_for(
            &proxy(r#"record_route_methods = ["INVITE", "BAD METHOD"]"#),
            "proxy.record_route_methods[1]",
        );
        let msg = err_for(
            &proxy(r#"record_route_methods = ["invite"]"#),
            "proxy.record_route_methods[0]",
        );
        assert!(msg.contains("INVITE"), "{msg}");
        err_for(
            &proxy(r#"record_route_methods = [""]"#),
            "proxy.record_route_methods[0]",
        );
    }

    #[test]
    fn workers_range() {
        err_for(&proxy("workers = -1"), "proxy.workers");
        err_for(&proxy("workers = 100000"), "proxy.workers");
        assert_eq!(
            Config::from_toml(&proxy("workers = 4"))
                .unwrap()
                .effective_workers(),
            4
        );
    }
}
