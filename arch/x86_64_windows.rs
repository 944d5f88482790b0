//! The context switch for x86_64 Windows (the Microsoft x64 ABI; run under
//! Wine in CI). Read `x86_64.rs` first: the protocol (one link word, a
//! continuation reached by `jmp`, the dead frame) is the same; what Windows
//! adds is below.
//!
//! # The Thread Environment Block's stack fields
//!
//! Windows keeps the running stack's bounds in the Thread Environment Block
//! (TEB, at `gs:0`), and reads them: `__chkstk` (the stack probe of every
//! large frame) compares against `StackLimit`, exception dispatch checks
//! that the stack pointer lies between `StackLimit`/`DeallocationStack`
//! and `StackBase`, and the kernel's stack growth and overflow detection
//! work from `DeallocationStack` and `GuaranteedStackBytes`. So each
//! context carries its own copy of these fields, saved in its switch frame
//! and loaded back when it is resumed: `ExceptionList` (`gs:0x0`, unused by
//! x64 Windows but used by Wine, whose end-of-chain value is `!0`),
//! `StackBase` (`gs:0x8`), `StackLimit` (`gs:0x10`), `DeallocationStack`
//! (`gs:0x1478`) and `GuaranteedStackBytes` (`gs:0x1748`).
//!
//! # The switch frame
//!
//! ```text
//!   sp + 64  continuation, again   (for unwinders only: the return address of the frame)
//!   sp + 56  GuaranteedStackBytes
//!   sp + 48  DeallocationStack
//!   sp + 40  StackLimit
//!   sp + 32  StackBase
//!   sp + 24  ExceptionList
//!   sp + 16  rbp                   (LLVM reserves it: pushed by hand)
//!   sp +  8  rbx                   (LLVM reserves it: pushed by hand)
//!   sp +  0  continuation
//! ```
//!
//! The Microsoft x64 ABI's callee-saved registers are System V's (rbx, rbp,
//! r12 to r15) plus rdi, rsi and xmm6 to xmm15: the `asm!` block declares
//! `clobber_abi("sysv64")`, under which rdi, rsi and every xmm register are
//! clobbered, so the compiler saves whichever of them is live across a
//! switch, exactly as for r12 to r15.
//!
//! A fresh context's frame, laid out by [`init_stack`]:
//!
//! ```text
//!   top                          (16-aligned)
//!   top -  8  link               the sp of the side that is suspended
//!   top - 16  entry
//!   top - 24  GuaranteedStackBytes = 0
//!   top - 32  DeallocationStack  the stack's lowest address, guard included
//!   top - 40  StackLimit         the lowest usable address
//!   top - 48  StackBase          the stack's top
//!   top - 56  ExceptionList = !0 (the end of Wine's chain)
//!   top - 64  rbp (unused)
//!   top - 72  rbx = data
//!   top - 80  continuation    -> trampoline
//!             <- initial sp = top - 80
//! ```
//!
//! # Unwinding across the boundary
//!
//! Windows unwinds with the SEH unwind codes of each function's `.pdata`
//! and `.xdata`, not with DWARF CFI, and they cannot say "the caller's
//! frame is at `*link`" directly. The trampoline keeps rbp pointing at the
//! link word while the entry runs, and declares a frame that an unwinder
//! undoes as: rsp = rbp (`.seh_setframe`), rsp = `[rsp]` (`.seh_savereg
//! rsp`: now the resumer's switch frame), skip the continuation, pop rbx
//! and rbp, skip the five TEB fields, and return to the second copy of the
//! continuation: the resumer's frames follow, as on Linux. Panics do not
//! unwind across a switch (the layer above catches them in the body and
//! raises them again in the resumer), so this serves backtraces and
//! debuggers.

use core::arch::{asm, naked_asm};

/// The alignment the ABI requires of the stack pointer at a `call`.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 80;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it: none in the Microsoft x64 ABI.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 0;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body: 15.2 KiB measured under Wine
/// (`tests/stack_use.rs`; Windows' unwinder copies `CONTEXT` records of
/// 1.2 KiB as it goes): 16 KiB.
pub const ENTRY_RESERVE: usize = 16 * 1024;

/// The smallest stack the crate accepts (`stack::MIN_STACK_SIZE`): 64 KiB,
/// as on powerpc64le; a forced unwind of a body whose frame is realigned
/// to a page overflowed 32 KiB (`tests/attack_core.rs`).
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// The TEB's stack fields that a new context starts with: those of the
/// stack whose usable part is `[limit, top)` and whose reservation,
/// guard included, starts at `low`.
#[derive(Clone, Copy)]
pub struct StackInfo {
    /// `StackBase`: the top.
    base: usize,
    /// `StackLimit`: the lowest usable (committed) address.
    limit: usize,
    /// `DeallocationStack`: the lowest address of the reservation.
    dealloc: usize,
    /// `GuaranteedStackBytes`.
    guaranteed: usize,
}

impl StackInfo {
    /// The fields of a stack of ours (`Stack`'s top, limit and guard
    /// size, asked for here only: elsewhere nothing is kept).
    #[inline(always)]
    pub fn new(top: usize, limit: usize, guard: impl FnOnce() -> usize) -> StackInfo {
        StackInfo {
            base: top,
            limit,
            dealloc: limit - guard(),
            guaranteed: 0,
        }
    }

    /// The fields saved in the switch frame of the suspended context whose
    /// sp is `sp`: a context that runs on its stack (below its frames,
    /// `on_parent_stack`) runs on that stack as far as Windows can tell.
    ///
    /// # Safety
    /// `sp` is the sp of a context suspended in a switch.
    #[inline(always)]
    pub unsafe fn of_suspended(sp: usize) -> StackInfo {
        let frame = sp as *const usize;
        // SAFETY: as the caller promises, a switch frame lies at `sp`.
        unsafe {
            StackInfo {
                base: frame.add(4).read(),
                limit: frame.add(5).read(),
                dealloc: frame.add(6).read(),
                guaranteed: frame.add(7).read(),
            }
        }
    }
}

/// A switch frame that is never resumed: switching to [`dead_sp`] comes
/// straight back, with the word 0 and the caller's state intact.
#[repr(C)]
struct DeadFrame {
    continuation: unsafe extern "C" fn(),
}

static DEAD_FRAME: DeadFrame = DeadFrame {
    continuation: dead_continuation,
};

/// The sp of a context that cannot be resumed (see `x86_64.rs`).
pub fn dead_sp() -> usize {
    &DEAD_FRAME as *const DeadFrame as usize
}

/// The continuation of the dead frame: switches straight back to the
/// caller, passing 0, and puts the dead sp back where the caller's switch
/// stored its own. The caller's TEB fields never left the TEB: its own
/// continuation loads the copy it saved.
///
/// # Safety
/// Only a switch may enter it, as the continuation of [`dead_sp`]'s frame;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn dead_continuation() {
    naked_asm!(
        // rsi = the dead sp, rdx = the caller's link (holding its sp).
        "mov rax, rsi",
        "mov rsi, [rdx]",
        "mov [rdx], rax",
        "xor edi, edi",
        "jmp qword ptr [rsi]",
    )
}

/// Writes the first frame of a new context below `top` and returns the
/// stack pointer to switch to; `info` is the TEB's view of its stack.
///
/// # Safety
/// `top` must be 16-aligned and the [`INIT_FRAME_SIZE`] bytes below it must
/// be writable memory of a stack that nothing else uses.
#[inline]
pub unsafe fn init_stack(top: usize, entry: super::EntryFn, data: usize, info: StackInfo) -> usize {
    debug_assert_eq!(top % STACK_ALIGNMENT, 0);
    let sp = top - INIT_FRAME_SIZE;
    let words: [usize; 10] = [
        trampoline as *const () as usize,
        data,
        0,
        !0,
        info.base,
        info.limit,
        info.dealloc,
        info.guaranteed,
        entry as *const () as usize,
        0,
    ];
    // SAFETY: the caller promises that [top - 80, top) is writable stack
    // memory; `sp` is 16-aligned because `top` is.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 10) };
    sp
}

/// The continuation of a fresh context: entered as every continuation is,
/// with rsp still on the switcher's stack, rsi = our initial sp, rdi = arg
/// and rdx = the switcher's link, which holds the switcher's sp. Calls
/// `entry(arg, from, data)` with the Microsoft x64 convention (rcx, rdx,
/// r8, and 32 bytes of shadow space above the return address).
///
/// Its unwind codes send unwinders through the link word to the resumer's
/// frames (module docs).
///
/// # Safety
/// Only a switch may enter it, into a frame that [`init_stack`] laid out;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn trampoline() {
    naked_asm!(
        ".seh_proc {name}",
        // As every arrival: onto our stack past the continuation, pop rbx
        // (data), rbp (unused) and the TEB fields of our stack.
        "lea rsp, [rsi + 8]",
        "pop rbx",
        "pop rbp",
        "pop qword ptr gs:[0x0]",
        "pop qword ptr gs:[0x8]",
        "pop qword ptr gs:[0x10]",
        "pop qword ptr gs:[0x1478]",
        "pop qword ptr gs:[0x1748]",
        // rsp = top - 16; rbp = the link word, for the unwinders.
        "lea rbp, [rsp + 8]",
        // The unwind codes, undone by an unwinder from the last up: rsp =
        // rbp (the link word's address); rsp = [rsp] (the resumer's sp);
        // skip its continuation; pop rbx, rbp; skip the five TEB fields;
        // then return to the second copy of its continuation.
        ".seh_stackalloc 40",
        ".seh_pushreg rbp",
        ".seh_pushreg rbx",
        ".seh_stackalloc 8",
        ".seh_savereg rsp, 0",
        ".seh_setframe rbp, 0",
        ".seh_endprologue",
        // entry(rcx = arg, rdx = the switcher's sp, r8 = data), with the
        // 32 bytes of shadow space the callee may use; rsp = top - 48 is
        // 16-aligned at the call.
        "mov rcx, rdi",
        "mov rdx, [rdx]",
        "mov r8, rbx",
        "sub rsp, 32",
        // Entered as by `call`, with the return address it would push
        // (label 3, for unwinders) pushed by hand: a `call` would also
        // push it onto the return predictor, and entry never returns, so
        // the first `ret` the resumer runs after the coroutine's life
        // would mispredict.
        "lea rax, [rip + 3f]",
        "push rax",
        "jmp qword ptr [rsp + 40]",
        // entry never returns; if it did, trap rather than run garbage
        // (and an unwinder looking for an epilogue after the jump finds
        // none).
        "3:",
        "ud2",
        ".seh_endproc",
        name = sym trampoline,
    )
}

/// Switches from the running context to the suspended context `to`,
/// passing `arg`; stores the running context's saved sp into `*link`.
///
/// Returns when some context switches back here: the word it passed and
/// its link (`*link` is its sp).
///
/// # Safety
/// As `x86_64.rs`'s `switch`.
#[inline(always)]
pub unsafe fn switch(arg: usize, to: usize, link: *mut usize) -> (usize, *mut usize) {
    let (word, back): (usize, *mut usize);
    // SAFETY: the caller vouches for `to` and `link`. Every register the
    // other context may change is an output or clobber below, except rbx,
    // rbp and rsp, which the block saves and restores itself, and the TEB's
    // stack fields, which it saves and restores in the frame.
    unsafe {
        asm!(
            // The frame's return address for unwinders: our continuation
            // (label 2; rax is clobbered anyway).
            "lea rax, [rip + 2f]",
            "push rax",
            // Our stack's TEB fields.
            "push qword ptr gs:[0x1748]",
            "push qword ptr gs:[0x1478]",
            "push qword ptr gs:[0x10]",
            "push qword ptr gs:[0x8]",
            "push qword ptr gs:[0x0]",
            // The two registers LLVM reserves, then our continuation.
            "push rbp",
            "push rbx",
            "push rax",
            // Publish our sp, and jump to the target's continuation, still
            // on our stack: the target moves to its own.
            "mov [rdx], rsp",
            "jmp qword ptr [rsi]",
            "2:",
            // Back: onto our stack past the continuation; rbx, rbp, the
            // TEB fields; past the unwinders' copy of the continuation.
            "lea rsp, [rsi + 8]",
            "pop rbx",
            "pop rbp",
            "pop qword ptr gs:[0x0]",
            "pop qword ptr gs:[0x8]",
            "pop qword ptr gs:[0x10]",
            "pop qword ptr gs:[0x1478]",
            "pop qword ptr gs:[0x1748]",
            "lea rsp, [rsp + 8]",
            inout("rdi") arg => word,
            inout("rsi") to => _,
            inout("rdx") link => back,
            // r12 to r15: callee-saved in both ABIs.
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            // Everything System V lets a call clobber, which includes the
            // Microsoft ABI's callee-saved rdi, rsi and xmm6 to xmm15: the
            // compiler saves those that are live.
            clobber_abi("sysv64"),
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
    // moves onto its own stack and restores what it saved (rbx, rbp and
    // its TEB fields), and nothing of ours is used again.
    unsafe {
        asm!(
            // Jump to the target's continuation, still on our stack, with
            // rsi = its sp, rdi = the word and rdx = the link, as `switch`
            // does after publishing its sp.
            "jmp qword ptr [rsi]",
            in("rdi") arg,
            in("rsi") to,
            in("rdx") link,
            options(noreturn, nostack),
        )
    }
}

/// The stack pointer of an exception's context: `Rsp` of the `CONTEXT` a
/// vectored exception handler receives (`ContextRecord`).
///
/// # Safety
/// `context` points to the `CONTEXT` of the exception being handled.
#[cfg(feature = "std")]
pub unsafe fn context_sp(context: *const core::ffi::c_void) -> usize {
    use windows_sys::Win32::System::Diagnostics::Debug::CONTEXT;
    // SAFETY: as the caller promises.
    unsafe { (*context.cast::<CONTEXT>()).Rsp as usize }
}

/// Writes the registers of a trap's recovery into the `CONTEXT` of a
/// vectored exception handler: Rip, Rsp, and the first two arguments (Rcx,
/// Rdx).
///
/// # Safety
/// `context` points to the `CONTEXT` of the exception being handled, which
/// the system resumes from when the handler returns
/// `EXCEPTION_CONTINUE_EXECUTION`.
#[cfg(feature = "std")]
pub unsafe fn write_trap_regs(
    context: *mut core::ffi::c_void,
    pc: usize,
    sp: usize,
    args: [usize; 2],
) {
    use windows_sys::Win32::System::Diagnostics::Debug::CONTEXT;
    let context = context.cast::<CONTEXT>();
    // SAFETY: as the caller promises.
    unsafe {
        (*context).Rip = pc as u64;
        (*context).Rsp = sp as u64;
        (*context).Rcx = args[0] as u64;
        (*context).Rdx = args[1] as u64;
    }
}

/// The stack pointer a trap's recovery enters its function with, from a
/// 16-aligned `sp`: as if called, a return address (0, which ends
/// backtraces) at `sp - 40`, below the 32 bytes of shadow space the
/// Microsoft ABI gives every callee.
///
/// # Safety
/// The 40 bytes below `sp` are writable memory of the stack.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    // SAFETY: as the caller promises.
    unsafe { ((sp - 40) as *mut usize).write(0) };
    sp - 40
}

/// A cache hint for a stack about to be switched to (see `x86_64.rs`).
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

/// A valgrind client request: valgrind does not run Windows programs, so
/// the answer is always `default`.
#[inline]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub fn valgrind_request(default: usize, _args: &[usize; 6]) -> usize {
    default
}
