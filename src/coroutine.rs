//! The safe asymmetric coroutine: [`Coroutine`], its [`Yielder`], and the
//! [`CoroutineResult`] that `resume` returns.
//!
//! # How values cross
//!
//! Both directions pass one machine word through `arch::switch`: the
//! address of the value on the sender's stack, which the receiver moves
//! out with `ptr::read` while the sender is suspended (so the sender wraps
//! it in `ManuallyDrop` and never drops it itself). An address is never 0,
//! so 0 carries the rare messages:
//! - from the resumer, 0 means "unwind and finish" (drop, `into_stack`);
//! - from the coroutine, 0 means "finished": the address of its `Ending`
//!   (returned, panicked, or unwound) is then in the stack's spare word.
//!
//! So a round trip stores and loads each value once, and tests one word.
//!
//! # Lifetimes and variance
//!
//! A suspended body keeps whatever it holds on its stack, and safe code
//! may `mem::forget` its `Coroutine`: the stack then stays mapped with the
//! frames on it, and nothing on it runs or is dropped again until its
//! thread exits, where the thread's exit hook unwinds it in place (see
//! [Thread-locals](#thread-locals)): its destructors then run, long after
//! whatever they point at may have gone. So anything a body can reach must
//! stay valid for as long as those frames exist, which may be until the
//! thread ends (or forever, where the hook does not run). The rules that follow from it, for `Coroutine<Input,
//! Yield, Return, S>`:
//!
//! - The body is `'static` (the closure's type).
//! - `Input` is `'static`: each resume hands the body a value that its
//!   frames may keep, or pass to a scoped thread that a forgotten coroutine
//!   never joins. A borrowed input does not compile:
//!
//!   ```compile_fail
//!   let seven = 7u32;
//!   let mut co = corostack::Coroutine::new(|_, n: &u32| *n);
//!   co.resume(&seven); // `seven` does not live long enough: Input is 'static
//!   ```
//!
//! - `Yield` is `'static` too: a yielded value is shared between the
//!   caller and the suspended body, which may keep a copy of it (a
//!   `&Mutex<Option<&T>>` that a scoped thread of the body reads), so the
//!   caller could put its own borrows through it into frames that a
//!   forgotten coroutine keeps forever. Found by an attack: a scoped thread
//!   in a forgotten coroutine read a freed box that way.
//!
//!   ```compile_fail
//!   use std::sync::Mutex;
//!   use corostack::{Coroutine, Yielder};
//!   type Slot<'a> = &'a Mutex<Option<&'a u64>>;
//!   fn leaky<'a>() -> Coroutine<(), Slot<'a>, ()> {
//!       Coroutine::new(|y: &Yielder<(), Slot<'a>>, ()| {
//!           let slot: Slot<'a> = Box::leak(Box::new(Mutex::new(None)));
//!           y.suspend(slot); // Yield is 'static: Slot<'a> is not
//!       })
//!   }
//!   ```
//!
//! - `Coroutine` is invariant in `Input`: no coercion can change the type of
//!   what the suspended body already holds, in either direction.
//!
//!   ```compile_fail
//!   use corostack::Coroutine;
//!   fn widen<'a>(co: Coroutine<&'a u32, (), ()>) -> Coroutine<&'static u32, (), ()> {
//!       co
//!   }
//!   ```
//!   ```compile_fail
//!   use corostack::Coroutine;
//!   fn narrow<'a>(co: Coroutine<&'static u32, (), ()>) -> Coroutine<&'a u32, (), ()> {
//!       co
//!   }
//!   ```
//!
//! - `Return` comes out when the body's frames are gone (a finished body
//!   has joined its scoped threads), so it need not be `'static`. Yields
//!   and the return only come out, so `Coroutine` is covariant in both: a
//!   coroutine that yields `&'static str` is one that yields `&'a str`.
//!
//!   ```
//!   use corostack::Coroutine;
//!   fn shorten<'a>(co: Coroutine<(), &'static str, ()>) -> Coroutine<(), &'a str, ()> {
//!       co
//!   }
//!   let mut co = shorten(Coroutine::new(|y, ()| y.suspend("hi")));
//!   assert_eq!(co.resume(()).as_yield(), Some("hi"));
//!   ```
//!
//! - [`Yielder`] is invariant in both its parameters; the body gets it by
//!   reference for the body's call only, and it is neither `Send` nor
//!   `Sync`.
//! - The stack `S` promises (the [`Stack`] contract) that its memory is not
//!   used for anything else until the value is dropped: a forgotten
//!   coroutine forgets its stack, whose memory then stays reserved.
//!
//! [`Generator`](crate::Generator) and
//! [`AsyncCoroutine`](crate::bridge::AsyncCoroutine) are built on
//! `Coroutine` and inherit these rules (a generator's sent type is its
//! `Input`; an `AsyncCoroutine`'s output is its `Return`).
//!
//! # Threat model: what can be running when
//!
//! - [`Coroutine::resume`] runs on any stack: the thread's, another
//!   coroutine's (nesting), a greenlet's, an [`on_stack`](crate::on_stack)
//!   call's. It needs `&mut self`, so the coroutine is not running: a body
//!   cannot resume itself, and two resumers cannot interleave.
//! - [`Yielder::suspend`] runs only on the body's call tree (the yielder is
//!   reachable nowhere else), which may have moved onto other stacks in
//!   between (`on_stack`, `maybe_grow`): the switch leaves from wherever
//!   the call is, and comes back there.
//! - Dropping a `Coroutine` (or [`Coroutine::into_stack`]) that has started
//!   and not finished unwinds its body on its own stack, from any stack and
//!   from any destructor (of a thread-local at thread exit included, with
//!   whatever thread-locals are left then: see
//!   [Thread-locals](#thread-locals): the thread's exit hook unwinds it
//!   first if it was suspended on its own stack when the hook ran). The
//!   destructors that unwind runs may do anything but suspend: nothing can
//!   resume them with an input. A suspend after the unwind began does not
//!   switch: if the thread is not unwinding (the body caught the unwind and
//!   went on) it raises the unwind again; if it is (from a destructor, most
//!   likely) it panics with a message saying so, and a panic that escapes
//!   a destructor during unwinding aborts the process, by Rust's own rule.
//!   A scheduler whose tasks must be able to suspend while they unwind
//!   (the hub's kill) unwinds them by an ordinary resume instead, with a
//!   panic of its own raised at the pending suspend.
//! - The unwind's private payload unwinds only the coroutine that was asked
//!   to unwind: raised anywhere else (a body that caught it and raised it
//!   again in another coroutine, or a nested coroutine that received it) it
//!   is an ordinary panic there, which reaches that coroutine's resumer.
//! - **The thread's exit hook** (see [Thread-locals](#thread-locals)):
//!   runs on whatever stack is running when the thread ends (inside
//!   `process::exit`, the caller's), before some of its thread-local
//!   destructors, and unwinds the thread's coroutines that are suspended
//!   on their own stacks with the forced unwind that a drop runs, though
//!   not where a drop would run it (see there).
//!
//! # Thread-locals
//!
//! A body that suspends inside `KEY.with(|d| ...)` keeps the borrow `d` in
//! a suspended frame, and `LocalKey::with` relies on its closure ending
//! before the thread does: a fiber switch inside `with` breaks that
//! (rust-lang/unsafe-code-guidelines issue 602, which also tracks that
//! Rust has no sound story for stack switching and thread-locals at all
//! yet). At thread exit `KEY`'s destructor runs; a coroutine dropped after
//! it (by another thread-local's destructor) would unwind a body whose
//! destructors read `d`, and a forgotten coroutine's scoped thread that
//! was lent `d` would go on reading it.
//!
//! What the crate does (`tests/thread_exit.rs`; the module
//! [`thread_exit`] has the design): at a thread's first coroutine start,
//! it registers an exit hook, the destructor of a thread-local of its
//! own. std registers a thread-local's destructor when the thread first
//! uses it and runs them last registered, first run (on glibc through
//! `__cxa_thread_atexit_impl`, or its own list in a static build); so the
//! hook runs before the destructors of the thread-locals
//! the thread used *before* the hook was registered, and after those used
//! later. [`thread_exit::rearm`] registers it
//! again. The hook unwinds, in place, every coroutine of the thread that
//! is suspended on its own stack, forgotten or not, with the forced unwind
//! that a drop runs: its destructors run and its `std::thread::scope`s
//! join their threads while those thread-locals are alive; a handle still
//! held somewhere then finds it done. It is not a drop, and the frames'
//! destructors can tell: it also unwinds coroutines that no drop would
//! ever reach (forgotten ones, and those a scheduler leaked), whose frames
//! then run again after whatever they use that was not kept alive for
//! them may be gone (a hub whose `run` has returned); and when the thread
//! calls `process::exit`, it runs inside `exit`, above the caller's frames,
//! so code those destructors switch to (a scheduler's loop that is among
//! the caller's frames, when a task parks) can still run there.
//!
//! **The rule**: a body may suspend inside `KEY.with` (or lend a borrow
//! from it to a scoped thread and suspend) only if the coroutine is
//! finished, or dropped by code that is not a thread-local destructor,
//! before the thread's thread-local destruction begins; or if the thread
//! used `KEY` before its exit hook was last registered (before its first
//! coroutine started, or before a call of `thread_exit::rearm`: one call
//! after the first use of such thread-locals is enough) and, when the
//! thread ends, the coroutine is suspended on its own stack (not inside
//! `on_stack`/`maybe_grow`) with the room for its unwind (below). A
//! thread-local without a destructor (a `const` `Cell` of a `Copy` type)
//! is never freed before the thread's memory: it is not concerned.
//!
//! What remains open (each reads a dropped thread-local where the rule is
//! broken):
//! - a thread-local first used after the hook's last registration: it is
//!   destroyed before the hook runs (std's order, pinned by a test), except
//!   on Windows (below);
//! - a coroutine suspended inside an [`on_stack`](crate::on_stack) or
//!   [`maybe_grow`](crate::maybe_grow) segment at thread exit: the hook
//!   cannot tell it from a running one, and leaves it (it is dropped or
//!   leaked as before); and one suspended with less stack left than the
//!   12 KiB that [`Coroutine::with_stack`] reserves for the entry and a
//!   forced unwind (15.5 KiB on powerpc64le): its unwind would hit the
//!   guard page (see [Panics, drops and unwinding](Coroutine#panics-drops-and-unwinding)),
//!   so it is left too;
//! - a coroutine that runs when the hook does (`process::exit` from a
//!   body): left alone, as Rust leaves the frames of every thread at
//!   `exit`;
//! - coroutines started after the hook ran (from thread-local
//!   destructors): they work, but the hook does not run again for them;
//! - [`SendAsyncCoroutine`](crate::bridge::SendAsyncCoroutine), whose
//!   contract already forbids such borrows across a suspend, is not
//!   listed;
//! - more than 16 registrations on one thread (its first start and 15
//!   `rearm` calls): `rearm` returns `false` after that;
//! - the hook relies on std's order of thread-local destructors, an
//!   implementation detail of std (pinned by a test), not a promise;
//! - `process::exit` runs no thread-local destructor of the calling
//!   thread on Windows (under Wine) nor in a statically linked Linux
//!   program, so the hook does not run at `exit` there, and nothing of
//!   the thread dies either.
//!
//! On Windows the hook is stronger: it runs from a TLS callback of the
//! crate's own, which the loader calls before std's (the one that runs
//! the thread-local destructors: the linkers order the callbacks by their
//! sections' names, `.CRT$XLAB` before std's `.CRT$XLB`), so it runs before
//! the destructor of every thread-local of the thread, whenever the thread
//! first used it, and `rearm` is not needed there (the first open case
//! above does not arise; `tests/attack_issue20.rs` pins it under Wine).
//! Without it, key-based thread-locals (`x86_64-pc-windows-gnu` has no
//! native ones) would die in the process-wide order of their keys'
//! creation, which no registration can follow.
//!
//! A panic that escapes the hook's unwind of a coroutine aborts the
//! process with a message, as a panic from a thread-local destructor does;
//! so does a resume or drop of the coroutine through its handle during
//! that unwind, by its destructors or by code they run (another
//! coroutine, a scheduler's loop, reaching the handle through a
//! thread-local): the hook runs the coroutine without borrowing its
//! handle. A coroutine suspended in a destructor run by its own unwind
//! (see the limits in [Panics, drops and unwinding](Coroutine#panics-drops-and-unwinding))
//! cannot be unwound: the hook's forced unwind runs the destructors
//! between its pending `suspend` and that destructor, escapes the
//! destructor, and the process aborts with Rust's "panic in a destructor
//! during cleanup", as the coroutine's drop would (the hub's killed tasks
//! that it leaks after its shutdown timeout are such).
//!
//! The hook unwinds whether or not the thread is panicking:
//! [`std::thread::panicking`] counts the thread's unwinds, not those of
//! one stack, and a forced unwind is a nested unwind on the coroutine's
//! own stack, caught by its entry, which Rust allows. So `process::exit`
//! called from a panic hook, or from a destructor during an unwind, with
//! coroutines suspended, unwinds them and ends the process with its
//! status (`tests/attack_issue20.rs`), and a greenlet suspended in the
//! middle of its own unwind does not keep the hook from unwinding the
//! coroutines. Inside a panic hook Rust aborts on a panic ("thread
//! panicked while processing panic"), so a destructor of those frames that
//! panics there, even one that would catch its panic, may abort the
//! process.

use core::cell::Cell;
use core::fmt;
use core::iter::FusedIterator;
use core::marker::PhantomData;
use core::mem::{self, ManuallyDrop};
use core::ptr;
#[cfg(feature = "std")]
use std::any::Any;
#[cfg(feature = "std")]
use std::panic::{self, AssertUnwindSafe};

use crate::arch;
use crate::context::{self, Enter, Tsan, addr, link_word, spare_word, take};
use crate::sanitizer::{self, AsanPeer, Fiber};
#[cfg(feature = "std")]
use crate::stack::DefaultStack;
use crate::stack::Stack;
#[cfg(feature = "std")]
use crate::thread_exit;

/// What [`Coroutine::resume`] returns: the body either suspended with a
/// value or returned one.
///
/// ```
/// use corostack::{Coroutine, CoroutineResult, Yielder};
///
/// let mut co = Coroutine::new(|y: &Yielder<(), &str>, ()| {
///     y.suspend("a line");
///     42
/// });
/// while let CoroutineResult::Yield(line) = co.resume(()) {
///     assert_eq!(line, "a line");
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoroutineResult<Yield, Return> {
    /// The body called [`Yielder::suspend`] with this value.
    Yield(Yield),
    /// The body returned this value; the coroutine is done.
    Return(Return),
}

impl<Yield, Return> CoroutineResult<Yield, Return> {
    /// The yielded value, if the body suspended.
    ///
    /// ```
    /// use corostack::CoroutineResult;
    ///
    /// assert_eq!(CoroutineResult::<u8, ()>::Yield(1).as_yield(), Some(1));
    /// assert_eq!(CoroutineResult::<u8, ()>::Return(()).as_yield(), None);
    /// ```
    pub fn as_yield(self) -> Option<Yield> {
        match self {
            CoroutineResult::Yield(y) => Some(y),
            CoroutineResult::Return(_) => None,
        }
    }

    /// The returned value, if the body finished.
    ///
    /// ```
    /// use corostack::CoroutineResult;
    ///
    /// assert_eq!(CoroutineResult::<(), u8>::Return(2).as_return(), Some(2));
    /// assert_eq!(CoroutineResult::<(), u8>::Yield(()).as_return(), None);
    /// ```
    pub fn as_return(self) -> Option<Return> {
        match self {
            CoroutineResult::Yield(_) => None,
            CoroutineResult::Return(r) => Some(r),
        }
    }
}

/// How a body finished.
enum Ending<R> {
    Returned(R),
    #[cfg(feature = "std")]
    Panicked(Box<dyn Any + Send>),
    /// A forced unwind (drop, `into_stack`) reached the top of the stack,
    /// or the body was dropped before it started.
    Unwound,
}

/// The marker of a handle that consumes `A`s and produces `B`s: `fn(A) -> B`
/// gives it that variance, and the raw pointer makes it neither `Send` nor
/// `Sync`.
#[cfg(feature = "std")]
pub(crate) type Marker<A, B> = PhantomData<(fn(A) -> B, *mut ())>;

/// The marker of [`Coroutine`]: invariant in `Input` (`fn(I) -> I`), so
/// that no lifetime inside an input type can shrink or grow; covariant in
/// `Yield` and `Return`, which only come out (see the module docs); and,
/// through the raw pointer, neither `Send` nor `Sync`.
type CoMarker<I, Y, R> = PhantomData<(fn(I) -> I, fn() -> (Y, R), *mut ())>;

/// The marker of [`Yielder`]: invariant in both, neither `Send` nor `Sync`.
type YielderMarker<I, Y> = PhantomData<(fn(I) -> I, fn(Y) -> Y, *mut ())>;

/// The panic payload that unwinds a suspended coroutine being dropped.
#[cfg(feature = "std")]
struct ForcedUnwind;

/// Whether a suspended coroutine's stack can be unwound: not without std
/// (no `catch_unwind`), nor with `panic = "abort"`.
const CAN_UNWIND: bool = cfg!(feature = "std") && !cfg!(panic = "abort");

/// The word that asks a coroutine to unwind, and that tells the resumer a
/// coroutine finished.
const SIGNAL: usize = 0;

/// What the spare word of a coroutine holds once it was finished without
/// ever starting (dropped, `force_unwind`, `force_reset` before its first
/// resume), so that [`Coroutine::started`] stays false: never what a
/// finished body leaves there (see [`ENDING_BIT`]: the address 0 is no
/// value's).
const NEVER_STARTED: usize = ENDING_BIT;

/// The bit of the spare word of a finished body that says what the rest
/// addresses (see [`Handed`], whose address is even): without it, the
/// value the body returned (the common ending, which then costs no tag
/// to store and test); with it, its `Ending` (a panic, an unwind, or a
/// value that a trap's closure returned).
const ENDING_BIT: usize = 1;

/// What a finished body hands over, on its stack: aligned to 2 at least,
/// so that the low bit of its address is free for [`ENDING_BIT`].
#[repr(C, align(2))]
struct Handed<T>(T);

/// What `with_stack` stores at the top of the coroutine's stack: the
/// coroutine's node in its thread's list for the exit hook (see
/// `thread_exit`), first, so that it lies at the top of the frames, where
/// the handle and the hook find it without knowing `F`; then the closure.
/// Frames never reach above the first frame, so the node stays intact for
/// the coroutine's whole life (a trap's closure goes below it too).
#[repr(C)]
struct Start<F> {
    #[cfg(feature = "std")]
    node: thread_exit::Node,
    f: F,
}

/// Defines `Coroutine`, with `DefaultStack` as the default stack type
/// where there is one (the `std` feature).
macro_rules! coroutine_struct {
    ($($default:tt)*) => {
        /// A stackful coroutine: a function running on its own [`Stack`], which
        /// can suspend itself anywhere in its call tree with
        /// [`Yielder::suspend`] and is continued with [`Coroutine::resume`].
        ///
        /// ```
        /// use corostack::{Coroutine, CoroutineResult};
        ///
        /// let mut co = Coroutine::new(|yielder, first: i32| {
        ///     let second = yielder.suspend(first * 10);
        ///     first + second
        /// });
        /// assert_eq!(co.resume(4), CoroutineResult::Yield(40));
        /// assert_eq!(co.resume(5), CoroutineResult::Return(9));
        /// assert!(co.done());
        /// ```
        ///
        /// A `Coroutine<(), Y, (), S>` is an [`Iterator`] over what it yields, the
        /// Python generator:
        ///
        /// ```
        /// let squares = corostack::Coroutine::new(|y, ()| (1..=4).for_each(|i| y.suspend(i * i)));
        /// assert_eq!(squares.collect::<Vec<_>>(), [1, 4, 9, 16]);
        /// ```
        ///
        /// # Bodies that borrow
        /// The body, its inputs and its yields are `'static` (the
        /// [rules](crate::coroutine#lifetimes-and-variance) say why): a body
        /// that borrows a function's argument fails with E0521 ("borrowed data
        /// escapes outside of function"), one that borrows a local with E0373
        /// or E0597. [`ScopedCoroutine`](crate::scoped::ScopedCoroutine) runs
        /// such a body inside a scope that ends before the borrows do.
        ///
        /// ```compile_fail,E0521
        /// fn sum(v: &[u32]) -> Option<u32> {
        ///     let mut co = corostack::Coroutine::new(move |_: &corostack::Yielder<(), ()>, ()| {
        ///         v.iter().sum::<u32>()
        ///     });
        ///     co.resume(()).as_return()
        /// }
        /// ```
        /// ```
        /// # #[cfg(feature = "std")] {
        /// fn sum(v: &[u32]) -> Option<u32> {
        ///     corostack::ScopedCoroutine::new(move |_: &corostack::Yielder<(), ()>, ()| {
        ///         v.iter().sum::<u32>()
        ///     })
        ///     .scope(|co| co.resume(()).as_return())
        /// }
        /// assert_eq!(sum(&[1, 2, 3]), Some(6));
        /// # }
        /// ```
        ///
        /// # Panics, drops and unwinding
        /// A panic in the body reaches the caller of `resume`, with its payload,
        /// and the coroutine is then done. Resuming a done coroutine panics.
        ///
        /// Dropping a coroutine that has started and not finished unwinds its
        /// stack, so every destructor on it runs: its pending `suspend` panics
        /// with a private payload, which the coroutine's first frame catches. A
        /// body that catches that panic itself (with `catch_unwind`) may run code,
        /// but every `suspend` it calls afterwards panics again (the value it
        /// handed to that `suspend` is dropped, and no switch happens); if it then
        /// returns normally, its return value is dropped (a panic of that drop
        /// counts as one that escapes the unwind, below). A destructor that the
        /// unwind runs cannot suspend either: its `suspend` panics with a message
        /// that says so, and since a panic that escapes a destructor during
        /// unwinding aborts the process (Rust's rule), finish a coroutine whose
        /// destructors suspend before dropping it. A panic that escapes while the
        /// stack unwinds reaches the code that dropped the coroutine (unless that
        /// code is itself unwinding, which is told by [`std::thread::panicking`]:
        /// a per-thread answer, so a coroutine dropped by one of several
        /// coroutines on a thread while another is suspended mid-unwind has its
        /// panic dropped too). The body has finished by then, and its stack is
        /// given back before that panic leaves `drop`, as after a clean unwind.
        ///
        /// Two limits of the same nature (found by adversarial tests):
        /// - a destructor run by the body's *own* panic may suspend, but the
        ///   thread's panic state crosses the switch with it
        ///   ([`std::thread::panicking`] is true in the resumer until the body
        ///   is resumed and its unwind ends), and dropping the coroutine while
        ///   it is suspended there raises the forced unwind inside that
        ///   unwind, which aborts the process (Rust's rule for a panic that
        ///   escapes a destructor during unwinding);
        /// - a forced unwind is a panic raised at the pending `suspend`, and
        ///   needs stack there (about 6 KiB on x86_64, 9 KiB on aarch64 and
        ///   riscv64): a body suspended closer than that to the bottom of its
        ///   stack hits the guard when dropped (the overflow message and an
        ///   abort).
        ///
        /// Without unwinding, that is without the `std` feature or with
        /// `panic = "abort"`, a suspended stack cannot be unwound, so dropping a
        /// suspended coroutine *leaks* its stack: nothing on it is dropped,
        /// freed or reused, since freeing memory that live (possibly pinned)
        /// values occupy would be unsound; `into_stack` then panics. An
        /// unstarted coroutine's closure is still dropped, and a finished
        /// coroutine's stack is still given back. Without `std` a panic in the
        /// body cannot be caught either: it goes to the panic handler.
        ///
        /// # Threads
        /// `Coroutine` is neither `Send` nor `Sync`. A body may read a
        /// thread-local's address, or hold an `Rc` or a `MutexGuard`, across a
        /// `suspend`; if the coroutine were resumed on another thread, that address
        /// would name the first thread's variable and the guard would be released
        /// by the wrong thread, and the compiler cannot see this inside the body.
        ///
        /// ```compile_fail
        /// fn assert_send<T: Send>(_: T) {}
        /// assert_send(corostack::Coroutine::<(), (), ()>::new(|_, ()| ()));
        /// ```
        pub struct Coroutine<Input, Yield, Return, S: Stack $($default)*> {
            /// The link word on the coroutine's stack (see `arch/`). It holds the
            /// sp of whichever side is suspended: the coroutine's own while it is
            /// suspended, the resumer's while it runs (which is what unwinders
            /// follow). So each switch reads the other side's sp from it and
            /// leaves its own there: one word, no other bookkeeping. Before the
            /// first resume it holds the initial sp; once the coroutine is done,
            /// the arch's dead sp, so that `resume` needs no check of its own: a
            /// switch there comes straight back with the word 0, as a finishing
            /// coroutine does, and the slow path tells the two apart.
            link: *mut usize,
            stack: ManuallyDrop<S>,
            /// The coroutine's ThreadSanitizer fiber (empty without it).
            fiber: Fiber,
            /// For AddressSanitizer (empty without it): the bounds of the
            /// stack the body suspended on last, which is not its own when
            /// it suspended inside `on_stack`; unknown, (0, 0), before.
            suspended_on: AsanPeer,
            /// Invariant in `Input`, covariant in `Yield` and `Return`,
            /// neither `Send` nor `Sync` (see [`CoMarker`]).
            _marker: CoMarker<Input, Yield, Return>,
        }
    };
}

#[cfg(feature = "std")]
coroutine_struct!(= DefaultStack);
#[cfg(not(feature = "std"))]
coroutine_struct!();

/// The handle a coroutine's body uses to suspend itself.
///
/// ```
/// use corostack::{Coroutine, Yielder};
///
/// // Suspending from deep in the call tree, not only from the body.
/// fn visit(y: &Yielder<(), u32>, depth: u32) {
///     if depth > 0 {
///         y.suspend(depth);
///         visit(y, depth - 1);
///     }
/// }
/// let co = Coroutine::new(|y, ()| visit(y, 3));
/// assert_eq!(co.collect::<Vec<_>>(), [3, 2, 1]);
/// ```
///
/// The body receives it by reference for the coroutine's whole life and
/// cannot move it out: the closure is `'static`, so no other coroutine or
/// thread can capture the reference, and `Yielder` is neither `Send` nor
/// `Sync`.
pub struct Yielder<Input, Yield> {
    /// The link word of this coroutine's stack: the resumer's saved sp.
    link: *mut usize,
    /// The resumer's stack, for AddressSanitizer (empty without it).
    resumer: AsanPeer,
    /// Set when a suspend of this yielder received the request to unwind
    /// (drop, `into_stack`): the body's entry then takes the private
    /// payload for its own unwind; the same payload raised anywhere else
    /// (another coroutine that received it, a body that kept it and raised
    /// it again) is an ordinary panic there, which reaches its resumer.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    unwinding: Cell<bool>,
    _marker: YielderMarker<Input, Yield>,
}

#[cfg(feature = "std")]
impl<Input, Yield, Return> Coroutine<Input, Yield, Return, DefaultStack> {
    /// Creates a coroutine that will run `f` on a [`DefaultStack`] of the
    /// default size, taken from the thread's pool of free stacks.
    ///
    /// `f` does not run until the first [`resume`](Coroutine::resume), whose
    /// input becomes `f`'s second argument.
    ///
    /// ```
    /// use corostack::{Coroutine, Yielder};
    ///
    /// let mut greet = Coroutine::new(|_: &Yielder<&str, ()>, name: &'static str| format!("hello {name}"));
    /// assert_eq!(greet.resume("world").as_return().as_deref(), Some("hello world"));
    /// ```
    ///
    /// # Panics
    /// When no stack can be mapped (the message says why).
    #[inline]
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'static,
        Input: 'static,
        Yield: 'static,
    {
        Self::with_stack(DefaultStack::default(), f)
    }

    /// [`new`](Coroutine::new) for code that must not panic when memory
    /// runs short (a server under memory pressure): the stack's mapping
    /// failure comes back as an error.
    ///
    /// ```
    /// use corostack::Coroutine;
    ///
    /// let mut co = Coroutine::try_new(|_: &corostack::Yielder<u32, ()>, n: u32| n + 1)?;
    /// assert_eq!(co.resume(1).as_return(), Some(2));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// The error of [`DefaultStack::new`]: `OutOfMemory` when the kernel
    /// refuses the mapping or its guard, for lack of memory or of mappings
    /// (the message names the stack size, the number of live stacks and
    /// `vm.max_map_count`).
    ///
    /// # Panics
    /// As [`with_stack`](Coroutine::with_stack), when the closure is too
    /// large for a stack of the default size.
    #[inline]
    pub fn try_new<F>(f: F) -> std::io::Result<Self>
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'static,
        Input: 'static,
        Yield: 'static,
    {
        let stack = DefaultStack::new(crate::stack::DEFAULT_STACK_SIZE)?;
        Ok(Self::with_stack(stack, f))
    }
}

impl<Input, Yield, Return, S: Stack> Coroutine<Input, Yield, Return, S> {
    /// Creates a coroutine that will run `f` on `stack`.
    ///
    /// The closure itself is stored at the top of the stack, so creating a
    /// coroutine allocates nothing besides the stack.
    ///
    /// Of the stack, the coroutine takes four times the closure's size
    /// (the closure, and room for three copies of it when the body starts,
    /// each padded to the closure's alignment) and 12 KiB before the body's
    /// own frames (for the first frames and a forced unwind; 15.5 KiB on
    /// powerpc64le, whose unwinder takes more). On a stack of
    /// [`MIN_STACK_SIZE`](crate::stack::MIN_STACK_SIZE) a closure of up to
    /// an eighth of it fits. The value the body returns is not counted:
    /// it is the body's own stack use, and in a debug build each layer
    /// between the body and the hand-over holds a copy of it, in a frame
    /// realigned to its alignment (a 64 KiB return needs more than a
    /// 1 MiB stack on some targets; a page-aligned one, 128 KiB on
    /// x86_64). Return a large value in a `Box`.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use corostack::{Coroutine, DefaultStack, Yielder};
    ///
    /// let stack = DefaultStack::new(128 * 1024).unwrap();
    /// let mut co = Coroutine::with_stack(stack, |y: &Yielder<u8, u8>, a| a + y.suspend(a));
    /// assert_eq!(co.resume(1).as_yield(), Some(1));
    /// assert_eq!(co.resume(2).as_return(), Some(3));
    /// # }
    /// ```
    ///
    /// # Panics
    /// When that does not fit in `stack` (the closure is too large for
    /// it), with a message that says so.
    #[inline]
    pub fn with_stack<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'static,
        Input: 'static,
        Yield: 'static,
    {
        // SAFETY: the closure, the inputs and the yields are 'static.
        unsafe { Self::with_stack_unchecked::<F, true>(stack, f) }
    }

    /// [`with_stack`](Coroutine::with_stack) of a coroutine left out of
    /// its thread's list for the exit hook (see `thread_exit`): for
    /// `SendAsyncCoroutine`, which may finish on another thread, and whose
    /// contract forbids borrows of thread-locals across a suspend.
    #[cfg(feature = "std")]
    pub(crate) fn with_stack_unlisted<F>(stack: S, f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return + 'static,
        Input: 'static,
        Yield: 'static,
    {
        // SAFETY: the closure, the inputs and the yields are 'static; the
        // node is left out right below, before any resume.
        let co = unsafe { Self::with_stack_unchecked::<F, false>(stack, f) };
        // SAFETY: the node that `with_stack_unchecked` wrote, before the
        // first resume: nothing else uses it yet.
        unsafe { thread_exit::Node::at(co.link).unlist() };
        co
    }

    /// [`with_stack`](Coroutine::with_stack) without its `'static` bounds,
    /// for [`ScopedCoroutine`](crate::scoped::ScopedCoroutine); with an
    /// entry that lists the coroutine for the thread's exit hook at its
    /// start (see `thread_exit`), or not (`LISTED`: a constant, so that a
    /// listed start tests nothing for it). One function, not a wrapper
    /// around another: each call that takes the closure by value is a copy
    /// of it on the caller's stack in a debug build (a highly aligned one
    /// realigns the frame too), and a layer more overflowed a test
    /// thread's stack under qemu-riscv64 (attack_core's 64 KiB-aligned
    /// closure).
    ///
    /// # Safety
    /// Whatever the closure, the inputs and the yields borrow outlives the
    /// coroutine's frames: the coroutine is finished or dropped (not
    /// forgotten) before those borrows end. Without `LISTED`, the caller
    /// leaves the node out of the list (`Node::unlist`) before the first
    /// resume.
    #[inline]
    pub(crate) unsafe fn with_stack_unchecked<F, const LISTED: bool>(stack: S, f: F) -> Self
    where
        F: FnOnce(&Yielder<Input, Yield>, Input) -> Return,
    {
        #[cfg(feature = "std")]
        crate::stack::install_overflow_handler();
        let fiber = Fiber::create();
        let start = Start {
            #[cfg(feature = "std")]
            node: thread_exit::Node::new(stack.limit(), fiber),
            f,
        };
        let copied = (mem::size_of::<F>(), mem::align_of::<F>());
        let (closure, sp) = context::place_closure(
            &stack,
            start,
            copied,
            entry::<Input, Yield, Return, F, LISTED>,
        );
        let link = link_word(closure);
        // SAFETY: the link word lies inside the frame init_stack just wrote.
        unsafe { link.write(sp) };
        Coroutine {
            link,
            stack: ManuallyDrop::new(stack),
            fiber,
            suspended_on: AsanPeer::default(),
            _marker: PhantomData,
        }
    }

    /// Runs the coroutine until it suspends or returns.
    ///
    /// The first call's `input` is the body's second argument; each later
    /// call's `input` is what the pending [`Yielder::suspend`] returns.
    ///
    /// ```
    /// use corostack::{Coroutine, CoroutineResult};
    ///
    /// let mut co = Coroutine::new(|y, first: char| {
    ///     let second = y.suspend(first.to_ascii_uppercase());
    ///     format!("{first}{second}")
    /// });
    /// assert_eq!(co.resume('a'), CoroutineResult::Yield('A'));
    /// assert_eq!(co.resume('b'), CoroutineResult::Return("ab".to_string()));
    /// ```
    ///
    /// # Panics
    /// If the body panics, with the body's payload (the coroutine is then
    /// done); and with "resumed a coroutine that has already finished"
    /// when the coroutine is done.
    #[inline]
    pub fn resume(&mut self, input: Input) -> CoroutineResult<Yield, Return> {
        let input = ManuallyDrop::new(input);
        match self.switch_in(addr(&input)) {
            SIGNAL => self.finished(input),
            // SAFETY: the coroutine sent the address of a yielded value on
            // its stack, which stays put while it is suspended; we move it
            // out once.
            y => CoroutineResult::Yield(unsafe { take::<Yield>(y) }),
        }
    }

    /// The coroutine has finished, or had already (its link word held the
    /// dead sp, which came straight back with 0 and left it there).
    #[inline]
    fn finished(&mut self, input: ManuallyDrop<Input>) -> CoroutineResult<Yield, Return> {
        if self.done() {
            resumed_after_the_end(input);
        }
        // Otherwise the coroutine took the input: `input` stays undropped.
        let word = self.take_word();
        if word & ENDING_BIT != 0 {
            // SAFETY: the word of a finished body, taken once.
            unsafe { Self::ended_otherwise(word) }
        }
        // SAFETY: as in `take_ending`, a returned value.
        CoroutineResult::Return(unsafe { take::<Handed<Return>>(word).0 })
    }

    /// A resume's ending that is not a returned value (a body returns
    /// its value through `leave_returned`, a trap's closure too): a panic,
    /// which goes on here.
    ///
    /// # Safety
    /// `word` is what a finished body left in the spare word, with
    /// `ENDING_BIT`, and nothing took its ending yet.
    #[cold]
    #[inline(never)]
    unsafe fn ended_otherwise(word: usize) -> ! {
        // SAFETY: as the caller promises.
        match unsafe { take::<Handed<Ending<Return>>>(word & !ENDING_BIT).0 } {
            #[cfg(feature = "std")]
            Ending::Panicked(payload) => panic::resume_unwind(payload),
            // Only `unwind` sends the request that ends in this.
            Ending::Unwound => unreachable!("corostack: unwound without a request"),
            Ending::Returned(_) => unreachable!("corostack: a value returned with ENDING_BIT"),
        }
    }

    /// Marks the coroutine done, and returns what its body left in the
    /// spare word when it finished (see `ENDING_BIT`).
    fn take_word(&mut self) -> usize {
        // SAFETY: the link word is a word of our stack, alive with it.
        unsafe { self.link.write(arch::dead_sp()) };
        // SAFETY: the spare word is a word of our stack, alive with it.
        unsafe { spare_word(self.link).read() }
    }

    /// Moves out the ending a finished body left in the spare word, and
    /// marks the coroutine done.
    fn take_ending(&mut self) -> Ending<Return> {
        let word = self.take_word();
        // SAFETY: the body wrote the address of its returned value, or of
        // its Ending with `ENDING_BIT`, into the spare word of its stack as
        // its last act (`leave_returned`, `leave_with`); the stack is not
        // reused until we return, and we move the value out once.
        unsafe {
            if word & ENDING_BIT == 0 {
                Ending::Returned(take::<Handed<Return>>(word).0)
            } else {
                take::<Handed<Ending<Return>>>(word & !ENDING_BIT).0
            }
        }
    }

    /// The saved sp in the link word (meaningful while not running).
    fn saved_sp(&self) -> usize {
        // SAFETY: the link word is a word of our stack, alive with it.
        unsafe { self.link.read() }
    }

    /// Warms the cache for a resume to come, as a scheduler does for the
    /// next coroutines in its queue: brings in the link word and, with
    /// `frames`, reads it and brings in the first lines of the suspended
    /// frames it points at (so a scheduler asks for the link a turn
    /// earlier, and for the frames the next). A hint only: it changes
    /// nothing the program can see and never faults; on a running or
    /// finished coroutine it is merely useless.
    ///
    /// ```
    /// let mut co = corostack::Coroutine::new(|y, ()| y.suspend(1));
    /// co.resume(());
    /// co.prefetch(false); // the link word, for a resume a few turns away
    /// co.prefetch(true); // and the suspended frames, for the next resume
    /// assert_eq!(co.resume(()).as_return(), Some(()));
    /// ```
    #[inline]
    pub fn prefetch(&self, frames: bool) {
        /// The lines above a suspended sp that its resume reads first: the
        /// switch frame and its callers' frames.
        const LINES: usize = 4;
        arch::prefetch(self.link as usize);
        if frames {
            let sp = self.saved_sp();
            for line in 0..LINES {
                arch::prefetch(sp + line * 64);
            }
        }
    }

    /// Whether a `resume` has run the body: false before the first
    /// `resume`, and stays false for a coroutine finished without one
    /// (by [`force_unwind`](Coroutine::force_unwind) or
    /// [`force_reset`](Coroutine::force_reset), which then only dropped
    /// or leaked its closure), although it is then [`done`](Coroutine::done).
    ///
    /// ```
    /// let mut co = corostack::Coroutine::<(), (), ()>::new(|_, ()| ());
    /// co.force_unwind(); // drops the closure; the body never ran
    /// assert!(co.done() && !co.started());
    /// ```
    pub fn started(&self) -> bool {
        let initial = self.link as usize + arch::LINK_OFFSET - arch::INIT_FRAME_SIZE;
        let sp = self.saved_sp();
        // SAFETY: the spare word is a word of our stack, alive with it.
        sp != initial
            && (sp != arch::dead_sp() || unsafe { spare_word(self.link).read() } != NEVER_STARTED)
    }

    /// Marks a coroutine finished without ever starting as such (see
    /// [`Coroutine::started`]).
    fn mark_never_started(&mut self) {
        // SAFETY: the spare word is a word of our stack, alive with it, and
        // free once the coroutine is done.
        unsafe { spare_word(self.link).write(NEVER_STARTED) };
    }

    /// Whether the body has returned or panicked (or was unwound).
    pub fn done(&self) -> bool {
        self.saved_sp() == arch::dead_sp()
    }

    /// Unwinds the coroutine if it has started and not finished (see
    /// [Panics, drops and unwinding](Coroutine#panics-drops-and-unwinding)),
    /// then gives the stack back for reuse.
    ///
    /// ```
    /// use corostack::{Coroutine, Yielder};
    ///
    /// let mut co = Coroutine::new(|y: &Yielder<(), u8>, ()| loop { y.suspend(0) });
    /// co.resume(());
    /// let stack = co.into_stack(); // the endless body is unwound first
    /// let mut next = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| 5);
    /// assert_eq!(next.resume(()).as_return(), Some(5));
    /// ```
    ///
    /// # Panics
    /// With `panic = "abort"`, when the coroutine is suspended: its stack
    /// cannot be unwound, so it cannot be reused safely.
    pub fn into_stack(mut self) -> S {
        if !CAN_UNWIND && self.started() && !self.done() {
            panic!(
                "corostack: cannot unwind a suspended coroutine without std or under \
                 panic = \"abort\", so its stack cannot be given back"
            );
        }
        self.finish();
        self.fiber.destroy();
        // SAFETY: `self` is forgotten right after, so the stack is taken
        // out exactly once and never dropped in place.
        let stack = unsafe { ManuallyDrop::take(&mut self.stack) };
        mem::forget(self);
        stack
    }

    /// Unwinds the body now, as a drop would, keeping the handle (for
    /// corosensei's users: the same name and meaning): if it has started and
    /// not finished, its pending `suspend` panics with the private payload
    /// and every destructor on its stack runs (see
    /// [Panics, drops and unwinding](Coroutine#panics-drops-and-unwinding));
    /// an unstarted coroutine's closure is dropped. Afterwards [`done`]
    /// is true, a `resume` panics as for any finished coroutine, and
    /// [`into_stack`] gives the stack back. Nothing happens to a coroutine
    /// that is done already.
    ///
    /// ```
    /// use corostack::Coroutine;
    ///
    /// let mut co = Coroutine::new(|y, ()| {
    ///     let _s = String::from("dropped by the unwind");
    ///     y.suspend(1);
    /// });
    /// co.resume(());
    /// co.force_unwind();
    /// assert!(co.done());
    /// let stack = co.into_stack(); // back, for another coroutine
    /// # drop(stack);
    /// ```
    ///
    /// # Panics
    /// Without unwinding (no `std`, or `panic = "abort"`) when the body is
    /// suspended: see [`force_reset`](Coroutine::force_reset) for that case.
    /// A panic that escapes the unwind (from a destructor) reaches the
    /// caller, with the coroutine done.
    ///
    /// [`done`]: Coroutine::done
    /// [`into_stack`]: Coroutine::into_stack
    pub fn force_unwind(&mut self) {
        if !CAN_UNWIND && self.started() && !self.done() {
            panic!(
                "corostack: cannot unwind a suspended coroutine without std or under \
                 panic = \"abort\"; force_reset abandons it instead (unsafe)"
            );
        }
        self.finish();
    }

    /// Marks the coroutine done without running anything on its stack
    /// (corosensei's name and meaning): the frames of a suspended body are
    /// abandoned where they stand, none of their destructors runs, and an
    /// unstarted coroutine's closure is leaked. Afterwards [`done`] is true,
    /// a `resume` panics as for any finished coroutine, and [`into_stack`]
    /// gives the stack back, for a new coroutine to write over. For builds
    /// that cannot unwind (no `std`, `panic = "abort"`) and for a stack
    /// whose body cannot be trusted to unwind (abandoned after a trap).
    ///
    /// ```
    /// use corostack::Coroutine;
    ///
    /// let mut co = Coroutine::new(|y, ()| {
    ///     let n = 7u32; // nothing on this stack needs its drop
    ///     y.suspend(n);
    /// });
    /// co.resume(());
    /// // SAFETY: the suspended frames hold plain integers only.
    /// unsafe { co.force_reset() };
    /// assert!(co.done());
    /// ```
    ///
    /// # Safety
    /// It is as if the body's frames were `mem::forget`-ed and their memory
    /// then reused: nothing on the stack may rely on its destructor running
    /// before its memory is reused. No pinned value whose drop unregisters
    /// it from elsewhere (a future registered with an executor or a timer,
    /// an intrusive list node), no guard whose drop keeps other code from
    /// running on (`std::thread::scope`'s, which joins threads that may
    /// borrow the stack), nothing that other code holds a reference into.
    /// Values whose drop only frees (a `Vec`, a `Box`) are merely leaked.
    ///
    /// [`done`]: Coroutine::done
    /// [`into_stack`]: Coroutine::into_stack
    pub unsafe fn force_reset(&mut self) {
        if self.done() {
            return;
        }
        let fresh = !self.started();
        #[cfg(feature = "std")]
        if !fresh {
            // SAFETY: a started, unfinished coroutine of this thread, not
            // running (we hold it mutably).
            unsafe { thread_exit::unlink_abandoned(self.link) };
        }
        // The frames left on the stack are gone for ASan too: a new
        // coroutine there must not be blamed for their scopes.
        sanitizer::unpoison_stack(self.stack.limit(), self.stack.top() - self.stack.limit());
        // SAFETY: the link word is a word of our stack, alive with it; with
        // the dead sp there, nothing switches to the abandoned context
        // again (the caller vouches that nothing else needs it).
        unsafe { self.link.write(arch::dead_sp()) };
        self.suspended_on.set((0, 0));
        if fresh {
            self.mark_never_started();
        }
    }

    /// The handle a signal handler uses to send this coroutine back to its
    /// resumer after a trap (see [`CoroutineTrapHandler`](crate::CoroutineTrapHandler)
    /// and the [`trap`](crate::trap) module's docs): valid while this coroutine lives on
    /// this stack.
    #[cfg(feature = "std")]
    pub fn trap_handler(&self) -> crate::CoroutineTrapHandler<Return> {
        let top = self.stack.top();
        let closure = self.link as usize + arch::LINK_OFFSET;
        crate::trap::CoroutineTrapHandler {
            link: self.link as usize,
            low: self.stack.limit() - self.stack.guard_size(),
            top,
            frames_top: closure - arch::INIT_FRAME_SIZE,
            _return: PhantomData,
        }
    }

    /// Switches into the coroutine with the word `arg`; returns the word
    /// it sends back.
    #[inline(always)]
    fn switch_in(&mut self, arg: usize) -> usize {
        // A switch to a done coroutine's dead sp does not leave this stack:
        // ASan must not hear of it.
        let announce = !cfg!(feature = "asan") || !self.done();
        let bounds = match self.suspended_on.get() {
            (0, 0) => (self.stack.limit(), self.stack.top() - self.stack.limit()),
            known => known,
        };
        let enter = Enter {
            bounds: announce.then_some(bounds),
            tsan: Tsan::Resume(self.fiber),
        };
        // SAFETY: `self.link` is a word of our coroutine's stack, which
        // `self.stack` keeps alive; it holds the suspended coroutine's sp,
        // which only this `Coroutine` resumes, or the arch's dead sp, which
        // comes straight back. The switch leaves our sp there.
        let back = unsafe { context::switch(arg, *self.link, self.link, enter) };
        self.suspended_on.set(back.bounds);
        back.word
    }

    /// Warms the cache for the forced unwind of a suspended body: the
    /// lines that the unwinder's own frames take below the body's
    /// suspended sp, which it writes first (1.9 KiB below it on x86_64 in
    /// a release build; the first 2 KiB of more elsewhere), and the
    /// suspended frames just above it, which the switch and the unwinder
    /// read. On a stack that has not run for a while (the drop of one of
    /// many live coroutines) each of those lines is a miss; asked for
    /// together, the misses overlap instead of coming one at a time as the
    /// unwind goes deeper: 15% off such a drop on x86_64 (1.53 to 1.31 µs
    /// of CPU time, `examples/drop_probe.rs cold`), for 40 instructions
    /// (of 20,000) where the stack is hot. 3 KiB below or every other line
    /// did less. A hint only: no prefetch faults, whatever the address.
    #[inline(always)]
    fn prefetch_unwind(&self) {
        /// The bytes below the suspended sp that are brought in.
        const BELOW: usize = 2048;
        /// The bytes above it (past the top of the frames where a body is
        /// suspended near it: a prefetch there is as harmless).
        const ABOVE: usize = 512;
        /// The distance between two prefetches.
        const STRIDE: usize = 64;
        let low = self.saved_sp().wrapping_sub(BELOW);
        // A fixed count, which the compiler unrolls into one prefetch an
        // address.
        for line in 0..(BELOW + ABOVE) / STRIDE {
            arch::prefetch(low.wrapping_add(line * STRIDE));
        }
    }

    /// Drives a started or unstarted coroutine to its end by unwinding.
    #[inline]
    fn finish(&mut self) {
        if !self.done() {
            self.unwind(false);
        }
    }

    /// `finish` for a coroutine not done yet; `drop` calls it with
    /// `in_drop`. A panic that the unwind ends in (a closure whose drop
    /// panics, a body that catches the forced unwind and panics, or returns
    /// a value whose drop panics) is resumed here; the body has finished by
    /// then, so for `drop`, which the panic leaves before its own release,
    /// the stack is given back first.
    #[cold]
    #[inline(never)]
    fn unwind(&mut self, in_drop: bool) {
        let fresh = !self.started();
        if !fresh {
            self.prefetch_unwind();
        }
        // The request goes to the pending suspend, which unwinds the body;
        // every later suspend unwinds again at once or panics (see
        // `Yielder::suspend_while_unwinding`) without switching, so the
        // one word that comes back says the body has finished.
        let word = self.switch_in(SIGNAL);
        debug_assert_eq!(word, SIGNAL, "a coroutine being unwound yielded");
        let ending = self.take_ending();
        if fresh {
            self.mark_never_started();
        }
        // Without std no panic comes back (`Ending` has no `Panicked`).
        #[cfg(not(feature = "std"))]
        let _ = in_drop;
        // A body that caught the unwind and returned: nobody takes its
        // value, and a panic from its drop ends the unwind as a body's
        // would (for `drop`, after the stack is given back).
        #[cfg(feature = "std")]
        let ending = match ending {
            Ending::Returned(r) => match panic::catch_unwind(AssertUnwindSafe(move || drop(r))) {
                Ok(()) => Ending::Unwound,
                Err(p) => Ending::Panicked(p),
            },
            ending => ending,
        };
        match ending {
            Ending::Unwound | Ending::Returned(_) => {}
            #[cfg(feature = "std")]
            Ending::Panicked(payload) if std::thread::panicking() => drop(payload),
            #[cfg(feature = "std")]
            Ending::Panicked(payload) => {
                if in_drop {
                    self.fiber.destroy();
                    // SAFETY: `drop` is the caller, and the panic resumed
                    // below leaves it before its own release: the stack is
                    // dropped once, and the body that used it has finished.
                    unsafe { ManuallyDrop::drop(&mut self.stack) };
                }
                panic::resume_unwind(payload)
            }
        }
    }
}

impl<Input, Yield, Return, S: Stack> Drop for Coroutine<Input, Yield, Return, S> {
    #[inline]
    fn drop(&mut self) {
        if !CAN_UNWIND && self.started() && !self.done() {
            // Nothing can unwind the stack: leak it rather than free memory
            // that live (possibly pinned) values still occupy.
            return;
        }
        if !self.done() {
            // The copy below relies on it: no field's drop glue runs twice.
            const { assert!(!mem::needs_drop::<Fiber>() && !mem::needs_drop::<AsanPeer>()) };
            // SAFETY: a bitwise copy that takes over: `drop` is the last use
            // of `self`, whose fields have no drop glue of their own (the
            // stack is `ManuallyDrop`, the assertion above checks the rest),
            // and the copy is `ManuallyDrop` too.
            Self::drop_unfinished(ManuallyDrop::new(unsafe { ptr::read(self) }));
            return;
        }
        self.fiber.destroy();
        // SAFETY: `drop` runs once; the stack is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.stack) };
    }
}

impl<Input, Yield, Return, S: Stack> Coroutine<Input, Yield, Return, S> {
    /// `drop` of a coroutine not done yet: unwinds it, then releases its
    /// stack (before a panic that the unwind ended in leaves, see
    /// `unwind`). It takes the coroutine by value, a copy made on this
    /// cold path, so that the handle's address does not escape from the
    /// caller's fast path: the compiler then keeps the handle's words in
    /// registers and spill slots there, not stored in a struct besides.
    #[cold]
    #[inline(never)]
    fn drop_unfinished(mut this: ManuallyDrop<Self>) {
        this.unwind(true);
        this.fiber.destroy();
        // SAFETY: the copy took over from the dropped handle; its stack is
        // released once, here (on a panic `unwind` released it and the
        // panic skips this; `this` is `ManuallyDrop`).
        unsafe { ManuallyDrop::drop(&mut this.stack) };
    }
}

impl<Yield, S: Stack> Iterator for Coroutine<(), Yield, (), S> {
    type Item = Yield;

    /// Resumes the generator; `None` once it has returned.
    fn next(&mut self) -> Option<Yield> {
        if self.done() {
            return None;
        }
        self.resume(()).as_yield()
    }
}

/// Once the body has returned (or panicked), every `next` is `None`.
impl<Yield, S: Stack> FusedIterator for Coroutine<(), Yield, (), S> {}

impl<Input, Yield, Return, S: Stack> fmt::Debug for Coroutine<Input, Yield, Return, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coroutine")
            .field("started", &self.started())
            .field("done", &self.done())
            .field("stack_top", &format_args!("{:#x}", self.stack.top()))
            .finish()
    }
}

impl<Input, Yield> Yielder<Input, Yield> {
    /// Suspends the coroutine, handing `value` to the caller of
    /// [`Coroutine::resume`], and returns the input of the next `resume`.
    ///
    /// ```
    /// use corostack::{Coroutine, Yielder};
    ///
    /// // The first number is the body's argument, the next ones come back
    /// // from each suspend.
    /// let mut ask = Coroutine::new(|y: &Yielder<i32, &str>, a: i32| {
    ///     let b = y.suspend("second number?");
    ///     let c = y.suspend("third number?");
    ///     a + b + c
    /// });
    /// assert_eq!(ask.resume(1).as_yield(), Some("second number?"));
    /// assert_eq!(ask.resume(2).as_yield(), Some("third number?"));
    /// assert_eq!(ask.resume(3).as_return(), Some(6));
    /// ```
    ///
    /// # Panics
    /// While the coroutine is being dropped (see
    /// [`Coroutine`](Coroutine#panics-drops-and-unwinding)): the panic
    /// unwinds the stack so that its destructors run.
    #[inline]
    pub fn suspend(&self, value: Yield) -> Input {
        #[cfg(feature = "std")]
        if self.unwinding.get() {
            self.suspend_while_unwinding(value);
        }
        let value = ManuallyDrop::new(value);
        let enter = Enter {
            bounds: Some(self.resumer.get()),
            tsan: Tsan::Suspend,
        };
        // SAFETY: the link word holds the sp of the resumer, which is
        // suspended inside `resume` (a Yielder is only reachable from its
        // body, which runs only while resumed); the switch leaves our sp
        // there for the next resume.
        let back = unsafe { context::switch(addr(&value), *self.link, self.link, enter) };
        self.resumer.set(back.bounds);
        match back.word {
            #[cfg(feature = "std")]
            SIGNAL => {
                self.unwinding.set(true);
                panic::resume_unwind(Box::new(ForcedUnwind))
            }
            #[cfg(not(feature = "std"))]
            SIGNAL => unreachable!("corostack: nothing unwinds a coroutine without std"),
            // SAFETY: the resumer sent the address of an Input on its stack
            // and is suspended until we switch back; we move it out once.
            input => unsafe { take::<Input>(input) },
        }
    }
}

impl<Input, Yield> Yielder<Input, Yield> {
    /// A suspend after the request to unwind: from a body that caught
    /// the unwind, or from a destructor that the unwind runs. Nothing can
    /// resume the body with an input any more, so it never returns: the
    /// value is dropped, and if the thread is not unwinding (the body
    /// caught the unwind and went on) the unwind is raised again; if it is
    /// (most likely from a destructor), this panics with a message, and a
    /// destructor that lets it out aborts the process as Rust aborts for
    /// any panic that escapes a destructor during unwinding.
    #[cfg(feature = "std")]
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn suspend_while_unwinding(&self, value: Yield) -> ! {
        drop(value);
        if !std::thread::panicking() {
            panic::resume_unwind(Box::new(ForcedUnwind));
        }
        panic!(
            "corostack: suspend called while its coroutine is being dropped (from a destructor \
             run by the unwind, most likely): nothing can resume it; finish the coroutine \
             before dropping it, or do not suspend in destructors"
        );
    }
}

impl<Input, Yield> Yielder<Input, Yield> {
    /// Runs `f` on the stack of the context that last resumed the
    /// coroutine, and returns its value (corosensei's name and meaning): for
    /// stack-hungry work (a deep recursion, a large buffer, a foreign call
    /// that wants a big stack) from a coroutine with a small stack. A panic
    /// in `f` propagates from here, in the body. A backtrace taken inside
    /// `f` shows the body's frames, then the resumer's.
    ///
    /// `f` runs below the resumer's suspended frames, in the part of its
    /// stack that the resumer is not using while it waits in `resume`; the
    /// coroutine does not suspend (nothing is switched to but that stack).
    /// `f` is `Send`, so that nothing tied to the body's own stack (the
    /// yielder itself, which is neither `Send` nor `Sync`) leaks into it.
    ///
    /// ```
    /// use corostack::{Coroutine, DefaultStack, Yielder};
    ///
    /// fn depth(n: u64) -> u64 {
    ///     if n == 0 { 0 } else { 1 + std::hint::black_box(depth(n - 1)) }
    /// }
    /// // 64 KiB of stack, and a recursion that needs more, run on the
    /// // resumer's (the thread's stack here).
    /// let stack = DefaultStack::new(64 * 1024).unwrap();
    /// let mut co = Coroutine::with_stack(stack, |y: &Yielder<u64, ()>, n: u64| {
    ///     y.on_parent_stack(move || depth(n))
    /// });
    /// assert_eq!(co.resume(4_000).as_return(), Some(4_000));
    /// ```
    ///
    /// The yielder cannot leak into the call (it is neither `Send` nor
    /// `Sync`):
    ///
    /// ```compile_fail
    /// let mut co = corostack::Coroutine::<(), (), ()>::new(|y, ()| {
    ///     y.on_parent_stack(|| y.suspend(()))
    /// });
    /// ```
    ///
    /// # Panics
    /// With `f`'s payload, if `f` panics.
    #[cfg(feature = "std")]
    pub fn on_parent_stack<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        // SAFETY: while the body runs, its link word holds the sp of the
        // resumer, which waits in its switch.
        let resumer_sp = unsafe { self.link.read() };
        // Below the resumer's frames, past a red zone's worth, aligned.
        let top = (resumer_sp - PARENT_GAP) & !(arch::STACK_ALIGNMENT - 1);
        // To memcheck, the resumer's stack below its sp is dead memory
        // until its sp goes there: the first frame is written before.
        // (With the red zone below it: the trampoline enters entry without
        // a `call`, which memcheck would take to announce it.)
        let first = arch::INIT_FRAME_SIZE + arch::RED_ZONE;
        sanitizer::valgrind_make_undefined(top - first, first);
        // The system's view of the resumer's stack (Windows: its TEB
        // fields), which the code below its frames runs on.
        // SAFETY: the resumer is suspended in its switch at `resumer_sp`.
        let info = unsafe { arch::StackInfo::of_suspended(resumer_sp) };
        // SAFETY: the memory below the resumer's sp is its stack's free
        // part: the resumer is suspended in `resume` until we switch back,
        // and we do not before `f` has finished, so nothing else uses it;
        // its guard (the thread's, or a `DefaultStack`'s) catches an
        // overflow there as on the resumer's own calls.
        unsafe { crate::grow::run_at(top, self.resumer.get(), info, f) }
    }
}

/// What [`Yielder::on_parent_stack`] leaves free below the resumer's
/// suspended sp: the ABI's red zone and at least 128 bytes more, in steps
/// of 256 (256 bytes on x86_64, whose red zone is 128; 512 on
/// powerpc64le, 288; 256 where there is none). The compiler keeps nothing
/// there across a switch, which is an `asm!` block that may push, but the
/// margin costs nothing.
#[cfg(feature = "std")]
const PARENT_GAP: usize = (arch::RED_ZONE + 128).next_multiple_of(256);

impl<Input, Yield> fmt::Debug for Yielder<Input, Yield> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Yielder").finish_non_exhaustive()
    }
}

/// The first function on a new coroutine's stack, called by the arch
/// trampoline with the first resume's message, the resumer's sp, and the
/// address of the closure that `with_stack` stored at the stack's top.
///
/// # Safety
/// Only the trampoline calls it, as `Coroutine::with_stack` arranged.
unsafe extern "C" fn entry<I, Y, R, F, const LISTED: bool>(
    msg: usize,
    _from: usize,
    closure: usize,
) -> !
where
    F: FnOnce(&Yielder<I, Y>, I) -> R,
{
    // The closure stays where `with_stack` wrote it until the one place
    // that consumes it: every move of a large closure would be a copy on
    // this stack (a dozen in a debug build, through `catch_unwind`'s
    // layers), which `place_closure` could not count.
    let start = ptr::with_exposed_provenance_mut::<Start<F>>(closure);
    // SAFETY: `with_stack` wrote a `Start<F>` at `start`; this takes the
    // address of its closure without reading it.
    let f = unsafe { &raw mut (*start).f };
    let yielder = Yielder {
        link: link_word(closure),
        resumer: AsanPeer::default(),
        unwinding: Cell::new(false),
        _marker: PhantomData,
    };
    yielder.resumer.set(context::arrive());
    if msg == SIGNAL {
        // Dropped before it started: drop the closure, out of the way of
        // the start's path.
        // SAFETY: `with_stack` wrote an F at `f`, which nothing else reads
        // or drops; the link word is ours, and holds the resumer's sp.
        unsafe { end_unstarted::<F, R>(f, yielder.link, yielder.resumer.get()) }
    }
    // SAFETY: the first resume sent the address of an I, as every
    // resume does.
    let input = unsafe { take::<I>(msg) };
    // Listed for the thread's exit hook while the body lives (see
    // `thread_exit`), unless `with_stack_unlisted` left it out.
    #[cfg(feature = "std")]
    if LISTED {
        // SAFETY: `with_stack` wrote the `Start`, whose node stays
        // at the top of the frames for the coroutine's life,
        // unmoved; a forgotten coroutine's stack stays forever,
        // listed. `LISTED`: not left out.
        unsafe { thread_exit::link(&(*start).node) };
    }
    let call = || {
        // SAFETY: `with_stack` wrote an F at `f`; it is moved out
        // once, here, straight into the call (a local would be one
        // more copy in a debug build).
        (unsafe { ptr::read(f) })(&yielder, input)
    };
    // Each ending leaves on a path of its own, so that the returned value's
    // (the common case) stores only its own words.
    #[cfg(feature = "std")]
    match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(r) => {
            // SAFETY: linked above, on this thread (a listed coroutine is
            // neither `Send` nor moved between threads), and not unlinked
            // since (`force_reset` and a trap, which do, abandon the frames
            // that would get here).
            if unsafe { thread_exit::unlink(&(*start).node) } {
                // SAFETY: our node, unlinked by the hook; the link word is
                // ours, and holds the resumer's sp.
                unsafe {
                    end_for_the_hook(
                        Ending::Returned(r),
                        start,
                        yielder.link,
                        yielder.resumer.get(),
                    )
                }
            }
            // SAFETY: the link word is ours, and holds the resumer's sp.
            unsafe { leave_returned(r, yielder.link, yielder.resumer.get()) }
        }
        // SAFETY: as for the unlink above, and the link word's.
        Err(p) => unsafe {
            end_panicked::<F, R>(
                p,
                yielder.unwinding.get(),
                start,
                yielder.link,
                yielder.resumer.get(),
            )
        },
    }
    // Without std a panic cannot be caught: it goes to the panic handler,
    // which does not return.
    #[cfg(not(feature = "std"))]
    {
        let r = call();
        // SAFETY: the link word is ours, and holds the resumer's sp.
        unsafe { leave_returned(r, yielder.link, yielder.resumer.get()) }
    }
}

/// The end of a body that panicked, or that a forced unwind reached
/// (`unwinding`: the yielder received the request to unwind): unlinks its
/// node and leaves with its ending.
///
/// # Safety
/// As `entry`'s unlink of the node of the `Start` at `start` and its
/// [`leave_with`] through `link`.
#[cfg(feature = "std")]
#[cold]
#[inline(never)]
unsafe fn end_panicked<F, R>(
    p: Box<dyn Any + Send>,
    unwinding: bool,
    start: *mut Start<F>,
    link: *mut usize,
    resumer: (usize, usize),
) -> ! {
    // Our own unwind, requested by our resumer; the payload of another's
    // is an ordinary panic here.
    let ending = if unwinding && p.is::<ForcedUnwind>() {
        Ending::<R>::Unwound
    } else {
        Ending::Panicked(p)
    };
    // SAFETY: as the caller promises.
    if unsafe { thread_exit::unlink(&(*start).node) } {
        // SAFETY: as the caller promises.
        unsafe { end_for_the_hook(ending, start, link, resumer) }
    }
    // SAFETY: as the caller promises.
    unsafe { leave_with(ending, link, resumer) }
}

/// The end of a body that the thread's exit hook unwound: nobody takes
/// the ending, which is dropped here; the cleared mark tells the hook that
/// this is our last switch.
///
/// # Safety
/// The node of the `Start` at `start` was unlinked by the hook; as
/// [`leave_with`] for `link`.
#[cfg(feature = "std")]
#[cold]
#[inline(never)]
unsafe fn end_for_the_hook<F, R>(
    ending: Ending<R>,
    start: *mut Start<F>,
    link: *mut usize,
    resumer: (usize, usize),
) -> ! {
    drop_for_the_hook(ending);
    // SAFETY: our node, as the caller promises.
    unsafe { (*start).node.unlist() };
    // SAFETY: as the caller promises.
    unsafe { leave_with(Ending::<R>::Unwound, link, resumer) }
}

/// The end of a coroutine dropped before it started: drops the closure at
/// `f` and leaves with the ending ([`Ending::Unwound`], or the panic of
/// the closure's drop).
///
/// # Safety
/// An `F` lies at `f`, which nothing else reads or drops; `link` is the
/// link word of the running coroutine, which holds the sp of its resumer,
/// whose stack has the bounds `resumer`.
#[cold]
#[inline(never)]
unsafe fn end_unstarted<F, R>(f: *mut F, link: *mut usize, resumer: (usize, usize)) -> ! {
    #[cfg(feature = "std")]
    let ending = {
        let drop_f = || {
            // SAFETY: as the caller promises.
            unsafe { ptr::drop_in_place(f) }
        };
        match panic::catch_unwind(AssertUnwindSafe(drop_f)) {
            Ok(()) => Ending::<R>::Unwound,
            Err(p) => Ending::Panicked(p),
        }
    };
    #[cfg(not(feature = "std"))]
    let ending = {
        // SAFETY: as the caller promises.
        unsafe { ptr::drop_in_place(f) };
        Ending::<R>::Unwound
    };
    // SAFETY: as the caller promises.
    unsafe { leave_with(ending, link, resumer) }
}

/// The last switch of a coroutine whose body returned `r`: hands it to the
/// resumer (its address in the spare word, the word `SIGNAL`).
///
/// # Safety
/// As [`leave_with`].
#[inline(always)]
unsafe fn leave_returned<R>(r: R, link: *mut usize, resumer: (usize, usize)) -> ! {
    let r = ManuallyDrop::new(Handed(r));
    // SAFETY: as the caller promises.
    unsafe { leave(addr(&r), link, resumer) }
}

/// The last switch of a coroutine: hands `ending` to the resumer (its
/// address with `ENDING_BIT` in the spare word, the word `SIGNAL`).
///
/// # Safety
/// `link` is the link word of the running coroutine, which holds the sp
/// of its resumer, whose stack has the bounds `resumer`.
#[inline(always)]
unsafe fn leave_with<R>(ending: Ending<R>, link: *mut usize, resumer: (usize, usize)) -> ! {
    let ending = ManuallyDrop::new(Handed(ending));
    // SAFETY: as the caller promises.
    unsafe { leave(addr(&ending) | ENDING_BIT, link, resumer) }
}

/// The last switch of a coroutine: `handed` (see `ENDING_BIT`) to the
/// spare word, and the word `SIGNAL` to the resumer.
///
/// # Safety
/// As [`leave_with`]; `handed` addresses a value on our stack that the
/// resumer takes.
#[inline(always)]
unsafe fn leave(handed: usize, link: *mut usize, resumer: (usize, usize)) -> ! {
    // SAFETY: the spare word of our stack is free once we have started.
    unsafe { spare_word(link).write(handed) };
    let enter = Enter {
        bounds: Some(resumer),
        tsan: Tsan::Suspend,
    };
    // SAFETY: as in `suspend`: the link word holds the resumer's sp, which
    // switched in and waits for our last word; nothing resumes us again
    // (the resumer marks the coroutine done).
    unsafe { context::leave_for_good(SIGNAL, *link, link, enter) }
}

/// Where a coroutine goes on after a trap (see `trap.rs`): entered with the
/// registers a signal handler wrote, at the top of the coroutine's stack,
/// every frame below abandoned; runs the closure at `slot` and leaves its
/// outcome to the resumer as the coroutine's ending.
///
/// # Safety
/// Only `CoroutineTrapHandler::setup_trap_handler`'s registers enter it: an
/// `F` at `slot`, `link` the coroutine's link word, holding its resumer's
/// sp (the coroutine was running when it trapped).
#[cfg(feature = "std")]
pub(crate) unsafe extern "C" fn trap_entry<F: FnOnce() -> R, R>(slot: usize, link: usize) -> ! {
    let link = ptr::with_exposed_provenance_mut::<usize>(link);
    // An overflow took the stack's one-shot guard pages on Windows: give
    // them back before the stack runs anything else.
    #[cfg(windows)]
    crate::stack::restore_guard();
    let call = || {
        // SAFETY: `setup_trap_handler` wrote an F at `slot`; it is moved out
        // once, straight into the call.
        (unsafe { ptr::read(ptr::with_exposed_provenance::<F>(slot)) })()
    };
    // SAFETY: the link word holds the resumer's sp, suspended in `resume`
    // while the coroutine ran (its bounds unknown here); nothing resumes
    // this context again.
    unsafe {
        match panic::catch_unwind(AssertUnwindSafe(call)) {
            Ok(r) => leave_returned(r, link, (0, 0)),
            Err(p) => leave_with(Ending::<R>::Panicked(p), link, (0, 0)),
        }
    }
}

/// Drops the ending of a body that the thread's exit hook unwound; a
/// panic that escaped the body (one that caught the unwind and panicked
/// on its own) aborts, as a drop would have raised it, and so does a
/// panic from that drop.
#[cfg(feature = "std")]
#[cold]
#[inline(never)]
fn drop_for_the_hook<R>(ending: Ending<R>) {
    if matches!(ending, Ending::Panicked(_)) {
        thread_exit::panicked_in_hook();
    }
    if panic::catch_unwind(AssertUnwindSafe(|| drop(ending))).is_err() {
        thread_exit::panicked_in_hook();
    }
}

/// A resume of a finished coroutine: drop its input, panic.
#[cold]
#[inline(never)]
fn resumed_after_the_end<I>(input: ManuallyDrop<I>) -> ! {
    drop(ManuallyDrop::into_inner(input));
    panic!("corostack: resumed a coroutine that has already finished");
}
