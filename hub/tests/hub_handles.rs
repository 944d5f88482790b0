//! Issue 20, the hub's handles: each acts only on the hub that made it
//! (a `CallLater` from another hub panics), a `RemoteJoinHandle` joined on
//! the thread of the hub that runs its work is refused, the deadlock
//! detection and `Remote`s, a kill from outside the hub's greenlet, and
//! the end of a hub whose coroutines cannot finish. Each scenario that
//! hung or crashed before runs in a child process with a watchdog.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use corostack_hub as hub;
use hub_util::{in_child, passes_in_child};
use util::message;

/// A `CallLater` made by one hub, used in another: refused with a panic
/// naming the mistake, rather than acting on the other hub's timers.
#[test]
fn a_call_later_handle_used_in_another_hub_panics() {
    let stale = hub::run(|| hub::call_later(Duration::from_secs(60), || {}));
    hub::run(move || {
        // A timer of this hub, set like the first hub's.
        let mine = hub::call_later(Duration::from_secs(60), || {});
        for (what, r) in [
            (
                "cancel",
                panic::catch_unwind(AssertUnwindSafe(|| {
                    stale.cancel();
                })),
            ),
            (
                "is_pending",
                panic::catch_unwind(AssertUnwindSafe(|| {
                    let _ = stale.is_pending();
                })),
            ),
        ] {
            let p = r.expect_err(what);
            let m = message(&*p);
            assert!(m.contains("another hub"), "{what}: {m}");
        }
        assert!(mine.is_pending());
        assert!(mine.cancel());
    });
}

/// `RemoteJoinHandle::join` blocks the thread: on the thread of the hub
/// that runs the work (from one of its coroutines, or from a destructor
/// its loop runs) it could never return. Refused with a panic naming the
/// way out, instead of a hang.
#[test]
fn a_remote_join_on_the_hubs_own_thread_panics() {
    let run = in_child(
        "a_remote_join_on_the_hubs_own_thread_panics",
        Duration::from_secs(20),
        || {
            hub::run(|| {
                let work = hub::remote().spawn(|| 42);
                let p = panic::catch_unwind(AssertUnwindSafe(|| work.join()))
                    .expect_err("a join of the hub's own work");
                let m = message(&*p);
                assert!(m.contains("block_on"), "{m}");
            });
            // From a destructor that the loop runs at the end.
            struct JoinOnDrop(Option<hub::RemoteJoinHandle<i32>>);
            impl Drop for JoinOnDrop {
                fn drop(&mut self) {
                    let _ = self.0.take().unwrap().join();
                }
            }
            let p = panic::catch_unwind(|| {
                hub::run(|| {
                    let j = JoinOnDrop(Some(hub::remote().spawn(|| 1)));
                    hub::call_later(Duration::from_secs(60), move || drop(j));
                })
            })
            .expect_err("a join in a destructor of the loop");
            let m = message(&*p);
            assert!(m.contains("block_on"), "{m}");
            println!("ok");
        },
    );
    if let Some(run) = run {
        assert!(
            !run.hung && run.code == Some(0) && run.stdout.contains("ok"),
            "{run:?}"
        );
    }
}

/// A hub runs inside a greenlet; one of its coroutines switches to the
/// thread's main greenlet, which kills that coroutine with its
/// `KillHandle`. The main greenlet is not the coroutine (nor any of the
/// hub's): the kill is only asked for there, and lands at the coroutine's
/// next park once it is switched back to. (It was taken for a self-kill:
/// the hub's private payload unwound the main greenlet, and the coroutine
/// later ran on and returned `Ok`.)
#[test]
fn a_kill_from_the_main_greenlet_of_a_hub_in_a_greenlet_lands() {
    passes_in_child(
        "a_kill_from_the_main_greenlet_of_a_hub_in_a_greenlet_lands",
        || {
            use corostack::greenlet::{self, Greenlet};
            use std::cell::RefCell;
            use std::rc::Rc;

            let main = greenlet::current::<u32>();
            let victim: Rc<RefCell<Option<hub::KillHandle>>> = Rc::default();
            let ran_on = Rc::new(std::cell::Cell::new(false));
            let (v, r) = (victim.clone(), ran_on.clone());
            let g = Greenlet::new(move |_: u32| {
                let outcome = hub::run(move || {
                    let h = hub::spawn(move || {
                        main.switch(1);
                        hub::sleep(Duration::from_millis(1));
                        r.set(true);
                    });
                    *v.borrow_mut() = Some(h.kill_handle());
                    h.join()
                });
                u32::from(matches!(outcome, Err(hub::JoinError::Killed)))
            });
            // The hub's coroutine switched here.
            assert_eq!(g.switch(0), 1);
            let k = victim.borrow_mut().take().unwrap();
            let raised = panic::catch_unwind(AssertUnwindSafe(|| k.kill()));
            assert!(raised.is_ok(), "the kill unwound the main greenlet");
            assert!(!k.done());
            // Back into the hub: the coroutine dies at its park.
            assert_eq!(g.switch(0), 1, "the coroutine was not killed");
            assert!(!ran_on.get());
            assert!(k.done());
        },
    );
}

/// Every coroutine waits, and only a `Remote` is left that could wake the
/// hub: the hub cannot see where a `Remote` is (it moves between threads
/// unseen), so it waits for it, but not silently: after a grace period it
/// says on stderr that only `Remote`s can wake it and that one kept by the
/// hub's own coroutines is a deadlock. Here the main coroutine keeps the
/// only `Remote` and waits for an event nobody sets.
#[test]
fn a_hub_that_only_remotes_could_wake_says_so() {
    let run = in_child(
        "a_hub_that_only_remotes_could_wake_says_so",
        Duration::from_secs(3),
        || {
            hub::run(|| {
                let _mine = hub::remote();
                hub::sync::Event::new().wait();
            });
        },
    );
    if let Some(run) = run {
        assert!(run.hung, "it waits for the Remote: {run:?}");
        assert!(
            run.stderr.contains("only 1 `Remote`"),
            "the wait was silent: {run:?}"
        );
    }
}

/// A `Remote` held by another thread does wake a hub whose coroutines all
/// wait, even after the grace period after which the hub warns: the hub
/// never takes a `Remote` for a deadlock.
#[test]
fn a_remote_on_another_thread_wakes_a_waiting_hub() {
    thread_local! {
        static TX: std::cell::RefCell<Option<hub::sync::channel::Sender<u32>>> =
            const { std::cell::RefCell::new(None) };
    }
    passes_in_child("a_remote_on_another_thread_wakes_a_waiting_hub", || {
        let v = hub::run(|| {
            let remote = hub::remote();
            let (tx, rx) = hub::sync::channel::unbounded::<u32>();
            TX.with(|t| *t.borrow_mut() = Some(tx));
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                // Runs in the hub, on its thread: the channel is there.
                remote
                    .spawn(|| TX.with(|t| t.borrow().as_ref().unwrap().send(5).is_ok()))
                    .join()
                    .unwrap()
            });
            // Every coroutine waits; only the Remote on the thread can
            // bring work.
            let got = rx.recv().unwrap();
            TX.with(|t| t.borrow_mut().take());
            (got, t)
        });
        assert_eq!(v.0, 5);
        assert!(v.1.join().unwrap());
    });
}

thread_local! {
    /// A thread-local with a destructor (its box is freed at thread exit).
    static DATA: Box<[u64; 16]> = Box::new([7; 16]);
}

/// Section 1, the hub's share: a coroutine that `run` leaks after the
/// shutdown timeout lent a borrow of a thread-local to a scoped thread and
/// suspended inside the scope. When the hub's thread exits, its
/// thread-locals are freed while that scoped thread still reads them
/// (valgrind: invalid reads in a freed block). The thread that leaked
/// coroutines must not get there: it aborts at its exit, before its
/// thread-locals are destroyed, naming the leak.
#[test]
fn a_thread_that_leaked_coroutines_aborts_at_exit_before_its_thread_locals_die() {
    let run = in_child(
        "a_thread_that_leaked_coroutines_aborts_at_exit_before_its_thread_locals_die",
        Duration::from_secs(30),
        || {
            let owner = std::thread::spawn(|| {
                DATA.with(|d| assert_eq!(d[0], 7)); // in use before the hub
                let r = panic::catch_unwind(|| {
                    hub::Builder::new()
                        .shutdown_timeout(Some(Duration::from_millis(20)))
                        .run(|| {
                            let victim = hub::spawn(|| {
                                DATA.with(|d| {
                                    std::thread::scope(|s| {
                                        s.spawn(|| {
                                            let mut sum = 0;
                                            for _ in 0..60 {
                                                sum += std::hint::black_box(d[3]);
                                                std::thread::sleep(Duration::from_millis(10));
                                            }
                                            std::hint::black_box(sum);
                                        });
                                        /// Its destructor outlasts the shutdown
                                        /// timeout: the coroutine is leaked.
                                        struct Stuck;
                                        impl Drop for Stuck {
                                            fn drop(&mut self) {
                                                hub::sleep(Duration::from_secs(3600));
                                            }
                                        }
                                        let _stuck = Stuck;
                                        hub::sleep(Duration::from_secs(3600));
                                    })
                                })
                            });
                            hub::sleep(Duration::from_millis(5));
                            drop(victim);
                        })
                });
                let m = message(&*r.expect_err("run reports the leak"));
                println!("RUN PANICKED: {m}");
            });
            let _ = owner.join();
            // The scoped thread reads on, after its owner's thread-locals died.
            std::thread::sleep(Duration::from_millis(700));
            println!("SURVIVED");
        },
    );
    if let Some(run) = run {
        let out = run.output();
        assert!(!run.hung, "{out}");
        assert!(out.contains("RUN PANICKED"), "{out}");
        assert!(
            !out.contains("SURVIVED"),
            "no abort at the thread's exit: {out}"
        );
        assert_eq!(run.code, None, "an abort: {out}");
        assert!(
            out.contains("1 coroutine(s)") && out.contains("thread-local"),
            "the abort names the leak: {out}"
        );
    }
}

// ---------------------------------------------------------------------
// Attacks on the changes above, as an adversarial user would try them.
// ---------------------------------------------------------------------

/// Prints its name when a thread-local holding it is destroyed.
struct Announce(&'static str);
impl Drop for Announce {
    fn drop(&mut self) {
        println!("DROPPED {}", self.0);
    }
}

thread_local! {
    static EARLY: Announce = const { Announce("EARLY") };
    static BETWEEN: Announce = const { Announce("BETWEEN") };
}

/// A `run` that leaks one coroutine whose unwind sleeps for an hour.
fn leak_one() {
    let r = panic::catch_unwind(|| {
        hub::Builder::new()
            .shutdown_timeout(Some(Duration::from_millis(10)))
            .run(|| {
                struct Stuck;
                impl Drop for Stuck {
                    fn drop(&mut self) {
                        hub::sleep(Duration::from_secs(3600));
                    }
                }
                let v = hub::spawn(|| {
                    let _s = Stuck;
                    hub::sleep(Duration::from_secs(3600));
                });
                hub::sleep(Duration::from_millis(2));
                drop(v);
            })
    });
    assert!(r.is_err());
}

/// A thread leaks twice, with a thread-local first used between the two
/// leaks (which the second leak's frames could borrow): the abort comes
/// before the destructor of either thread-local.
#[test]
fn attack_two_leaks_with_a_thread_local_first_used_between_them() {
    let run = in_child(
        "attack_two_leaks_with_a_thread_local_first_used_between_them",
        Duration::from_secs(30),
        || {
            std::thread::spawn(|| {
                EARLY.with(|_| ());
                leak_one();
                BETWEEN.with(|_| ());
                leak_one();
            })
            .join()
            .ok();
            println!("SURVIVED");
        },
    );
    if let Some(run) = run {
        let out = run.output();
        assert!(!run.hung && run.code.is_none(), "{out}");
        assert!(out.contains("aborting"), "{out}");
        assert!(!out.contains("DROPPED"), "a thread-local died first: {out}");
    }
}

/// Handles kept past their hub: a `JoinHandle` joined and a `KillHandle`
/// used in a later hub find their coroutine finished and touch nothing of
/// the later hub; a `CallLater` kept in a thread-local until the thread
/// exits is dropped without a hub (dropping never acts).
#[test]
fn attack_handles_kept_past_their_hub() {
    passes_in_child("attack_handles_kept_past_their_hub", || {
        thread_local! {
            static KEPT: std::cell::RefCell<Option<hub::CallLater>> =
                const { std::cell::RefCell::new(None) };
        }
        let (j, k) = hub::run(|| {
            let j = hub::spawn(|| 3);
            let k = hub::spawn(|| hub::sleep(Duration::from_secs(3600))).kill_handle();
            KEPT.with(|c| *c.borrow_mut() = Some(hub::call_later(Duration::from_secs(60), || {})));
            hub::sleep(Duration::from_millis(2)); // j returns, k sleeps
            (j, k)
        });
        assert!(k.done(), "killed at the end of its hub");
        hub::run(move || {
            let mine = hub::spawn(|| 4);
            k.kill();
            assert_eq!(j.join().unwrap(), 3);
            assert_eq!(mine.join().unwrap(), 4);
        });
        std::thread::spawn(|| {
            KEPT.with(|c| {
                *c.borrow_mut() = Some(hub::run(|| hub::call_later(Duration::ZERO, || {})))
            });
        })
        .join()
        .unwrap();
    });
}

/// A `RemoteJoinHandle::join` of the hub's own work in a destructor that a
/// kill runs: the refusal's panic comes during an unwind, which aborts
/// the process as any panic there does; never a hang.
#[test]
fn attack_remote_join_in_a_destructor_run_by_a_kill_aborts_not_hangs() {
    let run = in_child(
        "attack_remote_join_in_a_destructor_run_by_a_kill_aborts_not_hangs",
        Duration::from_secs(20),
        || {
            hub::run(|| {
                let v = hub::spawn(|| {
                    struct J(Option<hub::RemoteJoinHandle<i32>>);
                    impl Drop for J {
                        fn drop(&mut self) {
                            let _ = self.0.take().unwrap().join();
                        }
                    }
                    let _j = J(Some(hub::remote().spawn(|| 1)));
                    hub::sleep(Duration::from_secs(3600));
                });
                hub::sleep(Duration::from_millis(2));
                v.kill();
            });
        },
    );
    if let Some(run) = run {
        let out = run.output();
        assert!(!run.hung, "{out}");
        assert!(out.contains("block_on"), "{out}");
    }
}

/// A hub inside a greenlet: from the main greenlet, a kill of a coroutine
/// other than the one that switched away only asks too (it used to try to
/// wait, and park refused that from the wrong greenlet).
#[test]
fn attack_kill_of_another_coroutine_from_the_main_greenlet() {
    passes_in_child(
        "attack_kill_of_another_coroutine_from_the_main_greenlet",
        || {
            use corostack::greenlet::{self, Greenlet};
            use std::cell::RefCell;
            use std::rc::Rc;

            let main = greenlet::current::<u32>();
            let other: Rc<RefCell<Option<hub::KillHandle>>> = Rc::default();
            let o = other.clone();
            let g = Greenlet::new(move |_: u32| {
                hub::run(move || {
                    let sleeper = hub::spawn(|| hub::sleep(Duration::from_secs(3600)));
                    *o.borrow_mut() = Some(sleeper.kill_handle());
                    hub::spawn(move || {
                        main.switch(1);
                    })
                    .join()
                    .unwrap();
                    u32::from(sleeper.join().is_err_and(|e| e.is_killed()))
                })
            });
            assert_eq!(g.switch(0), 1);
            let k = other.borrow_mut().take().unwrap();
            k.kill(); // asks, from outside the hub's greenlet
            assert_eq!(g.switch(0), 1, "the sleeper was killed");
        },
    );
}

/// A hub run inside a hub's coroutine is refused; a hub run inside a plain
/// coroutine on a thread without a hub works, and its `CallLater` is
/// refused in the next hub of the thread.
#[test]
fn attack_hubs_nested_in_coroutines() {
    hub::run(|| {
        let p = panic::catch_unwind(|| hub::run(|| ())).unwrap_err();
        assert!(message(&*p).contains("inside a hub"));
    });
    let mut co = corostack::Coroutine::<(), (), hub::CallLater>::new(|_, ()| {
        hub::run(|| hub::call_later(Duration::from_secs(60), || {}))
    });
    let corostack::CoroutineResult::Return(c) = co.resume(()) else {
        panic!("it returns")
    };
    hub::run(move || {
        let p = panic::catch_unwind(AssertUnwindSafe(|| c.cancel())).unwrap_err();
        assert!(message(&*p).contains("another hub"));
    });
}
