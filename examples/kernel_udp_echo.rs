//! UDP echo served by kernel sockets: the reference side of the netstack
//! echo benchmark (`bench/netstack_udp_echo.sh`).
//!
//! `kernel_udp_echo --bind ADDR:PORT [--bind ADDR:PORT ...]`
//!
//! One plain UDP socket and one thread per `--bind`; each thread does
//! `recv_from` then `send_to` of the same bytes back to the sender, one
//! datagram at a time (no recvmmsg/sendmmsg), the same work the userspace
//! stack's echo does per datagram. Runs until SIGTERM or SIGINT; the sockets
//! have a read timeout so the threads notice the stop flag. On exit it prints
//! the per-socket counts to stderr.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "UDP echo on kernel sockets, one thread per bound socket")]
struct Args {
    /// Address to serve, e.g. 198.18.200.2:5060 or [2001:db8:200::2]:5060 (repeatable).
    #[arg(long, required = true)]
    bind: Vec<SocketAddr>,
    /// SO_RCVBUF/SO_SNDBUF in bytes (0 = kernel default).
    #[arg(long, default_value_t = 0)]
    sockbuf: usize,
}

/// Counts kept by one echo thread.
#[derive(Default, Debug)]
struct Counts {
    received: u64,
    echoed: u64,
    send_errors: u64,
    recv_errors: u64,
}

fn open(addr: SocketAddr, sockbuf: usize) -> Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("socket")?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    sock.set_reuse_address(true).context("SO_REUSEADDR")?;
    if sockbuf > 0 {
        sock.set_recv_buffer_size(sockbuf).context("SO_RCVBUF")?;
        sock.set_send_buffer_size(sockbuf).context("SO_SNDBUF")?;
    }
    sock.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .context("SO_RCVTIMEO")?;
    Ok(sock.into())
}

fn serve(sock: UdpSocket, stop: Arc<AtomicBool>) -> Counts {
    let mut counts = Counts::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                counts.received += 1;
                match sock.send_to(&buf[..n], peer) {
                    Ok(_) => counts.echoed += 1,
                    Err(_) => counts.send_errors += 1,
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => counts.recv_errors += 1,
        }
    }
    counts
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));

    // Signal handlers first, so a SIGTERM right after "listening" is caught.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
        )
    };

    let mut workers = Vec::new();
    for addr in &args.bind {
        let sock = open(*addr, args.sockbuf)?;
        let local = sock.local_addr().context("local_addr")?;
        let stop = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name(format!("echo-{local}"))
            .spawn(move || serve(sock, stop))
            .context("spawn")?;
        eprintln!("kernel_udp_echo: listening on {local}");
        workers.push((local, handle));
    }

    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });

    stop.store(true, Ordering::Relaxed);
    for (local, handle) in workers {
        match handle.join() {
            Ok(c) => eprintln!(
                "kernel_udp_echo: {local}: received {} echoed {} send_errors {} recv_errors {}",
                c.received, c.echoed, c.send_errors, c.recv_errors
            ),
            Err(_) => eprintln!("kernel_udp_echo: {local}: thread panicked"),
        }
    }
    Ok(())
}
