//! An interactive echo client on the hub: reads lines, sends each
//! to the server, and prints what comes back.
//!
//! ```text
//! cargo run -p corostack-hub --example echo_server &
//! cargo run -p corostack-hub --example echo_client -- [ADDR]
//! ```
//!
//! ADDR defaults to 127.0.0.1:8000. Standard input is read on the hub's
//! blocking pool, so the hub itself never blocks on the terminal.

use std::io::{self, BufRead, Read, Write};

use corostack_hub as hub;
use corostack_hub::net::TcpStream;

/// Sends each line of `lines` to the echo server at `addr` and hands what
/// comes back to `emit`, line by line. Runs inside a hub.
pub fn run(
    addr: &str,
    mut lines: impl FnMut() -> Option<String>,
    emit: impl Fn(String),
) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    while let Some(line) = lines() {
        conn.write_all(line.as_bytes())?;
        let mut back = vec![0; line.len()];
        conn.read_exact(&mut back)?;
        emit(String::from_utf8_lossy(&back).into_owned());
    }
    Ok(())
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    hub::run(move || {
        let next_line = || {
            hub::spawn_blocking(|| {
                let mut line = String::new();
                match io::stdin().lock().read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                }
            })
        };
        run(&addr, next_line, |echo| print!("{echo}"))
    })
}
