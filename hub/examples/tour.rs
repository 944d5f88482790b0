//! A tour of corostack and its hub: a generator feeding two consumers, greenlets
//! switching explicitly, a coroutine passing values both ways, gevent-style
//! coroutines on the hub, and the measured round-trip switch latency.
//!
//! ```text
//! cargo run --release -p corostack-hub --example tour
//! ```

use std::hint::black_box;
use std::time::Instant;

use std::cell::OnceCell;
use std::rc::Rc;

use corostack::greenlet::Greenlet;
use corostack::{Coroutine, CoroutineResult, Generator, Yielder};

#[path = "gevent_sleep.rs"]
mod gevent_sleep;

/// A consumer of Python's producer/consumer example (the core's
/// `examples/baozi.rs`): primed by the first `next`, then eats each baozi sent.
fn consumer(name: &'static str) -> Generator<u32, ()> {
    Generator::new(move |y: &Yielder<u32, ()>| {
        println!("--->starting eating baozi...");
        loop {
            let baozi = y.suspend(());
            println!("[{name}] is eating baozi {baozi}");
        }
    })
}

fn main() {
    println!("== generators: a producer sends baozi to two consumers");
    let (mut c1, mut c2) = (consumer("c1"), consumer("c2"));
    c1.next();
    c2.next();
    for n in 1..=3 {
        c1.send(n);
        c2.send(n);
        println!("[producer] is making baozi {n}");
    }

    println!(
        "\n== greenlets: two switch to each other explicitly (Python greenlet's first example)"
    );
    // Each greenlet switches to the other, so each needs the other's handle.
    let to_gr2: Rc<OnceCell<Greenlet<()>>> = Rc::default();
    let gr1 = Greenlet::new({
        let to_gr2 = to_gr2.clone();
        move |()| {
            println!("12");
            to_gr2.get().unwrap().switch(());
            println!("34");
        }
    });
    let gr2 = Greenlet::new({
        let gr1 = gr1.clone();
        move |()| {
            println!("56");
            gr1.switch(());
            println!("78");
        }
    });
    to_gr2.set(gr2).unwrap();
    gr1.switch(()); // 12, 56, 34: gr1 returns into its parent, here
    to_gr2.get().unwrap().switch(()); // 78

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
