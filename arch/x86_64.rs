//! The context switch for x86_64, System V ABI (Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of three words:
//!
//! ```text
//!   sp + 16  rbp            (pushed by hand: LLVM reserves it as the frame pointer)
//!   sp +  8  rbx            (pushed by hand: LLVM reserves it, so asm! cannot name it)
//!   sp +  0  continuation   (pushed by the `call`: label 2 in `switch`)
//! ```
//!
//! Every other callee-saved register is handed to the compiler through the
//! clobber list of the `asm!` block (`clobber_abi("sysv64")` plus r12 to r15),
//! so the compiler saves only those that are live across the switch, once
//! per function rather than once per switch.
//!
//! # How a switch runs
//!
//! The running context pushes rbp and rbx and *calls the target's
//! continuation* (the word at the target's sp); the call pushes its own
//! continuation, which completes its switch frame. The code at the
//! target's continuation, which is the second half of the target's own
//! `switch`, then finishes the job on the target's behalf: it stores the
//! caller's sp where the caller asked (`link`) and hands it over in rax,
//! moves to its own stack (the caller passed its sp in rsi) and pops its
//! rbx and rbp. One `call` and no `ret`: 8 instructions a switch.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline`], which does that second half and calls the entry function:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  8  link               the sp of the side that is suspended (see below)
//!   top - 16  entry              the Rust function the trampoline calls
//!   top - 24  rbp = 0            ends frame-pointer walks
//!   top - 32  rbx = data         the trampoline passes it to entry
//!   top - 40  continuation    -> trampoline
//!             <- initial sp = top - 40
//! ```
//!
//! # Unwinding across the boundary
//!
//! [`switch`] stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 8` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The
//! trampoline's CFI says: "my caller's CFA is `*link + 24`, its return
//! address is at CFA - 24, its rbx at CFA - 16 and its rbp at CFA - 8", so
//! an unwinder (Rust's `Backtrace`, gdb's `bt`, a panic) walks from the
//! coroutine's frames into the frames of the code that resumed it.
//!
//! # MXCSR and the x87 control word
//!
//! The System V ABI makes the control bits of MXCSR and the x87 control word
//! callee-saved. [`switch`] does not keep them per context: Rust offers no
//! stable way to change the rounding mode or exception masks, so they never
//! differ between contexts in Rust code, and saving them (`stmxcsr`/`ldmxcsr`,
//! `fnstcw`/`fldcw`) would more than double the cost of a switch
//! (`benches/fp_control.rs`). A body that changes them through foreign code
//! must restore them before it suspends. This is the choice corosensei makes
//! too; boost.context keeps them.

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer at a `call`.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 40;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    continuation: unsafe extern "C" fn(),
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    continuation: dead_continuation,
};

/// The sp of a context that cannot be resumed: a switch to it returns at
/// once with the word 0 (and stores nothing through `link`). The layer
/// above leaves it where a finished context's sp was, so that resuming it
/// costs no check of its own.
pub fn dead_sp() -> usize {
    &DEAD_FRAME as *const DeadFrame as usize
}

/// The continuation of the dead frame: switches straight back to the
/// caller (whose continuation is at the top of its stack), passing 0.
///
/// # Safety
/// Only [`switch`] may enter it, as the continuation of [`dead_sp`]'s
/// frame; it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn dead_continuation() {
    naked_asm!(
        // The caller's own sp is where it must go back to; the sp it asks
        // to have stored goes to a word below the stack pointer, which no
        // one reads.
        "mov rsi, rsp",
        "lea rdx, [rsp - 8]",
        "xor edi, edi",
        "jmp qword ptr [rsp]",
    )
}

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
    let trampoline = trampoline as *const () as usize;
    let words: [usize; 5] = [trampoline, data, 0, entry as *const () as usize, 0];
    // SAFETY: the caller promises that [top - 40, top) is writable stack
    // memory; `sp` is 8-aligned because `top` is 16-aligned.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 5) };
    sp
}

/// The continuation of a fresh context: called by the `call` in [`switch`]
/// with rsp still on the caller's stack, rdi = arg, rsi = our initial sp,
/// rdx = where the caller wants its sp stored.
///
/// Its CFI sends unwinders through the link word to the resumer's frames.
///
/// # Safety
/// Only [`switch`] may enter it, into a frame that [`init_stack`] laid
/// out; it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn trampoline() {
    naked_asm!(
        ".cfi_startproc simple",
        // gdb checks that frame addresses grow towards the caller; the
        // resumer's stack may lie anywhere, so call this a signal frame,
        // which that check skips.
        ".cfi_signal_frame",
        // CFA = *(rsp + 8) + 24, that is the link word plus the size of the
        // switch frame it points at:
        // DW_CFA_def_cfa_expression, 5 bytes:
        //   DW_OP_breg7 (rsp) 8; DW_OP_deref; DW_OP_plus_uconst 24
        ".cfi_escape 0x0f, 5, 0x77, 0x08, 0x06, 0x23, 0x18",
        // The resumer's switch frame: continuation, rbx, rbp.
        ".cfi_offset rip, -24",
        ".cfi_offset rbx, -16",
        ".cfi_offset rbp, -8",
        // The second half of the caller's switch, as in `switch`: publish
        // its sp, move to our stack, pop our rbx (data) and rbp (0).
        "mov [rdx], rsp",
        "mov rax, rsp",
        "lea rsp, [rsi + 8]",
        "pop rbx",
        "pop rbp",
        // entry(arg = rdi, from = rsi, data = rdx); rsp = top - 16 is
        // 16-aligned here, as the ABI requires at a call.
        "mov rsi, rax",
        "mov rdx, rbx",
        "call qword ptr [rsp]",
        // entry never returns; if it did, trap rather than run garbage.
        "ud2",
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
/// a switch away from it) that is resumed nowhere else, on a stack that is
/// still alive; `link` must be valid for a write of one word.
#[inline(always)]
pub unsafe fn switch(arg: usize, to: usize, link: *mut usize) -> (usize, usize) {
    let (ret_arg, from): (usize, usize);
    // SAFETY: the caller vouches for `to` and `link`. Every register the
    // other context may change is an output or clobber below, except rbx,
    // rbp and rsp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Start our switch frame with the two registers LLVM reserves
            // (rbp: frame pointer; rbx: base pointer), then call the
            // target's continuation: the call pushes ours, at label 2.
            "push rbp",
            "push rbx",
            "call qword ptr [rsi]",
            "2:",
            // Here a context has called our continuation: rsp is its sp,
            // rsi our own, rdx where it wants its sp. Publish its sp there
            // and in rax, move to our stack past our continuation, and pop
            // our rbx and rbp.
            "mov [rdx], rsp",
            "mov rax, rsp",
            "lea rsp, [rsi + 8]",
            "pop rbx",
            "pop rbp",
            inout("rdi") arg => ret_arg,
            inout("rsi") to => _,
            inout("rdx") link => _,
            lateout("rax") from,
            // System V: r12 to r15 are callee-saved, so the other context
            // may have changed them; declaring them clobbered makes the
            // compiler save those that are live.
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            // Everything the ABI lets a call clobber (rcx, r8 to r11, xmm0
            // to xmm15, the x87 stack, flags) is clobbered here.
            clobber_abi("sysv64"),
        );
    }
    (ret_arg, from)
}

/// Asks the CPU to bring the cache line holding `addr` closer
/// (`prefetcht0`: into every cache level), ahead of a switch that will read
/// it: a scheduler warms the next context's stack while the current one
/// runs. A hint only: it reads nothing the program can see and never
/// faults, whatever the address.
#[inline(always)]
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
pub fn prefetch(addr: usize) {
    // SAFETY: a prefetch changes no register, flag or memory, and faults
    // on no address.
    unsafe {
        asm!(
            "prefetcht0 [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// A valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
/// `args` is the request and its five arguments; returns valgrind's answer,
/// or `default` when not running under valgrind, where the sequence below
/// does nothing (four rotations of rdi by 128 bits in all, and an exchange
/// of rbx with itself).
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but rdx (an output) and
    // read `args` only under valgrind, which then reads the six words.
    unsafe {
        asm!(
            // The preamble valgrind recognises: rdi rotated by 3, 13, 61
            // and 51 bits, back to itself.
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            // The request: rdx = client_request(rax).
            "xchg rbx, rbx",
            in("rax") args.as_ptr(),
            inout("rdx") default => result,
            options(nostack),
        );
    }
    result
}
