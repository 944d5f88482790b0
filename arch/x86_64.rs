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
//! where the caller asked (`link`) and *departs* to the target's
//! continuation, the second half of the target's own switch, which *arrives*:
//! pops the target's rbx and rbp, and the target runs on, with the word in
//! rdi and the switcher's `link` in rdx (so `*link`, the switcher's sp, is
//! there for a target that wants it, at the cost of a load only where it is
//! read).
//!
//! The departure comes in three kinds, chosen so that the CPU's return
//! predictor (the return-stack buffer, RSB) sees every `call` matched by
//! exactly one `ret`, as in ordinary code:
//!
//! - [`switch_call`], for a *resume* (a coroutine entered by the code that
//!   will get it back): the continuation is pushed by a `call` (which also
//!   pushes it on the RSB) to a stub that jumps to the target's
//!   continuation, rsp still on our stack;
//! - [`switch_return`], for a *suspend* (back to whoever resumed us), and a
//!   coroutine's last switch: the continuation is pushed by hand, rsp moved
//!   onto the target's continuation and the departure is a `ret`, which
//!   pops the RSB entry the resume's `call` pushed: predicted, balanced;
//! - [`switch_jump`], for a symmetric switch (greenlets): continuation
//!   pushed by hand, an indirect `jmp`, rsp still on our stack; the RSB is
//!   not touched.
//!
//! A `ret` leaves rsp on the target's stack, a `call` or a `jmp` on ours, so
//! there are two arrivals: at a resume's continuation (reached by `ret`s
//! only) rsp is already past it; at a suspend's or a greenlet's
//! continuation and at the trampoline (reached by `call`s and `jmp`s) the
//! target moves to its own stack itself (`lea rsp, [rsi + 8]`, rsi being the
//! sp the switcher was given). rsp never points anywhere but at a live
//! stack: a resume of a finished coroutine meets the dead frame (a static)
//! without moving there.
//!
//! Why: the previous protocol departed with an indirect `call` and arrived
//! with no `ret`, so each switch left an RSB entry that was never popped,
//! and the real returns after it were predicted from the wrong entries.
//! Its round trip took fewer instructions than corosensei's but more time;
//! the README has both protocols' figures beside corosensei's, measured in
//! one sitting (`benches/callgrind.sh`, pinned, alternating).
//!
//! A fresh context is laid out by [`init_stack`] so that switching to it
//! looks exactly like resuming one that was suspended: its continuation is
//! [`trampoline`], which pops the frame and calls the entry function:
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
        // Entered by a resume (`switch_call`), still on the caller's stack
        // (rsp = its sp), with rsi = the dead sp and rdx = the caller's
        // link, which now holds the caller's sp. Put the dead sp back in
        // the link, so that the layer above still finds its context dead.
        "mov [rdx], rsi",
        // The word 0, and back to the caller's continuation with a `ret`,
        // which pops the RSB entry of the caller's `call`.
        "xor edi, edi",
        "ret",
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
    // SAFETY: the caller promises that [top - 40, top) is writable stack
    // memory; `sp` is 8-aligned because `top` is 16-aligned.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut usize, 5) };
    sp
}

/// The continuation of a fresh context: entered by a `call` or a `jmp`
/// departure (a resume, or a greenlet's switch), with rsp still on the
/// switcher's stack, rsi = our initial sp, rdi = arg and rdx = the
/// switcher's link, which holds the switcher's sp.
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
        // The arrival of `switch_return`: move to our stack past our
        // continuation, pop our rbx (data) and rbp (0).
        "lea rsp, [rsi + 8]",
        "pop rbx",
        "pop rbp",
        // entry(arg = rdi, from = the switcher's sp, data = rbx); rsp = top -
        // 16 is 16-aligned here, as the ABI requires at a call.
        "mov rsi, [rdx]",
        "mov rdx, rbx",
        "call qword ptr [rsp]",
        // entry never returns; if it did, trap rather than run garbage.
        "ud2",
        ".cfi_endproc",
    )
}

/// One switch: push rbp and rbx, then the `$depart` lines (push our
/// continuation, label 2, publish our sp through rdx, depart), then at
/// label 2 the `$arrive` lines (back on our stack, pop rbx and rbp).
/// Returns (the word that came back, the link of the context that switched
/// back: `*link` is its sp).
macro_rules! switch {
    // A resume or a suspend: the context that switches back passes the
    // same link (a coroutine and its resumer share the link word), so rdx
    // comes back as it went.
    (paired $arg:expr, $to:expr, $link:expr, [$($depart:literal,)+], [$($arrive:literal,)+]) => {
        switch!(@asm back, $arg, $to, $link, (in("rdx") $link), [$($depart,)+], [$($arrive,)+])
    };
    // A symmetric switch: rdx comes back as the link of whoever switched.
    (any $arg:expr, $to:expr, $link:expr, [$($depart:literal,)+], [$($arrive:literal,)+]) => {
        switch!(
            @asm back, $arg, $to, $link, (inout("rdx") $link => back),
            [$($depart,)+], [$($arrive,)+]
        )
    };
    (@asm $back:ident, $arg:expr, $to:expr, $link:expr, ($($rdx:tt)*),
        [$($depart:literal,)+], [$($arrive:literal,)+]) => {{
        #[allow(unused_mut, unused_assignments)]
        let mut $back: *mut usize = $link;
        let word: usize;
        // SAFETY: the caller vouches for `to` and `link`. Every register
        // the other context may change is an output or clobber below,
        // except rbx, rbp and rsp, which the block saves and restores
        // itself.
        unsafe {
            asm!(
                // Our switch frame starts with the two registers LLVM
                // reserves (rbp: frame pointer; rbx: base pointer).
                "push rbp",
                "push rbx",
                $($depart,)+
                "2:",
                // Here a context has departed to our continuation, with
                // the word in rdi and its link in rdx.
                $($arrive,)+
                inout("rdi") $arg => word,
                inout("rsi") $to => _,
                $($rdx)*,
                // System V: r12 to r15 are callee-saved, so the other
                // context may have changed them; declaring them clobbered
                // makes the compiler save those that are live.
                lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
                // Everything the ABI lets a call clobber (rcx, r8 to r11,
                // xmm0 to xmm15, the x87 stack, flags) is clobbered here.
                clobber_abi("sysv64"),
            );
        }
        (word, $back)
    }};
}

/// Switches from the running context to the suspended context `to`,
/// passing `arg`, as a *resume*: the departure is a `call`, which the
/// target's coming [`switch_return`] (or the dead continuation) pairs with
/// a `ret`. Stores the running context's saved sp into `*link`.
///
/// Returns when some context switches back here: the word it passed and
/// its link (`*link` is its sp), which is `link` itself.
///
/// # Safety
/// `to` must be the sp of a suspended context (from [`init_stack`] or from
/// a switch away from it) that is resumed nowhere else, on a stack that is
/// still alive, or [`dead_sp`]; `link` must be valid for a write of one
/// word; and every switch back to this one must pass the same `link` (rdx
/// is assumed to come back unchanged).
#[inline(always)]
pub unsafe fn switch_call(arg: usize, to: usize, link: *mut usize) -> (usize, *mut usize) {
    switch!(
        paired arg,
        to,
        link,
        [
            // The call pushes our continuation (label 2, the next
            // instruction) on our stack and on the RSB, and goes to a stub
            // in a section of its own, so that the continuation follows
            // the call directly: it publishes our sp and jumps to the
            // target's continuation, still on our stack (the target moves
            // to its own; rsp never points at the dead frame's static).
            "call 3f",
            ".pushsection .text.stackful_depart,\"ax\",@progbits",
            "3:",
            "mov [rdx], rsp",
            "jmp qword ptr [rsi]",
            ".popsection",
        ],
        [
            // We are resumed by a `ret` (a suspend, a coroutine's end, the
            // dead continuation): rsp is already past our continuation.
            "pop rbx",
            "pop rbp",
        ]
    )
}

/// Like [`switch_call`], as a *suspend*: back to the context whose resume
/// entered us, departing with a `ret` that pops the RSB entry of that
/// resume's `call`. Also a coroutine's last switch.
///
/// # Safety
/// As [`switch_call`] (the same `link` on the way back included); `to` is
/// the context whose resume entered the running one (a live one, never
/// [`dead_sp`]: the `ret` moves rsp onto it).
#[inline(always)]
pub unsafe fn switch_return(arg: usize, to: usize, link: *mut usize) -> (usize, *mut usize) {
    switch!(
        paired arg,
        to,
        link,
        [
            // Push our continuation (its address is a word of read-only
            // data, so that one push does it), publish our sp, move onto
            // the target's continuation and return to it.
            "push qword ptr [rip + 4f]",
            ".pushsection .data.rel.ro.stackful_continuations,\"aw\",@progbits",
            ".p2align 3",
            "4: .quad 2f",
            ".popsection",
            "mov [rdx], rsp",
            "mov rsp, rsi",
            "ret",
        ],
        [
            // We are resumed by a `call` (a resume): rsp is still the
            // resumer's, rsi our own sp. Move past our continuation.
            "lea rsp, [rsi + 8]",
            "pop rbx",
            "pop rbp",
        ]
    )
}

/// Like [`switch_call`], for a symmetric switch (greenlets, where who
/// switches back is anyone's guess): the departure is an indirect `jmp`,
/// which leaves the RSB as it is.
///
/// Returns the word and the link of whoever switched back.
///
/// # Safety
/// As [`switch_call`], but for the link on the way back, which may be any;
/// and `to` is never [`dead_sp`].
#[inline(always)]
pub unsafe fn switch_jump(arg: usize, to: usize, link: *mut usize) -> (usize, *mut usize) {
    switch!(
        any arg,
        to,
        link,
        [
            // Push our continuation (as in `switch_return`), publish our
            // sp and jump to the target's continuation, still on our stack.
            "push qword ptr [rip + 4f]",
            ".pushsection .data.rel.ro.stackful_continuations,\"aw\",@progbits",
            ".p2align 3",
            "4: .quad 2f",
            ".popsection",
            "mov [rdx], rsp",
            "jmp qword ptr [rsi]",
        ],
        [
            // As in `switch_return`: rsp is the switcher's, rsi our sp.
            "lea rsp, [rsi + 8]",
            "pop rbx",
            "pop rbp",
        ]
    )
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
