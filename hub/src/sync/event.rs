//! [`Event`]: a flag that coroutines wait for.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use super::WaitQueue;

/// A flag that coroutines wait for (gevent's and asyncio's `Event`):
/// [`wait`](Event::wait) parks until [`set`](Event::set). Clones share
/// the flag.
///
/// ```
/// use corostack_hub::{self as hub, sync::Event};
///
/// hub::run(|| {
///     let ready = Event::new();
///     let r = ready.clone();
///     let waiter = hub::spawn(move || {
///         r.wait();
///         "released"
///     });
///     hub::yield_now();
///     ready.set();
///     assert_eq!(waiter.join().unwrap(), "released");
/// });
/// ```
#[derive(Clone, Default)]
pub struct Event(Rc<Inner>);

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    waiters: WaitQueue,
}

impl Event {
    /// A new event, not set.
    #[must_use]
    pub fn new() -> Event {
        Event::default()
    }

    /// Sets the flag and wakes every waiting coroutine.
    pub fn set(&self) {
        self.0.set.set(true);
        self.0.waiters.wake_all();
    }

    /// Clears the flag: later waits park again.
    pub fn clear(&self) {
        self.0.set.set(false);
    }

    /// Whether the flag is set.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.0.set.get()
    }

    /// Returns at once if the flag is set, else parks until it is.
    ///
    /// # Panics
    /// Outside a hub's coroutine, when it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn wait(&self) {
        while !self.0.set.get() {
            self.0.waiters.wait("Event::wait");
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
