//! `[upstream]`: the file layer (serde, one `///` per key with unit and default) and the typed
//! [`UpstreamConfig`] built from it.
//!
//! The defaults fit the OMS as it is deployed today — one uvicorn worker that may need seconds
//! for any answer, `/health` included — so that the shipped `config.toml` works untuned
//! (`docs/upstream.md` explains each one).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamFile {
    /// The OMS instances as `host:port` (plain HTTP) or `https://host:port` (TLS, SNI and
    /// certificate check against the host name; port 443 when left out). Default
    /// `["127.0.0.1:8000"]`.
    pub servers: Vec<String>,
    /// `"round_robin"` or `"least_conn"`. Default `"round_robin"`.
    pub selection: String,
    /// Active health check. Default
    /// `{ path = "/health", interval = "5s", timeout = "10s", failures = 3, successes = 1 }`.
    pub health_check: HealthCheckFile,
    /// Passive health from real traffic. Default `{ failures = 5, ejection = "2s",
    /// max_ejection = "30s" }`.
    pub passive: PassiveFile,
    /// Overload protection in front of each server. Default `{ max_in_flight = 4,
    /// queue = 256, queue_timeout = "500ms", retry_after = "1s" }`.
    pub overload: OverloadFile,
    /// Share of servers (0.0–1.0) that must be healthy (active and passive health) for the
    /// unhealthy ones to be avoided; below it every server is used (panic mode). Default 0.0:
    /// panic only when no server is left.
    pub panic_threshold: f64,
    /// TCP connect timeout. Default `"5s"` (a busy one-worker OMS accepts late).
    pub connect_timeout: String,
    /// Time to wait for each read from the upstream (headers or a body chunk). Default `"30s"`.
    pub read_timeout: String,
    /// Time to wait for each write to the upstream. Default `"30s"`.
    pub write_timeout: String,
    /// How long an idle keepalive connection to the upstream is kept. Must be below the OMS's
    /// own keep-alive timeout (uvicorn 5 s, gunicorn 2 s by default). Default `"4s"`.
    pub idle_timeout: String,
    /// The keep-alive timeout the OMS's server declares (uvicorn `--timeout-keep-alive`,
    /// gunicorn `--keep-alive`); only used to warn when `idle_timeout` is not below it. Default
    /// unset.
    pub keepalive_timeout: Option<String>,
    /// Idle keepalive connections kept per worker thread. Default 128.
    pub keepalive_pool: usize,
    /// Retries on another (or the same) server when connecting fails (idempotent methods
    /// only). Default 1.
    pub retries: usize,
    /// Offer HTTP/2 (ALPN `h2`, then `http/1.1`) to `https://` servers. Default false.
    pub h2: bool,
    /// Overrides for `https://` servers: the SNI / verified name, and verification itself.
    pub tls: UpstreamTlsFile,
}

/// `[upstream.tls]`: overrides for `https://` servers; the defaults need none.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamTlsFile {
    /// The name sent as SNI and checked against every server's certificate, instead of the host
    /// name of each `https://` URL (e.g. servers listed by IP address behind one certificate).
    /// Default `""` (each URL's host name).
    pub sni: String,
    /// Verify the servers' certificates and names. `false` accepts any certificate (a
    /// self-signed OMS on a private network during a migration; prefer `[tls] ca_file`): the
    /// connection is encrypted but not authenticated, and the gateway warns at start.
    /// Default true.
    pub verify: bool,
    /// PEM certificate chain presented to servers that ask for a client certificate (an OMS
    /// behind mutual TLS); needs `key`. Read when the config loads and on reload. Default `""`.
    pub cert: String,
    /// PEM private key of `cert` (mode 0600; the gateway warns otherwise). Default `""`.
    pub key: String,
}

impl Default for UpstreamTlsFile {
    fn default() -> Self {
        Self {
            sni: String::new(),
            verify: true,
            cert: String::new(),
            key: String::new(),
        }
    }
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:8000".into()],
            selection: "round_robin".into(),
            health_check: HealthCheckFile::default(),
            passive: PassiveFile::default(),
            overload: OverloadFile::default(),
            panic_threshold: 0.0,
            connect_timeout: "5s".into(),
            read_timeout: "30s".into(),
            write_timeout: "30s".into(),
            idle_timeout: "4s".into(),
            keepalive_timeout: None,
            keepalive_pool: 128,
            retries: 1,
            h2: false,
            tls: UpstreamTlsFile::default(),
        }
    }
}

/// `[upstream.health_check]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HealthCheckFile {
    /// Path requested with GET; any 2xx is healthy. Default `"/health"`.
    pub path: String,
    /// Time between checks. Default `"5s"`.
    pub interval: String,
    /// Timeout of one check; a slower answer counts as one failure. Default `"10s"`.
    pub timeout: String,
    /// Consecutive failures that mark a server down. Default 3.
    pub failures: usize,
    /// Consecutive successes that mark a server up again. Default 1.
    pub successes: usize,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: "5s".into(),
            timeout: "10s".into(),
            failures: 3,
            successes: 1,
        }
    }
}

/// `[upstream.passive]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PassiveFile {
    /// Consecutive connect failures or 5xx answers of real requests that eject a server; 0
    /// turns passive health off. Default 5.
    pub failures: u32,
    /// How long the first ejection lasts; each further ejection in a row doubles it. Default
    /// `"2s"`.
    pub ejection: String,
    /// The longest ejection. Default `"30s"`.
    pub max_ejection: String,
}

impl Default for PassiveFile {
    fn default() -> Self {
        Self {
            failures: 5,
            ejection: "2s".into(),
            max_ejection: "30s".into(),
        }
    }
}

/// `[upstream.overload]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OverloadFile {
    /// Requests in flight per server (a fixed limit); 0 = unlimited. Default 4, a little
    /// more than one uvicorn worker with one database connection can work on at once (more
    /// only queue inside the OMS, where nothing can shed them).
    pub max_in_flight: usize,
    /// Requests waiting per server for a free slot (FIFO); beyond it, or beyond what the server
    /// finishes within `queue_timeout` at its measured pace, requests are shed at once.
    /// Default 256.
    pub queue: usize,
    /// Longest wait for a slot before the request is shed, time spent on the cache lock
    /// included. Default `"500ms"`: with `max_in_flight` requests ahead of it inside the OMS, an
    /// answer stays within the seed's objective (p99 ≤ 1 s).
    pub queue_timeout: String,
    /// `Retry-After` of a shed request's 503, whole seconds. Default `"1s"`.
    pub retry_after: String,
}

impl Default for OverloadFile {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            queue: 256,
            queue_timeout: "500ms".into(),
            retry_after: "1s".into(),
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Round robin over healthy servers.
    RoundRobin,
    /// The healthy server with the fewest requests in flight.
    LeastConn,
}

/// Typed `[upstream.passive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Consecutive failures that eject (0 = off).
    pub failures: u32,
    /// First ejection.
    pub ejection: Duration,
    /// Cap of the growing ejection.
    pub max_ejection: Duration,
}

/// Typed `[upstream.overload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Requests in flight per server; `None` = unlimited.
    pub max_in_flight: Option<usize>,
    /// Requests waiting per server.
    pub queue: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// `Retry-After` seconds of a shed answer.
    pub retry_after_secs: u64,
}

/// Typed `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Server addresses.
    pub servers: Vec<SocketAddr>,
    /// The host name of each server as written (parallel to `servers`): the SNI and the name
    /// its certificate is checked against.
    pub names: Vec<String>,
    /// The servers speak HTTPS (`https://` URLs).
    pub tls: bool,
    /// `[upstream.tls] sni`: the SNI and verified name of every server, instead of each URL's.
    pub tls_sni: Option<String>,
    /// `[upstream.tls] verify`.
    pub tls_verify: bool,
    /// `[upstream.tls] cert` and `key`: the client certificate for mutual TLS.
    pub tls_client: Option<crate::tls::ClientCert>,
    /// Trust for HTTPS servers (`[tls]`, filled in by [`crate::config::Config`]).
    pub trust: crate::tls::TlsConfig,
    /// Algorithm.
    pub selection: Selection,
    /// Health-check path.
    pub health_path: String,
    /// Health-check interval.
    pub health_interval: Duration,
    /// Health-check timeout.
    pub health_timeout: Duration,
    /// Failures to mark down.
    pub health_failures: usize,
    /// Successes to mark up.
    pub health_successes: usize,
    /// Passive health.
    pub passive: PassiveConfig,
    /// Overload protection.
    pub overload: OverloadConfig,
    /// Share of healthy servers below which all are used.
    pub panic_threshold: f64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
    /// Write timeout.
    pub write_timeout: Duration,
    /// Idle keepalive timeout.
    pub idle_timeout: Duration,
    /// The OMS's declared keep-alive timeout.
    pub keepalive_timeout: Option<Duration>,
    /// Keepalive pool size per thread.
    pub keepalive_pool: usize,
    /// Retries on connect failure.
    pub retries: usize,
    /// HTTP/2 offered to HTTPS servers.
    pub h2: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let mut p = Problems::default();
        UpstreamConfig::from_file(&UpstreamFile::default(), &mut p)
    }
}

impl UpstreamConfig {
    /// Converts the file layer.
    pub fn from_file(f: &UpstreamFile, p: &mut Problems) -> UpstreamConfig {
        let mut servers = Vec::new();
        let mut names = Vec::new();
        if f.servers.is_empty() {
            p.push("upstream.servers", "at least one server is needed");
        }
        let https = f
            .servers
            .iter()
            .filter(|s| s.starts_with("https://"))
            .count();
        let tls = https > 0;
        if tls && https < f.servers.len() {
            p.push(
                "upstream.servers",
                "mixes https:// and plain servers: every server of the pool speaks the same \
                 protocol",
            );
        }
        for (i, s) in f.servers.iter().enumerate() {
            use std::net::ToSocketAddrs;
            let key = format!("upstream.servers[{i}]");
            let (host_port, default_port) = match s.split_once("://") {
                Some(("https", rest)) => (rest.trim_end_matches('/'), 443),
                Some(("http", rest)) => (rest.trim_end_matches('/'), 80),
                Some((scheme, _)) => {
                    p.push(
                        key,
                        format!("`{scheme}://` is not one of \"https://\", \"http://\" or none"),
                    );
                    continue;
                }
                None => (s.as_str(), 0),
            };
            if host_port.contains('/') {
                p.push(
                    key,
                    format!("`{s}` has a path: give scheme, host and port only"),
                );
                continue;
            }
            let (host, with_port) = match host_port.rsplit_once(':') {
                Some((h, port)) if port.parse::<u16>().is_ok() && !h.ends_with(':') => {
                    (h, host_port.to_string())
                }
                _ if default_port != 0 => (host_port, format!("{host_port}:{default_port}")),
                _ => (host_port, host_port.to_string()),
            };
            match with_port.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => {
                    servers.push(a);
                    names.push(
                        host.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string(),
                    );
                }
                _ => p.push(
                    key,
                    format!("`{s}` is not a resolvable `host:port` or `https://host:port`"),
                ),
            }
        }
        let selection = match f.selection.as_str() {
            "round_robin" => Selection::RoundRobin,
            "least_conn" => Selection::LeastConn,
            other => {
                p.push(
                    "upstream.selection",
                    format!("`{other}` is not one of \"round_robin\", \"least_conn\""),
                );
                Selection::RoundRobin
            }
        };
        let hc = &f.health_check;
        if !hc.path.starts_with('/') {
            p.push(
                "upstream.health_check.path",
                format!("`{}` must start with `/`", hc.path),
            );
        }
        let health_interval = p.duration_or(
            "upstream.health_check.interval",
            &hc.interval,
            Duration::from_secs(5),
        );
        if health_interval.is_zero() {
            p.push("upstream.health_check.interval", "must be greater than 0");
        }
        if !(0.0..=1.0).contains(&f.panic_threshold) {
            p.push(
                "upstream.panic_threshold",
                format!(
                    "{} is not a share between 0.0 and 1.0 (0.0: panic only when no server \
                     is healthy)",
                    f.panic_threshold
                ),
            );
        }
        let cfg = UpstreamConfig {
            servers,
            names,
            tls,
            tls_sni: (!f.tls.sni.trim().is_empty()).then(|| f.tls.sni.trim().to_string()),
            tls_verify: f.tls.verify,
            tls_client: client_cert(&f.tls, p),
            trust: crate::tls::TlsConfig::default(),
            selection,
            health_path: hc.path.clone(),
            health_interval,
            health_timeout: p.duration_or(
                "upstream.health_check.timeout",
                &hc.timeout,
                Duration::from_secs(10),
            ),
            health_failures: hc.failures.max(1),
            health_successes: hc.successes.max(1),
            passive: passive(&f.passive, p),
            overload: overload(&f.overload, p),
            panic_threshold: f.panic_threshold.clamp(0.0, 1.0),
            connect_timeout: p.duration_or(
                "upstream.connect_timeout",
                &f.connect_timeout,
                Duration::from_secs(5),
            ),
            read_timeout: p.duration_or(
                "upstream.read_timeout",
                &f.read_timeout,
                Duration::from_secs(30),
            ),
            write_timeout: p.duration_or(
                "upstream.write_timeout",
                &f.write_timeout,
                Duration::from_secs(30),
            ),
            idle_timeout: p.duration_or(
                "upstream.idle_timeout",
                &f.idle_timeout,
                Duration::from_secs(4),
            ),
            keepalive_timeout: f
                .keepalive_timeout
                .as_deref()
                .and_then(|t| p.duration("upstream.keepalive_timeout", t)),
            keepalive_pool: f.keepalive_pool,
            retries: f.retries,
            h2: f.h2,
        };
        if !tls && (!f.tls.sni.is_empty() || !f.tls.verify || !f.tls.cert.is_empty()) {
            p.push(
                "upstream.tls",
                "applies to https:// servers only; the servers are plain HTTP",
            );
        }
        if f.h2 && !tls {
            p.push(
                "upstream.h2",
                "HTTP/2 to the OMS is negotiated with TLS (ALPN): it needs https:// servers",
            );
        }
        for (key, d) in [
            ("upstream.connect_timeout", cfg.connect_timeout),
            ("upstream.read_timeout", cfg.read_timeout),
            ("upstream.health_check.timeout", cfg.health_timeout),
        ] {
            if d.is_zero() {
                p.push(key, "must be greater than 0");
            }
        }
        cfg
    }

    /// Settings that work but are probably a mistake, as `(key, reason)`: printed by
    /// `check-config` and logged at start; they do not stop the gateway.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(w) = self
            .tls_client
            .as_ref()
            .and_then(|c| c.key_permission_warning())
        {
            out.push(("upstream.tls.key".to_string(), w));
        }
        if self.tls && !self.tls_verify {
            out.push((
                "upstream.tls.verify".to_string(),
                "is false: the OMS's certificates are not verified, so the connection is \
                 encrypted but anyone on the path can impersonate the OMS; trust its CA with \
                 [tls] ca_file instead"
                    .to_string(),
            ));
        }
        if let Some(ka) = self.keepalive_timeout {
            if self.idle_timeout >= ka {
                out.push((
                    "upstream.idle_timeout".to_string(),
                    format!(
                        "{:?} is not below the OMS's keep-alive timeout \
                         (upstream.keepalive_timeout = {ka:?}): pooled connections outlive the \
                         OMS's and requests sent on them fail or are retried; set it about 1s \
                         below",
                        self.idle_timeout
                    ),
                ));
            }
        }
        out
    }
}

fn passive(f: &PassiveFile, p: &mut Problems) -> PassiveConfig {
    let ejection = p.duration_or(
        "upstream.passive.ejection",
        &f.ejection,
        Duration::from_secs(2),
    );
    let max_ejection = p.duration_or(
        "upstream.passive.max_ejection",
        &f.max_ejection,
        Duration::from_secs(30),
    );
    if f.failures > 0 && ejection.is_zero() {
        p.push("upstream.passive.ejection", "must be greater than 0");
    }
    if max_ejection < ejection {
        p.push(
            "upstream.passive.max_ejection",
            format!("{max_ejection:?} is below `upstream.passive.ejection` ({ejection:?})"),
        );
    }
    PassiveConfig {
        failures: f.failures,
        ejection,
        max_ejection: max_ejection.max(ejection),
    }
}

fn overload(f: &OverloadFile, p: &mut Problems) -> OverloadConfig {
    let queue_timeout = p.duration_or(
        "upstream.overload.queue_timeout",
        &f.queue_timeout,
        Duration::from_millis(500),
    );
    let retry_after = p.duration_or(
        "upstream.overload.retry_after",
        &f.retry_after,
        Duration::from_secs(1),
    );
    if retry_after < Duration::from_secs(1) {
        p.push(
            "upstream.overload.retry_after",
            "must be at least 1s (Retry-After counts whole seconds)",
        );
    }
    OverloadConfig {
        max_in_flight: (f.max_in_flight > 0).then_some(f.max_in_flight),
        queue: f.queue,
        queue_timeout,
        retry_after_secs: retry_after.as_secs().max(1),
    }
}

/// `[upstream.tls] cert` and `key`, both or neither, read and checked.
fn client_cert(f: &UpstreamTlsFile, p: &mut Problems) -> Option<crate::tls::ClientCert> {
    let (cert, key) = (f.cert.trim(), f.key.trim());
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, true) => {
            p.push("upstream.tls.key", "is needed with upstream.tls.cert");
            None
        }
        (true, false) => {
            p.push("upstream.tls.cert", "is needed with upstream.tls.key");
            None
        }
        (false, false) => match crate::tls::ClientCert::load(
            std::path::Path::new(cert),
            std::path::Path::new(key),
        ) {
            Ok(c) => Some(c),
            Err((which, reason)) => {
                p.push(format!("upstream.tls.{which}"), reason);
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_one_worker_uvicorn() {
        let c = UpstreamConfig::default();
        assert!(c.idle_timeout < Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.health_timeout, Duration::from_secs(10));
        assert!(c.health_failures >= 3);
        assert_eq!(c.overload.max_in_flight, Some(4));
        assert_eq!(c.overload.queue_timeout, Duration::from_millis(500));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn idle_timeout_not_below_keepalive_warns() {
        let f = UpstreamFile {
            idle_timeout: "5s".into(),
            keepalive_timeout: Some("5s".into()),
            ..UpstreamFile::default()
        };
        let mut p = Problems::default();
        let c = UpstreamConfig::from_file(&f, &mut p);
        assert!(p.is_empty(), "a warning, not a problem: {:?}", p.list());
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "upstream.idle_timeout");

        let f = UpstreamFile {
            keepalive_timeout: Some("5s".into()),
            ..UpstreamFile::default()
        };
        assert!(UpstreamConfig::from_file(&f, &mut p).warnings().is_empty());
    }

    #[test]
    fn bad_values_are_problems() {
        let f = UpstreamFile {
            panic_threshold: 1.5,
            passive: PassiveFile {
                ejection: "10s".into(),
                max_ejection: "1s".into(),
                ..PassiveFile::default()
            },
            overload: OverloadFile {
                retry_after: "100ms".into(),
                ..OverloadFile::default()
            },
            ..UpstreamFile::default()
        };
        let mut p = Problems::default();
        UpstreamConfig::from_file(&f, &mut p);
        let keys: Vec<&str> = p.list().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream.panic_threshold",
                "upstream.passive.max_ejection",
                "upstream.overload.retry_after"
            ]
        );
    }
}
