//! `Yielder::on_parent_stack`: the call runs on the stack of the context
//! that last resumed the coroutine, its value or panic comes back to the
//! body, and a backtrace taken inside it reaches the host's frames.

mod util;

use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};

use corostack::{Coroutine, DefaultStack, Stack, Yielder};

/// The address of a local of the caller's frame.
#[inline(never)]
fn here() -> usize {
    let local = 0u8;
    black_box(&local) as *const u8 as usize
}

#[test]
fn the_call_runs_on_the_resumers_stack_and_its_value_comes_back() {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let (lo, hi) = (stack.limit(), stack.top());
    let mut co = Coroutine::with_stack(stack, move |y: &Yielder<u32, (usize, usize)>, a: u32| {
        let inside = here();
        let there = y.on_parent_stack(here);
        let b = y.suspend((inside, there));
        // Again after a suspend: the parent is whoever resumed last.
        a + y.on_parent_stack(move || b * 10)
    });
    let outside = here();
    let (inside, there) = co.resume(1).as_yield().unwrap();
    assert!(lo <= inside && inside < hi);
    assert!(
        !(lo <= there && there < hi),
        "the call ran on the coroutine's stack"
    );
    assert!(
        there.abs_diff(outside) < 64 * 1024,
        "{there:#x} vs {outside:#x}"
    );
    assert_eq!(co.resume(4).as_return(), Some(41));
}

#[test]
fn a_nested_coroutines_parent_is_the_coroutine_that_resumed_it() {
    let outer_stack = DefaultStack::new(256 * 1024).unwrap();
    let (olo, ohi) = (outer_stack.limit(), outer_stack.top());
    let mut outer = Coroutine::with_stack(outer_stack, |_: &Yielder<(), ()>, ()| {
        let mut inner = Coroutine::new(|y: &Yielder<(), ()>, ()| y.on_parent_stack(here));
        inner.resume(()).as_return().unwrap()
    });
    let there = outer.resume(()).as_return().unwrap();
    assert!(
        olo <= there && there < ohi,
        "ran on the outer coroutine's stack"
    );
}

#[test]
fn a_panic_in_the_call_propagates_in_the_body() {
    let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            y.on_parent_stack(|| panic::panic_any(7u32))
        }));
        *caught.unwrap_err().downcast::<u32>().unwrap()
    });
    assert_eq!(co.resume(()).as_return(), Some(7));
    // Uncaught in the body, it reaches the resumer with its payload.
    let mut co = Coroutine::<(), (), ()>::new(|y, ()| y.on_parent_stack(|| panic::panic_any(8u32)));
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert_eq!(err.downcast_ref::<u32>(), Some(&8));
    assert!(co.done());
}

/// The host function a backtrace from inside the call must show.
#[inline(never)]
fn host_resumes_for_the_backtrace(co: &mut Coroutine<(), (), String>) -> String {
    black_box(co.resume(())).as_return().unwrap()
}

#[test]
fn a_backtrace_inside_the_call_reaches_the_host() {
    let mut co = Coroutine::<(), (), String>::new(|y, ()| {
        y.on_parent_stack(|| std::backtrace::Backtrace::force_capture().to_string())
    });
    let trace = host_resumes_for_the_backtrace(&mut co);
    assert!(
        trace.contains("host_resumes_for_the_backtrace"),
        "the host's frame is missing:\n{trace}"
    );
}

#[test]
fn a_call_made_while_the_coroutine_is_dropped_runs_too() {
    struct CallsParentOnDrop<'a>(&'a Yielder<(), ()>, std::rc::Rc<std::cell::Cell<u32>>);
    impl Drop for CallsParentOnDrop<'_> {
        fn drop(&mut self) {
            self.1.set(self.0.on_parent_stack(|| 5));
        }
    }
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let s = seen.clone();
    let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let _d = CallsParentOnDrop(y, s);
        y.suspend(());
    });
    co.resume(());
    drop(co);
    assert_eq!(seen.get(), 5);
}

#[test]
fn deep_recursion_from_a_small_stack_runs_on_the_parent() {
    fn depth(n: u64) -> u64 {
        let pad = black_box([0u8; 64]);
        if n == 0 {
            return u64::from(pad[0]);
        }
        1 + black_box(depth(n - 1))
    }
    // Far more than 64 KiB of frames (about 160 bytes each in a debug
    // build), well within the test thread's 2 MiB.
    let n = util::scaled(4_000, 2_000) as u64;
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let mut co = Coroutine::with_stack(stack, |y: &Yielder<u64, ()>, n: u64| {
        y.on_parent_stack(move || depth(n))
    });
    assert_eq!(co.resume(n).as_return(), Some(n));
}
