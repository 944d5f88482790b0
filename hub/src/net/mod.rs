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

/// The descriptor traits of a hub socket `$ty` (a struct with the fields
/// `reg`, its registration with the hub's poller, and `io`, the socket),
/// as std's sockets have them: borrowing (`AsFd`, `AsRawFd`), handing the
/// descriptor over (out of the poller first: `IntoRawFd`,
/// `From<$ty> for OwnedFd`) and taking one over (registered with the
/// running hub, as `$ty::from_std` does: `FromRawFd`, `From<OwnedFd>`).
macro_rules! fd_conversions {
    ($ty:ident) => {
        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&self.io)
            }
        }

        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.io)
            }
        }

        impl std::os::fd::IntoRawFd for $ty {
            /// Takes the descriptor out of the hub's poller and hands it
            /// over, still non-blocking.
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(std::os::fd::OwnedFd::from(self))
            }
        }

        impl std::os::fd::FromRawFd for $ty {
            /// Takes over a socket's descriptor of this kind, as `from_std`
            /// does.
            ///
            /// # Safety
            /// As [`FromRawFd::from_raw_fd`](std::os::fd::FromRawFd::from_raw_fd) for `OwnedFd`:
            /// `fd` is an open descriptor that the caller owns and hands
            /// over (a socket of this kind).
            ///
            /// # Panics
            /// As `From<OwnedFd>`.
            #[track_caller]
            unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> $ty {
                // SAFETY: the caller hands over an open descriptor it owns.
                $ty::from(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                })
            }
        }

        impl From<std::os::fd::OwnedFd> for $ty {
            /// Takes over a socket's descriptor of this kind, as `from_std`
            /// does (`from_std` returns its errors instead).
            ///
            /// # Panics
            /// Outside a hub; when the descriptor cannot be made
            /// non-blocking or registered (the poller refuses a descriptor
            /// it has already, or one that is no socket).
            #[track_caller]
            fn from(fd: std::os::fd::OwnedFd) -> $ty {
                $ty::from_std(fd.into()).unwrap_or_else(|e| {
                    panic!(
                        concat!("corostack::hub: ", stringify!($ty), "::from(OwnedFd): {}"),
                        e
                    )
                })
            }
        }

        impl From<$ty> for std::os::fd::OwnedFd {
            /// Takes the descriptor out of the hub's poller and hands it
            /// over, still non-blocking (set it blocking again for a std
            /// socket that should block; the hub's timeouts do not go with
            /// it).
            fn from(socket: $ty) -> std::os::fd::OwnedFd {
                let $ty { reg, io, .. } = socket;
                drop(reg);
                io.into()
            }
        }
    };
}

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
