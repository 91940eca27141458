//! The compactor in `-target=all`: blocks cut over several hours merge level by level into
//! one block per window, and every query answers exactly as before — during compaction too,
//! and after a `kill -9` at every step of a job and of the cleanup; retention deletes
//! exactly the blocks past it, after the deletion delay; folders no index lists go.
mod common;

use common::members::{blocks_dir, one_at_a_time, ring_states, start_members, wait_until};
use common::snapshot::{assert_same, flush, snapshot};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const HOUR: i64 = 3600;

/// Flags that make compaction fast and immediate once started.
const FAST: &[&str] = &[
    "-compactor.compaction-interval=1s",
    "-compactor.cleanup-interval=1s",
    "-compactor.first-level-compaction-wait-period=0s",
    "-compactor.deletion-delay=0s",
    "-compactor.partial-block-deletion-delay=1s",
];

/// Flags under which the compactor finds nothing to do while the test builds its blocks:
/// every level-1 block waits an hour.
const IDLE: &[&str] = &["-compactor.first-level-compaction-wait-period=1h"];

fn flags(extra: &[&str]) -> Vec<&'static str> {
    let mut f = FIXTURE_FLAGS.to_vec();
    f.extend(extra.iter().map(|s| &*s.to_string().leak()));
    f
}

/// An 8-hour-aligned time (unix seconds) 20 to 28 hours ago: every window of the default
/// ranges (1h, 2h, 8h) the tests write in has ended.
fn base_s() -> i64 {
    let now = now_ms() / 1000;
    (now - 20 * HOUR).div_euclid(8 * HOUR) * 8 * HOUR
}

fn ingest(port: u16, name: &str, t: i64, body: &str) {
    let r = post(
        port,
        &format!("/ingest?name={name}&from={t}&until={t}&format=folded&sampleRate=0"),
        &[],
        body.as_bytes().to_vec(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Six rounds 40 minutes apart over four hours from `base`, each its own cut (a block per
/// core), three hosts of two services, and one profile pushed twice at one time (two
/// profiles of one source: both count before and after), each round followed by `cut`.
/// Returns the flame graph total.
fn write_rounds_cut(port: u16, base: i64, cut: &dyn Fn()) -> i64 {
    let stacks = ["main;a;b 3\nmain;a;c 1\n", "main;x 5\nmain;a;b 2\n", "other;q 1\nother;q;r 2\n"];
    let mut total = 0;
    for round in 0..6 {
        for j in 0..10i64 {
            let t = base + round * 2400 + j * 60;
            for (h, svc) in [("h0", "api"), ("h1", "api"), ("h2", "db")] {
                let body = stacks[(round as usize + j as usize + h.len()) % 3];
                ingest(port, &format!("{svc}.cpu%7Bhost%3D{h}%7D"), t, body);
                total += body.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap()).sum::<i64>();
            }
        }
        if round == 0 {
            ingest(port, "api.cpu%7Bhost%3Dh0%7D", base, "main;twice 7\n");
            total += 7;
        }
        cut();
    }
    total
}

fn write_rounds(port: u16, base: i64) -> i64 {
    write_rounds_cut(port, base, &|| flush(port))
}

/// A live block of the index: (level, min_time, max_time, profiles from its meta.json).
type Live = (u64, i64, i64, u64);

/// (live blocks sorted, marks) of tenant `anonymous` in the bucket directory `dir`.
fn bucket(dir: &Path) -> (Vec<Live>, usize) {
    let tenant = dir.join("anonymous");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tenant.join("bucket-index.json")).unwrap()).unwrap();
    let marked: Vec<&str> =
        idx["block_deletion_marks"].as_array().unwrap().iter().map(|m| m["block_id"].as_str().unwrap()).collect();
    let mut live: Vec<Live> = Vec::new();
    for b in idx["blocks"].as_array().unwrap() {
        let id = b["block_id"].as_str().unwrap();
        if marked.contains(&id) {
            continue;
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tenant.join(id).join("meta.json")).unwrap()).unwrap();
        live.push((
            b["compaction_level"].as_u64().unwrap_or(1),
            b["min_time"].as_i64().unwrap(),
            b["max_time"].as_i64().unwrap(),
            meta["stats"]["numProfiles"].as_u64().unwrap(),
        ));
    }
    live.sort();
    (live, marked.len())
}

/// `bucket` of a single node's data directory.
fn blocks(data: &Path) -> (Vec<Live>, usize) {
    bucket(&data.join("blocks"))
}

/// Block folders of tenant `anonymous` in the bucket directory `dir`.
fn bucket_folders(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("anonymous")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count()
}

fn folders(data: &Path) -> usize {
    bucket_folders(&data.join("blocks"))
}

/// The flame graph total of everything, by SelectMergeStacktraces.
fn total(port: u16) -> i64 {
    let fg: kiln_proto::querier::v1::SelectMergeStacktracesResponse = connect(
        port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        &kiln_proto::querier::v1::SelectMergeStacktracesRequest {
            profile_type_id: "process_cpu:samples:count::".into(),
            label_selector: "{}".into(),
            start: 1000,
            end: now_ms() + 3_600_000,
            max_nodes: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    fg.flamegraph.map_or(0, |f| f.total)
}

/// Waits until the bucket directory `dir` holds one live block in the old range (the 8h
/// window) and no marks, with nothing left to delete.
fn wait_bucket_compacted(dir: &Path, base: i64, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (live, marks) = bucket(dir);
        let old = live.iter().filter(|b| b.2 < (base + 8 * HOUR) * 1000).count();
        let folders = bucket_folders(dir);
        if old == 1 && marks == 0 && folders == live.len() {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: not compacted: live {live:?}, {marks} marks, {folders} folders");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_compacted(data: &Path, base: i64, why: &str) {
    wait_bucket_compacted(&data.join("blocks"), base, why);
}

type Reader = (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<usize>);

/// A reader that checks the total through `port` until its flag is set; joined, it says
/// how many reads it made.
fn check_total_until_stopped(port: u16, want: i64) -> Reader {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(total(port), want, "a query during compaction counted a profile twice or missed one");
            n += 1;
        }
        n
    });
    (stop, reader)
}

#[test]
fn compaction_merges_level_by_level_and_every_answer_stays_the_same_throughout() {
    let k = Kiln::start(&flags(IDLE));
    let base = base_s();
    let want = write_rounds(k.port, base);
    // Recent data, in a window that has not ended: never compacted.
    ingest(k.port, "api.cpu%7Bhost%3Dh0%7D", now_ms() / 1000 - 60, "main;recent 11\n");
    flush(k.port);
    let before = snapshot(k.port);
    assert_eq!(total(k.port), want + 11);
    let (l1, _) = blocks(&k.data);
    assert!(l1.len() >= 7 && l1.iter().all(|b| b.0 == 1), "{l1:?}");
    let data = k.kill();

    // Compaction on: a reader checks the total all along.
    let k = Kiln::start_in(data, &flags(FAST));
    let (stop, reader) = check_total_until_stopped(k.port, want + 11);
    wait_compacted(&k.data, base, "compaction");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_same(&before, &snapshot(k.port), "after compaction");
    let (live, _) = blocks(&k.data);
    let old: Vec<_> = live.iter().filter(|b| b.2 < (base + 8 * HOUR) * 1000).collect();
    assert!(old[0].0 >= 3, "levels rose 1 → 2 (hours) → 3 (2h) → 4 (8h): {live:?}");
    assert!(live.iter().any(|b| b.0 == 1), "the recent block is left as cut: {live:?}");
    assert!(metric(k.port, "kiln_compactor_jobs_total{result=\"success\"}") >= 3.0);
    assert_eq!(metric(k.port, "kiln_compactor_jobs_total{result=\"failure\"}"), 0.0);
    assert_eq!(metric(k.port, "kiln_compactor_replica_copies_dropped_total"), 0.0, "a single node has no replicas");
    assert!(metric(k.port, "kiln_compactor_blocks_deleted_total") >= l1.len() as f64 - 2.0);

    // A restart reads the compacted bucket: the same answers, nothing replayed twice.
    let data = k.kill();
    let k = Kiln::start_in(data, &flags(IDLE));
    assert_same(&before, &snapshot(k.port), "after a restart");
}

#[test]
fn kill_9_at_every_step_of_a_job_and_of_the_cleanup_keeps_every_answer_and_the_job_completes() {
    let k = Kiln::start(&flags(IDLE));
    let base = base_s();
    let want = write_rounds(k.port, base);
    let before = snapshot(k.port);
    let mut data = k.kill();
    // The steps in the order a job and the cleanup reach them; each run crashes at one, the
    // restart checks the answers, and the next run goes on from what the crash left.
    for step in
        ["compactor:uploading", "compactor:uploaded", "compactor:indexed", "compactor:deleting", "compactor:deleted"]
    {
        let port = hold_port();
        let spawn = Spawn { env: vec![("KILN_CRASH_AT", step.to_string())], ..Default::default() };
        let mut child = Kiln::spawn_with(&data, port.0, &flags(FAST), &spawn);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{step}: kiln never reached the step");
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{step}: {status}");
        drop(port);
        let dir = data.join("compactor");
        let scratch = || -> Vec<String> {
            std::fs::read_dir(&dir)
                .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        if step == "compactor:uploading" {
            // Killed after the output's index went up and before its profiles did: they
            // were merged into a local file, not held in memory.
            let left = scratch();
            assert!(left.len() == 1 && left[0].ends_with(".profiles.parquet"), "{left:?}");
        }
        let k = Kiln::start_in(data, &flags(IDLE));
        // The compactor starts once the cores serve: it empties its directory then.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !scratch().is_empty() {
            assert!(Instant::now() < deadline, "{step}: a restart empties the compactor's directory: {:?}", scratch());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_same(&before, &snapshot(k.port), &format!("after kill -9 at {step}"));
        assert_eq!(total(k.port), want);
        data = k.kill();
    }
    let k = Kiln::start_in(data, &flags(FAST));
    wait_compacted(&k.data, base, "after the crashes");
    assert_same(&before, &snapshot(k.port), "compacted after the crashes");
}

#[test]
fn retention_deletes_exactly_the_blocks_past_it_after_the_deletion_delay() {
    let k = Kiln::start(&flags(IDLE));
    // Old: 20-28 h ago; young: 3 h ago, each in blocks of their own.
    let (old, young) = (base_s(), now_ms() / 1000 - 3 * HOUR);
    ingest(k.port, "api.cpu", old, "main;old 5\n");
    flush(k.port);
    ingest(k.port, "api.cpu", young, "main;young 7\n");
    flush(k.port);
    // A folder no index lists, as a cut or a compaction that died before its index write
    // leaves.
    let partial = k.data.join("blocks/anonymous/01HD3X85G9BGAG4S3TKPNMFG4Z");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("index.tsdb"), b"half").unwrap();
    let data = k.kill();

    let k = Kiln::start_in(
        data,
        &flags(&[
            "-compactor.blocks-retention-period=12h",
            "-compactor.deletion-delay=3s",
            "-compactor.cleanup-interval=1s",
            "-compactor.partial-block-deletion-delay=1s",
        ]),
    );
    // Marked at once: queries stop reading the old block; its files stay for the delay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocks(&k.data).1 == 0 {
        assert!(Instant::now() < deadline, "nothing was marked");
        std::thread::sleep(Duration::from_millis(50));
    }
    // When the mark says the block was marked (whole seconds, as Pyroscope's marks): the
    // delay counts from there, so a block marked late in a second may go a little over two
    // seconds after this test saw its mark.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(k.data.join("blocks/anonymous/bucket-index.json")).unwrap()).unwrap();
    let marked_s = idx["block_deletion_marks"][0]["deletion_time"].as_i64().expect("a mark's deletion_time");
    assert_eq!(total(k.port), 7, "the block past retention is still read");
    let (live, marks) = blocks(&k.data);
    assert_eq!((live.len(), marks), (1, 1), "{live:?}");
    assert!(live[0].2 >= (young - 60) * 1000, "the young block was marked: {live:?}");
    assert!(folders(&k.data) >= 2, "deleted before the delay");
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocks(&k.data).1 > 0 || folders(&k.data) > 1 {
        assert!(Instant::now() < deadline, "not deleted: {:?}, {} folders", blocks(&k.data), folders(&k.data));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(now_ms() >= marked_s * 1000 + 3000, "deleted before the deletion delay (marked at {marked_s} s)");
    assert!(!partial.exists(), "the partial block is still there");
    assert_eq!(total(k.port), 7);
    // The counters move once each deletion has finished, a moment after its folder went.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = || {
        (
            metric(k.port, "kiln_compactor_blocks_deleted_total"),
            metric(k.port, "kiln_compactor_partial_blocks_deleted_total"),
        )
    };
    while counted() != (1.0, 1.0) {
        assert!(Instant::now() < deadline, "deletions counted: {:?}", counted());
        std::thread::sleep(Duration::from_millis(50));
    }
    let names: BTreeMap<String, String> = snapshot(k.port);
    assert!(names["services"].contains("api"));
}

#[test]
fn a_cluster_compacts_every_replicas_blocks_into_one_copy_and_answers_the_same_throughout() {
    let _one = one_at_a_time();
    let dir = blocks_dir("compactor");
    let start = |name: &str, compaction: &[&str]| {
        let extra: Vec<&str> =
            FIXTURE_FLAGS.iter().chain(&["-store-gateway.sync-interval=1s"]).chain(compaction).copied().collect();
        let members = start_members(name, &["all", "all", "all"], &dir, &extra);
        for m in &members {
            wait_until("three ACTIVE members", || ring_states(m.port) == ["ACTIVE"; 3]);
        }
        members
    };
    // Three replicas of every profile, in the blocks of every member's cuts.
    let members = start("compactor-write", IDLE);
    let base = base_s();
    let ports: Vec<u16> = members.iter().map(|m| m.port).collect();
    let want = write_rounds_cut(ports[0], base, &|| ports.iter().for_each(|p| flush(*p)));
    let before = snapshot(ports[1]);
    assert_eq!(total(ports[2]), want);
    let (l1, _) = bucket(&dir);
    let rows_before: u64 = l1.iter().map(|b| b.3).sum();
    assert!(l1.len() >= 18, "six cuts on three members: {l1:?}");
    drop(members);

    // New members (new instance ids: no ingester pins these blocks now, the store-gateways
    // serve them), compaction on; a reader checks the total through one of them.
    let members = start(
        "compactor-run",
        &[
            "-compactor.compaction-interval=1s",
            "-compactor.cleanup-interval=1s",
            "-compactor.first-level-compaction-wait-period=0s",
            "-compactor.deletion-delay=10s",
        ],
    );
    let (stop, reader) = check_total_until_stopped(members[1].port, want);
    wait_bucket_compacted(&dir, base, "cluster compaction");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    for m in &members {
        assert_same(&before, &snapshot(m.port), "after compaction, through every member");
    }
    let (live, _) = bucket(&dir);
    let rows_after: u64 = live.iter().map(|b| b.3).sum();
    assert_eq!(rows_after * 3, rows_before, "the replica copies are gone: {live:?}");
    let dropped: f64 = members.iter().map(|m| metric(m.port, "kiln_compactor_replica_copies_dropped_total")).sum();
    assert_eq!(dropped as u64, rows_before - rows_after);
    let jobs: Vec<f64> =
        members.iter().map(|m| metric(m.port, "kiln_compactor_jobs_total{result=\"success\"}")).collect();
    assert!(jobs.iter().sum::<f64>() >= 3.0, "{jobs:?}");
    let page = get(members[0].port, "/compactor/ring").text();
    assert_eq!(page.matches("ACTIVE").count(), 3, "{page}");
}
