//! `[audit]` and the per-route `audit = { ... }` table: the file layer and its typed form.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::units::ByteSize;

// === File layer ===

/// `[audit]`: one record per request, shipped to Kafka, spooled to disk while Kafka is away.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuditFile {
    /// Whether audit records are produced at all. Default true.
    pub enabled: bool,
    /// Kafka bootstrap servers, comma-separated (`"10.0.0.1:9092,10.0.0.2:9092"`). Empty or
    /// absent: "file audit", records are only written to the spool files in `spool_dir`.
    /// Default empty.
    pub brokers: String,
    /// Topic the records are produced to, keyed by tenant. Default `"oms.audit"`.
    pub topic: String,
    /// Records the in-memory queue between the request path and the shipper holds; when it is
    /// full, records go straight to the spool. Default 65536.
    pub queue_capacity: usize,
    /// Directory of the append-only spool. Default `"audit-spool"` (relative to the working
    /// directory; use an absolute path such as `/var/lib/omsgate/audit-spool` in production).
    pub spool_dir: PathBuf,
    /// Largest total size of the spool files; beyond it records are dropped (counted and
    /// logged). Default `"10GiB"`.
    pub spool_max_bytes: ByteSize,
    /// Size at which a spool segment file is closed and a new one started. Default `"64MiB"`.
    pub spool_segment_bytes: ByteSize,
    /// When spooled records are forced to disk: `"always"` (fsync after every write),
    /// `"interval"` (every `fsync_interval`), `"never"` (left to the OS). Default `"interval"`.
    pub fsync: String,
    /// Period of the fsync with `fsync = "interval"`. Default `"1s"`.
    pub fsync_interval: String,
    /// How long Kafka may leave records unacknowledged before it counts as away; from then on
    /// new records go to the spool until Kafka acknowledges again. Records already handed to
    /// the producer stay there and are retried by it (idempotently) until acknowledged or until
    /// shutdown, when they are spooled. Default `"10s"`.
    pub delivery_timeout: String,
    /// How long the producer may hold unacknowledged records without a single acknowledgement
    /// before it is recreated: its records are spooled and re-sent by a new producer (a new
    /// producer id). This recovers from a broker that answers but refuses the producer (e.g. a
    /// restarted broker that lost its producer ids); records such a broker stored without
    /// acknowledging may arrive twice. Longer than `delivery_timeout`. Default `"60s"`.
    pub stall_timeout: String,
    /// How long the producer waits to fill a batch (`linger.ms`). Default `"5ms"`.
    pub linger: String,
    /// Batch compression: `"none"`, `"gzip"`, `"snappy"` or `"lz4"`. Default `"lz4"`.
    pub compression: String,
    /// Deadline for flushing the producer on shutdown; what is still unacknowledged then is
    /// spooled. Default `"5s"`.
    pub shutdown_timeout: String,
    /// Most records handed to the producer and not yet acknowledged; beyond it records are
    /// spooled. Default 100000.
    pub max_in_flight: usize,
    /// Query parameters whose values are replaced by `REDACTED` (case-insensitive).
    /// Default `["token", "access_token", "api_key", "apikey", "password", "secret", "signature"]`.
    pub redact_query_params: Vec<String>,
    /// JSON body fields whose values are replaced by `"REDACTED"`: a bare name (`"password"`)
    /// matches that key at any depth, a dotted path (`"payment.card.cvv"`) matches from the
    /// root, arrays being looked through; case-insensitive.
    /// Default `["password", "card_number", "cvv", "secret", "token"]`.
    pub redact_body_fields: Vec<String>,
    /// Allow-listed request headers (per route `audit.headers`) whose value is recorded as
    /// `REDACTED`. `Authorization`, `Proxy-Authorization` and `Cookie` are never recorded at
    /// all. Default `["x-api-key"]`.
    pub redact_headers: Vec<String>,
    /// Largest request body recorded (routes with `audit.body = true`); larger bodies are
    /// recorded as `{"omitted": "too_large", "bytes": N}`. Default `"16KiB"`.
    pub body_max_bytes: ByteSize,
    /// Instance id written into every record's `gateway` field. Default: the host name.
    pub gateway_id: String,
    /// Raw librdkafka options passed to the producer (and the `audit-sink` consumer), e.g.
    /// `"security.protocol" = "sasl_plaintext"`. Options that would weaken the delivery
    /// guarantees or that have their own key here are refused. Default empty.
    pub kafka_options: BTreeMap<String, String>,
    /// `omsgate audit-sink`: loads the topic into the OMS's `audit_events` table.
    pub sink: SinkFile,
}

impl Default for AuditFile {
    fn default() -> Self {
        AuditFile {
            enabled: true,
            brokers: String::new(),
            topic: "oms.audit".into(),
            queue_capacity: 65536,
            spool_dir: PathBuf::from("audit-spool"),
            spool_max_bytes: ByteSize::Text("10GiB".into()),
            spool_segment_bytes: ByteSize::Text("64MiB".into()),
            fsync: "interval".into(),
            fsync_interval: "1s".into(),
            delivery_timeout: "10s".into(),
            stall_timeout: "60s".into(),
            linger: "5ms".into(),
            compression: "lz4".into(),
            shutdown_timeout: "5s".into(),
            max_in_flight: 100_000,
            redact_query_params: [
                "token",
                "access_token",
                "api_key",
                "apikey",
                "password",
                "secret",
                "signature",
            ]
            .map(String::from)
            .to_vec(),
            redact_body_fields: ["password", "card_number", "cvv", "secret", "token"]
                .map(String::from)
                .to_vec(),
            redact_headers: vec!["x-api-key".into()],
            body_max_bytes: ByteSize::Text("16KiB".into()),
            gateway_id: String::new(),
            kafka_options: BTreeMap::new(),
            sink: SinkFile::default(),
        }
    }
}

/// `[audit.sink]`: the `omsgate audit-sink` consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SinkFile {
    /// PostgreSQL URL of the OMS database (`postgres://user@host:5432/oms`); required by
    /// `audit-sink`, unused otherwise. Default empty.
    pub database_url: String,
    /// Consumer group id. Default `"omsgate-audit-sink"`.
    pub group_id: String,
    /// Most records written per database transaction. Default 1000.
    pub batch_size: usize,
    /// Longest a partial batch waits for more records before it is written. Default `"1s"`.
    pub batch_timeout: String,
    /// Table the records are written to, optionally schema-qualified. It is created when
    /// missing; rows are keyed by a unique `event_id`, the client's request id goes to
    /// `client_request_id`, and the OMS's unique `request_id` is left NULL. Default
    /// `"audit_events"`.
    pub table: String,
}

impl Default for SinkFile {
    fn default() -> Self {
        SinkFile {
            database_url: String::new(),
            group_id: "omsgate-audit-sink".into(),
            batch_size: 1000,
            batch_timeout: "1s".into(),
            table: "audit_events".into(),
        }
    }
}

/// Per-route `audit = { ... }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteAuditFile {
    /// Whether requests of this route are audited. Default true.
    pub enabled: bool,
    /// Request headers recorded (allow-list, case-insensitive); `Authorization`,
    /// `Proxy-Authorization` and `Cookie` are refused. Default empty.
    pub headers: Vec<String>,
    /// Whether the JSON request body of writes (POST/PUT/PATCH/DELETE) is recorded, with
    /// `redact_body_fields` (global and this route's) redacted and capped at `body_max_bytes`.
    /// Default false.
    pub body: bool,
    /// More body fields to redact on this route, same syntax as `[audit] redact_body_fields`.
    /// Default empty.
    pub redact_body_fields: Vec<String>,
}

impl Default for RouteAuditFile {
    fn default() -> Self {
        RouteAuditFile {
            enabled: true,
            headers: vec![],
            body: false,
            redact_body_fields: vec![],
        }
    }
}

// === Typed layer ===

/// When spooled records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every write.
    Always,
    /// Every `fsync_interval`.
    Interval(Duration),
    /// Never explicitly.
    Never,
}

/// Typed `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Whether records are produced.
    pub enabled: bool,
    /// `[tls] ca_file`: the CA of a TLS connection to the brokers unless `kafka_options` names
    /// one (set by `Config::from_file`).
    pub tls_ca_file: Option<PathBuf>,
    /// Bootstrap servers; `None` is file audit.
    pub brokers: Option<String>,
    /// Topic.
    pub topic: String,
    /// Queue capacity (at least 1).
    pub queue_capacity: usize,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool size limit in bytes.
    pub spool_max_bytes: u64,
    /// Segment size in bytes.
    pub spool_segment_bytes: u64,
    /// Fsync policy.
    pub fsync: Fsync,
    /// Unacknowledged time after which Kafka counts as away.
    pub delivery_timeout: Duration,
    /// Unacknowledged time after which the producer is recreated.
    pub stall_timeout: Duration,
    /// Producer `linger.ms`.
    pub linger: Duration,
    /// Producer `compression.type`.
    pub compression: String,
    /// Producer flush deadline on shutdown.
    pub shutdown_timeout: Duration,
    /// Most records in the producer.
    pub max_in_flight: usize,
    /// Query parameter names to redact, lower-case.
    pub redact_query_params: Vec<String>,
    /// Body field paths to redact, lower-case, split at dots.
    pub redact_body_fields: Vec<FieldPath>,
    /// Header names recorded as `REDACTED`.
    pub redact_headers: Vec<HeaderName>,
    /// Body cap in bytes.
    pub body_max_bytes: usize,
    /// The `gateway` field.
    pub gateway_id: String,
    /// librdkafka pass-through options (already checked).
    pub kafka_options: BTreeMap<String, String>,
    /// The sink.
    pub sink: SinkConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig::from_file(&AuditFile::default(), &mut Problems::default())
    }
}

/// Typed `[audit.sink]`.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// PostgreSQL URL (checked by `audit-sink`, where it is required).
    pub database_url: String,
    /// Consumer group.
    pub group_id: String,
    /// Batch size (1..=50000).
    pub batch_size: usize,
    /// Partial-batch wait.
    pub batch_timeout: Duration,
    /// Table name, validated identifier(s).
    pub table: String,
    /// `[tls] ca_file`'s certificates, trusted besides the system roots when `database_url` names
    /// no `sslrootcert` (set by `Config`).
    pub trust_roots: std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

/// A body field path: lower-case segments; a single segment matches at any depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

/// librdkafka options that `[audit.kafka_options]` may not set, and why.
pub const REFUSED_KAFKA_OPTIONS: &[(&str, &str)] = &[
    ("enable.idempotence", "is always true: it keeps retries from duplicating records"),
    ("acks", "is always \"all\": a record counts as delivered only when all replicas have it"),
    ("request.required.acks", "is always \"all\" (alias of acks)"),
    ("message.timeout.ms", "is managed by omsgate (records never time out inside the producer; `audit.delivery_timeout` decides when to spool)"),
    ("delivery.timeout.ms", "is managed by omsgate (alias of message.timeout.ms; see `audit.delivery_timeout`)"),
    ("retries", "must stay unlimited for the idempotent producer"),
    ("message.send.max.retries", "must stay unlimited for the idempotent producer"),
    ("max.in.flight.requests.per.connection", "must stay at most 5 for the idempotent producer; leave it to librdkafka"),
    ("max.in.flight", "must stay at most 5 for the idempotent producer; leave it to librdkafka"),
    ("transactional.id", "would make the producer transactional, which the audit pipeline does not use"),
    ("bootstrap.servers", "set `audit.brokers` instead"),
    ("metadata.broker.list", "set `audit.brokers` instead"),
    ("linger.ms", "set `audit.linger` instead"),
    ("queue.buffering.max.ms", "set `audit.linger` instead"),
    ("compression.type", "set `audit.compression` instead"),
    ("compression.codec", "set `audit.compression` instead"),
    ("queue.buffering.max.messages", "set `audit.max_in_flight` instead"),
    ("group.id", "set `audit.sink.group_id` instead"),
    ("enable.auto.commit", "is always false: the sink commits offsets only after the database commit"),
    ("enable.auto.offset.store", "is managed by the sink"),
];

const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

impl AuditConfig {
    /// Converts the file layer, recording every problem with its key.
    pub fn from_file(f: &AuditFile, p: &mut Problems) -> AuditConfig {
        let brokers = match f.brokers.trim() {
            "" => None,
            b => Some(b.to_string()),
        };
        if f.topic.is_empty()
            || f.topic.len() > 249
            || !f
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            p.push(
                "audit.topic",
                format!(
                    "`{}` is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])",
                    f.topic
                ),
            );
        }
        if f.queue_capacity == 0 {
            p.push("audit.queue_capacity", "must be at least 1");
        }
        if f.max_in_flight == 0 || f.max_in_flight > 10_000_000 {
            p.push("audit.max_in_flight", "must be between 1 and 10000000");
        }
        if f.spool_dir.as_os_str().is_empty() {
            p.push("audit.spool_dir", "must not be empty");
        }
        let spool_max_bytes = p
            .bytes("audit.spool_max_bytes", &f.spool_max_bytes)
            .unwrap_or(0);
        let spool_segment_bytes = p
            .bytes("audit.spool_segment_bytes", &f.spool_segment_bytes)
            .unwrap_or(64 << 20);
        if spool_segment_bytes < 4096 {
            p.push("audit.spool_segment_bytes", "must be at least 4KiB");
        }
        if spool_max_bytes < spool_segment_bytes {
            p.push(
                "audit.spool_max_bytes",
                "must be at least `audit.spool_segment_bytes` (one segment)",
            );
        }
        let fsync_interval = p.duration_or(
            "audit.fsync_interval",
            &f.fsync_interval,
            Duration::from_secs(1),
        );
        let fsync = match f.fsync.as_str() {
            "always" => Fsync::Always,
            "interval" => {
                if fsync_interval.is_zero() {
                    p.push(
                        "audit.fsync_interval",
                        "must be more than 0 with fsync = \"interval\"",
                    );
                }
                Fsync::Interval(fsync_interval.max(Duration::from_millis(1)))
            }
            "never" => Fsync::Never,
            other => {
                p.push(
                    "audit.fsync",
                    format!("`{other}` is not one of \"always\", \"interval\", \"never\""),
                );
                Fsync::Interval(fsync_interval)
            }
        };
        let delivery_timeout = p.duration_or(
            "audit.delivery_timeout",
            &f.delivery_timeout,
            Duration::from_secs(10),
        );
        if delivery_timeout < Duration::from_millis(100) {
            p.push("audit.delivery_timeout", "must be at least 100ms");
        }
        let stall_timeout = p.duration_or(
            "audit.stall_timeout",
            &f.stall_timeout,
            Duration::from_secs(60),
        );
        if stall_timeout <= delivery_timeout {
            p.push(
                "audit.stall_timeout",
                "must be longer than `audit.delivery_timeout`",
            );
        }
        let linger = p.duration_or("audit.linger", &f.linger, Duration::from_millis(5));
        if linger > Duration::from_secs(900) {
            p.push("audit.linger", "must be at most 15m");
        }
        let compression = f.compression.to_ascii_lowercase();
        if !COMPRESSIONS.contains(&compression.as_str()) {
            p.push(
                "audit.compression",
                format!(
                    "`{}` is not one of {}",
                    f.compression,
                    COMPRESSIONS.join(", ")
                ),
            );
        }
        let shutdown_timeout = p.duration_or(
            "audit.shutdown_timeout",
            &f.shutdown_timeout,
            Duration::from_secs(5),
        );
        let body_max_bytes = p
            .bytes("audit.body_max_bytes", &f.body_max_bytes)
            .unwrap_or(0);
        if body_max_bytes > 1 << 20 {
            p.push(
                "audit.body_max_bytes",
                "must be at most 1MiB (records are Kafka messages)",
            );
        }
        let redact_query_params = f
            .redact_query_params
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let redact_body_fields = field_paths(&f.redact_body_fields, "audit.redact_body_fields", p);
        let redact_headers = f
            .redact_headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| header_name(h, &format!("audit.redact_headers[{i}]"), p))
            .collect();
        let gateway_id = match f.gateway_id.trim() {
            "" => host_name(),
            id => id.to_string(),
        };
        let kafka_options = check_kafka_options(&f.kafka_options, p);
        let sink = SinkConfig::from_file(&f.sink, p);
        AuditConfig {
            enabled: f.enabled,
            tls_ca_file: None,
            brokers,
            topic: f.topic.clone(),
            queue_capacity: f.queue_capacity.max(1),
            spool_dir: f.spool_dir.clone(),
            spool_max_bytes,
            spool_segment_bytes: spool_segment_bytes.max(4096),
            fsync,
            delivery_timeout,
            stall_timeout,
            linger,
            compression,
            shutdown_timeout,
            max_in_flight: f.max_in_flight.clamp(1, 10_000_000),
            redact_query_params,
            redact_body_fields,
            redact_headers,
            body_max_bytes: body_max_bytes.min(1 << 20) as usize,
            gateway_id,
            kafka_options,
            sink,
        }
    }

    /// The pass-through `kafka_options`, plus the `[tls] ca_file` as `ssl.ca.location` when the
    /// connection uses TLS (`security.protocol` `ssl` or `sasl_ssl`) and the options name no CA
    /// of their own. Both the producer and `audit-sink`'s consumer start from this.
    pub fn kafka_client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in &self.kafka_options {
            c.set(k, v);
        }
        let tls = self
            .kafka_options
            .get("security.protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
        let own_ca = ["ssl.ca.location", "ssl.ca.pem"]
            .iter()
            .any(|k| self.kafka_options.contains_key(*k));
        if let (true, false, Some(ca)) = (tls, own_ca, &self.tls_ca_file) {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        c
    }

    /// The librdkafka settings of the audit producer: the guarantees, the typed keys, and the
    /// pass-through options.
    pub fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut c = self.kafka_client_config();
        c.set("bootstrap.servers", self.brokers.as_deref().unwrap_or(""))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Records never expire inside the producer: it retries them (idempotently, so
            // without duplicates) until acknowledged; `delivery_timeout` only decides when new
            // records go to the spool instead.
            .set("message.timeout.ms", "0")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", &self.compression)
            .set(
                "queue.buffering.max.messages",
                self.max_in_flight.to_string(),
            )
            .set("client.id", format!("omsgate-audit-{}", self.gateway_id));
        c
    }
}

impl SinkConfig {
    fn from_file(f: &SinkFile, p: &mut Problems) -> SinkConfig {
        if f.group_id.is_empty() {
            p.push("audit.sink.group_id", "must not be empty");
        }
        if f.batch_size == 0 || f.batch_size > 50_000 {
            p.push("audit.sink.batch_size", "must be between 1 and 50000");
        }
        let batch_timeout = p.duration_or(
            "audit.sink.batch_timeout",
            &f.batch_timeout,
            Duration::from_secs(1),
        );
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        let parts: Vec<&str> = f.table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|s| ident_ok(s)) {
            p.push(
                "audit.sink.table",
                format!(
                    "`{}` is not a table name ([a-z_][a-z0-9_]*, optionally schema-qualified)",
                    f.table
                ),
            );
        }
        SinkConfig {
            database_url: f.database_url.clone(),
            group_id: f.group_id.clone(),
            batch_size: f.batch_size.clamp(1, 50_000),
            batch_timeout,
            table: f.table.clone(),
            trust_roots: Default::default(),
        }
    }
}

fn check_kafka_options(
    options: &BTreeMap<String, String>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    for (k, v) in options {
        let key = format!("audit.kafka_options.\"{k}\"");
        if let Some((_, why)) = REFUSED_KAFKA_OPTIONS.iter().find(|(name, _)| name == k) {
            p.push(key, format!("`{k}` cannot be set here: it {why}"));
            continue;
        }
        // librdkafka checks names and values when they are set on a configuration object;
        // that creates no client and no thread.
        let mut c = rdkafka::ClientConfig::new();
        c.set(k, v);
        if let Err(e) = c.create_native_config() {
            p.push(key, format!("librdkafka refuses `{k}` = `{v}`: {e}"));
            continue;
        }
        kept.insert(k.clone(), v.clone());
    }
    kept
}

fn field_paths(fields: &[String], key: &str, p: &mut Problems) -> Vec<FieldPath> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let segs: Vec<String> = f.split('.').map(|s| s.to_lowercase()).collect();
        if segs.iter().any(|s| s.is_empty()) {
            p.push(
                format!("{key}[{i}]"),
                format!("`{f}` is not a field path like `card.number`"),
            );
        } else {
            out.push(FieldPath(segs));
        }
    }
    out
}

fn header_name(name: &str, key: &str, p: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.trim().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.push(key, format!("`{name}` is not a header name"));
            None
        }
    }
}

/// Headers whose values never appear in an audit record.
pub const NEVER_RECORDED: &[&str] = &["authorization", "proxy-authorization", "cookie"];

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "omsgate".to_string())
}

/// Typed per-route audit options.
#[derive(Debug, Clone)]
pub struct RouteAudit {
    /// Whether requests of the route are audited.
    pub enabled: bool,
    /// Request headers recorded (never `Authorization`/`Cookie`).
    pub headers: Vec<HeaderName>,
    /// Whether the JSON body of writes is recorded.
    pub body: bool,
    /// Extra body fields redacted on this route.
    pub redact_body_fields: Vec<FieldPath>,
}

impl Default for RouteAudit {
    fn default() -> Self {
        RouteAudit {
            enabled: true,
            headers: vec![],
            body: false,
            redact_body_fields: vec![],
        }
    }
}

impl RouteAudit {
    /// Converts a route's `audit` table; `key` is the route's key, e.g. `route[2].audit`.
    pub fn from_file(f: Option<&RouteAuditFile>, key: &str, p: &mut Problems) -> RouteAudit {
        let Some(f) = f else {
            return RouteAudit::default();
        };
        let mut headers = Vec::new();
        for (i, h) in f.headers.iter().enumerate() {
            let hkey = format!("{key}.headers[{i}]");
            let Some(name) = header_name(h, &hkey, p) else {
                continue;
            };
            if NEVER_RECORDED.contains(&name.as_str()) {
                p.push(
                    hkey,
                    format!("`{h}` carries credentials and is never recorded"),
                );
                continue;
            }
            headers.push(name);
        }
        RouteAudit {
            enabled: f.enabled,
            headers,
            body: f.body,
            redact_body_fields: field_paths(
                &f.redact_body_fields,
                &format!("{key}.redact_body_fields"),
                p,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let f: AuditFile = toml::from_str(text).unwrap();
        let mut p = Problems::default();
        AuditConfig::from_file(&f, &mut p);
        p.list().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn tls_sasl_and_zstd_are_built_in() {
        // librdkafka refuses these when built without OpenSSL or zstd.
        let p = problems(
            r#"
            compression = "zstd"
            [kafka_options]
            "security.protocol" = "sasl_ssl"
            "sasl.mechanism" = "SCRAM-SHA-512"
            "sasl.username" = "omsgate"
            "sasl.password" = "secret"
            "ssl.endpoint.identification.algorithm" = "https"
            "#,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn the_tls_ca_file_is_the_brokers_ca_unless_the_options_name_one() {
        let get = |c: &AuditConfig| {
            c.kafka_client_config()
                .get("ssl.ca.location")
                .map(String::from)
        };
        let mut c = AuditConfig {
            tls_ca_file: Some(PathBuf::from("/etc/omsgate/ca.pem")),
            ..AuditConfig::default()
        };
        assert_eq!(get(&c), None, "plaintext brokers need no CA");
        c.kafka_options
            .insert("security.protocol".into(), "SSL".into());
        assert_eq!(get(&c).as_deref(), Some("/etc/omsgate/ca.pem"));
        c.kafka_options
            .insert("ssl.ca.location".into(), "/own.pem".into());
        assert_eq!(get(&c).as_deref(), Some("/own.pem"));
    }

    #[test]
    fn defaults_are_valid_and_file_audit() {
        assert!(problems("").is_empty());
        let c = AuditConfig::default();
        assert!(c.brokers.is_none());
        assert_eq!(c.spool_max_bytes, 10 << 30);
        assert_eq!(c.fsync, Fsync::Interval(Duration::from_secs(1)));
        assert!(!c.gateway_id.is_empty());
    }

    #[test]
    fn conflicting_kafka_options_are_refused_with_their_key() {
        let p = problems(
            r#"
            [kafka_options]
            "enable.idempotence" = "false"
            "acks" = "1"
            "message.timeout.ms" = "1000"
            "socket.keepalive.enable" = "true"
            "no.such.option" = "1"
            "#,
        );
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p
            .iter()
            .any(|s| s.starts_with("audit.kafka_options.\"acks\"")));
        assert!(p
            .iter()
            .any(|s| s.contains("enable.idempotence") && s.contains("always true")));
        assert!(p
            .iter()
            .any(|s| s.contains("no.such.option") && s.contains("librdkafka")));
    }

    #[test]
    fn bad_values_are_all_reported() {
        let p = problems(
            r#"
            topic = "bad topic"
            queue_capacity = 0
            fsync = "sometimes"
            compression = "brotli"
            delivery_timeout = "5"
            spool_max_bytes = "1KiB"
            body_max_bytes = "2MiB"
            redact_body_fields = ["a..b"]
            [sink]
            batch_size = 0
            table = "Drop Table"
            "#,
        );
        for key in [
            "audit.topic",
            "audit.queue_capacity",
            "audit.fsync",
            "audit.compression",
            "audit.delivery_timeout",
            "audit.spool_max_bytes",
            "audit.body_max_bytes",
            "audit.redact_body_fields[0]",
            "audit.sink.batch_size",
            "audit.sink.table",
        ] {
            assert!(
                p.iter().any(|s| s.starts_with(&format!("{key}:"))),
                "{key} missing in {p:?}"
            );
        }
    }

    #[test]
    fn librdkafka_accepts_the_producer_settings() {
        let f: AuditFile = toml::from_str(
            r#"brokers = "127.0.0.1:1"
               [kafka_options]
               "socket.keepalive.enable" = "true""#,
        )
        .unwrap();
        let mut p = Problems::default();
        let c = AuditConfig::from_file(&f, &mut p);
        assert!(p.is_empty());
        let producer: Result<rdkafka::producer::BaseProducer, _> = c.producer_config().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn route_refuses_credential_headers() {
        let f = RouteAuditFile {
            headers: vec![
                "X-Request-Source".into(),
                "Authorization".into(),
                "cookie".into(),
            ],
            body: true,
            ..Default::default()
        };
        let mut p = Problems::default();
        let r = RouteAudit::from_file(Some(&f), "route[0].audit", &mut p);
        assert_eq!(p.list().len(), 2);
        assert_eq!(p.list()[0].key, "route[0].audit.headers[1]");
        assert_eq!(r.headers.len(), 1);
        assert!(r.body && r.enabled);
        assert!(RouteAudit::default().enabled);
    }
}
