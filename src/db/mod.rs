//! The OMS database (DESIGN.md capability 8): the `[database]` section, the bundled migrations
//! and their runner ([`migrate`]), the pooled query paths that answer allow-listed GET routes
//! straight from PostgreSQL ([`query`]), and the seed generator for tests, benches and the demo
//! ([`seed`]).
//!
//! The pooled path fails open: pool exhaustion, a slow or unreachable database or any query
//! error sends the request to the OMS as usual, and every such fallback is counted
//! (`omsgate_db_fallbacks_total{reason}`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

pub mod metrics;
pub mod migrate;
pub mod queries;
pub mod query;
pub mod seed;
pub mod serve;
pub mod tls;

pub use query::{PooledResponse, QueryPaths};

/// The reference OMS schema (tables as the legacy FastAPI app created them, without the
/// indexes it lacks). Applied by tests, benches and `demo --seed-db`; never by `omsgate migrate`.
pub const REFERENCE_SCHEMA: &str =
    include_str!("../../migrations/baseline/0000_reference_schema.sql");

// === Config ===

/// `[database]`: the OMS database used by `omsgate migrate` and the pooled query paths.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseFile {
    /// Connection URL, e.g. `"postgres://omsgate@db.internal:5432/oms"`. Default empty: read
    /// from the environment variable named by `url_env`.
    pub url: String,
    /// Environment variable holding the URL when `url` is empty. Default `"DATABASE_URL"`.
    pub url_env: String,
    /// Most connections the pool opens. Default 16.
    pub max_connections: usize,
    /// Connections opened ahead of the first request, so that it does not pay for the connect.
    /// Default 2.
    pub min_idle: usize,
    /// Longest a request waits for a free pooled connection before it falls back to the OMS.
    /// Keep it short. Default `"50ms"`.
    pub acquire_timeout: String,
    /// Longest a new connection may take to establish. Default `"1s"`.
    pub connect_timeout: String,
    /// Longest one pooled query may run; beyond it the query is cancelled and the request falls
    /// back to the OMS. Default `"2s"`.
    pub statement_timeout: String,
    /// Use named prepared statements (cached per connection). Set false behind a
    /// transaction-mode pooler (PgBouncer `pool_mode = transaction`, Supavisor port 6543): the
    /// pooled path then sends unnamed statements and no session settings. Default true.
    pub prepared_statements: bool,
    /// Schema holding the OMS tables; migrations and query functions go there too.
    /// Default `"public"`.
    pub schema: String,
}

impl Default for DatabaseFile {
    fn default() -> Self {
        Self {
            url: String::new(),
            url_env: "DATABASE_URL".into(),
            max_connections: 16,
            min_idle: 2,
            acquire_timeout: "50ms".into(),
            connect_timeout: "1s".into(),
            statement_timeout: "2s".into(),
            prepared_statements: true,
            schema: "public".into(),
        }
    }
}

/// Typed `[database]`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The connection URL (from `url` or the `url_env` variable), when one is configured.
    pub url: Option<String>,
    /// Where the URL came from, for messages (`database.url` or `$DATABASE_URL`).
    pub url_source: String,
    /// Pool size limit.
    pub max_connections: usize,
    /// Connections opened ahead of the first request.
    pub min_idle: usize,
    /// Wait limit for a pooled connection.
    pub acquire_timeout: Duration,
    /// Connect limit for a new connection.
    pub connect_timeout: Duration,
    /// Per-query limit.
    pub statement_timeout: Duration,
    /// Named prepared statements (false: transaction-mode pooler).
    pub prepared_statements: bool,
    /// Schema of the OMS tables (a plain identifier).
    pub schema: String,
    /// `[tls] ca_file`'s certificates, trusted next to the system roots by `verify-ca` and
    /// `verify-full` without `sslrootcert` (filled in by [`crate::config::Config`]).
    pub trust_roots: std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig::from_file(&DatabaseFile::default(), &mut Problems::default())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_source", &self.url_source)
            .field("max_connections", &self.max_connections)
            .field("min_idle", &self.min_idle)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("prepared_statements", &self.prepared_statements)
            .field("schema", &self.schema)
            .finish()
    }
}

impl DatabaseConfig {
    /// Converts the file layer; reads the URL's environment variable when `url` is empty.
    pub fn from_file(f: &DatabaseFile, p: &mut Problems) -> DatabaseConfig {
        let (url, url_source) = if !f.url.is_empty() {
            (Some(f.url.clone()), "database.url".to_string())
        } else if f.url_env.is_empty() {
            (None, "database.url".to_string())
        } else {
            let v = std::env::var(&f.url_env).ok().filter(|v| !v.is_empty());
            (v, format!("${}", f.url_env))
        };
        if let Some(u) = &url {
            let checked = tls::prepare(u, &crate::tls::TlsConfig::default()).and_then(|t| {
                tokio_postgres::Config::from_str(&t.url)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = checked {
                let key = if f.url.is_empty() {
                    "database.url_env"
                } else {
                    "database.url"
                };
                p.push(
                    key,
                    format!("{url_source} is not a PostgreSQL connection URL: {e}"),
                );
            }
        }
        if f.max_connections == 0 {
            p.push("database.max_connections", "must be at least 1");
        }
        if f.max_connections > 0 && f.min_idle > f.max_connections {
            p.push(
                "database.min_idle",
                format!(
                    "{} exceeds max_connections ({})",
                    f.min_idle, f.max_connections
                ),
            );
        }
        let acquire_timeout = p.duration_or(
            "database.acquire_timeout",
            &f.acquire_timeout,
            Duration::from_millis(50),
        );
        if acquire_timeout.is_zero() {
            p.push(
                "database.acquire_timeout",
                "must be above 0 (e.g. \"50ms\")",
            );
        }
        let connect_timeout = p.duration_or(
            "database.connect_timeout",
            &f.connect_timeout,
            Duration::from_secs(1),
        );
        if connect_timeout.is_zero() {
            p.push("database.connect_timeout", "must be above 0 (e.g. \"1s\")");
        }
        let statement_timeout = p.duration_or(
            "database.statement_timeout",
            &f.statement_timeout,
            Duration::from_secs(2),
        );
        if statement_timeout.is_zero() {
            p.push(
                "database.statement_timeout",
                "must be above 0 (e.g. \"2s\")",
            );
        }
        if let Err(e) = check_identifier(&f.schema) {
            p.push("database.schema", e);
        }
        DatabaseConfig {
            url,
            url_source,
            max_connections: f.max_connections.max(1),
            min_idle: f.min_idle.min(f.max_connections.max(1)),
            acquire_timeout,
            connect_timeout,
            statement_timeout,
            prepared_statements: f.prepared_statements,
            schema: f.schema.clone(),
            trust_roots: Default::default(),
        }
    }

    /// A copy pointing at `url` (used by the subcommands' `--database-url`).
    pub fn with_url(&self, url: impl Into<String>, source: impl Into<String>) -> DatabaseConfig {
        DatabaseConfig {
            url: Some(url.into()),
            url_source: source.into(),
            ..self.clone()
        }
    }

    /// The URL, or an error saying how to provide one.
    pub fn require_url(&self) -> Result<&str, DbError> {
        self.url.as_deref().ok_or_else(|| {
            DbError::Config(format!(
                "no database URL: set `[database] url` in the config, pass --database-url, or set \
                 the environment variable ({})",
                self.url_source
            ))
        })
    }

    /// The schema as a quoted SQL identifier.
    pub fn schema_ident(&self) -> String {
        quote_ident(&self.schema)
    }
}

/// Checks that `name` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes).
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if ok_first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plain schema name ([A-Za-z_][A-Za-z0-9_]*, at most 63 bytes)"
        ))
    }
}

/// Quotes an identifier for SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The URL with its password replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

// === Errors ===

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The configuration does not allow the operation (e.g. no URL).
    #[error("{0}")]
    Config(String),
    /// No pooled connection became free within `acquire_timeout`.
    #[error("no pooled database connection free within the acquire timeout")]
    PoolExhausted,
    /// A connection could not be established.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// The database is marked unreachable after a recent connect failure.
    #[error("database marked unavailable after a recent connect failure")]
    Unavailable,
    /// A query ran past `statement_timeout`.
    #[error("query exceeded the statement timeout")]
    Timeout,
    /// The database returned an error.
    #[error("database error: {}", pg_message(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A migration cannot be applied safely; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// Writing progress output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// The server's own message and SQLSTATE when there is one (tokio-postgres's `Display` says only
/// "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// An error with its causes (`error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer`): tokio-postgres's `Display` leaves the cause out.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Connects one client (outside any pool) and drives its connection on a Tokio task. The URL's
/// `sslmode` and `sslrootcert` apply ([`tls`]), with the system roots as the default trust.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    connect_trusting(url, &Default::default(), None).await
}

/// [`connect`] with `roots` (the config's `[tls] ca_file`, [`DatabaseConfig::trust_roots`])
/// trusted besides the system roots when the URL names no `sslrootcert`, as the pool does; and
/// `search_path` asked for at connect (the `options` startup parameter) as the pool does.
pub async fn connect_trusting(
    url: &str,
    roots: &std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
    search_path: Option<&str>,
) -> Result<tokio_postgres::Client, DbError> {
    let trust = crate::tls::TlsConfig {
        extra_roots: roots.clone(),
        ..Default::default()
    };
    let failed = |e: String| DbError::Connect(format!("{e} ({})", redact_url(url)));
    let tls = tls::prepare(url, &trust).map_err(failed)?;
    let mut config: tokio_postgres::Config = tls
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| failed(e.to_string()))?;
    if let Some(schema) = search_path {
        let options = format!(
            "{} -c search_path={}",
            config.get_options().unwrap_or(""),
            quote_ident(schema)
        );
        config.options(options.trim());
    }
    let (client, connection) = config
        .connect(tls.connector)
        .await
        .map_err(|e| failed(with_causes(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Database connection closed with an error.");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(toml_text: &str) -> (DatabaseConfig, Vec<String>) {
        let f: DatabaseFile = toml::from_str(toml_text).unwrap();
        let mut p = Problems::default();
        let c = DatabaseConfig::from_file(&f, &mut p);
        (c, p.list().iter().map(|p| p.key.clone()).collect())
    }

    #[test]
    fn defaults_are_valid() {
        let (c, problems) = conf("url_env = \"OMSGATE_TEST_SURELY_UNSET_VAR\"");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.max_connections, 16);
        assert_eq!(c.min_idle, 2);
        assert_eq!(c.acquire_timeout, Duration::from_millis(50));
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        assert!(c.prepared_statements);
        assert_eq!(c.schema, "public");
        assert!(c.url.is_none());
        assert!(c
            .require_url()
            .unwrap_err()
            .to_string()
            .contains("OMSGATE_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn every_problem_has_its_key() {
        let (_, problems) = conf(
            "url = \"mysql://x\"\nmax_connections = 2\nmin_idle = 3\nacquire_timeout = \"fast\"\n\
             statement_timeout = \"0\"\nschema = \"bad;name\"",
        );
        for key in [
            "database.url",
            "database.min_idle",
            "database.acquire_timeout",
            "database.statement_timeout",
            "database.schema",
        ] {
            assert!(
                problems.iter().any(|k| k == key),
                "{key} missing in {problems:?}"
            );
        }
    }

    #[test]
    fn url_is_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        let (c, _) = conf("url = \"postgres://u:secret@h/db\"");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn query_bindings_are_checked() {
        use crate::routes::PathPattern;
        let files: std::collections::BTreeMap<String, queries::QueryFile> = toml::from_str(
            r#"
one = { sql = "SELECT f($tenant, $id)", params = { id = { from = "path", type = "uuid" } } }
list = { sql = "SELECT g($tenant)" }
"#,
        )
        .unwrap();
        let mut p = Problems::default();
        let q = queries::Queries::from_file(&files, &mut p);
        assert!(p.is_empty(), "{:?}", p.list());
        let check = |name: &str, pattern: &str, methods: &[http::Method]| {
            queries::check_binding(
                name,
                &q,
                Some(&PathPattern::parse(pattern).unwrap()),
                methods,
            )
        };
        let get = [http::Method::GET];
        assert!(check("one", "/api/v1/invoices/{id}", &get).is_ok());
        assert!(check("one", "/api/v1/invoices/{id:uuid}", &get).is_ok());
        assert!(check("list", "/api/v1/invoices", &get).is_ok());
        assert!(check("one", "/api/v1/invoices", &get)
            .unwrap_err()
            .contains("{id}"));
        assert!(check("one", "/api/v1/invoices/{id:int}", &get)
            .unwrap_err()
            .contains("uuid"));
        assert!(check("one", "/api/v1/invoices/{id}", &[http::Method::POST])
            .unwrap_err()
            .contains("GET"));
        assert!(check("one", "/api/v1/invoices/{id}", &[]).is_err());
        assert!(check("nope", "/api/v1/invoices/{id}", &get)
            .unwrap_err()
            .contains("[queries.nope]"));
    }
}
