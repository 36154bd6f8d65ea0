//! The pooled query path inside the gateway (a child process), against the real PostgreSQL and
//! the simulated OMS seeded with the same data: routes with a `query` binding are answered from
//! the pool with the OMS's status and JSON, the cache stays in front of the pool, requests
//! without a verified tenant go to the OMS, and an unreachable database sends everything to the
//! OMS, counted.

mod cache_util;
mod common;
mod db_support;

use std::io::Read;

use cache_util::{config, get, token, Got};
use common::{client, free_port, Gateway};
use db_support::{
    check_accepted, database_url, seeded_schema, sim_get, sim_with, TestSchema, ACCEPTED, REJECTED,
};
use omsgate::sim::data::Dataset;
use omsgate::sim::SimHandle;

const SEED: u64 = 11;
const TENANTS: usize = 3;
const INVOICES: usize = 40;

/// Routes bound to the three pooled queries; the invoice route is cached.
const ROUTES: &str = r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET", "HEAD"]
query = "invoice_with_lines"
cache = { ttl = "60s", scope = "tenant", resource = "invoice:{id}" }
[[route]]
name = "invoice_list"
path = "/api/v1/invoices"
methods = ["GET", "HEAD"]
query = "invoice_page"
[[route]]
name = "payments"
path = "/api/v1/payments"
methods = ["GET", "HEAD"]
query = "payment_page"
"#;

/// A seeded, migrated schema and the simulated OMS over the same data set.
async fn seeded_with_sim(prefix: &str) -> (TestSchema, Dataset, SimHandle) {
    let (schema, dataset) = seeded_schema(prefix, SEED, TENANTS, INVOICES).await;
    (schema, dataset, sim_with(SEED, TENANTS, INVOICES).await)
}

fn gateway_config(sim: &SimHandle, database: &str) -> String {
    let base = config(sim.addr, "", ROUTES);
    // The routes use the queries of the annotated config.toml.
    let queries = db_support::reference_queries_toml();
    format!("{base}\n[database]\n{database}\n\n{queries}")
}

fn database_section(url: &str, schema: &str) -> String {
    format!(
        "url = \"{url}\"\nschema = \"{schema}\"\nmin_idle = 1\nmax_connections = 4\n\
         acquire_timeout = \"500ms\"\nconnect_timeout = \"500ms\""
    )
}

/// The simulated OMS's own answer (status, content type, body).
async fn from_sim(sim: &SimHandle, tenant: &str, path: &str) -> (u16, String, String) {
    let (status, content_type, body) = sim_get(sim, tenant, path).await;
    (status, content_type, String::from_utf8(body).unwrap())
}

fn oms_gets(sim: &SimHandle) -> u64 {
    sim.stats().by_route.values().sum()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric_value(name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_routes_answer_like_the_oms_with_the_cache_in_front() {
    let (schema, dataset, sim) = seeded_with_sim("qpgw_same").await;
    let gw = Gateway::start(&gateway_config(
        &sim,
        &database_section(&database_url(), &schema.name),
    ));
    let http = client();

    let acme = dataset
        .invoices
        .iter()
        .find(|i| i.tenant_id == "acme")
        .unwrap();
    let globex = dataset
        .invoices
        .iter()
        .find(|i| i.tenant_id == "globex")
        .unwrap();
    let mut requests: Vec<(String, String)> = dataset
        .invoices
        .iter()
        .step_by(9)
        .map(|i| (i.tenant_id.clone(), format!("/api/v1/invoices/{}", i.id)))
        .collect();
    for (tenant, path) in [
        // Another tenant's invoice, an unknown one, a malformed id.
        ("acme", format!("/api/v1/invoices/{}", globex.id)),
        (
            "acme",
            "/api/v1/invoices/00000000-0000-4000-8000-000000000000".to_string(),
        ),
        ("acme", "/api/v1/invoices/not-a-uuid".to_string()),
        // Listings with filters and pages, payments of an invoice (the 422s are checked against
        // literal answers below).
        ("acme", "/api/v1/invoices".to_string()),
        (
            "globex",
            "/api/v1/invoices?status=paid&limit=7&offset=3".to_string(),
        ),
        ("initech", "/api/v1/payments?limit=5".to_string()),
        ("acme", format!("/api/v1/payments?invoice_id={}", acme.id)),
    ] {
        requests.push((tenant.to_string(), path));
    }

    let before = oms_gets(&sim);
    for (tenant, path) in &requests {
        let got = get(&http, &gw.url(path), Some(&token(tenant, "alice"))).await;
        let (status, content_type, body) = from_sim(&sim, tenant, path).await;
        assert_eq!(got.status, status, "{tenant} {path}: {got:?}");
        assert_eq!(got.header("content-type"), content_type, "{tenant} {path}");
        assert_eq!(json(&got.body), json(&body), "{tenant} {path}");
        assert!(!got.header("x-request-id").is_empty());
    }
    // Only the reference requests above reached the OMS (one per request, sent directly).
    assert_eq!(
        oms_gets(&sim) - before,
        requests.len() as u64,
        "the gateway answered every bound request from the pool"
    );
    assert_eq!(
        metric(
            &gw,
            "omsgate_db_fallbacks_total",
            &[("reason", "db_unavailable")]
        ),
        0.0
    );
    // Validation through the gateway: the exact status and body written in db_support, answered
    // by the pool (the OMS sees none of these requests).
    let before = oms_gets(&sim);
    let alice = token("acme", "alice");
    for &(path, status, body) in REJECTED {
        let got = get(&http, &gw.url(path), Some(&alice)).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (status, body),
            "acme {path}: {got:?}"
        );
        assert!(
            got.header("content-type").starts_with("application/json"),
            "acme {path}: {got:?}"
        );
    }
    for &row in ACCEPTED {
        let got = get(&http, &gw.url(row.0), Some(&alice)).await;
        check_accepted(got.status, &got.body, row).unwrap_or_else(|e| panic!("gateway: {e}"));
    }
    assert_eq!(
        oms_gets(&sim) - before,
        0,
        "the pool answered every validation request"
    );

    let queries = |gw: &Gateway| {
        metric(
            gw,
            "omsgate_db_query_duration_seconds_count",
            &[("query", "invoice_with_lines")],
        )
    };

    // The cache is in front of the pool: a repeated read is a HIT and runs no query.
    let path = format!("/api/v1/invoices/{}", acme.id);
    let first = get(&http, &gw.url(&path), Some(&alice)).await;
    assert_eq!(first.x_cache, "HIT", "read once above already: {first:?}");
    let n = queries(&gw);
    let fresh = dataset
        .invoices
        .iter()
        .filter(|i| i.tenant_id == "initech")
        .nth(3)
        .unwrap();
    let fresh_path = format!("/api/v1/invoices/{}", fresh.id);
    let initech = token("initech", "bob");
    let miss = get(&http, &gw.url(&fresh_path), Some(&initech)).await;
    assert_eq!((miss.status, miss.x_cache.as_str()), (200, "MISS"));
    assert_eq!(queries(&gw), n + 1.0, "a miss runs one query");
    let hit = get(&http, &gw.url(&fresh_path), Some(&initech)).await;
    assert_eq!((hit.status, hit.x_cache.as_str()), (200, "HIT"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(queries(&gw), n + 1.0, "a hit runs no query");
    // The stored entry serves gzip and identity clients the same JSON.
    let gz = http
        .get(gw.url(&fresh_path))
        .bearer_auth(&initech)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["x-cache"], "HIT");
    let gzipped = gz.headers().get("content-encoding").cloned();
    let raw = gz.bytes().await.unwrap();
    let decoded = match gzipped {
        Some(v) if v == "gzip" => {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut out)
                .unwrap();
            out
        }
        other => panic!("a JSON invoice to a gzip client is gzipped, got {other:?}"),
    };
    assert_eq!(json(&decoded), json(&miss.body));
    assert_eq!(queries(&gw), n + 1.0);

    // HEAD of a cold invoice: the headers of the GET, no body; the entry it stores is whole.
    let cold = dataset
        .invoices
        .iter()
        .filter(|i| i.tenant_id == "initech")
        .nth(5)
        .unwrap();
    let cold_path = format!("/api/v1/invoices/{}", cold.id);
    let head = http
        .head(gw.url(&cold_path))
        .bearer_auth(&initech)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache"], "MISS");
    let head_len: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(head.bytes().await.unwrap().is_empty());
    let after_head = get(&http, &gw.url(&cold_path), Some(&initech)).await;
    assert_eq!(after_head.status, 200);
    assert_eq!(
        after_head.body.len(),
        head_len,
        "HEAD said the GET's length"
    );
    let (_, _, reference) = from_sim(&sim, "initech", &cold_path).await;
    assert_eq!(json(&after_head.body), json(&reference));

    // No verified tenant: the OMS answers (its 401), counted as a fallback.
    let before = oms_gets(&sim);
    let anonymous: Got = get(&http, &gw.url(&path), None).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(oms_gets(&sim) - before, 1);
    assert!(
        metric(
            &gw,
            "omsgate_db_fallbacks_total",
            &[("reason", "no_tenant")]
        ) >= 1.0
    );
    let size = metric(&gw, "omsgate_db_pool_connections", &[("state", "size")]);
    assert!(size >= 1.0, "pool gauge set at scrape: {size}");

    drop(gw);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_sends_every_request_to_the_oms() {
    let (schema, dataset, sim) = seeded_with_sim("qpgw_down").await;
    // Nothing listens on this port: the database is "stopped".
    let down = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let gw = Gateway::start(&gateway_config(
        &sim,
        &database_section(&down, &schema.name),
    ));
    let http = client();
    let before = oms_gets(&sim);
    let n = 6;
    for inv in dataset.invoices.iter().skip(1).step_by(5).take(n) {
        let path = format!("/api/v1/invoices/{}", inv.id);
        let got = get(&http, &gw.url(&path), Some(&token(&inv.tenant_id, "alice"))).await;
        let (status, _, body) = from_sim(&sim, &inv.tenant_id, &path).await;
        assert_eq!((got.status, json(&got.body)), (status, json(&body)));
    }
    let listing = get(
        &http,
        &gw.url("/api/v1/invoices?limit=3"),
        Some(&token("acme", "alice")),
    )
    .await;
    assert_eq!(listing.status, 200, "{listing:?}");
    // Each gateway request reached the OMS, besides the direct reference requests.
    assert_eq!(oms_gets(&sim) - before, 2 * n as u64 + 1);
    let fallbacks = metric(
        &gw,
        "omsgate_db_fallbacks_total",
        &[("reason", "db_unavailable")],
    );
    assert!(
        fallbacks >= (n + 1) as f64,
        "every request counted as a fallback: {fallbacks}\n{}",
        gw.metrics_text()
    );
    drop(gw);
    schema.drop_schema().await;
}

/// `query-check` with the annotated config.toml's queries and their `samples` SQL finds every
/// sample equal between the simulated OMS and the pooled queries over the same seeded data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_check_finds_the_reference_queries_equal_to_the_oms() {
    let (schema, dataset, sim) = seeded_with_sim("qpgw_check").await;
    let text = gateway_config(
        &sim,
        &database_section(&db_support::database_url(), &schema.name),
    )
    .replace("{listen}", "127.0.0.1:0")
    .replace("{admin}", "127.0.0.1:1");
    let dir = common::TestDir::new("qpgw_check");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .args(["query-check", "--samples", "40", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The listing's samples: every tenant x 3 statuses x 2 limits x 2 offsets.
    let listings = (TENANTS * 3 * 2 * 2).min(40).to_string();
    for (route, query, samples) in [
        ("invoice", "invoice_with_lines", "40"),
        ("invoice_list", "invoice_page", listings.as_str()),
        ("payments", "payment_page", "40"),
    ] {
        let cells: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(&format!("{route} ")))
            .unwrap_or_else(|| panic!("no row for {route}: {text}"))
            .split_whitespace()
            .collect();
        assert_eq!(cells[1], query, "{text}");
        assert_eq!(cells[2..], [samples, samples, "0", "0"], "{text}");
    }

    // --samples-file: the operator's samples instead of the `samples` SQL; only the checked
    // route's lines count.
    let mut csv = String::from("# route,tenant and the query's parameters\nroute,tenant,id\n");
    for inv in dataset.invoices.iter().step_by(7).take(3) {
        csv.push_str(&format!("invoice,{},{}\n", inv.tenant_id, inv.id));
    }
    csv.push_str("payments,acme,\n");
    let samples = dir.path().join("samples.csv");
    std::fs::write(&samples, csv).unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .args(["query-check", "--route", "invoice", "--samples-file"])
        .arg(&samples)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let cells: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("invoice "))
        .unwrap_or_else(|| panic!("no row for invoice: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(cells[2..], ["3", "3", "0", "0"], "{text}");
    sim.shutdown().await;
    schema.drop_schema().await;
}
