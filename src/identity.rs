//! Identity (DESIGN.md capability 2): the verified tenant and subject of a request.
//!
//! Runs in `request_filter`, before anything that depends on who is asking (rate limit, cache
//! scope, pooled query path). The sources:
//! - `jwt`: an `Authorization: Bearer` token verified with an HS256 secret or an RS256/ES256
//!   public key, `exp`/`nbf` checked; tenant and subject read from configured claims.
//! - `header`: trusted headers set by an authenticating gateway in front of omsgate, believed
//!   only from peers in `rate_limit.trusted_proxies` (a config without them is refused); a
//!   request carrying a trusted header twice is refused (400), and of a comma-separated value
//!   the last element (the hop next to omsgate) counts.
//! - `none`: no identity.
//!
//! An invalid token is not an error: the request is still proxied (the OMS decides), but it has
//! no verified identity, so nothing that grants access (cache scope, pooled path) applies.
//!
//! What omsgate verified is exactly what the OMS receives:
//! - The headers `x-omsgate-tenant` / `x-omsgate-subject` are always removed from the incoming
//!   request and set only from a verified identity.
//! - The headers the OMS itself trusts for identity (`oms_identity_headers`, default
//!   `x-tenant-id`, `x-user-id`) are removed from every request; with `mode = "header"` the
//!   trusted tenant/subject headers are then set again from the verified identity only.
//! - A `Connection` header nominating a credential or identity header (which would make the
//!   proxy drop it after verification, so that the OMS falls back to something else) refuses
//!   the request with 400 ([`IdentityConfig::nominated_credential`]).

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
    /// Headers the OMS itself reads the tenant or user from. They are removed from every
    /// request, so that no client can pick the OMS's notion of who is asking; with
    /// `mode = "header"` the gateway sets `tenant_header` / `subject_header` again from the
    /// verified identity. Default `["x-tenant-id", "x-user-id"]`.
    pub oms_identity_headers: Vec<String>,
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
            oms_identity_headers: vec!["x-tenant-id".into(), "x-user-id".into()],
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
    /// Headers the OMS trusts for identity, removed from every upstream request.
    pub oms_identity_headers: Vec<http::HeaderName>,
    /// Headers a `Connection` field must not nominate: credentials and identity headers.
    pub protected: Vec<http::HeaderName>,
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
        let oms_identity_headers: Vec<http::HeaderName> = f
            .oms_identity_headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| header_name(p, &format!("identity.oms_identity_headers[{i}]"), h))
            .collect();
        let mut protected: Vec<http::HeaderName> = vec![
            http::header::AUTHORIZATION,
            http::header::COOKIE,
            http::HeaderName::from_static(TENANT_HEADER),
            http::HeaderName::from_static(SUBJECT_HEADER),
        ];
        protected.extend(oms_identity_headers.iter().cloned());
        if let IdentityMode::Header { tenant, subject } = &mode {
            protected.push(tenant.clone());
            protected.push(subject.clone());
        }
        protected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        protected.dedup();
        IdentityConfig {
            mode,
            tenant_claim: f.tenant_claim.clone(),
            subject_claim: f.subject_claim.clone(),
            oms_identity_headers,
            protected,
        }
    }

    /// Whether `mode = "header"`: identity comes from trusted headers.
    pub fn is_header_mode(&self) -> bool {
        matches!(self.mode, IdentityMode::Header { .. })
    }

    /// The first credential or identity header that a `Connection` field of `headers`
    /// nominates, if any. Such a request is refused: a proxy drops nominated headers before
    /// forwarding, so the OMS would not see what omsgate verified (or would see only the
    /// fallback identity a client chose).
    pub fn nominated_credential(&self, headers: &http::HeaderMap) -> Option<http::HeaderName> {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| http::HeaderName::from_bytes(t.trim_ascii()).ok())
            .find(|name| self.protected.contains(name))
    }

    /// Sets the identity headers of the request sent to the OMS: removes every header the OMS
    /// trusts for identity and the client's copies of the gateway's own, then sets them from
    /// `identity` only (the gateway's headers always; the trusted headers with
    /// `mode = "header"`).
    pub fn upstream_headers(
        &self,
        req: &mut pingora::http::RequestHeader,
        identity: &Identity,
    ) -> pingora::Result<()> {
        for h in &self.oms_identity_headers {
            req.remove_header(h);
        }
        req.remove_header(TENANT_HEADER);
        req.remove_header(SUBJECT_HEADER);
        if let IdentityMode::Header { tenant, subject } = &self.mode {
            req.remove_header(tenant);
            req.remove_header(subject);
            if let Some(t) = &identity.tenant {
                req.insert_header(tenant.clone(), t)?;
            }
            if let Some(s) = &identity.subject {
                req.insert_header(subject.clone(), s)?;
            }
        }
        if let Some(t) = &identity.tenant {
            req.insert_header(TENANT_HEADER, t)?;
        }
        if let Some(s) = &identity.subject {
            req.insert_header(SUBJECT_HEADER, s)?;
        }
        Ok(())
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
    /// `mode = "header"`: the trusted headers came from a peer outside `trusted_proxies`.
    UntrustedPeer,
    /// `mode = "header"`: a trusted header was sent more than once (the request is refused).
    Duplicate,
}

impl Rejection {
    /// Bounded label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Invalid => "invalid",
            Rejection::NoTenant => "no_tenant",
            Rejection::UntrustedPeer => "untrusted_peer",
            Rejection::Duplicate => "duplicate_header",
        }
    }
}

impl IdentityConfig {
    /// Resolves the identity of a request from its headers. `peer_trusted` says whether the
    /// socket peer is one of `rate_limit.trusted_proxies` (only then are trusted headers
    /// believed).
    pub fn identify(
        &self,
        headers: &http::HeaderMap,
        peer_trusted: bool,
    ) -> Result<Identity, Rejection> {
        match &self.mode {
            IdentityMode::None => Ok(Identity::default()),
            IdentityMode::Header { tenant, subject } => {
                if !peer_trusted {
                    return Err(Rejection::UntrustedPeer);
                }
                let t = last_hop(headers, tenant)?.ok_or(Rejection::Missing)?;
                Ok(Identity {
                    tenant: Some(t),
                    subject: last_hop(headers, subject)?,
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

/// The value of a trusted header: refused when the header appears more than once; of a
/// comma-separated value the last element, the one the proxy next to omsgate wrote.
fn last_hop(
    headers: &http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::Duplicate);
    }
    Ok(v.to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string))
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
        let id = c.identify(&bearer(&t), false).unwrap();
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
        assert_eq!(c.identify(&bearer(&forged), false), Err(Rejection::Invalid));
        let mut claims = serde_json::Map::new();
        claims.insert("tenant_id".into(), "acme".into());
        claims.insert("exp".into(), 1_000u64.into());
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            c.identify(&bearer(&expired), false),
            Err(Rejection::Invalid)
        );
        assert_eq!(
            c.identify(&http::HeaderMap::new(), false),
            Err(Rejection::Missing)
        );
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

    fn header_config() -> IdentityConfig {
        let f = IdentityFile {
            mode: "header".into(),
            ..Default::default()
        };
        let mut p = Problems::default();
        let c = IdentityConfig::from_file(&f, &mut p);
        assert!(p.is_empty(), "{p:?}");
        c
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn trusted_headers_only_from_trusted_peers_once_and_from_the_last_hop() {
        let c = header_config();
        let h = headers(&[("x-tenant-id", "acme"), ("x-user-id", "alice")]);
        assert_eq!(c.identify(&h, false), Err(Rejection::UntrustedPeer));
        let id = c.identify(&h, true).unwrap();
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.subject.as_deref(), Some("alice"));
        let twice = headers(&[("x-tenant-id", "evil"), ("x-tenant-id", "acme")]);
        assert_eq!(c.identify(&twice, true), Err(Rejection::Duplicate));
        let chain = headers(&[("x-tenant-id", "evil, acme")]);
        assert_eq!(
            c.identify(&chain, true).unwrap().tenant.as_deref(),
            Some("acme")
        );
        assert_eq!(c.identify(&headers(&[]), true), Err(Rejection::Missing));
    }

    #[test]
    fn connection_must_not_nominate_credentials_or_identity_headers() {
        let c = jwt_config("s3cret");
        for nominated in [
            "authorization",
            "Keep-Alive, Authorization",
            "cookie",
            "x-tenant-id",
            "X-User-Id",
            "x-omsgate-tenant",
        ] {
            let h = headers(&[("connection", nominated)]);
            assert!(c.nominated_credential(&h).is_some(), "{nominated}");
        }
        let h = headers(&[("connection", "keep-alive, x-private-hop")]);
        assert_eq!(c.nominated_credential(&h), None);
        assert_eq!(c.nominated_credential(&headers(&[])), None);
    }

    #[test]
    fn upstream_headers_carry_only_the_verified_identity() {
        let id = Identity {
            tenant: Some("acme".into()),
            subject: Some("alice".into()),
        };
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-tenant-id", "evil").unwrap();
        req.append_header("x-user-id", "mallory").unwrap();
        req.insert_header("x-omsgate-tenant", "evil").unwrap();
        jwt_config("s3cret")
            .upstream_headers(&mut req, &id)
            .unwrap();
        assert!(req.headers.get("x-tenant-id").is_none());
        assert!(req.headers.get("x-user-id").is_none());
        assert_eq!(req.headers.get(TENANT_HEADER).unwrap(), "acme");

        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-tenant-id", "evil").unwrap();
        req.append_header("x-tenant-id", "acme").unwrap();
        header_config().upstream_headers(&mut req, &id).unwrap();
        let seen: Vec<_> = req.headers.get_all("x-tenant-id").iter().collect();
        assert_eq!(seen, ["acme"]);
        assert_eq!(req.headers.get("x-user-id").unwrap(), "alice");
    }
}
