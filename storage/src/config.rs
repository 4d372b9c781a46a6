//! Where backups are kept, as the agent (and later the API) is configured: a local folder, or an
//! S3-compatible store whose credentials come from a file of their own (0600, beside the agent's
//! configuration), never from the control plane's job rows. The configuration is a small JSON
//! file named by `--backup-storage` / `PGPLANE_BACKUP_STORAGE`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A backup store's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageConfig {
    /// A folder on this host (the default of `pgplane up`: one host, one folder).
    Local { root: PathBuf },
    /// An S3-compatible store.
    S3(S3Config),
}

/// An S3-compatible store. `endpoint` is omitted for AWS itself; `ca_file` names a PEM bundle
/// to trust besides the system's roots (a private store's own CA).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    #[serde(default)]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// A JSON file `{"access_key_id": "…", "secret_access_key": "…"}`.
    pub credentials_file: PathBuf,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Path-style requests (`https://host/bucket/key`), which local S3 servers need.
    #[serde(default = "yes")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

/// The access key pair read from `credentials_file`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

pgplane_core::redacted_debug!(S3Credentials { access_key_id } secret { secret_access_key });

impl StorageConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the backup storage configuration {}", path.display()))
    }
}

impl S3Config {
    /// Reads the credentials file, refusing one that other users may read.
    pub fn credentials(&self) -> Result<S3Credentials> {
        use std::os::unix::fs::PermissionsExt;
        let path = &self.credentials_file;
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!("{} may be read by other users: chmod 600 it", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing the S3 credentials in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        let local: StorageConfig = serde_json::from_str(r#"{"kind":"local","root":"/var/backups"}"#).unwrap();
        assert_eq!(local, StorageConfig::Local { root: "/var/backups".into() });
        let s3: StorageConfig = serde_json::from_str(
            r#"{"kind":"s3","endpoint":"https://127.0.0.1:9000","bucket":"b","credentials_file":"/etc/c.json"}"#,
        )
        .unwrap();
        let StorageConfig::S3(s3) = s3 else { panic!("not s3") };
        assert_eq!(s3.region, "us-east-1");
        assert!(s3.path_style);
        assert!(serde_json::from_str::<StorageConfig>(
            r#"{"kind":"s3","bucket":"b","secret":"x","credentials_file":"c"}"#
        )
        .is_err());
    }

    #[test]
    fn credentials_hide_the_secret() {
        let c = S3Credentials { access_key_id: "AK".into(), secret_access_key: "very-secret".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("AK") && !shown.contains("very-secret"), "{shown}");
    }
}
