//! The rustls client configuration for one site: client certificate from the QMC export,
//! server verified against `root.pem`, optionally as another name (`server_name`).

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::SiteSettings;

/// How the server certificate of a site is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Verified against `root.pem` for the host name.
    Verified,
    /// Verified against `root.pem` for the configured `server_name`.
    VerifiedAs(String),
    /// Not verified at all (`verify_tls = false`).
    NotVerified,
}

impl TlsMode {
    /// The mode a site's settings ask for.
    pub fn of(site: &SiteSettings) -> TlsMode {
        if !site.verify_tls {
            TlsMode::NotVerified
        } else {
            match &site.server_name {
                Some(n) if !n.trim().is_empty() => TlsMode::VerifiedAs(n.trim().to_string()),
                _ => TlsMode::Verified,
            }
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsMode::Verified => f.write_str("verified"),
            TlsMode::VerifiedAs(n) => write!(f, "verified as {n}"),
            TlsMode::NotVerified => f.write_str("NOT verified"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for a site. Errors name the file and the fix.
pub fn client_config(site: &SiteSettings) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let certs = crate::tls::load_certs(&site.client_cert_path())?;
    let key = crate::tls::load_key(&site.client_key_path())?;

    let verifier: Arc<dyn ServerCertVerifier> = match TlsMode::of(site) {
        TlsMode::NotVerified => Arc::new(AcceptAny {
            algorithms: provider.signature_verification_algorithms,
        }),
        mode => {
            let root_path = site.root_cert_path();
            let mut roots = RootCertStore::empty();
            for c in crate::tls::load_certs(&root_path)? {
                roots.add(c).map_err(|e| {
                    format!(
                        "{} holds a certificate rustls cannot use as a root: {e}",
                        root_path.display()
                    )
                })?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot use {}: {e}", root_path.display()))?;
            match mode {
                TlsMode::VerifiedAs(name) => {
                    let name = ServerName::try_from(name.clone()).map_err(|e| {
                        format!("server_name \"{name}\" is not a host name or IP address: {e}")
                    })?;
                    Arc::new(VerifyAs {
                        inner: webpki,
                        name,
                    })
                }
                _ => webpki,
            }
        }
    };

    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {} do not form a usable client identity: {e}",
                site.client_cert_path().display(),
                site.client_key_path().display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies the server certificate with WebPKI, but for a configured name instead of the
/// host connected to (Qlik often issues the certificate to the short host name).
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `verify_tls = false`: any server certificate is accepted (the handshake signature is
/// still checked, so the connection is encrypted, just not authenticated).
#[derive(Debug)]
struct AcceptAny {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
