//! Many live coroutines at once: what each costs in memory and in kernel
//! mappings, and how long creating one takes.
//!
//! ```text
//! cargo run --release --example live -- [corosensei] [count] [stack_kib]
//! ```
//!
//! Creates `count` (100000) coroutines, each on its own stack of
//! `stack_kib` (64) KiB, resumes each once so that it is suspended inside
//! its body with a little stack in use, and keeps them all alive. Then
//! prints the resident memory before and after (VmRSS, including the
//! coroutine handles in one Vec), the number of kernel mappings
//! (lines of /proc/self/maps) and vm.max_map_count, and the time per
//! creation and per first resume; then resumes each to its end and drops
//! them all.
//!
//! The stacks are corostack's `DefaultStack::new`, or with the argument
//! `corosensei` corosensei's `DefaultStack::new`, which costs two mappings
//! per stack (an mprotect'ed guard splits it), so it stops near half of
//! vm.max_map_count. When a stack cannot be mapped, the example prints the
//! error and how many coroutines it reached, reports on those, and exits
//! with status 1.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The body of every coroutine: a little stack in use across a suspend.
fn body(suspend: impl FnOnce()) {
    let mut buf = [0u8; 256];
    black_box(&mut buf);
    suspend();
    black_box(&buf);
}

/// The operations the report needs, for either crate.
trait Live {
    const NAME: &'static str;
    /// A new coroutine on a new stack of `size` bytes, not yet started.
    fn create(size: usize) -> Result<Self, String>
    where
        Self: Sized;
    /// The first resume: the coroutine then sits suspended in [`body`].
    fn start(&mut self);
    /// Resumes the coroutine to its end.
    fn finish(&mut self);
}

impl Live for corostack::Coroutine<(), (), ()> {
    const NAME: &'static str = "corostack";

    fn create(size: usize) -> Result<Self, String> {
        let stack = corostack::DefaultStack::new(size).map_err(|e| e.to_string())?;
        Ok(corostack::Coroutine::with_stack(stack, |y, ()| {
            body(|| y.suspend(()))
        }))
    }

    fn start(&mut self) {
        assert!(self.resume(()).as_yield().is_some());
    }

    fn finish(&mut self) {
        assert!(self.resume(()).as_return().is_some());
    }
}

// corosensei is not built on arm (see Cargo.toml).
#[cfg(peer_corosensei)]
type Corosensei = corosensei::Coroutine<(), (), (), corosensei::stack::DefaultStack>;

#[cfg(peer_corosensei)]
impl Live for Corosensei {
    const NAME: &'static str = "corosensei";

    fn create(size: usize) -> Result<Self, String> {
        let stack = corosensei::stack::DefaultStack::new(size).map_err(|e| e.to_string())?;
        Ok(corosensei::Coroutine::with_stack(stack, |y, ()| {
            body(|| y.suspend(()))
        }))
    }

    fn start(&mut self) {
        assert!(self.resume(()).as_yield().is_some());
    }

    fn finish(&mut self) {
        assert!(self.resume(()).as_return().is_some());
    }
}

fn main() -> ExitCode {
    let mut corosensei = false;
    let mut numbers = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "corosensei" => corosensei = true,
            "corostack" => corosensei = false,
            _ => match arg.parse::<usize>() {
                Ok(n) => numbers.push(n),
                Err(_) => {
                    eprintln!("usage: live [corostack|corosensei] [count] [stack_kib]");
                    return ExitCode::FAILURE;
                }
            },
        }
    }
    let count = numbers.first().copied().unwrap_or(100_000);
    let stack_kib = numbers.get(1).copied().unwrap_or(64);
    if corosensei {
        #[cfg(peer_corosensei)]
        return run::<Corosensei>(count, stack_kib);
        #[cfg(not(peer_corosensei))]
        {
            eprintln!("live: corosensei is not built on arm (see Cargo.toml)");
            return ExitCode::FAILURE;
        }
    }
    run::<corostack::Coroutine<(), (), ()>>(count, stack_kib)
}

fn run<C: Live>(count: usize, stack_kib: usize) -> ExitCode {
    let size = stack_kib * 1024;
    let mut live: Vec<C> = Vec::with_capacity(count);
    let (rss_before, maps_before) = (rss_bytes(), maps_lines());

    let t = Instant::now();
    let mut failure = None;
    for _ in 0..count {
        match C::create(size) {
            Ok(co) => live.push(co),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let create_time = t.elapsed();
    let reached = live.len();

    let t = Instant::now();
    live.iter_mut().for_each(C::start);
    let start_time = t.elapsed();
    let (rss_after, maps_after) = (rss_bytes(), maps_lines());

    println!("crate                {}", C::NAME);
    println!("coroutines           {reached} live of {count} asked");
    println!("stack size           {stack_kib} KiB");
    println!(
        "VmRSS                {} KiB before, {} KiB after",
        rss_before / 1024,
        rss_after / 1024
    );
    println!(
        "RSS per coroutine    {:.0} bytes",
        rss_after.saturating_sub(rss_before) as f64 / reached.max(1) as f64
    );
    println!("maps lines           {maps_before} before, {maps_after} after");
    println!("vm.max_map_count     {}", max_map_count());
    println!("create               {}", per(create_time, reached));
    println!("first resume         {}", per(start_time, reached));
    if let Some(e) = &failure {
        println!("stopped              after {reached} coroutines: {e}");
    }

    let t = Instant::now();
    live.iter_mut().for_each(C::finish);
    drop(live);
    println!("finish + drop        {}", per(t.elapsed(), reached));

    if failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// "<ns> ns each (<total> total)".
fn per(total: Duration, n: usize) -> String {
    format!(
        "{:.0} ns each ({:.1} ms total)",
        total.as_nanos() as f64 / n.max(1) as f64,
        total.as_secs_f64() * 1e3
    )
}

/// The process's resident set, from VmRSS in /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The number of the process's mappings: lines of /proc/self/maps, read
/// through a buffer allocated up front (at the mapping limit, growing a
/// buffer may need a mapping that the kernel refuses).
fn maps_lines() -> String {
    use std::io::BufRead;
    let count = || -> std::io::Result<usize> {
        let file = std::fs::File::open("/proc/self/maps")?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut lines = 0;
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(lines);
            }
            lines += buf.iter().filter(|&&b| b == b'\n').count();
            let n = buf.len();
            reader.consume(n);
        }
    };
    count().map_or_else(|e| format!("unreadable ({e})"), |n| n.to_string())
}

fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
