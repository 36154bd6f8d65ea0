//! Identity (DESIGN.md capability 2): the verified tenant and subject of a request.
//!
//! Runs in `request_filter`, before anything that depends on who is asking (rate limit, cache
//! scope, pooled query path). The sources:
//! - `jwt`: an `Authorization: Bearer` token verified with an HS256 secret or an RS256/ES256
//!   public key, `exp`/`nbf` checked; tenant and subject read from configured claims.
//! - `header`: trusted headers set by an authenticating gateway in front of omsgate.
//! - `none`: no identity.
//!
//! An invalid token is not an error: the request is still proxied (the OMS decides), but it has
//! no verified identity, so nothing that grants access (cache scope, pooled path) applies.
//! The headers `x-omsgate-tenant` / `x-omsgate-subject` are always removed from the incoming
//! request and set only from a verified identity.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// Header carrying the verified tenant to the upstream.
pub const TENANT_HEADER: &str = "x-omsgate-tenant";
/// Header carrying the verified subject to the upstream.
pub const SUBJECT_HEADER: &str = "x-omsgate-subject";

/// `[identity]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IdentityFile {
    /// `"jwt"`, `"header"` or `"none"`. Default `"none"`.
    pub mode: String,
    /// Name of the environment variable holding the HS256 secret. Default `"OMSGATE_JWT_SECRET"`.
    pub jwt_secret_env: String,
    /// The HS256 secret itself (prefer `jwt_secret_env`). Default empty.
    pub jwt_secret: String,
    /// PEM file with an RS256 or ES256 public key, used instead of an HS256 secret. Default empty.
    pub jwt_public_key: String,
    /// Accepted clock skew when checking `exp`/`nbf`. Default `"30s"`.
    pub leeway: String,
    /// Required `aud` claim; empty means not checked. Default empty.
    pub audience: String,
    /// Claim holding the tenant. Default `"tenant_id"`.
    pub tenant_claim: String,
    /// Claim holding the subject. Default `"sub"`.
    pub subject_claim: String,
    /// Trusted header with the tenant (`mode = "header"` only). Default `"x-tenant-id"`.
    pub tenant_header: String,
    /// Trusted header with the subject (`mode = "header"` only). Default `"x-user-id"`.
    pub subject_header: String,
}

impl Default for IdentityFile {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            jwt_secret_env: "OMSGATE_JWT_SECRET".into(),
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            leeway: "30s".into(),
            audience: String::new(),
            tenant_claim: "tenant_id".into(),
            subject_claim: "sub".into(),
            tenant_header: "x-tenant-id".into(),
            subject_header: "x-user-id".into(),
        }
    }
}

/// How tokens are verified.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    description: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// The identity source.
#[derive(Debug, Clone, Default)]
pub enum IdentityMode {
    /// No identity.
    #[default]
    None,
    /// Verified JWT bearer tokens.
    Jwt(Box<JwtVerifier>),
    /// Trusted headers.
    Header {
        /// Tenant header name (lowercase).
        tenant: http::HeaderName,
        /// Subject header name (lowercase).
        subject: http::HeaderName,
    },
}

/// Typed `[identity]`.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// The source.
    pub mode: IdentityMode,
    /// Tenant claim name.
    pub tenant_claim: String,
    /// Subject claim name.
    pub subject_claim: String,
}

impl IdentityConfig {
    /// Converts the file layer; reads the secret's env var and the PEM file.
    pub fn from_file(f: &IdentityFile, p: &mut Problems) -> IdentityConfig {
        let leeway = p.duration_or(
            "identity.leeway",
            &f.leeway,
            std::time::Duration::from_secs(30),
        );
        let mode = match f.mode.as_str() {
            "none" => IdentityMode::None,
            "header" => {
                let tenant = header_name(p, "identity.tenant_header", &f.tenant_header);
                let subject = header_name(p, "identity.subject_header", &f.subject_header);
                match (tenant, subject) {
                    (Some(tenant), Some(subject)) => IdentityMode::Header { tenant, subject },
                    _ => IdentityMode::None,
                }
            }
            "jwt" => match jwt_key(f, p) {
                Some((key, alg, description)) => {
                    let mut validation = Validation::new(alg);
                    validation.leeway = leeway.as_secs();
                    validation.validate_nbf = true;
                    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
                    if f.audience.is_empty() {
                        validation.validate_aud = false;
                    } else {
                        validation.set_audience(std::slice::from_ref(&f.audience));
                    }
                    IdentityMode::Jwt(Box::new(JwtVerifier {
                        key,
                        validation,
                        description,
                    }))
                }
                None => IdentityMode::None,
            },
            other => {
                p.push(
                    "identity.mode",
                    format!("`{other}` is not one of \"jwt\", \"header\", \"none\""),
                );
                IdentityMode::None
            }
        };
        if f.tenant_claim.is_empty() {
            p.push("identity.tenant_claim", "must not be empty");
        }
        if f.subject_claim.is_empty() {
            p.push("identity.subject_claim", "must not be empty");
        }
        IdentityConfig {
            mode,
            tenant_claim: f.tenant_claim.clone(),
            subject_claim: f.subject_claim.clone(),
        }
    }
}

fn header_name(p: &mut Problems, key: &str, name: &str) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.push(key, format!("`{name}` is not a valid header name"));
            None
        }
    }
}

fn jwt_key(f: &IdentityFile, p: &mut Problems) -> Option<(DecodingKey, Algorithm, String)> {
    if !f.jwt_public_key.is_empty() {
        let pem = match std::fs::read(&f.jwt_public_key) {
            Ok(pem) => pem,
            Err(e) => {
                p.push(
                    "identity.jwt_public_key",
                    format!("cannot read `{}`: {e}", f.jwt_public_key),
                );
                return None;
            }
        };
        if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            return Some((
                k,
                Algorithm::RS256,
                format!("RS256 key {}", f.jwt_public_key),
            ));
        }
        if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            return Some((
                k,
                Algorithm::ES256,
                format!("ES256 key {}", f.jwt_public_key),
            ));
        }
        p.push(
            "identity.jwt_public_key",
            format!(
                "`{}` holds no RSA or EC (P-256) public key in PEM form",
                f.jwt_public_key
            ),
        );
        return None;
    }
    let secret = if !f.jwt_secret.is_empty() {
        f.jwt_secret.clone()
    } else {
        match std::env::var(&f.jwt_secret_env) {
            Ok(s) if !s.is_empty() => s,
            _ => {
                p.push(
                    "identity.jwt_secret_env",
                    format!(
                        "mode = \"jwt\" needs a key: the environment variable `{}` is unset or empty, \
                         and neither jwt_secret nor jwt_public_key is set",
                        f.jwt_secret_env
                    ),
                );
                return None;
            }
        }
    };
    Some((
        DecodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
        "HS256 secret".into(),
    ))
}

/// The verified identity of a request. Both fields are `None` when unverified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Verified tenant.
    pub tenant: Option<String>,
    /// Verified subject.
    pub subject: Option<String>,
}

/// Why a token was not accepted (kept for logs and metrics; never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No credentials were presented.
    Missing,
    /// The token failed verification (signature, expiry, format).
    Invalid,
    /// The token verified but lacks the tenant claim.
    NoTenant,
}

impl Rejection {
    /// Bounded label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Invalid => "invalid",
            Rejection::NoTenant => "no_tenant",
        }
    }
}

impl IdentityConfig {
    /// Resolves the identity of a request from its headers.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Identity, Rejection> {
        match &self.mode {
            IdentityMode::None => Ok(Identity::default()),
            IdentityMode::Header { tenant, subject } => {
                let get = |h: &http::HeaderName| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                };
                let t = get(tenant);
                if t.is_none() {
                    return Err(Rejection::Missing);
                }
                Ok(Identity {
                    tenant: t,
                    subject: get(subject),
                })
            }
            IdentityMode::Jwt(v) => {
                let auth = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(Rejection::Missing)?;
                let token = auth
                    .strip_prefix("Bearer ")
                    .or_else(|| auth.strip_prefix("bearer "))
                    .ok_or(Rejection::Missing)?
                    .trim();
                let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    token,
                    &v.key,
                    &v.validation,
                )
                .map_err(|_| Rejection::Invalid)?;
                let claim = |name: &str| match data.claims.get(name) {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let tenant = claim(&self.tenant_claim).ok_or(Rejection::NoTenant)?;
                Ok(Identity {
                    tenant: Some(tenant),
                    subject: claim(&self.subject_claim),
                })
            }
        }
    }
}

/// Issues an HS256 token (demo, tests, benches): `tenant_claim`=`tenant`, `sub`=`subject`,
/// expiring after `ttl`.
pub fn issue_hs256(
    secret: &str,
    tenant_claim: &str,
    tenant: &str,
    subject: &str,
    ttl: std::time::Duration,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::Map::new();
    claims.insert(tenant_claim.into(), tenant.into());
    claims.insert("sub".into(), subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    claims.insert("role".into(), "authenticated".into());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_config(secret: &str) -> IdentityConfig {
        let f = IdentityFile {
            mode: "jwt".into(),
            jwt_secret: secret.into(),
            ..Default::default()
        };
        let mut p = Problems::default();
        let c = IdentityConfig::from_file(&f, &mut p);
        assert!(p.is_empty(), "{p:?}");
        c
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn valid_token_gives_identity() {
        let c = jwt_config("s3cret");
        let t = issue_hs256(
            "s3cret",
            "tenant_id",
            "acme",
            "alice",
            std::time::Duration::from_secs(60),
        );
        let id = c.identify(&bearer(&t)).unwrap();
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn forged_and_expired_tokens_are_rejected() {
        let c = jwt_config("s3cret");
        let forged = issue_hs256(
            "other",
            "tenant_id",
            "acme",
            "alice",
            std::time::Duration::from_secs(60),
        );
        assert_eq!(c.identify(&bearer(&forged)), Err(Rejection::Invalid));
        let mut claims = serde_json::Map::new();
        claims.insert("tenant_id".into(), "acme".into());
        claims.insert("exp".into(), 1_000u64.into());
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(c.identify(&bearer(&expired)), Err(Rejection::Invalid));
        assert_eq!(c.identify(&http::HeaderMap::new()), Err(Rejection::Missing));
    }

    #[test]
    fn jwt_without_key_is_a_problem() {
        let f = IdentityFile {
            mode: "jwt".into(),
            jwt_secret_env: "OMSGATE_TEST_SURELY_UNSET_VAR".into(),
            ..Default::default()
        };
        let mut p = Problems::default();
        IdentityConfig::from_file(&f, &mut p);
        assert_eq!(p.list()[0].key, "identity.jwt_secret_env");
    }
}
