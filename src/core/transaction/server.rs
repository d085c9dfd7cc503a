//! The server side (RFC 3261 §17.2, RFC 6026 §7.1): matching requests to
//! transactions, absorbing retransmissions, the ACK of a non-2xx final, the
//! CANCEL (§16.10), sending the final answer (§16.7 step 6) and Timers G, H,
//! I, J, L.

use super::{Cli, Out, ReqVerdict, Retx, Srv, Tmo, TxnTable, build_reply, local_tag, server_key};
use crate::config::Transport;
use crate::core::proxy::{Dest, SendKind};
use crate::sip::msg::SipMsg;

impl TxnTable {
    /// A request from a caller. `branch_hash`: the core's hash of its
    /// branch (or RFC 2543 fields); `caller`: where answers to it go.
    pub fn on_request(
        &mut self,
        now: u64,
        msg: &SipMsg<'_>,
        branch_hash: u64,
        caller: Dest,
        out: &mut Out,
    ) -> ReqVerdict {
        let method = msg.method();
        let key = server_key(branch_hash, method);
        match method {
            b"ACK" => {
                let Some(&i) = self.map.get(&key) else {
                    return ReqVerdict::Forward;
                };
                let t4 = self.cfg.wait_t4();
                let s = &mut self.slots[i as usize];
                match s.srv {
                    // §17.2.1: the ACK of our non-2xx final: Confirmed, Timer I
                    Srv::Completed => {
                        s.srv = Srv::Confirmed;
                        if s.retx == Retx::Response {
                            s.retx = Retx::None;
                        }
                        if s.tmo == Tmo::H {
                            s.tmo = Tmo::None;
                        }
                        let timer_i = if s.caller.transport == Transport::Udp {
                            t4
                        } else {
                            0
                        };
                        s.end_at = s.end_at.max(now + timer_i).max(1);
                        self.arm(i);
                        ReqVerdict::Absorbed
                    }
                    // RFC 6026 Accepted: an ACK for the 2xx goes end to end
                    Srv::Accepted => ReqVerdict::Forward,
                    Srv::Confirmed | Srv::Proceeding => ReqVerdict::Absorbed,
                }
            }
            b"CANCEL" => {
                // §16.10: CANCEL matches the INVITE server transaction
                let ikey = server_key(branch_hash, b"INVITE");
                let Some(&i) = self.map.get(&ikey) else {
                    return ReqVerdict::Forward;
                };
                let s = out.buf.len();
                build_reply(msg, 0, 200, local_tag(ikey), None, &mut out.buf);
                out.push_built(s, caller, SendKind::LocalReply(200), None);
                let st = &mut self.slots[i as usize];
                if st.srv == Srv::Proceeding && !st.cancelled {
                    st.cancelled = true;
                    // §9.1: not before a provisional answer came on the branch
                    if st.cli == Cli::Proceeding {
                        self.start_cancel(now, i, out);
                    }
                }
                ReqVerdict::Absorbed
            }
            _ => {
                let Some(&i) = self.map.get(&key) else {
                    return ReqVerdict::New;
                };
                let s = &self.slots[i as usize];
                if s.trying_at != 0 && s.sent_code == 0 {
                    // the caller is waiting: its 100 Trying now
                    self.send_trying(i, out);
                    self.arm(i);
                    self.stats.absorbed += 1;
                    return ReqVerdict::Absorbed;
                }
                let s = &self.slots[i as usize];
                // §17.2.1 / §17.2.2: a retransmission gets the last answer again
                // (RFC 6026: absorbed without one once a 2xx went through)
                if s.sent_end > s.req_len && s.srv != Srv::Accepted {
                    out.push(s.caller, s.sent(), SendKind::Reply, None);
                }
                self.stats.absorbed += 1;
                ReqVerdict::Absorbed
            }
        }
    }

    /// The table is full: answer `503` with `Retry-After` (counted).
    pub fn reject_full(&mut self, msg: &SipMsg<'_>, branch_hash: u64, caller: Dest, out: &mut Out) {
        self.stats.cap_rejects += 1;
        if msg.method() == b"ACK" {
            return;
        }
        let s = out.buf.len();
        build_reply(
            msg,
            0,
            503,
            local_tag(branch_hash),
            Some(self.cfg.retry_after_s),
            &mut out.buf,
        );
        out.push_built(s, caller, SendKind::LocalReply(503), None);
    }

    /// §16.7 step 6: no try is left; send the best final answer (a 408 for
    /// a timeout, §16.8; a 503 becomes 500) and complete the server side.
    pub(super) fn send_best(&mut self, now: u64, i: u32, out: &mut Out) {
        let s = &mut self.slots[i as usize];
        let code = if s.best_code == 0 { 408 } else { s.best_code };
        let local = s.best_code == 0 || s.best_local || code == 503;
        if local {
            let code = if code == 503 { 500 } else { code };
            let start = out.buf.len();
            let req = &s.buf[..s.req_len as usize];
            if let Some(m) = TxnTable::parse_request(req, &mut self.hdrs) {
                build_reply(&m, 1, code, local_tag(s.key), None, &mut out.buf);
            }
            if out.buf.len() > start {
                out.push_built(start, s.caller, SendKind::LocalReply(code), None);
                s.set_sent(&out.buf[start..]);
                s.sent_code = code;
            }
        } else {
            // the held-back answer becomes the sent one
            let (a, b) = (s.req_len as usize, s.sent_end as usize);
            s.buf.drain(a..b);
            s.sent_end = s.buf.len() as u32;
            out.push(s.caller, s.sent(), SendKind::Reply, None);
            s.sent_code = code;
        }
        let s = &mut self.slots[i as usize];
        s.set_best(&[]);
        self.complete_server(now, i);
    }

    /// A final non-2xx went to the caller: INVITE → Completed with Timer G
    /// (unreliable caller) and H; non-INVITE → Completed with Timer J.
    pub(super) fn complete_server(&mut self, now: u64, i: u32) {
        let (t1, t4) = (self.cfg.t1_ms, self.cfg.wait_t4());
        let s = &mut self.slots[i as usize];
        s.srv = Srv::Completed;
        let udp = s.caller.transport == Transport::Udp;
        if s.invite {
            if udp {
                s.retx = Retx::Response;
                s.retx_iv = t1;
                s.retx_at = now + t1;
            } else if s.retx == Retx::Request {
                s.retx = Retx::None;
            }
            s.tmo = Tmo::H;
            s.tmo_at = now + 64 * t1;
        } else {
            if s.retx == Retx::Request {
                s.retx = Retx::None;
            }
            // Timer J: 64·T1 on UDP, 0 on TCP (K: T4 / 0 for the client side)
            let j = if udp { self.cfg.wait_long() } else { 0 };
            let k = if s.up.transport == Transport::Udp {
                t4
            } else {
                0
            };
            s.end_at = s.end_at.max(now + j.max(k)).max(1);
            if j > 0 {
                self.keep_only_sent(i);
            }
        }
        self.arm(i);
    }

    /// Timer H: the ACK never came; the transaction ends (§17.2.1).
    pub(super) fn timer_h(&mut self, now: u64, i: u32) {
        let s = &mut self.slots[i as usize];
        s.tmo = Tmo::None;
        if s.retx == Retx::Response {
            s.retx = Retx::None;
        }
        s.end_at = s.end_at.max(now).max(1);
    }

    /// A 2xx went through (RFC 6026 §7.1 Accepted, Timer L = 64·T1: a
    /// retransmitted INVITE is absorbed, further 2xx are forwarded).
    pub(super) fn accept_server(&mut self, now: u64, i: u32) {
        let (wl, t4) = (self.cfg.wait_long(), self.cfg.wait_t4());
        let s = &mut self.slots[i as usize];
        let (mut drop_buf, mut drop_req) = (false, false);
        if s.invite {
            s.srv = Srv::Accepted;
            s.end_at = s.end_at.max(now + wl).max(1);
            // Accepted keeps nothing to resend: a retransmitted INVITE is
            // absorbed silently, a 2xx retransmission is forwarded as it
            // comes. With earlier tries, a late final of one of them is ACKed
            // from the stored request, so the buffer stays.
            drop_buf = s.attempt == 0;
        } else {
            s.srv = Srv::Completed;
            let j = if s.caller.transport == Transport::Udp {
                wl
            } else {
                0
            };
            let k = if s.up.transport == Transport::Udp {
                t4
            } else {
                0
            };
            s.end_at = s.end_at.max(now + j.max(k)).max(1);
            // Timer J: only the answer is resent (to a retransmitted request)
            drop_req = j > 0;
        }
        s.tmo = Tmo::None;
        s.retx = Retx::None;
        s.trying_at = 0;
        if drop_buf {
            self.drop_buffer(i);
        } else if drop_req {
            self.keep_only_sent(i);
        }
        self.arm(i);
    }
}
