//! Adversarial attacks, with safe code only, on issue 20's fixes: the
//! thread-exit hook (`corostack::thread_exit`), `started()` and the
//! thread-locals rule of `Coroutine`'s threat model.
//!
//! Each scenario that can crash runs in a child process; one that reads a
//! dropped thread-local aborts there with a message (the value's own drop
//! flag tells, not its freed bytes), and valgrind sees the read.

mod util;

use util::{ReadOnDrop, Tracked};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use corostack::greenlet::Greenlet;
use corostack::{Coroutine, Yielder};

/// Runs `scenario` in a child process playing `name` (the test's own
/// name); returns the child's exit code, stdout and stderr.
fn in_child(name: &str, scenario: fn()) -> Option<(Option<i32>, String, String)> {
    if util::child_role().as_deref() == Some(name) {
        scenario();
        println!("DONE");
        return None;
    }
    // Not `util::run_child`: the child must also run an ignored test.
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match std::env::var_os("COROSTACK_RUNNER") {
        Some(runner) => {
            let mut c = std::process::Command::new(runner);
            c.arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    let out = cmd
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .arg("--include-ignored")
        .env(util::CHILD_ROLE, name)
        .envs(util::leaks_allowed().iter().map(|(k, v)| (k, v)))
        .output()
        .expect("spawn the child test process");
    Some((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// [`in_child`], asserting that the child exited cleanly after `DONE`.
fn passes_in_child(name: &str, scenario: fn()) {
    if let Some((code, stdout, stderr)) = in_child(name, scenario) {
        assert!(
            code == Some(0) && stdout.contains("DONE"),
            "the child running {name} failed: {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Whether `exit` runs the calling thread's thread-local destructors, and
/// so the exit hook: glibc does in a dynamically linked program (the
/// `__cxa_thread_atexit_impl` list); in a statically linked one (CI's
/// QEMU builds) std keeps its own list, run by a pthread key's destructor,
/// which `exit` does not run: nothing of the thread dies there, and the
/// hook has nothing to do. Windows (x86_64-pc-windows-gnu, static too,
/// run under Wine 8.0): `process::exit` (ExitProcess) runs none of the
/// main thread's thread-local destructors either (the probe of
/// thread_exit.rs's `process_exit_from_inside_a_coroutine_...` never runs).
const EXIT_RUNS_THE_HOOK: bool = !cfg!(any(target_feature = "crt-static", windows));

// ---------------------------------------------------------------------------
// 1. `process::exit` from a panic hook (a common pattern: "log and exit")
// while the panicking thread holds a suspended coroutine.
// ---------------------------------------------------------------------------

// glibc's `exit` runs the calling thread's thread-local destructors, so
// the exit hook runs inside the panic hook (or inside the destructor),
// where `thread::panicking()` is true. The hook used to take that for "a
// coroutine is suspended in the middle of an unwind" and abort (SIGABRT,
// status 134). A forced unwind while the thread panics is an ordinary
// nested unwind on the coroutine's own stack, caught by its entry: the
// coroutine is unwound (its destructors run) and `exit(7)` ends the
// process with status 7.
#[test]
fn exit_from_a_panic_hook_with_a_suspended_coroutine_keeps_its_status() {
    let name = "exit_from_a_panic_hook_with_a_suspended_coroutine_keeps_its_status";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::panic::set_hook(Box::new(|_| std::process::exit(7)));
        let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            let _p = PrintsOnDrop("UNWOUND BY THE HOOK");
            y.suspend(())
        });
        co.resume(());
        panic!("logged and exited by the hook");
    }) else {
        return;
    };
    assert_eq!(code, Some(7), "stderr:\n{stderr}");
    assert_eq!(
        stdout.contains("UNWOUND BY THE HOOK"),
        EXIT_RUNS_THE_HOOK,
        "{stdout}\n{stderr}"
    );
}

#[test]
fn exit_from_a_destructor_during_an_unwind_keeps_its_status() {
    let name = "exit_from_a_destructor_during_an_unwind_keeps_its_status";
    let Some((code, stdout, stderr)) = in_child(name, || {
        struct ExitsOnDrop;
        impl Drop for ExitsOnDrop {
            fn drop(&mut self) {
                std::process::exit(7);
            }
        }
        std::panic::set_hook(Box::new(|_| ()));
        let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            // A panic caught inside the body's unwind: nested in the
            // thread's own (allowed outside a panic hook).
            let _c = CatchesAPanicOnDrop;
            let _p = PrintsOnDrop("UNWOUND BY THE HOOK");
            y.suspend(())
        });
        co.resume(());
        let _e = ExitsOnDrop;
        panic!("unwinding into ExitsOnDrop");
    }) else {
        return;
    };
    assert_eq!(code, Some(7), "stderr:\n{stderr}");
    assert_eq!(
        stdout.contains("UNWOUND BY THE HOOK"),
        EXIT_RUNS_THE_HOOK,
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.contains("CAUGHT A NESTED PANIC"),
        EXIT_RUNS_THE_HOOK,
        "{stdout}\n{stderr}"
    );
}

/// Prints its line when dropped (flushed: the process ends in `exit`).
struct PrintsOnDrop(&'static str);

impl Drop for PrintsOnDrop {
    fn drop(&mut self) {
        use std::io::Write;
        println!("{}", self.0);
        let _ = std::io::stdout().flush();
    }
}

/// Panics and catches its own panic when dropped; prints that it did.
struct CatchesAPanicOnDrop;

impl Drop for CatchesAPanicOnDrop {
    fn drop(&mut self) {
        let r = std::panic::catch_unwind(|| panic!("caught inside the hook's unwind"));
        assert!(r.is_err());
        drop(PrintsOnDrop("CAUGHT A NESTED PANIC"));
    }
}

// A thread that ends normally while a greenlet of it is suspended in the
// middle of its own panic's unwind (a destructor switched away; the
// greenlet is leaked): `thread::panicking()` is true on the whole thread,
// and the hook used to abort with "a coroutine is suspended in the middle
// of an unwind" although no coroutine was, instead of unwinding the
// thread's suspended coroutine, which reads a thread-local when unwound.

static DROPPED_1G: AtomicBool = AtomicBool::new(false);
static READ_1G: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_1G: Tracked = Tracked::new(&DROPPED_1G);
}

#[test]
fn a_greenlet_suspended_mid_unwind_does_not_keep_the_hook_from_unwinding_coroutines() {
    passes_in_child(
        "a_greenlet_suspended_mid_unwind_does_not_keep_the_hook_from_unwinding_coroutines",
        || {
            std::panic::set_hook(Box::new(|_| ()));
            std::thread::spawn(|| {
                DATA_1G.with(|_| ());
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_1G.with(|d| {
                        let _g = ReadOnDrop(d, &READ_1G);
                        y.suspend(());
                    })
                });
                co.resume(());
                std::mem::forget(co);
                struct SwitchesAway(Greenlet<u32>);
                impl Drop for SwitchesAway {
                    fn drop(&mut self) {
                        self.0.switch(1);
                    }
                }
                let main = corostack::greenlet::current::<u32>();
                let g = Greenlet::new(move |_: u32| -> u32 {
                    let _s = SwitchesAway(main);
                    panic!("the greenlet's own panic");
                });
                assert_eq!(g.switch(0), 1);
                assert!(std::thread::panicking(), "the greenlet's unwind is pending");
                std::mem::forget(g);
            })
            .join()
            .unwrap();
            assert_eq!(READ_1G.load(Ordering::SeqCst), 1, "the hook unwound it");
        },
    );
}

// Documented behaviour: a coroutine suspended in the middle of its own
// panic's unwind (a destructor suspended) cannot be unwound: the hook's
// forced unwind escapes that destructor and the process aborts, by Rust's
// rule, as the coroutine's drop would; never a read of a thread-local
// after its destruction.

static DROPPED_1U: AtomicBool = AtomicBool::new(false);
static READ_1U: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_1U: Tracked = Tracked::new(&DROPPED_1U);
}

#[test]
fn a_coroutine_suspended_mid_unwind_at_thread_exit_aborts_as_its_drop_would() {
    let name = "a_coroutine_suspended_mid_unwind_at_thread_exit_aborts_as_its_drop_would";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            DATA_1U.with(|_| ());
            struct SuspendsOnDrop<'a>(&'a Yielder<(), ()>);
            impl Drop for SuspendsOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.suspend(());
                }
            }
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                DATA_9.with(|d| {
                    let _g = ReadOnDrop(d, &READ_1U);
                    let _s = SuspendsOnDrop(y);
                    panic!("the body's own panic");
                })
            });
            co.resume(());
            assert!(std::thread::panicking(), "suspended mid-unwind");
            std::mem::forget(co);
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    // An abort: a signal on Unix; on Windows std's abort (__fastfail)
    // ends the process with STATUS_STACK_BUFFER_OVERRUN.
    let aborted = code.is_none() || (cfg!(windows) && code == Some(0xC000_0409_u32 as i32));
    assert!(
        !stdout.contains("DONE") && aborted,
        "{code:?}\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("READ A DROPPED"), "{stderr}");
    assert!(
        stderr.contains("panic in a destructor during cleanup"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// 2. A body that catches the hook's unwind and then panics: the docs
// ("A panic that escapes the hook's unwind of a coroutine aborts the
// process with a message") promise an abort; the entry used to drop the
// payload silently, and the thread went on as if nothing had happened (a
// drop would have raised that panic).
// ---------------------------------------------------------------------------

static AFTER_CATCH: AtomicBool = AtomicBool::new(false);

#[test]
fn a_panic_escaping_the_body_during_the_hooks_unwind_aborts_with_a_message() {
    let name = "a_panic_escaping_the_body_during_the_hooks_unwind_aborts_with_a_message";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                let caught =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| y.suspend(())));
                assert!(caught.is_err(), "the hook's unwind reached the suspend");
                AFTER_CATCH.store(true, Ordering::SeqCst);
                panic!("a panic of the body's own, after the hook's unwind");
            });
            co.resume(());
            std::mem::forget(co);
        })
        .join()
        .unwrap();
        assert!(AFTER_CATCH.load(Ordering::SeqCst), "the hook unwound it");
        println!("PANIC SWALLOWED");
    }) else {
        return;
    };
    assert!(
        !stdout.contains("PANIC SWALLOWED") && code != Some(0),
        "the body's panic vanished: {code:?}\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("a panic escaped the unwind"), "{stderr}");
}

// ---------------------------------------------------------------------------
// 3. Held: a coroutine started (and forgotten, suspended inside a borrow)
// by a thread-local destructor that runs before the hook (on Linux; on
// Windows none runs before it).
// ---------------------------------------------------------------------------

static DROPPED_5: AtomicBool = AtomicBool::new(false);
static READ_5: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_5: Tracked = Tracked::new(&DROPPED_5);
    static STARTER_5: Starter = const { Starter };
}

/// Starts a coroutine that suspends inside `DATA_5.with`, and forgets it.
struct Starter;

impl Drop for Starter {
    fn drop(&mut self) {
        let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            DATA_5.with(|d| {
                let _g = ReadOnDrop(d, &READ_5);
                y.suspend(());
            })
        });
        co.resume(());
        std::mem::forget(co);
    }
}

#[test]
fn a_coroutine_forgotten_by_a_destructor_before_the_hook_is_unwound_by_it() {
    passes_in_child(
        "a_coroutine_forgotten_by_a_destructor_before_the_hook_is_unwound_by_it",
        || {
            std::thread::spawn(|| {
                DATA_5.with(|_| ());
                // The hook is registered here, after DATA_5's destructor.
                let mut co = Coroutine::<(), (), ()>::new(|_, ()| ());
                co.resume(());
                // Registered after the hook: runs before it.
                STARTER_5.with(|_| ());
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // On Windows the hook runs before every thread-local
            // destructor (a TLS callback), so STARTER_5's coroutine starts
            // after it: the documented case "started after the hook ran",
            // left suspended, and its frames never run again (no read).
            let expected = if cfg!(windows) { 0 } else { 1 };
            assert_eq!(READ_5.load(Ordering::SeqCst), expected, "the guard's runs");
        },
    );
}

// ---------------------------------------------------------------------------
// 4. Held: the hook's unwind of one forgotten coroutine resumes another
// listed, suspended one (owned by the first), which suspends again inside
// its borrow; the hook must then unwind it too, before the borrow dies.
// ---------------------------------------------------------------------------

static DROPPED_6: AtomicBool = AtomicBool::new(false);
static READ_6: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_6: Tracked = Tracked::new(&DROPPED_6);
}

/// Resumes the coroutine it owns when dropped.
struct ResumesOnDrop(Coroutine<(), (), ()>);

impl Drop for ResumesOnDrop {
    fn drop(&mut self) {
        // Started before the outer one, still suspended when this runs
        // (it is listed behind the outer one); it suspends once more.
        assert!(!self.0.done());
        assert!(self.0.resume(()).as_yield().is_some());
        // Forgotten again: only the hook can end it now.
        let inner = std::mem::replace(&mut self.0, Coroutine::<(), (), ()>::new(|_, ()| ()));
        std::mem::forget(inner);
    }
}

#[test]
fn a_coroutine_resumed_and_forgotten_by_the_hooks_unwind_is_unwound_too() {
    passes_in_child(
        "a_coroutine_resumed_and_forgotten_by_the_hooks_unwind_is_unwound_too",
        || {
            std::thread::spawn(|| {
                DATA_6.with(|_| ());
                let mut inner = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_6.with(|d| {
                        let _g = ReadOnDrop(d, &READ_6);
                        y.suspend(());
                        y.suspend(());
                    })
                });
                inner.resume(());
                let mut outer = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
                    let _r = ResumesOnDrop(inner);
                    y.suspend(());
                });
                outer.resume(());
                std::mem::forget(outer);
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_6.load(Ordering::SeqCst), 1, "the inner guard ran");
        },
    );
}

// ---------------------------------------------------------------------------
// 5. Held: a coroutine owned by a greenlet's suspended frame, the greenlet
// leaked: the hook reaches the coroutine (not the greenlet) in place.
// ---------------------------------------------------------------------------

static DROPPED_7: AtomicBool = AtomicBool::new(false);
static READ_7: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_7: Tracked = Tracked::new(&DROPPED_7);
}

#[test]
fn a_coroutine_in_a_leaked_greenlets_frame_is_unwound_by_the_hook() {
    passes_in_child(
        "a_coroutine_in_a_leaked_greenlets_frame_is_unwound_by_the_hook",
        || {
            std::thread::spawn(|| {
                DATA_7.with(|_| ());
                let main = corostack::greenlet::current::<u32>();
                let g = Greenlet::new(move |_: u32| {
                    let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                        DATA_7.with(|d| {
                            let _g = ReadOnDrop(d, &READ_7);
                            y.suspend(());
                        })
                    });
                    co.resume(());
                    main.switch(1);
                    drop(co);
                    0
                });
                assert_eq!(g.switch(0), 1);
                std::mem::forget(g);
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_7.load(Ordering::SeqCst), 1);
        },
    );
}

// ---------------------------------------------------------------------------
// 6. `started()` after a pooled stack is reused: a coroutine finished
// without starting leaves its mark in the stack's spare word.
// ---------------------------------------------------------------------------

#[test]
fn started_is_not_carried_over_by_a_reused_stack() {
    for round in 0..4 {
        let mut never = Coroutine::<(), (), ()>::new(|_, ()| ());
        never.force_unwind();
        assert!(never.done() && !never.started());
        let stack = never.into_stack();
        // The body returns at once, panics, or suspends and is unwound.
        let mut co = Coroutine::<(), (), ()>::with_stack(stack, move |y, ()| match round {
            0 => (),
            1 => panic!("ends by a panic"),
            _ => y.suspend(()),
        });
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| co.resume(())));
        if round == 3 {
            co.force_unwind();
        }
        assert!(co.started(), "round {round}: the body ran");
        // And through the pool: `new` after a never-started drop.
        let mut never = Coroutine::<(), (), ()>::new(|_, ()| ());
        never.force_unwind();
        drop(never);
        let mut co = Coroutine::<(), (), ()>::new(|_, ()| ());
        co.resume(());
        assert!(co.done() && co.started(), "round {round}: pooled");
    }
    // A greenlet that panicked, and one killed after it ran.
    let g = Greenlet::new(|_: u32| -> u32 { panic!("greenlet panics") });
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.switch(0)));
    assert!(g.done() && g.started(), "panicked greenlet");
    let main = corostack::greenlet::current::<u32>();
    let g = Greenlet::new(move |x: u32| main.switch(x));
    g.switch(1);
    g.kill();
    assert!(g.done() && g.started(), "killed after it ran");
}

// ---------------------------------------------------------------------------
// 7. Held: `rearm` from a thread-local destructor that runs before the
// hook (the hook is then registered during destruction and runs next,
// before the thread-locals not destroyed yet, including one first used
// after the hook's first registration), and `rearm` during the hook's
// unwind (false: the hook has run).
// ---------------------------------------------------------------------------

static DROPPED_8: AtomicBool = AtomicBool::new(false);
static READ_8: AtomicUsize = AtomicUsize::new(0);
static REARM_IN_HOOK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DATA_8: Tracked = Tracked::new(&DROPPED_8);
    static REARMER: Rearmer = const { Rearmer };
}

/// Calls `rearm` when dropped (at thread exit).
struct Rearmer;

impl Drop for Rearmer {
    fn drop(&mut self) {
        // On Windows the hook (a TLS callback) has run before any
        // thread-local destructor: `rearm` says so.
        assert_eq!(
            corostack::thread_exit::rearm(),
            !cfg!(windows),
            "registered while the hook has not run yet"
        );
    }
}

/// Calls `rearm` from the hook's unwind; counts a `false`.
struct RearmsInHook;

impl Drop for RearmsInHook {
    fn drop(&mut self) {
        if !corostack::thread_exit::rearm() {
            REARM_IN_HOOK.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn rearm_from_a_thread_local_destructor_and_from_the_hooks_unwind() {
    passes_in_child(
        "rearm_from_a_thread_local_destructor_and_from_the_hooks_unwind",
        || {
            std::thread::spawn(|| {
                let mut first = Coroutine::<(), (), ()>::new(|_, ()| ());
                first.resume(()); // the hook's first registration
                // First used after it: destroyed before that registration.
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_8.with(|d| {
                        let _r = RearmsInHook;
                        let _g = ReadOnDrop(d, &READ_8);
                        y.suspend(());
                    })
                });
                co.resume(());
                std::mem::forget(co);
                // Used last: destroyed first, and rearms the hook then.
                REARMER.with(|_| ());
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_8.load(Ordering::SeqCst), 1, "read while alive");
            assert_eq!(REARM_IN_HOOK.load(Ordering::SeqCst), 1, "rearm was false");
        },
    );
}

// ---------------------------------------------------------------------------
// 8. The rule's parenthetical: a thread-local used "before its first
// coroutine started" counts as used before the hook's registration. Not
// when `rearm` was called before that first start: `rearm` registers the
// hook and readies the thread's list, so the first start registers
// nothing, and a thread-local first used between the two is destroyed
// before the hook runs.
// ---------------------------------------------------------------------------

static DROPPED_9: AtomicBool = AtomicBool::new(false);
static READ_9: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOLDER_9: std::cell::RefCell<Vec<Coroutine<(), (), ()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static DATA_9: Tracked = Tracked::new(&DROPPED_9);
}

// Was a bug: READ A DROPPED THREAD-LOCAL (the body's guard read DATA_9
// after its destructor; valgrind: an invalid read inside a freed block),
// though the thread followed the documented rule: DATA_9 was used before
// the thread's first coroutine started.
#[test]
fn a_thread_local_used_before_the_first_start_is_covered_after_an_early_rearm() {
    passes_in_child(
        "a_thread_local_used_before_the_first_start_is_covered_after_an_early_rearm",
        || {
            std::thread::spawn(|| {
                HOLDER_9.with(|_| ());
                // Early, e.g. by a thread pool's start-up code.
                assert!(corostack::thread_exit::rearm());
                // Used before the first coroutine starts.
                DATA_9.with(|_| ());
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_9.with(|d| {
                        let _g = ReadOnDrop(d, &READ_9);
                        y.suspend(());
                    })
                });
                co.resume(());
                HOLDER_9.with(|h| h.borrow_mut().push(co));
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(READ_9.load(Ordering::SeqCst), 1);
        },
    );
}

// ---------------------------------------------------------------------------
// 10. Windows: the hook runs from a TLS callback of the crate's own, before
// std's, so it runs before the destructor of every thread-local, also one
// first used after the hook's last registration and without a `rearm` (on
// Linux that case is the documented rule's: call `rearm` after the first
// use). Before the callback, key-based thread-locals (x86_64-pc-windows-gnu)
// died in the process's key order and DATA_10 could die first.
// ---------------------------------------------------------------------------

#[cfg(windows)]
static DROPPED_10: AtomicBool = AtomicBool::new(false);
#[cfg(windows)]
static READ_10: AtomicUsize = AtomicUsize::new(0);

#[cfg(windows)]
thread_local! {
    static DATA_10: Tracked = Tracked::new(&DROPPED_10);
}

#[test]
#[cfg(windows)] // elsewhere a thread-local first used after the registration needs `rearm`
fn windows_a_thread_local_first_used_after_the_hook_is_alive_for_it() {
    passes_in_child(
        "windows_a_thread_local_first_used_after_the_hook_is_alive_for_it",
        || {
            std::thread::spawn(|| {
                let mut first = Coroutine::<(), (), ()>::new(|_, ()| ());
                first.resume(()); // the hook's only registration
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    DATA_10.with(|d| {
                        let _g = ReadOnDrop(d, &READ_10);
                        y.suspend(());
                    })
                });
                co.resume(()); // DATA_10: first used after the registration
                std::mem::forget(co);
            })
            .join()
            .unwrap();
            assert_eq!(READ_10.load(Ordering::SeqCst), 1, "read while alive");
            assert!(DROPPED_10.load(Ordering::SeqCst), "destroyed afterwards");
        },
    );
}
