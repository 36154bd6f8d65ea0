//! omsgate in front of the reference legacy OMS (`examples/legacy-oms`: FastAPI on one uvicorn
//! worker, one locked PostgreSQL connection, N+1 queries, a synchronous audit insert), with the
//! shipped `config.toml` as it is: only addresses, ports, the identity source (HS256 JWTs, as the
//! OMS uses) and, where a test needs it, a route's cache TTL or the per-IP rate limit for the
//! test client are changed; the `[upstream]` section is never touched, so these tests prove the
//! defaults work untuned (issue 14).
//!
//! Two kinds of requests: with a bearer token (a verified tenant, so tenant-scoped routes are
//! cached) and with the legacy `x-tenant-id` header only (no verified tenant: the cache is
//! bypassed and every request reaches the OMS, which falls back to the header). The shipped
//! config removes that header from every request (`[identity] oms_identity_headers`, so no
//! client can choose whom the OMS answers for); these tests model an operator whose existing
//! clients still rely on the OMS's fallback and set `oms_identity_headers = []`, the documented
//! opt-out. That is an identity setting, not an upstream one.
//!
//! Assertions are on outcomes (statuses, `x-cache`, counters), never on latency.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::legacy::{LegacyOms, LegacyOptions};
use common::load::{run_users, summarize, UserOutcome, UserRequest};
use common::{client, metric_in, Gateway};
use omsgate::sim::DEMO_JWT_SECRET;
use reqwest::Method;

// === Setup ===

/// The shipped `config.toml` with the listeners on free ports, `servers` as the upstreams,
/// JWT identity with the demo secret, the OMS's legacy identity header passed through for
/// header-only clients, and the test client's address exempt from the per-IP
/// limit (hundreds of simulated users share 127.0.0.1). `edit` may change more (never
/// `[upstream]`).
fn shipped_config(servers: &[SocketAddr], edit: impl FnOnce(&mut toml::Table)) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut config: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the shipped config.toml is not TOML: {e}"));
    let section = |config: &mut toml::Table, name: &str| -> toml::Table {
        config
            .get(name)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default()
    };
    let mut set = |name: &str, key: &str, value: toml::Value| {
        let mut table = section(&mut config, name);
        table.insert(key.into(), value);
        config.insert(name.into(), toml::Value::Table(table));
    };
    set("server", "listen", "{listen}".into());
    set("admin", "listen", "{admin}".into());
    set(
        "upstream",
        "servers",
        toml::Value::Array(servers.iter().map(|s| s.to_string().into()).collect()),
    );
    set("identity", "mode", "jwt".into());
    set("identity", "jwt_secret_env", "OMSGATE_JWT_SECRET".into());
    set(
        "identity",
        "oms_identity_headers",
        toml::Value::Array(Vec::new()),
    );
    set(
        "rate_limit",
        "exempt_cidrs",
        toml::Value::Array(vec!["127.0.0.1/32".into()]),
    );
    edit(&mut config);
    toml::to_string(&config).unwrap_or_else(|e| panic!("cannot write the test config: {e}"))
}

/// Sets `cache.ttl` of the route named `route`.
fn route_ttl(config: &mut toml::Table, route: &str, ttl: &str) {
    let routes = config
        .get_mut("route")
        .and_then(|r| r.as_array_mut())
        .unwrap_or_else(|| panic!("the shipped config.toml has no [[route]]"));
    let entry = routes
        .iter_mut()
        .filter_map(|r| r.as_table_mut())
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(route))
        .unwrap_or_else(|| panic!("the shipped config.toml has no route {route}"));
    let cache = entry
        .get_mut("cache")
        .and_then(|c| c.as_table_mut())
        .unwrap_or_else(|| panic!("route {route} has no cache policy"));
    cache.insert("ttl".into(), ttl.into());
}

fn start_gateway(config: &str) -> Gateway {
    Gateway::start_with_env(config, &[("OMSGATE_JWT_SECRET", DEMO_JWT_SECRET)])
}

/// Request headers as name/value pairs.
type Headers = Vec<(String, String)>;

/// A bearer token for `tenant`, as the OMS's identity provider issues them.
fn token(tenant: &str) -> String {
    omsgate::identity::issue_hs256(
        DEMO_JWT_SECRET,
        "tenant_id",
        tenant,
        "user-1",
        Duration::from_secs(3600),
    )
}

fn bearer(tenant: &str) -> Headers {
    vec![("authorization".into(), format!("Bearer {}", token(tenant)))]
}

/// The legacy header only: no verified tenant, so the gateway's cache is bypassed.
fn legacy_header(tenant: &str) -> Headers {
    vec![("x-tenant-id".into(), tenant.into())]
}

fn get(path: String, headers: Headers) -> UserRequest {
    UserRequest {
        method: Method::GET,
        path,
        headers,
        body: None,
    }
}

/// `(tenant, invoice id)` of every seeded invoice.
fn invoices(oms: &LegacyOms) -> Vec<(String, String)> {
    oms.dataset()
        .invoices
        .iter()
        .map(|i| (i.tenant_id.clone(), i.id.to_string()))
        .collect()
}

/// A runtime for a test's own requests (one per test, so its client's pooled connections
/// outlive each `block_on`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a runtime: {e}"))
}

/// One request through `client`: status, `x-cache`, content type, body.
async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
) -> Result<(u16, Option<String>, String, String), String> {
    let mut builder = client.get(url);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let resp = builder.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (cache, content_type) = (
        header("x-cache"),
        header("content-type").unwrap_or_default(),
    );
    let body = resp.text().await.map_err(|e| error_chain(&e))?;
    Ok((status, cache, content_type, body))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Shed answers counted by the gateway (`omsgate_upstream_shed_total`, all routes; 0 if the
/// metric does not exist).
fn shed_count(gateway: &Gateway) -> f64 {
    gateway
        .metric_value("omsgate_upstream_shed_total", &[])
        .unwrap_or(0.0)
}

// === Keep-alive race ===

/// uvicorn closes a connection that has been idle for its keep-alive timeout (1 s here). Clients
/// pacing their requests at about that interval make the gateway reuse pooled connections just as
/// the OMS closes them: each round, 4 clients send one uncached read each at once (so the
/// gateway uses 4 pooled connections, which went idle a few milliseconds apart as the one worker
/// answered them in turn), then wait 0.96 to 1 s, so that some of those connections reach their
/// 1 s of idleness just as the next round reuses them. Over ~30 s every request must succeed.
#[test]
fn keep_alive_race_with_uvicorn_loses_no_request() {
    let oms = LegacyOms::start(LegacyOptions {
        keep_alive: 1.0,
        ..LegacyOptions::default()
    });
    let gateway = start_gateway(&shipped_config(&[oms.addr()], |_| {}));
    let ids = invoices(&oms);
    let http = client();
    let mut outcomes = Vec::new();
    // As many as the shipped per-server in-flight limit (`[upstream.overload] max_in_flight`),
    // so that no request waits in the gateway's queue: this test is about the race alone.
    const CLIENTS: usize = 4;
    runtime().block_on(async {
        for round in 0..30usize {
            let requests = (0..CLIENTS).map(|c| {
                let (tenant, id) = &ids[(round * CLIENTS + c) % ids.len()];
                let url = gateway.url(&format!("/api/v1/invoices/{id}"));
                let (http, headers) = (http.clone(), legacy_header(tenant));
                async move { send(&http, &url, &headers).await }
            });
            outcomes.extend(futures::future::join_all(requests).await);
            let pause = 960 + (round * 7) % 41;
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
        }
    });
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok((200, Some(cache), _, _)) if cache == "BYPASS" => None,
            Ok((status, cache, _, body)) => Some(format!("{status} {cache:?} {body}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    eprintln!(
        "keep-alive race: {} requests, {} failed; gateway retries: {:?}",
        outcomes.len(),
        failed.len(),
        gateway.metric_value("omsgate_upstream_retries_total", &[])
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed on the keep-alive race; first: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
}

// === Health ===

/// An OMS whose `/health` takes 2.5 s (as the seed's does under load, queued behind requests for
/// the one connection) is slow, not dead: the only server stays in use and every request is
/// answered by the OMS.
#[test]
fn slow_health_does_not_eject_the_only_server() {
    let oms = LegacyOms::start(LegacyOptions {
        health_delay: 2.5,
        ..LegacyOptions::default()
    });
    let gateway = start_gateway(&shipped_config(&[oms.addr()], |_| {}));
    let ids = Arc::new(invoices(&oms));
    // 12 s: at least two health-check intervals of the shipped config (5 s).
    let outcomes = run_users(
        &gateway.url(""),
        4,
        Duration::from_millis(250),
        Duration::from_secs(12),
        move |user, n| {
            let (tenant, id) = &ids[(user * 17 + n as usize) % ids.len()];
            get(format!("/api/v1/invoices/{id}"), legacy_header(tenant))
        },
    );
    eprintln!("slow health: {}", summarize(&outcomes));
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    assert!(
        outcomes.len() >= 40,
        "too few requests: {}",
        summarize(&outcomes)
    );
    assert_eq!(
        failed,
        0,
        "a slow /health ejected the only server: {}",
        summarize(&outcomes)
    );
    assert_eq!(
        gateway.metric_value(
            "omsgate_upstream_healthy",
            &[("server", &oms.addr().to_string())]
        ),
        Some(1.0),
        "the only server is marked down"
    );
}

/// A killed OMS: cached reads are served stale (within the routes' `stale_if_error`), everything
/// else gets a JSON 502; once the OMS is back, requests reach it again within one health-check
/// interval (plus the time a check takes).
#[test]
fn dead_oms_serves_stale_then_recovers() {
    let oms = LegacyOms::start(LegacyOptions::default());
    // The invoice route's TTL shortened to 1 s (from 60 s) so its entries are past their TTL
    // within the test; its stale windows stay as shipped.
    let gateway = start_gateway(&shipped_config(&[oms.addr()], |c| {
        route_ttl(c, "invoice", "1s")
    }));
    let ids = invoices(&oms);
    let (tenant, cached_id) = ids[0].clone();
    let (_, other_id) = ids[1].clone();
    let http = client();
    let cached_url = gateway.url(&format!("/api/v1/invoices/{cached_id}"));
    let other_url = gateway.url(&format!("/api/v1/invoices/{other_id}"));
    let auth = bearer(&tenant);
    let rt = runtime();

    rt.block_on(async {
        let (status, cache, _, fresh) = send(&http, &cached_url, &auth).await.unwrap();
        assert_eq!((status, cache.as_deref()), (200, Some("MISS")));
        let (status, cache, _, _) = send(&http, &cached_url, &auth).await.unwrap();
        assert_eq!((status, cache.as_deref()), (200, Some("HIT")));

        oms.kill();
        // Past the 1 s TTL, with the OMS dead.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for _ in 0..5 {
            let (status, cache, _, body) = send(&http, &cached_url, &auth).await.unwrap();
            assert_eq!(
                (status, cache.as_deref()),
                (200, Some("STALE")),
                "cached read with the OMS dead: {body}"
            );
            assert_eq!(body, fresh, "the stale copy is the stored answer");
        }
        // Never cached (another invoice), and uncached (legacy header): JSON 502s.
        for (url, headers) in [
            (&other_url, auth.clone()),
            (&cached_url, legacy_header(&tenant)),
        ] {
            let (status, _, content_type, body) = send(&http, url, &headers)
                .await
                .unwrap_or_else(|e| panic!("{url} with the OMS dead: no answer: {e}"));
            assert_eq!(status, 502, "{url} with the OMS dead: {body}");
            assert!(
                content_type.starts_with("application/json")
                    && serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "the 502 has a JSON body: {content_type} {body}"
            );
        }
    });

    oms.restart();
    // One health interval of the shipped config (5 s) plus a generous margin for the check
    // itself and a loaded machine: the bound only keeps a broken gateway from hanging the test.
    let deadline = Instant::now() + Duration::from_secs(5 + 10);
    let recovered = rt.block_on(async {
        loop {
            if let Ok((200, _, _, _)) = send(&http, &other_url, &legacy_header(&tenant)).await {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(recovered, "no request reached the restarted OMS");
}

/// Both OMS instances fail their health check, but their API works: with no healthy server left
/// the gateway uses them all anyway (panic mode) instead of answering 502.
#[test]
fn panic_mode_uses_servers_that_all_fail_health() {
    let first = LegacyOms::start(LegacyOptions::default());
    let second = first.start_sibling(LegacyOptions::default());
    first.fail_health(true);
    second.fail_health(true);
    let gateway = start_gateway(&shipped_config(&[first.addr(), second.addr()], |_| {}));
    let servers = [first.addr().to_string(), second.addr().to_string()];
    let both_down = common::wait_for(Duration::from_secs(45), || {
        let text = gateway.metrics_text();
        servers
            .iter()
            .all(|s| metric_in(&text, "omsgate_upstream_healthy", &[("server", s)]) == Some(0.0))
    });
    assert!(
        both_down,
        "the health check never marked the failing servers down"
    );

    let ids = invoices(&first);
    let http = client();
    let before = first.audit_rows();
    runtime().block_on(async {
        for (tenant, id) in ids.iter().take(10) {
            let url = gateway.url(&format!("/api/v1/invoices/{id}"));
            let (status, cache, _, body) = send(&http, &url, &legacy_header(tenant)).await.unwrap();
            assert_eq!(
                status, 200,
                "with every server failing health, requests must still reach them: {body}"
            );
            assert_eq!(cache.as_deref(), Some("BYPASS"));
        }
    });
    // Both instances write to the same audit_events table: ten more rows, from the OMS.
    assert!(first.audit_rows() >= before + 10);
}

// === Overload ===

/// `users` users with a 1 s think time against one OMS worker that manages about 20 requests/s
/// (a 50 ms audit insert holds its one connection on every request): 90 % cached invoice reads
/// (Zipf-like over the tenant's invoices), 5 % uncached reads (legacy header), 5 % writes.
fn overload(users: usize) {
    let oms = LegacyOms::start(LegacyOptions {
        audit_delay: 0.05,
        ..LegacyOptions::default()
    });
    let gateway = start_gateway(&shipped_config(&[oms.addr()], |_| {}));
    let ids = Arc::new(invoices(&oms));
    let tokens: Arc<Vec<(String, Headers)>> = Arc::new(
        oms.dataset()
            .tenants
            .iter()
            .map(|t| (t.id.clone(), bearer(&t.id)))
            .collect(),
    );
    let outcomes = run_users(
        &gateway.url(""),
        users,
        Duration::from_secs(1),
        Duration::from_secs(15),
        move |user, n| {
            let roll = rand::random::<f64>();
            // Zipf-like: small ranks far more often.
            let rank = ((ids.len() as f64).powf(rand::random::<f64>()) as usize - 1) % ids.len();
            let (tenant, id) = &ids[rank];
            let auth = tokens
                .iter()
                .find(|(t, _)| t == tenant)
                .map(|(_, h)| h.clone())
                .unwrap_or_default();
            if roll < 0.90 {
                get(format!("/api/v1/invoices/{id}"), auth)
            } else if roll < 0.95 {
                get(format!("/api/v1/invoices/{id}"), legacy_header(tenant))
            } else {
                UserRequest {
                    method: Method::PATCH,
                    path: format!("/api/v1/invoices/{id}"),
                    headers: auth,
                    body: Some(format!("{{\"customer\":\"User {user} request {n}\"}}")),
                }
            }
        },
    );
    let summary = summarize(&outcomes);
    eprintln!("overload with {users} users: {summary}");
    let errors: Vec<&UserOutcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    assert!(
        errors.is_empty(),
        "{} connection errors or timeouts with {users} users: {summary}",
        errors.len()
    );
    let bad: Vec<&UserOutcome> = outcomes
        .iter()
        .filter(|o| !o.ok() && o.status != Some(503))
        .collect();
    assert!(
        bad.is_empty(),
        "{} answers were neither 2xx nor a 503 shed with {users} users: {summary}",
        bad.len()
    );
    let shed = outcomes.iter().filter(|o| o.status == Some(503)).count();
    assert!(
        outcomes
            .iter()
            .filter(|o| o.status == Some(503))
            .all(|o| o.retry_after && o.json),
        "503 sheds need Retry-After and a JSON body: {summary}"
    );
    let counted = shed_count(&gateway);
    assert!(
        counted >= shed as f64,
        "{shed} sheds answered, {counted} counted in omsgate_upstream_shed_total"
    );
    // Reads served from the cache were answered, and correctly, while the OMS was saturated.
    let cached: Vec<&UserOutcome> = outcomes.iter().filter(|o| o.served_from_cache()).collect();
    assert!(
        !cached.is_empty(),
        "no read was served from the cache: {summary}"
    );
    assert!(cached.iter().all(|o| o.ok() && o.json), "{summary}");
    assert!(
        outcomes.len() >= users,
        "fewer answers than users: {summary}"
    );
}

#[test]
fn overload_200_users_only_2xx_stale_or_counted_503() {
    overload(200);
}

#[test]
fn overload_500_users_only_2xx_stale_or_counted_503() {
    overload(500);
}
