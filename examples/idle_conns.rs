//! Idle TCP connections for `bench/idle_conns.sh` (memory per idle
//! connection, issue 8).
//!
//! `idle_conns --target IP:PORT --count N [--sources 16 | --bind A,B,...]
//!            [--batch 500] [--messages 1] [--hold-secs 600]`
//!
//! Opens `count` TCP connections to `target`, each bound before connect to
//! one of `sources` loopback addresses (127.0.0.2, 127.0.0.3, ... in turn;
//! about 28,000 ephemeral ports each), or of the `--bind` list (e.g. the
//! client addresses of a network namespace in afpacket mode), sends one OPTIONS addressed to the
//! proxy itself (answered 200 by it, no upstream needed) and reads the
//! reply, `batch` connections at a time. Then it prints one JSON line on
//! stdout, `{"count","ok","failed","seconds"}`, and holds every connection
//! open (idle) for `hold-secs` or until killed. The caller raises `ulimit -n`
//! (this program and the proxy each need one descriptor per connection).
//! With `--messages M` (> 1) every connection then exchanges M - 1 more
//! OPTIONS, one per connection per round (a CPU-per-message workload for
//! callgrind; the JSON line then also has `"messages"`).
//! Exit status 2 when a connection could not be opened or answered.

use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Opts {
    target: SocketAddr,
    count: usize,
    sources: u8,
    bind: Vec<IpAddr>,
    batch: usize,
    messages: usize,
    hold_secs: u64,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        target: SocketAddr::from(([127, 0, 0, 1], 5060)),
        count: 10_000,
        sources: 16,
        bind: Vec::new(),
        batch: 500,
        messages: 1,
        hold_secs: 600,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a}: missing value"));
        match a.as_str() {
            "--target" => o.target = v()?.parse().map_err(|e| format!("--target: {e}"))?,
            "--count" => o.count = v()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--sources" => o.sources = v()?.parse().map_err(|e| format!("--sources: {e}"))?,
            "--bind" => {
                o.bind = v()?
                    .split(',')
                    .map(|a| a.trim().parse().map_err(|e| format!("--bind {a}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--batch" => o.batch = v()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--messages" => o.messages = v()?.parse().map_err(|e| format!("--messages: {e}"))?,
            "--hold-secs" => o.hold_secs = v()?.parse().map_err(|e| format!("--hold-secs: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.sources == 0 || o.sources > 250 || o.batch == 0 {
        return Err("--sources must be 1..=250, --batch at least 1".into());
    }
    Ok(o)
}

fn options(target: SocketAddr, local: SocketAddr, i: usize) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-idle-{i}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:idle@{local}>;tag=idle{i}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: idle-{i}@{local}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn open(o: &Opts, i: usize) -> std::io::Result<TcpStream> {
    let src = if o.bind.is_empty() {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % o.sources as usize) as u8))
    } else {
        o.bind[i % o.bind.len()]
    };
    let s = Socket::new(Domain::for_address(o.target), Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&o.target.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    let local = s.local_addr()?;
    (&s).write_all(options(o.target, local, i).as_bytes())?;
    Ok(s)
}

/// Read one reply (up to the end of its header section; the proxy's 200
/// to OPTIONS has no body) and check its status.
fn answered(s: &mut TcpStream) -> std::io::Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    // bounded: the buffer fills or the timeout fires
    while n < buf.len() {
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(buf[..n].starts_with(b"SIP/2.0 200"))
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("idle_conns: {e}");
            return ExitCode::from(1);
        }
    };
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(o.count);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut i = 0;
    while i < o.count {
        let start = held.len();
        let end = (i + o.batch).min(o.count);
        for j in i..end {
            match open(&o, j) {
                Ok(s) => held.push(s),
                Err(e) => {
                    failed += 1;
                    if failed <= 5 {
                        eprintln!("idle_conns: connection {j}: {e}");
                    }
                }
            }
        }
        for s in &mut held[start..] {
            match answered(s) {
                Ok(true) => ok += 1,
                Ok(false) => failed += 1,
                Err(e) => {
                    failed += 1;
                    if failed <= 5 {
                        eprintln!("idle_conns: reply: {e}");
                    }
                }
            }
        }
        i = end;
    }
    // more exchanges on the same connections (bounded: messages - 1 rounds)
    for round in 1..o.messages {
        for (k, s) in held.iter_mut().enumerate() {
            let Ok(local) = s.local_addr() else {
                continue;
            };
            let req = options(o.target, local, round * o.count + k);
            if s.write_all(req.as_bytes()).is_err() {
                failed += 1;
            }
        }
        for s in &mut held {
            match answered(s) {
                Ok(true) => ok += 1,
                _ => failed += 1,
            }
        }
    }
    println!(
        "{{\"count\":{},\"messages\":{},\"ok\":{ok},\"failed\":{failed},\"seconds\":{:.2}}}",
        o.count,
        o.messages,
        t0.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(o.hold_secs));
    drop(held);
    if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
