//! The store-gateway as the network sees it. At start it reads every tenant's bucket index
//! and hands each block to the core that owns it; what each core keeps of its blocks (the
//! block set and its cache) is `kiln_shards::store_gateway`.
use kiln_io::error::ErrorKind;
use kiln_io::store::bucket_index::BlockRef;
use kiln_io::store::{Store, StoreError};
use kiln_shards::model::ids::TenantId;
use kiln_shards::runtime::{CoreGone, Mesh};
use kiln_shards::store_gateway::Msg;

/// Every (tenant, block id) in the bucket indexes, marked for deletion or not: what replay
/// must not apply again.
pub type Indexed = std::collections::HashSet<(String, String)>;

/// Why the blocks could not be opened at start.
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

/// Reads every tenant's bucket index and hands each block to the core the ring gives it.
/// Returns every indexed (tenant, block id), for replay to skip what blocks hold.
///
/// `serve` says which blocks this instance serves (in a cluster, the blocks its own ingester
/// cut and not the other replicas' copies: each instance then holds one copy of each of its
/// series' profiles, which the querier's replica deduplication counts on; see
/// `querier::replicas` and I18).
pub fn open_blocks(store: &Store, mesh: &Mesh, serve: &dyn Fn(&BlockRef) -> bool) -> Result<Indexed, OpenError> {
    let mut indexed = Indexed::new();
    let mut per_core: Vec<Vec<(TenantId, BlockRef)>> = vec![Vec::new(); mesh.cores()];
    let tenants = store.blocking_tenants().map_err(|e| OpenError::Tenants { store: store.describe(), source: e })?;
    for tenant in tenants {
        let idx = store
            .blocking_read_bucket_index(&tenant)
            .map_err(|e| OpenError::Index { tenant: tenant.clone(), source: e })?;
        let deleted: std::collections::HashSet<&str> =
            idx.block_deletion_marks.iter().map(|m| m.block_id.as_str()).collect();
        for b in &idx.blocks {
            // A block marked for deletion still holds what its WAL records held.
            indexed.insert((tenant.clone(), b.block_id.clone()));
            if deleted.contains(b.block_id.as_str()) || !serve(b) {
                continue;
            }
            let core = mesh.ring.block_owner(&b.block_id) as usize;
            per_core[core].push((TenantId::known(tenant.as_str()), b.clone()));
        }
    }
    tracing::info!(blocks = indexed.len(), storage = %store.describe(), "blocks opened");
    for (core, blocks) in per_core.into_iter().enumerate() {
        mesh.send_blocking(core, Msg::AddBlocks { blocks })?;
    }
    Ok(indexed)
}
