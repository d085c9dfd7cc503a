//! Operations: readiness (`/healthz`, `/ready`), the graceful drain on
//! SIGTERM, and the configuration reload on SIGHUP, against the real binary.
//!
//! sipedge is started here from a config file (not through `Proxy`, which
//! passes `--upstream`: a command-line flag wins over the file on reload
//! too). Every process is stopped by its PID; every wait is bounded.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A sipedge run from `dir/sipedge.toml` (rewritten by the reload tests).
struct Sipedge {
    child: Child,
    sip_port: u16,
    metrics_port: u16,
    dir: PathBuf,
    log: PathBuf,
}

fn config_text(sip_port: u16, metrics_port: u16, upstream_port: u16, extra: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"udp:127.0.0.1:{sip_port}\", \"tcp:127.0.0.1:{sip_port}\"]\n\
         upstreams = [\"sip:127.0.0.1:{upstream_port}\"]\n{extra}\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [log]\nlevel = \"debug\"\n"
    )
}

impl Sipedge {
    /// Start with upstream `127.0.0.1:upstream_port`; `extra` goes into `[proxy]`.
    fn start(upstream_port: u16, extra: &str) -> Sipedge {
        let sip_port = free_port();
        let metrics_port = free_port();
        let dir = unique_temp_dir("ops");
        let log = dir.join("sipedge.log");
        let s = Sipedge::spawn(sip_port, metrics_port, dir, log, upstream_port, extra);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if http_status(s.metrics_addr(), "/ready") == Some(200)
                && port_listening(sip_port, true)
            {
                return s;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("sipedge not ready within 10 s\n{}", s.log_tail());
    }

    fn spawn(
        sip_port: u16,
        metrics_port: u16,
        dir: PathBuf,
        log: PathBuf,
        upstream_port: u16,
        extra: &str,
    ) -> Sipedge {
        let cfg = dir.join("sipedge.toml");
        fs::write(
            &cfg,
            config_text(sip_port, metrics_port, upstream_port, extra),
        )
        .expect("write config");
        let logf = fs::File::create(&log).expect("create log");
        let child = Command::new(sipedge_bin())
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn sipedge");
        Sipedge {
            child,
            sip_port,
            metrics_port,
            dir,
            log,
        }
    }

    fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }
    fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }
    fn metric(&self, q: &str) -> f64 {
        metrics_scrape(self.metrics_addr())
            .ok()
            .and_then(|t| metric_value(&t, q))
            .unwrap_or(0.0)
    }
    fn wait_metric(&self, q: &str, want: f64, timeout: Duration) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(q);
            if v >= want || t0.elapsed() >= timeout {
                return v;
            }
            sleep(Duration::from_millis(50));
        }
    }
    fn rewrite(&self, upstream_port: u16, extra: &str) {
        let text = config_text(self.sip_port, self.metrics_port, upstream_port, extra);
        fs::write(self.dir.join("sipedge.toml"), text).expect("rewrite config");
    }
    fn signal(&self, sig: &str) {
        signal_pid(self.child.id(), sig);
    }
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn log_tail(&self) -> String {
        format!("--- sipedge log tail ---\n{}", tail(&self.log, 40))
    }
}

impl Drop for Sipedge {
    fn drop(&mut self) {
        // INT twice: drain, then stop at once
        if let Ok(None) = self.child.try_wait() {
            signal_pid(self.child.id(), "INT");
            sleep(Duration::from_millis(100));
        }
        stop_child(&mut self.child, "INT", Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("sipedge files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The HTTP status of `GET path` (Connection: close), None when unreachable.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Can a new TCP connection to `addr` be made?
fn tcp_connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Keep a TCP connection to sipedge busy (a CRLFCRLF keep-alive every
/// 300 ms) until it is closed or `stop` is set; returns how it ended
/// ("fin": a clean close seen before our next write).
fn keep_busy(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<&'static str> {
    let mut s = connect(addr);
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 256];
        for _ in 0..400 {
            if stop.load(Ordering::Relaxed) {
                return "stopped";
            }
            sleep(Duration::from_millis(300));
            // read first: a FIN that came meanwhile is seen before a write could draw a RST
            match s.read(&mut buf) {
                Ok(0) => return "fin",
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return "reset",
            }
            if s.write_all(b"\r\n\r\n").is_err() {
                return "write failed";
            }
        }
        "bound reached"
    })
}

#[test]
fn readiness_and_liveness_endpoints() {
    let up = free_port();
    let p = Sipedge::start(up, "");
    assert_eq!(http_status(p.metrics_addr(), "/healthz"), Some(200));
    assert_eq!(http_status(p.metrics_addr(), "/ready"), Some(200));
    assert_eq!(http_status(p.metrics_addr(), "/nope"), Some(404));
}

#[test]
fn drain_refuses_new_connections_and_exits_when_idle() {
    let up = free_port();
    let mut p = Sipedge::start(up, "drain_timeout_secs = 30");
    // an idle client connection: closed (FIN) about DRAIN_IDLE into the drain
    let mut idle = connect(p.sip_addr());
    let local = idle.local_addr().expect("local");
    idle.write_all(options_to_proxy(p.sip_port, "TCP", local, "drain1").as_bytes())
        .expect("send");
    read_sip_message(&mut idle, Duration::from_secs(2)).expect("OPTIONS answered");
    let t0 = Instant::now();
    p.signal("TERM");
    // /ready 503 and the listener closed, while the process still runs
    let mut ready = None;
    let mut refused = false;
    for _ in 0..40 {
        ready = http_status(p.metrics_addr(), "/ready");
        refused = !tcp_connects(p.sip_addr());
        if ready == Some(503) && refused {
            break;
        }
        sleep(Duration::from_millis(25));
    }
    assert_eq!(ready, Some(503), "{}", p.log_tail());
    assert!(refused, "new TCP connection accepted while draining");
    assert_eq!(http_status(p.metrics_addr(), "/healthz"), Some(200));
    match wait_closed(&mut idle, Duration::from_secs(8)) {
        CloseOutcome::Closed(_, _) => {}
        CloseOutcome::StillOpen(_) => panic!("idle connection not closed\n{}", p.log_tail()),
    }
    let st = p.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", p.log_tail());
    assert!(
        took < Duration::from_secs(8),
        "drain of an idle proxy took {took:?}"
    );
    let log = p.log_text();
    assert!(log.contains("reason=\"shutdown\""), "{}", p.log_tail());
    assert!(log.contains("drained"), "{}", p.log_tail());
}

#[test]
fn drain_ends_at_the_timeout_and_second_signal_stops_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let up = free_port();
    // a busy connection outlives a 2 s drain: closed at the timeout, with FIN
    let mut p = Sipedge::start(up, "drain_timeout_secs = 2");
    let busy = keep_busy(p.sip_addr(), Arc::new(AtomicBool::new(false)));
    sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    p.signal("TERM");
    let st = p.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", p.log_tail());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "drain took {took:?}"
    );
    assert_eq!(busy.join().expect("thread"), "fin", "{}", p.log_tail());
    assert!(p.log_text().contains("drain time over"), "{}", p.log_tail());

    // a long drain, cut short by a second signal
    let mut p = Sipedge::start(up, "drain_timeout_secs = 60");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_busy(p.sip_addr(), stop.clone());
    sleep(Duration::from_millis(500));
    p.signal("TERM");
    sleep(Duration::from_millis(1000));
    assert!(
        p.wait_exit(Duration::ZERO).is_none(),
        "exited before the drain ended"
    );
    let t1 = Instant::now();
    p.signal("INT");
    let st = p.wait_exit(Duration::from_secs(5));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", p.log_tail());
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "second signal took {:?}",
        t1.elapsed()
    );
    assert!(
        p.log_text().contains("second stop signal"),
        "{}",
        p.log_tail()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = busy.join();
}

/// SIGTERM during a sipp call load over one TCP connection: the calls on
/// it all complete, new connections are refused, sipedge exits 0 within
/// the drain time.
#[test]
fn drain_under_sipp_tcp_load_loses_no_call() {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    const CALLS: u32 = 300;
    const RATE: u32 = 60;
    const DRAIN: u64 = 20;
    let uas = SippUas::start(SippTransport::T1);
    let mut p = Sipedge::start(uas.port, &format!("drain_timeout_secs = {DRAIN}"));
    let target = p.sip_addr();
    let uac = std::thread::spawn(move || {
        run_uac(&UacOpts {
            target,
            transport: SippTransport::T1,
            calls: CALLS,
            rate: RATE,
            netns: None,
            local: None,
        })
    });
    // SIGTERM once a third of the calls went through
    let fwd = p.wait_metric(
        "sipedge_forwarded_total{kind=\"request\"}",
        f64::from(CALLS),
        Duration::from_secs(20),
    );
    assert!(
        fwd >= f64::from(CALLS),
        "load did not start\n{}",
        p.log_tail()
    );
    let t0 = Instant::now();
    p.signal("TERM");
    let mut refused = false;
    for _ in 0..40 {
        if !tcp_connects(p.sip_addr()) {
            refused = true;
            break;
        }
        sleep(Duration::from_millis(25));
    }
    assert!(refused, "new TCP connection accepted while draining");
    let res = uac.join().expect("uac thread");
    assert!(
        res.all_ok(CALLS),
        "calls on the existing connection failed during the drain\n{}\n{}",
        res.report(),
        p.log_tail()
    );
    let st = p.wait_exit(Duration::from_secs(DRAIN + 5));
    let took = t0.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", p.log_tail());
    assert!(
        took <= Duration::from_secs(DRAIN + 2),
        "exit {took:?} after SIGTERM"
    );
    assert!(
        p.log_text().contains("reason=\"shutdown\""),
        "{}",
        p.log_tail()
    );
}

/// `sipp -sn uas` over TCP bound to 0.0.0.0: reachable as 127.0.0.1:port
/// and 127.0.0.2:port, two upstream addresses sharing one dialog state (as
/// a cluster behind a virtual address would). Stopped by PID on drop.
struct SharedUas {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SharedUas {
    fn start() -> SharedUas {
        let port = free_port();
        let dir = unique_temp_dir("uas");
        let out = fs::File::create(dir.join("uas.out")).expect("create uas.out");
        let child = Command::new("sipp")
            .args(["-sn", "uas", "-i", "0.0.0.0", "-p", &port.to_string()])
            .args(["-t", "t1", "-nostdin", "-buff_size", "4194304"])
            .args(["-trace_err", "-error_file"])
            .arg(dir.join("uas_err.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn sipp UAS");
        let mut uas = SharedUas { child, port, dir };
        if !wait_listening(port, true, Duration::from_secs(10)) {
            let st = uas.child.try_wait();
            panic!("sipp UAS did not listen on {port} within 10 s (status {st:?})");
        }
        uas
    }
}

impl Drop for SharedUas {
    fn drop(&mut self) {
        stop_child(&mut self.child, "INT", Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("sipp UAS files kept in {:?}", self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGHUP with a new upstream while sipp calls run over TCP: new calls go
/// to the new upstream (a new connection), none fails, no connection is
/// closed. The two upstream addresses reach one UAS: sipedge is stateless
/// and routes a dialog's ACK and BYE by the upstream selection too, so a
/// dialog that straddles the reload must find its state at the new one.
#[test]
fn reload_moves_calls_to_new_upstream_under_tcp_load() {
    if skip_unless_sipp() {
        return;
    }
    let _load = load_lock();
    const CALLS: u32 = 400;
    const RATE: u32 = 50;
    let uas = SharedUas::start();
    let p = Sipedge::start(uas.port, "");
    let target = p.sip_addr();
    let uac = std::thread::spawn(move || {
        run_uac(&UacOpts {
            target,
            transport: SippTransport::T1,
            calls: CALLS,
            rate: RATE,
            netns: None,
            local: None,
        })
    });
    let fwd = p.wait_metric(
        "sipedge_forwarded_total{kind=\"request\"}",
        f64::from(CALLS) / 2.0,
        Duration::from_secs(20),
    );
    assert!(fwd > 0.0, "load did not start\n{}", p.log_tail());
    assert_eq!(
        p.metric("sipedge_tcp_connected_total"),
        1.0,
        "{}",
        p.log_tail()
    );
    let new_upstream = format!("sip:127.0.0.2:{}", uas.port);
    let text = fs::read_to_string(p.dir.join("sipedge.toml")).expect("config");
    let text = text.replace(&format!("sip:127.0.0.1:{}", uas.port), &new_upstream);
    fs::write(p.dir.join("sipedge.toml"), text).expect("rewrite");
    p.signal("HUP");
    let ok = p.wait_metric(
        "sipedge_config_reloads_total{result=\"ok\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(ok, 1.0, "{}", p.log_tail());
    let fwd_at_reload = p.metric("sipedge_forwarded_total{kind=\"request\"}");
    let res = uac.join().expect("uac thread");
    assert!(
        res.all_ok(CALLS),
        "calls failed across the reload\n{}\n{}",
        res.report(),
        p.log_tail()
    );
    assert!(
        fwd_at_reload < f64::from(CALLS) * 3.0 - 30.0,
        "the load was over before the reload took effect"
    );
    // the new upstream got its own connection and the calls after the
    // reload; sipedge closed nothing (the one `eof` is sipp closing its
    // own connection when done)
    assert_eq!(
        p.metric("sipedge_tcp_connected_total"),
        2.0,
        "{}",
        p.log_tail()
    );
    assert_eq!(p.metric("sipedge_tcp_connections"), 2.0, "{}", p.log_tail());
    let text = metrics_scrape(p.metrics_addr()).expect("scrape");
    let closed_by_us: f64 = samples(&text)
        .iter()
        .filter(|s| s.name == "sipedge_tcp_released_total")
        .filter(|s| s.labels.get("reason").map(String::as_str) != Some("eof"))
        .map(|s| s.value)
        .sum();
    assert_eq!(
        closed_by_us, 0.0,
        "connections closed during the reload\n{text}"
    );
    let log = p.log_text();
    assert!(log.contains(&new_upstream), "{}", p.log_tail());
    // the requests after the reload left on the new connection: bytes each
    // of sipedge's two upstream connections sent (kernel counters, `ss`)
    let sent = |ip: &str| bytes_sent_to(&format!("{ip}:{}", uas.port));
    let (old_b, new_b) = (sent("127.0.0.1"), sent("127.0.0.2"));
    eprintln!("bytes to upstreams: old {old_b:?} new {new_b:?} at reload {fwd_at_reload}");
    if let (Some(old_b), Some(new_b)) = (old_b, new_b) {
        let share = new_b as f64 / (old_b + new_b) as f64;
        let expected = 1.0 - fwd_at_reload / (f64::from(CALLS) * 3.0);
        assert!(
            old_b > 0 && new_b > 0 && (share - expected).abs() < 0.2,
            "bytes to the old upstream {old_b}, to the new {new_b}: share {share:.2}, expected about {expected:.2}"
        );
    } else {
        eprintln!("ss gave no byte counters: the per-connection split is not checked");
    }
}

/// `bytes_sent` of the established TCP connection to `dst` (ss -ti), if any.
fn bytes_sent_to(dst: &str) -> Option<u64> {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", "dst", dst])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_sent:")?.parse().ok())
}

#[test]
fn reload_of_invalid_file_keeps_running_config() {
    let up = free_port();
    let p = Sipedge::start(up, "");
    let mut c = connect(p.sip_addr());
    fs::write(p.dir.join("sipedge.toml"), "[proxy]\nupstreams = [\n").expect("write");
    p.signal("HUP");
    let err = p.wait_metric(
        "sipedge_config_reloads_total{result=\"error\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(err, 1.0, "{}", p.log_tail());
    assert!(
        p.log_text()
            .contains("configuration reload failed: the running configuration is kept"),
        "{}",
        p.log_tail()
    );
    // a valid file that fails validation: also kept
    p.rewrite(p.sip_port, "");
    p.signal("HUP");
    let err = p.wait_metric(
        "sipedge_config_reloads_total{result=\"error\"}",
        2.0,
        Duration::from_secs(5),
    );
    assert_eq!(err, 2.0, "{}", p.log_tail());
    assert!(p.log_text().contains("forwarding loop"), "{}", p.log_tail());
    // still serving, on the same connection
    assert_eq!(http_status(p.metrics_addr(), "/ready"), Some(200));
    let local = c.local_addr().expect("local");
    c.write_all(options_to_proxy(p.sip_port, "TCP", local, "after-bad-reload").as_bytes())
        .expect("send");
    let reply = read_sip_message(&mut c, Duration::from_secs(2)).expect("reply");
    assert_eq!(status_code(&reply), Some(200));
    assert_eq!(p.metric("sipedge_config_reloads_total{result=\"ok\"}"), 0.0);
}

#[test]
fn reload_refuses_restart_only_keys_by_name() {
    let up = free_port();
    let p = Sipedge::start(up, "workers = 2");
    let up2 = free_port();
    p.rewrite(up2, "workers = 3\nselection = \"call-id-hash\"");
    p.signal("HUP");
    let partial = p.wait_metric(
        "sipedge_config_reloads_total{result=\"partial\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(partial, 1.0, "{}", p.log_tail());
    let log = p.log_text();
    assert!(
        log.contains("`proxy.workers` changed but needs a restart"),
        "{}",
        p.log_tail()
    );
    // the reloadable keys of the same file were applied
    assert!(log.contains("proxy.selection"), "{}", p.log_tail());
    assert!(
        log.contains(&format!("sip:127.0.0.1:{up2}")),
        "{}",
        p.log_tail()
    );
}
