//! Frame builders and a ready stack for the netstack unit tests.
//! Addresses are from 198.18.0.0/15 and 2001:db8::/32 (documentation /
//! benchmarking ranges).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr, Ipv6Cidr};

use super::{Duration, Instant, Stack, StackConfig};

pub const OUR_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x02];
pub const PEER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x01];
pub const OUR4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const OUR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

pub fn t0() -> Instant {
    Instant::from_millis(1_000_000)
}

pub fn config() -> StackConfig {
    let mut c = StackConfig::new(EthernetAddress(OUR_MAC));
    c.ipv4 = Some(Ipv4Cidr::new(OUR4, 24));
    c.ipv6 = Some(Ipv6Cidr::new(OUR6, 64));
    c.gateway4 = Some(GW4);
    c.gateway6 = Some(GW6);
    c
}

/// A fresh stack (its start-up announcements still queued).
pub fn stack() -> Stack {
    Stack::new(config(), t0())
}

/// Run the start-up timers out (the one retransmission of the MLD report,
/// due within 1 s) and drop what was queued, so that a test's later
/// `poll`s only show the timers it set up.
pub fn settle(s: &mut Stack) {
    s.poll(t0() + Duration::from_secs(1));
    drain(s);
}

/// A stack whose start-up frames are drained (the MLD retransmission too)
/// and which already knows the peer's and the gateways' MACs, so output
/// goes straight to the tx queue.
pub fn ready_stack() -> Stack {
    ready_stack_with(config())
}

/// [`ready_stack`] with another configuration.
pub fn ready_stack_with(cfg: StackConfig) -> Stack {
    let mut s = Stack::new(cfg, t0());
    settle(&mut s);
    for ip in [
        IpAddr::V4(PEER4),
        IpAddr::V6(PEER6),
        IpAddr::V4(GW4),
        IpAddr::V6(GW6),
    ] {
        s.neigh_update(t0(), ip, EthernetAddress(PEER_MAC), true);
    }
    drain(&mut s);
    s
}

/// Every frame the stack has queued.
pub fn drain(s: &mut Stack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.pop_tx()).collect()
}

/// Ethernet + IPv4 + UDP from the peer.
pub fn udp4_frame(
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(PEER_MAC, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write to Vec");
    out
}

/// Ethernet + IPv6 + UDP from the peer.
pub fn udp6_frame(
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(PEER_MAC, dst_mac)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write to Vec");
    out
}

/// Wrap an IP packet (v4 or v6, by its version nibble) in Ethernet to us.
pub fn eth(ip_packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip_packet.len());
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&PEER_MAC);
    let et: u16 = if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}
