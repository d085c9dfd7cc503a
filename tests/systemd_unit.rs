//! etc/systemd/sipedge.service: the directives the packaging promises, the
//! shipped config passes the unit's `ExecStartPre` check, and — when
//! `systemd-analyze` is installed (apt package `systemd`) — `systemd-analyze
//! verify` accepts the unit without a warning and `systemd-analyze security`
//! rates it well. Needs neither root nor a running systemd; skips the
//! systemd-analyze part (with a message) when the tool is missing.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const INSTALLED_BIN: &str = "/usr/local/bin/sipedge";

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("etc/systemd/sipedge.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read etc/systemd/sipedge.service")
}

/// `key=value` lines of the unit (comments skipped).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn has(text: &str, key: &str, value: &str) -> bool {
    directives(text).iter().any(|(k, v)| k == key && v == value)
}

#[test]
fn systemd_unit_has_the_promised_directives() {
    let t = unit_text();
    for (k, v) in [
        ("User", "sipedge"),
        ("Group", "sipedge"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("LimitNOFILE", "65536"),
        ("RestartPreventExitStatus", "2"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert!(has(&t, k, v), "{k}={v} missing from the unit");
    }
    let families = directives(&t)
        .into_iter()
        .find(|(k, _)| k == "RestrictAddressFamilies")
        .map(|(_, v)| v)
        .expect("RestrictAddressFamilies");
    for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.split_whitespace().any(|x| x == f), "{f} allowed");
    }
    assert!(
        !families.contains("AF_PACKET"),
        "AF_PACKET only for afpacket mode"
    );
    // afpacket mode is documented, commented out
    assert!(
        t.contains("#AmbientCapabilities=CAP_NET_RAW"),
        "afpacket note"
    );
    assert!(
        t.contains("#CapabilityBoundingSet=CAP_NET_RAW"),
        "afpacket note"
    );
    assert!(t.contains("add AF_PACKET"), "AF_PACKET note");
    // both commands use the installed binary and the installed config
    assert!(has(
        &t,
        "ExecStart",
        &format!("{INSTALLED_BIN} --config /etc/sipedge/sipedge.toml")
    ));
    assert!(has(
        &t,
        "ExecStartPre",
        &format!("{INSTALLED_BIN} check-config /etc/sipedge/sipedge.toml")
    ));
}

/// What `ExecStartPre` runs, with the config the README installs.
#[test]
fn systemd_unit_exec_start_pre_accepts_the_shipped_config() {
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("etc/sipedge.toml");
    let out = Command::new(sipedge_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("run sipedge check-config");
    assert!(
        out.status.success(),
        "check-config {cfg:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit with the test build of the binary in place of the installed one
/// (verify checks that the executables exist), in a fresh directory.
fn unit_for_test(dir: &Path) -> PathBuf {
    let bin = sipedge_bin();
    let text = unit_text().replace(INSTALLED_BIN, &bin.to_string_lossy());
    let path = dir.join("sipedge.service");
    std::fs::write(&path, text).expect("write unit");
    path
}

/// Run `systemd-analyze ARGS`, bounded; (success, stdout + stderr).
fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let dir = unit.parent().expect("dir");
    let mut child = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("out")).expect("out"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("err")).expect("err"),
        ))
        .spawn()
        .expect("spawn systemd-analyze");
    let status = stop_child_after(&mut child, Duration::from_secs(60));
    let out = std::fs::read_to_string(dir.join("out")).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    (status.is_some_and(|s| s.success()), out)
}

/// Wait up to `timeout`, then kill the child (by its own handle).
fn stop_child_after(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    match wait_child(child, timeout) {
        Some(st) => Some(st),
        None => {
            let _ = child.kill();
            let _ = wait_child(child, Duration::from_secs(5));
            None
        }
    }
}

fn skip_without_systemd_analyze() -> bool {
    if which("systemd-analyze").is_some() {
        return false;
    }
    eprintln!("SKIPPED: systemd-analyze not installed (apt-get install systemd)");
    true
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if skip_without_systemd_analyze() {
        return;
    }
    let dir = unique_temp_dir("systemd");
    let unit = unit_for_test(&dir);
    let (ok, out) = analyze(&["verify"], &unit);
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(
        !out.contains("sipedge.service"),
        "systemd-analyze verify warns about the unit:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_security_exposure_is_low() {
    if skip_without_systemd_analyze() {
        return;
    }
    let dir = unique_temp_dir("systemd-sec");
    let unit = unit_for_test(&dir);
    let (ok, out) = analyze(&["security", "--offline=yes", "--no-pager"], &unit);
    if !ok && out.contains("--offline") {
        eprintln!("SKIPPED: this systemd-analyze has no --offline (systemd < 250)\n{out}");
        return;
    }
    let level = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sipedge.service:")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 2.5, "exposure {level} (want <= 2.5):\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
