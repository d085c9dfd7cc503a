//! TCP connections: states, the connection table, limits, release reasons (SPEC A.4).

/// Why a connection was released (each counted as `sipedge_tcp_released_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    ParseError,
    FramingError,
    Oversize,
    NoContentLength,
    MessageTimeout,
    FirstMessageTimeout,
    Eof,
    Reset,
    IdleTimeout,
    WriteQueueFull,
    Limit,
    Evicted,
    ConnectFailed,
    Shutdown,
}

impl ReleaseReason {
    pub const ALL: [ReleaseReason; 14] = [
        ReleaseReason::ParseError,
        ReleaseReason::FramingError,
        ReleaseReason::Oversize,
        ReleaseReason::NoContentLength,
        ReleaseReason::MessageTimeout,
        ReleaseReason::FirstMessageTimeout,
        ReleaseReason::Eof,
        ReleaseReason::Reset,
        ReleaseReason::IdleTimeout,
        ReleaseReason::WriteQueueFull,
        ReleaseReason::Limit,
        ReleaseReason::Evicted,
        ReleaseReason::ConnectFailed,
        ReleaseReason::Shutdown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::ParseError => "parse_error",
            ReleaseReason::FramingError => "framing_error",
            ReleaseReason::Oversize => "oversize",
            ReleaseReason::NoContentLength => "no_content_length",
            ReleaseReason::MessageTimeout => "message_timeout",
            ReleaseReason::FirstMessageTimeout => "first_message_timeout",
            ReleaseReason::Eof => "eof",
            ReleaseReason::Reset => "reset",
            ReleaseReason::IdleTimeout => "idle_timeout",
            ReleaseReason::WriteQueueFull => "write_queue_full",
            ReleaseReason::Limit => "limit",
            ReleaseReason::Evicted => "evicted",
            ReleaseReason::ConnectFailed => "connect_failed",
            ReleaseReason::Shutdown => "shutdown",
        }
    }
}
