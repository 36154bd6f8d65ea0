//! The shared integration-test harness: addresses of the real services `scripts/test` brings up
//! (Redis, PostgreSQL, a tansu broker) and private instances of them for fault tests
//! ([`services`]), private Redis Clusters and Sentinel deployments, plain or TLS ([`cluster`]), a
//! throwaway PKI ([`pki`]), whole answers ([`reply`]), a scriptable test upstream ([`upstream`]), and the gateway as a child
//! process ([`gateway`]).
//!
//! Each `tests/*.rs` file says `mod common;` and uses what it needs.

// Every test file compiles this module on its own and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod gateway;
pub mod legacy;
pub mod load;
pub mod pki;
pub mod reply;
pub mod services;
pub mod upstream;

pub use cluster::{redis_cli, PrivateRedisCluster, PrivateSentinel, Transport};
pub use gateway::{metric_in, Gateway};
pub use load::{Connections, Load};
pub use services::{
    create_topic, database_url, kafka_brokers, redis_ping, redis_url, tansu_bin, unique,
    PrivateRedis, PrivateTansu,
};
pub use upstream::{SeenRequest, TestUpstream};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process could
/// still take it before the caller binds it, which is rare enough for tests), and never one
/// this process was given before: the OS may hand the same just-released port to two calls in
/// a row (seen: a gateway's `{listen}` and `{admin}` got one port, and it refused to start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind an ephemeral port on 127.0.0.1: {e}"));
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An HTTP client for talking to the gateway and upstreams: no proxy, no automatic
/// decompression (tests look at `Content-Encoding` and the raw bytes), 10 s timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("cannot build the test HTTP client: {e}"))
}

/// Whether something accepts TCP connections on `addr` right now.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the last result.
/// For waiting on asynchronous effects (a process starting, a record arriving), never for timing.
/// It blocks the thread: in async tests use [`eventually`].
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_for`] for async tests: polls `check` every 20 ms without blocking the runtime, so
/// tasks the test spawned keep running (use this, not `wait_for`, in a current-thread
/// `#[tokio::test]`).
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A blocking `GET` over a fresh connection (`Connection: close`), usable from sync and async
/// tests alike. Returns the status and the body, or `None` if there was no HTTP answer within
/// `timeout`. Chunked bodies are returned as received (with chunk framing); the gateway's admin
/// endpoints this is meant for answer with a length.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, body.to_owned()))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends a signal (`"TERM"`, `"STOP"`, `"CONT"`, `"HUP"`, `"KILL"`, ...) to `pid` with the `kill`
/// command (the crate forbids unsafe code, so no libc). Panics if `kill` fails.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
    assert!(status.success(), "`kill -{signal} {pid}` failed: {status}");
}

/// A fresh directory under the system temp dir, removed on drop unless the test is panicking
/// (then it is kept, and its path printed, for the logs inside).
pub struct TestDir {
    path: std::path::PathBuf,
}

impl TestDir {
    /// Creates `$TMPDIR/omsgate-test-{unique(prefix)}`.
    pub fn new(prefix: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("omsgate-test-{}", unique(prefix)));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Every audit record in the spool segment files of `dir` (the file audit), in file order.
pub fn spooled(dir: &std::path::Path) -> Vec<serde_json::Value> {
    use omsgate::audit::spool::{Next, SegmentReader};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut segs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for s in segs {
        let mut r = SegmentReader::open(&s, 0).unwrap();
        while let Ok(Next::Record(f)) = r.next_frame() {
            out.push(serde_json::from_slice(&f.payload).unwrap());
        }
    }
    out
}
