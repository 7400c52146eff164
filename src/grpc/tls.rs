//! Mutual TLS with rustls: the server configuration (client certificates are
//! mandatory and must chain to the configured CA), reload on SIGHUP, and the
//! subject names a client certificate carries.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsSection;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{key}: cannot read {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("tls.{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File {
        key,
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Builds the server configuration from the files named in `tls`.
pub fn server_config(tls: &TlsSection) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs("cert", &tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::File {
        key: "key",
        path: tls.key.display().to_string(),
        message: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client_ca", &tls.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Invalid {
            key: "client_ca",
            message: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Invalid {
            key: "client_ca",
            message: e.to_string(),
        })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            key: "cert",
            message: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            key: "key",
            message: e.to_string(),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The server configuration new connections use; replaced on reload while
/// established connections keep the session they have.
pub struct ReloadableTls {
    section: TlsSection,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    pub fn new(section: TlsSection) -> Result<Self, TlsError> {
        let cfg = server_config(&section)?;
        Ok(Self {
            section,
            current: RwLock::new(cfg),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the certificate, key and CA files. On error the previous
    /// configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = server_config(&self.section)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = cfg;
        Ok(())
    }
}

/// Names a client certificate can be matched by: SAN URIs, SAN DNS names and
/// the subject common name.
pub fn subject_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => names.push((*u).to_owned()),
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    for cn in x509.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_owned());
        }
    }
    names
}
