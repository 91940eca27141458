//! The CPU sampler. Each registered thread has a timer on its own CPU-time clock
//! (`timer_create(CLOCK_THREAD_CPUTIME_ID)`, delivered to that thread alone with
//! `SIGEV_THREAD_ID`), as Go's profiler has since 1.18: a thread is sampled `hz` times per
//! second of CPU it uses, and an idle thread never. SIGPROF's handler walks the frame
//! pointers of the interrupted code into a free entry of a fixed ring; the drain thread
//! (`mod.rs`) empties the ring.
//!
//! The handler is async-signal-safe: it allocates nothing, takes no lock and makes one
//! system call (`gettid`). It reads memory only inside its thread's stack, as recorded when
//! the thread registered (`pthread_getattr_np`), every frame address aligned, inside the
//! stack, and above the one before; a thread that never registered is not walked (its
//! sample is counted as dropped). When the ring is full the sample is dropped, never waited
//! for. On x86_64 the stack is unwound by `.eh_frame` (`unwind.rs`); elsewhere frame
//! pointers are walked (`walk`) in a build that keeps them (`-C force-frame-pointers=yes`),
//! and any other records the running function alone (`whole_stacks`).
use super::ring::Ring;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Threads that may be registered at once.
const MAX_THREADS: usize = 256;

const WORD: usize = std::mem::size_of::<usize>();

/// Samples written into the ring.
pub static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Samples lost: the ring was full, the thread was not registered, or (counted by the drain
/// thread) the interval's table of stacks was full.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The CPU samples, emptied by the drain thread.
pub static RING: Ring = Ring::empty();

static INSTALLED: AtomicBool = AtomicBool::new(false);
static HZ: AtomicU32 = AtomicU32::new(0);

/// A registered thread: its id and its stack's bounds. `tid` 0 is a free slot, -1 one being
/// filled; the handler only ever compares it with a real (positive) id.
struct ThreadSlot {
    tid: AtomicI32,
    lo: AtomicUsize,
    hi: AtomicUsize,
}

static THREADS: [ThreadSlot; MAX_THREADS] =
    [const { ThreadSlot { tid: AtomicI32::new(0), lo: AtomicUsize::new(0), hi: AtomicUsize::new(0) } }; MAX_THREADS];

/// Installs SIGPROF's handler; threads that register from now on are sampled `hz` times
/// per second of their CPU time. Once per process.
pub fn install(hz: u32) -> std::io::Result<()> {
    // SAFETY: a zeroed `sigaction` is valid; the handler has the SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigprof as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(target_arch = "x86_64")]
    super::unwind::load_objects();
    HZ.store(hz.max(1), Ordering::Relaxed);
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether the sampler was installed.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// The sampling rate, per second of CPU.
pub fn hz() -> u32 {
    HZ.load(Ordering::Relaxed)
}

/// Samples the calling thread from now until it exits; nothing when the sampler is not
/// installed (self-profiling off), or the thread is registered already. A failure (no free
/// slot, no timer) is logged and the thread left unsampled.
pub fn register_current_thread() {
    thread_local! {
        static REGISTRATION: RefCell<Option<Registration>> = const { RefCell::new(None) };
    }
    if !installed() {
        return;
    }
    REGISTRATION.with(|r| {
        if r.borrow().is_some() {
            return;
        }
        match Registration::new() {
            Ok(reg) => *r.borrow_mut() = Some(reg),
            Err(e) => tracing::warn!(error = %e, "self-profiling: this thread is not sampled"),
        }
    });
}

/// A thread's slot and timer; dropped when the thread exits (the timer first, so no signal
/// is sent for a slot that is gone).
struct Registration {
    slot: &'static ThreadSlot,
    timer: libc::timer_t,
}

impl Registration {
    fn new() -> Result<Registration, String> {
        let (lo, hi) = current_stack().map_err(|e| format!("reading the thread's stack bounds: {e}"))?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        let slot = THREADS
            .iter()
            .find(|s| s.tid.compare_exchange(0, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok())
            .ok_or_else(|| format!("{MAX_THREADS} threads are registered already"))?;
        slot.lo.store(lo, Ordering::Relaxed);
        slot.hi.store(hi, Ordering::Relaxed);
        slot.tid.store(tid, Ordering::Release);
        match start_timer(tid, hz()) {
            Ok(timer) => Ok(Registration { slot, timer }),
            Err(e) => {
                slot.tid.store(0, Ordering::Release);
                Err(format!("creating the thread's CPU timer: {e}"))
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `start_timer` and is deleted once.
        unsafe {
            libc::timer_delete(self.timer);
        }
        self.slot.tid.store(0, Ordering::Release);
    }
}

/// The calling thread's stack, [lo, hi).
pub(super) fn current_stack() -> std::io::Result<(usize, usize)> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read, and destroyed.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok((addr as usize, addr as usize + size))
    }
}

/// A timer on the calling thread's CPU clock sending SIGPROF to it `hz` times per CPU second.
fn start_timer(tid: i32, hz: u32) -> std::io::Result<libc::timer_t> {
    // SAFETY: SIGPROF is unblocked for this thread only; the sigevent and itimerspec are
    // initialised; the timer is deleted on error.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPROF);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        let mut sev: libc::sigevent = std::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGPROF;
        sev.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        if libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut sev, &mut timer) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let period_ns = 1_000_000_000 / i64::from(hz.max(1));
        let period = libc::timespec { tv_sec: period_ns / 1_000_000_000, tv_nsec: period_ns % 1_000_000_000 };
        let spec = libc::itimerspec { it_interval: period, it_value: period };
        if libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) != 0 {
            let e = std::io::Error::last_os_error();
            libc::timer_delete(timer);
            return Err(e);
        }
        Ok(timer)
    }
}

extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; it is put back as the interrupted code left it.
    let errno = unsafe { *libc::__errno_location() };
    record(ctx);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// One sample of the interrupted code, if its thread is registered and the ring has room.
fn record(ctx: *mut libc::c_void) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let Some(slot) = THREADS.iter().find(|s| s.tid.load(Ordering::Acquire) == tid) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (lo, hi) = (slot.lo.load(Ordering::Relaxed), slot.hi.load(Ordering::Relaxed));
    // SAFETY: the kernel hands an SA_SIGINFO handler the interrupted thread's ucontext.
    let Some((pc, fp, sp)) = (unsafe { registers(ctx) }) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // SAFETY: [lo, hi) is this thread's stack, mapped for as long as the thread runs, and
    // `sp` is at or above its lowest used address.
    let recorded = RING.record(0, |pcs| unsafe { stack(pc, sp, fp, sp.max(lo), hi, pcs) });
    if recorded {
        SAMPLES.fetch_add(1, Ordering::Relaxed);
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether samples hold whole stacks: on x86_64 always (`.eh_frame`, `unwind.rs`);
/// elsewhere when the build keeps frame pointers (`-C force-frame-pointers=yes`, see
/// `build.rs`), else a sample names the running function alone, as the frame pointer
/// register then holds anything.
pub const fn whole_stacks() -> bool {
    cfg!(target_arch = "x86_64") || cfg!(kiln_frame_pointers)
}

/// The interrupted stack into `out`, as `whole_stacks` says.
///
/// # Safety
/// [lo, hi) is the current thread's stack, and `sp` the interrupted code's, at or above lo.
pub(super) unsafe fn stack(pc: usize, sp: usize, fp: usize, lo: usize, hi: usize, out: &mut [usize]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        super::unwind::walk(pc, sp, fp, lo, hi, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = sp;
        let depth = if whole_stacks() { out.len() } else { 1 };
        walk(pc, fp, lo, hi, &mut out[..depth])
    }
}

/// The interrupted code's program counter, frame pointer and stack pointer.
///
/// # Safety
/// `ctx` is the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn registers(ctx: *mut libc::c_void) -> Option<(usize, usize, usize)> {
    let uc = ctx as *const libc::ucontext_t;
    if uc.is_null() {
        return None;
    }
    let g = &(*uc).uc_mcontext.gregs;
    Some((g[libc::REG_RIP as usize] as usize, g[libc::REG_RBP as usize] as usize, g[libc::REG_RSP as usize] as usize))
}

/// As the x86_64 one: the PC, x29 (the frame pointer) and SP.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
unsafe fn registers(ctx: *mut libc::c_void) -> Option<(usize, usize, usize)> {
    let uc = ctx as *const libc::ucontext_t;
    if uc.is_null() {
        return None;
    }
    let m = &(*uc).uc_mcontext;
    Some((m.pc as usize, m.regs[29] as usize, m.sp as usize))
}

/// Elsewhere the sampler records nothing (every sample is dropped).
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
unsafe fn registers(_ctx: *mut libc::c_void) -> Option<(usize, usize, usize)> {
    None
}

/// Walks a frame-pointer chain: `pc` first, then each frame's return address, into `out`;
/// returns how many were written. A frame record is two words at `fp`: the caller's frame
/// pointer, then the return address. The walk stops at the first frame pointer that is not
/// aligned, not inside [lo, hi) with room for its record, or not above the one before
/// (so it always ends, and never reads outside [lo, hi)), at a zero return address, or when
/// `out` is full.
///
/// # Safety
/// Every word in [lo, hi) is readable.
pub unsafe fn walk(pc: usize, mut fp: usize, lo: usize, hi: usize, out: &mut [usize]) -> usize {
    if out.is_empty() {
        return 0;
    }
    out[0] = pc;
    let mut n = 1;
    let mut floor = lo;
    while n < out.len() {
        let in_bounds = fp >= floor && fp % WORD == 0 && fp.checked_add(2 * WORD).is_some_and(|end| end <= hi);
        if !in_bounds {
            break;
        }
        let next = std::ptr::read_volatile(fp as *const usize);
        let ret = std::ptr::read_volatile((fp + WORD) as *const usize);
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        floor = fp + 1;
        fp = next;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack of `words` words; frame records placed at the given word indexes.
    struct FakeStack {
        words: Vec<usize>,
    }

    impl FakeStack {
        fn new(words: usize) -> Self {
            FakeStack { words: vec![0; words] }
        }
        fn addr(&self, i: usize) -> usize {
            self.words.as_ptr() as usize + i * WORD
        }
        fn bounds(&self) -> (usize, usize) {
            (self.addr(0), self.addr(self.words.len()))
        }
        /// A frame record at word `i`: the caller's frame pointer and the return address.
        fn frame(&mut self, i: usize, next: usize, ret: usize) {
            self.words[i] = next;
            self.words[i + 1] = ret;
        }
        fn walk(&self, fp: usize, depth: usize) -> Vec<usize> {
            let (lo, hi) = self.bounds();
            let mut out = vec![0; depth];
            // SAFETY: [lo, hi) is `words`.
            let n = unsafe { walk(0x1000, fp, lo, hi, &mut out) };
            out.truncate(n);
            out
        }
    }

    #[test]
    fn follows_the_chain_and_stops_below_the_stack() {
        let mut s = FakeStack::new(32);
        let (f1, f2) = (s.addr(10), s.addr(20));
        s.frame(2, f1, 0x2000);
        s.frame(10, f2, 0x3000);
        // The outermost frame links to 0: below the stack, the walk ends.
        s.frame(20, 0, 0x4000);
        assert_eq!(s.walk(s.addr(2), 16), vec![0x1000, 0x2000, 0x3000, 0x4000]);
    }

    #[test]
    fn a_frame_pointer_outside_the_stack_records_only_the_pc() {
        let s = FakeStack::new(8);
        let (lo, hi) = s.bounds();
        assert_eq!(s.walk(lo - 2 * WORD, 16), vec![0x1000]);
        assert_eq!(s.walk(hi, 16), vec![0x1000]);
        // A record that would end past the top of the stack.
        assert_eq!(s.walk(hi - WORD, 16), vec![0x1000]);
        assert_eq!(s.walk(usize::MAX - 3, 16), vec![0x1000]);
    }

    #[test]
    fn a_misaligned_frame_pointer_ends_the_walk() {
        let mut s = FakeStack::new(16);
        let f1 = s.addr(6) + 1;
        s.frame(2, f1, 0x2000);
        assert_eq!(s.walk(s.addr(2), 16), vec![0x1000, 0x2000]);
    }

    #[test]
    fn a_frame_pointer_that_does_not_climb_ends_the_walk() {
        let mut s = FakeStack::new(16);
        // A cycle: the frame links to itself, and one that links back down.
        let f = s.addr(4);
        s.frame(4, f, 0x2000);
        assert_eq!(s.walk(f, 16), vec![0x1000, 0x2000]);
        let (low, high) = (s.addr(2), s.addr(8));
        s.frame(8, low, 0x3000);
        s.frame(2, high, 0x4000);
        assert_eq!(s.walk(high, 16), vec![0x1000, 0x3000]);
    }

    #[test]
    fn the_walk_stops_at_a_zero_return_address_and_at_the_depth_cap() {
        let mut s = FakeStack::new(64);
        for i in (0..60).step_by(2) {
            let next = s.addr(i + 2);
            s.frame(i, next, 0x10 + i);
        }
        assert_eq!(s.walk(s.addr(0), 5).len(), 5);
        s.frame(6, s.addr(8), 0);
        assert_eq!(s.walk(s.addr(0), 64), vec![0x1000, 0x10, 0x12, 0x14]);
    }

    /// Burns this thread's CPU for `ms` milliseconds.
    #[inline(never)]
    fn inner_busy(ms: u64) -> u64 {
        let cpu = || {
            let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
        };
        let (start, mut x) = (cpu(), 1u64);
        while cpu() < start + ms {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        x
    }

    #[inline(never)]
    fn middle_busy(ms: u64) -> u64 {
        std::hint::black_box(inner_busy(ms)) + 1
    }

    #[inline(never)]
    fn outer_busy(ms: u64) -> u64 {
        std::hint::black_box(middle_busy(ms)) + 1
    }

    #[test]
    fn a_busy_thread_is_sampled_with_its_whole_stack() {
        install(1000).unwrap();
        // A thread of its own: its timer goes when it exits.
        std::thread::spawn(|| {
            register_current_thread();
            outer_busy(400)
        })
        .join()
        .unwrap();
        let mut symbols = super::super::symbols::Symbols::load().unwrap();
        let mut stacks: Vec<Vec<String>> = Vec::new();
        RING.drain(|pcs, _| {
            let names = pcs.iter().enumerate().map(|(i, &pc)| symbols.name(if i == 0 { pc } else { pc - 1 }));
            stacks.push(names.map(|n| n.to_string()).collect());
        });
        assert!(!stacks.is_empty(), "no sample of a thread that ran 400 ms");
        let position = |s: &[String], f: &str| s.iter().position(|n| n.ends_with(&format!("sampler::tests::{f}")));
        let whole = stacks.iter().find(|s| {
            matches!((position(s, "inner_busy"), position(s, "middle_busy"), position(s, "outer_busy")), (Some(i), Some(m), Some(o)) if i < m && m < o)
        });
        if whole_stacks() {
            assert!(whole.is_some(), "no sample with inner, middle and outer in order: {stacks:?}");
        } else {
            assert!(stacks.iter().all(|s| s.len() == 1), "{stacks:?}");
        }
    }

    #[test]
    fn an_empty_output_records_nothing() {
        let s = FakeStack::new(4);
        assert!(s.walk(s.addr(0), 0).is_empty());
    }
}
