//! Attacks on the panic of a hub function that must run in a coroutine
//! when the hub's loop calls it (`hub_loop_calls.rs`): what the loop may
//! still do (spawn, `call_later`, kill, the calls that do not wait, among
//! them a wait that has nothing to wait for), and which message a caller
//! gets that is neither plainly a coroutine of the hub nor plainly its
//! loop (a plain `Coroutine` resumed by the loop or by a task, a
//! `spawn_blocking` thread, a nested `run`, work a `Remote` handed over
//! that is still pending at the end, a panic of `run`'s closure that comes
//! first).

mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Once;
use std::time::Duration;

use corostack::{Coroutine, Yielder};
use corostack_hub as hub;
use util::message;

/// What the loop's panic says after the function's name.
const IN_LOOP: &str = "` was called from the hub's loop (a destructor or callback that the \
                       loop ran), not from one of its coroutines: only a coroutine can wait; \
                       spawn one (`hub::spawn`) to do it, before `run` ends (the end of \
                       `run` kills what it spawns before it starts)";

/// Keeps the provoked panics' messages out of the test's output.
fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.to_string().contains("corostack::hub") {
                hook(info);
            }
        }));
    });
}

/// Asserts that `msg` is the loop's panic for `what`.
#[track_caller]
fn assert_in_loop(msg: &str, what: &str) {
    assert_eq!(msg, format!("corostack::hub: `{what}{IN_LOOP}"));
}

/// Runs `call` when dropped.
struct OnDrop(Option<Box<dyn FnOnce()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Leaves `f` in the destructor of a `call_later` function that never
/// runs: the end of `run` drops it, in the loop.
fn at_the_end_in_the_loop(f: impl FnOnce() + 'static) {
    let call = OnDrop(Some(Box::new(f)));
    let pending = hub::call_later(Duration::from_secs(3600), move || {
        drop(call);
        unreachable!("the call never runs");
    });
    assert!(pending.is_pending());
}

/// Runs a hub whose main coroutine returns after `main`; returns `run`'s
/// panic message, if it panicked.
fn run_hub(main: impl FnOnce() + 'static) -> Option<String> {
    quiet();
    panic::catch_unwind(AssertUnwindSafe(|| hub::run(main)))
        .err()
        .map(|p| message(&*p))
}

/// Sleeps when dropped: only a coroutine of the hub may drop it.
struct SleepsOnDrop;

impl Drop for SleepsOnDrop {
    fn drop(&mut self) {
        hub::sleep(Duration::from_millis(1));
    }
}

/// What a closure the loop ran wrote.
type Log = Rc<RefCell<Vec<String>>>;

/// Runs `f`, catching its panic; logs `name` and what it gave.
fn logged(log: &Log, name: &str, f: impl FnOnce() -> String) {
    let r = panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| message(&*p));
    log.borrow_mut().push(format!("{name}: {r:?}"));
}

#[test]
fn the_loop_may_spawn_schedule_kill_and_make_the_calls_that_do_not_wait() {
    let log: Log = Rc::default();
    let l = log.clone();
    let panicked = run_hub(move || {
        let event = hub::sync::Event::new();
        event.set();
        let (tx, rx) = hub::sync::unbounded::<u8>();
        tx.send(4).unwrap();
        let (btx, brx) = hub::sync::bounded::<u8>(2);
        let sem = hub::sync::Semaphore::new(1);
        let sleeper = hub::spawn(|| hub::sleep(Duration::from_secs(3600)));
        let listener = hub::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = hub::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"hi").unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let _waiting = hub::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The byte and the connection arrive.
        hub::sleep(Duration::from_millis(50));
        at_the_end_in_the_loop(move || {
            logged(&l, "is_in_hub", || hub::is_in_hub().to_string());
            logged(&l, "spawn", || format!("{:?}", hub::spawn(|| 1).state()));
            // At the end of `run` nothing new starts: `call_later` drops
            // its function at once (a destructor there runs in the loop)
            // and returns a handle that is not pending.
            logged(&l, "call_later", || {
                let (ran, dropped) = (l.clone(), l.clone());
                let guard = OnDrop(Some(Box::new(move || {
                    dropped
                        .borrow_mut()
                        .push("call_later's function dropped".into());
                })));
                let call = hub::call_later(Duration::ZERO, move || {
                    let _g = guard;
                    ran.borrow_mut().push("call_later's function ran".into());
                });
                format!("pending {}, cancelled {}", call.is_pending(), call.cancel())
            });
            logged(&l, "kill", || {
                sleeper.kill();
                "asked".into()
            });
            logged(&l, "Event::wait", || {
                event.wait();
                "set".into()
            });
            logged(&l, "Receiver::recv", || format!("{:?}", rx.recv()));
            logged(&l, "Sender::send", || format!("{:?}", btx.send(1)));
            logged(&l, "bounded recv", || format!("{:?}", brx.recv()));
            logged(&l, "Semaphore::acquire", || {
                drop(sem.acquire());
                "acquired".into()
            });
            logged(&l, "read", || format!("{:?}", server.read(&mut [0; 2])));
            logged(&l, "accept", || {
                format!("{:?}", listener.accept().map(|(_, a)| a.ip()))
            });
        });
    });
    assert_eq!(panicked, None);
    assert_eq!(
        *log.borrow(),
        [
            "is_in_hub: Ok(\"true\")",
            "spawn: Ok(\"Pending\")",
            "call_later's function dropped",
            "call_later: Ok(\"pending false, cancelled false\")",
            "kill: Ok(\"asked\")",
            "Event::wait: Ok(\"set\")",
            "Receiver::recv: Ok(\"Ok(4)\")",
            "Sender::send: Ok(\"Ok(())\")",
            "bounded recv: Ok(\"Ok(1)\")",
            "Semaphore::acquire: Ok(\"acquired\")",
            "read: Ok(\"Ok(2)\")",
            "accept: Ok(\"Ok(127.0.0.1)\")",
        ]
    );
}

/// The message's advice, followed at the end of `run`: the coroutine
/// spawned from a destructor that the end runs is killed before it starts
/// (as every coroutine still alive at the end is): its closure is dropped
/// unrun, in a coroutine (a wait in that drop works), and `run` returns.
#[test]
fn a_coroutine_spawned_by_the_loop_at_the_end_is_killed_before_it_starts() {
    let log: Log = Rc::default();
    let l = log.clone();
    let panicked = run_hub(move || {
        at_the_end_in_the_loop(move || {
            let (ran, dropped) = (l.clone(), l.clone());
            let waits = OnDrop(Some(Box::new(move || {
                hub::sleep(Duration::from_millis(1));
                dropped.borrow_mut().push("dropped, slept".into());
            })));
            let h = hub::spawn(move || {
                let _w = waits;
                ran.borrow_mut().push("ran".into());
            });
            l.borrow_mut().push(format!("spawned: {:?}", h.state()));
        });
    });
    assert_eq!(panicked, None);
    assert_eq!(*log.borrow(), ["spawned: Pending", "dropped, slept"]);
}

#[test]
fn a_wait_in_a_plain_coroutine_that_the_loop_resumes_is_the_loops() {
    let msg = run_hub(|| {
        at_the_end_in_the_loop(|| {
            let mut co = Coroutine::new(|_: &Yielder<(), ()>, ()| {
                hub::sleep(Duration::from_millis(1));
            });
            co.resume(());
        });
    });
    assert_in_loop(&msg.expect("the loop's panic"), "hub::sleep");
}

#[test]
fn a_wait_in_a_plain_coroutine_that_a_task_resumes_parks_the_task() {
    let msg = run_hub(|| {
        let mut co = Coroutine::new(|_: &Yielder<(), ()>, ()| {
            hub::sleep(Duration::from_millis(1));
            hub::spawn(|| 2).join().unwrap()
        });
        assert_eq!(co.resume(()).as_return(), Some(2));
    });
    assert_eq!(msg, None);
}

#[test]
fn a_wait_on_a_spawn_blocking_thread_names_run() {
    let msg = run_hub(|| {
        let r = hub::spawn_blocking(|| {
            panic::catch_unwind(|| hub::sleep(Duration::ZERO)).map_err(|p| message(&*p))
        });
        let msg = r.expect_err("no hub on a blocking thread");
        assert!(
            msg.starts_with(
                "corostack::hub: `hub::sleep` was called outside a hub: run it inside \
                 `corostack_hub::run`"
            ),
            "{msg}"
        );
    });
    assert_eq!(msg, None);
}

#[test]
fn run_from_the_loop_says_a_thread_runs_one_hub() {
    let msg = run_hub(|| at_the_end_in_the_loop(|| hub::run(|| ())));
    assert_eq!(
        msg.as_deref(),
        Some("corostack::hub: `hub::run` was called inside a hub; a thread runs one hub")
    );
}

#[test]
fn a_remote_job_pending_at_the_end_is_dropped_in_the_loop() {
    let msg = run_hub(|| {
        let remote = hub::remote();
        // Handed over before `run`'s closure returns; the loop has not
        // looked at it yet.
        std::thread::spawn(move || {
            let s = SleepsOnDrop;
            drop(remote.spawn(move || drop(s)));
        })
        .join()
        .unwrap();
    });
    assert_in_loop(&msg.expect("the loop's panic"), "hub::sleep");
}

#[test]
fn the_closures_panic_comes_before_the_loops() {
    let msg = run_hub(|| {
        at_the_end_in_the_loop(|| hub::sleep(Duration::from_millis(1)));
        panic!("corostack::hub test: the closure's panic");
    });
    assert_eq!(
        msg.as_deref(),
        Some("corostack::hub test: the closure's panic")
    );
}

/// `JoinHandle::done` says that `join` would return at once, and the
/// crate's docs that the loop may make every call that does not wait: a
/// join of a finished coroutine waits for nothing.
#[test]
fn a_join_of_a_finished_coroutine_from_the_loop_returns_its_value() {
    let log: Log = Rc::default();
    let l = log.clone();
    let panicked = run_hub(move || {
        let done = hub::spawn(|| 9);
        let more = vec![hub::spawn(|| 1), hub::spawn(|| 2)];
        hub::yield_now();
        assert!(done.done() && more.iter().all(hub::JoinHandle::done));
        at_the_end_in_the_loop(move || {
            logged(&l, "join", || format!("{:?}", done.join()));
            logged(&l, "join_all", || {
                format!(
                    "{:?}",
                    hub::join_all(more)
                        .into_iter()
                        .map(Result::unwrap)
                        .collect::<Vec<_>>()
                )
            });
        });
    });
    assert_eq!(panicked, None);
    assert_eq!(
        *log.borrow(),
        ["join: Ok(\"Ok(9)\")", "join_all: Ok(\"[1, 2]\")"]
    );
}

/// A pending join from the loop still says so.
#[test]
fn a_join_of_a_running_coroutine_from_the_loop_says_so() {
    let msg = run_hub(|| {
        let sleeper = hub::spawn(|| hub::sleep(Duration::from_secs(3600)));
        at_the_end_in_the_loop(move || {
            let _ = sleeper.join();
        });
    });
    assert_in_loop(&msg.expect("the loop's panic"), "JoinHandle::join");
}
