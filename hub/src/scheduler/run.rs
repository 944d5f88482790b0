//! # The end of `run`
//!
//! When the main task has finished, `run` refuses further work from other
//! threads (wake-ups still come in), drops the pending `call_later`
//! functions, and kills every task still alive, in spawn order, from the
//! loop; then it runs the loop until they have all finished: their
//! destructors may park as in any kill. Tasks spawned meanwhile are killed
//! at birth. If the remaining tasks can never be woken (a deadlock), or
//! are still unwinding after [`Builder::shutdown_timeout`](crate::Builder::shutdown_timeout),
//! their coroutines are leaked (their stacks stay mapped, suspended, the
//! destructors left on them not run by the hub: dropping them would
//! unwind them outside any hub, where a park cannot work) and `run` panics
//! saying how many and why (if the main task panicked, its panic is
//! re-raised instead and the leak is printed to stderr). Never a silent
//! hang. If the main task can take no deadlock panic because it is
//! unwinding itself, the same happens at once. The leaked tasks are kept
//! (`leak.rs`) until the thread exits, which then aborts before its
//! thread-locals die: their frames may borrow them. (Unless a
//! `corostack::thread_exit::rearm` after the leak puts the core's exit
//! hook first: it unwinds them, with their hub gone, which their guards
//! check, as those of any forgotten coroutine do: see `with_hub_id`.)
//!
//! This file holds the loop: spawning a task, resuming it, finishing it,
//! firing timers, polling, and the end of `run`. The top of the
//! scheduler: it builds on the kills (`kill.rs`), the hub (`hub.rs`) and
//! the task record (`task.rs`).

use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corostack::coroutine::{Coroutine, CoroutineResult};
use corostack::stack::DefaultStack;

use crate::driver::queue::{Message, Start};
use crate::driver::timers::poll_timeout;
use crate::task::{KillSelf, PanicPayload, TaskError, TaskState};
use crate::timer::CallState;

use super::hub::{Action, Config, HUB, Hub, hub, next_task_id, with_hub_id};
use super::leak;
use super::task::{Slot, Task};

/// How many coroutines run between two looks at I/O and timers while
/// coroutines stay ready (tokio's figure), so that busy coroutines cannot
/// starve sockets.
const EVENT_INTERVAL: u32 = 61;

/// The first wait before a `call_later` function whose coroutine could
/// get no stack is tried again; each next wait doubles it.
const CALL_RETRY_FIRST: Duration = Duration::from_millis(1);

/// How many times such a function is tried again before it is given up
/// (the waits add up to 1,023 ms).
const CALL_RETRIES: u32 = 10;

/// How long every coroutine waits with only `Remote`s left to wake one
/// before the hub says so (see [`Hub::warn_remote_wait`]).
const REMOTE_GRACE: Duration = Duration::from_secs(1);

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

impl Hub {
    /// [`try_spawn`](Hub::try_spawn), which panics when no stack can be
    /// mapped.
    #[track_caller]
    pub(crate) fn spawn<T: 'static, F: FnOnce() -> T + 'static>(
        &self,
        f: F,
    ) -> (Rc<Task>, Slot<T>) {
        match self.try_spawn(f) {
            Ok(spawned) => spawned,
            Err(e) => panic!("corostack::hub: cannot allocate a coroutine's stack: {e}"),
        }
    }

    /// Spawns `f` as a new task, ready to run after those already ready;
    /// returns the task and the slot where its body leaves its result
    /// (what a [`JoinHandle`](crate::JoinHandle) holds), or the error of
    /// mapping its stack (then `f` is dropped, here, and nothing changed).
    pub(crate) fn try_spawn<T: 'static, F: FnOnce() -> T + 'static>(
        &self,
        f: F,
    ) -> io::Result<(Rc<Task>, Slot<T>)> {
        let stack = self.new_stack()?;
        Ok(self.spawn_on(stack, f))
    }

    /// A stack for a new task, from the thread's pool, whose capacity the
    /// hub raised to its `stack_cache` (finished tasks give their stacks
    /// back to it), else newly mapped.
    #[inline]
    pub(super) fn new_stack(&self) -> io::Result<DefaultStack> {
        DefaultStack::new(self.config.stack_size)
    }

    /// Spawns `f` as a new task on `stack` (see [`Hub::try_spawn`]).
    #[inline]
    pub(super) fn spawn_on<T: 'static, F: FnOnce() -> T + 'static>(
        &self,
        stack: DefaultStack,
        f: F,
    ) -> (Rc<Task>, Slot<T>) {
        let task = Rc::new(Task::new(next_task_id()));
        let slot: Slot<T> = Rc::new(Cell::new(None));
        let out = slot.clone();
        let me = Rc::as_ptr(&task);
        let hub_id = self.id();
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
                    Err(p) if !p.is::<KillSelf>() => Err(TaskError::Panicked(PanicPayload::new(p))),
                    _ => Err(TaskError::Killed),
                }
            } else {
                match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(v) => Ok(v),
                    Err(p) if p.is::<KillSelf>() => Err(TaskError::Killed),
                    Err(p) => Err(TaskError::Panicked(PanicPayload::new(p))),
                }
            };
            out.set(Some(r));
            // Detached (its handle is gone): the result is dropped here,
            // while the task may still park (see `drop_detached`).
            let dropped = if Rc::strong_count(&out) == 1 {
                drop_detached(hub_id, out)
            } else {
                Ok(())
            };
            task.yielder.set(ptr::null());
            if let Err(p) = dropped {
                panic::resume_unwind(p);
            }
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

    /// Warms the cache for the next ready tasks while this one runs: with
    /// thousands of coroutines, each resume would otherwise wait on lines
    /// last touched thousands of switches ago. A pipeline over the queue,
    /// each stage needing what the previous one brought in a turn earlier:
    /// the third task's record, the second's link word (found through its
    /// record), the next one's suspended frames (found through its link).
    #[inline]
    pub(super) fn prefetch_next(&self) {
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
    pub(super) fn run_task(&self, task: Rc<Task>) {
        task.queued.set(false);
        task.epoch.set(task.epoch.get().wrapping_add(1));
        let mut co = task.co.borrow_mut();
        let Some(c) = co.as_mut() else { return };
        task.state.set(TaskState::Running);
        let prev = self.current.replace(Rc::as_ptr(&task));
        // No guard restores `current` if `resume` unwinds, and none is
        // needed: nothing reads it after such an unwind. The body catches
        // the closure's panics and those of a detached result's drop; two
        // panics of its own are left, and both need this thread's hub to be
        // gone while its loop runs: `hub(..)` at the start of a task killed
        // before it started, and the `resume_unwind` of a detached result's
        // panic that no hub kept. `run` keeps its hub installed until the
        // loop is over; only `detach` clears it, while the thread exits
        // (`DetachAtExit`'s destructor, or `exiting` at a park once the
        // core's exit hook has run). A loop that still runs then is that of
        // a hub that a thread-local's destructor started after the hook
        // (inside `exit`, the loop's own frames never run again): every
        // park of its tasks panics before it suspends, so its main task
        // runs to its end in its first resume, and the other tasks run only
        // in `shut_down`, after `run_until` returned and the `ShutDown`
        // guard was forgotten. So this unwind goes out of `run` for good
        // (the test `a_hub_run_after_the_exit_hook_unwinds_out_of_run`, in
        // `hub_loop_calls.rs`); on its way, `Installed`'s drop and the
        // hub's own read nothing of `current`, and every other reader
        // (`park`, `current_task`, `kill`, `current_is_killed`) finds the
        // hub through the thread-local, which is null by then.
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
    pub(super) fn finish(&self, task: &Rc<Task>) {
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
            self.wake_waiter(w);
        }
        if self.has_deferred.get() {
            // An unwind may have ended with it.
            self.retry_deferred();
        }
    }

    /// Runs ready tasks, timers and I/O until the task `main` finishes
    /// ([`Outcome::Done`]), or until every task waits with nothing left
    /// that could wake one while `main` cannot take the deadlock panic
    /// ([`Outcome::Stuck`]).
    pub(super) fn run_until(&self, main: &Rc<Task>) -> Outcome {
        self.run_loop(None, || main.state.get() == TaskState::Finished, Some(main))
    }

    /// The loop: runs until `done()`, or until `deadline`, or until nothing
    /// can wake any task. When that happens and `main` is given and can
    /// take a panic, the deadlock panic is raised in `main` instead.
    pub(super) fn run_loop(
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
                    // Only Remotes could wake a task: wait for them, but say
                    // so once a grace period has passed.
                    let remote_wait = timeout.is_none()
                        && main.is_some()
                        && !self.remote_warned.get()
                        && self.only_remotes_can_wake();
                    let idle_since = if remote_wait {
                        timeout = Some(REMOTE_GRACE);
                        Some(Instant::now())
                    } else {
                        None
                    };
                    if let Some(deadline) = deadline {
                        let now = Instant::now();
                        if now >= deadline {
                            return Outcome::TimedOut;
                        }
                        let left = poll_timeout(deadline, now);
                        timeout = Some(timeout.map_or(left, |t| t.min(left)));
                    }
                    let remote = self.io.poll(timeout, |w| {
                        self.wake_waiter(w);
                    });
                    if remote {
                        self.drain_remote();
                    }
                    self.fire_timers();
                    if let Some(since) = idle_since
                        && since.elapsed() >= REMOTE_GRACE
                        && self.ready.borrow().is_empty()
                        && self.only_remotes_can_wake()
                    {
                        self.warn_remote_wait();
                    }
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
    /// [`Remote`](crate::Remote) (the hub's own reference is the only one).
    pub(super) fn nothing_can_wake(&self) -> bool {
        self.nothing_but_remotes() && self.live_remotes() == 0
    }

    /// Whether nothing but a live [`Remote`](crate::Remote) could make a
    /// coroutine ready (no timer, socket, blocking job, awaited future).
    fn nothing_but_remotes(&self) -> bool {
        self.timers.borrow().is_empty()
            && self.io.has_no_sources()
            && self.blocking.in_flight() == 0
            && self.block_ons.get() == 0
    }

    /// The `Remote`s that could still hand the hub work: every live one
    /// (the hub's own reference aside), wherever it is, since a `Remote`
    /// moves between threads unseen; none at the end (the queue refuses
    /// work then).
    fn live_remotes(&self) -> usize {
        if self.shutting_down.get() {
            0
        } else {
            Arc::strong_count(&self.shared) - 1
        }
    }

    /// Whether only live `Remote`s could make a coroutine ready.
    fn only_remotes_can_wake(&self) -> bool {
        self.nothing_but_remotes() && self.live_remotes() > 0
    }

    /// Says once, on stderr, that every coroutine waits and only `Remote`s
    /// could wake one: the hub cannot tell a `Remote` held by another
    /// thread (which may yet hand it work) from one kept by its own
    /// coroutines (a deadlock), so it waits, but not silently.
    #[cold]
    #[inline(never)]
    fn warn_remote_wait(&self) {
        self.remote_warned.set(true);
        let n = self.live_remotes();
        eprintln!(
            "corostack::hub: every coroutine has been waiting for {REMOTE_GRACE:?} and only {n} \
             `Remote`(s) could wake one; the hub waits for them. If they are kept by this \
             hub's own coroutines (or elsewhere on its thread) rather than by another thread \
             that will hand it work, this is a deadlock the hub cannot see: drop them, or hand \
             them to the thread that uses them"
        );
    }

    /// Fires every timer due now, in deadline order.
    pub(super) fn fire_timers(&self) {
        if self.timers.borrow().is_empty() {
            return;
        }
        let now = Instant::now();
        loop {
            let action = self.timers.borrow_mut().pop_expired(now);
            match action {
                None => return,
                Some(Action::Wake(w)) => {
                    self.wake_waiter(w);
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
                Some(Action::Call(f, call)) => match self.new_stack() {
                    Ok(stack) => drop(self.spawn_on(stack, f)),
                    Err(e) => self.call_without_stack(f, call, e),
                },
            }
        }
    }

    /// A `call_later` function whose coroutine could get no stack (see
    /// `call_later`'s "Memory pressure"): set again after a back-off that
    /// doubles from [`CALL_RETRY_FIRST`], [`CALL_RETRIES`] times (a timer,
    /// so the loop sleeps or serves others meanwhile, never spins); then
    /// given up: `f` is dropped, and the error goes to its handle, or to
    /// stderr if the handle is gone.
    #[cold]
    #[inline(never)]
    fn call_without_stack(&self, f: Box<dyn FnOnce()>, call: Rc<CallState>, e: io::Error) {
        if self.shutting_down.get() {
            // The end of `run` drops the pending calls: nothing new starts.
            self.drop_in_loop(f);
            return;
        }
        let tries = call.failed_try();
        if tries <= CALL_RETRIES {
            let deadline = Instant::now() + CALL_RETRY_FIRST * (1 << (tries - 1));
            call.set_key(self.set_timer(deadline, Action::Call(f, call.clone())));
            return;
        }
        self.drop_in_loop(f);
        if Rc::strong_count(&call) == 1 {
            eprintln!(
                "corostack::hub: a `call_later` function was dropped without running: no stack \
                 could be mapped for its coroutine in {tries} tries over about a second ({e}); \
                 lower the hub's stack size (`Builder::stack_size`), run fewer coroutines at \
                 once, or raise `vm.max_map_count` or the address-space limit (RLIMIT_AS)"
            );
        }
        call.give_up(e);
    }

    /// Handles the messages other threads sent. A job for which no stack
    /// can be mapped is told so, here in the loop: it reports
    /// [`JoinError::NotStarted`](crate::JoinError::NotStarted) to its
    /// handle and drops its work.
    pub(super) fn drain_remote(&self) {
        for msg in self.shared.drain() {
            match msg {
                Message::Wake { key, id, epoch } => self.wake_key(key, id, epoch),
                Message::Spawn(job) => match self.new_stack() {
                    Ok(stack) => drop(self.spawn_on(stack, move || job(Start::Run))),
                    Err(e) => self.run_in_loop(move || job(Start::NoStack(e))),
                },
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

    /// Drops the pending `call_later` functions (at the end, nothing new
    /// starts).
    pub(super) fn drop_calls(&self) {
        // Taken in a statement of their own: a `for` over the borrow would
        // keep the timers borrowed while the destructors run, and one that
        // asks a `CallLater` whether it is pending, or cancels it, would
        // panic on the borrow.
        let calls = self
            .timers
            .borrow_mut()
            .take_where(|a| matches!(a, Action::Call(..)));
        for call in calls {
            self.drop_in_loop(call);
        }
    }

    /// Drops user values in the loop (the end of `run` drops pending work):
    /// a destructor's panic is kept for `run` to raise once every task has
    /// finished, so that the shutdown always completes.
    pub(super) fn drop_in_loop<V>(&self, v: V) {
        self.run_in_loop(move || drop(v));
    }

    /// Runs user code in the loop (the destructors of work that never
    /// starts), keeping its panic as [`Hub::drop_in_loop`] does: the loop
    /// never unwinds for it.
    pub(super) fn run_in_loop(&self, f: impl FnOnce()) {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(f)) {
            self.keep_panic(p);
        }
    }

    /// Keeps the first panic of the user code that the hub ran for no
    /// caller, for `run` to raise at its end; a later one's payload is
    /// dropped, outside the borrow, and as user code: a payload whose drop
    /// panics is leaked with that panic's payload, so that the loop never
    /// unwinds for it.
    pub(super) fn keep_panic(&self, p: Box<dyn std::any::Any + Send>) {
        let later = {
            let mut kept = self.loop_panic.borrow_mut();
            match *kept {
                None => {
                    *kept = Some(p);
                    return;
                }
                Some(_) => p,
            }
        };
        if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(later))) {
            std::mem::forget(again);
        }
    }

    /// Leaks the tasks that could not finish: their stacks stay mapped and
    /// suspended forever (dropping their coroutines would unwind them
    /// outside the hub, where their parks cannot work). They count as
    /// finished and killed.
    #[cold]
    pub(super) fn leak_the_rest(&self) -> usize {
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
        // Their frames may borrow this thread's thread-locals: the thread
        // aborts at its exit, before those die, if they are still there
        // (the records are kept alive with them: a body's first frame
        // points at its task).
        leak::keep_until_thread_exit(tasks);
        n
    }
}

/// Drops the result of a detached task (its handle is gone) at the end of
/// the task, in the task: its destructors may park, as any of the task's;
/// a kill that reaches them ends the drop (the task ends anyway); any
/// other panic is kept for `run` to raise once every task has finished,
/// as [`Hub::drop_in_loop`] does: it must not escape the task into the
/// loop. Returns the panic that no hub could keep, for the task to raise
/// again: with its hub gone, the core's exit hook unwinds a leaked task
/// (its forced unwind goes on, and the hub is not touched: nothing here
/// holds a reference to it across the drop, which may park).
#[cold]
#[inline(never)]
fn drop_detached<V>(hub_id: u64, v: V) -> std::thread::Result<()> {
    let Err(p) = panic::catch_unwind(AssertUnwindSafe(move || drop(v))) else {
        return Ok(());
    };
    if p.is::<KillSelf>() {
        return Ok(());
    }
    let mut p = Some(p);
    with_hub_id(hub_id, |hub| {
        if let Some(p) = p.take() {
            hub.keep_panic(p);
        }
    });
    p.map_or(Ok(()), Err)
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
pub(crate) fn run<T: 'static>(config: Config, f: impl FnOnce() -> T + 'static) -> io::Result<T> {
    let hub = Hub::new(config)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start a hub: {e}")))?;
    let installed = Installed::new(&hub);
    let (main, slot) = match hub.try_spawn(move || {
        super::hub::detach_at_thread_exit();
        f()
    }) {
        Ok(main) => main,
        Err(e) => {
            // Nothing ran: the hub ends as an empty one does.
            hub.shut_down();
            drop(installed);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot map the main coroutine's stack: {e}"),
            ));
        }
    };
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
                     end of a failed `run`; their stacks were leaked (this thread aborts when it \
                     exits, before its thread-locals die)"
                );
            }
        }
    }
    let shutdown = ShutDown(&hub);
    let outcome = hub.run_until(&main);
    std::mem::forget(shutdown);
    let (leaked, end) = hub.shut_down();
    drop(installed);
    if outcome == Outcome::Stuck {
        panic!(
            "corostack::hub: deadlock: every coroutine is waiting and nothing is left that could \
             wake one, while the main coroutine is unwinding (its destructors wait); {leaked} \
             coroutine(s) were left unfinished and their stacks leaked (this thread aborts when it \
             exits, before its thread-locals die: see `Builder::shutdown_timeout`)"
        );
    }
    let result = slot.take().unwrap_or(Err(TaskError::Killed));
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
             {why}; their stacks were leaked, with the destructors left on them (this thread \
             aborts when it exits, before its thread-locals die)"
        );
        match result {
            Err(TaskError::Panicked(p)) => {
                eprintln!("{msg}");
                panic::resume_unwind(p.into_inner())
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
            Ok(v)
        }
        Err(TaskError::Panicked(p)) => panic::resume_unwind(p.into_inner()),
        Err(TaskError::Killed) => panic!("corostack::hub: the main coroutine was killed"),
    }
}
