//! SYN cookies (RFC 4987 §3.6) in Linux's layout (`net/ipv4/syncookies.c`,
//! `net/ipv6/syncookies.c`): when the SYN backlog is full the listener
//! keeps no state and encodes what it needs in its ISN:
//!
//! ```text
//! ISN = H0(4-tuple) + peer ISN + (count << 24)
//!       + ((H1(4-tuple, count) + mssind) mod 2^24)
//! ```
//!
//! H0/H1 are SipHash-2-4 under two independent 128-bit keys; `count` is a
//! minute counter; `mssind` indexes a small per-family MSS table. A cookie
//! is valid for the counter it was made in and the previous one (Linux
//! `MAX_SYNCOOKIE_AGE` = 2). Window scale and SACK permission, which do not
//! fit, ride in the low 6 bits of our timestamp value and come back in the
//! peer's TSecr (Linux `cookie_init_timestamp` /
//! `cookie_timestamp_decode`); ECN is never offered with a cookie.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher24;
use smoltcp::wire::TcpSeqNumber;

use crate::netstack::Instant;

/// Linux `COOKIEBITS`: the low 24 bits carry hash + MSS index, the high 8
/// the counter.
const COOKIEBITS: u32 = 24;
const COOKIEMASK: u32 = (1 << COOKIEBITS) - 1;
/// Linux `MAX_SYNCOOKIE_AGE`: current and previous counter.
pub const MAX_SYNCOOKIE_AGE: u32 = 2;
/// Length of one counter period (Linux `tcp_cookie_time`: 60 s).
pub const COOKIE_PERIOD_SECS: i64 = 60;

/// Linux `msstab` (IPv4): 536, 1300, 1440 (PPPoE), 1460.
pub const MSSTAB_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// Linux IPv6 `msstab`: 1280 − 60, 1480 − 60, 1500 − 60, 9000 − 60.
pub const MSSTAB_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// Linux `TSBITS`: option bits in the timestamp.
const TSBITS: u32 = 6;
const TS_OPT_WSCALE_MASK: u32 = 0xf;
const TS_OPT_SACK: u32 = 1 << 4;
const TS_OPT_ECN: u32 = 1 << 5;
/// RFC 7323 §2.3: the largest window shift.
const MAX_WSCALE: u8 = 14;

/// The two SipHash keys (from 32 random bytes, drawn once per stack).
#[derive(Clone)]
pub struct CookieSecret {
    keys: [(u64, u64); 2],
}

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(..)")
    }
}

impl CookieSecret {
    pub fn new(random: [u8; 32]) -> Self {
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&random[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        CookieSecret {
            keys: [(w(0), w(1)), (w(2), w(3))],
        }
    }

    /// Linux `cookie_hash`: SipHash of the 4-tuple and `count` under key
    /// `c`.
    fn hash(&self, c: usize, src: SocketAddr, dst: SocketAddr, count: u32) -> u32 {
        let (k0, k1) = self.keys[c];
        let mut h = SipHasher24::new_with_keys(k0, k1);
        for a in [src.ip(), dst.ip()] {
            match a {
                IpAddr::V4(v) => h.write(&v.octets()),
                IpAddr::V6(v) => h.write(&v.octets()),
            }
        }
        h.write(&src.port().to_be_bytes());
        h.write(&dst.port().to_be_bytes());
        h.write(&count.to_le_bytes());
        h.finish() as u32
    }
}

/// Linux `tcp_cookie_time`: the minute counter.
fn cookie_time(now: Instant) -> u32 {
    (now.total_millis().max(0) / (COOKIE_PERIOD_SECS * 1000)) as u32
}

fn msstab(addr: SocketAddr) -> &'static [u16; 4] {
    match addr {
        SocketAddr::V4(_) => &MSSTAB_V4,
        SocketAddr::V6(_) => &MSSTAB_V6,
    }
}

/// Our ISN for a SYN from `src` (the peer) to `dst` (the listener) with
/// ISN `peer_isn` and MSS option `mss`: Linux `__cookie_v4_init_sequence`
/// / `secure_tcp_syn_cookie`. Returns the cookie and the MSS it encodes
/// (the largest table entry not above `mss`; the smallest if none is): the
/// MSS to announce and use.
pub fn cookie_init_sequence(
    sec: &CookieSecret,
    src: SocketAddr,
    dst: SocketAddr,
    peer_isn: TcpSeqNumber,
    mss: u16,
    now: Instant,
) -> (TcpSeqNumber, u16) {
    let tab = msstab(src);
    let ind = tab.iter().rposition(|&m| mss >= m).unwrap_or(0);
    let count = cookie_time(now);
    let cookie = sec
        .hash(0, src, dst, 0)
        .wrapping_add(peer_isn.0 as u32)
        .wrapping_add(count << COOKIEBITS)
        .wrapping_add(sec.hash(1, src, dst, count).wrapping_add(ind as u32) & COOKIEMASK);
    (TcpSeqNumber(cookie as i32), tab[ind])
}

/// Check the cookie of the ACK completing a handshake: `peer_isn` is the
/// peer's ISN (SEG.SEQ − 1), `cookie` our ISN (SEG.ACK − 1). Returns the
/// MSS encoded when the cookie was made for this 4-tuple in the current or
/// the previous minute (Linux `__cookie_v4_check` / `check_tcp_syn_cookie`).
pub fn cookie_check(
    sec: &CookieSecret,
    src: SocketAddr,
    dst: SocketAddr,
    peer_isn: TcpSeqNumber,
    cookie: TcpSeqNumber,
    now: Instant,
) -> Option<u16> {
    let count = cookie_time(now);
    let c =
        (cookie.0 as u32).wrapping_sub(sec.hash(0, src, dst, 0).wrapping_add(peer_isn.0 as u32));
    // Now (count << 24) + (hash mod 2^24 + mssind) mod 2^24.
    let diff = count.wrapping_sub(c >> COOKIEBITS) & (u32::MAX >> COOKIEBITS);
    if diff >= MAX_SYNCOOKIE_AGE {
        return None;
    }
    let ind = c.wrapping_sub(sec.hash(1, src, dst, count.wrapping_sub(diff))) & COOKIEMASK;
    msstab(src).get(ind as usize).copied()
}

/// Options a cookie connection keeps in the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieOpts {
    /// The peer's window scale (its SYN's option), if it sent one.
    pub wscale: Option<u8>,
    /// The peer sent SACK-permitted.
    pub sack: bool,
}

/// Our SYN-ACK's TSval: `now_tsval` with its low 6 bits replaced by the
/// options, never above `now_tsval` (Linux `cookie_init_timestamp`: the
/// value goes back by 64 ticks rather than into the future). Low 4 bits:
/// the window scale, 0xf for none; bit 4: SACK; bit 5: ECN (never set).
pub fn cookie_tsval(now_tsval: u32, o: CookieOpts) -> u32 {
    let mut options = o
        .wscale
        .map_or(TS_OPT_WSCALE_MASK, |w| u32::from(w.min(MAX_WSCALE)));
    if o.sack {
        options |= TS_OPT_SACK;
    }
    let ts = (now_tsval >> TSBITS) << TSBITS | options;
    if ts > now_tsval {
        ts.wrapping_sub(1 << TSBITS)
    } else {
        ts
    }
}

/// The options from the TSecr of the handshake-completing ACK (Linux
/// `cookie_timestamp_decode`). `None` when the bits cannot be ours (ECN
/// set, which we never offer with a cookie). An ACK without a timestamp
/// option carries none: the caller then uses no window scaling and no SACK.
pub fn cookie_decode_tsecr(tsecr: u32) -> Option<CookieOpts> {
    if tsecr & TS_OPT_ECN != 0 {
        return None;
    }
    let w = tsecr & TS_OPT_WSCALE_MASK;
    Some(CookieOpts {
        wscale: (w != TS_OPT_WSCALE_MASK).then_some(w as u8),
        sack: tsecr & TS_OPT_SACK != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netstack::Duration;

    fn sec() -> CookieSecret {
        let mut r = [0u8; 32];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        CookieSecret::new(r)
    }

    fn peer() -> SocketAddr {
        "198.18.0.2:40000".parse().unwrap()
    }

    fn us() -> SocketAddr {
        "198.18.0.1:5060".parse().unwrap()
    }

    fn t(secs: i64) -> Instant {
        Instant::from_secs(10_000 + secs)
    }

    #[test]
    fn rfc4987_cookie_round_trip() {
        let s = sec();
        let isn = TcpSeqNumber(0x1234_5678);
        let (c, mss) = cookie_init_sequence(&s, peer(), us(), isn, 1460, t(0));
        assert_eq!(mss, 1460);
        assert_eq!(cookie_check(&s, peer(), us(), isn, c, t(0)), Some(1460));
        assert_eq!(cookie_check(&s, peer(), us(), isn, c, t(59)), Some(1460));
    }

    #[test]
    fn rfc4987_wrong_tuple_isn_or_secret_fails() {
        let s = sec();
        let isn = TcpSeqNumber(-5);
        let (c, _) = cookie_init_sequence(&s, peer(), us(), isn, 1460, t(0));
        let other: SocketAddr = "198.18.0.3:40000".parse().unwrap();
        let port: SocketAddr = "198.18.0.2:40001".parse().unwrap();
        assert_eq!(cookie_check(&s, other, us(), isn, c, t(0)), None);
        assert_eq!(cookie_check(&s, port, us(), isn, c, t(0)), None);
        assert_eq!(cookie_check(&s, peer(), port, isn, c, t(0)), None);
        // As in Linux the MSS index is only added, so an ISN off by less
        // than the table size shifts the index; anything else fails.
        assert_eq!(cookie_check(&s, peer(), us(), isn + 1, c, t(0)), Some(1440));
        assert_eq!(cookie_check(&s, peer(), us(), isn + 16, c, t(0)), None);
        assert_eq!(cookie_check(&s, peer(), us(), isn - 1, c, t(0)), None);
        assert_eq!(cookie_check(&s, peer(), us(), isn, c + 1, t(0)), None);
        let s2 = CookieSecret::new([7; 32]);
        assert_eq!(cookie_check(&s2, peer(), us(), isn, c, t(0)), None);
    }

    #[test]
    fn rfc4987_cookie_expires_after_two_counters() {
        let s = sec();
        let isn = TcpSeqNumber(99);
        // Made at the very start of a minute: valid through the next one.
        let made = Instant::from_secs(60 * 500);
        let (c, _) = cookie_init_sequence(&s, peer(), us(), isn, 536, made);
        let ok = |at: Instant| cookie_check(&s, peer(), us(), isn, c, at);
        assert_eq!(ok(made + Duration::from_secs(119)), Some(536));
        assert_eq!(ok(made + Duration::from_secs(120)), None);
        assert_eq!(ok(made + Duration::from_secs(3600)), None);
        // A cookie "from the future" (clock moved back) is not valid.
        assert_eq!(ok(made - Duration::from_secs(60)), None);
    }

    #[test]
    fn rfc4987_every_msstab_entry_round_trips() {
        let s = sec();
        let isn = TcpSeqNumber(1);
        for (tab, a, b) in [
            (MSSTAB_V4, peer(), us()),
            (
                MSSTAB_V6,
                "[2001:db8::2]:40000".parse().unwrap(),
                "[2001:db8::1]:5060".parse().unwrap(),
            ),
        ] {
            for &m in &tab {
                for mss in [m, m + 1] {
                    let (c, enc) = cookie_init_sequence(&s, a, b, isn, mss, t(0));
                    assert_eq!(enc, m);
                    assert_eq!(cookie_check(&s, a, b, isn, c, t(30)), Some(m));
                }
            }
            // Below the smallest entry: the smallest.
            let (_, enc) = cookie_init_sequence(&s, a, b, isn, 100, t(0));
            assert_eq!(enc, tab[0]);
            let (_, enc) = cookie_init_sequence(&s, a, b, isn, u16::MAX, t(0));
            assert_eq!(enc, tab[3]);
        }
    }

    #[test]
    fn rfc4987_random_acks_rarely_pass() {
        // A forged ACK must guess 24 hash bits (plus the counter): of 20000
        // random cookies essentially none may be accepted.
        let s = sec();
        let mut x = 0x9e37_79b9u32;
        let mut hits = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let r = cookie_check(
                &s,
                peer(),
                us(),
                TcpSeqNumber(5),
                TcpSeqNumber(x as i32),
                t(0),
            );
            hits += usize::from(r.is_some());
        }
        assert!(hits <= 2, "{hits}");
    }

    #[test]
    fn linux_cookie_timestamp_encode_decode() {
        for wscale in [None, Some(0), Some(7), Some(14), Some(20)] {
            for sack in [false, true] {
                let o = CookieOpts { wscale, sack };
                for now in [0u32, 63, 64, 1000, 0x1234_5678, u32::MAX] {
                    let ts = cookie_tsval(now, o);
                    assert!(ts <= now || now < 64, "{ts} > {now}");
                    assert!(now.wrapping_sub(ts) < 64);
                    let d = cookie_decode_tsecr(ts).expect("ours");
                    assert_eq!(d.sack, sack);
                    assert_eq!(d.wscale, wscale.map(|w| w.min(14)));
                }
            }
        }
        assert_eq!(cookie_decode_tsecr(TS_OPT_ECN), None);
        assert_eq!(
            cookie_decode_tsecr(0xf),
            Some(CookieOpts {
                wscale: None,
                sack: false
            })
        );
    }
}
