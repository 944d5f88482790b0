//! Crossing threads: the [`Remote`] handle through which other threads
//! hand a hub work (on the cross-thread queue, `driver::queue`), and the
//! [`RemoteJoinHandle`] future of the work's result.

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use crate::driver::queue::{Message, Shared, Start, lock};
use crate::scheduler;
use crate::task::{JoinError, KillSelf, PanicPayload};

/// A handle to a hub that any thread can hold: it hands the hub work to
/// run in a new coroutine and wakes it. Get one inside the hub with
/// [`remote`](super::remote()).
///
/// ```
/// use corostack_hub as hub;
///
/// let answer = hub::run(|| {
///     let remote = hub::remote();
///     // Another thread asks this hub to compute something.
///     let asker = std::thread::spawn(move || remote.spawn(|| 6 * 7).join());
///     // Meanwhile the hub serves; this coroutine waits without blocking it.
///     while !asker.is_finished() {
///         hub::sleep(std::time::Duration::from_millis(1));
///     }
///     asker.join().unwrap()
/// });
/// assert_eq!(answer.unwrap(), 42);
/// ```
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
    /// The hub's [`id`](scheduler::Hub::id).
    hub: u64,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A handle to the calling thread's hub for other threads.
///
/// # Panics
/// Outside a hub.
#[track_caller]
#[must_use]
pub fn remote() -> Remote {
    let hub = scheduler::hub("hub::remote");
    Remote {
        shared: hub.queue().clone(),
        hub: hub.id(),
    }
}

impl Remote {
    /// Runs `f` in a new coroutine of the hub, which may suspend as any
    /// coroutine does; the handle gives its value, as a [`Future`] or by
    /// blocking ([`RemoteJoinHandle::join`]).
    ///
    /// If the hub has ended, or ends before `f` returns, the result is
    /// [`JoinError::Killed`]; a panic in `f` is
    /// [`JoinError::Panicked`]. If the hub cannot map a stack for the new
    /// coroutine (the address space, `RLIMIT_AS` or `vm.max_map_count`
    /// ran out), `f` is dropped without running, the hub goes on, and the
    /// result is [`JoinError::NotStarted`] with the mapping's error: the
    /// caller may wait and try again, or refuse the work.
    pub fn spawn<T, F>(&self, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::<Result<T, JoinError>>();
        let job = move |start: Start| match start {
            Start::Run => match panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(v) => tx.send(Ok(v)),
                // A kill's unwind goes on (the dropped sender reports Killed).
                Err(p) if scheduler::current_is_killed() || p.is::<KillSelf>() => {
                    panic::resume_unwind(p)
                }
                Err(p) => tx.send(Err(JoinError::Panicked(PanicPayload::new(p)))),
            },
            Start::NoStack(e) => {
                // `f` goes first, so that the result comes after its
                // destructors, as a join's does; a panic there is the
                // loop's to keep (`Hub::run_in_loop`), after the result.
                let dropped = panic::catch_unwind(AssertUnwindSafe(move || drop(f)));
                tx.send(Err(JoinError::NotStarted(e)));
                if let Err(p) = dropped {
                    panic::resume_unwind(p);
                }
            }
        };
        // A refused job is dropped here: its sender reports Killed.
        let _ = self.shared.send(Message::Spawn(Box::new(job)));
        RemoteJoinHandle { rx, hub: self.hub }
    }

    /// Whether the hub has ended (work sent now is refused).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

/// The result of work handed to a hub with [`Remote::spawn`]: await it
/// from async code, or [`join`](RemoteJoinHandle::join) it from a thread.
/// It is `Send` and `Sync` (its `T` is `Send`): any thread may hold it, but
/// a blocking `join` on the hub's own thread panics (see the method).
pub struct RemoteJoinHandle<T> {
    rx: Receiver<Result<T, JoinError>>,
    /// The [`id`](scheduler::Hub::id) of the hub that runs the work.
    hub: u64,
}

impl<T> RemoteJoinHandle<T> {
    /// Blocks the calling thread until the result is there. Not on the
    /// thread of the hub that runs the work, while it runs: blocking that
    /// thread would stop the hub, and the result would never come. A
    /// coroutine awaits the handle with [`block_on`](super::block_on())
    /// instead (a coroutine of another hub may use either).
    ///
    /// # Errors
    /// [`JoinError::Panicked`] when the work panicked;
    /// [`JoinError::Killed`] when it was killed, or refused or cut short
    /// by the end of the hub; [`JoinError::NotStarted`], with the
    /// mapping's error, when the hub could map no stack for it (the work
    /// never ran).
    ///
    /// # Panics
    /// On the thread of the hub that runs the work, while that hub runs
    /// (in one of its coroutines, or in a destructor that its loop runs),
    /// whether or not the result is there yet: the mistake shows at once.
    /// (In a destructor that runs during an unwind, such as a kill's, that
    /// panic aborts the process, as any panic there does; never a hang.)
    #[track_caller]
    pub fn join(self) -> Result<T, JoinError> {
        if scheduler::try_with_hub(|h| h.id() == self.hub).unwrap_or(false) {
            own_hub_join();
        }
        self.rx.recv()
    }

    /// Whether the result is there.
    #[must_use]
    pub fn done(&self) -> bool {
        lock(&self.rx.0.state).done
    }
}

impl<T> Future for RemoteJoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rx.poll(cx)
    }
}

impl<T> fmt::Debug for RemoteJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJoinHandle")
            .field("done", &self.done())
            .finish()
    }
}

/// A blocking join on the thread of the hub that would have to run the
/// work.
#[cold]
#[track_caller]
fn own_hub_join() -> ! {
    panic!(
        "corostack::hub: `RemoteJoinHandle::join` was called on the thread of the hub that runs \
         the work: blocking that thread stops the hub, so the result could never come; in a \
         coroutine, await it with `hub::block_on(handle)`"
    )
}

/// A one-value channel between threads, awaited or blocked on. A sender
/// dropped without sending delivers `Err(Killed)`.
pub(crate) fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            value: None,
            done: false,
            waker: None,
        }),
        cv: Condvar::new(),
    });
    (Sender(Some(inner.clone())), Receiver(inner))
}

struct Inner<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
}

struct State<T> {
    value: Option<T>,
    done: bool,
    waker: Option<Waker>,
}

pub(crate) struct Sender<T>(Option<Arc<Inner<T>>>);
pub(crate) struct Receiver<T>(Arc<Inner<T>>);

impl<T> Sender<T> {
    fn complete(&mut self, value: Option<T>) {
        let Some(inner) = self.0.take() else { return };
        let waker = {
            let mut s = lock(&inner.state);
            s.value = value;
            s.done = true;
            s.waker.take()
        };
        inner.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn send(mut self, value: T) {
        self.complete(Some(value));
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.complete(None);
    }
}

impl<T> Receiver<Result<T, JoinError>> {
    fn take(s: &mut State<Result<T, JoinError>>) -> Result<T, JoinError> {
        s.value.take().unwrap_or(Err(JoinError::Killed))
    }

    fn recv(self) -> Result<T, JoinError> {
        let mut s = lock(&self.0.state);
        while !s.done {
            s = self.0.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        Self::take(&mut s)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        let mut s = lock(&self.0.state);
        if s.done {
            return Poll::Ready(Self::take(&mut s));
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
