//! The tokio peer of `echo_server`, for the side-by-side benchmark: the
//! same echo (a 4 KiB buffer, `TCP_NODELAY`, a task per connection) on a
//! `current_thread` runtime, or a `multi_thread` one with N workers.
//!
//! ```text
//! cargo run --release -p corostack-hub --example tokio_echo_server -- [ADDR] [--threads N] [--per-thread] [--for SECONDS]
//! ```
//!
//! ADDR defaults to 127.0.0.1:8001; `--threads 1` (the default) runs a
//! `current_thread` runtime, more a `multi_thread` runtime with that many
//! workers. `--per-thread` arranges tokio as the hub is: N threads, each
//! with a `current_thread` runtime and its own listener on the shared port
//! (`SO_REUSEPORT`), so that a task never leaves the thread that accepted
//! its connection (no work stealing). With `--for SECONDS` it stops by
//! itself.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

/// Serves until `seconds` have passed (or forever).
async fn serve_for(listener: TcpListener, seconds: Option<f64>) -> io::Result<()> {
    match seconds {
        Some(s) => {
            let _ = tokio::time::timeout(Duration::from_secs_f64(s), serve(listener)).await;
            Ok(())
        }
        None => serve(listener).await,
    }
}

/// `threads` threads, each a `current_thread` runtime accepting on its own
/// `SO_REUSEPORT` listener bound to `addr`.
fn per_thread(addr: &str, threads: usize, seconds: Option<f64>) -> io::Result<()> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let bind = move || -> io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let bound_tx = bound_tx.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    // Tell main whether the listener is up before serving.
                    let listener = match bind() {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    serve_for(listener, seconds).await
                })
            })
        })
        .collect();
    for _ in 0..threads {
        bound_rx.recv().map_err(io::Error::other)??;
    }
    println!("tokio echo server listening on {addr} ({threads} current_thread runtime(s))");
    for w in workers {
        w.join().expect("a server thread panicked")?;
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let mut addr = "127.0.0.1:8001".to_string();
    let mut threads = 1usize;
    let mut seconds = None;
    let mut per_thread_mode = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            "--per-thread" => per_thread_mode = true,
            "--for" => seconds = args.next().and_then(|n| n.parse::<f64>().ok()),
            _ => addr = a,
        }
    }
    if per_thread_mode {
        return per_thread(&addr, threads.max(1), seconds);
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
        serve_for(listener, seconds).await
    })
}
