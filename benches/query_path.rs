//! `cargo bench --bench query_path`: one invoice with its lines, answered by the pooled query
//! path (one statement through `omsgate_invoice_with_lines`) vs the legacy OMS's naive N+1
//! pattern (one query for the invoice and its line ids, then one query per line, JSON built in
//! the application) — requests/s and latency percentiles with N concurrent tasks for a fixed
//! time.
//!
//! Uses the real PostgreSQL (`OMSGATE_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and a schema of its own, `bench_query_path`,
//! seeded once with the simulated OMS's data (≥ 100k invoices, ≥ 500k lines) and reused by later
//! runs. Prints a table and writes `target/bench-query_path.json`.
//!
//! Then the same request over HTTP through the gateway (`omsgate run`, one thread, JWT identity,
//! no cache): the route bound to the pooled path, and the route sent to the simulated OMS
//! (`omsgate sim` with the same data, 0 ms latency, in memory — the gateway's own cost, not the
//! legacy app's), each with N keepalive connections, one tenant's invoices; and the route sent
//! to a minimal HTTP OMS in the bench (own thread) that answers with the same N+1 pattern — the
//! comparison the targets are about, through the gateway. The route binds the configured
//! `[queries.invoice_with_lines]` of the annotated config.toml, not a built-in query.
//!
//! Targets (issues 7 and 18): pooled p99 <= 5 ms with >= 100k invoices and >= 10x the N+1
//! throughput in the same run; the verdicts are printed for both levels.
//!
//! Environment: `OMSGATE_BENCH_SECS` (per scenario, default 8), `OMSGATE_BENCH_CONCURRENCY`
//! (tasks, default 16), `OMSGATE_BENCH_TENANTS` (default 24), `OMSGATE_BENCH_INVOICES` (per
//! tenant, default 5000).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use omsgate::db::migrate::{Migrator, RunOptions};
use omsgate::db::seed::{seed_with, SeedOptions};
use omsgate::db::{DatabaseConfig, DatabaseFile, QueryPaths};
use omsgate::routes::Params;
use serde::Serialize;

use common::*;

const SCHEMA: &str = "bench_query_path";
const SAMPLE: usize = 20_000;

/// One row of the result table.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    concurrency: usize,
    seconds: f64,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Database statements per request.
    statements_per_request: f64,
    /// HTTP rows: the gateway's threads' CPU time and time spent runnable but waiting for a CPU
    /// (`/proc/PID/task/*/schedstat`) during the row, in seconds.
    gateway_cpu_s: Option<f64>,
    gateway_cpu_wait_s: Option<f64>,
}

/// Run time and run-queue wait (ns) summed over the threads of process `pid`.
fn schedstat(pid: u32) -> (u64, u64) {
    let (mut run, mut wait) = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        run += fields.next().unwrap_or(0);
        wait += fields.next().unwrap_or(0);
    }
    (run, wait)
}

/// Seeds the bench schema unless it already holds the wanted data set, then migrates it.
async fn prepare(url: &str, tenants: usize, invoices: usize) -> Vec<(String, String)> {
    let client = omsgate::db::connect(url)
        .await
        .expect("connect to PostgreSQL");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA}; SET search_path TO {SCHEMA}"
        ))
        .await
        .expect("create the bench schema");
    client
        .batch_execute(omsgate::db::REFERENCE_SCHEMA)
        .await
        .expect("reference schema");
    let have: i64 = client
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .expect("count invoices")
        .get(0);
    if have as usize != tenants * invoices {
        eprintln!("Seeding {SCHEMA}: {tenants} tenants x {invoices} invoices ...");
        let options = SeedOptions {
            schema: SCHEMA.into(),
            apply_schema: false,
            tenants,
            invoices_per_tenant: invoices,
            seed: 42,
        };
        let report = seed_with(&client, &options).await.expect("seed");
        eprintln!("Seeded: {report}.");
    } else {
        eprintln!("Reusing {SCHEMA} ({have} invoices).");
    }
    Migrator::new(SCHEMA)
        .expect("migrator")
        .run(&client, RunOptions::default(), &mut std::io::stderr())
        .await
        .expect("migrate");
    let lines: i64 = client
        .query_one("SELECT count(*) FROM invoice_lines", &[])
        .await
        .expect("count lines")
        .get(0);
    eprintln!(
        "Data set: {} invoices, {lines} invoice lines.",
        tenants * invoices
    );
    // A random sample of (tenant, id) to request.
    client
        .query(
            &format!("SELECT tenant_id, id::text FROM invoices ORDER BY random() LIMIT {SAMPLE}"),
            &[],
        )
        .await
        .expect("sample invoices")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The legacy pattern: the invoice with its line ids, then each line on its own.
async fn naive_invoice(pool: &Pool, tenant: &str, id: &str) -> Result<(Vec<u8>, u64), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let head = client
        .prepare_cached(
            "SELECT i.id::text, i.tenant_id, i.invoice_number, i.invoice_status, \
                    to_char(i.invoice_date, 'YYYY-MM-DD'), i.customer, i.currency, i.total::text, \
                    to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char(i.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    l.id::text \
               FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id \
              WHERE i.id = $1::text::uuid AND i.tenant_id = $2",
        )
        .await
        .map_err(|e| e.to_string())?;
    let line = client
        .prepare_cached(
            "SELECT id::text, line_no, sku, description, quantity, unit_price::text, amount::text \
               FROM invoice_lines WHERE id = $1::text::uuid",
        )
        .await
        .map_err(|e| e.to_string())?;
    let rows = client
        .query(&head, &[&id, &tenant])
        .await
        .map_err(|e| e.to_string())?;
    let Some(first) = rows.first() else {
        return Ok((b"null".to_vec(), 1));
    };
    let mut statements = 1;
    let mut lines = Vec::new();
    for r in &rows {
        let Some(line_id) = r.get::<_, Option<String>>(10) else {
            continue;
        };
        let l = client
            .query_one(&line, &[&line_id])
            .await
            .map_err(|e| e.to_string())?;
        statements += 1;
        lines.push((
            l.get::<_, i32>(1),
            serde_json::json!({
                "id": l.get::<_, String>(0), "line_no": l.get::<_, i32>(1),
                "sku": l.get::<_, String>(2), "description": l.get::<_, String>(3),
                "quantity": l.get::<_, i32>(4), "unit_price": l.get::<_, String>(5),
                "amount": l.get::<_, String>(6),
            }),
        ));
    }
    lines.sort_by_key(|(n, _)| *n);
    let doc = serde_json::json!({
        "id": first.get::<_, String>(0), "tenant_id": first.get::<_, String>(1),
        "invoice_number": first.get::<_, String>(2), "invoice_status": first.get::<_, String>(3),
        "invoice_date": first.get::<_, String>(4), "customer": first.get::<_, String>(5),
        "currency": first.get::<_, String>(6), "total": first.get::<_, String>(7),
        "created_at": first.get::<_, String>(8), "updated_at": first.get::<_, String>(9),
        "lines": lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>(),
    });
    Ok((
        serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
        statements,
    ))
}

/// A pool for the N+1 pattern over the bench schema.
fn naive_pool(url: &str, size: usize) -> Pool {
    let mut pg: tokio_postgres::Config = url.parse().expect("url");
    pg.options(format!("-c search_path={SCHEMA}"));
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("pool")
}

/// A minimal HTTP/1.1 OMS answering `GET /api/v1/invoices/{id}` for one tenant with the N+1
/// pattern ([`naive_invoice`]) and `GET /health` with 200, on its own thread and runtime (as
/// the simulated OMS runs in its own process): the legacy OMS's data access behind the
/// gateway, without the legacy application's own cost.
fn start_naive_oms(url: &str, tenant: String, connections: usize) -> std::net::SocketAddr {
    let addr = free_addr();
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("N+1 OMS runtime");
        rt.block_on(async move {
            let pool = naive_pool(&url, connections);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .expect("bind the N+1 OMS");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (pool, tenant) = (pool.clone(), tenant.clone());
                tokio::spawn(async move {
                    let _ = serve_naive(stream, &pool, &tenant).await;
                });
            }
        });
    });
    wait_port(addr);
    addr
}

/// Serves keepalive GET requests (no body) on one connection of the N+1 OMS.
async fn serve_naive(
    mut stream: tokio::net::TcpStream,
    pool: &Pool,
    tenant: &str,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let (status, body) = if path == "/health" {
            ("200 OK", b"{}".to_vec())
        } else {
            let id = path.strip_prefix("/api/v1/invoices/").unwrap_or("");
            match naive_invoice(pool, tenant, id).await {
                Ok((body, _)) if body != b"null" => ("200 OK", body),
                Ok(_) => (
                    "404 Not Found",
                    br#"{"detail":"Invoice not found"}"#.to_vec(),
                ),
                Err(e) => (
                    "500 Internal Server Error",
                    serde_json::to_vec(&serde_json::json!({ "detail": e })).unwrap_or_default(),
                ),
            }
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        stream.write_all(&out).await?;
    }
}

#[derive(Clone, Copy)]
enum Scenario {
    Pooled { prepared: bool },
    Naive,
}

/// Runs `concurrency` closed-loop tasks for `seconds`, each requesting random sample invoices.
async fn measure(
    name: &str,
    scenario: Scenario,
    url: &str,
    sample: Arc<Vec<(String, String)>>,
    concurrency: usize,
    seconds: u64,
) -> Row {
    let file = DatabaseFile {
        url: url.to_string(),
        schema: SCHEMA.into(),
        max_connections: concurrency,
        min_idle: concurrency,
        acquire_timeout: "5s".into(),
        prepared_statements: matches!(scenario, Scenario::Pooled { prepared: true }),
        ..DatabaseFile::default()
    };
    let config = DatabaseConfig::from_file(&file, &mut omsgate::config::Problems::default());
    let paths = Arc::new(QueryPaths::new(&config).expect("pool"));
    paths.warm().await;
    // The configured query of the annotated config.toml, not a built-in one.
    let query = omsgate::db::queries::reference()
        .get("invoice_with_lines")
        .cloned()
        .expect("config.toml defines [queries.invoice_with_lines]");
    let naive = naive_pool(url, concurrency);
    let one = {
        let (paths, naive, sample, query) =
            (paths.clone(), naive.clone(), sample.clone(), query.clone());
        move |i: usize| {
            let (paths, naive, sample, query) =
                (paths.clone(), naive.clone(), sample.clone(), query.clone());
            async move {
                let (tenant, id) = &sample[i % sample.len()];
                match scenario {
                    Scenario::Pooled { .. } => {
                        let params = Params(vec![("id".into(), id.clone())]);
                        match paths.answer(&query, tenant, None, &params, None).await {
                            Ok(Some(r)) if r.status == 200 => Ok(0),
                            other => Err(format!("{other:?}")),
                        }
                    }
                    Scenario::Naive => naive_invoice(&naive, tenant, id).await.map(|(_, n)| n),
                }
            }
        }
    };
    // Warm up every connection's statements.
    for i in 0..concurrency * 4 {
        let _ = one(i).await;
    }
    let sent_before = paths.statements_sent();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let (mut errors, mut statements) = (0u64, 0u64);
            let mut i = t * 7919;
            while Instant::now() < deadline {
                let start = Instant::now();
                match one(i).await {
                    Ok(n) => statements += n,
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("error: {e}");
                        }
                        errors += 1;
                    }
                }
                latencies.push(start.elapsed().as_micros() as u64);
                i += 1;
            }
            (latencies, errors, statements)
        }));
    }
    let mut latencies = Vec::new();
    let (mut errors, mut statements) = (0, 0);
    for t in tasks {
        let (l, e, s) = t.await.expect("bench task");
        latencies.extend(l);
        errors += e;
        statements += s;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let requests = latencies.len() as u64;
    if matches!(scenario, Scenario::Pooled { .. }) {
        statements = paths.statements_sent() - sent_before;
    }
    Row {
        scenario: name.to_string(),
        concurrency,
        seconds: elapsed,
        requests,
        errors,
        rps: requests as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().copied().unwrap_or(0),
        statements_per_request: statements as f64 / requests.max(1) as f64,
        gateway_cpu_s: None,
        gateway_cpu_wait_s: None,
    }
}

/// `omsgate run` in front of `oms`, with the invoice route bound to the pooled path or not.
fn start_gateway(
    oms: std::net::SocketAddr,
    url: &str,
    pooled: bool,
) -> (Proc, std::net::SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let query = if pooled {
        "query = \"invoice_with_lines\""
    } else {
        ""
    };
    let cfg = format!(
        r#"
[server]
listen = "{listen}"
threads = 1
[admin]
listen = "{admin}"
[upstream]
servers = ["{oms}"]
keepalive_pool = 256
# The benches measure the gateway in front of a concurrent upstream: no overload limit
# (the default of 4 in flight is for a one-worker OMS, benches/legacy_oms.rs).
overload = {{ max_in_flight = 0 }}
[identity]
mode = "jwt"
jwt_secret = "{secret}"
[log]
level = "warn"
[database]
url = "{url}"
schema = "{SCHEMA}"
max_connections = 16
min_idle = 16
[[route]]
name = "invoice"
path = "/api/v1/invoices/{{id}}"
methods = ["GET"]
{query}
"#,
        secret = omsgate::sim::DEMO_JWT_SECRET
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("query_path-gateway-{}.toml", listen.port()));
    // Audit off: this bench measures something else, and the default file audit would fill
    // ./audit-spool with a record per request.
    // The route binds the configured `[queries.invoice_with_lines]` of the annotated
    // config.toml (over migration 0006's functions), appended as written there.
    let cfg = format!(
        "{cfg}\n[audit]\nenabled = false\n\n{}",
        omsgate::db::queries::reference_toml()
    );
    let proc = run_gateway(&path, &cfg, listen, admin);
    wait_ready(admin);
    (proc, listen)
}

/// Requests one tenant's sample invoices over HTTP through a gateway.
async fn measure_http(
    name: &str,
    addr: std::net::SocketAddr,
    sample: &[(String, String)],
    concurrency: usize,
    seconds: u64,
) -> Row {
    let tenant = sample[0].0.clone();
    let paths: Vec<String> = sample
        .iter()
        .filter(|(t, _)| *t == tenant)
        .map(|(_, id)| format!("/api/v1/invoices/{id}"))
        .collect();
    let token = omsgate::identity::issue_hs256(
        omsgate::sim::DEMO_JWT_SECRET,
        "tenant_id",
        &tenant,
        "bench",
        Duration::from_secs(3600),
    );
    let spec = |duration| common::loadgen::LoadSpec {
        addr,
        paths: paths.clone(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        connections: concurrency,
        duration,
    };
    // Warm-up: connections, the pool, prepared statements.
    common::loadgen::run(spec(Duration::from_secs(1))).await;
    let r = common::loadgen::run(spec(Duration::from_secs(seconds))).await;
    Row {
        scenario: name.to_string(),
        concurrency,
        seconds: r.seconds,
        requests: r.requests,
        errors: r.errors + r.non_success,
        rps: r.rps,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        p999_us: r.p999_us,
        max_us: 0,
        statements_per_request: f64::NAN,
        gateway_cpu_s: None,
        gateway_cpu_wait_s: None,
    }
}

fn main() {
    let seconds = env_or("OMSGATE_BENCH_SECS", 8);
    let concurrency = env_or("OMSGATE_BENCH_CONCURRENCY", 16) as usize;
    let tenants = env_or("OMSGATE_BENCH_TENANTS", 24) as usize;
    let invoices = env_or("OMSGATE_BENCH_INVOICES", 5000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = database_url();
    let rows = rt.block_on(async {
        let sample = Arc::new(prepare(&url, tenants, invoices).await);
        let mut rows = Vec::new();
        for (name, scenario) in [
            (
                "pooled path (prepared)",
                Scenario::Pooled { prepared: true },
            ),
            (
                "pooled path (unnamed stmts)",
                Scenario::Pooled { prepared: false },
            ),
            ("naive N+1 (1 + lines)", Scenario::Naive),
        ] {
            eprintln!("Measuring {name} for {seconds} s with {concurrency} tasks ...");
            rows.push(measure(name, scenario, &url, sample.clone(), concurrency, seconds).await);
        }
        let oms = free_addr();
        let (tenants, invoices) = (tenants.to_string(), invoices.to_string());
        let _sim = start_sim(
            oms,
            &[
                "--latency-ms",
                "0",
                "--workers",
                "100000",
                "--tenants",
                &tenants,
                "--invoices",
                &invoices,
            ],
        );
        // The N+1 OMS answers the tenant that measure_http requests.
        let naive_oms = start_naive_oms(&url, sample[0].0.clone(), concurrency);
        for (name, upstream, pooled) in [
            ("HTTP: gateway -> pooled path", oms, true),
            ("HTTP: gateway -> N+1 OMS", naive_oms, false),
            ("HTTP: gateway -> simulated OMS", oms, false),
        ] {
            let (gateway, addr) = start_gateway(upstream, &url, pooled);
            eprintln!("Measuring {name} for {seconds} s with {concurrency} connections ...");
            let before = schedstat(gateway.0.id());
            let mut row = measure_http(name, addr, &sample, concurrency, seconds).await;
            let after = schedstat(gateway.0.id());
            row.gateway_cpu_s = Some(after.0.saturating_sub(before.0) as f64 / 1e9);
            row.gateway_cpu_wait_s = Some(after.1.saturating_sub(before.1) as f64 / 1e9);
            rows.push(row);
        }
        rows
    });

    println!(
        "\n{:<30} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10} {:>11}",
        "scenario",
        "tasks",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "stmt/req",
        "errors",
        "gw CPU s",
        "gw wait s"
    );
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in &rows {
        println!(
            "{:<30} {:>5} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10} {:>11}",
            r.scenario,
            r.concurrency,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            if r.statements_per_request.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2}", r.statements_per_request)
            },
            r.errors,
            secs(r.gateway_cpu_s),
            secs(r.gateway_cpu_wait_s)
        );
    }
    println!(
        "(gw CPU s / gw wait s: the gateway's threads' CPU time, and their time runnable but \
         waiting for a CPU, during the row's warm-up and measurement)"
    );
    let (pooled, naive) = (&rows[0], &rows[2]);
    let speedup = pooled.rps / naive.rps.max(1e-9);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "\npooled vs N+1 (in process): {speedup:.1}x the throughput (target >= 10x: {}); pooled \
         p99 {:.2} ms (target <= 5 ms: {})",
        verdict(speedup >= 10.0),
        pooled.p99_us as f64 / 1000.0,
        verdict(pooled.p99_us <= 5_000)
    );
    let (http_pooled, http_naive) = (&rows[3], &rows[4]);
    let http_speedup = http_pooled.rps / http_naive.rps.max(1e-9);
    println!(
        "through the gateway, pooled vs N+1 OMS: {http_speedup:.1}x the throughput (target >= \
         10x: {}); pooled p50 {:.2} ms, p99 {:.2} ms (target <= 5 ms: {})",
        verdict(http_speedup >= 10.0),
        http_pooled.p50_us as f64 / 1000.0,
        http_pooled.p99_us as f64 / 1000.0,
        verdict(http_pooled.p99_us <= 5_000)
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("bench-query_path.json"))
        .unwrap_or_else(|| PathBuf::from("bench-query_path.json"));
    let json = serde_json::json!({
        "rows": rows,
        "pooled_vs_naive_throughput": speedup,
        "http_pooled_vs_naive_throughput": http_speedup,
    });
    if let Ok(text) = serde_json::to_string_pretty(&json) {
        let _ = std::fs::write(&out, text);
        println!("wrote {}", out.display());
    }
}
