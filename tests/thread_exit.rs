//! Thread-local borrows held across a suspend, at thread exit (see
//! `corostack::thread_exit` and the threat model of `Coroutine`).
//!
//! A body suspended inside `KEY.with(|d| ...)` keeps `d`. At thread exit
//! `KEY`'s destructor runs; a drop of the coroutine by a later
//! thread-local destructor, or a scoped thread of a forgotten coroutine,
//! then reads a dropped value. The thread's exit hook unwinds such a
//! coroutine first, while every thread-local the thread used before the
//! hook was registered (its first coroutine start, or `rearm`) is alive.
//!
//! Each case runs in a spawned thread of a child process: the failure it
//! guards against is a read of freed memory, which the value's own drop
//! flag turns into an abort with a message (and valgrind into an invalid
//! read).

mod util;

use util::{ReadOnDrop, Tracked};

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use corostack::greenlet::Greenlet;
use corostack::{Coroutine, Generator, Yielder};

// ---------------------------------------------------------------------------
// Hole 1: a coroutine dropped by a thread-local destructor that runs after
// the destructor of the thread-local its body borrows.
// ---------------------------------------------------------------------------

static DROPPED_1: AtomicBool = AtomicBool::new(false);
static READ_1: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOLDER_1: RefCell<Vec<Coroutine<(), (), ()>>> = const { RefCell::new(Vec::new()) };
    static DATA_1: Tracked = Tracked::new(&DROPPED_1);
}

#[test]
fn a_coroutine_dropped_by_a_later_thread_local_destructor_is_unwound_before_its_borrow_dies() {
    util::passes_in_child(
        "a_coroutine_dropped_by_a_later_thread_local_destructor_is_unwound_before_its_borrow_dies",
        || {
            std::thread::spawn(|| {
                // Used first: destroyed last. DATA_1 is destroyed before it.
                HOLDER_1.with(|_| ());
                DATA_1.with(|_| ());
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_1.with(|d| {
                        let _g = ReadOnDrop(d, &READ_1);
                        y.suspend(());
                    })
                });
                co.resume(());
                HOLDER_1.with(|h| h.borrow_mut().push(co));
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                READ_1.load(Ordering::SeqCst),
                1,
                "the body's guard ran once"
            );
        },
    );
}

static DROPPED_2: AtomicBool = AtomicBool::new(false);
static READ_2: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOLDER_2: RefCell<Vec<Generator<(), u32>>> = const { RefCell::new(Vec::new()) };
    static DATA_2: Tracked = Tracked::new(&DROPPED_2);
}

#[test]
fn a_generator_and_a_coroutine_it_owns_are_unwound_before_their_borrows_die() {
    util::passes_in_child(
        "a_generator_and_a_coroutine_it_owns_are_unwound_before_their_borrows_die",
        || {
            std::thread::spawn(|| {
                HOLDER_2.with(|_| ());
                DATA_2.with(|_| ());
                let mut g = Generator::new(|y: &Yielder<(), u32>| {
                    // A nested coroutine, suspended on the generator's
                    // stack, borrowing the same thread-local.
                    let mut inner = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                        DATA_2.with(|d| {
                            let _g = ReadOnDrop(d, &READ_2);
                            y.suspend(());
                        })
                    });
                    inner.resume(());
                    DATA_2.with(|d| {
                        let _g = ReadOnDrop(d, &READ_2);
                        y.suspend(1);
                    });
                    drop(inner);
                });
                assert_eq!(g.next(), Some(1));
                HOLDER_2.with(|h| h.borrow_mut().push(g));
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_2.load(Ordering::SeqCst), 2, "both guards ran");
        },
    );
}

// ---------------------------------------------------------------------------
// Hole 2: a forgotten coroutine whose body lent its borrow to a scoped
// thread and suspended inside the scope.
// ---------------------------------------------------------------------------

static DROPPED_3: AtomicBool = AtomicBool::new(false);
static SCOPED_READS: AtomicUsize = AtomicUsize::new(0);
static SCOPED_JOINED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DATA_3: Tracked = Tracked::new(&DROPPED_3);
}

/// Tells the scoped thread to stop when dropped (by the body's unwind).
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_forgotten_coroutine_joins_its_scoped_thread_before_the_borrow_dies() {
    util::passes_in_child(
        "a_forgotten_coroutine_joins_its_scoped_thread_before_the_borrow_dies",
        || {
            std::thread::spawn(|| {
                DATA_3.with(|_| ());
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_3.with(|d| {
                        let stop = AtomicBool::new(false);
                        std::thread::scope(|s| {
                            s.spawn(|| {
                                while !stop.load(Ordering::SeqCst) {
                                    assert_eq!(d.read(), 6);
                                    SCOPED_READS.fetch_add(1, Ordering::SeqCst);
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            });
                            let _stop = Stop(&stop);
                            y.suspend(());
                        });
                        SCOPED_JOINED.store(true, Ordering::SeqCst);
                    })
                });
                co.resume(());
                while SCOPED_READS.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
                std::mem::forget(co);
            })
            .join()
            .unwrap();
            // The scoped thread would now read the dropped value, if it
            // still ran: give it the time.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                DROPPED_3.load(Ordering::SeqCst),
                "the thread-local was destroyed"
            );
        },
    );
}

// ---------------------------------------------------------------------------
// The order the hook relies on: std registers each thread-local's
// destructor at its first use, and glibc runs them last registered, first
// run. A thread-local first used after the hook was registered is
// destroyed before it runs; `rearm` registers it again, later.
// ---------------------------------------------------------------------------

static ORDER: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Records its name when dropped.
struct Named(&'static str);

impl Drop for Named {
    fn drop(&mut self) {
        ORDER.lock().unwrap().push(self.0);
    }
}

thread_local! {
    static EARLY: Named = const { Named("early") };
    static LATE: Named = const { Named("late") };
    static LATER: Named = const { Named("later") };
}

#[test]
fn the_hook_runs_before_the_thread_locals_used_before_it_was_registered() {
    util::passes_in_child(
        "the_hook_runs_before_the_thread_locals_used_before_it_was_registered",
        || {
            std::thread::spawn(|| {
                EARLY.with(|_| ());
                // The thread's first coroutine start registers the hook.
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    let _n = Named("unwound");
                    y.suspend(());
                });
                co.resume(());
                LATE.with(|_| ());
                assert!(corostack::thread_exit::rearm());
                LATER.with(|_| ());
                std::mem::forget(co);
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Last used, first destroyed; the hook (registered twice) runs
            // where its last registration stands. On Windows it runs from
            // a TLS callback before std's, so before every destructor.
            let expected = if cfg!(windows) {
                ["unwound", "later", "late", "early"]
            } else {
                ["later", "unwound", "late", "early"]
            };
            assert_eq!(*ORDER.lock().unwrap(), expected);
        },
    );
}

static DROPPED_4: AtomicBool = AtomicBool::new(false);
static READ_4: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOLDER_4: RefCell<Vec<Coroutine<(), (), ()>>> = const { RefCell::new(Vec::new()) };
    static DATA_4: Tracked = Tracked::new(&DROPPED_4);
}

#[test]
fn rearm_covers_a_thread_local_first_used_inside_the_body() {
    util::passes_in_child(
        "rearm_covers_a_thread_local_first_used_inside_the_body",
        || {
            std::thread::spawn(|| {
                HOLDER_4.with(|_| ());
                // DATA_4 is first used by the body, after the hook's first
                // registration: `rearm` registers it again after that.
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_4.with(|d| {
                        let _g = ReadOnDrop(d, &READ_4);
                        y.suspend(());
                    })
                });
                co.resume(());
                assert!(corostack::thread_exit::rearm());
                HOLDER_4.with(|h| h.borrow_mut().push(co));
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_4.load(Ordering::SeqCst), 1);
        },
    );
}

// ---------------------------------------------------------------------------
// Attacks on the hook itself.
// ---------------------------------------------------------------------------

thread_local! {
    static LATE_HOLDER: RefCell<Option<Coroutine<(), u32, ()>>> = const { RefCell::new(None) };
}

/// Starts, suspends and keeps a coroutine from a thread-local destructor
/// that runs after the hook.
struct StartsOnDrop;

impl Drop for StartsOnDrop {
    fn drop(&mut self) {
        let mut co = Coroutine::new(|y: &Yielder<(), u32>, ()| {
            let _n = Named("started-late-unwound");
            y.suspend(7);
        });
        assert_eq!(co.resume(()).as_yield(), Some(7));
        // Dropped by a destructor that runs later still.
        let _ = LATE_HOLDER.try_with(|h| *h.borrow_mut() = Some(co));
    }
}

thread_local! {
    static STARTS_ON_DROP: StartsOnDrop = const { StartsOnDrop };
}

#[test]
fn coroutines_started_from_thread_local_destructors_after_the_hook_work() {
    util::passes_in_child(
        "coroutines_started_from_thread_local_destructors_after_the_hook_work",
        || {
            std::thread::spawn(|| {
                LATE_HOLDER.with(|_| ());
                STARTS_ON_DROP.with(|_| ());
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| y.suspend(()));
                co.resume(());
                std::mem::forget(co);
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(*ORDER.lock().unwrap(), ["started-late-unwound"]);
        },
    );
}

/// Kills and switches greenlets from the unwind that the hook runs.
struct SwitchesOnDrop(Greenlet<u32>);

impl Drop for SwitchesOnDrop {
    fn drop(&mut self) {
        assert_eq!(self.0.switch(1), 2);
        self.0.kill();
    }
}

#[test]
fn greenlets_switched_and_killed_from_the_hooks_unwind() {
    util::passes_in_child(
        "greenlets_switched_and_killed_from_the_hooks_unwind",
        || {
            std::thread::spawn(|| {
                let main = corostack::greenlet::current::<u32>();
                let g = Greenlet::new(move |x: u32| {
                    let _n = Named("greenlet-killed");
                    main.switch(x + 1)
                });
                let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
                    let _s = SwitchesOnDrop(g);
                    y.suspend(());
                });
                co.resume(());
                std::mem::forget(co);
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(*ORDER.lock().unwrap(), ["greenlet-killed"]);
        },
    );
}

#[test]
fn process_exit_from_inside_a_coroutine_leaves_the_running_ones_alone() {
    let name = "process_exit_from_inside_a_coroutine_leaves_the_running_ones_alone";
    if util::child_role().as_deref() == Some(name) {
        // A suspended one (unwound by the hook) and two running ones
        // (nested), the innermost calling exit: the hook runs on its
        // stack, and must not switch into either.
        struct Says(&'static str);
        impl Drop for Says {
            fn drop(&mut self) {
                println!("{}", self.0);
            }
        }
        // Whether std runs the main thread's thread-local destructors at
        // `exit` in this build (through `__cxa_thread_atexit_impl`; a
        // statically linked glibc program runs none there): used before
        // the first coroutine start, so destroyed after the hook runs.
        thread_local!(static PROBE: Says = const { Says("MAIN THREAD-LOCALS DESTROYED") });
        PROBE.with(|_| ());
        let mut parked = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            let _n = Says("PARKED UNWOUND");
            y.suspend(());
        });
        parked.resume(());
        std::mem::forget(parked);
        let mut outer = Coroutine::new(|_: &Yielder<(), ()>, ()| {
            let mut inner = Coroutine::new(|_: &Yielder<(), ()>, ()| {
                println!("EXITING");
                std::process::exit(3)
            });
            inner.resume(());
        });
        outer.resume(());
        unreachable!();
    }
    let out = util::run_child_with(name, name, &util::leaks_allowed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("EXITING"));
    // Where `exit` runs the main thread's thread-local destructors, the
    // hook ran first, on the running coroutine's stack, and unwound the
    // suspended one only; where it runs none (a static build), nothing of
    // the thread dies, and the hook does not run either.
    let destroyed = stdout.find("MAIN THREAD-LOCALS DESTROYED");
    let unwound = stdout.find("PARKED UNWOUND");
    assert!(
        !cfg!(windows) || (unwound, destroyed) == (None, None),
        "on Windows no thread-local destructor runs at exit:\n{stdout}"
    );
    match (unwound, destroyed) {
        (Some(u), Some(d)) => assert!(u < d, "the hook ran after a thread-local died:\n{stdout}"),
        // Only a static build may run none (a dynamic one runs them), and
        // Windows (x86_64-pc-windows-gnu under Wine 8.0), where
        // `process::exit` (ExitProcess) runs none of the main thread's
        // thread-local destructors: the probe's never runs.
        (None, None) if cfg!(any(target_feature = "crt-static", windows)) => {}
        _ => panic!("the hook and the thread-locals disagree, or none ran:\n{stdout}"),
    }
}

// ---------------------------------------------------------------------------
// `started` and the generator's priming value.
// ---------------------------------------------------------------------------

#[test]
fn started_is_false_for_a_coroutine_finished_without_a_resume() {
    let mut co = Coroutine::<(), (), ()>::new(|_, ()| ());
    co.force_unwind();
    assert!(co.done() && !co.started(), "force_unwind");

    let mut co = Coroutine::<(), (), ()>::new(|_, ()| ());
    // SAFETY: nothing ran; the closure captures nothing.
    unsafe { co.force_reset() };
    assert!(co.done() && !co.started(), "force_reset");

    let mut co = Coroutine::<(), (), ()>::new(|y, ()| y.suspend(()));
    co.resume(());
    co.force_unwind();
    assert!(co.done() && co.started(), "resumed, then unwound");

    let mut co = Coroutine::<(), (), ()>::new(|y, ()| y.suspend(()));
    co.resume(());
    // SAFETY: the suspended frames hold nothing that needs a drop.
    unsafe { co.force_reset() };
    assert!(co.done() && co.started(), "resumed, then reset");

    // Reused stacks do not carry the mark over.
    let stack = co.into_stack();
    let mut co = Coroutine::<(), (), ()>::with_stack(stack, |_, ()| ());
    assert!(!co.started());
    co.resume(());
    assert!(co.done() && co.started(), "resumed to the end");

    let x = 5;
    corostack::scoped::ScopedCoroutine::new(|_: &Yielder<(), ()>, ()| {
        let _ = x;
    })
    .scope(|co| {
        co.force_unwind();
        assert!(co.done() && !co.started(), "scoped, force_unwind");
    });
}

#[test]
fn started_is_false_for_a_greenlet_killed_before_it_ran() {
    let g = Greenlet::new(|x: u32| x);
    g.kill();
    assert!(g.done() && !g.started(), "killed before it ran");
    let g = Greenlet::new(|x: u32| x);
    assert_eq!(g.switch(4), 4);
    assert!(g.done() && g.started(), "ran to the end");
}

#[test]
fn a_generators_priming_value_is_dropped_when_discarded() {
    let drops = util::DropCounter::default();
    let mut g = Generator::new(|y: &Yielder<Option<util::DropGuard>, u32>| {
        let _kept = y.suspend(1);
        y.suspend(2);
    });
    assert_eq!(g.send(Some(drops.guard())), Some(1));
    assert_eq!(
        drops.get(),
        1,
        "the priming value is dropped by the first send"
    );
    assert_eq!(g.send(Some(drops.guard())), Some(2));
    assert_eq!(drops.get(), 1, "a value the body keeps is not");
    drop(g);
    assert_eq!(drops.get(), 2);
}

thread_local! {
    static SELF_HOLDER: RefCell<Option<Coroutine<(), (), ()>>> = const { RefCell::new(None) };
}

/// Drops, from the body's own unwind, the handle of the coroutine it runs
/// in, reached through a thread-local that is still alive.
struct DropsOwnHandle;

impl Drop for DropsOwnHandle {
    fn drop(&mut self) {
        let own = SELF_HOLDER.with(|h| h.borrow_mut().take());
        drop(own);
    }
}

#[test]
fn a_body_that_drops_its_own_handle_while_the_hook_unwinds_it_aborts_with_a_message() {
    let name = "a_body_that_drops_its_own_handle_while_the_hook_unwinds_it_aborts_with_a_message";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(|| {
            SELF_HOLDER.with(|_| ());
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                let _d = DropsOwnHandle;
                y.suspend(());
            });
            co.resume(());
            SELF_HOLDER.with(|h| *h.borrow_mut() = Some(co));
        })
        .join()
        .unwrap();
        println!("NOT ABORTED");
        return;
    }
    let out = util::run_child_with(name, name, &util::leaks_allowed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("NOT ABORTED"));
    assert!(
        stderr.contains("was resumed or dropped through its handle during that unwind"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// An overflow in a destructor that the hook's unwind runs. By the time the
// thread-locals are destroyed std has taken the thread's alternate signal
// stack away (a spawned thread's when its closure returned, the main
// thread's when `main` did); without one the kernel cannot run the
// overflow handler, and the process died by a bare SIGSEGV. (The test
// harness runs every test on a spawned thread, so the main thread's case,
// the same code path, is not run here.)
// ---------------------------------------------------------------------------

/// Recurses until the stack overflows.
#[cfg(all(unix, feature = "overflow-handler"))]
#[allow(unconditional_recursion)]
fn overflow(depth: usize) -> usize {
    let frame = std::hint::black_box([depth as u8; 512]);
    overflow(depth + 1) + usize::from(frame[7])
}

/// A value whose destructor overflows the stack it runs on.
#[cfg(all(unix, feature = "overflow-handler"))]
struct OverflowsOnDrop;

#[cfg(all(unix, feature = "overflow-handler"))]
impl Drop for OverflowsOnDrop {
    fn drop(&mut self) {
        eprintln!("overflowing in a destructor");
        std::hint::black_box(overflow(0));
    }
}

/// Leaves a coroutine suspended over an [`OverflowsOnDrop`], forgotten, for
/// the exit hook to unwind.
#[cfg(all(unix, feature = "overflow-handler"))]
fn forget_a_coroutine_that_overflows_when_unwound() {
    let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
        let _d = OverflowsOnDrop;
        y.suspend(());
    });
    co.resume(());
    std::mem::forget(co);
}

/// Runs the child `name` and asserts that it aborted with the overflow
/// handler's message, after the destructor began.
#[cfg(all(unix, feature = "overflow-handler"))]
fn aborts_with_the_overflow_message(name: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = util::run_child_with(name, name, &util::leaks_allowed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    let began = stderr.find("overflowing in a destructor").expect(&stderr);
    assert!(
        stderr[began..].contains("corostack: coroutine stack overflow (stack of "),
        "{stderr}"
    );
}

#[test]
#[cfg(all(unix, feature = "overflow-handler"))]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
)]
fn an_overflow_in_the_hooks_unwind_on_a_spawned_thread_is_reported() {
    let name = "an_overflow_in_the_hooks_unwind_on_a_spawned_thread_is_reported";
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(forget_a_coroutine_that_overflows_when_unwound)
            .join()
            .unwrap();
        unreachable!("the thread's exit did not overflow");
    }
    aborts_with_the_overflow_message(name);
}
