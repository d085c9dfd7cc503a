//! Which stack shard a received frame belongs to: the classic-BPF program
//! attached to the shards' `PACKET_FANOUT` group (`PACKET_FANOUT_CBPF`; the
//! kernel runs it per frame and takes its return value modulo the number of
//! sockets in the group as the socket index, sockets numbered in the order
//! they joined, see [`super::AfPacket::join_fanout`]).
//!
//! # The rules (the program returns the shard index, `% N` done in it)
//!
//! - IPv4 / IPv6 TCP or UDP, not a fragment: the local port is the
//!   destination port. In the stack's ephemeral range → `dst_port % N`
//!   ([`shard_of_port`]; shard `k` only picks ephemeral ports `p` with
//!   `p % N == k`, `ShardId::owns_port`, so replies to an outbound
//!   connection come back to the shard that opened it). Any other port (our
//!   listen ports) → `hash(source address) % N` ([`shard_of_addr`]): every
//!   connection and datagram of one remote address lands on one shard.
//! - IPv4 fragment (MF set or offset ≠ 0), IPv6 whose first next-header is
//!   not TCP/UDP (a Fragment header, 44, or any other extension header) →
//!   `hash(source address) % N`, the value the unfragmented traffic from
//!   that address to a listen port gets: every piece of a datagram reaches
//!   the same shard, which reassembles it. (A fragmented datagram to an
//!   *ephemeral* port also goes by the address hash, which may not be the
//!   port's shard: the stack must hand it over after reassembly.)
//! - ICMP / ICMPv6 and other IP protocols → `hash(source address) % N`; ARP
//!   → hash of the sender protocol address (bytes 14..18 of the ARP
//!   packet); anything else → 0.
//! - `hash(a)`: IPv4 the source address as a big-endian `u32`, IPv6 the XOR
//!   of its four big-endian 32-bit words; then `x ^= x >> 16; x ^= x >> 8`.
//!
//! # Where offset 0 is (Linux `net/packet/af_packet.c`)
//!
//! The group's hook (`packet_rcv_fanout`) runs `fanout_demux_bpf` on the skb
//! exactly as the device layer passed it in, *before* it hands the skb to
//! the chosen socket's `packet_rcv`, and only `packet_rcv` pushes the
//! link-layer header back for `SOCK_RAW` sockets. For a received frame
//! `eth_type_trans` has already pulled the Ethernet header, so **offset 0 is
//! the network header** (IPv4 / IPv6 / ARP header), and the EtherType is not
//! in the packet data the program sees: it comes from the ancillary load
//! `SKF_AD_OFF + SKF_AD_PROTOCOL` (`skb->protocol`, host order; for a
//! VLAN-tagged frame, which the stack skips anyway, the inner type when the
//! NIC stripped the tag, else 0x8100 and so shard 0). `tests/netstack_fanout.rs`
//! proves this on a veth: IPv4, IPv6, fragmented and TCP traffic from many
//! addresses land on the socket [`interpret`] predicts with offset 0 at the
//! network header, and many of them would not with offset 0 at the MAC
//! header.
//!
//! Frames the host *sends* reach the hook with offset 0 at the MAC header.
//! The stack's own sockets use `PACKET_QDISC_BYPASS`, whose frames skip the
//! taps entirely, but frames the kernel itself sends on the interface would
//! reach the group: the group's hook replaces the sockets' own, so their
//! `PACKET_IGNORE_OUTGOING` no longer applies. `join_fanout` therefore sets
//! `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` (Linux 6.2+; where the kernel
//! refuses it, it joins without, and such frames arrive, steered
//! arbitrarily, as `PacketType::Outgoing`, which the stack drops). The netns test checks
//! this too (and fails without the flag).
//!
//! # Bounds
//!
//! Every load is a kernel-checked `BPF_ABS` / `BPF_IND` load: one past the
//! end of a short or malformed packet ends the program with return value 0,
//! i.e. shard 0. So truncated garbage goes to shard 0 and never faults;
//! [`interpret`] does the same.

use std::net::IpAddr;
use std::ops::RangeInclusive;

/// One classic-BPF instruction, laid out as `struct sock_filter`
/// (linux/filter.h), so a slice of them can be passed to the kernel as is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// What [`program`] is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteerConfig {
    /// Number of shards (sockets in the fanout group); 0 is taken as 1.
    pub shards: u16,
    /// The stack's ephemeral port range (TCP and UDP); an empty range sends
    /// everything by address hash.
    pub ephemeral: RangeInclusive<u16>,
}

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;
const ADD: u16 = 0x00;
const SUB: u16 = 0x10;
const MUL: u16 = 0x20;
const DIV: u16 = 0x30;
const OR: u16 = 0x40;
const AND: u16 = 0x50;
const LSH: u16 = 0x60;
const RSH: u16 = 0x70;
const NEG: u16 = 0x80;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGT: u16 = 0x20;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const RA: u16 = 0x10;
const TAX: u16 = 0x00;
const TXA: u16 = 0x80;

/// `SKF_AD_OFF`: loads at this offset and above read skb metadata.
const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
/// `SKF_AD_PROTOCOL`: `skb->protocol`, the EtherType in host order.
const SKF_AD_PROTOCOL: u32 = 0;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_ARP: u32 = 0x0806;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// The address mix shared by the program and [`shard_of_addr`].
fn mix(x: u32) -> u32 {
    let x = x ^ (x >> 16);
    x ^ (x >> 8)
}

/// The shard count as the program uses it (0 → 1).
fn n_of(shards: u16) -> u32 {
    u32::from(shards.max(1))
}

/// The shard that traffic from remote address `ip` to a listen port (and
/// every fragment, ICMP message, ARP packet from it) is steered to.
pub fn shard_of_addr(ip: IpAddr, shards: u16) -> u16 {
    let x = match ip {
        IpAddr::V4(a) => u32::from_be_bytes(a.octets()),
        IpAddr::V6(a) => {
            let o = a.octets();
            o.chunks_exact(4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .fold(0, |acc, w| acc ^ w)
        }
    };
    (mix(x) % n_of(shards)) as u16
}

/// The shard that TCP/UDP traffic to local ephemeral port `port` is steered
/// to.
pub fn shard_of_port(port: u16, shards: u16) -> u16 {
    (u32::from(port) % n_of(shards)) as u16
}

/// A jump target while assembling.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum L {
    Next,
    V4,
    V6,
    Arp,
    V4L4,
    V6L4,
    H4,
    H6,
    Mix,
    Eph,
}

/// An instruction with symbolic jump targets.
struct Asm {
    out: Vec<(Insn, L, L)>,
    labels: Vec<(L, usize)>,
}

impl Asm {
    fn label(&mut self, l: L) {
        self.labels.push((l, self.out.len()));
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.jump(code, k, L::Next, L::Next);
    }
    fn jump(&mut self, code: u16, k: u32, jt: L, jf: L) {
        self.out.push((
            Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            jt,
            jf,
        ));
    }
    fn finish(self) -> Vec<Insn> {
        let at = |l: L, pc: usize| -> usize {
            if l == L::Next {
                return 0;
            }
            let t = self
                .labels
                .iter()
                .find(|(n, _)| *n == l)
                .map(|&(_, i)| i)
                .expect("label defined");
            assert!(t > pc, "cBPF jumps only forward");
            t - pc - 1
        };
        let mut v = Vec::with_capacity(self.out.len());
        for (pc, &(mut insn, jt, jf)) in self.out.iter().enumerate() {
            if insn.code == JMP | JA {
                insn.k = at(jt, pc) as u32;
            } else {
                insn.jt = u8::try_from(at(jt, pc)).expect("short jump");
                insn.jf = u8::try_from(at(jf, pc)).expect("short jump");
            }
            v.push(insn);
        }
        v
    }
}

/// The steering program for `cfg` (see the module doc for the rules), to
/// pass to [`super::AfPacket::join_fanout`]. About 45 instructions.
pub fn program(cfg: &SteerConfig) -> Vec<Insn> {
    let n = n_of(cfg.shards);
    let (lo, hi) = (
        u32::from(*cfg.ephemeral.start()),
        u32::from(*cfg.ephemeral.end()),
    );
    let mut a = Asm {
        out: Vec::with_capacity(64),
        labels: Vec::with_capacity(16),
    };
    a.stmt(LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
    a.jump(JMP | JEQ | K, ETH_P_IP, L::V4, L::Next);
    a.jump(JMP | JEQ | K, ETH_P_IPV6, L::V6, L::Next);
    a.jump(JMP | JEQ | K, ETH_P_ARP, L::Arp, L::Next);
    a.stmt(RET | K, 0);

    // IPv4: fragments and non-TCP/UDP by address; else by destination port.
    a.label(L::V4);
    a.stmt(LD | H | ABS, 6);
    a.jump(JMP | JSET | K, 0x3fff, L::H4, L::Next);
    a.stmt(LD | B | ABS, 9);
    a.jump(JMP | JEQ | K, IPPROTO_TCP, L::V4L4, L::Next);
    a.jump(JMP | JEQ | K, IPPROTO_UDP, L::V4L4, L::H4);
    a.label(L::V4L4);
    a.stmt(LDX | B | MSH, 0);
    a.stmt(LD | H | IND, 2);
    a.jump(JMP | JGE | K, lo, L::Next, L::H4);
    a.jump(JMP | JGT | K, hi, L::H4, L::Eph);

    // IPv6: only TCP/UDP right after the fixed header goes by port.
    a.label(L::V6);
    a.stmt(LD | B | ABS, 6);
    a.jump(JMP | JEQ | K, IPPROTO_TCP, L::V6L4, L::Next);
    a.jump(JMP | JEQ | K, IPPROTO_UDP, L::V6L4, L::H6);
    a.label(L::V6L4);
    a.stmt(LD | H | ABS, 40 + 2);
    a.jump(JMP | JGE | K, lo, L::Next, L::H6);
    a.jump(JMP | JGT | K, hi, L::H6, L::Eph);

    a.label(L::Eph);
    a.stmt(ALU | MOD | K, n);
    a.stmt(RET | RA, 0);

    a.label(L::H6);
    a.stmt(LD | W | ABS, 8);
    for off in [12, 16, 20] {
        a.stmt(MISC | TAX, 0);
        a.stmt(LD | W | ABS, off);
        a.stmt(ALU | XOR | X, 0);
    }
    a.jump(JMP | JA, 0, L::Mix, L::Next);

    a.label(L::H4);
    a.stmt(LD | W | ABS, 12);
    a.jump(JMP | JA, 0, L::Mix, L::Next);

    a.label(L::Arp);
    a.stmt(LD | W | ABS, 14);

    a.label(L::Mix);
    a.stmt(MISC | TAX, 0);
    a.stmt(ALU | RSH | K, 16);
    a.stmt(ALU | XOR | X, 0);
    a.stmt(MISC | TAX, 0);
    a.stmt(ALU | RSH | K, 8);
    a.stmt(ALU | XOR | X, 0);
    a.stmt(ALU | MOD | K, n);
    a.stmt(RET | RA, 0);
    a.finish()
}

/// An instruction [`interpret`] does not know, or a jump out of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadInsn {
    pub pc: usize,
    pub insn: Insn,
}

/// A classic-BPF interpreter with the kernel's semantics for what
/// [`program`] uses (and the rest of the classic set except most ancillary
/// loads): `pkt` starts at the network header (as in the kernel, see the
/// module doc), `protocol` is the EtherType (`SKF_AD_PROTOCOL`). A load past
/// the end of `pkt` ends the program with 0, as in the kernel; division by
/// zero too. For tests and diagnostics, not the per-frame path.
pub fn interpret(prog: &[Insn], protocol: u16, pkt: &[u8]) -> Result<u32, BadInsn> {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |off: u32, size: u16| -> Option<u32> {
        let off = off as usize;
        let len = match size {
            W => 4,
            H => 2,
            _ => 1,
        };
        let b = pkt.get(off..off.checked_add(len)?)?;
        Some(b.iter().fold(0u32, |v, &byte| (v << 8) | u32::from(byte)))
    };
    // Classic BPF only jumps forward, so this ends within prog.len() steps.
    while let Some(&insn) = prog.get(pc) {
        let bad = BadInsn { pc, insn };
        let (k, code) = (insn.k, insn.code);
        pc += 1;
        match code & 0x07 {
            LD | LDX => {
                let mode = code & 0xe0;
                let size = code & 0x18;
                let v = match mode {
                    IMM => k,
                    LEN => pkt.len() as u32,
                    MEM => *mem.get(k as usize).ok_or(bad)?,
                    ABS if code & 0x07 == LD && k == SKF_AD_OFF + SKF_AD_PROTOCOL => {
                        u32::from(protocol)
                    }
                    // Other ancillary loads: not modelled.
                    ABS if code & 0x07 == LD && k >= SKF_AD_OFF => return Err(bad),
                    ABS if code & 0x07 == LD => match load(k, size) {
                        Some(v) => v,
                        None => return Ok(0),
                    },
                    IND if code & 0x07 == LD => match load(x.wrapping_add(k), size) {
                        Some(v) => v,
                        None => return Ok(0),
                    },
                    MSH if code & 0x07 == LDX && size == B => match load(k, B) {
                        Some(v) => 4 * (v & 0xf),
                        None => return Ok(0),
                    },
                    _ => return Err(bad),
                };
                if code & 0x07 == LD {
                    a = v;
                } else {
                    x = v;
                }
            }
            ST => *mem.get_mut(k as usize).ok_or(bad)? = a,
            STX => *mem.get_mut(k as usize).ok_or(bad)? = x,
            ALU => {
                let src = if code & X != 0 { x } else { k };
                a = match code & 0xf0 {
                    ADD => a.wrapping_add(src),
                    SUB => a.wrapping_sub(src),
                    MUL => a.wrapping_mul(src),
                    DIV | MOD if src == 0 => return Ok(0),
                    DIV => a / src,
                    MOD => a % src,
                    OR => a | src,
                    AND => a & src,
                    LSH => a.checked_shl(src).unwrap_or(0),
                    RSH => a.checked_shr(src).unwrap_or(0),
                    NEG => a.wrapping_neg(),
                    XOR => a ^ src,
                    _ => return Err(bad),
                };
            }
            JMP => {
                let src = if code & X != 0 { x } else { k };
                let off = match code & 0xf0 {
                    JA => k as usize,
                    JEQ | JGT | JGE | JSET => {
                        let take = match code & 0xf0 {
                            JEQ => a == src,
                            JGT => a > src,
                            JGE => a >= src,
                            _ => a & src != 0,
                        };
                        usize::from(if take { insn.jt } else { insn.jf })
                    }
                    _ => return Err(bad),
                };
                pc = pc.checked_add(off).filter(|&p| p < prog.len()).ok_or(bad)?;
            }
            RET => {
                return match code & 0x18 {
                    K => Ok(k),
                    RA => Ok(a),
                    _ => Err(bad),
                };
            }
            _ => match code & 0xf8 {
                TAX => x = a,
                TXA => a = x,
                _ => return Err(bad),
            },
        }
    }
    // Fell off the end: the kernel's checker rejects such a program.
    Err(BadInsn {
        pc,
        insn: Insn {
            code: 0xffff,
            jt: 0,
            jf: 0,
            k: 0,
        },
    })
}

/// [`interpret`] on a whole Ethernet II frame as the kernel presents it to
/// the fanout program (EtherType as the protocol, the payload at offset 0);
/// a frame shorter than the Ethernet header gives 0.
pub fn interpret_frame(prog: &[Insn], frame: &[u8]) -> Result<u32, BadInsn> {
    if frame.len() < 14 {
        return Ok(0);
    }
    let proto = u16::from_be_bytes([frame[12], frame[13]]);
    interpret(prog, proto, &frame[14..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
        Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv6FragmentHeader, Ipv6Packet,
        TcpPacket, UdpPacket,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    const EPH: RangeInclusive<u16> = 32768..=60999;
    const LISTEN: [u16; 3] = [5060, 5061, 443];

    fn cfg(n: u16) -> SteerConfig {
        SteerConfig {
            shards: n,
            ephemeral: EPH,
        }
    }

    fn eth(proto: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + payload.len()];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        e.set_dst_addr(EthernetAddress([2, 0, 0, 0, 0, 2]));
        e.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        e.set_ethertype(proto);
        e.payload_mut().copy_from_slice(payload);
        f
    }

    /// TCP (flags, payload) or UDP (payload) segment bytes.
    fn l4(tcp: Option<u8>, sport: u16, dport: u16, payload: &[u8]) -> (IpProtocol, Vec<u8>) {
        match tcp {
            Some(flags) => {
                let mut b = vec![0u8; 20 + payload.len()];
                let mut t = TcpPacket::new_unchecked(&mut b[..]);
                t.set_src_port(sport);
                t.set_dst_port(dport);
                t.set_header_len(20);
                t.set_fin(flags & 1 != 0);
                t.set_syn(flags & 2 != 0);
                t.set_rst(flags & 4 != 0);
                t.set_psh(flags & 8 != 0);
                t.set_ack(flags & 16 != 0);
                t.set_urg(flags & 32 != 0);
                t.set_window_len(1000);
                t.payload_mut().copy_from_slice(payload);
                (IpProtocol::Tcp, b)
            }
            None => {
                let mut b = vec![0u8; 8 + payload.len()];
                let mut u = UdpPacket::new_unchecked(&mut b[..]);
                u.set_src_port(sport);
                u.set_dst_port(dport);
                u.set_len((8 + payload.len()) as u16);
                u.payload_mut().copy_from_slice(payload);
                (IpProtocol::Udp, b)
            }
        }
    }

    /// IPv4 packet; `frag` = (more fragments, offset in bytes).
    fn v4(src: Ipv4Addr, proto: IpProtocol, frag: (bool, u16), body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + body.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_total_len((20 + body.len()) as u16);
        p.set_ident(0x1234);
        p.set_more_frags(frag.0);
        p.set_frag_offset(frag.1);
        p.set_hop_limit(64);
        p.set_next_header(proto);
        p.set_src_addr(src);
        p.set_dst_addr(Ipv4Addr::new(198, 18, 1, 2));
        p.fill_checksum();
        p.payload_mut().copy_from_slice(body);
        eth(EthernetProtocol::Ipv4, &b)
    }

    fn v6(src: Ipv6Addr, proto: IpProtocol, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40 + body.len()];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version(6);
        p.set_payload_len(body.len() as u16);
        p.set_next_header(proto);
        p.set_hop_limit(64);
        p.set_src_addr(src);
        p.set_dst_addr(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
        p.payload_mut().copy_from_slice(body);
        eth(EthernetProtocol::Ipv6, &b)
    }

    /// IPv6 Fragment header (next header `next`) followed by `body`.
    fn v6_frag(next: IpProtocol, more: bool, off: u16, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 8 + body.len()];
        b[0] = next.into();
        let mut h = Ipv6FragmentHeader::new_unchecked(&mut b[2..8]);
        h.set_frag_offset(off / 8);
        h.set_more_frags(more);
        h.set_ident(0xabcd);
        b[8..].copy_from_slice(body);
        b
    }

    fn run(n: u16, frame: &[u8]) -> u16 {
        let r = interpret_frame(&program(&cfg(n)), frame).expect("valid program");
        assert!(r < u32::from(n.max(1)), "shard {r} out of range for {n}");
        r as u16
    }

    fn v4_addrs() -> impl Iterator<Item = Ipv4Addr> {
        (0u32..200)
            .map(|i| Ipv4Addr::from(0xc612_0000u32.wrapping_add(i.wrapping_mul(0x0101_0f07))))
    }

    fn v6_addrs() -> impl Iterator<Item = Ipv6Addr> {
        (0u128..200).map(|i| {
            Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0001u128 ^ (i * 0x0001_0203_0405_0607_0809),
            )
        })
    }

    #[test]
    fn program_is_small_and_ends_in_ret() {
        for n in [1, 2, 3, 4, 64, 0] {
            let p = program(&cfg(n));
            assert!(p.len() < 64, "{} insns", p.len());
            assert_eq!(p.last().map(|i| i.code & 0x07), Some(RET));
        }
    }

    #[test]
    fn listen_port_traffic_goes_by_source_address_hash() {
        for n in 1..=4 {
            for src in v4_addrs() {
                let want = shard_of_addr(src.into(), n);
                for port in LISTEN {
                    for tcp in [None, Some(2), Some(16)] {
                        let (pr, seg) = l4(tcp, 40000 + n, port, b"x");
                        assert_eq!(run(n, &v4(src, pr, (false, 0), &seg)), want, "{src} {port}");
                    }
                }
            }
            for src in v6_addrs() {
                let want = shard_of_addr(src.into(), n);
                for port in LISTEN {
                    for tcp in [None, Some(2)] {
                        let (pr, seg) = l4(tcp, 50000, port, b"x");
                        assert_eq!(run(n, &v6(src, pr, &seg)), want, "{src} {port}");
                    }
                }
            }
        }
    }

    #[test]
    fn address_hash_spreads_over_all_shards() {
        for n in 2..=4 {
            let mut seen = vec![0; usize::from(n)];
            for src in v4_addrs() {
                seen[usize::from(shard_of_addr(src.into(), n))] += 1;
            }
            for src in v6_addrs() {
                seen[usize::from(shard_of_addr(src.into(), n))] += 1;
            }
            assert!(
                seen.iter().all(|&c| c > 400 / usize::from(n) / 3),
                "{n}: {seen:?}"
            );
        }
    }

    #[test]
    fn ephemeral_port_traffic_goes_by_port() {
        for n in 1..=4 {
            for dport in [32768, 32769, 32770, 32771, 40001, 60998, 60999] {
                let want = shard_of_port(dport, n);
                // the stack's partition agrees: that shard picks this port
                let owner = crate::netstack::ShardId {
                    index: want,
                    count: n,
                };
                assert!(owner.owns_port(dport));
                for src in v4_addrs().take(20) {
                    for tcp in [None, Some(18), Some(16)] {
                        let (pr, seg) = l4(tcp, 5060, dport, b"reply");
                        assert_eq!(run(n, &v4(src, pr, (false, 0), &seg)), want);
                    }
                }
                for src in v6_addrs().take(20) {
                    let (pr, seg) = l4(Some(18), 5060, dport, b"");
                    assert_eq!(run(n, &v6(src, pr, &seg)), want);
                }
            }
            // Just outside the range: by address.
            for dport in [32767, 61000] {
                let src = Ipv4Addr::new(198, 18, 7, 9);
                let (pr, seg) = l4(None, 5060, dport, b"");
                assert_eq!(
                    run(n, &v4(src, pr, (false, 0), &seg)),
                    shard_of_addr(src.into(), n)
                );
            }
        }
    }

    #[test]
    fn ipv4_options_move_the_port_offset() {
        // IHL 6: one 4-byte option (NOPs); the port is read after it.
        for n in 2..=4 {
            let (pr, seg) = l4(None, 5060, 32771, b"opt");
            let mut f = v4(Ipv4Addr::new(198, 18, 3, 4), pr, (false, 0), &seg);
            f.splice(34..34, [1u8, 1, 1, 1]);
            f[14] = 0x46;
            assert_eq!(run(n, &f), shard_of_port(32771, n));
        }
    }

    #[test]
    fn ipv4_fragments_of_one_datagram_share_the_unfragmented_shard() {
        for n in 1..=4 {
            for src in v4_addrs() {
                let want = shard_of_addr(src.into(), n);
                for dport in [5060, 40000] {
                    let (pr, seg) = l4(None, 5060, dport, &[0x55; 64]);
                    let first = v4(src, pr, (true, 0), &seg[..32]);
                    let middle = v4(src, pr, (true, 32), &seg[32..48]);
                    let last = v4(src, pr, (false, 48), &seg[48..]);
                    for f in [&first, &middle, &last] {
                        assert_eq!(run(n, f), want, "{src} {dport}");
                    }
                }
                let (pr, seg) = l4(None, 40000, 5060, b"whole");
                assert_eq!(run(n, &v4(src, pr, (false, 0), &seg)), want);
            }
        }
    }

    #[test]
    fn ipv6_fragment_and_extension_headers_go_by_address() {
        for n in 1..=4 {
            for src in v6_addrs() {
                let want = shard_of_addr(src.into(), n);
                let (_, seg) = l4(None, 5060, 40000, &[7; 40]);
                let first = v6_frag(IpProtocol::Udp, true, 0, &seg[..24]);
                let last = v6_frag(IpProtocol::Udp, false, 24, &seg[24..]);
                assert_eq!(run(n, &v6(src, IpProtocol::Ipv6Frag, &first)), want);
                assert_eq!(run(n, &v6(src, IpProtocol::Ipv6Frag, &last)), want);
                // Hop-by-hop options header in front of UDP.
                let mut hbh = vec![17u8, 0, 1, 4, 0, 0, 0, 0];
                hbh.extend_from_slice(&seg);
                assert_eq!(run(n, &v6(src, IpProtocol::HopByHop, &hbh)), want);
            }
        }
    }

    #[test]
    fn icmp_and_arp_go_by_sender_address() {
        for n in 1..=4 {
            for src in v4_addrs() {
                let want = shard_of_addr(src.into(), n);
                let mut icmp = vec![0u8; 8];
                let mut p = Icmpv4Packet::new_unchecked(&mut icmp[..]);
                p.set_msg_type(Icmpv4Message::EchoRequest);
                p.set_echo_ident(1);
                p.fill_checksum();
                assert_eq!(run(n, &v4(src, IpProtocol::Icmp, (false, 0), &icmp)), want);

                let repr = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
                    source_protocol_addr: src,
                    target_hardware_addr: EthernetAddress([0; 6]),
                    target_protocol_addr: Ipv4Addr::new(198, 18, 1, 2),
                };
                let mut arp = vec![0u8; repr.buffer_len()];
                repr.emit(&mut ArpPacket::new_unchecked(&mut arp[..]));
                assert_eq!(run(n, &eth(EthernetProtocol::Arp, &arp)), want);
            }
            for src in v6_addrs().take(50) {
                let icmp = [128u8, 0, 0, 0, 0, 1, 0, 1];
                assert_eq!(
                    run(n, &v6(src, IpProtocol::Icmpv6, &icmp)),
                    shard_of_addr(src.into(), n)
                );
            }
            // Other EtherTypes: shard 0.
            assert_eq!(run(n, &eth(EthernetProtocol::Unknown(0x88b5), &[1; 46])), 0);
        }
    }

    #[test]
    fn truncated_and_garbage_frames_stay_in_range() {
        let (pr, seg) = l4(Some(2), 40000, 5060, b"hello");
        let v4f = v4(Ipv4Addr::new(198, 18, 9, 9), pr, (false, 0), &seg);
        let v6f = v6(Ipv6Addr::LOCALHOST, pr, &seg);
        for n in 1..=4 {
            for f in [&v4f, &v6f] {
                for cut in 0..f.len() {
                    run(n, &f[..cut]);
                }
            }
            // IHL 15 pointing past the end, IHL 0.
            for ihl in [0x4f, 0x40] {
                let mut f = v4f.clone();
                f[14] = ihl;
                run(n, &f);
            }
            let mut x = 0x1234_5678u32;
            for len in 0..200 {
                let mut f: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                run(n, &f);
                if f.len() >= 14 {
                    for et in [0x0800u16, 0x86dd, 0x0806] {
                        f[12..14].copy_from_slice(&et.to_be_bytes());
                        run(n, &f);
                    }
                }
            }
        }
    }

    #[test]
    fn interpreter_rejects_unknown_and_out_of_range() {
        let bad = [Insn {
            code: 0xff,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        assert!(interpret(&bad, 0, &[]).is_err());
        let jump_out = [Insn {
            code: JMP | JA,
            jt: 0,
            jf: 0,
            k: 5,
        }];
        assert!(interpret(&jump_out, 0, &[]).is_err());
        assert!(interpret(&[], 0, &[]).is_err());
    }

    #[test]
    fn zero_shards_means_one() {
        assert_eq!(shard_of_port(40001, 0), 0);
        assert_eq!(shard_of_addr(Ipv4Addr::new(1, 2, 3, 4).into(), 0), 0);
        let (pr, seg) = l4(None, 1, 40001, b"");
        assert_eq!(
            run(0, &v4(Ipv4Addr::new(1, 2, 3, 4), pr, (false, 0), &seg)),
            0
        );
    }

    proptest! {
        #[test]
        fn every_segment_of_one_inbound_connection_lands_on_one_shard(
            n in 1u16..=8,
            v6src in any::<bool>(),
            raw in any::<u128>(),
            sport in any::<u16>(),
            dport in prop::sample::select(vec![5060u16, 5061, 443, 8080]),
            segs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 1..12),
        ) {
            let src: IpAddr = if v6src {
                Ipv6Addr::from(raw).into()
            } else {
                Ipv4Addr::from(raw as u32).into()
            };
            let want = shard_of_addr(src, n);
            for (flags, payload) in segs {
                let (pr, seg) = l4(Some(flags), sport, dport, &payload);
                let f = match src {
                    IpAddr::V4(a) => v4(a, pr, (false, 0), &seg),
                    IpAddr::V6(a) => v6(a, pr, &seg),
                };
                prop_assert_eq!(run(n, &f), want);
            }
        }

        #[test]
        fn every_segment_to_an_ephemeral_port_lands_on_the_port_shard(
            n in 1u16..=8,
            raw in any::<u32>(),
            dport in 32768u16..=60999,
            flags in any::<u8>(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let (pr, seg) = l4(Some(flags), 5060, dport, &payload);
            let f = v4(Ipv4Addr::from(raw), pr, (false, 0), &seg);
            prop_assert_eq!(run(n, &f), shard_of_port(dport, n));
        }
    }
}
