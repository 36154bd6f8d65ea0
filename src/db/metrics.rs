//! Metrics of the database concern (pool, pooled query paths, fallbacks), registered once in the
//! default Prometheus registry.
//!
//! They live here until `src/metrics.rs` exists on `main`; moving them there is a cut-and-paste.
//! Labels come from bounded sets only: [`super::QueryName`] and [`FallbackReason`].

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

/// Why a request bound to a pooled query went to the OMS instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No pooled connection free within `acquire_timeout`.
    PoolExhausted,
    /// The database could not be reached (or was recently unreachable).
    Unavailable,
    /// The query ran past `statement_timeout`.
    Timeout,
    /// The database returned an error.
    Error,
    /// The request has no verified tenant (decided by the proxy).
    NoTenant,
    /// The request is outside what the query path answers (e.g. a HEAD or an odd query string).
    Unsupported,
}

impl FallbackReason {
    /// Every reason, for pre-registering label values.
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::PoolExhausted,
        FallbackReason::Unavailable,
        FallbackReason::Timeout,
        FallbackReason::Error,
        FallbackReason::NoTenant,
        FallbackReason::Unsupported,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::PoolExhausted => "pool_exhausted",
            FallbackReason::Unavailable => "unavailable",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Error => "error",
            FallbackReason::NoTenant => "no_tenant",
            FallbackReason::Unsupported => "unsupported",
        }
    }
}

/// All database metrics.
pub struct DbMetrics {
    /// `omsgate_db_pool_connections`: connections currently open in the pool.
    pub pool_size: IntGauge,
    /// `omsgate_db_pool_idle_connections`: open connections not in use.
    pub pool_idle: IntGauge,
    /// `omsgate_db_pool_waiting`: requests waiting for a connection.
    pub pool_waiting: IntGauge,
    /// `omsgate_db_query_duration_seconds{query}`: pooled query time, acquire included.
    pub query_duration: HistogramVec,
    /// `omsgate_db_fallbacks_total{reason}`: requests bound to a pooled query that went to the
    /// OMS instead.
    pub fallbacks: IntCounterVec,
    /// `omsgate_db_errors_total`: database errors on the pooled path (connect, query, timeout).
    pub errors: IntCounter,
}

/// The database metrics (registered on first use).
pub static METRICS: Lazy<DbMetrics> = Lazy::new(|| {
    // Registration fails only on a duplicate name, which would be a programming error caught by
    // the first test that touches these metrics.
    let m = DbMetrics {
        pool_size: register_int_gauge!(
            "omsgate_db_pool_connections",
            "Connections currently open in the database pool."
        )
        .expect("register omsgate_db_pool_connections"),
        pool_idle: register_int_gauge!(
            "omsgate_db_pool_idle_connections",
            "Open database connections not in use."
        )
        .expect("register omsgate_db_pool_idle_connections"),
        pool_waiting: register_int_gauge!(
            "omsgate_db_pool_waiting",
            "Requests waiting for a pooled database connection."
        )
        .expect("register omsgate_db_pool_waiting"),
        query_duration: register_histogram_vec!(
            "omsgate_db_query_duration_seconds",
            "Time to answer a request from a pooled query path, connection acquire included.",
            &["query"],
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
        )
        .expect("register omsgate_db_query_duration_seconds"),
        fallbacks: register_int_counter_vec!(
            "omsgate_db_fallbacks_total",
            "Requests bound to a pooled query path that were sent to the OMS instead, by reason.",
            &["reason"]
        )
        .expect("register omsgate_db_fallbacks_total"),
        errors: register_int_counter!(
            "omsgate_db_errors_total",
            "Database errors on the pooled query path (connect, query, timeout)."
        )
        .expect("register omsgate_db_errors_total"),
    };
    for q in super::QueryName::ALL {
        m.query_duration.with_label_values(&[q.as_str()]);
    }
    for r in FallbackReason::ALL {
        m.fallbacks.with_label_values(&[r.as_str()]);
    }
    m
});

/// Counts a fallback to the OMS.
pub fn count_fallback(reason: FallbackReason) {
    METRICS
        .fallbacks
        .with_label_values(&[reason.as_str()])
        .inc();
}
