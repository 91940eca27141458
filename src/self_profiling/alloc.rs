//! Sampled allocation profiling, as Go's `runtime.MemProfileRate`: `Sampled` wraps the
//! global allocator (`main.rs` installs it around mimalloc) and records the stack of about
//! one allocation per `RATE_BYTES` (512 KiB) allocated, each byte with the same chance, so
//! an allocation of `size` bytes is sampled with probability `1 - exp(-size / rate)`.
//!
//! 1. Fast path, every allocation: the thread's countdown of bytes (a `thread_local!` with a
//!    const initialiser and no destructor: a plain TLS word) is decremented by the size; while
//!    it stays at or above zero nothing else happens (no atomic, no lock).
//! 2. Slow path, when it crosses zero: off (`enable` not called, the rate 0), the countdown
//!    is set to `DISABLED_RECHECK_BYTES` and nothing is sampled. On, the thread's first
//!    crossing seeds its generator and measures the allocation against a countdown of its
//!    own; any later crossing samples the allocation, and a new countdown is drawn from the
//!    exponential distribution of mean `rate` (a Poisson process over the bytes: the
//!    countdown is memoryless, so restarting it at each sample keeps every byte's chance
//!    equal).
//! 3. A sample: the stack is unwound from here by the CPU sampler's unwinder (`.eh_frame`,
//!    async-signal-safe, so certainly safe in an allocator), every read inside
//!    [stack pointer, the thread's stack top), the stack's bounds read once per thread with
//!    `pthread_getattr_np` (glibc's own memory, not this allocator's) and a stack pointer
//!    outside them (an alternate signal stack) not walked; it goes into a fixed
//!    ring (`ring.rs`) with the allocation's size, or is dropped (counted). Nothing on this
//!    path allocates; a thread-local flag makes any allocation made while sampling skip the
//!    slow path all the same, so the sampler never re-enters itself.
//! 4. The drain thread (`mod.rs`) turns each sample into what it stands for (`unsampled`:
//!    `size / p` bytes and `1 / p` objects, p the chance above, as pprof unsamples Go's heap
//!    profiles) and pushes the interval's `memory` profile (`profile.rs`).
//!
//! Frees are not tracked: knowing whether a freed pointer was sampled would cost a lookup on
//! every free, so kiln pushes `alloc_objects`/`alloc_space` only, not Go's `inuse_*`.
use super::profile::Allocated;
use super::ring::{Ring, MAX_DEPTH};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Go's default `runtime.MemProfileRate`: one sample per 512 KiB allocated, on average.
pub const RATE_BYTES: u64 = 512 << 10;
/// While sampling is off, how many bytes a thread allocates between two looks at the rate
/// (so a thread that started before `enable` is sampled soon after it).
const DISABLED_RECHECK_BYTES: isize = 64 << 20;

/// Allocations sampled (written into the ring).
pub static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Sampled allocations lost: the ring was full, the thread's stack or registers could not be
/// read, or (counted by the drain thread) the interval's table of stacks was full.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The sampled allocations (their size is the sample's value), emptied by the drain thread.
pub static RING: Ring = Ring::empty();
/// The mean bytes between samples; 0: off. Read on the slow path only.
static RATE: AtomicU64 = AtomicU64::new(0);
/// Hands each thread's generator a distinct seed.
static SEEDS: AtomicU64 = AtomicU64::new(0);

/// Starts sampling every thread's allocations, one per `rate_bytes` on average.
pub fn enable(rate_bytes: u64) {
    assert!(rate_bytes > 0);
    RATE.store(rate_bytes, Relaxed);
}

/// The sampling rate, bytes; 0 when off.
pub fn rate() -> u64 {
    RATE.load(Relaxed)
}

/// The global allocator `A`, its allocations sampled (see the module's doc).
pub struct Sampled<A>(pub A);

// SAFETY: every call is forwarded to `A` unchanged; sampling only reads the returned
// pointer's null-ness and the requested size.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Sampled<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `A::alloc`'s.
        let p = unsafe { self.0.alloc(layout) };
        allocated(p, layout.size());
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        allocated(p, layout.size());
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    /// A reallocation counts as an allocation of its new size, as a `Vec`'s growth would
    /// be in Go.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        allocated(p, new_size);
        p
    }
}

/// The fast path: one TLS decrement and compare.
#[inline(always)]
fn allocated(p: *mut u8, size: usize) {
    if !p.is_null() && THREAD.try_with(|t| t.crossed(size)).unwrap_or(false) {
        countdown_crossed(size);
    }
}

thread_local! {
    static THREAD: ThreadState = const { ThreadState::new() };
}

/// A thread's sampling state. Const-initialised and without a destructor, so reachable from
/// the allocator at any time in the thread's life, its teardown included.
struct ThreadState {
    /// Bytes left before the next sample: the fast path's one word.
    countdown: Cell<isize>,
    rng: Cell<u64>,
    seeded: Cell<bool>,
    /// Set while this thread records a sample: an allocation then is never sampled.
    busy: Cell<bool>,
    /// The thread's stack, [lo, hi); hi 0: not read yet, `usize::MAX`: unreadable.
    stack_lo: Cell<usize>,
    stack_hi: Cell<usize>,
}

impl ThreadState {
    const fn new() -> ThreadState {
        ThreadState {
            countdown: Cell::new(0),
            rng: Cell::new(0),
            seeded: Cell::new(false),
            busy: Cell::new(false),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
        }
    }

    /// Counts `size` bytes; true when the countdown crossed zero (the slow path is due).
    #[inline(always)]
    fn crossed(&self, size: usize) -> bool {
        let left = self.countdown.get().wrapping_sub(size as isize);
        self.countdown.set(left);
        left < 0
    }

    /// After `crossed`: whether the allocation of `size` bytes is sampled at `rate` (0: off),
    /// with the countdown set again.
    fn sampled(&self, size: usize, rate: u64) -> bool {
        if rate == 0 {
            self.countdown.set(DISABLED_RECHECK_BYTES);
            return false;
        }
        if !self.seeded.get() {
            self.seeded.set(true);
            self.rng.set(splitmix64(SEEDS.fetch_add(1, Relaxed) ^ (self as *const ThreadState as u64)));
            let left = self.next_interval(rate).wrapping_sub(size as isize);
            self.countdown.set(left);
            if left >= 0 {
                return false;
            }
        }
        self.countdown.set(self.next_interval(rate));
        true
    }

    /// An exponentially distributed number of bytes of mean `rate`.
    fn next_interval(&self, rate: u64) -> isize {
        let x = splitmix64(self.rng.get());
        self.rng.set(x);
        // Uniform in (0, 1]: 53 random bits, never 0 (whose log is infinite).
        let u = ((x >> 11) + 1) as f64 / (1u64 << 53) as f64;
        (-u.ln() * rate as f64) as isize
    }

    /// The thread's stack, [lo, hi), read once.
    fn stack(&self) -> Option<(usize, usize)> {
        if self.stack_hi.get() == 0 {
            let (lo, hi) = super::sampler::current_stack().unwrap_or((0, usize::MAX));
            self.stack_lo.set(lo);
            self.stack_hi.set(hi);
        }
        let (lo, hi) = (self.stack_lo.get(), self.stack_hi.get());
        (hi != usize::MAX).then_some((lo, hi))
    }
}

/// The next value of splitmix64 after `x` (as the state, so a thread's sequence is
/// `x, f(x), f(f(x)), …`).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slow path (see the module's doc, steps 2 and 3).
#[cold]
#[inline(never)]
fn countdown_crossed(size: usize) {
    let _ = THREAD.try_with(|t| {
        if t.busy.get() || !t.sampled(size, RATE.load(Relaxed)) {
            return;
        }
        t.busy.set(true);
        let recorded = record(t, size);
        t.busy.set(false);
        let counter = if recorded { &SAMPLES } else { &DROPPED };
        counter.fetch_add(1, Relaxed);
    });
}

/// Records this thread's stack, from this function's frame, with `size`; false when it
/// could not (the ring full, the stack's bounds or this architecture's registers unknown, or
/// running on another stack).
#[inline(never)]
fn record(t: &ThreadState, size: usize) -> bool {
    let Some((lo, hi)) = t.stack() else { return false };
    let Some((pc, sp, fp)) = registers() else { return false };
    // On the thread's own stack, not an alternate one (a signal's): then [sp, hi) is the
    // part of it in use, mapped.
    if sp < lo || sp >= hi {
        return false;
    }
    // SAFETY: [sp, hi) is the part of this thread's stack in use: mapped, and left as it is
    // while the walk runs in callees below `sp`.
    RING.record(size as u64, |pcs: &mut [usize; MAX_DEPTH]| unsafe { super::sampler::stack(pc, sp, fp, sp, hi, pcs) })
}

/// The program counter, stack pointer and frame pointer at this point of the caller (always
/// inlined, so its frame is the caller's).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn registers() -> Option<(usize, usize, usize)> {
    let (pc, sp, fp): (usize, usize, usize);
    // SAFETY: reads three registers; touches no memory, the stack or the flags.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    Some((pc, sp, fp))
}

/// As x86_64's: the PC, SP and x29.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn registers() -> Option<(usize, usize, usize)> {
    let (pc, sp, fp): (usize, usize, usize);
    // SAFETY: as x86_64's.
    unsafe {
        std::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    Some((pc, sp, fp))
}

/// Elsewhere no stack is recorded (every sample is dropped).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn registers() -> Option<(usize, usize, usize)> {
    None
}

/// What one sampled allocation of `size` bytes stands for at `rate`: it was sampled with
/// probability p = 1 - exp(-size / rate), so 1/p allocations like it, size/p bytes.
pub fn unsampled(size: u64, rate: u64) -> Allocated {
    let size = size.max(1) as f64;
    let p = -(-size / rate.max(1) as f64).exp_m1();
    Allocated { objects: 1.0 / p, bytes: size / p }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::sync::Mutex;

    /// The tests that enable sampling and read the ring, one at a time (the ring and the
    /// rate are the process's).
    static RING_USERS: Mutex<()> = Mutex::new(());

    fn seeded(seed: u64) -> ThreadState {
        let t = ThreadState::new();
        t.rng.set(seed);
        t.seeded.set(true);
        t.countdown.set(t.next_interval(RATE_BYTES));
        t
    }

    /// How many of `count` allocations of `size` bytes a thread samples at `rate`.
    fn samples(t: &ThreadState, count: u64, size: usize, rate: u64) -> u64 {
        (0..count).filter(|_| t.crossed(size) && t.sampled(size, rate)).count() as u64
    }

    #[test]
    fn samples_come_once_per_rate_bytes_for_every_size() {
        // 2 million allocations of each size at one sample per 4 KiB: an allocation of
        // `size` bytes is sampled with probability 1 - exp(-size / 4096), however the bytes
        // are cut. The bound: five binomial standard deviations (at most √n each).
        let rate = 4096;
        let count = 2_000_000;
        for (seed, size) in [(1u64, 16usize), (2, 512), (3, 4096), (4, 40_000), (5, 1 << 20)] {
            let t = seeded(seed);
            let p = -(-(size as f64) / rate as f64).exp_m1();
            let expected = count as f64 * p;
            let got = samples(&t, count, size, rate) as f64;
            assert!((got - expected).abs() <= 5.0 * expected.sqrt(), "size {size}: {got} samples, expected {expected}");
        }
    }

    #[test]
    fn unsampled_weights_estimate_what_was_allocated() {
        // One sample of a tiny allocation stands for rate/size of them; of a huge one, one.
        let tiny = unsampled(8, RATE_BYTES);
        assert!((tiny.objects - RATE_BYTES as f64 / 8.0).abs() < 1.0, "{tiny:?}");
        assert!((tiny.bytes - RATE_BYTES as f64).abs() < 8.0, "{tiny:?}");
        let huge = unsampled(64 * RATE_BYTES, RATE_BYTES);
        assert_eq!(huge, Allocated { objects: 1.0, bytes: (64 * RATE_BYTES) as f64 });
        // At the rate itself: p = 1 - 1/e.
        let at_rate = unsampled(RATE_BYTES, RATE_BYTES);
        let e = std::f64::consts::E;
        assert!((at_rate.objects - e / (e - 1.0)).abs() < 1e-9, "{at_rate:?}");
        // Summed over a simulation, the estimate is the bytes allocated.
        let t = seeded(7);
        let (size, count) = (3000usize, 4_000_000u64);
        let sampled = samples(&t, count, size, RATE_BYTES);
        let estimate = sampled as f64 * unsampled(size as u64, RATE_BYTES).bytes;
        let real = (size as u64 * count) as f64;
        assert!((estimate / real - 1.0).abs() < 0.05, "{estimate} for {real}");
    }

    #[test]
    fn off_nothing_is_sampled_and_the_rate_is_looked_at_again_later() {
        let t = ThreadState::new();
        assert!(t.crossed(1), "a new thread's first allocation looks at the rate");
        assert!(!t.sampled(1, 0));
        assert_eq!(t.countdown.get(), DISABLED_RECHECK_BYTES);
        assert_eq!(samples(&t, 1000, 1 << 16, 0), 0);
        assert!(!t.seeded.get());
    }

    #[test]
    fn a_new_thread_measures_its_first_allocation_against_a_drawn_countdown() {
        let t = ThreadState::new();
        assert!(t.crossed(8));
        // Sampled or not (almost never, at 8 bytes), the thread now has a countdown.
        let _ = t.sampled(8, RATE_BYTES);
        assert!(t.seeded.get());
        assert!(t.countdown.get() >= 0);
    }

    #[inline(never)]
    fn allocating_function(a: &Sampled<System>, n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let layout = Layout::from_size_align(1024 + i % 7, 8).unwrap();
            // SAFETY: a non-zero layout, freed with the same one.
            unsafe {
                let p = a.alloc(layout);
                kept += usize::from(!p.is_null());
                a.dealloc(p, layout);
            }
        }
        std::hint::black_box(kept)
    }

    #[test]
    fn sampled_allocations_carry_their_callers_stack() {
        let _one = RING_USERS.lock().unwrap();
        super::super::unwind::load_objects();
        enable(64 << 10);
        // 16 MiB in 1 KiB allocations on a thread of its own: about 256 samples.
        let before = SAMPLES.load(Relaxed);
        std::thread::spawn(|| allocating_function(&Sampled(System), 16 << 10)).join().unwrap();
        let taken = SAMPLES.load(Relaxed) - before;
        let mut symbols = super::super::symbols::Symbols::load().unwrap();
        let (mut stacks, mut bytes) = (Vec::new(), 0.0);
        RING.drain(|pcs, size| {
            bytes += unsampled(size, 64 << 10).bytes;
            let names = pcs.iter().enumerate().map(|(i, &pc)| symbols.name(if i == 0 { pc } else { pc - 1 }));
            stacks.push(names.map(|n| n.to_string()).collect::<Vec<_>>());
        });
        assert!(taken > 100 && stacks.len() as u64 == taken, "{taken} samples, {} in the ring", stacks.len());
        // Every stack starts in the sampler and reaches the function that allocated.
        for s in &stacks {
            assert!(s[0].contains("self_profiling::alloc::record"), "{s:?}");
            assert!(s.iter().any(|n| n.ends_with("alloc::tests::allocating_function")), "{s:?}");
        }
        // The estimate is the 16 MiB allocated, give or take (256 samples: ±6% for one σ).
        let real = (16 << 10) as f64 * 1027.0;
        assert!((bytes / real - 1.0).abs() < 0.35, "{bytes} estimated for {real}");
    }

    #[test]
    fn an_allocation_made_while_sampling_is_never_sampled() {
        let _one = RING_USERS.lock().unwrap();
        enable(1);
        let before = (SAMPLES.load(Relaxed), DROPPED.load(Relaxed));
        std::thread::spawn(|| {
            THREAD.with(|t| t.busy.set(true));
            allocating_function(&Sampled(System), 1000);
            THREAD.with(|t| t.busy.set(false));
        })
        .join()
        .unwrap();
        assert_eq!((SAMPLES.load(Relaxed), DROPPED.load(Relaxed)), before);
        // The same allocations outside a sample: at a rate of one byte, each one is sampled
        // (the first measured against the thread's first countdown may not be).
        std::thread::spawn(|| allocating_function(&Sampled(System), 100)).join().unwrap();
        let recorded = (SAMPLES.load(Relaxed) - before.0) + (DROPPED.load(Relaxed) - before.1);
        assert!(recorded >= 99, "{recorded}");
        RING.drain(|_, _| {});
    }
}
