//! The S3 backend against a real S3-compatible server: moto's (`pip install 'moto[server]'`),
//! started on a free port for this test and killed at the end, panic or not.
mod common;
#[path = "common/moto.rs"]
mod moto;

use kiln_io::store::{Backend, Store};
use moto::Moto;

const BUCKET: &str = "kiln-test";

fn start(moto: &Moto) -> Store {
    Store::start(Backend::S3 {
        // Host only, as Pyroscope configs give it: `insecure` picks http.
        endpoint: format!("127.0.0.1:{}", moto.port),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        insecure: true,
        force_path_style: true,
    })
    .unwrap()
}

#[test]
fn s3_backend_against_moto() {
    let moto = Moto::with_bucket(BUCKET);
    let store = start(&moto);
    assert_eq!(store.describe(), format!("s3 bucket {BUCKET} at http://127.0.0.1:{}", moto.port));
    assert!(store.blocking_tenants().unwrap().is_empty());
    common::objects(&store);
    common::concurrent_index_updates(&store, "busy", 4, 10);
    common::index_and_tenants(&store);
    assert_eq!(store.blocking_tenants().unwrap(), ["busy", "tenant-a", "tenant-c"]);
    // The index is where a Pyroscope-style reader looks for it.
    let raw = common::block_on(store.get("busy/bucket-index.json".into())).unwrap();
    assert_eq!(kiln_io::store::bucket_index::BucketIndex::from_json(&raw).unwrap().blocks.len(), 40);
    let scratch = std::env::temp_dir().join(format!("kiln-s3-put-file-{}", std::process::id()));
    common::put_file(&store, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn concurrent_writers_from_several_processes() {
    // Four stores, each with its own client: four kiln processes writing one tenant's index.
    // Their conditional writes (If-Match / If-None-Match) conflict, and are retried.
    let moto = Moto::with_bucket(BUCKET);
    let stores: Vec<Store> = (0..4).map(|_| start(&moto)).collect();
    common::concurrent_writers(&stores, "shared", 15);
    assert_eq!(stores[0].blocking_tenants().unwrap(), ["shared"]);
    // Writers that cut together do collide: the retries ran (and are counted).
    let mut m = String::new();
    kiln_io::store::render_metrics(&mut m);
    let conflicts: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("kiln_store_index_conflicts_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no kiln_store_index_conflicts_total in {m}"));
    assert!(conflicts > 0, "no conflicting index writes among {} writers", stores.len());
}
