//! Per-connection timers (Linux `tcp_timer.c`): retransmission (RFC 6298,
//! with backoff and `tcp_retries2` / `tcp_syn_retries` limits → ETIMEDOUT),
//! delayed ACK, zero-window probe (persist), keep-alive, and the orphan
//! FIN_WAIT_2 timeout. Each TCB keeps its deadlines and the stack's one
//! timer wheel holds only the earliest ([`Stack::tcp_arm`]); nothing scans
//! the connections.

use super::{At, KEEPALIVE_INTVL, KEEPALIVE_PROBES, SYNACK_RETRIES, TcpError, TcpState, TimerKey};
use crate::netstack::{Duration, Instant, Mib, Stack};

impl Stack {
    /// Put the TCB's earliest deadline on the wheel (or take it off).
    pub(crate) fn tcp_arm(&mut self, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        let at = At::earliest([t.rto_at, t.delack_at, t.probe_at, t.keep_at, t.fin_at]);
        if at != t.armed {
            t.armed = at;
            match at.get() {
                Some(a) => self.tcp.wheel.schedule(TimerKey::Conn(slot), a),
                None => self.tcp.wheel.cancel(TimerKey::Conn(slot)),
            }
        }
    }

    /// Run the TCP timers that are due; the next TCP deadline.
    pub(crate) fn tcp_poll(&mut self, now: Instant) -> Option<Instant> {
        if now > self.tcp.now {
            self.tcp.now = now;
        }
        let mut keys = std::mem::take(&mut self.tcp.expired);
        keys.clear();
        self.tcp.wheel.expire(now, &mut keys);
        for k in keys.drain(..) {
            match k {
                TimerKey::Conn(slot) => {
                    if let Some(t) = self.tcp.get_mut(slot) {
                        t.armed = At::NONE;
                        self.tcp_timer(now, slot);
                    }
                }
                TimerKey::Tw(i) => self.tcp_tw_timer(now, i),
            }
        }
        self.tcp.expired = keys;
        self.tcp.wheel.next_deadline()
    }

    /// One connection's due timers.
    fn tcp_timer(&mut self, now: Instant, slot: u32) {
        let due = |x: Option<Instant>| x.is_some_and(|a| a <= now);
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if due(t.fin_at.get()) {
            t.fin_at = At::NONE;
            if t.state == TcpState::FinWait2 && t.orphan {
                // Orphaned FIN_WAIT_2 gave up waiting for the peer's FIN
                // (`tcp_fin_timeout`): dropped silently, as Linux.
                self.tcp_done(slot, None);
                return;
            }
        }
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        if due(t.rto_at.get()) {
            t.rto_at = At::NONE;
            self.tcp_retransmit_timer(now, slot);
        }
        if self.tcp.get(slot).is_some_and(|t| due(t.probe_at.get())) {
            self.tcp_probe_timer(now, slot);
        }
        if self.tcp.get(slot).is_some_and(|t| due(t.delack_at.get())) {
            self.tcp_delack_timer(now, slot);
        }
        if self.tcp.get(slot).is_some_and(|t| due(t.keep_at.get())) {
            self.tcp_keepalive_timer(now, slot);
        }
        self.tcp_arm(slot);
    }

    /// Linux `tcp_retransmit_timer` (RFC 6298 §5): back off the RTO,
    /// collapse the congestion window to one segment, resend from SND.UNA
    /// (skipping SACKed data). SYN and SYN-ACK retransmissions have their
    /// own limits; past `tcp_retries2` the connection fails with ETIMEDOUT
    /// (TCPAbortOnTimeout).
    pub(crate) fn tcp_retransmit_timer(&mut self, now: Instant, slot: u32) {
        let syn_retries = self.tcp.lim.syn_retries;
        let retries2 = self.tcp.lim.retries2;
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        match t.state {
            TcpState::SynSent | TcpState::SynReceived => {
                let limit = if t.state == TcpState::SynSent {
                    syn_retries
                } else {
                    SYNACK_RETRIES
                };
                if t.retries >= limit {
                    self.counters.inc(Mib::TcpExtTCPAbortOnTimeout);
                    self.tcp_done(slot, Some(TcpError::TimedOut));
                    return;
                }
                t.retries += 1;
                t.syn_rexmit = true;
                t.rtt.backoff();
                self.counters.inc(Mib::TcpExtTCPTimeouts);
                if t.state == TcpState::SynSent {
                    self.tcp_send_syn(now, slot);
                } else {
                    self.tcp_send_synack(now, slot);
                }
            }
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait => {}
            _ => {
                if t.snd_una == t.snd_max {
                    return;
                }
                if t.retries >= retries2 {
                    self.counters.inc(Mib::TcpExtTCPAbortOnTimeout);
                    self.tcp_done(slot, Some(TcpError::TimedOut));
                    return;
                }
                t.retries += 1;
                self.counters.inc(Mib::TcpExtTCPTimeouts);
                let flight = t.in_flight();
                t.cc.on_rto(now, flight);
                t.rtt.backoff();
                t.recover = None;
                t.dupacks = 0;
                t.set_rtt_probe(None);
                t.snd_nxt = t.snd_una;
                t.high_rxt = t.snd_una;
                t.rto_at = At::NONE;
                self.tcp_write_xmit(now, slot);
                if let Some(t) = self.tcp.get_mut(slot)
                    && t.snd_una != t.snd_max
                {
                    t.rto_at = At::from(Some(now + t.rtt.rto()));
                }
            }
        }
    }

    /// Linux `tcp_probe_timer` (RFC 9293 §3.8.6.1): while the peer's
    /// window is zero and data waits, probe it with backoff; give up after
    /// `tcp_retries2` unanswered probes.
    fn tcp_probe_timer(&mut self, now: Instant, slot: u32) {
        let retries2 = self.tcp.lim.retries2;
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        t.probe_at = At::NONE;
        let unsent = t.sndbuf.len() as u32 > t.in_flight();
        if t.snd_wnd > 0 || !unsent || t.in_flight() > 0 {
            self.tcp_write_xmit(now, slot);
            return;
        }
        if t.probes >= retries2 {
            self.counters.inc(Mib::TcpExtTCPAbortOnTimeout);
            self.tcp_done(slot, Some(TcpError::TimedOut));
            return;
        }
        t.probes += 1;
        let shift = t.probes.min(10) as u32;
        let wait = (t.rtt.rto() * (1u32 << shift)).min(Duration::from_secs(120));
        t.probe_at = At::from(Some(now + wait));
        self.tcp_xmit_probe_skb(now, slot);
    }

    /// Linux `tcp_delack_timer`: the ACK we held back goes out.
    fn tcp_delack_timer(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        t.delack_at = At::NONE;
        if t.ack_pending > 0 {
            self.counters.inc(Mib::TcpExtDelayedACKs);
            self.tcp_send_ack(now, slot);
        }
    }

    /// Linux `tcp_keepalive_timer`: after `idle` without anything from the
    /// peer, a probe every 75 s; after 9 unanswered, RST and ETIMEDOUT.
    fn tcp_keepalive_timer(&mut self, now: Instant, slot: u32) {
        let Some(t) = self.tcp.get_mut(slot) else {
            return;
        };
        t.keep_at = At::NONE;
        let Some(idle) = t.keepalive() else {
            return;
        };
        if !matches!(
            t.state,
            TcpState::Established | TcpState::CloseWait | TcpState::FinWait2
        ) {
            return;
        }
        if t.in_flight() > 0 || !t.sndbuf.is_empty() {
            // Data is outstanding: the RTO watches the peer.
            t.keep_at = At::from(Some(now + idle));
            return;
        }
        if t.probes == 0 && now < t.last_rcv + idle {
            t.keep_at = At::from(Some(t.last_rcv + idle));
            return;
        }
        if t.probes >= KEEPALIVE_PROBES {
            self.counters.inc(Mib::TcpExtTCPAbortOnTimeout);
            self.tcp_send_active_reset(now, slot);
            self.tcp_done(slot, Some(TcpError::TimedOut));
            return;
        }
        t.probes += 1;
        t.keep_at = At::from(Some(now + KEEPALIVE_INTVL));
        self.tcp_xmit_probe_skb(now, slot);
    }
}
