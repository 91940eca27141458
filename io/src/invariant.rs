//! ARCHITECTURE.md's invariants, checked where they can break.
//!
//! Each checked invariant has the ID the document gives it (`I3`, …). [`check`] is cheap when
//! the invariant holds. When it does not, a debug build panics (as `debug_assert!` would: a
//! test run stops at the first violation), and a release build counts the violation on
//! `/metrics` (`kiln_invariant_violations_total{invariant="I3"}`) and logs it at `error`, but
//! never panics: these checks sit on data paths, where a panic would take a core down with
//! every push it holds. The caller decides what to do with the answer (usually nothing more:
//! the check is a tripwire, not error handling).
//!
//! The counters are one process-wide static array of relaxed atomics, indexed by invariant,
//! rather than per-core slots in `CoreStats`: checks run on the cores, on the store thread and
//! on start-up threads alike, a violation is rare (so one shared atomic per ID costs nothing),
//! and a violation is the process's, so `/metrics` shows it once, without a core label.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The invariants of ARCHITECTURE.md §Invariants that are checked at run time. The others
/// hold by construction (the document says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// I3: a live push is appended only while the core's head is below its limit, and a
    /// tenant's series on a core never exceed its cap.
    HeadLimit,
    /// I4: a frozen head's count of unsettled pushes never goes below zero.
    Settle,
    /// I5: a frozen head is encoded only once no push with rows in it is unsettled, and it
    /// never gains rows after its cut.
    FrozenHead,
    /// I7: a stack node's parent id is smaller than its own.
    StackOrder,
    /// I9: exactly one WAL generation is ready after a start commits one.
    ReadyGeneration,
    /// I11: a query never sees a frozen head and the block that replaces it both.
    BlockSwap,
    /// I13: a block is indexed only after its cut markers are durable, and WAL segments are
    /// deleted only after every block of their cut is indexed.
    IndexAfterMarkers,
    /// I14: at most one cut is in flight per core.
    OneCut,
    /// I16: a WAL write starts only after a failed one was cut off, and a sync only after its
    /// write and every earlier one completed.
    WalWrite,
}

impl Invariant {
    pub const ALL: [Invariant; 9] = [
        Invariant::HeadLimit,
        Invariant::Settle,
        Invariant::FrozenHead,
        Invariant::StackOrder,
        Invariant::ReadyGeneration,
        Invariant::BlockSwap,
        Invariant::IndexAfterMarkers,
        Invariant::OneCut,
        Invariant::WalWrite,
    ];

    /// Its ID in ARCHITECTURE.md.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::HeadLimit => "I3",
            Invariant::Settle => "I4",
            Invariant::FrozenHead => "I5",
            Invariant::StackOrder => "I7",
            Invariant::ReadyGeneration => "I9",
            Invariant::BlockSwap => "I11",
            Invariant::IndexAfterMarkers => "I13",
            Invariant::OneCut => "I14",
            Invariant::WalWrite => "I16",
        }
    }
}

static VIOLATIONS: [AtomicU64; Invariant::ALL.len()] = [const { AtomicU64::new(0) }; Invariant::ALL.len()];

/// Checks that `inv` holds (`holds`); `detail` says what was found, and is only built when it
/// does not. Returns `holds`. See the module doc for what a violation does.
#[inline]
pub fn check(inv: Invariant, holds: bool, detail: impl FnOnce() -> String) -> bool {
    if !holds {
        violated(inv, detail());
    }
    holds
}

#[cold]
#[inline(never)]
fn violated(inv: Invariant, detail: String) {
    VIOLATIONS[inv as usize].fetch_add(1, Relaxed);
    tracing::error!(invariant = inv.id(), %detail, "invariant {} violated (see ARCHITECTURE.md §Invariants)", inv.id());
    debug_assert!(false, "invariant {} ({inv:?}) violated: {detail}", inv.id());
}

/// Violations of `inv` since start.
pub fn violations(inv: Invariant) -> u64 {
    VIOLATIONS[inv as usize].load(Relaxed)
}

/// Prometheus text for `/metrics`: one counter per checked invariant.
pub fn render(out: &mut String) {
    use std::fmt::Write;
    let name = "kiln_invariant_violations_total";
    let _ = writeln!(
        out,
        "# HELP {name} Violations of an ARCHITECTURE.md invariant found at run time (a debug build panics instead).\n# TYPE {name} counter"
    );
    for inv in Invariant::ALL {
        let _ = writeln!(out, "{name}{{invariant=\"{}\"}} {}", inv.id(), violations(inv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_index_their_counters() {
        for (i, inv) in Invariant::ALL.iter().enumerate() {
            assert_eq!(*inv as usize, i);
            assert!(Invariant::ALL[..i].iter().all(|o| o.id() != inv.id()));
        }
    }

    #[test]
    fn a_violation_is_counted_and_panics_only_in_debug_builds() {
        let inv = Invariant::ReadyGeneration;
        assert!(check(inv, true, || unreachable!("built only on a violation")));
        let before = violations(inv);
        let r = std::panic::catch_unwind(|| check(inv, false, || "a test".into()));
        assert_eq!(r.is_err(), cfg!(debug_assertions));
        assert_eq!(violations(inv), before + 1);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains(&format!("kiln_invariant_violations_total{{invariant=\"I9\"}} {}", before + 1)), "{out}");
    }
}
