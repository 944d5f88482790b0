//! [`Mapping`]: the memory of one [`DefaultStack`](super::DefaultStack), an
//! anonymous private mapping whose lowest [`GUARD_PAGES`] pages are a
//! guard, registered with the guard registry and valgrind for as long as it
//! is mapped.

use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

use super::guards;
use super::os::install_guard_advice;

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
#[derive(Debug)]
pub(crate) struct Mapping {
    /// The guard pages, then the usable bytes: the top is the mapping's
    /// end. Taken out only by `drop`.
    map: ManuallyDrop<MmapMut>,
    /// The lowest usable address: the mapping's start plus the guard
    /// (kept, so that nothing but mapping asks the page size).
    limit: usize,
}

impl Mapping {
    /// Maps the guard and `usable` bytes above it, and installs the guard
    /// on the lowest [`GUARD_PAGES`] pages.
    #[cold]
    #[inline(never)]
    pub(crate) fn new(usable: usize, page: usize) -> io::Result<Mapping> {
        let guard = GUARD_PAGES * page;
        let mut options = MmapOptions::new();
        options.len(usable + guard).no_reserve_swap();
        // MAP_STACK: on Linux a hint (no huge pages); FreeBSD's makes a
        // region that grows down on demand with a gap of its own, which a
        // guard of ours must not meet; macOS has none.
        #[cfg(target_os = "linux")]
        options.stack();
        let map = options.map_anon().map_err(|e| exhausted(e, usable))?;
        let base = map.as_ptr() as *mut libc::c_void;
        // SAFETY: `base` is the start of a private mapping we own, and the
        // guard's pages are inside the mapping, with nothing in them yet.
        let guarded = unsafe { install_guard_advice(base, guard) };
        // SAFETY: as above; PROT_NONE on the first pages of our own mapping.
        if !guarded && unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(exhausted(io::Error::last_os_error(), usable));
        }
        guards::register(base as usize, guard, usable);
        let (limit, top) = (base as usize + guard, base as usize + guard + usable);
        crate::sanitizer::valgrind_stack_register(limit, top);
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Mapping {
            map: ManuallyDrop::new(map),
            limit,
        })
    }

    /// One past the highest usable byte.
    #[inline(always)]
    pub(crate) fn top(&self) -> usize {
        self.map.as_ptr() as usize + self.map.len()
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

    /// How many mappings the process holds now.
    pub(crate) fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

impl Drop for Mapping {
    /// Unregisters the stack (its guard, and from valgrind) and unmaps it.
    fn drop(&mut self) {
        // SAFETY: `drop` runs once; the map is not used after this.
        let map = unsafe { ManuallyDrop::take(&mut self.map) };
        let base = map.as_ptr() as usize;
        crate::sanitizer::valgrind_stack_deregister(self.limit);
        guards::unregister(base);
        LIVE.fetch_sub(1, Ordering::Relaxed);
        drop(map);
    }
}

/// Turns a failed mmap or mprotect into an error that says which limit
/// was hit and what to do.
fn exhausted(err: io::Error, usable: usize) -> io::Error {
    let max: Option<usize> = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .ok();
    let live = LIVE.load(Ordering::Relaxed);
    let kind = match err.raw_os_error() {
        Some(libc::ENOMEM) => io::ErrorKind::OutOfMemory,
        _ => err.kind(),
    };
    let cause = match (maps, max) {
        (Some(maps), Some(max)) if maps + 16 >= max => format!(
            "the process has {maps} mappings and the kernel allows {max} (vm.max_map_count): \
             raise vm.max_map_count, or use fewer live coroutines"
        ),
        (maps, max) => format!(
            "the process has {} mappings of the {} that vm.max_map_count allows, so the \
             address space or memory ran out: check `ulimit -v` and free memory, or use \
             smaller stacks or fewer live coroutines",
            maps.map_or("an unknown number of".into(), |m| m.to_string()),
            max.map_or("unknown number".into(), |m| m.to_string()),
        ),
    };
    io::Error::new(
        kind,
        format!(
            "cannot map a coroutine stack of {usable} bytes with {live} stacks live: {err}; {cause}"
        ),
    )
}
