//! Response cache (DESIGN.md capability 3). Placeholder: the cache issue fills this in.

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::routes::PathPattern;

/// `[cache]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheFile {}

/// Per-route `cache = { ... }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteCacheFile {}

/// Typed `[cache]`.
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {}

impl CacheConfig {
    /// Converts the file layer.
    pub fn from_file(_f: &CacheFile, _p: &mut Problems) -> CacheConfig {
        CacheConfig {}
    }
}

/// Typed per-route cache policy.
#[derive(Debug, Clone)]
pub struct RoutePolicy {}

impl RoutePolicy {
    /// Converts a route's `cache` table.
    pub fn from_file(
        _f: &RouteCacheFile,
        _pattern: Option<&PathPattern>,
        _methods: &[http::Method],
        _key: &str,
        _p: &mut Problems,
    ) -> Option<RoutePolicy> {
        Some(RoutePolicy {})
    }
}
