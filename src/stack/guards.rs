//! The registry of guard pages: every [`DefaultStack`](super::DefaultStack)
//! records its guard here when it is mapped and removes it before it is
//! unmapped. Two readers: the overflow handler (`overflow.rs`), which must
//! tell a fault in a guard from any other fault, from a signal handler; and
//! `maybe_grow`/`remaining_stack`, which find the coroutine stack they run
//! on from the stack pointer. A fixed-capacity, lock-free hash table, so
//! that a lookup is async-signal-safe.
//!
//! A guard's slot is found from its address's [`GRAIN`]-sized block number,
//! kept linear: stacks mapped next to each other (carved one stride apart
//! from a reservation, or placed one below the other by the kernel) go to
//! neighbouring slots, so that a registration finds the table's line and
//! page already in the cache and TLB, and a thousand stacks write a few
//! pages of the table rather than one page each. A region that registers
//! a guard is at least a grain long (its guard alone is four pages), so
//! distinct live guards have distinct blocks: inside one span of
//! `CAPACITY` grains (64 GiB on 64-bit targets, the whole address space on
//! 32-bit ones) their home slots never collide. Spans further apart are
//! rotated by a multiplicative hash of the span number, so that they do
//! not pile onto the same slots. A key whose window of [`PROBE_LIMIT`]
//! slots is full anyway (aliasing spans, or keys closer than a grain, which
//! only tests make) goes to a second window at a scattered (Fibonacci)
//! hash of its page, where neighbours do not crowd it; lookups search that second
//! window only once some key has been put there ([`SPILLED`]).

use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};

/// log2 of the number of slots.
const CAPACITY_BITS: u32 = 22;
/// Slots in the table: room for 2^21 stacks at a load factor of one half. The table is mapped
/// so that only the pages of slots ever written cost memory (`os::map_table`).
const CAPACITY: usize = 1 << CAPACITY_BITS;
/// log2 of [`GRAIN`].
const GRAIN_BITS: u32 = 14;
/// The granularity of the home slots: 16 KiB, no more than any region that registers a guard
/// (`GUARD_PAGES`, four pages of at least 4 KiB, plus a usable page at least), so that two
/// live guards never share a block.
const GRAIN: usize = 1 << GRAIN_BITS;
/// How many consecutive slots a key may be away from its hash slot, in each of its two windows.
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
/// The Fibonacci multiplier (2^64 over the golden ratio).
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

/// Whether any key was ever registered in its second window ([`scattered`]); until then a
/// lookup that misses its first window is done. Set before that key is published, never
/// cleared.
static SPILLED: AtomicBool = AtomicBool::new(false);

/// The unit of the sizes a slot keeps: 4 KiB, which every page size is a multiple of.
const UNIT: usize = 4096;
/// Low bits of a slot's `sizes` that hold the guard's length in units (the rest hold the stack's).
const GUARD_BITS: u32 = 8;

/// One registered guard, in two words (so that a 4 KiB page of the table holds 256 of them
/// on 64-bit targets). All-zero bytes (as `mmap` gives them) are an empty slot.
struct Slot {
    /// Lowest address of the guard, or [`EMPTY`], [`TOMBSTONE`] or [`BUSY`].
    key: AtomicUsize,
    /// The guard's length and the usable size of the stack above it, in [`UNIT`]s ([`pack`]).
    sizes: AtomicUsize,
}

/// `guard_len` and `stack_size` (whole [`UNIT`]s, as pages are) in one word: the guard's
/// units in the low [`GUARD_BITS`] bits, the stack's above them; `None` if they do not fit
/// (a guard of 256 units or more, or on 32-bit targets a stack of 64 GiB or more, neither of
/// which `DefaultStack` makes).
fn pack(guard_len: usize, stack_size: usize) -> Option<usize> {
    let (guard, stack) = (guard_len / UNIT, stack_size / UNIT);
    let whole = guard_len.is_multiple_of(UNIT) && stack_size.is_multiple_of(UNIT);
    (whole && guard < 1 << GUARD_BITS && stack <= usize::MAX >> GUARD_BITS)
        .then_some((stack << GUARD_BITS) | guard)
}

/// The guard's length and the stack's size in bytes, from [`pack`]'s word.
fn unpack(sizes: usize) -> (usize, usize) {
    (
        (sizes & ((1 << GUARD_BITS) - 1)) * UNIT,
        (sizes >> GUARD_BITS) * UNIT,
    )
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

/// The first slot of `guard_lo`'s first window: its block number, rotated by a hash of the
/// span of [`CAPACITY`] blocks it lies in (no rotation for the lowest span, all of a 32-bit
/// address space).
fn home(guard_lo: usize) -> usize {
    let block = guard_lo / GRAIN;
    // The span number is below 2^(64 - 14 - 22); a usize shift by 22 is defined everywhere.
    let span = (block >> CAPACITY_BITS) as u64;
    let rotation = (span.wrapping_mul(FIBONACCI) >> (64 - CAPACITY_BITS)) as usize;
    block.wrapping_add(rotation) & (CAPACITY - 1)
}

/// The first slot of `guard_lo`'s second window: a Fibonacci hash of its page number, which
/// scatters neighbouring keys.
fn scattered(guard_lo: usize) -> usize {
    ((guard_lo as u64 >> 12).wrapping_mul(FIBONACCI) >> (64 - CAPACITY_BITS)) as usize
}

/// The [`PROBE_LIMIT`] slots of the window that starts at slot `start`, in probe order.
fn window(table: &[Slot], start: usize) -> impl Iterator<Item = &Slot> {
    (0..PROBE_LIMIT).map(move |i| &table[(start + i) & (CAPACITY - 1)])
}

/// The slots where the key `guard_lo` may be, in probe order: its first window, then its
/// second one if any key was ever put in a second window. A key is in its second window only
/// if its first was full when it was registered (no [`EMPTY`] slot in it, and slots never
/// become empty again), so a search that meets an empty slot may stop there.
fn probe(table: &[Slot], guard_lo: usize) -> impl Iterator<Item = &Slot> {
    let second = SPILLED
        .load(Acquire)
        .then(|| window(table, scattered(guard_lo)));
    window(table, home(guard_lo)).chain(second.into_iter().flatten())
}

/// Records a stack's guard so that a fault inside it is reported as an overflow.
/// `guard_lo` is page aligned, `guard_len` its length in bytes, `stack_size` the usable size
/// reported in the message (both whole pages). If the table cannot be mapped, the sizes do not
/// fit a slot ([`pack`]) or the guard's probe sequence is full,
/// the guard is silently not registered, and a fault in it is passed on like any other (both
/// windows full takes more than 64 live keys on a slot's neighbourhood, twice over).
pub(crate) fn register(guard_lo: usize, guard_len: usize, stack_size: usize) {
    debug_assert!(guard_lo > BUSY && guard_len > 0);
    let Some(sizes) = pack(guard_len, stack_size) else {
        debug_assert!(
            false,
            "guard sizes not whole pages: {guard_len} {stack_size}"
        );
        return;
    };
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
    if !claim(window(table, home(guard_lo)), guard_lo, sizes) {
        // The first window is full: lookups must search second windows from now on, before
        // this key can be found there.
        SPILLED.store(true, Release);
        claim(window(table, scattered(guard_lo)), guard_lo, sizes);
    }
}

/// Puts the guard in the first free slot of `window`; `false` if it has none.
fn claim<'a>(window: impl Iterator<Item = &'a Slot>, guard_lo: usize, sizes: usize) -> bool {
    for slot in window {
        // A compare-and-swap from EMPTY first, not a load: on a page of the table never written
        // a load maps the shared zero page, and the write then faults a second time to copy it.
        let claimed = match slot.key.compare_exchange(EMPTY, BUSY, Acquire, Relaxed) {
            Ok(_) => true,
            Err(TOMBSTONE) => slot
                .key
                .compare_exchange(TOMBSTONE, BUSY, Acquire, Relaxed)
                .is_ok(),
            Err(_) => false,
        };
        if claimed {
            slot.sizes.store(sizes, Relaxed);
            slot.key.store(guard_lo, Release); // publishes the store above to the handler
            return true;
        }
    }
    false
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
                let found = unpack(slot.sizes.load(Relaxed));
                // A slot unregistered and reused meanwhile no longer holds our key: seeing the
                // key again after the load (ordered by the fence) means it read sizes that
                // belong to it.
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
                key if key == guard_lo => {
                    let (guard_len, stack_size) = unpack(slot.sizes.load(Relaxed));
                    if addr - key < guard_len {
                        return Some(stack_size);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::mapping::{GUARD_PAGES, Mapping};
    use crate::stack::os::page_size;

    /// Address space of our own (mapped, never touched), so that the keys below are nobody
    /// else's.
    fn reserve(len: usize) -> memmap2::MmapMut {
        memmap2::MmapOptions::new().len(len).map_anon().unwrap()
    }

    /// A block (aligned to a grain and to a page) whose first window no other key can reach:
    /// the reservation around it spans [`PROBE_LIMIT`] grains on each side, so every block
    /// whose window overlaps its window lies inside it, and no other test's stack or key can be
    /// there. Tests that fill a window on purpose need this: with a reservation of two grains,
    /// another test's reservation could sit in the next block (qemu-user places mappings side
    /// by side), its keys take slots of this block's window, and more keys than a second
    /// window holds spill. Keep the mapping alive as long as the block is used.
    fn lone_block() -> (memmap2::MmapMut, usize) {
        let step = GRAIN.max(page_size());
        let margin = PROBE_LIMIT * GRAIN;
        let map = reserve(2 * margin + 2 * step);
        let base = (map.as_ptr() as usize + margin).next_multiple_of(step);
        (map, base)
    }

    /// Stacks carved top-down one stride apart, as from a reservation, have home slots one
    /// stride's worth of grains apart (neighbours in the table), and all register and are
    /// found.
    #[test]
    fn neighbouring_stacks_take_neighbouring_slots() {
        let page = page_size();
        let (guard, usable) = (GUARD_PAGES * page, 64 << 10);
        let stride = guard + usable;
        let map = reserve(512 * stride + GRAIN);
        let base = (map.as_ptr() as usize).next_multiple_of(GRAIN);
        let keys: Vec<usize> = (0..512).rev().map(|i| base + i * stride).collect();
        for &key in &keys {
            register(key, guard, usable);
        }
        for pair in keys.windows(2) {
            let step = home(pair[0]).wrapping_sub(home(pair[1])) & (CAPACITY - 1);
            assert_eq!(step, stride / GRAIN, "not neighbours: {pair:x?}");
        }
        for &key in &keys {
            assert_eq!(guard_at(key), Some((guard, usable)), "{key:#x}");
            // A page inside a stack is no key.
            assert_eq!(guard_at(key + page), None);
        }
        for &key in &keys {
            unregister(key);
        }
        assert!(keys.iter().all(|&key| guard_at(key).is_none()));
    }

    /// Stacks of mixed sizes, mapped as `DefaultStack`s are (from reservations, restarted at
    /// each change of size, or alone), all register and are found until unmapped.
    #[test]
    fn mixed_sizes_all_register_and_are_found() {
        let page = page_size();
        let sizes = [page, 2 * page, 16 << 10, 64 << 10, 1 << 20, 3 * page];
        let maps: Vec<Mapping> = (0..300)
            .map(|i| Mapping::new(sizes[i % sizes.len()].next_multiple_of(page), page).unwrap())
            .collect();
        let guard = GUARD_PAGES * page;
        let found = |m: &Mapping| guard_at(m.limit() - guard) == Some((guard, m.size()));
        assert!(maps.iter().all(found));
        let keys: Vec<usize> = maps.iter().map(|m| m.limit() - guard).collect();
        Mapping::unmap_all(maps);
        // Unless another test mapped a stack there meanwhile, none of them is registered.
        let gone = keys.iter().filter(|&&k| guard_at(k).is_none()).count();
        assert!(gone > 0);
    }

    /// Keys closer than a grain share their home slot: past [`PROBE_LIMIT`] of them the first
    /// window is full, and the rest go to their second windows, where they are found (and
    /// unregistered, and registered again into the tombstones).
    #[test]
    fn a_full_window_spills_into_the_second() {
        let (_map, base) = lone_block();
        // A window and a half's worth of keys in one grain (16-byte steps: keys need not be
        // pages), all with one first window and one second window: room for all of them with
        // some to spare in the second window, which a key of another test may share.
        let keys: Vec<usize> = (0..PROBE_LIMIT * 3 / 2).map(|i| base + 16 * i).collect();
        for round in 0..2 {
            for (i, &key) in keys.iter().enumerate() {
                register(key, UNIT, (i + round + 1) * UNIT);
            }
            assert!(SPILLED.load(Relaxed));
            for (i, &key) in keys.iter().enumerate() {
                assert_eq!(
                    guard_at(key),
                    Some((UNIT, (i + round + 1) * UNIT)),
                    "{key:#x}"
                );
            }
            for &key in &keys {
                unregister(key);
            }
            assert!(keys.iter().all(|&key| guard_at(key).is_none()));
        }
    }

    /// A guard whose first window is full is found in its second window by the overflow
    /// handler's lookup from a fault address inside it, as well as by `guard_at`.
    #[cfg(feature = "overflow-handler")]
    #[test]
    fn a_spilled_guard_is_found_from_a_fault_address() {
        let page = page_size();
        let (_map, base) = lone_block();
        // A window's worth of other keys in the guard's block fill its first window.
        let fillers: Vec<usize> = (1..=PROBE_LIMIT).map(|i| base + 16 * i).collect();
        for &key in &fillers {
            register(key, UNIT, UNIT);
        }
        register(base, page, 123 * page);
        assert_eq!(guard_at(base), Some((page, 123 * page)));
        assert_eq!(lookup(base + page / 2), Some(123 * page));
        unregister(base);
        assert_eq!(lookup(base + page / 2), None);
        fillers.iter().for_each(|&key| unregister(key));
    }

    /// Threads that register and unregister keys of one window at once (more keys than a
    /// window holds: some spill), each checking its own, while a key registered in their midst
    /// stays: it is found at every lookup, with its sizes, and every key with its own.
    ///
    /// Catches: a claim that is not atomic (a load, then a store: two keys in one slot, one
    /// lost or read with the other's sizes), an unregister that removes another key (the first
    /// one of its window), a lookup that stops at a tombstone or at a slot being filled.
    #[test]
    fn keys_of_one_window_registered_by_many_threads_at_once_are_all_found() {
        let (_map, base) = lone_block();
        // Ten keys first, then the one that stays: it sits past their slots, which the
        // threads below tombstone and claim again.
        let first: Vec<usize> = (1..=10).map(|i| base + 16 * i).collect();
        first.iter().for_each(|&k| register(k, UNIT, UNIT));
        let kept = (base, (UNIT, 77 * UNIT));
        register(kept.0, kept.1.0, kept.1.1);
        first.iter().for_each(|&k| unregister(k));
        // How many workers have ended (a panic included: the watcher stops then too).
        let ended = AtomicUsize::new(0);
        struct Ended<'a>(&'a AtomicUsize);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Relaxed);
            }
        }
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let ended = &ended;
                    s.spawn(move || {
                        let _ended = Ended(ended);
                        let keys: Vec<usize> =
                            (0..20).map(|i| base + 16 * (11 + 20 * t + i)).collect();
                        let sizes = |k: usize| (UNIT, (k - base) * UNIT);
                        for round in 0..2000 {
                            for &k in &keys[..(round % 20) + 1] {
                                register(k, sizes(k).0, sizes(k).1);
                            }
                            for &k in &keys[..(round % 20) + 1] {
                                assert_eq!(guard_at(k), Some(sizes(k)), "{k:#x}");
                                unregister(k);
                                assert_eq!(guard_at(k), None, "{k:#x}");
                            }
                        }
                    })
                })
                .collect();
            let watcher = s.spawn(|| {
                let mut n = 0u64;
                while ended.load(Relaxed) < 4 {
                    assert_eq!(guard_at(kept.0), Some(kept.1));
                    #[cfg(feature = "overflow-handler")]
                    assert_eq!(lookup(kept.0 + 8), Some(kept.1.1));
                    n += 1;
                }
                n
            });
            for w in workers {
                w.join().unwrap();
            }
            assert!(watcher.join().unwrap() > 0);
        });
        assert_eq!(guard_at(kept.0), Some(kept.1));
        unregister(kept.0);
        assert_eq!(guard_at(kept.0), None);
    }

    /// A slot's two sizes survive packing, from the smallest guard to the largest stack, and
    /// sizes that are not whole units or do not fit are refused.
    #[test]
    fn sizes_pack_into_one_word() {
        for (guard, stack) in [
            (UNIT, UNIT),
            (4 * UNIT, 64 << 10),
            (255 * UNIT, crate::stack::MAX_STACK_SIZE),
        ] {
            assert_eq!(pack(guard, stack).map(unpack), Some((guard, stack)));
        }
        assert_eq!(pack(256 * UNIT, UNIT), None);
        assert_eq!(pack(UNIT, UNIT + 1), None);
        assert_eq!(pack(UNIT / 2, UNIT), None);
    }

    /// Home slots: linear in the block number inside a span, distinct for distinct blocks.
    #[test]
    fn home_slots_are_linear_in_a_span() {
        let base = 0x0700_0000;
        assert_eq!(home(base + GRAIN), (home(base) + 1) & (CAPACITY - 1));
        assert_eq!(home(base + GRAIN - 1), home(base));
        assert_ne!(home(base + 5 * GRAIN), home(base + 4 * GRAIN));
    }
}
