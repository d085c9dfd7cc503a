//! The transport-independent core: `receive_msg` (SPEC A.1), routing, the
//! nosip hook. Synchronous, no I/O: bytes + receive info in, one outcome out.

pub mod live;
pub mod nosip;

/// Why the core dropped a message (each counted as `sipedge_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Unparseable and not consumed by the nosip hook.
    ParseFailure,
    /// A sanity failure on an ACK (never answered).
    BadAck,
    /// A reply whose top Via is not ours.
    ReplyNotOurs,
    /// A reply with no Via left after removing ours.
    ReplyNoVia,
    /// The next hop could not be determined or resolved.
    NoRoute,
    /// Sending failed (socket error, connection gone and unreachable).
    SendFailed,
    /// A keep-alive datagram (CRLF, CRLFCRLF) on UDP.
    Keepalive,
    /// A request that would loop back to ourselves.
    Loop,
    /// A malformed request that cannot be answered: no Via to send a reply by.
    BadRequest,
    /// A malformed reply (RFC 4475 §3.1.2.5: CSeq out of range, …), or one
    /// whose next Via is a broadcast, multicast or unspecified address
    /// (§3.3.10): never forwarded.
    BadReply,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::ParseFailure,
        DropReason::BadAck,
        DropReason::ReplyNotOurs,
        DropReason::ReplyNoVia,
        DropReason::NoRoute,
        DropReason::SendFailed,
        DropReason::Keepalive,
        DropReason::Loop,
        DropReason::BadRequest,
        DropReason::BadReply,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ParseFailure => "parse_failure",
            DropReason::BadAck => "bad_ack",
            DropReason::ReplyNotOurs => "reply_not_ours",
            DropReason::ReplyNoVia => "reply_no_via",
            DropReason::NoRoute => "no_route",
            DropReason::SendFailed => "send_failed",
            DropReason::Keepalive => "keepalive",
            DropReason::Loop => "loop",
            DropReason::BadRequest => "bad_request",
            DropReason::BadReply => "bad_reply",
        }
    }
}

pub mod proxy;
pub mod transaction;
pub mod upstream;

pub use proxy::{
    ConnId, Core, Dest, Outcome, ParseErrorHook, ProbeSink, RcvInfo, Scratch, SendKind,
    fuzz_receive_msg,
};
