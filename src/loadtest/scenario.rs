//! The scenario file of `omsgate loadtest`: file structs (serde) and their conversion into a
//! typed [`Scenario`], with every problem reported at once with its key.
//!
//! Unknown keys are found with `serde_ignored` rather than `deny_unknown_fields`: serde stops at
//! the first unknown field, and the project's rule is that every problem of a file is listed
//! together. A value of the wrong type still stops the parse; its key is named from the line
//! the TOML error points at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Problem, Problems};

// === File layer ===

/// The whole scenario file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ScenarioFile {
    /// `[[target]]`: one or two systems to load, one after the other (e.g. the OMS alone, then
    /// omsgate in front of it). At least one.
    pub target: Vec<TargetFile>,
    /// `[identity]`: how requests say who they are.
    pub identity: IdentityFile,
    /// `[load]`: the open-model load.
    pub load: LoadFile,
    /// `[mix]`: what the users ask for.
    pub mix: MixFile,
    /// `[objective]`: what "sustained" means for the capacity search.
    pub objective: ObjectiveFile,
    /// `[capacity]`: the capacity search (user steps).
    pub capacity: CapacityFile,
    /// `[database]`: the OMS database, for `pg_stat_statements` query counts.
    pub database: DatabaseFile,
}

/// `[[target]]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TargetFile {
    /// Name in the report, e.g. `"OMS alone"`. Default `"target N"`.
    pub name: String,
    /// Base URL, `http://host:port` (no path). Required.
    pub url: String,
    /// The gateway's Prometheus endpoint (`http://ADMIN/metrics`), scraped every sample for
    /// backend requests, pooled queries and cache results. Default none.
    pub metrics_url: String,
    /// Process id of the gateway, for its RSS and CPU from `/proc`. Default none (0).
    pub pid: u32,
    /// Load this long before the main run, not measured (it shows in the time series as
    /// "warm-up"): a cache's steady state rather than its cold start. Default `"0s"`.
    pub warmup: String,
}

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct IdentityFile {
    /// Read `[identity]` (mode, secret, claims, issuer, audience, trusted headers) from this
    /// gateway config file, so that tokens are minted exactly as the gateway verifies them.
    /// The keys below then override it. Default none.
    pub gateway_config: String,
    /// `"jwt"` (HS256 tokens minted per tenant and user), `"header"` (trusted tenant/user
    /// headers) or `"none"`. Default `"jwt"`.
    pub mode: String,
    /// The HS256 secret. Default empty (then `jwt_secret_env`).
    pub jwt_secret: String,
    /// Environment variable with the HS256 secret. Default `"OMSGATE_JWT_SECRET"`.
    pub jwt_secret_env: String,
    /// Claim carrying the tenant. Default `"tenant_id"`.
    pub tenant_claim: String,
    /// Claim carrying the subject. Default `"sub"`.
    pub subject_claim: String,
    /// `iss` of the minted tokens. Default none.
    pub issuer: String,
    /// `aud` of the minted tokens. Default none.
    pub audience: String,
    /// Trusted tenant header (`mode = "header"`). Default `"x-tenant-id"`.
    pub tenant_header: String,
    /// Trusted user header (`mode = "header"`). Default `"x-user-id"`.
    pub subject_header: String,
    /// Tenants the users belong to (user i to tenant i mod n). Default `["acme", "globex",
    /// "initech", "umbrella", "hooli"]` (the simulated OMS's).
    pub tenants: Vec<String>,
}

/// `[load]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LoadFile {
    /// Users at the end of the ramp (open model: each sends, thinks, sends again, whether or not
    /// its previous answer has come). Default 20. Leave at 0 and set `rate` for a fixed arrival
    /// rate instead.
    pub users: u32,
    /// Fixed arrival rate in requests per second (Poisson arrivals), instead of users.
    /// Default 0 (users).
    pub rate: f64,
    /// Time over which the users arrive, one after the other. Default `"10s"`.
    pub ramp: String,
    /// Length of the measured run after the ramp starts. Default `"30s"`.
    pub duration: String,
    /// Mean think time between a user's requests (exponentially distributed, at most 10×).
    /// Default `"2s"`.
    pub think_time: String,
    /// A request not answered this long after its intended send time is a timeout.
    /// Default `"30s"`.
    pub timeout: String,
    /// After a run, how long requests still in flight may finish; later ones count as timeouts.
    /// Default `"10s"`.
    pub drain: String,
    /// Interval of the report's time series. Default `"1s"`.
    pub sample: String,
    /// Seed of the random choices. Default 1.
    pub seed: u64,
}

impl Default for LoadFile {
    fn default() -> Self {
        LoadFile {
            users: 20,
            rate: 0.0,
            ramp: "10s".into(),
            duration: "30s".into(),
            think_time: "2s".into(),
            timeout: "30s".into(),
            drain: "10s".into(),
            sample: "1s".into(),
            seed: 1,
        }
    }
}

/// `[mix]`: relative weights of the four kinds of request, and their shapes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MixFile {
    /// `GET /api/v1/invoices/{id}`, the id Zipf-distributed. Default 60.
    pub invoice_read: u32,
    /// `GET /api/v1/invoices?{one of list_queries}`. Default 25.
    pub invoice_list: u32,
    /// `GET /api/v1/payments?{payment_query}`. Default 5.
    pub payment_list: u32,
    /// `PATCH /api/v1/invoices/{id}` with `write_body`, the id Zipf-distributed. Default 10.
    pub invoice_write: u32,
    /// Zipf exponent of the invoice ranks (1 = the seed's). Default 1.0.
    pub zipf_s: f64,
    /// Invoices per tenant the ranks run over, discovered from the first target's listing
    /// before the run. Default 200.
    pub invoices: usize,
    /// Query strings of the listings, one picked at random per request.
    /// Default `["limit=20", "status=open&limit=20", "status=paid&limit=20", "limit=20&offset=20"]`.
    pub list_queries: Vec<String>,
    /// Query string of the payment listings. Default `"limit=20"`.
    pub payment_query: String,
    /// JSON body of the writes; `{n}` in a string value becomes a random number.
    /// Default `{ customer = "Load test {n}" }`.
    pub write_body: toml::Table,
}

impl Default for MixFile {
    fn default() -> Self {
        let mut body = toml::Table::new();
        body.insert("customer".into(), "Load test {n}".into());
        MixFile {
            invoice_read: 60,
            invoice_list: 25,
            payment_list: 5,
            invoice_write: 10,
            zipf_s: 1.0,
            invoices: 200,
            list_queries: vec![
                "limit=20".into(),
                "status=open&limit=20".into(),
                "status=paid&limit=20".into(),
                "limit=20&offset=20".into(),
            ],
            payment_query: "limit=20".into(),
            write_body: body,
        }
    }
}

/// `[objective]`: the default is the seed's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ObjectiveFile {
    /// Highest mean latency. Default `"200ms"`.
    pub mean: String,
    /// Highest 99th percentile. Default `"1s"`.
    pub p99: String,
    /// Most errors and timeouts allowed in a step. Default 0.
    pub errors: u64,
}

impl Default for ObjectiveFile {
    fn default() -> Self {
        ObjectiveFile {
            mean: "200ms".into(),
            p99: "1s".into(),
            errors: 0,
        }
    }
}

/// `[capacity]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CapacityFile {
    /// Run the search after the main run. Default true.
    pub enabled: bool,
    /// Users per step, increasing; the search stops at the first step that breaks the
    /// objective. Default `[5, 10, 20, 40, 80, 160, 320]`.
    pub steps: Vec<u32>,
    /// Length of one step (the users arrive over the first think time). Default `"20s"`.
    pub step_duration: String,
}

impl Default for CapacityFile {
    fn default() -> Self {
        CapacityFile {
            enabled: true,
            steps: vec![5, 10, 20, 40, 80, 160, 320],
            step_duration: "20s".into(),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseFile {
    /// PostgreSQL URL of the OMS database; with the `pg_stat_statements` extension the report
    /// gives database queries per request. Skipped (with a note) when unreachable. Default none.
    pub url: String,
}

// === Typed scenario ===

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The targets, loaded one after the other.
    pub targets: Vec<Target>,
    /// How requests identify themselves.
    pub identity: Identity,
    /// Tenants of the users.
    pub tenants: Vec<String>,
    /// The load of the main run.
    pub load: Load,
    /// Measured run length.
    pub duration: Duration,
    /// Timeout from the intended send time.
    pub timeout: Duration,
    /// Time allowed for requests in flight after a run.
    pub drain: Duration,
    /// Time series interval.
    pub sample: Duration,
    /// Seed of the random choices.
    pub seed: u64,
    /// The request mix.
    pub mix: Mix,
    /// The objective of the capacity search.
    pub objective: Objective,
    /// The capacity search, if enabled.
    pub capacity: Option<Capacity>,
    /// The OMS database for `pg_stat_statements`.
    pub database_url: Option<String>,
}

/// One system under load.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name in the report.
    pub name: String,
    /// Base URL without a trailing slash.
    pub url: String,
    /// The gateway's metrics endpoint.
    pub metrics_url: Option<String>,
    /// The gateway's process id.
    pub pid: Option<u32>,
    /// Unmeasured load before the main run.
    pub warmup: Duration,
}

/// How requests identify themselves.
#[derive(Debug, Clone)]
pub enum Identity {
    /// HS256 bearer tokens.
    Jwt {
        /// The secret.
        secret: String,
        /// Tenant claim (a dotted path makes nested objects).
        tenant_claim: String,
        /// Subject claim.
        subject_claim: String,
        /// `iss`, if any.
        issuer: Option<String>,
        /// `aud`, if any.
        audience: Option<String>,
    },
    /// Trusted headers.
    Header {
        /// Tenant header.
        tenant_header: String,
        /// User header.
        subject_header: String,
    },
    /// Nothing.
    None,
}

/// The open-model load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `users` arrive over `ramp`; each thinks `think` (mean) between its requests.
    Users {
        /// Users at the end of the ramp.
        users: u32,
        /// Arrival period.
        ramp: Duration,
        /// Mean think time.
        think: Duration,
    },
    /// Poisson arrivals at `per_second`.
    Rate {
        /// Requests per second.
        per_second: f64,
    },
}

/// The request mix.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Weights: invoice read, invoice list, payment list, invoice write.
    pub weights: [u32; 4],
    /// Zipf exponent.
    pub zipf_s: f64,
    /// Invoices per tenant.
    pub invoices: usize,
    /// Listing query strings.
    pub list_queries: Vec<String>,
    /// Payment listing query string.
    pub payment_query: String,
    /// Write body template.
    pub write_body: serde_json::Value,
}

/// The capacity objective.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Objective {
    /// Highest mean, ms.
    #[serde(rename = "mean_ms", serialize_with = "ser_ms")]
    pub mean: Duration,
    /// Highest p99, ms.
    #[serde(rename = "p99_ms", serialize_with = "ser_ms")]
    pub p99: Duration,
    /// Most errors + timeouts.
    pub errors: u64,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The capacity search.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// Users per step.
    pub steps: Vec<u32>,
    /// Step length.
    pub step_duration: Duration,
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable file.
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Problems, each with its key.
    #[error("{} scenario problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ScenarioError {
    /// The problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ScenarioError::Invalid(p) => p,
            ScenarioError::Read { .. } => &[],
        }
    }
}

/// The simulated OMS's tenants (the default of `identity.tenants`).
pub const SIM_TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];

impl Scenario {
    /// Reads and validates a scenario file; relative `identity.gateway_config` is resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse_in(&text, path.parent())
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse_in(text, None)
    }

    fn parse_in(text: &str, dir: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let mut p = Problems::default();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let file: ScenarioFile =
            match serde_ignored::deserialize(de, |path| unknown.push(path.to_string())) {
                Ok(f) => f,
                Err(e) => {
                    let key = error_key(text, &e).unwrap_or_else(|| "scenario".into());
                    p.push(key, e.message().to_string());
                    return Err(ScenarioError::Invalid(p.list().to_vec()));
                }
            };
        for key in unknown {
            p.push(key, "unknown key");
        }
        let scenario = Scenario::from_file(&file, dir, &mut p);
        if p.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid(p.list().to_vec()))
        }
    }

    /// Converts the file layer, recording every problem.
    pub fn from_file(f: &ScenarioFile, dir: Option<&Path>, p: &mut Problems) -> Scenario {
        let mut targets = Vec::new();
        if f.target.is_empty() {
            p.push("target", "at least one [[target]] with a url is required");
        }
        if f.target.len() > 2 {
            p.push(
                "target",
                "at most two targets (e.g. the OMS alone and omsgate)",
            );
        }
        for (i, t) in f.target.iter().enumerate() {
            let key = format!("target[{i}]");
            let url = t.url.trim_end_matches('/').to_string();
            match check_http_url(&url) {
                Ok(()) => {}
                Err(e) => p.push(format!("{key}.url"), e),
            }
            let metrics_url = (!t.metrics_url.is_empty()).then(|| t.metrics_url.clone());
            if let Some(m) = &metrics_url {
                if let Err(e) = check_http_url_with_path(m) {
                    p.push(format!("{key}.metrics_url"), e);
                }
            }
            let name = if t.name.is_empty() {
                format!("target {}", i + 1)
            } else {
                t.name.clone()
            };
            let warmup = if t.warmup.is_empty() {
                Duration::ZERO
            } else {
                p.duration_or(&format!("{key}.warmup"), &t.warmup, Duration::ZERO)
            };
            targets.push(Target {
                name,
                url,
                metrics_url,
                pid: (t.pid != 0).then_some(t.pid),
                warmup,
            });
        }
        let (identity, tenants) = identity(&f.identity, dir, p);
        let l = &f.load;
        let ramp = p.duration_or("load.ramp", &l.ramp, Duration::from_secs(10));
        let think = p.duration_or("load.think_time", &l.think_time, Duration::from_secs(2));
        let duration = p.duration_or("load.duration", &l.duration, Duration::from_secs(30));
        let timeout = p.duration_or("load.timeout", &l.timeout, Duration::from_secs(30));
        let drain = p.duration_or("load.drain", &l.drain, Duration::from_secs(10));
        let sample = p.duration_or("load.sample", &l.sample, Duration::from_secs(1));
        if think.is_zero() {
            p.push("load.think_time", "must be more than 0 (or use load.rate)");
        }
        if duration.is_zero() {
            p.push("load.duration", "must be more than 0");
        }
        if timeout.is_zero() {
            p.push("load.timeout", "must be more than 0");
        }
        if sample < Duration::from_millis(100) {
            p.push("load.sample", "must be at least 100ms");
        }
        if ramp > duration {
            p.push("load.ramp", "must not be longer than load.duration");
        }
        let load = if l.rate != 0.0 {
            if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 100_000.0) {
                p.push(
                    "load.rate",
                    "must be a number of requests per second, 0 < rate ≤ 100000",
                );
            }
            if l.users != LoadFile::default().users && l.users != 0 {
                p.push("load.users", "set users or rate, not both");
            }
            Load::Rate { per_second: l.rate }
        } else {
            if l.users == 0 || l.users > 100_000 {
                p.push("load.users", "must be from 1 to 100000 (or set load.rate)");
            }
            Load::Users {
                users: l.users,
                ramp,
                think,
            }
        };
        let m = &f.mix;
        let weights = [
            m.invoice_read,
            m.invoice_list,
            m.payment_list,
            m.invoice_write,
        ];
        if weights.iter().map(|w| *w as u64).sum::<u64>() == 0 {
            p.push("mix", "at least one weight (invoice_read, invoice_list, payment_list, invoice_write) must be more than 0");
        }
        if !(m.zipf_s.is_finite() && (0.0..=5.0).contains(&m.zipf_s)) {
            p.push("mix.zipf_s", "must be from 0 (uniform) to 5");
        }
        if m.invoices == 0 || m.invoices > 100_000 {
            p.push("mix.invoices", "must be from 1 to 100000");
        }
        if m.invoice_list > 0 && m.list_queries.is_empty() {
            p.push(
                "mix.list_queries",
                "must not be empty while mix.invoice_list > 0",
            );
        }
        for (i, q) in m.list_queries.iter().enumerate() {
            if q.contains(['?', '#', ' ']) {
                p.push(
                    format!("mix.list_queries[{i}]"),
                    "a query string without `?`, `#` or spaces, e.g. \"status=open&limit=20\"",
                );
            }
        }
        if m.payment_query.contains(['?', '#', ' ']) {
            p.push(
                "mix.payment_query",
                "a query string without `?`, `#` or spaces",
            );
        }
        let write_body = serde_json::to_value(&m.write_body).unwrap_or_default();
        let o = &f.objective;
        let objective = Objective {
            mean: p.duration_or("objective.mean", &o.mean, Duration::from_millis(200)),
            p99: p.duration_or("objective.p99", &o.p99, Duration::from_secs(1)),
            errors: o.errors,
        };
        let c = &f.capacity;
        let step_duration = p.duration_or(
            "capacity.step_duration",
            &c.step_duration,
            Duration::from_secs(20),
        );
        let capacity = if c.enabled {
            if c.steps.is_empty() {
                p.push("capacity.steps", "must list at least one number of users");
            }
            if c.steps.windows(2).any(|w| w[0] >= w[1]) || c.steps.contains(&0) {
                p.push(
                    "capacity.steps",
                    "must be increasing numbers of users, more than 0",
                );
            }
            if step_duration.is_zero() {
                p.push("capacity.step_duration", "must be more than 0");
            }
            Some(Capacity {
                steps: c.steps.clone(),
                step_duration,
            })
        } else {
            None
        };
        let database_url = (!f.database.url.is_empty()).then(|| f.database.url.clone());
        if let Some(u) = &database_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                p.push("database.url", "must be a postgres:// URL");
            }
        }
        Scenario {
            targets,
            identity,
            tenants,
            load,
            duration,
            timeout,
            drain,
            sample,
            seed: l.seed,
            mix: Mix {
                weights,
                zipf_s: m.zipf_s,
                invoices: m.invoices,
                list_queries: m.list_queries.clone(),
                payment_query: m.payment_query.clone(),
                write_body,
            },
            objective,
            capacity,
            database_url,
        }
    }
}

/// `[identity]` into [`Identity`] and the tenants: the gateway's own `[identity]` first when
/// `gateway_config` names it, the scenario's keys over it.
fn identity(f: &IdentityFile, dir: Option<&Path>, p: &mut Problems) -> (Identity, Vec<String>) {
    let mut base = crate::identity::IdentityFile::default();
    let mut from_gateway = false;
    if !f.gateway_config.is_empty() {
        let path = match dir {
            Some(d) if Path::new(&f.gateway_config).is_relative() => d.join(&f.gateway_config),
            _ => PathBuf::from(&f.gateway_config),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match crate::config::parse_file(&text) {
                Ok((file, _)) => {
                    base = file.identity;
                    from_gateway = true;
                }
                Err(e) => p.push(
                    "identity.gateway_config",
                    format!("{}: {e}", path.display()),
                ),
            },
            Err(e) => p.push(
                "identity.gateway_config",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    let pick = |mine: &str, theirs: &str| {
        if mine.is_empty() {
            theirs.to_string()
        } else {
            mine.to_string()
        }
    };
    let mode = if !f.mode.is_empty() {
        f.mode.clone()
    } else if from_gateway {
        base.mode.clone()
    } else {
        "jwt".into()
    };
    let first = |v: &crate::identity::OneOrMany| v.values().into_iter().next();
    let identity = match mode.as_str() {
        "jwt" => {
            if from_gateway
                && f.jwt_secret.is_empty()
                && base.jwt_secret.is_empty()
                && (!base.jwt_public_key.is_empty()
                    || !base.jwks_url.is_empty()
                    || !base.jwks_file.is_empty())
            {
                p.push(
                    "identity.gateway_config",
                    "the gateway verifies RS256/ES256 (public key or JWKS) tokens, which loadtest \
                     cannot mint; give an HS256 secret the gateway also accepts (identity.jwt_secret) \
                     or use mode = \"header\" behind a trusted gateway",
                );
            }
            let env = pick(&f.jwt_secret_env, &base.jwt_secret_env);
            let env = if env.is_empty() {
                "OMSGATE_JWT_SECRET".to_string()
            } else {
                env
            };
            let mut secret = pick(&f.jwt_secret, &base.jwt_secret);
            if secret.is_empty() {
                secret = std::env::var(&env).unwrap_or_default();
            }
            if secret.is_empty() {
                p.push(
                    "identity.jwt_secret",
                    format!("no HS256 secret: set identity.jwt_secret, the environment variable {env}, or identity.gateway_config"),
                );
            }
            let or_default = |v: String, d: &str| if v.is_empty() { d.to_string() } else { v };
            Identity::Jwt {
                secret,
                tenant_claim: or_default(pick(&f.tenant_claim, &base.tenant_claim), "tenant_id"),
                subject_claim: or_default(pick(&f.subject_claim, &base.subject_claim), "sub"),
                issuer: (!f.issuer.is_empty())
                    .then(|| f.issuer.clone())
                    .or_else(|| first(&base.issuer)),
                audience: (!f.audience.is_empty())
                    .then(|| f.audience.clone())
                    .or_else(|| first(&base.audience)),
            }
        }
        "header" => {
            let or_default = |v: String, d: &str| if v.is_empty() { d.to_string() } else { v };
            Identity::Header {
                tenant_header: or_default(
                    pick(&f.tenant_header, &base.tenant_header),
                    "x-tenant-id",
                ),
                subject_header: or_default(
                    pick(&f.subject_header, &base.subject_header),
                    "x-user-id",
                ),
            }
        }
        "none" => Identity::None,
        other => {
            p.push(
                "identity.mode",
                format!("`{other}` is not one of \"jwt\", \"header\", \"none\""),
            );
            Identity::None
        }
    };
    let tenants: Vec<String> = if f.tenants.is_empty() {
        SIM_TENANTS.iter().map(|s| s.to_string()).collect()
    } else {
        f.tenants.clone()
    };
    for (i, t) in tenants.iter().enumerate() {
        if t.is_empty() {
            p.push(format!("identity.tenants[{i}]"), "must not be empty");
        }
    }
    (identity, tenants)
}

fn check_http_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("required, e.g. \"http://127.0.0.1:8000\"".into());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "`{url}`: only http:// URLs, e.g. \"http://127.0.0.1:8000\""
        ));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err(format!("`{url}`: scheme, host and port only, no path"));
    }
    url.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("`{url}`: {e}"))
}

fn check_http_url_with_path(url: &str) -> Result<(), String> {
    if !url.starts_with("http://") {
        return Err(format!(
            "`{url}`: an http:// URL, e.g. \"http://127.0.0.1:9091/metrics\""
        ));
    }
    url.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("`{url}`: {e}"))
}

/// The dotted key of the line a TOML error points at: the last `[table]` / `[[array]]` header
/// above it and the key before `=` on the line.
fn error_key(text: &str, e: &toml::de::Error) -> Option<String> {
    let start = e.span()?.start;
    let line_no = text[..start.min(text.len())].matches('\n').count();
    let lines: Vec<&str> = text.lines().collect();
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines.iter().take(line_no + 1) {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = lines.get(line_no)?;
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))?;
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str =
        "[[target]]\nurl = \"http://127.0.0.1:8000\"\n[identity]\njwt_secret = \"s\"\n";

    fn keys(text: &str) -> Vec<String> {
        match Scenario::parse(text) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.key.clone()).collect(),
        }
    }

    #[test]
    fn the_minimal_file_gets_the_seed_defaults() {
        let s = Scenario::parse(MIN).unwrap();
        assert_eq!(s.targets[0].name, "target 1");
        assert_eq!(
            s.load,
            Load::Users {
                users: 20,
                ramp: Duration::from_secs(10),
                think: Duration::from_secs(2)
            }
        );
        assert_eq!(s.mix.weights, [60, 25, 5, 10]);
        assert_eq!(s.objective.mean, Duration::from_millis(200));
        assert_eq!(s.tenants.len(), 5);
    }

    #[test]
    fn every_problem_is_named_with_its_key() {
        let text = format!(
            "{MIN}[load]\nusers = 0\nthink_time = \"2 parsecs\"\nuserz = 3\n[mix]\nzipf_s = -1.0\n[[target]]\nurl = \"https://x\"\n[capacity]\nsteps = [10, 5]\n"
        );
        let k = keys(&text);
        for want in [
            "load.users",
            "load.think_time",
            "load.userz",
            "mix.zipf_s",
            "target[1].url",
            "capacity.steps",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_with_its_key() {
        assert_eq!(
            keys(&format!("{MIN}[load]\nusers = \"many\"\n")),
            ["load.users"]
        );
        assert_eq!(
            keys("[[target]]\nurl = \"http://a:1\"\n[[target]]\npid = \"x\"\n"),
            ["target[1].pid"]
        );
    }

    #[test]
    fn the_example_scenario_parses() {
        // Its secret comes from an environment variable; PATH is one that is always set.
        let text = include_str!("../../examples/loadtest/seed.toml")
            .replace("\"OMSGATE_JWT_SECRET\"", "\"PATH\"");
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(s.targets.len(), 2);
        assert_eq!(s.capacity.unwrap().steps.len(), 7);
    }

    #[test]
    fn identity_comes_from_the_gateway_config_with_overrides() {
        let dir = std::env::temp_dir().join(format!("omsgate-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("gw.toml"),
            "[identity]\nmode = \"jwt\"\njwt_secret = \"gw-secret\"\ntenant_claim = \"app.tenant\"\naudience = [\"oms\"]\n",
        )
        .unwrap();
        let text = "[[target]]\nurl = \"http://a:1\"\n[identity]\ngateway_config = \"gw.toml\"\nsubject_claim = \"uid\"\n";
        let s = Scenario::parse_in(text, Some(&dir)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        match s.identity {
            Identity::Jwt {
                secret,
                tenant_claim,
                subject_claim,
                audience,
                ..
            } => {
                assert_eq!(secret, "gw-secret");
                assert_eq!(tenant_claim, "app.tenant");
                assert_eq!(subject_claim, "uid");
                assert_eq!(audience.as_deref(), Some("oms"));
            }
            other => panic!("{other:?}"),
        }
    }
}
