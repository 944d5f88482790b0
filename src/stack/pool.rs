//! The per-thread pool of free stack mappings: dropping a
//! [`DefaultStack`](super::DefaultStack) gives its mapping here, and making
//! one takes a mapping of its size from here before mapping a new one, so
//! that creating coroutines costs no system call in the steady state.

use std::cell::Cell;
use std::mem::{self, ManuallyDrop};
use std::ptr;

use super::POOL_CAPACITY;
use super::mapping::Mapping;

thread_local! {
    /// This thread's pool, reached through a plain pointer: a thread-local
    /// without a destructor costs one load to reach, where one with a
    /// destructor checks its registration on every access. Null until the
    /// thread first pools a stack; [`EXITED`] once the thread is exiting.
    static POOL: Cell<*mut Pool> = const { Cell::new(ptr::null_mut()) };
    /// Owns the pool: its destructor frees it when the thread exits.
    static POOL_OWNER: PoolOwner = const { PoolOwner };
}

/// `POOL` of a thread whose pool is gone: stacks are unmapped at once.
const EXITED: *mut Pool = ptr::dangling_mut::<Pool>();

/// A thread's free mappings, and how many it keeps.
struct Pool {
    free: Vec<Mapping>,
    cap: usize,
}

/// Frees the thread's pool when the thread exits.
struct PoolOwner;

impl Drop for PoolOwner {
    fn drop(&mut self) {
        let pool = POOL.replace(EXITED);
        if pool != EXITED && !pool.is_null() {
            // SAFETY: a non-sentinel POOL came from Box::into_raw in
            // `pool_mut`, and is freed only here, once.
            let pool = unsafe { Box::from_raw(pool) };
            // Unmapping does not reach the pool, which now reads EXITED
            // anyway.
            Mapping::unmap_all(pool.free);
        }
    }
}

/// This thread's pool, made on first use; `None` once the thread exits.
///
/// The reference must not be held across anything that could reach the
/// pool again (nothing in this module does: unmapping does not).
#[inline]
fn pool_mut() -> Option<&'static mut Pool> {
    if POOL.get().is_null() {
        return new_pool();
    }
    live_pool()
}

/// This thread's pool if it has been made and not yet freed; never makes
/// it (the fast paths of `take_last` and `give`). Same rule as `pool_mut`.
#[inline(always)]
fn live_pool() -> Option<&'static mut Pool> {
    let pool = POOL.get();
    // SAFETY: a non-null, non-sentinel POOL points at this thread's live
    // pool, which only this thread reaches, and never re-entrantly.
    (!pool.is_null() && pool != EXITED).then(|| unsafe { &mut *pool })
}

/// Makes this thread's pool.
#[cold]
fn new_pool() -> Option<&'static mut Pool> {
    // Register the owner's destructor; if the thread is already exiting,
    // go without a pool.
    POOL_OWNER.try_with(|_| ()).ok()?;
    let pool = Box::into_raw(Box::new(Pool {
        free: Vec::new(),
        cap: POOL_CAPACITY,
    }));
    POOL.set(pool);
    // SAFETY: just made, owned by POOL_OWNER, reached only by this thread.
    Some(unsafe { &mut *pool })
}

/// The last mapping pooled on this thread, if it has `size` usable bytes
/// (the likeliest to be wanted: `DefaultStack::default`'s fast path).
#[inline(always)]
pub(crate) fn take_last(size: usize) -> Option<Mapping> {
    live_pool()?.free.pop_if(|m| m.size() == size)
}

/// A pooled mapping of `size` usable bytes, the last pooled first.
#[inline]
pub(crate) fn take(size: usize) -> Option<Mapping> {
    let pool = pool_mut()?;
    let i = pool.free.iter().rposition(|m| m.size() == size)?;
    Some(pool.free.swap_remove(i))
}

/// Moves the mapping out of `slot` (which must not be used again) and
/// keeps it for reuse if the pool has room, else unmaps it.
///
/// The fast path writes into the pool's spare capacity, so that nothing
/// on it can panic: a `push` that might grow the vector would need a
/// landing pad, and the mapping a copy on the stack for it (four
/// instructions a drop, counted by `benches/callgrind.sh life`).
///
/// # Safety
/// `slot` holds a mapping, which nothing uses or drops after this call.
#[inline(always)]
pub(crate) unsafe fn give(slot: &mut ManuallyDrop<Mapping>) {
    if let Some(pool) = live_pool()
        && pool.free.len() < pool.cap
        && let Some(spare) = pool.free.spare_capacity_mut().first_mut()
    {
        // SAFETY: the caller gives the mapping up.
        spare.write(unsafe { ManuallyDrop::take(slot) });
        let len = pool.free.len() + 1;
        // SAFETY: the element at the old length was just written, within
        // the capacity.
        unsafe { pool.free.set_len(len) };
        return;
    }
    // SAFETY: as above.
    give_slow(unsafe { ManuallyDrop::take(slot) });
}

/// `give` without this thread's pool made yet, or with it full or gone.
///
/// A full pool gives its older half back to the kernel and keeps the new
/// one: back-to-back stacks (as a burst of coroutines maps them, and
/// drops them) go in one system call, where a `munmap` per stack costs
/// more than the stack's pages (see `Mapping::unmap_all`).
#[cold]
#[inline(never)]
fn give_slow(mapping: Mapping) {
    match pool_mut() {
        Some(pool) if pool.free.len() < pool.cap => pool.free.push(mapping),
        Some(pool) if !pool.free.is_empty() => {
            // Unmapping does not reach the pool.
            let half = pool.free.len().div_ceil(2);
            Mapping::unmap_all(pool.free.drain(..half));
            pool.free.push(mapping);
        }
        _ => drop(mapping),
    }
}

/// Raises the calling thread's pool capacity to at least `capacity`, and
/// returns the capacity it had, for [`set_pool_capacity`] to restore: for
/// a scheduler that keeps many coroutines' stacks cycling on a thread
/// while it runs, without lowering a capacity that the embedder set
/// higher.
///
/// ```
/// use corostack::stack::{raise_pool_capacity, set_pool_capacity};
///
/// let old = raise_pool_capacity(1000);
/// // ... run the scheduler ...
/// set_pool_capacity(old);
/// ```
pub fn raise_pool_capacity(capacity: usize) -> usize {
    let Some(pool) = pool_mut() else { return 0 };
    let old = pool.cap;
    pool.cap = old.max(capacity);
    old
}

/// Sets how many free stacks the calling thread's pool keeps for reuse
/// (initially [`POOL_CAPACITY`]) and returns the previous capacity. Free
/// stacks beyond the new capacity are unmapped at once; 0 turns pooling off
/// on this thread, so every dropped [`DefaultStack`](super::DefaultStack)
/// is unmapped. Like [`trim_pool`], it gives back the address space
/// reserved for stacks not handed out yet.
///
/// ```
/// let old = corostack::stack::set_pool_capacity(4);
/// assert_eq!(old, corostack::stack::POOL_CAPACITY);
/// assert_eq!(corostack::stack::set_pool_capacity(old), 4);
/// ```
pub fn set_pool_capacity(capacity: usize) -> usize {
    let Some(pool) = pool_mut() else { return 0 };
    let old = mem::replace(&mut pool.cap, capacity);
    let n = pool.free.len().saturating_sub(capacity);
    // Unmapping does not reach the pool, so they go straight from it.
    Mapping::unmap_all(pool.free.drain(..n));
    Mapping::release_reserve();
    old
}

/// Empties the calling thread's pool of free stacks, unmapping them, and
/// gives back the address space reserved for stacks not handed out yet
/// (Linux reserves it for many stacks at a time).
pub fn trim_pool() {
    if let Some(pool) = pool_mut() {
        Mapping::unmap_all(pool.free.drain(..));
    }
    Mapping::release_reserve();
}
