//! Configuration reload (DESIGN.md capability 9) under continuous load: SIGHUP and the admin
//! `POST /reload` swap routes and upstream servers for new requests without a failed request;
//! a broken file is rejected with its problems and the old configuration keeps serving;
//! restart-only changes are reported as such.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn config(server: SocketAddr, route: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2

[admin]
listen = "{{admin}}"

[upstream]
servers = ["{server}"]
health_check = {{ path = "/health", interval = "200ms", timeout = "500ms" }}

[[route]]
name = "{route}"
path = "/api/v1/invoices/{{id}}"
methods = ["GET"]
"#
    )
}

/// Replaces the gateway's config file atomically (write, then rename), as an operator should.
fn rewrite(gw: &Gateway, edit: impl FnOnce(String) -> String) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read config: {e}"));
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, edit(text)).unwrap_or_else(|e| panic!("write config: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename config: {e}"));
}

/// `POST /reload` on the admin listener: status and JSON body.
fn post_reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let addr = gw.admin_addr();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "POST /reload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {raw}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("body not JSON ({e}): {body}"));
    (status, json)
}

fn ready_hash(gw: &Gateway) -> String {
    let (_, body) = http_get(gw.admin_addr(), "/ready", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no /ready answer"));
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/ready not JSON ({e}): {body}"));
    v["config_hash"].as_str().unwrap_or_default().to_owned()
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metric_value("omsgate_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

fn assert_all_ok(outcomes: &[load::Outcome], gw: &Gateway) {
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).take(5).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {failed:?}\nlog tail:\n{}",
        outcomes.iter().filter(|o| !o.ok()).count(),
        outcomes.len(),
        tail(&gw.log(), 30)
    );
}

#[test]
fn reload_under_load_swaps_routes_and_upstreams_without_a_failed_request() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    let gw = Gateway::start(&config(a.addr, "ops_before"));
    let initial_hash = ready_hash(&gw);

    // Keepalive clients and one that connects anew for every request.
    let url = gw.url("/api/v1/invoices/42");
    let reused = Load::start(url.clone(), 3, Connections::Reused, 20_000);
    let fresh = Load::start(url, 1, Connections::Fresh, 5_000);
    assert!(reused.wait_for_more(100, WAIT), "load did not get going");

    // 1. SIGHUP with a new upstream server and a renamed route.
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    rewrite(&gw, |t| {
        t.replace(&a_addr, &b_addr)
            .replace("ops_before", "ops_after")
    });
    gw.signal("HUP");
    assert!(
        wait_for(WAIT, || reloads(&gw, "ok") >= 1.0),
        "no successful reload:\n{}",
        tail(&gw.log(), 30)
    );
    let reloaded_hash = ready_hash(&gw);
    assert_ne!(reloaded_hash, initial_hash);
    assert!(reused.wait_for_more(200, WAIT));
    // Every request that started after the reload goes to the new server, under the new route.
    let b_hits = b.hits();
    assert!(reused.wait_for_more(100, WAIT));
    assert!(b.hits() >= b_hits + 100);
    let recent = reused.outcomes();
    let recent = &recent[recent.len() - 50..];
    assert!(
        recent
            .iter()
            .all(|o| o.upstream.as_deref() == Some(&b_addr)),
        "after the reload, responses still came from the old server: {recent:?}"
    );
    let after = gw
        .metric_value("omsgate_http_requests_total", &[("route", "ops_after")])
        .unwrap_or(0.0);
    assert!(after >= 100.0, "route ops_after counted {after} requests");
    assert!(
        gw.metric_value("omsgate_http_requests_total", &[("route", "ops_before")])
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        gw.metric_value("omsgate_config_info", &[("hash", &reloaded_hash)]),
        Some(1.0)
    );
    assert_eq!(
        gw.metric_value("omsgate_config_info", &[("hash", &initial_hash)]),
        None,
        "the old hash is still reported"
    );

    // 2. A broken file, by POST /reload and by SIGHUP: rejected, the running config stays.
    rewrite(&gw, |t| {
        t.replace("threads = 2", "threads = 2\nthreads_typo = 3")
            .replace("\"200ms\"", "\"soon\"")
    });
    let (status, outcome) = post_reload(&gw);
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["result"], "rejected");
    let problems = outcome["problems"].to_string();
    assert!(problems.contains("server.threads_typo"), "{problems}");
    assert!(
        problems.contains("upstream.health_check.interval"),
        "{problems}"
    );
    gw.signal("HUP");
    assert!(wait_for(WAIT, || reloads(&gw, "rejected") >= 2.0));
    assert_eq!(
        ready_hash(&gw),
        reloaded_hash,
        "a rejected reload changed the config"
    );
    let log = gw.log();
    assert!(
        log.contains("Configuration reload rejected"),
        "{}",
        tail(&log, 30)
    );
    assert!(log.contains("server.threads_typo"), "{}", tail(&log, 30));
    let b_hits = b.hits();
    assert!(reused.wait_for_more(100, WAIT));
    assert!(b.hits() >= b_hits + 100, "the old config stopped serving");

    // 3. A restart-only change applies nothing of itself but is named; the rest applies.
    rewrite(&gw, |t| {
        t.replace("threads_typo = 3\n", "")
            .replace("threads = 2", "threads = 3")
            .replace("\"soon\"", "\"200ms\"")
            .replace("ops_after", "ops_third")
    });
    let (status, outcome) = post_reload(&gw);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["result"], "ok");
    assert_eq!(
        outcome["restart_required"],
        serde_json::json!(["server.threads"])
    );
    assert_eq!(outcome["previous_hash"], reloaded_hash.as_str());
    assert_eq!(outcome["hash"], ready_hash(&gw).as_str());
    assert!(gw.log().contains("need a restart"));
    assert!(reused.wait_for_more(100, WAIT));
    assert!(
        gw.metric_value("omsgate_http_requests_total", &[("route", "ops_third")])
            .unwrap_or(0.0)
            > 0.0
    );

    let reused = reused.stop();
    let fresh = fresh.stop();
    assert_all_ok(&reused, &gw);
    assert_all_ok(&fresh, &gw);
    assert!(a.hits() > 0 && fresh.len() > 10);
    assert!(reused.len() >= 600);
}

#[test]
fn reload_keeps_health_state_of_kept_servers_and_checks_new_ones() {
    let a = TestUpstream::start();
    let gw = Gateway::start(&config(a.addr, "ops_health"));
    // A server that is down joins the pool: it is checked before the pool goes live, so no
    // request is sent to it.
    let dead = {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
    };
    let a_addr = a.addr.to_string();
    rewrite(&gw, |t| {
        t.replace(
            &format!("servers = [\"{a_addr}\"]"),
            &format!("servers = [\"{a_addr}\", \"{dead}\"]"),
        )
        .replace("interval = \"200ms\"", "interval = \"1h\"")
    });
    let (status, outcome) = post_reload(&gw);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["upstream_servers_changed"], true);
    let (_, ready) = http_get(gw.admin_addr(), "/ready", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no /ready"));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_default();
    let servers = &ready["dependencies"]["upstream"]["servers"];
    assert_eq!(
        servers,
        &serde_json::json!([
            { "server": a_addr, "healthy": true },
            { "server": dead.to_string(), "healthy": false },
        ]),
        "{ready}"
    );
    // With the next health check an hour away, every request still goes to the live server.
    let load = Load::start(gw.url("/api/v1/invoices/1"), 2, Connections::Reused, 200);
    assert!(wait_for(WAIT, || !load.running()));
    let outcomes = load.stop();
    assert_eq!(outcomes.len(), 200);
    assert_all_ok(&outcomes, &gw);
    assert_eq!(
        gw.metric_value("omsgate_upstream_errors_total", &[])
            .unwrap_or(0.0),
        0.0
    );
}

/// The hash the gateway reports for the config file as it is on disk now.
fn file_hash(path: &std::path::Path) -> String {
    omsgate::config::Config::load(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash
}

/// Waits (up to 10 s) until the gateway has logged its first line: from then on its early
/// SIGHUP handler is installed, and its background services have not started yet.
fn wait_for_first_log_line(gw: &Gateway) {
    assert!(
        wait_for(Duration::from_secs(10), || gw.log().contains("Bootstrap")),
        "no log line during start: {}",
        gw.log()
    );
}

#[test]
fn a_sighup_during_start_is_applied_and_an_edit_without_one_is_not() {
    let a = TestUpstream::start();
    // Edited and signalled during start: the reload service catches up when it starts.
    let signalled = Gateway::start_and(&config(a.addr, "ops_start_before"), &[], |gw| {
        wait_for_first_log_line(gw);
        rewrite(gw, |t| t.replace("ops_start_before", "ops_start_after"));
        gw.signal("HUP");
    });
    let edited_hash = file_hash(signalled.config_path());
    assert!(
        wait_for(WAIT, || ready_hash(&signalled) == edited_hash),
        "the SIGHUP during start was lost: running {} , file {edited_hash}\n{}",
        ready_hash(&signalled),
        tail(&signalled.log(), 20)
    );
    assert_eq!(reloads(&signalled, "ok"), 1.0);

    // Edited during start without a signal: the running config stays until a reload.
    let quiet = Gateway::start_and(&config(a.addr, "ops_quiet_before"), &[], |gw| {
        wait_for_first_log_line(gw);
        rewrite(gw, |t| t.replace("ops_quiet_before", "ops_quiet_after"));
    });
    let loaded = ready_hash(&quiet);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ready_hash(&quiet), loaded);
    assert_eq!(reloads(&quiet, "ok"), 0.0);
    let (status, outcome) = post_reload(&quiet);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["previous_hash"], loaded.as_str());
    assert_eq!(outcome["hash"], file_hash(quiet.config_path()).as_str());
}
