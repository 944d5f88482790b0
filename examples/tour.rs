//! A tour of stackful: a generator feeding two consumers, a coroutine
//! passing values both ways, and the measured round-trip switch latency.
//!
//! ```text
//! cargo run --release --example tour
//! ```

use std::hint::black_box;
use std::time::Instant;

use stackful::{Coroutine, CoroutineResult, Yielder};

/// A consumer: primed by its first resume, then eats what each resume
/// sends, and reports back what it ate.
fn consumer(name: &'static str) -> Coroutine<u32, String, ()> {
    Coroutine::new(move |y: &Yielder<u32, String>, _prime: u32| {
        let mut baozi = y.suspend("--->starting eating baozi...".to_string());
        loop {
            baozi = y.suspend(format!("[{name}] is eating baozi {baozi}"));
        }
    })
}

fn main() {
    println!("== a generator feeding two consumers");
    // The producer is a generator (an Iterator) that yields baozi numbers.
    let producer = Coroutine::new(|y, ()| (1..=3).for_each(|n| y.suspend(n)));
    let mut eaters = [consumer("c1"), consumer("c2")];
    for c in &mut eaters {
        println!("{}", c.resume(0).as_yield().unwrap());
    }
    for baozi in producer {
        for c in &mut eaters {
            println!("{}", c.resume(baozi).as_yield().unwrap());
        }
        println!("[producer] is making baozi {baozi}");
    }

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
