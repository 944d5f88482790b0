//! The context switch for 32-bit x86 (i686), System V i386 ABI (Linux).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of three words:
//!
//! ```text
//!   sp + 8  ebp            (pushed by hand: LLVM reserves it as the frame pointer)
//!   sp + 4  esi            (pushed by hand: LLVM reserves it as the base pointer, so asm! cannot name it)
//!   sp + 0  continuation   (where the context goes on: label 2 of its switch)
//! ```
//!
//! Every other callee-saved register (ebx, edi) is handed to the compiler
//! through the clobber list of the `asm!` block (`clobber_abi("C")` plus
//! ebx and edi), so the compiler saves only those that are live across the
//! switch, once per function rather than once per switch. (ebx is the PIC
//! register of i386 code, but LLVM lets `asm!` clobber it: it reloads the
//! GOT address where it needs it.)
//!
//! # How a switch runs
//!
//! As on x86_64 (`x86_64.rs` explains the design, and why at length): the
//! running context pushes ebp, esi and its continuation, stores its sp
//! where the caller asked (`link`, in edx) and *jumps* to the target's
//! continuation, still on its own stack. What it finds there is the second
//! half of the target's own [`switch`]: it moves to the target's stack (ecx
//! holds the sp the switcher was given), pops the target's esi and ebp, and
//! the target runs on, with the word in eax and the switcher's link in edx.
//! No `call` and no `ret`: the return predictor is left alone. esp never
//! points anywhere but at a live stack.
//!
//! i386 has no pc-relative addressing, and the crate is compiled as
//! position-independent code, so the continuation's address cannot be an
//! absolute word in the instruction stream (a text relocation) nor read
//! from a word of data (whose address would be one). It is computed
//! instead: the compiler puts the address of [`dead_continuation`] (a
//! symbol it knows how to reach from PIC code: one load from the GOT,
//! whose address it keeps anyway) into edi, and the switch subtracts the
//! link-time constant `dead_continuation - 2f` (an `R_386_PC32` relocation
//! of the immediate). 9 instructions a switch, plus the compiler's load of
//! that address: 10 (x86_64's 8, one push from read-only data).
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline`], which pops the frame and calls the entry function:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  4  link               the sp of the side that is suspended (see below)
//!   top -  8  entry              the Rust function the trampoline calls
//!   top - 12  ebp = 0            ends frame-pointer walks
//!   top - 16  esi = data         the trampoline passes it to entry
//!   top - 20  continuation    -> trampoline
//!             <- initial sp = top - 20
//! ```
//!
//! `extern "C"` functions take their arguments on the stack on i386, so the
//! trampoline pushes them below the frame, keeping esp 16-aligned at the
//! call (the i386 ABI as Linux and Rust's i686 targets have it):
//!
//! ```text
//!   top - 20  (padding)
//!   top - 24  data
//!   top - 28  from
//!   top - 32  arg                <- esp at the call (16-aligned)
//! ```
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
//! coroutine layer names the *link* word at `top - 4` of the coroutine's
//! stack in both directions, so while the coroutine runs that word holds
//! its resumer's sp, which points at the resumer's switch frame (and while
//! it is suspended, its own sp, which the next resume reads). The
//! trampoline's CFI says: "my caller's CFA is `*link + 12`, its return
//! address is at CFA - 12, its esi at CFA - 8 and its ebp at CFA - 4", so
//! an unwinder (Rust's `Backtrace`, gdb's `bt`, a panic) walks from the
//! coroutine's frames into the frames of the code that resumed it.
//!
//! # SSE and x87 control
//!
//! The i386 ABI makes the x87 control word (and MXCSR's control bits)
//! callee-saved; a switch does not keep them per context, for the reason
//! given in `x86_64.rs`. No xmm register is callee-saved on i386.

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer at a `call`.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 20;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 4;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 8;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it (its red zone): none: the i386 System V ABI has no red
/// zone.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 0;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`): within
/// it in tests/stack_use.rs under qemu-i386.
pub const ENTRY_RESERVE: usize = 12 * 1024;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`, which
/// documents what it bounds).
pub const MIN_STACK_SIZE: usize = 32 * 1024;

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
/// once with the word 0, and leaves the dead sp in `*link`. The layer above
/// leaves it where a finished context's sp was (its link word), so that
/// resuming it costs no check of its own.
pub fn dead_sp() -> usize {
    &DEAD_FRAME as *const DeadFrame as usize
}

/// The continuation of the dead frame: switches straight back to the
/// caller, passing 0, and puts the dead sp back where the caller's switch
/// stored its own. Its address is also the anchor from which every switch
/// computes its own continuation's (see the module docs).
///
/// # Safety
/// Only a switch may enter it, as the continuation of [`dead_sp`]'s frame;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn dead_continuation() {
    naked_asm!(
        // Entered as every continuation is, still on the caller's stack,
        // with ecx = the dead sp and edx = the caller's link, which now
        // holds the caller's sp. Put the dead sp back in the link (the
        // layer above then still finds its context dead), and jump back to
        // the caller's continuation with ecx = its sp and the word 0, as a
        // switch from here would.
        "mov eax, ecx",
        "mov ecx, [edx]",
        "mov [edx], eax",
        "xor eax, eax",
        "jmp dword ptr [ecx]",
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
    let words: [usize; 5] = [trampoline, data, 0, entry as *const () as usize, 0];
    // SAFETY: the caller promises that [top - 20, top) is writable stack
    // memory; `sp` is 4-aligned because `top` is 16-aligned.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 5) };
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with esp still on the switcher's stack, ecx = our initial sp, eax = arg
/// and edx = the switcher's link, which holds the switcher's sp.
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
        // CFA = *(esp + 28) + 12, that is the link word (top - 4, and esp
        // is top - 32 at the call, where unwinders find us) plus the size
        // of the switch frame it points at:
        // DW_CFA_def_cfa_expression (0x0f), 5 bytes:
        //   DW_OP_breg4 (esp) 28 (0x74, 0x1c); DW_OP_deref (0x06);
        //   DW_OP_plus_uconst 12 (0x23, 0x0c)
        ".cfi_escape 0x0f, 5, 0x74, 0x1c, 0x06, 0x23, 0x0c",
        // The resumer's switch frame: continuation (eip, DWARF 8), esi
        // (DWARF 6), ebp (DWARF 5).
        ".cfi_offset 8, -12",
        ".cfi_offset 6, -8",
        ".cfi_offset 5, -4",
        // As every arrival: move to our stack past our continuation, pop
        // our esi (data) and ebp (0); esp = top - 8, at entry.
        "2:",
        "leal 4(%ecx), %esp",
        "popl %esi",
        "popl %ebp",
        // entry(arg = eax, from = the switcher's sp, data = esi), the
        // arguments pushed last to first below 12 bytes of padding, so
        // that esp = top - 32 is 16-aligned at the call, as the ABI
        // requires; entry is then at esp + 24.
        "subl $12, %esp",
        "pushl %esi",
        "pushl (%edx)",
        "pushl %eax",
        // Entered as by `call`, with the return address it would push
        // (label 3, for unwinders) pushed by hand, found from our
        // continuation (label 2, this function's start, the first word of
        // our frame at ecx: no PC-relative address on i686): a `call`
        // would also push it onto the return predictor, and entry never
        // returns, so the first `ret` the resumer runs after the
        // coroutine's life would mispredict.
        "movl (%ecx), %edi",
        "addl $(3f - 2b), %edi",
        "pushl %edi",
        // (The CFA rule above stays: unwinders stand here with esp =
        // entry's CFA, above that return address, as after a `call`.)
        "jmpl *28(%esp)",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "ud2",
        ".cfi_endproc",
        // AT&T syntax: Intel's takes `3f - 2b` for a memory operand.
        options(att_syntax),
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
    let anchor = dead_continuation as *const () as usize;
    // SAFETY: the caller vouches for `to` and `link`. Every register the
    // other context may change is an output or clobber below, except esi,
    // ebp and esp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Our switch frame: the two registers LLVM reserves (ebp: frame
            // pointer; esi: base pointer), then our continuation, label 2,
            // computed from the anchor's address in edi (a `call` would
            // push it too, but also onto the return predictor, with no
            // `ret` ever to match): edi - (anchor - 2f) = 2f, the immediate
            // a pc-relative relocation the linker resolves. (AT&T syntax:
            // LLVM's Intel syntax takes no difference of two symbols as an
            // immediate.)
            "pushl %ebp",
            "pushl %esi",
            "subl ${anchor} - 2f, %edi",
            "pushl %edi",
            // Publish our sp, and jump to the target's continuation, still
            // on our stack: the target moves to its own.
            "movl %esp, (%edx)",
            "jmpl *(%ecx)",
            "2:",
            // Here a context has jumped to our continuation, with esp still
            // its own, ecx our sp, eax the word and edx its link. Move onto
            // our stack past the continuation and pop our esi and ebp.
            "leal 4(%ecx), %esp",
            "popl %esi",
            "popl %ebp",
            anchor = sym dead_continuation,
            inout("eax") arg => word,
            inout("ecx") to => _,
            inout("edx") link => back,
            // System V i386: ebx and edi are callee-saved, so the other
            // context may have changed them; declaring them clobbered makes
            // the compiler save those that are live. edi brings the anchor.
            inout("edi") anchor => _,
            lateout("ebx") _,
            // Everything the ABI lets a call clobber (eax, ecx, edx, xmm0
            // to xmm7, the x87 stack, flags) is clobbered here.
            clobber_abi("C"),
            options(att_syntax),
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
    // moves onto its own stack and restores what it saved (esi, ebp), and
    // nothing of ours is used again.
    unsafe {
        asm!(
            // Jump to the target's continuation, still on our stack, with
            // ecx = its sp, eax = the word and edx = the link, as `switch`
            // does after publishing its sp.
            "jmpl *(%ecx)",
            in("eax") arg,
            in("ecx") to,
            in("edx") link,
            options(noreturn, nostack, att_syntax),
        )
    }
}

/// The stack pointer of a signal's context: esp of an `SA_SIGINFO`
/// handler's `ucontext_t`.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn context_sp(ucontext: *const core::ffi::c_void) -> usize {
    // SAFETY: as the caller promises.
    unsafe {
        (*ucontext.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_ESP as usize] as usize
    }
}

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: eip and esp. The two arguments are not registers
/// on i386: [`trap_entry_sp`] has put them on the stack already.
///
/// # Safety
/// `ucontext` is the third argument of the running `SA_SIGINFO` handler.
#[cfg(feature = "std")]
pub unsafe fn write_trap_regs(
    ucontext: *mut core::ffi::c_void,
    pc: usize,
    sp: usize,
    _args: [usize; 2],
) {
    let uc = ucontext.cast::<libc::ucontext_t>();
    // SAFETY: as the caller promises, a live ucontext_t the kernel restores
    // from when the handler returns.
    unsafe {
        let gregs = &mut (*uc).uc_mcontext.gregs;
        gregs[libc::REG_EIP as usize] = pc as i32;
        gregs[libc::REG_ESP as usize] = sp as i32;
    }
}

/// The stack pointer a trap's recovery enters its `extern "C"` function
/// with, from a 16-aligned `sp`: as if called with `args`, which the i386
/// ABI passes on the stack: `args` at `sp - 16` and `sp - 12` (16-aligned
/// at the call, 8 bytes of padding above), a return address (0, which ends
/// backtraces) at `sp - 20`.
///
/// # Safety
/// The 20 bytes below `sp` are writable memory of the stack.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, args: [usize; 2]) -> usize {
    let words: [usize; 3] = [0, args[0], args[1]];
    // SAFETY: as the caller promises.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), (sp - 20) as *mut usize, 3) };
    sp - 20
}

/// Asks the CPU to bring the cache line holding `addr` closer
/// (`prefetcht0`: into every cache level; SSE, which every i686 Rust
/// target has), ahead of a switch that will read it: a scheduler warms the
/// next context's stack while the current one runs. A hint only: it reads
/// nothing the program can see and never faults, whatever the address.
#[inline(always)]
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
/// does nothing (four rotations of edi by 64 bits in all, and an exchange
/// of ebx with itself).
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, args: &[usize; 6]) -> usize {
    let result;
    // SAFETY: the instructions change no register but edx (an output) and
    // read `args` only under valgrind, which then reads the six words.
    unsafe {
        asm!(
            // The preamble valgrind recognises: edi rotated by 3, 13, 29
            // and 19 bits, back to itself.
            "rol edi, 3",
            "rol edi, 13",
            "rol edi, 29",
            "rol edi, 19",
            // The request: edx = client_request(eax).
            "xchg ebx, ebx",
            in("eax") args.as_ptr(),
            inout("edx") default => result,
            options(nostack),
        );
    }
    result
}
