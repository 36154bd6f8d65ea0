//! Identity as identity providers issue it (issue 17): key sets (JWKS) fetched over HTTPS from a
//! local key server with a throwaway CA, keys selected by `kid`, rotation, refresh limits,
//! outages, issuer/audience, algorithm confusion, nested and numeric claims, API keys, and one
//! Supabase-shaped end-to-end run through a gateway process with a tenant-scoped cache.
//!
//! Most tests drive `omsgate::identity` in-process against the real HTTPS key server (its
//! fetch counter is the ground truth for "how often did omsgate fetch"); the last ones run the
//! gateway binary in front of the test upstream and the shared Redis.

mod cache_util;
mod common;
mod db_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use omsgate::identity::{IdentityConfig, IdentityFile, OneOrMany, Rejection};
use serde_json::{json, Value};

// === keys ===

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A signing key and its public JWK.
#[derive(Clone)]
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn es_key(kid: &str, p384: bool) -> TestKey {
    use ring::signature::{
        EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let rng = ring::rand::SystemRandom::new();
    let (ring_alg, alg, crv, len) = if p384 {
        (
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            Algorithm::ES384,
            "P-384",
            48,
        )
    } else {
        (
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            Algorithm::ES256,
            "P-256",
            32,
        )
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    TestKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": crv, "kid": kid, "use": "sig", "alg": format!("{alg:?}"),
            "x": b64url(&public[1..1 + len]), "y": b64url(&public[1 + len..]),
        }),
    }
}

fn ed_key(kid: &str) -> TestKey {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64url(pair.public_key().as_ref()),
        }),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The pre-generated test RSA key, declared for `alg` (`None`: no `alg` in the JWK).
fn rsa_key(kid: &str, alg: Option<Algorithm>) -> TestKey {
    let pem = std::fs::read(fixture("jwks_rsa_private.pem")).unwrap();
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks_rsa_public.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = kid.into();
    if let Some(a) = alg {
        jwk["alg"] = format!("{a:?}").into();
    }
    TestKey {
        kid: kid.into(),
        alg: alg.unwrap_or(Algorithm::RS256),
        encoding: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Supabase-shaped claims: `iss`, `aud = authenticated`, the tenant in `app_metadata`.
fn claims(tenant: Value, subject: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": "authenticated", "sub": subject, "role": "authenticated",
        "iat": now(), "exp": now() + 3600,
        "app_metadata": { "provider": "email", "tenant_id": tenant },
    })
}

fn sign_as(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

impl TestKey {
    fn sign(&self, claims: &Value) -> String {
        sign_as(self.alg, Some(&self.kid), &self.encoding, claims)
    }
}

fn jwks_of(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

const ISSUER: &str = "https://testproject.supabase.co/auth/v1";

// === the HTTPS key server ===

/// A throwaway CA and a certificate for 127.0.0.1/localhost signed by it.
struct Pki {
    ca_file: PathBuf,
    server: rustls::ServerConfig,
    _dir: TestDir,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "omsgate test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let dir = TestDir::new("jwks-pki");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    Pki {
        ca_file,
        server,
        _dir: dir,
    }
}

#[derive(Default)]
struct ServerState {
    body: parking_lot::Mutex<String>,
    cache_control: parking_lot::Mutex<Option<String>>,
    status: AtomicU64,
    /// Requests received (answered or not).
    fetches: AtomicU64,
    /// While set, requests are held unanswered.
    hold: AtomicBool,
    held: AtomicU64,
}

/// The key server: HTTPS on 127.0.0.1, `GET <any path>` answers the current key set.
struct KeyServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KeyServer {
    fn start(pki: &Pki, body: String) -> KeyServer {
        KeyServer::start_on(pki, "127.0.0.1:0".parse().unwrap(), body)
    }

    fn start_on(pki: &Pki, addr: SocketAddr, body: String) -> KeyServer {
        let state = Arc::new(ServerState::default());
        *state.body.lock() = body;
        state.status.store(200, Ordering::SeqCst);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Bound here, outside any runtime: the gateway tests call this from async code.
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server.clone()));
        let st = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        KeyServer {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/auth/v1/.well-known/jwks.json",
            self.addr.port()
        )
    }

    fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, body: String) {
        *self.state.body.lock() = body;
    }

    /// Stops listening and drops every connection.
    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(st: &ServerState) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    st.fetches.fetch_add(1, Ordering::SeqCst);
    if st.hold.load(Ordering::SeqCst) {
        st.held.fetch_add(1, Ordering::SeqCst);
        while st.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let status = st.status.load(Ordering::SeqCst) as u16;
    let mut resp = http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(cc) = st.cache_control.lock().clone() {
        resp = resp.header("cache-control", cc);
    }
    resp.body(http_body_util::Full::new(bytes::Bytes::from(
        st.body.lock().clone(),
    )))
    .unwrap()
}

// === the identity under test ===

struct Setup {
    refresh: &'static str,
    min_refresh: &'static str,
    timeout: &'static str,
    secret: &'static str,
    issuer: OneOrMany,
    audience: OneOrMany,
    tenant_claim: &'static str,
    subject_claim: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            refresh: "1h",
            min_refresh: "200ms",
            timeout: "2s",
            secret: "",
            issuer: OneOrMany::One(ISSUER.into()),
            audience: OneOrMany::One("authenticated".into()),
            tenant_claim: "app_metadata.tenant_id",
            subject_claim: "sub",
        }
    }
}

fn identity(pki: &Pki, url: &str, s: Setup) -> IdentityConfig {
    let f = IdentityFile {
        mode: "jwt".into(),
        jwt_secret: s.secret.into(),
        jwt_secret_env: "OMSGATE_TEST_JWKS_SURELY_UNSET".into(),
        jwks_url: url.into(),
        jwks_refresh: s.refresh.into(),
        jwks_min_refresh: s.min_refresh.into(),
        jwks_timeout: s.timeout.into(),
        issuer: s.issuer,
        audience: s.audience,
        tenant_claim: s.tenant_claim.into(),
        subject_claim: s.subject_claim.into(),
        ..Default::default()
    };
    let mut p = omsgate::config::Problems::default();
    let tls = omsgate::tls::TlsConfig::from_file(
        &omsgate::tls::TlsFile {
            ca_file: pki.ca_file.display().to_string(),
        },
        &mut p,
    );
    let c = IdentityConfig::from_file(&f, &tls, &mut p);
    assert!(p.is_empty(), "{p:?}");
    c.start();
    c
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

fn tenant_of(c: &IdentityConfig, token: &str) -> Result<String, Rejection> {
    c.identify(&bearer(token), false)
        .map(|id| id.tenant.unwrap_or_default())
}

fn wait_keys(c: &IdentityConfig) {
    let jwks = c.jwks().expect("a key set source");
    assert!(
        wait_for(Duration::from_secs(20), || jwks.has_keys()),
        "no key set arrived: {}",
        jwks.ready_json()
    );
}

// === tests ===

#[test]
fn tokens_of_each_key_type_verify_by_kid() {
    let pki = pki();
    let (es, es384, ed) = (es_key("es", false), es_key("es384", true), ed_key("ed"));
    let rs = rsa_key("rs", Some(Algorithm::RS256));
    let mut ps = rsa_key("rs-any", None);
    ps.alg = Algorithm::PS256;
    let server = KeyServer::start(&pki, jwks_of(&[&es, &es384, &ed, &rs, &ps]));
    let c = identity(&pki, &server.url(), Setup::default());
    wait_keys(&c);
    for (i, key) in [&es, &es384, &ed, &rs, &ps].into_iter().enumerate() {
        let token = key.sign(&claims(json!(format!("t{i}")), "alice"));
        assert_eq!(tenant_of(&c, &token), Ok(format!("t{i}")), "{:?}", key.alg);
    }
    // Another key's kid on a valid signature: not verified.
    let swapped = sign_as(
        Algorithm::ES256,
        Some("ed"),
        &es.encoding,
        &claims(json!("x"), "a"),
    );
    assert_eq!(tenant_of(&c, &swapped), Err(Rejection::AlgNotAllowed));
    let wrong_kid = sign_as(
        Algorithm::ES256,
        Some("es"),
        &es_key("other", false).encoding,
        &claims(json!("x"), "a"),
    );
    assert_eq!(tenant_of(&c, &wrong_kid), Err(Rejection::BadSignature));
    let ready = c.jwks().unwrap().ready_json();
    assert_eq!(ready["state"], "up", "{ready}");
    assert_eq!(ready["keys"], 5, "{ready}");
}

#[test]
fn rotation_takes_effect_without_restart_or_a_failed_request() {
    let pki = pki();
    let (k1, k2) = (es_key("k1", false), ed_key("k2"));
    let server = KeyServer::start(&pki, jwks_of(&[&k1]));
    let c = Arc::new(identity(
        &pki,
        &server.url(),
        Setup {
            refresh: "300ms",
            min_refresh: "100ms",
            ..Default::default()
        },
    ));
    wait_keys(&c);

    // A client verifying the provider's current token continuously.
    let current = Arc::new(parking_lot::Mutex::new(
        k1.sign(&claims(json!("acme"), "u")),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (c, current, stop) = (c.clone(), current.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let token = current.lock().clone();
                match tenant_of(&c, &token) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failed)
        })
    };

    // The provider publishes the next key, then signs with it, then retires the old one.
    server.serve(jwks_of(&[&k1, &k2]));
    let jwks = c.jwks().unwrap().clone();
    assert!(wait_for(Duration::from_secs(20), || matches!(
        jwks.key("k2"),
        omsgate::identity::jwks::Lookup::Found(_)
    )));
    *current.lock() = k2.sign(&claims(json!("acme"), "u"));
    server.serve(jwks_of(&[&k2]));
    let old = k1.sign(&claims(json!("acme"), "u"));
    assert!(
        wait_for(Duration::from_secs(20), || tenant_of(&c, &old)
            == Err(Rejection::UnknownKid)),
        "the retired key is still accepted"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = checker.join().unwrap();
    assert!(ok > 0);
    assert_eq!(failed, [], "requests failed during the rotation");
    assert!(server.fetches() >= 3, "fetches: {}", server.fetches());
}

#[test]
fn unknown_kid_storms_fetch_at_most_once_per_min_refresh() {
    let pki = pki();
    let k = es_key("known", false);
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    let c = identity(
        &pki,
        &server.url(),
        Setup {
            min_refresh: "1s",
            ..Default::default()
        },
    );
    wait_keys(&c);
    assert_eq!(server.fetches(), 1);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let forged = sign_as(
            Algorithm::ES256,
            Some(&format!("forged-{n}")),
            &k.encoding,
            &claims(json!("acme"), "u"),
        );
        assert_eq!(tenant_of(&c, &forged), Err(Rejection::UnknownKid));
        n += 1;
    }
    // Let a fetch already due happen, then count against the time the storm and the wait took.
    std::thread::sleep(Duration::from_millis(1100));
    let windows = started.elapsed().as_secs_f64().ceil() as u64;
    let fetches = server.fetches();
    assert!(fetches >= 2, "an unknown kid triggered no fetch");
    assert!(
        fetches <= 1 + windows,
        "{fetches} fetches for {n} forged kids in {windows} min_refresh windows"
    );
    assert_eq!(
        tenant_of(&c, &k.sign(&claims(json!("acme"), "u"))),
        Ok("acme".into())
    );
}

#[test]
fn an_unknown_kid_fetches_at_once_so_a_new_key_works_without_waiting_for_the_period() {
    let pki = pki();
    let (k1, k2) = (es_key("k1", false), ed_key("k2"));
    let server = KeyServer::start(&pki, jwks_of(&[&k1]));
    let c = identity(&pki, &server.url(), Setup::default()); // refresh 1h
    wait_keys(&c);
    server.serve(jwks_of(&[&k1, &k2]));
    let token = k2.sign(&claims(json!("acme"), "u"));
    assert_eq!(tenant_of(&c, &token), Err(Rejection::UnknownKid));
    assert!(wait_for(Duration::from_secs(20), || tenant_of(&c, &token)
        == Ok("acme".into())));
    assert_eq!(server.fetches(), 2);
}

#[test]
fn key_server_down_at_start_then_up() {
    let pki = pki();
    let k = es_key("k", false);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("https://{addr}/jwks.json");
    let c = identity(&pki, &url, Setup::default());
    let token = k.sign(&claims(json!("acme"), "u"));
    let jwks = c.jwks().unwrap().clone();
    assert!(wait_for(Duration::from_secs(20), || jwks.ready_json()
        ["consecutive_failures"]
        .as_u64()
        .unwrap_or(0)
        >= 1));
    assert_eq!(tenant_of(&c, &token), Err(Rejection::NoKeySet));
    assert_eq!(jwks.ready_json()["state"], "waiting");
    let server = KeyServer::start_on(&pki, addr, jwks_of(&[&k]));
    wait_keys(&c);
    assert_eq!(tenant_of(&c, &token), Ok("acme".into()));
    assert!(server.fetches() >= 1);
    assert_eq!(jwks.ready_json()["consecutive_failures"], 0);
}

#[test]
fn key_server_failing_later_keeps_the_last_good_set() {
    let pki = pki();
    let k = es_key("k", false);
    let mut server = KeyServer::start(&pki, jwks_of(&[&k]));
    let c = identity(
        &pki,
        &server.url(),
        Setup {
            refresh: "200ms",
            min_refresh: "100ms",
            ..Default::default()
        },
    );
    wait_keys(&c);
    let token = k.sign(&claims(json!("acme"), "u"));
    let jwks = c.jwks().unwrap().clone();
    let failures = || {
        jwks.ready_json()["consecutive_failures"]
            .as_u64()
            .unwrap_or(0)
    };
    // Garbage, then an error status, then no server at all.
    server.serve("<html>maintenance</html>".into());
    assert!(wait_for(Duration::from_secs(20), || failures() >= 1));
    assert_eq!(tenant_of(&c, &token), Ok("acme".into()));
    server.state.status.store(503, Ordering::SeqCst);
    assert!(wait_for(Duration::from_secs(20), || failures() >= 3));
    assert_eq!(tenant_of(&c, &token), Ok("acme".into()));
    server.stop();
    assert!(wait_for(Duration::from_secs(20), || failures() >= 5));
    assert_eq!(tenant_of(&c, &token), Ok("acme".into()));
    assert!(jwks.ready_json()["last_error"].is_string());
    assert_eq!(jwks.ready_json()["state"], "up");
}

#[test]
fn a_slow_key_server_never_delays_a_request() {
    let pki = pki();
    let k = es_key("k", false);
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    server.state.hold.store(true, Ordering::SeqCst);
    let c = Arc::new(identity(
        &pki,
        &server.url(),
        Setup {
            min_refresh: "50ms",
            // Longer than the test: the held fetch must not time out and be retried meanwhile.
            timeout: "10m",
            ..Default::default()
        },
    ));
    // The first fetch is held by the server: requests meanwhile answer at once, unverified.
    assert!(wait_for(Duration::from_secs(20), || server
        .state
        .held
        .load(Ordering::SeqCst)
        >= 1));
    let token = k.sign(&claims(json!("acme"), "u"));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (c, token) = (c.clone(), token.clone());
        std::thread::spawn(move || {
            let results: Vec<_> = (0..100).map(|_| tenant_of(&c, &token)).collect();
            let _ = tx.send(results);
        });
    }
    // The server answers nothing until released, so these can only have returned without it.
    let results = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("identify waited for the key server");
    assert!(results.iter().all(|r| *r == Err(Rejection::NoKeySet)));
    assert_eq!(server.fetches(), 1, "a request fetched on its own");
    server.state.hold.store(false, Ordering::SeqCst);
    wait_keys(&c);
    assert_eq!(tenant_of(&c, &token), Ok("acme".into()));
}

#[test]
fn cache_control_max_age_sets_the_refresh_within_bounds() {
    let pki = pki();
    let k = es_key("k", false);
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    *server.state.cache_control.lock() = Some("public, max-age=0".into());
    let _c = identity(
        &pki,
        &server.url(),
        Setup {
            refresh: "1h",
            min_refresh: "100ms",
            ..Default::default()
        },
    );
    // max-age=0 is raised to min_refresh: refreshes keep coming although jwks_refresh is 1h.
    assert!(wait_for(Duration::from_secs(20), || server.fetches() >= 3));
}

#[test]
fn issuer_audience_and_algorithm_rules() {
    let pki = pki();
    let es = es_key("es", false);
    let rs = rsa_key("rs", Some(Algorithm::RS256));
    let server = KeyServer::start(&pki, jwks_of(&[&es, &rs]));
    let c = identity(
        &pki,
        &server.url(),
        Setup {
            secret: "legacy-secret",
            issuer: OneOrMany::Many(vec![ISSUER.into(), "https://other.example/".into()]),
            audience: OneOrMany::Many(vec!["authenticated".into(), "service".into()]),
            ..Default::default()
        },
    );
    wait_keys(&c);
    let with = |patch: Value| {
        let mut cl = claims(json!("acme"), "u");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                cl.as_object_mut().unwrap().remove(k);
            } else {
                cl[k] = v.clone();
            }
        }
        es.sign(&cl)
    };
    assert_eq!(tenant_of(&c, &with(json!({}))), Ok("acme".into()));
    assert_eq!(
        tenant_of(&c, &with(json!({"iss": "https://other.example/"}))),
        Ok("acme".into())
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"iss": "https://evil.example/"}))),
        Err(Rejection::WrongIssuer)
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"iss": null}))),
        Err(Rejection::WrongIssuer)
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"aud": ["anon", "service"]}))),
        Ok("acme".into())
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"aud": "anon"}))),
        Err(Rejection::WrongAudience)
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"aud": null}))),
        Err(Rejection::WrongAudience)
    );
    assert_eq!(
        tenant_of(&c, &with(json!({"exp": now() - 3600}))),
        Err(Rejection::Expired)
    );

    // The RSA key declares RS256: a valid PS256 signature of the same key is not accepted.
    let ps = sign_as(
        Algorithm::PS256,
        Some("rs"),
        &rs.encoding,
        &claims(json!("acme"), "u"),
    );
    assert_eq!(tenant_of(&c, &ps), Err(Rejection::AlgNotAllowed));
    assert_eq!(
        tenant_of(&c, &rs.sign(&claims(json!("acme"), "u"))),
        Ok("acme".into())
    );
    // An EC token naming the RSA key.
    let es_as_rs = sign_as(
        Algorithm::ES256,
        Some("rs"),
        &es.encoding,
        &claims(json!("acme"), "u"),
    );
    assert_eq!(tenant_of(&c, &es_as_rs), Err(Rejection::AlgNotAllowed));

    // Algorithm confusion: HS256 "signed" with the RSA public key's bytes (PEM and JWK forms),
    // naming the RSA key or no key.
    let pem = std::fs::read(fixture("jwks_rsa_public.pem")).unwrap();
    let jwk_bytes = std::fs::read(fixture("jwks_rsa_public.jwk.json")).unwrap();
    for secret in [&pem, &jwk_bytes] {
        for kid in [Some("rs"), None] {
            let forged = sign_as(
                Algorithm::HS256,
                kid,
                &EncodingKey::from_secret(secret),
                &claims(json!("acme"), "u"),
            );
            assert_eq!(tenant_of(&c, &forged), Err(Rejection::BadSignature));
        }
    }
    // The legacy secret itself still verifies HS256 tokens during the switch.
    let legacy = sign_as(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"legacy-secret"),
        &claims(json!("acme"), "u"),
    );
    assert_eq!(tenant_of(&c, &legacy), Ok("acme".into()));
    // Without a configured secret, no HS256 token is considered at all.
    let no_secret = identity(&pki, &server.url(), Setup::default());
    wait_keys(&no_secret);
    let forged = sign_as(
        Algorithm::HS256,
        Some("rs"),
        &EncodingKey::from_secret(&pem),
        &claims(json!("acme"), "u"),
    );
    assert_eq!(
        tenant_of(&no_secret, &forged),
        Err(Rejection::AlgNotAllowed)
    );
    assert_eq!(
        tenant_of(&no_secret, &legacy),
        Err(Rejection::AlgNotAllowed)
    );
    assert_eq!(
        tenant_of(&no_secret, "not.a.token"),
        Err(Rejection::Malformed)
    );
}

#[test]
fn nested_and_numeric_claims() {
    let pki = pki();
    let k = ed_key("k");
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    let c = identity(
        &pki,
        &server.url(),
        Setup {
            subject_claim: "user.id",
            ..Default::default()
        },
    );
    wait_keys(&c);
    let mut cl = claims(json!(4711), "ignored");
    cl["user"] = json!({ "id": 99 });
    let id = c.identify(&bearer(&k.sign(&cl)), false).unwrap();
    assert_eq!(id.tenant.as_deref(), Some("4711"));
    assert_eq!(id.subject.as_deref(), Some("99"));
    cl["user"] = json!({ "id": "alice" });
    cl["app_metadata"]["tenant_id"] = json!("acme");
    let id = c.identify(&bearer(&k.sign(&cl)), false).unwrap();
    assert_eq!(
        (id.tenant.as_deref(), id.subject.as_deref()),
        (Some("acme"), Some("alice"))
    );
    for bad in [
        json!(1.5),
        json!({"id": "acme"}),
        json!(["acme"]),
        json!(true),
    ] {
        cl["app_metadata"]["tenant_id"] = bad.clone();
        assert_eq!(
            tenant_of(&c, &k.sign(&cl)),
            Err(Rejection::BadClaim),
            "{bad}"
        );
    }
    cl["app_metadata"] = json!({ "provider": "email" });
    assert_eq!(tenant_of(&c, &k.sign(&cl)), Err(Rejection::NoTenant));
    cl["app_metadata"]["tenant_id"] = json!("acme");
    cl["user"] = json!({ "id": 2.5 });
    assert_eq!(tenant_of(&c, &k.sign(&cl)), Err(Rejection::BadClaim));
}

#[test]
fn api_keys_identify_service_clients_and_reload_when_the_file_changes() {
    use omsgate::identity::api_keys::hash_hex;
    let dir = TestDir::new("api-keys");
    let path = dir.path().join("api-keys");
    std::fs::write(&path, format!("{} acme sync\n", hash_hex("key-one"))).unwrap();
    let f = IdentityFile {
        mode: "jwt".into(),
        jwt_secret_env: "OMSGATE_TEST_JWKS_SURELY_UNSET".into(),
        api_keys: omsgate::identity::ApiKeysFile {
            file: path.display().to_string(),
            header: "X-Service-Key".into(),
        },
        ..Default::default()
    };
    let mut p = omsgate::config::Problems::default();
    let c = IdentityConfig::from_file(&f, &Default::default(), &mut p);
    assert!(p.is_empty(), "{p:?}");
    c.start();
    let with_key = |key: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("x-service-key", key.parse().unwrap());
        c.identify(&h, false)
    };
    let id = with_key("key-one").unwrap();
    assert_eq!(
        (id.tenant.as_deref(), id.subject.as_deref()),
        (Some("acme"), Some("sync"))
    );
    assert_eq!(with_key("key-two"), Err(Rejection::UnknownApiKey));
    assert_eq!(
        c.identify(&http::HeaderMap::new(), false),
        Err(Rejection::Missing)
    );
    // A Connection header may not nominate the key header either.
    let mut h = http::HeaderMap::new();
    h.insert("connection", "x-service-key".parse().unwrap());
    assert!(c.nominated_credential(&h).is_some());

    std::fs::write(
        &path,
        format!("{} globex\n# rotated\n", hash_hex("key-two")),
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(20), || with_key("key-two").is_ok()));
    assert_eq!(with_key("key-one"), Err(Rejection::UnknownApiKey));
    // A broken file keeps the keys in force.
    let invalid = || {
        omsgate::metrics::API_KEYS_RELOADS
            .with_label_values(&["invalid"])
            .get()
    };
    let before = invalid();
    std::fs::write(&path, "key-three acme\nmore garbage lines\n").unwrap();
    assert!(wait_for(Duration::from_secs(20), || invalid() > before));
    assert_eq!(
        with_key("key-two").unwrap().tenant.as_deref(),
        Some("globex")
    );
}

#[test]
fn a_jwks_file_is_read_at_load_and_a_bad_one_is_a_config_problem() {
    let dir = TestDir::new("jwks-file");
    let path = dir.path().join("jwks.json");
    let k = ed_key("file-key");
    std::fs::write(&path, jwks_of(&[&k])).unwrap();
    let file = |path: &Path| IdentityFile {
        mode: "jwt".into(),
        jwt_secret_env: "OMSGATE_TEST_JWKS_SURELY_UNSET".into(),
        jwks_file: path.display().to_string(),
        tenant_claim: "app_metadata.tenant_id".into(),
        ..Default::default()
    };
    let mut p = omsgate::config::Problems::default();
    let c = IdentityConfig::from_file(&file(&path), &Default::default(), &mut p);
    assert!(p.is_empty(), "{p:?}");
    // Verified at once, without any refresher running.
    assert_eq!(
        tenant_of(&c, &k.sign(&claims(json!("acme"), "u"))),
        Ok("acme".into())
    );
    let other = ed_key("other");
    assert_eq!(
        tenant_of(&c, &other.sign(&claims(json!("acme"), "u"))),
        Err(Rejection::UnknownKid)
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}]}"#,
    )
    .unwrap();
    for path in [bad, dir.path().join("absent.json")] {
        let mut p = omsgate::config::Problems::default();
        IdentityConfig::from_file(&file(&path), &Default::default(), &mut p);
        assert_eq!(p.list().len(), 1, "{p:?}");
        assert_eq!(p.list()[0].key, "identity.jwks_file");
    }
}

// === through the gateway ===

#[test]
fn check_config_refuses_clear_text_key_servers_and_unknown_files() {
    let (code, err) = Gateway::check_config(
        r#"
[identity]
mode = "jwt"
jwks_url = "http://idp.example.com/jwks.json"
jwks_min_refresh = "10m"
[identity.api_keys]
file = "/nonexistent/omsgate-api-keys"
"#,
    );
    assert_eq!(code, 64, "{err}");
    for key in [
        "identity.jwks_url",
        "identity.jwks_min_refresh",
        "identity.api_keys.file",
    ] {
        assert!(err.contains(key), "{key} missing in: {err}");
    }
}

const TENANT_ROUTES: &str = r#"
[[route]]
name = "by_tenant"
path = "/tenant/{x}"
cache = { ttl = "60s", scope = "tenant", resource = "thing:{x}" }
[[route]]
name = "limited"
path = "/limited/{x}"
rate_limit = ["per_tenant"]
"#;

fn gateway_config(upstream: SocketAddr, pki: &Pki, jwks_url: &str) -> String {
    let prefix = unique("jwks");
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
[tls]
ca_file = "{ca}"
[identity]
mode = "jwt"
jwt_secret = "legacy-hs256-secret"
jwks_url = "{jwks_url}"
jwks_min_refresh = "200ms"
issuer = "{ISSUER}"
audience = "authenticated"
tenant_claim = "app_metadata.tenant_id"
[rate_limit.policies.per_tenant]
key = "tenant"
quota = "1/minute"
burst = 1
[cache]
key_prefix = "{prefix}:"
{redis}
{TENANT_ROUTES}
"#,
        ca = pki.ca_file.display(),
        redis = cache_util::shared_redis(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_shaped_tokens_scope_the_cache_by_tenant_through_the_gateway() {
    let pki = pki();
    let k = es_key("supabase-es256", false);
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(upstream.addr, &pki, &server.url()));
    let http = client();
    let ready_url = gw.admin_url("/ready");
    let mut ready = Value::Null;
    for _ in 0..200 {
        let r = http.get(&ready_url).send().await.unwrap();
        ready = r.json().await.unwrap();
        if ready["dependencies"]["identity_jwks"]["state"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready["dependencies"]["identity_jwks"]["state"], "up",
        "{ready}"
    );

    let url = gw.url("/tenant/x");
    let acme = k.sign(&claims(json!("acme"), "alice"));
    let globex = k.sign(&claims(json!(42), "bob"));
    let a = cache_util::get(&http, &url, Some(&acme)).await;
    let b = cache_util::get(&http, &url, Some(&globex)).await;
    assert_eq!((a.x_cache.as_str(), b.x_cache.as_str()), ("MISS", "MISS"));
    assert_eq!(a.json()["headers"]["x-omsgate-tenant"], "acme");
    assert_eq!(b.json()["headers"]["x-omsgate-tenant"], "42");
    assert_eq!(a.json()["headers"]["x-omsgate-subject"], "alice");
    let a2 = cache_util::get(&http, &url, Some(&acme)).await;
    let b2 = cache_util::get(&http, &url, Some(&globex)).await;
    assert_eq!((a2.x_cache.as_str(), b2.x_cache.as_str()), ("HIT", "HIT"));
    assert_eq!((&a2.body, &b2.body), (&a.body, &b.body));
    assert_eq!(upstream.hits_for("/tenant/x"), 2);

    // The legacy HS256 secret still works during the switch, and shares acme's entry.
    let legacy = sign_as(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"legacy-hs256-secret"),
        &claims(json!("acme"), "alice"),
    );
    let l = cache_util::get(&http, &url, Some(&legacy)).await;
    assert_eq!(l.x_cache, "HIT");
    assert_eq!(l.body, a.body);
    // A token of another project (wrong issuer) gets no identity: no tenant entry at all.
    let mut other = claims(json!("acme"), "alice");
    other["iss"] = "https://otherproject.supabase.co/auth/v1".into();
    let o = cache_util::get(&http, &url, Some(&k.sign(&other))).await;
    assert_eq!(o.x_cache, "BYPASS");
    assert_eq!(o.json()["headers"]["x-omsgate-tenant"], Value::Null);

    // Rate-limit keys use the verified tenant: acme's quota is not globex's.
    let limited = gw.url("/limited/x");
    let statuses = [
        cache_util::get(&http, &limited, Some(&acme)).await.status,
        cache_util::get(&http, &limited, Some(&acme)).await.status,
        cache_util::get(&http, &limited, Some(&globex)).await.status,
    ];
    assert_eq!(statuses, [200, 429, 200]);

    // A reload with the same settings keeps the running key set: no new fetch, and the next
    // request verifies at once.
    let r = http.post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let after = cache_util::get(&http, &url, Some(&globex)).await;
    assert_eq!(after.x_cache, "HIT");
    assert_eq!(after.body, b.body);

    let metric = |result: &str| {
        gw.metric_value("omsgate_identity_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    assert!(metric("verified") >= 8.0);
    assert_eq!(metric("wrong_issuer"), 1.0);
    assert!(
        gw.metric_value("omsgate_jwks_refresh_total", &[("outcome", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    );
    let age = gw
        .metric_value("omsgate_jwks_age_seconds", &[])
        .expect("age gauge");
    assert!(age >= 0.0, "{age}");
    assert_eq!(server.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_unverified_while_the_key_server_is_down_and_ready_says_so() {
    let pki = pki();
    let k = es_key("k", false);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        upstream.addr,
        &pki,
        &format!("https://{addr}/jwks.json"),
    ));
    let http = client();
    let url = gw.url("/tenant/x");
    let token = k.sign(&claims(json!("acme"), "alice"));
    let got = cache_util::get(&http, &url, Some(&token)).await;
    assert_eq!(got.status, 200, "never an error page");
    assert_eq!(got.x_cache, "BYPASS");
    let r = http.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(
        ready["dependencies"]["identity_jwks"]["state"], "waiting",
        "{ready}"
    );
    assert!(gw.metric_value("omsgate_identity_total", &[("result", "no_key_set")]) >= Some(1.0));

    let _server = KeyServer::start_on(&pki, addr, jwks_of(&[&k]));
    let mut verified = false;
    for _ in 0..200 {
        let got = cache_util::get(&http, &url, Some(&token)).await;
        if got.json()["headers"]["x-omsgate-tenant"] == "acme" || got.x_cache == "HIT" {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verified, "the key set never arrived: {}", gw.log());
    let r = http.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_query_paths_answer_for_the_jwks_verified_tenant() {
    let (schema, dataset) = db_support::seeded_schema("jwks_qp", 11, 2, 5).await;
    let sim = db_support::sim_with(11, 2, 5).await;
    let pki = pki();
    let k = rsa_key("supabase-rs256", Some(Algorithm::RS256));
    let server = KeyServer::start(&pki, jwks_of(&[&k]));
    let routes = r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET", "HEAD"]
query = "invoice_with_lines"
"#;
    let mut config = gateway_config(sim.addr, &pki, &server.url()).replace(TENANT_ROUTES, routes);
    config.push_str(&format!(
        "\n[database]\nurl = \"{}\"\nschema = \"{}\"\nmin_idle = 1\nmax_connections = 2\n\n{}",
        db_support::database_url(),
        schema.name,
        db_support::reference_queries_toml()
    ));
    let gw = Gateway::start(&config);
    let http = client();
    let jwks_up = async {
        for _ in 0..200 {
            let ready: Value = http
                .get(gw.admin_url("/ready"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ready["dependencies"]["identity_jwks"]["state"] == "up" {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(jwks_up.await, "no key set: {}", gw.log());

    let oms_gets = || sim.stats().by_route.values().sum::<u64>();
    let acme_invoice = dataset
        .invoices
        .iter()
        .find(|i| i.tenant_id == "acme")
        .unwrap();
    let path = format!("/api/v1/invoices/{}", acme_invoice.id);
    let mut answers = Vec::new();
    for tenant in ["acme", "globex"] {
        let (status, _, body) = db_support::sim_get(&sim, tenant, &path).await;
        let before = oms_gets();
        let token = k.sign(&claims(json!(tenant), "alice"));
        let got = cache_util::get(&http, &gw.url(&path), Some(&token)).await;
        assert_eq!(oms_gets(), before, "{tenant}: not answered from the pool");
        assert_eq!(got.status, status, "{tenant}: {got:?}");
        let want: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got.json(), want, "{tenant}");
        answers.push(got.status);
    }
    // acme sees its invoice, globex does not.
    assert_eq!(answers, [200, 404]);
}
