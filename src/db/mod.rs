//! The OMS database: migrations and pooled query paths (DESIGN.md capability 8).
//! Placeholder: the migrations issue fills this in.

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::routes::PathPattern;

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseFile {}

/// Typed `[database]`.
#[derive(Debug, Clone, Default)]
pub struct DatabaseConfig {}

impl DatabaseConfig {
    /// Converts the file layer.
    pub fn from_file(_f: &DatabaseFile, _p: &mut Problems) -> DatabaseConfig {
        DatabaseConfig {}
    }
}

/// Checks a route's `query = "..."` binding: a known query, a GET route, the parameters it needs.
pub fn check_query_binding(
    name: &str,
    _pattern: Option<&PathPattern>,
    _methods: &[http::Method],
) -> Result<(), String> {
    Err(format!("unknown query `{name}`"))
}
