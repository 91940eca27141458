//! WAL payloads: a record that decodes is safe to append (every index checked), and cut
//! markers decode or fail without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kiln_shards::walcodec::Entry::Ingest { tenant, profile, groups }) =
        kiln_shards::walcodec::decode_entry(data)
    {
        let mut head = kiln_shards::head::TenantHead::default();
        head.append(&tenant, &profile, &groups);
    }
});
