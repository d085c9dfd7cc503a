//! Prometheus metrics (`sipedge_*`) and the `/metrics` HTTP endpoint (hyper).
//!
//! Every labelled child is resolved once at start-up, so the hot path only
//! does an atomic add.

use crate::config::Transport;
use crate::core::DropReason;
use crate::core::nosip::NosipVerdict;
use crate::transport::conn::ReleaseReason;
use std::net::SocketAddr;
use std::sync::Arc;

/// All sipedge metrics.
pub struct Metrics {
    pub registry: prometheus::Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        todo!()
    }
    /// `sipedge_requests_received_total{method}`; unknown methods count as `other`.
    pub fn request(&self, method: &[u8]) {
        let _ = method;
    }
    /// `sipedge_replies_received_total{class="1xx".."6xx"}`.
    pub fn reply(&self, code: u16) {
        let _ = code;
    }
    /// `sipedge_forwarded_total{kind="request"|"reply"}`.
    pub fn forwarded_request(&self) {}
    pub fn forwarded_reply(&self) {}
    /// `sipedge_local_replies_total{code}`.
    pub fn local_reply(&self, code: u16) {
        let _ = code;
    }
    /// `sipedge_dropped_total{reason}`.
    pub fn dropped(&self, reason: DropReason) {
        let _ = reason;
    }
    /// `sipedge_parse_failures_total{transport}`.
    pub fn parse_failure(&self, t: Transport) {
        let _ = t;
    }
    /// `sipedge_nosip_total{verdict="drop"|"pass"|"error"}`.
    pub fn nosip(&self, v: NosipVerdict) {
        let _ = v;
    }
    /// `sipedge_keepalives_total{kind="ping"|"pong"}`: CRLFCRLF pings answered.
    pub fn keepalive_ping(&self) {}
    /// `sipedge_tcp_accepted_total`, `sipedge_tcp_connections` gauge (+1).
    pub fn tcp_opened(&self, outbound: bool) {
        let _ = outbound;
    }
    /// `sipedge_tcp_released_total{reason}`, gauge (-1).
    pub fn tcp_released(&self, reason: ReleaseReason) {
        let _ = reason;
    }
    /// `sipedge_tcp_refused_total` (limits: table full with nothing to evict, per-IP cap).
    pub fn tcp_refused(&self) {}
    /// `sipedge_bytes_received_total{transport}` / `sipedge_bytes_sent_total{transport}`.
    pub fn bytes_in(&self, t: Transport, n: usize) {
        let _ = (t, n);
    }
    pub fn bytes_out(&self, t: Transport, n: usize) {
        let _ = (t, n);
    }
    /// `sipedge_forward_latency_seconds` histogram: receive → handed to the socket.
    pub fn forward_latency(&self, secs: f64) {
        let _ = secs;
    }
    /// Text exposition format.
    pub fn encode(&self) -> String {
        todo!()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serve `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let _ = (addr, metrics);
    todo!()
}

/// Serve `GET /metrics` on an already bound listener.
pub async fn serve_listener(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let _ = (listener, metrics);
    todo!()
}
