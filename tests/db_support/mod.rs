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
