//! JFR (Java Flight Recorder) recordings, as Pyroscope's Java agent, async-profiler and the
//! Datadog tracer send them to `/ingest?format=jfr`: kiln's own reader and Pyroscope's
//! conversion to one profile per event kind (shared/api.md §2.2).
//!
//! The reader streams over the recording chunk by chunk ([`chunk`]): a chunk's metadata
//! ([`metadata`]) describes its types, its constant pools ([`pool`]) hold the stack traces,
//! methods, classes and symbols its events ([`events`]) refer to by id, and each event is
//! converted as it is read ([`convert`]). Nothing is kept of a chunk once its events are
//! converted but the profiles built from them.
//!
//! Invariants: every size and count read is checked against the bytes left before anything
//! is sized from it; recursion (metadata elements, inline classes) is bounded; ids are
//! resolved along a fixed path, so cyclic references cannot loop; what the built profiles
//! cost is bounded by `Options::max_bytes`. A malformed recording is a [`JfrError`] naming
//! the problem, never a panic.
pub mod chunk;
pub mod convert;
pub mod events;
pub mod ingest;
pub mod labels;
pub mod metadata;
pub mod plan;
pub mod pool;
pub mod reader;
pub mod symbols;

pub use convert::{Converted, JfrProfile, Options};
pub use labels::LabelsSnapshot;

/// Why a recording (or its labels) could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct JfrError(String);

impl JfrError {
    pub fn new(msg: impl Into<String>) -> Self {
        JfrError(msg.into())
    }
}

/// Converts a whole (uncompressed) recording with its labels snapshot.
pub fn convert(data: &[u8], snapshot: &LabelsSnapshot, opts: Options) -> Result<Converted, JfrError> {
    if data.is_empty() {
        return Err(JfrError::new("the JFR recording is empty"));
    }
    let mut c = convert::Converter::new(snapshot, opts);
    let (mut rest, mut at) = (data, 0usize);
    while !rest.is_empty() {
        let (chunk, next) = chunk::next(rest, at).map_err(|e| JfrError::new(format!("jfr: {e}")))?;
        read_chunk(&mut c, &chunk).map_err(|e| JfrError::new(format!("jfr chunk at offset {at}: {e}")))?;
        at += chunk.bytes.len();
        rest = next;
    }
    c.finish()
}

fn read_chunk(c: &mut convert::Converter<'_>, chunk: &chunk::Chunk<'_>) -> Result<(), JfrError> {
    let mut meta = reader::Reader::new(&chunk.bytes[chunk.metadata_offset as usize..]);
    let types = metadata::Types::read(&mut meta).map_err(|e| JfrError::new(format!("metadata: {e}")))?;
    let pools = pool::Pools::read(&types, chunk.bytes, chunk.constant_pool_offset)
        .map_err(|e| JfrError::new(format!("constant pools: {e}")))?;
    let plans = events::EventPlans::new(&types);
    c.start_chunk();
    let mut r = chunk.events();
    let mut v = plan::Values::default();
    while let Some(event) = plans.next(&types, &mut r, &mut v)? {
        if let Some(kind) = event {
            c.event(kind, &v, &pools)?;
        }
    }
    Ok(())
}

/// Decodes a `LabelsSnapshot` (already inflated).
pub fn decode_labels(bytes: &[u8]) -> Result<LabelsSnapshot, JfrError> {
    <LabelsSnapshot as prost::Message>::decode(bytes)
        .map_err(|e| JfrError::new(format!("failed to parse labels form field: {e}")))
}

#[cfg(test)]
mod tests;
