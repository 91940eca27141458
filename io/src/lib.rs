//! kiln's bytes on the wire, on disk and in buckets.
//!
//! `codec` holds the varints, strings and bounded reader that the WAL payload, the block
//! files and TREE bytes are written with. `compress` holds the bounded gzip handling every
//! ingest and RPC path shares: a body is never inflated past the limit the caller names, so a
//! zip bomb costs at most that many bytes of memory on the core that received it. `store` reaches object storage (a
//! directory, S3, GCS, Azure) through one dedicated store thread, and keeps each tenant's
//! bucket index.
//!
//! Beside them, three small pieces every crate above shares: `error` (what a caller can do
//! about an error), `invariant` (ARCHITECTURE.md's invariants, checked where they can break)
//! and `bound` (a fixed number of slots bounding a set of tasks); and `lock_file`, the
//! `flock` that keeps two processes out of one WAL directory or one local bucket index
//! rewrite.
pub mod bound;
pub mod codec;
pub mod compress;
pub mod error;
pub mod invariant;
pub mod lock_file;
pub mod store;
pub mod wal;
