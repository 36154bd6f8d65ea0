//! Helpers shared by the benches (each includes this file with `mod common;`): environment
//! knobs, service addresses, ports, child processes, the simulated OMS, Kafka topics, load with
//! a list of paths per connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod loadgen;

use loadgen::{LoadReport, LoadSpec};

/// An integer from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The Redis of the tests (`OMSGATE_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("OMSGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL of the tests (`OMSGATE_TEST_DATABASE_URL`).
pub fn database_url() -> String {
    match std::env::var("OMSGATE_TEST_DATABASE_URL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => "postgres://postgres@127.0.0.1:5432/test".to_string(),
    }
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// Waits until `addr` accepts connections (10 s at most).
pub fn wait_port(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} did not open");
}

/// Waits until the gateway's admin listener answers `/ready` with 200 (30 s at most).
pub fn wait_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match std::net::TcpStream::connect(admin) {
            Ok(mut s) => {
                // The admin listener refuses a Host that is not its own address.
                let req =
                    format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(req.as_bytes());
                let mut text = String::new();
                let read = s.read_to_string(&mut text);
                if text.starts_with("HTTP/1.1 200") {
                    return;
                }
                last = format!("{read:?}: {text}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{admin} not ready within 30 s; last answer: {last}");
}

/// A child process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/tmp/bench-NAME`, created.
pub fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `omsgate sim --listen addr ARGS...`, once it listens.
pub fn start_sim(addr: SocketAddr, args: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["sim", "--listen", &addr.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start omsgate sim");
    wait_port(addr);
    Proc(child)
}

/// Creates `topic` with tansu's CLI (`OMSGATE_TANSU_BIN`, else `~/.cargo/bin/tansu`, else
/// `tansu` on PATH); whether it succeeded.
pub fn create_topic(brokers: &str, topic: &str) -> bool {
    let bin = std::env::var("OMSGATE_TANSU_BIN").unwrap_or_else(|_| {
        let p = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
        if p.is_file() {
            p.display().to_string()
        } else {
            "tansu".into()
        }
    });
    let broker = brokers.split(',').next().unwrap_or(brokers);
    Command::new(bin)
        .args(["topic", "create", "--broker", &format!("tcp://{broker}")])
        .args(["--partitions", "3", topic])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes `cfg` to `path` and starts `omsgate run` on it (in the file's folder, quiet); returns
/// once `listen` and `admin` accept connections.
pub fn run_gateway(
    path: &std::path::Path,
    cfg: &str,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Proc {
    run_gateway_logged(path, cfg, listen, admin, None)
}

/// [`run_gateway`], its stderr (the log) written to `log` when given.
pub fn run_gateway_logged(
    path: &std::path::Path,
    cfg: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    log: Option<&std::path::Path>,
) -> Proc {
    std::fs::write(path, cfg).expect("write bench config");
    let stderr = match log {
        Some(log) => Stdio::from(std::fs::File::create(log).expect("create the gateway log")),
        None => Stdio::null(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["run", "--config"])
        .arg(path)
        .current_dir(path.parent().unwrap_or(std::path::Path::new(".")))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start omsgate run");
    wait_port(listen);
    wait_port(admin);
    Proc(child)
}

/// The request paths of connection `c`.
pub type PathsFor<'a> = dyn Fn(usize) -> Vec<String> + 'a;

/// Paths of `GET /__blob/{body}` with a query string unique to the connection and to each call
/// (a run, or its warm-up), so that every request is a cache miss.
pub fn unique_paths(body: u64) -> impl Fn(usize) -> Vec<String> {
    let run = std::sync::atomic::AtomicU64::new(0);
    move |c: usize| {
        let r = run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..5_000)
            .map(|i| format!("/__blob/{body}?m={r}-{c}-{i}"))
            .collect()
    }
}

/// Runs `connections` connections; each gets its own list of paths from `paths_for(c)`.
pub fn drive(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    secs: u64,
    connections: usize,
    paths_for: &PathsFor,
    headers: &[(String, String)],
) -> LoadReport {
    let specs: Vec<LoadSpec> = (0..connections)
        .map(|c| LoadSpec {
            addr,
            paths: paths_for(c),
            headers: headers.to_vec(),
            connections: 1,
            duration: Duration::from_secs(secs),
        })
        .collect();
    let reports = rt.block_on(async {
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|s| tokio::spawn(loadgen::run(s)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    });
    merge(&reports)
}

/// Sums per-connection reports; percentiles are the worst connection's (conservative).
pub fn merge(reports: &[LoadReport]) -> LoadReport {
    let mut m = LoadReport::default();
    let mut weighted = 0u128;
    for r in reports {
        m.requests += r.requests;
        m.non_success += r.non_success;
        m.errors += r.errors;
        m.body_bytes += r.body_bytes;
        m.rps += r.rps;
        m.seconds = m.seconds.max(r.seconds);
        m.p50_us = m.p50_us.max(r.p50_us);
        m.p99_us = m.p99_us.max(r.p99_us);
        m.p999_us = m.p999_us.max(r.p999_us);
        weighted += r.mean_us as u128 * r.requests as u128;
    }
    m.mean_us = (weighted / (m.requests.max(1) as u128)) as u64;
    m
}

/// Every invoice of a dataset as `(tenant, id)`, shared by the load workers.
pub type Invoices = std::sync::Arc<Vec<(String, String)>>;
/// A bearer token per tenant id, shared by the load workers.
pub type Tokens = std::sync::Arc<std::collections::HashMap<String, String>>;

/// The seed workload's identities: every invoice of `dataset` as `(tenant, id)`, and a one-hour
/// HS256 token per tenant signed with the demo secret (`tenant_id` claim, subject
/// `<tenant>-user`), as the simulated and the reference legacy OMS accept them.
pub fn invoices_and_tokens(dataset: &omsgate::sim::data::Dataset) -> (Invoices, Tokens) {
    let invoices = dataset
        .invoices
        .iter()
        .map(|i| (i.tenant_id.clone(), i.id.to_string()))
        .collect();
    let tokens = dataset
        .tenants
        .iter()
        .map(|t| {
            let token = omsgate::identity::issue_hs256(
                omsgate::sim::DEMO_JWT_SECRET,
                "tenant_id",
                &t.id,
                &format!("{}-user", t.id),
                Duration::from_secs(3600),
            );
            (t.id.clone(), token)
        })
        .collect();
    (std::sync::Arc::new(invoices), std::sync::Arc::new(tokens))
}

/// Zipf (s = 1) over `n` ranks: the cumulative distribution for sampling.
pub fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / k as f64;
            acc
        })
        .collect();
    for v in &mut cdf {
        *v /= acc;
    }
    cdf
}

/// A Redis Cluster of three primaries and three replicas, started with `scripts/lib.sh`'s
/// `start_redis_cluster` (free ports, a temporary directory) for the cluster rows; its nodes
/// are killed and the directory removed on drop.
pub struct RedisCluster {
    /// The seed URLs as a TOML array.
    pub nodes: String,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts it; `None` (with the reason on stderr) when it cannot, e.g. without redis-server.
    pub fn start() -> Option<RedisCluster> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(
                "source scripts/lib.sh && start_redis_cluster >&2 && \
                 printf '%s\\n%s\\n' \"$OMSGATE_CLUSTER_NODES\" \"$OMSGATE_CLUSTER_DIR\"",
            )
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        match (out.status.success(), lines.next(), lines.next()) {
            (true, Some(nodes), Some(dir)) => Some(RedisCluster {
                nodes: nodes.to_string(),
                dir: PathBuf::from(dir),
            }),
            _ => {
                eprintln!("could not start a Redis Cluster: skipping the cluster rows");
                None
            }
        }
    }

    /// `redis = { mode = "cluster", nodes = [...] }`.
    pub fn redis_table(&self) -> String {
        format!("redis = {{ mode = \"cluster\", nodes = {} }}", self.nodes)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("redis.pid")) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
