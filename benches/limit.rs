//! `cargo bench --bench limit`: what rate limiting costs.
//!
//! 1. The check itself: `Limiter::decide` in a tight loop with a quota that always admits,
//!    for no policy, a local policy, and a distributed policy against Redis (one check at a
//!    time, and 64 in flight).
//! 2. End to end: the simulated OMS behind the gateway with no limiter, a local limiter and a
//!    distributed one (every request checked by an always-admitting per-IP default policy):
//!    throughput, latency, CPU per request, and the overhead against no limiter. The three run
//!    in turn, `OMSGATE_BENCH_ROUNDS` times (default 3), and the overhead is computed from the
//!    median of each, so that a burst of load from elsewhere on the machine during one run
//!    does not decide the result.
//!
//! Prints a table and writes `target/bench-limit.json`. Environment: `OMSGATE_BENCH_SECS`
//! (seconds per end-to-end run, default 5; 0 skips them), `OMSGATE_BENCH_CONNECTIONS`
//! (default 64), `OMSGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`; the distributed
//! rows are skipped when it does not answer).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::loadgen::{self, LoadReport, LoadSpec};
use omsgate::limit::{Caller, Decision, Limiter};

use common::*;

fn redis_up(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .is_ok()
}

/// `redis = { mode = "cluster", ... }` of the Redis Cluster of the "cluster" rows (issue 20).
static CLUSTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A `[rate_limit]` section whose per-IP default policy always admits at bench rates.
/// "distributed" uses the standalone Redis of the tests, "cluster" the bench's Redis Cluster.
fn rate_limit_section(mode: &str) -> String {
    let redis = match mode {
        "cluster" => CLUSTER.get().cloned().unwrap_or_default(),
        _ => format!("redis_url = \"{}\"", redis_url()),
    };
    match mode {
        "none" => String::new(),
        "local" => "[rate_limit]\ndefault = \"bench\"\n[rate_limit.policies.bench]\n\
                    quota = \"1000000/second\"\n"
            .to_string(),
        _ => format!(
            "[rate_limit]\nmode = \"distributed\"\n{redis}\nkey_prefix = \
             \"omsgate-bench-{}:\"\ndefault = \"bench\"\n[rate_limit.policies.bench]\n\
             quota = \"1000000/second\"\n",
            std::process::id()
        ),
    }
}

/// Whether checks of `mode` go to Redis.
fn remote(mode: &str) -> bool {
    matches!(mode, "distributed" | "cluster")
}

// === 1. the check ===

#[derive(serde::Serialize)]
struct CheckRow {
    limiter: String,
    in_flight: usize,
    checks: u64,
    ns_per_check: f64,
    checks_per_sec: f64,
}

fn check_rows(rt: &tokio::runtime::Runtime, mode: &str) -> Vec<CheckRow> {
    let config = omsgate::config::Config::parse(&rate_limit_section(mode)).expect("bench config");
    let limiter = Arc::new(Limiter::new(&config.rate_limit, &config.routes));
    let headers = Arc::new(http::HeaderMap::new());
    let one = |limiter: Arc<Limiter>, headers: Arc<http::HeaderMap>, i: u32| async move {
        let caller = Caller {
            // 1024 clients: each sees a small share of the loop, far below the quota.
            ip: Some(IpAddr::from((0x0a00_0000 + (i & 1023)).to_be_bytes())),
            tenant: None,
            subject: None,
            headers: &headers,
            route: "other",
        };
        let d = limiter.decide(0, &caller).await;
        assert!(
            matches!(d, Decision::Admitted(_) | Decision::Unlimited),
            "{d:?}"
        );
    };
    let mut rows = Vec::new();
    let budget = Duration::from_secs(2);
    for in_flight in [1usize, 64] {
        if !remote(mode) && in_flight > 1 {
            continue; // Local checks never wait: concurrency adds nothing to measure.
        }
        // Warm up (connects to Redis, loads the script).
        rt.block_on(async {
            for i in 0..1000 {
                one(limiter.clone(), headers.clone(), i).await;
            }
        });
        let started = Instant::now();
        let checks = rt.block_on(async {
            let mut n = 0u64;
            while started.elapsed() < budget {
                let mut batch = Vec::with_capacity(in_flight);
                for _ in 0..in_flight.max(1) {
                    n += 1;
                    batch.push(one(limiter.clone(), headers.clone(), n as u32));
                }
                if in_flight == 1 {
                    for f in batch {
                        f.await;
                    }
                    // Amortise the clock read over many local checks.
                    if !remote(mode) {
                        for _ in 0..999 {
                            n += 1;
                            one(limiter.clone(), headers.clone(), n as u32).await;
                        }
                    }
                } else {
                    futures::future::join_all(batch).await;
                }
            }
            n
        });
        let secs = started.elapsed().as_secs_f64();
        rows.push(CheckRow {
            limiter: mode.to_string(),
            in_flight,
            checks,
            ns_per_check: secs * 1e9 / checks as f64,
            checks_per_sec: checks as f64 / secs,
        });
    }
    rows
}

// === 2. end to end ===

fn start_gateway(upstream: SocketAddr, listen: SocketAddr, mode: &str) -> Proc {
    let admin = free_addr();
    let cfg = format!(
        "[server]\nlisten = \"{listen}\"\nthreads = 1\n[admin]\nlisten = \"{admin}\"\n\
         [upstream]\nservers = [\"{upstream}\"]\nkeepalive_pool = 256\noverload = {{ max_in_flight = 0 }}\n[log]\nlevel = \"warn\"\n\
         [[route]]\nname = \"blob\"\npath = \"/__blob/{{size}}\"\n{}",
        rate_limit_section(mode)
    );
    let path = bench_dir("limit").join(format!("gateway-{mode}.toml"));
    // Audit off: this bench measures something else, and the default file audit would fill
    // ./audit-spool with a record per request.
    let cfg = format!("{cfg}\n[audit]\nenabled = false\n");
    run_gateway(&path, &cfg, listen, admin)
}

#[derive(serde::Serialize, Clone)]
struct ProxyRow {
    limiter: String,
    report: LoadReport,
    cpu_us_per_request: f64,
    throughput_overhead_pct: f64,
}

fn proxy_row(rt: &tokio::runtime::Runtime, sim: SocketAddr, mode: &str, secs: u64) -> ProxyRow {
    let listen = free_addr();
    let gw = start_gateway(sim, listen, mode);
    let spec = |d: u64| LoadSpec {
        addr: listen,
        paths: vec!["/__blob/2000".to_string()],
        headers: vec![],
        connections: env_or("OMSGATE_BENCH_CONNECTIONS", 64) as usize,
        duration: Duration::from_secs(d),
    };
    rt.block_on(loadgen::run(spec(1)));
    let cpu0 = loadgen::cpu_seconds_of(gw.0.id());
    let report = rt.block_on(loadgen::run(spec(secs)));
    let cpu1 = loadgen::cpu_seconds_of(gw.0.id());
    ProxyRow {
        limiter: mode.to_string(),
        cpu_us_per_request: (cpu1 - cpu0) * 1e6 / report.requests.max(1) as f64,
        report,
        throughput_overhead_pct: 0.0,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let redis = redis_up(&redis_url());
    let mut modes = vec!["none", "local"];
    if redis {
        modes.push("distributed");
    } else {
        eprintln!(
            "Redis at {} does not answer: skipping the distributed rows",
            redis_url()
        );
    }
    // The distributed check over a Redis Cluster (3 primaries + 3 replicas on the same
    // machine), next to the standalone one. OMSGATE_BENCH_CLUSTER=0 skips.
    let _cluster = (env_or("OMSGATE_BENCH_CLUSTER", 1) == 1)
        .then(RedisCluster::start)
        .flatten();
    if let Some(c) = &_cluster {
        let _ = CLUSTER.set(c.redis_table());
        modes.push("cluster");
    }

    println!("\nload average before: {:?}", loadgen::load_average());
    let checks: Vec<CheckRow> = modes.iter().flat_map(|m| check_rows(&rt, m)).collect();
    println!(
        "{:<12} {:>9} {:>12} {:>12} {:>14}",
        "limiter", "in flight", "checks", "ns/check", "checks/s"
    );
    for r in &checks {
        println!(
            "{:<12} {:>9} {:>12} {:>12.0} {:>14.0}",
            r.limiter, r.in_flight, r.checks, r.ns_per_check, r.checks_per_sec
        );
    }

    let secs = env_or("OMSGATE_BENCH_SECS", 5);
    let mut proxy = Vec::new();
    let mut runs = Vec::new();
    if secs > 0 {
        let sim_addr = free_addr();
        let _sim = start_sim(sim_addr, &["--latency-ms", "0", "--workers", "100000"]);
        for _ in 0..env_or("OMSGATE_BENCH_ROUNDS", 3).max(1) {
            for m in &modes {
                runs.push(proxy_row(&rt, sim_addr, m, secs));
            }
        }
        // Per mode, the run with the median throughput.
        for m in &modes {
            let mut of_mode: Vec<&ProxyRow> = runs.iter().filter(|r| r.limiter == *m).collect();
            of_mode.sort_by(|a, b| a.report.rps.total_cmp(&b.report.rps));
            if let Some(r) = of_mode.get(of_mode.len() / 2) {
                proxy.push((*r).clone());
            }
        }
        let base = proxy.first().map(|r| r.report.rps).unwrap_or(0.0);
        for r in &mut proxy {
            r.throughput_overhead_pct = if base > 0.0 {
                (1.0 - r.report.rps / base) * 100.0
            } else {
                0.0
            };
        }
        println!(
            "\n{:<12} {:>10} {:>9} {:>9} {:>11}",
            "every run", "req/s", "p50 µs", "p99 µs", "CPU µs/req"
        );
        for r in &runs {
            println!(
                "{:<12} {:>10.0} {:>9} {:>9} {:>11.1}",
                r.limiter, r.report.rps, r.report.p50_us, r.report.p99_us, r.cpu_us_per_request,
            );
        }
        println!(
            "\n{:<12} {:>10} {:>9} {:>9} {:>11} {:>10} {:>7}",
            "median run", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "overhead", "errors"
        );
        for r in &proxy {
            println!(
                "{:<12} {:>10.0} {:>9} {:>9} {:>11.1} {:>9.1}% {:>7}",
                r.limiter,
                r.report.rps,
                r.report.p50_us,
                r.report.p99_us,
                r.cpu_us_per_request,
                r.throughput_overhead_pct,
                r.report.errors + r.report.non_success
            );
        }
    }

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("bench-limit.json"))
        .unwrap_or_else(|| PathBuf::from("bench-limit.json"));
    let json = serde_json::json!({
        "load_average": loadgen::load_average(),
        "checks": checks,
        "proxy": proxy,
        "runs": runs,
    });
    if let Ok(text) = serde_json::to_string_pretty(&json) {
        let _ = std::fs::write(&out, text);
        println!("\nwrote {}", out.display());
    }
}
