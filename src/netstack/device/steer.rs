//! Which stack shard a received frame belongs to: the classic-BPF program
//! attached to the shards' `PACKET_FANOUT` group (`PACKET_FANOUT_CBPF`; the
//! kernel runs it per frame and takes its return value modulo the number of
//! sockets in the group as the socket index, sockets numbered in the order
//! they joined).
//!
//! (Issue 9: the program and its tests are being written.)

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
