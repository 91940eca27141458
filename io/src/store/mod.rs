//! Object storage: block files and the per-tenant bucket index, in a directory or a bucket.
//!
//! **Ownership.** The cores run monoio executors, but `object_store`'s cloud clients need a
//! tokio runtime. So one dedicated OS thread, `kiln-store`, runs a current-thread tokio
//! runtime and alone owns the `Arc<dyn ObjectStore>` (and with it the HTTP client, its
//! connection pool and credentials). Everyone else holds a [`Store`]: a cheap, cloneable
//! handle that sends [`Job`]s over a bounded flume channel, each with a one-shot flume reply
//! channel. flume's `send_async`/`recv_async` are executor-agnostic, so a core awaits a
//! reply without blocking its executor, and the main thread uses the `blocking_*` calls.
//!
//! **Concurrency.** Every job runs as its own task on the store thread, so a slow `get` never
//! holds up an upload. The exception is the bucket index, a read-modify-write of one JSON
//! object: each tenant has one updater task that applies that tenant's updates in arrival
//! order. Updates that queue up while one rewrite is in flight are applied together in the
//! next rewrite (one `get` and one `put` for all, when no other process interferes).
//! Other processes write the same index too (every ingester of a cluster, a compactor): each
//! rewrite is a conditional write retried from a fresh read on a conflict (S3, GCS, Azure),
//! or holds a lock file beside the index (the filesystem), so no update is lost to another
//! writer either; see [`index_write`].
//!
//! **Paths.** Plain strings joined with `/`: `<tenant>/<block-ulid>/<file>` for block files
//! and `<tenant>/bucket-index.json` for the index. Readers find blocks through the index and
//! never list the bucket, except [`Store::tenants`] at start (one listing of the top level).
pub mod bucket_index;
pub mod index_write;
pub mod write_behind;

pub use index_write::Edit;

use crate::bound::{Slot, Slots};
use crate::error::ErrorKind;
use bucket_index::{BlockRef, BucketIndex};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

/// Where the objects live. Secrets are masked in `Debug`.
#[derive(Clone)]
pub enum Backend {
    /// A local directory (created at start); objects are files, written atomically (a
    /// temporary file renamed into place) and fsynced.
    Filesystem { dir: std::path::PathBuf },
    /// S3 or an S3-compatible server. `endpoint` is a host (`minio:9000`,
    /// `s3.eu-west-1.amazonaws.com`) or a URL; empty means AWS for `region`. Without a scheme,
    /// `insecure` picks `http://` over `https://`. Requests are path style (`<endpoint>/<bucket>`)
    /// when `force_path_style` is set or the endpoint is not AWS's, virtual-hosted style
    /// otherwise. Empty credentials fall back to the `AWS_*` environment and instance roles.
    S3 {
        endpoint: String,
        bucket: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
        insecure: bool,
        force_path_style: bool,
    },
    /// Google Cloud Storage. `service_account_path` is a service account key file, or the
    /// key's JSON itself (as Pyroscope's `-storage.gcs.service-account` takes it); empty means
    /// application default credentials.
    Gcs { bucket: String, service_account_path: String },
    /// Azure Blob Storage. `endpoint` is a URL, or an endpoint suffix such as
    /// `blob.core.windows.net` (the account name is put in front); empty means Azure's public
    /// cloud.
    Azure { account_name: String, account_key: String, container: String, endpoint: String },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |s: &str| if s.is_empty() { "" } else { "<hidden>" };
        match self {
            Backend::Filesystem { dir } => f.debug_struct("Filesystem").field("dir", dir).finish(),
            Backend::S3 { endpoint, bucket, region, access_key_id, secret_access_key, insecure, force_path_style } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("bucket", bucket)
                .field("region", region)
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &mask(secret_access_key))
                .field("insecure", insecure)
                .field("force_path_style", force_path_style)
                .finish(),
            Backend::Gcs { bucket, service_account_path } => {
                // The value may be the key itself rather than a path.
                let sa = if service_account_path.trim_start().starts_with('{') {
                    "<hidden>"
                } else {
                    service_account_path.as_str()
                };
                f.debug_struct("Gcs").field("bucket", bucket).field("service_account_path", &sa).finish()
            }
            Backend::Azure { account_name, account_key, container, endpoint } => f
                .debug_struct("Azure")
                .field("account_name", account_name)
                .field("account_key", &mask(account_key))
                .field("container", container)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

impl Backend {
    /// A one-line description for logs and errors, without secrets.
    pub fn describe(&self) -> String {
        match self {
            Backend::Filesystem { dir } => format!("filesystem {}", dir.display()),
            Backend::S3 { endpoint, bucket, region, .. } if endpoint.is_empty() => {
                format!("s3 bucket {bucket} in AWS region {}", if region.is_empty() { "us-east-1" } else { region })
            }
            Backend::S3 { bucket, .. } => format!("s3 bucket {bucket} at {}", self.s3_endpoint_url()),
            Backend::Gcs { bucket, .. } => format!("gcs bucket {bucket}"),
            Backend::Azure { account_name, container, .. } => {
                format!("azure container {container} at {}", self.azure_account_url(account_name))
            }
        }
    }

    /// The S3 endpoint as a URL, without the bucket.
    fn s3_endpoint_url(&self) -> String {
        let Backend::S3 { endpoint, insecure, .. } = self else { return String::new() };
        let e = endpoint.trim_end_matches('/');
        if e.contains("://") {
            e.to_string()
        } else {
            format!("{}://{e}", if *insecure { "http" } else { "https" })
        }
    }

    fn azure_account_url(&self, account: &str) -> String {
        let Backend::Azure { endpoint, .. } = self else { return String::new() };
        let e = endpoint.trim_end_matches('/');
        if e.is_empty() {
            format!("https://{account}.blob.core.windows.net")
        } else if e.contains("://") {
            e.to_string()
        } else {
            format!("https://{account}.{e}")
        }
    }

    /// Builds the client. Runs on the store thread, inside its runtime, as some clients
    /// expect one at construction.
    fn build(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Config(format!("{}: {e}", self.describe()));
        let need = |v: &str, what: &str| {
            if v.trim().is_empty() {
                Err(StoreError::Config(format!("{} needs {what}", self.describe())))
            } else {
                Ok(())
            }
        };
        Ok(match self {
            Backend::Filesystem { dir } => {
                need(&dir.to_string_lossy(), "a directory")?;
                std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
                // fsync: a block counts as stored once `put` returns (the WAL it came from may
                // then be deleted), as it would on S3. Cleanup: deleting a block's last file
                // removes its directory, so no empty block directories pile up.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| fail(&e))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                Arc::new(fs)
            }
            Backend::S3 { endpoint, bucket, region, access_key_id, secret_access_key, insecure, force_path_style } => {
                need(bucket, "a bucket name (-storage.s3.bucket-name)")?;
                if access_key_id.is_empty() != secret_access_key.is_empty() {
                    return Err(StoreError::Config(format!(
                        "{} needs both an access key id and a secret access key, or neither",
                        self.describe()
                    )));
                }
                // Explicit keys: nothing from the environment (a stray AWS_SESSION_TOKEN
                // would spoil their signatures). No keys: the AWS_* environment, web identity
                // or the instance role, as Pyroscope's client falls back to them.
                let b = if access_key_id.is_empty() {
                    object_store::aws::AmazonS3Builder::from_env()
                } else {
                    object_store::aws::AmazonS3Builder::new()
                        .with_access_key_id(access_key_id)
                        .with_secret_access_key(secret_access_key)
                };
                // Conditional puts (If-Match / If-None-Match) keep concurrent bucket index
                // writers from losing each other's updates; set here so that no
                // AWS_CONDITIONAL_PUT in the environment turns them off.
                let mut b = b
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .with_bucket_name(bucket)
                    .with_allow_http(*insecure || endpoint.starts_with("http://"))
                    .with_retry(retry());
                // Unset: AWS_REGION from the environment where read, else us-east-1.
                if !region.is_empty() {
                    b = b.with_region(region);
                }
                if endpoint.is_empty() {
                    b = b.with_virtual_hosted_style_request(!force_path_style);
                } else {
                    let url = self.s3_endpoint_url();
                    // Like Pyroscope's client: virtual-hosted style only for AWS's own
                    // endpoints; MinIO and the like are addressed path style.
                    let virtual_hosted = !force_path_style && url.contains(".amazonaws.com");
                    let url = if virtual_hosted {
                        let (scheme, host) = url.split_once("://").unwrap_or(("https", &url));
                        format!("{scheme}://{bucket}.{host}")
                    } else {
                        url
                    };
                    b = b.with_endpoint(url).with_virtual_hosted_style_request(virtual_hosted);
                }
                Arc::new(b.build().map_err(|e| fail(&e))?)
            }
            Backend::Gcs { bucket, service_account_path } => {
                need(bucket, "a bucket name (-storage.gcs.bucket-name)")?;
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry());
                let sa = service_account_path.trim();
                if sa.starts_with('{') {
                    b = b.with_service_account_key(sa);
                } else if !sa.is_empty() {
                    b = b.with_service_account_path(sa);
                }
                Arc::new(b.build().map_err(|e| fail(&e))?)
            }
            Backend::Azure { account_name, account_key, container, endpoint } => {
                need(account_name, "an account name (-storage.azure.account-name)")?;
                need(container, "a container name (-storage.azure.container-name)")?;
                // As for S3: an explicit key alone, or else the AZURE_* environment.
                let b = if account_key.is_empty() {
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                } else {
                    object_store::azure::MicrosoftAzureBuilder::new().with_access_key(account_key)
                };
                let mut b = b.with_account(account_name).with_container_name(container).with_retry(retry());
                if !endpoint.is_empty() {
                    let url = self.azure_account_url(account_name);
                    b = b.with_allow_http(url.starts_with("http://")).with_endpoint(url);
                }
                Arc::new(b.build().map_err(|e| fail(&e))?)
            }
        })
    }
}

/// Retries inside one request: bounded to 30 s (object_store's default is 3 min) so that a
/// query against an unreachable bucket fails in reasonable time. Block uploads need no more:
/// the cutting core retries them itself, without limit.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

/// Errors name the object path and the backend, so a log line alone says what failed where.
/// `kind()` says what a caller can do about one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist. The text is `<path> in <backend>`.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The backend could not be set up (missing bucket, bad credentials file, ...).
    #[error("object storage configuration: {0}")]
    Config(String),
    /// The request or the stored data is invalid: a path that cannot name an object, a range
    /// past the end of one, a corrupt bucket index, an operation the backend refuses.
    #[error("object storage: {0}")]
    Other(String),
    /// The backend failed or could not be reached (network, throttling, a server error), or
    /// the store thread is too busy to take the job: a retry may succeed.
    #[error("object storage: {0}")]
    Unavailable(String),
    /// The backend refused the credentials or the permission.
    #[error("object storage: {0}")]
    Denied(String),
    /// The store thread is gone (or the job panicked): nothing more can be stored.
    #[error("object storage: {0}")]
    Stopped(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Other(_) => ErrorKind::Invalid,
            StoreError::Unavailable(_) => ErrorKind::Retryable,
            StoreError::Config(_) | StoreError::Denied(_) | StoreError::Stopped(_) => ErrorKind::Fatal,
        }
    }
}

/// A job for the store thread.
enum Job {
    /// Runs as its own task; the closure owns its reply sender and answers through it.
    Op(Box<dyn FnOnce(Ctx) -> BoxFuture + Send>),
    /// Goes to the tenant's index updater, which applies a tenant's updates one at a time.
    Index { tenant: String, update: IndexUpdate, reply: flume::Sender<Result<(), StoreError>> },
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An edit of a tenant's index: data, not a closure, since a rewrite that lost to another
/// writer applies it again to a fresh read (see [`apply`] and [`index_write`]).
enum IndexUpdate {
    /// Added in one index write: all or none.
    Add(Vec<BlockRef>),
    Remove(Vec<String>),
    /// A compaction's output added and its inputs marked for deletion (at, unix seconds) in
    /// one write: a reader of the index sees the inputs or the output, never both.
    Compacted {
        output: BlockRef,
        inputs: Vec<String>,
        at: i64,
    },
    /// Blocks marked for deletion (retention) at unix seconds.
    Mark {
        blocks: Vec<String>,
        at: i64,
    },
    /// Blocks the compactor must leave out (damaged).
    NoCompact(Vec<String>),
}

impl IndexUpdate {
    /// Applies the update to an index. Runs again on a fresh read when a conditional write
    /// lost to another writer, so it depends only on `idx` and the update (a mark's time
    /// is the update's, fixed when it was made).
    fn apply(&self, idx: &mut BucketIndex) {
        match self {
            IndexUpdate::Add(blocks) => {
                for b in blocks {
                    idx.add(b.clone());
                }
            }
            IndexUpdate::Remove(ids) => {
                for id in ids {
                    idx.remove(id);
                }
            }
            IndexUpdate::Compacted { output, inputs, at } => {
                idx.add(output.clone());
                for id in inputs {
                    idx.mark(id, *at);
                }
            }
            IndexUpdate::Mark { blocks, at } => {
                for id in blocks {
                    idx.mark(id, *at);
                }
            }
            IndexUpdate::NoCompact(ids) => {
                for b in idx.blocks.iter_mut().filter(|b| ids.contains(&b.block_id)) {
                    b.no_compact = true;
                }
            }
        }
    }
}

/// What a job's task gets: the client, the backend's description for error messages, and
/// the filesystem backend's directory (where bucket index rewrites take a lock file).
#[derive(Clone)]
struct Ctx {
    store: Arc<dyn ObjectStore>,
    describe: Arc<str>,
    local_dir: Option<Arc<std::path::Path>>,
    /// The background store on the filesystem: `put` writes window by window
    /// (`write_behind`), so the cores' WAL syncs never queue behind a whole block file.
    write_behind: bool,
}

impl Ctx {
    fn err(&self, op: &str, path: &str, e: object_store::Error) -> StoreError {
        use object_store::Error as E;
        let text = |e: E| format!("{op} {path} in {}: {e}", self.describe);
        match e {
            E::NotFound { .. } => StoreError::NotFound(format!("{path} in {}", self.describe)),
            e @ (E::PermissionDenied { .. } | E::Unauthenticated { .. }) => StoreError::Denied(text(e)),
            e @ (E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }) => StoreError::Other(text(e)),
            // The local filesystem's own errors: an I/O error (a full disk) may pass, a range
            // past the end of a file will not.
            E::Generic { store: "LocalFileSystem", source } => {
                let retryable = io_source(source.as_ref()).is_some_and(|io| ErrorKind::of_io(io).retryable());
                let e = E::Generic { store: "LocalFileSystem", source };
                if retryable {
                    StoreError::Unavailable(text(e))
                } else {
                    StoreError::Other(text(e))
                }
            }
            // `Generic` (the network, a server error, throttling after the client's own
            // retries) and whatever later versions add.
            e => StoreError::Unavailable(text(e)),
        }
    }

    fn path(&self, path: &str) -> Result<ObjectPath, StoreError> {
        if path.is_empty() {
            return Err(StoreError::Other(format!("empty object path in {}", self.describe)));
        }
        ObjectPath::parse(path)
            .map_err(|e| StoreError::Other(format!("invalid object path {path:?} in {}: {e}", self.describe)))
    }

    async fn get(&self, path: &str) -> Result<bytes::Bytes, StoreError> {
        Ok(self.get_with_meta(path).await?.0)
    }

    /// The object and its metadata (its ETag and version, for a conditional write).
    async fn get_with_meta(&self, path: &str) -> Result<(bytes::Bytes, object_store::ObjectMeta), StoreError> {
        let p = self.path(path)?;
        let r = self.store.get(&p).await.map_err(|e| self.err("get", path, e))?;
        let meta = r.meta.clone();
        Ok((r.bytes().await.map_err(|e| self.err("get", path, e))?, meta))
    }

    async fn put(&self, path: &str, data: bytes::Bytes) -> Result<(), StoreError> {
        let p = self.path(path)?;
        if let Some(dest) = self.written_behind(path) {
            let written = tokio::task::spawn_blocking(move || write_behind::put(&dest, &data)).await;
            let e = match written {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e),
            };
            return Err(io_error(format!("put {path} in {}: {e}", self.describe), &e));
        }
        self.store.put(&p, PutPayload::from_bytes(data)).await.map_err(|e| self.err("put", path, e))?;
        Ok(())
    }

    /// Where `path` is written window by window (`write_behind`): the background store's
    /// file for it on the filesystem; `None` elsewhere.
    fn written_behind(&self, path: &str) -> Option<std::path::PathBuf> {
        self.local_dir.as_ref().filter(|_| self.write_behind).and_then(|d| local_file(d, path))
    }

    async fn put_file(&self, path: &str, local: &std::path::Path) -> Result<(), StoreError> {
        let p = self.path(path)?;
        let failed =
            |e: std::io::Error| io_error(format!("put {path} in {} from {}: {e}", self.describe, local.display()), &e);
        if let Some(dest) = self.written_behind(path) {
            let src = local.to_path_buf();
            let copied = tokio::task::spawn_blocking(move || {
                if write_behind::put_moved(&dest, &src)? {
                    return Ok(());
                }
                let mut f = std::fs::File::open(&src)?;
                write_behind::put_from(&dest, &mut f)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            return copied.map_err(failed);
        }
        let mut f = std::fs::File::open(local).map_err(failed)?;
        let mut upload = self.store.put_multipart(&p).await.map_err(|e| self.err("put", path, e))?;
        let sent: Result<(), StoreError> = async {
            let mut parts = 0;
            loop {
                let mut part = Vec::with_capacity(PART);
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, PART as u64), &mut part).map_err(failed)?;
                let last = part.len() < PART;
                // An empty file is one empty part; otherwise no empty trailing part.
                if !part.is_empty() || parts == 0 {
                    upload.put_part(PutPayload::from(part)).await.map_err(|e| self.err("put", path, e))?;
                    parts += 1;
                }
                if last {
                    break;
                }
            }
            upload.complete().await.map_err(|e| self.err("put", path, e))?;
            Ok(())
        }
        .await;
        if sent.is_err() {
            let _ = upload.abort().await;
        }
        sent
    }

    /// The index, or an empty one where the tenant has none yet.
    async fn read_index(&self, tenant: &str) -> Result<BucketIndex, StoreError> {
        let path = BucketIndex::path(tenant);
        match self.get(&path).await {
            Ok(bytes) => BucketIndex::from_json(&bytes)
                .map_err(|e| StoreError::Other(format!("{path} in {}: {e}", self.describe))),
            Err(StoreError::NotFound(_)) => Ok(BucketIndex::default()),
            Err(e) => Err(e),
        }
    }

    /// Checks that every range lies inside the object, so readers always get exactly the
    /// bytes they asked for (object stores return a shorter tail instead of failing).
    fn check_ranges(&self, path: &str, ranges: &[Range<u64>], got: &[bytes::Bytes]) -> Result<(), StoreError> {
        if got.len() != ranges.len() {
            return Err(StoreError::Other(format!(
                "get_range {path} in {}: {} ranges asked, {} answered",
                self.describe,
                ranges.len(),
                got.len()
            )));
        }
        for (r, b) in ranges.iter().zip(got) {
            if b.len() as u64 != r.end - r.start {
                return Err(StoreError::Other(format!(
                    "get_range {path} in {}: range {}..{} runs past the end of the object ({} bytes returned)",
                    self.describe,
                    r.start,
                    r.end,
                    b.len()
                )));
            }
        }
        Ok(())
    }
}

/// Where object `path` lies under the filesystem backend's `dir`, for a path that maps to a
/// file name unchanged (`None`: one `object_store` would encode).
fn local_file(dir: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    let plain = path.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    plain.then(|| dir.join(path))
}

/// The size of each part of a multipart upload (`Store::put_file`): above S3's 5 MiB
/// minimum, small enough to hold one at a time.
pub const PART: usize = 8 << 20;

/// A local I/O error as a store error: one that may pass (a full disk) is `Unavailable`.
fn io_error(text: String, e: &std::io::Error) -> StoreError {
    match ErrorKind::of_io(e).retryable() {
        true => StoreError::Unavailable(text),
        false => StoreError::Other(text),
    }
}

/// The I/O error an error was caused by, if any.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

fn stopped() -> StoreError {
    StoreError::Stopped("the store job ended without an answer (store thread stopped, or the job panicked)".into())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A tenant id becomes one path segment: it must not be empty, contain `/` or be `.`/`..`.
fn check_segment(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty() || s.contains('/') || s == "." || s == ".." || s.chars().any(|c| c.is_ascii_control()) {
        return Err(StoreError::Other(format!("invalid {what} {s:?} for an object path")));
    }
    Ok(())
}

/// Jobs waiting for the store thread; a full queue makes senders wait (back-pressure on the
/// cores rather than unbounded memory).
const QUEUE: usize = 1024;

/// A handle to the store thread. Cheap to clone; `Send + Sync`. The thread stops once every
/// handle is dropped (nothing can be waiting on it then: a waiting call holds a handle).
#[derive(Clone)]
pub struct Store {
    tx: flume::Sender<Job>,
    describe: Arc<str>,
    /// The directory of the filesystem backend, where cores read block files themselves.
    local_dir: Option<Arc<std::path::Path>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.describe)
    }
}

impl Store {
    /// Starts the store thread and builds the client on it; returns once the client is
    /// built, or with the reason it could not be (missing bucket, unreadable credentials, a
    /// directory that cannot be created). No request is made to the backend here.
    pub fn start(backend: Backend) -> Result<Store, StoreError> {
        Store::start_with_prefix(backend, "")
    }

    /// `start`, with every object under `prefix/` (Pyroscope's `-storage.prefix`: several
    /// clusters sharing one bucket). Empty: the bucket's root.
    pub fn start_with_prefix(backend: Backend, prefix: &str) -> Result<Store, StoreError> {
        Store::start_thread(backend, prefix, false)
    }

    /// `start_with_prefix` for background work (the compactor's): a store thread of its own
    /// at nice 10 and the idle I/O class, so its requests (and, on the filesystem, the fsync
    /// of every file it writes) yield to the cores' and their store thread's. Its index
    /// writes are safe beside the other store's: they are conditional (see `index_write`).
    pub fn start_background(backend: Backend, prefix: &str) -> Result<Store, StoreError> {
        Store::start_thread(backend, prefix, true)
    }

    fn start_thread(backend: Backend, prefix: &str, background: bool) -> Result<Store, StoreError> {
        let prefix = prefix.trim_matches('/').to_string();
        let mut describe = backend.describe();
        if !prefix.is_empty() {
            describe = format!("{describe} under {prefix}/");
        }
        let describe: Arc<str> = describe.into();
        let local_dir = match &backend {
            Backend::Filesystem { dir } => Some(Arc::from(dir.join(&prefix).as_path())),
            _ => None,
        };
        let (tx, rx) = flume::bounded::<Job>(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let d = describe.clone();
        let ctx_dir = local_dir.clone();
        std::thread::Builder::new()
            .name(if background { "kiln-store-bg" } else { "kiln-store" }.into())
            .spawn(move || {
                if background {
                    lower_thread_priority();
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Config(format!("{d}: starting the runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let store = match backend.build() {
                        Ok(s) if prefix.is_empty() => s,
                        Ok(s) => Arc::new(object_store::prefix::PrefixStore::new(s, prefix.as_str())),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let write_behind = background && ctx_dir.is_some();
                    serve(rx, Ctx { store, describe: d, local_dir: ctx_dir, write_behind }).await;
                });
            })
            .map_err(|e| StoreError::Config(format!("{describe}: spawning the store thread: {e}")))?;
        ready_rx.recv().map_err(|_| StoreError::Config(format!("{describe}: the store thread died at start")))??;
        tracing::info!(backend = %describe, "object storage ready");
        Ok(Store { tx, describe, local_dir })
    }

    /// Where object `path` lies on the local filesystem, for the filesystem backend and a
    /// path that maps to a file name unchanged: a core reads such files with its own io_uring
    /// instead of a round trip through the store thread. `None`: ask the store.
    pub fn local_path(&self, path: &str) -> Option<std::path::PathBuf> {
        local_file(self.local_dir.as_ref()?, path)
    }

    /// e.g. `filesystem ./data/blocks`, `s3 bucket x at http://minio:9000`.
    pub fn describe(&self) -> String {
        self.describe.to_string()
    }

    /// A job that runs `f` on the store thread and answers through the returned receiver.
    fn job<T, F, Fut>(f: F) -> (Job, flume::Receiver<Result<T, StoreError>>)
    where
        T: Send + 'static,
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (reply, rx) = flume::bounded(1);
        let job = Job::Op(Box::new(move |ctx| {
            Box::pin(async move {
                let _ = reply.send(f(ctx).await);
            })
        }));
        (job, rx)
    }

    async fn call<T: Send + 'static>(
        &self,
        (job, rx): (Job, flume::Receiver<Result<T, StoreError>>),
    ) -> Result<T, StoreError> {
        self.tx.send_async(job).await.map_err(|_| stopped())?;
        rx.recv_async().await.map_err(|_| stopped())?
    }

    /// For threads that are not executors (the main thread at start). Never call it on the
    /// store thread itself: it would wait for itself.
    fn blocking_call<T: Send + 'static>(
        &self,
        (job, rx): (Job, flume::Receiver<Result<T, StoreError>>),
    ) -> Result<T, StoreError> {
        self.tx.send(job).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Writes the whole object, replacing any previous one atomically: readers see the old
    /// object or the new one, never a part.
    pub async fn put(&self, path: String, data: bytes::Bytes) -> Result<(), StoreError> {
        self.call(Self::job(move |ctx| async move { ctx.put(&path, data).await })).await
    }

    /// `put` of the local file `local`, read a part at a time so that an object of any size
    /// costs a part of memory: on the filesystem with the background store, moved into place
    /// when it lies on the bucket's filesystem (`local` is then gone) and else copied window
    /// by window (`write_behind`); elsewhere a multipart upload of `PART` bytes a part (which
    /// also lifts S3's 5 GiB cap on one PUT). Readers see the old object or the new one.
    pub async fn put_file(&self, path: String, local: std::path::PathBuf) -> Result<(), StoreError> {
        self.call(Self::job(move |ctx| async move { ctx.put_file(&path, &local).await })).await
    }

    pub async fn get(&self, path: String) -> Result<bytes::Bytes, StoreError> {
        self.call(Self::job(move |ctx| async move { ctx.get(&path).await })).await
    }

    /// Exactly the bytes of `range`; a range reaching past the end of the object is an error.
    pub async fn get_range(&self, path: String, range: std::ops::Range<u64>) -> Result<bytes::Bytes, StoreError> {
        let mut v = self.get_ranges(path, vec![range]).await?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Several ranges of one object, answered in the order asked; nearby ranges are fetched
    /// in one request where the backend can. Each answer is exactly its range.
    pub async fn get_ranges(
        &self,
        path: String,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        self.call(Self::job(move |ctx| async move {
            if let Some(r) = ranges.iter().find(|r| r.start > r.end) {
                return Err(StoreError::Other(format!(
                    "get_range {path} in {}: invalid range {}..{}",
                    ctx.describe, r.start, r.end
                )));
            }
            let p = ctx.path(&path)?;
            // Empty ranges are answered here: some backends refuse them.
            let asked: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
            let got = if asked.is_empty() {
                Vec::new()
            } else {
                ctx.store.get_ranges(&p, &asked).await.map_err(|e| ctx.err("get_range", &path, e))?
            };
            ctx.check_ranges(&path, &asked, &got)?;
            let mut got = got.into_iter();
            Ok(ranges
                .iter()
                .map(|r| if r.start < r.end { got.next().unwrap_or_default() } else { Default::default() })
                .collect())
        }))
        .await
    }

    /// The object's size in bytes (a `head`).
    pub async fn size(&self, path: String) -> Result<u64, StoreError> {
        self.call(Self::job(move |ctx| async move {
            let p = ctx.path(&path)?;
            Ok(ctx.store.head(&p).await.map_err(|e| ctx.err("head", &path, e))?.size)
        }))
        .await
    }

    /// Reads the object at `path` (`None` where there is none), hands its bytes to `edit`
    /// and writes back what `edit` decides, without losing a concurrent writer's update in
    /// this process or another (conditional writes, or a lock file on the filesystem: see
    /// [`index_write`]). `edit` may run several times, each on a fresh read; the answer of
    /// its last run is returned. Small objects only: each run reads the whole object.
    pub async fn update<T, F>(&self, path: String, edit: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Option<&[u8]>) -> Result<Edit<T>, StoreError> + Send + Sync + 'static,
    {
        self.call(Self::job(move |ctx| async move { ctx.update_object(&path, edit).await })).await
    }

    /// Deletes the object. Deleting a missing object succeeds on every backend (S3 cannot
    /// tell the two apart), so a retried cleanup is harmless.
    pub async fn delete(&self, path: String) -> Result<(), StoreError> {
        self.call(Self::job(move |ctx| async move {
            let p = ctx.path(&path)?;
            if let Some(file) = ctx.written_behind(&path) {
                let deleted = tokio::task::spawn_blocking(move || write_behind::delete(&file)).await;
                let e = match deleted {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e),
                };
                return Err(io_error(format!("delete {path} in {}: {e}", ctx.describe), &e));
            }
            match ctx.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(ctx.err("delete", &path, e)),
            }
        }))
        .await
    }

    async fn index_update(&self, tenant: String, update: IndexUpdate) -> Result<(), StoreError> {
        check_segment("tenant id", &tenant)?;
        let (reply, rx) = flume::bounded(1);
        self.tx.send_async(Job::Index { tenant, update, reply }).await.map_err(|_| stopped())?;
        rx.recv_async().await.map_err(|_| stopped())?
    }

    /// Adds `block` to `<tenant>/bucket-index.json`, or replaces the block with the same id.
    /// Updates of one tenant are serialized on the store thread, and safe against other
    /// processes writing the same index (see [`index_write`]); the index object is
    /// rewritten whole (one atomic `put`). Returns once the new index is stored. An
    /// `uploaded_at` of 0 is set to now. A corrupt index is an error, never overwritten.
    pub async fn add_block(&self, tenant: String, block: BlockRef) -> Result<(), StoreError> {
        self.add_blocks(tenant, vec![block]).await
    }

    /// `add_block` of several blocks in one index write: once it returns, every one of them
    /// is listed, and before, none is (a block cut retried after a failure indexes the
    /// tenant's blocks of both cuts together; see `kiln_shards::ingester::cut`).
    pub async fn add_blocks(&self, tenant: String, mut blocks: Vec<BlockRef>) -> Result<(), StoreError> {
        for b in &mut blocks {
            check_segment("block id", &b.block_id)?;
            if b.uploaded_at == 0 {
                b.uploaded_at = unix_now();
            }
        }
        self.index_update(tenant, IndexUpdate::Add(blocks)).await
    }

    /// Removes a block (and its deletion mark) from the tenant's index; a block not listed
    /// is no error. Serialized with `add_block`.
    pub async fn remove_block(&self, tenant: String, block_id: String) -> Result<(), StoreError> {
        self.index_update(tenant, IndexUpdate::Remove(vec![block_id])).await
    }

    /// Removes blocks (and their marks) in one index write: once their files are deleted.
    pub async fn remove_blocks(&self, tenant: String, block_ids: Vec<String>) -> Result<(), StoreError> {
        self.index_update(tenant, IndexUpdate::Remove(block_ids)).await
    }

    /// Adds a compaction's `output` (its `uploaded_at` set to now when 0) and marks its
    /// `inputs` for deletion now, in one index write.
    pub async fn add_compacted(
        &self,
        tenant: String,
        mut output: BlockRef,
        inputs: Vec<String>,
    ) -> Result<(), StoreError> {
        check_segment("block id", &output.block_id)?;
        let at = unix_now();
        if output.uploaded_at == 0 {
            output.uploaded_at = at;
        }
        self.index_update(tenant, IndexUpdate::Compacted { output, inputs, at }).await
    }

    /// Marks blocks not to be compacted (damaged), in one index write.
    pub async fn mark_no_compact(&self, tenant: String, blocks: Vec<String>) -> Result<(), StoreError> {
        self.index_update(tenant, IndexUpdate::NoCompact(blocks)).await
    }

    /// Marks blocks for deletion now, in one index write (a block marked already keeps its mark).
    pub async fn mark_for_deletion(&self, tenant: String, blocks: Vec<String>) -> Result<(), StoreError> {
        self.index_update(tenant, IndexUpdate::Mark { blocks, at: unix_now() }).await
    }

    /// Every object under `prefix` (a folder path, without the trailing `/`) as (path
    /// relative to the prefix, size, last modified in unix seconds), in one listing: the
    /// compactor's look for blocks whose upload never finished.
    pub async fn list(&self, prefix: String) -> Result<Vec<(String, u64, i64)>, StoreError> {
        self.call(Self::job(move |ctx| async move {
            use futures_util::TryStreamExt;
            let p = ctx.path(&prefix)?;
            let objects: Vec<object_store::ObjectMeta> =
                ctx.store.list(Some(&p)).try_collect().await.map_err(|e| ctx.err("list", &prefix, e))?;
            Ok(objects
                .into_iter()
                .filter_map(|o| {
                    let rel = o.location.prefix_match(&p)?.map(|part| part.as_ref().to_string()).collect::<Vec<_>>();
                    Some((rel.join("/"), o.size, o.last_modified.timestamp()))
                })
                .collect())
        }))
        .await
    }

    /// The tenant's index; a tenant without one has an empty index.
    pub async fn read_bucket_index(&self, tenant: String) -> Result<BucketIndex, StoreError> {
        check_segment("tenant id", &tenant)?;
        self.call(Self::job(move |ctx| async move { ctx.read_index(&tenant).await })).await
    }

    /// Tenants that have a bucket index, sorted. One listing of the bucket's top level plus
    /// one `head` per top-level prefix: meant for a store-gateway's start and syncs, not for
    /// queries.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.call(Self::job(tenants)).await
    }

    pub fn blocking_read_bucket_index(&self, tenant: &str) -> Result<BucketIndex, StoreError> {
        check_segment("tenant id", tenant)?;
        let tenant = tenant.to_string();
        self.blocking_call(Self::job(move |ctx| async move { ctx.read_index(&tenant).await }))
    }

    pub fn blocking_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.blocking_call(Self::job(tenants))
    }
}

async fn tenants(ctx: Ctx) -> Result<Vec<String>, StoreError> {
    let top = ctx.store.list_with_delimiter(None).await.map_err(|e| ctx.err("list", "/", e))?;
    // The heads run concurrently, `TENANT_PROBES` at a time: on a bucket with many tenants,
    // a few round trips in all rather than one per tenant, and never one request per tenant
    // at once.
    let tenants: Vec<String> = top.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
    let mut out = Vec::new();
    for chunk in tenants.chunks(TENANT_PROBES) {
        let mut checks = Vec::with_capacity(chunk.len());
        for tenant in chunk {
            let (ctx, tenant) = (ctx.clone(), tenant.clone());
            checks.push(tokio::spawn(async move {
                let path = BucketIndex::path(&tenant);
                match ctx.store.head(&ctx.path(&path)?).await {
                    Ok(_) => Ok(Some(tenant)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(ctx.err("head", &path, e)),
                }
            }));
        }
        for c in checks {
            if let Some(t) = c.await.map_err(|e| StoreError::Unavailable(format!("listing tenants: {e}")))?? {
                out.push(t);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How many CPUs, from the first, the cores are pinned to (0: not pinned). Set before any
/// background thread starts (`cores_pinned_to_first`).
static CORE_CPUS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The cores are pinned to CPUs `0..n`: background threads started from now on keep to
/// the CPUs after them when the machine has any (`lower_thread_priority`).
pub fn cores_pinned_to_first(n: usize) {
    CORE_CPUS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Nice 10 and the idle I/O scheduling class for the calling thread (Linux sets both per
/// thread; the I/O class is honoured by the block layer's schedulers that have classes):
/// background work (the compactor's threads, its store thread) yields to the cores'. And
/// where the cores are pinned to some of the CPUs only (`-shards` below the CPU count), the
/// thread keeps to the others: a nice level still lets it run on a core's CPU and hold the
/// core off it for a scheduler slice at each wake-up. Failing only costs priority.
pub fn lower_thread_priority() {
    let cores = CORE_CPUS.load(std::sync::atomic::Ordering::Relaxed);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 0 && cores < cpus {
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it for CPU
        // numbers below CPU_SETSIZE (checked); sched_setaffinity(0, …) changes only this
        // thread's affinity and reads the set it is given.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in cores..cpus.min(libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    // SAFETY: setpriority and ioprio_set on this thread's own id change only its priorities;
    // gettid has no preconditions.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid as libc::c_long, IOPRIO_CLASS_IDLE << 13);
    }
}

/// Runs a `Store` call to its end on a thread that is not an executor (the compactor's):
/// the calls only wait on channels to the store thread, which any waker can wake. Never on
/// the store thread itself, nor on a core (it would block the core).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Bucket-index `head`s in flight at once while listing tenants at start.
const TENANT_PROBES: usize = 64;

/// Jobs (`Job::Op`) running at once on the store thread. Each is one request to the backend
/// (or a few, for ranges), holding its connection and buffers; more at once than the HTTP
/// client's pool keeps busy only adds memory and latency. Their callers are bounded too (a
/// core runs at most one cut and `store_gateway::MAX_BLOCK_QUERIES` block queries, each
/// waiting on one job at a time), but a job whose caller gave up still runs to its end; this
/// bounds them all. Past it the loop waits, `QUEUE` fills and senders wait: back-pressure.
pub const MAX_JOBS_IN_FLIGHT: usize = 256;

/// Index updates waiting for one tenant's updater. A cut sends one update per tenant and
/// waits for it, so the cores alone never queue more than one each; this is far above any
/// core count. A full queue refuses the update as `Unavailable` (the cut retries it) rather
/// than making the store thread's loop, and with it every other job, wait for one tenant.
pub const MAX_INDEX_UPDATES_QUEUED: usize = 1024;

/// The store thread's figures for `/metrics`. Process-wide statics: kiln runs one store
/// thread, and its loop has no core to report through.
mod stats {
    use std::sync::atomic::AtomicU64;
    pub static JOBS_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
    pub static INDEX_UPDATES_QUEUED: AtomicU64 = AtomicU64::new(0);
    pub static INDEX_UPDATES_REFUSED: AtomicU64 = AtomicU64::new(0);
    pub static INDEX_CONFLICTS: AtomicU64 = AtomicU64::new(0);
}

/// Prometheus text for `/metrics`: the store thread's queues and their bounds.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let rows: [(&str, &str, &str, u64); 5] = [
        (
            "kiln_store_jobs_in_flight",
            "gauge",
            "Object storage jobs running on the store thread.",
            stats::JOBS_IN_FLIGHT.load(Relaxed),
        ),
        (
            "kiln_store_jobs_in_flight_limit",
            "gauge",
            "Most object storage jobs the store thread runs at once.",
            MAX_JOBS_IN_FLIGHT as u64,
        ),
        (
            "kiln_store_index_updates_queued",
            "gauge",
            "Bucket index updates waiting for their tenant's updater.",
            stats::INDEX_UPDATES_QUEUED.load(Relaxed),
        ),
        (
            "kiln_store_index_updates_refused_total",
            "counter",
            "Bucket index updates refused because their tenant's queue was full (retried by the caller).",
            stats::INDEX_UPDATES_REFUSED.load(Relaxed),
        ),
        (
            "kiln_store_index_conflicts_total",
            "counter",
            "Bucket index writes refused because another writer changed the index since it was read (each read again and retried).",
            stats::INDEX_CONFLICTS.load(Relaxed),
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// A running job: its slot and its count in `kiln_store_jobs_in_flight`, both given back
/// when the job's task ends.
struct Running {
    _slot: Slot,
}

impl Running {
    fn new(slot: Slot) -> Self {
        stats::JOBS_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Running { _slot: slot }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stats::JOBS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The store thread's loop: spawns a task per job (at most `MAX_JOBS_IN_FLIGHT` at once),
/// and hands index updates to their tenant's updater. Ends when every [`Store`] handle is
/// gone.
async fn serve(rx: flume::Receiver<Job>, ctx: Ctx) {
    // Owned by this loop alone: one updater per tenant with updates queued or in flight. An
    // updater ends once its queue is empty; its entry is dropped with the next new one.
    let mut updaters: HashMap<String, flume::Sender<IndexJob>> = HashMap::new();
    let slots = Slots::new(MAX_JOBS_IN_FLIGHT);
    while let Ok(job) = rx.recv_async().await {
        match job {
            Job::Op(f) => {
                let running = Running::new(slots.take().await);
                let task = f(ctx.clone());
                tokio::spawn(async move {
                    task.await;
                    drop(running);
                });
            }
            Job::Index { tenant, update, reply } => {
                let job = IndexJob { update, reply };
                let sent = match updaters.get(&tenant) {
                    Some(tx) => tx.try_send(job),
                    None => Err(flume::TrySendError::Disconnected(job)),
                };
                let job = match sent {
                    Ok(()) => {
                        stats::INDEX_UPDATES_QUEUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Err(flume::TrySendError::Full(job)) => {
                        stats::INDEX_UPDATES_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = job.reply.send(Err(StoreError::Unavailable(format!(
                            "{MAX_INDEX_UPDATES_QUEUED} bucket index updates of tenant {tenant} are queued already; retry"
                        ))));
                        continue;
                    }
                    // No updater, or it ended (nothing was queued): a new one takes over.
                    Err(flume::TrySendError::Disconnected(job)) => job,
                };
                updaters.retain(|_, tx| !tx.is_disconnected());
                let (tx, rx) = flume::bounded(MAX_INDEX_UPDATES_QUEUED);
                let _ = tx.try_send(job);
                stats::INDEX_UPDATES_QUEUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(index_updater(ctx.clone(), tenant.clone(), rx));
                updaters.insert(tenant, tx);
            }
        }
    }
}

struct IndexJob {
    update: IndexUpdate,
    reply: flume::Sender<Result<(), StoreError>>,
}

/// This process's only writer of `<tenant>/bucket-index.json`. Takes every update queued so
/// far, applies them in arrival order to the stored index, writes it once (read, applied and
/// written again should another process have changed it meanwhile: `Ctx::update_index`) and
/// answers them all with the outcome of that write. Ends once nothing is queued: the store
/// thread's loop starts a new updater for the tenant's next update (it runs on the same
/// thread, so it never finds this one's queue empty and then sends to it after it ended).
async fn index_updater(ctx: Ctx, tenant: String, rx: flume::Receiver<IndexJob>) {
    while let Ok(first) = rx.try_recv() {
        let mut batch = vec![first];
        batch.extend(rx.drain());
        stats::INDEX_UPDATES_QUEUED.fetch_sub(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let result = ctx
            .update_index(&tenant, |idx| {
                for job in &batch {
                    job.update.apply(idx);
                }
            })
            .await;
        if let Err(e) = &result {
            tracing::warn!(tenant, error = %e, "bucket index update failed");
        }
        for job in batch {
            let _ = job.reply.send(result.clone());
        }
    }
}
