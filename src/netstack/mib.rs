//! Linux-style SNMP MIB counters and per-reason drop counters for the
//! embedded stack (SPEC B: "every drop is counted under a Linux-style MIB
//! counter *and* a drop reason").
//!
//! The stack runs to completion on one thread, so each counter has exactly
//! one writer: increments are a relaxed load + store (plain `mov`s, no locked
//! instruction), and readers on other threads (the `/metrics` scrape) see a
//! recent value. [`Counters`] is shared through an `Arc`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counter_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => ($group:literal, $cname:literal)),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name { $($var),* }
        impl $name {
            /// Every variant, in declaration (index) order.
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            /// `(group, counter)` as Linux names them in `/proc/net/snmp`
            /// (`Ip`, `InReceives`) or, for drop reasons, `("drop", reason)`.
            pub const fn names(self) -> (&'static str, &'static str) {
                match self { $($name::$var => ($group, $cname)),* }
            }
        }
    };
}

counter_enum! {
    /// One Linux MIB counter (`/proc/net/snmp`, `/proc/net/snmp6`).
    Mib {
        IpInReceives => ("Ip", "InReceives"),
        IpInHdrErrors => ("Ip", "InHdrErrors"),
        IpInCsumErrors => ("Ip", "InCsumErrors"),
        IpInTruncatedPkts => ("Ip", "InTruncatedPkts"),
        IpInAddrErrors => ("Ip", "InAddrErrors"),
        IpInUnknownProtos => ("Ip", "InUnknownProtos"),
        IpInDiscards => ("Ip", "InDiscards"),
        IpInDelivers => ("Ip", "InDelivers"),
        IpOutRequests => ("Ip", "OutRequests"),
        IpOutDiscards => ("Ip", "OutDiscards"),
        IpOutNoRoutes => ("Ip", "OutNoRoutes"),
        IpReasmTimeout => ("Ip", "ReasmTimeout"),
        IpReasmReqds => ("Ip", "ReasmReqds"),
        IpReasmOKs => ("Ip", "ReasmOKs"),
        IpReasmFails => ("Ip", "ReasmFails"),
        IpFragOKs => ("Ip", "FragOKs"),
        IpFragFails => ("Ip", "FragFails"),
        IpFragCreates => ("Ip", "FragCreates"),

        IcmpInMsgs => ("Icmp", "InMsgs"),
        IcmpInErrors => ("Icmp", "InErrors"),
        IcmpInCsumErrors => ("Icmp", "InCsumErrors"),
        IcmpInDestUnreachs => ("Icmp", "InDestUnreachs"),
        IcmpInTimeExcds => ("Icmp", "InTimeExcds"),
        IcmpInParmProbs => ("Icmp", "InParmProbs"),
        IcmpInEchos => ("Icmp", "InEchos"),
        IcmpInEchoReps => ("Icmp", "InEchoReps"),
        IcmpOutMsgs => ("Icmp", "OutMsgs"),
        IcmpOutErrors => ("Icmp", "OutErrors"),
        IcmpOutRateLimitGlobal => ("Icmp", "OutRateLimitGlobal"),
        IcmpOutRateLimitHost => ("Icmp", "OutRateLimitHost"),
        IcmpOutDestUnreachs => ("Icmp", "OutDestUnreachs"),
        IcmpOutTimeExcds => ("Icmp", "OutTimeExcds"),
        IcmpOutParmProbs => ("Icmp", "OutParmProbs"),
        IcmpOutEchos => ("Icmp", "OutEchos"),
        IcmpOutEchoReps => ("Icmp", "OutEchoReps"),

        UdpInDatagrams => ("Udp", "InDatagrams"),
        UdpNoPorts => ("Udp", "NoPorts"),
        UdpInErrors => ("Udp", "InErrors"),
        UdpOutDatagrams => ("Udp", "OutDatagrams"),
        UdpRcvbufErrors => ("Udp", "RcvbufErrors"),
        UdpSndbufErrors => ("Udp", "SndbufErrors"),
        UdpInCsumErrors => ("Udp", "InCsumErrors"),

        Ip6InReceives => ("Ip6", "InReceives"),
        Ip6InHdrErrors => ("Ip6", "InHdrErrors"),
        Ip6InTooBigErrors => ("Ip6", "InTooBigErrors"),
        Ip6InNoRoutes => ("Ip6", "InNoRoutes"),
        Ip6InAddrErrors => ("Ip6", "InAddrErrors"),
        Ip6InUnknownProtos => ("Ip6", "InUnknownProtos"),
        Ip6InTruncatedPkts => ("Ip6", "InTruncatedPkts"),
        Ip6InDiscards => ("Ip6", "InDiscards"),
        Ip6InDelivers => ("Ip6", "InDelivers"),
        Ip6OutRequests => ("Ip6", "OutRequests"),
        Ip6OutDiscards => ("Ip6", "OutDiscards"),
        Ip6OutNoRoutes => ("Ip6", "OutNoRoutes"),
        Ip6ReasmTimeout => ("Ip6", "ReasmTimeout"),
        Ip6ReasmReqds => ("Ip6", "ReasmReqds"),
        Ip6ReasmOKs => ("Ip6", "ReasmOKs"),
        Ip6ReasmFails => ("Ip6", "ReasmFails"),
        Ip6FragOKs => ("Ip6", "FragOKs"),
        Ip6FragFails => ("Ip6", "FragFails"),
        Ip6FragCreates => ("Ip6", "FragCreates"),
        Ip6InMcastPkts => ("Ip6", "InMcastPkts"),

        Icmp6InMsgs => ("Icmp6", "InMsgs"),
        Icmp6InErrors => ("Icmp6", "InErrors"),
        Icmp6InCsumErrors => ("Icmp6", "InCsumErrors"),
        Icmp6InDestUnreachs => ("Icmp6", "InDestUnreachs"),
        Icmp6InPktTooBigs => ("Icmp6", "InPktTooBigs"),
        Icmp6InTimeExcds => ("Icmp6", "InTimeExcds"),
        Icmp6InParmProblems => ("Icmp6", "InParmProblems"),
        Icmp6InEchos => ("Icmp6", "InEchos"),
        Icmp6InEchoReplies => ("Icmp6", "InEchoReplies"),
        Icmp6InNeighborSolicits => ("Icmp6", "InNeighborSolicits"),
        Icmp6InNeighborAdvertisements => ("Icmp6", "InNeighborAdvertisements"),
        Icmp6InRouterAdvertisements => ("Icmp6", "InRouterAdvertisements"),
        Icmp6InGroupMembQueries => ("Icmp6", "InGroupMembQueries"),
        Icmp6InGroupMembResponses => ("Icmp6", "InGroupMembResponses"),
        Icmp6InGroupMembReductions => ("Icmp6", "InGroupMembReductions"),
        Icmp6InMLDv2Reports => ("Icmp6", "InMLDv2Reports"),
        Icmp6OutMsgs => ("Icmp6", "OutMsgs"),
        Icmp6OutErrors => ("Icmp6", "OutErrors"),
        Icmp6OutRateLimitGlobal => ("Icmp6", "OutRateLimitGlobal"),
        Icmp6OutRateLimitHost => ("Icmp6", "OutRateLimitHost"),
        Icmp6OutDestUnreachs => ("Icmp6", "OutDestUnreachs"),
        Icmp6OutTimeExcds => ("Icmp6", "OutTimeExcds"),
        Icmp6OutParmProblems => ("Icmp6", "OutParmProblems"),
        Icmp6OutEchos => ("Icmp6", "OutEchos"),
        Icmp6OutEchoReplies => ("Icmp6", "OutEchoReplies"),
        Icmp6OutNeighborSolicits => ("Icmp6", "OutNeighborSolicits"),
        Icmp6OutNeighborAdvertisements => ("Icmp6", "OutNeighborAdvertisements"),
        Icmp6OutGroupMembResponses => ("Icmp6", "OutGroupMembResponses"),
        Icmp6OutMLDv2Reports => ("Icmp6", "OutMLDv2Reports"),

        Udp6InDatagrams => ("Udp6", "InDatagrams"),
        Udp6NoPorts => ("Udp6", "NoPorts"),
        Udp6InErrors => ("Udp6", "InErrors"),
        Udp6OutDatagrams => ("Udp6", "OutDatagrams"),
        Udp6RcvbufErrors => ("Udp6", "RcvbufErrors"),
        Udp6SndbufErrors => ("Udp6", "SndbufErrors"),
        Udp6InCsumErrors => ("Udp6", "InCsumErrors"),

        TcpActiveOpens => ("Tcp", "ActiveOpens"),
        TcpPassiveOpens => ("Tcp", "PassiveOpens"),
        TcpAttemptFails => ("Tcp", "AttemptFails"),
        TcpEstabResets => ("Tcp", "EstabResets"),
        // CurrEstab is a gauge (ESTABLISHED + CLOSE_WAIT).
        TcpCurrEstab => ("Tcp", "CurrEstab"),
        TcpInSegs => ("Tcp", "InSegs"),
        TcpOutSegs => ("Tcp", "OutSegs"),
        TcpRetransSegs => ("Tcp", "RetransSegs"),
        TcpInErrs => ("Tcp", "InErrs"),
        TcpOutRsts => ("Tcp", "OutRsts"),
        TcpInCsumErrors => ("Tcp", "InCsumErrors"),
        TcpExtSyncookiesSent => ("TcpExt", "SyncookiesSent"),
        TcpExtSyncookiesRecv => ("TcpExt", "SyncookiesRecv"),
        TcpExtSyncookiesFailed => ("TcpExt", "SyncookiesFailed"),
        TcpExtListenOverflows => ("TcpExt", "ListenOverflows"),
        TcpExtListenDrops => ("TcpExt", "ListenDrops"),
        TcpExtTCPChallengeACK => ("TcpExt", "TCPChallengeACK"),
        TcpExtTCPSYNChallenge => ("TcpExt", "TCPSYNChallenge"),
        TcpExtTCPAbortOnClose => ("TcpExt", "TCPAbortOnClose"),
        TcpExtTCPAbortOnData => ("TcpExt", "TCPAbortOnData"),
        TcpExtTCPAbortOnTimeout => ("TcpExt", "TCPAbortOnTimeout"),
        TcpExtTCPTimeWaitOverflow => ("TcpExt", "TCPTimeWaitOverflow"),
        TcpExtTW => ("TcpExt", "TW"),
        TcpExtPAWSEstabRejected => ("TcpExt", "PAWSEstabRejected"),
        TcpExtTCPTimeouts => ("TcpExt", "TCPTimeouts"),
        TcpExtTCPFastRetrans => ("TcpExt", "TCPFastRetrans"),
        TcpExtDelayedACKs => ("TcpExt", "DelayedACKs"),

        ArpInRequests => ("Arp", "InRequests"),
        ArpInReplies => ("Arp", "InReplies"),
        ArpOutRequests => ("Arp", "OutRequests"),
        ArpOutReplies => ("Arp", "OutReplies"),
        LinkInFrames => ("Link", "InFrames"),
        LinkOutFrames => ("Link", "OutFrames"),
        // shards (issue 9): shared control frames copied to the other
        // shards, and copies received from them (counted here only, never
        // in the In counters above, so per-shard sums match the wire).
        ShardReplicasQueued => ("Shard", "ReplicasQueued"),
        ShardReplicasReceived => ("Shard", "ReplicasReceived"),
    }
}

counter_enum! {
    /// Why the stack dropped a frame or packet (one per rule, so a drop is
    /// never anonymous). Names are stable: they are Prometheus label values.
    DropReason {
        // link layer
        EthTruncated => ("drop", "eth_truncated"),
        EthOtherHost => ("drop", "eth_otherhost"),
        EthOutgoing => ("drop", "eth_outgoing"),
        EthUnknownType => ("drop", "eth_unknown_ethertype"),
        ArpMalformed => ("drop", "arp_malformed"),
        ArpNotForUs => ("drop", "arp_not_for_us"),
        NeighPendingFull => ("drop", "neigh_pending_full"),
        NeighUnresolved => ("drop", "neigh_unresolved"),
        NeighCacheFull => ("drop", "neigh_cache_full"),
        TxQueueFull => ("drop", "tx_queue_full"),
        // IPv4 (B.1)
        Ipv4TooShort => ("drop", "ipv4_too_short"),
        Ipv4BadVersion => ("drop", "ipv4_bad_version"),
        Ipv4BadIhl => ("drop", "ipv4_bad_ihl"),
        Ipv4BadChecksum => ("drop", "ipv4_bad_checksum"),
        Ipv4Truncated => ("drop", "ipv4_truncated"),
        Ipv4BadTotLen => ("drop", "ipv4_bad_tot_len"),
        Ipv4NotOurs => ("drop", "ipv4_not_ours"),
        Ipv4BadSource => ("drop", "ipv4_bad_source"),
        Ipv4UnknownProto => ("drop", "ipv4_unknown_protocol"),
        Ipv4BadOptions => ("drop", "ipv4_bad_options"),
        Ipv4SourceRoute => ("drop", "ipv4_source_route"),
        FilterPreRouting => ("drop", "filter_pre_routing"),
        FilterLocalIn => ("drop", "filter_local_in"),
        // reassembly (both families)
        FragOverlap => ("drop", "frag_overlap"),
        FragTimeout => ("drop", "frag_timeout"),
        FragMemLimit => ("drop", "frag_mem_limit"),
        FragTooBig => ("drop", "frag_too_big"),
        FragBadLength => ("drop", "frag_bad_length"),
        // ICMP
        IcmpTruncated => ("drop", "icmp_truncated"),
        IcmpBadChecksum => ("drop", "icmp_bad_checksum"),
        IcmpUnhandledType => ("drop", "icmp_unhandled_type"),
        IcmpRateLimited => ("drop", "icmp_rate_limited"),
        IcmpErrorUnmatched => ("drop", "icmp_error_unmatched"),
        IcmpBroadcast => ("drop", "icmp_broadcast"),
        // UDP (B.2)
        UdpTruncated => ("drop", "udp_truncated"),
        UdpBadLength => ("drop", "udp_bad_length"),
        UdpBadChecksum => ("drop", "udp_bad_checksum"),
        UdpZeroChecksumV6 => ("drop", "udp6_zero_checksum"),
        UdpNoPort => ("drop", "udp_no_port"),
        UdpRcvbufFull => ("drop", "udp_rcvbuf_full"),
        // TCP (B.3, B.4; Linux SKB_DROP_REASON_* where one exists)
        TcpNotForUs => ("drop", "tcp_not_for_us"),
        TcpTruncated => ("drop", "tcp_truncated"),
        TcpBadOffset => ("drop", "tcp_bad_offset"),
        TcpBadChecksum => ("drop", "tcp_bad_checksum"),
        TcpBadHeader => ("drop", "tcp_bad_header"),
        TcpNoSocket => ("drop", "tcp_no_socket"),
        TcpListenRst => ("drop", "tcp_listen_rst"),
        TcpListenAck => ("drop", "tcp_listen_ack"),
        TcpListenOverflow => ("drop", "tcp_listen_overflow"),
        TcpSynQueueFull => ("drop", "tcp_syn_queue_full"),
        TcpFlags => ("drop", "tcp_flags"),
        TcpSynSentBadAck => ("drop", "tcp_syn_sent_bad_ack"),
        TcpResetUnacceptable => ("drop", "tcp_reset_unacceptable"),
        TcpInvalidSequence => ("drop", "tcp_invalid_sequence"),
        TcpInvalidSyn => ("drop", "tcp_invalid_syn"),
        TcpPaws => ("drop", "tcp_rfc7323_paws"),
        TcpAckUnsentData => ("drop", "tcp_ack_unsent_data"),
        TcpTooOldAck => ("drop", "tcp_too_old_ack"),
        TcpOldData => ("drop", "tcp_old_data"),
        TcpRcvbufFull => ("drop", "tcp_rcvbuf_full"),
        TcpClosed => ("drop", "tcp_closed"),
        // IPv6 (B.5)
        Ipv6TooShort => ("drop", "ipv6_too_short"),
        Ipv6BadVersion => ("drop", "ipv6_bad_version"),
        Ipv6Truncated => ("drop", "ipv6_truncated"),
        Ipv6NotOurs => ("drop", "ipv6_not_ours"),
        Ipv6BadSource => ("drop", "ipv6_bad_source"),
        Ipv6HbhNotFirst => ("drop", "ipv6_hbh_not_first"),
        Ipv6BadOption => ("drop", "ipv6_bad_option"),
        Ipv6UnknownOption => ("drop", "ipv6_unknown_option"),
        Ipv6BadRoutingHeader => ("drop", "ipv6_bad_routing_header"),
        Ipv6ExtTruncated => ("drop", "ipv6_ext_truncated"),
        Ipv6FirstFragmentIncomplete => ("drop", "ipv6_first_fragment_incomplete"),
        Ipv6NoNextHeader => ("drop", "ipv6_no_next_header"),
        Ipv6UnknownNextHeader => ("drop", "ipv6_unknown_next_header"),
        NdpMalformed => ("drop", "ndp_malformed"),
        NdpNotForUs => ("drop", "ndp_not_for_us"),
        MldQueryInvalid => ("drop", "mld_query_invalid"),
        MldMalformed => ("drop", "mld_malformed"),
        // shards (issue 9)
        OtherShard => ("drop", "other_shard"),
        ReplicaOutboxFull => ("drop", "replica_outbox_full"),
        ReplicaNotControl => ("drop", "replica_not_control"),
    }
}

impl Mib {
    /// A level that goes down as well as up (Linux's Tcp CurrEstab), not a
    /// counter: exported as a gauge.
    pub const fn is_gauge(self) -> bool {
        matches!(self, Mib::TcpCurrEstab)
    }
}

/// The stack's counters. Shared with the metrics exporter through an `Arc`;
/// written by the stack thread only.
pub struct Counters {
    mib: Box<[AtomicU64]>,
    drops: Box<[AtomicU64]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    pub fn new() -> Self {
        let mk = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Counters {
            mib: mk(Mib::ALL.len()),
            drops: mk(DropReason::ALL.len()),
        }
    }

    /// Add one to a MIB counter (single writer: load + store, no lock prefix).
    #[inline]
    pub fn inc(&self, m: Mib) {
        self.add(m, 1);
    }

    #[inline]
    pub fn add(&self, m: Mib, n: u64) {
        let c = &self.mib[m as usize];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtract one (gauges such as Tcp CurrEstab).
    #[inline]
    pub fn dec(&self, m: Mib) {
        self.add(m, u64::MAX);
    }

    /// Count one drop under its reason.
    #[inline]
    pub fn drop_reason(&self, r: DropReason) {
        let c = &self.drops[r as usize];
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }

    pub fn get(&self, m: Mib) -> u64 {
        self.mib[m as usize].load(Relaxed)
    }

    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Relaxed)
    }

    /// Sum of all drop-reason counters (tests: "emits nothing, counts one").
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Every non-zero MIB counter and drop reason, for logs and tests.
    pub fn nonzero(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v = Vec::new();
        for &m in Mib::ALL {
            let n = self.get(m);
            if n != 0 {
                let (g, c) = m.names();
                v.push((g, c, n));
            }
        }
        for &r in DropReason::ALL {
            let n = self.drops(r);
            if n != 0 {
                let (g, c) = r.names();
                v.push((g, c, n));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indexes_match() {
        let mut seen = std::collections::HashSet::new();
        for (i, m) in Mib::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert!(seen.insert(m.names()), "{:?}", m.names());
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(seen.insert(r.names()), "{:?}", r.names());
        }
    }

    #[test]
    fn counting() {
        let c = Counters::new();
        c.inc(Mib::IpInReceives);
        c.add(Mib::IpInReceives, 2);
        c.drop_reason(DropReason::Ipv4BadChecksum);
        assert_eq!(c.get(Mib::IpInReceives), 3);
        assert_eq!(c.drops(DropReason::Ipv4BadChecksum), 1);
        assert_eq!(c.total_drops(), 1);
        assert_eq!(c.nonzero().len(), 2);
    }
}
