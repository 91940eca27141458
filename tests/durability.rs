//! Durability: whatever kiln acknowledged survives `kill -9`, a torn WAL tail, and a restart
//! with another number of cores; damage in the middle of the WAL stops the start loudly.
mod common;

use common::*;
use std::collections::BTreeSet;

fn push_seq(port: u16, i: u64) -> bool {
    common::push_seq(port, "dur", i)
}

fn seqs(port: u16) -> BTreeSet<u64> {
    seqs_and_total(port, "dur").0
}

#[test]
fn acknowledged_pushes_survive_kill_9_and_a_reshard() {
    let k = Kiln::start(&[]);
    let pushers = Pushers::start(k.port, "dur");
    while pushers.acked() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Crash while pushes are in flight.
    let data = k.kill();
    let acked = pushers.stop();
    let want: i64 = acked.iter().map(|i| *i as i64 + 1).sum();

    // Restart with a different number of cores: replay routes by the new ring.
    let k = Kiln::start_in(data, &["-shards=3"]);
    let got = seqs(k.port);
    assert!(acked.is_subset(&got), "lost {} acknowledged pushes", acked.difference(&got).count());
    // Unacknowledged pushes may or may not have made it; acknowledged ones all did.
    assert!(seqs_and_total(k.port, "dur").1 >= want);
    let data = k.kill();
    // And once more: the replayed generation was itself made durable.
    let k = Kiln::start_in(data, &[]);
    assert!(acked.is_subset(&seqs(k.port)));
}

/// With small segments, most pushes land in segments moved into place full of zeros; a
/// crash leaves the last one's zeros after its records, and a restart reads up to them.
#[test]
fn acknowledged_pushes_survive_kill_9_in_preallocated_segments() {
    let args = ["-shards=1", "-ingester.wal-segment-size-bytes=65536"];
    let k = Kiln::start(&args);
    let pushers = Pushers::start(k.port, "dur");
    while pushers.acked() < 300 || metric(k.port, "kiln_wal_segments_preallocated_total") < 3.0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let data = k.kill();
    let acked = pushers.stop();
    let sizes: Vec<u64> = segment_files(&data).iter().map(|s| std::fs::metadata(s).unwrap().len()).collect();
    assert!(sizes.iter().filter(|&&n| n == 65536).count() >= 2, "segments not preallocated: {sizes:?}");
    let k = Kiln::start_in(data, &args);
    let got = seqs(k.port);
    assert!(acked.is_subset(&got), "lost {} acknowledged pushes", acked.difference(&got).count());
    let data = k.kill();
    let k = Kiln::start_in(data, &args);
    assert!(acked.is_subset(&seqs(k.port)));
}

#[test]
fn a_torn_tail_keeps_every_complete_record() {
    let k = Kiln::start(&["-shards=1"]);
    for i in 0..20 {
        assert!(push_seq(k.port, i));
    }
    let data = k.kill();
    let seg = segment_files(&data).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    // Find record boundaries: [len u32][crc u32][payload].
    let mut ends = Vec::new();
    let mut at = 0;
    while at < full.len() {
        at += 8 + u32::from_le_bytes(full[at..at + 4].try_into().unwrap()) as usize;
        ends.push(at);
    }
    assert_eq!(ends.len(), 20);
    let mut data = data;
    // Cut inside the last record, inside the 15th's header, and exactly at a boundary.
    for (cut, keep) in [(full.len() - 3, 19), (ends[13] + 5, 14), (ends[9], 10)] {
        let seg = segment_files(&data).pop().unwrap();
        std::fs::write(&seg, &full[..cut]).unwrap();
        let k = Kiln::start_in(data, &["-shards=1"]);
        let got = seqs(k.port);
        assert_eq!(got, (0..keep).collect::<BTreeSet<u64>>(), "cut at {cut}");
        data = k.kill();
    }
}

#[test]
fn damage_in_the_middle_stops_the_start_with_the_file_and_offset() {
    let k = Kiln::start(&["-shards=1"]);
    for i in 0..10 {
        assert!(push_seq(k.port, i));
    }
    let data = k.kill();
    let seg = segment_files(&data).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0xff; // inside the first record's payload
    std::fs::write(&seg, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg(format!("-server.http-listen-port={}", free_port()))
        .arg(format!("-storage.path={}", data.display()))
        .arg("-shards=1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&seg.display().to_string()) && err.contains("offset 0"), "{err}");
    // Nothing was deleted: the operator can still recover the data.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn sigterm_exits_cleanly_and_loses_nothing() {
    let k = Kiln::start(&[]);
    for i in 0..50 {
        assert!(push_seq(k.port, i));
    }
    let pid = k.pid();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let (data, code) = k.wait_exit();
    assert_eq!(code, Some(0), "SIGTERM ends kiln with status 0");
    let k = Kiln::start_in(data, &[]);
    assert_eq!(seqs(k.port), (0..50).collect());
}

#[test]
fn a_second_kiln_on_the_same_data_directory_is_refused() {
    let k = Kiln::start(&["-shards=1"]);
    assert!(push_seq(k.port, 1));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg(format!("-server.http-listen-port={}", free_port()))
        .arg(format!("-storage.path={}", k.data.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another kiln"), "{err}");
    // The first one is untouched and still has its data.
    assert_eq!(seqs(k.port), [1].into_iter().collect());
}

#[test]
fn a_second_kiln_on_a_port_in_use_is_refused() {
    let k = Kiln::start(&["-shards=1"]);
    let other = std::env::temp_dir().join(format!("kiln-test-port-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg(format!("-server.http-listen-port={}", k.port))
        .arg("-server.http-listen-address=127.0.0.1")
        .arg(format!("-storage.path={}", other.display()))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already served by another process"), "{err}");
    assert!(push_seq(k.port, 7));
}

/// The port opens before the WAL replay: `/ready` says how far it has got and the process's
/// own pages answer, while writes and queries are refused with a retryable 503 (none of it
/// stored) until the heads hold everything acknowledged.
#[test]
fn ready_tells_how_far_the_wal_replay_has_got_while_other_routes_wait() {
    let k = Kiln::start(&[]);
    for i in 0..50 {
        assert!(push_seq(k.port, i));
    }
    let want: i64 = (0..50).map(|i| i + 1).sum();
    let (data, held) = k.kill_keeping_port();
    let port = held.0;
    // Replay stops after its first segment for as long as this file exists.
    let pause = std::env::temp_dir().join(format!("kiln-pause-{}", std::process::id()));
    std::fs::write(&pause, "").unwrap();
    let spawn = Spawn {
        env: vec![
            ("KILN_PAUSE_AT", "ingester:replay-segment".into()),
            ("KILN_PAUSE_FILE", pause.display().to_string()),
        ],
        ..Spawn::default()
    };
    let k = Kiln::launch_at(data, held, &[], &spawn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let said = loop {
        match raw_get(port, "/ready") {
            Some((503, body)) if body.contains("replaying the WAL") => break body,
            Some((200, body)) => panic!("ready while the replay is held: {body}"),
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "/ready never told of the replay");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(said.contains("MB") && said.contains('%'), "{said}");
    assert_eq!(metric(port, "kiln_ready"), 0.0);
    assert!(metric(port, "kiln_wal_replay_size_bytes") > 0.0);
    assert!(metric(port, "kiln_wal_replay_bytes") > 0.0);
    // Writes and queries wait for the start, retryably; the write is not stored.
    let r = post(port, "/ingest?name=dur.cpu%7Bseq%3D999%7D&format=folded", &[], b"main;late 1\n".to_vec());
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("replaying the WAL"), "{}", r.text());
    let r = connect_json(port, "/querier.v1.QuerierService/LabelNames", &[], serde_json::json!({}));
    assert_eq!(r.status, 503, "{}", r.text());
    std::fs::remove_file(&pause).unwrap();
    while raw_get(port, "/ready").map(|r| r.0) != Some(200) {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(30), "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(metric(port, "kiln_ready"), 1.0);
    assert_eq!(metric(port, "kiln_wal_replay_bytes"), metric(port, "kiln_wal_replay_size_bytes"));
    let (got, total) = seqs_and_total(port, "dur");
    assert_eq!(got, (0..50).collect::<BTreeSet<u64>>());
    assert_eq!(total, want);
    drop(k);
}
