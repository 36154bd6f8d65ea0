//! Shared helpers of the database tests: the real PostgreSQL from `scripts/test`, and one fresh
//! schema per test so tests run in parallel and can be rerun.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use omsgate::db::migrate::{Migrator, RunOptions};
use omsgate::db::seed::{seed_with, SeedOptions};
use omsgate::db::{quote_ident, DatabaseConfig, DatabaseFile};
use omsgate::sim::data::{self, Dataset};
use omsgate::sim::{SimHandle, SimOptions};

/// The shared PostgreSQL: `OMSGATE_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    match std::env::var("OMSGATE_TEST_DATABASE_URL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => "postgres://postgres@127.0.0.1:5432/test".to_string(),
    }
}

/// A schema name no other test uses (in this or another process, in this or an earlier run).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A connection whose `search_path` is `schema`.
pub async fn connect_in(schema: &str) -> tokio_postgres::Client {
    let client = omsgate::db::connect(&database_url())
        .await
        .expect("connect to the test database");
    client
        .batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))
        .await
        .expect("set search_path");
    client
}

/// A fresh schema, dropped by [`TestSchema::drop_schema`] at the end of the test (a failing test
/// leaves it behind for inspection; its name is unique, so reruns are not affected).
pub struct TestSchema {
    /// The schema name.
    pub name: String,
    /// A connection with `search_path` set to the schema.
    pub client: tokio_postgres::Client,
}

impl TestSchema {
    /// Creates an empty schema.
    pub async fn empty(prefix: &str) -> TestSchema {
        let name = unique(prefix);
        let admin = omsgate::db::connect(&database_url())
            .await
            .expect("connect to the test database");
        admin
            .batch_execute(&format!("CREATE SCHEMA {}", quote_ident(&name)))
            .await
            .expect("create schema");
        let client = connect_in(&name).await;
        TestSchema { name, client }
    }

    /// Creates a schema holding the reference OMS tables (no indexes).
    pub async fn reference(prefix: &str) -> TestSchema {
        let s = TestSchema::empty(prefix).await;
        s.client
            .batch_execute(omsgate::db::REFERENCE_SCHEMA)
            .await
            .expect("apply reference schema");
        s
    }

    /// `[database]` settings pointing at this schema.
    pub fn config(&self, prepared_statements: bool) -> DatabaseConfig {
        let file = DatabaseFile {
            url: database_url(),
            schema: self.name.clone(),
            prepared_statements,
            ..DatabaseFile::default()
        };
        let mut problems = omsgate::config::Problems::default();
        let c = DatabaseConfig::from_file(&file, &mut problems);
        assert!(problems.is_empty(), "{:?}", problems.list());
        c
    }

    /// Text of the first column of the first row of `sql`.
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        for m in self.client.simple_query(sql).await.expect(sql) {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return r.get(0).map(str::to_string);
            }
        }
        None
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&self.name)))
            .await
            .expect("drop schema");
    }
}

/// An in-memory `Write` that several futures can share.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<parking_lot::Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh schema with the reference tables, seeded with the simulated OMS's data set for
/// `seed`, `tenants` and `invoices` per tenant, and migrated; and that data set.
pub async fn seeded_schema(
    prefix: &str,
    seed: u64,
    tenants: usize,
    invoices: usize,
) -> (TestSchema, Dataset) {
    let s = TestSchema::reference(prefix).await;
    let options = SeedOptions {
        schema: s.name.clone(),
        apply_schema: false,
        tenants,
        invoices_per_tenant: invoices,
        seed,
    };
    let report = seed_with(&s.client, &options).await.unwrap();
    let dataset = data::generate(seed, tenants, invoices);
    assert_eq!(report.invoices, dataset.invoices.len());
    assert_eq!(report.lines, dataset.line_count());
    assert_eq!(report.payments, dataset.payments.len());
    Migrator::new(&s.name)
        .unwrap()
        .run(&s.client, RunOptions::default(), &mut SharedBuf::default())
        .await
        .unwrap();
    // Seeding put the search_path on the schema; the tests' own queries rely on it too.
    (s, dataset)
}

/// The simulated OMS (no latency, no worker limit) serving the same data set.
pub async fn sim_with(seed: u64, tenants: usize, invoices: usize) -> SimHandle {
    let options = SimOptions {
        latency: std::time::Duration::ZERO,
        workers: 0,
        seed,
        tenants,
        invoices_per_tenant: invoices,
        ..SimOptions::default()
    };
    omsgate::sim::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

/// The simulated OMS's own answer to `GET path` for `tenant`: status, content type, body.
pub async fn sim_get(sim: &SimHandle, tenant: &str, path: &str) -> (u16, String, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", sim.url()))
        .header("x-tenant-id", tenant)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, resp.bytes().await.unwrap().to_vec())
}

/// The legacy API's 422 for a bad `limit` (examples/legacy-oms/app.py `page`).
pub const LIMIT_422: &str = r#"{"detail":"limit must be an integer from 1 to 100"}"#;
/// The legacy API's 422 for a bad `offset`.
pub const OFFSET_422: &str = r#"{"detail":"offset must be a non-negative integer"}"#;
/// The legacy API's 422 for an unknown invoice `status` filter.
pub const STATUS_422: &str = r#"{"detail":"status must be one of draft, open, paid, void"}"#;
/// The legacy API's 422 for a payments `invoice_id` filter that is not a UUID.
pub const INVOICE_ID_422: &str = r#"{"detail":"invoice_id must be a UUID"}"#;
/// The legacy API's 404 for an invoice id that is not a UUID (or not the tenant's).
pub const NOT_FOUND_404: &str = r#"{"detail":"Invoice not found"}"#;

/// Rejected requests of the pooled routes and their exact answers, written out here rather than
/// taken from the simulated OMS: the simulated OMS and the pooled path share the query-string
/// code (`sim::query::QueryString`), so comparing the two cannot catch a rule both get wrong.
/// The answers are those of the Python legacy OMS (examples/legacy-oms/app.py): the first
/// problem in the order limit, offset, filter; a repeated name's last value counts; names and
/// values are percent-decoded and `+` is a space; only plain decimal digits are numbers.
pub const REJECTED: &[(&str, u16, &str)] = &[
    ("/api/v1/invoices?limit=0", 422, LIMIT_422),
    ("/api/v1/invoices?limit=101", 422, LIMIT_422),
    ("/api/v1/invoices?limit=x", 422, LIMIT_422),
    ("/api/v1/invoices?limit=-1", 422, LIMIT_422),
    ("/api/v1/invoices?limit=1.0", 422, LIMIT_422),
    ("/api/v1/invoices?limit=+5", 422, LIMIT_422),
    ("/api/v1/invoices?limit=%2B5", 422, LIMIT_422),
    ("/api/v1/invoices?limit=5&limit=0", 422, LIMIT_422),
    ("/api/v1/invoices?lim%69t=0", 422, LIMIT_422),
    ("/api/v1/invoices?offset=-1", 422, OFFSET_422),
    ("/api/v1/invoices?offset=1.5", 422, OFFSET_422),
    ("/api/v1/invoices?offset=%2B1", 422, OFFSET_422),
    ("/api/v1/invoices?status=unpaid", 422, STATUS_422),
    ("/api/v1/invoices?status=PAID", 422, STATUS_422),
    ("/api/v1/invoices?status=paid+", 422, STATUS_422),
    (
        "/api/v1/invoices?status=unpaid&offset=-1&limit=0",
        422,
        LIMIT_422,
    ),
    ("/api/v1/invoices?status=unpaid&offset=-1", 422, OFFSET_422),
    ("/api/v1/payments?limit=0", 422, LIMIT_422),
    ("/api/v1/payments?offset=x", 422, OFFSET_422),
    ("/api/v1/payments?invoice_id=42", 422, INVOICE_ID_422),
    (
        "/api/v1/payments?invoice_id=not-a-uuid",
        422,
        INVOICE_ID_422,
    ),
    ("/api/v1/payments?invoice_id=42&limit=101", 422, LIMIT_422),
    ("/api/v1/invoices/not-a-uuid", 404, NOT_FOUND_404),
    (
        "/api/v1/invoices/00000000-0000-4000-8000-00000000000",
        404,
        NOT_FOUND_404,
    ),
];

/// Accepted listing parameters and the page they must give: path, `limit` and `offset` of the
/// answer, and the invoice status every item must have (written out, as for [`REJECTED`]).
pub const ACCEPTED: &[(&str, u64, u64, Option<&str>)] = &[
    ("/api/v1/invoices", 20, 0, None),
    ("/api/v1/invoices?status=&limit=&offset=", 20, 0, None),
    (
        "/api/v1/invoices?limit=3&limit=4&st%61tus=open",
        4,
        0,
        Some("open"),
    ),
    ("/api/v1/invoices?lim%69t=%35&offset=2", 5, 2, None),
    ("/api/v1/invoices?limit=007&status=paid", 7, 0, Some("paid")),
    ("/api/v1/invoices?limit=100&offset=0", 100, 0, None),
    ("/api/v1/payments?limit=2&offset=1&invoice_id=", 2, 1, None),
    ("/api/v1/payments?unknown=1", 20, 0, None),
];

/// Checks an accepted listing's answer against its [`ACCEPTED`] row; a description of the
/// first mismatch, if any.
pub fn check_accepted(
    status: u16,
    body: &str,
    (path, limit, offset, item_status): (&str, u64, u64, Option<&str>),
) -> Result<(), String> {
    if status != 200 {
        return Err(format!("{path}: status {status}, body {body}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))?;
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_u64);
    let items = v
        .get("items")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("{path}: no items: {body}"))?;
    let total = field("total").ok_or_else(|| format!("{path}: no total: {body}"))?;
    let want_len = limit.min(total.saturating_sub(offset));
    if (field("limit"), field("offset"), items.len() as u64)
        != (Some(limit), Some(offset), want_len)
    {
        return Err(format!(
            "{path}: want limit {limit}, offset {offset}, {want_len} items (total {total}); got {body}"
        ));
    }
    if let Some(want) = item_status {
        if let Some(bad) = items
            .iter()
            .find(|i| i.get("invoice_status").and_then(|s| s.as_str()) != Some(want))
        {
            return Err(format!("{path}: an item is not {want}: {bad}"));
        }
    }
    Ok(())
}

/// The `[queries.*]` tables of the annotated `config.toml` (the reference schema's three
/// queries), as TOML text to append to a test's config: the gateway's own
/// [`omsgate::db::queries::reference_toml`], which `demo --seed-db` and the benches use too.
pub fn reference_queries_toml() -> String {
    let out = omsgate::db::queries::reference_toml();
    assert!(out.contains("[queries."), "config.toml has no [queries.*]");
    out
}

/// Checked queries from `[queries.*]` TOML text (problems fail the test).
pub fn queries_from(text: &str) -> omsgate::db::queries::Queries {
    let (file, unknown) = omsgate::config::parse_file(text).expect("queries parse");
    assert!(unknown.is_empty(), "unknown keys: {unknown:?}");
    let mut problems = omsgate::config::Problems::default();
    let q = omsgate::db::queries::Queries::from_file(&file.queries, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.list());
    q
}

/// The reference schema's queries, as the annotated `config.toml` defines them.
pub fn reference_queries() -> &'static omsgate::db::queries::Queries {
    static Q: std::sync::OnceLock<omsgate::db::queries::Queries> = std::sync::OnceLock::new();
    Q.get_or_init(|| queries_from(&reference_queries_toml()))
}

/// The reference query called `name`.
pub fn reference_query(name: &str) -> &'static omsgate::db::queries::Query {
    reference_queries()
        .get(name)
        .unwrap_or_else(|| panic!("config.toml has no [queries.{name}]"))
}

/// The last value of `name` in a query string, decoded as the legacy API decodes it.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    omsgate::sim::query::QueryString::parse(query.unwrap_or(""))
        .get(name)
        .map(str::to_string)
}
