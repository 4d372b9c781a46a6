//! Certificates for one database: a certificate authority of its own, and ECDSA P-256 server
//! certificates (IP and DNS names) for its members' PostgreSQL and Patroni REST API.
//! Everything goes in and out as PEM strings; where they are stored is the caller's choice.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use std::fmt;
use time::{Duration, OffsetDateTime};

/// How long a database CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::days(825);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("a server certificate needs at least one IP address or DNS name")]
    NoNames,
}

pub type Result<T> = std::result::Result<T, PkiError>;

/// A certificate and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// The certificate authority of one database: it signs that database's certificates only.
#[derive(Clone, Debug)]
pub struct DatabaseCa {
    pem: CertifiedKey,
}

impl DatabaseCa {
    /// A new self-signed CA named after the database (`pgplane CA <name>`).
    pub fn generate(name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::OrganizationName, "pgplane");
        params.distinguished_name.push(DnType::CommonName, format!("pgplane CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(DatabaseCa { pem: CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() } })
    }

    /// A CA stored earlier; fails unless both PEMs parse and the key is usable for signing.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        CertificateParams::from_ca_cert_pem(cert_pem)?;
        KeyPair::from_pem(key_pem)?;
        Ok(DatabaseCa { pem: CertifiedKey { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() } })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pem.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.pem.key_pem
    }

    /// A server certificate for `names`: each is an IP address SAN when it parses as one, else a
    /// DNS name SAN. The first name is also the subject's common name.
    pub fn issue_server(&self, names: &[&str]) -> Result<CertifiedKey> {
        self.issue(names, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A certificate for `names` that serves as server and as client: an etcd member's peer
    /// certificate (members dial each other with it and check each other's against the CA).
    pub fn issue_peer(&self, names: &[&str]) -> Result<CertifiedKey> {
        self.issue(names, vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(&self, names: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> Result<CertifiedKey> {
        let first = names.first().ok_or(PkiError::NoNames)?;
        let ca_key = KeyPair::from_pem(&self.pem.key_pem)?;
        let ca_cert = CertificateParams::from_ca_cert_pem(&self.pem.cert_pem)?.self_signed(&ca_key)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::OrganizationName, "pgplane");
        params.distinguished_name.push(DnType::CommonName, *first);
        // No basicConstraints at all: rcgen's `ExplicitNoCa` encodes `cA FALSE`, a DEFAULT
        // value that DER forbids, and Python's cryptography (Patroni's TLS client) then rejects
        // the certificate ("error parsing asn1 value: EncodedDefault").
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, SERVER_VALIDITY);
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Valid from an hour ago (clock skew between hosts) for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    fn der(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).expect("PEM").1.contents
    }

    #[test]
    fn ca_is_a_p256_ca() {
        let ca = DatabaseCa::generate("db1").unwrap();
        let der = der(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        assert_eq!(cert.subject(), cert.issuer());
        assert!(cert.subject().to_string().contains("pgplane CA db1"));
        // id-ecPublicKey with the prime256v1 curve.
        assert_eq!(cert.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
        cert.verify_signature(None).expect("self-signed");
        assert!(ca.key_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn server_cert_has_ip_and_dns_sans_and_is_signed_by_the_ca() {
        let ca = DatabaseCa::generate("db1").unwrap();
        let server = ca.issue_server(&["127.0.0.1", "db1.pg.example"]).unwrap();
        let ca_der = der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let server_der = der(&server.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&server_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
        assert!(!cert.is_ca());
        assert!(cert.basic_constraints().unwrap().is_none(), "no DER-invalid `cA FALSE`");
        assert_eq!(cert.issuer(), ca_cert.subject());
        let sans = cert.subject_alternative_name().unwrap().expect("SAN extension").value;
        assert!(sans.general_names.iter().any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [127, 0, 0, 1])));
        assert!(sans.general_names.iter().any(|n| matches!(n, GeneralName::DNSName("db1.pg.example"))));
        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.server_auth);
        assert!(cert.validity().is_valid());
    }

    #[test]
    fn a_peer_cert_serves_and_dials() {
        let ca = DatabaseCa::generate("etcd").unwrap();
        let peer = ca.issue_peer(&["10.0.0.1", "10.0.0.2"]).unwrap();
        let der = der(&peer.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.server_auth && eku.client_auth);
        let server = ca.issue_server(&["10.0.0.1"]).unwrap();
        let der = self::der(&server.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(
            !cert.extended_key_usage().unwrap().expect("EKU").value.client_auth,
            "a server certificate only serves"
        );
    }

    #[test]
    fn a_stored_ca_keeps_issuing_for_the_same_root() {
        let ca = DatabaseCa::generate("db2").unwrap();
        let again = DatabaseCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let server = again.issue_server(&["10.0.0.7"]).unwrap();
        let ca_der = der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let server_der = der(&server.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&server_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the stored CA");
    }

    #[test]
    fn another_ca_does_not_verify() {
        let ca = DatabaseCa::generate("a").unwrap();
        let other = DatabaseCa::generate("b").unwrap();
        let server = ca.issue_server(&["127.0.0.1"]).unwrap();
        let other_der = der(other.cert_pem());
        let (_, other_cert) = x509_parser::parse_x509_certificate(&other_der).unwrap();
        let server_der = der(&server.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&server_der).unwrap();
        assert!(cert.verify_signature(Some(other_cert.public_key())).is_err());
    }

    #[test]
    fn errors_are_clear() {
        let ca = DatabaseCa::generate("c").unwrap();
        assert!(matches!(ca.issue_server(&[]), Err(PkiError::NoNames)));
        assert!(DatabaseCa::from_pem("not a pem", ca.key_pem()).is_err());
        assert!(DatabaseCa::from_pem(ca.cert_pem(), "not a key").is_err());
        let debug = format!("{:?}", ca.issue_server(&["127.0.0.1"]).unwrap());
        assert!(debug.contains("redacted") && !debug.contains("PRIVATE KEY"));
    }
}
