//! Frame devices: what moves whole Ethernet frames between the stack and
//! the outside. Modelled on smoltcp's `phy` module, but simpler: one trait,
//! batch receive through a callback (no allocation per frame), batch send
//! (a loop over `send` unless the device has a better way).
//!
//! - [`afpacket::AfPacket`]: an `AF_PACKET` socket bound to one interface
//!   (the only `unsafe` code of the stack lives there);
//! - [`memory::MemoryDevice`]: queues in memory, for tests, and a connected
//!   pair for stack-to-stack tests;
//! - [`pcap::Tracer`]: wraps any device and writes every frame to a pcap file;
//! - [`fault::FaultInjector`]: wraps any device and drops / duplicates /
//!   reorders / corrupts a fraction of the frames.

pub mod afpacket;
pub mod fault;
pub mod memory;
pub mod pcap;
pub mod steer;

use std::io;
use std::os::fd::RawFd;

use super::{EthernetAddress, RxMeta};

pub use afpacket::{AfPacket, DeviceError};
pub use fault::{FaultConfig, FaultInjector, FaultRates, FaultStats};
pub use memory::MemoryDevice;
pub use pcap::Tracer;

/// A link-layer device carrying Ethernet II frames (no FCS).
pub trait Device {
    /// Receive frames until the device has none ready (`WouldBlock`) or
    /// `max` frames were taken, calling `f` once per frame with its metadata
    /// and bytes (borrowed from a buffer the device reuses). Returns the
    /// number of frames passed to `f`. "Nothing ready" is `Ok(0)`, not an
    /// error.
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize>;

    /// Transmit one complete frame. `WouldBlock` / `ENOBUFS` mean "not now,
    /// try again later"; the caller keeps the frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Transmit `frames` in order, as many as the device takes now.
    /// `Ok(n)`: the first `n` frames were sent (`n < frames.len()` means
    /// frame `n` was not; the caller keeps it and the rest and learns frame
    /// `n`'s fate from the next call). `Err(e)`: frame 0 was not sent, with
    /// the error `send` would give. An empty slice is `Ok(0)`.
    ///
    /// The default sends one frame at a time; [`AfPacket`] passes the whole
    /// batch to one `sendmmsg(2)`.
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        for (i, f) in frames.iter().enumerate() {
            if let Err(e) = self.send(f) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(frames.len())
    }

    /// The IP MTU (bytes after the Ethernet header).
    fn mtu(&self) -> usize;

    /// The interface's own MAC address.
    fn mac(&self) -> EthernetAddress;

    /// A file descriptor to wait on with poll(2) (readable: frames ready;
    /// writable: `send` may succeed again), or None for devices without one
    /// (in-memory).
    fn poll_fd(&self) -> Option<RawFd>;

    /// Collect a pending socket error (`SO_ERROR`, e.g. ENETDOWN when the
    /// interface went down) after poll(2) reported an error condition on
    /// [`Self::poll_fd`]. With a receive ring nothing else reads it, and
    /// an uncollected error makes every poll return at once. `Ok` when
    /// there was none; devices without an fd have none.
    fn take_error(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: Device + ?Sized> Device for &mut D {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        (**self).recv_batch(max, f)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send(frame)
    }
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        (**self).send_batch(frames)
    }
    fn mtu(&self) -> usize {
        (**self).mtu()
    }
    fn mac(&self) -> EthernetAddress {
        (**self).mac()
    }
    fn poll_fd(&self) -> Option<RawFd> {
        (**self).poll_fd()
    }
    fn take_error(&mut self) -> io::Result<()> {
        (**self).take_error()
    }
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        (**self).recv_batch(max, f)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send(frame)
    }
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        (**self).send_batch(frames)
    }
    fn mtu(&self) -> usize {
        (**self).mtu()
    }
    fn mac(&self) -> EthernetAddress {
        (**self).mac()
    }
    fn poll_fd(&self) -> Option<RawFd> {
        (**self).poll_fd()
    }
    fn take_error(&mut self) -> io::Result<()> {
        (**self).take_error()
    }
}

/// Is this send error "try again later" (the device queue is full) rather
/// than "this frame cannot be sent"?
pub fn is_transient_send_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.kind() == io::ErrorKind::Interrupted
        || e.raw_os_error() == Some(libc::ENOBUFS)
}
