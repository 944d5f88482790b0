//! Context-switch benchmarks: corostack against its peers, side by side in
//! one run (`cargo bench --bench switch`).
//!
//! - `round_trip/<crate>`: one resume plus one suspend back, on an identity
//!   coroutine that loops forever yielding what it receives. Each peer runs
//!   on its own default stack: corostack 1 MiB (pooled), corosensei 1 MiB,
//!   context `ProtectedFixedSizeStack::default()` (8 pages, 32 KiB),
//!   generator `DEFAULT_STACK_SIZE` (4096 words, 32 KiB).
//! - `lifecycle_fresh/<crate>`: create a coroutine on a freshly mapped
//!   stack, run it to its end (it yields once, then returns), drop it, and
//!   unmap the stack.
//! - `lifecycle_pooled/<crate>`: the same with the stack reused, as far as
//!   each crate offers reuse.
//!
//! The lifecycle groups use the same usable stack size, [`STACK_SIZE`]
//! (1 MiB), for every crate: all four let the caller choose it.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

/// The usable stack size of the lifecycle benchmarks, for every crate.
const STACK_SIZE: usize = 1 << 20;

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");

    {
        use corostack::{Coroutine, CoroutineResult};
        let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
            loop {
                x = y.suspend(black_box(x));
            }
        });
        g.bench_function("corostack", |b| {
            b.iter(|| match co.resume(black_box(1)) {
                CoroutineResult::Yield(v) => v,
                CoroutineResult::Return(()) => unreachable!(),
            })
        });
    }

    // corosensei is not built on arm (see Cargo.toml).
    #[cfg(peer_corosensei)]
    {
        use corosensei::{Coroutine, CoroutineResult};
        let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
            loop {
                x = y.suspend(black_box(x));
            }
        });
        g.bench_function("corosensei", |b| {
            b.iter(|| match co.resume(black_box(1)) {
                CoroutineResult::Yield(v) => v,
                CoroutineResult::Return(()) => unreachable!(),
            })
        });
    }

    // boost.context has no riscv64 port, and its build script does not
    // know powerpc64le (see Cargo.toml).
    #[cfg(peer_context)]
    {
        use context::stack::ProtectedFixedSizeStack;
        use context::{Context, Transfer};
        use std::time::Instant;
        extern "C" fn identity(mut t: Transfer) -> ! {
            loop {
                // SAFETY: `t.context` is the resumer, suspended in its own
                // `resume` and waiting for exactly this switch back.
                t = unsafe { t.context.resume(black_box(t.data)) };
            }
        }
        let stack = ProtectedFixedSizeStack::default();
        // SAFETY: `stack` outlives every use of the context: both live to
        // the end of this block, and the context is never resumed after.
        let mut ctx = Some(unsafe { Context::new(&stack, identity) });
        // `Context::resume` consumes the context, so the loop is written out
        // (it is the loop that `iter` runs for the other crates).
        g.bench_function("context", |b| {
            b.iter_custom(|iters| {
                let mut c = ctx.take().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    // SAFETY: `c` is the suspended identity context (fresh
                    // or parked in its loop), and its stack is alive.
                    let t = unsafe { c.resume(black_box(1)) };
                    black_box(t.data);
                    c = t.context;
                }
                let elapsed = start.elapsed();
                ctx = Some(c);
                elapsed
            })
        });
        // The context is abandoned suspended (it holds nothing that needs a
        // drop); its stack is unmapped at the end of this block.
    }

    {
        use generator::Gn;
        let mut co = Gn::<u64>::new_scoped(|mut s| {
            let mut x = s.get_yield().unwrap_or(0);
            loop {
                x = s.yield_(black_box(x)).unwrap_or(0);
            }
        });
        g.bench_function("generator", |b| b.iter(|| co.send(black_box(1))));
    }

    g.finish();
}

/// corostack: one coroutine's whole life on `stack`; yields once, returns.
fn corostack_once<S: corostack::Stack + 'static>(stack: S) -> S {
    use corostack::{Coroutine, CoroutineResult};
    let mut co = Coroutine::<u64, u64, u64, S>::with_stack(stack, |y, x| y.suspend(x) + 1);
    assert_eq!(co.resume(black_box(1)), CoroutineResult::Yield(1));
    assert_eq!(co.resume(black_box(2)), CoroutineResult::Return(3));
    co.into_stack()
}

/// corosensei: the same life as [`corostack_once`].
#[cfg(peer_corosensei)]
fn corosensei_once<S: corosensei::stack::Stack + 'static>(stack: S) -> S {
    use corosensei::{Coroutine, CoroutineResult};
    let mut co = Coroutine::<u64, u64, u64, S>::with_stack(stack, |y, x| y.suspend(x) + 1);
    assert_eq!(co.resume(black_box(1)), CoroutineResult::Yield(1));
    assert_eq!(co.resume(black_box(2)), CoroutineResult::Return(3));
    co.into_stack()
}

/// context: the same life as [`corostack_once`]. A boost.context function
/// never returns: it "ends" by switching back for the last time, after
/// which nothing resumes it and its stack may be freed or reused.
#[cfg(peer_context)]
fn context_once(stack: &context::stack::Stack) {
    use context::{Context, Transfer};
    extern "C" fn once(t: Transfer) -> ! {
        // SAFETY: `t.context` is the resumer, waiting in its `resume`.
        let t = unsafe { t.context.resume(t.data) };
        // SAFETY: as above; this is the final switch ("return").
        unsafe { t.context.resume(t.data + 1) };
        unreachable!("resumed after its end")
    }
    // SAFETY: `stack` outlives the context, which is finished (never to be
    // resumed again) before this function returns.
    let ctx = unsafe { Context::new(stack, once) };
    // SAFETY: a fresh context on a live stack.
    let t = unsafe { ctx.resume(black_box(1)) };
    assert_eq!(t.data, 1);
    // SAFETY: the context is suspended in its first `resume`.
    let t = unsafe { t.context.resume(black_box(2)) };
    assert_eq!(t.data, 3);
}

/// generator: the body of the lifecycle benchmarks.
fn generator_body(mut s: generator::Scope<'_, 'static, u64, u64>) -> u64 {
    let x = s.get_yield().unwrap();
    s.yield_(x).unwrap() + 1
}

/// generator: runs a fresh (or re-initialised) generator to its end.
fn generator_run(g: &mut generator::Generator<'static, u64, u64>) {
    assert_eq!(g.send(black_box(1)), 1);
    assert_eq!(g.send(black_box(2)), 3);
    assert!(g.is_done());
}

fn lifecycle_fresh(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle_fresh");

    // corostack keeps dropped stacks in a per-thread pool. "Fresh" means
    // every iteration really maps and unmaps its stack, so the timed body
    // ends with `trim_pool()`, which unmaps the stack that the drop put
    // back (its cost, a drain into a small Vec, is part of the figure).
    corostack::stack::trim_pool();
    g.bench_function("corostack", |b| {
        b.iter(|| {
            let stack = corostack::DefaultStack::new(STACK_SIZE).unwrap();
            drop(corostack_once(stack));
            corostack::stack::trim_pool();
        })
    });

    #[cfg(peer_corosensei)]
    g.bench_function("corosensei", |b| {
        b.iter(|| {
            let stack = corosensei::stack::DefaultStack::new(STACK_SIZE).unwrap();
            drop(corosensei_once(stack));
        })
    });

    #[cfg(peer_context)]
    g.bench_function("context", |b| {
        b.iter(|| {
            let stack = context::stack::ProtectedFixedSizeStack::new(STACK_SIZE).unwrap();
            context_once(&stack);
            drop(stack);
        })
    });

    // generator's size is in words. Its `Stack::new` also writes a 0xEE
    // pattern into the lowest words (its overflow check), touching the
    // bottom page of every fresh stack.
    g.bench_function("generator", |b| {
        b.iter(|| {
            let mut gener = generator::Gn::<u64>::new_scoped_opt(
                STACK_SIZE / size_of::<usize>(),
                generator_body,
            );
            generator_run(&mut gener);
            drop(gener);
        })
    });

    g.finish();
}

fn lifecycle_pooled(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle_pooled");

    // corostack: `Coroutine::new` takes a default (1 MiB) stack from the
    // per-thread pool; the drop gives it back.
    g.bench_function("corostack", |b| {
        b.iter(|| {
            use corostack::{Coroutine, CoroutineResult};
            let mut co = Coroutine::<u64, u64, u64>::new(|y, x| y.suspend(x) + 1);
            assert_eq!(co.resume(black_box(1)), CoroutineResult::Yield(1));
            assert_eq!(co.resume(black_box(2)), CoroutineResult::Return(3));
        })
    });

    // corostack, the way corosensei reuses a stack: one DefaultStack,
    // handed in with `with_stack` and taken back with `into_stack`.
    let mut stack = Some(corostack::DefaultStack::new(STACK_SIZE).unwrap());
    g.bench_function("corostack_explicit", |b| {
        b.iter(|| stack = Some(corostack_once(stack.take().unwrap())))
    });

    // corosensei: one DefaultStack, handed in with `with_stack` and taken
    // back with `into_stack`.
    #[cfg(peer_corosensei)]
    {
        let mut stack = Some(corosensei::stack::DefaultStack::new(STACK_SIZE).unwrap());
        g.bench_function("corosensei", |b| {
            b.iter(|| stack = Some(corosensei_once(stack.take().unwrap())))
        });
    }

    // context: one ProtectedFixedSizeStack, reused by every context.
    #[cfg(peer_context)]
    {
        let stack = context::stack::ProtectedFixedSizeStack::new(STACK_SIZE).unwrap();
        g.bench_function("context", |b| b.iter(|| context_once(&stack)));
    }

    // generator has no stack pool, but a finished generator can be
    // re-initialised in place on its own stack with `scoped_init` (its doc says
    // so): that is its reuse path.
    let mut gener =
        generator::Gn::<u64>::new_scoped_opt(STACK_SIZE / size_of::<usize>(), generator_body);
    generator_run(&mut gener);
    g.bench_function("generator", |b| {
        b.iter(|| {
            gener.scoped_init(generator_body);
            generator_run(&mut gener);
        })
    });

    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = round_trip, lifecycle_fresh, lifecycle_pooled
}
criterion_main!(benches);
