//! The text parsers of the ingest and query APIs: selectors, /ingest names, times, folded and
//! lines bodies, multipart bodies.
#![no_main]
use kiln::distributor::{folded, legacy, multipart};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_shards::selector::parse_selector(s);
        let _ = legacy::parse_name(s);
        let _ = kiln::timeparse::parse_time_ns(s, 1_700_000_000_000_000_000);
        let _ = folded::parse_folded(s);
        let _ = folded::parse_lines(s);
    }
    if let Some((boundary, body)) = data.split_first().map(|(n, rest)| rest.split_at((*n as usize).min(rest.len()))) {
        if let Ok(b) = std::str::from_utf8(boundary) {
            let _ = multipart::parse(body, b);
        }
    }
});
