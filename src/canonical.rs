//! The canonical form of a request (`request_filter`, before the route match): one spelling of
//! the path, of typed path parameters and of the query, used by routing, cache keys,
//! invalidation, rate limits and audit alike (DESIGN.md non-negotiables).
//!
//! The legacy OMS runs on uvicorn/Starlette, which percent-decodes the whole path before routing
//! (`/api/v1/%69nvoices` is `/api/v1/invoices` to it) and decodes query parameter names and
//! values. omsgate therefore decodes every escape too, and writes the result back in one
//! spelling: the characters RFC 3986 allows in a path segment (`pchar`) raw, everything else as
//! `%XX` with upper-case hex. Two paths the OMS decodes to the same text get the same canonical
//! path; the canonical path decodes to exactly that text, and it is what the OMS receives.
//!
//! Refused with 400 (and counted in `omsgate_requests_refused_total{reason}`):
//! an encoded `/` (`%2F`) or NUL (`%00`) inside a segment, a malformed escape, an escape that does
//! not decode to UTF-8, and a path whose `..` segments climb above the root.
//!
//! See `docs/canonical-requests.md`.

use std::fmt::Write as _;

use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Problems};
use crate::routes::{Params, Resolved};

// === Config ===

/// `[paths]`: how request paths are canonicalised.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PathsFile {
    /// What to do with empty segments (`//`): `"keep"` them (Starlette routes on the path as
    /// it is, so `/api//v1` is not `/api/v1` to the OMS) or `"merge"` runs of `/` into one
    /// (and forward the merged path). Default `"keep"`.
    pub duplicate_slashes: String,
}

impl Default for PathsFile {
    fn default() -> Self {
        PathsFile {
            duplicate_slashes: "keep".into(),
        }
    }
}

/// What happens to empty path segments (`//`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Slashes {
    /// Kept: `/a//b` stays `/a//b` (what Starlette does).
    #[default]
    Keep,
    /// Merged: `/a//b` becomes `/a/b`.
    Merge,
}

/// `[paths]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathsConfig {
    /// The duplicate-slash policy.
    pub duplicate_slashes: Slashes,
}

impl PathsConfig {
    /// Validates `[paths]`, recording every problem.
    pub fn from_file(f: &PathsFile, p: &mut Problems) -> PathsConfig {
        let duplicate_slashes = match f.duplicate_slashes.as_str() {
            "keep" => Slashes::Keep,
            "merge" => Slashes::Merge,
            other => {
                p.push(
                    "paths.duplicate_slashes",
                    format!("`{other}` is not a policy; use \"keep\" or \"merge\""),
                );
                Slashes::Keep
            }
        };
        PathsConfig { duplicate_slashes }
    }
}

// === Refusals ===

/// Why a request target has no canonical form (answered 400, or 404 for a typed parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `%2F` inside a segment: the OMS would split the segment, omsgate's route would not.
    EncodedSlash,
    /// `%00` inside a segment.
    EncodedNul,
    /// `%` not followed by two hex digits, or escapes that do not decode to UTF-8.
    BadEncoding,
    /// More `..` segments than there are segments above them.
    OutsideRoot,
    /// A typed path parameter (`{id:uuid}`, `{n:int}`) that does not parse (404).
    BadParam,
}

impl Refusal {
    /// Every reason, for pre-registering the metric.
    pub const ALL: [Refusal; 5] = [
        Refusal::EncodedSlash,
        Refusal::EncodedNul,
        Refusal::BadEncoding,
        Refusal::OutsideRoot,
        Refusal::BadParam,
    ];

    /// The `reason` label of `omsgate_requests_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::EncodedNul => "encoded_nul",
            Refusal::BadEncoding => "bad_encoding",
            Refusal::OutsideRoot => "outside_root",
            Refusal::BadParam => "bad_param",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadParam => 404,
            _ => 400,
        }
    }

    /// The `error` of the JSON body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::EncodedSlash => "the path contains an encoded slash (%2F) inside a segment",
            Refusal::EncodedNul => "the path contains an encoded NUL (%00)",
            Refusal::BadEncoding => "the path contains a malformed or non-UTF-8 percent-encoding",
            Refusal::OutsideRoot => "the path climbs above the root with `..` segments",
            Refusal::BadParam => "not found",
        }
    }
}

// === Phase hook ===

/// What [`request_filter`] decided: the route (by index, `routes.len()` for `other`) with its
/// canonical parameters, or a refusal to answer (the route then names the request in metrics
/// and audit: the route whose shape matched for [`Refusal::BadParam`], `other` otherwise).
#[derive(Debug)]
pub struct Target {
    /// Index of the route.
    pub route_id: usize,
    /// Its parameters, typed ones in canonical spelling.
    pub params: Params,
    /// Why the request is answered here with 400/404 instead.
    pub refused: Option<Refusal>,
}

/// `request_filter`, first, before anything reads the path: canonicalises it, resolves the
/// route, and rewrites the request's URI to the canonical path (typed parameters in canonical
/// spelling; the query as sent) so the OMS receives exactly what was matched. Refusals are
/// counted in `omsgate_requests_refused_total{reason}`; the caller answers them.
pub fn request_filter(req: &mut RequestHeader, config: &Config) -> Target {
    let routes = &config.routes;
    let refuse = |refusal: Refusal, route_id: usize| {
        crate::metrics::REQUESTS_REFUSED
            .with_label_values(&[refusal.as_str()])
            .inc();
        Target {
            route_id,
            params: Params::default(),
            refused: Some(refusal),
        }
    };
    let other = routes.other.id;
    // Bytes that are not UTF-8 on the request line: the OMS (which reads the target as ASCII)
    // would not route them either.
    if !req.raw_path_is_utf8() {
        return refuse(Refusal::BadEncoding, other);
    }
    let path = match self::path(req.uri.path(), config.paths.duplicate_slashes) {
        Ok(p) => p,
        Err(r) => return refuse(r, other),
    };
    let (route_id, params, canonical) = match routes.resolve(&req.method, &path) {
        Resolved::Route {
            route,
            params,
            path,
        } => (route.id, params, path),
        Resolved::BadParam { route, .. } => return refuse(Refusal::BadParam, route.id),
    };
    if canonical != req.uri.path() {
        let target = match req.uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        match http::Uri::try_from(target) {
            Ok(uri) => req.set_uri(uri),
            Err(_) => return refuse(Refusal::BadEncoding, other),
        }
    }
    Target {
        route_id,
        params,
        refused: None,
    }
}

// === Paths ===

/// The canonical form of `raw` (a request path without the query): every escape decoded, dot
/// segments removed (RFC 3986 §5.2.4), empty segments kept or merged, and every segment written
/// in the one spelling of [`encode_segment`]. A path not starting with `/` (`*`) is returned as
/// it is.
pub fn path(raw: &str, slashes: Slashes) -> Result<String, Refusal> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Ok(raw.to_string());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let segment = decode_segment(part)?;
        match segment.as_str() {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(Refusal::OutsideRoot);
                }
            }
            "" if slashes == Slashes::Merge && !last => {}
            _ => {
                out.push(encode_segment(&segment));
                continue;
            }
        }
        // `/a/.` and `/a/b/..` end in a slash (RFC 3986 §5.2.4).
        if last && !segment.is_empty() {
            out.push(String::new());
        }
    }
    let mut canonical = String::with_capacity(raw.len());
    for segment in &out {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    Ok(canonical)
}

/// Decodes every escape of one path segment; refuses `%2F`, `%00`, malformed escapes and
/// non-UTF-8 results.
pub fn decode_segment(raw: &str) -> Result<String, Refusal> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Refusal::BadEncoding);
            };
            match h << 4 | l {
                b'/' => return Err(Refusal::EncodedSlash),
                0 => return Err(Refusal::EncodedNul),
                byte => out.push(byte),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Refusal::BadEncoding)
}

/// Writes a decoded segment in the canonical spelling: RFC 3986 `pchar` (unreserved,
/// sub-delims, `:`, `@`) raw, every other byte as `%XX` with upper-case hex.
pub fn encode_segment(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for b in decoded.bytes() {
        if is_pchar(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

// === Typed path parameters ===

/// The type of a path parameter: `{s}` (string), `{id:uuid}`, `{n:int}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ParamType {
    /// Any non-empty segment, in its canonical spelling.
    #[default]
    Str,
    /// A UUID in any spelling the OMS accepts (upper case, without hyphens, braced,
    /// `urn:uuid:`); canonically lower-case hyphenated.
    Uuid,
    /// A signed 64-bit integer (`+7`, `007`); canonically its decimal digits.
    Int,
}

impl ParamType {
    /// The type named `name` in a pattern (`uuid`, `int`, `str`).
    pub fn parse(name: &str) -> Option<ParamType> {
        match name {
            "str" | "string" => Some(ParamType::Str),
            "uuid" => Some(ParamType::Uuid),
            "int" => Some(ParamType::Int),
            _ => None,
        }
    }

    /// The canonical spelling of `segment` (a segment of a canonical path), or `None` when it
    /// is not a value of this type.
    pub fn canonical(self, segment: &str) -> Option<String> {
        match self {
            ParamType::Str => Some(segment.to_string()),
            ParamType::Uuid => {
                let decoded = decode_segment(segment).ok()?;
                uuid::Uuid::try_parse(&decoded)
                    .ok()
                    .map(|u| u.hyphenated().to_string())
            }
            // One optional sign, decimal digits, leading zeros allowed: how the OMS reads it.
            ParamType::Int => segment.parse::<i64>().ok().map(|n| n.to_string()),
        }
    }
}

// === Queries ===

/// Decodes a query component (`+` is a space, like Starlette's `parse_qsl`); a malformed
/// escape stays as it is, and bytes that are not UTF-8 become U+FFFD, as the OMS reads them.
pub fn decode_query_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `(name, value)` pairs of a query, in request order (empty pairs skipped; a pair
/// without `=` has an empty value).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query_component(k), decode_query_component(v))
        })
        .collect()
}

/// The canonical query of the cache key: decoded names and values, a repeated name's last value
/// only (the OMS's scalar parameters take the last one), sorted by name, re-encoded in one
/// spelling. `?limit=5&%6cimit=1` and `?limit=1` have the same canonical query.
pub fn query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in query_pairs(raw) {
        match pairs.iter_mut().find(|(name, _)| *name == k) {
            Some(existing) => existing.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs.sort();
    let mut out = String::with_capacity(raw.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_query_component(&mut out, k);
        out.push('=');
        encode_query_component(&mut out, v);
    }
    out
}

fn encode_query_component(out: &mut String, decoded: &str) {
    for b in decoded.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(p: &str) -> Result<String, Refusal> {
        path(p, Slashes::Keep)
    }

    #[test]
    fn escapes_are_decoded_and_written_one_way() {
        assert_eq!(keep("/api/v1/%69nvoices").unwrap(), "/api/v1/invoices");
        assert_eq!(keep("/a/%7e%41%3a%3A:").unwrap(), "/a/~A:::");
        assert_eq!(keep("/a/%20b%7b%7D{").unwrap(), "/a/%20b%7B%7D%7B");
        assert_eq!(keep("/a/%c3%a9").unwrap(), "/a/%C3%A9");
        assert_eq!(keep("/a/%25").unwrap(), "/a/%25");
        assert_eq!(keep("/").unwrap(), "/");
        assert_eq!(keep("*").unwrap(), "*");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(keep("/api/v1/x/../invoices").unwrap(), "/api/v1/invoices");
        assert_eq!(keep("/api/./v1/%2e/invoices").unwrap(), "/api/v1/invoices");
        assert_eq!(
            keep("/api/v1/x/%2E%2e/invoices").unwrap(),
            "/api/v1/invoices"
        );
        assert_eq!(keep("/a/b/..").unwrap(), "/a/");
        assert_eq!(keep("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(keep("/a/..").unwrap(), "/");
        assert_eq!(keep("/..").unwrap_err(), Refusal::OutsideRoot);
        assert_eq!(keep("/a/../../b").unwrap_err(), Refusal::OutsideRoot);
        assert_eq!(keep("/a/%2e%2e/%2E%2E").unwrap_err(), Refusal::OutsideRoot);
    }

    #[test]
    fn duplicate_slashes_follow_the_policy() {
        assert_eq!(keep("/api//v1/").unwrap(), "/api//v1/");
        assert_eq!(path("/api//v1//", Slashes::Merge).unwrap(), "/api/v1/");
        assert_eq!(path("//", Slashes::Merge).unwrap(), "/");
        assert_eq!(path("//a", Slashes::Merge).unwrap(), "/a");
    }

    #[test]
    fn dangerous_escapes_are_refused() {
        assert_eq!(
            keep("/api%2Fv1/invoices").unwrap_err(),
            Refusal::EncodedSlash
        );
        assert_eq!(keep("/api%2fv1").unwrap_err(), Refusal::EncodedSlash);
        assert_eq!(keep("/a%00b").unwrap_err(), Refusal::EncodedNul);
        assert_eq!(keep("/a%zz").unwrap_err(), Refusal::BadEncoding);
        assert_eq!(keep("/a%4").unwrap_err(), Refusal::BadEncoding);
        assert_eq!(keep("/a%ff").unwrap_err(), Refusal::BadEncoding);
        assert_eq!(keep("/a%").unwrap_err(), Refusal::BadEncoding);
    }

    #[test]
    fn typed_parameters_are_canonical() {
        let lower = "0b9d6f8a-3c1e-4f5a-9b7d-2e4c6a8f0b1d";
        for spelling in [
            lower,
            "0B9D6F8A-3C1E-4F5A-9B7D-2E4C6A8F0B1D",
            "0b9d6f8a3c1e4f5a9b7d2e4c6a8f0b1d",
            "%7B0b9d6f8a-3c1e-4f5a-9b7d-2e4c6a8f0b1d%7D",
            "urn:uuid:0b9d6f8a-3c1e-4f5a-9b7d-2e4c6a8f0b1d",
        ] {
            assert_eq!(
                ParamType::Uuid.canonical(spelling).as_deref(),
                Some(lower),
                "{spelling}"
            );
        }
        assert_eq!(ParamType::Uuid.canonical("42"), None);
        assert_eq!(ParamType::Int.canonical("007").as_deref(), Some("7"));
        assert_eq!(ParamType::Int.canonical("+7").as_deref(), Some("7"));
        assert_eq!(ParamType::Int.canonical("-0").as_deref(), Some("0"));
        assert_eq!(ParamType::Int.canonical("-12").as_deref(), Some("-12"));
        for bad in ["", "+", "++1", "+-1", "1.0", "x", "99999999999999999999"] {
            assert_eq!(ParamType::Int.canonical(bad), None, "{bad}");
        }
        assert_eq!(ParamType::Str.canonical("a%20b").as_deref(), Some("a%20b"));
    }

    #[test]
    fn queries_use_decoded_names_and_the_last_value() {
        assert_eq!(query("limit=5&%6cimit=1"), query("limit=1"));
        assert_eq!(query("b=2&a=1&&a=0"), "a=0&b=2");
        assert_eq!(query("status=p%61id"), query("status=paid"));
        assert_eq!(query("q=a+b"), query("q=a%20b"));
        assert_eq!(query("x"), query("x="));
        assert_eq!(query("bad=%zz"), query("bad=%25zz"));
        assert_ne!(query("a=1&b=2"), query("a=1%26b%3D2"));
        assert_ne!(query("a=1"), query("a=2"));
        assert_eq!(query(""), "");
    }
}

/// Property tests over spellings: two requests the OMS serves identically (same decoded path
/// segments, same id, same last value of each decoded query name) get the same route, canonical
/// path, resources and cache key; two it serves differently never share a key.
#[cfg(test)]
mod props {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::cache::{Scope, ScopeId};
    use crate::identity::Identity;
    use crate::routes::{RouteFile, Router};

    /// A request as the OMS understands it.
    #[derive(Debug, Clone)]
    enum Meaning {
        List,
        Invoice(uuid::Uuid),
        Thing(String),
        Other(Vec<String>),
    }

    /// What the OMS sees: decoded segments (an id as the UUID it parses) and the last value of
    /// each decoded query name.
    type View = (Vec<String>, BTreeMap<String, String>);

    fn segments(m: &Meaning) -> Vec<String> {
        let base = || vec!["api".to_string(), "v1".to_string()];
        match m {
            Meaning::List => [base(), vec!["invoices".into()]].concat(),
            Meaning::Invoice(id) => [base(), vec!["invoices".into(), id.to_string()]].concat(),
            Meaning::Thing(t) => [base(), vec!["things".into(), t.clone()]].concat(),
            Meaning::Other(s) => s.clone(),
        }
    }

    fn view(m: &Meaning, query: &[(String, String)]) -> View {
        (segments(m), query.iter().cloned().collect())
    }

    fn router() -> Router {
        let route = |name: &str, path: &str, cache: Option<&str>, invalidates: &[&str]| RouteFile {
            name: name.into(),
            path: path.into(),
            methods: vec!["GET".into()],
            cache: cache.map(|r| crate::cache::RouteCacheFile {
                resource: Some(r.into()),
                ..Default::default()
            }),
            invalidates: invalidates.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let files = [
            route("list", "/api/v1/invoices", Some("invoices"), &[]),
            route(
                "invoice",
                "/api/v1/invoices/{id:uuid}",
                Some("invoice:{id}"),
                &["invoice:{id}", "invoices"],
            ),
            route("thing", "/api/v1/things/{name}", Some("thing:{name}"), &[]),
        ];
        let mut p = Problems::default();
        let router = Router::from_file(&files, &Default::default(), &mut p);
        assert!(p.is_empty(), "{:?}", p.list());
        router
    }

    /// Route name, canonical path, resources and cache key of a spelling; `None` if refused.
    fn resolve(
        router: &Router,
        path: &str,
        query: &str,
    ) -> Option<(String, String, Vec<String>, Vec<u8>)> {
        let canonical = self::path(path, Slashes::Keep).ok()?;
        let Resolved::Route {
            route,
            params,
            path,
        } = router.resolve(&http::Method::GET, &canonical)
        else {
            return None;
        };
        let mut resources: Vec<String> = route
            .invalidates
            .iter()
            .map(|t| t.render(&params))
            .collect();
        if let Some(c) = &route.cache {
            resources.extend(c.resources.iter().map(|t| t.render(&params)));
        }
        let id = Identity {
            tenant: Some("acme".into()),
            ..Default::default()
        };
        let scope = ScopeId::of(Scope::Tenant, &id)?;
        let key = crate::cache::key::primary(&route.name, &path, Some(query), &scope, &[]);
        Some((route.name.clone(), path, resources, key))
    }

    // === Spelling ===

    fn hex_byte(rng: &mut StdRng, out: &mut String, b: u8) {
        if rng.random_bool(0.5) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }

    /// A path segment the OMS decodes to `text`.
    fn spell_segment(rng: &mut StdRng, text: &str) -> String {
        let mut out = String::new();
        for b in text.bytes() {
            if b != b'%' && is_pchar(b) && rng.random_bool(0.6) {
                out.push(b as char);
            } else {
                hex_byte(rng, &mut out, b);
            }
        }
        out
    }

    fn spell_uuid(rng: &mut StdRng, id: &uuid::Uuid) -> String {
        let text = match rng.random_range(0..5) {
            0 => id.hyphenated().to_string(),
            1 => id.simple().to_string(),
            2 => format!("{{{}}}", id.hyphenated()),
            3 => format!("urn:uuid:{}", id.hyphenated()),
            _ => id.hyphenated().to_string(),
        };
        let text = if rng.random_bool(0.5) {
            text.to_uppercase().replace("URN:UUID:", "urn:uuid:")
        } else {
            text
        };
        spell_segment(rng, &text)
    }

    fn spell_path(rng: &mut StdRng, m: &Meaning) -> String {
        let segs = segments(m);
        let mut out = String::new();
        for (i, s) in segs.iter().enumerate() {
            // Dot segments the OMS's path resolution removes.
            match rng.random_range(0..6) {
                0 => out.push_str("/."),
                1 => out.push_str("/%2E"),
                2 => out.push_str("/zz/.."),
                3 => out.push_str("/%7A/%2e%2E"),
                _ => {}
            }
            out.push('/');
            match m {
                Meaning::Invoice(id) if i == 3 => out.push_str(&spell_uuid(rng, id)),
                _ => out.push_str(&spell_segment(rng, s)),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    fn spell_query_component(rng: &mut StdRng, out: &mut String, text: &str) {
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                if rng.random_bool(0.6) {
                    out.push(b as char);
                } else {
                    hex_byte(rng, out, b);
                }
            } else if b == b' ' && rng.random_bool(0.5) {
                out.push('+');
            } else {
                hex_byte(rng, out, b);
            }
        }
    }

    /// A query the OMS reads as `pairs` (whose names are distinct).
    fn spell_query(rng: &mut StdRng, pairs: &[(String, String)]) -> String {
        let mut groups: Vec<Vec<String>> = Vec::new();
        for (k, v) in pairs {
            let mut group = Vec::new();
            if rng.random_bool(0.3) {
                group.push(String::new());
            }
            // An earlier value of the same name, which the later one overrides.
            if rng.random_bool(0.3) {
                let mut decoy = String::new();
                spell_query_component(rng, &mut decoy, k);
                decoy.push_str("=decoy");
                group.push(decoy);
            }
            let mut pair = String::new();
            spell_query_component(rng, &mut pair, k);
            if !v.is_empty() || rng.random_bool(0.5) {
                pair.push('=');
                spell_query_component(rng, &mut pair, v);
            }
            group.push(pair);
            groups.push(group);
        }
        // Different names may come in any order.
        groups.shuffle(rng);
        groups.concat().join("&")
    }

    // === Strategies ===

    fn text() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a', 'b', 'Z', '0', '7', '-', '.', '_', '~', ' ', '%', '+', ':', '@', '!', '=', '&',
            '?', '#', '{', '"', 'é', '€', ';', ',', '*',
        ]);
        prop::collection::vec(chars, 1..6)
            .prop_map(|v| v.into_iter().collect::<String>())
            .prop_filter("not a dot segment", |s| s != "." && s != "..")
    }

    fn meaning() -> impl Strategy<Value = Meaning> {
        let id = prop::sample::select(vec![
            uuid::Uuid::from_u128(0x0b9d6f8a_3c1e_4f5a_9b7d_2e4c6a8f0b1d),
            uuid::Uuid::from_u128(0x0b9d6f8a_3c1e_4f5a_9b7d_2e4c6a8f0b1e),
        ]);
        prop_oneof![
            Just(Meaning::List),
            id.prop_map(Meaning::Invoice),
            text().prop_map(Meaning::Thing),
            prop::collection::vec(text(), 1..4).prop_map(Meaning::Other),
        ]
    }

    fn query() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop::sample::select(vec!["limit", "offset", "status", "a b", "é", "x=y", "&"]);
        let value = prop::sample::select(vec!["", "1", "5", "paid", "a b", "é", "+", "%", "decoy"]);
        prop::collection::btree_map(name, value, 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn spellings_of_one_request_share_route_key_and_resources(
            m in meaning(),
            q in query(),
            seeds in (any::<u64>(), any::<u64>()),
        ) {
            let router = router();
            let mut a = StdRng::seed_from_u64(seeds.0);
            let mut b = StdRng::seed_from_u64(seeds.1);
            let (pa, qa) = (spell_path(&mut a, &m), spell_query(&mut a, &q));
            let (pb, qb) = (spell_path(&mut b, &m), spell_query(&mut b, &q));
            let ra = resolve(&router, &pa, &qa);
            let rb = resolve(&router, &pb, &qb);
            prop_assert!(ra.is_some(), "{pa}?{qa} refused");
            prop_assert_eq!(ra, rb, "{}?{} and {}?{}", pa, qa, pb, qb);
        }

        #[test]
        fn requests_the_oms_tells_apart_never_share_a_key(
            m1 in meaning(),
            q1 in query(),
            m2 in meaning(),
            q2 in query(),
            seeds in (any::<u64>(), any::<u64>()),
        ) {
            prop_assume!(view(&m1, &q1) != view(&m2, &q2));
            let router = router();
            let mut a = StdRng::seed_from_u64(seeds.0);
            let mut b = StdRng::seed_from_u64(seeds.1);
            let (pa, qa) = (spell_path(&mut a, &m1), spell_query(&mut a, &q1));
            let (pb, qb) = (spell_path(&mut b, &m2), spell_query(&mut b, &q2));
            if let (Some(ra), Some(rb)) = (resolve(&router, &pa, &qa), resolve(&router, &pb, &qb)) {
                prop_assert_ne!(ra.3, rb.3, "{}?{} and {}?{}", pa, qa, pb, qb);
            }
        }
    }
}
