//! An echo server on the hub: accept connections, spawn a
//! coroutine per connection, and echo what arrives until the peer closes.
//!
//! ```text
//! cargo run --release -p corostack-hub --example echo_server -- [ADDR] [--threads N] [--for SECONDS]
//! ```
//!
//! ADDR defaults to 127.0.0.1:8000. With `--threads N`, N hubs each bind
//! their own listener to ADDR with `SO_REUSEPORT` and the kernel spreads
//! the connections over them. With `--for SECONDS` the server stops by
//! itself after that long (the benchmarks use it).

use std::io::{self, Read, Write};
use std::time::Duration;

use corostack_hub as hub;
use corostack_hub::net::{TcpListener, TcpStream};

/// Echoes what `conn` sends until it closes; returns the bytes echoed.
pub fn handle(mut conn: TcpStream) -> io::Result<u64> {
    conn.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        conn.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Accepts connections forever, one coroutine each. A failing connection
/// ends only its own coroutine.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (conn, _peer) = listener.accept()?;
        hub::spawn(move || handle(conn));
    }
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let mut addr = "127.0.0.1:8000".to_string();
    let mut threads = 1;
    let mut seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            "--for" => seconds = args.next().and_then(|n| n.parse::<f64>().ok()),
            _ => addr = a,
        }
    }
    let results = hub::Builder::new()
        .threads(threads)
        .run_on_threads(move |i| -> io::Result<()> {
            let listener = if threads > 1 {
                TcpListener::bind_reuseport(addr.as_str())?
            } else {
                TcpListener::bind(addr.as_str())?
            };
            if i == 0 {
                println!(
                    "echo server listening on {} ({threads} thread(s))",
                    listener.local_addr()?
                );
            }
            let server = hub::spawn(move || serve(listener));
            match seconds {
                Some(s) => hub::sleep(Duration::from_secs_f64(s)),
                None => return server.join().unwrap_or(Ok(())),
            }
            Ok(())
        });
    results.into_iter().collect()
}
