//! The real services the tests use: addresses of the shared Redis, PostgreSQL and
//! Kafka-compatible broker (`scripts/test` starts them and exports the variables), names unique
//! per test, topic creation, and private Redis / tansu processes that fault tests may stop,
//! freeze and restart without disturbing other tests.

use super::{port_open, send_signal, tail, wait_for, TestDir};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// === Shared services ===

/// The shared Redis: `OMSGATE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    env_or("OMSGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// The shared PostgreSQL: `OMSGATE_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    env_or(
        "OMSGATE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

/// The shared Kafka-compatible broker(s): `OMSGATE_TEST_KAFKA_BROKERS`, default
/// `127.0.0.1:9092` (comma-separated `host:port` list, as rdkafka's `bootstrap.servers`).
pub fn kafka_brokers() -> String {
    env_or("OMSGATE_TEST_KAFKA_BROKERS", "127.0.0.1:9092")
}

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// A name no other test (in this or another process, in this or an earlier run) uses:
/// `{prefix}_{pid}_{counter}_{random}`, only `[A-Za-z0-9_]` added to the prefix, so it is valid
/// as a Redis key prefix, a Kafka topic and (with a lowercase prefix) a PostgreSQL schema.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

// === tansu ===

/// The tansu binary: `OMSGATE_TANSU_BIN`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("OMSGATE_TANSU_BIN") {
        if !bin.trim().is_empty() {
            return PathBuf::from(bin);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cargo/bin/tansu")
    })
}

/// Creates `name` with `partitions` partitions on the broker at `brokers` (the first of a
/// comma-separated list) with `tansu topic create`. Producers to a topic tansu does not know
/// retry silently, so every test creates its topics first. Retries for up to 10 s while the
/// broker is still coming up; panics with tansu's output if it never succeeds.
pub fn create_topic(brokers: &str, name: &str, partitions: u32) {
    let broker = brokers.split(',').next().unwrap_or(brokers).trim();
    let bin = tansu_bin();
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(10), || {
        let out = Command::new(&bin)
            .args(["topic", "create", "--broker", &format!("tcp://{broker}")])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (is tansu installed?): {e}", bin.display()));
        last = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success() && !last.contains("ERROR")
    });
    assert!(
        ok,
        "`tansu topic create {name}` on {broker} failed:\n{}",
        tail(&last, 20)
    );
}

// === PrivateRedis ===

/// A `redis-server` of the test's own on a free port, for fault tests: [`stop`](Self::stop) it
/// (an abrupt kill, like a crash), [`freeze`](Self::freeze) it (a hung server), and
/// [`restart`](Self::restart) it on the same port. Nothing is persisted. Killed on drop.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    dir: TestDir,
}

impl PrivateRedis {
    /// Starts it and waits until it answers `PING` (panics with its log after 10 s).
    pub fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: super::free_port(),
            child: None,
            dir: TestDir::new("redis"),
        };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone; its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if running and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Suspends the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn freeze(&self) {
        send_signal(self.running_pid(), "STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        send_signal(self.running_pid(), "CONT");
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn running_pid(&self) -> u32 {
        self.pid()
            .unwrap_or_else(|| panic!("private Redis on port {} is not running", self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let addr = self.addr();
        if !wait_for(Duration::from_secs(10), || redis_ping(addr)) {
            self.stop();
            panic!(
                "private redis-server on {addr} did not answer PING:\n{}",
                tail(&self.log(), 20)
            );
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "private Redis log (port {}):\n{}",
                self.port,
                tail(&self.log(), 20)
            );
        }
        self.stop();
    }
}

/// Whether a Redis at `addr` answers `PING` within 500 ms.
pub fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

// === PrivateTansu ===

/// A tansu broker of the test's own (in-memory storage) on a free port, for fault tests:
/// [`freeze`](Self::freeze) / [`thaw`](Self::thaw) it (SIGSTOP/SIGCONT: a hung broker),
/// [`kill`](Self::kill) it, [`restart`](Self::restart) it on the same port. A restarted broker
/// is empty: topics must be created again, and it has forgotten every producer id (idempotent
/// producers get `UNKNOWN_PRODUCER_ID`). Killed on drop.
pub struct PrivateTansu {
    port: u16,
    child: Option<Child>,
    dir: TestDir,
}

impl PrivateTansu {
    /// Starts it and waits until its port accepts connections (panics with its log after 30 s).
    pub fn start() -> PrivateTansu {
        let mut tansu = PrivateTansu {
            port: super::free_port(),
            child: None,
            dir: TestDir::new("tansu"),
        };
        tansu.spawn();
        tansu
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` and [`create_topic`].
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Suspends the broker (SIGSTOP): connections stay open but nothing is answered.
    pub fn freeze(&self) {
        send_signal(self.running_pid(), "STOP");
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) {
        send_signal(self.running_pid(), "CONT");
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone; its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker if running and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn running_pid(&self) -> u32 {
        self.pid()
            .unwrap_or_else(|| panic!("private tansu on port {} is not running", self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let bin = tansu_bin();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu reads a `.env` from its working directory; keep it away from the repo's.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} (is tansu installed?): {e}", bin.display())
            });
        self.child = Some(child);
        let addr = self.addr();
        if !wait_for(Duration::from_secs(30), || port_open(addr)) {
            self.kill();
            panic!(
                "private tansu on {addr} did not open its port:\n{}",
                tail(&self.log(), 20)
            );
        }
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "private tansu log (port {}):\n{}",
                self.port,
                tail(&self.log(), 20)
            );
        }
        self.kill();
    }
}
