//! [`Builder`]: a hub's settings, and hubs on several threads.

use std::io;
use std::panic;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use corostack::stack::{DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE};

use crate::scheduler::{self, Config};

/// How long the end of `run` waits by default for the killed coroutines'
/// destructors (see [`Builder::shutdown_timeout`]).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for a hub: the stacks of its coroutines, its blocking pool,
/// and how many threads run a hub each.
///
/// ```
/// use corostack_hub as hub;
///
/// let v = hub::Builder::new()
///     .stack_size(64 * 1024)
///     .blocking_threads(2)
///     .run(|| hub::spawn(|| 1 + 1).join().unwrap());
/// assert_eq!(v, 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Builder {
    stack_size: usize,
    stack_cache: usize,
    blocking_threads: usize,
    shutdown_timeout: Option<Duration>,
    threads: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: stacks of [`DEFAULT_STACK_SIZE`] (1 MiB of address
    /// space, of which only touched pages cost memory), 1,024 free stacks
    /// kept by the hub for reuse, up to 8 blocking threads, one thread.
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn new() -> Builder {
        Builder {
            stack_size: DEFAULT_STACK_SIZE,
            stack_cache: 1024,
            blocking_threads: 8,
            shutdown_timeout: Some(DEFAULT_SHUTDOWN_TIMEOUT),
            threads: 1,
        }
    }

    /// The usable size of each coroutine's stack, rounded up to pages.
    /// Stacks come from the core's pool (see
    /// [`DefaultStack`](corostack::DefaultStack)) and go back to the hub's
    /// cache when a coroutine finishes.
    ///
    /// # Panics
    /// Outside [`MIN_STACK_SIZE`]..=[`MAX_STACK_SIZE`].
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        assert!(
            (MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&bytes),
            "corostack::hub: a stack size of {bytes} bytes is outside \
             MIN_STACK_SIZE..=MAX_STACK_SIZE ({MIN_STACK_SIZE}..={MAX_STACK_SIZE})"
        );
        self.stack_size = bytes;
        self
    }

    /// How many stacks of finished coroutines the hub keeps for new ones:
    /// while the hub runs, its thread's stack pool keeps at least this many
    /// (see [`set_pool_capacity`](corostack::stack::set_pool_capacity); the
    /// previous capacity comes back when the hub ends). A bigger cache
    /// makes bursts of short coroutines cheaper; a smaller one gives memory
    /// back sooner.
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn stack_cache(mut self, stacks: usize) -> Builder {
        self.stack_cache = stacks;
        self
    }

    /// The most threads the [`spawn_blocking`](super::spawn_blocking) pool
    /// starts (at least 1); they start on demand and exit after 10 s idle.
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn blocking_threads(mut self, threads: usize) -> Builder {
        self.blocking_threads = threads.max(1);
        self
    }

    /// How long the end of [`run`](super::run) waits for the coroutines it
    /// kills to finish unwinding (their destructors may sleep or do I/O),
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`] unless set; `None` waits as long as it
    /// takes. Past it, or as soon as nothing is left that could wake them
    /// (a deadlock), the coroutines still unwinding are leaked (their stacks
    /// stay mapped, the destructors left on them are not run by the hub) and `run`
    /// panics saying so, rather than hang (see
    /// [Ending](crate#ending) in the crate docs). Their frames may borrow the
    /// thread's thread-locals, so the thread that leaked them aborts the
    /// process when it exits, before those are destroyed, with a message
    /// naming the leak (see [Thread-locals](crate#thread-locals)): a leak
    /// is a bug to fix, which `run`'s panic reports first. Until then
    /// `std::thread::panicking()` stays true on that thread: std counts the
    /// leaked unwinds as the thread's own, and only their end would
    /// uncount them (so `run`'s panic, a panic during a panic for std,
    /// prints a full backtrace).
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn shutdown_timeout(mut self, timeout: Option<Duration>) -> Builder {
        self.shutdown_timeout = timeout;
        self
    }

    /// How many threads [`run_on_threads`](Builder::run_on_threads) runs
    /// a hub on (at least 1).
    #[must_use = "a Builder does nothing until its run or run_on_threads"]
    pub fn threads(mut self, threads: usize) -> Builder {
        self.threads = threads.max(1);
        self
    }

    /// Runs a hub with these settings on the calling thread until `f`
    /// returns (see [`run`](super::run)). The `threads` setting does not
    /// apply here.
    ///
    /// # Panics
    /// Inside a hub; when the hub cannot start (see
    /// [`try_run`](Builder::try_run)); with `f`'s payload if `f` panics.
    #[track_caller]
    pub fn run<T: 'static>(self, f: impl FnOnce() -> T + 'static) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("corostack::hub: {e}"),
        }
    }

    /// Runs a hub as [`run`](Builder::run) does, but returns an error
    /// instead of panicking when the hub cannot start: for a server that
    /// must not panic under memory pressure (with
    /// [`try_spawn`](crate::try_spawn) for its coroutines).
    ///
    /// ```
    /// let v = corostack_hub::Builder::new().try_run(|| 6 * 7)?;
    /// assert_eq!(v, 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// When the poller cannot be created (`epoll_create`, the waker's
    /// `eventfd`: out of descriptors), or no stack can be mapped for the
    /// main coroutine (`OutOfMemory`); `f` has not run then (it is
    /// dropped).
    ///
    /// # Panics
    /// Inside a hub; with `f`'s payload if `f` panics; as `run` does when
    /// the end of the hub leaks coroutines.
    pub fn try_run<T: 'static>(self, f: impl FnOnce() -> T + 'static) -> io::Result<T> {
        scheduler::run(
            Config::new(
                self.stack_size,
                self.stack_cache,
                self.blocking_threads,
                self.shutdown_timeout,
            ),
            f,
        )
    }

    /// Runs one hub on each of `threads` threads: the calling thread runs
    /// `f(0)` and new threads run `f(1)`, `f(2)`, ... Returns their values
    /// in that order once all have returned. Coroutines never move
    /// between threads; to share a port, each hub binds its own listener
    /// with [`TcpListener::bind_reuseport`](crate::net::TcpListener::bind_reuseport).
    ///
    /// ```
    /// let ids = corostack_hub::Builder::new()
    ///     .threads(2)
    ///     .run_on_threads(|i| corostack_hub::spawn(move || i * 10).join().unwrap());
    /// assert_eq!(ids, [0, 10]);
    /// ```
    ///
    /// # Panics
    /// When a thread or a hub cannot start (see
    /// [`try_run_on_threads`](Builder::try_run_on_threads)); with the
    /// first payload if any hub's `f` panics (after every thread has
    /// ended).
    #[track_caller]
    pub fn run_on_threads<T, F>(self, f: F) -> Vec<T>
    where
        F: Fn(usize) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        match self.try_run_on_threads(f) {
            Ok(v) => v,
            Err(e) => panic!("corostack::hub: {e}"),
        }
    }

    /// Runs one hub on each of `threads` threads as
    /// [`run_on_threads`](Builder::run_on_threads) does, but returns an
    /// error instead of panicking when a thread or a hub cannot start.
    ///
    /// ```
    /// let ids = corostack_hub::Builder::new()
    ///     .threads(3)
    ///     .try_run_on_threads(|i| i)?;
    /// assert_eq!(ids, [0, 1, 2]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first failure to start: of a thread (`pthread_create`, out of
    /// memory or of threads: the threads started before it run their hub
    /// to its end, and the calling thread starts none), or of a hub (see
    /// [`try_run`](Builder::try_run); the other hubs run to their end).
    ///
    /// # Panics
    /// With the first payload if any hub's `f` panics (after every thread
    /// has ended).
    pub fn try_run_on_threads<T, F>(self, f: F) -> io::Result<Vec<T>>
    where
        F: Fn(usize) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let mut others = Vec::with_capacity(self.threads - 1);
        let mut failed = None;
        for i in 1..self.threads {
            let f = f.clone();
            match thread::Builder::new()
                .name(format!("corostack-hub-{i}"))
                .spawn(move || self.try_run(move || f(i)))
            {
                Ok(t) => others.push(t),
                Err(e) => {
                    failed = Some(io::Error::new(
                        e.kind(),
                        format!("cannot start a hub thread: {e}"),
                    ));
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(self.threads);
        let mut panicked = None;
        if failed.is_none() {
            let g = f.clone();
            match panic::catch_unwind(panic::AssertUnwindSafe(|| self.try_run(move || g(0)))) {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => failed = Some(e),
                Err(p) => panicked = Some(p),
            }
        }
        for t in others {
            match t.join() {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(p) => {
                    panicked.get_or_insert(p);
                }
            }
        }
        if let Some(p) = panicked {
            panic::resume_unwind(p);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
