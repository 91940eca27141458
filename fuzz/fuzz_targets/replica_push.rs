//! A replica's push (`kiln.ingester.v1.IngesterService/Push`), as the server runs it short of
//! the cores (`kiln::ingester::remote::decode_push`: the message, each WAL record,
//! `Profile::check`), within budget; and every profile it accepts is appended to a head, as a
//! core would, which must not panic: a hostile peer must not be able to stop a core.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("replica_push", data);
    let body = bytes::Bytes::copy_from_slice(data);
    if let Ok(Some((tenant, batch))) = kiln::ingester::remote::decode_push(&body) {
        let mut head = kiln_shards::ingester::head::TenantHead::default();
        for (profile, groups) in &batch {
            head.append(tenant.as_str(), profile, groups);
        }
    }
});
