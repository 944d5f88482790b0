//! The safe `Coroutine` API: values both ways, panics, drops, nesting,
//! recursion, many live coroutines, stack reuse.

mod util;

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::stack::{DEFAULT_STACK_SIZE, trim_pool};
use corostack::{Coroutine, CoroutineResult, DefaultStack, Stack, Yielder};
use proptest::prelude::*;
use util::{DropCounter, scaled};

#[test]
fn values_flow_both_ways() {
    let mut co = Coroutine::new(|y: &Yielder<i64, String>, first: i64| {
        let second = y.suspend(format!("got {first}"));
        let third = y.suspend(format!("then {second}"));
        first * 100 + second * 10 + third
    });
    assert!(!co.started());
    assert_eq!(co.resume(1), CoroutineResult::Yield("got 1".to_string()));
    assert!(co.started() && !co.done());
    assert_eq!(co.resume(2), CoroutineResult::Yield("then 2".to_string()));
    assert_eq!(co.resume(3), CoroutineResult::Return(123));
    assert!(co.done());
}

#[test]
fn generator_is_an_iterator() {
    let fib = Coroutine::new(|y, ()| {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..10 {
            y.suspend(a);
            (a, b) = (b, a + b);
        }
    });
    assert_eq!(fib.collect::<Vec<_>>(), [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]);
}

#[test]
fn large_values_cross_intact() {
    let mut co = Coroutine::new(|y: &Yielder<[u64; 64], [u64; 64]>, mut a: [u64; 64]| {
        for _ in 0..3 {
            a.iter_mut().for_each(|v| *v = *v * 2 + 1);
            a = y.suspend(a);
        }
        a
    });
    let mut v = [0u64; 64];
    v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
    for _ in 0..3 {
        let back = co.resume(v).as_yield().unwrap();
        for i in 0..64 {
            assert_eq!(back[i], v[i] * 2 + 1);
        }
        v = back;
    }
    assert_eq!(co.resume(v), CoroutineResult::Return(v));
}

#[test]
fn panic_reaches_the_resumer_with_its_payload() {
    let mut co = Coroutine::<u32, u32, ()>::new(|y, n| {
        let m = y.suspend(n + 1);
        if m == 7 {
            panic::panic_any(format!("seven after {n}"));
        }
    });
    assert_eq!(co.resume(1), CoroutineResult::Yield(2));
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(7))).unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "seven after 1");
    assert!(co.done());
    let again = panic::catch_unwind(AssertUnwindSafe(|| co.resume(0))).unwrap_err();
    let msg = again.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(msg.contains("already finished"), "{msg}");
}

#[test]
fn resuming_a_returned_coroutine_panics_clearly() {
    let mut co = Coroutine::<(), (), ()>::new(|_, ()| ());
    assert_eq!(co.resume(()), CoroutineResult::Return(()));
    let err = panic::catch_unwind(AssertUnwindSafe(|| co.resume(()))).unwrap_err();
    assert!(
        err.downcast_ref::<&str>()
            .unwrap()
            .contains("already finished")
    );
}

#[test]
fn dropping_a_suspended_coroutine_runs_every_destructor() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let after_suspend = Rc::new(Cell::new(false));
    let flag = after_suspend.clone();
    let mut co = Coroutine::<(), (), ()>::new(move |y, ()| {
        let _a = d.guard();
        nested_frames(y, &d, 3);
        flag.set(true);
    });
    assert_eq!(co.resume(()), CoroutineResult::Yield(()));
    assert_eq!(drops.get(), 0);
    drop(co);
    // One guard in the body and one in each of the three nested frames; the
    // code after the suspend never ran.
    assert_eq!(drops.get(), 4);
    assert!(!after_suspend.get());
}

fn nested_frames(y: &Yielder<(), ()>, d: &DropCounter, depth: u32) {
    let _g = d.guard();
    if depth > 1 {
        nested_frames(y, d, depth - 1);
    } else {
        y.suspend(());
    }
}

#[test]
fn dropping_an_unstarted_coroutine_drops_its_closure() {
    let drops = DropCounter::default();
    let guard = drops.guard();
    let co = Coroutine::<(), (), ()>::new(move |_, ()| drop(guard));
    assert_eq!(drops.get(), 0);
    drop(co);
    assert_eq!(drops.get(), 1);
}

#[test]
fn dropping_a_finished_coroutine_runs_nothing_twice() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let mut co = Coroutine::<(), (), ()>::new(move |_, ()| drop(d.guard()));
    assert_eq!(co.resume(()), CoroutineResult::Return(()));
    assert_eq!(drops.get(), 1);
    drop(co);
    assert_eq!(drops.get(), 1);
}

#[test]
fn a_body_that_catches_the_forced_unwind_cannot_suspend_again() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let drops = DropCounter::default();
    let d = drops.clone();
    let mut co = Coroutine::<(), u32, u32>::new(move |y, ()| {
        let _outer = d.guard();
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            let _inner = d.guard();
            y.suspend(1);
        }));
        l.borrow_mut().push(format!("caught: {}", caught.is_err()));
        let again = panic::catch_unwind(AssertUnwindSafe(|| y.suspend(2)));
        l.borrow_mut()
            .push(format!("second suspend panicked: {}", again.is_err()));
        99
    });
    assert_eq!(co.resume(()), CoroutineResult::Yield(1));
    drop(co);
    assert_eq!(
        *log.borrow(),
        ["caught: true", "second suspend panicked: true"]
    );
    assert_eq!(drops.get(), 2);
}

#[test]
fn into_stack_unwinds_and_the_stack_is_reusable() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let top = stack.top();
    let mut co = Coroutine::<(), (), ()>::with_stack(stack, move |y, ()| {
        let _g = d.guard();
        y.suspend(());
    });
    co.resume(());
    let stack = co.into_stack();
    assert_eq!(drops.get(), 1);
    assert_eq!(stack.top(), top);
    let mut co = Coroutine::<u8, (), u8>::with_stack(stack, |_, x| x + 1);
    assert_eq!(co.resume(41), CoroutineResult::Return(42));
}

#[test]
fn dropping_while_the_thread_unwinds_still_runs_destructors() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let result = panic::catch_unwind(AssertUnwindSafe(move || {
        let mut co = Coroutine::<(), (), ()>::new(move |y, ()| {
            let _g = d.guard();
            y.suspend(());
        });
        co.resume(());
        panic!("outer panic while a coroutine is suspended");
    }));
    assert!(result.is_err());
    assert_eq!(drops.get(), 1);
}

#[test]
fn a_panic_while_unwinding_a_dropped_coroutine_reaches_the_dropper() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("drop panicked");
            }
        }
    }
    // The body is unwound by a forced unwind (thread::panicking() is true
    // inside), so PanicOnDrop stays quiet: dropping completes.
    let mut co = Coroutine::<(), (), ()>::new(|y, ()| {
        let _p = PanicOnDrop;
        y.suspend(());
    });
    co.resume(());
    drop(co);
    // An unstarted coroutine whose closure panics when dropped: the panic
    // reaches the code that drops the coroutine.
    let p = PanicOnDrop;
    let co = Coroutine::<(), (), ()>::new(move |_, ()| drop(p));
    let err = panic::catch_unwind(AssertUnwindSafe(|| drop(co))).unwrap_err();
    assert_eq!(*err.downcast_ref::<&str>().unwrap(), "drop panicked");
}

#[test]
fn coroutines_nest() {
    let mut outer = Coroutine::<u32, u32, u32>::new(|y, start| {
        let mut inner = Coroutine::<u32, u32, u32>::new(|y2, s| {
            let t = y2.suspend(s + 1);
            t * 2
        });
        let a = inner.resume(start).as_yield().unwrap();
        let b = y.suspend(a);
        let c = inner.resume(b).as_return().unwrap();
        y.suspend(c) + 1000
    });
    assert_eq!(outer.resume(10), CoroutineResult::Yield(11));
    assert_eq!(outer.resume(5), CoroutineResult::Yield(10));
    assert_eq!(outer.resume(1), CoroutineResult::Return(1001));
}

#[test]
fn a_nested_panic_crosses_both_coroutines() {
    let mut outer = Coroutine::<(), (), ()>::new(|_, ()| {
        let mut inner = Coroutine::<(), (), ()>::new(|_, ()| panic!("deep"));
        inner.resume(());
    });
    let err = panic::catch_unwind(AssertUnwindSafe(|| outer.resume(()))).unwrap_err();
    assert_eq!(*err.downcast_ref::<&str>().unwrap(), "deep");
    assert!(outer.done());
}

#[test]
fn a_coroutine_can_be_moved_while_suspended() {
    let mut cos: Vec<Coroutine<u32, u32, ()>> = Vec::new();
    for i in 0..8 {
        let mut co = Coroutine::new(move |y, mut v| {
            loop {
                v = y.suspend(v + i);
            }
        });
        co.resume(0);
        cos.push(co); // moved after it suspended, and moved again as the Vec grows
    }
    let moved: Vec<_> = cos.into_iter().rev().collect();
    for (k, mut co) in moved.into_iter().enumerate() {
        let i = 7 - k as u32;
        assert_eq!(co.resume(100), CoroutineResult::Yield(100 + i));
    }
}

/// Recursion with about `FRAME` bytes per level.
#[inline(never)]
fn recurse(depth: usize) -> usize {
    const FRAME: usize = 1024;
    let buf = black_box([depth as u8; FRAME]);
    if depth == 0 {
        return buf[0] as usize;
    }
    recurse(depth - 1) + (buf[FRAME - 1] as usize & 1)
}

/// What `recurse(depth)` returns, without recursing on the thread's stack.
fn recurse_result(depth: usize) -> usize {
    (1..=depth).filter(|&d| d as u8 & 1 == 1).count()
}

#[test]
fn deep_recursion_within_the_stack_size() {
    // Half the default stack, in frames of a little over 1 KiB (debug
    // builds use several times the array's size per frame).
    let depth = DEFAULT_STACK_SIZE / 2 / 4096;
    let mut co = Coroutine::<usize, (), usize>::new(|_, d| recurse(d));
    assert_eq!(
        co.resume(depth),
        CoroutineResult::Return(recurse_result(depth))
    );
    let stack = DefaultStack::new(8 << 20).unwrap();
    let mut big = Coroutine::<usize, (), usize>::with_stack(stack, |_, d| recurse(d));
    let depth = (8 << 20) / 2 / 4096;
    assert_eq!(
        big.resume(depth),
        CoroutineResult::Return(recurse_result(depth))
    );
}

#[test]
fn ten_thousand_live_suspended_coroutines() {
    let n = scaled(10_000, 10_000);
    let mut cos: Vec<Coroutine<u64, u64, u64>> = (0..n as u64)
        .map(|i| {
            let stack = DefaultStack::new(64 * 1024).unwrap();
            Coroutine::with_stack(stack, move |y, a| {
                let b = y.suspend(a + i);
                a + b + i
            })
        })
        .collect();
    for (i, co) in cos.iter_mut().enumerate() {
        assert_eq!(co.resume(1), CoroutineResult::Yield(1 + i as u64));
    }
    for (i, co) in cos.iter_mut().enumerate().rev() {
        assert_eq!(co.resume(2), CoroutineResult::Return(3 + i as u64));
    }
}

#[test]
fn pooled_stacks_are_reused_by_new_coroutines() {
    trim_pool();
    let runs: Vec<(usize, usize)> = (0..4)
        .map(|_| {
            let mut co = Coroutine::<(), (), usize>::new(|_, ()| {
                let here = 0u8;
                std::hint::black_box(&here) as *const u8 as usize
            });
            let local = co.resume(()).as_return().unwrap();
            // Give the stack back to this thread's pool, noting which it was.
            let top = co.into_stack().top();
            (top, local)
        })
        .collect();
    // Every coroutine got the same stack from the pool (the pool is this
    // thread's, so other tests cannot take it)...
    assert!(runs.windows(2).all(|w| w[0].0 == w[1].0), "{runs:x?}");
    // ...and ran on it: a local of its body sat inside it (under ASan,
    // locals may live on ASan's fake stack instead).
    if !cfg!(feature = "asan") {
        let top = runs[0].0;
        assert!(
            runs.iter()
                .all(|&(_, local)| local < top && local > top - (1 << 20)),
            "{runs:x?}"
        );
    }
}

#[test]
fn a_closure_too_large_for_its_stack_is_refused() {
    let big = [0u8; 20 * 1024];
    let stack = DefaultStack::new(corostack::stack::MIN_STACK_SIZE).unwrap();
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        Coroutine::<(), (), u8>::with_stack(stack, move |_, ()| big[0])
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("too small for a closure"), "{msg}");
}

#[test]
fn floating_point_values_survive_switches() {
    let mut co = Coroutine::<f64, f64, f64>::new(|y, mut x| {
        let mut acc = 0.5f64;
        for _ in 0..4 {
            acc = acc * 1.5 + x;
            x = y.suspend(acc);
        }
        acc + x
    });
    let mut acc = 0.5f64;
    let mut x = 0.25;
    for _ in 0..4 {
        acc = acc * 1.5 + x;
        assert_eq!(co.resume(x), CoroutineResult::Yield(acc));
        x += 1.0;
    }
    assert_eq!(co.resume(x), CoroutineResult::Return(acc + x));
    // snprintf-like formatting of floats inside a coroutine needs an
    // aligned stack for SSE.
    let mut fmt = Coroutine::<f64, (), String>::new(|_, v| format!("{v:.3}"));
    assert_eq!(
        fmt.resume(2.0f64.sqrt()),
        CoroutineResult::Return("1.414".into())
    );
}

/// A step of a scripted conversation with an echo-and-accumulate body.
#[derive(Debug, Clone)]
enum Step {
    Resume(i32),
    Finish,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 24 } else { 256 }))]

    /// Random resume sequences: every yielded value is what the model says,
    /// and the return value is the model's sum.
    #[test]
    fn values_match_a_model(first in any::<i32>(), steps in prop::collection::vec(
        prop_oneof![9 => any::<i32>().prop_map(Step::Resume), 1 => Just(Step::Finish)], 0..40)) {
        let mut co = Coroutine::<Option<i32>, i64, i64>::new(|y, first| {
            let mut sum = 0i64;
            let mut next = first;
            while let Some(v) = next {
                sum += v as i64;
                next = y.suspend(sum ^ (v as i64) << 1);
            }
            -sum
        });
        let mut sum = first as i64;
        prop_assert_eq!(co.resume(Some(first)), CoroutineResult::Yield(sum ^ (first as i64) << 1));
        for step in steps {
            match step {
                Step::Resume(v) => {
                    sum += v as i64;
                    prop_assert_eq!(co.resume(Some(v)), CoroutineResult::Yield(sum ^ (v as i64) << 1));
                }
                Step::Finish => {
                    prop_assert_eq!(co.resume(None), CoroutineResult::Return(-sum));
                    prop_assert!(co.done());
                    return Ok(());
                }
            }
        }
        drop(co);
    }

    /// Many coroutines resumed in a random interleaving each see their own
    /// sequence of inputs.
    #[test]
    fn interleaved_coroutines_keep_their_own_state(order in prop::collection::vec(0usize..6, 1..60)) {
        let mut cos: Vec<Coroutine<u32, (usize, u32), ()>> = (0..6)
            .map(|id| Coroutine::new(move |y, mut v: u32| {
                let mut count = 0;
                loop {
                    count += 1;
                    v = y.suspend((id, v.wrapping_mul(31).wrapping_add(count)));
                }
            }))
            .collect();
        let mut counts = [0u32; 6];
        for (n, &id) in order.iter().enumerate() {
            counts[id] += 1;
            let v = n as u32;
            let expected = (id, v.wrapping_mul(31).wrapping_add(counts[id]));
            prop_assert_eq!(cos[id].resume(v), CoroutineResult::Yield(expected));
        }
    }
}

/// Sends a message when dropped.
struct SayOnDrop(std::sync::mpsc::Sender<&'static str>);

impl Drop for SayOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send("unwound");
    }
}

thread_local! {
    static KEPT: RefCell<Option<Coroutine<(), (), ()>>> = const { RefCell::new(None) };
}

/// A suspended coroutine whose last owner is a thread-local: at thread
/// exit its destructor unwinds it (its destructors run) and gives the stack
/// back, whether the thread-local was first used before the crate's own
/// thread-locals (it is then destroyed after them) or after.
#[test]
fn a_suspended_coroutine_in_a_thread_local_is_unwound_at_thread_exit() {
    for kept_first in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if kept_first {
                KEPT.with(|_| ());
            }
            let mut co = Coroutine::new(move |y: &Yielder<(), ()>, ()| {
                let _say = SayOnDrop(tx);
                y.suspend(());
            });
            co.resume(());
            KEPT.with(|k| *k.borrow_mut() = Some(co));
        })
        .join()
        .expect("the thread exits cleanly");
        assert_eq!(rx.recv(), Ok("unwound"), "kept first: {kept_first}");
    }
}

#[test]
fn a_coroutine_iterator_is_fused_after_a_return_and_after_a_panic() {
    fn fused<I: std::iter::FusedIterator>(_: &I) {}
    let mut co = Coroutine::new(|y: &Yielder<(), u8>, ()| y.suspend(1));
    fused(&co);
    assert_eq!(co.next(), Some(1));
    assert_eq!((co.next(), co.next()), (None, None));
    let mut co = Coroutine::new(|y: &Yielder<(), u8>, ()| {
        y.suspend(1);
        panic!("in the body");
    });
    assert_eq!(co.next(), Some(1));
    assert!(panic::catch_unwind(AssertUnwindSafe(|| co.next())).is_err());
    assert_eq!((co.next(), co.next()), (None, None));
}

/// Lowers this process's address-space limit to what it uses now plus
/// `room` bytes, so that a new 1 MiB stack cannot be mapped. (Unix:
/// `RLIMIT_AS` and `/proc`; Windows has no such limit for a process of its
/// own.)
#[cfg(unix)]
fn limit_address_space(room: usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let limit = (kib * 1024 + room) as libc::rlim_t;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlim) }, 0);
}

#[cfg(unix)]
#[test]
#[cfg_attr(
    feature = "asan",
    ignore = "ASan's own mappings fail under an address-space limit"
)]
fn try_new_returns_an_error_when_no_stack_can_be_mapped() {
    const ROLE: &str = "try_new_returns_an_error_when_no_stack_can_be_mapped";
    if util::under_valgrind() || util::emulated() {
        // valgrind and qemu-user manage the address space themselves.
        return;
    }
    if util::child_role().as_deref() == Some(ROLE) {
        trim_pool();
        limit_address_space(256 * 1024);
        let err = Coroutine::try_new(|_: &Yielder<(), ()>, ()| 1u8)
            .expect_err("a 1 MiB stack under a 256 KiB margin");
        assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory, "{err}");
        println!("CHILD-FINISHED {err}");
        return;
    }
    let out = util::run_child(ROLE, ROLE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-FINISHED"),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a finished body hands over travels as an address whose low bit
/// says whether it is the returned value or an ending (a panic, an
/// unwind): values of every size and alignment (a zero-sized one, single
/// bytes at odd offsets, an over-aligned one) come back intact, yields
/// too, and `started` tells a finished coroutine from one finished before
/// its start.
#[test]
fn returns_of_every_size_and_alignment_come_back() {
    #[derive(Debug, PartialEq, Clone, Copy)]
    #[repr(align(64))]
    struct Wide([u8; 3]);

    fn round<T: PartialEq + std::fmt::Debug + Clone + 'static>(v: T) {
        let (a, b) = (v.clone(), v.clone());
        let mut co = Coroutine::<u8, (u8, T), T>::new(move |y, n| {
            // A byte of the frame at an odd offset next to what crosses.
            let odd = black_box([n; 3]);
            y.suspend((odd[1], a));
            b
        });
        assert_eq!(co.resume(7), CoroutineResult::Yield((7, v.clone())));
        assert_eq!(co.resume(8), CoroutineResult::Return(v));
        assert!(co.started() && co.done());
    }
    round(());
    round(1u8);
    round([9u8; 3]);
    round(u128::MAX - 5);
    round(Wide([1, 2, 3]));
    round(String::from("handed over"));

    // A panic and an unwind are the other endings.
    let mut co = Coroutine::<(), (), u8>::new(|_, ()| panic!("an ending"));
    let caught = panic::catch_unwind(AssertUnwindSafe(|| co.resume(())));
    assert!(caught.is_err() && co.started() && co.done());
    let mut co = Coroutine::<(), u8, u8>::new(|y, ()| {
        y.suspend(1);
        2
    });
    co.resume(());
    co.force_unwind();
    assert!(co.started() && co.done());
    let mut co = Coroutine::<(), (), u8>::new(|_, ()| 3);
    co.force_unwind();
    assert!(!co.started() && co.done());
}
