//! Helpers shared by the cache, canonical-request and security tests: a gateway config with a
//! `[cache]` section, tokens, a request helper that reads `x-cache`, the simulated OMS on an
//! ephemeral port, and a publicly cached route over the test upstream's `/headers`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use omsgate::sim::DEMO_JWT_SECRET;

/// The gateway config: JWT identity with the demo secret, one upstream, `[cache]` with
/// `cache_keys` (a unique `key_prefix` is added), then `routes`.
pub fn config(upstream: SocketAddr, cache_keys: &str, routes: &str) -> String {
    let prefix = crate::common::unique("cache");
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{upstream}"]
health_check = {{ path = "/health", interval = "1s", timeout = "500ms" }}
connect_timeout = "500ms"
read_timeout = "5s"
retries = 0
[identity]
mode = "jwt"
jwt_secret = "{DEMO_JWT_SECRET}"
[cache]
key_prefix = "{prefix}:"
{cache_keys}
{routes}
"#
    )
}

/// `redis_url = "..."` of the shared test Redis, with a deadline that a debug build on a busy
/// test machine meets (the 20 ms default is exercised by the fault tests).
pub fn shared_redis() -> String {
    format!(
        "redis_url = \"{}\"\nredis_timeout = \"500ms\"",
        crate::common::redis_url()
    )
}

/// A valid token for `tenant`/`subject`, signed with the demo secret.
pub fn token(tenant: &str, subject: &str) -> String {
    omsgate::identity::issue_hs256(
        DEMO_JWT_SECRET,
        "tenant_id",
        tenant,
        subject,
        Duration::from_secs(3600),
    )
}

/// A token for `tenant` signed with the wrong secret.
pub fn forged_token(tenant: &str) -> String {
    omsgate::identity::issue_hs256(
        "not-the-secret",
        "tenant_id",
        tenant,
        "mallory",
        Duration::from_secs(3600),
    )
}

/// A correctly signed token for `tenant` that expired an hour ago.
pub fn expired_token(tenant: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "tenant_id": tenant, "sub": "old", "iat": now - 7200, "exp": now - 3600
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(DEMO_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// One answer as the client saw it.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub x_cache: String,
    pub age: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Got {
    /// A response header as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends `method url` with an optional bearer token and extra headers.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Got {
    let mut req = client.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let x_cache = headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let age = headers
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Got {
        status,
        x_cache,
        age,
        headers,
        body,
    }
}

/// `GET url` with an optional token.
pub async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> Got {
    send(client, reqwest::Method::GET, url, token, &[], None).await
}

/// A route caching the test upstream's `/headers` (response headers chosen by the query) in the
/// public scope for 60 s.
pub const PUBLIC_HEADERS_ROUTE: &str = r#"
[[route]]
name = "headers"
path = "/headers"
cache = { ttl = "60s", scope = "public" }
"#;

/// The simulated OMS with `opts` on an ephemeral port, and the dataset it serves.
pub async fn start_sim(
    opts: omsgate::sim::SimOptions,
) -> (omsgate::sim::SimHandle, omsgate::sim::data::Dataset) {
    let dataset = opts.dataset();
    let sim = omsgate::sim::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("simulated OMS starts");
    (sim, dataset)
}

/// The id of `tenant`'s first invoice in `d`.
pub fn first_invoice(d: &omsgate::sim::data::Dataset, tenant: &str) -> uuid::Uuid {
    d.invoices
        .iter()
        .find(|i| i.tenant_id == tenant)
        .map(|i| i.id)
        .unwrap_or_else(|| panic!("no invoice of {tenant}"))
}
