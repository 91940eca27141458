//! The bucket index: one JSON object per tenant, `<tenant>/bucket-index.json`, listing the
//! tenant's blocks so that readers never list the bucket.
//!
//! The shape follows Mimir's and Pyroscope's bucket index (`version`, `blocks` with
//! `block_id`/`min_time`/`max_time`/`uploaded_at`, `block_deletion_marks`, `updated_at`),
//! stored as plain JSON rather than gzipped. Fields kiln adds (`size_bytes`, `files`) are
//! optional on read, and unknown fields are ignored, so an index written by an older or newer
//! kiln still loads.
//!
//! Invariant: block ids are unique within `blocks` (`add` replaces by id). In a process only
//! the store thread's per-tenant updater rewrites the object, one read-modify-write at a
//! time; against other processes each rewrite is a conditional write retried on a conflict,
//! or holds a lock file (`super::index_write`), so no update is lost to a concurrent one.
use serde::{Deserialize, Serialize};

/// The object name, under the tenant's prefix.
pub const FILE: &str = "bucket-index.json";

/// The only format version kiln reads and writes (Mimir's and Pyroscope's is 1 too).
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketIndex {
    pub version: u32,
    #[serde(default)]
    pub blocks: Vec<BlockRef>,
    #[serde(default)]
    pub block_deletion_marks: Vec<DeletionMark>,
    /// Unix seconds of the last rewrite.
    #[serde(default)]
    pub updated_at: i64,
}

/// One block of a tenant, as the index knows it: enough to choose the blocks a query needs
/// (by time) and to read them without a `head` per file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// The block's ULID; its files are `<tenant>/<block_id>/<file>`.
    pub block_id: String,
    /// Unix milliseconds of the earliest profile, inclusive.
    pub min_time: i64,
    /// Unix milliseconds of the latest profile, inclusive.
    pub max_time: i64,
    /// Unix seconds at which the block's upload completed.
    #[serde(default)]
    pub uploaded_at: i64,
    /// 1 for a block cut from a head; higher once compacted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compaction_level: u32,
    /// The sum of the sizes of `files`.
    #[serde(default)]
    pub size_bytes: u64,
    /// Every file of the block with its size in bytes, so a reader can fetch ranges (a
    /// footer, say) without asking the bucket for the size first.
    #[serde(default, with = "files_json")]
    pub files: Vec<(String, u64)>,
    /// In a cluster, the instance whose ingester cut the block: it serves it (each replica
    /// serves its own copy of its series, so a querier counts each profile once); empty for a
    /// single node's blocks, which every instance serves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ingester: String,
    /// For a compacted block, the level-1 blocks whose profiles it holds (its meta.json's
    /// `compaction.sources`): a WAL cut marker naming one of them is as good as indexed,
    /// even once that block itself is deleted (see `Bucket::indexed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The compactor found it damaged: queries still read it, compactions leave it out
    /// (Pyroscope's `no-compact-mark.json`, kept in the index).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_compact: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionMark {
    pub block_id: String,
    /// Unix seconds at which the block was marked for deletion.
    pub deletion_time: i64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Default for BucketIndex {
    fn default() -> Self {
        BucketIndex { version: VERSION, blocks: Vec::new(), block_deletion_marks: Vec::new(), updated_at: 0 }
    }
}

impl BlockRef {
    /// Whether the block may hold profiles in `[start_ms, end_ms]` (both inclusive).
    pub fn overlaps(&self, start_ms: i64, end_ms: i64) -> bool {
        self.min_time <= end_ms && start_ms <= self.max_time
    }

    /// The size of one of the block's files, if the index lists it.
    pub fn file_size(&self, name: &str) -> Option<u64> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }
}

impl BucketIndex {
    /// The object path of a tenant's index.
    pub fn path(tenant: &str) -> String {
        format!("{tenant}/{FILE}")
    }

    /// Adds `block`, or replaces the block with the same id in place (an upload retried
    /// after a crash must not list the block twice).
    pub fn add(&mut self, block: BlockRef) {
        match self.blocks.iter_mut().find(|b| b.block_id == block.block_id) {
            Some(b) => *b = block,
            None => self.blocks.push(block),
        }
    }

    /// Removes a block and its deletion mark; whether it was listed.
    pub fn remove(&mut self, block_id: &str) -> bool {
        let before = self.blocks.len();
        self.blocks.retain(|b| b.block_id != block_id);
        self.block_deletion_marks.retain(|m| m.block_id != block_id);
        before != self.blocks.len()
    }

    /// Marks a listed block for deletion at `at` (unix seconds); a block already marked keeps
    /// its first mark (the deletion delay counts from it). Whether it is listed.
    pub fn mark(&mut self, block_id: &str, at: i64) -> bool {
        if self.block(block_id).is_none() {
            return false;
        }
        if !self.is_marked(block_id) {
            self.block_deletion_marks.push(DeletionMark { block_id: block_id.to_string(), deletion_time: at });
        }
        true
    }

    pub fn is_marked(&self, block_id: &str) -> bool {
        self.block_deletion_marks.iter().any(|m| m.block_id == block_id)
    }

    /// The blocks not marked for deletion: what a reader that starts now reads.
    pub fn live(&self) -> impl Iterator<Item = &BlockRef> {
        let marked: std::collections::HashSet<&str> =
            self.block_deletion_marks.iter().map(|m| m.block_id.as_str()).collect();
        self.blocks.iter().filter(move |b| !marked.contains(b.block_id.as_str()))
    }

    pub fn block(&self, block_id: &str) -> Option<&BlockRef> {
        self.blocks.iter().find(|b| b.block_id == block_id)
    }

    /// The blocks that may hold profiles in `[start_ms, end_ms]`, blocks marked for deletion
    /// included (a mark only says the block will go; until then it is still the data).
    pub fn overlapping(&self, start_ms: i64, end_ms: i64) -> impl Iterator<Item = &BlockRef> {
        self.blocks.iter().filter(move |b| b.overlaps(start_ms, end_ms))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).expect("bucket index serializes")
    }

    /// Parses an index; refuses versions kiln does not know rather than guessing.
    pub fn from_json(bytes: &[u8]) -> Result<BucketIndex, String> {
        let idx: BucketIndex = serde_json::from_slice(bytes).map_err(|e| format!("invalid bucket index JSON: {e}"))?;
        if idx.version != VERSION {
            return Err(format!("unsupported bucket index version {} (kiln reads version {VERSION})", idx.version));
        }
        Ok(idx)
    }
}

/// `files` as `[{"name": "...", "size_bytes": N}, ...]`: self-describing JSON, while the Rust
/// side stays a plain list of pairs.
mod files_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct FileOut<'a> {
        name: &'a str,
        size_bytes: u64,
    }

    #[derive(Deserialize)]
    struct FileIn {
        name: String,
        #[serde(default)]
        size_bytes: u64,
    }

    pub fn serialize<S: Serializer>(files: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(files.iter().map(|(name, size)| FileOut { name, size_bytes: *size }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u64)>, D::Error> {
        let v: Vec<FileIn> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|f| (f.name, f.size_bytes)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, min: i64, max: i64) -> BlockRef {
        BlockRef {
            block_id: id.into(),
            min_time: min,
            max_time: max,
            uploaded_at: 1_700_000_000,
            compaction_level: 1,
            size_bytes: 30,
            files: vec![("meta.json".into(), 10), ("profiles.bin".into(), 20)],
            ..Default::default()
        }
    }

    #[test]
    fn json_round_trip() {
        let mut idx = BucketIndex { updated_at: 1_700_000_123, ..Default::default() };
        idx.add(block("01HZZZZZZZZZZZZZZZZZZZZZZA", 1000, 2000));
        idx.add(block("01HZZZZZZZZZZZZZZZZZZZZZZB", 1500, 3000));
        idx.block_deletion_marks.push(DeletionMark { block_id: "01HZZZZZZZZZZZZZZZZZZZZZZA".into(), deletion_time: 5 });
        let json = idx.to_json();
        let back = BucketIndex::from_json(&json).unwrap();
        assert_eq!(back, idx);
        let text = String::from_utf8(json).unwrap();
        for key in [
            "\"version\":1",
            "\"block_id\":\"01HZZZZZZZZZZZZZZZZZZZZZZA\"",
            "\"min_time\":1000",
            "\"max_time\":2000",
            "\"uploaded_at\":1700000000",
            "\"block_deletion_marks\":[{\"block_id\"",
            "\"deletion_time\":5",
            "\"updated_at\":1700000123",
            "{\"name\":\"meta.json\",\"size_bytes\":10}",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn reads_a_pyroscope_style_index() {
        // Fields kiln does not write (compactor_shard_id) are ignored; fields it adds are
        // optional.
        let text = r#"{"version":1,"blocks":[{"block_id":"01A","min_time":1,"max_time":2,"uploaded_at":3,
            "compactor_shard_id":"1_of_4","compaction_level":2}],"block_deletion_marks":[],"updated_at":4}"#;
        let idx = BucketIndex::from_json(text.as_bytes()).unwrap();
        assert_eq!(idx.blocks.len(), 1);
        assert_eq!(idx.blocks[0].compaction_level, 2);
        assert!(idx.blocks[0].files.is_empty());
        assert_eq!(idx.updated_at, 4);
        assert!(BucketIndex::from_json(br#"{"version":2,"blocks":[]}"#).unwrap_err().contains("version 2"));
        assert!(BucketIndex::from_json(b"{").is_err());
    }

    #[test]
    fn add_replaces_by_id() {
        let mut idx = BucketIndex::default();
        idx.add(block("a", 0, 10));
        idx.add(block("b", 5, 20));
        let mut a2 = block("a", 0, 12);
        a2.compaction_level = 2;
        idx.add(a2.clone());
        assert_eq!(idx.blocks.len(), 2);
        assert_eq!(idx.block("a"), Some(&a2));
        assert_eq!(idx.blocks[0].block_id, "a", "replaced in place");
        assert_eq!(idx.block("a").unwrap().file_size("profiles.bin"), Some(20));
        let ids: Vec<_> = idx.overlapping(11, 11).map(|b| b.block_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let ids: Vec<_> = idx.overlapping(13, 100).map(|b| b.block_id.as_str()).collect();
        assert_eq!(ids, ["b"]);
        idx.block_deletion_marks.push(DeletionMark { block_id: "a".into(), deletion_time: 1 });
        assert!(idx.remove("a"));
        assert!(!idx.remove("a"));
        assert!(idx.block_deletion_marks.is_empty());
        assert_eq!(idx.blocks.len(), 1);
    }
}
