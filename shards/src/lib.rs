//! kiln's per-core runtime and the data each core owns, one folder per part:
//!
//! - `runtime`: the pinned executors, the mesh of bounded inboxes between cores, and each
//!   core's inbox loop (`runtime::core`).
//! - `ingester`: what a core keeps as an ingester: the per-tenant heads, the WAL writer and
//!   payload, and the cut of heads into blocks.
//! - `store_gateway`: the blocks a core owns and serves, with their cache.
//! - `model`: what the others speak in: labels, selectors, normalised profiles, symbols.
//! - `eval`: query evaluation over series columns, the same for heads and blocks.
//! - `query`: query requests and the partial results every core answers with.
//! - `ring`: which core owns a series or a block.
//! - `block`: a block's files, written and read back.
pub mod block;
pub mod eval;
pub mod ingester;
pub mod model;
pub mod query;
pub mod ring;
pub mod runtime;
pub mod store_gateway;
