//! Memory and work budgets of the decoders of untrusted bytes, and the means to check them.
//!
//! Every step from the wire to the head must cost at most a small multiple of its input plus
//! the configured limits: a request of a few hundred KiB must not be able to take gigabytes.
//! [`DECODERS`] lists each decoder a client (or the WAL) feeds, run as kiln runs it with the
//! limits below, and the [`Budget`] it must hold to for any input; [`CountingAlloc`], a
//! global allocator that counts, measures one run. The fuzz targets of these decoders
//! (`fuzz/`) and `tests/alloc_budget.rs` both install it and call [`check`]: the fuzzer
//! looks for inputs that break a budget, the test replays hostile inputs built to come
//! close, so CI catches a regression without a fuzzer. kiln itself never installs it.
//!
//! Work is measured by allocations, which are deterministic: a decoder that allocates per
//! element of its input must allocate a bounded number of times per input byte. (The linear
//! searches and walks that allocate nothing are linear by construction: `memmem`, the
//! protobuf cursors.)
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// What one run cost on the current thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The most bytes live at once beyond those live when the run started.
    pub peak_bytes: usize,
    /// Allocations (and reallocations that grew).
    pub allocations: u64,
}

/// The most a decoder may cost for an input of `n` bytes:
/// `fixed_bytes + bytes_per_byte * n` live at once, `fixed_allocs + allocs_per_byte * n`
/// allocations.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub fixed_bytes: usize,
    pub bytes_per_byte: usize,
    pub fixed_allocs: u64,
    pub allocs_per_byte: u64,
}

impl Budget {
    /// `Err` names the budget an input of `len` bytes broke, and by how much.
    pub fn check(&self, name: &str, len: usize, u: Usage) -> Result<(), String> {
        let bytes = self.fixed_bytes.saturating_add(self.bytes_per_byte.saturating_mul(len));
        let allocs = self.fixed_allocs.saturating_add(self.allocs_per_byte.saturating_mul(len as u64));
        if u.peak_bytes > bytes {
            return Err(format!(
                "{name}: {len} input bytes took {} bytes at peak, over the budget of {bytes} ({} + {} per byte)",
                u.peak_bytes, self.fixed_bytes, self.bytes_per_byte
            ));
        }
        if u.allocations > allocs {
            return Err(format!(
                "{name}: {len} input bytes took {} allocations, over the budget of {allocs} ({} + {} per byte)",
                u.allocations, self.fixed_allocs, self.allocs_per_byte
            ));
        }
        Ok(())
    }
}

/// Per-thread counters: a decoder runs on one thread, and tests run side by side.
struct Counters {
    live: Cell<isize>,
    peak: Cell<isize>,
    allocations: Cell<u64>,
}

thread_local! {
    // Const-initialised and without a destructor: safe to touch from inside the allocator.
    static COUNTERS: Counters =
        const { Counters { live: Cell::new(0), peak: Cell::new(0), allocations: Cell::new(0) } };
}

/// Charges `grown` new bytes; `transient` more are live for a moment (a reallocation
/// holds the old block and the new one at once).
fn grew(grown: usize, transient: usize) {
    let _ = COUNTERS.try_with(|c| {
        let live = c.live.get() + grown as isize;
        c.peak.set(c.peak.get().max(live + transient as isize));
        c.live.set(live);
        c.allocations.set(c.allocations.get() + 1);
    });
}

fn shrank(n: usize) {
    let _ = COUNTERS.try_with(|c| c.live.set(c.live.get() - n as isize));
}

/// A global allocator that forwards to `A` and counts, per thread, live bytes, their peak
/// and allocations, for [`measure`].
pub struct CountingAlloc<A>(pub A);

// SAFETY: every call is forwarded unchanged to `A`, which upholds `GlobalAlloc`'s contract;
// the counting touches only thread-local cells that never allocate.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are passed on.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            grew(layout.size(), 0);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size(), 0);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `self.0` (every allocation goes through it).
        unsafe { self.0.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller's guarantees for `new_size` are passed on.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size(), layout.size().min(new_size));
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Runs `f` and returns what it cost on this thread (meaningful only where a
/// [`CountingAlloc`] is the global allocator; zero elsewhere). What `f` returns is dropped
/// inside the measurement, so its size counts.
pub fn measure<R>(f: impl FnOnce() -> R) -> Usage {
    COUNTERS.with(|c| {
        c.live.set(0);
        c.peak.set(0);
        c.allocations.set(0);
    });
    drop(f());
    COUNTERS.with(|c| Usage { peak_bytes: c.peak.get().max(0) as usize, allocations: c.allocations.get() })
}

/// Whether a [`CountingAlloc`] is counting on this thread (a check that the harness is
/// installed, so that a budget test cannot pass by measuring nothing).
pub fn counting() -> bool {
    measure(|| Box::new(0u64)).allocations == 1
}

/// The limits the decoders run under: small, so that the budgets that include them are
/// meaningful.
pub mod limits {
    /// Inflated size of a gzip stream (a profile's or a request's).
    pub const INFLATE: usize = 1 << 20;
    /// Samples in a pprof (`-validation.max-profile-stacktrace-samples`' default).
    pub const SAMPLES: usize = 16_000;
    /// What the pyspy/rbspy name rewrite may add (what the profile size limit leaves).
    pub const DERIVED: usize = 1 << 20;
    /// What an OTLP request may take decoded (the body limit): large enough for the JSON
    /// fixture, whose objects the JSON estimate counts at the largest message's size.
    pub const OTLP_DECODED: usize = 8 << 20;
}

/// A decoder of untrusted bytes, as kiln runs it.
pub struct Decoder {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub budget: Budget,
}

fn pprof_limits() -> crate::distributor::pprof::PprofLimits {
    crate::distributor::pprof::PprofLimits { max_samples: limits::SAMPLES }
}

fn run_gzip(data: &[u8]) {
    let _ = kiln_io::compress::gunzip_bounded(data, limits::INFLATE);
}

fn run_pprof(data: &[u8]) {
    let _ = crate::distributor::pprof::decode_and_normalize(data, pprof_limits());
}

fn run_pprof_spy(data: &[u8]) {
    let _ = crate::distributor::legacy::decode_ingest_pprof(data, "pyspy", None, 1, pprof_limits(), limits::DERIVED);
}

fn run_multipart(data: &[u8]) {
    // The first byte says how long the boundary is, as in the `text_inputs` target.
    if let Some((&n, rest)) = data.split_first() {
        let (boundary, body) = rest.split_at((n as usize).min(rest.len()));
        if let Ok(b) = std::str::from_utf8(boundary) {
            let _ = crate::distributor::multipart::parse(body, b);
        }
    }
}

fn run_folded(data: &[u8]) {
    use crate::distributor::folded;
    if let Ok(text) = std::str::from_utf8(data) {
        let t = folded::folded_type("cpu", 100).expect("a known suffix");
        // As /ingest builds it.
        let max = folded::built_limit(data.len(), limits::INFLATE);
        if let Ok(stacks) = folded::parse_folded(text) {
            drop(folded::build_profile(&stacks, &t, 1, max));
        }
        drop(folded::build_profile(&folded::parse_lines(text), &t, 1, max));
    }
}

fn run_jfr(data: &[u8]) {
    // As a multipart `jfr` or `labels` part: gzip or not, then converted (or decoded).
    use crate::distributor::{folded, jfr};
    let Ok(raw) = kiln_io::compress::maybe_gunzip(data, limits::INFLATE) else { return };
    let _ = jfr::decode_labels(&raw);
    let opts = jfr::Options {
        time_nanos: 1,
        duration_nanos: 0,
        sample_rate: 100,
        max_bytes: folded::built_limit(raw.len(), limits::INFLATE),
        max_samples: limits::SAMPLES,
    };
    let _ = jfr::convert(&raw, &jfr::LabelsSnapshot::default(), opts);
}

/// Builds (stack, value) pairs as /ingest builds them after a trie, tree or speedscope
/// body: within the profile size limit's stacks, then the folded builder's bound.
fn build_stacks(stacks: &[(String, i64)], text_len: usize) {
    use crate::distributor::folded;
    let t = folded::folded_type("cpu", 100).expect("a known suffix");
    let pairs: Vec<(&str, i64)> = stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    drop(folded::build_profile(&pairs, &t, 1, folded::built_limit(text_len, limits::INFLATE)));
}

fn run_trie(data: &[u8]) {
    use crate::distributor::trie::{parse, Layout};
    for layout in [Layout::Trie, Layout::Tree] {
        if let Ok(stacks) = parse(layout, data, limits::INFLATE) {
            build_stacks(&stacks, data.len());
        }
    }
}

fn run_speedscope(data: &[u8]) {
    if let Ok(profiles) = crate::distributor::speedscope::parse(data, limits::INFLATE) {
        for p in &profiles {
            build_stacks(&p.stacks, data.len());
        }
    }
}

fn run_otlp(data: &[u8]) {
    // As both transports take it: protobuf (gRPC and OTLP/HTTP) and JSON, decoded within the
    // body limit, then converted within what the folded builder may take.
    use crate::distributor::otlp::{convert, decode_request, Encoding};
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        if let Ok(req) = decode_request(encoding, data, limits::OTLP_DECODED) {
            let max = crate::distributor::folded::built_limit(data.len(), limits::INFLATE);
            drop(convert::convert(&req, pprof_limits(), max, 1));
        }
    }
}

fn run_rpc(data: &[u8]) {
    use crate::api::rpc::request_bytes;
    use crate::service::codec::Protocol;
    let mut h = http::HeaderMap::new();
    h.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(msg) = request_bytes(Protocol::Grpc, &h, bytes, limits::INFLATE) {
        let _ = crate::distributor::push::decode_request(Protocol::Grpc, &msg, limits::INFLATE);
    }
}

fn run_wal_payload(data: &[u8]) {
    if let Ok(kiln_shards::ingester::walcodec::Entry::Ingest { tenant, profile, groups, .. }) =
        kiln_shards::ingester::walcodec::decode_entry(data)
    {
        let mut head = kiln_shards::ingester::head::TenantHead::default();
        head.append(&tenant, &profile, &groups);
    }
}

fn run_query_wire(data: &[u8]) {
    // Both directions between instances: a request a querier sent, partials a replica sent.
    use kiln_shards::query::wire;
    let _ = wire::decode_request(data);
    let _ = wire::decode_results(data);
}

fn run_replica_push(data: &[u8]) {
    // The server side of a replica's push short of the cores: the message, each WAL record
    // in it, and `Profile::check` on each.
    let _ = crate::ingester::remote::decode_push(&bytes::Bytes::copy_from_slice(data));
}

fn run_read_path_wire(data: &[u8]) {
    // Every message of the read path's internal RPCs, as a scheduler, a querier and a
    // frontend decode them (the job's query itself is `query_wire`'s).
    use crate::query_scheduler::wire;
    let b = bytes::Bytes::copy_from_slice(data);
    let _ = wire::decode_job(&b);
    let _ = wire::decode_next(&b);
    let _ = wire::decode_who(data);
    let _ = wire::decode_result(&b);
}

fn run_ad_hoc(data: &[u8]) {
    // A file of any format, told apart by its bytes (no extension), as an upload is; and the
    // same bytes as a Connect GET's query string.
    let _ = crate::ad_hoc_profiles::parse("upload", data, limits::INFLATE, limits::SAMPLES);
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = crate::api::rpc::get_request(query, limits::INFLATE);
    }
}

use kiln_shards::model::selector::{MAX_REGEX_BYTES, MAX_REGEX_MATCHERS};

/// Every decoder of untrusted bytes, with its budget. The per-byte factors are what the
/// data structures cost per byte of their smallest encoding (a 2-byte protobuf record that
/// becomes a 40-to-100-byte struct), with room for `Vec` growth; the fixed parts cover the
/// configured limits above and constant-size state (inflate windows, hash tables' first
/// allocation).
pub const DECODERS: &[Decoder] = &[
    Decoder {
        name: "gzip",
        run: run_gzip,
        // The output grows by doubling, and a reallocation holds both blocks for a moment.
        budget: Budget {
            fixed_bytes: 2 * limits::INFLATE + (256 << 10),
            bytes_per_byte: 0,
            fixed_allocs: 64,
            allocs_per_byte: 0,
        },
    },
    Decoder {
        name: "pprof",
        run: run_pprof,
        budget: Budget { fixed_bytes: 1 << 20, bytes_per_byte: 64, fixed_allocs: 256, allocs_per_byte: 2 },
    },
    Decoder {
        name: "pprof_spy",
        run: run_pprof_spy,
        budget: Budget {
            fixed_bytes: (1 << 20) + 2 * limits::DERIVED,
            bytes_per_byte: 64,
            fixed_allocs: 256,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "multipart",
        run: run_multipart,
        budget: Budget { fixed_bytes: 64 << 10, bytes_per_byte: 8, fixed_allocs: 64, allocs_per_byte: 1 },
    },
    Decoder {
        name: "folded",
        run: run_folded,
        // Up to the profile size limit whatever the shape, then 16 times the text (as built).
        budget: Budget {
            fixed_bytes: 2 * limits::INFLATE + (256 << 10),
            bytes_per_byte: 64,
            fixed_allocs: 64,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "jfr",
        run: run_jfr,
        // The inflated recording (the gzip decoder's budget), the profiles built from it (up
        // to the profile size limit whatever the shape, then 16 times the recording, as
        // counted while built), and the pools: a constant of a byte or two (an id and an
        // empty value) becomes a hash entry of 16 to 40 bytes, twice that while a table grows
        // (the hostile recordings of tests/alloc_budget.rs peak at 24 bytes per byte).
        budget: Budget {
            fixed_bytes: 4 * limits::INFLATE + (1 << 20),
            bytes_per_byte: 64,
            fixed_allocs: 256,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "trie",
        run: run_trie,
        // As folded: the stacks a body expands to are bounded by the profile size limit,
        // then built as folded text is; the walk's own state is a few bytes per node.
        budget: Budget {
            fixed_bytes: 4 * limits::INFLATE + (256 << 10),
            bytes_per_byte: 64,
            fixed_allocs: 64,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "speedscope",
        run: run_speedscope,
        // The typed parse (a sample's `[]` is a 24-byte Vec, twice over while it grows), the
        // call tree (a node and its index entry per frame of input), then the stacks as for
        // a trie.
        budget: Budget {
            fixed_bytes: 4 * limits::INFLATE + (256 << 10),
            bytes_per_byte: 64,
            fixed_allocs: 256,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "otlp",
        run: run_otlp,
        // Decoding within the body limit (`wirecost` shapes of the OTLP messages), then the
        // pprofs converted within the folded builder's bound, then normalised (the pprof
        // decoder's budget over what was built).
        budget: Budget {
            fixed_bytes: limits::OTLP_DECODED + 4 * limits::INFLATE,
            bytes_per_byte: 96,
            fixed_allocs: 256,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "rpc",
        run: run_rpc,
        budget: Budget {
            fixed_bytes: 2 * limits::INFLATE + (256 << 10),
            bytes_per_byte: 2,
            fixed_allocs: 64,
            allocs_per_byte: 1,
        },
    },
    Decoder {
        name: "wal_payload",
        run: run_wal_payload,
        budget: Budget { fixed_bytes: 1 << 20, bytes_per_byte: 64, fixed_allocs: 256, allocs_per_byte: 2 },
    },
    Decoder {
        name: "query_wire",
        run: run_query_wire,
        // The per-byte part is a result's size over its two smallest bytes (300,000 empty
        // partials). The fixed part is the selection's regexes: each compiles (and may be
        // refused) within `MAX_REGEX_BYTES`, which its builder can overshoot while it works
        // (a pattern refused at 256 KiB peaked at 0.75 MiB and 21,000 allocations; the
        // allocations scale with the limit, now 1 MiB).
        budget: Budget {
            fixed_bytes: (1 << 20) + MAX_REGEX_MATCHERS * 4 * MAX_REGEX_BYTES,
            bytes_per_byte: 64,
            fixed_allocs: 256 + MAX_REGEX_MATCHERS as u64 * (MAX_REGEX_BYTES as u64 / 8),
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "replica_push",
        run: run_replica_push,
        // As `wal_payload`: a one-byte sample becomes a 48-byte `Sample` and its 4-byte index.
        budget: Budget { fixed_bytes: 1 << 20, bytes_per_byte: 64, fixed_allocs: 256, allocs_per_byte: 2 },
    },
    Decoder {
        name: "ad_hoc",
        run: run_ad_hoc,
        // The pprof decoder's, with the flame tree built from the decoded profile beside it:
        // a frame of a stack (a byte or two of a location id, or of folded text) becomes a
        // tree node (its struct, its child index entry, the walk's lists) of about 50 bytes.
        budget: Budget {
            fixed_bytes: 2 * limits::INFLATE + (1 << 20),
            bytes_per_byte: 96,
            fixed_allocs: 256,
            allocs_per_byte: 2,
        },
    },
    Decoder {
        name: "read_path_wire",
        run: run_read_path_wire,
        // A copy of the input, strings within their bounds, and a cancellation's IDs (8
        // bytes each for one byte of varint).
        budget: Budget { fixed_bytes: 16 << 10, bytes_per_byte: 12, fixed_allocs: 32, allocs_per_byte: 0 },
    },
];

/// Runs `d` on `data` and checks its budget.
pub fn check(d: &Decoder, data: &[u8]) -> Result<Usage, String> {
    let u = measure(|| (d.run)(data));
    d.budget.check(d.name, data.len(), u)?;
    Ok(u)
}

/// The decoder named `name`.
pub fn decoder(name: &str) -> &'static Decoder {
    DECODERS.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no decoder {name}"))
}

/// Panics (for a fuzz target) when `decoder` breaks its budget on `data`.
pub fn assert_within(decoder_name: &str, data: &[u8]) {
    if let Err(e) = check(decoder(decoder_name), data) {
        panic!("{e}");
    }
}
