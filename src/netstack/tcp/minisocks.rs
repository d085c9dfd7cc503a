//! TIME_WAIT buckets (Linux `inet_timewait_sock`, `tcp_minisocks.c`):
//! what a closed connection must remember for 2·MSL, in ~100 bytes instead
//! of a TCB, bounded by `tcp_max_tw_buckets`; and `tcp_timewait_state_process`
//! with Linux's reuse of a TIME_WAIT 4-tuple for a new SYN.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Seq, TcpState, TimerKey, Tuple, seq_add, seq_diff};
use crate::netstack::{Duration, Instant, Mib, Stack};

/// PAWS: a `ts_recent` older than this is no longer trusted (RFC 7323
/// §5.5, Linux `TCP_PAWS_24DAYS`).
pub(crate) const PAWS_24DAYS: Duration = Duration::from_secs(24 * 24 * 3600);
/// An RST may pass PAWS when `ts_recent` is older than this (Linux
/// `TCP_PAWS_MSL`, 60 s).
pub(crate) const PAWS_MSL: Duration = Duration::from_secs(60);

/// RFC 7323 §5.3 / Linux `tcp_paws_reject`: is a segment with timestamp
/// `tsval` an old duplicate? (`TCP_PAWS_WINDOW` 1 tick of tolerance.)
pub(crate) fn paws_reject(
    ts_recent: u32,
    ts_recent_at: Instant,
    tsval: u32,
    now: Instant,
    rst: bool,
) -> bool {
    if (ts_recent.wrapping_sub(tsval) as i32) <= 1 {
        return false;
    }
    if now >= ts_recent_at + PAWS_24DAYS {
        return false;
    }
    if rst && now >= ts_recent_at + PAWS_MSL {
        return false;
    }
    true
}

/// One TIME_WAIT connection.
#[derive(Debug, Clone)]
pub(crate) struct TwBucket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub snd_nxt: Seq,
    pub rcv_nxt: Seq,
    /// Window field to put in our ACKs (already scaled down).
    pub rcv_wnd_field: u16,
    pub ts_ok: bool,
    pub ts_recent: u32,
    pub ts_recent_at: Instant,
    pub ts_off: u32,
    pub expire: Instant,
}

/// The TIME_WAIT buckets: a slab with a 4-tuple index.
#[derive(Default)]
pub(crate) struct TwTable {
    slots: Vec<Option<TwBucket>>,
    free: Vec<u32>,
    map: HashMap<Tuple, u32>,
}

impl TwTable {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[inline]
    pub fn lookup(&self, t: &Tuple) -> Option<u32> {
        self.map.get(t).copied()
    }

    pub fn get(&self, i: u32) -> Option<&TwBucket> {
        self.slots.get(i as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, i: u32) -> Option<&mut TwBucket> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    fn insert(&mut self, b: TwBucket) -> u32 {
        let key = (b.local, b.remote);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(b);
                i
            }
            None => {
                self.slots.push(Some(b));
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(key, i);
        i
    }

    fn remove(&mut self, i: u32) -> Option<TwBucket> {
        let b = self.slots.get_mut(i as usize)?.take()?;
        self.map.remove(&(b.local, b.remote));
        self.free.push(i);
        Some(b)
    }
}

/// What `tcp_timewait_state_process` decided (Linux `enum tcp_tw_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TwStatus {
    /// Nothing to send.
    Success,
    /// Send an ACK from the bucket.
    Ack,
    /// A new SYN may reuse the 4-tuple: hand it to the listener with this
    /// ISN (the bucket is gone).
    Syn(Seq),
}

/// The parts of an arriving segment TIME_WAIT looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TwSeg {
    pub seq: Seq,
    /// seq + SYN + data + FIN.
    pub end_seq: Seq,
    pub syn: bool,
    pub rst: bool,
    pub ack: bool,
    pub tsval: Option<u32>,
}

impl Stack {
    /// Linux `tcp_time_wait`: move a connection that reached TIME_WAIT into
    /// a bucket (or, when `tcp_max_tw_buckets` are in use, just close it:
    /// TCPTimeWaitOverflow), and finish the TCB (`tcp_done`).
    pub(crate) fn tcp_time_wait(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get(slot) else {
            return;
        };
        if self.tcp.tw.len() >= self.tcp.lim.max_tw {
            self.counters.inc(Mib::TcpExtTCPTimeWaitOverflow);
        } else {
            let wnd = (t.rcvbuf.window() as u32 >> t.rcv_wscale).min(65535) as u16;
            let b = TwBucket {
                local: t.local,
                remote: t.remote,
                snd_nxt: t.snd_nxt,
                rcv_nxt: t.rcv_nxt,
                rcv_wnd_field: wnd,
                ts_ok: t.ts_ok,
                ts_recent: t.ts_recent,
                ts_recent_at: t.ts_recent_at,
                ts_off: t.ts_off,
                expire: now + self.tcp.lim.time_wait,
            };
            let (local, expire) = (b.local, b.expire);
            let i = self.tcp.tw.insert(b);
            self.tcp.port_ref(local);
            self.tcp.wheel.schedule(TimerKey::Tw(i), expire);
        }
        self.tcp_set_state(slot, TcpState::TimeWait);
        self.tcp_done(slot, None);
    }

    /// Drop a TIME_WAIT bucket.
    pub(crate) fn tcp_tw_kill(&mut self, i: u32) {
        if let Some(b) = self.tcp.tw.remove(i) {
            self.tcp.port_unref(b.local);
            self.tcp.wheel.cancel(TimerKey::Tw(i));
        }
    }

    /// The TIME_WAIT timer: the bucket expires (TcpExt TW).
    pub(crate) fn tcp_tw_timer(&mut self, now: Instant, i: u32) {
        let Some(b) = self.tcp.tw.get(i) else {
            return;
        };
        if b.expire > now {
            let at = b.expire;
            self.tcp.wheel.schedule(TimerKey::Tw(i), at);
            return;
        }
        self.counters.inc(Mib::TcpExtTW);
        self.tcp_tw_kill(i);
    }

    /// Linux `tcp_timewait_state_process` (TIME_WAIT substate; RFC 9293
    /// §3.10.7.4 for TIME_WAIT, RFC 7323 PAWS, RFC 6191-style reuse):
    /// - an in-window bare ACK or RST at exactly RCV.NXT: an RST kills the
    ///   bucket (Linux default `tcp_rfc1337 = 0`), an ACK restarts 2·MSL;
    /// - a SYN (no ACK) with a sequence above RCV.NXT, or a newer timestamp,
    ///   reuses the 4-tuple when a listener takes it: ISN = our SND.NXT +
    ///   65537;
    /// - anything else (FIN retransmission, old duplicates, PAWS failures)
    ///   is answered with an ACK, the timer restarted when it had ACK or
    ///   failed PAWS; an out-of-window RST is ignored.
    pub(crate) fn tcp_timewait_state_process(
        &mut self,
        now: Instant,
        i: u32,
        seg: &TwSeg,
        listener: bool,
    ) -> TwStatus {
        let tw_len = self.tcp.lim.time_wait;
        let Some(b) = self.tcp.tw.get_mut(i) else {
            return TwStatus::Success;
        };
        let paws = match (b.ts_ok, seg.tsval) {
            (true, Some(v)) => paws_reject(b.ts_recent, b.ts_recent_at, v, now, seg.rst),
            _ => false,
        };
        if !paws && seg.seq == b.rcv_nxt && (seg.seq == seg.end_seq || seg.rst) {
            if seg.rst {
                self.tcp_tw_kill(i);
                return TwStatus::Success;
            }
            b.expire = now + tw_len;
            if let (true, Some(v)) = (b.ts_ok, seg.tsval) {
                b.ts_recent = v;
                b.ts_recent_at = now;
            }
            let at = b.expire;
            self.tcp.wheel.schedule(TimerKey::Tw(i), at);
            return TwStatus::Success;
        }
        if seg.syn
            && listener
            && !seg.rst
            && !seg.ack
            && !paws
            && (seq_diff(seg.seq, b.rcv_nxt) > 0
                || matches!(seg.tsval, Some(v) if b.ts_ok && (b.ts_recent.wrapping_sub(v) as i32) < 0))
        {
            let mut isn = seq_add(b.snd_nxt, 65535 + 2);
            if isn.0 == 0 {
                isn = seq_add(isn, 1);
            }
            self.tcp_tw_kill(i);
            return TwStatus::Syn(isn);
        }
        if paws {
            self.counters.inc(Mib::TcpExtPAWSEstabRejected);
        }
        if !seg.rst {
            if paws || seg.ack {
                b.expire = now + tw_len;
                let at = b.expire;
                self.tcp.wheel.schedule(TimerKey::Tw(i), at);
            }
            return TwStatus::Ack;
        }
        TwStatus::Success
    }
}
