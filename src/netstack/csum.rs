//! UDP and TCP transmit checksums: computed here in software, or left to
//! the device ("checksum offload", as Linux does on a device with
//! `NETIF_F_HW_CSUM`): the checksum field then holds the pseudo-header
//! sum only (`CHECKSUM_PARTIAL`), and whoever transmits the frame
//! completes it over the L4 header and data from [`CsumSpan::start`].
//!
//! One rule decides both sides. The stack's `ip_output` / `ip6_output`
//! call [`finish_l4`] on every UDP / TCP packet that leaves in one frame
//! (a fragmented datagram's checksum is always computed here: a device
//! sees only one piece of it). A device that offloads asks [`tx_span`]
//! which frames carry a partial sum, and `tx_span` answers `Some` for
//! exactly those: an unfragmented IPv4 or IPv6 packet whose next header is
//! UDP or TCP. The stack writes partial sums only when its config says the
//! device completes them ([`super::StackConfig::tx_csum_offload`]); the
//! afpacket transport sets that from the device, for every shard alike.
//!
//! The arithmetic is smoltcp's (`wire::ip::checksum`).

use smoltcp::wire::{IpAddress, TcpPacket, UdpPacket, checksum};

use super::ETH_HDR;

const UDP: u8 = 17;
const TCP: u8 = 6;

/// Where the checksum field of protocol `proto`'s header is, or None for
/// protocols this module does not handle.
fn field(proto: u8) -> Option<usize> {
    match proto {
        UDP => Some(6),
        TCP => Some(16),
        _ => None,
    }
}

/// Fill the checksum of the UDP / TCP packet `l4` (header and data; the
/// checksum field may hold anything) sent from `src` to `dst`: the whole
/// checksum, or with `partial` only the pseudo-header sum for the device
/// to complete. Other protocols are left alone.
pub fn finish_l4(l4: &mut [u8], src: &IpAddress, dst: &IpAddress, proto: u8, partial: bool) {
    let Some(at) = field(proto) else {
        return;
    };
    if l4.len() < at + 2 {
        return;
    }
    if !partial {
        // smoltcp's sums, as the emitters used before offload existed
        // (UDP sends a computed zero as all ones, RFC 768).
        match proto {
            UDP => UdpPacket::new_unchecked(l4).fill_checksum(src, dst),
            _ => TcpPacket::new_unchecked(l4).fill_checksum(src, dst),
        }
        return;
    }
    let pseudo = checksum::pseudo_header(src, dst, proto.into(), l4.len() as u32);
    l4[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
}

/// The part of a frame a device checksums when completing a partial sum
/// (virtio-net's `csum_start` / `csum_offset` / `hdr_len`, offsets from
/// the start of the Ethernet frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsumSpan {
    /// First byte of the L4 header: the sum covers from here to the end.
    pub start: usize,
    /// The checksum field, from `start`.
    pub offset: usize,
    /// End of the L4 header (at most the frame's length).
    pub hdr_end: usize,
}

/// Does this frame, built by the stack with checksum offload on, carry a
/// partial L4 checksum, and where? Exactly the frames [`finish_l4`] was
/// told `partial` for: unfragmented IPv4 / IPv6 carrying UDP or TCP
/// directly. Anything malformed or shorter than its headers is `None`.
pub fn tx_span(frame: &[u8]) -> Option<CsumSpan> {
    let ip = frame.get(ETH_HDR..)?;
    let (start, proto) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            // More fragments, or an offset: a piece of a datagram.
            if ihl < 20 || frag & 0x3fff != 0 {
                return None;
            }
            (ETH_HDR + ihl, *ip.get(9)?)
        }
        0x86dd => (ETH_HDR + 40, *ip.get(6)?),
        _ => return None,
    };
    let offset = field(proto)?;
    let hdr = match proto {
        TCP => usize::from(*frame.get(start + 12)? >> 4) * 4,
        _ => 8,
    };
    let hdr_end = (start + hdr).min(frame.len());
    (start + offset + 2 <= frame.len()).then_some(CsumSpan {
        start,
        offset,
        hdr_end,
    })
}

/// Complete a partial checksum in place, as the kernel or a NIC does for
/// `CHECKSUM_PARTIAL` (`skb_checksum_help`): the folded complement of the
/// sum from `span.start` to the end, zero sent as all ones.
pub fn complete(frame: &mut [u8], span: CsumSpan) {
    let c = !checksum::data(&frame[span.start..]);
    let at = span.start + span.offset;
    let v = if c == 0 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

    use super::super::testutil::*;
    use super::super::{Stack, StackConfig};
    use super::*;

    fn stack(offload: bool) -> Stack {
        let mut c: StackConfig = config();
        c.tx_csum_offload = offload;
        ready_stack_with(c)
    }

    fn udp_frame(offload: bool, v6: bool, len: usize) -> Vec<Vec<u8>> {
        let mut s = stack(offload);
        let (local, peer) = if v6 {
            (
                SocketAddr::new(OUR6.into(), 5060),
                SocketAddr::new(PEER6.into(), 5080),
            )
        } else {
            (
                SocketAddr::new(OUR4.into(), 5060),
                SocketAddr::new(PEER4.into(), 5080),
            )
        };
        let h = s.udp_bind(local).expect("bind");
        s.udp_send_to(t0(), h, peer, &vec![0x5a; len])
            .expect("send");
        drain(&mut s)
    }

    fn udp_ok(frame: &[u8]) -> bool {
        if frame[12..14] == [0x86, 0xdd] {
            let ip = Ipv6Packet::new_checked(&frame[ETH_HDR..]).expect("ipv6");
            UdpPacket::new_checked(ip.payload())
                .expect("udp")
                .verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        } else {
            let ip = Ipv4Packet::new_checked(&frame[ETH_HDR..]).expect("ipv4");
            UdpPacket::new_checked(ip.payload())
                .expect("udp")
                .verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        }
    }

    #[test]
    fn software_checksums_are_whole() {
        for v6 in [false, true] {
            let f = udp_frame(false, v6, 300);
            assert_eq!(f.len(), 1);
            assert!(udp_ok(&f[0]), "v6 {v6}");
        }
    }

    #[test]
    fn offloaded_udp_carries_the_pseudo_header_sum_and_completes_to_the_software_checksum() {
        for v6 in [false, true] {
            let soft = udp_frame(false, v6, 301).remove(0);
            let mut f = udp_frame(true, v6, 301).remove(0);
            let span = tx_span(&f).expect("a partial UDP frame");
            let ip_hdr = if v6 { 40 } else { 20 };
            assert_eq!(
                span,
                CsumSpan {
                    start: ETH_HDR + ip_hdr,
                    offset: 6,
                    hdr_end: ETH_HDR + ip_hdr + 8
                }
            );
            assert!(!udp_ok(&f), "partial, not yet valid");
            // The field holds the pseudo-header sum.
            let (src, dst): (IpAddress, IpAddress) = if v6 {
                (OUR6.into(), PEER6.into())
            } else {
                (OUR4.into(), PEER4.into())
            };
            let ps = checksum::pseudo_header(&src, &dst, UDP.into(), 8 + 301);
            let at = span.start + 6;
            assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), ps);
            complete(&mut f, span);
            assert_eq!(f, soft, "completed by the device = computed by the stack");
        }
    }

    #[test]
    fn offloaded_tcp_segment_completes_to_a_valid_checksum() {
        let mut s = stack(true);
        s.tcp_connect(t0(), None, SocketAddr::new(PEER4.into(), 5080))
            .expect("connect");
        let mut f = drain(&mut s).remove(0);
        let span = tx_span(&f).expect("a partial TCP frame");
        assert_eq!((span.start, span.offset), (ETH_HDR + 20, 16));
        // A SYN with options: the header is longer than 20 bytes.
        assert!(span.hdr_end > span.start + 20 && span.hdr_end <= f.len());
        complete(&mut f, span);
        let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).expect("ipv4");
        let t = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    #[test]
    fn fragments_keep_a_software_checksum_and_are_not_marked() {
        // Larger than the MTU: fragments; the first carries the UDP header
        // with the whole datagram's checksum, computed by the stack.
        for v6 in [false, true] {
            let frames = udp_frame(true, v6, 3000);
            assert!(frames.len() > 1);
            let mut dgram = Vec::new();
            for f in &frames {
                assert_eq!(tx_span(f), None, "no fragment is left to the device");
                // The pieces in order: after the IPv4 header, or after the
                // IPv6 header and its Fragment header.
                let at = ETH_HDR + if v6 { 48 } else { 20 };
                dgram.extend_from_slice(&f[at..]);
            }
            let (src, dst): (IpAddress, IpAddress) = if v6 {
                (OUR6.into(), PEER6.into())
            } else {
                (OUR4.into(), PEER4.into())
            };
            let u = UdpPacket::new_checked(&dgram[..]).expect("udp");
            assert_eq!(usize::from(u.len()), 8 + 3000);
            assert!(u.verify_checksum(&src, &dst), "v6 {v6}");
        }
    }

    #[test]
    fn tx_span_ignores_other_frames() {
        // ARP, ICMP, short and malformed frames.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tx_span(&arp), None);
        let mut icmp = vec![0u8; 42];
        icmp[12..14].copy_from_slice(&[0x08, 0x00]);
        icmp[ETH_HDR] = 0x45;
        icmp[ETH_HDR + 9] = 1;
        assert_eq!(tx_span(&icmp), None);
        let mut short = icmp.clone();
        short[ETH_HDR + 9] = 17;
        short.truncate(ETH_HDR + 20 + 7);
        assert_eq!(tx_span(&short), None, "no room for the checksum field");
        assert_eq!(tx_span(&[0u8; 10]), None);
        let mut bad_ihl = icmp.clone();
        bad_ihl[ETH_HDR] = 0x41;
        bad_ihl[ETH_HDR + 9] = 17;
        assert_eq!(tx_span(&bad_ihl), None);
    }
}
