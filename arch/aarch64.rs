//! The context switch for aarch64, AAPCS64 (Linux; macOS, whose ABI
//! reserves x18 as well, assembled in CI, not run).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of four words:
//!
//! ```text
//!   sp + 24  (padding: sp stays 16-aligned, as AAPCS64 requires)
//!   sp + 16  continuation   (where the context goes on: label 2 of its switch)
//!   sp +  8  x19            (stored by hand: LLVM reserves it, so asm! cannot name it)
//!   sp +  0  x29            (stored by hand: the frame pointer)
//! ```
//!
//! Every other callee-saved register is handed to the compiler through the
//! clobber list of the `asm!` block (`clobber_abi("C")`, x20 to x28 and
//! v8 to v15), so the compiler saves only those that are live across the
//! switch, once per function rather than once per switch. x18, the
//! platform register, is never touched.
//!
//! # How a switch runs
//!
//! As on x86_64 (`x86_64.rs` explains the design, and why at length): the
//! running context stores x29, x19 and its continuation (`adr`), stores its
//! sp where the caller asked (`link`, in x2) and *branches* (`br`) to the
//! target's continuation, still on its own stack. There, the second half of
//! the target's own [`switch`] moves to the target's frame (x1 holds the sp
//! the switcher was given) and reloads x29 and x19; the target runs on, with
//! the word in x0 and the switcher's link in x2. No `bl` and no `ret`: the
//! return-address predictor is left alone. sp never points anywhere but at a
//! live stack. 10 instructions a switch.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline`], which does that second half and calls the entry function:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  8  link               the sp of the side that is suspended (see below)
//!   top - 16  entry              the Rust function the trampoline calls
//!   top - 24  (padding)
//!   top - 32  continuation    -> trampoline
//!   top - 40  x19 = data         the trampoline passes it to entry
//!   top - 48  x29 = 0            ends frame-pointer walks
//!             <- initial sp = top - 48
//! ```
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 8` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The
//! trampoline's CFI says: "my caller's CFA is `*link + 32`, its x29 is at
//! CFA - 32, its x19 at CFA - 24 and its return address (x30) at CFA - 16",
//! so an unwinder walks from the coroutine's frames into the frames of the
//! code that resumed it.
//!
//! # FPCR
//!
//! AAPCS64 makes FPCR's control bits callee-saved. A switch does not keep
//! them per context, for the reason given for MXCSR in `x86_64.rs`: Rust
//! code cannot change them, and every switch would pay for it.

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer at all times.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 48;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it (its red zone): none: AAPCS64 on Linux has no red
/// zone.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 0;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`): at
/// most 8.9 KiB measured here.
pub const ENTRY_RESERVE: usize = 12 * 1024;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`, which
/// documents what it bounds).
pub const MIN_STACK_SIZE: usize = 32 * 1024;

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    x29: usize,
    x19: usize,
    continuation: unsafe extern "C" fn(),
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    x29: 0,
    x19: 0,
    continuation: dead_continuation,
};

/// The sp of a context that cannot be resumed: a switch to it returns at
/// once with the word 0, and leaves the dead sp in `*link`. The layer above
/// leaves it where a finished context's sp was (its link word), so that
/// resuming it costs no check of its own.
pub fn dead_sp() -> usize {
    &DEAD_FRAME as *const DeadFrame as usize
}

/// The continuation of the dead frame: switches straight back to the
/// caller, passing 0, and puts the dead sp back where the caller's switch
/// stored its own.
///
/// # Safety
/// Only a switch may enter it, as the continuation of [`dead_sp`]'s frame;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn dead_continuation() {
    naked_asm!(
        // Entered as every continuation is, still on the caller's stack,
        // with x1 = the dead sp and x2 = the caller's link, which now holds
        // the caller's sp. Put the dead sp back in the link (the layer
        // above then still finds its context dead), and branch back to the
        // caller's continuation with x1 = its sp and the word 0, as a
        // switch from here would.
        "mov x3, x1",
        "ldr x1, [x2]",
        "str x3, [x2]",
        "mov x0, #0",
        "ldr x3, [x1, #16]",
        "br x3",
    )
}

/// Writes the first frame of a new context below `top` and returns the
/// stack pointer to switch to. The first switch into it calls
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
    let trampoline = trampoline as *const () as usize;
    let words: [usize; 6] = [0, data, trampoline, 0, entry as *const () as usize, 0];
    // SAFETY: the caller promises that [top - 48, top) is writable stack
    // memory; `sp` is 16-aligned because `top` is.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 6) };
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with sp still on the switcher's stack, x1 = our initial sp, x0 = arg and
/// x2 = the switcher's link, which holds the switcher's sp.
///
/// Its CFI sends unwinders through the link word to the resumer's frames.
///
/// # Safety
/// Only a switch may enter it, into a frame that [`init_stack`] laid out;
/// it follows no Rust calling convention.
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
        // The resumer's switch frame: x29, x19, continuation (x30).
        ".cfi_offset x29, -32",
        ".cfi_offset x19, -24",
        ".cfi_offset x30, -16",
        // As every arrival: move to our stack, load our x29 (0) and x19
        // (data).
        "mov sp, x1",
        "ldp x29, x19, [sp], #32",
        // entry(arg = x0, from = the switcher's sp, data = x19); sp = top -
        // 16 is 16-aligned.
        "ldr x1, [x2]",
        "mov x2, x19",
        // Entered as by `blr`, with the return address `blr` would write
        // (label 3, for unwinders) written into lr by hand: `blr` would
        // also push it onto the return predictor, and entry never returns,
        // so the first `ret` the resumer runs after the coroutine's life
        // would mispredict. `br` through x16, as a call through a veneer
        // is, lands on a BTI `c` landing pad.
        "ldr x16, [sp]",
        "adr x30, 3f",
        "br x16",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "brk #0x1",
        ".cfi_endproc",
    )
}

/// Switches from the running context to the suspended context `to`,
/// passing `arg`; stores the running context's saved sp into `*link`.
///
/// Returns when some context switches back here: the word it passed and
/// its link (`*link` is its sp).
///
/// # Safety
/// `to` must be the sp of a suspended context (from [`init_stack`] or from
/// a switch away from it) that is resumed nowhere else, on a stack that is
/// still alive, or [`dead_sp`]; `link` must be valid for a write of one
/// word.
#[inline(always)]
pub unsafe fn switch(arg: usize, to: usize, link: *mut usize) -> (usize, *mut usize) {
    let (word, back): (usize, *mut usize);
    // SAFETY: the caller vouches for `to` and `link`. Every register the
    // other context may change is an output or clobber below, except x19,
    // x29 and sp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Our switch frame: x29 and x19 (LLVM reserves x29 as the frame
            // pointer and x19 as the base pointer, so they cannot be
            // clobbers), then our continuation, label 2 (an `adr`: a `bl`
            // would put it on the return predictor too, with no `ret` ever
            // to match).
            "stp x29, x19, [sp, #-32]!",
            "adr x3, 2f",
            "str x3, [sp, #16]",
            // Publish our sp, and branch to the target's continuation,
            // still on our stack: the target moves to its own.
            "mov x3, sp",
            "str x3, [x2]",
            "ldr x3, [x1, #16]",
            "br x3",
            "2:",
            // Here a context has branched to our continuation, with sp
            // still its own, x1 our sp, x0 the word and x2 its link. Move
            // onto our frame and reload x29 and x19.
            "mov sp, x1",
            "ldp x29, x19, [sp], #32",
            inout("x0") arg => word,
            inout("x1") to => _,
            inout("x2") link => back,
            // AAPCS64: x20 to x28 are callee-saved, and so are the low
            // halves of v8 to v15 (d8 to d15); declaring them clobbered
            // makes the compiler save those that are live.
            lateout("x20") _, lateout("x21") _, lateout("x22") _, lateout("x23") _,
            lateout("x24") _, lateout("x25") _, lateout("x26") _, lateout("x27") _,
            lateout("x28") _,
            lateout("v8") _, lateout("v9") _, lateout("v10") _, lateout("v11") _,
            lateout("v12") _, lateout("v13") _, lateout("v14") _, lateout("v15") _,
            // Everything the ABI lets a call clobber (x0 to x17, x30, v0 to
            // v7, v16 to v31, flags) is clobbered here; x3 is the switch's
            // scratch.
            clobber_abi("C"),
        );
    }
    (word, back)
}

/// Leaves the running context for good: the second half of [`switch`]
/// alone. Jumps to the suspended context `to` with `arg` and `link` where
/// a switch puts them, so that the target's switch returns `(arg, link)`,
/// but saves nothing of the running context and leaves `*link` as it was.
/// For a context's last switch, `switch` would save registers and an sp
/// that nothing restores: this costs the jump alone.
///
/// # Safety
/// As [`switch`] for `to`, except that `to` is never [`dead_sp`], whose
/// continuation goes back through `*link`, which this does not write.
/// Nothing resumes the running context again: its stack may be freed as
/// soon as the target runs. The target does not read `*link` as the
/// running context's sp (it holds what it held).
#[inline(always)]
pub unsafe fn leave(arg: usize, to: usize, link: *mut usize) -> ! {
    // SAFETY: the caller vouches for `to`; the target's continuation
    // moves onto its own stack and restores what it saved (x29, x19), and
    // nothing of ours is used again.
    unsafe {
        asm!(
            // Branch to the target's continuation, still on our stack, with
            // x1 = its sp, x0 = the word and x2 = the link, as `switch` does
            // after publishing its sp (x3 is the scratch there too).
            "ldr x3, [x1, #16]",
            "br x3",
            in("x0") arg,
            in("x1") to,
            in("x2") link,
            options(noreturn, nostack),
        )
    }
}

/// The stack pointer of a signal's context: sp of an `SA_SIGINFO`
/// handler's `ucontext_t`.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn context_sp(ucontext: *const core::ffi::c_void) -> usize {
    let uc = ucontext.cast::<libc::ucontext_t>();
    // SAFETY: as the caller promises: a live ucontext_t, whose register
    // layout is each system's (on macOS, uc_mcontext points to it).
    unsafe {
        cfg_if::cfg_if! {
            if #[cfg(target_vendor = "apple")] {
                (*(*uc).uc_mcontext).__ss.__sp as usize
            } else {
                (*uc).uc_mcontext.sp as usize
            }
        }
    }
}

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: pc, sp, the first two arguments (x0, x1), and the
/// link register x30 (0, which ends backtraces).
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn write_trap_regs(
    ucontext: *mut core::ffi::c_void,
    pc: usize,
    sp: usize,
    args: [usize; 2],
) {
    let uc = ucontext.cast::<libc::ucontext_t>();
    // SAFETY: as the caller promises, a live ucontext_t the kernel restores
    // from when the handler returns.
    unsafe {
        cfg_if::cfg_if! {
            if #[cfg(target_vendor = "apple")] {
                // macOS: uc_mcontext points to the registers; x30 is `__lr`.
                let ss = &mut (*(*uc).uc_mcontext).__ss;
                ss.__pc = pc as u64;
                ss.__sp = sp as u64;
                ss.__x[0] = args[0] as u64;
                ss.__x[1] = args[1] as u64;
                ss.__lr = 0;
            } else {
                let mc = &mut (*uc).uc_mcontext;
                mc.pc = pc as u64;
                mc.sp = sp as u64;
                mc.regs[0] = args[0] as u64;
                mc.regs[1] = args[1] as u64;
                mc.regs[30] = 0;
            }
        }
    }
}

/// The stack pointer a trap's recovery enters its function with, from a
/// 16-aligned `sp`: `sp` itself (AAPCS64 calls push nothing; x30 is 0).
/// The arguments go in registers ([`write_trap_regs`]), not here.
///
/// # Safety
/// None beyond the type's; `unsafe` to match the other architectures.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    sp
}

/// Asks the CPU to bring the cache line holding `addr` closer
/// (`prfm pldl1keep`: into L1, for a load), ahead of a switch that will read
/// it: a scheduler warms the next context's stack while the current one
/// runs. A hint only: it reads nothing the program can see and never
/// faults, whatever the address.
#[inline(always)]
pub fn prefetch(addr: usize) {
    // SAFETY: a prefetch changes no register, flag or memory, and faults
    // on no address.
    unsafe {
        asm!(
            "prfm pldl1keep, [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// A valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
/// `args` is the request and its five arguments; returns valgrind's answer,
/// or `default` when not running under valgrind, where the sequence below
/// does nothing (four rotations of x12 by 128 bits in all, and an `orr` of
/// x10 with itself).
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but x3 (an output) and
    // read `args` only under valgrind, which then reads the six words.
    unsafe {
        asm!(
            // The preamble valgrind recognises: x12 rotated by 3, 13, 51
            // and 61 bits, back to itself.
            "ror x12, x12, #3",
            "ror x12, x12, #13",
            "ror x12, x12, #51",
            "ror x12, x12, #61",
            // The request: x3 = client_request(x4).
            "orr x10, x10, x10",
            in("x4") args.as_ptr(),
            inout("x3") default => result,
            options(nostack),
        );
    }
    result
}
