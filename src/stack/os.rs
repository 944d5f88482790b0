//! The operating system's facts that the stacks need, each read once: the
//! page size, and whether `MADV_GUARD_INSTALL` (Linux) really installs a
//! guard.

#[cfg(target_os = "linux")]
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_os = "linux")]
use memmap2::MmapOptions;

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
