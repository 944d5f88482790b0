//! The instructions of a suspended coroutine's drop against std's own
//! unwind, for callgrind (`examples/million.rs` has the timings):
//!
//! - `drop <n>`: `million`'s pooled drop, `n` times: a coroutine created on
//!   the thread's pool, resumed to its first suspend and dropped, which
//!   unwinds it;
//! - `life <n>`: the same coroutine resumed to its end instead, then
//!   dropped: `drop - life` is what the forced unwind adds;
//! - `std <n>`: `million`'s unwind floor, std's `resume_unwind` caught by
//!   `catch_unwind` through the same frames, without a coroutine;
//! - `cold <n>`: not for callgrind, a timing in the thread's CPU time (so
//!   that other processes' turns on a shared machine do not count; wall-clock
//!   time where there is no thread CPU clock, on Windows): `n`
//!   live coroutines created from the pool (a pool large enough for all,
//!   so their drops unmap nothing) and dropped together, against `n` drops
//!   of one at a time (`million`'s pooled drop): the drop of a coroutine
//!   whose stack has left the cache against one whose stack is hot, both
//!   without unmapping. Five rounds; the first maps the stacks.
//!
//! ```text
//! cargo build --release --example drop_probe
//! valgrind --tool=callgrind target/release/examples/drop_probe drop 10000
//! target/release/examples/drop_probe cold 200000
//! ```

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use corostack::{Coroutine, DefaultStack};

#[path = "million.rs"]
mod million;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, n) = match args.as_slice() {
        [name, n] => match n.parse::<u32>() {
            Ok(n) => (name.as_str(), n),
            Err(e) => {
                eprintln!("drop_probe: bad count {n:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: drop_probe drop|life|std|cold <n>");
            return ExitCode::FAILURE;
        }
    };
    if name == "cold" {
        cold(n as usize);
        return ExitCode::SUCCESS;
    }
    let each: fn(u32) = match name {
        "drop" => million::pooled_drop,
        "life" => life,
        "std" => million::std_unwind,
        _ => {
            eprintln!("drop_probe: unknown workload {name:?}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    for i in 0..n {
        each(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(n.max(1));
    println!("{name} n={n} ns_per_iteration={ns:.3}");
    ExitCode::SUCCESS
}

/// `million::pooled_drop`'s coroutine, with a body that returns when its
/// input says so: resumed to its end, then dropped.
#[inline(never)]
fn life(seed: u32) {
    let stack = DefaultStack::new(million::STACK_SIZE).unwrap_or_else(|e| panic!("{e}"));
    let mut co: Coroutine<bool, u32, ()> = Coroutine::with_stack(stack, move |y, _| {
        let mut frame = [seed; 32];
        loop {
            frame[0] += 1;
            if y.suspend(black_box(&mut frame)[0]) {
                return;
            }
        }
    });
    co.resume(false);
    co.resume(true);
    drop(black_box(co));
}

/// The `cold` timing (see the module docs).
fn cold(n: usize) {
    corostack::stack::raise_pool_capacity(n + 16);
    let per = |d: Duration| d / n.max(1) as u32;
    for round in 0..5 {
        let start = cpu_time();
        let cos: Vec<_> = (0..n).map(|i| suspended(i as u32)).collect();
        let create = per(cpu_time() - start);
        let start = cpu_time();
        drop(cos);
        let cold = per(cpu_time() - start);
        let start = cpu_time();
        (0..n).for_each(|i| million::pooled_drop(i as u32));
        let hot = per(cpu_time() - start);
        println!(
            "round {round}: create {create:?}, then drop {cold:?} each (cold); \
             create + drop one at a time {hot:?} (hot)"
        );
    }
}

/// `million::pooled_drop`'s coroutine, left suspended.
fn suspended(seed: u32) -> Coroutine<(), u32, ()> {
    let stack = DefaultStack::new(million::STACK_SIZE).unwrap_or_else(|e| panic!("{e}"));
    let mut co = Coroutine::with_stack(stack, move |y, ()| {
        let mut frame = [seed; 32];
        loop {
            frame[0] += 1;
            y.suspend(black_box(&mut frame)[0]);
        }
    });
    co.resume(());
    co
}

/// The calling thread's CPU time.
#[cfg(unix)]
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere (Windows), the time since the first reading: the probe runs
/// on one thread and never blocks, so it is that thread's time as long as
/// nothing else runs on its core.
#[cfg(not(unix))]
fn cpu_time() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}
