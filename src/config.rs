//! Configuration: TOML schema, built-in defaults (identical to
//! `etc/sipedge.toml`), validation with errors naming the key and the reason.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// `log.format`.
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
/// `nosip.hook`: the built-in nosip hook.
pub enum NosipKind {
    None,
    Match,
    HttpHealth,
}

/// The validated configuration used by the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<ListenSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub selection: Selection,
    pub record_route: bool,
    /// Methods that get Record-Route on dialog-creating requests.
    pub record_route_methods: Vec<String>,
    /// Worker threads (and UDP sockets per UDP listen address); 0 = CPUs.
    pub workers: usize,
    pub tcp: TcpLimits,
    pub nosip: NosipConfig,
    /// `None` disables the metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `[stack]`: kernel sockets or the embedded userspace stack.
    pub stack: StackSettings,
}

/// Which lower layer carries SIP (`stack.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackMode {
    /// tokio + socket2 kernel sockets (the default).
    Kernel,
    /// The embedded IPv4/IPv6/ICMP/UDP stack over an AF_PACKET socket.
    Afpacket,
}

/// `[stack]`: the lower layer. The keys other than `mode` are used in
/// `afpacket` mode only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSettings {
    pub mode: StackMode,
    /// Interface the AF_PACKET socket binds to.
    pub interface: String,
    /// The stack's MAC; `None` = the interface's.
    pub mac: Option<[u8; 6]>,
    /// The stack's IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The stack's IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// IP MTU; 0 = the interface's.
    pub mtu: usize,
    pub limits: StackLimits,
}

/// `[stack.limits]`: caps of the embedded stack's tables and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLimits {
    pub neigh_entries: usize,
    pub neigh_pending_bytes: usize,
    pub frag_mem_bytes: usize,
    pub frag4_timeout_secs: u64,
    pub frag6_timeout_secs: u64,
    pub icmp_msgs_per_sec: u32,
    pub icmp_msgs_burst: u32,
    pub icmp_ratelimit_ms: u32,
    pub udp_rx_queue: usize,
    pub tx_queue: usize,
}

impl StackSettings {
    /// The embedded stack's limits from `[stack.limits]`.
    pub fn netstack_limits(&self) -> crate::netstack::Limits {
        use crate::netstack::Duration;
        let l = &self.limits;
        crate::netstack::Limits {
            neigh_entries: l.neigh_entries,
            neigh_pending_bytes: l.neigh_pending_bytes,
            frag4_mem: l.frag_mem_bytes,
            frag6_mem: l.frag_mem_bytes,
            frag4_timeout: Duration::from_secs(l.frag4_timeout_secs),
            frag6_timeout: Duration::from_secs(l.frag6_timeout_secs),
            icmp_msgs_per_sec: l.icmp_msgs_per_sec,
            icmp_msgs_burst: l.icmp_msgs_burst,
            icmp_ratelimit_ms: l.icmp_ratelimit_ms,
            udp_rx_queue: l.udp_rx_queue,
            tx_queue: l.tx_queue,
            ..crate::netstack::Limits::default()
        }
    }

    /// The embedded stack's configuration, given the interface's MAC and
    /// MTU (used when `mac` / `mtu` are not set).
    pub fn netstack_config(
        &self,
        iface_mac: [u8; 6],
        iface_mtu: usize,
    ) -> crate::netstack::StackConfig {
        use crate::netstack::{EthernetAddress, Ipv4Cidr, Ipv6Cidr, StackConfig};
        let mut c = StackConfig::new(EthernetAddress(self.mac.unwrap_or(iface_mac)));
        c.ipv4 = self.ipv4.map(|(a, p)| Ipv4Cidr::new(a, p));
        c.ipv6 = self.ipv6.map(|(a, p)| Ipv6Cidr::new(a, p));
        c.gateway4 = self.gateway4;
        c.gateway6 = self.gateway6;
        c.mtu = if self.mtu == 0 { iface_mtu } else { self.mtu };
        c.limits = self.netstack_limits();
        c
    }

    /// Is `ip` one of the stack's addresses?
    pub fn owns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.is_some_and(|(x, _)| x == a),
            IpAddr::V6(a) => self.ipv6.is_some_and(|(x, _)| x == a),
        }
    }
}

/// `[tcp]`: limits and timers of the TCP transport (SPEC A.2, A.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_message_size: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub write_queue_bytes: usize,
    pub idle_lifetime_secs: u64,
    pub message_timeout_secs: u64,
    pub first_message_timeout_secs: u64,
    pub accept_no_content_length: bool,
    pub crlf_pong: bool,
    pub connect_timeout_secs: u64,
}

/// `[nosip]`: the built-in nosip hook (SPEC A.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NosipConfig {
    pub hook: NosipKind,
    /// `match`: regular expression (bytes) the non-SIP data must match to be consumed.
    pub pattern: Option<String>,
    /// `http-health`: the path answered with 200.
    pub health_path: String,
}

// ---------------------------------------------------------------------------
// Defaults (must stay identical to `etc/sipedge.toml`; a test checks it).
// ---------------------------------------------------------------------------

const DEFAULT_LISTEN: [&str; 2] = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"];
const DEFAULT_UPSTREAMS: [&str; 1] = ["sip:127.0.0.1:5080"];
const DEFAULT_RECORD_ROUTE_METHODS: [&str; 3] = ["INVITE", "SUBSCRIBE", "REFER"];
/// Port used for an upstream URI without an explicit port (RFC 3261 §19.1.2).
pub const DEFAULT_SIP_PORT: u16 = 5060;

/// Smallest accepted `tcp.max_message_size`.
pub const MIN_MESSAGE_SIZE: usize = 256;
/// Largest accepted `tcp.max_message_size` (16 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Upper bound for every timeout (one year): keeps `Instant + Duration` far
/// from overflowing.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// Upper bound for `proxy.workers`.
pub const MAX_WORKERS: usize = 1024;
/// Size limit of the compiled `nosip.pattern` (same as the `match` hook uses).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Raw serde schema: what the file may contain, nothing more.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    proxy: RawProxy,
    tcp: RawTcp,
    nosip: RawNosip,
    metrics: RawMetrics,
    log: RawLog,
    stack: RawStack,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawStack {
    mode: String,
    interface: String,
    mac: String,
    ipv4: String,
    ipv6: String,
    gateway4: String,
    gateway6: String,
    mtu: i64,
    limits: RawStackLimits,
}

impl Default for RawStack {
    fn default() -> Self {
        RawStack {
            mode: "kernel".into(),
            interface: String::new(),
            mac: String::new(),
            ipv4: String::new(),
            ipv6: String::new(),
            gateway4: String::new(),
            gateway6: String::new(),
            mtu: 0,
            limits: RawStackLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawStackLimits {
    neigh_entries: i64,
    neigh_pending_bytes: i64,
    frag_mem_bytes: i64,
    frag4_timeout_secs: i64,
    frag6_timeout_secs: i64,
    icmp_msgs_per_sec: i64,
    icmp_msgs_burst: i64,
    icmp_ratelimit_ms: i64,
    udp_rx_queue: i64,
    tx_queue: i64,
}

impl Default for RawStackLimits {
    fn default() -> Self {
        RawStackLimits {
            neigh_entries: 1024,
            neigh_pending_bytes: 212_992,
            frag_mem_bytes: 4 * 1024 * 1024,
            frag4_timeout_secs: 30,
            frag6_timeout_secs: 60,
            icmp_msgs_per_sec: 1000,
            icmp_msgs_burst: 50,
            icmp_ratelimit_ms: 1000,
            udp_rx_queue: 4096,
            tx_queue: 8192,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawTcp {
    max_message_size: i64,
    max_connections: i64,
    max_connections_per_ip: i64,
    write_queue_bytes: i64,
    idle_lifetime_secs: i64,
    message_timeout_secs: i64,
    first_message_timeout_secs: i64,
    accept_no_content_length: bool,
    crlf_pong: bool,
    connect_timeout_secs: i64,
}

impl Default for RawTcp {
    fn default() -> Self {
        RawTcp {
            max_message_size: 65535,
            max_connections: 4096,
            max_connections_per_ip: 1024,
            write_queue_bytes: 1024 * 1024,
            idle_lifetime_secs: 120,
            message_timeout_secs: 10,
            first_message_timeout_secs: 5,
            accept_no_content_length: false,
            crlf_pong: true,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawNosip {
    hook: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    health_path: String,
}

impl Default for RawNosip {
    fn default() -> Self {
        RawNosip {
            hook: "none".into(),
            pattern: None,
            health_path: "/health".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "text".into(),
        }
    }
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
        self.validate_tcp()?;
        self.validate_nosip()?;
        self.validate_stack()?;
        if let Some(m) = self.metrics_listen {
            if m.port() == 0 {
                return Err(invalid(
                    "metrics.listen",
                    m,
                    "port must be between 1 and 65535",
                ));
            }
            if let Some(i) = self
                .listen
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
        check_log_level("log.level", &self.log_level)?;
        Ok(())
    }

    /// `[stack]` rules that span keys; afpacket mode only.
    fn validate_stack(&self) -> Result<(), ConfigError> {
        let s = &self.stack;
        if s.mode != StackMode::Afpacket {
            return Ok(());
        }
        if s.interface.is_empty() {
            return Err(invalid(
                "stack.interface",
                "",
                "required when stack.mode = \"afpacket\"",
            ));
        }
        if s.interface.len() > 15 || s.interface.contains(['/', ' ', '\0']) {
            return Err(invalid(
                "stack.interface",
                &s.interface,
                "not a valid interface name",
            ));
        }
        if s.ipv4.is_none() && s.ipv6.is_none() {
            return Err(invalid(
                "stack.ipv4",
                "",
                "stack.mode = \"afpacket\" needs stack.ipv4 and/or stack.ipv6",
            ));
        }
        if let Some((a, p)) = s.ipv4
            && (a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        {
            return Err(invalid(
                "stack.ipv4",
                format!("{a}/{p}"),
                "must be a unicast host address",
            ));
        }
        if let Some((a, p)) = s.ipv6
            && (a.is_unspecified() || a.is_multicast() || a.is_loopback())
        {
            return Err(invalid(
                "stack.ipv6",
                format!("{a}/{p}"),
                "must be a unicast host address",
            ));
        }
        if let Some(g) = s.gateway4 {
            let on_link = s
                .ipv4
                .is_some_and(|(a, p)| crate::netstack::Ipv4Cidr::new(a, p).contains_addr(&g));
            if !on_link {
                return Err(invalid(
                    "stack.gateway4",
                    g,
                    "must be inside the stack.ipv4 prefix",
                ));
            }
        }
        if let Some(g) = s.gateway6 {
            let on_link = g.is_unicast_link_local()
                || s.ipv6
                    .is_some_and(|(a, p)| crate::netstack::Ipv6Cidr::new(a, p).contains_addr(&g));
            if !on_link {
                return Err(invalid(
                    "stack.gateway6",
                    g,
                    "must be link-local or inside the stack.ipv6 prefix",
                ));
            }
        }
        if s.ipv6.is_some() && s.mtu != 0 && s.mtu < 1280 {
            return Err(invalid(
                "stack.mtu",
                s.mtu,
                "IPv6 needs an MTU of at least 1280",
            ));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = format!("proxy.listen[{i}]");
            if l.transport == Transport::Tcp {
                return Err(invalid(
                    &key,
                    l,
                    "TCP over the userspace stack is not available yet: use udp: listen \
                     addresses with stack.mode = \"afpacket\", or stack.mode = \"kernel\"",
                ));
            }
            let ip = l.addr.ip();
            let family_ok = if ip.is_ipv4() {
                s.ipv4.is_some()
            } else {
                s.ipv6.is_some()
            };
            if !(s.owns(ip) || (ip.is_unspecified() && family_ok)) {
                return Err(invalid(
                    &key,
                    l,
                    "in afpacket mode a listen address must be stack.ipv4 / stack.ipv6 \
                     (or 0.0.0.0 / [::] of a configured family)",
                ));
            }
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), ConfigError> {
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

    fn validate_tcp(&self) -> Result<(), ConfigError> {
        let t = &self.tcp;
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&t.max_message_size) {
            return Err(invalid(
                "tcp.max_message_size",
                t.max_message_size,
                format!("must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE} bytes"),
            ));
        }
        if t.max_connections < 1 {
            return Err(invalid(
                "tcp.max_connections",
                t.max_connections,
                "must be at least 1",
            ));
        }
        if t.max_connections_per_ip < 1 {
            return Err(invalid(
                "tcp.max_connections_per_ip",
                t.max_connections_per_ip,
                "must be at least 1",
            ));
        }
        if t.write_queue_bytes < t.max_message_size {
            return Err(invalid(
                "tcp.write_queue_bytes",
                t.write_queue_bytes,
                format!(
                    "must be at least tcp.max_message_size ({}) so one message fits",
                    t.max_message_size
                ),
            ));
        }
        for (key, v) in [
            ("tcp.idle_lifetime_secs", t.idle_lifetime_secs),
            ("tcp.message_timeout_secs", t.message_timeout_secs),
            (
                "tcp.first_message_timeout_secs",
                t.first_message_timeout_secs,
            ),
            ("tcp.connect_timeout_secs", t.connect_timeout_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&v) {
                return Err(invalid(
                    key,
                    v,
                    format!("must be between 1 and {MAX_TIMEOUT_SECS} seconds"),
                ));
            }
        }
        Ok(())
    }

    fn validate_nosip(&self) -> Result<(), ConfigError> {
        let n = &self.nosip;
        match (&n.pattern, n.hook) {
            (None, NosipKind::Match) => {
                return Err(invalid(
                    "nosip.pattern",
                    "",
                    "required when nosip.hook = \"match\" (a regular expression over the bytes)",
                ));
            }
            (Some(p), _) => {
                if let Err(e) = regex::bytes::RegexBuilder::new(p)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    return Err(invalid(
                        "nosip.pattern",
                        p,
                        format!("not a valid regular expression: {e}"),
                    ));
                }
            }
            (None, _) => {}
        }
        if !n.health_path.starts_with('/') {
            return Err(invalid(
                "nosip.health_path",
                &n.health_path,
                "must start with `/`",
            ));
        }
        if n.health_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid(
                "nosip.health_path",
                &n.health_path,
                "must not contain spaces or control characters",
            ));
        }
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

fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
    let p = raw.proxy;
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
    let t = raw.tcp;
    let tcp = TcpLimits {
        max_message_size: non_negative_usize("tcp.max_message_size", t.max_message_size)?,
        max_connections: non_negative_usize("tcp.max_connections", t.max_connections)?,
        max_connections_per_ip: non_negative_usize(
            "tcp.max_connections_per_ip",
            t.max_connections_per_ip,
        )?,
        write_queue_bytes: non_negative_usize("tcp.write_queue_bytes", t.write_queue_bytes)?,
        idle_lifetime_secs: non_negative("tcp.idle_lifetime_secs", t.idle_lifetime_secs)?,
        message_timeout_secs: non_negative("tcp.message_timeout_secs", t.message_timeout_secs)?,
        first_message_timeout_secs: non_negative(
            "tcp.first_message_timeout_secs",
            t.first_message_timeout_secs,
        )?,
        accept_no_content_length: t.accept_no_content_length,
        crlf_pong: t.crlf_pong,
        connect_timeout_secs: non_negative("tcp.connect_timeout_secs", t.connect_timeout_secs)?,
    };
    let hook = match raw.nosip.hook.as_str() {
        "none" => NosipKind::None,
        "match" => NosipKind::Match,
        "http-health" => NosipKind::HttpHealth,
        other => {
            return Err(invalid(
                "nosip.hook",
                other,
                "must be \"none\", \"match\" or \"http-health\"",
            ));
        }
    };
    let cfg = Config {
        listen,
        upstreams,
        selection,
        record_route: p.record_route,
        record_route_methods: p.record_route_methods,
        workers: non_negative_usize("proxy.workers", p.workers)?,
        tcp,
        nosip: NosipConfig {
            hook,
            pattern: raw.nosip.pattern,
            health_path: raw.nosip.health_path,
        },
        metrics_listen: parse_metrics_listen("metrics.listen", &raw.metrics.listen)?,
        log_level: raw.log.level.trim().to_string(),
        log_format: parse_log_format("log.format", &raw.log.format)?,
        stack: parse_stack(&raw.stack)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn to_raw(c: &Config) -> RawConfig {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let size = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    RawConfig {
        proxy: RawProxy {
            listen: c.listen.iter().map(|l| l.to_string()).collect(),
            upstreams: c.upstreams.iter().map(|u| u.uri.clone()).collect(),
            selection: match c.selection {
                Selection::RoundRobin => "round-robin",
                Selection::CallIdHash => "call-id-hash",
            }
            .into(),
            record_route: c.record_route,
            record_route_methods: c.record_route_methods.clone(),
            workers: size(c.workers),
        },
        tcp: RawTcp {
            max_message_size: size(c.tcp.max_message_size),
            max_connections: size(c.tcp.max_connections),
            max_connections_per_ip: size(c.tcp.max_connections_per_ip),
            write_queue_bytes: size(c.tcp.write_queue_bytes),
            idle_lifetime_secs: int(c.tcp.idle_lifetime_secs),
            message_timeout_secs: int(c.tcp.message_timeout_secs),
            first_message_timeout_secs: int(c.tcp.first_message_timeout_secs),
            accept_no_content_length: c.tcp.accept_no_content_length,
            crlf_pong: c.tcp.crlf_pong,
            connect_timeout_secs: int(c.tcp.connect_timeout_secs),
        },
        nosip: RawNosip {
            hook: match c.nosip.hook {
                NosipKind::None => "none",
                NosipKind::Match => "match",
                NosipKind::HttpHealth => "http-health",
            }
            .into(),
            pattern: c.nosip.pattern.clone(),
            health_path: c.nosip.health_path.clone(),
        },
        metrics: RawMetrics {
            listen: c.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
        },
        log: RawLog {
            level: c.log_level.clone(),
            format: match c.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        },
        stack: stack_to_raw(&c.stack),
    }
}

fn stack_to_raw(s: &StackSettings) -> RawStack {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let size = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let opt = |v: Option<String>| v.unwrap_or_default();
    let l = &s.limits;
    RawStack {
        mode: match s.mode {
            StackMode::Kernel => "kernel",
            StackMode::Afpacket => "afpacket",
        }
        .into(),
        interface: s.interface.clone(),
        mac: opt(s.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })),
        ipv4: opt(s.ipv4.map(|(a, p)| format!("{a}/{p}"))),
        ipv6: opt(s.ipv6.map(|(a, p)| format!("{a}/{p}"))),
        gateway4: opt(s.gateway4.map(|a| a.to_string())),
        gateway6: opt(s.gateway6.map(|a| a.to_string())),
        mtu: size(s.mtu),
        limits: RawStackLimits {
            neigh_entries: size(l.neigh_entries),
            neigh_pending_bytes: size(l.neigh_pending_bytes),
            frag_mem_bytes: size(l.frag_mem_bytes),
            frag4_timeout_secs: int(l.frag4_timeout_secs),
            frag6_timeout_secs: int(l.frag6_timeout_secs),
            icmp_msgs_per_sec: i64::from(l.icmp_msgs_per_sec),
            icmp_msgs_burst: i64::from(l.icmp_msgs_burst),
            icmp_ratelimit_ms: i64::from(l.icmp_ratelimit_ms),
            udp_rx_queue: size(l.udp_rx_queue),
            tx_queue: size(l.tx_queue),
        },
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

fn in_range_usize(key: &str, v: i64, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    let n = non_negative_usize(key, v)?;
    if n < lo || n > hi {
        return Err(invalid(key, v, format!("must be between {lo} and {hi}")));
    }
    Ok(n)
}

fn parse_stack(r: &RawStack) -> Result<StackSettings, ConfigError> {
    let mode = match r.mode.as_str() {
        "kernel" => StackMode::Kernel,
        "afpacket" => StackMode::Afpacket,
        other => {
            return Err(invalid(
                "stack.mode",
                other,
                "must be \"kernel\" or \"afpacket\"",
            ));
        }
    };
    let mac = match r.mac.trim() {
        "" => None,
        m => {
            let parts: Vec<u8> = m
                .split(':')
                .map(|x| u8::from_str_radix(x, 16))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    invalid(
                        "stack.mac",
                        m,
                        "must be six hex bytes, e.g. 02:00:5e:00:00:01",
                    )
                })?;
            let mac: [u8; 6] = parts.try_into().map_err(|_| {
                invalid(
                    "stack.mac",
                    m,
                    "must be six hex bytes, e.g. 02:00:5e:00:00:01",
                )
            })?;
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(invalid("stack.mac", m, "must be a unicast address"));
            }
            Some(mac)
        }
    };
    let ipv4 = match r.ipv4.trim() {
        "" => None,
        v => Some(parse_cidr::<Ipv4Addr>("stack.ipv4", v, 32)?),
    };
    let ipv6 = match r.ipv6.trim() {
        "" => None,
        v => Some(parse_cidr::<Ipv6Addr>("stack.ipv6", v, 128)?),
    };
    let gateway4 = match r.gateway4.trim() {
        "" => None,
        v => Some(
            v.parse::<Ipv4Addr>()
                .map_err(|_| invalid("stack.gateway4", v, "not an IPv4 address"))?,
        ),
    };
    let gateway6 = match r.gateway6.trim() {
        "" => None,
        v => Some(
            v.parse::<Ipv6Addr>()
                .map_err(|_| invalid("stack.gateway6", v, "not an IPv6 address"))?,
        ),
    };
    let mtu = match non_negative_usize("stack.mtu", r.mtu)? {
        0 => 0,
        m if (576..=65535).contains(&m) => m,
        _ => {
            return Err(invalid(
                "stack.mtu",
                r.mtu,
                "must be 0 (the interface's) or 576..=65535",
            ));
        }
    };
    let l = &r.limits;
    let limits = StackLimits {
        neigh_entries: in_range_usize("stack.limits.neigh_entries", l.neigh_entries, 1, 1 << 20)?,
        neigh_pending_bytes: in_range_usize(
            "stack.limits.neigh_pending_bytes",
            l.neigh_pending_bytes,
            1514,
            1 << 30,
        )?,
        frag_mem_bytes: in_range_usize(
            "stack.limits.frag_mem_bytes",
            l.frag_mem_bytes,
            65536 + 4096,
            1 << 30,
        )?,
        frag4_timeout_secs: in_range_usize(
            "stack.limits.frag4_timeout_secs",
            l.frag4_timeout_secs,
            1,
            3600,
        )? as u64,
        frag6_timeout_secs: in_range_usize(
            "stack.limits.frag6_timeout_secs",
            l.frag6_timeout_secs,
            1,
            3600,
        )? as u64,
        icmp_msgs_per_sec: in_range_usize(
            "stack.limits.icmp_msgs_per_sec",
            l.icmp_msgs_per_sec,
            0,
            1_000_000,
        )? as u32,
        icmp_msgs_burst: in_range_usize(
            "stack.limits.icmp_msgs_burst",
            l.icmp_msgs_burst,
            0,
            1_000_000,
        )? as u32,
        icmp_ratelimit_ms: in_range_usize(
            "stack.limits.icmp_ratelimit_ms",
            l.icmp_ratelimit_ms,
            0,
            3_600_000,
        )? as u32,
        udp_rx_queue: in_range_usize("stack.limits.udp_rx_queue", l.udp_rx_queue, 1, 1 << 20)?,
        tx_queue: in_range_usize("stack.limits.tx_queue", l.tx_queue, 16, 1 << 20)?,
    };
    Ok(StackSettings {
        mode,
        interface: r.interface.trim().to_string(),
        mac,
        ipv4,
        ipv6,
        gateway4,
        gateway6,
        mtu,
        limits,
    })
}

// ---------------------------------------------------------------------------
// Value parsers (public: the CLI overrides use them).
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

/// Parse `text` / `json`.
pub fn parse_log_format(key: &str, s: &str) -> Result<LogFormat, ConfigError> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(key, s, "must be \"text\" or \"json\"")),
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A log level is a `tracing_subscriber::EnvFilter` directive list
/// (`info`, `warn,sipedge=debug`). A bare word must be a level name: EnvFilter
/// would read `verbose` as a target name and silently log nothing useful.
pub fn check_log_level(key: &str, s: &str) -> Result<(), ConfigError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(key, s, "must not be empty (e.g. \"info\")"));
    }
    for d in t.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[', ':']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            return Err(invalid(
                key,
                s,
                format!(
                    "`{d}` is not a level (trace, debug, info, warn, error, off); \
                     per-target filters are written `target=level`"
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(t)
        .map(|_| ())
        .map_err(|e| invalid(key, s, format!("not a valid log filter: {e}")))
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

    /// Parse `text` and expect an error whose message names `key`.
    fn err_for(text: &str, key: &str) -> String {
        match Config::from_toml(text) {
            Ok(c) => panic!("expected an error naming {key}, got {c:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(key), "error `{msg}` does not name `{key}`");
                msg
            }
        }
    }

    fn proxy(extra: &str) -> String {
        format!("[proxy]\n{extra}\n")
    }

    #[test]
    fn default_config_equals_etc_file() {
        let file = Config::from_toml(include_str!("../etc/sipedge.toml")).expect("etc file");
        assert_eq!(Config::default_config(), file);
    }

    const AF: &str =
        "[proxy]\nlisten = [\"udp:198.18.0.2:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n";

    fn af(stack: &str) -> String {
        format!("{AF}[stack]\nmode = \"afpacket\"\n{stack}\n")
    }

    #[test]
    fn afpacket_example_file_is_valid_and_round_trips() {
        let c = Config::from_toml(include_str!("../etc/sipedge-afpacket.toml")).expect("etc file");
        assert_eq!(c.stack.mode, StackMode::Afpacket);
        assert_eq!(c.stack.interface, "eth1");
        assert_eq!(c.stack.ipv4, Some((Ipv4Addr::new(198, 18, 0, 2), 24)));
        assert_eq!(c.stack.gateway4, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let n = c.stack.netstack_config([2, 0, 0, 0, 0, 1], 1500);
        assert_eq!(n.mac.0, [2, 0, 0, 0, 0, 1]);
        assert_eq!(n.mtu, 1500);
        assert_eq!(n.limits.frag4_mem, 4 * 1024 * 1024);
    }

    #[test]
    fn afpacket_config_errors_name_the_key() {
        err_for(&af("ipv4 = \"198.18.0.2/24\""), "stack.interface");
        err_for(&af("interface = \"veth0\""), "stack.ipv4");
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2\""),
            "stack.ipv4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/33\""),
            "stack.ipv4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv6 = \"198.18.0.2/24\""),
            "stack.ipv6",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\ngateway4 = \"198.19.0.1\""),
            "stack.gateway4",
        );
        err_for(
            &af("interface = \"veth0\"\nipv6 = \"2001:db8::2/64\"\ngateway6 = \"2001:db9::1\""),
            "stack.gateway6",
        );
        for ok in ["fe80::1", "2001:db8::1"] {
            Config::from_toml(&af(&format!(
                "interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nipv6 = \"2001:db8::2/64\"\ngateway6 = \"{ok}\""
            )))
            .unwrap();
        }
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nmac = \"01:00:5e:00:00:01\""),
            "stack.mac",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nmac = \"zz\""),
            "stack.mac",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n[stack.limits]\ntx_queue = 0"),
            "stack.limits.tx_queue",
        );
        err_for(
            &af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\nbogus = 1"),
            "bogus",
        );
        err_for(&format!("{AF}[stack]\nmode = \"dpdk\"\n"), "stack.mode");
        // the listen address must be one of the stack's, over UDP
        let other_ip = "[proxy]\nlisten = [\"udp:198.18.0.3:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n[stack]\nmode = \"afpacket\"\ninterface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n";
        err_for(other_ip, "proxy.listen[0]");
        let tcp = "[proxy]\nlisten = [\"tcp:198.18.0.2:5060\"]\nupstreams = [\"sip:198.18.0.10\"]\n[stack]\nmode = \"afpacket\"\ninterface = \"veth0\"\nipv4 = \"198.18.0.2/24\"\n";
        let m = err_for(tcp, "proxy.listen[0]");
        assert!(m.contains("TCP"), "{m}");
        // valid minimal afpacket config
        let ok = Config::from_toml(&af("interface = \"veth0\"\nipv4 = \"198.18.0.2/24\"")).unwrap();
        assert_eq!(ok.stack.mac, None);
        assert_eq!(ok.stack.mtu, 0);
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

    #[test]
    fn tcp_max_message_size_range() {
        err_for("[tcp]\nmax_message_size = 255\n", "tcp.max_message_size");
        err_for(
            "[tcp]\nmax_message_size = 16777217\n",
            "tcp.max_message_size",
        );
        err_for("[tcp]\nmax_message_size = -5\n", "tcp.max_message_size");
        Config::from_toml("[tcp]\nmax_message_size = 256\n").unwrap();
        Config::from_toml("[tcp]\nmax_message_size = 16777216\nwrite_queue_bytes = 16777216\n")
            .unwrap();
    }

    #[test]
    fn tcp_connection_limits_positive() {
        err_for("[tcp]\nmax_connections = 0\n", "tcp.max_connections");
        err_for(
            "[tcp]\nmax_connections_per_ip = 0\n",
            "tcp.max_connections_per_ip",
        );
    }

    #[test]
    fn tcp_write_queue_holds_a_message() {
        err_for("[tcp]\nwrite_queue_bytes = 1000\n", "tcp.write_queue_bytes");
    }

    #[test]
    fn tcp_timeouts_positive() {
        for key in [
            "idle_lifetime_secs",
            "message_timeout_secs",
            "first_message_timeout_secs",
            "connect_timeout_secs",
        ] {
            err_for(&format!("[tcp]\n{key} = 0\n"), &format!("tcp.{key}"));
            err_for(
                &format!("[tcp]\n{key} = 99999999999\n"),
                &format!("tcp.{key}"),
            );
        }
    }

    #[test]
    fn nosip_hook_values() {
        err_for("[nosip]\nhook = \"skip\"\n", "nosip.hook");
        let c = Config::from_toml("[nosip]\nhook = \"http-health\"\n").unwrap();
        assert_eq!(c.nosip.hook, NosipKind::HttpHealth);
    }

    #[test]
    fn nosip_match_requires_pattern() {
        let msg = err_for("[nosip]\nhook = \"match\"\n", "nosip.pattern");
        assert!(msg.contains("required"), "{msg}");
    }

    #[test]
    fn nosip_pattern_must_compile() {
        err_for(
            "[nosip]\nhook = \"match\"\npattern = \"([\"\n",
            "nosip.pattern",
        );
        let c = Config::from_toml("[nosip]\nhook = \"match\"\npattern = '^[\\r\\n]*$'\n").unwrap();
        assert_eq!(c.nosip.pattern.as_deref(), Some("^[\\r\\n]*$"));
    }

    #[test]
    fn nosip_etc_example_pattern_compiles() {
        // The commented example in etc/sipedge.toml must be usable as-is.
        let etc = include_str!("../etc/sipedge.toml");
        let line = etc
            .lines()
            .find(|l| l.starts_with("# pattern = "))
            .expect("example pattern in etc/sipedge.toml");
        let text = format!("[nosip]\nhook = \"match\"\n{}\n", &line[2..]);
        let c = Config::from_toml(&text).unwrap();
        let re = regex::bytes::Regex::new(c.nosip.pattern.as_deref().unwrap()).unwrap();
        assert!(re.is_match(b"\r\n\r\nping\n\0"));
        assert!(!re.is_match(b"INVITE sip:a SIP/2.0\r\n"));
    }

    #[test]
    fn nosip_health_path_starts_with_slash() {
        err_for("[nosip]\nhealth_path = \"health\"\n", "nosip.health_path");
        err_for("[nosip]\nhealth_path = \"/a b\"\n", "nosip.health_path");
    }

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

    #[test]
    fn log_level_must_be_a_filter() {
        err_for("[log]\nlevel = \"verbose\"\n", "log.level");
        err_for("[log]\nlevel = \"\"\n", "log.level");
        err_for("[log]\nlevel = \"sipedge=loud\"\n", "log.level");
        let c = Config::from_toml("[log]\nlevel = \"warn,sipedge::core=trace\"\n").unwrap();
        assert_eq!(c.log_level, "warn,sipedge::core=trace");
    }

    #[test]
    fn log_format_values() {
        err_for("[log]\nformat = \"xml\"\n", "log.format");
        let c = Config::from_toml("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
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
