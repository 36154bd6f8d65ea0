//! `cargo bench --bench proxy`: issue 9's targets side by side in one run. Throughput and
//! latency of the simulated OMS directly, omsgate pass-through, an omsgate L1 cache hit, a
//! Redis-only hit (when Redis answers), all features on, audit to files and to Kafka (when a
//! broker is given), and nginx as a reverse proxy and as a `proxy_cache` (when `nginx` is on
//! PATH; its CPU and RSS are its worker's); then the ratios the targets are written in, and
//! the gateway's RSS with many idle keepalive connections.
//!
//! Starts the simulated OMS (`omsgate sim`, latency 0), the gateway and nginx as child
//! processes, drives a closed-loop keepalive load over loopback for a fixed time, prints tables
//! and writes `target/bench-proxy.json`. Environment: `OMSGATE_BENCH_SECS` (default 8),
//! `OMSGATE_BENCH_CONNECTIONS` (default 64), `OMSGATE_BENCH_BODY` (response bytes, default
//! 20000), `OMSGATE_BENCH_IDLE` (idle connections, default 10000), `OMSGATE_BENCH_THREADS`
//! (the gateway's `server.threads`, default 1), `OMSGATE_BENCH_KEEPALIVE` (its
//! `upstream.keepalive_pool`, default 256), `OMSGATE_TEST_REDIS_URL`,
//! `OMSGATE_BENCH_KAFKA_BROKERS` (else `OMSGATE_TEST_KAFKA_BROKERS`), `OMSGATE_BENCH_TLS` (0
//! skips the TLS rows).
//!
//! TLS rows (issue 16): a throwaway CA and a `localhost` certificate (rcgen) for the gateway's
//! `[server.tls]` and nginx's `ssl_certificate`; the load generator's rustls client (TLS 1.3,
//! ALPN `http/1.1`) on keepalive connections (pass-through, L1 hit), and with a new TCP
//! connection and a full handshake (no resumption) per request (new handshakes per second).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use common::loadgen::{self, LoadReport, LoadSpec, TlsLoad};

use common::*;

/// The gateway with the `blob` route (`extra`: more keys of that route) and `tables` (more
/// tables, e.g. `[audit]`; the default file audit when none is given).
fn start_gateway(upstream: SocketAddr, listen: SocketAddr, extra: &str, tables: &str) -> Proc {
    let admin = free_addr();
    let threads = env_or("OMSGATE_BENCH_THREADS", 1);
    let keepalive = env_or("OMSGATE_BENCH_KEEPALIVE", 256);
    let cfg = format!(
        r#"
[server]
listen = "{listen}"
threads = {threads}
[admin]
listen = "{admin}"
[upstream]
servers = ["{upstream}"]
keepalive_pool = {keepalive}
# The benches measure the gateway in front of a concurrent upstream: no overload limit
# (the default of 4 in flight is for a one-worker OMS, benches/legacy_oms.rs).
overload = {{ max_in_flight = 0 }}
[log]
level = "warn"
{tables}
[[route]]
name = "blob"
path = "/__blob/{{size}}"
{extra}
"#
    );
    let path = bench_dir("proxy").join(format!("gateway-{}.toml", listen.port()));
    run_gateway(&path, &cfg, listen, admin)
}

/// nginx in front of `upstream`: a reverse proxy, or with `cache` a `proxy_cache` that stores
/// every 200 for an hour (the equivalent of the gateway's `cache = { ttl = "1h" }`).
fn start_nginx(upstream: SocketAddr, listen: SocketAddr, cache: bool) -> Option<Nginx> {
    start_nginx_tls(upstream, listen, cache, None)
}

/// [`start_nginx`], terminating TLS with `tls`'s certificate and key when given (TLS 1.2/1.3,
/// its default ciphers; keepalive connections not closed after 1 000 requests, as the gateway
/// does not close them either, so that the keepalive rows measure no handshakes).
fn start_nginx_tls(
    upstream: SocketAddr,
    listen: SocketAddr,
    cache: bool,
    tls: Option<&Pki>,
) -> Option<Nginx> {
    let nginx = which("nginx")?;
    let (ssl, ssl_conf) = match tls {
        Some(pki) => (
            " ssl",
            format!(
                "ssl_certificate {};\n    ssl_certificate_key {};\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    keepalive_requests 100000000;",
                pki.cert.display(),
                pki.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    let dir = bench_dir("proxy").join(format!("nginx-{}", listen.port()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(dir.join("logs"));
    let (cache_path, cache_use) = if cache {
        (
            format!(
                "proxy_cache_path {}/cache keys_zone=oms:10m max_size=100m;",
                dir.display()
            ),
            "proxy_cache oms;\n      proxy_cache_valid 200 1h;\n      \
             proxy_ignore_headers Cache-Control Expires Set-Cookie;\n      \
             add_header X-Cache $upstream_cache_status;"
                .to_string(),
        )
    } else {
        (String::new(), String::new())
    };
    let conf = format!(
        r#"
worker_processes 1;
error_log {dir}/logs/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {cache_path}
  upstream oms {{ server {upstream}; keepalive 256; }}
  server {{
    listen {listen}{ssl} reuseport;
    {ssl_conf}
    location / {{
      proxy_pass http://oms;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id;
      {cache_use}
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
    Some(Nginx(Proc(child)))
}

/// The nginx master: stopped with SIGTERM so that it stops its workers too (a SIGKILL of the
/// master, as [`Proc`] sends, would leave them running).
struct Nginx(Proc);

impl Nginx {
    /// The worker's pid (the one process that serves with `worker_processes 1`), for its CPU
    /// and RSS; the master's when the worker cannot be found.
    fn worker(&self) -> u32 {
        let master = (self.0).0.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                    .unwrap_or_default();
            // The worker, not the cache manager/loader that a proxy_cache also starts: the
            // first child is the worker.
            if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok()) {
                return pid;
            }
            if std::time::Instant::now() > deadline {
                return master;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let child = &mut (self.0).0;
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
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

/// A throwaway CA and a server certificate for `localhost` / `127.0.0.1` (rcgen), written as
/// PEM files for the gateway's `[server.tls]` and nginx's `ssl_certificate`: the same
/// certificate for both.
struct Pki {
    ca_der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use std::os::unix::fs::PermissionsExt;
        let dir = bench_dir("proxy").join(format!("tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "omsgate bench CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let pki = Pki {
            ca_der: ca.der().to_vec(),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&pki.cert, cert.pem()).expect("write certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        pki
    }

    /// The gateway's `[server.tls]` table.
    fn gateway_table(&self) -> String {
        format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
            self.cert.display(),
            self.key.display()
        )
    }

    /// A rustls client trusting the CA, HTTP/1.1 by ALPN; `reconnect`: a new connection and a
    /// full handshake (no resumption) per request.
    fn client(&self, reconnect: bool) -> TlsLoad {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .expect("CA certificate");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if reconnect {
            config.resumption = rustls::client::Resumption::disabled();
        }
        TlsLoad {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: rustls::pki_types::ServerName::try_from("localhost").expect("server name"),
            reconnect,
        }
    }
}

/// [`drive`] over TLS.
fn drive_tls(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    secs: u64,
    connections: usize,
    path: &str,
    tls: &TlsLoad,
) -> LoadReport {
    let reports = rt.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let spec = LoadSpec {
                    addr,
                    paths: vec![path.to_string()],
                    headers: Vec::new(),
                    connections: 1,
                    duration: Duration::from_secs(secs),
                };
                tokio::spawn(loadgen::run_tls(spec, tls.clone()))
            })
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

/// Load on one path for every connection; `pid` is the process whose CPU and RSS are read.
fn measure(rt: &tokio::runtime::Runtime, name: &str, addr: SocketAddr, pid: Option<u32>) -> Row {
    let body = env_or("OMSGATE_BENCH_BODY", 20_000);
    let path = format!("/__blob/{body}");
    measure_with(rt, name, addr, pid, &|_| vec![path.clone()], &[], None)
}

/// [`measure`] over TLS.
fn measure_tls(
    rt: &tokio::runtime::Runtime,
    name: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    tls: &TlsLoad,
) -> Row {
    let body = env_or("OMSGATE_BENCH_BODY", 20_000);
    let path = format!("/__blob/{body}");
    measure_with(rt, name, addr, pid, &|_| vec![path.clone()], &[], Some(tls))
}

/// [`measure`] with each connection's own paths and extra request headers.
fn measure_with(
    rt: &tokio::runtime::Runtime,
    name: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    paths_for: &PathsFor,
    headers: &[(String, String)],
    tls: Option<&TlsLoad>,
) -> Row {
    let secs = env_or("OMSGATE_BENCH_SECS", 8);
    let conns = env_or("OMSGATE_BENCH_CONNECTIONS", 64) as usize;
    let run = |secs| match tls {
        None => drive(rt, addr, secs, conns, paths_for, headers),
        Some(tls) => {
            let paths = paths_for(0);
            drive_tls(rt, addr, secs, conns, &paths[0], tls)
        }
    };
    // Warm up keepalive pools and caches.
    run(1);
    let cpu0 = pid.map(loadgen::cpu_seconds_of).unwrap_or(0.0);
    let report = run(secs);
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

/// Whether Redis answers a PING.
fn redis_up(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

const NO_AUDIT: &str = "[audit]\nenabled = false";
const CACHED: &str = r#"cache = { ttl = "1h", scope = "public" }"#;

/// Names of the rows the targets compare.
const PASS: &str = "omsgate pass-through";
const NGINX: &str = "nginx reverse proxy";
const L1_HIT: &str = "omsgate L1 cache hit";
const NGINX_HIT: &str = "nginx proxy_cache hit";
const REDIS_HIT: &str = "omsgate Redis-only hit";
const ALL: &str = "omsgate all features";
const TLS_PASS: &str = "omsgate TLS pass-through";
const NGINX_TLS: &str = "nginx TLS reverse proxy";
const TLS_L1_HIT: &str = "omsgate TLS L1 hit";
const NGINX_TLS_HIT: &str = "nginx TLS proxy_cache hit";
const TLS_HANDSHAKES: &str = "omsgate TLS new handshakes";
const NGINX_TLS_HANDSHAKES: &str = "nginx TLS new handshakes";

fn main() {
    // `cargo bench` passes `--bench`; any other argument selects nothing special yet.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let load_before = loadgen::load_average();
    let sim_addr = free_addr();
    let sim = start_sim(sim_addr, &["--latency-ms", "0", "--workers", "100000"]);
    let mut rows = Vec::new();
    let body = env_or("OMSGATE_BENCH_BODY", 20_000);

    rows.push(measure(
        &rt,
        "direct (simulated OMS)",
        sim_addr,
        Some(sim.0.id()),
    ));

    // Every row below but "all features" sends no Accept-Encoding and has compression off or
    // irrelevant, so the same 20 KB of JSON crosses every proxy.
    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, "", NO_AUDIT);
    rows.push(measure(&rt, PASS, gw_addr, Some(gw.0.id())));
    drop(gw);

    let ngx_addr = free_addr();
    match start_nginx(sim_addr, ngx_addr, false) {
        Some(ngx) => rows.push(measure(&rt, NGINX, ngx_addr, Some(ngx.worker()))),
        None => {
            eprintln!("nginx not on PATH: skipping the nginx rows (apt-get install nginx-light)")
        }
    }

    // Hits: compression off, so both caches send the stored identity body.
    let hit_tables = format!("{NO_AUDIT}\n[compression]\nenabled = false");
    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, CACHED, &hit_tables);
    rows.push(measure(&rt, L1_HIT, gw_addr, Some(gw.0.id())));
    drop(gw);

    let ngx_addr = free_addr();
    if let Some(ngx) = start_nginx(sim_addr, ngx_addr, true) {
        rows.push(measure(&rt, NGINX_HIT, ngx_addr, Some(ngx.worker())));
    }

    let redis = redis_url();
    if redis_up(&redis) {
        let prefix = format!("bench_proxy_{}:", std::process::id());
        let tables = format!(
            "{hit_tables}\n[cache]\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\n\
             memory = {{ max_bytes = 0 }}"
        );
        let gw_addr = free_addr();
        let gw = start_gateway(sim_addr, gw_addr, CACHED, &tables);
        rows.push(measure(&rt, REDIS_HIT, gw_addr, Some(gw.0.id())));
        drop(gw);
    } else {
        eprintln!("Redis does not answer at {redis}: skipping the Redis-only hit row");
    }

    // All features: JWT identity, a per-tenant rate limit that admits everything, a cache miss
    // on every request (each connection walks its own paths; stored in the L1 for 2 s), gzip
    // for the client and the store, metrics, the default file audit.
    let spool = bench_dir("proxy").join(format!("spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let token = omsgate::identity::issue_hs256(
        omsgate::sim::DEMO_JWT_SECRET,
        "tenant_id",
        "acme",
        "bench",
        Duration::from_secs(3600),
    );
    let all_tables = format!(
        "[identity]\nmode = \"jwt\"\njwt_secret = \"{}\"\n\
         [rate_limit.policies.per_tenant]\nkey = \"tenant\"\nquota = \"1000000/second\"\n\
         [audit]\nspool_dir = \"{}/all\"",
        omsgate::sim::DEMO_JWT_SECRET,
        spool.display()
    );
    let all_route = "rate_limit = [\"per_tenant\"]\ncache = { ttl = \"2s\", scope = \"tenant\" }";
    let unique = unique_paths(body);
    let headers = [
        ("Authorization".to_string(), format!("Bearer {token}")),
        ("Accept-Encoding".to_string(), "gzip".to_string()),
    ];
    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, all_route, &all_tables);
    rows.push(measure_with(
        &rt,
        ALL,
        gw_addr,
        Some(gw.0.id()),
        &unique,
        &headers,
        None,
    ));
    drop(gw);

    // Audit on (issue 6): one record per request to the spool files (no brokers), and to Kafka
    // when a broker is given (OMSGATE_BENCH_KAFKA_BROKERS, else OMSGATE_TEST_KAFKA_BROKERS).
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

    // TLS (issue 16): the client -> proxy hop over TLS 1.3 (rustls client, HTTP/1.1 by ALPN),
    // the gateway with [server.tls] and nginx with the same certificate; keepalive rows (one
    // handshake per connection), then a new connection and full handshake per request.
    // OMSGATE_BENCH_TLS=0 skips them.
    if env_or("OMSGATE_BENCH_TLS", 1) != 0 {
        let pki = Pki::new();
        let (keepalive, fresh) = (pki.client(false), pki.client(true));
        let tls_tables = format!("{NO_AUDIT}\n{}", pki.gateway_table());
        let gw_addr = free_addr();
        let gw = start_gateway(sim_addr, gw_addr, "", &tls_tables);
        rows.push(measure_tls(
            &rt,
            TLS_PASS,
            gw_addr,
            Some(gw.0.id()),
            &keepalive,
        ));
        rows.push(measure_tls(
            &rt,
            TLS_HANDSHAKES,
            gw_addr,
            Some(gw.0.id()),
            &fresh,
        ));
        drop(gw);
        let ngx_addr = free_addr();
        if let Some(ngx) = start_nginx_tls(sim_addr, ngx_addr, false, Some(&pki)) {
            let worker = ngx.worker();
            rows.push(measure_tls(
                &rt,
                NGINX_TLS,
                ngx_addr,
                Some(worker),
                &keepalive,
            ));
            rows.push(measure_tls(
                &rt,
                NGINX_TLS_HANDSHAKES,
                ngx_addr,
                Some(worker),
                &fresh,
            ));
        }
        let hit_tls = format!("{hit_tables}\n{}", pki.gateway_table());
        let gw_addr = free_addr();
        let gw = start_gateway(sim_addr, gw_addr, CACHED, &hit_tls);
        rows.push(measure_tls(
            &rt,
            TLS_L1_HIT,
            gw_addr,
            Some(gw.0.id()),
            &keepalive,
        ));
        drop(gw);
        let ngx_addr = free_addr();
        if let Some(ngx) = start_nginx_tls(sim_addr, ngx_addr, true, Some(&pki)) {
            rows.push(measure_tls(
                &rt,
                NGINX_TLS_HIT,
                ngx_addr,
                Some(ngx.worker()),
                &keepalive,
            ));
        }
        if let Some(dir) = pki.cert.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    println!(
        "\n{:<28} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "target", "req/s", "p50 µs", "p99 µs", "p999 µs", "CPU µs/req", "RSS MiB", "errors"
    );
    for r in &rows {
        println!(
            "{:<28} {:>10.0} {:>9} {:>9} {:>9} {:>10.1} {:>10.1} {:>7}",
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
    let targets = targets(&rows);
    println!(
        "\n{:<48} {:>9} {:>8}",
        "target (issues 9, 16)", "measured", "met?"
    );
    for t in &targets {
        let measured = match (t.ratio, t.delta_us) {
            (_, Some(d)) => format!("{d:+.1} µs"),
            (Some(r), None) => format!("{r:.2}×"),
            (None, None) => "–".to_string(),
        };
        let met = t.met.map_or("–", |m| if m { "yes" } else { "no" });
        println!("{:<48} {:>9} {:>8}", t.target, measured, met);
    }

    // Memory with many idle keepalive clients (issue 9: RSS <= 64 MB with 10 000).
    let idle_target = env_or("OMSGATE_BENCH_IDLE", 10_000) as usize;
    let gw_addr = free_addr();
    let gw = start_gateway(sim_addr, gw_addr, "", NO_AUDIT);
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
    let doc = serde_json::json!({
        "rows": rows,
        "targets": targets,
        "idle": idle,
        "load_average_before": load_before,
        "load_average_after": loadgen::load_average(),
    });
    if let Ok(json) = serde_json::to_string_pretty(&doc) {
        let _ = std::fs::write(&out, json);
        println!("\nwrote {}", out.display());
    }
    drop(sim);
}

/// One of issue 9's throughput targets: `row` against `baseline`, at least `min` times.
#[derive(serde::Serialize)]
struct Target {
    target: String,
    ratio: Option<f64>,
    /// For the CPU targets: the difference in CPU µs per request.
    delta_us: Option<f64>,
    met: Option<bool>,
}

fn targets(rows: &[Row]) -> Vec<Target> {
    let rps = |name: &str| rows.iter().find(|r| r.target == name).map(|r| r.report.rps);
    let p99 = |name: &str| {
        rows.iter()
            .find(|r| r.target == name)
            .map(|r| r.report.p99_us)
    };
    let ratio = |target: &str, row: &str, baseline: &str, min: f64| {
        let ratio = rps(row).zip(rps(baseline)).map(|(a, b)| a / b.max(1.0));
        Target {
            target: target.to_string(),
            ratio,
            delta_us: None,
            met: ratio.map(|r| r >= min),
        }
    };
    let mut out = vec![
        ratio("pass-through >= 1.0x nginx reverse proxy", PASS, NGINX, 1.0),
        ratio(
            "L1 hit >= 1.2x nginx proxy_cache hit",
            L1_HIT,
            NGINX_HIT,
            1.2,
        ),
        ratio("Redis-only hit >= 0.8x pass-through", REDIS_HIT, PASS, 0.8),
        ratio("all features within 15% of pass-through", ALL, PASS, 0.85),
        ratio(
            "TLS pass-through >= 0.9x nginx TLS proxy",
            TLS_PASS,
            NGINX_TLS,
            0.9,
        ),
    ];
    // New full handshakes per second against nginx's: no target, for the record.
    let mut handshakes = ratio(
        "TLS new handshakes/s vs nginx's (no target)",
        TLS_HANDSHAKES,
        NGINX_TLS_HANDSHAKES,
        0.0,
    );
    handshakes.met = None;
    out.push(handshakes);
    // Keepalive TLS: at most 10 µs more CPU per request than the same row in plaintext.
    let cpu = |name: &str| {
        rows.iter()
            .find(|r| r.target == name)
            .map(|r| r.cpu_us_per_request)
    };
    for (target, tls, plain) in [
        (
            "keepalive TLS pass-through CPU <= +10 µs/req",
            TLS_PASS,
            PASS,
        ),
        ("keepalive TLS L1 hit CPU <= +10 µs/req", TLS_L1_HIT, L1_HIT),
    ] {
        let delta = cpu(tls).zip(cpu(plain)).map(|(t, p)| t - p);
        out.push(Target {
            target: target.to_string(),
            ratio: None,
            delta_us: delta,
            met: delta.map(|d| d <= 10.0),
        });
    }
    // p99 of pass-through no worse than nginx's: the ratio is nginx p99 / omsgate p99.
    let p = p99(PASS)
        .zip(p99(NGINX))
        .map(|(o, n)| n as f64 / o.max(1) as f64);
    out.push(Target {
        target: "pass-through p99 no worse than nginx".to_string(),
        ratio: p,
        delta_us: None,
        met: p.map(|r| r >= 1.0),
    });
    out
}
