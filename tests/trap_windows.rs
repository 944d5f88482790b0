//! Trap recovery on Windows: a fault inside a coroutine, caught by a
//! vectored exception handler that the test adds, comes back to the
//! resumer as the coroutine's return, and the stack runs a new coroutine
//! afterwards: an access violation, and a stack overflow (the system's
//! `STATUS_STACK_OVERFLOW`, raised in the coroutine's own guard pages,
//! which the TEB's fields describe while it runs). The handler writes the
//! recovery's registers into the exception's `CONTEXT`. Each case in a
//! child process, since a failure is a crash. (tests/trap.rs is the Unix
//! counterpart, with a signal handler.)
#![cfg(windows)]

#[macro_use]
mod util;

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Once;

use corostack::{Coroutine, CoroutineTrapHandler, DefaultStack, Stack, Yielder};
use windows_sys::Win32::Foundation::{EXCEPTION_ACCESS_VIOLATION, EXCEPTION_STACK_OVERFLOW};
use windows_sys::Win32::System::Diagnostics::Debug::{
    AddVectoredExceptionHandler, EXCEPTION_CONTINUE_EXECUTION, EXCEPTION_CONTINUE_SEARCH,
    EXCEPTION_POINTERS,
};

thread_local! {
    static TRAP: Cell<Option<CoroutineTrapHandler<u32>>> = const { Cell::new(None) };
    /// The exception codes the handler recovered from.
    static SEEN: Cell<i32> = const { Cell::new(0) };
}

/// The embedder's handler: a fault of the coroutine whose handle is in
/// `TRAP` (its stack pointer inside the coroutine's stack) makes the
/// coroutine return 42; anything else goes on.
unsafe extern "system" fn on_fault(info: *mut EXCEPTION_POINTERS) -> i32 {
    // SAFETY: the system passes a valid EXCEPTION_POINTERS.
    let (code, context) = unsafe {
        (
            (*(*info).ExceptionRecord).ExceptionCode,
            (*info).ContextRecord,
        )
    };
    if code != EXCEPTION_ACCESS_VIOLATION && code != EXCEPTION_STACK_OVERFLOW {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    // SAFETY (the filter): the CONTEXT of the exception being handled.
    let Some(trap) = TRAP
        .get()
        .filter(|t| unsafe { t.context_in_bounds(context.cast()) })
    else {
        return EXCEPTION_CONTINUE_SEARCH;
    };
    SEEN.set(code);
    // SAFETY: a fault of the coroutine's own code, which touches nothing
    // but its own locals; the registers go into the exception's CONTEXT,
    // from which the system resumes the thread.
    unsafe { trap.setup_trap_handler(|| 42).write_to(context.cast()) };
    EXCEPTION_CONTINUE_EXECUTION
}

fn install() {
    // The crate's handler (with the overflow-handler feature) first, so
    // that ours, added after it and first in the chain, sees the fault
    // first.
    corostack::stack::install_overflow_handler();
    static ONCE: Once = Once::new();
    // SAFETY: `on_fault` has the signature the system calls.
    ONCE.call_once(|| unsafe {
        AddVectoredExceptionHandler(1, Some(on_fault));
    });
}

/// Recurses until the stack runs out.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let buf = black_box([depth; 64]);
    recurse(depth + 1) + buf[63]
}

/// Runs `body` in a coroutine on a 256 KiB stack with the handler in place;
/// checks that it came back as 42 after the exception `code`, and that the
/// stack then runs a new coroutine.
fn recovers(code: i32, body: fn() -> u32) {
    install();
    let stack = DefaultStack::new(256 * 1024).unwrap();
    let mut co = Coroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| body());
    TRAP.set(Some(co.trap_handler()));
    assert_eq!(co.resume(()).as_return(), Some(42));
    TRAP.set(None);
    assert_eq!(SEEN.get(), code, "the exception recovered from");
    assert!(co.done());
    let mut next = Coroutine::with_stack(co.into_stack(), |_: &Yielder<(), ()>, ()| 7u32);
    assert_eq!(next.resume(()).as_return(), Some(7));
}

child_test!(an_access_violation_is_recovered_into_a_return_value, {
    recovers(EXCEPTION_ACCESS_VIOLATION, || {
        // SAFETY: not sound, on purpose: address 8 is never mapped, and the
        // write faults.
        unsafe { std::ptr::write_volatile(black_box(8usize) as *mut u64, 1) };
        unreachable!("the write did not fault")
    });
});

child_test!(a_stack_overflow_is_recovered_into_a_return_value, {
    recovers(EXCEPTION_STACK_OVERFLOW, || recurse(0) as u32);
});

// Windows clears PAGE_GUARD on each guard page the overflow touches (a
// one-shot guard): unless the recovery puts it back, the stack's next
// overflow runs past its guard into the reserved page below, where the
// system has no stack left to raise the exception on and the process
// dies without a word (under Wine 8.0 it hangs: this test did, before). Twice on the same stack, through `into_stack`, and
// twice more through the thread's pool (a dropped stack of the same size
// is the next one made).
child_test!(
    a_recovered_overflow_leaves_the_stack_guarded_for_the_next,
    {
        install();
        let mut stack = DefaultStack::new(256 * 1024).unwrap();
        for round in 0..2 {
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| recurse(0) as u32);
            TRAP.set(Some(co.trap_handler()));
            SEEN.set(0);
            assert_eq!(co.resume(()).as_return(), Some(42), "round {round}");
            TRAP.set(None);
            assert_eq!(SEEN.get(), EXCEPTION_STACK_OVERFLOW, "round {round}");
            stack = co.into_stack();
        }
        let top = stack.top();
        drop(stack);
        for round in 2..4 {
            let stack = DefaultStack::new(256 * 1024).unwrap();
            assert_eq!(stack.top(), top, "round {round}: the pooled stack");
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| recurse(0) as u32);
            TRAP.set(Some(co.trap_handler()));
            SEEN.set(0);
            assert_eq!(co.resume(()).as_return(), Some(42), "round {round}");
            TRAP.set(None);
            assert_eq!(SEEN.get(), EXCEPTION_STACK_OVERFLOW, "round {round}");
        }
    }
);
