//! A tour of corostack and its hub: a generator feeding two consumers, greenlets
//! switching explicitly, a coroutine passing values both ways, gevent-style
//! coroutines on the hub, and the measured round-trip switch latency.
//!
//! ```text
//! cargo run --release -p corostack-hub --example tour
//! ```

use std::hint::black_box;
use std::time::Instant;

use corostack::{Coroutine, CoroutineResult, Yielder};

// The core's examples, shown as they are.
#[path = "../../examples/baozi.rs"]
mod baozi;
#[path = "gevent_sleep.rs"]
mod gevent_sleep;
#[path = "../../examples/greenlet.rs"]
mod greenlet;

fn main() {
    println!("== generators: a producer sends baozi to two consumers (examples/baozi.rs)");
    baozi::run(|line| println!("{line}"));

    println!("\n== greenlets: two switch to each other explicitly (examples/greenlet.rs)");
    greenlet::run(|line| println!("{line}"));

    println!("\n== a coroutine passing values both ways");
    // A running average: each resume sends a sample in, each suspend hands
    // the average so far out; a negative sample ends it with the count.
    let mut avg = Coroutine::new(|y: &Yielder<f64, f64>, mut x: f64| {
        let (mut sum, mut n) = (0.0, 0u32);
        while x >= 0.0 {
            sum += x;
            n += 1;
            x = y.suspend(sum / n as f64);
        }
        n
    });
    for sample in [4.0, 8.0, 15.0, -1.0] {
        match avg.resume(sample) {
            CoroutineResult::Yield(mean) => println!("sent {sample:>4}, average now {mean:.2}"),
            CoroutineResult::Return(n) => println!("sent {sample:>4}, done after {n} samples"),
        }
    }

    println!(
        "\n== gevent: three coroutines on the hub, switching as they sleep (hub/examples/gevent_sleep.rs)"
    );
    gevent_sleep::run(|line| println!("{line}"));

    println!("\n== round-trip switch latency (resume + suspend)");
    let mut echo = Coroutine::new(|y: &Yielder<u64, u64>, mut v: u64| {
        loop {
            v = y.suspend(black_box(v));
        }
    });
    const N: u64 = 5_000_000;
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for i in 0..N {
                black_box(echo.resume(black_box(i)));
            }
            start.elapsed().as_nanos() as f64 / N as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    println!(
        "median of 7 runs of {N} round trips: {:.2} ns per round trip (min {:.2}, max {:.2})",
        samples[3], samples[0], samples[6]
    );
    if cfg!(debug_assertions) {
        println!("(a debug build: run with --release for the real figure)");
    }
}
