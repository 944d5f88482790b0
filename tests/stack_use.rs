//! What a coroutine takes of its stack before its body's own frames, and
//! that every stack size a constructor accepts runs a coroutine.
//!
//! `Coroutine::with_stack` counts, below the top: the closure, three copies
//! of it when the body starts, the first frame and 12 KiB for the entry's
//! frames and a forced unwind. These tests measure what really lands on
//! the stack (a buffer filled with a pattern, run on, and scanned for the
//! lowest byte that changed) in the build under test, debug included,
//! where every move of a value is a copy.

mod util;

use std::panic::{self, AssertUnwindSafe};

use corostack::stack::MIN_STACK_SIZE;
use corostack::{Coroutine, CoroutineResult, DefaultStack, SliceStack, Stack, Yielder};

/// What `with_stack` counts besides twice the closure: the first frame
/// (at most 64 bytes on every architecture but s390x) and the 12 KiB
/// reserve.
#[cfg(not(any(target_arch = "powerpc64", target_arch = "s390x", windows)))]
const COUNTED_BESIDES_THE_CLOSURE: usize = 64 + 12 * 1024;
/// On s390x the first frame is 176 bytes: the entry's 160-byte register
/// save area lies in it (see `arch/s390x.rs`).
#[cfg(target_arch = "s390x")]
const COUNTED_BESIDES_THE_CLOSURE: usize = 176 + 12 * 1024;
/// On Windows the first frame is 80 bytes and the reserve 16 KiB: its
/// forced unwind took 15.2 KiB under Wine (`arch/x86_64_windows.rs`).
#[cfg(windows)]
const COUNTED_BESIDES_THE_CLOSURE: usize = 80 + 16 * 1024;
/// On powerpc64le the reserve is 15.5 KiB: its forced unwind took 14.8 KiB
/// here (see `ENTRY_RESERVE` in `src/context.rs`).
#[cfg(target_arch = "powerpc64")]
const COUNTED_BESIDES_THE_CLOSURE: usize = 64 + 15 * 1024 + 512;

/// The pattern the measured stacks are filled with.
const PATTERN: u8 = 0xA5;

/// Runs a coroutine with a closure of `N` bytes on a patterned 1 MiB
/// stack: to its end, or (with `unwind`) to its first suspend and then
/// dropped. Returns the bytes of the stack it touched.
fn touched<const N: usize>(unwind: bool) -> usize {
    let memory = vec![PATTERN; 1 << 20].into_boxed_slice();
    // SAFETY: 1 MiB is far more than what these bodies use (twice the
    // closure and a few KiB, which is what the test checks).
    let stack = unsafe { SliceStack::new(memory) };
    let (lo, top) = (stack.limit(), stack.top());
    let big = [7u8; N];
    let mut co = Coroutine::with_stack(stack, move |y: &Yielder<(), ()>, ()| {
        std::hint::black_box(&big);
        if unwind {
            y.suspend(());
        }
        big[N / 2]
    });
    match co.resume(()) {
        CoroutineResult::Yield(()) => assert!(unwind),
        CoroutineResult::Return(b) => assert_eq!(b, 7),
    }
    let stack = co.into_stack();
    // SAFETY: the stack's memory, [lo, top), is alive (we hold the stack)
    // and nothing runs on it now.
    let bytes = unsafe { std::slice::from_raw_parts(lo as *const u8, top - lo) };
    let lowest = bytes.iter().position(|&b| b != PATTERN).unwrap();
    drop(stack);
    (top - lo) - lowest
}

fn check<const N: usize>() {
    for unwind in [false, true] {
        let used = touched::<N>(unwind);
        let counted = 2 * N + COUNTED_BESIDES_THE_CLOSURE;
        assert!(
            used <= counted,
            "closure of {N} bytes (unwind: {unwind}): {used} bytes used, {counted} counted"
        );
    }
}

#[test]
fn a_new_coroutine_takes_no_more_than_with_stack_counts() {
    if util::under_valgrind() {
        // valgrind marks what lies below a stack pointer as unreadable:
        // the scan cannot run there (and measures nothing of ours).
        return;
    }
    check::<8>();
    check::<1024>();
    check::<8192>();
    check::<40960>();
}

#[test]
fn a_closure_that_does_not_fit_is_refused_before_anything_runs() {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let big = [1u8; 40 * 1024];
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        Coroutine::<(), (), u8>::with_stack(stack, move |_, ()| big[0])
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("too small for a closure of 40960 bytes"),
        "{msg}"
    );
}

/// A body that suspends once, returns its input plus `a`, and is also
/// dropped suspended, on a stack made by `make`.
fn runs_on<S: Stack>(make: impl Fn() -> S) {
    let mut co = Coroutine::with_stack(make(), |y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
    assert_eq!(co.resume(2), CoroutineResult::Yield(2));
    assert_eq!(co.resume(3), CoroutineResult::Return(5));
    let mut dropped = Coroutine::with_stack(make(), |y: &Yielder<(), ()>, ()| {
        let _s = String::from("unwound");
        y.suspend(());
    });
    dropped.resume(());
    drop(dropped);
    // A closure of an eighth of the stack fits, as MIN_STACK_SIZE's docs say.
    let eighth = [3u8; MIN_STACK_SIZE / 8];
    let mut co = Coroutine::with_stack(make(), move |_: &Yielder<(), ()>, ()| eighth[9]);
    assert_eq!(co.resume(()), CoroutineResult::Return(3));
}

#[test]
fn every_stack_size_a_constructor_accepts_runs_a_coroutine() {
    runs_on(|| DefaultStack::new(MIN_STACK_SIZE).unwrap());
    runs_on(|| {
        // 16 bytes of slack for aligning both ends.
        let memory = vec![0u8; MIN_STACK_SIZE + 16].into_boxed_slice();
        // SAFETY: these bodies take a few KiB (measured above).
        let stack = unsafe { SliceStack::new(memory) };
        assert!(stack.size() >= MIN_STACK_SIZE);
        stack
    });
}
