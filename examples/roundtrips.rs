//! One workload, n times, and nothing else: what `benches/callgrind.sh`
//! counts instructions of.
//!
//! ```text
//! cargo run --release --example roundtrips -- <workload> <n>
//! ```
//!
//! Round trips (one resume, one suspend back): `corostack`, `corosensei`,
//! `context`, `generator`, each an identity coroutine (it yields back what
//! it receives) on its crate's default stack (corostack and corosensei
//! 1 MiB, context and generator 32 KiB); `corostack-deep` and
//! `corosensei-deep`: the same, each side switching from the bottom of a
//! chain of 4 calls, so that real returns follow every switch (what the
//! return predictor sees). `greenlet`: a ping-pong between
//! the main greenlet and one other, two switches, as a round trip is.
//!
//! Whole lives (create, resume twice: it yields once, then returns; drop),
//! 1 MiB stacks: `corostack-life` (`Coroutine::new`, the per-thread pool),
//! `corostack-life-reuse` and `corosensei-life` (one stack handed in with
//! `with_stack` and taken back with `into_stack`), `context-life` (one
//! stack reused), `generator-life` (`scoped_init` on one generator).
//! `corostack-life-call`, `corostack-life-reuse-call` and
//! `corosensei-life-call`: the same lives, each inside a function call of
//! its own that returns, as in a program or in criterion's `iter` (the
//! loops above inline everything, so no `ret` follows a life there): an
//! unbalanced `call` in a life (a trampoline that calls an entry that
//! never returns; corostack's jumps) makes that `ret` mispredict, a cost
//! the plain loops do not show.
//!
//! Prints one line, `<workload> n=<n> ns_per_iteration=<t>`, timed with
//! `Instant` around the loop alone. `scan-<life workload> <n>` instead runs
//! the life at 272 depths of the thread's stack (a page of offsets between
//! its frames and the coroutine's page-aligned stack) and prints a line per
//! depth: what 4 KiB aliasing between the two stacks would show.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const WORKLOADS: [&str; 15] = [
    "corostack",
    "corosensei",
    "corostack-deep",
    "corosensei-deep",
    "context",
    "generator",
    "greenlet",
    "corostack-life",
    "corostack-life-reuse",
    "corosensei-life",
    "context-life",
    "generator-life",
    "corostack-life-call",
    "corostack-life-reuse-call",
    "corosensei-life-call",
];

/// The usable stack size of the lifecycle workloads.
const STACK_SIZE: usize = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, n) = match args.as_slice() {
        [name, n] => match n.parse::<u64>() {
            Ok(n) => (name.as_str(), n),
            Err(e) => return usage(&format!("bad count {n:?}: {e}")),
        },
        _ => return usage("expected two arguments"),
    };
    if let Some(workload) = name.strip_prefix("scan-") {
        return scan(workload, n);
    }
    let elapsed = match name {
        "corostack" => corostack(n),
        #[cfg(peer_corosensei)]
        "corosensei" => corosensei(n),
        "corostack-deep" => corostack_deep(n),
        #[cfg(peer_corosensei)]
        "corosensei-deep" => corosensei_deep(n),
        #[cfg(peer_context)]
        "context" => context(n),
        "generator" => generator(n),
        "greenlet" => greenlet(n),
        "corostack-life" => corostack_life(n),
        "corostack-life-reuse" => corostack_life_reuse(n),
        #[cfg(peer_corosensei)]
        "corosensei-life" => corosensei_life(n),
        #[cfg(peer_context)]
        "context-life" => context_life(n),
        "generator-life" => generator_life(n),
        "corostack-life-call" => corostack_life_call(n),
        "corostack-life-reuse-call" => corostack_life_reuse_call(n),
        #[cfg(peer_corosensei)]
        "corosensei-life-call" => corosensei_life_call(n),
        _ => return usage(&format!("unknown workload {name:?}")),
    };
    let ns = elapsed.as_nanos() as f64 / n.max(1) as f64;
    println!("{name} n={n} ns_per_iteration={ns:.3}");
    ExitCode::SUCCESS
}

/// The whole lives of `scan-<workload>`: `corostack-life`,
/// `corostack-life-reuse` and `corosensei-life`.
fn life_workload(name: &str) -> Option<fn(u64) -> Duration> {
    Some(match name {
        "corostack-life" => corostack_life,
        "corostack-life-reuse" => corostack_life_reuse,
        #[cfg(peer_corosensei)]
        "corosensei-life" => corosensei_life,
        "corostack-life-call" => corostack_life_call,
        "corostack-life-reuse-call" => corostack_life_reuse_call,
        #[cfg(peer_corosensei)]
        "corosensei-life-call" => corosensei_life_call,
        _ => return None,
    })
}

/// `scan-<life workload> <n>`: the workload's loop run from deeper and
/// deeper in the thread's stack, one `nested` frame more at each step, so
/// that its frames (and the resumer's switch frames) slide over a whole
/// page while the coroutine's stack, page-aligned, stays put: a cost that
/// depends on where the two stacks sit in a page relative to each other
/// (4 KiB aliasing between their stores and loads) shows as a step in the
/// table. Prints, per depth, the page offset of the caller's frame and the
/// best ns per iteration of `PASSES` passes of `n` iterations each, the
/// passes interleaved so that a burst of load on the machine hits every
/// depth alike.
fn scan(workload: &str, n: u64) -> ExitCode {
    /// How many times each depth runs; the best counts.
    const PASSES: usize = 5;
    /// How many depths: at 16 bytes or more a `nested` frame, more than a
    /// page.
    const DEPTHS: u32 = 272;
    let Some(f) = life_workload(workload) else {
        return usage(&format!("no scan of {workload:?}"));
    };
    let mut best = vec![(0usize, f64::INFINITY); DEPTHS as usize];
    for _ in 0..PASSES {
        for depth in 0..DEPTHS {
            let (offset, elapsed) = nested(depth, &mut || {
                let here = 0u8;
                let offset = black_box(&here) as *const u8 as usize % 4096;
                (offset, f(n))
            });
            let ns = elapsed.as_nanos() as f64 / n.max(1) as f64;
            let b = &mut best[depth as usize];
            *b = (offset, b.1.min(ns));
        }
    }
    for (depth, (offset, ns)) in best.iter().enumerate() {
        println!(
            "{workload} depth={depth} page_offset={offset:#05x} best_ns_per_iteration={ns:.3}"
        );
    }
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "roundtrips: {why}\nusage: roundtrips <workload> <n>, workload one of: {}",
        WORKLOADS.join(", ")
    );
    ExitCode::FAILURE
}

/// Round trips on an identity coroutine, for a crate with corostack's and
/// corosensei's API (the same names and signatures).
macro_rules! round_trips {
    ($name:ident, $krate:ident) => {
        #[inline(never)]
        fn $name(n: u64) -> Duration {
            use $krate::{Coroutine, CoroutineResult};
            let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
                loop {
                    x = y.suspend(black_box(x));
                }
            });
            let start = Instant::now();
            for i in 0..n {
                match co.resume(black_box(i)) {
                    CoroutineResult::Yield(v) => black_box(v),
                    CoroutineResult::Return(()) => unreachable!(),
                };
            }
            start.elapsed()
        }
    };
}

round_trips!(corostack, corostack);
// corosensei is not built on arm (see Cargo.toml).
#[cfg(peer_corosensei)]
round_trips!(corosensei, corosensei);

/// A chain of `DEPTH` calls that the compiler may not inline, with `f` at
/// its end: every switch made from inside it is followed by `DEPTH` real
/// returns, as in code that suspends from a callee, so the workload shows
/// what a switch does to the CPU's return predictor.
const DEPTH: u32 = 4;

#[inline(never)]
fn nested<R>(depth: u32, f: &mut dyn FnMut() -> R) -> R {
    if depth == 0 {
        return f();
    }
    black_box(nested(black_box(depth - 1), f))
}

/// Round trips as in `round_trips!`, but both sides switch from the bottom
/// of a chain of `DEPTH` calls.
macro_rules! deep_round_trips {
    ($name:ident, $krate:ident) => {
        #[inline(never)]
        fn $name(n: u64) -> Duration {
            use $krate::{Coroutine, CoroutineResult};
            let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
                loop {
                    x = nested(DEPTH, &mut || y.suspend(black_box(x)));
                }
            });
            let start = Instant::now();
            for i in 0..n {
                let r = nested(DEPTH, &mut || co.resume(black_box(i)));
                match r {
                    CoroutineResult::Yield(v) => black_box(v),
                    CoroutineResult::Return(()) => unreachable!(),
                };
            }
            start.elapsed()
        }
    };
}

deep_round_trips!(corostack_deep, corostack);
#[cfg(peer_corosensei)]
deep_round_trips!(corosensei_deep, corosensei);

/// context (boost.context: not on riscv64 or powerpc64le, see Cargo.toml).
#[cfg(peer_context)]
#[inline(never)]
fn context(n: u64) -> Duration {
    use context::stack::ProtectedFixedSizeStack;
    use context::{Context, Transfer};
    extern "C" fn identity(mut t: Transfer) -> ! {
        loop {
            // SAFETY: `t.context` is the resumer, suspended in its own
            // `resume` and waiting for exactly this switch back.
            t = unsafe { t.context.resume(black_box(t.data)) };
        }
    }
    let stack = ProtectedFixedSizeStack::default();
    // SAFETY: `stack` outlives the context, which is not resumed after the
    // loop (it is abandoned suspended, holding nothing that needs a drop).
    let mut ctx = unsafe { Context::new(&stack, identity) };
    let start = Instant::now();
    for i in 0..n {
        // SAFETY: `ctx` is the suspended identity context; its stack lives.
        let t = unsafe { ctx.resume(black_box(i as usize)) };
        black_box(t.data);
        ctx = t.context;
    }
    let elapsed = start.elapsed();
    drop(stack);
    elapsed
}

#[inline(never)]
fn generator(n: u64) -> Duration {
    use generator::Gn;
    let mut co = Gn::<u64>::new_scoped(|mut s| {
        let mut x = s.get_yield().unwrap_or(0);
        loop {
            x = s.yield_(black_box(x)).unwrap_or(0);
        }
    });
    let start = Instant::now();
    for i in 0..n {
        black_box(co.send(black_box(i)));
    }
    start.elapsed()
}

#[inline(never)]
fn greenlet(n: u64) -> Duration {
    use corostack::greenlet::{Greenlet, current};
    let main = current::<u64>();
    let g = Greenlet::new(move |mut x: u64| {
        loop {
            x = main.switch(black_box(x));
        }
    });
    let start = Instant::now();
    for i in 0..n {
        black_box(g.switch(black_box(i)));
    }
    start.elapsed()
}

/// corostack: one whole life on a pooled default stack.
#[inline(never)]
fn corostack_life(n: u64) -> Duration {
    use corostack::{Coroutine, CoroutineResult};
    let start = Instant::now();
    for i in 0..n {
        let mut co = Coroutine::<u64, u64, u64>::new(|y, x| y.suspend(x) + 1);
        assert_eq!(co.resume(black_box(i)), CoroutineResult::Yield(i));
        assert_eq!(co.resume(black_box(i)), CoroutineResult::Return(i + 1));
    }
    start.elapsed()
}

/// A whole life on a stack handed in with `with_stack` and taken back with
/// `into_stack`, for a crate with that API (corostack and corosensei share
/// it, names included).
macro_rules! reuse_life {
    ($(#[$doc:meta])* $name:ident, $krate:ident, $stack:path) => {
        $(#[$doc])*
        #[inline(never)]
        fn $name(n: u64) -> Duration {
            use $krate::{Coroutine, CoroutineResult};
            let mut stack = <$stack>::new(STACK_SIZE).expect("a stack");
            let start = Instant::now();
            for i in 0..n {
                let mut co =
                    Coroutine::<u64, u64, u64, _>::with_stack(stack, |y, x| y.suspend(x) + 1);
                assert_eq!(co.resume(black_box(i)), CoroutineResult::Yield(i));
                assert_eq!(co.resume(black_box(i)), CoroutineResult::Return(i + 1));
                stack = co.into_stack();
            }
            start.elapsed()
        }
    };
}

reuse_life!(
    /// corostack: one whole life on a stack handed in and taken back.
    corostack_life_reuse,
    corostack,
    corostack::DefaultStack
);
#[cfg(peer_corosensei)]
reuse_life!(
    /// corosensei: the same.
    corosensei_life,
    corosensei,
    corosensei::stack::DefaultStack
);

/// corostack: `corostack-life`, each life inside a call of its own that
/// returns, as lives are in a program (a scheduler's spawn and its task's
/// end) and in criterion's `iter`: what the call and return predictors see
/// of a life (an unmatched `call` in it makes that `ret` mispredict).
#[inline(never)]
fn corostack_life_call(n: u64) -> Duration {
    #[inline(never)]
    fn once(i: u64) {
        use corostack::{Coroutine, CoroutineResult};
        let mut co = Coroutine::<u64, u64, u64>::new(|y, x| y.suspend(x) + 1);
        assert_eq!(co.resume(black_box(i)), CoroutineResult::Yield(i));
        assert_eq!(co.resume(black_box(i)), CoroutineResult::Return(i + 1));
    }
    let start = Instant::now();
    for i in 0..n {
        once(black_box(i));
    }
    start.elapsed()
}

/// `reuse_life!`, each life inside a call of its own that returns (see
/// `corostack_life_call`).
macro_rules! reuse_life_call {
    ($(#[$doc:meta])* $name:ident, $krate:ident, $stack:path) => {
        $(#[$doc])*
        #[inline(never)]
        fn $name(n: u64) -> Duration {
            #[inline(never)]
            fn once(stack: $stack, i: u64) -> $stack {
                use $krate::{Coroutine, CoroutineResult};
                let mut co =
                    Coroutine::<u64, u64, u64, _>::with_stack(stack, |y, x| y.suspend(x) + 1);
                assert_eq!(co.resume(black_box(i)), CoroutineResult::Yield(i));
                assert_eq!(co.resume(black_box(i)), CoroutineResult::Return(i + 1));
                co.into_stack()
            }
            let mut stack = <$stack>::new(STACK_SIZE).expect("a stack");
            let start = Instant::now();
            for i in 0..n {
                stack = once(stack, black_box(i));
            }
            start.elapsed()
        }
    };
}

reuse_life_call!(
    /// corostack: `corostack-life-reuse`, a call per life.
    corostack_life_reuse_call,
    corostack,
    corostack::DefaultStack
);
#[cfg(peer_corosensei)]
reuse_life_call!(
    /// corosensei: `corosensei-life`, a call per life.
    corosensei_life_call,
    corosensei,
    corosensei::stack::DefaultStack
);

/// context: one whole life on one reused stack. A boost.context function
/// never returns: it ends by switching back for the last time.
#[cfg(peer_context)]
#[inline(never)]
fn context_life(n: u64) -> Duration {
    use context::stack::ProtectedFixedSizeStack;
    use context::{Context, Transfer};
    extern "C" fn once(t: Transfer) -> ! {
        // SAFETY: `t.context` is the resumer, waiting in its `resume`.
        let t = unsafe { t.context.resume(t.data) };
        // SAFETY: as above; this is the final switch (the "return").
        unsafe { t.context.resume(t.data + 1) };
        unreachable!("resumed after its end")
    }
    let stack = ProtectedFixedSizeStack::new(STACK_SIZE).expect("a stack");
    let start = Instant::now();
    for i in 0..n as usize {
        // SAFETY: `stack` outlives the context, which is finished (never
        // resumed again) before the next one is made on it.
        let ctx = unsafe { Context::new(&stack, once) };
        // SAFETY: a fresh context on a live stack.
        let t = unsafe { ctx.resume(black_box(i)) };
        assert_eq!(t.data, i);
        // SAFETY: the context is suspended in its first `resume`.
        let t = unsafe { t.context.resume(black_box(i)) };
        assert_eq!(t.data, i + 1);
    }
    start.elapsed()
}

/// generator: one whole life, re-initialised in place on one generator.
#[inline(never)]
fn generator_life(n: u64) -> Duration {
    fn body(mut s: generator::Scope<'_, 'static, u64, u64>) -> u64 {
        let x = s.get_yield().unwrap_or(0);
        s.yield_(x).unwrap_or(0) + 1
    }
    let mut g = generator::Gn::<u64>::new_scoped_opt(STACK_SIZE / size_of::<usize>(), body);
    let start = Instant::now();
    for i in 0..n {
        g.scoped_init(body);
        assert_eq!(g.send(black_box(i)), i);
        assert_eq!(g.send(black_box(i)), i + 1);
    }
    start.elapsed()
}
