//! UDP: datagrams that suspend the calling coroutine while the socket is
//! not ready.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use crate::io::{Dir, Registration};

use super::{check_timeout, deadline, each_addr};

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
    // Declared before `io`: out of the poller before the descriptor closes.
    reg: Registration,
    io: mio::net::UdpSocket,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
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
            Self::from_mio(mio::net::UdpSocket::bind(a)?, "UdpSocket::bind")
        })
    }

    #[track_caller]
    fn from_mio(io: mio::net::UdpSocket, what: &'static str) -> io::Result<UdpSocket> {
        let reg = Registration::new(&io, what)?;
        Ok(UdpSocket {
            reg,
            io,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        })
    }

    /// Takes over a standard socket (made non-blocking here).
    ///
    /// # Errors
    /// When it cannot be made non-blocking or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        Self::from_mio(mio::net::UdpSocket::from_std(socket), "UdpSocket::from_std")
    }

    /// A second handle on the same socket (`dup`), as std's: each handle
    /// has its own registration with the hub that makes it and its own
    /// timeouts (starting as this one's); a datagram goes to one reader.
    /// The socket closes when both are gone.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated (`EMFILE`) or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        let clone = UdpSocket::from_std(self.io.as_fd().try_clone_to_owned()?.into())?;
        clone.read_timeout.set(self.read_timeout.get());
        clone.write_timeout.set(self.write_timeout.get());
        Ok(clone)
    }

    /// Bounds each receive: one that waits longer fails with `TimedOut`.
    /// `None` (the default) waits as long as it takes.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std refuses it: the timeout
    /// is unchanged.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(check_timeout(timeout)?);
        Ok(())
    }

    /// Bounds each send: one that waits longer (a full send buffer) fails
    /// with `TimedOut`. `None` (the default) waits as long as it takes.
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std refuses it: the timeout
    /// is unchanged.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(check_timeout(timeout)?);
        Ok(())
    }

    /// The read timeout.
    ///
    /// # Errors
    /// None: a `Result` as std's (which asks the socket).
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.read_timeout.get())
    }

    /// The write timeout.
    ///
    /// # Errors
    /// None: a `Result` as std's (which asks the socket).
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.write_timeout.get())
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
    /// As `sendto(2)` fails; `TimedOut` past the write timeout.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        each_addr(addr, |a| {
            self.reg.io(
                "UdpSocket::send_to",
                Dir::Write,
                deadline(self.write_timeout.get()),
                || self.io.send_to(buf, a),
            )
        })
    }

    /// Waits for a datagram; returns its length and sender.
    ///
    /// # Errors
    /// As `recvfrom(2)` fails; `TimedOut` past the read timeout.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.reg.io(
            "UdpSocket::recv_from",
            Dir::Read,
            deadline(self.read_timeout.get()),
            || self.io.recv_from(buf),
        )
    }

    /// Sends a datagram to the connected peer.
    ///
    /// # Errors
    /// As `send(2)` fails (`NotConnected` before `connect`); `TimedOut`
    /// past the write timeout.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.reg.io(
            "UdpSocket::send",
            Dir::Write,
            deadline(self.write_timeout.get()),
            || self.io.send(buf),
        )
    }

    /// Waits for a datagram from the connected peer.
    ///
    /// # Errors
    /// As `recv(2)` fails; `TimedOut` past the read timeout.
    ///
    /// # Panics
    /// Outside a hub's coroutine, if it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg.io(
            "UdpSocket::recv",
            Dir::Read,
            deadline(self.read_timeout.get()),
            || self.io.recv(buf),
        )
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

fd_conversions!(UdpSocket);

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
