//! The raw context: the one layer that drives `arch::switch` and owns what
//! every switch needs besides it, for [`Coroutine`](crate::Coroutine), the
//! greenlets and [`on_stack`](crate::on_stack) alike:
//!
//! - laying out a new context: the closure placed at the top of its stack
//!   (with the room its start takes counted, see [`place_closure`]) and the
//!   first frame below it ([`init`]);
//! - the switch itself ([`switch`]), announced to AddressSanitizer (the
//!   stack it enters; the bounds of the one it came from learned on
//!   arrival) and to ThreadSanitizer (the fiber it enters);
//! - the first arrival on a new stack ([`arrive`]) and the last switch away
//!   from one that is finished for good ([`leave_for_good`]);
//! - the words a switch carries ([`addr`], [`take`]) and the two words of
//!   the first frame that the layers above use ([`link_word`],
//!   [`spare_word`]).
//!
//! What a switch carries is one word, the address of a value on the
//! sender's stack that the receiver moves out while the sender is
//! suspended; what each word means is the caller's protocol.

use core::mem;
use core::ptr;

use crate::arch;
use crate::sanitizer::{self, AsanSave, Fiber};
use crate::stack::{MIN_STACK_SIZE, Stack};

/// The stack that a new context takes before its body's own frames,
/// besides the first frame and the closure's copies (see
/// [`place_closure`]): the entry's own frames and a forced unwind from a
/// shallow body, the first unwind of a process, measured in debug builds by
/// `tests/stack_use.rs`: at most 6.2 KiB on x86_64, 8.9 KiB on aarch64,
/// 8.5 KiB on riscv64: 12 KiB. On powerpc64le, 14.8 KiB, whose unwinder
/// keeps a larger register file: 15.5 KiB there. Each file of `arch/`
/// states its own.
pub(crate) const ENTRY_RESERVE: usize = arch::ENTRY_RESERVE;

/// The copies of a closure that may land on its new stack when the body
/// starts: the entry moves it out of its place once, straight into the
/// call; a wrapping closure (`Generator`'s, `AsyncCoroutine`'s) moves it
/// once more in a debug build, and aarch64's debug code once more again
/// (both found by adversarial tests). Each may be realigned, so each counts
/// its size plus its alignment.
pub(crate) const COPIES: usize = 3;

/// Moves `f` to the top of `stack` and lays out below it a first frame
/// that will call `entry` with the closure's address; returns that address
/// (aligned to `arch::STACK_ALIGNMENT` at least: 16, or 8 on armv7; the
/// top of the frames) and the new context's sp.
///
/// What the new context takes of the stack before the body's own frames:
/// the closure at the top, the first frame, [`COPIES`] copies of the
/// closure, each with its alignment's padding, and [`ENTRY_RESERVE`]. The
/// closure is `f` itself, or a field of it (the coroutines store a small
/// header with it): `copied` is its (size, alignment).
/// Every stack of [`MIN_STACK_SIZE`] bytes or more has room for that with a
/// closure of up to an eighth of it (aligned to at most 16).
///
/// # Panics
/// When that does not fit in the stack (the closure is too large).
///
/// [`MIN_STACK_SIZE`]: crate::stack::MIN_STACK_SIZE
#[inline(always)]
pub(crate) fn place_closure<S: Stack, F>(
    stack: &S,
    f: F,
    copied: (usize, usize),
    entry: arch::EntryFn,
) -> (usize, usize) {
    let (top, limit) = (stack.top(), stack.limit());
    let align = mem::align_of::<F>().max(arch::STACK_ALIGNMENT);
    let size = mem::size_of::<F>();
    let (copy_size, copy_align) = (copied.0, copied.1.max(arch::STACK_ALIGNMENT));
    let below = (copy_size + copy_align)
        .checked_mul(COPIES)
        .and_then(|copies| copies.checked_add(arch::INIT_FRAME_SIZE + ENTRY_RESERVE));
    // The most that the closure, its alignment's padding and what lies
    // below it can take: constants once inlined. `Stack` promises at least
    // MIN_STACK_SIZE bytes between a 16-aligned top and the limit, so when
    // that fits in it (every closure of up to an eighth of it aligned to
    // at most 16, the common case), the bounds need no check at run time.
    let most = below.and_then(|below| below.checked_add(size + (align - 1)));
    let closure = if most.is_some_and(|most| most <= MIN_STACK_SIZE) {
        debug_assert!(top % arch::STACK_ALIGNMENT == 0 && top - limit >= MIN_STACK_SIZE);
        // `top - limit >= MIN_STACK_SIZE >= most > size`: no overflow, and
        // the closure's address less `below` is at least `limit`. A top
        // aligned to `align` (which `Stack` promises up to
        // `STACK_ALIGNMENT`) leaves the size rounded up to `align` below
        // it: one subtraction of a constant.
        if align <= arch::STACK_ALIGNMENT {
            Some(top - size.next_multiple_of(align))
        } else {
            Some((top - size) & !(align - 1))
        }
    } else {
        top.checked_sub(size)
            .map(|a| a & !(align - 1))
            .filter(|&a| {
                below
                    .and_then(|below| a.checked_sub(below))
                    .is_some_and(|low| low >= limit)
            })
    };
    let Some(closure) = closure else {
        closure_too_large(top.saturating_sub(limit), copy_size);
    };
    // Under valgrind, a pooled stack's top bytes may be unreadable to
    // memcheck (see `valgrind_make_undefined`) beyond the first frame of
    // its last context; a closure this small stays within it, so the
    // request (a dozen instructions) is made only for larger ones.
    #[cfg(feature = "std")]
    if size + arch::INIT_FRAME_SIZE > 64 {
        let low = closure - arch::INIT_FRAME_SIZE;
        sanitizer::valgrind_make_undefined(low, top - low);
    }
    let ptr = ptr::with_exposed_provenance_mut::<F>(closure);
    // SAFETY: `Stack` promises [limit, top) is writable memory of this
    // stack alone; `closure` lies inside it, aligned for F, with
    // size_of::<F>() bytes up to `top` (checked above).
    unsafe { ptr.write(f) };
    let info = arch::StackInfo::new(top, limit, || stack.guard_size());
    // SAFETY: `closure` is STACK_ALIGNMENT-aligned and the INIT_FRAME_SIZE
    // bytes below it are inside the stack (checked above).
    let sp = unsafe { init(closure, entry, closure, info) };
    (closure, sp)
}

/// `place_closure`'s panic, kept out of the way of its fast path.
#[cold]
#[inline(never)]
fn closure_too_large(stack: usize, closure: usize) -> ! {
    panic!(
        "corostack: a stack of {stack} bytes is too small for a closure of {closure} bytes: \
         the closure, {COPIES} copies of it when the body starts (each with its alignment) \
         and {} more bytes for the first frames must fit; use a larger stack, or box the \
         closure's large captures",
        arch::INIT_FRAME_SIZE + ENTRY_RESERVE
    );
}

/// Lays out a first frame below `top` that will call `entry(arg, from,
/// data)` on the first switch into it, on the stack that `info` describes;
/// returns the new context's sp.
///
/// # Safety
/// As `arch::init_stack`: `top` is `arch::STACK_ALIGNMENT`-aligned and the
/// `arch::INIT_FRAME_SIZE` bytes below it are writable memory of a stack
/// that nothing else uses.
#[inline(always)]
pub(crate) unsafe fn init(
    top: usize,
    entry: arch::EntryFn,
    data: usize,
    info: arch::StackInfo,
) -> usize {
    // SAFETY: as the caller promises.
    unsafe { arch::init_stack(top, entry, data, info) }
}

/// The link word of the context whose first frame lies below `top` (see
/// `arch/`): it holds the sp of whichever side is suspended.
#[inline(always)]
pub(crate) fn link_word(top: usize) -> *mut usize {
    ptr::with_exposed_provenance_mut(top - arch::LINK_OFFSET)
}

/// The spare word of the stack whose link word is `link` (see `arch/`).
#[inline(always)]
pub(crate) fn spare_word(link: *mut usize) -> *mut usize {
    link.wrapping_byte_add(arch::LINK_OFFSET)
        .wrapping_byte_sub(arch::SPARE_OFFSET)
}

/// The context a switch enters, as the sanitizers need to hear of it.
#[derive(Clone, Copy)]
pub(crate) struct Enter {
    /// The bounds (bottom, size) of the stack entered, for ASan; `None`
    /// when the switch does not leave the running stack (a done
    /// coroutine's dead sp comes straight back), so ASan hears nothing.
    /// Bounds of (0, 0) are unknown ones (the main greenlet's before it is
    /// first left), which ASan tolerates.
    pub(crate) bounds: Option<(usize, usize)>,
    /// What TSan hears.
    pub(crate) tsan: Tsan,
}

/// What a switch tells ThreadSanitizer (nothing without the `tsan`
/// feature).
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub(crate) enum Tsan {
    /// A resume of the coroutine with this fiber: its resumer's fiber is
    /// remembered (asymmetric coroutines nest).
    Resume(Fiber),
    /// A coroutine back to the resumer remembered by its resume.
    Suspend,
    /// A switch to the context of this fiber (greenlets).
    To(Fiber),
    /// Nothing: the logical thread of execution stays the same
    /// (`on_stack`, a switch that comes straight back).
    Stay,
}

impl Tsan {
    #[inline(always)]
    fn announce(self) {
        match self {
            Tsan::Resume(fiber) => sanitizer::tsan_resume(fiber),
            Tsan::Suspend => sanitizer::tsan_suspend(),
            Tsan::To(fiber) => fiber.switch_to(),
            Tsan::Stay => {}
        }
    }
}

/// What came back when a context switched back to us.
#[derive(Clone, Copy)]
pub(crate) struct Back {
    /// The word it carried.
    pub(crate) word: usize,
    /// Its sp, as it left it (the greenlets' link word wants it); from a
    /// context that left for good ([`leave_for_good`]), whatever its link
    /// held, which no receiver takes for an sp.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) from: usize,
    /// The bounds (bottom, size) of its stack, as ASan reported them on
    /// arrival; (0, 0) without ASan, or when the switch did not leave.
    pub(crate) bounds: (usize, usize),
}

/// Switches from the running context to the suspended context `to`,
/// carrying `arg`; our sp goes to `*link`. Returns what the context that
/// switches back to us brings, once the sanitizers heard of the return
/// (`save`, on our stack for the time we are away, is ASan's record of our
/// fake stack).
///
/// # Safety
/// As `arch::switch`: `to` is the sp of a suspended context that is resumed
/// nowhere else, on a live stack; `link` is valid for a write of one word.
#[inline(always)]
pub(crate) unsafe fn switch(arg: usize, to: usize, link: *mut usize, enter: Enter) -> Back {
    let mut save = AsanSave::new();
    if let Some((bottom, size)) = enter.bounds {
        sanitizer::start_switch(Some(&mut save), bottom, size);
    }
    enter.tsan.announce();
    // SAFETY: as the caller promises.
    let (word, back_link) = unsafe { arch::switch(arg, to, link) };
    let bounds = match enter.bounds {
        Some(_) => sanitizer::finish_switch(&save),
        None => (0, 0),
    };
    // SAFETY: the context that switched back stored its sp through its
    // link, which stays valid while it is suspended; a context that left
    // for good stored nothing, and its link is a live word (of the
    // receiver's own, or of the dying stack, which its receiver frees only
    // after reading this). A load that no caller reads is dropped by the
    // compiler.
    let from = unsafe { back_link.read() };
    Back { word, from, bounds }
}

/// The first arrival on a new context's stack: completes, for ASan, the
/// switch that entered it; returns the bounds of the stack it came from
/// ((0, 0) without ASan).
#[inline(always)]
pub(crate) fn arrive() -> (usize, usize) {
    sanitizer::finish_switch(&AsanSave::new())
}

/// The last switch away from a context that is finished for good: to the
/// suspended context `to`, carrying `arg`, from a stack that may be reused
/// or freed as soon as this switch is made (ASan forgets its frames and
/// fake stack). Nothing of the context that leaves is saved (`arch::leave`:
/// the jump alone): `*link` keeps the word it holds, which the receiver
/// gets as `from`. Never returns.
///
/// # Safety
/// As [`switch`], except that `to` is never the dead sp (its continuation
/// goes back through `*link`, which nothing wrote); nothing switches back
/// to the context that leaves, and the receiver does not take `from` for
/// its sp.
#[inline(always)]
pub(crate) unsafe fn leave_for_good(arg: usize, to: usize, link: *mut usize, enter: Enter) -> ! {
    debug_assert_ne!(
        to,
        arch::dead_sp(),
        "a context left for good to the dead sp"
    );
    sanitizer::stack_abandoned();
    if let Some((bottom, size)) = enter.bounds {
        sanitizer::start_switch(None, bottom, size);
    }
    enter.tsan.announce();
    // SAFETY: as the caller promises.
    unsafe { arch::leave(arg, to, link) }
}

/// The address of a message, exposed so that the receiver can read it.
#[inline(always)]
pub(crate) fn addr<T>(msg: &T) -> usize {
    ptr::from_ref(msg).expose_provenance()
}

/// Moves a message out of the address a switch delivered.
///
/// # Safety
/// `addr` must be the exposed address of a live, initialised `T` that its
/// owner will neither use nor drop again.
#[inline(always)]
pub(crate) unsafe fn take<T>(addr: usize) -> T {
    // SAFETY: as the caller promises.
    unsafe { ptr::read(ptr::with_exposed_provenance::<T>(addr)) }
}
