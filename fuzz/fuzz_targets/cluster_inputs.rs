//! What a cluster reads from its peers and its network besides RPCs: a member's gossiped
//! keys (`cluster::entry::decode`), a DNS SRV answer for `dnssrv+` joins
//! (`cluster::join::parse_srv_answer`) and the memberlist page's Forget form
//! (`cluster::pages::forget_id`). Each decodes or fails without panicking.
#![no_main]
use kiln::cluster::{entry, join, pages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input as the values of the entry's keys, in order, split at 0xff (never in UTF-8),
    // so that the fuzzer reaches every key's parser; a missing value is a missing key.
    let values: Vec<&str> = data.split(|&b| b == 0xff).map(|v| std::str::from_utf8(v).unwrap_or("")).collect();
    let keys = [entry::ADDR, entry::ZONE, entry::COMPONENTS, entry::STATE, entry::CORES, entry::SEED];
    let get = |k: &str| keys.iter().position(|x| *x == k).and_then(|i| values.get(i).copied());
    if let Ok(d) = entry::decode("fuzz", get) {
        // A decoded entry encodes to keys that decode to the same entry.
        let again: std::collections::HashMap<String, String> = entry::own_keys(&d).into_iter().collect();
        let back = entry::decode("fuzz", |k| again.get(k).map(String::as_str)).expect("own keys decode");
        assert_eq!(format!("{back:?}"), format!("{d:?}"));
    }
    let id = data.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let _ = join::parse_srv_answer(data, id);
    let _ = pages::forget_id(data);
});
