//! [`spawn_blocking`]: a small pool of OS threads for work that would
//! block the hub (file I/O, DNS, heavy computation). The result comes back
//! through the hub's cross-thread queue, which wakes only the waiting
//! coroutine.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::driver::queue::{Message, lock};
use crate::scheduler;

/// Runs `f` on one of the hub's blocking threads and waits for its value;
/// only the calling coroutine waits, the others run meanwhile.
///
/// The pool starts threads on demand, up to [`Builder::blocking_threads`]
/// (default 8); beyond that, jobs queue. If the calling coroutine is
/// killed or its [`timeout`](super::timeout) expires meanwhile, `f` still
/// runs to its end and its value is dropped.
///
/// ```
/// use corostack_hub as hub;
///
/// let n = hub::run(|| hub::spawn_blocking(|| std::fs::read_dir(".").unwrap().count()));
/// assert!(n > 0);
/// ```
///
/// [`Builder::blocking_threads`]: super::Builder::blocking_threads
///
/// # Panics
/// Outside a hub's coroutine: on a thread that runs no hub, and
/// from the hub's loop (a destructor or callback that it runs); [Outside a
/// hub](crate#outside-a-hub) has both messages.
/// With `f`'s payload if `f` panics.
#[track_caller]
pub fn spawn_blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let hub = scheduler::hub("hub::spawn_blocking");
    let task = hub.current_task("hub::spawn_blocking");
    let (key, id) = (task.key(), task.id());
    // The result, and the park the coroutine is in (its generation), under
    // one lock: the job either sees the coroutine's latest park or the
    // coroutine sees the result before parking.
    let slot = Arc::new(Mutex::new((None, task.epoch())));
    let out = slot.clone();
    let shared = hub.queue().clone();
    hub.submit_blocking(Box::new(move || {
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
                None => s.1 = task.epoch(),
            }
        }
        scheduler::park(hub, "hub::spawn_blocking");
    }
}
