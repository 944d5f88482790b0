//! The hub's costs, beside tokio's in the same run:
//! - spawn, run to the end and join coroutines that each `sleep(0)`: all
//!   100,000 live at once (every stack mapped), and in batches of 1,000
//!   (stacks reused from the hub's cache: the steady state); tokio's
//!   `current_thread` runtime spawning tasks that `yield_now` beside it;
//! - 100,000 coroutines parked in `sleep` at once: resident memory per
//!   coroutine (VmRSS from /proc/self/status), beside 100,000 tokio tasks
//!   parked in `tokio::time::sleep`.
//!
//! ```text
//! cargo bench -p corostack-hub --bench hub [-- COUNT]
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use corostack_hub as hub;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// ns per coroutine to spawn `n`, let each `sleep(0)` once, and join them,
/// `batch` at a time.
fn hub_spawn_join(n: usize, batch: usize) -> f64 {
    hub::run(move || {
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = batch.min(left);
            let hs: Vec<_> = (0..k)
                .map(|i| {
                    hub::spawn(move || {
                        hub::sleep(Duration::ZERO);
                        black_box(i)
                    })
                })
                .collect();
            for h in hs {
                black_box(h.join().unwrap());
            }
            left -= k;
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

/// The same with tokio's current_thread runtime and `yield_now`.
fn tokio_spawn_join(n: usize, batch: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = batch.min(left);
            let hs: Vec<_> = (0..k)
                .map(|i| {
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        black_box(i)
                    })
                })
                .collect();
            for h in hs {
                black_box(h.await.unwrap());
            }
            left -= k;
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

/// Bytes of resident memory per coroutine with `n` parked in `sleep`.
fn hub_parked_rss(n: usize) -> f64 {
    hub::run(move || {
        let before = rss_kib();
        let hs: Vec<_> = (0..n)
            .map(|_| hub::spawn(|| hub::sleep(Duration::from_secs(3600))))
            .collect();
        // Let every one of them start and park.
        hub::sleep(Duration::from_millis(10));
        assert!(hs.iter().all(|h| h.state() == hub::TaskState::Suspended));
        let after = rss_kib();
        // Returning kills them all (their stacks unwind).
        (after - before) as f64 * 1024.0 / n as f64
    })
}

/// The same for tokio tasks parked in `tokio::time::sleep`.
fn tokio_parked_rss(n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let before = rss_kib();
        let hs: Vec<_> = (0..n)
            .map(|_| tokio::spawn(tokio::time::sleep(Duration::from_secs(3600))))
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let after = rss_kib();
        for h in hs {
            h.abort();
        }
        (after - before) as f64 * 1024.0 / n as f64
    })
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    println!("spawn + run + join, each coroutine/task sleeps 0 (yields) once; {n} in all:");
    // Warm up the stack cache and the allocator.
    hub_spawn_join(10_000, 1_000);
    tokio_spawn_join(10_000, 1_000);
    for (label, batch) in [("all live at once", n), ("batches of 1,000", 1_000)] {
        let h = (0..3)
            .map(|_| hub_spawn_join(n, batch))
            .fold(f64::MAX, f64::min);
        let t = (0..3)
            .map(|_| tokio_spawn_join(n, batch))
            .fold(f64::MAX, f64::min);
        println!(
            "  {label:<18} corostack hub {h:>7.0} ns each   tokio current_thread {t:>7.0} ns each"
        );
    }
    println!("{n} parked in sleep at once (resident memory per coroutine/task):");
    let h = hub_parked_rss(n);
    let t = tokio_parked_rss(n);
    println!("  corostack hub {h:>7.0} bytes each   tokio current_thread {t:>7.0} bytes each");
}
