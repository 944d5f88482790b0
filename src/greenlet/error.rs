//! [`SwitchError`]: why a greenlet switch (or `set_parent`) could not
//! happen, with the value that was to be passed.

use std::any::type_name;
use std::fmt;

/// Why a switch (or `set_parent`) could not happen. The value that was to
/// be passed comes back in it.
///
/// ```
/// use corostack::greenlet::{Greenlet, SwitchError};
///
/// let once = Greenlet::new(|s: String| s.len().to_string());
/// assert_eq!(once.switch("four".into()), "4");
/// match once.try_switch("again".into()) {
///     Err(SwitchError::Dead(back)) => assert_eq!(back, "again"), // the value comes back
///     other => panic!("{other:?}"),
/// }
/// ```
pub enum SwitchError<T> {
    /// The target greenlet has finished, panicked or been killed.
    Dead(T),
    /// The target is suspended in a switch of another type, or its body
    /// takes another type.
    WrongType {
        /// The value that was to be passed.
        value: T,
        /// The type the target expects.
        expected: &'static str,
    },
    /// The new parent would make the parent chain a cycle.
    Cycle,
}

/// The variant and the expected type; the value carried back is shown as
/// `..` (as std's channel errors do), so that any `T` can be debugged.
impl<T> fmt::Debug for SwitchError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::Dead(_) => f.debug_tuple("Dead").finish_non_exhaustive(),
            SwitchError::WrongType { expected, .. } => f
                .debug_struct("WrongType")
                .field("expected", expected)
                .finish_non_exhaustive(),
            SwitchError::Cycle => f.write_str("Cycle"),
        }
    }
}

impl<T> fmt::Display for SwitchError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::Dead(_) => write!(
                f,
                "cannot switch to a dead greenlet (it returned, panicked or was killed); \
                 check done() first"
            ),
            SwitchError::WrongType { expected, .. } => write!(
                f,
                "cannot switch to this greenlet with a {}: it waits for a {expected}",
                type_name::<T>()
            ),
            SwitchError::Cycle => write!(
                f,
                "cannot set this parent: the greenlet would become its own ancestor"
            ),
        }
    }
}

impl<T> std::error::Error for SwitchError<T> {}

impl SwitchError<()> {
    /// The same error, carrying `value` back.
    #[cold]
    pub(super) fn with_value<T>(self, value: T) -> SwitchError<T> {
        match self {
            SwitchError::Dead(()) => SwitchError::Dead(value),
            SwitchError::WrongType { expected, .. } => SwitchError::WrongType { value, expected },
            SwitchError::Cycle => SwitchError::Cycle,
        }
    }
}
