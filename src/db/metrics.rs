//! How the database concern reports into the metrics of `src/metrics.rs` (section "database"):
//! the bounded set of fallback reasons and the helpers that update the counters and gauges, so
//! that every fallback is counted in one place.

use crate::metrics::{DB_ERRORS, DB_FALLBACKS, DB_POOL, DB_QUERY_DURATION};

/// Why a request bound to a pooled query went to the OMS instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No pooled connection free within `acquire_timeout`.
    PoolTimeout,
    /// The database could not be reached (or was unreachable moments ago).
    Unavailable,
    /// The query ran past `statement_timeout`.
    Timeout,
    /// The database returned an error.
    Error,
    /// The request has no verified tenant (decided by the proxy).
    NoTenant,
    /// The request is outside what the query path answers (e.g. an unknown query name).
    Unsupported,
}

impl FallbackReason {
    /// Every reason, for pre-registering label values.
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::PoolTimeout,
        FallbackReason::Unavailable,
        FallbackReason::Timeout,
        FallbackReason::Error,
        FallbackReason::NoTenant,
        FallbackReason::Unsupported,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::PoolTimeout => "pool_timeout",
            FallbackReason::Unavailable => "db_unavailable",
            FallbackReason::Timeout => "db_timeout",
            FallbackReason::Error => "db_error",
            FallbackReason::NoTenant => "no_tenant",
            FallbackReason::Unsupported => "unsupported",
        }
    }
}

/// Registers every label value, so that `/metrics` lists them at zero from the start.
pub fn init() {
    for r in FallbackReason::ALL {
        DB_FALLBACKS.with_label_values(&[r.as_str()]);
    }
    for s in ["size", "idle", "waiting"] {
        DB_POOL.with_label_values(&[s]);
    }
}

/// Counts a request that went to the OMS instead of the pool.
pub fn count_fallback(reason: FallbackReason) {
    DB_FALLBACKS.with_label_values(&[reason.as_str()]).inc();
}

/// Counts a database error on the pooled path.
pub fn count_error() {
    DB_ERRORS.inc();
}

/// Records how long a pooled query took.
pub fn observe_query(query: &str, seconds: f64) {
    DB_QUERY_DURATION
        .with_label_values(&[query])
        .observe(seconds);
}

/// Registers a configured query's duration series, so that `/metrics` lists it from the start.
pub fn register_query(query: &str) {
    DB_QUERY_DURATION.with_label_values(&[query]);
}

/// Sets the pool gauges from the pool's status.
pub fn set_pool(status: &deadpool_postgres::Status) {
    DB_POOL.with_label_values(&["size"]).set(status.size as i64);
    DB_POOL
        .with_label_values(&["idle"])
        .set(status.available as i64);
    DB_POOL
        .with_label_values(&["waiting"])
        .set(status.waiting as i64);
}
