//! Recording of `omsgate loadtest` results: one HDR histogram per request kind (route and
//! read/write) for a run, and one per sample interval for the time series.
//!
//! Every latency is measured from the request's *intended* send time (its place in the
//! open-model schedule), not from when it actually left: a target that stalls is charged for
//! the requests that should have gone out during the stall (no coordinated omission).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency recorded, µs (one hour); longer values are clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// The kinds of request in the mix, which are also the report's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /api/v1/invoices/{id}`.
    InvoiceRead,
    /// `GET /api/v1/invoices?...`.
    InvoiceList,
    /// `GET /api/v1/payments?...`.
    PaymentList,
    /// `PATCH /api/v1/invoices/{id}`.
    InvoiceWrite,
}

impl RequestKind {
    /// All kinds, in the order of `[mix]`'s weights.
    pub const ALL: [RequestKind; 4] = [
        RequestKind::InvoiceRead,
        RequestKind::InvoiceList,
        RequestKind::PaymentList,
        RequestKind::InvoiceWrite,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::InvoiceRead => "invoice_read",
            RequestKind::InvoiceList => "invoice_list",
            RequestKind::PaymentList => "payment_list",
            RequestKind::InvoiceWrite => "invoice_write",
        }
    }

    /// Whether it changes data.
    pub fn is_write(self) -> bool {
        matches!(self, RequestKind::InvoiceWrite)
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx/3xx answer; `cached` when `x-cache` said HIT or STALE.
    Ok {
        /// Served from the gateway's cache.
        cached: bool,
    },
    /// A 4xx/5xx answer (its status) or a connection error (0).
    Error(u16),
    /// No answer within the timeout (counted at the time it had waited).
    Timeout,
}

/// Counters and a histogram.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Latencies, µs from the intended send time.
    pub hist: Histogram<u64>,
    /// Errors (status ≥ 400 or connection errors).
    pub errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Answers served from the cache.
    pub cached: u64,
    /// Errors by status (0: connection or protocol error).
    pub error_statuses: BTreeMap<u16, u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
            errors: 0,
            timeouts: 0,
            cached: 0,
            error_statuses: BTreeMap::new(),
        }
    }
}

impl Bucket {
    /// Adds one request.
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_US);
        let _ = self.hist.record(us);
        match outcome {
            Outcome::Ok { cached: true } => self.cached += 1,
            Outcome::Ok { cached: false } => {}
            Outcome::Error(status) => {
                self.errors += 1;
                *self.error_statuses.entry(status).or_default() += 1;
            }
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    /// Adds another bucket.
    pub fn merge(&mut self, other: &Bucket) {
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.cached += other.cached;
        for (status, n) in &other.error_statuses {
            *self.error_statuses.entry(*status).or_default() += n;
        }
    }

    /// The summary row.
    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        let ms = |us: u64| us as f64 / 1000.0;
        let n = h.len();
        let q = |p: f64| {
            if n == 0 {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        Summary {
            requests: n,
            errors: self.errors,
            timeouts: self.timeouts,
            cached: self.cached,
            error_statuses: self
                .error_statuses
                .iter()
                .map(|(s, n)| {
                    (
                        if *s == 0 {
                            "connection".to_string()
                        } else {
                            s.to_string()
                        },
                        *n,
                    )
                })
                .collect(),
            mean_ms: if n == 0 { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if n == 0 { 0.0 } else { ms(h.max()) },
        }
    }
}

/// Latency summary of a set of requests (ms from the intended send time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Requests (answered, failed or timed out).
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Served from the cache (`x-cache: HIT|STALE`).
    pub cached: u64,
    /// Errors by status (`"503"`, or `"connection"` for connection and protocol errors).
    pub error_statuses: BTreeMap<String, u64>,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// What a run records: per kind for the whole run, and a window for the time series.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_kind: BTreeMap<RequestKind, Bucket>,
    window: Bucket,
}

impl Recorder {
    /// Records one finished request.
    pub fn record(&self, kind: RequestKind, latency: Duration, outcome: Outcome) {
        let mut s = self.inner.lock();
        s.by_kind.entry(kind).or_default().record(latency, outcome);
        s.window.record(latency, outcome);
    }

    /// Takes the current window (requests finished since the last call) and starts a new one.
    pub fn take_window(&self) -> Bucket {
        std::mem::take(&mut self.inner.lock().window)
    }

    /// The per-kind buckets of the run so far.
    pub fn by_kind(&self) -> BTreeMap<RequestKind, Bucket> {
        self.inner.lock().by_kind.clone()
    }
}

/// Per-kind buckets folded into reads, writes and all.
pub fn fold(by_kind: &BTreeMap<RequestKind, Bucket>) -> (Bucket, Bucket, Bucket) {
    let (mut reads, mut writes, mut all) =
        (Bucket::default(), Bucket::default(), Bucket::default());
    for (kind, b) in by_kind {
        if kind.is_write() {
            writes.merge(b);
        } else {
            reads.merge(b);
        }
        all.merge(b);
    }
    (reads, writes, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_in_milliseconds_with_errors_and_timeouts_counted() {
        let r = Recorder::default();
        for _ in 0..98 {
            r.record(
                RequestKind::InvoiceRead,
                Duration::from_millis(10),
                Outcome::Ok { cached: true },
            );
        }
        r.record(
            RequestKind::InvoiceRead,
            Duration::from_millis(1000),
            Outcome::Error(503),
        );
        r.record(
            RequestKind::InvoiceWrite,
            Duration::from_secs(30),
            Outcome::Timeout,
        );
        let (reads, writes, all) = fold(&r.by_kind());
        let s = reads.summary();
        assert_eq!((s.requests, s.errors, s.cached), (99, 1, 98));
        assert!((s.p50_ms - 10.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(s.error_statuses["503"], 1);
        assert_eq!(writes.summary().timeouts, 1);
        assert_eq!(all.summary().requests, 100);
        assert_eq!(r.take_window().hist.len(), 100);
        assert_eq!(r.take_window().hist.len(), 0);
    }
}
