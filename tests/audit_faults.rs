//! Audit pipeline fault tests, each against a private tansu broker it freezes, kills or
//! restarts: no record is lost, and duplicates stay within the documented bound (none while a
//! broker is frozen; after a restart, at most the records whose delivery failed in flight).

mod audit_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use audit_common::*;
use omsgate::audit::Audit;

#[test]
fn frozen_broker_loses_and_duplicates_nothing() {
    let broker = PrivateTansu::start();
    let brokers = broker.brokers();
    let topic = unique("audit_frozen");
    create_topic(&brokers, &topic, 2);
    let dir = TempDir::new("spool");
    let cfg = config(Some(&brokers), &topic, &dir.0, "");
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    let n = 5000;
    let mut slowest = Duration::ZERO;
    let mut record_n = |range: std::ops::Range<usize>, pause: Duration| {
        for i in range {
            let rec = record(&format!("{topic}-{i}"), i, &cfg);
            let t = Instant::now();
            audit.record(rec);
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(pause);
        }
    };
    record_n(0..1000, Duration::ZERO);
    assert!(wait_until(Duration::from_secs(30), || audit
        .state()
        .stats
        .delivered
        >= 1000));
    // Frozen for longer than delivery_timeout (2 s) while 4000 records flow.
    broker.freeze();
    record_n(1000..n, Duration::from_micros(1000));
    let away = audit.state();
    std::thread::sleep(Duration::from_secs(1));
    broker.thaw();
    let done = wait_until(Duration::from_secs(60), || {
        let s = audit.state();
        s.stats.delivered + s.stats.replayed >= n as u64 && s.spool_bytes == 0
    });
    let state = audit.state();
    running.shutdown();
    println!("slowest record() call: {slowest:?}; while frozen: {away:?}; after: {state:?}");
    assert!(done, "{state:?}");
    assert!(!away.kafka_connected, "Kafka counted as away while frozen");
    assert!(
        away.stats.spooled > 0,
        "records were spooled while Kafka was away"
    );
    assert_eq!(state.stats.dropped, 0);
    let got = consume_all(&brokers, &topic, 2, n, Duration::from_secs(60));
    let (dups, ids) = duplicates(&got);
    assert!(
        dups.is_empty(),
        "{} duplicates, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let want: BTreeSet<String> = (0..n).map(|i| format!("{topic}-{i}")).collect();
    assert!(ids == want, "{} missing", want.difference(&ids).count());
}

#[test]
fn broker_restarted_empty_gets_every_unacknowledged_record_again() {
    let mut broker = PrivateTansu::start();
    let brokers = broker.brokers();
    let topic = unique("audit_restart");
    create_topic(&brokers, &topic, 1);
    let dir = TempDir::new("spool");
    // tansu answers the old producer id with UNKNOWN_PRODUCER_ID, which librdkafka retries
    // forever: the stall watchdog recreates the producer.
    let mut cfg = config(Some(&brokers), &topic, &dir.0, "stall_timeout = \"6s\"");
    // Small producer batches, so that the duplicate bound below (records in flight per purge)
    // is smaller than the records at stake.
    cfg.kafka_options
        .insert("batch.num.messages".into(), "20".into());
    if let Ok(d) = std::env::var("AUDIT_TEST_RDKAFKA_DEBUG") {
        cfg.kafka_options.insert("debug".into(), d);
    }
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    for i in 0..500 {
        audit.record(record(&format!("{topic}-{i}"), i, &cfg));
    }
    assert!(wait_until(Duration::from_secs(30), || audit
        .state()
        .stats
        .delivered
        >= 500));
    // Acknowledged, then lost with the broker's memory: the broker's loss, not ours.
    broker.kill();
    for i in 500..1500 {
        audit.record(record(&format!("{topic}-{i}"), i, &cfg));
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    broker.restart();
    create_topic(&brokers, &topic, 1);
    let done = wait_until(Duration::from_secs(90), || {
        let s = audit.state();
        s.stats.delivered + s.stats.replayed >= 1500 && s.spool_bytes == 0 && s.in_flight == 0
    });
    let state = audit.state();
    running.shutdown();
    println!("{state:?}");
    assert!(done, "{state:?}");
    assert_eq!(state.stats.dropped, 0);
    // Counts after the shutdown, whose purge of the producer could make records uncertain too.
    let stats = audit.state().stats;
    let got = consume_all(&brokers, &topic, 1, 1000, Duration::from_secs(60));
    let (dups, ids) = duplicates(&got);
    let want: BTreeSet<String> = (500..1500).map(|i| format!("{topic}-{i}")).collect();
    let missing: Vec<_> = want.difference(&ids).take(5).collect();
    assert!(
        missing.is_empty(),
        "unacknowledged records missing after the restart: {missing:?}"
    );
    // The documented bound (docs/audit.md, "Duplicates"): only a record whose delivery failed
    // after it may have reached the broker (counted as uncertain) can be in the topic twice,
    // and each purge of the producer (each recreation, and the shutdown) makes at most the
    // records of its in-flight requests uncertain.
    let purges = stats.producers_recreated + 1;
    let ceiling = purges * records_in_flight_ceiling(&cfg, 1);
    println!(
        "{} duplicates; {} uncertain records; {} producer recreations; ceiling {ceiling}",
        dups.len(),
        stats.uncertain,
        stats.producers_recreated
    );
    assert!(
        dups.len() as u64 <= stats.uncertain,
        "{} duplicates but only {} records with an unknown fate: {:?}",
        dups.len(),
        stats.uncertain,
        &dups[..dups.len().min(5)]
    );
    assert!(
        stats.uncertain <= ceiling,
        "{} uncertain records, more than {purges} purges of at most {} in-flight records",
        stats.uncertain,
        records_in_flight_ceiling(&cfg, 1)
    );
}

#[test]
fn queue_of_ten_spills_to_the_spool_and_a_restart_replays_it() {
    let broker = PrivateTansu::start();
    let brokers = broker.brokers();
    let topic = unique("audit_spill");
    create_topic(&brokers, &topic, 2);
    let dir = TempDir::new("spool");
    let mut cfg = config(Some(&brokers), &topic, &dir.0, "queue_capacity = 10");
    cfg.shutdown_timeout = Duration::from_secs(1);
    // Small producer batches keep the duplicate bound below smaller than the records at stake.
    cfg.kafka_options
        .insert("batch.num.messages".into(), "50".into());
    let n = 3000;
    let first;
    {
        let audit = Audit::new(&cfg).unwrap();
        let running = Running::start(&audit);
        broker.freeze();
        for i in 0..n {
            audit.record(record(&format!("{topic}-{i}"), i, &cfg));
        }
        // Shut down while the broker is still frozen: what the producer holds is spooled.
        running.shutdown();
        let s = audit.state();
        first = s.stats;
        println!("first process: {s:?}");
        assert!(s.stats.spooled > 0, "the queue of 10 spilled to the spool");
        assert_eq!(s.stats.dropped, 0);
        assert!(s.spool_bytes > 0);
    }
    broker.thaw();
    let audit = Audit::new(&cfg).unwrap();
    let running = Running::start(&audit);
    let done = wait_until(Duration::from_secs(60), || audit.state().spool_bytes == 0);
    let state = audit.state();
    running.shutdown();
    assert!(done, "{state:?}");
    assert_eq!(state.stats.dropped, 0);
    let second = audit.state().stats;
    let got = consume_all(&brokers, &topic, 2, n, Duration::from_secs(60));
    let (dups, ids) = duplicates(&got);
    // Records the first process's producer had sent into the frozen broker's socket were
    // stored after the thaw *and* spooled at shutdown (their fate was unknown): such duplicates
    // are allowed, within the documented bound (docs/audit.md, "Duplicates"); missing records
    // are not.
    let uncertain = first.uncertain + second.uncertain;
    let purges = first.producers_recreated + second.producers_recreated + 2;
    let ceiling = purges * records_in_flight_ceiling(&cfg, 2);
    println!(
        "{} duplicates; {uncertain} uncertain records (first process {}, second {}); ceiling {ceiling}",
        dups.len(),
        first.uncertain,
        second.uncertain
    );
    assert!(
        dups.len() as u64 <= uncertain,
        "{} duplicates but only {uncertain} records with an unknown fate",
        dups.len()
    );
    assert!(
        uncertain <= ceiling,
        "{uncertain} uncertain records, ceiling {ceiling}"
    );
    let want: BTreeSet<String> = (0..n).map(|i| format!("{topic}-{i}")).collect();
    assert!(ids == want, "{} missing", want.difference(&ids).count());
}
