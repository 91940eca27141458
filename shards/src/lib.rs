//! kiln's per-core runtime and the data each core owns.
//!
//! A series is owned by one core (chosen by `ring`); that core's `Shard` holds the series'
//! `head` (profiles as columns, `symbols` per tenant). Other cores talk to it through the
//! `runtime::Mesh`. Ingest hands over a normalised `profile::Profile`; queries send a
//! `query::QueryRequest` and merge the partial `QueryResult`s.
pub mod block;
pub mod childindex;
pub mod flush;
pub mod head;
pub mod labels;
pub mod profile;
pub mod query;
pub mod ring;
pub mod runtime;
pub mod selector;
pub mod shard;
pub mod storegateway;
pub mod symbols;
pub mod walcodec;
