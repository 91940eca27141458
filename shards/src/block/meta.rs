//! `meta.json`: what a block is, without opening its other files. Shaped like the Thanos /
//! Pyroscope block meta (`ulid`, `minTime`, `maxTime`, `stats`, `compaction`, `version`,
//! `files`), with kiln's own version numbering (1) and times in integer milliseconds.
use super::FormatError;
use serde::{Deserialize, Serialize};

/// The only meta version this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockMeta {
    /// The block id: a ULID, 26 characters of Crockford base32. Also the block's folder name.
    pub ulid: String,
    /// Milliseconds since the epoch of the oldest profile, inclusive (floor of its ns time).
    #[serde(rename = "minTime")]
    pub min_time: i64,
    /// Milliseconds since the epoch of the newest profile, inclusive (floor of its ns time).
    #[serde(rename = "maxTime")]
    pub max_time: i64,
    pub stats: BlockStats,
    pub compaction: Compaction,
    pub version: u32,
    /// The block's other files and their sizes (meta.json itself is not listed: its size
    /// cannot be part of its own content).
    pub files: Vec<FileMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockStats {
    #[serde(rename = "numSeries")]
    pub num_series: u64,
    /// Rows of profiles.parquet.
    #[serde(rename = "numProfiles")]
    pub num_profiles: u64,
    /// (stack, value) pairs over all profiles.
    #[serde(rename = "numSamples")]
    pub num_samples: u64,
    /// Nodes of the stack tree in symbols.symdb, the virtual root not counted.
    #[serde(rename = "numStacks")]
    pub num_stacks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Compaction {
    /// 1 for a block cut from a head; a compaction of level-n blocks writes level n+1.
    pub level: u32,
    /// The ids of the level-1 blocks whose data this block holds (itself, for a head cut).
    pub sources: Vec<String>,
    /// The blocks merged into this one (none for a head cut).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileMeta {
    /// Path relative to the block folder, e.g. `index.tsdb`.
    #[serde(rename = "relPath")]
    pub rel_path: String,
    #[serde(rename = "sizeBytes")]
    pub size_bytes: u64,
}

/// Whether `s` is a ULID as text: 26 characters of Crockford's base32 alphabet (upper case,
/// no I, L, O, U), the first at most '7' so the value fits in 128 bits.
pub fn valid_ulid(s: &str) -> bool {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    s.len() == 26 && s.as_bytes()[0] <= b'7' && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Pretty JSON, as the other tools' block metas are written.
pub fn encode(meta: &BlockMeta) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(meta).expect("BlockMeta serialises: plain fields, string keys");
    v.push(b'\n');
    v
}

/// Parses and checks a `meta.json`: known version, a valid ULID, `minTime <= maxTime`.
pub fn decode(bytes: &[u8]) -> Result<BlockMeta, FormatError> {
    let meta: BlockMeta = serde_json::from_slice(bytes).map_err(|e| FormatError::Meta(e.to_string()))?;
    if meta.version != VERSION {
        return Err(FormatError::Version { file: super::META, found: meta.version, supported: VERSION });
    }
    if !valid_ulid(&meta.ulid) {
        return Err(FormatError::Meta(format!("ulid {:?} is not a ULID", meta.ulid)));
    }
    if meta.min_time > meta.max_time {
        return Err(FormatError::Meta(format!("minTime {} is after maxTime {}", meta.min_time, meta.max_time)));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BlockMeta {
        BlockMeta {
            ulid: "01HD3X85G9BGAG4S3TKPNMFG4Z".into(),
            min_time: 1,
            max_time: 20,
            stats: BlockStats { num_series: 2, num_profiles: 20, num_samples: 20, num_stacks: 7 },
            compaction: Compaction {
                level: 1,
                sources: vec!["01HD3X85G9BGAG4S3TKPNMFG4Z".into()],
                parents: Vec::new(),
            },
            version: 1,
            files: vec![FileMeta { rel_path: "index.tsdb".into(), size_bytes: 10 }],
        }
    }

    #[test]
    fn round_trip_and_field_names() {
        let m = sample();
        let bytes = encode(&m);
        let text = std::str::from_utf8(&bytes).unwrap();
        for key in ["\"minTime\"", "\"maxTime\"", "\"numSeries\"", "\"numProfiles\"", "\"relPath\"", "\"sizeBytes\""] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert_eq!(decode(&bytes).unwrap(), m);
    }

    #[test]
    fn rejects_bad_metas() {
        let mut m = sample();
        m.version = 2;
        assert!(matches!(decode(&encode(&m)), Err(FormatError::Version { found: 2, .. })));
        let mut m = sample();
        m.ulid = "not-a-ulid".into();
        assert!(decode(&encode(&m)).is_err());
        let mut m = sample();
        m.min_time = 30;
        assert!(decode(&encode(&m)).is_err());
        assert!(decode(b"{}").is_err());
        assert!(decode(b"").is_err());
    }

    #[test]
    fn ulids() {
        assert!(valid_ulid("01H3YE0W63FNXM69N2WVTRBYYK"));
        assert!(!valid_ulid("81H3YE0W63FNXM69N2WVTRBYYK"));
        assert!(!valid_ulid("01H3YE0W63FNXM69N2WVTRBYYI"));
        assert!(!valid_ulid("01h3ye0w63fnxm69n2wvtrbyyk"));
        assert!(!valid_ulid("01H3YE0W63FNXM69N2WVTRBYY"));
    }

    proptest! {
        #[test]
        fn damage_is_an_error_not_a_panic(flip in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let bytes = encode(&sample());
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            // A flip inside a string value may still decode; it must never panic.
            let _ = decode(&flipped);
            // Any cut that loses the closing brace (the last byte is a newline).
            let n = cut.index(bytes.len() - 1);
            prop_assert!(decode(&bytes[..n]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
