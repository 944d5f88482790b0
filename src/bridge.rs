//! Synchronous code that awaits futures: [`AsyncCoroutine`] runs a plain
//! (non-async) function on its own stack as a [`Future`], and inside it
//! [`AsyncYielder::block_on`] awaits any future from any depth of plain
//! function calls.
//!
//! ```
//! use corostack::bridge::{AsyncCoroutine, AsyncYielder};
//!
//! // A plain function, deep in a call tree, that needs an async result.
//! fn host_call(y: &AsyncYielder, x: u32) -> u32 {
//!     y.block_on(async move { x * 2 })
//! }
//!
//! let task = AsyncCoroutine::new(|y| host_call(y, 20) + 2);
//! assert_eq!(futures::executor::block_on(task), 42);
//! ```
//!
//! # Lifetimes and variance
//!
//! The body is `'static`, as a [`Coroutine`]'s is (see [its
//! rules](crate::coroutine#lifetimes-and-variance)): a forgotten
//! `AsyncCoroutine` keeps its body's frames, and the future they await,
//! on its stack. The output `R` only comes out, so it need not be
//! `'static` and `AsyncCoroutine` is covariant in it. A future awaited by
//! `block_on` may borrow the body's own locals: they live on the same
//! stack, which outlives the future.
//!
//! ```compile_fail
//! let name = String::from("borrowed");
//! let task = corostack::bridge::AsyncCoroutine::new(|_| name.len()); // not 'static
//! ```
//!
//! # How it works, and why it is sound
//!
//! Polling an `AsyncCoroutine` resumes its body with the address of the
//! poller's `Context` as the resume value. `block_on` polls its future with
//! that very `Context` (so the future registers the outer task's waker, and
//! a wake-up goes straight to the task: no waker of our own, no extra
//! wake-ups); while the future is pending, it suspends the body, and the
//! outer `poll` returns `Pending`. The next poll resumes the body with its
//! own `Context`, and `block_on` polls again.
//!
//! The address is used only while it is valid: the poller's `&mut Context`
//! lives for the whole `poll` call, and the poller is suspended inside that
//! call (in `Coroutine::resume`) for as long as the body runs, so the body
//! is the only user of the `Context` meanwhile. `block_on` clears the
//! address before each suspend and takes the next poll's address on
//! resumption, so it never polls with a stale one; while the coroutine is
//! being dropped (the body unwinds without a poller), a `block_on` in a
//! destructor polls with a no-op waker. A `block_on` called from inside a
//! future that `block_on` is polling would need a second `&mut` to the same
//! `Context` (and its suspend would leave the outer future's `Context`
//! dangling), so it panics instead.
//!
//! # Threads
//! [`AsyncCoroutine`] is `!Send`: a body may hold, across a `block_on`
//! that suspends, an `Rc`, a `MutexGuard` or the address of a thread-local,
//! and moving the suspended body to another thread would break them in ways
//! the compiler cannot see. So it runs on single-threaded executors (tokio's
//! `LocalSet` and current-thread runtime, `futures::executor`, a hand-written
//! poll loop). [`SendAsyncCoroutine`] is the `Send` form, behind an `unsafe`
//! constructor whose caller vouches for the body.
//!
//! ```compile_fail,E0277
//! fn assert_send<T: Send>(_: T) {}
//! assert_send(corostack::bridge::AsyncCoroutine::new(|_| ()));
//! ```
//!
//! ```
//! fn assert_send<T: Send>(_: T) {}
//! // SAFETY: the body holds nothing across a suspend.
//! assert_send(unsafe { corostack::bridge::SendAsyncCoroutine::new(|_| ()) });
//! ```

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::{Pin, pin};
use std::ptr;
use std::task::{Context, Poll, Waker};

use crate::coroutine::{Coroutine, CoroutineResult, Yielder};
use crate::stack::{DefaultStack, Stack};

/// The resume value of a body: the exposed address of the poller's
/// `Context`, or 0 when there is none.
type CxAddr = usize;

/// A plain function running on its own stack, as a [`Future`]: each poll
/// resumes the body until it returns (the future is then ready with its
/// value) or waits in [`AsyncYielder::block_on`] on a pending future (the
/// poll returns `Pending`; the inner future has registered the poller's
/// waker).
///
/// ```
/// use corostack::bridge::AsyncCoroutine;
///
/// // Synchronous code (a parser, a callback-driven library) that needs a
/// // value only a future gives: it waits for it where it stands.
/// fn sync_code(fetch: impl Fn(u32) -> u32) -> u32 {
///     (1..=3).map(fetch).sum()
/// }
/// let task = AsyncCoroutine::new(|y| sync_code(|n| y.block_on(async move { n * 10 })));
/// assert_eq!(futures::executor::block_on(task), 60);
/// ```
///
/// # Panics, drops
/// A panic in the body (or in a future it awaits) reaches the poller, with
/// its payload; the `AsyncCoroutine` is then done, and polling it again
/// panics, as does polling it after it returned.
///
/// Dropping an `AsyncCoroutine` whose body is suspended unwinds the body's
/// stack before the stack is freed or pooled: every destructor on it runs,
/// and the future pending in `block_on` is dropped. (Under
/// `panic = "abort"` the stack is leaked instead, as for [`Coroutine`].)
///
/// # Threads
/// `!Send` (see the [module docs](crate::bridge#threads));
/// [`SendAsyncCoroutine`] is the `Send` form.
pub struct AsyncCoroutine<R, S: Stack = DefaultStack> {
    co: Coroutine<CxAddr, (), R, S>,
}

/// The handle a body of an [`AsyncCoroutine`] uses to await futures.
///
/// The body receives it by reference and cannot move it out (the body is
/// `'static`); it is neither `Send` nor `Sync`.
pub struct AsyncYielder {
    /// The coroutine's yielder, which lives in its first frame for as long
    /// as the body runs.
    yielder: *const Yielder<CxAddr, ()>,
    /// The current poller's `Context` (see the module docs), 0 if none.
    cx: Cell<CxAddr>,
    /// Whether `block_on` is inside a poll of its future.
    polling: Cell<bool>,
    _not_send: PhantomData<*mut ()>,
}

impl<R> AsyncCoroutine<R, DefaultStack> {
    /// A future that runs `f` on a [`DefaultStack`] of the default size
    /// (from the thread's pool) when first polled.
    ///
    /// ```
    /// let task = corostack::bridge::AsyncCoroutine::new(|y| y.block_on(async { "done" }));
    /// assert_eq!(futures::executor::block_on(task), "done");
    /// ```
    ///
    /// # Panics
    /// When no stack can be mapped (the message says why).
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(&AsyncYielder) -> R + 'static,
    {
        Self::with_stack(DefaultStack::default(), f)
    }
}

impl<R, S: Stack> AsyncCoroutine<R, S> {
    /// A future that runs `f` on `stack` when first polled.
    ///
    /// ```
    /// use corostack::{DefaultStack, bridge::AsyncCoroutine};
    ///
    /// let stack = DefaultStack::new(64 * 1024).unwrap();
    /// let task = AsyncCoroutine::with_stack(stack, |y| y.block_on(async { 7 }));
    /// assert_eq!(futures::executor::block_on(task), 7);
    /// ```
    ///
    /// # Panics
    /// When the stack is too small for the closure (see
    /// [`Coroutine::with_stack`]).
    pub fn with_stack<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&AsyncYielder) -> R + 'static,
    {
        let co = Coroutine::with_stack(stack, move |yielder, cx: CxAddr| {
            f(&AsyncYielder::new(yielder, cx))
        });
        AsyncCoroutine { co }
    }

    /// `with_stack` of `SendAsyncCoroutine`, its coroutine left out of the
    /// thread's list for the exit hook (see
    /// `Coroutine::with_stack_unlisted`). Not a layer under `with_stack`:
    /// in a debug build each layer that takes the closure by value copies
    /// it on the caller's stack.
    fn with_stack_unlisted<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&AsyncYielder) -> R + 'static,
    {
        let co = Coroutine::with_stack_unlisted(stack, move |yielder, cx: CxAddr| {
            f(&AsyncYielder::new(yielder, cx))
        });
        AsyncCoroutine { co }
    }

    /// Whether the body has returned or panicked.
    pub fn done(&self) -> bool {
        self.co.done()
    }
}

// The stack memory does not move with the value (`Stack`'s contract), and
// a suspended `Coroutine` may be moved: nothing here is address-sensitive.
impl<R, S: Stack> Unpin for AsyncCoroutine<R, S> {}

impl<R, S: Stack> Future for AsyncCoroutine<R, S> {
    type Output = R;

    /// Resumes the body with `cx` until it returns or awaits a pending
    /// future.
    ///
    /// # Panics
    /// With the body's payload if it panics; when polled after it returned
    /// or panicked.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let this = self.get_mut();
        if this.co.done() {
            panic!("corostack: polled an AsyncCoroutine after it completed");
        }
        // The body uses this address only until it suspends or returns,
        // while `cx` is borrowed by this call (see the module docs).
        let addr = ptr::from_mut(cx).cast::<()>().expose_provenance();
        match this.co.resume(addr) {
            CoroutineResult::Yield(()) => Poll::Pending,
            CoroutineResult::Return(r) => Poll::Ready(r),
        }
    }
}

impl<R, S: Stack> fmt::Debug for AsyncCoroutine<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncCoroutine")
            .field("coroutine", &self.co)
            .finish()
    }
}

impl AsyncYielder {
    /// The handle of a body whose first frame holds `yielder`, first
    /// polled with the `Context` at `cx`.
    fn new(yielder: *const Yielder<CxAddr, ()>, cx: CxAddr) -> Self {
        AsyncYielder {
            yielder,
            cx: Cell::new(cx),
            polling: Cell::new(false),
            _not_send: PhantomData,
        }
    }

    /// Awaits `fut` from plain code: polls it with the poller's `Context`,
    /// and while it is pending suspends the body (the [`AsyncCoroutine`]'s
    /// poll returns `Pending`) until the task is polled again. Returns the
    /// future's output; a future that is ready at once costs no switch.
    ///
    /// ```
    /// use corostack::bridge::AsyncCoroutine;
    ///
    /// let (tx, rx) = futures::channel::oneshot::channel();
    /// let task = AsyncCoroutine::new(move |y| y.block_on(rx).unwrap() + 1);
    /// std::thread::spawn(move || tx.send(41).unwrap());
    /// assert_eq!(futures::executor::block_on(task), 42);
    /// ```
    ///
    /// # Panics
    /// If `fut` panics (with its payload); when called from inside a future
    /// that an outer `block_on` of the same body is polling (see the
    /// [module docs](crate::bridge#how-it-works-and-why-it-is-sound)); and,
    /// while the `AsyncCoroutine` is being dropped, when `fut` is pending
    /// (the body is being unwound and cannot wait).
    pub fn block_on<Fut: Future>(&self, fut: Fut) -> Fut::Output {
        let mut fut = pin!(fut);
        loop {
            if let Poll::Ready(out) = self.poll_once(fut.as_mut()) {
                return out;
            }
            // The poller's Context is valid only until we suspend.
            self.cx.set(0);
            // SAFETY: `yielder` points into the coroutine's first frame,
            // which outlives the body and so this borrow of `self`.
            let yielder = unsafe { &*self.yielder };
            let next = yielder.suspend(());
            self.cx.set(next);
        }
    }

    /// Polls `fut` once with the current poller's `Context`.
    fn poll_once<Fut: Future>(&self, fut: Pin<&mut Fut>) -> Poll<Fut::Output> {
        if self.polling.replace(true) {
            panic!(
                "corostack: AsyncYielder::block_on called from inside a future that \
                 block_on is polling; await that future with .await instead"
            );
        }
        /// Clears `polling` however the poll ends.
        struct Polling<'a>(&'a Cell<bool>);
        impl Drop for Polling<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _polling = Polling(&self.polling);
        match self.cx.get() {
            0 => fut.poll(&mut Context::from_waker(Waker::noop())),
            addr => {
                let cx = ptr::with_exposed_provenance_mut::<Context<'_>>(addr);
                // SAFETY: a non-zero `cx` is the address of the `Context`
                // of the poll that resumed the body; that poll is suspended
                // in `Coroutine::resume` until we suspend, and nothing else
                // uses the Context meanwhile: `polling` keeps a nested
                // block_on from taking a second reference.
                fut.poll(unsafe { &mut *cx })
            }
        }
    }
}

impl fmt::Debug for AsyncYielder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncYielder")
            .field("polled", &(self.cx.get() != 0))
            .finish_non_exhaustive()
    }
}

/// An [`AsyncCoroutine`] that is `Send`, so that multi-threaded executors
/// (tokio's `spawn`) can move it between polls. Only its `unsafe`
/// constructors make one.
pub struct SendAsyncCoroutine<R, S: Stack = DefaultStack>(AsyncCoroutine<R, S>);

// SAFETY: the constructors' callers promise that the body holds nothing
// across a suspend that would break on another thread; the closure, the
// output and the stack are Send.
unsafe impl<R: Send, S: Stack + Send> Send for SendAsyncCoroutine<R, S> {}

impl<R: Send> SendAsyncCoroutine<R, DefaultStack> {
    /// [`AsyncCoroutine::new`], `Send`.
    ///
    /// # Safety
    /// The body may be resumed on another thread after each `block_on` that
    /// suspends. So everything live on the body's stack at such a
    /// `block_on` (the locals of every frame of the body's call tree, and
    /// the future being awaited) must be fine to move to another thread:
    /// - no `!Send` values (`Rc`, `RefCell` borrows shared with other code
    ///   of the thread, `MutexGuard`s, which must be released by the thread
    ///   that took them);
    /// - no references to thread-locals, nor to anything else that belongs
    ///   to the thread (a value a thread-local's address was taken from is a
    ///   different variable on the next thread);
    /// - no reliance on the thread's identity staying the same across the
    ///   `block_on` (thread ids, thread-local state set before it).
    ///
    /// The compiler checks none of this inside the body (it checks only
    /// that the closure and the output are `Send`).
    pub unsafe fn new<F>(f: F) -> Self
    where
        F: FnOnce(&AsyncYielder) -> R + Send + 'static,
    {
        SendAsyncCoroutine(AsyncCoroutine::with_stack_unlisted(
            DefaultStack::default(),
            f,
        ))
    }
}

impl<R: Send, S: Stack + Send> SendAsyncCoroutine<R, S> {
    /// [`AsyncCoroutine::with_stack`], `Send`.
    ///
    /// # Safety
    /// As for [`SendAsyncCoroutine::new`].
    pub unsafe fn with_stack<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&AsyncYielder) -> R + Send + 'static,
    {
        SendAsyncCoroutine(AsyncCoroutine::with_stack_unlisted(stack, f))
    }
}

impl<R, S: Stack> Future for SendAsyncCoroutine<R, S> {
    type Output = R;

    /// As [`AsyncCoroutine`]'s `poll`, on whichever thread polls.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        // This thread may never have made a coroutine: give it the overflow
        // reporter's alternate signal stack.
        crate::stack::install_overflow_handler();
        /// Makes this thread forget the `on_stack` calls the body began
        /// during this poll and is suspended in (they may end on another
        /// thread), however the poll ends.
        struct Forget(u64);
        impl Drop for Forget {
            fn drop(&mut self) {
                crate::grow::forget_since(self.0);
            }
        }
        let _forget = Forget(crate::grow::mark());
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<R, S: Stack> fmt::Debug for SendAsyncCoroutine<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SendAsyncCoroutine").field(&self.0).finish()
    }
}
