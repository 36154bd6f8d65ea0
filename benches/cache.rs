//! `cargo bench --bench cache`: the response cache.
//!
//! 1. Throughput, side by side, on the simulated OMS with latency 0 (`/__blob/{n}` bodies):
//!    pass-through (no cache), hits from the L1, hits from Redis only (L1 off), and the miss path
//!    (every request a new key: lookup, fetch, store in L1 and Redis). Compression is on (the
//!    default), so entries are stored gzip-compressed: hits are measured for clients without
//!    `Accept-Encoding` (each hit decoded) and for gzip clients (the stored bytes as they are),
//!    each against pass-through for the same client, plus L1 hits with compression off.
//! 2. The seed scenario: the simulated OMS with 500 ms latency and 4 workers, 1000 invoices,
//!    500 concurrent clients each looping over a Zipf-distributed (s = 1) mix of 90 % invoice
//!    reads and 10 % writes (PATCH, invalidating the invoice), with and without omsgate's cache.
//!    Prints mean/p99 latency, OMS requests per client request, and the share and latency of
//!    cache hits. Requests still running when the run ends are cut off after a grace period and
//!    counted with the time they had waited (so the means are lower bounds). The OMS serves at
//!    most workers / latency = 8 requests/s and every write reaches it, so with closed-loop
//!    clients the mean latency cannot drop below clients / (8 / 0.1) = 6.25 s whatever the
//!    cache does (Little's law); the bench prints that floor next to the figures.
//!
//! Prints a table and writes `target/bench-cache.json`. Needs Redis at
//! `OMSGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) for the Redis rows.
//! Environment: `OMSGATE_BENCH_SECS` (default 8), `OMSGATE_BENCH_CONNECTIONS` (default 64),
//! `OMSGATE_BENCH_BODY` (default 20000), `OMSGATE_BENCH_SEED_SECS` (default 20),
//! `OMSGATE_BENCH_SEED_CLIENTS` (default 500). Targets (issue 3): L1 hit ≥ 1.5× pass-through
//! req/s, Redis-only hit ≥ 0.8×, seed scenario mean latency under 20 ms with the cache.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::loadgen::{self, LoadReport};
use omsgate::sim::{SimOptions, DEMO_JWT_SECRET};
use rand::{Rng, SeedableRng};

use common::*;

fn sim(addr: SocketAddr, latency_ms: u64, workers: usize, invoices: usize) -> Proc {
    start_sim(
        addr,
        &[
            "--latency-ms",
            &latency_ms.to_string(),
            "--workers",
            &workers.to_string(),
            "--tenants",
            "5",
            "--invoices",
            &invoices.to_string(),
        ],
    )
}

/// A gateway in front of `upstream`; `extra` goes before `[cache]` (e.g. a `[compression]`
/// section).
fn start_gateway(
    upstream: SocketAddr,
    listen: SocketAddr,
    extra: &str,
    cache: &str,
    routes: &str,
) -> Proc {
    let admin = free_addr();
    let prefix = format!("bench_{}_{}:", std::process::id(), listen.port());
    let cfg = format!(
        r#"
[server]
listen = "{listen}"
threads = 1
[admin]
listen = "{admin}"
[upstream]
servers = ["{upstream}"]
keepalive_pool = 512
# The benches measure the gateway in front of a concurrent upstream: no overload limit
# (the default of 4 in flight is for a one-worker OMS, benches/legacy_oms.rs).
overload = {{ max_in_flight = 0 }}
read_timeout = "120s"
[identity]
mode = "jwt"
jwt_secret = "{DEMO_JWT_SECRET}"
[log]
level = "warn"
{extra}
[cache]
key_prefix = "{prefix}"
{cache}
{routes}
"#
    );
    let path = bench_dir("cache").join(format!("gateway-{}.toml", listen.port()));
    // Audit off: this bench measures something else, and the default file audit would fill
    // ./audit-spool with a record per request.
    let cfg = format!("{cfg}\n[audit]\nenabled = false\n");
    let gateway = run_gateway(&path, &cfg, listen, admin);
    std::thread::sleep(Duration::from_millis(200)); // let the Redis connection come up
    gateway
}

const BLOB_PLAIN: &str = r#"
[[route]]
name = "blob"
path = "/__blob/{size}"
"#;
const BLOB_CACHED: &str = r#"
[[route]]
name = "blob"
path = "/__blob/{size}"
cache = { ttl = "1h", scope = "public" }
"#;

/// Misses store every body; a short TTL keeps the shared Redis from filling up.
const BLOB_MISS: &str = r#"
[[route]]
name = "blob"
path = "/__blob/{size}"
cache = { ttl = "2s", scope = "public" }
"#;

// === Part 1: throughput ===

#[derive(serde::Serialize)]
struct Row {
    target: String,
    /// The client's `Accept-Encoding`, if any.
    accept_encoding: Option<String>,
    report: LoadReport,
    /// Against pass-through for the same client (`Accept-Encoding`).
    vs_pass_through: f64,
    rss_bytes: u64,
    cpu_us_per_request: f64,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    name: &str,
    addr: SocketAddr,
    pid: u32,
    paths_for: &PathsFor,
    accept_encoding: Option<&str>,
) -> Row {
    let secs = env_or("OMSGATE_BENCH_SECS", 8);
    let conns = env_or("OMSGATE_BENCH_CONNECTIONS", 64) as usize;
    let headers: Vec<(String, String)> = accept_encoding
        .map(|ae| vec![("Accept-Encoding".to_string(), ae.to_string())])
        .unwrap_or_default();
    drive(rt, addr, 1, conns, paths_for, &headers); // warm-up: keepalive pools, caches
    let cpu0 = loadgen::cpu_seconds_of(pid);
    let report = drive(rt, addr, secs, conns, paths_for, &headers);
    let cpu1 = loadgen::cpu_seconds_of(pid);
    let cpu_us = if report.requests > 0 {
        (cpu1 - cpu0) * 1e6 / report.requests as f64
    } else {
        0.0
    };
    Row {
        target: name.to_string(),
        accept_encoding: accept_encoding.map(str::to_string),
        report,
        vs_pass_through: 0.0,
        rss_bytes: loadgen::rss_of(pid),
        cpu_us_per_request: cpu_us,
    }
}

fn throughput(rt: &tokio::runtime::Runtime) -> Vec<Row> {
    let body = env_or("OMSGATE_BENCH_BODY", 20_000);
    let sim_addr = free_addr();
    let _sim = sim(sim_addr, 0, 0, 10);
    let same = |_: usize| vec![format!("/__blob/{body}")];
    // Unique paths per connection and run, so that every request is a miss.
    let unique = unique_paths(body);
    let redis = redis_url();
    let redis_only = format!("redis_url = \"{redis}\"\nmemory = {{ max_bytes = 0 }}");
    let both = format!("redis_url = \"{redis}\"");
    let off = "[compression]\nenabled = false";
    let gzip = Some("gzip");
    let mut rows = Vec::new();

    // (name, extra config, [cache] keys, routes, paths, Accept-Encoding)
    type Variant<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a PathsFor<'a>,
        Option<&'a str>,
    );
    let variants: [Variant; 8] = [
        ("pass-through (no cache)", "", "", BLOB_PLAIN, &same, None),
        (
            "pass-through (no cache), gzip",
            "",
            "",
            BLOB_PLAIN,
            &same,
            gzip,
        ),
        ("hit, L1", "", "", BLOB_CACHED, &same, None),
        ("hit, L1, gzip", "", "", BLOB_CACHED, &same, gzip),
        (
            "hit, L1, compression off",
            off,
            "",
            BLOB_CACHED,
            &same,
            None,
        ),
        (
            "hit, Redis only (L1 off)",
            "",
            &redis_only,
            BLOB_CACHED,
            &same,
            None,
        ),
        (
            "hit, Redis only (L1 off), gzip",
            "",
            &redis_only,
            BLOB_CACHED,
            &same,
            gzip,
        ),
        (
            "miss (fetch + store L1 and Redis)",
            "",
            &both,
            BLOB_MISS,
            &unique,
            None,
        ),
    ];
    for (name, extra, cache, routes, paths, ae) in variants {
        let addr = free_addr();
        let gw = start_gateway(sim_addr, addr, extra, cache, routes);
        rows.push(measure(rt, name, addr, gw.0.id(), paths, ae));
    }
    // The Redis-only hits again over a Redis Cluster (3 primaries + 3 replicas on the same
    // machine; issue 20), next to the standalone rows above. OMSGATE_BENCH_CLUSTER=0 skips.
    if env_or("OMSGATE_BENCH_CLUSTER", 1) == 1 {
        if let Some(cluster) = RedisCluster::start() {
            let cluster_only = format!("{}\nmemory = {{ max_bytes = 0 }}", cluster.redis_table());
            for (name, ae) in [
                ("hit, Redis Cluster only (L1 off)", None),
                ("hit, Redis Cluster only (L1 off), gzip", gzip),
            ] {
                let addr = free_addr();
                let gw = start_gateway(sim_addr, addr, "", &cluster_only, BLOB_CACHED);
                rows.push(measure(rt, name, addr, gw.0.id(), &same, ae));
            }
        }
    }
    let base_identity = rows[0].report.rps.max(1e-9);
    let base_gzip = rows[1].report.rps.max(1e-9);
    for r in &mut rows {
        let base = match r.accept_encoding {
            Some(_) => base_gzip,
            None => base_identity,
        };
        r.vs_pass_through = r.report.rps / base;
    }
    rows
}

// === Part 2: the seed scenario ===

#[derive(Debug, Default, serde::Serialize)]
struct SeedRow {
    target: String,
    clients: usize,
    completed: u64,
    cut_off: u64,
    errors: u64,
    reads: u64,
    writes: u64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    read_mean_ms: f64,
    backend_requests: u64,
    backend_per_client_request: f64,
    client_rps: f64,
    /// Reads answered from the cache (`x-cache: HIT` or `STALE`).
    hits: u64,
    hit_mean_ms: f64,
    hit_p99_ms: f64,
    /// The least mean latency closed-loop clients can see when every write reaches the OMS:
    /// clients / (OMS requests per second / write share), by Little's law.
    floor_mean_ms: f64,
    /// The gateway's largest RSS, sampled every 100 ms during the run (issue 9).
    peak_rss_bytes: u64,
}

fn sim_requests(rt: &tokio::runtime::Runtime, sim: SocketAddr) -> u64 {
    rt.block_on(async {
        let body = reqwest::get(format!("http://{sim}/__stats"))
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?;
        body["requests"].as_u64()
    })
    .unwrap_or(0)
}

fn seed_scenario(rt: &tokio::runtime::Runtime, cached: bool) -> SeedRow {
    let secs = env_or("OMSGATE_BENCH_SEED_SECS", 20);
    let clients = env_or("OMSGATE_BENCH_SEED_CLIENTS", 500) as usize;
    let opts = SimOptions {
        tenants: 5,
        invoices_per_tenant: 200,
        ..SimOptions::default()
    };
    let dataset = opts.dataset();
    let (invoices, tokens) = common::invoices_and_tokens(&dataset);
    let (latency_ms, workers, write_share) = (500u64, 4usize, 0.1);
    let sim_addr = free_addr();
    let _sim = sim(sim_addr, latency_ms, workers, 200);
    let routes = if cached {
        r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", stale_while_revalidate = "30s", stale_if_error = "10m", resource = "invoice:{id}" }
[[route]]
name = "invoice_write"
path = "/api/v1/invoices/{id}"
methods = ["PUT", "PATCH", "DELETE"]
invalidates = ["invoice:{id}", "invoices"]
"#
    } else {
        r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
"#
    };
    let addr = free_addr();
    let gw = start_gateway(sim_addr, addr, "", "", routes);
    let backend_before = sim_requests(rt, sim_addr);
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, peak, on) = (gw.0.id(), peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(loadgen::rss_of(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let cdf = Arc::new(common::zipf_cdf(invoices.len()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let grace = Duration::from_secs(10);
    let results = rt.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(secs) + grace)
            .build()
            .expect("client");
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, invoices, tokens, cdf) =
                (http.clone(), invoices.clone(), tokens.clone(), cdf.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                // (latency µs, is_write, cut off, error, from the cache)
                let mut out: Vec<(u64, bool, bool, bool, bool)> = Vec::new();
                while Instant::now() < deadline {
                    let u: f64 = rng.random();
                    let rank = cdf.partition_point(|p| *p < u).min(invoices.len() - 1);
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
                    let cut = deadline + grace;
                    match tokio::time::timeout_at(cut.into(), async {
                        let r = req.send().await?;
                        let ok = r.status().is_success();
                        let hit = matches!(
                            r.headers().get("x-cache").and_then(|v| v.to_str().ok()),
                            Some("HIT" | "STALE")
                        );
                        r.bytes().await.map(|_| (ok, hit))
                    })
                    .await
                    {
                        Ok(Ok((ok, hit))) => {
                            out.push((t.elapsed().as_micros() as u64, write, false, !ok, hit))
                        }
                        Ok(Err(_)) => {
                            out.push((t.elapsed().as_micros() as u64, write, false, true, false))
                        }
                        Err(_) => {
                            out.push((t.elapsed().as_micros() as u64, write, true, false, false));
                            break;
                        }
                    }
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
    let elapsed = started.elapsed().as_secs_f64();
    let backend = sim_requests(rt, sim_addr).saturating_sub(backend_before);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();

    let sorted = |it: &mut dyn Iterator<Item = u64>| -> Vec<u64> {
        let mut v: Vec<u64> = it.collect();
        v.sort_unstable();
        v
    };
    let pct = |lat: &[u64], p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    let lat = sorted(&mut results.iter().map(|r| r.0));
    let hit_lat = sorted(&mut results.iter().filter(|r| r.4).map(|r| r.0));
    let mean = |it: &mut dyn Iterator<Item = u64>| -> f64 {
        let (n, s) = it.fold((0u64, 0u64), |(n, s), v| (n + 1, s + v));
        if n == 0 {
            0.0
        } else {
            s as f64 / n as f64 / 1000.0
        }
    };
    let total = results.len() as u64;
    SeedRow {
        target: if cached {
            "omsgate with cache".into()
        } else {
            "omsgate without cache".into()
        },
        clients,
        completed: results.iter().filter(|r| !r.2).count() as u64,
        cut_off: results.iter().filter(|r| r.2).count() as u64,
        errors: results.iter().filter(|r| r.3).count() as u64,
        reads: results.iter().filter(|r| !r.1).count() as u64,
        writes: results.iter().filter(|r| r.1).count() as u64,
        mean_ms: mean(&mut results.iter().map(|r| r.0)),
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        read_mean_ms: mean(&mut results.iter().filter(|r| !r.1).map(|r| r.0)),
        backend_requests: backend,
        backend_per_client_request: backend as f64 / total.max(1) as f64,
        client_rps: total as f64 / elapsed,
        hits: hit_lat.len() as u64,
        hit_mean_ms: mean(&mut hit_lat.iter().copied()),
        hit_p99_ms: pct(&hit_lat, 0.99),
        floor_mean_ms: clients as f64 * 1000.0
            / (workers as f64 * 1000.0 / latency_ms as f64 / write_share),
        peak_rss_bytes: peak_rss.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let rows = throughput(&rt);
    println!("\nload average before: {:?}", loadgen::load_average());
    println!(
        "{:<36} {:>10} {:>8} {:>9} {:>9} {:>10} {:>9} {:>7}",
        "cache path", "req/s", "× pass", "p50 µs", "p99 µs", "CPU µs/req", "RSS MiB", "errors"
    );
    for r in &rows {
        println!(
            "{:<36} {:>10.0} {:>8.2} {:>9} {:>9} {:>10.1} {:>9.1} {:>7}",
            r.target,
            r.report.rps,
            r.vs_pass_through,
            r.report.p50_us,
            r.report.p99_us,
            r.cpu_us_per_request,
            r.rss_bytes as f64 / (1024.0 * 1024.0),
            r.report.errors + r.report.non_success
        );
    }

    let seed = vec![seed_scenario(&rt, false), seed_scenario(&rt, true)];
    println!(
        "\nseed scenario: simulated OMS 500 ms x 4 workers, 1000 invoices, Zipf reads + 10% writes, {} clients",
        seed[0].clients
    );
    println!(
        "{:<24} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10} {:>11} {:>9} {:>7} {:>9} {:>9} {:>10}",
        "target",
        "requests",
        "cut off",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "read mean",
        "OMS/request",
        "req/s",
        "hits",
        "hit mean",
        "hit p99",
        "peak RSS"
    );
    for r in &seed {
        println!(
            "{:<24} {:>9} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>11.3} {:>9.0} {:>7} {:>9.2} {:>9.2} {:>10}",
            r.target,
            r.completed + r.cut_off,
            r.cut_off,
            r.mean_ms,
            r.p50_ms,
            r.p99_ms,
            r.read_mean_ms,
            r.backend_per_client_request,
            r.client_rps,
            r.hits,
            r.hit_mean_ms,
            r.hit_p99_ms,
            format!("{:.1} MiB", r.peak_rss_bytes as f64 / (1024.0 * 1024.0))
        );
    }
    println!(
        "floor of the mean for closed-loop clients whose writes all reach the OMS (Little's law): {:.0} ms",
        seed[0].floor_mean_ms
    );
    println!("load average after: {:?}", loadgen::load_average());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("bench-cache.json"))
        .unwrap_or_else(|| PathBuf::from("bench-cache.json"));
    let json = serde_json::json!({
        "load_average": loadgen::load_average(),
        "throughput": rows,
        "seed_scenario": seed,
    });
    if let Ok(text) = serde_json::to_string_pretty(&json) {
        let _ = std::fs::write(&out, text);
        println!("\nwrote {}", out.display());
    }
}
