//! The task record: what the scheduler keeps of each coroutine ([`Task`]),
//! the [`Waiter`] that wakes one park of it, and the [`Slot`] its body
//! leaves its value in. A leaf of the scheduler: the hub (`hub.rs`), the
//! kills (`kill.rs`) and the loop (`run.rs`) build on it.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use corostack::coroutine::{Coroutine, Yielder};
use corostack::stack::DefaultStack;

use crate::task::{TaskError, TaskState};

/// The coroutine that runs a task's body.
pub(crate) type Co = Coroutine<(), (), (), DefaultStack>;

/// One coroutine of a hub, untyped (the value goes through the
/// [`JoinHandle`](crate::JoinHandle)'s slot). Its fields are the
/// scheduler's; other files read what they need through its methods.
pub(crate) struct Task {
    /// Unique within the process, so that a cross-thread wake-up naming a
    /// slab key can tell a reused key from its task.
    pub(super) id: u64,
    /// The task's key in the hub's slab of live tasks.
    pub(super) key: Cell<usize>,
    /// The coroutine; `None` once finished.
    pub(super) co: RefCell<Option<Co>>,
    /// The task's [`Yielder`], which lives in the first frame of its own
    /// stack for as long as the body runs; null before the first resume.
    pub(super) yielder: Cell<*const Yielder<(), ()>>,
    pub(super) state: Cell<TaskState>,
    /// Counts the task's resumptions: a [`Waiter`] made during one run
    /// wakes the task only from the park that ends that run.
    pub(super) epoch: Cell<u64>,
    /// In the ready queue now.
    pub(super) queued: Cell<bool>,
    /// A kill is pending: it is raised at the task's next park where it
    /// can be (see the scheduler's docs), or, for a task that never
    /// started, when it is first resumed.
    pub(super) kill_requested: Cell<bool>,
    /// A kill was raised into the task (its `KillSelf` unwinds, or was
    /// caught by the body wrapper).
    pub(super) killed: Cell<bool>,
    /// An unwind that the hub raised into this task (a kill, a timeout's
    /// interrupt, a deadlock) is in flight: the value of the hub's scope
    /// counter when it was raised. While it is set, the hub raises nothing
    /// more into the task, except the interrupt of a `timeout` scope
    /// entered after it (a scope a destructor opened).
    pub(super) unwinding: Cell<Option<u64>>,
    /// Nothing unwound on the thread when the task last parked, so it has
    /// no unwind of its own in flight (true before it starts).
    pub(super) parked_calm: Cell<bool>,
    /// It parked while the thread unwound, and the hub could not tell
    /// whether the unwind was its own.
    pub(super) suspect: Cell<bool>,
    /// In the hub's list of tasks whose pending raise had to wait.
    pub(super) deferred: Cell<bool>,
    /// A [`timeout`](crate::timeout) that expired: the id of its scope, to
    /// raise at the next park.
    pub(super) interrupt: Cell<Option<u64>>,
    /// The coroutines waiting for this one to finish (in
    /// [`JoinHandle::join`](crate::JoinHandle::join), or in a [`JoinHandle::kill`](crate::JoinHandle::kill) that waits).
    pub(super) waiters: RefCell<Vec<Waiter>>,
    /// The task this one waits to finish (in a join or a kill), to see a
    /// cycle of kills waiting on each other.
    pub(super) waits_for: RefCell<Weak<Task>>,
    /// The wait in `waits_for` is a kill's (given up on a cycle).
    pub(super) kill_waiting: Cell<bool>,
    /// The hub found every coroutine waiting with nothing left that could
    /// wake one (set on the main coroutine, raised at its park).
    pub(super) deadlock: Cell<bool>,
}

impl Task {
    /// Its number, unique in the process.
    #[inline(always)]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Its key in the hub's slab of live tasks.
    #[inline(always)]
    pub(crate) fn key(&self) -> usize {
        self.key.get()
    }

    /// The number of its current run (see [`Waiter`]).
    #[inline(always)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Moves on a generation without parking, so that a wake-up sent for a
    /// park it skipped cannot wake its next, unrelated park.
    #[inline(always)]
    pub(crate) fn skip_epoch(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
    }

    /// Where it is in its life.
    #[inline(always)]
    pub(crate) fn state(&self) -> TaskState {
        self.state.get()
    }

    /// Whether its body is suspended, in the middle of its frames: it has
    /// started and not finished (its yielder is set exactly then).
    #[inline]
    pub(crate) fn is_suspended(&self) -> bool {
        !self.yielder.get().is_null()
    }

    /// Forgets the interrupt of the `timeout` scope `scope` if it was
    /// raised and not yet delivered (the scope ended first).
    pub(crate) fn clear_interrupt(&self, scope: u64) {
        if self.interrupt.get() == Some(scope) {
            self.interrupt.set(None);
        }
    }

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
}

/// A way to wake one task from one park: made by the task before it
/// parks, handed to whatever it waits for. Waking it again, or after the
/// task moved on (it was woken by something else, or killed), does
/// nothing, so stale waiters left in queues are harmless.
pub(crate) struct Waiter {
    pub(super) task: Rc<Task>,
    pub(super) epoch: u64,
}

impl Waiter {
    /// Whether waking would still do something.
    pub(crate) fn is_live(&self) -> bool {
        self.task.epoch.get() == self.epoch && self.task.state.get() != TaskState::Finished
    }
}

/// The slot where a task's body leaves its value.
pub(crate) type Slot<T> = Rc<Cell<Option<Result<T, TaskError>>>>;
