//! `[compression]`: the file struct, the typed config and the algorithms.

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::units::ByteSize;

// === Config ===

pub(super) const fn default_enabled() -> bool {
    true
}
/// gzip 1 for live responses: on 20 KB of JSON it takes about a quarter of the CPU of gzip 6
/// for about 50 % more bytes (`benches/README.md`, compression).
pub(super) const fn default_level() -> u32 {
    1
}

/// gzip 6 for entries the cache stores: compressed once per miss, sent on every hit.
pub(super) const DEFAULT_STORE_LEVEL: u32 = 6;

/// Responses of known length up to 256 KiB are compressed whole (`whole_body_max`).
pub(super) const DEFAULT_WHOLE_BODY_MAX: u64 = 256 * 1024;

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
    /// Responses whose `Content-Length` is at most this are compressed in one call when their
    /// last byte has arrived (gzip by libdeflate: fewer bytes for less CPU than streaming);
    /// longer ones and those without a length stream, flushed chunk by chunk. Bounds the body
    /// memory held per response being compressed. 0 streams everything. Default 256 KiB.
    pub whole_body_max: ByteSize,
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
            whole_body_max: ByteSize::Text("256KiB".into()),
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

    pub(super) fn levels(self) -> std::ops::RangeInclusive<u32> {
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
    pub(super) fn parse(text: &str) -> Result<TypePattern, String> {
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

    pub(super) fn matches(&self, media_type: &str) -> bool {
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
    /// Largest `Content-Length` compressed in one call rather than streamed, in bytes.
    pub whole_body_max: u64,
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
        let whole_body_max = p
            .bytes("compression.whole_body_max", &f.whole_body_max)
            .unwrap_or(DEFAULT_WHOLE_BODY_MAX);
        CompressionConfig {
            enabled: f.enabled,
            algorithms,
            store_level,
            min_size,
            content_types,
            whole_body_max,
        }
    }

    /// Whether a body of this `Content-Length` (none: unknown) is compressed whole: its length
    /// is known and at most `whole_body_max`.
    pub fn takes_whole(&self, content_length: Option<u64>) -> bool {
        content_length.is_some_and(|n| n <= self.whole_body_max)
    }

    /// The encoder for a body of this `Content-Length` (none: unknown): whole-body when
    /// [`Self::takes_whole`], streaming otherwise.
    pub fn encoder(
        &self,
        algorithm: Algorithm,
        level: u32,
        content_length: Option<u64>,
    ) -> std::io::Result<super::Encoder> {
        if self.takes_whole(content_length) {
            Ok(super::Encoder::whole(algorithm, level))
        } else {
            super::Encoder::new(algorithm, level)
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
