//! Response compression (DESIGN.md capability 4): `Accept-Encoding` negotiated per request,
//! bodies encoded chunk by chunk as they stream, codings a client did not ask for decoded, and
//! cacheable responses stored compressed once.
//!
//! | phase                           | hook                              | what                  |
//! |---------------------------------|-----------------------------------|-----------------------|
//! | `request_filter`                | [`request_filter`]                | negotiate, [`Plan`]   |
//! | `upstream_request_filter`       | [`upstream_request_filter`]       | `If-None-Match`; one `Accept-Encoding` when the cache may store |
//! | `upstream_response_filter`      | [`upstream_response_filter`]      | gzip before the cache stores |
//! | `upstream_response_body_filter` | [`upstream_response_body_filter`] | gzip before the cache stores |
//! | downstream module               | [`Compression`]                   | per response: encode, decode or leave; headers |
//!
//! [`Compression`] is a Pingora downstream [`HttpModule`] registered in place of Pingora's own
//! `ResponseCompression`. It sees every response written to the client (proxied, served from
//! the cache, or written by the gateway itself) after `response_filter`, decides per response
//! ([`decide`]), fixes the headers (`Content-Encoding`, `Content-Length`, `Vary`, `ETag`) and
//! transforms the body chunk by chunk.
//!
//! Why a module of our own rather than Pingora 0.9.1's `ResponseCompression`: its encoders only
//! flush at the end of the body, so a slowly streamed response reaches the client in one piece
//! at the end (zlib keeps up to ~64 KiB of input before it emits a block); ours flush after every
//! chunk. It also takes the first `Accept-Encoding` token and ignores q-values (`gzip;q=0` would
//! get gzip), has a fixed 20-byte minimum and MIME list, and compresses `no-transform`, 206 and
//! `Content-Range` responses. Its decoder is fine, and [`Compression`] uses it (wrapped) to
//! decode gzip/br bodies for clients that do not accept them.
//!
//! Decoding is what makes a compressed cache safe: an entry is stored gzip-compressed once
//! (the upstream hooks, at `store_level`), clients that accept gzip get the stored bytes as
//! they are, and a client that does not (no `Accept-Encoding` at all, `identity`, `gzip;q=0`)
//! gets them decoded. The module decodes any gzip or br body for a client that did not accept
//! that coding, whoever encoded it. The cache must not vary its entries on `Accept-Encoding` (see
//! [`upstream_request_filter`]).
//!
//! Memory per compressed response is the encoder's state (gzip ~270 KiB at level 6, br with a
//! 512 KiB window, zstd by level) plus the chunk in flight; no body is buffered whole.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, TRANSFER_ENCODING, VARY,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module, ModuleBuilder};
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Problems};
use crate::metrics;
use crate::routes::Route;
use crate::units::ByteSize;

// === Config ===

const fn default_enabled() -> bool {
    true
}
/// gzip 1 for live responses: on 20 KB of JSON it takes about a quarter of the CPU of gzip 6
/// for about 50 % more bytes (`benches/README.md`, compression).
const fn default_level() -> u32 {
    1
}

/// gzip 6 for entries the cache stores: compressed once per miss, sent on every hit.
const DEFAULT_STORE_LEVEL: u32 = 6;

/// `[compression]`: response compression.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CompressionFile {
    /// Compress responses at all; a route's `compression = true|false` overrides it.
    /// Default true.
    pub enabled: bool,
    /// Codings offered, most preferred first: `"gzip"`, `"br"`, `"zstd"`. A client's q-values
    /// decide; among equal q-values this order does. Default `["gzip"]`.
    pub algorithms: Vec<String>,
    /// Compression level for live responses, every algorithm: gzip 1–9, br 1–11, zstd 1–22.
    /// Default 1 (cheapest; see `store_level` for cached entries).
    pub level: u32,
    /// Per-algorithm levels overriding `level`, e.g. `{ br = 4, zstd = 3 }`. Default none.
    pub levels: std::collections::BTreeMap<String, u32>,
    /// The gzip level (1–9) of responses the cache stores compressed: those are compressed
    /// once and served many times, so a higher level than for live responses pays off.
    /// Default 6 (when `gzip` is in `algorithms`).
    pub store_level: Option<u32>,
    /// Responses whose `Content-Length` is below this are sent as they are (bytes or a size
    /// string; a response without a length is compressed). Default 1000.
    pub min_size: ByteSize,
    /// Media types compressed: `type/subtype` or `type/*`, parameters ignored.
    /// Default `["application/json", "text/*", "application/xml"]`.
    pub content_types: Vec<String>,
}

impl Default for CompressionFile {
    fn default() -> Self {
        CompressionFile {
            enabled: default_enabled(),
            algorithms: vec!["gzip".into()],
            level: default_level(),
            levels: Default::default(),
            store_level: None,
            min_size: ByteSize::Bytes(1000),
            content_types: vec![
                "application/json".into(),
                "text/*".into(),
                "application/xml".into(),
            ],
        }
    }
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `gzip` (flate2 / zlib-ng).
    Gzip,
    /// `br` (brotli).
    Brotli,
    /// `zstd`.
    Zstd,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Algorithm {
    /// The `Content-Encoding` token, also the `algorithm` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
        }
    }

    /// The algorithm of a config name or coding token (case-insensitive; `x-gzip` is gzip).
    pub fn from_token(token: &str) -> Option<Algorithm> {
        match token.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Algorithm::Gzip),
            "br" => Some(Algorithm::Brotli),
            "zstd" => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Algorithm::Gzip => 1..=9,
            Algorithm::Brotli => 1..=11,
            Algorithm::Zstd => 1..=22,
        }
    }
}

/// A media-type pattern of `content_types`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypePattern {
    /// `type/subtype`, lowercase.
    Exact(String),
    /// `type/*`: the lowercase `type/` prefix.
    Prefix(String),
}

impl TypePattern {
    fn parse(text: &str) -> Result<TypePattern, String> {
        let t = text.trim().to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        match t.split_once('/') {
            Some((ty, "*")) if token(ty) => Ok(TypePattern::Prefix(format!("{ty}/"))),
            Some((ty, sub)) if token(ty) && token(sub) => Ok(TypePattern::Exact(t)),
            _ => Err(format!(
                "`{text}` is not a media type; write \"type/subtype\" or \"type/*\", e.g. \"application/json\" or \"text/*\""
            )),
        }
    }

    fn matches(&self, media_type: &str) -> bool {
        match self {
            TypePattern::Exact(t) => media_type == t,
            TypePattern::Prefix(p) => media_type.starts_with(p.as_str()),
        }
    }
}

/// Typed `[compression]`.
#[derive(Debug, Clone)]
pub struct CompressionConfig {
    /// Whether routes without their own switch compress.
    pub enabled: bool,
    /// Algorithms with their levels, most preferred first.
    pub algorithms: Vec<(Algorithm, u32)>,
    /// The gzip level of responses stored compressed in the cache; `None` when gzip is not
    /// configured (entries are then stored as the origin sent them).
    pub store_level: Option<u32>,
    /// Smallest known `Content-Length` that is compressed, in bytes.
    pub min_size: u64,
    /// Media types compressed.
    pub content_types: Vec<TypePattern>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig::from_file(&CompressionFile::default(), &mut Problems::default())
    }
}

impl CompressionConfig {
    /// Converts the file layer, recording every problem with its key.
    pub fn from_file(f: &CompressionFile, p: &mut Problems) -> CompressionConfig {
        let mut algorithms: Vec<(Algorithm, u32)> = Vec::new();
        for (i, name) in f.algorithms.iter().enumerate() {
            let key = format!("compression.algorithms[{i}]");
            match Algorithm::from_token(name) {
                Some(a) if algorithms.iter().any(|(b, _)| *b == a) => {
                    p.push(key, format!("`{name}` is listed twice"))
                }
                Some(a) if name.eq_ignore_ascii_case(a.as_str()) => {
                    let level = f.levels.get(a.as_str()).copied().unwrap_or(f.level);
                    let range = a.levels();
                    if !range.contains(&level) {
                        let key = match f.levels.contains_key(a.as_str()) {
                            true => format!("compression.levels.{}", a.as_str()),
                            false => "compression.level".to_string(),
                        };
                        let (lo, hi) = (range.start(), range.end());
                        let reason = format!("level {level} is out of range for {a}: {lo}–{hi}");
                        p.push(key, reason);
                    }
                    algorithms.push((a, level));
                }
                _ => p.push(
                    key,
                    format!("`{name}` is not one of \"gzip\", \"br\", \"zstd\""),
                ),
            }
        }
        if f.enabled && f.algorithms.is_empty() {
            p.push(
                "compression.algorithms",
                "empty; list at least one of \"gzip\", \"br\", \"zstd\", or set compression.enabled = false",
            );
        }
        for name in f.levels.keys() {
            match Algorithm::from_token(name) {
                Some(a) if name == a.as_str() => {
                    if !algorithms.iter().any(|(b, _)| *b == a) {
                        p.push(
                            format!("compression.levels.{name}"),
                            format!("`{name}` is not in compression.algorithms"),
                        );
                    }
                }
                _ => p.push(
                    format!("compression.levels.{name}"),
                    format!("`{name}` is not one of \"gzip\", \"br\", \"zstd\""),
                ),
            }
        }
        let gzip = algorithms.iter().any(|(a, _)| *a == Algorithm::Gzip);
        let store_level = match (f.store_level, gzip) {
            (Some(level), true) => {
                if !Algorithm::Gzip.levels().contains(&level) {
                    p.push(
                        "compression.store_level",
                        format!("level {level} is out of range for gzip: 1–9"),
                    );
                }
                Some(level)
            }
            (Some(_), false) => {
                p.push(
                    "compression.store_level",
                    "the cache stores entries gzip-compressed only when `gzip` is in compression.algorithms; add it or remove store_level",
                );
                None
            }
            (None, gzip) => gzip.then_some(DEFAULT_STORE_LEVEL),
        };
        let min_size = p.bytes("compression.min_size", &f.min_size).unwrap_or(1000);
        let mut content_types = Vec::new();
        for (i, t) in f.content_types.iter().enumerate() {
            match TypePattern::parse(t) {
                Ok(t) => content_types.push(t),
                Err(e) => p.push(format!("compression.content_types[{i}]"), e),
            }
        }
        CompressionConfig {
            enabled: f.enabled,
            algorithms,
            store_level,
            min_size,
            content_types,
        }
    }

    /// Whether responses of this `Content-Type` value are compressed.
    pub fn compresses_type(&self, content_type: &str) -> bool {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.content_types.iter().any(|p| p.matches(&media_type))
    }
}

// === Negotiation ===

/// Quality values (0–1000) of the codings a client listed in `Accept-Encoding`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepts {
    present: bool,
    gzip: Option<u16>,
    br: Option<u16>,
    zstd: Option<u16>,
    identity: Option<u16>,
    any: Option<u16>,
}

impl Accepts {
    /// Parses every `Accept-Encoding` field value of a request (RFC 9110 §12.5.3). Entries with
    /// a malformed q-value are ignored. No header means identity only: a client that did not
    /// ask for a coding never gets one.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Accepts {
        let mut a = Accepts::default();
        for value in values {
            a.present = true;
            let Ok(text) = value.to_str() else { continue };
            for entry in text.split(',') {
                let mut parts = entry.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    if let Some((name, v)) = param.split_once('=') {
                        if name.trim().eq_ignore_ascii_case("q") {
                            q = parse_qvalue(v.trim());
                        }
                    }
                }
                let Some(q) = q else { continue };
                let slot = match coding.as_str() {
                    "gzip" | "x-gzip" => &mut a.gzip,
                    "br" => &mut a.br,
                    "zstd" => &mut a.zstd,
                    "identity" => &mut a.identity,
                    "*" => &mut a.any,
                    _ => continue,
                };
                // A coding listed twice keeps its first q-value.
                slot.get_or_insert(q);
            }
        }
        a
    }

    /// A client that accepts `algorithm` only.
    pub fn only(algorithm: Algorithm) -> Accepts {
        let mut a = Accepts {
            present: true,
            ..Accepts::default()
        };
        *match algorithm {
            Algorithm::Gzip => &mut a.gzip,
            Algorithm::Brotli => &mut a.br,
            Algorithm::Zstd => &mut a.zstd,
        } = Some(1000);
        a
    }

    /// The q-value of `algorithm`: listed explicitly, else through `*`, else 0.
    pub fn q(&self, algorithm: Algorithm) -> u16 {
        let explicit = match algorithm {
            Algorithm::Gzip => self.gzip,
            Algorithm::Brotli => self.br,
            Algorithm::Zstd => self.zstd,
        };
        explicit.or(self.any).unwrap_or(0)
    }

    /// Whether the client accepts `algorithm` (q > 0).
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        self.q(algorithm) > 0
    }

    /// The best configured algorithm for this client: highest q-value, ties broken by the
    /// configured order; none when the client accepts none of them or explicitly prefers
    /// `identity` to all of them.
    pub fn choose(&self, algorithms: &[(Algorithm, u32)]) -> Option<(Algorithm, u32)> {
        let mut best: Option<((Algorithm, u32), u16)> = None;
        for &(a, level) in algorithms {
            let q = self.q(a);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some(((a, level), q));
            }
        }
        let (choice, q) = best?;
        match self.identity {
            Some(identity) if identity > q => None,
            _ => Some(choice),
        }
    }
}

/// Parses a q-value (`0`, `0.5`, `1.000`) into thousandths; `None` when malformed.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

// === Per-response decision ===

/// What the request side decided for one request; the module applies it to the response.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration the request runs on.
    pub config: Arc<Config>,
    /// Whether compression is on for the route (its switch, else `[compression] enabled`).
    pub enabled: bool,
    /// The algorithm and level negotiated with the client, if any.
    pub encode: Option<(Algorithm, u32)>,
    /// What the client accepts.
    pub accepts: Accepts,
    /// A `HEAD` request: the response is left alone.
    pub head: bool,
    /// Strong forms added to the upstream `If-None-Match` for weak tags (`W/"x"` → `"x"`): a
    /// 304 carrying one of them gets it weakened back, so it matches what the client holds.
    pub weak_validators: Vec<String>,
}

impl Plan {
    /// The gzip level a response the cache may store is stored at (`store_level`), or `None`
    /// when it is stored as the origin sent it (compression off for the route, gzip not
    /// configured, or `HEAD`).
    fn store_level(&self) -> Option<u32> {
        self.config
            .compression
            .store_level
            .filter(|_| self.enabled && !self.head)
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it as it is.
    Leave,
    /// Encode the body.
    Encode(Algorithm, u32),
    /// Decode a gzip or br body for a client that does not accept it.
    Decode,
}

/// The decision for one response: the action, and whether it depends on `Accept-Encoding`
/// (then `Vary: Accept-Encoding` is added even when this client gets the body as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do with the body.
    pub action: Action,
    /// Whether the response varies by `Accept-Encoding`.
    pub vary: bool,
}

impl Decision {
    const LEAVE: Decision = Decision {
        action: Action::Leave,
        vary: false,
    };
}

/// Decides what to do with a final (non-1xx) response; `end` means it has no body.
///
/// Left alone: `HEAD`, 204, 304, 206 or `Content-Range`, `Cache-Control: no-transform`,
/// bodies under `min_size` (known from `Content-Length`), types outside `content_types`, and
/// bodies already carrying a `Content-Encoding` the client accepts (or one the gateway cannot
/// decode). Identity bodies are encoded when compression is on for the route and the client
/// accepts a configured algorithm.
pub fn decide(plan: &Plan, resp: &ResponseHeader, end: bool) -> Decision {
    let status = resp.status.as_u16();
    if plan.head || end || matches!(status, 204 | 206 | 304) {
        return Decision::LEAVE;
    }
    if resp.headers.contains_key(CONTENT_RANGE) || no_transform(resp) {
        return Decision::LEAVE;
    }
    match content_coding(resp) {
        Coding::Identity => {}
        Coding::Known(a) => {
            let decodable = matches!(a, Algorithm::Gzip | Algorithm::Brotli);
            let action = if !plan.accepts.accepts(a) && decodable {
                Action::Decode
            } else {
                Action::Leave
            };
            return Decision {
                action,
                vary: decodable,
            };
        }
        Coding::Other => return Decision::LEAVE,
    }
    let config = &plan.config.compression;
    let big_enough = match content_length(resp) {
        Some(n) => n >= config.min_size,
        None => true,
    };
    let type_ok = resp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| config.compresses_type(t));
    if !(plan.enabled && big_enough && type_ok) {
        return Decision::LEAVE;
    }
    Decision {
        action: match plan.encode {
            Some((a, level)) => Action::Encode(a, level),
            None => Action::Leave,
        },
        vary: true,
    }
}

enum Coding {
    Identity,
    Known(Algorithm),
    Other,
}

fn content_coding(resp: &ResponseHeader) -> Coding {
    let mut values = resp.headers.get_all(CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return Coding::Identity;
    };
    if values.next().is_some() {
        return Coding::Other;
    }
    let Ok(text) = first.to_str() else {
        return Coding::Other;
    };
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("identity") {
        return Coding::Identity;
    }
    // Several codings (`gzip, br`) are never undone here.
    match Algorithm::from_token(text) {
        Some(a) => Coding::Known(a),
        None => Coding::Other,
    }
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|d| {
            let name = d.split(|b| *b == b'=').next().unwrap_or(d);
            name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
        })
    })
}

/// Whether the module would decode a stored response with this header for this request and
/// send it identity: a 200 in gzip for a client that does not accept gzip, with nothing to
/// encode it in instead. The cache then sends the decoded copy it keeps next to an L1 entry
/// (`cache::serve_decoded`), with [`decoded_headers`], and the module leaves it alone.
pub fn wants_decoded(session: &mut Session, resp: &ResponseHeader) -> bool {
    let Some(plan) = session
        .downstream_modules_ctx
        .get_mut::<Compression>()
        .and_then(|m| m.plan.as_ref())
    else {
        return false;
    };
    plan.encode.is_none()
        && resp.status.as_u16() == 200
        && matches!(content_coding(resp), Coding::Known(Algorithm::Gzip))
        && decide(plan, resp, false).action == Action::Decode
}

/// The header of a stored gzip response the cache sends decoded: what the module's decoder
/// leaves (no `Content-Encoding` or `Accept-Ranges`, a weak `ETag`, `Vary: Accept-Encoding`),
/// with the decoded length as `Content-Length` instead of chunked framing.
pub fn decoded_headers(resp: &mut ResponseHeader, len: usize) {
    resp.remove_header(&CONTENT_ENCODING);
    resp.remove_header(&ACCEPT_RANGES);
    resp.remove_header(&TRANSFER_ENCODING);
    let _ = resp.insert_header(CONTENT_LENGTH, len.to_string());
    weaken_etag(resp);
    add_vary(resp);
}

/// Adds `Accept-Encoding` to `Vary`, merged into one field value with what is there; nothing
/// when it is listed already or `Vary: *`.
pub fn add_vary(resp: &mut ResponseHeader) {
    let existing: Vec<&[u8]> = resp
        .headers
        .get_all(VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .collect();
    if existing
        .iter()
        .any(|t| *t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    {
        return;
    }
    let mut merged = existing.join(&b", "[..]);
    if !merged.is_empty() {
        merged.extend_from_slice(b", ");
    }
    merged.extend_from_slice(b"Accept-Encoding");
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        let _ = resp.insert_header(VARY, v);
    }
}

/// Weakens a strong `ETag` (`"x"` → `W/"x"`): the encoded body is a different representation,
/// but `If-None-Match` (weak comparison) still matches it. A malformed tag is removed.
pub fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(tag) = resp.headers.get(ETAG) else {
        return;
    };
    let bytes = tag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let weak = if bytes.starts_with(b"\"") {
        HeaderValue::from_bytes(&[b"W/", bytes].concat()).ok()
    } else {
        None
    };
    match weak {
        Some(v) => {
            let _ = resp.insert_header(ETAG, v);
        }
        None => {
            resp.remove_header(&ETAG);
        }
    }
}

/// The entity tags of an `If-None-Match` value as `(weak, "opaque")` pairs; `*` yields nothing.
fn entity_tags(value: &[u8]) -> Vec<(bool, &[u8])> {
    let mut tags = Vec::new();
    let mut i = 0;
    while i < value.len() {
        if matches!(value[i], b' ' | b'\t' | b',') {
            i += 1;
            continue;
        }
        let weak = value[i..].starts_with(b"W/");
        let start = if weak { i + 2 } else { i };
        // `*` or a malformed tag: stop here.
        if value.get(start) != Some(&b'"') {
            break;
        }
        let Some(len) = value[start + 1..].iter().position(|b| *b == b'"') else {
            break;
        };
        let end = start + len + 2;
        tags.push((weak, &value[start..end]));
        i = end;
    }
    tags
}

/// Adds the strong form of every weak tag in `If-None-Match` (`W/"x"` → `W/"x", "x"`), and
/// returns the strong forms added. `If-None-Match` compares weakly, so this changes nothing for
/// an origin that follows RFC 9110; an origin that compares strings as they are still answers
/// 304 to a client holding the tag the gateway weakened.
fn normalize_if_none_match(req: &mut RequestHeader) -> Vec<String> {
    let Some(value) = req.headers.get(IF_NONE_MATCH) else {
        return Vec::new();
    };
    let tags = entity_tags(value.as_bytes());
    let mut added = Vec::new();
    for (weak, opaque) in &tags {
        if *weak && !tags.iter().any(|(w, o)| !w && o == opaque) {
            added.push(String::from_utf8_lossy(opaque).into_owned());
        }
    }
    if !added.is_empty() {
        let mut v = value.as_bytes().to_vec();
        for tag in &added {
            v.extend_from_slice(b", ");
            v.extend_from_slice(tag.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            let _ = req.insert_header(IF_NONE_MATCH, v);
        }
    }
    added
}

/// Sets the headers of an encoded response.
fn encode_headers(resp: &mut ResponseHeader, algorithm: Algorithm) {
    let _ = resp.insert_header(CONTENT_ENCODING, algorithm.as_str());
    // The length is not known until the last chunk; the body is sent chunked.
    resp.remove_header(&CONTENT_LENGTH);
    // Byte ranges of the identity body do not apply to the encoded one.
    resp.remove_header(&ACCEPT_RANGES);
    let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
    weaken_etag(resp);
}

// === Encoder ===

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// A streaming encoder: every chunk in is flushed out at once (a sync flush), so a client sees
/// each chunk as soon as the upstream sends it; memory is the encoder's window and one chunk.
pub struct Encoder {
    algorithm: Algorithm,
    inner: Option<Inner>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

impl Encoder {
    /// A new encoder; `level` must be in the algorithm's range (config validation ensures it).
    pub fn new(algorithm: Algorithm, level: u32) -> std::io::Result<Encoder> {
        let inner = match algorithm {
            Algorithm::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            // 4 KiB buffer, 2^19 window: the same as Pingora's brotli encoder.
            Algorithm::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level,
                19,
            ))),
            Algorithm::Zstd => Inner::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                i32::try_from(level).unwrap_or(3),
            )?),
        };
        let label = algorithm.as_str();
        Ok(Encoder {
            algorithm,
            inner: Some(inner),
            bytes_in: metrics::COMPRESSION_BYTES.with_label_values(&[label, "in"]),
            bytes_out: metrics::COMPRESSION_BYTES.with_label_values(&[label, "out"]),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether the stream has been finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_none()
    }

    /// Encodes one chunk and returns everything it produced: flushed, or the end of the stream
    /// when `end`. After the end it returns nothing.
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Bytes::new());
        };
        match inner {
            Inner::Gzip(w) => w.write_all(input)?,
            Inner::Brotli(w) => w.write_all(input)?,
            Inner::Zstd(w) => w.write_all(input)?,
        }
        let out = if end {
            match self.inner.take() {
                Some(Inner::Gzip(w)) => w.finish()?,
                Some(Inner::Brotli(w)) => w.into_inner(),
                Some(Inner::Zstd(w)) => w.finish()?,
                None => Vec::new(),
            }
        } else if input.is_empty() {
            Vec::new()
        } else {
            match inner {
                Inner::Gzip(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
                Inner::Brotli(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
                Inner::Zstd(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
            }
        };
        self.bytes_in.inc_by(input.len() as u64);
        self.bytes_out.inc_by(out.len() as u64);
        Ok(Bytes::from(out))
    }
}

// === The downstream module ===

enum Body {
    /// No decision yet (before the final response header).
    Undecided,
    /// Sent as it is.
    Untouched,
    /// Encoded chunk by chunk.
    Encode(Box<Encoder>),
    /// Decoded chunk by chunk by Pingora's decoder.
    Decode(Box<ResponseCompressionCtx>),
}

/// The per-request downstream module: applies the request's [`Plan`] to the response.
pub struct Compression {
    plan: Option<Plan>,
    body: Body,
    /// The gzip level to store with, when the cache may store this response.
    store_level: Option<u32>,
    /// The encoder of a response being stored compressed.
    store: Option<Box<Encoder>>,
}

impl Compression {
    /// Sets the plan; called from `request_filter`.
    pub fn set_plan(&mut self, plan: Plan) {
        self.plan = Some(plan);
    }

    fn header(&mut self, resp: &mut ResponseHeader, end: bool) {
        if !matches!(self.body, Body::Undecided) {
            return;
        }
        let Some(plan) = &self.plan else {
            self.body = Body::Untouched;
            return;
        };
        if resp.status.is_informational() {
            if resp.status.as_u16() == 101 {
                self.body = Body::Untouched;
            }
            // Other 1xx: wait for the final response header.
            return;
        }
        if resp.status.as_u16() == 304 {
            revalidated(plan, resp);
            self.body = Body::Untouched;
            return;
        }
        let decision = decide(plan, resp, end);
        if decision.vary {
            add_vary(resp);
        }
        self.body = match decision.action {
            Action::Leave => Body::Untouched,
            Action::Encode(a, level) => match Encoder::new(a, level) {
                Ok(e) => {
                    encode_headers(resp, a);
                    Body::Encode(Box::new(e))
                }
                Err(e) => {
                    tracing::warn!(algorithm = a.as_str(), error = %e, "Creating the encoder failed; sending the body as it is.");
                    Body::Untouched
                }
            },
            Action::Decode => {
                // Pingora's ctx with compression off and decompression on decodes any gzip or
                // br body, since its list of accepted codings stays empty; it also drops
                // Content-Encoding/Content-Length and weakens the ETag.
                let mut ctx = ResponseCompressionCtx::new(0, true, false);
                ctx.response_header_filter(resp, end);
                Body::Decode(Box::new(ctx))
            }
        };
    }
}

/// A 304 for a client that holds a tag the gateway weakened carries the weak form again, and
/// the `Vary` the full response would carry.
fn revalidated(plan: &Plan, resp: &mut ResponseHeader) {
    let Some(tag) = resp.headers.get(ETAG) else {
        return;
    };
    if plan
        .weak_validators
        .iter()
        .any(|w| w.as_bytes() == tag.as_bytes())
    {
        weaken_etag(resp);
        add_vary(resp);
    }
}

#[async_trait]
impl HttpModule for Compression {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.header(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        match &mut self.body {
            Body::Encode(e) => {
                let input = body.as_deref().unwrap_or(&[]);
                let out = e.encode(input, end_of_stream).map_err(|err| {
                    Error::because(ErrorType::InternalError, "encoding the response body", err)
                })?;
                *body = (!out.is_empty() || end_of_stream).then_some(out);
            }
            Body::Decode(ctx) => {
                if let Some(out) = ctx.response_body_filter(body.as_ref(), end_of_stream) {
                    *body = Some(out);
                }
            }
            Body::Undecided | Body::Untouched => {}
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        // A body served from the cache ends with a `Done` task rather than a last chunk.
        match &mut self.body {
            Body::Encode(e) if !e.is_finished() => {
                let out = e.encode(&[], true).map_err(|err| {
                    Error::because(ErrorType::InternalError, "encoding the response body", err)
                })?;
                Ok(Some(out))
            }
            Body::Decode(ctx) => Ok(ctx.response_body_filter(None, true)),
            _ => Ok(None),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

struct CompressionBuilder;

impl HttpModuleBuilder for CompressionBuilder {
    fn init(&self) -> Module {
        Box::new(Compression {
            plan: None,
            body: Body::Undecided,
            store_level: None,
            store: None,
        })
    }

    fn order(&self) -> i16 {
        // Late, like Pingora's own compression module: after modules that rewrite the body.
        i16::MIN / 2
    }
}

/// The builder of [`Compression`], for `ProxyHttp::init_downstream_modules`.
pub fn module() -> ModuleBuilder {
    Box::new(CompressionBuilder)
}

// === Phase hooks ===

/// `request_filter`: negotiates the coding for this request and gives the plan to the module.
pub fn request_filter(session: &mut Session, config: &Arc<Config>, route: &Route) {
    let req = session.req_header();
    let accepts = Accepts::parse(req.headers.get_all(ACCEPT_ENCODING));
    let head = req.method == http::Method::HEAD;
    let settings = &config.compression;
    let enabled = route.compression.unwrap_or(settings.enabled);
    let encode = if enabled {
        accepts.choose(&settings.algorithms)
    } else {
        None
    };
    let plan = Plan {
        config: config.clone(),
        enabled,
        encode,
        accepts,
        head,
        weak_validators: Vec::new(),
    };
    if let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() {
        module.set_plan(plan);
    }
}

/// `upstream_request_filter`: appends the strong form of weak tags to `If-None-Match` (whether
/// the client or the cache revalidating an entry sent them; see [`Plan::weak_validators`]).
///
/// For a request whose response the cache may store, the origin is asked for the same coding
/// whatever this client accepts: `Accept-Encoding: gzip` when compression is on for the route
/// and gzip is configured (the response is then stored gzip-compressed once, see
/// [`upstream_response_filter`]), none otherwise. The cache must therefore not vary its entries
/// on `Accept-Encoding`: the module adapts every stored entry to each client.
pub fn upstream_request_filter(session: &mut Session, upstream_request: &mut RequestHeader) {
    let weak_validators = normalize_if_none_match(upstream_request);
    let cacheable = session.cache.enabled();
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return;
    };
    let Some(plan) = module.plan.as_mut() else {
        return;
    };
    plan.weak_validators = weak_validators;
    if !cacheable {
        return;
    }
    match plan.store_level() {
        Some(level) => {
            let _ = upstream_request.insert_header(ACCEPT_ENCODING, "gzip");
            module.store_level = Some(level);
        }
        None => {
            upstream_request.remove_header(&ACCEPT_ENCODING);
        }
    }
}

/// `upstream_response_filter`: a response the cache may store is gzip-encoded here, before the
/// cache sees it, when it qualifies by the same rules as for a client ([`decide`]); a 304 that
/// revalidates a stored entry gets its `ETag` weakened like the entry's.
pub fn upstream_response_filter(session: &mut Session, resp: &mut ResponseHeader) {
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return;
    };
    let (Some(level), Some(plan)) = (module.store_level, module.plan.as_ref()) else {
        return;
    };
    if resp.status.is_informational() {
        return;
    }
    if resp.status.as_u16() == 304 {
        weaken_etag(resp);
        return;
    }
    let store_plan = Plan {
        accepts: Accepts::only(Algorithm::Gzip),
        encode: Some((Algorithm::Gzip, level)),
        ..plan.clone()
    };
    if decide(&store_plan, resp, false).action != Action::Encode(Algorithm::Gzip, level) {
        return;
    }
    match Encoder::new(Algorithm::Gzip, level) {
        Ok(e) => {
            encode_headers(resp, Algorithm::Gzip);
            module.store = Some(Box::new(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, "Creating the encoder failed; storing the body as it is.")
        }
    }
}

/// For a response the gateway produced itself and the cache is about to store (pooled query
/// path): the whole body gzip-encoded as [`upstream_request_filter`],
/// [`upstream_response_filter`] and [`upstream_response_body_filter`] would have stored an
/// origin's identity answer, with the header changed to match. Unchanged when compression is off
/// for the route, gzip is not configured, or the response does not qualify.
pub fn encode_for_store(
    session: &mut Session,
    resp: &mut ResponseHeader,
    body: Bytes,
) -> pingora::Result<Bytes> {
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return Ok(body);
    };
    let Some(plan) = module.plan.as_ref() else {
        return Ok(body);
    };
    // As `upstream_request_filter` decides for an origin response.
    match plan.store_level() {
        Some(level) => module.store_level = Some(level),
        None => return Ok(body),
    }
    upstream_response_filter(session, resp);
    let mut body = Some(body);
    upstream_response_body_filter(session, &mut body, true)?;
    if let Some(m) = session.downstream_modules_ctx.get_mut::<Compression>() {
        if m.store.take().is_some() {
            // The header said identity with a length; the stored form is the encoded body.
            let len = body.as_ref().map_or(0, |b| b.len());
            resp.remove_header(&TRANSFER_ENCODING);
            let _ = resp.insert_header(CONTENT_LENGTH, len.to_string());
        }
    }
    Ok(body.unwrap_or_default())
}

/// `upstream_response_body_filter`: encodes the body of a response being stored compressed.
pub fn upstream_response_body_filter(
    session: &mut Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> pingora::Result<()> {
    let Some(encoder) = session
        .downstream_modules_ctx
        .get_mut::<Compression>()
        .and_then(|m| m.store.as_mut())
    else {
        return Ok(());
    };
    let out = encoder
        .encode(body.as_deref().unwrap_or(&[]), end_of_stream)
        .map_err(|e| Error::because(ErrorType::InternalError, "encoding the response body", e))?;
    *body = (!out.is_empty() || end_of_stream).then_some(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config(toml: &str) -> Arc<Config> {
        Arc::new(Config::parse(toml).unwrap_or_else(|e| panic!("config: {e}")))
    }

    fn accepts(v: &str) -> Accepts {
        Accepts::parse([&HeaderValue::from_str(v).unwrap()])
    }

    fn plan(config: &Arc<Config>, accept_encoding: Option<&str>) -> Plan {
        let accepts = accept_encoding.map(accepts).unwrap_or_default();
        Plan {
            config: config.clone(),
            enabled: config.compression.enabled,
            encode: accepts.choose(&config.compression.algorithms),
            accepts,
            head: false,
            weak_validators: vec![],
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn problems(toml: &str) -> Vec<String> {
        match Config::parse(toml) {
            Ok(_) => vec![],
            Err(crate::config::ConfigError::Invalid(list)) => {
                list.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_defaults_and_problems() {
        let c = CompressionConfig::default();
        assert!(c.enabled);
        assert_eq!(c.algorithms, vec![(Algorithm::Gzip, 1)]);
        assert_eq!(c.store_level, Some(6));
        assert_eq!(c.min_size, 1000);
        assert!(c.compresses_type("application/json; charset=utf-8"));
        assert!(c.compresses_type("Text/HTML"));
        assert!(!c.compresses_type("image/png"));
        assert!(!c.compresses_type("application/jsonx"));

        let c = config(
            "[compression]\nalgorithms = [\"br\", \"gzip\", \"zstd\"]\nlevel = 5\nlevels = { zstd = 19 }\nmin_size = \"2KiB\"",
        );
        assert_eq!(
            c.compression.algorithms,
            vec![
                (Algorithm::Brotli, 5),
                (Algorithm::Gzip, 5),
                (Algorithm::Zstd, 19)
            ]
        );
        assert_eq!(c.compression.min_size, 2048);

        let p = problems(
            "[compression]\nalgorithms = [\"gzip\", \"lz4\", \"gzip\"]\nlevel = 10\nlevels = { zstd = 3, foo = 1 }\nmin_size = \"big\"\ncontent_types = [\"json\"]",
        );
        let has = |needle: &str| p.iter().any(|s| s.starts_with(needle));
        assert!(
            has("compression.algorithms[1]: `lz4` is not one of"),
            "{p:?}"
        );
        assert!(
            has("compression.algorithms[2]: `gzip` is listed twice"),
            "{p:?}"
        );
        assert!(
            has("compression.level: level 10 is out of range for gzip: 1–9"),
            "{p:?}"
        );
        assert!(
            has("compression.levels.zstd: `zstd` is not in compression.algorithms"),
            "{p:?}"
        );
        assert!(has("compression.levels.foo:"), "{p:?}");
        assert!(has("compression.min_size:"), "{p:?}");
        assert!(
            has("compression.content_types[0]: `json` is not a media type"),
            "{p:?}"
        );
        assert_eq!(p.len(), 7, "{p:?}");

        let p = problems("[compression]\nalgorithms = []");
        assert!(p[0].starts_with("compression.algorithms: empty"), "{p:?}");
        assert!(problems("[compression]\nenabled = false\nalgorithms = []").is_empty());
    }

    #[test]
    fn the_store_level_is_separate_from_the_live_level() {
        let c = config("[compression]\nlevel = 9");
        assert_eq!(c.compression.algorithms, vec![(Algorithm::Gzip, 9)]);
        assert_eq!(c.compression.store_level, Some(6));
        let c =
            config("[compression]\nalgorithms = [\"br\", \"gzip\"]\nlevel = 4\nstore_level = 2");
        assert_eq!(c.compression.algorithms[0], (Algorithm::Brotli, 4));
        assert_eq!(c.compression.store_level, Some(2));
        assert_eq!(
            config("[compression]\nalgorithms = [\"br\"]")
                .compression
                .store_level,
            None
        );

        let p = problems("[compression]\nstore_level = 10");
        assert_eq!(
            p,
            vec!["compression.store_level: level 10 is out of range for gzip: 1–9".to_string()]
        );
        let p = problems("[compression]\nalgorithms = [\"zstd\"]\nlevel = 3\nstore_level = 6");
        assert!(
            p.len() == 1 && p[0].starts_with("compression.store_level: the cache stores"),
            "{p:?}"
        );
    }

    #[test]
    fn negotiation_follows_q_values_and_configured_order() {
        let gzip = [(Algorithm::Gzip, 6)];
        let all = [
            (Algorithm::Gzip, 6),
            (Algorithm::Brotli, 4),
            (Algorithm::Zstd, 3),
        ];
        let pick =
            |ae: &str, algs: &[(Algorithm, u32)]| accepts(ae).choose(algs).map(|(a, _)| a.as_str());
        assert_eq!(pick("gzip", &gzip), Some("gzip"));
        assert_eq!(pick("GZIP", &gzip), Some("gzip"));
        assert_eq!(pick("x-gzip", &gzip), Some("gzip"));
        assert_eq!(pick("gzip;q=0", &gzip), None);
        assert_eq!(pick("gzip ; q=0.000", &gzip), None);
        assert_eq!(pick("identity", &gzip), None);
        assert_eq!(pick("*", &gzip), Some("gzip"));
        assert_eq!(pick("*;q=0", &gzip), None);
        assert_eq!(pick("*, gzip;q=0", &gzip), None);
        assert_eq!(pick("br", &gzip), None);
        assert_eq!(
            pick("gzip;q=2", &gzip),
            None,
            "malformed q ignores the entry"
        );
        assert_eq!(pick("gzip;q=0.5, identity;q=1", &gzip), None);
        assert_eq!(pick("gzip;q=0.5, identity;q=0.5", &gzip), Some("gzip"));
        // configured order breaks ties; q-values win otherwise
        assert_eq!(pick("br, gzip, zstd", &all), Some("gzip"));
        assert_eq!(pick("gzip;q=0.8, br", &all), Some("br"));
        assert_eq!(pick("zstd, gzip;q=0.5, br;q=0.9", &all), Some("zstd"));
        assert_eq!(pick("deflate, gzip;q=0", &all), None);
        // no header at all: identity only
        assert_eq!(Accepts::parse([]).choose(&all), None);
        assert!(!Accepts::parse([]).accepts(Algorithm::Gzip));
        // several header fields
        let a = HeaderValue::from_static("br;q=0.1");
        let b = HeaderValue::from_static("gzip");
        assert_eq!(
            Accepts::parse([&a, &b]).choose(&all).map(|(a, _)| a),
            Some(Algorithm::Gzip)
        );
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("0.1234"), None);
        assert_eq!(parse_qvalue(""), None);
        assert_eq!(parse_qvalue("x"), None);
    }

    #[test]
    fn decisions() {
        let c = config("");
        let gzip = plan(&c, Some("gzip"));
        let json = [
            ("content-type", "application/json"),
            ("content-length", "20000"),
        ];
        let encode = Decision {
            action: Action::Encode(Algorithm::Gzip, 1),
            vary: true,
        };
        assert_eq!(decide(&gzip, &resp(200, &json), false), encode);
        assert_eq!(decide(&gzip, &resp(404, &json), false), encode);
        // unknown length is compressed
        let chunked = [("content-type", "application/json")];
        assert_eq!(decide(&gzip, &resp(200, &chunked), false), encode);
        // the client without gzip: left alone but varies
        let identity = plan(&c, None);
        assert_eq!(
            decide(&identity, &resp(200, &json), false),
            Decision {
                action: Action::Leave,
                vary: true
            }
        );
        // left alone entirely
        let leave = Decision::LEAVE;
        let small = [
            ("content-type", "application/json"),
            ("content-length", "999"),
        ];
        assert_eq!(decide(&gzip, &resp(200, &small), false), leave);
        let png = [("content-type", "image/png"), ("content-length", "20000")];
        assert_eq!(decide(&gzip, &resp(200, &png), false), leave);
        let untyped = [("content-length", "20000")];
        assert_eq!(decide(&gzip, &resp(200, &untyped), false), leave);
        assert_eq!(decide(&gzip, &resp(206, &json), false), leave);
        assert_eq!(decide(&gzip, &resp(204, &[]), true), leave);
        let ranged = [
            ("content-type", "application/json"),
            ("content-range", "bytes 0-9/100"),
        ];
        assert_eq!(decide(&gzip, &resp(200, &ranged), false), leave);
        let nt = [
            ("content-type", "application/json"),
            ("cache-control", "public, No-Transform"),
        ];
        assert_eq!(decide(&gzip, &resp(200, &nt), false), leave);
        assert_eq!(decide(&gzip, &resp(200, &json), true), leave, "no body");
        let mut head = gzip.clone();
        head.head = true;
        assert_eq!(decide(&head, &resp(200, &json), false), leave);
        let mut off = gzip.clone();
        off.enabled = false;
        assert_eq!(decide(&off, &resp(200, &json), false), leave);
    }

    #[test]
    fn encoded_bodies_are_passed_or_decoded() {
        let c = config("");
        let gz = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        let br = [
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ];
        let zs = [
            ("content-type", "application/json"),
            ("content-encoding", "zstd"),
        ];
        let pass = Decision {
            action: Action::Leave,
            vary: true,
        };
        let decode = Decision {
            action: Action::Decode,
            vary: true,
        };
        assert_eq!(
            decide(&plan(&c, Some("gzip")), &resp(200, &gz), false),
            pass
        );
        assert_eq!(
            decide(&plan(&c, Some("gzip, br")), &resp(200, &br), false),
            pass
        );
        assert_eq!(decide(&plan(&c, None), &resp(200, &gz), false), decode);
        assert_eq!(
            decide(&plan(&c, Some("gzip;q=0")), &resp(200, &gz), false),
            decode
        );
        assert_eq!(
            decide(&plan(&c, Some("gzip")), &resp(200, &br), false),
            decode
        );
        // zstd and unknown codings cannot be decoded here: left alone
        assert_eq!(
            decide(&plan(&c, None), &resp(200, &zs), false),
            Decision {
                action: Action::Leave,
                vary: false
            }
        );
        let deflate = [("content-encoding", "deflate")];
        assert_eq!(
            decide(&plan(&c, None), &resp(200, &deflate), false),
            Decision::LEAVE
        );
        // decoding is independent of the route switch: no client gets a coding it refused
        let mut off = plan(&c, None);
        off.enabled = false;
        assert_eq!(decide(&off, &resp(200, &gz), false), decode);
    }

    #[test]
    fn vary_is_merged() {
        let mut r = resp(200, &[]);
        add_vary(&mut r);
        assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
        let mut r = resp(200, &[("vary", "Origin"), ("vary", "Authorization")]);
        add_vary(&mut r);
        let all: Vec<_> = r.headers.get_all(VARY).iter().collect();
        assert_eq!(all, vec!["Origin, Authorization, Accept-Encoding"]);
        let mut r = resp(200, &[("vary", "origin, accept-encoding")]);
        add_vary(&mut r);
        assert_eq!(r.headers.get(VARY).unwrap(), "origin, accept-encoding");
        let mut r = resp(200, &[("vary", "*")]);
        add_vary(&mut r);
        assert_eq!(r.headers.get(VARY).unwrap(), "*");
    }

    #[test]
    fn etags_are_weakened() {
        let mut r = resp(200, &[("etag", "\"abc\"")]);
        weaken_etag(&mut r);
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"abc\"");
        weaken_etag(&mut r);
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"abc\"");
        let mut r = resp(200, &[("etag", "abc")]);
        weaken_etag(&mut r);
        assert!(r.headers.get(ETAG).is_none(), "malformed tags are dropped");
    }

    #[test]
    fn if_none_match_gets_strong_forms() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("if-none-match", "W/\"a,b\", \"c\", W/\"c\", W/\"d\"")
            .unwrap();
        let added = normalize_if_none_match(&mut req);
        assert_eq!(added, vec!["\"a,b\"".to_string(), "\"d\"".to_string()]);
        assert_eq!(
            req.headers.get(IF_NONE_MATCH).unwrap(),
            "W/\"a,b\", \"c\", W/\"c\", W/\"d\", \"a,b\", \"d\""
        );
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("if-none-match", "*").unwrap();
        assert!(normalize_if_none_match(&mut req).is_empty());
        assert_eq!(req.headers.get(IF_NONE_MATCH).unwrap(), "*");
    }

    #[test]
    fn not_modified_gets_the_weak_tag_back() {
        let c = config("");
        let mut p = plan(&c, Some("gzip"));
        p.weak_validators = vec!["\"v1\"".into()];
        let mut r = resp(304, &[("etag", "\"v1\"")]);
        revalidated(&p, &mut r);
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"v1\"");
        assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
        let mut r = resp(304, &[("etag", "\"v2\"")]);
        revalidated(&p, &mut r);
        assert_eq!(r.headers.get(ETAG).unwrap(), "\"v2\"");
    }

    fn roundtrip(algorithm: Algorithm, level: u32) {
        let chunks: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("{{\"chunk\":{i},\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes())
            .collect();
        let mut enc = Encoder::new(algorithm, level).unwrap();
        let mut wire = Vec::new();
        let mut original = Vec::new();
        for c in &chunks {
            let out = enc.encode(c, false).unwrap();
            assert!(!out.is_empty(), "{algorithm:?}: every chunk is flushed out");
            wire.extend_from_slice(&out);
            original.extend_from_slice(c);
            // What the client has so far decodes to everything sent so far.
            assert_eq!(decode_prefix(algorithm, &wire), original, "{algorithm:?}");
        }
        wire.extend_from_slice(&enc.encode(&[], true).unwrap());
        assert!(enc.is_finished());
        assert!(enc.encode(b"late", true).unwrap().is_empty());
        assert_eq!(decode_all(algorithm, &wire), original);
        assert!(wire.len() < original.len());
    }

    fn decode_prefix(algorithm: Algorithm, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match algorithm {
            Algorithm::Gzip => {
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(wire).unwrap();
                d.flush().unwrap();
                out = d.get_ref().clone();
            }
            Algorithm::Brotli => {
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                d.write_all(wire).unwrap();
                d.flush().unwrap();
                out = d.get_ref().clone();
            }
            Algorithm::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                d.write_all(wire).unwrap();
                d.flush().unwrap();
                out.extend_from_slice(d.get_ref());
            }
        }
        out
    }

    fn decode_all(algorithm: Algorithm, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match algorithm {
            Algorithm::Gzip => {
                flate2::read::GzDecoder::new(wire)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Brotli => {
                brotli::Decompressor::new(wire, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Zstd => out = zstd::decode_all(wire).unwrap(),
        }
        out
    }

    #[test]
    fn encoders_stream_and_finish() {
        roundtrip(Algorithm::Gzip, 6);
        roundtrip(Algorithm::Gzip, 1);
        roundtrip(Algorithm::Brotli, 5);
        roundtrip(Algorithm::Zstd, 3);
    }

    #[tokio::test]
    async fn module_encodes_and_finishes_on_done() {
        let c = config("");
        let mut m = Compression {
            plan: Some(plan(&c, Some("gzip"))),
            body: Body::Undecided,
            store_level: None,
            store: None,
        };
        let mut r = resp(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "5000"),
                ("etag", "\"e\""),
                ("accept-ranges", "bytes"),
            ],
        );
        m.response_header_filter(&mut r, false).await.unwrap();
        assert_eq!(r.headers.get(CONTENT_ENCODING).unwrap(), "gzip");
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        assert!(r.headers.get(ACCEPT_RANGES).is_none());
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"e\"");
        assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
        let original = vec![b'a'; 5000];
        let mut body = Some(Bytes::from(original.clone()));
        m.response_body_filter(&mut body, false).unwrap();
        let mut wire = body.unwrap().to_vec();
        // The body ends with a `Done` task (as from the cache): the module finishes the stream.
        wire.extend_from_slice(&m.response_done_filter().unwrap().unwrap());
        assert_eq!(decode_all(Algorithm::Gzip, &wire), original);
        assert_eq!(m.response_done_filter().unwrap(), None);
    }

    #[tokio::test]
    async fn module_decodes_for_identity_clients() {
        let c = config("");
        let mut m = Compression {
            plan: Some(plan(&c, None)),
            body: Body::Undecided,
            store_level: None,
            store: None,
        };
        let original = b"{\"hello\":\"world\"}".repeat(100);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&original).unwrap();
        let gz = enc.finish().unwrap();
        let len = gz.len().to_string();
        let mut r = resp(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("content-length", len.as_str()),
                ("etag", "\"e\""),
            ],
        );
        m.response_header_filter(&mut r, false).await.unwrap();
        assert!(r.headers.get(CONTENT_ENCODING).is_none());
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"e\"");
        assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
        let mut body = Some(Bytes::from(gz));
        m.response_body_filter(&mut body, true).unwrap();
        assert_eq!(body.unwrap().to_vec(), original);
    }
}
