//! The fallible ways to start coroutines, for servers that must not panic
//! under memory pressure: `hub::try_spawn`, `Builder::try_run` and
//! `Builder::try_run_on_threads` return
//! `OutOfMemory` when no stack can be mapped (under a lowered
//! `RLIMIT_AS`, in a child process), drop the closure, and leave the hub
//! and the thread working; `spawn` and `run` panic saying so. The work
//! that the hub's loop starts itself never panics the loop: a
//! `Remote::spawn` reports `JoinError::NotStarted`, a `call_later` is
//! tried again with a back-off, then given up (`CallLater::take_error`).

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::io::ErrorKind;
use std::panic::{self, AssertUnwindSafe};

use corostack_hub as hub;
use hub_util::{cannot_limit, limit_address_space, passes_in_child};
use util::{DropCounter, message};

#[test]
fn try_spawn_and_try_run_return_an_error_when_no_stack_can_be_mapped() {
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "try_spawn_and_try_run_return_an_error_when_no_stack_can_be_mapped",
        || {
            let dropped = DropCounter::default();
            let d = dropped.clone();
            hub::run(move || {
                limit_address_space(Some(256 * 1024));
                let guard = d.guard();
                let err = hub::try_spawn(move || drop(guard))
                    .expect_err("a 1 MiB stack under a 256 KiB margin");
                assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
                assert_eq!(d.get(), 1, "the closure is dropped");
                let p = panic::catch_unwind(|| hub::spawn(|| ())).unwrap_err();
                assert!(
                    message(&*p).contains("cannot allocate a coroutine's stack"),
                    "{}",
                    message(&*p)
                );
                // Once memory is back, the same hub spawns again.
                limit_address_space(None);
                assert_eq!(hub::try_spawn(|| 2).unwrap().join().unwrap(), 2);
            });
            assert_eq!(dropped.get(), 1);
            // No pooled stack to reuse: the main coroutine needs a mapping.
            let cap = corostack::stack::set_pool_capacity(0);
            limit_address_space(Some(256 * 1024));
            let guard = dropped.guard();
            let err = hub::Builder::new()
                .try_run(move || drop(guard))
                .expect_err("a 1 MiB stack under a 256 KiB margin");
            assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
            assert!(err.to_string().contains("main coroutine"), "{err}");
            assert_eq!(dropped.get(), 2, "the closure is dropped");
            let p = panic::catch_unwind(AssertUnwindSafe(|| hub::run(|| ()))).unwrap_err();
            assert!(message(&*p).contains("main coroutine"), "{}", message(&*p));
            // Hubs on threads: a thread that cannot start (its stack is a
            // mapping too), or a hub that cannot.
            let err = hub::Builder::new()
                .threads(2)
                .try_run_on_threads(|i| i)
                .expect_err("no room for a thread's stack");
            assert!(err.to_string().contains("thread"), "{err}");
            let err = hub::Builder::new()
                .try_run_on_threads(|i| i)
                .expect_err("no room for the main coroutine's stack");
            assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
            let p = panic::catch_unwind(|| hub::Builder::new().threads(2).run_on_threads(|i| i));
            assert!(message(&*p.unwrap_err()).contains("cannot start a hub thread"));
            // The thread runs hubs again once memory is back.
            limit_address_space(None);
            corostack::stack::set_pool_capacity(cap);
            assert_eq!(hub::Builder::new().try_run(|| 3).unwrap(), 3);
            let ids = hub::Builder::new()
                .threads(3)
                .try_run_on_threads(|i| i * 10);
            assert_eq!(ids.unwrap(), [0, 10, 20]);
            assert!(!hub::is_in_hub());
        },
    );
}

#[test]
fn try_spawn_from_a_destructor_that_a_kill_runs_and_one_that_the_end_of_run_runs() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Spawns a coroutine when dropped, and keeps its handle.
    struct SpawnsOnDrop(Rc<RefCell<Option<hub::JoinHandle<&'static str>>>>);
    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            *self.0.borrow_mut() = Some(hub::try_spawn(|| "from a destructor").unwrap());
        }
    }

    let late = Rc::new(RefCell::new(None));
    let l = late.clone();
    hub::run(move || {
        // A kill's unwind runs the destructor in the victim's own resume.
        let spawned = Rc::new(RefCell::new(None));
        let s = spawned.clone();
        let victim = hub::spawn(move || {
            let _guard = SpawnsOnDrop(s);
            hub::sleep(Duration::from_secs(60));
        });
        hub::yield_now();
        victim.kill();
        assert!(victim.join().unwrap_err().is_killed());
        let h = spawned.borrow_mut().take().expect("the destructor ran");
        assert_eq!(h.join().unwrap(), "from a destructor");
        // The end of `run` kills this one; what its destructor spawns then
        // is killed at birth, and its handle says so.
        hub::spawn(move || {
            let _guard = SpawnsOnDrop(l);
            hub::sleep(Duration::from_secs(60));
        });
        hub::yield_now();
    });
    let h = late
        .borrow_mut()
        .take()
        .expect("the destructor ran at the end");
    assert!(h.done());
    // Joined in a later hub (a join needs one): the result is there at once.
    assert!(hub::run(move || h.join()).unwrap_err().is_killed());
}

/// Spawns coroutines that wait for `release` until no stack is left to
/// take, under a lowered limit: the thread's pool and the core's
/// reservation are then dry, so the next stack needs a new mapping, which
/// the limit refuses. Returns their handles (they return their index).
#[cfg(target_os = "linux")]
fn hold_every_stack(release: &hub::sync::Event) -> Vec<hub::JoinHandle<usize>> {
    let mut held = Vec::new();
    for i in 0..10_000 {
        let r = release.clone();
        match hub::try_spawn(move || {
            r.wait();
            i
        }) {
            Ok(h) => held.push(h),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
                return held;
            }
        }
    }
    panic!("the address-space limit never stopped a stack");
}

/// A coroutine spawned before the limit, waiting for `release`: a task
/// whose stack is mapped across the failure and that must still finish.
#[cfg(target_os = "linux")]
fn early_task(release: &hub::sync::Event) -> hub::JoinHandle<usize> {
    let r = release.clone();
    let h = hub::spawn(move || {
        r.wait();
        100
    });
    hub::yield_now();
    h
}

// Linux only, as the other scenarios of this file: the limit is set from
// `/proc/self/status`, and the loop's mapping must really fail (RLIMIT_AS
// is the process's, hence the child process).
#[cfg(target_os = "linux")]
#[test]
fn remote_spawn_returns_not_started_when_no_stack_can_be_mapped_and_the_hub_goes_on() {
    use std::error::Error as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    /// Counts its drop; `Send`, for a `Remote`'s closure.
    struct CountOnDrop(Arc<AtomicUsize>);
    impl Drop for CountOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    if cannot_limit() {
        return;
    }
    passes_in_child(
        "remote_spawn_returns_not_started_when_no_stack_can_be_mapped_and_the_hub_goes_on",
        || {
            let dropped = Arc::new(AtomicUsize::new(0));
            let (remote_tx, remote_rx) = mpsc::channel::<hub::Remote>();
            let (ready_tx, ready_rx) = mpsc::channel::<()>();
            // The asking thread starts, its allocator warmed up, before
            // the limit.
            let d = dropped.clone();
            let asker = std::thread::spawn(move || {
                drop(std::hint::black_box(vec![0u8; 4096]));
                ready_tx.send(()).unwrap();
                let remote = remote_rx.recv().unwrap();
                let guard = CountOnDrop(d);
                remote
                    .spawn(move || {
                        let _g = guard;
                        7
                    })
                    .join()
            });
            ready_rx.recv().unwrap();
            let d = dropped.clone();
            let (asked, awaited, others, again) = hub::run(move || {
                let release = hub::sync::Event::new();
                let early = early_task(&release);
                limit_address_space(Some(256 * 1024));
                let mut others = hold_every_stack(&release);
                others.insert(0, early);
                // Joined on another thread.
                remote_tx.send(hub::remote()).unwrap();
                while !asker.is_finished() {
                    hub::sleep(Duration::from_millis(1));
                }
                let asked = asker.join().unwrap();
                // Awaited by a coroutine of the hub itself.
                let guard = CountOnDrop(d);
                let awaited = hub::block_on(hub::remote().spawn(move || {
                    let _g = guard;
                    8
                }));
                release.set();
                let others = hub::join_all(others);
                // Once memory is back, the same hub runs remote work again.
                limit_address_space(None);
                let again = hub::block_on(hub::remote().spawn(|| 9));
                (asked, awaited, others, again)
            });
            for r in [asked, awaited] {
                let err = r.expect_err("no stack could be mapped for it");
                assert!(err.is_not_started(), "{err:?}");
                assert!(!err.is_killed() && !err.is_panic(), "{err:?}");
                assert!(err.to_string().contains("never started"), "{err}");
                let source = err.source().expect("the mapping's error");
                let io = source.downcast_ref::<std::io::Error>().unwrap();
                assert_eq!(io.kind(), ErrorKind::OutOfMemory, "{io}");
                let hub::JoinError::NotStarted(io) = err else {
                    unreachable!("is_not_started")
                };
                assert!(
                    io.to_string().contains("cannot map a coroutine stack"),
                    "{io}"
                );
            }
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                2,
                "both closures were dropped without running"
            );
            // Every other task finished normally, with its value.
            assert_eq!(others[0].as_ref().ok(), Some(&100));
            for (i, r) in others[1..].iter().enumerate() {
                assert_eq!(r.as_ref().ok(), Some(&i));
            }
            assert_eq!(again.unwrap(), 9);
        },
    );
}

// Linux only: see above.
#[cfg(target_os = "linux")]
#[test]
fn call_later_without_a_stack_is_tried_again_and_runs_once_a_stack_comes_back() {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    if cannot_limit() {
        return;
    }
    passes_in_child(
        "call_later_without_a_stack_is_tried_again_and_runs_once_a_stack_comes_back",
        || {
            let (ran_at, others, error) = hub::run(|| {
                let release = hub::sync::Event::new();
                let early = early_task(&release);
                limit_address_space(Some(256 * 1024));
                let mut others = hold_every_stack(&release);
                others.insert(0, early);
                let ran = Rc::new(Cell::new(None));
                let r = ran.clone();
                let call = hub::call_later(Duration::ZERO, move || r.set(Some(Instant::now())));
                // Its time came and went: tried, no stack; still pending.
                hub::sleep(Duration::from_millis(20));
                assert_eq!(ran.get(), None, "it ran without a stack?");
                assert!(call.is_pending(), "the call was not kept for a try again");
                // The other tasks end, and their stacks go back to the pool.
                let released = Instant::now();
                release.set();
                let others = hub::join_all(others);
                while ran.get().is_none() && released.elapsed() < Duration::from_secs(10) {
                    hub::sleep(Duration::from_millis(1));
                }
                assert!(!call.is_pending());
                let ran_at = ran.get().map(|t| t.duration_since(released));
                (ran_at, others, call.take_error())
            });
            let ran_at = ran_at.expect("the call never ran once stacks were back");
            // The back-off's waits are 1 ms doubling up to 512 ms: the next
            // try comes within about one second.
            assert!(ran_at < Duration::from_secs(2), "{ran_at:?}");
            assert!(error.is_none(), "{error:?}");
            assert_eq!(others[0].as_ref().ok(), Some(&100));
            assert!(others.iter().all(Result::is_ok));
        },
    );
}

/// The calling thread's CPU time.
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain system call writing to a valid struct.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// Linux only: see above.
#[cfg(target_os = "linux")]
#[test]
fn call_later_that_never_gets_a_stack_is_given_up_with_its_error_and_the_hub_goes_on() {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    const NAME: &str =
        "call_later_that_never_gets_a_stack_is_given_up_with_its_error_and_the_hub_goes_on";
    const GIVEN_UP: &str = "a `call_later` function was dropped without running";
    if cannot_limit() {
        return;
    }
    let run = hub_util::in_child(NAME, std::time::Duration::from_secs(60), || {
        let dropped = DropCounter::default();
        let d = dropped.clone();
        let others = hub::run(move || {
            let release = hub::sync::Event::new();
            let early = early_task(&release);
            limit_address_space(Some(256 * 1024));
            let mut others = hold_every_stack(&release);
            others.insert(0, early);
            let ran = Rc::new(Cell::new(false));
            let (r, guard) = (ran.clone(), d.guard());
            let call = hub::call_later(Duration::ZERO, move || {
                let _g = guard;
                r.set(true);
            });
            // A detached one: its error can only go to stderr.
            let (r, guard) = (ran.clone(), d.guard());
            drop(hub::call_later(Duration::ZERO, move || {
                let _g = guard;
                r.set(true);
            }));
            let (start, cpu) = (Instant::now(), thread_cpu_time());
            // The detached one is given up about when the other is (its
            // tries come a little after the other's).
            while call.is_pending() || d.get() < 2 {
                assert!(start.elapsed() < Duration::from_secs(30), "never given up");
                hub::sleep(Duration::from_millis(5));
            }
            let (wall, cpu) = (start.elapsed(), thread_cpu_time() - cpu);
            assert!(!ran.get(), "it ran without a stack?");
            let err = call.take_error().expect("given up: the error is there");
            assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
            assert!(
                err.to_string().contains("cannot map a coroutine stack"),
                "{err}"
            );
            assert!(call.take_error().is_none(), "taken once");
            assert!(!call.cancel(), "nothing left to cancel");
            // Tried again for the whole back-off (1 + 2 + ... + 512 ms),
            // on timers, not in a busy loop.
            assert!(wall >= Duration::from_millis(1000), "{wall:?}");
            assert!(cpu < wall / 2, "the hub spun: {cpu:?} of CPU in {wall:?}");
            release.set();
            let others = hub::join_all(others);
            // Once memory is back, the same hub runs new calls.
            limit_address_space(None);
            let later = Rc::new(Cell::new(false));
            let l = later.clone();
            hub::call_later(Duration::ZERO, move || l.set(true));
            while !later.get() {
                hub::sleep(Duration::from_millis(1));
            }
            others
        });
        assert_eq!(dropped.get(), 2);
        assert_eq!(others[0].as_ref().ok(), Some(&100));
        assert!(others.iter().all(Result::is_ok));
    });
    if let Some(run) = run {
        hub_util::assert_passed(&run);
        // Said once, for the detached call only.
        assert_eq!(run.stderr.matches(GIVEN_UP).count(), 1, "{}", run.stderr);
    }
}
