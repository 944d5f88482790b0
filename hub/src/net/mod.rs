//! Sockets for the hub: [`TcpListener`], [`TcpStream`] and [`UdpSocket`].
//! Each call reads like blocking code, and suspends only the calling
//! coroutine while the socket is not ready: the other coroutines of the
//! hub run meanwhile.
//!
//! ```
//! use std::io::{Read, Write};
//! use corostack_hub as hub;
//! use corostack_hub::net::{TcpListener, TcpStream};
//!
//! hub::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let server = hub::spawn(move || {
//!         let (mut conn, _) = listener.accept().unwrap();
//!         let mut buf = [0; 5];
//!         conn.read_exact(&mut buf).unwrap();
//!         conn.write_all(&buf).unwrap();
//!     });
//!     let mut client = TcpStream::connect(addr).unwrap();
//!     client.write_all(b"hello").unwrap();
//!     let mut echo = [0; 5];
//!     client.read_exact(&mut echo).unwrap();
//!     assert_eq!(&echo, b"hello");
//!     server.join().unwrap();
//! });
//! ```
//!
//! Sockets are made inside a hub and belong to its thread. A socket
//! that outlives its hub can still be dropped, and its calls that do not
//! need to wait still work; one that would wait panics, naming `hub::run`.
//!
//! Deadlines: [`TcpStream::set_read_timeout`] and
//! [`set_write_timeout`](TcpStream::set_write_timeout) bound each call
//! (`TimedOut`); [`hub::timeout`](crate::timeout) bounds any block of
//! calls.

mod tcp;
mod udp;

pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Tries `f` on each address `addr` resolves to, returning the first
/// success or the last error.
pub(crate) fn each_addr<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// `timeout` if it is one a socket may have: std refuses a zero duration
/// (with its message).
pub(crate) fn check_timeout(timeout: Option<Duration>) -> io::Result<Option<Duration>> {
    if timeout == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(timeout)
}

/// The deadline of a call that starts now and may wait `timeout`.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}
