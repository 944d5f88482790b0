//! [`wait_readable`] / [`wait_writable`] for any file descriptor, and the
//! registration through which the hub's sockets wait, on the readiness
//! driver (`driver::poller`, whose docs tell how readiness is tracked).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr;
use std::rc::Rc;
use std::time::Instant;

use mio::Interest;

pub(crate) use crate::driver::poller::Dir;
use crate::scheduler::{self, Hub, Waiter, park_until};

/// A source's record, its waiters the scheduler's.
type Source = crate::driver::poller::Source<Waiter>;
/// The registry part of the hub's poller.
type IoCore = crate::driver::poller::IoCore<Waiter>;

/// A source registered with a hub: dropping it takes the source out of the
/// poller and forgets it, so its owner drops it before the descriptor
/// closes (a socket declares it before its descriptor), or before it
/// hands the descriptor on (`into_raw_fd`, `From<_> for OwnedFd`).
///
/// A socket belongs to no hub in particular: it is registered with the hub
/// it was made in, and moves to the hub running on the thread when it must
/// wait there (a socket made in one `hub::run` and used in a later one).
pub(crate) struct Registration {
    /// The hub it is registered with now, and its key there.
    core: RefCell<Rc<IoCore>>,
    /// `core`'s address, for the check of each wait (null while the
    /// registration has no poller: a move to a new hub failed).
    core_ptr: Cell<*const IoCore>,
    key: Cell<usize>,
    source: Rc<Source>,
    fd: RawFd,
    interest: Interest,
}

impl Registration {
    /// Registers `src` with this thread's hub, for both directions.
    ///
    /// # Panics
    /// Outside a hub.
    #[track_caller]
    pub(crate) fn new(src: &impl AsRawFd, what: &str) -> io::Result<Registration> {
        let hub = scheduler::hub(what);
        Self::with_interest(
            hub,
            src.as_raw_fd(),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn with_interest(hub: &Hub, fd: RawFd, interest: Interest) -> io::Result<Registration> {
        let core = hub.io_core().clone();
        let source = Rc::new(Source::default());
        let key = core.register(fd, source.clone(), interest)?;
        Ok(Registration {
            core_ptr: Cell::new(Rc::as_ptr(&core)),
            core: RefCell::new(core),
            key: Cell::new(key),
            source,
            fd,
            interest,
        })
    }

    /// Moves the registration to `hub`, whose thread runs it now (the hub
    /// it was registered with has ended): out of the old poller, into the
    /// new one, whose first poll reports the readiness the socket has.
    #[cold]
    #[inline(never)]
    fn rehome(&self, hub: &Hub) -> io::Result<()> {
        let old = self.core.borrow().clone();
        old.deregister(self.fd);
        old.forget(self.key.get());
        let core = hub.io_core().clone();
        let key = match core.register(self.fd, self.source.clone(), self.interest) {
            Ok(key) => key,
            Err(e) => {
                // Homeless: the next wait tries again.
                self.key.set(usize::MAX);
                self.core_ptr.set(ptr::null());
                return Err(e);
            }
        };
        for dir in [Dir::Read, Dir::Write] {
            self.source.flag(dir).set(false);
            self.source.drained(dir).set(false);
            self.source.waiters(dir).borrow_mut().clear();
        }
        self.key.set(key);
        self.core_ptr.set(Rc::as_ptr(&core));
        *self.core.borrow_mut() = core;
        Ok(())
    }

    /// Runs `op` until it does not fail with `WouldBlock`, parking while
    /// the source is not ready for `dir`; fails with `TimedOut` once
    /// `deadline` has passed. Inline, with [`wait`](Self::wait): see
    /// [`park`](scheduler::park).
    #[track_caller]
    #[inline(always)]
    pub(crate) fn io<R>(
        &self,
        what: &'static str,
        dir: Dir,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        if self.source.drained(dir).get() {
            self.wait(what, dir, deadline)?;
        }
        loop {
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(what, dir, deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// Marks `dir` drained (see the module docs): the caller's stream read
    /// filled less than its buffer, or its write took less than it was
    /// given.
    pub(crate) fn drained(&self, dir: Dir) {
        if !self.source.is_closed() {
            self.source.drained(dir).set(true);
        }
    }

    /// Parks until the source is ready for `dir` again (after an operation
    /// failed with `WouldBlock`), or `deadline` passes (`TimedOut`).
    #[track_caller]
    #[inline(always)]
    pub(crate) fn wait(
        &self,
        what: &'static str,
        dir: Dir,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let hub = scheduler::hub(what);
        if self.core_ptr.get() != Rc::as_ptr(hub.io_core()) {
            self.rehome(hub)?;
        }
        let flag = self.source.flag(dir);
        flag.set(false);
        loop {
            {
                let mut waiters = self.source.waiters(dir).borrow_mut();
                if waiters.len() >= 8 {
                    forget_stale(&mut waiters);
                }
                waiters.push(Waiter::current(hub, what));
            }
            let timed_out = park_until(hub, deadline, what);
            if flag.get() {
                return Ok(());
            }
            if timed_out || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out_error());
            }
        }
    }
}

/// Drops the waiters whose park has ended (woken by something else, or
/// gone), so that a source waited on in a loop keeps a short list.
#[cold]
fn forget_stale(waiters: &mut Vec<Waiter>) {
    waiters.retain(Waiter::is_live);
}

/// The error of a socket call whose timeout passed.
#[cold]
fn timed_out_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the socket was not ready before the timeout",
    )
}

impl Drop for Registration {
    fn drop(&mut self) {
        let core = self.core.borrow();
        // Out of the poller while the descriptor is still the owner's (it
        // closes after, or goes on to a new owner).
        core.deregister(self.fd);
        core.forget(self.key.get());
        // A descriptor is about to close: wake acceptors that ran out.
        let waiters = core.take_fd_freed();
        for w in waiters {
            w.wake();
        }
    }
}

/// Parks until a hub socket is closed or `deadline` passes (for an
/// `accept` that failed for lack of descriptors).
pub(crate) fn wait_fd_freed(deadline: Instant) {
    const WHAT: &str = "TcpListener::accept";
    let hub = scheduler::hub(WHAT);
    hub.io_core().wait_fd_freed(Waiter::current(hub, WHAT));
    park_until(hub, Some(deadline), WHAT);
}

/// Waits for `fd` to become ready in `interest`.
#[track_caller]
fn wait_fd(fd: RawFd, interest: Interest, dir: Dir, what: &str) -> io::Result<()> {
    let hub = scheduler::hub(what);
    // Dropped however the wait ends, which takes `fd` out of the poller.
    let reg = Registration::with_interest(hub, fd, interest)?;
    let flag = reg.source.flag(dir);
    while !flag.get() {
        reg.source
            .waiters(dir)
            .borrow_mut()
            .push(Waiter::current(hub, what));
        scheduler::park(hub, what);
    }
    Ok(())
}

/// Suspends the calling coroutine until `fd` is readable (or has hung up,
/// or has an error), letting the others run: gevent's `wait_read`, for
/// descriptors that other libraries own (pipes, their sockets).
///
/// The descriptor is added to the hub's poller for the wait and removed
/// after, so it must not be one the hub already watches (a
/// [`TcpStream`](crate::net::TcpStream) of this crate: use its own
/// methods); the poller then refuses it with `AlreadyExists`. A descriptor
/// that is already readable returns at once. Wrap the call in
/// [`timeout`](super::timeout) to bound it.
///
/// ```
/// use std::io::Write;
/// use std::os::unix::net::UnixStream;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let (mut a, b) = UnixStream::pair().unwrap();
///     let writer = hub::spawn(move || a.write_all(b"x").unwrap());
///     hub::wait_readable(&b).unwrap(); // parks until the writer has run
///     writer.join().unwrap();
/// });
/// ```
///
/// The descriptor is borrowed for the whole wait (I/O safety, [`AsFd`]):
/// nothing can close it meanwhile, so its number cannot be reused by
/// another descriptor (a hub socket the wait's clean-up would then take
/// out of the poller). A bare [`RawFd`] owns nothing and is refused:
///
/// ```compile_fail
/// use std::os::fd::{AsRawFd, RawFd};
/// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
/// let raw: RawFd = a.as_raw_fd();
/// corostack_hub::run(move || corostack_hub::wait_readable(&raw).unwrap());
/// ```
///
/// Borrow it instead, from its owner or as a [`BorrowedFd`](std::os::fd::BorrowedFd):
///
/// ```
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let (a, b) = UnixStream::pair().unwrap();
///     let _w = hub::spawn(move || drop(a)); // a hang-up makes `b` readable
///     hub::wait_readable(&b.as_fd()).unwrap();
/// });
/// ```
///
/// # Errors
/// When the poller refuses the descriptor (not pollable, already
/// registered).
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn wait_readable(fd: &impl AsFd) -> io::Result<()> {
    wait_fd(
        fd.as_fd().as_raw_fd(),
        Interest::READABLE,
        Dir::Read,
        "hub::wait_readable",
    )
}

/// Suspends the calling coroutine until `fd` is writable (or has an
/// error), letting the others run: gevent's `wait_write`. See
/// [`wait_readable`] for the rules (the descriptor is borrowed for the
/// wait; a bare `RawFd` is refused):
///
/// ```compile_fail
/// use std::os::fd::{AsRawFd, RawFd};
/// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
/// let raw: RawFd = a.as_raw_fd();
/// corostack_hub::run(move || corostack_hub::wait_writable(&raw).unwrap());
/// ```
///
/// # Errors
/// When the poller refuses the descriptor.
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn wait_writable(fd: &impl AsFd) -> io::Result<()> {
    wait_fd(
        fd.as_fd().as_raw_fd(),
        Interest::WRITABLE,
        Dir::Write,
        "hub::wait_writable",
    )
}
