//! `cargo bench --bench legacy_oms`: the seed scenario against the reference legacy OMS
//! (`examples/legacy-oms`: FastAPI on one uvicorn worker, one locked PostgreSQL connection,
//! N+1 queries, a synchronous audit insert), directly and through omsgate with the shipped
//! `config.toml` (addresses, JWT identity and the load generator's exemption from the per-IP
//! limit changed; `[upstream]` as shipped), at 20 / 100 / 200 / 500 users (issue 14).
//!
//! Each user waits a random fraction of the think time, then loops: a request, then the think
//! time (1 s ± 20 %). Requests: Zipf-distributed (s = 1) invoices of 5 tenants × 200, 90 %
//! `GET /api/v1/invoices/{id}` and 10 % `PATCH` (invalidating the invoice), all with a bearer
//! token. Requests have a 30 s timeout; those still running when the run ends are waited for.
//!
//! Per row: client requests/s, mean, p50 and p99 latency, errors (no answer, or a 5xx other
//! than a 503 shed), sheds (503), and OMS requests per client request (the OMS writes one
//! `audit_events` row per API request it answers). A fresh OMS process and gateway per row.
//! Prints a table and writes `target/bench-legacy-oms.json`.
//!
//! Needs PostgreSQL (`OMSGATE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/
//! test`) and the reference OMS's Python (`OMSGATE_TEST_LEGACY_PYTHON`, else `.venv-legacy-oms`;
//! `scripts/test` creates it). Environment: `OMSGATE_BENCH_SECS` (default 20),
//! `OMSGATE_BENCH_USERS` (default `20,100,200,500`), `OMSGATE_BENCH_AUDIT_MS` (the OMS's extra
//! audit time per request, default 50: about 20 requests/s on its one connection).
//! Target (issue 14): through omsgate, zero errors at every level and at least 10× the users
//! the OMS alone sustains within the seed's objective (mean ≤ 200 ms, p99 ≤ 1 s).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_dir, database_url, env_or, free_addr, run_gateway, wait_ready, Proc};
use omsgate::sim::DEMO_JWT_SECRET;
use rand::{Rng, SeedableRng};

const TENANTS: usize = 5;
const INVOICES: usize = 200;
const THINK: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, serde::Serialize)]
struct Row {
    target: String,
    users: usize,
    requests: u64,
    seconds: f64,
    rps: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    sheds: u64,
    stale: u64,
    backend_requests: i64,
    backend_per_client_request: f64,
}

fn python() -> PathBuf {
    match std::env::var("OMSGATE_TEST_LEGACY_PYTHON") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-legacy-oms/bin/python"),
    }
}

fn psql(rt: &tokio::runtime::Runtime, sql: &str) -> i64 {
    rt.block_on(async {
        let client = omsgate::db::connect(&database_url())
            .await
            .expect("connect to the bench database");
        match client.query_opt(sql, &[]).await.expect(sql) {
            Some(row) => row.try_get::<_, i64>(0).unwrap_or(0),
            None => 0,
        }
    })
}

fn start_oms(schema: &str, addr: SocketAddr, audit_ms: u64) -> Proc {
    let log = bench_dir("legacy-oms").join("oms.log");
    let log = std::fs::File::create(log).expect("create the OMS log");
    let child = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/legacy-oms/app.py"))
        .args([
            "serve",
            "--port",
            &addr.port().to_string(),
            "--schema",
            schema,
        ])
        .args(["--database-url", &database_url()])
        .args(["--audit-delay", &format!("{}", audit_ms as f64 / 1000.0)])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the reference OMS (is OMSGATE_TEST_LEGACY_PYTHON set?)");
    // Killed and reaped on drop, on the panic path too.
    let oms = Proc(child);
    for _ in 0..300 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                return oms;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the reference OMS did not answer /health on {addr}");
}

fn gateway_config(oms: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let mut config: toml::Table = std::fs::read_to_string(path)
        .expect("read config.toml")
        .parse()
        .expect("config.toml is TOML");
    let mut set = |section: &str, key: &str, value: toml::Value| {
        let mut table = config
            .get(section)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        table.insert(key.into(), value);
        config.insert(section.into(), toml::Value::Table(table));
    };
    set("server", "listen", listen.to_string().into());
    set("admin", "listen", admin.to_string().into());
    set(
        "upstream",
        "servers",
        toml::Value::Array(vec![oms.to_string().into()]),
    );
    set("identity", "mode", "jwt".into());
    set("identity", "jwt_secret", DEMO_JWT_SECRET.into());
    set(
        "rate_limit",
        "exempt_cidrs",
        toml::Value::Array(vec!["127.0.0.1/32".into()]),
    );
    toml::to_string(&config).expect("write the bench config")
}

/// (latency µs, status or 0 for no answer, served stale)
type Sample = (u64, u16, bool);

fn run_users(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    users: usize,
    secs: u64,
    invoices: Arc<Vec<(String, String)>>,
    tokens: Arc<std::collections::HashMap<String, String>>,
) -> (Vec<Sample>, f64) {
    let cdf = Arc::new(common::zipf_cdf(invoices.len()));
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let samples = rt.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let mut tasks = Vec::new();
        for u in 0..users {
            let (http, invoices, tokens, cdf) =
                (http.clone(), invoices.clone(), tokens.clone(), cdf.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(u as u64);
                let mut out: Vec<Sample> = Vec::new();
                tokio::time::sleep(THINK.mul_f64(rng.random())).await;
                while Instant::now() < end {
                    let rank = cdf
                        .partition_point(|p| *p < rng.random::<f64>())
                        .min(invoices.len() - 1);
                    let (tenant, id) = &invoices[rank];
                    let url = format!("http://{addr}/api/v1/invoices/{id}");
                    let req = if rng.random_bool(0.1) {
                        http.patch(&url).json(&serde_json::json!({
                            "customer": format!("Customer {}", rng.random_range(0..1000))
                        }))
                    } else {
                        http.get(&url)
                    }
                    .bearer_auth(&tokens[tenant]);
                    let t = Instant::now();
                    let sample = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let stale = r.headers().get("x-cache").is_some_and(|v| v == "STALE");
                            match r.bytes().await {
                                Ok(_) => (t.elapsed().as_micros() as u64, status, stale),
                                Err(_) => (t.elapsed().as_micros() as u64, 0, false),
                            }
                        }
                        Err(_) => (t.elapsed().as_micros() as u64, 0, false),
                    };
                    out.push(sample);
                    tokio::time::sleep(THINK.mul_f64(0.8 + 0.4 * rng.random::<f64>())).await;
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(v) = t.await {
                all.extend(v);
            }
        }
        all
    });
    (samples, started.elapsed().as_secs_f64())
}

fn row(target: &str, users: usize, samples: &[Sample], seconds: f64, backend: i64) -> Row {
    let mut lat: Vec<u64> = samples.iter().map(|s| s.0).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
        }
    };
    let requests = samples.len() as u64;
    Row {
        target: target.into(),
        users,
        requests,
        seconds,
        rps: requests as f64 / seconds.max(1e-9),
        mean_ms: lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors: samples
            .iter()
            .filter(|s| s.1 == 0 || (s.1 >= 500 && s.1 != 503))
            .count() as u64,
        sheds: samples.iter().filter(|s| s.1 == 503).count() as u64,
        stale: samples.iter().filter(|s| s.2).count() as u64,
        backend_requests: backend,
        backend_per_client_request: backend as f64 / requests.max(1) as f64,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_or("OMSGATE_BENCH_SECS", 20);
    let audit_ms = env_or("OMSGATE_BENCH_AUDIT_MS", 50);
    let levels: Vec<usize> = std::env::var("OMSGATE_BENCH_USERS")
        .unwrap_or_else(|_| "20,100,200,500".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let schema = format!("bench_legacy_{}", std::process::id());
    let seeded = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args([
            "seed-db",
            "--database-url",
            &database_url(),
            "--schema",
            &schema,
        ])
        .args([
            "--tenants",
            &TENANTS.to_string(),
            "--invoices",
            &INVOICES.to_string(),
        ])
        .status()
        .expect("run omsgate seed-db");
    assert!(seeded.success(), "omsgate seed-db failed");
    let dataset = omsgate::sim::data::generate(42, TENANTS, INVOICES);
    let (invoices, tokens) = common::invoices_and_tokens(&dataset);
    let audit_rows = format!("SELECT count(*) FROM {schema}.audit_events");

    let mut rows = Vec::new();
    for &users in &levels {
        for through_gateway in [false, true] {
            let oms_addr = free_addr();
            let _oms = start_oms(&schema, oms_addr, audit_ms);
            let (target, addr, _gateway) = if through_gateway {
                let (listen, admin) = (free_addr(), free_addr());
                let dir = bench_dir("legacy-oms");
                let gw = run_gateway(
                    &dir.join("config.toml"),
                    &gateway_config(oms_addr, listen, admin),
                    listen,
                    admin,
                );
                wait_ready(admin);
                ("omsgate", listen, Some(gw))
            } else {
                ("OMS direct", oms_addr, None)
            };
            let before = psql(&rt, &audit_rows);
            let (samples, seconds) =
                run_users(&rt, addr, users, secs, invoices.clone(), tokens.clone());
            // The OMS may still be working through its queue: let it drain before counting.
            std::thread::sleep(Duration::from_secs(1));
            let backend = psql(&rt, &audit_rows) - before;
            let r = row(target, users, &samples, seconds, backend);
            eprintln!("{r:?}");
            rows.push(r);
        }
    }
    let _ = psql(&rt, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));

    println!(
        "\nseed scenario against the reference OMS (one uvicorn worker, {audit_ms} ms audit), \
         think time 1 s, {secs} s per row"
    );
    println!(
        "| target | users | req/s | mean ms | p50 ms | p99 ms | errors | sheds | stale | OMS req per client req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2} |",
            r.target,
            r.users,
            r.rps,
            r.mean_ms,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.sheds,
            r.stale,
            r.backend_per_client_request
        );
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-legacy-oms.json");
    let json = serde_json::json!({
        "audit_ms": audit_ms,
        "secs": secs,
        "load_average": omsgate::loadgen::load_average(),
        "rows": rows,
    });
    let _ = std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap_or_default());
    println!("\nwrote {}", out.display());
}
