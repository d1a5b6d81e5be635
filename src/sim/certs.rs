//! Certificates of one simulated site: its CA, the server certificate and the client certificate
//! in the layout the QMC exports, and the rustls server configuration requiring client
//! certificates signed by that CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A site's CA, server and client certificates (PEM).
pub struct SiteCerts {
    pub root_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
    pub client_pem: String,
    pub client_key_pem: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

/// A client certificate and key (PEM) signed by a new CA named `ca_name`; returns
/// `(ca_pem, client_pem, client_key_pem)`. Tests use it to build a certificate from another CA.
pub fn issue_ca_and_client(ca_name: &str) -> anyhow::Result<(String, String, String)> {
    let c = generate(ca_name, &["localhost".to_string()])?;
    Ok((c.root_pem, c.client_pem, c.client_key_pem))
}

/// New certificates for a site. `server_names` are the DNS names or IP addresses of the server
/// certificate.
pub fn generate(ca_name: &str, server_names: &[String]) -> anyhow::Result<SiteCerts> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = dn(&format!("{ca_name}-CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(server_names.to_vec())
        .context("a server name is not a valid DNS name or IP address")?;
    server.distinguished_name = dn(server_names.first().map_or("localhost", String::as_str));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name = dn("QlikClient");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    Ok(SiteCerts {
        root_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    })
}

impl SiteCerts {
    /// Writes `client.pem`, `client_key.pem`, `root.pem` (the QMC export layout) and
    /// `server.pem`, `server_key.pem` into `folder`.
    pub fn write(&self, folder: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        for (name, text) in [
            ("client.pem", &self.client_pem),
            ("client_key.pem", &self.client_key_pem),
            ("root.pem", &self.root_pem),
            ("server.pem", &self.server_pem),
            ("server_key.pem", &self.server_key_pem),
        ] {
            let p = folder.join(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
        Ok(())
    }

    /// The TLS configuration of the site's listener: its server certificate, and client
    /// certificates signed by its CA (required in the handshake, or optional when
    /// `require_in_handshake` is false and the HTTP layer answers 403 instead).
    pub fn server_config(
        &self,
        require_in_handshake: bool,
    ) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.root_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if require_in_handshake {
            builder.build()?
        } else {
            builder.allow_unauthenticated().build()?
        };
        let chain = CertificateDer::pem_slice_iter(self.server_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}
