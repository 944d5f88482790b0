//! Stacks for coroutines: the [`Stack`] contract, its size limits, and
//! (with the `std` feature) [`DefaultStack`], an anonymous mmap with a guard
//! page below it, reused from a per-thread pool (in `default_stack.rs`).

#[cfg(feature = "std")]
pub(crate) use crate::default_stack::page_size;
#[cfg(feature = "hub")]
pub(crate) use crate::default_stack::raise_pool_capacity;
#[cfg(feature = "std")]
pub use crate::default_stack::{DefaultStack, set_pool_capacity, trim_pool};

/// What a coroutine needs of the memory it runs on.
///
/// # Safety
/// An implementation promises, for as long as the value lives and is not
/// moved out of a coroutine:
/// - `[limit(), top())` is readable and writable memory that nothing else
///   uses while a coroutine runs on it; `top()` is 16-aligned and above
///   `limit()` by at least [`MIN_STACK_SIZE`] bytes;
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

/// The smallest stack a coroutine accepts (and `DefaultStack::new`): 16 KiB. Less is
/// too little for Rust's panic machinery to unwind a coroutine.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// The largest stack `DefaultStack::new` accepts: 128 GiB, a quarter of
/// the smallest address space Linux gives a process on aarch64 (39 bits).
pub const MAX_STACK_SIZE: usize = 128 << 30;

/// The size of `DefaultStack::default`: 1 MiB of address space, of which
/// only the pages a coroutine touches take memory.
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;

/// How many free stacks each thread's pool keeps for reuse, until
/// `set_pool_capacity` changes it for that thread.
pub const POOL_CAPACITY: usize = 64;
