//! The cross-thread queue driver: the part of a hub that other threads
//! reach. They push messages (wake a task, run work in a new coroutine)
//! and fire the poller's waker; the scheduler drains them. It knows
//! nothing of tasks beyond the numbers that name them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A message from another thread to a hub.
pub(crate) enum Message {
    /// Wake the task at `key` with this `id` from its park number `epoch`.
    Wake { key: usize, id: u64, epoch: u64 },
    /// Run this in a new coroutine, with [`Start::Run`]; or, if no stack
    /// can be mapped for one, call it in the loop with [`Start::NoStack`]
    /// (it reports the error and drops the work).
    Spawn(Box<dyn FnOnce(Start) + Send>),
}

/// How a [`Message::Spawn`] job is called.
pub(crate) enum Start {
    /// In its new coroutine: run the work.
    Run,
    /// In the loop, which could map no stack for it: the work never runs.
    NoStack(std::io::Error),
}

/// The part of a hub that other threads reach.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Set when the waker has been fired and the hub has not yet drained
    /// the queue: later senders skip the system call.
    notified: AtomicBool,
    waker: mio::Waker,
}

struct Queue {
    messages: Vec<Message>,
    /// No more work: the hub is ending (wake-ups still come in, for the
    /// destructors of the coroutines it kills).
    closed: bool,
    /// The hub has ended: nothing comes in.
    ended: bool,
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a push or a swap).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(waker: mio::Waker) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                messages: Vec::new(),
                closed: false,
                ended: false,
            }),
            notified: AtomicBool::new(false),
            waker,
        }
    }

    /// Queues `msg` and wakes the hub; hands it back if the hub has ended.
    pub(crate) fn send(&self, msg: Message) -> Result<(), Message> {
        {
            let mut q = lock(&self.queue);
            if q.ended || (q.closed && matches!(msg, Message::Spawn(_))) {
                return Err(msg);
            }
            q.messages.push(msg);
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            // An eventfd write; it fails only if the counter would
            // overflow, when the hub has a wake-up pending anyway.
            let _ = self.waker.wake();
        }
        Ok(())
    }

    /// Takes the queued messages (the hub, after its waker fired).
    pub(crate) fn drain(&self) -> Vec<Message> {
        self.notified.store(false, Ordering::Release);
        std::mem::take(&mut lock(&self.queue).messages)
    }

    /// Refuses further work (wake-ups still come in); returns the work
    /// still queued.
    pub(crate) fn close(&self) -> Vec<Message> {
        let mut q = lock(&self.queue);
        q.closed = true;
        let (spawns, wakes) = std::mem::take(&mut q.messages)
            .into_iter()
            .partition(|m| matches!(m, Message::Spawn(_)));
        q.messages = wakes;
        spawns
    }

    /// Refuses every further message; returns those still queued.
    pub(crate) fn end(&self) -> Vec<Message> {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.ended = true;
        std::mem::take(&mut q.messages)
    }

    /// Whether the hub has ended.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }
}
