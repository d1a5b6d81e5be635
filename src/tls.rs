//! rustls set-up shared by the QRS client, the callback listener and the simulator.
//!
//! Two crypto providers end up in the build (ring through reqwest, aws-lc-rs through the AWS
//! SDK), so rustls cannot pick one by itself: [`init`] installs ring as the process default.

use std::path::Path;
use std::sync::Once;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Installs the process-wide rustls crypto provider. Safe to call any number of times.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is equally fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads every certificate in a PEM file. The error names the file and what is wrong with it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#1, PKCS#8 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{} holds no usable private key ({e}); export the certificates from the QMC with \"Include secret key\"",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        assert!(load_certs(&p).unwrap_err().contains("client.pem"));
        assert!(load_key(&p).unwrap_err().contains("client.pem"));
        assert!(
            load_certs(&dir.path().join("nope.pem"))
                .unwrap_err()
                .contains("nope.pem")
        );
    }
}
