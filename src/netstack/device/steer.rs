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
//!   `p % N == k`, [`is_own_ephemeral`], so replies to an outbound
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
//! `SKF_AD_OFF + SKF_AD_PROTOCOL` (`skb->protocol`, host order; a VLAN tag
//! the NIC stripped is not in it). `tests/netstack_fanout.rs` proves this
//! on a veth: IPv4, IPv6 and fragmented traffic land on the predicted
//! socket, which could not happen with offset 0 at the MAC header.
//! Frames the host *sends* would reach the hook with offset 0 at the MAC
//! header; `join_fanout` sets `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` so they
//! are not passed to the group at all (Linux 6.9+; older kernels ignore the
//! flag and deliver them, steered arbitrarily, as `PacketType::Outgoing`,
//! which the stack drops).
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

/// May shard `shard` of `shards` use local port `port` as an ephemeral
/// port (its replies are steered back to it)? The caller checks that `port`
/// is in the ephemeral range.
pub fn is_own_ephemeral(port: u16, shard: u16, shards: u16) -> bool {
    shard_of_port(port, shards) == shard
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
        self.out.push((
            Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            L::Next,
            L::Next,
        ));
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
                    ABS if code & 0x07 == LD && k >= SKF_AD_OFF => {
                        if k - SKF_AD_OFF == SKF_AD_PROTOCOL {
                            u32::from(protocol)
                        } else {
                            return Err(bad);
                        }
                    }
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
