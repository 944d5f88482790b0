//! Python-style generators: a thin type over [`Coroutine`].
//!
//! A [`Generator`] hands values out with [`Yielder::suspend`] (Python's
//! `yield`) and takes values in through [`Generator::send`], whose value
//! the pending `suspend` returns (Python's `x = yield v`). The first
//! `send` or `next` primes it: runs the body up to its first `suspend`,
//! and the value of that first `send` is discarded, as Python requires it
//! to be `None`. It is an [`Iterator`] (each `next` sends
//! `Input::default()`), and dropping it closes it early: the body's stack
//! unwinds, so the destructors on it run.
//!
//! Why a type of its own rather than `Coroutine` itself: `Coroutine`'s
//! first resume passes its value to the body as an argument, while a Python
//! generator has nowhere to receive it; and a generator's return value,
//! like Python's `StopIteration.value`, is rarely wanted. A
//! `Coroutine<(), Y, ()>` is already an iterator for the plain case.
//!
//! ```
//! use corostack::Generator;
//!
//! // A running average, the classic consumer: send numbers, get averages.
//! let mut avg = Generator::new(|y: &corostack::Yielder<f64, f64>| {
//!     let (mut sum, mut n) = (0.0, 0.0);
//!     let mut x = y.suspend(f64::NAN); // primed: nothing to report yet
//!     loop {
//!         sum += x;
//!         n += 1.0;
//!         x = y.suspend(sum / n);
//!     }
//! });
//! assert!(avg.send(0.0).unwrap().is_nan()); // primes it
//! assert_eq!(avg.send(10.0), Some(10.0));
//! assert_eq!(avg.send(20.0), Some(15.0));
//! ```

//!
//! # Lifetimes
//!
//! As for [`Coroutine`] (see [its rules](crate::coroutine#lifetimes-and-variance)):
//! the body, the sent type and the yielded type are `'static`, and a
//! generator is invariant in the sent type.
//!
//! ```compile_fail
//! let seven = 7u32;
//! let mut g = corostack::Generator::new(|y: &corostack::Yielder<&u32, u32>| {
//!     let n = y.suspend(0);
//!     y.suspend(*n);
//! });
//! g.send(&seven); // `seven` does not live long enough: the sent type is 'static
//! ```

use std::fmt;
use std::iter::FusedIterator;

use crate::coroutine::{Coroutine, CoroutineResult, Yielder};
use crate::stack::{DefaultStack, Stack};

/// A generator that is sent `Input`s and yields `Yield`s; see the
/// [module docs](self). The parameters come in [`Coroutine`]'s and
/// [`Yielder`]'s order: `Generator<(), u32>` yields `u32`s and is sent
/// nothing, the body's `&Yielder<(), u32>`.
///
/// ```
/// use corostack::{Generator, Yielder};
///
/// let g: Generator<(), u32> = Generator::new(|y: &Yielder<(), u32>| {
///     (1..=3).for_each(|i| y.suspend(i))
/// });
/// assert_eq!(g.collect::<Vec<_>>(), [1, 2, 3]);
/// ```
///
/// The body and the sent and yielded types are `'static`, as a
/// [`Coroutine`]'s: a body that borrows a function's argument fails with
/// E0521 ("borrowed data escapes outside of function"). A `Coroutine<(), Y,
/// ()>` inside a [`ScopedCoroutine`](crate::scoped::ScopedCoroutine) is an
/// iterator whose body may borrow (the module docs of
/// [`scoped`](crate::scoped) walk a borrowed tree that way).
///
/// ```compile_fail,E0521
/// fn evens(v: &[u32]) -> corostack::Generator<(), u32> {
///     corostack::Generator::new(move |y| v.iter().filter(|x| *x % 2 == 0).for_each(|x| y.suspend(*x)))
/// }
/// ```
pub struct Generator<Input, Yield, S: Stack = DefaultStack> {
    co: Coroutine<Input, Yield, (), S>,
}

impl<Input, Yield> Generator<Input, Yield, DefaultStack> {
    /// A generator running `f` on a pooled [`DefaultStack`]; nothing runs
    /// until the first `send` or `next`.
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>) + 'static,
        Input: 'static,
        Yield: 'static,
    {
        Self::with_stack(DefaultStack::default(), f)
    }
}

impl<Input, Yield, S: Stack> Generator<Input, Yield, S> {
    /// A generator running `f` on `stack`.
    pub fn with_stack<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>) + 'static,
        Input: 'static,
        Yield: 'static,
    {
        Generator {
            co: Coroutine::with_stack(stack, move |y, priming: Input| {
                // Discarded, as the module docs say: dropped now, not
                // kept alive by this frame for the body's whole life.
                drop(priming);
                f(y)
            }),
        }
    }

    /// Resumes the body with `value` (discarded by the first call, which
    /// primes the generator) and returns the next value it yields, or
    /// `None` once it has returned.
    ///
    /// ```
    /// use corostack::{Generator, Yielder};
    ///
    /// // Python's `x = yield total`: a running total of what is sent.
    /// let mut total = Generator::new(|y: &Yielder<u32, u32>| {
    ///     let mut sum = 0;
    ///     loop {
    ///         sum += y.suspend(sum);
    ///     }
    /// });
    /// assert_eq!(total.send(99), Some(0)); // primes it: 99 is discarded
    /// assert_eq!(total.send(2), Some(2));
    /// assert_eq!(total.send(3), Some(5));
    /// ```
    ///
    /// # Panics
    /// With the body's payload, if it panics.
    pub fn send(&mut self, value: Input) -> Option<Yield> {
        if self.co.done() {
            return None;
        }
        match self.co.resume(value) {
            CoroutineResult::Yield(y) => Some(y),
            CoroutineResult::Return(()) => None,
        }
    }

    /// Whether the body has returned (or panicked).
    pub fn done(&self) -> bool {
        self.co.done()
    }

    /// Closes the generator now (as Python's `close()`): unwinds the
    /// body's stack if it is suspended, and gives the stack back.
    ///
    /// ```
    /// use corostack::{Generator, Yielder};
    ///
    /// let mut naturals = Generator::new(|y: &Yielder<(), u64>| (0..).for_each(|n| y.suspend(n)));
    /// assert_eq!(naturals.next(), Some(0));
    /// let stack = naturals.close(); // the endless body is unwound
    /// # drop(stack);
    /// ```
    pub fn close(self) -> S {
        self.co.into_stack()
    }
}

impl<Input: Default, Yield, S: Stack> Iterator for Generator<Input, Yield, S> {
    type Item = Yield;

    /// Sends `Input::default()` (Python's `next`, which sends `None`).
    fn next(&mut self) -> Option<Yield> {
        self.send(Input::default())
    }
}

/// Once the body has returned (or panicked), every `next` is `None`.
impl<Input: Default, Yield, S: Stack> FusedIterator for Generator<Input, Yield, S> {}

impl<Input, Yield, S: Stack> fmt::Debug for Generator<Input, Yield, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("done", &self.done())
            .finish()
    }
}
