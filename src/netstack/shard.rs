//! The stack as one shard among N (issue 9). In afpacket mode N copies of
//! [`Stack`] share one MAC and one set of addresses, each fed by one socket
//! of a PACKET_FANOUT group whose program steers TCP/UDP to a local
//! ephemeral port to shard `port % N` and everything else to shard
//! `hash(source) % N`.
//!
//! Each shard keeps its own neighbour cache and sockets, with no locks.
//! A control frame that concerns all of them (ARP, NDP, ICMP errors) lands
//! on one shard, which processes it fully (and answers once); it also keeps
//! a copy in its replica outbox ([`Stack::pop_replica`]). The shard thread
//! posts the copies to the other shards, which learn from them with
//! [`Stack::receive_replica`]: neighbour entries (flushing packets waiting
//! on them) and socket errors, never an answer, never counted again in the
//! In counters.

use std::mem;

use super::{DropReason, Instant, Mib, PacketType, RxMeta, Stack};

/// Replica outbox bound: beyond it the oldest copy is dropped
/// (`replica_outbox_full`).
pub const REPLICA_OUTBOX_MAX: usize = 256;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Is this Ethernet frame control traffic every shard must see? ARP;
/// ICMPv4 errors the stack handles (destination unreachable, fragmentation
/// needed included; time exceeded; parameter problem) in an unfragmented
/// datagram; ICMPv6 errors (types 1-4) and NDP router advertisement,
/// neighbour solicitation and advertisement and redirect (134-137), with
/// ICMPv6 right after the fixed header (as NDP requires). Not echo, not
/// MLD, not data. Reads at most the first 55 bytes; never panics.
pub fn is_shared_control(frame: &[u8]) -> bool {
    let Some(et) = frame.get(12..14) else {
        return false;
    };
    let p = &frame[14..];
    match u16::from_be_bytes([et[0], et[1]]) {
        ETHERTYPE_ARP => true,
        ETHERTYPE_IPV4 => {
            if p.len() < 20 || p[0] >> 4 != 4 {
                return false;
            }
            let ihl = (p[0] & 0x0f) as usize * 4;
            // MF flag or a fragment offset: not a whole datagram
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff;
            ihl >= 20 && frag == 0 && p[9] == 1 && matches!(p.get(ihl), Some(3 | 11 | 12))
        }
        ETHERTYPE_IPV6 => {
            p.len() > 40 && p[0] >> 4 == 6 && p[6] == 58 && matches!(p[40], 1..=4 | 134..=137)
        }
        _ => false,
    }
}

impl Stack {
    /// A copy of a shared control frame another shard received and
    /// processed ([`Stack::pop_replica`] there). Learn only, as
    /// [`Stack::receive_frame`] would: ARP and NDP update the neighbour
    /// cache (sending packets that waited on it); ICMP errors reach the
    /// matching sockets (unmatched ones are ignored). Never answers (no ARP
    /// reply, no NA, no ICMP), never touches MLD, never goes to the outbox
    /// again. Counted only as `Shard ReplicasReceived`; anything that is
    /// not a shared control frame is dropped (`replica_not_control`).
    pub fn receive_replica(&mut self, now: Instant, meta: RxMeta, frame: &[u8]) {
        self.counters.inc(Mib::ShardReplicasReceived);
        if meta.pkt_type == PacketType::Outgoing || !is_shared_control(frame) {
            self.counters.drop_reason(DropReason::ReplicaNotControl);
            return;
        }
        // The In counters and drop reasons of the normal path go to a sink
        // (the frame was counted by the shard it arrived on); output it
        // causes is counted on the real counters (see `transmit`).
        mem::swap(&mut self.counters, &mut self.replica_swap);
        self.replicating = true;
        self.eth_rcv(now, meta, frame);
        self.replicating = false;
        mem::swap(&mut self.counters, &mut self.replica_swap);
    }

    /// The next shared control frame this shard processed, to post to every
    /// other shard (which calls [`Stack::receive_replica`]). Only when
    /// `shard.count > 1`. The buffer may be given back with
    /// [`Stack::recycle`] (to any shard) once every copy is delivered.
    pub fn pop_replica(&mut self) -> Option<(RxMeta, Vec<u8>)> {
        self.replicas.pop_front()
    }

    /// Copies waiting in the replica outbox.
    pub fn replicas_pending(&self) -> usize {
        self.replicas.len()
    }

    /// Keep a copy of a processed shared control frame.
    pub(crate) fn replica_keep(&mut self, meta: RxMeta, frame: &[u8]) {
        if self.replicas.len() >= REPLICA_OUTBOX_MAX {
            if let Some((_, old)) = self.replicas.pop_front() {
                self.recycle(old);
            }
            self.counters.drop_reason(DropReason::ReplicaOutboxFull);
        }
        let mut b = self.alloc_frame(frame.len());
        b.extend_from_slice(frame);
        self.replicas.push_back((meta, b));
        self.counters.inc(Mib::ShardReplicasQueued);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, Icmpv4Packet, Icmpv6Packet, IpAddress, Ipv4Packet, NdiscNeighborFlags,
        NdiscRepr, RawHardwareAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    use super::super::ipv4::tests::{eth4, ip4, tx_ip};
    use super::super::ipv6::tests::{eth_to, ip6, ip6_hop, ndisc_frame, out, udp6};
    use super::super::testutil::*;
    use super::super::{
        DropReason, EPHEMERAL, Mib, RxMeta, ShardId, SocketError, SocketErrorKind, Stack,
        StackConfig, StackError, TcpError, TcpState, multicast_mac_v6, solicited_node,
    };
    use super::*;

    const NEW4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
    const NEW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
    const NEW_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x05];

    fn shard_config(index: u16, count: u16) -> StackConfig {
        let mut c = config();
        c.shard = ShardId { index, count };
        c
    }

    /// Shard `index` of `count`, start-up frames drained, knowing the
    /// peer's and the gateways' MACs (as `ready_stack`).
    fn shard(index: u16, count: u16) -> Stack {
        ready_stack_with(shard_config(index, count))
    }

    /// Drain `from`'s outbox into every stack of `to` (the shard thread's
    /// job); returns how many copies there were.
    fn post_replicas(from: &mut Stack, to: &mut [&mut Stack]) -> usize {
        let mut n = 0;
        while let Some((meta, f)) = from.pop_replica() {
            for s in to.iter_mut() {
                s.receive_replica(t0(), meta, &f);
            }
            from.recycle(f);
            n += 1;
        }
        n
    }

    fn arp_frame(dst: [u8; 6], op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa.octets());
        f.extend_from_slice(&if op == 2 { OUR_MAC } else { [0; 6] });
        f.extend_from_slice(&tpa.octets());
        f
    }

    /// An ICMPv4 message with a correct checksum.
    fn icmp4(t: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![t, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(body);
        Icmpv4Packet::new_unchecked(&mut m[..]).fill_checksum();
        m
    }

    /// An ICMPv6 message from `src` to `dst` with a correct checksum.
    fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, t: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![t, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(body);
        Icmpv6Packet::new_unchecked(&mut m[..]).fill_checksum(&src, &dst);
        m
    }

    fn tcp_seg(
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: Option<u32>,
        control: TcpControl,
        mss: Option<u16>,
    ) -> Vec<u8> {
        let r = TcpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 65535,
            window_scale: None,
            max_seg_size: mss,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(
            &mut TcpPacket::new_unchecked(&mut b[..]),
            &IpAddress::from(src.ip()),
            &IpAddress::from(dst.ip()),
            &ChecksumCapabilities::default(),
        );
        b
    }

    /// The TCP header of an emitted IPv4 frame.
    fn tcp_of(frame: &[u8]) -> (u16, u16, u32, u8) {
        let ip = Ipv4Packet::new_checked(tx_ip(frame)).expect("ipv4");
        assert_eq!(u8::from(ip.next_header()), 6);
        let t = TcpPacket::new_checked(ip.payload()).expect("tcp");
        let flags = ip.payload()[13];
        (t.src_port(), t.dst_port(), t.seq_number().0 as u32, flags)
    }

    // ----- 0. start-up announcements -----

    #[test]
    fn shard_start_up_announcements_come_from_shard_zero_only() {
        let single = drain(&mut Stack::new(config(), t0()));
        assert!(!single.is_empty(), "ARP, MLD report, NA at start");
        let zero = drain(&mut Stack::new(shard_config(0, 2), t0()));
        assert_eq!(zero, single);
        let mut one = Stack::new(shard_config(1, 2), t0());
        assert!(drain(&mut one).is_empty());
        // Nor is the MLD report repeated by shard 1 later.
        one.poll(t0() + smoltcp::time::Duration::from_secs(30));
        assert!(drain(&mut one).is_empty());
    }

    // ----- 1. own ephemeral partition -----

    #[test]
    fn shard_ephemeral_ports_are_its_own_partition() {
        for count in [2u16, 3] {
            for index in 0..count {
                let mut s = shard(index, count);
                for i in 0..50u16 {
                    let h = s.udp_bind(SocketAddr::new(OUR4.into(), 0)).unwrap();
                    let p = s.udp_local_addr(h).unwrap().port();
                    assert!(EPHEMERAL.contains(&p) && p % count == index, "udp {p}");
                    let h = s
                        .tcp_connect(t0(), None, SocketAddr::new(PEER4.into(), 5060 + i))
                        .unwrap();
                    let p = s.tcp(h).unwrap().local_addr().port();
                    assert!(EPHEMERAL.contains(&p) && p % count == index, "tcp {p}");
                }
            }
        }
    }

    #[test]
    fn shard_ephemeral_partition_exhausted_is_an_error() {
        // 28000 shards: shard 5 owns only 56005 in 32768..=60999.
        let mut s = shard(5, 28000);
        let h = s.udp_bind(SocketAddr::new(OUR4.into(), 0)).unwrap();
        assert_eq!(s.udp_local_addr(h).unwrap().port(), 56005);
        let any = SocketAddr::new(OUR4.into(), 0);
        assert_eq!(s.udp_bind(any), Err(StackError::AddrInUse(any)));
        let h = s
            .tcp_connect(t0(), None, SocketAddr::new(PEER4.into(), 5060))
            .unwrap();
        assert_eq!(s.tcp(h).unwrap().local_addr().port(), 56005);
        assert_eq!(
            s.tcp_connect(t0(), None, SocketAddr::new(PEER4.into(), 5061))
                .err(),
            Some(TcpError::AddrNotAvailable)
        );
        // a shard that owns no ephemeral port at all
        let mut s = shard(1000, 60000);
        assert_eq!(
            ShardId {
                index: 1000,
                count: 60000
            }
            .ephemeral_ports(),
            0
        );
        assert_eq!(s.udp_bind(any), Err(StackError::AddrInUse(any)));
        assert_eq!(
            s.tcp_connect(t0(), None, SocketAddr::new(PEER4.into(), 5060))
                .err(),
            Some(TcpError::AddrNotAvailable)
        );
    }

    #[test]
    fn shard_partition_sizes_add_up_to_the_range() {
        let total = (*EPHEMERAL.end() - *EPHEMERAL.start()) as u32 + 1;
        for count in [1u16, 2, 3, 7, 64] {
            let sum: u32 = (0..count)
                .map(|index| ShardId { index, count }.ephemeral_ports())
                .sum();
            assert_eq!(sum, total, "{count} shards");
        }
        assert_eq!(ShardId::default(), ShardId::SINGLE);
        assert_eq!(ShardId::default().ephemeral_ports(), total);
    }

    // ----- 2. misdirected segments -----

    #[test]
    fn shard_misdirected_tcp_segment_gets_no_rst_and_is_counted() {
        let mut s0 = shard(0, 2);
        let (peer, other) = (
            SocketAddr::new(PEER4.into(), 5060),
            SocketAddr::new(OUR4.into(), 40001),
        );
        let seg = tcp_seg(peer, other, 1, Some(1), TcpControl::None, None);
        s0.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 6, 1, &seg)));
        assert!(drain(&mut s0).is_empty(), "no RST for shard 1's port");
        assert_eq!(s0.counters.drops(DropReason::OtherShard), 1);
        assert_eq!(s0.counters.drops(DropReason::TcpNoSocket), 0);
        // its own ephemeral port, no connection: RST as always
        let own = SocketAddr::new(OUR4.into(), 40000);
        let seg = tcp_seg(peer, own, 1, Some(1), TcpControl::None, None);
        s0.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 6, 2, &seg)));
        let out = drain(&mut s0);
        assert_eq!(out.len(), 1);
        assert_eq!(tcp_of(&out[0]).3 & 0x04, 0x04, "RST");
        // a port outside the ephemeral range belongs to every shard
        let listen = SocketAddr::new(OUR4.into(), 5061);
        let seg = tcp_seg(peer, listen, 1, Some(1), TcpControl::None, None);
        s0.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 6, 3, &seg)));
        assert_eq!(drain(&mut s0).len(), 1);
        assert_eq!(s0.counters.drops(DropReason::OtherShard), 1);
    }

    #[test]
    fn shard_misdirected_udp_datagram_gets_no_port_unreachable_and_is_counted() {
        let mut s1 = shard(1, 2);
        s1.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp6_frame(OUR_MAC, PEER6, OUR6, 5060, 40000, b"x"),
        );
        s1.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 5060, 40002, b"x"),
        );
        assert!(drain(&mut s1).is_empty());
        assert_eq!(s1.counters.drops(DropReason::OtherShard), 2);
        assert_eq!(s1.counters.get(Mib::UdpNoPorts), 0);
        assert_eq!(s1.counters.get(Mib::Udp6NoPorts), 0);
        // its own port: port unreachable as always
        s1.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 5060, 40001, b"x"),
        );
        assert_eq!(drain(&mut s1).len(), 1);
        assert_eq!(s1.counters.get(Mib::UdpNoPorts), 1);
    }

    // ----- 3. shared control frames -----

    #[test]
    fn shard_arp_reply_replica_flushes_the_packet_pending_on_the_other_shard() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let h = s1.udp_bind(SocketAddr::new(OUR4.into(), 0)).unwrap();
        s1.udp_send_to(t0(), h, SocketAddr::new(NEW4.into(), 7000), b"queued")
            .unwrap();
        let who_has = drain(&mut s1);
        assert_eq!(who_has.len(), 1);
        assert_eq!(u16::from_be_bytes([who_has[0][12], who_has[0][13]]), 0x0806);
        let out0 = s0.counters.get(Mib::LinkOutFrames);
        let out1 = s1.counters.get(Mib::LinkOutFrames);

        // the reply lands on shard 0, which processes (and counts) it
        let reply = arp_frame(OUR_MAC, 2, NEW_MAC, NEW4, OUR4);
        s0.receive_frame(t0(), RxMeta::HOST, &reply);
        assert!(drain(&mut s0).is_empty());
        assert_eq!(s0.counters.get(Mib::ArpInReplies), 1);
        assert_eq!(s0.counters.get(Mib::ShardReplicasQueued), 1);
        // no entry of its own: a reply refreshes only (arp_accept=0)
        assert_eq!(s0.neighbor(t0(), NEW4.into()), None);

        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        let frames = drain(&mut s1);
        assert_eq!(frames.len(), 1, "exactly the pending datagram");
        assert_eq!(&frames[0][..6], &NEW_MAC);
        let ip = Ipv4Packet::new_checked(tx_ip(&frames[0])).unwrap();
        assert_eq!((ip.dst_addr(), u8::from(ip.next_header())), (NEW4, 17));
        assert_eq!(&ip.payload()[8..], b"queued");
        assert_eq!(
            s1.neighbor(t0(), NEW4.into()),
            Some(EthernetAddress(NEW_MAC))
        );
        // the replica is counted once, as a replica; its output is real
        assert_eq!(s1.counters.get(Mib::ShardReplicasReceived), 1);
        assert_eq!(s1.counters.get(Mib::ArpInReplies), 0);
        assert_eq!(s1.counters.get(Mib::LinkInFrames), 0);
        assert_eq!(s1.counters.get(Mib::LinkOutFrames), out1 + 1);
        assert_eq!(s0.counters.get(Mib::LinkOutFrames), out0);
        assert_eq!(s1.counters.total_drops(), 0);
        // a replica never enters the outbox again
        assert_eq!(s1.pop_replica(), None);
        assert!(drain(&mut s0).is_empty());
    }

    #[test]
    fn shard_na_replica_flushes_the_packet_pending_on_the_other_shard() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let h = s1.udp_bind(SocketAddr::new(OUR6.into(), 0)).unwrap();
        s1.udp_send_to(t0(), h, SocketAddr::new(NEW6.into(), 7000), b"queued")
            .unwrap();
        let ns = drain(&mut s1);
        assert_eq!(ns.len(), 1);
        assert_eq!(out(&ns[0]).dst, solicited_node(NEW6));
        let out1 = s1.counters.get(Mib::LinkOutFrames);

        let na = NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            target_addr: NEW6,
            lladdr: Some(EthernetAddress(NEW_MAC).into()),
        };
        s0.receive_frame(
            t0(),
            RxMeta::HOST,
            &ndisc_frame(NEW6, OUR6, 255, na, OUR_MAC),
        );
        assert!(drain(&mut s0).is_empty());
        assert_eq!(s0.counters.get(Mib::Icmp6InNeighborAdvertisements), 1);

        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        let frames = drain(&mut s1);
        assert_eq!(frames.len(), 1, "exactly the pending datagram");
        let o = out(&frames[0]);
        assert_eq!((o.eth_dst, o.dst, o.nh), (NEW_MAC, NEW6, 17));
        assert_eq!(&o.payload[8..], b"queued");
        assert_eq!(s1.counters.get(Mib::Icmp6InNeighborAdvertisements), 0);
        assert_eq!(s1.counters.get(Mib::Icmp6InMsgs), 0);
        assert_eq!(s1.counters.get(Mib::Ip6InReceives), 0);
        assert_eq!(s1.counters.get(Mib::ShardReplicasReceived), 1);
        assert_eq!(s1.counters.get(Mib::LinkOutFrames), out1 + 1);
        assert_eq!(s1.pop_replica(), None);
        assert!(drain(&mut s0).is_empty());
    }

    #[test]
    fn shard_arp_request_replica_learns_and_sends_no_reply() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let req = arp_frame([0xff; 6], 1, NEW_MAC, NEW4, OUR4);
        s0.receive_frame(t0(), RxMeta::HOST, &req);
        assert_eq!(drain(&mut s0).len(), 1, "shard 0 answers, once");
        assert_eq!(s0.counters.get(Mib::ArpOutReplies), 1);
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert!(drain(&mut s1).is_empty(), "no second reply");
        assert_eq!(s1.counters.get(Mib::ArpOutReplies), 0);
        assert_eq!(s1.counters.get(Mib::ArpInRequests), 0);
        // learned as normal receive would (a request for us creates)
        assert_eq!(
            s1.neighbor(t0(), NEW4.into()),
            Some(EthernetAddress(NEW_MAC))
        );
    }

    #[test]
    fn shard_ns_replica_learns_and_sends_no_advertisement() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let ns = NdiscRepr::NeighborSolicit {
            target_addr: OUR6,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(NEW_MAC))),
        };
        let sn = solicited_node(OUR6);
        let f = ndisc_frame(NEW6, sn, 255, ns, multicast_mac_v6(sn).0);
        // what shard 1 had sent before (nothing: only shard 0 announces)
        let (na1, msgs1) = (
            s1.counters.get(Mib::Icmp6OutNeighborAdvertisements),
            s1.counters.get(Mib::Icmp6OutMsgs),
        );
        s0.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(drain(&mut s0).len(), 1, "shard 0 advertises, once");
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert!(drain(&mut s1).is_empty(), "no second NA");
        assert_eq!(s1.counters.get(Mib::Icmp6OutNeighborAdvertisements), na1);
        assert_eq!(s1.counters.get(Mib::Icmp6OutMsgs), msgs1);
        assert_eq!(s1.counters.get(Mib::Icmp6InNeighborSolicits), 0);
        assert_eq!(
            s1.neighbor(t0(), NEW6.into()),
            Some(EthernetAddress(NEW_MAC))
        );
    }

    #[test]
    fn shard_port_unreachable_replica_reaches_the_udp_socket_on_its_shard() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let h = s1.udp_bind(SocketAddr::new(OUR4.into(), 0)).unwrap();
        s1.udp_send_to(t0(), h, SocketAddr::new(PEER4.into(), 5070), b"OPTIONS")
            .unwrap();
        let sent = drain(&mut s1);
        let dgram = tx_ip(&sent[0]).to_vec();
        // steered by source address to shard 0, which has no such socket
        let err = icmp4(3, 3, [0; 4], &dgram[..28]);
        s0.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 1, 9, &err)));
        assert_eq!(s0.counters.drops(DropReason::IcmpErrorUnmatched), 1);
        assert_eq!(s0.counters.get(Mib::IcmpInDestUnreachs), 1);
        assert!(drain(&mut s0).is_empty());
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert_eq!(
            s1.udp_take_error(h),
            Some(SocketError {
                kind: SocketErrorKind::ConnectionRefused,
                remote: SocketAddr::new(PEER4.into(), 5070),
            })
        );
        assert_eq!(s1.counters.get(Mib::IcmpInMsgs), 0);
        assert_eq!(s1.counters.get(Mib::IcmpInDestUnreachs), 0);
        assert_eq!(s1.counters.get(Mib::IpInReceives), 0);
        assert_eq!(s1.counters.total_drops(), 0);
        assert!(drain(&mut s1).is_empty());
    }

    #[test]
    fn shard_icmpv6_error_replica_without_a_socket_is_ignored_silently() {
        let (mut s0, mut s1) = (shard(0, 2), shard(1, 2));
        let sent = ip6(OUR6, PEER6, 17, &udp6(OUR6, PEER6, 40001, 5070, b"x"));
        let err = icmp6(PEER6, OUR6, 1, 4, [0; 4], &sent);
        s0.receive_frame(
            t0(),
            RxMeta::HOST,
            &eth_to(OUR_MAC, &ip6(PEER6, OUR6, 58, &err)),
        );
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert!(drain(&mut s1).is_empty());
        assert_eq!(s1.counters.total_drops(), 0);
        assert_eq!(s1.counters.get(Mib::ShardReplicasReceived), 1);
    }

    /// Shard 1 of 2 with an ESTABLISHED connection to PEER4:5060 and 100
    /// bytes outstanding; returns the stack, the handle, the local address
    /// and the data segment as sent (IP datagram).
    fn established_on_shard1() -> (Stack, super::super::TcpHandle, SocketAddr, Vec<u8>) {
        let mut s1 = shard(1, 2);
        let peer = SocketAddr::new(PEER4.into(), 5060);
        let h = s1.tcp_connect(t0(), None, peer).unwrap();
        let syn = drain(&mut s1);
        let (sport, _, iss, _) = tcp_of(&syn[0]);
        assert_eq!(sport % 2, 1);
        let local = SocketAddr::new(OUR4.into(), sport);
        let synack = tcp_seg(
            peer,
            local,
            5000,
            Some(iss.wrapping_add(1)),
            TcpControl::Syn,
            Some(1460),
        );
        s1.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 6, 1, &synack)));
        assert_eq!(s1.tcp(h).unwrap().state(), TcpState::Established);
        drain(&mut s1);
        s1.tcp(h).unwrap().send(&[7u8; 100]).unwrap();
        let data = drain(&mut s1);
        assert_eq!(data.len(), 1);
        let dgram = tx_ip(&data[0]).to_vec();
        (s1, h, local, dgram)
    }

    #[test]
    fn shard_frag_needed_replica_lowers_the_pmtu_of_the_owning_connection() {
        let (mut s0, (mut s1, h, _local, dgram)) = (shard(0, 2), established_on_shard1());
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 1460);
        // next-hop MTU 1400 in the second half of the "unused" word
        let err = icmp4(3, 4, [0, 0, 0x05, 0x78], &dgram[..28]);
        s0.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(GW4, OUR4, 1, 9, &err)));
        assert!(drain(&mut s0).is_empty());
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 1400 - 40);
        assert_eq!(s1.tcp(h).unwrap().state(), TcpState::Established);
        assert_eq!(s1.counters.get(Mib::IcmpInMsgs), 0);
        // Linux's floor: never below 552 for IPv4
        let err = icmp4(3, 4, [0, 0, 0x01, 0x00], &dgram[..28]);
        s1.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(GW4, OUR4, 1, 10, &err)));
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 552 - 40);
        // and never raised again
        let err = icmp4(3, 4, [0, 0, 0x05, 0xdc], &dgram[..28]);
        s1.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(GW4, OUR4, 1, 11, &err)));
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 552 - 40);
    }

    #[test]
    fn shard_packet_too_big_replica_lowers_the_pmtu_of_the_owning_connection() {
        let mut s1 = shard(1, 2);
        let mut s0 = shard(0, 2);
        let peer = SocketAddr::new(PEER6.into(), 5060);
        let h = s1.tcp_connect(t0(), None, peer).unwrap();
        let syn = drain(&mut s1);
        let o = out(&syn[0]);
        let t = TcpPacket::new_checked(&o.payload[..]).unwrap();
        let (sport, iss) = (t.src_port(), t.seq_number().0 as u32);
        let local = SocketAddr::new(OUR6.into(), sport);
        let synack = tcp_seg(
            peer,
            local,
            5000,
            Some(iss.wrapping_add(1)),
            TcpControl::Syn,
            Some(1440),
        );
        s1.receive_frame(
            t0(),
            RxMeta::HOST,
            &eth_to(OUR_MAC, &ip6(PEER6, OUR6, 6, &synack)),
        );
        assert_eq!(s1.tcp(h).unwrap().state(), TcpState::Established);
        drain(&mut s1);
        s1.tcp(h).unwrap().send(&[7u8; 100]).unwrap();
        let data = drain(&mut s1);
        let sent = &data[0][14..];
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 1440);
        let err = icmp6(GW6, OUR6, 2, 0, 1300u32.to_be_bytes(), sent);
        s0.receive_frame(
            t0(),
            RxMeta::HOST,
            &eth_to(OUR_MAC, &ip6(GW6, OUR6, 58, &err)),
        );
        assert_eq!(post_replicas(&mut s0, &mut [&mut s1]), 1);
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 1300 - 60);
        assert_eq!(s1.counters.get(Mib::Icmp6InPktTooBigs), 0);
        assert_eq!(s0.counters.get(Mib::Icmp6InPktTooBigs), 1);
    }

    #[test]
    fn shard_pmtu_learned_before_the_handshake_caps_the_mss_after_it() {
        let mut s1 = shard(1, 2);
        let peer = SocketAddr::new(PEER4.into(), 5060);
        let h = s1.tcp_connect(t0(), None, peer).unwrap();
        let syn = drain(&mut s1);
        let (sport, _, iss, _) = tcp_of(&syn[0]);
        let dgram = tx_ip(&syn[0]).to_vec();
        let err = icmp4(3, 4, [0, 0, 0x04, 0xb0], &dgram[..28]);
        s1.receive_replica(t0(), RxMeta::HOST, &eth4(&ip4(GW4, OUR4, 1, 9, &err)));
        assert_eq!(s1.tcp(h).unwrap().state(), TcpState::SynSent, "soft error");
        let local = SocketAddr::new(OUR4.into(), sport);
        let synack = tcp_seg(
            peer,
            local,
            5000,
            Some(iss.wrapping_add(1)),
            TcpControl::Syn,
            Some(1460),
        );
        s1.receive_frame(t0(), RxMeta::HOST, &eth4(&ip4(PEER4, OUR4, 6, 1, &synack)));
        assert_eq!(s1.tcp(h).unwrap().state(), TcpState::Established);
        assert_eq!(s1.tcp.get(h.slot).unwrap().mss, 1200 - 40);
    }

    #[test]
    fn shard_mld_query_is_not_replicated_and_its_replica_is_refused() {
        let mut s0 = shard(0, 2);
        let mut s1 = shard(1, 2);
        // MLDv2 general query: type 130, max resp 1000 ms, unspecified group
        let mut body = [0u8; 24];
        body[0..2].copy_from_slice(&1000u16.to_be_bytes());
        let ll = super::super::link_local_from_mac(EthernetAddress(PEER_MAC));
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let q = icmp6(ll, all, 130, 0, [0x03, 0xe8, 0, 0], &body[4..]);
        let f = eth_to(multicast_mac_v6(all).0, &ip6_hop(ll, all, 58, 1, &q));
        assert!(!is_shared_control(&f));
        s0.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(s0.pop_replica(), None);
        s1.receive_replica(t0(), RxMeta::HOST, &f);
        assert_eq!(s1.counters.drops(DropReason::ReplicaNotControl), 1);
        s1.poll(t0() + super::super::Duration::from_secs(20));
        assert!(drain(&mut s1).is_empty(), "no MLD report from the replica");
    }

    // ----- the outbox -----

    #[test]
    fn shard_outbox_keeps_only_shared_control_frames_when_sharded() {
        let mut single = Stack::new(config(), t0());
        settle(&mut single);
        single.receive_frame(
            t0(),
            RxMeta::HOST,
            &arp_frame([0xff; 6], 1, NEW_MAC, NEW4, OUR4),
        );
        assert_eq!(single.pop_replica(), None, "one shard: no outbox");

        let mut s0 = shard(0, 2);
        s0.receive_frame(
            t0(),
            RxMeta::HOST,
            &udp4_frame(OUR_MAC, PEER4, OUR4, 5060, 5060, b"data"),
        );
        assert_eq!(s0.pop_replica(), None, "data is not replicated");
        let req = arp_frame([0xff; 6], 1, NEW_MAC, NEW4, OUR4);
        s0.receive_frame(t0(), RxMeta::HOST, &req);
        assert_eq!(s0.pop_replica(), Some((RxMeta::HOST, req)));
        assert_eq!(s0.pop_replica(), None);
    }

    #[test]
    fn shard_outbox_is_bounded_and_drops_the_oldest() {
        let mut s0 = shard(0, 2);
        for i in 0..REPLICA_OUTBOX_MAX + 10 {
            let f = arp_frame(
                [0xff; 6],
                2,
                NEW_MAC,
                Ipv4Addr::new(198, 18, 1, i as u8),
                OUR4,
            );
            s0.receive_frame(t0(), RxMeta::HOST, &f);
        }
        assert_eq!(s0.replicas_pending(), REPLICA_OUTBOX_MAX);
        assert_eq!(s0.usage().replica_frames, REPLICA_OUTBOX_MAX);
        assert_eq!(s0.counters.drops(DropReason::ReplicaOutboxFull), 10);
        let (_, first) = s0.pop_replica().unwrap();
        assert_eq!(&first[28..32], &[198, 18, 1, 10], "the 10 oldest went");
    }

    #[test]
    fn shard_replica_of_anything_else_is_dropped() {
        let mut s1 = shard(1, 2);
        let h = s1.udp_bind(SocketAddr::new(OUR4.into(), 5060)).unwrap();
        let data = udp4_frame(OUR_MAC, PEER4, OUR4, 5060, 5060, b"data");
        s1.receive_replica(t0(), RxMeta::HOST, &data);
        assert!(s1.udp_recv_from(h).is_none(), "never delivered");
        assert_eq!(s1.counters.drops(DropReason::ReplicaNotControl), 1);
        assert_eq!(s1.counters.get(Mib::ShardReplicasReceived), 1);
        assert_eq!(s1.counters.get(Mib::UdpInDatagrams), 0);
    }

    // ----- the classifier -----

    #[test]
    fn shard_shared_control_classifier() {
        let arp = arp_frame([0xff; 6], 1, NEW_MAC, NEW4, OUR4);
        assert!(is_shared_control(&arp));
        let q = ip4(OUR4, PEER4, 17, 1, &[0; 8]);
        for (t, code, yes) in [(3, 3, true), (3, 4, true), (11, 0, true), (12, 0, true)] {
            let f = eth4(&ip4(PEER4, OUR4, 1, 1, &icmp4(t, code, [0; 4], &q)));
            assert_eq!(is_shared_control(&f), yes, "icmp {t}/{code}");
        }
        for t in [0, 8, 4, 5, 13] {
            let f = eth4(&ip4(PEER4, OUR4, 1, 1, &icmp4(t, 0, [0; 4], &q)));
            assert!(!is_shared_control(&f), "icmp {t}");
        }
        // a fragment of an ICMP error: no
        let mut frag = eth4(&ip4(PEER4, OUR4, 1, 1, &icmp4(3, 3, [0; 4], &q)));
        frag[14 + 6] |= 0x20;
        assert!(!is_shared_control(&frag));
        assert!(!is_shared_control(&udp4_frame(
            OUR_MAC, PEER4, OUR4, 1, 2, b"x"
        )));
        let mut tcp = eth4(&ip4(PEER4, OUR4, 6, 1, &[3; 20]));
        tcp[14 + 20] = 3;
        assert!(!is_shared_control(&tcp));
        let q6 = ip6(OUR6, PEER6, 17, &udp6(OUR6, PEER6, 1, 2, b"x"));
        for (t, yes) in [
            (1, true),
            (2, true),
            (3, true),
            (4, true),
            (134, true),
            (135, true),
            (136, true),
            (137, true),
            (128, false),
            (129, false),
            (130, false),
            (133, false),
            (143, false),
        ] {
            let f = eth_to(
                OUR_MAC,
                &ip6(PEER6, OUR6, 58, &icmp6(PEER6, OUR6, t, 0, [0; 4], &q6)),
            );
            assert_eq!(is_shared_control(&f), yes, "icmpv6 {t}");
        }
        assert!(!is_shared_control(&udp6_frame(
            OUR_MAC, PEER6, OUR6, 1, 2, b"x"
        )));
        // every truncation of every frame: no panic
        let f6 = eth_to(
            OUR_MAC,
            &ip6(PEER6, OUR6, 58, &icmp6(PEER6, OUR6, 1, 0, [0; 4], &q6)),
        );
        for f in [&arp, &f6, &frag] {
            for n in 0..f.len() {
                let _ = is_shared_control(&f[..n]);
            }
        }
        assert!(!is_shared_control(&f6[..54]));
    }
}
