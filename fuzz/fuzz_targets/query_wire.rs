//! Query requests and partial results between the instances of a cluster
//! (`kiln_shards::query::wire`): any bytes decode or fail without panicking, within budget,
//! and what decodes encodes to a message that decodes again, to one of the same length (a key
//! filter is a hash map, so its order, and only its order, may differ).
#![no_main]
use kiln_shards::query::wire;
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("query_wire", data);
    if let Ok(q) = wire::decode_request(data) {
        let again = wire::encode_request(&q);
        assert_eq!(wire::encode_request(&wire::decode_request(&again).expect("re-decodes")).len(), again.len());
    }
    if let Ok(parts) = wire::decode_results(data) {
        let again = wire::encode_results(&parts);
        assert_eq!(wire::encode_results(&wire::decode_results(&again).expect("re-decodes")).len(), again.len());
    }
});
