//! `omsgate loadtest`: an open-model load test from a scenario file (see `docs/loadtest.md`),
//! or `--demo`: the built-in simulated OMS (500 ms, 4 workers) alone and through omsgate.
//!
//! Prints the seed's before/after table and the per-route table; writes the report as JSON and
//! as a self-contained HTML page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadtest::scenario::{Capacity, Identity, Load, Mix, Objective, Scenario, Target};
use crate::loadtest::{self, report, Progress};
use crate::sim::{SimOptions, DEMO_JWT_SECRET};

/// Options of `loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The scenario file (TOML; see examples/loadtest/seed.toml). Not with --demo.
    #[arg(required_unless_present = "demo", conflicts_with = "demo")]
    pub scenario: Option<PathBuf>,
    /// Load the built-in simulated OMS (500 ms per request, 4 workers) alone and through an
    /// omsgate started for the run, and print the seed's table (about two minutes).
    #[arg(long)]
    pub demo: bool,
    /// Shorter runs and fewer capacity steps (a smoke test of the whole path, in seconds rather
    /// than minutes; the figures are not meaningful).
    #[arg(long, env = "OMSGATE_LOADTEST_SHORT")]
    pub short: bool,
    /// Skip the capacity search.
    #[arg(long)]
    pub no_capacity: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "omsgate-loadtest.json", value_name = "FILE")]
    pub json: PathBuf,
    /// Where to write the HTML report.
    #[arg(long, default_value = "omsgate-loadtest.html", value_name = "FILE")]
    pub html: PathBuf,
    /// With --demo: latency of the simulated OMS, in milliseconds.
    #[arg(long, default_value_t = 500, requires = "demo")]
    pub latency_ms: u64,
    /// With --demo: workers of the simulated OMS.
    #[arg(long, default_value_t = 4, requires = "demo")]
    pub workers: usize,
    /// With --demo: also serve the read routes from PostgreSQL through the pooled query paths,
    /// as `omsgate demo --seed-db` does (creates the reference tables in `--db-schema`, loads the
    /// simulated OMS's data, applies the migrations); `pg_stat_statements` is read there when
    /// installed.
    #[arg(long, value_name = "URL", requires = "demo")]
    pub seed_db: Option<String>,
    /// Schema that `--seed-db` fills.
    #[arg(long, default_value = "public", value_name = "NAME", requires = "demo")]
    pub db_schema: String,
}

/// Runs the load test; exit 0 when it ran (whatever the figures), 64 for a bad scenario, 1
/// when it could not run.
pub fn main(args: Args) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("omsgate loadtest: cannot start the runtime: {e}");
            return 1;
        }
    };
    let progress: Progress = Arc::new(|line: &str| eprintln!("{line}"));
    let result = if args.demo {
        if let Some(url) = &args.seed_db {
            // Before the runtime: seeding runs its own.
            if let Err(e) = super::demo::seed_database(url, &args.db_schema, &demo_sim(&args)) {
                eprintln!("omsgate loadtest --seed-db: {e}");
                return 1;
            }
        }
        runtime.block_on(demo(&args, progress))
    } else {
        let path = args.scenario.clone().unwrap_or_default();
        let mut scenario = match Scenario::load(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return super::EXIT_CONFIG;
            }
        };
        if args.no_capacity {
            scenario.capacity = None;
        }
        if args.short {
            shorten(&mut scenario);
        }
        runtime
            .block_on(loadtest::run(scenario, progress))
            .map_err(|e| e.to_string())
    };
    match result {
        Ok(r) => match write_report(&r, &args.json, &args.html) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("omsgate loadtest: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("omsgate loadtest: {e}");
            1
        }
    }
}

/// Prints the tables and writes both files.
fn write_report(r: &loadtest::Report, json: &Path, html: &Path) -> Result<(), String> {
    println!("\n{}", report::seed_table(r));
    println!("{}", report::detail_tables(r));
    for n in &r.notes {
        println!("note: {n}");
    }
    std::fs::write(json, report::json(r))
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    std::fs::write(html, report::html(r))
        .map_err(|e| format!("cannot write {}: {e}", html.display()))?;
    println!("Wrote {} and {}.", json.display(), html.display());
    Ok(())
}

/// `--short`: a few seconds per run, two capacity steps.
fn shorten(s: &mut Scenario) {
    s.duration = s.duration.min(Duration::from_secs(3));
    for t in &mut s.targets {
        t.warmup = t.warmup.min(Duration::from_secs(1));
    }
    s.drain = s.drain.min(Duration::from_secs(3));
    s.sample = s.sample.min(Duration::from_millis(500));
    if let Load::Users { users, ramp, think } = &mut s.load {
        *users = (*users).min(10);
        *ramp = (*ramp).min(Duration::from_secs(1));
        *think = (*think).min(Duration::from_secs(1));
    }
    if let Some(c) = &mut s.capacity {
        c.steps.truncate(2);
        c.step_duration = c.step_duration.min(Duration::from_secs(2));
    }
}

// === --demo ===

/// A gateway child process, killed on drop.
struct GatewayChild {
    child: Child,
    dir: PathBuf,
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The simulated OMS of `--demo` (the data `--seed-db` loads is generated from the same options).
fn demo_sim(args: &Args) -> SimOptions {
    SimOptions {
        latency: Duration::from_millis(args.latency_ms),
        workers: args.workers.max(1),
        ..SimOptions::default()
    }
}

/// The demo: the simulated OMS in this process, omsgate as a child process (so that its RSS
/// and CPU are its own) with the `omsgate demo` configuration.
async fn demo(args: &Args, progress: Progress) -> Result<loadtest::Report, String> {
    let sim_opts = demo_sim(args);
    let sim = crate::sim::start(
        "127.0.0.1:0".parse().expect("a socket address"),
        sim_opts.clone(),
    )
    .await
    .map_err(|e| format!("cannot start the simulated OMS: {e}"))?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let demo_args = super::demo::Args {
        listen,
        admin,
        oms: sim.addr,
        latency_ms: args.latency_ms,
        workers: args.workers,
        invoices: sim_opts.invoices_per_tenant,
        tenants: sim_opts.tenants,
        seed_db: args.seed_db.clone(),
        db_schema: args.db_schema.clone(),
    };
    let dir = std::env::temp_dir().join(format!("omsgate-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = dir.join("config.toml");
    std::fs::write(&config, super::demo::render_config(&demo_args))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
    let mut gateway = GatewayChild { child, dir };
    let pid = gateway.child.id();
    progress(&format!(
        "Simulated OMS on http://{} ({} ms, {} workers); omsgate (pid {pid}) on http://{listen}, admin http://{admin}.",
        sim.addr, args.latency_ms, args.workers
    ));
    let http = loadtest::probe::Http::new();
    let ready_url = format!("http://{admin}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("the gateway exited ({status}):\n{text}"));
        }
        if let Ok(a) = http.send(http::Method::GET, &ready_url, &[], None).await {
            if a.status.is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("the gateway was not ready within 30 s:\n{text}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut scenario = demo_scenario(sim.addr, listen, admin, pid);
    if args.seed_db.is_some() {
        scenario.targets[1].name = "omsgate + pooled queries".into();
    }
    scenario.database_url = args.seed_db.clone();
    if args.no_capacity {
        scenario.capacity = None;
    }
    if args.short {
        shorten(&mut scenario);
    }
    let result = loadtest::run(scenario, progress)
        .await
        .map_err(|e| e.to_string());
    drop(gateway);
    sim.shutdown().await;
    result
}

/// The seed scenario against the demo: 20 users (the seed's "10–20 users"), think time 2 s,
/// the default mix; capacity steps of 8 s from 10 to 320 users. The gateway gets a 10 s
/// warm-up (its cache's steady state, not its cold start); the OMS alone has nothing to warm.
fn demo_scenario(oms: SocketAddr, gateway: SocketAddr, admin: SocketAddr, pid: u32) -> Scenario {
    let defaults =
        Scenario::parse("[[target]]\nurl = \"http://127.0.0.1:1\"\n[identity]\nmode = \"none\"\n")
            .expect("the built-in defaults parse");
    Scenario {
        targets: vec![
            Target {
                name: "OMS alone".into(),
                url: format!("http://{oms}"),
                metrics_url: None,
                pid: None,
                warmup: Duration::ZERO,
            },
            Target {
                name: "through omsgate".into(),
                url: format!("http://{gateway}"),
                metrics_url: Some(format!("http://{admin}/metrics")),
                pid: Some(pid),
                warmup: Duration::from_secs(10),
            },
        ],
        identity: Identity::Jwt {
            secret: DEMO_JWT_SECRET.into(),
            tenant_claim: "tenant_id".into(),
            subject_claim: "sub".into(),
            issuer: None,
            audience: None,
        },
        load: Load::Users {
            users: 20,
            ramp: Duration::from_secs(5),
            think: Duration::from_secs(2),
        },
        duration: Duration::from_secs(15),
        drain: Duration::from_secs(10),
        capacity: Some(Capacity {
            steps: vec![10, 20, 40, 80, 160, 320],
            step_duration: Duration::from_secs(8),
        }),
        mix: Mix { ..defaults.mix },
        objective: Objective {
            ..defaults.objective
        },
        ..defaults
    }
}
