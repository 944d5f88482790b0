//! What a task is and how it ended: [`TaskState`], [`JoinError`] (with its
//! [`PanicPayload`]), and the
//! payload that unwinds a killed task. A leaf: the scheduler (which keeps
//! the tasks themselves) and the handles (`handle.rs`) build on it.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::{Mutex, PoisonError};

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
///
/// It is an error as std's are: `Send`, `Sync` and `'static`, so that `?`
/// takes it into a `Box<dyn Error + Send + Sync>` (a panic's payload is
/// only `Send`; [`PanicPayload`] keeps it so that the error is `Sync`).
///
/// ```
/// use corostack_hub as hub;
///
/// fn total() -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
///     hub::run(|| {
///         let a = hub::spawn(|| 20).join()?;
///         let b = hub::spawn(|| -> u32 { panic!("no {}", 22) }).join()?;
///         Ok(a + b)
///     })
/// }
/// let err = total().unwrap_err();
/// assert_eq!(err.to_string(), "the coroutine panicked: no 22");
/// ```
///
/// It is `#[non_exhaustive]`: a `match` on it needs a `_` arm, so that a
/// later case is not a breaking change (the `is_*` methods ask about one
/// case each).
#[derive(Debug)]
#[non_exhaustive]
pub enum JoinError {
    /// The coroutine panicked; this is the payload, as
    /// [`std::thread::JoinHandle::join`] gives it, kept in a
    /// [`PanicPayload`].
    Panicked(PanicPayload),
    /// The coroutine was killed ([`JoinHandle::kill`](crate::JoinHandle::kill), the end of
    /// [`run`](crate::run), or the end of its hub) before it returned.
    Killed,
    /// The coroutine never started: no stack could be mapped for it (the
    /// address space, `RLIMIT_AS` or `vm.max_map_count` ran out). Only
    /// work that the hub's loop starts itself can end so, where no caller
    /// could take the error at once: a
    /// [`Remote::spawn`](crate::Remote::spawn)'s
    /// [`RemoteJoinHandle`](crate::RemoteJoinHandle) (a
    /// [`JoinHandle`](crate::JoinHandle) never does: [`spawn`](crate::spawn)
    /// panics then and [`try_spawn`](crate::try_spawn) returns the error).
    /// The closure was dropped without running. This is the error of the
    /// mapping, as [`DefaultStack::new`](corostack::DefaultStack::new)
    /// gave it (its message names the stack size, the stacks live and the
    /// limit); it is also the error's [`source`](std::error::Error::source).
    NotStarted(io::Error),
}

impl JoinError {
    /// Whether the coroutine panicked.
    #[must_use]
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panicked(_))
    }

    /// Whether the coroutine was killed.
    #[must_use]
    pub fn is_killed(&self) -> bool {
        matches!(self, JoinError::Killed)
    }

    /// Whether the coroutine never started, for want of a stack
    /// ([`JoinError::NotStarted`]).
    #[must_use]
    pub fn is_not_started(&self) -> bool {
        matches!(self, JoinError::NotStarted(_))
    }

    /// The panic's payload, if the coroutine panicked: the value `panic!`
    /// or [`panic_any`](std::panic::panic_any) was given, the same box, for
    /// [`resume_unwind`](std::panic::resume_unwind) or a downcast.
    #[must_use]
    pub fn into_panic(self) -> Option<Box<dyn Any + Send + 'static>> {
        match self {
            JoinError::Panicked(p) => Some(p.into_inner()),
            JoinError::Killed | JoinError::NotStarted(_) => None,
        }
    }

    /// The panic's message, when its payload is a string (as `panic!`
    /// makes it).
    #[must_use]
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(p) => p.message(),
            JoinError::Killed | JoinError::NotStarted(_) => None,
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
            // The mapping's own message is the source's (not repeated here,
            // as std's errors do).
            JoinError::NotStarted(_) => f.write_str(
                "the coroutine never started: no stack could be mapped for it (lower the hub's \
                 stack size with `Builder::stack_size`, run fewer coroutines at once, or raise \
                 `vm.max_map_count` or the address-space limit, RLIMIT_AS)",
            ),
        }
    }
}

impl std::error::Error for JoinError {
    /// The error of mapping the stack, for [`JoinError::NotStarted`].
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoinError::NotStarted(e) => Some(e),
            JoinError::Panicked(_) | JoinError::Killed => None,
        }
    }
}

/// How a task of this hub ended without a value, as its body leaves it in
/// the task's result slot: [`JoinError`]'s cases that a started task can
/// have. Two words, as the payload's box (a [`JoinError`], which can also
/// carry an `io::Error`, is three): the slot, and the task's body that
/// fills it, stay as small as they were. A [`JoinHandle`](crate::JoinHandle)
/// turns it into a [`JoinError`].
#[derive(Debug)]
pub(crate) enum TaskError {
    /// [`JoinError::Panicked`].
    Panicked(PanicPayload),
    /// [`JoinError::Killed`].
    Killed,
}

impl From<TaskError> for JoinError {
    #[inline]
    fn from(e: TaskError) -> JoinError {
        match e {
            TaskError::Panicked(p) => JoinError::Panicked(p),
            TaskError::Killed => JoinError::Killed,
        }
    }
}

/// A panic's payload, kept so that it can be shared between threads
/// (`Sync`) although the payload itself is only `Send`: a string (what
/// `panic!` makes) is read through `&self`; any other payload only
/// through `&mut self` or by value, which no other thread can do at the
/// same time. Nothing is copied: [`into_inner`](PanicPayload::into_inner)
/// gives back the box the panic made.
///
/// ```
/// use corostack_hub::{self as hub, JoinError};
///
/// hub::run(|| {
///     let err = hub::spawn(|| std::panic::panic_any(7u8)).join().unwrap_err();
///     let JoinError::Panicked(mut p) = err else { unreachable!() };
///     assert_eq!(p.message(), None);
///     assert_eq!(p.get_mut().downcast_mut::<u8>(), Some(&mut 7));
///     assert_eq!(*p.into_inner().downcast::<u8>().unwrap(), 7);
/// });
/// ```
pub struct PanicPayload(Box<dyn Any + Send + Sync + 'static>);

/// A payload that is not `Sync` itself, behind a mutex that is never
/// locked: it only makes the box `Sync` (`get_mut` and `into_inner`
/// reach it without locking). A private type, so that no user payload is
/// taken for it.
struct Unshared(Mutex<Box<dyn Any + Send + 'static>>);

impl PanicPayload {
    /// Keeps `payload`, as `catch_unwind` gave it: a string's box as it
    /// is, any other in an [`Unshared`]. Cold and out of line, so that a
    /// task's body stays as small as it was (its inlined user code is what
    /// the optimizer should spend on); one box to drop, as before.
    #[cold]
    #[inline(never)]
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> PanicPayload {
        PanicPayload(match payload.downcast::<&'static str>() {
            Ok(s) => s,
            Err(p) => match p.downcast::<String>() {
                Ok(s) => s,
                Err(p) => Box::new(Unshared(Mutex::new(p))),
            },
        })
    }

    /// The panic's message, when the payload is a string.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        self.0
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| self.0.downcast_ref::<String>().map(String::as_str))
    }

    /// The payload, to downcast in place.
    pub fn get_mut(&mut self) -> &mut (dyn Any + Send + 'static) {
        if self.0.is::<Unshared>() {
            let Some(Unshared(m)) = self.0.downcast_mut::<Unshared>() else {
                unreachable!("checked just above")
            };
            &mut **m.get_mut().unwrap_or_else(PoisonError::into_inner)
        } else {
            &mut *self.0
        }
    }

    /// The payload, the box the panic made, for
    /// [`resume_unwind`](std::panic::resume_unwind) or a downcast.
    #[must_use]
    pub fn into_inner(self) -> Box<dyn Any + Send + 'static> {
        match self.0.downcast::<Unshared>() {
            Ok(u) => u.0.into_inner().unwrap_or_else(PoisonError::into_inner),
            Err(s) => s,
        }
    }
}

impl fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(m) => f.debug_tuple("PanicPayload").field(&m).finish(),
            None => f.write_str("PanicPayload(..)"),
        }
    }
}

/// The payload that unwinds a killed coroutine: raised at its pending (or
/// next) park, or at once by a coroutine that kills itself, and caught by
/// the task's body wrapper, which finishes the task as killed.
pub(crate) struct KillSelf;

#[cfg(test)]
mod tests {
    use super::{JoinError, TaskError};

    #[test]
    fn a_tasks_error_is_two_words_as_the_payload_box_was() {
        // A task's result slot holds a `Result<T, TaskError>`: keeping the
        // error as small as the payload's box keeps the slot and the task's
        // body as they were (echo's instruction count moved with it).
        let word = std::mem::size_of::<usize>();
        assert_eq!(
            std::mem::size_of::<TaskError>(),
            std::mem::size_of::<Box<dyn std::any::Any + Send>>()
        );
        // The public error carries an `io::Error` beside the payload: one
        // word more, only in what `join` returns.
        assert_eq!(std::mem::size_of::<JoinError>(), 3 * word);
    }
}
