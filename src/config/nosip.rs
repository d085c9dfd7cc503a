//! `[nosip]`: the built-in nosip hook (SPEC A.3).

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// Size limit of the compiled `nosip.pattern` (same as the `match` hook uses).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
/// `nosip.hook`: the built-in nosip hook.
pub enum NosipKind {
    None,
    Match,
    HttpHealth,
}

/// `[nosip]`: the built-in nosip hook (SPEC A.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NosipConfig {
    pub hook: NosipKind,
    /// `match`: regular expression (bytes) the non-SIP data must match to be consumed.
    pub pattern: Option<String>,
    /// `http-health`: the path answered with 200.
    pub health_path: String,
}

impl Default for NosipConfig {
    /// The built-in defaults (= `etc/sipedge.toml`).
    fn default() -> Self {
        NosipConfig {
            hook: NosipKind::None,
            pattern: None,
            health_path: "/health".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNosip {
    hook: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    health_path: String,
}

impl Default for RawNosip {
    fn default() -> Self {
        to_raw(&NosipConfig::default())
    }
}

pub(super) fn from_raw(raw: RawNosip) -> Result<NosipConfig, ConfigError> {
    let hook = match raw.hook.as_str() {
        "none" => NosipKind::None,
        "match" => NosipKind::Match,
        "http-health" => NosipKind::HttpHealth,
        other => {
            return Err(invalid(
                "nosip.hook",
                other,
                "must be \"none\", \"match\" or \"http-health\"",
            ));
        }
    };
    Ok(NosipConfig {
        hook,
        pattern: raw.pattern,
        health_path: raw.health_path,
    })
}

pub(super) fn to_raw(n: &NosipConfig) -> RawNosip {
    RawNosip {
        hook: match n.hook {
            NosipKind::None => "none",
            NosipKind::Match => "match",
            NosipKind::HttpHealth => "http-health",
        }
        .into(),
        pattern: n.pattern.clone(),
        health_path: n.health_path.clone(),
    }
}

impl NosipConfig {
    /// `[nosip]` rules.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let n = self;
        match (&n.pattern, n.hook) {
            (None, NosipKind::Match) => {
                return Err(invalid(
                    "nosip.pattern",
                    "",
                    "required when nosip.hook = \"match\" (a regular expression over the bytes)",
                ));
            }
            (Some(p), _) => {
                if let Err(e) = regex::bytes::RegexBuilder::new(p)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    return Err(invalid(
                        "nosip.pattern",
                        p,
                        format!("not a valid regular expression: {e}"),
                    ));
                }
            }
            (None, _) => {}
        }
        if !n.health_path.starts_with('/') {
            return Err(invalid(
                "nosip.health_path",
                &n.health_path,
                "must start with `/`",
            ));
        }
        if n.health_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid(
                "nosip.health_path",
                &n.health_path,
                "must not contain spaces or control characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::err_for;

    #[test]
    fn nosip_hook_values() {
        err_for("[nosip]\nhook = \"skip\"\n", "nosip.hook");
        let c = Config::from_toml("[nosip]\nhook = \"http-health\"\n").unwrap();
        assert_eq!(c.nosip.hook, NosipKind::HttpHealth);
    }

    #[test]
    fn nosip_match_requires_pattern() {
        let msg = err_for("[nosip]\nhook = \"match\"\n", "nosip.pattern");
        assert!(msg.contains("required"), "{msg}");
    }

    #[test]
    fn nosip_pattern_must_compile() {
        err_for(
            "[nosip]\nhook = \"match\"\npattern = \"([\"\n",
            "nosip.pattern",
        );
        let c = Config::from_toml("[nosip]\nhook = \"match\"\npattern = '^[\\r\\n]*$'\n").unwrap();
        assert_eq!(c.nosip.pattern.as_deref(), Some("^[\\r\\n]*$"));
    }

    #[test]
    fn nosip_etc_example_pattern_compiles() {
        // The commented example in etc/sipedge.toml must be usable as-is.
        let etc = include_str!("../../etc/sipedge.toml");
        let line = etc
            .lines()
            .find(|l| l.starts_with("# pattern = "))
            .expect("example pattern in etc/sipedge.toml");
        let text = format!("[nosip]\nhook = \"match\"\n{}\n", &line[2..]);
        let c = Config::from_toml(&text).unwrap();
        let re = regex::bytes::Regex::new(c.nosip.pattern.as_deref().unwrap()).unwrap();
        assert!(re.is_match(b"\r\n\r\nping\n\0"));
        assert!(!re.is_match(b"INVITE sip:a SIP/2.0\r\n"));
    }

    #[test]
    fn nosip_health_path_starts_with_slash() {
        err_for("[nosip]\nhealth_path = \"health\"\n", "nosip.health_path");
        err_for("[nosip]\nhealth_path = \"/a b\"\n", "nosip.health_path");
    }
}
