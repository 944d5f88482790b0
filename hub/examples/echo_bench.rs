//! A load generator for echo servers, built on the hub: C connections to
//! an address, each sending an M-byte message and waiting for the whole
//! echo before sending the next, for D seconds. Prints the round trips per
//! second and the p50 and p99 latency (then, in brackets, p90, p99.9 and
//! the slowest round trip), then stops by itself.
//!
//! ```text
//! cargo run --release -p corostack-hub --example echo_bench -- ADDR [-c CONNECTIONS] [-m BYTES] [-d SECONDS] [-t THREADS]
//! ```
//!
//! Defaults: 127.0.0.1:8000, 50 connections, 64 bytes, 5 seconds, one
//! thread. With `-t N` the connections are spread over N hubs (threads).
//! Connections are opened first; the clock starts when all are open.
//! Latencies are kept in a histogram of 1 µs buckets up to 1 s.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use corostack_hub as hub;
use corostack_hub::net::TcpStream;
use corostack_hub::sync::Semaphore;

/// Latency histogram: 1 µs buckets up to 1 s, the rest in the last.
#[derive(Clone)]
struct Histogram(Vec<u64>);

impl Histogram {
    fn new() -> Histogram {
        Histogram(vec![0; 1_000_001])
    }

    fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as usize).min(self.0.len() - 1);
        self.0[us] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The latency at quantile `q`, in µs.
    fn quantile(&self, q: f64) -> usize {
        let target = ((self.count() as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, &n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= target {
                return us;
            }
        }
        self.0.len() - 1
    }
}

/// One hub's share of the load: `conns` connections for `secs` seconds
/// after `start` (the barrier where every hub has connected).
fn load(addr: String, conns: usize, size: usize, secs: f64, start: Arc<Barrier>) -> Histogram {
    hub::run(move || {
        // Open the connections, at most 64 handshakes at a time.
        let gate = Semaphore::new(64);
        let opening: Vec<_> = (0..conns)
            .map(|_| {
                let (gate, addr) = (gate.clone(), addr.clone());
                hub::spawn(move || {
                    let _p = gate.acquire();
                    let s = TcpStream::connect(addr.as_str())?;
                    s.set_nodelay(true)?;
                    Ok::<TcpStream, std::io::Error>(s)
                })
            })
            .collect();
        // A connection that cannot be made ends the run (the other load
        // threads would wait for this one forever).
        let streams: Vec<TcpStream> = hub::join_all(opening)
            .into_iter()
            .map(|r| match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    eprintln!("echo_bench: cannot connect to {addr}: {e}");
                    std::process::exit(1);
                }
                Err(e) => panic!("echo_bench: a connecting coroutine failed: {e:?}"),
            })
            .collect();
        // Wait for the other hubs without blocking this one's sockets.
        hub::spawn_blocking(move || start.wait());
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let hist = Rc::new(RefCell::new(Histogram::new()));
        let workers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let hist = hist.clone();
                hub::spawn(move || {
                    let msg = vec![b'x'; size];
                    let mut back = vec![0u8; size];
                    while Instant::now() < end {
                        let t = Instant::now();
                        s.write_all(&msg)?;
                        s.read_exact(&mut back)?;
                        hist.borrow_mut().record(t.elapsed());
                    }
                    Ok::<(), std::io::Error>(())
                })
            })
            .collect();
        let failed = hub::join_all(workers)
            .into_iter()
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count();
        if failed > 0 {
            eprintln!("echo_bench: {failed} connection(s) failed before the end");
        }
        hist.replace(Histogram(Vec::new()))
    })
}

fn main() {
    let mut addr = "127.0.0.1:8000".to_string();
    let (mut conns, mut size, mut secs, mut threads) = (50usize, 64usize, 5f64, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse::<f64>().ok());
        match a.as_str() {
            "-c" => conns = num().unwrap_or(50.0) as usize,
            "-m" => size = num().unwrap_or(64.0) as usize,
            "-d" => secs = num().unwrap_or(5.0),
            "-t" => threads = num().unwrap_or(1.0).max(1.0) as usize,
            _ => addr = a,
        }
    }
    let start = Arc::new(Barrier::new(threads + 1));
    let hubs: Vec<_> = (0..threads)
        .map(|i| {
            let share = conns / threads + usize::from(i < conns % threads);
            let (addr, start) = (addr.clone(), start.clone());
            std::thread::spawn(move || load(addr, share, size, secs, start))
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut hist = Histogram::new();
    for h in hubs {
        hist.merge(&h.join().expect("a load thread failed"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = hist.count();
    println!(
        "{addr}: {conns} connections, {size}-byte messages, {elapsed:.1} s: \
         {:.0} round trips/s, p50 {} us, p99 {} us (p90 {} us, p99.9 {} us, max {} us)",
        n as f64 / elapsed,
        hist.quantile(0.50),
        hist.quantile(0.99),
        hist.quantile(0.90),
        hist.quantile(0.999),
        hist.quantile(1.0)
    );
}
