//! The per-thread pool of free stack mappings: dropping a
//! [`DefaultStack`](super::DefaultStack) gives its mapping here, and making
//! one takes a mapping of its size from here before mapping a new one, so
//! that creating coroutines costs no system call in the steady state.

use std::cell::UnsafeCell;
use std::mem::{self, ManuallyDrop};

use super::POOL_CAPACITY;
use super::mapping::Mapping;

thread_local! {
    /// This thread's pool, in place: a `const` thread-local without a
    /// destructor (the vector is `ManuallyDrop`) is one `fs`-relative
    /// access away, where one with a destructor checks its registration on
    /// every access, and one behind a pointer costs a load and a check of
    /// the pointer. [`POOL_OWNER`]'s destructor empties it at thread exit.
    static POOL: UnsafeCell<Pool> = const {
        UnsafeCell::new(Pool {
            free: ManuallyDrop::new(Vec::new()),
            room: 0,
            cap: POOL_CAPACITY,
            state: State::Unowned,
        })
    };
    /// Owns the pool's contents: its destructor unmaps them and frees the
    /// vector when the thread exits.
    static POOL_OWNER: PoolOwner = const { PoolOwner };
}

/// Where a thread's pool is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing pooled yet: [`POOL_OWNER`]'s destructor is not registered,
    /// so nothing may be kept.
    Unowned,
    /// Registered: stacks are kept, up to `cap`.
    Owned,
    /// The thread is exiting and its pool is gone: stacks are unmapped at
    /// once.
    Exited,
}

/// A thread's free mappings, and how many it keeps.
struct Pool {
    /// Freed (its mappings unmapped) by [`POOL_OWNER`]'s destructor.
    free: ManuallyDrop<Vec<Mapping>>,
    /// How many mappings `give`'s fast path may hold: `cap` or the
    /// vector's allocation, whichever is smaller, while `Owned`; 0
    /// otherwise, so that the one comparison of the fast path sends every
    /// other case to the slow one. Kept by [`Pool::set_room`].
    room: usize,
    cap: usize,
    state: State,
}

impl Pool {
    /// Recomputes `room` after a change of `cap`, of the allocation, or of
    /// the state.
    fn set_room(&mut self) {
        self.room = match self.state {
            State::Owned => self.cap.min(self.free.capacity()),
            State::Unowned | State::Exited => 0,
        };
    }
}

/// Frees the thread's pool when the thread exits.
struct PoolOwner;

impl Drop for PoolOwner {
    fn drop(&mut self) {
        // SAFETY: this thread's pool; no other reference to it is alive
        // (none is held across anything that could run this destructor).
        let pool = unsafe { &mut *POOL.with(UnsafeCell::get) };
        pool.state = State::Exited;
        pool.set_room();
        // Unmapping does not reach the pool, which is Exited now anyway.
        Mapping::unmap_all(mem::take(&mut *pool.free));
    }
}

/// This thread's pool, registering its owner on first use; `None` once
/// the thread exits.
///
/// The reference must not be held across anything that could reach the
/// pool again (nothing in this module does: unmapping does not).
#[inline]
fn pool_mut() -> Option<&'static mut Pool> {
    let pool = pool_raw();
    match pool.state {
        State::Owned => Some(pool),
        State::Unowned => own(pool),
        State::Exited => None,
    }
}

/// This thread's pool whatever its state (the fast paths of `take_last`
/// and `give`, which need no state: an unowned or exited pool is empty
/// and has no room). Same rule as `pool_mut`.
#[inline(always)]
fn pool_raw() -> &'static mut Pool {
    // SAFETY: this thread's pool, reached only by this thread, and never
    // re-entrantly (see `pool_mut`).
    unsafe { &mut *POOL.with(UnsafeCell::get) }
}

/// Registers the owner of this thread's pool; if the thread is already
/// exiting, goes without a pool.
#[cold]
#[inline(never)]
fn own(pool: &'static mut Pool) -> Option<&'static mut Pool> {
    POOL_OWNER.try_with(|_| ()).ok()?;
    pool.state = State::Owned;
    pool.set_room();
    Some(pool)
}

/// The last mapping pooled on this thread, if it has `size` usable bytes
/// (the likeliest to be wanted: `DefaultStack::default`'s fast path).
#[inline(always)]
pub(crate) fn take_last(size: usize) -> Option<Mapping> {
    pool_raw().free.pop_if(|m| m.size() == size)
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
    let pool = pool_raw();
    let len = pool.free.len();
    if len < pool.room {
        // SAFETY: the caller gives the mapping up; `room` is at most the
        // vector's capacity, so the element at `len` is spare capacity,
        // written before the length covers it.
        unsafe {
            pool.free
                .as_mut_ptr()
                .add(len)
                .write(ManuallyDrop::take(slot));
            pool.free.set_len(len + 1);
        }
        return;
    }
    // SAFETY: as above.
    give_slow(unsafe { ManuallyDrop::take(slot) });
}

/// `give` without this thread's pool owned yet, or with it full (or its
/// allocation), or gone.
///
/// A full pool gives its older half back to the kernel and keeps the new
/// one: back-to-back stacks (as a burst of coroutines maps them, and
/// drops them) go in one system call, where a `munmap` per stack costs
/// more than the stack's pages (see `Mapping::unmap_all`).
#[cold]
#[inline(never)]
fn give_slow(mapping: Mapping) {
    match pool_mut() {
        Some(pool) if pool.free.len() < pool.cap => {
            pool.free.push(mapping);
            pool.set_room();
        }
        Some(pool) if !pool.free.is_empty() => {
            // Unmapping does not reach the pool.
            let half = pool.free.len().div_ceil(2);
            Mapping::unmap_all(pool.free.drain(..half));
            pool.free.push(mapping);
            pool.set_room();
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
    pool.set_room();
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
    pool.set_room();
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
