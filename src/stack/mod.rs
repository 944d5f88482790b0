//! Stacks for coroutines: the [`Stack`] contract, its size limits, and
//! (with the `std` feature) [`DefaultStack`], an anonymous mmap with four
//! guard pages below it, reused from a per-thread pool.
//!
//! The files, each one concept, lower layers first (each imports only the
//! ones above it in this list):
//! - `os.rs`: the operating system's facts (page size, whether
//!   `MADV_GUARD_INSTALL` works);
//! - `guards.rs`: the registry of guard pages, read by the overflow handler
//!   and by `maybe_grow`/`remaining_stack`;
//! - `overflow.rs`: the SIGSEGV/SIGBUS handler that reports an overflow
//!   (feature `overflow-handler`);
//! - `mapping.rs`: one guarded, registered mmap;
//! - `pool.rs`: the per-thread pool of free mappings;
//! - `default.rs`: [`DefaultStack`], a mapping taken from and given back to
//!   the pool;
//! - `slice.rs`: [`SliceStack`], a stack over memory the embedder owns.

#[cfg(feature = "std")]
mod default;
#[cfg(feature = "std")]
pub(crate) mod guards;
#[cfg(feature = "std")]
mod mapping;
#[cfg(feature = "std")]
mod os;
#[cfg(feature = "overflow-handler")]
pub(crate) mod overflow;
#[cfg(feature = "std")]
mod pool;
#[cfg(feature = "std")]
mod slice;

#[cfg(feature = "std")]
pub use default::DefaultStack;
#[cfg(feature = "std")]
pub(crate) use os::page_size;
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
#[cfg(feature = "std")]
#[inline(always)]
pub fn install_overflow_handler() {
    #[cfg(feature = "overflow-handler")]
    overflow::install();
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
/// `Builder::stack_size` accept: 32 KiB (64 KiB on powerpc64le).
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
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;

/// How many free stacks each thread's pool keeps for reuse, until
/// `set_pool_capacity` changes it for that thread.
pub const POOL_CAPACITY: usize = 64;
