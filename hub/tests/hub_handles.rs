//! Issue 20, the hub's handles: each acts only on the hub that made it
//! (a `CallLater` from another hub panics), a `RemoteJoinHandle` joined on
//! the thread of the hub that runs its work is refused, the deadlock
//! detection and `Remote`s, a kill from outside the hub's greenlet, and
//! the end of a hub whose coroutines cannot finish. Each scenario that
//! hung or crashed before runs in a child process with a watchdog.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use corostack_hub as hub;
use hub_util::in_child;

/// The message of a caught panic.
fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A `CallLater` made by one hub, used in another: refused with a panic
/// naming the mistake, rather than acting on the other hub's timers.
#[test]
fn a_call_later_handle_used_in_another_hub_panics() {
    let stale = hub::run(|| hub::call_later(Duration::from_secs(60), || {}));
    hub::run(move || {
        // A timer of this hub, set like the first hub's.
        let mine = hub::call_later(Duration::from_secs(60), || {});
        for (what, r) in [
            (
                "cancel",
                panic::catch_unwind(AssertUnwindSafe(|| {
                    stale.cancel();
                })),
            ),
            (
                "is_pending",
                panic::catch_unwind(AssertUnwindSafe(|| {
                    stale.is_pending();
                })),
            ),
        ] {
            let p = r.expect_err(what);
            let m = message(&*p);
            assert!(m.contains("another hub"), "{what}: {m}");
        }
        assert!(mine.is_pending());
        assert!(mine.cancel());
    });
}

/// `RemoteJoinHandle::join` blocks the thread: on the thread of the hub
/// that runs the work (from one of its coroutines, or from a destructor
/// its loop runs) it could never return. Refused with a panic naming the
/// way out, instead of a hang.
#[test]
fn a_remote_join_on_the_hubs_own_thread_panics() {
    let run = in_child(
        "a_remote_join_on_the_hubs_own_thread_panics",
        Duration::from_secs(20),
        || {
            hub::run(|| {
                let work = hub::remote().spawn(|| 42);
                let p = panic::catch_unwind(AssertUnwindSafe(|| work.join()))
                    .expect_err("a join of the hub's own work");
                let m = message(&*p);
                assert!(m.contains("block_on"), "{m}");
            });
            // From a destructor that the loop runs at the end.
            struct JoinOnDrop(Option<hub::RemoteJoinHandle<i32>>);
            impl Drop for JoinOnDrop {
                fn drop(&mut self) {
                    let _ = self.0.take().unwrap().join();
                }
            }
            let p = panic::catch_unwind(|| {
                hub::run(|| {
                    let j = JoinOnDrop(Some(hub::remote().spawn(|| 1)));
                    hub::call_later(Duration::from_secs(60), move || drop(j));
                })
            })
            .expect_err("a join in a destructor of the loop");
            let m = message(&*p);
            assert!(m.contains("block_on"), "{m}");
            println!("ok");
        },
    );
    if let Some(run) = run {
        assert!(
            !run.hung && run.code == Some(0) && run.stdout.contains("ok"),
            "{run:?}"
        );
    }
}
