//! A minimal stand-in for the shared `tests/common` harness (not yet on main): the gateway as a
//! child process, a private `redis-server`, a counting upstream. Same names and signatures as
//! the harness, so `tests/rate_limit.rs` switches to `mod common;` by changing one line.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral port: {e}"))
}

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `OMSGATE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("OMSGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Polls `check` every 20 ms until true or `timeout`.
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

/// A blocking GET over a fresh connection: status and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
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

/// An HTTP client without proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("cannot build the client: {e}"))
}

fn temp_dir(prefix: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("omsgate-test-{}", unique(prefix)));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
    p
}

// === Gateway ===

/// `omsgate run` with a config; killed on drop.
pub struct Gateway {
    listen: SocketAddr,
    admin: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway (`{listen}`, `{admin}` replaced by free ports) and waits for /health.
    pub fn start(config_toml: &str) -> Gateway {
        let dir = temp_dir("gateway");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = config_toml
            .replace("{listen}", &listen.to_string())
            .replace("{admin}", &admin.to_string());
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("cannot write config: {e}"));
        let log = dir.join("gateway.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start omsgate: {e}"));
        let mut g = Gateway {
            listen,
            admin,
            child,
            log,
        };
        let up = wait_for(Duration::from_secs(20), || {
            matches!(g.child.try_wait(), Ok(Some(_)))
                || matches!(
                    http_get(admin, "/health", Duration::from_secs(2)),
                    Some((200, _))
                )
        });
        if !up || matches!(g.child.try_wait(), Ok(Some(_))) {
            panic!("omsgate did not start:\n{}", g.log());
        }
        g
    }

    /// `http://LISTEN{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// The process log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sum of the samples of `name` whose labels include `labels`.
    pub fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = http_get(self.admin, "/metrics", Duration::from_secs(10))?;
        let mut total = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (n, l) = series.split_once('{').unwrap_or((series, ""));
            if n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            {
                *total.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        total
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("omsgate log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === PrivateRedis ===

/// A `redis-server` of the test's own on a free port; killed on drop.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts it and waits for it to accept connections.
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let dir = temp_dir("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "private redis-server did not start"
        );
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it; its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

// === TestUpstream ===

/// An HTTP/1.1 upstream answering 200 `{"ok":true}` to everything, counting requests other
/// than `/health`.
pub struct TestUpstream {
    /// Its address.
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl TestUpstream {
    /// Starts it on its own thread.
    pub fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || serve(stream, &h));
            }
        });
        TestUpstream { addr, hits }
    }

    /// Requests received, `/health` excluded.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Keep-alive HTTP/1.1 loop: reads a request head (and a Content-Length body), answers 200.
fn serve(mut s: TcpStream, hits: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if !head
            .split_whitespace()
            .nth(1)
            .is_some_and(|p| p == "/health")
        {
            hits.fetch_add(1, Ordering::Relaxed);
        }
        buf.drain(..head_end + len);
        let body = b"{\"ok\":true}";
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if s.write_all(reply.as_bytes())
            .and_then(|_| s.write_all(body))
            .is_err()
        {
            return;
        }
    }
}
