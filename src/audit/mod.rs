//! Audit records (DESIGN.md capability 6). Placeholder: the audit issue fills this in.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuditFile {}

/// Per-route `audit = { ... }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteAuditFile {}

/// Typed `[audit]`.
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {}

impl AuditConfig {
    /// Converts the file layer.
    pub fn from_file(_f: &AuditFile, _p: &mut Problems) -> AuditConfig {
        AuditConfig {}
    }
}

/// Typed per-route audit options.
#[derive(Debug, Clone, Default)]
pub struct RouteAudit {}

impl RouteAudit {
    /// Converts a route's `audit` table.
    pub fn from_file(_f: Option<&RouteAuditFile>, _key: &str, _p: &mut Problems) -> RouteAudit {
        RouteAudit {}
    }
}
