//! Recovering from a trap inside a coroutine: [`CoroutineTrapHandler`] and
//! [`TrapHandlerRegs`], with corosensei's names and meaning.
//!
//! On Windows the handler is a vectored exception handler
//! (`AddVectoredExceptionHandler`), and the context it works on is the
//! exception's `CONTEXT` (its `ContextRecord`), where Unix has a signal
//! handler and its `ucontext_t`; everything else below is the same
//! (`tests/trap_windows.rs` shows a whole recovery there).
//!
//! A JIT or an interpreter runs guest code on a coroutine with a fixed
//! stack; a stack overflow or a fault in that code should come back to the
//! host as a value, not kill the process. The host keeps a
//! [`Coroutine::trap_handler`](crate::Coroutine::trap_handler) (a plain
//! value with no lifetime, for a thread-local that its signal handler
//! reads), and in its `SA_SIGINFO` handler, for a fault whose stack pointer
//! lies in the coroutine's stack (guard included), calls
//! [`setup_trap_handler`](CoroutineTrapHandler::setup_trap_handler) and
//! [`write_to`](TrapHandlerRegs::write_to) the handler's `ucontext_t`: when
//! the handler returns, the coroutine runs the given closure at the top of
//! its stack, abandoning the frames below, and its `resume` returns the
//! closure's value as [`CoroutineResult::Return`](crate::CoroutineResult).
//!
//! # Why it is `unsafe`
//! A fault can stop any function half way: the allocator with its lock
//! held, a C library in the middle of an update, a `RefCell` borrowed, a
//! value half written. No safe API can promise the process is intact
//! afterwards; the embedder knows what its guest code may have been doing
//! (typically: only JIT-ed code that touches nothing but the guest's own
//! memory, which is why the trap is recoverable). The frames abandoned run
//! no destructors. The crate's own overflow handler (feature
//! `overflow-handler`) keeps aborting with its message: recovery is the
//! embedder's choice, made by installing its handler after it: call
//! [`install_overflow_handler`](crate::stack::install_overflow_handler)
//! first (the crate installs its own once per process, when the first stack
//! is made or then, never again over a later one).
//!
//! ```no_run
//! use corostack::{Coroutine, CoroutineTrapHandler, DefaultStack};
//! use std::cell::Cell;
//!
//! thread_local! {
//!     static TRAP: Cell<Option<CoroutineTrapHandler<u32>>> = const { Cell::new(None) };
//! }
//!
//! extern "C" fn on_segv(_: i32, _: *mut libc::siginfo_t, uc: *mut std::ffi::c_void) {
//!     // SAFETY (the filter): this handler's own context.
//!     if let Some(trap) = TRAP.get().filter(|t| unsafe { t.context_in_bounds(uc) }) {
//!         // SAFETY: a fault of the coroutine's own code (a guest that
//!         // touches nothing else), on an alternate signal stack.
//!         unsafe { trap.setup_trap_handler(|| 42).write_to(uc) };
//!         return;
//!     }
//!     std::process::abort();
//! }
//!
//! // The crate's own handler first (a no-op without the overflow-handler
//! // feature), then `on_segv`, with SA_SIGINFO | SA_ONSTACK; then:
//! corostack::stack::install_overflow_handler();
//! fn recurse(n: u64) -> u64 {
//!     if n == u64::MAX { 0 } else { 1 + std::hint::black_box(recurse(n + 1)) }
//! }
//! let stack = DefaultStack::new(64 * 1024).unwrap();
//! let mut co = Coroutine::with_stack(stack, |_: &corostack::Yielder<(), ()>, ()| {
//!     recurse(0) as u32
//! });
//! TRAP.set(Some(co.trap_handler()));
//! assert_eq!(co.resume(()).as_return(), Some(42));
//! ```

use core::fmt;
use core::marker::PhantomData;

use crate::arch;

/// What a signal handler needs of a coroutine to send it back to its
/// resumer: made by [`Coroutine::trap_handler`](crate::Coroutine::trap_handler),
/// a plain value without a lifetime (keep it in a thread-local for the
/// handler), valid while the coroutine it came from is alive and has not
/// moved to another stack. The [module docs](self) show a whole recovery.
///
/// ```
/// use corostack::{Coroutine, CoroutineTrapHandler, Yielder};
/// use std::cell::Cell;
///
/// thread_local! {
///     // Where the signal handler finds it: a plain value, no lifetime.
///     static TRAP: Cell<Option<CoroutineTrapHandler<u32>>> = const { Cell::new(None) };
/// }
/// let co = Coroutine::new(|_: &Yielder<(), ()>, ()| 7u32);
/// TRAP.set(Some(co.trap_handler()));
/// # TRAP.set(None);
/// ```
pub struct CoroutineTrapHandler<Return> {
    /// The coroutine's link word (see `arch/`): the resumer's sp while the
    /// coroutine runs.
    pub(crate) link: usize,
    /// The lowest address of the coroutine's stack, guard included.
    pub(crate) low: usize,
    /// One past the highest usable address (the stack's top).
    pub(crate) top: usize,
    /// Where the closure may go: below the first frame at the top.
    pub(crate) frames_top: usize,
    /// Makes the `Return` that `f` gives back.
    pub(crate) _return: PhantomData<fn() -> Return>,
}

impl<Return> Clone for CoroutineTrapHandler<Return> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Return> Copy for CoroutineTrapHandler<Return> {}

impl<Return> fmt::Debug for CoroutineTrapHandler<Return> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoroutineTrapHandler")
            .field("stack", &format_args!("{:#x}..{:#x}", self.low, self.top))
            .finish()
    }
}

/// The registers that make an interrupted coroutine run a trap's closure:
/// from [`CoroutineTrapHandler::setup_trap_handler`], written into the
/// signal handler's `ucontext_t` by [`write_to`](TrapHandlerRegs::write_to).
#[derive(Debug, Clone, Copy)]
pub struct TrapHandlerRegs {
    /// Where to go on: the closure's entry.
    pub pc: usize,
    /// The stack pointer, at the top of the coroutine's stack.
    pub sp: usize,
    /// The entry's two arguments (the closure's address, the link word's).
    pub args: [usize; 2],
}

impl TrapHandlerRegs {
    /// Writes these registers into the `ucontext_t` that the kernel passed
    /// to an `SA_SIGINFO` signal handler (its third argument), so that the
    /// interrupted thread goes on with them when the handler returns. On
    /// Windows, into the `CONTEXT` of a vectored exception handler's
    /// exception (`ContextRecord`), which then returns
    /// `EXCEPTION_CONTINUE_EXECUTION`: Rip, Rsp, Rcx and Rdx there. On
    /// x86_64: rip, rsp, rdi and rsi; on aarch64: pc, sp, x0, x1 and x30
    /// (0, which ends backtraces); on i686: eip and esp (the arguments are
    /// on the stack already); on riscv64: pc, sp, a0, a1 and ra (0); on
    /// armv7: pc, sp, r0, r1, lr (0) and CPSR's Thumb bit (from bit 0 of
    /// the entry's address); on
    /// powerpc64le: NIP, r1, r3, r4, r12 (the entry's address, from which
    /// its global entry point derives its TOC pointer) and LR (0); on
    /// s390x: the PSW's address, r15, r2, r3 and r14 (0). The same
    /// registers on macOS (in the thread state `uc_mcontext` points to) and
    /// FreeBSD (`mc_rip`, `mc_rsp`, ...), where the crate is assembled in
    /// CI but not run.
    ///
    /// # Safety
    /// `ucontext` is the third argument of the running `SA_SIGINFO` handler,
    /// for the signal of the fault these registers were made for.
    pub unsafe fn write_to(self, ucontext: *mut core::ffi::c_void) {
        // SAFETY: as the caller promises.
        unsafe { arch::write_trap_regs(ucontext, self.pc, self.sp, self.args) }
    }
}

impl<Return> CoroutineTrapHandler<Return> {
    /// Whether `sp`, a stack pointer read from a signal's context, lies in
    /// the coroutine's stack, its guard included (so that an overflow is
    /// recognised).
    ///
    /// ```
    /// use corostack::{Coroutine, DefaultStack, Stack, Yielder};
    ///
    /// let stack = DefaultStack::new(64 * 1024).unwrap();
    /// let (limit, guard, top) = (stack.limit(), stack.guard_size(), stack.top());
    /// let co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| 1u32);
    /// let trap = co.trap_handler();
    /// assert!(trap.stack_ptr_in_bounds(limit - guard)); // an overflow into the guard
    /// assert!(trap.stack_ptr_in_bounds(top - 1));
    /// assert!(!trap.stack_ptr_in_bounds(top)); // the resumer's stack, say
    /// ```
    pub fn stack_ptr_in_bounds(&self, sp: usize) -> bool {
        self.low <= sp && sp < self.top
    }

    /// [`stack_ptr_in_bounds`](CoroutineTrapHandler::stack_ptr_in_bounds) of
    /// the stack pointer in a signal handler's `ucontext_t` (its third
    /// argument), read as the architecture lays it out: what a handler
    /// asks first, without code of its own per architecture.
    ///
    /// # Safety
    /// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
    pub unsafe fn context_in_bounds(&self, ucontext: *const core::ffi::c_void) -> bool {
        // SAFETY: as the caller promises.
        self.stack_ptr_in_bounds(unsafe { arch::context_sp(ucontext) })
    }

    /// Prepares the interrupted coroutine to run `f` at the top of its
    /// stack once the signal handler returns (with the registers this
    /// returns written into its context), abandoning every frame it had;
    /// `f`'s value (or panic) then reaches the resumer as the coroutine's
    /// return (or panic), and the coroutine is done. Its stack may then be
    /// taken back (`into_stack`) and run a new coroutine.
    ///
    /// `f` is small (at most 1 KiB, checked when it compiles): it is
    /// written at the top of the stack, from the signal handler.
    ///
    /// # Safety
    /// - Called from a signal handler that runs on an alternate signal
    ///   stack (`SA_ONSTACK`), for a synchronous fault (SIGSEGV, SIGBUS,
    ///   SIGILL, SIGFPE) raised by the coroutine's own code while it ran on
    ///   its own stack (`stack_ptr_in_bounds` of the context's sp), with
    ///   the returned registers written into that signal's context (and
    ///   nothing else changed there) before the handler returns.
    ///   On Windows: called from a vectored exception handler, for an
    ///   exception raised by the coroutine's own code on its own stack (an
    ///   access violation, `STATUS_STACK_OVERFLOW`), with the registers
    ///   written into that exception's `CONTEXT` before the handler returns
    ///   `EXCEPTION_CONTINUE_EXECUTION` (the handler runs on the faulting
    ///   stack, below the frames it abandons; the closure goes at the top).
    /// - The coroutine is alive, and not moved to another stack since this
    ///   handle was made.
    /// - The frames abandoned run no destructors, and whatever the
    ///   interrupted code was doing is left half done: it must not have
    ///   held a lock, a `RefCell` borrow, or state that others rely on
    ///   (allocator, C library, anything of the host's). A fault in code
    ///   that only computes on the guest's own memory is the intended case.
    pub unsafe fn setup_trap_handler<F>(&self, f: F) -> TrapHandlerRegs
    where
        F: FnOnce() -> Return + 'static,
    {
        const {
            assert!(
                core::mem::size_of::<F>() <= 1024,
                "a trap's closure must be small"
            )
        };
        let align = core::mem::align_of::<F>().max(arch::STACK_ALIGNMENT);
        let slot = (self.frames_top - core::mem::size_of::<F>()) & !(align - 1);
        // The frames below are abandoned: their node leaves the thread's
        // list for the exit hook before `f` is written over it.
        // SAFETY: `link` is the link word of this thread's coroutine,
        // which trapped while it ran (the caller's promise).
        unsafe {
            crate::thread_exit::unlink_abandoned(core::ptr::with_exposed_provenance_mut(self.link))
        };
        // SAFETY: [slot, frames_top) lies in the coroutine's stack, below
        // its first frame and above everything else, which the caller lets
        // us abandon (the handler runs on its own stack).
        unsafe { core::ptr::write(core::ptr::with_exposed_provenance_mut::<F>(slot), f) };
        let sp = slot & !(arch::STACK_ALIGNMENT - 1);
        let entry = crate::coroutine::trap_entry::<F, Return> as *const () as usize;
        let args = [slot, self.link];
        // SAFETY: below `slot`, in the stack too.
        let sp = unsafe { arch::trap_entry_sp(sp, args) };
        TrapHandlerRegs {
            pc: entry,
            sp,
            args,
        }
    }
}
