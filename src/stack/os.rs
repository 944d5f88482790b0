//! What the stacks need of a Unix system: the page size and whether
//! `MADV_GUARD_INSTALL` (Linux) really installs a guard (each read once), a
//! guarded [`Region`] of memory for a stack, the guard registry's table,
//! and the thread's own stack. (`os_windows.rs` is Windows' counterpart,
//! chosen in `mod.rs`.)

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// The memory of one stack: `guard` bytes of guard pages, then the usable
/// bytes; unmapped when dropped. A whole mapping of its own, or a stride
/// carved from a [`reserve`]d one (which its drop unmaps alone, as the
/// kernel allows for any page-aligned part of a mapping).
#[derive(Debug)]
pub(crate) struct Region {
    base: usize,
    len: usize,
}

impl Region {
    /// Maps `guard + usable` bytes and installs the guard on the lowest
    /// `guard` bytes (`MADV_GUARD_INSTALL` where it works, so that the
    /// stack stays one kernel mapping; `mprotect(PROT_NONE)` elsewhere).
    /// Where `MADV_GUARD_INSTALL` works the stride comes from the
    /// reservation ([`reserve`]), guard and all, without a system call
    /// most of the time. `live` (the stacks mapped now) goes into the
    /// error's message.
    pub(crate) fn new(usable: usize, guard: usize, live: usize) -> io::Result<Region> {
        let len = usable + guard;
        #[cfg(target_os = "linux")]
        if guard_install_works()
            && let Some(base) = reserve::take(len, guard)
        {
            return Ok(Region { base, len });
        }
        let mut options = MmapOptions::new();
        options.len(len).no_reserve_swap();
        // MAP_STACK: on Linux a hint (no huge pages); FreeBSD's makes a
        // region that grows down on demand with a gap of its own, which a
        // guard of ours must not meet; macOS has none.
        #[cfg(target_os = "linux")]
        options.stack();
        let map = options.map_anon().map_err(|e| exhausted(e, usable, live))?;
        // From here the region unmaps it (memmap2 would unmap the same
        // range: an anonymous map has no alignment offset).
        let region = Region {
            base: map.as_ptr() as usize,
            len: map.len(),
        };
        std::mem::forget(map);
        let base = region.base as *mut libc::c_void;
        // SAFETY: `base` is the start of a private mapping we own, and the
        // guard's pages are inside the mapping, with nothing in them yet.
        let guarded = unsafe { install_guard_advice(base, guard) };
        // SAFETY: as above; PROT_NONE on the first pages of our own mapping.
        if !guarded && unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(exhausted(io::Error::last_os_error(), usable, live));
        }
        Ok(region)
    }

    /// The lowest address (the guard's).
    #[inline(always)]
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Gives up the region without unmapping it; [`Region::from_raw`]
    /// takes it back from its bounds.
    #[inline(always)]
    pub(crate) fn into_raw(self) -> (usize, usize) {
        let bounds = (self.base, self.top());
        std::mem::forget(self);
        bounds
    }

    /// The region of `into_raw`'s bounds.
    ///
    /// # Safety
    /// `(base, top)` are the bounds of a region given up by `into_raw`,
    /// taken back once.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(base: usize, top: usize) -> Region {
        Region {
            base,
            len: top - base,
        }
    }

    /// One past the highest usable byte.
    #[inline(always)]
    pub(crate) fn top(&self) -> usize {
        self.base + self.len
    }

    /// Gives back the address space reserved for stacks and not handed
    /// out yet (see [`reserve`]), so that the next stack is mapped anew
    /// (and an address-space limit is met at once, not after the rest).
    pub(crate) fn release_reserve() {
        #[cfg(target_os = "linux")]
        reserve::release();
    }

    /// Unmaps `regions`, those that lie back to back (stacks mapped one
    /// after another, which the kernel places next to each other, or
    /// carved from one reservation) with one `munmap` a run: a `munmap`
    /// costs microseconds whatever its length (the split of the mapping
    /// that the kernel merged them into, the TLB flush), and a page a few
    /// hundred nanoseconds on top (`examples/million.rs` measures both).
    pub(crate) fn unmap_all(mut regions: Vec<Region>) {
        regions.sort_unstable_by_key(Region::base);
        let mut run: Option<(usize, usize)> = None;
        for region in regions {
            let (base, top) = (region.base(), region.top());
            // Its memory is unmapped with its run, below.
            std::mem::forget(region);
            run = match run {
                Some((start, end)) if end == base => Some((start, top)),
                Some((start, end)) => {
                    unmap(start, end);
                    Some((base, top))
                }
                None => Some((base, top)),
            };
        }
        if let Some((start, end)) = run {
            unmap(start, end);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        unmap(self.base, self.top());
    }
}

/// Unmaps `[start, end)`: whole regions (or the unused rest of a
/// reservation) that their owners gave up.
fn unmap(start: usize, end: usize) {
    // SAFETY: the range is made of whole regions, each a page-aligned
    // part of a mapping of ours that nothing else covers, or of the free
    // rest of a reservation; nothing refers to their memory any more. An
    // error (none is expected for a range of our own mappings) leaves the
    // memory mapped, as memmap2's own drop would.
    unsafe { libc::munmap(start as *mut libc::c_void, end - start) };
}

/// The reservation (Linux, where `MADV_GUARD_INSTALL` works): stacks of
/// one stride (guard and usable bytes) carved from one mapping made for
/// many, their guards installed in one `process_madvise` call, so that a
/// new stack costs no system call most of the time (an `mmap` and a
/// `madvise` each cost about as much as the stack's first page does).
///
/// A run of requests of one stride doubles the reservation each time it
/// runs out (1, 2, 4 ... strides, up to [`reserve::MAX_STRIDES`] and
/// [`reserve::MAX_BYTES`]); a request of another stride starts over at one
/// and unmaps the unused rest. That rest costs address space only (and
/// the page tables of its guards): no memory is touched before a stack
/// is handed out. One reservation for the process, behind a lock that is
/// only tried: a thread that finds it taken (or a child forked while it
/// was) maps its stack alone, as elsewhere. So does every stack once a
/// reservation's guards were refused (a process under
/// `mlockall(MCL_FUTURE)`, whose new mappings are populated and locked).
#[cfg(target_os = "linux")]
mod reserve {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The most strides of one reservation: `process_madvise` takes at
    /// most 1,024 ranges (`UIO_MAXIOV`) a call.
    pub(super) const MAX_STRIDES: usize = 1024;

    /// The most address space of one reservation: 256 MiB (16 MiB on
    /// 32-bit targets, whose address space is small).
    #[cfg(target_pointer_width = "64")]
    pub(super) const MAX_BYTES: usize = 256 << 20;
    #[cfg(target_pointer_width = "32")]
    pub(super) const MAX_BYTES: usize = 16 << 20;

    /// `PIDFD_SELF` (Linux 6.15): the calling thread's process, for
    /// `process_madvise` (a pidfd made once would name the parent in a
    /// forked child). Older kernels refuse it (`EBADF`) and the guards are
    /// installed one `madvise` each.
    const PIDFD_SELF: libc::c_int = -10000;

    /// The free part `[next, end)` of the current reservation, of strides
    /// of `stride` bytes, handed out from the top down; `strides`, how
    /// many it was made with.
    struct Reservation {
        stride: usize,
        next: usize,
        end: usize,
        strides: usize,
    }

    static RESERVATION: Mutex<Reservation> = Mutex::new(Reservation {
        stride: 0,
        next: 0,
        end: 0,
        strides: 0,
    });

    /// Set once the guards of a new reservation were refused: every stack
    /// is mapped alone from then on. A process that locks its future
    /// mappings (`mlockall(MCL_FUTURE)`) has each new mapping populated at
    /// once and refuses guard advice on it: a reservation tried again at
    /// every stack populated all its strides (up to [`MAX_BYTES`]) to use
    /// none (`tests/attack_perf.rs`).
    static OFF: AtomicBool = AtomicBool::new(false);

    /// The base of a free stride of `stride` bytes whose lowest `guard`
    /// bytes are a guard already; `None` when the lock is taken or no new
    /// reservation can be made (the caller then maps the stack alone).
    pub(super) fn take(stride: usize, guard: usize) -> Option<usize> {
        if OFF.load(Ordering::Relaxed) {
            return None;
        }
        let mut r = RESERVATION.try_lock().ok()?;
        if r.next == r.end || r.stride != stride {
            // The unused rest of a reservation of another stride goes back
            // first: near an address-space limit its room may be what this
            // one needs (kept until after, it made a stack of another size
            // fail with memory to spare, `tests/attack_perf.rs`).
            if r.next != r.end {
                super::unmap(r.next, r.end);
                r.next = r.end;
            }
            let strides = if r.stride == stride {
                (r.strides * 2).min(MAX_STRIDES).min(MAX_BYTES / stride)
            } else {
                1
            }
            .max(1);
            let Some(base) = strides.checked_mul(stride).and_then(map) else {
                // Near an address-space limit the doubling would fail every
                // time: the next try asks for half of this one.
                if r.stride == stride {
                    r.strides /= 4;
                }
                return None;
            };
            if !install_guards(base, stride, strides, guard) {
                super::unmap(base, base + strides * stride);
                OFF.store(true, Ordering::Relaxed);
                return None;
            }
            *r = Reservation {
                stride,
                next: base,
                end: base + strides * stride,
                strides,
            };
        }
        // From the top down, as the kernel places mappings one after
        // another: each new stack directly below the one before.
        r.end -= stride;
        Some(r.end)
    }

    /// Unmaps the free rest of the reservation and starts over at one
    /// stride (nothing if another thread holds the lock: it is using it).
    pub(super) fn release() {
        if let Ok(mut r) = RESERVATION.try_lock() {
            if r.next != r.end {
                super::unmap(r.next, r.end);
            }
            r.stride = 0;
            r.next = 0;
            r.end = 0;
            r.strides = 0;
        }
    }

    /// A new private anonymous mapping of `len` bytes (as `Region::new`'s:
    /// no swap reserved, a stack's).
    fn map(len: usize) -> Option<usize> {
        let (prot, flags) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
        );
        // SAFETY: a new mapping at an address of the kernel's choice
        // touches no existing memory.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        (map != libc::MAP_FAILED).then_some(map as usize)
    }

    /// Installs the guard, the lowest `guard` bytes, of each of the
    /// `strides` strides at `base`: one `process_madvise` call for them
    /// all, or one `madvise` each where that call is refused.
    fn install_guards(base: usize, stride: usize, strides: usize, guard: usize) -> bool {
        let ranges: Vec<libc::iovec> = (0..strides)
            .map(|i| libc::iovec {
                iov_base: (base + i * stride) as *mut libc::c_void,
                iov_len: guard,
            })
            .collect();
        // valgrind does not know `process_madvise` (it prints a warning
        // for every call, and refuses it): one `madvise` each there.
        let done = if crate::sanitizer::under_valgrind() {
            -1
        } else {
            // SAFETY: every range is the start of a stride of our own new
            // private mapping, with nothing in it; the call reads the
            // vector only.
            unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    PIDFD_SELF,
                    ranges.as_ptr(),
                    ranges.len(),
                    super::MADV_GUARD_INSTALL,
                    0,
                )
            }
        };
        if usize::try_from(done) == Ok(strides * guard) {
            return true;
        }
        // Refused, or stopped part way: a guard installed twice is one
        // guard.
        ranges.iter().all(|r| {
            // SAFETY: as above.
            unsafe { super::install_guard_advice(r.iov_base, guard) }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the kernel lets `read` write one byte at `addr`: `false`
    /// (EFAULT) in a guard or outside any mapping.
    fn writable(addr: usize) -> bool {
        let mut fds = [0; 2];
        // SAFETY: plain pipe calls; the read targets `addr`, which the
        // kernel checks for us (EFAULT instead of a fault).
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
            let n = libc::read(fds[0], addr as *mut libc::c_void, 1);
            libc::close(fds[0]);
            libc::close(fds[1]);
            n == 1
        }
    }

    /// Stacks of one size in a row (carved from one reservation where
    /// `MADV_GUARD_INSTALL` works): each has its guard and its usable
    /// bytes; unmapping some of them together, back to back or not,
    /// leaves the others whole.
    #[test]
    fn regions_in_a_row_are_guarded_and_unmapped_alone() {
        let page = page_size();
        let (usable, guard) = (16 * page, 4 * page);
        let mut regions: Vec<Region> = (0..16)
            .map(|_| Region::new(usable, guard, 0).unwrap())
            .collect();
        for r in &regions {
            assert_eq!(r.top() - r.base(), usable + guard);
            for p in 0..4 {
                assert!(!writable(r.base() + p * page), "guard page {p} is open");
            }
            assert!(writable(r.base() + guard), "the lowest usable page");
            assert!(writable(r.top() - 1), "the highest usable byte");
        }
        // Give back the 1st, 2nd, 3rd, 6th and last (some back to back,
        // in any order), keep the others.
        let mut gone = Vec::new();
        for i in [15, 5, 2, 1, 0] {
            gone.push(regions.remove(i));
        }
        Region::unmap_all(gone);
        for r in &regions {
            assert!(
                !writable(r.base()),
                "a guard opened by a neighbour's unmapping"
            );
            assert!(writable(r.base() + guard) && writable(r.top() - 1));
        }
        Region::unmap_all(regions);
    }
}
