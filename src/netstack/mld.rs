//! Multicast Listener Discovery, listener side (RFC 3810 MLDv2 with the
//! RFC 2710 MLDv1 answer of §8.2; Linux net/ipv6/mcast.c): announce the
//! solicited-node groups of our addresses when the stack starts
//! (`igmp6_join_group`, `mld_send_report`) and answer queries
//! (`igmp6_event_query`), so that MLD-snooping switches forward the
//! neighbour solicitations sent to those groups to us.
//!
//! Every MLD message is sent from our link-local address with hop limit 1
//! and a Hop-by-Hop header carrying the Router Alert option (RFC 3810 §5,
//! RFC 2711). The all-nodes group ff02::1 is never reported (RFC 3810 §6).

use std::net::{IpAddr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IPV6_HEADER_LEN, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6ExtHeader,
    Ipv6ExtHeaderRepr, Ipv6HopByHopHeader, Ipv6HopByHopRepr, Ipv6OptionRepr, Ipv6OptionRouterAlert,
    Ipv6OptionsIterator, MldAddressRecordRepr, MldRecordType, MldRepr,
};

use super::{DropReason, Duration, EthernetAddress, Instant, IpRx, Mib, Stack};

/// ff02::16, where MLDv2 reports go (RFC 3810 §5.2.14).
pub const ALL_MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

/// RFC 3810 §5 / RFC 2710 §3: MLD messages are sent with hop limit 1, and
/// queries with another hop limit are dropped (§6.2).
const MLD_HOP_LIMIT: u8 = 1;
/// The Hop-by-Hop header we send: Router Alert (4 bytes) + PadN (2 bytes)
/// after next header and length.
const HBH_LEN: usize = 8;
/// An MLDv1 query (and report) is exactly 24 bytes (RFC 2710 §3); an MLDv2
/// query at least 28 (RFC 3810 §5.1) (Linux `MLD_V1_QUERY_LEN`,
/// `MLD_V2_QUERY_LEN_MIN`).
const MLD_V1_QUERY_LEN: usize = 24;
const MLD_V2_QUERY_LEN_MIN: usize = 28;
/// MLDv2 report: 8-byte header, then 20 bytes per record without sources.
const MLD_V2_REPORT_HDR: usize = 8;
const MLD_V2_RECORD_LEN: usize = 20;
/// RFC 3810 §9.11 Unsolicited Report Interval (1 s): the retransmission of
/// the start-up report comes within it.
const UNSOLICITED_REPORT_INTERVAL_MS: u64 = 1000;

/// MLD state: only the pending retransmission of the start-up report.
#[derive(Debug, Default)]
pub(crate) struct MldState {
    /// When the unsolicited report goes out again (RFC 3810 §6.1: sent
    /// [Robustness Variable] = 2 times); None once sent.
    resend_at: Option<Instant>,
}

impl MldState {
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.resend_at
    }
}

/// The delay before the unsolicited report is repeated. RFC 3810 §6.1 /
/// Linux (`mld_ifc_start_work` with a random delay below the unsolicited
/// report interval) pick it at random; here it is derived from the MAC
/// (FNV-1a), so stacks starting together on one link still spread out but
/// a given stack is reproducible: 1..=1000 ms.
fn unsolicited_delay(mac: EthernetAddress) -> Duration {
    let h = mac.0.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    Duration::from_millis(1 + u64::from(h) % UNSOLICITED_REPORT_INTERVAL_MS)
}

/// Does the IPv6 packet (from its fixed header) carry a Hop-by-Hop Router
/// Alert option with value 0 (MLD)? Linux `IP6SKB_ROUTERALERT` +
/// `IP6CB(skb)->ra == IPV6_OPT_ROUTERALERT_MLD`. The header was already
/// validated by `ipv6_rcv`; anything unreadable counts as absent.
fn has_mld_router_alert(pkt: &[u8]) -> bool {
    if pkt.get(6).copied() != Some(u8::from(IpProtocol::HopByHop)) {
        return false;
    }
    let Ok(h) = Ipv6ExtHeader::new_checked(pkt.get(IPV6_HEADER_LEN..).unwrap_or(&[])) else {
        return false;
    };
    Ipv6OptionsIterator::new(h.payload()).any(|o| {
        matches!(
            o,
            Ok(Ipv6OptionRepr::RouterAlert(
                Ipv6OptionRouterAlert::MulticastListenerDiscovery
            ))
        )
    })
}

/// Write the 8-byte Hop-by-Hop header of an MLD message: next header
/// ICMPv6, Router Alert (MLD), PadN to 8 bytes (RFC 3810 §5, RFC 2711).
fn emit_router_alert_hbh(buf: &mut [u8]) {
    Ipv6ExtHeaderRepr {
        next_header: IpProtocol::Icmpv6,
        length: 0,
        data: &[],
    }
    .emit(&mut Ipv6ExtHeader::new_unchecked(&mut buf[..HBH_LEN]));
    let mut opts = Ipv6HopByHopRepr::mldv2_router_alert();
    opts.push_padn_option(0);
    opts.emit(&mut Ipv6HopByHopHeader::new_unchecked(&mut buf[2..HBH_LEN]));
}

impl Stack {
    /// The start-up announcement (RFC 3810 §6.1, Linux `igmp6_join_group`
    /// → `mld_ifc_event`): an unsolicited MLDv2 report with a
    /// CHANGE_TO_EXCLUDE_MODE record (no sources) per group, now and once
    /// more after [`unsolicited_delay`] (from `mld_poll`).
    pub(crate) fn mld_announce(&mut self, now: Instant) {
        let (g, n) = self.solicited_groups();
        self.mld_send_report(now, MldRecordType::ChangeToExclude, &g[..n]);
        self.mld.resend_at = Some(now + unsolicited_delay(self.cfg.mac));
    }

    /// Timers: the retransmission of the start-up report, once.
    pub(crate) fn mld_poll(&mut self, now: Instant) {
        if self.mld.resend_at.is_some_and(|t| t <= now) {
            self.mld.resend_at = None;
            let (g, n) = self.solicited_groups();
            self.mld_send_report(now, MldRecordType::ChangeToExclude, &g[..n]);
        }
    }

    /// An MLD message from `icmpv6_rcv` (In counters already done): queries
    /// go to `igmp6_event_query`; MLDv1 reports and dones (131/132) and
    /// MLDv2 reports (143) of other listeners need nothing from a host that
    /// answers queries at once (Linux: v1 report suppression only cancels a
    /// pending delayed answer; v2 reports are for routers).
    pub(crate) fn mld_rcv(&mut self, now: Instant, ip: &IpRx<'_>, icmp: &[u8]) {
        if icmp.first() == Some(&u8::from(Icmpv6Message::MldQuery)) {
            self.igmp6_event_query(now, ip, icmp);
        }
    }

    /// `igmp6_event_query` / `__mld_query_work` (RFC 3810 §6.2, §5.1; RFC
    /// 2710 §3): drop a query whose source is not link-local, whose hop
    /// limit is not 1 or that lacks the MLD Router Alert (MldQueryInvalid);
    /// a multicast address neither unspecified nor multicast, a length
    /// other than 24 (MLDv1) or ≥ 28 (MLDv2), an MLDv2 General Query with
    /// sources, or a source list beyond the message: MldMalformed. A General
    /// Query asks for all our groups, a Multicast Address (and Source)
    /// Specific Query for its group if it is ours (else nothing to say).
    /// MLDv2 queries are answered with one MLDv2 report of MODE_IS_EXCLUDE
    /// records (our state: every source, so also the answer to a
    /// source-specific query); MLDv1 queries with one MLDv1 report per
    /// group to that group (RFC 3810 §8.2.1: an MLDv1 querier does not
    /// understand MLDv2 reports; Linux `mld_process_v1` → v1 mode).
    ///
    /// Deviation: answered immediately, not after a random delay up to the
    /// Maximum Response Delay (RFC 3810 §6.2 allows any delay in the
    /// range). Only an on-link sender can reach this (hop limit 1,
    /// link-local source), one report per query.
    fn igmp6_event_query(&mut self, now: Instant, ip: &IpRx<'_>, icmp: &[u8]) {
        let IpAddr::V6(src) = ip.src else {
            return;
        };
        if !src.is_unicast_link_local()
            || ip.hop_limit != MLD_HOP_LIMIT
            || !has_mld_router_alert(ip.packet)
        {
            self.counters.drop_reason(DropReason::MldQueryInvalid);
            return;
        }
        if icmp.len() < MLD_V1_QUERY_LEN {
            self.counters.drop_reason(DropReason::MldMalformed);
            return;
        }
        let q = Icmpv6Packet::new_unchecked(icmp);
        let group = q.mcast_addr();
        let general = group.is_unspecified();
        if !general && !group.is_multicast() {
            self.counters.drop_reason(DropReason::MldMalformed);
            return;
        }
        let v1 = icmp.len() == MLD_V1_QUERY_LEN;
        if !v1 {
            let nsrcs = if icmp.len() >= MLD_V2_QUERY_LEN_MIN {
                Some(usize::from(q.num_srcs()))
            } else {
                None
            };
            let ok = nsrcs.is_some_and(|n| {
                !(general && n != 0) && icmp.len() >= MLD_V2_QUERY_LEN_MIN + 16 * n
            });
            if !ok {
                self.counters.drop_reason(DropReason::MldMalformed);
                return;
            }
        }
        let (mine, n) = self.solicited_groups();
        let mut asked = [Ipv6Addr::UNSPECIFIED; 2];
        let mut k = 0;
        for &g in &mine[..n] {
            if general || g == group {
                asked[k] = g;
                k += 1;
            }
        }
        if k == 0 {
            return;
        }
        if v1 {
            for &g in &asked[..k] {
                self.mld_send_v1_report(now, g);
            }
        } else {
            self.mld_send_report(now, MldRecordType::ModeIsExclude, &asked[..k]);
        }
    }

    /// `mld_send_report` / `mld_sendpack` (RFC 3810 §5.2): one MLDv2
    /// Report to ff02::16 with a `ty` record (no sources) per group.
    /// Icmp6OutMsgs + Icmp6OutMLDv2Reports, or Icmp6OutErrors.
    fn mld_send_report(&mut self, now: Instant, ty: MldRecordType, groups: &[Ipv6Addr]) {
        let mut recs = [MldAddressRecordRepr::new(ty, ALL_MLDV2_ROUTERS); 2];
        let n = groups.len().min(recs.len());
        for (r, &g) in recs.iter_mut().zip(groups) {
            r.mcast_addr = g;
        }
        let repr = Icmpv6Repr::Mld(MldRepr::ReportRecordReprs(&recs[..n]));
        // smoltcp's `buffer_len` for ReportRecordReprs leaves the records out.
        let len = MLD_V2_REPORT_HDR + n * MLD_V2_RECORD_LEN;
        let (src, dst) = (self.ll6, ALL_MLDV2_ROUTERS);
        let sent = self.mld_output(now, dst, len, &mut |buf| {
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            )
        });
        if sent {
            self.counters.inc(Mib::Icmp6OutMLDv2Reports);
        }
    }

    /// `igmp6_send` with ICMPV6_MGM_REPORT (RFC 2710 §3, §4): an MLDv1
    /// Report for `group`, sent to the group. The message has the query's
    /// layout (type 131, maximum response delay 0, the address).
    /// Icmp6OutMsgs + Icmp6OutGroupMembResponses, or Icmp6OutErrors.
    fn mld_send_v1_report(&mut self, now: Instant, group: Ipv6Addr) {
        let src = self.ll6;
        let sent = self.mld_output(now, group, MLD_V1_QUERY_LEN, &mut |buf| {
            let mut p = Icmpv6Packet::new_unchecked(buf);
            p.set_msg_type(Icmpv6Message::from(131));
            p.set_msg_code(0);
            p.set_max_resp_code(0);
            p.set_mcast_addr(group);
            p.fill_checksum(&src, &group);
        });
        if sent {
            self.counters.inc(Mib::Icmp6OutGroupMembResponses);
        }
    }

    /// `ip6_mc_hdr` + output: an MLD message of `icmp_len` bytes (written
    /// by `fill`, checksum over the ICMPv6 message only, RFC 8200 §8.1)
    /// from our link-local address to `dst`, hop limit 1, behind the Router
    /// Alert Hop-by-Hop header. Returns whether it was sent (Icmp6OutMsgs)
    /// or not (Icmp6OutErrors).
    fn mld_output(
        &mut self,
        now: Instant,
        dst: Ipv6Addr,
        icmp_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        let src = self.ll6;
        let res = self.ip6_output(
            now,
            src,
            dst,
            u8::from(IpProtocol::HopByHop),
            Some(MLD_HOP_LIMIT),
            HBH_LEN + icmp_len,
            &mut |buf| {
                let (hbh, icmp) = buf.split_at_mut(HBH_LEN);
                emit_router_alert_hbh(hbh);
                fill(icmp);
            },
        );
        let ok = res.is_ok();
        self.counters.inc(if ok {
            Mib::Icmp6OutMsgs
        } else {
            Mib::Icmp6OutErrors
        });
        ok
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use smoltcp::wire::{
        EthernetAddress, Icmpv6Packet, Ipv6Cidr, MldAddressRecord, MldRecordType, MldRepr,
    };

    use super::super::ipv6::tests::*;
    use super::super::testutil::*;
    use super::super::{
        Duration, Mib, RxMeta, Stack, link_local_from_mac, multicast_mac_v6, solicited_node,
    };
    use super::{ALL_MLDV2_ROUTERS, DropReason, unsolicited_delay};

    /// The Hop-by-Hop header of MLD messages: next header 58, length 0,
    /// Router Alert (type 5, length 2, value 0), PadN (type 1, length 0).
    const RA_HBH: [u8; 8] = [58, 0, 5, 2, 0, 0, 1, 0];
    /// A global address whose solicited-node group differs from the
    /// link-local one's (OUR6 = 2001:db8::2 shares ff02::1:ff00:2 with it).
    const OTHER_GLOBAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 5);

    fn peer_ll() -> Ipv6Addr {
        link_local_from_mac(EthernetAddress(PEER_MAC))
    }

    fn our_ll() -> Ipv6Addr {
        link_local_from_mac(EthernetAddress(OUR_MAC))
    }

    fn stack_with_global(a: Option<Ipv6Addr>) -> Stack {
        let mut c = config();
        c.ipv6 = a.map(|a| Ipv6Cidr::new(a, 64));
        Stack::new(c, t0())
    }

    /// An MLD message (type `ty`, `len` bytes, multicast address `group`,
    /// `nsrcs` in the MLDv2 query field) with a valid checksum.
    fn mld_msg(
        ty: u8,
        len: usize,
        group: Ipv6Addr,
        nsrcs: u16,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0] = ty;
        if len >= 6 {
            b[4..6].copy_from_slice(&1000u16.to_be_bytes());
        }
        if len >= 24 {
            b[8..24].copy_from_slice(&group.octets());
        }
        if len >= 28 {
            b[26..28].copy_from_slice(&nsrcs.to_be_bytes());
        }
        Icmpv6Packet::new_unchecked(&mut b[..]).fill_checksum(&src, &dst);
        b
    }

    /// The frame carrying `icmp` from `src` to `dst` with `hop`, behind the
    /// Router Alert header if `ra`.
    fn frame(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, ra: bool, icmp: &[u8]) -> Vec<u8> {
        let (nh, payload) = if ra {
            (0, [&RA_HBH[..], icmp].concat())
        } else {
            (58, icmp.to_vec())
        };
        let mac = if dst.is_multicast() {
            multicast_mac_v6(dst).0
        } else {
            OUR_MAC
        };
        eth_to(mac, &ip6_hop(src, dst, nh, hop, &payload))
    }

    /// A query from a link-local router to all-nodes, as RFC 3810 wants it.
    fn query(len: usize, group: Ipv6Addr, nsrcs: u16) -> Vec<u8> {
        let icmp = mld_msg(130, len, group, nsrcs, peer_ll(), ALL_NODES);
        frame(peer_ll(), ALL_NODES, 1, true, &icmp)
    }

    /// Checks the envelope of an emitted MLD message (link-local source,
    /// hop limit 1, Router Alert header, ICMPv6 checksum over the message
    /// only) and returns the ICMPv6 message.
    fn mld_of(o: &Out) -> &[u8] {
        assert_eq!((o.src, o.hop, o.nh), (our_ll(), 1, 0));
        assert_eq!(o.eth_dst, multicast_mac_v6(o.dst).0);
        assert_eq!(&o.payload[..8], &RA_HBH, "hop-by-hop header");
        let icmp = &o.payload[8..];
        // smoltcp's `new_checked` refuses MLDv1 types (131): length by hand.
        assert!(icmp.len() >= 8);
        let p = Icmpv6Packet::new_unchecked(icmp);
        assert!(p.verify_checksum(&o.src, &o.dst), "ICMPv6 checksum");
        icmp
    }

    /// An emitted MLDv2 report to ff02::16: its records (type, group).
    fn report_of(o: &Out) -> Vec<(MldRecordType, Ipv6Addr)> {
        assert_eq!(o.dst, ALL_MLDV2_ROUTERS);
        let p = Icmpv6Packet::new_checked(mld_of(o)).unwrap();
        let MldRepr::Report {
            nr_mcast_addr_rcrds,
            data,
        } = MldRepr::parse(&p).unwrap()
        else {
            panic!("not a report");
        };
        assert_eq!(data.len(), 20 * usize::from(nr_mcast_addr_rcrds));
        data.chunks(20)
            .map(|c| {
                let r = MldAddressRecord::new_checked(c).unwrap();
                assert_eq!((r.aux_data_len(), r.num_srcs()), (0, 0));
                (r.record_type(), r.mcast_addr())
            })
            .collect()
    }

    /// The MLD frames (IPv6 with a hop-by-hop header) among `frames`.
    fn mld_frames(frames: &[Vec<u8>]) -> Vec<Out> {
        frames
            .iter()
            .filter(|f| f[12..14] == [0x86, 0xdd])
            .map(|f| out(f))
            .filter(|o| o.nh == 0)
            .collect()
    }

    fn assert_ignored(s: &mut Stack, f: &[u8], reason: Option<DropReason>) {
        let drops = s.counters.total_drops();
        s.receive_frame(t0(), RxMeta::HOST, f);
        assert!(drain(s).is_empty(), "nothing sent");
        match reason {
            Some(r) => assert_eq!(s.counters.drops(r), 1, "{:?}", s.counters.nonzero()),
            None => assert_eq!(s.counters.total_drops(), drops),
        }
    }

    #[test]
    fn b5_mld_report_at_start() {
        let mut s = stack_with_global(Some(OTHER_GLOBAL));
        let frames = drain(&mut s);
        let mld = mld_frames(&frames);
        assert_eq!(mld.len(), 1);
        let o = &mld[0];
        assert_eq!(o.eth_dst, [0x33, 0x33, 0, 0, 0, 0x16]);
        let ex = MldRecordType::ChangeToExclude;
        assert_eq!(
            report_of(o),
            vec![
                (ex, solicited_node(our_ll())),
                (ex, solicited_node(OTHER_GLOBAL))
            ]
        );
        // Exactly: 8-byte header + 2 records, after the 8-byte HBH header.
        assert_eq!(o.payload.len(), 8 + 8 + 40);
        assert_eq!(s.counters.get(Mib::Icmp6OutMLDv2Reports), 1);
        // It goes out before the neighbour advertisements (Linux joins the
        // groups, then announces).
        let pos = |nh: u8| {
            frames
                .iter()
                .position(|f| f[12..14] == [0x86, 0xdd] && out(f).nh == nh)
        };
        assert!(pos(0) < pos(58));
    }

    #[test]
    fn b5_mld_shared_group_reported_once() {
        // OUR6 (2001:db8::2) and fe80::5e:ff:fe00:2 share ff02::1:ff00:2;
        // without a global address only the link-local group is left.
        for a in [Some(OUR6), None] {
            let mut s = stack_with_global(a);
            let mld = mld_frames(&drain(&mut s));
            assert_eq!(mld.len(), 1);
            assert_eq!(
                report_of(&mld[0]),
                vec![(MldRecordType::ChangeToExclude, solicited_node(our_ll()))]
            );
        }
    }

    #[test]
    fn b5_mld_report_retransmitted_once_at_the_deadline() {
        let mut s = stack_with_global(Some(OTHER_GLOBAL));
        let first = mld_frames(&drain(&mut s));
        let at = t0() + unsolicited_delay(EthernetAddress(OUR_MAC));
        assert!(at > t0() && at <= t0() + Duration::from_secs(1));
        assert_eq!(s.poll(t0()), Some(at), "poll reports the deadline");
        assert_eq!(s.poll(at - Duration::from_millis(1)), Some(at));
        assert!(drain(&mut s).is_empty(), "not before the deadline");
        assert_eq!(s.poll(at), None, "nothing left to time");
        let again = mld_frames(&drain(&mut s));
        assert_eq!(again.len(), 1);
        assert_eq!(report_of(&again[0]), report_of(&first[0]));
        assert_eq!(s.poll(at + Duration::from_secs(60)), None);
        assert!(drain(&mut s).is_empty(), "only once more");
        assert_eq!(s.counters.get(Mib::Icmp6OutMLDv2Reports), 2);
    }

    #[test]
    fn b5_mld_delay_within_the_unsolicited_report_interval() {
        for last in 0..=255u8 {
            let d = unsolicited_delay(EthernetAddress([2, 0, 0, 0, 1, last]));
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(1));
        }
    }

    #[test]
    fn b5_mld_general_query_answered_with_mode_is_exclude() {
        let mut s = stack_with_global(Some(OTHER_GLOBAL));
        settle(&mut s);
        s.receive_frame(t0(), RxMeta::HOST, &query(28, Ipv6Addr::UNSPECIFIED, 0));
        let mld = mld_frames(&drain(&mut s));
        assert_eq!(mld.len(), 1);
        let ex = MldRecordType::ModeIsExclude;
        assert_eq!(
            report_of(&mld[0]),
            vec![
                (ex, solicited_node(our_ll())),
                (ex, solicited_node(OTHER_GLOBAL))
            ]
        );
        assert_eq!(s.counters.get(Mib::Icmp6InGroupMembQueries), 1);
        assert_eq!(s.counters.get(Mib::Icmp6OutMLDv2Reports), 3);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_mld_group_specific_query_answered_for_that_group_only() {
        let mut s = stack_with_global(Some(OTHER_GLOBAL));
        settle(&mut s);
        let g = solicited_node(OTHER_GLOBAL);
        // Sent to the group itself (RFC 3810 §5.1.15), with one source.
        let mut icmp = mld_msg(130, 44, g, 1, peer_ll(), g);
        icmp[28..44].copy_from_slice(&PEER6.octets());
        Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(&peer_ll(), &g);
        s.receive_frame(t0(), RxMeta::HOST, &frame(peer_ll(), g, 1, true, &icmp));
        let mld = mld_frames(&drain(&mut s));
        assert_eq!(mld.len(), 1);
        assert_eq!(report_of(&mld[0]), vec![(MldRecordType::ModeIsExclude, g)]);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_mld_query_for_a_group_not_ours_ignored() {
        let mut s = ready_stack();
        let other = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x99);
        for len in [24, 28] {
            assert_ignored(&mut s, &query(len, other, 0), None);
        }
        assert_eq!(s.counters.get(Mib::Icmp6InGroupMembQueries), 2);
    }

    #[test]
    fn b5_mld_v1_query_answered_with_v1_reports_to_each_group() {
        let mut s = stack_with_global(Some(OTHER_GLOBAL));
        settle(&mut s);
        s.receive_frame(t0(), RxMeta::HOST, &query(24, Ipv6Addr::UNSPECIFIED, 0));
        let mld = mld_frames(&drain(&mut s));
        let groups = [solicited_node(our_ll()), solicited_node(OTHER_GLOBAL)];
        assert_eq!(mld.len(), 2);
        for (o, g) in mld.iter().zip(groups) {
            assert_eq!(o.dst, g);
            let icmp = mld_of(o);
            assert_eq!(icmp.len(), 24);
            assert_eq!(&icmp[..2], &[131, 0]);
            assert_eq!(&icmp[4..8], &[0; 4], "max response delay, reserved");
            assert_eq!(&icmp[8..24], &g.octets());
        }
        assert_eq!(s.counters.get(Mib::Icmp6OutGroupMembResponses), 2);
        assert_eq!(s.counters.total_drops(), 0);
    }

    #[test]
    fn b5_mld_query_not_hop_limit_1_link_local_router_alert_ignored() {
        let g = Ipv6Addr::UNSPECIFIED;
        let ll = peer_ll();
        let cases = [
            // hop limit 2
            frame(
                ll,
                ALL_NODES,
                2,
                true,
                &mld_msg(130, 28, g, 0, ll, ALL_NODES),
            ),
            // a global source
            frame(
                PEER6,
                ALL_NODES,
                1,
                true,
                &mld_msg(130, 28, g, 0, PEER6, ALL_NODES),
            ),
            // no Router Alert
            frame(
                ll,
                ALL_NODES,
                1,
                false,
                &mld_msg(130, 28, g, 0, ll, ALL_NODES),
            ),
        ];
        for f in cases {
            let mut s = ready_stack();
            assert_ignored(&mut s, &f, Some(DropReason::MldQueryInvalid));
            assert_eq!(s.counters.get(Mib::Icmp6InGroupMembQueries), 1);
        }
    }

    #[test]
    fn b5_mld_malformed_queries_dropped() {
        let unicast_group = {
            let icmp = mld_msg(130, 28, PEER6, 0, peer_ll(), ALL_NODES);
            frame(peer_ll(), ALL_NODES, 1, true, &icmp)
        };
        let cases = [
            (
                "shorter than an MLDv1 query",
                query(20, Ipv6Addr::UNSPECIFIED, 0),
            ),
            (
                "between v1 and v2 lengths",
                query(26, Ipv6Addr::UNSPECIFIED, 0),
            ),
            (
                "general query with sources",
                query(44, Ipv6Addr::UNSPECIFIED, 1),
            ),
            (
                "sources beyond the message",
                query(44, solicited_node(OUR6), 2),
            ),
            ("unicast multicast address", unicast_group),
        ];
        for (what, f) in cases {
            let mut s = ready_stack();
            s.receive_frame(t0(), RxMeta::HOST, &f);
            assert!(drain(&mut s).is_empty(), "{what}: nothing sent");
            assert_eq!(s.counters.drops(DropReason::MldMalformed), 1, "{what}");
            assert_eq!(s.counters.total_drops(), 1, "{what}");
            assert_eq!(s.counters.get(Mib::Icmp6InGroupMembQueries), 1, "{what}");
        }
    }

    #[test]
    fn b5_mld_reports_and_dones_of_others_ignored() {
        let mut s = ready_stack();
        let g = solicited_node(OUR6);
        let ll = peer_ll();
        // Another listener of our group (MLDv1 report, done) and an MLDv2 report.
        assert_ignored(
            &mut s,
            &frame(ll, g, 1, true, &mld_msg(131, 24, g, 0, ll, g)),
            None,
        );
        assert_ignored(
            &mut s,
            &frame(ll, g, 1, true, &mld_msg(132, 24, g, 0, ll, g)),
            None,
        );
        let v2 = mld_msg(143, 8, g, 0, ll, ALL_NODES);
        assert_ignored(&mut s, &frame(ll, ALL_NODES, 1, true, &v2), None);
        assert_eq!(s.counters.get(Mib::Icmp6InGroupMembResponses), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InGroupMembReductions), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InMLDv2Reports), 1);
        assert_eq!(s.counters.get(Mib::Icmp6InMsgs), 3);
    }

    #[test]
    fn b5_mld_our_report_passes_our_ipv6_receive_path() {
        // Our own report, readdressed to all-nodes (ff02::16 is not a group
        // we are in), goes through ipv6_rcv's hop-by-hop processing.
        let mut s = stack();
        let o = mld_frames(&drain(&mut s)).remove(0);
        let mut icmp = o.payload[8..].to_vec();
        Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(&o.src, &ALL_NODES);
        let mut r = ready_stack();
        let f = frame(o.src, ALL_NODES, o.hop, true, &icmp);
        assert_eq!(&f[14 + 40..14 + 48], &o.payload[..8]);
        r.receive_frame(t0(), RxMeta::HOST, &f);
        assert_eq!(r.counters.get(Mib::Icmp6InMLDv2Reports), 1);
        assert_eq!(r.counters.get(Mib::Ip6InHdrErrors), 0);
        assert_eq!(r.counters.total_drops(), 0);
        assert!(drain(&mut r).is_empty());
    }
}
