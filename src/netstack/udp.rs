//! UDP (RFC 768, SPEC B.2): sockets bound by (family, port), receive with
//! length and checksum checks (IPv6: the checksum is mandatory, RFC 8200
//! §8.1), port unreachable for closed ports, errors from ICMP delivered to
//! the socket that sent the offending datagram.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, UdpPacket, UdpRepr};

use super::{
    DropReason, Instant, IpRx, Limits, Mib, RxMeta, SocketError, SocketErrorKind, SocketEvent,
    Stack, StackError,
};

/// A UDP socket of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpHandle(pub(crate) u32);

/// One received datagram. Give `data` back with [`Stack::recycle`] to reuse
/// the buffer.
#[derive(Debug)]
pub struct UdpDatagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Sock {
    local: SocketAddr,
    rx: VecDeque<UdpDatagram>,
    err: Option<SocketError>,
}

/// All UDP sockets.
#[derive(Debug)]
pub struct UdpTable {
    socks: Vec<Option<Sock>>,
    free: Vec<u32>,
    open: usize,
    /// (is_v6, port) → socket index.
    ports: HashMap<(bool, u16), u32>,
    max: usize,
    rxq: usize,
    next_ephemeral: u16,
}

const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

impl UdpTable {
    pub fn new(l: &Limits) -> Self {
        UdpTable {
            socks: Vec::new(),
            free: Vec::new(),
            open: 0,
            ports: HashMap::new(),
            max: l.udp_sockets,
            rxq: l.udp_rx_queue,
            next_ephemeral: *EPHEMERAL.start(),
        }
    }

    /// Open sockets.
    pub fn open(&self) -> usize {
        self.open
    }

    fn get(&self, h: UdpHandle) -> Result<&Sock, StackError> {
        self.socks
            .get(h.0 as usize)
            .and_then(|s| s.as_ref())
            .ok_or(StackError::BadHandle)
    }

    fn get_mut(&mut self, h: UdpHandle) -> Result<&mut Sock, StackError> {
        self.socks
            .get_mut(h.0 as usize)
            .and_then(|s| s.as_mut())
            .ok_or(StackError::BadHandle)
    }

    /// The socket receiving datagrams for `dst`.
    #[inline]
    fn lookup(&self, dst: SocketAddr) -> Option<u32> {
        let idx = *self.ports.get(&(dst.is_ipv6(), dst.port()))?;
        let s = self.socks[idx as usize].as_ref()?;
        (s.local.ip().is_unspecified() || s.local.ip() == dst.ip()).then_some(idx)
    }

    fn ephemeral(&mut self, v6: bool) -> Option<u16> {
        let span = (EPHEMERAL.end() - EPHEMERAL.start()) as u32 + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.ports.contains_key(&(v6, p)) {
                return Some(p);
            }
        }
        None
    }
}

fn mib(v6: bool, v4: Mib, v6m: Mib) -> Mib {
    if v6 { v6m } else { v4 }
}

impl Stack {
    /// Bind a UDP socket. The address must be unspecified or one of ours;
    /// port 0 picks an ephemeral port. One socket per (family, port).
    pub fn udp_bind(&mut self, addr: SocketAddr) -> Result<UdpHandle, StackError> {
        let ip = addr.ip();
        let ours = ip.is_unspecified()
            || match ip {
                IpAddr::V4(a) => self.is_our_v4(a),
                IpAddr::V6(a) => self.is_our_v6(a),
            };
        if !ours {
            return Err(StackError::AddrNotAvailable(ip));
        }
        let t = &mut self.udp;
        if t.open >= t.max {
            return Err(StackError::TooManySockets(t.max));
        }
        let v6 = addr.is_ipv6();
        let port = match addr.port() {
            0 => t.ephemeral(v6).ok_or(StackError::AddrInUse(addr))?,
            p if t.ports.contains_key(&(v6, p)) => return Err(StackError::AddrInUse(addr)),
            p => p,
        };
        let sock = Sock {
            local: SocketAddr::new(ip, port),
            rx: VecDeque::new(),
            err: None,
        };
        let idx = match t.free.pop() {
            Some(i) => {
                t.socks[i as usize] = Some(sock);
                i
            }
            None => {
                t.socks.push(Some(sock));
                (t.socks.len() - 1) as u32
            }
        };
        t.ports.insert((v6, port), idx);
        t.open += 1;
        Ok(UdpHandle(idx))
    }

    /// Close a socket, dropping what it had queued.
    pub fn udp_close(&mut self, h: UdpHandle) {
        let Some(slot) = self.udp.socks.get_mut(h.0 as usize) else {
            return;
        };
        if let Some(s) = slot.take() {
            self.udp.ports.remove(&(s.local.is_ipv6(), s.local.port()));
            self.udp.free.push(h.0);
            self.udp.open -= 1;
            for d in s.rx {
                self.recycle(d.data);
            }
        }
    }

    pub fn udp_local_addr(&self, h: UdpHandle) -> Result<SocketAddr, StackError> {
        Ok(self.udp.get(h)?.local)
    }

    /// The next queued datagram.
    pub fn udp_recv_from(&mut self, h: UdpHandle) -> Option<UdpDatagram> {
        self.udp.get_mut(h).ok()?.rx.pop_front()
    }

    /// Whether datagrams are queued on the socket.
    pub fn udp_pending(&self, h: UdpHandle) -> bool {
        self.udp.get(h).is_ok_and(|s| !s.rx.is_empty())
    }

    /// Report the socket readable again (a reader that stopped early after
    /// a batch, to give other sockets a turn).
    pub fn requeue_readable(&mut self, h: UdpHandle) {
        self.push_event(SocketEvent::UdpReadable(h));
    }

    /// Take the pending socket error (`SO_ERROR`).
    pub fn udp_take_error(&mut self, h: UdpHandle) -> Option<SocketError> {
        self.udp.get_mut(h).ok()?.err.take()
    }

    /// Send `data` to `dst`. Fails at once for an unroutable destination or
    /// a full transmit queue; a datagram waiting for neighbour resolution
    /// counts as sent (as in Linux).
    pub fn udp_send_to(
        &mut self,
        now: Instant,
        h: UdpHandle,
        dst: SocketAddr,
        data: &[u8],
    ) -> Result<(), StackError> {
        let local = self.udp.get(h)?.local;
        let v6 = dst.is_ipv6();
        if local.is_ipv6() != v6 {
            return Err(StackError::FamilyMismatch);
        }
        let max = if v6 { 65535 - 8 } else { 65535 - 20 - 8 };
        if data.len() > max {
            return Err(StackError::MessageTooLong(data.len()));
        }
        let repr = UdpRepr {
            src_port: local.port(),
            dst_port: dst.port(),
        };
        let l4_len = 8 + data.len();
        let res = match (local.ip(), dst.ip()) {
            (IpAddr::V4(l), IpAddr::V4(d)) => {
                let src = if l.is_unspecified() {
                    self.src_for_v4(d)
                        .ok_or(StackError::NetUnreachable(dst.ip()))?
                } else {
                    l
                };
                let (s, dd) = (IpAddress::Ipv4(src), IpAddress::Ipv4(d));
                self.ip_output(now, src, d, 17, None, l4_len, &mut |buf| {
                    emit_udp(&repr, buf, &s, &dd, data)
                })
            }
            (IpAddr::V6(l), IpAddr::V6(d)) => {
                let src = if l.is_unspecified() {
                    self.src_for_v6(d)
                        .ok_or(StackError::NetUnreachable(dst.ip()))?
                } else {
                    l
                };
                let (s, dd) = (IpAddress::Ipv6(src), IpAddress::Ipv6(d));
                self.ip6_output(now, src, d, 17, None, l4_len, &mut |buf| {
                    emit_udp(&repr, buf, &s, &dd, data)
                })
            }
            _ => return Err(StackError::FamilyMismatch),
        };
        match res {
            Ok(()) => self
                .counters
                .inc(mib(v6, Mib::UdpOutDatagrams, Mib::Udp6OutDatagrams)),
            Err(StackError::NoBufferSpace) => {
                self.counters
                    .inc(mib(v6, Mib::UdpSndbufErrors, Mib::Udp6SndbufErrors))
            }
            Err(_) => {}
        }
        res
    }

    /// `udp_rcv`: a UDP datagram (IP payload, after reassembly) for us.
    pub(crate) fn udp_rcv(&mut self, now: Instant, meta: &RxMeta, ip: &IpRx<'_>, l4: &[u8]) {
        let v6 = ip.src.is_ipv6();
        let in_errors = mib(v6, Mib::UdpInErrors, Mib::Udp6InErrors);
        if l4.len() < 8 {
            self.drop_pkt(DropReason::UdpTruncated, Some(in_errors));
            return;
        }
        let ulen = u16::from_be_bytes([l4[4], l4[5]]) as usize;
        if ulen < 8 || ulen > l4.len() {
            // "short packet": the length field claims more than arrived.
            self.drop_pkt(DropReason::UdpBadLength, Some(in_errors));
            return;
        }
        let l4 = &l4[..ulen];
        let pkt = UdpPacket::new_unchecked(l4);
        let csum = pkt.checksum();
        if csum == 0 && v6 {
            // RFC 8200 §8.1: a zero UDP checksum over IPv6 is invalid.
            self.drop_pkt(DropReason::UdpZeroChecksumV6, Some(Mib::Udp6InCsumErrors));
            self.counters.inc(in_errors);
            return;
        }
        if csum != 0 && meta.verify_l4_csum() {
            let (s, d) = (IpAddress::from(ip.src), IpAddress::from(ip.dst));
            if !pkt.verify_checksum(&s, &d) {
                self.drop_pkt(
                    DropReason::UdpBadChecksum,
                    Some(mib(v6, Mib::UdpInCsumErrors, Mib::Udp6InCsumErrors)),
                );
                self.counters.inc(in_errors);
                return;
            }
        }
        let src = SocketAddr::new(ip.src, pkt.src_port());
        let dst = SocketAddr::new(ip.dst, pkt.dst_port());
        let Some(idx) = self.udp.lookup(dst) else {
            self.drop_pkt(
                DropReason::UdpNoPort,
                Some(mib(v6, Mib::UdpNoPorts, Mib::Udp6NoPorts)),
            );
            self.icmp_unreach_for(now, ip, true);
            return;
        };
        let payload = &l4[8..];
        let full = self.udp.socks[idx as usize]
            .as_ref()
            .is_none_or(|s| s.rx.len() >= self.udp.rxq);
        if full {
            self.drop_pkt(
                DropReason::UdpRcvbufFull,
                Some(mib(v6, Mib::UdpRcvbufErrors, Mib::Udp6RcvbufErrors)),
            );
            self.counters.inc(in_errors);
            return;
        }
        let mut data = self.alloc_frame(payload.len());
        data.extend_from_slice(payload);
        let Some(sock) = self.udp.socks[idx as usize].as_mut() else {
            return;
        };
        let was_empty = sock.rx.is_empty();
        sock.rx.push_back(UdpDatagram { src, dst, data });
        self.counters
            .inc(mib(v6, Mib::UdpInDatagrams, Mib::Udp6InDatagrams));
        if was_empty {
            self.push_event(SocketEvent::UdpReadable(UdpHandle(idx)));
        }
    }

    /// An ICMP error quoted a datagram we sent from `local` to `remote`:
    /// report it on that socket. Returns whether a socket matched.
    pub(crate) fn udp_err(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        kind: SocketErrorKind,
    ) -> bool {
        let Some(idx) = self.udp.lookup(local) else {
            return false;
        };
        if let Some(s) = self.udp.socks[idx as usize].as_mut() {
            s.err = Some(SocketError { kind, remote });
        }
        self.push_event(SocketEvent::UdpError(UdpHandle(idx)));
        true
    }
}

fn emit_udp(repr: &UdpRepr, buf: &mut [u8], src: &IpAddress, dst: &IpAddress, data: &[u8]) {
    let mut pkt = UdpPacket::new_unchecked(buf);
    repr.emit(
        &mut pkt,
        src,
        dst,
        data.len(),
        |p| p.copy_from_slice(data),
        &ChecksumCapabilities::default(),
    );
}
