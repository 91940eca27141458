//! Bounded inflate never returns more than its limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = kiln_io::compress::gunzip_bounded(data, 64 * 1024) {
        assert!(out.len() <= 64 * 1024);
    }
});
