//! The time functions: [`sleep`], [`timeout`], [`call_later`], on the
//! scheduler's timers (the timer driver, `driver::timers`, fires them in
//! deadline order, those with the same deadline in the order they were
//! set).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::driver::timers::{TimerKey, deadline_after};
use crate::scheduler::{self, Action, Task, TimeoutUnwind, park_until};

/// Suspends the calling coroutine for `duration`, letting the others run.
///
/// `sleep(Duration::ZERO)` lets every other ready coroutine run first and
/// then continues, as `gevent.sleep(0)` does (see [`yield_now`]).
/// Coroutines whose sleeps end at the same moment wake in the order they
/// went to sleep.
///
/// ```
/// use std::time::{Duration, Instant};
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let start = Instant::now();
///     hub::sleep(Duration::from_millis(5));
///     assert!(start.elapsed() >= Duration::from_millis(5));
/// });
/// ```
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn sleep(duration: Duration) {
    let hub = scheduler::hub("hub::sleep");
    if duration.is_zero() {
        hub.yield_now("hub::sleep");
        return;
    }
    let Some(deadline) = deadline_after(duration) else {
        // Longer than the clock can count: sleep until woken by a kill.
        loop {
            scheduler::park(hub, "hub::sleep");
        }
    };
    while !park_until(hub, Some(deadline), "hub::sleep") && Instant::now() < deadline {}
}

/// Suspends the calling coroutine until `deadline`, letting the others
/// run. Sleeps wake in the order of their deadlines, those with the same
/// deadline in the order they went to sleep; this holds also for a
/// deadline already past when the sleep starts: it waits for the timers
/// like any other (after the coroutines ready now, and after the due
/// sleeps with earlier deadlines, or with the same one that went to sleep
/// before it).
///
/// ```
/// use std::time::{Duration, Instant};
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let deadline = Instant::now() + Duration::from_millis(3);
///     hub::sleep_until(deadline);
///     assert!(Instant::now() >= deadline);
/// });
/// ```
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn sleep_until(deadline: Instant) {
    let hub = scheduler::hub("hub::sleep_until");
    // A deadline already past goes through the timers too, so that it
    // wakes after the due timers set before it.
    while !park_until(hub, Some(deadline), "hub::sleep_until") && Instant::now() < deadline {}
}

/// Lets every other ready coroutine run, then continues.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use corostack_hub as hub;
///
/// let order = hub::run(|| {
///     let order = Rc::new(RefCell::new(Vec::new()));
///     let o = order.clone();
///     let other = hub::spawn(move || o.borrow_mut().push("other"));
///     hub::yield_now();
///     order.borrow_mut().push("main");
///     other.join().unwrap();
///     order.take()
/// });
/// assert_eq!(order, ["other", "main"]);
/// ```
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn yield_now() {
    scheduler::hub("hub::yield_now").yield_now("hub::yield_now");
}

/// The error of a [`timeout`] whose time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(e: Elapsed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

/// Runs `f` in the calling coroutine, and interrupts it if it has not
/// returned after `duration` (gevent's `Timeout`): when the time runs out,
/// the coroutine's pending (or next) suspension — a sleep, a read, a
/// join — unwinds out of `f`, whose destructors run, and `timeout` returns
/// [`Elapsed`]. Code that never suspends is not interrupted.
///
/// Timeouts nest: each interrupts only its own scope.
///
/// ```
/// use std::time::Duration;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let quick = hub::timeout(Duration::from_millis(50), || 7);
///     assert_eq!(quick, Ok(7));
///     let slow = hub::timeout(Duration::from_millis(5), || hub::sleep(Duration::from_secs(10)));
///     assert!(slow.is_err());
/// });
/// ```
///
/// # Errors
/// [`Elapsed`] when `duration` ran out before `f` returned (`f` was
/// interrupted at a suspension and its destructors have run).
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
/// A panic in `f` goes on to the caller.
#[track_caller]
pub fn timeout<T>(duration: Duration, f: impl FnOnce() -> T) -> Result<T, Elapsed> {
    let hub = scheduler::hub("hub::timeout");
    let task = hub.current_task("hub::timeout");
    let Some(deadline) = deadline_after(duration) else {
        return Ok(f());
    };
    let scope = hub.next_scope();
    let key = hub.set_timer(
        deadline,
        Action::Interrupt {
            task: task.clone(),
            scope,
        },
    );
    /// Cancels the timer, and a raised-but-undelivered interrupt, however
    /// the scope ends (the timer alone is gone with its hub: the core's
    /// thread-exit hook may unwind the scope after `run` returned).
    struct Cancel(u64, TimerKey, Rc<Task>, u64);
    impl Drop for Cancel {
        fn drop(&mut self) {
            scheduler::with_hub_id(self.0, |hub| hub.cancel_timer(self.1));
            self.2.clear_interrupt(self.3);
        }
    }
    let cancel = Cancel(hub.id(), key, task, scope);
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    let task = cancel.2.clone();
    drop(cancel);
    match r {
        Ok(v) => Ok(v),
        Err(p) => match p.downcast_ref::<TimeoutUnwind>() {
            Some(t) if t.scope() == scope => {
                hub.end_timeout_unwind(&task, t.outer());
                Err(Elapsed(()))
            }
            _ => panic::resume_unwind(p),
        },
    }
}

/// A function scheduled by [`call_later`]: [`cancel`](CallLater::cancel)
/// stops it if it has not started. Dropping the handle does not cancel.
///
/// If no stack can be mapped for the call's coroutine when its time comes,
/// the call stays pending and is tried again later, and if that keeps
/// failing it is given up: [`take_error`](CallLater::take_error) then
/// returns why (see [`call_later`], "Memory pressure").
///
/// ```
/// use std::time::Duration;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let call = hub::call_later(Duration::from_secs(60), || unreachable!());
///     assert!(call.is_pending());
///     assert!(call.cancel()); // it had not started: it never will
///     assert!(!call.is_pending());
///     let _detached = hub::call_later(Duration::ZERO, || println!("runs"));
/// });
/// ```
///
/// The handle belongs to the hub that scheduled the call, and acts on that
/// hub only: used in another hub (a later `hub::run` on the same thread),
/// or outside any hub, [`cancel`](CallLater::cancel) and
/// [`is_pending`](CallLater::is_pending) panic. It is neither `Send` nor
/// `Sync`, as the hub it names is this thread's:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// corostack_hub::run(|| send(corostack_hub::call_later(std::time::Duration::ZERO, || {})));
/// ```
///
/// ```compile_fail
/// fn sync<T: Sync>(_: &T) {}
/// corostack_hub::run(|| sync(&corostack_hub::call_later(std::time::Duration::ZERO, || {})));
/// ```
#[derive(Debug)]
pub struct CallLater {
    /// The hub that scheduled it ([`Hub::id`](scheduler::Hub::id)).
    hub: u64,
    /// Shared with the timer. An `Rc`, so neither `Send` nor `Sync`: it
    /// names this thread's hub.
    call: Rc<CallState>,
}

/// What a [`CallLater`] shares with its timer's action: the timer's key
/// (each try again sets a new timer), the tries that found no stack, and
/// the error of the last one once the call was given up.
#[derive(Debug)]
pub(crate) struct CallState {
    key: Cell<TimerKey>,
    tries: Cell<u32>,
    error: RefCell<Option<io::Error>>,
}

impl CallState {
    fn new(key: TimerKey) -> Rc<CallState> {
        Rc::new(CallState {
            key: Cell::new(key),
            tries: Cell::new(0),
            error: RefCell::new(None),
        })
    }

    /// The call's timer is now the one at `key` (a try again).
    pub(crate) fn set_key(&self, key: TimerKey) {
        self.key.set(key);
    }

    /// Counts a try that found no stack; returns how many there were.
    pub(crate) fn failed_try(&self) -> u32 {
        let n = self.tries.get() + 1;
        self.tries.set(n);
        n
    }

    /// The call was given up for `error`.
    pub(crate) fn give_up(&self, error: io::Error) {
        *self.error.borrow_mut() = Some(error);
    }
}

// A `CallLater` was `UnwindSafe` and `RefUnwindSafe` when it held its
// timer's key alone, and stays so now that it shares a `CallState` (whose
// cells would take those traits away): no panic can leave that state half
// updated, as each change is one `Cell` set or one `RefCell` borrow that
// runs no user code.
impl std::panic::UnwindSafe for CallLater {}
impl std::panic::RefUnwindSafe for CallLater {}

impl CallLater {
    /// Cancels the call; returns `true` if it had not started yet (it now
    /// never will; this includes a call waiting to be tried again for want
    /// of a stack), `false` if it had already started or was given up
    /// (see [`take_error`](CallLater::take_error)).
    ///
    /// # Panics
    /// Outside the hub that scheduled it: outside any hub, or in another
    /// hub (a later `hub::run`).
    #[track_caller]
    #[expect(
        clippy::must_use_candidate,
        reason = "cancelling is the point; whether the call had started is often not needed"
    )]
    pub fn cancel(&self) -> bool {
        self.own_hub("CallLater::cancel")
            .cancel_timer(self.call.key.get())
    }

    /// Whether the call is still waiting for its time, or waiting to be
    /// tried again because no stack could be mapped for it (see
    /// [`call_later`], "Memory pressure").
    ///
    /// # Panics
    /// Outside the hub that scheduled it: outside any hub, or in another
    /// hub (a later `hub::run`).
    #[track_caller]
    #[must_use]
    pub fn is_pending(&self) -> bool {
        self.own_hub("CallLater::is_pending")
            .timer_is_set(self.call.key.get())
    }

    /// The error that made the hub give the call up, once (later calls
    /// return `None`): no stack could be mapped for its coroutine, at its
    /// time nor at any try again (see [`call_later`], "Memory pressure").
    /// The function was then dropped without running. `None` while the
    /// call is pending, once it has started, or if it was cancelled.
    ///
    /// It only reads the handle: it works anywhere on this thread, also
    /// after the hub has ended.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corostack_hub as hub;
    ///
    /// hub::run(|| {
    ///     let call = hub::call_later(Duration::ZERO, || ());
    ///     hub::sleep(Duration::from_millis(1));
    ///     // It ran (a stack was there): nothing to report.
    ///     assert!(!call.is_pending());
    ///     assert!(call.take_error().is_none());
    /// });
    /// ```
    #[must_use = "the error says why the call never ran"]
    pub fn take_error(&self) -> Option<io::Error> {
        self.call.error.borrow_mut().take()
    }

    /// The hub running here, if it is the one that scheduled the call.
    #[track_caller]
    fn own_hub(&self, what: &str) -> &'static scheduler::Hub {
        let hub = scheduler::hub(what);
        if hub.id() != self.hub {
            panic!(
                "corostack::hub: `{what}` was called in another hub than the one that scheduled \
                 the call: a `CallLater` acts only on its own hub (that hub has ended, and its \
                 call was dropped with it)"
            );
        }
        hub
    }
}

/// Runs `f` in a new coroutine of this hub after `delay` (asyncio's
/// `call_later`); the handle cancels it until then.
///
/// # Memory pressure
///
/// The hub's loop starts the coroutine, so no caller is there to take an
/// error when no stack can be mapped for it (the address space,
/// `RLIMIT_AS` or `vm.max_map_count` ran out). The loop does not panic
/// then: the call stays pending and is tried again after 1 ms, then 2,
/// 4, ... up to 512 ms (10 tries again, about a second in all; the loop
/// sleeps or serves the other coroutines meanwhile), so that it runs, late,
/// as soon as a finished coroutine gives a stack back. If every try
/// fails, the call is given up: `f` is dropped without running (its
/// captures with it, so that a coroutine waiting for what it would send
/// is not left hanging), [`CallLater::is_pending`] turns `false` and
/// [`CallLater::take_error`] returns the mapping's error. If the handle
/// was dropped, nobody could read that error: the hub prints it on
/// stderr instead. A panic of `f`'s destructor then is kept and raised by
/// [`run`](crate::run) at its end, as for the other destructors its loop
/// runs.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let hits = Rc::new(Cell::new(0));
///     let h = hits.clone();
///     hub::call_later(Duration::from_millis(1), move || h.set(h.get() + 1));
///     let h = hits.clone();
///     let cancelled = hub::call_later(Duration::from_millis(1), move || h.set(h.get() + 10));
///     assert!(cancelled.cancel());
///     hub::sleep(Duration::from_millis(20));
///     assert_eq!(hits.get(), 1);
/// });
/// ```
///
/// # Panics
/// Outside a hub.
#[track_caller]
pub fn call_later(delay: Duration, f: impl FnOnce() + 'static) -> CallLater {
    let hub = scheduler::hub("hub::call_later");
    if hub.is_shutting_down() {
        // The end of `run`: nothing new starts.
        drop(f);
        return CallLater {
            hub: hub.id(),
            call: CallState::new((Instant::now(), 0)),
        };
    }
    let deadline =
        deadline_after(delay).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 40));
    // The key is set just below: a key of no timer until then.
    let call = CallState::new((deadline, 0));
    let key = hub.set_timer(deadline, Action::Call(Box::new(f), call.clone()));
    call.set_key(key);
    CallLater {
        hub: hub.id(),
        call,
    }
}
