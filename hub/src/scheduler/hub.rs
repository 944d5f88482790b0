//! The hub's state ([`Hub`]): the per-thread pointer to it, its ready
//! queue, its tasks, the drivers it owns, and the small primitives the rest
//! builds on (wake a task, set a timer, reach the poller, the queue and the
//! pool). Above the task record (`task.rs`); the kills (`kill.rs`) and the
//! loop (`run.rs`) build on it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::poller::{IoCore, IoDriver};
use crate::driver::pool::{Job, Pool};
use crate::driver::queue::Shared;
use crate::driver::timers::{TimerKey, Timers};
use crate::slab::Slab;
use crate::task::TaskState;
use crate::timer::CallState;

use super::task::{Task, Waiter};

thread_local! {
    /// The hub running on this thread, null outside [`run`](super::run).
    pub(super) static HUB: Cell<*const Hub> = const { Cell::new(ptr::null()) };
    /// The thread is exiting while a hub ran on it (`process::exit` from
    /// inside the hub): that hub was [`detach`]ed. No destructor.
    static DETACHED: Cell<bool> = const { Cell::new(false) };
    /// Detaches the running hub when the thread exits (see [`detach`]).
    static DETACH_AT_EXIT: DetachAtExit = const { DetachAtExit };
}

/// A thread-local whose destructor [`detach`]es the hub that still runs on
/// the thread when it exits.
struct DetachAtExit;

impl Drop for DetachAtExit {
    fn drop(&mut self) {
        detach();
    }
}

/// Makes sure that a hub still running when this thread exits is detached
/// before the core's thread-exit hook runs: called by the main task of
/// each `run` when it starts, after the thread's first coroutine start
/// (which registers the hook), so that this thread-local's destructor,
/// registered at its first use, runs before the hook (glibc runs them
/// last registered, first run). A `corostack::thread_exit::rearm` made
/// after that puts the hook first again: then the hook unwinds the tasks
/// with the hub still installed, as without this guard.
#[inline]
pub(super) fn detach_at_thread_exit() {
    let _ = DETACH_AT_EXIT.try_with(|_| ());
}

/// The thread exits (`process::exit` or `libc::exit` from inside a hub:
/// the hub's frames never return): the hub is taken off the thread, so
/// that the coroutines the core's exit hook unwinds next find no hub. Its
/// guards then do nothing ([`with_hub_id`]), and a wait (a park) in their
/// destructors panics (see [`outside`]), which aborts the process there:
/// nothing will ever run the hub's loop again, so nothing could wake it,
/// and suspending would switch into the loop of a thread that is exiting.
fn detach() {
    if !HUB.with(Cell::get).is_null() {
        HUB.with(|h| h.set(ptr::null()));
        DETACHED.with(|d| d.set(true));
    }
}

/// A wait while the core's exit hook unwinds the thread's coroutines:
/// the hub is detached (if it was not yet) and the wait panics, as every
/// hub call after the detach does (see [`outside`]).
#[cold]
#[track_caller]
pub(super) fn exiting(what: &str) -> ! {
    detach();
    outside(what)
}

/// One thread's hub.
pub(crate) struct Hub {
    /// Names this hub among all of the process's (the handles that act on
    /// one hub only check it).
    pub(super) id: u64,
    pub(super) config: Config,
    pub(super) ready: RefCell<VecDeque<Rc<Task>>>,
    pub(super) tasks: RefCell<Slab<Rc<Task>>>,
    pub(super) timers: RefCell<Timers<Action>>,
    pub(super) io: IoDriver<Waiter>,
    pub(super) shared: Arc<Shared>,
    pub(super) blocking: Pool,
    /// The running task, or null while the loop itself runs.
    pub(super) current: Cell<*const Task>,
    /// The thread's stack-pool capacity before the hub raised it to
    /// `config.stack_cache`; given back when the hub ends.
    pub(super) pool_capacity: usize,
    /// Ids for `timeout` scopes.
    pub(super) next_scope: Cell<u64>,
    /// `block_on` calls in progress (a waker elsewhere may wake the hub).
    pub(super) block_ons: Cell<usize>,
    /// The greenlet that the hub's loop runs in, and so its tasks
    /// ([`running_id`](corostack::greenlet::running_id)): a task may suspend
    /// only while it is the running one.
    pub(super) greenlet: usize,
    /// How many live tasks have an unwind in flight that the hub knows of
    /// (their `unwinding` is set).
    pub(super) unwinding: Cell<usize>,
    /// How many parked tasks may be unwinding, unknown to the hub (they
    /// parked while the thread unwound, and it could not tell whose
    /// unwind that was).
    pub(super) suspects: Cell<usize>,
    /// The thread was unwinding when the hub started (a hub run by a
    /// destructor), or the loop itself is (its own code panicked): then
    /// `thread::panicking` is true in every task.
    pub(super) base_panicking: Cell<bool>,
    /// Tasks whose pending kill or interrupt could not be raised at their
    /// last park (see [`Hub::may_raise`]), to wake when it can.
    pub(super) deferred: RefCell<Vec<Rc<Task>>>,
    /// `deferred` is not empty (read after every resume).
    pub(super) has_deferred: Cell<bool>,
    /// The end of `run`: tasks are being killed, and new ones are killed
    /// at birth.
    pub(super) shutting_down: Cell<bool>,
    /// The hub has said that only `Remote`s could wake its coroutines (it
    /// says so once).
    pub(super) remote_warned: Cell<bool>,
    /// The first panic of a destructor that the loop ran at the end, or
    /// of a detached task's result that its task dropped, or of work that
    /// the loop dropped because no stack could be mapped for it.
    pub(super) loop_panic: RefCell<Option<Box<dyn std::any::Any + Send>>>,
}

/// What an expired timer does.
pub(crate) enum Action {
    /// Wakes a parked task.
    Wake(Waiter),
    /// Interrupts a task inside a [`timeout`](crate::timeout) scope.
    Interrupt { task: Rc<Task>, scope: u64 },
    /// Runs a [`call_later`](crate::call_later) function in a new
    /// coroutine; the state is its handle's.
    Call(Box<dyn FnOnce()>, Rc<CallState>),
}

/// The payload that unwinds a [`timeout`](crate::timeout) scope whose
/// time ran out: the scope's id, and the hub-raised unwind that was in
/// flight in the task when it was raised (a destructor's scope; see the
/// module docs).
pub(crate) struct TimeoutUnwind {
    pub(super) scope: u64,
    pub(super) outer: Option<u64>,
}

impl TimeoutUnwind {
    /// The id of the scope whose time ran out.
    pub(crate) fn scope(&self) -> u64 {
        self.scope
    }

    /// The hub-raised unwind that was in flight when it was raised.
    pub(crate) fn outer(&self) -> Option<u64> {
        self.outer
    }
}

/// The settings of one hub (what a [`Builder`](crate::Builder) sets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(super) stack_size: usize,
    pub(super) stack_cache: usize,
    pub(super) blocking_threads: usize,
    pub(super) shutdown_timeout: Option<Duration>,
}

impl Config {
    /// The settings: the size of each task's stack, the stacks the
    /// thread's pool keeps while the hub runs, the blocking threads at
    /// most, and how long the end of `run` waits for killed tasks.
    pub(crate) fn new(
        stack_size: usize,
        stack_cache: usize,
        blocking_threads: usize,
        shutdown_timeout: Option<Duration>,
    ) -> Config {
        Config {
            stack_size,
            stack_cache,
            blocking_threads,
            shutdown_timeout,
        }
    }
}

/// Ids of hubs, unique in the process.
fn next_hub_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Ids of tasks, unique in the process.
pub(super) fn next_task_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The message of every hub function called outside a hub: on a thread
/// that runs none, or while the thread exits (see [`detach`]). A call
/// made from the loop of a hub that runs here has its own message
/// ([`in_loop`]).
#[cold]
#[track_caller]
pub(super) fn outside(what: &str) -> ! {
    if DETACHED.with(Cell::get) {
        panic!(
            "corostack::hub: `{what}` was called while the thread exits (`process::exit` from \
             inside a hub): the hub has stopped, and the core's exit hook is unwinding its \
             suspended coroutines, whose destructors cannot wait (nothing would wake them)"
        );
    }
    panic!(
        "corostack::hub: `{what}` was called outside a hub: run it inside `corostack_hub::run` \
         (or `hub::Builder::run`), on the hub's thread"
    )
}

/// The message of a hub function that needs the running coroutine (it
/// waits, or acts on the caller) when the hub's loop calls it: the hub
/// runs, but no task does (a destructor or callback that the loop itself
/// runs: pending work dropped at the end of `run`, a `call_later`
/// function given up for want of a stack, work a `Remote` handed over
/// that got no stack, a later panic's payload, a closure that `spawn`
/// called from the loop dropped for want of a stack, `run`'s own closure
/// when its coroutine got no stack). Found where the running task is
/// read, so that a call from a task pays nothing more for it. While the
/// thread exits (a hub that a thread-local's destructor runs after the
/// core's exit hook), that message instead ([`exiting`]).
#[cold]
#[inline(never)]
#[track_caller]
pub(super) fn in_loop(what: &str) -> ! {
    if corostack::thread_exit::is_exiting() {
        exiting(what);
    }
    panic!(
        "corostack::hub: `{what}` was called from the hub's loop (a destructor or callback that \
         the loop ran), not from one of its coroutines: only a coroutine can wait; spawn one \
         (`hub::spawn`) to do it, before `run` ends (the end of `run` kills what it spawns \
         before it starts)"
    )
}

/// This thread's hub.
///
/// The reference is valid until [`run`](crate::run()) returns, which clears the
/// thread-local first; the crate's callers use it within a call made from
/// a task or from the loop, and never keep it in anything that a suspended
/// frame's unwind may drop (a guard): the core's thread-exit hook unwinds
/// a forgotten or leaked coroutine's frames after their hub is gone, so
/// guards keep the hub's [`id`](Hub::id) and reach it through
/// [`with_hub_id`], which finds nothing then.
///
/// # Panics
/// Outside a hub, naming `what` and `hub::run`.
#[track_caller]
#[inline]
pub(crate) fn hub(what: &str) -> &'static Hub {
    let p = HUB.with(Cell::get);
    if p.is_null() {
        outside(what);
    }
    // SAFETY: `run` points HUB at a hub that it keeps alive, and clears
    // it before that hub is dropped (see above for the reference's use).
    unsafe { &*p }
}

/// Runs `f` with this thread's hub if it is the hub numbered `id`, the
/// one a guard was made in: `None` once that hub is gone (its `run`
/// returned, and a forgotten or leaked coroutine's frames are unwound by
/// the core's thread-exit hook), or under another hub of the thread.
#[inline]
pub(crate) fn with_hub_id<R>(id: u64, f: impl FnOnce(&Hub) -> R) -> Option<R> {
    let p = HUB.with(Cell::get);
    // SAFETY: as in `hub`: a non-null HUB points at the live hub.
    let hub = unsafe { p.as_ref() }?;
    (hub.id == id).then(|| f(hub))
}

/// This thread's hub if it is the hub numbered `id`: for a call that
/// runs user code (which may catch the unwind of the core's thread-exit
/// hook and return) and then goes on with the hub it started in.
///
/// # Panics
/// When that hub is gone (see [`with_hub_id`]), naming `what`.
#[track_caller]
#[inline]
pub(crate) fn hub_by_id(id: u64, what: &str) -> &'static Hub {
    let p = HUB.with(Cell::get);
    // SAFETY: as in `hub`: a non-null HUB points at the live hub.
    match unsafe { p.as_ref() } {
        Some(hub) if hub.id == id => hub,
        _ => outside(what),
    }
}

/// Runs `f` with this thread's hub, if there is one.
pub(crate) fn try_with_hub<R>(f: impl FnOnce(&Hub) -> R) -> Option<R> {
    let p = HUB.try_with(Cell::get).ok()?;
    // SAFETY: as in `hub`: a non-null HUB points at the live hub.
    (!p.is_null()).then(|| f(unsafe { &*p }))
}

impl Waiter {
    /// A waiter for the running task's next park.
    ///
    /// # Panics
    /// Outside a hub's coroutine (in the loop: see [`in_loop`]), naming
    /// `what`.
    #[track_caller]
    pub(crate) fn current(hub: &Hub, what: &str) -> Waiter {
        let task = hub.current_task(what);
        let epoch = task.epoch.get();
        Waiter { task, epoch }
    }

    /// Wakes the task if it is still in the park this waiter was made
    /// for; returns whether it did.
    pub(crate) fn wake(&self) -> bool {
        try_with_hub(|hub| hub.wake(&self.task, self.epoch)).unwrap_or(false)
    }
}

impl Hub {
    /// A new hub with its poller, its cross-thread queue and its pool.
    pub(crate) fn new(config: Config) -> io::Result<Hub> {
        let io = IoDriver::new()?;
        let shared = Arc::new(Shared::new(io.waker()?));
        let blocking = Pool::new(config.blocking_threads);
        Ok(Hub {
            id: next_hub_id(),
            config,
            ready: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Slab::new()),
            timers: RefCell::new(Timers::new()),
            io,
            shared,
            blocking,
            current: Cell::new(ptr::null()),
            pool_capacity: corostack::stack::raise_pool_capacity(config.stack_cache),
            next_scope: Cell::new(0),
            block_ons: Cell::new(0),
            greenlet: corostack::greenlet::running_id(),
            unwinding: Cell::new(0),
            suspects: Cell::new(0),
            base_panicking: Cell::new(std::thread::panicking()),
            deferred: RefCell::new(Vec::new()),
            has_deferred: Cell::new(false),
            shutting_down: Cell::new(false),
            remote_warned: Cell::new(false),
            loop_panic: RefCell::new(None),
        })
    }

    /// The running task.
    ///
    /// # Panics
    /// When no task runs (the loop itself, or a destructor it runs),
    /// naming `what` (see [`in_loop`]).
    #[track_caller]
    pub(crate) fn current_task(&self, what: &str) -> Rc<Task> {
        let p = self.current.get();
        if p.is_null() {
            in_loop(what);
        }
        // SAFETY: `current` was made from the Rc the loop holds while the
        // task runs; we add a count for the new Rc.
        unsafe {
            Rc::increment_strong_count(p);
            Rc::from_raw(p)
        }
    }

    /// Whether `run` is ending (see "The end of `run`" in `run.rs`).
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// The running task's address (null in the loop).
    pub(crate) fn current_ptr(&self) -> *const Task {
        self.current.get()
    }

    /// Its number, unique in the process: a handle that acts on one hub
    /// only keeps it.
    #[inline(always)]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// A fresh id for a `timeout` scope (ids grow: a scope with a larger
    /// id was entered later).
    pub(crate) fn next_scope(&self) -> u64 {
        let id = self.next_scope.get() + 1;
        self.next_scope.set(id);
        id
    }

    /// Wakes `task` if it is still in the park that `epoch` names and not
    /// yet ready; returns whether it did.
    #[inline]
    pub(crate) fn wake(&self, task: &Rc<Task>, epoch: u64) -> bool {
        if task.epoch.get() != epoch
            || task.queued.get()
            || task.state.get() != TaskState::Suspended
        {
            return false;
        }
        task.queued.set(true);
        self.ready.borrow_mut().push_back(task.clone());
        true
    }

    /// [`wake`](Hub::wake) for a waiter taken out of a list (a source's,
    /// a timer's, a finished task's): its `Rc` goes to the ready queue as
    /// it is, rather than a count taken there and the waiter's dropped.
    #[inline]
    pub(crate) fn wake_waiter(&self, waiter: Waiter) -> bool {
        let Waiter { task, epoch } = waiter;
        if task.epoch.get() != epoch
            || task.queued.get()
            || task.state.get() != TaskState::Suspended
        {
            return false;
        }
        task.queued.set(true);
        self.ready.borrow_mut().push_back(task);
        true
    }

    /// Makes `task` ready whatever it waits for (a kill or a timeout will
    /// be raised at its park).
    pub(crate) fn wake_any(&self, task: &Rc<Task>) {
        let epoch = task.epoch.get();
        self.wake(task, epoch);
    }

    /// Wakes the task named by a cross-thread wake-up.
    pub(super) fn wake_key(&self, key: usize, id: u64, epoch: u64) {
        let task = self.tasks.borrow().get(key).filter(|t| t.id == id).cloned();
        if let Some(task) = task {
            self.wake(&task, epoch);
        }
    }

    /// Wakes a task by key and id from this thread (a waker called on the
    /// hub's own thread).
    pub(crate) fn wake_local(&self, key: usize, id: u64, epoch: u64) {
        self.wake_key(key, id, epoch);
    }

    /// The readiness driver's registry part, which sockets register with.
    #[inline(always)]
    pub(crate) fn io_core(&self) -> &Rc<IoCore<Waiter>> {
        self.io.core()
    }

    /// The cross-thread queue, which other threads (a [`Remote`](crate::Remote),
    /// a waker, a blocking job) send their messages on.
    pub(crate) fn queue(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Hands `job` to the blocking pool.
    pub(crate) fn submit_blocking(&self, job: Job) {
        self.blocking.submit(job);
    }

    /// A `block_on` call starts: while it lasts, a waker elsewhere may
    /// wake the hub (it is not deadlocked).
    pub(crate) fn block_on_started(&self) {
        self.block_ons.set(self.block_ons.get() + 1);
    }

    /// A `block_on` call ends.
    pub(crate) fn block_on_ended(&self) {
        self.block_ons.set(self.block_ons.get() - 1);
    }

    /// Sets a timer that does `action` at `deadline`; its key cancels it.
    pub(crate) fn set_timer(&self, deadline: Instant, action: Action) -> TimerKey {
        self.timers.borrow_mut().insert(deadline, action)
    }

    /// Cancels a timer; returns whether it was still set (it had not
    /// fired). Its action is dropped.
    pub(crate) fn cancel_timer(&self, key: TimerKey) -> bool {
        self.timers.borrow_mut().remove(key).is_some()
    }

    /// Whether a timer is still set (it has not fired nor been cancelled).
    pub(crate) fn timer_is_set(&self, key: TimerKey) -> bool {
        self.timers.borrow().contains(key)
    }
}
