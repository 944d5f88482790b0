//! What a task is and how it ended: [`TaskState`], [`JoinError`], and the
//! payload that unwinds a killed task. A leaf: the scheduler (which keeps
//! the tasks themselves) and the handles (`handle.rs`) build on it.

use std::any::Any;
use std::fmt;

/// Where a coroutine is in its life, as asyncio names a task's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Spawned, and not yet run.
    Pending,
    /// Running now: it is the caller (only one coroutine runs at a time).
    Running,
    /// Started, and waiting (in a sleep, a read, a join, ...) or ready to
    /// continue.
    Suspended,
    /// Returned, panicked or was killed: [`JoinHandle::join`](crate::JoinHandle::join) returns at
    /// once.
    Finished,
}

/// Why [`JoinHandle::join`](crate::JoinHandle::join) has no value.
pub enum JoinError {
    /// The coroutine panicked; this is the payload, as
    /// [`std::thread::JoinHandle::join`] gives it.
    Panicked(Box<dyn Any + Send + 'static>),
    /// The coroutine was killed ([`JoinHandle::kill`](crate::JoinHandle::kill), the end of
    /// [`run`](crate::run), or the end of its hub) before it returned.
    Killed,
}

impl JoinError {
    /// Whether the coroutine panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panicked(_))
    }

    /// Whether the coroutine was killed.
    pub fn is_killed(&self) -> bool {
        matches!(self, JoinError::Killed)
    }

    /// The panic's payload, if the coroutine panicked.
    pub fn into_panic(self) -> Option<Box<dyn Any + Send + 'static>> {
        match self {
            JoinError::Panicked(p) => Some(p),
            JoinError::Killed => None,
        }
    }

    /// The panic's message, when its payload is a string (as `panic!`
    /// with a format makes it).
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(p) => p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str)),
            JoinError::Killed => None,
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(_) => match self.panic_message() {
                Some(m) => write!(f, "Panicked({m:?})"),
                None => f.write_str("Panicked(..)"),
            },
            JoinError::Killed => f.write_str("Killed"),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(_) => match self.panic_message() {
                Some(m) => write!(f, "the coroutine panicked: {m}"),
                None => f.write_str("the coroutine panicked"),
            },
            JoinError::Killed => f.write_str("the coroutine was killed"),
        }
    }
}

impl std::error::Error for JoinError {}

/// The payload that unwinds a killed coroutine: raised at its pending (or
/// next) park, or at once by a coroutine that kills itself, and caught by
/// the task's body wrapper, which finishes the task as killed.
pub(crate) struct KillSelf;
