//! The security review of issue 15, one test per finding, against real gateway processes, the
//! real Redis and PostgreSQL, the simulated legacy OMS (which, like the real one, falls back to
//! `x-tenant-id` when no bearer token arrives) and the scriptable test upstream (which records
//! the headers it received). Last, a seeded randomized cross-scope probe.
//!
//! Path and query canonicalisation (items 2, 3, 8) and the HTTP caching rules (item 10) have
//! their own files.

mod cache_util;
mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cache_util::*;
use common::*;
use omsgate::sim::{SimHandle, SimOptions, DEMO_JWT_SECRET};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The routes of the simulated OMS: invoices cached per tenant, payments per subject, writes
/// invalidating what they touch.
const SIM_ROUTES: &str = r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", resource = "invoice:{id}" }
[[route]]
name = "invoice_list"
path = "/api/v1/invoices"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", tags = ["invoices"] }
[[route]]
name = "payment_list"
path = "/api/v1/payments"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "subject" }
[[route]]
name = "invoice_write"
path = "/api/v1/invoices/{id}"
methods = ["PUT", "PATCH", "DELETE"]
invalidates = ["invoice:{id}", "invoices"]
"#;

async fn start_sim(tenants: usize, invoices: usize) -> (SimHandle, omsgate::sim::data::Dataset) {
    cache_util::start_sim(SimOptions {
        latency: Duration::ZERO,
        workers: 0,
        tenants,
        invoices_per_tenant: invoices,
        ..SimOptions::default()
    })
    .await
}

/// Every `tenant_id` anywhere in a JSON body.
fn tenants_in(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "tenant_id" {
                    if let Some(t) = v.as_str() {
                        out.insert(t.to_string());
                    }
                }
                tenants_in(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| tenants_in(v, out)),
        _ => {}
    }
}

/// A gateway config in front of `upstream` with `identity` and `rate_limit` sections and
/// `routes`.
fn plain_config(upstream: &TestUpstream, identity: &str, rest: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms" }}
retries = 0
[identity]
{identity}
{rest}
"#,
        upstream.addr
    )
}

// === 1. Hop-by-hop stripping of the verified credential ===

/// `Authorization: Bearer <acme>` + `Connection: authorization` + `x-tenant-id: globex`: the
/// gateway verified acme, Pingora would drop the token, and the OMS would answer for globex into
/// acme's cache scope. Refused with 400 instead; and an ordinary request never carries a
/// client's `x-tenant-id` to the OMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_header_cannot_strip_the_verified_token() {
    let (sim, d) = start_sim(3, 5).await;
    let gw = Gateway::start(&config(sim.addr, &shared_redis(), SIM_ROUTES));
    let http = client();
    let acme = token("acme", "alice");
    let url = gw.url(&format!("/api/v1/invoices/{}", first_invoice(&d, "globex")));
    for nominated in [
        "authorization",
        "Authorization, keep-alive",
        "x-tenant-id",
        "cookie",
    ] {
        let got = send(
            &http,
            reqwest::Method::GET,
            &url,
            Some(&acme),
            &[("connection", nominated), ("x-tenant-id", "globex")],
            None,
        )
        .await;
        assert_eq!(got.status, 400, "Connection: {nominated}: {got:?}");
        assert!(got.json()["error"].as_str().unwrap().contains("Connection"));
    }
    assert_eq!(
        gw.metric_value(
            "omsgate_requests_refused_total",
            &[("reason", "connection_nominates_credential")]
        ),
        Some(4.0)
    );
    // The same request without the trick: the OMS sees acme's token, not the spoofed header,
    // so globex's invoice is not found for acme (and nothing of globex lands in acme's scope).
    for _ in 0..2 {
        let got = send(
            &http,
            reqwest::Method::GET,
            &url,
            Some(&acme),
            &[("x-tenant-id", "globex")],
            None,
        )
        .await;
        assert_eq!(got.status, 404, "{got:?}");
    }
}

/// What omsgate verified is exactly what the OMS receives: the token itself, the verified
/// tenant, and none of the identity headers the OMS would trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oms_receives_only_the_verified_identity() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        &format!("mode = \"jwt\"\njwt_secret = \"{DEMO_JWT_SECRET}\""),
        "",
    ));
    let acme = token("acme", "alice");
    let resp = client()
        .get(gw.url("/echo/one"))
        .bearer_auth(&acme)
        .header("x-tenant-id", "globex")
        .header("x-user-id", "mallory")
        .header("x-omsgate-tenant", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up
        .last_seen("/echo/one")
        .expect("the request reached the upstream");
    assert_eq!(
        seen.headers.get("authorization"),
        Some(&format!("Bearer {acme}"))
    );
    assert_eq!(
        seen.headers.get("x-omsgate-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        seen.headers.get("x-omsgate-subject").map(String::as_str),
        Some("alice")
    );
    assert_eq!(seen.headers.get("x-tenant-id"), None, "{:?}", seen.headers);
    assert_eq!(seen.headers.get("x-user-id"), None, "{:?}", seen.headers);
}

// === 6. mode = "header" ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_headers_come_from_trusted_proxies_once_and_from_the_last_hop() {
    // Refused without trusted proxies, with the key named.
    let (code, err) =
        Gateway::check_config("[identity]\nmode = \"header\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("identity.mode"), "{err}");

    let up = TestUpstream::start();
    let http = client();
    let trusting = Gateway::start(&plain_config(
        &up,
        "mode = \"header\"",
        "[rate_limit]\ntrusted_proxies = [\"127.0.0.1\"]",
    ));
    let get = |gw: &Gateway, path: &str, headers: &[(&str, &str)]| {
        let mut req = http.get(gw.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let r = get(
        &trusting,
        "/echo/a",
        &[("x-tenant-id", "acme"), ("x-user-id", "alice")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last_seen("/echo/a").unwrap();
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(seen.headers["x-omsgate-tenant"], "acme");
    assert_eq!(seen.headers["x-user-id"], "alice");
    // Two copies: refused before reaching the OMS.
    let r = get(
        &trusting,
        "/echo/b",
        &[("x-tenant-id", "evil"), ("x-tenant-id", "acme")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(up.last_seen("/echo/b").is_none());
    // A chain: the hop next to omsgate wins, and the OMS sees only that value.
    let r = get(&trusting, "/echo/c", &[("x-tenant-id", "evil, acme")])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last_seen("/echo/c").unwrap();
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(seen.headers["x-omsgate-tenant"], "acme");

    // A peer that is not a trusted proxy: the headers are neither believed nor forwarded.
    let strict = Gateway::start(&plain_config(
        &up,
        "mode = \"header\"",
        "[rate_limit]\ntrusted_proxies = [\"10.0.0.0/8\"]",
    ));
    let r = get(&strict, "/echo/d", &[("x-tenant-id", "acme")])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last_seen("/echo/d").unwrap();
    assert_eq!(seen.headers.get("x-tenant-id"), None, "{:?}", seen.headers);
    assert_eq!(seen.headers.get("x-omsgate-tenant"), None);
}

// === 5. Client IP ===

/// With the edge proxy trusted, a client-sent `Forwarded` neither escapes `per_ip` (a new
/// `for=` per request) nor lands in `exempt_cidrs` (`for=10.0.0.1`): only X-Forwarded-For
/// counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sent_forwarded_header_does_not_pick_the_client_ip() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        "mode = \"none\"",
        r#"[rate_limit]
default = "per_ip"
trusted_proxies = ["127.0.0.1"]
exempt_cidrs = ["10.0.0.0/8"]
[rate_limit.policies.per_ip]
key = "ip"
quota = "2/hour""#,
    ));
    let http = client();
    let mut statuses = Vec::new();
    for (i, forwarded) in ["for=10.0.0.1", "for=203.0.113.1", "for=203.0.113.2"]
        .iter()
        .enumerate()
    {
        let r = http
            .get(gw.url(&format!("/echo/{i}")))
            .header("forwarded", *forwarded)
            .header("x-forwarded-for", "198.51.100.7")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

// === 7. Public scope and credentials ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_store_credentialed_answers_only_with_the_origins_consent() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        "mode = \"none\"",
        r#"[cache]
enabled = true
[[route]]
name = "public"
path = "/headers"
cache = { ttl = "60s", scope = "public" }"#,
    ));
    let http = client();
    let with_auth = |q: &str| {
        let url = gw.url(&format!("/headers{q}"));
        let http = http.clone();
        async move {
            send(
                &http,
                reqwest::Method::GET,
                &url,
                Some("opaque-credential"),
                &[],
                None,
            )
            .await
        }
    };
    // The origin says nothing: a credentialed answer is not stored.
    assert_eq!(with_auth("?x=1").await.x_cache, "MISS");
    assert_eq!(with_auth("?x=1").await.x_cache, "MISS");
    // `public` (or s-maxage, must-revalidate) allows it.
    let q = "?Cache-Control=public%2C%20max-age%3D60";
    assert_eq!(with_auth(q).await.x_cache, "MISS");
    assert_eq!(with_auth(q).await.x_cache, "HIT");
    // Without credentials the route's policy alone decides.
    assert_eq!(
        get(&http, &gw.url("/headers?y=1"), None).await.x_cache,
        "MISS"
    );
    assert_eq!(
        get(&http, &gw.url("/headers?y=1"), None).await.x_cache,
        "HIT"
    );
}

// === 4. Audit event ids ===

/// `x-request-id: cover` on a harmless GET and then on DELETEs: each record still has its own
/// event id (UUIDv7), the key `audit-sink` deduplicates on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_request_ids_do_not_hide_audit_records() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        "mode = \"none\"",
        "[audit]\nspool_dir = \"{dir}/spool\"",
    ));
    let http = client();
    let spool = gw.dir().join("spool");
    for method in ["GET", "DELETE", "DELETE", "DELETE"] {
        let r = http
            .request(method.parse().unwrap(), gw.url("/api/v1/invoices/1"))
            .header("x-request-id", "cover")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{method}: {}", r.status());
    }
    assert!(
        eventually(Duration::from_secs(10), || spooled(&spool).len() >= 4).await,
        "4 records spooled"
    );
    let records = spooled(&spool);
    let events: HashSet<&str> = records
        .iter()
        .map(|r| {
            r["event_id"]
                .as_str()
                .expect("every record has an event_id")
        })
        .collect();
    assert_eq!(events.len(), 4, "{records:?}");
    for r in &records {
        assert_eq!(r["request_id"], "cover");
        let id = uuid::Uuid::parse_str(r["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    // Into the OMS's table, `audit-sink` keys them by event id: tests/audit_sink.rs
    // `the_legacy_oms_and_the_sink_share_audit_events_after_migrate` (a request id reused).
}

// === 9. The smaller ones ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_audit_disabled_records_nothing() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        "mode = \"none\"",
        r#"[audit]
spool_dir = "{dir}/spool"
[[route]]
name = "probe"
path = "/probe"
audit = { enabled = false }"#,
    ));
    let http = client();
    for path in ["/probe", "/probe", "/counted"] {
        assert_eq!(http.get(gw.url(path)).send().await.unwrap().status(), 200);
    }
    let queued = || {
        gw.metric_value("omsgate_audit_records_total", &[("outcome", "queued")])
            .unwrap_or(0.0)
    };
    assert!(eventually(Duration::from_secs(5), || queued() >= 1.0).await);
    // Give a wrongly recorded probe the time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queued(), 1.0);
}

/// Two addresses of one IPv6 /64 share the `per_ip` bucket; API-key values above the length
/// bound are keyed by the client IP (so varying them does not mint fresh buckets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_their_64_and_long_header_keys_do_not_mint_buckets() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&plain_config(
        &up,
        "mode = \"none\"",
        r#"[rate_limit]
trusted_proxies = ["127.0.0.1"]
header_key_max_bytes = 64
[rate_limit.policies.per_ip]
key = "ip"
quota = "2/hour"
[rate_limit.policies.per_key]
key = "header:x-api-key"
quota = "1/hour"
[[route]]
name = "by_ip"
path = "/ip/{n}"
rate_limit = ["per_ip"]
[[route]]
name = "by_key"
path = "/key/{n}"
rate_limit = ["per_key"]"#,
    ));
    let http = client();
    let mut statuses = Vec::new();
    for (i, xff) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:aaaa::3"]
        .iter()
        .enumerate()
    {
        let r = http
            .get(gw.url(&format!("/ip/{i}")))
            .header("x-forwarded-for", *xff)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Another /64 has its own bucket.
    let r = http
        .get(gw.url("/ip/9"))
        .header("x-forwarded-for", "2001:db8:1:3::1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut statuses = Vec::new();
    for i in 0..3 {
        let key = format!("{i}{}", "k".repeat(100));
        let r = http
            .get(gw.url(&format!("/key/{i}")))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 429, 429]);
    assert_eq!(
        gw.metric_value(
            "omsgate_rate_limit_header_keys_total",
            &[("result", "too_long")]
        ),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_cross_site_and_rebound_requests_and_wants_its_token() {
    let up = TestUpstream::start();
    let cfg = plain_config(&up, "mode = \"none\"", "");
    let cfg = cfg.replacen(
        "listen = \"{admin}\"",
        "listen = \"{admin}\"\ntoken_env = \"OMSGATE_TEST_ADMIN_TOKEN\"",
        1,
    );
    let gw = Gateway::start_with_env(&cfg, &[("OMSGATE_TEST_ADMIN_TOKEN", "adm1n")]);
    let http = client();
    let purge = json!({ "all": true }).to_string();
    let post = |path: &str, headers: &[(&str, &str)]| {
        let mut req = http.post(gw.admin_url(path)).body(purge.clone());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let code = |r: reqwest::Response| r.status().as_u16();
    let bearer = ("authorization", "Bearer adm1n");
    assert_eq!(
        code(
            post("/purge", &[bearer, ("origin", "https://evil.example")])
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        code(
            post("/purge", &[bearer, ("host", "rebound.evil.example")])
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(code(post("/purge", &[]).await.unwrap()), 401);
    assert_eq!(
        code(
            post("/purge", &[("authorization", "Bearer nope")])
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(code(post("/purge", &[bearer]).await.unwrap()), 200);
    // Reading stays open to scrapers on the listen address.
    let r = http.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The variable must be set when token_env is.
    let (code, err) = Gateway::check_config(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"OMSGATE_TEST_SURELY_UNSET\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("admin.token_env"), "{err}");
}

// === The randomized cross-scope probe ===

/// A token of the kind the probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    Expired,
    Forged,
    AlgNone,
    NoTenantClaim,
    Missing,
}

fn alg_none_token(tenant: &str) -> String {
    use base64_like::encode;
    let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = encode(
        json!({ "tenant_id": tenant, "sub": "mallory", "exp": 4_000_000_000u64 })
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}

fn no_tenant_token(subject: &str) -> String {
    omsgate::identity::issue_hs256(
        DEMO_JWT_SECRET,
        "not_the_tenant_claim",
        "acme",
        subject,
        Duration::from_secs(3600),
    )
}

/// URL-safe base64 without padding (JWT segments), without another dependency.
mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

/// Many tenants and subjects; valid, expired, forged, `alg=none` and wrong-claim tokens;
/// hop-by-hop tricks and spoofed identity headers; reads and writes interleaved, through the
/// gateway with the Redis cache on, in front of the simulated OMS. No response may carry
/// another tenant's data, a request without a verified identity never gets data, a hit is only
/// served to a scope that stored it, and after a write no read of its tenant sees the old
/// value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_cross_scope_probe() {
    const REQUESTS: usize = 2000;
    let seed: u64 = std::env::var("OMSGATE_PROBE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1515);
    println!("probe seed {seed} (OMSGATE_PROBE_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (sim, d) = start_sim(5, 6).await;
    let gw = Gateway::start(&config(sim.addr, &shared_redis(), SIM_ROUTES));
    let http = client();
    let tenants: Vec<String> = d.tenants.iter().map(|t| t.id.clone()).collect();
    let subjects = ["alice", "bob", "carol"];
    // The customer each invoice has now (the model the answers are checked against).
    let mut customer: HashMap<String, String> = d
        .invoices
        .iter()
        .map(|i| (i.id.to_string(), i.customer.clone()))
        .collect();
    let invoices: Vec<(String, String)> = d
        .invoices
        .iter()
        .map(|i| (i.tenant_id.clone(), i.id.to_string()))
        .collect();
    // Scopes that stored something under a URL: (scope, path).
    let mut stored: HashSet<(String, String)> = HashSet::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();

    for n in 0..REQUESTS {
        let tenant = tenants.choose(&mut rng).unwrap().clone();
        let subject = *subjects.choose(&mut rng).unwrap();
        let kind = *[
            Kind::Valid,
            Kind::Valid,
            Kind::Valid,
            Kind::Valid,
            Kind::Expired,
            Kind::Forged,
            Kind::AlgNone,
            Kind::NoTenantClaim,
            Kind::Missing,
        ]
        .choose(&mut rng)
        .unwrap();
        let bearer = match kind {
            Kind::Valid => Some(token(&tenant, subject)),
            Kind::Expired => Some(expired_token(&tenant)),
            Kind::Forged => Some(forged_token(&tenant)),
            Kind::AlgNone => Some(alg_none_token(&tenant)),
            Kind::NoTenantClaim => Some(no_tenant_token(subject)),
            Kind::Missing => None,
        };
        let other = tenants.choose(&mut rng).unwrap().clone();
        let mut headers: Vec<(&str, String)> = Vec::new();
        let trick = rng.random_range(0..10);
        match trick {
            0 => headers.push(("connection", "authorization".into())),
            1 => headers.push(("connection", "x-tenant-id, keep-alive".into())),
            2 | 3 => headers.push(("x-tenant-id", other.clone())),
            4 => headers.push(("x-omsgate-tenant", other.clone())),
            5 => headers.push(("x-user-id", "root".into())),
            _ => {}
        }
        let (target_tenant, invoice) = invoices.choose(&mut rng).unwrap().clone();
        let op = rng.random_range(0..10);
        let (method, path, body) = match op {
            0..=3 => (
                reqwest::Method::GET,
                format!("/api/v1/invoices/{invoice}"),
                None,
            ),
            4..=5 => (
                reqwest::Method::GET,
                "/api/v1/invoices?limit=50".to_string(),
                None,
            ),
            6 => (
                reqwest::Method::GET,
                "/api/v1/payments?limit=5".to_string(),
                None,
            ),
            _ => {
                let name = format!("Customer {n}");
                (
                    reqwest::Method::PATCH,
                    format!("/api/v1/invoices/{invoice}"),
                    Some(json!({ "customer": name })),
                )
            }
        };
        let header_refs: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = send(
            &http,
            method.clone(),
            &gw.url(&path),
            bearer.as_deref(),
            &header_refs,
            body.clone(),
        )
        .await;
        let what =
            || format!("#{n} {kind:?} {tenant}/{subject} trick {trick} {method} {path}: {got:?}");
        *counts
            .entry(if got.x_cache == "HIT" { "hit" } else { "other" })
            .or_default() += 1;

        // Hop-by-hop tricks on credentials are refused before anything else.
        if trick <= 1 {
            assert_eq!(got.status, 400, "{}", what());
            continue;
        }
        let verified = kind == Kind::Valid;
        if !verified {
            // No verified identity: never data, never a cached answer.
            assert!(got.status == 401 || got.status == 404, "{}", what());
            assert_ne!(got.x_cache, "HIT", "{}", what());
            continue;
        }
        // Never another tenant's data.
        if got.status == 200 {
            let mut seen = HashSet::new();
            tenants_in(&got.json(), &mut seen);
            seen.remove(&tenant);
            assert!(seen.is_empty(), "foreign tenants {seen:?} in {}", what());
        }
        // A hit only for the scope that stored the entry.
        let scope = if path.starts_with("/api/v1/payments") {
            format!("{tenant}/{subject}")
        } else {
            tenant.clone()
        };
        let key = (scope, path.clone());
        if got.x_cache == "HIT" {
            assert!(
                stored.contains(&key),
                "a hit never stored for this scope: {}",
                what()
            );
        }
        if got.x_cache == "MISS" {
            stored.insert(key);
        }
        if method == reqwest::Method::PATCH {
            if target_tenant == tenant {
                assert_eq!(got.status, 200, "{}", what());
                let name = body.as_ref().unwrap()["customer"].as_str().unwrap();
                customer.insert(invoice.clone(), name.to_string());
            } else {
                assert_eq!(got.status, 404, "{}", what());
            }
            continue;
        }
        match op {
            0..=3 => {
                if target_tenant == tenant {
                    assert_eq!(got.status, 200, "{}", what());
                    assert_eq!(
                        got.json()["customer"].as_str(),
                        Some(customer[&invoice].as_str()),
                        "stale answer after a write: {}",
                        what()
                    );
                } else {
                    assert_eq!(got.status, 404, "{}", what());
                }
            }
            4..=5 => {
                assert_eq!(got.status, 200, "{}", what());
                for item in got.json()["items"].as_array().unwrap() {
                    let id = item["id"].as_str().unwrap();
                    assert_eq!(
                        item["customer"].as_str(),
                        Some(customer[id].as_str()),
                        "stale listing after a write: {}",
                        what()
                    );
                }
            }
            _ => assert_eq!(got.status, 200, "{}", what()),
        }
    }
    println!("probe: {counts:?}");
    assert!(
        counts.get("hit").copied().unwrap_or(0) > 100,
        "the probe exercised the cache: {counts:?}"
    );
}
