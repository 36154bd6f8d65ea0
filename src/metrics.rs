//! Every Prometheus metric of omsgate, registered once, in one place (DESIGN.md capability 7).
//!
//! Metrics live in the process-wide default registry so that every module, Pingora's own
//! metrics and the admin `/metrics` endpoint see one set. Labels come from bounded sets only:
//! route names from config, status classes, fixed outcome words, server addresses from config
//! — never raw paths, tenant ids or error strings.
//!
//! Sections follow the pipeline: core HTTP, upstream, identity, cache, compression, rate limit,
//! audit, database, config.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Gauge, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

/// Histogram buckets for request latencies, in seconds: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

macro_rules! counter_vec {
    ($name:literal, $help:literal, $labels:expr) => {
        Lazy::new(|| {
            register_int_counter_vec!($name, $help, $labels).expect(concat!("register ", $name))
        })
    };
}
macro_rules! histogram_vec {
    ($name:literal, $help:literal, $labels:expr) => {
        Lazy::new(|| {
            register_histogram_vec!($name, $help, $labels, LATENCY_BUCKETS.to_vec())
                .expect(concat!("register ", $name))
        })
    };
}
macro_rules! gauge {
    ($name:literal, $help:literal) => {
        Lazy::new(|| register_int_gauge!($name, $help).expect(concat!("register ", $name)))
    };
}
macro_rules! gauge_vec {
    ($name:literal, $help:literal, $labels:expr) => {
        Lazy::new(|| {
            register_int_gauge_vec!($name, $help, $labels).expect(concat!("register ", $name))
        })
    };
}

// === core HTTP ===

/// Requests by route, method and status class (`2xx`, `4xx`, ...).
pub static HTTP_REQUESTS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_http_requests_total",
    "HTTP requests served, by route, method and status class.",
    &["route", "method", "status"]
);
/// Request duration by route, from request start to the last byte sent.
pub static HTTP_DURATION: Lazy<HistogramVec> = histogram_vec!(
    "omsgate_http_request_duration_seconds",
    "Time from request start to the end of the response, by route.",
    &["route"]
);
/// Requests in flight.
pub static IN_FLIGHT: Lazy<IntGauge> = gauge!(
    "omsgate_in_flight_requests",
    "Requests currently being served."
);
/// Build information.
pub static BUILD_INFO: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_build_info",
    "Build information; the value is always 1.",
    &["version"]
);
/// Process uptime in seconds, set at scrape time.
pub static UPTIME: Lazy<Gauge> = Lazy::new(|| {
    register_gauge!(
        "omsgate_uptime_seconds",
        "Seconds since the process started."
    )
    .expect("register omsgate_uptime_seconds")
});

// === upstream ===

/// Upstream response time by route (time to the response header).
pub static UPSTREAM_DURATION: Lazy<HistogramVec> = histogram_vec!(
    "omsgate_upstream_duration_seconds",
    "Time from sending the request upstream to receiving the response header, by route.",
    &["route"]
);
/// Health of each upstream server (1 healthy, 0 down), set at scrape time.
pub static UPSTREAM_HEALTHY: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_upstream_healthy",
    "Whether the active health check considers the upstream server healthy (1) or not (0).",
    &["server"]
);
/// Upstream failures by kind (`connect`, `timeout`, `other`). There is no `no_healthy` any more:
/// with no healthy server left, panic mode uses them all (`UPSTREAM_PANIC_TOTAL`).
pub static UPSTREAM_ERRORS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_upstream_errors_total",
    "Upstream failures by kind: connect, timeout, other.",
    &["kind"]
);
/// Retries of idempotent requests by reason: `connect` (connecting failed), `reused_closed` (a
/// reused keepalive connection closed before any response byte: the keep-alive race).
pub static UPSTREAM_RETRIES: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_upstream_retries_total",
    "Idempotent requests retried, by reason: connect, reused_closed.",
    &["reason"]
);
/// Request bodies by what became of them (`server.body_timeout`): `read_ahead` (read whole
/// before the request took an OMS slot), `read_ahead_then_streamed` (chunked, longer than
/// 64 KiB: its first part read ahead, the rest streamed), `streamed` (a `Content-Length` over
/// 64 KiB or `Expect`: streamed to the OMS), `timed_out` (not in time: answered 408).
pub static REQUEST_BODIES: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_request_bodies_total",
    "Request bodies by outcome: read_ahead (read whole before taking an OMS slot), \
     read_ahead_then_streamed (chunked, first 64 KiB read ahead), streamed, timed_out (408).",
    &["outcome"]
);
/// Requests shed by overload protection, by route and reason (`queue_full`, `queue_timeout`,
/// `lock_wait`);
/// each was answered 503 with `Retry-After`, or from a stale cached copy.
pub static UPSTREAM_SHED: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_upstream_shed_total",
    "Requests shed before reaching the upstream (503 or stale copy), by route and reason: \
     queue_full, queue_timeout, lock_wait.",
    &["route", "reason"]
);
/// Passive-health ejections per server.
pub static UPSTREAM_EJECTIONS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_upstream_ejections_total",
    "Upstream servers ejected from selection after consecutive failures of real requests.",
    &["server"]
);
/// Times the pool entered panic mode.
pub static UPSTREAM_PANIC_TOTAL: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_upstream_panic_total",
        "Times too few upstream servers were healthy and every server was used (panic mode)."
    )
    .expect("register omsgate_upstream_panic_total")
});
/// Whether the pool is in panic mode (1) or not (0).
pub static UPSTREAM_PANIC: Lazy<IntGauge> = gauge!(
    "omsgate_upstream_panic",
    "Whether the upstream pool is in panic mode (1): every server is used, healthy or not."
);
/// Requests in flight per server, set at scrape time.
pub static UPSTREAM_IN_FLIGHT: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_upstream_in_flight",
    "Requests in flight to each upstream server.",
    &["server"]
);
/// Requests waiting for a slot per server, set at scrape time.
pub static UPSTREAM_QUEUE: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_upstream_queue_depth",
    "Requests waiting for a free slot at each upstream server.",
    &["server"]
);
/// The limit of requests in flight per server (0 = unlimited), set at scrape time.
pub static UPSTREAM_LIMIT: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_upstream_limit",
    "Current limit of requests in flight to each upstream server (0: unlimited).",
    &["server"]
);

// === identity ===

/// Identity resolution results ([`crate::identity::Rejection::as_str`]): `verified`, `none`
/// (mode none), `no_credential`, `malformed`, `expired`, `not_yet_valid`, `bad_signature`,
/// `alg_not_allowed`, `unknown_kid`, `no_key_set`, `wrong_issuer`, `wrong_audience`,
/// `unknown_api_key`, `no_tenant`, `bad_claim`, `untrusted_peer` (trusted headers from a peer
/// outside `trusted_proxies`, ignored), `duplicate_header` (a trusted header sent twice, refused).
pub static IDENTITY: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_identity_total",
    "Identity resolution per request: verified, none (mode none), or why there is no identity (no_credential, malformed, expired, not_yet_valid, bad_signature, alg_not_allowed, unknown_kid, no_key_set, wrong_issuer, wrong_audience, unknown_api_key, no_tenant, bad_claim, untrusted_peer, duplicate_header).",
    &["result"]
);
/// Key set (JWKS) refreshes by outcome: `ok`, `error` (connect, TLS, HTTP), `bad_status`,
/// `timeout`, `invalid` (not a usable key set). A failure keeps the last good set.
pub static JWKS_REFRESH: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_jwks_refresh_total",
    "Key set (JWKS) refreshes by outcome: ok, error, bad_status, timeout, invalid; a failure keeps the last good set.",
    &["outcome"]
);
/// Age of the key set in force, set at scrape time; -1 while none has been loaded.
pub static JWKS_AGE: Lazy<Gauge> = Lazy::new(|| {
    register_gauge!(
        "omsgate_jwks_age_seconds",
        "Age of the key set (JWKS) in force in seconds; -1 while none has been loaded, 0 without jwks_url/jwks_file."
    )
    .expect("register omsgate_jwks_age_seconds")
});
/// Reloads of the API key file after it changed: `ok`, `invalid` (previous keys kept).
pub static API_KEYS_RELOADS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_identity_api_keys_reloads_total",
    "Reloads of the API key file after it changed: ok, invalid (the previous keys stay).",
    &["outcome"]
);

/// Requests refused before they reach the OMS, by reason. Path canonicalisation (`canonical`):
/// `encoded_slash`, `encoded_nul`, `bad_encoding`, `outside_root` (400), `bad_param` (404, a
/// typed path parameter that does not parse). Identity (`proxy::Gateway::refuse`, 400):
/// `connection_nominates_credential` (a `Connection` header names a credential or identity
/// header), `duplicate_identity_header` (`mode = "header"`: a trusted header sent twice).
pub static REQUESTS_REFUSED: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_requests_refused_total",
    "Requests refused before they reach the OMS, by reason: a path with no canonical form or a bad typed parameter (see canonical::Refusal), connection_nominates_credential, duplicate_identity_header.",
    &["reason"]
);

// === cache ===

/// Cache lookups by route and result (`hit`, `miss`, `stale`, `bypass`, `expired`).
pub static CACHE_REQUESTS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_requests_total",
    "Cache lookups by route and result: hit, miss, stale, bypass, expired.",
    &["route", "result"]
);
/// Cache hits that waited on the cache lock while another request filled the entry.
pub static CACHE_COLLAPSED: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_collapsed_total",
    "Cache hits that waited on the cache lock for another request's fill (request collapsing), by route; also counted as hit in omsgate_cache_requests_total.",
    &["route"]
);
/// Fresh L1 hits answered by the fast path, without Pingora's cache state machine.
pub static CACHE_FAST_HITS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_fast_hits_total",
    "Fresh in-memory (L1) cache hits answered by the fast path, without Pingora's cache state machine, by route; also counted as hit in omsgate_cache_requests_total.",
    &["route"]
);
/// Responses stored in the cache, by route.
pub static CACHE_STORES: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_store_total",
    "Responses stored in the cache, by route.",
    &["route"]
);
/// Invalidations by source (`write`, `purge`, `remote`).
pub static CACHE_INVALIDATIONS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_invalidations_total",
    "Cache invalidations by source: write (a write through the gateway), purge (admin), remote (another instance).",
    &["source"]
);
/// Cache backend errors and timeouts by backend (`redis`, `memory`).
pub static CACHE_BACKEND_ERRORS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_backend_errors_total",
    "Cache backend errors or timeouts (each one a bypass, never a client error), by backend.",
    &["backend"]
);
/// Redis answers refusing a command because its keys span several cluster slots, by concern
/// (`cache`, `rate_limit`): always a bug in the key layout (every script's keys share a hash
/// tag), so it should stay 0.
pub static REDIS_CROSSSLOT: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_redis_crossslot_errors_total",
    "Redis CROSSSLOT answers (keys of one command in several cluster slots), by concern; should stay 0.",
    &["concern"]
);
/// Bytes held by the in-process L1 cache.
pub static CACHE_L1_BYTES: Lazy<IntGauge> = gauge!(
    "omsgate_cache_l1_bytes",
    "Bytes held by the in-process L1 cache."
);
/// Entries held by the in-process L1 cache.
pub static CACHE_L1_ENTRIES: Lazy<IntGauge> = gauge!(
    "omsgate_cache_l1_entries",
    "Entries held by the in-process L1 cache."
);
/// L1 hits for clients that do not accept the stored gzip coding, by how the decoded body was
/// had: `made` (gunzipped and kept next to the entry), `reused` (the kept copy), `skipped`
/// (larger than `cache.max_body` or not valid gzip: decoded while streaming instead).
pub static CACHE_DECODED: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_cache_decoded_copies_total",
    "L1 hits for clients that do not accept gzip: made (a decoded copy was kept), reused (served from the kept copy), skipped (too large or not gzip; decoded while streaming).",
    &["result"]
);

// === compression ===

/// Bytes before (`in`) and after (`out`) compression, by algorithm.
pub static COMPRESSION_BYTES: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_compression_bytes_total",
    "Response bytes before (direction=in) and after (direction=out) compression, by algorithm.",
    &["algorithm", "direction"]
);

// === rate limit ===

/// Rejected requests by route and policy.
pub static RATE_LIMITED: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_rate_limited_total",
    "Requests rejected with 429, by route and policy.",
    &["route", "policy"]
);
/// Limiter checks by result (`allowed`, `limited`, `exempt`, `error_allowed`, `error_denied`).
pub static RATE_LIMIT_CHECKS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_rate_limit_checks_total",
    "Rate-limit checks by result: allowed, limited, exempt, error_allowed, error_denied.",
    &["result"]
);
/// Keys held by the local limiters; in distributed mode the distinct keys this process checked
/// within each policy's period.
pub static RATE_LIMIT_KEYS: Lazy<IntGauge> = gauge!(
    "omsgate_rate_limit_keys",
    "Rate-limit keys: held by the local limiters, or (distributed mode) distinct keys this instance checked within each policy's period."
);
/// `header:NAME` rate-limit key parts by result: `keyed` (the value keyed the bucket) or
/// `too_long` (above `header_key_max_bytes`: keyed by the client IP instead).
pub static RATE_LIMIT_HEADER_KEYS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_rate_limit_header_keys_total",
    "header:NAME rate-limit key parts by result: keyed, too_long (keyed by client IP instead).",
    &["result"]
);
/// Distributed limiter backend errors or timeouts.
pub static RATE_LIMIT_BACKEND_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_rate_limit_backend_errors_total",
        "Redis errors or timeouts of the distributed rate limiter (on_backend_error applied)."
    )
    .expect("register omsgate_rate_limit_backend_errors_total")
});
/// Local limiter resets: a policy held more than `rate_limit.max_keys` active keys (added by the
/// rate-limit concern).
pub static RATE_LIMIT_KEY_RESETS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_rate_limit_key_resets_total",
        "Local rate-limit policies reset because they held more than rate_limit.max_keys active keys."
    )
    .expect("register omsgate_rate_limit_key_resets_total")
});

// === audit ===

/// Audit records by outcome (`queued`, `delivered`, `spooled`, `replayed`, `dropped`,
/// `rejected`). Outcomes are events, not exclusive states: a record can be queued, spooled and
/// replayed. `dropped` (spool full or unwritable) is the only loss; `rejected` (refused by Kafka
/// for good, e.g. too large) is kept in the spool directory's `rejected.jsonl`.
pub static AUDIT_RECORDS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_audit_records_total",
    "Audit records by outcome: queued, delivered, spooled, replayed, dropped, rejected, uncertain.",
    &["outcome"]
);
/// Records waiting in the in-memory audit queue.
pub static AUDIT_QUEUE_DEPTH: Lazy<IntGauge> = gauge!(
    "omsgate_audit_queue_depth",
    "Audit records waiting in the in-memory queue."
);
/// Bytes held in the audit spool.
pub static AUDIT_SPOOL_BYTES: Lazy<IntGauge> = gauge!(
    "omsgate_audit_spool_bytes",
    "Bytes of audit records held in the disk spool."
);
/// Time from enqueue to Kafka acknowledgement; `path` is `direct` (queue → Kafka; replayed
/// records are not timed).
pub static AUDIT_DELIVERY: Lazy<HistogramVec> = histogram_vec!(
    "omsgate_audit_delivery_seconds",
    "Time from enqueueing an audit record to its acknowledgement by Kafka.",
    &["path"]
);
/// Kafka errors by librdkafka error code name.
pub static AUDIT_KAFKA_ERRORS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_audit_kafka_errors_total",
    "Kafka producer errors by librdkafka error code.",
    &["code"]
);
/// Times the audit producer was purged and recreated (fatal error, or no acknowledgement within
/// `audit.stall_timeout`).
pub static AUDIT_PRODUCER_RECREATIONS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_audit_producer_recreations_total",
        "Times the Kafka audit producer was purged and recreated."
    )
    .expect("register omsgate_audit_producer_recreations_total")
});
/// Damaged spool records (torn by a crash mid-write, or a bad checksum) skipped on replay.
pub static AUDIT_SPOOL_TORN: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_audit_spool_torn_records_total",
        "Damaged or truncated audit spool records skipped on replay."
    )
    .expect("register omsgate_audit_spool_torn_records_total")
});

// === database ===

/// Pool connections by state (`size`, `idle`, `waiting`), set at scrape time.
pub static DB_POOL: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_db_pool_connections",
    "Pooled query path connections by state: size, idle, waiting.",
    &["state"]
);
/// Pooled query duration by query.
pub static DB_QUERY_DURATION: Lazy<HistogramVec> = histogram_vec!(
    "omsgate_db_query_duration_seconds",
    "Pooled query path duration by query.",
    &["query"]
);
/// Requests that fell back to the OMS, by reason (`crate::db::metrics::FallbackReason`:
/// `pool_timeout`, `db_unavailable`, `db_timeout`, `db_error`, `no_tenant`, `unsupported`).
pub static DB_FALLBACKS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_db_fallbacks_total",
    "Pooled-path requests that fell back to the OMS, by reason.",
    &["reason"]
);
/// Database errors.
pub static DB_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "omsgate_db_errors_total",
        "Database errors on the pooled query path."
    )
    .expect("register omsgate_db_errors_total")
});

// === config ===

/// Config reloads by result (`ok`, `rejected`).
pub static CONFIG_RELOADS: Lazy<IntCounterVec> = counter_vec!(
    "omsgate_config_reloads_total",
    "Configuration reloads by result: ok, rejected.",
    &["result"]
);
/// The hash of the config in force; the value is always 1.
pub static CONFIG_INFO: Lazy<IntGaugeVec> = gauge_vec!(
    "omsgate_config_info",
    "The configuration in force, by hash of its text; the value is always 1.",
    &["hash"]
);

/// Status class label (`1xx` .. `5xx`) for a status code; `0xx` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "0xx",
    }
}

/// Registers every metric and sets the static ones, so `/metrics` lists them from the start.
pub fn init(config_hash: &str, routes: &[&str]) {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    CONFIG_INFO.reset();
    CONFIG_INFO.with_label_values(&[config_hash]).set(1);
    Lazy::force(&HTTP_REQUESTS);
    for r in routes {
        HTTP_DURATION.with_label_values(&[r]);
    }
    Lazy::force(&IN_FLIGHT);
    Lazy::force(&UPTIME);
    Lazy::force(&UPSTREAM_DURATION);
    Lazy::force(&UPSTREAM_HEALTHY);
    Lazy::force(&UPSTREAM_ERRORS);
    for reason in ["connect", "reused_closed"] {
        UPSTREAM_RETRIES.with_label_values(&[reason]);
    }
    for outcome in [
        "read_ahead",
        "read_ahead_then_streamed",
        "streamed",
        "timed_out",
    ] {
        REQUEST_BODIES.with_label_values(&[outcome]);
    }
    for r in routes {
        for reason in ["queue_full", "queue_timeout", "lock_wait"] {
            UPSTREAM_SHED.with_label_values(&[r, reason]);
        }
    }
    Lazy::force(&UPSTREAM_EJECTIONS);
    Lazy::force(&UPSTREAM_PANIC_TOTAL);
    Lazy::force(&UPSTREAM_PANIC);
    Lazy::force(&UPSTREAM_IN_FLIGHT);
    Lazy::force(&UPSTREAM_QUEUE);
    Lazy::force(&UPSTREAM_LIMIT);
    Lazy::force(&IDENTITY);
    for outcome in ["ok", "error", "bad_status", "timeout", "invalid"] {
        JWKS_REFRESH.with_label_values(&[outcome]);
    }
    Lazy::force(&JWKS_AGE);
    Lazy::force(&API_KEYS_RELOADS);
    for r in crate::canonical::Refusal::ALL {
        REQUESTS_REFUSED.with_label_values(&[r.as_str()]);
    }
    for r in [
        "connection_nominates_credential",
        "duplicate_identity_header",
    ] {
        REQUESTS_REFUSED.with_label_values(&[r]);
    }
    Lazy::force(&CACHE_REQUESTS);
    Lazy::force(&CACHE_STORES);
    Lazy::force(&CACHE_COLLAPSED);
    Lazy::force(&CACHE_FAST_HITS);
    Lazy::force(&CACHE_INVALIDATIONS);
    Lazy::force(&CACHE_BACKEND_ERRORS);
    for concern in ["cache", "rate_limit"] {
        REDIS_CROSSSLOT.with_label_values(&[concern]);
    }
    Lazy::force(&CACHE_L1_BYTES);
    Lazy::force(&CACHE_L1_ENTRIES);
    Lazy::force(&CACHE_DECODED);
    Lazy::force(&COMPRESSION_BYTES);
    Lazy::force(&RATE_LIMITED);
    Lazy::force(&RATE_LIMIT_CHECKS);
    Lazy::force(&RATE_LIMIT_KEYS);
    Lazy::force(&RATE_LIMIT_BACKEND_ERRORS);
    Lazy::force(&RATE_LIMIT_HEADER_KEYS);
    Lazy::force(&REQUESTS_REFUSED);
    Lazy::force(&RATE_LIMIT_KEY_RESETS);
    Lazy::force(&AUDIT_RECORDS);
    Lazy::force(&AUDIT_QUEUE_DEPTH);
    Lazy::force(&AUDIT_SPOOL_BYTES);
    Lazy::force(&AUDIT_DELIVERY);
    Lazy::force(&AUDIT_KAFKA_ERRORS);
    Lazy::force(&AUDIT_SPOOL_TORN);
    Lazy::force(&AUDIT_PRODUCER_RECREATIONS);
    Lazy::force(&DB_POOL);
    Lazy::force(&DB_QUERY_DURATION);
    Lazy::force(&DB_FALLBACKS);
    crate::db::metrics::init();
    Lazy::force(&DB_ERRORS);
    Lazy::force(&CONFIG_RELOADS);
}

/// Renders the default registry in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if let Err(e) = enc.encode(&prometheus::gather(), &mut buf) {
        tracing::warn!(error = %e, "Encoding metrics failed.");
    }
    String::from_utf8(buf).unwrap_or_default()
}
