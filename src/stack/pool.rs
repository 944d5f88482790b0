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
    /// destructor (the vector is `ManuallyDrop`, the slot raw words)
    /// is one `fs`-relative access away, where one with a destructor
    /// checks its registration on every access, and one behind a pointer
    /// costs a load and a check of the pointer. [`POOL_OWNER`]'s destructor
    /// empties it at thread exit.
    static POOL: UnsafeCell<Pool> = const {
        UnsafeCell::new(Pool {
            last_limit: 0,
            last_top: SHUT,
            free: ManuallyDrop::new(Vec::new()),
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

/// [`Pool::last_top`] of an empty slot when the pool has room for one
/// more (it is `Owned`, and the vector holds fewer than `cap`): `give`
/// may fill it.
///
/// The slot's state lies in `last_top`: a mapping's top (the slot holds
/// the newest pooled mapping, with at most `cap` in the pool, so that
/// taking it leaves it `OPEN`), or one of two odd words, which no top is
/// (tops are page-aligned). A take's test, `last_limit + size ==
/// last_top`, is the whole test of the fast path: `last_limit` is 0 or a
/// stale limit, page-aligned either way, and sizes are whole pages, so
/// their sum is even, and never equals an odd state (wrapping or not).
const OPEN: usize = 1;
/// [`Pool::last_top`] of an empty slot when `give` must take its slow
/// path (not owned, exited, or no room).
const SHUT: usize = 3;

/// A thread's free mappings, and how many it keeps.
///
/// The newest is kept apart, in the slot (`last_limit`, `last_top`), so
/// that a coroutine's life (take the newest, give it back) moves the
/// mapping between the slot and the stack without touching the vector: a
/// test of the slot's words and the mapping's words each way. Every
/// mapping in `free` is older than the one in the slot.
struct Pool {
    /// The limit of the newest pooled mapping when the slot holds one (see
    /// `last_top`); 0 or a stale limit otherwise.
    last_limit: usize,
    /// The top of the newest pooled mapping (the slot holds one, given up
    /// by `Mapping::into_words`), or [`OPEN`] or [`SHUT`].
    last_top: usize,
    /// The older ones, oldest first. Freed (its mappings unmapped) by
    /// [`POOL_OWNER`]'s destructor.
    free: ManuallyDrop<Vec<Mapping>>,
    cap: usize,
    state: State,
}

impl Pool {
    /// Whether the slot holds a mapping: its top, never odd.
    fn holds(&self) -> bool {
        self.last_top.is_multiple_of(2)
    }

    /// Moves the slot's mapping out (if any), leaving the slot `SHUT`
    /// until [`Pool::sync`].
    fn take_slot(&mut self) -> Option<Mapping> {
        if !self.holds() {
            return None;
        }
        // SAFETY: the slot holds these words of a mapping, taken back
        // once: the slot is `SHUT` right after.
        let last = unsafe { Mapping::from_words(self.last_limit, self.last_top) };
        self.last_top = SHUT;
        Some(last)
    }

    /// Puts `mapping` in the empty slot.
    fn fill_slot(&mut self, mapping: Mapping) {
        debug_assert!(!self.holds());
        (self.last_limit, self.last_top) = mapping.into_words();
    }

    /// Moves the slot's mapping (if any) to the end of the vector, for
    /// the slow paths, which then work on the vector alone; the slot is
    /// left `SHUT` until [`Pool::sync`].
    fn spill(&mut self) {
        if let Some(last) = self.take_slot() {
            self.free.push(last);
        }
    }

    /// Sets an empty slot's state after a change of `cap`, of the
    /// vector or of the state, moving the newest mapping of the vector
    /// into it, so that the next `take_last` finds it there.
    fn sync(&mut self) {
        if self.holds() {
            return;
        }
        if self.state != State::Owned {
            self.last_top = SHUT;
            return;
        }
        if let Some(newest) = self.free.pop() {
            self.fill_slot(newest);
        } else if self.cap > 0 {
            self.last_top = OPEN;
        } else {
            self.last_top = SHUT;
        }
    }
}

/// Frees the thread's pool when the thread exits.
struct PoolOwner;

impl Drop for PoolOwner {
    fn drop(&mut self) {
        let pool = pool_raw();
        pool.state = State::Exited;
        let last = pool.take_slot();
        pool.sync();
        // Unmapping does not reach the pool, which is Exited now anyway.
        Mapping::unmap_all(mem::take(&mut *pool.free).into_iter().chain(last));
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
/// and `give`, which need no state: the slot of an unowned or exited
/// pool is `SHUT`). Same rule as `pool_mut`.
#[inline(always)]
fn pool_raw() -> &'static mut Pool {
    // SAFETY: this thread's pool, reached only by this thread, and never
    // re-entrantly (see `pool_mut`).
    unsafe { &mut *POOL.with(|pool| pool.get()) }
}

/// Registers the owner of this thread's pool; if the thread is already
/// exiting, goes without a pool.
#[cold]
#[inline(never)]
fn own(pool: &'static mut Pool) -> Option<&'static mut Pool> {
    POOL_OWNER.try_with(|_| ()).ok()?;
    pool.state = State::Owned;
    pool.sync();
    Some(pool)
}

/// The last mapping pooled on this thread, if it has `size` usable bytes
/// and lies in the slot (`None` does not mean that the pool has none of
/// that size: `take` looks further).
#[inline(always)]
fn take_last(size: usize) -> Option<Mapping> {
    let pool = pool_raw();
    debug_assert!(size.is_multiple_of(2), "a size of whole pages");
    // Only a held mapping passes (see `OPEN`).
    if pool.last_limit.wrapping_add(size) == pool.last_top {
        // SAFETY: the slot holds these words of a mapping, taken back
        // once: the slot is `OPEN` right after.
        let last = unsafe { Mapping::from_words(pool.last_limit, pool.last_top) };
        // The pool held at most `cap` with it: there is room for one more
        // now, and the pool is owned (only then does the slot hold one).
        pool.last_top = OPEN;
        return Some(last);
    }
    None
}

/// A mapping of `size` usable bytes: the last pooled one if it has that
/// size (`DefaultStack::default`'s fast path), else another pooled one,
/// else `make`'s (which may panic).
///
/// A mapping is two words, which the slow way returns in registers: both
/// ways end with the words in registers, so they go from the
/// thread-local to where the caller puts them with no copy in between.
#[inline(always)]
pub(crate) fn take_last_or(size: usize, make: fn() -> Mapping) -> Mapping {
    if let Some(last) = take_last(size) {
        return last;
    }
    take_or_make(size, make)
}

/// `take_last_or` without the mapping at hand in the slot: another pooled
/// one, else `make`'s.
#[cold]
#[inline(never)]
fn take_or_make(size: usize, make: fn() -> Mapping) -> Mapping {
    take(size).unwrap_or_else(make)
}

/// A pooled mapping of `size` usable bytes, the last pooled first.
#[inline]
pub(crate) fn take(size: usize) -> Option<Mapping> {
    if let Some(last) = take_last(size) {
        return Some(last);
    }
    take_older(size)
}

/// `take` past the slot: a mapping of `size` from the vector.
#[cold]
#[inline(never)]
fn take_older(size: usize) -> Option<Mapping> {
    let pool = pool_mut()?;
    let i = pool.free.iter().rposition(|m| m.size() == size)?;
    // `remove`, not `swap_remove`: the vector stays oldest first (only
    // mappings of other sizes lie after the newest of this size).
    let mapping = pool.free.remove(i);
    pool.sync();
    Some(mapping)
}

/// Moves the mapping out of `slot` (which must not be used again) and
/// keeps it for reuse if the pool has room, else unmaps it.
///
/// The fast path moves it into the pool's slot, so that nothing on it can
/// panic: a `push` that might grow the vector would need a landing pad,
/// and the mapping a copy on the stack for it.
///
/// # Safety
/// `slot` holds a mapping, which nothing uses or drops after this call.
#[inline(always)]
pub(crate) unsafe fn give(slot: &mut ManuallyDrop<Mapping>) {
    let pool = pool_raw();
    if pool.last_top == OPEN {
        // `OPEN`: the pool is owned and has room for one more, newer than
        // every mapping in the vector.
        // SAFETY: the caller gives the mapping up.
        pool.fill_slot(unsafe { ManuallyDrop::take(slot) });
        return;
    }
    // SAFETY: as above.
    give_slow(unsafe { ManuallyDrop::take(slot) });
}

/// `give` without this thread's pool owned yet, or with it full, or gone,
/// or with the slot taken.
///
/// A full pool gives its older half back to the kernel and keeps the new
/// one: back-to-back stacks (as a burst of coroutines maps them, and
/// drops them) go in one system call, where a `munmap` per stack costs
/// more than the stack's pages (see `Mapping::unmap_all`).
#[cold]
#[inline(never)]
fn give_slow(mapping: Mapping) {
    let Some(pool) = pool_mut() else {
        drop(mapping);
        return;
    };
    pool.spill();
    if pool.free.len() < pool.cap {
        pool.free.push(mapping);
    } else if !pool.free.is_empty() {
        // Unmapping does not reach the pool.
        let half = pool.free.len().div_ceil(2);
        Mapping::unmap_all(pool.free.drain(..half));
        pool.free.push(mapping);
    } else {
        drop(mapping);
    }
    pool.sync();
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
    pool.sync();
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
    pool.spill();
    let n = pool.free.len().saturating_sub(capacity);
    // Unmapping does not reach the pool, so they go straight from it.
    Mapping::unmap_all(pool.free.drain(..n));
    Mapping::release_reserve();
    pool.sync();
    old
}

/// Empties the calling thread's pool of free stacks, unmapping them, and
/// gives back the address space reserved for stacks not handed out yet
/// (Linux reserves it for many stacks at a time).
pub fn trim_pool() {
    if let Some(pool) = pool_mut() {
        pool.spill();
        Mapping::unmap_all(pool.free.drain(..));
        pool.sync();
    }
    Mapping::release_reserve();
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_STACK_SIZE, DefaultStack, Stack};
    use super::*;

    /// How many mappings this thread's pool holds (each test runs on a
    /// thread of its own, with a pool of its own).
    fn pooled() -> usize {
        let pool = pool_raw();
        pool.free.len() + usize::from(pool.holds())
    }

    /// A default stack made while the pool is full of stacks of another
    /// size is only handed over, not counted as kept: the pool never
    /// holds more than its capacity.
    #[test]
    fn a_stack_made_for_a_full_pool_is_not_kept_beyond_its_capacity() {
        trim_pool();
        let old = set_pool_capacity(1);
        drop(DefaultStack::new(64 * 1024).unwrap());
        assert_eq!(pooled(), 1);
        let d = DefaultStack::default();
        assert_eq!(d.size(), DEFAULT_STACK_SIZE);
        assert_eq!(pooled(), 1, "the small stack stays");
        assert!(pool_raw().holds(), "in the slot, the newest pooled");
        let top = d.top();
        drop(d);
        assert_eq!(pooled(), 1, "the full pool gave its older half back");
        assert_eq!(DefaultStack::default().top(), top, "and kept the newest");
        set_pool_capacity(old);
        trim_pool();
        assert_eq!(pooled(), 0);
    }

    /// Capacity 0: nothing is kept, whichever path makes the stack.
    #[test]
    fn capacity_zero_keeps_nothing() {
        trim_pool();
        let old = set_pool_capacity(0);
        drop(DefaultStack::default());
        drop(DefaultStack::new(64 * 1024).unwrap());
        assert_eq!(pooled(), 0);
        assert!(pool_raw().last_top == SHUT);
        set_pool_capacity(old);
        drop(DefaultStack::default());
        assert_eq!(pooled(), 1);
        assert!(pool_raw().holds());
        let d = DefaultStack::default();
        assert!(
            pool_raw().last_top == OPEN,
            "taken from the slot, room for one"
        );
        drop(d);
        trim_pool();
    }

    /// An empty slot's states are odd words in its top, which no take's
    /// test (`limit + size == top`, all page multiples) can meet,
    /// whatever stale limit lies beside them.
    #[test]
    fn an_empty_slot_gives_no_stack_of_any_size() {
        trim_pool();
        let d = DefaultStack::default();
        let stale = d.limit();
        drop(d);
        let d = DefaultStack::default();
        assert!(pool_raw().last_top == OPEN);
        assert_eq!(pool_raw().last_limit, stale, "the limit stays, stale");
        let sizes = [
            super::super::MIN_STACK_SIZE,
            DEFAULT_STACK_SIZE,
            1 << 20,
            64 << 20,
        ];
        for size in sizes {
            assert!(take_last(size).is_none(), "{size}");
        }
        let old = set_pool_capacity(0);
        assert!(pool_raw().last_top == SHUT);
        for size in sizes {
            assert!(take_last(size).is_none(), "{size}");
        }
        set_pool_capacity(old);
        drop(d);
        assert!(pool_raw().holds());
        trim_pool();
    }

    /// The slot holds the newest stack and the vector the older ones:
    /// the pool hands them out last pooled first, whatever their sizes.
    #[test]
    fn the_slot_and_the_vector_keep_the_order() {
        trim_pool();
        let a = DefaultStack::default();
        let b = DefaultStack::new(64 * 1024).unwrap();
        let c = DefaultStack::default();
        let tops = [a.top(), b.top(), c.top()];
        drop(a);
        drop(b);
        drop(c);
        assert_eq!(pooled(), 3);
        assert_eq!(DefaultStack::default().top(), tops[2]);
        let c = DefaultStack::default();
        assert_eq!(c.top(), tops[2]);
        // Not the 64 KiB one in between: the older default one.
        let a = DefaultStack::default();
        assert_eq!(a.top(), tops[0]);
        assert_eq!(DefaultStack::new(64 * 1024).unwrap().top(), tops[1]);
        drop((a, c));
        trim_pool();
    }

    /// A stack taken from the middle of the vector leaves the others in
    /// their order: the newest of a size is still handed out first (and a
    /// full pool still gives its oldest back).
    #[test]
    fn a_take_from_the_middle_of_the_vector_keeps_the_order() {
        trim_pool();
        let a = DefaultStack::new(64 * 1024).unwrap();
        let b1 = DefaultStack::new(128 * 1024).unwrap();
        let b2 = DefaultStack::new(128 * 1024).unwrap();
        let c = DefaultStack::default();
        let tops = [a.top(), b1.top(), b2.top(), c.top()];
        // The vector holds a, b1 and b2, oldest first; the slot c.
        drop((a, b1, b2, c));
        assert_eq!(pooled(), 4);
        let a = DefaultStack::new(64 * 1024).unwrap();
        assert_eq!(a.top(), tops[0]);
        let b2 = DefaultStack::new(128 * 1024).unwrap();
        assert_eq!(b2.top(), tops[2], "the newer 128 KiB stack first");
        let b1 = DefaultStack::new(128 * 1024).unwrap();
        assert_eq!(b1.top(), tops[1]);
        drop((a, b1, b2));
        trim_pool();
    }
}
