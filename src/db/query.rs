//! The pooled query paths: GET routes bound with `query = "NAME"` answered straight from
//! PostgreSQL by the operator's `[queries.NAME]` SQL ([`super::queries`]), one statement (one
//! round trip) per request, with the OMS's status codes and JSON.
//!
//! [`QueryPaths`] is built inside the runtime (never before Pingora forks) and opens no
//! connection until the first request or [`QueryPaths::warm`]. The tenant always comes from the
//! caller (the verified identity) and is bound as `$tenant`, so the path needs no session state
//! (`SET`) and works behind transaction-mode poolers when `prepared_statements = false`. Names in
//! the SQL resolve in `database.schema` (set as the connections' `search_path` when it is not
//! `public`; behind a transaction-mode pooler, which may drop it, checked per connection).
//!
//! Failure policy: fail open. `Ok(None)` (a request this path does not answer) and `Err` (pool
//! exhausted, database unreachable, timeout, error) both mean "send the request to the OMS";
//! every such case is counted in `omsgate_db_fallbacks_total{reason}` here, in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use parking_lot::Mutex;
use tokio_postgres::types::{ToSql, Type};

use super::metrics::{count_error, count_fallback, observe_query, set_pool, FallbackReason};
use super::queries::{OnEmpty, Query};
use super::{quote_ident, redact_url, DatabaseConfig, DbError};
use crate::routes::Params;

/// How long the path stays off after a failed connect before it tries the database again.
const DOWN_BACKOFF: Duration = Duration::from_secs(1);
/// Extra time the client gives the server to report its own `statement_timeout`.
const TIMEOUT_MARGIN: Duration = Duration::from_millis(100);

/// A response produced from the pool: status, body and content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body: a `json`/`jsonb` result compacted (as serde_json writes it), `text` as it is.
    pub body: Bytes,
    /// The content type (`[queries.NAME] content_type`; `application/json` for error answers).
    pub content_type: String,
}

impl PooledResponse {
    fn json(status: u16, body: impl Into<Bytes>) -> PooledResponse {
        PooledResponse {
            status,
            body: body.into(),
            content_type: "application/json".into(),
        }
    }
}

/// The pooled query paths over a bounded PostgreSQL pool.
pub struct QueryPaths {
    pool: Pool,
    prepared: bool,
    min_idle: usize,
    query_timeout: Duration,
    /// Statements sent to the server (prepares included), for tests and debugging.
    sent: AtomicU64,
    /// Until when the path is off after a failed connect.
    down_until: Mutex<Option<Instant>>,
    /// The TLS connector of the pool, for cancel requests.
    connector: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for QueryPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryPaths")
            .field("status", &self.pool.status())
            .finish()
    }
}

/// Behind a transaction-mode pooler (`prepared_statements = false`) the gateway sets no session
/// state, and the pooler may have dropped the `search_path` asked for at connect, so a
/// `database.schema` other than `public` must be on the connection's `search_path` by other
/// means; otherwise the queries would resolve their names elsewhere. `Some(reason)` when it is
/// not, naming the fixes.
pub async fn search_path_problem(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    // One unnamed statement (`query_typed`): a named one would not survive the pooler.
    let rows = client
        .query_typed(
            "SELECT $1::text = ANY(current_schemas(false)), current_user::text, \
             current_setting('search_path')",
            &[(&schema, Type::TEXT)],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Some("the search_path check returned no row".into()));
    };
    if row.get::<_, bool>(0) {
        return Ok(None);
    }
    let (role, path): (String, String) = (row.get(1), row.get(2));
    Ok(Some(format!(
        "database.schema {schema:?} is not on the search_path ({path}) of role {role:?}: the \
         search_path the gateway asks for when it connects was dropped (a transaction-mode \
         pooler such as PgBouncer with ignore_startup_parameters = options), and with \
         prepared_statements = false it sets no session state; run `ALTER ROLE {} SET \
         search_path = {}, public` (or set the pooler's connect_query), or use a session-mode \
         connection with prepared_statements = true",
        quote_ident(&role),
        quote_ident(schema)
    )))
}

impl QueryPaths {
    /// Builds the pool (no connection is opened yet). Call inside the Tokio runtime that will use
    /// it.
    pub fn new(config: &DatabaseConfig) -> Result<QueryPaths, DbError> {
        let url = config.require_url()?;
        let trust = crate::tls::TlsConfig {
            extra_roots: config.trust_roots.clone(),
            ..Default::default()
        };
        let tls = super::tls::prepare(url, &trust).map_err(|e| {
            DbError::Config(format!("{}: {e} ({})", config.url_source, redact_url(url)))
        })?;
        let mut pg: tokio_postgres::Config = tls.url.parse().map_err(|e| {
            DbError::Config(format!("{}: {e} ({})", config.url_source, redact_url(url)))
        })?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("omsgate");
        }
        if config.prepared_statements {
            // Session-level settings are only safe when the connection is ours for the session;
            // behind a transaction-mode pooler the client-side deadline alone applies.
            let options = format!(
                "{} -c statement_timeout={}",
                pg.get_options().unwrap_or(""),
                config.statement_timeout.as_millis()
            );
            pg.options(options.trim());
        }
        if config.schema != "public" {
            // Unqualified names in the queries' SQL resolve in the OMS's schema. A
            // transaction-mode pooler may drop this startup parameter (PgBouncer with
            // `ignore_startup_parameters = options`; without it PgBouncer refuses the
            // connection), so without prepared statements the search_path is checked on every
            // new connection below.
            let options = format!(
                "{} -c search_path={}",
                pg.get_options().unwrap_or(""),
                quote_ident(&config.schema)
            );
            pg.options(options.trim());
        }
        let manager = Manager::from_config(
            pg,
            tls.connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let mut builder = Pool::builder(manager);
        if config.schema != "public" && !config.prepared_statements {
            let schema = config.schema.clone();
            builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    // The refusal reaches the log and the fallback counter through `acquire`.
                    match search_path_problem(client, &schema).await {
                        Ok(None) => Ok(()),
                        Ok(Some(problem)) => Err(deadpool_postgres::HookError::message(problem)),
                        Err(e) => Err(deadpool_postgres::HookError::Backend(e)),
                    }
                })
            }));
        }
        let pool = builder
            .max_size(config.max_connections)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(format!("cannot build the database pool: {e}")))?;
        Ok(QueryPaths {
            pool,
            prepared: config.prepared_statements,
            min_idle: config.min_idle,
            query_timeout: config.statement_timeout + TIMEOUT_MARGIN,
            sent: AtomicU64::new(0),
            down_until: Mutex::new(None),
            connector: tls.connector,
        })
    }

    /// Opens `min_idle` connections ahead of the first request. Errors are logged, not returned:
    /// the path falls back to the OMS until the database is reachable.
    pub async fn warm(&self) {
        let conns = futures::future::join_all((0..self.min_idle).map(|_| self.pool.get())).await;
        let failed = conns.iter().filter(|c| c.is_err()).count();
        if let Some(Err(e)) = conns.into_iter().find(|c| c.is_err()) {
            tracing::warn!(failed, error = %e, "Could not open the idle database connections.");
        }
        self.update_pool_gauges();
    }

    /// Statements sent to the database so far (prepares included).
    pub fn statements_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The pool's current size, idle connections and waiters.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Answers a request bound to `query` for `tenant` and `subject` (the verified identity,
    /// never a header the client chose). `Ok(None)` and `Err` mean: send the request to the OMS;
    /// both are counted.
    pub async fn answer(
        &self,
        query: &Query,
        tenant: &str,
        subject: Option<&str>,
        params: &Params,
        query_string: Option<&str>,
    ) -> Result<Option<PooledResponse>, DbError> {
        let values = match query.bind(tenant, subject, params, query_string) {
            Ok(Some(v)) => v,
            Ok(None) => {
                count_fallback(FallbackReason::Unsupported);
                return Ok(None);
            }
            Err(bad) => return Ok(Some(PooledResponse::json(bad.status, bad.body))),
        };
        let started = Instant::now();
        let args: Vec<(&(dyn ToSql + Sync), Type)> = values
            .iter()
            .zip(&query.types)
            .map(|(v, t)| (v as &(dyn ToSql + Sync), t.clone()))
            .collect();
        let result = self.query_one(&query.sql, &args).await;
        observe_query(&query.name, started.elapsed().as_secs_f64());
        self.update_pool_gauges();
        let result = result.map(|cell| match cell {
            Some(body) => Some(PooledResponse {
                status: query.status,
                body,
                content_type: query.content_type.clone(),
            }),
            None => match &query.on_empty {
                OnEmpty::Oms => None,
                OnEmpty::NotFound(body) => Some(PooledResponse::json(404, body.clone())),
            },
        });
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => count_fallback(FallbackReason::Unsupported),
            Err(e) => self.count_error(&query.name, e),
        }
        result
    }

    /// Runs one statement returning zero rows or one row of one `json`, `jsonb` or `text`
    /// column; `None` for zero rows or NULL.
    async fn query_one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Bytes>, DbError> {
        let client = self.acquire().await?;
        let run = async {
            if self.prepared {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let cached = client.statement_cache.size();
                let statement = client.prepare_typed_cached(sql, &types).await?;
                if client.statement_cache.size() != cached {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                }
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
                self.sent.fetch_add(1, Ordering::Relaxed);
                client.query(&statement, &values).await
            } else {
                // An unnamed statement with the types given: Parse, Bind, Execute and Sync go
                // out together, one round trip, nothing left on the server connection.
                self.sent.fetch_add(1, Ordering::Relaxed);
                client.query_typed(sql, params).await
            }
        };
        match tokio::time::timeout(self.query_timeout, run).await {
            Ok(Ok(rows)) => match rows.first() {
                Some(row) => {
                    if rows.len() > 1 || row.len() != 1 {
                        return Err(DbError::Config(format!(
                            "a pooled query must return at most one row of one column; got {} \
                             rows of {} columns",
                            rows.len(),
                            row.len()
                        )));
                    }
                    Ok(row.try_get::<_, Option<Cell>>(0)?.map(|c| c.0))
                }
                None => Ok(None),
            },
            Ok(Err(e)) if is_statement_timeout(&e) => Err(DbError::Timeout),
            Ok(Err(e)) => {
                if client.is_closed() {
                    // The connection broke under us: do not hand it to the next request.
                    drop(Object::take(client));
                }
                Err(DbError::Query(e))
            }
            Err(_) => {
                // The server did not answer in time: cancel the query and retire the
                // connection, whose protocol state is now unknown.
                let token = client.cancel_token();
                let connector = self.connector.clone();
                drop(Object::take(client));
                tokio::spawn(async move {
                    let _ = token.cancel_query(connector).await;
                });
                Err(DbError::Timeout)
            }
        }
    }

    async fn acquire(&self) -> Result<Object, DbError> {
        if let Some(until) = *self.down_until.lock() {
            if Instant::now() < until {
                return Err(DbError::Unavailable);
            }
        }
        match self.pool.get().await {
            Ok(c) => {
                *self.down_until.lock() = None;
                Ok(c)
            }
            Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {
                Err(DbError::PoolExhausted)
            }
            Err(e) => {
                let first = self
                    .down_until
                    .lock()
                    .replace(Instant::now() + DOWN_BACKOFF)
                    .is_none();
                let e = super::with_causes(&e);
                if first {
                    tracing::warn!(
                        error = %e,
                        backoff = ?DOWN_BACKOFF,
                        "Database unreachable; pooled query paths fall back to the OMS."
                    );
                }
                Err(DbError::Connect(e))
            }
        }
    }

    fn count_error(&self, name: &str, e: &DbError) {
        let reason = match e {
            DbError::PoolExhausted => FallbackReason::PoolTimeout,
            DbError::Unavailable | DbError::Connect(_) => FallbackReason::Unavailable,
            DbError::Timeout => FallbackReason::Timeout,
            _ => FallbackReason::Error,
        };
        count_fallback(reason);
        match e {
            DbError::PoolExhausted | DbError::Unavailable => {}
            DbError::Connect(_) => count_error(),
            _ => {
                count_error();
                tracing::warn!(query = name, error = %e, "Pooled query failed; falling back to the OMS.");
            }
        }
    }

    /// Sets the pool gauges (`omsgate_db_pool_connections{state}`); also call it at scrape time.
    pub fn update_pool_gauges(&self) {
        set_pool(&self.pool.status());
    }
}

fn is_statement_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// One result cell: `json` and `jsonb` compacted, `text` as it is.
struct Cell(Bytes);

impl<'a> tokio_postgres::types::FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // Binary jsonb: a version byte (1), then the JSON text.
            match raw.split_first() {
                Some((1, text)) => Ok(Cell(compact_json(std::str::from_utf8(text)?))),
                _ => Err("unsupported jsonb version".into()),
            }
        } else if *ty == Type::JSON {
            Ok(Cell(compact_json(std::str::from_utf8(raw)?)))
        } else {
            Ok(Cell(Bytes::copy_from_slice(raw)))
        }
    }

    fn accepts(ty: &Type) -> bool {
        RESULT_TYPES.contains(ty)
    }
}

/// The column types a pooled query may return.
pub const RESULT_TYPES: [Type; 4] = [Type::JSON, Type::JSONB, Type::TEXT, Type::VARCHAR];

/// Removes the whitespace PostgreSQL's `json` output puts between tokens (`{"a" : 1, "b" : 2}`),
/// giving the compact form serde_json writes. Strings are copied untouched.
pub fn compact_json(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_compacted_outside_strings_only() {
        let pg = "{\"a\" : \"x y\\\" : z\", \"b\" : [1, \n 2], \"c\" : {\"d\" : null}}";
        assert_eq!(
            &compact_json(pg)[..],
            br#"{"a":"x y\" : z","b":[1,2],"c":{"d":null}}"#
        );
    }
}
