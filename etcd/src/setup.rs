//! The files the platform's etcd runs with, made once and kept: a CA of its own with the server
//! certificate it signed, and the `root` user's password. One layout, wherever etcd runs:
//!
//! ```text
//! <dir>/tls/ca.pem  ca.key  server.pem  server.key    (the CA serves etcd only)
//! <dir>/tls/peer.pem  peer.key                         (members of a cluster, to each other)
//! <dir>/root-password                                  (hex, no newline)
//! ```
//!
//! Folders are 0700 and files 0600; each file is written whole (temporary file, then rename) and
//! `ca.pem` last, so a run stopped half-way leaves no CA without its certificate. Existing files
//! are kept: removing `tls/` makes a new CA (and every client must then get the new `ca.pem`).

use anyhow::{Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the files of one etcd are, under `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFiles {
    pub dir: PathBuf,
}

impl EtcdFiles {
    pub fn new(dir: &Path) -> Self {
        EtcdFiles { dir: dir.to_path_buf() }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The CA's certificate: what clients check etcd against (`--etcd-ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    pub fn ca_key_file(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }

    /// etcd's `--cert-file`.
    pub fn cert_file(&self) -> PathBuf {
        self.tls_dir().join("server.pem")
    }

    /// etcd's `--key-file`.
    pub fn key_file(&self) -> PathBuf {
        self.tls_dir().join("server.key")
    }

    /// A member's `--peer-cert-file`: serves and dials (members of a cluster check each other
    /// against the same CA, `--peer-client-cert-auth`).
    pub fn peer_cert_file(&self) -> PathBuf {
        self.tls_dir().join("peer.pem")
    }

    pub fn peer_key_file(&self) -> PathBuf {
        self.tls_dir().join("peer.key")
    }

    /// Root's password (`--etcd-root-password-file`).
    pub fn root_password_file(&self) -> PathBuf {
        self.dir.join("root-password")
    }
}

/// What `prepare` found or made.
#[derive(Clone)]
pub struct Prepared {
    pub files: EtcdFiles,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    pub root_password: String,
    /// True when this call made a new CA and server certificate.
    pub made_tls: bool,
    /// True when this call made root's password.
    pub made_password: bool,
}

pgplane_core::redacted_debug!(Prepared { files, ca_pem, made_tls, made_password } secret { root_password });

/// Makes what is missing of `dir`'s files: the CA and a server certificate for `names` (IP
/// addresses or DNS names by which clients reach etcd), and root's password.
pub fn prepare(dir: &Path, names: &[&str]) -> Result<Prepared> {
    let files = EtcdFiles::new(dir);
    private_dir(dir)?;
    let (ca_pem, made_tls) = tls(&files, names)?;
    let (root_password, made_password) = secret(&files.root_password_file())?;
    Ok(Prepared { files, ca_pem, root_password, made_tls, made_password })
}

/// The CA and server certificate, made on first use: (CA PEM, whether it was made now).
pub fn tls(files: &EtcdFiles, names: &[&str]) -> Result<(String, bool)> {
    private_dir(&files.tls_dir())?;
    let (ca, ca_key, cert, key) = (files.ca_file(), files.ca_key_file(), files.cert_file(), files.key_file());
    let made = ![&ca, &ca_key, &cert, &key].iter().all(|f| f.exists());
    if made {
        anyhow::ensure!(!names.is_empty(), "etcd's server certificate needs at least one IP address or DNS name");
        let authority = pgplane_pki::DatabaseCa::generate("etcd")?;
        let server = authority.issue_server(names)?;
        write_private(&ca_key, authority.key_pem())?;
        write_private(&key, &server.key_pem)?;
        write_private(&cert, &server.cert_pem)?;
        write_private(&ca, authority.cert_pem())?;
    }
    // The peer certificate, also for a folder made before members had one (same names).
    let (peer, peer_key) = (files.peer_cert_file(), files.peer_key_file());
    let missing = !peer.exists() || !peer_key.exists();
    if missing && !names.is_empty() {
        let read = |f: &Path| fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
        let authority = pgplane_pki::DatabaseCa::from_pem(&read(&ca)?, &read(&ca_key)?)?;
        let pair = authority.issue_peer(names)?;
        write_private(&peer_key, &pair.key_pem)?;
        write_private(&peer, &pair.cert_pem)?;
    }
    let ca_pem = fs::read_to_string(&ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok((ca_pem, made))
}

/// A random secret kept in `file` (0600), made on first use: (secret, whether it was made now).
pub fn secret(file: &Path) -> Result<(String, bool)> {
    if let Ok(s) = fs::read_to_string(file) {
        return Ok((s.trim().to_string(), false));
    }
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(file, &s)?;
    Ok((s, true))
}

fn private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("securing {}", dir.display()))
}

/// Writes `contents` to `path` (0600) through a temporary file and a rename.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgplane-etcd-setup-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn makes_the_files_once_and_keeps_them() {
        let dir = temp_dir("once");
        let first = prepare(&dir, &["etcd", "127.0.0.1"]).unwrap();
        assert!(first.made_tls && first.made_password);
        let f = &first.files;
        for file in [f.ca_file(), f.ca_key_file(), f.cert_file(), f.key_file(), f.peer_cert_file(), f.peer_key_file()]
            .into_iter()
            .chain([f.root_password_file()])
        {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!((mode(&dir), mode(&f.tls_dir())), (0o700, 0o700));
        assert_eq!(first.ca_pem, fs::read_to_string(f.ca_file()).unwrap());
        assert_eq!(first.root_password.len(), 48);
        assert!(first.root_password.chars().all(|c| c.is_ascii_hexdigit()));
        let cert = fs::read_to_string(f.cert_file()).unwrap();

        let again = prepare(&dir, &["other"]).unwrap();
        assert!(!again.made_tls && !again.made_password);
        assert_eq!((again.ca_pem, again.root_password), (first.ca_pem.clone(), first.root_password));
        assert_eq!(fs::read_to_string(f.cert_file()).unwrap(), cert);

        // A folder from before peer certificates gets one from the same CA.
        fs::remove_file(f.peer_cert_file()).unwrap();
        prepare(&dir, &["etcd"]).unwrap();
        assert!(f.peer_cert_file().exists() && f.peer_key_file().exists());
        assert_eq!(fs::read_to_string(f.ca_file()).unwrap(), first.ca_pem);

        // Without the CA's key the set is incomplete: a new CA and certificate, same password.
        fs::remove_file(f.ca_key_file()).unwrap();
        let remade = prepare(&dir, &["etcd"]).unwrap();
        assert!(remade.made_tls && !remade.made_password);
        assert_ne!(remade.ca_pem, first.ca_pem);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_certificate_needs_a_name() {
        let dir = temp_dir("noname");
        assert!(prepare(&dir, &[]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
