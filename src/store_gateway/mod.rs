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

    /// The blocks queries may read: every indexed block not marked for deletion.
    fn live(&self) -> impl Iterator<Item = (&str, &BlockRef)> {
        self.tenants.iter().flat_map(|(t, idx)| idx.live().map(move |b| (t.as_str(), b)))
    }

    /// The live blocks `take` keeps, each with its tenant, by the core the instance's ring
    /// gives its id.
    fn per_core(&self, mesh: &Mesh, take: &dyn Fn(&str, &BlockRef) -> bool) -> Vec<Vec<(TenantId, BlockRef)>> {
        let mut per_core: Vec<Vec<(TenantId, BlockRef)>> = vec![Vec::new(); mesh.cores()];
        for (tenant, b) in self.live() {
            if take(tenant, b) {
                let core = mesh.ring.block_owner(&b.block_id) as usize;
                per_core[core].push((TenantId::known(tenant), b.clone()));
            }
        }
        per_core
    }
}

/// Hands each live block `pinned` keeps to the core the ring gives it, to keep while the
/// process runs: in a cluster the blocks this instance's ingester cut, alone every block
/// (see `target::BlocksServed`). Returns how many.
pub fn open_blocks(bucket: &Bucket, mesh: &Mesh, pinned: &dyn Fn(&str, &BlockRef) -> bool) -> Result<usize, CoreGone> {
    hand_over(bucket, mesh, pinned, |blocks| Msg::AddBlocks { blocks })
}

/// Tells each core every live block the store-gateway ring gives it now (`owns`, by tenant
/// and block): the new ones are added, the ones no longer given leave (see
/// `BlockSet::sync`). Returns how many blocks this instance owns.
pub fn sync_blocks(bucket: &Bucket, mesh: &Mesh, owns: &dyn Fn(&str, &BlockRef) -> bool) -> Result<usize, CoreGone> {
    hand_over(bucket, mesh, owns, |blocks| Msg::Sync { blocks })
}

/// Sends each core the message `msg` makes of its blocks among those `take` keeps; returns
/// how many blocks in all.
fn hand_over(
    bucket: &Bucket,
    mesh: &Mesh,
    take: &dyn Fn(&str, &BlockRef) -> bool,
    msg: fn(Vec<(TenantId, BlockRef)>) -> Msg,
) -> Result<usize, CoreGone> {
    let mut n = 0;
    for (core, blocks) in bucket.per_core(mesh, take).into_iter().enumerate() {
        n += blocks.len();
        mesh.send_blocking(core, msg(blocks))?;
    }
    Ok(n)
}
