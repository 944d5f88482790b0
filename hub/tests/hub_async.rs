//! The hub and async code: `hub::block_on` awaiting futures whose wakers
//! are called from other threads and from the hub's own, and work handed
//! to a hub from outside (threads, tokio runtimes) and awaited as a future.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corostack_hub::{self as hub, JoinError, Remote};

#[test]
fn a_hub_coroutine_awaits_a_tokio_channel_fed_from_another_thread() {
    let n = util::scaled(200, 50);
    let (got, ticks, thread_saw_hub) = hub::run(move || {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(4);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            // Wait until a hub coroutine says the hub runs while the
            // receiver is parked in block_on.
            let saw = go_rx.recv_timeout(Duration::from_secs(20)).is_ok();
            for i in 0..n {
                tx.blocking_send(i).unwrap();
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            saw
        });
        let receiver = hub::spawn(move || {
            let mut got = Vec::new();
            while let Some(v) = hub::block_on(rx.recv()) {
                got.push(v);
            }
            got
        });
        let ticker = hub::spawn(move || {
            hub::yield_now();
            go_tx.send(()).unwrap();
            let mut ticks = 0;
            while !receiver_done() {
                ticks += 1;
                hub::sleep(Duration::from_millis(1));
                if ticks > 20_000 {
                    break;
                }
            }
            ticks
        });
        // The ticker stops when the receiver finishes.
        fn receiver_done() -> bool {
            DONE.with(|d| d.get())
        }
        thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        let got = receiver.join().unwrap();
        DONE.with(|d| d.set(true));
        (got, ticker.join().unwrap(), feeder.join().unwrap())
    });
    assert!(
        thread_saw_hub,
        "the hub ran other coroutines during block_on"
    );
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert!(ticks > 0);
}

#[test]
fn block_on_is_woken_from_the_hubs_own_thread() {
    hub::run(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
        let sender = hub::spawn(move || {
            hub::sleep(Duration::from_millis(2));
            tx.send("from a sibling").unwrap();
        });
        assert_eq!(hub::block_on(rx), Ok("from a sibling"));
        sender.join().unwrap();
        // A future that is ready at once, and one pending several times.
        assert_eq!(hub::block_on(async { 5 }), 5);
        let mut left = 3;
        let v = hub::block_on(std::future::poll_fn(|cx| {
            if left == 0 {
                return std::task::Poll::Ready("done");
            }
            left -= 1;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }));
        assert_eq!(v, "done");
    });
}

#[test]
fn a_timeout_around_block_on_drops_the_future() {
    hub::run(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let r = hub::timeout(Duration::from_millis(5), move || hub::block_on(rx));
        assert!(r.is_err());
        assert!(tx.is_closed(), "the pending receiver was dropped");
    });
}

/// Starts a hub on a new thread and hands back its remote; the hub runs
/// until `stop` is set.
fn hub_thread(stop: Arc<AtomicBool>) -> (Remote, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        hub::run(move || {
            tx.send(hub::remote()).unwrap();
            while !stop.load(Ordering::Acquire) {
                hub::sleep(Duration::from_millis(1));
            }
        })
    });
    (rx.recv().unwrap(), t)
}

#[test]
fn async_code_on_tokio_awaits_results_computed_on_a_hub() {
    let stop = Arc::new(AtomicBool::new(false));
    let (remote, hub_thread) = hub_thread(stop.clone());
    let n = util::scaled(200, 40);
    for flavor in ["current_thread", "multi_thread"] {
        let rt = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
        .unwrap();
        let remote = remote.clone();
        let sum: usize = rt.block_on(async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let r = remote.clone();
                    tokio::spawn(async move {
                        // The work suspends on the hub (sleep) like any
                        // coroutine.
                        r.spawn(move || {
                            hub::sleep(Duration::from_micros(100));
                            i * 2
                        })
                        .await
                        .unwrap()
                    })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, n * (n - 1), "{flavor}");
    }
    // Panics come back with their payload; blocking join works too.
    let err = remote
        .spawn(|| -> u8 { panic!("hub work failed") })
        .join()
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("hub work failed"));
    assert_eq!(remote.spawn(|| 3).join().unwrap(), 3);
    stop.store(true, Ordering::Release);
    hub_thread.join().unwrap();
    // The hub has ended: work is refused as killed.
    assert!(remote.is_closed());
    assert!(matches!(remote.spawn(|| 1).join(), Err(JoinError::Killed)));
}

#[test]
fn work_still_running_when_the_hub_ends_is_reported_killed() {
    let stop = Arc::new(AtomicBool::new(false));
    let (remote, hub_thread) = hub_thread(stop.clone());
    let pending = remote.spawn(|| hub::sleep(Duration::from_secs(3600)));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!pending.done());
    stop.store(true, Ordering::Release);
    hub_thread.join().unwrap();
    assert!(matches!(pending.join(), Err(JoinError::Killed)));
}
