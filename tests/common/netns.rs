//! Network-namespace fixtures for the afpacket-mode integration tests
//! (DESIGN.md "Testing"): a pair of namespaces joined by a veth pair, the
//! peer end with Linux addresses (198.18.N.1/24, 2001:db8:N::1/64), the
//! stack end with no address and IPv6 disabled, both removed by a Drop
//! guard (also when the test panics); running code inside a namespace on a
//! thread of its own (setns affects only the calling thread); the
//! `netstack_echo` example as a child process stopped by its own PID.
//!
//! Every command and every wait here is bounded in time. Only addresses in
//! 198.18.0.0/15 and 2001:db8::/32, only inside namespaces made here.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use sipedge::netstack::device::Device;
use sipedge::netstack::device::afpacket::{AfPacket, enter_netns, wait_fd};
use sipedge::netstack::{RxChecksum, RxMeta};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};

/// Run `cmd` with its output captured; kill it after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < timeout => sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output();
                panic!("{desc} did not finish within {timeout:?}: {out:?}");
            }
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
}

/// Run a command that must succeed (10 s bound); returns its stdout.
pub fn must(prog: &str, args: &[&str]) -> String {
    let out = run_bounded(Command::new(prog).args(args), Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{prog} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `true` (after printing why) when `prog` is missing and skipping is
/// allowed; panics in strict mode (see `super::strict`).
pub fn skip_unless_tool(prog: &str, package: &str) -> bool {
    if super::which(prog).is_some() {
        return false;
    }
    let msg = format!("{prog} not installed (apt-get install {package})");
    if super::strict() {
        panic!("{msg}, and SIPEDGE_REQUIRE_ROOT_TESTS=1 / CI=true forbids skipping");
    }
    eprintln!("SKIPPED: {msg}");
    true
}

/// Two namespaces and a veth pair between them (see the module doc), or
/// with [`NetnsPair::new_impaired`] two veth pairs through a third
/// namespace where a userspace middlebox forwards frames with loss,
/// reordering and duplication.
#[derive(Debug)]
pub struct NetnsPair {
    /// Namespace with the Linux peer (`sep{pid}{n}`).
    pub peer_ns: String,
    /// Namespace where the stack runs (`ses{pid}{n}`).
    pub stack_ns: String,
    pub peer_if: String,
    pub stack_if: String,
    /// Subnet number: 198.18.N.0/24, 2001:db8:N::/64.
    pub n: u8,
    /// The middlebox namespace, when impaired.
    pub mid: Option<Middlebox>,
}

impl NetnsPair {
    /// Create the pair; panics (after removing what was made) on failure.
    pub fn new() -> NetnsPair {
        Self::build(None)
    }

    /// Peer and stack joined through a middlebox namespace that forwards
    /// every frame between two veth pairs with `imp` applied in both
    /// directions (netem is not built into every kernel). The peer's veth
    /// ends send no GSO aggregates (gso_max_segs 1), so that every frame fits
    /// the MTU and can be forwarded one by one.
    pub fn new_impaired(imp: Impairment) -> NetnsPair {
        Self::build(Some(imp))
    }

    fn build(imp: Option<Impairment>) -> NetnsPair {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut pair = NetnsPair {
            peer_ns: format!("sep{pid}{seq}"),
            stack_ns: format!("ses{pid}{seq}"),
            peer_if: format!("vep{pid}{seq}"),
            stack_if: format!("ves{pid}{seq}"),
            n: (seq % 250 + 1) as u8,
            mid: imp.map(|imp| Middlebox {
                ns: format!("sem{pid}{seq}"),
                peer_side: format!("vmp{pid}{seq}"),
                stack_side: format!("vms{pid}{seq}"),
                imp,
                stop: Arc::new(AtomicBool::new(false)),
                stats: Arc::new(ImpairStats::default()),
                thread: None,
            }),
        };
        assert!(pair.peer_ns.len() <= 15 && pair.peer_if.len() <= 15);
        // The guard exists from here on: a failing step below still
        // removes whatever was made.
        let mut all = vec![pair.peer_ns.clone(), pair.stack_ns.clone()];
        all.extend(pair.mid.as_ref().map(|m| m.ns.clone()));
        for ns in &all {
            if Path::new("/var/run/netns").join(ns).exists() {
                // Left over by a killed run with the same PID.
                let _ = run_bounded(
                    Command::new("ip").args(["netns", "del", ns]),
                    Duration::from_secs(10),
                );
            }
            must("ip", &["netns", "add", ns]);
        }
        let (p, s, pi, si) = (
            pair.peer_ns.as_str(),
            pair.stack_ns.as_str(),
            pair.peer_if.as_str(),
            pair.stack_if.as_str(),
        );
        match &pair.mid {
            None => {
                must(
                    "ip",
                    &[
                        "link", "add", si, "netns", s, "type", "veth", "peer", "name", pi, "netns",
                        p,
                    ],
                );
            }
            Some(m) => {
                let (mn, mp, ms) = (m.ns.as_str(), m.peer_side.as_str(), m.stack_side.as_str());
                must(
                    "ip",
                    &[
                        "link", "add", pi, "netns", p, "type", "veth", "peer", "name", mp, "netns",
                        mn,
                    ],
                );
                must(
                    "ip",
                    &[
                        "link", "add", si, "netns", s, "type", "veth", "peer", "name", ms, "netns",
                        mn,
                    ],
                );
                // No GSO aggregates from either end (a Linux stack on the
                // stack side in the harness test): frames fit the MTU.
                must("ip", &["-n", p, "link", "set", pi, "gso_max_segs", "1"]);
                must("ip", &["-n", s, "link", "set", si, "gso_max_segs", "1"]);
                for i in [mp, ms] {
                    must(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            mn,
                            "sysctl",
                            "-qw",
                            &format!("net.ipv6.conf.{i}.disable_ipv6=1"),
                        ],
                    );
                    must("ip", &["-n", mn, "link", "set", i, "up"]);
                }
            }
        }
        // Peer: Linux addresses; no DAD so they are usable at once.
        pair.sysctl_peer(&format!("net.ipv6.conf.{pi}.accept_dad=0"));
        let v4 = format!("{}/24", pair.peer_v4());
        let v6 = format!("{}/64", pair.peer_v6());
        must("ip", &["-n", p, "addr", "add", &v4, "dev", pi]);
        must("ip", &["-n", p, "addr", "add", &v6, "dev", pi, "nodad"]);
        // Stack side: no kernel address at all.
        pair.sysctl_stack(&format!("net.ipv6.conf.{si}.disable_ipv6=1"));
        must("ip", &["-n", p, "link", "set", "lo", "up"]);
        must("ip", &["-n", p, "link", "set", pi, "up"]);
        must("ip", &["-n", s, "link", "set", si, "up"]);
        if let Some(m) = &mut pair.mid {
            m.start();
        }
        pair
    }

    pub fn peer_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 1)
    }

    pub fn stack_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 2)
    }

    pub fn peer_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, u16::from(self.n), 0, 0, 0, 0, 1)
    }

    pub fn stack_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, u16::from(self.n), 0, 0, 0, 0, 2)
    }

    /// `sysctl -w` inside the peer namespace.
    pub fn sysctl_peer(&self, kv: &str) {
        must("ip", &["netns", "exec", &self.peer_ns, "sysctl", "-qw", kv]);
    }

    /// `sysctl -w` inside the stack namespace.
    pub fn sysctl_stack(&self, kv: &str) {
        must(
            "ip",
            &["netns", "exec", &self.stack_ns, "sysctl", "-qw", kv],
        );
    }

    /// `ip -n PEER args…` (must succeed).
    pub fn ip_peer(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.peer_ns.as_str()];
        a.extend_from_slice(args);
        must("ip", &a)
    }

    fn link_mac(ns: &str, ifname: &str) -> [u8; 6] {
        let out = must("ip", &["-n", ns, "-o", "link", "show", "dev", ifname]);
        let text = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {out:?}"));
        parse_mac(text).unwrap_or_else(|| panic!("bad MAC {text:?}"))
    }

    /// Static (permanent) neighbour entries on the peer for the stack's
    /// IPv4 and IPv6 addresses, for tests whose stack side answers no ARP /
    /// NDP.
    pub fn peer_knows_stack_mac(&self) {
        let mac = fmt_mac(self.stack_mac());
        for ip in [self.stack_v4().to_string(), self.stack_v6().to_string()] {
            self.ip_peer(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                &self.peer_if,
                "nud",
                "permanent",
            ]);
        }
    }

    /// MAC of the stack-side veth end.
    pub fn stack_mac(&self) -> [u8; 6] {
        Self::link_mac(&self.stack_ns, &self.stack_if)
    }

    /// MAC of the peer-side veth end.
    pub fn peer_mac(&self) -> [u8; 6] {
        Self::link_mac(&self.peer_ns, &self.peer_if)
    }

    /// Run `f` on a new thread inside the peer namespace.
    pub fn in_peer<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.peer_ns, f)
    }

    /// Run `f` on a new thread inside the stack namespace.
    pub fn in_stack<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.stack_ns, f)
    }

    /// Does the namespace `name` exist?
    pub fn exists(name: &str) -> bool {
        Path::new("/var/run/netns").join(name).exists()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let mut all = vec![self.peer_ns.clone(), self.stack_ns.clone()];
        if let Some(m) = &mut self.mid {
            m.stop.store(true, Ordering::Relaxed);
            if let Some(t) = m.thread.take() {
                let _ = t.join();
            }
            all.push(m.ns.clone());
        }
        // Deleting a namespace destroys the veth end in it, and with it the
        // other end.
        for ns in &all {
            let r = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(r, Ok(s) if s.success()) {
                eprintln!("warning: `ip netns del {ns}` failed: {r:?}");
            }
        }
    }
}

/// Run `f` on a fresh thread moved into the namespace `ns` (setns(2)
/// through `sipedge::netstack::device::afpacket::enter_netns`); sockets it
/// opens stay in that namespace. Panics in `f` propagate.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    let h = std::thread::spawn(move || {
        enter_netns(&path).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(m)
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `netstack_echo` example binary, built next to this test binary, or
/// `$NETSTACK_ECHO_BIN` (see [`example_bin`]).
pub fn netstack_echo_bin() -> PathBuf {
    example_bin("netstack_echo", "NETSTACK_ECHO_BIN")
}

/// The `tcp_peer` example binary (the Linux-side TCP tool), or
/// `$TCP_PEER_BIN` (see [`example_bin`]).
pub fn tcp_peer_bin() -> PathBuf {
    example_bin("tcp_peer", "TCP_PEER_BIN")
}

/// An example binary built next to this test binary, or `$env`.
/// `cargo build --examples` leaves it at target/<profile>/examples/NAME;
/// `cargo test --all-targets` builds it only under a hashed name
/// (`NAME-<hash>`, next to the example's own unit-test harness). All are
/// tried, newest first (so a stale copy loses), taking the first that
/// answers `--version` with `NAME `.
pub fn example_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> → target/<profile>/examples/
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .join("examples");
    let plain = dir.join(name);
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let hash = file.strip_prefix(name)?;
            if !(hash.is_empty()
                || hash
                    .strip_prefix('-')
                    .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit())))
            {
                return None;
            }
            Some((e.metadata().ok()?.modified().ok()?, e.path()))
        })
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, p) in candidates {
        let out = run_bounded(Command::new(&p).arg("--version"), Duration::from_secs(10));
        if out.status.success() && out.stdout.starts_with(format!("{name} ").as_bytes()) {
            return p;
        }
    }
    panic!(
        "{} is missing: build the examples first with `cargo build --examples` \
         (`cargo test --all-targets` builds them too)",
        plain.display()
    );
}

/// The receive path of the `AF_PACKET` device under test (issue 9: the
/// TPACKET_V3 ring and the plain socket both pass the netns tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// One recvmsg per frame.
    Socket,
    /// The mmap'd TPACKET_V3 ring.
    Ring,
}

impl Rx {
    /// The `--rx-ring` value of netstack_echo.
    pub fn arg(self) -> &'static str {
        match self {
            Rx::Socket => "off",
            Rx::Ring => "on",
        }
    }

    /// What `AfPacket::rx_mode` reports.
    pub fn mode(self) -> &'static str {
        match self {
            Rx::Socket => "socket",
            Rx::Ring => "ring",
        }
    }
}

/// Make each named `fn NAME(rx: Rx)` of the test file two tests,
/// `rx_socket::NAME` and `rx_ring::NAME` (the file must have `Rx` in scope).
#[macro_export]
macro_rules! in_both_rx_modes {
    ($($name:ident),* $(,)?) => {
        mod rx_socket {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Rx::Socket)
                }
            )*
        }
        mod rx_ring {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Rx::Ring)
                }
            )*
        }
    };
}

/// A running `netstack_echo` (or another child: [`EchoProc::spawn`]), with
/// its stderr collected line by line.
pub struct EchoProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// Everything read from stderr so far.
    pub stderr: String,
}

impl EchoProc {
    /// Start the example inside the stack namespace (`ip netns exec`, which
    /// execs it: the child's PID is the example's) on the stack interface
    /// with 198.18.N.2/24 and 2001:db8:N::2/64 plus `extra` arguments, and
    /// wait (≤ 10 s) for its "ready" line.
    pub fn start(pair: &NetnsPair, extra: &[&str]) -> EchoProc {
        let bin = netstack_echo_bin();
        let v4 = format!("{}/24", pair.stack_v4());
        let v6 = format!("{}/64", pair.stack_v6());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.stack_ns])
            .arg(&bin)
            .args(["--iface", &pair.stack_if, "--ipv4", &v4, "--ipv6", &v6])
            .args(extra)
            .env("RUST_LOG", "info");
        Self::spawn(cmd, "netstack_echo ready")
    }

    /// [`Self::start`] with the receive path `rx` (`--rx-ring on|off`;
    /// `on` fails rather than fall back), checked on the ready line.
    pub fn start_rx(pair: &NetnsPair, rx: Rx, extra: &[&str]) -> EchoProc {
        let mut args = vec!["--rx-ring", rx.arg()];
        args.extend_from_slice(extra);
        let p = Self::start(pair, &args);
        let want = format!("rx_mode={}", rx.mode());
        assert!(p.stderr.contains(&want), "no {want}:\n{}", p.stderr);
        p
    }

    /// Start `cmd` (stdout discarded, stderr collected) and wait (≤ 10 s)
    /// for a stderr line containing `ready`. `cmd` must exec the program
    /// (as `ip netns exec` does) so that the child's PID is the program's.
    pub fn spawn(mut cmd: Command, ready: &str) -> EchoProc {
        let desc = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = EchoProc {
            child,
            lines: rx,
            reader: Some(reader),
            stderr: String::new(),
        };
        if !p.wait_for(ready, Duration::from_secs(10)) {
            let st = p.child.try_wait();
            panic!(
                "{desc} did not become ready (exit: {st:?}); stderr:\n{}",
                p.stderr
            );
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collect stderr until `count` lines (in all of stderr so far) contain
    /// every one of `needles` (true) or `timeout` passes.
    pub fn wait_for_lines(&mut self, needles: &[&str], count: usize, timeout: Duration) -> bool {
        let matching = |s: &str| {
            s.lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .count()
        };
        let t0 = Instant::now();
        while matching(&self.stderr) < count {
            let Some(left) = timeout.checked_sub(t0.elapsed()) else {
                return false;
            };
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.stderr.push_str(&l);
                    self.stderr.push('\n');
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Collect stderr until a line contains `needle` (true) or `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        if self.stderr.contains(needle) {
            return true;
        }
        let t0 = Instant::now();
        while let Some(left) = timeout.checked_sub(t0.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.stderr.push_str(&l);
                    self.stderr.push('\n');
                    if l.contains(needle) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() >= timeout {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to our child's PID; its exit status if it exits within 5 s
    /// (else it is killed and None returned). All of stderr is collected.
    pub fn stop(mut self) -> (Option<ExitStatus>, String) {
        self.signal("TERM");
        let st = self.wait_exit(Duration::from_secs(5));
        if st.is_none() {
            self.signal("KILL");
            let _ = self.wait_exit(Duration::from_secs(5));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        while let Ok(l) = self.lines.try_recv() {
            self.stderr.push_str(&l);
            self.stderr.push('\n');
        }
        (st, std::mem::take(&mut self.stderr))
    }
}

impl Drop for EchoProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("KILL");
            let _ = self.wait_exit(Duration::from_secs(5));
        }
    }
}

/// `ip netns exec NS PROG`: `ip` execs PROG in the namespace (no fork), so
/// the spawned child's PID is PROG's own and can be signalled directly.
pub fn netns_exec(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(prog);
    cmd
}

/// The `/proc/PID/net/` table of `addr`'s family (`proto` or `proto6`)
/// and the `local_address` column `addr` has there (hex, network order as
/// the kernel prints it).
fn proc_net_entry(proto: &str, addr: std::net::SocketAddr) -> (String, String) {
    let (file, ip_hex) = match addr.ip() {
        std::net::IpAddr::V4(ip) => (
            proto.to_string(),
            format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        ),
        std::net::IpAddr::V6(ip) => (
            format!("{proto}6"),
            ip.octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
    };
    (file, format!("{ip_hex}:{:04X}", addr.port()))
}

/// Is a UDP socket bound to `addr` in the network namespace of process
/// `pid`? Reads /proc/PID/net/udp{,6} (no packet sent).
pub fn udp_bound_in_pid(pid: u32, addr: std::net::SocketAddr) -> bool {
    let (file, want) = proc_net_entry("udp", addr);
    std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(&want))
    })
}

/// Is a TCP socket listening on `addr` in the network namespace of process
/// `pid`? Reads /proc/PID/net/tcp{,6} (state 0A = LISTEN; no packet sent).
pub fn tcp_listening_in_pid(pid: u32, addr: std::net::SocketAddr) -> bool {
    let (file, want) = proc_net_entry("tcp", addr);
    std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

impl NetnsPair {
    /// Add 198.18.N.`host`/24 to the peer's veth (an extra Linux client
    /// address); returns it.
    pub fn add_peer_v4(&self, host: u8) -> Ipv4Addr {
        let a = Ipv4Addr::new(198, 18, self.n, host);
        self.ip_peer(&["addr", "add", &format!("{a}/24"), "dev", &self.peer_if]);
        a
    }

    /// `tcp_peer ARGS…` inside the peer namespace with `nofile` open files
    /// allowed (prlimit), killed after `timeout`. Returns its JSON line
    /// (the last stdout line), whether it exited 0, and its stderr.
    pub fn tcp_peer(&self, args: &[&str], nofile: u32, timeout: Duration) -> PeerRun {
        let lim = format!("--nofile={nofile}:{nofile}");
        let mut cmd = netns_exec(&self.peer_ns, "prlimit");
        cmd.arg(lim).arg(tcp_peer_bin()).args(args);
        let out = run_bounded(&mut cmd, timeout);
        let stdout = String::from_utf8_lossy(&out.stdout);
        PeerRun {
            json: stdout.lines().last().unwrap_or("").to_string(),
            success: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `tcp_peer serve ARGS…` running in the peer namespace until dropped.
    pub fn tcp_peer_server(&self, args: &[&str]) -> EchoProc {
        let mut cmd = netns_exec(&self.peer_ns, tcp_peer_bin());
        cmd.arg("serve").args(args);
        EchoProc::spawn(cmd, "tcp_peer serving")
    }
}

/// What one `tcp_peer` run printed.
#[derive(Debug)]
pub struct PeerRun {
    pub json: String,
    pub success: bool,
    pub stderr: String,
}

impl PeerRun {
    /// The run exited 0 and said `"ok":true`.
    pub fn ok(&self) -> bool {
        self.success && json_field(&self.json, "ok") == Some("true")
    }

    /// A numeric field of the JSON line.
    pub fn num(&self, key: &str) -> Option<f64> {
        json_field(&self.json, key)?.parse().ok()
    }
}

/// The raw text of field `key` in a flat one-line JSON object (strings
/// keep their quotes); enough for tcp_peer's output.
pub fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat)? + pat.len();
    let rest = &json[start..];
    let end = if rest.starts_with('"') {
        let mut esc = false;
        rest.char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let stop = c == '"' && !esc;
                esc = c == '\\' && !esc;
                stop
            })
            .map(|(i, _)| i + 1)?
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

/// `Group.Name=N` from the example's "counters at exit" line.
pub fn exit_counter(stderr: &str, name: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("counters at exit"))?;
    let pat = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// the impairing middlebox
// ---------------------------------------------------------------------------

/// What the middlebox does to every frame, each direction on its own: drop
/// it (`loss_pct`), send it twice (`duplicate_pct`), or hold it back until
/// the next frame of the same direction has gone (`reorder_pct`; a held
/// frame goes after at most 2 ms without a successor).
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    pub loss_pct: f64,
    pub reorder_pct: f64,
    pub duplicate_pct: f64,
}

/// Frames the middlebox saw and what it did (both directions).
#[derive(Debug, Default)]
pub struct ImpairStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub reordered: AtomicU64,
    pub duplicated: AtomicU64,
    pub send_errors: AtomicU64,
}

impl ImpairStats {
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "forwarded={} dropped={} reordered={} duplicated={} send_errors={}",
            g(&self.forwarded),
            g(&self.dropped),
            g(&self.reordered),
            g(&self.duplicated),
            g(&self.send_errors)
        )
    }
}

/// The third namespace of an impaired pair and its forwarding thread.
#[derive(Debug)]
pub struct Middlebox {
    pub ns: String,
    pub peer_side: String,
    pub stack_side: String,
    pub imp: Impairment,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<ImpairStats>,
    thread: Option<JoinHandle<()>>,
}

/// One direction: a frame held back for reordering.
#[derive(Default)]
struct Lane {
    held: Option<(Vec<u8>, Instant)>,
}

/// How long a held frame waits for a successor.
const HOLD_MAX: Duration = Duration::from_millis(2);

impl Middlebox {
    fn start(&mut self) {
        let path = Path::new("/var/run/netns").join(&self.ns);
        let (pside, sside) = (self.peer_side.clone(), self.stack_side.clone());
        let (imp, stop, stats) = (self.imp, self.stop.clone(), self.stats.clone());
        let (tx, rx) = mpsc::channel();
        self.thread = Some(std::thread::spawn(move || {
            let opened = enter_netns(&path)
                .map_err(|e| format!("setns {}: {e}", path.display()))
                .and_then(|()| {
                    let a = AfPacket::open(&pside).map_err(|e| format!("{pside}: {e}"))?;
                    let b = AfPacket::open(&sside).map_err(|e| format!("{sside}: {e}"))?;
                    Ok((a, b))
                });
            match opened {
                Ok((a, b)) => {
                    let _ = tx.send(Ok(()));
                    forward(a, b, imp, &stop, &stats);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }));
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            other => panic!("middlebox did not start: {other:?}"),
        }
    }
}

/// xorshift64*, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn pct(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// Complete the L4 checksum of a frame whose sender left it to offload
/// (the receiving end of the next veth would not know it is partial).
fn fill_l4_checksum(f: &mut [u8]) {
    let Ok(eth) = EthernetFrame::new_checked(&f[..]) else {
        return;
    };
    let (src, dst, proto, l4) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(&f[14..]) else {
                return;
            };
            if ip.more_frags() || ip.frag_offset() != 0 {
                return;
            }
            let hl = usize::from(ip.header_len());
            let tl = usize::from(ip.total_len());
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.next_header(),
                14 + hl..14 + tl,
            )
        }
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(&f[14..]) else {
                return;
            };
            let pl = usize::from(ip.payload_len());
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.next_header(),
                54..54 + pl,
            )
        }
        _ => return,
    };
    let Some(seg) = f.get_mut(l4) else {
        return;
    };
    match proto {
        IpProtocol::Tcp => {
            if let Ok(mut t) = TcpPacket::new_checked(seg) {
                t.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut u) = UdpPacket::new_checked(seg) {
                u.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    }
}

fn send_counted(dev: &mut AfPacket, f: &[u8], stats: &ImpairStats) {
    match dev.send(f) {
        Ok(()) => {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Move what `from` has to `to`, impaired. Returns frames received.
fn pump(
    from: &mut AfPacket,
    to: &mut AfPacket,
    lane: &mut Lane,
    imp: Impairment,
    rng: &mut Rng,
    stats: &ImpairStats,
) -> usize {
    let mut got: Vec<(RxMeta, Vec<u8>)> = Vec::new();
    let n = from
        .recv_batch(64, &mut |m, f| got.push((m, f.to_vec())))
        .unwrap_or(0);
    for (meta, mut f) in got {
        if meta.l4_csum == RxChecksum::NotReady {
            fill_l4_checksum(&mut f);
        }
        if rng.pct() < imp.loss_pct {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let dup = rng.pct() < imp.duplicate_pct;
        if dup {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        if lane.held.is_none() && rng.pct() < imp.reorder_pct {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            if dup {
                send_counted(to, &f, stats);
            }
            lane.held = Some((f, Instant::now()));
            continue;
        }
        send_counted(to, &f, stats);
        if dup {
            send_counted(to, &f, stats);
        }
        if let Some((h, _)) = lane.held.take() {
            send_counted(to, &h, stats);
        }
    }
    if lane
        .held
        .as_ref()
        .is_some_and(|(_, t)| t.elapsed() >= HOLD_MAX)
        && let Some((h, _)) = lane.held.take()
    {
        send_counted(to, &h, stats);
    }
    n
}

/// The middlebox loop: `a` faces the peer, `b` the stack; runs until
/// `stop` (checked at least every few milliseconds).
fn forward(
    mut a: AfPacket,
    mut b: AfPacket,
    imp: Impairment,
    stop: &AtomicBool,
    stats: &ImpairStats,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("middlebox: {imp:?}, seed {seed:#x}");
    let mut rng = Rng(seed);
    let (mut to_stack, mut to_peer) = (Lane::default(), Lane::default());
    let (Some(fa), Some(fb)) = (a.poll_fd(), b.poll_fd()) else {
        return;
    };
    let mut busy = false;
    while !stop.load(Ordering::Relaxed) {
        let wait = if busy || to_stack.held.is_some() || to_peer.held.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        let _ = wait_fd(fa, false, wait);
        let n1 = pump(&mut a, &mut b, &mut to_stack, imp, &mut rng, stats);
        let _ = wait_fd(fb, false, if n1 > 0 { Duration::ZERO } else { wait });
        let n2 = pump(&mut b, &mut a, &mut to_peer, imp, &mut rng, stats);
        busy = n1 + n2 > 0;
    }
}
