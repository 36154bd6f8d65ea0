//! The audit background service: the Kafka producer, the replayer and the spool's upkeep.
//!
//! One task owns everything but the producer's delivery callback, which runs on the producer's
//! polling thread and only counts, spools failed records and updates [`Health`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::spool::{Flush, Frame, Next, SegmentReader};
use super::{Inner, Outcome, Queued};
use crate::metrics::{AUDIT_DELIVERY, AUDIT_KAFKA_ERRORS, AUDIT_QUEUE_DEPTH, AUDIT_SPOOL_BYTES};

/// How often the service looks after the producer, the replayer and the spool.
const TICK: Duration = Duration::from_millis(50);
/// Records taken from the queue at once.
const BATCH: usize = 1024;
/// After draining the queue, the service waits this long before it takes records again, so
/// that records accumulate instead of each one waking the service (a cross-thread wake-up per
/// request cost more than the record itself). Adds at most this much to a record's delivery.
const PAUSE: Duration = Duration::from_millis(5);
/// Records sent to probe an away Kafka.
const PROBE: u64 = 10;

/// Kafka errors that retrying cannot fix: the record is kept in `rejected.jsonl` and counted
/// as rejected instead of being spooled and replayed forever.
const PERMANENT: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::InvalidMessageSize,
    RDKafkaErrorCode::InvalidRecord,
];

/// The background service of an [`super::Audit`]. Hand it to Pingora as a background service.
pub struct AuditService {
    inner: Arc<Inner>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
}

impl AuditService {
    pub(super) fn new(inner: Arc<Inner>) -> AuditService {
        let rx = inner.rx.lock().take();
        AuditService {
            inner,
            rx: Mutex::new(rx),
        }
    }
}

#[async_trait]
impl BackgroundService for AuditService {
    /// Ships records until `shutdown`, then drains the queue, flushes the producer with
    /// `shutdown_timeout` and spools whatever is unacknowledged.
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(rx) = self.rx.lock().take() else {
            if self.inner.config.enabled {
                warn!("Audit service started twice; the second one does nothing.");
            }
            return;
        };
        if self.inner.spool.is_none() {
            return;
        }
        self.inner.health.started.store(true, Ordering::Relaxed);
        // The process waits for this service's shutdown flush (up to `server.shutdown_grace`).
        let _flushing = crate::lifecycle::FlushGuard::new();
        let mut shipper = Shipper::new(self.inner.clone());
        shipper.run(rx, shutdown).await;
        self.inner.health.stopped.store(true, Ordering::Relaxed);
    }
}

// === Delivery callback ===

/// Where a record handed to the producer came from.
enum Origin {
    /// From the queue, recorded at this instant.
    Live(Instant),
    /// From a spool segment.
    Replay(Arc<SegTrack>),
}

/// Replay progress of one spool segment.
#[derive(Debug)]
struct SegTrack {
    id: u64,
    /// Records handed to the producer.
    sent: AtomicU64,
    /// Records acknowledged, rejected, or spooled again.
    handled: AtomicU64,
    /// Whether the reader reached the end of the segment.
    fully_read: AtomicBool,
}

struct ShipperContext {
    inner: Arc<Inner>,
    /// When each error code was last logged: librdkafka repeats connection errors on every
    /// reconnect attempt, so each code is logged at most every [`ERROR_LOG_EVERY`].
    logged: Mutex<HashMap<String, Instant>>,
}

const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

fn code_label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"))
}

impl ClientContext for ShipperContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        AUDIT_KAFKA_ERRORS
            .with_label_values(&[&code_label(code)])
            .inc();
        if code == Some(RDKafkaErrorCode::Fatal) {
            // (Fatal errors usually arrive with their underlying code; the shipper also polls
            // `fatal_error()`.)
            self.inner.health.fatal.store(true, Ordering::Relaxed);
            error!(%error, reason, "Kafka audit producer hit a fatal error; it will be recreated.");
        } else {
            let label = code_label(code);
            let mut logged = self.logged.lock();
            if logged
                .get(&label)
                .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
            {
                logged.insert(label, Instant::now());
                drop(logged);
                warn!(%error, reason, "Kafka audit producer error (repeats of this code are counted, logged every 10s).");
            }
        }
    }
}

impl ProducerContext for ShipperContext {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let inner = &*self.inner;
        let h = &inner.health;
        // Saturating: a recreated producer resets the count while late reports may still come.
        let _ = h
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        match result {
            Ok(_) => {
                h.last_progress_ms.store(h.now_ms(), Ordering::Relaxed);
                if h.away.swap(false, Ordering::Relaxed) {
                    info!("Kafka acknowledges audit records again; replaying the spool.");
                }
                match *origin {
                    Origin::Live(at) => {
                        inner.count(Outcome::Delivered, 1);
                        AUDIT_DELIVERY
                            .with_label_values(&["direct"])
                            .observe(at.elapsed().as_secs_f64());
                    }
                    Origin::Replay(seg) => {
                        inner.count(Outcome::Replayed, 1);
                        seg.handled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err((error, msg)) => {
                let code = error.rdkafka_error_code();
                AUDIT_KAFKA_ERRORS
                    .with_label_values(&[&code_label(code)])
                    .inc();
                let key = msg.key().unwrap_or_default();
                let payload = msg.payload().unwrap_or_default();
                let replay = matches!(*origin, Origin::Replay(_));
                let kept = if code.is_some_and(|c| PERMANENT.contains(&c)) {
                    reject(inner, payload, error);
                    true
                } else {
                    h.last_failure_ms.store(h.now_ms(), Ordering::Relaxed);
                    h.failures.fetch_add(1, Ordering::Relaxed);
                    *h.last_error.lock() = error.to_string();
                    // Purged before it was sent: the broker cannot have it. Any other failure
                    // (purged in flight, a transient error) leaves its fate unknown, and the
                    // copy re-sent from the spool may be a second one.
                    if code != Some(RDKafkaErrorCode::PurgeQueue) {
                        inner.count(Outcome::Uncertain, 1);
                    }
                    // A replayed record is already counted in the spool's size: let it pass the
                    // limit, its old segment will be deleted.
                    inner.spool_bytes(key, payload, Flush::Now, replay, "")
                };
                if let (true, Origin::Replay(seg)) = (kept, &*origin) {
                    seg.handled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Counts a producer purged and recreated.
fn count_recreation(inner: &Inner) {
    inner
        .stats
        .producers_recreated
        .fetch_add(1, Ordering::Relaxed);
    crate::metrics::AUDIT_PRODUCER_RECREATIONS.inc();
}

/// Keeps a record Kafka refuses for good in `rejected.jsonl`, counted and logged.
fn reject(inner: &Inner, payload: &[u8], error: &KafkaError) {
    use std::io::Write;
    let Some(spool) = &inner.spool else { return };
    let path = spool.dir().join("rejected.jsonl");
    let written = std::os::unix::fs::OpenOptionsExt::mode(&mut std::fs::OpenOptions::new(), 0o600)
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&[payload, b"\n"].concat()));
    inner.count(Outcome::Rejected, 1);
    error!(
        %error,
        file = %path.display(),
        written = written.is_ok(),
        "Kafka refused an audit record for good; it is kept in the rejected file."
    );
}

// === Shipper ===

struct Reading {
    track: Arc<SegTrack>,
    reader: SegmentReader,
    /// A record read but not accepted by the producer yet, and its offset.
    pending: Option<(u64, Frame)>,
}

struct Shipper {
    inner: Arc<Inner>,
    producer: Option<ThreadedProducer<ShipperContext>>,
    reading: Option<Reading>,
    tracks: Vec<Arc<SegTrack>>,
    last_sync: Instant,
    last_create: Option<Instant>,
    failures_logged: u64,
}

impl Shipper {
    fn new(inner: Arc<Inner>) -> Shipper {
        Shipper {
            inner,
            producer: None,
            reading: None,
            tracks: Vec::new(),
            last_sync: Instant::now(),
            last_create: None,
            failures_logged: 0,
        }
    }

    fn kafka(&self) -> bool {
        self.inner.config.brokers.is_some()
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Queued>, mut shutdown: ShutdownWatch) {
        let c = &self.inner.config;
        info!(
            brokers = c.brokers.as_deref().unwrap_or("none (file audit)"),
            topic = %c.topic,
            spool_dir = %c.spool_dir.display(),
            spool_bytes = self.inner.spool.as_ref().map_or(0, |s| s.bytes()),
            "Audit service started."
        );
        if self.kafka() {
            self.ensure_producer();
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        let mut pause = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() {
                        // The server is gone without a signal: shut down all the same.
                        break;
                    }
                }
                _ = tick.tick() => self.maintain(),
                n = async {
                    if pause {
                        tokio::time::sleep(PAUSE).await;
                    }
                    rx.recv_many(&mut batch, BATCH).await
                } => {
                    if n == 0 {
                        break;
                    }
                    // A full batch: more are waiting, take them at once; otherwise pause.
                    pause = n < BATCH;
                    for q in batch.drain(..) {
                        self.route(q);
                    }
                    self.flush_spool();
                }
            }
        }
        self.shutdown(rx).await;
    }

    /// Sends one queued record to Kafka, or spools it when Kafka cannot take it in order now.
    fn route(&mut self, q: Queued) {
        let json = q.rec.to_json();
        let key = q.rec.key();
        if !self.live_ok() {
            self.inner
                .spool_bytes(key, &json, Flush::Later, false, &q.rec.request_id);
            return;
        }
        let Some(producer) = &self.producer else {
            return;
        };
        let h = &self.inner.health;
        if h.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            h.last_progress_ms.store(h.now_ms(), Ordering::Relaxed);
        }
        let record =
            BaseRecord::with_opaque_to(&self.inner.config.topic, Box::new(Origin::Live(q.at)))
                .key(key)
                .payload(&json);
        if let Err((error, _)) = producer.send(record) {
            h.in_flight.fetch_sub(1, Ordering::Relaxed);
            let code = error.rdkafka_error_code();
            if code.is_some_and(|c| PERMANENT.contains(&c)) {
                reject(&self.inner, &json, &error);
                return;
            }
            if code != Some(RDKafkaErrorCode::QueueFull) {
                AUDIT_KAFKA_ERRORS
                    .with_label_values(&[&code_label(code)])
                    .inc();
            }
            self.inner
                .spool_bytes(key, &json, Flush::Later, false, &q.rec.request_id);
        }
    }

    /// Whether a new record may go straight to Kafka: the producer is healthy and nothing older
    /// waits in the spool.
    fn live_ok(&self) -> bool {
        let h = &self.inner.health;
        self.producer.is_some()
            && !h.fatal.load(Ordering::Relaxed)
            && !h.away.load(Ordering::Relaxed)
            && self.reading.is_none()
            && (h.in_flight.load(Ordering::Relaxed) as usize) < self.inner.config.max_in_flight
            && !self.inner.spool.as_ref().is_some_and(|s| s.has_unread())
    }

    fn flush_spool(&self) {
        if let Some(spool) = &self.inner.spool {
            if let Err(e) = spool.flush() {
                error!(error = %e, "Audit spool write failed.");
            }
            self.inner.count_lost();
        }
    }

    /// Periodic upkeep: producer health, replay, segment deletion, fsync, gauges.
    fn maintain(&mut self) {
        let inner = self.inner.clone();
        AUDIT_QUEUE_DEPTH.set(inner.queue_depth() as i64);
        if self.kafka() {
            // librdkafka reports a fatal error through the error callback with the underlying
            // code (e.g. OutOfOrderSequenceNumber), so ask the client itself every tick.
            let fatal = self
                .producer
                .as_ref()
                .is_some_and(|p| p.client().fatal_error().is_some());
            if fatal || inner.health.fatal.load(Ordering::Relaxed) {
                self.recreate_producer("fatal producer error");
            } else if self.producer.is_some() && self.stalled() > inner.config.stall_timeout {
                self.recreate_producer("no acknowledgement within audit.stall_timeout");
            }
            if self.producer.is_none() {
                self.ensure_producer();
            }
            self.check_away();
            self.replay();
            self.reap();
            self.log_failures();
        }
        self.flush_spool();
        if let (Some(spool), super::Fsync::Interval(every)) = (&inner.spool, inner.config.fsync) {
            if self.last_sync.elapsed() >= every {
                self.last_sync = Instant::now();
                if let Err(e) = spool.sync() {
                    error!(error = %e, "Audit spool fsync failed.");
                }
                inner.count_lost();
            }
        }
        AUDIT_SPOOL_BYTES.set(inner.spool.as_ref().map_or(0, |s| s.bytes()) as i64);
    }

    fn ensure_producer(&mut self) {
        if self
            .last_create
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.last_create = Some(Instant::now());
        let ctx = ShipperContext {
            inner: self.inner.clone(),
            logged: Mutex::new(HashMap::new()),
        };
        match self.inner.config.producer_config().create_with_context(ctx) {
            Ok(p) => {
                self.producer = Some(p);
                self.inner.health.producer_up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                error!(error = %e, "Kafka audit producer cannot be created; records are spooled.");
            }
        }
    }

    /// Replaces a producer that hit a fatal error or stalled. Purging it fails its records;
    /// their delivery reports spool them again, and the new producer replays them.
    fn recreate_producer(&mut self, reason: &str) {
        let h = &self.inner.health;
        if let Some(p) = self.producer.take() {
            let fatal = p.client().fatal_error();
            error!(
                reason,
                fatal = ?fatal,
                unacknowledged = p.in_flight_count(),
                "Recreating the Kafka audit producer; its unacknowledged records are spooled and \
                 re-sent."
            );
            count_recreation(&self.inner);
            p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            let _ = p.flush(Duration::from_secs(2));
            drop(p);
        }
        h.producer_up.store(false, Ordering::Relaxed);
        h.fatal.store(false, Ordering::Relaxed);
        h.in_flight.store(0, Ordering::Relaxed);
        h.away.store(true, Ordering::Relaxed);
        h.last_failure_ms.store(h.now_ms(), Ordering::Relaxed);
        self.last_create = None;
        self.ensure_producer();
    }

    /// How long records have waited in the producer without any acknowledgement (zero when
    /// none is waiting).
    fn stalled(&self) -> Duration {
        let h = &self.inner.health;
        if h.in_flight.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        let ms = h
            .now_ms()
            .saturating_sub(h.last_progress_ms.load(Ordering::Relaxed));
        Duration::from_millis(ms)
    }

    /// Marks Kafka away when it left records unacknowledged for `delivery_timeout`.
    fn check_away(&self) {
        let h = &self.inner.health;
        if self.stalled() > self.inner.config.delivery_timeout
            && !h.away.swap(true, Ordering::Relaxed)
        {
            warn!(
                unacknowledged = h.in_flight.load(Ordering::Relaxed),
                delivery_timeout = ?self.inner.config.delivery_timeout,
                "Kafka has not acknowledged audit records in time; spooling new records until it does."
            );
        }
    }

    fn log_failures(&mut self) {
        let h = &self.inner.health;
        let failures = h.failures.load(Ordering::Relaxed);
        if failures > self.failures_logged {
            warn!(
                records = failures - self.failures_logged,
                last_error = %h.last_error.lock(),
                "Kafka failed to take audit records; they were spooled for replay."
            );
            self.failures_logged = failures;
        }
    }

    /// Sends spooled records, oldest first, as far as the window allows; while Kafka is away
    /// only a few, as a probe, once nothing is pending.
    fn replay(&mut self) {
        let Some(producer) = &self.producer else {
            return;
        };
        let Some(spool) = &self.inner.spool else {
            return;
        };
        let h = &self.inner.health;
        let now = h.now_ms();
        let in_flight = h.in_flight.load(Ordering::Relaxed);
        let window = (self.inner.config.max_in_flight as u64 / 2).clamp(1, 50_000);
        let backoff = self
            .inner
            .config
            .delivery_timeout
            .min(Duration::from_secs(1))
            .as_millis() as u64;
        let mut budget = if h.away.load(Ordering::Relaxed) {
            let quiet = now.saturating_sub(h.last_failure_ms.load(Ordering::Relaxed)) >= backoff
                && now.saturating_sub(h.last_progress_ms.load(Ordering::Relaxed)) >= backoff;
            if in_flight == 0 && quiet {
                PROBE
            } else {
                0
            }
        } else {
            window.saturating_sub(in_flight)
        };
        while budget > 0 {
            if self.reading.is_none() {
                match spool.next_segment() {
                    Ok(Some((id, path, offset))) => match SegmentReader::open(&path, offset) {
                        Ok(reader) => {
                            let track = Arc::new(SegTrack {
                                id,
                                sent: AtomicU64::new(0),
                                handled: AtomicU64::new(0),
                                fully_read: AtomicBool::new(false),
                            });
                            self.tracks.push(track.clone());
                            self.reading = Some(Reading {
                                track,
                                reader,
                                pending: None,
                            });
                        }
                        Err(e) => {
                            error!(segment = id, error = %e, "Audit spool segment cannot be read; it is left in place.");
                            continue;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        error!(error = %e, "Audit spool cannot be rotated for replay.");
                        return;
                    }
                }
            }
            let Some(r) = self.reading.as_mut() else {
                return;
            };
            let (offset, frame) = match r.pending.take() {
                Some(p) => p,
                None => {
                    let offset = r.reader.offset();
                    match r.reader.next_frame() {
                        Ok(Next::Record(f)) => (offset, f),
                        Ok(Next::Torn {
                            offset,
                            skipped,
                            resumable,
                        }) => {
                            self.inner.torn(r.track.id, offset, skipped, resumable);
                            continue;
                        }
                        Ok(Next::End) => {
                            r.track.fully_read.store(true, Ordering::Relaxed);
                            self.reading = None;
                            continue;
                        }
                        Err(e) => {
                            error!(segment = r.track.id, error = %e, "Audit spool segment read failed; it is left in place.");
                            self.reading = None;
                            return;
                        }
                    }
                }
            };
            r.track.sent.fetch_add(1, Ordering::Relaxed);
            if h.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
                h.last_progress_ms.store(h.now_ms(), Ordering::Relaxed);
            }
            let record = BaseRecord::with_opaque_to(
                &self.inner.config.topic,
                Box::new(Origin::Replay(r.track.clone())),
            )
            .key(&frame.key)
            .payload(&frame.payload);
            match producer.send(record) {
                Ok(()) => budget -= 1,
                Err((error, _)) => {
                    h.in_flight.fetch_sub(1, Ordering::Relaxed);
                    r.track.sent.fetch_sub(1, Ordering::Relaxed);
                    let code = error.rdkafka_error_code();
                    if code.is_some_and(|c| PERMANENT.contains(&c)) {
                        reject(&self.inner, &frame.payload, &error);
                        r.track.sent.fetch_add(1, Ordering::Relaxed);
                        r.track.handled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if code != Some(RDKafkaErrorCode::QueueFull) {
                        AUDIT_KAFKA_ERRORS
                            .with_label_values(&[&code_label(code)])
                            .inc();
                    }
                    r.pending = Some((offset, frame));
                    return;
                }
            }
        }
    }

    /// Deletes segments whose records are all handled.
    fn reap(&mut self) {
        let Some(spool) = &self.inner.spool else {
            return;
        };
        self.tracks.retain(|t| {
            let done = t.fully_read.load(Ordering::Relaxed)
                && t.handled.load(Ordering::Relaxed) >= t.sent.load(Ordering::Relaxed);
            if !done {
                return true;
            }
            if let Err(e) = spool.remove(t.id) {
                error!(segment = t.id, error = %e, "Replayed audit spool segment cannot be deleted.");
            }
            false
        });
    }

    async fn shutdown(&mut self, mut rx: mpsc::Receiver<Queued>) {
        let started = Instant::now();
        // Requests still being served record as usual while they finish (for at most
        // `shutdown_timeout`); only then is the queue closed.
        while crate::lifecycle::in_flight() > 0
            && started.elapsed() < self.inner.config.shutdown_timeout
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            while let Ok(q) = rx.try_recv() {
                self.route(q);
            }
            self.maintain();
        }
        // From here on `Audit::record` finds the queue closed and spools records itself.
        rx.close();
        let mut drained = 0u64;
        while let Ok(q) = rx.try_recv() {
            self.route(q);
            drained += 1;
        }
        self.flush_spool();
        let mut unacknowledged = 0;
        if let Some(p) = self.producer.take() {
            let timeout = self.inner.config.shutdown_timeout;
            // Flushing blocks; keep it off the async workers. Dropping the producer purges
            // what is left, and the delivery reports spool it.
            let flushed = tokio::task::spawn_blocking(move || {
                let r = p.flush(timeout);
                let left = p.in_flight_count();
                drop(p);
                (r, left)
            })
            .await;
            match flushed {
                Ok((Ok(()), _)) => {}
                Ok((Err(e), left)) => {
                    unacknowledged = left;
                    warn!(
                        error = %e,
                        unacknowledged = left,
                        timeout = ?timeout,
                        "Kafka did not acknowledge every audit record before the shutdown deadline; the rest is spooled."
                    );
                }
                Err(e) => error!(error = %e, "Audit producer flush task failed."),
            }
            self.inner
                .health
                .producer_up
                .store(false, Ordering::Relaxed);
        }
        self.reap();
        if let (Some(spool), Some(r)) = (&self.inner.spool, &self.reading) {
            // Everything read from this segment is now acknowledged or spooled again: the next
            // process starts after it instead of sending it twice.
            let offset = r
                .pending
                .as_ref()
                .map_or_else(|| r.reader.offset(), |(o, _)| *o);
            if r.track.handled.load(Ordering::Relaxed) >= r.track.sent.load(Ordering::Relaxed) {
                if let Err(e) = spool.checkpoint(r.track.id, offset) {
                    warn!(segment = r.track.id, error = %e, "Audit spool replay position cannot be saved; the segment will be replayed from its start.");
                }
            }
        }
        if let Some(spool) = &self.inner.spool {
            if let Err(e) = spool.sync() {
                error!(error = %e, "Audit spool fsync failed at shutdown.");
            }
            self.inner.count_lost();
        }
        let s = self.inner.stats();
        info!(
            drained,
            unacknowledged,
            queued = s.queued,
            delivered = s.delivered,
            spooled = s.spooled,
            replayed = s.replayed,
            dropped = s.dropped,
            spool_bytes = self.inner.spool.as_ref().map_or(0, |s| s.bytes()),
            took = ?started.elapsed(),
            "Audit service stopped."
        );
    }
}
