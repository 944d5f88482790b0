//! `corostack::bridge`: sync bodies that await futures, driven by tokio, by
//! `futures::executor` and by hand.

mod util;

use std::cell::{Cell, RefCell};
use std::future::{self, Future};
use std::panic::{self, AssertUnwindSafe};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use corostack::bridge::{AsyncCoroutine, AsyncYielder, SendAsyncCoroutine};
use corostack::{DefaultStack, SliceStack, Stack};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use util::{DropCounter, scaled};

/// A current-thread tokio runtime with timers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A future that stays pending until its gate is opened, counting polls
/// and keeping the last waker it was given.
#[derive(Default)]
struct Gate {
    open: Cell<bool>,
    polls: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl Gate {
    fn wait(self: &Rc<Self>) -> WaitGate {
        WaitGate(self.clone())
    }
    fn open(&self) {
        self.open.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct WaitGate(Rc<Gate>);

impl Future for WaitGate {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let g = &self.0;
        g.polls.set(g.polls.get() + 1);
        if g.open.get() {
            return Poll::Ready(g.polls.get());
        }
        *g.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Polls `fut` once with `waker`.
fn poll_with<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

/// The string in a panic payload.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The plain-code part of a body: a few nested calls, then a timer, a
/// channel and a yield to the scheduler, each awaited with block_on.
/// Returns the value received.
fn relay(
    y: &AsyncYielder,
    rx: &mut UnboundedReceiver<u64>,
    tx: &UnboundedSender<u64>,
    id: u64,
    depth: u32,
) -> u64 {
    if depth > 0 {
        let pad = std::hint::black_box([id as u8; 64]);
        let v = relay(y, rx, tx, id, depth - 1);
        std::hint::black_box(&pad);
        return v;
    }
    let nap = Duration::from_millis(1 + id % 4);
    let start = Instant::now();
    y.block_on(tokio::time::sleep(nap));
    assert!(start.elapsed() >= nap, "body {id}: the timer fired early");
    let v = y.block_on(rx.recv()).expect("the previous body sends");
    y.block_on(tokio::task::yield_now());
    tx.send(v + id).unwrap();
    v
}

#[test]
fn a_thousand_bodies_on_one_local_set_await_timers_and_channels() {
    let n = scaled(1000, 100) as u64;
    let local = tokio::task::LocalSet::new();
    let total = local.block_on(&runtime(), async move {
        let (first_tx, mut rx) = unbounded_channel::<u64>();
        let mut handles = Vec::new();
        // A chain: body i receives from body i - 1 and sends to body i + 1.
        for id in 0..n {
            let (tx, next_rx) = unbounded_channel::<u64>();
            let mut my_rx = std::mem::replace(&mut rx, next_rx);
            let body = AsyncCoroutine::new(move |y| relay(y, &mut my_rx, &tx, id, 5));
            handles.push(tokio::task::spawn_local(body));
        }
        // Let every body reach its first timer before the chain starts.
        tokio::task::yield_now().await;
        first_tx.send(0).unwrap();
        let total = rx.recv().await.unwrap();
        for (id, h) in handles.into_iter().enumerate() {
            // Body i received the sum of the ids before it.
            let id = id as u64;
            assert_eq!(h.await.unwrap(), id * id.saturating_sub(1) / 2);
        }
        total
    });
    assert_eq!(total, n * (n - 1) / 2);
}

#[test]
fn the_inner_future_gets_the_pollers_waker_and_no_extra_wakeups() {
    let (g1, g2) = (Rc::new(Gate::default()), Rc::new(Gate::default()));
    let (a, b) = (g1.clone(), g2.clone());
    let mut task = AsyncCoroutine::new(move |y| y.block_on(a.wait()) * 10 + y.block_on(b.wait()));
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let wakes = || counter.0.load(Ordering::SeqCst);

    assert_eq!(poll_with(&mut task, &waker), Poll::Pending);
    assert_eq!(
        (g1.polls.get(), wakes()),
        (1, 0),
        "pending, and nobody woke"
    );
    let registered = g1.waker.borrow().clone().expect("the gate kept a waker");
    assert!(
        registered.will_wake(&waker),
        "the inner future got the poller's waker"
    );

    g1.open();
    assert_eq!(wakes(), 1, "one wake-up, from the gate");
    assert_eq!(poll_with(&mut task, &waker), Poll::Pending);
    assert_eq!((g1.polls.get(), g2.polls.get(), wakes()), (2, 1, 1));
    assert!(g2.waker.borrow().as_ref().unwrap().will_wake(&waker));

    // A poll without a wake-up (a spurious one) polls the inner future once
    // more and stays pending, waking nobody.
    assert_eq!(poll_with(&mut task, &waker), Poll::Pending);
    assert_eq!((g2.polls.get(), wakes()), (2, 1));

    g2.open();
    assert_eq!(poll_with(&mut task, &waker), Poll::Ready(2 * 10 + 3));
    assert_eq!(wakes(), 2, "exactly the two wake-ups of the gates");
}

#[test]
fn a_ready_future_is_awaited_without_suspending() {
    let mut task = AsyncCoroutine::new(|y| {
        let mut sum = 0;
        for i in 0..100 {
            sum += y.block_on(future::ready(i));
        }
        sum
    });
    let counter = Arc::new(CountingWaker::default());
    assert_eq!(
        poll_with(&mut task, &Waker::from(counter.clone())),
        Poll::Ready(4950)
    );
    assert_eq!(counter.0.load(Ordering::SeqCst), 0);
}

/// A stack that records when it is dropped.
struct TrackedStack {
    inner: DefaultStack,
    freed: Rc<Cell<bool>>,
}

// SAFETY: delegates to a DefaultStack, which keeps the contract.
unsafe impl Stack for TrackedStack {
    fn top(&self) -> usize {
        self.inner.top()
    }
    fn limit(&self) -> usize {
        self.inner.limit()
    }
    fn guard_size(&self) -> usize {
        self.inner.guard_size()
    }
}

impl Drop for TrackedStack {
    fn drop(&mut self) {
        self.freed.set(true);
    }
}

/// Counts its drops, and whether the stack was already gone at the time.
struct Witness {
    drops: Rc<Cell<usize>>,
    freed: Rc<Cell<bool>>,
    late: Rc<Cell<usize>>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
        if self.freed.get() {
            self.late.set(self.late.get() + 1);
        }
    }
}

#[test]
fn dropping_a_suspended_body_unwinds_it_before_the_stack_is_freed() {
    let drops: Rc<Cell<usize>> = Rc::default();
    let freed: Rc<Cell<bool>> = Rc::default();
    let late: Rc<Cell<usize>> = Rc::default();
    let witness = {
        let (d, f, l) = (Rc::clone(&drops), Rc::clone(&freed), Rc::clone(&late));
        move || Witness {
            drops: d.clone(),
            freed: f.clone(),
            late: l.clone(),
        }
    };
    fn nested(y: &AsyncYielder, w: &dyn Fn() -> Witness, depth: u32) {
        let _mine = w();
        if depth == 0 {
            // The pending future owns a witness too.
            let guard = w();
            y.block_on(async move {
                let _guard = guard;
                future::pending::<()>().await
            });
            unreachable!("the future never completes");
        }
        nested(y, w, depth - 1);
    }
    let stack = TrackedStack {
        inner: DefaultStack::new(128 * 1024).unwrap(),
        freed: freed.clone(),
    };
    let mut task = AsyncCoroutine::with_stack(stack, move |y| nested(y, &witness, 9));
    assert_eq!(poll_with(&mut task, Waker::noop()), Poll::Pending);
    assert_eq!(drops.get(), 0);
    drop(task);
    assert_eq!(drops.get(), 10 + 1, "ten frames and the pending future");
    assert_eq!(late.get(), 0, "every destructor ran before the stack went");
    assert!(freed.get());
}

#[test]
fn aborting_a_tokio_task_drops_its_suspended_body() {
    let counter = DropCounter::default();
    let c = counter.clone();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime(), async move {
        let handle = tokio::task::spawn_local(AsyncCoroutine::new(move |y| {
            let _frame = c.guard();
            let timer = c.guard();
            y.block_on(async move {
                let _timer = timer;
                tokio::time::sleep(Duration::from_secs(3600)).await
            });
        }));
        tokio::task::yield_now().await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    });
    assert_eq!(counter.get(), 2);
}

#[test]
fn a_panic_in_the_body_reaches_the_poller_with_its_payload() {
    let id = std::hint::black_box(7);
    let mut task = AsyncCoroutine::new(move |y| {
        y.block_on(tokio::task::yield_now());
        if id == 7 {
            panic!("body {id} failed");
        }
    });
    // On tokio: the JoinError carries the payload.
    let local = tokio::task::LocalSet::new();
    let err = local
        .block_on(&runtime(), async { tokio::task::spawn_local(task).await })
        .unwrap_err();
    assert_eq!(message(&*err.into_panic()), "body 7 failed");

    // By hand: the poll itself panics, and the task is done.
    task = AsyncCoroutine::new(move |y| {
        y.block_on(tokio::task::yield_now());
        panic!("body {id} again");
    });
    let waker = Waker::noop();
    assert_eq!(poll_with(&mut task, waker), Poll::Pending);
    let err = panic::catch_unwind(AssertUnwindSafe(|| poll_with(&mut task, waker))).unwrap_err();
    assert_eq!(message(&*err), "body 7 again");
    assert!(task.done());
    let again = panic::catch_unwind(AssertUnwindSafe(|| poll_with(&mut task, waker))).unwrap_err();
    assert!(message(&*again).contains("after it completed"));
}

#[test]
fn a_panic_in_an_awaited_future_unwinds_the_body_to_the_poller() {
    let counter = DropCounter::default();
    let c = counter.clone();
    let mut task = AsyncCoroutine::new(move |y| {
        let _g = c.guard();
        let n = std::hint::black_box(3);
        y.block_on(async move { panic!("inner future {n}") })
    });
    let err =
        panic::catch_unwind(AssertUnwindSafe(|| poll_with(&mut task, Waker::noop()))).unwrap_err();
    assert_eq!(message(&*err), "inner future 3");
    assert_eq!(counter.get(), 1);
}

#[test]
fn polling_after_completion_panics() {
    let mut task = AsyncCoroutine::new(|_| 5);
    assert_eq!(poll_with(&mut task, Waker::noop()), Poll::Ready(5));
    let err =
        panic::catch_unwind(AssertUnwindSafe(|| poll_with(&mut task, Waker::noop()))).unwrap_err();
    assert!(message(&*err).contains("polled an AsyncCoroutine after it completed"));
}

#[test]
fn futures_executor_drives_a_body_fed_from_another_thread() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
    let feeder = thread::spawn(move || {
        for i in 1..=5 {
            thread::sleep(Duration::from_millis(2));
            tx.unbounded_send(i).unwrap();
        }
    });
    let task = AsyncCoroutine::new(move |y| {
        let mut rx = rx;
        let mut got = Vec::new();
        while let Some(v) = y.block_on(futures::StreamExt::next(&mut rx)) {
            got.push(v);
        }
        got
    });
    assert_eq!(futures::executor::block_on(task), [1, 2, 3, 4, 5]);
    feeder.join().unwrap();
}

/// Wakes a parked thread.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

#[test]
fn a_hand_written_poll_loop_drives_it() {
    let (tx, rx) = futures::channel::oneshot::channel::<&str>();
    // The feeder sends once the first poll has come back Pending (not after
    // a sleep, which a loaded machine under emulation may outlast).
    let (polled, first_poll_done) = std::sync::mpsc::channel::<()>();
    let feeder = thread::spawn(move || {
        first_poll_done.recv().unwrap();
        tx.send("fed").unwrap();
    });
    let task = AsyncCoroutine::new(move |y| format!("{} then {}", y.block_on(rx).unwrap(), 1));
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut task = pin!(task);
    let mut polls = 0;
    let out = loop {
        polls += 1;
        match task.as_mut().poll(&mut cx) {
            Poll::Ready(out) => break out,
            Poll::Pending => {
                if polls == 1 {
                    polled.send(()).unwrap();
                }
                thread::park()
            }
        }
    };
    assert_eq!(out, "fed then 1");
    assert!(polls >= 2, "the body waited for the feeder");
    feeder.join().unwrap();
}

#[test]
fn block_on_inside_a_future_that_block_on_polls_panics() {
    let mut task = AsyncCoroutine::new(|y| y.block_on(async { y.block_on(future::ready(1)) }));
    let err =
        panic::catch_unwind(AssertUnwindSafe(|| poll_with(&mut task, Waker::noop()))).unwrap_err();
    assert!(message(&*err).contains("from inside a future that block_on is polling"));
}

#[test]
fn async_coroutines_nest() {
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&runtime(), async {
        AsyncCoroutine::new(|y| {
            let inner = AsyncCoroutine::new(|y2| {
                y2.block_on(tokio::time::sleep(Duration::from_millis(2)));
                20
            });
            y.block_on(inner) + y.block_on(async { 22 })
        })
        .await
    });
    assert_eq!(out, 42);
}

#[test]
fn a_body_runs_on_a_slice_stack() {
    // SAFETY: the body's frames are a few KiB at most.
    let stack = unsafe { SliceStack::new(vec![0u8; 64 * 1024].into_boxed_slice()) };
    let (lo, hi) = (stack.limit(), stack.top());
    let local = tokio::task::LocalSet::new();
    let on_it = local.block_on(
        &runtime(),
        AsyncCoroutine::with_stack(stack, move |y| {
            y.block_on(tokio::time::sleep(Duration::from_millis(1)));
            let local = 0u8;
            let addr = &local as *const u8 as usize;
            lo <= addr && addr < hi
        }),
    );
    assert!(on_it);
}

#[test]
fn block_on_in_a_destructor_while_dropping_polls_without_a_waker() {
    struct AwaitsOnDrop<'a>(&'a AsyncYielder, Rc<Cell<u32>>);
    impl Drop for AwaitsOnDrop<'_> {
        fn drop(&mut self) {
            self.1.set(self.0.block_on(async { 9 }));
        }
    }
    let seen = Rc::new(Cell::new(0));
    let s = seen.clone();
    let mut task = AsyncCoroutine::new(move |y| {
        let _d = AwaitsOnDrop(y, s);
        y.block_on(future::pending::<()>());
    });
    assert_eq!(poll_with(&mut task, Waker::noop()), Poll::Pending);
    drop(task);
    assert_eq!(seen.get(), 9);
}

#[test]
fn the_send_form_moves_to_another_thread_while_suspended() {
    let (tx, rx) = futures::channel::oneshot::channel::<u32>();
    // SAFETY: across its block_on the body holds only a oneshot receiver
    // and a ThreadId, both Send, and relies on no thread-local.
    let mut task = unsafe {
        SendAsyncCoroutine::new(move |y| {
            let before = thread::current().id();
            let v = y.block_on(rx).unwrap();
            (before, thread::current().id(), v)
        })
    };
    assert_eq!(poll_with(&mut task, Waker::noop()), Poll::Pending);
    let here = thread::current().id();
    let (before, after, v) = thread::spawn(move || {
        tx.send(5).unwrap();
        futures::executor::block_on(task)
    })
    .join()
    .unwrap();
    assert_eq!((before, v), (here, 5));
    assert_ne!(after, here, "resumed on the other thread");
}

#[test]
fn the_send_form_runs_on_a_multi_threaded_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let n = scaled(200, 20) as u64;
    let total = rt.block_on(async move {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                // SAFETY: the body holds only integers across its block_on.
                tokio::spawn(unsafe {
                    SendAsyncCoroutine::new(move |y| {
                        for _ in 0..3 {
                            y.block_on(tokio::time::sleep(Duration::from_millis(1)));
                            y.block_on(tokio::task::yield_now());
                        }
                        i
                    })
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        total
    });
    assert_eq!(total, n * (n - 1) / 2);
}

/// Recurses through `maybe_grow`, awaiting a tokio yield every 1000 levels
/// (so the body suspends while running on grown stacks).
fn deep(y: &AsyncYielder, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    if n.is_multiple_of(1000) {
        y.block_on(tokio::task::yield_now());
    }
    corostack::maybe_grow(16 * 1024, 256 * 1024, || deep(y, n - 1) + 1)
}

#[test]
fn a_body_recurses_deeply_through_maybe_grow_and_awaits_on_grown_stacks() {
    let levels = scaled(100_000, 10_000);
    let local = tokio::task::LocalSet::new();
    let outs = local.block_on(&runtime(), async move {
        // Two bodies on small stacks, interleaved at every yield.
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let stack = DefaultStack::new(64 * 1024).unwrap();
                tokio::task::spawn_local(AsyncCoroutine::with_stack(stack, move |y| {
                    deep(y, levels)
                }))
            })
            .collect();
        let mut outs = Vec::new();
        for t in tasks {
            outs.push(t.await.unwrap());
        }
        outs
    });
    assert_eq!(outs, [levels, levels]);
}
