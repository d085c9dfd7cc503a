//! UDP (RFC 768, SPEC B.2): sockets bound by (family, port), receive with
//! length and checksum checks (IPv6: the checksum is mandatory, RFC 8200
//! §8.1), port unreachable for closed ports, errors from ICMP delivered to
//! the socket that sent the offending datagram.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, UdpPacket, UdpRepr};

use super::{
    DropReason, EPHEMERAL, Instant, IpRx, Limits, Mib, RxMeta, ShardId, SocketError,
    SocketErrorKind, SocketEvent, Stack, StackError,
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
    /// (is_v6, port) → socket index, directly indexed (no hashing on the
    /// receive path): `ports[(v6 << 16) | port]`, [`NO_SOCK`] when closed.
    ports: Box<[u32]>,
    max: usize,
    rxq: usize,
    next_ephemeral: u16,
}

/// An unused slot of [`UdpTable::ports`].
const NO_SOCK: u32 = u32::MAX;

#[inline]
fn port_slot(v6: bool, port: u16) -> usize {
    ((v6 as usize) << 16) | port as usize
}

impl UdpTable {
    pub fn new(l: &Limits) -> Self {
        UdpTable {
            socks: Vec::new(),
            free: Vec::new(),
            open: 0,
            ports: vec![NO_SOCK; 2 << 16].into_boxed_slice(),
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
        let idx = self.ports[port_slot(dst.is_ipv6(), dst.port())];
        if idx == NO_SOCK {
            return None;
        }
        let s = self.socks[idx as usize].as_ref()?;
        (s.local.ip().is_unspecified() || s.local.ip() == dst.ip()).then_some(idx)
    }

    /// A free ephemeral port of this shard (Linux `udp_lib_get_port` with
    /// port 0), or None when the shard's part of the range is used up.
    fn ephemeral(&mut self, v6: bool, shard: ShardId) -> Option<u16> {
        let ports = &self.ports;
        shard.pick_ephemeral(&mut self.next_ephemeral, |p| {
            ports[port_slot(v6, p)] == NO_SOCK
        })
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
            0 => t
                .ephemeral(v6, self.cfg.shard)
                .ok_or(StackError::AddrInUse(addr))?,
            p if t.ports[port_slot(v6, p)] != NO_SOCK => return Err(StackError::AddrInUse(addr)),
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
        t.ports[port_slot(v6, port)] = idx;
        t.open += 1;
        Ok(UdpHandle(idx))
    }

    /// Close a socket, dropping what it had queued.
    pub fn udp_close(&mut self, h: UdpHandle) {
        let Some(slot) = self.udp.socks.get_mut(h.0 as usize) else {
            return;
        };
        if let Some(s) = slot.take() {
            self.udp.ports[port_slot(s.local.is_ipv6(), s.local.port())] = NO_SOCK;
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
            if !self.cfg.shard.owns_port(dst.port()) {
                // Another shard's port, steered here by mistake: neither
                // NoPorts nor a port unreachable.
                self.counters.drop_reason(DropReason::OtherShard);
                return;
            }
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

/// The UDP header and data; `ip_output` / `ip6_output` fill the checksum
/// (`csum::finish_l4`).
fn emit_udp(repr: &UdpRepr, buf: &mut [u8], src: &IpAddress, dst: &IpAddress, data: &[u8]) {
    let mut pkt = UdpPacket::new_unchecked(buf);
    repr.emit(
        &mut pkt,
        src,
        dst,
        data.len(),
        |p| p.copy_from_slice(data),
        &ChecksumCapabilities::ignored(),
    );
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use smoltcp::wire::{EthernetFrame, Ipv4Packet};

    use super::super::testutil::*;
    use super::super::{EthernetAddress, RxChecksum, StackConfig};
    use super::*;

    fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
        SocketAddr::new(ip.into(), port)
    }

    const NOT_READY: RxMeta = RxMeta {
        pkt_type: super::super::PacketType::Host,
        l4_csum: RxChecksum::NotReady,
    };

    /// Set the UDP length field of an Ethernet+IPv4+UDP frame.
    fn set_udp_len4(f: &mut [u8], len: u16) {
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&len.to_be_bytes());
    }

    /// Append `extra` bytes to the IPv4 datagram (tot_len and header
    /// checksum fixed), leaving the UDP length alone.
    fn grow_ipv4(f: &mut Vec<u8>, extra: usize) {
        f.extend(std::iter::repeat_n(0xee, extra));
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        let tot = ip.total_len() + extra as u16;
        ip.set_total_len(tot);
        ip.fill_checksum();
    }

    fn bound(port: u16) -> (Stack, UdpHandle) {
        let mut s = ready_stack();
        let h = s.udp_bind(sa(Ipv4Addr::UNSPECIFIED, port)).unwrap();
        (s, h)
    }

    #[test]
    fn b2_udp_datagram_is_delivered_with_addresses() {
        let (mut s, h) = bound(5060);
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hi"),
        );
        let d = s.udp_recv_from(h).unwrap();
        assert_eq!(
            (d.src, d.dst, &d.data[..]),
            (sa(PEER4, 4000), sa(OUR4, 5060), &b"hi"[..])
        );
        assert_eq!(s.counters.get(Mib::UdpInDatagrams), 1);
        assert_eq!(s.poll_event(), Some(SocketEvent::UdpReadable(h)));
        assert!(s.pop_tx().is_none());
    }

    #[test]
    fn b2_udp_length_field_exceeding_the_data_is_dropped_in_errors() {
        let (mut s, h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        set_udp_len4(&mut f, 8 + 6);
        s.receive_frame(t0(), NOT_READY, &f);
        assert!(s.udp_recv_from(h).is_none());
        assert_eq!(s.counters.get(Mib::UdpInErrors), 1);
        assert_eq!(s.counters.drops(DropReason::UdpBadLength), 1);
        assert_eq!(s.counters.get(Mib::UdpInDatagrams), 0);
        assert!(s.pop_tx().is_none(), "no ICMP for a malformed datagram");
    }

    #[test]
    fn b2_udp_length_field_below_header_size_is_dropped() {
        let (mut s, _h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        set_udp_len4(&mut f, 7);
        s.receive_frame(t0(), NOT_READY, &f);
        assert_eq!(s.counters.drops(DropReason::UdpBadLength), 1);
        assert_eq!(s.counters.get(Mib::UdpInErrors), 1);
    }

    #[test]
    fn b2_udp_bytes_beyond_the_length_field_are_ignored() {
        let (mut s, h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        grow_ipv4(&mut f, 3);
        // the checksum covers the 5 payload bytes only: still valid
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(&s.udp_recv_from(h).unwrap().data[..], b"hello");
    }

    #[test]
    fn b2_udp_shorter_than_its_header_is_dropped() {
        let mut s = ready_stack();
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"");
        f.truncate(14 + 20 + 4);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_total_len(24);
        ip.fill_checksum();
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s.counters.drops(DropReason::UdpTruncated), 1);
        assert_eq!(s.counters.get(Mib::UdpInErrors), 1);
        assert!(s.pop_tx().is_none());
    }

    #[test]
    fn b2_udp_bad_checksum_counts_csum_and_in_errors_silently() {
        let (mut s, h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        let n = f.len();
        f[n - 1] ^= 0xff;
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert!(s.udp_recv_from(h).is_none());
        assert_eq!(s.counters.get(Mib::UdpInCsumErrors), 1);
        assert_eq!(s.counters.get(Mib::UdpInErrors), 1);
        assert_eq!(s.counters.drops(DropReason::UdpBadChecksum), 1);
        assert!(s.pop_tx().is_none());
    }

    #[test]
    fn udp_checksum_not_ready_from_veth_is_not_verified() {
        // TP_STATUS_CSUMNOTREADY: the field holds a partial sum only
        let (mut s, h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        f[14 + 20 + 6] ^= 0x5a;
        s.receive_frame(t0(), NOT_READY, &f);
        assert_eq!(&s.udp_recv_from(h).unwrap().data[..], b"hello");
        let valid = RxMeta {
            l4_csum: RxChecksum::Valid,
            ..NOT_READY
        };
        s.receive_frame(t0(), valid, &f);
        assert!(s.udp_recv_from(h).is_some());
        assert_eq!(s.counters.get(Mib::UdpInCsumErrors), 0);
    }

    #[test]
    fn b2_udp_zero_checksum_is_accepted_over_ipv4() {
        let (mut s, h) = bound(5060);
        let mut f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"hello");
        f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        s.receive_frame(t0(), RxMeta::HOST, &f);
        assert!(s.udp_recv_from(h).is_some());
    }

    #[test]
    fn b2_udp_receive_queue_full_counts_rcvbuf_errors() {
        let mut c = config();
        c.limits.udp_rx_queue = 2;
        let mut s = Stack::new(c, t0());
        let h = s.udp_bind(sa(OUR4, 5060)).unwrap();
        s.neigh_update(t0(), PEER4.into(), EthernetAddress(PEER_MAC), true);
        let f = udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"x");
        for _ in 0..3 {
            s.receive_frame(t0(), RxMeta::HOST, &f);
        }
        assert_eq!(s.counters.get(Mib::UdpInDatagrams), 2);
        assert_eq!(s.counters.get(Mib::UdpRcvbufErrors), 1);
        assert_eq!(s.counters.get(Mib::UdpInErrors), 1);
        assert_eq!(s.counters.drops(DropReason::UdpRcvbufFull), 1);
        // one readable event for the empty → non-empty transition
        assert_eq!(s.poll_event(), Some(SocketEvent::UdpReadable(h)));
        assert_eq!(s.poll_event(), None);
        assert!(s.udp_pending(h));
    }

    #[test]
    fn b2_udp_to_a_closed_port_counts_no_ports() {
        let mut s = ready_stack();
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 9, b"x"),
        );
        assert_eq!(s.counters.get(Mib::UdpNoPorts), 1);
        assert_eq!(s.counters.drops(DropReason::UdpNoPort), 1);
        assert_eq!(drain(&mut s).len(), 1, "one port unreachable");
    }

    #[test]
    fn bind_rules() {
        let mut s = ready_stack();
        let a = s.udp_bind(sa(OUR4, 5060)).unwrap();
        assert_eq!(
            s.udp_bind(sa(Ipv4Addr::UNSPECIFIED, 5060)),
            Err(StackError::AddrInUse(sa(Ipv4Addr::UNSPECIFIED, 5060)))
        );
        // the other family has its own ports
        s.udp_bind(sa(OUR6, 5060)).unwrap();
        let other = Ipv4Addr::new(198, 18, 0, 99);
        assert_eq!(
            s.udp_bind(sa(other, 1)),
            Err(StackError::AddrNotAvailable(other.into()))
        );
        let e1 = s.udp_bind(sa(OUR4, 0)).unwrap();
        let e2 = s.udp_bind(sa(OUR4, 0)).unwrap();
        let (p1, p2) = (
            s.udp_local_addr(e1).unwrap().port(),
            s.udp_local_addr(e2).unwrap().port(),
        );
        assert!(p1 != p2 && EPHEMERAL.contains(&p1) && EPHEMERAL.contains(&p2));
        s.udp_close(a);
        assert_eq!(s.udp_local_addr(a), Err(StackError::BadHandle));
        s.udp_bind(sa(OUR4, 5060)).unwrap();
        assert_eq!(s.usage().udp_sockets, 4);
    }

    #[test]
    fn socket_count_is_capped() {
        let mut c = config();
        c.limits.udp_sockets = 2;
        let mut s = Stack::new(c, t0());
        s.udp_bind(sa(OUR4, 1)).unwrap();
        s.udp_bind(sa(OUR4, 2)).unwrap();
        assert_eq!(s.udp_bind(sa(OUR4, 3)), Err(StackError::TooManySockets(2)));
    }

    #[test]
    fn closed_socket_no_longer_receives() {
        let (mut s, h) = bound(5060);
        s.udp_close(h);
        s.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 4000, 5060, b"x"),
        );
        assert_eq!(s.counters.get(Mib::UdpNoPorts), 1);
    }

    #[test]
    fn send_builds_a_valid_datagram() {
        let (mut s, h) = bound(5060);
        s.udp_send_to(t0(), h, sa(PEER4, 4000), b"reply").unwrap();
        let f = s.pop_tx().unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), OUR4);
        assert_eq!(ip.header().destination_addr(), PEER4);
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!((u.source_port(), u.destination_port()), (5060, 4000));
        assert_eq!(u.payload(), b"reply");
        let eth = EthernetFrame::new_unchecked(&f[..]);
        let ipp = Ipv4Packet::new_unchecked(eth.payload());
        let udp = UdpPacket::new_unchecked(ipp.payload());
        assert!(udp.verify_checksum(&OUR4.into(), &PEER4.into()));
        assert_eq!(s.counters.get(Mib::UdpOutDatagrams), 1);
    }

    #[test]
    fn send_errors() {
        let (mut s, h) = bound(5060);
        assert_eq!(
            s.udp_send_to(t0(), h, sa(PEER6, 1), b"x"),
            Err(StackError::FamilyMismatch)
        );
        let big = vec![0u8; 65535 - 20 - 8 + 1];
        assert_eq!(
            s.udp_send_to(t0(), h, sa(PEER4, 1), &big),
            Err(StackError::MessageTooLong(big.len()))
        );
        // no gateway: off-link destinations are unreachable
        let mut c: StackConfig = config();
        c.gateway4 = None;
        let mut s2 = Stack::new(c, t0());
        let h2 = s2.udp_bind(sa(OUR4, 5060)).unwrap();
        let far = Ipv4Addr::new(198, 19, 1, 1);
        assert_eq!(
            s2.udp_send_to(t0(), h2, sa(far, 1), b"x"),
            Err(StackError::NetUnreachable(far.into()))
        );
        assert_eq!(s2.counters.get(Mib::UdpOutDatagrams), 0);
    }

    #[test]
    fn b2_icmp_error_is_reported_on_the_sending_socket() {
        let (mut s, h) = bound(5060);
        assert!(s.udp_err(
            sa(OUR4, 5060),
            sa(PEER4, 4000),
            SocketErrorKind::ConnectionRefused
        ));
        assert_eq!(s.poll_event(), Some(SocketEvent::UdpError(h)));
        let e = s.udp_take_error(h).unwrap();
        assert_eq!(e.kind.io_kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(e.remote, sa(PEER4, 4000));
        assert!(s.udp_take_error(h).is_none());
        assert!(!s.udp_err(
            sa(OUR4, 1),
            sa(PEER4, 4000),
            SocketErrorKind::HostUnreachable
        ));
    }
}
