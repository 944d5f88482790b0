//! The context switch for s390x, the 64-bit ELF ABI of z/Architecture
//! (big-endian, Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp` (r15). At
//! `sp` lies a *switch frame* of two doublewords:
//!
//! ```text
//!   sp +  8  r11            (stored by hand: LLVM reserves it as the frame pointer)
//!   sp +  0  continuation   (where the context goes on: label 2 of its switch)
//! ```
//!
//! The s390x ELF ABI (the zSeries ELF Application Binary Interface
//! Supplement, "Register usage") makes r6 to r13, r15 (the stack pointer)
//! and f8 to f15 callee-saved ("preserved"); r0 to r5 and r14 (the return
//! address), f0 to f7, the vector registers (apart from f8 to f15, the left
//! halves of v8 to v15) and the access registers a2 to a15 are volatile;
//! a0 and a1 hold the thread pointer and belong to the system. Rust's
//! `asm!` refuses r11 (the frame pointer), r15 (the stack pointer), a0 and
//! a1 (the thread pointer) and c0 to c15 (the control registers) as
//! operands: an `asm!` block can neither name nor clobber r11 or r15, so
//! the switch stores r11 itself and moves r15 by hand. Every other
//! callee-saved register is handed to the compiler through the clobber list
//! of the `asm!` block (`clobber_abi("C")` plus r6 to r10, r12, r13 and f8
//! to f15), so the compiler saves only those that are live across the
//! switch, once per function rather than once per switch. a0 and a1, which
//! must stay the running thread's, are never touched.
//!
//! # How a switch runs
//!
//! As on x86_64 (`x86_64.rs` explains the design, and why at length): the
//! running context allocates its switch frame (r15 first: the ABI has no
//! red zone, and a signal is delivered right below r15), stores r11 and its
//! continuation, stores its sp where the caller asked (`link`, in r4) and
//! *jumps* (`br`) to the target's continuation, still on its own stack.
//! There, the second half of the target's own [`switch`] reloads r11 from
//! the target's frame (r3 holds the sp the switcher was given) and moves
//! onto it; the target runs on, with the word in r2 and the switcher's link
//! in r4. The continuation's address comes from `larl` (pc-relative, no
//! call), and it is reached with `br %r1`, an indirect branch through a
//! register other than r14: no `basr`/`brasl` pushes a return address that
//! a `br %r14` would be predicted against, so the CPU's return prediction
//! is left alone. sp never points anywhere but at a live stack. 9
//! instructions a switch: 7 to leave, 2 to arrive.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks like resuming one that was suspended: its continuation is
//! [`trampoline`], which moves onto its stack and calls the entry function
//! with the 160-byte register save area the ABI gives every callee above
//! its sp (where the callee stores r6 to r15), lying over the consumed
//! switch frame:
//!
//! ```text
//!   top                          (8-aligned; what the caller gave init_stack)
//!   top -   8  link              the sp of the side that is suspended (see below)
//!   top -  16  entry             the Rust function the trampoline calls
//!   top -  24 .. top - 160       | the entry's register save area (160 bytes,
//!   top - 168  r11 = data        | from top - 176): the trampoline passes data
//!   top - 176  continuation   -> trampoline   to entry, and writes the back
//!              <- initial sp = top - 176      chain (0) over the continuation
//! ```
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 8` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The
//! trampoline's CFI says: "my caller's CFA is `*link + 16`, its r15 is that
//! CFA, its return address (r14) at CFA - 16 and its r11 at CFA - 8", so
//! an unwinder walks from the coroutine's frames into the frames of the
//! code that resumed it. (s390x's own CFA is the caller's sp plus 160, and
//! its unwinders find r15 from where each prologue saved it; the
//! trampoline states r15's value outright.)
//!
//! # The floating-point control register
//!
//! The ABI keeps the rounding mode and the exception masks of the
//! floating-point control register (FPC) across calls, as C11 treats the
//! floating-point environment. A switch does not keep them per context, for
//! the reason given for MXCSR in `x86_64.rs`: Rust code cannot change them,
//! and every switch would pay for it (`benches/fp_control.rs`).

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer (a doubleword).
pub const STACK_ALIGNMENT: usize = 8;

/// Bytes that [`init_stack`] writes below `top` (the initial sp is
/// `top - INIT_FRAME_SIZE`).
pub const INIT_FRAME_SIZE: usize = 176;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it: none (s390x has no red zone; a callee's scratch is
/// the save area its caller gives it above its sp).
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 0;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`).
pub const ENTRY_RESERVE: usize = 12 * 1024;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`, which
/// documents what it bounds): 64 KiB, as on powerpc64le (each frame gives
/// its callee a 160-byte save area, and a panic's frames are deep).
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    continuation: unsafe extern "C" fn(),
    r11: usize,
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    continuation: dead_continuation,
    r11: 0,
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
        // with r3 = the dead sp and r4 = the caller's link, which now holds
        // the caller's sp. Put the dead sp back in the link (the layer
        // above then still finds its context dead), and jump back to the
        // caller's continuation with r3 = its sp and the word 0, as a
        // switch from here would.
        "lgr %r1, %r3",
        "lg %r3, 0(%r4)",
        "stg %r1, 0(%r4)",
        "lghi %r2, 0",
        "lg %r1, 0(%r3)",
        "br %r1",
    )
}

/// Writes the first frame of a new context below `top` and returns the
/// stack pointer to switch to. The first switch into it calls
/// `entry(arg, from, data)` on this stack, where `arg` is the word passed to
/// that switch and `from` the sp of the context that switched.
///
/// # Safety
/// `top` must be 8-aligned and the [`INIT_FRAME_SIZE`] bytes below it must
/// be writable memory of a stack that nothing else uses.
#[inline]
pub unsafe fn init_stack(top: usize, entry: super::EntryFn, data: usize) -> usize {
    debug_assert_eq!(top % STACK_ALIGNMENT, 0);
    let sp = top - INIT_FRAME_SIZE;
    let trampoline = trampoline as *const () as usize;
    let entry = entry as *const () as usize;
    // SAFETY: the caller promises that [top - 176, top) is writable stack
    // memory; `sp` is 8-aligned because `top` is. The continuation, r11
    // (data), entry and the link; the save area between is the entry's.
    unsafe {
        let words = sp as *mut usize;
        words.write(trampoline);
        words.add(1).write(data);
        ((top - SPARE_OFFSET) as *mut usize).write(entry);
        ((top - LINK_OFFSET) as *mut usize).write(0);
    }
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with r15 still on the switcher's stack, r3 = our initial sp, r2 = arg
/// and r4 = the switcher's link, which holds the switcher's sp.
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
        // which that check skips (and which makes unwinders look the
        // resumer's continuation up as it is, not as a return address
        // minus one).
        ".cfi_signal_frame",
        // CFA = *(r15 + 168) + 16, that is the link word (r15 = top - 176
        // where entry is called, the link at top - 8) plus the size of the
        // switch frame it points at:
        // DW_CFA_def_cfa_expression (0x0f), 6 bytes of expression:
        //   DW_OP_breg15 (0x70 + 15) 168 (SLEB128: 0xa8 0x01): push r15 + 168;
        //   DW_OP_deref (0x06): replace it by the word there (the link);
        //   DW_OP_plus_uconst (0x23) 16 (0x10): add the frame's size.
        ".cfi_escape 0x0f, 6, 0x7f, 0xa8, 0x01, 0x06, 0x23, 0x10",
        // The resumer's r15 is the CFA itself (its arrival pops the
        // frame): DW_CFA_val_offset (0x14), register 15, offset 0.
        ".cfi_escape 0x14, 15, 0",
        // The resumer's switch frame: the continuation, its return
        // address (r14, DWARF 14, the CIE's return column), and r11.
        ".cfi_offset 14, -16",
        ".cfi_offset 11, -8",
        // Move onto our stack: r15 = top - 176, the entry's register save
        // area above it. entry(arg = r2, from = the switcher's sp, data =
        // our frame's r11 doubleword); no other reserved register matters
        // to entry, which saves what it uses.
        "lgr %r15, %r3",
        "lg %r3, 0(%r4)",
        "lg %r4, 8(%r15)",
        // The back chain: 0, which ends back-chain walks (the word held
        // our continuation, which has run).
        "mvghi 0(%r15), 0",
        // Enter entry as by `basr %r14, %r1`, with the return address it
        // would write (label 3, for unwinders) put into r14 by hand: `basr`
        // would also push it onto the return predictor, and entry never
        // returns, so the first return the resumer runs after the
        // coroutine's life would mispredict.
        "lg %r1, 160(%r15)",
        "larl %r14, 3f",
        "br %r1",
        // entry never returns; if it did, trap rather than run garbage:
        // the two bytes 0 are no instruction (SIGILL).
        "3:",
        ".2byte 0",
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
    // other context may change is an output or clobber below, except r11
    // and r15, which the block saves and restores itself. The frame is
    // below r15 only once r15 has moved (no red zone here).
    unsafe {
        asm!(
            // Our switch frame: r15 first, then our continuation (label 2,
            // from `larl`, pc-relative) and r11 (the frame pointer, which
            // asm! cannot name).
            "lay %r15, -16(%r15)",
            "larl %r1, 2f",
            "stg %r1, 0(%r15)",
            "stg %r11, 8(%r15)",
            // Publish our sp, and jump to the target's continuation, still
            // on our stack: the target moves to its own.
            "stg %r15, 0(%r4)",
            "lg %r1, 0(%r3)",
            "br %r1",
            "2:",
            // Here a context has jumped to our continuation, with r15
            // still its own, r3 our sp, r2 the word and r4 its link. Reload
            // r11 from our frame, and move onto our stack past it.
            "lg %r11, 8(%r3)",
            "la %r15, 16(%r3)",
            inout("r2") arg => word,
            inout("r3") to => _,
            inout("r4") link => back,
            // s390x ELF ABI: r6 to r13 are callee-saved (r11 is above), and
            // so are f8 to f15; declaring them clobbered makes the compiler
            // save those that are live.
            lateout("r6") _, lateout("r7") _, lateout("r8") _, lateout("r9") _,
            lateout("r10") _, lateout("r12") _, lateout("r13") _,
            lateout("f8") _, lateout("f9") _, lateout("f10") _, lateout("f11") _,
            lateout("f12") _, lateout("f13") _, lateout("f14") _, lateout("f15") _,
            // Everything the ABI lets a call clobber (r0, r1, r5, r14, f0
            // to f7, the vector registers, a2 to a15, the condition code)
            // is clobbered here; r1 is the switch's scratch.
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
    // moves onto its own stack and restores what it saved (r11), and
    // nothing of ours is used again.
    unsafe {
        asm!(
            // Branch to the target's continuation, still on our stack, with
            // r3 = its sp, r2 = the word and r4 = the link, as `switch` does
            // after publishing its sp (r1 is the scratch there too).
            "lg %r1, 0(%r3)",
            "br %r1",
            in("r2") arg,
            in("r3") to,
            in("r4") link,
            options(noreturn, nostack),
        )
    }
}

/// The stack pointer of a signal's context: r15 (`gregs[15]`) of an
/// `SA_SIGINFO` handler's `ucontext_t`.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn context_sp(ucontext: *const core::ffi::c_void) -> usize {
    // SAFETY: as the caller promises.
    unsafe { (*ucontext.cast::<libc::ucontext_t>()).uc_mcontext.gregs[15] as usize }
}

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: the PSW's address (pc), r15 (sp), the first two
/// arguments (r2, r3) and r14, the return address (0, which ends
/// backtraces). The PSW's mask (the addressing mode, the condition code) is
/// the interrupted code's, and stays.
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
        let mc = &mut (*uc).uc_mcontext;
        mc.psw.addr = pc as u64;
        mc.gregs[15] = sp as u64;
        mc.gregs[2] = args[0] as u64;
        mc.gregs[3] = args[1] as u64;
        mc.gregs[14] = 0;
    }
}

/// The stack pointer a trap's recovery enters its function with, from an
/// 8-aligned `sp`: `sp - 160`, the register save area the ABI gives a
/// callee above its sp (where its prologue stores r6 to r15), written 0:
/// its first doubleword is the back chain, which ends back-chain walks.
/// The arguments go in registers ([`write_trap_regs`]), not here.
///
/// # Safety
/// The 160 bytes below `sp` are writable memory of the stack.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    let frame = sp - 160;
    // SAFETY: as the caller promises.
    unsafe { core::ptr::write_bytes(frame as *mut usize, 0, 20) };
    frame
}

/// Asks the CPU to bring the cache line holding `addr` closer, for a load
/// (`pfd 1`: prefetch data, fetch), ahead of a switch that will read it:
/// a scheduler warms the next context's stack while the current one runs.
/// A hint only: it reads nothing the program can see and never faults,
/// whatever the address.
#[inline(always)]
pub fn prefetch(addr: usize) {
    // SAFETY: a prefetch changes no register, condition code or memory,
    // and faults on no address.
    unsafe {
        asm!(
            // The address is base + displacement; `reg_addr` keeps r0,
            // which a base field reads as zero, out.
            "pfd 1, 0({addr})",
            addr = in(reg_addr) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// A valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
/// `args` is the request and its five arguments; returns valgrind's answer,
/// or `default` when not running under valgrind, where the sequence below
/// changes no register (`lr` of a register with itself writes its low word
/// back, and sets no condition code).
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but r3 (an output) and
    // read `args` only under valgrind, which then reads the six words.
    unsafe {
        asm!(
            // The preamble valgrind recognises: r15, r1, r2 and r3 loaded
            // with themselves.
            "lr %r15, %r15",
            "lr %r1, %r1",
            "lr %r2, %r2",
            "lr %r3, %r3",
            // The request: r3 = client_request(r2).
            "lr %r2, %r2",
            in("r2") args.as_ptr(),
            inout("r3") default => result,
            options(nostack, preserves_flags),
        );
    }
    result
}
