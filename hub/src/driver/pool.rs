//! The blocking-pool driver: a hub's OS threads for work that would block
//! it, started on demand up to a maximum and ended when idle. It runs
//! jobs and counts them; a job reports its result itself (through the
//! cross-thread queue), so the pool knows nothing of tasks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::queue::lock;

/// A job for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

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
    pub(crate) fn submit(&self, job: Job) {
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
                .name("corostack-blocking".into())
                .spawn(move || worker(&inner));
            if let Err(e) = spawned {
                lock(&self.inner.state).threads -= 1;
                panic!("corostack::hub: cannot start a blocking thread: {e}");
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
