//! [`DefaultStack`]: an anonymous mmap with a guard page below it, reused
//! from a per-thread pool (needs the `std` feature).

use std::cell::RefCell;
use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

use crate::stack::{DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE, POOL_CAPACITY, Stack};

/// `MADV_GUARD_INSTALL` (Linux 6.13): make pages fault on access without
/// splitting the mapping. Not yet in every libc release.
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// How many `DefaultStack` mappings exist in the process (pooled or not).
static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Free stacks of this thread, ready for reuse.
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
    /// This thread's pool capacity: [`POOL_CAPACITY`] or what
    /// [`set_pool_capacity`] set.
    static POOL_CAP: std::cell::Cell<usize> = const { std::cell::Cell::new(POOL_CAPACITY) };
}

/// Sets how many free stacks the calling thread's pool keeps for reuse
/// (initially [`POOL_CAPACITY`]) and returns the previous capacity. Free
/// stacks beyond the new capacity are unmapped at once; 0 turns pooling off
/// on this thread, so every dropped [`DefaultStack`] is unmapped.
///
/// ```
/// let old = stackful::stack::set_pool_capacity(4);
/// assert_eq!(old, stackful::stack::POOL_CAPACITY);
/// assert_eq!(stackful::stack::set_pool_capacity(old), 4);
/// ```
pub fn set_pool_capacity(capacity: usize) -> usize {
    let old = POOL_CAP.replace(capacity);
    let excess: Vec<_> = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let n = pool.0.len().saturating_sub(capacity);
        pool.0.drain(..n).collect()
    });
    excess.into_iter().for_each(unmap);
    old
}

/// A stack in an anonymous private mapping: one guard page, then `size`
/// usable bytes. Dropping it returns the mapping to the current thread's
/// pool (up to [`POOL_CAPACITY`] stacks), so creating coroutines costs no
/// system call in the steady state.
///
/// The guard is installed with `MADV_GUARD_INSTALL` where the kernel
/// really honours it (checked once per process), so the stack costs one
/// kernel mapping, which the kernel can merge with its neighbours; where it
/// does not, with `mprotect(PROT_NONE)`, which costs a second mapping.
/// Touching the guard prints a line naming a coroutine stack overflow and
/// aborts the process.
#[derive(Debug)]
pub struct DefaultStack {
    /// `Stack::top`, kept to answer without touching the mapping's fields.
    top: usize,
    /// `Stack::limit`: the mapping's start plus its guard page.
    limit: usize,
    /// Taken out only by `drop`.
    map: ManuallyDrop<Mapping>,
}

impl DefaultStack {
    /// Maps a new stack of `size` usable bytes, rounded up to whole pages,
    /// or takes one of that size from the thread's pool.
    ///
    /// # Errors
    /// - `InvalidInput` when `size` is below [`MIN_STACK_SIZE`] or above
    ///   [`MAX_STACK_SIZE`];
    /// - `OutOfMemory` when the kernel refuses the mapping or the guard for
    ///   lack of memory or of mappings; the message names the stack size,
    ///   the number of live stacks and `vm.max_map_count`.
    #[inline]
    pub fn new(size: usize) -> io::Result<DefaultStack> {
        if !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "stack size {size} bytes is out of range: a stack needs at least \
                     {MIN_STACK_SIZE} bytes (MIN_STACK_SIZE) and at most {MAX_STACK_SIZE} \
                     bytes (MAX_STACK_SIZE)"
                ),
            ));
        }
        let page = page_size();
        // Pages are a power of two: round up with a mask, not a division.
        let usable = (size + page - 1) & !(page - 1);
        let pooled = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let i = pool.0.iter().rposition(|m| m.map.len() == usable + page)?;
            Some(pool.0.swap_remove(i))
        });
        match pooled {
            Ok(Some(map)) => Ok(DefaultStack::from_map(map, page)),
            _ => Self::map_new(usable, page),
        }
    }

    #[inline]
    fn from_map(map: Mapping, page: usize) -> DefaultStack {
        let base = map.map.as_ptr() as usize;
        DefaultStack {
            top: base + map.map.len(),
            limit: base + page,
            map: ManuallyDrop::new(map),
        }
    }

    /// Maps `usable + page` bytes and installs the guard on the lowest page.
    #[cold]
    #[inline(never)]
    fn map_new(usable: usize, page: usize) -> io::Result<DefaultStack> {
        crate::overflow::install();
        let map = MmapOptions::new()
            .len(usable + page)
            .stack()
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| exhausted(e, usable))?;
        let base = map.as_ptr() as *mut libc::c_void;
        let guarded = guard_install_works()
            // SAFETY: `base` is the start of a private mapping we own, and
            // one page of it is inside the mapping.
            && unsafe { libc::madvise(base, page, MADV_GUARD_INSTALL) } == 0;
        // SAFETY: as above; PROT_NONE on the first page of our own mapping.
        if !guarded && unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(exhausted(io::Error::last_os_error(), usable));
        }
        crate::overflow::register(base as usize, page, usable);
        let (limit, top) = (base as usize + page, base as usize + page + usable);
        let valgrind_id = crate::sanitizer::valgrind_stack_register(limit, top);
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(DefaultStack::from_map(Mapping { map, valgrind_id }, page))
    }

    /// How many `DefaultStack` mappings the process holds now, pooled ones
    /// included.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// The usable size in bytes (the requested size rounded up to pages).
    pub fn size(&self) -> usize {
        self.top() - self.limit()
    }
}

impl Default for DefaultStack {
    /// A stack of [`DEFAULT_STACK_SIZE`] (1 MiB).
    ///
    /// # Panics
    /// When the kernel refuses the mapping; the message says why.
    fn default() -> Self {
        match DefaultStack::new(DEFAULT_STACK_SIZE) {
            Ok(stack) => stack,
            Err(e) => panic!("stackful: cannot allocate a coroutine stack: {e}"),
        }
    }
}

// SAFETY: the mapping is private to this value, readable and writable above
// its first page, and that page is a guard (madvise or mprotect above
// refused to proceed otherwise). The top of an mmap is page-aligned, hence
// 16-aligned, and the usable size is at least MIN_STACK_SIZE.
unsafe impl Stack for DefaultStack {
    #[inline]
    fn top(&self) -> usize {
        self.top
    }

    #[inline]
    fn limit(&self) -> usize {
        self.limit
    }

    #[inline]
    fn guard_size(&self) -> usize {
        page_size()
    }
}

impl Drop for DefaultStack {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing uses `self.map` after it.
        let mut spare = Some(unsafe { ManuallyDrop::take(&mut self.map) });
        // A thread that is exiting has no pool any more: unmap then.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.0.len() < POOL_CAP.get() {
                pool.0.extend(spare.take());
            }
        });
        if let Some(map) = spare {
            unmap(map);
        }
    }
}

/// A stack's mapping, with the id valgrind gave it.
#[derive(Debug)]
struct Mapping {
    map: MmapMut,
    valgrind_id: usize,
}

/// Unregisters a stack (its guard, and from valgrind) and unmaps it.
fn unmap(map: Mapping) {
    crate::sanitizer::valgrind_stack_deregister(map.valgrind_id);
    crate::overflow::unregister(map.map.as_ptr() as usize);
    LIVE.fetch_sub(1, Ordering::Relaxed);
    drop(map);
}

/// A thread's free stacks; unmapped when the thread exits.
struct Pool(Vec<Mapping>);

impl Drop for Pool {
    fn drop(&mut self) {
        self.0.drain(..).for_each(unmap);
    }
}

/// Empties the calling thread's pool of free stacks, unmapping them.
pub fn trim_pool() {
    let drained: Vec<Mapping> = POOL.with(|pool| pool.borrow_mut().0.drain(..).collect());
    drained.into_iter().for_each(unmap);
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_out_of_range_are_invalid_input() {
        for size in [0, 1, MIN_STACK_SIZE - 1, MAX_STACK_SIZE + 1, usize::MAX] {
            let err = DefaultStack::new(size).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "size {size}");
            assert!(err.to_string().contains("MIN_STACK_SIZE"), "{err}");
        }
    }

    #[test]
    fn size_is_rounded_to_pages_and_guarded() {
        let stack = DefaultStack::new(MIN_STACK_SIZE + 1).unwrap();
        assert_eq!(
            stack.size(),
            (MIN_STACK_SIZE + 1).next_multiple_of(page_size())
        );
        assert_eq!(stack.guard_size(), page_size());
        assert_eq!(stack.top() % 16, 0);
        // The guard must really fault: the kernel reports EFAULT for a read
        // into it, whichever way it was installed.
        let mut fds = [0; 2];
        // SAFETY: plain pipe calls; the read targets the guard page, which
        // the kernel checks for us.
        let errno = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
            let guard = (stack.limit() - page_size()) as *mut libc::c_void;
            let n = libc::read(fds[0], guard, 1);
            let errno = io::Error::last_os_error().raw_os_error();
            libc::close(fds[0]);
            libc::close(fds[1]);
            assert_eq!(n, -1);
            errno
        };
        assert_eq!(errno, Some(libc::EFAULT));
    }

    #[test]
    fn dropped_stacks_are_reused() {
        trim_pool();
        let a = DefaultStack::new(64 * 1024).unwrap();
        let top = a.top();
        drop(a);
        let b = DefaultStack::new(64 * 1024).unwrap();
        assert_eq!(b.top(), top, "the pooled stack should be handed out again");
        let c = DefaultStack::new(128 * 1024).unwrap();
        assert_ne!(c.top(), top);
    }
}
