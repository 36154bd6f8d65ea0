//! The gateway under test as a child process: `omsgate run --config PATH` with a config written
//! into a fresh temp dir, ports picked for it, and helpers for its admin endpoints, signals and
//! log. The process is killed on drop; when a test fails, the tail of its log is printed.
//!
//! Placeholders in the config text are replaced before it is written:
//! `{listen}` and `{admin}` by `127.0.0.1:PORT` with a free port each, `{dir}` by the temp dir
//! (for spool directories and the like).

use super::{http_get, send_signal, tail, wait_for, TestDir};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long [`Gateway::start`] waits for `/health` to answer 200.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `omsgate run`.
pub struct Gateway {
    listen: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    pid: u32,
    child: Mutex<Option<Child>>,
    /// Set once a panic message carried the log tail, so drop does not print it again.
    log_shown: AtomicBool,
    // Last, so it is removed after the process is gone.
    dir: TestDir,
}

/// A config with its placeholders replaced, and the addresses it names.
struct Rendered {
    text: String,
    listen: SocketAddr,
    admin: SocketAddr,
}

// === impl Gateway ===

impl Gateway {
    /// The `omsgate` binary built for this test run.
    pub fn bin() -> &'static Path {
        Path::new(env!("CARGO_BIN_EXE_omsgate"))
    }

    /// Starts the gateway with `config_toml` and waits until `GET /health` on its admin
    /// listener answers 200; panics with the log tail if that does not happen within 20 s.
    pub fn start(config_toml: &str) -> Gateway {
        Gateway::start_with_env(config_toml, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the process.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_and(config_toml, env, |_| {})
    }

    /// [`start_with_env`](Self::start_with_env) that runs `during_start` right after the
    /// process is spawned, before waiting for `/health` (to signal or edit during start).
    pub fn start_and(
        config_toml: &str,
        env: &[(&str, &str)],
        during_start: impl FnOnce(&Gateway),
    ) -> Gateway {
        let dir = TestDir::new("gateway");
        let rendered = render(config_toml, dir.path());
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, &rendered.text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let child = Command::new(Gateway::bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Gateway::bin().display()));
        let gateway = Gateway {
            listen: rendered.listen,
            admin: rendered.admin,
            config_path,
            log_path,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            log_shown: AtomicBool::new(false),
            dir,
        };
        during_start(&gateway);
        gateway.wait_healthy();
        gateway
    }

    /// Runs `omsgate check-config` on `config_toml` (placeholders replaced as for
    /// [`start`](Self::start)) and returns its exit code (-1 if killed by a signal) and stderr.
    pub fn check_config(config_toml: &str) -> (i32, String) {
        let dir = TestDir::new("check-config");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, render_text(config_toml, dir.path()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let out = Command::new(Gateway::bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Gateway::bin().display()));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `http://LISTEN{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The public listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file the gateway was started with (rewrite it to test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The gateway's temp dir (its working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal by name: `"TERM"`, `"INT"`, `"HUP"`, `"QUIT"`, `"STOP"`, `"CONT"`, ...
    pub fn signal(&self, name: &str) {
        send_signal(self.pid, name);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_for(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `GET /metrics` on the admin listener; panics unless it answers 200.
    pub fn metrics_text(&self) -> String {
        match http_get(self.admin, "/metrics", Duration::from_secs(10)) {
            Some((200, body)) => body,
            other => panic!(
                "GET {} gave {other:?}\nlog tail:\n{}",
                self.admin_url("/metrics"),
                tail(&self.log(), 40)
            ),
        }
    }

    /// The value of the series `name` whose labels include `labels` (summed over all such
    /// series; see [`metric_in`]), from a fresh `/metrics`.
    pub fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_in(&self.metrics_text(), name, labels)
    }

    fn try_wait(&self) -> Option<ExitStatus> {
        // `Child` remembers the status once reaped, so asking again is fine.
        self.child.lock().as_mut()?.try_wait().ok().flatten()
    }

    fn wait_healthy(&self) {
        let healthy = wait_for(START_TIMEOUT, || {
            if self.try_wait().is_some() {
                return true;
            }
            // The public listener is bound by another service than the admin one: wait for both.
            matches!(
                http_get(self.admin, "/health", Duration::from_secs(2)),
                Some((200, _))
            ) && super::port_open(self.listen)
        });
        if let Some(status) = self.try_wait() {
            self.log_shown.store(true, Ordering::Relaxed);
            panic!(
                "omsgate exited during start ({status})\nlog tail:\n{}",
                tail(&self.log(), 40)
            );
        }
        if !healthy {
            self.log_shown.store(true, Ordering::Relaxed);
            panic!(
                "omsgate did not answer 200 on {} within {START_TIMEOUT:?}\nlog tail:\n{}",
                self.admin_url("/health"),
                tail(&self.log(), 40)
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.log_shown.load(Ordering::Relaxed) {
            eprintln!(
                "omsgate log tail (pid {}):\n{}",
                self.pid,
                tail(&self.log(), 40)
            );
        }
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === Config rendering ===

fn render_text(config: &str, dir: &Path) -> String {
    let mut text = config.replace("{dir}", &dir.display().to_string());
    for placeholder in ["{listen}", "{admin}"] {
        if text.contains(placeholder) {
            text = text.replace(placeholder, &format!("127.0.0.1:{}", super::free_port()));
        }
    }
    text
}

fn render(config: &str, dir: &Path) -> Rendered {
    let text = render_text(config, dir);
    let value: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the test's gateway config is not TOML: {e}\n{text}"));
    let addr = |section: &str, default: &str| -> SocketAddr {
        let listen = value
            .get(section)
            .and_then(|s| s.get("listen"))
            .and_then(|l| l.as_str())
            .unwrap_or(default);
        let mut addr: SocketAddr = listen
            .parse()
            .unwrap_or_else(|e| panic!("[{section}] listen = {listen:?} is not an address: {e}"));
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        addr
    };
    Rendered {
        listen: addr("server", "0.0.0.0:8080"),
        admin: addr("admin", "127.0.0.1:9091"),
        text,
    }
}

// === Prometheus text ===

/// The sum of the values of every series named `name` (exactly: pass `x_bucket`, `x_count`,
/// `x_sum` for histogram parts) whose labels include all of `labels`; `None` if there is none.
/// Summing lets a test ask for, say, all 2xx requests of one route without naming every other
/// label.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series_name, series_labels, value)) = parse_sample(line) else {
            continue;
        };
        if series_name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if matches {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

/// `name{a="1",b="x"} 3.5` → (`name`, [(a, 1), (b, x)], 3.5).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let mut chars = rest.char_indices().skip(1).peekable();
        let end;
        loop {
            // Skip separators, then read `key="value"`.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.push((key.trim().to_owned(), value));
        }
        rest = &rest[end..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}
