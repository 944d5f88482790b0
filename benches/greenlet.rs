//! Greenlet switches beside a `Coroutine` round trip, in one run.
//!
//! A greenlet ping-pong is two switches (main to g, g back to main); a
//! coroutine round trip is one resume and one suspend, also two switches.
//! The goal: a greenlet switch costs no more than half a round trip.
//!
//! ```text
//! cargo bench --bench greenlet
//! ```

use std::hint::black_box;
use std::time::Duration;

use corostack::greenlet::{Greenlet, current};
use corostack::{Coroutine, Yielder};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_switches");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));

    let main = current::<u64>();
    let g = Greenlet::new(move |mut v: u64| {
        loop {
            v = main.switch(black_box(v));
        }
    });
    group.bench_function("greenlet_ping_pong", |b| {
        b.iter(|| black_box(g.switch(black_box(1))))
    });

    let mut co = Coroutine::new(|y: &Yielder<u64, u64>, mut v: u64| {
        loop {
            v = y.suspend(black_box(v));
        }
    });
    group.bench_function("coroutine_round_trip", |b| {
        b.iter(|| black_box(co.resume(black_box(1))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
