//! The hub itself: the per-thread state, the loop that runs ready
//! coroutines, fires timers and polls for I/O, and the primitives the rest
//! of the hub builds on (spawn, park, wake, kill).
//!
//! # How a coroutine suspends from anywhere
//!
//! A task is a [`Coroutine`](crate::Coroutine) whose body runs the user's
//! closure. The body suspends from deep inside plain code (a `sleep`
//! three calls down), so the body's [`Yielder`](crate::Yielder) must be
//! reachable without being passed around: the body stores its address in
//! its [`Task`] when it starts, and the hub keeps a pointer to the running
//! task in a thread-local while it resumes it. [`park`] suspends through
//! that pointer. This is sound because:
//! - the `Yielder` lives in the first frame of the task's own stack, from
//!   the body's start until the body returns, and the task owns that stack;
//! - the pointer is used only by code running on that stack: `park` reads
//!   the *running* task's yielder, and the hub sets "running" exactly
//!   around each resume of that task (and around the unwinding of a task
//!   it kills), so the code calling `park` is that task's code;
//! - hub functions are not `Send`, and a task never moves to another
//!   thread: the thread-local names this thread's hub.
//!
//! Why a `Coroutine` rather than greenlets: a task step is one resume and
//! one suspend between the hub loop and the task, the cheapest switch the
//! core has, with no parent bookkeeping; the hub is always the one that
//! decides who runs next, which is the only switch pattern a scheduler
//! needs.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coroutine::{Coroutine, CoroutineResult};
use crate::stack::DefaultStack;

use super::blocking::Pool;
use super::builder::Config;
use super::io::IoDriver;
use super::remote::{Message, Shared};
use super::slab::Slab;
use super::task::{JoinError, JoinHandle, KillSelf, Slot, Task, TaskState, Waiter};
use super::timer::{Action, Timers};

thread_local! {
    /// The hub running on this thread, null outside [`run`](super::run).
    static HUB: Cell<*const Hub> = const { Cell::new(ptr::null()) };
}

/// How many coroutines run between two looks at I/O and timers while
/// coroutines stay ready (tokio's figure), so that busy coroutines cannot
/// starve sockets.
const EVENT_INTERVAL: u32 = 61;

/// One thread's hub.
pub(crate) struct Hub {
    pub(crate) config: Config,
    ready: RefCell<VecDeque<Rc<Task>>>,
    tasks: RefCell<Slab<Rc<Task>>>,
    pub(crate) timers: RefCell<Timers>,
    pub(crate) io: IoDriver,
    pub(crate) shared: Arc<Shared>,
    pub(crate) blocking: Pool,
    /// The running task, or null while the loop itself runs.
    current: Cell<*const Task>,
    /// The thread's stack-pool capacity before the hub raised it to
    /// `config.stack_cache`; given back when the hub ends.
    pool_capacity: usize,
    /// Ids for `timeout` scopes.
    next_scope: Cell<u64>,
    /// `block_on` calls in progress (a waker elsewhere may wake the hub).
    pub(crate) block_ons: Cell<usize>,
}

/// Ids of tasks, unique in the process.
fn next_task_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The message of every hub function called outside a hub.
#[cold]
#[track_caller]
fn outside(what: &str) -> ! {
    panic!(
        "stackful::hub: `{what}` was called outside a hub: run it inside `stackful::hub::run` \
         (or `hub::Builder::run`), on the hub's thread"
    )
}

/// This thread's hub.
///
/// The reference is valid until [`run`] returns, which happens only after
/// every task of the hub has ended and the thread-local is cleared; the
/// crate's callers use it within a call made from a task or from the loop,
/// and never store it.
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

/// Runs `f` with this thread's hub, if there is one.
pub(crate) fn try_with_hub<R>(f: impl FnOnce(&Hub) -> R) -> Option<R> {
    let p = HUB.try_with(Cell::get).ok()?;
    // SAFETY: as in `hub`: a non-null HUB points at the live hub.
    (!p.is_null()).then(|| f(unsafe { &*p }))
}

/// Whether the running task is being killed (its unwind must not be
/// caught for good).
pub(crate) fn current_is_killed() -> bool {
    try_with_hub(|hub| {
        let p = hub.current.get();
        // SAFETY: `current` points at the running task, alive while it runs.
        !p.is_null() && unsafe { (*p).killing.get() || (*p).killed.get() }
    })
    .unwrap_or(false)
}

/// Suspends the running task until something wakes it (a [`Waiter`] made
/// before, or a kill, or an expired `timeout`), then returns, or unwinds
/// for the kill or the timeout.
///
/// Inline, as are the socket calls' waits above it: a suspended task's
/// stack then holds one frame between its own code and the switch rather
/// than four, and a hub with thousands of connections brings those frames
/// back from memory at every resume (`benches/echo_callgrind.sh` counts
/// what a round trip costs).
///
/// # Panics
/// Outside a hub's coroutine.
#[track_caller]
#[inline(always)]
pub(crate) fn park(hub: &Hub) {
    let task = hub.current.get();
    if task.is_null() {
        outside("a suspending call");
    }
    // SAFETY: `current` points at the running task, which the loop holds
    // an Rc to while it runs.
    let task = unsafe { &*task };
    let yielder = task.yielder.get();
    if yielder.is_null() {
        never_started();
    }
    // SAFETY: the running task's yielder lives in the first frame of its
    // stack while its body runs, and we are that body (see the module
    // docs): suspending switches back to the hub's loop.
    unsafe { (*yielder).suspend(()) };
    if task.kill_requested.get() | task.interrupt.get().is_some() | task.deadlock.get() {
        unwind_after_park(task);
    }
}

/// A task that never started has no yielder to suspend with.
#[cold]
#[track_caller]
fn never_started() -> ! {
    panic!("stackful::hub: a coroutine that never started cannot suspend")
}

/// What woke a parked task, when it must unwind or panic rather than
/// return: a kill, a timeout's interrupt, or a deadlock.
#[cold]
#[inline(never)]
#[track_caller]
fn unwind_after_park(task: &Task) {
    if task.kill_requested.get() {
        task.kill_requested.set(false);
        panic::resume_unwind(Box::new(KillSelf));
    }
    if let Some(scope) = task.interrupt.take() {
        panic::resume_unwind(Box::new(super::timer::TimeoutUnwind(scope)));
    }
    if task.deadlock.replace(false) {
        panic!(
            "stackful::hub: deadlock: every coroutine is waiting (in a join, a channel, an \
             event, ...) and nothing is left that could wake one: no timer, socket, blocking \
             job, awaited future or Remote"
        );
    }
}

/// Parks until woken or until `deadline`; returns `true` if the deadline
/// woke it. Without a deadline it is [`park`], inline.
#[track_caller]
#[inline(always)]
pub(crate) fn park_until(hub: &Hub, deadline: Option<Instant>) -> bool {
    match deadline {
        None => {
            park(hub);
            false
        }
        Some(deadline) => park_with_timer(hub, deadline),
    }
}

/// [`park_until`] with a deadline: a timer wakes the task if nothing else
/// does first.
#[track_caller]
#[inline(never)]
fn park_with_timer(hub: &Hub, deadline: Instant) -> bool {
    let key = hub
        .timers
        .borrow_mut()
        .insert(deadline, Action::Wake(Waiter::current(hub)));
    /// Removes the timer however the park ends.
    struct Remove<'a>(&'a Hub, super::timer::TimerKey);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            self.0.timers.borrow_mut().remove(self.1);
        }
    }
    let guard = Remove(hub, key);
    park(hub);
    let fired = !hub.timers.borrow().contains(key);
    drop(guard);
    fired
}

impl Hub {
    /// A new hub with its poller, its cross-thread queue and its pool.
    pub(crate) fn new(config: Config) -> io::Result<Hub> {
        let io = IoDriver::new()?;
        let shared = Arc::new(Shared::new(io.waker()?));
        let blocking = Pool::new(config.blocking_threads);
        Ok(Hub {
            config,
            ready: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Slab::new()),
            timers: RefCell::new(Timers::new()),
            io,
            shared,
            blocking,
            current: Cell::new(ptr::null()),
            pool_capacity: crate::stack::raise_pool_capacity(config.stack_cache),
            next_scope: Cell::new(0),
            block_ons: Cell::new(0),
        })
    }

    /// The running task.
    ///
    /// # Panics
    /// When no task runs (the loop itself, or a destructor at the end).
    #[track_caller]
    pub(crate) fn current_task(&self) -> Rc<Task> {
        let p = self.current.get();
        if p.is_null() {
            outside("a call that needs the running coroutine");
        }
        // SAFETY: `current` was made from the Rc the loop holds while the
        // task runs; we add a count for the new Rc.
        unsafe {
            Rc::increment_strong_count(p);
            Rc::from_raw(p)
        }
    }

    /// The running task's address (null in the loop).
    pub(crate) fn current_ptr(&self) -> *const Task {
        self.current.get()
    }

    /// A fresh id for a `timeout` scope.
    pub(crate) fn next_scope(&self) -> u64 {
        let id = self.next_scope.get() + 1;
        self.next_scope.set(id);
        id
    }

    /// Spawns `f` as a new task, ready to run after those already ready.
    pub(crate) fn spawn<T: 'static, F: FnOnce() -> T + 'static>(&self, f: F) -> JoinHandle<T> {
        let task = Rc::new(Task::new(next_task_id()));
        let slot: Slot<T> = Rc::new(Cell::new(None));
        let out = slot.clone();
        let me = Rc::as_ptr(&task);
        let body = move |yielder: &crate::Yielder<(), ()>, ()| {
            // SAFETY: the task owns this coroutine, so it outlives the body.
            let task = unsafe { &*me };
            task.yielder.set(yielder);
            match panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(v) => out.set(Some(Ok(v))),
                Err(p) if p.is::<KillSelf>() => task.killed.set(true),
                // The core's forced unwind of a kill: let it reach the
                // coroutine's first frame.
                Err(p) if task.killing.get() => panic::resume_unwind(p),
                Err(p) => out.set(Some(Err(JoinError::Panicked(p)))),
            }
            task.yielder.set(ptr::null());
        };
        // From the thread's pool, whose capacity the hub raised to its
        // `stack_cache`: finished tasks give their stacks back to it.
        let stack = match DefaultStack::new(self.config.stack_size) {
            Ok(s) => s,
            Err(e) => panic!("stackful::hub: cannot allocate a coroutine's stack: {e}"),
        };
        *task.co.borrow_mut() = Some(Coroutine::with_stack(stack, body));
        task.key.set(self.tasks.borrow_mut().insert(task.clone()));
        task.queued.set(true);
        self.ready.borrow_mut().push_back(task.clone());
        JoinHandle { task, slot }
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

    /// Makes `task` ready whatever it waits for (a kill or a timeout will
    /// be raised at its park).
    pub(crate) fn wake_any(&self, task: &Rc<Task>) {
        let epoch = task.epoch.get();
        self.wake(task, epoch);
    }

    /// Puts the running task at the back of the ready queue and parks it.
    pub(crate) fn yield_now(&self) {
        let task = self.current_task();
        if !task.queued.get() {
            task.queued.set(true);
            self.ready.borrow_mut().push_back(task);
        }
        park(self);
    }

    /// Wakes the task named by a cross-thread wake-up.
    fn wake_key(&self, key: usize, id: u64, epoch: u64) {
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

    /// Warms the cache for the next ready tasks while this one runs: with
    /// thousands of coroutines, each resume would otherwise wait on lines
    /// last touched thousands of switches ago. A pipeline over the queue,
    /// each stage needing what the previous one brought in a turn earlier:
    /// the third task's record, the second's link word (found through its
    /// record), the next one's suspended frames (found through its link).
    #[inline]
    fn prefetch_next(&self) {
        let ready = self.ready.borrow();
        let mut next = ready.iter();
        if let Some(task) = next.next() {
            task.prefetch_coroutine(true);
        }
        if let Some(task) = next.next() {
            task.prefetch_coroutine(false);
        }
        if let Some(task) = next.next() {
            crate::arch::prefetch(ptr::addr_of!(task.co) as usize);
        }
    }

    /// Resumes one ready task until it parks or ends.
    fn run_task(&self, task: Rc<Task>) {
        task.queued.set(false);
        task.epoch.set(task.epoch.get().wrapping_add(1));
        let mut co = task.co.borrow_mut();
        let Some(c) = co.as_mut() else { return };
        task.state.set(TaskState::Running);
        let prev = self.current.replace(Rc::as_ptr(&task));
        let r = c.resume(());
        self.current.set(prev);
        match r {
            CoroutineResult::Yield(()) => task.state.set(TaskState::Suspended),
            CoroutineResult::Return(()) => {
                // Its stack goes back to the thread's pool.
                let c = co.take().expect("the coroutine was just resumed");
                drop(co);
                drop(c);
                self.finish(&task);
            }
        }
    }

    /// Marks a task finished, forgets it, and wakes its joiner.
    fn finish(&self, task: &Rc<Task>) {
        task.state.set(TaskState::Finished);
        self.tasks.borrow_mut().remove(task.key.get());
        let joiner = task.joiner.borrow_mut().take();
        if let Some(w) = joiner {
            self.wake(&w.task, w.epoch);
        }
    }

    /// Kills `task` (see [`JoinHandle::kill`]).
    pub(crate) fn kill(&self, task: &Rc<Task>) {
        match task.state.get() {
            TaskState::Finished => return,
            TaskState::Running => {
                if ptr::eq(self.current.get(), Rc::as_ptr(task)) {
                    panic::resume_unwind(Box::new(KillSelf));
                }
                task.kill_requested.set(true);
                return;
            }
            TaskState::Pending | TaskState::Suspended => {}
        }
        let Ok(mut slot) = task.co.try_borrow_mut() else {
            // Being killed already, further up this very stack.
            return;
        };
        let co = slot.take();
        drop(slot);
        task.killing.set(true);
        task.killed.set(true);
        task.state.set(TaskState::Running);
        // While its stack unwinds, the task is the running one: a
        // destructor that suspends is sent back into the unwind by the core.
        let prev = self.current.replace(Rc::as_ptr(task));
        /// Restores the running task even if a destructor panics.
        struct Restore<'a>(&'a Cell<*const Task>, *const Task);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let restore = Restore(&self.current, prev);
        drop(co);
        drop(restore);
        self.finish(task);
    }

    /// Runs ready tasks, timers and I/O until the task `main` finishes.
    pub(crate) fn run_until(&self, main: &Rc<Task>) {
        let mut budget = EVENT_INTERVAL;
        loop {
            let next = self.ready.borrow_mut().pop_front();
            match next {
                Some(task) if budget > 0 => {
                    budget -= 1;
                    self.prefetch_next();
                    self.run_task(task);
                    if main.state.get() == TaskState::Finished {
                        return;
                    }
                }
                next => {
                    // Out of budget, or nothing ready: timers and I/O.
                    if let Some(task) = next {
                        self.ready.borrow_mut().push_front(task);
                    }
                    budget = EVENT_INTERVAL;
                    self.fire_timers();
                    let mut timeout = if !self.ready.borrow().is_empty() {
                        Some(Duration::ZERO)
                    } else {
                        self.timers
                            .borrow()
                            .next_deadline()
                            .map(|d| super::timer::poll_timeout(d, Instant::now()))
                    };
                    let stuck = timeout.is_none() && self.nothing_can_wake();
                    if stuck {
                        // Take what may already be queued before concluding.
                        timeout = Some(Duration::ZERO);
                    }
                    let remote = self.io.poll(self, timeout);
                    if remote {
                        self.drain_remote();
                    }
                    self.fire_timers();
                    if stuck && self.ready.borrow().is_empty() && self.nothing_can_wake() {
                        // gevent's LoopExit: raise in the main coroutine
                        // rather than sleep forever.
                        main.deadlock.set(true);
                        self.wake_any(main);
                    }
                }
            }
        }
    }

    /// Whether nothing is left that could make a coroutine ready: no
    /// timer, no registered socket, no blocking job, no awaited future, no
    /// [`Remote`](super::Remote) (the hub's own reference is the only one).
    fn nothing_can_wake(&self) -> bool {
        self.timers.borrow().is_empty()
            && self.io.has_no_sources()
            && self.blocking.in_flight() == 0
            && self.block_ons.get() == 0
            && Arc::strong_count(&self.shared) == 1
    }

    /// Fires every timer due now, in deadline order.
    fn fire_timers(&self) {
        if self.timers.borrow().is_empty() {
            return;
        }
        let now = Instant::now();
        loop {
            let action = self.timers.borrow_mut().pop_expired(now);
            match action {
                None => return,
                Some(Action::Wake(w)) => {
                    self.wake(&w.task, w.epoch);
                }
                Some(Action::Interrupt { task, scope }) => {
                    if task.state.get() != TaskState::Finished {
                        task.interrupt.set(Some(scope));
                        self.wake_any(&task);
                    }
                }
                Some(Action::Call(f)) => {
                    drop(self.spawn(f));
                }
            }
        }
    }

    /// Handles the messages other threads sent.
    fn drain_remote(&self) {
        for msg in self.shared.drain() {
            match msg {
                Message::Wake { key, id, epoch } => self.wake_key(key, id, epoch),
                Message::Spawn(f) => drop(self.spawn(f)),
            }
        }
    }

    /// Ends the hub: refuses further messages, kills every task still
    /// alive (their stacks unwind), and drops pending timers.
    pub(crate) fn shut_down(&self) {
        for msg in self.shared.close() {
            drop(msg);
        }
        loop {
            let tasks = self.tasks.borrow_mut().drain();
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                // The slab no longer holds it: `finish` must not remove a
                // task spawned meanwhile under the same key.
                task.key.set(usize::MAX);
                self.kill(&task);
            }
        }
        self.ready.borrow_mut().clear();
        let timers = std::mem::take(&mut *self.timers.borrow_mut());
        drop(timers);
        self.blocking.shut_down();
        crate::stack::set_pool_capacity(self.pool_capacity);
    }
}

/// Installs `hub` as this thread's hub for the life of the value.
pub(crate) struct Installed {
    prev: *const Hub,
}

impl Installed {
    /// # Panics
    /// When this thread already runs a hub.
    pub(crate) fn new(hub: &Hub) -> Installed {
        let prev = HUB.with(|h| h.replace(hub));
        if !prev.is_null() {
            HUB.with(|h| h.set(prev));
            panic!("stackful::hub: `hub::run` was called inside a hub; a thread runs one hub");
        }
        Installed { prev }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        HUB.with(|h| h.set(self.prev));
    }
}

/// Runs a hub with `config` on this thread until `f` returns.
pub(crate) fn run<T: 'static>(config: Config, f: impl FnOnce() -> T + 'static) -> T {
    let hub = match Hub::new(config) {
        Ok(h) => h,
        Err(e) => panic!("stackful::hub: cannot start a hub: {e}"),
    };
    let installed = Installed::new(&hub);
    /// Shuts the hub down however `run` ends, while it is still installed.
    struct ShutDown<'a>(&'a Hub);
    impl Drop for ShutDown<'_> {
        fn drop(&mut self) {
            self.0.shut_down();
        }
    }
    let shutdown = ShutDown(&hub);
    let main = hub.spawn(f);
    hub.run_until(&main.task);
    drop(shutdown);
    drop(installed);
    match main.take() {
        Ok(v) => v,
        Err(JoinError::Panicked(p)) => panic::resume_unwind(p),
        Err(JoinError::Killed) => panic!("stackful::hub: the main coroutine was killed"),
    }
}
