//! Adversarial attacks, with safe code only, on issue 20's fixes as they
//! meet the hub: the leak after `shutdown_timeout` and the core's
//! thread-exit hook (`corostack::thread_exit`).

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use corostack::{Coroutine, Yielder};
use corostack_hub as hub;

/// Whether `exit` runs the calling thread's thread-local destructors, and
/// so the core's exit hook: glibc does in a dynamically linked program;
/// in a statically linked one (CI's QEMU builds) std keeps its own list,
/// run by a pthread key's destructor, which `exit` does not run. There
/// nothing of the thread dies at `exit` and no task is unwound: `exit(3)`
/// ends the process with status 3, at once.
const EXIT_RUNS_THE_HOOK: bool = !cfg!(target_feature = "crt-static");

/// Where `exit` runs no hook (see [`EXIT_RUNS_THE_HOOK`]): asserts that
/// the child exited with 3, at once, no destructor waited; returns true
/// (the test is over).
fn exited_without_the_hook(code: Option<i32>, out: &str) -> bool {
    if EXIT_RUNS_THE_HOOK {
        return false;
    }
    assert!(
        code == Some(3) && !out.contains("HUNG") && !out.contains("GOODBYE"),
        "{code:?}\n{out}"
    );
    true
}

/// Runs `scenario` in a child process playing `name` (the shared runner's
/// watchdog: 20 s natively); returns its exit code (`None` for a signal or
/// a hang), stdout, and stderr (ending in "HUNG" if the watchdog killed
/// it). The child prints "DONE" when the scenario returns.
fn in_child(name: &str, scenario: fn()) -> Option<(Option<i32>, String, String)> {
    let run = hub_util::in_child(name, Duration::from_secs(20), || {
        scenario();
        println!("DONE");
    })?;
    let mut stderr = run.stderr;
    if run.hung {
        stderr.push_str("\nHUNG: killed by the watchdog");
    }
    Some((run.code, run.stdout, stderr))
}

/// Overwrites the part of this thread's stack where a returned call's
/// frames were (the hub of a `run` that returned lived there).
#[inline(never)]
fn scribble() {
    let mut a = [0xA5u8; 64 * 1024];
    std::hint::black_box(&mut a);
}

// ---------------------------------------------------------------------------
// A leaked task that is not in the middle of an unwind (it caught its kill
// and parked again inside a `timeout`), and a `thread_exit::rearm` after
// the leak (the core's docs ask for one after the first use of the
// thread-locals a body borrows): the core's exit hook then runs before the
// hub's leak guard and force-unwinds the leaked task at thread exit,
// outside any hub. Its frames hold `&Hub` references to the hub that lived
// in the frame of the `run` that returned long ago: `timeout`'s `Cancel`
// guard calls `cancel_timer` on it (and the park's own guards touch it).
// ---------------------------------------------------------------------------

// Was a bug (memory safety), fixed: the hook unwinds the leaked task (`leak_the_rest`
// `mem::forget`s its coroutine, which stays in the core's list) and
// `park_with_timer`'s `Remove` guard calls `Hub::cancel_timer` on the dead
// hub: with the scribble, "RefCell already borrowed" (hub.rs:356) and
// "panic in a destructor during cleanup"; without it, valgrind: "Invalid
// read of size 8 ... Hub::cancel_timer (hub.rs:356) ... park_with_timer::
// Remove::drop (kill.rs:221)", then BTreeMap::remove_entry on the hub's
// freed timers.
#[test]
fn a_leaked_task_is_never_unwound_after_its_hub_is_gone() {
    let name = "a_leaked_task_is_never_unwound_after_its_hub_is_gone";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            let r = panic::catch_unwind(|| {
                hub::Builder::new()
                    .shutdown_timeout(Some(Duration::from_millis(50)))
                    .run(|| {
                        hub::spawn(|| {
                            // Killed at the end of `run`: the kill is
                            // caught, and the task parks again.
                            let k = panic::catch_unwind(AssertUnwindSafe(|| {
                                hub::sleep(Duration::from_secs(3600))
                            }));
                            assert!(k.is_err());
                            println!("KILL CAUGHT");
                            let _ = hub::timeout(Duration::from_secs(3600), || {
                                hub::sleep(Duration::from_secs(3600))
                            });
                            println!("UNWOUND OUT OF THE TIMEOUT");
                        });
                        hub::sleep(Duration::from_millis(10));
                    })
            });
            assert!(r.is_err(), "run reports the leak");
            println!("LEAKED");
            assert!(corostack::thread_exit::rearm());
            // Without the scribble, the hub's stale fields still point at
            // its freed heap blocks (what valgrind reports).
            if std::env::var_os("ATTACK_NO_SCRIBBLE").is_none() {
                scribble();
            }
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    assert!(out.contains("LEAKED"), "{code:?}\n{out}");
    // What the hub does: the hook (first, after the `rearm`) unwinds the
    // leaked task with its hub gone; the hub's guards find no hub and do
    // nothing, nothing catches the unwind, and the leak guard then finds
    // the task finished: the thread ends normally. Never the guards
    // against the dead hub (valgrind confirms no invalid read).
    assert!(
        !out.contains("UNWOUND OUT OF THE TIMEOUT")
            && !out.contains("during cleanup")
            && !out.contains("already borrowed"),
        "{code:?}\n{out}"
    );
    assert!(out.contains("DONE") && code == Some(0), "{code:?}\n{out}");
}

// ---------------------------------------------------------------------------
// No leak at all, and no `rearm`: a plain coroutine run by a hub task
// suspends (on its own yielder) inside `hub::timeout`, and is
// `mem::forget`-ten (safe; "a forgotten coroutine keeps its frames
// forever"). The hub ends normally. At thread exit the core's hook unwinds
// the forgotten coroutine, and `timeout`'s `Cancel` guard, which holds a
// `&'static Hub` into the frame of the `run` that returned, cancels its
// timer on the dead hub.
// ---------------------------------------------------------------------------

// Was a bug (memory safety), fixed: the hub's guards kept a `&'static
// Hub` on coroutine stacks; before the exit hook, a forgotten coroutine's
// frames never ran again, so the lie was harmless; now the hook runs their
// destructors after the hub is gone, and the guards keep the hub's id and
// find it gone.
#[test]
fn a_forgotten_coroutine_inside_a_hub_timeout_is_never_unwound_against_a_dead_hub() {
    let name = "a_forgotten_coroutine_inside_a_hub_timeout_is_never_unwound_against_a_dead_hub";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    let _ = hub::timeout(Duration::from_secs(3600), || y.suspend(()));
                    println!("UNWOUND OUT OF THE TIMEOUT");
                });
                co.resume(());
                std::mem::forget(co);
            });
            println!("HUB ENDED");
            if std::env::var_os("ATTACK_NO_SCRIBBLE").is_none() {
                scribble();
            }
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    assert!(out.contains("HUB ENDED"), "{code:?}\n{out}");
    // Sound outcomes: the frames are left alone (the thread ends, DONE),
    // or an abort with a message of the crate's; never the guard's drop
    // against the dead hub.
    assert!(
        !out.contains("RefCell already borrowed") && !out.contains("during cleanup"),
        "{code:?}\n{out}"
    );
    assert!(
        code == Some(0) || out.contains("corostack"),
        "{code:?}\n{out}"
    );
}

// ---------------------------------------------------------------------------
// Held: more than eight leaks on one thread, and the handles of a leaked
// task used in a later hub. The leaked task counts as finished and killed
// there (join returns at once, kill does nothing, neither touches the
// later hub); the ninth leak aborts at once with the guard's message,
// and the eighth did not.
// ---------------------------------------------------------------------------

/// Its drop waits an hour: a task killed with it on its stack outlasts
/// any shutdown timeout.
struct SlowGoodbye;

impl Drop for SlowGoodbye {
    fn drop(&mut self) {
        hub::sleep(Duration::from_secs(3600));
    }
}

#[test]
fn a_ninth_leak_aborts_at_once_and_a_leaked_tasks_handles_find_it_finished() {
    let name = "a_ninth_leak_aborts_at_once_and_a_leaked_tasks_handles_find_it_finished";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            let kept: Rc<RefCell<Option<hub::JoinHandle<()>>>> = Rc::default();
            for i in 1..=9 {
                let keep = kept.clone();
                let r = panic::catch_unwind(AssertUnwindSafe(|| {
                    hub::Builder::new()
                        .shutdown_timeout(Some(Duration::from_millis(5)))
                        .run(move || {
                            let h = hub::spawn(|| {
                                let _g = SlowGoodbye;
                                hub::sleep(Duration::from_secs(3600));
                            });
                            if keep.borrow().is_none() {
                                *keep.borrow_mut() = Some(h);
                            }
                            hub::sleep(Duration::from_millis(1));
                        })
                }));
                assert!(r.is_err(), "leak {i} is reported by run");
                println!("LEAK {i}");
                if i == 1 {
                    // A later, clean hub: the leaked task's handle.
                    let h = kept.borrow_mut().take().unwrap();
                    let joined = hub::run(move || {
                        let t = std::time::Instant::now();
                        h.kill();
                        let r = h.join();
                        (matches!(r, Err(hub::JoinError::Killed)), t.elapsed())
                    });
                    assert!(joined.0, "a leaked task joins as killed");
                    assert!(joined.1 < Duration::from_secs(1), "at once");
                    println!("JOINED");
                }
            }
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    assert!(
        out.contains("JOINED") && out.contains("LEAK 8"),
        "{code:?}\n{out}"
    );
    assert!(!out.contains("LEAK 9"), "{code:?}\n{out}");
    assert!(
        out.contains("leaked coroutines too many times") && code.is_none(),
        "{code:?}\n{out}"
    );
}

// ---------------------------------------------------------------------------
// `process::exit` from a hub coroutine while others are suspended in the
// hub: the exit hook runs on the exiting coroutine's stack and unwinds the
// suspended ones outside the loop; `exit`'s status must come out.
// ---------------------------------------------------------------------------

/// Prints when dropped.
struct Says(&'static str);

impl Drop for Says {
    fn drop(&mut self) {
        println!("{}", self.0);
    }
}

#[test]
fn process_exit_from_a_hub_coroutine_keeps_its_status() {
    let name = "process_exit_from_a_hub_coroutine_keeps_its_status";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                let _sleeper = hub::spawn(|| {
                    let _s = Says("SLEEPER UNWOUND");
                    let _ = hub::timeout(Duration::from_secs(3600), || {
                        hub::sleep(Duration::from_secs(3600))
                    });
                });
                let _joiner = hub::spawn(|| {
                    let _s = Says("JOINER UNWOUND");
                    let (tx, rx) = hub::sync::unbounded::<u32>();
                    let _keep = tx;
                    let _ = rx.recv();
                });
                hub::sleep(Duration::from_millis(5));
                println!("EXITING");
                std::process::exit(3);
            })
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
}

/// Its drop sleeps 200 ms, and says so before and after.
struct ShortGoodbye;

impl Drop for ShortGoodbye {
    fn drop(&mut self) {
        println!("GOODBYE SLEEPS");
        hub::sleep(Duration::from_millis(200));
        println!("GOODBYE WOKE");
    }
}

// Was a bug: the same, with a task whose destructor parks for an hour.
// The exit hook unwinds that task, outside the loop, from inside `exit`;
// the destructor's park suspended the *running* task (the one in `exit`,
// which the hub took for the parker) back to the hub's loop, and the loop
// ran on, during `exit`, for the hour: `exit(3)` hung silently. Now the
// hub is detached from the thread before the hook runs: the wait finds no
// hub and panics, in a destructor during an unwind, so the process aborts
// with the hub's message (nothing could ever wake that wait; skipping the
// destructor's rest is not the hub's to decide).
#[test]
fn process_exit_from_a_hub_with_a_parking_destructor_aborts_with_a_message() {
    let name = "process_exit_from_a_hub_with_a_parking_destructor_aborts_with_a_message";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                let _sleeper = hub::spawn(|| {
                    let _g = SlowGoodbye;
                    hub::sleep(Duration::from_secs(3600));
                });
                hub::sleep(Duration::from_millis(5));
                println!("EXITING");
                std::process::exit(3);
            })
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    if exited_without_the_hook(code, &out) {
        return;
    }
    // An abort (SIGABRT), at once, with the hub's message; never a hang.
    assert!(code.is_none() && !out.contains("HUNG"), "{code:?}\n{out}");
    assert!(
        out.contains("`hub::sleep` was called while the thread exits"),
        "{code:?}\n{out}"
    );
}

// Was a bug: the same, and a third task kills the sleeper while the
// hook's unwind of it waits in its destructor: the hub's loop, running
// during `exit`, resumed the coroutine that the hook was running, and the
// hook aborted with a message that blamed the coroutine's "own
// destructors". Now no loop runs during `exit`: the destructor's wait
// aborts with the hub's message, and the killer never runs.
#[test]
fn process_exit_from_a_hub_while_another_task_would_kill_the_unwinding_one() {
    let name = "process_exit_from_a_hub_while_another_task_would_kill_the_unwinding_one";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                // The killer starts first, so that the hook (which takes
                // the most recently started first) unwinds the sleeper
                // while the killer is still suspended.
                let victim: Rc<RefCell<Option<hub::JoinHandle<()>>>> = Rc::default();
                let v = victim.clone();
                let _killer = hub::spawn(move || {
                    hub::sleep(Duration::from_millis(50));
                    println!("KILLING");
                    if let Some(h) = v.borrow_mut().take() {
                        h.kill();
                    }
                    println!("KILLED");
                });
                hub::yield_now();
                *victim.borrow_mut() = Some(hub::spawn(|| {
                    let _g = ShortGoodbye;
                    hub::sleep(Duration::from_secs(3600));
                }));
                hub::sleep(Duration::from_millis(5));
                println!("EXITING");
                std::process::exit(3);
            })
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    if exited_without_the_hook(code, &out) {
        return;
    }
    // An abort (SIGABRT), at once, with the hub's message; never a hang.
    assert!(code.is_none() && !out.contains("HUNG"), "{code:?}\n{out}");
    assert!(
        out.contains("`hub::sleep` was called while the thread exits"),
        "{code:?}\n{out}"
    );
    assert!(
        !out.contains("own destructors") && !out.contains("KILLING"),
        "{code:?}\n{out}"
    );
}

// ---------------------------------------------------------------------------
// A forgotten coroutine suspended (on its own yielder) inside the future
// that `hub::block_on` polls, whose poll catches the exit hook's unwind
// and returns `Pending`: `block_on` then goes on, after its hub is gone,
// and parks. It must not park on the dead hub (with the scribble, its
// stale `current` pointer is garbage); it finds no hub and panics, and
// the panic escapes the hook's unwind, which aborts with the core's
// message.
// ---------------------------------------------------------------------------

#[test]
fn a_forgotten_coroutine_whose_block_on_goes_on_after_the_hook_finds_no_hub() {
    let name = "a_forgotten_coroutine_whose_block_on_goes_on_after_the_hook_finds_no_hub";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                    let mut first = true;
                    hub::block_on(std::future::poll_fn(|_| {
                        if std::mem::take(&mut first) {
                            let r = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
                            println!("CAUGHT THE HOOK: {}", r.is_err());
                        }
                        std::task::Poll::<()>::Pending
                    }));
                    println!("BLOCK_ON RETURNED");
                });
                co.resume(());
                std::mem::forget(co);
            });
            println!("HUB ENDED");
            if std::env::var_os("ATTACK_NO_SCRIBBLE").is_none() {
                scribble();
            }
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    assert!(out.contains("CAUGHT THE HOOK: true"), "{code:?}\n{out}");
    assert!(!out.contains("BLOCK_ON RETURNED"), "{code:?}\n{out}");
    assert!(
        out.contains("`hub::block_on` was called outside a hub")
            && out.contains("corostack: a panic escaped the unwind"),
        "{code:?}\n{out}"
    );
}

// The same as `process_exit_from_a_hub_with_a_parking_destructor_
// aborts_with_a_message`, with a `thread_exit::rearm` made inside the hub
// after its main coroutine started: the core's hook then runs before the
// hub's detach (a std thread-local's destructor, registered once), and the
// hub is still installed when the hook unwinds the sleeper. Its
// destructor's park asks the core whether the thread is exiting and
// panics (an abort there) instead of suspending the exiting coroutine into
// the loop again, where `exit(3)` hung.
#[test]
fn process_exit_from_a_hub_after_a_rearm_inside_it_aborts_with_a_message() {
    let name = "process_exit_from_a_hub_after_a_rearm_inside_it_aborts_with_a_message";
    let Some((code, stdout, stderr)) = in_child(name, || {
        std::thread::spawn(|| {
            hub::run(|| {
                let _sleeper = hub::spawn(|| {
                    let _g = SlowGoodbye;
                    hub::sleep(Duration::from_secs(3600));
                });
                hub::sleep(Duration::from_millis(5));
                assert!(corostack::thread_exit::rearm());
                println!("EXITING");
                std::process::exit(3);
            })
        })
        .join()
        .unwrap();
    }) else {
        return;
    };
    let out = format!("{stdout}\n{stderr}");
    if exited_without_the_hook(code, &out) {
        return;
    }
    assert!(code.is_none() && !out.contains("HUNG"), "{code:?}\n{out}");
    assert!(
        out.contains("was called while the thread exits"),
        "{code:?}\n{out}"
    );
}
