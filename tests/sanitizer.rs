//! AddressSanitizer keeps working inside coroutines and `on_stack`: a real
//! use of a dead stack slot on their stacks is caught (built only with the `asan`
//! feature and `-Zsanitizer=address`; `.ci/run` does that).

#![cfg(feature = "asan")]

mod util;

use std::hint::black_box;

use corostack::{Coroutine, DefaultStack};

/// Runs the test `test` again in a child playing `role`, and checks that
/// ASan stopped it with a report of `kind`.
fn child_is_stopped_by_asan(test: &str, role: &str, kind: &str) {
    let out = util::run_child(test, role);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child should have been stopped by ASan:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("AddressSanitizer: {kind}")),
        "{stderr}"
    );
}

#[test]
fn asan_catches_a_use_after_scope_on_a_coroutine_stack() {
    const ROLE: &str = "use-after-scope";
    if util::child_role().as_deref() == Some(ROLE) {
        let mut co = Coroutine::<(), (), u8>::new(|y, ()| {
            y.suspend(());
            let dangling: *const u8;
            {
                let slot = black_box([7u8; 64]);
                dangling = slot.as_ptr();
                black_box(&slot);
            }
            // SAFETY: none: this read is the bug ASan must catch.
            unsafe { std::ptr::read_volatile(dangling.add(8)) }
        });
        co.resume(());
        let v = co.resume(());
        println!("read {v:?} without a report");
        return;
    }
    child_is_stopped_by_asan(
        "asan_catches_a_use_after_scope_on_a_coroutine_stack",
        ROLE,
        "stack-use-after-scope",
    );
}

#[test]
fn asan_catches_a_heap_use_after_free_inside_a_coroutine() {
    const ROLE: &str = "heap-use-after-free";
    if util::child_role().as_deref() == Some(ROLE) {
        let mut co = Coroutine::<(), (), u8>::new(|y, ()| {
            let boxed = Box::new([9u8; 64]);
            let dangling = boxed.as_ptr();
            drop(boxed);
            y.suspend(());
            // SAFETY: none: this read is the bug ASan must catch.
            unsafe { std::ptr::read_volatile(dangling.add(1)) }
        });
        co.resume(());
        let v = co.resume(());
        println!("read {v:?} without a report");
        return;
    }
    child_is_stopped_by_asan(
        "asan_catches_a_heap_use_after_free_inside_a_coroutine",
        ROLE,
        "heap-use-after-free",
    );
}

#[test]
fn asan_catches_a_use_after_scope_inside_on_stack() {
    const ROLE: &str = "on-stack-use-after-scope";
    if util::child_role().as_deref() == Some(ROLE) {
        let v = corostack::on_stack(DefaultStack::new(256 * 1024).unwrap(), || {
            let dangling: *const u8;
            {
                let slot = black_box([5u8; 64]);
                dangling = slot.as_ptr();
                black_box(&slot);
            }
            // SAFETY: none: this read is the bug ASan must catch.
            unsafe { std::ptr::read_volatile(dangling.add(8)) }
        });
        println!("read {v:?} without a report");
        return;
    }
    child_is_stopped_by_asan(
        "asan_catches_a_use_after_scope_inside_on_stack",
        ROLE,
        "stack-use-after-scope",
    );
}

/// Correct code on `on_stack` stacks, nested and repeated on pooled stacks,
/// panics crossing them included: ASan reports nothing.
#[test]
fn asan_reports_nothing_on_correct_code_inside_on_stack() {
    fn deep(n: u32) -> u32 {
        let local = black_box([n as u8; 32]);
        if n == 0 {
            return u32::from(local[0]);
        }
        corostack::maybe_grow(32 * 1024, 64 * 1024, || deep(n - 1)) + u32::from(local[1])
    }
    for round in 0..20u32 {
        let sum = corostack::on_stack(DefaultStack::new(64 * 1024).unwrap(), || deep(200));
        assert_eq!(sum, (1..=200).sum::<u32>(), "round {round}");
        let caught = std::panic::catch_unwind(|| {
            corostack::on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
                let _guard = black_box(vec![round; 8]);
                panic!("crossing");
            })
        });
        assert!(caught.is_err());
    }
}
