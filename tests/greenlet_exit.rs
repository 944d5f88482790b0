//! Greenlets at thread exit: handles kept in thread-locals are dropped by
//! the thread-local destructors, in an order that depends on which
//! thread-local was first used when; none of those orders may abort the
//! process or free a stack with live frames. A suspended greenlet whose
//! last handle goes then is killed, its destructors run, as anywhere else:
//! the thread's greenlet state outlives every thread-local that can hold a
//! handle.
//!
//! Each case runs in a spawned thread inside a child process, since the
//! failure it guards against is an abort.

mod util;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use corostack::greenlet::{Greenlet, current};

/// Runs `case` in a thread of a child process playing `name` (the test's
/// own name), and asserts that the child exited cleanly.
fn in_child_thread(name: &str, case: fn()) {
    if util::child_role().as_deref() == Some(name) {
        std::thread::spawn(case).join().unwrap();
        // And once more, so that a second thread's exit is clean too.
        std::thread::spawn(case).join().unwrap();
        return;
    }
    // A main greenlet that a thread-local destructor makes after the
    // thread's own was freed is leaked by design (about 150 bytes a thread:
    // nothing runs after it to free it), which LeakSanitizer would report.
    let out = util::run_child_with(name, name, &util::leaks_allowed());
    assert!(
        out.status.success(),
        "the child running {name} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts drops across threads.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A started greenlet, suspended, holding a counted value on its stack.
fn suspended(drops: &Arc<AtomicUsize>) -> Greenlet<()> {
    let main = current::<()>();
    let c = Counted(drops.clone());
    let g = Greenlet::new(move |()| {
        let _c = c;
        main.switch(());
    });
    g.switch(());
    g
}

/// A greenlet that dies, so that the thread has sent a mail (which a
/// thread-local holds).
fn one_death() {
    assert_eq!(Greenlet::new(|x: u32| x + 1).switch(1), 2);
    let g = Greenlet::new(|()| ());
    g.kill();
}

thread_local! {
    static EARLY: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
    static LATE: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
    static BETWEEN: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
    static UNSTARTED: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
}

/// The thread-local is first used before any greenlet, so it is destroyed
/// after the crate's own thread-locals: the greenlets are killed anyway.
#[test]
fn a_suspended_greenlet_in_a_thread_local_used_before_the_crate_is_killed_at_exit() {
    in_child_thread(
        "a_suspended_greenlet_in_a_thread_local_used_before_the_crate_is_killed_at_exit",
        || {
            let drops = Arc::new(AtomicUsize::new(0));
            // Registered first, so destroyed last: it checks the others.
            CHECK.with(|c| *c.borrow_mut() = Some(ExpectDrops(drops.clone(), 2)));
            EARLY.with(|_| ());
            UNSTARTED.with(|_| ());
            one_death();
            let g = suspended(&drops);
            EARLY.with(|e| *e.borrow_mut() = Some(g));
            let c = Counted(drops.clone());
            UNSTARTED.with(|u| *u.borrow_mut() = Some(Greenlet::new(move |()| drop(c))));
            one_death();
        },
    );
}

/// The thread-local is first used after the greenlet state, so it is
/// destroyed before it: the greenlet is killed, its destructors run.
#[test]
fn a_suspended_greenlet_in_a_thread_local_used_after_the_crate_is_killed_at_exit() {
    in_child_thread(
        "a_suspended_greenlet_in_a_thread_local_used_after_the_crate_is_killed_at_exit",
        || {
            let drops = Arc::new(AtomicUsize::new(0));
            one_death();
            // Checked by a thread-local destroyed after LATE.
            CHECK.with(|c| *c.borrow_mut() = Some(ExpectDrops(drops.clone(), 1)));
            let g = suspended(&drops);
            LATE.with(|l| *l.borrow_mut() = Some(g));
        },
    );
}

/// The thread-local is first used after the main greenlet exists but
/// before the thread's first kill or death: destroyed between the crate's
/// own thread-locals.
#[test]
fn a_suspended_greenlet_in_a_thread_local_used_between_the_crates_own_is_killed_at_exit() {
    in_child_thread(
        "a_suspended_greenlet_in_a_thread_local_used_between_the_crates_own_is_killed_at_exit",
        || {
            let drops = Arc::new(AtomicUsize::new(0));
            CHECK.with(|c| *c.borrow_mut() = Some(ExpectDrops(drops.clone(), 1)));
            let g = suspended(&drops);
            BETWEEN.with(|b| *b.borrow_mut() = Some(g));
            one_death();
        },
    );
}

thread_local! {
    static CHECK: RefCell<Option<ExpectDrops>> = const { RefCell::new(None) };
    static LATE_USER: RefCell<Option<UsesGreenlets>> = const { RefCell::new(None) };
    static EARLY_USER: RefCell<Option<UsesGreenlets>> = const { RefCell::new(None) };
}

/// Asserts, when dropped, how many drops its counter saw.
struct ExpectDrops(Arc<AtomicUsize>, usize);

impl Drop for ExpectDrops {
    fn drop(&mut self) {
        let seen = self.0.load(Ordering::SeqCst);
        if seen != self.1 {
            eprintln!("expected {} drops at thread exit, saw {seen}", self.1);
            std::process::abort();
        }
    }
}

/// Creates, switches and kills greenlets in its destructor.
struct UsesGreenlets;

impl Drop for UsesGreenlets {
    fn drop(&mut self) {
        let drops = Arc::new(AtomicUsize::new(0));
        let main = current::<u32>();
        let c = Counted(drops.clone());
        let g = Greenlet::new(move |x: u32| {
            let _c = c;
            let y = main.switch(x + 1);
            y * 2
        });
        assert_eq!(g.switch(1), 2);
        let h = g.clone();
        assert_eq!(h.switch(5), 10);
        let k = suspended(&drops);
        k.kill();
        let leftover = suspended(&drops);
        drop(leftover);
        one_death();
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }
}

/// A thread-local destructor that uses greenlets, run after the crate's
/// own thread-locals are gone, and one run before.
#[test]
fn greenlets_work_in_thread_local_destructors_before_and_after_the_crates_own() {
    in_child_thread(
        "greenlets_work_in_thread_local_destructors_before_and_after_the_crates_own",
        || {
            EARLY_USER.with(|e| *e.borrow_mut() = Some(UsesGreenlets));
            one_death();
            let drops = Arc::new(AtomicUsize::new(0));
            let g = suspended(&drops);
            EARLY.with(|e| *e.borrow_mut() = Some(g));
            LATE_USER.with(|l| *l.borrow_mut() = Some(UsesGreenlets));
        },
    );
}

/// A thread whose first use of greenlets is in a thread-local destructor,
/// after the crate's own thread-locals would have been destroyed.
#[test]
fn greenlets_work_when_first_used_in_a_thread_local_destructor() {
    in_child_thread(
        "greenlets_work_when_first_used_in_a_thread_local_destructor",
        || EARLY_USER.with(|e| *e.borrow_mut() = Some(UsesGreenlets)),
    );
}

/// Without any greenlet left alive, the crate's own thread-locals are
/// destroyed first and then a thread-local destructor uses greenlets.
#[test]
fn greenlets_work_in_a_thread_local_destructor_after_the_main_greenlet_is_freed() {
    in_child_thread(
        "greenlets_work_in_a_thread_local_destructor_after_the_main_greenlet_is_freed",
        || {
            EARLY_USER.with(|e| *e.borrow_mut() = Some(UsesGreenlets));
            one_death();
        },
    );
}
