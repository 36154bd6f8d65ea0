//! `[tls]`: the one trust setting every outgoing TLS client shares.
//!
//! omsgate speaks TLS with rustls only (the same stack Pingora's `rustls` feature uses, with the
//! `ring` provider that `jsonwebtoken` already brings): no OpenSSL in the gateway's own links.
//! Every outgoing TLS link (the OMS upstream, Redis, PostgreSQL, JWKS fetches) trusts the system
//! roots plus the private CA certificates of `[tls] ca_file`, and verifies the server's
//! certificate and name. A link that needs more (a client certificate, its own CA) says so in its
//! own section; this is the default they start from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[tls]` as written in the file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsFile {
    /// PEM file of extra CA certificates (a private CA) trusted by every outgoing TLS client,
    /// next to the system roots. Default empty (system roots only).
    pub ca_file: String,
}

/// The validated `[tls]`.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The extra CA file, if any.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file` (validated at config load, so a bad file is a
    /// config problem, not a failure on the first connection).
    pub extra_roots: Arc<Vec<CertificateDer<'static>>>,
    /// The trust store in the form Pingora's connector takes per peer (the system roots plus
    /// `ca_file`), built once when `ca_file` is set; `None` leaves Pingora's own store (the
    /// system roots) in place.
    pub upstream_ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The client certificate a Redis link presents (`cache.redis` or `rate_limit.redis`
    /// `cert`/`key`): set on that concern's own copy of the trust.
    pub redis_client: Option<RedisClientCert>,
}

/// A client certificate for Redis: the PEM files as the redis crate takes them, checked when
/// the config loads ([`ClientCert::load`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisClientCert {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for RedisClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClientCert").finish_non_exhaustive()
    }
}

impl RedisClientCert {
    /// Reads and checks `cert` and `key`; an error names `cert` or `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<RedisClientCert, (&'static str, String)> {
        ClientCert::load(cert, key)?;
        let read = |field: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| (field, format!("cannot read {}: {e}", path.display())))
        };
        Ok(RedisClientCert {
            cert_pem: read("cert", cert)?,
            key_pem: read("key", key)?,
        })
    }
}

impl TlsConfig {
    /// Validates `[tls]`; problems name their key.
    pub fn from_file(file: &TlsFile, p: &mut Problems) -> TlsConfig {
        if file.ca_file.is_empty() {
            return TlsConfig::default();
        }
        let path = PathBuf::from(&file.ca_file);
        match read_certificates(&path) {
            Ok(certs) => {
                let mut tls = TlsConfig {
                    ca_file: Some(path),
                    extra_roots: Arc::new(certs),
                    upstream_ca: None,
                    redis_client: None,
                };
                tls.upstream_ca = Some(tls.pingora_ca());
                tls
            }
            Err(e) => {
                p.push("tls.ca_file", e);
                TlsConfig::default()
            }
        }
    }

    /// The trust store of an outgoing TLS client: the system roots plus `ca_file`.
    ///
    /// System roots that cannot be loaded are logged and skipped: a machine without a CA bundle
    /// can still reach servers signed by the configured private CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        match native {
            Ok(certs) => {
                let (_, ignored) = roots.add_parsable_certificates(certs);
                if ignored > 0 {
                    tracing::debug!(ignored, "system CA certificates that rustls cannot use");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the system CA certificates"),
        }
        for cert in self.extra_roots.iter() {
            // Validated at load: a certificate rustls rejected never got here.
            let _ = roots.add(cert.clone());
        }
        roots
    }

    /// A Redis client for `url`. A `rediss://` URL connects with TLS (rustls), verifying the
    /// server's certificate and host name against the system roots plus `ca_file`; there is
    /// no way to turn verification off (the `#insecure` fragment is refused on connect).
    pub fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        install_provider();
        match self.redis_certificates() {
            Some(certs) if url.starts_with("rediss://") => {
                redis::Client::build_with_tls(url, certs)
            }
            _ => redis::Client::open(url),
        }
    }

    /// The trust store handed to the redis crate for `rediss://` connections (standalone,
    /// cluster nodes, sentinels and the masters they name): `None` without `ca_file`, when the
    /// crate's own store (the system roots) is the same thing.
    pub fn redis_certificates(&self) -> Option<redis::TlsCertificates> {
        install_provider();
        let client_tls = self.redis_client.as_ref().map(|c| redis::ClientTlsConfig {
            client_cert: c.cert_pem.clone(),
            client_key: c.key_pem.clone(),
        });
        if self.extra_roots.is_empty() {
            // The crate's own store (the system roots) is the trust store then.
            return client_tls.map(|client_tls| redis::TlsCertificates {
                client_tls: Some(client_tls),
                root_cert: None,
            });
        }
        let mut pem = String::new();
        let mut add = |der: &[u8]| {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.encode(der);
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in text.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        };
        for cert in self.extra_roots.iter() {
            add(cert);
        }
        if let Ok(native) = rustls_native_certs::load_native_certs() {
            // Only those rustls accepts: the redis crate refuses the whole store otherwise.
            let mut probe = RootCertStore::empty();
            for cert in native {
                if probe.add(cert.clone()).is_ok() {
                    add(&cert);
                }
            }
        }
        Some(redis::TlsCertificates {
            client_tls,
            root_cert: Some(pem.into_bytes()),
        })
    }

    /// [`Self::root_store`]'s certificates as Pingora's per-peer CA list. Certificates that
    /// cannot be parsed are left out (rustls could not use them either).
    fn pingora_ca(&self) -> Arc<pingora::protocols::tls::CaType> {
        use pingora::utils::tls::WrappedX509;
        let mut ders: Vec<Vec<u8>> = self.extra_roots.iter().map(|c| c.to_vec()).collect();
        if let Ok(native) = rustls_native_certs::load_native_certs() {
            ders.extend(native.into_iter().map(|c| c.to_vec()));
        }
        let list: Vec<WrappedX509> = ders
            .into_iter()
            .filter_map(|der| {
                WrappedX509::try_new(der, |raw| {
                    x509_parser::parse_x509_certificate(raw).map(|(_, cert)| cert)
                })
                .ok()
            })
            .collect();
        Arc::from(list)
    }

    /// A rustls client configuration verifying servers against [`Self::root_store`], with the
    /// given ALPN protocols (e.g. `[b"http/1.1".to_vec()]`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(self.root_store())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Makes ring the process's rustls provider, for libraries that build their TLS configuration
/// from the process default (the redis crate). Pingora does the same; calling it again is a
/// no-op.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file; a file with none, or one rustls rejects, is an error
/// worded for `check-config`.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_chain(path)?;
    let mut probe = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        probe.add(cert.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

// === The client listener ===

/// `[server.tls]` as written in the file: the public listener speaks TLS when `cert` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerTlsFile {
    /// PEM certificate chain of the listener (leaf first, intermediates after). Default `""`
    /// (plaintext listener).
    pub cert: String,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1). Default `""`.
    pub key: String,
    /// PEM CA certificates that client certificates must chain to: when set, a client without a
    /// valid certificate is refused during the handshake (mTLS). Default `""` (no client
    /// certificates asked for).
    pub client_ca: String,
}

/// The validated `[server.tls]`: file paths and what was read from them.
#[derive(Clone)]
pub struct ListenerTls {
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    /// The certificate and key, read and matched at config load.
    pub certified: Arc<CertifiedKey>,
    /// The mTLS CA file, if any.
    pub client_ca: Option<PathBuf>,
    /// The certificates of `client_ca`.
    pub client_roots: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

impl ListenerTls {
    /// Validates `[server.tls]`: `None` for a plaintext listener; problems name their key.
    pub fn from_file(file: &ListenerTlsFile, p: &mut Problems) -> Option<ListenerTls> {
        ListenerTls::from_file_at(file, "server.tls", p)
    }

    /// [`from_file`](Self::from_file) for the table at `key` (e.g. `server.listeners[0].tls`).
    pub fn from_file_at(
        file: &ListenerTlsFile,
        key: &str,
        p: &mut Problems,
    ) -> Option<ListenerTls> {
        if file.cert.is_empty() && file.key.is_empty() {
            if !file.client_ca.is_empty() {
                p.push(
                    format!("{key}.client_ca"),
                    format!("needs {key}.cert and {key}.key: client certificates are only asked for on a TLS listener"),
                );
            }
            return None;
        }
        if file.cert.is_empty() || file.key.is_empty() {
            let missing = if file.cert.is_empty() { "cert" } else { "key" };
            p.push(
                format!("{key}.{missing}"),
                format!("{key} needs both cert and key (PEM files)"),
            );
            return None;
        }
        let prefix = key;
        let (cert, key) = (PathBuf::from(&file.cert), PathBuf::from(&file.key));
        let certified = match load_certified_key(&cert, &key) {
            Ok(c) => Arc::new(c),
            Err((k, e)) => {
                p.push(format!("{prefix}.{k}"), e);
                return None;
            }
        };
        let (client_ca, client_roots) = if file.client_ca.is_empty() {
            (None, Vec::new())
        } else {
            let path = PathBuf::from(&file.client_ca);
            match read_certificates(&path) {
                Ok(certs) => (Some(path), certs),
                Err(e) => {
                    p.push(format!("{prefix}.client_ca"), e);
                    return None;
                }
            }
        };
        Some(ListenerTls {
            cert,
            key,
            certified,
            client_ca,
            client_roots: Arc::new(client_roots),
        })
    }

    /// Pingora's TLS settings for the listener: the certificate served by `resolver` (which a
    /// reload updates), ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3, and client certificates
    /// verified against `client_ca` when it is set.
    pub fn settings(
        &self,
        resolver: Arc<ListenerCert>,
    ) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(resolver);
        settings.enable_h2();
        if !self.client_roots.is_empty() {
            let mut roots = RootCertStore::empty();
            for cert in self.client_roots.iter() {
                let _ = roots.add(cert.clone());
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|e| {
                pingora::Error::because(
                    pingora::ErrorType::InternalError,
                    "server.tls.client_ca",
                    e,
                )
            })?;
            settings.set_client_cert_verifier(verifier);
        }
        Ok(settings)
    }

    /// A warning when the key file can be read by its group or by everyone.
    pub fn key_permission_warning(&self) -> Option<String> {
        key_permission_warning(&self.key)
    }
}

/// The listener's certificate, swapped by a reload: handshakes after the swap get the new one,
/// connections already open keep theirs.
#[derive(Debug)]
pub struct ListenerCert {
    current: arc_swap::ArcSwap<CertifiedKey>,
}

impl ListenerCert {
    /// Serves `certified` until the next [`Self::replace`].
    pub fn new(certified: Arc<CertifiedKey>) -> Arc<ListenerCert> {
        Arc::new(ListenerCert {
            current: arc_swap::ArcSwap::new(certified),
        })
    }

    /// Serves `certified` to every handshake from now on.
    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        self.current.store(certified);
    }
}

impl rustls::server::ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads a certificate chain and its private key and checks that they belong together; an
/// error names the key (`cert` or `key`) it is about.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = read_chain(cert).map_err(|e| ("cert", e))?;
    let private = read_private_key(key)?;
    pair(chain, private, cert, key)
}

/// The private key of a PEM key file; an error is about `key`.
fn read_private_key(
    key: &Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, (&'static str, String)> {
    let pem =
        std::fs::read(key).map_err(|e| ("key", format!("cannot read {}: {e}", key.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| {
            (
                "key",
                format!("{} is not a PEM key file: {e}", key.display()),
            )
        })?
        .ok_or_else(|| {
            (
                "key",
                format!(
                    "{} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")",
                    key.display()
                ),
            )
        })
}

/// `chain` and `private` as one signing key, checked to belong together (files named in the
/// error).
fn pair(
    chain: Vec<CertificateDer<'static>>,
    private: rustls::pki_types::PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, (&'static str, String)> {
    CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).map_err(|e| {
        (
            "key",
            format!(
                "{} cannot be used with the certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })
}

/// A warning when `key` (a private key file) can be read by its group or by everyone.
fn key_permission_warning(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by its group or others (mode {:o}); chmod 600 it",
            key.display(),
            mode & 0o777
        )
    })
}

/// A client certificate that omsgate presents to a server asking for one (mutual TLS), read and
/// checked (certificate and key belong together) when the config loads.
#[derive(Clone)]
pub struct ClientCert {
    /// The chain, leaf first, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key, DER (PKCS#8, SEC1 or PKCS#1).
    key: Vec<u8>,
    /// The key file, for the permission warning.
    pub key_path: PathBuf,
    /// The same in the form Pingora's connector takes, parsed once.
    pingora: Arc<pingora::utils::tls::CertKey>,
}

/// Same certificates and key (a reload that re-reads unchanged files changes nothing).
impl PartialEq for ClientCert {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.key == other.key
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("certificates", &self.chain.len())
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Reads `cert` (PEM chain) and `key` (PEM private key); an error names `cert` or `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientCert, (&'static str, String)> {
        let chain = read_chain(cert).map_err(|e| ("cert", e))?;
        let private = read_private_key(key)?;
        let key_der = private.secret_der().to_vec();
        // Only the check that certificate and key belong together; the signing key is Pingora's.
        pair(chain.clone(), private, cert, key)?;
        let pingora = Arc::new(pingora::utils::tls::CertKey::new(
            chain.iter().map(|c| c.to_vec()).collect(),
            key_der.clone(),
        ));
        Ok(ClientCert {
            chain,
            key: key_der,
            key_path: key.to_path_buf(),
            pingora,
        })
    }

    /// The form Pingora's connector takes (`HttpPeer::client_cert_key`).
    pub fn pingora(&self) -> Arc<pingora::utils::tls::CertKey> {
        self.pingora.clone()
    }

    /// A warning when the key file can be read by its group or by everyone.
    pub fn key_permission_warning(&self) -> Option<String> {
        key_permission_warning(&self.key_path)
    }
}

/// Every certificate of a PEM chain file (no CA check: a leaf is not a CA).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_ca_file_setting_trusts_the_system_roots_only() {
        let mut p = Problems::default();
        let tls = TlsConfig::from_file(&TlsFile::default(), &mut p);
        assert!(p.is_empty());
        assert!(tls.ca_file.is_none());
        assert!(tls.extra_roots.is_empty());
    }

    #[test]
    fn a_missing_or_non_pem_ca_file_is_a_problem_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("omsgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        for path in [dir.join("absent.pem"), junk] {
            let mut p = Problems::default();
            TlsConfig::from_file(
                &TlsFile {
                    ca_file: path.display().to_string(),
                },
                &mut p,
            );
            assert_eq!(p.list().len(), 1, "{path:?}");
            assert_eq!(p.list()[0].key, "tls.ca_file");
        }
    }
}
