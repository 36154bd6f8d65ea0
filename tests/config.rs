//! `omsgate check-config`: the shipped sample passes; mistakes are all listed with their keys.

mod common;

use common::Gateway;

#[test]
fn shipped_sample_config_passes() {
    let out = std::process::Command::new(Gateway::bin())
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config.toml is invalid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn three_mistakes_are_all_listed_with_their_keys_and_exit_64() {
    let (code, stderr) = Gateway::check_config(
        r#"
[server]
listen = "not-an-address"
[upstream]
servers = ["127.0.0.1:8000"]
connect_timeout = "5 parsecs"
[[route]]
name = "invoice"
path = "api/v1/invoices"
"#,
    );
    assert_eq!(code, 64, "{stderr}");
    for key in ["server.listen", "upstream.connect_timeout", "route[0].path"] {
        assert!(stderr.contains(key), "`{key}` missing from:\n{stderr}");
    }
    assert!(stderr.contains("3 configuration problem"), "{stderr}");
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let (code, stderr) = Gateway::check_config(
        "[server]\nlisten = \"127.0.0.1:8080\"\nthreadz = 4\n[[route]]\nname = \"a\"\npath = \"/a\"\nmethod = [\"GET\"]\n",
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("server.threadz: unknown key"), "{stderr}");
    assert!(stderr.contains("route[0].method: unknown key"), "{stderr}");
}

#[test]
fn syntax_errors_exit_64_without_panicking() {
    let (code, stderr) = Gateway::check_config("[server\nlisten = ");
    assert_eq!(code, 64, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
