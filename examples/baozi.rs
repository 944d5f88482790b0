//! The producer/consumer of Python generators: a producer sends baozi to
//! two consumers, which it primes first.
//!
//! ```text
//! cargo run --example baozi
//! ```

use corostack::{Generator, Yielder};

/// A consumer: primed by the first `next`, then eats each baozi sent.
fn consumer(name: &'static str, emit: impl Fn(String) + 'static) -> Generator<u32, ()> {
    Generator::new(move |y: &Yielder<u32, ()>| {
        emit("--->starting eating baozi...".to_string());
        loop {
            let baozi = y.suspend(());
            emit(format!("[{name}] is eating baozi {baozi}"));
        }
    })
}

/// Runs the example, handing each line it prints to `emit`.
pub fn run(emit: impl Fn(String) + Clone + 'static) {
    let mut c1 = consumer("c1", emit.clone());
    let mut c2 = consumer("c2", emit.clone());
    c1.next();
    c2.next();
    for n in 1..=5 {
        c1.send(n);
        c2.send(n);
        emit(format!("[producer] is making baozi {n}"));
    }
}

#[allow(dead_code)]
fn main() {
    run(|line| println!("{line}"));
}
