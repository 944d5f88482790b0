//! The context switch for aarch64, AAPCS64 (Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of four words that [`switch`] stored when it left:
//!
//! ```text
//!   sp + 24  (padding: sp stays 16-aligned, as AAPCS64 requires)
//!   sp + 16  x19              (stored by hand: LLVM reserves it, so asm! cannot name it)
//!   sp +  8  return address   (where the context continues: label 2 in `switch`)
//!   sp +  0  x29              (stored by hand: the frame pointer)
//! ```
//!
//! Every other callee-saved register is handed to the compiler through the
//! clobber list of the `asm!` block (`clobber_abi("C")`, x20 to x28 and
//! v8 to v15), so the compiler saves only those that are live across the
//! switch, once per function rather than once per switch. x18, the
//! platform register, is never touched.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its switch frame
//! "returns" into [`trampoline`], which calls the entry function:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  8  link               the sp of the side that is suspended (see below)
//!   top - 16  entry              the Rust function the trampoline calls
//!   top - 24  (padding)
//!   top - 32  x19 = data         the trampoline passes it to entry
//!   top - 40  return address  -> trampoline
//!   top - 48  x29 = 0            ends frame-pointer walks
//!             <- initial sp = top - 48
//! ```
//!
//! # Unwinding across the boundary
//!
//! [`switch`] stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 8` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The trampoline's CFI says:
//! "my caller's CFA is `*link + 32`, its x29 is at CFA - 32, its return
//! address (x30) at CFA - 24 and its x19 at CFA - 16", so an unwinder walks
//! from the coroutine's frames into the frames of the code that resumed it.
//!
//! # FPCR
//!
//! AAPCS64 makes FPCR's control bits callee-saved. [`switch`] does not keep
//! them per context, for the reason given for MXCSR in `x86_64.rs`: Rust
//! code cannot change them, and every switch would pay for it.

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer at all times.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 48;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// Writes the first frame of a new context below `top` and returns the
/// stack pointer to [`switch`] to. The first switch into it calls
/// `entry(arg, from, data)` on this stack, where `arg` is the word passed to
/// that switch and `from` the sp of the context that switched.
///
/// # Safety
/// `top` must be 16-aligned and the [`INIT_FRAME_SIZE`] bytes below it must
/// be writable memory of a stack that nothing else uses.
#[inline]
pub unsafe fn init_stack(top: usize, entry: super::EntryFn, data: usize) -> usize {
    debug_assert_eq!(top % STACK_ALIGNMENT, 0);
    let sp = top - INIT_FRAME_SIZE;
    let words: [usize; 6] = [
        0,
        trampoline as *const () as usize,
        data,
        0,
        entry as *const () as usize,
        0,
    ];
    // SAFETY: the caller promises that [top - 48, top) is writable stack
    // memory; `sp` is 16-aligned because `top` is.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 6) };
    sp
}

/// Enters a fresh context: reached by the `br` at the end of [`switch`]
/// with sp = top - 16, x0 = arg, x1 = the sp that was left, x19 = data.
///
/// Its CFI sends unwinders through the link word to the resumer's frames.
#[unsafe(naked)]
unsafe extern "C" fn trampoline() {
    naked_asm!(
        ".cfi_startproc simple",
        // gdb checks that frame addresses grow towards the caller; the
        // resumer's stack may lie anywhere, so call this a signal frame,
        // which that check skips.
        ".cfi_signal_frame",
        // CFA = *(sp + 8) + 32, that is the link word plus the size of the
        // switch frame it points at:
        // DW_CFA_def_cfa_expression, 5 bytes:
        //   DW_OP_breg31 (sp) 8; DW_OP_deref; DW_OP_plus_uconst 32
        ".cfi_escape 0x0f, 5, 0x8f, 0x08, 0x06, 0x23, 0x20",
        // The resumer's switch frame: x29, return address (x30), x19.
        ".cfi_offset x29, -32",
        ".cfi_offset x30, -24",
        ".cfi_offset x19, -16",
        // entry(arg = x0, from = x1, data = x2); sp is 16-aligned.
        "ldr x3, [sp]",
        "mov x2, x19",
        "blr x3",
        // entry never returns; if it did, trap rather than run garbage.
        "brk #0x1",
        ".cfi_endproc",
    )
}

/// Switches from the running context to the suspended context `to`,
/// passing `arg`; stores the running context's saved sp into `*link`.
///
/// Returns when some context switches back here: the word it passed and
/// the sp of the context it left.
///
/// # Safety
/// `to` must be the sp of a suspended context (from [`init_stack`] or from
/// a return of this function) that is resumed nowhere else, on a stack that
/// is still alive; `link` must be valid for a write of one word.
#[inline(always)]
pub unsafe fn switch(arg: usize, to: usize, link: *mut usize) -> (usize, usize) {
    let (ret_arg, from): (usize, usize);
    // SAFETY: the caller vouches for `to` and `link`. Every register the
    // other context may change is an output or clobber below, except x19,
    // x29 and sp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Store our switch frame: x29 and the return address, then x19
            // (LLVM reserves x29 as the frame pointer and x19 as the base
            // pointer, so they cannot be clobbers).
            "adr x3, 2f",
            "stp x29, x3, [sp, #-32]!",
            "str x19, [sp, #16]",
            // Publish our sp: in the target's link word, and in x1 for it.
            "mov x4, sp",
            "str x4, [x2]",
            // Load the target's stack and its switch frame.
            "mov sp, x1",
            "ldr x19, [sp, #16]",
            "ldp x29, x3, [sp], #32",
            "mov x1, x4",
            // Continue the target. A br, not a ret: no bl made this
            // address, so a ret would unbalance the return predictor.
            "br x3",
            "2:",
            inout("x0") arg => ret_arg,
            inout("x1") to => from,
            in("x2") link,
            // AAPCS64: x20 to x28 are callee-saved, and so are the low
            // halves of v8 to v15 (d8 to d15); declaring them clobbered
            // makes the compiler save those that are live.
            lateout("x20") _, lateout("x21") _, lateout("x22") _, lateout("x23") _,
            lateout("x24") _, lateout("x25") _, lateout("x26") _, lateout("x27") _,
            lateout("x28") _,
            lateout("v8") _, lateout("v9") _, lateout("v10") _, lateout("v11") _,
            lateout("v12") _, lateout("v13") _, lateout("v14") _, lateout("v15") _,
            // Everything the ABI lets a call clobber (x0 to x17, x30, v0 to
            // v7, v16 to v31, flags) is clobbered here.
            clobber_abi("C"),
        );
    }
    (ret_arg, from)
}
