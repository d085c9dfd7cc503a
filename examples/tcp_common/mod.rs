//! The byte-level protocol shared by `netstack_echo`'s TCP modes and
//! `tcp_peer` (included by both with `#[path]`; not an example itself):
//!
//! - **pattern**: byte `i` of a bulk stream is [`pattern_byte`]`(i)`, so a
//!   receiver checks every byte at its offset without holding the stream;
//! - **hash**: 64-bit FNV-1a over the stream ([`Fnv`]);
//! - **sink** reply: after the sender's FIN, the line `bytes=N fnv=HHHH\n`
//!   ([`sink_reply`], [`parse_sink_reply`]);
//! - **source** request: the line `N\n`; the server then sends `N` pattern
//!   bytes and closes ([`parse_source_request`]).
#![allow(dead_code)]

/// Longest accepted source request line (digits + newline).
pub const MAX_REQUEST_LINE: usize = 24;
/// Longest sink reply line.
pub const MAX_REPLY_LINE: usize = 64;

/// Byte `i` of every bulk stream: a mix of the offset (not periodic on any
/// short scale, so a reordered or duplicated segment never matches).
#[inline]
pub fn pattern_byte(i: u64) -> u8 {
    let w = (i >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let w = w ^ (w >> 29);
    (w >> ((i & 7) * 8)) as u8
}

/// Fill `dst` with the pattern bytes starting at stream offset `off`.
pub fn pattern_fill(off: u64, dst: &mut [u8]) {
    for (k, b) in dst.iter_mut().enumerate() {
        *b = pattern_byte(off + k as u64);
    }
}

/// Index (stream offset) of the first byte of `got` (at offset `off`) that
/// differs from the pattern.
pub fn pattern_mismatch(off: u64, got: &[u8]) -> Option<u64> {
    got.iter()
        .enumerate()
        .find(|(k, b)| **b != pattern_byte(off + *k as u64))
        .map(|(k, _)| off + k as u64)
}

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for b in data {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The sink's answer after the sender's FIN.
pub fn sink_reply(bytes: u64, fnv: Fnv) -> String {
    format!("bytes={bytes} fnv={:016x}\n", fnv.0)
}

/// `bytes=N fnv=HHHH` → (N, hash).
pub fn parse_sink_reply(line: &str) -> Option<(u64, u64)> {
    let mut it = line.trim().split(' ');
    let n = it.next()?.strip_prefix("bytes=")?.parse().ok()?;
    let h = u64::from_str_radix(it.next()?.strip_prefix("fnv=")?, 16).ok()?;
    it.next().is_none().then_some((n, h))
}

/// A complete source request line (`N\n`) at the start of `buf` → N;
/// `Err(())` for a malformed or over-long line, `Ok(None)` while incomplete.
#[allow(clippy::result_unit_err)]
pub fn parse_source_request(buf: &[u8]) -> Result<Option<u64>, ()> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(p) if p > 0 && p < MAX_REQUEST_LINE => std::str::from_utf8(&buf[..p])
            .ok()
            .and_then(|s| s.trim_end_matches('\r').parse().ok())
            .map(Some)
            .ok_or(()),
        Some(_) => Err(()),
        None if buf.len() >= MAX_REQUEST_LINE => Err(()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_checks_offsets_and_hash_roundtrips() {
        let mut a = vec![0u8; 1000];
        pattern_fill(12345, &mut a);
        assert_eq!(pattern_mismatch(12345, &a), None);
        assert_eq!(pattern_mismatch(12346, &a[1..]), None);
        assert!(pattern_mismatch(12344, &a).is_some());
        let mut f = Fnv::default();
        f.update(&a);
        let line = sink_reply(1000, f);
        assert_eq!(parse_sink_reply(&line), Some((1000, f.0)));
        assert_eq!(parse_source_request(b"42\n"), Ok(Some(42)));
        assert_eq!(parse_source_request(b"42"), Ok(None));
        assert_eq!(parse_source_request(b"x\n"), Err(()));
        assert_eq!(parse_source_request(&[b'1'; 40]), Err(()));
    }
}
