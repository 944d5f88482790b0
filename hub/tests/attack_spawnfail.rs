//! Attacks on the work that the hub's loop starts itself when no stack can
//! be mapped for it (`Remote::spawn`'s `JoinError::NotStarted`,
//! `call_later`'s back-off and give-up): destructors that panic, that use
//! the hub from the loop, that touch their own handle; cancels during the
//! back-off; the end of `run` meanwhile; many remote jobs at once; the
//! error's text and its travels. Each scenario that could crash runs in a
//! child process (a watchdog turns a hang into a failure).
//!
//! Most scenarios are Linux only: the loop's mapping is made to fail for
//! real by lowering `RLIMIT_AS` to what the child uses (read from
//! `/proc/self/status`) and then holding every free stack.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use corostack_hub as hub;
use hub_util::passes_in_child;
#[cfg(target_os = "linux")]
use hub_util::{cannot_limit, limit_address_space};
use util::{DropCounter, message};

// ---------------------------------------------------------------------
// Helpers (Linux only: `/proc/self/status` and RLIMIT_AS).

/// The hub with no stack left to give: the address space limited, and
/// coroutines holding every stack the pool and the limit allowed, until
/// [`Starved::end`] (or the end of `run`, which kills them).
#[cfg(target_os = "linux")]
struct Starved {
    release: hub::sync::Event,
    held: Vec<hub::JoinHandle<usize>>,
}

#[cfg(target_os = "linux")]
impl Starved {
    /// In a coroutine: lowers the limit and takes every stack.
    fn new() -> Starved {
        limit_address_space(Some(256 * 1024));
        let release = hub::sync::Event::new();
        let mut held = Vec::new();
        loop {
            let r = release.clone();
            let i = held.len();
            match hub::try_spawn(move || {
                r.wait();
                i
            }) {
                Ok(h) => held.push(h),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory, "{e}");
                    break;
                }
            }
            assert!(held.len() < 10_000, "the limit never stopped a stack");
        }
        // The next mapping really fails (what the loop will meet).
        assert!(hub::try_spawn(|| ()).is_err());
        Starved { release, held }
    }

    /// Lifts the limit and lets the holders finish: each returns its index.
    fn end(self) {
        limit_address_space(None);
        self.release.set();
        for (i, r) in hub::join_all(self.held).into_iter().enumerate() {
            assert_eq!(r.ok(), Some(i), "a holder was disturbed");
        }
    }
}

/// Panics with `msg` when dropped.
struct PanicsOnDrop(&'static str);
impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

/// Waits in a coroutine until `done`, for at most `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        hub::sleep(Duration::from_millis(2));
    }
}

const GIVEN_UP: &str = "a `call_later` function was dropped without running";

/// Asserts that a child run passed and returns its stderr.
fn child_passed(run: hub_util::ChildRun) -> String {
    hub_util::assert_passed(&run);
    run.stderr
}

// ---------------------------------------------------------------------
// Portable attacks (no address-space limit needed).

#[test]
fn not_started_is_send_sync_and_says_why_with_its_source() {
    use std::error::Error as _;

    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    // As before the handle shared its state with the timer: a
    // `catch_unwind(|| call.cancel())` still compiles.
    unwind_safe::<hub::CallLater>();
    let err = hub::JoinError::NotStarted(std::io::Error::new(
        std::io::ErrorKind::OutOfMemory,
        "cannot map a coroutine stack of 1 MiB",
    ));
    send_sync(&err);
    // Moved to another thread and read there.
    let (text, source, debug, not_started, killed, panic_msg) = std::thread::spawn(move || {
        (
            err.to_string(),
            err.source().map(ToString::to_string),
            format!("{err:?}"),
            err.is_not_started(),
            err.is_killed(),
            err.panic_message().map(str::to_owned),
        )
    })
    .join()
    .unwrap();
    assert!(text.starts_with("the coroutine never started"), "{text}");
    assert!(text.contains("RLIMIT_AS"), "{text}");
    // The mapping's message is the source's, not repeated in Display.
    assert!(!text.contains("1 MiB"), "{text}");
    assert_eq!(
        source.as_deref(),
        Some("cannot map a coroutine stack of 1 MiB")
    );
    assert!(debug.contains("NotStarted"), "{debug}");
    assert!(not_started && !killed && panic_msg.is_none());
    // The other cases have no source and are not "not started".
    assert!(hub::JoinError::Killed.source().is_none());
    assert!(!hub::JoinError::Killed.is_not_started());
    let p = hub::run(|| hub::spawn(|| panic!("no 22")).join().unwrap_err());
    assert!(p.source().is_none() && !p.is_not_started() && p.into_panic().is_some());
}

/// Calls `CallLater`'s methods on the handles in its cell when dropped,
/// and notes what they said.
struct TouchesHandles {
    handles: Rc<RefCell<Vec<hub::CallLater>>>,
    seen: Rc<RefCell<Vec<(bool, bool, bool)>>>,
    drop_them: bool,
}
impl Drop for TouchesHandles {
    fn drop(&mut self) {
        let handles = if self.drop_them {
            self.handles.take()
        } else {
            std::mem::take(&mut *self.handles.borrow_mut())
        };
        for h in &handles {
            let seen = (h.is_pending(), h.cancel(), h.take_error().is_some());
            self.seen.borrow_mut().push(seen);
        }
        if !self.drop_them {
            *self.handles.borrow_mut() = handles;
        }
    }
}

#[test]
fn pending_calls_dropped_by_the_end_of_run_may_touch_their_handles() {
    // The end of `run` drops every pending call in the loop; a destructor
    // that asks its own handle, or another pending call's, whether it is
    // pending, or cancels it, must get an answer (`false`: nothing runs
    // any more), not a `RefCell` borrow panic raised by `run`.
    passes_in_child(
        "pending_calls_dropped_by_the_end_of_run_may_touch_their_handles",
        || {
            let handles = Rc::new(RefCell::new(Vec::new()));
            let seen = Rc::new(RefCell::new(Vec::new()));
            let (h, s) = (handles.clone(), seen.clone());
            let ran = Rc::new(Cell::new(0));
            let r = ran.clone();
            let result = panic::catch_unwind(AssertUnwindSafe(move || {
                hub::run(move || {
                    for _ in 0..3 {
                        let toucher = TouchesHandles {
                            handles: h.clone(),
                            seen: s.clone(),
                            drop_them: false,
                        };
                        let r = r.clone();
                        let call = hub::call_later(Duration::from_secs(3600), move || {
                            let _t = toucher;
                            r.set(r.get() + 1);
                        });
                        h.borrow_mut().push(call);
                    }
                    assert!(h.borrow().iter().all(hub::CallLater::is_pending));
                })
            }));
            if let Err(p) = result {
                panic!("`run` raised a destructor's panic: {}", message(&*p));
            }
            assert_eq!(ran.get(), 0);
            let seen = seen.take();
            // Three destructors, three handles each: all answered.
            assert_eq!(seen.len(), 9, "{seen:?}");
            assert!(seen.iter().all(|s| *s == (false, false, false)), "{seen:?}");
        },
    );
}

// ---------------------------------------------------------------------
// `call_later` without a stack (Linux only: RLIMIT_AS, see the top).

/// Schedules a call that holds `guard` and sets `ran` if it runs.
#[cfg(target_os = "linux")]
fn counted_call<G: 'static>(ran: &Rc<Cell<bool>>, guard: G) -> hub::CallLater {
    let r = ran.clone();
    hub::call_later(Duration::ZERO, move || {
        let _g = guard;
        r.set(true);
    })
}

#[cfg(target_os = "linux")]
#[test]
fn given_up_call_whose_destructor_panics_is_raised_by_run_at_its_end() {
    const NAME: &str = "given_up_call_whose_destructor_panics_is_raised_by_run_at_its_end";
    if cannot_limit() {
        return;
    }
    let run = hub_util::in_child(NAME, Duration::from_secs(60), || {
        let main_done = Rc::new(Cell::new(false));
        let m = main_done.clone();
        let dropped = DropCounter::default();
        let d = dropped.clone();
        let p = panic::catch_unwind(AssertUnwindSafe(move || {
            hub::run(move || {
                // A coroutine of the hub that keeps ticking meanwhile (and
                // keeps its stack until told to stop).
                let (ticks, stop) = (Rc::new(Cell::new(0u32)), Rc::new(Cell::new(false)));
                let (t, s) = (ticks.clone(), stop.clone());
                let ticker = hub::spawn(move || {
                    while !s.get() {
                        hub::sleep(Duration::from_millis(5));
                        t.set(t.get() + 1);
                    }
                    "ticked"
                });
                let starved = Starved::new();
                let ran = Rc::new(Cell::new(false));
                let call = counted_call(&ran, (d.guard(), PanicsOnDrop("the call's destructor")));
                wait_until(Duration::from_secs(10), "the give-up", || {
                    !call.is_pending()
                });
                assert!(!ran.get());
                assert_eq!(d.get(), 1, "dropped once, at the give-up");
                let err = call.take_error().expect("given up: its error");
                assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory, "{err}");
                assert!(call.take_error().is_none(), "taken once");
                assert!(!call.cancel());
                // The ticker went on through the back-off (about a second).
                assert!(ticks.get() > 50, "{} ticks", ticks.get());
                stop.set(true);
                assert_eq!(ticker.join().unwrap(), "ticked");
                starved.end();
                // The hub goes on: a new call runs.
                let again = Rc::new(Cell::new(false));
                let _c = counted_call(&again, ());
                wait_until(Duration::from_secs(5), "a later call", || again.get());
                m.set(true);
            })
        }));
        assert!(main_done.get(), "the main coroutine did not finish");
        assert_eq!(dropped.get(), 1);
        let p = p.expect_err("`run` raises the destructor's panic at its end");
        assert_eq!(message(&*p), "the call's destructor");
    });
    if let Some(run) = run {
        let stderr = child_passed(run);
        // The handle was kept: its error went there, not to stderr.
        assert!(!stderr.contains(GIVEN_UP), "{stderr}");
    }
}

/// Uses the hub from the loop when dropped: what a `call_later` closure's
/// destructor may do when the call is given up.
#[cfg(target_os = "linux")]
struct UsesHubOnDrop {
    log: Rc<RefCell<Vec<String>>>,
    later: Rc<RefCell<Option<hub::CallLater>>>,
    later_ran: Rc<Cell<bool>>,
    remote: Rc<RefCell<Option<hub::RemoteJoinHandle<u32>>>>,
}

#[cfg(target_os = "linux")]
impl Drop for UsesHubOnDrop {
    fn drop(&mut self) {
        let mut log = self.log.borrow_mut();
        log.push(format!("in hub: {}", hub::is_in_hub()));
        // No stack yet: an error, not a panic.
        match hub::try_spawn(|| ()) {
            Ok(_) => log.push("try_spawn: ok".into()),
            Err(e) => log.push(format!("try_spawn: {:?}", e.kind())),
        }
        // A new call (tried again in turn) and a remote job.
        let r = self.later_ran.clone();
        *self.later.borrow_mut() = Some(hub::call_later(Duration::ZERO, move || r.set(true)));
        *self.remote.borrow_mut() = Some(hub::remote().spawn(|| 5));
        drop(log);
        // Not in a coroutine: a panic, kept for `run`.
        hub::sleep(Duration::from_millis(1));
        unreachable!("slept in the loop");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn given_up_call_whose_destructor_uses_the_hub_from_the_loop() {
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "given_up_call_whose_destructor_uses_the_hub_from_the_loop",
        || {
            let log = Rc::new(RefCell::new(Vec::new()));
            let later = Rc::new(RefCell::new(None));
            let later_ran = Rc::new(Cell::new(false));
            let remote = Rc::new(RefCell::new(None));
            let user = UsesHubOnDrop {
                log: log.clone(),
                later: later.clone(),
                later_ran: later_ran.clone(),
                remote: remote.clone(),
            };
            let (l, lr, rm) = (later.clone(), later_ran.clone(), remote.clone());
            let p = panic::catch_unwind(AssertUnwindSafe(move || {
                hub::run(move || {
                    let starved = Starved::new();
                    let ran = Rc::new(Cell::new(false));
                    let call = counted_call(&ran, user);
                    wait_until(Duration::from_secs(10), "the give-up", || {
                        !call.is_pending()
                    });
                    assert!(call.take_error().is_some());
                    // The destructor's call is pending (its own tries).
                    let later = l.borrow_mut().take().expect("the destructor's call");
                    starved.end();
                    // Stacks are back: the destructor's call runs, and its
                    // remote job either ran or was told NotStarted.
                    wait_until(Duration::from_secs(5), "the later call", || lr.get());
                    assert!(!later.is_pending() && later.take_error().is_none());
                    let job = rm.borrow_mut().take().expect("the destructor's job");
                    match hub::block_on(job) {
                        Ok(v) => assert_eq!(v, 5),
                        Err(e) => assert!(e.is_not_started(), "{e:?}"),
                    }
                    assert!(!ran.get());
                })
            }));
            let p = p.expect_err("`run` raises the sleep's panic");
            // It says where the call was made: the hub runs, its loop does.
            assert!(
                message(&*p).starts_with(
                    "corostack::hub: `hub::sleep` was called from the hub's loop (a destructor \
                     or callback that the loop ran), not from one of its coroutines"
                ),
                "{}",
                message(&*p)
            );
            let log = log.take();
            assert_eq!(log, ["in hub: true", "try_spawn: OutOfMemory"], "{log:?}");
        },
    );
}

#[cfg(target_os = "linux")]
#[test]
fn given_up_call_whose_destructor_touches_its_own_handle() {
    // The destructor runs before the error is stored: it finds the call
    // not pending, nothing to cancel, no error yet; the handle it keeps
    // has the error afterwards; one it drops sends the error to stderr.
    const NAME: &str = "given_up_call_whose_destructor_touches_its_own_handle";
    if cannot_limit() {
        return;
    }
    let run = hub_util::in_child(NAME, Duration::from_secs(60), || {
        hub::run(|| {
            let starved = Starved::new();
            let (kept, dropped) = (
                Rc::new(RefCell::new(Vec::new())),
                Rc::new(RefCell::new(Vec::new())),
            );
            let seen = Rc::new(RefCell::new(Vec::new()));
            let ran = Rc::new(Cell::new(false));
            for (cell, drop_them) in [(&kept, false), (&dropped, true)] {
                let toucher = TouchesHandles {
                    handles: cell.clone(),
                    seen: seen.clone(),
                    drop_them,
                };
                let call = counted_call(&ran, toucher);
                cell.borrow_mut().push(call);
            }
            wait_until(Duration::from_secs(10), "the give-ups", || {
                seen.borrow().len() == 2
            });
            assert!(!ran.get());
            assert_eq!(*seen.borrow(), [(false, false, false); 2]);
            assert!(dropped.borrow().is_empty(), "the destructor dropped it");
            let kept = kept.take();
            let err = kept[0].take_error().expect("stored after the destructor");
            assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory);
            starved.end();
        });
    });
    if let Some(run) = run {
        let stderr = child_passed(run);
        assert_eq!(stderr.matches(GIVEN_UP).count(), 1, "{stderr}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn cancel_during_the_back_off_means_it_never_runs() {
    if cannot_limit() {
        return;
    }
    passes_in_child("cancel_during_the_back_off_means_it_never_runs", || {
        let dropped = DropCounter::default();
        let d = dropped.clone();
        hub::run(move || {
            let starved = Starved::new();
            let ran = Rc::new(Cell::new(false));
            let first = counted_call(&ran, d.guard());
            let late = counted_call(&ran, d.guard());
            // A few tries in: the first one's timer has changed keys.
            hub::sleep(Duration::from_millis(5));
            assert!(first.is_pending() && first.is_pending());
            assert!(first.cancel(), "pending during the back-off");
            assert_eq!(d.get(), 1, "cancel drops it at once");
            assert!(!first.is_pending() && !first.cancel());
            // Several tries later (1+2+...+64 ms).
            hub::sleep(Duration::from_millis(150));
            assert!(late.is_pending());
            assert!(late.cancel());
            assert_eq!(d.get(), 2);
            starved.end();
            hub::sleep(Duration::from_millis(100));
            assert!(!ran.get(), "a cancelled call ran");
            assert!(first.take_error().is_none() && late.take_error().is_none());
        });
        assert_eq!(dropped.get(), 2, "each dropped once");
    });
}

#[cfg(target_os = "linux")]
#[test]
fn a_given_up_calls_error_is_read_after_run_in_another_hub_and_at_thread_exit() {
    /// Takes the error of its handle when the thread's locals die.
    struct AtExit(
        Option<hub::CallLater>,
        std::sync::mpsc::Sender<Option<String>>,
    );
    impl Drop for AtExit {
        fn drop(&mut self) {
            let call = self.0.take().unwrap();
            let _ = self.1.send(call.take_error().map(|e| e.to_string()));
        }
    }
    thread_local! {
        static EXIT: RefCell<Option<AtExit>> = const { RefCell::new(None) };
    }

    /// A hub whose only call is given up; the handle outlives it.
    fn given_up() -> (hub::CallLater, hub::CallLater) {
        hub::run(|| {
            let starved = Starved::new();
            let ran = Rc::new(Cell::new(false));
            let (a, b) = (counted_call(&ran, ()), counted_call(&ran, ()));
            wait_until(Duration::from_secs(10), "the give-up", || {
                !a.is_pending() && !b.is_pending()
            });
            starved.end();
            assert!(!ran.get());
            (a, b)
        })
    }

    if cannot_limit() {
        return;
    }
    passes_in_child(
        "a_given_up_calls_error_is_read_after_run_in_another_hub_and_at_thread_exit",
        || {
            let (tx, rx) = std::sync::mpsc::channel();
            // On a thread, whose locals die at its exit (started before
            // the limit).
            let t = std::thread::spawn(move || {
                let (a, b) = given_up();
                assert!(a.take_error().is_some());
                EXIT.with(|e| *e.borrow_mut() = Some(AtExit(Some(b), tx)));
            });
            t.join().unwrap();
            let at_exit = rx.recv().expect("the thread-local's destructor ran");
            let at_exit = at_exit.expect("the error, at thread exit");
            assert!(
                at_exit.contains("cannot map a coroutine stack"),
                "{at_exit}"
            );
            // Here: after `run`, twice; in a later hub.
            let (a, b) = given_up();
            assert!(a.take_error().is_some());
            assert!(a.take_error().is_none(), "taken once");
            let p = panic::catch_unwind(|| a.is_pending()).unwrap_err();
            assert!(message(&*p).contains("outside a hub"), "{}", message(&*p));
            let (err, pending) = hub::run(move || {
                let p = panic::catch_unwind(AssertUnwindSafe(|| b.cancel()));
                (b.take_error(), p.is_err())
            });
            assert!(err.is_some(), "read in a later hub");
            assert!(pending, "cancel in another hub panics, as documented");
        },
    );
}

#[cfg(target_os = "linux")]
#[test]
fn the_end_of_run_during_the_back_off_drops_the_call_at_once() {
    const NAME: &str = "the_end_of_run_during_the_back_off_drops_the_call_at_once";
    if cannot_limit() {
        return;
    }
    let run = hub_util::in_child(NAME, Duration::from_secs(60), || {
        corostack::stack::trim_pool();
        let before = corostack::DefaultStack::live();
        let dropped = DropCounter::default();
        let d = dropped.clone();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let (call, returned) = hub::run(move || {
            // Left starved: the end of `run` kills the holders.
            std::mem::forget(Starved::new());
            let call = counted_call(&r, d.guard());
            hub::sleep(Duration::from_millis(20));
            assert!(call.is_pending(), "in its back-off");
            assert_eq!(d.get(), 0);
            (call, std::time::Instant::now())
        });
        let ended = returned.elapsed();
        limit_address_space(None);
        assert!(!ran.get());
        assert_eq!(dropped.get(), 1, "dropped once by the end of run");
        // Not waited for: the back-off had up to a second to go.
        assert!(ended < Duration::from_millis(300), "{ended:?}");
        assert!(call.take_error().is_none(), "dropped, not given up");
        corostack::stack::trim_pool();
        assert_eq!(corostack::DefaultStack::live(), before, "stacks leaked");
    });
    if let Some(run) = run {
        let stderr = child_passed(run);
        assert!(!stderr.contains(GIVEN_UP), "{stderr}");
    }
}

// ---------------------------------------------------------------------
// `Remote::spawn` without a stack (Linux only: RLIMIT_AS, see the top).

/// Counts its drop; `Send`, for a `Remote`'s closure.
struct CountOnDrop(std::sync::Arc<std::sync::atomic::AtomicUsize>);
impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `ask` on a thread started (its allocator warmed) before the
/// limit, with the hub's `Remote`, while the hub is starved; then ends the
/// starvation and returns what `ask` returned.
#[cfg(target_os = "linux")]
fn ask_while_starved<R: Send + 'static>(ask: impl FnOnce(hub::Remote) -> R + Send + 'static) -> R {
    let (remote_tx, remote_rx) = std::sync::mpsc::channel::<hub::Remote>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let asker = std::thread::spawn(move || {
        drop(std::hint::black_box(vec![0u8; 64 * 1024]));
        ready_tx.send(()).unwrap();
        ask(remote_rx.recv().unwrap())
    });
    ready_rx.recv().unwrap();
    hub::run(move || {
        let starved = Starved::new();
        remote_tx.send(hub::remote()).unwrap();
        wait_until(Duration::from_secs(20), "the asking thread", || {
            asker.is_finished()
        });
        starved.end();
        asker.join().unwrap()
    })
}

#[cfg(target_os = "linux")]
#[test]
fn a_remote_job_whose_destructor_panics_is_not_started_and_run_raises_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "a_remote_job_whose_destructor_panics_is_not_started_and_run_raises_it",
        || {
            let dropped = Arc::new(AtomicUsize::new(0));
            let d = dropped.clone();
            let p = panic::catch_unwind(AssertUnwindSafe(|| {
                ask_while_starved(move |remote| {
                    let (g, bomb) = (CountOnDrop(d), PanicsOnDrop("the job's destructor"));
                    let first = remote
                        .spawn(move || {
                            let _g = (g, bomb);
                            1
                        })
                        .join();
                    // The job whose destructor blocks on another job's
                    // result on the hub's thread: a documented panic.
                    let r = remote.clone();
                    let blocks = remote
                        .spawn(move || {
                            let _ = r;
                            2
                        })
                        .join();
                    (first, blocks)
                })
            }));
            let p = p.expect_err("`run` raises the destructor's panic");
            assert_eq!(message(&*p), "the job's destructor");
            assert_eq!(dropped.load(Ordering::SeqCst), 1);
        },
    );
}

/// Blocks on another remote job of its hub when dropped (on the hub's
/// thread, in the loop: `join` panics, as documented).
struct JoinsOnDrop(Option<hub::Remote>);
impl Drop for JoinsOnDrop {
    fn drop(&mut self) {
        let remote = self.0.take().unwrap();
        let _ = remote.spawn(|| 3).join();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_remote_job_whose_destructor_joins_another_job_of_its_hub() {
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "a_remote_job_whose_destructor_joins_another_job_of_its_hub",
        || {
            let (result, p) = {
                let out = std::sync::Arc::new(std::sync::Mutex::new(None));
                let o = out.clone();
                let p = panic::catch_unwind(AssertUnwindSafe(|| {
                    ask_while_starved(move |remote| {
                        let joins = JoinsOnDrop(Some(remote.clone()));
                        let r = remote
                            .spawn(move || {
                                let _j = joins;
                                1
                            })
                            .join();
                        *o.lock().unwrap() = Some(r);
                    })
                }));
                (out.lock().unwrap().take(), p)
            };
            let err = result.expect("the asker finished").unwrap_err();
            assert!(err.is_not_started(), "{err:?}");
            let p = p.expect_err("`run` raises the join's panic");
            assert!(
                message(&*p).contains("called on the thread of the hub"),
                "{}",
                message(&*p)
            );
        },
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_hundred_remote_jobs_without_stacks_then_with_them() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "a_hundred_remote_jobs_without_stacks_then_with_them",
        || {
            let ran = Arc::new(AtomicUsize::new(0));
            let dropped = Arc::new(AtomicUsize::new(0));
            let (r, d) = (ran.clone(), dropped.clone());
            let (remote_tx, remote_rx) = mpsc::channel::<hub::Remote>();
            let (ready_tx, ready_rx) = mpsc::channel::<()>();
            let (sent_tx, sent_rx) = mpsc::channel::<()>();
            let asker = std::thread::spawn(move || {
                drop(std::hint::black_box(vec![0u8; 64 * 1024]));
                ready_tx.send(()).unwrap();
                let remote = remote_rx.recv().unwrap();
                let job = |i: usize| {
                    let (r, g) = (r.clone(), CountOnDrop(d.clone()));
                    move || {
                        let _g = g;
                        r.fetch_add(1, Ordering::SeqCst);
                        i
                    }
                };
                // A hundred at once while no stack can be had, then joined.
                let handles: Vec<_> = (0..100).map(|i| remote.spawn(job(i))).collect();
                let starved: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
                let text = starved[0].as_ref().unwrap_err().to_string();
                // A hundred more, as the stacks come back.
                let handles: Vec<_> = (0..100).map(|i| remote.spawn(job(i))).collect();
                sent_tx.send(()).unwrap();
                let back: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
                (starved, text, back)
            });
            ready_rx.recv().unwrap();
            let (starved, text, back) = hub::run(move || {
                let starved = Starved::new();
                remote_tx.send(hub::remote()).unwrap();
                wait_until(Duration::from_secs(20), "the first hundred", || {
                    sent_rx.try_recv().is_ok()
                });
                starved.end();
                wait_until(Duration::from_secs(20), "the asker", || asker.is_finished());
                asker.join().unwrap()
            });
            // Each handle got one result: NotStarted, nothing ran.
            for r in &starved {
                assert!(
                    r.as_ref().is_err_and(hub::JoinError::is_not_started),
                    "{r:?}"
                );
            }
            assert!(text.contains("never started"), "{text}");
            // The second hundred: each ran, or (drained before the stacks came
            // back) was told NotStarted; never both, never Killed.
            let mut ok = 0;
            for (i, r) in back.iter().enumerate() {
                match r {
                    Ok(v) => {
                        assert_eq!(*v, i);
                        ok += 1;
                    }
                    Err(e) => assert!(e.is_not_started(), "{e:?}"),
                }
            }
            assert_eq!(ran.load(Ordering::SeqCst), ok);
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                200,
                "each closure dropped once"
            );
        },
    );
}

/// A panic payload whose own drop panics.
struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the payload's drop");
        }
    }
}

/// Panics with a [`Bomb`] as its payload when dropped.
struct PanicsWithABomb;
impl Drop for PanicsWithABomb {
    fn drop(&mut self) {
        panic::panic_any(Bomb);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn remote_jobs_whose_destructors_panic_with_payloads_that_panic_on_drop() {
    // The loop keeps the first panic of the destructors it runs and drops
    // the later ones' payloads: a payload whose drop panics must not
    // unwind out of the loop (the hub's other tasks would be leaked).
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "remote_jobs_whose_destructors_panic_with_payloads_that_panic_on_drop",
        || {
            let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let o = out.clone();
            let p = panic::catch_unwind(AssertUnwindSafe(|| {
                ask_while_starved(move |remote| {
                    for _ in 0..3 {
                        let b = PanicsWithABomb;
                        let r = remote
                            .spawn(move || {
                                let _b = b;
                            })
                            .join();
                        o.lock().unwrap().push(r.map_err(|e| e.is_not_started()));
                    }
                })
            }));
            // Each job was told NotStarted (the loop went on after the
            // first payload was kept).
            assert_eq!(*out.lock().unwrap(), [Err(true), Err(true), Err(true)]);
            // The first payload, not a panic out of the loop.
            let p = p.expect_err("`run` raises the first destructor's panic");
            assert!(p.is::<Bomb>(), "{}", message(&*p));
            // Dropping it is the caller's business: it panics, caught here.
            let dropped = panic::catch_unwind(AssertUnwindSafe(move || drop(p)));
            assert!(dropped.is_err());
        },
    );
}
