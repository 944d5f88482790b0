//! What the stacks need of Windows: the page size (read once), a guarded
//! [`Region`] of memory for a stack, and the guard registry's table.
//! (`os.rs` is the Unix counterpart, chosen in `mod.rs`.)

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use windows_sys::Win32::System::Memory::{
    MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_GUARD, PAGE_NOACCESS, PAGE_READWRITE, VirtualAlloc,
    VirtualFree, VirtualProtect,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};
use windows_sys::Win32::System::Threading::GetCurrentThreadStackLimits;

/// The system's page size, read once.
#[inline]
pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: all-zero is a valid SYSTEM_INFO, which GetSystemInfo
            // fills in.
            let page = unsafe {
                let mut info: SYSTEM_INFO = std::mem::zeroed();
                GetSystemInfo(&mut info);
                info.dwPageSize as usize
            };
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

/// The memory of one stack, laid out as Windows lays out a thread's stack
/// (so that its stack growth and overflow detection work on it, with the
/// TEB's fields pointing at it while it runs):
///
/// ```text
///   top                   StackBase
///   usable bytes          committed, read-write
///   limit                 StackLimit
///   guard - 1 pages       committed, PAGE_GUARD: the first touch raises
///                         STATUS_GUARD_PAGE_VIOLATION, which the system
///                         turns into growth of the stack (moving
///                         StackLimit down a page), and at the last page
///                         into STATUS_STACK_OVERFLOW, with the pages left
///                         to run the handlers on
///   1 page                reserved only: any access faults
///   base                  DeallocationStack
/// ```
///
/// The whole region is reserved and the usable part committed up front:
/// a stack that can be made can be used (Windows counts committed memory
/// against its commit limit rather than overcommitting). Released when
/// dropped.
#[derive(Debug)]
pub(crate) struct Region {
    base: usize,
    len: usize,
}

impl Region {
    /// Reserves `guard + usable` bytes, commits the usable ones and makes
    /// the guard as above. `live` (the stacks mapped now) goes into the
    /// error's message.
    pub(crate) fn new(usable: usize, guard: usize, live: usize) -> io::Result<Region> {
        let page = page_size();
        let len = usable + guard;
        // SAFETY: a new reservation at an address of the system's choice.
        let base = unsafe { VirtualAlloc(ptr::null(), len, MEM_RESERVE, PAGE_NOACCESS) };
        if base.is_null() {
            return Err(exhausted(io::Error::last_os_error(), usable, live));
        }
        // Released on any error below.
        let region = Region {
            base: base as usize,
            len,
        };
        let limit = region.base + guard;
        // SAFETY: both ranges lie inside the reservation just made.
        let committed = unsafe {
            !VirtualAlloc(limit as *const _, usable, MEM_COMMIT, PAGE_READWRITE).is_null()
                && !VirtualAlloc(
                    (region.base + page) as *const _,
                    guard - page,
                    MEM_COMMIT,
                    PAGE_READWRITE | PAGE_GUARD,
                )
                .is_null()
        };
        if !committed {
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
}

impl Region {
    /// Frees `regions`: one `VirtualFree` each (a reservation is freed
    /// only whole, by its own base, so back-to-back ones cannot be freed
    /// together as on Unix).
    pub(crate) fn unmap_all(regions: Vec<Region>) {
        regions.into_iter().for_each(drop);
    }

    /// Nothing: Windows reserves no stacks ahead (Unix's reservation).
    pub(crate) fn release_reserve() {}
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the reservation is this value's own, released once.
        unsafe { VirtualFree(self.base as *mut _, 0, MEM_RELEASE) };
    }
}

/// Gives the guard pages of the running stack, if it is one of ours (a
/// [`Region`] in the guard registry), their `PAGE_GUARD` back. Windows
/// clears it on each guard page a stack grows into, a one-shot guard, and
/// an overflow (`STATUS_STACK_OVERFLOW`) has grown into all of them: the
/// stack's next overflow would run past them into the reserved page, where
/// the system has no stack left to raise an exception on, and the process
/// would end without a word. Called by a trap's recovery (`trap_entry`),
/// at the top of the stack, far above the guard, once the exception
/// handler that ran on the guard pages has returned: the one way a
/// coroutine comes back from an overflow. A recovery from any other fault
/// pays the same one system call, and an ordinary life none.
pub(crate) fn restore_guard() {
    let (mut low, mut high) = (0usize, 0usize);
    // SAFETY: writes the two outputs.
    unsafe { GetCurrentThreadStackLimits(&mut low, &mut high) };
    // The TEB's DeallocationStack is the region's base, which is the key
    // of its guard in the registry.
    let Some((guard, _)) = super::guards::guard_at(low) else {
        return;
    };
    let page = page_size();
    let mut old = 0;
    // SAFETY: the guard pages of the running stack's region, below its
    // usable part (committed by `Region::new`), which no frame uses now.
    unsafe {
        VirtualProtect(
            (low + page) as *const _,
            guard - page,
            PAGE_READWRITE | PAGE_GUARD,
            &mut old,
        )
    };
}

/// Turns a failed reservation or commit into an error that says what ran
/// out and what to do.
fn exhausted(err: io::Error, usable: usize, live: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "cannot allocate a coroutine stack of {usable} bytes with {live} stacks live: {err}; \
             Windows commits a stack's memory when it is made, so the system's commit limit \
             (physical memory plus page file) or the address space ran out: use smaller stacks \
             or fewer live coroutines, or enlarge the page file"
        ),
    )
}

/// Reserves `bytes` of zeroed memory for the guard registry's table, and
/// commits it: Windows gives zeroed pages that cost physical memory only
/// once written. Null if the system refuses.
pub(crate) fn map_table(bytes: usize) -> *mut u8 {
    // SAFETY: a new allocation at an address of the system's choice.
    unsafe { VirtualAlloc(ptr::null(), bytes, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).cast() }
}

/// Releases a table from [`map_table`] that was never shared.
///
/// # Safety
/// `table` came from `map_table`, and nothing refers to it.
pub(crate) unsafe fn unmap_table(table: *mut u8, _bytes: usize) {
    // SAFETY: as the caller promises.
    unsafe { VirtualFree(table.cast(), 0, MEM_RELEASE) };
}

/// Whether [`thread_stack`] reports whichever stack runs rather than the
/// thread's own: yes, the TEB describes the running stack.
pub(crate) const REPORTS_RUNNING_STACK: bool = true;

/// The stack that runs, as the TEB describes it (`GetCurrentThreadStackLimits`):
/// the lowest address of its reservation (`DeallocationStack`), its lowest
/// usable address and its top (`StackBase`). A stack whose lowest page is
/// committed has no guard below its usable part (a `SliceStack`): usable
/// from there. Otherwise it is a thread's, which grows on demand down to a
/// reserved page of hard guard, a page or two of guard and the stack
/// guarantee (`SetThreadStackGuarantee`): 64 KiB above the reservation's
/// start is taken as its lowest usable address, which covers those with
/// room to spare.
pub(crate) fn thread_stack() -> Option<(usize, usize, usize)> {
    use windows_sys::Win32::System::Memory::{MEMORY_BASIC_INFORMATION, VirtualQuery};
    let (mut low, mut high) = (0usize, 0usize);
    // SAFETY: writes the two outputs.
    unsafe { GetCurrentThreadStackLimits(&mut low, &mut high) };
    if low == 0 {
        return None;
    }
    // SAFETY: all-zero is a valid MEMORY_BASIC_INFORMATION, which
    // VirtualQuery fills in for any address.
    let state = unsafe {
        let mut info: MEMORY_BASIC_INFORMATION = std::mem::zeroed();
        let n = VirtualQuery(low as *const _, &mut info, size_of_val(&info));
        (n != 0).then_some(info.State)
    }?;
    let lo = if state == MEM_COMMIT {
        low
    } else {
        low.checked_add(64 * 1024)?
    };
    (lo < high).then_some((low, lo, high))
}
