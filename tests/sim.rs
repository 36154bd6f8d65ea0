//! The simulated legacy OMS over real HTTP: identity, tenant isolation, listings, writes,
//! the worker cap, stats, echo and shutdown.

use std::collections::HashSet;
use std::time::Duration;

use omsgate::sim::data::{self, Dataset};
use omsgate::sim::{self, SimHandle, SimOptions, SimStats};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn options() -> SimOptions {
    SimOptions {
        latency: Duration::ZERO,
        workers: 4,
        tenants: 3,
        invoices_per_tenant: 60,
        seed: 11,
        ..SimOptions::default()
    }
}

async fn start(opts: SimOptions) -> (SimHandle, Dataset) {
    let dataset = opts.dataset();
    let sim = sim::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("sim starts");
    (sim, dataset)
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(sim: &SimHandle, tenant: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: sim.url(),
            token: sim.token(tenant),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        assert_eq!(
            resp.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            (status != StatusCode::NO_CONTENT).then_some("application/json"),
        );
        let text = resp.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

fn tenant_invoices<'a>(d: &'a Dataset, tenant: &str) -> Vec<&'a data::Invoice> {
    let mut list: Vec<_> = d
        .invoices
        .iter()
        .filter(|i| i.tenant_id == tenant)
        .collect();
    list.sort_by(|a, b| {
        (&b.invoice_date, &b.invoice_number).cmp(&(&a.invoice_date, &a.invoice_number))
    });
    list
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn requests_without_a_valid_identity_get_401() {
    let (sim, d) = start(options()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/invoices", sim.url());

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"detail": "Not authenticated"})
    );

    let forged =
        omsgate::identity::issue_hs256("wrong", "tenant_id", "acme", "x", Duration::from_secs(60));
    let resp = http.get(&url).bearer_auth(forged).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A token without the tenant claim is not an identity either.
    let no_tenant = omsgate::identity::issue_hs256(
        sim::DEMO_JWT_SECRET,
        "org",
        "acme",
        "x",
        Duration::from_secs(60),
    );
    let resp = http.get(&url).bearer_auth(no_tenant).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // An invalid token is not overridden by the header.
    let resp = http
        .get(&url)
        .bearer_auth("garbage")
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Without a bearer token the tenant header identifies the tenant.
    let resp = http
        .get(&url)
        .header("x-tenant-id", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["total"], tenant_invoices(&d, "globex").len());
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["tenant_id"] == "globex"));
}

#[tokio::test]
async fn an_invoice_is_only_visible_to_its_tenant() {
    let (sim, d) = start(options()).await;
    let globex_invoice = tenant_invoices(&d, "globex")[0];
    let path = format!("/api/v1/invoices/{}", globex_invoice.id);

    let (status, body) = Client::new(&sim, "globex").get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data::invoice_json(globex_invoice));

    let acme = Client::new(&sim, "acme");
    let (status, body) = acme.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Invoice not found"}));
    assert_eq!(
        acme.get("/api/v1/invoices/not-a-uuid").await.0,
        StatusCode::NOT_FOUND
    );
    let unknown = format!("/api/v1/invoices/{}", uuid::Uuid::from_u128(1));
    assert_eq!(acme.get(&unknown).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invoice_bodies_are_the_legacy_json_byte_for_byte() {
    let (sim, d) = start(options()).await;
    let inv = tenant_invoices(&d, "acme")[3];
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/invoices/{}", sim.url(), inv.id))
        .bearer_auth(sim.token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.text().await.unwrap(),
        data::invoice_json(inv).to_string()
    );
}

#[tokio::test]
async fn listings_page_and_filter_in_legacy_order() {
    let (sim, d) = start(options()).await;
    let acme = Client::new(&sim, "acme");
    let expected = tenant_invoices(&d, "acme");

    let (status, first) = acme.get("/api/v1/invoices").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            first["total"].as_u64(),
            first["limit"].as_u64(),
            first["offset"].as_u64()
        ),
        (Some(60), Some(20), Some(0))
    );
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["items", "total", "limit", "offset"]);

    let mut seen = Vec::new();
    for offset in (0..60).step_by(25) {
        let (_, page) = acme
            .get(&format!("/api/v1/invoices?limit=25&offset={offset}"))
            .await;
        seen.extend(ids(&page));
    }
    let want: Vec<String> = expected.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(seen, want);
    assert_eq!(first["items"][0], data::invoice_json(expected[0]));

    let paid: Vec<String> = expected
        .iter()
        .filter(|i| i.invoice_status == "paid")
        .map(|i| i.id.to_string())
        .collect();
    let (_, page) = acme.get("/api/v1/invoices?status=paid&limit=100").await;
    assert_eq!(page["total"], paid.len());
    assert_eq!(ids(&page), paid);
    let (_, page) = acme
        .get("/api/v1/invoices?status=paid&limit=2&offset=1")
        .await;
    assert_eq!(ids(&page), paid[1..3]);

    let (_, beyond) = acme.get("/api/v1/invoices?offset=1000").await;
    assert_eq!(
        (
            beyond["items"].as_array().unwrap().len(),
            beyond["total"].as_u64()
        ),
        (0, Some(60))
    );

    for bad in [
        "limit=101",
        "limit=0",
        "limit=ten",
        "offset=-1",
        "status=lost",
    ] {
        let (status, body) = acme.get(&format!("/api/v1/invoices?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(body["detail"].is_string(), "{bad}");
    }
}

#[tokio::test]
async fn payments_are_listed_per_tenant_and_invoice() {
    let (sim, d) = start(options()).await;
    let acme = Client::new(&sim, "acme");
    let mut expected: Vec<&data::Payment> = d
        .payments
        .iter()
        .filter(|p| p.tenant_id == "acme")
        .collect();
    expected.sort_by(|a, b| b.payment_date.cmp(&a.payment_date).then(a.id.cmp(&b.id)));

    let (status, page) = acme.get("/api/v1/payments?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], expected.len());
    let want: Vec<Value> = expected
        .iter()
        .take(100)
        .map(|p| data::payment_json(p))
        .collect();
    assert_eq!(page["items"], Value::Array(want));

    let one = expected[0];
    let (_, page) = acme
        .get(&format!("/api/v1/payments?invoice_id={}", one.invoice_id))
        .await;
    let n = expected
        .iter()
        .filter(|p| p.invoice_id == one.invoice_id)
        .count();
    assert_eq!(page["total"], n);
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["invoice_id"] == one.invoice_id.to_string()));

    // Another tenant sees none of acme's payments.
    let (_, page) = Client::new(&sim, "globex")
        .get(&format!("/api/v1/payments?invoice_id={}", one.invoice_id))
        .await;
    assert_eq!(page["total"], 0);
    assert_eq!(
        acme.get("/api/v1/payments?invoice_id=nope").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn writes_are_visible_to_their_tenant_only() {
    let (sim, d) = start(options()).await;
    let acme = Client::new(&sim, "acme");
    let globex = Client::new(&sim, "globex");
    let body = json!({
        "customer": "Pied Piper", "currency": "USD", "invoice_date": "2030-06-01",
        "lines": [
            {"sku": "SKU-1", "description": "Compression", "quantity": 3, "unit_price": "12.50"},
            {"sku": "SKU-2", "description": "Support", "quantity": 1, "unit_price": 100}
        ]
    });
    let (status, created) = acme
        .send(reqwest::Method::POST, "/api/v1/invoices", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["invoice_number"], "INV-000061");
    assert_eq!(created["invoice_status"], "draft");
    assert_eq!(created["total"], "137.50");
    assert_eq!(created["lines"][0]["amount"], "37.50");
    assert_eq!(created["lines"][1]["line_no"], 2);
    let path = format!("/api/v1/invoices/{}", created["id"].as_str().unwrap());

    assert_eq!(acme.get(&path).await.1, created);
    let (_, page) = acme.get("/api/v1/invoices?limit=1").await;
    assert_eq!(page["items"][0], created);
    assert_eq!(page["total"], 61);
    assert_eq!(globex.get(&path).await.0, StatusCode::NOT_FOUND);

    let patch = json!({"invoice_status": "open", "customer": "Hooli"});
    assert_eq!(
        globex
            .send(reqwest::Method::PATCH, &path, Some(patch.clone()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, patched) = acme.send(reqwest::Method::PATCH, &path, Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            patched["invoice_status"].as_str(),
            patched["customer"].as_str()
        ),
        (Some("open"), Some("Hooli"))
    );
    assert_eq!(patched["lines"], created["lines"]);
    assert_ne!(patched["updated_at"], created["updated_at"]);
    assert_eq!(patched["created_at"], created["created_at"]);
    assert_eq!(acme.get(&path).await.1, patched);

    let (status, _) = acme
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"currency": "CHF"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let full = json!({
        "customer": "Hooli", "currency": "EUR", "invoice_date": "2030-06-02", "invoice_status": "paid",
        "lines": [{"sku": "SKU-9", "description": "All of it", "quantity": 2, "unit_price": "1.05"}]
    });
    let (status, replaced) = acme.send(reqwest::Method::PUT, &path, Some(full)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            replaced["total"].as_str(),
            replaced["lines"].as_array().map(Vec::len)
        ),
        (Some("2.10"), Some(1))
    );
    assert_eq!(replaced["invoice_number"], "INV-000061");

    let seeded = tenant_invoices(&d, "acme")[0];
    let (status, _) = globex
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/invoices/{}", seeded.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = acme.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(acme.get(&path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        acme.send(reqwest::Method::DELETE, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(acme.get("/api/v1/invoices").await.1["total"], 60);
}

#[tokio::test]
async fn malformed_bodies_get_422() {
    let (sim, _) = start(options()).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/invoices", sim.url()))
        .bearer_auth(sim.token("acme"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let acme = Client::new(&sim, "acme");
    let (status, body) = acme
        .send(
            reqwest::Method::POST,
            "/api/v1/invoices",
            Some(json!({"customer": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"], "currency is required");
    assert_eq!(acme.get("/api/v1/invoices").await.1["total"], 60);
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_worker_count() {
    let (sim, _) = start(SimOptions {
        workers: 2,
        latency: Duration::from_millis(40),
        ..options()
    })
    .await;
    let acme = std::sync::Arc::new(Client::new(&sim, "acme"));
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let acme = acme.clone();
            tokio::spawn(async move { acme.get("/api/v1/invoices?limit=1").await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let stats = sim.stats();
    assert_eq!(stats.requests, 12);
    assert!((1..=2).contains(&stats.max_in_flight), "{stats:?}");
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
}

#[tokio::test]
async fn stats_count_api_requests_by_route_and_reset() {
    let (sim, d) = start(options()).await;
    let acme = Client::new(&sim, "acme");
    let invoice = tenant_invoices(&d, "acme")[0].id;
    acme.get("/api/v1/invoices").await;
    acme.get("/api/v1/invoices").await;
    acme.get(&format!("/api/v1/invoices/{invoice}")).await;
    acme.get("/api/v1/payments").await;
    assert_eq!(acme.get("/api/v2/nothing").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        acme.send(reqwest::Method::POST, "/api/v1/payments", None)
            .await
            .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (status, health) = acme.get("/health").await;
    assert_eq!((status, health), (StatusCode::OK, json!({"status": "ok"})));

    let (status, over_http) = acme.get("/__stats").await;
    assert_eq!(status, StatusCode::OK);
    let over_http: SimStats = serde_json::from_value(over_http).unwrap();
    assert_eq!(over_http, sim.stats());
    assert_eq!((over_http.requests, over_http.health), (6, 1));
    let by_route = |name: &str| over_http.by_route[name];
    assert_eq!(
        (
            by_route("invoice_list"),
            by_route("invoice_get"),
            by_route("payment_list")
        ),
        (2, 1, 1)
    );
    assert_eq!((by_route("invoice_create"), by_route("unknown")), (0, 2));

    let (status, _) = acme
        .send(reqwest::Method::POST, "/__stats/reset", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.stats().requests, 0);
    acme.get("/api/v1/invoices").await;
    assert_eq!(sim.stats().requests, 1);
    sim.reset_stats();
    assert_eq!(sim.stats().by_route["invoice_list"], 0);
}

#[tokio::test]
async fn request_id_and_traceparent_are_echoed() {
    let (sim, _) = start(options()).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = reqwest::Client::new()
        .post(format!("{}/__echo/some/path?a=1&b=two", sim.url()))
        .header("x-request-id", "req-123")
        .header("traceparent", traceparent)
        .header("X-Custom", "One")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-sim-request-id"], "req-123");
    assert_eq!(resp.headers()["x-sim-traceparent"], traceparent);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/__echo/some/path");
    assert_eq!(echo["query"], "a=1&b=two");
    assert_eq!(echo["headers"]["x-custom"], "One");
    assert_eq!(echo["headers"]["x-request-id"], "req-123");
    assert_eq!(echo["body"], "hello");
    assert_eq!((sim.stats().echo, sim.stats().requests), (1, 0));

    // API responses carry them too, errors included.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/invoices", sim.url()))
        .header("x-request-id", "req-456")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-sim-request-id"], "req-456");
    assert!(resp.headers().get("x-sim-traceparent").is_none());
}

#[tokio::test]
async fn a_failing_oms_can_be_simulated() {
    let (sim, _) = start(options()).await;
    let acme = Client::new(&sim, "acme");
    sim.set_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        acme.get("/api/v1/invoices").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(acme.get("/health").await.0, StatusCode::OK);
    sim.set_failure(None);
    assert_eq!(acme.get("/api/v1/invoices").await.0, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_listening() {
    let (sim, _) = start(SimOptions {
        latency: Duration::from_millis(200),
        ..options()
    })
    .await;
    let acme = Client::new(&sim, "acme");
    let url = sim.url();
    let in_flight = tokio::spawn(async move { acme.get("/api/v1/invoices?limit=1").await.0 });
    // Wait until the request holds a worker, then shut down underneath it.
    while sim.stats().in_flight == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.shutdown().await;
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    let refused = reqwest::Client::new()
        .get(format!("{url}/health"))
        .send()
        .await;
    assert!(refused.is_err(), "still serving after shutdown");
}

#[tokio::test]
async fn seeded_tenants_and_ids_are_unique() {
    // The seed data the sim serves is the dataset the options describe.
    let opts = options();
    let d = opts.dataset();
    let (sim, _) = start(opts).await;
    let mut all = HashSet::new();
    for tenant in &d.tenants {
        let client = Client::new(&sim, &tenant.id);
        let mut offset = 0;
        loop {
            let (_, page) = client
                .get(&format!("/api/v1/invoices?limit=100&offset={offset}"))
                .await;
            let page_ids = ids(&page);
            if page_ids.is_empty() {
                break;
            }
            offset += page_ids.len();
            all.extend(page_ids);
        }
    }
    assert_eq!(all.len(), d.invoices.len());
}

/// `/__blob/{n}` and `/__invoices/{n}`, the benches' bodies: exactly `n` bytes of JSON, and at
/// most `n` bytes of whole invoices in the legacy JSON, without a token.
#[tokio::test]
async fn bench_bodies_have_the_size_asked_for() {
    let (sim, _) = start(options()).await;
    let http = reqwest::Client::new();
    let blob = http
        .get(format!("{}/__blob/20000", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.unwrap().len(), 20_000);

    let page = http
        .get(format!("{}/__invoices/20000", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let bytes = page.bytes().await.unwrap();
    assert!(
        (15_000..=20_000).contains(&bytes.len()),
        "{} bytes",
        bytes.len()
    );
    let invoices: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON array");
    assert!(invoices.len() > 10);
    assert!(invoices.iter().all(|i| i["invoice_number"].is_string()));

    let bad = http
        .get(format!("{}/__invoices/lots", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
