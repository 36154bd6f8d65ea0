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
}

impl TlsConfig {
    /// Validates `[tls]`; problems name their key.
    pub fn from_file(file: &TlsFile, p: &mut Problems) -> TlsConfig {
        if file.ca_file.is_empty() {
            return TlsConfig::default();
        }
        let path = PathBuf::from(&file.ca_file);
        match read_certificates(&path) {
            Ok(certs) => TlsConfig {
                ca_file: Some(path),
                extra_roots: Arc::new(certs),
            },
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

/// Reads every certificate of a PEM file; a file with none, or one rustls rejects, is an error
/// worded for `check-config`.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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
