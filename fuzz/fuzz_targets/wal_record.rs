//! WAL segment framing: any bytes split into records or a torn/corrupt verdict, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, _tail) = kiln_io::wal::record::decode_all(data);
    let mut again = Vec::new();
    for r in &records {
        kiln_io::wal::record::encode(r, &mut again);
    }
    // Re-framing the decoded records gives back the clean prefix they came from.
    assert_eq!(&data[..again.len()], &again[..]);
});
