//! `[tcp]`: limits and timers of the TCP transport (SPEC A.2, A.4).

use super::{
    ConfigError, MAX_TIMEOUT_SECS, int_i64, invalid, non_negative, non_negative_usize, size_i64,
};
use serde::{Deserialize, Serialize};

/// Smallest accepted `tcp.max_message_size`.
pub const MIN_MESSAGE_SIZE: usize = 256;
/// Largest accepted `tcp.max_message_size` (16 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// `[tcp]`: limits and timers of the TCP transport (SPEC A.2, A.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_message_size: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub write_queue_bytes: usize,
    pub idle_lifetime_secs: u64,
    pub message_timeout_secs: u64,
    pub first_message_timeout_secs: u64,
    pub accept_no_content_length: bool,
    pub crlf_pong: bool,
    pub connect_timeout_secs: u64,
}

impl Default for TcpLimits {
    /// The built-in defaults (= `etc/sipedge.toml`).
    fn default() -> Self {
        TcpLimits {
            max_message_size: 65535,
            max_connections: 4096,
            max_connections_per_ip: 1024,
            write_queue_bytes: 1024 * 1024,
            idle_lifetime_secs: 120,
            message_timeout_secs: 10,
            first_message_timeout_secs: 5,
            accept_no_content_length: false,
            crlf_pong: true,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTcp {
    max_message_size: i64,
    max_connections: i64,
    max_connections_per_ip: i64,
    write_queue_bytes: i64,
    idle_lifetime_secs: i64,
    message_timeout_secs: i64,
    first_message_timeout_secs: i64,
    accept_no_content_length: bool,
    crlf_pong: bool,
    connect_timeout_secs: i64,
}

impl Default for RawTcp {
    fn default() -> Self {
        to_raw(&TcpLimits::default())
    }
}

pub(super) fn from_raw(t: RawTcp) -> Result<TcpLimits, ConfigError> {
    Ok(TcpLimits {
        max_message_size: non_negative_usize("tcp.max_message_size", t.max_message_size)?,
        max_connections: non_negative_usize("tcp.max_connections", t.max_connections)?,
        max_connections_per_ip: non_negative_usize(
            "tcp.max_connections_per_ip",
            t.max_connections_per_ip,
        )?,
        write_queue_bytes: non_negative_usize("tcp.write_queue_bytes", t.write_queue_bytes)?,
        idle_lifetime_secs: non_negative("tcp.idle_lifetime_secs", t.idle_lifetime_secs)?,
        message_timeout_secs: non_negative("tcp.message_timeout_secs", t.message_timeout_secs)?,
        first_message_timeout_secs: non_negative(
            "tcp.first_message_timeout_secs",
            t.first_message_timeout_secs,
        )?,
        accept_no_content_length: t.accept_no_content_length,
        crlf_pong: t.crlf_pong,
        connect_timeout_secs: non_negative("tcp.connect_timeout_secs", t.connect_timeout_secs)?,
    })
}

pub(super) fn to_raw(t: &TcpLimits) -> RawTcp {
    RawTcp {
        max_message_size: size_i64(t.max_message_size),
        max_connections: size_i64(t.max_connections),
        max_connections_per_ip: size_i64(t.max_connections_per_ip),
        write_queue_bytes: size_i64(t.write_queue_bytes),
        idle_lifetime_secs: int_i64(t.idle_lifetime_secs),
        message_timeout_secs: int_i64(t.message_timeout_secs),
        first_message_timeout_secs: int_i64(t.first_message_timeout_secs),
        accept_no_content_length: t.accept_no_content_length,
        crlf_pong: t.crlf_pong,
        connect_timeout_secs: int_i64(t.connect_timeout_secs),
    }
}

impl TcpLimits {
    /// `[tcp]` rules.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&t.max_message_size) {
            return Err(invalid(
                "tcp.max_message_size",
                t.max_message_size,
                format!("must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE} bytes"),
            ));
        }
        if t.max_connections < 1 {
            return Err(invalid(
                "tcp.max_connections",
                t.max_connections,
                "must be at least 1",
            ));
        }
        if t.max_connections_per_ip < 1 {
            return Err(invalid(
                "tcp.max_connections_per_ip",
                t.max_connections_per_ip,
                "must be at least 1",
            ));
        }
        if t.write_queue_bytes < t.max_message_size {
            return Err(invalid(
                "tcp.write_queue_bytes",
                t.write_queue_bytes,
                format!(
                    "must be at least tcp.max_message_size ({}) so one message fits",
                    t.max_message_size
                ),
            ));
        }
        for (key, v) in [
            ("tcp.idle_lifetime_secs", t.idle_lifetime_secs),
            ("tcp.message_timeout_secs", t.message_timeout_secs),
            (
                "tcp.first_message_timeout_secs",
                t.first_message_timeout_secs,
            ),
            ("tcp.connect_timeout_secs", t.connect_timeout_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&v) {
                return Err(invalid(
                    key,
                    v,
                    format!("must be between 1 and {MAX_TIMEOUT_SECS} seconds"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::err_for;

    #[test]
    fn tcp_max_message_size_range() {
        err_for("[tcp]\nmax_message_size = 255\n", "tcp.max_message_size");
        err_for(
            "[tcp]\nmax_message_size = 16777217\n",
            "tcp.max_message_size",
        );
        err_for("[tcp]\nmax_message_size = -5\n", "tcp.max_message_size");
        Config::from_toml("[tcp]\nmax_message_size = 256\n").unwrap();
        Config::from_toml("[tcp]\nmax_message_size = 16777216\nwrite_queue_bytes = 16777216\n")
            .unwrap();
    }

    #[test]
    fn tcp_connection_limits_positive() {
        err_for("[tcp]\nmax_connections = 0\n", "tcp.max_connections");
        err_for(
            "[tcp]\nmax_connections_per_ip = 0\n",
            "tcp.max_connections_per_ip",
        );
    }

    #[test]
    fn tcp_write_queue_holds_a_message() {
        err_for("[tcp]\nwrite_queue_bytes = 1000\n", "tcp.write_queue_bytes");
    }

    #[test]
    fn tcp_timeouts_positive() {
        for key in [
            "idle_lifetime_secs",
            "message_timeout_secs",
            "first_message_timeout_secs",
            "connect_timeout_secs",
        ] {
            err_for(&format!("[tcp]\n{key} = 0\n"), &format!("tcp.{key}"));
            err_for(
                &format!("[tcp]\n{key} = 99999999999\n"),
                &format!("tcp.{key}"),
            );
        }
    }
}
