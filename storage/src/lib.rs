//! Backup storage: a local folder or an S3-compatible store, both through `object_store`.
//! Uploads stream (bounded memory: parts of `PART_SIZE`, `PARTS_IN_FLIGHT` at once), compute
//! size and SHA-256 on the way, and publish atomically: the object only appears under its name
//! once the upload completed (S3's multipart completion; the local store's staged file renamed),
//! a failed upload is aborted, and what a killed uploader leaves behind (the local store's
//! staging files) is removed by `sweep`. An S3 bucket should carry an
//! `AbortIncompleteMultipartUpload` lifecycle rule for the incomplete uploads of a killed agent
//! (they are invisible and never under an object's name, but cost space).

mod config;

pub use config::{S3Config, S3Credentials, StorageConfig};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The size of one uploaded part (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// How many parts are in flight at once: memory stays under about `PART_SIZE × (this + 1)`.
pub const PARTS_IN_FLIGHT: usize = 2;
/// How much is read from the source at a time.
const CHUNK: usize = 256 * 1024;

/// An object being read: its whole size and a stream of the bytes asked for.
pub struct ObjectRead {
    /// The size of the whole object.
    pub size: u64,
    /// The bytes the stream yields (the whole object unless a range was asked for).
    pub range: Range<u64>,
    /// The bytes, read from the store as the stream is polled (never all held in memory).
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRead").field("size", &self.size).field("range", &self.range).finish_non_exhaustive()
    }
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// A backup store.
#[derive(Clone)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is S3 (signed links).
    s3: Option<Arc<AmazonS3>>,
    /// The local folder when it is one (the sweep of staging files).
    local_root: Option<PathBuf>,
    describe: String,
}

impl std::fmt::Debug for BackupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl BackupStore {
    /// Opens the store a configuration names (a local folder is created when missing).
    pub fn open(config: &StorageConfig) -> Result<Self> {
        match config {
            StorageConfig::Local { root } => Self::local(root.clone()),
            StorageConfig::S3(s3) => Self::s3(s3),
        }
    }

    /// A folder on this host.
    pub fn local(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .with_context(|| format!("opening {} as backup storage", root.display()))?
            .with_automatic_cleanup(true);
        Ok(BackupStore {
            store: Arc::new(store),
            s3: None,
            describe: format!("local backup storage at {}", root.display()),
            local_root: Some(root),
        })
    }

    /// An S3-compatible store.
    pub fn s3(config: &S3Config) -> Result<Self> {
        let credentials = config.credentials()?;
        let mut options =
            ClientOptions::new().with_connect_timeout(Duration::from_secs(10)).with_timeout(Duration::from_secs(300));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing the CA bundle {}", ca.display()))?
            {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(!config.path_style);
        if let Some(endpoint) = &config.endpoint {
            options = options.with_allow_http(endpoint.starts_with("http://"));
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = Arc::new(builder.with_client_options(options).build().context("configuring the S3 backup storage")?);
        Ok(BackupStore {
            store: s3.clone(),
            s3: Some(s3),
            local_root: None,
            describe: format!(
                "S3 backup storage, bucket {:?} at {}",
                config.bucket,
                config.endpoint.as_deref().unwrap_or("AWS")
            ),
        })
    }

    fn path(key: &str) -> Result<ObjectPath> {
        ObjectPath::parse(key).with_context(|| format!("{key:?} is not a valid object name"))
    }

    /// Streams `source` to the end into the object `key`, replacing any object of that name
    /// once complete. On any error (of the source or the store) the upload is aborted and no
    /// object appears under `key`.
    pub async fn upload(&self, key: &str, source: impl AsyncRead + Unpin) -> Result<Uploaded> {
        self.upload_checked(key, source, async { Ok(()) }).await
    }

    /// `upload`, publishing only when `producer_ok` (awaited once `source` ended: e.g. the
    /// exit status of the process writing it) says the data is whole; a truncated stream from a
    /// failed producer is aborted like any other failure.
    pub async fn upload_checked(
        &self,
        key: &str,
        mut source: impl AsyncRead + Unpin,
        producer_ok: impl std::future::Future<Output = Result<()>>,
    ) -> Result<Uploaded> {
        let path = Self::path(key)?;
        let mut writer =
            BufWriter::with_capacity(self.store.clone(), path, PART_SIZE).with_max_concurrency(PARTS_IN_FLIGHT);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result: Result<()> = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = source.read(&mut buf).await.context("reading the data to upload")?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                writer.write_all(&buf[..n]).await.context("uploading")?;
            }
            producer_ok.await?;
            writer.shutdown().await.context("completing the upload")?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key, "aborting a failed upload: {abort}");
            }
            return Err(e);
        }
        Ok(Uploaded { size, sha256: hex::encode(hasher.finalize()) })
    }

    /// Streams the object `key` into `sink`; returns its size and SHA-256 as read.
    pub async fn download(&self, key: &str, sink: &mut (impl AsyncWrite + Unpin)) -> Result<Uploaded> {
        let got = self.store.get(&Self::path(key)?).await.with_context(|| format!("reading the backup {key}"))?;
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading the backup {key}"))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sink.write_all(&chunk).await.context("writing the backup out")?;
        }
        sink.flush().await.context("writing the backup out")?;
        Ok(Uploaded { size, sha256: hex::encode(hasher.finalize()) })
    }

    /// Opens the object `key` for reading, the bytes of `range` only when one is given (it must
    /// be non-empty and within the object: check it against `size` first). `None` when there is
    /// no object of that name. The bytes come as the stream is polled, a few chunks at a time.
    pub async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Option<ObjectRead>> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let got = match self.store.get_opts(&Self::path(key)?, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading the backup {key}")),
        };
        let (size, range) = (got.meta.size, got.range.clone());
        let stream = got.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
        Ok(Some(ObjectRead { size, range, stream }))
    }

    /// The object's size, or `None` when there is no object of that name.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&Self::path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up the backup {key}")),
        }
    }

    /// Deletes an object; deleting one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting the backup {key}")),
        }
    }

    /// The names of the objects under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = Self::path(prefix)?;
        let mut names = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            names.push(meta.context("listing backups")?.location.to_string());
        }
        names.sort();
        Ok(names)
    }

    /// A link that downloads the object without credentials until `valid_for` passes (S3
    /// only; a local folder has no such links and answers `None`).
    pub async fn signed_url(&self, key: &str, valid_for: Duration) -> Result<Option<String>> {
        let Some(s3) = &self.s3 else { return Ok(None) };
        let url = s3.signed_url(http::Method::GET, &Self::path(key)?, valid_for).await.context("signing a link")?;
        Ok(Some(url.to_string()))
    }

    /// Removes the staging files an interrupted upload to `key` left behind, whatever their age
    /// (call it where no other upload to `key` can be running: before a retried dump, or when
    /// the backup is deleted). Returns how many were removed.
    pub fn sweep_key(&self, key: &str) -> Result<usize> {
        let Some(root) = &self.local_root else { return Ok(0) };
        let path = root.join(Self::path(key)?.as_ref());
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Ok(0) };
        let prefix = format!("{}#", name.to_string_lossy());
        let mut removed = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().to_string();
            if file.strip_prefix(&prefix).is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes what interrupted uploads left behind and older than `older_than`: the local
    /// store's staging files (`name#N`). Returns how many were removed. (On S3 the incomplete
    /// multipart uploads are the bucket lifecycle rule's to abort.)
    pub fn sweep(&self, older_than: Duration) -> Result<usize> {
        let Some(root) = &self.local_root else { return Ok(0) };
        let mut removed = 0;
        let mut folders = vec![root.clone()];
        while let Some(dir) = folders.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    folders.push(entry.path());
                    continue;
                }
                let name = entry.file_name().to_string_lossy().to_string();
                let staging =
                    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
                let age = entry.metadata()?.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
                if staging && age.is_some_and(|a| a >= older_than) {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl std::fmt::Display for BackupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str) -> PathBuf {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        std::env::temp_dir().join(format!("pgplane-storage-{tag}-{}-{nanos}", std::process::id()))
    }

    /// A source that yields `good` bytes, then fails.
    struct Failing {
        left: usize,
    }

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.left == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("the producer died")));
            }
            let n = self.left.min(buf.remaining()).min(64 * 1024);
            buf.put_slice(&vec![7u8; n]);
            self.left -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn uploads_stream_in_parts_and_come_back_whole() {
        let root = folder("rt");
        let store = BackupStore::local(root.clone()).unwrap();
        // Larger than a part, not a multiple of the chunk size.
        let data: Vec<u8> = (0..(PART_SIZE * 2 + 12345)).map(|i| (i * 31 % 251) as u8).collect();
        let up = store.upload("a/b/one.dump", &data[..]).await.unwrap();
        assert_eq!(up.size, data.len() as u64);
        assert_eq!(up.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(store.size("a/b/one.dump").await.unwrap(), Some(data.len() as u64));
        let mut back = Vec::new();
        assert_eq!(store.download("a/b/one.dump", &mut back).await.unwrap(), up);
        assert_eq!(back, data);
        assert_eq!(store.list("a").await.unwrap(), vec!["a/b/one.dump".to_string()]);
        assert_eq!(store.signed_url("a/b/one.dump", Duration::from_secs(60)).await.unwrap(), None);
        store.delete("a/b/one.dump").await.unwrap();
        store.delete("a/b/one.dump").await.unwrap();
        assert_eq!(store.size("a/b/one.dump").await.unwrap(), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn reads_whole_objects_and_ranges() {
        let root = folder("range");
        let store = BackupStore::local(root.clone()).unwrap();
        let data: Vec<u8> = (0..(CHUNK * 3 + 99)).map(|i| (i * 17 % 253) as u8).collect();
        store.upload("r/one.dump", &data[..]).await.unwrap();
        async fn collect(read: ObjectRead) -> Vec<u8> {
            let chunks: Vec<Bytes> = read.stream.map(|c| c.unwrap()).collect().await;
            chunks.concat()
        }
        let whole = store.read("r/one.dump", None).await.unwrap().unwrap();
        assert_eq!((whole.size, whole.range.clone()), (data.len() as u64, 0..data.len() as u64));
        assert_eq!(collect(whole).await, data);
        let start = CHUNK as u64 - 5;
        let part = store.read("r/one.dump", Some(start..start + 1000)).await.unwrap().unwrap();
        assert_eq!((part.size, part.range.clone()), (data.len() as u64, start..start + 1000));
        assert_eq!(collect(part).await, &data[start as usize..start as usize + 1000]);
        let last = store.read("r/one.dump", Some(data.len() as u64 - 1..data.len() as u64)).await.unwrap().unwrap();
        assert_eq!(collect(last).await, &data[data.len() - 1..]);
        assert!(store.read("r/missing.dump", None).await.unwrap().is_none());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_failed_or_refused_upload_leaves_no_object() {
        let root = folder("fail");
        let store = BackupStore::local(root.clone()).unwrap();
        // The source fails after more than a part was sent.
        assert!(store.upload("x/broken.dump", Failing { left: PART_SIZE + 1 }).await.is_err());
        // The source ended, but its producer says the data is not whole.
        let refused = store.upload_checked("x/refused.dump", &[1u8; 1000][..], async { anyhow::bail!("exit 1") });
        assert!(refused.await.is_err());
        assert!(store.list("x").await.unwrap().is_empty());
        assert_eq!(store.size("x/broken.dump").await.unwrap(), None);
        assert_eq!(store.sweep(Duration::ZERO).unwrap(), 0, "aborted uploads leave no staging file");
        std::fs::remove_dir_all(root).unwrap();
    }
}
