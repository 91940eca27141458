//! The ingester's WAL writer on one core: appends are framed into a pending buffer by the
//! core's inbox loop and written by one task per core (group commit), which reports each
//! write's outcome back through the core's own inbox.
use super::cut::{CutError, CutResult};
use super::head::AppendStats;
use super::{IngestError, IngestReply, Msg};
use kiln_io::bound::Slots;
use kiln_io::invariant::{check, Invariant};
use kiln_io::wal::segment::SegmentWriter;
use std::cell::RefCell;
use std::rc::Rc;

/// Bytes of framed records a core's WAL may hold waiting for its writer before live pushes
/// are refused (`IngestError::WalBusy`, answered 503: retry). Everything pending goes out in
/// the next write, so this is the most one group-commit write carries: at a disk's few
/// hundred MB/s, a few hundred milliseconds of writing. A backlog beyond that means the
/// disk does not keep up with the pushes; waiting longer only adds latency and memory (the
/// records are a second copy of what the head holds). One push is never refused for its
/// own size: the check is made before its record is added.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Pushes (and syncs, aborts) a core's WAL may hold waiting for its writer before live
/// pushes are refused, for pushes too small for `MAX_PENDING_BYTES` to bound: each waiter is
/// an open request, and one write answering more than this many is seconds behind.
pub const MAX_PENDING_WAITERS: usize = 16 * 1024;

/// `fdatasync`s in flight per core. Each write's sync is started as soon as the write
/// completed (pipelined group commit); a sync covers every earlier write, so a few in
/// flight keep the disk busy and more only queue in the kernel behind one another. At the
/// bound the writer waits for one to finish before its next write, and meanwhile the
/// pending buffer grows into a larger write (and, at its own bound, refuses pushes).
pub const MAX_SYNCS_IN_FLIGHT: usize = 4;

/// Who waits on a WAL write.
pub enum Waiter {
    /// A push's part: answered with what it appended once durable; a whole push settles.
    Push { reply: IngestReply, stats: AppendStats, key: u64, whole: bool },
    /// Answered once everything queued before it is durable (`Msg::Sync`).
    Sync(IngestReply),
    /// The abort record of `key`: `reply` is answered once it is written (or its write
    /// failed); it is written again, without the reply, if its write fails.
    Abort { key: u64, reply: Option<AbortReply> },
}

/// Who waits for an abort record: the answer they are owed once it is durable, so that a
/// refusal is never followed by a restart that brings the refused push back.
pub enum AbortReply {
    /// The distributor's `Settle { commit: false }`.
    Settled(flume::Sender<()>),
    /// A push part whose own record may be in the file (its sync failed).
    Refused(IngestReply, IngestError),
}

impl AbortReply {
    pub(super) fn send(self) {
        match self {
            AbortReply::Settled(tx) => {
                let _ = tx.send(());
            }
            AbortReply::Refused(tx, e) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// Appends framed and waiting for the core's WAL writer, with the pushes waiting on them.
/// Bounded: a live push that finds `full()` is refused (replayed records and abort records
/// never are; see `MAX_PENDING_BYTES`).
pub struct WalPending {
    pub(super) buf: Vec<u8>,
    pub(super) waiters: Vec<Waiter>,
    /// A block cut: everything appended before it, then its markers, to be written and
    /// closed in the current segment before anything appended after it.
    pub(super) cut: Option<CutBatch>,
    /// The writer's syncs in flight (`MAX_SYNCS_IN_FLIGHT`).
    pub(super) syncs: Slots,
}

impl Default for WalPending {
    fn default() -> Self {
        WalPending { buf: Vec::new(), waiters: Vec::new(), cut: None, syncs: Slots::new(MAX_SYNCS_IN_FLIGHT) }
    }
}

impl WalPending {
    /// Whether a live push must be refused rather than queued.
    pub(super) fn full(&self) -> bool {
        self.buf.len() >= MAX_PENDING_BYTES || self.waiters.len() >= MAX_PENDING_WAITERS
    }
}

/// The WAL's side of a cut. Records appended after the cut go to `WalPending::buf` and so
/// into the next segment: the segments deleted once the cut's blocks are indexed hold only
/// what those blocks hold.
pub(super) struct CutBatch {
    pub(super) buf: Vec<u8>,
    pub(super) waiters: Vec<Waiter>,
    pub(super) reply: flume::Sender<CutResult>,
}

/// The ingester's side of its WAL: where records go and how the writer is woken.
pub struct WalHandle {
    pub(super) pending: Rc<RefCell<WalPending>>,
    pub(super) wake: flume::Sender<()>,
}

/// Group commit, pipelined: every append queued while a write is in flight goes out in the
/// next write; each write's sync is started as soon as the write (and so every earlier one)
/// has completed, without waiting for the previous sync, and its pushes are answered when
/// that sync completes. A slow fdatasync therefore delays the pushes it covers, not the
/// ones queued behind it. A failed write or sync is handed to the ingester (`Msg::WalFailed`),
/// which takes the pushes out before refusing them; the next write waits a little longer
/// after each failure in a row (a full disk is not hammered).
pub(super) async fn write_loop<M: From<Msg> + 'static>(
    mut writer: SegmentWriter,
    pending: Rc<RefCell<WalPending>>,
    woken: flume::Receiver<()>,
    inbox: flume::Sender<M>,
) {
    let mut spare = Vec::new();
    let failures = Rc::new(std::cell::Cell::new(0u32));
    let syncs = pending.borrow().syncs.clone();
    // Writes started and completed, for I16.
    let (mut started, mut completed) = (0u64, 0u64);
    while woken.recv_async().await.is_ok() {
        loop {
            if failures.get() > 0 {
                let ms = (25u64 << failures.get().min(7)).min(2000);
                monoio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let cut = pending.borrow_mut().cut.take();
            if let Some(cut) = cut {
                // A block cut first: what was appended before it and its markers go to the
                // current segment, which closing syncs (with every earlier write); appends
                // made since wait in `buf` for the next segment.
                let (res, _) = writer.write(cut.buf).await;
                // A failed write is cut off by the writer; a failed close may leave it whole.
                let res = match res {
                    Ok(_) => writer.cut().await.map(|seq| (writer.dir().to_path_buf(), seq)).map_err(|e| (e, true)),
                    Err(e) => Err((e, false)),
                };
                let res = res.map_err(|(e, written)| (e.to_string(), written));
                report(&inbox, &failures, cut.waiters, res.as_ref().err().cloned()).await;
                let res = res.map_err(|(e, _)| CutError::Wal(e));
                let _ = cut.reply.send(res.map(Some));
                continue;
            }
            let (buf, waiters) = {
                let mut p = pending.borrow_mut();
                if p.buf.is_empty() && p.waiters.is_empty() {
                    break;
                }
                let buf = std::mem::replace(&mut p.buf, std::mem::take(&mut spare));
                (buf, std::mem::take(&mut p.waiters))
            };
            started += 1;
            let (res, mut buf) = writer.write(buf).await;
            completed += 1;
            buf.clear();
            spare = buf;
            match res {
                Err(e) => report(&inbox, &failures, waiters, Some((e.to_string(), false))).await,
                Ok(None) => report(&inbox, &failures, waiters, None).await,
                Ok(Some(file)) => {
                    // At `MAX_SYNCS_IN_FLIGHT`, the next write waits for a sync to end.
                    let slot = syncs.take().await;
                    check(Invariant::WalWrite, started == completed, || {
                        format!("a WAL sync started with {} write(s) not completed", started - completed)
                    });
                    let (inbox, failures) = (inbox.clone(), failures.clone());
                    monoio::spawn(async move {
                        let res = file.sync_data().await.err().map(|e| (e.to_string(), true));
                        drop(slot);
                        report(&inbox, &failures, waiters, res).await;
                    });
                }
            }
        }
    }
}

/// Answers the waiters of a durable write (a whole push settles on the ingester afterwards), or
/// hands those of a failed one to the ingester.
async fn report<M: From<Msg>>(
    inbox: &flume::Sender<M>,
    failures: &std::cell::Cell<u32>,
    waiters: Vec<Waiter>,
    error: Option<(String, bool)>,
) {
    let Some(error) = error else {
        failures.set(0);
        let mut keys = Vec::new();
        for w in waiters {
            match w {
                Waiter::Push { reply, stats, key, whole } => {
                    if whole {
                        keys.push(key);
                    }
                    let _ = reply.send(Ok(stats));
                }
                Waiter::Sync(reply) => {
                    let _ = reply.send(Ok(AppendStats::default()));
                }
                Waiter::Abort { reply, .. } => {
                    if let Some(r) = reply {
                        r.send();
                    }
                }
            }
        }
        if !keys.is_empty() {
            let _ = inbox.send_async(Msg::Durable { keys }.into()).await;
        }
        return;
    };
    failures.set(failures.get().saturating_add(1));
    let _ = inbox.send_async(Msg::WalFailed { waiters, error: error.0, written: error.1 }.into()).await;
}
