//! The context switch for x86_64, System V ABI (Linux; macOS and FreeBSD
//! assembled in CI, not run).
//!
//! # The contract (the same in every file of `arch/`)
//!
//! A suspended context is one word: its saved stack pointer `sp`. At `sp`
//! lies a *switch frame* of three words:
//!
//! ```text
//!   sp + 16  rbp            (pushed by hand: LLVM reserves it as the frame pointer)
//!   sp +  8  rbx            (pushed by hand: LLVM reserves it, so asm! cannot name it)
//!   sp +  0  continuation   (where the context goes on: label 2 of its switch)
//! ```
//!
//! Every other callee-saved register is handed to the compiler through the
//! clobber list of the `asm!` block (`clobber_abi("sysv64")` plus r12 to r15),
//! so the compiler saves only those that are live across the switch, once
//! per function rather than once per switch.
//!
//! # How a switch runs
//!
//! The running context pushes rbp, rbx and its continuation, stores its sp
//! where the caller asked (`link`) and *jumps* to the target's continuation,
//! still on its own stack. What it finds there is the second half of the
//! target's own [`switch`]: it moves to the target's stack (rsi holds the
//! sp the switcher was given), pops the target's rbx and rbp, and the target
//! runs on, with the word in rdi and the switcher's `link` in rdx (so
//! `*link`, the switcher's sp, is there for a target that wants it, at the
//! cost of a load only where it is read). 8 instructions a switch.
//!
//! The continuation is pushed from a word of read-only data and reached by
//! an indirect `jmp`, so a switch leaves the CPU's return predictor (the
//! return-stack buffer, RSB) alone. The protocol before entered the target
//! with an indirect `call` that no `ret` ever matched, pushing an RSB entry
//! at every switch; a variant tried in between paired a resume's `call`
//! with the suspend's `ret`, which the steady round trip liked, but a body
//! suspends first, and returns at last, at a call depth other than the one
//! it was entered at, so every coroutine's life mispredicted its `ret`s.
//! Measured side by side (pinned, alternating, 3 x 7 runs; the README has
//! the table): against corosensei, the round trip 0.91-0.99 (jmp) and
//! 0.89-0.96 (paired), the pooled life 0.81 (jmp) against 1.23-1.25
//! (paired); the greenlet ping-pong 6-8 % faster than with the unmatched
//! `call`. rsp never points anywhere but at a live stack: a resume of a
//! finished coroutine meets the dead frame (a static) without moving there.
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline_start`], which jumps on to [`trampoline`] (or, under
//! memcheck and at the process's first arrival, to [`memcheck_trampoline`]:
//! see [`CONTINUATION`]), which pops the frame and calls the entry function:
//!
//! ```text
//!   top                          (16-aligned; what the caller gave init_stack)
//!   top -  8  link               the sp of the side that is suspended (see below)
//!   top - 16  entry              the Rust function the trampoline calls
//!   top - 24  data               the trampoline passes it to entry
//!   top - 32  continuation    -> trampoline_start
//!             <- initial sp = top - 32
//! ```
//!
//! (rbp needs no word: the trampoline clears it, which ends frame-pointer
//! walks, and rbx none either: entry is a function, which saves what it
//! uses of it.)
//!
//! # Unwinding across the boundary
//!
//! A switch stores the sp it leaves into a word the caller names. The
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
//! callee-saved. A switch does not keep them per context: Rust offers no
//! stable way to change the rounding mode or exception masks, so they never
//! differ between contexts in Rust code, and saving them (`stmxcsr`/`ldmxcsr`,
//! `fnstcw`/`fldcw`) would more than double the cost of a switch
//! (`benches/fp_control.rs`). A body that changes them through foreign code
//! must restore them before it suspends. This is the choice corosensei makes
//! too; boost.context keeps them.

use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicPtr, Ordering};

// The section that holds the words the switches push their continuations
// from: read-only once relocated. ELF (Linux, FreeBSD) names it with flags
// and a type; Mach-O (macOS) has no such syntax, and its segment and
// section for relocated constants is `__DATA,__const`.
#[cfg(not(target_vendor = "apple"))]
macro_rules! continuations_section {
    () => {
        ".pushsection .data.rel.ro.corostack_continuations,\"aw\",@progbits"
    };
}
#[cfg(target_vendor = "apple")]
macro_rules! continuations_section {
    () => {
        ".pushsection __DATA,__const"
    };
}

/// The alignment the ABI requires of the stack pointer at a `call`.
pub const STACK_ALIGNMENT: usize = 16;

/// Bytes that [`init_stack`] writes below `top`.
pub const INIT_FRAME_SIZE: usize = 32;

/// The offset below `top` of the link word (see the module docs).
pub const LINK_OFFSET: usize = 8;

/// The offset below `top` of a word that holds `entry` until the first
/// switch into the context, and that the layer above may use after it.
pub const SPARE_OFFSET: usize = 16;

/// The bytes below the stack pointer that the ABI lets a function use
/// without moving it (its red zone): the System V x86_64 ABI's 128 bytes.
#[cfg(feature = "std")]
pub const RED_ZONE: usize = 128;

/// The stack a new context reserves for its entry's frames and a forced
/// unwind from a shallow body (`ENTRY_RESERVE` in `src/context.rs`): at
/// most 6.2 KiB measured here.
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
/// stored its own.
///
/// # Safety
/// Only a switch may enter it, as the continuation of [`dead_sp`]'s frame;
/// it follows no Rust calling convention.
#[unsafe(naked)]
unsafe extern "C" fn dead_continuation() {
    naked_asm!(
        // Entered as every continuation is, still on the caller's stack,
        // with rsi = the dead sp and rdx = the caller's link, which now
        // holds the caller's sp. Put the dead sp back in the link (the
        // layer above then still finds its context dead), and jump back to
        // the caller's continuation with rsi = its sp and the word 0, as a
        // switch from here would.
        "mov rax, rsi",
        "mov rsi, [rdx]",
        "mov [rdx], rax",
        "xor edi, edi",
        "jmp qword ptr [rsi]",
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
    let trampoline = trampoline_start as *const () as usize;
    let words: [usize; 4] = [trampoline, data, entry as *const () as usize, 0];
    // SAFETY: the caller promises that [top - 32, top) is writable stack
    // memory; `sp` is 8-aligned because `top` is 16-aligned.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 4) };
    sp
}

/// Where [`trampoline_start`] goes: [`memcheck_trampoline`] until the
/// process's first arrival, and under memcheck; [`trampoline`] once the
/// first arrival found that memcheck does not run.
static CONTINUATION: AtomicPtr<()> = AtomicPtr::new(memcheck_trampoline as *mut ());

/// The continuation that [`init_stack`] gives a fresh context: goes on to
/// the trampoline that [`CONTINUATION`] names, with every register as the
/// switch left it. One indirect jump, where a test of whether memcheck
/// runs would be two instructions in the trampoline (a compare and a
/// branch), and a choice made by `init_stack` would load the word through
/// the GOT besides.
///
/// # Safety
/// As [`trampoline`].
#[unsafe(naked)]
unsafe extern "C" fn trampoline_start() {
    naked_asm!(
        "jmp qword ptr [rip + {continuation}]",
        continuation = sym CONTINUATION,
    )
}

/// The continuation of a fresh context: entered as every continuation is,
/// with rsp still on the switcher's stack, rsi = our initial sp, rdi = arg
/// and rdx = the switcher's link, which holds the switcher's sp.
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
        // CFA = *(rsp + 8) + 24, that is the link word plus the size of the
        // switch frame it points at:
        // DW_CFA_def_cfa_expression, 5 bytes:
        //   DW_OP_breg7 (rsp) 8; DW_OP_deref; DW_OP_plus_uconst 24
        ".cfi_escape 0x0f, 5, 0x77, 0x08, 0x06, 0x23, 0x18",
        // The resumer's switch frame: continuation, rbx, rbp.
        ".cfi_offset rip, -24",
        ".cfi_offset rbx, -16",
        ".cfi_offset rbp, -8",
        // As every arrival: move to our stack past our continuation.
        "lea rsp, [rsi + 8]",
        // entry(arg = rdi, from = the switcher's sp, data): data is the
        // next word of our frame; rbp = 0 ends frame-pointer walks. rbx
        // needs no value of its own: entry is a function, which saves
        // what it uses of it. rsp = top - 16 is 16-aligned here, as the
        // ABI requires at a call.
        "mov rsi, [rdx]",
        "pop rdx",
        "xor ebp, ebp",
        // Entered as by a `call`, with the return address of one (label
        // 3, in this function, for unwinders) pushed by hand from a word
        // of read-only data (one instruction): a `call` would push it
        // onto the return predictor too, and entry never returns, so the
        // first `ret` the resumer runs after the coroutine's life would
        // mispredict.
        "push qword ptr [rip + 4f]",
        continuations_section!(),
        ".p2align 3",
        "4: .quad 3f",
        ".popsection",
        // (The CFA rule above stays: unwinders stand here with rsp =
        // entry's CFA, above that return address, as after a `call`.)
        "jmp qword ptr [rsp + 8]",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "ud2",
        ".cfi_endproc",
    )
}

/// [`trampoline`] with a detour, the continuation of fresh contexts under
/// memcheck (valgrind's default tool) and until the process's first
/// arrival: a real call, to `valgrind_arrival`. memcheck takes a `call` to
/// announce the red zone below its stack pointer as writable, and nothing
/// else does that after a stack switch: on a reused stack, where memcheck
/// saw the last context's frames return, entry's first frames would be
/// invalid writes to it. The call returns, so the return predictor stays
/// balanced. (Its name ends in `trampoline` too: a backtrace from a
/// process's first coroutine shows it.)
///
/// # Safety
/// As [`trampoline`].
#[unsafe(naked)]
unsafe extern "C" fn memcheck_trampoline() {
    naked_asm!(
        // The same CFI as `trampoline`'s (see there).
        ".cfi_startproc simple",
        ".cfi_signal_frame",
        ".cfi_escape 0x0f, 5, 0x77, 0x08, 0x06, 0x23, 0x18",
        ".cfi_offset rip, -24",
        ".cfi_offset rbx, -16",
        ".cfi_offset rbp, -8",
        // As `trampoline`: onto our stack, entry's arguments in rdi, rsi
        // and rdx, rbp = 0.
        "lea rsp, [rsi + 8]",
        "mov rsi, [rdx]",
        "pop rdx",
        "xor ebp, ebp",
        // The detour: entry's arguments wait in r12-r14, which the call
        // preserves (the resumer's switch saved none of them for us to
        // keep); rsp = top - 16 is 16-aligned, as at entry's call, and
        // the CFA rule holds.
        "mov r12, rdi",
        "mov r13, rsi",
        "mov r14, rdx",
        "call {arrival}",
        "mov rdi, r12",
        "mov rsi, r13",
        "mov rdx, r14",
        // Into entry as `trampoline` enters it, with a return address
        // (label 3, for unwinders) pushed by hand.
        "lea rax, [rip + 3f]",
        "push rax",
        "jmp qword ptr [rsp + 8]",
        // entry never returns; if it did, trap rather than run garbage.
        "3:",
        "ud2",
        ".cfi_endproc",
        arrival = sym valgrind_arrival,
    )
}

/// The detour of [`memcheck_trampoline`]: asks whether memcheck runs, and
/// if not, makes [`trampoline`] the continuation of the contexts made from
/// now on ([`CONTINUATION`]). Its caller's `call` is what matters to
/// memcheck (see the detour).
///
/// The question is memcheck's `VALGRIND_MAKE_MEM_UNDEFINED` of 0 bytes,
/// which does nothing: memcheck answers it with -1, and every other tool
/// (callgrind, which counts the instructions of our benchmarks, among
/// them) with 0, as a program outside valgrind gets its default, 0. So
/// only memcheck's runs take the detour after the first arrival.
extern "C" fn valgrind_arrival() {
    /// VG_USERREQ__MAKE_MEM_UNDEFINED, from memcheck.h.
    const MAKE_MEM_UNDEFINED: usize = 0x4d43_0001;
    let memcheck = valgrind_request(0, &[MAKE_MEM_UNDEFINED, 0, 0, 0, 0, 0]) != 0;
    if !memcheck {
        CONTINUATION.store(trampoline as *mut (), Ordering::Relaxed);
    }
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
    // other context may change is an output or clobber below, except rbx,
    // rbp and rsp, which the block saves and restores itself.
    unsafe {
        asm!(
            // Our switch frame: the two registers LLVM reserves (rbp: frame
            // pointer; rbx: base pointer), then our continuation, label 2,
            // pushed from a word of read-only data that holds its address
            // (one instruction; a `call` would push it too, but also onto
            // the return predictor, with no `ret` ever to match).
            "push rbp",
            "push rbx",
            "push qword ptr [rip + 4f]",
            continuations_section!(),
            ".p2align 3",
            "4: .quad 2f",
            ".popsection",
            // Publish our sp, and jump to the target's continuation, still
            // on our stack: the target moves to its own.
            "mov [rdx], rsp",
            "jmp qword ptr [rsi]",
            "2:",
            // Here a context has jumped to our continuation, with rsp still
            // its own, rsi our sp, rdi the word and rdx its link. Move onto
            // our stack past the continuation and pop our rbx and rbp.
            "lea rsp, [rsi + 8]",
            "pop rbx",
            "pop rbp",
            inout("rdi") arg => word,
            inout("rsi") to => _,
            inout("rdx") link => back,
            // System V: r12 to r15 are callee-saved, so the other context
            // may have changed them; declaring them clobbered makes the
            // compiler save those that are live.
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            // Everything the ABI lets a call clobber (rax, rcx, r8 to r11,
            // xmm0 to xmm15, the x87 stack, flags) is clobbered here.
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
    // moves onto its own stack and restores what it saved (rbx, rbp), and
    // nothing of ours is used again.
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

/// The stack pointer of a signal's context: rsp of an `SA_SIGINFO`
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
            if #[cfg(target_os = "linux")] {
                (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] as usize
            } else if #[cfg(target_os = "freebsd")] {
                (*uc).uc_mcontext.mc_rsp as usize
            } else if #[cfg(target_vendor = "apple")] {
                (*(*uc).uc_mcontext).__ss.__rsp as usize
            }
        }
    }
}

/// Writes the registers of a trap's recovery into the `ucontext_t` of an
/// `SA_SIGINFO` handler: rip, rsp, and the first two arguments (rdi, rsi).
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
    // from when the handler returns (on macOS, uc_mcontext points to the
    // registers).
    unsafe {
        cfg_if::cfg_if! {
            if #[cfg(target_os = "linux")] {
                let gregs = &mut (*uc).uc_mcontext.gregs;
                gregs[libc::REG_RIP as usize] = pc as i64;
                gregs[libc::REG_RSP as usize] = sp as i64;
                gregs[libc::REG_RDI as usize] = args[0] as i64;
                gregs[libc::REG_RSI as usize] = args[1] as i64;
            } else if #[cfg(target_os = "freebsd")] {
                let mc = &mut (*uc).uc_mcontext;
                mc.mc_rip = pc as i64;
                mc.mc_rsp = sp as i64;
                mc.mc_rdi = args[0] as i64;
                mc.mc_rsi = args[1] as i64;
            } else if #[cfg(target_vendor = "apple")] {
                let ss = &mut (*(*uc).uc_mcontext).__ss;
                ss.__rip = pc as u64;
                ss.__rsp = sp as u64;
                ss.__rdi = args[0] as u64;
                ss.__rsi = args[1] as u64;
            }
        }
    }
}

/// The stack pointer a trap's recovery enters its function with, from a
/// 16-aligned `sp`: as if called, a return address (0, which ends
/// backtraces) at `sp - 8`. The arguments go in registers
/// ([`write_trap_regs`]), not here.
///
/// # Safety
/// The word below `sp` is writable memory of the stack.
#[cfg(feature = "std")]
pub unsafe fn trap_entry_sp(sp: usize, _args: [usize; 2]) -> usize {
    // SAFETY: as the caller promises.
    unsafe { ((sp - 8) as *mut usize).write(0) };
    sp - 8
}

/// Asks the CPU to bring the cache line holding `addr` closer
/// (`prefetcht0`: into every cache level), ahead of a switch that will read
/// it: a scheduler warms the next context's stack while the current one
/// runs. A hint only: it reads nothing the program can see and never
/// faults, whatever the address.
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
/// does nothing (four rotations of rdi by 128 bits in all, and an exchange
/// of rbx with itself).
#[inline]
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
