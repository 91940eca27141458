//! WAL payloads: a record that decodes is safe to append (every index checked).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((tenant, profile, groups)) = kiln_shards::walcodec::decode(data) {
        let mut head = kiln_shards::head::TenantHead::default();
        head.append(&tenant, &profile, &groups);
    }
});
