//! [`DefaultStack`]: an anonymous mmap with a guard page below it, reused
//! from a per-thread pool (needs the `std` feature).

use std::cell::Cell;
use std::io;
use std::mem;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

use crate::stack::{DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE, POOL_CAPACITY, Stack};

/// `MADV_GUARD_INSTALL` (Linux 6.13): make pages fault on access without
/// splitting the mapping. Not yet in every libc release.
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// How many `DefaultStack` mappings exist in the process (pooled or not).
static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's pool, reached through a plain pointer: a thread-local
    /// without a destructor costs one load to reach, where one with a
    /// destructor checks its registration on every access. Null until the
    /// thread first pools a stack; [`EXITED`] once the thread is exiting.
    static POOL: Cell<*mut Pool> = const { Cell::new(ptr::null_mut()) };
    /// Owns the pool: its destructor frees it when the thread exits.
    static POOL_OWNER: PoolOwner = const { PoolOwner };
}

/// `POOL` of a thread whose pool is gone: stacks are unmapped at once.
const EXITED: *mut Pool = ptr::dangling_mut::<Pool>();

/// A thread's free stacks, and how many it keeps.
struct Pool {
    free: Vec<DefaultStack>,
    cap: usize,
}

/// Frees the thread's pool when the thread exits.
struct PoolOwner;

impl Drop for PoolOwner {
    fn drop(&mut self) {
        let pool = POOL.replace(EXITED);
        if pool != EXITED && !pool.is_null() {
            // SAFETY: a non-sentinel POOL came from Box::into_raw in
            // `pool_mut`, and is freed only here, once.
            let pool = unsafe { Box::from_raw(pool) };
            // Dropping the stacks now finds EXITED and unmaps each.
            drop(pool);
        }
    }
}

/// This thread's pool, made on first use; `None` once the thread exits.
///
/// The reference must not be held across anything that could reach the
/// pool again (nothing in this module does: unmapping does not).
#[inline]
fn pool_mut() -> Option<&'static mut Pool> {
    if POOL.get().is_null() {
        return new_pool();
    }
    live_pool()
}

/// This thread's pool if it has been made and not yet freed; never makes
/// it (the fast paths of `default` and `drop`). Same rule as `pool_mut`.
#[inline(always)]
fn live_pool() -> Option<&'static mut Pool> {
    let pool = POOL.get();
    // SAFETY: a non-null, non-sentinel POOL points at this thread's live
    // pool, which only this thread reaches, and never re-entrantly.
    (!pool.is_null() && pool != EXITED).then(|| unsafe { &mut *pool })
}

/// Makes this thread's pool.
#[cold]
fn new_pool() -> Option<&'static mut Pool> {
    // Register the owner's destructor; if the thread is already exiting,
    // go without a pool.
    POOL_OWNER.try_with(|_| ()).ok()?;
    let pool = Box::into_raw(Box::new(Pool {
        free: Vec::new(),
        cap: POOL_CAPACITY,
    }));
    POOL.set(pool);
    // SAFETY: just made, owned by POOL_OWNER, reached only by this thread.
    Some(unsafe { &mut *pool })
}

/// Raises the calling thread's pool capacity to at least `capacity`;
/// returns the capacity it had (for [`set_pool_capacity`] to restore).
#[cfg(feature = "hub")]
pub(crate) fn raise_pool_capacity(capacity: usize) -> usize {
    let Some(pool) = pool_mut() else { return 0 };
    let old = pool.cap;
    pool.cap = old.max(capacity);
    old
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
    let Some(pool) = pool_mut() else { return 0 };
    let old = mem::replace(&mut pool.cap, capacity);
    let n = pool.free.len().saturating_sub(capacity);
    // Unmapping does not reach the pool, so they go straight from it.
    pool.free.drain(..n).for_each(DefaultStack::unmap_now);
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
    /// The guard page, then the usable bytes: the top is the mapping's
    /// end. Taken out only by `drop` and `unmap_now`.
    map: ManuallyDrop<MmapMut>,
    /// `Stack::limit`: the mapping's start plus the guard page (kept, so
    /// that nothing but mapping asks the page size).
    limit: usize,
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
        // The last one pooled first: usually of the size wanted.
        if let Some(pool) = pool_mut()
            && let Some(i) = pool.free.iter().rposition(|s| s.size() == usable)
        {
            return Ok(pool.free.swap_remove(i));
        }
        Self::map_new(usable, page)
    }

    /// The last stack pooled on this thread, if it is of the default size
    /// (the likeliest to be cached, and `default`'s common case).
    #[inline(always)]
    fn pooled_default() -> Option<DefaultStack> {
        // DEFAULT_STACK_SIZE is a whole number of pages of every page size
        // Linux has (4, 16 or 64 KiB): it is its own rounding.
        live_pool()?.free.pop_if(|s| s.size() == DEFAULT_STACK_SIZE)
    }

    /// Unmaps this stack now, whatever the pool.
    fn unmap_now(mut self) {
        // SAFETY: `self` is forgotten right after: the mapping is taken
        // out once and `drop` does not run.
        let map = unsafe { ManuallyDrop::take(&mut self.map) };
        let limit = self.limit;
        mem::forget(self);
        unmap(map, limit);
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
        crate::sanitizer::valgrind_stack_register(limit, top);
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(DefaultStack {
            map: ManuallyDrop::new(map),
            limit,
        })
    }

    /// How many `DefaultStack` mappings the process holds now, pooled ones
    /// included.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// The usable size in bytes (the requested size rounded up to pages).
    #[inline]
    pub fn size(&self) -> usize {
        self.top() - self.limit
    }

    /// `default` without a pooled stack at hand.
    #[cold]
    #[inline(never)]
    fn default_slow() -> DefaultStack {
        match DefaultStack::new(DEFAULT_STACK_SIZE) {
            Ok(stack) => stack,
            Err(e) => panic!("stackful: cannot allocate a coroutine stack: {e}"),
        }
    }
}

impl Default for DefaultStack {
    /// A stack of [`DEFAULT_STACK_SIZE`] (1 MiB).
    ///
    /// # Panics
    /// When the kernel refuses the mapping; the message says why.
    #[inline]
    fn default() -> Self {
        DefaultStack::pooled_default().unwrap_or_else(DefaultStack::default_slow)
    }
}

// SAFETY: the mapping is private to this value, readable and writable above
// its first page, and that page is a guard (madvise or mprotect above
// refused to proceed otherwise). The top of an mmap is page-aligned, hence
// 16-aligned, and the usable size is at least MIN_STACK_SIZE.
unsafe impl Stack for DefaultStack {
    #[inline]
    fn top(&self) -> usize {
        self.map.as_ptr() as usize + self.map.len()
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
        // SAFETY: `drop` runs once and nothing uses `self` after it (its
        // `map` is a ManuallyDrop, `limit` a plain word): the bitwise copy
        // becomes the mapping's only owner, and goes to the pool or is
        // unmapped.
        let stack = unsafe { ptr::read(self) };
        if let Some(pool) = live_pool()
            && pool.free.len() < pool.cap
        {
            pool.free.push(stack);
            return;
        }
        pool_or_unmap(stack);
    }
}

/// `drop` without this thread's pool made yet, or with it full or gone.
#[cold]
#[inline(never)]
fn pool_or_unmap(stack: DefaultStack) {
    match pool_mut() {
        Some(pool) if pool.free.len() < pool.cap => pool.free.push(stack),
        _ => stack.unmap_now(),
    }
}

/// Unregisters a stack (its guard, and from valgrind) and unmaps it.
fn unmap(map: MmapMut, limit: usize) {
    let base = map.as_ptr() as usize;
    crate::sanitizer::valgrind_stack_deregister(limit);
    crate::overflow::unregister(base);
    LIVE.fetch_sub(1, Ordering::Relaxed);
    drop(map);
}

/// Empties the calling thread's pool of free stacks, unmapping them.
pub fn trim_pool() {
    if let Some(pool) = pool_mut() {
        pool.free.drain(..).for_each(DefaultStack::unmap_now);
    }
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
    fn default_takes_only_a_pooled_stack_of_the_default_size() {
        trim_pool();
        let small = DefaultStack::new(64 * 1024).unwrap();
        let small_top = small.top();
        drop(small);
        let d = DefaultStack::default();
        assert_eq!(d.size(), DEFAULT_STACK_SIZE);
        assert_ne!(
            d.top(),
            small_top,
            "a 64 KiB stack was handed out as the default"
        );
        let d_top = d.top();
        drop(d);
        assert_eq!(
            DefaultStack::default().top(),
            d_top,
            "the default stack is reused"
        );
        // The small one stayed in the pool for a request of its size.
        assert_eq!(DefaultStack::new(64 * 1024).unwrap().top(), small_top);
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
