//! Readiness: the hub's mio `Poll`, the record of each registered source,
//! and [`wait_readable`] / [`wait_writable`] for any file descriptor.
//!
//! Sources are registered edge-triggered for both directions once. Each
//! keeps a readable and a writable flag: an event sets them, and an
//! operation that fails with `WouldBlock` clears its flag and parks the
//! coroutine until the next event sets it again. No event can slip in
//! between the failing call and the park: events are handled only by the
//! hub's loop, which runs only while every coroutine is parked.
//!
//! A stream read that fills less than its buffer has drained the socket,
//! and a stream write that takes less than it was given has filled it (as
//! tokio also reckons): the source is then marked *drained* for that
//! direction until the next event, and the next operation parks at once
//! instead of making a system call bound to fail with `WouldBlock`. With
//! edge-triggered events that is safe: any data (or room) that comes later
//! brings an event of its own.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::scheduler::{self, Hub, park_until};
use super::slab::Slab;
use super::task::Waiter;

/// The token of the cross-thread waker.
const WAKER: Token = Token(usize::MAX);

/// A direction of readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// The readiness of one registered source, and who waits for it.
#[derive(Default)]
pub(crate) struct Source {
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// Drained for reading, filled for writing (see the module docs):
    /// until the next event, an operation parks without trying.
    read_drained: Cell<bool>,
    write_drained: Cell<bool>,
    /// An event has reported the peer's end of the stream, a hang-up or an
    /// error: a call then answers at once (end of file, or the error)
    /// however little the last one moved, so nothing is marked drained.
    closed: Cell<bool>,
    readers: RefCell<Vec<Waiter>>,
    writers: RefCell<Vec<Waiter>>,
}

impl Source {
    fn flag(&self, dir: Dir) -> &Cell<bool> {
        match dir {
            Dir::Read => &self.readable,
            Dir::Write => &self.writable,
        }
    }

    fn drained(&self, dir: Dir) -> &Cell<bool> {
        match dir {
            Dir::Read => &self.read_drained,
            Dir::Write => &self.write_drained,
        }
    }

    fn waiters(&self, dir: Dir) -> &RefCell<Vec<Waiter>> {
        match dir {
            Dir::Read => &self.readers,
            Dir::Write => &self.writers,
        }
    }

    /// Marks `dir` ready and wakes its waiters.
    fn ready(&self, hub: &Hub, dir: Dir) {
        self.flag(dir).set(true);
        self.drained(dir).set(false);
        // Drained in place, keeping the vector's buffer for the next wait
        // (waking only queues tasks: nothing else touches this list).
        for w in self.waiters(dir).borrow_mut().drain(..) {
            hub.wake(&w.task, w.epoch);
        }
    }
}

/// What a registration needs after the hub's loop has gone (a socket may
/// outlive its hub): the registry and the table of sources.
pub(crate) struct IoCore {
    registry: Registry,
    sources: RefCell<Slab<Rc<Source>>>,
    /// Coroutines waiting for a descriptor to be closed (an `accept` that
    /// failed for lack of descriptors).
    fd_freed: RefCell<Vec<Waiter>>,
}

/// The hub's poller.
pub(crate) struct IoDriver {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    pub(crate) core: Rc<IoCore>,
}

impl IoDriver {
    pub(crate) fn new() -> io::Result<IoDriver> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(IoDriver {
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(1024)),
            core: Rc::new(IoCore {
                registry,
                sources: RefCell::new(Slab::new()),
                fd_freed: RefCell::new(Vec::new()),
            }),
        })
    }

    /// Whether no source is registered (no socket can wake anyone).
    pub(crate) fn has_no_sources(&self) -> bool {
        self.core.sources.borrow().is_empty()
    }

    /// The waker that other threads use to interrupt the poll.
    pub(crate) fn waker(&self) -> io::Result<mio::Waker> {
        mio::Waker::new(self.poll.borrow().registry(), WAKER)
    }

    /// Waits for events up to `timeout` (none: until one comes), sets the
    /// readiness they report and wakes the waiters. Returns whether the
    /// cross-thread waker fired.
    pub(crate) fn poll(&self, hub: &Hub, timeout: Option<Duration>) -> bool {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return false;
            }
            panic!("stackful::hub: polling for I/O failed: {e}");
        }
        let mut remote = false;
        let sources = self.core.sources.borrow();
        for ev in events.iter() {
            if ev.token() == WAKER {
                remote = true;
                continue;
            }
            let Some(src) = sources.get(ev.token().0) else {
                continue;
            };
            if ev.is_read_closed() || ev.is_write_closed() || ev.is_error() {
                src.closed.set(true);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                src.ready(hub, Dir::Read);
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                src.ready(hub, Dir::Write);
            }
        }
        remote
    }
}

/// A source registered with a hub: dropping it forgets the source (the
/// owner deregisters it from the poller first, see
/// [`deregister`](Registration::deregister)).
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
        let core = hub.io.core.clone();
        let source = Rc::new(Source::default());
        let key = core.sources.borrow_mut().insert(source.clone());
        if let Err(e) = core
            .registry
            .register(&mut SourceFd(&fd), Token(key), interest)
        {
            core.sources.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(Registration {
            core_ptr: Cell::new(Rc::as_ptr(&core)),
            core: RefCell::new(core),
            key: Cell::new(key),
            source,
            fd,
            interest,
        })
    }

    /// Takes the source out of the poller (before it is closed).
    pub(crate) fn deregister(&self) {
        let _ = self
            .core
            .borrow()
            .registry
            .deregister(&mut SourceFd(&self.fd));
    }

    /// Moves the registration to `hub`, whose thread runs it now (the hub
    /// it was registered with has ended): out of the old poller, into the
    /// new one, whose first poll reports the readiness the socket has.
    #[cold]
    #[inline(never)]
    fn rehome(&self, hub: &Hub) -> io::Result<()> {
        let old = self.core.borrow().clone();
        let _ = old.registry.deregister(&mut SourceFd(&self.fd));
        old.sources.borrow_mut().remove(self.key.get());
        let core = hub.io.core.clone();
        let key = core.sources.borrow_mut().insert(self.source.clone());
        let registered = core
            .registry
            .register(&mut SourceFd(&self.fd), Token(key), self.interest);
        if let Err(e) = registered {
            core.sources.borrow_mut().remove(key);
            // Homeless: the next wait tries again.
            self.key.set(usize::MAX);
            self.core_ptr.set(ptr::null());
            return Err(e);
        }
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
        dir: Dir,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        if self.source.drained(dir).get() {
            self.wait(dir, deadline)?;
        }
        loop {
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(dir, deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// Marks `dir` drained (see the module docs): the caller's stream read
    /// filled less than its buffer, or its write took less than it was
    /// given.
    pub(crate) fn drained(&self, dir: Dir) {
        if !self.source.closed.get() {
            self.source.drained(dir).set(true);
        }
    }

    /// Parks until the source is ready for `dir` again (after an operation
    /// failed with `WouldBlock`), or `deadline` passes (`TimedOut`).
    #[track_caller]
    #[inline(always)]
    pub(crate) fn wait(&self, dir: Dir, deadline: Option<Instant>) -> io::Result<()> {
        let hub = scheduler::hub("a socket operation that would block");
        if self.core_ptr.get() != Rc::as_ptr(&hub.io.core) {
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
                waiters.push(Waiter::current(hub));
            }
            let timed_out = park_until(hub, deadline);
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
        core.sources.borrow_mut().remove(self.key.get());
        // A descriptor is about to close: wake acceptors that ran out.
        let waiters = std::mem::take(&mut *core.fd_freed.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// Parks until a hub socket is closed or `deadline` passes (for an
/// `accept` that failed for lack of descriptors).
pub(crate) fn wait_fd_freed(deadline: Instant) {
    let hub = scheduler::hub("TcpListener::accept");
    hub.io.core.fd_freed.borrow_mut().push(Waiter::current(hub));
    park_until(hub, Some(deadline));
}

/// Waits for `fd` to become ready in `interest`.
#[track_caller]
fn wait_fd(fd: RawFd, interest: Interest, dir: Dir, what: &str) -> io::Result<()> {
    let hub = scheduler::hub(what);
    let reg = Registration::with_interest(hub, fd, interest)?;
    /// Deregisters however the wait ends.
    struct Dereg<'a>(&'a Registration);
    impl Drop for Dereg<'_> {
        fn drop(&mut self) {
            self.0.deregister();
        }
    }
    let _dereg = Dereg(&reg);
    let flag = reg.source.flag(dir);
    while !flag.get() {
        reg.source
            .waiters(dir)
            .borrow_mut()
            .push(Waiter::current(hub));
        scheduler::park(hub);
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
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use stackful_hub as hub;
///
/// hub::run(|| {
///     let (mut a, b) = UnixStream::pair().unwrap();
///     let writer = hub::spawn(move || a.write_all(b"x").unwrap());
///     hub::wait_readable(&b).unwrap(); // parks until the writer has run
///     writer.join().unwrap();
/// });
/// ```
///
/// # Errors
/// When the poller refuses the descriptor (not pollable, already
/// registered).
///
/// # Panics
/// Outside a hub's coroutine.
#[track_caller]
pub fn wait_readable(fd: &impl AsRawFd) -> io::Result<()> {
    wait_fd(
        fd.as_raw_fd(),
        Interest::READABLE,
        Dir::Read,
        "hub::wait_readable",
    )
}

/// Suspends the calling coroutine until `fd` is writable (or has an
/// error), letting the others run: gevent's `wait_write`. See
/// [`wait_readable`] for the rules.
///
/// # Errors
/// When the poller refuses the descriptor.
///
/// # Panics
/// Outside a hub's coroutine.
#[track_caller]
pub fn wait_writable(fd: &impl AsRawFd) -> io::Result<()> {
    wait_fd(
        fd.as_raw_fd(),
        Interest::WRITABLE,
        Dir::Write,
        "hub::wait_writable",
    )
}
