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
//! This file holds the park (where kills, interrupts and deadlocks are
//! raised), the bookkeeping of unwinds, and the kill itself. Above the hub
//! (`hub.rs`); the loop (`run.rs`) builds on it.

use std::panic;
use std::ptr;
use std::rc::{Rc, Weak};
use std::time::Instant;

use crate::driver::timers::TimerKey;
use crate::task::{KillSelf, TaskState};

use super::hub::{Action, Hub, TimeoutUnwind, exiting, in_loop, try_with_hub, with_hub_id};
use super::task::{Task, Waiter};

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
/// Outside a hub's coroutine (in the loop: see [`in_loop`]), naming
/// `what`, the caller's public function; inside a greenlet that the task
/// started (see [`wrong_greenlet`]); while the thread exits (see
/// [`exiting`]).
#[track_caller]
#[inline(always)]
pub(crate) fn park(hub: &Hub, what: &str) {
    let task = hub.current.get();
    if task.is_null() {
        in_loop(what);
    }
    // One thread-local read and a compare: the greenlet running now must
    // be the one the hub's loop runs in (see the scheduler's threat model, `mod.rs`).
    if corostack::greenlet::running_id() != hub.greenlet {
        wrong_greenlet();
    }
    // The core's exit hook is unwinding this task (`process::exit` from
    // inside the hub, after a `rearm` that put the hook before the hub's
    // own detach): nothing will run the loop again.
    if corostack::thread_exit::is_exiting() {
        exiting(what);
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
    // `on_stack` call; a greenlet was refused above; see the scheduler's threat model, `mod.rs`):
    // suspending switches back to the hub's loop.
    unsafe { (*yielder).suspend(()) };
    if task.kill_requested.get() | task.interrupt.get().is_some() | task.deadlock.get() {
        unwind_after_park(hub, task);
    }
}

/// A task that never started has no yielder to suspend with.
#[cold]
#[track_caller]
pub(super) fn never_started() -> ! {
    panic!("corostack::hub: a coroutine that never started cannot suspend")
}

/// A suspending call made inside a greenlet that a task started.
#[cold]
#[inline(never)]
#[track_caller]
pub(super) fn wrong_greenlet() -> ! {
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
pub(super) fn unwind_after_park(hub: &Hub, task: &Task) {
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
pub(crate) fn park_until(hub: &Hub, deadline: Option<Instant>, what: &str) -> bool {
    match deadline {
        None => {
            park(hub, what);
            false
        }
        Some(deadline) => park_with_timer(hub, deadline, what),
    }
}

/// [`park_until`] with a deadline: a timer wakes the task if nothing else
/// does first.
#[track_caller]
#[inline(never)]
pub(super) fn park_with_timer(hub: &Hub, deadline: Instant, what: &str) -> bool {
    let key = hub.set_timer(deadline, Action::Wake(Waiter::current(hub, what)));
    /// Removes the timer however the park ends (nothing once the hub is
    /// gone: see [`with_hub_id`]).
    struct Remove(u64, TimerKey);
    impl Drop for Remove {
        fn drop(&mut self) {
            with_hub_id(self.0, |hub| hub.cancel_timer(self.1));
        }
    }
    let guard = Remove(hub.id(), key);
    park(hub, what);
    let fired = !hub.timer_is_set(key);
    drop(guard);
    fired
}

impl Task {
    /// Parks the running task until `self` has finished: a join, or with
    /// `kill` the wait of a kill for its victim's death.
    ///
    /// A kill's wait is given up when it would close a cycle of waits (the
    /// victim waits, through joins and kills, for the killer): when this
    /// wait would close one, the kills waiting on the cycle are woken to
    /// see it and give up; a cycle of joins alone is the caller's deadlock,
    /// as with threads (the hub's deadlock detection reports it).
    ///
    /// Nothing for a task that has finished: no wait, so no running
    /// coroutine is needed (a join of it from the loop returns at once, as
    /// `JoinHandle::done` promises).
    #[track_caller]
    pub(crate) fn wait_finished(self: &Rc<Task>, hub: &Hub, kill: bool) {
        if self.state.get() == TaskState::Finished {
            return;
        }
        let what = if kill {
            "JoinHandle::kill"
        } else {
            "JoinHandle::join"
        };
        let me = hub.current_task(what);
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
                waiters.push(Waiter::current(hub, what));
            }
            park(hub, what);
        }
    }
}

impl Hub {
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
    pub(super) fn note_park(&self, task: &Task, unwinding: bool) {
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
    pub(super) fn clear_suspect(&self, task: &Task) {
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
    pub(super) fn all_calm(&self) {
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
    pub(super) fn defer(&self, task: &Task) {
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
    pub(super) fn retry_deferred(&self) {
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

    /// Puts the running task at the back of the ready queue and parks it;
    /// `what` names the caller's function in the panic of a call from the
    /// loop (see [`park`]).
    #[track_caller]
    pub(crate) fn yield_now(&self, what: &str) {
        let task = self.current_task(what);
        if !task.queued.get() {
            task.queued.set(true);
            self.ready.borrow_mut().push_back(task);
        }
        park(self, what);
    }

    /// Kills `task` (see [`JoinHandle::kill`](crate::JoinHandle::kill) and "Killing" in the module
    /// docs).
    #[track_caller]
    pub(crate) fn kill(&self, task: &Rc<Task>) {
        if task.state.get() == TaskState::Finished {
            return;
        }
        // The caller is a task of this hub only if one runs and the
        // greenlet running now is the hub's: a hub run inside a greenlet
        // has a running task while that task has switched to another
        // greenlet (the thread's main one), whose code is not the task's.
        let in_task =
            !self.current.get().is_null() && corostack::greenlet::running_id() == self.greenlet;
        if in_task && ptr::eq(self.current.get(), Rc::as_ptr(task)) {
            self.kill_self(task);
            return;
        }
        task.kill_requested.set(true);
        if task.state.get() != TaskState::Suspended {
            // Pending: queued already, killed at its start. Running: the
            // task that switched to the greenlet calling us; it unwinds at
            // its next park, once switched back to.
            if task.state.get() == TaskState::Running {
                return;
            }
        } else if !task.queued.get() {
            // It runs next, ahead of the others.
            task.queued.set(true);
            self.ready.borrow_mut().push_front(task.clone());
        }
        if !in_task {
            // Outside any task (the loop, or another greenlet): nothing
            // can wait here.
            return;
        }
        task.wait_finished(self, true);
    }

    /// A task kills itself: it unwinds from here unless an unwind the hub
    /// raised is in flight in it already (the call is in a destructor).
    #[cold]
    #[track_caller]
    pub(super) fn kill_self(&self, task: &Task) {
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
}
