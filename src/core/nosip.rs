//! The nosip hook (SPEC A.3): what to do with bytes that are not SIP.
//!
//! Kamailio runs `event_route[nosip:msg]` when `parse_msg` fails; the hook can
//! consume the data (`NONSIP_MSG_DROP`) or let the core treat it as a parse
//! failure (which closes a TCP connection). Here it is a trait; built-ins are
//! chosen in the config (`[nosip] hook = "none" | "match" | "http-health"`).

use crate::config::{NosipConfig, NosipKind, Transport};
use std::net::SocketAddr;

/// The hook's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NosipVerdict {
    /// The data was consumed: processing ends successfully, the connection stays up.
    Drop,
    /// Not handled: the core's parse-failure path runs (log, count, error → release on TCP).
    Pass,
    /// The hook found the data harmful: parse-failure path, counted as a hook error.
    Error,
}

impl NosipVerdict {
    pub const ALL: [NosipVerdict; 3] =
        [NosipVerdict::Drop, NosipVerdict::Pass, NosipVerdict::Error];
    pub fn as_str(self) -> &'static str {
        match self {
            NosipVerdict::Drop => "drop",
            NosipVerdict::Pass => "pass",
            NosipVerdict::Error => "error",
        }
    }
}

/// What the hook sees besides the bytes, and where it may put a reply.
pub struct NosipCtx<'a> {
    pub src: SocketAddr,
    pub transport: Transport,
    /// Bytes written here are sent back to the peer (same connection / source address).
    pub reply: &'a mut Vec<u8>,
}

/// Implement this to handle non-SIP data yourself (register it with [`crate::run`]).
pub trait NosipHook: Send + Sync {
    fn on_nosip(&self, data: &[u8], ctx: &mut NosipCtx<'_>) -> NosipVerdict;
}

/// `none`: Kamailio's default: every non-SIP message is a parse failure.
pub struct NoneHook;

impl NosipHook for NoneHook {
    fn on_nosip(&self, _data: &[u8], _ctx: &mut NosipCtx<'_>) -> NosipVerdict {
        NosipVerdict::Pass
    }
}

/// `match`: consume data that matches a configured pattern (Kamailio nosip
/// `msg_match` / `msg_skip`); anything else passes.
pub struct MatchHook {
    re: regex::bytes::Regex,
}

impl MatchHook {
    pub fn new(pattern: &str) -> Result<MatchHook, regex::Error> {
        Ok(MatchHook {
            re: regex::bytes::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()?,
        })
    }
}

impl NosipHook for MatchHook {
    fn on_nosip(&self, data: &[u8], _ctx: &mut NosipCtx<'_>) -> NosipVerdict {
        if self.re.is_match(data) {
            NosipVerdict::Drop
        } else {
            NosipVerdict::Pass
        }
    }
}

/// `http-health`: answer `GET <path>` (HTTP/1.x) on the SIP port with 200, for
/// load balancers. Other HTTP requests get 404 and are consumed; non-HTTP passes.
pub struct HttpHealthHook {
    path: Vec<u8>,
}

impl HttpHealthHook {
    pub fn new(path: &str) -> HttpHealthHook {
        HttpHealthHook {
            path: path.as_bytes().to_vec(),
        }
    }
}

impl NosipHook for HttpHealthHook {
    fn on_nosip(&self, data: &[u8], ctx: &mut NosipCtx<'_>) -> NosipVerdict {
        let line_end = memchr::memchr(b'\n', data).unwrap_or(data.len());
        let line = data[..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&data[..line_end]);
        let mut parts = line.split(|&b| b == b' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return NosipVerdict::Pass;
        };
        if !version.starts_with(b"HTTP/1.") {
            return NosipVerdict::Pass;
        }
        let (status, body): (&str, &str) =
            if (method == b"GET" || method == b"HEAD") && target == self.path.as_slice() {
                ("200 OK", "OK\n")
            } else {
                ("404 Not Found", "not found\n")
            };
        let body_out = if method == b"HEAD" { "" } else { body };
        ctx.reply.extend_from_slice(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n{body_out}",
                body.len()
            )
            .as_bytes(),
        );
        NosipVerdict::Drop
    }
}

/// Build the configured built-in hook.
pub fn from_config(cfg: &NosipConfig) -> Result<Box<dyn NosipHook>, regex::Error> {
    Ok(match cfg.hook {
        NosipKind::None => Box::new(NoneHook),
        NosipKind::Match => Box::new(MatchHook::new(cfg.pattern.as_deref().unwrap_or("^$"))?),
        NosipKind::HttpHealth => Box::new(HttpHealthHook::new(&cfg.health_path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(reply: &mut Vec<u8>) -> NosipCtx<'_> {
        NosipCtx {
            src: "127.0.0.1:5000".parse().unwrap(),
            transport: Transport::Tcp,
            reply,
        }
    }

    #[test]
    fn a3_none_hook_passes_everything() {
        let mut r = Vec::new();
        assert_eq!(
            NoneHook.on_nosip(b"\x16\x03\x01", &mut ctx(&mut r)),
            NosipVerdict::Pass
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a3_match_hook_consumes_matching_data_only() {
        let h = MatchHook::new(r"^(?:jaK|PING)\r?\n?$").unwrap();
        let mut r = Vec::new();
        assert_eq!(h.on_nosip(b"jaK\r\n", &mut ctx(&mut r)), NosipVerdict::Drop);
        assert_eq!(h.on_nosip(b"PING", &mut ctx(&mut r)), NosipVerdict::Drop);
        assert_eq!(
            h.on_nosip(b"\x16\x03\x01\x02", &mut ctx(&mut r)),
            NosipVerdict::Pass
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a3_http_health_answers_200_on_the_health_path() {
        let h = HttpHealthHook::new("/health");
        let mut r = Vec::new();
        let v = h.on_nosip(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", &mut ctx(&mut r));
        assert_eq!(v, NosipVerdict::Drop);
        assert!(
            r.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&r)
        );
        assert!(r.ends_with(b"\r\n\r\nOK\n"));
    }

    #[test]
    fn a3_http_health_404_for_other_paths_and_passes_non_http() {
        let h = HttpHealthHook::new("/health");
        let mut r = Vec::new();
        assert_eq!(
            h.on_nosip(b"GET /x HTTP/1.0\r\n\r\n", &mut ctx(&mut r)),
            NosipVerdict::Drop
        );
        assert!(r.starts_with(b"HTTP/1.1 404 "));
        let mut r = Vec::new();
        assert_eq!(
            h.on_nosip(b"\x00\x01garbage", &mut ctx(&mut r)),
            NosipVerdict::Pass
        );
        assert!(r.is_empty());
    }
}
