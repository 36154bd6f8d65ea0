//! The audit pipeline end to end, through the gateway: `omsgate run` (the harness's child
//! process) in front of a [`TestUpstream`], audit records produced to a real tansu broker, read
//! back with a Kafka consumer and matched to the `x-request-id` of every response the client
//! got. Each test creates its own topic first.
//!
//! * 10 000 requests of several tenants → exactly 10 000 records, each with the right tenant,
//!   route and status, and no secret (redacted query parameter, `Authorization` value).
//! * A private broker frozen (SIGSTOP) for longer than `delivery_timeout` while 5 000 requests
//!   flow → all 5 000 arrive once each; request latency before / while away is printed, not
//!   asserted (speed is measured by `cargo bench --bench audit`).
//! * SIGTERM under load → every request that got a response has its record in the topic or in
//!   the spool the gateway left behind; with the broker frozen at that moment, the spool holds
//!   records and the next start (same spool, broker back) replays every one of them.

mod audit_common;
mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use audit_common::{
    audit_config_of, consume_all, duplicates, records_in_flight_ceiling, spooled_ids, Consumed,
};
use common::{create_topic, kafka_brokers, unique, Gateway, PrivateTansu, TestDir, TestUpstream};

/// The HS256 secret the gateway verifies tokens with.
const JWT_SECRET: &str = "audit-gateway-test-secret";
/// The tenants the requests come from (in the `tenant_id` claim).
const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
/// Part of every value of the redacted `token` query parameter: must never reach the topic.
const QUERY_SECRET: &str = "qsecret";
/// The `Authorization` value of anonymous requests: must never reach the topic.
const BASIC_AUTH: &str = "Basic YWxhZGRpbjpvcGVuc2VzYW1l";

/// A gateway config: JWT identity, three named routes (anything else is route `other`), audit to
/// `brokers`/`topic` with short timeouts, spooling into `spool_dir`.
fn config(upstream: &TestUpstream, brokers: &str, topic: &str, spool_dir: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
shutdown_grace = "3s"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{upstream}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms" }}
connect_timeout = "500ms"
read_timeout = "5s"
[identity]
mode = "jwt"
jwt_secret = "{JWT_SECRET}"
[audit]
brokers = "{brokers}"
topic = "{topic}"
spool_dir = "{spool_dir}"
delivery_timeout = "1s"
shutdown_timeout = "2s"
linger = "5ms"
gateway_id = "gw-audit-test"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{{id}}"
methods = ["GET"]
[[route]]
name = "invoice_write"
path = "/api/v1/invoices"
methods = ["POST"]
[[route]]
name = "status"
path = "/status/{{code}}"
"#,
        upstream = upstream.addr,
    )
}

/// What the client sent and got for one request.
#[derive(Debug, Clone)]
struct Sent {
    request_id: String,
    /// `None` for anonymous requests (no verified token).
    tenant: Option<&'static str>,
    subject: Option<String>,
    route: &'static str,
    method: &'static str,
    status: u16,
    latency: Duration,
}

/// Request number `i`: which tenant (or none), method, path and route it is, and the status
/// the upstream answers. Deterministic, so expectations follow from `i`.
struct Plan {
    tenant: Option<&'static str>,
    subject: String,
    method: &'static str,
    path: String,
    route: &'static str,
    status: u16,
}

fn plan(i: usize) -> Plan {
    // Every tenth request is anonymous (an `Authorization: Basic ...` the gateway cannot
    // verify); the rest cycle through the tenants.
    let tenant = (i % 10 != 9).then(|| TENANTS[i % TENANTS.len()]);
    let subject = format!("user-{}", i % 7);
    let (method, path, route, status) = match i % 5 {
        0 | 1 => (
            "GET",
            format!("/api/v1/invoices/{i}?expand=lines&token={QUERY_SECRET}-{i}"),
            "invoice",
            200,
        ),
        2 => (
            "POST",
            format!("/api/v1/invoices?password={QUERY_SECRET}-{i}"),
            "invoice_write",
            200,
        ),
        3 => {
            let code = [201, 404, 409][i % 3];
            (
                "GET",
                format!("/status/{code}?api_key={QUERY_SECRET}-{i}"),
                "status",
                code,
            )
        }
        _ => ("GET", format!("/echo?n={i}"), "other", 200),
    };
    Plan {
        tenant,
        subject,
        method,
        path,
        route,
        status,
    }
}

/// Tokens by (tenant, subject), issued once.
struct Tokens(HashMap<(&'static str, String), String>);

impl Tokens {
    fn new() -> Tokens {
        let mut map = HashMap::new();
        for tenant in TENANTS {
            for s in 0..7 {
                let subject = format!("user-{s}");
                let token = omsgate::identity::issue_hs256(
                    JWT_SECRET,
                    "tenant_id",
                    tenant,
                    &subject,
                    Duration::from_secs(3600),
                );
                map.insert((tenant, subject), token);
            }
        }
        Tokens(map)
    }

    fn authorization(&self, plan: &Plan) -> String {
        match plan.tenant {
            Some(t) => format!("Bearer {}", self.0[&(t, plan.subject.clone())]),
            None => BASIC_AUTH.to_string(),
        }
    }

    /// Every token (none of them may appear in a record).
    fn all(&self) -> impl Iterator<Item = &String> {
        self.0.values()
    }
}

/// Sends request number `i`; `None` if no response (status line and body) came back.
async fn send(client: &reqwest::Client, gw_url: &str, tokens: &Tokens, i: usize) -> Option<Sent> {
    let p = plan(i);
    let url = format!("{gw_url}{}", p.path);
    let started = Instant::now();
    let req = match p.method {
        "POST" => client.post(&url).body(format!("{{\"n\":{i}}}")),
        _ => client.get(&url),
    };
    let resp = req
        .header("authorization", tokens.authorization(&p))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    resp.bytes().await.ok()?;
    let latency = started.elapsed();
    let request_id = request_id.unwrap_or_else(|| panic!("request {i}: no x-request-id"));
    Some(Sent {
        request_id,
        tenant: p.tenant,
        subject: p.tenant.map(|_| p.subject.clone()),
        route: p.route,
        method: p.method,
        status,
        latency,
    })
}

/// Sends requests `range` with `concurrency` tasks; returns what came back (in no particular
/// order). Panics if a request gets no response or a status other than planned.
async fn send_all(
    gw_url: &str,
    tokens: &Arc<Tokens>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    pace: Option<Duration>,
) -> Vec<Sent> {
    let client = common::client();
    let next = Arc::new(Mutex::new(range.clone()));
    let out = Arc::new(Mutex::new(Vec::with_capacity(range.len())));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, out) = (client.clone(), next.clone(), out.clone());
            let (url, tokens) = (gw_url.to_string(), tokens.clone());
            tokio::spawn(async move {
                loop {
                    let Some(i) = next.lock().next() else { break };
                    let sent = send(&client, &url, &tokens, i)
                        .await
                        .unwrap_or_else(|| panic!("request {i}: no response"));
                    assert_eq!(sent.status, plan(i).status, "request {i}: status");
                    out.lock().push(sent);
                    if let Some(pace) = pace {
                        tokio::time::sleep(pace).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let out = std::mem::take(&mut *out.lock());
    out
}

/// Median, 99th percentile and largest latency of `sent`, for printing.
fn latency_summary(sent: &[Sent]) -> String {
    let mut l: Vec<Duration> = sent.iter().map(|s| s.latency).collect();
    l.sort();
    if l.is_empty() {
        return "no requests".into();
    }
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
    format!(
        "{} requests: p50 {:?}, p99 {:?}, max {:?}",
        l.len(),
        at(0.5),
        at(0.99),
        l[l.len() - 1]
    )
}

/// Asserts that `got` holds each of `sent` exactly once, with the record matching what the
/// client sent and got, and no secret anywhere.
fn assert_records_match(sent: &[Sent], got: &[Consumed], tokens: &Tokens) {
    let (dups, ids) = duplicates(got);
    assert!(
        dups.is_empty(),
        "{} duplicate records, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let want: BTreeSet<String> = sent.iter().map(|s| s.request_id.clone()).collect();
    assert_eq!(want.len(), sent.len(), "request ids are unique");
    let missing: Vec<_> = want.difference(&ids).take(5).collect();
    let extra: Vec<_> = ids.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} records missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
        want.difference(&ids).count(),
        ids.difference(&want).count()
    );
    assert_eq!(got.len(), sent.len());
    let by_id: HashMap<&str, &Consumed> = got.iter().map(|c| (c.id(), c)).collect();
    for s in sent {
        let r = by_id[s.request_id.as_str()];
        let v = &r.value;
        let ctx = || format!("record {v}");
        assert_eq!(v["v"], 1, "{}", ctx());
        assert_eq!(v["tenant"].as_str(), s.tenant, "{}", ctx());
        assert_eq!(v["subject"].as_str(), s.subject.as_deref(), "{}", ctx());
        assert_eq!(v["route"], s.route, "{}", ctx());
        assert_eq!(v["method"], s.method, "{}", ctx());
        assert_eq!(v["status"], s.status, "{}", ctx());
        assert_eq!(v["gateway"], "gw-audit-test", "{}", ctx());
        // Kafka key = tenant ("" without one).
        assert_eq!(r.key, s.tenant.unwrap_or(""), "{}", ctx());
        let text = v.to_string();
        assert!(!text.contains(QUERY_SECRET), "secret in {text}");
        assert!(
            !text.contains("YWxhZGRpbjpvcGVuc2VzYW1l"),
            "Authorization in {text}"
        );
        assert!(!text.contains("Bearer"), "Authorization in {text}");
        if s.route != "other" {
            let q = v["query"].as_str().unwrap_or_default();
            assert!(q.contains("=REDACTED"), "query not redacted: {text}");
        }
    }
    // Tokens are long; checking each against the whole topic once is enough.
    let all: String = got.iter().map(|c| c.value.to_string()).collect();
    for t in tokens.all() {
        assert!(
            !all.contains(t.as_str()),
            "a bearer token reached the topic"
        );
    }
}

/// The gateway's `omsgate_audit_spool_bytes`.
fn spool_bytes(gw: &Gateway) -> Option<f64> {
    gw.metric_value("omsgate_audit_spool_bytes", &[])
}

/// The gateway's `omsgate_audit_records_total{outcome}`.
fn audit_count(gw: &Gateway, outcome: &str) -> f64 {
    gw.metric_value("omsgate_audit_records_total", &[("outcome", outcome)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_make_ten_thousand_records_in_the_topic() {
    let brokers = kafka_brokers();
    let topic = unique("audit_gw_10k");
    create_topic(&brokers, &topic, 3);
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&up, &brokers, &topic, "{dir}/spool"));
    let tokens = Arc::new(Tokens::new());
    let n = 10_000;

    let started = Instant::now();
    let sent = send_all(&gw.url(""), &tokens, 0..n, 32, None).await;
    println!(
        "{n} requests in {:?}; {}",
        started.elapsed(),
        latency_summary(&sent)
    );
    assert_eq!(sent.len(), n);

    let got = tokio::task::spawn_blocking({
        let (brokers, topic) = (brokers.clone(), topic.clone());
        move || consume_all(&brokers, &topic, 3, n, Duration::from_secs(60))
    })
    .await
    .unwrap();
    println!("consumed {} records", got.len());
    assert_records_match(&sent, &got, &tokens);
    assert_eq!(audit_count(&gw, "dropped"), 0.0);
    // Every tenant's records are in one partition (keyed by tenant).
    for tenant in TENANTS {
        let parts: BTreeSet<i32> = got
            .iter()
            .filter(|r| r.key == tenant)
            .map(|r| r.partition)
            .collect();
        assert_eq!(parts.len(), 1, "{tenant} spans partitions {parts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_loses_and_duplicates_no_record_of_five_thousand_requests() {
    let broker = PrivateTansu::start();
    let brokers = broker.brokers();
    let topic = unique("audit_gw_frozen");
    create_topic(&brokers, &topic, 2);
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&up, &brokers, &topic, "{dir}/spool"));
    let tokens = Arc::new(Tokens::new());
    let url = gw.url("");

    // Every phase is paced alike, so that the latencies printed below compare.
    let pace = Some(Duration::from_millis(5));
    // 1000 requests with Kafka up.
    let before = send_all(&url, &tokens, 0..1000, 8, pace).await;
    // Acknowledged, directly or (when the fresh broker was slow to accept the first records
    // and counted as away for a moment) through the spool.
    let acknowledged = |gw: &Gateway| audit_count(gw, "delivered") + audit_count(gw, "replayed");
    assert!(
        common::eventually(Duration::from_secs(20), || acknowledged(&gw) >= 1000.0
            && spool_bytes(&gw) == Some(0.0))
        .await,
        "the first 1000 records were not acknowledged"
    );

    // Frozen for 3 s, three times `delivery_timeout`, while 3000 requests flow.
    broker.freeze();
    let frozen_at = Instant::now();
    let away = send_all(&url, &tokens, 1000..4000, 8, pace).await;
    let mut saw_away = false;
    while frozen_at.elapsed() < Duration::from_secs(3) {
        saw_away |= ready_audit_state(&gw).as_deref() == Some("away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    saw_away |= ready_audit_state(&gw).as_deref() == Some("away");
    let spooled_while_away = audit_count(&gw, "spooled");
    let frozen_for = frozen_at.elapsed();
    broker.thaw();

    // 1000 more after the thaw, while the spool is replayed.
    let after = send_all(&url, &tokens, 4000..5000, 8, pace).await;
    println!(
        "request latency with Kafka up:   {}\n\
         request latency with Kafka away: {} (broker frozen for {frozen_for:?})\n\
         request latency after the thaw: {}",
        latency_summary(&before),
        latency_summary(&away),
        latency_summary(&after)
    );
    assert!(saw_away, "/ready never reported the audit state `away`");
    assert!(
        spooled_while_away > 0.0,
        "no record was spooled while Kafka was away"
    );

    let mut sent = before;
    sent.extend(away);
    sent.extend(after);
    let got = tokio::task::spawn_blocking({
        let (brokers, topic) = (brokers.clone(), topic.clone());
        move || consume_all(&brokers, &topic, 2, 5000, Duration::from_secs(60))
    })
    .await
    .unwrap();
    println!(
        "consumed {} records; delivered {}, spooled {}, replayed {}",
        got.len(),
        audit_count(&gw, "delivered"),
        audit_count(&gw, "spooled"),
        audit_count(&gw, "replayed")
    );
    assert_records_match(&sent, &got, &tokens);
    assert_eq!(audit_count(&gw, "dropped"), 0.0);
}

/// `dependencies.audit.state` of the gateway's `/ready` (`connected`, `away`, ...), if it answers.
fn ready_audit_state(gw: &Gateway) -> Option<String> {
    let (_, body) = common::http_get(gw.admin_addr(), "/ready", Duration::from_secs(1))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["dependencies"]["audit"]["state"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_answered_request_in_the_topic_or_the_spool() {
    let brokers = kafka_brokers();
    let topic = unique("audit_gw_term");
    create_topic(&brokers, &topic, 2);
    let up = TestUpstream::start();
    // The spool outlives the gateway's own temp dir (removed when `gw` is dropped).
    let spool = TestDir::new("audit-gw-spool");
    let gw = Gateway::start(&config(
        &up,
        &brokers,
        &topic,
        &spool.path().display().to_string(),
    ));
    let tokens = Arc::new(Tokens::new());
    let url = gw.url("");

    let load = UntilGone::start(&url, &tokens);
    assert!(
        common::eventually(Duration::from_secs(20), || load.answered() >= 2000).await,
        "the load did not get going"
    );
    gw.signal("TERM");
    // A blocking wait: the other worker thread keeps the clients going meanwhile.
    let exit = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits within 20 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let (answered, failures) = load.finish().await;

    let spooled: BTreeSet<String> = spooled_ids(spool.path()).into_iter().collect();
    let want: BTreeSet<String> = answered.iter().map(|s| s.request_id.clone()).collect();
    let expected_in_topic = want.difference(&spooled).count();
    let got = tokio::task::spawn_blocking({
        let (brokers, topic) = (brokers.clone(), topic.clone());
        move || {
            consume_all(
                &brokers,
                &topic,
                2,
                expected_in_topic,
                Duration::from_secs(60),
            )
        }
    })
    .await
    .unwrap();
    let (_, in_topic) = duplicates(&got);
    println!(
        "{} requests answered ({} failed after SIGTERM): {} records in the topic, {} in the spool",
        answered.len(),
        failures,
        in_topic.len(),
        spooled.len()
    );
    let missing: Vec<_> = want
        .iter()
        .filter(|id| !in_topic.contains(*id) && !spooled.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no record in the topic or the spool, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Like [`send`], but to `/slow/300`: in flight for a while, route `other`.
async fn slow(client: &reqwest::Client, gw_url: &str, tokens: &Tokens, i: usize) -> Option<Sent> {
    let p = plan(i);
    let resp = client
        .get(format!("{gw_url}/slow/300"))
        .header("authorization", tokens.authorization(&p))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")?
        .to_str()
        .ok()?
        .to_string();
    resp.bytes().await.ok()?;
    Some(Sent {
        request_id,
        tenant: p.tenant,
        subject: p.tenant.map(|_| p.subject.clone()),
        route: "other",
        method: "GET",
        status,
        latency: Duration::ZERO,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_kafka_is_away_spools_and_the_next_start_replays_everything() {
    let broker = PrivateTansu::start();
    let brokers = broker.brokers();
    let topic = unique("audit_gw_term_away");
    create_topic(&brokers, &topic, 2);
    let up = TestUpstream::start();
    let spool = TestDir::new("audit-gw-spool");
    // Small producer batches keep the duplicate bound below smaller than the records at stake.
    let config = format!(
        "{}\n[audit.kafka_options]\n\"batch.num.messages\" = \"50\"\n",
        config(&up, &brokers, &topic, &spool.path().display().to_string())
    );
    let ceiling = records_in_flight_ceiling(&audit_config_of(&config), 2);
    let tokens = Arc::new(Tokens::new());

    // First process: load, the broker freezes, SIGTERM while it is still frozen.
    let gw = Gateway::start(&config);
    let load = UntilGone::start(&gw.url(""), &tokens);
    assert!(
        common::eventually(Duration::from_secs(20), || load.answered() >= 500).await,
        "the load did not get going"
    );
    broker.freeze();
    let frozen_at = load.answered();
    assert!(
        common::eventually(Duration::from_secs(20), || load.answered()
            >= frozen_at + 1000)
        .await,
        "no requests answered while Kafka was away"
    );
    let recreated = gw
        .metric_value("omsgate_audit_producer_recreations_total", &[])
        .unwrap_or(0.0);
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits within 20 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let (answered, failures) = load.finish().await;
    drop(gw);
    let spooled: BTreeSet<String> = spooled_ids(spool.path()).into_iter().collect();
    println!(
        "{} requests answered ({failures} failed after SIGTERM); {} records left in the spool",
        answered.len(),
        spooled.len()
    );
    assert!(
        !spooled.is_empty(),
        "nothing was spooled although Kafka was frozen at shutdown"
    );

    // Second process on the same spool, the broker back: the spool is replayed and emptied.
    broker.thaw();
    let gw = Gateway::start(&config);
    // Asked through the metrics: the spool files change under the replayer's hands.
    let drained = common::eventually(Duration::from_secs(30), || {
        spool_bytes(&gw) == Some(0.0) && audit_count(&gw, "replayed") >= spooled.len() as f64
    })
    .await;
    assert!(
        drained,
        "the spool was not replayed: {:?} bytes left, {} of {} records replayed",
        spool_bytes(&gw),
        audit_count(&gw, "replayed"),
        spooled.len()
    );
    let want: BTreeSet<String> = answered.iter().map(|s| s.request_id.clone()).collect();
    let got = tokio::task::spawn_blocking({
        let (brokers, topic, n) = (brokers.clone(), topic.clone(), want.len());
        move || consume_all(&brokers, &topic, 2, n, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let (dups, in_topic) = duplicates(&got);
    // Records the producer had written into the frozen broker's socket were spooled at the
    // shutdown deadline (their fate was unknown) and may also have been stored after the thaw:
    // at least once, deduplicated by audit-sink on event_id. The documented bound
    // (docs/audit.md, "Duplicates"): each purge of the first process's producer (its
    // recreations and its shutdown) leaves at most `ceiling` records uncertain, and the second
    // process counts its own uncertain records.
    let first_purges = recreated as u64 + 1;
    let second_uncertain = audit_count(&gw, "uncertain") as u64;
    let bound = first_purges * ceiling + second_uncertain;
    println!(
        "after the restart: {} records in the topic, {} distinct, {} duplicates (bound {bound}); \
         replayed {}",
        got.len(),
        in_topic.len(),
        dups.len(),
        audit_count(&gw, "replayed")
    );
    assert!(
        dups.len() as u64 <= bound,
        "{} duplicates, more than {first_purges} purges of at most {ceiling} in-flight records \
         plus {second_uncertain} uncertain ones of the second process: {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let missing: Vec<_> = want.difference(&in_topic).collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no record in the topic after the replay, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(audit_count(&gw, "dropped"), 0.0);
}

/// Clients (16 tasks, a quarter of them on `/slow/300` so that requests are in flight at any
/// moment) sending requests until the gateway stops answering; every response is kept.
struct UntilGone {
    answered: Arc<Mutex<Vec<Sent>>>,
    failures: Arc<Mutex<usize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UntilGone {
    /// Failures (refused or cut off) after which the clients stop.
    const GIVE_UP_AFTER: usize = 200;

    fn start(gw_url: &str, tokens: &Arc<Tokens>) -> UntilGone {
        let next = Arc::new(Mutex::new(0..usize::MAX));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(0usize));
        let tasks = (0..16)
            .map(|w| {
                let (next, answered, failures) = (next.clone(), answered.clone(), failures.clone());
                let (url, tokens) = (gw_url.to_string(), tokens.clone());
                tokio::spawn(async move {
                    let client = common::client();
                    let deadline = Instant::now() + Duration::from_secs(40);
                    while Instant::now() < deadline {
                        let Some(i) = next.lock().next() else { break };
                        let sent = if w % 4 == 0 {
                            slow(&client, &url, &tokens, i).await
                        } else {
                            send(&client, &url, &tokens, i).await
                        };
                        match sent {
                            Some(s) => answered.lock().push(s),
                            None => {
                                // Refused or cut off: the gateway is going away.
                                let give_up = {
                                    let mut f = failures.lock();
                                    *f += 1;
                                    *f > Self::GIVE_UP_AFTER
                                };
                                if give_up {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        UntilGone {
            answered,
            failures,
            tasks,
        }
    }

    /// Requests answered so far.
    fn answered(&self) -> usize {
        self.answered.lock().len()
    }

    /// Waits for the clients to give up; every answered request and the number of failures.
    async fn finish(self) -> (Vec<Sent>, usize) {
        for t in self.tasks {
            t.await.unwrap();
        }
        let answered = std::mem::take(&mut *self.answered.lock());
        let failures = *self.failures.lock();
        (answered, failures)
    }
}
