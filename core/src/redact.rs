//! `Debug` for types that hold secrets (passwords, tokens, private keys): the secret fields
//! print as `<redacted>` so that a `{:?}` in a log line or a panic message never leaks them.
//! `redacted_debug!(Type { shown, fields } secret { hidden, fields })` writes the impl.

use std::fmt::Debug;

/// How a secret field shows in `Debug` output: `"<redacted>"`, or `None` when an optional
/// secret is absent (whether one is set is not a secret).
pub trait Redacted {
    fn redacted(&self) -> &'static dyn Debug;
}

const SHOWN: &str = "<redacted>";
static SOME: Option<&str> = Some(SHOWN);
static NONE: Option<&str> = None;

impl Redacted for String {
    fn redacted(&self) -> &'static dyn Debug {
        &SHOWN
    }
}

impl Redacted for Option<String> {
    fn redacted(&self) -> &'static dyn Debug {
        if self.is_some() {
            &SOME
        } else {
            &NONE
        }
    }
}

/// Implements `Debug` for a struct: the `shown` fields as they are, the `secret` ones redacted.
#[macro_export]
macro_rules! redacted_debug {
    ($ty:ident { $($shown:ident),* $(,)? } secret { $($secret:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                #[allow(unused_imports)]
                use $crate::redact::Redacted as _;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($secret), self.$secret.redacted()))*
                    .finish()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::agent::{DatabaseSecrets, EtcdAccess, PatroniApi, TlsBundle};
    use crate::model::{AccessToken, ConnectionInfo, TokenExchange};

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secrets = DatabaseSecrets {
            superuser_password: "s3cret-su".into(),
            replication_password: "s3cret-repl".into(),
            restapi_password: "s3cret-rest".into(),
            app_user: "main".into(),
            app_password: "s3cret-app".into(),
            app_database: "main".into(),
        };
        let etcd = EtcdAccess {
            endpoints: vec!["10.0.0.1:2379".into()],
            protocol: "https".into(),
            ca_pem: None,
            username: Some("db-1".into()),
            password: Some("s3cret-etcd".into()),
        };
        let tls = TlsBundle { ca_pem: "CA".into(), cert_pem: "CERT".into(), key_pem: "s3cret-key".into() };
        let api = PatroniApi {
            host: "10.0.0.5".into(),
            patroni_port: 8008,
            ca_pem: "CA".into(),
            restapi_password: "s3cret-rest".into(),
        };
        let exchange = TokenExchange { api_token: "s3cret-token".into() };
        let printed = format!("{secrets:?} {etcd:?} {tls:?} {api:?} {exchange:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("app_user: \"main\"") && printed.contains("username: Some(\"db-1\")"), "{printed}");
        assert!(printed.contains("password: Some(\"<redacted>\")"), "{printed}");
        let no_password = EtcdAccess { password: None, ..etcd };
        assert!(format!("{no_password:?}").contains("password: None"));
        let access = AccessToken {
            access_token: "s3cret-jwt".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            expires_at: chrono::Utc::now(),
        };
        assert!(!format!("{access:?}").contains("s3cret"));
        let info: ConnectionInfo = serde_json::from_value(serde_json::json!({
            "url": "postgres://main:s3cret-app@10.0.0.9:5432/main?sslmode=verify-full", "host": "10.0.0.9",
            "port": 5432, "user": "main", "password": "s3cret-app", "database": "main", "sslmode": "verify-full",
            "ca_pem": "CA"
        }))
        .unwrap();
        assert!(!format!("{info:?}").contains("s3cret"), "{info:?}");
    }
}
