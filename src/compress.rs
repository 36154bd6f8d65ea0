//! Response compression (DESIGN.md capability 4). Placeholder: the compression issue fills this in.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[compression]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CompressionFile {}

/// Typed `[compression]`.
#[derive(Debug, Clone, Default)]
pub struct CompressionConfig {}

impl CompressionConfig {
    /// Converts the file layer.
    pub fn from_file(_f: &CompressionFile, _p: &mut Problems) -> CompressionConfig {
        CompressionConfig {}
    }
}
