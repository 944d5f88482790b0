//! Coroutines on several threads at once: each thread runs its own
//! coroutines and greenlets, and they share data only through proper
//! synchronisation. Under ThreadSanitizer (feature `tsan`) this must report
//! nothing: every coroutine is a TSan fiber, so TSan sees each switch.

mod util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use corostack::greenlet::{Greenlet, current};
use corostack::{Coroutine, CoroutineResult};

#[test]
fn coroutines_on_several_threads_share_only_synchronised_data() {
    const THREADS: u64 = 4;
    let rounds = util::scaled(2_000, 200) as u64;
    let total = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (total, barrier) = (total.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                // A generator whose values the thread adds to the shared total.
                let mut co = Coroutine::<u64, u64, u64>::new(move |y, mut n| {
                    let mut local = 0;
                    while n != 0 {
                        local += n;
                        n = y.suspend(local);
                    }
                    local
                });
                let mut last = 0;
                for i in 1..=rounds {
                    match co.resume(i + t) {
                        CoroutineResult::Yield(v) => last = v,
                        CoroutineResult::Return(_) => unreachable!(),
                    }
                }
                assert_eq!(co.resume(0), CoroutineResult::Return(last));
                total.fetch_add(last, Ordering::Relaxed);
                // Greenlets pass a counter back and forth on this thread.
                let main = current::<u64>();
                let g = Greenlet::new(move |mut v: u64| {
                    for _ in 0..10 {
                        v = main.switch(v + 1);
                    }
                    v
                });
                let mut v = 0;
                for _ in 0..=10 {
                    v = g.switch(v);
                }
                assert_eq!(v, 10);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let expected: u64 = (0..THREADS)
        .map(|t| (1..=rounds).map(|i| i + t).sum::<u64>())
        .sum();
    assert_eq!(total.load(Ordering::Relaxed), expected);
}
