//! The hub: a gevent-style cooperative scheduler on the corostack
//! coroutines of the [`corostack`] crate, built on its public API only.
//! Plain sequential code
//! runs in coroutines on one thread, and every [`sleep`], every socket
//! read or write of [`net`], every join or channel receive
//! switches to another ready coroutine by itself.
//!
//! ```
//! use std::time::Duration;
//! use corostack_hub as hub;
//!
//! let total = hub::run(|| {
//!     let workers: Vec<_> = (1..=3u64)
//!         .map(|i| {
//!             hub::spawn(move || {
//!                 hub::sleep(Duration::from_millis(i));
//!                 i * 100
//!             })
//!         })
//!         .collect();
//!     hub::join_all(workers).into_iter().map(Result::unwrap).sum::<u64>()
//! });
//! assert_eq!(total, 600);
//! ```
//!
//! # The model
//!
//! [`run`] starts a hub on the calling thread and runs its closure as the
//! *main* coroutine; [`spawn`] adds coroutines. Only one coroutine runs at
//! a time, and it runs until it suspends: in a sleep, a wait for a socket,
//! a join, a channel, a [`yield_now`]. So coroutines share data through
//! `Rc` and `RefCell` with no locks. A coroutine that computes for long
//! without suspending holds up all the others: give it to
//! [`spawn_blocking`].
//!
//! Ready coroutines run in the order they became ready; between runs of
//! ready coroutines the hub fires due timers and polls its sockets
//! (readiness from mio, edge-triggered), at least every 61 coroutine runs
//! so that busy coroutines cannot starve I/O. Timers with the same
//! deadline fire in the order they were set; the poller's sleep is
//! rounded up to whole milliseconds, so a sub-millisecond wait never spins.
//!
//! # Ending
//!
//! [`run`] returns when its closure returns. The coroutines still alive
//! then are killed, in spawn order: their stacks unwind (every destructor
//! on them runs, their sockets close) and their joiners see
//! [`JoinError::Killed`]; `run` waits for their destructors, which may
//! still sleep or do I/O, up to [`Builder::shutdown_timeout`], and panics
//! saying so if some never finish (see the [`Builder`] method): those are
//! leaked, and the thread aborts the process when it exits, before its
//! thread-locals are destroyed (see [Thread-locals](#thread-locals)). A
//! panic in the main closure is re-raised by `run` after that cleanup. A
//! panic in any other coroutine ends only that coroutine: its
//! [`JoinHandle::join`] returns [`JoinError::Panicked`] with the payload.
//! A detached coroutine (its handle dropped) drops its result when it
//! ends; a panic from that drop is kept and raised by `run` at its end.
//!
//! # Killing
//!
//! [`JoinHandle::kill`] unwinds the victim in an ordinary resume of its
//! own: its pending sleep, read or join raises a private payload, and its
//! destructors run as ordinary code that may itself sleep, write a goodbye
//! on a socket, `block_on`, spawn, join or kill. Called from a coroutine,
//! `kill` waits until the victim has finished (gevent's
//! `kill(block=True)`); from a destructor that the hub's loop runs, or
//! from a greenlet other than the hub's, it only asks. A kill is never
//! raised inside a destructor: a second kill while the first unwinds does
//! nothing, and a coroutine that kills itself from
//! a destructor of its own kill goes on unwinding. A coroutine may run
//! plain [`Coroutine`](corostack::Coroutine)s,
//! [`AsyncCoroutine`](corostack::bridge::AsyncCoroutine)s and
//! [`maybe_grow`](corostack::maybe_grow) and suspend inside them, and be killed
//! there; it may not suspend inside a
//! [`Greenlet`](corostack::greenlet::Greenlet) it started (that panics, naming
//! the way out).

//! # Deadlock
//!
//! When every coroutine waits (in joins, channels, events) and nothing is
//! left that could wake one — no timer, no registered socket, no
//! blocking job, no future awaited with [`block_on`](block_on()), no live [`Remote`]
//! — the hub does not sleep forever: the main coroutine's wait panics
//! with a message naming the deadlock (gevent's `LoopExit`), and [`run`]
//! unwinds the others and re-raises it. If the main coroutine cannot take
//! that panic because it is unwinding already (its destructors are the
//! ones waiting), `run` panics with the deadlock at once, leaking the
//! coroutines that cannot finish (see [`Builder::shutdown_timeout`]).
//!
//! What the hub cannot know is where a `Remote` is: it is `Send`, and
//! moves to another thread unseen. So every live `Remote` (a clone, one
//! kept in a coroutine, in a thread-local, in another thread) counts as a
//! way to wake the hub, and the hub waits for it rather than guess: a
//! `Remote` that only the hub's own coroutines keep makes a deadlock that
//! the hub cannot tell from a thread that will hand it work later. It
//! does not wait silently: once every coroutine has waited with only
//! `Remote`s left for a second, it says so on stderr (once per hub), with
//! their count. Drop a `Remote` that the hub's coroutines no longer need,
//! or hand it to the thread that uses it. From the end of `run` on,
//! `Remote`s no longer count (the work they send is refused).
//!
//! # Thread-locals
//!
//! The rule for users: **the destructors of a killed coroutine must
//! finish within [`Builder::shutdown_timeout`]** and wait for nothing that
//! cannot come, or the thread that ran the hub aborts the process when it
//! exits. And in the plain coroutines, generators and greenlets that a hub
//! coroutine runs itself, the core's rule for thread-locals holds (see
//! [`Coroutine`](corostack::Coroutine)'s threat model).
//!
//! Why: a coroutine that suspends inside `KEY.with(|d| ...)` keeps the
//! borrow `d` alive in its suspended frames, while `LocalKey::with` relies
//! on its closure ending before the thread does. A hub coroutine's frames
//! end when it returns or when its kill's unwind is over; the end of
//! [`run`] leaks those whose unwind does not finish (past the shutdown
//! timeout, or in a deadlock), and their frames never end. If such a
//! frame lent `d` to a scoped thread (`std::thread::scope`, whose scope
//! then never ends), `KEY`'s destructor would free the value under that
//! thread when the hub's thread exits. Rust has no sound story yet for
//! stack switching and thread-locals
//! ([rust-lang/unsafe-code-guidelines#602](https://github.com/rust-lang/unsafe-code-guidelines/issues/602)),
//! and the hub cannot see what a frame borrows, so it stops the thread
//! before that can happen:
//!
//! - a thread on which `run` leaked coroutines aborts the process when it
//!   exits, before the destructor of any thread-local that was in use at
//!   the leak (all those the leaked frames could borrow), with a message
//!   naming how many coroutines and why. A leak is so reported twice: by
//!   `run`'s panic, which the caller may catch and go on, and by the abort
//!   when the thread ends. (A thread that leaks a ninth time aborts at
//!   once.)
//! - a coroutine that finished holds no borrow: a `run` that leaks nothing
//!   leaves no hub coroutine behind, and its thread ends normally. (A
//!   plain coroutine that a hub coroutine suspended and forgot stays, as
//!   the core's rule says; the core's exit hook unwinds it at thread exit,
//!   and so a leaked hub coroutine, when a `corostack::thread_exit::rearm`
//!   after the leak puts the hook before the hub's abort. Their hub is
//!   gone by then: the hub's guards on their frames find that out and do
//!   nothing, and a wait in their destructors panics, which aborts the
//!   process there, since nothing could wake it.)
//! - `std::process::exit` called inside a hub: the hub stops before the
//!   core's exit hook unwinds its suspended coroutines (its loop never
//!   runs during the exit): as above, their destructors may not wait; one
//!   that does aborts the process instead of the exit. (Not yet after a
//!   `corostack::thread_exit::rearm` made inside the hub: the hook then
//!   runs first, and such a wait hangs the exit.)
//!
//! What remains: the abort also hits a leaked coroutine that borrowed
//! nothing; and the core's own remaining cases of its threat model, for
//! the core coroutines a hub coroutine runs itself (one that suspends
//! inside `KEY.with` and is then forgotten, or dropped by another
//! thread-local's destructor at thread exit).
//!
//! # Outside a hub
//!
//! Every function of this module, and every call that would suspend, panics
//! with a message naming `hub::run` when called outside a hub, rather than
//! blocking or hanging. On a thread that runs no hub, it reads
//! ``corostack::hub: `hub::sleep` was called outside a hub: run it inside
//! `corostack_hub::run` (or `hub::Builder::run`), on the hub's thread``
//! (with the function's name).
//!
//! A call that must run in one of the hub's coroutines (one that may
//! wait: a sleep, a socket or channel wait, a join, [`block_on`](block_on()),
//! [`spawn_blocking`], [`timeout`]) panics also when the hub's loop itself
//! makes it: in a destructor or callback that the loop runs outside its
//! coroutines (a [`call_later`] function that the end of `run` drops, or
//! that is given up for want of a stack; work handed over by a [`Remote`]
//! that got no stack; the closure of a [`try_spawn`] from the loop, or
//! `run`'s own, dropped for want of a stack; a later panic's payload that
//! the loop drops). Nothing could resume such a wait: the loop is the one
//! that would. It reads ``corostack::hub: `hub::sleep` was called from the
//! hub's loop (a destructor or callback that the loop ran), not from one
//! of its coroutines: only a coroutine can wait; spawn one (`hub::spawn`)
//! to do it, before `run` ends (the end of `run` kills what it spawns
//! before it starts)``. What the loop may do there: spawn (the new
//! coroutine does the waiting, unless `run` is ending), `call_later`, kill
//! (it only asks), and every call that does not wait. A socket's wait names the
//! method that waits (`TcpStream::read`, `UdpSocket::recv`, ...).
//!
//! # Threads
//!
//! A hub and its coroutines belong to one thread (the handles are neither
//! `Send` nor `Sync`), and each handle acts on the hub that made it only:
//! a [`CallLater`] used in a later hub panics, a [`JoinHandle`] or
//! [`KillHandle`] of an ended hub finds its coroutine finished. Other
//! threads reach a hub through a [`Remote`]: they hand it work and await
//! the result as a [`Future`] ([`RemoteJoinHandle::join`] blocks, and so
//! panics on the hub's own thread).
//! A hub coroutine awaits any future with [`block_on`](block_on()). For several cores,
//! [`Builder::run_on_threads`] runs one hub per thread, and
//! [`TcpListener::bind_reuseport`](crate::net::TcpListener::bind_reuseport)
//! lets their listeners share a port.
//!
//! # Names
//!
//! The core's rule (see the crate docs of [`corostack`]): where a
//! coroutine is in its life is asked with `started()` and `done()`
//! ([`JoinHandle`], [`KillHandle`], and `done()` on a
//! [`RemoteJoinHandle`]), beside the finer [`TaskState`]; every other
//! yes-or-no question is `is_*` ([`is_in_hub`], [`CallLater::is_pending`],
//! [`Remote::is_closed`], [`JoinError::is_panic`]). A query's answer is
//! all there is to it, so each is `#[must_use]`. The sockets keep std's
//! names, signatures and traits where std has them ([`net`]).
//!
//! # Layout
//!
//! Three layers, each importing only from those below it (no file
//! imports one above it, and no file reaches into another's fields):
//!
//! 1. **Leaves and drivers.** `task` (the states and outcomes of a task),
//!    `slab`, `prefetch` (a cache hint); `driver/`: `timers` (the ordered
//!    map of deadlines), `poller` (readiness: mio's poll, each source's
//!    flags and waiters), `queue` (the cross-thread queue and its waker),
//!    `pool` (the blocking threads). A driver owns its data and knows
//!    nothing of the scheduler's tasks nor of the user functions: what a
//!    timer does and who waits for a socket are type parameters.
//! 2. **The scheduler** (`scheduler/`): the tasks (each a
//!    [`Coroutine`](corostack::Coroutine), on the core's public API), the
//!    drivers it owns, the run loop, and the primitives the user functions
//!    build on (spawn, park, wake, kill); it explains why suspending from
//!    anywhere is sound and why the hub is built on `Coroutine`. Five
//!    files, layered in turn: `task` (the task record), `hub` (the hub's
//!    state and its wake-ups), `kill` (the park, kills and unwinding),
//!    `leak` (the tasks leaked at the end, kept until the thread exits),
//!    `run` (the loop and the end of `run`); they share the records'
//!    fields within the scheduler, and nothing outside it sees them.
//! 3. **The user functions**, on the scheduler: `lib.rs` ([`run`],
//!    [`spawn`], [`try_spawn`], [`join_all`]), `handle` ([`JoinHandle`], [`KillHandle`]),
//!    `timer` ([`sleep`], [`timeout`], [`call_later`]), `io`
//!    ([`wait_readable`], and the registration the sockets wait through),
//!    `block_on`, `remote` ([`Remote`]), `blocking` ([`spawn_blocking`]),
//!    `builder` ([`Builder`]); and beside them [`net`] (the sockets, on
//!    `io`) and [`sync`] (channels, events and semaphores).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_errors_doc,
    clippy::must_use_candidate
)]

// The hub runs on Unix only for now. Porting it to Windows takes: the
// poller's readiness from mio on Windows (its AFD-based IOCP backend works
// per socket, with no raw file descriptors), socket handles as
// `RawSocket`/`AsSocket` where `io.rs`, `net/tcp.rs` and `net/udp.rs` use
// `RawFd` and libc calls (socket2 offers both sides), the driver's waker
// without a pipe or eventfd (`mio::Waker`), and the test suite's Unix
// sockets, signals and `/proc` left out or given Windows counterparts.
#[cfg(not(unix))]
compile_error!(
    "corostack-hub runs on Unix only for now (its sockets and poller use file descriptors); \
     the core, corostack, runs on Windows"
);

mod block_on;
mod blocking;
mod builder;
mod driver;
mod handle;
pub(crate) mod io;
pub mod net;
mod prefetch;
mod remote;
pub(crate) mod scheduler;
mod slab;
pub mod sync;
pub(crate) mod task;
mod timer;

pub use block_on::block_on;
pub use blocking::spawn_blocking;
pub use builder::{Builder, DEFAULT_SHUTDOWN_TIMEOUT};
pub use handle::{JoinHandle, KillHandle};
pub use io::{wait_readable, wait_writable};
pub use remote::{Remote, RemoteJoinHandle, remote};
pub use task::{JoinError, PanicPayload, TaskState};
pub use timer::{CallLater, Elapsed, call_later, sleep, sleep_until, timeout, yield_now};

/// Runs a hub on the calling thread: runs `f` as its main coroutine,
/// drives every coroutine spawned meanwhile, and returns `f`'s value when
/// `f` returns. Coroutines still alive then are killed, and `run` waits
/// for their stacks to unwind (see [Ending](self#ending)).
///
/// `f` and its value must be `'static` (move what it needs into it): a
/// coroutine's closure lives on its own stack.
///
/// ```
/// let v = corostack_hub::run(|| "done");
/// assert_eq!(v, "done");
/// ```
///
/// # Panics
/// Inside a hub (a thread runs one hub at a time); when the poller cannot
/// be created; with `f`'s payload if `f` panics; else, once every
/// coroutine has finished, with the first panic of a destructor that the
/// hub ran for no caller (the result of a coroutine whose
/// [`JoinHandle`] was dropped, pending work dropped at the end, work that
/// the hub dropped because no stack could be mapped for it).
pub fn run<T: 'static>(f: impl FnOnce() -> T + 'static) -> T {
    Builder::new().run(f)
}

/// Spawns `f` as a new coroutine of this thread's hub (`gevent.spawn`). It
/// starts once the coroutines already ready have had their turn; the
/// handle joins it, reads its state, or kills it.
///
/// ```
/// use corostack_hub as hub;
///
/// hub::run(|| {
///     let h = hub::spawn(|| 2 + 2);
///     assert_eq!(h.state(), hub::TaskState::Pending);
///     assert_eq!(h.join().unwrap(), 4);
/// });
/// ```
///
/// # Panics
/// Outside a hub; when no stack can be mapped for it (see
/// [`try_spawn`]).
#[track_caller]
pub fn spawn<T: 'static>(f: impl FnOnce() -> T + 'static) -> JoinHandle<T> {
    JoinHandle::new(scheduler::hub("hub::spawn").spawn(f))
}

/// Spawns `f` as [`spawn`] does, but returns an error instead of
/// panicking when no stack can be mapped for it: for a server that must
/// not panic under memory pressure (it may refuse the connection, or wait
/// and try again). [`Builder::try_run`] starts a hub the same way.
///
/// ```
/// use corostack_hub as hub;
///
/// hub::run(|| -> std::io::Result<()> {
///     let h = hub::try_spawn(|| 2 + 2)?;
///     assert_eq!(h.join().unwrap(), 4);
///     Ok(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// When no stack can be mapped (`OutOfMemory`: the address space or the
/// memory map count is exhausted, see
/// [`DefaultStack::new`](corostack::DefaultStack::new)); `f` is dropped
/// then, and nothing was spawned.
///
/// # Panics
/// Outside a hub.
#[track_caller]
pub fn try_spawn<T: 'static>(f: impl FnOnce() -> T + 'static) -> std::io::Result<JoinHandle<T>> {
    scheduler::hub("hub::try_spawn")
        .try_spawn(f)
        .map(JoinHandle::new)
}

/// Waits for every coroutine of `handles` (`gevent.joinall`) and returns
/// their results in the same order.
///
/// ```
/// use corostack_hub as hub;
///
/// let results = hub::run(|| {
///     let ok = hub::spawn(|| 1);
///     let bad = hub::spawn(|| -> i32 { panic!("two") });
///     hub::join_all([ok, bad])
/// });
/// assert_eq!(results[0].as_ref().ok(), Some(&1));
/// assert_eq!(results[1].as_ref().unwrap_err().panic_message(), Some("two"));
/// ```
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
#[track_caller]
pub fn join_all<T>(handles: impl IntoIterator<Item = JoinHandle<T>>) -> Vec<Result<T, JoinError>> {
    handles.into_iter().map(JoinHandle::join).collect()
}

/// Whether the calling thread is running a hub (so that the functions of
/// this module work here).
///
/// ```
/// assert!(!corostack_hub::is_in_hub());
/// corostack_hub::run(|| assert!(corostack_hub::is_in_hub()));
/// ```
#[must_use]
pub fn is_in_hub() -> bool {
    scheduler::try_with_hub(|_| ()).is_some()
}

/// The hub's README examples, run as doc tests so that what it shows
/// compiles and works.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
