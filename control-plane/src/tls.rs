//! TLS of the control plane: the process-wide rustls crypto provider, and the server side
//! of the listeners Envoys connect to (the control plane's certificate, and client
//! certificates verified against the operator's CA: only this control plane's Envoys get in).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Installs the process-wide rustls crypto provider (ring) once; idempotent. reqwest's and
/// rmcp's client builders panic without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by a setting cannot be read or holds nothing usable.
    #[error("{field}: {reason}")]
    FieldInvalid {
        /// The setting (`tls_cert`, `tls_key`, `tls_client_ca`).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TlsError::FieldInvalid { .. } => "field_invalid",
            TlsError::Config(_) => "config",
        }
    }
}

fn invalid(field: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::FieldInvalid {
        field,
        reason: format!("{}: {reason}", path.display()),
    }
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(field, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, path, e))?;
    if certs.is_empty() {
        return Err(invalid(field, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The server configuration of a listener Envoys connect to (the files of
/// `crate::config::ServerTls`): `cert` (a PEM chain) and `key` as its identity, and a
/// client certificate chaining to `client_ca` required of every client (a client without
/// one, or with one from another CA, fails the handshake). `alpn` lists the application
/// protocols offered (`http/1.1` for the relay).
///
/// Paths rather than the settings type, so this module depends on nothing of the crate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    alpn: &[&str],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("tls_cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("tls_key", key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates("tls_client_ca", client_ca)? {
        roots
            .add(ca)
            .map_err(|e| invalid("tls_client_ca", client_ca, e))?;
    }
    // The provider is named here rather than taken from the process default, so building
    // a server configuration does not depend on who installed what first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid("tls_client_ca", client_ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        for (name, cert, field) in [
            ("missing cert", &missing, "tls_cert"),
            ("empty cert", &empty, "tls_cert"),
        ] {
            match server_config(cert, &empty, &empty, &["http/1.1"]) {
                Err(TlsError::FieldInvalid { field: f, reason }) => {
                    assert_eq!(f, field, "{name}: {reason}");
                    assert!(reason.contains(".pem"), "{name}: {reason}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
