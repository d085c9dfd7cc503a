//! UDP receive: one task per worker socket. A datagram is one message
//! (RFC 3261 §18.3); a parse failure only drops it (after the nosip hook).

use super::Ctx;
use super::conn::ConnCache;
use super::kernel::KernelEgress;
use crate::core::Scratch;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65535;

pub async fn udp_worker(ctx: Arc<Ctx>, sock: Arc<UdpSocket>, local: usize) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sc = Scratch::new();
    let mut cache = ConnCache::default();
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // e.g. ECONNREFUSED reported for an earlier send: not fatal
                tracing::debug!("udp recv error: {e}");
                continue;
            }
        };
        let received_at = Instant::now();
        let mut eg = KernelEgress {
            ctx: &ctx,
            own_udp: Some((&sock, local)),
            cache: &mut cache,
        };
        ctx.step()
            .receive_datagram(&mut eg, &buf[..n], src, local, &mut sc, received_at);
    }
}
