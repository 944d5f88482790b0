//! What the stacks need of a Unix system: the page size and whether
//! `MADV_GUARD_INSTALL` really installs a guard (each read once), a guarded
//! [`Region`] of memory for a stack, and the guard registry's table.
//! (`os_windows.rs` is Windows' counterpart, chosen in `mod.rs`.)

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// `MADV_GUARD_INSTALL` (Linux 6.13): make pages fault on access without
/// splitting the mapping. Not yet in every libc release.
pub(crate) const MADV_GUARD_INSTALL: libc::c_int = 102;

/// The system's page size, read once.
#[inline]
pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

/// Whether `MADV_GUARD_INSTALL` really installs a guard here, checked once:
/// qemu-user, for one, accepts the advice and ignores it. A `read` from a
/// pipe into a guarded page fails with `EFAULT`; into an open one it works.
pub(crate) fn guard_install_works() -> bool {
    // 0: not probed yet; 1: works; 2: does not. Threads that race probe
    // twice, harmlessly; an atomic rather than a OnceLock, so that
    // ThreadSanitizer sees the synchronisation (std is not instrumented).
    static WORKS: AtomicUsize = AtomicUsize::new(0);
    match WORKS.load(Ordering::Acquire) {
        0 => {
            let works = probe_guard_install();
            WORKS.store(if works { 1 } else { 2 }, Ordering::Release);
            works
        }
        state => state == 1,
    }
}

fn probe_guard_install() -> bool {
    let page = page_size();
    let Ok(mut map) = MmapOptions::new().len(page).map_anon() else {
        return false;
    };
    let ptr = map.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: `ptr` is our own one-page private mapping.
    if unsafe { libc::madvise(ptr, page, MADV_GUARD_INSTALL) } != 0 {
        return false;
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: writes one byte from a valid buffer to the pipe we just made;
    // then reads it into our mapping, where the kernel checks the access
    // (EFAULT if the guard is there) instead of our code faulting.
    let faulted = unsafe {
        let wrote = libc::write(fds[1], b"x".as_ptr() as *const libc::c_void, 1) == 1;
        let read = libc::read(fds[0], ptr, 1);
        let errno = io::Error::last_os_error().raw_os_error();
        libc::close(fds[0]);
        libc::close(fds[1]);
        wrote && read == -1 && errno == Some(libc::EFAULT)
    };
    drop(map);
    faulted
}

/// The memory of one stack: `guard` bytes of guard pages, then the usable
/// bytes; unmapped when dropped.
#[derive(Debug)]
pub(crate) struct Region {
    map: MmapMut,
}

impl Region {
    /// Maps `guard + usable` bytes and installs the guard on the lowest
    /// `guard` bytes (`MADV_GUARD_INSTALL` where it works, so that the
    /// stack stays one kernel mapping; `mprotect(PROT_NONE)` elsewhere).
    /// `live` (the stacks mapped now) goes into the error's message.
    pub(crate) fn new(usable: usize, guard: usize, live: usize) -> io::Result<Region> {
        let map = MmapOptions::new()
            .len(usable + guard)
            .stack()
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| exhausted(e, usable, live))?;
        let base = map.as_ptr() as *mut libc::c_void;
        let guarded = guard_install_works()
            // SAFETY: `base` is the start of a private mapping we own, and
            // the guard's pages are inside the mapping.
            && unsafe { libc::madvise(base, guard, MADV_GUARD_INSTALL) } == 0;
        // SAFETY: as above; PROT_NONE on the first pages of our own mapping.
        if !guarded && unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(exhausted(io::Error::last_os_error(), usable, live));
        }
        Ok(Region { map })
    }

    /// The lowest address (the guard's).
    #[inline(always)]
    pub(crate) fn base(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// One past the highest usable byte.
    #[inline(always)]
    pub(crate) fn top(&self) -> usize {
        self.base() + self.map.len()
    }
}

/// Turns a failed mmap or mprotect into an error that says which limit
/// was hit and what to do.
fn exhausted(err: io::Error, usable: usize, live: usize) -> io::Error {
    let max: Option<usize> = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .ok();
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

/// Maps `bytes` of zeroed memory for the guard registry's table, which
/// costs memory only where it is written (`MAP_NORESERVE`); null if the
/// system refuses.
pub(crate) fn map_table(bytes: usize) -> *mut u8 {
    let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_NORESERVE);
    let flags = flags | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a new anonymous mapping at an address of the kernel's choice
    // touches no existing memory.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, flags, -1, 0) };
    if map == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        map.cast()
    }
}

/// Unmaps a table from [`map_table`] that was never shared.
///
/// # Safety
/// `table` came from `map_table(bytes)`, and nothing refers to it.
pub(crate) unsafe fn unmap_table(table: *mut u8, bytes: usize) {
    // SAFETY: as the caller promises.
    unsafe { libc::munmap(table.cast(), bytes) };
}

/// Whether [`thread_stack`] reports whichever stack runs rather than the
/// thread's own: no, on Unix.
pub(crate) const REPORTS_RUNNING_STACK: bool = false;

/// The calling thread's own stack: the lowest address of its reservation,
/// its lowest usable address and its top, from `pthread_getattr_np`.
pub(crate) fn thread_stack() -> Option<(usize, usize, usize)> {
    // SAFETY: all-zero is a valid pthread_attr_t to hand to
    // pthread_getattr_np, which initialises it; it is destroyed only after
    // a successful getattr, and getstack only writes the two outputs.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let lo = addr as usize;
        (rc == 0).then(|| (lo, lo, lo + size))
    }
}
