//! pprof decoding, validation and normalisation must never panic, and the fast reader must
//! agree with the prost path on every input: same profile and groups, or the same error.
//! Both, and the pyspy name rewrite of /ingest, hold to their memory and allocation budgets.
#![no_main]
use kiln::distributor::pprof;
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("pprof", data);
    kiln::budget::assert_within("pprof_spy", data);
    let limits = pprof::PprofLimits { max_samples: 16000 };
    let slow = pprof::decode(data).and_then(|input| pprof::normalize(input, limits));
    let fast = pprof::decode_and_normalize(data, limits);
    match (slow, fast) {
        (Ok(a), Ok(b)) => {
            assert!(a.profile == b.profile, "profiles differ");
            assert_eq!(a.groups, b.groups);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("paths disagree: {:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
    }
});
