//! The one place that picks the per-architecture context switch.
//!
//! Each file of `arch/` (at the crate's top level) provides the same small
//! contract, documented in full at the top of each file:
//!
//! - `STACK_ALIGNMENT`: the stack pointer's alignment at a call;
//! - `INIT_FRAME_SIZE`: the bytes `init_stack` writes below a stack's top;
//! - `LINK_OFFSET`: where, below the top, the link word lives that unwinders
//!   follow from a coroutine into the code that resumed it;
//! - `RED_ZONE`: the bytes below sp the ABI lets a function use unmoved;
//! - `ENTRY_RESERVE`: the stack a new context reserves for its entry and a
//!   forced unwind (measured per architecture: the unwinder's contexts
//!   hold the register file);
//! - `MIN_STACK_SIZE`: the smallest stack the crate accepts;
//! - `unsafe fn init_stack(top, entry, data) -> sp`: lay out a new context
//!   (on Windows with a fourth argument, the TEB's view of the stack: see
//!   [`StackInfo`], and [`init_stack`] here, which every caller uses);
//! - `unsafe fn switch(arg, to, link) -> (arg, link of the switcher back)`:
//!   the one symmetric switch, which reaches the target with an indirect
//!   jump (the CPU's return predictor is left alone);
//! - `unsafe fn leave(arg, to, link) -> !`: a context's last switch, the
//!   second half of `switch` alone (it saves nothing, and leaves `*link`
//!   as it was);
//! - `fn dead_sp()`: the sp of a context that cannot be resumed: a switch
//!   to it returns at once, with the word 0, leaving the dead sp in `*link`;
//! - `fn valgrind_request(default, args) -> usize`: a valgrind client
//!   request (a few instructions that do nothing outside valgrind);
//! - `fn prefetch(addr)`: a cache hint for a stack about to be switched to;
//! - `unsafe fn context_sp(ucontext)`, `unsafe fn write_trap_regs(ucontext, pc, sp, args)` and
//!   `unsafe fn trap_entry_sp(sp, args)`: a trap's recovery (`src/trap.rs`):
//!   the registers written into a signal handler's `ucontext_t`, and the
//!   stack pointer a function is entered with as if called with `args`
//!   (which i686 passes on the stack, the others in registers).
//!
//! Everything above this module is architecture-free.

/// The function a fresh context runs first: `entry(arg, from, data)`, where
/// `arg` is the word passed to the first switch into it, `from` the sp of
/// the context that made that switch, and `data` the word given to
/// `init_stack`. It must never return.
pub(crate) type EntryFn = unsafe extern "C" fn(arg: usize, from: usize, data: usize) -> !;

cfg_if::cfg_if! {
    if #[cfg(all(target_arch = "x86_64", windows))] {
        #[path = "../arch/x86_64_windows.rs"]
        mod imp;
    } else if #[cfg(target_arch = "x86_64")] {
        #[path = "../arch/x86_64.rs"]
        mod imp;
    } else if #[cfg(target_arch = "aarch64")] {
        #[path = "../arch/aarch64.rs"]
        mod imp;
    } else if #[cfg(target_arch = "x86")] {
        #[path = "../arch/i686.rs"]
        mod imp;
    } else if #[cfg(target_arch = "riscv64")] {
        #[path = "../arch/riscv64.rs"]
        mod imp;
    } else if #[cfg(target_arch = "arm")] {
        #[path = "../arch/armv7.rs"]
        mod imp;
    } else if #[cfg(all(target_arch = "powerpc64", target_endian = "little"))] {
        #[path = "../arch/powerpc64.rs"]
        mod imp;
    } else if #[cfg(target_arch = "s390x")] {
        #[path = "../arch/s390x.rs"]
        mod imp;
    } else {
        compile_error!(
            "corostack supports x86_64, aarch64, i686, riscv64, armv7, powerpc64le and s390x (Linux), x86_64 and aarch64 on macOS, x86_64 on FreeBSD, and x86_64 on Windows only; see build.rs"
        );
    }
}

pub(crate) use imp::prefetch;
pub(crate) use imp::{
    ENTRY_RESERVE, INIT_FRAME_SIZE, LINK_OFFSET, MIN_STACK_SIZE, SPARE_OFFSET, STACK_ALIGNMENT,
    dead_sp, leave, switch,
};

cfg_if::cfg_if! {
    if #[cfg(windows)] {
        pub(crate) use imp::StackInfo;

        /// Lays out a new context (see the contract above); `info` is the
        /// TEB's view of its stack, which the context loads when it starts.
        ///
        /// # Safety
        /// As the arch file's `init_stack`.
        #[inline(always)]
        pub(crate) unsafe fn init_stack(top: usize, entry: EntryFn, data: usize, info: StackInfo) -> usize {
            // SAFETY: as the caller promises.
            unsafe { imp::init_stack(top, entry, data, info) }
        }
    } else {
        /// What a system keeps about the stack that runs, for a new
        /// context to start with: nothing outside Windows (a signal's
        /// alternate stack and the guard pages need no per-stack state).
        #[derive(Clone, Copy)]
        pub(crate) struct StackInfo;

        impl StackInfo {
            /// The stack `[limit, top)` with `guard()` bytes of guard below
            /// (not asked for here: a `Stack`'s `guard_size` may cost a
            /// look-up, on every coroutine's creation).
            #[inline(always)]
            pub(crate) fn new(_top: usize, _limit: usize, _guard: impl FnOnce() -> usize) -> StackInfo {
                StackInfo
            }

            /// The stack of the context suspended at `sp`.
            ///
            /// # Safety
            /// `sp` is the sp of a context suspended in a switch.
            #[cfg(feature = "std")]
            #[inline(always)]
            pub(crate) unsafe fn of_suspended(_sp: usize) -> StackInfo {
                StackInfo
            }
        }

        /// Lays out a new context (see the contract above).
        ///
        /// # Safety
        /// As the arch file's `init_stack`.
        #[inline(always)]
        pub(crate) unsafe fn init_stack(top: usize, entry: EntryFn, data: usize, _info: StackInfo) -> usize {
            // SAFETY: as the caller promises.
            unsafe { imp::init_stack(top, entry, data) }
        }
    }
}
#[cfg(feature = "std")]
pub(crate) use imp::{RED_ZONE, context_sp, trap_entry_sp, valgrind_request, write_trap_regs};
