//! Client certificates: the TLS layer has already checked the chain against `--client-ca`;
//! here the leaf must be valid for the hello's node as a DNS name, so one node's certificate
//! cannot speak for another.

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

use super::AuthFailure;

/// Whether the peer's leaf certificate names `node` among its DNS SANs.
pub fn check_client_cert(chain: Option<&[CertificateDer<'static>]>, node: &str) -> Result<(), AuthFailure> {
    let leaf = chain.and_then(<[_]>::first).ok_or(AuthFailure::BadClientCert)?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| AuthFailure::BadClientCert)?;
    let name = DnsName::try_from(node.to_string()).map_err(|_| AuthFailure::NodeMismatch)?;
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name)).map_err(|_| AuthFailure::NodeMismatch)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn the_leaf_must_name_the_node() {
        let ca = kubenurse_testkit::pki::TestCa::new("agents").unwrap();
        let leaf = ca.leaf(&["node-01"]).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let chain = vec![der];
        assert_eq!(check_client_cert(Some(&chain), "node-01"), Ok(()));
        assert_eq!(check_client_cert(Some(&chain), "node-02"), Err(AuthFailure::NodeMismatch));
        assert_eq!(check_client_cert(Some(&chain), "not a name"), Err(AuthFailure::NodeMismatch));
        assert_eq!(check_client_cert(None, "node-01"), Err(AuthFailure::BadClientCert));
        assert_eq!(check_client_cert(Some(&[]), "node-01"), Err(AuthFailure::BadClientCert));
        let garbage = vec![CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0x00])];
        assert_eq!(check_client_cert(Some(&garbage), "node-01"), Err(AuthFailure::BadClientCert));
    }
}
