//! `[log]`: level (an EnvFilter directive list) and line format.

use super::{Config, ConfigError, invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// `log.format`.
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub level: String,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

pub(super) fn to_raw(c: &Config) -> RawLog {
    RawLog {
        level: c.log_level.clone(),
        format: match c.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .into(),
    }
}

/// Parse `text` / `json`.
pub fn parse_log_format(key: &str, s: &str) -> Result<LogFormat, ConfigError> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(key, s, "must be \"text\" or \"json\"")),
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A log level is a `tracing_subscriber::EnvFilter` directive list
/// (`info`, `warn,sipedge=debug`). A bare word must be a level name: EnvFilter
/// would read `verbose` as a target name and silently log nothing useful.
pub fn check_log_level(key: &str, s: &str) -> Result<(), ConfigError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(key, s, "must not be empty (e.g. \"info\")"));
    }
    for d in t.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[', ':']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            return Err(invalid(
                key,
                s,
                format!(
                    "`{d}` is not a level (trace, debug, info, warn, error, off); \
                     per-target filters are written `target=level`"
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(t)
        .map(|_| ())
        .map_err(|e| invalid(key, s, format!("not a valid log filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::err_for;

    #[test]
    fn log_level_must_be_a_filter() {
        err_for("[log]\nlevel = \"verbose\"\n", "log.level");
        err_for("[log]\nlevel = \"\"\n", "log.level");
        err_for("[log]\nlevel = \"sipedge=loud\"\n", "log.level");
        let c = Config::from_toml("[log]\nlevel = \"warn,sipedge::core=trace\"\n").unwrap();
        assert_eq!(c.log_level, "warn,sipedge::core=trace");
    }

    #[test]
    fn log_format_values() {
        err_for("[log]\nformat = \"xml\"\n", "log.format");
        let c = Config::from_toml("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
