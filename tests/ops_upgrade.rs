//! Graceful upgrade (DESIGN.md capability 9): a second `omsgate run -u` takes the listening
//! sockets over from the running one (SIGQUIT to the old process) while clients keep sending —
//! GETs and POSTs, on new connections and keepalive ones — and no connection is refused, no
//! request fails. Connections the old process holds when its listeners stop are not reset: a
//! request sent on one then is answered with `Connection: close`, and one left idle is closed
//! cleanly (docs/operations.md, "Graceful shutdown and upgrade").

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A gateway process with explicit arguments (the harness's `Gateway` has no `--upgrade`).
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn start(dir: &Path, name: &str, config: &Path, sock: &Path, upgrade: bool) -> Process {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(Gateway::bin());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--upgrade-sock")
            .arg(sock)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start omsgate: {e}"));
        Process { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("log of pid {}:\n{}", self.child.id(), tail(&self.log(), 30));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(admin: SocketAddr) -> bool {
    matches!(
        http_get(admin, "/health", Duration::from_secs(2)),
        Some((200, _))
    )
}

/// The log line the old process writes when its listeners have stopped (`Handover::cleanup`).
const LISTENERS_STOPPED: &str = "Shutdown: listeners stopped";

/// A raw keepalive client connection, to control exactly when its requests are sent.
struct Raw {
    stream: TcpStream,
    listen: SocketAddr,
}

/// One response read from a [`Raw`] connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// The `Connection` header, lowercased.
    connection: Option<String>,
}

impl Raw {
    fn connect(listen: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&listen, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {listen}: {e}"));
        stream
            .set_read_timeout(Some(WAIT))
            .unwrap_or_else(|e| panic!("{e}"));
        Raw { stream, listen }
    }

    /// Sends `GET path` (keepalive) and reads its response: status line, headers, and a body
    /// framed by `Content-Length` or chunked encoding.
    fn get(&mut self, path: &str) -> Result<RawResponse, String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.listen);
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(format!("closed after {} bytes of head", raw.len())),
                Ok(_) => raw.push(byte[0]),
                Err(e) => return Err(format!("read head: {e} (kind {:?})", e.kind())),
            }
        }
        let head = String::from_utf8_lossy(&raw).to_lowercase();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        if let Some(len) = header("content-length") {
            let len: usize = len.parse().map_err(|e| format!("content-length: {e}"))?;
            let mut body = vec![0u8; len];
            self.stream
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            while !body.ends_with(b"0\r\n\r\n") {
                match self.stream.read(&mut byte) {
                    Ok(0) => return Err("closed inside a chunked body".into()),
                    Ok(_) => body.push(byte[0]),
                    Err(e) => return Err(format!("read chunked body: {e}")),
                }
            }
        }
        Ok(RawResponse {
            status,
            connection: header("connection"),
        })
    }

    /// Reads until the server closes: `Ok(())` for a clean close (FIN, no further bytes),
    /// an error for a reset, a timeout or unexpected data.
    fn expect_clean_close(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 256];
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{n} unexpected bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e) => Err(format!("{e} (kind {:?})", e.kind())),
        }
    }
}

#[test]
fn a_new_process_takes_over_the_sockets_without_failing_a_request() {
    let upstream = TestUpstream::start();
    let dir = TestDir::new("upgrade");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "{listen}"
shutdown_grace = "20s"

[admin]
listen = "{admin}"

[upstream]
servers = ["{}"]
"#,
            upstream.addr
        ),
    )
    .unwrap_or_else(|e| panic!("write config: {e}"));
    let sock = dir.path().join("upgrade.sock");

    let mut old = Process::start(dir.path(), "old", &config, &sock, false);
    assert!(
        wait_for(WAIT, || healthy(admin) || old.exited()),
        "old process not healthy"
    );
    assert!(!old.exited(), "old process exited:\n{}", old.log());

    let url = format!("http://{listen}/api/v1/invoices/1");
    let loads = [
        (
            "GET fresh",
            Load::start(url.clone(), 2, Connections::Fresh, 20_000),
        ),
        (
            "GET keepalive",
            Load::start(url.clone(), 2, Connections::Reused, 40_000),
        ),
        (
            "POST fresh",
            Load::start_posts(url.clone(), 1, Connections::Fresh, 10_000),
        ),
        (
            "POST keepalive",
            Load::start_posts(url, 1, Connections::Reused, 20_000),
        ),
    ];
    for (kind, load) in &loads {
        assert!(
            load.wait_for_more(30, WAIT),
            "{kind}: no load before the upgrade"
        );
    }
    // Two keepalive connections of the old process, idle from here on: one sends its next
    // request after the old listeners stopped, the other never does.
    let mut idle_then_sends = Raw::connect(listen);
    let mut idle_forever = Raw::connect(listen);
    for raw in [&mut idle_then_sends, &mut idle_forever] {
        let first = raw
            .get("/api/v1/invoices/2")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.status, 200, "{first:?}");
        assert_ne!(first.connection.as_deref(), Some("close"), "{first:?}");
    }

    // 1. The new binary starts and waits on the upgrade socket for the listeners.
    let mut new = Process::start(dir.path(), "new", &config, &sock, true);
    assert!(
        wait_for(WAIT, || sock.exists() || new.exited()),
        "the new process did not open {}:\n{}",
        sock.display(),
        new.log()
    );
    assert!(!new.exited(), "new process exited:\n{}", new.log());
    // 2. SIGQUIT: the old process hands the sockets over, keeps accepting for Pingora's close
    //    window, stops accepting, drains and exits.
    send_signal(old.pid(), "QUIT");
    // A fresh connection opened in the window, whose request is sent only after the old
    // listeners stopped: the race of a connection accepted but not read yet.
    let mut opened_in_window = Raw::connect(listen);
    let deadline = Instant::now() + WAIT;
    while !old.log().contains(LISTENERS_STOPPED) {
        assert!(
            Instant::now() < deadline && !old.exited(),
            "the old process never logged {LISTENERS_STOPPED:?}:\n{}",
            tail(&old.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The idle keepalive connection is the old process's: answered, with Connection: close,
    // then closed cleanly.
    let answer = idle_then_sends
        .get("/api/v1/invoices/3")
        .unwrap_or_else(|e| {
            panic!("idle keepalive connection: request after the listeners stopped: {e}")
        });
    assert_eq!(answer.status, 200, "idle keepalive connection: {answer:?}");
    assert_eq!(
        answer.connection.as_deref(),
        Some("close"),
        "idle keepalive connection: a response while draining must close it: {answer:?}"
    );
    idle_then_sends.expect_clean_close().unwrap_or_else(|e| {
        panic!("idle keepalive connection: not closed cleanly after the answer: {e}")
    });
    // The connection opened in the window was accepted by the old process (the new one only
    // accepts once it has the audit spool, when the old one exits) — or, were that to change,
    // by the new one: either way it is answered, and closed cleanly if the answer says so.
    let answer = opened_in_window
        .get("/api/v1/invoices/3")
        .unwrap_or_else(|e| {
            panic!(
                "connection opened in the close window: request after the listeners stopped: {e}"
            )
        });
    assert_eq!(
        answer.status, 200,
        "connection opened in the close window: {answer:?}"
    );
    if answer.connection.as_deref() == Some("close") {
        opened_in_window.expect_clean_close().unwrap_or_else(|e| {
            panic!("connection opened in the close window: not closed cleanly: {e}")
        });
    }
    idle_forever
        .expect_clean_close()
        .unwrap_or_else(|e| panic!("idle keepalive connection not closed cleanly: {e}"));
    assert!(
        wait_for(WAIT, || old.exited()),
        "old process still running:\n{}",
        tail(&old.log(), 20)
    );
    let old_log = old.log();
    assert!(
        old_log.contains("listener sockets sent"),
        "{}",
        tail(&old_log, 20)
    );
    assert!(
        old_log.contains("Shutdown: closing the idle client connections"),
        "the idle connection was not closed by the drain:\n{}",
        tail(&old_log, 20)
    );
    // 3. The new process serves alone now: more requests on every kind of connection.
    for (kind, load) in &loads {
        assert!(
            load.wait_for_more(50, WAIT),
            "{kind}: no load after the upgrade"
        );
    }
    assert!(!new.exited(), "new process exited:\n{}", new.log());
    assert!(
        healthy(admin),
        "admin listener not served by the new process"
    );

    // No connection refused, no request failed: every outcome is a 2xx answer.
    let mut failures = Vec::new();
    for (kind, load) in loads {
        let outcomes = load.stop();
        assert!(
            outcomes.len() >= 80,
            "{kind}: only {} requests",
            outcomes.len()
        );
        eprintln!("{kind}: {} requests", outcomes.len());
        failures.extend(outcomes.into_iter().filter(|o| !o.ok()).map(|o| (kind, o)));
    }
    assert!(
        failures.is_empty(),
        "{} requests failed during the upgrade: {failures:?}",
        failures.len()
    );
}
