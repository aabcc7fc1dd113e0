//! TLS settings: what the checks trust (system roots + service-account CA + extra CA, or
//! nothing with `KUBENURSE_INSECURE`) and the certificate the HTTPS listener presents.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{variable}: cannot use {path}: {reason}")]
    File {
        /// The variable that named the file.
        variable: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. key does not match certificate).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs the one crypto provider of the whole process (ring, as kube uses).
pub fn install_crypto_provider() {
    // Fails only if already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM document; none at all is an error.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in file".into());
    }
    Ok(certs)
}

fn read_certs(variable: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File { variable, path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    certs_from_pem(&pem).map_err(err)
}

/// Client TLS for the checks: system roots, the service-account `ca.crt` when present (absent
/// outside a pod) and the `KUBENURSE_EXTRA_CA` certificates; nothing with `insecure`.
pub fn client_config(
    insecure: bool,
    sa_ca: &Path,
    extra_ca: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider()))).with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A bad system certificate must not disable the rest.
            let _ = roots.add(cert);
        }
        if sa_ca.exists() {
            for cert in read_certs("KUBENURSE_SERVICE_ACCOUNT_DIR", sa_ca)? {
                roots.add(cert).map_err(TlsError::Rustls)?;
            }
        }
        for cert in extra_ca {
            roots.add(cert.clone()).map_err(TlsError::Rustls)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Server TLS for the HTTPS listener: a certificate chain and its PEM private key; the error
/// says why they cannot serve (bad PEM, key not matching the certificate).
pub fn server_config(chain: Vec<CertificateDer<'static>>, key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("no usable PEM private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `KUBENURSE_INSECURE=true`: signatures are still checked, the chain and name are not.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
