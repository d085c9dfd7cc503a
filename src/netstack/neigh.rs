//! The neighbour cache shared by ARP (IPv4) and NDP (IPv6): resolved
//! entries with an expiry, unresolved entries with a bounded queue of
//! packets waiting for the answer, retransmitted solicitations. Bounded in
//! entries and in packets per entry; every packet it gives up on is counted.
//!
//! An expired entry is not thrown away at once: like Linux's STALE → PROBE
//! states (RFC 4861 §7.3.3), traffic keeps using the known MAC while
//! solicitations re-validate it, so a busy neighbour never sees a pause or a
//! queue every `neigh_reachable`. Only when the probes go unanswered is the
//! entry removed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use smoltcp::wire::EthernetAddress;

use super::{DropReason, Duration, ETH_HDR, Instant, Limits, Mib, Stack, StackError, take_earlier};

#[derive(Debug)]
enum State {
    Resolved {
        mac: EthernetAddress,
        expires: Instant,
        /// Re-validation of an expired entry in progress: when the next
        /// solicitation is due, and how many were sent.
        probe: Option<(Instant, u32)>,
    },
    Incomplete {
        /// When the next solicitation is due.
        next: Instant,
        /// Solicitations sent so far.
        sent: u32,
        /// Frames (with Ethernet headroom) waiting for the address.
        queue: VecDeque<Vec<u8>>,
        /// Bytes in `queue`.
        bytes: usize,
    },
}

/// IPv4 and IPv6 neighbours.
#[derive(Debug)]
pub struct NeighCache {
    map: HashMap<IpAddr, State>,
    max: usize,
    /// Bytes queued per unresolved entry.
    pending: usize,
    reachable: Duration,
    retrans: Duration,
    retries: u32,
    /// The last neighbour [`Stack::neigh_usable`] found resolved and not
    /// expired, with its MAC and expiry: most frames go to the neighbour
    /// the frame before went to (one upstream, one gateway), and this
    /// spares them the map's keyed hash. Cleared whenever that entry
    /// changes or leaves the map; only trusted before its expiry.
    hint: Option<(IpAddr, EthernetAddress, Instant)>,
    /// Never later than the earliest solicitation timer of any entry (an
    /// unresolved one's, or a re-validation probe's); `None`: no entry has
    /// one. `Stack::neigh_poll` walks the map only when it is due or
    /// `rescan` is set, so a table of resolved neighbours costs nothing per
    /// poll however large it is.
    timer_at: Option<Instant>,
    /// An entry with a timer was resolved or removed: `timer_at` may be
    /// early, and the next `neigh_poll` walks the map to make it exact.
    rescan: bool,
}

impl NeighCache {
    pub fn new(l: &Limits) -> Self {
        NeighCache {
            map: HashMap::new(),
            max: l.neigh_entries,
            pending: l.neigh_pending_bytes,
            reachable: l.neigh_reachable,
            retrans: l.neigh_retrans,
            retries: l.neigh_retries,
            hint: None,
            timer_at: None,
            rescan: false,
        }
    }

    /// The MAC of `ip` if resolved and not expired.
    pub fn lookup(&self, now: Instant, ip: IpAddr) -> Option<EthernetAddress> {
        match self.map.get(&ip) {
            Some(State::Resolved { mac, expires, .. }) if *expires > now => Some(*mac),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Earliest solicitation timer: exact after `Stack::neigh_poll`, which
    /// `Stack::poll` runs first.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer_at
    }

    /// The earliest solicitation timer, by walking every entry (what
    /// `timer_at` stands for; tests check the two agree after a poll).
    #[cfg(test)]
    fn scan_deadline(&self) -> Option<Instant> {
        self.map.values().filter_map(Self::timer_of).min()
    }

    /// The solicitation timer of an entry in state `st`, if any.
    fn timer_of(st: &State) -> Option<Instant> {
        match st {
            State::Incomplete { next, .. } => Some(*next),
            State::Resolved { probe, .. } => probe.map(|(next, _)| next),
        }
    }

    /// Drop the hint if it is about `ip`.
    fn forget_hint(&mut self, ip: IpAddr) {
        if self.hint.is_some_and(|(h, ..)| h == ip) {
            self.hint = None;
        }
    }

    /// Make room for one entry: drop an expired resolved entry, else any
    /// resolved one. Incomplete entries are never evicted (they time out).
    fn make_room(&mut self, now: Instant) -> bool {
        if self.map.len() < self.max {
            return true;
        }
        let victim = self
            .map
            .iter()
            .filter_map(|(k, s)| match s {
                State::Resolved { expires, .. } => Some((*expires <= now, *expires, *k)),
                State::Incomplete { .. } => None,
            })
            .max_by_key(|(expired, e, _)| (*expired, std::cmp::Reverse(*e)))
            .map(|(_, _, k)| k);
        match victim {
            Some(k) => {
                if self
                    .map
                    .remove(&k)
                    .as_ref()
                    .and_then(Self::timer_of)
                    .is_some()
                {
                    self.rescan = true;
                }
                self.forget_hint(k);
                true
            }
            None => false,
        }
    }
}

/// Write the Ethernet header into the headroom of `frame`.
fn fill_eth(frame: &mut [u8], dst: EthernetAddress, src: EthernetAddress, ip: IpAddr) {
    frame[0..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
    let et: u16 = if ip.is_ipv4() { 0x0800 } else { 0x86dd };
    frame[12..14].copy_from_slice(&et.to_be_bytes());
}

impl Stack {
    /// Send an IP packet (in `frame` after `ETH_HDR` bytes of headroom) to
    /// the neighbour `next_hop`: at once when resolved (or broadcast /
    /// multicast), else queued while a solicitation goes out.
    pub(crate) fn neigh_output(
        &mut self,
        now: Instant,
        next_hop: IpAddr,
        mut frame: Vec<u8>,
    ) -> Result<(), StackError> {
        debug_assert!(frame.len() >= ETH_HDR);
        let our = self.cfg.mac;
        let direct = match next_hop {
            IpAddr::V4(a) if self.is_v4_broadcast(a) => Some(EthernetAddress::BROADCAST),
            IpAddr::V6(a) if a.is_multicast() => Some(super::multicast_mac_v6(a)),
            _ => self.neigh_usable(now, next_hop),
        };
        if let Some(mac) = direct {
            fill_eth(&mut frame, mac, our, next_hop);
            return self.transmit(frame);
        }
        let room = self.neigh.map.contains_key(&next_hop) || self.neigh.make_room(now);
        if !room {
            self.counters.drop_reason(DropReason::NeighCacheFull);
            self.recycle(frame);
            return Err(StackError::NoBufferSpace);
        }
        let cap = self.neigh.pending;
        let fresh = || State::Incomplete {
            next: now,
            sent: 0,
            queue: VecDeque::new(),
            bytes: 0,
        };
        let entry = self.neigh.map.entry(next_hop).or_insert_with(fresh);
        if let State::Resolved { .. } = entry {
            // Expired: re-resolve, keeping nothing from the old entry (a
            // probe timer it had goes; the fresh entry's is due now, so the
            // next poll recomputes `timer_at` anyway).
            *entry = fresh();
        }
        let State::Incomplete {
            next,
            sent,
            queue,
            bytes,
        } = entry
        else {
            unreachable!("entry was just made incomplete")
        };
        // (only ever moved later below: `timer_at` stays early enough)
        take_earlier(&mut self.neigh.timer_at, *next);
        // Linux drops the oldest queued packets beyond `unres_qlen_bytes`.
        while *bytes + frame.len() > cap {
            let Some(old) = queue.pop_front() else {
                break;
            };
            *bytes -= old.len();
            self.counters.drop_reason(DropReason::NeighPendingFull);
            if self.pool.len() < 256 {
                self.pool.push(old);
            }
        }
        if frame.len() > cap {
            self.counters.drop_reason(DropReason::NeighPendingFull);
            return Err(StackError::NoBufferSpace);
        }
        *bytes += frame.len();
        queue.push_back(frame);
        let solicit = *sent == 0 && *next <= now;
        if solicit {
            *sent = 1;
            *next = now + self.neigh.retrans;
            self.solicit(now, next_hop);
        }
        Ok(())
    }

    fn solicit(&mut self, now: Instant, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.arp_solicit(now, a),
            IpAddr::V6(a) => self.ndisc_solicit(now, a),
        }
    }

    /// Learn `ip` is at `mac` (from ARP or NDP). `create`: add an entry if
    /// there is none (an ARP request or NS addressed to us, or a solicited
    /// answer); otherwise only refresh an existing one. Queued packets go
    /// out now.
    pub(crate) fn neigh_update(
        &mut self,
        now: Instant,
        ip: IpAddr,
        mac: EthernetAddress,
        create: bool,
    ) {
        if !mac.is_unicast() {
            return;
        }
        let exists = self.neigh.map.contains_key(&ip);
        if !exists && (!create || !self.neigh.make_room(now)) {
            return;
        }
        let expires = now + self.neigh.reachable;
        self.neigh.forget_hint(ip);
        let old = self.neigh.map.insert(
            ip,
            State::Resolved {
                mac,
                expires,
                probe: None,
            },
        );
        if old.as_ref().and_then(NeighCache::timer_of).is_some() {
            self.neigh.rescan = true;
        }
        if let Some(State::Incomplete { queue, .. }) = old {
            let our = self.cfg.mac;
            for mut f in queue {
                fill_eth(&mut f, mac, our, ip);
                let _ = self.transmit(f);
            }
        }
    }

    /// Retransmit solicitations; give up (and count) after the retries.
    pub(crate) fn neigh_poll(&mut self, now: Instant) {
        if !self.neigh.rescan && self.neigh.timer_at.is_none_or(|t| t > now) {
            return;
        }
        self.neigh.rescan = false;
        let mut due = Vec::new();
        let mut gone = Vec::new();
        let retries = self.neigh.retries;
        let retrans = self.neigh.retrans;
        let mut earliest: Option<Instant> = None;
        for (ip, st) in self.neigh.map.iter_mut() {
            // an unresolved entry and an expired one being re-validated run
            // the same solicitation timer
            let (next, sent) = match st {
                State::Incomplete { next, sent, .. } => (next, sent),
                State::Resolved {
                    probe: Some((next, sent)),
                    ..
                } => (next, sent),
                State::Resolved { probe: None, .. } => continue,
            };
            if *next <= now {
                if *sent >= retries {
                    gone.push(*ip);
                    continue;
                }
                *sent += 1;
                *next = now + retrans;
                due.push(*ip);
            }
            take_earlier(&mut earliest, *next);
        }
        self.neigh.timer_at = earliest;
        for ip in gone {
            // An expired neighbour that stopped answering is forgotten (the
            // next packet starts a fresh resolution); an unresolved one
            // takes its waiting packets with it, counted.
            self.neigh.forget_hint(ip);
            if let Some(State::Incomplete { queue, .. }) = self.neigh.map.remove(&ip) {
                for f in queue {
                    self.counters.drop_reason(DropReason::NeighUnresolved);
                    let m = if ip.is_ipv4() {
                        Mib::IpOutDiscards
                    } else {
                        Mib::Ip6OutDiscards
                    };
                    self.counters.inc(m);
                    self.recycle(f);
                }
            }
        }
        for ip in due {
            self.solicit(now, ip);
        }
    }

    /// The MAC to use for `ip` now: a resolved entry, even an expired one
    /// (which starts a re-validation probe the first time it is used).
    fn neigh_usable(&mut self, now: Instant, ip: IpAddr) -> Option<EthernetAddress> {
        if let Some((h, mac, expires)) = self.neigh.hint
            && h == ip
            && expires > now
        {
            return Some(mac);
        }
        let retrans = self.neigh.retrans;
        let Some(State::Resolved {
            mac,
            expires,
            probe,
        }) = self.neigh.map.get_mut(&ip)
        else {
            return None;
        };
        let mac = *mac;
        if *expires > now {
            self.neigh.hint = Some((ip, mac, *expires));
        }
        let start_probe = *expires <= now && probe.is_none();
        if start_probe {
            *probe = Some((now + retrans, 1));
            take_earlier(&mut self.neigh.timer_at, now + retrans);
            self.solicit(now, ip);
        }
        Some(mac)
    }

    /// The resolved MAC of `ip`, if any and not expired (tests, diagnostics).
    pub fn neighbor(&self, now: Instant, ip: IpAddr) -> Option<EthernetAddress> {
        self.neigh.lookup(now, ip)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::super::testutil::*;
    use super::super::{StackConfig, UdpHandle};
    use super::*;

    fn stack_with(f: impl FnOnce(&mut StackConfig)) -> (Stack, UdpHandle) {
        let mut c = config();
        f(&mut c);
        let mut s = Stack::new(c, t0());
        settle(&mut s);
        let h = s.udp_bind(SocketAddr::new(OUR4.into(), 5060)).unwrap();
        (s, h)
    }

    fn to(ip: Ipv4Addr) -> SocketAddr {
        SocketAddr::new(ip.into(), 4000)
    }

    #[test]
    fn unresolved_neighbour_queue_is_bounded_oldest_dropped() {
        // room for two 43-byte frames (Ethernet + IPv4 + UDP + 1 byte)
        let (mut s, h) = stack_with(|c| c.limits.neigh_pending_bytes = 2 * 43);
        for i in 0..4u8 {
            s.udp_send_to(t0(), h, to(PEER4), &[i]).unwrap();
        }
        // one ARP request only, however many packets wait
        assert_eq!(drain(&mut s).len(), 1);
        assert_eq!(s.counters.drops(DropReason::NeighPendingFull), 2);
        s.neigh_update(t0(), PEER4.into(), EthernetAddress(PEER_MAC), false);
        let out = drain(&mut s);
        assert_eq!(out.len(), 2);
        // the two newest datagrams (payload bytes 2 and 3) left, in order
        assert_eq!(out[0].last(), Some(&2));
        assert_eq!(out[1].last(), Some(&3));
        assert_eq!(&out[0][0..6], &PEER_MAC);
    }

    #[test]
    fn resolution_gives_up_after_the_retries_and_counts() {
        let (mut s, h) = stack_with(|c| c.limits.neigh_retries = 3);
        s.udp_send_to(t0(), h, to(PEER4), b"x").unwrap();
        assert_eq!(drain(&mut s).len(), 1, "first who-has");
        let mut t = t0();
        let mut requests = 0;
        for _ in 0..10 {
            t += Duration::from_secs(1);
            s.poll(t);
            requests += drain(&mut s).len();
        }
        assert_eq!(requests, 2, "retransmitted up to neigh_retries in all");
        assert_eq!(s.counters.drops(DropReason::NeighUnresolved), 1);
        assert_eq!(s.counters.get(Mib::IpOutDiscards), 1);
        assert_eq!(s.usage().neigh_entries, 0);
        assert_eq!(s.poll(t), None, "nothing left to time");
    }

    #[test]
    fn cache_is_bounded_and_reuses_resolved_entries() {
        let (mut s, h) = stack_with(|c| c.limits.neigh_entries = 2);
        let a = Ipv4Addr::new(198, 18, 0, 10);
        let b = Ipv4Addr::new(198, 18, 0, 11);
        let c = Ipv4Addr::new(198, 18, 0, 12);
        s.neigh_update(t0(), a.into(), EthernetAddress(PEER_MAC), true);
        s.neigh_update(t0(), b.into(), EthernetAddress(PEER_MAC), true);
        // a third neighbour evicts a resolved one
        s.udp_send_to(t0(), h, to(c), b"x").unwrap();
        assert_eq!(s.usage().neigh_entries, 2);
        // with the table full of unresolved entries, a new one is refused
        let (mut s2, h2) = stack_with(|c| c.limits.neigh_entries = 1);
        s2.udp_send_to(t0(), h2, to(a), b"x").unwrap();
        assert_eq!(
            s2.udp_send_to(t0(), h2, to(b), b"x"),
            Err(StackError::NoBufferSpace)
        );
        assert_eq!(s2.counters.drops(DropReason::NeighCacheFull), 1);
    }

    #[test]
    fn expired_entries_keep_working_while_they_are_revalidated() {
        let (mut s, h) = stack_with(|_| {});
        s.neigh_update(t0(), PEER4.into(), EthernetAddress(PEER_MAC), true);
        s.udp_send_to(t0(), h, to(PEER4), b"x").unwrap();
        assert_eq!(drain(&mut s).len(), 1, "sent at once");
        let later = t0() + Duration::from_secs(31);
        assert_eq!(s.neighbor(later, PEER4.into()), None, "expired");
        // still sent at once with the known MAC, plus one who-has
        s.udp_send_to(later, h, to(PEER4), b"x").unwrap();
        s.udp_send_to(later, h, to(PEER4), b"y").unwrap();
        let out = drain(&mut s);
        let arp = out.iter().filter(|f| f[12..14] == [0x08, 0x06]).count();
        let ip = out.iter().filter(|f| f[12..14] == [0x08, 0x00]).count();
        assert_eq!((arp, ip), (1, 2), "no pause, one probe");
        assert!(
            out.iter()
                .filter(|f| f[12..14] == [0x08, 0x00])
                .all(|f| f[..6] == PEER_MAC)
        );
        // the answer refreshes it
        s.neigh_update(later, PEER4.into(), EthernetAddress(PEER_MAC), false);
        assert!(s.neighbor(later, PEER4.into()).is_some());
        assert_eq!(s.poll(later), None, "no probe pending");
    }

    /// The neighbour deadline `poll` reports is kept, not searched for: it
    /// must equal the earliest timer of any entry after every poll, through
    /// resolutions, retransmissions, give-ups, expiry probes, answers and
    /// evictions of entries with and without timers.
    #[test]
    fn neighbour_deadline_is_exact_after_every_poll() {
        let (mut s, h) = stack_with(|c| {
            c.limits.neigh_entries = 3;
            c.limits.neigh_retries = 3;
        });
        let ip = |i: u8| Ipv4Addr::new(198, 18, 0, 10 + i);
        let mac = |i: u8| {
            let mut m = PEER_MAC;
            m[5] = 0x10 + i;
            EthernetAddress(m)
        };
        let mut t = t0();
        let check = |s: &mut Stack, t: Instant, step: &str| {
            s.poll(t);
            assert_eq!(s.neigh.next_deadline(), s.neigh.scan_deadline(), "{step}");
        };
        check(&mut s, t, "empty");
        // resolutions in flight, retransmitted, one answered, one given up
        s.udp_send_to(t, h, to(ip(0)), b"a").unwrap();
        s.udp_send_to(t, h, to(ip(1)), b"b").unwrap();
        check(&mut s, t, "two unresolved");
        for i in 0..6 {
            t += Duration::from_millis(600);
            if i == 1 {
                s.neigh_update(t, ip(0).into(), mac(0), false);
            }
            check(&mut s, t, &format!("retransmit round {i}"));
        }
        assert!(s.neighbor(t, ip(0).into()).is_some());
        assert!(s.neighbor(t, ip(1).into()).is_none());
        // resolved entries only: nothing to time
        s.neigh_update(t, ip(2).into(), mac(2), true);
        check(&mut s, t, "resolved only");
        assert_eq!(s.neigh.next_deadline(), None);
        // expiry: use starts a probe; the answer ends it
        t += Duration::from_secs(31);
        s.udp_send_to(t, h, to(ip(0)), b"c").unwrap();
        s.udp_send_to(t, h, to(ip(2)), b"d").unwrap();
        check(&mut s, t, "two probes");
        s.neigh_update(t, ip(0).into(), mac(0), false);
        check(&mut s, t, "one probe answered");
        // a full table: a new neighbour evicts one (an expired, probing one
        // first), and its own resolution starts
        s.udp_send_to(t, h, to(ip(3)), b"e").unwrap();
        check(&mut s, t, "eviction");
        s.udp_send_to(t, h, to(ip(4)), b"f").unwrap();
        check(&mut s, t, "second eviction");
        for i in 0..6 {
            t += Duration::from_millis(700);
            check(&mut s, t, &format!("late round {i}"));
        }
        assert_eq!(s.neigh.next_deadline(), None, "all settled");
        // an answer from a new neighbour fills the table by evicting the
        // one whose probe is running: that timer goes with it
        assert_eq!(s.usage().neigh_entries, 1);
        t += Duration::from_secs(31);
        s.udp_send_to(t, h, to(ip(0)), b"g").unwrap();
        s.neigh_update(t, ip(5).into(), mac(5), true);
        s.neigh_update(t, ip(6).into(), mac(6), true);
        check(&mut s, t, "probe in a full table");
        assert!(s.neigh.next_deadline().is_some());
        s.neigh_update(t, ip(7).into(), mac(7), true);
        assert!(s.neighbor(t, ip(7).into()).is_some());
        check(&mut s, t, "the probing entry evicted");
        assert_eq!(s.neigh.next_deadline(), None);
    }

    /// The last-neighbour hint never outlives what it caches: a new MAC
    /// learnt for the neighbour, its eviction, or its expiry each take
    /// effect on the next frame.
    #[test]
    fn neighbour_hint_follows_mac_changes_eviction_and_expiry() {
        let (mut s, h) = stack_with(|c| c.limits.neigh_entries = 1);
        let first = EthernetAddress(PEER_MAC);
        let mut moved = PEER_MAC;
        moved[5] ^= 0x55;
        s.neigh_update(t0(), PEER4.into(), first, true);
        s.udp_send_to(t0(), h, to(PEER4), b"x").unwrap();
        assert_eq!(&drain(&mut s)[0][..6], &PEER_MAC, "hint set");
        // the neighbour answers from a new MAC (gratuitous ARP, failover)
        s.neigh_update(t0(), PEER4.into(), EthernetAddress(moved), false);
        s.udp_send_to(t0(), h, to(PEER4), b"y").unwrap();
        assert_eq!(&drain(&mut s)[0][..6], &moved, "the new MAC at once");
        // another neighbour evicts it: the next frame to it resolves anew
        let other = Ipv4Addr::new(198, 18, 0, 10);
        s.neigh_update(t0(), other.into(), first, true);
        s.udp_send_to(t0(), h, to(PEER4), b"z").unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][12..14], &[0x08, 0x06], "who-has, not the old MAC");
        // expiry: a hint from t0 is not trusted 31 s later (a probe starts)
        let (mut s, h) = stack_with(|_| {});
        s.neigh_update(t0(), PEER4.into(), first, true);
        s.udp_send_to(t0(), h, to(PEER4), b"x").unwrap();
        drain(&mut s);
        let later = t0() + Duration::from_secs(31);
        s.udp_send_to(later, h, to(PEER4), b"y").unwrap();
        let arp = drain(&mut s)
            .iter()
            .filter(|f| f[12..14] == [0x08, 0x06])
            .count();
        assert_eq!(arp, 1, "re-validation probe");
    }

    #[test]
    fn expired_entry_whose_probes_go_unanswered_is_removed() {
        let (mut s, h) = stack_with(|c| c.limits.neigh_retries = 3);
        s.neigh_update(t0(), PEER4.into(), EthernetAddress(PEER_MAC), true);
        let mut t = t0() + Duration::from_secs(31);
        s.udp_send_to(t, h, to(PEER4), b"x").unwrap();
        drain(&mut s);
        let mut probes = 0;
        for _ in 0..5 {
            t += Duration::from_secs(1);
            s.poll(t);
            probes += drain(&mut s).len();
        }
        assert_eq!(probes, 2, "re-sent up to neigh_retries in all");
        assert_eq!(s.usage().neigh_entries, 0);
        // the next datagram waits for a fresh resolution
        s.udp_send_to(t, h, to(PEER4), b"x").unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][12..14], &[0x08, 0x06]);
    }
}
