//! The hub's scheduler: gevent's sleep example, spawning, joining,
//! killing, panics, sleeps in deadline order, timeouts, delayed calls,
//! the blocking pool, and the errors outside a hub.

mod util;

#[path = "../examples/gevent_sleep.rs"]
mod gevent_sleep;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use corostack_hub::{self as hub, JoinError, TaskState};
use proptest::prelude::*;
use util::{DropCounter, capture, message};

#[test]
fn the_gevent_sleep_example_prints_geventss_output() {
    let lines = capture(|emit| gevent_sleep::run(move |l| emit(l)));
    assert_eq!(
        lines,
        [
            "Running in foo",
            "Explicit context to bar",
            "running func3",
            "running func3 again",
            "Implicit context switch back to bar",
            "Explicit context switch to foo again",
        ]
    );
}

#[test]
fn run_returns_the_main_value_and_kills_the_rest() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let started = Rc::new(Cell::new(false));
    let s = started.clone();
    let v = hub::run(move || {
        hub::spawn(move || {
            let _g = guard;
            s.set(true);
            hub::sleep(Duration::from_secs(3600));
            unreachable!("killed at the end of run");
        });
        hub::sleep(Duration::from_millis(1));
        7
    });
    assert_eq!(v, 7);
    assert!(started.get());
    assert_eq!(drops.get(), 1, "the sleeping coroutine's stack was unwound");
}

#[test]
fn a_panic_in_main_reaches_the_caller_of_run_after_cleanup() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        hub::run(move || {
            hub::spawn(move || {
                let _g = guard;
                hub::sleep(Duration::from_secs(3600));
            });
            hub::yield_now();
            panic!("main failed: {}", 42);
        })
    }));
    assert_eq!(message(&*r.unwrap_err()), "main failed: 42");
    assert_eq!(drops.get(), 1);
}

#[test]
fn calls_outside_a_hub_panic_naming_hub_run() {
    type Call = (&'static str, Box<dyn Fn()>);
    let calls: Vec<Call> = vec![
        ("hub::spawn", Box::new(|| drop(hub::spawn(|| ())))),
        ("hub::sleep", Box::new(|| hub::sleep(Duration::ZERO))),
        ("hub::yield_now", Box::new(hub::yield_now)),
        (
            "hub::timeout",
            Box::new(|| {
                let _ = hub::timeout(Duration::ZERO, || ());
            }),
        ),
        (
            "hub::call_later",
            Box::new(|| {
                let _ = hub::call_later(Duration::ZERO, || ());
            }),
        ),
        ("hub::remote", Box::new(|| drop(hub::remote()))),
        (
            "hub::spawn_blocking",
            Box::new(|| hub::spawn_blocking(|| ())),
        ),
        ("hub::block_on", Box::new(|| hub::block_on(async {}))),
        (
            "hub::wait_readable",
            Box::new(|| drop(hub::wait_readable(&std::io::stdin()))),
        ),
    ];
    assert!(!hub::is_in_hub());
    for (name, call) in calls {
        let p = panic::catch_unwind(AssertUnwindSafe(call)).expect_err(name);
        let m = message(&*p);
        assert!(m.contains(name) && m.contains("hub::run"), "{name}: {m}");
    }
}

#[test]
fn a_hub_inside_a_hub_is_refused() {
    hub::run(|| {
        assert!(hub::is_in_hub());
        let p = panic::catch_unwind(|| hub::run(|| ())).unwrap_err();
        assert!(message(&*p).contains("inside a hub"), "{}", message(&*p));
        // The outer hub still works.
        assert_eq!(hub::spawn(|| 5).join().unwrap(), 5);
    });
}

#[test]
fn a_panicking_coroutine_gives_its_payload_to_join_and_others_go_on() {
    hub::run(|| {
        let bad = hub::spawn(|| -> u32 {
            hub::sleep(Duration::from_millis(1));
            panic!("bad coroutine {}", 1)
        });
        let good = hub::spawn(|| {
            hub::sleep(Duration::from_millis(5));
            "good"
        });
        let err = bad.join().unwrap_err();
        assert!(err.is_panic());
        assert_eq!(err.panic_message(), Some("bad coroutine 1"));
        assert_eq!(message(&*err.into_panic().unwrap()), "bad coroutine 1");
        assert_eq!(good.join().unwrap(), "good");
    });
}

#[test]
fn states_go_pending_suspended_finished_and_running_for_self() {
    hub::run(|| {
        let me: Rc<RefCell<Option<hub::JoinHandle<()>>>> = Rc::default();
        let seen = Rc::new(Cell::new(None));
        let (m, s) = (me.clone(), seen.clone());
        let h = hub::spawn(move || {
            hub::yield_now();
            s.set(m.borrow().as_ref().map(|h| h.state()));
            hub::sleep(Duration::from_millis(2));
        });
        assert_eq!(h.state(), TaskState::Pending);
        assert!(!h.done());
        hub::yield_now();
        assert_eq!(h.state(), TaskState::Suspended);
        *me.borrow_mut() = Some(h);
        hub::sleep(Duration::from_millis(1));
        assert_eq!(seen.get(), Some(TaskState::Running));
        let h = me.borrow_mut().take().unwrap();
        assert_eq!(h.state(), TaskState::Suspended);
        while !h.done() {
            hub::sleep(Duration::from_millis(1));
        }
        assert_eq!(h.state(), TaskState::Finished);
        h.join().unwrap();
    });
}

#[test]
fn kill_unwinds_a_suspended_coroutine_and_wakes_its_joiner() {
    hub::run(|| {
        let drops = DropCounter::default();
        let g = drops.guard();
        let after = Rc::new(Cell::new(false));
        let a = after.clone();
        let victim = hub::spawn(move || {
            let _g = g;
            hub::sleep(Duration::from_secs(3600));
            a.set(true);
        });
        hub::yield_now();
        assert_eq!(victim.state(), TaskState::Suspended);
        // A joiner waiting on the victim is woken by the kill.
        let victim = Rc::new(victim);
        let v = victim.clone();
        let killer = hub::spawn(move || {
            hub::sleep(Duration::from_millis(2));
            v.kill();
            assert!(v.done());
        });
        let start = Instant::now();
        while !victim.done() {
            hub::sleep(Duration::from_millis(1));
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        assert_eq!(drops.get(), 1, "the victim's stack unwound");
        assert!(!after.get());
        killer.join().unwrap();
        let victim = Rc::try_unwrap(victim).unwrap();
        assert!(matches!(victim.join(), Err(JoinError::Killed)));
    });
}

#[test]
fn a_joiner_blocked_in_join_is_woken_by_kill() {
    hub::run(|| {
        let victim = hub::spawn(|| hub::sleep(Duration::from_secs(3600)));
        let killer = victim.kill_handle();
        hub::spawn(move || {
            hub::sleep(Duration::from_millis(2));
            assert!(!killer.done());
            killer.kill();
            assert!(killer.done());
        });
        // Parks in join until the kill wakes it.
        assert!(victim.join().unwrap_err().is_killed());
    });
}

#[test]
fn killing_a_pending_coroutine_drops_its_closure_unrun() {
    hub::run(|| {
        let drops = DropCounter::default();
        let g = drops.guard();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let h = hub::spawn(move || {
            let _g = g;
            r.set(true);
        });
        h.kill();
        assert_eq!(drops.get(), 1);
        hub::yield_now();
        assert!(!ran.get());
        assert!(h.join().unwrap_err().is_killed());
    });
}

#[test]
fn a_coroutine_that_kills_itself_unwinds_and_reports_killed() {
    hub::run(|| {
        let drops = DropCounter::default();
        let g = drops.guard();
        let cell: Rc<RefCell<Option<hub::JoinHandle<()>>>> = Rc::default();
        let c = cell.clone();
        let h = hub::spawn(move || {
            let _g = g;
            hub::yield_now();
            c.borrow().as_ref().unwrap().kill();
            unreachable!("kill of self does not return");
        });
        *cell.borrow_mut() = Some(h);
        while !cell.borrow().as_ref().unwrap().done() {
            hub::yield_now();
        }
        assert_eq!(drops.get(), 1);
        let h = cell.borrow_mut().take().unwrap();
        assert!(h.join().unwrap_err().is_killed());
    });
}

#[test]
fn join_all_keeps_the_order_of_the_handles() {
    let out = hub::run(|| {
        let hs: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                hub::spawn(move || {
                    hub::sleep(Duration::from_millis(ms));
                    ms
                })
            })
            .collect();
        hub::join_all(hs)
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    assert_eq!(out, [30, 10, 20]);
}

#[test]
fn sleep_zero_lets_every_other_ready_coroutine_run_first() {
    let order = hub::run(|| {
        let order = Rc::new(RefCell::new(Vec::new()));
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let o = order.clone();
                hub::spawn(move || {
                    o.borrow_mut().push(format!("{i}a"));
                    hub::sleep(Duration::ZERO);
                    o.borrow_mut().push(format!("{i}b"));
                })
            })
            .collect();
        hub::join_all(hs);
        order.take()
    });
    assert_eq!(order, ["0a", "1a", "2a", "0b", "1b", "2b"]);
}

#[test]
fn sleep_lasts_at_least_its_duration() {
    hub::run(|| {
        for ms in [1, 3, 10] {
            let start = Instant::now();
            hub::sleep(Duration::from_millis(ms));
            assert!(start.elapsed() >= Duration::from_millis(ms));
        }
        // A sub-millisecond sleep too.
        let start = Instant::now();
        hub::sleep(Duration::from_micros(200));
        assert!(start.elapsed() >= Duration::from_micros(200));
    });
}

#[test]
fn a_timeout_interrupts_its_scope_and_runs_destructors() {
    hub::run(|| {
        let drops = DropCounter::default();
        let g = drops.guard();
        let r = hub::timeout(Duration::from_millis(5), move || {
            let _g = g;
            hub::sleep(Duration::from_secs(3600));
        });
        assert!(r.is_err());
        assert_eq!(drops.get(), 1);
        assert_eq!(
            std::io::Error::from(r.unwrap_err()).kind(),
            std::io::ErrorKind::TimedOut
        );
        // A scope that ends in time leaves no interrupt behind.
        assert_eq!(hub::timeout(Duration::from_millis(5), || 3), Ok(3));
        hub::sleep(Duration::from_millis(20));
    });
}

#[test]
fn nested_timeouts_each_interrupt_their_own_scope() {
    hub::run(|| {
        // The inner one expires first: only it fails.
        let outer = hub::timeout(Duration::from_secs(60), || {
            let inner = hub::timeout(Duration::from_millis(2), || {
                hub::sleep(Duration::from_secs(3600));
            });
            assert!(inner.is_err());
            "outer finished"
        });
        assert_eq!(outer, Ok("outer finished"));
        // The outer one expires first: the inner scope is unwound through.
        let inner_returned = Rc::new(Cell::new(false));
        let ir = inner_returned.clone();
        let outer = hub::timeout(Duration::from_millis(2), move || {
            let _inner = hub::timeout(Duration::from_secs(60), || {
                hub::sleep(Duration::from_secs(3600));
            });
            ir.set(true);
        });
        assert!(outer.is_err());
        assert!(!inner_returned.get());
    });
}

#[test]
fn a_timeout_passes_other_panics_through() {
    hub::run(|| {
        let p = panic::catch_unwind(|| {
            let _ = hub::timeout(Duration::from_secs(1), || panic!("inner panic"));
        })
        .unwrap_err();
        assert_eq!(message(&*p), "inner panic");
    });
}

#[test]
fn call_later_runs_in_a_coroutine_and_cancel_stops_it() {
    hub::run(|| {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let start = Instant::now();
        let first = hub::call_later(Duration::from_millis(5), move || {
            // It may suspend: it has its own coroutine.
            hub::sleep(Duration::from_millis(1));
            l.borrow_mut().push(("first", start.elapsed()));
        });
        let l = log.clone();
        let second = hub::call_later(Duration::from_millis(2), move || {
            l.borrow_mut().push(("second", start.elapsed()))
        });
        let l = log.clone();
        let cancelled = hub::call_later(Duration::from_millis(1), move || {
            l.borrow_mut().push(("cancelled", start.elapsed()))
        });
        assert!(cancelled.is_pending());
        assert!(cancelled.cancel());
        assert!(!cancelled.cancel());
        hub::sleep(Duration::from_millis(30));
        assert!(!first.is_pending() && !second.is_pending());
        assert!(!first.cancel(), "it has already run");
        let log = log.take();
        let names: Vec<_> = log.iter().map(|e| e.0).collect();
        assert_eq!(names, ["second", "first"]);
        assert!(log[0].1 >= Duration::from_millis(2));
        assert!(log[1].1 >= Duration::from_millis(6));
    });
}

#[test]
fn spawn_blocking_does_not_stall_the_hub() {
    hub::run(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&str>();
        // The hub must keep running while the job waits: a coroutine
        // sends the job what it waits for.
        let sender = hub::spawn(move || {
            hub::sleep(Duration::from_millis(5));
            tx.send("from the hub").unwrap();
        });
        let got = hub::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)));
        assert_eq!(got, Ok("from the hub"));
        sender.join().unwrap();
        // Several at once, each waiting only its own coroutine.
        let hs: Vec<_> = (0..4u64)
            .map(|i| hub::spawn(move || hub::spawn_blocking(move || i * i)))
            .collect();
        let squares: Vec<u64> = hub::join_all(hs).into_iter().map(Result::unwrap).collect();
        assert_eq!(squares, [0, 1, 4, 9]);
    });
}

#[test]
fn spawn_blocking_passes_a_panic_to_its_caller() {
    hub::run(|| {
        let p =
            panic::catch_unwind(|| hub::spawn_blocking(|| panic!("blocking failed"))).unwrap_err();
        assert_eq!(message(&*p), "blocking failed");
    });
}

#[test]
fn builder_settings_apply() {
    let v = hub::Builder::new()
        .stack_size(corostack::stack::MIN_STACK_SIZE)
        .stack_cache(0)
        .blocking_threads(1)
        .run(|| {
            // The smallest stack still runs ordinary code.
            let h = hub::spawn(|| format!("{:?}", vec![1, 2, 3]));
            let a = hub::spawn_blocking(|| 1);
            let b = hub::spawn_blocking(|| 2);
            (h.join().unwrap(), a + b)
        });
    assert_eq!(v, ("[1, 2, 3]".to_string(), 3));
    let p = panic::catch_unwind(|| hub::Builder::new().stack_size(100)).unwrap_err();
    assert!(message(&*p).contains("MIN_STACK_SIZE"));
}

#[test]
fn run_on_threads_runs_a_hub_per_thread() {
    let out = hub::Builder::new().threads(3).run_on_threads(|i| {
        let me = std::thread::current().id();
        let h = hub::spawn(move || {
            hub::sleep(Duration::from_millis(1));
            (i, std::thread::current().id() == me)
        });
        (h.join().unwrap(), format!("{me:?}"))
    });
    assert_eq!(
        out.iter().map(|o| o.0).collect::<Vec<_>>(),
        [(0, true), (1, true), (2, true)]
    );
    let mut threads: Vec<_> = out.iter().map(|o| o.1.clone()).collect();
    threads.dedup();
    assert_eq!(threads.len(), 3, "each hub ran on its own thread");
}

#[test]
fn many_coroutines_spawn_run_and_join() {
    let n = util::scaled(20_000, 2_000);
    let sum = hub::run(move || {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                hub::spawn(move || {
                    hub::sleep(Duration::ZERO);
                    i as u64
                })
            })
            .collect();
        hub::join_all(hs)
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>()
    });
    assert_eq!(sum, (n as u64) * (n as u64 - 1) / 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 8 } else { 32 }))]

    /// Coroutines that sleep until random deadlines (ties included) wake
    /// in deadline order, ties in the order they went to sleep.
    #[test]
    fn sleeps_wake_in_deadline_order(ms in proptest::collection::vec(0u64..12, 1..40)) {
        let woke = hub::run(move || {
            let woke = Rc::new(RefCell::new(Vec::new()));
            // Deadlines from one instant: spawning takes time (much more
            // under emulation), which must not reorder them.
            let start = Instant::now() + Duration::from_millis(util::scaled(5, 50) as u64);
            let hs: Vec<_> = ms
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    let w = woke.clone();
                    hub::spawn(move || {
                        hub::sleep_until(start + Duration::from_millis(m) * 3);
                        w.borrow_mut().push((m, i));
                    })
                })
                .collect();
            hub::join_all(hs);
            woke.take()
        });
        let mut sorted = woke.clone();
        sorted.sort();
        prop_assert_eq!(woke, sorted);
    }
}

/// A sleep whose deadline has already passed when it starts still wakes
/// in (deadline, registration) order: after an earlier sleep with the same
/// or an earlier deadline that is still waiting for its timer (a
/// coroutine that computes past both deadlines in between).
#[test]
fn a_sleep_whose_deadline_passed_wakes_after_earlier_ones() {
    let woke = hub::run(|| {
        let woke = Rc::new(RefCell::new(Vec::new()));
        let d = Instant::now() + Duration::from_millis(20);
        let sleeper = |name: &'static str, deadline: Instant| {
            let w = woke.clone();
            hub::spawn(move || {
                hub::sleep_until(deadline);
                w.borrow_mut().push(name);
            })
        };
        let early = sleeper("early", d);
        let same = sleeper("same", d);
        // Computes past both deadlines without suspending.
        let spin = hub::spawn(move || {
            while Instant::now() <= d + Duration::from_millis(10) {
                std::hint::spin_loop();
            }
        });
        // Their deadlines have passed when they start.
        let late_same = sleeper("late same", d);
        let late_later = sleeper("late later", d + Duration::from_millis(5));
        hub::join_all([early, same, spin, late_same, late_later]);
        woke.take()
    });
    assert_eq!(woke, ["early", "same", "late same", "late later"]);
}

#[test]
fn a_deadlock_panics_in_main_instead_of_hanging() {
    let drops = DropCounter::default();
    let g = drops.guard();
    let p = panic::catch_unwind(AssertUnwindSafe(move || {
        hub::run(move || {
            let (tx, rx) = corostack_hub::sync::channel::unbounded::<u8>();
            // It waits for a value that only main could send, while main
            // waits for it.
            let waiter = hub::spawn(move || {
                let _g = g;
                rx.recv()
            });
            let _ = waiter.join();
            drop(tx);
        })
    }))
    .unwrap_err();
    assert!(message(&*p).contains("deadlock"), "{}", message(&*p));
    assert_eq!(drops.get(), 1, "the stuck coroutine was unwound");
}

#[test]
fn a_join_error_is_send_sync_static_and_goes_through_question_mark() {
    fn error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    fn joined<T>(h: hub::JoinHandle<T>) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
        Ok(h.join()?)
    }
    hub::run(|| {
        let seven = std::hint::black_box(7);
        let err = joined(hub::spawn(move || -> u8 { panic!("boom {seven}") })).unwrap_err();
        assert_eq!(err.to_string(), "the coroutine panicked: boom 7");
        // The payload comes back whole, with its type: a String, a
        // &'static str, anything else.
        let err = *err.downcast::<JoinError>().unwrap();
        error(&err);
        assert_eq!(
            *err.into_panic().unwrap().downcast::<String>().unwrap(),
            "boom 7"
        );
        let err = hub::spawn(|| panic::panic_any("static"))
            .join()
            .unwrap_err();
        assert_eq!(err.panic_message(), Some("static"));
        assert_eq!(
            *err.into_panic().unwrap().downcast::<&str>().unwrap(),
            "static"
        );
        let mut err = hub::spawn(|| panic::panic_any(42u64)).join().unwrap_err();
        assert_eq!(err.panic_message(), None);
        let JoinError::Panicked(p) = &mut err else {
            panic!("{err:?}")
        };
        assert_eq!(p.get_mut().downcast_mut::<u64>(), Some(&mut 42));
        // Shared with another thread by reference (Sync), then moved back.
        let err = std::thread::scope(|s| s.spawn(|| format!("{err}")).join().unwrap());
        assert_eq!(err, "the coroutine panicked");
        let sleeper = hub::spawn(|| hub::sleep(Duration::from_secs(60)));
        sleeper.kill();
        let killed = joined(sleeper);
        assert!(
            killed
                .unwrap_err()
                .downcast_ref::<JoinError>()
                .unwrap()
                .is_killed()
        );
    });
}

#[test]
fn started_and_done_follow_the_state_on_both_handles() {
    hub::run(|| {
        let h = hub::spawn(|| hub::sleep(Duration::from_millis(1)));
        let k = h.kill_handle();
        let both = |h: &hub::JoinHandle<()>| {
            assert_eq!((h.started(), h.done()), (k.started(), k.done()));
            assert_eq!((h.state(), h.id()), (k.state(), k.id()));
            (h.started(), h.done())
        };
        assert_eq!(both(&h), (false, false));
        hub::yield_now();
        assert_eq!(both(&h), (true, false));
        while !h.done() {
            hub::sleep(Duration::from_millis(1));
        }
        assert_eq!(both(&h), (true, true));
        // Killed before it ran: finished, so started too.
        let never = hub::spawn(|| ());
        never.kill();
        assert!(never.started() && never.done());
    });
}

#[test]
fn a_join_error_is_the_payload_box_and_one_word() {
    // The payload's box, or an `io::Error` (`NotStarted`) beside a tag: one
    // word more than the box. A task's result slot does not hold it but a
    // private error of the box's two words, which keeps the slot and the
    // task's body as they were (echo's instruction count moved with it):
    // the crate's unit test `a_tasks_error_is_two_words_as_the_payload_box_was`.
    assert_eq!(
        std::mem::size_of::<JoinError>(),
        std::mem::size_of::<Box<dyn std::any::Any + Send>>() + std::mem::size_of::<usize>()
    );
}
