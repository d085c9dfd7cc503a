//! The stack as one shard among N (issue 9). In afpacket mode N copies of
//! [`Stack`] share one MAC and one set of addresses, each fed by one socket
//! of a PACKET_FANOUT group whose program steers TCP/UDP to a local
//! ephemeral port to shard `port % N` and everything else to shard
//! `hash(source) % N`.
//!
//! Each shard keeps its own neighbour cache and sockets, with no locks.
//! A control frame that concerns all of them (ARP, NDP, ICMP errors) lands
//! on one shard, which processes it fully (and answers once); it also keeps
//! a copy in its replica outbox ([`Stack::pop_replica`]). The shard thread
//! posts the copies to the other shards, which learn from them with
//! [`Stack::receive_replica`]: neighbour entries (flushing packets waiting
//! on them) and socket errors, never an answer, never counted again in the
//! In counters.

use std::mem;

use super::{DropReason, Instant, Mib, PacketType, RxMeta, Stack};

/// Replica outbox bound: beyond it the oldest copy is dropped
/// (`replica_outbox_full`).
pub const REPLICA_OUTBOX_MAX: usize = 256;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Is this Ethernet frame control traffic every shard must see? ARP;
/// ICMPv4 errors the stack handles (destination unreachable, fragmentation
/// needed included; time exceeded; parameter problem) in an unfragmented
/// datagram; ICMPv6 errors (types 1-4) and NDP router advertisement,
/// neighbour solicitation and advertisement and redirect (134-137), with
/// ICMPv6 right after the fixed header (as NDP requires). Not echo, not
/// MLD, not data. Reads at most the first 55 bytes; never panics.
pub fn is_shared_control(frame: &[u8]) -> bool {
    let Some(et) = frame.get(12..14) else {
        return false;
    };
    let p = &frame[14..];
    match u16::from_be_bytes([et[0], et[1]]) {
        ETHERTYPE_ARP => true,
        ETHERTYPE_IPV4 => {
            if p.len() < 20 || p[0] >> 4 != 4 {
                return false;
            }
            let ihl = (p[0] & 0x0f) as usize * 4;
            // MF flag or a fragment offset: not a whole datagram
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff;
            ihl >= 20 && frag == 0 && p[9] == 1 && matches!(p.get(ihl), Some(3 | 11 | 12))
        }
        ETHERTYPE_IPV6 => {
            p.len() > 40 && p[0] >> 4 == 6 && p[6] == 58 && matches!(p[40], 1..=4 | 134..=137)
        }
        _ => false,
    }
}

impl Stack {
    /// A copy of a shared control frame another shard received and
    /// processed ([`Stack::pop_replica`] there). Learn only, as
    /// [`Stack::receive_frame`] would: ARP and NDP update the neighbour
    /// cache (sending packets that waited on it); ICMP errors reach the
    /// matching sockets (unmatched ones are ignored). Never answers (no ARP
    /// reply, no NA, no ICMP), never touches MLD, never goes to the outbox
    /// again. Counted only as `Shard ReplicasReceived`; anything that is
    /// not a shared control frame is dropped (`replica_not_control`).
    pub fn receive_replica(&mut self, now: Instant, meta: RxMeta, frame: &[u8]) {
        self.counters.inc(Mib::ShardReplicasReceived);
        if meta.pkt_type == PacketType::Outgoing || !is_shared_control(frame) {
            self.counters.drop_reason(DropReason::ReplicaNotControl);
            return;
        }
        // The In counters and drop reasons of the normal path go to a sink
        // (the frame was counted by the shard it arrived on); output it
        // causes is counted on the real counters (see `transmit`).
        mem::swap(&mut self.counters, &mut self.replica_swap);
        self.replicating = true;
        self.eth_rcv(now, meta, frame);
        self.replicating = false;
        mem::swap(&mut self.counters, &mut self.replica_swap);
    }

    /// The next shared control frame this shard processed, to post to every
    /// other shard (which calls [`Stack::receive_replica`]). Only when
    /// `shard.count > 1`. The buffer may be given back with
    /// [`Stack::recycle`] (to any shard) once every copy is delivered.
    pub fn pop_replica(&mut self) -> Option<(RxMeta, Vec<u8>)> {
        self.replicas.pop_front()
    }

    /// Copies waiting in the replica outbox.
    pub fn replicas_pending(&self) -> usize {
        self.replicas.len()
    }

    /// Keep a copy of a processed shared control frame.
    pub(crate) fn replica_keep(&mut self, meta: RxMeta, frame: &[u8]) {
        if self.replicas.len() >= REPLICA_OUTBOX_MAX {
            if let Some((_, old)) = self.replicas.pop_front() {
                self.recycle(old);
            }
            self.counters.drop_reason(DropReason::ReplicaOutboxFull);
        }
        let mut b = self.alloc_frame(frame.len());
        b.extend_from_slice(frame);
        self.replicas.push_back((meta, b));
        self.counters.inc(Mib::ShardReplicasQueued);
    }
}
