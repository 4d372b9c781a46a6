//! Signing of backup download links. A link names a database, one of its backups and an expiry
//! (Unix seconds); its signature is HMAC-SHA256 over those three under the link key, checked in
//! constant time. The link key is not the access-token (JWT) secret: it is derived from it as
//! `HMAC-SHA256(key = the JWT secret, message = "pgplane backup download links v1")`, so every
//! API process of a platform (they share that secret) accepts the others' links, a link key
//! that leaked would not sign access tokens, and changing the JWT secret revokes every link.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use pgplane_core::ids::{BackupId, DatabaseId};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What the derivation of the link key signs: naming the purpose keeps this key apart from any
/// other the same secret may give.
const DERIVATION: &[u8] = b"pgplane backup download links v1";

/// Signs and checks download links.
#[derive(Clone)]
pub struct LinkSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner { key: <redacted> }")
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// The signature does not match the database, backup and expiry (altered, or made for
    /// another backup or by another platform).
    BadSignature,
    /// Correctly signed, but its time is over.
    Expired,
}

impl LinkSigner {
    /// The signer of a platform whose access tokens are signed with `jwt_secret`.
    pub fn derive(jwt_secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(jwt_secret).expect("HMAC takes keys of any length");
        mac.update(DERIVATION);
        LinkSigner { key: mac.finalize().into_bytes().into() }
    }

    fn mac(&self, database: DatabaseId, backup: BackupId, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // Fixed-shape fields separated by a byte none of them contains: no two triples sign alike.
        mac.update(format!("{database}\n{backup}\n{expires}").as_bytes());
        mac
    }

    /// The signature (lowercase hex) of a link to `backup` of `database` valid until `expires`.
    pub fn sign(&self, database: DatabaseId, backup: BackupId, expires: DateTime<Utc>) -> String {
        hex::encode(self.mac(database, backup, expires.timestamp()).finalize().into_bytes())
    }

    /// Checks a link's signature (in constant time), then its expiry against `now`.
    pub fn verify(
        &self,
        database: DatabaseId,
        backup: BackupId,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LinkRefusal> {
        let sent = hex::decode(signature).map_err(|_| LinkRefusal::BadSignature)?;
        self.mac(database, backup, expires).verify_slice(&sent).map_err(|_| LinkRefusal::BadSignature)?;
        if now.timestamp() >= expires {
            return Err(LinkRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_link_holds_for_its_backup_until_it_expires() {
        let signer = LinkSigner::derive(b"0123456789abcdef0123456789abcdef");
        let (db, other_db) = (DatabaseId::new(), DatabaseId::new());
        let (backup, other_backup) = (BackupId::new(), BackupId::new());
        let now = Utc::now();
        let expires = now + Duration::minutes(15);
        let sig = signer.sign(db, backup, expires);
        let at = expires.timestamp();
        assert_eq!(signer.verify(db, backup, at, &sig, now), Ok(()));
        assert_eq!(signer.verify(db, backup, at, &sig, expires), Err(LinkRefusal::Expired));
        // Another database, backup or expiry, an altered or foreign signature: refused.
        assert_eq!(signer.verify(other_db, backup, at, &sig, now), Err(LinkRefusal::BadSignature));
        assert_eq!(signer.verify(db, other_backup, at, &sig, now), Err(LinkRefusal::BadSignature));
        assert_eq!(signer.verify(db, backup, at + 3600, &sig, now), Err(LinkRefusal::BadSignature));
        let mut altered = sig.clone().into_bytes();
        altered[0] = if altered[0] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(signer.verify(db, backup, at, &altered, now), Err(LinkRefusal::BadSignature));
        assert_eq!(signer.verify(db, backup, at, "not hex", now), Err(LinkRefusal::BadSignature));
        assert_eq!(signer.verify(db, backup, at, &sig[..10], now), Err(LinkRefusal::BadSignature));
        let foreign = LinkSigner::derive(b"another platform's secret, 32 bytes");
        assert_eq!(foreign.verify(db, backup, at, &sig, now), Err(LinkRefusal::BadSignature));
    }

    #[test]
    fn the_link_key_is_not_the_jwt_secret() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let signer = LinkSigner::derive(secret);
        assert_ne!(&signer.key[..], &secret[..]);
        assert!(!format!("{signer:?}").contains(&hex::encode(signer.key)));
    }
}
