//! symbols.symdb: any bytes decode to an error or to tables whose every reference is in
//! range (walking every stack to the root and resolving its frames must not panic). Each
//! input is also tried with its checksum made valid, so the parser behind the CRC is
//! exercised.
#![no_main]
use kiln_shards::block::symdb;
use kiln_shards::model::symbols::ROOT;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    let Ok(s) = symdb::decode(data) else { return };
    for n in 1..s.stack_count() as u32 {
        let mut id = n;
        while id != ROOT {
            let l = &s.locations[s.location[id as usize] as usize];
            let _ = &s.mappings[l.mapping as usize];
            for line in l.lines.iter() {
                let f = &s.functions[line.function as usize];
                let _ = (s.strings.get(f.name), s.strings.get(f.system_name), s.strings.get(f.filename));
            }
            assert!(s.parent[id as usize] < id);
            id = s.parent[id as usize];
        }
    }
    let again = symdb::decode(&symdb::encode(&s)).unwrap();
    assert_eq!(again.parent, s.parent);
    assert_eq!(again.location, s.location);
    assert_eq!(again.locations, s.locations);
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
