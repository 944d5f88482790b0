//! Stacks for coroutines: the [`Stack`] contract, its size limits, and
//! (with the `std` feature) [`DefaultStack`], an anonymous mmap with four
//! guard pages below it, reused from a per-thread pool.
//!
//! The files, each one concept, lower layers first (each imports only the
//! ones above it in this list):
//! - `os.rs` (Unix) or `os_windows.rs`: what the system gives (page size,
//!   a guarded region of memory for a stack, the registry's table);
//! - `guards.rs`: the registry of guard pages, read by the overflow handler
//!   and by `maybe_grow`/`remaining_stack`;
//! - `overflow.rs`: the SIGSEGV/SIGBUS handler that reports an overflow
//!   (feature `overflow-handler`); on Windows `overflow_windows.rs`, a
//!   vectored exception handler;
//! - `mapping.rs`: one guarded, registered mmap;
//! - `pool.rs`: the per-thread pool of free mappings;
//! - `default.rs`: [`DefaultStack`], a mapping taken from and given back to
//!   the pool;
//! - `slice.rs`: [`SliceStack`], a stack over memory the embedder owns.
//!
//! ```
//! use corostack::stack::{DefaultStack, MIN_STACK_SIZE};
//! use corostack::{Coroutine, Yielder};
//!
//! // A small stack for a coroutine known to need little, given back and
//! // reused by the next one.
//! let stack = DefaultStack::new(MIN_STACK_SIZE).unwrap();
//! let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| 1 + 1);
//! assert_eq!(co.resume(()).as_return(), Some(2));
//! let mut next = Coroutine::with_stack(co.into_stack(), |_: &Yielder<(), ()>, ()| 3);
//! assert_eq!(next.resume(()).as_return(), Some(3));
//! ```

#[cfg(feature = "std")]
mod default;
#[cfg(feature = "std")]
pub(crate) mod guards;
#[cfg(feature = "std")]
mod mapping;
#[cfg(feature = "std")]
#[cfg_attr(windows, path = "os_windows.rs")]
mod os;
#[cfg(feature = "overflow-handler")]
#[cfg_attr(windows, path = "overflow_windows.rs")]
pub(crate) mod overflow;
#[cfg(feature = "std")]
mod pool;
#[cfg(feature = "std")]
mod slice;

#[cfg(feature = "std")]
pub use default::DefaultStack;
#[cfg(all(feature = "std", windows))]
pub(crate) use os::restore_guard;
#[cfg(feature = "std")]
pub(crate) use os::{REPORTS_RUNNING_STACK, page_size, thread_stack};
#[cfg(feature = "std")]
pub use pool::{raise_pool_capacity, set_pool_capacity, trim_pool};
#[cfg(feature = "std")]
pub use slice::SliceStack;

/// Sets up the overflow handler now (with the `overflow-handler` feature;
/// a no-op without it), as creating the first stack would: the process's
/// SIGSEGV and SIGBUS handler once, and this thread's alternate signal
/// stack. Every place that is about to run code on a stack of ours calls
/// it. An embedder with a signal handler of its own (trap recovery, see
/// [`CoroutineTrapHandler`](crate::CoroutineTrapHandler)) calls it first
/// and installs its handler after, so that its handler comes first; the
/// crate never installs its own again.
///
/// ```
/// // First the crate's handler (a no-op without `overflow-handler`), then
/// // the embedder's own sigaction for SIGSEGV and SIGBUS.
/// corostack::stack::install_overflow_handler();
/// ```
#[cfg(feature = "std")]
#[inline(always)]
pub fn install_overflow_handler() {
    #[cfg(feature = "overflow-handler")]
    overflow::install();
}

/// Gives the thread an alternate signal stack while the value lives, for
/// the unwinds that the thread-exit hook runs after std took the thread's
/// own away (see `overflow::ExitAltStack`): an overflow there is reported,
/// not a bare SIGSEGV. Nothing without the overflow handler, and on
/// Windows, whose handler runs on the faulting stack.
#[cfg(feature = "std")]
pub(crate) fn alt_stack_for_exit() -> impl Sized {
    #[cfg(all(not(windows), feature = "overflow-handler"))]
    return overflow::ExitAltStack::ensure();
    #[cfg(not(all(not(windows), feature = "overflow-handler")))]
    ()
}

/// What a coroutine needs of the memory it runs on.
///
/// # Safety
/// An implementation promises, for as long as the value lives and is not
/// moved out of a coroutine:
/// - `[limit(), top())` is readable and writable memory that nothing else
///   uses while a coroutine runs on it; `top()` is 16-aligned and above
///   `limit()` by at least [`MIN_STACK_SIZE`] bytes;
/// - that memory stays valid and reserved until the value is dropped: a
///   value that is never dropped (a forgotten coroutine forgets its stack,
///   with suspended frames on it that a scoped thread may still read)
///   never gives its memory back. So a type that merely borrows its
///   memory (`&'a mut [u8]`) cannot implement `Stack`: the borrow could end
///   without a drop;
/// - `guard_size()` bytes directly below `limit()` fault on any access (a
///   guard), or `guard_size()` is 0, in which case the user of the stack
///   takes on the risk that an overflow silently corrupts memory.
///
/// Moving the value must not move the memory (the memory is not inside it).
///
/// ```
/// use corostack::stack::{MIN_STACK_SIZE, Stack};
/// use corostack::{Coroutine, Yielder};
///
/// #[repr(C, align(16))]
/// struct Line([u8; 16]);
///
/// /// A stack in a heap block that it owns, without a guard.
/// struct HeapStack(Box<[Line]>);
///
/// // SAFETY: the block is the value's own and freed only when the value
/// // is dropped; moving the value does not move it; its end is 16-aligned
/// // (each Line is) and MIN_STACK_SIZE above its start; there is no guard,
/// // said by guard_size 0 (an overflow would corrupt the heap: the stack
/// // is sized for the body, which is known).
/// unsafe impl Stack for HeapStack {
///     fn top(&self) -> usize {
///         self.0.as_ptr_range().end as usize
///     }
///     fn limit(&self) -> usize {
///         self.0.as_ptr() as usize
///     }
///     fn guard_size(&self) -> usize {
///         0
///     }
/// }
///
/// let lines = (0..MIN_STACK_SIZE / 16).map(|_| Line([0; 16])).collect();
/// let mut co = Coroutine::with_stack(HeapStack(lines), |_: &Yielder<(), ()>, ()| 6 * 7);
/// assert_eq!(co.resume(()).as_return(), Some(42));
/// ```
pub unsafe trait Stack {
    /// The highest address, one past the last usable byte; a new
    /// coroutine's stack pointer starts here.
    fn top(&self) -> usize;
    /// The lowest usable address.
    fn limit(&self) -> usize;
    /// The size in bytes of the guard directly below [`limit`](Stack::limit).
    fn guard_size(&self) -> usize;
}

/// The smallest stack that `DefaultStack::new`, `SliceStack` and the hub's
/// `Builder::stack_size` accept: 32 KiB (64 KiB on powerpc64le, riscv64,
/// s390x and Windows, whose debug frames or unwinders take the most stack).
///
/// What it bounds: every stack of this size runs a coroutine whose closure
/// is at most an eighth of it (a new coroutine takes four times its
/// closure's size and 12 KiB (15.5 KiB on powerpc64le) before the body's
/// own frames, see
/// [`Coroutine::with_stack`](crate::Coroutine::with_stack)), and can
/// unwind it when it is dropped (a forced unwind from a shallow body took
/// up to 9 KiB on aarch64, which is why 16 KiB, the figure until 0.1, was
/// too little; 14.8 KiB on powerpc64le, whose frames and unwinder are the
/// largest, which is why it gets 64 KiB, the page size of its usual
/// kernels anyway). What the body itself uses comes on top,
/// and a panic is a large part of it: measured on x86_64, the first panic
/// of a process with the default panic hook took 23 KB of the stack it
/// was raised on, a later one 11 KB, with a silent hook 3 KB (on
/// powerpc64le, in a debug build under qemu-ppc64le: 51 KB, 34 KB and
/// 14 KB). On a
/// [`DefaultStack`] running past the bottom hits the guard pages (a SIGSEGV;
/// with the `overflow-handler` feature a message and an abort, as a
/// thread's overflow does); a body that may panic wants
/// 64 KiB or more (128 KiB on powerpc64le).
///
/// ```
/// # #[cfg(feature = "std")] {
/// use corostack::stack::{DefaultStack, MIN_STACK_SIZE};
///
/// assert!(DefaultStack::new(MIN_STACK_SIZE).is_ok());
/// let err = DefaultStack::new(MIN_STACK_SIZE - 1).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput); // the message names the bounds
/// # }
/// ```
pub const MIN_STACK_SIZE: usize = crate::arch::MIN_STACK_SIZE;

/// The largest stack `DefaultStack::new` accepts: 128 GiB, a quarter of
/// the smallest address space Linux gives a process on aarch64 (39 bits).
/// (1 GiB on 32-bit targets.)
#[cfg(target_pointer_width = "64")]
pub const MAX_STACK_SIZE: usize = 128 << 30;

/// The largest stack `DefaultStack::new` accepts: 128 GiB on 64-bit
/// targets; here, on a 32-bit one, 1 GiB, a quarter of the 4 GiB address
/// space (of which a process gets 3 GiB on i386 Linux).
#[cfg(target_pointer_width = "32")]
pub const MAX_STACK_SIZE: usize = 1 << 30;

/// The size of `DefaultStack::default`: 1 MiB of address space, of which
/// only the pages a coroutine touches take memory.
///
/// ```
/// # #[cfg(feature = "std")] {
/// use corostack::stack::{DEFAULT_STACK_SIZE, DefaultStack, Stack};
///
/// let stack = DefaultStack::default();
/// assert_eq!(stack.top() - stack.limit(), DEFAULT_STACK_SIZE);
/// # }
/// ```
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;

/// How many free stacks each thread's pool keeps for reuse, until
/// `set_pool_capacity` changes it for that thread.
pub const POOL_CAPACITY: usize = 64;
