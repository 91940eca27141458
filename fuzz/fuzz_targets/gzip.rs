//! Bounded inflate never returns more than its limit.
//! Within its budget: the limit, whatever the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("gzip", data);
    if let Ok(out) = kiln_io::compress::gunzip_bounded(data, 64 * 1024) {
        assert!(out.len() <= 64 * 1024);
    }
});
