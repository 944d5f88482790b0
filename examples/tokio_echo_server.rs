//! The tokio peer of `echo_server`, for the side-by-side benchmark: the
//! same echo (a 4 KiB buffer, `TCP_NODELAY`, a task per connection) on a
//! `current_thread` runtime, or a `multi_thread` one with N workers.
//!
//! ```text
//! cargo run --release --example tokio_echo_server -- [ADDR] [--threads N] [--for SECONDS]
//! ```
//!
//! ADDR defaults to 127.0.0.1:8001; `--threads 1` (the default) runs a
//! `current_thread` runtime, more a `multi_thread` runtime with that many
//! workers. With `--for SECONDS` it stops by itself.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn handle(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(handle(conn));
    }
}

fn main() -> io::Result<()> {
    let mut addr = "127.0.0.1:8001".to_string();
    let mut threads = 1usize;
    let mut seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            "--for" => seconds = args.next().and_then(|n| n.parse::<f64>().ok()),
            _ => addr = a,
        }
    }
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        println!(
            "tokio echo server listening on {} ({threads} thread(s))",
            listener.local_addr()?
        );
        match seconds {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs_f64(s), serve(listener)).await;
                Ok(())
            }
            None => serve(listener).await,
        }
    })
}
