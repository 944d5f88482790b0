//! `ScopedCoroutine`: bodies that borrow, dropped before their borrows end
//! on every path out of `scope`.

mod util;

use std::panic::{self, AssertUnwindSafe};

use corostack::scoped::ScopedCoroutine;
use corostack::{CoroutineResult, Yielder};
use util::DropCounter;

#[test]
fn a_body_borrows_its_inputs_and_yields_borrows() {
    let words = ["alpha".to_string(), "beta".to_string()];
    let counts = ScopedCoroutine::new(|y: &Yielder<&str, usize>, first: &str| {
        let mut total = first.len();
        let mut next = y.suspend(total);
        while !next.is_empty() {
            total += next.len();
            next = y.suspend(total);
        }
        total
    })
    .scope(|co| {
        let a = co.resume(&words[0]);
        let b = co.resume(&words[1]);
        let end = co.resume("");
        (a, b, end)
    });
    assert_eq!(
        counts,
        (
            CoroutineResult::Yield(5),
            CoroutineResult::Yield(9),
            CoroutineResult::Return(9)
        )
    );
}

#[test]
fn a_suspended_body_is_unwound_when_the_scope_ends() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let data = vec![1, 2, 3];
    let first = ScopedCoroutine::new(|y: &Yielder<(), &i32>, ()| {
        let _guard = guard;
        for x in &data {
            y.suspend(x);
        }
    })
    .scope(|co| *co.resume(()).as_yield().unwrap());
    assert_eq!(first, 1);
    assert_eq!(drops.get(), 1, "dropped before scope returned");
}

#[test]
fn a_panic_in_the_scope_still_drops_the_coroutine_first() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        ScopedCoroutine::new(move |y: &Yielder<(), ()>, ()| {
            let _guard = guard;
            y.suspend(());
        })
        .scope(|co| {
            co.resume(());
            panic!("in the scope");
        })
    }))
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"in the scope"));
    assert_eq!(drops.get(), 1);
}

#[test]
fn a_scoped_thread_in_a_suspended_body_is_joined_before_the_borrow_ends() {
    let shared = std::sync::Mutex::new(Vec::new());
    ScopedCoroutine::new(|y: &Yielder<(), ()>, ()| {
        std::thread::scope(|s| {
            s.spawn(|| shared.lock().unwrap().push(1));
            y.suspend(());
        });
    })
    .scope(|co| {
        co.resume(());
    });
    assert_eq!(*shared.lock().unwrap(), [1]);
}

#[test]
fn an_unstarted_scoped_coroutine_that_is_forgotten_runs_nothing() {
    /// Counts its drop in a borrowed cell (no heap: a forgotten one leaks
    /// nothing that LeakSanitizer would report).
    struct Counted<'a>(&'a std::cell::Cell<usize>);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let drops = std::cell::Cell::new(0);
    let data = String::from("borrowed");
    let guard = Counted(&drops);
    let co = ScopedCoroutine::<(), (), usize>::new(|_, ()| {
        let _guard = guard;
        data.len()
    });
    std::mem::forget(co);
    drop(data);
    assert_eq!(drops.get(), 0);
}

/// Counts its drops in a borrowed cell (no heap, so that one abandoned on
/// purpose leaks nothing LeakSanitizer would report).
struct Counted<'a>(&'a std::cell::Cell<usize>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn scope_into_stack_unwinds_the_body_then_gives_the_same_stack_back() {
    use corostack::{DefaultStack, Stack};
    let drops = std::cell::Cell::new(0);
    let data = vec![10, 20, 30];
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let top = stack.top();
    let (first, stack) = ScopedCoroutine::with_stack(stack, |y: &Yielder<(), &i32>, ()| {
        let _counted = Counted(&drops);
        for x in &data {
            y.suspend(x);
        }
    })
    .scope_into_stack(|co| *co.resume(()).as_yield().unwrap());
    assert_eq!(first, 10);
    assert_eq!(
        drops.get(),
        1,
        "the suspended body was unwound before the stack came back"
    );
    assert_eq!(stack.top(), top);
    // The stack runs the next body, which borrows too.
    let (sum, _) =
        ScopedCoroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| data.iter().sum::<i32>())
            .scope_into_stack(|co| co.resume(()).as_return());
    assert_eq!(sum, Some(60));
}

#[test]
fn scope_into_stack_joins_a_scoped_thread_of_the_body_before_returning() {
    let shared = std::sync::Mutex::new(Vec::new());
    let ((), _stack) = ScopedCoroutine::new(|y: &Yielder<(), ()>, ()| {
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                shared.lock().unwrap().push(1)
            });
            y.suspend(());
        });
    })
    .scope_into_stack(|co| {
        co.resume(());
    });
    assert_eq!(*shared.lock().unwrap(), [1]);
}

#[test]
fn a_panic_in_scope_into_stack_drops_the_coroutine_as_it_passes() {
    let drops = std::cell::Cell::new(0);
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        ScopedCoroutine::new(|y: &Yielder<(), ()>, ()| {
            let _counted = Counted(&drops);
            y.suspend(());
        })
        .scope_into_stack(|co| {
            co.resume(());
            panic!("in the scope");
        })
    }))
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"in the scope"));
    assert_eq!(drops.get(), 1);
}

#[test]
fn into_stack_of_an_unstarted_scoped_coroutine_drops_its_closure_and_runs_nothing() {
    let drops = std::cell::Cell::new(0);
    let ran = std::cell::Cell::new(false);
    let counted = Counted(&drops);
    let co = ScopedCoroutine::<(), (), ()>::new(|_, ()| {
        let _counted = counted;
        ran.set(true);
    });
    let stack = co.into_stack();
    assert_eq!((drops.get(), ran.get()), (1, false));
    // The stack is whole: a new coroutine runs on it.
    let mut next =
        corostack::Coroutine::with_stack(stack, |y: &Yielder<u8, u8>, a| a + y.suspend(a));
    assert_eq!(next.resume(1).as_yield(), Some(1));
    assert_eq!(next.resume(2).as_return(), Some(3));
}

#[test]
fn force_reset_abandons_the_body_without_running_its_destructors() {
    let drops = std::cell::Cell::new(0);
    let after = std::cell::Cell::new(false);
    let (done, stack) = ScopedCoroutine::new(|y: &Yielder<(), ()>, ()| {
        let _counted = Counted(&drops);
        y.suspend(());
        after.set(true);
    })
    .scope_into_stack(|co| {
        co.resume(());
        // SAFETY: the body holds a counter of a borrowed cell, which
        // needs no drop, and no borrow that anything else relies on.
        unsafe { co.force_reset() };
        let resumed = panic::catch_unwind(AssertUnwindSafe(|| co.resume(())));
        assert!(resumed.is_err(), "a reset coroutine is done");
        co.done()
    });
    assert!(done);
    assert_eq!((drops.get(), after.get()), (0, false));
    // The stack is written over by the next coroutine.
    let mut next = corostack::Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| 5);
    assert_eq!(next.resume(()).as_return(), Some(5));
}

#[test]
fn a_scoped_iterator_is_fused() {
    fn fused<I: std::iter::FusedIterator>(_: &I) {}
    let data = [1u8, 2];
    let rest =
        ScopedCoroutine::new(|y: &Yielder<(), &u8>, ()| data.iter().for_each(|x| y.suspend(x)))
            .scope(|it| {
                fused(it);
                let all: Vec<u8> = it.by_ref().copied().collect();
                assert_eq!(all, [1, 2]);
                (it.next(), it.next())
            });
    assert_eq!(rest, (None, None));
}
