//! `omsgate audit-sink` against the shared broker and PostgreSQL: every record lands in
//! `audit_events` once, also when the sink is killed mid-batch (a batch read from Kafka, its
//! INSERT waiting inside an open transaction, its offsets uncommitted — observed in
//! `pg_stat_activity` at the kill) and restarted, and when the topic holds duplicates; and the
//! reference legacy OMS keeps writing its own rows into the same table, after `omsgate migrate`
//! and beside the sink.

mod audit_common;
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use audit_common::*;
use omsgate::audit::Audit;

fn sink(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["audit-sink", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("omsgate runs")
}

/// Writes the sink's config into `dir`: `topic` on `brokers` into `{schema}.audit_events`, a
/// group of its own, `batch_size` records per transaction, `extra` appended; returns its path.
fn sink_config(
    dir: &TempDir,
    brokers: &str,
    topic: &str,
    schema: &str,
    batch_size: usize,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.0.join("sink.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [audit]
            brokers = "{brokers}"
            topic = "{topic}"
            spool_dir = "{}"
            [audit.sink]
            database_url = "{}"
            group_id = "{}"
            batch_size = {batch_size}
            batch_timeout = "100ms"
            table = "{schema}.audit_events"
            {extra}
            "#,
            dir.0.join("sink-spool").display(),
            database_url(),
            unique("sink_group"),
        ),
    )
    .unwrap();
    path
}

fn produce(
    audit: &Audit,
    cfg: &omsgate::audit::AuditConfig,
    topic: &str,
    range: std::ops::Range<usize>,
) {
    let records = range
        .map(|i| record(&format!("{topic}-{i}"), i, cfg))
        .collect();
    produce_records(audit, records);
}

/// Records `records` and waits until the broker has them all.
fn produce_records(audit: &Audit, records: Vec<omsgate::audit::AuditRecord>) {
    let before = audit.state().stats;
    let n = records.len() as u64;
    for r in records {
        audit.record(r);
    }
    assert!(wait_until(Duration::from_secs(60), || {
        let s = audit.state().stats;
        s.delivered + s.replayed >= before.delivered + before.replayed + n
    }));
}

/// Ships `records` to the topic of `cfg` through a gateway's audit pipeline (its background
/// service on a thread of its own, as Pingora runs it), then stops the pipeline.
async fn ship(cfg: &omsgate::audit::AuditConfig, records: Vec<omsgate::audit::AuditRecord>) {
    let audit = Audit::new(cfg).unwrap();
    tokio::task::spawn_blocking(move || {
        let running = Running::start(&audit);
        produce_records(&audit, records);
        running.shutdown();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_every_record_once_across_a_kill_mid_batch() {
    let brokers = kafka_brokers();
    let topic = unique("audit_sink");
    create_topic(&brokers, &topic, 2);
    let schema = unique("audit_sink");
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();

    let dir = TempDir::new("sink");
    let mut cfg = config(Some(&brokers), &topic, &dir.0.join("spool"), "");
    // One record per producer batch. tansu 0.6 answers a fetch from an offset inside a record
    // batch with the batches after it (its storage lists batches by base offset and returns
    // those at or above the fetch offset), so a consumer resuming from a committed offset in
    // the middle of a batch never sees the rest of that batch. Kafka returns the whole batch
    // and the client skips the records before the offset. The sink commits after every
    // `batch_size` records, wherever a producer batch ends, so on tansu a restarted sink would
    // miss records; with one record per batch every offset starts a batch. (docs/audit.md, "tansu caveat".)
    cfg.kafka_options
        .insert("batch.num.messages".into(), "1".into());
    let audit = Audit::new(&cfg).unwrap();
    let running = tokio::task::spawn_blocking({
        let audit = audit.clone();
        move || Running::start(&audit)
    })
    .await
    .unwrap();
    let (a, c, t) = (audit.clone(), cfg.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&a, &c, &t, 0..3000))
        .await
        .unwrap();

    // The killed sink stays in the group until its session times out; the restarted one is
    // assigned the partitions only then (librdkafka's default is 45 s).
    let config_path = sink_config(
        &dir,
        &brokers,
        &topic,
        &schema,
        50,
        "[audit.kafka_options]\n\"session.timeout.ms\" = \"6000\"",
    );
    let count = |sql: String| {
        let db = &db;
        async move {
            db.query_one(&sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
        }
    };
    let rows = format!("SELECT count(*) FROM {schema}.audit_events");

    // First run: killed (SIGKILL) mid-batch. Once part of the topic is in, the test locks the
    // table, so the sink's next batch — read from Kafka, its offsets not committed — waits in
    // its INSERT inside an open transaction; the kill comes while the database shows that
    // INSERT waiting, and the batch must then be neither in the table nor lost.
    let mut first = sink(&config_path);
    let mut seen = 0;
    for _ in 0..600 {
        seen = count(rows.clone()).await;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen > 0, "the first sink wrote nothing");
    let (locker, lock_conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(lock_conn);
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.audit_events IN EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let written_before_kill = count(rows.clone()).await;
    let batch_waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND xact_start IS NOT NULL AND wait_event_type = 'Lock'
           AND query LIKE 'INSERT INTO {schema}.audit_events%'"
    );
    let mut waiting = 0;
    for _ in 0..600 {
        waiting = count(batch_waiting.clone()).await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        waiting, 1,
        "the sink never had a batch in hand waiting for the table ({written_before_kill} rows written)"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The killed sink's transaction never commits: its database session ends with it.
    let sessions = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO {schema}.audit_events%'"
    );
    for _ in 0..600 {
        if count(sessions.clone()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_kill = count(rows.clone()).await;
    println!("rows when killed mid-batch: {after_kill} of 3000");
    assert_eq!(
        after_kill, written_before_kill,
        "the batch in hand at the kill was not rolled back"
    );
    assert!(
        after_kill < 3000,
        "the sink had written everything before the kill"
    );

    // Meanwhile more records, and a redelivery of 200 old ones (at-least-once upstream).
    let (a, c, t) = (audit.clone(), cfg.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        produce(&a, &c, &t, 3000..4000);
        produce(&a, &c, &t, 0..200);
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .unwrap();

    let mut second = sink(&config_path);
    for _ in 0..1200 {
        if count(rows.clone()).await >= 4000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give late duplicates a chance to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "audit-sink exits 0 on SIGTERM: {status}");

    let total = count(rows.clone()).await;
    let distinct = count(format!(
        "SELECT count(DISTINCT client_request_id) FROM {schema}.audit_events"
    ))
    .await;
    assert_eq!(total, 4000);
    assert_eq!(distinct, 4000);
    let wrong = count(format!(
        "SELECT count(*) FROM {schema}.audit_events
         WHERE tenant_id IS DISTINCT FROM payload->>'tenant'
            OR payload->>'route' <> 'invoice'
            OR created_at <> (payload->>'ts')::timestamptz
            OR client_request_id NOT LIKE '{topic}-%'
            OR request_id IS NOT NULL"
    ))
    .await;
    assert_eq!(
        wrong, 0,
        "rows carry the record's tenant, time, request id and payload"
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// The reference legacy OMS inserts its own audit rows with `ON CONFLICT (request_id) DO
/// NOTHING`, which needs a unique index on `request_id`. After `omsgate migrate` (the CLI, as an
/// operator runs it) and with `audit-sink` loading the topic into the same table, the OMS still
/// answers and records its requests, and the sink's records — one request id reused three times,
/// one without a tenant — all land beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_oms_and_the_sink_share_audit_events_after_migrate() {
    use common::legacy::{LegacyOms, LegacyOptions};
    let oms = tokio::task::spawn_blocking(|| LegacyOms::start(LegacyOptions::default()))
        .await
        .unwrap();
    let schema = oms.schema().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args([
            "migrate",
            "--schema",
            &schema,
            "--database-url",
            &database_url(),
        ])
        .output()
        .expect("run omsgate migrate");
    assert!(
        out.status.success(),
        "omsgate migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let http = common::client();
    let oms_request = |id: &'static str| {
        let request = http
            .get(oms.url("/api/v1/invoices?limit=1"))
            .header("x-tenant-id", "acme")
            .header("x-request-id", id);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A query stuck behind a lock request (as the OMS's would be) fails instead of hanging.
    db.batch_execute("SET statement_timeout = '5s'")
        .await
        .unwrap();
    let count = |sql: String| {
        let db = &db;
        async move {
            db.query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get::<_, i64>(0)
        }
    };
    let oms_rows = format!("SELECT count(*) FROM {schema}.audit_events WHERE request_id = 'oms-1'");
    let (status, body) = oms_request("oms-1").await;
    assert_eq!(
        status,
        200,
        "the OMS after omsgate migrate: {body}\n{}",
        oms.log()
    );
    assert_eq!(
        count(oms_rows.clone()).await,
        1,
        "the OMS recorded its request"
    );

    let brokers = kafka_brokers();
    let topic = unique("audit_oms_table");
    create_topic(&brokers, &topic, 1);
    let dir = TempDir::new("sink_oms");
    let cfg = config(Some(&brokers), &topic, &dir.0.join("spool"), "");
    // One request id for all four, and one record without a tenant.
    let records = (0..4)
        .map(|i| {
            let mut r = record(&format!("{topic}-{i}"), i, &cfg);
            r.request_id = "cover".into();
            if i == 3 {
                r.tenant = None;
            }
            r
        })
        .collect();
    ship(&cfg, records).await;

    let config_path = sink_config(&dir, &brokers, &topic, &schema, 10, "");
    // A long OMS transaction holds the table's ROW EXCLUSIVE lock (as any open transaction that
    // inserted an audit row does) while the sink starts: on a migrated table the sink must not
    // ask for a stronger lock (ALTER TABLE, CREATE INDEX), which would queue behind it and stall
    // every OMS insert behind itself.
    let (holder, holder_conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(holder_conn);
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.audit_events IN ROW EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    // Killed when the test ends, failed or not (an orphan would keep the test's output open).
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sink = KillOnDrop(sink(&config_path));
    let sunk = format!(
        "SELECT count(*) FROM {schema}.audit_events
         WHERE client_request_id = 'cover' AND request_id IS NULL AND event_id IS NOT NULL"
    );
    let mut landed = 0;
    for _ in 0..600 {
        landed = count(sunk.clone()).await;
        if landed >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
    drop(sink);
    assert_eq!(
        landed, 4,
        "every sink record, one request id reused and one without a tenant, while an OMS \
         transaction held the table"
    );
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {schema}.audit_events WHERE tenant_id = '' AND client_request_id = 'cover'"
        ))
        .await,
        1,
        "a record without a tenant is stored with the OMS's empty tenant"
    );

    // The sink's table setup left the OMS's constraint alone: the OMS still records its
    // requests, and deduplicates a request id it has seen, as it always did.
    for id in ["oms-2", "oms-2"] {
        let (status, body) = oms_request(id).await;
        assert_eq!(
            status,
            200,
            "the OMS beside the sink: {body}\n{}",
            oms.log()
        );
    }
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {schema}.audit_events WHERE request_id = 'oms-2'"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = '{schema}.audit_events'::regclass
               AND conname = 'audit_events_request_id_key' AND contype = 'u'"
        ))
        .await,
        1
    );
}

/// The sink must add its columns to an OMS table that `omsgate migrate` has not prepared, while
/// an OMS transaction holds the table: it waits for the lock at most 5 s at a time, logs, and
/// tries again (it used to exit), then loads the records once the transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_retries_its_setup_while_the_table_is_locked() {
    let brokers = kafka_brokers();
    let topic = unique("audit_sink_lock");
    create_topic(&brokers, &topic, 1);
    let schema = unique("audit_sink_lock");
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The OMS's table as the OMS created it: no event_id, no client_request_id.
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.audit_events (id bigserial PRIMARY KEY, tenant_id text NOT NULL,
            request_id text UNIQUE, created_at timestamptz NOT NULL DEFAULT now(),
            payload jsonb NOT NULL DEFAULT '{{}}'::jsonb)"
    ))
    .await
    .unwrap();
    let dir = TempDir::new("sink_lock");
    let cfg = config(Some(&brokers), &topic, &dir.0.join("spool"), "");
    let records = (0..3)
        .map(|i| record(&format!("{topic}-{i}"), i, &cfg))
        .collect();
    ship(&cfg, records).await;

    let (holder, holder_conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(holder_conn);
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.audit_events IN ROW EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let log = dir.0.join("sink.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["audit-sink", "--config"])
        .arg(sink_config(&dir, &brokers, &topic, &schema, 10, ""))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("omsgate runs");
    // Past one 5 s lock_timeout: the sink is still there, and says why it waits.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let exited = child.try_wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    holder.batch_execute("ROLLBACK").await.unwrap();
    if exited.is_some() {
        panic!("the sink gave up while the table was locked ({exited:?}):\n{text}");
    }
    assert!(
        text.contains("Audit sink cannot prepare the database yet; retrying.")
            && text.contains("lock"),
        "{text}"
    );
    let rows =
        format!("SELECT count(*) FROM {schema}.audit_events WHERE client_request_id IS NOT NULL");
    let mut landed = 0;
    for _ in 0..200 {
        landed = db.query_one(&rows, &[]).await.unwrap().get::<_, i64>(0);
        if landed >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        landed,
        3,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A database that is not there yet (connection refused) is waited for, not a reason to exit;
/// an untrusted certificate is (tests/tls.rs checks that the sink exits on one).
#[test]
fn the_sink_waits_for_an_unreachable_database() {
    let dir = TempDir::new("sink_no_db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.0.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[audit]\nbrokers = \"{}\"\ntopic = \"{}\"\nspool_dir = \"{}\"\n\
             [audit.sink]\ndatabase_url = \"postgres://postgres@127.0.0.1:{port}/test\"\n",
            kafka_brokers(),
            unique("sink_no_db"),
            dir.0.join("spool").display()
        ),
    )
    .unwrap();
    let log = dir.0.join("sink.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["audit-sink", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("omsgate runs");
    std::thread::sleep(Duration::from_secs(2));
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exited.is_none(), "the sink exited ({exited:?}):\n{text}");
    assert!(
        text.contains("Audit sink cannot prepare the database yet; retrying."),
        "{text}"
    );
}

#[test]
fn sink_refuses_a_config_without_brokers_or_database() {
    let dir = TempDir::new("sink_cfg");
    let path = dir.0.join("c.toml");
    std::fs::write(&path, "[audit]\ntopic = \"t\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["audit-sink", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.brokers") && err.contains("audit.sink.database_url"),
        "{err}"
    );
}
