//! The store-gateway as the network sees it. At start it reads every tenant's bucket index
//! and hands each block this instance serves to the core that owns it; in a cluster it then
//! keeps the blocks the store-gateway ring gives it in step with the bucket (`sync`). What
//! each core keeps of its blocks (the block set and its cache) is `kiln_shards::store_gateway`.
pub mod sync;

use kiln_io::error::ErrorKind;
use kiln_io::store::bucket_index::{BlockRef, BucketIndex};
use kiln_io::store::{Store, StoreError};
use kiln_shards::model::ids::TenantId;
use kiln_shards::runtime::{CoreGone, Mesh};
use kiln_shards::store_gateway::Msg;

/// Which blocks of a tenant an instance takes (tenant, block).
pub type Take<'a> = &'a dyn Fn(&str, &BlockRef) -> bool;

/// Every (tenant, block id) in the bucket indexes, marked for deletion or not: what replay
/// must not apply again.
pub type Indexed = std::collections::HashSet<(String, String)>;

/// Why the bucket indexes could not be read, or the blocks handed over.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("listing tenants in {store}: {source}")]
    Tenants { store: String, source: StoreError },
    #[error("reading the bucket index of tenant {tenant}: {source}")]
    Index { tenant: String, source: StoreError },
    #[error(transparent)]
    CoreGone(#[from] CoreGone),
}

impl OpenError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpenError::Tenants { source, .. } | OpenError::Index { source, .. } => source.kind(),
            OpenError::CoreGone(_) => ErrorKind::Fatal,
        }
    }
}

/// Every tenant's bucket index, as read at one time.
pub struct Bucket {
    pub tenants: Vec<(String, BucketIndex)>,
}

impl Bucket {
    /// Lists the tenants (the one listing of the bucket, I15) and reads each one's index,
    /// through the store thread.
    pub fn read(store: &Store) -> Result<Bucket, OpenError> {
        let names = store.blocking_tenants().map_err(|e| OpenError::Tenants { store: store.describe(), source: e })?;
        let mut tenants = Vec::with_capacity(names.len());
        for tenant in names {
            let idx = store
                .blocking_read_bucket_index(&tenant)
                .map_err(|e| OpenError::Index { tenant: tenant.clone(), source: e })?;
            tenants.push((tenant, idx));
        }
        Ok(Bucket { tenants })
    }

    /// Every indexed (tenant, block id), with the level-1 blocks each compacted block
    /// holds: a block marked for deletion still holds what its WAL records held, and a
    /// compacted block what its sources did, after they are deleted.
    pub fn indexed(&self) -> Indexed {
        self.tenants
            .iter()
            .flat_map(|(t, idx)| {
                idx.blocks.iter().flat_map(move |b| {
                    std::iter::once(&b.block_id).chain(&b.sources).map(move |id| (t.clone(), id.clone()))
                })
            })
            .collect()
    }

    /// Every block marked for deletion at or before `before` (unix seconds), with its tenant.
    pub fn marked_before(&self, before: i64) -> Vec<(TenantId, String)> {
        self.tenants
            .iter()
            .flat_map(|(t, idx)| {
                idx.block_deletion_marks
                    .iter()
                    .filter(move |m| m.deletion_time <= before)
                    .map(move |m| (TenantId::known(t.as_str()), m.block_id.clone()))
            })
            .collect()
    }

    /// The live blocks and those marked for deletion at or after `marked_since` (unix
    /// seconds): what a cluster's readers keep reading for a while after a compaction, until
    /// every store-gateway serves its output (see `sync::retire_after`).
    fn readable(&self, marked_since: i64) -> impl Iterator<Item = (&str, &BlockRef)> {
        self.tenants.iter().flat_map(move |(t, idx)| {
            let recent: std::collections::HashSet<&str> = idx
                .block_deletion_marks
                .iter()
                .filter(|m| m.deletion_time >= marked_since)
                .map(|m| m.block_id.as_str())
                .collect();
            let marked: std::collections::HashSet<&str> =
                idx.block_deletion_marks.iter().map(|m| m.block_id.as_str()).collect();
            idx.blocks
                .iter()
                .filter(move |b| !marked.contains(b.block_id.as_str()) || recent.contains(b.block_id.as_str()))
                .map(move |b| (t.as_str(), b))
        })
    }

    /// The live blocks `take` keeps, each with its tenant, by the core the instance's ring
    /// gives its id.
    fn per_core(
        &self,
        mesh: &Mesh,
        marked_since: i64,
        take: &dyn Fn(&str, &BlockRef) -> bool,
    ) -> Vec<Vec<(TenantId, BlockRef)>> {
        let taken = self.readable(marked_since).filter(|(t, b)| take(t, b));
        mesh.by_block_owner(taken.map(|(t, b)| (TenantId::known(t), b.clone())), |b| &b.1.block_id)
    }
}

/// Hands each live block `pinned` keeps to the core the ring gives it, to keep while the
/// process runs: in a cluster the blocks this instance's ingester cut, alone every block
/// (see `target::BlocksServed`). Returns how many.
/// `marked_since`: blocks marked for deletion at or after it (unix seconds) are kept too
/// (`i64::MAX` on a single node, whose compactor swaps blocks out itself).
pub fn open_blocks(
    bucket: &Bucket,
    mesh: &Mesh,
    marked_since: i64,
    pinned: &dyn Fn(&str, &BlockRef) -> bool,
) -> Result<usize, CoreGone> {
    hand_over(bucket, mesh, marked_since, pinned, |blocks| Msg::AddBlocks { blocks })
}

/// A cluster's sync at a new block epoch: each core is told every block the store-gateway
/// ring gives it now among the readable ones (`owns`; `None`: an ingester alone, which takes
/// no share) and the blocks to `retire` (a compaction's inputs a while after their mark),
/// then the mesh's epoch moves on once every core applied it (see `BlockSet::sync`), under
/// the swap lock. Returns how many blocks this instance owns.
pub fn sync_blocks(
    bucket: &Bucket,
    mesh: &Mesh,
    marked_since: i64,
    owns: Option<Take<'_>>,
    retire: &[(TenantId, String)],
) -> Result<usize, CoreGone> {
    let mut shares = match owns {
        Some(owns) => bucket.per_core(mesh, marked_since, owns),
        None => vec![Vec::new(); mesh.cores()],
    };
    let mut retired = mesh.by_block_owner(retire.iter().cloned(), |r| &r.1);
    let n = shares.iter().map(Vec::len).sum();
    mesh.at_next_epoch(|core, epoch, done| Msg::Sync {
        blocks: std::mem::take(&mut shares[core]),
        retire: std::mem::take(&mut retired[core]),
        epoch,
        done,
    })?;
    Ok(n)
}

/// Sends each core the message `msg` makes of its blocks among those `take` keeps; returns
/// how many blocks in all.
fn hand_over(
    bucket: &Bucket,
    mesh: &Mesh,
    marked_since: i64,
    take: &dyn Fn(&str, &BlockRef) -> bool,
    msg: fn(Vec<(TenantId, BlockRef)>) -> Msg,
) -> Result<usize, CoreGone> {
    let mut n = 0;
    for (core, blocks) in bucket.per_core(mesh, marked_since, take).into_iter().enumerate() {
        n += blocks.len();
        mesh.send_blocking(core, msg(blocks))?;
    }
    Ok(n)
}
