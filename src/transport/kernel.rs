//! Kernel backend: sockets made with socket2, driven by tokio.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A UDP socket bound with SO_REUSEPORT (one per worker on the same address:
/// the kernel spreads flows over them) and large buffers.
pub fn udp_socket(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_port(true)?;
    // best effort: the kernel caps these at net.core.{r,w}mem_max
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A TCP listener (SO_REUSEADDR, backlog 1024).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}
