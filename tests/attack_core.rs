//! Adversarial tests of the core API, written by a reviewer: safe code only
//! (the harness uses `unsafe` only to observe, and `SliceStack::new` /
//! `SendAsyncCoroutine::new` only within their documented contracts).
//!
//! Each test asserts the crate's promise against one attack. The `BUG`
//! sections are attacks that broke it when they were written (each fixed
//! since: the section says how); the rest are attacks it withstood. Crashing cases run in a child process (see `child_test!`).

#[macro_use]
mod util;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;

use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

use corostack::bridge::AsyncCoroutine;
use corostack::stack::{MIN_STACK_SIZE, set_pool_capacity, trim_pool};
use corostack::{
    Coroutine, DefaultStack, Generator, SliceStack, Stack, Yielder, maybe_grow, on_stack,
    remaining_stack,
};
use util::DropCounter;

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

// ===========================================================================
// BUG 2: with_stack's size check ignores the closure's alignment. The
// entry moves the closure into its call (one copy, counted by size only);
// a copy of a 64 KiB-aligned closure lands up to 64 KiB lower than
// counted. A stack that the check accepts overflows before the body runs
// (DefaultStack: guard page hit, abort), where the docs promise a panic.
// Debug and release. Fixed: each copy counts its alignment too.
// ===========================================================================

#[derive(Clone, Copy)]
#[repr(C, align(65536))]
struct Aligned64K([u8; 65536]);

child_test!(
    #[cfg_attr(
        feature = "asan",
        ignore = "ASan's frames are larger than with_stack counts: this measures the plain build"
    )]
    holds_a_highly_aligned_closure_is_refused_or_runs,
    {
        let a = Box::new(Aligned64K([9u8; 65536]));
        // The smallest DefaultStack that with_stack accepts for it must
        // run it: every smaller one is refused with the documented panic.
        // On a thread of 16 MiB: a debug build copies the closure by value
        // at every layer, each copy realigning its frame to 64 KiB, which
        // comes close to the test thread's 2 MiB (under qemu-riscv64 one
        // layer more overflowed it: the thread's stack, not the coroutine's).
        let search = move || {
            let mut size = 64 * 1024;
            loop {
                let stack = DefaultStack::new(size).unwrap();
                let v = *a;
                let made = panic::catch_unwind(AssertUnwindSafe(|| {
                    Coroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| black_box(&v).0[3])
                }));
                match made {
                    Ok(mut co) => {
                        println!("accepted a {size}-byte stack");
                        assert_eq!(co.resume(()).as_return(), Some(9));
                        break;
                    }
                    Err(_) => size += 4096,
                }
            }
        };
        std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(search)
            .unwrap()
            .join()
            .unwrap();
    }
);

// ===========================================================================
// BUG 3 (debug builds): Generator::with_stack and AsyncCoroutine::with_stack
// wrap the closure in one of their own, whose call moves it once more: a
// copy that with_stack does not count. A closure that the check accepts
// on a MIN_STACK_SIZE stack runs, but dropping the suspended body (forced
// unwind) then overflows: abort. Plain Coroutine with the same closure is
// fine. Passes in release. Fixed: with_stack counts three copies.
// ===========================================================================

child_test!(
    holds_a_generator_with_the_largest_accepted_closure_is_dropped_fine,
    {
        let big = [5u8; 4064];
        let mut g = Generator::<(), u8>::with_stack(
            DefaultStack::new(MIN_STACK_SIZE).unwrap(),
            move |y: &Yielder<(), u8>| {
                y.suspend(black_box(&big)[7]);
            },
        );
        assert_eq!(g.next(), Some(5));
        drop(g);
    }
);

child_test!(
    holds_an_async_coroutine_with_the_largest_accepted_closure_is_dropped_fine,
    {
        let big = [5u8; 4064];
        let mut t =
            AsyncCoroutine::with_stack(DefaultStack::new(MIN_STACK_SIZE).unwrap(), move |y| {
                y.block_on(std::future::pending::<()>());
                black_box(&big)[7]
            });
        assert!(poll_once(&mut t).is_pending());
        drop(t);
    }
);

child_test!(
    holds_coroutine_with_the_largest_accepted_closure_is_dropped_fine,
    {
        let big = [5u8; 4064];
        let mut c = Coroutine::<(), u8, ()>::with_stack(
            DefaultStack::new(MIN_STACK_SIZE).unwrap(),
            move |y: &Yielder<(), u8>, ()| {
                let _s = String::from("x");
                y.suspend(black_box(&big)[7]);
            },
        );
        assert_eq!(c.resume(()).as_yield(), Some(5));
        drop(c);
    }
);

// ===========================================================================
// BUG 5: the forced unwind needs ~5-6 KiB of stack below the pending
// suspend (measured: fine with 5.9 KiB left, abort with 4.9 KiB, debug
// and release), but nothing reserves it there: a body that legitimately
// suspends near the bottom of its stack runs to completion when resumed,
// yet aborts with a stack overflow when dropped. ENTRY_RESERVE only
// covers a shallow body. Not fixed: documented (a forced unwind is a panic,
// and a panic needs stack where it is raised, as anywhere).
// ===========================================================================

fn deep(y: &Yielder<(), usize>, stop: usize) -> usize {
    let pad = [0u8; 256];
    black_box(&pad);
    let r = remaining_stack().unwrap();
    if r < stop {
        y.suspend(r);
        return 1;
    }
    deep(y, stop) + 1
}

#[test]
fn holds_a_body_suspended_near_the_bottom_of_its_stack_finishes_when_resumed() {
    // ASan's frames (and its switch hooks) are several times larger; so
    // are s390x's debug frames (each gives its callee a 160-byte register
    // save area): a suspend from 3000 bytes above the guard overflowed
    // there under qemu-s390x.
    let stop = if cfg!(feature = "asan") {
        24 * 1024
    } else if cfg!(target_arch = "s390x") {
        6000
    } else {
        3000
    };
    let mut co = Coroutine::with_stack(DefaultStack::new(64 * 1024).unwrap(), move |y, ()| {
        deep(y, stop)
    });
    assert!(co.resume(()).as_yield().unwrap() < stop);
    assert!(co.resume(()).as_return().is_some());
}

// ===========================================================================
// BUG 6: DefaultStack's guard is ONE page, and LLVM's inline stack probes
// leave up to a full page unprobed at the bottom of a frame (the last
// `sub rsp, 0x1000` of a frame is not probed; the next access is the
// `call`'s push, 4104 bytes below the last probe). A frame that is
// realigned to a page (any local of alignment 4096, safe Rust) can thus
// step over the guard exactly: the body runs on, silently, in the memory
// below, which is the top of the next stack mapped (the neighbouring
// coroutine's link word, first frame and closure). Resuming the neighbour
// then jumps to a garbage address (SIGSEGV, rip = a junk value), with no
// overflow message. Release: deterministic at one recursion depth (12
// here); debug: a closure capturing a 4096-aligned ZST does it on a
// MIN_STACK_SIZE stack at depth 0. Rust's main thread has a 1 MiB gap;
// glibc gives spawned threads one page too, so this is LLVM's gap, but
// with coroutine stacks packed next to each other the page is all there is.
// Fixed: four guard pages (src/stack/mapping.rs, GUARD_PAGES).
// ===========================================================================

#[derive(Clone, Copy)]
#[repr(align(4096))]
struct PageZst;

#[inline(never)]
fn below_the_page(y: &Yielder<(), usize>, z: usize) -> usize {
    y.suspend(z % 4096);
    z
}

#[inline(never)]
fn page_aligned_frame(y: &Yielder<(), usize>) -> usize {
    let z = PageZst;
    let r = below_the_page(y, &z as *const PageZst as usize);
    black_box(&z);
    r
}

fn descend(y: &Yielder<(), usize>, d: usize) -> usize {
    if d == 0 {
        return page_aligned_frame(y);
    }
    let pad = [0u8; 1024];
    black_box(&pad);
    descend(y, d - 1) + pad[3] as usize
}

/// Two fresh 16 KiB stacks, the second mapped directly below the first's
/// guard page.
fn neighbours() -> (DefaultStack, DefaultStack) {
    set_pool_capacity(0);
    trim_pool();
    let mut keep = Vec::new();
    loop {
        let a = DefaultStack::new(MIN_STACK_SIZE).unwrap();
        let v = DefaultStack::new(MIN_STACK_SIZE).unwrap();
        if v.top() == a.limit() - a.guard_size() {
            std::mem::forget(keep); // keep the holes filled
            return (a, v);
        }
        keep.push(a);
        keep.push(v);
    }
}

/// The child: a victim suspended on the lower stack, an attacker that
/// overflows the upper one at recursion depth `depth`.
fn guard_skip_child(depth: usize) {
    let (a, v) = neighbours();
    let mut victim = Coroutine::with_stack(v, |y: &Yielder<u32, u32>, x: u32| {
        let s = String::from("victim");
        let z = y.suspend(x + 1);
        s.len() as u32 + z
    });
    assert_eq!(victim.resume(1).as_yield(), Some(2));
    let mut attacker =
        Coroutine::with_stack(a, move |y: &Yielder<(), usize>, ()| descend(y, depth));
    let _ = attacker.resume(());
    println!("the attacker suspended");
    std::mem::forget(attacker); // (dropping it may hit bug 5 instead)
    assert_eq!(
        victim.resume(10).as_return(),
        Some(16),
        "the victim's stack was corrupted"
    );
    println!("the victim is intact");
}

/// For each depth, the child must either finish with both intact, or stop
/// with the overflow report ("coroutine stack overflow"). A bare SIGSEGV
/// or a wrong value means the guard was skipped (so without the
/// overflow-handler feature, where a guard hit is a bare SIGSEGV too, the
/// test cannot tell).
#[test]
// One attribute: two `ignore`s on one test are an "unused attribute" error.
#[cfg_attr(
    any(
        feature = "asan",
        not(feature = "overflow-handler"),
        not(target_arch = "x86_64"),
        windows
    ),
    ignore = "runs on x86_64 Linux with the overflow-handler feature and without ASan only: it \
              tells a guard hit from a skip by the feature's report, ASan takes SIGSEGV itself \
              and its frames are larger, and it needs two stacks mapped back to back (which \
              qemu-user does not do, nor Windows, which reserves at 64 KiB granularity) and \
              attacks x86_64's stack probes"
)]
fn holds_a_page_aligned_frame_does_not_step_over_the_guard() {
    const ROLE: &str = "guard-skip:";
    let name = "holds_a_page_aligned_frame_does_not_step_over_the_guard";
    if let Some(depth) = util::child_role()
        .as_deref()
        .and_then(|r| r.strip_prefix(ROLE))
    {
        guard_skip_child(depth.parse().unwrap());
        println!("CHILD-FINISHED");
        return;
    }
    let mut skipped = Vec::new();
    for depth in 0..16 {
        let out = util::run_child(name, &format!("{ROLE}{depth}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let finished = out.status.success() && stdout.contains("CHILD-FINISHED");
        let reported = stderr.contains("coroutine stack overflow");
        if !finished && !reported {
            skipped.push(format!(
                "depth {depth}: {:?}, attacker suspended: {}, stderr: {}",
                out.status,
                stdout.contains("the attacker suspended"),
                stderr
                    .lines()
                    .find(|l| l.contains("panicked") || l.contains("victim"))
                    .unwrap_or("")
            ));
        }
    }
    assert!(
        skipped.is_empty(),
        "the guard page was stepped over:\n{}",
        skipped.join("\n")
    );
}

child_test!(
    /// Debug build: the closure's own frame (a 4096-aligned ZST capture)
    /// steps over the guard of a MIN_STACK_SIZE stack: a bare SIGSEGV in
    /// the memory below the guard, no overflow report. (Release: fine.)
    holds_a_closure_capturing_a_page_aligned_zst_stops_at_the_guard,
    {
        let p = PageZst;
        let mut co = Coroutine::with_stack(
            DefaultStack::new(MIN_STACK_SIZE).unwrap(),
            move |y: &Yielder<(), usize>, ()| {
                let q = p;
                y.suspend(&q as *const PageZst as usize % 4096)
            },
        );
        assert_eq!(co.resume(()).as_yield(), Some(0));
    }
);

// ===========================================================================
// Attacks that held.
// ===========================================================================

/// A guard that owns a suspended coroutine: dropping it drops that one.
#[allow(dead_code)]
struct Owns(Coroutine<(), (), ()>, util::DropGuard);

fn chain(depth: u32, drops: &DropCounter) -> Coroutine<(), (), ()> {
    let inner = (depth > 0).then(|| chain(depth - 1, drops));
    let g = drops.guard();
    Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let _own = inner.map(|mut c| {
            c.resume(());
            Owns(c, g)
        });
        y.suspend(());
        unreachable!();
    })
}

/// `depth + 1` suspended coroutines, each owned by a frame of the one
/// above (each body starts the next).
fn started_chain(depth: u32, drops: &DropCounter) -> Coroutine<(), (), ()> {
    let mut top = chain(depth, drops);
    top.resume(());
    top
}

#[test]
fn holds_coroutines_dropped_from_each_others_forced_unwinds() {
    let drops = DropCounter::default();
    let top = started_chain(20, &drops);
    assert_eq!(drops.get(), 1, "only the innermost guard is gone");
    drop(top);
    assert_eq!(drops.get(), 21);
    // And while the dropper itself unwinds.
    let drops = DropCounter::default();
    let top = started_chain(10, &drops);
    let r = panic::catch_unwind(AssertUnwindSafe(move || {
        let _t = top;
        panic::panic_any("outer");
    }));
    assert!(r.is_err());
    assert_eq!(drops.get(), 11);
}

#[test]
fn holds_a_body_that_catches_its_unwind_then_runs_and_drops_other_coroutines() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let mut victim = Coroutine::new(|y: &Yielder<(), ()>, ()| {
        let _s = String::from("victim");
        y.suspend(());
    });
    victim.resume(());
    let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
        assert!(caught.is_err());
        // Keep going: run a fresh coroutine through several switches.
        let mut n = Coroutine::new(|y: &Yielder<u32, u32>, a: u32| a + y.suspend(a) + y.suspend(a));
        l.borrow_mut().push(n.resume(1).as_yield().unwrap());
        l.borrow_mut().push(n.resume(2).as_yield().unwrap());
        l.borrow_mut().push(n.resume(3).as_return().unwrap());
        drop(victim); // a nested forced unwind
        // A suspend now raises the unwind again.
        let again = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
        l.borrow_mut().push(again.is_err() as u32);
        // On another stack too.
        let again = panic::catch_unwind(AssertUnwindSafe(|| {
            on_stack(DefaultStack::new(64 * 1024).unwrap(), || y.suspend(()))
        }));
        l.borrow_mut().push(again.is_err() as u32);
    });
    co.resume(());
    drop(co);
    assert_eq!(*log.borrow(), [1, 1, 6, 1, 1]);
}

#[test]
fn holds_a_body_cannot_drop_or_resume_itself_through_a_refcell() {
    type Co = Coroutine<(), u32, u32>;
    let cell: Rc<RefCell<Option<Co>>> = Rc::default();
    let me = cell.clone();
    let co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
        y.suspend(1);
        // Try to take ourselves out and drop/resume.
        let taken = me.borrow_mut().take();
        let _ = taken.map(|mut c| c.resume(()));
        2
    });
    *cell.borrow_mut() = Some(co);
    assert_eq!(
        cell.borrow_mut().as_mut().unwrap().resume(()).as_yield(),
        Some(1)
    );
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        cell.borrow_mut().as_mut().unwrap().resume(())
    }))
    .unwrap_err();
    assert!(err.downcast_ref::<String>().is_some() || err.downcast_ref::<&str>().is_some());
    assert!(cell.borrow().as_ref().unwrap().done());
    // Taking it out first: the body sees None.
    let me2: Rc<RefCell<Option<Co>>> = Rc::default();
    let m = me2.clone();
    let mut co = Coroutine::new(move |y: &Yielder<(), u32>, ()| {
        y.suspend(1);
        m.borrow_mut().take().map_or(7, |_| 8)
    });
    co.resume(());
    *me2.borrow_mut() = None;
    assert_eq!(co.resume(()).as_return(), Some(7));
}

#[test]
fn holds_a_destructor_run_by_a_forced_unwind_resumes_and_drops_a_sibling() {
    let sib: Rc<RefCell<Option<Coroutine<u32, u32, u32>>>> = Rc::default();
    let mut s = Coroutine::new(|y: &Yielder<u32, u32>, a: u32| {
        let b = y.suspend(a * 2);
        let c = y.suspend(b * 2);
        c * 2
    });
    assert_eq!(s.resume(1).as_yield(), Some(2));
    *sib.borrow_mut() = Some(s);
    let out = Rc::new(Cell::new(0));
    struct Poke(Rc<RefCell<Option<Coroutine<u32, u32, u32>>>>, Rc<Cell<u32>>);
    impl Drop for Poke {
        fn drop(&mut self) {
            let mut s = self.0.borrow_mut().take().unwrap();
            self.1.set(s.resume(5).as_yield().unwrap());
            drop(s); // and a nested forced unwind from a forced unwind
        }
    }
    let (sb, o) = (sib.clone(), out.clone());
    let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let _p = Poke(sb, o);
        y.suspend(());
    });
    co.resume(());
    drop(co);
    assert_eq!(out.get(), 10);
}

#[test]
fn holds_a_nested_coroutine_yielded_out_and_resumed_by_main() {
    type Inner = Coroutine<u32, u32, u32>;
    let mut outer = Coroutine::new(|y: &Yielder<(), Inner>, ()| {
        let mut inner: Inner = Coroutine::new(|y: &Yielder<u32, u32>, a: u32| {
            let b = y.suspend(a + 1);
            let c = y.suspend(b + 1);
            c + 1
        });
        assert_eq!(inner.resume(10).as_yield(), Some(11));
        y.suspend(inner);
        let _s = String::from("outer stays suspended");
        y.suspend(Coroutine::new(|_, a| a));
    });
    let mut inner = outer.resume(()).as_yield().unwrap();
    assert_eq!(inner.resume(20).as_yield(), Some(21));
    drop(outer); // the stack that first resumed `inner` goes back to the pool
    let reuse: Vec<_> = (0..4)
        .map(|_| Coroutine::<(), (), ()>::new(|_, ()| ()))
        .collect();
    assert_eq!(inner.resume(30).as_return(), Some(31));
    drop(reuse);
}

#[test]
fn holds_pool_functions_called_from_forced_unwind_destructors() {
    let old = set_pool_capacity(8);
    struct Churn;
    impl Drop for Churn {
        fn drop(&mut self) {
            // Re-enter everything that touches the pool.
            set_pool_capacity(0);
            trim_pool();
            let mut c = Coroutine::new(|y: &Yielder<(), u8>, ()| y.suspend(1));
            assert_eq!(c.resume(()).as_yield(), Some(1));
            drop(c);
            set_pool_capacity(2);
            on_stack(DefaultStack::new(64 * 1024).unwrap(), trim_pool);
            let v: Vec<_> = (0..5)
                .map(|_| DefaultStack::new(64 * 1024).unwrap())
                .collect();
            drop(v);
        }
    }
    for _ in 0..10 {
        let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            let _c = Churn;
            on_stack(DefaultStack::new(MIN_STACK_SIZE).unwrap(), || y.suspend(()));
        });
        co.resume(());
        drop(co);
        let mut n = Coroutine::new(|y: &Yielder<u32, u32>, a: u32| a + y.suspend(a));
        assert_eq!(n.resume(4).as_yield(), Some(4));
        assert_eq!(n.resume(5).as_return(), Some(9));
    }
    set_pool_capacity(old);
}

thread_local! {
    static HELD: RefCell<Vec<Coroutine<(), (), ()>>> = const { RefCell::new(Vec::new()) };
}

#[test]
fn holds_thread_local_coroutines_whose_unwind_uses_the_pool_at_thread_exit() {
    for touch_first in [false, true] {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if touch_first {
                HELD.with(|_| ());
            }
            struct AtExit(mpsc::Sender<u32>);
            impl Drop for AtExit {
                fn drop(&mut self) {
                    // New coroutines, on_stack, maybe_grow, the pool: all
                    // during thread-local destruction.
                    let mut c = Coroutine::new(|y: &Yielder<(), u32>, ()| y.suspend(3));
                    let a = c.resume(()).as_yield().unwrap();
                    let b = on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
                        maybe_grow(1 << 30, 64 * 1024, || 4)
                    });
                    trim_pool();
                    let _ = self.0.send(a + b);
                }
            }
            for _ in 0..3 {
                let tx = tx.clone();
                let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
                    let _e = AtExit(tx);
                    on_stack(DefaultStack::new(64 * 1024).unwrap(), || y.suspend(()));
                });
                co.resume(());
                HELD.with(|h| h.borrow_mut().push(co));
            }
        })
        .join()
        .expect("the thread exits cleanly");
        assert_eq!(rx.iter().take(3).collect::<Vec<_>>(), [7, 7, 7]);
    }
}

#[test]
fn holds_resuming_finished_coroutines_iterators_and_debug() {
    let drops = DropCounter::default();
    let mut co = Coroutine::<util::DropGuard, (), ()>::new(|_, _g| ());
    assert!(format!("{co:?}").contains("started: false"));
    co.resume(drops.guard());
    assert!(co.done());
    let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(drops.guard()))).unwrap_err();
    assert!(
        e.downcast_ref::<&str>()
            .unwrap()
            .contains("already finished")
    );
    assert_eq!(drops.get(), 2, "the input of the refused resume is dropped");
    assert!(format!("{co:?}").contains("done: true"));
    let mut it = Coroutine::new(|y: &Yielder<(), u8>, ()| {
        y.suspend(1);
        panic::panic_any("mid-iteration");
    });
    assert_eq!(it.next(), Some(1));
    assert!(panic::catch_unwind(AssertUnwindSafe(|| it.next())).is_err());
    assert_eq!(it.next(), None);
    assert_eq!(it.next(), None);
    let g = Generator::<(), u8>::new(|y| y.suspend(1));
    assert!(format!("{g:?}").contains("done: false"));
    let t = AsyncCoroutine::new(|_| 1);
    assert!(format!("{t:?}").contains("AsyncCoroutine"));
}

#[test]
fn holds_generator_close_while_suspended_inside_on_stack_and_maybe_grow() {
    let drops = DropCounter::default();
    let (a, b) = (drops.guard(), drops.guard());
    let mut g = Generator::<(), usize>::new(move |y| {
        let _a = a;
        on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
            let _b = b;
            maybe_grow(1 << 30, MIN_STACK_SIZE, || {
                y.suspend(remaining_stack().unwrap());
            });
        });
    });
    let r = g.next().unwrap();
    // Within the MIN_STACK_SIZE stack maybe_grow made, whose size is rounded up to
    // the page size (64 KiB on a kernel with 64 KiB pages).
    let grown = DefaultStack::new(MIN_STACK_SIZE).unwrap();
    assert!(r < grown.top() - grown.limit());
    drop(grown);
    let stack = g.close();
    assert_eq!(drops.get(), 2);
    // The returned stack runs a new generator, and the thread's answers
    // are right again.
    let mut g2 = Generator::<(), u8>::with_stack(stack, |y| y.suspend(2));
    assert_eq!(g2.next(), Some(2));
    check_remaining_here();
}

/// Asserts that `remaining_stack` here is known and consistent: a frame
/// 4 KiB deeper sees 4 to 16 KiB less (a stale range would answer
/// something unrelated, or nothing).
fn check_remaining_here() {
    let a = remaining_stack().expect("the thread's stack is known");
    #[inline(never)]
    fn deeper(a: usize) {
        let pad = [0u8; 4096];
        black_box(&pad);
        let b = below();
        assert!(a > b && a - b >= 4096 && a - b < 16 * 1024, "a {a} b {b}");
    }
    /// Asked from a frame of its own, below all of `deeper`'s: within one
    /// frame, where the local `remaining_stack` measures from lands is the
    /// compiler's choice (above the pad, in powerpc64le's release build).
    #[inline(never)]
    fn below() -> usize {
        remaining_stack().expect("still the thread's stack")
    }
    deeper(a);
}

/// A SliceStack of at least `n` usable bytes (a Box on the heap: freed and
/// reused often). The box has 16 bytes more: the stack's ends are rounded
/// to 16, and malloc aligns to 8 only on some targets (32-bit ARM's glibc),
/// which would leave `n - 8` usable, below `MIN_STACK_SIZE` for the
/// smallest `n`.
fn slice_stack(n: usize) -> SliceStack {
    // SAFETY: the bodies run on these are shallow (a few KiB), within the
    // contract of `SliceStack::new`.
    unsafe { SliceStack::new(vec![0u8; n + 16].into_boxed_slice()) }
}

/// `remaining_stack` measured against the stack's own limit.
fn check_on(limit: usize) {
    let r = remaining_stack();
    let here = &r as *const Option<usize> as usize;
    let truth = here - limit;
    if let Some(r) = r {
        assert!(
            r <= truth + 256 && truth - r.min(truth) < 1024,
            "claims {r}, truth {truth}"
        );
    }
}

#[test]
fn holds_remaining_stack_after_stacks_suspended_freed_and_reused_out_of_order() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let old = set_pool_capacity(2);
    let mut live: Vec<Coroutine<(), (), ()>> = Vec::new();
    for _ in 0..400 {
        match rnd(6) {
            0 | 1 => {
                let slice = rnd(2) == 0;
                let size = [
                    MIN_STACK_SIZE,
                    MIN_STACK_SIZE + 8 * 1024,
                    2 * MIN_STACK_SIZE,
                ][rnd(3) as usize];
                let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
                    let run = |lim: usize| {
                        check_on(lim);
                        y.suspend(());
                        check_on(lim);
                        maybe_grow(8 * 1024, 16 * 1024, check_on_any);
                    };
                    if slice {
                        let s = slice_stack(size);
                        let lim = s.limit();
                        on_stack(s, || run(lim));
                    } else {
                        let s = DefaultStack::new(size).unwrap();
                        let lim = s.limit();
                        on_stack(s, || run(lim));
                    }
                });
                co.resume(());
                live.push(co);
            }
            2 if !live.is_empty() => {
                let i = rnd(live.len() as u64) as usize;
                let mut co = live.swap_remove(i);
                co.resume(());
            }
            3 if !live.is_empty() => {
                let i = rnd(live.len() as u64) as usize;
                drop(live.swap_remove(i));
            }
            4 => {
                trim_pool();
                check_remaining_here();
            }
            _ => {
                let s = slice_stack(MIN_STACK_SIZE + 16 + 16 * rnd(64) as usize);
                let lim = s.limit();
                on_stack(s, || check_on(lim));
                check_remaining_here();
            }
        }
    }
    drop(live);
    set_pool_capacity(old);
    check_remaining_here();
}

/// Inside maybe_grow: wherever we are, the answer must not exceed what is
/// left before the nearest lower guard/limit (checked loosely: the answer
/// is at most the largest stack size the test uses).
fn check_on_any() {
    if let Some(r) = remaining_stack() {
        assert!(r <= 2 * MIN_STACK_SIZE, "claims {r}");
    }
}

#[test]
fn holds_a_send_async_body_suspended_in_on_stack_that_moves_threads() {
    for _ in 0..20 {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        // SAFETY (the contract of SendAsyncCoroutine::new): across its
        // block_on the body holds a Receiver, a SliceStack and plain
        // integers, all Send; nothing thread-local.
        let mut task = unsafe {
            corostack::bridge::SendAsyncCoroutine::new(move |y| {
                let s = slice_stack(MIN_STACK_SIZE + 16);
                let lim = s.limit();
                on_stack(s, move || {
                    check_on(lim);
                    y.block_on(rx).unwrap();
                    check_on(lim);
                    remaining_stack().is_some()
                })
            })
        };
        assert!(poll_once(&mut task).is_pending());
        let known_there = std::thread::spawn(move || {
            tx.send(()).unwrap();
            futures::executor::block_on(task)
        })
        .join()
        .unwrap();
        // Unknown on the other thread (no guard, not in its list), except
        // on Windows, where the TEB, switched with the stack, describes it.
        assert_eq!(known_there, cfg!(windows));
        // Here: fresh slice stacks, likely at the freed one's address.
        for size in [16 * 1024, 8 * 1024, 24 * 1024].map(|k| MIN_STACK_SIZE + k) {
            let s = slice_stack(size);
            let lim = s.limit();
            on_stack(s, || check_on(lim));
        }
        check_remaining_here();
    }
}

#[test]
fn holds_dropping_an_async_coroutine_whose_pending_future_polls_another_on_drop() {
    struct PollsOnDrop(Option<AsyncCoroutine<u32>>, Rc<Cell<u32>>);
    impl Future for PollsOnDrop {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }
    impl Drop for PollsOnDrop {
        fn drop(&mut self) {
            let mut other = self.0.take().unwrap();
            // Polls another body (which suspends), then drops it too.
            assert!(poll_once(&mut other).is_pending());
            assert!(poll_once(&mut other).is_pending());
            self.1.set(1);
            drop(other);
            self.1.set(2);
        }
    }
    let flag = Rc::new(Cell::new(0));
    let f = flag.clone();
    let other = AsyncCoroutine::new(|y| {
        loop {
            let _: u32 = y.block_on(std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::<u32>::Pending
            }));
        }
    });
    let mut t = AsyncCoroutine::new(move |y| {
        y.block_on(PollsOnDrop(Some(other), f));
    });
    assert!(poll_once(&mut t).is_pending());
    drop(t);
    assert_eq!(flag.get(), 2);
}

#[test]
fn holds_small_aligned_closures_on_the_smallest_stacks() {
    #[derive(Clone, Copy)]
    #[repr(align(64))]
    struct Line([u8; 64]);
    for _ in 0..3 {
        let l = Line([3; 64]);
        let s = slice_stack(MIN_STACK_SIZE + 16);
        let mut co = Coroutine::with_stack(s, move |y: &Yielder<(), u8>, ()| {
            y.suspend(l.0[5]);
            l.0[6]
        });
        assert_eq!(co.resume(()).as_yield(), Some(3));
        drop(co);
        let mut co = Coroutine::with_stack(
            DefaultStack::new(MIN_STACK_SIZE).unwrap(),
            move |y: &Yielder<(), u8>, ()| {
                y.suspend(l.0[5]);
                l.0[6]
            },
        );
        assert_eq!(co.resume(()).as_yield(), Some(3));
        drop(co);
    }
}

/// A slice stack for a body that panics: a panic's own frames (the hook,
/// the unwinder) fit in 32 KiB on most targets, but took 34 KB (51 KB for
/// the first of a process) on powerpc64le in a debug build under
/// qemu-ppc64le, and a slice stack has no guard to stop an overflow; on
/// s390x (debug, under qemu-s390x) 32 KiB was overrun too (SIGSEGV). On
/// Windows, whose MIN_STACK_SIZE is 64 KiB (its unwinder copies CONTEXT
/// records as it goes), the same 96 KiB.
/// (At least the smallest stack accepted: 64 KiB on riscv64.)
#[cfg(not(any(target_arch = "powerpc64", target_arch = "s390x", windows)))]
const PANICKING_SLICE_STACK: usize = if MIN_STACK_SIZE > 32 * 1024 {
    MIN_STACK_SIZE + 16
} else {
    32 * 1024 + 16
};
#[cfg(any(target_arch = "powerpc64", target_arch = "s390x", windows))]
const PANICKING_SLICE_STACK: usize = 96 * 1024 + 16;

#[test]
fn holds_panics_crossing_on_stack_inside_coroutines_keep_their_payload() {
    let mut co = Coroutine::<(), (), ()>::new(|y, ()| {
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
                on_stack(slice_stack(PANICKING_SLICE_STACK), || {
                    panic::panic_any(42u32)
                })
            })
        }));
        assert_eq!(*r.unwrap_err().downcast::<u32>().unwrap(), 42);
        y.suspend(());
        on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
            panic::panic_any(7u8)
        });
    });
    co.resume(());
    let e = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert_eq!(*e.downcast::<u8>().unwrap(), 7);
    assert!(co.done());
    check_remaining_here();
}

#[test]
fn holds_a_kept_forced_unwind_payload_raised_in_a_body_being_unwound() {
    let stash: Rc<RefCell<Option<Box<dyn std::any::Any + Send>>>> = Rc::default();
    let keep = stash.clone();
    let mut a = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(()))) {
            *keep.borrow_mut() = Some(p);
        }
    });
    a.resume(());
    drop(a);
    let payload = stash.borrow_mut().take().unwrap();
    // b catches its own forced unwind, then raises a's payload instead.
    let mut b = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
        panic::resume_unwind(payload);
    });
    b.resume(());
    drop(b);
    // c: raises it on its first resume, not being unwound: a panic.
    let stash2: Rc<RefCell<Option<Box<dyn std::any::Any + Send>>>> = Rc::default();
    let keep2 = stash2.clone();
    let mut a2 = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(()))) {
            *keep2.borrow_mut() = Some(p);
        }
    });
    a2.resume(());
    drop(a2);
    let p2 = stash2.borrow_mut().take().unwrap();
    let mut c = Coroutine::<(), (), ()>::new(move |_, ()| panic::resume_unwind(p2));
    assert!(panic::catch_unwind(AssertUnwindSafe(|| c.resume(()))).is_err());
    assert!(c.done());
}

child_test!(
    /// A zero-sized closure of alignment 64 KiB on a 64 KiB stack: the
    /// check places it at the 64 KiB boundary below the top and accepts it
    /// when 8 KiB fit below that; the first frame that holds the closure
    /// (the entry's move into the call, or the body's frame in a debug
    /// build) realigns to the next boundary, below the limit: overflow,
    /// abort. Same root cause as above (alignment not counted). (Alignment
    /// 2^29 is not tried: a ZST local of that alignment already overflows
    /// the test thread's own stack in a debug build, Rust's doing.)
    holds_a_zero_sized_closure_of_64k_alignment_is_refused_or_runs,
    {
        #[derive(Clone, Copy)]
        #[repr(align(65536))]
        struct Big;
        let h = Big;
        for size in [MIN_STACK_SIZE, 64 * 1024, 96 * 1024, 1 << 20] {
            for _ in 0..4 {
                let r = panic::catch_unwind(AssertUnwindSafe(|| {
                    Coroutine::<(), (), u8>::with_stack(DefaultStack::new(size).unwrap(), move |_, ()| {
                        let _keep = h;
                        7
                    })
                }));
                match r {
                    Ok(mut co) => assert_eq!(co.resume(()).as_return(), Some(7)),
                    Err(e) => assert!(e.downcast_ref::<String>().unwrap().contains("too small")),
                }
            }
        }
    }
);

/// Not a broken promise (a leak is safe), noted for the report: a body
/// that catches its forced unwind and then panics makes `Coroutine::drop`
/// panic out of `finish()` before it drops the stack, so the stack (a 1
/// MiB mapping) is never unmapped nor pooled.
#[test]
fn holds_but_leaks_the_stack_when_the_forced_unwind_panics() {
    trim_pool();
    let before = DefaultStack::live();
    for _ in 0..3 {
        let mut co = Coroutine::new(|y: &Yielder<(), ()>, ()| {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(())));
            panic::panic_any("after the unwind");
        });
        co.resume(());
        let e = panic::catch_unwind(AssertUnwindSafe(move || drop(co))).unwrap_err();
        assert_eq!(e.downcast_ref::<&str>(), Some(&"after the unwind"));
    }
    trim_pool();
    // (Process-wide counter: exact only with --test-threads=1, where it
    // reads 3.)
    let leaked = DefaultStack::live().saturating_sub(before);
    println!("stacks leaked: {leaked}");
}
