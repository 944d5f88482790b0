//! Coroutines whose bodies borrow: [`ScopedCoroutine`].
//!
//! A [`Coroutine`]'s body, inputs and yields are `'static`, because safe
//! code may `mem::forget` a suspended coroutine: its frames would then keep
//! whatever they borrowed forever (see the coroutine module's
//! [rules](crate::coroutine#lifetimes-and-variance)). A `ScopedCoroutine`
//! lifts that rule by never letting a started coroutine be owned: it is
//! built unstarted, and only [`ScopedCoroutine::scope`] runs it, handing the
//! closure given to `scope` a `&mut` [`Scoped`] to resume. When that closure
//! returns or panics, `scope` drops the coroutine (its stack unwinds, every
//! destructor on it runs) before returning, so before any borrow it holds
//! can end.
//!
//! A recursive in-order walk of a borrowed tree, as a generator:
//!
//! ```
//! use corostack::Yielder;
//! use corostack::scoped::ScopedCoroutine;
//!
//! enum Tree {
//!     Leaf,
//!     Node(Box<Tree>, String, Box<Tree>),
//! }
//!
//! fn walk<'t>(y: &Yielder<(), &'t str>, tree: &'t Tree) {
//!     if let Tree::Node(left, label, right) = tree {
//!         walk(y, left);
//!         y.suspend(label);
//!         walk(y, right);
//!     }
//! }
//!
//! let node = |l, s: &str, r| Tree::Node(Box::new(l), s.to_string(), Box::new(r));
//! let tree = node(node(Tree::Leaf, "a", Tree::Leaf), "b", node(Tree::Leaf, "c", Tree::Leaf));
//! let labels: Vec<&str> = ScopedCoroutine::new(|y, ()| walk(y, &tree))
//!     .scope(|walker| walker.collect());
//! assert_eq!(labels, ["a", "b", "c"]);
//! ```
//!
//! # Why it is sound
//!
//! - **Nothing started can be forgotten.** [`ScopedCoroutine`] (owned) has no
//!   way to run its body; [`Scoped`] (which runs it) has no public
//!   constructor and no `Default`, and `scope` hands out only a `&mut` to
//!   one living in its own frame. So safe code cannot own a started
//!   coroutine, cannot `mem::forget`, `mem::replace` or `mem::take` one, and
//!   `scope` drops it before returning, on every path.
//! - **Swapping two of them does not help.** `mem::swap` of two `&mut
//!   Scoped` needs them to be of one type, so of one borrow lifetime `'a`
//!   (both types are invariant in it); the outer one's `'a` is alive for the
//!   whole of the outer `scope` (its value is used there, and its explicit
//!   `Drop` keeps the drop check asking for `'a` where it is dropped), so
//!   what both borrow outlives both scopes: a body that borrows only an
//!   inner scope's data does not compile in the outer one's type (E0597).
//! - **Lifetimes cannot stretch.** `Scoped` and `ScopedCoroutine` are
//!   invariant in `'a` and in their input and yield types (which may borrow
//!   for `'a`).
//!
//! ```compile_fail,E0597
//! use corostack::scoped::ScopedCoroutine;
//! // A borrow that does not outlive the coroutine's type.
//! let co = {
//!     let short = String::from("gone");
//!     ScopedCoroutine::<(), (), usize>::new(|_, ()| short.len())
//! };
//! co.scope(|c| c.resume(()));
//! ```
//!
//! ```compile_fail,E0597
//! use corostack::Yielder;
//! use corostack::scoped::ScopedCoroutine;
//! // Two of one type, the inner one borrowing the inner scope's data, then
//! // swapped: the outer scope would drop the inner's coroutine after its
//! // data died. The drop check refuses it.
//! type Body<'a> = Box<dyn FnOnce(&Yielder<(), ()>, ()) -> usize + 'a>;
//! let outer_data = String::from("outer");
//! let body: Body<'_> = Box::new(|_, ()| outer_data.len());
//! ScopedCoroutine::new(body).scope(|a| {
//!     let inner_data = String::from("inner");
//!     let body: Body<'_> = Box::new(|_, ()| inner_data.len());
//!     ScopedCoroutine::new(body).scope(|b| std::mem::swap(a, b));
//! });
//! ```
//!
//! ```compile_fail
//! use corostack::scoped::ScopedCoroutine;
//! // The running coroutine cannot leave its scope.
//! let v = vec![1, 2, 3];
//! let escaped = ScopedCoroutine::<(), (), usize>::new(|_, ()| v.len()).scope(|c| c);
//! ```
//!
//! Like [`Coroutine`], neither type is `Send` nor `Sync`.

use core::fmt;
use core::iter::FusedIterator;
use core::marker::PhantomData;

use crate::coroutine::{Coroutine, CoroutineResult, Yielder};
use crate::stack::{DefaultStack, Stack};

/// The marker of both types: invariant in `'a`, the input and the yield.
type Borrows<'a, I, Y> = PhantomData<(fn(&'a ()) -> &'a (), fn(I) -> I, fn(Y) -> Y)>;

/// A coroutine whose body may borrow for `'a`, not started yet; only
/// [`scope`](ScopedCoroutine::scope) runs it. See the [module docs](self).
///
/// ```
/// use corostack::{ScopedCoroutine, Yielder};
///
/// let mut log = Vec::new(); // borrowed mutably by the body
/// let n = ScopedCoroutine::new(|y: &Yielder<&str, ()>, first| {
///     log.push(first);
///     log.push(y.suspend(()));
///     log.len()
/// })
/// .scope(|co| {
///     co.resume("one");
///     co.resume("two").as_return()
/// });
/// assert_eq!((n, log), (Some(2), vec!["one", "two"]));
/// ```
pub struct ScopedCoroutine<'a, Input, Yield, Return, S: Stack = DefaultStack> {
    co: Coroutine<Input, Yield, Return, S>,
    _borrows: Borrows<'a, Input, Yield>,
}

/// A running [`ScopedCoroutine`], reached only through the `&mut` that
/// [`ScopedCoroutine::scope`] hands out; dropped by `scope`.
///
/// ```
/// use corostack::{ScopedCoroutine, Yielder};
///
/// let words = ["a", "bb", "ccc"];
/// let lengths: Vec<usize> = ScopedCoroutine::new(|y: &Yielder<(), usize>, ()| {
///     words.iter().for_each(|w| y.suspend(w.len()))
/// })
/// .scope(|running| running.collect()); // a Scoped<'_, (), Y, ()> is an Iterator
/// assert_eq!(lengths, [1, 2, 3]);
/// ```
pub struct Scoped<'a, Input, Yield, Return, S: Stack = DefaultStack> {
    co: Coroutine<Input, Yield, Return, S>,
    _borrows: Borrows<'a, Input, Yield>,
}

impl<'a, Input, Yield, Return> ScopedCoroutine<'a, Input, Yield, Return, DefaultStack> {
    /// A coroutine that will run `f` on a pooled [`DefaultStack`] inside
    /// [`scope`](ScopedCoroutine::scope).
    ///
    /// # Panics
    /// As [`Coroutine::new`].
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'a,
        Input: 'a,
        Yield: 'a,
    {
        Self::with_stack(DefaultStack::default(), f)
    }
}

impl<'a, Input, Yield, Return, S: Stack> ScopedCoroutine<'a, Input, Yield, Return, S> {
    /// A coroutine that will run `f` on `stack` inside
    /// [`scope`](ScopedCoroutine::scope).
    ///
    /// ```
    /// use corostack::{DefaultStack, ScopedCoroutine, Yielder};
    ///
    /// let total = std::cell::Cell::new(0);
    /// ScopedCoroutine::with_stack(DefaultStack::new(64 * 1024).unwrap(), |_: &Yielder<u32, ()>, n| {
    ///     total.set(total.get() + n)
    /// })
    /// .scope(|co| co.resume(5));
    /// assert_eq!(total.get(), 5);
    /// ```
    ///
    /// # Panics
    /// As [`Coroutine::with_stack`].
    pub fn with_stack<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'a,
        Input: 'a,
        Yield: 'a,
    {
        ScopedCoroutine {
            // SAFETY: what `f`, the inputs and the yields borrow lives for
            // 'a, and the coroutine is dropped within 'a: it only runs
            // inside `scope`, which drops it before returning, and nothing
            // started can be owned outside it (see the module docs).
            co: unsafe { Coroutine::with_stack_unchecked::<_, true>(stack, f) },
            _borrows: PhantomData,
        }
    }

    /// The coroutine, moved into the `Scoped` that a scope lends out.
    fn into_running(self) -> Scoped<'a, Input, Yield, Return, S> {
        // `self` has a `Drop` (for the drop check), so its coroutine is
        // moved out through a `ManuallyDrop`.
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again: the coroutine is
        // moved out once.
        let co = unsafe { core::ptr::read(&this.co) };
        Scoped {
            co,
            _borrows: PhantomData,
        }
    }

    /// Runs `f` with the coroutine to resume, then drops the coroutine
    /// (unwinding its stack if it is suspended) and returns `f`'s value;
    /// if `f` panics, the coroutine is dropped as the panic passes.
    pub fn scope<T>(self, f: impl FnOnce(&mut Scoped<'a, Input, Yield, Return, S>) -> T) -> T {
        let mut running = self.into_running();
        let out = f(&mut running);
        drop(running);
        out
    }

    /// [`scope`](ScopedCoroutine::scope), then gives the stack back for
    /// reuse (as [`Coroutine::into_stack`]: a suspended body is unwound
    /// first), with `f`'s value. If `f` panics, the coroutine is dropped
    /// as the panic passes, with its stack.
    ///
    /// ```
    /// use corostack::{DefaultStack, Stack};
    /// use corostack::scoped::ScopedCoroutine;
    ///
    /// let words = vec!["borrowed", "not", "moved"];
    /// let stack = DefaultStack::new(64 * 1024).unwrap();
    /// let top = stack.top();
    /// let (count, stack) = ScopedCoroutine::with_stack(stack, |y, ()| {
    ///     words.iter().for_each(|w| y.suspend(*w))
    /// })
    /// .scope_into_stack(|walk| walk.count());
    /// assert_eq!((count, stack.top()), (3, top)); // the same stack, for the next body
    /// ```
    ///
    /// # Panics
    /// As [`Coroutine::into_stack`]: under `panic = "abort"`, when the
    /// body is suspended as `f` returns.
    pub fn scope_into_stack<T>(
        self,
        f: impl FnOnce(&mut Scoped<'a, Input, Yield, Return, S>) -> T,
    ) -> (T, S) {
        let mut running = self.into_running();
        let out = f(&mut running);
        // `Scoped` has a `Drop` too: its coroutine is moved out the same way.
        let running = core::mem::ManuallyDrop::new(running);
        // SAFETY: `running` is never used or dropped again.
        let co = unsafe { core::ptr::read(&running.co) };
        // The body is unwound (or was done) before the stack comes back:
        // nothing on it borrows for 'a any more.
        (out, co.into_stack())
    }

    /// Drops the unstarted body's closure (and what it captured) and gives
    /// the stack back (corosensei's name and meaning; to have it back after
    /// the body ran, use
    /// [`scope_into_stack`](ScopedCoroutine::scope_into_stack)).
    ///
    /// ```
    /// use corostack::DefaultStack;
    /// use corostack::scoped::ScopedCoroutine;
    ///
    /// let name = String::from("never run");
    /// let co = ScopedCoroutine::<(), (), usize>::with_stack(DefaultStack::default(), |_, ()| {
    ///     name.len()
    /// });
    /// let stack: DefaultStack = co.into_stack();
    /// # drop(stack);
    /// ```
    pub fn into_stack(self) -> S {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: as in `scope`: `this` is never used or dropped again.
        let co = unsafe { core::ptr::read(&this.co) };
        co.into_stack()
    }
}

impl<Input, Yield, Return, S: Stack> Scoped<'_, Input, Yield, Return, S> {
    /// [`Coroutine::resume`].
    ///
    /// # Panics
    /// As [`Coroutine::resume`].
    #[inline]
    pub fn resume(&mut self, input: Input) -> CoroutineResult<Yield, Return> {
        self.co.resume(input)
    }

    /// [`Coroutine::started`].
    pub fn started(&self) -> bool {
        self.co.started()
    }

    /// [`Coroutine::done`].
    pub fn done(&self) -> bool {
        self.co.done()
    }

    /// [`Coroutine::force_unwind`]: unwinds the body now.
    pub fn force_unwind(&mut self) {
        self.co.force_unwind()
    }

    /// [`Coroutine::force_reset`]: marks the coroutine done without running
    /// anything on its stack; the body's frames are abandoned.
    ///
    /// # Safety
    /// As [`Coroutine::force_reset`]: nothing on the stack may rely on its
    /// destructor running before its memory is reused (for a scoped body
    /// that includes what it borrows: a `std::thread::scope` in it, or a
    /// value registered somewhere through a borrow, must not be abandoned).
    pub unsafe fn force_reset(&mut self) {
        // SAFETY: the caller's promise, which is `force_reset`'s.
        unsafe { self.co.force_reset() }
    }

    /// [`Coroutine::trap_handler`]: the handle a signal handler uses to send
    /// this coroutine back to its resumer after a trap (see the
    /// [`trap`](crate::trap) module), valid while this coroutine lives on
    /// this stack, which is until its scope ends.
    pub fn trap_handler(&self) -> crate::CoroutineTrapHandler<Return> {
        self.co.trap_handler()
    }
}

/// Explicit, and empty (the coroutine inside drops itself), so that the
/// compiler's drop check requires `'a` to be alive wherever a `Scoped` is
/// dropped: what makes swapping two of them harmless (see the module docs).
impl<Input, Yield, Return, S: Stack> Drop for Scoped<'_, Input, Yield, Return, S> {
    fn drop(&mut self) {}
}

/// As for [`Scoped`] (an unstarted coroutine's closure may borrow too).
impl<Input, Yield, Return, S: Stack> Drop for ScopedCoroutine<'_, Input, Yield, Return, S> {
    fn drop(&mut self) {}
}

impl<Yield, S: Stack> Iterator for Scoped<'_, (), Yield, (), S> {
    type Item = Yield;

    /// Resumes the generator; `None` once it has returned.
    fn next(&mut self) -> Option<Yield> {
        self.co.next()
    }
}

/// Once the body has returned (or panicked), every `next` is `None`.
impl<Yield, S: Stack> FusedIterator for Scoped<'_, (), Yield, (), S> {}

impl<Input, Yield, Return, S: Stack> fmt::Debug for ScopedCoroutine<'_, Input, Yield, Return, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedCoroutine").finish_non_exhaustive()
    }
}

impl<Input, Yield, Return, S: Stack> fmt::Debug for Scoped<'_, Input, Yield, Return, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("started", &self.started())
            .field("done", &self.done())
            .finish()
    }
}
