//! OTLP profile export requests, protobuf and JSON: decoding (bounded by the OTLP message
//! shapes) and conversion into kiln's profiles must never panic and hold to the `otlp`
//! memory and allocation budget; what converts must pass the model's own check.
#![no_main]
use kiln::distributor::otlp::{convert, decode_request, Encoding};
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("otlp", data);
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let Ok(req) = decode_request(encoding, data, 8 << 20) else { continue };
        let limits = kiln::distributor::pprof::PprofLimits { max_samples: 16_000 };
        if let Ok(profiles) = convert::convert(&req, limits, 0, 1) {
            for p in profiles {
                let groups: Vec<_> = p
                    .decoded
                    .groups
                    .into_iter()
                    .map(|(labels, samples)| kiln_shards::model::profile::SampleGroup { labels, samples })
                    .collect();
                if let Err(e) = p.decoded.profile.check(&groups) {
                    panic!("a converted profile fails its check: {e}");
                }
            }
        }
    }
});
