//! UDP: datagrams that suspend the calling coroutine while the socket is
//! not ready.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::io::{Dir, Registration};

use super::each_addr;

/// A UDP socket.
///
/// ```
/// use corostack_hub::{self as hub, net::UdpSocket};
///
/// hub::run(|| {
///     let a = UdpSocket::bind("127.0.0.1:0").unwrap();
///     let b = UdpSocket::bind("127.0.0.1:0").unwrap();
///     let to = b.local_addr().unwrap();
///     let receiver = hub::spawn(move || {
///         let mut buf = [0; 16];
///         let (n, _) = b.recv_from(&mut buf).unwrap();
///         buf[..n].to_vec()
///     });
///     a.send_to(b"ping", to).unwrap();
///     assert_eq!(receiver.join().unwrap(), b"ping");
/// });
/// ```
pub struct UdpSocket {
    io: mio::net::UdpSocket,
    reg: Registration,
}

impl UdpSocket {
    /// Binds a socket to `addr`.
    ///
    /// # Errors
    /// As `bind` fails.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        each_addr(addr, |a| {
            let io = mio::net::UdpSocket::bind(a)?;
            let reg = Registration::new(&io, "UdpSocket::bind")?;
            Ok(UdpSocket { io, reg })
        })
    }

    /// Sets the default peer of [`send`](UdpSocket::send) and the only
    /// one [`recv`](UdpSocket::recv) accepts.
    ///
    /// # Errors
    /// As `connect(2)` fails.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        each_addr(addr, |a| self.io.connect(a))
    }

    /// Sends a datagram to `addr`; returns the bytes sent.
    ///
    /// # Errors
    /// As `sendto(2)` fails.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait.
    #[track_caller]
    pub fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        each_addr(addr, |a| {
            self.reg.io(Dir::Write, None, || self.io.send_to(buf, a))
        })
    }

    /// Waits for a datagram; returns its length and sender.
    ///
    /// # Errors
    /// As `recvfrom(2)` fails.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait.
    #[track_caller]
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.reg.io(Dir::Read, None, || self.io.recv_from(buf))
    }

    /// Sends a datagram to the connected peer.
    ///
    /// # Errors
    /// As `send(2)` fails (`NotConnected` before `connect`).
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait.
    #[track_caller]
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.reg.io(Dir::Write, None, || self.io.send(buf))
    }

    /// Waits for a datagram from the connected peer.
    ///
    /// # Errors
    /// As `recv(2)` fails.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait.
    #[track_caller]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg.io(Dir::Read, None, || self.io.recv(buf))
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The connected peer's address.
    ///
    /// # Errors
    /// `NotConnected` before `connect`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        self.reg.deregister();
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
