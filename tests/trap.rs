//! Trap recovery: a fault inside a coroutine, caught by a signal handler
//! that the test installs, comes back to the resumer as the coroutine's
//! return (or panic), and the stack runs a new coroutine afterwards. Each
//! case in a child process, since a failure is a crash.
//!
//! Unix: the handler is a signal handler (`sigaction`, `sigaltstack`).
#![cfg(unix)]

mod util;

use std::cell::Cell;
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use corostack::{Coroutine, CoroutineTrapHandler, DefaultStack, Yielder};

thread_local! {
    static TRAP: Cell<Option<CoroutineTrapHandler<u32>>> = const { Cell::new(None) };
    /// What the handler makes the coroutine return: a value, or a panic.
    static PANIC_IN_F: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn on_fault(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: an SA_SIGINFO handler's third argument.
    if let Some(trap) = TRAP.get().filter(|t| unsafe { t.context_in_bounds(uc) }) {
        let regs = if PANIC_IN_F.get() {
            // SAFETY: a fault of the test's own coroutine code, which holds
            // nothing; on the alternate stack installed below.
            unsafe { trap.setup_trap_handler(|| panic::panic_any(7u32)) }
        } else {
            // SAFETY: as above.
            unsafe { trap.setup_trap_handler(|| 42) }
        };
        // SAFETY: this handler's own context.
        unsafe { regs.write_to(uc) };
        return;
    }
    // Not ours: a real crash.
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() };
}

/// Installs `on_fault` for SIGSEGV and SIGBUS, on an alternate stack of
/// this thread's, after the crate's own handler (with the overflow-handler
/// feature), which a later handler must take precedence over.
fn install() {
    corostack::stack::install_overflow_handler();
    util::install_fault_handler(on_fault);
}

/// Runs `case` in a child process playing `name`, and checks that the
/// child finished.
fn in_child(name: &str, case: fn()) {
    if util::child_role().as_deref() == Some(name) {
        install();
        case();
        println!("CHILD-FINISHED");
        return;
    }
    let out = util::run_child(name, name);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("CHILD-FINISHED"),
        "{:?}\n{stdout}\n{stderr}",
        out.status
    );
}

/// A recursion that only a full stack stops.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = black_box([n; 16]);
    if pad[3] == u64::MAX {
        return 0;
    }
    1 + black_box(recurse(pad[3] + 1))
}

fn overflow_comes_back_as_a_return() {
    let mut co = Coroutine::with_stack(
        DefaultStack::new(64 * 1024).unwrap(),
        |_: &Yielder<(), ()>, ()| recurse(0) as u32,
    );
    TRAP.set(Some(co.trap_handler()));
    assert_eq!(co.resume(()).as_return(), Some(42));
    assert!(co.done());
    // The same stack runs a new coroutine to completion.
    let stack = co.into_stack();
    let mut next = Coroutine::with_stack(stack, |y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
    assert_eq!(next.resume(1).as_yield(), Some(1));
    assert_eq!(next.resume(2).as_return(), Some(3));
}

#[test]
#[cfg_attr(feature = "asan", ignore = "ASan takes SIGSEGV itself")]
fn an_overflow_caught_by_the_embedders_handler_comes_back_as_a_return() {
    in_child(
        "an_overflow_caught_by_the_embedders_handler_comes_back_as_a_return",
        overflow_comes_back_as_a_return,
    );
}

fn protected_read_comes_back_as_a_return() {
    // SAFETY: a fresh PROT_NONE page, never unmapped (the child ends).
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as usize;
    let mut co = Coroutine::new(move |_: &Yielder<(), ()>, ()| {
        // SAFETY: none: this read faults, which is the point.
        unsafe { ptr::read_volatile(page as *const u32) }
    });
    TRAP.set(Some(co.trap_handler()));
    assert_eq!(co.resume(()).as_return(), Some(42));
}

#[test]
#[cfg_attr(feature = "asan", ignore = "ASan takes SIGSEGV itself")]
fn a_read_of_a_protected_page_comes_back_as_a_return() {
    in_child(
        "a_read_of_a_protected_page_comes_back_as_a_return",
        protected_read_comes_back_as_a_return,
    );
}

fn protected_read_in_libc_comes_back_as_a_return() {
    // SAFETY: a fresh PROT_NONE page, never unmapped (the child ends).
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let page = page as usize;
    let mut co = Coroutine::new(move |_: &Yielder<(), ()>, ()| {
        // SAFETY: none: this read faults, inside the C library, which is
        // the point.
        unsafe { libc::strnlen(black_box(page) as *const libc::c_char, 4096) as u32 }
    });
    TRAP.set(Some(co.trap_handler()));
    assert_eq!(co.resume(()).as_return(), Some(42));
}

/// The fault stops foreign code, not Rust's: on armv7, Debian's armhf
/// glibc compiles its C functions (`strnlen` among them) to Thumb code,
/// while the recovery's entry is ARM code, so the recovery must switch the
/// instruction set (CPSR's T bit), which `write_to` does.
#[test]
#[cfg_attr(feature = "asan", ignore = "ASan takes SIGSEGV itself")]
fn a_fault_inside_the_c_library_comes_back_as_a_return() {
    in_child(
        "a_fault_inside_the_c_library_comes_back_as_a_return",
        protected_read_in_libc_comes_back_as_a_return,
    );
}

fn panic_in_f_reaches_the_resumer() {
    PANIC_IN_F.set(true);
    let mut co = Coroutine::with_stack(
        DefaultStack::new(64 * 1024).unwrap(),
        |_: &Yielder<(), ()>, ()| recurse(0) as u32,
    );
    TRAP.set(Some(co.trap_handler()));
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert_eq!(err.downcast_ref::<u32>(), Some(&7));
    assert!(co.done());
}

#[test]
#[cfg_attr(feature = "asan", ignore = "ASan takes SIGSEGV itself")]
fn a_panic_in_the_trap_closure_reaches_the_resumer() {
    in_child(
        "a_panic_in_the_trap_closure_reaches_the_resumer",
        panic_in_f_reaches_the_resumer,
    );
}

#[test]
fn the_handler_knows_the_stack_and_its_guard() {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    use corostack::Stack;
    let (lo, hi, guard) = (stack.limit(), stack.top(), stack.guard_size());
    let co = Coroutine::<(), (), u32>::with_stack(stack, |_, ()| 1);
    let trap = co.trap_handler();
    assert!(trap.stack_ptr_in_bounds(lo));
    assert!(trap.stack_ptr_in_bounds(hi - 1));
    assert!(trap.stack_ptr_in_bounds(lo - guard), "the guard counts");
    assert!(!trap.stack_ptr_in_bounds(lo - guard - 1));
    assert!(!trap.stack_ptr_in_bounds(hi));
}

fn scoped_overflow_comes_back_as_a_return() {
    use corostack::scoped::ScopedCoroutine;
    let depth = std::cell::Cell::new(0u64);
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let (back, stack) = ScopedCoroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| {
        // A body that borrows: the recursion writes the borrowed cell.
        depth.set(recurse(0));
        1
    })
    .scope_into_stack(|co| {
        TRAP.set(Some(co.trap_handler()));
        let back = co.resume(()).as_return();
        TRAP.set(None);
        assert!(co.done());
        back
    });
    assert_eq!(back, Some(42));
    assert_eq!(depth.get(), 0, "the body's frames were abandoned");
    let mut next = Coroutine::with_stack(stack, |y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
    assert_eq!(next.resume(1).as_yield(), Some(1));
    assert_eq!(next.resume(2).as_return(), Some(3));
}

#[test]
#[cfg_attr(feature = "asan", ignore = "ASan takes SIGSEGV itself")]
fn an_overflow_in_a_scoped_coroutine_comes_back_as_a_return() {
    in_child(
        "an_overflow_in_a_scoped_coroutine_comes_back_as_a_return",
        scoped_overflow_comes_back_as_a_return,
    );
}
