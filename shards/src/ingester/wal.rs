//! The ingester's WAL writer on one core: appends are framed into a pending buffer by the
//! core's inbox loop and written by one task per core (group commit), which reports each
//! write's outcome back through the core's own inbox.
use super::cut::CutResult;
use super::head::AppendStats;
use super::{IngestError, IngestReply, Msg};
use kiln_io::wal::segment::SegmentWriter;
use std::cell::RefCell;
use std::rc::Rc;

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
#[derive(Default)]
pub struct WalPending {
    pub(super) buf: Vec<u8>,
    pub(super) waiters: Vec<Waiter>,
    /// A block cut: everything appended before it, then its markers, to be written and
    /// closed in the current segment before anything appended after it.
    pub(super) cut: Option<CutBatch>,
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
                let res = res.map_err(|(e, _)| e);
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
            let (res, mut buf) = writer.write(buf).await;
            buf.clear();
            spare = buf;
            match res {
                Err(e) => report(&inbox, &failures, waiters, Some((e.to_string(), false))).await,
                Ok(None) => report(&inbox, &failures, waiters, None).await,
                Ok(Some(file)) => {
                    let (inbox, failures) = (inbox.clone(), failures.clone());
                    monoio::spawn(async move {
                        let res = file.sync_data().await.err().map(|e| (e.to_string(), true));
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
