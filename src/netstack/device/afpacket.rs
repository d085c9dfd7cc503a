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
//! Transmit: `send` is one `send(2)`; `send_batch` (what the driver uses)
//! is one `sendmmsg(2)` per [`TX_MMSG`] frames. Receive: one `recvmsg(2)`
//! per frame (a batch API would need a 64 KiB buffer per frame for GRO
//! aggregates; the TPACKET_V3 ring of issue 9 is the way to batch it).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::ptr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::Device;
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
}

/// An `AF_PACKET` `SOCK_RAW` socket bound to one interface.
pub struct AfPacket {
    sock: Socket,
    ifname: String,
    ifindex: u32,
    mac: EthernetAddress,
    mtu: usize,
    ignore_outgoing: bool,
    buf: Vec<u8>,
    stats: AfPacketStats,
}

impl std::fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacket")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("fd", &self.sock.as_raw_fd())
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
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

impl AfPacket {
    /// Open a packet socket on `ifname` (see the module doc for the steps).
    pub fn open(ifname: &str) -> Result<AfPacket, DeviceError> {
        let ifindex = if_index(ifname)?;
        let io_err = |op: &'static str| {
            let iface = ifname.to_string();
            move |source: io::Error| DeviceError::Io { iface, op, source }
        };
        let sock = match Socket::new(Domain::PACKET, Type::RAW, None) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                return Err(DeviceError::PermissionDenied(ifname.to_string()));
            }
            Err(e) => return Err(io_err("socket(AF_PACKET, SOCK_RAW)")(e)),
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
            });
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
                Err(e) => return Err(io_err("PACKET_IGNORE_OUTGOING")(e)),
            };
        match setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => return Err(io_err("PACKET_QDISC_BYPASS")(e)),
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

        let sll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as libc::c_ushort,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
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
            return Err(io_err("bind")(io::Error::last_os_error()));
        }

        Ok(AfPacket {
            sock,
            ifname: ifname.to_string(),
            ifindex,
            mac: EthernetAddress(mac),
            mtu,
            ignore_outgoing,
            buf: vec![0; RX_BUF],
            stats: AfPacketStats::default(),
        })
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
    /// because the socket buffer was full) since the previous call.
    pub fn kernel_stats(&self) -> io::Result<(u32, u32)> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid and exclusively borrowed for the
        // call; `len` holds the size of `st`, so the kernel writes at most
        // that many bytes.
        let r = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.tp_packets, st.tp_drops))
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
        let mut iov = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; TX_MMSG];
        for (v, f) in iov.iter_mut().zip(frames) {
            // The kernel only reads through this pointer (send side).
            v.iov_base = f.as_ptr().cast_mut().cast();
            v.iov_len = f.len();
        }
        // SAFETY: `mmsghdr` is a C struct of pointers and integers (plus
        // padding); all-zero is a valid value (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; TX_MMSG] = unsafe { mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
            // No destination (msg_name null): the socket is bound to the
            // interface, as for send(2).
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` entries of `msgs` are initialised headers,
        // each pointing to one `iovec` of `iov`, which points to the bytes
        // of a frame borrowed for the whole call; `iov` and `msgs` are live
        // locals not otherwise used during the call. The kernel reads the
        // frames and the headers and writes only the `msg_len` fields of the
        // first `n` entries. An invalid fd is EBADF, not undefined behaviour.
        let r = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
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
    /// recvmsg(2) until EAGAIN or `max` frames. Frames too long for the
    /// buffer and VLAN-tagged frames are skipped (counted in
    /// [`AfPacket::stats`]).
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
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
            if truncated {
                self.stats.rx_truncated += 1;
                continue;
            }
            if status & libc::TP_STATUS_VLAN_VALID != 0 {
                self.stats.rx_vlan += 1;
                continue;
            }
            let meta = RxMeta {
                pkt_type: packet_type(pkttype),
                l4_csum: rx_checksum(status),
            };
            self.stats.rx_frames += 1;
            f(meta, &self.buf[..len]);
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
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
}

/// Wait until `fd` is readable (or writable, with `writable`) or `timeout`
/// passes (poll(2)). EINTR counts as a wake-up.
pub fn wait_fd(fd: RawFd, writable: bool, timeout: Duration) -> io::Result<()> {
    wait_fds(&[(fd, writable)], timeout)
}

/// Wait until one of `fds` is readable (or also writable, where its flag
/// says so) or `timeout` passes (poll(2)); at most 4 descriptors. EINTR
/// counts as a wake-up.
pub fn wait_fds(fds: &[(RawFd, bool)], timeout: Duration) -> io::Result<()> {
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
    }
    Ok(())
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
}
