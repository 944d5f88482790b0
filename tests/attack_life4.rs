//! Adversarial tests of perf-life4: the x86_64 trampoline (a fresh
//! context's continuation through `CONTINUATION`, the memcheck detour at a
//! process's first arrival, data in rdx, a first frame of 32 bytes); a
//! body's ending handed to resume as a tagged spare word (a returned
//! value's address untagged, `ENDING_BIT` for an `Ending`, cold functions
//! for the rare endings); the pool's slot state in its top word (`OPEN`
//! and `SHUT` odd, a take `limit + size == top`); thread_exit's list head
//! that keeps its own address; `place_closure`'s unchecked placement.
//!
//! Safe code only, as a user would write it, except the trap handler
//! (whose API is `unsafe`). Every test runs in a child process
//! (`child_test!`): what they guard against is a crash or an abort, and
//! some need to be the process's first coroutine.

#[macro_use]
mod util;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use corostack::bridge::AsyncCoroutine;
use corostack::greenlet::Greenlet;
use corostack::stack::{DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE};
use corostack::{
    Coroutine, CoroutineResult, DefaultStack, Generator, ScopedCoroutine, Stack, Yielder,
};

/// A value aligned to a page, with bytes that tell it apart.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(4096))]
struct Paged([u8; 5]);

/// A value aligned to 64, of an odd size inside.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Line([u8; 3]);

/// A zero-sized value aligned to a page.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(align(4096))]
struct PagedZst;

/// A value whose drop panics (with a payload of its own), counting drops.
struct PanicOnDrop(&'static str, Rc<Cell<usize>>);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        self.1.set(self.1.get() + 1);
        if !std::thread::panicking() {
            panic::panic_any(self.0);
        }
    }
}

/// A panic payload whose own drop panics (only once the payload is
/// dropped outside an unwind).
struct PanickyPayload(u64);

impl Drop for PanickyPayload {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("payload {} dropped", self.0);
        }
    }
}

/// Runs a coroutine that yields `v` once and returns it, on the default
/// stack and on `stack`; the return comes back intact and the coroutine
/// is started and done.
fn round_trip<T: PartialEq + std::fmt::Debug + Clone + 'static>(v: T) {
    let (a, b) = (v.clone(), v.clone());
    let mut co = Coroutine::<u8, T, T>::new(move |y, n| {
        let odd = black_box([n; 7]);
        y.suspend(a);
        assert_eq!(odd[3], n);
        b
    });
    assert_eq!(co.resume(5), CoroutineResult::Yield(v.clone()));
    assert_eq!(co.resume(6), CoroutineResult::Return(v.clone()));
    assert!(co.started() && co.done());
    // The same stack, the same value, with no yield in between.
    let stack = co.into_stack();
    let c = v.clone();
    let mut co = Coroutine::<(), (), T>::with_stack(stack, move |_, ()| c);
    assert_eq!(co.resume(()), CoroutineResult::Return(v));
    assert!(co.started() && co.done());
}

child_test!(returns_of_every_size_and_alignment_come_back_intact, {
    round_trip(());
    round_trip(PagedZst);
    round_trip(0x5au8);
    round_trip(0xa55au16);
    round_trip(u128::MAX - 3);
    round_trip(i128::MIN + 1);
    round_trip([1u8, 2, 3]);
    round_trip(Line([7, 8, 9]));
    round_trip(Paged([1, 2, 3, 4, 5]));
    round_trip(Some(std::num::NonZeroU8::new(3).unwrap()));
    round_trip(None::<std::num::NonZeroU64>);
    round_trip(Ok::<u8, std::convert::Infallible>(4));
    round_trip(Err::<(), u8>(9));
    round_trip(String::from("a returned string"));
    round_trip(vec![Paged([9; 5]); 3]);
    round_trip(Box::new(Line([4; 3])));
    // Large ones: 64 KiB and 256 KiB by value, on the 1 MiB default stack.
    // A large one: 16 KiB by value, on the 1 MiB default stack. (64 KiB
    // overflows it in a debug build on riscv64, armv7, i686 and s390x, at
    // the merge base too: the entry's and catch_unwind's frames hold
    // several copies of the value.)
    let big = Box::new([0x3cu64; 2 * 1024]);
    let mut co = Coroutine::<(), (), [u64; 2 * 1024]>::new(move |_, ()| *big);
    let r = co.resume(()).as_return().unwrap();
    assert!(r.iter().all(|&w| w == 0x3c));
});

child_test!(page_aligned_returns_on_a_reused_stack, {
    // A page-aligned return, realigned, run again on the same stack many
    // times (reused, not pooled). Not the smallest stack: in a debug build
    // the entry's frames for a page-aligned return take 128 KiB here (160
    // KiB before perf-life4), more than the 12 KiB the docs count.
    let mut stack = DefaultStack::new(256 * 1024).unwrap();
    for i in 0..50u8 {
        let mut co = Coroutine::with_stack(stack, move |y: &Yielder<u8, Paged>, n: u8| {
            let m = y.suspend(Paged([n; 5]));
            Paged([m, i, n, m, i])
        });
        assert_eq!(co.resume(i), CoroutineResult::Yield(Paged([i; 5])));
        assert_eq!(
            co.resume(3),
            CoroutineResult::Return(Paged([3, i, i, 3, i]))
        );
        stack = co.into_stack();
    }
});

child_test!(
    a_returned_value_whose_drop_panics_is_handed_over_not_dropped,
    {
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let mut co = Coroutine::<(), (), PanicOnDrop>::new(move |_, ()| PanicOnDrop("late", d));
        let r = co.resume(()).as_return().unwrap();
        assert_eq!(drops.get(), 0, "dropped inside the coroutine");
        assert!(co.done() && co.started());
        drop(co);
        let p = panic::catch_unwind(AssertUnwindSafe(|| drop(r))).unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"late"));
        assert_eq!(drops.get(), 1);
    }
);

child_test!(
    a_body_that_catches_the_unwind_and_returns_a_panicking_value,
    {
        corostack::stack::trim_pool();
        let before = DefaultStack::live();
        let drops = Rc::new(Cell::new(0));
        // force_unwind: the returned value is dropped, its panic reaches the
        // caller, the coroutine is done and its stack reusable.
        let d = drops.clone();
        let mut co = Coroutine::<(), (), PanicOnDrop>::new(move |y, ()| {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
            PanicOnDrop("from force_unwind", d)
        });
        co.resume(());
        let p = panic::catch_unwind(AssertUnwindSafe(|| co.force_unwind())).unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"from force_unwind"));
        assert!(co.done() && co.started());
        assert_eq!(drops.get(), 1);
        let stack = co.into_stack();
        let mut next = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| Paged([2; 5]));
        assert_eq!(next.resume(()).as_return(), Some(Paged([2; 5])));
        // The same from a drop: the stack goes back before the panic leaves.
        let d = drops.clone();
        let mut co = Coroutine::<(), (), PanicOnDrop>::new(move |y, ()| {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
            PanicOnDrop("from drop", d)
        });
        co.resume(());
        let p = panic::catch_unwind(AssertUnwindSafe(move || drop(co))).unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"from drop"));
        assert_eq!(drops.get(), 2);
        drop(next);
        corostack::stack::trim_pool();
        assert_eq!(
            DefaultStack::live(),
            before,
            "a stack leaked or unmapped twice"
        );
    }
);

child_test!(bodies_that_panic_with_odd_payloads, {
    fn panics_with(p: impl FnOnce() -> Box<dyn Any + Send> + 'static) -> Box<dyn Any + Send> {
        let mut co = Coroutine::<(), u8, Paged>::new(move |y, ()| {
            y.suspend(1);
            panic::resume_unwind(p())
        });
        co.resume(());
        let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
        assert!(co.done() && co.started());
        let r = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
        assert!(
            r.downcast_ref::<&str>()
                .is_some_and(|m| m.contains("already finished"))
        );
        e
    }
    let e = panics_with(|| Box::new(()));
    assert!(e.is::<()>());
    let e = panics_with(|| Box::new(PagedZst));
    assert!(e.is::<PagedZst>());
    let e = panics_with(|| Box::new(Paged([6; 5])));
    assert_eq!(e.downcast_ref::<Paged>(), Some(&Paged([6; 5])));
    let e = panics_with(|| Box::new(Box::new(7u128) as Box<dyn Any + Send>));
    let inner = e.downcast::<Box<dyn Any + Send>>().unwrap();
    assert_eq!(inner.downcast_ref::<u128>(), Some(&7));
    // A payload whose drop panics: the resumer holds it, and its drop's
    // panic is the resumer's own.
    let e = panics_with(|| Box::new(PanickyPayload(11)));
    let again = panic::catch_unwind(AssertUnwindSafe(move || drop(e))).unwrap_err();
    assert!(
        again
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("payload 11"))
    );
    // Panicking at once (no suspend), and from a panicking closure drop
    // before the start.
    let mut co = Coroutine::<(), (), u8>::new(|_, ()| panic::panic_any(3u16));
    let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert_eq!(e.downcast_ref::<u16>(), Some(&3));
    let drops = Rc::new(Cell::new(0));
    let guard = PanicOnDrop("closure", drops.clone());
    let mut co = Coroutine::<(), (), u8>::new(move |_, ()| {
        let _g = &guard;
        1
    });
    let e = panic::catch_unwind(AssertUnwindSafe(|| co.force_unwind())).unwrap_err();
    assert_eq!(e.downcast_ref::<&str>(), Some(&"closure"));
    assert!(co.done() && !co.started(), "finished before its start");
    assert_eq!(drops.get(), 1);
});

child_test!(every_ending_then_into_stack_then_a_new_body, {
    // Each kind of ending on one stack in turn, each followed by a new
    // coroutine on the same stack that returns a page-aligned value.
    // (256 KiB: see `page_aligned_returns_on_a_reused_stack`.)
    let mut stack = DefaultStack::new(256 * 1024).unwrap();
    for kind in 0..6u8 {
        let mut co = Coroutine::with_stack(stack, move |y: &Yielder<u8, u8>, n: u8| {
            let s = String::from("held");
            let m = y.suspend(n);
            match kind {
                0 => Paged([m; 5]),
                1 => panic!("kind 1"),
                2 => panic::panic_any(PagedZst),
                _ => Paged([s.len() as u8; 5]),
            }
        });
        match kind {
            0..=2 => {
                assert_eq!(co.resume(kind), CoroutineResult::Yield(kind));
                let r = panic::catch_unwind(AssertUnwindSafe(|| co.resume(9)));
                assert_eq!(r.is_ok(), kind == 0);
                if kind == 0 {
                    assert_eq!(r.unwrap().as_return(), Some(Paged([9; 5])));
                }
                assert!(co.started());
            }
            3 => {
                co.resume(kind);
                co.force_unwind();
                assert!(co.started());
            }
            4 => {
                co.force_unwind();
                assert!(!co.started(), "unwound before its start");
            }
            _ => {
                co.resume(kind);
            }
        }
        stack = co.into_stack();
        let mut next =
            Coroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| Paged([kind; 5]));
        assert_eq!(next.resume(()).as_return(), Some(Paged([kind; 5])));
        assert!(next.started() && next.done());
        stack = next.into_stack();
    }
});

child_test!(coroutines_started_and_finished_inside_others, {
    // Three deep, each returning through the others, values of odd sizes;
    // inner ones dropped unfinished, forgotten, panicking.
    let mut outer = Coroutine::<u8, Line, Paged>::new(|y, n| {
        let mut mid = Coroutine::<u8, u8, (u128, Paged)>::new(move |y2, m| {
            let mut inner = Coroutine::<(), (), PagedZst>::new(|_, ()| PagedZst);
            assert_eq!(inner.resume(()).as_return(), Some(PagedZst));
            let mut unfinished = Coroutine::<(), u8, String>::new(|y3, ()| {
                let s = String::from("unwound");
                y3.suspend(1);
                s
            });
            unfinished.resume(());
            drop(unfinished);
            let mut forgotten = Coroutine::<(), u8, ()>::new(|y3, ()| y3.suspend(2));
            forgotten.resume(());
            std::mem::forget(forgotten);
            let mut panicking = Coroutine::<(), (), Paged>::new(|_, ()| panic!("inner"));
            assert!(panic::catch_unwind(AssertUnwindSafe(|| panicking.resume(()))).is_err());
            let k = y2.suspend(m + 1);
            (u128::from(k) << 100, Paged([k; 5]))
        });
        assert_eq!(mid.resume(n), CoroutineResult::Yield(n + 1));
        let back = y.suspend(Line([n; 3]));
        let (big, paged) = mid.resume(back).as_return().unwrap();
        assert_eq!(big, u128::from(back) << 100);
        paged
    });
    assert_eq!(outer.resume(4), CoroutineResult::Yield(Line([4; 3])));
    assert_eq!(outer.resume(6), CoroutineResult::Return(Paged([6; 5])));
});

child_test!(generators_greenlets_scoped_and_async_hand_back_values, {
    // Generator: yields of odd alignment.
    let mut g = Generator::new(|y: &Yielder<u8, Paged>| {
        let mut n = 0;
        for _ in 0..3 {
            n = y.suspend(Paged([n; 5]));
        }
    });
    assert_eq!(g.send(0), Some(Paged([0; 5])));
    assert_eq!(g.send(7), Some(Paged([7; 5])));
    assert_eq!(g.send(8), Some(Paged([8; 5])));
    assert_eq!(g.send(9), None);
    assert!(g.done());
    // Generator closed while suspended.
    let mut g = Generator::new(|y: &Yielder<(), u8>| {
        loop {
            y.suspend(1);
        }
    });
    assert_eq!(g.send(()), Some(1));
    drop(g.close());
    // Greenlets: a value through a dying greenlet back to its parent.
    let g = Greenlet::new(|v: u128| v * 3);
    assert_eq!(g.switch(5), 15);
    assert!(g.done());
    let g = Greenlet::new(|v: String| v + " back");
    assert_eq!(g.switch("there and".into()), "there and back");
    // Scoped: a borrowed buffer returned through.
    let mut buf = [Line([1; 3]); 4];
    let co = ScopedCoroutine::new(|_: &Yielder<(), ()>, ()| {
        buf[2] = Line([9; 3]);
        Paged([buf.len() as u8; 5])
    });
    let r = co.scope(|co| co.resume(()).as_return());
    assert_eq!(r, Some(Paged([4; 5])));
    assert_eq!(buf[2], Line([9; 3]));
    // Async: a pending future, then a page-aligned return.
    let mut polled = false;
    let pending = std::future::poll_fn(move |_| {
        if polled {
            Poll::Ready(3u8)
        } else {
            polled = true;
            Poll::Pending
        }
    });
    let mut task = AsyncCoroutine::new(move |y| Paged([y.block_on(pending); 5]));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
    assert_eq!(
        Pin::new(&mut task).poll(&mut cx),
        Poll::Ready(Paged([3; 5]))
    );
    // Async: a panic, then a drop of a pending one.
    let mut task = AsyncCoroutine::new(|_| -> u8 { panic!("async") });
    assert!(panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut task).poll(&mut cx))).is_err());
    let mut task = AsyncCoroutine::new(|y| y.block_on(std::future::pending::<PagedZst>()));
    assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
    drop(task);
});

// ---------------------------------------------------------------------------
// The pool's slot in its top word.
// ---------------------------------------------------------------------------

/// The bounds of a stack, for overlap checks.
fn bounds(s: &DefaultStack) -> (usize, usize) {
    (s.limit() - s.guard_size(), s.top())
}

/// Checks that no two of `live` overlap and each has its size.
fn check_disjoint(live: &[(DefaultStack, usize)]) {
    for (i, (a, size)) in live.iter().enumerate() {
        assert_eq!(a.top() - a.limit(), *size, "a stack of another size");
        assert!(a.top().is_multiple_of(16));
        for (b, _) in &live[i + 1..] {
            let (a0, a1) = bounds(a);
            let (b0, b1) = bounds(b);
            assert!(a1 <= b0 || b1 <= a0, "two live stacks overlap");
        }
    }
}

/// The system's page size (Windows: 4 KiB, as its `DefaultStack`s round).
fn page() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

child_test!(
    the_pool_gives_each_size_its_own_stacks_across_capacity_changes,
    {
        let before = DefaultStack::live();
        let p = page();
        // Sizes that round to the same pages and to others, odd ones among
        // them (every size a take tests is rounded first).
        let sizes = [
            MIN_STACK_SIZE,
            MIN_STACK_SIZE + 1,
            MIN_STACK_SIZE + p - 1,
            MIN_STACK_SIZE + p,
            64 * 1024 + 3,
            DEFAULT_STACK_SIZE - 1,
            DEFAULT_STACK_SIZE,
            DEFAULT_STACK_SIZE + 1,
        ];
        let mut live: Vec<(DefaultStack, usize)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let rounds = util::scaled(3000, 600);
        for round in 0..rounds {
            let r = next();
            match r % 7 {
                0..=2 if live.len() < 40 => {
                    let want = sizes[(r >> 8) as usize % sizes.len()];
                    let s = if r & 0x10000 == 0 {
                        DefaultStack::new(want).unwrap()
                    } else {
                        DefaultStack::default()
                    };
                    let size = if r & 0x10000 == 0 {
                        want.next_multiple_of(p)
                    } else {
                        DEFAULT_STACK_SIZE
                    };
                    live.push((s, size));
                }
                3 | 4 if !live.is_empty() => {
                    let i = (r >> 8) as usize % live.len();
                    drop(live.swap_remove(i));
                }
                5 => match (r >> 8) % 5 {
                    0 => {
                        corostack::stack::set_pool_capacity(0);
                    }
                    1 => {
                        corostack::stack::set_pool_capacity(1);
                    }
                    2 => {
                        corostack::stack::set_pool_capacity(corostack::stack::POOL_CAPACITY);
                    }
                    3 => corostack::stack::trim_pool(),
                    _ => {
                        corostack::stack::raise_pool_capacity(4);
                    }
                },
                _ => {
                    // A coroutine's life on the default stack in between.
                    let mut co = Coroutine::<(), (), u8>::new(move |_, ()| round as u8);
                    assert_eq!(co.resume(()).as_return(), Some(round as u8));
                }
            }
            check_disjoint(&live);
        }
        drop(live);
        corostack::stack::set_pool_capacity(corostack::stack::POOL_CAPACITY);
        corostack::stack::trim_pool();
        assert_eq!(
            DefaultStack::live(),
            before,
            "a stack leaked or unmapped twice"
        );
    }
);

child_test!(sizes_near_the_odd_states_are_refused_or_exact, {
    // limit + size, wrapping, against the odd words 1 and 3 (OPEN, SHUT):
    // sizes that would reach them from any page-aligned limit are either
    // refused (out of range) or rounded to pages first.
    let p = page();
    let s = DefaultStack::default();
    let limit = s.limit();
    drop(s);
    for target in [1usize, 3, usize::MAX, usize::MAX - 2] {
        let size = target.wrapping_sub(limit);
        match DefaultStack::new(size) {
            Ok(s) => {
                assert_eq!(s.size(), size.next_multiple_of(p));
                assert_ne!(s.top(), target);
                assert!(s.top().is_multiple_of(p));
            }
            Err(e) => assert!(matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::OutOfMemory
            )),
        }
    }
    // The largest size: mapped or refused, never a pooled stack of another
    // size.
    corostack::stack::trim_pool();
    drop(DefaultStack::default());
    // (Mapped, or refused by the kernel: valgrind refuses with EINVAL.)
    if let Ok(s) = DefaultStack::new(MAX_STACK_SIZE) {
        assert_eq!(s.size(), MAX_STACK_SIZE);
    }
    assert!(DefaultStack::new(MAX_STACK_SIZE + 1).is_err());
    assert!(DefaultStack::new(usize::MAX).is_err());
    assert!(DefaultStack::new(MIN_STACK_SIZE - 1).is_err());
    let s = DefaultStack::default();
    assert_eq!(s.size(), DEFAULT_STACK_SIZE);
});

/// Stacks made and dropped by a thread-local destructor, after the pool
/// of its thread is gone (this destructor's key was first used before the
/// pool's owner, so it runs after it).
struct AfterThePool(RefCell<Option<DefaultStack>>, &'static AtomicUsize);

impl Drop for AfterThePool {
    fn drop(&mut self) {
        // Given back to a pool that is gone: unmapped at once.
        drop(self.0.borrow_mut().take());
        for i in 0..4u8 {
            let mut co = Coroutine::<u8, u8, Paged>::new(|y, n| Paged([y.suspend(n); 5]));
            assert_eq!(co.resume(i), CoroutineResult::Yield(i));
            assert_eq!(co.resume(i + 1), CoroutineResult::Return(Paged([i + 1; 5])));
            let s = DefaultStack::new(64 * 1024).unwrap();
            drop(s);
            // Dropped before their start: the closure's drop is the ending.
            let g = Line([i; 3]);
            drop(Coroutine::<(), (), Line>::new(move |_, ()| g));
            let mut co = Coroutine::<(), (), Paged>::new(move |_, ()| Paged([i; 5]));
            co.force_unwind();
            assert!(co.done() && !co.started());
        }
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static AFTER: AfterThePool = AfterThePool(RefCell::new(None), &AFTER_RAN);
}
static AFTER_RAN: AtomicUsize = AtomicUsize::new(0);

child_test!(stacks_given_back_and_taken_after_the_pool_is_gone, {
    let before = DefaultStack::live();
    std::thread::spawn(|| {
        // First use: registered before the pool's owner.
        AFTER.with(|a| *a.0.borrow_mut() = Some(DefaultStack::default()));
        for _ in 0..3 {
            let mut co = Coroutine::<(), (), u8>::new(|_, ()| 1);
            co.resume(());
        }
        drop(DefaultStack::new(64 * 1024).unwrap());
    })
    .join()
    .unwrap();
    assert_eq!(AFTER_RAN.load(Ordering::SeqCst), 1);
    assert_eq!(
        DefaultStack::live(),
        before,
        "a stack leaked or unmapped twice"
    );
});

// ---------------------------------------------------------------------------
// thread_exit's head: resumes and starts from thread-local destructors.
// ---------------------------------------------------------------------------

/// A suspended coroutine, resumed to its end by a thread-local destructor.
struct ResumeAtExit(
    RefCell<Option<Coroutine<u8, u8, Paged>>>,
    &'static AtomicUsize,
);

impl Drop for ResumeAtExit {
    fn drop(&mut self) {
        let Some(mut co) = self.0.borrow_mut().take() else {
            return;
        };
        if co.done() {
            // The exit hook finished it first.
            assert!(co.started());
            self.1.fetch_add(10, Ordering::SeqCst);
            return;
        }
        assert_eq!(co.resume(4), CoroutineResult::Return(Paged([4; 5])));
        // A new coroutine started and finished here too, and one left
        // suspended (dropped, unwound).
        let mut fresh = Coroutine::<(), (), Line>::new(|_, ()| Line([1; 3]));
        assert_eq!(fresh.resume(()).as_return(), Some(Line([1; 3])));
        let mut left = Coroutine::<(), u8, ()>::new(|y, ()| y.suspend(1));
        left.resume(());
        drop(left);
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static EARLY: ResumeAtExit = ResumeAtExit(RefCell::new(None), &EARLY_RAN);
    static LATE: ResumeAtExit = ResumeAtExit(RefCell::new(None), &LATE_RAN);
}
static EARLY_RAN: AtomicUsize = AtomicUsize::new(0);
static LATE_RAN: AtomicUsize = AtomicUsize::new(0);

fn suspended() -> Coroutine<u8, u8, Paged> {
    let mut co = Coroutine::new(|y: &Yielder<u8, u8>, n: u8| {
        let s = String::from("frames");
        let m = y.suspend(n);
        assert_eq!(s.len(), 6);
        Paged([m; 5])
    });
    assert_eq!(co.resume(2), CoroutineResult::Yield(2));
    co
}

child_test!(coroutines_resumed_from_thread_local_destructors, {
    let before = DefaultStack::live();
    std::thread::spawn(|| {
        // EARLY's destructor runs after the hook (used before the first
        // start): the hook finished the coroutine; LATE's runs before it.
        EARLY.with(|_| ());
        let co = suspended();
        EARLY.with(|e| *e.0.borrow_mut() = Some(co));
        LATE.with(|l| *l.0.borrow_mut() = Some(suspended()));
    })
    .join()
    .unwrap();
    // (On Windows the hook runs before every thread-local destructor, from
    // a TLS callback of its own: it finished LATE's coroutine too.)
    assert_eq!(
        LATE_RAN.load(Ordering::SeqCst),
        if cfg!(windows) { 10 } else { 1 },
        "LATE resumed its coroutine"
    );
    assert_eq!(
        EARLY_RAN.load(Ordering::SeqCst),
        10,
        "the hook finished EARLY's"
    );
    // A thread whose first coroutine starts in a thread-local destructor.
    static FIRST: AtomicUsize = AtomicUsize::new(0);
    struct StartsAtExit;
    impl Drop for StartsAtExit {
        fn drop(&mut self) {
            let mut co = Coroutine::<u8, u8, u128>::new(|y, n| {
                let m = y.suspend(n);
                u128::from(m) << 90
            });
            co.resume(1);
            let mut left = Coroutine::<(), u8, ()>::new(|y, ()| y.suspend(1));
            left.resume(());
            std::mem::forget(left);
            assert_eq!(co.resume(3).as_return(), Some(3u128 << 90));
            FIRST.fetch_add(1, Ordering::SeqCst);
        }
    }
    thread_local!(static STARTS: StartsAtExit = const { StartsAtExit });
    std::thread::spawn(|| STARTS.with(|_| ())).join().unwrap();
    assert_eq!(FIRST.load(Ordering::SeqCst), 1);
    // The forgotten one leaks its stack; nothing else does.
    assert!(DefaultStack::live() <= before + 1);
});

/// Counts the drops of the values the bodies below return to the hook.
static RETURNED_DROPS: AtomicUsize = AtomicUsize::new(0);

/// A returned value that counts its drop.
struct Counted(Paged);

impl Drop for Counted {
    fn drop(&mut self) {
        assert_eq!(self.0, Paged([6; 5]));
        RETURNED_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static HELD: RefCell<Vec<Coroutine<(), u8, Counted>>> = const { RefCell::new(Vec::new()) };
}

child_test!(
    the_exit_hook_drops_what_a_body_returns_after_catching_its_unwind,
    {
        std::thread::spawn(|| {
            // Used before the first start: its destructor runs after the hook,
            // and finds the coroutines done.
            HELD.with(|_| ());
            for i in 0..3u8 {
                let mut co = Coroutine::<(), u8, Counted>::new(move |y, ()| {
                    let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(i)));
                    assert!(caught.is_err(), "resumed, not unwound");
                    Counted(Paged([6; 5]))
                });
                assert_eq!(co.resume(()).as_yield(), Some(i));
                if i == 2 {
                    // Forgotten: only the hook can end it.
                    std::mem::forget(co);
                } else {
                    HELD.with(|h| h.borrow_mut().push(co));
                }
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            RETURNED_DROPS.load(Ordering::SeqCst),
            3,
            "each returned value dropped once"
        );
    }
);

static TRACKED_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TRACKED_READS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACKED: util::Tracked = util::Tracked::new(&TRACKED_DROPPED);
}

child_test!(
    rearm_before_the_first_start_then_a_borrow_across_a_suspend,
    {
        // The list's head is not initialised when `rearm` registers the hook;
        // the first start (its head's address still null) registers it again,
        // after TRACKED's first use, so the hook unwinds the forgotten body
        // while TRACKED lives.
        std::thread::spawn(|| {
            TRACKED.with(|t| assert_eq!(t.read(), 6));
            assert!(corostack::thread_exit::rearm());
            for _ in 0..2 {
                let mut co = Coroutine::<(), (), Paged>::new(|y, ()| {
                    TRACKED.with(|t| {
                        let _g = util::ReadOnDrop(t, &TRACKED_READS);
                        y.suspend(());
                    });
                    Paged([1; 5])
                });
                co.resume(());
                std::mem::forget(co);
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            TRACKED_READS.load(Ordering::SeqCst),
            2,
            "both bodies unwound at exit"
        );
    }
);

// ---------------------------------------------------------------------------
// The trampoline: a process's first coroutine (the detour), in another
// thread, backtraces through either.
// ---------------------------------------------------------------------------

#[inline(never)]
fn resumer_of_the_first(co: &mut Coroutine<(), (), String>) -> String {
    black_box(co.resume(()).as_return().unwrap())
}

#[inline(never)]
fn captured_in_the_body() -> String {
    std::backtrace::Backtrace::force_capture().to_string()
}

/// The backtrace `bt` runs from the body through a trampoline to the
/// resumer.
fn crosses(bt: &str) {
    let frame = |name: &str| bt.lines().position(|l| l.trim_end().ends_with(name));
    let inside = frame("captured_in_the_body");
    let trampoline = frame("trampoline");
    let resumer = frame("resumer_of_the_first");
    assert!(
        inside.is_some() && trampoline.is_some() && resumer.is_some(),
        "the backtrace does not cross into the resumer:\n{bt}"
    );
    assert!(inside < trampoline && trampoline < resumer, "{bt}");
}

child_test!(
    a_backtrace_from_the_process_first_coroutine_reaches_its_resumer,
    {
        // The first coroutine of this process: the detour's arrival.
        let mut co = Coroutine::<(), (), String>::new(|_, ()| captured_in_the_body());
        crosses(&resumer_of_the_first(&mut co));
        // The second: the plain trampoline.
        let mut co = Coroutine::<(), (), String>::new(|_, ()| captured_in_the_body());
        crosses(&resumer_of_the_first(&mut co));
        // Nested inside a third.
        let mut outer = Coroutine::<(), (), String>::new(|_, ()| {
            let mut co = Coroutine::<(), (), String>::new(|_, ()| captured_in_the_body());
            resumer_of_the_first(&mut co)
        });
        let bt = outer.resume(()).as_return().unwrap();
        crosses(&bt);
        assert_eq!(bt.matches("trampoline").count(), 2, "{bt}");
    }
);

child_test!(a_process_whose_first_coroutine_starts_in_another_thread, {
    // Many threads race to the first arrival; each checks its values
    // and a backtrace through whichever trampoline it ran.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut co = Coroutine::<u8, u8, (Paged, String)>::new(|y, n| {
                    let m = y.suspend(n + 1);
                    (Paged([m; 5]), captured_in_the_body())
                });
                assert_eq!(co.resume(t), CoroutineResult::Yield(t + 1));
                let (p, bt) = co.resume(t + 2).as_return().unwrap();
                assert_eq!(p, Paged([t + 2; 5]));
                assert!(bt.contains("trampoline"), "{bt}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut co = Coroutine::<(), (), String>::new(|_, ()| captured_in_the_body());
    crosses(&resumer_of_the_first(&mut co));
});

child_test!(the_first_coroutine_is_dropped_before_it_starts, {
    // The process's first arrival is a drop's: the detour runs for the
    // closure's drop, and the next start runs too.
    let drops = util::DropCounter::default();
    let g = drops.guard();
    let co = Coroutine::<(), (), u8>::new(move |_, ()| {
        let _g = &g;
        1
    });
    drop(co);
    assert_eq!(drops.get(), 1);
    let mut co = Coroutine::<u8, u8, Paged>::new(|y, n| Paged([y.suspend(n); 5]));
    assert_eq!(co.resume(1), CoroutineResult::Yield(1));
    assert_eq!(co.resume(2), CoroutineResult::Return(Paged([2; 5])));
});

child_test!(the_first_arrival_is_an_on_stack_call, {
    // The process's first fresh context is not a coroutine's: on_stack's
    // run takes the detour; then a coroutine, a greenlet, maybe_grow.
    // (256 KiB: see `page_aligned_returns_on_a_reused_stack`; on_stack's
    // debug frames for a page-aligned value overflow 64 KiB too.)
    let p = corostack::on_stack(DefaultStack::new(256 * 1024).unwrap(), || {
        Paged([black_box(3); 5])
    });
    assert_eq!(p, Paged([3; 5]));
    let mut co = Coroutine::<(), (), Line>::new(|_, ()| Line([4; 3]));
    assert_eq!(co.resume(()).as_return(), Some(Line([4; 3])));
    let g = Greenlet::new(|v: u8| v + 1);
    assert_eq!(g.switch(1), 2);
    let r = corostack::maybe_grow(usize::MAX / 2, 64 * 1024, || black_box(5u128));
    assert_eq!(r, 5);
});

child_test!(the_first_arrival_is_a_greenlet_then_on_parent_stack, {
    let g = Greenlet::new(|v: String| v + "!");
    assert_eq!(g.switch("first".into()), "first!");
    // on_parent_stack: a fresh context below the resumer's frames, its
    // value page-aligned.
    let mut co =
        Coroutine::<(), (), Paged>::new(|y, ()| y.on_parent_stack(|| Paged([black_box(8); 5])));
    assert_eq!(co.resume(()).as_return(), Some(Paged([8; 5])));
    // A panic out of it.
    let mut co = Coroutine::<(), (), u8>::new(|y, ()| {
        y.on_parent_stack(|| -> u8 { panic::panic_any(PagedZst) })
    });
    let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert!(e.is::<PagedZst>());
});

/// A closure of `N` bytes (the Start, with its node, is 24 more): the
/// unchecked placement and the threshold of memcheck's announcement
/// (`size + INIT_FRAME_SIZE > 64`) around it.
fn with_closure_of<const N: usize>(stack: DefaultStack) -> DefaultStack {
    let bytes = black_box([N as u8; N]);
    let mut co = Coroutine::with_stack(stack, move |y: &Yielder<u8, u8>, n: u8| {
        let m = y.suspend(n);
        bytes.iter().fold(m, |a, &b| a.wrapping_add(b))
    });
    assert_eq!(co.resume(1), CoroutineResult::Yield(1));
    let want = (0..N).fold(2u8, |a, _| a.wrapping_add(N as u8));
    assert_eq!(co.resume(2), CoroutineResult::Return(want));
    co.into_stack()
}

child_test!(
    closures_around_the_announcement_threshold_on_reused_stacks,
    {
        // On one stack in turn, and on pooled stacks used by other contexts
        // (greenlets, nested coroutines, on_stack) in between: memcheck must
        // find every byte of the new first frame writable.
        let mut s = DefaultStack::new(64 * 1024).unwrap();
        for _ in 0..3 {
            s = with_closure_of::<0>(s);
            s = with_closure_of::<1>(s);
            s = with_closure_of::<8>(s);
            s = with_closure_of::<9>(s);
            s = with_closure_of::<16>(s);
            s = with_closure_of::<40>(s);
            s = with_closure_of::<200>(s);
            s = with_closure_of::<8>(s);
            s = with_closure_of::<0>(s);
            assert_eq!(corostack::on_stack(s, || black_box(4u8)), 4);
            s = DefaultStack::new(64 * 1024).unwrap();
        }
        drop(s);
        for i in 0..20u8 {
            // The pooled default stack, after a greenlet, a nested pair, an
            // on_stack segment.
            match i % 4 {
                0 => {
                    let g = Greenlet::new(|v: u8| v + 1);
                    assert_eq!(g.switch(i), i + 1);
                }
                1 => {
                    let mut o = Coroutine::<(), (), u8>::new(|_, ()| {
                        let mut n = Coroutine::<(), (), u8>::new(|_, ()| 5);
                        n.resume(()).as_return().unwrap()
                    });
                    assert_eq!(o.resume(()).as_return(), Some(5));
                }
                2 => {
                    assert_eq!(
                        corostack::on_stack(DefaultStack::default(), || black_box(3u8)),
                        3
                    );
                }
                _ => {}
            }
            drop(with_closure_of::<1>(DefaultStack::default()));
            drop(with_closure_of::<8>(DefaultStack::default()));
            drop(with_closure_of::<0>(DefaultStack::default()));
        }
    }
);

// ---------------------------------------------------------------------------
// The trap API returning values (Unix: a signal handler of the test's).
// ---------------------------------------------------------------------------

#[cfg(all(unix, not(feature = "asan")))]
mod trap {
    use super::*;
    use corostack::CoroutineTrapHandler;
    use std::ptr;

    thread_local! {
        static TRAP_PAGED: Cell<Option<CoroutineTrapHandler<Paged>>> = const { Cell::new(None) };
        static TRAP_STRING: Cell<Option<CoroutineTrapHandler<String>>> = const { Cell::new(None) };
        static TRAP_PANIC: Cell<Option<CoroutineTrapHandler<u8>>> = const { Cell::new(None) };
    }

    extern "C" fn on_fault(_s: libc::c_int, _i: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: an SA_SIGINFO handler's own context; the coroutines hold
        // nothing that needs a drop at the fault.
        unsafe {
            if let Some(t) = TRAP_PAGED.get().filter(|t| t.context_in_bounds(uc)) {
                t.setup_trap_handler(|| Paged([0xee; 5])).write_to(uc);
                return;
            }
            if let Some(t) = TRAP_STRING.get().filter(|t| t.context_in_bounds(uc)) {
                t.setup_trap_handler(|| String::from("trapped"))
                    .write_to(uc);
                return;
            }
            if let Some(t) = TRAP_PANIC.get().filter(|t| t.context_in_bounds(uc)) {
                t.setup_trap_handler(|| panic::panic_any(PagedZst))
                    .write_to(uc);
                return;
            }
            libc::abort();
        }
    }

    fn install() {
        util::install_fault_handler(on_fault);
    }

    /// A read of a page that no one may read.
    fn fault() -> u8 {
        // SAFETY: a fresh PROT_NONE page, never unmapped; the read faults.
        unsafe {
            let p = libc::mmap(
                ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            ptr::read_volatile(p.cast::<u8>())
        }
    }

    pub fn trapped_coroutines_return_values_of_odd_types() {
        corostack::stack::install_overflow_handler();
        install();
        for round in 0..3u8 {
            let mut co = Coroutine::<u8, u8, Paged>::new(|y, n| {
                y.suspend(n);
                Paged([fault(); 5])
            });
            TRAP_PAGED.set(Some(co.trap_handler()));
            assert_eq!(co.resume(round), CoroutineResult::Yield(round));
            assert_eq!(co.resume(0), CoroutineResult::Return(Paged([0xee; 5])));
            assert!(co.done() && co.started());
            TRAP_PAGED.set(None);
            let stack = co.into_stack();
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| {
                String::from_utf8(vec![b'a' + fault()]).unwrap()
            });
            TRAP_STRING.set(Some(co.trap_handler()));
            assert_eq!(co.resume(()).as_return().as_deref(), Some("trapped"));
            TRAP_STRING.set(None);
            let stack = co.into_stack();
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| fault());
            TRAP_PANIC.set(Some(co.trap_handler()));
            let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
            assert!(e.is::<PagedZst>());
            assert!(co.done() && co.started());
            TRAP_PANIC.set(None);
            // Then a plain life on the same stack.
            let stack = co.into_stack();
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| Line([5; 3]));
            assert_eq!(co.resume(()).as_return(), Some(Line([5; 3])));
        }
    }
}

child_test!(
    #[cfg(all(unix, not(feature = "asan")))]
    trapped_coroutines_return_values_of_odd_types,
    {
        trap::trapped_coroutines_return_values_of_odd_types();
    }
);
