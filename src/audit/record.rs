//! The audit record (schema `v` 1, `schemas/audit-record.v1.json`) and the redaction helpers the
//! proxy's logging phase uses to fill it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::config::{AuditConfig, RouteAudit, NEVER_RECORDED};

/// Version of the record schema, written as `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// The value that replaces a redacted secret.
pub const REDACTED: &str = "REDACTED";

/// One audit record: one request through the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// When the request arrived; serialized as RFC 3339 UTC with microseconds.
    #[serde(serialize_with = "rfc3339_micros")]
    pub ts: SystemTime,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Tenant, when identified.
    pub tenant: Option<String>,
    /// Subject (user), when identified.
    pub subject: Option<String>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// HTTP method.
    pub method: String,
    /// Route name from config (`other` when no route matched).
    pub route: String,
    /// Request path, without the query.
    pub path: String,
    /// Query string with the configured parameters redacted ([`redact_query`]).
    pub query: Option<String>,
    /// Response status sent to the client.
    pub status: u16,
    /// Time from request arrival to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// Time spent waiting for the upstream, in milliseconds; absent when not proxied.
    pub upstream_ms: Option<f64>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Cache status (`HIT`, `MISS`, `STALE`, `BYPASS`, ...), when the route is cached.
    pub cache: Option<String>,
    /// Whether the request was rejected by the rate limiter.
    pub rate_limited: bool,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// Gateway instance id; [`super::Audit::record`] fills it when empty.
    pub gateway: String,
    /// Allow-listed request headers ([`RouteAudit::capture_headers`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// JSON request body of a write, redacted and capped ([`redact_body`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl Default for AuditRecord {
    fn default() -> Self {
        AuditRecord {
            v: SCHEMA_VERSION,
            ts: SystemTime::now(),
            request_id: String::new(),
            tenant: None,
            subject: None,
            client_ip: None,
            method: String::new(),
            route: String::new(),
            path: String::new(),
            query: None,
            status: 0,
            duration_ms: 0.0,
            upstream_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            cache: None,
            rate_limited: false,
            user_agent: None,
            gateway: String::new(),
            headers: None,
            body: None,
        }
    }
}

impl AuditRecord {
    /// The Kafka key: the tenant (empty when unidentified), so a tenant's records share a
    /// partition and stay ordered.
    pub fn key(&self) -> &[u8] {
        self.tenant.as_deref().unwrap_or("").as_bytes()
    }

    /// The record as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail: no map has non-string keys and no
        // float is serialized through a fallible path (NaN becomes null).
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

fn rfc3339_micros<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_micros(*ts))
}

/// Formats `ts` as `2024-05-01T12:34:56.123456Z`.
pub fn format_rfc3339_micros(ts: SystemTime) -> String {
    let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

// === Redaction ===

/// The query string with the values of `[audit] redact_query_params` replaced by `REDACTED`
/// (names compared after percent-decoding, case-insensitively); `None` for an empty query.
pub fn redact_query(query: &str, config: &AuditConfig) -> Option<String> {
    if query.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or("");
        // Compared decoded, as the OMS reads it: `%74oken` is `token`.
        let decoded = crate::canonical::decode_query_component(name);
        if config
            .redact_query_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&decoded))
        {
            out.push_str(name);
            out.push('=');
            out.push_str(REDACTED);
        } else {
            out.push_str(pair);
        }
    }
    Some(out)
}

/// What is recorded for a request body: the parsed JSON with the configured fields (global and
/// the route's) redacted, a marker object when it is too large or not JSON, or `None` when the
/// route does not record bodies or the body is empty.
pub fn redact_body(bytes: &[u8], route: &RouteAudit, config: &AuditConfig) -> Option<Value> {
    if !route.body || bytes.is_empty() {
        return None;
    }
    if bytes.len() > config.body_max_bytes {
        return Some(serde_json::json!({"omitted": "too_large", "bytes": bytes.len()}));
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else {
        return Some(serde_json::json!({"omitted": "not_json", "bytes": bytes.len()}));
    };
    for path in config
        .redact_body_fields
        .iter()
        .chain(&route.redact_body_fields)
    {
        if let [name] = path.0.as_slice() {
            redact_anywhere(&mut value, name);
        } else {
            redact_path(&mut value, &path.0);
        }
    }
    Some(value)
}

fn redact_anywhere(value: &mut Value, name: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k.to_lowercase() == name {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_anywhere(v, name);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_anywhere(v, name)),
        _ => {}
    }
}

fn redact_path(value: &mut Value, path: &[String]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| redact_path(v, path)),
        Value::Object(map) => {
            let Some((first, rest)) = path.split_first() else {
                return;
            };
            for (k, v) in map.iter_mut() {
                if k.to_lowercase() == *first {
                    if rest.is_empty() {
                        *v = Value::String(REDACTED.into());
                    } else {
                        redact_path(v, rest);
                    }
                }
            }
        }
        _ => {}
    }
}

impl RouteAudit {
    /// Whether the request body must be buffered for the record: the route records bodies and
    /// the method is a write.
    pub fn wants_body(&self, method: &Method) -> bool {
        self.body
            && matches!(
                *method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
    }

    /// The allow-listed request headers present in `headers`, values of
    /// `[audit] redact_headers` replaced by `REDACTED`; `None` when the route lists none.
    /// `Authorization`, `Proxy-Authorization` and `Cookie` never appear (config refuses them,
    /// and they are skipped here again).
    pub fn capture_headers(
        &self,
        headers: &HeaderMap,
        config: &AuditConfig,
    ) -> Option<BTreeMap<String, String>> {
        if self.headers.is_empty() {
            return None;
        }
        let mut out = BTreeMap::new();
        for name in &self.headers {
            if NEVER_RECORDED.contains(&name.as_str()) {
                continue;
            }
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            if values.is_empty() {
                continue;
            }
            let value = if config.redact_headers.contains(name) {
                REDACTED.to_string()
            } else {
                values.join(", ")
            };
            out.insert(name.as_str().to_string(), value);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::config::{AuditFile, RouteAuditFile};
    use crate::config::Problems;
    use std::time::Duration;

    fn config() -> AuditConfig {
        let f: AuditFile = toml::from_str(
            r#"redact_body_fields = ["password", "payment.card.number"]
               body_max_bytes = 200"#,
        )
        .unwrap();
        AuditConfig::from_file(&f, &mut Problems::default())
    }

    #[test]
    fn timestamps_are_rfc3339_with_micros() {
        assert_eq!(
            format_rfc3339_micros(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let t = UNIX_EPOCH + Duration::from_micros(1_709_210_096_123_456);
        assert_eq!(format_rfc3339_micros(t), "2024-02-29T12:34:56.123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_rfc3339_micros(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn query_secrets_are_redacted() {
        let c = config();
        assert_eq!(redact_query("", &c), None);
        assert_eq!(
            redact_query("page=2&Token=abc&x&api_key=k=v", &c).unwrap(),
            "page=2&Token=REDACTED&x&api_key=REDACTED"
        );
        // Names are compared as the OMS decodes them.
        assert_eq!(
            redact_query("%74oken=abc&api%5Fkey=k&to+ken=x", &c).unwrap(),
            "%74oken=REDACTED&api%5Fkey=REDACTED&to+ken=x"
        );
    }

    #[test]
    fn body_fields_are_redacted_and_capped() {
        let c = config();
        let route = RouteAudit::from_file(
            Some(&RouteAuditFile {
                body: true,
                redact_body_fields: vec!["iban".into()],
                ..Default::default()
            }),
            "r",
            &mut Problems::default(),
        );
        let body = br#"{"user":{"Password":"p"},"iban":"DE1","payment":{"card":{"number":"4111","exp":"12/30"}},"lines":[{"password":"q","qty":1}],"number":"keep"}"#;
        let v = redact_body(body, &route, &c).unwrap();
        assert_eq!(v["user"]["Password"], REDACTED);
        assert_eq!(v["lines"][0]["password"], REDACTED);
        assert_eq!(v["lines"][0]["qty"], 1);
        assert_eq!(v["iban"], REDACTED);
        assert_eq!(v["payment"]["card"]["number"], REDACTED);
        assert_eq!(v["payment"]["card"]["exp"], "12/30");
        assert_eq!(v["number"], "keep");
        assert!(!v.to_string().contains("4111"));
        let big = vec![b' '; 201];
        assert_eq!(
            redact_body(&big, &route, &c).unwrap()["omitted"],
            "too_large"
        );
        assert_eq!(
            redact_body(b"a=b", &route, &c).unwrap()["omitted"],
            "not_json"
        );
        assert_eq!(redact_body(body, &RouteAudit::default(), &c), None);
        assert!(route.wants_body(&Method::POST) && !route.wants_body(&Method::GET));
    }

    #[test]
    fn headers_are_allow_listed_and_credentials_never_appear() {
        let c = config();
        let mut route = RouteAudit::from_file(
            Some(&RouteAuditFile {
                headers: vec!["x-source".into(), "x-api-key".into()],
                ..Default::default()
            }),
            "r",
            &mut Problems::default(),
        );
        // Even a hand-built route cannot record credentials.
        route.headers.push(http::header::AUTHORIZATION);
        let mut h = HeaderMap::new();
        h.insert("x-source", "batch".parse().unwrap());
        h.insert("x-api-key", "k-123".parse().unwrap());
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        h.insert("cookie", "sid=s3cret".parse().unwrap());
        let got = route.capture_headers(&h, &c).unwrap();
        assert_eq!(got.get("x-source").unwrap(), "batch");
        assert_eq!(got.get("x-api-key").unwrap(), REDACTED);
        assert_eq!(got.len(), 2);
        let rec = AuditRecord {
            headers: Some(got),
            ..Default::default()
        };
        let json = String::from_utf8(rec.to_json()).unwrap();
        assert!(!json.contains("s3cret") && !json.contains("k-123"));
        assert!(json.contains("\"v\":1"));
    }
}
