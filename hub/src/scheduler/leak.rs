//! The coroutines that the end of `run` leaks, kept until their thread
//! exits, where that thread aborts rather than let their frames outlive
//! its thread-locals.
//!
//! A leaked task is suspended for ever, in the middle of its frames, and
//! those frames may borrow this thread's thread-locals: a body that
//! suspended inside `KEY.with(|d| ...)`, and lent `d` to a scoped thread
//! (`std::thread::scope`) that still runs, since the scope never ends.
//! When the thread exits, `KEY`'s destructor frees `d` under that scoped
//! thread. Nothing can end those frames (their destructors wait for a hub
//! that is gone), so the thread must not get past its thread-locals'
//! destruction: the first destructor to run among those of the
//! thread-locals in use when the leak happened is this module's guard,
//! which aborts the process with a message naming the leak.
//!
//! Thread-local destructors run last registered, first run, and std
//! registers one when the thread first uses a thread-local. So the guard
//! of a leak is a thread-local first used at that leak: one of a few
//! keys, a fresh one for each leak of the thread, which then runs before
//! the destructor of every thread-local the leaked frames could have
//! borrowed (they were in use before it; during thread-local destruction,
//! a registration runs next, before the thread-locals not destroyed yet).
//! A thread that leaks more times than there are keys aborts at once, and
//! so does a leak whose key's destructor has already run. A task that something else
//! finished before the guard runs (it is no longer suspended) does not
//! count.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::thread::LocalKey;

use super::task::Task;

/// The tasks of one leak, checked when the thread exits.
struct Guard(RefCell<Vec<Rc<Task>>>);

impl Drop for Guard {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *self.0.borrow_mut());
        let n = tasks.iter().filter(|t| t.is_suspended()).count();
        if n > 0 {
            abort(n);
        }
    }
}

/// Defines the guards' keys, one per leak of a thread.
macro_rules! guards {
    ($($key:ident),*) => {
        thread_local! {
            $(static $key: Guard = const { Guard(RefCell::new(Vec::new())) };)*
        }
        /// The guards' keys, used in turn.
        static GUARDS: &[&LocalKey<Guard>] = &[$(&$key),*];
    };
}
guards!(G0, G1, G2, G3, G4, G5, G6, G7);

thread_local! {
    /// How many of [`GUARDS`] this thread has used. No destructor.
    static USED: Cell<usize> = const { Cell::new(0) };
}

/// Keeps `tasks`, which the end of `run` leaks, until the thread exits,
/// where the thread aborts if any of them is still suspended (see the
/// module docs).
pub(super) fn keep_until_thread_exit(tasks: Vec<Rc<Task>>) {
    let n = tasks.iter().filter(|t| t.is_suspended()).count();
    if n == 0 {
        return;
    }
    let used = USED.get();
    let Some(key) = GUARDS.get(used) else {
        abort_now(n, "this thread has leaked coroutines too many times");
    };
    USED.set(used + 1);
    let mut tasks = Some(tasks);
    if key
        .try_with(|g| g.0.borrow_mut().extend(tasks.take().unwrap()))
        .is_err()
    {
        // A hub run by a thread-local's destructor: destruction has begun.
        abort_now(n, "its thread-locals are being destroyed already");
    }
}

/// The thread exits with `n` leaked coroutines suspended.
#[cold]
fn abort(n: usize) -> ! {
    eprintln!(
        "corostack::hub: this thread is exiting while {n} coroutine(s) that `hub::run` leaked are \
         still suspended (their unwinding outlasted `Builder::shutdown_timeout`, or waited for \
         something nothing was left to bring); their frames may borrow this thread's \
         thread-locals (lent to a scoped thread, say), which are about to be destroyed: aborting"
    );
    std::process::abort()
}

/// A leak that cannot be kept until the thread exits.
#[cold]
fn abort_now(n: usize, why: &str) -> ! {
    eprintln!(
        "corostack::hub: `hub::run` leaks {n} coroutine(s) that could not finish, and {why}: \
         their frames may borrow this thread's thread-locals, which nothing would keep alive \
         for them: aborting"
    );
    std::process::abort()
}
