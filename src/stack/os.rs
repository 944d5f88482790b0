//! What the stacks need of a Unix system: the page size and whether
//! `MADV_GUARD_INSTALL` (Linux) really installs a guard (each read once), a
//! guarded [`Region`] of memory for a stack, the guard registry's table,
//! and the thread's own stack. (`os_windows.rs` is Windows' counterpart,
//! chosen in `mod.rs`.)

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// `MADV_GUARD_INSTALL` (Linux 6.13): make pages fault on access without
/// splitting the mapping. Not yet in every libc release; Linux only.
#[cfg(target_os = "linux")]
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

/// Makes the `len` bytes at `base` (page-aligned, inside one private
/// mapping of ours) a guard with `MADV_GUARD_INSTALL` where that works;
/// `false` where it does not (other systems have no such advice), and the
/// caller then uses `mprotect`.
///
/// # Safety
/// `base` and `len` lie inside a private anonymous mapping the caller owns,
/// with nothing live in those pages.
pub(crate) unsafe fn install_guard_advice(base: *mut libc::c_void, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as the caller promises.
        guard_install_works() && unsafe { libc::madvise(base, len, MADV_GUARD_INSTALL) } == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (base, len);
        false
    }
}

/// Whether `MADV_GUARD_INSTALL` really installs a guard here, checked once:
/// qemu-user, for one, accepts the advice and ignores it. A `read` from a
/// pipe into a guarded page fails with `EFAULT`; into an open one it works.
#[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")]
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
        let mut options = MmapOptions::new();
        options.len(usable + guard).no_reserve_swap();
        // MAP_STACK: on Linux a hint (no huge pages); FreeBSD's makes a
        // region that grows down on demand with a gap of its own, which a
        // guard of ours must not meet; macOS has none.
        #[cfg(target_os = "linux")]
        options.stack();
        let map = options.map_anon().map_err(|e| exhausted(e, usable, live))?;
        let base = map.as_ptr() as *mut libc::c_void;
        // SAFETY: `base` is the start of a private mapping we own, and the
        // guard's pages are inside the mapping, with nothing in them yet.
        let guarded = unsafe { install_guard_advice(base, guard) };
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
    // FreeBSD has no MAP_NORESERVE (it reserves no swap for an anonymous
    // mapping anyway).
    #[cfg(not(target_os = "freebsd"))]
    let no_reserve = libc::MAP_NORESERVE;
    #[cfg(target_os = "freebsd")]
    let no_reserve = 0;
    let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, no_reserve);
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
/// its lowest usable address and its top, from `pthread_getattr_np`
/// (Linux), `pthread_attr_get_np` (FreeBSD) or `pthread_get_stackaddr_np`
/// and `pthread_get_stacksize_np` (macOS).
pub(crate) fn thread_stack() -> Option<(usize, usize, usize)> {
    let (lo, hi) = read_thread_stack()?;
    Some((lo, lo, hi))
}

#[cfg(target_os = "linux")]
fn read_thread_stack() -> Option<(usize, usize)> {
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
        (rc == 0).then(|| (addr as usize, addr as usize + size))
    }
}

/// FreeBSD: `pthread_attr_get_np` fills an attribute object that
/// `pthread_attr_init` made.
#[cfg(target_os = "freebsd")]
fn read_thread_stack() -> Option<(usize, usize)> {
    // SAFETY: the attribute object is initialised before use and destroyed
    // once; get_np and getstack only write into it and the two outputs.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return None;
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
        let rc = match libc::pthread_attr_get_np(libc::pthread_self(), &mut attr) {
            0 => libc::pthread_attr_getstack(&attr, &mut addr, &mut size),
            e => e,
        };
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0).then(|| (addr as usize, addr as usize + size))
    }
}

/// macOS: the stack's top (`pthread_get_stackaddr_np` gives the highest
/// address) and its size.
#[cfg(target_vendor = "apple")]
fn read_thread_stack() -> Option<(usize, usize)> {
    // SAFETY: both take a live thread, the calling one, and read only.
    let (top, size) = unsafe {
        let me = libc::pthread_self();
        (
            libc::pthread_get_stackaddr_np(me) as usize,
            libc::pthread_get_stacksize_np(me),
        )
    };
    (top != 0 && size != 0).then(|| (top - size, top))
}
