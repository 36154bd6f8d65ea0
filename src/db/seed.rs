//! The seed generator: loads the simulated OMS's deterministic data
//! ([`crate::sim::data::generate`]) into the reference schema, so that the database and the
//! simulated legacy API hold the same rows and the pooled query path can be compared with it
//! byte for byte. Used by `omsgate seed-db`, `omsgate demo --seed-db`, the tests and the benches.
//!
//! Rows go in with `COPY ... FROM STDIN` in one transaction (about 100k invoices with 450k lines
//! in seconds). Seeding is rerunnable: the generated tenants' existing rows are deleted first,
//! other tenants' rows are left alone.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::SinkExt;
use tokio_postgres::Client;

use super::{check_identifier, quote_ident, DbError, REFERENCE_SCHEMA};
use crate::sim::data::{self, Dataset};

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Schema holding (or to hold) the OMS tables. Default `"public"`.
    pub schema: String,
    /// Create the reference tables first (`CREATE TABLE IF NOT EXISTS`). Default true.
    pub apply_schema: bool,
    /// Number of tenants (`acme`, `globex`, ..., then `tenant-006`, ...). Default 5.
    pub tenants: usize,
    /// Invoices per tenant, each with 1 to 8 lines. Default 1000.
    pub invoices_per_tenant: usize,
    /// Seed of the generated data; the simulated OMS uses 42 by default. Default 42.
    pub seed: u64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions {
            schema: "public".into(),
            apply_schema: true,
            tenants: 5,
            invoices_per_tenant: 1000,
            seed: 42,
        }
    }
}

/// What a seed run loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Tenants written.
    pub tenants: usize,
    /// Invoices written.
    pub invoices: usize,
    /// Invoice lines written.
    pub lines: usize,
    /// Payments written.
    pub payments: usize,
    /// Time taken, generation included.
    pub elapsed: Duration,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tenants, {} invoices, {} invoice lines, {} payments in {:.1} s",
            self.tenants,
            self.invoices,
            self.lines,
            self.payments,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Seeds the `public` schema of the database at `url` (creating the reference tables first when
/// `schema_apply`) with `tenants` tenants of `invoices_per_tenant` invoices generated from `seed`.
pub async fn seed(
    url: &str,
    schema_apply: bool,
    tenants: usize,
    invoices_per_tenant: usize,
    seed: u64,
) -> Result<SeedReport, DbError> {
    let client = super::connect(url).await?;
    let options = SeedOptions {
        apply_schema: schema_apply,
        tenants,
        invoices_per_tenant,
        seed,
        ..SeedOptions::default()
    };
    seed_with(&client, &options).await
}

/// Seeds over an open connection as `options` say.
pub async fn seed_with(client: &Client, options: &SeedOptions) -> Result<SeedReport, DbError> {
    check_identifier(&options.schema).map_err(DbError::Config)?;
    let started = Instant::now();
    let dataset = data::generate(options.seed, options.tenants, options.invoices_per_tenant);
    if options.apply_schema {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&options.schema)
            ))
            .await?;
    }
    client
        .batch_execute(&format!(
            "SET search_path TO {}",
            quote_ident(&options.schema)
        ))
        .await?;
    if options.apply_schema {
        client.batch_execute(REFERENCE_SCHEMA).await?;
    }
    client.batch_execute("BEGIN").await?;
    match load(client, &dataset).await {
        Ok(()) => client.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    // Fresh statistics, so that the planner sees the new rows (and the indexes, if migrated).
    client
        .batch_execute("ANALYZE tenants, invoices, invoice_lines, payments")
        .await?;
    Ok(SeedReport {
        tenants: dataset.tenants.len(),
        invoices: dataset.invoices.len(),
        lines: dataset.line_count(),
        payments: dataset.payments.len(),
        elapsed: started.elapsed(),
    })
}

async fn load(client: &Client, d: &Dataset) -> Result<(), DbError> {
    let ids: Vec<&str> = d.tenants.iter().map(|t| t.id.as_str()).collect();
    for table in ["invoice_lines", "payments", "invoices"] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE tenant_id = ANY($1)"),
                &[&ids],
            )
            .await?;
    }
    client
        .execute("DELETE FROM tenants WHERE id = ANY($1)", &[&ids])
        .await?;

    copy(
        client,
        "COPY tenants (id, name) FROM STDIN",
        &d.tenants,
        |t, row| {
            row.field(&t.id).field(&t.name);
        },
    )
    .await?;
    copy(
        client,
        "COPY invoices (id, tenant_id, invoice_number, invoice_status, invoice_date, customer, \
         currency, total, created_at, updated_at) FROM STDIN",
        &d.invoices,
        |i, row| {
            row.field(&i.id.hyphenated().to_string())
                .field(&i.tenant_id)
                .field(&i.invoice_number)
                .field(&i.invoice_status)
                .field(&i.invoice_date)
                .field(&i.customer)
                .field(&i.currency)
                .field(&data::money(i.total_cents))
                .field(&i.created_at)
                .field(&i.updated_at);
        },
    )
    .await?;
    let lines: Vec<(&data::Invoice, &data::InvoiceLine)> = d
        .invoices
        .iter()
        .flat_map(|i| i.lines.iter().map(move |l| (i, l)))
        .collect();
    copy(
        client,
        "COPY invoice_lines (id, invoice_id, tenant_id, line_no, sku, description, quantity, \
         unit_price, amount) FROM STDIN",
        &lines,
        |(i, l), row| {
            row.field(&l.id.hyphenated().to_string())
                .field(&i.id.hyphenated().to_string())
                .field(&i.tenant_id)
                .field(&l.line_no.to_string())
                .field(&l.sku)
                .field(&l.description)
                .field(&l.quantity.to_string())
                .field(&data::money(l.unit_price_cents))
                .field(&data::money(l.amount_cents));
        },
    )
    .await?;
    copy(
        client,
        "COPY payments (id, tenant_id, invoice_id, payment_date, amount, method) FROM STDIN",
        &d.payments,
        |p, row| {
            row.field(&p.id.hyphenated().to_string())
                .field(&p.tenant_id)
                .field(&p.invoice_id.hyphenated().to_string())
                .field(&p.payment_date)
                .field(&data::money(p.amount_cents))
                .field(&p.method);
        },
    )
    .await?;
    Ok(())
}

/// One row of `COPY` text format being written.
struct Row<'a> {
    buf: &'a mut BytesMut,
    first: bool,
}

impl Row<'_> {
    fn field(&mut self, value: &str) -> &mut Self {
        if !self.first {
            self.buf.put_u8(b'\t');
        }
        self.first = false;
        for &b in value.as_bytes() {
            match b {
                b'\\' => self.buf.put_slice(b"\\\\"),
                b'\t' => self.buf.put_slice(b"\\t"),
                b'\n' => self.buf.put_slice(b"\\n"),
                b'\r' => self.buf.put_slice(b"\\r"),
                _ => self.buf.put_u8(b),
            }
        }
        self
    }
}

/// Streams `items` into `statement` (`COPY ... FROM STDIN`, text format) in chunks of ~1 MiB.
async fn copy<T>(
    client: &Client,
    statement: &str,
    items: &[T],
    write: impl Fn(&T, &mut Row<'_>),
) -> Result<u64, DbError> {
    const CHUNK: usize = 1 << 20;
    let sink = client.copy_in::<_, bytes::Bytes>(statement).await?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK + 4096);
    for item in items {
        write(
            item,
            &mut Row {
                buf: &mut buf,
                first: true,
            },
        );
        buf.put_u8(b'\n');
        if buf.len() >= CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.split().freeze()).await?;
    }
    Ok(sink.finish().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_are_escaped() {
        let mut buf = BytesMut::new();
        Row {
            buf: &mut buf,
            first: true,
        }
        .field("a\tb")
        .field("c\\d\ne");
        assert_eq!(&buf[..], b"a\\tb\tc\\\\d\\ne");
    }
}
