//! pprof decoding, validation and normalisation must never panic, whatever the bytes.
#![no_main]
use kiln::distributor::pprof;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = pprof::decode(data) {
        let _ = pprof::normalize(input, pprof::PprofLimits { max_samples: 16000 });
    }
});
