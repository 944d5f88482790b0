//! Round trips (one resume, one suspend back) with one crate, and nothing
//! else: the workload that `benches/callgrind.sh` counts instructions of.
//!
//! ```text
//! cargo run --release --example roundtrips -- <crate> <n>
//! ```
//!
//! `<crate>` is one of stackful, corosensei, context, generator; each runs
//! an identity coroutine (it yields back what it receives) on its own
//! default stack (stackful and corosensei 1 MiB, context and generator
//! 32 KiB). Prints one line:
//! `<crate> n=<n> ns_per_round_trip=<t>`, timed with `Instant` around the
//! loop alone.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CRATES: [&str; 4] = ["stackful", "corosensei", "context", "generator"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, n) = match args.as_slice() {
        [name, n] => match n.parse::<u64>() {
            Ok(n) => (name.as_str(), n),
            Err(e) => return usage(&format!("bad round-trip count {n:?}: {e}")),
        },
        _ => return usage("expected two arguments"),
    };
    let elapsed = match name {
        "stackful" => stackful(n),
        "corosensei" => corosensei(n),
        "context" => context(n),
        "generator" => generator(n),
        _ => return usage(&format!("unknown crate {name:?}")),
    };
    let ns = elapsed.as_nanos() as f64 / n.max(1) as f64;
    println!("{name} n={n} ns_per_round_trip={ns:.3}");
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "roundtrips: {why}\nusage: roundtrips <crate> <n>, crate one of: {}",
        CRATES.join(", ")
    );
    ExitCode::FAILURE
}

#[inline(never)]
fn stackful(n: u64) -> Duration {
    use stackful::{Coroutine, CoroutineResult};
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

#[inline(never)]
fn corosensei(n: u64) -> Duration {
    use corosensei::{Coroutine, CoroutineResult};
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
