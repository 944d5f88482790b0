//! The fallible ways to start coroutines, for servers that must not panic
//! under memory pressure: `hub::try_spawn`, `Builder::try_run` and
//! `Builder::try_run_on_threads` return
//! `OutOfMemory` when no stack can be mapped (under a lowered
//! `RLIMIT_AS`, in a child process), drop the closure, and leave the hub
//! and the thread working; `spawn` and `run` panic saying so.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::io::ErrorKind;
use std::panic::{self, AssertUnwindSafe};

use corostack_hub as hub;
use hub_util::passes_in_child;
use util::{DropCounter, message};

/// This process's address space, in bytes.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Lowers the address-space limit to what the process uses now plus
/// `room` bytes (`None`: no limit).
fn limit_address_space(room: Option<usize>) {
    let rlim = libc::rlimit {
        rlim_cur: room.map_or(libc::RLIM_INFINITY, |r| {
            (vm_size() + r as u64) as libc::rlim_t
        }),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlim) }, 0);
}

/// Whether an address-space limit cannot be tried here: valgrind and
/// qemu-user manage the address space themselves, and a sanitizer's
/// shadow (terabytes reserved) would starve under it.
fn cannot_limit() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
        || util::emulated()
        || vm_size() > 1u64 << 40
}

#[test]
fn try_spawn_and_try_run_return_an_error_when_no_stack_can_be_mapped() {
    if cannot_limit() {
        return;
    }
    passes_in_child(
        "try_spawn_and_try_run_return_an_error_when_no_stack_can_be_mapped",
        || {
            let dropped = DropCounter::default();
            let d = dropped.clone();
            hub::run(move || {
                limit_address_space(Some(256 * 1024));
                let guard = d.guard();
                let err = hub::try_spawn(move || drop(guard))
                    .expect_err("a 1 MiB stack under a 256 KiB margin");
                assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
                assert_eq!(d.get(), 1, "the closure is dropped");
                let p = panic::catch_unwind(|| hub::spawn(|| ())).unwrap_err();
                assert!(
                    message(&*p).contains("cannot allocate a coroutine's stack"),
                    "{}",
                    message(&*p)
                );
                // Once memory is back, the same hub spawns again.
                limit_address_space(None);
                assert_eq!(hub::try_spawn(|| 2).unwrap().join().unwrap(), 2);
            });
            assert_eq!(dropped.get(), 1);
            // No pooled stack to reuse: the main coroutine needs a mapping.
            let cap = corostack::stack::set_pool_capacity(0);
            limit_address_space(Some(256 * 1024));
            let guard = dropped.guard();
            let err = hub::Builder::new()
                .try_run(move || drop(guard))
                .expect_err("a 1 MiB stack under a 256 KiB margin");
            assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
            assert!(err.to_string().contains("main coroutine"), "{err}");
            assert_eq!(dropped.get(), 2, "the closure is dropped");
            let p = panic::catch_unwind(AssertUnwindSafe(|| hub::run(|| ()))).unwrap_err();
            assert!(message(&*p).contains("main coroutine"), "{}", message(&*p));
            // Hubs on threads: a thread that cannot start (its stack is a
            // mapping too), or a hub that cannot.
            let err = hub::Builder::new()
                .threads(2)
                .try_run_on_threads(|i| i)
                .expect_err("no room for a thread's stack");
            assert!(err.to_string().contains("thread"), "{err}");
            let err = hub::Builder::new()
                .try_run_on_threads(|i| i)
                .expect_err("no room for the main coroutine's stack");
            assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
            let p = panic::catch_unwind(|| hub::Builder::new().threads(2).run_on_threads(|i| i));
            assert!(message(&*p.unwrap_err()).contains("cannot start a hub thread"));
            // The thread runs hubs again once memory is back.
            limit_address_space(None);
            corostack::stack::set_pool_capacity(cap);
            assert_eq!(hub::Builder::new().try_run(|| 3).unwrap(), 3);
            let ids = hub::Builder::new()
                .threads(3)
                .try_run_on_threads(|i| i * 10);
            assert_eq!(ids.unwrap(), [0, 10, 20]);
            assert!(!hub::is_in_hub());
        },
    );
}

#[test]
fn try_spawn_from_a_destructor_that_a_kill_runs_and_one_that_the_end_of_run_runs() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Spawns a coroutine when dropped, and keeps its handle.
    struct SpawnsOnDrop(Rc<RefCell<Option<hub::JoinHandle<&'static str>>>>);
    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            *self.0.borrow_mut() = Some(hub::try_spawn(|| "from a destructor").unwrap());
        }
    }

    let late = Rc::new(RefCell::new(None));
    let l = late.clone();
    hub::run(move || {
        // A kill's unwind runs the destructor in the victim's own resume.
        let spawned = Rc::new(RefCell::new(None));
        let s = spawned.clone();
        let victim = hub::spawn(move || {
            let _guard = SpawnsOnDrop(s);
            hub::sleep(Duration::from_secs(60));
        });
        hub::yield_now();
        victim.kill();
        assert!(victim.join().unwrap_err().is_killed());
        let h = spawned.borrow_mut().take().expect("the destructor ran");
        assert_eq!(h.join().unwrap(), "from a destructor");
        // The end of `run` kills this one; what its destructor spawns then
        // is killed at birth, and its handle says so.
        hub::spawn(move || {
            let _guard = SpawnsOnDrop(l);
            hub::sleep(Duration::from_secs(60));
        });
        hub::yield_now();
    });
    let h = late
        .borrow_mut()
        .take()
        .expect("the destructor ran at the end");
    assert!(h.done());
    // Joined in a later hub (a join needs one): the result is there at once.
    assert!(hub::run(move || h.join()).unwrap_err().is_killed());
}
