//! The handles of a spawned coroutine: [`JoinHandle`], which joins,
//! reads the state of or kills it, and [`KillHandle`], which only kills.

use std::fmt;
use std::rc::Rc;

use crate::scheduler::{self, Slot, Task};
use crate::task::{JoinError, TaskState};

/// Owns a spawned coroutine's result: [`join`](JoinHandle::join) waits for
/// it. Dropping the handle detaches the coroutine, which runs on; its
/// result is dropped when it ends, and a panic from that drop is raised by
/// [`run`](crate::run) once every coroutine has finished (as one from a
/// destructor that the end of `run` runs).
///
/// ```
/// use corostack_hub as hub;
///
/// let sum = hub::run(|| {
///     let a = hub::spawn(|| 20);
///     let b = hub::spawn(|| 22);
///     a.join().unwrap() + b.join().unwrap()
/// });
/// assert_eq!(sum, 42);
/// ```
///
/// # Threads and hubs
///
/// The handle stays on the thread of its hub: it is neither `Send` nor
/// `Sync` (whatever `T` is).
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// corostack_hub::run(|| send(corostack_hub::spawn(|| 1)));
/// ```
///
/// ```compile_fail
/// fn sync<T: Sync>(_: &T) {}
/// corostack_hub::run(|| sync(&corostack_hub::spawn(|| 1)));
/// ```
///
/// It may outlive its hub: a hub ends only once each of its coroutines
/// has finished (or was leaked, which counts as killed), so in a later hub
/// [`join`](JoinHandle::join) returns the result at once and
/// [`kill`](JoinHandle::kill) does nothing; neither touches the later
/// hub.
pub struct JoinHandle<T> {
    task: Rc<Task>,
    slot: Slot<T>,
}

impl<T> JoinHandle<T> {
    /// The handle of a task just spawned, with the slot its body fills.
    pub(crate) fn new((task, slot): (Rc<Task>, Slot<T>)) -> JoinHandle<T> {
        JoinHandle { task, slot }
    }
}

impl<T> JoinHandle<T> {
    /// Waits, cooperatively, until the coroutine has finished, and returns
    /// its value, or why there is none.
    ///
    /// # Errors
    /// [`JoinError::Panicked`] with the payload when the coroutine
    /// panicked; [`JoinError::Killed`] when it was killed before it
    /// returned (by a kill, or by the end of its hub). Never
    /// [`JoinError::NotStarted`]: a coroutine that has a `JoinHandle` has
    /// its stack.
    ///
    /// # Panics
    /// Outside a hub's coroutine: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs) unless
    /// the coroutine has finished ([`done`](JoinHandle::done): nothing to
    /// wait for); [Outside a hub](crate#outside-a-hub) has both messages.
    /// When a coroutine joins itself.
    #[track_caller]
    pub fn join(self) -> Result<T, JoinError> {
        let hub = scheduler::hub("JoinHandle::join");
        if std::ptr::eq(hub.current_ptr(), Rc::as_ptr(&self.task)) {
            panic!("corostack::hub: a coroutine cannot join itself");
        }
        self.task.wait_finished(hub, false);
        self.take()
    }

    /// The result of a finished task.
    pub(crate) fn take(&self) -> Result<T, JoinError> {
        match self.slot.take() {
            Some(r) => r.map_err(JoinError::from),
            None => Err(JoinError::Killed),
        }
    }

    /// Whether the coroutine has finished (returned, panicked or was
    /// killed): [`join`](JoinHandle::join) would return at once.
    ///
    /// The answers of the handle's questions are all there is to them
    /// (`#[must_use]`, as the crate's `deny` would say):
    ///
    /// ```compile_fail
    /// #![deny(unused_must_use)]
    /// corostack_hub::run(|| {
    ///     let h = corostack_hub::spawn(|| 1);
    ///     h.done(); // meant: assert!(h.done()), or a join
    /// });
    /// ```
    #[must_use]
    pub fn done(&self) -> bool {
        self.task.state() == TaskState::Finished
    }

    /// Whether the coroutine has started: it has run, runs now, or has
    /// finished (one killed before it ran has finished too). `false` while
    /// it is [`Pending`](TaskState::Pending). With [`done`](JoinHandle::done),
    /// the names of the core's coroutines (see the crate docs of
    /// [`corostack`]).
    ///
    /// ```
    /// use corostack_hub as hub;
    ///
    /// hub::run(|| {
    ///     let h = hub::spawn(hub::yield_now);
    ///     assert!(!h.started());
    ///     hub::yield_now(); // it runs, and yields back
    ///     assert!(h.started() && !h.done());
    ///     h.join().unwrap();
    /// });
    /// ```
    #[must_use]
    pub fn started(&self) -> bool {
        self.task.state() != TaskState::Pending
    }

    /// Where the coroutine is in its life.
    #[must_use]
    pub fn state(&self) -> TaskState {
        self.task.state()
    }

    /// A number that names this coroutine among all of the process's.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.task.id()
    }

    /// Kills the coroutine (gevent's `kill(block=True)`): its pending
    /// sleep, read or join (or, if it never started, its first resume)
    /// raises a private payload, so its stack unwinds in an ordinary resume
    /// of its own: every destructor on it runs, and may itself sleep, do
    /// I/O, spawn, kill or join (see the [scheduler's rules](crate#killing)).
    /// Its waiters are woken, and `join` returns [`JoinError::Killed`] (or
    /// [`JoinError::Panicked`] if its unwind ended in a panic of its own,
    /// such as a panicking destructor of a closure that never ran). Does
    /// nothing to a finished one.
    ///
    /// - Called from a coroutine, `kill` waits (cooperatively) until the
    ///   victim has finished, however long its destructors take; the
    ///   victim runs next. It does not wait when the victim is itself
    ///   waiting, directly or through others, for the caller to finish (a
    ///   destructor that kills the coroutine that is killing it): that
    ///   wait could never end. Nor when the victim may be unwinding from a
    ///   panic of its own that the hub cannot tell apart from another
    ///   coroutine's unwind (see [Killing](crate#killing)): its kill lands
    ///   when that is known.
    /// - A coroutine that kills itself unwinds from this call; if it is
    ///   already unwinding from a kill (the call is in one of its
    ///   destructors), the call does nothing: it is dying already. If it
    ///   is unwinding from something else (its own panic, a `timeout`),
    ///   the kill is raised at its next park where it can be.
    /// - Called outside any coroutine (a destructor that the hub's loop
    ///   runs), `kill` asks for the kill and returns; the victim unwinds
    ///   when the loop runs it next. The same from a greenlet other than
    ///   the one the hub runs in (a hub run inside a greenlet, one of whose
    ///   coroutines switched to the thread's main greenlet): that code is
    ///   no coroutine of the hub, even when the victim is the coroutine
    ///   that switched away, which unwinds at its next park once switched
    ///   back to.
    ///
    /// A second kill of a coroutine whose kill is unwinding does nothing: a
    /// kill is never raised inside a destructor that runs during an unwind.
    /// A kill of a coroutine that is unwinding from its own panic waits
    /// until that unwind ends (its result is then the panic); a kill that
    /// is still waiting to be raised when the coroutine returns does
    /// nothing (`join` gives the value).
    ///
    /// # Panics
    /// Outside a hub. The victim's panics never reach the caller: they are
    /// the victim's result.
    #[track_caller]
    pub fn kill(&self) {
        let hub = scheduler::hub("JoinHandle::kill");
        hub.kill(&self.task);
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.task.id())
            .field("state", &self.task.state())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// A handle that can kill this coroutine, and be cloned and kept while
    /// this `JoinHandle` is joined (gevent's greenlet objects are shared
    /// this way).
    #[must_use]
    pub fn kill_handle(&self) -> KillHandle {
        KillHandle {
            task: self.task.clone(),
        }
    }
}

/// Kills one coroutine; made by [`JoinHandle::kill_handle`]. As the
/// `JoinHandle`, it is neither `Send` nor `Sync`, and once its hub has
/// ended its [`kill`](KillHandle::kill) does nothing.
///
/// ```
/// use std::time::Duration;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let worker = hub::spawn(|| hub::sleep(Duration::from_secs(60)));
///     let killer = worker.kill_handle();
///     // Another coroutine stops the worker while this one joins it.
///     hub::spawn(move || killer.kill());
///     assert!(worker.join().unwrap_err().is_killed());
/// });
/// ```
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// corostack_hub::run(|| send(corostack_hub::spawn(|| 1).kill_handle()));
/// ```
///
/// ```compile_fail
/// fn sync<T: Sync>(_: &T) {}
/// corostack_hub::run(|| sync(&corostack_hub::spawn(|| 1).kill_handle()));
/// ```
#[derive(Clone)]
pub struct KillHandle {
    task: Rc<Task>,
}

impl KillHandle {
    /// Kills the coroutine, as [`JoinHandle::kill`] does (from a coroutine,
    /// it waits for the death).
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn kill(&self) {
        scheduler::hub("KillHandle::kill").kill(&self.task);
    }

    /// Whether the coroutine has finished, as [`JoinHandle::done`].
    #[must_use]
    pub fn done(&self) -> bool {
        self.task.state() == TaskState::Finished
    }

    /// Whether the coroutine has started, as [`JoinHandle::started`].
    #[must_use]
    pub fn started(&self) -> bool {
        self.task.state() != TaskState::Pending
    }

    /// Where the coroutine is in its life, as [`JoinHandle::state`].
    #[must_use]
    pub fn state(&self) -> TaskState {
        self.task.state()
    }

    /// The coroutine's number, as [`JoinHandle::id`].
    #[must_use]
    pub fn id(&self) -> u64 {
        self.task.id()
    }
}

impl fmt::Debug for KillHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillHandle")
            .field("id", &self.task.id())
            .field("state", &self.task.state())
            .finish()
    }
}
