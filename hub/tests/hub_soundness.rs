//! Issue 12, the hub's part: foreign stacks inside a task (greenlets are
//! refused clearly; a plain `Coroutine`, an `AsyncCoroutine` under
//! `block_on` and `maybe_grow` work, and can be killed there), kills whose
//! unwind parks (sleeps, I/O, `block_on`, kills, joins in destructors), a
//! kill whose victim panics, the end of `run` with destructors that wait,
//! sockets used in a later hub, and counters that must not wrap. Each
//! scenario that crashed, aborted or hung before runs in a child process
//! with a watchdog.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use corostack::bridge::AsyncCoroutine;
use corostack::greenlet::Greenlet;
use corostack::{Coroutine, CoroutineResult};
use corostack_hub::net::{TcpListener, TcpStream, UdpSocket};
use corostack_hub::sync::{Event, Semaphore};
use corostack_hub::{self as hub, JoinHandle, TaskState};
use hub_util::{in_child, passes_in_child};
use util::{DropCounter, message};

const MS: Duration = Duration::from_millis(1);

/// The child leaked coroutines at the end of a `run`: it went on after
/// `run`, then aborted when the leaking thread exited, naming the leak.
fn assert_aborts_at_thread_exit(run: &hub_util::ChildRun) {
    let out = run.output();
    assert!(!run.hung && run.code.is_none(), "{out}");
    assert!(
        out.contains("leaked are still suspended") && out.contains("aborting"),
        "{out}"
    );
}
const HOUR: Duration = Duration::from_secs(3600);

/// Runs `f` in the drop of a value: a destructor that re-enters the hub.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

// ---------------------------------------------------------------------
// Item 2: foreign stacks inside a task.
// ---------------------------------------------------------------------

#[test]
fn a_greenlet_that_suspends_inside_a_task_is_refused_with_a_clear_panic() {
    passes_in_child(
        "a_greenlet_that_suspends_inside_a_task_is_refused_with_a_clear_panic",
        || {
            hub::run(|| {
                let other = hub::spawn(|| {
                    hub::sleep(5 * MS);
                    "the other task is intact"
                });
                let h = hub::spawn(|| {
                    let g = Greenlet::new(|x: u32| {
                        hub::sleep(MS);
                        x + 1
                    });
                    g.switch(1)
                });
                let err = h.join().unwrap_err();
                let msg = err.panic_message().unwrap_or_default().to_string();
                assert!(msg.contains("greenlet"), "{msg}");
                assert!(msg.contains("hub::spawn"), "names the way out: {msg}");
                assert_eq!(other.join().unwrap(), "the other task is intact");
            });
        },
    );
}

#[test]
fn a_greenlet_that_switches_back_before_the_task_suspends_is_fine() {
    hub::run(|| {
        let h = hub::spawn(|| {
            let g = Greenlet::new(|x: u32| x * 2);
            let v = g.switch(21);
            hub::sleep(MS);
            v
        });
        assert_eq!(h.join().unwrap(), 42);
    });
}

#[test]
fn a_hub_run_inside_a_greenlet_suspends_its_tasks_normally() {
    let g = Greenlet::new(|_: u32| {
        hub::run(|| {
            let h = hub::spawn(|| {
                hub::sleep(MS);
                7
            });
            hub::sleep(MS);
            h.join().unwrap()
        })
    });
    assert_eq!(g.switch(0), 7);
}

/// A task that resumes a plain coroutine whose body sleeps: `(the task,
/// the body's drop counter, the task's drop counter)`.
fn task_in_a_coroutine(sleep: Duration) -> (JoinHandle<u32>, DropCounter, DropCounter) {
    let (inner, outer) = (DropCounter::default(), DropCounter::default());
    let (gi, go) = (inner.guard(), outer.guard());
    let h = hub::spawn(move || {
        let _go = go;
        let mut co = Coroutine::new(move |y, x: u32| {
            let _gi = gi;
            hub::sleep(sleep);
            let x = y.suspend(x + 1);
            hub::sleep(sleep);
            x * 10
        });
        let CoroutineResult::Yield(a) = co.resume(1) else {
            panic!("it yields first")
        };
        let CoroutineResult::Return(b) = co.resume(a + 1) else {
            panic!("then returns")
        };
        b
    });
    (h, inner, outer)
}

#[test]
fn a_coroutine_resumed_inside_a_task_may_sleep() {
    hub::run(|| {
        let (h, inner, outer) = task_in_a_coroutine(MS);
        let other = hub::spawn(|| {
            hub::sleep(MS);
            5
        });
        assert_eq!(h.join().unwrap(), 30);
        assert_eq!(other.join().unwrap(), 5);
        assert_eq!((inner.get(), outer.get()), (1, 1));
    });
}

#[test]
fn a_task_killed_while_it_sleeps_inside_a_coroutine_finishes_as_killed() {
    passes_in_child(
        "a_task_killed_while_it_sleeps_inside_a_coroutine_finishes_as_killed",
        || {
            hub::run(|| {
                let (h, inner, outer) = task_in_a_coroutine(HOUR);
                hub::sleep(MS);
                assert_eq!(h.state(), TaskState::Suspended);
                h.kill();
                assert!(h.done(), "kill from a task waits for the death");
                assert!(h.join().unwrap_err().is_killed());
                assert_eq!((inner.get(), outer.get()), (1, 1));
            });
        },
    );
}

#[test]
fn a_task_parked_inside_a_coroutine_at_the_end_of_run_is_unwound() {
    passes_in_child(
        "a_task_parked_inside_a_coroutine_at_the_end_of_run_is_unwound",
        || {
            let counters = hub::run(|| {
                let (h, inner, outer) = task_in_a_coroutine(HOUR);
                hub::sleep(MS);
                drop(h);
                (inner, outer)
            });
            assert_eq!((counters.0.get(), counters.1.get()), (1, 1));
        },
    );
}

/// A future that is pending `n` times (waking itself each time), then
/// ready.
struct PendingTimes(u32);

impl Future for PendingTimes {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn an_async_coroutine_under_block_on_may_sleep_and_be_killed_there() {
    passes_in_child(
        "an_async_coroutine_under_block_on_may_sleep_and_be_killed_there",
        || {
            hub::run(|| {
                // It works ...
                let h = hub::spawn(|| {
                    hub::block_on(AsyncCoroutine::new(|y| {
                        y.block_on(PendingTimes(2));
                        hub::sleep(MS);
                        y.block_on(PendingTimes(1));
                        9
                    }))
                });
                assert_eq!(h.join().unwrap(), 9);
                // ... and is killed cleanly, parked in the hub's sleep or
                // in the bridge's own block_on.
                for in_bridge in [false, true] {
                    let drops = DropCounter::default();
                    let g = drops.guard();
                    let h = hub::spawn(move || {
                        hub::block_on(AsyncCoroutine::new(move |y| {
                            let _g = g;
                            if in_bridge {
                                y.block_on(std::future::pending::<()>());
                            } else {
                                hub::sleep(HOUR);
                            }
                        }))
                    });
                    hub::sleep(MS);
                    h.kill();
                    assert!(h.join().unwrap_err().is_killed());
                    assert_eq!(drops.get(), 1);
                }
            });
        },
    );
}

#[test]
fn maybe_grow_inside_a_task_may_sleep_and_be_killed_there() {
    passes_in_child(
        "maybe_grow_inside_a_task_may_sleep_and_be_killed_there",
        || {
            hub::run(|| {
                // A red zone larger than any stack: always a fresh stack.
                const ALWAYS: usize = usize::MAX;
                let h = hub::spawn(|| {
                    corostack::maybe_grow(ALWAYS, 64 * 1024, || {
                        hub::sleep(MS);
                        corostack::maybe_grow(ALWAYS, 64 * 1024, || {
                            hub::yield_now();
                            3
                        })
                    })
                });
                assert_eq!(h.join().unwrap(), 3);
                let drops = DropCounter::default();
                let g = drops.guard();
                let h = hub::spawn(move || {
                    corostack::maybe_grow(ALWAYS, 64 * 1024, move || {
                        let _g = g;
                        hub::sleep(HOUR);
                    })
                });
                hub::sleep(MS);
                h.kill();
                assert!(h.join().unwrap_err().is_killed());
                assert_eq!(drops.get(), 1);
            });
        },
    );
}

// ---------------------------------------------------------------------
// Item 7: a kill whose victim's unwind panics.
// ---------------------------------------------------------------------

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("the closure's destructor panicked");
    }
}

#[test]
fn a_kill_whose_victim_panics_finishes_the_victim_and_wakes_its_joiner() {
    passes_in_child(
        "a_kill_whose_victim_panics_finishes_the_victim_and_wakes_its_joiner",
        || {
            hub::run(|| {
                let p = PanicOnDrop;
                let victim = hub::spawn(move || {
                    let _p = p;
                });
                let killer = victim.kill_handle();
                let joiner = hub::spawn(move || victim.join());
                // The panic is the victim's result: kill returns.
                let r = panic::catch_unwind(AssertUnwindSafe(|| killer.kill()));
                assert!(r.is_ok(), "kill does not raise the victim's panic");
                assert!(killer.done());
                let err = joiner.join().unwrap().unwrap_err();
                assert_eq!(
                    err.panic_message(),
                    Some("the closure's destructor panicked")
                );
            });
        },
    );
}

// ---------------------------------------------------------------------
// Item 8: destructors that suspend while their task is killed.
// ---------------------------------------------------------------------

/// Spawns a task that sleeps forever holding a value whose drop runs
/// `cleanup` (once) and then counts.
fn victim_with_cleanup(drops: &DropCounter, cleanup: impl FnOnce() + 'static) -> JoinHandle<()> {
    let g = drops.guard();
    let mut cleanup = Some(cleanup);
    hub::spawn(move || {
        let _g = g;
        let _c = OnDrop(move || {
            if let Some(c) = cleanup.take() {
                c()
            }
        });
        hub::sleep(HOUR);
    })
}

#[test]
fn a_destructor_of_a_killed_task_may_sleep() {
    passes_in_child("a_destructor_of_a_killed_task_may_sleep", || {
        hub::run(|| {
            let drops = DropCounter::default();
            let slept = Rc::new(Cell::new(false));
            let s = slept.clone();
            let h = victim_with_cleanup(&drops, move || {
                let start = Instant::now();
                hub::sleep(3 * MS);
                s.set(start.elapsed() >= 3 * MS);
            });
            hub::sleep(MS);
            h.kill();
            assert!(slept.get(), "the destructor slept, and kill waited for it");
            assert_eq!(drops.get(), 1);
            assert!(h.join().unwrap_err().is_killed());
        });
    });
}

#[test]
fn a_destructor_of_a_killed_task_may_say_goodbye_on_its_socket() {
    passes_in_child(
        "a_destructor_of_a_killed_task_may_say_goodbye_on_its_socket",
        || {
            hub::run(|| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let server = hub::spawn(move || {
                    let (conn, _) = listener.accept().unwrap();
                    let _bye = OnDrop(move || {
                        (&conn).write_all(b"bye").unwrap();
                        // A read that waits: the peer answers.
                        let mut ack = [0; 3];
                        (&conn).read_exact(&mut ack).unwrap();
                        assert_eq!(&ack, b"ack");
                    });
                    hub::sleep(HOUR);
                });
                let mut client = TcpStream::connect(addr).unwrap();
                let k = server.kill_handle();
                let killer = hub::spawn(move || k.kill());
                let mut bye = [0; 3];
                client.read_exact(&mut bye).unwrap();
                assert_eq!(&bye, b"bye");
                client.write_all(b"ack").unwrap();
                killer.join().unwrap();
                assert!(server.join().unwrap_err().is_killed());
            });
        },
    );
}

#[test]
fn a_destructor_of_a_killed_task_may_block_on_a_future() {
    passes_in_child(
        "a_destructor_of_a_killed_task_may_block_on_a_future",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let h = victim_with_cleanup(&drops, || {
                    hub::block_on(PendingTimes(3));
                    let v = hub::block_on(hub::remote().spawn(|| 6 * 7)).unwrap();
                    assert_eq!(v, 42);
                });
                hub::sleep(MS);
                h.kill();
                assert_eq!(drops.get(), 1);
                assert!(h.join().unwrap_err().is_killed());
            });
        },
    );
}

#[test]
fn a_destructor_of_a_killed_task_may_time_out_its_own_wait() {
    passes_in_child(
        "a_destructor_of_a_killed_task_may_time_out_its_own_wait",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let timed_out = Rc::new(Cell::new(false));
                let t = timed_out.clone();
                let h = victim_with_cleanup(&drops, move || {
                    t.set(hub::timeout(2 * MS, || hub::sleep(HOUR)).is_err());
                });
                hub::sleep(MS);
                h.kill();
                assert!(timed_out.get(), "the timeout inside the destructor fired");
                assert_eq!(drops.get(), 1);
            });
        },
    );
}

#[test]
fn a_killed_task_that_kills_itself_again_in_a_destructor_goes_on_unwinding() {
    passes_in_child(
        "a_killed_task_that_kills_itself_again_in_a_destructor_goes_on_unwinding",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let me: Rc<RefCell<Option<hub::KillHandle>>> = Rc::default();
                let m = me.clone();
                let after = Rc::new(Cell::new(false));
                let a = after.clone();
                let h = victim_with_cleanup(&drops, move || {
                    m.borrow().as_ref().unwrap().kill();
                    // Not raised again: the destructor goes on, and parks.
                    hub::sleep(MS);
                    a.set(true);
                });
                *me.borrow_mut() = Some(h.kill_handle());
                hub::sleep(MS);
                h.kill();
                assert!(after.get());
                assert_eq!(drops.get(), 1);
                assert!(h.join().unwrap_err().is_killed());
            });
        },
    );
}

#[test]
fn a_second_kill_while_the_first_unwinds_does_not_raise_in_a_destructor() {
    passes_in_child(
        "a_second_kill_while_the_first_unwinds_does_not_raise_in_a_destructor",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let done = Rc::new(Cell::new(false));
                let d = done.clone();
                let h = victim_with_cleanup(&drops, move || {
                    hub::sleep(5 * MS);
                    d.set(true);
                });
                hub::sleep(MS);
                let k = h.kill_handle();
                // Kills the victim first, from another task ...
                let first = hub::spawn(move || k.kill());
                hub::sleep(MS);
                assert_eq!(h.state(), TaskState::Suspended, "its destructor sleeps");
                // ... and again from here, while the destructor sleeps.
                h.kill();
                assert!(done.get(), "the destructor finished its sleep");
                first.join().unwrap();
                assert_eq!(drops.get(), 1);
                assert!(h.join().unwrap_err().is_killed());
            });
        },
    );
}

#[test]
fn two_tasks_whose_destructors_kill_each_other_both_finish() {
    passes_in_child(
        "two_tasks_whose_destructors_kill_each_other_both_finish",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let slots: Rc<RefCell<Vec<hub::KillHandle>>> = Rc::default();
                let (s1, s2) = (slots.clone(), slots.clone());
                let a = victim_with_cleanup(&drops, move || {
                    let b = s1.borrow()[1].clone();
                    b.kill();
                });
                let b = victim_with_cleanup(&drops, move || {
                    let a = s2.borrow()[0].clone();
                    a.kill();
                    hub::sleep(MS);
                });
                slots
                    .borrow_mut()
                    .extend([a.kill_handle(), b.kill_handle()]);
                hub::sleep(MS);
                a.kill();
                assert!(a.done() && b.done());
                assert_eq!(drops.get(), 2);
                assert!(a.join().unwrap_err().is_killed());
                assert!(b.join().unwrap_err().is_killed());
                slots.borrow_mut().clear();
            });
        },
    );
}

#[test]
fn a_destructor_may_spawn_and_join_while_its_task_is_killed() {
    passes_in_child(
        "a_destructor_may_spawn_and_join_while_its_task_is_killed",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let got = Rc::new(Cell::new(0));
                let g = got.clone();
                let h = victim_with_cleanup(&drops, move || {
                    let helper = hub::spawn(|| {
                        hub::sleep(MS);
                        11
                    });
                    g.set(helper.join().unwrap());
                });
                hub::sleep(MS);
                h.kill();
                assert_eq!(got.get(), 11);
                assert_eq!(drops.get(), 1);
            });
        },
    );
}

#[test]
fn destructors_that_sleep_at_the_end_of_run_finish_before_run_returns() {
    passes_in_child(
        "destructors_that_sleep_at_the_end_of_run_finish_before_run_returns",
        || {
            let drops = DropCounter::default();
            let d = drops.clone();
            let finished = Rc::new(Cell::new(0));
            let f = finished.clone();
            let v = hub::run(move || {
                for _ in 0..3 {
                    let f = f.clone();
                    drop(victim_with_cleanup(&d, move || {
                        hub::sleep(2 * MS);
                        f.set(f.get() + 1);
                    }));
                }
                hub::sleep(MS);
                "main's value"
            });
            assert_eq!(v, "main's value");
            assert_eq!(finished.get(), 3);
            assert_eq!(drops.get(), 3);
        },
    );
}

#[test]
fn a_destructor_that_never_finishes_at_the_end_of_run_is_reported_not_hung() {
    let run = in_child(
        "a_destructor_that_never_finishes_at_the_end_of_run_is_reported_not_hung",
        Duration::from_secs(30),
        || {
            let r = panic::catch_unwind(|| {
                hub::Builder::new().shutdown_timeout(Some(20 * MS)).run(|| {
                    let drops = DropCounter::default();
                    drop(victim_with_cleanup(&drops, || hub::sleep(HOUR)));
                    hub::sleep(MS);
                })
            });
            let msg = message(&*r.unwrap_err());
            println!("RUN PANICKED: {msg}");
        },
    );
    if let Some(run) = run {
        let out = run.output();
        // `run` reports the leak; the thread that leaked aborts at its exit,
        // before its thread-locals die (issue 20).
        assert_aborts_at_thread_exit(&run);
        assert!(out.contains("RUN PANICKED"), "{out}");
        assert!(
            out.contains("shutdown timeout") && out.contains("leaked"),
            "{out}"
        );
    }
}

#[test]
fn a_destructor_deadlocked_at_the_end_of_run_is_reported_at_once() {
    let run = in_child(
        "a_destructor_deadlocked_at_the_end_of_run_is_reported_at_once",
        Duration::from_secs(30),
        || {
            let start = Instant::now();
            let r = panic::catch_unwind(|| {
                // No timeout at all: only the deadlock ends it.
                hub::Builder::new().shutdown_timeout(None).run(|| {
                    let never = Event::new();
                    let drops = DropCounter::default();
                    drop(victim_with_cleanup(&drops, move || never.wait()));
                    hub::sleep(MS);
                })
            });
            let msg = message(&*r.unwrap_err());
            println!("RUN PANICKED after {:?}: {msg}", start.elapsed());
        },
    );
    if let Some(run) = run {
        let out = run.output();
        // `run` reports the leak; the thread that leaked aborts at its exit,
        // before its thread-locals die (issue 20).
        assert_aborts_at_thread_exit(&run);
        assert!(
            out.contains("RUN PANICKED") && out.contains("deadlock"),
            "{out}"
        );
    }
}

// ---------------------------------------------------------------------
// Item 10: sockets used in a later hub.
// ---------------------------------------------------------------------

#[test]
fn a_stream_made_in_one_hub_reads_in_the_next() {
    passes_in_child("a_stream_made_in_one_hub_reads_in_the_next", || {
        let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = peer_listener.local_addr().unwrap();
        let stream = hub::run(move || TcpStream::connect(addr).unwrap());
        let (mut peer, _) = peer_listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(b"late").unwrap();
            peer
        });
        let (got, stream) = hub::run(move || {
            let mut stream = stream;
            let mut buf = [0; 4];
            stream.read_exact(&mut buf).unwrap();
            (buf, stream)
        });
        assert_eq!(&got, b"late");
        let mut peer = writer.join().unwrap();
        // And in a third, writing.
        hub::run(move || {
            let mut stream = stream;
            stream.write_all(b"back").unwrap();
        });
        let mut buf = [0; 4];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
    });
}

#[test]
fn a_listener_and_a_udp_socket_made_in_one_hub_wait_in_the_next() {
    passes_in_child(
        "a_listener_and_a_udp_socket_made_in_one_hub_wait_in_the_next",
        || {
            let (listener, udp) = hub::run(|| {
                (
                    TcpListener::bind("127.0.0.1:0").unwrap(),
                    UdpSocket::bind("127.0.0.1:0").unwrap(),
                )
            });
            let (laddr, uaddr) = (listener.local_addr().unwrap(), udp.local_addr().unwrap());
            let other = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let c = std::net::TcpStream::connect(laddr).unwrap();
                let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                u.send_to(b"dgram", uaddr).unwrap();
                c
            });
            hub::run(move || {
                let (_conn, _) = listener.accept().unwrap();
                let mut buf = [0; 8];
                let (n, _) = udp.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"dgram");
            });
            drop(other.join().unwrap());
        },
    );
}

// ---------------------------------------------------------------------
// Item 11: counters that must not wrap.
// ---------------------------------------------------------------------

#[test]
fn adding_permits_past_usize_max_panics_and_keeps_the_count() {
    let sem = Semaphore::new(1);
    let r = panic::catch_unwind(AssertUnwindSafe(|| sem.add_permits(usize::MAX)));
    let msg = message(&*r.unwrap_err());
    assert!(msg.contains("would overflow"), "{msg}");
    assert_eq!(sem.available(), 1);
    sem.add_permits(usize::MAX - 1);
    assert_eq!(sem.available(), usize::MAX);
}

// ---------------------------------------------------------------------
// The kill's rules.
// ---------------------------------------------------------------------

#[test]
fn kill_from_a_task_waits_for_the_death_and_from_the_loop_only_asks() {
    let drops2 = DropCounter::default();
    let d2 = drops2.clone();
    hub::run(move || {
        let drops = DropCounter::default();
        let h = victim_with_cleanup(&drops, || hub::sleep(2 * MS));
        hub::sleep(MS);
        h.kill();
        assert_eq!(h.state(), TaskState::Finished);
        assert_eq!(drops.get(), 1);
        // A destructor that the loop runs (a call_later's closure dropped
        // at the end of run) kills: it asks, and the victim dies later.
        let v = victim_with_cleanup(&d2, || hub::sleep(MS));
        let k = v.kill_handle();
        let asked = OnDrop(move || k.kill());
        hub::call_later(HOUR, move || drop(asked));
        drop(v);
        hub::sleep(MS);
    });
    assert_eq!(drops2.get(), 1);
}

#[test]
fn a_task_that_catches_a_kill_can_be_killed_again() {
    hub::run(|| {
        let caught = Rc::new(Cell::new(0));
        let c = caught.clone();
        let h = hub::spawn(move || {
            for _ in 0..2 {
                let r = panic::catch_unwind(|| hub::sleep(HOUR));
                if r.is_err() {
                    c.set(c.get() + 1);
                }
            }
            hub::sleep(HOUR);
        });
        hub::sleep(MS);
        // Each kill waits for a death that the victim refuses: kill from
        // helpers, which wait until the third kill.
        let killers: Vec<_> = (0..3)
            .map(|i| {
                let k = h.kill_handle();
                let c = caught.clone();
                let killer = hub::spawn(move || k.kill());
                hub::sleep(MS);
                assert_eq!(c.get(), (i + 1).min(2));
                killer
            })
            .collect();
        for k in killers {
            k.join().unwrap();
        }
        assert_eq!(caught.get(), 2);
        assert!(h.join().unwrap_err().is_killed());
    });
}

// ---------------------------------------------------------------------
// Raising: never inside a destructor during an unwind.
// ---------------------------------------------------------------------

/// Spawns a task that panics with `msg` after a short sleep, holding a
/// value whose destructor sets `entered` and then sleeps `ms`.
fn panicking_task_whose_destructor_sleeps(
    entered: &Event,
    drops: &DropCounter,
    ms: u64,
    msg: &'static str,
) -> JoinHandle<()> {
    let (e, g) = (entered.clone(), drops.guard());
    hub::spawn(move || {
        let _g = g;
        let _c = OnDrop(move || {
            e.set();
            hub::sleep(Duration::from_millis(ms));
        });
        hub::sleep(MS);
        panic!("{msg}");
    })
}

#[test]
fn a_kill_of_a_task_unwinding_from_its_own_panic_waits_for_that_unwind() {
    passes_in_child(
        "a_kill_of_a_task_unwinding_from_its_own_panic_waits_for_that_unwind",
        || {
            hub::run(|| {
                let entered = Event::new();
                let drops = DropCounter::default();
                let h = panicking_task_whose_destructor_sleeps(&entered, &drops, 3, "its own");
                entered.wait();
                // Raising the kill in that destructor would abort: kill
                // waits for the unwind instead, and the panic is the result.
                h.kill();
                assert_eq!(drops.get(), 1);
                assert_eq!(h.join().unwrap_err().panic_message(), Some("its own"));
            });
        },
    );
}

#[test]
fn a_task_unwinding_from_its_own_panic_does_not_hold_back_the_kill_of_another() {
    passes_in_child(
        "a_task_unwinding_from_its_own_panic_does_not_hold_back_the_kill_of_another",
        || {
            hub::run(|| {
                let entered = Event::new();
                let drops = DropCounter::default();
                let slow = util::scaled(50, 1000) as u64;
                let u = panicking_task_whose_destructor_sleeps(&entered, &drops, slow, "u's");
                let v = victim_with_cleanup(&drops, || hub::sleep(MS));
                entered.wait();
                // The thread unwinds (u's panic, parked in u's destructor):
                // the hub knows whose unwind it is, and kills v at once.
                v.kill();
                assert!(v.join().unwrap_err().is_killed());
                assert!(!u.done(), "u still unwinds");
                // Then kills u: not raised in its destructor; u's panic is
                // its result.
                u.kill();
                assert_eq!(u.join().unwrap_err().panic_message(), Some("u's"));
                assert_eq!(drops.get(), 2);
            });
        },
    );
}

#[test]
fn a_panicking_destructor_run_by_the_loop_at_the_end_is_raised_after_the_cleanup() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let r = panic::catch_unwind(AssertUnwindSafe(move || {
        hub::run(move || {
            drop(victim_with_cleanup(&d, || hub::sleep(MS)));
            let p = PanicOnDrop;
            hub::call_later(HOUR, move || drop(p));
            hub::sleep(MS);
        })
    }));
    let msg = message(&*r.unwrap_err());
    assert_eq!(msg, "the closure's destructor panicked");
    assert_eq!(drops.get(), 1, "the other tasks were still killed");
}

#[test]
fn a_deadlock_while_main_unwinds_ends_run_with_the_deadlock_not_an_abort() {
    let run = in_child(
        "a_deadlock_while_main_unwinds_ends_run_with_the_deadlock_not_an_abort",
        Duration::from_secs(30),
        || {
            let r = panic::catch_unwind(|| {
                hub::run(|| {
                    let never = Event::new();
                    let _waits = OnDrop(move || never.wait());
                    panic!("main's own panic");
                })
            });
            println!("RUN PANICKED: {}", message(&*r.unwrap_err()));
        },
    );
    if let Some(run) = run {
        let out = run.output();
        // `run` reports the leak; the thread that leaked aborts at its exit,
        // before its thread-locals die (issue 20).
        assert_aborts_at_thread_exit(&run);
        assert!(
            out.contains("RUN PANICKED: corostack::hub: deadlock"),
            "{out}"
        );
    }
}

#[test]
fn a_task_that_parked_while_nothing_unwound_is_killed_at_once_during_anothers_unwind() {
    passes_in_child(
        "a_task_that_parked_while_nothing_unwound_is_killed_at_once_during_anothers_unwind",
        || {
            hub::run(|| {
                let drops = DropCounter::default();
                let slow = util::scaled(40, 800) as u64;
                // v parks while nothing unwinds.
                let v = victim_with_cleanup(&drops, || ());
                hub::sleep(MS);
                // a dies slowly (a kill's unwind the hub knows of) ...
                let a =
                    victim_with_cleanup(&drops, move || hub::sleep(Duration::from_millis(slow)));
                hub::sleep(MS);
                let ka = a.kill_handle();
                let killer = hub::spawn(move || ka.kill());
                hub::sleep(MS);
                // ... while u starts a panic of its own, whose destructor
                // parks: the hub cannot tell that unwind from a's.
                let entered = Event::new();
                let u = panicking_task_whose_destructor_sleeps(&entered, &drops, 3 * slow, "u's");
                entered.wait();
                while !a.done() {
                    hub::sleep(MS);
                }
                // Now only u unwinds, unknown to the hub. v parked while
                // nothing unwound: it has no unwind of its own, and is
                // killed at once.
                v.kill();
                assert!(v.join().unwrap_err().is_killed());
                assert!(!u.done(), "u still unwinds");
                // u itself is not raised into: its kill waits for its
                // unwind, whose panic is its result.
                u.kill();
                assert_eq!(u.join().unwrap_err().panic_message(), Some("u's"));
                killer.join().unwrap();
                assert!(a.join().unwrap_err().is_killed());
                assert_eq!(drops.get(), 3);
            });
        },
    );
}
