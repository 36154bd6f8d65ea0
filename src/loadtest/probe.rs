//! What `omsgate loadtest` talks to besides the load itself: the pooled HTTP client, the
//! gateway's Prometheus endpoint, `/proc` for the gateway's RSS and CPU, and
//! `pg_stat_statements` for database queries.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

// === HTTP ===

/// A keepalive HTTP/1.1 client with one connection per request in flight (an open model needs
/// as many connections as there are requests waiting).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// `x-cache` was HIT or STALE.
    pub cached: bool,
    /// The body.
    pub body: Bytes,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A new client.
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Http { client }
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Answer, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let cached = matches!(
            resp.headers().get("x-cache").and_then(|v| v.to_str().ok()),
            Some("HIT" | "STALE")
        );
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            cached,
            body,
        })
    }
}

// === Gateway metrics ===

/// The gateway counters a run compares before and after (sums over all label values).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GatewayCounters {
    /// Requests sent to the OMS: `omsgate_upstream_duration_seconds_count` (answered) plus
    /// `omsgate_upstream_errors_total` (failed).
    pub upstream: f64,
    /// Pooled queries: `omsgate_db_query_duration_seconds_count`.
    pub db_queries: f64,
    /// Cache lookups answered from the cache: `omsgate_cache_requests_total{result="hit"|"stale"}`.
    pub cache_hits: f64,
    /// All cache lookups: `omsgate_cache_requests_total`.
    pub cache_lookups: f64,
}

impl GatewayCounters {
    /// Reads them from Prometheus text.
    pub fn parse(text: &str) -> GatewayCounters {
        GatewayCounters {
            upstream: metric_sum(text, "omsgate_upstream_duration_seconds_count", None)
                + metric_sum(text, "omsgate_upstream_errors_total", None),
            db_queries: metric_sum(text, "omsgate_db_query_duration_seconds_count", None),
            cache_hits: metric_sum(
                text,
                "omsgate_cache_requests_total",
                Some(("result", "hit")),
            ) + metric_sum(
                text,
                "omsgate_cache_requests_total",
                Some(("result", "stale")),
            ),
            cache_lookups: metric_sum(text, "omsgate_cache_requests_total", None),
        }
    }

    /// `self - before`.
    pub fn since(&self, before: &GatewayCounters) -> GatewayCounters {
        GatewayCounters {
            upstream: self.upstream - before.upstream,
            db_queries: self.db_queries - before.db_queries,
            cache_hits: self.cache_hits - before.cache_hits,
            cache_lookups: self.cache_lookups - before.cache_lookups,
        }
    }
}

/// Scrapes a metrics endpoint.
pub async fn scrape(http: &Http, url: &str) -> Result<GatewayCounters, String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        http.send(Method::GET, url, &[], None),
    )
    .await
    .map_err(|_| format!("{url}: no answer within 5 s"))??;
    if !answer.status.is_success() {
        return Err(format!("{url}: status {}", answer.status));
    }
    Ok(GatewayCounters::parse(&String::from_utf8_lossy(
        &answer.body,
    )))
}

/// The sum of the samples of `name` (exactly that name, any labels), only those with
/// `label="value"` when given.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let want = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, value) = r.split_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            if let Some(w) = &want {
                if !labels.split(',').any(|kv| kv.trim() == w) {
                    return None;
                }
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

// === /proc ===

/// Resident memory of a process in bytes (Linux), `None` when unknown.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// CPU time (user + system) of a process in seconds (Linux; clock ticks of 1/100 s, the
/// kernel's `USER_HZ` on every mainstream architecture), `None` when unknown.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

// === pg_stat_statements ===

/// A connection to the OMS database reading `pg_stat_statements`.
pub struct PgStatements {
    client: tokio_postgres::Client,
}

impl PgStatements {
    /// Connects and reads the counter once; the error says why it cannot be used.
    pub async fn connect(url: &str) -> Result<PgStatements, String> {
        let client = tokio::time::timeout(Duration::from_secs(5), crate::db::connect(url))
            .await
            .map_err(|_| "no connection within 5 s".to_string())?
            .map_err(|e| e.to_string())?;
        let pg = PgStatements { client };
        pg.calls().await?;
        Ok(pg)
    }

    /// Statements executed so far (the sum of `calls`), counting this query itself.
    pub async fn calls(&self) -> Result<f64, String> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements",
                &[],
            )
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("pg_stat_statements: {}", db.message()),
                None => format!("pg_stat_statements: {e}"),
            })?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_sums_by_name_and_label() {
        let text = "# HELP x\n\
            omsgate_cache_requests_total{route=\"a\",result=\"hit\"} 3\n\
            omsgate_cache_requests_total{route=\"b\",result=\"hit\"} 4\n\
            omsgate_cache_requests_total{route=\"a\",result=\"miss\"} 5\n\
            omsgate_upstream_duration_seconds_count{route=\"a\"} 7\n\
            omsgate_upstream_duration_seconds_count_extra 100\n\
            omsgate_upstream_errors_total{kind=\"timeout\"} 1\n";
        let c = GatewayCounters::parse(text);
        assert_eq!(c.cache_hits, 7.0);
        assert_eq!(c.cache_lookups, 12.0);
        assert_eq!(c.upstream, 8.0);
        assert_eq!(c.db_queries, 0.0);
    }

    #[test]
    fn this_process_has_rss_and_cpu() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).is_some());
    }
}
