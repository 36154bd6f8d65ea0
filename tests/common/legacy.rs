//! The reference legacy OMS (`examples/legacy-oms`, FastAPI on one uvicorn worker) as a child
//! process: a schema of its own in the test database, seeded with `omsgate seed-db` (so the test
//! knows the rows: [`LegacyOms::dataset`]), started on a free port, killed on drop (the schema is
//! dropped too unless the test is panicking).
//!
//! Its Python comes from `OMSGATE_TEST_LEGACY_PYTHON` (exported by `scripts/test`, which creates
//! the virtualenv), else the repository's `.venv-legacy-oms`; without either the harness panics
//! and says how to get one. Nothing is skipped.

use super::{http_get, send_signal, tail, wait_for, TestDir};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omsgate::sim::data::{self, Dataset};

/// How long [`LegacyOms::start`] waits for `/health` to answer 200.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The data seed `omsgate seed-db` uses by default (and so [`LegacyOms::dataset`]).
const DATA_SEED: u64 = 42;

/// How to run one reference OMS.
#[derive(Clone, Debug)]
pub struct LegacyOptions {
    /// uvicorn's `timeout_keep_alive` in seconds. Default 5 (uvicorn's own default).
    pub keep_alive: f64,
    /// Extra seconds the synchronous audit insert holds the one connection. Default 0.
    pub audit_delay: f64,
    /// Seconds `/health` sleeps before answering. Default 0.
    pub health_delay: f64,
    /// Tenants seeded. Default 2.
    pub tenants: usize,
    /// Invoices per tenant. Default 100.
    pub invoices: usize,
}

impl Default for LegacyOptions {
    fn default() -> Self {
        LegacyOptions {
            keep_alive: 5.0,
            audit_delay: 0.0,
            health_delay: 0.0,
            tenants: 2,
            invoices: 100,
        }
    }
}

/// A running reference OMS.
pub struct LegacyOms {
    addr: SocketAddr,
    schema: String,
    /// Whether this instance created (and so drops) the schema.
    owns_schema: bool,
    options: LegacyOptions,
    log_path: PathBuf,
    fail_file: PathBuf,
    child: Mutex<Option<Child>>,
    // Last, so it is removed after the process is gone.
    dir: TestDir,
}

// === impl LegacyOms ===

impl LegacyOms {
    /// The Python of the reference OMS's virtualenv; panics with what to do when there is none.
    pub fn python() -> PathBuf {
        if let Ok(p) = std::env::var("OMSGATE_TEST_LEGACY_PYTHON") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "OMSGATE_TEST_LEGACY_PYTHON={} does not exist; rerun scripts/test (it creates \
                 the reference OMS's virtualenv)",
                p.display()
            );
            return p;
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-legacy-oms/bin/python");
        assert!(
            venv.is_file(),
            "the reference legacy OMS needs its virtualenv: run the tests through scripts/test, \
             or create it with `python3 -m venv .venv-legacy-oms && .venv-legacy-oms/bin/pip \
             install -r examples/legacy-oms/requirements.txt` (or set \
             OMSGATE_TEST_LEGACY_PYTHON)"
        );
        venv
    }

    /// `examples/legacy-oms/app.py`.
    pub fn app() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/legacy-oms/app.py")
    }

    /// Seeds a fresh schema and starts an OMS on it; returns once `/health` answers 200.
    pub fn start(options: LegacyOptions) -> LegacyOms {
        let schema = super::unique("legacy").replace('-', "_");
        seed(&schema, &options);
        LegacyOms::spawn(schema, true, super::free_port(), options)
    }

    /// A second OMS process on the schema of `self` (another "host" of the same database),
    /// with its own port and options.
    pub fn start_sibling(&self, options: LegacyOptions) -> LegacyOms {
        LegacyOms::spawn(self.schema.clone(), false, super::free_port(), options)
    }

    fn spawn(schema: String, owns_schema: bool, port: u16, options: LegacyOptions) -> LegacyOms {
        let dir = TestDir::new("legacy-oms");
        let oms = LegacyOms {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log_path: dir.path().join("oms.log"),
            fail_file: dir.path().join("health-fail"),
            schema,
            owns_schema,
            options,
            child: Mutex::new(None),
            dir,
        };
        oms.launch();
        oms
    }

    fn launch(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let o = &self.options;
        let child = Command::new(LegacyOms::python())
            .arg(LegacyOms::app())
            .arg("serve")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--schema", &self.schema])
            .args(["--database-url", &super::database_url()])
            .args(["--keep-alive", &o.keep_alive.to_string()])
            .args(["--audit-delay", &o.audit_delay.to_string()])
            .args(["--health-delay", &o.health_delay.to_string()])
            .arg("--health-fail-file")
            .arg(&self.fail_file)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the reference OMS: {e}"));
        *self.child.lock() = Some(child);
        let timeout = Duration::from_secs_f64(o.health_delay + 2.0);
        let up = wait_for(START_TIMEOUT, || {
            self.exited()
                || matches!(http_get(self.addr, "/health", timeout), Some((200, _)))
                || (self.fail_file.exists() && super::port_open(self.addr))
        });
        assert!(
            up && !self.exited(),
            "the reference OMS did not answer /health on {} within {START_TIMEOUT:?}\nlog tail:\n{}",
            self.addr,
            tail(&self.log(), 30)
        );
    }

    fn exited(&self) -> bool {
        match self.child.lock().as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// The OMS's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The schema its tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The rows it was seeded with (the same [`data::generate`] that `omsgate seed-db` loads).
    pub fn dataset(&self) -> Dataset {
        data::generate(DATA_SEED, self.options.tenants, self.options.invoices)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL, like a crash) and waits for it.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and schema after [`kill`](Self::kill).
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// Stops (`"STOP"`) or resumes (`"CONT"`) the process: a frozen OMS keeps its port open
    /// and its connections but answers nothing.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            send_signal(pid, name);
        }
    }

    /// Makes `/health` answer 503 (`true`) or as usual (`false`) from now on; the API keeps
    /// working either way.
    pub fn fail_health(&self, fail: bool) {
        if fail {
            std::fs::write(&self.fail_file, b"fail")
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.fail_file.display()));
        } else {
            let _ = std::fs::remove_file(&self.fail_file);
        }
    }

    /// `audit_events` rows written so far (one per API request the OMS answered).
    pub fn audit_rows(&self) -> i64 {
        let url = super::database_url();
        let sql = format!(
            "SELECT count(*) FROM {}.audit_events",
            omsgate::db::quote_ident(&self.schema)
        );
        on_fresh_runtime(async move {
            let client = omsgate::db::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
            let row = client
                .query_one(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("cannot count audit_events: {e}"));
            row.get::<_, i64>(0)
        })
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for LegacyOms {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "reference OMS log tail ({}, schema {}):\n{}",
                self.addr,
                self.schema,
                tail(&self.log(), 30)
            );
            return;
        }
        if self.owns_schema {
            let url = super::database_url();
            let sql = format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                omsgate::db::quote_ident(&self.schema)
            );
            on_fresh_runtime(async move {
                if let Ok(client) = omsgate::db::connect(&url).await {
                    let _ = client.batch_execute(&sql).await;
                }
            });
        }
    }
}

/// Creates `schema` and loads the simulated OMS's data into it with `omsgate seed-db`.
fn seed(schema: &str, options: &LegacyOptions) {
    let out = Command::new(super::Gateway::bin())
        .arg("seed-db")
        .args(["--database-url", &super::database_url()])
        .args(["--schema", schema])
        .args(["--tenants", &options.tenants.to_string()])
        .args(["--invoices", &options.invoices.to_string()])
        .args(["--seed", &DATA_SEED.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run omsgate seed-db: {e}"));
    assert!(
        out.status.success(),
        "omsgate seed-db --schema {schema} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own (so it works from
/// sync tests, async tests and `Drop` alike).
fn on_fresh_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build a runtime: {e}"))
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|_| panic!("a database helper thread panicked"))
}
