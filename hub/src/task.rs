//! Tasks: the hub's record of one coroutine, the [`JoinHandle`] that waits
//! for it, and the [`Waiter`] that wakes a parked task.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};

use stackful::coroutine::{Coroutine, Yielder};
use stackful::stack::DefaultStack;

use super::scheduler::{self, Hub};

/// The coroutine that runs a task's body.
pub(crate) type Co = Coroutine<(), (), (), DefaultStack>;

/// Where a coroutine is in its life, as asyncio names a task's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Spawned, and not yet run.
    Pending,
    /// Running now: it is the caller (only one coroutine runs at a time).
    Running,
    /// Started, and waiting (in a sleep, a read, a join, ...) or ready to
    /// continue.
    Suspended,
    /// Returned, panicked or was killed: [`JoinHandle::join`] returns at
    /// once.
    Finished,
}

/// Why [`JoinHandle::join`] has no value.
pub enum JoinError {
    /// The coroutine panicked; this is the payload, as
    /// [`std::thread::JoinHandle::join`] gives it.
    Panicked(Box<dyn Any + Send + 'static>),
    /// The coroutine was killed ([`JoinHandle::kill`], the end of
    /// [`run`](super::run), or the end of its hub) before it returned.
    Killed,
}

impl JoinError {
    /// Whether the coroutine panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panicked(_))
    }

    /// Whether the coroutine was killed.
    pub fn is_killed(&self) -> bool {
        matches!(self, JoinError::Killed)
    }

    /// The panic's payload, if the coroutine panicked.
    pub fn into_panic(self) -> Option<Box<dyn Any + Send + 'static>> {
        match self {
            JoinError::Panicked(p) => Some(p),
            JoinError::Killed => None,
        }
    }

    /// The panic's message, when its payload is a string (as `panic!`
    /// with a format makes it).
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(p) => p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str)),
            JoinError::Killed => None,
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(_) => match self.panic_message() {
                Some(m) => write!(f, "Panicked({m:?})"),
                None => f.write_str("Panicked(..)"),
            },
            JoinError::Killed => f.write_str("Killed"),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(_) => match self.panic_message() {
                Some(m) => write!(f, "the coroutine panicked: {m}"),
                None => f.write_str("the coroutine panicked"),
            },
            JoinError::Killed => f.write_str("the coroutine was killed"),
        }
    }
}

impl std::error::Error for JoinError {}

/// The payload that unwinds a killed coroutine: raised at its pending (or
/// next) park, or at once by a coroutine that kills itself, and caught by
/// the task's body wrapper, which finishes the task as killed.
pub(crate) struct KillSelf;

/// One coroutine of a hub, untyped (the value goes through the
/// [`JoinHandle`]'s slot).
pub(crate) struct Task {
    /// Unique within the process, so that a cross-thread wake-up naming a
    /// slab key can tell a reused key from its task.
    pub(crate) id: u64,
    /// The task's key in the hub's slab of live tasks.
    pub(crate) key: Cell<usize>,
    /// The coroutine; `None` once finished.
    pub(crate) co: RefCell<Option<Co>>,
    /// The task's [`Yielder`], which lives in the first frame of its own
    /// stack for as long as the body runs; null before the first resume.
    pub(crate) yielder: Cell<*const Yielder<(), ()>>,
    pub(crate) state: Cell<TaskState>,
    /// Counts the task's resumptions: a [`Waiter`] made during one run
    /// wakes the task only from the park that ends that run.
    pub(crate) epoch: Cell<u64>,
    /// In the ready queue now.
    pub(crate) queued: Cell<bool>,
    /// A kill is pending: it is raised at the task's next park where it
    /// can be (see the scheduler's docs), or, for a task that never
    /// started, when it is first resumed.
    pub(crate) kill_requested: Cell<bool>,
    /// A kill was raised into the task (its `KillSelf` unwinds, or was
    /// caught by the body wrapper).
    pub(crate) killed: Cell<bool>,
    /// An unwind that the hub raised into this task (a kill, a timeout's
    /// interrupt, a deadlock) is in flight: the value of the hub's scope
    /// counter when it was raised. While it is set, the hub raises nothing
    /// more into the task, except the interrupt of a `timeout` scope
    /// entered after it (a scope a destructor opened).
    pub(crate) unwinding: Cell<Option<u64>>,
    /// Nothing unwound on the thread when the task last parked, so it has
    /// no unwind of its own in flight (true before it starts).
    pub(crate) parked_calm: Cell<bool>,
    /// It parked while the thread unwound, and the hub could not tell
    /// whether the unwind was its own.
    pub(crate) suspect: Cell<bool>,
    /// In the hub's list of tasks whose pending raise had to wait.
    pub(crate) deferred: Cell<bool>,
    /// A [`timeout`](super::timeout) that expired: the id of its scope, to
    /// raise at the next park.
    pub(crate) interrupt: Cell<Option<u64>>,
    /// The coroutines waiting for this one to finish (in
    /// [`JoinHandle::join`], or in a [`JoinHandle::kill`] that waits).
    pub(crate) waiters: RefCell<Vec<Waiter>>,
    /// The task this one waits to finish (in a join or a kill), to see a
    /// cycle of kills waiting on each other.
    pub(crate) waits_for: RefCell<Weak<Task>>,
    /// The wait in `waits_for` is a kill's (given up on a cycle).
    pub(crate) kill_waiting: Cell<bool>,
    /// The hub found every coroutine waiting with nothing left that could
    /// wake one (set on the main coroutine, raised at its park).
    pub(crate) deadlock: Cell<bool>,
}

impl Task {
    /// Warms the cache for resuming this task soon (see
    /// `Hub::prefetch_next`): its coroutine's link word, and with `frames`
    /// the suspended frames it points at.
    #[inline]
    pub(crate) fn prefetch_coroutine(&self, frames: bool) {
        if let Ok(co) = self.co.try_borrow()
            && let Some(co) = co.as_ref()
        {
            co.prefetch(frames);
        }
    }

    pub(crate) fn new(id: u64) -> Task {
        Task {
            id,
            key: Cell::new(usize::MAX),
            co: RefCell::new(None),
            yielder: Cell::new(std::ptr::null()),
            state: Cell::new(TaskState::Pending),
            epoch: Cell::new(0),
            queued: Cell::new(false),
            kill_requested: Cell::new(false),
            killed: Cell::new(false),
            unwinding: Cell::new(None),
            parked_calm: Cell::new(true),
            suspect: Cell::new(false),
            deferred: Cell::new(false),
            interrupt: Cell::new(None),
            waiters: RefCell::new(Vec::new()),
            waits_for: RefCell::new(Weak::new()),
            kill_waiting: Cell::new(false),
            deadlock: Cell::new(false),
        }
    }

    /// Parks the running task until `self` has finished: a join, or with
    /// `kill` the wait of a kill for its victim's death.
    ///
    /// A kill's wait is given up when it would close a cycle of waits (the
    /// victim waits, through joins and kills, for the killer): when this
    /// wait would close one, the kills waiting on the cycle are woken to
    /// see it and give up; a cycle of joins alone is the caller's deadlock,
    /// as with threads (the hub's deadlock detection reports it).
    #[track_caller]
    pub(crate) fn wait_finished(self: &Rc<Task>, hub: &Hub, kill: bool) {
        let me = hub.current_task();
        *me.waits_for.borrow_mut() = Rc::downgrade(self);
        me.kill_waiting.set(kill);
        /// Forgets what the task waited for, however the wait ends.
        struct Forget<'a>(&'a Task);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                *self.0.waits_for.borrow_mut() = Weak::new();
                self.0.kill_waiting.set(false);
            }
        }
        let _forget = Forget(&me);
        while self.state.get() != TaskState::Finished {
            if kill && self.suspect.get() {
                // The victim may be unwinding from a panic of its own,
                // which the hub cannot see: its kill cannot be raised until
                // that is known, and waiting could hold up the unwind that
                // would tell (see the scheduler's "Raising").
                return;
            }
            if let Some(chain) = hub.cycle_through(self, &me) {
                if kill {
                    return;
                }
                for t in chain.iter().filter(|t| t.kill_waiting.get()) {
                    hub.wake_any(t);
                }
            }
            {
                let mut waiters = self.waiters.borrow_mut();
                if waiters.len() >= 8 {
                    waiters.retain(Waiter::is_live);
                }
                waiters.push(Waiter::current(hub));
            }
            scheduler::park(hub);
        }
    }
}

/// A way to wake one task from one park: made by the task before it
/// parks, handed to whatever it waits for. Waking it again, or after the
/// task moved on (it was woken by something else, or killed), does
/// nothing, so stale waiters left in queues are harmless.
pub(crate) struct Waiter {
    pub(crate) task: Rc<Task>,
    pub(crate) epoch: u64,
}

impl Waiter {
    /// A waiter for the running task's next park.
    ///
    /// # Panics
    /// Outside a hub's coroutine.
    #[track_caller]
    pub(crate) fn current(hub: &Hub) -> Waiter {
        let task = hub.current_task();
        let epoch = task.epoch.get();
        Waiter { task, epoch }
    }

    /// Wakes the task if it is still in the park this waiter was made
    /// for; returns whether it did.
    pub(crate) fn wake(&self) -> bool {
        scheduler::try_with_hub(|hub| hub.wake(&self.task, self.epoch)).unwrap_or(false)
    }

    /// Whether waking would still do something.
    pub(crate) fn is_live(&self) -> bool {
        self.task.epoch.get() == self.epoch && self.task.state.get() != TaskState::Finished
    }
}

/// The slot where a task's body leaves its value.
pub(crate) type Slot<T> = Rc<Cell<Option<Result<T, JoinError>>>>;

/// Owns a spawned coroutine's result: [`join`](JoinHandle::join) waits for
/// it. Dropping the handle detaches the coroutine, which runs on.
///
/// ```
/// use stackful_hub as hub;
///
/// let sum = hub::run(|| {
///     let a = hub::spawn(|| 20);
///     let b = hub::spawn(|| 22);
///     a.join().unwrap() + b.join().unwrap()
/// });
/// assert_eq!(sum, 42);
/// ```
pub struct JoinHandle<T> {
    pub(crate) task: Rc<Task>,
    pub(crate) slot: Slot<T>,
}

impl<T> JoinHandle<T> {
    /// Waits, cooperatively, until the coroutine has finished, and returns
    /// its value, or why there is none.
    ///
    /// # Panics
    /// Outside a hub's coroutine, and when a coroutine joins itself.
    #[track_caller]
    pub fn join(self) -> Result<T, JoinError> {
        let hub = scheduler::hub("JoinHandle::join");
        if std::ptr::eq(hub.current_ptr(), Rc::as_ptr(&self.task)) {
            panic!("stackful::hub: a coroutine cannot join itself");
        }
        self.task.wait_finished(hub, false);
        self.take()
    }

    /// The result of a finished task.
    pub(crate) fn take(&self) -> Result<T, JoinError> {
        match self.slot.take() {
            Some(r) => r,
            None => Err(JoinError::Killed),
        }
    }

    /// Whether the coroutine has finished (returned, panicked or was
    /// killed): [`join`](JoinHandle::join) would return at once.
    pub fn is_finished(&self) -> bool {
        self.task.state.get() == TaskState::Finished
    }

    /// Where the coroutine is in its life.
    pub fn state(&self) -> TaskState {
        self.task.state.get()
    }

    /// A number that names this coroutine among all of the process's.
    pub fn id(&self) -> u64 {
        self.task.id
    }

    /// Kills the coroutine (gevent's `kill(block=True)`): its pending
    /// sleep, read or join (or, if it never started, its first resume)
    /// raises a private payload, so its stack unwinds in an ordinary resume
    /// of its own: every destructor on it runs, and may itself sleep, do
    /// I/O, spawn, kill or join (see the [scheduler's rules](super#killing)).
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
    ///   coroutine's unwind (see [Killing](super#killing)): its kill lands
    ///   when that is known.
    /// - A coroutine that kills itself unwinds from this call; if it is
    ///   already unwinding from a kill (the call is in one of its
    ///   destructors), the call does nothing: it is dying already. If it
    ///   is unwinding from something else (its own panic, a `timeout`),
    ///   the kill is raised at its next park where it can be.
    /// - Called outside any coroutine (a destructor that the hub's loop
    ///   runs), `kill` asks for the kill and returns; the victim unwinds
    ///   when the loop runs it next.
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
            .field("id", &self.task.id)
            .field("state", &self.task.state.get())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// A handle that can kill this coroutine, and be cloned and kept while
    /// this `JoinHandle` is joined (gevent's greenlet objects are shared
    /// this way).
    pub fn kill_handle(&self) -> KillHandle {
        KillHandle {
            task: self.task.clone(),
        }
    }
}

/// Kills one coroutine; made by [`JoinHandle::kill_handle`].
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

    /// Whether the coroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.task.state.get() == TaskState::Finished
    }
}

impl fmt::Debug for KillHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillHandle")
            .field("id", &self.task.id)
            .field("state", &self.task.state.get())
            .finish()
    }
}
