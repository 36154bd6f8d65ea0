//! Identity (DESIGN.md capability 2): the verified tenant and subject of a request.
//!
//! Runs in `request_filter`, before anything that depends on who is asking (rate limit, cache
//! scope, pooled query path). The sources:
//! - `jwt`: an `Authorization: Bearer` token verified with the keys of an identity provider's
//!   key set (`jwks_url` / `jwks_file`, [`jwks`]: RS256/384/512, PS256/384/512, ES256/384,
//!   EdDSA, selected by `kid`, refreshed in the background), a PEM public key (RS256/ES256) and/or
//!   an HS256 secret; `exp`/`nbf`, and `iss`/`aud` when configured, checked; tenant and subject
//!   read from configured claims, dotted paths into nested objects ([`claims`]). A token is
//!   verified only with a key of its own algorithm's family, and a key accepts only the
//!   algorithms it declares (no algorithm confusion: an HS256 token is checked with the secret
//!   only, never with a public key's bytes). Without a bearer token, an API key
//!   (`[identity.api_keys]`, [`api_keys`]) can identify a service client.
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

pub mod api_keys;
pub mod claims;
pub mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Problems;
use claims::Claim;

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
    /// PEM file with an RS256 or ES256 public key (tokens without a `kid`). Default empty.
    pub jwt_public_key: String,
    /// URL of the identity provider's key set (JWKS): `https`, or `http` to a loopback host only.
    /// Default empty.
    pub jwks_url: String,
    /// A JWKS file (read at load, on reload, every `jwks_refresh` and on an unknown `kid`).
    /// Default empty.
    pub jwks_file: String,
    /// Longest time between two key set refreshes (a shorter `Cache-Control: max-age` wins).
    /// Default `"5m"`.
    pub jwks_refresh: String,
    /// Shortest time between two refreshes, also for those an unknown `kid` triggers.
    /// Default `"30s"`.
    pub jwks_min_refresh: String,
    /// Time limit of one key set fetch. Default `"5s"`.
    pub jwks_timeout: String,
    /// Accepted clock skew when checking `exp`/`nbf`. Default `"30s"`.
    pub leeway: String,
    /// Accepted `iss` values (one string or a list, exact match); empty means not checked.
    /// Default empty.
    pub issuer: OneOrMany,
    /// Accepted `aud` values (one string or a list); empty means not checked. Default empty.
    pub audience: OneOrMany,
    /// Claim holding the tenant: a name or a dotted path (`app_metadata.tenant_id`).
    /// Default `"tenant_id"`.
    pub tenant_claim: String,
    /// Claim holding the subject: a name or a dotted path. Default `"sub"`.
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
    /// `[identity.api_keys]`: API keys of service clients.
    pub api_keys: ApiKeysFile,
}

/// A string or a list of strings (`issuer`, `audience`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value (`""` = none).
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        OneOrMany::One(String::new())
    }
}

impl OneOrMany {
    /// The non-empty values.
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }
}

/// `[identity.api_keys]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiKeysFile {
    /// File of `<sha256 hex> <tenant> [<subject>]` lines ([`api_keys`]); empty = no API keys.
    /// Default empty.
    pub file: String,
    /// Request header carrying the key. Default `"x-api-key"`.
    pub header: String,
}

impl Default for ApiKeysFile {
    fn default() -> Self {
        Self {
            file: String::new(),
            header: "x-api-key".into(),
        }
    }
}

impl Default for IdentityFile {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            jwt_secret_env: "OMSGATE_JWT_SECRET".into(),
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            jwks_url: String::new(),
            jwks_file: String::new(),
            jwks_refresh: "5m".into(),
            jwks_min_refresh: "30s".into(),
            jwks_timeout: "5s".into(),
            leeway: "30s".into(),
            issuer: OneOrMany::default(),
            audience: OneOrMany::default(),
            tenant_claim: "tenant_id".into(),
            subject_claim: "sub".into(),
            tenant_header: "x-tenant-id".into(),
            subject_header: "x-user-id".into(),
            oms_identity_headers: vec!["x-tenant-id".into(), "x-user-id".into()],
            api_keys: ApiKeysFile::default(),
        }
    }
}

/// How tokens are verified.
#[derive(Clone)]
pub struct JwtVerifier {
    /// HS256 secret (legacy tokens), if configured.
    secret: Option<DecodingKey>,
    /// PEM public key and its algorithm, if configured.
    static_key: Option<(DecodingKey, Algorithm)>,
    /// Key set source, if configured.
    jwks: Option<Arc<jwks::Jwks>>,
    /// API keys, if configured.
    api_keys: Option<Arc<api_keys::ApiKeys>>,
    /// One validation per algorithm (exp/nbf/iss/aud), built once.
    validations: Vec<(Algorithm, Validation)>,
    description: String,
}

/// Every algorithm a token may use.
const ALGORITHMS: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

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
    /// Converts the file layer; reads the secret's env var, the PEM file, `jwks_file` and the API
    /// key file. `tls` is the trust store of `jwks_url` fetches. Nothing is fetched or started
    /// here (see [`IdentityConfig::start`]).
    pub fn from_file(
        f: &IdentityFile,
        tls: &crate::tls::TlsConfig,
        p: &mut Problems,
    ) -> IdentityConfig {
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
            "jwt" => match jwt_verifier(f, tls, leeway, p) {
                Some(v) => IdentityMode::Jwt(Box::new(v)),
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
        if f.mode != "jwt" && !f.api_keys.file.is_empty() {
            p.push(
                "identity.api_keys.file",
                "API keys are an identity source of mode = \"jwt\"",
            );
        }
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
        if let IdentityMode::Jwt(v) = &mode {
            if let Some(k) = &v.api_keys {
                protected.push(k.header.clone());
            }
        }
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

    /// Starts the background work of the identity sources: the JWKS refresher and the API key
    /// file watcher (once each; a reload with the same settings keeps the running ones).
    pub fn start(&self) {
        if let IdentityMode::Jwt(v) = &self.mode {
            if let Some(j) = &v.jwks {
                j.start();
            }
            if let Some(k) = &v.api_keys {
                k.start();
            }
        }
    }

    /// The key set source, if `jwks_url` or `jwks_file` is configured.
    pub fn jwks(&self) -> Option<&Arc<jwks::Jwks>> {
        match &self.mode {
            IdentityMode::Jwt(v) => v.jwks.as_ref(),
            _ => None,
        }
    }

    /// Sets `omsgate_jwks_age_seconds` (-1 while no key set is loaded; 0 without a key set
    /// source).
    pub fn refresh_gauges(&self) {
        let age = match self.jwks() {
            None => 0.0,
            Some(j) => j.age().map_or(-1.0, |a| a.as_secs_f64()),
        };
        crate::metrics::JWKS_AGE.set(age);
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

fn jwt_verifier(
    f: &IdentityFile,
    tls: &crate::tls::TlsConfig,
    leeway: std::time::Duration,
    p: &mut Problems,
) -> Option<JwtVerifier> {
    let mut description = Vec::new();
    let mut ok = true;
    let static_key = if f.jwt_public_key.is_empty() {
        None
    } else {
        match std::fs::read(&f.jwt_public_key) {
            Err(e) => {
                p.push(
                    "identity.jwt_public_key",
                    format!("cannot read `{}`: {e}", f.jwt_public_key),
                );
                ok = false;
                None
            }
            Ok(pem) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    description.push(format!("RS256 key {}", f.jwt_public_key));
                    Some((k, Algorithm::RS256))
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    description.push(format!("ES256 key {}", f.jwt_public_key));
                    Some((k, Algorithm::ES256))
                } else {
                    p.push(
                        "identity.jwt_public_key",
                        format!(
                            "`{}` holds no RSA or EC (P-256) public key in PEM form",
                            f.jwt_public_key
                        ),
                    );
                    ok = false;
                    None
                }
            }
        }
    };

    let refresh = p.duration_or(
        "identity.jwks_refresh",
        &f.jwks_refresh,
        std::time::Duration::from_secs(300),
    );
    let min_refresh = p.duration_or(
        "identity.jwks_min_refresh",
        &f.jwks_min_refresh,
        std::time::Duration::from_secs(30),
    );
    let timeout = p.duration_or(
        "identity.jwks_timeout",
        &f.jwks_timeout,
        std::time::Duration::from_secs(5),
    );
    if min_refresh.is_zero() {
        p.push("identity.jwks_min_refresh", "must be more than 0");
    }
    if min_refresh > refresh {
        p.push(
            "identity.jwks_min_refresh",
            format!("must not exceed jwks_refresh (`{}`)", f.jwks_refresh),
        );
    }
    if timeout.is_zero() {
        p.push("identity.jwks_timeout", "must be more than 0");
    }
    let url = if f.jwks_url.is_empty() {
        None
    } else {
        match jwks::parse_url(&f.jwks_url) {
            Ok(u) => Some(u),
            Err(e) => {
                p.push("identity.jwks_url", e);
                ok = false;
                None
            }
        }
    };
    let file = (!f.jwks_file.is_empty()).then(|| std::path::PathBuf::from(&f.jwks_file));
    let jwks = if url.is_some() || file.is_some() {
        if let Some(u) = &url {
            description.push(format!("JWKS {u}"));
        }
        if let Some(path) = &file {
            description.push(format!("JWKS file {}", path.display()));
        }
        match jwks::Jwks::shared(jwks::Settings {
            url,
            file,
            refresh,
            min_refresh: min_refresh.max(std::time::Duration::from_millis(1)),
            timeout,
            tls: tls.clone(),
        }) {
            Ok(j) => Some(j),
            Err(e) => {
                p.push("identity.jwks_file", e);
                ok = false;
                None
            }
        }
    } else {
        None
    };
    let api_keys = if f.api_keys.file.is_empty() {
        None
    } else {
        let header = header_name(p, "identity.api_keys.header", &f.api_keys.header);
        match api_keys::ApiKeys::load(std::path::Path::new(&f.api_keys.file), header.clone()?) {
            Ok(k) => {
                description.push(format!("API keys in {}", f.api_keys.file));
                Some(Arc::new(k))
            }
            Err(e) => {
                p.push("identity.api_keys.file", e);
                ok = false;
                None
            }
        }
    };

    // The HS256 secret: inline, else from the environment; required only when nothing else
    // can verify a request.
    let secret = if !f.jwt_secret.is_empty() {
        Some(f.jwt_secret.clone())
    } else {
        std::env::var(&f.jwt_secret_env)
            .ok()
            .filter(|s| !s.is_empty())
    };
    if secret.is_some() {
        description.push("HS256 secret".into());
    }
    let secret = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
    if !ok {
        return None;
    }
    if secret.is_none() && static_key.is_none() && jwks.is_none() && api_keys.is_none() {
        p.push(
            "identity.jwt_secret_env",
            format!(
                "mode = \"jwt\" needs a key: the environment variable `{}` is unset or empty, \
                 and none of jwt_secret, jwt_public_key, jwks_url, jwks_file, api_keys.file is set",
                f.jwt_secret_env
            ),
        );
        return None;
    }

    let issuers = f.issuer.values();
    let audiences = f.audience.values();
    let validations = ALGORITHMS
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = leeway.as_secs();
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if issuers.is_empty() {
                v.iss = None;
            } else {
                v.set_issuer(&issuers);
                required.push("iss");
            }
            if audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&audiences);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            (*alg, v)
        })
        .collect();
    Some(JwtVerifier {
        secret,
        static_key,
        jwks,
        api_keys,
        validations,
        description: description.join(", "),
    })
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
    /// Not a well-formed token (or a claim of the wrong type, e.g. a string `exp`).
    Malformed,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// The signature does not verify.
    BadSignature,
    /// The token's `alg` is not one its key (or the configuration) accepts.
    AlgNotAllowed,
    /// The token names a `kid` the key set lacks (a refresh is triggered).
    UnknownKid,
    /// No key set has been loaded yet (`jwks_url` unreachable since start).
    NoKeySet,
    /// `iss` is missing or not one of `issuer`.
    WrongIssuer,
    /// `aud` is missing or not one of `audience`.
    WrongAudience,
    /// An API key that is not in the file.
    UnknownApiKey,
    /// The token verified but lacks the tenant claim.
    NoTenant,
    /// The tenant or subject claim is not a string or integer.
    BadClaim,
    /// `mode = "header"`: the trusted headers came from a peer outside `trusted_proxies`.
    UntrustedPeer,
    /// `mode = "header"`: a trusted header was sent more than once (the request is refused).
    Duplicate,
}

impl Rejection {
    /// Bounded label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "no_credential",
            Rejection::Malformed => "malformed",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::BadSignature => "bad_signature",
            Rejection::AlgNotAllowed => "alg_not_allowed",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::NoKeySet => "no_key_set",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::UnknownApiKey => "unknown_api_key",
            Rejection::NoTenant => "no_tenant",
            Rejection::BadClaim => "bad_claim",
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
                let token = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|auth| {
                        auth.strip_prefix("Bearer ")
                            .or_else(|| auth.strip_prefix("bearer "))
                    })
                    .map(str::trim);
                match (token, &v.api_keys) {
                    (Some(token), _) => v.verify(token, &self.tenant_claim, &self.subject_claim),
                    (None, Some(keys)) => {
                        let mut presented = headers.get_all(&keys.header).iter();
                        let key = presented.next().ok_or(Rejection::Missing)?;
                        if presented.next().is_some() {
                            return Err(Rejection::Duplicate);
                        }
                        keys.identify(key.as_bytes())
                            .ok_or(Rejection::UnknownApiKey)
                    }
                    (None, None) => Err(Rejection::Missing),
                }
            }
        }
    }
}

type Claims = serde_json::Map<String, serde_json::Value>;

impl JwtVerifier {
    fn validation(&self, alg: Algorithm) -> Result<&Validation, Rejection> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(Rejection::AlgNotAllowed)
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, Rejection> {
        jsonwebtoken::decode::<Claims>(token, key, self.validation(alg)?)
            .map(|d| d.claims)
            .map_err(|e| rejection(&e))
    }

    /// Verifies `token` with the one key its header selects, and reads the identity.
    fn verify(
        &self,
        token: &str,
        tenant_claim: &str,
        subject_claim: &str,
    ) -> Result<Identity, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let alg = header.alg;
        let claims = match alg {
            // A symmetric token is checked with the secret only, never with a public key.
            Algorithm::HS256 => {
                let secret = self.secret.as_ref().ok_or(Rejection::AlgNotAllowed)?;
                self.decode(token, secret, alg)?
            }
            Algorithm::HS384 | Algorithm::HS512 => return Err(Rejection::AlgNotAllowed),
            _ => match (&self.jwks, header.kid.as_deref()) {
                (Some(jwks), Some(kid)) => match jwks.key(kid) {
                    jwks::Lookup::Found(key) => {
                        if !key.algorithms.contains(&alg) {
                            return Err(Rejection::AlgNotAllowed);
                        }
                        self.decode(token, &key.key, alg)?
                    }
                    jwks::Lookup::Unknown => {
                        jwks.trigger();
                        return Err(Rejection::UnknownKid);
                    }
                    jwks::Lookup::NoKeys => {
                        jwks.trigger();
                        return Err(Rejection::NoKeySet);
                    }
                },
                _ => self.without_kid(token, alg)?,
            },
        };
        let id = |path: &str| match claims::lookup(&claims, path) {
            Claim::Id(s) => Ok(Some(s)),
            Claim::Absent => Ok(None),
            Claim::NotAnId => Err(Rejection::BadClaim),
        };
        let tenant = id(tenant_claim)?.ok_or(Rejection::NoTenant)?;
        Ok(Identity {
            tenant: Some(tenant),
            subject: id(subject_claim)?,
        })
    }

    /// A token without a `kid` (or with one and no key set configured): the PEM key when its
    /// algorithm matches, else each key of the set that accepts the algorithm.
    fn without_kid(&self, token: &str, alg: Algorithm) -> Result<Claims, Rejection> {
        if let Some((key, key_alg)) = &self.static_key {
            if *key_alg == alg {
                return self.decode(token, key, alg);
            }
        }
        let Some(jwks) = &self.jwks else {
            return Err(Rejection::AlgNotAllowed);
        };
        if !jwks.has_keys() {
            jwks.trigger();
            return Err(Rejection::NoKeySet);
        }
        let mut first_error = Rejection::AlgNotAllowed;
        for (i, key) in jwks.candidates(alg).iter().enumerate() {
            match self.decode(token, &key.key, alg) {
                Ok(claims) => return Ok(claims),
                Err(e) if i == 0 => first_error = e,
                Err(_) => {}
            }
        }
        Err(first_error)
    }
}

fn rejection(e: &jsonwebtoken::errors::Error) -> Rejection {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            Rejection::BadSignature
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Rejection::AlgNotAllowed,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => Rejection::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Rejection::WrongAudience,
        _ => Rejection::Malformed,
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
        let c = IdentityConfig::from_file(&f, &Default::default(), &mut p);
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
        assert_eq!(
            c.identify(&bearer(&forged), false),
            Err(Rejection::BadSignature)
        );
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
            Err(Rejection::Expired)
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
        IdentityConfig::from_file(&f, &Default::default(), &mut p);
        assert_eq!(p.list()[0].key, "identity.jwt_secret_env");
    }

    fn header_config() -> IdentityConfig {
        let f = IdentityFile {
            mode: "header".into(),
            ..Default::default()
        };
        let mut p = Problems::default();
        let c = IdentityConfig::from_file(&f, &Default::default(), &mut p);
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
