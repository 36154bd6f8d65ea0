//! Small helpers of the audit tests: service addresses, a private tansu broker, topic creation
//! and consuming a topic to its end. (The shared `tests/common` harness has the same names;
//! these can give way to it once it is on main.)
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use omsgate::audit::spool::{Next, SegmentReader};
use omsgate::audit::{Audit, AuditConfig, AuditFile, AuditRecord};
use omsgate::config::Problems;
use pingora::services::background::BackgroundService;

/// The shared broker(s): `OMSGATE_TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    env_or("OMSGATE_TEST_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The shared PostgreSQL: `OMSGATE_TEST_DATABASE_URL`.
pub fn database_url() -> String {
    env_or(
        "OMSGATE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.into())
}

/// A name unique to this test, process and run (`[a-z0-9_]`).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// A fresh temporary directory (removed on drop unless the test panicked).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique(&format!("omsgate_{name}")));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The tansu binary: `OMSGATE_TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(b) = std::env::var("OMSGATE_TANSU_BIN") {
        return b.into();
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let p = home.join(".cargo/bin/tansu");
    if p.is_file() {
        p
    } else {
        "tansu".into()
    }
}

/// Creates a topic with `tansu topic create` (retrying while the broker comes up).
pub fn create_topic(brokers: &str, name: &str, partitions: u32) {
    let broker = brokers.split(',').next().unwrap_or(brokers).trim();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker", &format!("tcp://{broker}")])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .expect("tansu runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && !text.contains("ERROR") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} not created on {broker}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A private in-memory tansu on its own port: freeze/thaw (SIGSTOP/SIGCONT), kill, restart
/// (empty). Killed on drop.
pub struct PrivateTansu {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl PrivateTansu {
    /// Starts it and waits for its port.
    pub fn start() -> PrivateTansu {
        let mut t = PrivateTansu {
            port: free_port(),
            child: None,
            dir: TempDir::new("tansu"),
        };
        t.spawn();
        t
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start an empty broker on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("tansu runs").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.0.join("tansu.log")).unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu starts (is it installed? OMSGATE_TANSU_BIN)");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(addr) {
            assert!(Instant::now() < deadline, "tansu did not open {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.kill();
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Kafka key.
    pub key: String,
    /// The JSON record.
    pub value: serde_json::Value,
    /// Partition.
    pub partition: i32,
}

impl Consumed {
    /// `request_id`.
    pub fn id(&self) -> &str {
        self.value["request_id"].as_str().unwrap_or("")
    }
}

/// Reads every partition of `topic` from the beginning until at least `expected` records were
/// seen and every partition reported its end (then one more second, to catch late
/// duplicates), or `timeout` passed. tansu's high watermarks are not reliable, so the end of a
/// partition is taken from `enable.partition.eof`.
pub fn consume_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("audit_test_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end: HashMap<i32, bool> = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut settled: Option<Instant> = None;
    while Instant::now() < deadline {
        let all_end = (0..partitions).all(|p| at_end.get(&p).copied().unwrap_or(false));
        if out.len() >= expected && all_end {
            match settled {
                None => settled = Some(Instant::now()),
                Some(t) if t.elapsed() > Duration::from_secs(1) => break,
                Some(_) => {}
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at_end.insert(m.partition(), false);
                let value = serde_json::from_slice(m.payload().unwrap_or_default())
                    .unwrap_or(serde_json::Value::Null);
                out.push(Consumed {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value,
                    partition: m.partition(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p, true);
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// Request ids seen more than once, and the set of distinct ids.
pub fn duplicates(records: &[Consumed]) -> (Vec<String>, BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let mut dups = Vec::new();
    for r in records {
        if !seen.insert(r.id().to_string()) {
            dups.push(r.id().to_string());
        }
    }
    (dups, seen)
}

/// Waits until `f` holds, polling every 50 ms; returns whether it did within `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === Audit fixtures ===

pub const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];

/// An audit config for tests: short timeouts, its own spool directory.
pub fn config(brokers: Option<&str>, topic: &str, spool: &Path, extra: &str) -> AuditConfig {
    let text = format!(
        r#"
        brokers = "{}"
        topic = "{topic}"
        spool_dir = "{}"
        delivery_timeout = "2s"
        shutdown_timeout = "3s"
        linger = "5ms"
        spool_segment_bytes = "256KiB"
        {extra}
        "#,
        brokers.unwrap_or(""),
        spool.display()
    );
    let f: AuditFile = toml::from_str(&text).unwrap();
    let mut p = Problems::default();
    let c = AuditConfig::from_file(&f, &mut p);
    assert!(p.is_empty(), "{:?}", p.list());
    c
}

/// A record as the proxy would write it, with a secret in the query. Its `event_id` is derived
/// from `id`, so recording the same `id` again stands for a redelivery of the same record.
pub fn record(id: &str, i: usize, cfg: &AuditConfig) -> AuditRecord {
    let fnv = |seed: u64| {
        id.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let event = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(7));
    AuditRecord {
        event_id: uuid::Uuid::from_u128(event).to_string(),
        request_id: id.to_string(),
        tenant: Some(TENANTS[i % TENANTS.len()].to_string()),
        subject: Some(format!("user-{}", i % 17)),
        client_ip: Some([127, 0, 0, 1].into()),
        method: "GET".into(),
        route: "invoice".into(),
        path: format!("/api/v1/invoices/{i}"),
        query: omsgate::audit::redact_query("expand=lines&token=s3cret", cfg),
        status: 200,
        duration_ms: 1.5,
        upstream_ms: Some(1.2),
        bytes_out: 512,
        cache: Some("MISS".into()),
        user_agent: Some("test".into()),
        ..Default::default()
    }
}

/// The background service on its own runtime thread, as Pingora runs it.
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    handle: std::thread::JoinHandle<()>,
}

impl Running {
    pub fn start(audit: &Audit) -> Running {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
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
        Running { stop, handle }
    }

    /// Signals shutdown and waits for the service to finish.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        self.handle.join().unwrap();
    }
}

/// Every record left in the spool directory.
pub fn spooled_ids(dir: &Path) -> Vec<String> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let mut ids = Vec::new();
    for s in segs {
        let offset = std::fs::read_to_string(s.with_extension("pos"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let mut r = SegmentReader::open(&s, offset).unwrap();
        while let Next::Record(f) = r.next_frame().unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
            ids.push(v["request_id"].as_str().unwrap().to_string());
        }
    }
    ids
}

/// The `[audit]` section of a whole gateway config file, as the gateway reads it.
pub fn audit_config_of(gateway_toml: &str) -> AuditConfig {
    let file: toml::Value = toml::from_str(gateway_toml).unwrap();
    let section: AuditFile = file
        .get("audit")
        .cloned()
        .map(|v| v.try_into().unwrap())
        .unwrap_or_default();
    let mut p = Problems::default();
    let c = AuditConfig::from_file(&section, &mut p);
    assert!(p.is_empty(), "{:?}", p.list());
    c
}

/// librdkafka's `max.in.flight.requests.per.connection` for the idempotent producer (5, the
/// most idempotence allows; `[audit.kafka_options]` may not change it).
pub const IDEMPOTENT_IN_FLIGHT_REQUESTS: u64 = 5;
/// librdkafka's default `batch.num.messages`.
pub const LIBRDKAFKA_BATCH_NUM_MESSAGES: u64 = 10_000;

/// The most records one purge of the producer can leave with an unknown fate, so the most
/// duplicates it can cause (docs/audit.md, "Duplicates"): those in requests sent and not
/// answered — at most `max.in.flight.requests.per.connection` requests, each with one batch of
/// at most `batch.num.messages` records per partition — and never more than
/// `audit.max_in_flight` (records in the producer at all).
pub fn records_in_flight_ceiling(cfg: &AuditConfig, partitions: u64) -> u64 {
    let batch = cfg
        .kafka_options
        .get("batch.num.messages")
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(LIBRDKAFKA_BATCH_NUM_MESSAGES);
    (IDEMPOTENT_IN_FLIGHT_REQUESTS * batch * partitions).min(cfg.max_in_flight as u64)
}
