//! UDP receive: one task per worker socket. A datagram is one message
//! (RFC 3261 §18.3); a parse failure only drops it (after the nosip hook).

use super::conn::ConnCache;
use super::{Ctx, dispatch};
use crate::config::Transport;
use crate::core::{RcvInfo, Scratch};
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
        ctx.metrics.bytes_in(Transport::Udp, n);
        let rcv = RcvInfo {
            src,
            local,
            transport: Transport::Udp,
            conn: None,
            outbound: false,
        };
        let outcome = ctx.core.receive_datagram(&buf[..n], &rcv, &mut sc);
        dispatch(
            &ctx,
            outcome,
            &sc,
            received_at,
            Some((&sock, local)),
            &mut cache,
        )
        .await;
    }
}
