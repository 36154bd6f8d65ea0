//! `omsgate check-config` on the shipped `config.toml`, and `omsgate print-config`: defaults
//! filled in, secrets masked, the output a valid config again, a bad file rejected with 64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn omsgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run omsgate {args:?}: {e}"))
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omsgate-ops-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let path = shipped_config();
    let out = omsgate(&["check-config", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "check-config config.toml: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn print_config_fills_defaults_masks_secrets_and_round_trips() {
    let secret = "hs256-secret-that-must-not-leak";
    let path = temp_file(
        "secret.toml",
        &format!(
            r#"
[identity]
mode = "jwt"
jwt_secret = "{secret}"

[[route]]
name = "invoice"
path = "/api/v1/invoices/{{id}}"
"#
        ),
    );
    let out = omsgate(&["print-config", "-c", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "print-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(secret), "secret printed:\n{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    assert!(stdout.contains("jwt_secret = \"********\""), "{stdout}");
    // Defaults of sections the file does not mention are filled in.
    for line in [
        "listen = \"0.0.0.0:8080\"",
        "shutdown_grace = \"30s\"",
        "servers = [\"127.0.0.1:8000\"]",
        "format = \"text\"",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    // The output is a valid config file itself.
    let again = temp_file("effective.toml", &stdout);
    let out = omsgate(&["check-config", &again.display().to_string()]);
    assert!(
        out.status.success(),
        "check-config on print-config output: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn print_config_rejects_a_bad_config_with_every_problem() {
    let path = temp_file(
        "bad.toml",
        r#"
[server]
listen = "nowhere"
shutdown_grace = "forever"
"#,
    );
    let out = omsgate(&["print-config", "-c", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(stderr.contains("server.shutdown_grace"), "{stderr}");
    assert!(out.stdout.is_empty());
}
