//! TEMPORARY placeholder until branch tcp-parts lands syncookies.rs.
use crate::netstack::Instant;
use smoltcp::wire::TcpSeqNumber;
use std::net::SocketAddr;
pub struct CookieSecret([u8; 32]);
impl CookieSecret {
    pub fn new(k: [u8; 32]) -> Self {
        CookieSecret(k)
    }
}
fn h(sec: &CookieSecret, src: SocketAddr, dst: SocketAddr, isn: TcpSeqNumber, c: u32) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut s = std::collections::hash_map::DefaultHasher::new();
    (sec.0, src, dst, isn.0, c).hash(&mut s);
    s.finish() as u32
}
pub fn cookie_init_sequence(
    sec: &CookieSecret,
    src: SocketAddr,
    dst: SocketAddr,
    peer_isn: TcpSeqNumber,
    mss: u16,
    now: Instant,
) -> (TcpSeqNumber, u16) {
    let m = (now.total_millis() / 60000) as u32;
    let idx = if mss >= 1460 {
        3
    } else if mss >= 1220 {
        2
    } else if mss >= 536 {
        1
    } else {
        0
    };
    (
        TcpSeqNumber(((h(sec, src, dst, peer_isn, m) & !0xff) | (m & 0x3f) << 2 | idx) as i32),
        [256u16, 536, 1220, 1460][idx as usize],
    )
}
pub fn cookie_check(
    sec: &CookieSecret,
    src: SocketAddr,
    dst: SocketAddr,
    peer_isn: TcpSeqNumber,
    cookie: TcpSeqNumber,
    now: Instant,
) -> Option<u16> {
    let m = (now.total_millis() / 60000) as u32;
    for d in 0..2u32 {
        let mm = m.wrapping_sub(d);
        let c = cookie.0 as u32;
        if (c >> 2) & 0x3f == mm & 0x3f && (c & !0xff) == (h(sec, src, dst, peer_isn, mm) & !0xff) {
            return Some([256u16, 536, 1220, 1460][(c & 3) as usize]);
        }
    }
    None
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieOpts {
    pub wscale: Option<u8>,
    pub sack: bool,
}
pub fn cookie_tsval(now_tsval: u32, o: CookieOpts) -> u32 {
    let opt = o.wscale.map_or(0xf, |w| w as u32 & 0xf) | if o.sack { 0x10 } else { 0 } | 0x20;
    let ts = (now_tsval & !0x3f) | opt;
    if ts > now_tsval {
        ts.wrapping_sub(0x40)
    } else {
        ts
    }
}
pub fn cookie_decode_tsecr(tsecr: u32) -> Option<CookieOpts> {
    if tsecr & 0x20 == 0 {
        return None;
    }
    let w = tsecr & 0xf;
    Some(CookieOpts {
        wscale: (w != 0xf).then_some(w as u8),
        sack: tsecr & 0x10 != 0,
    })
}
