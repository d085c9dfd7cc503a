//! A [`Device`] wrapper that writes every received and transmitted frame to
//! a pcap file (the classic libpcap format: magic `a1b2c3d4`, version 2.4,
//! `LINKTYPE_ETHERNET`, microsecond timestamps), readable by tcpdump and
//! Wireshark. Classic pcap has no direction field: rx and tx frames are
//! interleaved in the order they passed.
//!
//! Timestamps are wall-clock time taken once at creation plus a monotonic
//! clock since then, so they never go backwards. A write error stops the
//! trace (logged once, see [`Tracer::error`]) but never the device. Call
//! [`Tracer::flush`] or [`Tracer::into_inner`] to be sure everything is
//! written (a `BufWriter` also flushes when dropped).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Device;
use crate::netstack::{EthernetAddress, RxMeta};

/// `LINKTYPE_ETHERNET` (tcpdump.org link-layer header types).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Longest frame recorded whole; longer ones are cut (`incl_len < orig_len`).
pub const SNAPLEN: u32 = 65535;
/// Magic number of the classic format with microsecond timestamps.
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;

/// Writes the frames passing through `inner` to `out`.
pub struct Tracer<D: Device, W: Write> {
    inner: D,
    out: W,
    /// Wall-clock time (since the Unix epoch) at creation.
    base: std::time::Duration,
    start: Instant,
    error: Option<io::Error>,
    records: u64,
}

impl<D: Device> Tracer<D, BufWriter<File>> {
    /// Trace into a new file at `path` (truncated if it exists).
    pub fn create(inner: D, path: &Path) -> io::Result<Self> {
        Tracer::new(inner, BufWriter::new(File::create(path)?))
    }
}

impl<D: Device, W: Write> Tracer<D, W> {
    /// Wrap `inner`; writes the pcap file header to `out` at once.
    pub fn new(inner: D, mut out: W) -> io::Result<Self> {
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&PCAP_MAGIC.to_le_bytes());
        hdr[4..6].copy_from_slice(&2u16.to_le_bytes());
        hdr[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay 0.
        hdr[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        hdr[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&hdr)?;
        Ok(Tracer {
            inner,
            out,
            base: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            start: Instant::now(),
            error: None,
            records: 0,
        })
    }

    /// The wrapped device.
    pub fn get_ref(&self) -> &D {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Frames written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The write error that stopped the trace, if any.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Flush the writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flush and return the device and the writer.
    pub fn into_inner(mut self) -> (D, W) {
        let _ = self.out.flush();
        (self.inner, self.out)
    }

    fn record(
        out: &mut W,
        error: &mut Option<io::Error>,
        records: &mut u64,
        ts: std::time::Duration,
        frame: &[u8],
    ) {
        if error.is_some() {
            return;
        }
        let incl = frame.len().min(SNAPLEN as usize);
        let mut hdr = [0u8; 16];
        // pcap's ts_sec is 32 bits: wraps in 2106.
        hdr[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
        hdr[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        hdr[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        hdr[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        let res = out
            .write_all(&hdr)
            .and_then(|()| out.write_all(&frame[..incl]));
        match res {
            Ok(()) => *records += 1,
            Err(e) => {
                tracing::warn!(error = %e, "pcap trace write failed; tracing stopped");
                *error = Some(e);
            }
        }
    }

    fn now(&self) -> std::time::Duration {
        self.base + self.start.elapsed()
    }
}

impl<D: Device, W: Write> Device for Tracer<D, W> {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(RxMeta, &[u8])) -> io::Result<usize> {
        let (base, start) = (self.base, self.start);
        let Tracer {
            inner,
            out,
            error,
            records,
            ..
        } = self;
        inner.recv_batch(max, &mut |meta, frame| {
            Self::record(out, error, records, base + start.elapsed(), frame);
            f(meta, frame);
        })
    }

    /// Sends, then records the frame if the device took it (a frame retried
    /// after `WouldBlock` is recorded once).
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.inner.send(frame)?;
        let ts = self.now();
        Self::record(&mut self.out, &mut self.error, &mut self.records, ts, frame);
        Ok(())
    }

    fn mtu(&self) -> usize {
        self.inner.mtu()
    }

    fn mac(&self) -> EthernetAddress {
        self.inner.mac()
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.inner.poll_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryDevice;
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn u32le(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// One parsed record: (timestamp in µs, orig_len, data).
    type Record = (u64, u32, Vec<u8>);

    /// Parse a classic pcap file: header fields, then the records.
    fn parse(b: &[u8]) -> ([u32; 5], Vec<Record>) {
        assert!(b.len() >= 24);
        let hdr = [
            u32le(b, 0),
            u32::from(u16::from_le_bytes([b[4], b[5]])) << 16
                | u32::from(u16::from_le_bytes([b[6], b[7]])),
            u32le(b, 8),
            u32le(b, 16),
            u32le(b, 20),
        ];
        let mut recs = Vec::new();
        let mut at = 24;
        while at < b.len() {
            let (sec, usec, incl, orig) = (
                u32le(b, at),
                u32le(b, at + 4),
                u32le(b, at + 8),
                u32le(b, at + 12),
            );
            assert!(usec < 1_000_000);
            let data = b[at + 16..at + 16 + incl as usize].to_vec();
            recs.push((u64::from(sec) * 1_000_000 + u64::from(usec), orig, data));
            at += 16 + incl as usize;
        }
        assert_eq!(at, b.len(), "trailing bytes");
        (hdr, recs)
    }

    #[test]
    fn header_and_records_round_trip() {
        let mut dev = MemoryDevice::new(MAC, 1500);
        dev.push_rx(&[0xaa; 60]);
        dev.push_rx(&[0xbb; 1514]);
        let mut t = Tracer::new(dev, Vec::new()).unwrap();
        let mut got = 0;
        assert_eq!(t.recv_batch(10, &mut |_, _| got += 1).unwrap(), 2);
        assert_eq!(got, 2);
        t.send(&[0xcc; 42]).unwrap();
        assert_eq!(t.records(), 3);
        assert_eq!(t.mtu(), 1500);
        assert_eq!(t.mac(), MAC);
        let (mut dev, bytes) = t.into_inner();
        assert_eq!(dev.pop_tx().unwrap(), vec![0xcc; 42]);

        let (hdr, recs) = parse(&bytes);
        assert_eq!(
            hdr,
            [PCAP_MAGIC, (2 << 16) | 4, 0, SNAPLEN, LINKTYPE_ETHERNET]
        );
        assert_eq!(recs.len(), 3);
        assert_eq!((recs[0].1, recs[0].2.clone()), (60, vec![0xaa; 60]));
        assert_eq!((recs[1].1, recs[1].2.clone()), (1514, vec![0xbb; 1514]));
        assert_eq!((recs[2].1, recs[2].2.clone()), (42, vec![0xcc; 42]));
        // Wall-clock based (after 2020) and never going backwards.
        assert!(recs[0].0 > 1_577_836_800_000_000);
        assert!(recs.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn blocked_send_is_not_recorded() {
        let mut dev = MemoryDevice::new(MAC, 1500);
        dev.set_tx_capacity(0);
        let mut t = Tracer::new(dev, Vec::new()).unwrap();
        assert!(t.send(&[1; 60]).is_err());
        assert_eq!(t.records(), 0);
        t.get_mut().set_tx_capacity(1);
        t.send(&[1; 60]).unwrap();
        let (_, bytes) = t.into_inner();
        assert_eq!(parse(&bytes).1.len(), 1);
    }

    /// A writer that fails after `ok` bytes.
    struct Failing {
        ok: usize,
    }
    impl Write for Failing {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = b.len().min(self.ok);
            self.ok -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_error_stops_trace_not_device() {
        let dev = MemoryDevice::new(MAC, 1500);
        let mut t = Tracer::new(dev, Failing { ok: 24 + 16 + 10 }).unwrap();
        t.send(&[1; 60]).unwrap();
        t.send(&[2; 60]).unwrap();
        assert!(t.error().is_some());
        assert_eq!(t.records(), 0);
        assert_eq!(t.get_mut().tx_len(), 2);
    }
}
