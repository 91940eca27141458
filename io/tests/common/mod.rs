//! Checks shared by the store tests: the same calls against every backend, driven from
//! monoio executors (the cores' kind), never from tokio, to show that the store thread is
//! the only place a tokio runtime is needed.
#![allow(dead_code)]

use bytes::Bytes;
use kiln_io::store::bucket_index::BlockRef;
use kiln_io::store::{Store, StoreError};
use std::future::Future;

pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("building a monoio runtime");
    rt.block_on(f)
}

pub fn block(id: &str, min: i64, max: i64) -> BlockRef {
    BlockRef {
        block_id: id.into(),
        min_time: min,
        max_time: max,
        uploaded_at: 0,
        compaction_level: 1,
        size_bytes: 10,
        files: vec![("meta.json".into(), 10)],
        ..Default::default()
    }
}

/// put, get, ranges, size, delete and not-found on one object path.
pub fn objects(store: &Store) {
    block_on(async {
        let path = "t-obj/01J0000000000000000000000A/data.bin".to_string();
        let data: Bytes = (0..=255u8).cycle().take(100_000).collect::<Vec<u8>>().into();
        store.put(path.clone(), data.clone()).await.unwrap();
        assert_eq!(store.get(path.clone()).await.unwrap(), data);
        assert_eq!(store.size(path.clone()).await.unwrap(), 100_000);
        assert_eq!(store.get_range(path.clone(), 10..20).await.unwrap(), data.slice(10..20));
        assert_eq!(store.get_range(path.clone(), 99_990..100_000).await.unwrap(), data.slice(99_990..));
        assert_eq!(store.get_range(path.clone(), 5..5).await.unwrap(), Bytes::new());
        let ranges = vec![90_000..90_100, 0..4, 3..3, 50..60, 52..58];
        let got = store.get_ranges(path.clone(), ranges.clone()).await.unwrap();
        assert_eq!(got.len(), ranges.len());
        for (r, b) in ranges.iter().zip(&got) {
            assert_eq!(b, &data.slice(r.start as usize..r.end as usize), "range {r:?}");
        }
        // A range past the end is refused rather than answered short.
        let e = store.get_range(path.clone(), 99_995..100_005).await.unwrap_err();
        assert!(matches!(e, StoreError::Other(_)), "{e}");
        assert!(e.to_string().contains("data.bin"), "{e}");

        // Replacing an object.
        store.put(path.clone(), Bytes::from_static(b"small")).await.unwrap();
        assert_eq!(store.get(path.clone()).await.unwrap(), Bytes::from_static(b"small"));

        store.delete(path.clone()).await.unwrap();
        // Deleting again is no error (retried cleanups).
        store.delete(path.clone()).await.unwrap();
        for e in [
            store.get(path.clone()).await.unwrap_err(),
            store.size(path.clone()).await.unwrap_err(),
            store.get_range(path.clone(), 0..1).await.unwrap_err(),
        ] {
            assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&path) && text.contains(&store.describe()), "{text}");
        }

        // Paths that cannot name an object.
        assert!(store.get(String::new()).await.is_err());
        assert!(store.get("a//b".into()).await.is_err());
        assert!(store.put("a/../b".into(), Bytes::new()).await.is_err());
    });
}

/// Many concurrent `add_block`s of one tenant, from several threads each running a monoio
/// executor with many tasks: every block must end up in the index (the store thread
/// serializes a tenant's read-modify-writes).
pub fn concurrent_index_updates(store: &Store, tenant: &str, threads: usize, per_thread: usize) {
    assert!(block_on(store.read_bucket_index(tenant.to_string())).unwrap().blocks.is_empty());
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            let tenant = tenant.to_string();
            s.spawn(move || {
                block_on(async move {
                    let mut tasks = Vec::new();
                    for i in 0..per_thread {
                        let store = store.clone();
                        let tenant = tenant.clone();
                        tasks.push(monoio::spawn(async move {
                            let id = format!("01J{t:03}{i:020}");
                            let n = (t * per_thread + i) as i64;
                            store.add_block(tenant, block(&id, n * 1000, n * 1000 + 999)).await
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                })
            });
        }
    });
    let idx = block_on(store.read_bucket_index(tenant.to_string())).unwrap();
    assert_eq!(idx.blocks.len(), threads * per_thread, "every concurrent add_block is in the index");
    assert!(idx.updated_at > 0);
    for t in 0..threads {
        for i in 0..per_thread {
            let id = format!("01J{t:03}{i:020}");
            let b = idx.block(&id).unwrap_or_else(|| panic!("block {id} missing"));
            assert!(b.uploaded_at > 0, "uploaded_at filled in");
        }
    }
    // The blocking variant, as the main thread uses it at start, reads the same index.
    assert_eq!(store.blocking_read_bucket_index(tenant).unwrap(), idx);
}

/// add_block replaces by id; remove_block; tenants lists exactly the tenants with an index.
pub fn index_and_tenants(store: &Store) {
    block_on(async {
        let t = "tenant-a".to_string();
        store.add_block(t.clone(), block("01JA", 0, 10)).await.unwrap();
        store.add_block(t.clone(), block("01JB", 5, 20)).await.unwrap();
        let mut b = block("01JA", 0, 12);
        b.compaction_level = 2;
        b.uploaded_at = 42;
        store.add_block(t.clone(), b.clone()).await.unwrap();
        let idx = store.read_bucket_index(t.clone()).await.unwrap();
        assert_eq!(idx.blocks.len(), 2);
        assert_eq!(idx.block("01JA"), Some(&b));
        store.remove_block(t.clone(), "01JB".into()).await.unwrap();
        assert_eq!(store.read_bucket_index(t.clone()).await.unwrap().blocks, vec![b]);
        // The index is plain JSON at <tenant>/bucket-index.json.
        let raw = store.get(format!("{t}/bucket-index.json")).await.unwrap();
        assert!(raw.starts_with(b"{\"version\":1"), "{raw:?}");

        // A tenant with block files but no index is not a tenant yet.
        store.put("tenant-b/01JC/meta.json".into(), Bytes::from_static(b"{}")).await.unwrap();
        store.add_block("tenant-c".into(), block("01JD", 0, 1)).await.unwrap();
        let tenants = store.tenants().await.unwrap();
        assert!(tenants.contains(&"tenant-a".to_string()) && tenants.contains(&"tenant-c".to_string()), "{tenants:?}");
        assert!(!tenants.contains(&"tenant-b".to_string()), "{tenants:?}");
        assert!(tenants.windows(2).all(|w| w[0] < w[1]), "sorted: {tenants:?}");

        // Tenant and block ids must be one path segment.
        assert!(store.add_block("a/b".into(), block("01JE", 0, 1)).await.is_err());
        assert!(store.add_block("t".into(), block("x/y", 0, 1)).await.is_err());
        assert!(store.read_bucket_index("..".into()).await.is_err());
    });
    assert_eq!(store.blocking_tenants().unwrap(), block_on(store.tenants()).unwrap());
}

/// Several independent writers of one tenant's index, as the ingesters of a cluster are:
/// each `Store` has its own store thread and client (its own process, in production). In
/// each round every writer adds a block of its own at about the same moment (replicas cut
/// their heads together); afterwards every block of every round must be listed. Without a
/// guard against concurrent read-modify-writes, one writer's update overwrites another's.
pub fn concurrent_writers(stores: &[Store], tenant: &str, rounds: usize) {
    let id = |w: usize, r: usize| format!("01W{w:03}{r:020}");
    let barrier = std::sync::Barrier::new(stores.len());
    std::thread::scope(|s| {
        for (w, store) in stores.iter().enumerate() {
            let barrier = &barrier;
            s.spawn(move || {
                block_on(async move {
                    for r in 0..rounds {
                        // Blocking the executor is fine: this thread runs nothing else.
                        barrier.wait();
                        let n = (r * 1000 + w) as i64;
                        store.add_block(tenant.to_string(), block(&id(w, r), n * 1000, n * 1000 + 999)).await.unwrap();
                    }
                })
            });
        }
    });
    for store in stores {
        let idx = block_on(store.read_bucket_index(tenant.to_string())).unwrap();
        let missing: Vec<String> = (0..rounds)
            .flat_map(|r| (0..stores.len()).map(move |w| id(w, r)))
            .filter(|b| idx.block(b).is_none())
            .collect();
        let total = rounds * stores.len();
        assert!(
            missing.is_empty(),
            "{} of {total} blocks lost to concurrent writers, as {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(idx.blocks.len(), rounds * stores.len());
    }
}

/// `put_file` of local files of 0 bytes, less than a part, exactly two parts and two parts
/// and a bit: each object reads back as its file, and replaces what was there.
pub fn put_file(store: &Store, scratch: &std::path::Path) {
    std::fs::create_dir_all(scratch).unwrap();
    let part = kiln_io::store::PART;
    for (i, len) in [0, 1000, 2 * part, 2 * part + 12345].into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j * 31 % 251) as u8 ^ i as u8).collect();
        let local = scratch.join(format!("file-{i}"));
        std::fs::write(&local, &data).unwrap();
        let path = format!("t/01JPUTFILE/{i}");
        block_on(store.put(path.clone(), bytes::Bytes::from_static(b"old"))).unwrap();
        block_on(store.put_file(path.clone(), local)).unwrap();
        let got = block_on(store.get(path)).unwrap();
        assert!(got[..] == data[..], "file {i} of {len} bytes read back as {} bytes", got.len());
    }
    // A missing local file is an error, and the object is left as it was.
    block_on(store.put("t/01JPUTFILE/x".into(), bytes::Bytes::from_static(b"kept"))).unwrap();
    assert!(block_on(store.put_file("t/01JPUTFILE/x".into(), scratch.join("missing"))).is_err());
    assert_eq!(&block_on(store.get("t/01JPUTFILE/x".into())).unwrap()[..], b"kept");
}
