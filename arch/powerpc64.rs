//! The context switch for powerpc64le, the 64-bit ELF V2 ABI (OpenPOWER,
//! little-endian, Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp` (r1). At
//! `sp` lies a *switch frame* of six doublewords, laid out as an ELFv2
//! stack frame (a back chain at 0, a return address where the LR save
//! doubleword is, the TOC pointer where the TOC save doubleword is):
//!
//! ```text
//!   sp + 40  r31            (stored by hand: the frame pointer)
//!   sp + 32  r30            (stored by hand: LLVM reserves it, so asm! cannot name it)
//!   sp + 24  r2             (stored by hand: the TOC pointer; the TOC save doubleword)
//!   sp + 16  continuation   (where the context goes on, label 2 of its switch; the LR save doubleword)
//!   sp +  8  r29            (stored by hand: LLVM reserves it, the base pointer)
//!   sp +  0  back chain     (sp + 48, the sp before the switch: `stdu` stores it)
//! ```
//!
//! ELFv2 makes r14 to r31, f14 to f31, v20 to v31, vrsave and the fields
//! cr2 to cr4 of the condition register nonvolatile (callee-saved), and r1
//! (the stack pointer) and r2 (the TOC pointer) preserved across a call.
//! Rust's `asm!` refuses r2 and r13 (reserved by the system), r29 and r30
//! (used internally by LLVM: r29 as the base pointer) and r31 (the frame
//! pointer) as operands, and lr, ctr and vrsave too (`clobber_abi` clobbers
//! lr and ctr): an `asm!` block can neither name nor clobber r2, r29, r30
//! or r31, so the switch stores them itself. Every other nonvolatile
//! register is handed to the compiler through the clobber list of the
//! `asm!` block (`clobber_abi("C")` plus r14 to r28, f14 to f31, v20 to v31
//! and cr2 to cr4), so the compiler saves only those that are live across
//! the switch, once per function rather than once per switch. r13, the
//! thread pointer, which must stay the running thread's, is never touched.
//! vrsave is never touched either: ELFv2 code for Linux does not use it
//! (LLVM emits no access to it on this target), so it holds nothing per
//! context.
//!
//! r2 is kept per context rather than assumed: ELFv2 lets a function
//! that needs no TOC keep its caller's r2 (a function called through its
//! global entry point from another module sees that module's TOC), so the
//! value that must survive the switch is whatever r2 held when it began.
//!
//! # How a switch runs
//!
//! As on x86_64 (`x86_64.rs` explains the design, and why at length): the
//! running context allocates its switch frame (`stdu`, which stores the
//! back chain), stores r2, r29, r30, r31 and its continuation, stores its
//! sp where the caller asked (`link`, in r5) and *jumps* (`mtctr` and
//! `bctr`) to the target's continuation, still on its own stack. There,
//! the second half of the target's own [`switch`] reloads r2, r29, r30 and
//! r31 from the target's frame (r4 holds the sp the switcher was given)
//! and moves onto it; the target runs on, with the word in r3 and the
//! switcher's link in r5. No `bl`, `bctrl` or `blr`: the return-address
//! predictor (the link stack) is left alone. The continuation's address is
//! read with `bcl 20,31,$+4`, the form the Power ISA gives (Book I,
//! Branch Instructions, programming note) for obtaining the address of
//! the next instruction among the uses that keep return-address
//! prediction right: POWER cores recognise it and push nothing on the link
//! stack. (POWER8 and POWER9 have no pc-relative addressing, which came
//! with ISA 3.1, and a TOC-relative address would depend on r2 being this
//! module's TOC: see above.) sp never points anywhere but at a live stack.
//! The frame lies where ELFv2 puts the red zone (288 bytes below r1, which
//! signal delivery skips), but the compiler keeps nothing there around the
//! block: an `asm!` block without `nostack` counts as a call, and this one
//! clobbers lr, so the function it is inlined into has a frame of its own.
//! 18 instructions a switch: 13 to leave, 5 to arrive.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks like resuming one that was suspended: its continuation is
//! [`trampoline`], which moves onto its stack and calls the entry function
//! from an ELFv2 minimum frame (32 bytes: back chain, CR save, LR save, TOC
//! save) that lies over the consumed top of the switch frame:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  8  link               the sp of the side that is suspended (see below)
//!   top - 16  entry              the Rust function the trampoline calls
//!   top - 24  (r31)              | the entry's caller's frame, from top - 48: the
//!   top - 32  (r30)              | trampoline writes its back chain (0) over the
//!   top - 40  (r2)               | continuation once it has run; entry may store
//!   top - 48  continuation    -> trampoline    its CR at top - 40 and LR at top - 32
//!   top - 56  r29 = data         the trampoline passes it to entry
//!   top - 64  back chain = top - 16
//!             <- initial sp = top - 64
//! ```
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 8` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The
//! trampoline's CFI says: "my caller's CFA is `*link + 48`, its r29 is at
//! CFA - 40, its return address (lr) at CFA - 32, its r2 at CFA - 24, its
//! r30 at CFA - 16 and its r31 at CFA - 8", so an unwinder walks from the
//! coroutine's frames into the frames of the code that resumed it. The
//! back chain ends at the trampoline's frame (0), so a walker that follows
//! back chains (perf's) stops at the boundary instead of misreading it.
//!
//! # FPSCR and VSCR
//!
//! ELFv2 makes the rounding modes and the exception enables of FPSCR (RN,
//! DRN, NI and VE to XE; and VSCR's non-Java bit NJ) *limited-access*: a
//! function may change them only if that is its purpose, and they are
//! otherwise preserved across calls, as C11 treats the floating-point
//! environment. A switch does not keep them per context, for the reason
//! given for MXCSR in `x86_64.rs`: Rust code cannot change them, and every
//! switch would pay for it (`benches/fp_control.rs`).
//!
//! # Rust 1.95
//!
//! `asm!` on PowerPC was stabilised in Rust 1.95 (rust-lang/rust#147996;
//! before, it needed nightly's `asm_experimental_arch`): on this target the
//! crate needs 1.95, above its `rust-version`.

use core::arch::{asm, naked_asm};

/// The alignment ELFv2 requires of the stack pointer at all times (a
/// quadword).
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 64;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it (its red zone): ELFv2's 288 bytes.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 288;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`): 14.8
/// KiB (15,152 bytes) measured here in a debug build under qemu-ppc64le,
/// 8.5 KiB in a release build: libgcc's unwinder keeps ELFv2's larger
/// register file (32 GPRs, 32 FPRs, 32 vector registers) in every context
/// it makes; 15.5 KiB is the most that still lets a closure of an eighth of
/// `MIN_STACK_SIZE` fit.
pub const ENTRY_RESERVE: usize = 15 * 1024 + 512;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`, which
/// documents what it bounds): 64 KiB here, for the larger entry reserve and
/// a panic's 34 to 51 KB; the page size of this architecture's usual
/// kernels anyway.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    back_chain: usize,
    r29: usize,
    continuation: unsafe extern "C" fn(),
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    back_chain: 0,
    r29: 0,
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
        // with r4 = the dead sp and r5 = the caller's link, which now holds
        // the caller's sp. Put the dead sp back in the link (the layer
        // above then still finds its context dead), and jump back to the
        // caller's continuation with r4 = its sp and the word 0, as a
        // switch from here would (through ctr: see the module docs). r2 is
        // not needed here: the caller's arrival reloads its own.
        "mr 6, 4",
        "ld 4, 0(5)",
        "std 6, 0(5)",
        "li 3, 0",
        "ld 7, 16(4)",
        "mtctr 7",
        "bctr",
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
    let entry = entry as *const () as usize;
    // Back chain, r29 (data), continuation, r2, r30, r31, entry, link.
    let words: [usize; 8] = [top - 16, data, trampoline, 0, 0, 0, entry, 0];
    // SAFETY: the caller promises that [top - 64, top) is writable stack
    // memory; `sp` is 16-aligned because `top` is.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 8) };
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with r1 still on the switcher's stack, r4 = our initial sp, r3 = arg
/// and r5 = the switcher's link, which holds the switcher's sp.
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
        // CFA = *(r1 + 40) + 48, that is the link word (r1 = top - 48
        // where entry is called, the link at top - 8) plus the size of the
        // switch frame it points at:
        // DW_CFA_def_cfa_expression (0x0f), 5 bytes of expression:
        //   DW_OP_breg1 (0x70 + 1: r1 is DWARF register 1) 40 (0x28):
        //     push r1 + 40;
        //   DW_OP_deref (0x06): replace it by the word there (the link);
        //   DW_OP_plus_uconst (0x23) 48 (0x30): add the frame's size.
        ".cfi_escape 0x0f, 5, 0x71, 0x28, 0x06, 0x23, 0x30",
        // The resumer's switch frame: r29 (DWARF 29), the continuation,
        // its return address (lr, DWARF 65, the CIE's return column), r2
        // (DWARF 2: saying where it is also keeps libgcc from guessing r2
        // from the code at the return address), r30 and r31.
        ".cfi_offset 29, -40",
        ".cfi_offset 65, -32",
        ".cfi_offset 2, -24",
        ".cfi_offset 30, -16",
        ".cfi_offset 31, -8",
        // Take data from our frame's r29 doubleword (no other reserved
        // register matters to entry, which saves what it uses), and move
        // onto our stack: r1 = top - 48, the entry's caller's frame.
        "2:",
        "ld 6, 8(4)",
        "addi 1, 4, 16",
        // The return address entry is entered with (see below): label 3,
        // found from our continuation (label 2, this function's start, the
        // word at r1 now; no PC-relative address before POWER10).
        "ld 11, 0(1)",
        "addi 11, 11, 3f - 2b",
        "mtlr 11",
        // Its back chain: 0, which ends back-chain walks (the word held our
        // continuation, which has run).
        "li 0, 0",
        "std 0, 0(1)",
        // entry(arg = r3, from = the switcher's sp, data), through its
        // global entry point: r12 = its address, from which its prologue
        // derives its TOC pointer (r2); entered as by `bctrl`, with the
        // return address it would write (label 3, for unwinders) in lr,
        // put there above: `bctrl` would also push it onto the return
        // predictor (the link stack), and entry never returns, so the
        // first `blr` the resumer runs after the coroutine's life would
        // mispredict.
        "ld 12, 32(1)",
        "ld 4, 0(5)",
        "mr 5, 6",
        "mtctr 12",
        "bctr",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "trap",
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
    // other context may change is an output or clobber below, except r1,
    // r2, r29, r30 and r31, which the block saves and restores itself.
    // Without `nostack` the compiler keeps nothing in the red zone below
    // r1 here, where the frame goes.
    unsafe {
        asm!(
            // Our switch frame, below r1 (`stdu` stores the back chain and
            // moves r1 in one instruction), and the address of label 1 in
            // lr (`bcl 20,31`: the ISA's form for reading the pc, which
            // the link stack does not take for a call).
            "stdu 1, -48(1)",
            "bcl 20, 31, 1f",
            "1:",
            // r2 (the TOC pointer, which asm! cannot name) and r29, r30 and
            // r31 (reserved by LLVM, so they cannot be clobbers) go into
            // the frame while lr settles.
            "std 2, 24(1)",
            "std 29, 8(1)",
            "std 30, 32(1)",
            "std 31, 40(1)",
            // Our continuation, label 2: label 1 plus the distance to it.
            "mflr 6",
            "addi 6, 6, 2f - 1b",
            "std 6, 16(1)",
            // Publish our sp, and jump to the target's continuation through
            // ctr, still on our stack: the target moves to its own.
            "std 1, 0(5)",
            "ld 6, 16(4)",
            "mtctr 6",
            "bctr",
            "2:",
            // Here a context has jumped to our continuation, with r1 still
            // its own, r4 our sp, r3 the word and r5 its link. Reload r2,
            // r29, r30 and r31 from our frame, and move onto our stack past
            // it.
            "ld 2, 24(4)",
            "ld 29, 8(4)",
            "ld 30, 32(4)",
            "ld 31, 40(4)",
            "addi 1, 4, 48",
            inout("r3") arg => word,
            inout("r4") to => _,
            inout("r5") link => back,
            // ELFv2: r14 to r28 are nonvolatile (r29 to r31 are above), and
            // so are f14 to f31, v20 to v31 and cr2 to cr4; declaring them
            // clobbered makes the compiler save those that are live.
            lateout("r14") _, lateout("r15") _, lateout("r16") _, lateout("r17") _,
            lateout("r18") _, lateout("r19") _, lateout("r20") _, lateout("r21") _,
            lateout("r22") _, lateout("r23") _, lateout("r24") _, lateout("r25") _,
            lateout("r26") _, lateout("r27") _, lateout("r28") _,
            lateout("f14") _, lateout("f15") _, lateout("f16") _, lateout("f17") _,
            lateout("f18") _, lateout("f19") _, lateout("f20") _, lateout("f21") _,
            lateout("f22") _, lateout("f23") _, lateout("f24") _, lateout("f25") _,
            lateout("f26") _, lateout("f27") _, lateout("f28") _, lateout("f29") _,
            lateout("f30") _, lateout("f31") _,
            lateout("v20") _, lateout("v21") _, lateout("v22") _, lateout("v23") _,
            lateout("v24") _, lateout("v25") _, lateout("v26") _, lateout("v27") _,
            lateout("v28") _, lateout("v29") _, lateout("v30") _, lateout("v31") _,
            lateout("cr2") _, lateout("cr3") _, lateout("cr4") _,
            // Everything the ABI lets a call clobber (r0, r3 to r12, f0 to
            // f13, v0 to v19, cr0, cr1, cr5 to cr7, lr, ctr, xer) is
            // clobbered here; r6 is the switch's scratch. (rustc 1.96's list
            // also clobbers vs0 to vs31, the VSX registers whose second
            // doublewords are volatile, and so f14 to f31, their first
            // doublewords, already: tests/switch.rs still passed with f23
            // left out above. They are named for the ABI's sake, and for a
            // compiler whose list does not.)
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
    // moves onto its own stack and restores what it saved (r2, r29 to
    // r31), and nothing of ours is used again.
    unsafe {
        asm!(
            // Branch to the target's continuation through ctr, still on our
            // stack, with r4 = its sp, r3 = the word and r5 = the link, as
            // `switch` does after publishing its sp (r6 is the scratch
            // there too).
            "ld 6, 16(4)",
            "mtctr 6",
            "bctr",
            in("r3") arg,
            in("r4") to,
            in("r5") link,
            options(noreturn, nostack),
        )
    }
}

/// The index of the next instruction's address (NIP) in `gp_regs`: the
/// kernel's `PT_NIP` (asm/ptrace.h).
#[cfg(feature = "std")]
const PT_NIP: usize = 32;

/// The index of the link register in `gp_regs`: the kernel's `PT_LNK`.
#[cfg(feature = "std")]
const PT_LNK: usize = 36;

/// The stack pointer of a signal's context: r1 (`gp_regs[1]`) of an
/// `SA_SIGINFO` handler's `ucontext_t`.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn context_sp(ucontext: *const core::ffi::c_void) -> usize {
    // SAFETY: as the caller promises.
    unsafe { (*ucontext.cast::<libc::ucontext_t>()).uc_mcontext.gp_regs[1] as usize }
}

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: NIP (pc), r1 (sp), the first two arguments (r3,
/// r4), r12 (pc again: ELFv2's global entry point finds its TOC pointer
/// from r12, so no r2 is written) and the link register (0, which ends
/// backtraces).
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
        let gp = &mut (*uc).uc_mcontext.gp_regs;
        gp[PT_NIP] = pc as libc::c_ulong;
        gp[1] = sp as libc::c_ulong;
        gp[3] = args[0] as libc::c_ulong;
        gp[4] = args[1] as libc::c_ulong;
        gp[12] = pc as libc::c_ulong;
        gp[PT_LNK] = 0;
    }
}

/// The stack pointer a trap's recovery enters its function with, from a
/// 16-aligned `sp`: `sp - 32`, the caller's frame ELFv2 gives a callee, of
/// the minimum size (back chain, CR save, LR save and TOC save
/// doublewords; no parameter save area, which a prototyped callee with two
/// register arguments does not need), all four written 0: the back chain
/// ends back-chain walks, and the callee may store its CR and LR there.
/// The arguments go in registers ([`write_trap_regs`]), not here.
///
/// # Safety
/// The 32 bytes below `sp` are writable memory of the stack.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    let frame = sp - 32;
    // SAFETY: as the caller promises.
    unsafe { core::ptr::write_bytes(frame as *mut usize, 0, 4) };
    frame
}

/// Asks the CPU to bring the cache block holding `addr` closer, for a load
/// (`dcbt`, data cache block touch), ahead of a switch that will read it:
/// a scheduler warms the next context's stack while the current one runs.
/// A hint only: it reads nothing the program can see and never faults,
/// whatever the address (the ISA makes it a no-op where a load would
/// fault).
#[inline(always)]
pub fn prefetch(addr: usize) {
    // SAFETY: a cache touch changes no register, CR field or memory, and
    // faults on no address.
    unsafe {
        asm!(
            // The address is RA|0 + RB: RA = 0 reads as zero, RB = addr.
            "dcbt 0, {addr}",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// A valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR`):
/// `args` is the request and its five arguments; returns valgrind's answer,
/// or `default` when not running under valgrind, where the sequence below
/// changes no register (four rotations of r0 by 128 bits in all, and two
/// `or`s of a register with itself).
///
/// Outside valgrind, `or 1,1,1` is also the ISA's hint that sets the
/// thread's program priority (SMT) to low, which would last until the
/// thread set it again: `or 2,2,2` sets it back to medium, the priority a
/// thread runs at (valgrind takes the request for the preamble and `or
/// 1,1,1`, and a lone `or 2,2,2` for a no-op).
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but r3 (an output) and
    // read `args` only under valgrind, which then reads the six words; the
    // `or`s set no CR field (no record form).
    unsafe {
        asm!(
            // The preamble valgrind recognises: r0 rotated left by 3, 13,
            // 61 and 51 bits, back to itself.
            "rotldi 0, 0, 3",
            "rotldi 0, 0, 13",
            "rotldi 0, 0, 61",
            "rotldi 0, 0, 51",
            // The request: r3 = client_request(r4).
            "or 1, 1, 1",
            // Medium priority again (see above).
            "or 2, 2, 2",
            in("r4") args.as_ptr(),
            inout("r3") default => result,
            options(nostack, preserves_flags),
        );
    }
    result
}
