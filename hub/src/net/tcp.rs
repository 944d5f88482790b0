//! TCP: a listener that accepts without spinning when descriptors run
//! out, and a stream with `Read`, `Write`, deadlines and shutdown.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::iter::FusedIterator;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::io::{Dir, Registration, wait_fd_freed};

use super::{check_timeout, deadline, each_addr};

/// The listen backlog: as tokio's and the kernel's usual `somaxconn`.
const BACKLOG: i32 = 1024;

/// How long an `accept` that ran out of descriptors waits at most before
/// it tries again (it also tries again as soon as a hub socket closes).
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

/// A TCP socket that listens for connections; [`accept`](TcpListener::accept)
/// suspends the calling coroutine until one comes.
///
/// ```
/// use std::io::{Read, Write};
/// use corostack_hub::{self as hub, net::{TcpListener, TcpStream}};
///
/// let reply = hub::run(|| {
///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     let server = hub::spawn(move || {
///         let (mut conn, _) = listener.accept().unwrap(); // the client runs meanwhile
///         let mut buf = [0; 4];
///         conn.read_exact(&mut buf).unwrap();
///         conn.write_all(&buf).unwrap();
///     });
///     let mut client = TcpStream::connect(addr).unwrap();
///     client.write_all(b"ping").unwrap();
///     let mut echo = [0; 4];
///     client.read_exact(&mut echo).unwrap();
///     server.join().unwrap();
///     echo
/// });
/// assert_eq!(&reply, b"ping");
/// ```
pub struct TcpListener {
    // Declared before `io`: out of the poller before the descriptor closes.
    reg: Registration,
    io: mio::net::TcpListener,
}

impl TcpListener {
    /// Binds a listener to `addr` (with `SO_REUSEADDR`, a backlog of 1,024).
    ///
    /// # Errors
    /// As `bind` and `listen` fail; the last address's error when `addr`
    /// resolves to several.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        each_addr(addr, |a| Self::bind_with(a, false))
    }

    /// Binds a listener to `addr` with `SO_REUSEPORT` as well, so that
    /// several listeners (one per hub thread, see
    /// [`Builder::run_on_threads`](crate::Builder::run_on_threads))
    /// share the port and the kernel spreads connections over them. Bind
    /// the first to port 0 to get a free port, the others to that port.
    ///
    /// # Errors
    /// As `bind` fails (`AddrInUse` when the port is held by a socket
    /// without `SO_REUSEPORT`).
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn bind_reuseport(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        each_addr(addr, |a| Self::bind_with(a, true))
    }

    #[track_caller]
    fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Self::from_std(socket.into())
    }

    /// Takes over a standard listener (made non-blocking here).
    ///
    /// # Errors
    /// When it cannot be made non-blocking or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        let io = mio::net::TcpListener::from_std(listener);
        let reg = Registration::new(&io, "TcpListener::bind")?;
        Ok(TcpListener { io, reg })
    }

    /// Waits for a connection and returns it with the peer's address.
    ///
    /// When the process or the system runs out of file descriptors
    /// (`EMFILE`, `ENFILE`) or of buffers, `accept` does not fail and does
    /// not spin: it waits until a socket of the hub closes, or 100 ms,
    /// and tries again; the connection waits in the backlog meanwhile.
    /// Connections aborted before they were accepted are skipped.
    ///
    /// # Errors
    /// Other failures of `accept(2)`.
    ///
    /// # Panics
    /// Outside a hub's coroutine, when no connection is waiting: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        const WHAT: &str = "TcpListener::accept";
        loop {
            match self.io.accept() {
                Ok((s, addr)) => return Ok((TcpStream::from_mio(s, WHAT)?, addr)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reg.wait(WHAT, Dir::Read, None)?;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        wait_fd_freed(Instant::now() + EMFILE_BACKOFF);
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// An iterator over the connections, each [`accept`](TcpListener::accept)ed
    /// in turn (std's `incoming`): it never ends, and an error is an item
    /// (the loop goes on after it).
    ///
    /// ```
    /// use std::io::Write;
    /// use corostack_hub::{self as hub, net::{TcpListener, TcpStream}};
    ///
    /// hub::run(|| {
    ///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let addr = listener.local_addr().unwrap();
    ///     for i in 0..3u8 {
    ///         hub::spawn(move || TcpStream::connect(addr).unwrap().write_all(&[i]).unwrap());
    ///     }
    ///     for conn in listener.incoming().take(3) {
    ///         let conn = conn.unwrap();
    ///         hub::spawn(move || conn.peer_addr()); // serve it
    ///     }
    /// });
    /// ```
    ///
    /// # Panics
    /// As `accept`, at each item.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// A second listener on the same socket (`dup`): each of the two has
    /// its own registration with the hub that makes it, so coroutines may
    /// accept on both (each connection goes to one of them), and each may
    /// move to another hub on the thread or be dropped alone; the socket
    /// stops listening when both are gone.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated (`EMFILE`) or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        TcpListener::from_std(self.io.as_fd().try_clone_to_owned()?.into())
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// As `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// The connections of a [`TcpListener`], made by
/// [`incoming`](TcpListener::incoming): each `next` accepts one, so it
/// never returns `None` (a fused iterator that never ends).
///
/// ```
/// use std::io::{self, Read, Write};
/// use std::net::Shutdown;
/// use corostack_hub::{self as hub, net::{TcpListener, TcpStream}};
///
/// // A server's loop, one coroutine per connection, as with std's (the
/// // `take` is for this example, which serves one).
/// fn serve(listener: TcpListener) -> io::Result<()> {
///     for conn in listener.incoming().take(1) {
///         let conn = conn?;
///         hub::spawn(move || io::copy(&mut &conn, &mut &conn)); // echo
///     }
///     Ok(())
/// }
///
/// hub::run(|| -> io::Result<()> {
///     let listener = TcpListener::bind("127.0.0.1:0")?;
///     let addr = listener.local_addr()?;
///     let client = hub::spawn(move || -> io::Result<Vec<u8>> {
///         let mut c = TcpStream::connect(addr)?;
///         c.write_all(b"hi")?;
///         c.shutdown(Shutdown::Write)?;
///         let mut echo = Vec::new();
///         c.read_to_end(&mut echo)?;
///         Ok(echo)
///     });
///     serve(listener)?;
///     assert_eq!(client.join().unwrap()?, b"hi");
///     Ok(())
/// })?;
/// # Ok::<(), io::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "an iterator does nothing unless consumed"]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    #[track_caller]
    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(stream, _)| stream))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

impl FusedIterator for Incoming<'_> {}

fd_conversions!(TcpListener);

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.local_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

/// A TCP connection. `Read` and `Write` (also through `&TcpStream`, so
/// that one coroutine can read while another writes) suspend the calling
/// coroutine while the socket is not ready. A read or write that must wait
/// panics outside a hub's coroutine as [`connect`](TcpStream::connect)
/// does: from the hub's loop (a destructor or callback that it runs), with
/// ``corostack::hub: `TcpStream::read` was called from the hub's loop
/// (...)`` (or `TcpStream::write`), and on a thread that runs no hub (the
/// stream outlived its hub) with ``corostack::hub: `TcpStream::read` was
/// called outside a hub ...`` (see [Outside a hub](crate#outside-a-hub)).
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use corostack_hub::{self as hub, net::{TcpListener, TcpStream}};
///
/// hub::run(|| {
///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
///     let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
///     let (_peer, _) = listener.accept().unwrap();
///     // A peer that sends nothing: the read gives up after its timeout.
///     stream.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
///     let err = (&stream).read(&mut [0; 8]).unwrap_err();
///     assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
///     (&stream).write_all(b"still writable").unwrap();
/// });
/// ```
pub struct TcpStream {
    // Declared before `io`: out of the poller before the descriptor closes
    // (and acceptors waiting for a free descriptor are woken, to run once
    // it has).
    reg: Registration,
    io: mio::net::TcpStream,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl TcpStream {
    fn from_mio(io: mio::net::TcpStream, what: &'static str) -> io::Result<TcpStream> {
        let reg = Registration::new(&io, what)?;
        Ok(TcpStream {
            io,
            reg,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        })
    }

    /// Connects to `addr`, trying each address it resolves to.
    ///
    /// # Errors
    /// The last address's error (`ConnectionRefused`, ...).
    ///
    /// # Panics
    /// Outside a hub's coroutine: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        each_addr(addr, |a| Self::connect_until(a, None))
    }

    /// Connects to `addr`, failing with `TimedOut` after `timeout`.
    ///
    /// # Errors
    /// `TimedOut`, or as [`connect`](TcpStream::connect).
    ///
    /// # Panics
    /// Outside a hub's coroutine: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        Self::connect_until(*addr, Instant::now().checked_add(timeout))
    }

    #[track_caller]
    fn connect_until(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
        const WHAT: &str = "TcpStream::connect";
        let s = Self::from_mio(mio::net::TcpStream::connect(addr)?, WHAT)?;
        loop {
            // Writable means connected, or failed.
            s.reg.wait(WHAT, Dir::Write, deadline)?;
            if let Some(e) = s.io.take_error()? {
                return Err(e);
            }
            match s.io.peer_addr() {
                Ok(_) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes over a connected standard stream (made non-blocking here).
    ///
    /// # Errors
    /// When it cannot be made non-blocking or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Self::from_mio(mio::net::TcpStream::from_std(stream), "TcpStream::from_std")
    }

    /// The remote address.
    ///
    /// # Errors
    /// `NotConnected` once the peer is gone.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    /// As `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Shuts down the read half, the write half (the peer reads EOF), or
    /// both.
    ///
    /// # Errors
    /// As `shutdown(2)` fails (`NotConnected`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.shutdown(how)
    }

    /// Sets `TCP_NODELAY`.
    ///
    /// # Errors
    /// As `setsockopt` fails.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.set_nodelay(nodelay)
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// As `getsockopt` fails.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.nodelay()
    }

    /// Bounds each read: a read that waits longer fails with `TimedOut`.
    /// `None` (the default) waits as long as it takes. The timeout is this
    /// handle's (a [`try_clone`](TcpStream::try_clone) has its own).
    ///
    /// # Errors
    /// `InvalidInput` for a zero duration, as std refuses it (it would
    /// mean "never wait", which is no timeout): the timeout is unchanged.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(check_timeout(timeout)?);
        Ok(())
    }

    /// Bounds each write (each call of `write`, so `write_all` may take
    /// longer in total): a write that waits longer fails with `TimedOut`,
    /// for a peer that never reads. `None` (the default) waits as long as
    /// it takes.
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

    /// A second handle on the same connection (`dup`), as std's: one
    /// coroutine may read through one while another writes through the
    /// other, or each may go to its own owner. Each handle has its own
    /// registration with the hub that makes it (the clone registers its
    /// own descriptor here, and may move to a later hub on the thread as
    /// any socket does) and its own timeouts, which start as this one's.
    /// Dropping one closes only its descriptor: the connection stays open
    /// while the other lives (the peer sees the end of the stream once
    /// both are gone, or after a [`shutdown`](TcpStream::shutdown)).
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use corostack_hub::{self as hub, net::{TcpListener, TcpStream}};
    ///
    /// hub::run(|| {
    ///     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    ///     let (peer, _) = listener.accept().unwrap();
    ///     let mut writer = reader.try_clone().unwrap();
    ///     hub::spawn(move || writer.write_all(b"ping").unwrap());
    ///     let mut buf = [0; 4];
    ///     (&peer).read_exact(&mut buf).unwrap();
    ///     (&peer).write_all(&buf).unwrap();
    ///     reader.read_exact(&mut buf).unwrap();
    ///     assert_eq!(&buf, b"ping");
    /// });
    /// ```
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated (`EMFILE`) or registered.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        let clone = TcpStream::from_std(self.io.as_fd().try_clone_to_owned()?.into())?;
        clone.read_timeout.set(self.read_timeout.get());
        clone.write_timeout.set(self.write_timeout.get());
        Ok(clone)
    }

    #[track_caller]
    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        let n = self.reg.io(
            "TcpStream::read",
            Dir::Read,
            deadline(self.read_timeout.get()),
            || (&self.io).read(buf),
        )?;
        // Less than asked for: the socket is drained until its next event.
        if n > 0 && n < len {
            self.reg.drained(Dir::Read);
        }
        Ok(n)
    }

    #[track_caller]
    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.reg.io(
            "TcpStream::write",
            Dir::Write,
            deadline(self.write_timeout.get()),
            || (&self.io).write(buf),
        )?;
        // Less than given: the send buffer is full until its next event.
        if n > 0 && n < buf.len() {
            self.reg.drained(Dir::Write);
        }
        Ok(n)
    }

    /// `write_all` as std's default (`Interrupted` retried, `WriteZero`
    /// when nothing is taken), inline so that the loop is the caller's,
    /// around one call of [`write_inner`](Self::write_inner) per write
    /// (std's default, a generic, is inlined or not as the optimizer
    /// decides for each program).
    #[track_caller]
    #[inline]
    fn write_all_inner(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_inner(buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ));
                }
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf)
    }
}

impl Write for TcpStream {
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all_inner(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_inner(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all_inner(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_inner(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fd_conversions!(TcpStream);

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}
