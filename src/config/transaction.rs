//! `[transaction]`: the stateful mode's transaction layer (`proxy.mode =
//! "stateful"`): RFC 3261 timers, the table's cap and failover. Unused in
//! the stateless mode.

use super::{ConfigError, in_range_usize, int_i64, invalid, non_negative};
use crate::core::transaction::{MAX_SHARDS, MAX_SLOTS, MAX_TRIES, TxnConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTransaction {
    t1_ms: i64,
    t2_ms: i64,
    t4_ms: i64,
    fr_timeout_ms: i64,
    timer_c_ms: i64,
    max_transactions: i64,
    failover_codes: Vec<i64>,
    max_tries: i64,
    retry_after_secs: i64,
    linger_ms: i64,
    trying_delay_ms: i64,
}

impl Default for RawTransaction {
    fn default() -> Self {
        to_raw(&TxnConfig::default())
    }
}

pub(super) fn from_raw(t: &RawTransaction) -> Result<TxnConfig, ConfigError> {
    let ms = |key: &str, v: i64| non_negative(key, v);
    let mut codes = Vec::with_capacity(t.failover_codes.len());
    for (i, &c) in t.failover_codes.iter().enumerate() {
        let key = format!("transaction.failover_codes[{i}]");
        let code = u16::try_from(c)
            .ok()
            .filter(|c| (300..=699).contains(c))
            .ok_or_else(|| invalid(&key, c, "must be a final non-2xx code (300..=699)"))?;
        codes.push(code);
    }
    Ok(TxnConfig {
        t1_ms: ms("transaction.t1_ms", t.t1_ms)?,
        t2_ms: ms("transaction.t2_ms", t.t2_ms)?,
        t4_ms: ms("transaction.t4_ms", t.t4_ms)?,
        fr_timeout_ms: ms("transaction.fr_timeout_ms", t.fr_timeout_ms)?,
        timer_c_ms: ms("transaction.timer_c_ms", t.timer_c_ms)?,
        max_transactions: in_range_usize(
            "transaction.max_transactions",
            t.max_transactions,
            1,
            MAX_SLOTS as usize * MAX_SHARDS,
        )? as u32,
        failover_codes: codes,
        max_tries: in_range_usize("transaction.max_tries", t.max_tries, 1, MAX_TRIES)? as u8,
        retry_after_s: in_range_usize(
            "transaction.retry_after_secs",
            t.retry_after_secs,
            0,
            86_400,
        )? as u32,
        linger_ms: ms("transaction.linger_ms", t.linger_ms)?,
        trying_delay_ms: ms("transaction.trying_delay_ms", t.trying_delay_ms)?,
    })
}

pub(super) fn to_raw(t: &TxnConfig) -> RawTransaction {
    RawTransaction {
        t1_ms: int_i64(t.t1_ms),
        t2_ms: int_i64(t.t2_ms),
        t4_ms: int_i64(t.t4_ms),
        fr_timeout_ms: int_i64(t.fr_timeout_ms),
        timer_c_ms: int_i64(t.timer_c_ms),
        max_transactions: i64::from(t.max_transactions),
        failover_codes: t.failover_codes.iter().map(|&c| i64::from(c)).collect(),
        max_tries: i64::from(t.max_tries),
        retry_after_secs: i64::from(t.retry_after_s),
        linger_ms: int_i64(t.linger_ms),
        trying_delay_ms: int_i64(t.trying_delay_ms),
    }
}

/// `[transaction]` rules.
pub(super) fn validate(t: &TxnConfig) -> Result<(), ConfigError> {
    if !(1..=60_000).contains(&t.t1_ms) {
        return Err(invalid(
            "transaction.t1_ms",
            t.t1_ms,
            "must be between 1 and 60000",
        ));
    }
    if t.t2_ms < t.t1_ms || t.t2_ms > 600_000 {
        return Err(invalid(
            "transaction.t2_ms",
            t.t2_ms,
            "must be at least transaction.t1_ms and at most 600000",
        ));
    }
    if t.t4_ms > 600_000 {
        return Err(invalid(
            "transaction.t4_ms",
            t.t4_ms,
            "must be at most 600000",
        ));
    }
    if t.linger_ms > 600_000 {
        return Err(invalid(
            "transaction.linger_ms",
            t.linger_ms,
            "must be at most 600000 (0 = the RFC 3261 timers)",
        ));
    }
    // §17.2.1: the 100 Trying may be skipped only when the TU answers
    // within 200 ms
    if t.trying_delay_ms > 200 {
        return Err(invalid(
            "transaction.trying_delay_ms",
            t.trying_delay_ms,
            "must be at most 200 (RFC 3261 §17.2.1; 0 = at once)",
        ));
    }
    if t.fr_timeout_ms > 3_600_000 {
        return Err(invalid(
            "transaction.fr_timeout_ms",
            t.fr_timeout_ms,
            "must be at most 3600000 (0 = 64 × T1)",
        ));
    }
    // RFC 3261 §16.6 step 11: Timer C is more than 3 minutes
    if !(180_000..=3_600_000).contains(&t.timer_c_ms) {
        return Err(invalid(
            "transaction.timer_c_ms",
            t.timer_c_ms,
            "must be between 180000 (RFC 3261: more than 3 minutes) and 3600000",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, ProxyMode};

    fn err_key(toml: &str) -> String {
        match Config::from_toml(toml) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid-value error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_stateless_with_rfc3261_timers() {
        let c = Config::default_config();
        assert_eq!(c.mode, ProxyMode::Stateless);
        assert_eq!(c.transaction.t1_ms, 500);
        assert_eq!(c.transaction.t2_ms, 4000);
        assert_eq!(c.transaction.t4_ms, 5000);
        assert_eq!(c.transaction.failover_codes, vec![503]);
        assert_eq!(c.transaction.max_tries, 3);
        assert_eq!(c.transaction.trying_delay_ms, 200);
    }

    #[test]
    fn stateful_mode_and_keys_parse_and_print_back() {
        let c = Config::from_toml(
            "[proxy]\nmode = \"stateful\"\n[transaction]\nt1_ms = 100\nfr_timeout_ms = 2000\n\
             failover_codes = [500, 503]\nmax_tries = 2\nmax_transactions = 1000\n",
        )
        .unwrap();
        assert_eq!(c.mode, ProxyMode::Stateful);
        assert_eq!(c.transaction.t1_ms, 100);
        assert_eq!(c.transaction.fr_timeout_ms, 2000);
        assert_eq!(c.transaction.failover_codes, vec![500, 503]);
        assert_eq!(c.transaction.max_tries, 2);
        assert_eq!(c.transaction.max_transactions, 1000);
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(err_key("[proxy]\nmode = \"half\"\n"), "proxy.mode");
        assert_eq!(err_key("[transaction]\nt1_ms = 0\n"), "transaction.t1_ms");
        assert_eq!(
            err_key("[transaction]\nt1_ms = 5000\nt2_ms = 4000\n"),
            "transaction.t2_ms"
        );
        assert_eq!(
            err_key("[transaction]\nfailover_codes = [200]\n"),
            "transaction.failover_codes[0]"
        );
        assert_eq!(
            err_key("[transaction]\ntrying_delay_ms = 201\n"),
            "transaction.trying_delay_ms"
        );
        assert_eq!(
            err_key("[transaction]\nmax_tries = 9\n"),
            "transaction.max_tries"
        );
        assert_eq!(
            err_key("[transaction]\nmax_transactions = 0\n"),
            "transaction.max_transactions"
        );
        assert_eq!(
            err_key("[transaction]\ntimer_c_ms = 1000\n"),
            "transaction.timer_c_ms"
        );
    }
}
