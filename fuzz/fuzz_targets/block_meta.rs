//! meta.json: any bytes decode to an error or to a meta that round-trips.
#![no_main]
use kiln_shards::block::meta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = meta::decode(data) {
        assert!(m.min_time <= m.max_time);
        assert_eq!(meta::decode(&meta::encode(&m)).unwrap(), m);
    }
});
