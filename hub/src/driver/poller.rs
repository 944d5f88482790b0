//! The readiness driver: the hub's mio `Poll`, the record of each
//! registered source (readiness flags, drained marks, who waits) and the
//! events that set them. It owns that data and knows nothing of tasks nor
//! of the user functions: a waiter is the scheduler's type `W`, handed
//! back to it when its source is ready.
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
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::slab::Slab;

/// The token of the cross-thread waker.
const WAKER: Token = Token(usize::MAX);

/// A direction of readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// The readiness of one registered source, and who waits for it (`W`:
/// the scheduler's record of a parked task).
pub(crate) struct Source<W> {
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
    readers: RefCell<Vec<W>>,
    writers: RefCell<Vec<W>>,
}

impl<W> Default for Source<W> {
    fn default() -> Self {
        Source {
            readable: Cell::new(false),
            writable: Cell::new(false),
            read_drained: Cell::new(false),
            write_drained: Cell::new(false),
            closed: Cell::new(false),
            readers: RefCell::new(Vec::new()),
            writers: RefCell::new(Vec::new()),
        }
    }
}

impl<W> Source<W> {
    /// Whether the last event reported `dir` ready (cleared by an
    /// operation that failed with `WouldBlock`).
    #[inline(always)]
    pub(crate) fn flag(&self, dir: Dir) -> &Cell<bool> {
        match dir {
            Dir::Read => &self.readable,
            Dir::Write => &self.writable,
        }
    }

    /// Whether `dir` is marked drained (see the module docs).
    #[inline(always)]
    pub(crate) fn drained(&self, dir: Dir) -> &Cell<bool> {
        match dir {
            Dir::Read => &self.read_drained,
            Dir::Write => &self.write_drained,
        }
    }

    /// Who waits for `dir`.
    #[inline(always)]
    pub(crate) fn waiters(&self, dir: Dir) -> &RefCell<Vec<W>> {
        match dir {
            Dir::Read => &self.readers,
            Dir::Write => &self.writers,
        }
    }

    /// Whether an event reported the peer's end, a hang-up or an error.
    #[inline(always)]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Marks `dir` ready and hands its waiters to `wake`.
    fn ready(&self, dir: Dir, wake: impl Fn(W)) {
        self.flag(dir).set(true);
        self.drained(dir).set(false);
        // Emptied in place, keeping the vector's buffer for the next wait
        // (waking only queues tasks: nothing else touches this list). Most
        // often one coroutine waits, or none (the direction nobody waits
        // for): those take no `drain`, whose drop costs more than the wake.
        let mut waiters = self.waiters(dir).borrow_mut();
        match waiters.len() {
            0 => {}
            1 => {
                if let Some(w) = waiters.pop() {
                    wake(w);
                }
            }
            _ => {
                for w in waiters.drain(..) {
                    wake(w);
                }
            }
        }
    }
}

/// What a registration needs after the hub's loop has gone (a socket may
/// outlive its hub): the registry and the table of sources.
pub(crate) struct IoCore<W> {
    registry: Registry,
    sources: RefCell<Slab<Rc<Source<W>>>>,
    /// Coroutines waiting for a descriptor to be closed (an `accept` that
    /// failed for lack of descriptors).
    fd_freed: RefCell<Vec<W>>,
}

impl<W> IoCore<W> {
    /// Registers `fd` for `interest`, edge-triggered, with `source` as its
    /// record; returns its key.
    pub(crate) fn register(
        &self,
        fd: RawFd,
        source: Rc<Source<W>>,
        interest: Interest,
    ) -> io::Result<usize> {
        let key = self.sources.borrow_mut().insert(source);
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(key), interest)
        {
            self.sources.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(key)
    }

    /// Takes `fd` out of the poller (its record stays until
    /// [`forget`](Self::forget)).
    pub(crate) fn deregister(&self, fd: RawFd) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
    }

    /// Drops the record at `key` (no key: nothing).
    pub(crate) fn forget(&self, key: usize) {
        self.sources.borrow_mut().remove(key);
    }

    /// Adds a waiter for the next descriptor closed.
    pub(crate) fn wait_fd_freed(&self, waiter: W) {
        self.fd_freed.borrow_mut().push(waiter);
    }

    /// Takes the waiters for a descriptor closed (one is about to be).
    pub(crate) fn take_fd_freed(&self) -> Vec<W> {
        std::mem::take(&mut *self.fd_freed.borrow_mut())
    }
}

/// The hub's poller.
pub(crate) struct IoDriver<W> {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    core: Rc<IoCore<W>>,
}

impl<W> IoDriver<W> {
    pub(crate) fn new() -> io::Result<IoDriver<W>> {
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

    /// The part that registrations keep (it outlives the loop).
    #[inline(always)]
    pub(crate) fn core(&self) -> &Rc<IoCore<W>> {
        &self.core
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
    /// readiness they report and hands the waiters to `wake`. Returns
    /// whether the cross-thread waker fired.
    pub(crate) fn poll(&self, timeout: Option<Duration>, wake: impl Fn(W) + Copy) -> bool {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return false;
            }
            panic!("corostack::hub: polling for I/O failed: {e}");
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
                src.ready(Dir::Read, wake);
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                src.ready(Dir::Write, wake);
            }
        }
        remote
    }
}
