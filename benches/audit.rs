//! `cargo bench --bench audit`: throughput of the audit pipeline.
//!
//! * records/s through `Audit::record` → queue → producer → broker (the broker at
//!   `OMSGATE_TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`; skipped when unreachable), and the
//!   cost of one `record()` call on the request path;
//! * records/s of file audit (queue → spool, no broker);
//! * spool append throughput for each fsync policy.
//!
//! Prints a table and writes `target/bench-audit.json`.

mod common;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omsgate::audit::spool::{Flush, Spool};
use omsgate::audit::{Audit, AuditConfig, AuditFile, AuditRecord, Fsync};
use omsgate::config::Problems;
use pingora::services::background::BackgroundService;

use common::*;

struct Row {
    name: String,
    records: u64,
    seconds: f64,
    extra: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("omsgate-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(brokers: Option<&str>, topic: &str, spool: &Path) -> AuditConfig {
    let text = format!(
        "brokers = \"{}\"\ntopic = \"{topic}\"\nspool_dir = \"{}\"\nqueue_capacity = 65536\n",
        brokers.unwrap_or(""),
        spool.display()
    );
    let f: AuditFile = toml::from_str(&text).unwrap();
    let mut p = Problems::default();
    let c = AuditConfig::from_file(&f, &mut p);
    assert!(p.is_empty(), "{:?}", p.list());
    c
}

fn record(i: u64, cfg: &AuditConfig) -> AuditRecord {
    AuditRecord {
        request_id: format!("bench-{i}"),
        tenant: Some(format!("tenant-{}", i % 50)),
        subject: Some(format!("user-{}", i % 1000)),
        client_ip: Some([10, 0, 0, 1].into()),
        method: "GET".into(),
        route: "invoice".into(),
        path: format!("/api/v1/invoices/{i}"),
        query: omsgate::audit::redact_query("expand=lines&token=x", cfg),
        status: 200,
        duration_ms: 3.2,
        upstream_ms: Some(2.9),
        bytes_out: 2048,
        cache: Some("MISS".into()),
        user_agent: Some("bench/1.0".into()),
        ..Default::default()
    }
}

/// Runs the service on its own runtime thread, records `n` records, waits until `done` says
/// they are all through, stops the service. Returns (seconds, p50, p99 of record() in ns, state).
fn pipeline(
    cfg: &AuditConfig,
    n: u64,
    done: impl Fn(&omsgate::audit::AuditStats) -> bool,
) -> (f64, u64, u64, omsgate::audit::AuditState) {
    let audit = Audit::new(cfg).unwrap();
    let svc = audit.background();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(svc.start(rx));
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = Vec::with_capacity((n / 100) as usize);
    let start = Instant::now();
    for i in 0..n {
        let rec = record(i, cfg);
        if i % 100 == 0 {
            let t = Instant::now();
            audit.record(rec);
            samples.push(t.elapsed().as_nanos() as u64);
        } else {
            audit.record(rec);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done(&audit.state().stats) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = start.elapsed().as_secs_f64();
    let state = audit.state();
    let _ = stop.send(true);
    handle.join().unwrap();
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (seconds, pct(0.5), pct(0.99), state)
}

fn broker_reachable(brokers: &str) -> bool {
    brokers
        .split(',')
        .next()
        .and_then(|b| b.to_socket_addrs().ok())
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn spool_bench(name: &str, fsync: Fsync, n: u64) -> Row {
    let dir = temp_dir(name);
    let spool = Spool::open(&dir, 1 << 40, 64 << 20, fsync).unwrap();
    let cfg = AuditConfig::default();
    let payload = record(1, &cfg).to_json();
    let start = Instant::now();
    for i in 0..n {
        // Batches of 1024, as the shipper writes them; fsync per the policy.
        spool
            .append(b"tenant-1", &payload, Flush::Later, false)
            .unwrap();
        if i % 1024 == 1023 {
            spool.flush().unwrap();
        }
    }
    spool.sync().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let mib = (n as f64 * (payload.len() + 18) as f64) / (1 << 20) as f64;
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        name: format!("spool append, fsync={name}"),
        records: n,
        seconds,
        extra: format!("{:.1} MiB/s", mib / seconds),
    }
}

fn main() {
    let mut rows = Vec::new();
    let brokers =
        std::env::var("OMSGATE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n: u64 = std::env::var("AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);

    if broker_reachable(&brokers) {
        let topic = format!(
            "audit_bench_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        if create_topic(&brokers, &topic) {
            let dir = temp_dir("kafka");
            let cfg = config(Some(&brokers), &topic, &dir);
            let (seconds, p50, p99, state) = pipeline(&cfg, n, |s| s.delivered + s.replayed >= n);
            rows.push(Row {
                name: "record → queue → producer → broker".into(),
                records: state.stats.delivered + state.stats.replayed,
                seconds,
                extra: format!(
                    "record() p50 {p50} ns, p99 {p99} ns; spooled {} (queue full), dropped {}",
                    state.stats.spooled, state.stats.dropped
                ),
            });
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("note: could not create a topic on {brokers}; Kafka bench skipped");
        }
    } else {
        eprintln!("note: no broker at {brokers}; Kafka bench skipped");
    }

    let dir = temp_dir("file");
    let cfg = config(None, "unused", &dir);
    let (seconds, p50, p99, state) = pipeline(&cfg, n, |s| s.spooled >= n);
    rows.push(Row {
        name: "record → queue → spool (file audit)".into(),
        records: state.stats.spooled,
        seconds,
        extra: format!("record() p50 {p50} ns, p99 {p99} ns"),
    });
    let _ = std::fs::remove_dir_all(&dir);

    rows.push(spool_bench("never", Fsync::Never, n));
    rows.push(spool_bench(
        "interval",
        Fsync::Interval(Duration::from_secs(1)),
        n,
    ));
    rows.push(spool_bench("always", Fsync::Always, n / 10));

    println!(
        "\n{:<40} {:>10} {:>9} {:>13}  notes",
        "audit benchmark", "records", "seconds", "records/s"
    );
    for r in &rows {
        println!(
            "{:<40} {:>10} {:>9.3} {:>13.0}  {}",
            r.name,
            r.records,
            r.seconds,
            r.rate(),
            r.extra
        );
    }
    let json = serde_json::json!({
        "bench": "audit",
        "brokers": brokers,
        "results": rows.iter().map(|r| serde_json::json!({
            "name": r.name,
            "records": r.records,
            "seconds": r.seconds,
            "records_per_second": r.rate(),
            "notes": r.extra,
        })).collect::<Vec<_>>(),
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-audit.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => println!("\nwritten to {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
}
