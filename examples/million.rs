//! A million live coroutines in one process, on this machine's defaults
//! (`vm.max_map_count` 65530, nothing changed): each on its own guard-paged
//! stack of 64 KiB reserved, each suspended inside its body.
//!
//! ```text
//! cargo run --release --example million            # 1,000,000
//! cargo run --release --example million -- 100000  # scaled down
//! ```
//!
//! Creates them (each resumed once, so it sits suspended with a little of
//! its stack in use), resumes every one once more, drops them all, and
//! prints the time per coroutine for each phase and the resident memory
//! each costs (VmRSS from /proc/self/status, before and after, over the
//! count), with the number of kernel mappings and the page faults per
//! coroutine of each phase (Unix: `ru_minflt` of getrusage).
//!
//! Beside them, in the same run, the floors the phases are measured
//! against:
//! - **first touch**: one anonymous mapping with a stack's stride (the
//!   stack and its guard) per coroutine, whose top page of each stride is
//!   written once, as a new coroutine's first frames are: the cost of a
//!   fresh page to the kernel, the least a live coroutine can take
//!   (`create / first touch` is the ratio to it); then the whole mapping
//!   unmapped in one call (`unmap each`: the least that giving the pages
//!   back costs);
//! - **guard install** (Linux with `MADV_GUARD_INSTALL`): the guard pages
//!   of the same strides installed as the stacks' are, one
//!   `process_madvise` call per 1,024 of them: the kernel's cost per range,
//!   which a new stack pays on top of its first touch
//!   (`create / (touch + guard)` is the ratio to the two together);
//! - **pooled drop**: a suspended coroutine dropped with its stack going
//!   back to the pool (no system call): the unwind alone, without the
//!   unmapping that the drop of a million pays beyond the pool (it
//!   creates the coroutine from the pool too, and runs it to its first
//!   suspend);
//! - **unwind**: std's own panic (`resume_unwind` of a private payload)
//!   caught by `catch_unwind` through the same frames as a pooled drop's
//!   forced unwind, on the thread's stack, no coroutine anywhere: the
//!   least the unwind of a drop costs, so `drop / (unwind + unmap)` is the
//!   drop of a million against its two floors.

use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use corostack::{Coroutine, DefaultStack};

/// The reserved size of every stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// How many coroutines were alive at once.
    pub count: usize,
    /// Resident bytes per live coroutine, stack and bookkeeping together.
    pub rss_per_coroutine: f64,
    /// Lines of /proc/self/maps while they were all alive.
    pub mappings: usize,
    /// Time per coroutine to create it and run it to its first suspend.
    pub create: Duration,
    /// Time per coroutine to resume it once more.
    pub resume: Duration,
    /// Time per coroutine to drop it (unwinding its stack).
    pub drop: Duration,
    /// Page faults per coroutine in each phase: create, resume, drop
    /// (`None` where getrusage is not there).
    pub faults: Option<[f64; 3]>,
    /// The floor: time per page of a first touch (see the module docs).
    pub first_touch: Duration,
    /// Page faults per touched page in the probe (1 where only the page
    /// itself faults).
    pub first_touch_faults: Option<f64>,
    /// Time per page to unmap the probe's mapping in one call.
    pub unmap: Duration,
    /// Time per drop of a suspended coroutine whose stack is pooled.
    pub pooled_drop: Duration,
    /// The floor of the unwind: time per raise and catch of std's own
    /// panic through the same frames, without a coroutine.
    pub unwind: Duration,
    /// The floor of the guards: time per stride to install its guard
    /// pages, batched as the stacks' are (`None` where the kernel has no
    /// `MADV_GUARD_INSTALL` or `process_madvise` refuses it).
    pub guard_install: Option<Duration>,
}

/// A value from /proc/self/status, in kB.
fn status_kb(key: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The process's minor page faults so far.
#[cfg(unix)]
fn minor_faults() -> Option<u64> {
    // SAFETY: all-zero is a valid rusage, which getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to write to.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (rc == 0).then_some(usage.ru_minflt as u64)
}

#[cfg(not(unix))]
fn minor_faults() -> Option<u64> {
    None
}

/// Faults per item between two readings of [`minor_faults`].
fn per_item(before: Option<u64>, after: Option<u64>, count: usize) -> Option<f64> {
    Some((after? - before?) as f64 / count.max(1) as f64)
}

/// The first-touch floor: mappings of strides of a stack's size and guard
/// (1,024 strides each, so that 32-bit address spaces have room), the top
/// page of each stride written once (as a new coroutine's first frames
/// are), then each mapping unmapped in one call; `count` strides in all.
/// Returns the time per page of the touches, the faults per page, and the
/// time per page of the unmapping.
fn first_touch(count: usize) -> (Duration, Option<f64>, Duration) {
    let (stride, page) = probe_stride();
    let (mut touch, mut unmap, mut faults) = (Duration::ZERO, Duration::ZERO, Some(0));
    for_each_probe_chunk(count, |mut map, n| {
        let base = map.as_mut_ptr();
        let before = minor_faults();
        let start = Instant::now();
        for i in 0..n {
            // SAFETY: the top page of stride i lies inside the mapping.
            unsafe { base.add((i + 1) * stride - page).write_volatile(1) };
        }
        touch += start.elapsed();
        faults = (|| Some(faults? + minor_faults()? - before?))();
        let start = Instant::now();
        drop(map);
        unmap += start.elapsed();
        true
    });
    let per = |d: Duration| d / count.max(1) as u32;
    let faults = faults.map(|f| f as f64 / count.max(1) as f64);
    (per(touch), faults, per(unmap))
}

/// The guard floor: mappings of 1,024 strides each (as [`first_touch`]'s),
/// the four guard pages at the bottom of each stride installed with one
/// `process_madvise(MADV_GUARD_INSTALL)` call per mapping, as the stacks'
/// reservations are; `count` strides in all. Time per stride, or `None`
/// where the call is refused (kernels before 6.13, or 6.15 for the
/// `PIDFD_SELF` it takes).
#[cfg(target_os = "linux")]
fn guard_install(count: usize) -> Option<Duration> {
    /// `MADV_GUARD_INSTALL` (Linux 6.13) and `PIDFD_SELF` (6.15).
    const MADV_GUARD_INSTALL: libc::c_int = 102;
    const PIDFD_SELF: libc::c_int = -10000;
    let (stride, page) = probe_stride();
    let guard = 4 * page;
    let mut install = Duration::ZERO;
    let all = for_each_probe_chunk(count, |mut map, n| {
        let base = map.as_mut_ptr();
        let ranges: Vec<libc::iovec> = (0..n)
            .map(|i| libc::iovec {
                // SAFETY: stride i starts inside the mapping.
                iov_base: unsafe { base.add(i * stride) }.cast(),
                iov_len: guard,
            })
            .collect();
        let start = Instant::now();
        // SAFETY: every range is the bottom of a stride of our own
        // mapping, which nothing uses; the call only reads the vector.
        let done = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                PIDFD_SELF,
                ranges.as_ptr(),
                ranges.len(),
                MADV_GUARD_INSTALL,
                0,
            )
        };
        install += start.elapsed();
        usize::try_from(done) == Ok(n * guard)
    });
    all.then(|| install / count.max(1) as u32)
}

/// The stride of a DefaultStack of STACK_SIZE (its four guard pages of
/// 4 KiB, or the page size if larger, and the stack) and that page size.
fn probe_stride() -> (usize, usize) {
    let page = 4096usize.max(page_size());
    (STACK_SIZE + 4 * page, page)
}

/// Maps `count` fresh strides for the probes in mappings of at most 1,024
/// strides each, and hands each mapping and its stride count to `each`;
/// stops, returning false, when `each` does.
fn for_each_probe_chunk(
    count: usize,
    mut each: impl FnMut(memmap2::MmapMut, usize) -> bool,
) -> bool {
    const CHUNK: usize = 1024;
    let stride = probe_stride().0;
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let map = memmap2::MmapOptions::new()
            .len(n * stride)
            .no_reserve_swap()
            .map_anon()
            .unwrap_or_else(|e| panic!("the probe's mapping: {e}"));
        if !each(map, n) {
            return false;
        }
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn guard_install(_: usize) -> Option<Duration> {
    None
}

/// The system's page size (4 KiB where it cannot be asked).
fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }
    #[cfg(not(unix))]
    4096
}

/// Time per drop of a suspended coroutine whose stack goes back to the
/// pool: `count` of them, one at a time, on one pooled stack.
fn pooled_drops(count: usize) -> Duration {
    let start = Instant::now();
    for i in 0..count {
        pooled_drop(i as u32);
    }
    start.elapsed() / count.max(1) as u32
}

/// One pooled drop: a coroutine created on a pooled stack, resumed to its
/// first suspend (a small frame in use, as the million's) and dropped.
#[inline(never)]
pub fn pooled_drop(seed: u32) {
    let stack = DefaultStack::new(STACK_SIZE).unwrap_or_else(|e| panic!("{e}"));
    let mut co: Coroutine<(), u32, ()> = Coroutine::with_stack(stack, move |y, ()| {
        let mut frame = [seed; 32];
        loop {
            frame[0] += 1;
            y.suspend(black_box(&mut frame)[0]);
        }
    });
    co.resume(());
    drop(black_box(co));
}

/// The payload of [`std_unwind`], as private as a coroutine's.
struct Probe;

/// Time per [`std_unwind`], `count` of them.
fn unwind_floor(count: usize) -> Duration {
    let start = Instant::now();
    for i in 0..count {
        std_unwind(i as u32);
    }
    start.elapsed() / count.max(1) as u32
}

/// The unwind floor: std's own `resume_unwind` of a private zero-sized
/// payload, caught by `catch_unwind`, on the thread's stack, through the
/// frames a pooled drop's forced unwind crosses (std's `resume_unwind`
/// and `rust_panic`, then one frame that holds the body's small array and
/// catches, as the coroutine's entry with the body inlined into it does);
/// nothing of corostack's runs.
#[inline(never)]
pub fn std_unwind(seed: u32) {
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut frame = [seed; 32];
        frame[0] = frame[0].wrapping_add(1);
        black_box(&mut frame);
        // Always: a closure that returns `!` would not be inlined.
        if black_box(true) {
            panic::resume_unwind(Box::new(Probe));
        }
    }));
    assert!(caught.is_err_and(|p| p.is::<Probe>()));
}

/// Runs the three phases over `count` coroutines, and the floors beside
/// them (see the module docs).
///
/// # Panics
/// When a stack cannot be mapped (the message names the limit).
pub fn run(count: usize) -> Report {
    corostack::stack::trim_pool();
    let (first_touch, first_touch_faults, unmap) = first_touch(count);
    let guard_install = guard_install(count);
    let rss_before = status_kb("VmRSS:");
    let faults_start = minor_faults();
    let mut cos: Vec<Coroutine<(), u32, ()>> = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let stack = DefaultStack::new(STACK_SIZE).unwrap_or_else(|e| panic!("{e}"));
        let mut co = Coroutine::with_stack(stack, |y, ()| {
            // A little stack in use across every suspend.
            let mut frame = [0u32; 32];
            loop {
                frame[0] += 1;
                y.suspend(black_box(&mut frame)[0]);
            }
        });
        co.resume(());
        cos.push(co);
    }
    let create = start.elapsed();
    let faults_created = minor_faults();
    let rss_after = status_kb("VmRSS:");
    let mappings = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0);
    let start = Instant::now();
    for co in &mut cos {
        assert_eq!(co.resume(()).as_yield(), Some(2));
    }
    let resume = start.elapsed();
    let faults_resumed = minor_faults();
    let start = Instant::now();
    drop(cos);
    let drop_time = start.elapsed();
    let faults_dropped = minor_faults();
    let faults = (|| {
        Some([
            per_item(faults_start, faults_created, count)?,
            per_item(faults_created, faults_resumed, count)?,
            per_item(faults_resumed, faults_dropped, count)?,
        ])
    })();
    let pooled_drop = pooled_drops(count.min(100_000));
    let unwind = unwind_floor(count.min(100_000));
    let per = |d: Duration| d / count.max(1) as u32;
    Report {
        count,
        rss_per_coroutine: (rss_after.saturating_sub(rss_before) * 1024) as f64
            / count.max(1) as f64,
        mappings,
        create: per(create),
        resume: per(resume),
        drop: per(drop_time),
        faults,
        first_touch,
        first_touch_faults,
        unmap,
        pooled_drop,
        unwind,
        guard_install,
    }
}

#[allow(dead_code)]
fn main() {
    let count = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
    let r = run(count);
    println!("live coroutines:        {}", r.count);
    println!(
        "stack reserved each:    {} KiB, guard-paged",
        STACK_SIZE / 1024
    );
    println!(
        "resident memory each:   {:.0} bytes (VmRSS growth / count)",
        r.rss_per_coroutine
    );
    println!(
        "kernel mappings:        {} (vm.max_map_count {})",
        r.mappings,
        max_map_count.trim()
    );
    let faults = |i: usize| r.faults.map_or("-".into(), |f| format!("{:.2}", f[i]));
    println!(
        "create + first resume:  {:?} per coroutine, {} faults each",
        r.create,
        faults(0)
    );
    println!(
        "resume once more:       {:?} per coroutine, {} faults each",
        r.resume,
        faults(1)
    );
    println!(
        "drop (unwind):          {:?} per coroutine, {} faults each",
        r.drop,
        faults(2)
    );
    println!(
        "first touch (floor):    {:?} per page, {} faults each",
        r.first_touch,
        r.first_touch_faults
            .map_or("-".into(), |f| format!("{f:.2}"))
    );
    println!(
        "unmap (floor):          {:?} per page, in one call",
        r.unmap
    );
    println!("pooled drop (unwind):   {:?} per coroutine", r.pooled_drop);
    println!(
        "unwind (floor):         {:?} per raise, std's own",
        r.unwind
    );
    println!(
        "guard install (floor):  {} per stack, one process_madvise per 1,024",
        r.guard_install.map_or("-".into(), |g| format!("{g:?}"))
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    println!(
        "create / first touch:   {:.2}",
        ratio(r.create, r.first_touch)
    );
    if let Some(guard) = r.guard_install {
        println!(
            "create / (touch+guard): {:.2}",
            ratio(r.create, r.first_touch + guard)
        );
    }
    println!("drop / create:          {:.2}", ratio(r.drop, r.create));
    println!(
        "drop / (unwind+unmap):  {:.2} (the floors of a page's stack)",
        ratio(r.drop, r.unwind + r.unmap)
    );
}
