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
