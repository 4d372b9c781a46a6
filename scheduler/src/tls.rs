//! The control plane's side of TLS: a CA per database, and server certificates for its members.

use pgplane_core::ids::DatabaseId;
use pgplane_pki::DatabaseCa;

/// A new CA for one database: (certificate PEM, key PEM).
pub fn database_ca(db: DatabaseId) -> Result<(String, String), pgplane_pki::PkiError> {
    let ca = DatabaseCa::generate(&format!("pgplane database {db}"))?;
    Ok((ca.cert_pem().to_string(), ca.key_pem().to_string()))
}

/// A server certificate for the given host names and addresses: (certificate PEM, key PEM).
pub fn member_certificate(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
) -> Result<(String, String), pgplane_pki::PkiError> {
    let ca = DatabaseCa::from_pem(ca_cert, ca_key)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let issued = ca.issue_server(&names)?;
    Ok((issued.cert_pem, issued.key_pem))
}
