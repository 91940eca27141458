//! Blocks: heads cut into blocks in object storage answer every query exactly as the head
//! did, survive restarts (with another number of cores) without being counted twice, and a
//! `kill -9` in the middle of block cuts loses nothing that was acknowledged.
mod common;
#[path = "../io/tests/common/moto.rs"]
mod moto;

use common::snapshot::{assert_same, flush, push_fixture as push, snapshot};
use common::*;

#[test]
fn every_fixture_reads_back_the_same_from_blocks_and_after_restarts() {
    let mut flags = FIXTURE_FLAGS.to_vec();
    flags.push("-shards=2");
    let k = Kiln::start(&flags);
    for (i, path) in golden_pprofs().iter().enumerate() {
        push(k.port, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    let head = snapshot(k.port);
    assert_eq!(metric_sum(k.port, "kiln_blocks_owned"), 0.0);

    flush(k.port);
    assert_eq!(metric_sum(k.port, "kiln_head_profiles"), 0.0, "the head still holds profiles after a flush");
    assert!(metric_sum(k.port, "kiln_blocks_owned") >= 1.0);
    assert_same(&head, &snapshot(k.port), "read from blocks");
    let index = k.data.join("blocks/anonymous/bucket-index.json");
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let ids: Vec<String> =
        idx["blocks"].as_array().unwrap().iter().map(|b| b["block_id"].as_str().unwrap().to_string()).collect();
    assert!(!ids.is_empty());
    for id in &ids {
        for f in ["meta.json", "index.tsdb", "profiles.parquet", "symbols.symdb"] {
            assert!(k.data.join("blocks/anonymous").join(id).join(f).exists(), "{id}/{f} missing");
        }
    }

    // Crash, restart with another number of cores: the blocks are re-owned through the
    // ring and the WAL replay skips what they hold.
    let data = k.kill();
    let k = Kiln::start_in(data, &[&flags[..flags.len() - 1], &["-shards=3"]].concat());
    assert_same(&head, &snapshot(k.port), "after kill -9 and a restart with 3 cores");
    assert_eq!(metric_sum(k.port, "kiln_head_profiles"), 0.0, "replay put block data back into the head");

    // New data lands in the head next to the blocks; both count.
    push(k.port, "svc-new", std::fs::read(testdata("pprof/google-pprof/sample.cpu")).unwrap());
    let mixed = snapshot(k.port);
    assert_ne!(mixed.get("services"), head.get("services"));
    flush(k.port);
    assert_same(&mixed, &snapshot(k.port), "head and blocks, then blocks only");
    let data = k.kill();
    assert!(segment_files(&data).len() <= 3 * 2, "WAL segments covered by blocks were not deleted");
}

/// Pushes from 4 threads while heads are cut every ~100 ms, stops kiln with `stop` once
/// several blocks are written, restarts it (with the same 2 cores, which adopts the WAL in
/// place, then 3 and 2 again, which rewrite it) and checks that every acknowledged push is
/// back and each push that made it is counted once.
fn cuts_under_load(stop: impl FnOnce(Kiln) -> std::path::PathBuf) {
    let k = Kiln::start(&["-ingester.max-block-duration=100ms", "-shards=2"]);
    let pushers = Pushers::start(k.port, "cut");
    while pushers.acked() < 600 || metric_sum(k.port, "kiln_blocks_written_total") < 3.0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let data = stop(k);
    let acked = pushers.stop();
    assert!(data.join("blocks/anonymous/bucket-index.json").exists());

    for cores in ["-shards=2", "-shards=3", "-shards=2"] {
        let k = Kiln::start_in(data.clone(), &["-ingester.max-block-duration=1h", cores]);
        let (seqs, total) = seqs_and_total(k.port, "cut");
        assert!(acked.is_subset(&seqs), "lost {} acknowledged pushes", acked.difference(&seqs).count());
        // Each push that made it is counted once: in a block or in the head, not both.
        let want: i64 = seqs.iter().map(|i| *i as i64 + 1).sum();
        assert_eq!(total, want, "profiles counted twice or partly lost");
        let _ = k.kill();
    }
}

#[test]
fn kill_9_during_block_cuts_loses_nothing_and_counts_nothing_twice() {
    // The kill lands among cuts, uploads and WAL deletions.
    cuts_under_load(|k| k.kill());
}

#[test]
fn sigterm_during_block_cuts_loses_nothing_and_counts_nothing_twice() {
    // A clean stop replays the WAL left by the cuts: pushes acknowledged while a cut was
    // starting must be in the segments the cut did not delete.
    cuts_under_load(|k| {
        let status = std::process::Command::new("kill").args(["-TERM", &k.pid().to_string()]).status().unwrap();
        assert!(status.success());
        let (data, code) = k.wait_exit();
        assert_eq!(code, Some(0));
        data
    });
}

#[test]
fn blocks_on_s3_survive_a_restart() {
    let moto = moto::Moto::with_bucket("kiln-blocks");
    let endpoint = format!("-storage.s3.endpoint=127.0.0.1:{}", moto.port);
    let mut flags = FIXTURE_FLAGS.to_vec();
    flags.extend([
        "-storage.backend=s3",
        &endpoint,
        "-storage.s3.bucket-name=kiln-blocks",
        "-storage.s3.access-key-id=test",
        "-storage.s3.secret-access-key=test",
        "-storage.s3.insecure=true",
        "-storage.prefix=cluster1",
    ]);
    let k = Kiln::start(&flags);
    for (i, rel) in
        ["pprof/google-pprof/sample.cpu", "pprof/pyroscope/pkg-pprof/heap", "pprof/pyroscope/pkg-pprof/profile_java"]
            .iter()
            .enumerate()
    {
        push(k.port, &format!("s3-{i}"), std::fs::read(testdata(rel)).unwrap());
    }
    let head = snapshot(k.port);
    flush(k.port);
    assert!(metric_sum(k.port, "kiln_blocks_owned") >= 1.0);
    assert_same(&head, &snapshot(k.port), "read from blocks on S3");
    assert!(!k.data.join("blocks").exists(), "S3 blocks were written to the local filesystem");
    let data = k.kill();
    let k = Kiln::start_in(data, &flags);
    assert_same(&head, &snapshot(k.port), "after a restart, from S3");
    assert_eq!(metric_sum(k.port, "kiln_head_profiles"), 0.0);
}
