//! `[cache]` and the per-route `cache = { ... }` table: the file layer and the typed values.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::routes::{PathPattern, Template};
use crate::units::ByteSize;

/// Status codes stored when neither `[cache] statuses` nor the route says otherwise.
pub const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 404, 410];

// === File layer ===

/// `[cache]`: the response cache shared by every cached route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheFile {
    /// Master switch: false turns every route's `cache` policy off (writes still invalidate).
    /// Default true.
    pub enabled: bool,
    /// Redis holding the shared second tier (L2) and the invalidation generations, e.g.
    /// `"redis://127.0.0.1:6379/0"`. Empty means in-memory only (one instance). Default `""`.
    pub redis_url: String,
    /// The Redis deployment instead of `redis_url`: `{ mode = "standalone" | "cluster" |
    /// "sentinel", nodes = ["redis://HOST:PORT", ...], master_name = "..." }` (see
    /// [`crate::redis_topology`]). Set this or `redis_url`, not both. Default none.
    pub redis: Option<crate::redis_topology::RedisFile>,
    /// Prefix of every Redis key and of the pub/sub channel `{prefix}invalidate`; no `{` or `}`
    /// (they mark hash tags).
    /// Default `"omsgate:"`.
    pub key_prefix: String,
    /// The in-process first tier (L1).
    pub memory: MemoryFile,
    /// Responses with a larger body are passed through but not stored; also the largest decoded
    /// copy of a gzip entry the L1 keeps for clients that do not accept gzip. Default `"2MiB"`.
    pub max_body: ByteSize,
    /// Deadline of every Redis call made while serving a request; on expiry the request goes on
    /// as a miss (or bypass) and `omsgate_cache_backend_errors_total{backend="redis"}` counts it.
    /// Default `"20ms"`.
    pub redis_timeout: String,
    /// How long an instance keeps generation numbers in memory before reading them from Redis
    /// again. Pub/sub normally invalidates them within milliseconds; this bounds the delay when a
    /// message is lost. Default `"1s"`.
    pub generation_cache_ttl: String,
    /// Coalescing: how long concurrent misses for one key wait for the first one's response
    /// before going upstream themselves. Default `"5s"`.
    pub lock_timeout: String,
    /// Upper bound of an entry's whole life (fresh time plus stale windows), whatever the route
    /// or the origin says. Default `"1d"`.
    pub max_ttl: String,
    /// Status codes stored when the route does not list its own.
    /// Default `[200, 203, 204, 300, 301, 404, 410]`.
    pub statuses: Vec<u16>,
}

impl Default for CacheFile {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_url: String::new(),
            redis: None,
            key_prefix: "omsgate:".into(),
            memory: MemoryFile::default(),
            max_body: ByteSize::Text("2MiB".into()),
            redis_timeout: "20ms".into(),
            generation_cache_ttl: "1s".into(),
            lock_timeout: "5s".into(),
            max_ttl: "1d".into(),
            statuses: DEFAULT_STATUSES.to_vec(),
        }
    }
}

/// `[cache.memory]`: the in-process L1.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MemoryFile {
    /// Bound of the L1 in bytes (headers and bodies); least recently used entries go first.
    /// `0` disables the L1 (every hit then comes from Redis). Default `"256MiB"`.
    pub max_bytes: ByteSize,
}

impl Default for MemoryFile {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::Text("256MiB".into()),
        }
    }
}

/// A route's `cache = { ... }`: which responses of the route are stored, for whom, how long.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteCacheFile {
    /// Fresh time of a stored response. Default `"60s"`.
    pub ttl: String,
    /// Who may share an entry: `"tenant"` (every user of the verified tenant), `"subject"` (one
    /// verified user) or `"public"` (everyone, identity ignored). A request without the verified
    /// identity its scope needs bypasses the cache. Default `"tenant"`.
    pub scope: String,
    /// After `ttl`, serve the stale copy (`x-cache: STALE`) for this long while one background
    /// request refreshes it. Default `"0"`.
    pub stale_while_revalidate: String,
    /// After `ttl`, serve the stale copy for this long when the OMS errors (5xx), times out or
    /// has no healthy server. Default `"0"`.
    pub stale_if_error: String,
    /// The resource this response shows, filled from path parameters, e.g. `"invoice:{id}"`;
    /// a write that invalidates it makes every stored response of it unreachable.
    /// Default none.
    pub resource: Option<String>,
    /// Further resources/tags the response depends on, e.g. `["invoices"]`. Default `[]`.
    pub tags: Vec<String>,
    /// Let the origin's `Cache-Control: s-maxage`/`max-age` set the fresh time (still capped by
    /// `[cache] max_ttl`) and its `stale-while-revalidate`/`stale-if-error`/`must-revalidate`
    /// adjust the stale windows. `no-store`, `no-cache`, `private` and `Set-Cookie` are honoured
    /// either way. Default true.
    pub respect_origin: bool,
    /// Status codes stored for this route; absent uses `[cache] statuses`. Default absent.
    pub statuses: Option<Vec<u16>>,
}

impl Default for RouteCacheFile {
    fn default() -> Self {
        Self {
            ttl: "60s".into(),
            scope: "tenant".into(),
            stale_while_revalidate: "0".into(),
            stale_if_error: "0".into(),
            resource: None,
            tags: Vec::new(),
            respect_origin: true,
            statuses: None,
        }
    }
}

// === Typed layer ===

/// Typed `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Master switch.
    pub enabled: bool,
    /// The Redis deployment (`redis_url` or `redis`); `None` means in-memory only.
    pub redis: Option<crate::redis_topology::Topology>,
    /// Prefix of Redis keys and the pub/sub channel.
    pub key_prefix: String,
    /// L1 bound in bytes; 0 disables the L1.
    pub l1_max_bytes: u64,
    /// Largest body stored.
    pub max_body: usize,
    /// Deadline of each Redis call on the request path.
    pub redis_timeout: Duration,
    /// How long generations are cached in memory.
    pub generation_cache_ttl: Duration,
    /// Coalescing wait.
    pub lock_timeout: Duration,
    /// Longest life of an entry.
    pub max_ttl: Duration,
    /// Status codes stored by default.
    pub statuses: Vec<u16>,
    /// Trust for a `rediss://` URL (`[tls]`, filled in by [`crate::config::Config`]).
    pub trust: crate::tls::TlsConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::from_file(&CacheFile::default(), &mut Problems::default())
    }
}

impl CacheConfig {
    /// Converts the file layer, recording every problem under its `cache.*` key.
    pub fn from_file(f: &CacheFile, p: &mut Problems) -> CacheConfig {
        let redis =
            crate::redis_topology::Topology::from_file("cache", &f.redis_url, f.redis.as_ref(), p);
        crate::redis_topology::config::check_prefix("cache.key_prefix", &f.key_prefix, p);
        if f.key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            p.push(
                "cache.key_prefix",
                format!(
                    "`{}` must not contain spaces or control characters",
                    f.key_prefix
                ),
            );
        }
        let l1_max_bytes = p
            .bytes("cache.memory.max_bytes", &f.memory.max_bytes)
            .unwrap_or(0);
        let max_body = match p.bytes("cache.max_body", &f.max_body) {
            Some(0) => {
                p.push("cache.max_body", "must be greater than 0");
                0
            }
            Some(n) => n,
            None => 0,
        };
        let redis_timeout = positive(p, "cache.redis_timeout", &f.redis_timeout, 20);
        if redis_timeout > Duration::from_secs(1) {
            p.push(
                "cache.redis_timeout",
                "must be at most \"1s\": every cached request may wait this long when Redis is slow",
            );
        }
        let generation_cache_ttl = p.duration_or(
            "cache.generation_cache_ttl",
            &f.generation_cache_ttl,
            Duration::from_secs(1),
        );
        let lock_timeout = positive(p, "cache.lock_timeout", &f.lock_timeout, 5000);
        let max_ttl = positive(p, "cache.max_ttl", &f.max_ttl, 86_400_000);
        check_statuses(p, "cache.statuses", &f.statuses);
        CacheConfig {
            enabled: f.enabled,
            redis,
            key_prefix: f.key_prefix.clone(),
            l1_max_bytes,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            redis_timeout,
            generation_cache_ttl,
            lock_timeout,
            max_ttl,
            statuses: f.statuses.clone(),
            trust: crate::tls::TlsConfig {
                redis_client: crate::redis_topology::config::client_cert(
                    "cache",
                    f.redis.as_ref(),
                    p,
                ),
                ..crate::tls::TlsConfig::default()
            },
        }
    }

    /// The settings fixed for the life of the process (a reload cannot change them).
    pub(crate) fn backend_settings(
        &self,
    ) -> (
        Option<&crate::redis_topology::Topology>,
        &str,
        u64,
        Duration,
        Duration,
        Option<&crate::tls::RedisClientCert>,
    ) {
        (
            self.redis.as_ref(),
            &self.key_prefix,
            self.l1_max_bytes,
            self.redis_timeout,
            self.generation_cache_ttl,
            self.trust.redis_client.as_ref(),
        )
    }
}

/// Who may share a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every user of one verified tenant.
    Tenant,
    /// One verified user (subject) of a tenant.
    Subject,
    /// Everyone; identity is ignored.
    Public,
}

impl Scope {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::Subject => "subject",
            Scope::Public => "public",
        }
    }
}

/// Typed per-route cache policy.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Fresh time.
    pub ttl: Duration,
    /// Sharing scope.
    pub scope: Scope,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window.
    pub stale_if_error: Duration,
    /// `resource` followed by `tags`, each filled from the path parameters per request.
    pub resources: Vec<Template>,
    /// Whether origin `Cache-Control` lifetimes apply.
    pub respect_origin: bool,
    /// Route-specific status codes; `None` uses `[cache] statuses`.
    pub statuses: Option<Vec<u16>>,
}

impl RoutePolicy {
    /// Converts a route's `cache` table; `key` is its dotted path (`route[0].cache`).
    pub fn from_file(
        f: &RouteCacheFile,
        pattern: Option<&PathPattern>,
        methods: &[http::Method],
        key: &str,
        p: &mut Problems,
    ) -> Option<RoutePolicy> {
        let before = p.list().len();
        if !methods.is_empty()
            && !methods
                .iter()
                .any(|m| m == http::Method::GET || m == http::Method::HEAD)
        {
            p.push(
                key,
                "only GET and HEAD responses are cached, and this route has neither in `methods`; remove `cache` or add \"GET\"",
            );
        }
        let ttl = positive(p, &format!("{key}.ttl"), &f.ttl, 60_000);
        let scope = match f.scope.as_str() {
            "tenant" => Scope::Tenant,
            "subject" => Scope::Subject,
            "public" => Scope::Public,
            other => {
                p.push(
                    format!("{key}.scope"),
                    format!("`{other}` is not one of \"tenant\", \"subject\", \"public\""),
                );
                Scope::Tenant
            }
        };
        let stale_while_revalidate = p.duration_or(
            &format!("{key}.stale_while_revalidate"),
            &f.stale_while_revalidate,
            Duration::ZERO,
        );
        let stale_if_error = p.duration_or(
            &format!("{key}.stale_if_error"),
            &f.stale_if_error,
            Duration::ZERO,
        );
        let mut resources = Vec::new();
        if let Some(r) = &f.resource {
            match Template::parse(r, pattern) {
                Ok(t) => resources.push(t),
                Err(e) => p.push(format!("{key}.resource"), e),
            }
        }
        for (i, t) in f.tags.iter().enumerate() {
            match Template::parse(t, pattern) {
                Ok(t) => resources.push(t),
                Err(e) => p.push(format!("{key}.tags[{i}]"), e),
            }
        }
        if let Some(s) = &f.statuses {
            check_statuses(p, &format!("{key}.statuses"), s);
        }
        if p.list().len() > before {
            return None;
        }
        Some(RoutePolicy {
            ttl,
            scope,
            stale_while_revalidate,
            stale_if_error,
            resources,
            respect_origin: f.respect_origin,
            statuses: f.statuses.clone(),
        })
    }
}

/// A duration that must be greater than zero; `default_ms` is used after a problem.
fn positive(p: &mut Problems, key: &str, text: &str, default_ms: u64) -> Duration {
    match p.duration(key, text) {
        Some(d) if d.is_zero() => {
            p.push(key, "must be greater than 0");
            Duration::from_millis(default_ms)
        }
        Some(d) => d,
        None => Duration::from_millis(default_ms),
    }
}

fn check_statuses(p: &mut Problems, key: &str, statuses: &[u16]) {
    for (i, s) in statuses.iter().enumerate() {
        if !(100..=599).contains(s) {
            p.push(
                format!("{key}[{i}]"),
                format!("{s} is not an HTTP status code"),
            );
        } else if *s == 206 || *s == 304 {
            p.push(
                format!("{key}[{i}]"),
                format!("{s} cannot be stored (it is a partial or conditional answer)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<String> {
        match crate::config::Config::parse(text) {
            Ok(_) => vec![],
            Err(crate::config::ConfigError::Invalid(list)) => {
                list.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = CacheConfig::default();
        assert!(c.enabled);
        assert_eq!(c.redis, None);
        assert_eq!(c.l1_max_bytes, 256 << 20);
        assert_eq!(c.max_body, 2 << 20);
        assert_eq!(c.redis_timeout, Duration::from_millis(20));
        assert_eq!(c.statuses, DEFAULT_STATUSES);
    }

    #[test]
    fn route_policy_parses() {
        let text = r#"
            [cache]
            redis_url = "redis://127.0.0.1:6379/0"
            memory = { max_bytes = "1MiB" }
            [[route]]
            name = "invoice"
            path = "/api/v1/invoices/{id}"
            methods = ["GET"]
            cache = { ttl = "30s", scope = "subject", stale_while_revalidate = "5s", stale_if_error = "10m", resource = "invoice:{id}", tags = ["invoices"], respect_origin = false, statuses = [200] }
        "#;
        let c = crate::config::Config::parse(text).unwrap();
        let p = c.routes.routes[0].cache.as_ref().unwrap();
        assert_eq!(p.ttl, Duration::from_secs(30));
        assert_eq!(p.scope, Scope::Subject);
        assert_eq!(p.stale_if_error, Duration::from_secs(600));
        assert_eq!(p.resources.len(), 2);
        assert!(!p.respect_origin);
        assert_eq!(c.cache.l1_max_bytes, 1 << 20);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [cache]
            redis_url = "mongodb://x"
            max_body = "lots"
            redis_timeout = "5s"
            lock_timeout = "0"
            statuses = [200, 999]
            [[route]]
            name = "invoice"
            path = "/api/v1/invoices/{id}"
            methods = ["PUT"]
            cache = { ttl = "forever", scope = "world", resource = "invoice:{nope}", tags = ["x", ""], colour = "blue" }
        "#;
        let problems = problems_of(text);
        for key in [
            "cache.redis_url:",
            "cache.max_body:",
            "cache.redis_timeout:",
            "cache.lock_timeout:",
            "cache.statuses[1]:",
            "route[0].cache:",
            "route[0].cache.ttl:",
            "route[0].cache.scope:",
            "route[0].cache.resource:",
            "route[0].cache.tags[1]:",
            "route[0].cache.colour:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "no problem for {key} in {problems:#?}"
            );
        }
    }
}
