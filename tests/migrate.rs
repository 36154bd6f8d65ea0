//! `omsgate migrate` against the real PostgreSQL: indexes built and valid, functions created,
//! status, idempotence, two runners, changed migrations, invalid indexes, the planner using the
//! new index, and the subcommand's exit codes. Each test works in a schema of its own.

mod db_support;

use std::time::Duration;

use db_support::{database_url, SharedBuf, TestSchema};
use omsgate::db::migrate::{Migration, Migrator, RunOptions, State, MIGRATIONS};
use omsgate::db::DbError;

const INDEXES: [&str; 6] = [
    "idx_invoices_tenant_status_date",
    "idx_payments_tenant_date",
    "idx_audit_events_tenant_timestamp",
    "idx_invoice_lines_invoice",
    "idx_payments_invoice",
    "idx_audit_events_client_request_id",
];

/// `(index name, valid, unique)` of the schema's indexes named like ours.
async fn our_indexes(s: &TestSchema) -> Vec<(String, bool, bool)> {
    let rows = s
        .client
        .query(
            "SELECT c.relname::text, x.indisvalid, x.indisunique FROM pg_index x \
             JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname LIKE 'idx_%' ORDER BY 1",
            &[&s.name],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn migrate(s: &TestSchema) -> Result<(omsgate::db::migrate::RunReport, String), DbError> {
    let mut out = SharedBuf::default();
    let report = Migrator::new(&s.name)?
        .run(&s.client, RunOptions::default(), &mut out)
        .await?;
    Ok((report, out.text()))
}

#[tokio::test]
async fn migrate_builds_valid_indexes_and_functions_then_is_a_no_op() {
    let s = TestSchema::reference("mig_apply").await;
    let migrator = Migrator::new(&s.name).unwrap();
    let before = migrator.status(&s.client).await.unwrap();
    assert_eq!(before.pending(), MIGRATIONS.len());

    let (report, out) = migrate(&s).await.unwrap();
    assert_eq!(report.applied.len(), MIGRATIONS.len(), "{out}");
    assert!(
        out.contains("[1/8] 0001_idx_invoices_tenant_status_date ... done in"),
        "{out}"
    );

    let mut expected: Vec<(String, bool, bool)> = INDEXES
        .iter()
        .map(|n| (n.to_string(), true, false))
        .collect();
    expected.sort();
    assert_eq!(our_indexes(&s).await, expected);
    let functions = s
        .scalar(&format!(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = '{}' AND p.proname IN ('omsgate_invoice_with_lines', \
             'omsgate_invoice_page', 'omsgate_invoices_by_ids', 'omsgate_invoice_payments')",
            s.name
        ))
        .await;
    assert_eq!(functions.as_deref(), Some("4"));

    let status = migrator.status(&s.client).await.unwrap();
    assert!(status.up_to_date(), "{status:?}");
    assert!(status
        .migrations
        .iter()
        .all(|m| matches!(m.state, State::Applied { .. })));
    let recorded = s.scalar("SELECT count(*) FROM omsgate_migrations").await;
    assert_eq!(recorded, Some(MIGRATIONS.len().to_string()));

    let (again, out) = migrate(&s).await.unwrap();
    assert!(
        again.applied.is_empty() && again.rebuilt.is_empty(),
        "{again:?}"
    );
    assert!(out.contains("is up to date"), "{out}");
    s.drop_schema().await;
}

#[tokio::test]
async fn two_runners_one_applies_the_other_waits_and_no_ops() {
    let s = TestSchema::reference("mig_two").await;
    let a = db_support::connect_in(&s.name).await;
    let b = db_support::connect_in(&s.name).await;
    let migrator_a = Migrator::new(&s.name).unwrap();
    let migrator_b = Migrator::new(&s.name).unwrap();
    // Hold the lock so that both runners are certainly waiting at the same time.
    let key = migrator_a.lock_key();
    s.client
        .batch_execute(&format!("SELECT pg_advisory_lock({key})"))
        .await
        .unwrap();
    let (out_a, out_b) = (SharedBuf::default(), SharedBuf::default());
    let release = async {
        let both_waiting = async {
            while !(out_a.text().contains("waiting") && out_b.text().contains("waiting")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), both_waiting)
            .await
            .expect("both runners wait for the lock");
        s.client
            .batch_execute(&format!("SELECT pg_advisory_unlock({key})"))
            .await
            .unwrap();
    };
    let (mut write_a, mut write_b) = (out_a.clone(), out_b.clone());
    let (ra, rb, ()) = tokio::join!(
        migrator_a.run(&a, RunOptions::default(), &mut write_a),
        migrator_b.run(&b, RunOptions::default(), &mut write_b),
        release,
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.waited_for_lock && rb.waited_for_lock);
    let mut applied = [ra.applied.len(), rb.applied.len()];
    applied.sort();
    assert_eq!(
        applied,
        [0, MIGRATIONS.len()],
        "a: {}\nb: {}",
        out_a.text(),
        out_b.text()
    );
    let no_op = if ra.applied.is_empty() {
        out_a.text()
    } else {
        out_b.text()
    };
    assert!(no_op.contains("is up to date"), "{no_op}");
    assert_eq!(
        s.scalar("SELECT count(*) FROM omsgate_migrations").await,
        Some(MIGRATIONS.len().to_string())
    );
    s.drop_schema().await;
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused() {
    let s = TestSchema::reference("mig_changed").await;
    migrate(&s).await.unwrap();
    let changed_sql = format!("{}\n-- an edit after release\n", MIGRATIONS[5].sql);
    let mut edited: Vec<Migration> = MIGRATIONS.to_vec();
    edited[5].sql = &changed_sql;
    let extra = Migration {
        version: MIGRATIONS.len() as u32 + 1,
        name: "later",
        sql: "CREATE TABLE later_table (x int);",
    };
    edited.push(extra);
    let migrator = Migrator::with_migrations(&s.name, &edited).unwrap();

    let status = migrator.status(&s.client).await.unwrap();
    assert!(
        matches!(status.migrations[5].state, State::Changed { .. }),
        "{status:?}"
    );
    assert!(!status.up_to_date());

    let err = migrator
        .run(&s.client, RunOptions::default(), &mut SharedBuf::default())
        .await;
    let message = err.unwrap_err().to_string();
    assert!(message.contains("0006_query_functions"), "{message}");
    assert!(message.contains("must never change"), "{message}");
    // Refused before anything ran: the later migration is still pending, the lock is free.
    assert_eq!(
        s.scalar("SELECT to_regclass('later_table') IS NULL")
            .await
            .as_deref(),
        Some("t")
    );
    let free = s
        .scalar(&format!(
            "SELECT pg_try_advisory_lock({})",
            migrator.lock_key()
        ))
        .await;
    assert_eq!(free.as_deref(), Some("t"));
    s.drop_schema().await;
}

#[tokio::test]
async fn an_invalid_index_from_an_interrupted_build_is_rebuilt() {
    let s = TestSchema::reference("mig_invalid").await;
    // A concurrent build that fails (here on a unique violation) leaves an INVALID index behind,
    // exactly as one interrupted by a crash or a cancelled session would.
    s.client
        .batch_execute(
            "INSERT INTO invoices (id, tenant_id, invoice_number, invoice_status, invoice_date, \
             customer, currency, total) VALUES \
             (gen_random_uuid(), 't', 'INV-1', 'open', '2024-01-01', 'c', 'EUR', 1), \
             (gen_random_uuid(), 't', 'INV-2', 'open', '2024-01-01', 'c', 'EUR', 1)",
        )
        .await
        .unwrap();
    let failed = s
        .client
        .batch_execute(
            "CREATE UNIQUE INDEX CONCURRENTLY idx_invoices_tenant_status_date \
             ON invoices (tenant_id, invoice_status, invoice_date)",
        )
        .await;
    assert!(failed.is_err());
    assert_eq!(
        our_indexes(&s).await,
        vec![("idx_invoices_tenant_status_date".to_string(), false, true)]
    );

    let status = Migrator::new(&s.name)
        .unwrap()
        .status(&s.client)
        .await
        .unwrap();
    assert_eq!(
        status.migrations[0].invalid_indexes,
        vec!["idx_invoices_tenant_status_date"]
    );
    assert!(status.migrations[0].to_string().contains("INVALID"));

    let (report, out) = migrate(&s).await.unwrap();
    assert_eq!(
        report.rebuilt,
        vec!["idx_invoices_tenant_status_date"],
        "{out}"
    );
    assert!(
        out.contains("dropping invalid index idx_invoices_tenant_status_date"),
        "{out}"
    );
    let rebuilt = our_indexes(&s).await;
    assert!(
        rebuilt.contains(&("idx_invoices_tenant_status_date".to_string(), true, false)),
        "{rebuilt:?}"
    );
    assert!(rebuilt.iter().all(|(_, valid, _)| *valid), "{rebuilt:?}");
    s.drop_schema().await;
}

#[tokio::test]
async fn an_applied_index_that_turned_invalid_is_rebuilt() {
    let s = TestSchema::reference("mig_invalid_applied").await;
    migrate(&s).await.unwrap();
    // Simulate a later interrupted rebuild (REINDEX CONCURRENTLY) leaving the index invalid;
    // needs a superuser, as the test database's `postgres` user is.
    s.client
        .batch_execute(&format!(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = \
             '{}.idx_payments_tenant_date'::regclass",
            omsgate::db::quote_ident(&s.name)
        ))
        .await
        .unwrap();
    let (report, out) = migrate(&s).await.unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(report.rebuilt, vec!["idx_payments_tenant_date"], "{out}");
    assert!(our_indexes(&s).await.iter().all(|(_, valid, _)| *valid));
    s.drop_schema().await;
}

#[tokio::test]
async fn dry_run_prints_the_sql_and_changes_nothing() {
    let s = TestSchema::reference("mig_dry").await;
    let mut out = SharedBuf::default();
    let report = Migrator::new(&s.name)
        .unwrap()
        .run(&s.client, RunOptions { dry_run: true }, &mut out)
        .await
        .unwrap();
    assert!(report.applied.is_empty());
    let text = out.text();
    assert!(
        text.contains("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_invoices_tenant_status_date")
    );
    assert!(text.contains("0006_query_functions (in a transaction"));
    assert!(our_indexes(&s).await.is_empty());
    assert_eq!(
        s.scalar("SELECT to_regclass('omsgate_migrations') IS NULL")
            .await
            .as_deref(),
        Some("t")
    );
    s.drop_schema().await;
}

#[tokio::test]
async fn the_listing_query_uses_the_new_index() {
    let s = TestSchema::reference("mig_explain").await;
    s.client
        .batch_execute(
            "INSERT INTO invoices (id, tenant_id, invoice_number, invoice_status, invoice_date, \
                                   customer, currency, total) \
             SELECT gen_random_uuid(), 'tenant-' || (g % 40), 'INV-' || g, \
                    (ARRAY['draft', 'open', 'paid', 'void'])[1 + g % 4], \
                    DATE '2023-01-01' + (g % 700), 'Customer', 'EUR', 10 \
               FROM generate_series(1, 40000) g; \
             INSERT INTO payments (id, tenant_id, invoice_id, payment_date, amount, method) \
             SELECT gen_random_uuid(), 'tenant-' || (g % 40), gen_random_uuid(), \
                    DATE '2023-01-01' + (g % 700), 10, 'card' \
               FROM generate_series(1, 40000) g; \
             ANALYZE invoices; ANALYZE payments",
        )
        .await
        .unwrap();
    let listing = "EXPLAIN SELECT id FROM invoices WHERE tenant_id = 'tenant-7' \
                   AND invoice_status = 'paid' ORDER BY invoice_date DESC LIMIT 50";
    let payments = "EXPLAIN SELECT id FROM payments WHERE tenant_id = 'tenant-7' \
                    AND payment_date >= '2024-01-01' ORDER BY payment_date LIMIT 50";
    let plan = |sql: &'static str| {
        let client = &s.client;
        async move {
            let mut text = String::new();
            for m in client.simple_query(sql).await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    text.push_str(r.get(0).unwrap_or(""));
                    text.push('\n');
                }
            }
            text
        }
    };
    let before = plan(listing).await;
    assert!(before.contains("Seq Scan on invoices"), "{before}");
    migrate(&s).await.unwrap();
    s.client
        .batch_execute("ANALYZE invoices; ANALYZE payments")
        .await
        .unwrap();
    let after = plan(listing).await;
    assert!(after.contains("idx_invoices_tenant_status_date"), "{after}");
    let after = plan(payments).await;
    assert!(after.contains("idx_payments_tenant_date"), "{after}");
    s.drop_schema().await;
}

// === the subcommand ===

fn omsgate(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(args)
        .env_remove("DATABASE_URL")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run omsgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_subcommand_migrates_and_reports_status() {
    let s = TestSchema::reference("mig_cli").await;
    let url = database_url();
    let base = [
        "migrate",
        "--database-url",
        url.as_str(),
        "--schema",
        s.name.as_str(),
    ];

    let (code, text) = omsgate(&[&base[..], &["status"]].concat());
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!(
            "0 applied, {} pending, 0 changed-checksum",
            MIGRATIONS.len()
        )),
        "{text}"
    );

    let (code, text) = omsgate(&[&base[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("CREATE INDEX CONCURRENTLY"), "{text}");

    let (code, text) = omsgate(&base);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("Applied {} migration(s)", MIGRATIONS.len())),
        "{text}"
    );

    let (code, text) = omsgate(&[&base[..], &["status"]].concat());
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "{} applied, 0 pending, 0 changed-checksum",
            MIGRATIONS.len()
        )),
        "{text}"
    );

    let (code, text) = omsgate(&["migrate", "--schema", s.name.as_str()]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("no database URL"), "{text}");

    let (code, text) = omsgate(&[
        "migrate",
        "--database-url",
        url.as_str(),
        "--schema",
        "no_such_schema_here",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("schema `no_such_schema_here` does not exist"),
        "{text}"
    );
    s.drop_schema().await;
}

/// `migrate --dir DIR`: the operator's files run after the bundled ones, in the same table with
/// `source = 'operator'` (their own numbering), with status, a no-op rerun, a changed file refused
/// and a badly named file reported.
#[tokio::test]
async fn operator_migrations_run_after_the_bundled_ones() {
    let s = TestSchema::reference("mig_dir").await;
    let url = database_url();
    let dir = std::env::temp_dir().join(db_support::unique("mig_dir"));
    std::fs::create_dir_all(&dir).unwrap();
    // 0001 uses the bundled migration 0006's view, so it must run after the bundled ones.
    let function = "CREATE FUNCTION op_invoice_count(p_tenant text) RETURNS json LANGUAGE sql STABLE
    AS $$ SELECT json_build_object('count', count(*)) FROM omsgate_invoice_docs WHERE tenant_id = p_tenant $$;\n";
    std::fs::write(dir.join("0001_invoice_count.sql"), function).unwrap();
    std::fs::write(
        dir.join("0002_idx_customer.sql"),
        "-- omsgate: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx_op_customer ON invoices (tenant_id, customer);\n",
    )
    .unwrap();
    std::fs::write(dir.join("README.txt"), "not a migration").unwrap();
    let dir_arg = dir.display().to_string();
    let base = [
        "migrate",
        "--database-url",
        url.as_str(),
        "--schema",
        s.name.as_str(),
        "--dir",
        dir_arg.as_str(),
    ];

    let (code, text) = omsgate(&[&base[..], &["status"]].concat());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("Operator migrations (--dir)"), "{text}");
    assert!(
        text.contains("0 applied, 2 pending, 0 changed-checksum"),
        "{text}"
    );

    let (code, text) = omsgate(&base);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("Applied {} migration(s)", MIGRATIONS.len())),
        "{text}"
    );
    assert!(
        text.contains("operator 0001_invoice_count ... done"),
        "{text}"
    );
    assert!(text.contains("Applied 2 migration(s)"), "{text}");
    assert_eq!(
        s.scalar("SELECT string_agg(source || ':' || version, ',' ORDER BY source, version) FROM omsgate_migrations")
            .await
            .as_deref(),
        Some("bundled:1,bundled:2,bundled:3,bundled:4,bundled:5,bundled:6,bundled:7,bundled:8,operator:1,operator:2")
    );
    assert_eq!(
        s.scalar("SELECT op_invoice_count('nobody')::text")
            .await
            .as_deref(),
        Some(r#"{"count" : 0}"#)
    );
    assert_eq!(
        s.scalar(
            "SELECT indisvalid::text FROM pg_index WHERE indexrelid = 'idx_op_customer'::regclass"
        )
        .await
        .as_deref(),
        Some("true")
    );

    let (code, text) = omsgate(&[&base[..], &["status"]].concat());
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("2 applied, 0 pending, 0 changed-checksum"),
        "{text}"
    );
    let (code, text) = omsgate(&base);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("the operator migrations are up to date (2 applied)"),
        "{text}"
    );

    // An applied operator file changed: refused, nothing runs.
    std::fs::write(
        dir.join("0001_invoice_count.sql"),
        format!("{function}-- edited\n"),
    )
    .unwrap();
    let (code, text) = omsgate(&base);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("differ from the operator file(s)"), "{text}");
    assert!(text.contains("0001_invoice_count"), "{text}");
    std::fs::write(dir.join("0001_invoice_count.sql"), function).unwrap();

    // A .sql file that is not NNNN_name.sql.
    std::fs::write(dir.join("functions.sql"), "SELECT 1;").unwrap();
    let (code, text) = omsgate(&base);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("`functions.sql` is not named NNNN_name.sql"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
    s.drop_schema().await;
}

/// A tracking table of an older omsgate (key `version`, no `source`) is upgraded in place: its
/// rows become bundled ones, applied migrations stay applied.
#[tokio::test]
async fn an_older_tracking_table_gets_its_source_column() {
    let s = TestSchema::reference("mig_upgrade").await;
    s.client
        .batch_execute(&format!(
            "CREATE TABLE omsgate_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                 duration_ms bigint NOT NULL);
             CREATE INDEX idx_invoices_tenant_status_date ON invoices (tenant_id, invoice_status, invoice_date);
             INSERT INTO omsgate_migrations (version, name, checksum, duration_ms)
                 VALUES (1, '{}', '{}', 1);",
            MIGRATIONS[0].name,
            MIGRATIONS[0].checksum()
        ))
        .await
        .unwrap();
    let migrator = Migrator::new(&s.name).unwrap();
    let status = migrator.status(&s.client).await.unwrap();
    assert!(
        matches!(status.migrations[0].state, State::Applied { .. }),
        "{status:?}"
    );
    assert_eq!(status.pending(), MIGRATIONS.len() - 1);
    let (report, _) = migrate(&s).await.unwrap();
    assert_eq!(report.applied.len(), MIGRATIONS.len() - 1);
    assert_eq!(
        s.scalar("SELECT count(*) FILTER (WHERE source = 'bundled') || '/' || count(*) FROM omsgate_migrations")
            .await
            .as_deref(),
        Some(format!("{0}/{0}", MIGRATIONS.len()).as_str())
    );
    assert_eq!(
        s.scalar(
            "SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM pg_constraint c,
                 unnest(c.conkey) WITH ORDINALITY k(att, ord)
                 JOIN pg_attribute a ON a.attnum = k.att
             WHERE c.conrelid = 'omsgate_migrations'::regclass AND c.contype = 'p'
               AND a.attrelid = c.conrelid"
        )
        .await
        .as_deref(),
        Some("source,version")
    );
    s.drop_schema().await;
}

/// A bundled index migration whose table or column the OMS's schema lacks is skipped with a
/// clear message instead of failing the run, shown as skipped by `status` (which counts it as up
/// to date), and applied by a later run once the column exists.
#[tokio::test]
async fn index_migrations_for_a_missing_table_or_column_are_skipped() {
    let s = TestSchema::reference("mig_skip").await;
    s.client
        .batch_execute("ALTER TABLE payments DROP COLUMN payment_date; DROP TABLE audit_events;")
        .await
        .unwrap();
    let indexes = &MIGRATIONS[..5];
    let migrator = Migrator::with_migrations(&s.name, indexes).unwrap();
    let out = SharedBuf::default();
    let report = migrator
        .run(&s.client, RunOptions::default(), &mut out.clone())
        .await
        .unwrap();
    let text = out.text();
    assert_eq!(
        report.applied,
        [
            "0001_idx_invoices_tenant_status_date",
            "0004_idx_invoice_lines_invoice",
            "0005_idx_payments_invoice"
        ],
        "{text}"
    );
    assert!(
        text.contains(
            "Skipping 0002_idx_payments_tenant_date: table payments has no column payment_date"
        ),
        "{text}"
    );
    assert!(
        text.contains("Skipping 0003_idx_audit_events_tenant_timestamp: no table audit_events"),
        "{text}"
    );
    let status = migrator.status(&s.client).await.unwrap();
    assert_eq!(status.skipped(), 2, "{status:?}");
    assert!(status.up_to_date());
    assert!(
        status.migrations[1]
            .to_string()
            .contains("skipped          (table payments has no column payment_date"),
        "{}",
        status.migrations[1]
    );

    // The operator's schema gains the column: the next run builds the index.
    s.client
        .batch_execute("ALTER TABLE payments ADD COLUMN payment_date date")
        .await
        .unwrap();
    let report = migrator
        .run(&s.client, RunOptions::default(), &mut SharedBuf::default())
        .await
        .unwrap();
    assert_eq!(report.applied, ["0002_idx_payments_tenant_date"]);
    assert_eq!(migrator.status(&s.client).await.unwrap().skipped(), 1);
    s.drop_schema().await;
}

/// Migration 0007 dropped the unique `request_id` of the OMS's `audit_events`, and the legacy
/// app's own `INSERT ... ON CONFLICT (request_id) DO NOTHING` failed from then on (every API
/// request of the reference OMS answered 500). 0008, run on a schema 0007 left behind with rows
/// the sink wrote meanwhile (a reused request id), moves those request ids to
/// `client_request_id` and gives the OMS its constraint back.
#[tokio::test]
async fn migration_0008_gives_the_oms_its_unique_request_id_back() {
    let s = TestSchema::reference("mig_0008").await;
    let oms_insert = |id: &str| {
        format!(
            "INSERT INTO audit_events (tenant_id, request_id, payload) \
             VALUES ('acme', '{id}', '{{}}') ON CONFLICT (request_id) DO NOTHING"
        )
    };
    s.client
        .batch_execute(&oms_insert("oms-old"))
        .await
        .unwrap();
    let until_0007 = Migrator::with_migrations(&s.name, &MIGRATIONS[..7]).unwrap();
    until_0007
        .run(&s.client, RunOptions::default(), &mut SharedBuf::default())
        .await
        .unwrap();
    let broken = s.client.batch_execute(&oms_insert("oms-new")).await;
    assert!(
        broken
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("no unique or exclusion constraint")),
        "after 0007 the OMS's insert has no conflict target: {broken:?}"
    );
    for event in 1..=3 {
        s.client
            .batch_execute(&format!(
                "INSERT INTO audit_events (tenant_id, event_id, request_id, payload) \
                 VALUES ('acme', '00000000-0000-7000-8000-00000000000{event}', 'cover', '{{}}')"
            ))
            .await
            .unwrap();
    }

    let (report, out) = migrate(&s).await.unwrap();
    assert_eq!(
        report.applied,
        ["0008_audit_events_request_id_unique"],
        "{out}"
    );
    assert_eq!(
        s.scalar(
            "SELECT count(*) FROM audit_events \
             WHERE client_request_id = 'cover' AND request_id IS NULL"
        )
        .await
        .as_deref(),
        Some("3"),
        "the sink's rows keep their request id in client_request_id"
    );
    for id in ["oms-old", "oms-new", "oms-new"] {
        s.client.batch_execute(&oms_insert(id)).await.unwrap();
    }
    assert_eq!(
        s.scalar("SELECT string_agg(request_id, ',' ORDER BY id) FROM audit_events WHERE request_id IS NOT NULL")
            .await
            .as_deref(),
        Some("oms-old,oms-new"),
        "the OMS's inserts work and deduplicate again"
    );
    assert_eq!(
        s.scalar(&format!(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'u' \
             AND conrelid = '{}.audit_events'::regclass AND conname = 'audit_events_request_id_key'",
            s.name
        ))
        .await
        .as_deref(),
        Some("1")
    );
    let indexes: Vec<String> = our_indexes(&s).await.into_iter().map(|i| i.0).collect();
    assert!(
        indexes.contains(&"idx_audit_events_client_request_id".to_string())
            && !indexes.contains(&"idx_audit_events_request_id".to_string()),
        "{indexes:?}"
    );
    let (again, _) = migrate(&s).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    s.drop_schema().await;
}
