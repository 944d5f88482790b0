//! [`Semaphore`]: a count of permits that coroutines wait for.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use super::WaitQueue;

/// A count of permits (gevent's `Semaphore`): [`acquire`](Semaphore::acquire)
/// takes one, parking while there is none, and the permit goes back when
/// dropped. Clones share the count.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use corostack_hub::{self as hub, sync::Semaphore};
///
/// hub::run(|| {
///     let limit = Semaphore::new(2);
///     let (inside, most) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
///     let workers: Vec<_> = (0..6)
///         .map(|_| {
///             let (limit, inside, most) = (limit.clone(), inside.clone(), most.clone());
///             hub::spawn(move || {
///                 let _permit = limit.acquire();
///                 inside.set(inside.get() + 1);
///                 most.set(most.get().max(inside.get()));
///                 hub::sleep(Duration::from_millis(1));
///                 inside.set(inside.get() - 1);
///             })
///         })
///         .collect();
///     hub::join_all(workers);
///     assert_eq!(most.get(), 2);
/// });
/// ```
#[derive(Clone)]
pub struct Semaphore(Rc<Inner>);

struct Inner {
    permits: Cell<usize>,
    waiters: WaitQueue,
}

/// A permit of a [`Semaphore`]; dropping it gives the permit back.
pub struct SemaphorePermit {
    sem: Semaphore,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    #[must_use]
    pub fn new(permits: usize) -> Semaphore {
        Semaphore(Rc::new(Inner {
            permits: Cell::new(permits),
            waiters: WaitQueue::default(),
        }))
    }

    /// Takes a permit, parking while there is none.
    ///
    /// # Panics
    /// Outside a hub's coroutine, when it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    #[must_use]
    pub fn acquire(&self) -> SemaphorePermit {
        loop {
            if let Some(p) = self.try_acquire() {
                return p;
            }
            self.0.waiters.wait("Semaphore::acquire");
        }
    }

    /// Takes a permit if one is free now.
    #[must_use]
    pub fn try_acquire(&self) -> Option<SemaphorePermit> {
        let n = self.0.permits.get();
        (n > 0).then(|| {
            self.0.permits.set(n - 1);
            SemaphorePermit { sem: self.clone() }
        })
    }

    /// Adds `n` permits, waking as many waiters.
    ///
    /// # Panics
    /// When the count of free permits would exceed `usize::MAX` (as std's
    /// collections panic on a capacity overflow); the count is then
    /// unchanged.
    #[track_caller]
    pub fn add_permits(&self, n: usize) {
        let Some(permits) = self.0.permits.get().checked_add(n) else {
            permits_overflow(self.0.permits.get(), n);
        };
        self.0.permits.set(permits);
        for _ in 0..n {
            if !self.0.waiters.wake_one() {
                break;
            }
        }
    }

    /// How many permits are free.
    #[must_use]
    pub fn available(&self) -> usize {
        self.0.permits.get()
    }
}

/// `add_permits`'s panic.
#[cold]
#[inline(never)]
#[track_caller]
fn permits_overflow(free: usize, n: usize) -> ! {
    panic!(
        "corostack_hub::sync::Semaphore: adding {n} permits to the {free} free ones would overflow \
         the count (usize::MAX at most)"
    )
}

impl Drop for SemaphorePermit {
    fn drop(&mut self) {
        self.sem.add_permits(1);
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available())
            .finish()
    }
}

impl fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}
