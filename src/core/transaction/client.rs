//! The client side (RFC 3261 §17.1, §16.6–16.10): creating the transaction
//! for a routed request, Timers A–F and C, the answers of the upstream, the
//! locally generated ACK of a non-2xx final (§17.1.1.3), the CANCEL (§9.1,
//! §16.10) and failover to the next target of the set.

use super::{
    Cli, KEY_MASK, MAX_SLOTS, MAX_TRIES, Out, Retx, SLOT_BITS, Signal, Slot, Srv, TargetId, Tmo,
    TxnRef, TxnTable, Upstreams, build_hop_request, decode_branch, find_branch, server_key,
    source_dest, write_branch,
};
use crate::config::Transport;
use crate::core::proxy::{Dest, RcvInfo, SendKind};
use crate::sip::msg::{HeaderKind, SipMsg, Span, StartLine, parse_cseq, parse_via};

impl TxnTable {
    /// Create the transaction for a request the core routed (`fwd`: the
    /// forwarded bytes with our stateless Via on top) and send it to `dest`
    /// (an INVITE also gets its 100 Trying, §16.2: at once, or after
    /// `trying_delay_ms` if no answer was forwarded by then). `target`: the upstream it
    /// was picked from (failover is possible only then). `None` when the
    /// table is full or `fwd` carries no Via of ours: forward statelessly.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        now: u64,
        fwd: &[u8],
        branch_hash: u64,
        caller: Dest,
        target: Option<TargetId>,
        dest: Dest,
        out: &mut Out,
    ) -> Option<TxnRef> {
        let (at, invite, key) = {
            let (at, method) = match our_via_branch(fwd) {
                Some(v) => v,
                None => {
                    let m = TxnTable::parse_request(fwd, &mut self.hdrs)?;
                    (find_branch(&m)?, m.method())
                }
            };
            if method == b"ACK" || method == b"CANCEL" {
                return None;
            }
            (at, method == b"INVITE", server_key(branch_hash, method))
        };
        if self.map.contains_key(&key) {
            return None;
        }
        let i = self.alloc(key)?;
        self.stats.created += 1;
        let (t1, tb, trying) = (self.cfg.t1_ms, self.cfg.timer_b(), self.cfg.trying_delay_ms);
        let s = &mut self.slots[i as usize];
        s.buf.extend_from_slice(fwd);
        s.req_len = fwd.len() as u32;
        s.sent_end = s.req_len;
        s.branch_at = at as u32;
        write_branch(
            &mut s.buf,
            at,
            key,
            self.shard << SLOT_BITS | i,
            s.generation,
            0,
        );
        s.invite = invite;
        s.caller = caller;
        s.up = dest;
        s.srv = Srv::Proceeding;
        s.cli = Cli::Calling;
        if let Some(t) = target {
            s.from_set = true;
            s.tried[0] = t;
            s.ntried = 1;
        }
        Self::start_try(s, now, t1, tb);
        if invite {
            // §17.2.1: the 100 Trying may be left out when the TU answers
            // within 200 ms: it is sent from the timer if nothing was by then
            if trying == 0 {
                self.send_trying(i, out);
            } else {
                self.slots[i as usize].trying_at = now + trying;
            }
        }
        let s = &mut self.slots[i as usize];
        let r = s.txn_ref(self.shard << SLOT_BITS | i);
        out.push(s.up, s.request(), SendKind::Request, Some(r));
        self.arm(i);
        Some(r)
    }

    /// Timers of a new try: A / E on UDP, B / F always.
    fn start_try(s: &mut Slot, now: u64, t1: u64, tb: u64) {
        s.cli = Cli::Calling;
        if s.up.transport == Transport::Udp {
            s.retx = Retx::Request;
            s.retx_iv = t1;
            s.retx_at = now + t1;
        } else {
            s.retx = Retx::None;
        }
        s.tmo = Tmo::Final;
        s.tmo_at = now + tb;
    }

    /// A reply from an upstream. `false`: not one of our transactions (the
    /// caller routes it statelessly, e.g. a 2xx retransmission after the
    /// transaction ended).
    pub fn on_reply(
        &mut self,
        now: u64,
        msg: &SipMsg<'_>,
        rcv: &RcvInfo,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) -> bool {
        let Some(vh) = msg.first(HeaderKind::Via) else {
            return false;
        };
        let Ok(via) = parse_via(msg.buf, vh.value) else {
            return false;
        };
        self.on_reply_via(now, msg, &via, vh.value, rcv, out, up)
    }

    /// [`TxnTable::on_reply`] with the top Via already parsed (`via_value`:
    /// its value's span).
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply_via(
        &mut self,
        now: u64,
        msg: &SipMsg<'_>,
        via: &crate::sip::msg::Via,
        via_value: Span,
        rcv: &RcvInfo,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) -> bool {
        let StartLine::Response { code, .. } = msg.start else {
            return false;
        };
        let Some((k32, field, generation, attempt)) =
            via.branch.and_then(|b| decode_branch(b.get(msg.buf)))
        else {
            return false;
        };
        if field >> SLOT_BITS != self.shard {
            return false;
        }
        let i = field & MAX_SLOTS;
        let Some(s) = self.slots.get(i as usize) else {
            return false;
        };
        if s.key == 0 || s.generation != generation || (s.key & KEY_MASK) as u32 != k32 {
            return false;
        }
        let cseq_method = msg
            .first(HeaderKind::CSeq)
            .and_then(|h| parse_cseq(msg.value(h)))
            .map_or(&b""[..], |c| c.1);
        // §17.1.3: the answer to our CANCEL ends its retransmissions
        if cseq_method == b"CANCEL" {
            let s = &mut self.slots[i as usize];
            if s.retx == Retx::Cancel && code >= 200 {
                s.retx = Retx::None;
            }
            return true;
        }
        if (cseq_method == b"INVITE") != s.invite {
            return true; // another method on our branch: not ours to forward
        }
        // a late or retransmitted answer (earlier try, or after the final)
        if attempt != s.attempt || s.cli == Cli::Done {
            if (200..300).contains(&code) && s.invite {
                // every 2xx goes to the caller (§16.7 step 5)
                strip_and_send(msg, via, via_value, s.caller, out);
                if attempt == s.attempt && s.srv == Srv::Proceeding {
                    let s = &mut self.slots[i as usize];
                    s.cli = Cli::Done;
                    self.accept_server(now, i);
                }
            } else if code >= 300 && s.invite && attempt <= s.attempt {
                // §17.1.1.2: a retransmitted final is ACKed again
                self.send_ack(i, msg, Some(attempt), source_dest(rcv), out);
            }
            return true;
        }
        match code {
            100..=199 => self.provisional(now, i, msg, via, via_value, code, out),
            200..=299 => {
                let s = &mut self.slots[i as usize];
                s.cli = Cli::Done;
                if s.from_set {
                    up.success(s.tried[s.ntried as usize - 1], now);
                }
                let start = out.buf.len();
                strip_and_send(msg, via, via_value, s.caller, out);
                if out.buf.len() > start {
                    // an accepted single-try INVITE drops its buffer (RFC
                    // 6026: nothing is resent from it): no copy to keep
                    if !(s.invite && s.attempt == 0) {
                        s.set_sent(&out.buf[start..]);
                    }
                    s.sent_code = code;
                }
                self.accept_server(now, i);
            }
            _ => self.final_failure(now, i, msg, via, via_value, code, out, up),
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn provisional(
        &mut self,
        now: u64,
        i: u32,
        msg: &SipMsg<'_>,
        via: &crate::sip::msg::Via,
        via_value: Span,
        code: u16,
        out: &mut Out,
    ) {
        let (t2, tc) = (self.cfg.t2_ms, self.cfg.timer_c_ms);
        let s = &mut self.slots[i as usize];
        let first = s.cli == Cli::Calling;
        s.cli = Cli::Proceeding;
        if s.invite {
            // §17.1.1.2: Proceeding stops Timer A; B no longer applies, C does
            if s.retx == Retx::Request {
                s.retx = Retx::None;
            }
            if first {
                s.tmo = Tmo::C;
            }
            s.tmo_at = now + tc;
        } else if s.retx == Retx::Request {
            // §17.1.2.2: Timer E continues at T2
            s.retx_iv = t2;
            s.retx_at = s.retx_at.min(now + t2);
        }
        // §16.7 step 5: 100 is not forwarded
        if code > 100 && s.srv == Srv::Proceeding {
            let start = out.buf.len();
            strip_and_send(msg, via, via_value, s.caller, out);
            if out.buf.len() > start {
                s.set_sent(&out.buf[start..]);
                s.sent_code = code;
            }
        }
        if s.cancelled && !s.cancel_sent {
            self.start_cancel(now, i, out);
        }
        self.arm(i);
    }

    /// A final 3xx–6xx on the current try: ACK it (INVITE), then fail over
    /// (a failover code, tries left) or send the best answer.
    #[allow(clippy::too_many_arguments)]
    fn final_failure(
        &mut self,
        now: u64,
        i: u32,
        msg: &SipMsg<'_>,
        via: &crate::sip::msg::Via,
        via_value: Span,
        code: u16,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) {
        let (d_wait, t4) = (self.cfg.timer_d(), self.cfg.wait_t4());
        let failover_code = self.cfg.failover_codes.contains(&code);
        let s = &mut self.slots[i as usize];
        s.cli = Cli::Done;
        if s.retx == Retx::Request {
            s.retx = Retx::None;
        }
        s.tmo = Tmo::None;
        let udp = s.up.transport == Transport::Udp;
        // Timer D (INVITE: ≥ 32 s on UDP) / K (non-INVITE: T4 on UDP): the
        // slot stays to absorb retransmissions of this final
        let d = match (s.invite, udp) {
            (true, true) => d_wait,
            (false, true) => t4,
            _ => 0,
        };
        s.end_at = s.end_at.max(now + d).max(1);
        if s.invite {
            let dest = s.up;
            self.send_ack(i, msg, None, dest, out);
        }
        let s = &mut self.slots[i as usize];
        if s.from_set {
            let t = s.tried[s.ntried as usize - 1];
            if failover_code {
                up.failure(t, Signal::Reply(code), now);
            } else {
                up.success(t, now);
            }
        }
        // keep it if it is the best so far (§16.7 step 6)
        if super::better(code, s.best_code) {
            s.best_code = code;
            s.best_local = false;
            let start = out.buf.len();
            strip_into(msg, via, via_value, &mut out.buf);
            s.set_best(&out.buf[start..]);
            out.buf.truncate(start);
        }
        if failover_code && self.failover(now, i, out, up) {
            return;
        }
        self.send_best(now, i, out);
    }

    /// Send the request to the next target of the set; `false` when there
    /// is none (cancelled, not from a set, tries used up, set exhausted).
    fn failover(&mut self, now: u64, i: u32, out: &mut Out, up: &mut dyn Upstreams) -> bool {
        let max = self.cfg.max_tries as usize;
        let (t1, tb) = (self.cfg.t1_ms, self.cfg.timer_b());
        let s = &mut self.slots[i as usize];
        if s.cancelled || !s.from_set || s.ntried as usize >= max.min(MAX_TRIES) {
            return false;
        }
        let picked = {
            let req = &s.buf[..s.req_len as usize];
            let Some(m) = TxnTable::parse_request(req, &mut self.hdrs) else {
                return false;
            };
            let cid = m.first(HeaderKind::CallId).map_or(&b""[..], |h| m.value(h));
            up.pick(cid, &s.tried[..s.ntried as usize], &s.up)
        };
        let Some((t, dest)) = picked else {
            return false;
        };
        // our Via names the first try's transport and address family
        if dest.transport != s.up.transport || dest.addr.is_ipv4() != s.up.addr.is_ipv4() {
            return false;
        }
        s.tried[s.ntried as usize] = t;
        s.ntried += 1;
        s.attempt += 1;
        let (key, generation, attempt, at) = (s.key, s.generation, s.attempt, s.branch_at as usize);
        write_branch(
            &mut s.buf,
            at,
            key,
            self.shard << SLOT_BITS | i,
            generation,
            attempt,
        );
        s.up = dest;
        Self::start_try(s, now, t1, tb);
        let r = s.txn_ref(self.shard << SLOT_BITS | i);
        out.push(s.up, s.request(), SendKind::Request, Some(r));
        self.stats.failovers += 1;
        self.arm(i);
        true
    }

    /// Timer B / F (no final answer) or C (§16.8): the try failed as if a
    /// 408 had come; fail over or send the best answer.
    pub(super) fn client_timeout(
        &mut self,
        now: u64,
        i: u32,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) {
        self.stats.timeouts += 1;
        let s = &mut self.slots[i as usize];
        let was_c = s.tmo == Tmo::C;
        s.tmo = Tmo::None;
        if s.retx == Retx::Request {
            s.retx = Retx::None;
        }
        s.cli = Cli::Done;
        if s.from_set {
            up.failure(
                s.tried[s.ntried as usize - 1],
                Signal::TransactionTimeout,
                now,
            );
        }
        if super::better(408, s.best_code) {
            s.best_code = 408;
            s.best_local = true;
            s.set_best(&[]);
        }
        if was_c {
            // a provisional came: the branch is cancelled, not failed over
            if !s.cancel_sent {
                self.start_cancel(now, i, out);
            }
        } else if self.failover(now, i, out, up) {
            return;
        }
        self.send_best(now, i, out);
    }

    /// A transport error sending try `r` (connection refused / reset, no
    /// route): fail over at once, or answer with the best answer (408).
    pub fn transport_error(&mut self, now: u64, r: TxnRef, out: &mut Out, up: &mut dyn Upstreams) {
        if r.slot >> SLOT_BITS != self.shard {
            return;
        }
        let i = r.slot & MAX_SLOTS;
        let Some(s) = self.slots.get_mut(i as usize) else {
            return;
        };
        if s.key == 0
            || s.generation != r.generation
            || s.attempt != r.attempt
            || s.cli == Cli::Done
        {
            return;
        }
        self.fail_try(now, i, Some(Signal::SendFailed), out, up);
    }

    /// A transport error on the way to `addr` over `transport` (a refused or
    /// failed TCP connect, a RST): every transaction whose current try went
    /// there and has no final answer fails over at once (or answers with
    /// its best answer), instead of waiting for Timer B / F. The transport
    /// already reported the target's failure to the upstream sets.
    /// Returns the number of tries failed.
    pub fn transport_failed(
        &mut self,
        now: u64,
        addr: std::net::SocketAddr,
        transport: Transport,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) -> usize {
        let mut n = 0;
        // each slot is visited once: a failover to the same address waits
        // for the next error
        for i in 0..self.slots.len() as u32 {
            let s = &self.slots[i as usize];
            if s.key != 0 && s.cli != Cli::Done && s.up.addr == addr && s.up.transport == transport
            {
                self.fail_try(now, i, None, out, up);
                n += 1;
            }
        }
        n
    }

    /// The current try failed for a transport reason: fail over or send the
    /// best answer (a 408 when none came).
    fn fail_try(
        &mut self,
        now: u64,
        i: u32,
        report: Option<Signal>,
        out: &mut Out,
        up: &mut dyn Upstreams,
    ) {
        let s = &mut self.slots[i as usize];
        s.cli = Cli::Done;
        s.tmo = Tmo::None;
        if s.retx == Retx::Request {
            s.retx = Retx::None;
        }
        if s.from_set
            && let Some(sig) = report
        {
            up.failure(s.tried[s.ntried as usize - 1], sig, now);
        }
        if super::better(408, s.best_code) {
            s.best_code = 408;
            s.best_local = true;
            s.set_best(&[]);
        }
        if !self.failover(now, i, out, up) {
            self.send_best(now, i, out);
        }
        self.arm(i);
    }

    /// Send the CANCEL for the current try (§9.1) and retransmit it on UDP.
    pub(super) fn start_cancel(&mut self, now: u64, i: u32, out: &mut Out) {
        let t1 = self.cfg.t1_ms;
        self.send_cancel(i, out);
        let s = &mut self.slots[i as usize];
        s.cancel_sent = true;
        if s.up.transport == Transport::Udp && s.retx == Retx::None {
            s.retx = Retx::Cancel;
            s.retx_iv = t1;
            s.retx_at = now + t1;
            s.retx_until = now + 64 * t1;
        }
        self.arm(i);
    }

    pub(super) fn send_cancel(&mut self, i: u32, out: &mut Out) {
        let s = &self.slots[i as usize];
        let req = &s.buf[..s.req_len as usize];
        let Some(m) = TxnTable::parse_request(req, &mut self.hdrs) else {
            return;
        };
        let start = out.buf.len();
        build_hop_request(&m, b"CANCEL", None, None, &mut out.buf);
        let r = s.txn_ref(self.shard << SLOT_BITS | i);
        out.push_built(start, s.up, SendKind::Request, Some(r));
    }

    /// §17.1.1.3: the ACK of a non-2xx final, built from the request and the
    /// answer's To (its tag); `attempt`: an earlier try's branch.
    fn send_ack(
        &mut self,
        i: u32,
        resp: &SipMsg<'_>,
        attempt: Option<u8>,
        dest: Dest,
        out: &mut Out,
    ) {
        let s = &self.slots[i as usize];
        let req = &s.buf[..s.req_len as usize];
        let Some(m) = TxnTable::parse_request(req, &mut self.hdrs) else {
            return;
        };
        let to = resp.first(HeaderKind::To).map(|h| resp.value(h));
        let digit = attempt.map(|a| {
            (
                s.branch_at as usize + super::BRANCH_PREFIX.len() + 15,
                super::HEX[(a & 0xf) as usize],
            )
        });
        let start = out.buf.len();
        build_hop_request(&m, b"ACK", to, digit, &mut out.buf);
        out.push_built(start, dest, SendKind::Request, None);
    }
}

/// Where the core's stateless branch (prefix + 16 hex digits) of its own
/// Via starts in a forwarded request, and the method, without parsing the
/// whole message: the core inserts its Via (and Record-Route) right after
/// the request line, so the first `;branch=z9hG4bKsE` after it, on a Via
/// line among the first header lines, is ours. `None`: not found that way
/// (the caller then parses the request).
fn our_via_branch(fwd: &[u8]) -> Option<(usize, &[u8])> {
    const PAT: &[u8] = b";branch=";
    let sp = memchr::memchr(b' ', fwd)?;
    let sl_end = memchr::memchr(b'\n', fwd)? + 1;
    // our lines come first: Record-Route (at most two) and Via
    let window = &fwd[sl_end..fwd.len().min(sl_end + 1024)];
    let hit = memchr::memmem::find(window, b";branch=z9hG4bKsE")?;
    let line_start = memchr::memrchr(b'\n', &window[..hit]).map_or(0, |n| n + 1);
    let line = &window[line_start..hit];
    let is_via = line.len() > 4
        && (line[..4].eq_ignore_ascii_case(b"Via:") || line[..2].eq_ignore_ascii_case(b"v:"));
    if !is_via {
        return None;
    }
    let at = sl_end + hit + PAT.len();
    let digits =
        fwd.get(at + super::STATELESS_PREFIX.len()..at + super::STATELESS_PREFIX.len() + 16)?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some((at, &fwd[..sp]))
}

/// The answer without our top via-parm (§16.7 step 3).
fn strip_into(msg: &SipMsg<'_>, via: &crate::sip::msg::Via, value: Span, out: &mut Vec<u8>) {
    let buf = msg.buf;
    let (a, b) = match via.next {
        Some(n) => (value.start as usize, n as usize),
        None => {
            let h = msg
                .first(HeaderKind::Via)
                .map_or(Span::default(), |h| h.line);
            (h.start as usize, h.end as usize)
        }
    };
    out.extend_from_slice(&buf[..a]);
    out.extend_from_slice(&buf[b..]);
}

fn strip_and_send(
    msg: &SipMsg<'_>,
    via: &crate::sip::msg::Via,
    value: Span,
    dest: Dest,
    out: &mut Out,
) {
    let start = out.buf.len();
    strip_into(msg, via, value, &mut out.buf);
    out.push_built(start, dest, SendKind::Reply, None);
}

#[cfg(test)]
mod fast_branch_tests {
    use super::{TxnTable, find_branch, our_via_branch};

    fn slow(fwd: &[u8]) -> Option<usize> {
        let mut h = Vec::new();
        let m = TxnTable::parse_request(fwd, &mut h)?;
        find_branch(&m)
    }

    #[test]
    fn our_via_branch_agrees_with_the_parser() {
        let msgs: [&[u8]; 3] = [
            b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\n\
              Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKsE1111111111111111\r\nCall-ID: c\r\n\
              From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            b"INVITE sip:b@x SIP/2.0\r\nRecord-Route: <sip:10.0.0.1;lr>\r\n\
              v: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKsEfedcba9876543210;i=7\r\n\
              Via: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\nCall-ID: c\r\n\
              From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            b"BYE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\n\
              Call-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCSeq: 2 BYE\r\n\
              Content-Length: 0\r\n\r\n",
        ];
        for m in msgs {
            let (at, method) = our_via_branch(m).expect("found");
            assert_eq!(Some(at), slow(m), "{}", String::from_utf8_lossy(m));
            assert_eq!(method, &m[..method.len()]);
            assert!(m[at..].starts_with(b"z9hG4bKsE"));
        }
        // a Request-URI carrying the pattern is not taken for our Via
        let tricky: &[u8] = b"INVITE sip:b@x;branch=z9hG4bKsE0000000000000000 SIP/2.0\r\n\
              Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsE0123456789abcdef\r\nCall-ID: c\r\n\
              From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(our_via_branch(tricky).map(|v| v.0), slow(tricky));
        // not on a Via line: the parser decides
        let other: &[u8] =
            b"INVITE sip:b@x SIP/2.0\r\nX-B: ;branch=z9hG4bKsE0123456789abcdef\r\n\r\n";
        assert_eq!(our_via_branch(other), None);
    }
}
