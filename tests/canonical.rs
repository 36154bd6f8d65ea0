//! One canonical form of each request (issue 15, items 2, 3 and 8), over real HTTP: the gateway
//! as a child process, the real Redis, and the simulated OMS behaving like the legacy one
//! (`legacy_paths`: it routes on the percent-decoded path and takes every spelling of an id).
//!
//! Every spelling the OMS serves like `/api/v1/invoices` gets that route's limit, invalidation
//! and cache entry; `%2F`, `%00`, malformed escapes and paths above the root get a JSON 400; a
//! write to an upper-case id invalidates the entry of the lower-case one; an id that is not a
//! UUID is answered 404 without the OMS; a query's decoded names decide its key and its
//! redaction. Paths the HTTP client would normalise itself (dot segments) go over a raw socket.

mod cache_util;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cache_util::*;
use common::*;
use omsgate::sim::{SimHandle, SimOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
[rate_limit.policies.tenant_writes]
key = ["tenant", "route"]
quota = "3/hour"
burst = 3

[[route]]
name = "invoice"
path = "/api/v1/invoices/{id:uuid}"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", resource = "invoice:{id}" }
[[route]]
name = "invoice_list"
path = "/api/v1/invoices"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", tags = ["invoices"] }
[[route]]
name = "invoice_create"
path = "/api/v1/invoices"
methods = ["POST"]
invalidates = ["invoices"]
rate_limit = ["tenant_writes"]
[[route]]
name = "invoice_write"
path = "/api/v1/invoices/{id:uuid}"
methods = ["PUT", "PATCH", "DELETE"]
invalidates = ["invoice:{id}", "invoices"]
rate_limit = ["tenant_writes"]
"#;

/// The simulated OMS, legacy-like: decodes paths before routing.
async fn start_sim() -> (SimHandle, omsgate::sim::data::Dataset) {
    cache_util::start_sim(SimOptions {
        latency: Duration::from_millis(5),
        workers: 0,
        tenants: 3,
        invoices_per_tenant: 20,
        legacy_paths: true,
        ..SimOptions::default()
    })
    .await
}

fn start_gateway(sim: &SimHandle, extra: &str) -> Gateway {
    Gateway::start(&config(
        sim.addr,
        &shared_redis(),
        &format!("{extra}\n{ROUTES}"),
    ))
}

fn new_invoice(customer: &str) -> serde_json::Value {
    json!({
        "customer": customer, "currency": "EUR", "invoice_date": "2030-06-01",
        "lines": [{"sku": "SKU-1", "description": "Canon", "quantity": 1, "unit_price": 10}]
    })
}

fn oms_requests(sim: &SimHandle) -> u64 {
    sim.stats().requests
}

fn refused(gw: &Gateway, reason: &str) -> f64 {
    gw.metric_value("omsgate_requests_refused_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

/// One request over a fresh socket, the target sent byte for byte (no client-side
/// normalisation): status, lower-cased head, body (de-chunked).
async fn raw(addr: SocketAddr, method: &str, target: &str, token: Option<&str>) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let head = head.to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Raw { status, head, body }
}

#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// === Paths ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encoded_write_path_hits_the_write_limit_and_invalidates() {
    let (sim, _) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let http = client();
    let acme = token("acme", "alice");
    let list = gw.url("/api/v1/invoices?limit=100");
    let encoded = gw.url("/api/v1/%69nvoices");
    let plain = gw.url("/api/v1/invoices");
    let post = |url: String, customer: &'static str| {
        let (http, acme) = (http.clone(), acme.clone());
        async move {
            send(
                &http,
                reqwest::Method::POST,
                &url,
                Some(&acme),
                &[],
                Some(new_invoice(customer)),
            )
            .await
        }
    };

    assert_eq!(get(&http, &list, Some(&acme)).await.x_cache, "MISS");
    assert_eq!(get(&http, &list, Some(&acme)).await.x_cache, "HIT");
    let created = post(encoded.clone(), "Encoded Path Ltd").await;
    assert_eq!(created.status, 201, "{created:?}");
    let after = get(&http, &list, Some(&acme)).await;
    assert_eq!(
        after.x_cache, "MISS",
        "a write to /api/v1/%69nvoices invalidates like one to /api/v1/invoices"
    );
    assert!(after.body.contains("Encoded Path Ltd"), "{}", after.body);

    // `tenant_writes` admits 3 writes of a tenant: the encoded spelling shares the bucket.
    assert_eq!(post(plain.clone(), "Second").await.status, 201);
    assert_eq!(post(plain.clone(), "Third").await.status, 201);
    let limited = post(encoded.clone(), "Fourth").await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(post(plain, "Fifth").await.status, 429);
    assert_eq!(
        gw.metric_value(
            "omsgate_http_requests_total",
            &[("route", "other"), ("method", "POST"), ("status", "2xx")]
        )
        .unwrap_or(0.0),
        0.0,
        "no write escaped to the route `other`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_without_a_canonical_form_get_a_json_400_without_the_oms() {
    let (sim, _) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let acme = token("acme", "alice");
    let before = oms_requests(&sim);
    for (target, reason) in [
        ("/api%2Fv1/invoices", "encoded_slash"),
        ("/api/v1%2finvoices", "encoded_slash"),
        ("/api/v1/invoices%00", "encoded_nul"),
        ("/api/v1/%zznvoices", "bad_encoding"),
        ("/api/v1/invoices%4", "bad_encoding"),
        ("/api/v1/%ff", "bad_encoding"),
        ("/api/../../api/v1/invoices", "outside_root"),
        ("/%2e%2e/api/v1/invoices", "outside_root"),
    ] {
        let counted = refused(&gw, reason);
        let r = raw(gw.listen_addr(), "GET", target, Some(&acme)).await;
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{target}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert!(body["request_id"].as_str().is_some(), "{body}");
        assert_eq!(
            refused(&gw, reason),
            counted + 1.0,
            "{target} counted as {reason}"
        );
    }
    assert_eq!(
        oms_requests(&sim),
        before,
        "no refused request reached the OMS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dot_segments_and_escapes_share_the_route_key_and_upstream_path() {
    let (sim, _) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let acme = token("acme", "alice");
    let addr = gw.listen_addr();

    let first = raw(addr, "GET", "/api/v1/invoices", Some(&acme)).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    for spelling in [
        "/api/v1/x/../invoices",
        "/api/./v1/%69nvoices",
        "/api/v1/x/%2e%2E/%69%6E%76oices",
        "/%61pi/v1/invoices/.",
    ] {
        let r = raw(addr, "GET", spelling, Some(&acme)).await;
        let expected = if spelling.ends_with("/.") {
            // `/api/v1/invoices/` is another path (no route matches it).
            (404, None)
        } else {
            (200, Some("hit"))
        };
        assert_eq!(
            (r.status, r.header("x-cache")),
            expected,
            "{spelling}: {r:?}"
        );
        if expected.0 == 200 {
            assert_eq!(r.body, first.body, "{spelling}");
        }
    }
    // What was matched is what the OMS receives (the simulated OMS echoes the path it got).
    let echo = raw(addr, "GET", "/__echo/a/%62/../%7b%43%7d/./d%20e", None).await;
    assert_eq!(echo.status, 200, "{echo:?}");
    let echoed: serde_json::Value = serde_json::from_str(&echo.body).expect("echo JSON");
    assert_eq!(echoed["path"], "/__echo/a/%7BC%7D/d%20e");
}

// === Typed path parameters ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_to_an_upper_case_id_invalidates_the_lower_case_entry() {
    let (sim, d) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let http = client();
    let acme = token("acme", "alice");
    let id = first_invoice(&d, "acme");
    let lower = gw.url(&format!("/api/v1/invoices/{}", id.hyphenated()));
    let upper = gw.url(&format!(
        "/api/v1/invoices/{}",
        id.hyphenated().to_string().to_uppercase()
    ));

    let warm = get(&http, &lower, Some(&acme)).await;
    assert_eq!((warm.status, warm.x_cache.as_str()), (200, "MISS"));
    // Every spelling of the id is the same entry.
    let gets = sim.stats().by_route["invoice_get"];
    for spelling in [
        id.hyphenated().to_string(),
        id.hyphenated().to_string().to_uppercase(),
        id.simple().to_string(),
        format!("%7B{}%7D", id.hyphenated()),
        format!("urn:uuid:{}", id.hyphenated()),
    ] {
        let r = get(
            &http,
            &gw.url(&format!("/api/v1/invoices/{spelling}")),
            Some(&acme),
        )
        .await;
        assert_eq!((r.status, r.x_cache.as_str()), (200, "HIT"), "{spelling}");
        assert_eq!(r.body, warm.body, "{spelling}");
    }
    assert_eq!(sim.stats().by_route["invoice_get"], gets);

    let put = send(
        &http,
        reqwest::Method::PUT,
        &upper,
        Some(&acme),
        &[],
        Some(new_invoice("Upper Case Corp")),
    )
    .await;
    assert_eq!(put.status, 200, "{put:?}");
    let after = get(&http, &lower, Some(&acme)).await;
    assert_eq!(
        after.x_cache, "MISS",
        "no stale HIT after the write: {after:?}"
    );
    assert_eq!(after.json()["customer"], "Upper Case Corp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_that_is_not_a_uuid_is_404_without_the_oms() {
    let (sim, _) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let http = client();
    let acme = token("acme", "alice");
    let before = oms_requests(&sim);
    for (method, id) in [
        (reqwest::Method::GET, "42"),
        (reqwest::Method::GET, "not-a-uuid"),
        (reqwest::Method::DELETE, "0b9d6f8a-3c1e-4f5a-9b7d"),
    ] {
        let r = send(
            &http,
            method.clone(),
            &gw.url(&format!("/api/v1/invoices/{id}")),
            Some(&acme),
            &[],
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{method} {id}: {r:?}");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    assert_eq!(
        oms_requests(&sim),
        before,
        "no such request reached the OMS"
    );
    assert_eq!(refused(&gw, "bad_param"), 3.0);
    // Counted (in the logging phase, just after the answer) under the route whose shape
    // matched, not `other`.
    let counted = || {
        gw.metric_value(
            "omsgate_http_requests_total",
            &[("route", "invoice"), ("method", "GET"), ("status", "4xx")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || counted() == Some(2.0)).await,
        "{:?}",
        counted()
    );
}

// === Queries ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_is_keyed_by_decoded_names_and_last_values() {
    let (sim, _) = start_sim().await;
    let gw = start_gateway(&sim, "");
    let http = client();
    let acme = token("acme", "alice");
    let one = get(&http, &gw.url("/api/v1/invoices?limit=1"), Some(&acme)).await;
    assert_eq!((one.status, one.x_cache.as_str()), (200, "MISS"));
    assert_eq!(one.json()["items"].as_array().map(Vec::len), Some(1));
    for spelling in ["limit=5&%6cimit=1", "%6C%69mit=%31", "limit=7&&limit=1"] {
        let r = get(
            &http,
            &gw.url(&format!("/api/v1/invoices?{spelling}")),
            Some(&acme),
        )
        .await;
        assert_eq!((r.status, r.x_cache.as_str()), (200, "HIT"), "{spelling}");
        assert_eq!(r.body, one.body, "{spelling}");
    }
    // The same names in the other order mean limit=5: another entry.
    let five = get(
        &http,
        &gw.url("/api/v1/invoices?limit=1&%6cimit=5"),
        Some(&acme),
    )
    .await;
    assert_eq!(five.x_cache, "MISS");
    assert_eq!(five.json()["items"].as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encoded_secret_query_name_is_redacted_in_the_audit_record() {
    let (sim, _) = start_sim().await;
    // No brokers: the records go to the spool, read back here.
    let gw = start_gateway(&sim, "[audit]\nspool_dir = \"{dir}/spool\"");
    let http = client();
    let acme = token("acme", "alice");
    let r = get(
        &http,
        &gw.url("/api/v1/invoices?%74oken=canon-secret-1&T%4Fken=canon-secret-2&limit=2"),
        Some(&acme),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let request_id = r.header("x-request-id");
    let spool = gw.dir().join("spool");
    let read_spool = || {
        std::fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    let found = eventually(Duration::from_secs(10), || {
        read_spool().contains(&request_id)
    })
    .await;
    assert!(found, "the record of {request_id} reached the spool");
    let text = read_spool();
    assert!(
        !text.contains("canon-secret"),
        "a secret reached the audit spool"
    );
    assert!(
        text.contains("%74oken=REDACTED&T%4Fken=REDACTED&limit=2"),
        "query recorded redacted"
    );
}
