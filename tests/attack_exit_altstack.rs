//! Attacks on the thread-exit hook's alternate signal stack
//! (`overflow::ExitAltStack`): while the hook unwinds a thread's suspended
//! coroutines, the thread has an alternate signal stack (a new one, mapped
//! at the first coroutine it unwinds and freed when its loop ends, if the
//! process has the overflow handler and the thread has none), so that an
//! overflow in a destructor the unwind runs is reported, not a bare
//! SIGSEGV.
//!
//! What these pin: one mapping for all the unwinds of a thread, freed and
//! disabled afterwards (the thread is left as it was found), nothing kept
//! per thread; a thread's own alternate stack (a raw thread's from the
//! crate's `install`, or the user's, set before the exit or by a
//! destructor the hook runs) is used and left alone, never disabled nor
//! unmapped; an overflow reported in the new paths (a coroutine that a
//! destructor the hook runs starts or resumes, a raw pthread, a
//! `process::exit` from a spawned thread, whose cleanup disables the
//! calling thread's alternate stack before the hook runs); without the
//! `overflow-handler` feature, nothing is mapped.
//!
//! Each case runs in a child process (this binary again).
//!
//! Not run here: the main thread's exit (after `main` returns, std's
//! cleanup removes the main thread's alternate stack, then `exit` runs its
//! thread-local destructors). libtest runs every test on a spawned thread
//! and its `main` returns through std's own, so no test can leave a
//! suspended coroutine on the main thread of a test binary; the code path
//! is the spawned thread's (the same `ExitAltStack::ensure`).

#![cfg(unix)]

mod util;

use std::cell::RefCell;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use corostack::{Coroutine, Yielder};

/// The calling thread's alternate signal stack: (start, flags).
fn alt_stack() -> (usize, i32) {
    // SAFETY: all-zero is a valid stack_t; sigaltstack with a null new
    // stack only writes the current one into it.
    unsafe {
        let mut alt: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(ptr::null(), &mut alt), 0);
        (alt.ss_sp as usize, alt.ss_flags)
    }
}

/// Whether the thread has an alternate signal stack now.
fn has_alt_stack() -> bool {
    alt_stack().1 & libc::SS_DISABLE == 0
}

/// Whether the page holding `addr` is mapped (mincore fails with ENOMEM
/// for an unmapped one).
fn is_mapped(addr: usize) -> bool {
    // SAFETY: sysconf has no preconditions; mincore only writes one byte
    // into `vec` and reads no memory of the range.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let mut vec = 0u8;
        libc::mincore((addr & !(page - 1)) as *mut libc::c_void, 1, &mut vec) == 0
    }
}

/// The number of mappings of this process.
fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .count()
}

/// Recurses until the stack overflows.
#[cfg(feature = "overflow-handler")]
#[allow(unconditional_recursion)]
fn overflow(depth: usize) -> usize {
    let frame = std::hint::black_box([depth as u8; 512]);
    overflow(depth + 1) + usize::from(frame[7])
}

/// Leaves a coroutine suspended over `guard`, forgotten, for the exit hook
/// to unwind.
fn forget_suspended_over<T: 'static>(guard: impl FnOnce() -> T + 'static) {
    let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let _g = guard();
        y.suspend(());
    });
    co.resume(());
    std::mem::forget(co);
}

/// Runs the child `name`, asserts that it aborted with the overflow
/// handler's message after printing `marker`; returns its stderr.
#[cfg(feature = "overflow-handler")]
fn aborts_with_the_overflow_message(name: &str, marker: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let out = util::run_child_with(name, name, &util::leaks_allowed());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    let began = stderr.find(marker).expect(&stderr);
    assert!(
        stderr[began..].contains("corostack: coroutine stack overflow (stack of "),
        "{stderr}"
    );
    stderr
}

// ---------------------------------------------------------------------------
// One mapping per thread, whatever the number of unwinds, freed and
// disabled when the loop ends; coroutines started (and finished, or left
// suspended) by a destructor the hook runs share it.
// ---------------------------------------------------------------------------

/// The alternate stacks that [`RecordAlt`]s saw when dropped.
static SEEN_1: Mutex<Vec<(usize, i32)>> = Mutex::new(Vec::new());
/// Set when [`AfterHook1`]'s checks passed.
static AFTER_OK_1: AtomicBool = AtomicBool::new(false);

/// Records the thread's alternate stack when dropped.
struct RecordAlt;

impl Drop for RecordAlt {
    fn drop(&mut self) {
        SEEN_1.lock().unwrap().push(alt_stack());
    }
}

/// Starts, when dropped, a coroutine it finishes and one it leaves
/// suspended (forgotten, over a [`RecordAlt`]): the hook's loop picks the
/// latter up.
struct StartsCoroutines;

impl Drop for StartsCoroutines {
    fn drop(&mut self) {
        corostack::stack::install_overflow_handler();
        let mut done = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            let _r = RecordAlt;
            y.suspend(());
        });
        done.resume(());
        done.resume(());
        assert!(done.done());
        forget_suspended_over(|| RecordAlt);
    }
}

/// A thread-local first used before the thread's first coroutine: its
/// destructor runs after the hook, and checks what the hook left.
struct AfterHook1;

impl Drop for AfterHook1 {
    fn drop(&mut self) {
        let seen = SEEN_1.lock().unwrap().clone();
        let now = alt_stack();
        eprintln!("after the hook: {now:?}; seen during it: {seen:?}");
        assert_eq!(seen.len(), UNWOUND_1 + 2, "{seen:?}");
        #[cfg(feature = "overflow-handler")]
        {
            let (sp, flags) = seen[0];
            assert_eq!(
                flags & libc::SS_DISABLE,
                0,
                "no alternate stack in the hook"
            );
            assert!(seen.iter().all(|&s| s == (sp, flags)), "{seen:?}");
            assert!(!is_mapped(sp), "the hook's alternate stack is still mapped");
        }
        #[cfg(not(feature = "overflow-handler"))]
        assert!(
            seen.iter().all(|&(_, f)| f & libc::SS_DISABLE != 0),
            "an alternate stack without the handler: {seen:?}"
        );
        assert!(
            !has_alt_stack(),
            "the hook left an alternate stack: {now:?}"
        );
        AFTER_OK_1.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static AFTER_1: AfterHook1 = const { AfterHook1 };
}

/// How many forgotten coroutines over a [`RecordAlt`] the thread leaves.
const UNWOUND_1: usize = 50;

#[test]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer gives every thread an alternate stack of its own until the thread ends: the hook finds one and maps none"
)]
fn many_unwinds_share_one_alternate_stack_that_is_freed_and_disabled_after() {
    util::passes_in_child(
        "many_unwinds_share_one_alternate_stack_that_is_freed_and_disabled_after",
        || {
            std::thread::spawn(|| {
                AFTER_1.with(|_| ());
                // Unwound last (the list is newest first): its destructor's
                // coroutines are unwound after it, by the same loop.
                forget_suspended_over(|| StartsCoroutines);
                for _ in 0..UNWOUND_1 {
                    forget_suspended_over(|| RecordAlt);
                }
            })
            .join()
            .unwrap();
            assert!(AFTER_OK_1.load(Ordering::SeqCst));
        },
    );
}

// ---------------------------------------------------------------------------
// Nothing kept per thread: 200 threads each leave suspended coroutines to
// the hook; the process's mappings do not grow with them.
// ---------------------------------------------------------------------------

thread_local! {
    /// Coroutines kept until thread exit: first used before the thread's
    /// first coroutine, so the hook unwinds them first and this drop then
    /// frees their stacks.
    static HOLDER_2: RefCell<Vec<Coroutine<(), (), ()>>> = const { RefCell::new(Vec::new()) };
}

/// A thread that leaves `n` suspended coroutines to the hook.
fn leave_suspended(n: usize) {
    HOLDER_2.with(|h| {
        for _ in 0..n {
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| y.suspend(()));
            co.resume(());
            h.borrow_mut().push(co);
        }
    });
}

#[test]
fn threads_that_leave_suspended_coroutines_leak_no_mapping() {
    util::passes_in_child(
        "threads_that_leave_suspended_coroutines_leak_no_mapping",
        || {
            let threads = util::scaled(200, 40);
            let run = |count: usize| {
                for _ in 0..count {
                    std::thread::spawn(|| leave_suspended(3)).join().unwrap();
                }
            };
            // Warm up (glibc's cache of thread stacks, the allocator's arenas).
            run(20);
            let before = mapping_count();
            run(threads);
            let after = mapping_count();
            eprintln!("mappings: {before} before {threads} threads, {after} after");
            // A leak of the alternate stack (a guard and its stack: two
            // mappings) per thread would add 2 * threads.
            assert!(
                after < before + threads / 4,
                "{before} mappings before, {after} after {threads} threads"
            );
        },
    );
}

// ---------------------------------------------------------------------------
// A destructor that the hook runs sets the thread's alternate stack: the
// hook then unmaps its own and leaves the user's in place, usable by a
// later thread-local destructor's overflow.
// ---------------------------------------------------------------------------

/// The user's alternate stack, set by [`InstallsOwnAlt`].
#[cfg(feature = "overflow-handler")]
static USER_ALT_3: AtomicUsize = AtomicUsize::new(0);
/// The alternate stack that the unwinds before it saw.
#[cfg(feature = "overflow-handler")]
static HOOK_ALT_3: AtomicUsize = AtomicUsize::new(0);

/// Sets a new alternate stack of its own when dropped.
#[cfg(feature = "overflow-handler")]
struct InstallsOwnAlt;

#[cfg(feature = "overflow-handler")]
impl Drop for InstallsOwnAlt {
    fn drop(&mut self) {
        USER_ALT_3.store(util::set_alt_stack(256 * 1024), Ordering::SeqCst);
    }
}

/// Records the alternate stack that the hook gave when dropped.
#[cfg(feature = "overflow-handler")]
struct RecordHookAlt;

#[cfg(feature = "overflow-handler")]
impl Drop for RecordHookAlt {
    fn drop(&mut self) {
        let (sp, flags) = alt_stack();
        assert_eq!(flags & libc::SS_DISABLE, 0);
        HOOK_ALT_3.store(sp, Ordering::SeqCst);
    }
}

/// Runs after the hook: checks the alternate stacks, then overflows a new
/// coroutine (reported on the user's stack).
#[cfg(feature = "overflow-handler")]
struct AfterHook3;

#[cfg(feature = "overflow-handler")]
impl Drop for AfterHook3 {
    fn drop(&mut self) {
        let (user, hook) = (
            USER_ALT_3.load(Ordering::SeqCst),
            HOOK_ALT_3.load(Ordering::SeqCst),
        );
        let now = alt_stack();
        eprintln!("user's {user:#x}, hook's {hook:#x}, now {now:x?}");
        assert_eq!(now, (user, 0), "the user's alternate stack was changed");
        assert!(is_mapped(user), "the user's alternate stack was unmapped");
        assert_ne!(hook, user);
        assert!(
            !is_mapped(hook),
            "the hook's alternate stack is still mapped"
        );
        eprintln!("checks passed; overflowing a coroutine");
        let mut co = Coroutine::new(|_: &Yielder<(), ()>, ()| {
            std::hint::black_box(overflow(0));
        });
        co.resume(());
        unreachable!("the coroutine did not overflow");
    }
}

#[cfg(feature = "overflow-handler")]
thread_local! {
    static AFTER_3: AfterHook3 = const { AfterHook3 };
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_alternate_stack_set_by_a_destructor_the_hook_runs_is_left_in_place() {
    let name = "an_alternate_stack_set_by_a_destructor_the_hook_runs_is_left_in_place";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(|| {
            AFTER_3.with(|_| ());
            forget_suspended_over(|| InstallsOwnAlt);
            // Unwound first (the list is newest first).
            forget_suspended_over(|| RecordHookAlt);
        })
        .join()
        .unwrap();
        unreachable!("the thread's exit did not overflow");
    }
    aborts_with_the_overflow_message(name, "checks passed; overflowing a coroutine");
}

// ---------------------------------------------------------------------------
// Overflows in the new paths: a coroutine that a destructor the hook runs
// resumes (nested), or starts and leaves suspended (unwound by the same
// loop); `exit` called with the thread's alternate stack still in place.
// ---------------------------------------------------------------------------

/// Overflows a fresh coroutine when dropped.
#[cfg(feature = "overflow-handler")]
struct OverflowsANestedCoroutine;

#[cfg(feature = "overflow-handler")]
impl Drop for OverflowsANestedCoroutine {
    fn drop(&mut self) {
        eprintln!("overflowing a nested coroutine");
        let mut co = Coroutine::new(|_: &Yielder<(), ()>, ()| {
            std::hint::black_box(overflow(0));
        });
        co.resume(());
    }
}

/// Overflows the stack it is dropped on.
#[cfg(feature = "overflow-handler")]
struct OverflowsOnDrop;

#[cfg(feature = "overflow-handler")]
impl Drop for OverflowsOnDrop {
    fn drop(&mut self) {
        eprintln!("overflowing in a destructor");
        std::hint::black_box(overflow(0));
    }
}

/// Leaves, when dropped, a coroutine suspended over an [`OverflowsOnDrop`].
#[cfg(feature = "overflow-handler")]
struct LeavesAnOverflowingCoroutine;

#[cfg(feature = "overflow-handler")]
impl Drop for LeavesAnOverflowingCoroutine {
    fn drop(&mut self) {
        forget_suspended_over(|| OverflowsOnDrop);
    }
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_overflow_in_a_coroutine_resumed_by_the_hooks_unwind_is_reported() {
    let name = "an_overflow_in_a_coroutine_resumed_by_the_hooks_unwind_is_reported";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(|| forget_suspended_over(|| OverflowsANestedCoroutine))
            .join()
            .unwrap();
        unreachable!("the thread's exit did not overflow");
    }
    aborts_with_the_overflow_message(name, "overflowing a nested coroutine");
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_overflow_in_a_coroutine_left_suspended_by_the_hooks_unwind_is_reported() {
    let name = "an_overflow_in_a_coroutine_left_suspended_by_the_hooks_unwind_is_reported";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(|| forget_suspended_over(|| LeavesAnOverflowingCoroutine))
            .join()
            .unwrap();
        unreachable!("the thread's exit did not overflow");
    }
    aborts_with_the_overflow_message(name, "overflowing in a destructor");
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_overflow_in_the_hooks_unwind_inside_exit_is_reported() {
    let name = "an_overflow_in_the_hooks_unwind_inside_exit_is_reported";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(|| {
            // std's alternate stack is still the thread's here, but
            // `process::exit` runs std's cleanup first, which disables
            // the calling thread's alternate stack (and unmaps the main
            // thread's); `exit` then runs the calling thread's
            // thread-local destructors, the hook first: only the hook's
            // own alternate stack can report the overflow.
            assert!(has_alt_stack());
            forget_suspended_over(|| OverflowsOnDrop);
            std::process::exit(0);
        })
        .join()
        .unwrap();
        unreachable!("exit returned");
    }
    if cfg!(target_feature = "crt-static") {
        // A static build (CI's cross targets): std's thread-local
        // destructors hang off a pthread key, which `exit` does not run;
        // neither does the hook (see `corostack::thread_exit`).
        let out = util::run_child_with(name, name, &util::leaks_allowed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("overflowing in a destructor"), "{stderr}");
        return;
    }
    aborts_with_the_overflow_message(name, "overflowing in a destructor");
}

// ---------------------------------------------------------------------------
// A raw pthread (no std alternate stack): its alternate stack is the
// crate's own (`install`), or the user's, set before its first coroutine;
// the hook uses it and leaves it alone.
// ---------------------------------------------------------------------------

/// Runs `f` on a raw pthread (no std runtime: no alternate stack from std)
/// and joins it.
fn on_raw_pthread(f: fn()) {
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `fn()` that `on_raw_pthread` passed.
        let f: fn() = unsafe { std::mem::transmute::<*mut libc::c_void, fn()>(arg) };
        f();
        ptr::null_mut()
    }
    // SAFETY: pthread_create with a valid start routine and argument, and
    // a join of the thread it made.
    unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_create(&mut thread, ptr::null(), start, f as *mut libc::c_void),
            0
        );
        assert_eq!(libc::pthread_join(thread, ptr::null_mut()), 0);
    }
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_overflow_in_the_hooks_unwind_on_a_raw_pthread_is_reported() {
    let name = "an_overflow_in_the_hooks_unwind_on_a_raw_pthread_is_reported";
    if util::child_role().as_deref() == Some(name) {
        on_raw_pthread(|| {
            assert!(!has_alt_stack(), "a raw pthread with an alternate stack");
            forget_suspended_over(|| OverflowsOnDrop);
            // The crate's `install` gave it one.
            assert!(has_alt_stack());
        });
        unreachable!("the thread's exit did not overflow");
    }
    aborts_with_the_overflow_message(name, "overflowing in a destructor");
}

/// The raw pthread's own alternate stack, and what its unwind saw.
static USER_ALT_5: AtomicUsize = AtomicUsize::new(0);
static SEEN_5: Mutex<Vec<(usize, i32)>> = Mutex::new(Vec::new());

/// Records the alternate stack when dropped.
struct RecordAlt5;

impl Drop for RecordAlt5 {
    fn drop(&mut self) {
        SEEN_5.lock().unwrap().push(alt_stack());
    }
}

#[test]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer unmaps a thread's alternate stack when the thread ends, whoever mapped it"
)]
fn a_raw_pthreads_own_alternate_stack_is_used_and_left_mapped() {
    util::passes_in_child(
        "a_raw_pthreads_own_alternate_stack_is_used_and_left_mapped",
        || {
            on_raw_pthread(|| {
                USER_ALT_5.store(util::set_alt_stack(128 * 1024), Ordering::SeqCst);
                for _ in 0..3 {
                    forget_suspended_over(|| RecordAlt5);
                }
            });
            let user = USER_ALT_5.load(Ordering::SeqCst);
            let seen = SEEN_5.lock().unwrap().clone();
            assert_eq!(seen, vec![(user, 0); 3]);
            assert!(
                is_mapped(user),
                "the thread's own alternate stack was unmapped"
            );
            // SAFETY: the leaked mapping, still mapped (checked): writable.
            unsafe { ptr::write_volatile(user as *mut u64, 7) };
        },
    );
}

/// Whether the crate's alternate stack was gone before the hook ran.
#[cfg(feature = "overflow-handler")]
static GONE_BEFORE_HOOK_6: AtomicBool = AtomicBool::new(false);

/// Notes, when dropped, whether the thread has an alternate stack, then
/// overflows the stack it is dropped on.
#[cfg(feature = "overflow-handler")]
struct NotesThenOverflows;

#[cfg(feature = "overflow-handler")]
impl Drop for NotesThenOverflows {
    fn drop(&mut self) {
        eprintln!(
            "overflowing in a destructor (the crate's alternate stack was {})",
            if GONE_BEFORE_HOOK_6.load(Ordering::SeqCst) {
                "freed before the hook"
            } else {
                "still there"
            }
        );
        std::hint::black_box(overflow(0));
    }
}

/// Runs between the crate's alternate stack's destructor and the hook:
/// notes whether the thread has no alternate stack left.
#[cfg(feature = "overflow-handler")]
struct BeforeHook6;

#[cfg(feature = "overflow-handler")]
impl Drop for BeforeHook6 {
    fn drop(&mut self) {
        GONE_BEFORE_HOOK_6.store(!has_alt_stack(), Ordering::SeqCst);
    }
}

#[cfg(feature = "overflow-handler")]
thread_local! {
    static BEFORE_6: BeforeHook6 = const { BeforeHook6 };
}

#[test]
#[cfg(feature = "overflow-handler")]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn a_raw_pthread_whose_crate_alternate_stack_died_before_the_hook_gets_the_hooks() {
    let name = "a_raw_pthread_whose_crate_alternate_stack_died_before_the_hook_gets_the_hooks";
    if util::child_role().as_deref() == Some(name) {
        on_raw_pthread(|| {
            // Every registration of the hook, used before the thread's
            // first coroutine: the crate's alternate stack (mapped by that
            // coroutine's `install`) is destroyed before the hook runs.
            while corostack::thread_exit::rearm() {}
            // Destroyed after the crate's alternate stack (first used by
            // the coroutine's `install`), before the hook: sees the thread
            // as the hook will.
            BEFORE_6.with(|_| ());
            assert!(!has_alt_stack());
            forget_suspended_over(|| NotesThenOverflows);
            assert!(has_alt_stack());
        });
        unreachable!("the thread's exit did not overflow");
    }
    let stderr = aborts_with_the_overflow_message(name, "overflowing in a destructor");
    assert!(stderr.contains("was freed before the hook"), "{stderr}");
}
