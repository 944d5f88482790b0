//! [`SliceStack`]: a [`Stack`] over memory the embedder owns.

use std::fmt;
use std::ptr::{self, NonNull};

use crate::stack::{MIN_STACK_SIZE, Stack};

/// A [`Stack`] over a byte slice that the embedder provides: a
/// `Box<[u8]>` (freed when the `SliceStack` is dropped) or a
/// `&'static mut [u8]` (a static buffer, memory from an arena that lives
/// for the rest of the program, or a region of a VM's own memory).
///
/// # No guard page: overflows are not detected, hence `unsafe`
/// Nothing lies below the slice to stop a coroutine that runs past its
/// lowest byte: an overflow **silently overwrites whatever memory lies
/// below the slice** (other heap objects, for a `Box`), with no signal and
/// no message, which is undefined behaviour. [`guard_size`](Stack::guard_size)
/// is 0, as the [`Stack`] contract requires of such stacks. Since safe
/// code (a deep recursion, a large local) could overflow it, the
/// constructors are `unsafe`: their caller promises that what runs on the
/// stack fits (see their `# Safety`). Use a `SliceStack` only for code
/// whose stack depth you know, or check with
/// [`remaining_stack`](crate::remaining_stack) inside
/// [`on_stack`](crate::on_stack). [`maybe_grow`](crate::maybe_grow) knows a
/// `SliceStack` only inside `on_stack`; inside a
/// [`Coroutine`](crate::Coroutine) on a `SliceStack` it cannot tell how
/// much room remains, so it always moves to a fresh (guarded) stack.
/// A [`DefaultStack`](crate::DefaultStack) has a guard page, and an overflow
/// into it is reported and aborts the process.
///
/// # Why only `Box` and `&'static mut`
/// A suspended coroutine's frames live in the slice, and may hold pinned
/// values (a future inside `block_on`) whose memory must not be reused
/// before they are dropped. A coroutine can be leaked (`mem::forget`) while
/// suspended, so the memory must never be reusable while it is borrowed:
/// an owned `Box` leaks with it, and a `&'static mut` borrow never ends.
/// A shorter borrow (`&'a mut [u8]`) would let the memory be reused under
/// leaked frames, so it is not offered.
///
/// ```
/// use corostack::{Coroutine, CoroutineResult, SliceStack};
///
/// // SAFETY: the body's frames are a few hundred bytes.
/// let stack = unsafe { SliceStack::new(vec![0u8; 64 * 1024].into_boxed_slice()) };
/// let mut co = Coroutine::with_stack(stack, |y, x: u32| y.suspend(x + 1) * 2);
/// assert_eq!(co.resume(1), CoroutineResult::Yield(2));
/// assert_eq!(co.resume(5), CoroutineResult::Return(10));
/// ```
pub struct SliceStack {
    /// The first byte of the slice, its provenance exposed.
    base: NonNull<u8>,
    len: usize,
    /// Whether `base` came from `Box::into_raw` (freed on drop).
    owned: bool,
}

// SAFETY: a SliceStack owns its memory exclusively (a Box, or a `&'static
// mut` borrow), as `Box<[u8]>` and `&mut [u8]` do, which are Send.
unsafe impl Send for SliceStack {}
// SAFETY: `&SliceStack` only reads two addresses; it gives no access to
// the memory.
unsafe impl Sync for SliceStack {}

impl SliceStack {
    /// A stack over `memory`, which is freed when the `SliceStack` is
    /// dropped. Its top is the end of the slice rounded down to 16 bytes.
    ///
    /// # Safety
    /// Whatever runs on the stack (a coroutine's body, its first frames, a
    /// copy of its closure: see
    /// [`Coroutine::with_stack`](crate::Coroutine::with_stack); an
    /// [`on_stack`](crate::on_stack) call; and every panic and destructor
    /// that these run) must never need more than the slice: nothing
    /// detects an overflow, which writes below the slice.
    ///
    /// # Panics
    /// When the slice leaves less than [`MIN_STACK_SIZE`] bytes between its
    /// 16-aligned ends.
    pub unsafe fn new(memory: Box<[u8]>) -> SliceStack {
        let len = memory.len();
        let base = Box::into_raw(memory).cast::<u8>();
        // SAFETY: `base` came from `Box::into_raw` just above.
        let stack = unsafe { Self::from_raw(base, len, true) };
        stack.check_size();
        stack.announce();
        stack
    }

    /// A stack over a slice borrowed for the rest of the program (for
    /// example from `Box::leak`, or a `static` buffer).
    ///
    /// ```
    /// // 16 bytes more than MIN_STACK_SIZE: the ends are rounded to 16,
    /// // and malloc aligns to 8 only on some targets (32-bit ARM's glibc).
    /// let size = corostack::stack::MIN_STACK_SIZE + 16;
    /// let memory: &'static mut [u8] = Box::leak(vec![0u8; size].into_boxed_slice());
    /// // SAFETY: `6 * 7` needs no more than a few bytes of stack.
    /// let stack = unsafe { corostack::SliceStack::from_static(memory) };
    /// assert_eq!(corostack::on_stack(stack, || 6 * 7), 42);
    /// ```
    ///
    /// # Safety
    /// As [`new`](SliceStack::new): what runs on it must fit.
    ///
    /// # Panics
    /// As [`new`](SliceStack::new).
    pub unsafe fn from_static(memory: &'static mut [u8]) -> SliceStack {
        let len = memory.len();
        // SAFETY: the borrow is exclusive and never ends; `owned: false`
        // means the memory is never freed here.
        let stack = unsafe { Self::from_raw(memory.as_mut_ptr(), len, false) };
        stack.check_size();
        stack.announce();
        stack
    }

    /// # Safety
    /// `base..base + len` is memory this value may use alone for as long
    /// as it lives; if `owned`, it came from `Box::<[u8]>::into_raw`.
    unsafe fn from_raw(base: *mut u8, len: usize, owned: bool) -> SliceStack {
        // Coroutines reach the stack through integer addresses
        // (`Stack::top`), so the slice's provenance must be exposed.
        let _ = base.expose_provenance();
        SliceStack {
            base: NonNull::new(base).unwrap_or(NonNull::dangling()),
            len,
            owned,
        }
    }

    /// Tells valgrind that the slice is a stack (nothing outside it), so
    /// that switching onto it is not mistaken for a wild stack pointer.
    fn announce(&self) {
        crate::sanitizer::valgrind_stack_register(self.limit(), self.top());
    }

    fn check_size(&self) {
        let usable = self.top().saturating_sub(self.limit());
        if usable < MIN_STACK_SIZE {
            panic!(
                "corostack: a SliceStack of {} bytes leaves {usable} usable bytes; a stack needs \
                 at least {MIN_STACK_SIZE} (MIN_STACK_SIZE)",
                self.len
            );
        }
    }

    /// The usable size in bytes, `top() - limit()`.
    pub fn size(&self) -> usize {
        self.top() - self.limit()
    }
}

// SAFETY: the slice is memory this value uses alone (a Box it owns, or a
// `&'static mut` borrow), so it does not move when the value moves;
// `top` is rounded down to 16 and `limit` up to 16, both inside it, and
// `check_size` refused slices with less than MIN_STACK_SIZE between them.
// There is no guard, and `guard_size` says so with 0.
unsafe impl Stack for SliceStack {
    #[inline]
    fn top(&self) -> usize {
        (self.base.as_ptr().addr() + self.len) & !15
    }

    #[inline]
    fn limit(&self) -> usize {
        (self.base.as_ptr().addr() + 15) & !15
    }

    #[inline]
    fn guard_size(&self) -> usize {
        0
    }
}

impl Drop for SliceStack {
    fn drop(&mut self) {
        crate::sanitizer::valgrind_stack_deregister(self.limit());
        if self.owned {
            let slice = ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.len);
            // SAFETY: `owned` means `base` and `len` came from
            // `Box::into_raw` in `new`, and this runs once.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}

impl fmt::Debug for SliceStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceStack")
            .field("limit", &format_args!("{:#x}", self.limit()))
            .field("top", &format_args!("{:#x}", self.top()))
            .field("owned", &self.owned)
            .finish()
    }
}
