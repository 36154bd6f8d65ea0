//! The audit pipeline against the shared broker (`OMSGATE_TEST_KAFKA_BROKERS`): every record
//! arrives exactly once, the spool replays what an earlier process left (torn records counted),
//! file audit keeps everything, and shutdown under load keeps every record.

mod audit_common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_common::*;
use omsgate::audit::Audit;

#[test]
fn ten_thousand_records_arrive_exactly_once() {
    let brokers = kafka_brokers();
    let topic = unique("audit_10k");
    create_topic(&brokers, &topic, 3);
    let dir = TempDir::new("spool");
    let cfg = config(Some(&brokers), &topic, &dir.0, "");
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    let n = 10_000;
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let rec = record(&format!("{topic}-{i}"), i, &cfg);
        let t = Instant::now();
        audit.record(rec);
        slowest = slowest.max(t.elapsed());
    }
    let delivered = wait_until(Duration::from_secs(60), || {
        let s = audit.state().stats;
        s.delivered + s.replayed >= n as u64
    });
    let state = audit.state();
    running.shutdown();
    println!("slowest record() call: {slowest:?}; state: {state:?}");
    assert!(delivered, "not all acknowledged: {state:?}");
    assert_eq!(state.stats.dropped, 0);
    let got = consume_all(&brokers, &topic, 3, n, Duration::from_secs(60));
    let (dups, ids) = duplicates(&got);
    assert!(
        dups.is_empty(),
        "{} duplicates, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let want: BTreeSet<String> = (0..n).map(|i| format!("{topic}-{i}")).collect();
    assert!(ids == want, "{} missing", want.difference(&ids).count());
    for r in &got {
        let i: usize = r.id().rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(r.key, TENANTS[i % TENANTS.len()], "key is the tenant");
        assert_eq!(r.value["tenant"], TENANTS[i % TENANTS.len()]);
        assert_eq!(r.value["route"], "invoice");
        assert_eq!(r.value["status"], 200);
        assert_eq!(r.value["v"], 1);
        assert_eq!(r.value["gateway"], cfg.gateway_id.as_str());
        assert!(r.value["ts"].as_str().unwrap().ends_with('Z'));
        assert!(!r.value.to_string().contains("s3cret"));
    }
    // A tenant's records are in one partition, in order.
    for tenant in TENANTS {
        let parts: BTreeSet<i32> = got
            .iter()
            .filter(|r| r.key == tenant)
            .map(|r| r.partition)
            .collect();
        assert_eq!(parts.len(), 1, "{tenant} spans partitions {parts:?}");
        let seq: Vec<usize> = got
            .iter()
            .filter(|r| r.key == tenant)
            .map(|r| r.id().rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "{tenant}'s records are out of order"
        );
    }
}

#[test]
fn file_audit_without_brokers_keeps_every_record_in_the_spool() {
    let dir = TempDir::new("spool");
    let cfg = config(None, "unused", &dir.0, "queue_capacity = 100");
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    for i in 0..3000 {
        audit.record(record(&format!("file-{i}"), i, &cfg));
    }
    running.shutdown();
    // After shutdown, records still land in the spool (the request path appends them itself).
    for i in 3000..3100 {
        audit.record(record(&format!("file-{i}"), i, &cfg));
    }
    let s = audit.state();
    assert_eq!(s.stats.dropped, 0);
    assert_eq!(s.stats.spooled, 3100);
    assert!(!s.kafka_connected);
    // All of them, once each (when the queue overflows, the request path's records can land
    // before older queued ones: order holds only while the queue has room).
    let ids = spooled_ids(&dir.0);
    assert_eq!(ids.len(), 3100);
    let set: BTreeSet<String> = ids.into_iter().collect();
    assert!(
        set == (0..3100).map(|i| format!("file-{i}")).collect(),
        "ids differ"
    );
}

#[test]
fn a_spool_left_by_an_earlier_process_is_replayed_and_deleted() {
    let brokers = kafka_brokers();
    let topic = unique("audit_replay");
    create_topic(&brokers, &topic, 2);
    let dir = TempDir::new("spool");
    // First process: file audit only.
    {
        let cfg = config(None, &topic, &dir.0, "");
        let audit = Audit::new(&cfg).unwrap();
        let running = Running::start(&audit);
        for i in 0..2000 {
            audit.record(record(&format!("{topic}-{i}"), i, &cfg));
        }
        running.shutdown();
        assert_eq!(audit.state().stats.spooled, 2000);
    }
    // Second process: Kafka configured; the spool is replayed, then new records follow.
    let cfg = config(Some(&brokers), &topic, &dir.0, "");
    let audit = Audit::new(&cfg).unwrap();
    assert!(audit.state().spool_bytes > 0);
    let running = Running::start(&audit);
    for i in 2000..2500 {
        audit.record(record(&format!("{topic}-{i}"), i, &cfg));
    }
    let done = wait_until(Duration::from_secs(60), || {
        let s = audit.state();
        s.stats.delivered + s.stats.replayed >= 2500 && s.spool_bytes == 0
    });
    let state = audit.state();
    running.shutdown();
    assert!(done, "{state:?}");
    assert!(state.stats.replayed >= 2000, "{state:?}");
    let got = consume_all(&brokers, &topic, 2, 2500, Duration::from_secs(60));
    let (dups, ids) = duplicates(&got);
    assert!(dups.is_empty(), "{dups:?}");
    assert_eq!(ids.len(), 2500);
    // Spooled records come first: per tenant, order is kept across the replay.
    for tenant in TENANTS {
        let seq: Vec<usize> = got
            .iter()
            .filter(|r| r.key == tenant)
            .map(|r| r.id().rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "{tenant}'s records are out of order"
        );
    }
    assert!(
        spooled_ids(&dir.0).is_empty(),
        "replayed segments are deleted"
    );
}

#[test]
fn a_torn_last_record_is_skipped_and_counted_and_the_rest_replayed() {
    let brokers = kafka_brokers();
    let topic = unique("audit_torn");
    create_topic(&brokers, &topic, 1);
    let dir = TempDir::new("spool");
    {
        let cfg = config(None, &topic, &dir.0, "");
        let audit = Audit::new(&cfg).unwrap();
        let running = Running::start(&audit);
        for i in 0..100 {
            audit.record(record(&format!("{topic}-{i}"), i, &cfg));
        }
        running.shutdown();
    }
    // A crash cut the last write short.
    let seg = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 40)
        .unwrap();

    let cfg = config(Some(&brokers), &topic, &dir.0, "");
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    let done = wait_until(Duration::from_secs(60), || {
        let s = audit.state();
        s.stats.replayed >= 99 && s.stats.torn == 1 && s.spool_bytes == 0
    });
    let state = audit.state();
    running.shutdown();
    assert!(done, "{state:?}");
    assert_eq!(state.stats.torn, 1);
    let got = consume_all(&brokers, &topic, 1, 99, Duration::from_secs(30));
    let (dups, ids) = duplicates(&got);
    assert!(dups.is_empty());
    let want: BTreeSet<String> = (0..99).map(|i| format!("{topic}-{i}")).collect();
    assert!(ids == want, "{} missing", want.difference(&ids).count());
}

#[test]
fn shutdown_under_load_keeps_every_record_in_the_topic_or_the_spool() {
    let brokers = kafka_brokers();
    let topic = unique("audit_shutdown");
    create_topic(&brokers, &topic, 2);
    let dir = TempDir::new("spool");
    let cfg = config(Some(&brokers), &topic, &dir.0, "queue_capacity = 1000");
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (audit, stop, sent, cfg) = (audit.clone(), stop.clone(), sent.clone(), cfg.clone());
            let topic = topic.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    audit.record(record(&format!("{topic}-{w}-{i}"), i, &cfg));
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // SIGTERM: the service drains and flushes while requests are still being recorded.
    running.shutdown();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let total = sent.load(Ordering::Relaxed) as usize;
    let state = audit.state();
    assert_eq!(state.stats.dropped, 0);
    let spooled: BTreeSet<String> = spooled_ids(&dir.0).into_iter().collect();
    let got = consume_all(
        &brokers,
        &topic,
        2,
        total - spooled.len(),
        Duration::from_secs(60),
    );
    let (_, in_topic) = duplicates(&got);
    let mut all = in_topic.clone();
    all.extend(spooled.iter().cloned());
    println!(
        "recorded {total}: {} in the topic, {} in the spool; {state:?}",
        in_topic.len(),
        spooled.len()
    );
    assert_eq!(
        all.len(),
        total,
        "every record is in the topic or the spool"
    );
    assert!(
        !spooled.is_empty(),
        "records after shutdown went to the spool"
    );
}
