//! Several gateway instances over a Redis Cluster (three primaries, three replicas) and over a
//! Sentinel-watched primary, each started privately by the test (`common::cluster`): a response
//! cached through one instance is a Redis hit on the other; a write through one drops the
//! other's L1 through pub/sub; the distributed rate limit is exact across both; a primary killed
//! under load costs no client error, the fallbacks are counted and hits resume after the
//! promotion; and no command ever spans slots (`CROSSSLOT`, counted and logged). Both
//! deployments also run TLS only (`rediss://`, verified against `[tls] ca_file`), where the
//! same sharing holds without a TLS error, and a gateway without the CA fails open.

mod cache_util;
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_util::*;
use common::*;
use omsgate::sim::{SimHandle, SimOptions};
use serde_json::json;

const ROUTES: &str = r#"
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
rate_limit = ["per_route"]
[[route]]
name = "invoice_write"
path = "/api/v1/invoices/{id}"
methods = ["PUT", "PATCH", "DELETE"]
invalidates = ["invoice:{id}", "invoices"]
"#;

async fn start_sim() -> (SimHandle, omsgate::sim::data::Dataset) {
    cache_util::start_sim(SimOptions {
        latency: Duration::ZERO,
        workers: 0,
        tenants: 3,
        invoices_per_tenant: 20,
        ..SimOptions::default()
    })
    .await
}

/// A gateway config whose cache (and, with `limit`, rate limiter) use `redis` (a
/// `redis = {...}` line); `cache_extra` goes into `[cache]`.
fn gateway_config(sim: &SimHandle, redis: &str, cache_extra: &str, limit: Option<&str>) -> String {
    let mut text = config(
        sim.addr,
        &format!("{redis}\nredis_timeout = \"250ms\"\n{cache_extra}"),
        ROUTES,
    );
    match limit {
        Some(policies) => {
            let prefix = unique("rl");
            text.push_str(&format!(
                "\n[rate_limit]\nmode = \"distributed\"\n{redis}\nredis_timeout = \"500ms\"\n\
                 key_prefix = \"{prefix}:\"\n{policies}\n"
            ));
        }
        // The route's policy, limited locally.
        None => text.push_str(
            "\n[rate_limit.policies.per_route]\nkey = \"route\"\nquota = \"100000/minute\"\n",
        ),
    }
    text
}

/// No command spanned slots: the counter is there and 0, and the log never says CROSSSLOT.
fn assert_no_crossslot(gw: &Gateway) {
    for concern in ["cache", "rate_limit"] {
        assert_eq!(
            gw.metric_value(
                "omsgate_redis_crossslot_errors_total",
                &[("concern", concern)]
            ),
            Some(0.0),
            "{concern}"
        );
    }
    assert!(!gw.log().contains("CROSSSLOT"), "{}", tail(&gw.log(), 40));
}

/// Waits until the gateway's cache reports its Redis connection up (`/ready`); connecting to a
/// cluster (every node, then the slot map) happens in the background after the start.
async fn cache_redis_up(gw: &Gateway) {
    let up = eventually(Duration::from_secs(20), || {
        http_get(gw.admin_addr(), "/ready", Duration::from_secs(2))
            .is_some_and(|(_, body)| body.contains(r#""cache_redis":{"state":"up"}"#))
    })
    .await;
    assert!(
        up,
        "the cache's Redis never came up:\n{}",
        tail(&gw.log(), 30)
    );
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric_value(name, labels).unwrap_or(0.0)
}

// === Cluster: sharing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_entries_are_shared_and_writes_reach_every_instances_l1() {
    let cluster = PrivateRedisCluster::start();
    let (sim, d) = start_sim().await;
    // Generations are trusted for a minute: only the pub/sub message can make instance 1
    // notice the write of instance 2.
    let slot = cluster.slot_of("acme");
    let owner = cluster.primary_of_slot(slot).expect("owner of acme's slot");
    // Instance 1 subscribes through its first seed node: one that does not own the tenant's
    // slot, so the message has to cross the cluster bus.
    let mut seeds = cluster.urls();
    seeds.sort_by_key(|u| u.ends_with(&format!(":{owner}")));
    let seeded = |nodes: &[String]| {
        let nodes: Vec<String> = nodes.iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "redis = {{ mode = \"cluster\", nodes = [{}] }}",
            nodes.join(", ")
        )
    };
    // One config (one key prefix), the seed list in two orders.
    let text = gateway_config(
        &sim,
        &seeded(&seeds),
        "generation_cache_ttl = \"60s\"",
        None,
    );
    let gw1 = Gateway::start(&text);
    let gw2 = Gateway::start(&text.replace(&seeded(&seeds), &cluster.redis_table()));
    shared_and_invalidated(&sim, &d, &gw1, &gw2).await;
    // Every key the gateway wrote carries a hash tag right after its prefix.
    let mut keys = std::collections::BTreeSet::new();
    for p in cluster.ports() {
        // A node without keys prints an empty line.
        keys.extend(
            cluster
                .cli(p, &["keys", "*"])
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    let kinds: std::collections::BTreeSet<&str> =
        keys.iter().filter_map(|k| k.split(':').nth(1)).collect();
    for kind in ["obj", "gen", "uri", "genseq", "epoch"] {
        assert!(kinds.contains(kind), "no {kind} key among {keys:?}");
    }
    for k in &keys {
        let tag = k.split_once('{').and_then(|(_, rest)| rest.split_once('}'));
        assert!(
            tag.is_some_and(|(t, _)| !t.is_empty()),
            "{k} has no hash tag"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_entries_are_shared_and_writes_reach_every_instances_l1() {
    let sentinel = PrivateSentinel::start();
    let (sim, d) = start_sim().await;
    let text = gateway_config(
        &sim,
        &sentinel.redis_table(),
        "generation_cache_ttl = \"60s\"",
        None,
    );
    let gw1 = Gateway::start(&text);
    let gw2 = Gateway::start(&text);
    shared_and_invalidated(&sim, &d, &gw1, &gw2).await;
}

/// Two instances over one deployment (generations trusted for a minute): a response cached
/// through instance 1 is a Redis hit on instance 2; a write through instance 2 drops instance
/// 1's L1 entry and generations within 100 ms (only the pub/sub message can); a purge of
/// everything reaches both; nothing spans slots.
async fn shared_and_invalidated(
    sim: &SimHandle,
    d: &omsgate::sim::data::Dataset,
    gw1: &Gateway,
    gw2: &Gateway,
) {
    cache_redis_up(gw1).await;
    cache_redis_up(gw2).await;
    let http = client();
    let acme = token("acme", "a1");
    let path = format!("/api/v1/invoices/{}", first_invoice(d, "acme"));
    let list = "/api/v1/invoices?limit=3";

    // Cached through instance 1, a Redis hit on instance 2 (its L1 is empty).
    for p in [path.as_str(), list] {
        assert_eq!(get(&http, &gw1.url(p), Some(&acme)).await.x_cache, "MISS");
        let got = get(&http, &gw2.url(p), Some(&acme)).await;
        assert_eq!(
            got.x_cache,
            "HIT",
            "{p}: a miss on instance 2\n{}\n{}\n{}",
            tail(&gw1.log(), 20),
            tail(&gw2.log(), 20),
            gw2.metrics_text()
                .lines()
                .filter(|l| l.contains("cache"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            get(&http, &gw1.url(p), Some(&acme)).await.x_cache,
            "HIT",
            "{p}"
        );
    }
    assert_eq!(
        sim.stats().by_route.get("invoice_get").copied(),
        Some(1),
        "one OMS request for both instances"
    );
    // A write through instance 2 drops the entry from instance 1's L1 (and its generations)
    // within 100 ms.
    let patched = send(
        &http,
        reqwest::Method::PATCH,
        &gw2.url(&path),
        Some(&acme),
        &[],
        Some(json!({"customer": "Seen Everywhere"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let written = Instant::now();
    tokio::time::sleep(Duration::from_millis(100).saturating_sub(written.elapsed())).await;
    let after = get(&http, &gw1.url(&path), Some(&acme)).await;
    assert_eq!(
        after.x_cache, "MISS",
        "instance 1 still serves the old copy"
    );
    assert_eq!(after.json()["customer"], "Seen Everywhere");
    assert_eq!(
        get(&http, &gw1.url(list), Some(&acme)).await.x_cache,
        "MISS"
    );
    assert!(
        metric(
            gw1,
            "omsgate_cache_invalidations_total",
            &[("source", "remote")]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            gw1,
            "omsgate_cache_backend_errors_total",
            &[("backend", "redis")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            gw2,
            "omsgate_cache_backend_errors_total",
            &[("backend", "redis")]
        ),
        0.0
    );

    // A purge of everything (the epoch, a tag of its own) reaches both as well.
    assert_eq!(
        get(&http, &gw1.url(&path), Some(&acme)).await.x_cache,
        "HIT"
    );
    let purge = http
        .post(gw2.admin_url("/purge"))
        .json(&json!({"all": true}))
        .send()
        .await
        .expect("purge");
    assert!(purge.status().is_success(), "{:?}", purge.text().await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&http, &gw1.url(&path), Some(&acme)).await.x_cache,
        "MISS"
    );
    for gw in [gw1, gw2] {
        assert_no_crossslot(gw);
    }
}

/// Sends `n` GETs for `tenant`, alternating between the gateways, 10 at a time; returns how
/// many were admitted (200), panicking on anything but 200 and 429.
async fn admitted_of(gateways: &Arc<[Gateway; 2]>, tenant: &str, n: usize) -> u64 {
    let tok = token(tenant, "u");
    let mut tasks = Vec::new();
    for worker in 0..10 {
        let gateways = gateways.clone();
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut admitted = 0;
            for i in 0..n / 10 {
                let gw = &gateways[(worker + i) % 2];
                let r = c
                    .get(gw.url("/api/v1/invoices?limit=1"))
                    .bearer_auth(&tok)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request failed: {e}"));
                match r.status().as_u16() {
                    200 => admitted += 1,
                    429 => {}
                    other => panic!("unexpected status {other}"),
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_rate_limit_is_exact_across_instances_and_hash_tags() {
    let cluster = PrivateRedisCluster::start();
    let (sim, _) = start_sim().await;
    // Two policies with different hash tags (the tenant's bucket, the route's bucket): two
    // script calls per request, on different primaries, and a request rejected by one gives
    // its request back to the other.
    let policies = r#"default = "per_tenant"
[rate_limit.policies.per_tenant]
key = "tenant"
quota = "40/hour"
[rate_limit.policies.per_route]
key = "route"
quota = "60/hour"
"#;
    let text = gateway_config(&sim, &cluster.redis_table(), "", Some(policies));
    let gateways = Arc::new([Gateway::start(&text), Gateway::start(&text)]);

    // Tenant 1: its own bucket holds 40 (nothing comes back within the run: 90 s a request).
    let first = admitted_of(&gateways, &unique("tenant"), 300).await;
    assert_eq!(first, 40, "the quota is 40; at most 40 × 1.02 may pass");
    // Tenant 2: the route's bucket has 60 − 40 = 20 left, exactly, only if the 260 requests
    // the tenant's bucket rejected took nothing from the route's.
    let second = admitted_of(&gateways, &unique("tenant"), 300).await;
    assert_eq!(
        second, 20,
        "the route's bucket lost requests the tenant's rejected"
    );

    let allowed: f64 = gateways
        .iter()
        .map(|g| {
            metric(
                g,
                "omsgate_rate_limit_checks_total",
                &[("result", "allowed")],
            )
        })
        .sum();
    assert_eq!(allowed, 60.0);
    for g in gateways.iter() {
        assert!(
            metric(
                g,
                "omsgate_rate_limit_checks_total",
                &[("result", "allowed")]
            ) > 0.0
        );
        assert_eq!(
            metric(g, "omsgate_rate_limit_backend_errors_total", &[]),
            0.0
        );
        assert_no_crossslot(g);
    }
}

// === Failover under load ===

/// Requests for one tenant's invoice through both gateways until stopped, counting answers.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    errors: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(urls: Vec<String>, tok: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let (stop, ok, hits, errors) = (stop.clone(), ok.clone(), hits.clone(), errors.clone());
            let (urls, tok) = (urls.clone(), tok.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = &urls[i % urls.len()];
                    match c.get(url).bearer_auth(&tok).send().await {
                        Ok(r) if r.status() == 200 => {
                            if r.headers().get("x-cache").is_some_and(|v| v == "HIT") {
                                hits.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => errors.lock().push(format!("{url}: {}", r.status())),
                        Err(e) => errors.lock().push(format!("{url}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Traffic {
            stop,
            ok,
            hits,
            errors,
            tasks,
        }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self.errors.lock().clone();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// Polls until `url` answers a HIT (from Redis: the gateways run without L1).
async fn hits_again(http: &reqwest::Client, url: &str, tok: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if get(http, url, Some(tok)).await.x_cache == "HIT" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Both failover tests: two gateways without L1 (every hit is a Redis hit) and with the
/// distributed limit on the same deployment, steady traffic, `kill` the primary, then check.
async fn failover_under_load(
    redis: &str,
    kill: impl FnOnce() + Send + 'static,
    wait_promoted: impl FnOnce() -> bool + Send + 'static,
) {
    let (sim, d) = start_sim().await;
    let policies = r#"default = "per_tenant"
on_backend_error = "allow"
[rate_limit.policies.per_tenant]
key = "tenant"
quota = "100000/minute"
[rate_limit.policies.per_route]
key = "route"
quota = "100000/minute"
"#;
    let text = gateway_config(&sim, redis, "memory = { max_bytes = 0 }", Some(policies));
    let gw1 = Gateway::start(&text);
    let gw2 = Gateway::start(&text);
    let http = client();
    let acme = token("acme", "a1");
    let path = format!("/api/v1/invoices/{}", first_invoice(&d, "acme"));
    let urls = vec![
        gw1.url(&path),
        gw2.url(&path),
        gw1.url("/api/v1/invoices?limit=2"),
    ];
    for u in &urls {
        get(&http, u, Some(&acme)).await;
        assert!(
            hits_again(&http, u, &acme, Duration::from_secs(10)).await,
            "{u}"
        );
    }

    let traffic = Traffic::start(urls.clone(), acme.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = traffic.ok.load(Ordering::Relaxed);
    tokio::task::spawn_blocking(kill).await.unwrap();
    let killed = Instant::now();
    assert!(
        tokio::task::spawn_blocking(wait_promoted).await.unwrap(),
        "no replica was promoted"
    );
    let promoted = killed.elapsed();
    // Hits resume, through both instances, once the new primary serves.
    for u in &urls {
        assert!(
            hits_again(&http, u, &acme, Duration::from_secs(20)).await,
            "no HIT on {u} after the promotion ({promoted:?})\n{}",
            tail(&gw1.log(), 30)
        );
    }
    let hits_before_end = traffic.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits_at_end = traffic.hits.load(Ordering::Relaxed);
    let (ok, errors) = traffic.stop().await;
    assert!(
        errors.is_empty(),
        "client errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(ok > before_kill, "no request completed after the kill");
    assert!(
        hits_at_end > hits_before_end,
        "hits did not resume under load"
    );
    // The requests that met the dead primary fell back, counted.
    let fallbacks: f64 = [&gw1, &gw2]
        .iter()
        .map(|g| {
            metric(
                g,
                "omsgate_cache_backend_errors_total",
                &[("backend", "redis")],
            ) + metric(g, "omsgate_rate_limit_backend_errors_total", &[])
        })
        .sum();
    assert!(fallbacks > 0.0, "no fallback was counted");
    eprintln!("promotion after {promoted:?}; {ok} requests answered 200; {fallbacks} fallbacks");
    for gw in [&gw1, &gw2] {
        assert_no_crossslot(gw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_primary_killed_under_load_costs_no_client_errors() {
    let cluster = Arc::new(parking_lot::Mutex::new(PrivateRedisCluster::start()));
    let (redis, hot) = {
        let c = cluster.lock();
        (
            c.redis_table(),
            c.primary_of_slot(c.slot_of("acme")).expect("owner"),
        )
    };
    let killer = cluster.clone();
    let waiter = cluster.clone();
    failover_under_load(
        &redis,
        move || killer.lock().kill(hot),
        move || {
            // The slot has a new primary and every live node agrees the cluster is ok.
            wait_for(Duration::from_secs(30), || {
                let c = waiter.lock();
                c.primary_of_slot(c.slot_of("acme"))
                    .is_some_and(|p| p != hot)
                    && c.is_ok()
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_promotion_under_load_costs_no_client_errors() {
    let sentinel = Arc::new(parking_lot::Mutex::new(PrivateSentinel::start()));
    let (redis, first, replica) = {
        let s = sentinel.lock();
        (s.redis_table(), s.primary_port(), s.replica_port())
    };
    let killer = sentinel.clone();
    let waiter = sentinel.clone();
    failover_under_load(
        &redis,
        move || killer.lock().kill_primary(),
        move || {
            wait_for(Duration::from_secs(30), || {
                let s = waiter.lock();
                s.current_primary() == Some(replica)
                    && s.cli(replica, &["role"]).starts_with("master")
            }) && first != replica
        },
    )
    .await;
}

// === TLS (rediss://) ===

/// What the gateway logs when a TLS connection to Redis fails (rustls and the redis crate).
const TLS_ERRORS: [&str; 6] = [
    "invalid peer certificate",
    "UnknownIssuer",
    "NotValidForName",
    "InvalidCertificate",
    "handshake",
    "TLS error",
];

/// No TLS error was logged and no Redis call failed (a failed handshake is a backend error).
fn assert_no_tls_errors(gw: &Gateway) {
    let log = gw.log();
    for e in TLS_ERRORS {
        assert!(!log.contains(e), "{e} in the log:\n{}", tail(&log, 40));
    }
    assert_eq!(
        metric(
            gw,
            "omsgate_cache_backend_errors_total",
            &[("backend", "redis")]
        ),
        0.0
    );
    assert_eq!(
        metric(gw, "omsgate_rate_limit_backend_errors_total", &[]),
        0.0,
        "{}",
        tail(&log, 40)
    );
}

/// Waits until the distributed limiter has connected, without a request: it connects as the
/// gateway starts, so that its first checks do not wait for a TLS handshake with every node of
/// the cluster (longer than one check's deadline).
async fn limiter_connected(gw: &Gateway) {
    let connected = eventually(Duration::from_secs(10), || {
        gw.log().contains("Rate limiter connected to Redis.")
    })
    .await;
    assert!(connected, "{}", tail(&gw.log(), 30));
}

/// Both TLS tests, on a deployment speaking TLS only whose `redis = {...}` line is `redis` and
/// whose CA `tls_section` trusts: two gateways with the cache and the distributed limit on it
/// share entries and invalidations ([`shared_and_invalidated`]: the pub/sub connections are TLS
/// too) and count the limit together (40 an hour per tenant, 40 admitted of 100 sent
/// alternately through both), without a TLS error or CROSSSLOT. A third gateway without
/// `[tls] ca_file` refuses the servers' certificate (only the system roots are trusted): the
/// cache and the limit fail open (200, no hit from the stored entry), and the log names the
/// cause.
async fn shared_and_counted_over_tls(redis: &str, tls_section: &str) {
    let (sim, d) = start_sim().await;
    let policies = r#"default = "per_tenant"
[rate_limit.policies.per_tenant]
key = "tenant"
quota = "40/hour"
[rate_limit.policies.per_route]
key = "route"
quota = "100000/hour"
"#;
    let text = gateway_config(
        &sim,
        redis,
        "generation_cache_ttl = \"60s\"",
        Some(policies),
    );
    let trusted = format!("{text}{tls_section}");
    let gateways = Arc::new([Gateway::start(&trusted), Gateway::start(&trusted)]);
    limiter_connected(&gateways[0]).await;
    limiter_connected(&gateways[1]).await;
    shared_and_invalidated(&sim, &d, &gateways[0], &gateways[1]).await;
    let admitted = admitted_of(&gateways, &unique("tenant"), 100).await;
    assert_eq!(admitted, 40, "the quota is 40 across both instances");
    for gw in gateways.iter() {
        assert!(
            metric(
                gw,
                "omsgate_rate_limit_checks_total",
                &[("result", "allowed")]
            ) > 0.0
        );
        assert_no_tls_errors(gw);
        assert_no_crossslot(gw);
    }

    // The same config (the same keys), without L1: a gateway trusting the CA would answer
    // from the entry instance 1 stored last.
    let untrusting = Gateway::start(&text.replace(
        "generation_cache_ttl = \"60s\"",
        "generation_cache_ttl = \"60s\"\nmemory = { max_bytes = 0 }",
    ));
    let http = client();
    let acme = token("acme", "a1");
    let path = format!("/api/v1/invoices/{}", first_invoice(&d, "acme"));
    for _ in 0..2 {
        let got = get(&http, &untrusting.url(&path), Some(&acme)).await;
        assert_eq!(got.status, 200);
        assert_ne!(
            got.x_cache, "HIT",
            "an entry from a Redis it must not trust"
        );
    }
    let named = eventually(Duration::from_secs(5), || {
        untrusting
            .log()
            .contains("invalid peer certificate: UnknownIssuer")
    })
    .await;
    assert!(named, "{}", tail(&untrusting.log(), 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_entries_are_shared_and_the_limit_counts_across_instances() {
    let cluster = PrivateRedisCluster::start_with(Transport::Tls);
    shared_and_counted_over_tls(&cluster.redis_table(), &cluster.tls_section()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_sentinel_entries_are_shared_and_the_limit_counts_across_instances() {
    let sentinel = PrivateSentinel::start_with(Transport::Tls);
    shared_and_counted_over_tls(&sentinel.redis_table(), &sentinel.tls_section()).await;
}

// === Config ===

#[test]
fn bad_redis_topologies_are_reported_with_keys() {
    let text = r#"
[server]
listen = "127.0.0.1:0"
[upstream]
servers = ["127.0.0.1:1"]
[cache]
redis_url = "redis://127.0.0.1:6379"
redis = { mode = "cluster", nodes = ["redis://127.0.0.1:7000"] }
key_prefix = "a{b}:"
[rate_limit]
mode = "distributed"
redis = { mode = "sentinel", nodes = ["redis://127.0.0.1:26379", "rediss://127.0.0.1:26380"] }
"#;
    let (code, out) = Gateway::check_config(text);
    assert_eq!(code, 64, "{out}");
    for key in [
        "cache.redis:",
        "cache.key_prefix:",
        "rate_limit.redis.nodes[1]:",
        "rate_limit.redis.master_name:",
    ] {
        assert!(out.contains(key), "no {key} in:\n{out}");
    }
}
