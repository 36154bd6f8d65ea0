//! `cargo bench --bench proxy`: pass-through throughput and latency, direct vs through omsgate
//! (vs nginx as a reverse proxy when `nginx` is on PATH).
//!
//! Starts the simulated OMS (`omsgate sim`, latency 0) and the gateway as child processes,
//! drives a closed-loop keepalive load over loopback for a fixed time, prints a table and writes
//! `target/bench-proxy.json`. Environment: `OMSGATE_BENCH_SECS` (default 8),
//! `OMSGATE_BENCH_CONNECTIONS` (default 64), `OMSGATE_BENCH_BODY` (response bytes, default 20000).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use omsgate::loadgen::{self, LoadReport, LoadSpec};

use common::*;

/// The gateway with the `blob` route (`extra`: more keys of that route) and `audit` (an
/// `[audit]` table; the default file audit when empty).
fn start_gateway(upstream: SocketAddr, listen: SocketAddr, extra: &str, audit: &str) -> Proc {
    let admin = free_addr();
    let cfg = format!(
        r#"
[server]
listen = "{listen}"
threads = 1
[admin]
listen = "{admin}"
[upstream]
servers = ["{upstream}"]
keepalive_pool = 256
[log]
level = "warn"
[[route]]
name = "blob"
path = "/__blob/{{size}}"
{extra}
{audit}
"#
    );
    let path = bench_dir("proxy").join(format!("gateway-{}.toml", listen.port()));
    std::fs::write(&path, cfg).expect("write bench config");
    let child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["run", "--config", path.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start omsgate run");
    wait_port(listen);
    wait_port(admin);
    Proc(child)
}

fn start_nginx(upstream: SocketAddr, listen: SocketAddr) -> Option<Proc> {
    let nginx = which("nginx")?;
    let dir = bench_dir("proxy").join("nginx");
    let _ = std::fs::create_dir_all(dir.join("logs"));
    let conf = format!(
        r#"
worker_processes 1;
error_log {dir}/logs/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream oms {{ server {upstream}; keepalive 256; }}
  server {{
    listen {listen} reuseport;
    location / {{
      proxy_pass http://oms;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id;
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(nginx)
        .args([
            "-c",
            path.to_str()?,
            "-p",
            dir.to_str()?,
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(listen);
    Some(Proc(child))
}

/// The gateway's memory with many idle keepalive client connections.
#[derive(Debug, serde::Serialize)]
struct Idle {
    open: usize,
    rss_before: u64,
    rss_with: u64,
}

/// Opens `n` client connections, each sending one small request and then staying open idle
/// (keepalive), and reads the gateway's RSS before and with them.
async fn idle_connections(addr: SocketAddr, pid: u32, n: usize) -> Idle {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Settle after start-up and one request, so "before" includes the warm connection pools.
    let _ = loadgen::run(LoadSpec {
        addr,
        paths: vec!["/__blob/100".into()],
        headers: vec![],
        connections: 4,
        duration: Duration::from_millis(500),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = loadgen::rss_of(pid);
    let mut open = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..n {
        batch.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET /__blob/100 HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await
                .ok()?;
            // Read the whole response (headers and the 100-byte body).
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 100 {
                let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                if k == 0 {
                    return None;
                }
                got.extend_from_slice(&buf[..k]);
            }
            Some(s)
        });
        if batch.len() >= 256 || i + 1 == n {
            while let Some(r) = batch.join_next().await {
                if let Ok(Some(s)) = r {
                    open.push(s);
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_with = loadgen::rss_of(pid);
    Idle {
        open: open.len(),
        rss_before,
        rss_with,
    }
}

fn kafka_brokers() -> Option<String> {
    ["OMSGATE_BENCH_KAFKA_BROKERS", "OMSGATE_TEST_KAFKA_BROKERS"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|b| !b.trim().is_empty()))
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(bin))
        .chain([PathBuf::from("/usr/sbin").join(bin)])
        .find(|p| p.is_file())
}

#[derive(serde::Serialize)]
struct Row {
    target: String,
    report: LoadReport,
    rss_bytes: u64,
    cpu_us_per_request: f64,
}

fn measure(rt: &tokio::runtime::Runtime, name: &str, addr: SocketAddr, pid: Option<u32>) -> Row {
    let secs = env_or("OMSGATE_BENCH_SECS", 8);
    let conns = env_or("OMSGATE_BENCH_CONNECTIONS", 64) as usize;
    let body = env_or("OMSGATE_BENCH_BODY", 20_000);
    let spec = |d: u64| LoadSpec {
        addr,
        paths: vec![format!("/__blob/{body}")],
        headers: vec![],
        connections: conns,
        duration: Duration::from_secs(d),
    };
    // Warm up keepalive pools and caches.
    rt.block_on(loadgen::run(spec(1)));
    let cpu0 = pid.map(loadgen::cpu_seconds_of).unwrap_or(0.0);
    let report = rt.block_on(loadgen::run(spec(secs)));
    let cpu1 = pid.map(loadgen::cpu_seconds_of).unwrap_or(0.0);
    let rss = pid.map(loadgen::rss_of).unwrap_or(0);
    let cpu_us = if report.requests > 0 {
        (cpu1 - cpu0) * 1e6 / report.requests as f64
    } else {
        0.0
    };
    Row {
        target: name.to_string(),
        report,
        rss_bytes: rss,
        cpu_us_per_request: cpu_us,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument selects nothing special yet.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sim_addr = free_addr();
    let sim = start_sim(sim_addr, &["--latency-ms", "0", "--workers", "100000"]);
    let mut rows = Vec::new();

    rows.push(measure(
        &rt,
        "direct (simulated OMS)",
        sim_addr,
        Some(sim.0.id()),
    ));

    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, "", "[audit]\nenabled = false");
    rows.push(measure(
        &rt,
        "omsgate pass-through",
        gw_addr,
        Some(gw.0.id()),
    ));
    drop(gw);

    // Audit on: one record per request to the spool files (no brokers), and to Kafka when a
    // broker is given (OMSGATE_BENCH_KAFKA_BROKERS, else OMSGATE_TEST_KAFKA_BROKERS).
    let spool = bench_dir("proxy").join(format!("spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let gw_addr = free_addr();
    let file_audit = format!("[audit]\nspool_dir = \"{}/file\"", spool.display());
    let gw = start_gateway(sim_addr, gw_addr, "", &file_audit);
    rows.push(measure(
        &rt,
        "omsgate + file audit",
        gw_addr,
        Some(gw.0.id()),
    ));
    drop(gw);
    match kafka_brokers() {
        Some(brokers) => {
            let topic = format!("bench_audit_{}", std::process::id());
            if !create_topic(&brokers, &topic) {
                // A Kafka cluster that auto-creates topics needs no tansu.
                eprintln!("creating topic {topic} with tansu failed; the audit row may spool");
            }
            let gw_addr = free_addr();
            let kafka_audit = format!(
                "[audit]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nspool_dir = \"{}/kafka\"",
                spool.display()
            );
            let gw = start_gateway(sim_addr, gw_addr, "", &kafka_audit);
            rows.push(measure(
                &rt,
                "omsgate + audit to Kafka",
                gw_addr,
                Some(gw.0.id()),
            ));
            drop(gw);
        }
        None => eprintln!(
            "no broker (OMSGATE_BENCH_KAFKA_BROKERS / OMSGATE_TEST_KAFKA_BROKERS): skipping the \
             Kafka audit row"
        ),
    }
    let _ = std::fs::remove_dir_all(&spool);

    let ngx_addr = free_addr();
    match start_nginx(sim_addr, ngx_addr) {
        Some(ngx) => rows.push(measure(
            &rt,
            "nginx reverse proxy",
            ngx_addr,
            Some(ngx.0.id()),
        )),
        None => eprintln!("nginx not on PATH: skipping the nginx column (apt-get install nginx)"),
    }

    println!(
        "\n{:<26} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "target", "req/s", "p50 µs", "p99 µs", "p999 µs", "CPU µs/req", "RSS MiB", "errors"
    );
    for r in &rows {
        println!(
            "{:<26} {:>10.0} {:>9} {:>9} {:>9} {:>10.1} {:>10.1} {:>7}",
            r.target,
            r.report.rps,
            r.report.p50_us,
            r.report.p99_us,
            r.report.p999_us,
            r.cpu_us_per_request,
            r.rss_bytes as f64 / (1024.0 * 1024.0),
            r.report.errors + r.report.non_success
        );
    }

    // Memory with many idle keepalive clients (issue 9: RSS <= 64 MB with 10 000).
    let idle_target = env_or("OMSGATE_BENCH_IDLE", 10_000) as usize;
    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, "", "[audit]\nenabled = false");
    let idle = rt.block_on(idle_connections(gw_addr, gw.0.id(), idle_target));
    drop(gw);
    println!(
        "\nidle keepalive connections: {} of {idle_target} open; gateway RSS {:.1} MiB before, \
         {:.1} MiB with them (target <= 64 MB)",
        idle.open,
        idle.rss_before as f64 / (1024.0 * 1024.0),
        idle.rss_with as f64 / (1024.0 * 1024.0),
    );

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("bench-proxy.json"))
        .unwrap_or_else(|| PathBuf::from("bench-proxy.json"));
    let doc = serde_json::json!({ "rows": rows, "idle": idle });
    if let Ok(json) = serde_json::to_string_pretty(&doc) {
        let _ = std::fs::write(&out, json);
        println!("\nwrote {}", out.display());
    }
    drop(sim);
}
