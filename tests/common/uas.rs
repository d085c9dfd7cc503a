//! A small SIP server for upstream tests (sipp's built-in `uas` does not
//! answer OPTIONS): on 127.0.0.1:port over UDP and TCP it answers INVITE
//! (180, then 200), BYE, CANCEL, OPTIONS and the rest 200 as a UAS does,
//! never answers ACK — or, in [`UasMode::Unavailable`], answers every
//! request 503. Counts the requests it got by method. Stopped (sockets
//! closed, threads joined) on drop; bounded to 120 s in any case.

use super::{LOCALHOST, reply_200};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest life of a test UAS.
const MAX_LIFE: Duration = Duration::from_secs(120);
/// Largest message accepted on TCP.
const MAX_MSG: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasMode {
    /// Answers as a working server.
    Normal,
    /// Answers every request 503 Service Unavailable (an overloaded server).
    Unavailable,
}

/// Requests seen, by method.
#[derive(Debug, Default)]
pub struct Counts(Mutex<HashMap<String, u64>>);

impl Counts {
    pub fn get(&self, method: &str) -> u64 {
        self.0
            .lock()
            .map_or(0, |m| m.get(method).copied().unwrap_or(0))
    }
    /// Requests of calls: everything but OPTIONS (the probes).
    pub fn calls(&self) -> u64 {
        self.0.lock().map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "OPTIONS")
                .map(|(_, v)| v)
                .sum()
        })
    }
    fn add(&self, method: &str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(method.to_string()).or_insert(0) += 1;
        }
    }
}

pub struct TestUas {
    pub port: u16,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestUas {
    /// Start on 127.0.0.1:`port` (UDP and TCP). `Err` when a port is taken.
    pub fn start(port: u16, mode: UasMode) -> std::io::Result<TestUas> {
        TestUas::start_on(LOCALHOST.parse().expect("literal"), port, mode)
    }

    /// Start on `ip`:`port` (call it inside a namespace to serve there:
    /// the sockets stay in the namespace they were made in).
    pub fn start_on(ip: IpAddr, port: u16, mode: UasMode) -> std::io::Result<TestUas> {
        let udp = UdpSocket::bind((ip, port))?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let tcp = TcpListener::bind((ip, port))?;
        tcp.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                udp_loop(udp, mode, &stop, &counts)
            }));
        }
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                tcp_loop(tcp, mode, &stop, &counts)
            }));
        }
        Ok(TestUas {
            port,
            counts,
            stop,
            threads,
        })
    }

    /// Start on a port, retrying a few times while it is still in use
    /// (the same port again after a stop).
    pub fn restart(port: u16, mode: UasMode) -> TestUas {
        let mut last = None;
        for _ in 0..50 {
            match TestUas::start(port, mode) {
                Ok(u) => return u,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("test UAS cannot bind port {port}: {last:?}");
    }
}

impl Drop for TestUas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The replies to one request (none for ACK).
fn answer(req: &str, mode: UasMode, counts: &Counts) -> Vec<String> {
    let method = req.split(' ').next().unwrap_or("").to_string();
    counts.add(&method);
    if method == "ACK" {
        return Vec::new();
    }
    let ok = reply_200(req);
    if mode == UasMode::Unavailable {
        return vec![ok.replacen("SIP/2.0 200 OK", "SIP/2.0 503 Service Unavailable", 1)];
    }
    match method.as_str() {
        "INVITE" => vec![ok.replacen("SIP/2.0 200 OK", "SIP/2.0 180 Ringing", 1), ok],
        _ => vec![ok],
    }
}

fn udp_loop(sock: UdpSocket, mode: UasMode, stop: &AtomicBool, counts: &Counts) {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFE {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
        if req.starts_with("SIP/2.0") || req.trim().is_empty() {
            continue;
        }
        for r in answer(&req, mode, counts) {
            let _ = sock.send_to(r.as_bytes(), from);
        }
    }
}

fn tcp_loop(l: TcpListener, mode: UasMode, stop: &Arc<AtomicBool>, counts: &Arc<Counts>) {
    let t0 = Instant::now();
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFE {
        match l.accept() {
            Ok((s, _)) => {
                let (stop, counts) = (stop.clone(), counts.clone());
                conns.push(std::thread::spawn(move || {
                    tcp_conn(s, mode, &stop, &counts)
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    drop(l);
    for c in conns {
        let _ = c.join();
    }
}

/// One connection: frame by Content-Length, answer each request.
fn tcp_conn(mut s: TcpStream, mode: UasMode, stop: &AtomicBool, counts: &Counts) {
    let t0 = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFE {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        if buf.len() > MAX_MSG {
            return;
        }
        while let Some(len) = message_len(&buf) {
            let msg = String::from_utf8_lossy(&buf[..len])
                .trim_start()
                .to_string();
            buf.drain(..len);
            if msg.starts_with("SIP/2.0") {
                continue;
            }
            for r in answer(&msg, mode, counts) {
                if s.write_all(r.as_bytes()).is_err() {
                    return;
                }
            }
        }
        // keep-alive CRLFs between messages
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
    }
}

/// Length of the first complete message in `buf` (head + Content-Length body).
fn message_len(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let head_end = super::find(&buf[start..], b"\r\n\r\n")? + start + 4;
    let head = String::from_utf8_lossy(&buf[start..head_end]);
    let cl = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim().to_ascii_lowercase();
            (k == "content-length" || k == "l").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + cl).then_some(head_end + cl)
}
