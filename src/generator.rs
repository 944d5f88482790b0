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

use crate::coroutine::{Coroutine, CoroutineResult, Yielder};
use crate::stack::{DefaultStack, Stack};

/// A generator that yields `Yield`s and is sent `Input`s; see the
/// [module docs](self).
pub struct Generator<Yield, Input = (), S: Stack = DefaultStack> {
    co: Coroutine<Input, Yield, (), S>,
}

impl<Yield, Input> Generator<Yield, Input, DefaultStack> {
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

impl<Yield, Input, S: Stack> Generator<Yield, Input, S> {
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
    pub fn close(self) -> S {
        self.co.into_stack()
    }
}

impl<Yield, Input: Default, S: Stack> Iterator for Generator<Yield, Input, S> {
    type Item = Yield;

    /// Sends `Input::default()` (Python's `next`, which sends `None`).
    fn next(&mut self) -> Option<Yield> {
        self.send(Input::default())
    }
}

impl<Yield, Input, S: Stack> fmt::Debug for Generator<Yield, Input, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("done", &self.done())
            .finish()
    }
}
