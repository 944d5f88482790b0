//! [`block_on`]: a hub coroutine awaits a [`Future`], suspending only
//! itself; the future's waker may be called from any thread.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

use crate::driver::queue::{Message, Shared};
use crate::scheduler;

/// "Not parked" in [`Signal::parked`].
const RUNNING: u64 = u64::MAX;

/// The waker of one `block_on` call.
struct Signal {
    /// Set by `wake`; the coroutine polls again when it sees it.
    woken: AtomicBool,
    /// The generation of the park the coroutine is in, or [`RUNNING`].
    parked: AtomicU64,
    key: usize,
    id: u64,
    /// The hub's thread: a wake from there schedules directly.
    thread: ThreadId,
    /// The hub; weak, so that a waker kept by a future does not keep a
    /// dead hub's queue (and its poller's waker) alive.
    shared: Weak<Shared>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst pairs with the coroutine's store of `parked` and load of
        // `woken`: either it sees `woken`, or we see its park.
        self.woken.store(true, Ordering::SeqCst);
        let epoch = self.parked.load(Ordering::SeqCst);
        if epoch == RUNNING {
            return;
        }
        if thread::current().id() == self.thread {
            let here = scheduler::try_with_hub(|hub| {
                let ours = self
                    .shared
                    .upgrade()
                    .is_some_and(|s| Arc::ptr_eq(&s, hub.queue()));
                if ours {
                    hub.wake_local(self.key, self.id, epoch);
                }
                ours
            });
            if here == Some(true) {
                return;
            }
        }
        if let Some(shared) = self.shared.upgrade() {
            let _ = shared.send(Message::Wake {
                key: self.key,
                id: self.id,
                epoch,
            });
        }
    }
}

/// Awaits `fut` from a hub's coroutine: polls it, and while it is pending
/// suspends only the calling coroutine; its waker, which any thread may
/// call, makes the coroutine ready again (through the hub's cross-thread
/// queue and its poller's waker when called from another thread).
///
/// This is how futures of other libraries (a tokio channel, a
/// [`RemoteJoinHandle`](super::RemoteJoinHandle)) join the hub. Futures
/// that need their own runtime's context (tokio's timers and sockets) do
/// not work here; channels and other runtime-free futures do.
///
/// ```
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     // Work handed to a hub through its remote is a future.
///     let fut = hub::remote().spawn(|| 6 * 7);
///     assert_eq!(hub::block_on(fut).unwrap(), 42);
///     assert_eq!(hub::block_on(async { 1 + 1 }), 2);
/// });
/// ```
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
/// When `fut` panics.
#[track_caller]
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let hub = scheduler::hub("hub::block_on");
    let task = hub.current_task("hub::block_on");
    let signal = Arc::new(Signal {
        woken: AtomicBool::new(false),
        parked: AtomicU64::new(RUNNING),
        key: task.key(),
        id: task.id(),
        thread: thread::current().id(),
        shared: Arc::downgrade(hub.queue()),
    });
    let waker = Waker::from(signal.clone());
    // While a future is awaited, a waker elsewhere may wake the hub.
    hub.block_on_started();
    /// Counts the call out however it ends (nothing once the hub is gone:
    /// the core's thread-exit hook may unwind the call after `run`
    /// returned).
    struct Active(u64);
    impl Drop for Active {
        fn drop(&mut self) {
            scheduler::with_hub_id(self.0, |hub| hub.block_on_ended());
        }
    }
    let id = hub.id();
    let _active = Active(id);
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        signal.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            // A wake-up sent for a park we skipped must not wake the
            // coroutine's next, unrelated park: move on a generation.
            task.skip_epoch();
            return v;
        }
        signal.parked.store(task.epoch(), Ordering::SeqCst);
        if !signal.woken.load(Ordering::SeqCst) {
            // Looked up again: `poll` may have caught the unwind of the
            // core's thread-exit hook (a forgotten coroutine that suspended
            // inside it) and returned, after the hub is gone.
            scheduler::park(scheduler::hub_by_id(id, "hub::block_on"), "hub::block_on");
        }
        signal.parked.store(RUNNING, Ordering::SeqCst);
    }
}
