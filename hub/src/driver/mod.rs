//! The drivers: each owns the data of one source of wake-ups and knows
//! nothing of the scheduler's tasks nor of the user functions. They import
//! nothing of this crate but the [`Slab`](crate::slab::Slab) leaf and each
//! other (the pool takes the queue's `lock`); the scheduler owns one of
//! each and runs them from its loop, and the user functions reach them
//! through the scheduler's methods (they may name a driver's types: a
//! timer's key, a queue message).
//!
//! - `timers`: the ordered map of deadlines, each with an action of the
//!   scheduler's type;
//! - `queue`: the cross-thread queue (wake a task by its numbers, run work
//!   in a new coroutine) and the waker that interrupts the poll;
//! - `poller`: readiness (mio's poll, each source's flags and waiters);
//! - `pool`: the blocking threads, which run jobs and count them.

pub(crate) mod poller;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod timers;
