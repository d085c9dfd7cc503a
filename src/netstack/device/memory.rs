//! An in-memory [`Device`] for tests: the test pushes frames into its
//! receive queue and reads what the stack sent from its transmit queue.
//! [`MemoryDevice::pair`] connects two devices back to back (what one sends
//! the other receives), for stack-to-stack tests on one thread.
//!
//! Single-threaded by design (`Rc<RefCell<…>>` queues, no locks).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use super::Device;
use crate::netstack::{EthernetAddress, PacketType, RxChecksum, RxMeta};

/// A queued frame; `None` metadata is derived from the destination MAC when
/// the frame is received.
type Queue = Rc<RefCell<VecDeque<(Option<RxMeta>, Vec<u8>)>>>;

/// Frames a device accepts into its transmit queue before `send` returns
/// `WouldBlock` (see [`MemoryDevice::set_tx_capacity`]).
pub const DEFAULT_TX_CAPACITY: usize = 4096;

/// An in-memory Ethernet device.
#[derive(Debug)]
pub struct MemoryDevice {
    rx: Queue,
    tx: Queue,
    mac: EthernetAddress,
    mtu: usize,
    tx_capacity: usize,
    /// Buffers of received frames, reused for later pushes.
    pool: Vec<Vec<u8>>,
}

impl MemoryDevice {
    /// A device with empty queues.
    pub fn new(mac: EthernetAddress, mtu: usize) -> Self {
        Self::with_queues(mac, mtu, Queue::default(), Queue::default())
    }

    fn with_queues(mac: EthernetAddress, mtu: usize, rx: Queue, tx: Queue) -> Self {
        MemoryDevice {
            rx,
            tx,
            mac,
            mtu,
            tx_capacity: DEFAULT_TX_CAPACITY,
            pool: Vec::new(),
        }
    }

    /// Two devices connected back to back: frames sent on one are received
    /// on the other (metadata from the receiver's point of view).
    pub fn pair(
        mac_a: EthernetAddress,
        mac_b: EthernetAddress,
        mtu: usize,
    ) -> (MemoryDevice, MemoryDevice) {
        let ab = Queue::default();
        let ba = Queue::default();
        let a = Self::with_queues(mac_a, mtu, ba.clone(), ab.clone());
        let b = Self::with_queues(mac_b, mtu, ab, ba);
        (a, b)
    }

    /// Queue a received frame; its packet type is derived from the
    /// destination MAC, its checksum state is `Unverified`.
    pub fn push_rx(&mut self, frame: &[u8]) {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(frame);
        self.rx.borrow_mut().push_back((None, b));
    }

    /// Queue a received frame with explicit metadata.
    pub fn push_rx_meta(&mut self, meta: RxMeta, frame: &[u8]) {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(frame);
        self.rx.borrow_mut().push_back((Some(meta), b));
    }

    /// The oldest transmitted frame not yet taken.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.borrow_mut().pop_front().map(|(_, f)| f)
    }

    /// Every transmitted frame not yet taken.
    pub fn drain_tx(&mut self) -> Vec<Vec<u8>> {
        self.tx.borrow_mut().drain(..).map(|(_, f)| f).collect()
    }

    /// Frames waiting in the receive queue.
    pub fn rx_len(&self) -> usize {
        self.rx.borrow().len()
    }

    /// Frames waiting in the transmit queue.
    pub fn tx_len(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Make `send` return `WouldBlock` while the transmit queue holds `n`
    /// frames (0: every send blocks), to exercise retry paths.
    pub fn set_tx_capacity(&mut self, n: usize) {
        self.tx_capacity = n;
    }

    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    fn classify(&self, frame: &[u8]) -> RxMeta {
        let pkt_type = match frame.get(..6) {
            Some(d) if d == [0xff; 6] => PacketType::Broadcast,
            Some(d) if d[0] & 1 == 1 => PacketType::Multicast,
            Some(d) if d == self.mac.0 => PacketType::Host,
            _ => PacketType::OtherHost,
        };
        RxMeta {
            pkt_type,
            l4_csum: RxChecksum::Unverified,
        }
    }
}

impl Device for MemoryDevice {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            // Release the borrow before calling `f`: it may send on the
            // paired device, which pushes to this device's other queue only,
            // but keep the borrows short anyway.
            let Some((meta, frame)) = self.rx.borrow_mut().pop_front() else {
                break;
            };
            let meta = meta.unwrap_or_else(|| self.classify(&frame));
            f(meta, &frame);
            if self.pool.len() < 64 {
                self.pool.push(frame);
            }
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self.tx.borrow_mut();
        if tx.len() >= self.tx_capacity {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        tx.push_back((None, frame.to_vec()));
        Ok(())
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);

    fn frame(dst: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f
    }

    fn recv_all(d: &mut MemoryDevice) -> Vec<(RxMeta, Vec<u8>)> {
        let mut v = Vec::new();
        let n = d
            .recv_batch(usize::MAX, &mut |m, f| v.push((m, f.to_vec())))
            .unwrap();
        assert_eq!(n, v.len());
        v
    }

    #[test]
    fn rx_queue_in_order_with_derived_packet_type() {
        let mut d = MemoryDevice::new(A, 1500);
        d.push_rx(&frame(A.0, 1));
        d.push_rx(&frame([0xff; 6], 2));
        d.push_rx(&frame([0x33, 0x33, 0, 0, 0, 1], 3));
        d.push_rx(&frame(B.0, 4));
        let got = recv_all(&mut d);
        let types: Vec<_> = got.iter().map(|(m, _)| m.pkt_type).collect();
        assert_eq!(
            types,
            [
                PacketType::Host,
                PacketType::Broadcast,
                PacketType::Multicast,
                PacketType::OtherHost
            ]
        );
        let tags: Vec<u8> = got.iter().map(|(_, f)| f[14]).collect();
        assert_eq!(tags, [1, 2, 3, 4]);
        assert_eq!(d.rx_len(), 0);
        assert_eq!(d.recv_batch(8, &mut |_, _| {}).unwrap(), 0);
    }

    #[test]
    fn recv_batch_honours_max_and_explicit_meta() {
        let mut d = MemoryDevice::new(A, 1500);
        let meta = RxMeta {
            pkt_type: PacketType::Outgoing,
            l4_csum: RxChecksum::NotReady,
        };
        for i in 0..5 {
            d.push_rx_meta(meta, &frame(A.0, i));
        }
        let mut seen = Vec::new();
        assert_eq!(
            d.recv_batch(3, &mut |m, f| seen.push((m, f[14]))).unwrap(),
            3
        );
        assert_eq!(d.rx_len(), 2);
        assert!(seen.iter().all(|(m, _)| *m == meta));
        assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn tx_queue_and_capacity() {
        let mut d = MemoryDevice::new(A, 1400);
        assert_eq!(d.mtu(), 1400);
        assert_eq!(d.mac(), A);
        assert_eq!(d.poll_fd(), None);
        d.set_tx_capacity(2);
        d.send(b"one").unwrap();
        d.send(b"two").unwrap();
        let e = d.send(b"three").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(super::super::is_transient_send_error(&e));
        assert_eq!(d.pop_tx().as_deref(), Some(&b"one"[..]));
        d.send(b"three").unwrap();
        assert_eq!(d.drain_tx(), vec![b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(d.tx_len(), 0);
    }

    #[test]
    fn pair_delivers_both_ways_with_receiver_meta() {
        let (mut a, mut b) = MemoryDevice::pair(A, B, 1500);
        a.send(&frame(B.0, 7)).unwrap();
        a.send(&frame([0xff; 6], 8)).unwrap();
        b.send(&frame(A.0, 9)).unwrap();
        let at_b = recv_all(&mut b);
        assert_eq!(at_b.len(), 2);
        assert_eq!(at_b[0].0.pkt_type, PacketType::Host);
        assert_eq!(at_b[0].1[14], 7);
        assert_eq!(at_b[1].0.pkt_type, PacketType::Broadcast);
        let at_a = recv_all(&mut a);
        assert_eq!(at_a.len(), 1);
        assert_eq!(at_a[0].0.pkt_type, PacketType::Host);
        assert_eq!(at_a[0].1[14], 9);
    }
}
