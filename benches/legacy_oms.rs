//! `cargo bench --bench legacy_oms`: the seed scenario against the reference legacy OMS
//! (`examples/legacy-oms`: FastAPI on one uvicorn worker, one locked PostgreSQL connection,
//! N+1 queries, a synchronous audit insert), directly and through omsgate with the shipped
//! `config.toml` (addresses, JWT identity and the load generator's exemption from the per-IP
//! limit changed; `[upstream]` as shipped), at 5 / 10 / 20 / 100 / 200 / 500 users (issue 14).
//!
//! Each user waits a random fraction of the think time, then loops: a request, then the think
//! time (1 s ± 20 %). Requests: Zipf-distributed (s = 1) invoices of 5 tenants × 200, 90 %
//! `GET /api/v1/invoices/{id}` and 10 % `PATCH` (invalidating the invoice), all with a bearer
//! token. Requests have a 30 s timeout; those still running when the run ends are waited for.
//!
//! Per row: client requests/s, mean, p50 and p99 latency, errors (no answer, or a 5xx other
//! than a 503 shed), sheds (503), and OMS requests per client request (the OMS writes one
//! `audit_events` row per API request it answers). A fresh OMS process and gateway per row.
//! Also per row: the `x-cache: HIT` answers (count, p50, p99), apart from the collapsed ones
//! (`Cache-Status: ...; collapsed`: they waited on the cache lock while another request filled
//! the entry, so their latency is that request's trip), and the OMS's own throughput
//! (audit rows written / row seconds) next to the OMS-alone figure of the same level, with
//! verdicts on the gateway rows with sheds (the OMS's queue full): HIT p99 ≤ 50 ms, and the OMS's
//! throughput through omsgate ≥ alone (issue 14).
//! `OMSGATE_BENCH_PIN=1` (with two or more CPUs) pins the OMS to the last CPU and the bench (load
//! generator and gateways) to the others, to separate the OMS's CPU from theirs (PostgreSQL
//! stays unpinned, so the separation is partial; benches/README has runs both ways).
//! Prints tables and writes `target/bench-legacy-oms.json`.
//!
//! Needs PostgreSQL (`OMSGATE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/
//! test`) and the reference OMS's Python (`OMSGATE_TEST_LEGACY_PYTHON`, else `.venv-legacy-oms`;
//! `scripts/test` creates it). Environment: `OMSGATE_BENCH_SECS` (default 20),
//! `OMSGATE_BENCH_USERS` (default `5,10,20,100,200,500`), `OMSGATE_BENCH_AUDIT_MS` (the OMS's extra
//! audit time per request, default 50: about 20 requests/s on its one connection),
//! `OMSGATE_BENCH_WRITE_PCT` (the share of `PATCH` requests, default 10).
//! Target (issue 14): through omsgate, zero errors at every level and at least 10× the users
//! the OMS alone sustains within the seed's objective (mean ≤ 200 ms, p99 ≤ 1 s).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_dir, database_url, env_or, free_addr, run_gateway_logged, wait_ready, Proc};
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
    /// mean ≤ 200 ms and p99 ≤ 1 s over all requests (the seed's objective)
    within_objective: bool,
    reads: Class,
    writes: Class,
    /// 2xx answers only.
    answered: Class,
    /// `x-cache: HIT` answers that found the entry in the cache (not collapsed).
    hits: Class,
    /// `x-cache: HIT` answers whose `Cache-Status` says `collapsed`: they waited on the cache
    /// lock while another request filled the key from the OMS.
    collapsed: Class,
    /// HIT answers (collapsed ones left out) slower than `HIT_P99_TARGET_MS`.
    slow_hits: u64,
    /// The OMS's own throughput: `backend_requests` / `seconds`.
    oms_rps: f64,
    /// Gateway rows: `oms_rps` of the OMS direct row at the same level.
    oms_alone_rps: Option<f64>,
    /// Share of the OMS's own requests (its audit rows) that were `PATCH`es, in percent:
    /// through omsgate the cache absorbs reads, so writes are a larger share of the OMS's work.
    oms_write_percent: f64,
    /// Gateway rows with sheds (the OMS's queue full): HIT p99 ≤ 50 ms (issue 14).
    hit_p99_met: Option<bool>,
    /// Gateway rows with sheds: `oms_rps` ≥ `oms_alone_rps` (issue 14).
    oms_throughput_met: Option<bool>,
    /// Load average (1, 5, 15 min) when the row ended.
    load_average: Option<[f64; 3]>,
    /// Per (method, status, x-cache): count, mean, p99, max (ms).
    breakdown: Vec<String>,
}

/// Issue 14's bound on cache HITs while the OMS's queue is full.
const HIT_P99_TARGET_MS: f64 = 50.0;

/// Latency of one kind of request.
#[derive(Debug, Default, serde::Serialize)]
struct Class {
    requests: u64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    sheds: u64,
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

/// The CPU the OMS runs on when the bench pins (`OMSGATE_BENCH_PIN=1`, with two or more CPUs;
/// default 0): the last one. The bench process, and so the load generator and every gateway it
/// starts, runs on the others; PostgreSQL is not pinned. Without pinning, the gateway rows'
/// load generator and gateway (80–440 answers/s against the OMS's ~17) take CPU time from the
/// OMS that the OMS-alone rows do not, which is what the "OMS throughput through omsgate ≥
/// alone" comparison would then measure.
fn oms_cpu() -> Option<usize> {
    // Read once, before the pinning narrows what available_parallelism reports.
    static CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (env_or("OMSGATE_BENCH_PIN", 0) == 1 && cpus >= 2).then(|| cpus - 1)
    })
}

/// Restricts this process (the threads it starts from now on, and its children) to every CPU
/// but the OMS's; returns whether it did.
fn pin_away_from_the_oms() -> bool {
    let Some(oms) = oms_cpu() else {
        return false;
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..oms {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn start_oms(schema: &str, addr: SocketAddr, audit_ms: u64) -> Proc {
    let log = bench_dir("legacy-oms").join("oms.log");
    let log = std::fs::File::create(log).expect("create the OMS log");
    let mut command = match oms_cpu() {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(python());
            c
        }
        None => Command::new(python()),
    };
    let child = command
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

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
struct Sample {
    micros: u64,
    /// 0 for no answer
    status: u16,
    write: bool,
    /// `x-cache` class: HIT, COLLAPSED, MISS, STALE, EXPIRED, BYPASS, or "-" (none)
    cache: &'static str,
}

/// The `x-cache` class of an answer; a HIT whose RFC 9211 `Cache-Status` says `collapsed` (it
/// waited on the cache lock for another request's fill) is `COLLAPSED`.
fn cache_status(headers: &reqwest::header::HeaderMap) -> &'static str {
    let collapsed = headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("collapsed"));
    match headers.get("x-cache").map(|v| v.as_bytes()) {
        Some(b"HIT") if collapsed => "COLLAPSED",
        Some(b"HIT") => "HIT",
        Some(b"MISS") => "MISS",
        Some(b"STALE") => "STALE",
        Some(b"EXPIRED") => "EXPIRED",
        Some(b"BYPASS") => "BYPASS",
        Some(_) => "other",
        None => "-",
    }
}

/// Mean, p50, p99 and max (ms) of latencies in µs.
fn stats(lat: &mut [u64]) -> (f64, f64, f64, f64) {
    if lat.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
    (
        mean,
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1] as f64 / 1000.0,
    )
}

/// Scrapes the gateway's `/metrics` once a second while `run` holds, keeping the overload and
/// cache lines, into `out` (evidence for the latency tail).
fn scrape_metrics(
    admin: SocketAddr,
    out: PathBuf,
    run: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let started = Instant::now();
        let mut log = String::new();
        let mut last = String::new();
        while run.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(admin) {
                let req =
                    format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(req.as_bytes());
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                log.push_str(&format!("# t={:.1}s\n", started.elapsed().as_secs_f64()));
                for line in text.lines() {
                    if line.starts_with("omsgate_upstream_shed_total")
                        || line.starts_with("omsgate_upstream_queue_depth")
                        || line.starts_with("omsgate_upstream_in_flight")
                        || line.starts_with("omsgate_cache_requests_total")
                        || line.starts_with("omsgate_cache_lock")
                        || line.starts_with("omsgate_upstream_errors_total")
                    {
                        log.push_str(line);
                        log.push('\n');
                    }
                }
                last = text;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = std::fs::write(&out, log);
        let _ = std::fs::write(out.with_extension("final.txt"), last);
    })
}

/// `OMSGATE_BENCH_WRITE_PCT`: the share of `PATCH` requests, in percent (default 10).
fn write_percent() -> u64 {
    env_or("OMSGATE_BENCH_WRITE_PCT", 10).min(100)
}

fn run_users(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    users: usize,
    secs: u64,
    invoices: Arc<Vec<(String, String)>>,
    tokens: Arc<std::collections::HashMap<String, String>>,
) -> (Vec<Sample>, f64) {
    let cdf = Arc::new(common::zipf_cdf(invoices.len()));
    let write_share = write_percent() as f64 / 100.0;
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
                    let write = rng.random_bool(write_share);
                    let req = if write {
                        http.patch(&url).json(&serde_json::json!({
                            "customer": format!("Customer {}", rng.random_range(0..1000))
                        }))
                    } else {
                        http.get(&url)
                    }
                    .bearer_auth(&tokens[tenant]);
                    let t = Instant::now();
                    let (status, cache) = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let cache = cache_status(r.headers());
                            match r.bytes().await {
                                Ok(_) => (status, cache),
                                Err(_) => (0, "-"),
                            }
                        }
                        Err(_) => (0, "-"),
                    };
                    let sample = Sample {
                        micros: t.elapsed().as_micros() as u64,
                        status,
                        write,
                        cache,
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

fn class(samples: &[Sample], pick: impl Fn(&Sample) -> bool) -> Class {
    let of: Vec<&Sample> = samples.iter().filter(|s| pick(s)).collect();
    let mut lat: Vec<u64> = of.iter().map(|s| s.micros).collect();
    let (mean_ms, p50_ms, p99_ms, _) = stats(&mut lat);
    Class {
        requests: of.len() as u64,
        mean_ms,
        p50_ms,
        p99_ms,
        sheds: of.iter().filter(|s| s.status == 503).count() as u64,
    }
}

fn breakdown(samples: &[Sample]) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<(bool, u16, &str), Vec<u64>> = Default::default();
    for s in samples {
        groups
            .entry((s.write, s.status, s.cache))
            .or_default()
            .push(s.micros);
    }
    groups
        .into_iter()
        .map(|((write, status, cache), mut lat)| {
            let (mean, _, p99, max) = stats(&mut lat);
            format!(
                "{} {status} {cache}: n={} mean={mean:.0}ms p99={p99:.0}ms max={max:.0}ms",
                if write { "PATCH" } else { "GET" },
                lat.len()
            )
        })
        .collect()
}

fn row(target: &str, users: usize, samples: &[Sample], seconds: f64, backend: i64) -> Row {
    let mut lat: Vec<u64> = samples.iter().map(|s| s.micros).collect();
    let (mean_ms, p50_ms, p99_ms, _) = stats(&mut lat);
    let requests = samples.len() as u64;
    Row {
        target: target.into(),
        users,
        requests,
        seconds,
        rps: requests as f64 / seconds.max(1e-9),
        mean_ms,
        p50_ms,
        p99_ms,
        errors: samples
            .iter()
            .filter(|s| s.status == 0 || (s.status >= 500 && s.status != 503))
            .count() as u64,
        sheds: samples.iter().filter(|s| s.status == 503).count() as u64,
        stale: samples.iter().filter(|s| s.cache == "STALE").count() as u64,
        backend_requests: backend,
        backend_per_client_request: backend as f64 / requests.max(1) as f64,
        within_objective: requests > 0 && mean_ms <= 200.0 && p99_ms <= 1000.0,
        reads: class(samples, |s| !s.write),
        writes: class(samples, |s| s.write),
        answered: class(samples, |s| (200..300).contains(&s.status)),
        hits: class(samples, |s| s.cache == "HIT"),
        collapsed: class(samples, |s| s.cache == "COLLAPSED"),
        slow_hits: samples
            .iter()
            .filter(|s| s.cache == "HIT" && s.micros as f64 > HIT_P99_TARGET_MS * 1000.0)
            .count() as u64,
        oms_rps: backend as f64 / seconds.max(1e-9),
        oms_alone_rps: None,
        oms_write_percent: 0.0,
        hit_p99_met: None,
        oms_throughput_met: None,
        load_average: common::loadgen::load_average(),
        breakdown: breakdown(samples),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_or("OMSGATE_BENCH_SECS", 20);
    let audit_ms = env_or("OMSGATE_BENCH_AUDIT_MS", 50);
    let levels: Vec<usize> = std::env::var("OMSGATE_BENCH_USERS")
        .unwrap_or_else(|_| "5,10,20,100,200,500".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let pinned = pin_away_from_the_oms();
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
    let audit_writes =
        format!("SELECT count(*) FROM {schema}.audit_events WHERE payload->>'method' = 'PATCH'");

    let mut rows = Vec::new();
    for &users in &levels {
        for through_gateway in [false, true] {
            let oms_addr = free_addr();
            let _oms = start_oms(&schema, oms_addr, audit_ms);
            let dir = bench_dir("legacy-oms");
            let (target, addr, _gateway) = if through_gateway {
                let (listen, admin) = (free_addr(), free_addr());
                let gw = run_gateway_logged(
                    &dir.join("config.toml"),
                    &gateway_config(oms_addr, listen, admin),
                    listen,
                    admin,
                    Some(&dir.join(format!("omsgate-{users}.log"))),
                );
                wait_ready(admin);
                ("omsgate", listen, Some((gw, admin)))
            } else {
                ("OMS direct", oms_addr, None)
            };
            let before = psql(&rt, &audit_rows);
            let writes_before = psql(&rt, &audit_writes);
            let scraping = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let scraper = _gateway.as_ref().map(|(_, admin)| {
                scrape_metrics(
                    *admin,
                    dir.join(format!("metrics-{users}.log")),
                    scraping.clone(),
                )
            });
            let (samples, seconds) =
                run_users(&rt, addr, users, secs, invoices.clone(), tokens.clone());
            scraping.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(s) = scraper {
                let _ = s.join();
            }
            // The OMS may still be working through its queue: let it drain before counting.
            std::thread::sleep(Duration::from_secs(1));
            let backend = psql(&rt, &audit_rows) - before;
            let backend_writes = psql(&rt, &audit_writes) - writes_before;
            let mut r = row(target, users, &samples, seconds, backend);
            r.oms_write_percent = 100.0 * backend_writes as f64 / backend.max(1) as f64;
            if through_gateway {
                // The OMS direct row of this level ran just before.
                r.oms_alone_rps = rows
                    .iter()
                    .rev()
                    .find(|d: &&Row| d.target == "OMS direct" && d.users == users)
                    .map(|d| d.oms_rps);
                if r.sheds > 0 {
                    r.hit_p99_met = Some(r.hits.requests > 0 && r.hits.p99_ms <= HIT_P99_TARGET_MS);
                    r.oms_throughput_met = r.oms_alone_rps.map(|alone| r.oms_rps >= alone);
                }
            }
            eprintln!(
                "{} {} users: {:.1} req/s mean {:.1} p99 {:.1} errors {} sheds {} stale {} OMS/client {:.2} \
                 HIT n={} p50 {:.1} p99 {:.1} collapsed n={} p99 {:.1} OMS {:.1} req/s (alone {}, PATCH {:.0} %) load {:?}",
                r.target, r.users, r.rps, r.mean_ms, r.p99_ms, r.errors, r.sheds, r.stale,
                r.backend_per_client_request, r.hits.requests, r.hits.p50_ms, r.hits.p99_ms,
                r.collapsed.requests, r.collapsed.p99_ms,
                r.oms_rps, r.oms_alone_rps.map_or("-".into(), |a| format!("{a:.1}")),
                r.oms_write_percent, r.load_average
            );
            for line in &r.breakdown {
                eprintln!("    {line}");
            }
            rows.push(r);
        }
    }
    let _ = psql(&rt, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));

    println!(
        "\nseed scenario against the reference OMS (one uvicorn worker, {audit_ms} ms audit), \
         think time 1 s, {secs} s per row; {}",
        match (oms_cpu(), pinned) {
            (Some(cpu), true) => format!(
                "OMS pinned to CPU {cpu}, load generator and gateway to the other CPUs, \
                 PostgreSQL unpinned"
            ),
            _ => "no CPU pinning".to_string(),
        }
    );
    println!(
        "| target | users | req/s | mean ms | p50 ms | p99 ms | errors | sheds | stale | OMS req per client req | objective |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2} | {} |",
            r.target,
            r.users,
            r.rps,
            r.mean_ms,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.sheds,
            r.stale,
            r.backend_per_client_request,
            if r.within_objective { "met" } else { "not met" }
        );
    }
    println!("\nreads (GET) and writes (PATCH) separately, and the 2xx answers alone");
    println!(
        "| target | users | GET mean ms | GET p50 ms | GET p99 ms | GET sheds | PATCH mean ms | PATCH p50 ms | PATCH p99 ms | PATCH sheds | 2xx | 2xx mean ms | 2xx p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} |",
            r.target,
            r.users,
            r.reads.mean_ms,
            r.reads.p50_ms,
            r.reads.p99_ms,
            r.reads.sheds,
            r.writes.mean_ms,
            r.writes.p50_ms,
            r.writes.p99_ms,
            r.writes.sheds,
            r.answered.requests,
            r.answered.mean_ms,
            r.answered.p99_ms
        );
    }
    println!(
        "\ncache HITs (`x-cache: HIT` answers, collapsed ones apart: `Cache-Status: ...; collapsed`, \
         they waited on the cache lock for another request's trip to the OMS) and the OMS's own \
         throughput (audit rows written / row seconds); verdicts on the omsgate rows with sheds \
         (the OMS's queue full)"
    );
    println!(
        "| target | users | sheds | HIT answers | HIT p50 ms | HIT p99 ms | HITs > {HIT_P99_TARGET_MS:.0} ms | HIT p99 ≤ {HIT_P99_TARGET_MS:.0} ms | collapsed answers | collapsed p50 ms | collapsed p99 ms | OMS req/s | OMS PATCH % | OMS alone req/s | OMS via omsgate ≥ alone | load avg (1 min) at end |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|");
    let verdict = |v: Option<bool>, r: &Row| match v {
        Some(true) => "met".to_string(),
        Some(false) => "not met".to_string(),
        None if r.target == "omsgate" => "— (no sheds)".to_string(),
        None => "—".to_string(),
    };
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
            r.target,
            r.users,
            r.sheds,
            r.hits.requests,
            r.hits.p50_ms,
            r.hits.p99_ms,
            r.slow_hits,
            verdict(r.hit_p99_met, r),
            r.collapsed.requests,
            r.collapsed.p50_ms,
            r.collapsed.p99_ms,
            r.oms_rps,
            r.oms_write_percent,
            r.oms_alone_rps
                .map_or("—".to_string(), |a| format!("{a:.1}")),
            verdict(r.oms_throughput_met, r),
            r.load_average
                .map_or("?".to_string(), |l| format!("{:.1}", l[0])),
        );
    }
    // The users the OMS alone sustains within the objective: the highest level at which it met
    // it with every lower level met too.
    let mut sustained = 0;
    for r in rows.iter().filter(|r| r.target == "OMS direct") {
        if !r.within_objective {
            break;
        }
        sustained = r.users;
    }
    let gateway_ok = |users: usize| {
        rows.iter().any(|r| {
            r.target == "omsgate" && r.users >= users && r.within_objective && r.errors == 0
        })
    };
    let errors: u64 = rows
        .iter()
        .filter(|r| r.target == "omsgate")
        .map(|r| r.errors)
        .sum();
    println!(
        "\nOMS alone within the objective up to {sustained} users (of the levels run); through \
         omsgate: {errors} errors in all; 10x = {} users within the objective: {}",
        sustained * 10,
        if sustained > 0 && gateway_ok(sustained * 10) {
            "met"
        } else {
            "not met"
        }
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-legacy-oms.json");
    let all = |v: fn(&Row) -> Option<bool>| {
        let judged: Vec<bool> = rows.iter().filter_map(v).collect();
        (!judged.is_empty()).then(|| judged.iter().all(|m| *m))
    };
    let (hit_met, oms_met) = (all(|r| r.hit_p99_met), all(|r| r.oms_throughput_met));
    let word = |v: Option<bool>| match v {
        Some(true) => "met",
        Some(false) => "not met",
        None => "not judged (no row with sheds)",
    };
    println!(
        "HIT p99 ≤ {HIT_P99_TARGET_MS:.0} ms while the queue is full: {}; OMS throughput through \
         omsgate ≥ alone: {}",
        word(hit_met),
        word(oms_met)
    );
    let json = serde_json::json!({
        "audit_ms": audit_ms,
        "oms_cpu": if pinned { oms_cpu() } else { None },
        "hit_p99_target_ms": HIT_P99_TARGET_MS,
        "hit_p99_met": hit_met,
        "oms_throughput_met": oms_met,
        "secs": secs,
        "load_average": common::loadgen::load_average(),
        "rows": rows,
        "oms_alone_sustains_users": sustained,
    });
    let _ = std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap_or_default());
    println!("\nwrote {}", out.display());
}
