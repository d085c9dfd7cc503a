//! One send / dispatch path for both backends: what the core produced is
//! sent through an [`Egress`] (the backend's UDP, TCP and resolver) by the
//! synchronous [`Step`] — never an `.await` on the hot path.

use crate::config::Transport;
use crate::core::{ConnId, Core, Dest, DropReason, Outcome, RcvInfo, Scratch, SendKind};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What became of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    Sent,
    /// Not queued: treat as not sent.
    WouldBlock,
    Failed,
}

/// What a backend provides to the synchronous per-message step.
pub trait Egress {
    /// UDP from the listen socket `dest.local` (or one of dest's family).
    fn send_udp(&mut self, dest: &Dest, out: &[u8]) -> SendResult;
    /// TCP: the connection `dest.conn` if still open (RFC 3261 §18.2.2),
    /// else an open one to `dest.addr`, else open an outbound connection
    /// (data queued until connected).
    fn send_tcp(&mut self, dest: &Dest, out: &[u8]) -> SendResult;
    /// Host-name next hop not in the DNS cache: resolve off the hot path
    /// (kernel: a task; stack: the resolver thread), then the backend calls
    /// [`Step::deliver_resolved`].
    fn resolve_later(&mut self, p: Pending);
}

/// A message waiting for its next hop's name to resolve (both backends).
pub struct Pending {
    pub host: String,
    pub dest: Dest,
    pub kind: SendKind,
    pub out: Vec<u8>,
    pub received_at: Instant,
}

/// Shared context of the step (both backends have these).
pub struct Step<'a> {
    pub core: &'a Core,
    pub metrics: &'a Metrics,
    pub dns: &'a DnsCache,
}

impl Step<'_> {
    /// Send what `receive_msg` / `receive_datagram` produced (Send /
    /// Resolve / Txn); the rest sends nothing.
    pub fn dispatch(
        &self,
        eg: &mut impl Egress,
        outcome: Outcome,
        sc: &Scratch,
        received_at: Instant,
    ) {
        match outcome {
            Outcome::Txn => self.deliver_txn(eg, &sc.txn, received_at),
            Outcome::Send { dest, kind } => {
                self.deliver(eg, &dest, kind, &sc.out, received_at, false);
            }
            Outcome::Resolve { dest, kind } => match self.dns.get(&sc.resolve) {
                Some(ip) => {
                    let mut d = dest;
                    d.addr.set_ip(ip);
                    self.deliver(eg, &d, kind, &sc.out, received_at, true);
                }
                None => eg.resolve_later(Pending {
                    host: sc.resolve.clone(),
                    dest,
                    kind,
                    out: sc.out.clone(),
                    received_at,
                }),
            },
            _ => {}
        }
    }

    /// The resolver answered for `p` (`ip`: None when the name does not
    /// resolve: dropped, NoRoute): cache the address, then send.
    pub fn deliver_resolved(
        &self,
        eg: &mut impl Egress,
        p: &Pending,
        ip: Option<std::net::IpAddr>,
    ) {
        let Some(ip) = ip else {
            tracing::debug!(host = %p.host, "next hop does not resolve");
            self.metrics.dropped(DropReason::NoRoute);
            return;
        };
        self.dns.put(&p.host, ip);
        let mut d = p.dest;
        d.addr.set_ip(ip);
        self.deliver(eg, &d, p.kind, &p.out, p.received_at, true);
    }

    /// One send and its counting. `resolved`: the address came from a host
    /// name, so it may turn out to be our own (dropped as a loop). `true`:
    /// sent.
    pub fn deliver(
        &self,
        eg: &mut impl Egress,
        dest: &Dest,
        kind: SendKind,
        out: &[u8],
        received_at: Instant,
        resolved: bool,
    ) -> bool {
        if resolved_to_self(self.core, self.metrics, dest, resolved) {
            return false;
        }
        let r = match dest.transport {
            Transport::Udp => eg.send_udp(dest, out),
            Transport::Tcp => eg.send_tcp(dest, out),
        };
        let ok = r == SendResult::Sent;
        count_send(self.metrics, dest, kind, out.len(), received_at, ok);
        ok
    }

    /// Stateful mode: the transaction layer's sends; a try that cannot be
    /// sent fails over at once (bounded: each round uses up a try).
    pub fn deliver_txn(
        &self,
        eg: &mut impl Egress,
        out: &crate::core::transaction::Out,
        received_at: Instant,
    ) {
        let mut failed = Vec::new();
        for s in &out.sends {
            if !self.deliver(eg, &s.dest, s.kind, out.bytes(s), received_at, false)
                && let Some(r) = s.txn
            {
                failed.push(r);
            }
        }
        if failed.is_empty() {
            return;
        }
        let mut next = crate::core::transaction::Out::default();
        for _ in 0..crate::core::transaction::MAX_TRIES {
            if failed.is_empty() {
                break;
            }
            next.clear();
            for r in failed.drain(..) {
                self.core.transaction_send_failed(r, &mut next);
            }
            for s in &next.sends {
                if !self.deliver(eg, &s.dest, s.kind, next.bytes(s), received_at, false)
                    && let Some(r) = s.txn
                {
                    failed.push(r);
                }
            }
        }
    }

    /// The datagram receive body: bytes_in, RcvInfo, the core, dispatch.
    pub fn receive_datagram(
        &self,
        eg: &mut impl Egress,
        data: &[u8],
        src: SocketAddr,
        local: usize,
        sc: &mut Scratch,
        received_at: Instant,
    ) {
        self.metrics.bytes_in(Transport::Udp, data.len());
        let rcv = rcv_udp(src, local);
        let outcome = self.core.receive_datagram(data, &rcv, sc);
        self.dispatch(eg, outcome, sc, received_at);
    }
}

/// RcvInfo of a message read from a TCP connection.
pub fn rcv_tcp(peer: SocketAddr, local: usize, conn: ConnId, outbound: bool) -> RcvInfo {
    RcvInfo {
        src: peer,
        local,
        transport: Transport::Tcp,
        conn: Some(conn),
        outbound,
    }
}

/// RcvInfo of a datagram.
pub fn rcv_udp(src: SocketAddr, local: usize) -> RcvInfo {
    RcvInfo {
        src,
        local,
        transport: Transport::Udp,
        conn: None,
        outbound: false,
    }
}

/// The socket to send a datagram from: `dest.local` if its family matches,
/// else the first of dest's family. `locals[i]`: the address of listen
/// index `i`'s socket of this transport (`None`: no such socket).
pub fn pick_local(locals: &[Option<SocketAddr>], dest: &Dest) -> Option<usize> {
    let v4 = dest.addr.is_ipv4();
    match locals.get(dest.local) {
        Some(Some(a)) if a.is_ipv4() == v4 => Some(dest.local),
        _ => locals
            .iter()
            .position(|a| a.is_some_and(|a| a.is_ipv4() == v4)),
    }
}

/// A small cache of host name → address, so a dialog's requests do not each
/// wait for the resolver. Bounded; entries live [`DNS_TTL`].
#[derive(Debug, Default)]
pub struct DnsCache {
    map: std::sync::RwLock<std::collections::HashMap<String, (std::net::IpAddr, Instant)>>,
}

/// How long a resolved name is reused.
pub const DNS_TTL: Duration = Duration::from_secs(60);
/// Names kept at most (the cache is emptied when full).
const DNS_CACHE_MAX: usize = 4096;

impl DnsCache {
    pub(crate) fn get(&self, host: &str) -> Option<std::net::IpAddr> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.get(host)
            .filter(|(_, at)| at.elapsed() < DNS_TTL)
            .map(|(ip, _)| *ip)
    }

    pub(crate) fn put(&self, host: &str, ip: std::net::IpAddr) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DNS_CACHE_MAX {
            m.clear();
        }
        m.insert(host.to_string(), (ip, Instant::now()));
    }
}

/// A next hop that came from a host name (`resolved`) and turned out to be
/// this proxy: a loop, dropped and counted. Both backends check it.
pub(crate) fn resolved_to_self(
    core: &Core,
    metrics: &Metrics,
    dest: &Dest,
    resolved: bool,
) -> bool {
    let looped = resolved && core.is_local_addr(dest.addr, dest.transport);
    if looped {
        metrics.dropped(DropReason::Loop);
    }
    looped
}

/// Count what became of one send, for both backends: bytes out and the
/// forwarding latency of requests and replies, or a `send_failed` drop.
pub(crate) fn count_send(
    metrics: &Metrics,
    dest: &Dest,
    kind: SendKind,
    out_len: usize,
    received_at: Instant,
    ok: bool,
) {
    if ok {
        metrics.bytes_out(dest.transport, out_len);
        if matches!(kind, SendKind::Request | SendKind::Reply) {
            metrics.forward_latency(received_at.elapsed().as_secs_f64());
        }
    } else {
        metrics.dropped(DropReason::SendFailed);
        tracing::debug!(dest = %dest.addr, transport = dest.transport.as_str(), "send failed");
    }
}

/// The address a host-name next hop resolves to: the first of the family
/// our Via names (`want_v4`), else the first of any family.
pub(crate) fn pick_addr(
    addrs: impl IntoIterator<Item = std::net::SocketAddr>,
    want_v4: bool,
) -> Option<std::net::SocketAddr> {
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() == want_v4 {
            return Some(a);
        }
        first.get_or_insert(a);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::nosip::NoneHook;
    use std::sync::Arc;

    /// An egress that records what it was asked to do.
    struct Mock {
        result: SendResult,
        sent: Vec<(Transport, SocketAddr, Vec<u8>)>,
        resolve: Vec<(String, Dest)>,
    }

    impl Mock {
        fn new(result: SendResult) -> Self {
            Mock {
                result,
                sent: Vec::new(),
                resolve: Vec::new(),
            }
        }
    }

    impl Egress for Mock {
        fn send_udp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
            self.sent.push((Transport::Udp, dest.addr, out.to_vec()));
            self.result
        }
        fn send_tcp(&mut self, dest: &Dest, out: &[u8]) -> SendResult {
            self.sent.push((Transport::Tcp, dest.addr, out.to_vec()));
            self.result
        }
        fn resolve_later(&mut self, p: Pending) {
            self.resolve.push((p.host, p.dest));
        }
    }

    struct Rig {
        core: Core,
        metrics: Arc<Metrics>,
        dns: DnsCache,
    }

    impl Rig {
        fn new() -> Rig {
            let metrics = Arc::new(Metrics::new());
            let cfg = Config::default_config();
            let core = Core::new(&cfg, Box::new(NoneHook), metrics.clone());
            Rig {
                core,
                metrics,
                dns: DnsCache::default(),
            }
        }
        fn step(&self) -> Step<'_> {
            Step {
                core: &self.core,
                metrics: &self.metrics,
                dns: &self.dns,
            }
        }
        /// `deliver` of `out` to `d` through a Mock answering `result`:
        /// whether it counted as sent, and the Mock.
        fn deliver(
            &self,
            result: SendResult,
            d: &Dest,
            out: &[u8],
            resolved: bool,
        ) -> (bool, Mock) {
            let mut eg = Mock::new(result);
            let sent =
                self.step()
                    .deliver(&mut eg, d, SendKind::Request, out, Instant::now(), resolved);
            (sent, eg)
        }
        fn metric(&self, series: &str) -> f64 {
            self.metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        }
    }

    #[test]
    fn deliver_counts_bytes_when_sent_and_send_failed_when_not() {
        let r = Rig::new();
        let d = dest("192.0.2.9:5060", 0);
        assert!(r.deliver(SendResult::Sent, &d, b"abc", false).0);
        assert_eq!(r.metric("sipedge_bytes_sent_total{transport=\"udp\"}"), 3.0);
        assert!(!r.deliver(SendResult::WouldBlock, &d, b"abc", false).0);
        assert_eq!(
            r.metric("sipedge_dropped_total{reason=\"send_failed\"}"),
            1.0
        );
        assert_eq!(r.metric("sipedge_bytes_sent_total{transport=\"udp\"}"), 3.0);
    }

    #[test]
    fn next_hop_name_not_cached_is_resolved_later_cached_one_is_sent() {
        let r = Rig::new();
        let mut sc = Scratch::new();
        sc.resolve = "next.example".into();
        sc.out = b"INVITE".to_vec();
        let outcome = Outcome::Resolve {
            dest: dest("0.0.0.0:5080", 0),
            kind: SendKind::Request,
        };
        let mut eg = Mock::new(SendResult::Sent);
        r.step().dispatch(&mut eg, outcome, &sc, Instant::now());
        assert_eq!(eg.resolve.len(), 1);
        assert_eq!(eg.resolve[0].0, "next.example");
        assert!(eg.sent.is_empty(), "no send before the name resolves");
        r.dns.put("next.example", "192.0.2.7".parse().unwrap());
        r.step().dispatch(&mut eg, outcome, &sc, Instant::now());
        assert_eq!(eg.resolve.len(), 1);
        let to: SocketAddr = "192.0.2.7:5080".parse().unwrap();
        assert_eq!(eg.sent, vec![(Transport::Udp, to, b"INVITE".to_vec())]);
    }

    #[test]
    fn resolved_next_hop_is_cached_and_sent_unresolvable_one_dropped_no_route() {
        let r = Rig::new();
        let p = Pending {
            host: "next.example".into(),
            dest: dest("0.0.0.0:5080", 0),
            kind: SendKind::Request,
            out: b"INVITE".to_vec(),
            received_at: Instant::now(),
        };
        let mut eg = Mock::new(SendResult::Sent);
        r.step().deliver_resolved(&mut eg, &p, None);
        assert!(eg.sent.is_empty());
        assert_eq!(r.metric("sipedge_dropped_total{reason=\"no_route\"}"), 1.0);
        assert_eq!(r.dns.get("next.example"), None);
        let ip = "192.0.2.7".parse().unwrap();
        r.step().deliver_resolved(&mut eg, &p, Some(ip));
        let to: SocketAddr = "192.0.2.7:5080".parse().unwrap();
        assert_eq!(eg.sent, vec![(Transport::Udp, to, b"INVITE".to_vec())]);
        assert_eq!(r.dns.get("next.example"), Some(ip));
    }

    #[test]
    fn next_hop_name_resolving_to_the_proxy_is_a_loop() {
        let r = Rig::new();
        // the default config listens on udp:127.0.0.1:5060
        let d = dest("127.0.0.1:5060", 0);
        let (sent, eg) = r.deliver(SendResult::Sent, &d, b"x", true);
        assert!(!sent);
        assert!(eg.sent.is_empty());
        assert_eq!(r.metric("sipedge_dropped_total{reason=\"loop\"}"), 1.0);
    }

    #[test]
    fn datagram_receive_answers_options_to_the_proxy_through_the_egress() {
        let r = Rig::new();
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let msg = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-egress-1\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:5060>\r\n\
Call-ID: egress-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let mut eg = Mock::new(SendResult::Sent);
        let mut sc = Scratch::new();
        r.step()
            .receive_datagram(&mut eg, msg, src, 0, &mut sc, Instant::now());
        assert_eq!(eg.sent.len(), 1);
        let (t, to, out) = &eg.sent[0];
        assert_eq!((*t, *to), (Transport::Udp, src));
        assert!(
            out.starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(out)
        );
        assert_eq!(
            r.metric("sipedge_bytes_received_total{transport=\"udp\"}"),
            msg.len() as f64
        );
    }

    fn dest(addr: &str, local: usize) -> Dest {
        Dest {
            transport: Transport::Udp,
            addr: addr.parse().unwrap(),
            conn: None,
            local,
        }
    }

    #[test]
    fn reply_socket_is_dest_local_when_its_family_matches() {
        let v4: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let locals = [Some(v4), None, Some(v6)];
        assert_eq!(pick_local(&locals, &dest("192.0.2.9:1", 0)), Some(0));
        // dest.local is v4, dest is v6: the first v6 socket
        assert_eq!(pick_local(&locals, &dest("[2001:db8::9]:1", 0)), Some(2));
        // dest.local has no socket of this transport
        assert_eq!(pick_local(&locals, &dest("192.0.2.9:1", 1)), Some(0));
        assert_eq!(pick_local(&[Some(v4)], &dest("[2001:db8::9]:1", 0)), None);
    }
}
