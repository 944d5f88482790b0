//! [`DefaultStack`]: an anonymous mmap with four guard pages below it, reused
//! from a per-thread pool (needs the `std` feature).

use std::io;
use std::mem::ManuallyDrop;

use super::mapping::Mapping;
use super::os::page_size;
use super::{DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE, Stack, pool};

/// A stack in an anonymous private mapping: four guard pages, then `size`
/// usable bytes. Dropping it returns the mapping to the current thread's
/// pool (up to [`POOL_CAPACITY`](super::POOL_CAPACITY) stacks), so creating
/// coroutines costs no system call in the steady state.
///
/// The guard is installed with `MADV_GUARD_INSTALL` where the kernel
/// really honours it (checked once per process), so the stack costs one
/// kernel mapping, which the kernel can merge with its neighbours; where it
/// does not, with `mprotect(PROT_NONE)`, which costs a second mapping.
/// Touching the guard is a SIGSEGV, which kills the process (never a silent
/// corruption); with the `overflow-handler` feature the crate's handler
/// first prints a line naming a coroutine stack overflow and the stack's
/// size, then aborts, as Rust does for a thread's overflow.
///
/// ```
/// use corostack::{Coroutine, DefaultStack, Stack, Yielder};
///
/// let stack = DefaultStack::new(256 * 1024)?; // an error, not a panic, when memory is short
/// assert_eq!(stack.top() - stack.limit(), 256 * 1024);
/// assert!(stack.guard_size() >= 4 * 4096); // four guard pages below
/// let mut co = Coroutine::with_stack(stack, |y: &Yielder<(), u8>, ()| y.suspend(1));
/// assert_eq!(co.resume(()).as_yield(), Some(1));
/// let stack = co.into_stack(); // unwound, and back for the next coroutine
/// # drop(stack);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct DefaultStack {
    /// The mapping: moved out only by `drop`, to the pool.
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
    ///   lack of memory or of mappings (`ENOMEM`; on Windows, any refusal);
    ///   the message names the stack size, the number of live stacks and
    ///   `vm.max_map_count`;
    /// - the kernel's own kind, with the same message, when it refuses for
    ///   another reason (valgrind, for one, answers a mapping it cannot place
    ///   with `EINVAL`, so `InvalidInput`).
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
        let map = match pool::take(usable) {
            Some(map) => map,
            None => Self::map_new(usable, page)?,
        };
        Ok(DefaultStack::from(map))
    }

    /// A new mapping, with the overflow handler set up first (when the
    /// feature is on).
    #[cold]
    #[inline(never)]
    fn map_new(usable: usize, page: usize) -> io::Result<Mapping> {
        super::install_overflow_handler();
        Mapping::new(usable, page)
    }

    #[inline(always)]
    fn from(map: Mapping) -> DefaultStack {
        DefaultStack {
            map: ManuallyDrop::new(map),
        }
    }

    /// How many `DefaultStack` mappings the process holds now, pooled ones
    /// included.
    pub fn live() -> usize {
        Mapping::live()
    }

    /// The usable size in bytes (the requested size rounded up to pages).
    #[inline]
    pub fn size(&self) -> usize {
        self.map.size()
    }

    /// A new mapping of the default size, for `default` without a pooled
    /// one of that size.
    #[cold]
    #[inline(never)]
    fn default_new() -> Mapping {
        match Self::map_new(DEFAULT_STACK_SIZE, page_size()) {
            Ok(map) => map,
            Err(e) => panic!("corostack: cannot allocate a coroutine stack: {e}"),
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
        // DEFAULT_STACK_SIZE is a whole number of pages of every page size
        // Linux has (4, 16 or 64 KiB): it is its own rounding.
        DefaultStack::from(pool::take_last_or(
            DEFAULT_STACK_SIZE,
            DefaultStack::default_new,
        ))
    }
}

// SAFETY: the mapping is private to this value, readable and writable above
// its first page, and that page is a guard (`Mapping::new` refuses to
// proceed otherwise); it is unmapped only when dropped, so a forgotten
// stack keeps its memory. The top of an mmap is page-aligned, hence
// 16-aligned, and the usable size is at least MIN_STACK_SIZE.
unsafe impl Stack for DefaultStack {
    #[inline]
    fn top(&self) -> usize {
        self.map.top()
    }

    #[inline]
    fn limit(&self) -> usize {
        self.map.limit()
    }

    #[inline]
    fn guard_size(&self) -> usize {
        super::mapping::GUARD_PAGES * page_size()
    }
}

impl Drop for DefaultStack {
    /// Gives the mapping to the thread's pool, which unmaps it if full.
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and nothing uses `self.map` after it.
        unsafe { pool::give(&mut self.map) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::trim_pool;
    use super::*;

    #[test]
    fn sizes_out_of_range_are_invalid_input() {
        for size in [0, 1, MIN_STACK_SIZE - 1, MAX_STACK_SIZE + 1, usize::MAX] {
            let err = DefaultStack::new(size).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "size {size}");
            assert!(err.to_string().contains("MIN_STACK_SIZE"), "{err}");
        }
    }

    /// Unix: the guard is checked with a read() into it (EFAULT).
    #[cfg(unix)]
    #[test]
    fn size_is_rounded_to_pages_and_guarded() {
        let stack = DefaultStack::new(MIN_STACK_SIZE + 1).unwrap();
        assert_eq!(
            stack.size(),
            (MIN_STACK_SIZE + 1).next_multiple_of(page_size())
        );
        assert_eq!(stack.guard_size(), 4 * page_size());
        assert_eq!(stack.top() % 16, 0);
        // The guard must really fault: the kernel reports EFAULT for a read
        // into it, whichever way it was installed.
        let mut fds = [0; 2];
        // SAFETY: plain pipe calls; the read targets the guard page, which
        // the kernel checks for us.
        let errno = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
            let guard = (stack.limit() - stack.guard_size()) as *mut libc::c_void;
            let n = libc::read(fds[0], guard, 1);
            let errno = io::Error::last_os_error().raw_os_error();
            libc::close(fds[0]);
            libc::close(fds[1]);
            assert_eq!(n, -1);
            errno
        };
        assert_eq!(errno, Some(libc::EFAULT));
    }

    /// Windows: the guard is a reserved page at the bottom and guard pages
    /// above it, as VirtualQuery reports them; the usable part committed.
    #[cfg(windows)]
    #[test]
    fn size_is_rounded_to_pages_and_guarded() {
        use windows_sys::Win32::System::Memory::{
            MEM_COMMIT, MEM_RESERVE, MEMORY_BASIC_INFORMATION, PAGE_GUARD, PAGE_READWRITE,
            VirtualQuery,
        };
        let stack = DefaultStack::new(MIN_STACK_SIZE + 1).unwrap();
        let page = page_size();
        assert_eq!(stack.size(), (MIN_STACK_SIZE + 1).next_multiple_of(page));
        assert_eq!(stack.guard_size(), 4 * page);
        assert_eq!(stack.top() % 16, 0);
        let query = |addr: usize| {
            // SAFETY: all-zero is a valid MEMORY_BASIC_INFORMATION, which
            // VirtualQuery fills in for any address.
            unsafe {
                let mut info: MEMORY_BASIC_INFORMATION = std::mem::zeroed();
                let n = VirtualQuery(addr as *const _, &mut info, size_of_val(&info));
                assert_ne!(n, 0);
                (info.State, info.Protect)
            }
        };
        let low = stack.limit() - stack.guard_size();
        assert_eq!(
            query(low).0,
            MEM_RESERVE,
            "the lowest page is reserved only"
        );
        for p in 1..4 {
            assert_eq!(
                query(low + p * page),
                (MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)
            );
        }
        assert_eq!(query(stack.limit()), (MEM_COMMIT, PAGE_READWRITE));
        assert_eq!(query(stack.top() - 1), (MEM_COMMIT, PAGE_READWRITE));
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

    /// A full pool gives its older half back (in one batch) and keeps the
    /// newest, which it hands out last pooled first.
    #[test]
    fn a_full_pool_keeps_its_newer_half() {
        trim_pool();
        let old = super::super::set_pool_capacity(4);
        let stacks: Vec<DefaultStack> = (0..5)
            .map(|_| DefaultStack::new(64 * 1024).unwrap())
            .collect();
        let tops: Vec<usize> = stacks.iter().map(|s| s.top()).collect();
        // The first four fill the pool; the fifth gives the first two back.
        drop(stacks);
        let taken: Vec<DefaultStack> = (0..3)
            .map(|_| DefaultStack::new(64 * 1024).unwrap())
            .collect();
        let taken: Vec<usize> = taken.iter().map(|s| s.top()).collect();
        assert_eq!(taken, [tops[4], tops[3], tops[2]]);
        super::super::set_pool_capacity(old);
        trim_pool();
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
