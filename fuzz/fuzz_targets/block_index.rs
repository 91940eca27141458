//! index.tsdb: any bytes decode to an error or to an index whose invariants hold. Each input
//! is also tried with its checksum made valid, so the parser behind the CRC is exercised.
#![no_main]
use kiln_shards::block::index;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    if let Ok(idx) = index::decode(data) {
        let mut next = 0;
        for s in &idx.series {
            assert_eq!(s.first_row, next);
            assert!(s.min_ns <= s.max_ns);
            next += u64::from(s.rows);
            assert!(idx.by_profile_type(&s.profile_type).iter().all(|&i| (i as usize) < idx.series.len()));
        }
        // What decodes re-encodes to the same index.
        assert_eq!(index::decode(&index::encode(&idx)).unwrap(), idx);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 9 {
        let mut v = data.to_vec();
        let end = v.len() - 4;
        let crc = crc32c::crc32c(&v[..end]);
        v[end..].copy_from_slice(&crc.to_le_bytes());
        check(&v);
    }
});
