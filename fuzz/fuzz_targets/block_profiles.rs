//! profiles.parquet: any bytes give an error or rows; reading every row of a footer that
//! parses never panics, with or without its span samples (a panic inside the parquet decoder is caught and becomes an error).
#![no_main]
use bytes::Bytes;
use kiln_shards::block::profiles::{Columns, ProfilesFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ProfilesFile::from_tail(data.len() as u64, data) else { return };
    let rows = [0..file.num_rows()];
    let bytes = Bytes::copy_from_slice(data);
    for columns in [Columns::Head, Columns::Samples, Columns::Spans] {
        let fetched: Vec<_> = file
            .plan(&rows, columns)
            .into_iter()
            .filter(|r| r.end as usize <= data.len())
            .map(|r| (r.clone(), bytes.slice(r.start as usize..r.end as usize)))
            .collect();
        let mut n = 0u64;
        let _ = file.read_spans(&fetched, &rows, columns, i64::MIN, i64::MAX, |_, _, _, _, st, v, sp| {
            assert_eq!(st.len(), v.len());
            assert!(sp.stacks.len() == sp.values.len() && sp.values.len() == sp.spans.len());
            n += 1;
        });
        assert!(n <= file.num_rows());
    }
});
