//! Stack shards (issue 9): `stack.workers` threads, each with its own
//! AF_PACKET socket in one `PACKET_FANOUT` group, its own [`Stack`],
//! connection table, timers and SIP application; no lock on the
//! per-frame path.
//!
//! ```text
//! NIC → fanout (steer::program): TCP/UDP to an ephemeral local port → port % N,
//!       anything else → hash(source address) % N
//!     → shard k: AfPacket k → Driver → Stack k → App k (ConnTable k: ids seq·N + k)
//! shard B → shard A (mailbox: bounded channel + a byte on A's wake socket):
//!   - a TCP send for a connection id A owns (id % N == A)   [handoff]
//!   - a copy of an ARP / NDP / ICMP-error frame B processed [replica]
//! ```
//!
//! Why the steering keeps a connection on one shard: a client's
//! connections to the listen port all hash by its address; an outbound
//! connection leaves from an ephemeral port p with p % N == its shard
//! (the stack partitions the ports), and the answers, addressed to p, are
//! steered by p. A fragmented datagram has no ports: the fragments of one
//! datagram all carry its source address, so they meet on one shard (the
//! program steers every fragment by address, including ones for an
//! ephemeral port — a fragmented answer to an outbound UDP socket may land
//! on another shard; SIP sends from the listen sockets, so that does not
//! occur here).

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::App;
use super::tcp::StackIo;
use crate::config::StackSettings;
use crate::core::{ConnId, Dest, DropReason};
use crate::metrics::{ShardSource, ShardStats};
use crate::netstack::device::Device;
use crate::netstack::device::afpacket::{AfPacket, AfPacketOptions};
use crate::netstack::device::steer::{self, SteerConfig};
use crate::netstack::{EPHEMERAL, Instant, RxMeta, ShardId, Stack, driver};
use crate::transport::conn::{ConnTable, TableLimits, shard_of_conn};
use crate::transport::egress::{Egress, SendResult};
use crate::transport::lifecycle::DrainConns;

/// Messages a shard's mailbox holds at most (full: counted drop).
pub(super) const MAILBOX: usize = 4096;
/// Mailbox messages handled per round (the rest next round, at once).
const MAIL_BATCH: usize = 1024;

/// What one shard hands another.
pub(super) enum Mail {
    /// A TCP send on a connection the receiving shard owns.
    Send { dest: Dest, out: Vec<u8> },
    /// A copy of an ARP / NDP / ICMP-error frame another shard processed
    /// (learn only: `Stack::receive_replica`).
    Replica { meta: RxMeta, frame: Vec<u8> },
}

/// The way into one shard: its mailbox and the write end of its wake socket.
///
/// Wake protocol (one byte per wake-up, no syscall in a round that was not
/// woken): a waker sets `woken` and writes a byte only when it was clear;
/// the shard reads that byte only while `woken` is set, and clears it only
/// once it has the byte (so no byte is ever left behind with `woken`
/// clear, which would make every wait return at once), then empties the
/// mailbox.
pub(super) struct Peer {
    tx: mpsc::SyncSender<Mail>,
    wake: UnixStream,
    woken: Arc<AtomicBool>,
    stats: Arc<ShardStats>,
}

impl Peer {
    /// Post `m` and wake the shard; false (counted) when the mailbox is full.
    pub(super) fn post(&self, m: Mail) -> bool {
        match self.tx.try_send(m) {
            Ok(()) => {
                self.wake();
                true
            }
            Err(_) => {
                self.stats.mailbox_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// End the shard's wait (after what it must see was posted).
    pub(super) fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let _ = (&self.wake).write(&[1]);
        }
    }

    pub(super) fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }
}

/// A shard's receiving side: its mailbox and the read end of its wake socket.
pub(super) struct Inbox {
    rx: mpsc::Receiver<Mail>,
    wake: UnixStream,
    woken: Arc<AtomicBool>,
}

impl Inbox {
    /// The fd the driver also waits on.
    pub(super) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Was the shard woken since it last looked? Consumes the wake byte
    /// (see [`Peer`]); false costs one atomic load.
    fn take_wake(&self) -> bool {
        if !self.woken.load(Ordering::Acquire) {
            return false;
        }
        let mut buf = [0u8; 16];
        // the byte may not be written yet: then `woken` stays set and the
        // next round (the socket turns readable) takes it
        if matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {
            self.woken.swap(false, Ordering::AcqRel);
        }
        true
    }
}

/// `n` mailboxes: the peers (shared by every shard, indexed by shard) and
/// each shard's inbox.
pub(super) fn mailboxes(n: usize) -> io::Result<(Arc<[Peer]>, Vec<Inbox>)> {
    let mut peers = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::sync_channel(MAILBOX);
        let (w, r) = UnixStream::pair()?;
        w.set_nonblocking(true)?;
        r.set_nonblocking(true)?;
        let woken = Arc::new(AtomicBool::new(false));
        peers.push(Peer {
            tx,
            wake: w,
            woken: woken.clone(),
            stats: Arc::new(ShardStats::default()),
        });
        inboxes.push(Inbox { rx, wake: r, woken });
    }
    Ok((peers.into(), inboxes))
}

/// What a shard's TCP side needs to hand a send to another shard.
#[derive(Clone)]
pub(super) struct Handoff {
    index: usize,
    peers: Arc<[Peer]>,
    /// Every shard's connection table (by shard), for a send by address
    /// whose connection another shard holds.
    tables: Arc<[Arc<ConnTable<StackIo>>]>,
}

impl Handoff {
    /// One shard, nobody to hand anything to.
    pub(super) fn single() -> Handoff {
        Handoff {
            index: 0,
            peers: Arc::from(Vec::new()),
            tables: Arc::from(Vec::new()),
        }
    }

    /// A send on connection `id` owned by another shard: posted to it
    /// (`Some(Sent)`, or `Some(Failed)` when its mailbox is full); `None`
    /// when this shard owns it.
    pub(super) fn forward(&self, id: ConnId, dest: &Dest, out: &[u8]) -> Option<SendResult> {
        let owner = shard_of_conn(id, self.peers.len());
        if self.peers.len() <= 1 || owner == self.index {
            return None;
        }
        Some(self.post(owner, dest, out))
    }

    /// A send by address with no connection to it in this shard's table:
    /// when the shard that `dest`'s address steers to holds an inbound
    /// one (a client's connection, reused as RFC 3261 §18.2.2 asks), posted there
    /// (`Some`); `None`: open one here. Only on a miss of the own table
    /// (reads the other table's lock, never per frame).
    pub(super) fn forward_by_addr(&self, dest: &Dest, out: &[u8]) -> Option<SendResult> {
        let n = self.peers.len();
        if n <= 1 {
            return None;
        }
        let owner = usize::from(steer::shard_of_addr(
            dest.addr.ip(),
            u16::try_from(n).unwrap_or(1),
        ));
        if owner == self.index || owner >= n {
            return None;
        }
        // inbound connections only: outbound ones are per shard (each
        // shard uses its own, from its own ports)
        self.tables
            .get(owner)?
            .by_addr(dest.addr)
            .filter(|c| !c.outbound)?;
        Some(self.post(owner, dest, out))
    }

    fn post(&self, owner: usize, dest: &Dest, out: &[u8]) -> SendResult {
        let m = Mail::Send {
            dest: *dest,
            out: out.to_vec(),
        };
        if self.peers[owner].post(m) {
            SendResult::Sent
        } else {
            SendResult::Failed
        }
    }
}

/// One shard's place among the others: the way to them (its index, their
/// mailboxes and tables) and its own mailbox.
pub(super) struct Shard {
    to: Handoff,
    inbox: Inbox,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        peers: Arc<[Peer]>,
        tables: Arc<[Arc<ConnTable<StackIo>>]>,
        inbox: Inbox,
    ) -> Shard {
        Shard {
            to: Handoff {
                index,
                peers,
                tables,
            },
            inbox,
        }
    }

    pub(super) fn index(&self) -> usize {
        self.to.index
    }

    /// Shards running (at least 1).
    pub(super) fn count(&self) -> usize {
        self.to.peers.len().max(1)
    }

    pub(super) fn handoff(&self) -> Handoff {
        self.to.clone()
    }

    /// Every shard's way in, by index (this one's included).
    fn peers(&self) -> &[Peer] {
        &self.to.peers
    }

    fn stats(&self) -> Option<&Arc<ShardStats>> {
        self.peers().get(self.index()).map(Peer::stats)
    }
}

/// Connection limits of one of `n` tables: `max_connections` split
/// (rounded up); the per-IP limit stays per table (exact: steering sends
/// all of one address's connections to one shard).
pub(super) fn split_limits(l: TableLimits, n: usize) -> TableLimits {
    TableLimits {
        max_connections: l.max_connections.div_ceil(n.max(1)),
        ..l
    }
}

/// Every shard's table, for the drain.
pub(super) struct Tables(pub Vec<Arc<ConnTable<StackIo>>>);

impl DrainConns for Tables {
    fn open(&self) -> usize {
        self.0.iter().map(|t| t.len()).sum()
    }

    fn close_idle(&self, now_s: u64, idle_secs: u64) {
        for t in &self.0 {
            t.close_idle(now_s, idle_secs);
        }
    }
}

/// The metrics' view of one shard.
pub(super) fn source(stack: &Stack, conns: &Arc<ConnTable<StackIo>>, p: &Peer) -> ShardSource {
    let conns = conns.clone();
    ShardSource {
        counters: stack.counters(),
        stats: p.stats.clone(),
        connections: Box::new(move || conns.len()),
    }
}

/// The stack configuration of shard `k` of `n` (ephemeral ports
/// partitioned: p % n == k).
pub(super) fn stack_config(
    st: &StackSettings,
    dev: &AfPacket,
    k: usize,
    n: usize,
) -> crate::netstack::StackConfig {
    let mut c = st.netstack_config(dev.mac().0, dev.mtu());
    c.tx_csum_offload = dev.tx_csum_offload();
    c.shard = ShardId {
        index: u16::try_from(k).unwrap_or(0),
        count: u16::try_from(n).unwrap_or(1),
    };
    c
}

/// The shards' sockets: `first` and `want - 1` more on `iface`, all
/// joined to one fanout group (its id returned) in shard order with the
/// steering program. One socket when `want` is 1 or the fanout cannot be
/// set up (warned; the extra sockets are closed).
pub(super) fn open_shards(
    first: AfPacket,
    iface: &str,
    opts: &AfPacketOptions,
    want: usize,
) -> (Vec<AfPacket>, Option<u16>) {
    let mut devs = vec![first];
    if want <= 1 {
        return (devs, None);
    }
    // one group per process (the id is per network namespace and interface)
    let group = (std::process::id() & 0xffff) as u16;
    let prog = steer::program(&SteerConfig {
        shards: u16::try_from(want).unwrap_or(1),
        ephemeral: EPHEMERAL,
    });
    let joined = (|| -> Result<(), String> {
        for _ in 1..want {
            devs.push(AfPacket::open_with(iface, opts).map_err(|e| format!("open: {e}"))?);
        }
        for d in &devs {
            d.join_fanout(group, &prog)
                .map_err(|e| format!("PACKET_FANOUT: {e}"))?;
        }
        Ok(())
    })();
    match joined {
        Ok(()) => (devs, Some(group)),
        Err(e) => {
            tracing::warn!(
                want, interface = iface, error = %e,
                "stack shards: cannot set up PACKET_FANOUT; running 1 shard"
            );
            devs.truncate(1);
            (devs, None)
        }
    }
}

/// The shard's rounds until `stop` ([`driver::Driver::run_with`]: the
/// wait also ends on the wake socket, and busy-polls when configured); the
/// shard's frame counts are published after each round.
pub(super) fn run_loop(
    drv: &mut driver::Driver,
    dev: &mut AfPacket,
    stack: &mut Stack,
    stop: &AtomicBool,
    app: &mut App,
) -> io::Result<()> {
    let stats = app.shard.stats().cloned();
    // the kernel's drop counter is read (and reset) by a syscall: once a second
    let mut next_kernel_stats = std::time::Instant::now();
    drv.run_with(
        dev,
        stack,
        stop,
        &mut |s: &mut Stack, now: Instant| app.step(s, now),
        &mut |d, dev: &mut AfPacket| {
            if let Some(x) = &stats {
                x.rx_frames.store(d.rx_frames, Ordering::Relaxed);
                x.tx_frames.store(d.tx_frames, Ordering::Relaxed);
                let t = std::time::Instant::now();
                if t >= next_kernel_stats {
                    next_kernel_stats = t + std::time::Duration::from_secs(1);
                    if let Err(e) = dev.update_kernel_stats() {
                        tracing::debug!("PACKET_STATISTICS: {e}");
                    }
                    let ds = dev.stats();
                    x.kernel_drops.store(ds.kernel_drops, Ordering::Relaxed);
                    x.rx_blocks.store(ds.rx_blocks, Ordering::Relaxed);
                }
            }
        },
    )
}

impl App {
    /// The mailbox: sends handed over by other shards, replicas of their
    /// ARP / NDP / ICMP-error frames (at most [`MAIL_BATCH`] a round).
    pub(super) fn mail(&mut self, s: &mut Stack, now: Instant) {
        // (the resolver wakes a single shard too)
        if !self.shard.inbox.take_wake() || self.shard.peers().len() <= 1 {
            return;
        }
        for _ in 0..MAIL_BATCH {
            let Ok(m) = self.shard.inbox.rx.try_recv() else {
                return;
            };
            match m {
                Mail::Send { dest, out } => {
                    if let Some(x) = self.shard.stats() {
                        x.handoffs.fetch_add(1, Ordering::Relaxed);
                    }
                    let super::egress::StepParts { mut eg, .. } = self.split(s, now);
                    if eg.send_tcp(&dest, &out) != SendResult::Sent {
                        tracing::debug!(dest = %dest.addr, conn = ?dest.conn, "handed-over send failed");
                        self.metrics.dropped(DropReason::SendFailed);
                    }
                }
                Mail::Replica { meta, frame } => {
                    if let Some(x) = self.shard.stats() {
                        x.replicas.fetch_add(1, Ordering::Relaxed);
                    }
                    s.receive_replica(now, meta, &frame);
                }
            }
        }
        // more waiting: come back at once
        if let Some(p) = self.shard.peers().get(self.shard.index()) {
            p.wake();
        }
    }

    /// Copies of the ARP / NDP / ICMP-error frames this shard processed,
    /// to every other shard (their neighbour tables and path state learn).
    pub(super) fn replicate(&mut self, s: &mut Stack) {
        let (me, peers) = (self.shard.index(), self.shard.peers());
        if peers.len() <= 1 {
            return;
        }
        while let Some((meta, frame)) = s.pop_replica() {
            for (i, p) in peers.iter().enumerate() {
                if i != me {
                    p.post(Mail::Replica {
                        meta,
                        frame: frame.clone(),
                    });
                }
            }
            s.recycle(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    fn dest(conn: Option<ConnId>) -> Dest {
        Dest {
            addr: "198.18.0.1:5060".parse().unwrap(),
            transport: Transport::Tcp,
            local: 0,
            conn,
        }
    }

    /// A send for a connection another shard owns goes to that shard's
    /// mailbox (and wakes it); the owner's own sends stay local; a full
    /// mailbox fails the send and is counted.
    #[test]
    fn handoff_posts_sends_for_another_shards_connection_to_its_mailbox() {
        let (peers, inboxes) = mailboxes(2).unwrap();
        let on1 = Shard::new(
            1,
            peers.clone(),
            Arc::from(Vec::new()),
            Inbox {
                rx: mpsc::sync_channel(1).1,
                wake: UnixStream::pair().unwrap().0,
                woken: Arc::default(),
            },
        )
        .handoff();
        // id 4 = seq 2 of shard 0 (ids seq·2 + k)
        assert_eq!(on1.forward(5, &dest(Some(5)), b"x"), None, "own connection");
        assert_eq!(
            on1.forward(4, &dest(Some(4)), b"SIP/2.0 200 OK\r\n"),
            Some(SendResult::Sent)
        );
        assert!(inboxes[0].take_wake(), "woken");
        assert!(!inboxes[0].take_wake(), "one wake-up, consumed");
        assert!(!inboxes[1].take_wake());
        match inboxes[0].rx.try_recv() {
            Ok(Mail::Send { dest: d, out }) => {
                assert_eq!(d.conn, Some(4));
                assert_eq!(out, b"SIP/2.0 200 OK\r\n");
            }
            _ => panic!("no send in shard 0's mailbox"),
        }
        assert!(inboxes[1].rx.try_recv().is_err());
        // fill shard 0's mailbox: the next send fails, counted; one wake
        // byte for all of them
        for _ in 0..MAILBOX {
            assert_eq!(on1.forward(4, &dest(Some(4)), b"y"), Some(SendResult::Sent));
        }
        let mut buf = [0u8; 64];
        assert_eq!((&inboxes[0].wake).read(&mut buf).unwrap(), 1);
        inboxes[0].woken.store(false, Ordering::Release);
        assert_eq!(
            on1.forward(4, &dest(Some(4)), b"y"),
            Some(SendResult::Failed)
        );
        assert_eq!(peers[0].stats().mailbox_full.load(Ordering::Relaxed), 1);
        // one shard: never forwarded
        assert_eq!(Handoff::single().forward(4, &dest(Some(4)), b"x"), None);
    }

    /// A send by address that misses this shard's table goes to the shard
    /// the address steers to when that shard holds a connection to it.
    #[test]
    fn send_by_address_reuses_the_connection_another_shard_holds() {
        use std::net::{IpAddr, SocketAddr};
        let lim = TableLimits {
            max_connections: 10,
            max_per_ip: 10,
            write_queue_bytes: 1000,
        };
        let tables: Arc<[Arc<ConnTable<StackIo>>]> = (0..2)
            .map(|k| Arc::new(ConnTable::for_shard(lim, k, 2)))
            .collect::<Vec<_>>()
            .into();
        // a client address steered to shard 0
        let client: IpAddr = (1..=255u8)
            .map(|h| IpAddr::from([198, 18, 0, h]))
            .find(|ip| steer::shard_of_addr(*ip, 2) == 0)
            .unwrap();
        let peer = SocketAddr::new(client, 5070);
        tables[0].admit(peer, 0).unwrap();
        let (peers, inboxes) = mailboxes(2).unwrap();
        let inbox = || Inbox {
            rx: mpsc::sync_channel(1).1,
            wake: UnixStream::pair().unwrap().0,
            woken: Arc::default(),
        };
        let on1 = Shard::new(1, peers.clone(), tables.clone(), inbox()).handoff();
        let mut d = dest(None);
        d.addr = peer;
        assert_eq!(on1.forward_by_addr(&d, b"BYE"), Some(SendResult::Sent));
        assert!(matches!(
            inboxes[0].rx.try_recv(),
            Ok(Mail::Send { dest: x, .. }) if x.addr == peer && x.conn.is_none()
        ));
        // no connection there, or the own shard: open one here
        d.addr = SocketAddr::new(client, 5071);
        assert_eq!(on1.forward_by_addr(&d, b"BYE"), None);
        // an outbound connection of shard 0 to that address: not shared
        tables[0].get_or_create_outbound(d.addr, 0).unwrap();
        assert_eq!(on1.forward_by_addr(&d, b"BYE"), None);
        let on0 = Shard::new(0, peers, tables, inbox()).handoff();
        d.addr = peer;
        assert_eq!(on0.forward_by_addr(&d, b"BYE"), None);
    }

    #[test]
    fn table_limits_split_max_connections_and_keep_per_ip() {
        let l = TableLimits {
            max_connections: 1001,
            max_per_ip: 7,
            write_queue_bytes: 99,
        };
        let s = split_limits(l, 2);
        assert_eq!(
            (s.max_connections, s.max_per_ip, s.write_queue_bytes),
            (501, 7, 99)
        );
        assert_eq!(split_limits(l, 1).max_connections, 1001);
        assert_eq!(split_limits(l, 0).max_connections, 1001);
    }
}
