//! The registry of guard pages: every [`DefaultStack`](super::DefaultStack)
//! records its guard here when it is mapped and removes it before it is
//! unmapped. Two readers: the overflow handler (`overflow.rs`), which must
//! tell a fault in a guard from any other fault, from a signal handler; and
//! `maybe_grow`/`remaining_stack`, which find the coroutine stack they run
//! on from the stack pointer. A fixed-capacity, lock-free hash table, so
//! that a lookup is async-signal-safe.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};

/// Slots in the table: room for 2^21 stacks at a load factor of one half. The table is mapped
/// so that only the pages of slots ever written cost memory (`os::map_table`).
const CAPACITY: usize = 1 << 22;
/// How many consecutive slots a key may be away from its hash slot.
const PROBE_LIMIT: usize = 64;
/// The handler finds a guard from a fault at most this many pages above the guard's lowest page.
/// Faults deeper inside a longer guard are passed on as unknown faults.
#[cfg(feature = "overflow-handler")]
const MAX_GUARD_PAGES: usize = 8;
/// Key of a slot never used. Slots never go back to it, so a lookup may stop at the first one.
const EMPTY: usize = 0;
/// Key of a slot whose guard was unregistered; insertion may reuse it.
const TOMBSTONE: usize = 1;
/// Key of a slot being filled in by [`register`]; lookups skip it.
const BUSY: usize = 2;

/// One registered guard. All-zero bytes (as `mmap` gives them) are an empty slot.
struct Slot {
    /// Lowest address of the guard, or [`EMPTY`], [`TOMBSTONE`] or [`BUSY`].
    key: AtomicUsize,
    /// Usable size of the stack above the guard, for the message.
    stack_size: AtomicUsize,
    /// Length of the guard in bytes.
    guard_len: AtomicUsize,
}

/// The table of [`CAPACITY`] slots, mapped on the first [`register`]; null until then.
static TABLE: AtomicPtr<Slot> = AtomicPtr::new(null_mut());
/// The table, or `None` before the first [`register`]. Safe to call from the signal handler.
fn table() -> Option<&'static [Slot]> {
    let base = TABLE.load(Acquire);
    // SAFETY: a non-null TABLE points to a mapping of CAPACITY zero-initialised slots (a valid
    // value for atomics) that is never unmapped, and it is only ever accessed through atomics.
    (!base.is_null()).then(|| unsafe { std::slice::from_raw_parts(base, CAPACITY) })
}

/// The slots where the key `guard_lo` may be, in probe order.
fn probe(table: &[Slot], guard_lo: usize) -> impl Iterator<Item = &Slot> {
    let bits = CAPACITY.trailing_zeros();
    let hash =
        ((guard_lo as u64 >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
    (0..PROBE_LIMIT).map(move |i| &table[(hash + i) & (CAPACITY - 1)])
}

/// Records a stack's guard so that a fault inside it is reported as an overflow.
/// `guard_lo` is page aligned, `guard_len` its length in bytes, `stack_size` the usable size
/// reported in the message. If the table cannot be mapped or the guard's probe sequence is full,
/// the guard is silently not registered, and a fault in it is passed on like any other.
pub(crate) fn register(guard_lo: usize, guard_len: usize, stack_size: usize) {
    debug_assert!(guard_lo > BUSY && guard_len > 0);
    let table = match table() {
        Some(table) => table,
        None => {
            let bytes = CAPACITY * size_of::<Slot>();
            let map = super::os::map_table(bytes);
            if map.is_null() {
                return;
            }
            if TABLE
                .compare_exchange(null_mut(), map.cast(), AcqRel, Acquire)
                .is_err()
            {
                // SAFETY: another thread published its table first; ours was never shared.
                unsafe { super::os::unmap_table(map, bytes) };
            }
            table().expect("the table was just published")
        }
    };
    for slot in probe(table, guard_lo) {
        let key = slot.key.load(Relaxed);
        if (key == EMPTY || key == TOMBSTONE)
            && slot
                .key
                .compare_exchange(key, BUSY, Acquire, Relaxed)
                .is_ok()
        {
            slot.stack_size.store(stack_size, Relaxed);
            slot.guard_len.store(guard_len, Relaxed);
            slot.key.store(guard_lo, Release); // publishes the two stores above to the handler
            return;
        }
    }
}

/// Forgets the guard registered at `guard_lo` (called before the stack is unmapped).
pub(crate) fn unregister(guard_lo: usize) {
    let Some(table) = table() else { return };
    for slot in probe(table, guard_lo) {
        match slot.key.load(Relaxed) {
            EMPTY => return,
            key if key == guard_lo => return slot.key.store(TOMBSTONE, Release),
            _ => {}
        }
    }
}

/// The guard registered at exactly `guard_lo`, if any: its length and the usable size of the
/// stack above it. One probe sequence, no system call; `maybe_grow` uses it to find and re-check
/// the coroutine stack it runs on.
pub(crate) fn guard_at(guard_lo: usize) -> Option<(usize, usize)> {
    let table = table()?;
    for slot in probe(table, guard_lo) {
        match slot.key.load(Acquire) {
            EMPTY => return None,
            key if key == guard_lo => {
                let found = (slot.guard_len.load(Relaxed), slot.stack_size.load(Relaxed));
                // A slot unregistered and reused meanwhile no longer holds our key: seeing the
                // key again after the two loads (ordered by the fence) means they read a pair
                // that belongs to it.
                std::sync::atomic::fence(Acquire);
                return (slot.key.load(Relaxed) == guard_lo).then_some(found);
            }
            _ => {}
        }
    }
    None
}

/// The stack size registered for the guard containing `addr`, if any. Async-signal-safe.
#[cfg(feature = "overflow-handler")]
pub(crate) fn lookup(addr: usize) -> Option<usize> {
    // The page size is cached before any guard is registered (mapping a
    // stack reads it), so this is a plain atomic load here.
    let (table, page) = (table()?, super::os::page_size());
    let fault_page = addr & !(page - 1);
    for below in 0..MAX_GUARD_PAGES {
        let guard_lo = fault_page.checked_sub(below * page)?;
        for slot in probe(table, guard_lo) {
            match slot.key.load(Acquire) {
                EMPTY => break,
                key if key == guard_lo && addr - key < slot.guard_len.load(Relaxed) => {
                    return Some(slot.stack_size.load(Relaxed));
                }
                _ => {}
            }
        }
    }
    None
}
