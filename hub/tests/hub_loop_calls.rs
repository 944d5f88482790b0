//! The panic of a hub function that must run in one of the hub's
//! coroutines (it waits, or needs the running coroutine) when it is called
//! from the hub's loop itself: a destructor that the loop runs (here, a
//! `call_later` function still pending at the end of `run`, which the
//! loop drops without running it; the same holds for one given up for
//! want of a stack, see `attack_spawnfail.rs`). The message says so and
//! names the function, rather than claiming that no hub runs; on a thread
//! that runs no hub, the message names `hub::run` as before.
//!
//! And the one way a task's resume unwinds into the loop: a hub that a
//! thread-local's destructor runs after the core's exit hook (the premise
//! of the comment in the scheduler's `run_task`).

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::cell::Cell;
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

use corostack_hub as hub;
use util::message;

/// What the loop's panic says after the function's name.
const IN_LOOP: &str = "` was called from the hub's loop (a destructor or callback that the \
                       loop ran), not from one of its coroutines: only a coroutine can wait; \
                       spawn one (`hub::spawn`) to do it, before `run` ends (the end of \
                       `run` kills what it spawns before it starts)";

/// What the panic on a thread with no hub says after the function's name.
const NO_HUB: &str = "` was called outside a hub: run it inside `corostack_hub::run`";

/// Keeps the provoked panics' messages out of the test's output.
fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let s = info.to_string();
            if !s.contains(IN_LOOP) && !s.contains(NO_HUB) {
                hook(info);
            }
        }));
    });
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

/// Runs a hub whose main coroutine makes, with `setup`, a call to make
/// from the loop, and leaves it in the destructor of a `call_later`
/// function that never runs: the end of `run` drops it in the loop. The
/// panic is kept and raised by `run` at its end: returns its message.
fn from_the_loop(setup: impl FnOnce() -> Box<dyn FnOnce()> + 'static) -> String {
    quiet();
    let p = panic::catch_unwind(AssertUnwindSafe(|| {
        hub::run(move || {
            let call = OnDrop(Some(setup()));
            let pending = hub::call_later(Duration::from_secs(3600), move || {
                drop(call);
                unreachable!("the call never runs");
            });
            assert!(pending.is_pending());
        })
    }));
    let p = p.expect_err("`run` raises the loop's panic at its end");
    message(&*p)
}

/// Calls `f` on a thread that runs no hub; returns its panic's message.
fn without_a_hub(f: impl FnOnce() + Send + 'static) -> String {
    quiet();
    let p = std::thread::spawn(move || panic::catch_unwind(AssertUnwindSafe(f)))
        .join()
        .expect("the thread caught its panic");
    message(&*p.expect_err("the call panics without a hub"))
}

/// Asserts that `msg` is the loop's panic for `what`.
#[track_caller]
fn assert_in_loop(msg: &str, what: &str) {
    assert_eq!(msg, format!("corostack::hub: `{what}{IN_LOOP}"));
}

/// Asserts that `msg` is the panic without a hub for `what`.
#[track_caller]
fn assert_no_hub(msg: &str, what: &str) {
    assert!(
        msg.starts_with(&format!("corostack::hub: `{what}{NO_HUB}")),
        "{msg}"
    );
}

#[test]
fn sleep_from_the_loop_says_so() {
    let msg = from_the_loop(|| Box::new(|| hub::sleep(Duration::from_millis(1))));
    assert_in_loop(&msg, "hub::sleep");
    // `sleep(0)` yields: the same message, naming `sleep`.
    let msg = from_the_loop(|| Box::new(|| hub::sleep(Duration::ZERO)));
    assert_in_loop(&msg, "hub::sleep");
    // Longer than the clock counts: it parks with no timer.
    let msg = from_the_loop(|| Box::new(|| hub::sleep(Duration::MAX)));
    assert_in_loop(&msg, "hub::sleep");
}

#[test]
fn time_functions_from_the_loop_say_so() {
    let msg =
        from_the_loop(|| Box::new(|| hub::sleep_until(Instant::now() + Duration::from_millis(1))));
    assert_in_loop(&msg, "hub::sleep_until");
    let msg = from_the_loop(|| Box::new(hub::yield_now));
    assert_in_loop(&msg, "hub::yield_now");
    let msg = from_the_loop(|| {
        Box::new(|| {
            let _ = hub::timeout(Duration::from_secs(1), || ());
        })
    });
    assert_in_loop(&msg, "hub::timeout");
}

#[test]
fn sync_waits_from_the_loop_say_so() {
    let msg = from_the_loop(|| {
        let event = hub::sync::Event::new();
        Box::new(move || event.wait())
    });
    assert_in_loop(&msg, "Event::wait");
    let msg = from_the_loop(|| {
        let (tx, rx) = hub::sync::unbounded::<u8>();
        Box::new(move || {
            let _ = rx.recv();
            drop(tx);
        })
    });
    assert_in_loop(&msg, "Receiver::recv");
    let msg = from_the_loop(|| {
        let (tx, rx) = hub::sync::bounded::<u8>(1);
        tx.send(1).unwrap();
        Box::new(move || {
            let _ = tx.send(2);
            drop(rx);
        })
    });
    assert_in_loop(&msg, "Sender::send");
    let msg = from_the_loop(|| {
        let sem = hub::sync::Semaphore::new(0);
        Box::new(move || drop(sem.acquire()))
    });
    assert_in_loop(&msg, "Semaphore::acquire");
}

#[test]
fn waits_for_coroutines_and_futures_from_the_loop_say_so() {
    let msg = from_the_loop(|| {
        let task = hub::spawn(|| hub::sleep(Duration::from_secs(3600)));
        Box::new(move || {
            let _ = task.join();
        })
    });
    assert_in_loop(&msg, "JoinHandle::join");
    let msg = from_the_loop(|| Box::new(|| hub::block_on(std::future::pending::<()>())));
    assert_in_loop(&msg, "hub::block_on");
    let msg = from_the_loop(|| Box::new(|| hub::spawn_blocking(|| ())));
    assert_in_loop(&msg, "hub::spawn_blocking");
}

#[test]
fn socket_waits_from_the_loop_say_so() {
    // A read with nothing to read: it would block.
    let msg = from_the_loop(|| {
        let listener = hub::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = hub::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        Box::new(move || {
            let _ = (&client).read(&mut [0; 8]);
            drop(server);
        })
    });
    assert_in_loop(&msg, "TcpStream::read");
    // No connection waiting.
    let msg = from_the_loop(|| {
        let listener = hub::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Box::new(move || {
            let _ = listener.accept();
        })
    });
    assert_in_loop(&msg, "TcpListener::accept");
    // Another library's descriptor, with nothing to read.
    let msg = from_the_loop(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Box::new(move || {
            let _ = hub::wait_readable(&socket);
        })
    });
    assert_in_loop(&msg, "hub::wait_readable");
    // A datagram socket with nothing to receive, each way to receive.
    let msg = from_the_loop(|| {
        let socket = hub::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Box::new(move || {
            let _ = socket.recv_from(&mut [0; 8]);
        })
    });
    assert_in_loop(&msg, "UdpSocket::recv_from");
    let msg = from_the_loop(|| {
        let socket = hub::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(socket.local_addr().unwrap()).unwrap();
        Box::new(move || {
            let _ = socket.recv(&mut [0; 8]);
        })
    });
    assert_in_loop(&msg, "UdpSocket::recv");
}

#[test]
fn without_a_hub_the_message_names_run() {
    let msg = without_a_hub(|| hub::sleep(Duration::from_millis(1)));
    assert_no_hub(&msg, "hub::sleep");
    let msg = without_a_hub(hub::yield_now);
    assert_no_hub(&msg, "hub::yield_now");
    let msg = without_a_hub(|| hub::sync::Event::new().wait());
    assert_no_hub(&msg, "Event::wait");
    let msg = without_a_hub(|| {
        let (_tx, rx) = hub::sync::unbounded::<u8>();
        let _ = rx.recv();
    });
    assert_no_hub(&msg, "Receiver::recv");
    let msg = without_a_hub(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = hub::wait_readable(&socket);
    });
    assert_no_hub(&msg, "hub::wait_readable");
    let msg = without_a_hub(|| hub::block_on(std::future::pending::<()>()));
    assert_no_hub(&msg, "hub::block_on");
    // The sockets' constructors name themselves.
    let msg = without_a_hub(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _ = hub::net::TcpStream::connect(listener.local_addr().unwrap());
    });
    assert_no_hub(&msg, "TcpStream::connect");
    let msg = without_a_hub(|| {
        let _ = hub::net::UdpSocket::bind("127.0.0.1:0");
    });
    assert_no_hub(&msg, "UdpSocket::bind");
}

/// Runs `late` in a child process (`name`, the test's), in the destructor
/// of a thread-local that a spawned thread used before its first coroutine
/// start, so after the core's exit hook (which that start registered:
/// destroyed last used, first run); prints `JOINED` once the thread is
/// joined. Returns the child's run (`None` in the child).
fn after_the_exit_hook(name: &str, late: fn()) -> Option<hub_util::ChildRun> {
    hub_util::in_child(name, Duration::from_secs(20), move || {
        struct Late(Cell<Option<fn()>>);
        impl Drop for Late {
            fn drop(&mut self) {
                assert!(corostack::thread_exit::is_exiting());
                if let Some(late) = self.0.get() {
                    late();
                }
            }
        }
        thread_local!(static LATE: Late = const { Late(Cell::new(None)) });
        std::thread::spawn(move || {
            LATE.with(|l| l.0.set(Some(late)));
            hub::run(|| ());
        })
        .join()
        .unwrap();
        println!("JOINED");
    })
}

/// A hub run by a thread-local's destructor after the core's exit hook ran
/// (the thread-local was first used before the thread's first coroutine
/// start, which registered the hook: it is destroyed after it). Every park
/// there panics (nothing would resume it), and the first one detaches the
/// hub from the thread; a task killed before it started then finds no hub
/// at its start, outside its body's `catch_unwind`: that panic unwinds out
/// of the loop's resume, and out of `run`, for good (the scheduler's
/// `run_task` says why nothing reads the running task after it). The
/// thread ends normally: no abort, no hang.
#[test]
fn a_hub_run_after_the_exit_hook_unwinds_out_of_run() {
    let Some(run) = after_the_exit_hook("a_hub_run_after_the_exit_hook_unwinds_out_of_run", || {
        let r = panic::catch_unwind(|| {
            hub::run(|| {
                // Pending; killed by the end of `run`.
                drop(hub::spawn(|| println!("NEVER RAN")));
                let p = panic::catch_unwind(hub::yield_now).expect_err("a park panics");
                println!("PARK: {}", message(&*p));
            })
        });
        let p = r.expect_err("`run` unwinds");
        println!("RUN: {}", message(&*p));
    }) else {
        return;
    };
    hub_util::assert_passed(&run);
    let out = run.output();
    let exits = "was called while the thread exits";
    assert!(
        out.contains(&format!("PARK: corostack::hub: `hub::yield_now` {exits}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "RUN: corostack::hub: `a coroutine's start` {exits}"
        )),
        "{out}"
    );
    assert!(
        out.contains("JOINED") && !out.contains("NEVER RAN"),
        "{out}"
    );
}

/// A wait from the loop of a hub that runs while the thread exits (in a
/// thread-local's destructor, after the core's exit hook ran): the
/// thread-exit message, not the loop's, whose advice (spawn a coroutine)
/// cannot work there.
#[test]
fn a_wait_from_the_loop_while_the_thread_exits_names_the_exit() {
    const NAME: &str = "a_wait_from_the_loop_while_the_thread_exits_names_the_exit";
    let Some(run) = after_the_exit_hook(NAME, || {
        let r = panic::catch_unwind(|| {
            hub::run(|| {
                // Dropped, unrun, by the end of `run`, in the loop.
                let call = OnDrop(Some(Box::new(|| hub::sleep(Duration::from_millis(1)))));
                let pending = hub::call_later(Duration::from_secs(3600), move || {
                    drop(call);
                    unreachable!("the call never runs");
                });
                assert!(pending.is_pending());
            })
        });
        let p = r.expect_err("`run` raises the loop's panic at its end");
        println!("RUN: {}", message(&*p));
    }) else {
        return;
    };
    hub_util::assert_passed(&run);
    let out = run.output();
    assert!(
        out.contains("RUN: corostack::hub: `hub::sleep` was called while the thread exits"),
        "{out}"
    );
    assert!(out.contains("JOINED"), "{out}");
}
