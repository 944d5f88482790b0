//! Coordination between the coroutines of one hub: [`channel`]s (bounded
//! and unbounded), [`Event`] and [`Semaphore`]. They are cooperative: a
//! coroutine that must wait parks and the others run, with no OS lock and
//! no atomic operation, since a hub's coroutines share one thread. Their
//! handles are neither `Send` nor `Sync`.
//!
//! Across threads, hand work to a hub with a [`Remote`] (from
//! [`hub::remote`](crate::remote())) and await its result as a future
//! or block on it; a hub coroutine awaits another thread's future with
//! [`hub::block_on`](crate::block_on()).
//!
//! Waiters are woken in the order they started waiting. A coroutine that
//! is killed, or whose [`timeout`](crate::timeout) expires, while it
//! waits passes its wake-up on to the next waiter, so no value or permit
//! is stranded.
//!
//! ```
//! use std::rc::Rc;
//! use std::time::Duration;
//! use corostack_hub::{self as hub, sync::{Event, Semaphore}};
//!
//! // Ten workers wait for a start signal; at most two run at a time.
//! let peak = hub::run(|| {
//!     let start = Rc::new(Event::new());
//!     let slots = Rc::new(Semaphore::new(2));
//!     let workers: Vec<_> = (0..10)
//!         .map(|_| {
//!             let (start, slots) = (start.clone(), slots.clone());
//!             hub::spawn(move || {
//!                 start.wait();
//!                 let _permit = slots.acquire();
//!                 let running = 2 - slots.available();
//!                 hub::sleep(Duration::from_millis(1));
//!                 running
//!             })
//!         })
//!         .collect();
//!     start.set();
//!     hub::join_all(workers).into_iter().map(Result::unwrap).max()
//! });
//! assert_eq!(peak, Some(2));
//! ```

pub mod channel;
mod event;
mod semaphore;

pub use crate::{Remote, RemoteJoinHandle};
pub use channel::{Receiver, Sender, bounded, unbounded};
pub use event::Event;
pub use semaphore::{Semaphore, SemaphorePermit};

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::scheduler::{self, Waiter};

/// Coroutines waiting for something, in arrival order.
#[derive(Default)]
pub(crate) struct WaitQueue {
    waiters: RefCell<VecDeque<Waiter>>,
}

impl WaitQueue {
    /// Parks the calling coroutine until [`wake_one`](WaitQueue::wake_one)
    /// or [`wake_all`](WaitQueue::wake_all) (or a spurious wake-up: callers
    /// check their condition in a loop). If the coroutine unwinds out of
    /// the wait (killed, timed out), it wakes the next waiter in its place.
    #[track_caller]
    pub(crate) fn wait(&self, what: &str) {
        let hub = scheduler::hub(what);
        self.waiters
            .borrow_mut()
            .push_back(Waiter::current(hub, what));
        /// Passes the wake-up on if the wait unwinds.
        struct PassOn<'a>(&'a WaitQueue);
        impl Drop for PassOn<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.wake_one();
                }
            }
        }
        let guard = PassOn(self);
        scheduler::park(hub, what);
        std::mem::forget(guard);
    }

    /// Wakes the longest-waiting coroutine that is still waiting; returns
    /// whether there was one.
    pub(crate) fn wake_one(&self) -> bool {
        loop {
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                return false;
            };
            if w.wake() {
                return true;
            }
        }
    }

    /// Wakes every waiting coroutine.
    pub(crate) fn wake_all(&self) {
        let all = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in all {
            w.wake();
        }
    }
}
