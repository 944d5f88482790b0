//! The cost of `AsyncYielder::block_on` beside the same `.await` in a plain
//! `async fn`, in one run (`cargo bench --bench bridge`).
//!
//! Both sides are driven by the same hand-written poll loop with a no-op
//! waker (it polls again at once on `Pending`), and each measurement runs
//! `iters` awaits inside one task, so the figures are per await:
//!
//! - `ready/<who>`: awaiting `std::future::ready(x)`: for `block_on`, a poll
//!   of the future and no switch.
//! - `pending_once/<who>`: awaiting a future that is pending once (it wakes
//!   its waker and returns `Pending`, then `Ready`): the task goes back to
//!   the poll loop and is polled again. For `block_on`, that is a suspend
//!   and a resume of the body (two switches) on top of the two polls.
//! - `task/<who>`: making a task that awaits one ready future, polling it
//!   to completion and dropping it: an `AsyncCoroutine` (its 1 MiB stack
//!   from the thread's pool) against a boxed `async` block.

mod common;

use std::future::{Future, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use corostack::bridge::AsyncCoroutine;
use criterion::{Criterion, criterion_group, criterion_main};

/// Pending on its first poll (waking its waker), ready on the second.
struct PendingOnce(bool);

impl Future for PendingOnce {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.0 {
            Poll::Ready(1)
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Polls `fut` until it is ready, with a no-op waker.
fn drive<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[inline(never)]
async fn awaits_ready(iters: u64) -> u64 {
    let mut sum = 0;
    for i in 0..iters {
        sum += ready(black_box(i)).await;
    }
    sum
}

#[inline(never)]
async fn awaits_pending_once(iters: u64) -> u64 {
    let mut sum = 0;
    for _ in 0..iters {
        sum += black_box(PendingOnce(false)).await;
    }
    sum
}

fn awaits(c: &mut Criterion) {
    let mut g = c.benchmark_group("ready");
    g.bench_function("block_on", |b| {
        b.iter_custom(|iters| {
            let task = AsyncCoroutine::new(move |y| {
                let mut sum = 0;
                for i in 0..iters {
                    sum += y.block_on(ready(black_box(i)));
                }
                sum
            });
            let start = Instant::now();
            black_box(drive(task));
            start.elapsed()
        })
    });
    g.bench_function("async_fn", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(drive(awaits_ready(iters)));
            start.elapsed()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pending_once");
    g.bench_function("block_on", |b| {
        b.iter_custom(|iters| {
            let task = AsyncCoroutine::new(move |y| {
                let mut sum = 0;
                for _ in 0..iters {
                    sum += y.block_on(black_box(PendingOnce(false)));
                }
                sum
            });
            let start = Instant::now();
            black_box(drive(task));
            start.elapsed()
        })
    });
    g.bench_function("async_fn", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(drive(awaits_pending_once(iters)));
            start.elapsed()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("task");
    g.bench_function("async_coroutine", |b| {
        b.iter(|| drive(AsyncCoroutine::new(|y| y.block_on(ready(black_box(1u64))))))
    });
    g.bench_function("boxed_async_block", |b| {
        b.iter(|| {
            let task: Pin<Box<dyn Future<Output = u64>>> =
                Box::pin(async { ready(black_box(1u64)).await });
            drive(task)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = awaits
}
criterion_main!(benches);
