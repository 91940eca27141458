//! Start-up: prepare the WAL generations, replay the last durable one into the cores'
//! heads (routed by the current ring) and into the new generation, then commit it.
//!
//! Runs on the main thread before any core opens the port, so `/ready` stays unready and no
//! client sees a partial head.
use kiln_io::wal::{self, segment};
use kiln_shards::runtime::Mesh;
use kiln_shards::shard::Msg;
use kiln_shards::walcodec;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct ReplayStats {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub dropped_tails: usize,
}

/// At most this many replayed records await their owners' WAL sync at once.
const IN_FLIGHT: usize = 4096;

/// Replays `source` through `mesh`. Damage other than a torn tail of a core's last segment
/// is an error: acknowledged data is never skipped silently.
pub fn replay(source: &Path, mesh: &Mesh) -> Result<ReplayStats, String> {
    let started = Instant::now();
    let segs = wal::segments(source).map_err(|e| format!("listing {}: {e}", source.display()))?;
    let mut st = ReplayStats::default();
    let mut waits: Vec<flume::Receiver<Result<kiln_shards::head::AppendStats, kiln_shards::shard::IngestError>>> =
        Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let last_of_core = segs.get(i + 1).is_none_or(|n| n.core != seg.core);
        let (records, dropped) = segment::read_segment(&seg.path).map_err(|e| e.to_string())?;
        if let Some(d) = dropped {
            if !last_of_core {
                return Err(format!(
                    "WAL segment {} is damaged at byte offset {} but is not its core's last segment; refusing to skip acknowledged data",
                    d.path.display(),
                    d.offset
                ));
            }
            tracing::warn!(file = %d.path.display(), offset = d.offset, bytes = d.bytes, "dropping the torn tail of the WAL (an interrupted, unacknowledged write)");
            st.dropped_tails += 1;
        }
        st.segments += 1;
        for rec in records {
            st.bytes += rec.len() as u64;
            let (tenant, profile, groups) = walcodec::decode(&rec).map_err(|e| {
                format!("WAL segment {}: a record with a valid checksum does not decode: {e}", seg.path.display())
            })?;
            let tenant: Arc<str> = Arc::from(tenant);
            let profile = Arc::new(profile);
            let mut per_core: Vec<Vec<_>> = vec![Vec::new(); mesh.cores()];
            for g in groups {
                let owner = mesh.ring.owner(g.labels.fingerprint(&tenant)).core as usize;
                per_core[owner].push(g);
            }
            for (c, groups) in per_core.into_iter().enumerate().filter(|(_, g)| !g.is_empty()) {
                let (tx, rx) = flume::bounded(1);
                mesh.send_blocking(
                    c,
                    Msg::Ingest { tenant: tenant.clone(), profile: profile.clone(), groups, reply: tx, replay: true },
                )
                .map_err(|e| e.to_string())?;
                waits.push(rx);
            }
            st.records += 1;
            if waits.len() >= IN_FLIGHT {
                drain(&mut waits)?;
            }
        }
    }
    drain(&mut waits)?;
    tracing::info!(
        segments = st.segments,
        records = st.records,
        bytes = st.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "WAL replayed"
    );
    Ok(st)
}

fn drain(
    waits: &mut Vec<flume::Receiver<Result<kiln_shards::head::AppendStats, kiln_shards::shard::IngestError>>>,
) -> Result<(), String> {
    for rx in waits.drain(..) {
        rx.recv().map_err(|_| "a core stopped during WAL replay".to_string())?.map_err(|e| e.to_string())?;
    }
    Ok(())
}
