//! Prometheus metrics (`sipedge_*`) and the `/metrics` HTTP endpoint (hyper),
//! which also answers `/healthz` and `/ready` ([`crate::readiness`]).
//!
//! Every labelled child is resolved once at start-up, so the hot path only
//! does an atomic add: no `with_label_values` lookups, no locks.

use crate::config::Transport;
use crate::core::DropReason;
use crate::core::nosip::NosipVerdict;
use crate::transport::conn::ReleaseReason;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Method labels of `sipedge_requests_received_total`; anything else is `other`.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "INFO",
    "UPDATE",
    "PRACK",
    "MESSAGE",
    "PUBLISH",
    "other",
];

/// Class labels of `sipedge_replies_received_total`.
pub const REPLY_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// Codes of `sipedge_local_replies_total` with their own label; the rest is `other`.
pub const LOCAL_REPLY_CODES: [u16; 9] = [200, 400, 403, 416, 420, 483, 500, 503, 505];
const LOCAL_REPLY_LABELS: [&str; 10] = [
    "200", "400", "403", "416", "420", "483", "500", "503", "505", "other",
];

/// Transport labels, indexed by [`transport_index`].
const TRANSPORTS: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// Buckets of `sipedge_forward_latency_seconds`: 10 µs .. 1 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

const NDROP: usize = DropReason::ALL.len();
const NRELEASE: usize = ReleaseReason::ALL.len();
const NNOSIP: usize = NosipVerdict::ALL.len();

/// All sipedge metrics. Cheap to share behind an `Arc`; every method is a
/// lock-free atomic update.
pub struct Metrics {
    pub registry: prometheus::Registry,
    requests: [IntCounter; METHODS.len()],
    replies: [IntCounter; REPLY_CLASSES.len()],
    forwarded_request: IntCounter,
    forwarded_reply: IntCounter,
    local_replies: [IntCounter; LOCAL_REPLY_LABELS.len()],
    dropped: [IntCounter; NDROP],
    parse_failures: [IntCounter; TRANSPORTS.len()],
    nosip: [IntCounter; NNOSIP],
    keepalive_ping: IntCounter,
    keepalive_pong: IntCounter,
    tcp_connections: IntGauge,
    tcp_accepted: IntCounter,
    tcp_connected: IntCounter,
    tcp_released: [IntCounter; NRELEASE],
    tcp_refused: IntCounter,
    bytes_in: [IntCounter; TRANSPORTS.len()],
    bytes_out: [IntCounter; TRANSPORTS.len()],
    forward_latency: Histogram,
    txn: TxnMetrics,
    config_reloads: [IntCounter; RELOAD_RESULTS.len()],
    /// `/ready` state: set by the transport and health checks, read by the endpoint.
    readiness: crate::readiness::Readiness,
}

/// Result labels of `sipedge_config_reloads_total`.
pub const RELOAD_RESULTS: [&str; 3] = ["ok", "partial", "error"];

/// How a configuration reload (SIGHUP) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// Every change applied (or nothing changed).
    Ok = 0,
    /// Some changes applied, others refused (they need a restart).
    Partial = 1,
    /// The new file is invalid: the old configuration stays.
    Error = 2,
}

/// The stateful mode's transaction counters (`proxy.mode = "stateful"`).
struct TxnMetrics {
    active: IntGauge,
    created: IntCounter,
    timeouts: IntCounter,
    failovers: IntCounter,
    cap_rejects: IntCounter,
    absorbed: IntCounter,
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

fn method_index(m: &[u8]) -> usize {
    match m {
        b"INVITE" => 0,
        b"ACK" => 1,
        b"BYE" => 2,
        b"CANCEL" => 3,
        b"OPTIONS" => 4,
        b"REGISTER" => 5,
        b"SUBSCRIBE" => 6,
        b"NOTIFY" => 7,
        b"REFER" => 8,
        b"INFO" => 9,
        b"UPDATE" => 10,
        b"PRACK" => 11,
        b"MESSAGE" => 12,
        b"PUBLISH" => 13,
        _ => 14,
    }
}

/// Registers metrics and resolves their children.
struct Reg<'a>(&'a Registry);

impl Reg<'_> {
    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let c = IntCounter::new(name, help)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter vector with one label; one child per value, in order.
    fn counters<const N: usize>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: [&str; N],
    ) -> prometheus::Result<[IntCounter; N]> {
        let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
        self.0.register(Box::new(v.clone()))?;
        let mut out = Vec::with_capacity(N);
        for value in values {
            out.push(v.get_metric_with_label_values(&[value])?);
        }
        out.try_into()
            .map_err(|_| prometheus::Error::Msg(format!("{name}: wrong child count")))
    }
}

impl Metrics {
    /// Create and register every metric, with all label children present
    /// (at zero) from the start.
    pub fn new() -> Metrics {
        // Names, labels and buckets are constants: an error here is a bug
        // that the unit tests catch.
        Metrics::try_new().expect("metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let r = Reg(&registry);
        let transports = TRANSPORTS.map(Transport::as_str);

        let forwarded = IntCounterVec::new(
            Opts::new(
                "sipedge_forwarded_total",
                "SIP messages forwarded, by kind (request or reply).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        let keepalives = IntCounterVec::new(
            Opts::new(
                "sipedge_keepalives_total",
                "Keep-alives: CRLFCRLF pings received (ping) and CRLF pongs sent (pong), RFC 5626.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(keepalives.clone()))?;

        let tcp_connections = IntGauge::new(
            "sipedge_tcp_connections",
            "TCP connections currently open (inbound and outbound).",
        )?;
        registry.register(Box::new(tcp_connections.clone()))?;

        let forward_latency = Histogram::with_opts(
            HistogramOpts::new(
                "sipedge_forward_latency_seconds",
                "Time from receiving a SIP message to handing the forwarded copy to the socket.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(forward_latency.clone()))?;

        let build_info = IntGaugeVec::new(
            Opts::new(
                "sipedge_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);

        Ok(Metrics {
            requests: r.counters(
                "sipedge_requests_received_total",
                "SIP requests received, by method (unknown methods count as other).",
                "method",
                METHODS,
            )?,
            replies: r.counters(
                "sipedge_replies_received_total",
                "SIP replies received, by status class.",
                "class",
                REPLY_CLASSES,
            )?,
            forwarded_request: forwarded.get_metric_with_label_values(&["request"])?,
            forwarded_reply: forwarded.get_metric_with_label_values(&["reply"])?,
            local_replies: r.counters(
                "sipedge_local_replies_total",
                "Replies generated by the proxy itself, by status code.",
                "code",
                LOCAL_REPLY_LABELS,
            )?,
            dropped: r.counters(
                "sipedge_dropped_total",
                "SIP messages dropped without forwarding, by reason.",
                "reason",
                DropReason::ALL.map(DropReason::as_str),
            )?,
            parse_failures: r.counters(
                "sipedge_parse_failures_total",
                "Messages the core could not parse (after the nosip hook passed), by transport.",
                "transport",
                transports,
            )?,
            nosip: r.counters(
                "sipedge_nosip_total",
                "Verdicts of the nosip hook on non-SIP data.",
                "verdict",
                NosipVerdict::ALL.map(NosipVerdict::as_str),
            )?,
            keepalive_ping: keepalives.get_metric_with_label_values(&["ping"])?,
            keepalive_pong: keepalives.get_metric_with_label_values(&["pong"])?,
            tcp_connections,
            tcp_accepted: r.counter(
                "sipedge_tcp_accepted_total",
                "Inbound TCP connections accepted.",
            )?,
            tcp_connected: r.counter(
                "sipedge_tcp_connected_total",
                "Outbound TCP connections established.",
            )?,
            tcp_released: r.counters(
                "sipedge_tcp_released_total",
                "TCP connections released, by reason.",
                "reason",
                ReleaseReason::ALL.map(ReleaseReason::as_str),
            )?,
            tcp_refused: r.counter(
                "sipedge_tcp_refused_total",
                "TCP connections refused by the limits (table full with nothing to evict, per-IP cap).",
            )?,
            bytes_in: r.counters(
                "sipedge_bytes_received_total",
                "Bytes received on SIP sockets, by transport.",
                "transport",
                transports,
            )?,
            bytes_out: r.counters(
                "sipedge_bytes_sent_total",
                "Bytes sent on SIP sockets, by transport.",
                "transport",
                transports,
            )?,
            forward_latency,
            txn: TxnMetrics {
                active: {
                    let g = IntGauge::new(
                        "sipedge_transactions",
                        "Transactions alive (stateful mode).",
                    )?;
                    registry.register(Box::new(g.clone()))?;
                    g
                },
                created: r.counter(
                    "sipedge_transactions_created_total",
                    "Transactions created (stateful mode).",
                )?,
                timeouts: r.counter(
                    "sipedge_transaction_timeouts_total",
                    "Client transactions that timed out (Timers B, F, C).",
                )?,
                failovers: r.counter(
                    "sipedge_transaction_failovers_total",
                    "Requests sent to the next target after a timeout, transport error or failover code.",
                )?,
                cap_rejects: r.counter(
                    "sipedge_transactions_refused_total",
                    "Requests answered 503 because the transaction table was full.",
                )?,
                absorbed: r.counter(
                    "sipedge_transaction_retransmissions_absorbed_total",
                    "Retransmitted requests answered from their transaction instead of forwarded.",
                )?,
            },
            config_reloads: r.counters(
                "sipedge_config_reloads_total",
                "Configuration reloads (SIGHUP), by result: ok, partial (some keys need a restart), error (invalid file, old configuration kept).",
                "result",
                RELOAD_RESULTS,
            )?,
            readiness: crate::readiness::Readiness::new(),
            registry,
        })
    }

    /// Transaction-table changes since the last call: counter deltas and
    /// the change of the number of live transactions.
    pub fn transactions(&self, d: &crate::core::transaction::Stats, active_delta: i64) {
        let t = &self.txn;
        t.active.add(active_delta);
        t.created.inc_by(d.created);
        t.timeouts.inc_by(d.timeouts);
        t.failovers.inc_by(d.failovers);
        t.cap_rejects.inc_by(d.cap_rejects);
        t.absorbed.inc_by(d.absorbed);
    }

    /// `sipedge_requests_received_total{method}`; unknown methods count as `other`.
    pub fn request(&self, method: &[u8]) {
        self.requests[method_index(method)].inc();
    }
    /// `sipedge_replies_received_total{class="1xx".."6xx"}`. Codes outside
    /// 100..=699 (invalid per RFC 3261 §21) are not counted here.
    pub fn reply(&self, code: u16) {
        if let Some(c) = (code / 100)
            .checked_sub(1)
            .and_then(|i| self.replies.get(usize::from(i)))
        {
            c.inc();
        }
    }
    /// `sipedge_forwarded_total{kind="request"|"reply"}`.
    pub fn forwarded_request(&self) {
        self.forwarded_request.inc();
    }
    /// `sipedge_forwarded_total{kind="reply"}`.
    pub fn forwarded_reply(&self) {
        self.forwarded_reply.inc();
    }
    /// `sipedge_local_replies_total{code}`.
    pub fn local_reply(&self, code: u16) {
        let i = LOCAL_REPLY_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(LOCAL_REPLY_CODES.len());
        self.local_replies[i].inc();
    }
    /// `sipedge_dropped_total{reason}`.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.dropped.get(reason as usize) {
            c.inc();
        }
    }
    /// `sipedge_parse_failures_total{transport}`.
    pub fn parse_failure(&self, t: Transport) {
        self.parse_failures[transport_index(t)].inc();
    }
    /// `sipedge_nosip_total{verdict="drop"|"pass"|"error"}`.
    pub fn nosip(&self, v: NosipVerdict) {
        if let Some(c) = self.nosip.get(v as usize) {
            c.inc();
        }
    }
    /// `sipedge_keepalives_total{kind="ping"}`: a CRLFCRLF ping received.
    pub fn keepalive_ping(&self) {
        self.keepalive_ping.inc();
    }
    /// `sipedge_keepalives_total{kind="pong"}`: a CRLF pong sent.
    pub fn keepalive_pong(&self) {
        self.keepalive_pong.inc();
    }
    /// `sipedge_tcp_accepted_total` (inbound) or `sipedge_tcp_connected_total`
    /// (outbound), and the `sipedge_tcp_connections` gauge (+1).
    pub fn tcp_opened(&self, outbound: bool) {
        if outbound {
            self.tcp_connected.inc();
        } else {
            self.tcp_accepted.inc();
        }
        self.tcp_connections.inc();
    }
    /// `sipedge_tcp_released_total{reason}`, gauge (-1).
    pub fn tcp_released(&self, reason: ReleaseReason) {
        if let Some(c) = self.tcp_released.get(reason as usize) {
            c.inc();
        }
        self.tcp_connections.dec();
    }
    /// `sipedge_tcp_refused_total` (limits: table full with nothing to evict, per-IP cap).
    pub fn tcp_refused(&self) {
        self.tcp_refused.inc();
    }
    /// `sipedge_bytes_received_total{transport}`.
    pub fn bytes_in(&self, t: Transport, n: usize) {
        self.bytes_in[transport_index(t)].inc_by(n as u64);
    }
    /// `sipedge_bytes_sent_total{transport}`.
    pub fn bytes_out(&self, t: Transport, n: usize) {
        self.bytes_out[transport_index(t)].inc_by(n as u64);
    }
    /// `sipedge_forward_latency_seconds` histogram: receive → handed to the socket.
    /// Negative or non-finite values are ignored.
    pub fn forward_latency(&self, secs: f64) {
        if secs.is_finite() && secs >= 0.0 {
            self.forward_latency.observe(secs);
        }
    }
    /// `sipedge_config_reloads_total{result}`.
    pub fn config_reload(&self, r: ReloadResult) {
        self.config_reloads[r as usize].inc();
    }
    /// Bytes received over UDP so far (the drain watches it for quiet).
    pub fn udp_bytes_in(&self) -> u64 {
        self.bytes_in[transport_index(Transport::Udp)].get()
    }
    /// The `/ready` state (set it: start-up, drain, upstream health).
    pub fn readiness(&self) -> &crate::readiness::Readiness {
        &self.readiness
    }
    /// Export the embedded stack's MIB counters and drop reasons
    /// (`sipedge_netstack_mib_total{group,counter}`,
    /// `sipedge_netstack_drops_total{reason}`), read at scrape time.
    pub fn register_netstack(
        &self,
        counters: Arc<crate::netstack::Counters>,
    ) -> prometheus::Result<()> {
        self.registry
            .register(Box::new(NetstackCollector::new(vec![counters])?))
    }

    /// Export N stack shards (afpacket mode, `stack.workers`): the
    /// netstack families as totals over the shards (same names and labels
    /// as [`Self::register_netstack`]), and the per-shard families
    /// labelled `shard` (`sipedge_shard_*`, README's metrics table).
    pub fn register_shards(&self, shards: Vec<ShardSource>) -> prometheus::Result<()> {
        let counters = shards.iter().map(|s| s.counters.clone()).collect();
        self.registry
            .register(Box::new(NetstackCollector::new(counters)?))?;
        self.registry
            .register(Box::new(ShardCollector::new(shards)?))
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serve `GET /metrics` on `addr` until the task is dropped. Only binding
/// the socket can fail; everything after that is logged and survived.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    serve_listener(listener, metrics).await
}

/// Serve `GET /metrics` on an already bound listener (tests bind port 0),
/// one task per connection, until the task is dropped.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection error");
            }
        });
    }
}

/// A small `text/plain` response.
fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `GET /metrics` (and `HEAD`) → 200 with the exposition text; `/healthz` →
/// 200 while the process runs; `/ready` → 200 when ready, else 503 naming
/// why (starting, draining, no upstream up); anything else → 404.
fn respond<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/healthz" if get => return plain(StatusCode::OK, "ok\n"),
        "/ready" if get => {
            use crate::readiness::ReadyState;
            return match metrics.readiness.state() {
                ReadyState::Ready => plain(StatusCode::OK, "ready\n"),
                ReadyState::Starting => plain(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                ReadyState::Draining => plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                ReadyState::NoUpstream => {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "no upstream up\n")
                }
            };
        }
        _ => {}
    }
    let ok = req.uri().path() == "/metrics" && get;
    if ok {
        let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
        resp
    } else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The sample line `name{labels} value` (or `name value`) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn enum_discriminants_match_all_order() {
        // The hot path indexes the children arrays with `as usize`.
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in ReleaseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, v) in NosipVerdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        for (i, t) in TRANSPORTS.iter().enumerate() {
            assert_eq!(transport_index(*t), i);
        }
        for (i, m) in METHODS.iter().enumerate().take(METHODS.len() - 1) {
            assert_eq!(method_index(m.as_bytes()), i);
        }
    }

    #[test]
    fn all_children_exist_at_start() {
        let m = Metrics::new();
        let t = m.encode();
        for meth in METHODS {
            assert_eq!(
                sample(
                    &t,
                    &format!("sipedge_requests_received_total{{method=\"{meth}\"}}")
                ),
                Some(0.0),
                "{meth}"
            );
        }
        for c in REPLY_CLASSES {
            assert!(t.contains(&format!(
                "sipedge_replies_received_total{{class=\"{c}\"}} 0"
            )));
        }
        for c in LOCAL_REPLY_LABELS {
            assert!(t.contains(&format!("sipedge_local_replies_total{{code=\"{c}\"}} 0")));
        }
        for r in DropReason::ALL {
            assert!(t.contains(&format!(
                "sipedge_dropped_total{{reason=\"{}\"}} 0",
                r.as_str()
            )));
        }
        for r in ReleaseReason::ALL {
            assert!(t.contains(&format!(
                "sipedge_tcp_released_total{{reason=\"{}\"}} 0",
                r.as_str()
            )));
        }
        for v in NosipVerdict::ALL {
            assert!(t.contains(&format!(
                "sipedge_nosip_total{{verdict=\"{}\"}} 0",
                v.as_str()
            )));
        }
        for tr in ["udp", "tcp"] {
            for name in [
                "sipedge_parse_failures_total",
                "sipedge_bytes_received_total",
                "sipedge_bytes_sent_total",
            ] {
                assert!(
                    t.contains(&format!("{name}{{transport=\"{tr}\"}} 0")),
                    "{name} {tr}"
                );
            }
        }
        for k in ["request", "reply"] {
            assert!(t.contains(&format!("sipedge_forwarded_total{{kind=\"{k}\"}} 0")));
        }
        for k in ["ping", "pong"] {
            assert!(t.contains(&format!("sipedge_keepalives_total{{kind=\"{k}\"}} 0")));
        }
        for r in RELOAD_RESULTS {
            assert!(t.contains(&format!("sipedge_config_reloads_total{{result=\"{r}\"}} 0")));
        }
        for name in [
            "sipedge_tcp_connections",
            "sipedge_tcp_accepted_total",
            "sipedge_tcp_connected_total",
            "sipedge_tcp_refused_total",
        ] {
            assert_eq!(sample(&t, name), Some(0.0), "{name}");
        }
        assert!(
            t.contains("sipedge_forward_latency_seconds_bucket{le=\"0.00001\"} 0"),
            "{t}"
        );
        assert!(t.contains("sipedge_forward_latency_seconds_bucket{le=\"1\"} 0"));
        assert_eq!(
            sample(
                &t,
                &format!(
                    "sipedge_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
    }

    #[test]
    fn naming_conventions() {
        let m = Metrics::new();
        let families = m.registry.gather();
        assert_eq!(families.len(), 24);
        for f in &families {
            let name = f.name();
            assert!(name.starts_with("sipedge_"), "{name}");
            assert!(!f.help().is_empty(), "{name} has no HELP");
            if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        let t = m.encode();
        let helps = t.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(helps, families.len());
    }

    #[test]
    fn counters_move() {
        let m = Metrics::new();
        m.request(b"INVITE");
        m.request(b"INVITE");
        m.request(b"FOO");
        m.reply(180);
        m.reply(200);
        m.reply(699);
        m.reply(99);
        m.reply(700);
        m.forwarded_request();
        m.forwarded_reply();
        m.forwarded_reply();
        m.local_reply(483);
        m.local_reply(486);
        m.dropped(DropReason::ReplyNotOurs);
        m.parse_failure(Transport::Tcp);
        m.nosip(NosipVerdict::Drop);
        m.keepalive_ping();
        m.keepalive_pong();
        m.tcp_opened(false);
        m.tcp_opened(false);
        m.tcp_opened(true);
        m.tcp_released(ReleaseReason::Eof);
        m.tcp_refused();
        m.bytes_in(Transport::Udp, 100);
        m.bytes_out(Transport::Tcp, 42);
        m.forward_latency(0.000_02);
        m.forward_latency(f64::NAN);
        m.forward_latency(-1.0);
        let t = m.encode();
        let s = |series: &str| sample(&t, series).unwrap_or_else(|| panic!("{series} missing"));
        assert_eq!(s("sipedge_requests_received_total{method=\"INVITE\"}"), 2.0);
        assert_eq!(s("sipedge_requests_received_total{method=\"other\"}"), 1.0);
        assert_eq!(s("sipedge_replies_received_total{class=\"1xx\"}"), 1.0);
        assert_eq!(s("sipedge_replies_received_total{class=\"2xx\"}"), 1.0);
        assert_eq!(s("sipedge_replies_received_total{class=\"6xx\"}"), 1.0);
        assert_eq!(s("sipedge_forwarded_total{kind=\"request\"}"), 1.0);
        assert_eq!(s("sipedge_forwarded_total{kind=\"reply\"}"), 2.0);
        assert_eq!(s("sipedge_local_replies_total{code=\"483\"}"), 1.0);
        assert_eq!(s("sipedge_local_replies_total{code=\"other\"}"), 1.0);
        assert_eq!(s("sipedge_dropped_total{reason=\"reply_not_ours\"}"), 1.0);
        assert_eq!(s("sipedge_parse_failures_total{transport=\"tcp\"}"), 1.0);
        assert_eq!(s("sipedge_parse_failures_total{transport=\"udp\"}"), 0.0);
        assert_eq!(s("sipedge_nosip_total{verdict=\"drop\"}"), 1.0);
        assert_eq!(s("sipedge_keepalives_total{kind=\"ping\"}"), 1.0);
        assert_eq!(s("sipedge_keepalives_total{kind=\"pong\"}"), 1.0);
        assert_eq!(s("sipedge_tcp_accepted_total"), 2.0);
        assert_eq!(s("sipedge_tcp_connected_total"), 1.0);
        assert_eq!(s("sipedge_tcp_connections"), 2.0);
        assert_eq!(s("sipedge_tcp_released_total{reason=\"eof\"}"), 1.0);
        assert_eq!(s("sipedge_tcp_refused_total"), 1.0);
        assert_eq!(s("sipedge_bytes_received_total{transport=\"udp\"}"), 100.0);
        assert_eq!(s("sipedge_bytes_sent_total{transport=\"tcp\"}"), 42.0);
        assert_eq!(s("sipedge_forward_latency_seconds_count"), 1.0);
        assert_eq!(
            s("sipedge_forward_latency_seconds_bucket{le=\"0.00001\"}"),
            0.0
        );
        assert_eq!(
            s("sipedge_forward_latency_seconds_bucket{le=\"0.000025\"}"),
            1.0
        );
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        m.request(b"OPTIONS");
        let server = tokio::spawn(serve_listener(listener, Arc::clone(&m)));

        let resp = http_get(addr, "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4\r\n"),
            "{resp}"
        );
        assert!(resp.contains("sipedge_requests_received_total{method=\"OPTIONS\"} 1"));
        assert!(resp.contains("sipedge_build_info"));

        let resp = http_get(addr, "/other").await;
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");

        // liveness always; readiness only once started, not while draining
        let resp = http_get(addr, "/healthz").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        let resp = http_get(addr, "/ready").await;
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
        assert!(resp.ends_with("starting\n"), "{resp}");
        m.readiness().set_started();
        let resp = http_get(addr, "/ready").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        m.readiness().set_upstreams_up(false);
        let resp = http_get(addr, "/ready").await;
        assert!(resp.ends_with("no upstream up\n"), "{resp}");
        m.readiness().set_upstreams_up(true);
        m.readiness().set_draining();
        let resp = http_get(addr, "/ready").await;
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
        assert!(resp.ends_with("draining\n"), "{resp}");
        let resp = http_get(addr, "/healthz").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

        // A garbage request does not take the server down.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        let resp = http_get(addr, "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

        server.abort();
    }
}

/// Bring a Prometheus counter up to `cur`, a count kept elsewhere that only
/// grows (a value below the counter's, e.g. a shard gone, is ignored).
fn catch_up(c: &IntCounter, cur: u64) {
    let seen = c.get();
    if cur > seen {
        c.inc_by(cur - seen);
    }
}

/// Mirrors the stack's single-writer counters into Prometheus counters when
/// scraped: the stack thread never touches Prometheus.
struct NetstackCollector {
    /// One per stack shard; exported as their sums.
    counters: Vec<Arc<crate::netstack::Counters>>,
    mib: IntCounterVec,
    drops: IntCounterVec,
    mib_children: Vec<IntCounter>,
    drop_children: Vec<IntCounter>,
    /// Tcp CurrEstab is a gauge (it goes down): exported apart, not as a
    /// counter of the mib family.
    curr_estab: IntGauge,
}

impl NetstackCollector {
    fn new(counters: Vec<Arc<crate::netstack::Counters>>) -> prometheus::Result<Self> {
        use crate::netstack::{DropReason as NsDrop, Mib};
        let mib = IntCounterVec::new(
            Opts::new(
                "sipedge_netstack_mib_total",
                "Embedded stack (afpacket mode) SNMP counters, named as Linux's /proc/net/snmp and snmp6.",
            ),
            &["group", "counter"],
        )?;
        let drops = IntCounterVec::new(
            Opts::new(
                "sipedge_netstack_drops_total",
                "Frames and packets the embedded stack dropped, by reason.",
            ),
            &["reason"],
        )?;
        let curr_estab = IntGauge::new(
            "sipedge_netstack_tcp_curr_estab",
            "Embedded stack TCP connections in ESTABLISHED or CLOSE_WAIT (Linux Tcp CurrEstab).",
        )?;
        let mib_children = Mib::ALL
            .iter()
            .filter(|m| !m.is_gauge())
            .map(|m| {
                let (g, c) = m.names();
                mib.with_label_values(&[g, c])
            })
            .collect();
        let drop_children = NsDrop::ALL
            .iter()
            .map(|r| drops.with_label_values(&[r.names().1]))
            .collect();
        Ok(NetstackCollector {
            counters,
            mib,
            drops,
            mib_children,
            drop_children,
            curr_estab,
        })
    }

    fn sync(&self) {
        use crate::netstack::{DropReason as NsDrop, Mib};
        let mib = |m: Mib| self.counters.iter().map(|c| c.get(m)).sum::<u64>();
        let drops = |r: NsDrop| self.counters.iter().map(|c| c.drops(r)).sum::<u64>();
        self.curr_estab.set(mib(Mib::TcpCurrEstab) as i64);
        for (m, c) in Mib::ALL
            .iter()
            .filter(|m| !m.is_gauge())
            .zip(&self.mib_children)
        {
            catch_up(c, mib(*m));
        }
        for (r, c) in NsDrop::ALL.iter().zip(&self.drop_children) {
            catch_up(c, drops(*r));
        }
    }
}

impl prometheus::core::Collector for NetstackCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.mib.desc();
        d.extend(self.drops.desc());
        d.extend(self.curr_estab.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.sync();
        let mut v = self.mib.collect();
        v.extend(self.drops.collect());
        v.extend(self.curr_estab.collect());
        v
    }
}

/// What one stack shard's own thread counts for the per-shard families
/// (single writer, relaxed stores; read at scrape time).
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Frames received from the shard's socket.
    pub rx_frames: std::sync::atomic::AtomicU64,
    /// Frames sent.
    pub tx_frames: std::sync::atomic::AtomicU64,
    /// Cross-shard sends received (a TCP send for a connection this shard owns).
    pub handoffs: std::sync::atomic::AtomicU64,
    /// Replicated ARP / NDP / ICMP-error frames received from other shards.
    pub replicas: std::sync::atomic::AtomicU64,
    /// Cross-shard messages dropped because the mailbox was full.
    pub mailbox_full: std::sync::atomic::AtomicU64,
    /// Frames the kernel dropped before the shard's socket (its receive
    /// ring or buffer was full: PACKET_STATISTICS tp_drops).
    pub kernel_drops: std::sync::atomic::AtomicU64,
    /// TPACKET_V3 ring blocks the shard consumed (0 on the plain socket).
    pub rx_blocks: std::sync::atomic::AtomicU64,
}

/// One stack shard as the metrics see it ([`Metrics::register_shards`]).
pub struct ShardSource {
    pub counters: Arc<crate::netstack::Counters>,
    pub stats: Arc<ShardStats>,
    /// The shard's SIP connections now.
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The `sipedge_shard_*` families, synced from the shards at scrape time.
struct ShardCollector {
    shards: Vec<ShardSource>,
    rx: IntCounterVec,
    tx: IntCounterVec,
    in_segs: IntCounterVec,
    conns: IntGaugeVec,
    handoffs: IntCounterVec,
    replicas: IntCounterVec,
    misdirected: IntCounterVec,
    mailbox_full: IntCounterVec,
    kernel_drops: IntCounterVec,
    rx_blocks: IntCounterVec,
}

impl ShardCollector {
    fn new(shards: Vec<ShardSource>) -> prometheus::Result<Self> {
        let c = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["shard"]);
        Ok(ShardCollector {
            rx: c(
                "sipedge_shard_rx_frames_total",
                "Frames received by each stack shard (afpacket mode).",
            )?,
            tx: c(
                "sipedge_shard_tx_frames_total",
                "Frames sent by each stack shard.",
            )?,
            in_segs: c(
                "sipedge_shard_tcp_in_segments_total",
                "TCP segments received by each stack shard (its Tcp InSegs).",
            )?,
            conns: IntGaugeVec::new(
                Opts::new(
                    "sipedge_shard_tcp_connections",
                    "SIP TCP connections in each stack shard's table.",
                ),
                &["shard"],
            )?,
            handoffs: c(
                "sipedge_shard_handoffs_total",
                "Cross-shard sends received by each shard (a TCP send for a connection it owns).",
            )?,
            replicas: c(
                "sipedge_shard_replicas_total",
                "ARP / NDP / ICMP-error frames replicated to each shard by the others.",
            )?,
            misdirected: c(
                "sipedge_shard_misdirected_total",
                "TCP segments and UDP datagrams a shard dropped because another shard owns their port.",
            )?,
            mailbox_full: c(
                "sipedge_shard_mailbox_full_total",
                "Cross-shard messages to each shard dropped because its mailbox was full.",
            )?,
            kernel_drops: c(
                "sipedge_shard_kernel_drops_total",
                "Frames the kernel dropped before each shard's AF_PACKET socket (ring or buffer full).",
            )?,
            rx_blocks: c(
                "sipedge_shard_rx_ring_blocks_total",
                "TPACKET_V3 receive-ring blocks each shard consumed (frames per block = rx_frames / this).",
            )?,
            shards,
        })
    }

    fn sync(&self) {
        use crate::netstack::{DropReason as NsDrop, Mib};
        use std::sync::atomic::Ordering::Relaxed;
        let up = |v: &IntCounterVec, shard: &str, cur: u64| {
            catch_up(&v.with_label_values(&[shard]), cur);
        };
        for (i, s) in self.shards.iter().enumerate() {
            let k = i.to_string();
            up(&self.rx, &k, s.stats.rx_frames.load(Relaxed));
            up(&self.tx, &k, s.stats.tx_frames.load(Relaxed));
            up(&self.in_segs, &k, s.counters.get(Mib::TcpInSegs));
            up(&self.handoffs, &k, s.stats.handoffs.load(Relaxed));
            up(&self.replicas, &k, s.stats.replicas.load(Relaxed));
            up(&self.misdirected, &k, s.counters.drops(NsDrop::OtherShard));
            up(&self.mailbox_full, &k, s.stats.mailbox_full.load(Relaxed));
            up(&self.kernel_drops, &k, s.stats.kernel_drops.load(Relaxed));
            up(&self.rx_blocks, &k, s.stats.rx_blocks.load(Relaxed));
            self.conns
                .with_label_values(&[&k])
                .set(i64::try_from((s.connections)()).unwrap_or(i64::MAX));
        }
    }

    fn families(&self) -> [&dyn prometheus::core::Collector; 10] {
        [
            &self.rx,
            &self.tx,
            &self.in_segs,
            &self.conns,
            &self.handoffs,
            &self.replicas,
            &self.misdirected,
            &self.mailbox_full,
            &self.kernel_drops,
            &self.rx_blocks,
        ]
    }
}

impl prometheus::core::Collector for ShardCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.families().into_iter().flat_map(|f| f.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.sync();
        self.families()
            .into_iter()
            .flat_map(|f| f.collect())
            .collect()
    }
}

#[cfg(test)]
mod netstack_metrics_tests {
    use super::*;
    use crate::netstack::{Counters, DropReason as NsDrop, Mib};

    #[test]
    fn c_netstack_counters_are_exported() {
        let m = Metrics::new();
        let c = Arc::new(Counters::new());
        m.register_netstack(c.clone()).unwrap();
        c.add(Mib::IpInReceives, 5);
        c.drop_reason(NsDrop::Ipv4BadChecksum);
        let t = m.encode();
        assert!(
            t.contains("sipedge_netstack_mib_total{counter=\"InReceives\",group=\"Ip\"} 5"),
            "{t}"
        );
        assert!(t.contains("sipedge_netstack_drops_total{reason=\"ipv4_bad_checksum\"} 1"));
        assert!(t.contains("sipedge_netstack_mib_total{counter=\"InDatagrams\",group=\"Udp6\"} 0"));
        c.add(Mib::IpInReceives, 2);
        assert!(
            m.encode()
                .contains("sipedge_netstack_mib_total{counter=\"InReceives\",group=\"Ip\"} 7")
        );
    }

    #[test]
    fn c_tcp_curr_estab_is_a_gauge_that_goes_down() {
        let m = Metrics::new();
        let c = Arc::new(Counters::new());
        m.register_netstack(c.clone()).unwrap();
        c.inc(Mib::TcpCurrEstab);
        c.inc(Mib::TcpCurrEstab);
        assert!(m.encode().contains("sipedge_netstack_tcp_curr_estab 2"));
        c.dec(Mib::TcpCurrEstab);
        let t = m.encode();
        assert!(
            t.contains("# TYPE sipedge_netstack_tcp_curr_estab gauge"),
            "{t}"
        );
        assert!(t.contains("sipedge_netstack_tcp_curr_estab 1"), "{t}");
        assert!(!t.contains("counter=\"CurrEstab\""), "{t}");
    }

    /// Issue 9: N shards export the netstack families as totals (same
    /// names) and the per-shard families labelled `shard`.
    #[test]
    fn shards_export_totals_and_per_shard_families() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = Metrics::new();
        let (a, b) = (Arc::new(Counters::new()), Arc::new(Counters::new()));
        let (sa, sb) = (
            Arc::new(ShardStats::default()),
            Arc::new(ShardStats::default()),
        );
        let src = |c: &Arc<Counters>, s: &Arc<ShardStats>, n: usize| ShardSource {
            counters: c.clone(),
            stats: s.clone(),
            connections: Box::new(move || n),
        };
        m.register_shards(vec![src(&a, &sa, 3), src(&b, &sb, 1)])
            .unwrap();
        a.add(Mib::TcpInSegs, 5);
        b.add(Mib::TcpInSegs, 2);
        sa.rx_frames.store(10, Relaxed);
        sb.handoffs.store(4, Relaxed);
        let t = m.encode();
        for want in [
            "sipedge_netstack_mib_total{counter=\"InSegs\",group=\"Tcp\"} 7",
            "sipedge_shard_tcp_in_segments_total{shard=\"0\"} 5",
            "sipedge_shard_tcp_in_segments_total{shard=\"1\"} 2",
            "sipedge_shard_rx_frames_total{shard=\"0\"} 10",
            "sipedge_shard_handoffs_total{shard=\"1\"} 4",
            "sipedge_shard_tcp_connections{shard=\"0\"} 3",
            "sipedge_shard_misdirected_total{shard=\"1\"} 0",
        ] {
            assert!(t.contains(want), "{want}\n{t}");
        }
        b.add(Mib::TcpInSegs, 1);
        b.drop_reason(crate::netstack::DropReason::OtherShard);
        let t = m.encode();
        assert!(t.contains("sipedge_shard_tcp_in_segments_total{shard=\"1\"} 3"));
        assert!(
            t.contains("sipedge_shard_misdirected_total{shard=\"1\"} 1"),
            "{t}"
        );
    }
}
