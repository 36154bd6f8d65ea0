//! The audit pipeline's metrics, registered once in the default Prometheus registry.
//!
//! (They move into the audit section of `src/metrics.rs` once that file exists.)

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

/// Every audit metric.
pub struct AuditMetrics {
    /// `omsgate_audit_records_total{outcome}`: queued, delivered, spooled, replayed, dropped,
    /// rejected. Outcomes are events, not exclusive states: a record can be queued, then
    /// spooled, then replayed.
    pub records: IntCounterVec,
    /// `omsgate_audit_queue_depth`: records in the in-memory queue.
    pub queue_depth: IntGauge,
    /// `omsgate_audit_spool_bytes`: bytes in the spool files.
    pub spool_bytes: IntGauge,
    /// `omsgate_audit_delivery_seconds`: from `Audit::record` to the Kafka acknowledgement, for
    /// records that were not spooled.
    pub delivery_seconds: Histogram,
    /// `omsgate_audit_kafka_errors_total{code}`: librdkafka errors by code name.
    pub kafka_errors: IntCounterVec,
    /// `omsgate_audit_spool_torn_records_total`: damaged spool records skipped on replay.
    pub spool_torn: IntCounter,
}

/// The audit metrics.
pub static METRICS: LazyLock<AuditMetrics> = LazyLock::new(|| {
    let m = AuditMetrics {
        records: IntCounterVec::new(
            Opts::new("omsgate_audit_records_total", "Audit records by outcome."),
            &["outcome"],
        )
        .expect("static metric definition"),
        queue_depth: IntGauge::new(
            "omsgate_audit_queue_depth",
            "Audit records waiting in the in-memory queue.",
        )
        .expect("static metric definition"),
        spool_bytes: IntGauge::new(
            "omsgate_audit_spool_bytes",
            "Bytes of audit records in the disk spool.",
        )
        .expect("static metric definition"),
        delivery_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "omsgate_audit_delivery_seconds",
                "Time from recording an audit record to its Kafka acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("static metric definition"),
        kafka_errors: IntCounterVec::new(
            Opts::new(
                "omsgate_audit_kafka_errors_total",
                "Kafka errors of the audit producer.",
            ),
            &["code"],
        )
        .expect("static metric definition"),
        spool_torn: IntCounter::new(
            "omsgate_audit_spool_torn_records_total",
            "Damaged or truncated audit spool records skipped on replay.",
        )
        .expect("static metric definition"),
    };
    let r = prometheus::default_registry();
    for c in [
        Box::new(m.records.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.queue_depth.clone()),
        Box::new(m.spool_bytes.clone()),
        Box::new(m.delivery_seconds.clone()),
        Box::new(m.kafka_errors.clone()),
        Box::new(m.spool_torn.clone()),
    ] {
        if let Err(e) = r.register(c) {
            tracing::error!(error = %e, "Audit metric registration failed.");
        }
    }
    m
});

/// Outcomes of `omsgate_audit_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pushed into the in-memory queue.
    Queued,
    /// Acknowledged by Kafka straight from the queue.
    Delivered,
    /// Written to the spool.
    Spooled,
    /// Acknowledged by Kafka from the spool.
    Replayed,
    /// Lost: the spool was full or could not be written. Always logged.
    Dropped,
    /// Refused by Kafka for good (e.g. too large); kept in `rejected.jsonl`. Always logged.
    Rejected,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Queued => "queued",
            Outcome::Delivered => "delivered",
            Outcome::Spooled => "spooled",
            Outcome::Replayed => "replayed",
            Outcome::Dropped => "dropped",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Counts `n` records with `outcome`.
pub fn count(outcome: Outcome, n: u64) {
    METRICS
        .records
        .with_label_values(&[outcome.as_str()])
        .inc_by(n);
}
