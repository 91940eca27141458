//! What Grafana and Drilldown send beyond queries: ad hoc profile files (any format, told
//! apart by their bytes), Connect GET query strings, and a stored tenant settings object.
//! The first two hold to their budget (`kiln::budget`, decoder `ad_hoc`).
#![no_main]
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("ad_hoc", data);
    for name in ["x.pprof", "x.txt", "x.json"] {
        let _ = kiln::ad_hoc_profiles::parse(name, data, 1 << 20, 16_000);
    }
    let _ = kiln::tenant_settings::SettingsFile::parse(data);
});
