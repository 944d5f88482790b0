//! A million live coroutines in one process, on this machine's defaults
//! (`vm.max_map_count` 65530, nothing changed): each on its own guard-paged
//! stack of 64 KiB reserved, each suspended inside its body.
//!
//! ```text
//! cargo run --release --example million            # 1,000,000
//! cargo run --release --example million -- 100000  # scaled down
//! ```
//!
//! Creates them (each resumed once, so it sits suspended with a little of
//! its stack in use), resumes every one once more, drops them all, and
//! prints the time per coroutine for each phase and the resident memory
//! each costs (VmRSS from /proc/self/status, before and after, over the
//! count), with the number of kernel mappings.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corostack::{Coroutine, DefaultStack};

/// The reserved size of every stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// How many coroutines were alive at once.
    pub count: usize,
    /// Resident bytes per live coroutine, stack and bookkeeping together.
    pub rss_per_coroutine: f64,
    /// Lines of /proc/self/maps while they were all alive.
    pub mappings: usize,
    /// Time per coroutine to create it and run it to its first suspend.
    pub create: Duration,
    /// Time per coroutine to resume it once more.
    pub resume: Duration,
    /// Time per coroutine to drop it (unwinding its stack).
    pub drop: Duration,
}

/// A value from /proc/self/status, in kB.
fn status_kb(key: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs the three phases over `count` coroutines.
///
/// # Panics
/// When a stack cannot be mapped (the message names the limit).
pub fn run(count: usize) -> Report {
    corostack::stack::trim_pool();
    let rss_before = status_kb("VmRSS:");
    let mut cos: Vec<Coroutine<(), u32, ()>> = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let stack = DefaultStack::new(STACK_SIZE).unwrap_or_else(|e| panic!("{e}"));
        let mut co = Coroutine::with_stack(stack, |y, ()| {
            // A little stack in use across every suspend.
            let mut frame = [0u32; 32];
            loop {
                frame[0] += 1;
                y.suspend(black_box(&mut frame)[0]);
            }
        });
        co.resume(());
        cos.push(co);
    }
    let create = start.elapsed();
    let rss_after = status_kb("VmRSS:");
    let mappings = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0);
    let start = Instant::now();
    for co in &mut cos {
        assert_eq!(co.resume(()).as_yield(), Some(2));
    }
    let resume = start.elapsed();
    let start = Instant::now();
    drop(cos);
    let drop_time = start.elapsed();
    let per = |d: Duration| d / count.max(1) as u32;
    Report {
        count,
        rss_per_coroutine: (rss_after.saturating_sub(rss_before) * 1024) as f64
            / count.max(1) as f64,
        mappings,
        create: per(create),
        resume: per(resume),
        drop: per(drop_time),
    }
}

#[allow(dead_code)]
fn main() {
    let count = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
    let r = run(count);
    println!("live coroutines:        {}", r.count);
    println!(
        "stack reserved each:    {} KiB, guard-paged",
        STACK_SIZE / 1024
    );
    println!(
        "resident memory each:   {:.0} bytes (VmRSS growth / count)",
        r.rss_per_coroutine
    );
    println!(
        "kernel mappings:        {} (vm.max_map_count {})",
        r.mappings,
        max_map_count.trim()
    );
    println!("create + first resume:  {:?} per coroutine", r.create);
    println!("resume once more:       {:?} per coroutine", r.resume);
    println!("drop (unwind):          {:?} per coroutine", r.drop);
}
