//! `omsgate loadtest`: an open-model load test of the OMS and of omsgate in front of it, with
//! latency measured from each request's intended send time, a capacity search, and a report
//! (terminal table, JSON, self-contained HTML).
//!
//! ```text
//! scenario.rs  the TOML file → Scenario (every problem with its key)
//! arrival.rs   user schedules / Poisson arrivals, the request mix, identity headers
//! stats.rs     HDR histograms per request kind and per sample interval
//! probe.rs     HTTP client, gateway /metrics, /proc RSS and CPU, pg_stat_statements
//! report.rs    terminal tables, JSON, HTML with inline SVG charts
//! ```
//!
//! Each target is loaded on its own, one after the other (they usually share one OMS): the
//! main run (`[load]`), then the capacity search (`[capacity]`).

pub mod arrival;
pub mod probe;
pub mod report;
pub mod scenario;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use rand::SeedableRng;
use serde::Serialize;

use arrival::Planned;
use probe::{Http, PgStatements};
use scenario::{Load, Scenario, Target};
use stats::{Outcome, Recorder, RequestKind, Summary};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds since the epoch at the start.
    pub started_unix: u64,
    /// What was run.
    pub scenario: ScenarioSummary,
    /// One entry per target, in order.
    pub targets: Vec<TargetReport>,
    /// Things the reader should know (probes skipped, ...).
    pub notes: Vec<String>,
    /// Load averages of the load-generating machine at the end.
    pub load_average: Option<[f64; 3]>,
}

/// The scenario in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    /// E.g. "20 users arriving over 10 s, think time 2 s (mean)".
    pub load: String,
    /// Main run length, s.
    pub duration_s: f64,
    /// Mix weights by kind.
    pub mix: BTreeMap<&'static str, u32>,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// Invoices per tenant.
    pub invoices_per_tenant: usize,
    /// Tenants.
    pub tenants: usize,
    /// The capacity objective.
    pub objective: scenario::Objective,
}

/// Everything measured on one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Name.
    pub name: String,
    /// Base URL.
    pub url: String,
    /// The main run.
    pub main: PhaseReport,
    /// The capacity search.
    pub capacity: Option<CapacityReport>,
    /// Time series over the main run and the capacity steps.
    pub timeline: Vec<Sample>,
}

/// The capacity search of one target.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// Most users of a step that met the objective (0: none did).
    pub max_users: u32,
    /// The first step that broke it, if any.
    pub broke_at: Option<u32>,
    /// The steps run.
    pub steps: Vec<PhaseReport>,
}

/// One run (the main run or a capacity step).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// "main" or "step N users".
    pub label: String,
    /// Users at the end of the ramp, for a user load.
    pub users: Option<u32>,
    /// Arrival rate, for a rate load.
    pub rate: Option<f64>,
    /// Scheduled length, s.
    pub duration_s: f64,
    /// Requests finished per second of the run (scheduled length).
    pub throughput_rps: f64,
    /// All requests.
    pub all: Summary,
    /// Reads.
    pub reads: Summary,
    /// Writes.
    pub writes: Summary,
    /// Per request kind.
    pub routes: Vec<RouteRow>,
    /// OMS requests per client request (gateway metrics).
    pub oms_per_request: Option<f64>,
    /// Pooled database queries per client request (gateway metrics).
    pub pooled_per_request: Option<f64>,
    /// OMS requests plus pooled queries per client request.
    pub backend_per_request: Option<f64>,
    /// Cache lookups answered from the cache (gateway metrics).
    pub cache_hit_ratio: Option<f64>,
    /// Statements per client request in `pg_stat_statements`.
    pub db_statements_per_request: Option<f64>,
    /// Highest gateway RSS sampled, MiB.
    pub rss_peak_mib: Option<f64>,
    /// Gateway CPU over the run, % of one core.
    pub cpu_percent: Option<f64>,
    /// Whether the objective was met.
    pub objective_met: bool,
    /// Why not, when not.
    pub objective_broken_by: Vec<String>,
}

/// One request kind's summary.
#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    /// The kind (`invoice_read`, ...).
    pub route: &'static str,
    /// `read` or `write`.
    pub kind: &'static str,
    /// Its latencies.
    #[serde(flatten)]
    pub summary: Summary,
}

/// One point of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the target's first run started.
    pub t_s: f64,
    /// The run it belongs to.
    pub phase: String,
    /// Users arrived so far (a rate load: 0).
    pub users: u64,
    /// Requests finished in the interval, per second.
    pub rps: f64,
    /// Latency percentiles of the requests finished in the interval, ms.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// Max.
    pub max_ms: f64,
    /// Errors and timeouts in the interval.
    pub errors: u64,
    /// OMS requests + pooled queries per second (gateway metrics).
    pub backend_rps: Option<f64>,
    /// Cache hit ratio of the interval's lookups (gateway metrics).
    pub cache_hit_ratio: Option<f64>,
    /// Gateway RSS, MiB.
    pub rss_mib: Option<f64>,
    /// Gateway CPU in the interval, % of one core.
    pub cpu_percent: Option<f64>,
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// Invoice ids could not be discovered.
    #[error("discovering invoice ids on {target}: {reason}")]
    Discovery {
        /// The target asked.
        target: String,
        /// Why.
        reason: String,
    },
}

/// Shared by every request of a run.
struct Shared {
    http: Http,
    scenario: Scenario,
    /// Invoice ids by tenant index.
    ids: Vec<Vec<String>>,
    cdf: Vec<f64>,
    /// Identity headers of the rate load, by tenant index.
    tenant_headers: Vec<Vec<(http::HeaderName, http::HeaderValue)>>,
}

/// Progress lines go here (stderr in the CLI; nothing in tests that want quiet).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs the scenario against each target and returns the report.
pub async fn run(scenario: Scenario, progress: Progress) -> Result<Report, LoadtestError> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let http = Http::new();
    let mut notes = Vec::new();
    let first = scenario.targets[0].clone();
    let needs_ids = scenario.mix.weights[0] > 0 || scenario.mix.weights[3] > 0;
    let ids = if needs_ids {
        progress(&format!(
            "Discovering up to {} invoice ids per tenant on {} ...",
            scenario.mix.invoices, first.url
        ));
        discover(&http, &scenario, &first).await?
    } else {
        vec![Vec::new(); scenario.tenants.len()]
    };
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let cdf = arrival::zipf_cdf(longest, scenario.mix.zipf_s);
    let tenant_headers = scenario
        .tenants
        .iter()
        .map(|t| arrival::identity_headers(&scenario.identity, t, "loadtest"))
        .collect();
    let pg = match &scenario.database_url {
        Some(url) => match PgStatements::connect(url).await {
            Ok(pg) => Some(pg),
            Err(e) => {
                notes.push(format!(
                    "pg_stat_statements not used ({e}); database statements per request not measured."
                ));
                None
            }
        },
        None => None,
    };
    let shared = Arc::new(Shared {
        http,
        scenario: scenario.clone(),
        ids,
        cdf,
        tenant_headers,
    });
    let mut targets = Vec::new();
    for target in &scenario.targets {
        let t0 = Instant::now();
        let mut timeline = Vec::new();
        if !target.warmup.is_zero() {
            progress(&format!(
                "{}: warm-up, {:.0} s (not measured) ...",
                target.name,
                target.warmup.as_secs_f64()
            ));
            let _ = run_phase(
                &shared,
                target,
                pg.as_ref(),
                Phase {
                    label: "warm-up".into(),
                    load: scenario.load,
                    duration: target.warmup,
                },
                t0,
                &mut timeline,
                &mut notes,
            )
            .await;
        }
        progress(&format!(
            "{}: main run, {} ...",
            target.name,
            describe(&scenario.load)
        ));
        let main = run_phase(
            &shared,
            target,
            pg.as_ref(),
            Phase {
                label: "main".into(),
                load: scenario.load,
                duration: scenario.duration,
            },
            t0,
            &mut timeline,
            &mut notes,
        )
        .await;
        progress(&format!("{}: {}", target.name, one_line(&main)));
        let capacity = match &scenario.capacity {
            None => None,
            Some(c) => {
                let think = match scenario.load {
                    Load::Users { think, .. } => think,
                    Load::Rate { .. } => Duration::from_secs(2),
                };
                let mut steps = Vec::new();
                let mut max_users = 0;
                let mut broke_at = None;
                for &users in &c.steps {
                    progress(&format!(
                        "{}: capacity step, {users} users ...",
                        target.name
                    ));
                    let step = run_phase(
                        &shared,
                        target,
                        pg.as_ref(),
                        Phase {
                            label: format!("{users} users"),
                            load: Load::Users {
                                users,
                                ramp: think.min(c.step_duration / 2),
                                think,
                            },
                            duration: c.step_duration,
                        },
                        t0,
                        &mut timeline,
                        &mut notes,
                    )
                    .await;
                    progress(&format!("{}: {}", target.name, one_line(&step)));
                    let met = step.objective_met;
                    steps.push(step);
                    if met {
                        max_users = users;
                    } else {
                        broke_at = Some(users);
                        break;
                    }
                }
                Some(CapacityReport {
                    max_users,
                    broke_at,
                    steps,
                })
            }
        };
        targets.push(TargetReport {
            name: target.name.clone(),
            url: target.url.clone(),
            main,
            capacity,
            timeline,
        });
    }
    notes.dedup();
    let mix = RequestKind::ALL
        .iter()
        .zip(scenario.mix.weights)
        .map(|(k, w)| (k.name(), w))
        .collect();
    Ok(Report {
        started_unix,
        scenario: ScenarioSummary {
            load: describe(&scenario.load),
            duration_s: scenario.duration.as_secs_f64(),
            mix,
            zipf_s: scenario.mix.zipf_s,
            invoices_per_tenant: scenario.mix.invoices,
            tenants: scenario.tenants.len(),
            objective: scenario.objective,
        },
        targets,
        notes,
        load_average: probe::load_average(),
    })
}

/// The load in words.
pub fn describe(load: &Load) -> String {
    match load {
        Load::Users { users, ramp, think } => format!(
            "{users} users arriving over {:.0} s, think time {:.1} s (mean, exponential)",
            ramp.as_secs_f64(),
            think.as_secs_f64()
        ),
        Load::Rate { per_second } => format!("{per_second} requests/s (Poisson arrivals)"),
    }
}

fn one_line(p: &PhaseReport) -> String {
    format!(
        "{}: {} requests, {:.1}/s, mean {:.1} ms, p99 {:.1} ms, {} errors, {} timeouts{}",
        p.label,
        p.all.requests,
        p.throughput_rps,
        p.all.mean_ms,
        p.all.p99_ms,
        p.all.errors,
        p.all.timeouts,
        if p.objective_met {
            ", objective met".to_string()
        } else {
            format!(", objective broken ({})", p.objective_broken_by.join(", "))
        }
    )
}

/// Pages through the first target's invoice listing for each tenant.
async fn discover(
    http: &Http,
    scenario: &Scenario,
    target: &Target,
) -> Result<Vec<Vec<String>>, LoadtestError> {
    let fail = |reason: String| LoadtestError::Discovery {
        target: target.url.clone(),
        reason,
    };
    let want = scenario.mix.invoices;
    let tasks = scenario.tenants.iter().map(|tenant| {
        let headers = arrival::identity_headers(&scenario.identity, tenant, "loadtest");
        let url = target.url.clone();
        async move {
            let mut ids = Vec::new();
            while ids.len() < want {
                let limit = (want - ids.len()).min(100);
                let page = format!("{url}/api/v1/invoices?limit={limit}&offset={}", ids.len());
                let a = tokio::time::timeout(
                    Duration::from_secs(60),
                    http.send(Method::GET, &page, &headers, None),
                )
                .await
                .map_err(|_| format!("tenant {tenant}: {page}: no answer within 60 s"))??;
                if !a.status.is_success() {
                    return Err(format!(
                        "tenant {tenant}: {page}: status {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
                    ));
                }
                let v: serde_json::Value = serde_json::from_slice(&a.body)
                    .map_err(|e| format!("tenant {tenant}: {page}: not JSON: {e}"))?;
                let items = v
                    .get("items")
                    .or_else(|| v.get("data"))
                    .unwrap_or(&v)
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let n = items.len();
                ids.extend(
                    items
                        .iter()
                        .filter_map(|i| i.get("id").and_then(|v| v.as_str()).map(str::to_string)),
                );
                if n < limit {
                    break;
                }
            }
            if ids.is_empty() {
                return Err(format!(
                    "tenant {tenant}: the listing has no invoices with an `id` (set mix.invoice_read and mix.invoice_write to 0 to run listings only)"
                ));
            }
            Ok(ids)
        }
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, String>>()
        .map_err(fail)
}

/// A run to do.
struct Phase {
    label: String,
    load: Load,
    duration: Duration,
}

/// Runs one phase on `target`, appending its samples to `timeline`.
async fn run_phase(
    shared: &Arc<Shared>,
    target: &Target,
    pg: Option<&PgStatements>,
    phase: Phase,
    t0: Instant,
    timeline: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> PhaseReport {
    let s = &shared.scenario;
    let recorder = Arc::new(Recorder::default());
    let users_arrived = Arc::new(AtomicU64::new(0));
    let metrics = target.metrics_url.clone();
    let scrape = |http: Http, url: Option<String>| async move {
        match url {
            Some(u) => Some(probe::scrape(&http, &u).await),
            None => None,
        }
    };
    let counters_before = match scrape(shared.http.clone(), metrics.clone()).await {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            notes.push(format!("{}: metrics not scraped ({e}).", target.name));
            None
        }
        None => None,
    };
    let pg_before = match pg {
        Some(pg) => pg.calls().await.ok(),
        None => None,
    };
    let cpu_before = target.pid.and_then(probe::cpu_seconds);

    let start = Instant::now() + Duration::from_millis(20);
    let end = start + phase.duration;
    let hard_end = end + s.drain;
    // Every generator and request task holds a sender; the channel closes when all are done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    match phase.load {
        Load::Users { users, ramp, think } => {
            for u in 0..users {
                let offset = arrival::user_offset(u, users, ramp);
                let tenant = (u as usize) % s.tenants.len();
                let subject = format!("loadtest-user-{u}");
                let (shared, target, recorder, arrived, tx) = (
                    shared.clone(),
                    target.url.clone(),
                    recorder.clone(),
                    users_arrived.clone(),
                    done_tx.clone(),
                );
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        shared.scenario.seed ^ ((u as u64) << 20),
                    );
                    let headers = Arc::new(arrival::identity_headers(
                        &shared.scenario.identity,
                        &shared.scenario.tenants[tenant],
                        &subject,
                    ));
                    let mut next = start + offset;
                    tokio::time::sleep_until(next.into()).await;
                    arrived.fetch_add(1, Ordering::Relaxed);
                    while next < end {
                        tokio::time::sleep_until(next.into()).await;
                        let planned = arrival::pick(
                            &mut rng,
                            &shared.scenario.mix,
                            &shared.cdf,
                            &shared.ids[tenant],
                        );
                        spawn_request(
                            &shared,
                            &target,
                            headers.clone(),
                            planned,
                            next,
                            hard_end,
                            &recorder,
                            &tx,
                        );
                        next += arrival::exponential(&mut rng, think);
                    }
                });
            }
        }
        Load::Rate { per_second } => {
            let (shared, target, recorder, tx) = (
                shared.clone(),
                target.url.clone(),
                recorder.clone(),
                done_tx.clone(),
            );
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(shared.scenario.seed);
                let headers: Vec<_> = shared
                    .tenant_headers
                    .iter()
                    .map(|h| Arc::new(h.clone()))
                    .collect();
                let mut next = start;
                while next < end {
                    tokio::time::sleep_until(next.into()).await;
                    let tenant = rand::Rng::random_range(&mut rng, 0..headers.len());
                    let planned = arrival::pick(
                        &mut rng,
                        &shared.scenario.mix,
                        &shared.cdf,
                        &shared.ids[tenant],
                    );
                    spawn_request(
                        &shared,
                        &target,
                        headers[tenant].clone(),
                        planned,
                        next,
                        hard_end,
                        &recorder,
                        &tx,
                    );
                    next += arrival::interarrival(&mut rng, per_second);
                }
            });
        }
    }
    drop(done_tx);

    // Sample until every request has finished (they all do by `hard_end`).
    let mut last_counters = counters_before;
    let mut last_cpu = cpu_before;
    let mut rss_peak: Option<u64> = None;
    let mut tick = start;
    loop {
        tick += s.sample;
        let finished = tokio::select! {
            _ = tokio::time::sleep_until(tick.into()) => false,
            r = done_rx.recv() => r.is_none(),
        };
        let now = Instant::now();
        // The last interval ends when the last request does, often a few ms in: rates over
        // such a sliver would be noise, so no interval counts as shorter than half a sample.
        let interval = (now - (tick - s.sample))
            .as_secs_f64()
            .max(s.sample.as_secs_f64() / 2.0);
        let window = recorder.take_window().summary();
        let counters = match scrape(shared.http.clone(), metrics.clone()).await {
            Some(Ok(c)) => Some(c),
            _ => None,
        };
        let (backend_rps, cache_hit_ratio) = match (counters, last_counters) {
            (Some(c), Some(l)) => {
                let d = c.since(&l);
                (
                    Some((d.upstream + d.db_queries) / interval),
                    (d.cache_lookups > 0.0).then(|| d.cache_hits / d.cache_lookups),
                )
            }
            _ => (None, None),
        };
        if counters.is_some() {
            last_counters = counters;
        }
        let rss = target.pid.and_then(probe::rss_bytes);
        if let Some(r) = rss {
            rss_peak = Some(rss_peak.unwrap_or(0).max(r));
        }
        let cpu = target.pid.and_then(probe::cpu_seconds);
        let cpu_percent = match (cpu, last_cpu) {
            (Some(c), Some(l)) => Some((c - l) / interval * 100.0),
            _ => None,
        };
        last_cpu = cpu.or(last_cpu);
        timeline.push(Sample {
            t_s: (now - t0).as_secs_f64(),
            phase: phase.label.clone(),
            users: users_arrived.load(Ordering::Relaxed),
            rps: window.requests as f64 / interval,
            p50_ms: window.p50_ms,
            p90_ms: window.p90_ms,
            p99_ms: window.p99_ms,
            max_ms: window.max_ms,
            errors: window.errors + window.timeouts,
            backend_rps,
            cache_hit_ratio,
            rss_mib: rss.map(|b| b as f64 / 1048576.0),
            cpu_percent,
        });
        if finished {
            break;
        }
        // Safety net: every request ends by hard_end; a sample past it means only the
        // generators' bookkeeping is left.
        if now > hard_end + Duration::from_secs(5) {
            notes.push(format!(
                "{}: {}: requests still unaccounted for 5 s after the drain period.",
                target.name, phase.label
            ));
            break;
        }
    }
    let finished_at = Instant::now();

    let by_kind = recorder.by_kind();
    let (reads, writes, all) = stats::fold(&by_kind);
    let (reads, writes, all) = (reads.summary(), writes.summary(), all.summary());
    let routes = by_kind
        .iter()
        .map(|(k, b)| RouteRow {
            route: k.name(),
            kind: if k.is_write() { "write" } else { "read" },
            summary: b.summary(),
        })
        .collect();
    let requests = all.requests.max(1) as f64;
    let delta = match (last_counters, counters_before) {
        (Some(a), Some(b)) => Some(a.since(&b)),
        _ => None,
    };
    let pg_after = match pg {
        Some(pg) => pg.calls().await.ok(),
        None => None,
    };
    let cpu_after = target.pid.and_then(probe::cpu_seconds);
    let objective = s.objective;
    let mut broken = Vec::new();
    if all.mean_ms > objective.mean.as_secs_f64() * 1000.0 {
        broken.push(format!("mean {:.0} ms", all.mean_ms));
    }
    if all.p99_ms > objective.p99.as_secs_f64() * 1000.0 {
        broken.push(format!("p99 {:.0} ms", all.p99_ms));
    }
    if all.errors + all.timeouts > objective.errors {
        broken.push(format!("{} errors/timeouts", all.errors + all.timeouts));
    }
    if all.requests == 0 {
        broken.push("no requests".into());
    }
    PhaseReport {
        label: phase.label,
        users: match phase.load {
            Load::Users { users, .. } => Some(users),
            Load::Rate { .. } => None,
        },
        rate: match phase.load {
            Load::Rate { per_second } => Some(per_second),
            Load::Users { .. } => None,
        },
        duration_s: phase.duration.as_secs_f64(),
        throughput_rps: all.requests as f64 / phase.duration.as_secs_f64(),
        all,
        reads,
        writes,
        routes,
        oms_per_request: delta.map(|d| d.upstream / requests),
        pooled_per_request: delta.map(|d| d.db_queries / requests),
        backend_per_request: delta.map(|d| (d.upstream + d.db_queries) / requests),
        cache_hit_ratio: delta
            .and_then(|d| (d.cache_lookups > 0.0).then(|| d.cache_hits / d.cache_lookups)),
        // The probe's own first read is counted between the two (the second is not yet).
        db_statements_per_request: match (pg_before, pg_after) {
            (Some(b), Some(a)) => Some((a - b - 1.0).max(0.0) / requests),
            _ => None,
        },
        rss_peak_mib: rss_peak.map(|b| b as f64 / 1048576.0),
        cpu_percent: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => {
                Some((a - b) / (finished_at - start).as_secs_f64().max(0.001) * 100.0)
            }
            _ => None,
        },
        objective_met: broken.is_empty(),
        objective_broken_by: broken,
    }
}

/// Sends one request at (or, when the generator runs late, after) its intended time; the
/// latency is counted from `intended`.
#[allow(clippy::too_many_arguments)]
fn spawn_request(
    shared: &Arc<Shared>,
    target: &str,
    headers: Arc<Vec<(http::HeaderName, http::HeaderValue)>>,
    planned: Planned,
    intended: Instant,
    hard_end: Instant,
    recorder: &Arc<Recorder>,
    done: &tokio::sync::mpsc::Sender<()>,
) {
    let (shared, recorder, done) = (shared.clone(), recorder.clone(), done.clone());
    let url = format!("{target}{}", planned.path);
    tokio::spawn(async move {
        let deadline = (intended + shared.scenario.timeout).min(hard_end);
        let result = tokio::time::timeout_at(
            deadline.into(),
            shared
                .http
                .send(planned.method, &url, &headers, planned.body),
        )
        .await;
        let latency = Instant::now().saturating_duration_since(intended);
        let outcome = match result {
            Ok(Ok(a)) if a.status.as_u16() < 400 => Outcome::Ok { cached: a.cached },
            Ok(Ok(a)) => Outcome::Error(a.status.as_u16()),
            Ok(Err(_)) => Outcome::Error(0),
            Err(_) => Outcome::Timeout,
        };
        recorder.record(planned.kind, latency, outcome);
        drop(done);
    });
}
