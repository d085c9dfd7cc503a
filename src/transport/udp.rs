//! UDP receive: one thread per worker socket, sleeping in `recvfrom` itself
//! (Kamailio's `udp_rcv_loop` shape). A datagram is one message (RFC 3261
//! §18.3); a parse failure only drops it (after the nosip hook). The thread
//! runs the core and sends the result before it reads the next datagram.
//!
//! Why a thread and not a runtime task: on u1 at 1000 calls/s a task paid,
//! per datagram burst, an `epoll_wait` round, a `recvfrom` that found
//! nothing, and the runtime's park / unpark (≈ 3.9 extra syscalls per call,
//! BENCHMARKS.md §4); a blocking `recvfrom` is woken by the sender directly.
//! The thread holds a handle of the runtime, so what the core starts
//! (outbound TCP connects, resolves, a UDP send retried later) still runs
//! there. Stateful mode: after a datagram, the thread also runs the
//! transaction timer round when one is due, so while traffic flows the timer
//! task (`transaction_timers`) does not wake for it.

use super::Ctx;
use super::conn::ConnCache;
use super::kernel::{KernelEgress, transaction_round};
use crate::core::Scratch;
use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65535;

/// Receive on `sock` (listen index `local`) until `stop` is set: looked at
/// after every datagram and at least every [`super::kernel::UDP_RECV_TIMEOUT`].
pub fn udp_receive_thread(
    ctx: Arc<Ctx>,
    sock: Arc<UdpSocket>,
    local: usize,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let _rt = rt.enter();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sc = Scratch::new();
    let mut cache = ConnCache::default();
    let mut txn_out = crate::core::transaction::Out::default();
    let stateful = ctx.core.stateful().is_some();
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue; // the receive timeout: look at `stop`
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
            cork: None,
        };
        ctx.step()
            .receive_datagram(&mut eg, &buf[..n], src, local, &mut sc, received_at);
        if stateful && ctx.core.claim_transaction_round(ctx.core.now_ms()) {
            transaction_round(&ctx, &mut eg, &mut txn_out);
        }
    }
}

/// The receive threads of every UDP socket; stopped (and joined) by
/// [`UdpThreads::stop`] or when dropped.
#[derive(Default)]
pub struct UdpThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpThreads {
    /// Start one receive thread for `sock` (listen index `local`).
    pub fn start(&mut self, ctx: &Arc<Ctx>, sock: Arc<UdpSocket>, local: usize) -> io::Result<()> {
        let (ctx, stop, rt) = (
            ctx.clone(),
            self.stop.clone(),
            tokio::runtime::Handle::current(),
        );
        let t = std::thread::Builder::new()
            .name("sipedge-udp".into())
            .spawn(move || udp_receive_thread(ctx, sock, local, rt, stop))?;
        self.threads.push(t);
        Ok(())
    }

    /// Stop the threads and wait for them (each within one receive timeout;
    /// their sockets are closed when this returns).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for UdpThreads {
    fn drop(&mut self) {
        // not joined here (this may run on a runtime thread): they exit
        // within one receive timeout
        self.stop.store(true, Ordering::Relaxed);
    }
}
