//! Audit (DESIGN.md capability 6): one record per request, shipped to Kafka without the
//! request path ever waiting, spooled to disk while Kafka is away, never silently lost.
//!
//! ```text
//! logging phase ── Audit::record ──try_send──▶ bounded queue ──▶ AuditService (background)
//!                       │ queue full / service stopped                │
//!                       ▼                                             ├─▶ producer ─▶ Kafka
//!                   spool (sync append)  ◀── Kafka away / failed ─────┤      ▲
//!                       └──────────────────── replayer (in order) ────┴──────┘
//! ```
//!
//! * [`Audit::record`] never awaits: it pushes into a bounded queue, and when the queue is full
//!   (or the service has stopped) it appends the record to the spool itself, synchronously,
//!   under a mutex (a buffered write of a few hundred bytes; with `fsync = "always"` also an
//!   fsync). That keeps every record without an unbounded buffer and without a second queue.
//! * [`AuditService`] (a Pingora background service, so the producer and its threads exist
//!   only after Pingora forks) owns the idempotent `rdkafka` producer, the replayer and the
//!   spool's periodic fsync. Records the producer holds are never expired by it
//!   (`message.timeout.ms = 0`): it retries them idempotently, so a slow or frozen broker
//!   produces no duplicates. When Kafka leaves records unacknowledged for `delivery_timeout`,
//!   it counts as away and new records go to the spool; the replayer drains the spool in order
//!   once Kafka acknowledges again, and while the spool is not empty new records join it, so a
//!   tenant's records keep their order.
//! * A fatal producer error (e.g. a broker that lost its producer ids) purges the producer —
//!   its records are spooled — and a new producer replays them.
//! * Shutdown: the queue is drained, the producer flushed with `shutdown_timeout`, whatever is
//!   still unacknowledged is spooled (and replayed by the next process).
//! * The only loss: the spool is full (`spool_max_bytes`) or cannot be written. Such records
//!   are counted as `dropped` and logged at error level.
//!
//! Delivery is at least once. Duplicates arise only when a delivery fails after the record may
//! have reached the broker — the producer purged (shutdown deadline, fatal error, stall) with
//! records in flight that the broker did store — and the record is spooled and re-sent: such
//! records are counted as `uncertain`, which bounds the duplicates (docs/audit.md), or when a
//! crash replays a partly sent spool segment. A broker that acknowledges records and then loses
//! them (a restarted in-memory broker) loses them: that is the broker's loss. `audit-sink`
//! deduplicates on `event_id`.
//!
//! Without `brokers` ("file audit") the spool is the destination: records stay in its
//! segment files, which a later run with `brokers` set replays.

mod config;
mod record;
mod service;
pub mod spool;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;

pub use config::{
    AuditConfig, AuditFile, FieldPath, Fsync, RouteAudit, RouteAuditFile, SinkConfig, SinkFile,
    NEVER_RECORDED, REFUSED_KAFKA_OPTIONS,
};
pub use record::{
    format_rfc3339_micros, redact_body, redact_query, AuditRecord, REDACTED, SCHEMA_VERSION,
};
pub use service::AuditService;

use spool::{AppendError, Flush, Spool};

/// Why the audit pipeline could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool directory cannot be used.
    #[error("audit spool directory {dir}: {source} (check audit.spool_dir)")]
    Spool {
        /// The directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The audit pipeline's handle: cheap to clone, shared by the proxy and the background service.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

/// What the proxy pushes: the record and when it was pushed (for the delivery histogram).
struct Queued {
    at: Instant,
    rec: AuditRecord,
}

struct Inner {
    config: AuditConfig,
    tx: mpsc::Sender<Queued>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// `None` when audit is disabled.
    spool: Option<Spool>,
    stats: Stats,
    health: Health,
    drop_log: Mutex<DropLog>,
}

#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Counts of one [`Audit`] (the Prometheus counters add up all instances of the process).
#[derive(Debug, Default)]
struct Stats {
    queued: AtomicU64,
    delivered: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    torn: AtomicU64,
    uncertain: AtomicU64,
    producers_recreated: AtomicU64,
}

/// Kafka's state as the shipper sees it (shared with the producer's delivery callback).
#[derive(Debug)]
struct Health {
    started: AtomicBool,
    stopped: AtomicBool,
    producer_up: AtomicBool,
    away: AtomicBool,
    fatal: AtomicBool,
    in_flight: AtomicU64,
    /// Milliseconds since `epoch` of the last acknowledgement (or of the first send after
    /// the producer became idle).
    last_progress_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last failed delivery.
    last_failure_ms: AtomicU64,
    /// Failed deliveries (spooled for replay), for the shipper's summary log line.
    failures: AtomicU64,
    /// The last delivery error.
    last_error: Mutex<String>,
    epoch: Instant,
}

impl Health {
    fn new() -> Health {
        Health {
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            producer_up: AtomicBool::new(false),
            away: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Outcomes of `omsgate_audit_records_total` (see [`crate::metrics::AUDIT_RECORDS`]).
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
    /// Failed after it may have reached the broker (purged while in flight, or a transient
    /// error), so spooled and re-sent: the only records that can be in the topic twice (short
    /// of a crash). Also counted as `spooled`.
    Uncertain,
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
            Outcome::Uncertain => "uncertain",
        }
    }
}

/// A snapshot of the counts of one [`Audit`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records pushed into the queue.
    pub queued: u64,
    /// Records acknowledged by Kafka from the queue.
    pub delivered: u64,
    /// Records written to the spool (from the request path, the shipper or a failed delivery).
    pub spooled: u64,
    /// Records acknowledged by Kafka from the spool.
    pub replayed: u64,
    /// Records lost (spool full or unwritable).
    pub dropped: u64,
    /// Records Kafka refused for good, kept in `rejected.jsonl`.
    pub rejected: u64,
    /// Damaged spool records skipped on replay.
    pub torn: u64,
    /// Records whose delivery failed after they may have reached the broker (spooled and
    /// re-sent): an upper bound of the duplicates in the topic, short of a crash.
    pub uncertain: u64,
    /// Times the producer was purged and recreated (fatal error or stall).
    pub producers_recreated: u64,
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// `enabled = false`.
    Disabled,
    /// No brokers: the spool files are the destination.
    File,
    /// Kafka, with the spool as fallback.
    Kafka,
}

/// The pipeline's state for `/ready` and tests.
#[derive(Debug, Clone)]
pub struct AuditState {
    /// Where records go.
    pub mode: AuditMode,
    /// Whether the background service runs (started and not stopped).
    pub running: bool,
    /// Kafka mode: the producer exists and Kafka acknowledges (not away).
    pub kafka_connected: bool,
    /// Records in the queue.
    pub queue_depth: usize,
    /// Records handed to the producer and not yet acknowledged.
    pub in_flight: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Counts since start.
    pub stats: AuditStats,
}

impl AuditState {
    /// The `/ready` entry: `state` is `connected`, `away` (Kafka not acknowledging: records are
    /// spooled), `file` (no brokers), `stopped` or `disabled`.
    pub fn ready_json(&self) -> serde_json::Value {
        let state = match self.mode {
            AuditMode::Disabled => "disabled",
            _ if !self.running => "stopped",
            AuditMode::File => "file",
            AuditMode::Kafka if self.kafka_connected => "connected",
            AuditMode::Kafka => "away",
        };
        serde_json::json!({
            "state": state,
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "spool_bytes": self.spool_bytes,
            "dropped": self.stats.dropped,
        })
    }
}

impl Audit {
    /// Sets the pipeline up: the queue and the spool directory (opened and locked, its segments
    /// listed). Creates no thread and no Kafka client; [`Audit::background`] does that once
    /// the server runs.
    pub fn new(config: &AuditConfig) -> Result<Audit, AuditError> {
        let spool = if config.enabled {
            Some(
                Spool::open(
                    &config.spool_dir,
                    config.spool_max_bytes,
                    config.spool_segment_bytes,
                    config.fsync,
                )
                .map_err(|source| AuditError::Spool {
                    dir: config.spool_dir.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        // Register the audit metrics now, not on the first request.
        for outcome in [
            "queued",
            "delivered",
            "spooled",
            "replayed",
            "dropped",
            "rejected",
            "uncertain",
        ] {
            crate::metrics::AUDIT_RECORDS.with_label_values(&[outcome]);
        }
        once_cell::sync::Lazy::force(&crate::metrics::AUDIT_SPOOL_TORN);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        Ok(Audit {
            inner: Arc::new(Inner {
                config: config.clone(),
                tx,
                rx: Mutex::new(Some(rx)),
                spool,
                stats: Stats::default(),
                health: Health::new(),
                drop_log: Mutex::new(DropLog::default()),
            }),
        })
    }

    /// A pipeline that records nothing (`enabled = false`).
    pub fn disabled() -> Audit {
        let config = AuditConfig {
            enabled: false,
            ..AuditConfig::default()
        };
        // Without a spool nothing can fail.
        Audit::new(&config).unwrap_or_else(|_| unreachable!("a disabled audit opens no spool"))
    }

    /// The configuration.
    pub fn config(&self) -> &AuditConfig {
        &self.inner.config
    }

    /// Records one request. Never awaits and never waits on Kafka: the record goes into the
    /// bounded queue, or — when the queue is full or the service has stopped — is appended to
    /// the spool right here. Fills `gateway` and `event_id` (a fresh UUIDv7) when empty.
    pub fn record(&self, mut rec: AuditRecord) {
        let inner = &*self.inner;
        if !inner.config.enabled {
            return;
        }
        if rec.event_id.is_empty() {
            rec.event_id = uuid::Uuid::now_v7().to_string();
        }
        if rec.gateway.is_empty() {
            rec.gateway.clone_from(&inner.config.gateway_id);
        }
        match inner.tx.try_send(Queued {
            at: Instant::now(),
            rec,
        }) {
            Ok(()) => inner.count(Outcome::Queued, 1),
            Err(mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) => {
                inner.spool_record(&q.rec, Flush::Now);
            }
        }
    }

    /// The background service that ships the records; hand it to Pingora
    /// (`background_service("audit", audit.background())`). Only the first call gets the
    /// queue; later ones return a service that does nothing.
    pub fn background(&self) -> AuditService {
        AuditService::new(self.inner.clone())
    }

    /// The state for `/ready`.
    pub fn state(&self) -> AuditState {
        let inner = &*self.inner;
        let h = &inner.health;
        let mode = match (&inner.spool, &inner.config.brokers) {
            (None, _) => AuditMode::Disabled,
            (Some(_), None) => AuditMode::File,
            (Some(_), Some(_)) => AuditMode::Kafka,
        };
        let running = h.started.load(Ordering::Relaxed) && !h.stopped.load(Ordering::Relaxed);
        AuditState {
            mode,
            running,
            kafka_connected: mode == AuditMode::Kafka
                && running
                && h.producer_up.load(Ordering::Relaxed)
                && !h.away.load(Ordering::Relaxed)
                && !h.fatal.load(Ordering::Relaxed),
            queue_depth: inner.queue_depth(),
            in_flight: h.in_flight.load(Ordering::Relaxed),
            spool_bytes: inner.spool.as_ref().map_or(0, Spool::bytes),
            stats: inner.stats(),
        }
    }
}

impl Inner {
    fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    fn stats(&self) -> AuditStats {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditStats {
            queued: l(&s.queued),
            delivered: l(&s.delivered),
            spooled: l(&s.spooled),
            replayed: l(&s.replayed),
            dropped: l(&s.dropped),
            rejected: l(&s.rejected),
            torn: l(&s.torn),
            uncertain: l(&s.uncertain),
            producers_recreated: l(&s.producers_recreated),
        }
    }

    /// Counts `n` records with `outcome`, in this instance and in Prometheus.
    fn count(&self, outcome: Outcome, n: u64) {
        let s = &self.stats;
        let a = match outcome {
            Outcome::Queued => &s.queued,
            Outcome::Delivered => &s.delivered,
            Outcome::Spooled => &s.spooled,
            Outcome::Replayed => &s.replayed,
            Outcome::Dropped => &s.dropped,
            Outcome::Rejected => &s.rejected,
            Outcome::Uncertain => &s.uncertain,
        };
        a.fetch_add(n, Ordering::Relaxed);
        crate::metrics::AUDIT_RECORDS
            .with_label_values(&[outcome.as_str()])
            .inc_by(n);
    }

    /// Appends a record to the spool, counting it as spooled, or as dropped when the spool is
    /// full or unwritable.
    fn spool_record(&self, rec: &AuditRecord, flush: Flush) {
        self.spool_bytes(rec.key(), &rec.to_json(), flush, false, &rec.request_id);
    }

    /// Appends serialized bytes; returns whether they were kept.
    fn spool_bytes(
        &self,
        key: &[u8],
        payload: &[u8],
        flush: Flush,
        over_limit: bool,
        request_id: &str,
    ) -> bool {
        let Some(spool) = &self.spool else {
            return false;
        };
        let kept = match spool.append(key, payload, flush, over_limit) {
            Ok(()) => {
                self.count(Outcome::Spooled, 1);
                true
            }
            Err(e) => {
                self.dropped(&e, request_id);
                false
            }
        };
        self.count_lost();
        kept
    }

    /// Counts (as dropped) and logs the records the spool accepted earlier but could not
    /// write (a full disk): they were counted as spooled and are lost all the same.
    fn count_lost(&self) {
        let Some(spool) = &self.spool else { return };
        let lost = spool.take_lost();
        if lost == 0 {
            return;
        }
        self.count(Outcome::Dropped, lost);
        tracing::error!(
            records = lost,
            spool_dir = %spool.dir().display(),
            "Audit records DROPPED: the spool accepted them but could not write them (disk full?)."
        );
    }

    /// Counts and logs a lost record: the only loss path. Logged at error level, at most once a
    /// second with the number of records lost since the previous line.
    fn dropped(&self, error: &AppendError, request_id: &str) {
        self.count(Outcome::Dropped, 1);
        let mut log = self.drop_log.lock();
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t).as_secs() < 1)
        {
            log.suppressed += 1;
            return;
        }
        let also = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        let dir = self
            .spool
            .as_ref()
            .map(|s| s.dir().display().to_string())
            .unwrap_or_default();
        tracing::error!(
            %error,
            request_id,
            also_dropped_since_last_line = also,
            spool_dir = %dir,
            "Audit record DROPPED: it could not be queued, sent or spooled."
        );
    }

    fn torn(&self, segment: u64, offset: u64, skipped: u64, resumable: bool) {
        self.stats.torn.fetch_add(1, Ordering::Relaxed);
        crate::metrics::AUDIT_SPOOL_TORN.inc();
        tracing::warn!(
            segment,
            offset,
            skipped_bytes = skipped,
            rest_of_segment_readable = resumable,
            "Damaged audit spool record skipped (a write cut short by a crash, or a bad checksum)."
        );
    }
}
