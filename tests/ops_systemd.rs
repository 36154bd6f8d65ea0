//! `systemd/omsgate.service` (DESIGN.md capability 9): the settings the issue asks for are
//! there, its command lines are ones the binary accepts, and — where `systemd-analyze` is
//! installed (Debian package `systemd`) — `systemd-analyze verify` is clean and the
//! `systemd-analyze security` exposure stays at or below 2.0.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = include_str!("../systemd/omsgate.service");
const INSTALLED_BIN: &str = "/usr/local/bin/omsgate";
const INSTALLED_CONFIG: &str = "/etc/omsgate/config.toml";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_omsgate")
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

/// Every `Key=value` of the unit, in order (a key may repeat).
fn settings() -> Vec<(&'static str, &'static str)> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn values(key: &str) -> Vec<&'static str> {
    settings()
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

fn value(key: &str) -> &'static str {
    match values(key).as_slice() {
        [v] => v,
        other => panic!("expected exactly one {key}= in the unit, found {other:?}"),
    }
}

/// The unit's command line with the installed paths replaced by this build's.
fn local_argv(command: &str) -> Vec<String> {
    command
        .split_whitespace()
        .map(|w| match w {
            INSTALLED_BIN => bin().to_string(),
            INSTALLED_CONFIG => repo_config().display().to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn unit_has_the_required_settings() {
    assert_eq!(
        value("ExecStartPre"),
        format!("{INSTALLED_BIN} check-config {INSTALLED_CONFIG}")
    );
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("DynamicUser"), "yes");
    assert_eq!(value("StateDirectory"), "omsgate");
    assert_eq!(value("WorkingDirectory"), "/var/lib/omsgate");
    assert!(value("LimitNOFILE").parse::<u64>().unwrap_or(0) >= 65536);
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("KillSignal", "SIGTERM"),
        ("RestartPreventExitStatus", "64"),
    ] {
        assert_eq!(value(key), expected, "{key}");
    }
    assert!(values("SystemCallFilter").contains(&"@system-service"));
    // systemd must wait longer than the gateway drains, or it kills a clean shutdown.
    let stop: u64 = value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap_or(0);
    let config = omsgate::config::Config::load(&repo_config())
        .unwrap_or_else(|e| panic!("config.toml: {e}"));
    assert!(
        stop > config.server.shutdown_grace.as_secs(),
        "TimeoutStopSec={stop}s must exceed server.shutdown_grace"
    );
}

#[test]
fn unit_command_lines_are_accepted_by_the_binary() {
    let pre = local_argv(value("ExecStartPre"));
    let out = Command::new(&pre[0])
        .args(&pre[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pre:?}: {e}"));
    assert!(
        out.status.success(),
        "ExecStartPre {pre:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = local_argv(value("ExecStart"));
    let mut argv = vec!["omsgate".to_string()];
    argv.extend(start[1..].iter().cloned());
    if let Err(e) = <omsgate::cli::Cli as clap::Parser>::try_parse_from(&argv) {
        panic!("ExecStart arguments {argv:?} are not accepted: {e}");
    }
}

fn systemd_analyze() -> Option<PathBuf> {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from("systemd-analyze"))
}

#[test]
fn systemd_analyze_verify_and_security() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("systemd-analyze not installed (Debian package `systemd`); skipping verify");
        return;
    };
    let dir = std::env::temp_dir().join(format!("omsgate-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let unit = dir.join("omsgate.service");
    // verify checks that the executables exist: point them at this build.
    std::fs::write(&unit, UNIT.replace(INSTALLED_BIN, bin()))
        .unwrap_or_else(|e| panic!("{}: {e}", unit.display()));

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze verify: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("omsgate.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // Exposure is reported 0.0-10.0; --threshold takes it times ten.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze security: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no summary line");
    eprintln!("{summary}");
    assert!(
        out.status.success(),
        "exposure above 2.0 or security failed: {summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
