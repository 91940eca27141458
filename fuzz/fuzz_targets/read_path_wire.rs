//! The read path's internal messages (`kiln::query_scheduler::wire`): jobs, `Next` answers,
//! callers with their query IDs, and results, as schedulers, queriers and frontends decode
//! them from other members, within budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("read_path_wire", data);
});
