//! Telling AddressSanitizer, ThreadSanitizer and valgrind about our stacks
//! and switches, so that they keep working across them.
//!
//! - **ASan** (cargo feature `asan`, with `-Zsanitizer=address`): every
//!   switch announces the stack it enters (`__sanitizer_start_switch_fiber`)
//!   and completes on arrival (`__sanitizer_finish_switch_fiber`), so ASan
//!   neither reports false stack-buffer overflows nor misses real ones.
//! - **TSan** (cargo feature `tsan`, with `-Zsanitizer=thread`): every
//!   coroutine and greenlet is a TSan fiber, created with it, switched to
//!   before each switch and destroyed with it, so that coroutines on several
//!   threads report real races and no false ones.
//! - **valgrind** (always): every `DefaultStack` is registered as a stack
//!   when mapped and deregistered when unmapped, so memcheck does not take a
//!   switch for a wild stack-pointer change. Outside valgrind a client
//!   request is a handful of register rotations that do nothing.
//!
//! Without the features, the ASan and TSan hooks compile to nothing: the
//! functions here are empty and inlined.

#[cfg(any(feature = "asan", feature = "tsan"))]
use core::ffi::c_void;

#[cfg(feature = "asan")]
unsafe extern "C" {
    fn __sanitizer_start_switch_fiber(
        fake_stack_save: *mut *mut c_void,
        bottom: *const c_void,
        size: usize,
    );
    fn __asan_handle_no_return();
    fn __asan_unpoison_memory_region(addr: *const c_void, size: usize);
    fn __sanitizer_finish_switch_fiber(
        fake_stack_save: *mut c_void,
        bottom_old: *mut *const c_void,
        size_old: *mut usize,
    );
}

#[cfg(feature = "tsan")]
unsafe extern "C" {
    fn __tsan_get_current_fiber() -> *mut c_void;
    fn __tsan_create_fiber(flags: u32) -> *mut c_void;
    fn __tsan_destroy_fiber(fiber: *mut c_void);
    fn __tsan_switch_to_fiber(fiber: *mut c_void, flags: u32);
}

/// What one side of a switch keeps for ASan while it is away: its fake
/// stack (ASan's stack for escaped locals).
#[derive(Debug)]
pub(crate) struct AsanSave {
    #[cfg(feature = "asan")]
    fake: *mut c_void,
}

impl AsanSave {
    /// Nothing saved yet.
    #[inline(always)]
    pub(crate) const fn new() -> AsanSave {
        AsanSave {
            #[cfg(feature = "asan")]
            fake: core::ptr::null_mut(),
        }
    }
}

/// Tells ASan that the frames between the stack pointer and the top of the
/// running coroutine's stack are gone for good: the coroutine is leaving it
/// for the last time, and the stack may carry another one next (from the
/// pool). Without this, the shadow of variables that went out of scope in
/// frames that never returned stays poisoned, and the next body that writes
/// there without a scope of its own is reported for it. A no-op without the
/// `asan` feature.
#[inline(always)]
pub(crate) fn stack_abandoned() {
    #[cfg(feature = "asan")]
    // SAFETY: ASan's own entry point for a call that does not return; it
    // only unpoisons the shadow of the current stack above the sp.
    unsafe {
        __asan_handle_no_return()
    };
}

/// Tells ASan that `[bottom, bottom + size)`, a stack whose frames were
/// abandoned without returning, holds no live scopes any more. A no-op
/// without the `asan` feature.
#[inline(always)]
pub(crate) fn unpoison_stack(bottom: usize, size: usize) {
    #[cfg(feature = "asan")]
    // SAFETY: ASan's entry point for memory the program owns; it only
    // clears the shadow of [bottom, bottom + size), our own stack.
    unsafe {
        __asan_unpoison_memory_region(bottom as *const c_void, size)
    };
    #[cfg(not(feature = "asan"))]
    let _ = (bottom, size);
}

/// Announces a switch to the stack `[bottom, bottom + size)`. `save` keeps
/// the leaving side's fake stack; `None` when the leaving side is finished
/// for good (ASan then frees its fake stack).
#[inline(always)]
pub(crate) fn start_switch(save: Option<&mut AsanSave>, bottom: usize, size: usize) {
    #[cfg(feature = "asan")]
    {
        let save = save.map_or(core::ptr::null_mut(), |s| &mut s.fake as *mut *mut c_void);
        // SAFETY: ASan's documented protocol: called right before the switch,
        // with the bounds of the stack the switch enters.
        unsafe { __sanitizer_start_switch_fiber(save, bottom as *const c_void, size) };
    }
    #[cfg(not(feature = "asan"))]
    let _ = (save, bottom, size);
}

/// Completes a switch on arrival; returns the bounds (bottom, size) of the
/// stack the switch came from, or (0, 0) without ASan.
#[inline(always)]
pub(crate) fn finish_switch(save: &AsanSave) -> (usize, usize) {
    #[cfg(feature = "asan")]
    {
        let (mut bottom, mut size) = (core::ptr::null(), 0usize);
        // SAFETY: ASan's documented protocol: called right after arriving,
        // with what `start_switch` saved when this side left.
        unsafe { __sanitizer_finish_switch_fiber(save.fake, &mut bottom, &mut size) };
        (bottom as usize, size)
    }
    #[cfg(not(feature = "asan"))]
    {
        let _ = save;
        (0, 0)
    }
}

/// A TSan fiber (nothing without the `tsan` feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fiber {
    #[cfg(feature = "tsan")]
    raw: *mut c_void,
}

impl Fiber {
    /// A new fiber for a new coroutine.
    #[inline(always)]
    pub(crate) fn create() -> Fiber {
        Fiber {
            // SAFETY: creating a fiber has no preconditions.
            #[cfg(feature = "tsan")]
            raw: unsafe { __tsan_create_fiber(0) },
        }
    }

    /// The fiber running now (the thread's own, outside coroutines).
    #[inline(always)]
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn current() -> Fiber {
        Fiber {
            // SAFETY: no preconditions.
            #[cfg(feature = "tsan")]
            raw: unsafe { __tsan_get_current_fiber() },
        }
    }

    /// Tells TSan that this fiber runs from now on: call right before the
    /// switch into it.
    #[inline(always)]
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn switch_to(self) {
        // SAFETY: `raw` is a live fiber (created and not yet destroyed, or
        // a thread's own).
        #[cfg(feature = "tsan")]
        unsafe {
            __tsan_switch_to_fiber(self.raw, 0)
        };
    }

    /// Destroys a fiber made by [`Fiber::create`] that is not running.
    #[inline(always)]
    pub(crate) fn destroy(self) {
        // SAFETY: the caller destroys a fiber it created, once.
        #[cfg(feature = "tsan")]
        unsafe {
            __tsan_destroy_fiber(self.raw)
        };
    }
}

/// The ids valgrind gave the stacks it knows, by their lowest address.
/// Empty outside valgrind (its requests answer 0 there), so stacks carry no
/// id of their own.
#[cfg(feature = "std")]
static VALGRIND_IDS: std::sync::Mutex<Option<std::collections::HashMap<usize, usize>>> =
    std::sync::Mutex::new(None);

/// valgrind's `VALGRIND_STACK_REGISTER` for the stack `[start, end)`.
#[cfg(feature = "std")]
pub(crate) fn valgrind_stack_register(start: usize, end: usize) {
    /// VG_USERREQ__STACK_REGISTER, from valgrind.h.
    const STACK_REGISTER: usize = 0x1501;
    let id = crate::arch::valgrind_request(0, &[STACK_REGISTER, start, end, 0, 0, 0]);
    if id != 0 {
        let mut ids = VALGRIND_IDS.lock().unwrap_or_else(|e| e.into_inner());
        ids.get_or_insert_default().insert(start, id);
    }
}

/// memcheck's `VALGRIND_MAKE_MEM_UNDEFINED` for `[start, start + len)`:
/// writable, its contents unknown. A pooled stack's bytes below where its
/// last context's stack pointer stood are unreadable to memcheck (it saw
/// those frames return); a new context that lays out its first frame there
/// says so first. Nothing outside valgrind.
#[cfg(feature = "std")]
pub(crate) fn valgrind_make_undefined(start: usize, len: usize) {
    /// VG_USERREQ__MAKE_MEM_UNDEFINED, from memcheck.h:
    /// VG_USERREQ_TOOL_BASE('M', 'C') + 1.
    const MAKE_MEM_UNDEFINED: usize = 0x4d43_0001;
    crate::arch::valgrind_request(0, &[MAKE_MEM_UNDEFINED, start, len, 0, 0, 0]);
}

/// Whether valgrind runs this process (a client request: a few
/// instructions, for cold paths).
#[cfg(feature = "std")]
pub(crate) fn under_valgrind() -> bool {
    crate::arch::valgrind_request(0, &[RUNNING_ON_VALGRIND, 0, 0, 0, 0, 0]) != 0
}

/// VG_USERREQ__RUNNING_ON_VALGRIND, from valgrind.h.
#[cfg(feature = "std")]
const RUNNING_ON_VALGRIND: usize = 0x1001;

/// valgrind's `VALGRIND_STACK_DEREGISTER` for the stack registered with
/// the lowest address `start`.
#[cfg(feature = "std")]
pub(crate) fn valgrind_stack_deregister(start: usize) {
    /// VG_USERREQ__STACK_DEREGISTER, from valgrind.h.
    const STACK_DEREGISTER: usize = 0x1502;
    if !under_valgrind() {
        return;
    }
    let id = VALGRIND_IDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|ids| ids.remove(&start));
    if let Some(id) = id {
        crate::arch::valgrind_request(0, &[STACK_DEREGISTER, id, 0, 0, 0, 0]);
    }
}

/// The bounds (bottom, size) of the stack on the other side of a switch,
/// as ASan reported them on arrival (nothing without the `asan` feature).
#[derive(Debug, Default)]
pub(crate) struct AsanPeer {
    #[cfg(feature = "asan")]
    bounds: core::cell::Cell<(usize, usize)>,
}

impl AsanPeer {
    /// Remembers the bounds `finish_switch` returned.
    #[inline(always)]
    pub(crate) fn set(&self, bounds: (usize, usize)) {
        #[cfg(feature = "asan")]
        self.bounds.set(bounds);
        #[cfg(not(feature = "asan"))]
        let _ = bounds;
    }

    /// The bounds last remembered.
    #[inline(always)]
    pub(crate) fn get(&self) -> (usize, usize) {
        #[cfg(feature = "asan")]
        return self.bounds.get();
        #[cfg(not(feature = "asan"))]
        (0, 0)
    }
}

#[cfg(feature = "tsan")]
thread_local! {
    /// The fibers of the resumers of the coroutines running on this
    /// thread, innermost last: asymmetric coroutines nest, so a stack.
    static RESUMERS: core::cell::RefCell<Vec<Fiber>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// A resume is about to switch into the coroutine whose fiber is `fiber`.
#[inline(always)]
pub(crate) fn tsan_resume(fiber: Fiber) {
    #[cfg(feature = "tsan")]
    {
        RESUMERS.with(|r| r.borrow_mut().push(Fiber::current()));
        fiber.switch_to();
    }
    #[cfg(not(feature = "tsan"))]
    let _ = fiber;
}

/// A coroutine is about to switch back to its resumer.
#[inline(always)]
pub(crate) fn tsan_suspend() {
    #[cfg(feature = "tsan")]
    {
        let resumer = RESUMERS.with(|r| r.borrow_mut().pop());
        if let Some(resumer) = resumer {
            resumer.switch_to();
        }
    }
}
