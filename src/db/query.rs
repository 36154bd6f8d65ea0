//! The pooled query paths: GET routes bound with `query = "..."` answered straight from
//! PostgreSQL through the functions of `migrations/0006_query_functions.sql`, one statement (one
//! round trip) per request, with the legacy API's status codes and JSON.
//!
//! [`QueryPaths`] is built inside the runtime (never before Pingora forks) and opens no
//! connection until the first request or [`QueryPaths::warm`]. The tenant always comes from the
//! caller (the verified identity) and is passed as the functions' first argument, so the path
//! needs no session state (`SET`, `search_path`) and works behind transaction-mode poolers when
//! `prepared_statements = false`.
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
use super::{quote_ident, redact_url, DatabaseConfig, DbError, QueryName};
use crate::routes::Params;
use crate::sim::query::QueryString;

/// The body of the legacy API's 404 for an invoice it does not have (or not for this tenant).
pub const INVOICE_NOT_FOUND: &str = r#"{"detail":"Invoice not found"}"#;
/// How long the path stays off after a failed connect before it tries the database again.
const DOWN_BACKOFF: Duration = Duration::from_secs(1);
/// Extra time the client gives the server to report its own `statement_timeout`.
const TIMEOUT_MARGIN: Duration = Duration::from_millis(100);

/// A response produced from the pool: a JSON body and its status (`application/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledResponse {
    /// HTTP status code.
    pub status: u16,
    /// JSON body, compact, as the legacy API writes it.
    pub body: Bytes,
}

impl PooledResponse {
    fn json(status: u16, body: impl Into<Bytes>) -> PooledResponse {
        PooledResponse {
            status,
            body: body.into(),
        }
    }
}

/// The statement of each query, schema-qualified, with its parameter types.
struct Statements {
    invoice_with_lines: String,
    invoice_page: String,
    payment_page: String,
    invoices_by_ids: String,
}

impl Statements {
    fn new(schema: &str) -> Statements {
        let s = quote_ident(schema);
        Statements {
            invoice_with_lines: format!(
                "SELECT {s}.omsgate_invoice_with_lines($1, $2::uuid)::text"
            ),
            invoice_page: format!("SELECT {s}.omsgate_invoice_page($1, $2, $3, $4)::text"),
            payment_page: format!("SELECT {s}.omsgate_payment_page($1, $2::uuid, $3, $4)::text"),
            invoices_by_ids: format!("SELECT {s}.omsgate_invoices_by_ids($1, $2::uuid[])::text"),
        }
    }
}

/// The pooled query paths over a bounded PostgreSQL pool.
pub struct QueryPaths {
    pool: Pool,
    statements: Statements,
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
        let manager = Manager::from_config(
            pg,
            tls.connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(format!("cannot build the database pool: {e}")))?;
        Ok(QueryPaths {
            pool,
            statements: Statements::new(&config.schema),
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

    /// Answers a request bound to `query` for `tenant` (the verified tenant, never a header the
    /// client chose). `Ok(None)` and `Err` mean: send the request to the OMS; both are counted.
    pub async fn answer(
        &self,
        query: &str,
        tenant: &str,
        params: &Params,
        query_string: Option<&str>,
    ) -> Result<Option<PooledResponse>, DbError> {
        let Some(name) = QueryName::parse(query) else {
            count_fallback(FallbackReason::Unsupported);
            return Ok(None);
        };
        let started = Instant::now();
        let result = match name {
            QueryName::InvoiceWithLines => self.invoice_with_lines(tenant, params).await,
            QueryName::InvoicePage => self.invoice_page(tenant, query_string).await,
            QueryName::PaymentPage => self.payment_page(tenant, query_string).await,
        };
        observe_query(name, started.elapsed().as_secs_f64());
        self.update_pool_gauges();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => count_fallback(FallbackReason::Unsupported),
            Err(e) => self.count_error(name, e),
        }
        result
    }

    /// The tenant's invoices among `ids`, with their lines, in the order of `ids`, as a JSON
    /// array (batch lookup; not bound to a route).
    pub async fn invoices_by_ids(
        &self,
        tenant: &str,
        ids: &[uuid::Uuid],
    ) -> Result<Bytes, DbError> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let json = self
            .query_json(
                &self.statements.invoices_by_ids,
                &[(&tenant, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
            )
            .await?;
        Ok(json
            .map(|j| compact_json(&j))
            .unwrap_or_else(|| Bytes::from_static(b"[]")))
    }

    async fn invoice_with_lines(
        &self,
        tenant: &str,
        params: &Params,
    ) -> Result<Option<PooledResponse>, DbError> {
        let Some(id) = params.get("id") else {
            return Ok(None);
        };
        // The legacy API answers 404 for an id that is not a UUID; no need to ask the database.
        let Ok(id) = uuid::Uuid::try_parse(id).map(|u| u.hyphenated().to_string()) else {
            return Ok(Some(PooledResponse::json(404, INVOICE_NOT_FOUND)));
        };
        let json = self
            .query_json(
                &self.statements.invoice_with_lines,
                &[(&tenant, Type::TEXT), (&id.as_str(), Type::TEXT)],
            )
            .await?;
        Ok(Some(match json {
            Some(j) => PooledResponse::json(200, compact_json(&j)),
            None => PooledResponse::json(404, INVOICE_NOT_FOUND),
        }))
    }

    async fn invoice_page(
        &self,
        tenant: &str,
        query_string: Option<&str>,
    ) -> Result<Option<PooledResponse>, DbError> {
        let q = QueryString::parse(query_string.unwrap_or(""));
        let page = match page(&q) {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(None),
            Err(rejected) => return Ok(Some(rejected)),
        };
        let status = match q.get("status") {
            None | Some("") => None,
            Some(s) if INVOICE_STATUSES.contains(&s) => Some(s),
            Some(_) => {
                return Ok(Some(unprocessable(
                    "status must be one of draft, open, paid, void",
                )))
            }
        };
        let json = self
            .query_json(
                &self.statements.invoice_page,
                &[
                    (&tenant, Type::TEXT),
                    (&status, Type::TEXT),
                    (&page.limit, Type::INT4),
                    (&page.offset, Type::INT8),
                ],
            )
            .await?;
        Ok(json.map(|j| PooledResponse::json(200, compact_json(&j))))
    }

    async fn payment_page(
        &self,
        tenant: &str,
        query_string: Option<&str>,
    ) -> Result<Option<PooledResponse>, DbError> {
        let q = QueryString::parse(query_string.unwrap_or(""));
        let page = match page(&q) {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(None),
            Err(rejected) => return Ok(Some(rejected)),
        };
        let invoice_id = match q.get("invoice_id") {
            None | Some("") => None,
            Some(id) => match uuid::Uuid::try_parse(id) {
                Ok(u) => Some(u.hyphenated().to_string()),
                Err(_) => return Ok(Some(unprocessable("invoice_id must be a UUID"))),
            },
        };
        let json = self
            .query_json(
                &self.statements.payment_page,
                &[
                    (&tenant, Type::TEXT),
                    (&invoice_id, Type::TEXT),
                    (&page.limit, Type::INT4),
                    (&page.offset, Type::INT8),
                ],
            )
            .await?;
        Ok(json.map(|j| PooledResponse::json(200, compact_json(&j))))
    }

    /// Runs one single-row, single-column statement returning JSON text (or NULL).
    async fn query_json(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<String>, DbError> {
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
            // `SELECT f(...)` yields exactly one row; its one column is the JSON or NULL.
            Ok(Ok(rows)) => match rows.first() {
                Some(row) => Ok(row.try_get::<_, Option<String>>(0)?),
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

    fn count_error(&self, name: QueryName, e: &DbError) {
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
                tracing::warn!(query = name.as_str(), error = %e, "Pooled query failed; falling back to the OMS.");
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

// === Request parsing, exactly as the legacy API reads it ===

/// Invoice statuses the legacy API knows (`crate::sim::data::STATUSES`).
const INVOICE_STATUSES: [&str; 4] = crate::sim::data::STATUSES;

/// The legacy API's 422: `{"detail": "..."}`.
fn unprocessable(message: &str) -> PooledResponse {
    PooledResponse::json(422, serde_json::json!({ "detail": message }).to_string())
}

/// `limit` and `offset` of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    limit: i32,
    offset: i64,
}

/// `limit` and `offset` of a listing in the types the query functions take, or the legacy API's
/// 422. `Ok(None)` for an offset beyond what PostgreSQL takes (the OMS answers that one).
fn page(q: &QueryString) -> Result<Option<Page>, PooledResponse> {
    let (limit, offset) = q.page().map_err(unprocessable)?;
    match (i32::try_from(limit), i64::try_from(offset)) {
        (Ok(limit), Ok(offset)) => Ok(Some(Page { limit, offset })),
        _ => Ok(None),
    }
}

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

    #[test]
    fn listing_parameters_follow_the_legacy_rules() {
        let page = |q: &str| page(&QueryString::parse(q));
        assert_eq!(
            page(""),
            Ok(Some(Page {
                limit: 20,
                offset: 0
            }))
        );
        assert_eq!(
            page("limit=&offset="),
            Ok(Some(Page {
                limit: 20,
                offset: 0
            }))
        );
        assert_eq!(
            page("limit=100&offset=7&x=1"),
            Ok(Some(Page {
                limit: 100,
                offset: 7
            }))
        );
        assert_eq!(
            page("limit=1&limit=5"),
            Ok(Some(Page {
                limit: 5,
                offset: 0
            }))
        );
        assert_eq!(
            page("lim%69t=%35"),
            Ok(Some(Page {
                limit: 5,
                offset: 0
            }))
        );
        for bad in ["limit=0", "limit=101", "limit=x", "limit=-1", "limit=+5"] {
            let r = page(bad).unwrap_err();
            assert_eq!(r.status, 422, "{bad}");
            assert_eq!(
                &r.body[..],
                br#"{"detail":"limit must be an integer from 1 to 100"}"#
            );
        }
        for bad in ["offset=-1", "offset=1.5"] {
            let r = page(bad).unwrap_err();
            assert_eq!(
                &r.body[..],
                br#"{"detail":"offset must be a non-negative integer"}"#
            );
        }
        assert_eq!(page("offset=18446744073709551615"), Ok(None));
        assert_eq!(
            QueryString::parse("status=p%61id").get("status"),
            Some("paid")
        );
    }
}
