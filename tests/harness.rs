//! Tests of the shared harness itself (`tests/common`): the services `scripts/test` provides are
//! reachable, private Redis and tansu processes can be stopped, frozen and restarted, the test
//! upstream answers as documented, and the gateway helpers parse what they claim to.

mod common;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::Duration;

// === Names and shared services ===

#[test]
fn unique_names_differ_and_use_only_identifier_characters() {
    let names: HashSet<String> = (0..1000).map(|_| unique("t")).collect();
    assert_eq!(names.len(), 1000);
    for name in &names {
        assert!(name.starts_with("t_"), "{name}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
    }
}

#[tokio::test]
async fn shared_redis_stores_and_returns_a_value() {
    let client = redis::Client::open(redis_url()).expect("OMSGATE_TEST_REDIS_URL is a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("shared Redis reachable");
    let key = unique("harness");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, "v");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn shared_postgres_accepts_a_private_schema() {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("shared PostgreSQL reachable with trust auth");
    tokio::spawn(connection);
    let schema = unique("harness");
    client
        .batch_execute(&format!(
            "create schema {schema}; create table {schema}.t (x int);"
        ))
        .await
        .unwrap();
    client
        .execute(&format!("insert into {schema}.t values (41), (1)"), &[])
        .await
        .unwrap();
    let row = client
        .query_one(&format!("select sum(x)::int from {schema}.t"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    client
        .batch_execute(&format!("drop schema {schema} cascade"))
        .await
        .unwrap();
}

#[tokio::test]
async fn shared_broker_round_trips_records() {
    let brokers = kafka_brokers();
    let topic = unique("harness");
    create_topic(&brokers, &topic, 2);
    produce(&brokers, &topic, &["a", "b", "c"]).await;
    let mut got = consume_all(&brokers, &topic, 2, 3);
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
}

// === PrivateRedis ===

#[test]
fn private_redis_stops_freezes_and_restarts_empty() {
    let mut redis = PrivateRedis::start();
    assert!(redis_ping(redis.addr()));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();

    redis.freeze();
    assert!(port_open(redis.addr()), "a frozen server keeps its port");
    assert!(!redis_ping(redis.addr()), "a frozen server does not answer");
    redis.thaw();
    assert!(wait_for(Duration::from_secs(5), || redis_ping(
        redis.addr()
    )));

    redis.stop();
    assert!(
        !port_open(redis.addr()),
        "a stopped server refuses connections"
    );
    redis.restart();
    assert!(redis_ping(redis.addr()));
    let mut conn = client.get_connection().unwrap();
    let got: Option<String> = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
    assert_eq!(got, None, "a restarted private Redis starts empty");
}

#[test]
fn two_private_redis_servers_are_independent() {
    let mut a = PrivateRedis::start();
    let b = PrivateRedis::start();
    assert_ne!(a.addr(), b.addr());
    a.stop();
    assert!(redis_ping(b.addr()));
}

// === PrivateTansu ===

#[tokio::test]
async fn private_tansu_freezes_thaws_and_restarts() {
    let mut tansu = PrivateTansu::start();
    let topic = unique("harness");
    create_topic(&tansu.brokers(), &topic, 1);
    produce(&tansu.brokers(), &topic, &["before"]).await;
    assert_eq!(consume_all(&tansu.brokers(), &topic, 1, 1), ["before"]);

    tansu.freeze();
    let frozen = metadata_ok(&tansu.brokers(), &topic);
    tansu.thaw();
    assert!(!frozen, "a frozen broker answers no metadata request");
    assert!(
        metadata_ok(&tansu.brokers(), &topic),
        "a thawed broker answers again"
    );

    tansu.kill();
    assert!(
        !port_open(tansu.addr()),
        "a killed broker refuses connections"
    );
    tansu.restart();
    create_topic(&tansu.brokers(), &topic, 1);
    produce(&tansu.brokers(), &topic, &["after"]).await;
    assert_eq!(
        consume_all(&tansu.brokers(), &topic, 1, 1),
        ["after"],
        "a restarted memory broker starts empty"
    );
}

async fn produce(brokers: &str, topic: &str, payloads: &[&str]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer config");
    for (i, payload) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(*payload),
                Duration::from_secs(15),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic} on {brokers}: {e}"));
    }
}

/// Reads every partition from the beginning until `expected` records have arrived (tansu's
/// high watermark cannot be trusted, so we count what we consume), or 20 s pass.
fn consume_all(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("harness"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer config");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut got = Vec::new();
    wait_for(Duration::from_secs(20), || {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
        got.len() >= expected
    });
    got
}

fn metadata_ok(brokers: &str, topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("client config");
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .is_ok()
}

// === TestUpstream ===

#[tokio::test]
async fn upstream_echo_describes_the_request() {
    let up = TestUpstream::start();
    let resp = client()
        .post(up.url("/echo?a=1&b=2"))
        .header("X-Tenant-Id", "t1")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], up.addr.to_string().as_str());
    assert_eq!(resp.headers()["x-upstream-seq"], "1");
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "a=1&b=2");
    assert_eq!(echo["headers"]["x-tenant-id"], "t1");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["seq"], 1);

    // Unknown paths echo too, so gateway routes such as /api/v1/invoices/7 have an origin.
    let echo: serde_json::Value = client()
        .get(up.url("/api/v1/invoices/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/api/v1/invoices/7");
    assert_eq!(echo["seq"], 2);
}

#[tokio::test]
async fn upstream_status_answers_with_the_code() {
    let up = TestUpstream::start();
    let resp = client().get(up.url("/status/503")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), r#"{"status":503}"#);
    let resp = client().get(up.url("/status/204")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = client().get(up.url("/status/abc")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn upstream_bytes_are_deterministic_and_typed() {
    let up = TestUpstream::start();
    let resp = client().get(up.url("/bytes/5000")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["content-length"], "5000");
    let first = resp.bytes().await.unwrap();
    assert_eq!(first.len(), 5000);
    assert!(first.starts_with(b"[{\"id\":0,"));
    let resp = client()
        .get(up.url("/bytes/5000?type=text/csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv");
    assert_eq!(resp.bytes().await.unwrap(), first);
    let empty = client()
        .get(up.url("/bytes/0"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn upstream_slow_answers_after_waiting() {
    let up = TestUpstream::start();
    let resp = client().get(up.url("/slow/50")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow");
    assert_eq!(up.hits_for("/slow"), 1);
}

#[tokio::test]
async fn upstream_chunked_streams_without_length() {
    let up = TestUpstream::start();
    let resp = client()
        .get(up.url("/chunked?chunks=5&delay_ms=5&size=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert_eq!(resp.bytes().await.unwrap().len(), 1500);
}

#[tokio::test]
async fn upstream_headers_sets_response_headers() {
    let up = TestUpstream::start();
    let resp = client()
        .get(up.url("/headers?Cache-Control=max-age%3D60%2C%20public&Vary=X-A&Set-Cookie=a=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "max-age=60, public");
    assert_eq!(resp.headers()["vary"], "X-A");
    assert_eq!(resp.headers()["set-cookie"], "a=b");
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = client()
        .get(up.url("/headers?body_len=2000&status=201"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.bytes().await.unwrap().len(), 2000);
}

#[tokio::test]
async fn upstream_counts_hits_and_records_requests() {
    let up = TestUpstream::start();
    for path in ["/health", "/echo/a", "/echo/b", "/bytes/10"] {
        client()
            .get(up.url(path))
            .header("x-n", path)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(up.hits(), 3, "health checks are not counted as hits");
    assert_eq!(up.hits_for("/echo"), 2);
    assert_eq!(up.hits_for("/health"), 1);
    assert_eq!(up.seen().len(), 4);
    assert_eq!(up.last_seen("/echo").unwrap().headers["x-n"], "/echo/b");
    up.reset_hits();
    assert_eq!(up.hits(), 0);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn upstream_health_and_failure_switches() {
    let up = TestUpstream::start();
    assert_eq!(
        client()
            .get(up.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    up.set_healthy(false);
    assert_eq!(
        client()
            .get(up.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client().get(up.url("/echo")).send().await.unwrap().status(),
        200
    );
    up.set_healthy(true);

    up.fail_with(Some(502));
    assert_eq!(
        client().get(up.url("/echo")).send().await.unwrap().status(),
        502
    );
    assert_eq!(
        client()
            .get(up.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    up.fail_with(None);
    assert_eq!(
        client().get(up.url("/echo")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn upstream_kill_drops_connections_and_refuses_new_ones() {
    let up = TestUpstream::start();
    let in_flight = tokio::spawn(client().get(up.url("/slow/8000")).send());
    assert!(eventually(Duration::from_secs(5), || up.hits_for("/slow") == 1).await);
    let addr = up.addr;
    up.kill();
    assert!(!port_open(addr), "a killed upstream refuses connections");
    let result = in_flight.await.unwrap();
    assert!(
        result.is_err(),
        "the in-flight request loses its connection: {result:?}"
    );

    let revived = TestUpstream::start_on(addr);
    assert_eq!(
        client()
            .get(revived.url("/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        revived.hits(),
        1,
        "a revived upstream starts with fresh counters"
    );
}

#[test]
fn upstream_works_without_a_tokio_runtime_in_the_test() {
    let up = TestUpstream::start();
    assert_eq!(
        http_get(up.addr, "/health", Duration::from_secs(5)),
        Some((200, "ok".into()))
    );
}

// === Gateway helpers ===

#[test]
fn metric_in_sums_matching_series() {
    let text = r#"
# HELP omsgate_requests_total Requests.
# TYPE omsgate_requests_total counter
omsgate_requests_total{route="invoices",method="GET",status="2xx"} 3
omsgate_requests_total{route="invoices",method="POST",status="2xx"} 2
omsgate_requests_total{route="payments",method="GET",status="5xx"} 1
omsgate_requests_total_other 99
omsgate_in_flight 4
omsgate_duration_seconds_bucket{route="a, \"b\"",le="+Inf"} 7
"#;
    assert_eq!(metric_in(text, "omsgate_requests_total", &[]), Some(6.0));
    assert_eq!(
        metric_in(text, "omsgate_requests_total", &[("route", "invoices")]),
        Some(5.0)
    );
    assert_eq!(
        metric_in(
            text,
            "omsgate_requests_total",
            &[("route", "invoices"), ("method", "POST")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_in(text, "omsgate_requests_total", &[("route", "nope")]),
        None
    );
    assert_eq!(metric_in(text, "omsgate_in_flight", &[]), Some(4.0));
    assert_eq!(
        metric_in(
            text,
            "omsgate_duration_seconds_bucket",
            &[("route", "a, \"b\""), ("le", "+Inf")]
        ),
        Some(7.0)
    );
    assert_eq!(metric_in(text, "omsgate_missing", &[]), None);
}

#[test]
fn check_config_reports_exit_code_and_problems() {
    let (code, stderr) =
        Gateway::check_config("[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = Gateway::check_config("[server]\nlisten = \"nope\"\n");
    assert_eq!(code, 64);
    assert!(stderr.contains("server.listen"), "{stderr}");
}

#[tokio::test]
async fn gateway_starts_proxies_and_serves_admin_endpoints() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\n[admin]\nlisten = \"{{admin}}\"\n\
         [upstream]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let resp = client().get(gw.url("/echo?x=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits_for("/echo"), 1);
    assert_eq!(
        client()
            .get(gw.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(gw.metrics_text().contains("# TYPE"));
    // The public listener never serves admin endpoints.
    client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(
        up.hits_for("/metrics"),
        1,
        "/metrics on the public listener goes upstream"
    );

    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", gw.log());
}
