//! The pooled query paths against the real PostgreSQL: the same bytes as the simulated OMS for
//! the same seeded data (200s, 404s and 422s), tenant isolation of every function, one
//! statement per request, and the fallbacks (timeout, pool exhausted, database unreachable).

mod db_support;

use std::time::Duration;

use db_support::{
    check_accepted, queries_from, reference_queries_toml, reference_query, seeded_schema, sim_get,
    sim_with, TestSchema, ACCEPTED, NOT_FOUND_404, REJECTED,
};
use omsgate::db::seed::{seed_with, SeedOptions};
use omsgate::db::{DatabaseConfig, DbError, QueryPaths};
use omsgate::routes::Params;
use omsgate::sim::data::{self, Dataset};
use omsgate::sim::SimHandle;

const SEED: u64 = 7;
const TENANTS: usize = 3;
const INVOICES: usize = 120;

/// A schema with the reference tables, seeded like the simulated OMS, and migrated.
async fn seeded(prefix: &str) -> (TestSchema, Dataset) {
    seeded_schema(prefix, SEED, TENANTS, INVOICES).await
}

async fn sim() -> SimHandle {
    sim_with(SEED, TENANTS, INVOICES).await
}

/// The simulated OMS's answer to `GET path` for `tenant`.
async fn from_sim(sim: &SimHandle, tenant: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = sim_get(sim, tenant, path).await;
    (status, body)
}

/// The pooled path's answer to `path` (`/api/v1/invoices/{id}`, `/api/v1/invoices?...` or
/// `/api/v1/payments?...`) for `tenant`.
async fn from_pool(paths: &QueryPaths, tenant: &str, path: &str) -> (u16, Vec<u8>) {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let (name, params) = match path.strip_prefix("/api/v1/invoices/") {
        Some(id) => ("invoice_with_lines", Params(vec![("id".into(), id.into())])),
        None if path == "/api/v1/invoices" => ("invoice_page", Params::default()),
        None => ("payment_page", Params::default()),
    };
    let r = paths
        .answer(reference_query(name), tenant, None, &params, query)
        .await
        .unwrap()
        .expect("answered");
    (r.status, r.body.to_vec())
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test]
async fn pooled_answers_are_byte_identical_to_the_simulated_oms() {
    let (s, dataset) = seeded("qp_same").await;
    let sim = sim().await;
    for prepared in [true, false] {
        let paths = QueryPaths::new(&s.config(prepared)).unwrap();
        let acme = &dataset.invoices[0];
        let globex = dataset
            .invoices
            .iter()
            .find(|i| i.tenant_id == "globex")
            .unwrap();
        let paid = dataset
            .invoices
            .iter()
            .find(|i| i.invoice_status == "paid")
            .unwrap();
        let mut requests: Vec<(String, String)> = Vec::new();
        for inv in dataset.invoices.iter().step_by(37) {
            requests.push((
                inv.tenant_id.clone(),
                format!("/api/v1/invoices/{}", inv.id),
            ));
        }
        for (tenant, path) in [
            // Another tenant's invoice, an unknown one, a malformed id, the simple UUID form.
            ("acme", format!("/api/v1/invoices/{}", globex.id)),
            (
                "acme",
                "/api/v1/invoices/00000000-0000-4000-8000-000000000000".to_string(),
            ),
            ("acme", "/api/v1/invoices/not-a-uuid".to_string()),
            ("acme", format!("/api/v1/invoices/{}", acme.id.simple())),
            ("nobody", format!("/api/v1/invoices/{}", acme.id)),
            // Listings: defaults, filters, pages, the last page, beyond it (the 422s are in
            // `validation_answers_are_the_legacy_apis`, against literal answers).
            ("acme", "/api/v1/invoices".to_string()),
            (
                "globex",
                "/api/v1/invoices?status=paid&limit=7&offset=3".to_string(),
            ),
            (
                "globex",
                "/api/v1/invoices?status=void&limit=100".to_string(),
            ),
            (
                "initech",
                "/api/v1/invoices?limit=100&offset=100".to_string(),
            ),
            ("initech", "/api/v1/invoices?offset=100000".to_string()),
            (
                "initech",
                "/api/v1/invoices?status=&limit=&offset=".to_string(),
            ),
            (
                "initech",
                "/api/v1/invoices?limit=3&limit=4&st%61tus=open".to_string(),
            ),
            ("nobody", "/api/v1/invoices".to_string()),
            // Payments: all of a tenant's, one invoice's, another tenant's invoice.
            ("acme", "/api/v1/payments".to_string()),
            ("acme", "/api/v1/payments?limit=5&offset=2".to_string()),
            (
                paid.tenant_id.as_str(),
                format!("/api/v1/payments?invoice_id={}", paid.id),
            ),
            ("globex", format!("/api/v1/payments?invoice_id={}", paid.id)),
        ] {
            requests.push((tenant.to_string(), path));
        }
        let mut statuses = std::collections::BTreeMap::new();
        for (tenant, path) in &requests {
            let expected = from_sim(&sim, tenant, path).await;
            *statuses.entry(expected.0).or_insert(0) += 1;
            let got = from_pool(&paths, tenant, path).await;
            assert_eq!(
                (got.0, text(&got.1)),
                (expected.0, text(&expected.1)),
                "{tenant} {path} (prepared statements: {prepared})"
            );
        }
        let counts: Vec<(u16, i32)> = statuses.into_iter().collect();
        let by_id = dataset.invoices.len().div_ceil(37) as i32;
        assert_eq!(counts, [(200, by_id + 13), (404, 4)], "statuses compared");
        // The reference JSON of the generator itself, as well as the server's.
        let (status, body) =
            from_pool(&paths, "acme", &format!("/api/v1/invoices/{}", acme.id)).await;
        assert_eq!(status, 200);
        assert_eq!(
            text(&body),
            serde_json::to_string(&data::invoice_json(acme)).unwrap()
        );
        let (status, body) =
            from_pool(&paths, "acme", &format!("/api/v1/invoices/{}", globex.id)).await;
        assert_eq!((status, text(&body)), (404, NOT_FOUND_404.to_string()));
    }
    sim.shutdown().await;
    s.drop_schema().await;
}

/// The pooled path's answers to invalid and unusual listing parameters are the legacy API's,
/// written out in `db_support` (`REJECTED`, `ACCEPTED`) — not compared with the simulated OMS,
/// which shares the query-string code. The simulated OMS must give the same literal answers.
#[tokio::test]
async fn validation_answers_are_the_legacy_apis() {
    let (s, _dataset) = seeded("qp_valid").await;
    let sim = sim().await;
    for prepared in [true, false] {
        let paths = QueryPaths::new(&s.config(prepared)).unwrap();
        for &(path, status, body) in REJECTED {
            let got = from_pool(&paths, "acme", path).await;
            assert_eq!(
                (got.0, text(&got.1).as_str()),
                (status, body),
                "pooled: acme {path} (prepared statements: {prepared})"
            );
        }
        for &row in ACCEPTED {
            let (status, body) = from_pool(&paths, "acme", row.0).await;
            check_accepted(status, &text(&body), row)
                .unwrap_or_else(|e| panic!("pooled (prepared statements: {prepared}): {e}"));
        }
    }
    for &(path, status, body) in REJECTED {
        let got = from_sim(&sim, "acme", path).await;
        assert_eq!(
            (got.0, text(&got.1).as_str()),
            (status, body),
            "simulated OMS: acme {path}"
        );
    }
    for &row in ACCEPTED {
        let (status, body) = from_sim(&sim, "acme", row.0).await;
        check_accepted(status, &text(&body), row).unwrap_or_else(|e| panic!("simulated OMS: {e}"));
    }
    sim.shutdown().await;
    s.drop_schema().await;
}

#[tokio::test]
async fn every_function_returns_only_the_tenants_rows() {
    let (s, dataset) = seeded("qp_tenant").await;
    let acme: Vec<&data::Invoice> = dataset
        .invoices
        .iter()
        .filter(|i| i.tenant_id == "acme")
        .collect();
    let globex = dataset
        .invoices
        .iter()
        .find(|i| i.tenant_id == "globex")
        .unwrap();
    let q = |sql: String| {
        let client = &s.client;
        async move {
            let row = client.query_one(&sql, &[]).await.unwrap();
            row.get::<_, Option<String>>(0)
        }
    };
    // By id: the owner reads it, no other tenant does.
    let own = q(format!(
        "SELECT omsgate_invoice_with_lines('globex', '{}')::text",
        globex.id
    ))
    .await;
    assert!(own.is_some());
    for other in ["acme", "initech", "", "GLOBEX", "globex "] {
        let got = q(format!(
            "SELECT omsgate_invoice_with_lines('{other}', '{}')::text",
            globex.id
        ))
        .await;
        assert_eq!(got, None, "tenant {other:?} read globex's invoice");
    }
    // A page: every item is the tenant's, the total is the tenant's count.
    let page: serde_json::Value = serde_json::from_str(
        &q("SELECT omsgate_invoice_page('acme', NULL, 100, 0)::text".into())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page["total"], acme.len());
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 100);
    assert!(items.iter().all(|i| i["tenant_id"] == "acme"));
    // A batch with ids of two tenants returns only the caller's, in the order asked.
    let ids = format!(
        "ARRAY['{}', '{}', '{}']::uuid[]",
        acme[5].id, globex.id, acme[2].id
    );
    let batch: serde_json::Value = serde_json::from_str(
        &q(format!(
            "SELECT omsgate_invoices_by_ids('acme', {ids})::text"
        ))
        .await
        .unwrap(),
    )
    .unwrap();
    let got: Vec<&str> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [acme[5].id.to_string(), acme[2].id.to_string()]);
    // Payments: of the tenant's own invoice only.
    let paid = dataset
        .payments
        .iter()
        .find(|p| p.tenant_id == "globex")
        .unwrap();
    let own = q(format!(
        "SELECT omsgate_invoice_payments('globex', '{}')::text",
        paid.invoice_id
    ))
    .await;
    assert!(own.unwrap().contains(&paid.id.to_string()));
    let other = q(format!(
        "SELECT omsgate_invoice_payments('acme', '{}')::text",
        paid.invoice_id
    ))
    .await;
    assert_eq!(other.as_deref(), Some("[]"));
    let other = q(format!(
        "SELECT omsgate_payment_page('acme', '{}', 100, 0)::text",
        paid.invoice_id
    ))
    .await
    .unwrap();
    assert!(other.contains("\"total\" : 0"), "{other}");
    let all: serde_json::Value = serde_json::from_str(
        &q("SELECT omsgate_payment_page('globex', NULL, 100, 0)::text".into())
            .await
            .unwrap(),
    )
    .unwrap();
    let expected = dataset
        .payments
        .iter()
        .filter(|p| p.tenant_id == "globex")
        .count();
    assert_eq!(all["total"], expected);
    assert!(all["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["tenant_id"] == "globex"));
    s.drop_schema().await;
}

#[tokio::test]
async fn one_statement_per_request() {
    let (s, dataset) = seeded("qp_round_trips").await;
    let inv = &dataset.invoices[10];
    let params = Params(vec![("id".into(), inv.id.to_string())]);
    // config.toml's queries with the functions qualified by this test's schema, so that the
    // server's per-statement count (pg_stat_statements) tells this test's calls from those of
    // tests running in parallel with the same SQL.
    let queries = queries_from(
        // (`\"` inside the TOML strings.)
        &reference_queries_toml().replace("omsgate_", &format!("\\\"{}\\\".omsgate_", s.name)),
    );
    let query = |name: &str| queries.get(name).unwrap().clone();
    for prepared in [true, false] {
        let mut config = s.config(prepared);
        config.max_connections = 1;
        let paths = QueryPaths::new(&config).unwrap();
        // First use of each statement on the connection (a prepare, when prepared statements
        // are on), then steady state.
        for q in ["invoice_with_lines", "invoice_page", "payment_page"] {
            paths
                .answer(&query(q), &inv.tenant_id, None, &params, Some("limit=5"))
                .await
                .unwrap()
                .unwrap();
        }
        let warm = paths.statements_sent();
        assert_eq!(warm, if prepared { 6 } else { 3 });
        let server_before = server_calls(&s).await;
        for _ in 0..20 {
            for q in ["invoice_with_lines", "invoice_page", "payment_page"] {
                let r = paths
                    .answer(&query(q), &inv.tenant_id, None, &params, Some("limit=5"))
                    .await
                    .unwrap();
                assert_eq!(r.unwrap().status, 200);
            }
        }
        assert_eq!(
            paths.statements_sent() - warm,
            60,
            "prepared statements: {prepared}"
        );
        // The server's own count, where pg_stat_statements is loaded (scripts/test loads it in
        // the cluster it starts): 60 executions of the schema's function calls.
        if let (Some(before), Some(after)) = (server_before, server_calls(&s).await) {
            assert_eq!(
                after - before,
                60,
                "pg_stat_statements (prepared statements: {prepared})"
            );
        } else {
            eprintln!("pg_stat_statements not loaded; counted on the client side only");
        }
        // A malformed id and a 422 need no database at all.
        let bad = Params(vec![("id".into(), "nope".into())]);
        paths
            .answer(
                reference_query("invoice_with_lines"),
                "acme",
                None,
                &bad,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        paths
            .answer(
                reference_query("invoice_page"),
                "acme",
                None,
                &bad,
                Some("limit=0"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(paths.statements_sent() - warm, 60);
    }
    s.drop_schema().await;
}

/// Executions of statements calling this schema's `omsgate_*` functions, per
/// `pg_stat_statements`; `None` when the extension is not loaded.
async fn server_calls(s: &TestSchema) -> Option<i64> {
    let c = &s.client;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA public")
        .await
        .ok()?;
    let pattern = format!("%\"{}\".omsgate_%", s.name);
    let row = c
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM public.pg_stat_statements \
             WHERE query LIKE $1",
            &[&pattern],
        )
        .await
        .ok()?;
    Some(row.get(0))
}

fn fallbacks(reason: &str) -> u64 {
    omsgate::metrics::DB_FALLBACKS
        .with_label_values(&[reason])
        .get()
}

#[tokio::test]
async fn slow_database_times_out_and_a_busy_pool_reports_exhaustion() {
    let (s, dataset) = seeded("qp_timeout").await;
    let inv = &dataset.invoices[0];
    let params = Params(vec![("id".into(), inv.id.to_string())]);
    for prepared in [true, false] {
        let mut config: DatabaseConfig = s.config(prepared);
        config.max_connections = 1;
        config.statement_timeout = Duration::from_millis(300);
        let paths = QueryPaths::new(&config).unwrap();
        paths
            .answer(
                reference_query("invoice_with_lines"),
                &inv.tenant_id,
                None,
                &params,
                None,
            )
            .await
            .unwrap();

        // Another session locks the table: the pooled query blocks until its timeout.
        let locker = db_support::connect_in(&s.name).await;
        locker
            .batch_execute("BEGIN; LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let (timeouts, exhausted) = (fallbacks("db_timeout"), fallbacks("pool_timeout"));
        let slow = paths.answer(
            reference_query("invoice_with_lines"),
            &inv.tenant_id,
            None,
            &params,
            None,
        );
        let busy = async {
            // Let the slow request take the only connection first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            paths
                .answer(
                    reference_query("invoice_with_lines"),
                    &inv.tenant_id,
                    None,
                    &params,
                    None,
                )
                .await
        };
        let (slow, busy) = tokio::join!(slow, busy);
        assert!(
            matches!(slow, Err(DbError::Timeout)),
            "{slow:?} (prepared: {prepared})"
        );
        assert!(
            matches!(busy, Err(DbError::PoolExhausted)),
            "{busy:?} (prepared: {prepared})"
        );
        assert!(fallbacks("db_timeout") > timeouts);
        assert!(fallbacks("pool_timeout") > exhausted);
        locker.batch_execute("ROLLBACK").await.unwrap();

        // The pool recovers: the next request is answered.
        let r = paths
            .answer(
                reference_query("invoice_with_lines"),
                &inv.tenant_id,
                None,
                &params,
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.unwrap().status, 200);
    }
    s.drop_schema().await;
}

#[tokio::test]
async fn an_unreachable_database_falls_back_quickly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let file = omsgate::db::DatabaseFile {
        url: format!("postgres://postgres@127.0.0.1:{port}/test"),
        ..Default::default()
    };
    let mut problems = omsgate::config::Problems::default();
    let config = DatabaseConfig::from_file(&file, &mut problems);
    let paths = QueryPaths::new(&config).unwrap();
    paths.warm().await;
    let params = Params(vec![(
        "id".into(),
        "00000000-0000-4000-8000-000000000000".into(),
    )]);
    let before = fallbacks("db_unavailable");
    let first = paths
        .answer(
            reference_query("invoice_with_lines"),
            "acme",
            None,
            &params,
            None,
        )
        .await;
    assert!(
        matches!(first, Err(DbError::Connect(_)) | Err(DbError::Unavailable)),
        "{first:?}"
    );
    // Within the back-off the pool is not even asked.
    let second = paths
        .answer(
            reference_query("invoice_with_lines"),
            "acme",
            None,
            &params,
            None,
        )
        .await;
    assert!(matches!(second, Err(DbError::Unavailable)), "{second:?}");
    assert!(fallbacks("db_unavailable") >= before + 2);
}

#[tokio::test]
async fn seeding_again_replaces_the_tenants_rows() {
    let (s, dataset) = seeded("qp_reseed").await;
    let options = SeedOptions {
        schema: s.name.clone(),
        apply_schema: true,
        tenants: TENANTS,
        invoices_per_tenant: INVOICES,
        seed: SEED,
    };
    seed_with(&s.client, &options).await.unwrap();
    let count = |table: &'static str| {
        let client = &s.client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0) as usize
        }
    };
    assert_eq!(count("invoices").await, dataset.invoices.len());
    assert_eq!(count("invoice_lines").await, dataset.line_count());
    assert_eq!(count("payments").await, dataset.payments.len());
    assert_eq!(count("tenants").await, TENANTS);
    s.drop_schema().await;
}

/// A configured query filters by `$tenant`: tenant A never gets B's rows, even for ids that exist
/// for both; a tenant without the row gets the configured 404; the listing holds A's rows only.
#[tokio::test]
async fn a_configured_query_answers_only_the_verified_tenants_rows() {
    let s = TestSchema::empty("qp_isolation").await;
    s.client
        .batch_execute(
            "CREATE TABLE notes (tenant_id text, id bigint, body text, PRIMARY KEY (tenant_id, id));
             INSERT INTO notes VALUES ('a', 1, 'a-one'), ('a', 2, 'a-two'),
                                      ('b', 1, 'b-one'), ('b', 2, 'b-two'), ('b', 3, 'b-three');",
        )
        .await
        .unwrap();
    let queries = queries_from(
        r#"
[queries.note]
sql = "SELECT json_build_object('id', id, 'body', body) FROM notes WHERE tenant_id = $tenant AND id = $id"
params.id = { from = "path", type = "int", error_status = 404, error_body = '{"detail":"no"}' }
on_empty = "404"
empty_body = '{"detail":"Note not found"}'

[queries.notes]
sql = "SELECT coalesce(jsonb_agg(body ORDER BY id), '[]') FROM notes WHERE tenant_id = $tenant AND id >= $from"
params.from = { type = "int", default = 0 }
"#,
    );
    let note = queries.get("note").unwrap();
    let notes = queries.get("notes").unwrap();
    for prepared in [true, false] {
        let paths = QueryPaths::new(&s.config(prepared)).unwrap();
        let get = |tenant: &'static str, id: &'static str| {
            let paths = &paths;
            async move {
                let params = Params(vec![("id".into(), id.into())]);
                let r = paths
                    .answer(note, tenant, None, &params, None)
                    .await
                    .unwrap()
                    .unwrap();
                (r.status, text(&r.body))
            }
        };
        assert_eq!(
            get("a", "1").await,
            (200, r#"{"id":1,"body":"a-one"}"#.into())
        );
        assert_eq!(
            get("b", "1").await,
            (200, r#"{"id":1,"body":"b-one"}"#.into())
        );
        assert_eq!(
            get("a", "2").await,
            (200, r#"{"id":2,"body":"a-two"}"#.into())
        );
        assert_eq!(
            get("a", "3").await,
            (404, r#"{"detail":"Note not found"}"#.into())
        );
        assert_eq!(
            get("c", "1").await,
            (404, r#"{"detail":"Note not found"}"#.into())
        );
        assert_eq!(get("a", "x").await, (404, r#"{"detail":"no"}"#.into()));
        for (tenant, qs, want) in [
            ("a", None, r#"["a-one","a-two"]"#),
            ("b", Some("from=2"), r#"["b-two","b-three"]"#),
            ("c", None, "[]"),
        ] {
            let r = paths
                .answer(notes, tenant, None, &Params::default(), qs)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (r.status, text(&r.body)),
                (200, want.to_string()),
                "{tenant} {qs:?}"
            );
        }
    }
    s.drop_schema().await;
}

/// `check-config --database` lists every problem of the queries at once, those of the config
/// (SQL without `$tenant`, an unknown parameter) and those only the database can tell (a result
/// of the wrong type, two columns, a missing function, parameter types no function takes), and
/// exits 64; the same file without them passes.
#[tokio::test]
async fn check_config_database_lists_every_query_problem() {
    let s = TestSchema::empty("qp_check").await;
    s.client
        .batch_execute(
            "CREATE FUNCTION doc(t text, id bigint) RETURNS json LANGUAGE sql STABLE
                 AS $$ SELECT json_build_object('t', t, 'id', id) $$;
             CREATE FUNCTION count_of(t text) RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT 1::bigint $$;",
        )
        .await
        .unwrap();
    let good = r#"
[queries.good]
sql = "SELECT doc($tenant, $id)"
params.id = { from = "query", type = "int" }
[queries.good_text]
sql = "SELECT doc($tenant, 1)::text"
"#;
    let bad = r#"
[queries.no_tenant]
sql = "SELECT doc('acme', 1)"
[queries.unknown_param]
sql = "SELECT doc($tenant, $nope)"
[queries.wrong_type]
sql = "SELECT count_of($tenant)"
[queries.two_columns]
sql = "SELECT doc($tenant, 1), 2"
[queries.missing_function]
sql = "SELECT no_such_function($tenant)"
[queries.wrong_param_type]
sql = "SELECT doc($tenant, $id)"
params.id = { type = "uuid" }
"#;
    let dir = std::env::temp_dir().join(db_support::unique("qp_check"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, queries: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[upstream]\nservers = [\"127.0.0.1:9\"]\n[database]\nurl = \"{}\"\nschema = \"{}\"\n{queries}",
                db_support::database_url(),
                s.name
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_omsgate"))
            .args(["check-config", "--database"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run("good.toml", good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("2 queries prepared against the database"),
        "{stdout}"
    );

    let (code, _, stderr) = run("bad.toml", &format!("{good}{bad}"));
    assert_eq!(code, Some(64), "{stderr}");
    for (key, reason) in [
        ("queries.no_tenant.sql", "does not use $tenant"),
        ("queries.unknown_param.sql", "unknown parameter `$nope`"),
        ("queries.wrong_type.sql", "of type int8"),
        ("queries.two_columns.sql", "returns 2 columns"),
        (
            "queries.missing_function.sql",
            "function no_such_function(text) does not exist",
        ),
        (
            "queries.wrong_param_type.sql",
            "function doc(text, uuid) does not exist",
        ),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("{key}: ")) && l.contains(reason)),
            "`{key}: ...{reason}...` missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains("6 configuration problem(s)"), "{stderr}");
    assert!(!stderr.contains("queries.good"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
    s.drop_schema().await;
}
