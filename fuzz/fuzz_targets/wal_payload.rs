//! WAL payloads: a record that decodes is safe to append (every index checked), and cut
//! markers decode or fail without panicking.
//! Decoding and appending hold to their budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("wal_payload", data);
    if let Ok(kiln_shards::ingester::walcodec::Entry::Ingest { tenant, profile, groups, .. }) =
        kiln_shards::ingester::walcodec::decode_entry(data)
    {
        let mut head = kiln_shards::ingester::head::TenantHead::default();
        head.append(&tenant, &profile, &groups);
    }
});
