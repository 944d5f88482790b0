//! Adversarial tests of drops and unwinds that end in a panic, in every
//! kind of coroutine of the core (safe code only): an unstarted body whose
//! closure's drop panics, a body that catches the forced unwind and then
//! panics, reached through `drop`, `into_stack`, `force_unwind`,
//! `Generator::close`, `scope_into_stack`, a greenlet's kill or last
//! handle, and the same while the thread unwinds already (the panic is
//! then dropped), or from the destructors of another coroutine's unwind.
//!
//! What each checks: the stack is given back exactly once. Pooling is off
//! on the test's thread (`set_pool_capacity(0)`), so
//! [`DefaultStack::live`] counts the stacks not given back: a leak leaves
//! it above its base, a double release would unmap a mapping twice (and
//! count below the base, or crash). With pooling on, stacks handed out
//! after such drops are all distinct and usable at once (a stack given to
//! the pool twice would be handed out twice).
//!
//! Each test names the wrong implementation it catches. They run in a
//! child process (see `child_test!`): a double release may crash.

#[macro_use]
mod util;

use std::cell::RefCell;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::thread;

use corostack::bridge::AsyncCoroutine;
use corostack::greenlet::{Greenlet, current};
use corostack::stack::set_pool_capacity;
use corostack::{Coroutine, DefaultStack, Generator, ScopedCoroutine, Stack, Yielder};

/// The message of every panic these tests provoke.
const MSG: &str = "a drop that panics";

/// Panics when dropped (unless the thread unwinds already: then a panic
/// would abort the process, by Rust's rule, whatever the crate did).
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("{MSG}");
        }
    }
}

/// Panics when dropped, even while the thread unwinds: only for a value
/// that its owner drops inside a `catch_unwind` of its own.
struct AlwaysPanicOnDrop;

impl Drop for AlwaysPanicOnDrop {
    fn drop(&mut self) {
        panic!("{MSG}");
    }
}

/// Keeps the provoked panics' messages out of the test's output.
fn quiet() {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains(MSG) {
            hook(info);
        }
    }));
}

/// Runs `f` on a thread of its own with pooling off, and checks that it
/// gave back every stack it took.
fn counted(f: impl FnOnce() + Send + 'static) {
    quiet();
    thread::spawn(move || {
        set_pool_capacity(0);
        let base = DefaultStack::live();
        f();
        assert_eq!(DefaultStack::live(), base, "stacks not given back");
    })
    .join()
    .unwrap();
}

/// Whether `f` panicked with [`MSG`].
fn panics_with_msg(f: impl FnOnce()) -> bool {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(p) => {
            let m = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(m.contains(MSG), "another panic: {m}");
            true
        }
    }
}

/// An unstarted coroutine whose closure's drop panics.
fn unstarted() -> Coroutine<(), (), ()> {
    let guard = PanicOnDrop;
    Coroutine::new(move |_, ()| drop(guard))
}

/// A started coroutine whose body, once unwound, panics.
fn catches_and_panics() -> Coroutine<(), (), ()> {
    let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
        assert!(caught.is_err(), "the forced unwind");
        drop(PanicOnDrop);
    });
    assert!(co.resume(()).as_yield().is_some());
    co
}

/// Drops `v` while the thread unwinds (from a destructor of a panic's
/// unwind), which the panic then leaves; the outer panic is caught.
fn drop_while_unwinding<T>(v: T) {
    struct DropIn<T>(Option<T>);
    impl<T> Drop for DropIn<T> {
        fn drop(&mut self) {
            assert!(thread::panicking());
            drop(self.0.take());
        }
    }
    let held = DropIn(Some(v));
    let r = panic::catch_unwind(AssertUnwindSafe(move || {
        let _held = held;
        panic::panic_any(MSG);
    }));
    assert!(r.is_err());
}

// ===========================================================================
// 1. `drop` of a coroutine whose unwind panics, from ordinary code and while
// the thread unwinds (the panic is dropped then).
//
// Catches: a stack leaked when the panic leaves `drop` (the bug fixed by
// `unwind(in_drop)`), or released twice (once before the panic, once by a
// `drop` that runs on after it, or by the drop glue); a panic resumed while
// the thread unwinds (an abort).
// ===========================================================================

child_test!(drop_whose_unwind_panics_releases_the_stack_once, {
    counted(|| {
        for _ in 0..3 {
            assert!(panics_with_msg(|| drop(unstarted())));
            assert!(panics_with_msg(|| drop(catches_and_panics())));
        }
    });
});

child_test!(
    drop_while_unwinding_whose_unwind_panics_releases_the_stack,
    {
        counted(|| {
            drop_while_unwinding(unstarted());
            drop_while_unwinding(catches_and_panics());
        });
    }
);

// ===========================================================================
// 2. `into_stack` and `force_unwind` whose unwind panics: the panic reaches
// the caller; the coroutine is then done, and its stack is given back
// once (by the unwind of `into_stack`, by a later drop or `into_stack`),
// or kept by `mem::forget` (a leak by design, not a crash).
//
// Catches: `into_stack` that releases the stack before the panic and
// again when its `self` is dropped by that panic; a coroutine left not
// done after a panicking `force_unwind` (its drop would unwind it again,
// resuming a finished stack).
// ===========================================================================

child_test!(into_stack_and_force_unwind_whose_unwind_panics, {
    counted(|| {
        assert!(panics_with_msg(|| drop(unstarted().into_stack())));
        assert!(panics_with_msg(|| drop(catches_and_panics().into_stack())));

        let mut co = catches_and_panics();
        assert!(panics_with_msg(|| co.force_unwind()));
        assert!(co.done() && co.started());
        co.force_unwind(); // nothing left to unwind
        drop(co);

        let mut co = unstarted();
        assert!(panics_with_msg(|| co.force_unwind()));
        assert!(co.done() && !co.started());
        // The stack comes back whole: a new coroutine runs on it.
        let mut next = Coroutine::with_stack(co.into_stack(), |_: &Yielder<(), ()>, ()| 5);
        assert_eq!(next.resume(()).as_return(), Some(5));
    });
    // A forgotten coroutine keeps its stack: exactly one more is live.
    thread::spawn(|| {
        quiet();
        set_pool_capacity(0);
        let base = DefaultStack::live();
        let mut co = catches_and_panics();
        assert!(panics_with_msg(|| co.force_unwind()));
        std::mem::forget(co);
        assert_eq!(DefaultStack::live(), base + 1);
    })
    .join()
    .unwrap();
});

// ===========================================================================
// 3. Nested: a body holds coroutines whose unwinds panic, and is dropped.
// Its own forced unwind drops them, while the thread unwinds (their
// panics are dropped); and a coroutine whose body, once unwound, drops a
// coroutine whose drop panics and lets that panic out.
//
// Catches: a stack leaked or released twice when the inner drop happens
// inside another coroutine's unwind (on its stack).
// ===========================================================================

child_test!(coroutines_dropped_by_another_coroutines_unwind, {
    counted(|| {
        let inner = (unstarted(), catches_and_panics());
        let mut outer = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
            let _inner = inner;
            y.suspend(());
        });
        assert!(outer.resume(()).as_yield().is_some());
        drop(outer); // a clean unwind: the inner panics are dropped

        // The body catches its unwind, then drops a coroutine whose drop
        // panics: that panic is the body's, and reaches the outer drop.
        let mut outer = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
            let inner = catches_and_panics();
            let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
            assert!(caught.is_err());
            drop(inner);
        });
        assert!(outer.resume(()).as_yield().is_some());
        assert!(panics_with_msg(|| drop(outer)));
    });
});

// ===========================================================================
// 4. The pool: after drops whose unwind panicked, the stacks it hands out
// are distinct, and two coroutines live at once on them keep what they
// wrote on their stacks.
//
// Catches: a stack given to the pool twice (handed out twice: the two
// bodies would write over each other's frames).
// ===========================================================================

child_test!(
    the_pool_after_drops_that_panicked_hands_out_distinct_stacks,
    {
        quiet();
        thread::spawn(|| {
            for _ in 0..4 {
                assert!(panics_with_msg(|| drop(unstarted())));
                assert!(panics_with_msg(|| drop(catches_and_panics())));
                let mut co = catches_and_panics();
                assert!(panics_with_msg(|| co.force_unwind()));
                drop(co);
            }
            let stacks: Vec<DefaultStack> = (0..8).map(|_| DefaultStack::default()).collect();
            for (i, a) in stacks.iter().enumerate() {
                for b in &stacks[..i] {
                    assert_ne!(a.limit(), b.limit(), "one stack handed out twice");
                }
            }
            // Two bodies at once, each filling a buffer on its stack with its
            // own pattern and checking it after the other ran.
            let mut cos: Vec<_> = stacks
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    Coroutine::with_stack(s, move |y: &Yielder<(), ()>, ()| {
                        let buf = [i as u8; 4096];
                        for _ in 0..3 {
                            y.suspend(());
                            assert!(std::hint::black_box(&buf).iter().all(|&b| b == i as u8));
                        }
                    })
                })
                .collect();
            for _ in 0..4 {
                for co in &mut cos {
                    co.resume(());
                }
            }
            assert!(cos.iter().all(Coroutine::done));
        })
        .join()
        .unwrap();
    }
);

// ===========================================================================
// 5. The wrappers: `Generator` (drop, `close`), `AsyncCoroutine` (drop),
// `ScopedCoroutine` (drop unstarted, `scope`, `scope_into_stack`,
// `into_stack`), each with an unwind that ends in a panic.
//
// Catches: a wrapper that leaks (forgets its coroutine on the panic's way)
// or releases twice (its own drop and the inner coroutine's).
// ===========================================================================

child_test!(wrappers_whose_unwind_panics_release_their_stacks, {
    counted(|| {
        // Generator.
        let guard = PanicOnDrop;
        let g = Generator::<(), ()>::new(move |_| drop(guard));
        assert!(panics_with_msg(|| drop(g)));
        let started = || {
            let mut g = Generator::<(), u8>::new(|y| {
                let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(1)));
                assert!(caught.is_err());
                drop(PanicOnDrop);
            });
            assert_eq!(g.send(()), Some(1));
            g
        };
        assert!(panics_with_msg(|| drop(started())));
        assert!(panics_with_msg(|| drop(started().close())));
        drop_while_unwinding(started());

        // AsyncCoroutine, polled once by hand.
        let mut a = AsyncCoroutine::new(|y| {
            let caught = panic::catch_unwind(AssertUnwindSafe(|| {
                y.block_on(std::future::pending::<()>());
            }));
            assert!(caught.is_err());
            drop(PanicOnDrop);
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(std::pin::Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(panics_with_msg(|| drop(a)));

        // ScopedCoroutine: unstarted, borrowing a local.
        let local = RefCell::new(0u32);
        let guard = PanicOnDrop;
        let s = ScopedCoroutine::new(|_: &Yielder<(), ()>, ()| {
            *local.borrow_mut() += 1;
            drop(guard);
        });
        assert!(panics_with_msg(|| drop(s)));
        let scoped = || {
            ScopedCoroutine::new(|y: &Yielder<(), ()>, ()| {
                let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
                assert!(caught.is_err());
                *local.borrow_mut() += 1;
                drop(PanicOnDrop);
            })
        };
        assert!(panics_with_msg(|| {
            scoped().scope(|co| assert!(co.resume(()).as_yield().is_some()));
        }));
        assert!(panics_with_msg(|| {
            let (_, stack) =
                scoped().scope_into_stack(|co| assert!(co.resume(()).as_yield().is_some()));
            drop(stack);
        }));
        // Unstarted, with nothing that panics in its closure: no panic.
        drop(scoped().into_stack());
        assert_eq!(*local.borrow(), 2);
    });
});

// ===========================================================================
// 6. Greenlets: the last handle of an unstarted greenlet whose closure's
// drop panics, a kill of a greenlet that catches the unwind and panics,
// and both while the thread unwinds (the panic is dropped); a greenlet
// dropped by another greenlet's kill.
//
// Catches: a dead greenlet's stack not buried when its death carries a
// panic, or buried twice (by the killer and by the core's last drop).
// ===========================================================================

child_test!(greenlets_whose_kill_panics_release_their_stacks, {
    counted(|| {
        let guard = PanicOnDrop;
        let g = Greenlet::new(move |()| drop(guard));
        assert!(panics_with_msg(|| drop(g)));

        let started = || {
            let main = current::<()>();
            let g = Greenlet::new(move |()| {
                let caught = panic::catch_unwind(AssertUnwindSafe(|| main.switch(())));
                assert!(caught.is_err());
                drop(PanicOnDrop);
            });
            g.switch(());
            g
        };
        let g = started();
        assert!(panics_with_msg(|| g.kill()));
        assert!(g.done());
        drop(g);
        assert!(panics_with_msg(|| drop(started())));
        drop_while_unwinding(started());
        let guard = PanicOnDrop;
        drop_while_unwinding(Greenlet::new(move |()| drop(guard)));

        // A greenlet that holds one whose kill panics, killed: the inner
        // kill runs during the outer unwind, its panic is dropped.
        let inner = started();
        let main = current::<()>();
        let outer = Greenlet::new(move |()| {
            let _inner = inner;
            main.switch(());
        });
        outer.switch(());
        outer.kill();
        assert!(outer.done());

        // The last handle of an unstarted greenlet whose closure's drop
        // panics is a parent link: the drop of its dead child's last
        // handle drops it, and that kill's panic reaches the dropper.
        let guard = PanicOnDrop;
        let parent = Greenlet::new(move |()| drop(guard));
        let main = current::<()>();
        let child = Greenlet::new(move |()| main.switch(()));
        child.set_parent(&parent).unwrap();
        drop(parent);
        child.switch(());
        child.kill();
        assert!(child.done());
        assert!(panics_with_msg(|| drop(child)));
    });
});

// ===========================================================================
// 7. The thread's exit hook unwinds a forgotten coroutine whose body
// catches the unwind and panics: documented to abort with a message (a
// panic from a thread-local destructor would). A forgotten coroutine whose
// unwind drops coroutines whose drops panic is unwound cleanly (those
// panics are dropped: the thread unwinds).
// ===========================================================================

#[test]
fn a_panic_in_the_exit_hooks_unwind_aborts_with_its_message() {
    if util::child_role().as_deref() == Some("exit_hook_panics") {
        quiet();
        thread::spawn(|| {
            std::mem::forget(catches_and_panics());
        })
        .join()
        .ok();
        println!("CHILD-FINISHED");
        return;
    }
    let out = util::run_child(
        "a_panic_in_the_exit_hooks_unwind_aborts_with_its_message",
        "exit_hook_panics",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("a panic escaped the unwind of a coroutine suspended at thread exit"),
        "{stderr}"
    );
}

child_test!(the_exit_hook_unwinds_coroutines_whose_drops_panic, {
    quiet();
    thread::spawn(|| {
        let inner = (unstarted(), catches_and_panics());
        let mut outer = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
            let _inner = inner;
            y.suspend(());
        });
        assert!(outer.resume(()).as_yield().is_some());
        std::mem::forget(outer);
    })
    .join()
    .unwrap();
});

// ===========================================================================
// 8. A panic payload whose own drop panics: a drop while the thread
// unwinds drops the unwind's panic, and that drop panics in a destructor
// during cleanup: Rust aborts (as it does for any panic there). Outside an
// unwind, the payload reaches the caller, who drops it inside its own
// `catch_unwind`; the stack is back before.
// ===========================================================================

child_test!(
    a_payload_whose_drop_panics_reaches_the_caller_with_the_stack_back,
    {
        counted(|| {
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
                assert!(caught.is_err());
                panic::panic_any(AlwaysPanicOnDrop);
            });
            assert!(co.resume(()).as_yield().is_some());
            let before = DefaultStack::live();
            let p = panic::catch_unwind(AssertUnwindSafe(|| drop(co))).unwrap_err();
            assert!(p.is::<AlwaysPanicOnDrop>());
            assert_eq!(
                DefaultStack::live(),
                before - 1,
                "given back before the panic"
            );
            assert!(panics_with_msg(|| drop(p)));
        });
    }
);

// ===========================================================================
// 9. A body that catches the forced unwind and returns a value whose drop
// panics: the value is dropped (nobody takes it), and that panic reaches
// the dropper like any other panic of the unwind; the stack is back first.
// Likewise a greenlet killed whose body catches the kill and returns such
// a value (its killer takes the panic).
//
// Catches: the returned value dropped by `drop` after the unwind but
// before the stack's release (the stack leaks); a greenlet's entry that
// drops it outside any `catch_unwind` (the panic leaves an `extern "C"`
// function: the process aborts).
// ===========================================================================

/// A started coroutine whose body, once unwound, returns a value whose
/// drop panics.
fn returns_a_panicky_value() -> Coroutine<(), (), PanicOnDrop> {
    let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
        assert!(caught.is_err(), "the forced unwind");
        PanicOnDrop
    });
    assert!(co.resume(()).as_yield().is_some());
    co
}

child_test!(
    a_value_returned_after_the_forced_unwind_that_panics_when_dropped,
    {
        counted(|| {
            assert!(panics_with_msg(|| drop(returns_a_panicky_value())));
            assert!(panics_with_msg(|| drop(
                returns_a_panicky_value().into_stack()
            )));
            let mut co = returns_a_panicky_value();
            assert!(panics_with_msg(|| co.force_unwind()));
            assert!(co.done());
            drop(co);
            drop_while_unwinding(returns_a_panicky_value());
            // Even one that panics while the thread unwinds (its drop runs
            // in a `catch_unwind` of its own, where Rust allows it).
            let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
                let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
                assert!(caught.is_err(), "the forced unwind");
                AlwaysPanicOnDrop
            });
            assert!(co.resume(()).as_yield().is_some());
            drop_while_unwinding(co);
        });
    }
);

/// A value whose drop panics, passed between greenlets.
struct Panicky(#[allow(dead_code)] Option<PanicOnDrop>);

child_test!(a_greenlet_killed_that_returns_a_value_whose_drop_panics, {
    counted(|| {
        let main = current::<Panicky>();
        let g = Greenlet::new(move |_: Panicky| {
            let caught = panic::catch_unwind(AssertUnwindSafe(|| main.switch(Panicky(None))));
            assert!(caught.is_err(), "the kill");
            Panicky(Some(PanicOnDrop))
        });
        g.switch(Panicky(None));
        assert!(panics_with_msg(|| g.kill()));
        assert!(g.done());

        // Returned to a parent that waits for another type: the value is
        // dropped, and its drop's panic reaches the parent.
        let g = Greenlet::new(|_: Panicky| Panicky(Some(PanicOnDrop)));
        let to_g = g.clone();
        let h = Greenlet::new(move |n: u32| {
            to_g.switch(Panicky(None));
            n
        });
        assert!(panics_with_msg(|| {
            h.switch(1); // main waits for a u32; `g` returns a `Panicky` to it
        }));
        assert!(g.done());
        drop((g, h)); // `h` waits in its switch: killed
    });
});
