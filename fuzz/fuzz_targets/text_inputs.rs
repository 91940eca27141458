//! The text parsers of the ingest and query APIs: selectors, /ingest names, times, folded and
//! lines bodies, multipart bodies, and /ingest's other stack formats: trie and tree bodies,
//! speedscope files.
//! Folded, lines, trie, tree, speedscope and multipart bodies hold to their memory and
//! allocation budgets.
#![no_main]
use kiln::distributor::{folded, legacy, multipart};
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    kiln::budget::assert_within("folded", data);
    kiln::budget::assert_within("multipart", data);
    kiln::budget::assert_within("trie", data);
    kiln::budget::assert_within("speedscope", data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_shards::model::selector::parse_selector(s);
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
