//! PostgreSQL over TLS: the URL's `sslmode` and `sslrootcert` as libpq understands them, with
//! rustls (tokio-postgres-rustls) as the connector.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (tokio-postgres's default) | when the server offers it | not verified (as libpq) |
//! | `require` | always | not verified (as libpq), unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | chains to the trust store |
//! | `verify-full` | always | chains to the trust store and is valid for the host name |
//!
//! The trust store is `sslrootcert` alone when the URL names one (as libpq), else the system
//! roots plus `[tls] ca_file`. tokio-postgres itself only knows `disable`/`prefer`/`require`:
//! the URL it is given has `verify-*` turned into `require` and `sslrootcert` removed, and the
//! verification is done by the rustls configuration built here.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::TlsConfig;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`prefer`, `require` without `sslrootcert`).
    None,
    /// Chain only (`verify-ca`, `require` with `sslrootcert`).
    Chain,
    /// Chain and host name (`verify-full`).
    Full,
}

/// A connection URL prepared for tokio-postgres, with its TLS connector.
#[derive(Clone)]
pub struct PgTls {
    /// The URL tokio-postgres parses (`verify-*` → `require`, no `sslrootcert`).
    pub url: String,
    /// The connector (used only when the mode asks for TLS).
    pub connector: MakeRustlsConnect,
    /// The verification the URL asked for.
    pub verify: Verify,
}

/// Reads `sslmode` and `sslrootcert` from a `postgres://` URL (a key=value connection string is
/// passed through unchanged: tokio-postgres handles its `disable`/`prefer`/`require`).
pub fn prepare(url: &str, trust: &TlsConfig) -> Result<PgTls, String> {
    let mut mode = String::new();
    let mut rootcert = None;
    let mut out = url.to_string();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Some((base, query)) = url.split_once('?') {
            let mut kept = Vec::new();
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("sslmode", v)) => {
                        mode = v.to_string();
                        let v = if v.starts_with("verify-") {
                            "require"
                        } else {
                            v
                        };
                        kept.push(format!("sslmode={v}"));
                    }
                    Some(("sslrootcert", v)) => rootcert = Some(percent_decode(v)),
                    _ => kept.push(pair.to_string()),
                }
            }
            out = if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
        }
    }
    let verify = match mode.as_str() {
        "verify-full" => Verify::Full,
        "verify-ca" => Verify::Chain,
        "" | "disable" | "prefer" | "require" if rootcert.is_some() => Verify::Chain,
        "" | "disable" | "prefer" | "require" => Verify::None,
        other => {
            return Err(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    let roots = match &rootcert {
        Some(path) => {
            let certs = crate::tls::read_certificates(std::path::Path::new(path))
                .map_err(|e| format!("sslrootcert: {e}"))?;
            let mut store = rustls::RootCertStore::empty();
            for cert in certs {
                let _ = store.add(cert);
            }
            store
        }
        None => trust.root_store(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain | Verify::None => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build();
            let verifier = Lenient {
                inner: match (verify, inner) {
                    (Verify::Chain, Ok(v)) => Some(v),
                    (Verify::Chain, Err(e)) => return Err(format!("trust store: {e}")),
                    _ => None,
                },
                provider,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    Ok(PgTls {
        url: out,
        connector: MakeRustlsConnect::new(config),
        verify,
    })
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `verify-ca` (a chain check without the host name, `inner` set) or no check at all (`prefer`
/// and `require` as libpq has them). Handshake signatures are always checked.
#[derive(Debug)]
struct Lenient {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_for_tokio_postgres_and_rootcert_is_removed() {
        let trust = TlsConfig::default();
        let p = prepare(
            "postgres://u@db:5432/oms?application_name=x&sslmode=verify-full",
            &trust,
        )
        .unwrap();
        assert_eq!(
            p.url,
            "postgres://u@db:5432/oms?application_name=x&sslmode=require"
        );
        assert_eq!(p.verify, Verify::Full);
        let p = prepare("postgres://u@db/oms?sslmode=require", &trust).unwrap();
        assert_eq!(p.verify, Verify::None);
        let p = prepare("postgres://u@db/oms", &trust).unwrap();
        assert_eq!(
            (p.url.as_str(), p.verify),
            ("postgres://u@db/oms", Verify::None)
        );
        assert!(prepare("postgres://u@db/oms?sslmode=allow-ish", &trust).is_err());
        let err = prepare(
            "postgres://u@db/oms?sslmode=verify-ca&sslrootcert=/nonexistent",
            &trust,
        )
        .err()
        .unwrap();
        assert!(err.starts_with("sslrootcert:"), "{err}");
    }
}
