//! `[rate_limit]`: the file layer and its typed form (named policies, quotas, CIDR lists).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::units::parse_duration;

// === File layer ===

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitFile {
    /// `"local"` (one GCRA state per gateway process) or `"distributed"` (one shared state in
    /// Redis, so several gateway instances share one quota). Default `"local"`.
    pub mode: String,
    /// Redis URL for `mode = "distributed"`, e.g. `"redis://127.0.0.1:6379/0"`. Default empty.
    pub redis_url: String,
    /// The Redis deployment instead of `redis_url`: `{ mode = "standalone" | "cluster" |
    /// "sentinel", nodes = [...], master_name = "..." }` as in `[cache]` (see
    /// [`crate::redis_topology`]). Set this or `redis_url`, not both. Default none.
    pub redis: Option<crate::redis_topology::RedisFile>,
    /// Deadline of one distributed check (one Redis round trip); past it `on_backend_error`
    /// applies. Default `"20ms"`.
    pub redis_timeout: String,
    /// Prefix of the Redis keys holding the distributed state; no `{` or `}` (they mark hash
    /// tags). Default `"omsgate:rl:"`.
    pub key_prefix: String,
    /// What a distributed check does when Redis fails or times out: `"allow"` (admit, fail open)
    /// or `"deny"` (answer 503, fail closed). Counted either way. Default `"allow"`.
    pub on_backend_error: String,
    /// A policy applied to every route (including unmatched requests) in addition to the
    /// route's own `rate_limit` list, e.g. `"per_ip"`. Default empty (none).
    pub default: String,
    /// Whether admitted requests carry the `RateLimit-Policy` / `RateLimit` headers (rejected
    /// ones always do). Default true.
    pub headers: bool,
    /// Proxies (IP addresses or CIDRs) whose `client_ip_header` is believed (and, with
    /// `[identity] mode = "header"`, whose identity headers); from any other peer the socket
    /// address is the client IP. Default empty.
    pub trusted_proxies: Vec<String>,
    /// The one header naming the client address when the peer is a trusted proxy, read from
    /// the right; every other forwarding header is ignored. `"forwarded"` reads the `for=`
    /// parameters of RFC 7239. Default `"x-forwarded-for"`.
    pub client_ip_header: String,
    /// Prefix length, in bits, that keys an IPv6 client in `ip` keys (one subscriber usually
    /// holds a whole /64). 1–128. Default 64.
    pub ipv6_prefix: u8,
    /// Longest `header:NAME` value, in bytes, that keys a bucket; a longer value is keyed by the
    /// client IP instead (counted in `omsgate_rate_limit_header_keys_total{result="too_long"}`).
    /// Default 256.
    pub header_key_max_bytes: usize,
    /// Client IPs or CIDRs that are never limited. Default empty.
    pub exempt_cidrs: Vec<String>,
    /// Verified subjects that are never limited. Default empty.
    pub exempt_subjects: Vec<String>,
    /// Most keys one policy keeps in memory (local mode); past it the idle keys are evicted and,
    /// if that is not enough, the policy's state is reset (counted in
    /// `omsgate_rate_limit_key_resets_total`). Default 100000.
    pub max_keys: usize,
    /// How often idle keys (whose state equals a fresh one) are evicted. Default `"10s"`.
    pub cleanup_interval: String,
    /// Named policies, `[rate_limit.policies.NAME]`. Default none.
    pub policies: BTreeMap<String, PolicyFile>,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        Self {
            mode: "local".into(),
            redis_url: String::new(),
            redis: None,
            redis_timeout: "20ms".into(),
            key_prefix: "omsgate:rl:".into(),
            on_backend_error: "allow".into(),
            default: String::new(),
            headers: true,
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
            ipv6_prefix: 64,
            header_key_max_bytes: 256,
            exempt_cidrs: Vec::new(),
            exempt_subjects: Vec::new(),
            max_keys: 100_000,
            cleanup_interval: "10s".into(),
            policies: BTreeMap::new(),
        }
    }
}

/// `[rate_limit.policies.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PolicyFile {
    /// What one bucket is keyed by: `"ip"`, `"tenant"`, `"subject"`, `"header:NAME"`, `"route"`,
    /// or a list combining them (`["tenant", "route"]`). Default `"ip"`.
    pub key: KeyFile,
    /// Sustained rate, `"N/unit"` with unit `second`, `minute`, `hour`, `day` or a duration
    /// (`"100/10s"`). Required.
    pub quota: String,
    /// Requests admitted at once from a full bucket. Default: the quota's N.
    pub burst: Option<u32>,
}

impl Default for PolicyFile {
    fn default() -> Self {
        Self {
            key: KeyFile::One("ip".into()),
            quota: String::new(),
            burst: None,
        }
    }
}

/// A policy `key`: one part or a list of parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum KeyFile {
    /// One part, e.g. `"tenant"`.
    One(String),
    /// Several parts, e.g. `["tenant", "route"]`.
    Many(Vec<String>),
}

// === Typed layer ===

/// Where the limiter keeps its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// In this process (governor keyed limiters).
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Distributed {
        /// The Redis deployment (already checked).
        topology: crate::redis_topology::Topology,
    },
}

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP.
    Ip,
    /// The verified tenant (the client IP when there is none).
    Tenant,
    /// The verified subject (the client IP when there is none).
    Subject,
    /// A request header's value (the client IP when absent), e.g. an API key.
    Header(http::HeaderName),
    /// The route name.
    Route,
}

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// N of `"N/period"`.
    pub count: NonZeroU32,
    /// The period of `"N/period"`.
    pub period: Duration,
    /// Requests admitted at once from a full bucket.
    pub burst: NonZeroU32,
}

impl Quota {
    /// Time for one request's worth of quota to come back (the GCRA emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }

    /// The governor quota.
    pub fn governor(&self) -> governor::Quota {
        // `interval` is at least 1 µs (checked in `from_file`), so `with_period` is Some.
        governor::Quota::with_period(self.interval())
            .unwrap_or_else(|| governor::Quota::per_second(self.count))
            .allow_burst(self.burst)
    }
}

/// A typed `[rate_limit.policies.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The name (`[a-z0-9_]+`), used in metrics, headers and Redis keys.
    pub name: String,
    /// Key parts, in config order.
    pub key: Vec<KeyPart>,
    /// Rate and burst.
    pub quota: Quota,
}

/// An IP network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `"10.0.0.0/8"`, `"::1/128"` or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not an IP address or CIDR, e.g. \"10.0.0.0/8\"");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(format!("`{text}`: prefix longer than {max} bits"));
        }
        Ok(Cidr {
            net: net.to_canonical(),
            prefix: if net.to_canonical().is_ipv4() && net.is_ipv6() {
                prefix.saturating_sub(96)
            } else {
                prefix
            },
        })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` lies in any of `list`.
pub fn in_any(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// Failure handling of the distributed mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnBackendError {
    /// Admit the request (fail open).
    #[default]
    Allow,
    /// Answer 503 (fail closed).
    Deny,
}

/// Typed `[rate_limit]`.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Local or distributed state.
    pub mode: Mode,
    /// Deadline of one distributed check.
    pub redis_timeout: Duration,
    /// Prefix of the Redis keys.
    pub key_prefix: String,
    /// What to do when Redis fails.
    pub on_backend_error: OnBackendError,
    /// Index in `policies` of the policy applied to every route.
    pub default: Option<usize>,
    /// Whether admitted requests carry `RateLimit` headers.
    pub headers: bool,
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The one header naming the client address.
    pub client_ip_header: http::HeaderName,
    /// IPv6 prefix length of `ip` keys.
    pub ipv6_prefix: u8,
    /// Longest `header:NAME` value that keys a bucket, in bytes.
    pub header_key_max_bytes: usize,
    /// Client networks never limited.
    pub exempt_cidrs: Vec<Cidr>,
    /// Subjects never limited.
    pub exempt_subjects: Vec<String>,
    /// Key cap per policy (local mode).
    pub max_keys: usize,
    /// Idle-key eviction period.
    pub cleanup_interval: Duration,
    /// Policies, sorted by name.
    pub policies: Vec<Policy>,
    /// Trust for a `rediss://` URL (`[tls]`, filled in by [`crate::config::Config`]).
    pub trust: crate::tls::TlsConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig::from_file(&RateLimitFile::default(), &mut Problems::default())
    }
}

impl RateLimitConfig {
    /// Converts the file layer, recording every problem with its key.
    pub fn from_file(f: &RateLimitFile, p: &mut Problems) -> RateLimitConfig {
        let topology = crate::redis_topology::Topology::from_file(
            "rate_limit",
            &f.redis_url,
            f.redis.as_ref(),
            p,
        );
        crate::redis_topology::config::check_prefix("rate_limit.key_prefix", &f.key_prefix, p);
        let mode = match f.mode.as_str() {
            "local" => Mode::Local,
            "distributed" => match topology {
                Some(topology) => Mode::Distributed { topology },
                None => {
                    if f.redis_url.trim().is_empty() && f.redis.is_none() {
                        p.push(
                            "rate_limit.redis_url",
                            "required with mode = \"distributed\", e.g. \"redis://127.0.0.1:6379/0\" (or rate_limit.redis)",
                        );
                    }
                    Mode::Local
                }
            },
            other => {
                p.push(
                    "rate_limit.mode",
                    format!("`{other}` is not one of \"local\", \"distributed\""),
                );
                Mode::Local
            }
        };
        let redis_timeout = p.duration_or(
            "rate_limit.redis_timeout",
            &f.redis_timeout,
            Duration::from_millis(20),
        );
        if redis_timeout.is_zero() {
            p.push("rate_limit.redis_timeout", "must be above 0, e.g. \"20ms\"");
        }
        let on_backend_error = match f.on_backend_error.as_str() {
            "allow" => OnBackendError::Allow,
            "deny" => OnBackendError::Deny,
            other => {
                p.push(
                    "rate_limit.on_backend_error",
                    format!("`{other}` is not one of \"allow\", \"deny\""),
                );
                OnBackendError::Allow
            }
        };
        let cleanup_interval = p.duration_or(
            "rate_limit.cleanup_interval",
            &f.cleanup_interval,
            Duration::from_secs(10),
        );
        if cleanup_interval.is_zero() {
            p.push(
                "rate_limit.cleanup_interval",
                "must be above 0, e.g. \"10s\"",
            );
        }
        if f.max_keys == 0 {
            p.push("rate_limit.max_keys", "must be at least 1");
        }
        let client_ip_header = match http::HeaderName::from_bytes(
            f.client_ip_header.to_ascii_lowercase().as_bytes(),
        ) {
            Ok(h) => h,
            Err(_) => {
                p.push(
                    "rate_limit.client_ip_header",
                    format!("`{}` is not a valid header name", f.client_ip_header),
                );
                http::HeaderName::from_static("x-forwarded-for")
            }
        };
        if !(1..=128).contains(&f.ipv6_prefix) {
            p.push(
                "rate_limit.ipv6_prefix",
                format!(
                    "{} is not a prefix length in 1..=128, e.g. 64",
                    f.ipv6_prefix
                ),
            );
        }
        if f.header_key_max_bytes == 0 {
            p.push(
                "rate_limit.header_key_max_bytes",
                "must be at least 1, e.g. 256",
            );
        }
        let policies: Vec<Policy> = f
            .policies
            .iter()
            .filter_map(|(name, pf)| policy(name, pf, p))
            .collect();
        let default = if f.default.is_empty() {
            None
        } else {
            let found = f.policies.keys().position(|n| n == &f.default);
            if found.is_none() {
                p.push(
                    "rate_limit.default",
                    format!("no policy `{}` in [rate_limit.policies]", f.default),
                );
            }
            found
        };
        RateLimitConfig {
            mode,
            redis_timeout,
            key_prefix: f.key_prefix.clone(),
            on_backend_error,
            // Index into `policies` only if every policy converted; else it is never used.
            default: default.filter(|_| policies.len() == f.policies.len()),
            headers: f.headers,
            trusted_proxies: cidrs("rate_limit.trusted_proxies", &f.trusted_proxies, p),
            client_ip_header,
            ipv6_prefix: f.ipv6_prefix.clamp(1, 128),
            header_key_max_bytes: f.header_key_max_bytes.max(1),
            exempt_cidrs: cidrs("rate_limit.exempt_cidrs", &f.exempt_cidrs, p),
            exempt_subjects: f.exempt_subjects.clone(),
            max_keys: f.max_keys.max(1),
            cleanup_interval: cleanup_interval.max(Duration::from_millis(1)),
            policies,
            trust: crate::tls::TlsConfig {
                redis_client: crate::redis_topology::config::client_cert(
                    "rate_limit",
                    f.redis.as_ref(),
                    p,
                ),
                ..crate::tls::TlsConfig::default()
            },
        }
    }

    /// Whether a policy of this name is defined.
    pub fn has_policy(&self, name: &str) -> bool {
        self.policies.iter().any(|p| p.name == name)
    }

    /// The index of the policy called `name`.
    pub fn policy_index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.name == name)
    }
}

fn cidrs(key: &str, list: &[String], p: &mut Problems) -> Vec<Cidr> {
    let mut out = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        match Cidr::parse(text) {
            Ok(c) => out.push(c),
            Err(e) => p.push(format!("{key}[{i}]"), e),
        }
    }
    out
}

/// Converts one policy; `None` (with problems recorded) when it is unusable.
fn policy(name: &str, f: &PolicyFile, p: &mut Problems) -> Option<Policy> {
    let key = format!("rate_limit.policies.{name}");
    let mut ok = true;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        p.push(&key, format!("policy name `{name}` must be [a-z0-9_]+"));
        ok = false;
    }
    let parts: Vec<&String> = match &f.key {
        KeyFile::One(s) => vec![s],
        KeyFile::Many(v) => v.iter().collect(),
    };
    if parts.is_empty() {
        p.push(format!("{key}.key"), "must name at least one part");
        ok = false;
    }
    let mut key_parts = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let at = match f.key {
            KeyFile::One(_) => format!("{key}.key"),
            KeyFile::Many(_) => format!("{key}.key[{i}]"),
        };
        let kp = match part.as_str() {
            "ip" => KeyPart::Ip,
            "tenant" => KeyPart::Tenant,
            "subject" => KeyPart::Subject,
            "route" => KeyPart::Route,
            h if h.starts_with("header:") => {
                match http::HeaderName::from_bytes(&h.as_bytes()["header:".len()..]) {
                    Ok(name) => KeyPart::Header(name),
                    Err(_) => {
                        p.push(
                            at,
                            format!("`{h}`: not a valid header name after `header:`"),
                        );
                        ok = false;
                        continue;
                    }
                }
            }
            other => {
                p.push(
                    at,
                    format!(
                        "`{other}` is not one of \"ip\", \"tenant\", \"subject\", \"route\", \"header:NAME\""
                    ),
                );
                ok = false;
                continue;
            }
        };
        if key_parts.contains(&kp) {
            p.push(at, format!("`{part}` is listed twice"));
            ok = false;
        }
        key_parts.push(kp);
    }
    let quota = match parse_quota(&f.quota) {
        Ok((count, period)) => {
            let burst = match f.burst {
                None => Some(count),
                Some(b) => {
                    let b = NonZeroU32::new(b);
                    if b.is_none() {
                        p.push(format!("{key}.burst"), "must be at least 1");
                    }
                    b
                }
            };
            burst.map(|burst| Quota {
                count,
                period,
                burst,
            })
        }
        Err(e) => {
            p.push(format!("{key}.quota"), e);
            None
        }
    };
    match quota {
        Some(quota) if ok => Some(Policy {
            name: name.to_string(),
            key: key_parts,
            quota,
        }),
        _ => None,
    }
}

/// Parses a quota `"N/unit"`: `"100/minute"`, `"5/second"`, `"1000/hour"`, `"10/day"`, or with a
/// duration as the period (`"100/10s"`). The emission interval (period / N) must be at least
/// 1 µs, the resolution of the distributed mode.
pub fn parse_quota(text: &str) -> Result<(NonZeroU32, Duration), String> {
    let hint = "write e.g. \"100/minute\", \"5/second\", \"1000/hour\" or \"100/10s\"";
    if text.trim().is_empty() {
        return Err(format!("missing; {hint}"));
    }
    let (n, unit) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a quota; {hint}"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: `{}` is not a whole number; {hint}", n.trim()))?;
    let count =
        NonZeroU32::new(n).ok_or_else(|| format!("`{text}`: the count must be at least 1"))?;
    let period = match unit.trim() {
        "second" | "seconds" | "sec" | "s" => Duration::from_secs(1),
        "minute" | "minutes" | "min" | "m" => Duration::from_secs(60),
        "hour" | "hours" | "h" => Duration::from_secs(3600),
        "day" | "days" | "d" => Duration::from_secs(86_400),
        other => parse_duration(other)
            .map_err(|_| format!("`{text}`: unknown unit `{other}`; {hint}"))?,
    };
    if period / count.get() < Duration::from_micros(1) {
        return Err(format!(
            "`{text}` is faster than one request per microsecond"
        ));
    }
    Ok((count, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> (RateLimitConfig, Vec<String>) {
        let f: RateLimitFile = toml::from_str(toml_text).unwrap();
        let mut p = Problems::default();
        let c = RateLimitConfig::from_file(&f, &mut p);
        (c, p.list().iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn quotas() {
        assert_eq!(
            parse_quota("100/minute").unwrap(),
            (NonZeroU32::new(100).unwrap(), Duration::from_secs(60))
        );
        assert_eq!(parse_quota("5/second").unwrap().1, Duration::from_secs(1));
        assert_eq!(
            parse_quota("1000/hour").unwrap().1,
            Duration::from_secs(3600)
        );
        assert_eq!(parse_quota("100/10s").unwrap().1, Duration::from_secs(10));
        assert!(parse_quota("0/second").is_err());
        assert!(parse_quota("ten/second").is_err());
        assert!(parse_quota("10/fortnight").is_err());
        assert!(parse_quota("100").is_err());
        assert!(parse_quota("").is_err());
    }

    #[test]
    fn cidrs_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let h = Cidr::parse("127.0.0.1").unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let mapped = Cidr::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.contains("192.168.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn policies_convert() {
        let (c, problems) = parse(
            r#"
            default = "per_ip"
            [policies.per_ip]
            quota = "100/minute"
            [policies.tenant_writes]
            key = ["tenant", "route"]
            quota = "5/second"
            burst = 2
            [policies.api_key]
            key = "header:x-api-key"
            quota = "1000/hour"
            "#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(c.has_policy("tenant_writes"));
        assert!(!c.has_policy("nope"));
        assert_eq!(c.policies[c.default.unwrap()].name, "per_ip");
        let tw = &c.policies[c.policy_index("tenant_writes").unwrap()];
        assert_eq!(tw.key, vec![KeyPart::Tenant, KeyPart::Route]);
        assert_eq!(tw.quota.burst.get(), 2);
        assert_eq!(tw.quota.interval(), Duration::from_millis(200));
        let ip = &c.policies[c.policy_index("per_ip").unwrap()];
        assert_eq!(ip.key, vec![KeyPart::Ip]);
        assert_eq!(ip.quota.burst.get(), 100);
    }

    #[test]
    fn every_problem_has_its_key() {
        let (_, problems) = parse(
            r#"
            mode = "cluster"
            on_backend_error = "maybe"
            redis_timeout = "soon"
            default = "missing"
            max_keys = 0
            trusted_proxies = ["10.0.0.0/8", "bogus"]
            exempt_cidrs = ["1.2.3.4/99"]
            [policies.Bad-Name]
            quota = "1/second"
            [policies.a]
            key = ["tenant", "planet", "tenant"]
            quota = "fast"
            burst = 0
            [policies.b]
            key = "header:bad header"
            quota = "1/second"
            "#,
        );
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        for k in [
            "rate_limit.mode",
            "rate_limit.on_backend_error",
            "rate_limit.redis_timeout",
            "rate_limit.default",
            "rate_limit.max_keys",
            "rate_limit.trusted_proxies[1]",
            "rate_limit.exempt_cidrs[0]",
            "rate_limit.policies.Bad-Name",
            "rate_limit.policies.a.key[1]",
            "rate_limit.policies.a.key[2]",
            "rate_limit.policies.a.quota",
            "rate_limit.policies.b.key",
        ] {
            assert!(keys.contains(&k), "no problem for {k} in {problems:#?}");
        }
        let (_, problems) = parse("mode = \"distributed\"");
        assert!(
            problems[0].starts_with("rate_limit.redis_url"),
            "{problems:?}"
        );
    }
}
