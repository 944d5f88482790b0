//! `maybe_grow` and `on_stack` beside stacker, in one run
//! (`cargo bench --bench grow`).
//!
//! - `fast_path/<who>`: `maybe_grow(32 KiB, 1 MiB, f)` with room to spare,
//!   so `f` (which returns a number) is called directly: the cost of the
//!   check. On the bench thread's own stack for both crates, and for
//!   corostack also inside a coroutine on a `DefaultStack` (stacker does not
//!   know coroutine stacks, so it has no figure there).
//! - `remaining_stack/<who>`: the query alone.
//! - `new_stack/<who>`: `f` on a fresh 1 MiB stack: corostack's
//!   `maybe_grow` with a red zone larger than any stack (a pooled
//!   `DefaultStack`, two switches), stacker's `grow` (an mmap, an mprotect
//!   and an munmap each time), and corostack's `on_stack` on a stack the
//!   caller keeps.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use corostack::{Coroutine, DefaultStack};
use criterion::{Criterion, criterion_group, criterion_main};

const RED_ZONE: usize = 32 * 1024;
const STACK_SIZE: usize = 1 << 20;

fn fast_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("fast_path");
    g.bench_function("corostack/thread_stack", |b| {
        b.iter(|| corostack::maybe_grow(black_box(RED_ZONE), STACK_SIZE, || black_box(1u64)))
    });
    g.bench_function("stacker/thread_stack", |b| {
        b.iter(|| stacker::maybe_grow(black_box(RED_ZONE), STACK_SIZE, || black_box(1u64)))
    });
    g.bench_function("corostack/coroutine", |b| {
        b.iter_custom(|iters| {
            let mut co = Coroutine::<(), (), Duration>::new(move |_, ()| {
                let start = Instant::now();
                for _ in 0..iters {
                    corostack::maybe_grow(black_box(RED_ZONE), STACK_SIZE, || black_box(1u64));
                }
                start.elapsed()
            });
            co.resume(()).as_return().unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("remaining_stack");
    g.bench_function("corostack", |b| b.iter(corostack::remaining_stack));
    g.bench_function("stacker", |b| b.iter(stacker::remaining_stack));
    g.finish();
}

fn new_stack(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_stack");
    g.bench_function("corostack/maybe_grow", |b| {
        b.iter(|| corostack::maybe_grow(usize::MAX, STACK_SIZE, || black_box(1u64)))
    });
    g.bench_function("stacker/grow", |b| {
        b.iter(|| stacker::grow(STACK_SIZE, || black_box(1u64)))
    });
    // The stack comes from the thread's pool and goes back to it.
    drop(DefaultStack::new(STACK_SIZE).unwrap());
    g.bench_function("corostack/on_stack", |b| {
        b.iter(|| corostack::on_stack(DefaultStack::new(STACK_SIZE).unwrap(), || black_box(1u64)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = fast_path, new_stack
}
criterion_main!(benches);
