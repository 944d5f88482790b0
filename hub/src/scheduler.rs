//! The hub itself: the per-thread state, the loop that runs ready
//! coroutines, fires timers and polls for I/O, and the primitives the rest
//! of the hub builds on (spawn, park, wake, kill).
//!
//! # How a coroutine suspends from anywhere
//!
//! A task is a [`Coroutine`](corostack::Coroutine) whose body runs the user's
//! closure. The body suspends from deep inside plain code (a `sleep`
//! three calls down), so the body's [`Yielder`](corostack::Yielder) must be
//! reachable without being passed around: the body stores its address in
//! its [`Task`] when it starts, and the hub keeps a pointer to the running
//! task in a thread-local while it resumes it. [`park`] suspends through
//! that pointer. This is sound because:
//! - the `Yielder` lives in the first frame of the task's own stack, from
//!   the body's start until the body returns, and the task owns that stack;
//! - the pointer is used only by code running for that task: `park` reads
//!   the *running* task's yielder, and the hub sets "running" exactly
//!   around each resume of that task, so the code calling `park` is that
//!   task's code (see the threat model below for the stacks it may be on);
//! - hub functions are not `Send`, and a task never moves to another
//!   thread: the thread-local names this thread's hub.
//!
//! Why a `Coroutine` rather than greenlets: a task step is one resume and
//! one suspend between the hub loop and the task, the cheapest switch the
//! core has, with no parent bookkeeping; the hub is always the one that
//! decides who runs next, which is the only switch pattern a scheduler
//! needs.
//!
//! # Threat model: which stacks run when
//!
//! A hub's thread runs, at any moment, exactly one of: the *loop* (the
//! stack that called [`run`], inside `run`), or one *task*, resumed by the
//! loop and nothing else. A task's code may itself run on a stack that is
//! not the task's own:
//! - a plain [`Coroutine`](corostack::Coroutine) (or a generator) that it
//!   resumed: suspending the task from there saves the nested coroutine's
//!   stack pointer in the task's link word, and the next resume of the task
//!   continues there, where the nested coroutine's own link still names
//!   the task's stack; nothing else refers to those stacks, so this works,
//!   and a kill raised there unwinds out of the nested coroutine (its entry
//!   hands the payload to its `resume`, which raises it again in the task);
//! - an [`AsyncCoroutine`](corostack::bridge::AsyncCoroutine) polled by
//!   [`block_on`](super::block_on): the same, one level deeper;
//! - [`on_stack`](corostack::on_stack) and [`maybe_grow`](corostack::maybe_grow):
//!   the borrowed stack lives in a frame of the task's stack, which the
//!   suspended task keeps; a kill unwinds out of it as any panic does;
//! - a [`Greenlet`](corostack::greenlet::Greenlet) the task started: the
//!   greenlet layer records the running greenlet and the stack pointers of
//!   the others in thread-locals that every task shares, so suspending the
//!   task there would leave another task running under the greenlet's
//!   identity (a later switch jumps to a stale stack). `park` compares
//!   [`running_id`](corostack::greenlet::running_id) with the one recorded when
//!   the hub started and refuses with a panic that names the way out: one
//!   thread-local read and a compare on the hot path. (A hub run *inside* a
//!   greenlet records that greenlet, and its tasks run in it.)
//!
//! The entry points, and the stacks they may be called on:
//! - **spawn**: any task, or the loop (a destructor it runs, a
//!   `call_later`, a `Remote`'s work): it only queues the new task. At the
//!   end of `run` a new task is killed at birth: its closure is dropped in
//!   its first resume, on its own stack.
//! - **park** (sleep, socket waits, join, channels, `block_on`, a kill's
//!   wait): a task, on its own stack or one of the stacks above; refused
//!   in a greenlet and in the loop ("outside a hub's coroutine").
//! - **kill**: a task (of the victim or of another), or the loop. See
//!   "Killing" below.
//! - **join**: a task only (it parks); a task cannot join itself.
//! - **block_on**: a task only; the future's waker may run on any thread.
//! - **drop of a `JoinHandle`** (or a `KillHandle`): anywhere, even after
//!   the hub ended: it detaches and never suspends.
//! - **the end of `run`**: the loop, after the main task finished. See
//!   "The end of `run`" below.
//!
//! Lifetimes: every closure a hub runs on a stack of its own (`run`'s,
//! `spawn`'s, `call_later`'s, a `Remote`'s work) is `'static`, as are the
//! values they return, since the stack may outlive the caller's frame (a
//! detached task runs on). Handles (`JoinHandle`, `KillHandle`,
//! `CallLater`, sockets, channels) are `'static` types that are neither
//! `Send` nor `Sync`: they stay on the hub's thread, and may outlive the
//! hub (a finished task's handle still joins; a socket moves to the next
//! hub that waits on it; `CallLater` and `kill` then panic outside a hub).
//! Only [`Remote`](super::Remote) and its futures cross threads.
//!
//! # Killing
//!
//! A kill is an ordinary unwind inside an ordinary resume of the victim:
//! [`Hub::kill`] marks the request and makes the victim ready (at the front
//! of the queue); when the loop resumes it, its pending park raises the
//! private payload `KillSelf` (a task that never started drops its closure
//! instead, in that resume); the body wrapper catches the payload and
//! finishes the task as killed (or as panicked, with the payload of a
//! panic that ended the unwind, such as a panicking destructor of a closure
//! that never ran: that panic is the victim's result and never reaches
//! the killer). While the victim unwinds it is an ordinary running task,
//! so a destructor may park (sleep, do I/O, `block_on`, wait in a
//! `timeout` of its own), spawn, join, and kill other tasks or itself.
//!
//! - From a task, `kill` waits until the victim has finished (gevent's
//!   `kill(block=True)`), unless the victim waits, through a chain of joins
//!   and kills, for the caller: that wait could never end (two tasks whose
//!   destructors kill each other), so the later kill returns at once.
//! - From the loop (a destructor it runs), `kill` only asks; the victim
//!   dies when the loop next runs it.
//! - A task that kills itself unwinds from the call, unless the hub has
//!   raised an unwind into it that is still in flight (the call is in a
//!   destructor): then nothing happens, it is dying already.
//! - A second kill while a kill unwinds is never raised: raising inside a
//!   destructor that runs during an unwind aborts the process.
//!
//! ## Raising
//!
//! The hub raises three things at a park: a kill, a `timeout`'s interrupt,
//! and the deadlock panic. None may be raised in a destructor that runs
//! during an unwind. [`Hub::may_raise`] decides, from what it can know:
//! - `std::thread::panicking()` is false: nothing unwinds anywhere on the
//!   thread, raising is safe (and the hub forgets the unwinds it raised:
//!   their coroutines caught them);
//! - the hub raised an unwind into this task that is still in flight: only
//!   the interrupt of a `timeout` scope entered after it (a scope a
//!   destructor opened, whose `catch_unwind` lies above the unwinding
//!   frames) is raised;
//! - else the thread unwinds somewhere, and the panic count is per thread,
//!   not per stack: if the hub knows of an unwind in another task (or the
//!   loop itself unwinds), that explains it and the raise goes ahead;
//!   otherwise it may be this task's own panic, and the raise waits (the
//!   park returns as a spurious wake-up; the task is woken again when the
//!   raise may happen).
//!
//! The unwinds the hub knows of are those it raised, and those it infers.
//! After each resume the loop reads std's global panic count (one load):
//! a task that parks while nothing unwinds has no unwind of its own until
//! it runs again (it is *calm*), and raising into it is safe whatever else
//! unwinds. A task that parks while the thread unwinds, when no other
//! unwind is known and no other parked task may be unwinding, is unwinding
//! itself (a panic whose destructor parks): the hub marks it as if it had
//! raised it. Otherwise it is a *suspect*: it may or may not be unwinding,
//! and nothing is raised into it until it is known (it parks calm, or the
//! thread is seen not unwinding at all, which also drops every mark and
//! suspicion); a kill's wait for a suspect is given up. A mark is dropped
//! when the hub catches its unwind.
//!
//! The price of never guessing: a suspect that is in fact not unwinding
//! (it parked while another coroutine's destructor was parked in an
//! unwind) takes its kill or interrupt only once those unwinds are over, or
//! when it parks again after they are; a destructor that joins such a
//! task, with nothing else to end it, waits until then. (A `timeout` in the
//! destructor of a coroutine unwinding from its own panic that began while
//! another unwind was in flight fires likewise late.) The one case left
//! where a raise may land in a destructor: the tasks of a hub that a
//! destructor runs while its thread unwinds, where every task parks while
//! the thread unwinds; the loop's own unwind is taken to explain it. Std
//! offers no per-stack panic count that would tell these apart.
//!
//! # The end of `run`
//!
//! When the main task has finished, `run` refuses further work from other
//! threads (wake-ups still come in), drops the pending `call_later`
//! functions, and kills every task still alive, in spawn order, from the
//! loop; then it runs the loop until they have all finished: their
//! destructors may park as in any kill. Tasks spawned meanwhile are killed
//! at birth. If the remaining tasks can never be woken (a deadlock), or
//! are still unwinding after [`Builder::shutdown_timeout`](super::Builder::shutdown_timeout),
//! their coroutines are leaked (their stacks stay mapped, suspended
//! forever, the destructors left on them never run: dropping them would
//! unwind them outside any hub, where a park cannot work) and `run` panics
//! saying how many and why (if the main task panicked, its panic is
//! re-raised instead and the leak is printed to stderr). Never a silent
//! hang, never an abort. If the main task can take no deadlock panic
//! because it is unwinding itself, the same happens at once.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corostack::coroutine::{Coroutine, CoroutineResult, Yielder};
use corostack::stack::DefaultStack;

use crate::driver::poller::{IoCore, IoDriver};
use crate::driver::pool::{Job, Pool};
use crate::driver::queue::{Message, Shared};
use crate::driver::timers::{TimerKey, Timers, poll_timeout};
use crate::slab::Slab;
use crate::task::{JoinError, KillSelf, TaskState};

/// The coroutine that runs a task's body.
pub(crate) type Co = Coroutine<(), (), (), DefaultStack>;

/// One coroutine of a hub, untyped (the value goes through the
/// [`JoinHandle`](crate::JoinHandle)'s slot). Its fields are the
/// scheduler's; other files read what they need through its methods.
pub(crate) struct Task {
    /// Unique within the process, so that a cross-thread wake-up naming a
    /// slab key can tell a reused key from its task.
    id: u64,
    /// The task's key in the hub's slab of live tasks.
    key: Cell<usize>,
    /// The coroutine; `None` once finished.
    co: RefCell<Option<Co>>,
    /// The task's [`Yielder`], which lives in the first frame of its own
    /// stack for as long as the body runs; null before the first resume.
    yielder: Cell<*const Yielder<(), ()>>,
    state: Cell<TaskState>,
    /// Counts the task's resumptions: a [`Waiter`] made during one run
    /// wakes the task only from the park that ends that run.
    epoch: Cell<u64>,
    /// In the ready queue now.
    queued: Cell<bool>,
    /// A kill is pending: it is raised at the task's next park where it
    /// can be (see the scheduler's docs), or, for a task that never
    /// started, when it is first resumed.
    kill_requested: Cell<bool>,
    /// A kill was raised into the task (its `KillSelf` unwinds, or was
    /// caught by the body wrapper).
    killed: Cell<bool>,
    /// An unwind that the hub raised into this task (a kill, a timeout's
    /// interrupt, a deadlock) is in flight: the value of the hub's scope
    /// counter when it was raised. While it is set, the hub raises nothing
    /// more into the task, except the interrupt of a `timeout` scope
    /// entered after it (a scope a destructor opened).
    unwinding: Cell<Option<u64>>,
    /// Nothing unwound on the thread when the task last parked, so it has
    /// no unwind of its own in flight (true before it starts).
    parked_calm: Cell<bool>,
    /// It parked while the thread unwound, and the hub could not tell
    /// whether the unwind was its own.
    suspect: Cell<bool>,
    /// In the hub's list of tasks whose pending raise had to wait.
    deferred: Cell<bool>,
    /// A [`timeout`](crate::timeout) that expired: the id of its scope, to
    /// raise at the next park.
    interrupt: Cell<Option<u64>>,
    /// The coroutines waiting for this one to finish (in
    /// [`JoinHandle::join`](crate::JoinHandle::join), or in a [`JoinHandle::kill`](crate::JoinHandle::kill) that waits).
    waiters: RefCell<Vec<Waiter>>,
    /// The task this one waits to finish (in a join or a kill), to see a
    /// cycle of kills waiting on each other.
    waits_for: RefCell<Weak<Task>>,
    /// The wait in `waits_for` is a kill's (given up on a cycle).
    kill_waiting: Cell<bool>,
    /// The hub found every coroutine waiting with nothing left that could
    /// wake one (set on the main coroutine, raised at its park).
    deadlock: Cell<bool>,
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
            park(hub);
        }
    }
}

/// A way to wake one task from one park: made by the task before it
/// parks, handed to whatever it waits for. Waking it again, or after the
/// task moved on (it was woken by something else, or killed), does
/// nothing, so stale waiters left in queues are harmless.
pub(crate) struct Waiter {
    task: Rc<Task>,
    epoch: u64,
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
        try_with_hub(|hub| hub.wake(&self.task, self.epoch)).unwrap_or(false)
    }

    /// Whether waking would still do something.
    pub(crate) fn is_live(&self) -> bool {
        self.task.epoch.get() == self.epoch && self.task.state.get() != TaskState::Finished
    }
}

/// The slot where a task's body leaves its value.
pub(crate) type Slot<T> = Rc<Cell<Option<Result<T, JoinError>>>>;

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
    config: Config,
    ready: RefCell<VecDeque<Rc<Task>>>,
    tasks: RefCell<Slab<Rc<Task>>>,
    timers: RefCell<Timers<Action>>,
    io: IoDriver<Waiter>,
    shared: Arc<Shared>,
    blocking: Pool,
    /// The running task, or null while the loop itself runs.
    current: Cell<*const Task>,
    /// The thread's stack-pool capacity before the hub raised it to
    /// `config.stack_cache`; given back when the hub ends.
    pool_capacity: usize,
    /// Ids for `timeout` scopes.
    next_scope: Cell<u64>,
    /// `block_on` calls in progress (a waker elsewhere may wake the hub).
    block_ons: Cell<usize>,
    /// The greenlet that the hub's loop runs in, and so its tasks
    /// ([`running_id`](corostack::greenlet::running_id)): a task may suspend
    /// only while it is the running one.
    greenlet: usize,
    /// How many live tasks have an unwind in flight that the hub knows of
    /// (their `unwinding` is set).
    unwinding: Cell<usize>,
    /// How many parked tasks may be unwinding, unknown to the hub (they
    /// parked while the thread unwound, and it could not tell whose
    /// unwind that was).
    suspects: Cell<usize>,
    /// The thread was unwinding when the hub started (a hub run by a
    /// destructor), or the loop itself is (its own code panicked): then
    /// `thread::panicking` is true in every task.
    base_panicking: Cell<bool>,
    /// Tasks whose pending kill or interrupt could not be raised at their
    /// last park (see [`Hub::may_raise`]), to wake when it can.
    deferred: RefCell<Vec<Rc<Task>>>,
    /// `deferred` is not empty (read after every resume).
    has_deferred: Cell<bool>,
    /// The end of `run`: tasks are being killed, and new ones are killed
    /// at birth.
    shutting_down: Cell<bool>,
    /// The first panic of a destructor that the loop ran at the end.
    loop_panic: RefCell<Option<Box<dyn std::any::Any + Send>>>,
}

/// What an expired timer does.
pub(crate) enum Action {
    /// Wakes a parked task.
    Wake(Waiter),
    /// Interrupts a task inside a [`timeout`](crate::timeout) scope.
    Interrupt { task: Rc<Task>, scope: u64 },
    /// Runs a [`call_later`](crate::call_later) function in a new coroutine.
    Call(Box<dyn FnOnce()>),
}

/// The payload that unwinds a [`timeout`](crate::timeout) scope whose
/// time ran out: the scope's id, and the hub-raised unwind that was in
/// flight in the task when it was raised (a destructor's scope; see the
/// module docs).
pub(crate) struct TimeoutUnwind {
    scope: u64,
    outer: Option<u64>,
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
    stack_size: usize,
    stack_cache: usize,
    blocking_threads: usize,
    shutdown_timeout: Option<Duration>,
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

/// How a run of the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// What it ran for happened.
    Done,
    /// Nothing can ever wake the remaining tasks, and none can take a
    /// deadlock panic (they are unwinding).
    Stuck,
    /// The shutdown's deadline passed first.
    TimedOut,
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
        "corostack::hub: `{what}` was called outside a hub: run it inside `corostack_hub::run` \
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
        !p.is_null() && unsafe { (*p).killed.get() }
    })
    .unwrap_or(false)
}

/// Suspends the running task until something wakes it (a [`Waiter`] made
/// before, or a kill, or an expired `timeout`), then returns, or unwinds
/// for the kill or the timeout. It may also return with nothing done (a
/// kill or a timeout that could not be raised yet): callers wait in a loop
/// on their own condition.
///
/// Inline, as are the socket calls' waits above it: a suspended task's
/// stack then holds one frame between its own code and the switch rather
/// than four, and a hub with thousands of connections brings those frames
/// back from memory at every resume (`hub/benches/echo_callgrind.sh` counts
/// what a round trip costs).
///
/// # Panics
/// Outside a hub's coroutine; inside a greenlet that the task started
/// (see [`wrong_greenlet`]).
#[track_caller]
#[inline(always)]
pub(crate) fn park(hub: &Hub) {
    let task = hub.current.get();
    if task.is_null() {
        outside("a suspending call");
    }
    // One thread-local read and a compare: the greenlet running now must
    // be the one the hub's loop runs in (see the module docs).
    if corostack::greenlet::running_id() != hub.greenlet {
        wrong_greenlet();
    }
    // SAFETY: `current` points at the running task, which the loop holds
    // an Rc to while it runs.
    let task = unsafe { &*task };
    let yielder = task.yielder.get();
    if yielder.is_null() {
        never_started();
    }
    // SAFETY: the running task's yielder lives in the first frame of its
    // stack while its body runs, and we are that body, on its stack or on
    // a stack that its body runs on (a `Coroutine` it resumed, an
    // `on_stack` call; a greenlet was refused above; see the module docs):
    // suspending switches back to the hub's loop.
    unsafe { (*yielder).suspend(()) };
    if task.kill_requested.get() | task.interrupt.get().is_some() | task.deadlock.get() {
        unwind_after_park(hub, task);
    }
}

/// A task that never started has no yielder to suspend with.
#[cold]
#[track_caller]
fn never_started() -> ! {
    panic!("corostack::hub: a coroutine that never started cannot suspend")
}

/// A suspending call made inside a greenlet that a task started.
#[cold]
#[inline(never)]
#[track_caller]
fn wrong_greenlet() -> ! {
    panic!(
        "corostack::hub: a coroutine of the hub cannot suspend (sleep, wait for a socket, join, \
         ...) while a greenlet that it started is running: the greenlet runs on a stack of its \
         own that the hub does not manage. Switch back to the greenlet that runs the hub's \
         coroutine before suspending, or run that work as a hub coroutine (`hub::spawn`); a \
         plain `Coroutine`, `on_stack` and `maybe_grow` may suspend inside a hub coroutine"
    )
}

/// What woke a parked task, when it must unwind or panic rather than
/// return: a kill, a timeout's interrupt, or a deadlock. Raises only what
/// [`Hub::may_raise`] allows; what it cannot raise yet stays pending.
#[cold]
#[inline(never)]
#[track_caller]
fn unwind_after_park(hub: &Hub, task: &Task) {
    if task.kill_requested.get() && hub.may_raise(task, None, true) {
        task.kill_requested.set(false);
        task.killed.set(true);
        hub.mark_unwinding(task);
        panic::resume_unwind(Box::new(KillSelf));
    }
    if let Some(scope) = task.interrupt.get()
        && hub.may_raise(task, Some(scope), true)
    {
        task.interrupt.set(None);
        let outer = task.unwinding.get();
        hub.mark_unwinding(task);
        panic::resume_unwind(Box::new(TimeoutUnwind { scope, outer }));
    }
    if task.deadlock.replace(false) && hub.may_raise(task, None, true) {
        hub.mark_unwinding(task);
        panic!(
            "corostack::hub: deadlock: every coroutine is waiting (in a join, a channel, an \
             event, ...) and nothing is left that could wake one: no timer, socket, blocking \
             job, awaited future or Remote"
        );
    }
    if task.kill_requested.get() || task.interrupt.get().is_some() {
        hub.defer(task);
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
    let key = hub.set_timer(deadline, Action::Wake(Waiter::current(hub)));
    /// Removes the timer however the park ends.
    struct Remove<'a>(&'a Hub, TimerKey);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            self.0.cancel_timer(self.1);
        }
    }
    let guard = Remove(hub, key);
    park(hub);
    let fired = !hub.timer_is_set(key);
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
            loop_panic: RefCell::new(None),
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

    /// Whether `run` is ending (see "The end of `run`").
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// The running task's address (null in the loop).
    pub(crate) fn current_ptr(&self) -> *const Task {
        self.current.get()
    }

    /// A fresh id for a `timeout` scope (ids grow: a scope with a larger
    /// id was entered later).
    pub(crate) fn next_scope(&self) -> u64 {
        let id = self.next_scope.get() + 1;
        self.next_scope.set(id);
        id
    }

    /// Whether an unwind may be raised into `task` at its park now: for a
    /// kill or a deadlock (`scope` None), or for the interrupt of the
    /// `timeout` scope `scope`. Never inside a destructor that runs during
    /// an unwind (a panic there aborts the process). See "Raising" in the
    /// module docs.
    ///
    /// `parked`: `task` is parked (or has just been resumed from its park
    /// and has run nothing else), rather than running its own code.
    #[cold]
    pub(crate) fn may_raise(&self, task: &Task, scope: Option<u64>, parked: bool) -> bool {
        if !std::thread::panicking() {
            // Nothing unwinds anywhere on this thread: the unwinds the hub
            // knew of were caught, and no parked task unwinds.
            if self.unwinding.get() > 0 || self.suspects.get() > 0 {
                self.all_calm();
            }
            return true;
        }
        match task.unwinding.get() {
            // Only a timeout scope that a destructor opened during that
            // unwind: its `catch_unwind` lies above the unwinding frames.
            Some(mark) => scope.is_some_and(|s| s > mark),
            // Some unwind is in flight on this thread, and it is not one
            // the hub knows `task` has.
            None => {
                if parked && task.parked_calm.get() {
                    // It parked while nothing unwound: it has none.
                    true
                } else if self.base_panicking.get() {
                    // The loop's own unwind explains it (a hub run by a
                    // destructor): the blind spot of the module docs.
                    true
                } else {
                    // It parked while something unwound, and the hub
                    // cannot tell whether that was its own panic (a
                    // suspect), or its own code runs now (it kills itself):
                    // later, when the hub knows.
                    false
                }
            }
        }
    }

    /// `task` parks after a run in which the thread was unwinding
    /// (`unwinding`), or after one that parked so: sorts out whether the
    /// unwind is its own. If no other unwind is known and no other parked
    /// task may be unwinding, it is `task`'s own (a panic whose destructor
    /// parks), and the hub treats it as one it raised; if it cannot tell,
    /// `task` is a suspect (see "Raising" in the module docs).
    #[cold]
    #[inline(never)]
    fn note_park(&self, task: &Task, unwinding: bool) {
        task.parked_calm.set(!unwinding);
        if !unwinding || task.unwinding.get().is_some() {
            self.clear_suspect(task);
            return;
        }
        let other_suspects = self.suspects.get() - usize::from(task.suspect.get());
        if self.unwinding.get() == 0 && other_suspects == 0 && !self.base_panicking.get() {
            self.mark_unwinding(task);
        } else if !task.suspect.replace(true) {
            self.suspects.set(self.suspects.get() + 1);
        }
    }

    /// `task` is no longer a suspect.
    fn clear_suspect(&self, task: &Task) {
        if task.suspect.replace(false) {
            self.suspects.set(self.suspects.get() - 1);
        }
    }

    /// Records that the hub raises an unwind into `task` now.
    pub(crate) fn mark_unwinding(&self, task: &Task) {
        self.clear_suspect(task);
        if task.unwinding.get().is_none() {
            self.unwinding.set(self.unwinding.get() + 1);
            task.unwinding.set(Some(self.next_scope.get()));
        }
    }

    /// Records that the hub's unwind in `task` is over (caught by the hub,
    /// or found caught).
    pub(crate) fn unmark_unwinding(&self, task: &Task) {
        if task.unwinding.take().is_some() {
            self.unwinding.set(self.unwinding.get() - 1);
        }
    }

    /// Nothing unwinds on the thread: forgets every known unwind and every
    /// suspect; every parked task parked without an unwind of its own.
    #[cold]
    fn all_calm(&self) {
        let tasks: Vec<Rc<Task>> = self.tasks.borrow().iter().cloned().collect();
        for t in tasks {
            self.unmark_unwinding(&t);
            self.clear_suspect(&t);
            if t.state.get() == TaskState::Suspended {
                t.parked_calm.set(true);
            }
        }
        // Tasks out of the slab (being finished) unmark themselves.
    }

    /// A timeout scope caught its own interrupt: the task's hub-raised
    /// unwind is back to what it was before (`outer`).
    pub(crate) fn end_timeout_unwind(&self, task: &Task, outer: Option<u64>) {
        if outer.is_none() {
            self.unmark_unwinding(task);
        }
    }

    /// Remembers `task`, whose pending raise had to wait, to wake it when
    /// the raise may happen.
    #[cold]
    fn defer(&self, task: &Task) {
        if task.deferred.replace(true) {
            return;
        }
        let p = task as *const Task;
        let rc = self
            .tasks
            .borrow()
            .get(task.key.get())
            .filter(|t| ptr::eq(Rc::as_ptr(t), p))
            .cloned();
        match rc {
            Some(rc) => {
                self.deferred.borrow_mut().push(rc);
                self.has_deferred.set(true);
            }
            None => task.deferred.set(false),
        }
    }

    /// Wakes the deferred tasks whose pending raise may now happen.
    #[cold]
    #[inline(never)]
    fn retry_deferred(&self) {
        let ready: Vec<Rc<Task>> = {
            let mut deferred = self.deferred.borrow_mut();
            let mut ready = Vec::new();
            deferred.retain(|t| {
                let pending = t.state.get() != TaskState::Finished
                    && (t.kill_requested.get() || t.interrupt.get().is_some());
                if !pending {
                    t.deferred.set(false);
                    return false;
                }
                let now = (t.kill_requested.get() && self.may_raise(t, None, true))
                    || t.interrupt
                        .get()
                        .is_some_and(|s| self.may_raise(t, Some(s), true));
                if now {
                    t.deferred.set(false);
                    ready.push(t.clone());
                }
                !now
            });
            self.has_deferred.set(!deferred.is_empty());
            ready
        };
        for t in ready {
            self.wake_any(&t);
        }
    }

    /// Spawns `f` as a new task, ready to run after those already ready;
    /// returns the task and the slot where its body leaves its result
    /// (what a [`JoinHandle`](crate::JoinHandle) holds).
    pub(crate) fn spawn<T: 'static, F: FnOnce() -> T + 'static>(
        &self,
        f: F,
    ) -> (Rc<Task>, Slot<T>) {
        let task = Rc::new(Task::new(next_task_id()));
        let slot: Slot<T> = Rc::new(Cell::new(None));
        let out = slot.clone();
        let me = Rc::as_ptr(&task);
        let body = move |yielder: &corostack::Yielder<(), ()>, ()| {
            // SAFETY: the task owns this coroutine, so it outlives the body.
            let task = unsafe { &*me };
            task.yielder.set(yielder);
            let r = if task.kill_requested.replace(false) {
                // Killed before it started: its closure is dropped here, in
                // an ordinary resume of its own (its destructors may park).
                task.killed.set(true);
                let hub = hub("a coroutine's start");
                hub.mark_unwinding(task);
                match panic::catch_unwind(AssertUnwindSafe(move || drop(f))) {
                    Err(p) if !p.is::<KillSelf>() => Err(JoinError::Panicked(p)),
                    _ => Err(JoinError::Killed),
                }
            } else {
                match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(v) => Ok(v),
                    Err(p) if p.is::<KillSelf>() => Err(JoinError::Killed),
                    Err(p) => Err(JoinError::Panicked(p)),
                }
            };
            out.set(Some(r));
            task.yielder.set(ptr::null());
        };
        // From the thread's pool, whose capacity the hub raised to its
        // `stack_cache`: finished tasks give their stacks back to it.
        let stack = match DefaultStack::new(self.config.stack_size) {
            Ok(s) => s,
            Err(e) => panic!("corostack::hub: cannot allocate a coroutine's stack: {e}"),
        };
        *task.co.borrow_mut() = Some(Coroutine::with_stack(stack, body));
        if self.shutting_down.get() {
            // The end of `run`: killed at birth (its closure is dropped in
            // its first resume).
            task.kill_requested.set(true);
        }
        task.key.set(self.tasks.borrow_mut().insert(task.clone()));
        task.queued.set(true);
        self.ready.borrow_mut().push_back(task.clone());
        (task, slot)
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
            crate::prefetch::prefetch(ptr::addr_of!(task.co) as usize);
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
            CoroutineResult::Yield(()) => {
                task.state.set(TaskState::Suspended);
                // One load of std's global panic count: a task that parks
                // while nothing unwinds has no unwind of its own until it
                // runs again; one that parks while the thread unwinds may
                // be unwinding itself.
                let unwinding = std::thread::panicking();
                if unwinding | !task.parked_calm.get() {
                    self.note_park(&task, unwinding);
                }
            }
            CoroutineResult::Return(()) => {
                // Its stack goes back to the thread's pool.
                let c = co.take().expect("the coroutine was just resumed");
                drop(co);
                drop(c);
                self.finish(&task);
            }
        }
    }

    /// Marks a task finished, forgets it, and wakes its waiters.
    fn finish(&self, task: &Rc<Task>) {
        task.state.set(TaskState::Finished);
        self.unmark_unwinding(task);
        self.clear_suspect(task);
        task.kill_requested.set(false);
        task.interrupt.set(None);
        if task.key.get() != usize::MAX {
            self.tasks.borrow_mut().remove(task.key.get());
        }
        let waiters = std::mem::take(&mut *task.waiters.borrow_mut());
        for w in waiters {
            self.wake(&w.task, w.epoch);
        }
        if self.has_deferred.get() {
            // An unwind may have ended with it.
            self.retry_deferred();
        }
    }

    /// Kills `task` (see [`JoinHandle::kill`] and "Killing" in the module
    /// docs).
    #[track_caller]
    pub(crate) fn kill(&self, task: &Rc<Task>) {
        if task.state.get() == TaskState::Finished {
            return;
        }
        if ptr::eq(self.current.get(), Rc::as_ptr(task)) {
            self.kill_self(task);
            return;
        }
        task.kill_requested.set(true);
        if task.state.get() != TaskState::Suspended {
            // Pending: queued already, killed at its start. Running
            // without being the current task cannot happen (only the loop
            // resumes tasks); it would unwind at its next park.
            if task.state.get() == TaskState::Running {
                return;
            }
        } else if !task.queued.get() {
            // It runs next, ahead of the others.
            task.queued.set(true);
            self.ready.borrow_mut().push_front(task.clone());
        }
        if self.current.get().is_null() {
            // Outside any task: nothing can wait here.
            return;
        }
        task.wait_finished(self, true);
    }

    /// A task kills itself: it unwinds from here unless an unwind the hub
    /// raised is in flight in it already (the call is in a destructor).
    #[cold]
    #[track_caller]
    fn kill_self(&self, task: &Task) {
        if self.may_raise(task, None, false) {
            task.killed.set(true);
            self.mark_unwinding(task);
            panic::resume_unwind(Box::new(KillSelf));
        }
        if !task.killed.get() {
            // Some unwind is in flight that may be the task's own panic, or
            // a timeout's: raised at a later park, when it can be.
            task.kill_requested.set(true);
        }
    }

    /// The chain of tasks that `target` waits for (in joins and kills),
    /// up to `me` if it leads there: `Some(chain)` when waiting for
    /// `target` would close a cycle.
    pub(crate) fn cycle_through(&self, target: &Rc<Task>, me: &Rc<Task>) -> Option<Vec<Rc<Task>>> {
        if Rc::ptr_eq(target, me) {
            return Some(Vec::new());
        }
        let mut chain = vec![target.clone()];
        // A chain has at most one link per live task.
        for _ in 0..=self.tasks.borrow().len() {
            let next = chain.last().unwrap().waits_for.borrow().upgrade();
            match next {
                Some(n) if Rc::ptr_eq(&n, me) => return Some(chain),
                Some(n) => chain.push(n),
                None => return None,
            }
        }
        None
    }

    /// Runs ready tasks, timers and I/O until the task `main` finishes
    /// ([`Outcome::Done`]), or until every task waits with nothing left
    /// that could wake one while `main` cannot take the deadlock panic
    /// ([`Outcome::Stuck`]).
    fn run_until(&self, main: &Rc<Task>) -> Outcome {
        self.run_loop(None, || main.state.get() == TaskState::Finished, Some(main))
    }

    /// The loop: runs until `done()`, or until `deadline`, or until nothing
    /// can wake any task. When that happens and `main` is given and can
    /// take a panic, the deadlock panic is raised in `main` instead.
    fn run_loop(
        &self,
        deadline: Option<Instant>,
        done: impl Fn() -> bool,
        main: Option<&Rc<Task>>,
    ) -> Outcome {
        let mut budget = EVENT_INTERVAL;
        loop {
            if done() {
                return Outcome::Done;
            }
            let next = self.ready.borrow_mut().pop_front();
            match next {
                Some(task) if budget > 0 => {
                    budget -= 1;
                    self.prefetch_next();
                    self.run_task(task);
                }
                next => {
                    // Out of budget, or nothing ready: timers and I/O.
                    if let Some(task) = next {
                        self.ready.borrow_mut().push_front(task);
                    }
                    budget = EVENT_INTERVAL;
                    if self.has_deferred.get() {
                        // An unwind may have been caught meanwhile.
                        self.retry_deferred();
                    }
                    self.fire_timers();
                    let mut timeout = if !self.ready.borrow().is_empty() {
                        Some(Duration::ZERO)
                    } else {
                        self.timers
                            .borrow()
                            .next_deadline()
                            .map(|d| poll_timeout(d, Instant::now()))
                    };
                    let stuck = timeout.is_none() && self.nothing_can_wake();
                    if stuck {
                        // Take what may already be queued before concluding.
                        timeout = Some(Duration::ZERO);
                    }
                    if let Some(deadline) = deadline {
                        let now = Instant::now();
                        if now >= deadline {
                            return Outcome::TimedOut;
                        }
                        let left = poll_timeout(deadline, now);
                        timeout = Some(timeout.map_or(left, |t| t.min(left)));
                    }
                    let remote = self.io.poll(timeout, |w| {
                        self.wake(&w.task, w.epoch);
                    });
                    if remote {
                        self.drain_remote();
                    }
                    self.fire_timers();
                    if stuck && self.ready.borrow().is_empty() && self.nothing_can_wake() {
                        match main {
                            // gevent's LoopExit: raise in the main coroutine
                            // rather than sleep forever.
                            Some(main) if self.may_raise(main, None, true) => {
                                main.deadlock.set(true);
                                self.wake_any(main);
                            }
                            _ => return Outcome::Stuck,
                        }
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
            // At the end, a Remote can no longer spawn.
            && (self.shutting_down.get() || Arc::strong_count(&self.shared) == 1)
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
                    // An outer scope's pending interrupt (a smaller id)
                    // unwinds this one too: it stays.
                    let outer_pending = task.interrupt.get().is_some_and(|s| s < scope);
                    if task.state.get() != TaskState::Finished && !outer_pending {
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

    /// Ends the hub (see "The end of `run`" in the module docs): refuses
    /// further work from other threads, kills every task still alive, in
    /// spawn order, and runs the loop until they have all finished, for at
    /// most the shutdown timeout; drops the pending timers. Returns the
    /// tasks that could not finish (they are leaked) and whether that was
    /// for a deadlock rather than the timeout.
    pub(crate) fn shut_down(&self) -> (usize, Outcome) {
        self.shutting_down.set(true);
        for msg in self.shared.close() {
            self.drop_in_loop(msg);
        }
        self.drop_calls();
        let deadline = self
            .config
            .shutdown_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let mut outcome = Outcome::Done;
        while !self.tasks.borrow().is_empty() {
            let mut tasks: Vec<Rc<Task>> = self.tasks.borrow().iter().cloned().collect();
            tasks.sort_by_key(|t| t.id);
            for task in &tasks {
                self.kill(task);
            }
            drop(tasks);
            outcome = self.run_loop(deadline, || self.tasks.borrow().is_empty(), None);
            if outcome != Outcome::Done {
                break;
            }
            // Destructors may have set timers that spawn: drop them too.
            self.drop_calls();
        }
        let leaked = self.leak_the_rest();
        for msg in self.shared.end() {
            self.drop_in_loop(msg);
        }
        let timers = std::mem::take(&mut *self.timers.borrow_mut());
        self.drop_in_loop(timers);
        self.blocking.shut_down();
        corostack::stack::set_pool_capacity(self.pool_capacity);
        (leaked, outcome)
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

    /// Drops the pending `call_later` functions (at the end, nothing new
    /// starts).
    fn drop_calls(&self) {
        for call in self
            .timers
            .borrow_mut()
            .take_where(|a| matches!(a, Action::Call(_)))
        {
            self.drop_in_loop(call);
        }
    }

    /// Drops user values in the loop (the end of `run` drops pending work):
    /// a destructor's panic is kept for `run` to raise once every task has
    /// finished, so that the shutdown always completes.
    fn drop_in_loop<V>(&self, v: V) {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(move || drop(v))) {
            self.loop_panic.borrow_mut().get_or_insert(p);
        }
    }

    /// Leaks the tasks that could not finish: their stacks stay mapped and
    /// suspended forever (dropping their coroutines would unwind them
    /// outside the hub, where their parks cannot work). They count as
    /// finished and killed.
    #[cold]
    fn leak_the_rest(&self) -> usize {
        let tasks = self.tasks.borrow_mut().drain();
        let n = tasks.len();
        for task in &tasks {
            task.key.set(usize::MAX);
            if let Some(co) = task.co.borrow_mut().take() {
                std::mem::forget(co);
            }
            task.waiters.borrow_mut().clear();
            *task.waits_for.borrow_mut() = std::rc::Weak::new();
            self.unmark_unwinding(task);
            self.clear_suspect(task);
            task.state.set(TaskState::Finished);
        }
        self.ready.borrow_mut().clear();
        self.deferred.borrow_mut().clear();
        n
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
            panic!("corostack::hub: `hub::run` was called inside a hub; a thread runs one hub");
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
        Err(e) => panic!("corostack::hub: cannot start a hub: {e}"),
    };
    let installed = Installed::new(&hub);
    /// Shuts the hub down if the loop itself fails, while it is still
    /// installed.
    struct ShutDown<'a>(&'a Hub);
    impl Drop for ShutDown<'_> {
        fn drop(&mut self) {
            // Only run when the loop itself unwinds (a failure of the
            // hub's own code): then every task sees `thread::panicking`.
            self.0.base_panicking.set(true);
            let (leaked, _) = self.0.shut_down();
            if leaked > 0 {
                eprintln!(
                    "corostack::hub: {leaked} coroutine(s) could not finish unwinding at the \
                     end of a failed `run`; their stacks were leaked"
                );
            }
        }
    }
    let shutdown = ShutDown(&hub);
    let (main, slot) = hub.spawn(f);
    let outcome = hub.run_until(&main);
    std::mem::forget(shutdown);
    let (leaked, end) = hub.shut_down();
    drop(installed);
    if outcome == Outcome::Stuck {
        panic!(
            "corostack::hub: deadlock: every coroutine is waiting and nothing is left that could \
             wake one, while the main coroutine is unwinding (its destructors wait); {leaked} \
             coroutine(s) were left unfinished and their stacks leaked"
        );
    }
    let result = slot.take().unwrap_or(Err(JoinError::Killed));
    if leaked > 0 {
        let why = match end {
            Outcome::TimedOut => format!(
                "they were still unwinding after the shutdown timeout ({:?}, see \
                 `Builder::shutdown_timeout`)",
                config.shutdown_timeout.unwrap_or_default()
            ),
            _ => "their destructors wait for something that nothing is left to bring \
                  (deadlock)"
                .to_string(),
        };
        let msg = format!(
            "corostack::hub: at the end of `run`, {leaked} killed coroutine(s) did not finish: \
             {why}; their stacks were leaked, with the destructors left on them"
        );
        match result {
            Err(JoinError::Panicked(p)) => {
                eprintln!("{msg}");
                panic::resume_unwind(p)
            }
            _ => panic!("{msg}"),
        }
    }
    let loop_panic = hub.loop_panic.borrow_mut().take();
    match result {
        Ok(v) => {
            if let Some(p) = loop_panic {
                panic::resume_unwind(p);
            }
            v
        }
        Err(JoinError::Panicked(p)) => panic::resume_unwind(p),
        Err(JoinError::Killed) => panic!("corostack::hub: the main coroutine was killed"),
    }
}
