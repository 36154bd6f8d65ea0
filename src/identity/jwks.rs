//! JSON Web Key Sets: the public keys an identity provider (Supabase, Auth0, Keycloak, Cognito)
//! signs its tokens with, selected by `kid`, fetched from `[identity] jwks_url` and/or read from
//! `jwks_file`, and refreshed in the background.
//!
//! - Each key accepts only the algorithm it declares (`alg`), or without one the algorithms its
//!   key type allows (RSA: RS256/384/512, PS256/384/512; EC P-256: ES256; EC P-384: ES384;
//!   OKP Ed25519: EdDSA). Symmetric (`oct`) keys and encryption keys (`use = "enc"`) of a set
//!   are ignored: a key set never makes an HMAC secret out of public material.
//! - The set in force is an [`ArcSwapOption`]: a request reads it without a lock and never waits
//!   for a fetch. One thread per configured source (`omsgate-jwks`, its own single-threaded
//!   runtime) fetches at start, then every `jwks_refresh` (or the response's `Cache-Control:
//!   max-age`, kept between `jwks_min_refresh` and `jwks_refresh`), and at once when a token
//!   names an unknown `kid` ([`Jwks::trigger`]), but never twice within `jwks_min_refresh`.
//! - A failed fetch keeps the last good set (counted in `omsgate_jwks_refresh_total{outcome}`,
//!   logged) and is retried after `jwks_min_refresh`.
//! - A config reload with the same settings keeps the running source and its set
//!   ([`Jwks::shared`]), so a reload never drops the keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use once_cell::sync::Lazy;
use tokio::sync::Notify;

use crate::metrics;

/// Largest key set document accepted (a real one is a few KiB).
const MAX_BYTES: usize = 1024 * 1024;

/// One verification key of a set.
pub struct Key {
    /// The key id (`kid`), if the key has one.
    pub kid: Option<String>,
    /// The key.
    pub key: DecodingKey,
    /// The algorithms this key may verify.
    pub algorithms: Vec<Algorithm>,
}

/// A parsed key set.
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    all: Vec<Arc<Key>>,
    /// When it was loaded.
    pub loaded: Instant,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify signatures (unknown
    /// type or curve, symmetric, encryption-only, `alg` not fitting the key) are skipped and
    /// logged; a document without any usable key is an error.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no \"keys\" list")?;
        let mut set = KeySet {
            by_kid: HashMap::new(),
            all: Vec::new(),
            loaded: Instant::now(),
        };
        for (i, raw) in keys.iter().enumerate() {
            match key_of(raw) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(reason) => tracing::debug!(index = i, reason, "JWKS key skipped"),
            }
        }
        if set.all.is_empty() {
            return Err(format!(
                "none of its {} keys is a usable signature key",
                keys.len()
            ));
        }
        Ok(set)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the set has no key (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

fn key_of(raw: &serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key".into());
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("an unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("an unsupported curve".into()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (never taken from a key set)".into())
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let alg = signing_algorithm(declared)
                .ok_or_else(|| format!("{declared:?} is not a signature algorithm"))?;
            if !by_type.contains(&alg) {
                return Err(format!("alg {alg:?} does not fit the key type"));
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

fn signing_algorithm(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Where the keys come from and how often they are refreshed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `jwks_url`.
    pub url: Option<http::Uri>,
    /// `jwks_file`.
    pub file: Option<PathBuf>,
    /// `jwks_refresh`: the longest time between two fetches.
    pub refresh: Duration,
    /// `jwks_min_refresh`: the shortest time between two fetches.
    pub min_refresh: Duration,
    /// `jwks_timeout`: one fetch, connect to last byte.
    pub timeout: Duration,
    /// The trust store for `https` URLs.
    pub tls: crate::tls::TlsConfig,
}

impl Settings {
    fn same(&self, o: &Settings) -> bool {
        self.url == o.url
            && self.file == o.file
            && self.refresh == o.refresh
            && self.min_refresh == o.min_refresh
            && self.timeout == o.timeout
            && self.tls.ca_file == o.tls.ca_file
    }
}

/// Checks a `jwks_url`: `https`, or plain `http` to a loopback host only (a key set fetched in
/// clear over a network could be replaced by anyone on the path).
pub fn parse_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("`{text}` has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!(
                    "`{text}`: plain http is allowed only for a loopback host (127.0.0.1, ::1, \
                     localhost); use https"
                ))
            }
        }
        _ => Err(format!("`{text}` is not an https:// URL")),
    }
}

/// What [`Jwks::key`] found.
pub enum Lookup {
    /// The key with that `kid`.
    Found(Arc<Key>),
    /// A set is loaded but has no key with that `kid`.
    Unknown,
    /// No set has been loaded yet.
    NoKeys,
}

/// A key source: the sets in force and the handle of its refresher thread.
pub struct Jwks {
    settings: Settings,
    from_url: ArcSwapOption<KeySet>,
    from_file: ArcSwapOption<KeySet>,
    wake: Arc<Notify>,
    started: AtomicBool,
    failures: AtomicU64,
    last_error: parking_lot::Mutex<Option<String>>,
}

/// The running sources, so that a reload with the same settings keeps its keys.
static SOURCES: Lazy<parking_lot::Mutex<Vec<Weak<Jwks>>>> = Lazy::new(Default::default);

impl Drop for Jwks {
    fn drop(&mut self) {
        // Lets the refresher thread notice and end.
        self.wake.notify_one();
    }
}

impl Jwks {
    /// The source for `settings`: the running one with the same settings, or a new one (not
    /// started, see [`Jwks::start`]). `jwks_file` is read now: an unreadable or invalid file is
    /// an error for the config.
    pub fn shared(settings: Settings) -> Result<Arc<Jwks>, String> {
        let file_set = match &settings.file {
            Some(path) => Some(Arc::new(read_file(path)?)),
            None => None,
        };
        let mut sources = SOURCES.lock();
        sources.retain(|w| w.strong_count() > 0);
        let running = sources
            .iter()
            .filter_map(Weak::upgrade)
            .find(|j| j.settings.same(&settings));
        let jwks = match running {
            Some(j) => j,
            None => {
                let j = Arc::new(Jwks {
                    settings,
                    from_url: ArcSwapOption::empty(),
                    from_file: ArcSwapOption::empty(),
                    wake: Arc::new(Notify::new()),
                    started: AtomicBool::new(false),
                    failures: AtomicU64::new(0),
                    last_error: parking_lot::Mutex::new(None),
                });
                sources.push(Arc::downgrade(&j));
                j
            }
        };
        if let Some(set) = file_set {
            jwks.from_file.store(Some(set));
        }
        Ok(jwks)
    }

    /// Starts the refresher thread (once; later calls do nothing). The thread ends soon after
    /// the last config using this source is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        let min_refresh = self.settings.min_refresh;
        let spawned = std::thread::Builder::new()
            .name("omsgate-jwks".into())
            .spawn(move || refresher(weak, wake, min_refresh));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the JWKS refresher thread; keys are not refreshed");
        }
    }

    /// Asks the refresher for a fetch now (a token named an unknown `kid`). Never waits; the
    /// refresher fetches at most once per `jwks_min_refresh` however often this is called.
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    /// The key named `kid`.
    pub fn key(&self, kid: &str) -> Lookup {
        let url = self.from_url.load();
        let file = self.from_file.load();
        if url.is_none() && file.is_none() {
            return Lookup::NoKeys;
        }
        let found = [url.as_ref(), file.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|s| s.by_kid.get(kid).cloned());
        found.map_or(Lookup::Unknown, Lookup::Found)
    }

    /// Every key that may verify `alg` (for tokens without a `kid`).
    pub fn candidates(&self, alg: Algorithm) -> Vec<Arc<Key>> {
        let url = self.from_url.load();
        let file = self.from_file.load();
        let mut keys = Vec::new();
        for set in [url.as_ref(), file.as_ref()].into_iter().flatten() {
            keys.extend(
                set.all
                    .iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .cloned(),
            );
        }
        keys
    }

    /// Whether any key set is loaded.
    pub fn has_keys(&self) -> bool {
        self.from_url.load().is_some() || self.from_file.load().is_some()
    }

    /// Age of the set in force (the fetched one, else the file's), `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        let url = self.from_url.load();
        let file = self.from_file.load();
        url.as_ref().or(file.as_ref()).map(|s| s.loaded.elapsed())
    }

    /// `/ready`'s view: `up` with a set, `waiting` before the first one.
    pub fn ready_json(&self) -> serde_json::Value {
        let keys = |s: &ArcSwapOption<KeySet>| s.load().as_ref().map_or(0, |s| s.len());
        serde_json::json!({
            "state": if self.has_keys() { "up" } else { "waiting" },
            "url": self.settings.url.as_ref().map(|u| u.to_string()),
            "file": self.settings.file.as_ref().map(|f| f.display().to_string()),
            "keys": keys(&self.from_url) + keys(&self.from_file),
            "age_seconds": self.age().map(|a| a.as_secs()),
            "consecutive_failures": self.failures.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock(),
        })
    }

    /// One refresh of every source; returns when the next periodic one is due.
    async fn refresh(&self, client: &mut Option<Arc<rustls::ClientConfig>>) -> Duration {
        let s = &self.settings;
        let mut next = s.refresh;
        if let Some(path) = &s.file {
            match read_file(path) {
                Ok(set) => {
                    self.from_file.store(Some(Arc::new(set)));
                    if s.url.is_none() {
                        self.succeeded();
                    }
                }
                Err(e) => {
                    self.failed("invalid", e);
                    next = s.min_refresh;
                }
            }
        }
        if let Some(url) = &s.url {
            let tls = client
                .get_or_insert_with(|| s.tls.client_config(&[b"http/1.1"]))
                .clone();
            match tokio::time::timeout(s.timeout, fetch(url, tls)).await {
                Ok(Ok((body, max_age))) => match KeySet::parse(&body) {
                    Ok(set) => {
                        tracing::debug!(url = %url, keys = set.len(), "JWKS fetched");
                        self.from_url.store(Some(Arc::new(set)));
                        self.succeeded();
                        next = max_age.map_or(s.refresh, |m| m.clamp(s.min_refresh, s.refresh));
                    }
                    Err(e) => {
                        self.failed("invalid", format!("{url}: {e}"));
                        next = s.min_refresh;
                    }
                },
                Ok(Err((outcome, e))) => {
                    self.failed(outcome, format!("{url}: {e}"));
                    next = s.min_refresh;
                }
                Err(_) => {
                    self.failed(
                        "timeout",
                        format!("{url}: no complete answer within {:?}", s.timeout),
                    );
                    next = s.min_refresh;
                }
            }
        }
        next
    }

    fn succeeded(&self) {
        metrics::JWKS_REFRESH.with_label_values(&["ok"]).inc();
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!("JWKS refresh succeeded again.");
        }
        *self.last_error.lock() = None;
    }

    fn failed(&self, outcome: &'static str, error: String) {
        metrics::JWKS_REFRESH.with_label_values(&[outcome]).inc();
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            outcome,
            error = %error,
            failures,
            have_keys = self.has_keys(),
            "JWKS refresh failed; the last good key set stays in force."
        );
        *self.last_error.lock() = Some(error);
    }
}

fn read_file(path: &std::path::Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KeySet::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The refresher thread: fetch at once, then when due or triggered, never twice within
/// `min_refresh`; ends when the source is dropped.
fn refresher(weak: Weak<Jwks>, wake: Arc<Notify>, min_refresh: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the JWKS refresher runtime; keys are not refreshed");
            return;
        }
    };
    runtime.block_on(async move {
        let mut client = None;
        let mut last: Option<Instant> = None;
        let mut due = Instant::now();
        loop {
            let triggered = tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => false,
                _ = wake.notified() => true,
            };
            let Some(jwks) = weak.upgrade() else {
                return;
            };
            if triggered {
                if let Some(earliest) = last.map(|l| l + min_refresh) {
                    if Instant::now() < earliest {
                        due = due.min(earliest);
                        continue;
                    }
                }
            }
            last = Some(Instant::now());
            let next = jwks.refresh(&mut client).await;
            due = Instant::now() + next;
        }
    });
}

type FetchError = (&'static str, String);

/// `GET url` over HTTP/1.1 (TLS for `https`, verified against `tls`): the body of a 200 answer
/// and its `Cache-Control: max-age`.
async fn fetch(
    url: &http::Uri,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let accept = [(http::header::ACCEPT, "application/json".to_string())];
    let answer = crate::http_get::get(url, &accept, tls, MAX_BYTES)
        .await
        .map_err(|e| ("error", e))?;
    if answer.status != http::StatusCode::OK {
        return Err(("bad_status", format!("answered {}", answer.status)));
    }
    Ok((answer.body.to_vec(), max_age(&answer.headers)))
}

/// `max-age` of `Cache-Control` (`no-store`/`no-cache` count as 0).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        for directive in v.to_str().ok()?.split(',') {
            let d = directive.trim();
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if let Some(secs) = d
                .strip_prefix("max-age=")
                .or_else(|| d.strip_prefix("MAX-AGE="))
                .and_then(|s| s.trim_matches('"').parse::<u64>().ok())
            {
                found = Some(Duration::from_secs(secs));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(parse_url("https://p.supabase.co/auth/v1/.well-known/jwks.json").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(parse_url("http://[::1]:8080/jwks").is_ok());
        assert!(parse_url("http://localhost/jwks").is_ok());
        assert!(parse_url("http://idp.example.com/jwks").is_err());
        assert!(parse_url("ftp://idp.example.com/jwks").is_err());
        assert!(parse_url("/jwks").is_err());
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "public, max-age=600".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.insert("cache-control", "public".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn keys_accept_only_their_algorithms_and_symmetric_keys_are_skipped() {
        let set = KeySet::parse(
            br#"{"keys":[
              {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
              {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
              {"kty":"OKP","crv":"Ed25519","kid":"ed-rs","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
              {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.by_kid["ed"].algorithms, [Algorithm::EdDSA]);
        assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }
}
