//! A full disk needs no manual repair. On a small tmpfs: pushes are refused (503) while the
//! WAL cannot be written and accepted again once space is back, without leaving a failed
//! write's bytes in the WAL; a block cut that failed for lack of space is retried by itself;
//! kiln restarts after `kill -9` with the disk still full (the WAL is adopted in place, not
//! rewritten), and a restart that must rewrite it says how much space that takes. Every
//! acknowledged push is back after each restart, counted once. And `/ingester/flush` answers
//! within its deadline when the object store is unreachable.
//!
//! Mounting the tmpfs needs root (CI runs as root); without it the test fails, saying so.
mod common;
#[path = "../io/tests/common/moto.rs"]
mod moto;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of a few MiB, unmounted when dropped (panic or not).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("tests/disk_full.rs mounts a {size} tmpfs to fill a disk, which needs root (CI runs as root): run it as root");
        }
        let dir = std::env::temp_dir().join(format!("kiln-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running mount: {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed (this test needs to mount a tmpfs): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: statvfs fills a zeroed struct from a valid path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Fills the disk with a file until about `leave` bytes (whole pages) are free.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        for chunk in [1 << 20, 4096] {
            while f.write_all(&vec![0u8; chunk]).is_ok() {}
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave.div_ceil(4096) * 4096)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A numbered stream of pushes whose sizes the test chooses: profile `i` has label `seq=i`,
/// a stack of value `i + 1` and `pad` stacks of value 1.
struct Stream {
    next: u64,
    /// Every push made: its flame graph total.
    sent: BTreeMap<u64, i64>,
    acked: BTreeSet<u64>,
}

const SERVICE: &str = "disk";

impl Stream {
    fn push(&mut self, port: u16, pad: usize) -> u16 {
        let i = self.next;
        self.next += 1;
        let mut body = format!("main;f{} {}\n", i % 7, i + 1);
        for j in 0..pad {
            body.push_str(&format!("main;pad{j};x{i} 1\n"));
        }
        self.sent.insert(i, i as i64 + 1 + pad as i64);
        let r = post(
            port,
            &format!("/ingest?name={SERVICE}.cpu%7Bseq%3D{i}%7D&format=folded&sampleRate=0"),
            &[],
            body.into_bytes(),
        );
        if r.status == 200 {
            self.acked.insert(i);
        }
        r.status
    }

    fn push_ok(&mut self, port: u16, pad: usize) {
        let status = self.push(port, pad);
        assert_eq!(status, 200, "push {} refused", self.next - 1);
    }

    /// Every acknowledged push is back, no refused one is (refused means not stored), and
    /// each push that is back is counted once.
    fn check(&self, port: u16, when: &str) {
        let (got, total) = seqs_and_total(port, SERVICE);
        let lost: Vec<_> = self.acked.difference(&got).collect();
        assert!(lost.is_empty(), "{when}: lost acknowledged pushes {lost:?}");
        let refused: Vec<_> = got.difference(&self.acked).collect();
        assert!(refused.is_empty(), "{when}: refused pushes are stored: {refused:?}");
        let want: i64 = got.iter().map(|i| self.sent[i]).sum();
        assert_eq!(total, want, "{when}: profiles counted twice or partly lost");
    }
}

/// Big, medium and small pushes (about 37 KiB, 7 KiB and 140 bytes of WAL).
const BIG: usize = 1500;
const MEDIUM: usize = 300;

const SEGMENT: u64 = 256 * 1024;

/// Plain segments: the steps below read where the records end from a segment's length.
/// (A preallocated segment already holds its space, so writes into it cannot fail for lack
/// of it; its spare is only written with several times its size free.)
fn flags(shards: &str) -> Vec<String> {
    vec![
        shards.to_string(),
        format!("-ingester.wal-segment-size-bytes={SEGMENT}"),
        "-ingester.wal-preallocate=false".to_string(),
        "-ingester.max-block-duration=1h".to_string(),
    ]
}

fn start(data: PathBuf, shards: &str) -> Kiln {
    let f = flags(shards);
    Kiln::start_in(data, &f.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The segment the WAL writes now, and its length.
fn current_segment(data: &Path) -> (PathBuf, u64) {
    let seg = segment_files(data).pop().expect("a WAL segment");
    let len = std::fs::metadata(&seg).unwrap().len();
    (seg, len)
}

/// Step 1 of `a_full_disk_needs_no_manual_repair`.
fn a_failed_write_is_cut_off(fs: &Tmpfs, k: &Kiln, s: &mut Stream) {
    // 1. A write that fails part-way, then a shorter one at the same offset, then a
    // rotation: the failed write's tail used to stay behind the shorter one and make the
    // segment "damaged but not its core's last" at the next start.
    let size_of = |s: &mut Stream, pad| {
        let before = current_segment(&k.data).1;
        s.push_ok(k.port, pad);
        current_segment(&k.data).1 - before
    };
    let big = size_of(s, BIG);
    let medium = size_of(s, MEDIUM);
    // Land the end of the segment where a big write still fits, but a medium one then a
    // big one does not: the big one after them rotates.
    while current_segment(&k.data).1 + 2 * big <= SEGMENT {
        s.push_ok(k.port, BIG);
    }
    while current_segment(&k.data).1 <= SEGMENT - big - medium {
        s.push_ok(k.port, 0);
    }
    let (seg, good) = current_segment(&k.data);
    assert!(good + big <= SEGMENT && good + medium + big > SEGMENT);
    let filler = fs.fill(big / 2);
    assert_eq!(s.push(k.port, BIG), 503, "a push the WAL could not hold was acknowledged");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good, "the failed write's bytes were left in the WAL");
    std::fs::remove_file(&filler).unwrap();
    s.push_ok(k.port, MEDIUM);
    s.push_ok(k.port, BIG);
    assert_ne!(current_segment(&k.data).0, seg, "the segment did not rotate");
    for _ in 0..20 {
        s.push_ok(k.port, 0);
    }
}

/// Step 2 of `a_full_disk_needs_no_manual_repair`.
fn a_cut_that_cannot_write_its_markers_is_retried(fs: &Tmpfs, k: &Kiln, s: &mut Stream) {
    // 2. A block cut whose markers cannot be written: the end of the segment is at a page
    // boundary (or the markers cross one) and the disk is full.
    let marker =
        8 + kiln_shards::ingester::walcodec::encode_cut("anonymous", "01ARZ3NDEKTSV4RRFFQ69G5FAV").len() as u64;
    while !matches!(current_segment(&k.data).1 % 4096, 0) && current_segment(&k.data).1 % 4096 <= 4096 - marker {
        s.push_ok(k.port, 0);
    }
    let filler = fs.fill(0);
    let r = post(k.port, "/ingester/flush?timeout=10s", &[], Vec::new());
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("No space left on device"), "{}", r.text());
    assert_eq!(metric_sum(k.port, "kiln_block_cuts_suspended"), 1.0);
    assert_eq!(s.push(k.port, 0), 503, "a push was acknowledged on a full disk");
    std::fs::remove_file(&filler).unwrap();
    // The core retries by itself (its cut ticker, after the backoff).
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(k.port, "kiln_block_cuts_suspended") != 0.0
        || metric_sum(k.port, "kiln_blocks_written_total") < 1.0
    {
        assert!(Instant::now() < deadline, "the failed cut was not retried within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(metric_sum(k.port, "kiln_block_cut_retries_total") >= 1.0);
    assert_eq!(metric_sum(k.port, "kiln_head_frozen"), 0.0);
    for _ in 0..10 {
        s.push_ok(k.port, MEDIUM);
    }
    s.check(k.port, "after the retried cut");
    let r = post(k.port, "/ingester/flush", &[], Vec::new());
    assert_eq!(r.status, 204, "{}", r.text());
}

#[test]
fn a_full_disk_needs_no_manual_repair() {
    let fs = Tmpfs::mount("8m");
    let data = fs.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut s = Stream { next: 0, sent: BTreeMap::new(), acked: BTreeSet::new() };
    // One core, so that the test knows which WAL each push lands in.
    let k = start(data, "-shards=1");

    a_failed_write_is_cut_off(&fs, &k, &mut s);
    a_cut_that_cannot_write_its_markers_is_retried(&fs, &k, &mut s);

    // 3. kill -9 and restart, no manual repair.
    for _ in 0..30 {
        s.push_ok(k.port, MEDIUM);
    }
    let data = k.kill();
    let k = start(data, "-shards=1");
    s.check(k.port, "after kill -9 and a restart");

    // 4. A restart with the disk still full: the WAL is adopted in place, nothing rewritten.
    for _ in 0..40 {
        s.push_ok(k.port, MEDIUM);
    }
    let filler = fs.fill(0);
    let free = fs.free();
    let wal: u64 = segment_files(&k.data).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(wal > free + (256 << 10), "the WAL ({wal} bytes) is not larger than the free space ({free} bytes)");
    let data = k.kill();
    let k = start(data, "-shards=1");
    s.check(k.port, &format!("after a restart with {free} bytes free and a WAL of {wal} bytes"));
    assert_eq!(s.push(k.port, MEDIUM), 503);
    std::fs::remove_file(&filler).unwrap();
    s.push_ok(k.port, MEDIUM);

    // 5. Another number of cores rewrites the WAL; on a full disk that is refused with how
    // much space it takes, and nothing is lost.
    for _ in 0..10 {
        s.push_ok(k.port, MEDIUM);
    }
    let filler = fs.fill(0);
    let data = k.kill();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg(format!("-server.http-listen-port={}", free_port()))
        .arg("-server.http-listen-address=127.0.0.1")
        .arg(format!("-storage.path={}", data.display()))
        .args(flags("-shards=2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a WAL to rewrite on a full disk");
    assert!(
        err.contains("needs up to") && err.contains("-shards=1") && err.contains("Nothing of the WAL was deleted"),
        "{err}"
    );
    let k = start(data, "-shards=1");
    s.check(k.port, "after a refused rewrite");
    std::fs::remove_file(&filler).unwrap();
    let data = k.kill();
    let k = start(data, "-shards=2");
    s.check(k.port, "after rewriting the WAL for 2 cores");
    drop(k);
}

#[test]
fn flush_answers_within_its_deadline_when_the_store_is_unreachable() {
    let moto = moto::Moto::with_bucket("kiln-flush");
    let endpoint = format!("-storage.s3.endpoint=127.0.0.1:{}", moto.port);
    let k = Kiln::start(&[
        "-storage.backend=s3",
        &endpoint,
        "-storage.s3.bucket-name=kiln-flush",
        "-storage.s3.access-key-id=test",
        "-storage.s3.secret-access-key=test",
        "-storage.s3.insecure=true",
    ]);
    let mut s = Stream { next: 0, sent: BTreeMap::new(), acked: BTreeSet::new() };
    for _ in 0..20 {
        s.push_ok(k.port, 10);
    }
    // The object store goes away: uploads fail and are retried.
    drop(moto);
    // Before the deadline, this hung on the uploads' endless retries.
    let r = post(k.port, "/ingester/flush?timeout=2s", &[], Vec::new());
    assert_eq!(r.status, 503, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("not finished within 2s")
            && text.contains("still pending")
            && text.contains("waiting to be written as blocks"),
        "{text}"
    );
    // Nothing was lost meanwhile: the heads still answer.
    s.check(k.port, "while the uploads are retried");
    assert!(post(k.port, "/ingester/flush?timeout=x", &[], Vec::new()).status == 400);
}
