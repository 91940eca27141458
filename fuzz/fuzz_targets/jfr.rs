//! JFR recordings and labels snapshots as `/ingest?format=jfr` reads them (each part gzip or
//! not): every input is read and converted without a panic, and within the `jfr` decoder's
//! memory and allocation budget (kiln::budget). Seeds: testdata/jfr/jfr-parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("jfr", data);
});
