//! The context switch for 32-bit ARM (ARMv7-A with VFP), AAPCS with the
//! hard-float variant (armv7-unknown-linux-gnueabihf, Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of four words:
//!
//! ```text
//!   sp + 12  continuation   (where the context goes on: label 2 of its switch)
//!   sp +  8  r11            (stored by hand: the frame pointer of ARM code)
//!   sp +  4  r7             (stored by hand: the frame pointer of Thumb code)
//!   sp +  0  r6             (stored by hand: LLVM reserves it as the base pointer)
//! ```
//!
//! AAPCS makes r4 to r11 and d8 to d15 callee-saved; r9, the platform
//! register, is one more callee-saved register on Linux (AAPCS leaves it
//! to the platform; the Linux ABI uses it for nothing else). LLVM reserves
//! r6 as the base pointer and the frame pointer, which is r11 in ARM code
//! and r7 in Thumb code, so an `asm!` block can neither name them as
//! operands nor clobber them: the switch stores them itself. It stores r7
//! in ARM code too, where the compiler would let it be a clobber: the
//! frame needs a fourth word anyway (sp stays 8-aligned, as AAPCS requires
//! at every call), and so the same frame and the same instructions serve
//! both instruction sets. Every other callee-saved register (r4, r5, r8,
//! r9, r10, d8 to d15) is handed to the compiler through the clobber list
//! of the `asm!` block (`clobber_abi("C")` plus those), so the compiler
//! saves only those that are live across the switch, once per function
//! rather than once per switch. d16 to d31 are caller-saved (and this
//! target's VFP, VFPv3-D16, does not have them). sp is r13 and pc is r15;
//! lr (r14) and ip (r12) are caller-saved, and the switch uses ip as its
//! scratch.
//!
//! # ARM and Thumb code
//!
//! Rust's armv7-unknown-linux-gnueabihf compiles to ARM code (the
//! 4-byte instruction set); Debian's armhf glibc, which the tests link
//! statically, compiles its C functions to Thumb-2 code (its hand-written
//! `memcpy` and `memset` are ARM code). A branch to an address whose bit 0
//! is set enters Thumb state, one whose bit 0 is clear ARM state, when it
//! is a branch that *interworks*: `bx`, `blx` and, on ARMv7, a load into
//! pc (`ldr pc`). Every branch to a continuation or an entry below is one
//! of those, and every address it goes to is either a function pointer
//! (which has bit 0 set exactly when the function is Thumb code) or a
//! label's address from `adr`, to which a Thumb build (`target_feature =
//! "thumb-mode"`, as on thumbv7neon-unknown-linux-gnueabihf) adds bit 0
//! with one more instruction. A trap's recovery sets the state bit (T) in
//! the signal context's CPSR from bit 0 of the pc it writes
//! ([`write_trap_regs`]): the fault may have stopped Thumb code (glibc's
//! `strnlen`, say: `tests/trap.rs`) while the recovery's entry is ARM code.
//!
//! # How a switch runs
//!
//! As on x86_64 (`x86_64.rs` explains the design, and why at length): the
//! running context pushes r6, r7, r11 and its continuation (`adr`), stores
//! its sp where the caller asked (`link`, in r2) and *branches* to the
//! target's continuation (`ldr pc`), still on its own stack. There, the
//! second half of the target's own [`switch`] moves onto the target's
//! frame (r1 holds the sp the switcher was given) and pops r6, r7 and r11;
//! the target runs on, with the word in r0 and the switcher's link in r2.
//! No `bl`/`blx` and no return: the return-address predictor (the return
//! stack) is left alone. The ARM cores predict as returns `bx lr`, `mov
//! pc, lr`, and loads of pc through sp (`pop {pc}`, `ldm sp!, {..., pc}`,
//! `ldr pc, [sp], #4`); a load of pc through r1 is an ordinary indirect
//! branch. sp never points anywhere but at a live stack. 6 instructions a
//! switch in ARM code (24 bytes): 4 to leave, 2 to arrive; 7 in Thumb code.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline`], which does that second half and calls the entry function:
//!
//! ```text
//!   top                          (8-aligned; what the caller gave init_stack)
//!   top -  4  link               the sp of the side that is suspended (see below)
//!   top -  8  entry              the Rust function the trampoline calls
//!   top - 12  continuation    -> trampoline
//!   top - 16  r11 = 0            ends frame-pointer walks (ARM code)
//!   top - 20  r7 = 0             ends frame-pointer walks (Thumb code)
//!   top - 24  r6 = data          the trampoline passes it to entry
//!             <- initial sp = top - 24
//! ```
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 4` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads).
//!
//! ARM Linux does not unwind with DWARF CFI (`.eh_frame`): panics and
//! backtraces (libgcc's unwinder, which Rust's std uses) and gdb read the
//! exception tables of the ARM EHABI (`.ARM.exidx`, `.ARM.extab`), whose
//! entries are small programs of unwind opcodes over a virtual stack
//! pointer (vsp). The trampoline's entry says: "vsp = sp + 4 (the link
//! word); load vsp from there (the resumer's sp); pop r6, r7, r11 and the
//! return address (lr) from the resumer's switch frame", so an unwinder
//! walks from the coroutine's frames into the frames of the code that
//! resumed it, with the resumer's sp (vsp after the pops) as it will be
//! when its switch returns.
//!
//! # FPSCR
//!
//! AAPCS gives FPSCR's control bits (rounding mode, flush-to-zero, default
//! NaN, the exception traps) to the whole program: only "specific support
//! functions that affect the global state of the application" (C's
//! `fesetround`) may change them, not a call. A switch does not keep them
//! per context, for the reason given for MXCSR in `x86_64.rs`: Rust code
//! cannot change them, and every switch would pay for it
//! (`benches/fp_control.rs`).

use core::arch::{asm, naked_asm};

/// The alignment AAPCS requires of the stack pointer at a public interface
/// (a call).
pub const STACK_ALIGNMENT: usize = 8;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 24;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 4;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 8;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it (its red zone): none: AAPCS on Linux has no red zone.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 0;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`): within
/// it in tests/stack_use.rs under qemu-arm.
pub const ENTRY_RESERVE: usize = 12 * 1024;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`, which
/// documents what it bounds).
pub const MIN_STACK_SIZE: usize = 32 * 1024;

/// The instruction that puts the switch's continuation (label 2, a
/// forward local label) into ip: `adr` in ARM code; in Thumb code `adr`
/// and an `orr` of the Thumb bit, so that the branch to it stays in Thumb
/// state (`adr` gives the label's plain address).
#[cfg(not(target_feature = "thumb-mode"))]
macro_rules! continuation_into_ip {
    () => {
        "adr ip, 2f"
    };
}
#[cfg(target_feature = "thumb-mode")]
macro_rules! continuation_into_ip {
    () => {
        "adr ip, 2f\n orr ip, ip, #1"
    };
}

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    r6: usize,
    r7: usize,
    r11: usize,
    continuation: unsafe extern "C" fn(),
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    r6: 0,
    r7: 0,
    r11: 0,
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
        // with r1 = the dead sp and r2 = the caller's link, which now holds
        // the caller's sp. Put the dead sp back in the link (the layer
        // above then still finds its context dead), and branch back to the
        // caller's continuation with r1 = its sp and the word 0, as a
        // switch from here would (a load into pc: interworking, and not
        // through sp, so not taken for a return).
        "mov r3, r1",
        "ldr r1, [r2]",
        "str r3, [r2]",
        "mov r0, #0",
        "ldr pc, [r1, #12]",
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
    let words: [usize; 6] = [data, 0, 0, trampoline, entry as *const () as usize, 0];
    // SAFETY: the caller promises that [top - 24, top) is writable stack
    // memory; `sp` is 8-aligned because `top` is.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 6) };
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with sp still on the switcher's stack, r1 = our initial sp, r0 = arg and
/// r2 = the switcher's link, which holds the switcher's sp.
///
/// Its unwind entry (ARM EHABI) sends unwinders through the link word to
/// the resumer's frames.
///
/// # Safety
/// Only a switch may enter it, into a frame that [`init_stack`] laid out;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn trampoline() {
    naked_asm!(
        // The function's entry in the EHABI index (.ARM.exidx), from here
        // to `.fnend`.
        ".fnstart",
        // Its unwind opcodes, run by an unwinder that stands in our frame
        // (at the call below, where sp = top - 8), with vsp = sp:
        //   0x00       vsp += 4: vsp = top - 4, the link word;
        //   0x82 0x00  pop {r13} under the mask {r15-r12} = 0b0010,
        //              {r11-r4} = 0: vsp = *vsp, the word in the link,
        //              which is the resumer's sp (popping r13 sets vsp to
        //              the word, with no increment after);
        //   0x84 0x8c  pop {r6, r7, r11, r14} under the masks {r15-r12} =
        //              0b0100 (r14) and {r11-r4} = 0b1000_1100 (r11, r7,
        //              r6), in ascending order from vsp: the resumer's
        //              switch frame, its continuation taken as the return
        //              address (lr, which the unwinder's closing "finish"
        //              copies to pc); vsp = the resumer's sp + 16, as it
        //              is when its switch is over.
        // (`.unwind_raw 0`: the opcodes are the whole program, with no
        // stack adjustment of ours for the assembler to add. Five bytes:
        // the assembler puts them in .ARM.extab under the personality
        // routine __aeabi_unwind_cpp_pr1, which the unwinder provides.)
        ".unwind_raw 0, 0x00, 0x82, 0x00, 0x84, 0x8c",
        // As every arrival: move to our frame and pop our r6 (data), r7
        // and r11 (0); ip gets the continuation (this function), unused.
        // sp = top - 8, 8-aligned, with entry at sp and the link above it.
        "mov sp, r1",
        "pop {{r6, r7, r11, ip}}",
        // entry(arg = r0, from = the switcher's sp, data = r6), entered
        // as by `blx r3`, with the return address it would write (label 3,
        // for unwinders) put into lr by hand: `blx` would also push it
        // onto the return predictor, and entry never returns, so the first
        // return the resumer runs after the coroutine's life would
        // mispredict. `bx` interworks, should entry be Thumb code.
        "ldr r1, [r2]",
        "mov r2, r6",
        "ldr r3, [sp]",
        "adr lr, 3f",
        "bx r3",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "udf #0",
        ".fnend",
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
    // other context may change is an output or clobber below, except r6,
    // r7, r11 and sp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Our continuation, label 2, computed pc-relative (`adr`; a
            // `bl` would put it on the return predictor, with no return
            // ever to match; see `continuation_into_ip`).
            continuation_into_ip!(),
            // Our switch frame: r6 (LLVM's base pointer), r7 and r11 (the
            // frame pointers of Thumb and ARM code), which cannot be
            // clobbers, and the continuation; `push` stores in ascending
            // register order, ip (r12) at the top (sp + 12). Below sp
            // first: Linux gives ARM no red zone.
            "push {{r6, r7, r11, ip}}",
            // Publish our sp, and branch to the target's continuation,
            // still on our stack: the target moves to its own. A load into
            // pc interworks (bit 0 picks ARM or Thumb state) and, not
            // being through sp, is no return to the predictor.
            "str sp, [r2]",
            "ldr pc, [r1, #12]",
            "2:",
            // Here a context has branched to our continuation, with sp
            // still its own, r1 our sp, r0 the word and r2 its link. Move
            // onto our frame and pop r6, r7 and r11 (ip gets our own
            // continuation back, unused: one `pop` in ARM and Thumb code
            // alike, where `add sp, r1, #16` has no Thumb encoding).
            "mov sp, r1",
            "pop {{r6, r7, r11, ip}}",
            inout("r0") arg => word,
            inout("r1") to => _,
            inout("r2") link => back,
            // AAPCS: r4, r5, r8, r9 and r10 are callee-saved (r9 on Linux),
            // and so are d8 to d15; declaring them clobbered makes the
            // compiler save those that are live.
            lateout("r4") _, lateout("r5") _, lateout("r8") _, lateout("r9") _,
            lateout("r10") _,
            lateout("d8") _, lateout("d9") _, lateout("d10") _, lateout("d11") _,
            lateout("d12") _, lateout("d13") _, lateout("d14") _, lateout("d15") _,
            // Everything the ABI lets a call clobber (r0 to r3, ip, lr, d0
            // to d7, d16 to d31, the flags) is clobbered here; ip is the
            // switch's scratch.
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
    // moves onto its own stack and restores what it saved (r6, r7, r11),
    // and nothing of ours is used again.
    unsafe {
        asm!(
            // Load the target's continuation into pc, still on our stack,
            // with r1 = its sp, r0 = the word and r2 = the link, as `switch`
            // does after publishing its sp.
            "ldr pc, [r1, #12]",
            in("r0") arg,
            in("r1") to,
            in("r2") link,
            options(noreturn, nostack),
        )
    }
}

/// The stack pointer of a signal's context: sp (`arm_sp`) of an
/// `SA_SIGINFO` handler's `ucontext_t`.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn context_sp(ucontext: *const core::ffi::c_void) -> usize {
    // SAFETY: as the caller promises.
    unsafe { (*ucontext.cast::<libc::ucontext_t>()).uc_mcontext.arm_sp as usize }
}

/// CPSR's Thumb state bit, T.
#[cfg(feature = "std")]
const CPSR_T: libc::c_ulong = 1 << 5;

/// CPSR's IT bits (the state of a Thumb `it` block: IT[1:0] in bits 25 and
/// 26, IT[7:2] in bits 10 to 15), which a branch clears.
#[cfg(feature = "std")]
const CPSR_IT: libc::c_ulong = (0b11 << 25) | (0b11_1111 << 10);

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: pc, sp, the first two arguments (r0, r1), the
/// link register lr (0, which ends backtraces) and CPSR's execution state:
/// as a branch to `pc` would, T from bit 0 of `pc` (which the kernel
/// resumes without it) and no `it` block, since the fault may have stopped
/// code of the other instruction set.
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
    let thumb = pc & 1 != 0;
    // SAFETY: as the caller promises, a live ucontext_t the kernel restores
    // from when the handler returns.
    unsafe {
        let mc = &mut (*uc).uc_mcontext;
        mc.arm_pc = (pc & !1) as libc::c_ulong;
        mc.arm_sp = sp as libc::c_ulong;
        mc.arm_r0 = args[0] as libc::c_ulong;
        mc.arm_r1 = args[1] as libc::c_ulong;
        mc.arm_lr = 0;
        mc.arm_cpsr &= !(CPSR_T | CPSR_IT);
        if thumb {
            mc.arm_cpsr |= CPSR_T;
        }
    }
}

/// The stack pointer a trap's recovery enters its function with, from an
/// 8-aligned `sp`: `sp` itself (an AAPCS call pushes nothing; lr is 0).
/// The arguments go in registers ([`write_trap_regs`]), not here.
///
/// # Safety
/// None beyond the type's; `unsafe` to match the other architectures.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    sp
}

/// Asks the CPU to bring the cache line holding `addr` closer (`pld`:
/// preload data), ahead of a switch that will read it: a scheduler warms
/// the next context's stack while the current one runs. A hint only: it
/// reads nothing the program can see and never faults, whatever the
/// address.
#[inline(always)]
pub fn prefetch(addr: usize) {
    // SAFETY: a preload changes no register, flag or memory, and faults on
    // no address.
    unsafe {
        asm!(
            "pld [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// A valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
/// `args` is the request and its five arguments; returns valgrind's answer,
/// or `default` when not running under valgrind, where the sequence below
/// does nothing (four rotations of ip by 64 bits in all, and an `orr` of
/// r10 with itself). valgrind recognises it in ARM and in Thumb code.
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but r3 (an output) and
    // read `args` only under valgrind, which then reads the six words.
    unsafe {
        asm!(
            // The preamble valgrind recognises: ip (r12) rotated right by
            // 3, 13, 29 and 19 bits, back to itself.
            "mov ip, ip, ror #3",
            "mov ip, ip, ror #13",
            "mov ip, ip, ror #29",
            "mov ip, ip, ror #19",
            // The request: r3 = client_request(r4).
            "orr r10, r10, r10",
            in("r4") args.as_ptr(),
            inout("r3") default => result,
            options(nostack, preserves_flags),
        );
    }
    result
}
