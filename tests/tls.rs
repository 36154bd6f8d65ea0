//! TLS and HTTP/2 on every link omsgate terminates or opens (issue 16), against real endpoints:
//! certificates come from a throwaway CA generated per test (rcgen), clients are `curl` (with
//! nghttp2) and a rustls client, servers are the gateway itself, a TLS test upstream and a
//! `redis-server --tls-port`.

mod common;
mod db_support;

use common::pki::{write_key, Ca, Issued};
use common::{Gateway, TestDir, TestUpstream};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

// === Clients ===

/// `curl` with `args` against `url`; returns `(http_version, status, body)`, or the exit code
/// and stderr on failure.
fn curl(args: &[&str], url: &str) -> Result<(String, u16, String), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').expect("curl -w line");
    let (version, status) = last.split_once(' ').expect("version and status");
    Ok((
        version.to_string(),
        status.parse().expect("status"),
        body.to_string(),
    ))
}

/// What a rustls client saw of a handshake with `addr` (server name `localhost`).
struct Handshake {
    version: Option<rustls::ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    leaf: Vec<u8>,
    /// The first line of the answer to `GET /echo` over HTTP/1.1 (when ALPN was not h2).
    status_line: Option<String>,
}

/// A TLS client connection to `addr` for `localhost`, trusting only `ca`, offering `versions`
/// and the ALPN protocols `alpn`; the handshake must complete within 10 s.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in omsgate::tls::read_certificates(ca).expect("CA file") {
        roots.add(cert).expect("CA cert");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

fn rustls_client(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<Handshake, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut tls = tls_connect(addr, ca, versions, alpn).await?;
        let (_, conn) = tls.get_ref();
        let mut seen = Handshake {
            version: conn.protocol_version(),
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
            leaf: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            status_line: None,
        };
        if seen.alpn.as_deref() != Some(b"h2") {
            tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer);
            seen.status_line = text.lines().next().map(str::to_string);
        }
        Ok(seen)
    })
}

/// Writes a new certificate and key for `localhost` over `first`'s files, sends SIGHUP and
/// waits for the gateway's first successful reload; returns the new certificate.
fn rotate_and_reload(gw: &Gateway, ca: &Ca, first: &Issued) -> Issued {
    let second = ca.issue("gw-next", &["localhost"], false);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    gw.signal("HUP");
    assert!(
        common::wait_for(Duration::from_secs(10), || gw
            .metric_value("omsgate_config_reloads_total", &[("result", "ok")])
            == Some(1.0)),
        "reload did not happen:\n{}",
        gw.log()
    );
    second
}

// === Gateway configs ===

fn server_tls(cert: &Issued, client_ca: Option<&Path>) -> String {
    let client_ca = client_ca
        .map(|p| format!(", client_ca = \"{}\"", p.display()))
        .unwrap_or_default();
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\"{client_ca} }}\n",
        cert.cert.display(),
        cert.key.display()
    )
}

fn gateway_config(upstream: &str, server_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 1
shutdown_grace = "5s"
{server_extra}
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{upstream}"]
health_check = {{ path = "/health", interval = "200ms", timeout = "500ms" }}
connect_timeout = "1s"
read_timeout = "10s"
{extra}
"#
    )
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.listen_addr().port())
}

fn resolve(gw: &Gateway) -> String {
    format!("localhost:{}:127.0.0.1", gw.listen_addr().port())
}

// === 1. Client listener ===

#[test]
fn tls_listener_speaks_h2_and_http11_over_tls13_and_12() {
    let dir = TestDir::new("tls-listener");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost", "127.0.0.1"], false);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&leaf, None),
        "",
    ));
    let ca_pem = ca.pem_path("gw");
    let cacert = ca_pem.display().to_string();
    let resolve = resolve(&gw);

    // curl over HTTP/2 (ALPN) and over HTTP/1.1, both verifying against the throwaway CA.
    let (version, status, body) = curl(
        &["--cacert", &cacert, "--resolve", &resolve, "--http2"],
        &https(&gw, "/echo?via=h2"),
    )
    .expect("h2 over TLS");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("\"via=h2\""), "{body}");
    let (version, status, _) = curl(
        &["--cacert", &cacert, "--resolve", &resolve, "--http1.1"],
        &https(&gw, "/echo"),
    )
    .expect("HTTP/1.1 over TLS");
    assert_eq!((version.as_str(), status), ("1.1", 200));
    // Plain HTTP on the TLS port is not served.
    assert!(curl(&["--http1.1"], &gw.url("/echo")).map_or(true, |(_, s, _)| s != 200));
    // A client that does not trust the CA refuses the certificate.
    let err = curl(&["--resolve", &resolve], &https(&gw, "/echo")).unwrap_err();
    assert!(err.contains("exit Some(60)"), "{err}");

    // A rustls client: TLS 1.3 with ALPN h2 chosen; TLS 1.2 accepted; HTTP/1.1 over ALPN.
    let addr = gw.listen_addr();
    let tls13 = rustls_client(
        addr,
        &ca_pem,
        &[&rustls::version::TLS13],
        &[b"h2", b"http/1.1"],
    )
    .expect("TLS 1.3 handshake");
    assert_eq!(tls13.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls13.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(tls13.leaf, leaf.der);
    let tls12 = rustls_client(addr, &ca_pem, &[&rustls::version::TLS12], &[b"http/1.1"])
        .expect("TLS 1.2 handshake");
    assert_eq!(tls12.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(tls12.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(tls12.status_line.as_deref(), Some("HTTP/1.1 200 OK"));
}

/// A TLS handshake has `server.header_timeout` too (Pingora alone: a fixed 60 s): a client that
/// connects and says nothing, or sends half a ClientHello, is closed at the deadline; a client
/// that completes its handshake is served.
#[test]
fn unfinished_tls_handshakes_are_cut_off_at_header_timeout() {
    use std::io::{Read, Write};
    let dir = TestDir::new("tls-handshake-deadline");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost", "127.0.0.1"], false);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &format!("header_timeout = \"2s\"\n{}", server_tls(&leaf, None)),
        "",
    ));
    // How long until the gateway closes a connection that sent `bytes` (None: still open at 8 s).
    let closed_after = |bytes: &[u8]| {
        let mut conn = std::net::TcpStream::connect(gw.listen_addr()).unwrap();
        conn.write_all(bytes).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                // An alert or a reset counts as closed only once the socket ends.
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(_) => return Some(start.elapsed()),
            }
        }
    };
    // A TLS record header announcing a 512-byte handshake message, then 4 bytes of it.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    for (what, bytes) in [("silent", &b""[..]), ("half a ClientHello", half_hello)] {
        let took = closed_after(bytes)
            .unwrap_or_else(|| panic!("{what}: the unfinished handshake was never cut off"));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(4000),
            "{what}: closed after {took:?}, not at the 2 s header_timeout"
        );
    }
    let cacert = ca.pem_path("gw").display().to_string();
    let (_, status, body) = curl(
        &["--cacert", &cacert, "--resolve", &resolve(&gw), "--http1.1"],
        &https(&gw, "/echo"),
    )
    .expect("a complete handshake is served");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn h2c_prior_knowledge_and_http11_share_a_plaintext_listener() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        "h2c = true",
        "",
    ));
    let (version, status, body) =
        curl(&["--http2-prior-knowledge"], &gw.url("/echo?via=h2c")).expect("h2c");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("\"via=h2c\""), "{body}");
    let (version, status, _) = curl(&["--http1.1"], &gw.url("/echo")).expect("HTTP/1.1");
    assert_eq!((version.as_str(), status), ("1.1", 200));

    // Without h2c, prior-knowledge HTTP/2 is not understood.
    let plain = Gateway::start(&gateway_config(&upstream.addr.to_string(), "", ""));
    assert!(curl(&["--http2-prior-knowledge"], &plain.url("/echo")).is_err());
}

#[test]
fn mtls_refuses_a_client_without_a_certificate_from_client_ca() {
    let dir = TestDir::new("tls-mtls");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost"], false);
    let clients = Ca::new(dir.path(), "clients");
    let good = clients.issue("client", &["client-a"], true);
    let stranger = ca.issue("stranger", &["client-b"], true);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&leaf, Some(&clients.pem_path("clients"))),
        "",
    ));
    let cacert = ca.pem_path("gw").display().to_string();
    let resolve = resolve(&gw);
    let base = ["--cacert", cacert.as_str(), "--resolve", resolve.as_str()];

    let no_cert = curl(&base, &https(&gw, "/echo"));
    assert!(no_cert.is_err(), "{no_cert:?}");
    let (wrong_cert, wrong_key) = (
        stranger.cert.display().to_string(),
        stranger.key.display().to_string(),
    );
    let wrong = curl(
        &[&base[..], &["--cert", &wrong_cert, "--key", &wrong_key]].concat(),
        &https(&gw, "/echo"),
    );
    assert!(wrong.is_err(), "{wrong:?}");
    let (cert, key) = (
        good.cert.display().to_string(),
        good.key.display().to_string(),
    );
    let (version, status, _) = curl(
        &[&base[..], &["--cert", &cert, "--key", &key, "--http2"]].concat(),
        &https(&gw, "/echo"),
    )
    .expect("client certificate accepted");
    assert_eq!((version.as_str(), status), ("2", 200));
}

#[test]
fn sighup_rotates_the_certificate_without_failing_a_request_in_flight() {
    let dir = TestDir::new("tls-rotate");
    let ca = Ca::new(dir.path(), "gw");
    let first = ca.issue("gw", &["localhost"], false);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&first, None),
        "",
    ));
    let ca_pem = ca.pem_path("gw");
    let addr = gw.listen_addr();
    let seen = rustls_client(addr, &ca_pem, &[&rustls::version::TLS13], &[b"h2"]).unwrap();
    assert_eq!(seen.leaf, first.der);

    // A slow request over the first certificate's connection, in flight during the reload.
    let (cacert, resolve, url) = (
        ca_pem.display().to_string(),
        resolve(&gw),
        https(&gw, "/slow/3000"),
    );
    let in_flight = std::thread::spawn(move || {
        curl(
            &["--cacert", &cacert, "--resolve", &resolve, "--http2"],
            &url,
        )
    });
    assert!(common::wait_for(Duration::from_secs(5), || upstream
        .hits_for("/slow")
        == 1));

    // New certificate and key at the same paths, then SIGHUP.
    let second = rotate_and_reload(&gw, &ca, &first);
    let seen = rustls_client(addr, &ca_pem, &[&rustls::version::TLS13], &[b"h2"]).unwrap();
    assert_eq!(
        seen.leaf, second.der,
        "new handshakes get the new certificate"
    );

    // A bad key file on reload is refused; the certificate in force stays.
    write_key(
        &first.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    gw.signal("HUP");
    assert!(common::wait_for(Duration::from_secs(10), || gw
        .metric_value(
            "omsgate_config_reloads_total",
            &[("result", "rejected")]
        )
        == Some(1.0)));
    assert!(gw.log().contains("server.tls.key"), "{}", gw.log());
    let seen = rustls_client(addr, &ca_pem, &[&rustls::version::TLS13], &[b"h2"]).unwrap();
    assert_eq!(seen.leaf, second.der);

    let (version, status, body) = in_flight.join().unwrap().expect("in-flight request");
    assert_eq!(
        (version.as_str(), status, body.as_str()),
        ("2", 200, "slow")
    );
}

#[test]
fn more_listeners_serve_plain_and_tls_side_by_side_and_rotate_on_reload() {
    let dir = TestDir::new("tls-listeners");
    let ca = Ca::new(dir.path(), "gw");
    let first = ca.issue("gw", &["localhost"], false);
    let upstream = TestUpstream::start();
    let (tls_port, plain_port) = (common::free_port(), common::free_port());
    let listeners = format!(
        "\n[[server.listeners]]\nlisten = \"127.0.0.1:{tls_port}\"\n{}\
         \n[[server.listeners]]\nlisten = \"127.0.0.1:{plain_port}\"\n",
        server_tls(&first, None)
    );
    let gw = Gateway::start(&gateway_config(&upstream.addr.to_string(), &listeners, ""));
    // The plaintext `listen` and the second extra listener answer in plain HTTP.
    let (status, body) = reqwest::blocking_get(&gw.url("/echo?via=listen"));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        reqwest::blocking_get(&format!("http://127.0.0.1:{plain_port}/echo?via=extra"));
    assert_eq!(status, 200, "{body}");
    // The first extra listener speaks TLS with its own certificate, HTTP/1.1 and h2 by ALPN.
    let ca_pem = ca.pem_path("gw");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let seen = rustls_client(
        tls_addr,
        &ca_pem,
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    )
    .expect("TLS on the extra listener");
    assert_eq!(seen.leaf, first.der);
    assert_eq!(seen.status_line.as_deref(), Some("HTTP/1.1 200 OK"));
    let seen = rustls_client(tls_addr, &ca_pem, &[&rustls::version::TLS13], &[b"h2"]).unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));

    // Its certificate is re-read on SIGHUP like [server.tls]'s.
    let second = rotate_and_reload(&gw, &ca, &first);
    let seen = rustls_client(tls_addr, &ca_pem, &[&rustls::version::TLS13], &[b"h2"]).unwrap();
    assert_eq!(
        seen.leaf, second.der,
        "new handshakes get the new certificate"
    );

    // Problems name the entry: an address already taken, a TLS table without its key.
    let (code, out) = Gateway::check_config(&format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[[server.listeners]]\nlisten = \"127.0.0.1:8443\"\n\
         tls = {{ cert = \"{}\" }}\n[[server.listeners]]\nlisten = \"127.0.0.1:8080\"\n\
         [[server.listeners]]\nlisten = \"nowhere\"\n[upstream]\nservers = [\"127.0.0.1:8000\"]\n",
        first.cert.display()
    ));
    assert_eq!(code, 64, "{out}");
    for key in [
        "server.listeners[0].tls.key",
        "server.listeners[1].listen",
        "server.listeners[2].listen",
    ] {
        assert!(out.contains(key), "{key} in:\n{out}");
    }
}

#[test]
fn check_config_names_each_bad_listener_tls_key() {
    let dir = TestDir::new("tls-check");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost"], false);
    let other = ca.issue("other", &["localhost"], false);
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk\n").unwrap();
    let cases = [
        (
            format!("tls = {{ cert = \"{}\" }}", leaf.cert.display()),
            "server.tls.key",
        ),
        (
            format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                leaf.cert.display(),
                other.key.display()
            ),
            "server.tls.key",
        ),
        (
            format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                junk.display(),
                leaf.key.display()
            ),
            "server.tls.cert",
        ),
        (
            format!(
                "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
                leaf.cert.display(),
                leaf.key.display(),
                junk.display()
            ),
            "server.tls.client_ca",
        ),
        (
            format!(
                "tls = {{ client_ca = \"{}\" }}",
                ca.pem_path("gw").display()
            ),
            "server.tls.client_ca",
        ),
    ];
    for (server, key) in cases {
        let (code, stderr) = Gateway::check_config(&gateway_config("127.0.0.1:1", &server, ""));
        assert_eq!(code, 64, "{server}: {stderr}");
        assert!(stderr.contains(key), "{server}: {stderr}");
    }
    let (code, stderr) =
        Gateway::check_config(&gateway_config("127.0.0.1:1", &server_tls(&leaf, None), ""));
    assert_eq!(code, 0, "{stderr}");
}

// === 2. OMS upstream over HTTPS ===

/// A TLS terminator in front of a plain upstream (the OMS behind HTTPS): accepts TLS with
/// `cert`, records the SNI of every handshake, and pipes the bytes to `backend`.
struct TlsFront {
    addr: SocketAddr,
    sni: Arc<parking_lot::Mutex<Vec<Option<String>>>>,
    /// The ALPN protocol chosen in each handshake.
    alpn: Arc<parking_lot::Mutex<Vec<Option<Vec<u8>>>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(cert: &Issued, backend: SocketAddr) -> TlsFront {
        TlsFront::start_with_alpn(cert, backend, &[])
    }

    /// [`start`](Self::start), offering `alpn` (the bytes are piped whatever is chosen).
    fn start_with_alpn(cert: &Issued, backend: SocketAddr, alpn: &[&[u8]]) -> TlsFront {
        TlsFront::start_full(cert, backend, alpn, None)
    }

    /// [`start`](Self::start), refusing clients without a certificate from `client_ca`.
    fn start_mtls(cert: &Issued, backend: SocketAddr, client_ca: &Path) -> TlsFront {
        TlsFront::start_full(cert, backend, &[], Some(client_ca))
    }

    fn start_full(
        cert: &Issued,
        backend: SocketAddr,
        alpn: &[&[u8]],
        client_ca: Option<&Path>,
    ) -> TlsFront {
        let (chain, key) = omsgate::tls::load_certified_key(&cert.cert, &cert.key)
            .map(|k| (k.cert.clone(), cert.key.clone()))
            .expect("front certificate");
        let pem = std::fs::read(&key).unwrap();
        let private = rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in omsgate::tls::read_certificates(ca).unwrap() {
                    roots.add(c).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, private).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let sni = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let alpns = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (seen, seen_alpn) = (sni.clone(), alpns.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, seen_alpn) =
                    (acceptor.clone(), seen.clone(), seen_alpn.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    seen.lock()
                        .push(tls.get_ref().1.server_name().map(str::to_string));
                    seen_alpn
                        .lock()
                        .push(tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()));
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            addr,
            sni,
            alpn: alpns,
            _runtime: runtime,
        }
    }

    fn handshakes(&self) -> usize {
        self.sni.lock().len()
    }
}

#[test]
fn https_upstream_is_verified_with_sni_and_health_checked_over_tls() {
    let dir = TestDir::new("tls-upstream");
    let ca = Ca::new(dir.path(), "oms");
    let oms_cert = ca.issue("oms", &["localhost"], false);
    let upstream = TestUpstream::start();
    let front = TlsFront::start(&oms_cert, upstream.addr);
    let tls = format!("[tls]\nca_file = \"{}\"\n", ca.pem_path("oms").display());
    let server = format!("https://localhost:{}", front.addr.port());
    let gw = Gateway::start(&gateway_config(&server, "", &tls));

    let client = reqwest::blocking_get(&gw.url("/echo?over=tls"));
    assert_eq!(client.0, 200, "{}", client.1);
    assert!(client.1.contains("\"over=tls\""), "{}", client.1);
    let sni = front.sni.lock().clone();
    assert!(!sni.is_empty());
    assert!(
        sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "every handshake sends the host name as SNI: {sni:?}"
    );
    // Health checks run over TLS too: more handshakes than requests, and the server is healthy.
    let before = front.handshakes();
    assert!(common::wait_for(Duration::from_secs(5), || front
        .handshakes()
        > before + 2));
    let healthy = gw.metric_value(
        "omsgate_upstream_healthy",
        &[("server", &front.addr.to_string())],
    );
    assert_eq!(healthy, Some(1.0), "{}", gw.metrics_text());
}

#[test]
fn h2_to_an_https_upstream_when_asked_for() {
    let dir = TestDir::new("tls-upstream-h2");
    let ca = Ca::new(dir.path(), "oms");
    let oms_cert = ca.issue("oms", &["localhost"], false);
    let upstream = TestUpstream::start();
    // The OMS side: a gateway speaking h2c (prior knowledge) behind a TLS front offering h2.
    let h2_oms = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        "h2c = true",
        "",
    ));
    let front = TlsFront::start_with_alpn(&oms_cert, h2_oms.listen_addr(), &[b"h2", b"http/1.1"]);
    let tls = format!("[tls]\nca_file = \"{}\"\n", ca.pem_path("oms").display());
    let server = format!("https://localhost:{}", front.addr.port());
    let gw = Gateway::start(&gateway_config(&server, "", &format!("{tls}\n")).replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nh2 = true",
    ));
    for i in 0..3 {
        let (status, body) = reqwest::blocking_get(&gw.url(&format!("/echo?n={i}")));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("\"n={i}\"")), "{body}");
    }
    let chosen = front.alpn.lock().clone();
    assert!(
        chosen.iter().any(|a| a.as_deref() == Some(&b"h2"[..])),
        "requests negotiated h2: {chosen:?}"
    );

    // Without h2 = true only http/1.1 is offered.
    let h1 = Gateway::start(&gateway_config(&server, "", &tls));
    front.alpn.lock().clear();
    let (status, _) = reqwest::blocking_get(&h1.url("/echo"));
    assert_eq!(status, 200);
    let chosen = front.alpn.lock().clone();
    assert!(
        !chosen.is_empty() && chosen.iter().all(|a| a.as_deref() != Some(&b"h2"[..])),
        "{chosen:?}"
    );

    // h2 on plain servers is a config problem.
    let (code, stderr) = Gateway::check_config(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nservers = [\"127.0.0.1:8000\"]\nh2 = true\n",
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("upstream.h2"), "{stderr}");
}

#[test]
fn https_upstream_with_an_untrusted_certificate_is_a_502_naming_the_cause() {
    let dir = TestDir::new("tls-upstream-bad");
    let ca = Ca::new(dir.path(), "oms");
    let _other = Ca::new(dir.path(), "other");
    let oms_cert = ca.issue("oms", &["localhost"], false);
    let wrong_name = ca.issue("elsewhere", &["elsewhere.example"], false);
    let upstream = TestUpstream::start();
    let front = TlsFront::start(&oms_cert, upstream.addr);
    let misnamed = TlsFront::start(&wrong_name, upstream.addr);

    for (front, ca_name, cause) in [
        (&front, "other", "invalid peer certificate: UnknownIssuer"),
        (
            &misnamed,
            "oms",
            "invalid peer certificate: certificate not valid for name \"localhost\"",
        ),
    ] {
        let tls = format!(
            "[tls]\nca_file = \"{}\"\n",
            dir.path().join(format!("{ca_name}-ca.pem")).display()
        );
        let server = format!("https://localhost:{}", front.addr.port());
        let gw = Gateway::start(&gateway_config(&server, "", &tls));
        let (status, body) = reqwest::blocking_get(&gw.url("/echo"));
        assert_eq!(status, 502, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(json.is_object(), "{body}");
        assert!(
            common::wait_for(Duration::from_secs(5), || gw.log().contains(cause)),
            "the log names the cause ({cause}):\n{}",
            gw.log()
        );
        assert_eq!(upstream.hits_for("/echo"), 0, "nothing reached the OMS");
        assert!(
            gw.metric_value("omsgate_upstream_errors_total", &[("kind", "connect")])
                .unwrap_or(0.0)
                >= 1.0
        );
    }
}

#[test]
fn upstream_tls_overrides_name_every_server_or_skip_verification_with_a_warning() {
    let dir = TestDir::new("tls-upstream-overrides");
    let ca = Ca::new(dir.path(), "oms");
    let _other = Ca::new(dir.path(), "other");
    let oms_cert = ca.issue("oms", &["oms.internal"], false);
    let upstream = TestUpstream::start();
    let front = TlsFront::start(&oms_cert, upstream.addr);
    // Listed by IP address: the certificate is for oms.internal, so only the override verifies.
    let server = format!("https://127.0.0.1:{}", front.addr.port());
    let trusted = format!("[tls]\nca_file = \"{}\"\n", ca.pem_path("oms").display());

    let plain = Gateway::start(&gateway_config(&server, "", &trusted));
    let (status, body) = reqwest::blocking_get(&plain.url("/echo?by=ip"));
    assert_eq!(status, 502, "the IP is not in the certificate: {body}");

    let named = Gateway::start(&gateway_config(
        &server,
        "",
        &format!("tls = {{ sni = \"oms.internal\" }}\n{trusted}"),
    ));
    front.sni.lock().clear();
    let (status, body) = reqwest::blocking_get(&named.url("/echo?by=sni"));
    assert_eq!(status, 200, "{body}");
    let sni = front.sni.lock().clone();
    assert!(
        !sni.is_empty() && sni.iter().all(|s| s.as_deref() == Some("oms.internal")),
        "the override is sent as SNI: {sni:?}"
    );

    // verify = false: a CA nobody trusts is accepted, and the gateway says what that means.
    let untrusted = format!(
        "tls = {{ verify = false }}\n[tls]\nca_file = \"{}\"\n",
        ca.pem_path("other").display()
    );
    let unverified = Gateway::start(&gateway_config(&server, "", &untrusted));
    let (status, body) = reqwest::blocking_get(&unverified.url("/echo?verify=off"));
    assert_eq!(status, 200, "{body}");
    assert!(
        unverified.log().contains("upstream.tls.verify"),
        "a warning at start:\n{}",
        unverified.log()
    );
    let (code, out) = Gateway::check_config(&gateway_config(&server, "", &untrusted));
    assert_eq!(code, 0, "a warning, not a problem: {out}");
    assert!(out.contains("upstream.tls.verify"), "{out}");

    // The overrides on plain servers are a problem.
    let (code, out) = Gateway::check_config(&gateway_config(
        &upstream.addr.to_string(),
        "",
        "tls = { sni = \"oms.internal\" }\n",
    ));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("upstream.tls"), "{out}");
}

#[test]
fn an_oms_behind_mutual_tls_gets_the_client_certificate_of_upstream_tls() {
    let dir = TestDir::new("tls-upstream-mtls");
    let ca = Ca::new(dir.path(), "oms");
    let clients = Ca::new(dir.path(), "clients");
    let oms_cert = ca.issue("oms", &["localhost"], false);
    let gateway_cert = clients.issue("gateway", &["omsgate"], true);
    let stranger = ca.issue("stranger", &["omsgate"], true);
    let upstream = TestUpstream::start();
    let front = TlsFront::start_mtls(&oms_cert, upstream.addr, &clients.pem_path("clients"));
    let server = format!("https://localhost:{}", front.addr.port());
    let trusted = format!("[tls]\nca_file = \"{}\"\n", ca.pem_path("oms").display());
    let with_cert = |c: &Issued| {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n{trusted}",
            c.cert.display(),
            c.key.display()
        )
    };

    // Without a client certificate the OMS refuses the handshake: a JSON 502.
    let anonymous = Gateway::start(&gateway_config(&server, "", &trusted));
    let (status, body) = reqwest::blocking_get(&anonymous.url("/echo?who=anonymous"));
    assert_eq!(status, 502, "{body}");
    assert_eq!(upstream.hits_for("/echo"), 0);

    // With the certificate of upstream.tls: requests and health checks get through.
    let gw = Gateway::start(&gateway_config(&server, "", &with_cert(&gateway_cert)));
    for i in 0..3 {
        let (status, body) = reqwest::blocking_get(&gw.url(&format!("/echo?mtls={i}")));
        assert_eq!(status, 200, "{body}\n{}", gw.log());
    }
    assert!(
        common::wait_for(Duration::from_secs(5), || upstream.hits_for("/health") >= 1),
        "health checks over mutual TLS reach the OMS"
    );
    // A certificate from a CA the OMS does not accept for clients is refused like none.
    let wrong = Gateway::start(&gateway_config(&server, "", &with_cert(&stranger)));
    let (status, body) = reqwest::blocking_get(&wrong.url("/echo?who=stranger"));
    assert_eq!(status, 502, "{body}");

    // cert without key, and a key that is not the certificate's: problems naming the key.
    let (code, out) = Gateway::check_config(&gateway_config(
        &server,
        "",
        &format!(
            "tls = {{ cert = \"{}\" }}\n{trusted}",
            gateway_cert.cert.display()
        ),
    ));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("upstream.tls.key"), "{out}");
    let (code, out) = Gateway::check_config(&gateway_config(
        &server,
        "",
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n{trusted}",
            gateway_cert.cert.display(),
            stranger.key.display()
        ),
    ));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("upstream.tls.key"), "{out}");
    // On plain servers the client certificate is a problem like the other overrides.
    let (code, out) = Gateway::check_config(&gateway_config(
        &upstream.addr.to_string(),
        "",
        &with_cert(&gateway_cert),
    ));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("upstream.tls"), "{out}");
}

#[test]
fn query_check_asks_an_https_oms_by_name_trusting_tls_ca_file() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (schema, _) = rt.block_on(db_support::seeded_schema("qc_tls", 5, 2, 12));
    let sim = rt.block_on(db_support::sim_with(5, 2, 12));
    let dir = TestDir::new("tls-query-check");
    let ca = Ca::new(dir.path(), "oms");
    let front = TlsFront::start(&ca.issue("oms", &["localhost"], false), sim.addr);
    let config = |trust: bool| {
        let tls = if trust {
            format!("[tls]\nca_file = \"{}\"\n", ca.pem_path("oms").display())
        } else {
            String::new()
        };
        let path = dir.path().join(format!("query-check-{trust}.toml"));
        std::fs::write(
            &path,
            format!(
                "{tls}[upstream]\nservers = [\"https://localhost:{}\"]\n[database]\nurl = \"{}\"\n\
                 schema = \"{}\"\n[[route]]\nname = \"invoice\"\npath = \"/api/v1/invoices/{{id}}\"\n\
                 methods = [\"GET\"]\nquery = \"invoice_with_lines\"\n\n{}",
                front.addr.port(),
                db_support::database_url(),
                schema.name,
                db_support::reference_queries_toml()
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &Path| {
        let out = Command::new(Gateway::bin())
            .args(["query-check", "--samples", "10", "-c"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The default OMS is the https:// server by its name, verified with [tls] ca_file.
    let (code, text) = run(&config(true));
    assert_eq!(code, Some(0), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("invoice "))
        .unwrap_or_else(|| panic!("no invoice row: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[2..], ["10", "10", "0", "0"], "{text}");
    assert!(
        front
            .sni
            .lock()
            .iter()
            .any(|s| s.as_deref() == Some("localhost")),
        "asked over TLS by name"
    );
    // Without the CA the OMS's certificate is not trusted: the route is not checked, exit 1.
    let (code, text) = run(&config(false));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    rt.block_on(schema.drop_schema());
}

#[test]
fn check_config_refuses_mixed_or_unknown_upstream_schemes() {
    for (servers, key) in [
        (
            r#"["https://localhost:8443", "127.0.0.1:8000"]"#,
            "upstream.servers",
        ),
        (r#"["ftp://localhost:21"]"#, "upstream.servers[0]"),
        (r#"["https://localhost:8443/api"]"#, "upstream.servers[0]"),
    ] {
        let config = format!(
            "[server]\nlisten = \"{{listen}}\"\n[admin]\nlisten = \"{{admin}}\"\n[upstream]\nservers = {servers}\n"
        );
        let (code, stderr) = Gateway::check_config(&config);
        assert_eq!(code, 64, "{servers}: {stderr}");
        assert!(stderr.contains(key), "{servers}: {stderr}");
    }
    let (code, stderr) = Gateway::check_config(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nservers = [\"https://localhost\", \"https://127.0.0.1:8443\"]\n",
    );
    assert_eq!(code, 0, "{stderr}");
}

/// Minimal blocking GET for these tests: `(status, body)`.
mod reqwest {
    pub fn blocking_get(url: &str) -> (u16, String) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let resp = ::reqwest::Client::new()
                .get(url)
                .timeout(std::time::Duration::from_secs(15))
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        })
    }
}

// === 3. Redis over TLS (rediss://) ===

/// A `redis-server` speaking TLS only (`--port 0 --tls-port P`), with a certificate of `ca`.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
    log: PathBuf,
}

impl TlsRedis {
    fn start(ca: &Ca, dir: &Path) -> TlsRedis {
        TlsRedis::start_with(ca, dir, false)
    }

    /// With `auth_clients`, the server asks every client for a certificate of `ca`
    /// (`tls-auth-clients yes`).
    fn start_with(ca: &Ca, dir: &Path, auth_clients: bool) -> TlsRedis {
        let cert = ca.issue("redis", &["localhost"], false);
        let port = common::free_port();
        let log = dir.join("redis.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert.cert)
            .arg("--tls-key-file")
            .arg(&cert.key)
            .arg("--tls-ca-cert-file")
            .arg(ca.pem_path("redis"))
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("redis-server (with TLS support) is installed");
        let redis = TlsRedis { port, child, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            common::wait_for(Duration::from_secs(10), || common::port_open(addr)),
            "redis-server --tls-port did not start:\n{}",
            std::fs::read_to_string(&redis.log).unwrap_or_default()
        );
        redis
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// Keys starting with `prefix`, read over TLS with the gateway's own client code.
    fn keys(&self, trust: &omsgate::tls::TlsConfig, prefix: &str) -> Result<Vec<String>, String> {
        let client = trust.redis_client(&self.url()).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn trust(ca_file: &Path) -> omsgate::tls::TlsConfig {
    let mut p = omsgate::config::Problems::default();
    let tls = omsgate::tls::TlsConfig::from_file(
        &omsgate::tls::TlsFile {
            ca_file: ca_file.display().to_string(),
        },
        &mut p,
    );
    assert!(p.is_empty());
    tls
}

fn redis_config(upstream: &TestUpstream, redis: &str, prefix: &str, ca: Option<&Path>) -> String {
    let tls = ca
        .map(|p| format!("[tls]\nca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    gateway_config(
        &upstream.addr.to_string(),
        "",
        &format!(
            r#"
{tls}
[cache]
redis_url = "{redis}"
key_prefix = "{prefix}:c:"
redis_timeout = "1s"
[rate_limit]
mode = "distributed"
redis_url = "{redis}"
key_prefix = "{prefix}:rl:"
redis_timeout = "2s"
[rate_limit.policies.three]
key = "ip"
quota = "3/hour"
[[route]]
name = "cached"
path = "/cached/{{x}}"
cache = {{ ttl = "60s", scope = "public", resource = "thing:{{x}}" }}
[[route]]
name = "limited"
path = "/limited"
rate_limit = ["three"]
"#
        ),
    )
}

#[test]
fn cache_and_distributed_limits_work_over_rediss() {
    let dir = TestDir::new("tls-redis");
    let ca = Ca::new(dir.path(), "redis");
    let redis = TlsRedis::start(&ca, dir.path());
    let trust = trust(&ca.pem_path("redis"));
    let upstream = TestUpstream::start();
    let prefix = common::unique("omsgate-tls");
    let gw = Gateway::start(&redis_config(
        &upstream,
        &redis.url(),
        &prefix,
        Some(&ca.pem_path("redis")),
    ));

    // Cache: the entry is stored in Redis (over TLS) and answers the next request.
    for _ in 0..2 {
        let (status, _) = reqwest::blocking_get(&gw.url("/cached/a"));
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.hits_for("/cached"), 1);
    assert!(
        common::wait_for(Duration::from_secs(5), || redis
            .keys(&trust, &format!("{prefix}:c:"))
            .is_ok_and(|k| !k.is_empty())),
        "no cache key in the TLS Redis: {:?}\n{}",
        redis.keys(&trust, &format!("{prefix}:c:")),
        gw.log()
    );

    // Distributed limit: 3/hour per IP, kept in Redis.
    let statuses: Vec<u16> = (0..4)
        .map(|_| reqwest::blocking_get(&gw.url("/limited")).0)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    let keys = redis.keys(&trust, &format!("{prefix}:rl:")).unwrap();
    assert!(!keys.is_empty(), "no rate-limit key in the TLS Redis");
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_backend_errors_total", &[])
            .unwrap_or(0.0),
        0.0
    );
}

#[test]
fn rediss_without_the_private_ca_is_refused_and_the_cache_fails_open() {
    let dir = TestDir::new("tls-redis-untrusted");
    let ca = Ca::new(dir.path(), "redis");
    let redis = TlsRedis::start(&ca, dir.path());
    let upstream = TestUpstream::start();
    let prefix = common::unique("omsgate-tls");
    // No [tls] ca_file: the system roots do not know the throwaway CA.
    let gw = Gateway::start(&redis_config(&upstream, &redis.url(), &prefix, None));
    for _ in 0..2 {
        let (status, _) = reqwest::blocking_get(&gw.url("/cached/b"));
        assert_eq!(status, 200);
    }
    assert!(
        common::wait_for(Duration::from_secs(5), || gw
            .log()
            .contains("invalid peer certificate: UnknownIssuer")),
        "{}",
        gw.log()
    );
    let keys = redis
        .keys(&trust(&ca.pem_path("redis")), &format!("{prefix}:"))
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A Redis that asks for client certificates: a gateway with `redis = { ..., cert, key }` in
/// `[cache]` and `[rate_limit]` presents its certificate and uses the cache and the distributed
/// limit with no backend error; one without is refused by the server and fails open (200 from
/// the OMS, the refusal counted). A half-configured certificate, or one for `redis://` nodes,
/// is a config problem under its key.
#[test]
fn a_redis_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let dir = TestDir::new("tls-redis-client-cert");
    let ca = Ca::new(dir.path(), "redis");
    let redis = TlsRedis::start_with(&ca, dir.path(), true);
    let client = ca.issue("omsgate-client", &["omsgate"], true);
    let upstream = TestUpstream::start();
    let prefix = common::unique("omsgate-tls-cc");
    let cert_keys = format!(
        "cert = \"{}\", key = \"{}\"",
        client.cert.display(),
        client.key.display()
    );
    let with_cert = |cert: &str| {
        redis_config(&upstream, "", &prefix, Some(&ca.pem_path("redis"))).replace(
            "redis_url = \"\"",
            &format!("redis = {{ nodes = [\"{}\"]{cert} }}", redis.url()),
        )
    };
    let gw = Gateway::start(&with_cert(&format!(", {cert_keys}")));
    for _ in 0..2 {
        let (status, _) = reqwest::blocking_get(&gw.url("/cached/cc"));
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.hits_for("/cached"), 1, "{}", gw.log());
    let statuses: Vec<u16> = (0..4)
        .map(|_| reqwest::blocking_get(&gw.url("/limited")).0)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    let mut reader = trust(&ca.pem_path("redis"));
    reader.redis_client = Some(
        omsgate::tls::RedisClientCert::load(&client.cert, &client.key)
            .unwrap_or_else(|(field, e)| panic!("{field}: {e}")),
    );
    let keys = redis.keys(&reader, &format!("{prefix}:")).unwrap();
    assert!(keys.len() >= 2, "cache and limit keys in Redis: {keys:?}");
    let errors = |gw: &Gateway| {
        gw.metric_value("omsgate_rate_limit_backend_errors_total", &[])
            .unwrap_or(0.0)
            + gw.metric_value(
                "omsgate_cache_backend_errors_total",
                &[("backend", "redis")],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(errors(&gw), 0.0, "{}", gw.log());

    // Without the certificate the server refuses the handshake: the cache fails open.
    let without = Gateway::start(&with_cert(""));
    for _ in 0..2 {
        let (status, _) = reqwest::blocking_get(&without.url("/cached/nocert"));
        assert_eq!(status, 200);
    }
    assert_eq!(
        upstream.hits_for("/cached/nocert"),
        2,
        "no hit without Redis"
    );
    assert!(
        errors(&without) > 0.0,
        "the refusal is counted\n{}",
        without.log()
    );
    assert!(
        redis.keys(&reader, &format!("{prefix}:")).unwrap().len() == keys.len(),
        "the gateway without a certificate wrote nothing"
    );

    // Half a pair, or a certificate for plain redis:// nodes: config problems with their keys.
    let half = with_cert(&format!(", cert = \"{}\"", client.cert.display()));
    let (code, stderr) = Gateway::check_config(&half);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cache.redis.key"), "{stderr}");
    let plain = with_cert(&format!(", {cert_keys}")).replace("rediss://", "redis://");
    let (code, stderr) = Gateway::check_config(&plain);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cache.redis.cert"), "{stderr}");
    assert!(stderr.contains("rate_limit.redis.cert"), "{stderr}");
}

// === 4. PostgreSQL sslmode ===

/// A private PostgreSQL cluster (initdb per test) on a private port, with `ssl = on` and a
/// certificate of the test CA for `localhost`; run as the `postgres` user when the tests run as
/// root (PostgreSQL refuses root).
struct PrivatePg {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    port: u16,
    ids: Option<(u32, u32)>,
    child: Option<std::process::Child>,
}

impl PrivatePg {
    fn start(dir: &Path, cert: &Issued) -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .max()
            .expect("a PostgreSQL version with bin/postgres");
        let ids = (unsafe { libc::geteuid() } == 0).then(|| {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("postgres user")
            };
            (id("-u"), id("-g"))
        });
        let data = dir.join("pgdata");
        // The server's key and certificate, owned by the server's user, mode 600.
        let (crt, key) = (dir.join("pg-server.crt"), dir.join("pg-server.key"));
        std::fs::copy(&cert.cert, &crt).unwrap();
        std::fs::copy(&cert.key, &key).unwrap();
        if let Some((uid, gid)) = ids {
            for p in [dir, crt.as_path(), key.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut pg = PrivatePg {
            bin,
            data,
            dir: dir.to_path_buf(),
            port: common::free_port(),
            ids,
            child: None,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.run(true);
        pg
    }

    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Starts the server, with or without TLS, and waits until it accepts connections.
    fn run(&mut self, ssl: bool) {
        let log = std::fs::File::create(self.dir.join(format!("pg-{ssl}.log"))).unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", &format!("ssl={}", if ssl { "on" } else { "off" })])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                self.dir.join("pg-server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                self.dir.join("pg-server.key").display()
            ))
            .args(["-c", "fsync=off"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let plain = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=prefer",
            self.port
        );
        let ready = common::wait_for(Duration::from_secs(20), || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(omsgate::db::connect(&plain))
                .is_ok()
        });
        assert!(
            ready,
            "private PostgreSQL did not start:\n{}",
            std::fs::read_to_string(self.dir.join(format!("pg-{ssl}.log"))).unwrap_or_default()
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            common::send_signal(child.id(), "QUIT");
            let _ = child.wait();
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(ssl in use, error)` of one connection with `url`, asking the server.
fn pg_ssl(url: &str) -> Result<bool, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = omsgate::db::connect(url).await.map_err(|e| e.to_string())?;
            let row = client
                .query_one(
                    "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, bool>(0))
        })
}

#[test]
fn postgres_sslmodes_as_libpq_with_the_pool_and_migrate_over_verify_full() {
    let dir = TestDir::new("tls-pg");
    let ca = Ca::new(dir.path(), "pg");
    let cert = ca.issue("pg", &["localhost"], false);
    let mut pg = PrivatePg::start(dir.path(), &cert);
    let root = ca.pem_path("pg").display().to_string();

    // verify-full with the CA: TLS, verified. verify-ca accepts another name; verify-full not.
    let full = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    assert_eq!(pg_ssl(&full), Ok(true));
    let by_ip = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    let err = pg_ssl(&by_ip).unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    let ca_only = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={root}"),
    );
    assert_eq!(pg_ssl(&ca_only), Ok(true));
    // Without the CA the system roots do not know the server: refused.
    let err = pg_ssl(&pg.url("localhost", "sslmode=verify-full")).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // require and prefer encrypt without verifying (libpq); disable does not encrypt.
    assert_eq!(pg_ssl(&pg.url("localhost", "sslmode=require")), Ok(true));
    assert_eq!(pg_ssl(&pg.url("localhost", "sslmode=prefer")), Ok(true));
    assert_eq!(pg_ssl(&pg.url("localhost", "sslmode=disable")), Ok(false));

    // migrate over verify-full.
    // The cluster is the test's own: the OMS's reference tables go into its `public` schema
    // (over verify-full too), then migrate runs as an operator would.
    let schema = "public".to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = omsgate::db::connect(&full).await.unwrap();
            client
                .batch_execute(omsgate::db::REFERENCE_SCHEMA)
                .await
                .unwrap();
        });
    let out = Command::new(Gateway::bin())
        .args(["migrate", "--database-url", &full, "--schema", &schema])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // migrate and check-config --database read [tls] ca_file from the config file, as the
    // pool does: verify-full without sslrootcert then trusts the private CA; without it the
    // system roots do not know the server.
    let with_ca = |name: &str, ca_file: Option<&Path>| {
        let path = dir.path().join(name);
        let tls = ca_file
            .map(|f| format!("[tls]\nca_file = \"{}\"\n", f.display()))
            .unwrap_or_default();
        std::fs::write(
            &path,
            format!(
                "{tls}[upstream]\nservers = [\"127.0.0.1:9\"]\n[database]\nurl = \"{}\"\n",
                pg.url("localhost", "sslmode=verify-full")
            ),
        )
        .unwrap();
        path
    };
    let trusted = with_ca("trusted.toml", Some(&ca.pem_path("pg")));
    let untrusted = with_ca("untrusted.toml", None);
    let run = |args: &[&str], config: &Path| {
        let out = Command::new(Gateway::bin())
            .args(args)
            .arg(config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["migrate", "status", "--config"], &trusted);
    assert_eq!(
        code,
        Some(0),
        "migrate status trusting [tls] ca_file: {text}"
    );
    let (code, text) = run(&["migrate", "status", "--config"], &untrusted);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    let (code, text) = run(&["check-config", "--database"], &trusted);
    assert_eq!(
        code,
        Some(0),
        "check-config --database trusting [tls] ca_file: {text}"
    );
    let (code, text) = run(&["check-config", "--database"], &untrusted);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");

    // audit-sink's database connection trusts [tls] ca_file too: it gets as far as "started"
    // (the broker is never reached: nothing to consume), and without the CA it stops naming
    // the cause.
    let sink_config = |name: &str, ca_file: Option<&Path>| {
        let path = dir.path().join(name);
        let tls = ca_file
            .map(|f| format!("[tls]\nca_file = \"{}\"\n", f.display()))
            .unwrap_or_default();
        std::fs::write(
            &path,
            format!(
                "{tls}[upstream]\nservers = [\"127.0.0.1:9\"]\n[audit]\nbrokers = \"127.0.0.1:9\"\n\
                 [audit.sink]\ndatabase_url = \"{}\"\n",
                pg.url("localhost", "sslmode=verify-full")
            ),
        )
        .unwrap();
        path
    };
    let mut sink = Command::new(Gateway::bin())
        .args(["audit-sink", "--config"])
        .arg(sink_config("sink-trusted.toml", Some(&ca.pem_path("pg"))))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // audit-sink logs to standard output.
    let output = sink.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(output)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let started = loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) if line.contains("Audit sink started") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(
        started,
        "audit-sink over verify-full with [tls] ca_file:\n{}",
        seen.join("\n")
    );
    let out = Command::new(Gateway::bin())
        .args(["audit-sink", "--config"])
        .arg(sink_config("sink-untrusted.toml", None))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");

    // The pooled query path over verify-full, trusting the CA through [tls] ca_file.
    let file = omsgate::db::DatabaseFile {
        url: pg.url("localhost", "sslmode=verify-full"),
        schema: schema.clone(),
        ..Default::default()
    };
    let mut problems = omsgate::config::Problems::default();
    let mut config = omsgate::db::DatabaseConfig::from_file(&file, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.list());
    config.trust_roots = trust(&ca.pem_path("pg")).extra_roots.clone();
    let answered = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let paths = omsgate::db::query::QueryPaths::new(&config).map_err(|e| e.to_string())?;
            let queries = omsgate::db::queries::reference();
            let params =
                omsgate::routes::Params(vec![("id".into(), uuid::Uuid::nil().to_string())]);
            paths
                .answer(
                    queries.get("invoice_with_lines").expect("reference query"),
                    "tenant-a",
                    None,
                    &params,
                    None,
                )
                .await
                .map(|r| r.map(|r| r.status))
                .map_err(|e| e.to_string())
        });
    // No such invoice: the query ran (over TLS) and answered its configured 404.
    assert_eq!(answered, Ok(Some(404)));

    // sslmode=require against a server without TLS fails with a clear message.
    pg.stop();
    pg.run(false);
    let err = pg_ssl(&pg.url("localhost", "sslmode=require")).unwrap_err();
    assert!(err.contains("server does not support TLS"), "{err}");
    assert_eq!(pg_ssl(&pg.url("localhost", "sslmode=prefer")), Ok(false));
}

#[test]
fn check_config_accepts_verify_modes_and_names_a_bad_sslmode_or_rootcert() {
    let base = "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[database]\n";
    let (code, stderr) = Gateway::check_config(&format!(
        "{base}url = \"postgres://oms@db.example/oms?sslmode=verify-full\"\n"
    ));
    assert_eq!(code, 0, "{stderr}");
    for url in [
        "postgres://oms@db.example/oms?sslmode=verify-everything",
        "postgres://oms@db.example/oms?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
    ] {
        let (code, stderr) = Gateway::check_config(&format!("{base}url = \"{url}\"\n"));
        assert_eq!(code, 64, "{url}: {stderr}");
        assert!(stderr.contains("database.url"), "{url}: {stderr}");
    }
}

#[test]
fn a_listener_key_readable_by_others_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("tls-key-mode");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost"], false);
    std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&leaf, None),
        "",
    ));
    assert!(
        common::wait_for(Duration::from_secs(5), || gw.log().contains("chmod 600")),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        !log.contains("BEGIN PRIVATE KEY"),
        "the key never reaches the log"
    );
    drop(gw);

    std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let quiet = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&leaf, None),
        "",
    ));
    assert!(!quiet.log().contains("chmod 600"), "{}", quiet.log());
}

// === Kafka over TLS ===

/// A private in-memory tansu behind stunnel: tansu listens in plaintext on one port and
/// advertises `localhost:TLS`, where stunnel terminates TLS with a certificate of `ca` (tansu
/// has no TLS of its own). Topics are created on the plaintext port; clients only ever see the
/// TLS port.
struct TlsKafka {
    tansu: std::process::Child,
    stunnel: std::process::Child,
    plain: u16,
    tls: u16,
    dir: PathBuf,
}

impl TlsKafka {
    fn start(ca: &Ca, dir: &Path) -> TlsKafka {
        let cert = ca.issue("kafka", &["localhost"], false);
        let (plain, tls) = (common::free_port(), common::free_port());
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let tansu = Command::new(common::tansu_bin())
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{plain}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{tls}"))
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu starts (is it installed? OMSGATE_TANSU_BIN)");
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {out}\n[kafka]\naccept = 127.0.0.1:{tls}\n\
                 connect = 127.0.0.1:{plain}\ncert = {cert}\nkey = {key}\n",
                out = dir.join("stunnel.log").display(),
                cert = cert.cert.display(),
                key = cert.key.display(),
            ),
        )
        .unwrap();
        let stunnel = Command::new("stunnel4")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stunnel4 is installed (scripts/test installs it)");
        let kafka = TlsKafka {
            tansu,
            stunnel,
            plain,
            tls,
            dir: dir.to_path_buf(),
        };
        for port in [plain, tls] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            assert!(
                common::wait_for(Duration::from_secs(30), || common::port_open(addr)),
                "port {port} of tansu/stunnel did not open:\n{}\n{}",
                std::fs::read_to_string(kafka.dir.join("tansu.log")).unwrap_or_default(),
                std::fs::read_to_string(kafka.dir.join("stunnel.log")).unwrap_or_default()
            );
        }
        kafka
    }

    fn brokers(&self) -> String {
        format!("localhost:{}", self.tls)
    }

    /// Every record of `topic` (one partition), read over TLS trusting `ca_file`, until `n`
    /// arrived and the partition's end was seen, or `timeout` passed.
    fn consume(
        &self,
        topic: &str,
        ca_file: &Path,
        n: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", ca_file.display().to_string())
            .set("group.id", common::unique("tls_reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        let mut at_end = false;
        while std::time::Instant::now() < deadline && !(at_end && out.len() >= n) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    at_end = false;
                    out.push(
                        serde_json::from_slice(m.payload().unwrap_or_default())
                            .unwrap_or(serde_json::Value::Null),
                    );
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end = true,
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
        }
        out
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` GETs through the gateway: each answer's status and `x-request-id`.
fn request_ids(gw: &Gateway, n: usize) -> Vec<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ::reqwest::Client::new();
        let mut out = Vec::new();
        for i in 0..n {
            let resp = client
                .get(gw.url(&format!("/api/v1/things/{i}")))
                .timeout(Duration::from_secs(15))
                .send()
                .await
                .expect("request");
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
            out.push((resp.status().as_u16(), id));
        }
        out
    })
}

fn kafka_tls_config(upstream: &TestUpstream, brokers: &str, topic: &str, tls: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{upstream}"]
[audit]
brokers = "{brokers}"
topic = "{topic}"
spool_dir = "{{dir}}/spool"
compression = "zstd"
delivery_timeout = "2s"
shutdown_timeout = "2s"
kafka_options = {{ "security.protocol" = "ssl" }}
{tls}
"#,
        upstream = upstream.addr,
    )
}

#[test]
fn audit_records_reach_kafka_over_tls_with_the_tls_ca_file_and_zstd() {
    let dir = TestDir::new("tls-kafka");
    let ca = Ca::new(dir.path(), "kafka");
    let kafka = TlsKafka::start(&ca, dir.path());
    let topic = common::unique("audit_tls");
    common::create_topic(&format!("127.0.0.1:{}", kafka.plain), &topic, 1);
    let upstream = TestUpstream::start();
    let config = kafka_tls_config(
        &upstream,
        &kafka.brokers(),
        &topic,
        &format!("[tls]\nca_file = \"{}\"", ca.pem_path("kafka").display()),
    );
    let gw = Gateway::start(&config);
    let mut ids = std::collections::BTreeSet::new();
    for (status, id) in request_ids(&gw, 20) {
        assert_eq!(status, 200);
        ids.insert(id);
    }
    let got = kafka.consume(
        &topic,
        &ca.pem_path("kafka"),
        ids.len(),
        Duration::from_secs(30),
    );
    let seen: std::collections::BTreeSet<String> = got
        .iter()
        .filter_map(|r| r["request_id"].as_str().map(String::from))
        .collect();
    assert_eq!(
        seen,
        ids,
        "every request's record arrives over TLS; gateway log:\n{}",
        common::tail(&gw.log(), 30)
    );
    assert_eq!(
        gw.metric_value("omsgate_audit_records_total", &[("outcome", "delivered")]),
        Some(ids.len() as f64)
    );
}

#[test]
fn kafka_over_tls_without_the_private_ca_delivers_nothing_and_names_the_cause() {
    let dir = TestDir::new("tls-kafka-untrusted");
    let ca = Ca::new(dir.path(), "kafka");
    let kafka = TlsKafka::start(&ca, dir.path());
    let topic = common::unique("audit_tls_untrusted");
    common::create_topic(&format!("127.0.0.1:{}", kafka.plain), &topic, 1);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&kafka_tls_config(&upstream, &kafka.brokers(), &topic, ""));
    for (status, _) in request_ids(&gw, 5) {
        assert_eq!(status, 200, "audit never fails a request");
    }
    assert!(
        common::wait_for(Duration::from_secs(20), || {
            gw.log().contains("certificate verify failed")
        }),
        "the log names the TLS failure:\n{}",
        common::tail(&gw.log(), 30)
    );
    assert_eq!(
        gw.metric_value("omsgate_audit_records_total", &[("outcome", "delivered")])
            .unwrap_or(0.0),
        0.0
    );
    assert!(
        kafka
            .consume(&topic, &ca.pem_path("kafka"), 1, Duration::from_secs(3))
            .is_empty(),
        "nothing reached the topic"
    );
}

/// Sends `n` HTTP/1.1 requests on one TLS 1.3 keepalive connection, pausing `pause` before each
/// request after the first (the connection idles at the gateway meanwhile); the status line
/// of each answer.
fn tls_keepalive_requests(
    addr: SocketAddr,
    ca: &Path,
    n: usize,
    pause: Duration,
) -> Result<Vec<String>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut tls = tls_connect(addr, ca, &[&rustls::version::TLS13], &[b"http/1.1"]).await?;
        let mut statuses = Vec::new();
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            let request = format!("GET /echo?n={i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            tls.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("request {i}: {e}"))?;
            // One answer: the header, then Content-Length bytes of body.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |got: &[u8]| -> Option<usize> {
                let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())?;
                (got.len() >= end + length).then_some(end)
            };
            while complete(&got).is_none() {
                let k = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                    .await
                    .map_err(|_| format!("answer {i} timed out"))?
                    .map_err(|e| format!("answer {i}: {e}"))?;
                if k == 0 {
                    return Err(format!("connection closed before answer {i} was complete"));
                }
                got.extend_from_slice(&buf[..k]);
            }
            let text = String::from_utf8_lossy(&got);
            statuses.push(text.lines().next().unwrap_or_default().to_string());
        }
        Ok(statuses)
    })
}

#[test]
fn a_tls_keepalive_connection_is_served_after_idle_pauses() {
    // Between requests an idle TLS connection waits in Pingora's connection loop, outside the
    // request's state (patch 0004: the rustls stream tells when it has data); every request
    // after a pause must still be read and answered on the same connection.
    let dir = TestDir::new("tls-keepalive");
    let ca = Ca::new(dir.path(), "gw");
    let leaf = ca.issue("gw", &["localhost", "127.0.0.1"], false);
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&gateway_config(
        &upstream.addr.to_string(),
        &server_tls(&leaf, None),
        "",
    ));
    let statuses = tls_keepalive_requests(
        gw.listen_addr(),
        &ca.pem_path("gw"),
        3,
        Duration::from_millis(300),
    )
    .expect("three requests on one TLS keepalive connection");
    assert_eq!(statuses, vec!["HTTP/1.1 200 OK"; 3]);
}
