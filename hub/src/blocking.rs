//! [`spawn_blocking`]: a small pool of OS threads for work that would
//! block the hub (file I/O, DNS, heavy computation). The result comes back
//! through the hub's cross-thread queue, which wakes only the waiting
//! coroutine.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::remote::{Message, lock};
use super::scheduler;

/// A job for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// How long an idle pool thread waits for work before it exits.
const IDLE: Duration = Duration::from_secs(10);

/// A hub's pool of blocking threads, started on demand up to `max`.
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    state: Mutex<PoolState>,
    cv: Condvar,
    max: usize,
    /// Jobs submitted and not yet finished.
    in_flight: AtomicUsize,
}

struct PoolState {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    shut_down: bool,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                state: Mutex::new(PoolState {
                    jobs: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    shut_down: false,
                }),
                cv: Condvar::new(),
                max: max.max(1),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Queues `job`, starting a thread if none is idle and the pool is not
    /// full.
    fn submit(&self, job: Job) {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let start = {
            let mut s = lock(&self.inner.state);
            s.jobs.push_back(job);
            let start = s.idle == 0 && s.threads < self.inner.max;
            if start {
                s.threads += 1;
            }
            start
        };
        if start {
            let inner = self.inner.clone();
            let spawned = thread::Builder::new()
                .name("stackful-blocking".into())
                .spawn(move || worker(&inner));
            if let Err(e) = spawned {
                lock(&self.inner.state).threads -= 1;
                panic!("stackful::hub: cannot start a blocking thread: {e}");
            }
        } else {
            self.inner.cv.notify_one();
        }
    }

    /// How many jobs were submitted and have not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Lets the threads exit once the queue is empty. Jobs that are
    /// running finish on their own; their results find no hub.
    pub(crate) fn shut_down(&self) {
        let mut s = lock(&self.inner.state);
        s.shut_down = true;
        s.jobs.clear();
        drop(s);
        self.inner.cv.notify_all();
    }
}

/// A pool thread: runs jobs until shut down or idle for too long.
fn worker(inner: &PoolInner) {
    let mut s = lock(&inner.state);
    loop {
        if let Some(job) = s.jobs.pop_front() {
            drop(s);
            job();
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            s = lock(&inner.state);
            continue;
        }
        if s.shut_down {
            break;
        }
        s.idle += 1;
        let (guard, waited) = inner
            .cv
            .wait_timeout(s, IDLE)
            .unwrap_or_else(|e| e.into_inner());
        s = guard;
        s.idle -= 1;
        if waited.timed_out() && s.jobs.is_empty() {
            break;
        }
    }
    s.threads -= 1;
}

/// Runs `f` on one of the hub's blocking threads and waits for its value;
/// only the calling coroutine waits, the others run meanwhile.
///
/// The pool starts threads on demand, up to [`Builder::blocking_threads`]
/// (default 8); beyond that, jobs queue. If the calling coroutine is
/// killed or its [`timeout`](super::timeout) expires meanwhile, `f` still
/// runs to its end and its value is dropped.
///
/// ```
/// use stackful_hub as hub;
///
/// let n = hub::run(|| hub::spawn_blocking(|| std::fs::read_dir(".").unwrap().count()));
/// assert!(n > 0);
/// ```
///
/// [`Builder::blocking_threads`]: super::Builder::blocking_threads
///
/// # Panics
/// Outside a hub's coroutine; and with `f`'s payload if `f` panics.
#[track_caller]
pub fn spawn_blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let hub = scheduler::hub("hub::spawn_blocking");
    let task = hub.current_task();
    let (key, id) = (task.key.get(), task.id);
    // The result, and the park the coroutine is in (its generation), under
    // one lock: the job either sees the coroutine's latest park or the
    // coroutine sees the result before parking.
    let slot = Arc::new(Mutex::new((None, task.epoch.get())));
    let out = slot.clone();
    let shared = hub.shared.clone();
    hub.blocking.submit(Box::new(move || {
        let r = panic::catch_unwind(AssertUnwindSafe(f));
        let epoch = {
            let mut s = lock(&out);
            s.0 = Some(r);
            s.1
        };
        let _ = shared.send(Message::Wake { key, id, epoch });
    }));
    loop {
        {
            let mut s = lock(&slot);
            match s.0.take() {
                Some(Ok(v)) => return v,
                Some(Err(p)) => {
                    drop(s);
                    panic::resume_unwind(p)
                }
                None => s.1 = task.epoch.get(),
            }
        }
        scheduler::park(hub);
    }
}
