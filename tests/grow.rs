//! `on_stack`, `maybe_grow`, `remaining_stack`, `SliceStack` and the pool's
//! capacity.

mod util;

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::stack::{self, MIN_STACK_SIZE};
use corostack::{
    Coroutine, CoroutineResult, DefaultStack, SliceStack, Stack, maybe_grow, on_stack,
    remaining_stack,
};
use util::scaled;

/// The address of a local in the caller's frame.
#[inline(never)]
fn here() -> usize {
    let local = 0u8;
    std::hint::black_box(&local) as *const u8 as usize
}

#[test]
fn on_stack_runs_the_closure_on_the_given_stack_and_returns_its_value() {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let (limit, top) = (stack.limit(), stack.top());
    let outside = here();
    let captured = String::from("borrowed from the caller");
    let (addr, len) = on_stack(stack, || (here(), captured.len()));
    assert!(
        limit <= addr && addr < top,
        "{addr:#x} not in [{limit:#x}, {top:#x})"
    );
    assert!(!(limit <= outside && outside < top));
    assert_eq!(len, captured.len());
}

#[test]
fn on_stack_propagates_a_panic_and_the_stack_goes_back_to_the_pool() {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let (lo, hi) = (stack.limit(), stack.top());
    let dropped = Rc::new(Cell::new(0));
    let guard = util::DropCounter::default();
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        on_stack(stack, || {
            let _g = guard.guard();
            let d = dropped.clone();
            panic!("deep {}", d.get() + 7);
        })
    }))
    .unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "deep 7");
    assert_eq!(guard.get(), 1, "the frame on the other stack was unwound");
    // The same stack again from the pool, for on_stack and then for a
    // coroutine.
    for _ in 0..3 {
        let addr = on_stack(DefaultStack::new(64 * 1024).unwrap(), here);
        assert!(lo <= addr && addr < hi);
    }
    let stack = DefaultStack::new(64 * 1024).unwrap();
    assert_eq!((stack.limit(), stack.top()), (lo, hi));
    let mut co = Coroutine::with_stack(stack, |y, x: u32| y.suspend(x) + 1);
    assert_eq!(co.resume(1), CoroutineResult::Yield(1));
    assert_eq!(co.resume(2), CoroutineResult::Return(3));
}

#[test]
fn on_stack_nests_and_knows_each_stack() {
    let a = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: the frames on it are a few KiB at most.
    let b = unsafe { SliceStack::new(vec![0u8; 96 * 1024].into_boxed_slice()) };
    let (a_lo, a_hi, b_lo, b_hi) = (a.limit(), a.top(), b.limit(), b.top());
    let before = remaining_stack().unwrap();
    let (in_a, in_b, back_in_a) = on_stack(a, || {
        let in_a = remaining_stack().unwrap();
        let in_b = on_stack(b, || {
            let r = remaining_stack().unwrap();
            let h = here();
            assert!(b_lo <= h && h < b_hi);
            r
        });
        (in_a, in_b, remaining_stack().unwrap())
    });
    assert!(
        in_a < a_hi - a_lo && in_a > a_hi - a_lo - 16 * 1024,
        "{in_a}"
    );
    assert!(
        in_b < b_hi - b_lo && in_b > b_hi - b_lo - 16 * 1024,
        "{in_b}"
    );
    assert!(back_in_a.abs_diff(in_a) < 4096, "{back_in_a} vs {in_a}");
    assert!(remaining_stack().unwrap().abs_diff(before) < 4096);
}

#[test]
fn remaining_stack_on_a_spawned_thread_matches_its_size() {
    let size = 512 * 1024;
    let remaining = std::thread::Builder::new()
        .stack_size(size)
        .spawn(remaining_stack)
        .unwrap()
        .join()
        .unwrap()
        .expect("a spawned thread's stack is known");
    // std rounds the size up to pages and may add its own TLS; the thread
    // has used a little of it. glibc may hand the thread a cached stack of
    // a thread that ended (the test harness's, 2 MiB), as long as it is at
    // most four times the size asked for (nptl's get_cached_stack): seen
    // under qemu-aarch64 with 2,091,031 bytes left.
    assert!(
        remaining < 4 * size && remaining > size - 64 * 1024,
        "{remaining}"
    );
}

#[test]
fn remaining_stack_decreases_with_depth() {
    #[inline(never)]
    fn down(n: usize) -> usize {
        let pad = std::hint::black_box([0u8; 1024]);
        if n == 0 {
            remaining_stack().unwrap()
        } else {
            down(n - 1) + pad[0] as usize
        }
    }
    let top = remaining_stack().unwrap();
    let deep = down(16);
    assert!(top - deep >= 16 * 1024, "{top} -> {deep}");
    assert!(top - deep < 64 * 1024, "{top} -> {deep}");
}

#[test]
fn maybe_grow_calls_directly_when_there_is_room() {
    let outer = here();
    let inner = maybe_grow(16 * 1024, 1 << 20, here);
    assert!(outer.abs_diff(inner) < 4096, "{outer:#x} vs {inner:#x}");
}

#[test]
fn maybe_grow_moves_to_a_new_stack_when_there_is_not() {
    let room = remaining_stack().unwrap();
    let (inner, remaining) = maybe_grow(room + 1, 256 * 1024, || (here(), remaining_stack()));
    assert!(here().abs_diff(inner) > 64 * 1024, "same stack");
    let remaining = remaining.unwrap();
    assert!(
        remaining <= 256 * 1024 && remaining > 200 * 1024,
        "{remaining}"
    );
}

#[test]
fn maybe_grow_propagates_a_panic_from_a_new_stack() {
    let n = std::hint::black_box(3);
    let err = panic::catch_unwind(|| maybe_grow(usize::MAX, 64 * 1024, || panic!("grown {n}")))
        .unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "grown 3");
    // And the fast path still works afterwards.
    assert!(maybe_grow(1024, 64 * 1024, here).abs_diff(here()) < 4096);
}

/// Recurses `n` levels through `maybe_grow`, counting the levels at which
/// the remaining stack jumped up (a new stack).
fn recurse(n: usize, last: usize, grown: &Cell<usize>) -> usize {
    if n == 0 {
        return 0;
    }
    let now = remaining_stack().unwrap_or(0);
    if now > last {
        grown.set(grown.get() + 1);
    }
    maybe_grow(32 * 1024, 1 << 20, || recurse(n - 1, now, grown) + 1)
}

#[test]
fn a_million_levels_of_recursion_through_maybe_grow() {
    let levels = scaled(1_000_000, 50_000);
    let grown = Cell::new(0);
    assert_eq!(recurse(levels, usize::MAX, &grown), levels);
    eprintln!("{levels} levels, {} new stacks", grown.get());
    // The test thread's stack (2 MiB) holds a few thousand levels: the rest
    // ran on new stacks, each holding many levels.
    let grown = grown.get();
    assert!(grown >= 2, "grew {grown} times");
    assert!(
        grown < levels / 500,
        "grew {grown} times for {levels} levels"
    );
}

#[test]
fn maybe_grow_inside_a_coroutine_knows_the_coroutine_stack() {
    let mut co = Coroutine::new(|y, ()| {
        let first = remaining_stack();
        let direct = maybe_grow(64 * 1024, 1 << 20, here).abs_diff(here()) < 4096;
        y.suspend(());
        // Resumed after the thread used its own stack: still known.
        let again = remaining_stack();
        let moved = maybe_grow(2 << 20, 256 * 1024, || (here(), remaining_stack().unwrap()));
        (first, direct, again, moved)
    });
    assert_eq!(co.resume(()), CoroutineResult::Yield(()));
    let thread = remaining_stack().unwrap();
    assert!(thread > 0);
    let CoroutineResult::Return((first, direct, again, (addr, in_new))) = co.resume(()) else {
        panic!("the body should return");
    };
    let first = first.expect("a coroutine on a DefaultStack is known");
    assert!(first < 1 << 20 && first > (1 << 20) - 32 * 1024, "{first}");
    assert!(direct, "64 KiB of a fresh 1 MiB stack is room enough");
    assert!(again.unwrap().abs_diff(first) < 4096);
    assert!(addr.abs_diff(here()) > 64 * 1024);
    assert!(in_new <= 256 * 1024 && in_new > 200 * 1024, "{in_new}");
}

/// Unix: nothing tells where a SliceStack is. (On Windows the TEB does:
/// see `maybe_grow_on_a_slice_stack_knows_it_from_the_teb`.)
#[cfg(unix)]
#[test]
fn maybe_grow_on_an_unknown_stack_grows() {
    // A coroutine on a SliceStack: no guard registered, not inside on_stack.
    // SAFETY: the frames on it are a few KiB at most.
    let stack = unsafe { SliceStack::new(vec![0u8; 128 * 1024].into_boxed_slice()) };
    let (lo, hi) = (stack.limit(), stack.top());
    let mut co = Coroutine::<(), (), _, _>::with_stack(stack, move |_, ()| {
        let unknown = remaining_stack();
        let addr = maybe_grow(1024, 64 * 1024, here);
        (unknown, lo <= addr && addr < hi)
    });
    assert_eq!(co.resume(()), CoroutineResult::Return((None, false)));
}

/// Windows: the TEB describes the stack that runs, a SliceStack's too, so
/// `remaining_stack` knows it and `maybe_grow` stays on it while it has
/// room; and once back on the thread's stack, the thread's is known again.
#[cfg(windows)]
#[test]
fn maybe_grow_on_a_slice_stack_knows_it_from_the_teb() {
    // SAFETY: the frames on it are a few KiB at most.
    let stack = unsafe { SliceStack::new(vec![0u8; 128 * 1024].into_boxed_slice()) };
    let (lo, hi) = (stack.limit(), stack.top());
    let thread_before = remaining_stack().unwrap();
    let mut co = Coroutine::<(), (), _, _>::with_stack(stack, move |_, ()| {
        let known = remaining_stack();
        let addr = maybe_grow(1024, 64 * 1024, here);
        (known, lo <= addr && addr < hi)
    });
    let CoroutineResult::Return((known, stayed)) = co.resume(()) else {
        panic!("the body should return");
    };
    let known = known.expect("the TEB describes the SliceStack");
    assert!(known < 128 * 1024 && known > 100 * 1024, "{known}");
    assert!(stayed, "1 KiB of a fresh 128 KiB stack is room enough");
    let thread_after = remaining_stack().unwrap();
    assert!(
        thread_after.abs_diff(thread_before) < 64 * 1024,
        "{thread_before} {thread_after}"
    );
}

/// A coroutine that suspends inside on_stack, interleaved with the thread's
/// own on_stack calls: every later answer is still right.
#[test]
fn on_stack_calls_that_end_out_of_order_keep_answers_right() {
    // SAFETY: the frames on it are a few KiB at most.
    let s = unsafe { SliceStack::new(vec![0u8; 64 * 1024].into_boxed_slice()) };
    let (s_lo, s_hi) = (s.limit(), s.top());
    let mut co = Coroutine::new(move |y, ()| {
        on_stack(s, || {
            let a = remaining_stack().unwrap();
            y.suspend(a);
            let b = remaining_stack().unwrap();
            y.suspend(b);
        });
        remaining_stack().unwrap()
    });
    let t = DefaultStack::new(64 * 1024).unwrap();
    let t_size = t.size();
    let first = co.resume(()).as_yield().unwrap();
    assert!(first < s_hi - s_lo && first > s_hi - s_lo - 16 * 1024);
    on_stack(t, || {
        // Resuming inside t; the coroutine's on_stack is still running.
        let second = co.resume(()).as_yield().unwrap();
        assert!(second.abs_diff(first) < 1024, "{second} vs {first}");
        assert!(remaining_stack().unwrap() < t_size);
        // The coroutine's on_stack ends while t's is running.
        let after = co.resume(()).as_return().unwrap();
        assert!(after < 1 << 20 && after > (1 << 20) - 32 * 1024, "{after}");
        let mine = remaining_stack().unwrap();
        assert!(mine < t_size && mine > t_size - 16 * 1024, "{mine}");
    });
    drop(co); // frees `s`
    let thread = remaining_stack().unwrap();
    let h = here();
    assert!(!(s_lo <= h && h < s_hi));
    assert!(thread > 64 * 1024, "{thread}");
}

#[test]
fn slice_stacks_run_coroutines_and_report_no_guard() {
    // SAFETY: the frames on it are a few KiB at most.
    let stack = unsafe { SliceStack::new(vec![0u8; 100_003].into_boxed_slice()) };
    assert_eq!(stack.guard_size(), 0);
    assert_eq!(stack.top() % 16, 0);
    assert_eq!(stack.limit() % 16, 0);
    assert!(stack.size() >= 100_003 - 32 && stack.size() <= 100_003);
    let (lo, hi) = (stack.limit(), stack.top());
    let mut co = Coroutine::with_stack(stack, move |y, ()| {
        let h = here();
        y.suspend(lo <= h && h < hi);
        "done"
    });
    assert_eq!(co.resume(()), CoroutineResult::Yield(true));
    assert_eq!(co.resume(()), CoroutineResult::Return("done"));
}

#[test]
fn a_static_slice_stack_runs_on_stack() {
    // Static memory rather than a leaked box: LeakSanitizer (CI's ASan
    // run) would report the leak.
    static mut MEMORY: [u8; MIN_STACK_SIZE + 16 * 1024] = [0; MIN_STACK_SIZE + 16 * 1024];
    // SAFETY: this test is the only user of MEMORY, and takes it once.
    let memory: &'static mut [u8] = unsafe { &mut *std::ptr::addr_of_mut!(MEMORY) };
    // SAFETY: the closure needs a few hundred bytes.
    let stack = unsafe { SliceStack::from_static(memory) };
    let (lo, hi) = (stack.limit(), stack.top());
    let addr = on_stack(stack, here);
    assert!(lo <= addr && addr < hi);
}

#[test]
fn a_slice_stack_too_small_is_refused() {
    let err =
        // SAFETY: refused before anything runs on it.
        panic::catch_unwind(|| unsafe { SliceStack::new(vec![0u8; MIN_STACK_SIZE - 1].into()) })
            .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("MIN_STACK_SIZE"), "{msg}");
}

/// Marks a stack's lowest usable byte, which a pooled stack keeps and a
/// freshly mapped one has zeroed.
fn mark(stack: &DefaultStack) {
    // SAFETY: `limit` is the lowest usable byte of a live stack we own, and
    // no coroutine runs on it.
    unsafe { (stack.limit() as *mut u8).write_volatile(0xAB) }
}

fn marked(stack: &DefaultStack) -> bool {
    // SAFETY: as in `mark`.
    unsafe { (stack.limit() as *const u8).read_volatile() == 0xAB }
}

#[test]
fn the_pool_keeps_as_many_stacks_as_its_capacity() {
    // A thread of its own: the pool is per thread.
    std::thread::spawn(|| {
        let size = MIN_STACK_SIZE + 16 * 1024;
        assert_eq!(stack::set_pool_capacity(2), stack::POOL_CAPACITY);
        let stacks: Vec<_> = (0..4).map(|_| DefaultStack::new(size).unwrap()).collect();
        stacks.iter().for_each(mark);
        drop(stacks);
        // Only two went back to the pool; new stacks are those two, then
        // fresh mappings (zeroed, even at a reused address).
        let again: Vec<_> = (0..4).map(|_| DefaultStack::new(size).unwrap()).collect();
        assert_eq!(again.iter().filter(|s| marked(s)).count(), 2);
        again.iter().for_each(mark);
        drop(again);
        // Shrinking to 1 unmaps the excess at once.
        assert_eq!(stack::set_pool_capacity(1), 2);
        let again: Vec<_> = (0..2).map(|_| DefaultStack::new(size).unwrap()).collect();
        assert_eq!(again.iter().filter(|s| marked(s)).count(), 1);
        drop(again);
        // 0 turns pooling off, and empties the pool.
        assert_eq!(stack::set_pool_capacity(0), 1);
        let a = DefaultStack::new(size).unwrap();
        assert!(!marked(&a));
        mark(&a);
        drop(a);
        assert!(!marked(&DefaultStack::new(size).unwrap()));
    })
    .join()
    .unwrap();
}

/// A coroutine suspended inside `on_stack` and then forgotten: the stack
/// that `on_stack` took stays reserved under the frames left on it (it was
/// taken by value and is forgotten with them), whatever else the thread
/// maps or frees afterwards.
#[test]
fn a_forgotten_coroutine_suspended_inside_on_stack_keeps_that_stack() {
    let mut co = Coroutine::new(|y: &corostack::Yielder<(), usize>, ()| {
        on_stack(DefaultStack::new(64 * 1024).unwrap(), || {
            let marker = std::hint::black_box(0x5EED_u64);
            y.suspend(&marker as *const u64 as usize);
            marker
        })
    });
    let addr = co.resume(()).as_yield().unwrap();
    std::mem::forget(co);
    // New stacks of the same size, as many as the pool holds and more:
    // none may be the forgotten one.
    let stacks: Vec<_> = (0..80)
        .map(|_| DefaultStack::new(64 * 1024).unwrap())
        .collect();
    for s in &stacks {
        assert!(
            !(s.limit() <= addr && addr < s.top()),
            "the stack was reused"
        );
    }
    drop(stacks);
    corostack::stack::trim_pool();
    // SAFETY: the address of a local in a frame that stays on a stack that
    // was forgotten, never unmapped (what this test checks); nothing runs
    // there any more.
    assert_eq!(unsafe { (addr as *const u64).read_volatile() }, 0x5EED);
}
