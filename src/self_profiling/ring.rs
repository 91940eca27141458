//! A fixed ring of samples, written where nothing may allocate or lock (SIGPROF's handler,
//! the allocator) and emptied by the drain thread (`mod.rs`). A sample is a stack (program
//! counters, the leaf first, at most `MAX_DEPTH`) and one number (an allocation's size; the
//! CPU sampler has none). Each entry is handed between one writer and the drain thread by
//! its `state`: a writer claims a FREE entry (FREE → WRITING), fills it and publishes it
//! (READY); the drain thread reads a READY entry and frees it. A writer that finds no FREE
//! entry within `PROBES` tries drops its sample: it never waits.
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Frames kept of a stack, the leaf first; deeper stacks lose their outermost callers.
pub const MAX_DEPTH: usize = 128;
/// Samples a ring holds between two drains.
pub const RING: usize = 1024;
/// Entries a writer tries before it drops its sample.
const PROBES: usize = 8;

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

/// One sample. `depth`, `pcs` and `value` are only touched by whoever moved `state` last.
struct Entry {
    state: AtomicU32,
    depth: UnsafeCell<usize>,
    value: UnsafeCell<u64>,
    pcs: UnsafeCell<[usize; MAX_DEPTH]>,
}

// SAFETY: `depth`, `value` and `pcs` are accessed only by the owner `state` names (see
// `Entry` and the module's doc).
unsafe impl Sync for Entry {}

pub struct Ring {
    entries: [Entry; RING],
    next: AtomicUsize,
}

impl Ring {
    pub const fn empty() -> Ring {
        Ring {
            entries: [const {
                Entry {
                    state: AtomicU32::new(FREE),
                    depth: UnsafeCell::new(0),
                    value: UnsafeCell::new(0),
                    pcs: UnsafeCell::new([0; MAX_DEPTH]),
                }
            }; RING],
            next: AtomicUsize::new(0),
        }
    }

    /// Records one sample: `fill` writes the stack into the entry's frames and returns how
    /// many it wrote. False (nothing recorded, `fill` not called) when the ring is full.
    /// Allocates nothing and takes no lock.
    pub fn record(&self, value: u64, fill: impl FnOnce(&mut [usize; MAX_DEPTH]) -> usize) -> bool {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let claimed = (0..PROBES)
            .map(|i| &self.entries[(start + i) % RING])
            .find(|e| e.state.compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok());
        let Some(entry) = claimed else {
            return false;
        };
        // SAFETY: this writer owns the entry (WRITING) until it is published below.
        unsafe {
            let depth = fill(&mut *entry.pcs.get());
            debug_assert!(depth <= MAX_DEPTH);
            *entry.depth.get() = depth;
            *entry.value.get() = value;
        }
        entry.state.store(READY, Ordering::Release);
        true
    }

    /// Hands every sample in the ring (its program counters, leaf first, and its value) to
    /// `f` and frees its entry. Called by one thread (the drain thread) at a time.
    pub fn drain(&self, mut f: impl FnMut(&[usize], u64)) {
        for e in &self.entries {
            if e.state.load(Ordering::Acquire) != READY {
                continue;
            }
            // SAFETY: READY: the writer is done with the entry, and only this thread drains.
            let (depth, value, pcs) = unsafe { (*e.depth.get(), *e.value.get(), &*e.pcs.get()) };
            f(&pcs[..depth.min(MAX_DEPTH)], value);
            e.state.store(FREE, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_and_a_drain_frees() {
        // A ring of its own (a megabyte: a static, not on the test's stack).
        static UNDER_TEST: Ring = Ring::empty();
        let ring = &UNDER_TEST;
        for i in 0..RING {
            assert!(ring.record(i as u64, |pcs| {
                pcs[0] = i;
                pcs[1] = i + 1;
                2
            }));
        }
        // Every entry is READY: the next writer finds none within its probes.
        assert!(!ring.record(7, |_| unreachable!("a full ring does not call fill")));
        let mut seen = Vec::new();
        ring.drain(|pcs, value| seen.push((pcs.to_vec(), value)));
        assert_eq!(seen.len(), RING);
        assert!(seen.iter().all(|(pcs, v)| pcs == &[*v as usize, *v as usize + 1]));
        assert!(ring.record(9, |_| 0));
        let mut again = Vec::new();
        ring.drain(|pcs, value| again.push((pcs.len(), value)));
        assert_eq!(again, [(0, 9)]);
    }
}
