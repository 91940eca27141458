//! Rewriting `<tenant>/bucket-index.json` without losing a concurrent writer's update.
//!
//! Within one process, a tenant's one updater (see `super::serve`) applies its updates one at
//! a time. But in a cluster several processes write the same tenant's index (each ingester,
//! a compactor), at about the same moment (replicas cut their heads together), each by
//! reading the index, applying its edits and writing the whole object back. Two such
//! read-modify-writes must never interleave, or the later write drops the earlier one's
//! blocks. So every rewrite goes through [`Ctx::update_index`]:
//!
//! - **S3, GCS, Azure**: optimistic concurrency. The index is read with its version (ETag,
//!   or GCS's generation), edited, and written only if it is still that version
//!   (`PutMode::Update`; `PutMode::Create` where there was no index yet). A write refused
//!   because another writer got there first is retried from a fresh read, with the same
//!   edits (they are data, applied anew each attempt, and idempotent: adding a listed block
//!   replaces it, removing a missing one does nothing), at most [`MAX_ATTEMPTS`] times with
//!   a jittered backoff; past that the update fails as retryable (the caller retries it
//!   later). Each conflict counts in `kiln_store_index_conflicts_total`.
//! - **The local filesystem** (`LocalFileSystem` cannot write conditionally): several
//!   processes on one machine may share the directory. The read-modify-write holds an
//!   exclusive `flock` on `<dir>/<tenant>/bucket-index.json.lock` ([`LOCK_FILE`]) from the
//!   read to the end of the write. The lock file is never deleted (a new file would be
//!   another lock). Readers ignore it: a tenant is a top-level prefix holding a
//!   `bucket-index.json`, and a block is a prefix under the tenant, never a file beside the
//!   index.
use super::bucket_index::BucketIndex;
use super::{stats, unix_now, Ctx, StoreError};
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::future::Future;
use std::time::Duration;

/// Attempts at a conditional index write before the update fails as retryable. Conflicts
/// come from the other writers of one tenant (its ingesters' cuts, a compactor), a handful
/// at once: each round of conflicts lets one of them through.
pub const MAX_ATTEMPTS: u32 = 20;

/// The pause before the first retry; it doubles with each one up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The lock file beside a tenant's index on the filesystem backend.
pub const LOCK_FILE: &str = "bucket-index.json.lock";

/// What one read-apply-write attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written<T> {
    Done(T),
    /// Another writer changed (or created) the object since it was read: nothing written.
    Conflict,
}

/// What an edit of a stored object (`Ctx::update_object`, `Store::update`) decided: write
/// these bytes, or leave the object as it is (unchanged, or the edit refused), with the
/// edit's answer either way.
pub enum Edit<T> {
    Write(bytes::Bytes, T),
    Keep(T),
}

impl Ctx {
    /// Applies `edit` to the tenant's stored index and writes it back, such that no other
    /// writer's update, in this process or another, is lost between the read and the write
    /// (see the module's doc). `edit` may run several times, each on a fresh read. A
    /// corrupt index is an error, never overwritten.
    pub(super) async fn update_index(
        &self,
        tenant: &str,
        edit: impl Fn(&mut BucketIndex) + Sync,
    ) -> Result<(), StoreError> {
        let path = BucketIndex::path(tenant);
        self.update_object(&path, |stored| {
            let idx = match stored {
                Some(bytes) => BucketIndex::from_json(bytes)
                    .map_err(|e| StoreError::Other(format!("{path} in {}: {e}", self.describe)))?,
                None => BucketIndex::default(),
            };
            Ok(Edit::Write(edited(idx, &edit), ()))
        })
        .await
    }

    /// Reads the object at `path` (`None` where there is none), hands it to `edit` and
    /// writes back what `edit` says, such that no other writer's update of that object, in
    /// this process or another, is lost between the read and the write: a conditional write
    /// retried from a fresh read on a conflict, or on the filesystem a `flock` on
    /// `<path>.lock` held from the read to the end of the write (see the module's doc).
    /// `edit` may run several times, each on a fresh read; its last answer is returned. An
    /// error from `edit` ends the update with nothing written.
    pub(super) async fn update_object<T>(
        &self,
        path: &str,
        edit: impl Fn(Option<&[u8]>) -> Result<Edit<T>, StoreError> + Sync,
    ) -> Result<T, StoreError> {
        let Some(dir) = &self.local_dir else {
            return retry_conflicts(path, &self.describe, backoff, || self.conditional_update(path, &edit)).await;
        };
        let lock_path = dir.join(format!("{path}.lock"));
        let _lock = lock_local(lock_path.clone())
            .await
            .map_err(|e| super::io_error(format!("locking {} in {}: {e}", lock_path.display(), self.describe), &e))?;
        let stored = match self.get(path).await {
            Ok(bytes) => Some(bytes),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        match edit(stored.as_deref())? {
            Edit::Write(bytes, out) => {
                self.put(path, bytes).await?;
                Ok(out)
            }
            Edit::Keep(out) => Ok(out),
        }
    }

    /// One attempt: read with the version, edit, write if the version is still current.
    async fn conditional_update<T>(
        &self,
        path: &str,
        edit: &impl Fn(Option<&[u8]>) -> Result<Edit<T>, StoreError>,
    ) -> Result<Written<T>, StoreError> {
        let (stored, version) = match self.get_with_meta(path).await {
            Ok((bytes, meta)) => (Some(bytes), Some(UpdateVersion { e_tag: meta.e_tag, version: meta.version })),
            Err(StoreError::NotFound(_)) => (None, None),
            Err(e) => return Err(e),
        };
        let mode = match version {
            None => PutMode::Create,
            Some(UpdateVersion { e_tag: None, version: None }) => {
                return Err(StoreError::Other(format!(
                    "{path} in {}: the backend gave no ETag or version, so the object cannot be rewritten safely",
                    self.describe
                )));
            }
            Some(v) => PutMode::Update(v),
        };
        let (bytes, out) = match edit(stored.as_deref())? {
            Edit::Write(bytes, out) => (bytes, out),
            Edit::Keep(out) => return Ok(Written::Done(out)),
        };
        let p = self.path(path)?;
        match self.store.put_opts(&p, PutPayload::from_bytes(bytes), PutOptions::from(mode)).await {
            Ok(_) => Ok(Written::Done(out)),
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                Ok(Written::Conflict)
            }
            Err(e) => Err(self.err("put", path, e)),
        }
    }
}

/// The index after `edit`, stamped with the time, as the bytes to store.
fn edited(mut idx: BucketIndex, edit: &impl Fn(&mut BucketIndex)) -> bytes::Bytes {
    edit(&mut idx);
    idx.updated_at = unix_now();
    idx.to_json().into()
}

/// Runs `attempt` until it writes, at most [`MAX_ATTEMPTS`] times, pausing `pause(n)` after
/// the `n`th conflict. An error ends it at once (the object store client has retried the
/// request itself). Every conflict counts in `kiln_store_index_conflicts_total`.
async fn retry_conflicts<T, F, Fut>(
    path: &str,
    describe: &str,
    pause: impl Fn(u32) -> Duration,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Written<T>, StoreError>>,
{
    for n in 1..=MAX_ATTEMPTS {
        if let Written::Done(out) = attempt().await? {
            return Ok(out);
        }
        stats::INDEX_CONFLICTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(path, attempt = n, "object changed by another writer; reading it again");
        if n < MAX_ATTEMPTS {
            tokio::time::sleep(pause(n)).await;
        }
    }
    Err(StoreError::Unavailable(format!(
        "{path} in {describe}: another writer changed it before each of {MAX_ATTEMPTS} rewrites (contention on the object); retry"
    )))
}

/// The pause after the `n`th conflict (from 1): [`BACKOFF_FIRST`] doubling up to
/// [`BACKOFF_MAX`], of which a random half, so that writers that collided spread out.
fn backoff(n: u32) -> Duration {
    use std::hash::BuildHasher;
    let step = BACKOFF_FIRST.saturating_mul(1 << n.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    let half = step / 2;
    // A fresh `RandomState` is randomly keyed: enough randomness for a jitter.
    let r = std::collections::hash_map::RandomState::new().hash_one(n);
    half + half.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// Takes the exclusive lock on the file at `path` (created, with its directory, if missing),
/// waiting for any other holder; held until the returned file is dropped. Blocks, so it
/// runs on tokio's blocking pool, never on the store thread itself.
async fn lock_local(path: std::path::PathBuf) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        // Deleting a block's last file removes empty directories up to the root
        // (`with_automatic_cleanup`): the tenant's may vanish between creating it and
        // opening the file in it. A few tries; once the file exists the directory stays.
        let mut tries = 0;
        loop {
            match crate::lock_file::lock(&path, crate::lock_file::Wait::Yes) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                r => return r,
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::cell::Cell;

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    fn no_pause(_: u32) -> Duration {
        Duration::ZERO
    }

    #[test]
    fn conflicts_are_retried_until_a_write_wins() {
        let calls = Cell::new(0);
        let before = stats::INDEX_CONFLICTS.load(std::sync::atomic::Ordering::Relaxed);
        let r = run(retry_conflicts("t/bucket-index.json", "test", no_pause, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Ok(if n < 4 { Written::Conflict } else { Written::Done(()) }) }
        }));
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls.get(), 4, "three conflicts, then the write");
        assert!(stats::INDEX_CONFLICTS.load(std::sync::atomic::Ordering::Relaxed) >= before + 3);
    }

    #[test]
    fn endless_conflicts_give_up_retryable() {
        let calls = Cell::new(0);
        let pauses = Cell::new(0);
        let r = run(retry_conflicts(
            "t/bucket-index.json",
            "test",
            |_| {
                pauses.set(pauses.get() + 1);
                Duration::ZERO
            },
            || {
                calls.set(calls.get() + 1);
                async { Ok(Written::<()>::Conflict) }
            },
        ));
        let e = r.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Retryable);
        assert!(e.to_string().contains("t/bucket-index.json") && e.to_string().contains("contention"), "{e}");
        assert_eq!(calls.get(), MAX_ATTEMPTS);
        assert_eq!(pauses.get(), MAX_ATTEMPTS - 1, "no pause after the last attempt");
    }

    #[test]
    fn an_error_ends_the_retries_at_once() {
        let calls = Cell::new(0);
        let r = run(retry_conflicts("t/bucket-index.json", "test", no_pause, || {
            calls.set(calls.get() + 1);
            async { Err::<Written<()>, _>(StoreError::Denied("no".into())) }
        }));
        assert!(matches!(r, Err(StoreError::Denied(_))), "{r:?}");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        for n in 1..=MAX_ATTEMPTS {
            let step = BACKOFF_FIRST.saturating_mul(1 << (n - 1).min(16)).min(BACKOFF_MAX);
            for _ in 0..50 {
                let d = backoff(n);
                assert!(d >= step / 2 && d <= step, "retry {n}: {d:?} outside {:?}..={step:?}", step / 2);
            }
        }
        assert_eq!(BACKOFF_FIRST.saturating_mul(1 << 16).min(BACKOFF_MAX), BACKOFF_MAX);
        let distinct: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(8)).collect();
        assert!(distinct.len() > 1, "jittered: {distinct:?}");
    }

    #[test]
    fn the_local_lock_excludes_another_holder() {
        let dir = std::env::temp_dir().join(format!("kiln-index-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("t").join(LOCK_FILE);
        let held = run(lock_local(path.clone())).unwrap();
        assert!(path.exists(), "created with its directory");
        // Another open file description (as another process would have) cannot take it.
        let e = crate::lock_file::lock(&path, crate::lock_file::Wait::No).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        drop(held);
        let again = crate::lock_file::lock(&path, crate::lock_file::Wait::No).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
