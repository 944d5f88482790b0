//! [`Mapping`]: the memory of one [`DefaultStack`](super::DefaultStack), a
//! region of the system's (`os`) whose lowest [`GUARD_PAGES`] pages are a
//! guard, registered with the guard registry and valgrind for as long as it
//! is mapped.

use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::guards;
use super::os::{Region, page_size};

/// The pages of a stack's guard. One page is not enough: LLVM's stack
/// probes leave the last page of a frame unprobed, so a frame realigned to
/// a page (a `#[repr(align(4096))]` local) can end right on the guard, and
/// the next call then writes 4 KiB and more below the last probe, over a
/// one-page guard into whatever lies below: with pooled stacks mapped back
/// to back, the next stack's live frames (found by an adversarial test).
/// Four pages cover that with room to spare; they cost address space only
/// (`MADV_GUARD_INSTALL` keeps them in the stack's one mapping). Frames
/// realigned to more than 8 KiB can still step over, as they can over a
/// thread's guard.
pub(crate) const GUARD_PAGES: usize = 4;

/// How many mappings exist in the process (pooled or not).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The guard pages, then the usable bytes; unmapped (and unregistered)
/// when dropped.
///
/// Two words, the usable bounds, which is what a coroutine reads (and the
/// pool moves) on every life; the region's own bounds are rebuilt from
/// them when it is unmapped (its base lies [`GUARD_PAGES`] pages below the
/// limit), which only a mapping's last use does.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// The lowest usable address: the region's base plus the guard.
    limit: usize,
    /// One past the highest usable byte: the region's end.
    top: usize,
}

impl Mapping {
    /// Maps the guard and `usable` bytes above it, and installs the guard
    /// on the lowest [`GUARD_PAGES`] pages.
    #[cold]
    #[inline(never)]
    pub(crate) fn new(usable: usize, page: usize) -> io::Result<Mapping> {
        debug_assert_eq!(page, page_size(), "unregister rebuilds the guard from it");
        let guard = GUARD_PAGES * page;
        let map = Region::new(usable, guard, LIVE.load(Ordering::Relaxed))?;
        let base = map.base();
        guards::register(base, guard, usable);
        let (limit, top) = (base + guard, base + guard + usable);
        crate::sanitizer::valgrind_stack_register(limit, top);
        LIVE.fetch_add(1, Ordering::Relaxed);
        // Given up here, taken back by `unregister`.
        debug_assert_eq!(map.top(), top);
        let _ = map.into_raw();
        Ok(Mapping { limit, top })
    }

    /// One past the highest usable byte.
    #[inline(always)]
    pub(crate) fn top(&self) -> usize {
        self.top
    }

    /// The lowest usable byte.
    #[inline(always)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The usable size in bytes.
    #[inline(always)]
    pub(crate) fn size(&self) -> usize {
        self.top() - self.limit
    }

    /// Gives up the mapping as its two words (limit, top), for the pool's
    /// slot; [`Mapping::from_words`] takes it back. Its top is
    /// page-aligned, which the slot relies on (even, never one of its
    /// odd states).
    #[inline(always)]
    pub(crate) fn into_words(self) -> (usize, usize) {
        let map = ManuallyDrop::new(self);
        debug_assert!(map.top.is_multiple_of(2));
        (map.limit, map.top)
    }

    /// Takes back a mapping given up by [`Mapping::into_words`].
    ///
    /// # Safety
    /// `(limit, top)` are the words of a mapping given up by `into_words`,
    /// and not taken back since.
    #[inline(always)]
    pub(crate) unsafe fn from_words(limit: usize, top: usize) -> Mapping {
        Mapping { limit, top }
    }

    /// How many mappings the process holds now.
    pub(crate) fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

impl Mapping {
    /// Unregisters the stack (its guard, and from valgrind), and hands
    /// its region over for unmapping.
    ///
    /// # Safety
    /// Called once, by the mapping's last use (`drop` or `release`).
    unsafe fn unregister(&mut self) -> Region {
        // `new`'s guard, below the limit.
        let base = self.limit - GUARD_PAGES * page_size();
        // SAFETY: `new` gave up the region of these bounds; as the caller
        // promises, this is the mapping's last use, so it is taken back
        // once.
        let map = unsafe { Region::from_raw(base, self.top) };
        crate::sanitizer::valgrind_stack_deregister(self.limit);
        guards::unregister(map.base());
        LIVE.fetch_sub(1, Ordering::Relaxed);
        map
    }

    /// Unmaps `maps` together: back-to-back stacks (a thread's stacks
    /// mapped one after another, dropped in any order) with one system
    /// call a run (see [`Region::unmap_all`]), where dropping each would
    /// make one a stack.
    pub(crate) fn unmap_all(maps: impl IntoIterator<Item = Mapping>) {
        let regions = maps
            .into_iter()
            .map(|map| {
                let mut map = ManuallyDrop::new(map);
                // SAFETY: the mapping is not dropped (ManuallyDrop), so this
                // is its last use.
                unsafe { map.unregister() }
            })
            .collect();
        Region::unmap_all(regions);
    }
}

impl Mapping {
    /// Gives back the address space reserved for stacks not handed out
    /// yet (see `Region::release_reserve`).
    pub(crate) fn release_reserve() {
        Region::release_reserve();
    }
}

impl Drop for Mapping {
    /// Unregisters the stack (its guard, and from valgrind) and unmaps it.
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and is the mapping's last use.
        drop(unsafe { self.unregister() });
    }
}
