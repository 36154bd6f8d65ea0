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

/// A value of the wrong type does not hide the rest: it is reported with its key path, and the
/// other problems of the file are listed with it (a route missing its name too, without
/// shifting the index of the routes after it).
#[test]
fn type_errors_are_listed_with_their_keys_together_with_every_other_problem() {
    let (code, stderr) = Gateway::check_config(
        r#"
[server]
threads = -1
listen = "not-an-address"
[upstream]
retries = "twice"
connect_timeout = "5 parsecs"
[compression]
level = "high"
[[route]]
name = "a"
path = "/a"
cache = { ttl = 60, scope = "tenant" }
[[route]]
path = "/no-name"
[[route]]
name = "c"
path = "c"
"#,
    );
    assert_eq!(code, 64, "{stderr}");
    for line in [
        "server.threads: invalid value: integer `-1`, expected usize",
        "server.listen:",
        "upstream.retries: invalid type: string \"twice\"",
        "upstream.connect_timeout:",
        "compression.level: invalid type: string \"high\"",
        "route[0].cache.ttl: invalid type: integer `60`",
        "route[1]: missing field `name`",
        "route[2].path:",
    ] {
        assert!(stderr.contains(line), "`{line}` missing from:\n{stderr}");
    }
    assert!(stderr.contains("8 configuration problem"), "{stderr}");
    assert!(!stderr.contains("TOML parse error"), "{stderr}");
}

#[test]
fn syntax_errors_exit_64_without_panicking() {
    let (code, stderr) = Gateway::check_config("[server\nlisten = ");
    assert_eq!(code, 64, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_query_route_without_a_database_url_is_reported() {
    let (code, stderr) = Gateway::check_config(
        r#"
[upstream]
servers = ["127.0.0.1:8000"]
[database]
url_env = "OMSGATE_TEST_SURELY_UNSET_VARIABLE"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET"]
query = "invoice_with_lines"
[queries.invoice_with_lines]
sql = "SELECT omsgate_invoice_with_lines($tenant, $id)"
params.id = { from = "path", type = "uuid" }
"#,
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("route[0].query"), "{stderr}");
    assert!(
        stderr.contains("$OMSGATE_TEST_SURELY_UNSET_VARIABLE"),
        "{stderr}"
    );
}

#[test]
fn a_listen_address_in_use_is_a_clear_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = common::TestDir::new("in_use");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{addr}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             [upstream]\nservers = [\"127.0.0.1:9\"]\n[audit]\nspool_dir = \"{}\"\n",
            common::free_port(),
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(Gateway::bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::wait_for(std::time::Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "the gateway kept running with its address in use");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn a_read_buffer_out_of_range_is_reported() {
    let (code, stderr) = Gateway::check_config(
        "[server]\nread_buffer = \"100B\"\n[upstream]\nservers = [\"127.0.0.1:8000\"]\n",
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("server.read_buffer"), "{stderr}");
}

#[test]
fn a_read_buffer_of_zero_means_none_and_is_the_default() {
    let (code, stderr) = Gateway::check_config(
        "[server]\nread_buffer = 0\n[upstream]\nservers = [\"127.0.0.1:8000\"]\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let config = omsgate::config::Config::parse("[upstream]\nservers = [\"127.0.0.1:8000\"]\n")
        .expect("a minimal config parses");
    assert_eq!(config.server.read_buffer, 0);
}
