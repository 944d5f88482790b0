//! The hub itself: the per-thread state, the loop that runs ready
//! coroutines, fires timers and polls for I/O, and the primitives the rest
//! of the hub builds on (spawn, park, wake, kill).
//!
//! # How a coroutine suspends from anywhere
//!
//! A task is a [`Coroutine`](corostack::Coroutine) whose body runs the user's
//! closure. The body suspends from deep inside plain code (a `sleep`
//! three calls down), so the body's [`Yielder`](corostack::Yielder) must be
//! reachable without being passed around: the body stores its address in
//! its [`Task`] when it starts, and the hub keeps a pointer to the running
//! task in a thread-local while it resumes it. [`park`] suspends through
//! that pointer. This is sound because:
//! - the `Yielder` lives in the first frame of the task's own stack, from
//!   the body's start until the body returns, and the task owns that stack;
//! - the pointer is used only by code running for that task: `park` reads
//!   the *running* task's yielder, and the hub sets "running" exactly
//!   around each resume of that task, so the code calling `park` is that
//!   task's code (see the threat model below for the stacks it may be on);
//! - hub functions are not `Send`, and a task never moves to another
//!   thread: the thread-local names this thread's hub.
//!
//! Why a `Coroutine` rather than greenlets: a task step is one resume and
//! one suspend between the hub loop and the task, the cheapest switch the
//! core has, with no parent bookkeeping; the hub is always the one that
//! decides who runs next, which is the only switch pattern a scheduler
//! needs.
//!
//! # Threat model: which stacks run when
//!
//! A hub's thread runs, at any moment, exactly one of: the *loop* (the
//! stack that called [`run`](crate::run()), inside `run`), or one *task*, resumed by the
//! loop and nothing else. A task's code may itself run on a stack that is
//! not the task's own:
//! - a plain [`Coroutine`](corostack::Coroutine) (or a generator) that it
//!   resumed: suspending the task from there saves the nested coroutine's
//!   stack pointer in the task's link word, and the next resume of the task
//!   continues there, where the nested coroutine's own link still names
//!   the task's stack; nothing else refers to those stacks, so this works,
//!   and a kill raised there unwinds out of the nested coroutine (its entry
//!   hands the payload to its `resume`, which raises it again in the task);
//! - an [`AsyncCoroutine`](corostack::bridge::AsyncCoroutine) polled by
//!   [`block_on`](crate::block_on()): the same, one level deeper;
//! - [`on_stack`](corostack::on_stack) and [`maybe_grow`](corostack::maybe_grow):
//!   the borrowed stack lives in a frame of the task's stack, which the
//!   suspended task keeps; a kill unwinds out of it as any panic does;
//! - a [`Greenlet`](corostack::greenlet::Greenlet) the task started: the
//!   greenlet layer records the running greenlet and the stack pointers of
//!   the others in thread-locals that every task shares, so suspending the
//!   task there would leave another task running under the greenlet's
//!   identity (a later switch jumps to a stale stack). `park` compares
//!   [`running_id`](corostack::greenlet::running_id) with the one recorded when
//!   the hub started and refuses with a panic that names the way out: one
//!   thread-local read and a compare on the hot path. (A hub run *inside* a
//!   greenlet records that greenlet, and its tasks run in it.)
//!
//! The entry points, and the stacks they may be called on:
//! - **spawn**: any task, or the loop (a destructor it runs, a
//!   `call_later`, a `Remote`'s work): it only queues the new task. At the
//!   end of `run` a new task is killed at birth: its closure is dropped in
//!   its first resume, on its own stack.
//! - **park** (sleep, socket waits, join, channels, `block_on`, a kill's
//!   wait): a task, on its own stack or one of the stacks above; refused
//!   in a greenlet and in the loop ("outside a hub's coroutine").
//! - **kill**: a task (of the victim or of another), the loop, or another
//!   greenlet than the hub's (a hub run inside a greenlet: a task switched
//!   to the thread's main greenlet, which is not the task; `kill` compares
//!   `running_id` as `park` does, and only asks). See
//!   "Killing" in `kill.rs`.
//! - **join**: a task only (it parks); a task cannot join itself.
//! - **block_on**: a task only; the future's waker may run on any thread.
//! - **drop of a `JoinHandle`** (or a `KillHandle`): anywhere, even after
//!   the hub ended: it detaches and never suspends.
//! - **the end of `run`**: the loop, after the main task finished. See
//!   "The end of `run`" in `run.rs`.
//! - **the core's thread-exit hook**: it unwinds, in place, every
//!   suspended coroutine of the thread, forgotten ones included (a plain
//!   `Coroutine` a task suspended and forgot; a task leaked by the end of
//!   `run`, when a `rearm` puts the hook before the leak's abort), long
//!   after their hub's `run` returned, or inside `process::exit` called
//!   from a hub (which detaches the hub from the thread first: see
//!   `detach` in `hub.rs`). So nothing on a task's stack holds a
//!   reference to its hub across a suspend: guards keep the hub's id and
//!   reach it through the thread-local ([`with_hub_id`]), doing nothing
//!   once it is gone, and a park then finds no hub and panics.
//!
//! Lifetimes: every closure a hub runs on a stack of its own (`run`'s,
//! `spawn`'s, `call_later`'s, a `Remote`'s work) is `'static`, as are the
//! values they return, since the stack may outlive the caller's frame (a
//! detached task runs on). Handles (`JoinHandle`, `KillHandle`,
//! `CallLater`, sockets, channels) are `'static` types that are neither
//! `Send` nor `Sync`: they stay on the hub's thread, and may outlive the
//! hub (a finished task's handle still joins; a socket moves to the next
//! hub that waits on it; `CallLater` then panics outside its own hub, and
//! `kill` outside any hub).
//! Only [`Remote`](super::Remote) and its futures cross threads.
//!//!
//! # Files
//!
//! Five files, each importing only from those above it in this list:
//! - `task`: the task record ([`Task`], [`Waiter`], [`Slot`]);
//! - `hub`: the hub's state ([`Hub`]), the thread-local that names it,
//!   and the primitives that wake tasks and reach the drivers;
//! - `kill`: the park, kills and unwinding (what the hub raises, and when
//!   it may);
//! - `leak`: the tasks the end of `run` leaks, kept until their thread
//!   exits, which then aborts before its thread-locals die;
//! - `run`: the loop, spawning, finishing tasks, and the end of `run`.

mod hub;
mod kill;
mod leak;
mod run;
mod task;

pub(crate) use hub::{
    Action, Config, Hub, TimeoutUnwind, hub, hub_by_id, try_with_hub, with_hub_id,
};
pub(crate) use kill::{current_is_killed, park, park_until};
pub(crate) use run::run;
pub(crate) use task::{Slot, Task, Waiter};
