//! Fragment reassembly for IPv4 (RFC 791/815) and IPv6 (RFC 8200 §4.5,
//! RFC 5722). STUB: to be implemented.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{DropReason, Duration, Instant};

/// Which datagram a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragKey {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
        proto: u8,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        id: u32,
    },
}

/// A complete datagram: the first fragment's header bytes (as passed to
/// [`Reassembler::add`]) followed by the whole reassembled payload.
#[derive(Debug)]
pub struct Reassembled {
    pub buf: Vec<u8>,
    pub header_len: usize,
}

/// What became of one fragment.
#[derive(Debug)]
pub enum FragResult {
    /// Stored; the datagram is still incomplete.
    Incomplete,
    /// The datagram is complete.
    Complete(Reassembled),
    /// The datagram (or this fragment) was dropped for `DropReason`.
    Dropped(DropReason),
}

/// An incomplete datagram that timed out.
#[derive(Debug)]
pub struct Expired {
    pub key: FragKey,
    /// Header + the first fragment's data when the offset-0 fragment had
    /// arrived (for ICMP Time Exceeded's quote), else None.
    pub first: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct Reassembler {}

impl Reassembler {
    pub fn new(_mem_limit: usize, _timeout: Duration) -> Self {
        Reassembler {}
    }

    /// Add one fragment: `offset` (bytes) and `more` (MF) of the fragmentable
    /// part, its `data`, and for the offset-0 fragment the `header` bytes to
    /// keep in front of the reassembled payload.
    pub fn add(
        &mut self,
        _now: Instant,
        _key: FragKey,
        _offset: usize,
        _more: bool,
        _data: &[u8],
        _header: Option<&[u8]>,
    ) -> FragResult {
        FragResult::Dropped(DropReason::FragMemLimit)
    }

    /// Remove the datagrams whose timer ran out.
    pub fn expire(&mut self, _now: Instant) -> Vec<Expired> {
        Vec::new()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Bytes currently accounted to incomplete datagrams.
    pub fn mem_used(&self) -> usize {
        0
    }

    /// Incomplete datagrams held.
    pub fn len(&self) -> usize {
        0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
