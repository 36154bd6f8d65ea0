//! `omsgate loadtest`: the scenario file's errors, the open arrival process against a slow
//! target, latency counted from the intended send time across a stall, the HTML report in
//! headless Chromium, and `--demo` in a short run.
//!
//! The targets are real servers: the simulated OMS, and in the stall test a small hyper server
//! that stops answering for one second.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, TestDir};
use http_body_util::Full;
use omsgate::loadtest::{self, scenario::Scenario, Progress};

fn quiet() -> Progress {
    Arc::new(|_: &str| {})
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn scenario_problems_are_listed_with_their_keys_and_exit_64() {
    let dir = TestDir::new("loadtest-bad");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[target]]
url = "https://oms.example"

[identity]
mode = "jwt"
jwt_secret = "x"

[load]
users = 0
think_time = "two seconds"
userz = 5

[mix]
zipf_s = 9.0

[objective]
p99 = "1 fortnight"
"#,
    )
    .unwrap();
    let out = Command::new(Gateway::bin())
        .arg("loadtest")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for key in [
        "target[0].url",
        "load.users",
        "load.think_time",
        "load.userz",
        "mix.zipf_s",
        "objective.p99",
    ] {
        assert!(
            err.contains(&format!("{key}:")),
            "{key} not named in:\n{err}"
        );
    }
}

#[test]
fn open_arrivals_keep_their_rate_when_the_target_takes_500_ms() {
    let rt = runtime();
    rt.block_on(async {
        // Unlimited workers: every request takes 500 ms, none queue behind another.
        let sim = omsgate::sim::start(
            "127.0.0.1:0".parse().unwrap(),
            omsgate::sim::SimOptions {
                latency: Duration::from_millis(500),
                workers: 0,
                tenants: 2,
                invoices_per_tenant: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let scenario = Scenario::parse(&format!(
            r#"
[[target]]
name = "sim"
url = "http://{}"
[identity]
jwt_secret = "{}"
tenants = ["acme", "globex"]
[load]
users = 10
ramp = "0s"
think_time = "250ms"
duration = "4s"
drain = "5s"
[mix]
invoices = 50
[capacity]
enabled = false
"#,
            sim.addr,
            omsgate::sim::DEMO_JWT_SECRET
        ))
        .unwrap();
        let report = loadtest::run(scenario, quiet()).await.unwrap();
        let main = &report.targets[0].main;
        // 10 users × 4 s / 0.25 s = 160 requests scheduled; a closed loop (send after the
        // answer) would manage 10 × 4 / 0.75 ≈ 53.
        assert!(
            (120..=200).contains(&main.all.requests),
            "{} requests (open model expects ~160, a closed loop ~53): {main:?}",
            main.all.requests
        );
        assert_eq!(main.all.errors + main.all.timeouts, 0, "{main:?}");
        assert!(
            main.all.p50_ms >= 490.0 && main.all.p50_ms < 1000.0,
            "p50 {} ms for a 500 ms target",
            main.all.p50_ms
        );
        sim.shutdown().await;
    });
}

/// A server that answers at once, except (with `stall`) that from one second after its first
/// request it holds every answer until two seconds after it.
async fn stalling_server(stall: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let first = first.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let first = first.clone();
                    async move {
                        let t0 = *first.get_or_init(Instant::now);
                        let (from, to) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
                        let now = Instant::now();
                        if stall && now >= from && now < to {
                            tokio::time::sleep_until(to.into()).await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{\"items\":[]}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[test]
fn latency_is_counted_from_the_intended_send_time_across_a_stall() {
    let rt = runtime();
    let dir = TestDir::new("loadtest-stall");
    let report = rt.block_on(async {
        let addr = stalling_server(true).await;
        let scenario = Scenario::parse(&format!(
            r#"
[[target]]
name = "stalls 1 s"
url = "http://{addr}"
[identity]
mode = "none"
[load]
rate = 50
users = 0
duration = "3s"
ramp = "0s"
sample = "250ms"
[mix]
invoice_read = 0
invoice_list = 1
payment_list = 0
invoice_write = 0
[capacity]
enabled = false
"#
        ))
        .unwrap();
        loadtest::run(scenario, quiet()).await.unwrap()
    });
    let all = report.targets[0].main.all.clone();
    // ~150 requests, a third of them scheduled during the stall: those waited from their
    // intended time to its end (1 s down to 0), so the top 1 % waited about 1 s and the top
    // 10 % more than half of it. A generator that counted from when it got to send (or waited
    // for answers) would show one slow request, not a third.
    assert!(all.requests >= 100, "{all:?}");
    assert!(
        all.p99_ms >= 850.0 && all.p99_ms <= 1500.0,
        "p99 {} ms, expected ~1000: {all:?}",
        all.p99_ms
    );
    assert!(all.p90_ms >= 400.0, "p90 {} ms: {all:?}", all.p90_ms);
    assert!(all.p50_ms < 200.0, "p50 {} ms: {all:?}", all.p50_ms);
    assert_eq!(all.errors + all.timeouts, 0);

    // The HTML report of this run renders in headless Chromium.
    let html = dir.path().join("report.html");
    std::fs::write(&html, loadtest::report::html(&report)).unwrap();
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.contains("<svg") && !text.contains("<script") && !text.contains("http-equiv"));
    assert!(
        !text.contains(" src=") && !text.contains("<link"),
        "not self-contained"
    );
    screenshot(&html, dir.path());
}

#[test]
fn latency_includes_the_load_generators_own_lateness() {
    // The target answers at once, on a runtime of its own thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async {
            tx.send(stalling_server(false).await).unwrap();
            futures::future::pending::<()>().await
        })
    });
    let addr = rx.recv().unwrap();
    // The load generator runs on one thread, which a task blocks for 1 s after 1 s (a stalled
    // generator: GC pause, descheduled VM). The requests due meanwhile go out late; counted from
    // their intended send time they waited up to 1 s, counted from when they left, ~1 ms.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            std::thread::sleep(Duration::from_secs(1));
        });
        let scenario = Scenario::parse(&format!(
            r#"
[[target]]
url = "http://{addr}"
[identity]
mode = "none"
[load]
rate = 50
users = 0
duration = "3s"
ramp = "0s"
[mix]
invoice_read = 0
invoice_list = 1
payment_list = 0
invoice_write = 0
[capacity]
enabled = false
"#
        ))
        .unwrap();
        loadtest::run(scenario, quiet()).await.unwrap()
    });
    let all = report.targets[0].main.all.clone();
    assert!(all.requests >= 100, "{all:?}");
    assert!(
        all.p99_ms >= 850.0 && all.p99_ms <= 1500.0,
        "p99 {} ms, expected ~1000: {all:?}",
        all.p99_ms
    );
    assert!(all.p90_ms >= 400.0, "p90 {} ms: {all:?}", all.p90_ms);
    assert!(all.p50_ms < 200.0, "p50 {} ms: {all:?}", all.p50_ms);
}

#[test]
fn pg_stat_statements_is_read_when_reachable_and_skipped_with_a_note_otherwise() {
    let rt = runtime();
    let database = common::database_url();
    let closed = format!("postgres://postgres@127.0.0.1:{}/test", common::free_port());
    for (url, reachable) in [(database.as_str(), true), (closed.as_str(), false)] {
        let report = rt.block_on(async {
            let addr = stalling_server(false).await;
            let scenario = Scenario::parse(&format!(
                r#"
[[target]]
url = "http://{addr}"
[identity]
mode = "none"
[load]
rate = 20
users = 0
duration = "1s"
ramp = "0s"
[mix]
invoice_read = 0
invoice_list = 1
payment_list = 0
invoice_write = 0
[capacity]
enabled = false
[database]
url = "{url}"
"#
            ))
            .unwrap();
            loadtest::run(scenario, quiet()).await.unwrap()
        });
        let main = &report.targets[0].main;
        assert!(main.all.requests > 0);
        let noted = report
            .notes
            .iter()
            .any(|n| n.contains("pg_stat_statements"));
        match main.db_statements_per_request {
            // Reachable with the extension: the target made no database traffic, so only other
            // clients' statements count, if any.
            Some(v) => assert!(reachable && v >= 0.0 && !noted, "{v} {:?}", report.notes),
            None => assert!(noted, "no note: {:?}", report.notes),
        }
    }
}

/// Renders `html` with headless Chromium; asserts a non-trivial PNG. Skips (with a message)
/// only when Chromium is not installed.
fn screenshot(html: &std::path::Path, dir: &std::path::Path) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(chromium) = chromium else {
        eprintln!("SKIPPED: chromium is not installed; the HTML report was not rendered");
        return;
    };
    let png = dir.join("report.png");
    let profile = dir.join("chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,900")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    // A blank 1200×900 page is a PNG of a few KB; charts and tables make it far larger.
    assert!(
        size > 30_000,
        "screenshot {} is {size} bytes; chromium said:\n{}",
        png.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn demo_runs_the_seed_table_in_a_short_run() {
    let dir = TestDir::new("loadtest-demo");
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    let out = Command::new(Gateway::bin())
        .args(["loadtest", "--demo", "--short"])
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "OMS alone",
        "through omsgate",
        "Mean response time",
        "Concurrent users sustained",
        "Backend requests per request",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let (oms, gw) = (&targets[0]["main"], &targets[1]["main"]);
    assert!(oms["all"]["requests"].as_u64().unwrap() > 0, "{oms}");
    assert!(gw["all"]["requests"].as_u64().unwrap() > 0, "{gw}");
    // Only the gateway has metrics and a pid.
    assert!(oms["backend_per_request"].is_null());
    assert!(gw["backend_per_request"].as_f64().is_some(), "{gw}");
    assert!(gw["rss_peak_mib"].as_f64().unwrap() > 1.0, "{gw}");
    assert!(gw["cache_hit_ratio"].as_f64().is_some(), "{gw}");
    assert!(!targets[1]["capacity"]["steps"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!targets[1]["timeline"].as_array().unwrap().is_empty());
    assert!(std::fs::metadata(&html).unwrap().len() > 5_000);
}
