//! The `AF_PACKET` device: a raw packet socket bound to one Ethernet
//! interface (packet(7)). This file holds the stack's only `unsafe` code
//! (libc calls without a safe wrapper in std or socket2); every block says
//! why it is sound.
//!
//! Socket set-up, in order (`AfPacket::open`):
//! 1. `if_nametoindex` — a missing interface is [`DeviceError::NoSuchInterface`];
//! 2. `socket(AF_PACKET, SOCK_RAW, 0)` — protocol 0 so that nothing is
//!    queued before the bind (EPERM/EACCES: [`DeviceError::PermissionDenied`]);
//! 3. `SIOCGIFHWADDR` / `SIOCGIFMTU` on that socket (so they answer for the
//!    socket's network namespace, unlike /sys of the caller's mount);
//! 4. `PACKET_ADD_MEMBERSHIP` `PACKET_MR_PROMISC` — the stack may own a MAC
//!    other than the interface's;
//! 5. `PACKET_AUXDATA` — `tp_status` tells whether the L4 checksum is
//!    already verified or not yet computed (a veth peer leaves it to
//!    "offload": `TP_STATUS_CSUMNOTREADY`; DESIGN.md "Known traps");
//! 6. `PACKET_IGNORE_OUTGOING` (Linux ≥ 4.20; without it our own frames
//!    come back as `PacketType::Outgoing` and `eth_rcv` drops them);
//! 7. `PACKET_QDISC_BYPASS`, larger `SO_RCVBUF` / `SO_SNDBUF`;
//! 8. `bind` to (`ETH_P_ALL`, ifindex), non-blocking.
//!
//! [`AfPacket::open_with`] adds, before the bind (packet(7): the ring
//! version must be chosen before the ring is created, and a ring set up
//! before the bind means no frame is ever queued on the plain receive
//! path): `SO_BUSY_POLL` when asked ([`AfPacketOptions::busy_poll_us`];
//! EPERM is a warning), then `PACKET_VERSION` = `TPACKET_V3`,
//! `PACKET_RX_RING` (`tpacket_req3`) and `mmap` of the ring. If one of the
//! ring steps fails, the socket is closed and opened again without a ring
//! (a warning), or, with [`AfPacketOptions::ring_required`], the error names
//! the step. [`AfPacket::rx_mode`] says which path is in use.
//!
//! Transmit: `send` is one `send(2)`; `send_batch` (what the driver uses)
//! is one `sendmmsg(2)` per [`TX_MMSG`] frames. With
//! [`AfPacketOptions::tx_csum_offload`] frames leave through a second,
//! send-only packet socket (bound with protocol 0, so nothing is queued on
//! it) with `PACKET_VNET_HDR`: each frame goes behind a `virtio_net_hdr`,
//! "needs checksum" with the span [`csum::tx_span`] finds for a UDP / TCP
//! frame, nothing for any other. The kernel then treats the frame as its
//! own sockets' (`CHECKSUM_PARTIAL`): a NIC with checksum offload computes
//! the checksum, a device without gets it from `skb_checksum_help` on the
//! way out, and a veth peer's local receive needs none; the vnet header's
//! transport offset also spares the kernel its flow-dissector walk per
//! frame. The stack must then write pseudo-header sums
//! (`StackConfig::tx_csum_offload`, set from [`AfPacket::tx_csum_offload`]).
//! The receive socket is left as it is: a vnet header there would change
//! every received frame's layout, and `PACKET_AUXDATA` already tells the
//! checksum state. There is no
//! `PACKET_TX_RING`: over a veth the kernel copies a ring frame at the hop
//! anyway, so it would save only the per-message header handling
//! (BENCHMARKS.md section 8, "PACKET_TX_RING: examined, not built").
//!
//! Receive, plain socket: one `recvmsg(2)` per frame into a 64 KiB buffer
//! (room for a GRO aggregate). Receive, TPACKET_V3 ring: the kernel fills
//! blocks of [`RingConfig::block_bytes`] with frames, each behind a
//! `tpacket3_hdr` and a `sockaddr_ll`, and hands a block over
//! (`block_status` gets `TP_STATUS_USER`) when it is full or when
//! [`RingConfig::timeout_ms`] passed since its first frame; one poll(2)
//! wake-up then yields every frame of the block with no system call per
//! frame. The block is given back (`TP_STATUS_KERNEL`) once all its frames
//! were passed on. The walk over a block is safe code over a byte slice
//! ([`walk_block`]); a corrupt offset is counted
//! ([`AfPacketStats::rx_ring_corrupt`]) and the block given back.
//!
//! Latency trade-off of `timeout_ms` (`stack.limits.rx_ring_timeout_ms`):
//! a block that is not full is only handed over when its timer retires
//! it, so under light load a frame may wait up to `timeout_ms` in the
//! kernel before the stack sees it (a SIP request at low rate pays up to
//! that much extra latency, about half of it on average); under load the
//! blocks fill before the timer and the wait disappears. Smaller values
//! cost more wake-ups at low rate; 0 lets the kernel choose (several ms,
//! from the link speed), so the config default is 1 ms.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::ptr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::Device;
use crate::netstack::csum;
use crate::netstack::{EthernetAddress, PacketType, RxChecksum, RxMeta};

/// Why an `AF_PACKET` device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no such network interface: {0:?}")]
    NoSuchInterface(String),
    #[error("permission denied opening an AF_PACKET socket on {0:?}: needs root or CAP_NET_RAW")]
    PermissionDenied(String),
    #[error("{iface:?} is not an Ethernet interface (hardware type {hwtype})")]
    NotEthernet { iface: String, hwtype: u16 },
    #[error("{op} on {iface:?}: {source}")]
    Io {
        iface: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Receive buffer: room for a 64 KiB GRO/GSO aggregate plus headers (veth
/// can hand such packets to a packet socket); longer frames are counted in
/// [`AfPacketStats::rx_truncated`] and skipped.
const RX_BUF: usize = 65536 + 256;
/// Socket buffer size asked for (the kernel doubles it; `SO_*BUFFORCE`
/// needs CAP_NET_ADMIN, else it is capped by net.core.[rw]mem_max).
const SOCK_BUF: libc::c_int = 4 << 20;
/// Frames handed to one `sendmmsg(2)` (a longer batch is split; the
/// message headers live on the stack, about 5 KiB).
pub const TX_MMSG: usize = 64;

/// Counters of the device itself (frames it did not pass on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    pub rx_frames: u64,
    /// Longer than the receive buffer (skipped).
    pub rx_truncated: u64,
    /// Carried a VLAN tag the kernel stripped (`TP_STATUS_VLAN_VALID`):
    /// not for the untagged link the stack runs on (skipped).
    pub rx_vlan: u64,
    pub tx_frames: u64,
    /// Ring blocks consumed and given back to the kernel (ring mode).
    pub rx_blocks: u64,
    /// Ring blocks whose header or a frame offset pointed outside the
    /// block (the rest of the block was skipped and the block given back).
    pub rx_ring_corrupt: u64,
    /// Frames the kernel dropped (`tp_drops` of `PACKET_STATISTICS`),
    /// summed by [`AfPacket::update_kernel_stats`].
    pub kernel_drops: u64,
    /// Times the kernel found the ring full and froze the queue
    /// (`tp_freeze_q_cnt`, ring mode), summed like `kernel_drops`.
    pub kernel_freeze_q: u64,
}

/// Size of the TPACKET_V3 receive ring (`stack.limits.rx_ring_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block: a multiple of the page size (the kernel refuses
    /// others), large enough for the biggest frame (a 64 KiB GRO aggregate
    /// plus headers, else the frame is truncated and skipped).
    pub block_bytes: usize,
    /// Blocks in the ring (the ring is `block_bytes * blocks` of memory).
    pub blocks: usize,
    /// Milliseconds after which the kernel hands over a block that is not
    /// full (`tp_retire_blk_tov`; see the module doc for the latency cost).
    pub timeout_ms: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_bytes: 1 << 18,
            blocks: 16,
            timeout_ms: 1,
        }
    }
}

/// How [`AfPacket::open_with`] sets the socket up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfPacketOptions {
    /// Receive through a TPACKET_V3 ring of this size (None: recvmsg).
    pub rx_ring: Option<RingConfig>,
    /// A ring that cannot be set up is an error instead of a fallback to
    /// the plain socket.
    pub ring_required: bool,
    /// `SO_BUSY_POLL` microseconds (0: not set).
    pub busy_poll_us: u32,
    /// Transmit through a second, send-only socket with `PACKET_VNET_HDR`,
    /// so that the kernel completes UDP / TCP checksums (see the module
    /// doc). Not available: a warning, and the stack computes them.
    pub tx_csum_offload: bool,
}

/// An `AF_PACKET` `SOCK_RAW` socket bound to one interface.
pub struct AfPacket {
    sock: Socket,
    ifname: String,
    ifindex: u32,
    mac: EthernetAddress,
    mtu: usize,
    ignore_outgoing: bool,
    /// The TPACKET_V3 ring (None: one recvmsg per frame into `buf`).
    ring: Option<RxRing>,
    /// Where the walk over the ring's current block stands.
    ring_cur: BlockCursor,
    buf: Vec<u8>,
    stats: AfPacketStats,
    /// The send-only socket with `PACKET_VNET_HDR` (None: frames leave
    /// through `sock`, whole).
    tx_vnet: Option<Socket>,
}

impl std::fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacket")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("fd", &self.sock.as_raw_fd())
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("rx_mode", &self.rx_mode())
            .field("tx_csum_offload", &self.tx_csum_offload())
            .finish()
    }
}

/// `setsockopt(fd, level, name, &val, sizeof val)`.
fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: `val` points to a live, initialised `T` of exactly
    // `size_of::<T>()` bytes for the duration of the call; the kernel only
    // reads from it. `fd` is a descriptor we own (an invalid one is EBADF,
    // not undefined behaviour).
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An `ifreq` naming `ifname` (which must be shorter than IFNAMSIZ).
fn ifreq_for(ifname: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a C struct of integers, byte arrays and a union of
    // such; all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// `ioctl(fd, request, &mut ifreq)` for the SIOCGIF* getters.
fn ioctl_ifreq(fd: RawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the SIOCGIF* requests used here read `ifr_name` and write
    // into the `ifr_ifru` union of the `ifreq` we pass, which is a valid,
    // exclusively borrowed `ifreq` for the duration of the call.
    let r = unsafe { libc::ioctl(fd, request as _, req as *mut libc::ifreq) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The interface index of `ifname` (if_nametoindex(3)), in the calling
/// thread's network namespace.
pub fn if_index(ifname: &str) -> Result<u32, DeviceError> {
    let missing = || DeviceError::NoSuchInterface(ifname.to_string());
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(missing());
    }
    let c = CString::new(ifname).map_err(|_| missing())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(missing());
    }
    Ok(idx)
}

/// Map `sll_pkttype` (packet(7)) to [`PacketType`].
fn packet_type(sll_pkttype: u8) -> PacketType {
    match sll_pkttype {
        libc::PACKET_HOST => PacketType::Host,
        libc::PACKET_BROADCAST => PacketType::Broadcast,
        libc::PACKET_MULTICAST => PacketType::Multicast,
        libc::PACKET_OTHERHOST => PacketType::OtherHost,
        libc::PACKET_OUTGOING | libc::PACKET_LOOPBACK => PacketType::Outgoing,
        // PACKET_USER / PACKET_KERNEL do not reach a packet socket bound to
        // a device; treat anything else as addressed to us and let
        // `eth_rcv` decide by MAC.
        _ => PacketType::Host,
    }
}

/// Map `tpacket_auxdata.tp_status` to [`RxChecksum`].
fn rx_checksum(tp_status: u32) -> RxChecksum {
    if tp_status & libc::TP_STATUS_CSUMNOTREADY != 0 {
        RxChecksum::NotReady
    } else if tp_status & libc::TP_STATUS_CSUM_VALID != 0 {
        RxChecksum::Valid
    } else {
        RxChecksum::Unverified
    }
}

/// The one place deciding what a received frame becomes, for both receive
/// paths: skipped and counted (longer than the buffer / the ring's frame
/// room: `truncated`; a VLAN tag the kernel stripped), or passed on with
/// its [`RxMeta`] (packet type from `sll_pkttype`, checksum state from
/// `tp_status`).
fn rx_classify(
    pkttype: u8,
    tp_status: u32,
    truncated: bool,
    stats: &mut AfPacketStats,
) -> Option<RxMeta> {
    if truncated {
        stats.rx_truncated += 1;
        return None;
    }
    if tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
        stats.rx_vlan += 1;
        return None;
    }
    stats.rx_frames += 1;
    Some(RxMeta {
        pkt_type: packet_type(pkttype),
        l4_csum: rx_checksum(tp_status),
    })
}

// Layout of a TPACKET_V3 block (linux/if_packet.h; checked against libc's
// structs in the tests). `struct tpacket_block_desc`: version, offset_to_priv,
// then `tpacket_hdr_v1`: block_status, num_pkts, offset_to_first_pkt, ...
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST_PKT: usize = 16;
// `struct tpacket3_hdr`: tp_next_offset, tp_sec, tp_nsec, tp_snaplen,
// tp_len, tp_status, tp_mac (u16), tp_net (u16), ...; 48 bytes, followed
// by the `sockaddr_ll` at TPACKET_ALIGN(48) = 48.
const PKT_NEXT: usize = 0;
const PKT_SNAPLEN: usize = 12;
const PKT_LEN: usize = 16;
const PKT_STATUS: usize = 20;
const PKT_MAC: usize = 24;
const PKT_HDR: usize = 48;
/// `sll_pkttype` of the `sockaddr_ll` after the header.
const PKT_SLL_PKTTYPE: usize = PKT_HDR + 10;
/// `PACKET_VERSION` value of TPACKET_V3 (`enum tpacket_versions`).
const TPACKET_V3: libc::c_int = 2;
/// `tp_frame_size` announced to the kernel (V3 packs frames of any size;
/// the value only has to divide the block and hold a header).
const RING_FRAME: usize = 2048;

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

/// Progress through the block being read (kept between `recv_batch`
/// calls so a batch limit can stop in the middle of a block).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BlockCursor {
    /// The block header was read (num_pkts, first offset).
    started: bool,
    num_pkts: u32,
    /// Frames of the block already handled (passed on or skipped).
    done: u32,
    /// Offset of the next frame's `tpacket3_hdr` in the block.
    off: usize,
}

/// One frame of a block: (next offset, pkttype, tp_status, truncated,
/// bytes), or None when an offset or length points outside the block.
fn ring_frame(block: &[u8], off: usize) -> Option<(u32, u8, u32, bool, &[u8])> {
    let next = rd_u32(block, off.checked_add(PKT_NEXT)?)?;
    let snaplen = rd_u32(block, off.checked_add(PKT_SNAPLEN)?)?;
    let len = rd_u32(block, off.checked_add(PKT_LEN)?)?;
    let status = rd_u32(block, off.checked_add(PKT_STATUS)?)?;
    let mac = rd_u16(block, off.checked_add(PKT_MAC)?)?;
    let pkttype = *block.get(off.checked_add(PKT_SLL_PKTTYPE)?)?;
    let start = off.checked_add(usize::from(mac))?;
    let end = start.checked_add(usize::try_from(snaplen).ok()?)?;
    let data = block.get(start..end)?;
    Some((next, pkttype, status, snaplen < len, data))
}

/// Walk one TPACKET_V3 block the kernel handed over (`block`: its bytes),
/// from where `cur` stands, handling at most `max` frames (passed on or
/// skipped). Returns (frames handled, frames passed to `f`, whether the
/// block is finished and may be given back). A header or frame offset
/// outside the block ends the block: counted in `rx_ring_corrupt`, never a
/// panic. A finished block is counted in `rx_blocks`.
fn walk_block(
    block: &[u8],
    cur: &mut BlockCursor,
    max: usize,
    stats: &mut AfPacketStats,
    f: &mut dyn FnMut(RxMeta, &[u8]),
) -> (usize, usize, bool) {
    let (mut handled, mut passed) = (0, 0);
    if !cur.started {
        let (Some(num), Some(first)) = (rd_u32(block, BLK_NUM_PKTS), rd_u32(block, BLK_FIRST_PKT))
        else {
            stats.rx_ring_corrupt += 1;
            stats.rx_blocks += 1;
            return (0, 0, true);
        };
        *cur = BlockCursor {
            started: true,
            num_pkts: num,
            done: 0,
            off: first as usize,
        };
    }
    // Bounded: every iteration handles one frame or ends the block.
    while cur.done < cur.num_pkts && handled < max {
        let Some((next, pkttype, status, truncated, data)) = ring_frame(block, cur.off) else {
            stats.rx_ring_corrupt += 1;
            stats.rx_blocks += 1;
            return (handled, passed, true);
        };
        cur.done += 1;
        handled += 1;
        if let Some(meta) = rx_classify(pkttype, status, truncated, stats) {
            f(meta, data);
            passed += 1;
        }
        if cur.done < cur.num_pkts {
            // A zero step would read the same frame again.
            match cur.off.checked_add(next as usize) {
                Some(o) if next != 0 => cur.off = o,
                _ => {
                    stats.rx_ring_corrupt += 1;
                    stats.rx_blocks += 1;
                    return (handled, passed, true);
                }
            }
        }
    }
    let finished = cur.done >= cur.num_pkts;
    if finished {
        stats.rx_blocks += 1;
    }
    (handled, passed, finished)
}

/// The mmap'd TPACKET_V3 receive ring of one socket.
struct RxRing {
    base: ptr::NonNull<u8>,
    block_bytes: usize,
    blocks: usize,
    /// The block to read next.
    next: usize,
}

// SAFETY: the mapping belongs to this value alone (no other handle to it
// is kept), so moving it to another thread together with its socket is
// sound; all access goes through `&self`/`&mut self` of the owner.
unsafe impl Send for RxRing {}

impl RxRing {
    /// mmap the ring the kernel created on `fd` with `PACKET_RX_RING`.
    fn map(fd: RawFd, block_bytes: usize, blocks: usize) -> io::Result<RxRing> {
        let len = block_bytes
            .checked_mul(blocks)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh shared mapping of the socket's ring chosen by the
        // kernel (no fixed address), so no existing memory is affected;
        // the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(RxRing {
            base,
            block_bytes,
            blocks,
            next: 0,
        })
    }

    /// The status word of block `i` (< `blocks`).
    fn status(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        debug_assert!(i < self.blocks);
        // SAFETY: block `i` lies inside the mapping (i < blocks, each
        // block_bytes long) and starts page-aligned, so `BLK_STATUS` (8)
        // is a 4-aligned u32 inside it that lives as long as `self`. The
        // kernel reads and writes this word concurrently, which is why it
        // is only accessed as an atomic (same layout as u32).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(i * self.block_bytes + BLK_STATUS)
                .cast::<std::sync::atomic::AtomicU32>()
        }
    }

    /// Block `i` is ours (the kernel set TP_STATUS_USER).
    fn ready(&self, i: usize) -> bool {
        self.status(i).load(std::sync::atomic::Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// The bytes of block `i`. Only while [`Self::ready`] said it is ours
    /// and until [`Self::release`]: the kernel does not write a block it
    /// handed over.
    fn block(&self, i: usize) -> &[u8] {
        debug_assert!(i < self.blocks);
        // SAFETY: the range lies inside the mapping, which lives as long as
        // `self`. Callers only read a block the kernel handed over (status
        // TP_STATUS_USER, observed with Acquire) and drop the slice before
        // giving it back, so the kernel does not write it meanwhile.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(i * self.block_bytes),
                self.block_bytes,
            )
        }
    }

    /// Give block `i` back to the kernel.
    fn release(&self, i: usize) {
        self.status(i)
            .store(libc::TP_STATUS_KERNEL, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `base` and the length are those of the mapping made in
        // `map`, unmapped once, here; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.block_bytes * self.blocks);
        }
    }
}

/// Why `open_inner` failed: a ring step (fall back without the ring) or
/// anything else.
enum OpenError {
    Ring(DeviceError),
    Other(DeviceError),
}

impl From<DeviceError> for OpenError {
    fn from(e: DeviceError) -> Self {
        OpenError::Other(e)
    }
}

/// `bind(2)` a packet socket to interface `ifindex` for `proto` (host
/// order; 0 = receive nothing, send only).
fn bind_ll(fd: RawFd, ifindex: u32, proto: u16) -> io::Result<()> {
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: proto.to_be(),
        sll_ifindex: ifindex as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: `sll` is a valid `sockaddr_ll` that outlives the call and
    // the length passed is its size; the kernel only reads it.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The send-only socket for checksum offload: `PACKET_VNET_HDR` (every
/// frame sent on it is preceded by a `virtio_net_hdr`), the qdisc bypass
/// and send buffer of the main socket, bound with protocol 0 so that
/// nothing is ever queued on it for receive. The failing step on error.
fn open_vnet_tx(ifindex: u32) -> Result<Socket, (&'static str, io::Error)> {
    let sock = Socket::new(Domain::PACKET, Type::RAW, None)
        .map_err(|e| ("socket(AF_PACKET, SOCK_RAW, 0)", e))?;
    let fd = sock.as_raw_fd();
    let one: libc::c_int = 1;
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)
        .map_err(|e| ("PACKET_VNET_HDR", e))?;
    match setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
        Err(e) => return Err(("PACKET_QDISC_BYPASS", e)),
    }
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SOCK_BUF).is_err() {
        sock.set_send_buffer_size(SOCK_BUF as usize)
            .map_err(|e| ("SO_SNDBUF", e))?;
    }
    sock.set_nonblocking(true).map_err(|e| ("O_NONBLOCK", e))?;
    bind_ll(fd, ifindex, 0).map_err(|e| ("bind", e))?;
    Ok(sock)
}

/// Size of `struct virtio_net_hdr` (no `num_buffers`).
const VNET_HDR: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const VNET_NEEDS_CSUM: u8 = 1;

/// The `virtio_net_hdr` in front of a frame on the offload socket: "needs
/// checksum" from `csum_start` with the field at `csum_offset` for a frame
/// that carries a partial checksum ([`csum::tx_span`]), all zero (nothing
/// to do, no segmentation) for any other. The fields are in the host's
/// byte order (legacy virtio, as packet sockets read it).
fn vnet_hdr(frame: &[u8]) -> [u8; VNET_HDR] {
    let mut h = [0u8; VNET_HDR];
    if let Some(sp) = csum::tx_span(frame) {
        let n = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_ne_bytes();
        h[0] = VNET_NEEDS_CSUM;
        // gso_type (h[1]) and gso_size (h[4..6]) stay 0: GSO_NONE.
        h[2..4].copy_from_slice(&n(sp.hdr_end));
        h[6..8].copy_from_slice(&n(sp.start));
        h[8..10].copy_from_slice(&n(sp.offset));
    }
    h
}

impl AfPacket {
    /// Open a packet socket on `ifname` with the plain receive path (one
    /// recvmsg per frame), no busy-poll: `open_with` default options.
    pub fn open(ifname: &str) -> Result<AfPacket, DeviceError> {
        Self::open_with(ifname, &AfPacketOptions::default())
    }

    /// Open a packet socket on `ifname` as `opts` say (see the module doc).
    /// The socket is bound and ready when this returns (a fanout group may
    /// be joined next). A ring that cannot be set up falls back to the
    /// plain socket with one warning, or is an error naming the step with
    /// `ring_required`.
    pub fn open_with(ifname: &str, opts: &AfPacketOptions) -> Result<AfPacket, DeviceError> {
        match Self::open_inner(ifname, opts, opts.rx_ring) {
            Ok(d) => Ok(d),
            Err(OpenError::Other(e)) => Err(e),
            Err(OpenError::Ring(e)) if opts.ring_required => Err(e),
            Err(OpenError::Ring(e)) => {
                tracing::warn!(error = %e, "TPACKET_V3 receive ring unavailable; receiving with recvmsg");
                Self::open_inner(ifname, opts, None).map_err(|e| match e {
                    OpenError::Ring(e) | OpenError::Other(e) => e,
                })
            }
        }
    }

    /// Do frames leave through the offload socket, the kernel completing
    /// UDP / TCP checksums? The stack must then write partial sums
    /// ([`crate::netstack::StackConfig::tx_csum_offload`]), and must not
    /// otherwise.
    pub fn tx_csum_offload(&self) -> bool {
        self.tx_vnet.is_some()
    }

    /// Send whole frames through the main socket from now on (when not
    /// every shard got the offload socket, all go without).
    pub fn disable_tx_csum_offload(&mut self) {
        self.tx_vnet = None;
    }

    fn open_inner(
        ifname: &str,
        opts: &AfPacketOptions,
        ring_cfg: Option<RingConfig>,
    ) -> Result<AfPacket, OpenError> {
        let ifindex = if_index(ifname)?;
        let io_err = |op: &'static str| {
            let iface = ifname.to_string();
            move |source: io::Error| DeviceError::Io { iface, op, source }
        };
        let sock = match Socket::new(Domain::PACKET, Type::RAW, None) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                return Err(DeviceError::PermissionDenied(ifname.to_string()).into());
            }
            Err(e) => return Err(io_err("socket(AF_PACKET, SOCK_RAW)")(e).into()),
        };
        let fd = sock.as_raw_fd();

        let mut req = ifreq_for(ifname);
        ioctl_ifreq(fd, libc::SIOCGIFHWADDR, &mut req).map_err(io_err("SIOCGIFHWADDR"))?;
        // SAFETY: SIOCGIFHWADDR succeeded, so the kernel filled the
        // `ifru_hwaddr` member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != libc::ARPHRD_ETHER {
            return Err(DeviceError::NotEthernet {
                iface: ifname.to_string(),
                hwtype: hw.sa_family,
            }
            .into());
        }
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *m = *b as u8;
        }

        let mut req = ifreq_for(ifname);
        ioctl_ifreq(fd, libc::SIOCGIFMTU, &mut req).map_err(io_err("SIOCGIFMTU"))?;
        // SAFETY: SIOCGIFMTU succeeded, so the kernel filled `ifru_mtu`.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        let mtu = usize::try_from(mtu).unwrap_or(1500);

        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(io_err("PACKET_ADD_MEMBERSHIP(PROMISC)"))?;
        let one: libc::c_int = 1;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
            .map_err(io_err("PACKET_AUXDATA"))?;
        let ignore_outgoing =
            match setsockopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => false,
                Err(e) => return Err(io_err("PACKET_IGNORE_OUTGOING")(e).into()),
            };
        match setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => return Err(io_err("PACKET_QDISC_BYPASS")(e).into()),
        }
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &SOCK_BUF).is_err() {
            sock.set_recv_buffer_size(SOCK_BUF as usize)
                .map_err(io_err("SO_RCVBUF"))?;
        }
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SOCK_BUF).is_err() {
            sock.set_send_buffer_size(SOCK_BUF as usize)
                .map_err(io_err("SO_SNDBUF"))?;
        }
        sock.set_nonblocking(true).map_err(io_err("O_NONBLOCK"))?;
        if opts.busy_poll_us > 0 {
            let us = libc::c_int::try_from(opts.busy_poll_us).unwrap_or(libc::c_int::MAX);
            match setsockopt(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, &us) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                    tracing::warn!(
                        iface = ifname,
                        busy_poll_us = opts.busy_poll_us,
                        "SO_BUSY_POLL refused (needs CAP_NET_ADMIN above net.core.busy_poll); not set"
                    );
                }
                Err(e) => return Err(io_err("SO_BUSY_POLL")(e).into()),
            }
        }

        let ring = match ring_cfg {
            None => None,
            Some(rc) => Some(Self::setup_ring(fd, &rc).map_err(|(op, source)| {
                OpenError::Ring(DeviceError::Io {
                    iface: ifname.to_string(),
                    op,
                    source,
                })
            })?),
        };

        bind_ll(fd, ifindex, libc::ETH_P_ALL as u16).map_err(io_err("bind"))?;

        let tx_vnet = if opts.tx_csum_offload {
            match open_vnet_tx(ifindex) {
                Ok(t) => Some(t),
                Err((op, e)) => {
                    tracing::warn!(
                        iface = ifname, step = op, error = %e,
                        "transmit checksum offload (PACKET_VNET_HDR) unavailable; the stack computes UDP/TCP checksums"
                    );
                    None
                }
            }
        } else {
            None
        };

        Ok(AfPacket {
            sock,
            ifname: ifname.to_string(),
            ifindex,
            mac: EthernetAddress(mac),
            mtu,
            ignore_outgoing,
            // The ring needs no copy buffer.
            buf: if ring.is_some() {
                Vec::new()
            } else {
                vec![0; RX_BUF]
            },
            ring,
            ring_cur: BlockCursor::default(),
            stats: AfPacketStats::default(),
            tx_vnet,
        })
    }

    /// `PACKET_VERSION` = TPACKET_V3, `PACKET_RX_RING`, mmap: the ring, or
    /// the failed step and its error.
    fn setup_ring(fd: RawFd, rc: &RingConfig) -> Result<RxRing, (&'static str, io::Error)> {
        let inval = || io::Error::from_raw_os_error(libc::EINVAL);
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3)
            .map_err(|e| ("PACKET_VERSION(TPACKET_V3)", e))?;
        let block_size = u32::try_from(rc.block_bytes).map_err(|_| ("PACKET_RX_RING", inval()))?;
        let block_nr = u32::try_from(rc.blocks).map_err(|_| ("PACKET_RX_RING", inval()))?;
        let per_block = (rc.block_bytes / RING_FRAME) as u32;
        let frame_nr = per_block
            .checked_mul(block_nr)
            .ok_or(("PACKET_RX_RING", inval()))?;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: block_nr,
            tp_frame_size: RING_FRAME as u32,
            tp_frame_nr: frame_nr,
            tp_retire_blk_tov: rc.timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
            .map_err(|e| ("PACKET_RX_RING", e))?;
        RxRing::map(fd, rc.block_bytes, rc.blocks).map_err(|e| ("mmap(rx ring)", e))
    }

    /// "ring" (TPACKET_V3 receive ring) or "socket" (one recvmsg per frame).
    pub fn rx_mode(&self) -> &'static str {
        if self.ring.is_some() {
            "ring"
        } else {
            "socket"
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether PACKET_IGNORE_OUTGOING took effect (else our own frames come
    /// back as [`PacketType::Outgoing`]).
    pub fn ignores_outgoing(&self) -> bool {
        self.ignore_outgoing
    }

    pub fn stats(&self) -> AfPacketStats {
        self.stats
    }

    /// `PACKET_STATISTICS`: (frames received, frames the kernel dropped
    /// because the socket buffer or the ring was full) since the previous
    /// call (of this or [`Self::update_kernel_stats`]: reading resets the
    /// kernel's counters). Works in both receive modes.
    pub fn kernel_stats(&self) -> io::Result<(u32, u32)> {
        let (packets, drops, _) = self.packet_statistics()?;
        Ok((packets, drops))
    }

    /// Read `PACKET_STATISTICS` and add its drop counts to
    /// [`AfPacketStats::kernel_drops`] / [`AfPacketStats::kernel_freeze_q`].
    pub fn update_kernel_stats(&mut self) -> io::Result<()> {
        let (_, drops, freeze) = self.packet_statistics()?;
        self.stats.kernel_drops += u64::from(drops);
        self.stats.kernel_freeze_q += u64::from(freeze);
        Ok(())
    }

    /// (tp_packets, tp_drops, tp_freeze_q_cnt); the last is 0 without a
    /// TPACKET_V3 ring (the kernel then writes a `tpacket_stats` only).
    fn packet_statistics(&self) -> io::Result<(u32, u32, u32)> {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid and exclusively borrowed for the
        // call; `len` holds the size of `st`, so the kernel writes at most
        // that many bytes (fewer, a `tpacket_stats`, without a V3 ring).
        let r = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.tp_packets, st.tp_drops, st.tp_freeze_q_cnt))
    }

    /// `recv_batch` over the ring: blocks the kernel handed over, in ring
    /// order, until `max` frames were handled or the next block is the
    /// kernel's.
    fn recv_ring(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let (mut handled, mut passed) = (0, 0);
        // Bounded: each iteration finishes a block or leaves; at most one
        // pass over the ring per call.
        for _ in 0..=ring.blocks {
            if handled >= max {
                break;
            }
            let i = ring.next;
            if !self.ring_cur.started && !ring.ready(i) {
                break;
            }
            let (h, p, finished) = walk_block(
                ring.block(i),
                &mut self.ring_cur,
                max - handled,
                &mut self.stats,
                f,
            );
            handled += h;
            passed += p;
            if !finished {
                break;
            }
            ring.release(i);
            self.ring_cur = BlockCursor::default();
            ring.next = (i + 1) % ring.blocks;
        }
        passed
    }

    /// One `recvmsg` into `self.buf`: `Ok(None)` when nothing is ready,
    /// else (frame length, sll_pkttype, tp_status, control truncated).
    fn recv_one(&mut self) -> io::Result<Option<(usize, u8, u32, bool)>> {
        let mut sll = libc::sockaddr_ll {
            sll_family: 0,
            sll_protocol: 0,
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // u64 elements: aligned for `cmsghdr`; 64 bytes hold one
        // PACKET_AUXDATA message (CMSG_SPACE(20) = 40).
        let mut ctrl = [0u64; 8];
        // SAFETY: `msghdr` is a C struct of pointers and integers (plus
        // padding on some targets); all-zero is a valid value (null
        // pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&ctrl) as _;
        // SAFETY: every pointer in `msg` refers to a live local (`sll`,
        // `iov`, `ctrl`) or to `self.buf`, each valid for writes of the
        // length given next to it, and none is used elsewhere during the
        // call. MSG_TRUNC makes the return value the real frame length.
        let r = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        let len = r as usize;
        let mut status = 0u32;
        // SAFETY: `msg` was filled by a successful recvmsg: msg_control
        // points into `ctrl` and msg_controllen says how much of it the
        // kernel wrote, which is what CMSG_FIRSTHDR / CMSG_NXTHDR walk. A
        // header is only read after CMSG_FIRSTHDR/NXTHDR returned it
        // non-null (so it lies within that length), and its data only when
        // `cmsg_len` covers a whole `tpacket_auxdata`; the read is
        // unaligned-safe.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let h = &*c;
                let need = libc::CMSG_LEN(mem::size_of::<libc::tpacket_auxdata>() as u32) as usize;
                if h.cmsg_level == libc::SOL_PACKET
                    && h.cmsg_type == libc::PACKET_AUXDATA
                    && h.cmsg_len as usize >= need
                {
                    let aux: libc::tpacket_auxdata = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    status = aux.tp_status;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let truncated = msg.msg_flags & libc::MSG_TRUNC != 0 || len > self.buf.len();
        Ok(Some((len, sll.sll_pkttype, status, truncated)))
    }

    /// One `sendmmsg(2)` of at most [`TX_MMSG`] frames: how many the kernel
    /// took (at least one), or the error of the first frame.
    fn send_mmsg(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let n = frames.len().min(TX_MMSG);
        if n == 0 {
            return Ok(0);
        }
        // Only the first `n` entries are written (and read by the kernel):
        // no zero-fill of the whole 5 KiB per call when a round has a frame
        // or two.
        // With the offload socket each message is two pieces: the
        // `virtio_net_hdr` (from `vnet`), then the frame.
        let (fd, parts) = match &self.tx_vnet {
            Some(t) => (t.as_raw_fd(), 2),
            None => (self.sock.as_raw_fd(), 1),
        };
        let mut vnet = [[0u8; VNET_HDR]; TX_MMSG];
        if parts == 2 {
            for (h, f) in vnet.iter_mut().zip(frames).take(n) {
                *h = vnet_hdr(f);
            }
        }
        let mut iov = [const { MaybeUninit::<[libc::iovec; 2]>::uninit() }; TX_MMSG];
        let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; TX_MMSG];
        for (((v, m), f), h) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(frames)
            .zip(&vnet)
            .take(n)
        {
            // The kernel only reads through these pointers (send side).
            let frame = libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            };
            let hdr = libc::iovec {
                iov_base: h.as_ptr().cast_mut().cast(),
                iov_len: VNET_HDR,
            };
            let v = v.write(if parts == 2 {
                [hdr, frame]
            } else {
                [frame, hdr]
            });
            // SAFETY: `mmsghdr` is a C struct of pointers and integers (plus
            // padding); all-zero is a valid value (null pointers, zero
            // lengths).
            let mut mh: libc::mmsghdr = unsafe { mem::zeroed() };
            // No destination (msg_name null): the socket is bound to the
            // interface, as for send(2).
            mh.msg_hdr.msg_iov = v.as_mut_ptr();
            mh.msg_hdr.msg_iovlen = parts;
            m.write(mh);
        }
        // SAFETY: the first `n` entries of `msgs` are initialised headers,
        // each pointing to the `iovec` pair of `iov` written with it (of
        // which the kernel reads `msg_iovlen` = 1 or 2 entries), which point
        // to the bytes of a frame and of its `vnet` header, all borrowed or
        // owned for the whole call; the kernel reads only those `n` entries
        // (the rest stay uninitialised). `iov`, `vnet` and `msgs` are live
        // locals not otherwise used during the call. The kernel reads the
        // frames and the headers and writes only the `msg_len` fields of the
        // first `n` entries. An invalid fd is EBADF, not undefined
        // behaviour.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr().cast::<libc::mmsghdr>(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // A packet socket sends a frame whole or not at all (packet_snd
        // returns the length or an error), so `msg_len` is not checked.
        let sent = (r as usize).min(n);
        self.stats.tx_frames += sent as u64;
        Ok(sent)
    }
}

impl Device for AfPacket {
    /// The ring's blocks (no system call), or recvmsg(2) until EAGAIN, for
    /// at most `max` frames. Frames too long for the buffer / block and
    /// VLAN-tagged frames are skipped (counted in [`AfPacket::stats`]) and
    /// count against `max`.
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        if self.ring.is_some() {
            return Ok(self.recv_ring(max, f));
        }
        let mut n = 0;
        // Bounded: each iteration consumes one queued frame or returns;
        // skipped frames count against `max` too.
        for _ in 0..max {
            let (len, pkttype, status, truncated) = match self.recv_one() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Some(meta) = rx_classify(pkttype, status, truncated, &mut self.stats) {
                f(meta, &self.buf[..len]);
                n += 1;
            }
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.tx_vnet.is_some() {
            // One message of two pieces (the `virtio_net_hdr`, the frame).
            return match self.send_mmsg(&[frame])? {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                _ => Ok(()),
            };
        }
        let n = self.sock.send(frame)?;
        if n != frame.len() {
            return Err(io::Error::other(format!(
                "short send on {}: {n} of {} bytes",
                self.ifname,
                frame.len()
            )));
        }
        self.stats.tx_frames += 1;
        Ok(())
    }

    /// sendmmsg(2) in chunks of [`TX_MMSG`]: one system call for a round's
    /// frames instead of one per frame.
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut done = 0;
        // Bounded: every iteration sends at least one frame or leaves.
        while done < frames.len() {
            let chunk = &frames[done..frames.len().min(done + TX_MMSG)];
            match self.send_mmsg(chunk) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if done == 0 => return Err(e),
                // Frames were sent already; the caller learns this error
                // when it tries the first unsent frame again.
                Err(_) => break,
            }
        }
        Ok(done)
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }

    fn take_error(&mut self) -> io::Result<()> {
        match self.sock.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Wait until `fd` is readable (or writable, with `writable`) or `timeout`
/// passes (poll(2)). EINTR counts as a wake-up.
pub fn wait_fd(fd: RawFd, writable: bool, timeout: Duration) -> io::Result<()> {
    wait_fds(&[(fd, writable)], timeout).map(|_| ())
}

/// Wait until one of `fds` is readable (or also writable, where its flag
/// says so) or `timeout` passes (poll(2)); at most 4 descriptors. EINTR
/// counts as a wake-up. Returns a bit mask of the descriptors (bit i for
/// `fds[i]`) that reported an error condition (POLLERR / POLLHUP /
/// POLLNVAL): the caller must collect the error (e.g. `SO_ERROR`, see
/// [`Device::take_error`]) or the next wait returns at once again.
pub fn wait_fds(fds: &[(RawFd, bool)], timeout: Duration) -> io::Result<u8> {
    let mut p = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(p.len());
    for (slot, &(fd, writable)) in p.iter_mut().zip(fds) {
        slot.fd = fd;
        slot.events = libc::POLLIN | if writable { libc::POLLOUT } else { 0 };
    }
    // Round up so a sub-millisecond deadline does not become a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is an array of valid, exclusively borrowed `pollfd`s and
    // the count passed (`n` <= 4) does not exceed its length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok(0);
    }
    let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
    Ok(p[..n]
        .iter()
        .enumerate()
        .filter(|(_, q)| q.revents & bad != 0)
        .fold(0u8, |m, (i, _)| m | 1 << i))
}

/// The IPv4 and IPv6 addresses the kernel has on `ifname` (getifaddrs(3)),
/// in the calling thread's network namespace. Callers warn when the stack
/// is configured with one of them: the kernel would answer too (its own
/// ARP replies, RSTs and ICMP errors; DESIGN.md "Known traps").
pub fn kernel_addresses(ifname: &str) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: `head` is a valid place for getifaddrs to store the list
    // head; on success the list is ours until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which is
        // not freed until after this loop.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and points to a socket address
        // whose real type is given by its `sa_family`; each branch reads
        // the struct that family denotes (unaligned-safe).
        unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin: libc::sockaddr_in = ptr::read_unaligned(ifa.ifa_addr.cast());
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6: libc::sockaddr_in6 = ptr::read_unaligned(ifa.ifa_addr.cast());
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once;
    // no reference into the list outlives this point.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Move the calling thread into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME`, as `ip netns add` creates it), with setns(2).
/// Only this thread changes namespace; sockets it opens afterwards (an
/// [`AfPacket`], a `UdpSocket`) stay in that namespace wherever they are
/// used. Needs CAP_SYS_ADMIN.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: `f` is an open descriptor for the duration of the call;
    // setns has no memory-safety preconditions.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// --- PACKET_FANOUT_CBPF group membership (issue 9, helper "steer") ---

/// `setsockopt(SOL_PACKET, PACKET_FANOUT, id | type_flags << 16)`.
const PACKET_FANOUT: libc::c_int = 18;
/// `setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, &sock_fprog)`.
const PACKET_FANOUT_DATA: libc::c_int = 22;
/// Fanout mode: the group's classic-BPF program picks the socket.
const PACKET_FANOUT_CBPF: u32 = 6;
/// Fanout flag (Linux 6.2+): frames the host sends are not passed to the
/// group. The group's hook replaces the sockets' own, so their
/// `PACKET_IGNORE_OUTGOING` no longer applies.
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;

const _: () = assert!(
    mem::size_of::<super::steer::Insn>() == mem::size_of::<libc::sock_filter>()
        && mem::align_of::<super::steer::Insn>() == mem::align_of::<libc::sock_filter>()
);

impl AfPacket {
    /// Join the `PACKET_FANOUT_CBPF` group `group` of this network namespace
    /// (created by the first socket that joins it) and install `prog` (see
    /// [`super::steer::program`]) as the group's steering program. Sockets
    /// are numbered 0, 1, … in the order they join: join shard 0's socket
    /// first. Every member must be bound to the same interface and use the
    /// same flags; the kernel takes the program's return value modulo the
    /// number of members. Until the program is set the group sends every
    /// frame to member 0. Setting it again (each shard does) replaces it.
    pub fn join_fanout(&self, group: u16, prog: &[super::steer::Insn]) -> io::Result<()> {
        if prog.is_empty() || prog.len() > libc::BPF_MAXINSNS as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let fd = self.sock.as_raw_fd();
        let with =
            u32::from(group) | ((PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16);
        // A kernel that refuses the flag (or a group created without it)
        // answers EINVAL: join without; outgoing frames then arrive as
        // `PacketType::Outgoing` and are dropped by the stack.
        match setsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT, &with) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let without = u32::from(group) | (PACKET_FANOUT_CBPF << 16);
                setsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT, &without)?;
            }
            r => r?,
        }
        let fprog = libc::sock_fprog {
            len: prog.len() as libc::c_ushort,
            // The kernel only reads (copies) the instructions; `Insn` has the
            // layout of `sock_filter` (asserted above).
            filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        setsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT_DATA, &fprog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named() {
        for name in ["sipedge-nope0", "", "x-name-longer-than-ifnamsiz", "a\0b"] {
            match AfPacket::open(name) {
                Err(DeviceError::NoSuchInterface(n)) => assert_eq!(n, name),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let e = DeviceError::NoSuchInterface("eth9".into()).to_string();
        assert_eq!(e, "no such network interface: \"eth9\"");
        let e = DeviceError::PermissionDenied("eth0".into()).to_string();
        assert!(e.contains("needs root or CAP_NET_RAW"), "{e}");
    }

    #[test]
    fn loopback_is_refused_as_not_ethernet_or_permission() {
        // As root the socket opens and `lo` (ARPHRD_LOOPBACK) is refused;
        // without CAP_NET_RAW the socket itself is refused.
        match AfPacket::open("lo") {
            Err(DeviceError::NotEthernet { hwtype, .. }) => {
                assert_eq!(hwtype, libc::ARPHRD_LOOPBACK)
            }
            Err(DeviceError::PermissionDenied(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn packet_types_and_checksum_status() {
        assert_eq!(packet_type(libc::PACKET_HOST), PacketType::Host);
        assert_eq!(packet_type(libc::PACKET_BROADCAST), PacketType::Broadcast);
        assert_eq!(packet_type(libc::PACKET_MULTICAST), PacketType::Multicast);
        assert_eq!(packet_type(libc::PACKET_OTHERHOST), PacketType::OtherHost);
        assert_eq!(packet_type(libc::PACKET_OUTGOING), PacketType::Outgoing);
        assert_eq!(rx_checksum(0), RxChecksum::Unverified);
        assert_eq!(rx_checksum(libc::TP_STATUS_USER), RxChecksum::Unverified);
        assert_eq!(
            rx_checksum(libc::TP_STATUS_USER | libc::TP_STATUS_CSUMNOTREADY),
            RxChecksum::NotReady
        );
        assert_eq!(rx_checksum(libc::TP_STATUS_CSUM_VALID), RxChecksum::Valid);
    }

    #[test]
    fn kernel_addresses_of_loopback() {
        let a = kernel_addresses("lo").unwrap();
        // Containers may lack ::1, but lo always has 127.0.0.1 when up.
        if !a.is_empty() {
            assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{a:?}");
        }
        assert!(kernel_addresses("sipedge-nope0").unwrap().is_empty());
    }

    #[test]
    fn wait_fd_times_out() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let t = std::time::Instant::now();
        wait_fd(a.as_raw_fd(), false, Duration::from_millis(20)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(15));
        // Writable at once.
        let t = std::time::Instant::now();
        wait_fd(a.as_raw_fd(), true, Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    /// A synthetic TPACKET_V3 block of `size` bytes holding `frames`
    /// (tp_status, sll_pkttype, bytes, tp_len) laid out as the kernel does.
    fn synth_block(size: usize, frames: &[(u32, u8, &[u8], u32)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put32(&mut b, BLK_STATUS, libc::TP_STATUS_USER);
        put32(&mut b, BLK_NUM_PKTS, frames.len() as u32);
        let first = 48;
        put32(&mut b, BLK_FIRST_PKT, first as u32);
        let mut off = first;
        for (k, &(status, pkttype, data, len)) in frames.iter().enumerate() {
            let mac = 82; // TPACKET_ALIGN(48 + 20) + 2, as for Ethernet
            let next = (mac + data.len()).next_multiple_of(16);
            let last = k + 1 == frames.len();
            put32(&mut b, off + PKT_NEXT, if last { 0 } else { next as u32 });
            put32(&mut b, off + PKT_SNAPLEN, data.len() as u32);
            put32(&mut b, off + PKT_LEN, len);
            put32(&mut b, off + PKT_STATUS, status);
            b[off + PKT_MAC..off + PKT_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[off + PKT_SLL_PKTTYPE] = pkttype;
            b[off + mac..off + mac + data.len()].copy_from_slice(data);
            off += next;
        }
        b
    }

    type Got = Vec<(RxMeta, Vec<u8>)>;

    fn walk(
        block: &[u8],
        cur: &mut BlockCursor,
        max: usize,
        st: &mut AfPacketStats,
    ) -> ((usize, usize, bool), Got) {
        let mut got = Vec::new();
        let r = walk_block(block, cur, max, st, &mut |m, f| got.push((m, f.to_vec())));
        (r, got)
    }

    #[test]
    fn ring_layout_matches_linux_headers() {
        assert_eq!(mem::size_of::<libc::tpacket_block_desc>(), 48);
        assert_eq!(mem::offset_of!(libc::tpacket_block_desc, hdr), 8);
        assert_eq!(
            mem::offset_of!(libc::tpacket_hdr_v1, block_status),
            BLK_STATUS - 8
        );
        assert_eq!(
            mem::offset_of!(libc::tpacket_hdr_v1, num_pkts),
            BLK_NUM_PKTS - 8
        );
        assert_eq!(
            mem::offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            BLK_FIRST_PKT - 8
        );
        assert_eq!(
            mem::offset_of!(libc::tpacket3_hdr, tp_next_offset),
            PKT_NEXT
        );
        assert_eq!(mem::offset_of!(libc::tpacket3_hdr, tp_snaplen), PKT_SNAPLEN);
        assert_eq!(mem::offset_of!(libc::tpacket3_hdr, tp_len), PKT_LEN);
        assert_eq!(mem::offset_of!(libc::tpacket3_hdr, tp_status), PKT_STATUS);
        assert_eq!(mem::offset_of!(libc::tpacket3_hdr, tp_mac), PKT_MAC);
        assert_eq!(
            libc::TPACKET3_HDRLEN,
            PKT_HDR + mem::size_of::<libc::sockaddr_ll>()
        );
        assert_eq!(
            mem::offset_of!(libc::sockaddr_ll, sll_pkttype),
            PKT_SLL_PKTTYPE - PKT_HDR
        );
        assert_eq!(
            libc::tpacket_versions::TPACKET_V3 as libc::c_int,
            TPACKET_V3
        );
    }

    #[test]
    fn ring_block_yields_every_frame_with_its_type_and_checksum_state() {
        let (a, b, c) = ([1u8; 60], [2u8; 1514], [3u8; 42]);
        let blk = synth_block(
            8192,
            &[
                (0, libc::PACKET_HOST, &a, 60),
                (
                    libc::TP_STATUS_CSUMNOTREADY,
                    libc::PACKET_BROADCAST,
                    &b,
                    1514,
                ),
                (libc::TP_STATUS_CSUM_VALID, libc::PACKET_OTHERHOST, &c, 42),
            ],
        );
        let (mut cur, mut st) = (BlockCursor::default(), AfPacketStats::default());
        let (r, got) = walk(&blk, &mut cur, 64, &mut st);
        assert_eq!(r, (3, 3, true));
        let want = [
            (PacketType::Host, RxChecksum::Unverified, a.to_vec()),
            (PacketType::Broadcast, RxChecksum::NotReady, b.to_vec()),
            (PacketType::OtherHost, RxChecksum::Valid, c.to_vec()),
        ];
        for ((m, f), (t, ck, bytes)) in got.iter().zip(want) {
            assert_eq!((m.pkt_type, m.l4_csum, f), (t, ck, &bytes));
        }
        assert_eq!((st.rx_frames, st.rx_blocks, st.rx_ring_corrupt), (3, 1, 0));
    }

    #[test]
    fn ring_truncated_and_vlan_frames_are_skipped_and_counted() {
        let (a, b, c) = ([1u8; 60], [2u8; 100], [3u8; 60]);
        let blk = synth_block(
            4096,
            &[
                (0, libc::PACKET_HOST, &a, 60),
                // snaplen 100 of a 70000-byte frame: cut by the kernel
                (0, libc::PACKET_HOST, &b, 70000),
                (libc::TP_STATUS_VLAN_VALID, libc::PACKET_HOST, &c, 60),
            ],
        );
        let (mut cur, mut st) = (BlockCursor::default(), AfPacketStats::default());
        let (r, got) = walk(&blk, &mut cur, 64, &mut st);
        assert_eq!(r, (3, 1, true));
        assert_eq!(got[0].1, a);
        assert_eq!((st.rx_frames, st.rx_truncated, st.rx_vlan), (1, 1, 1));
    }

    #[test]
    fn ring_empty_block_is_finished_at_once() {
        let blk = synth_block(4096, &[]);
        let (mut cur, mut st) = (BlockCursor::default(), AfPacketStats::default());
        let (r, got) = walk(&blk, &mut cur, 64, &mut st);
        assert_eq!(r, (0, 0, true));
        assert!(got.is_empty());
        assert_eq!((st.rx_blocks, st.rx_ring_corrupt), (1, 0));
    }

    #[test]
    fn ring_batch_limit_stops_mid_block_and_resumes_there() {
        let frames: Vec<[u8; 60]> = (0..5u8).map(|i| [i; 60]).collect();
        let list: Vec<(u32, u8, &[u8], u32)> = frames
            .iter()
            .map(|f| (0, libc::PACKET_HOST, &f[..], 60))
            .collect();
        let blk = synth_block(4096, &list);
        let (mut cur, mut st) = (BlockCursor::default(), AfPacketStats::default());
        let (r, got) = walk(&blk, &mut cur, 2, &mut st);
        assert_eq!(r, (2, 2, false));
        assert_eq!(st.rx_blocks, 0, "not finished yet");
        let (r2, got2) = walk(&blk, &mut cur, 0, &mut st);
        assert_eq!((r2, got2.len()), ((0, 0, false), 0));
        let (r3, got3) = walk(&blk, &mut cur, 64, &mut st);
        assert_eq!(r3, (3, 3, true));
        let tags: Vec<u8> = got.iter().chain(&got3).map(|(_, f)| f[0]).collect();
        assert_eq!(tags, [0, 1, 2, 3, 4]);
        assert_eq!((st.rx_frames, st.rx_blocks), (5, 1));
    }

    #[test]
    fn ring_corrupt_offsets_are_counted_and_end_the_block_without_panic() {
        let (a, b) = ([1u8; 60], [2u8; 60]);
        let good = synth_block(4096, &[(0, 0, &a, 60), (0, 0, &b, 60)]);
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        let second = 48 + (82 + 60usize).next_multiple_of(16);
        let mut cases: Vec<(&str, Vec<u8>, usize)> = Vec::new();
        // first frame offset outside the block
        let mut c = good.clone();
        put32(&mut c, BLK_FIRST_PKT, 5000);
        cases.push(("first offset", c, 0));
        let mut c = good.clone();
        put32(&mut c, BLK_FIRST_PKT, u32::MAX);
        cases.push(("first offset max", c, 0));
        // next offset of frame 1 points outside: frame 1 passed, then stop
        let mut c = good.clone();
        put32(&mut c, 48 + PKT_NEXT, 1 << 20);
        cases.push(("next offset", c, 1));
        // a zero step would loop on frame 1
        let mut c = good.clone();
        put32(&mut c, 48 + PKT_NEXT, 0);
        cases.push(("zero next", c, 1));
        // frame 2's data runs past the end of the block
        let mut c = good.clone();
        put32(&mut c, second + PKT_SNAPLEN, 4000);
        cases.push(("snaplen", c, 1));
        let mut c = good.clone();
        c[second + PKT_MAC..second + PKT_MAC + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        cases.push(("tp_mac", c, 1));
        // more frames announced than the block holds
        let mut c = good.clone();
        put32(&mut c, BLK_NUM_PKTS, 1000);
        put32(&mut c, second + PKT_NEXT, 4000);
        cases.push(("num_pkts", c, 2));
        // a block too short for its own header
        cases.push(("short block", vec![0u8; 12], 0));
        for (what, blk, passed) in cases {
            let (mut cur, mut st) = (BlockCursor::default(), AfPacketStats::default());
            let (r, got) = walk(&blk, &mut cur, 64, &mut st);
            assert_eq!((r.1, r.2, got.len()), (passed, true, passed), "{what}");
            assert_eq!((st.rx_ring_corrupt, st.rx_blocks), (1, 1), "{what}");
        }
    }

    #[test]
    fn open_with_reports_a_missing_interface_before_the_ring() {
        // Without a usable interface the ring is never reached: the error
        // is the interface's, with or without ring_required.
        let opts = AfPacketOptions {
            rx_ring: Some(RingConfig::default()),
            ring_required: true,
            busy_poll_us: 0,
            tx_csum_offload: true,
        };
        assert!(matches!(
            AfPacket::open_with("sipedge-nope0", &opts),
            Err(DeviceError::NoSuchInterface(_))
        ));
    }
}
