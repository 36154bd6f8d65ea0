//! Audit across instances (issue 20): two gateways, each with its own `gateway_id`, ship to
//! one topic of four partitions keyed by tenant, and two `audit-sink` processes in one consumer
//! group load it into `audit_events`: every request's record lands exactly once, from the
//! gateway that served it, and both members of the group take part. A private tansu broker and
//! the shared PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use omsgate::sim::DEMO_JWT_SECRET;

fn gateway_config(upstream: &TestUpstream, brokers: &str, topic: &str, id: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{upstream}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms" }}
overload = {{ max_in_flight = 64 }}
[identity]
mode = "jwt"
jwt_secret = "{DEMO_JWT_SECRET}"
[audit]
brokers = "{brokers}"
topic = "{topic}"
spool_dir = "spool-{id}"
linger = "5ms"
gateway_id = "{id}"
# One record per producer batch: tansu 0.6 answers a fetch from an offset inside a batch with
# the batches after it, so a member resuming mid-batch after a rebalance would skip records
# (docs/audit.md, "tansu caveat"); Kafka itself needs no such setting.
[audit.kafka_options]
"batch.num.messages" = "1"
"#,
        upstream = upstream.addr,
    )
}

/// One `audit-sink` member; its log (info) goes to `log`.
/// An `audit-sink` member, killed when dropped so that a failing test leaves none running.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sink(config: &std::path::Path, log: &std::path::Path) -> Member {
    let out = std::fs::File::create(log).expect("sink log");
    let err = out.try_clone().expect("sink log");
    Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(["audit-sink", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(Member)
        .expect("omsgate runs")
}

/// The partitions of the sink's last "Audit sink assigned partitions." line (empty before any).
fn assigned(log: &str) -> BTreeSet<i32> {
    let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("Audit sink assigned partitions."))
    else {
        return BTreeSet::new();
    };
    let Some(list) = line
        .split_once("partitions=[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(l, _)| l)
    else {
        return BTreeSet::new();
    };
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// `consumed=N` of the sink's closing "Audit sink stopped." line.
fn consumed(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("Audit sink stopped."))?;
    let at = line.find("consumed=")? + "consumed=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_two_sink_members_write_every_record_once() {
    let tansu = PrivateTansu::start();
    let brokers = tansu.brokers();
    let topic = unique("audit_scale");
    create_topic(&brokers, &topic, 4);
    let schema = unique("audit_scale");
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let count = |sql: String| {
        let db = &db;
        async move {
            db.query_one(&sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
        }
    };

    // The group's two members first, so that the partitions are shared between them.
    let dir = TestDir::new("audit-scale");
    let group = unique("sink_group");
    let mut sinks = Vec::new();
    for member in ["sink-1", "sink-2"] {
        let path = dir.path().join(format!("{member}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[audit]
brokers = "{brokers}"
topic = "{topic}"
spool_dir = "{}"
gateway_id = "{member}"
[audit.sink]
database_url = "{}"
group_id = "{group}"
batch_size = 20
batch_timeout = "100ms"
table = "{schema}.audit_events"
[audit.kafka_options]
"session.timeout.ms" = "6000"
"#,
                dir.path().join(format!("{member}-spool")).display(),
                database_url(),
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("{member}.log"));
        sinks.push((sink(&path, &log), log));
    }

    // Both members hold part of the topic (after the rebalance the second one's joining starts)
    // before any record is produced.
    let shared = wait_for(Duration::from_secs(60), || {
        let sets: Vec<BTreeSet<i32>> = sinks
            .iter()
            .map(|(_, log)| assigned(&std::fs::read_to_string(log).unwrap_or_default()))
            .collect();
        sets.iter().all(|s| !s.is_empty())
            && sets[0].is_disjoint(&sets[1])
            && sets[0].len() + sets[1].len() == 4
    });
    assert!(
        shared,
        "the group never shared the 4 partitions between its members:\n{}\n{}",
        std::fs::read_to_string(&sinks[0].1).unwrap_or_default(),
        std::fs::read_to_string(&sinks[1].1).unwrap_or_default()
    );

    let upstream = TestUpstream::start();
    let gateways = [
        Gateway::start(&gateway_config(&upstream, &brokers, &topic, "gw-a")),
        Gateway::start(&gateway_config(&upstream, &brokers, &topic, "gw-b")),
    ];
    let http = client();
    let tenants: Vec<String> = (0..8).map(|i| format!("tenant-{i}")).collect();
    let tokens: Vec<String> = tenants
        .iter()
        .map(|t| {
            omsgate::identity::issue_hs256(
                DEMO_JWT_SECRET,
                "tenant_id",
                t,
                "u1",
                Duration::from_secs(3600),
            )
        })
        .collect();
    let n = 400;
    let mut sent = BTreeSet::new();
    for i in 0..n {
        let gw = &gateways[i % 2];
        let id = format!("{topic}-{i}");
        let r = http
            .get(gw.url(&format!("/api/v1/invoices/{i}")))
            .bearer_auth(&tokens[i % tokens.len()])
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200);
        sent.insert(id);
    }

    let rows = format!("SELECT count(*) FROM {schema}.audit_events");
    let mut seen = 0;
    for _ in 0..1200 {
        seen = count(rows.clone()).await;
        if seen >= n as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen >= n as i64, "{seen} of {n} records in the table");
    // Give late duplicates a chance to show, then stop both members.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut logs = Vec::new();
    for (mut member, log) in sinks {
        send_signal(member.0.id(), "TERM");
        let status = member.0.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "audit-sink exits 0 on SIGTERM:\n{text}");
        logs.push(text);
    }

    assert_eq!(count(rows).await, n as i64, "every record exactly once");
    let got: BTreeSet<String> = db
        .query(
            &format!("SELECT client_request_id FROM {schema}.audit_events"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(got, sent, "the table holds exactly the requests sent");
    for gw in ["gw-a", "gw-b"] {
        assert_eq!(
            count(format!(
                "SELECT count(*) FROM {schema}.audit_events WHERE payload->>'gateway' = '{gw}'"
            ))
            .await,
            n as i64 / 2,
            "records of {gw}"
        );
    }
    let wrong = count(format!(
        "SELECT count(*) FROM {schema}.audit_events WHERE tenant_id IS DISTINCT FROM payload->>'tenant'"
    ))
    .await;
    assert_eq!(wrong, 0);
    // Both members of the group consumed part of the topic.
    let per_member: Vec<Option<u64>> = logs.iter().map(|l| consumed(l)).collect();
    assert!(
        per_member.iter().all(|c| c.is_some_and(|c| c > 0)),
        "records consumed per member: {per_member:?}\n{}\n{}",
        tail(&logs[0], 20),
        tail(&logs[1], 20)
    );
    assert!(per_member.iter().flatten().sum::<u64>() >= n as u64);
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
