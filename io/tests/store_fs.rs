//! The filesystem backend in a temporary directory, driven from monoio executors.
mod common;

use bytes::Bytes;
use kiln_io::store::{Backend, Store, StoreError};
use std::path::PathBuf;

/// A fresh directory, removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("kiln-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &TempDir) -> Store {
    // The directory does not exist yet: start creates it.
    let store = Store::start(Backend::Filesystem { dir: dir.0.join("blocks") }).unwrap();
    assert!(dir.0.join("blocks").is_dir());
    assert_eq!(store.describe(), format!("filesystem {}", dir.0.join("blocks").display()));
    store
}

#[test]
fn objects() {
    let dir = TempDir::new("objects");
    let store = start(&dir);
    common::objects(&store);
    // Objects are plain files under the directory; deleting the last file of a block
    // removes the block's directory.
    common::block_on(store.put("t/01JX/a".into(), Bytes::from_static(b"abc"))).unwrap();
    assert_eq!(std::fs::read(dir.0.join("blocks/t/01JX/a")).unwrap(), b"abc");
    common::block_on(store.delete("t/01JX/a".into())).unwrap();
    assert!(!dir.0.join("blocks/t/01JX").exists());
}

#[test]
fn put_file_plain_and_written_behind() {
    let dir = TempDir::new("put-file");
    // The cores' store: a multipart upload into the directory.
    common::put_file(&start(&dir), &dir.0.join("scratch"));
    // The compactor's: copied window by window.
    let bg = Store::start_background(Backend::Filesystem { dir: dir.0.join("blocks") }, "").unwrap();
    common::put_file(&bg, &dir.0.join("scratch"));
    // No staged file is left beside the objects.
    let names: Vec<String> = std::fs::read_dir(dir.0.join("blocks/t/01JPUTFILE"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
}

#[test]
fn concurrent_index_updates() {
    let dir = TempDir::new("concurrent");
    let store = start(&dir);
    common::concurrent_index_updates(&store, "busy", 4, 50);
}

#[test]
fn concurrent_writers_from_several_processes() {
    // Four stores on one directory: four kiln processes sharing it, as the cluster tests run.
    let dir = TempDir::new("writers");
    let stores: Vec<Store> = (0..4).map(|_| start(&dir)).collect();
    common::concurrent_writers(&stores, "shared", 40);
    // The lock file beside the index is no object anyone takes for a block or an index: a
    // tenant whose first index write never happened (only its lock file exists) is no
    // tenant, and the blocks are exactly those indexed.
    let lock = dir.0.join("blocks/shared").join(kiln_io::store::index_write::LOCK_FILE);
    assert!(lock.exists());
    std::fs::create_dir_all(dir.0.join("blocks/ghost")).unwrap();
    std::fs::write(dir.0.join("blocks/ghost").join(kiln_io::store::index_write::LOCK_FILE), b"").unwrap();
    assert_eq!(stores[0].blocking_tenants().unwrap(), ["shared"]);
    assert_eq!(stores[1].blocking_read_bucket_index("ghost").unwrap().blocks.len(), 0);
}

#[test]
fn index_and_tenants() {
    let dir = TempDir::new("tenants");
    let store = start(&dir);
    assert!(store.blocking_tenants().unwrap().is_empty());
    assert!(store.blocking_read_bucket_index("nobody").unwrap().blocks.is_empty());
    common::index_and_tenants(&store);
    assert_eq!(store.blocking_tenants().unwrap(), ["tenant-a", "tenant-c"]);
}

#[test]
fn corrupt_index_is_an_error_and_kept() {
    let dir = TempDir::new("corrupt");
    let store = start(&dir);
    common::block_on(async {
        store.put("t/bucket-index.json".into(), Bytes::from_static(b"{not json")).await.unwrap();
        let e = store.read_bucket_index("t".into()).await.unwrap_err();
        assert!(e.to_string().contains("t/bucket-index.json"), "{e}");
        assert!(store.add_block("t".into(), common::block("01JA", 0, 1)).await.is_err());
        // Not overwritten: an operator can still look at it.
        assert_eq!(store.get("t/bucket-index.json".into()).await.unwrap(), Bytes::from_static(b"{not json"));
    });
}

#[test]
fn several_blocks_are_indexed_together_or_not_at_all() {
    let dir = TempDir::new("add-blocks");
    let store = start(&dir);
    common::block_on(async {
        store.add_block("t".into(), common::block("01JA", 0, 1)).await.unwrap();
        // One bad id refuses the whole update: the other block is not listed either.
        let bad = store.add_blocks("t".into(), vec![common::block("01JB", 1, 2), common::block("../x", 1, 2)]).await;
        assert!(bad.is_err());
        let ids = |idx: kiln_io::store::bucket_index::BucketIndex| {
            idx.blocks.iter().map(|b| b.block_id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(store.read_bucket_index("t".into()).await.unwrap()), ["01JA"]);
        store.add_blocks("t".into(), vec![common::block("01JB", 1, 2), common::block("01JC", 2, 3)]).await.unwrap();
        let mut got = ids(store.read_bucket_index("t".into()).await.unwrap());
        got.sort();
        assert_eq!(got, ["01JA", "01JB", "01JC"]);
    });
}

#[test]
fn handles_are_shared_across_threads() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<Store>();
    let dir = TempDir::new("handles");
    let store = start(&dir);
    // The blocking calls work from a plain thread; the async ones from any executor.
    let s2 = store.clone();
    std::thread::spawn(move || s2.blocking_tenants().unwrap()).join().unwrap();
    drop(store);
}

#[test]
fn bad_config_fails_at_start() {
    let dir = TempDir::new("badcfg");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    let e = Store::start(Backend::Filesystem { dir: dir.0.join("file/blocks") }).unwrap_err();
    assert!(matches!(e, StoreError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("file/blocks"), "{e}");

    let s3 = |bucket: &str, key: &str, secret: &str| Backend::S3 {
        endpoint: "http://127.0.0.1:1".into(),
        bucket: bucket.into(),
        region: String::new(),
        access_key_id: key.into(),
        secret_access_key: secret.into(),
        insecure: true,
        force_path_style: true,
    };
    let e = Store::start(s3("", "k", "s")).unwrap_err();
    assert!(e.to_string().contains("bucket"), "{e}");
    let e = Store::start(s3("b", "k", "")).unwrap_err();
    assert!(e.to_string().contains("secret access key"), "{e}");
    // Secrets never show in Debug or in the description.
    let b = s3("b", "key-id", "very-secret");
    assert!(!format!("{b:?}").contains("very-secret"));
    assert!(!b.describe().contains("very-secret"));
    assert_eq!(b.describe(), "s3 bucket b at http://127.0.0.1:1");
    // A well-formed S3 config starts without contacting the server.
    let store = Store::start(s3("b", "k", "s")).unwrap();
    assert_eq!(store.describe(), "s3 bucket b at http://127.0.0.1:1");

    let e = Store::start(Backend::Gcs { bucket: String::new(), service_account_path: String::new() }).unwrap_err();
    assert!(e.to_string().contains("bucket"), "{e}");
    let e = Store::start(Backend::Azure {
        account_name: "acct".into(),
        account_key: String::new(),
        container: String::new(),
        endpoint: String::new(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("container"), "{e}");
}

#[test]
fn a_prefix_puts_every_object_under_it() {
    let dir = std::env::temp_dir().join(format!("kiln-store-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::start_with_prefix(Backend::Filesystem { dir: dir.clone() }, "cluster1").unwrap();
    assert!(store.describe().ends_with("under cluster1/"), "{}", store.describe());
    common::block_on(store.put("t/01ABC/meta.json".into(), Bytes::from_static(b"{}"))).unwrap();
    assert!(dir.join("cluster1/t/01ABC/meta.json").exists());
    assert_eq!(store.local_path("t/01ABC/meta.json").unwrap(), dir.join("cluster1/t/01ABC/meta.json"));
    assert_eq!(&common::block_on(store.get("t/01ABC/meta.json".into())).unwrap()[..], b"{}");
    let _ = std::fs::remove_dir_all(&dir);
}
