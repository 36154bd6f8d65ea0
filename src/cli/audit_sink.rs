//! `omsgate audit-sink --config PATH`: loads the audit topic into the OMS's `audit_events`
//! table, so that the legacy app can drop its own synchronous audit middleware.
//!
//! A Kafka consumer in the group `[audit.sink] group_id` collects up to `batch_size` records
//! (or what arrived within `batch_timeout`), writes them in one transaction with one multi-row
//! `INSERT ... SELECT FROM unnest(...) ON CONFLICT (request_id) DO NOTHING`, and commits the
//! Kafka offsets only after the transaction committed. A crash between the two replays the
//! batch, which the unique `request_id` turns into a no-op: every record lands exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::audit::{AuditConfig, SinkConfig};

/// Options of `audit-sink`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (`[audit] brokers`, `topic`, `kafka_options` and `[audit.sink]`).
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
}

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka consumer could not be created or subscribed.
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database could not be prepared (connect, create table/index).
    #[error("database {what}: {source}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: tokio_postgres::Error,
    },
}

/// What the sink did (returned when it stops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records read from Kafka.
    pub consumed: u64,
    /// Rows inserted (records already present are not counted).
    pub inserted: u64,
    /// Messages that were not audit records (logged and skipped).
    pub skipped: u64,
    /// Batches committed.
    pub batches: u64,
}

/// Runs the subcommand; returns the exit code.
pub fn main(args: Args) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    let audit = config.audit;
    let mut problems = Vec::new();
    if audit.brokers.is_none() {
        problems.push("audit.brokers: audit-sink needs the Kafka brokers to consume from");
    }
    if audit.sink.database_url.is_empty() {
        problems.push("audit.sink.database_url: audit-sink needs the OMS database URL");
    }
    if !problems.is_empty() {
        eprintln!(
            "{}: {} configuration problem(s):",
            args.config.display(),
            problems.len()
        );
        for p in problems {
            eprintln!("  - {p}");
        }
        return super::EXIT_CONFIG;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("Signal received; audit-sink finishes its batch and stops.");
            let _ = tx.send(true);
        });
        match run(&audit, rx).await {
            Ok(stats) => {
                info!(
                    consumed = stats.consumed,
                    inserted = stats.inserted,
                    skipped = stats.skipped,
                    batches = stats.batches,
                    "Audit sink stopped."
                );
                0
            }
            Err(e) => {
                error!(error = %e, "Audit sink failed.");
                1
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// One row of `audit_events`.
struct Row {
    tenant: Option<String>,
    request_id: String,
    /// `ts`; `None` (stored as the insert time) when it is not RFC 3339.
    created_at: Option<String>,
    payload: String,
}

/// Consumes `config.topic` into the sink table until `shutdown` turns true; the batch in hand
/// is written and committed first.
pub async fn run(
    config: &AuditConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SinkStats, SinkError> {
    let sink = &config.sink;
    let consumer = consumer(config)?;
    consumer.subscribe(&[&config.topic])?;
    let mut db = Db::connect(sink).await?;
    info!(topic = %config.topic, group = %sink.group_id, table = %sink.table, "Audit sink started.");
    let mut stats = SinkStats::default();
    let mut rows: Vec<Row> = Vec::with_capacity(sink.batch_size);
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut stopping = false;
    while !stopping {
        let deadline = tokio::time::sleep(sink.batch_timeout);
        tokio::pin!(deadline);
        while rows.len() < sink.batch_size {
            tokio::select! {
                _ = shutdown.changed() => { stopping = true; break; }
                _ = &mut deadline => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        stats.consumed += 1;
                        let pos = offsets.entry((m.topic().to_string(), m.partition())).or_insert(-1);
                        *pos = (*pos).max(m.offset());
                        match parse(m.payload().unwrap_or_default()) {
                            Some(row) => rows.push(row),
                            None => {
                                stats.skipped += 1;
                                warn!(partition = m.partition(), offset = m.offset(), "Message on the audit topic is not an audit record; skipped.");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "Kafka consumer error."),
                },
            }
        }
        if !rows.is_empty() {
            stats.inserted += db.write(sink, &rows, &mut shutdown).await;
            rows.clear();
            stats.batches += 1;
        }
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in offsets.drain() {
                if let Err(e) =
                    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))
                {
                    warn!(error = %e, "Offset cannot be added to the commit.");
                }
            }
            // The rows are committed in the database: now (and only now) the offsets.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                warn!(error = %e, "Kafka offset commit failed; the batch will be read again (and skipped as duplicates).");
            }
        }
    }
    Ok(stats)
}

fn consumer(config: &AuditConfig) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in &config.kafka_options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", config.brokers.as_deref().unwrap_or(""))
        .set("group.id", &config.sink.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "client.id",
            format!("omsgate-audit-sink-{}", config.gateway_id),
        )
        .create()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`: enough to keep a bad value from failing a batch.
fn looks_like_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (t.ends_with('Z') || t[19..].contains(['+', '-']))
}

fn parse(payload: &[u8]) -> Option<Row> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let request_id = v.get("request_id")?.as_str()?.to_string();
    let created_at = v
        .get("ts")
        .and_then(|t| t.as_str())
        .filter(|t| looks_like_rfc3339(t))
        .map(str::to_string);
    let tenant = v.get("tenant").and_then(|t| t.as_str()).map(str::to_string);
    Some(Row {
        tenant,
        request_id,
        created_at,
        payload: String::from_utf8_lossy(payload).into_owned(),
    })
}

struct Db {
    client: tokio_postgres::Client,
    insert: String,
}

impl Db {
    async fn connect(sink: &SinkConfig) -> Result<Db, SinkError> {
        let client = connect(&sink.database_url).await?;
        let table = &sink.table;
        let index = format!(
            "{}_request_id_key",
            table.rsplit('.').next().unwrap_or(table)
        );
        // The table name is validated as [a-z_][a-z0-9_]* (optionally schema-qualified).
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id bigserial PRIMARY KEY,
                    tenant_id text,
                    request_id text NOT NULL,
                    created_at timestamptz NOT NULL,
                    payload jsonb NOT NULL);
                 CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (request_id);"
            ))
            .await
            .map_err(|source| SinkError::Database {
                what: "table setup",
                source,
            })?;
        let insert = format!(
            "INSERT INTO {table} (tenant_id, request_id, created_at, payload)
             SELECT t, r, COALESCE(c::timestamptz, now()), p::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(t, r, c, p)
             ON CONFLICT (request_id) DO NOTHING"
        );
        Ok(Db { client, insert })
    }

    /// Writes one batch in one transaction, retrying (and reconnecting) until it commits;
    /// returns the rows inserted. On shutdown it still retries for a few seconds, then gives up
    /// without committing offsets, so the batch is read again next time.
    async fn write(
        &mut self,
        sink: &SinkConfig,
        rows: &[Row],
        shutdown: &mut watch::Receiver<bool>,
    ) -> u64 {
        let mut backoff = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            match self.try_write(rows).await {
                Ok(n) => return n,
                Err(e) => {
                    error!(error = %e, rows = rows.len(), "Audit batch could not be written; retrying.");
                    if *shutdown.borrow() && started.elapsed() > Duration::from_secs(5) {
                        return 0;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if self.client.is_closed() {
                        match connect(&sink.database_url).await {
                            Ok(c) => self.client = c,
                            Err(e) => warn!(error = %e, "Database reconnect failed."),
                        }
                    }
                }
            }
        }
    }

    async fn try_write(&mut self, rows: &[Row]) -> Result<u64, tokio_postgres::Error> {
        match self.try_write_batch(rows).await {
            Err(e) if is_data_error(&e) && rows.len() > 1 => {
                // One bad record must not block the topic: write them one by one and skip
                // (log) the ones the database refuses.
                warn!(error = %e, "Audit batch refused for its data; writing its records one by one.");
                let mut n = 0;
                for row in rows {
                    match self.try_write_batch(std::slice::from_ref(row)).await {
                        Ok(k) => n += k,
                        Err(e) if is_data_error(&e) => {
                            error!(error = %e, request_id = %row.request_id, "Audit record refused by the database; skipped.");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(n)
            }
            r => r,
        }
    }

    async fn try_write_batch(&mut self, rows: &[Row]) -> Result<u64, tokio_postgres::Error> {
        let tenants: Vec<Option<&str>> = rows.iter().map(|r| r.tenant.as_deref()).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let ts: Vec<Option<&str>> = rows.iter().map(|r| r.created_at.as_deref()).collect();
        let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
        let tx = self.client.transaction().await?;
        let n = tx
            .execute(&self.insert, &[&tenants, &ids, &ts, &payloads])
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// SQLSTATE class 22 (data exception), e.g. an unsupported `\u0000` in JSON.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, SinkError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|source| SinkError::Database {
            what: "connect",
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!(error = %e, "Database connection closed.");
        }
    });
    Ok(client)
}
