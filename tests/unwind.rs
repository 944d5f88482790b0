//! The forced unwind (drop and `into_stack` of a suspended coroutine) in
//! the cases an adversarial body makes: it catches the unwind and goes on,
//! it keeps the private payload and raises it again elsewhere, a
//! destructor that the unwind runs suspends. None may abort, hang or reach
//! an internal `unreachable!`.

mod util;

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::{Coroutine, Yielder};
use util::DropCounter;

/// The message of a panic payload, if it has one.
fn message(p: &(dyn Any + Send)) -> Option<&str> {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
}

#[test]
fn a_kept_unwind_payload_raised_in_another_coroutine_is_a_panic_there() {
    let stash: Rc<RefCell<Option<Box<dyn Any + Send>>>> = Rc::default();
    let keep = stash.clone();
    let mut a = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(()))) {
            *keep.borrow_mut() = Some(p);
        }
    });
    a.resume(());
    drop(a);
    let payload = stash.take().expect("the body caught its unwind");
    let mut b = Coroutine::<(), (), ()>::new(move |_, ()| panic::resume_unwind(payload));
    let err = panic::catch_unwind(AssertUnwindSafe(|| b.resume(()))).unwrap_err();
    // The payload itself comes out, not an internal error of the crate.
    assert!(message(&*err).is_none(), "{:?}", message(&*err));
    assert!(b.done());
}

#[test]
fn a_body_that_catches_the_unwind_is_unwound_again_at_its_next_suspend() {
    let drops = DropCounter::default();
    let (outer, value) = (drops.guard(), drops.guard());
    let mut co = Coroutine::new(move |y: &Yielder<(), util::DropGuard>, ()| {
        let _outer = outer;
        let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(drops_guard_dummy())));
        // Goes on after its unwind: this suspend unwinds at once, and its
        // value is dropped.
        y.suspend(value);
        unreachable!("a suspend after the unwind returned");
    });
    let first = co.resume(()).as_yield().expect("yields");
    drop(first);
    drop(co);
    assert_eq!(drops.get(), 2);
}

fn drops_guard_dummy() -> util::DropGuard {
    DropCounter::default().guard()
}

/// Suspends in its destructor.
struct SuspendOnDrop<'a>(&'a Yielder<(), u32>);

impl Drop for SuspendOnDrop<'_> {
    fn drop(&mut self) {
        self.0.suspend(99);
    }
}

/// The child role of the test below.
const SUSPEND_IN_DROP: &str = "suspend-in-drop";

#[test]
fn a_destructor_that_suspends_during_a_drop_panics_with_a_message() {
    if util::child_role().as_deref() == Some(SUSPEND_IN_DROP) {
        let mut co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
            let _suspends = SuspendOnDrop(y);
            y.suspend(1);
        });
        assert_eq!(co.resume(()).as_yield(), Some(1));
        drop(co);
        println!("the drop returned");
        return;
    }
    let out = util::run_child(
        "a_destructor_that_suspends_during_a_drop_panics_with_a_message",
        SUSPEND_IN_DROP,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The panic escapes the destructor during the unwind: Rust aborts,
    // after the message that says why.
    assert!(
        stderr.contains("suspend called while its coroutine is being dropped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("panic in a destructor during cleanup"),
        "{stderr}"
    );
    assert!(!stdout.contains("the drop returned"));
    assert!(!out.status.success());
}

#[test]
fn a_suspend_after_a_caught_unwind_while_the_dropper_unwinds_is_a_panic_not_an_abort() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let mut co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
        let _guard = guard;
        let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(1)));
        // Normal code again, but the dropper is unwinding: the suspend
        // panics with its message, which the drop swallows.
        y.suspend(2);
    });
    co.resume(());
    let err = panic::catch_unwind(AssertUnwindSafe(move || {
        let _co = co;
        panic!("the dropper's own panic");
    }))
    .unwrap_err();
    assert_eq!(message(&*err), Some("the dropper's own panic"));
    assert_eq!(drops.get(), 1);
}

#[test]
fn the_pool_serves_new_coroutines_after_unwinds_caught_and_raised_again() {
    for _ in 0..3 {
        let mut co = Coroutine::new(|y: &Yielder<(), u32>, ()| {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(1)));
            y.suspend(2);
        });
        co.resume(());
        drop(co);
        let mut fresh = Coroutine::new(|y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
        assert_eq!(fresh.resume(2).as_yield(), Some(2));
        assert_eq!(fresh.resume(3).as_return(), Some(5));
    }
}

#[test]
fn force_unwind_runs_the_destructors_and_keeps_the_handle() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let mut co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
        let _guard = guard;
        y.suspend(1);
        y.suspend(2);
    });
    assert_eq!(co.resume(()).as_yield(), Some(1));
    co.force_unwind();
    assert_eq!(drops.get(), 1);
    assert!(co.done());
    // Again: nothing happens.
    co.force_unwind();
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert!(message(&*err).unwrap().contains("already finished"));
    // The stack comes back and runs a new coroutine.
    let stack = co.into_stack();
    let mut next = Coroutine::with_stack(stack, |y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
    assert_eq!(next.resume(3).as_yield(), Some(3));
    assert_eq!(next.resume(4).as_return(), Some(7));
}

#[test]
fn force_unwind_of_an_unstarted_coroutine_drops_its_closure() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let mut co = Coroutine::<(), (), ()>::new(move |_, ()| drop(guard));
    co.force_unwind();
    assert_eq!(drops.get(), 1);
    assert!(co.done());
}

/// Drops counted in a static, so that a value abandoned on a stack leaks
/// no heap memory (LeakSanitizer would report it).
static ABANDONED_DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bumps `ABANDONED_DROPS` when dropped.
struct StaticGuard;

impl Drop for StaticGuard {
    fn drop(&mut self) {
        ABANDONED_DROPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn force_reset_abandons_the_frames_without_running_them() {
    let mut co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
        let _guard = StaticGuard;
        y.suspend(1);
        unreachable!("an abandoned body never runs again");
    });
    assert_eq!(co.resume(()).as_yield(), Some(1));
    // SAFETY: the frames hold a guard that only counts its drop.
    unsafe { co.force_reset() };
    assert!(co.done());
    let drops = || ABANDONED_DROPS.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(drops(), 0, "nothing on the stack ran");
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert!(message(&*err).unwrap().contains("already finished"));
    let stack = co.into_stack();
    let mut next = Coroutine::with_stack(stack, |y: &Yielder<u32, u32>, a: u32| a * y.suspend(a));
    assert_eq!(next.resume(3).as_yield(), Some(3));
    assert_eq!(next.resume(4).as_return(), Some(12));
    drop(next);
    assert_eq!(drops(), 0);
}
