//! Adversarial tests of the hub's tasks whose drops and unwinds end in a
//! panic (safe code only): a task killed whose unwind panics (its body
//! catches the kill), a spawned closure whose drop panics (killed before
//! it starts, by a handle or by the end of `run`), and a detached task (its
//! `JoinHandle` dropped) whose value or panic payload panics when the task
//! drops it.
//!
//! What each checks: `run` ends (no abort, no hang) with the panic where
//! the docs put it, and every task's stack is given back: pooling is off
//! on the test's thread (`set_pool_capacity(0)`, which the hub restores at
//! its end), so [`DefaultStack::live`] counts the stacks not given back.
//!
//! Each scenario runs in a child process with a watchdog (an abort or a
//! hang fails its test, not the suite).

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use corostack::DefaultStack;
use corostack::stack::set_pool_capacity;
use corostack_hub::{self as hub, JoinError};
use hub_util::passes_in_child;

/// The message of every panic these tests provoke.
const MSG: &str = "a drop that panics";

/// Panics when dropped (unless the thread unwinds already: a panic then
/// would abort the process by Rust's rule, whatever the hub did).
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("{MSG}");
        }
    }
}

/// Keeps the provoked panics' messages out of the test's output.
fn quiet() {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let s = info.to_string();
        if !s.contains(MSG) && !s.contains("Box<dyn Any>") {
            hook(info);
        }
    }));
}

/// Runs `f` on a thread of its own with pooling off, and checks that
/// every stack it took is given back.
fn counted(f: impl FnOnce() + Send + 'static) {
    quiet();
    thread::spawn(move || {
        set_pool_capacity(0);
        let base = DefaultStack::live();
        f();
        assert_eq!(DefaultStack::live(), base, "stacks not given back");
    })
    .join()
    .unwrap();
}

/// The message of `f`'s panic, if it panicked.
fn panic_of<T>(f: impl FnOnce() -> T) -> Option<String> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .err()
        .map(|p| util::message(&*p))
}

// ===========================================================================
// 1. A task killed whose unwind ends in a panic: its body catches the kill
// and panics, or its closure's drop panics (killed before it started, by
// a handle or at the end of `run`). That panic is the victim's result
// (`JoinError::Panicked`), never the killer's.
//
// Catches: a task whose stack leaks when its end is a panic of its
// unwind; a panic that escapes the task into the loop.
// ===========================================================================

#[test]
fn a_killed_task_whose_unwind_panics_gives_its_stack_back() {
    passes_in_child(
        "a_killed_task_whose_unwind_panics_gives_its_stack_back",
        || {
            counted(|| {
                let v = hub::run(|| {
                    let h = hub::spawn(|| {
                        let caught = panic::catch_unwind(|| hub::sleep(Duration::from_secs(60)));
                        assert!(caught.is_err(), "the kill");
                        drop(PanicOnDrop);
                    });
                    hub::yield_now();
                    h.kill();
                    let e = h.join().unwrap_err();
                    assert_eq!(e.panic_message(), Some(MSG));

                    let guard = PanicOnDrop;
                    let h = hub::spawn(move || drop(guard));
                    h.kill(); // before it started: its closure is dropped
                    let e = h.join().unwrap_err();
                    assert_eq!(e.panic_message(), Some(MSG));

                    // Left for the end of `run`: one started, one not.
                    drop(hub::spawn(|| {
                        let caught = panic::catch_unwind(|| hub::sleep(Duration::from_secs(60)));
                        assert!(caught.is_err(), "the kill");
                        drop(PanicOnDrop);
                    }));
                    hub::yield_now();
                    let guard = PanicOnDrop;
                    drop(hub::spawn(move || drop(guard)));
                    7
                });
                assert_eq!(v, 7);
            });
        },
    );
}

// ===========================================================================
// 2. A detached task (its `JoinHandle` dropped) whose value, or panic
// payload, panics when dropped: the task drops it when it ends (nothing
// else holds it). `run` must end as for a destructor's panic that the loop
// runs at the end (`run` raises it once every task finished) and give the
// task's stack back; not abort the process.
//
// Catches: the panic escaping the task's coroutine into the loop (before
// the fix: `run_task` left the finished task as the running one, the
// shutdown that the loop's unwind ran waited in it as if it could park,
// and the process aborted with "a coroutine that never started cannot
// suspend" in a destructor during cleanup).
// ===========================================================================

#[test]
fn a_detached_task_whose_value_panics_when_dropped() {
    passes_in_child("a_detached_task_whose_value_panics_when_dropped", || {
        counted(|| {
            let p = panic_of(|| {
                hub::run(|| {
                    drop(hub::spawn(|| PanicOnDrop));
                    hub::yield_now();
                    7
                })
            });
            assert_eq!(p.as_deref(), Some(MSG));
        });
    });
}

/// A payload whose drop panics (the one a detached task's panic leaves).
struct PanickyPayload;

impl Drop for PanickyPayload {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("{MSG}");
        }
    }
}

#[test]
fn a_detached_task_whose_panic_payload_panics_when_dropped() {
    passes_in_child(
        "a_detached_task_whose_panic_payload_panics_when_dropped",
        || {
            counted(|| {
                let p = panic_of(|| {
                    hub::run(|| {
                        drop(hub::spawn(|| panic::panic_any(PanickyPayload)));
                        let h = hub::spawn(|| 5);
                        hub::yield_now();
                        // The hub goes on: the other task runs and finishes.
                        h.join().unwrap()
                    })
                });
                assert_eq!(p.as_deref(), Some(MSG));
            });
        },
    );
}

// ===========================================================================
// 3. A joined task whose value panics when dropped by its joiner, and a
// `JoinError` dropped likewise: ordinary user code, the panic reaches it.
// ===========================================================================

#[test]
fn a_joined_value_that_panics_when_dropped_reaches_the_joiner() {
    passes_in_child(
        "a_joined_value_that_panics_when_dropped_reaches_the_joiner",
        || {
            counted(|| {
                let v = hub::run(|| {
                    let h = hub::spawn(|| PanicOnDrop);
                    let r = h.join();
                    assert_eq!(panic_of(move || drop(r)).as_deref(), Some(MSG));
                    let h = hub::spawn(|| panic::panic_any(PanickyPayload));
                    let e = h.join().unwrap_err();
                    assert!(matches!(e, JoinError::Panicked(_)));
                    assert_eq!(panic_of(move || drop(e)).as_deref(), Some(MSG));
                    3
                });
                assert_eq!(v, 3);
            });
        },
    );
}

// ===========================================================================
// 4. A detached task's result whose destructor parks: it runs in the task,
// which may still park (a sleep finishes; a kill at the end of `run`
// ends it, and `run` returns normally).
//
// Catches: the result dropped after the task stopped being able to park
// (its park panicked "a coroutine that never started cannot suspend").
// ===========================================================================

/// Parks when dropped (yields, or sleeps for so long that only a kill
/// ends it), then counts it (its guard's drop, after the park or the kill
/// that ends it).
struct ParksOnDrop(Option<Duration>, #[allow(dead_code)] util::DropGuard);

impl Drop for ParksOnDrop {
    fn drop(&mut self) {
        match self.0 {
            Some(d) => hub::sleep(d),
            None => hub::yield_now(),
        }
    }
}

#[test]
fn a_detached_task_whose_result_parks_when_dropped() {
    passes_in_child("a_detached_task_whose_result_parks_when_dropped", || {
        counted(|| {
            let dropped = util::DropCounter::default();
            let seen = dropped.clone();
            let v = hub::run(move || {
                let g = seen.guard();
                drop(hub::spawn(move || ParksOnDrop(None, g)));
                while seen.get() == 0 {
                    hub::yield_now();
                }
                // Asleep in its drop when `run` ends: killed there.
                let g = seen.guard();
                drop(hub::spawn(move || {
                    ParksOnDrop(Some(Duration::from_secs(3600)), g)
                }));
                hub::yield_now();
                9
            });
            assert_eq!(v, 9);
            assert_eq!(dropped.get(), 2);
        });
    });
}

// ===========================================================================
// 5. A detached task leaked at the end of `run` while its result's
// destructor parks (it caught its kill and sleeps again), then a
// `thread_exit::rearm`: the core's exit hook force-unwinds the leaked task
// at thread exit, with its hub gone, through the drop of that result.
//
// Catches: a drop of the result that catches that unwind and then touches
// the hub (gone: its frame was `run`'s, overwritten since), or that leaves
// the task marked suspended (the hub's leak guard would then abort).
// ===========================================================================

/// Overwrites the part of this thread's stack where a returned call's
/// frames were (the hub of a `run` that returned lived there).
#[inline(never)]
fn scribble() {
    let mut a = [0xA5u8; 64 * 1024];
    std::hint::black_box(&mut a);
}

/// Catches the kill in its drop, then sleeps again.
struct OutlivesItsKill;

impl Drop for OutlivesItsKill {
    fn drop(&mut self) {
        let k = panic::catch_unwind(|| hub::sleep(Duration::from_secs(3600)));
        assert!(k.is_err(), "the kill at the end of run");
        println!("KILL CAUGHT");
        hub::sleep(Duration::from_secs(3600));
        println!("SLEPT ON");
    }
}

#[test]
fn a_leaked_detached_task_unwound_by_the_exit_hook_in_its_results_drop() {
    let name = "a_leaked_detached_task_unwound_by_the_exit_hook_in_its_results_drop";
    let Some(run) = hub_util::in_child(name, Duration::from_secs(20), || {
        thread::spawn(|| {
            let r = panic::catch_unwind(|| {
                hub::Builder::new()
                    .shutdown_timeout(Some(Duration::from_millis(50)))
                    .run(|| {
                        drop(hub::spawn(|| OutlivesItsKill));
                        hub::yield_now();
                    })
            });
            assert!(r.is_err(), "run reports the leak");
            println!("LEAKED");
            assert!(corostack::thread_exit::rearm());
            scribble();
        })
        .join()
        .unwrap();
        println!("DONE");
    }) else {
        return;
    };
    let out = run.output();
    assert!(
        out.contains("KILL CAUGHT") && out.contains("LEAKED"),
        "{run:?}"
    );
    assert!(
        !out.contains("SLEPT ON")
            && !out.contains("during cleanup")
            && !out.contains("already borrowed")
            && !out.contains("still suspended"),
        "{run:?}"
    );
    assert!(out.contains("DONE") && run.code == Some(0), "{run:?}");
}
