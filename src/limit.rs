//! Rate limiting (DESIGN.md capability 5). Placeholder: the rate-limit issue fills this in.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[rate_limit]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitFile {}

/// Typed `[rate_limit]`.
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {}

impl RateLimitConfig {
    /// Converts the file layer.
    pub fn from_file(_f: &RateLimitFile, _p: &mut Problems) -> RateLimitConfig {
        RateLimitConfig {}
    }

    /// Whether a policy of this name is defined.
    pub fn has_policy(&self, _name: &str) -> bool {
        false
    }
}
