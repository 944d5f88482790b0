//! Greenlets re-entered from the destructors that a kill (or the drop of a
//! last handle) runs: every path through kill, drop, switch and a dying
//! greenlet's return either works as the module docs say or is refused
//! cleanly; none may let a killer return before its victim is dead (a
//! killer that returns early is freed while its victim still points at it).
//!
//! The cases that used to crash run in a child process (see
//! `util::run_child`), so that a regression fails one test instead of
//! killing the suite; each child runs its scenario and then checks its
//! outcome, so the parent only needs a clean exit.

mod util;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::greenlet::{Greenlet, current};
use util::DropCounter;

type Log = Rc<RefCell<Vec<String>>>;

fn push(log: &Log, line: impl Into<String>) {
    log.borrow_mut().push(line.into());
}

/// Runs `scenario` in a child process playing `name` (the test's own name),
/// and asserts that the child passed.
fn in_child(name: &str, scenario: impl FnOnce()) {
    in_child_with(name, &[], scenario);
}

/// [`in_child`], with more environment variables for the child.
fn in_child_with(name: &str, env: &[(&str, String)], scenario: impl FnOnce()) {
    if util::child_role().as_deref() == Some(name) {
        scenario();
        return;
    }
    let out = util::run_child_with(name, name, env);
    assert!(
        out.status.success(),
        "the child running {name} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills its greenlet when dropped, and logs what it saw.
struct KillOnDrop {
    target: Greenlet<()>,
    who: &'static str,
    log: Log,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.target.kill();
        push(
            &self.log,
            format!(
                "{}: kill returned, target dead {}",
                self.who,
                self.target.done()
            ),
        );
    }
}

/// Drops the handle it holds when dropped, and logs it.
struct DropOnDrop {
    handle: Option<Greenlet<()>>,
    who: &'static str,
    log: Log,
}

impl Drop for DropOnDrop {
    fn drop(&mut self) {
        drop(self.handle.take());
        push(&self.log, format!("{}: dropped the handle", self.who));
    }
}

/// The case: G1 kills G2, and a destructor in G2, run by that kill,
/// kills G1 while G1 waits for G2's death. G1 waits for G2, so G2's kill of
/// it does nothing (G1 is alive and G2 is dying by its hand); G1's kill
/// returns only once G2 is dead, and G1 then goes on.
#[test]
fn mutual_kill_from_a_destructor_leaves_the_killer_waiting_for_its_victim() {
    in_child(
        "mutual_kill_from_a_destructor_leaves_the_killer_waiting_for_its_victim",
        || {
            let log: Log = Log::default();
            let drops = DropCounter::default();
            let g2_slot: Rc<RefCell<Option<Greenlet<()>>>> = Rc::default();
            let (l, d, s) = (log.clone(), drops.clone(), g2_slot.clone());
            let g1 = Greenlet::new(move |()| {
                let _g1_guard = d.guard();
                let me = current::<()>();
                let (l2, d2) = (l.clone(), d.clone());
                let g2 = Greenlet::new(move |()| {
                    let _g2_guard = d2.guard();
                    let _k = KillOnDrop {
                        target: me,
                        who: "g2",
                        log: l2,
                    };
                    current::<()>().parent().unwrap().switch(());
                    unreachable!("g2 is killed while suspended");
                });
                g2.switch(());
                *s.borrow_mut() = Some(g2.clone());
                g2.kill();
                push(&l, format!("g1: kill returned, g2 dead {}", g2.done()));
            });
            g1.switch(());
            push(&log, "main");
            let g1_dead = g1.done();
            // G1 is freed; then G2 is killed again (it is dead: nothing to
            // do) and freed, before the checks.
            drop(g1);
            let g2 = g2_slot.borrow_mut().take().unwrap();
            g2.kill();
            drop(g2);
            assert!(g1_dead);
            assert_eq!(
                *log.borrow(),
                [
                    "g2: kill returned, target dead false",
                    "g1: kill returned, g2 dead true",
                    "main"
                ]
            );
            assert_eq!(drops.get(), 2, "each guard dropped once");
        },
    );
}

/// As above, but G2's destructor drops the last handle of G1 (which runs
/// on its own first frame): the drop cannot kill G1, which waits for G2, so
/// G1 lives on, finishes, and its return reaches its parent.
#[test]
fn dropping_the_killers_last_handle_from_the_victims_destructor_does_not_wake_it() {
    in_child(
        "dropping_the_killers_last_handle_from_the_victims_destructor_does_not_wake_it",
        || {
            let log: Log = Log::default();
            let drops = DropCounter::default();
            let g1_slot: Rc<RefCell<Option<Greenlet<()>>>> = Rc::default();
            let g2_slot: Rc<RefCell<Option<Greenlet<()>>>> = Rc::default();
            let (l, d, s2) = (log.clone(), drops.clone(), g2_slot.clone());
            let g1 = Greenlet::new(move |()| {
                let _g1_guard = d.guard();
                let g2 = s2.borrow_mut().take().unwrap();
                g2.kill();
                push(&l, format!("g1: kill returned, g2 dead {}", g2.done()));
            });
            let (l, d, s1) = (log.clone(), drops.clone(), g1_slot.clone());
            let g2 = Greenlet::new(move |()| {
                let _g2_guard = d.guard();
                let holder = DropOnDrop {
                    handle: s1.borrow_mut().take(),
                    who: "g2",
                    log: l,
                };
                // To G1, through the handle that only `holder` has now.
                holder.handle.as_ref().unwrap().switch(());
                unreachable!("g2 is killed while suspended");
            });
            *g1_slot.borrow_mut() = Some(g1);
            *g2_slot.borrow_mut() = Some(g2.clone());
            // main -> g2 -> g1, which kills g2; g2's destructor drops the
            // last handle of g1; g1 returns to main.
            g2.switch(());
            push(&log, "main");
            assert!(g2.done());
            assert_eq!(
                *log.borrow(),
                [
                    "g2: dropped the handle",
                    "g1: kill returned, g2 dead true",
                    "main"
                ]
            );
            drop(g2);
            assert_eq!(drops.get(), 2, "each guard dropped once");
        },
    );
}

/// A chain: G1 kills G2, whose destructor kills G3 (suspended), whose
/// destructors kill G2 and G1, both waiting (G1 for G2, G2 for G3). Those
/// kills do nothing; G3 dies, then G2, and only then does G1's kill return.
#[test]
fn a_kill_chain_that_kills_back_waits_for_each_victim_in_turn() {
    in_child(
        "a_kill_chain_that_kills_back_waits_for_each_victim_in_turn",
        || {
            let log: Log = Log::default();
            let drops = DropCounter::default();
            let (l, d) = (log.clone(), drops.clone());
            let g1 = Greenlet::new(move |()| {
                let _g1_guard = d.guard();
                let g1 = current::<()>();
                let (l2, d2) = (l.clone(), d.clone());
                let g2 = Greenlet::new(move |()| {
                    let _g2_guard = d2.guard();
                    let g2 = current::<()>();
                    let (l3, d3) = (l2.clone(), d2.clone());
                    let g3 = Greenlet::new(move |()| {
                        let _g3_guard = d3.guard();
                        let _k1 = KillOnDrop {
                            target: g1,
                            who: "g3 kills g1",
                            log: l3.clone(),
                        };
                        let _k2 = KillOnDrop {
                            target: g2,
                            who: "g3 kills g2",
                            log: l3,
                        };
                        current::<()>().parent().unwrap().switch(());
                        unreachable!("g3 is killed while suspended");
                    });
                    g3.switch(());
                    let _k3 = KillOnDrop {
                        target: g3,
                        who: "g2 kills g3",
                        log: l2,
                    };
                    current::<()>().parent().unwrap().switch(());
                    unreachable!("g2 is killed while suspended");
                });
                g2.switch(());
                g2.kill();
                push(&l, format!("g1: kill returned, g2 dead {}", g2.done()));
            });
            g1.switch(());
            push(&log, "main");
            let g1_dead = g1.done();
            // Everything is freed before the checks.
            drop(g1);
            assert!(g1_dead);
            assert_eq!(
                *log.borrow(),
                [
                    "g3 kills g2: kill returned, target dead false",
                    "g3 kills g1: kill returned, target dead false",
                    "g2 kills g3: kill returned, target dead true",
                    "g1: kill returned, g2 dead true",
                    "main",
                ]
            );
            assert_eq!(drops.get(), 3, "each guard dropped once");
        },
    );
}

/// Kills the running greenlet when dropped.
struct KillSelfOnDrop(Log);

impl Drop for KillSelfOnDrop {
    fn drop(&mut self) {
        let me = current::<()>();
        me.kill();
        push(&self.0, format!("self kill returned, dead {}", me.done()));
    }
}

/// A greenlet that is being killed and kills itself from a destructor: the
/// kill is already under way, so it does nothing (a panic there, during
/// the unwind, would abort the process).
#[test]
fn a_greenlet_being_killed_that_kills_itself_goes_on_dying() {
    in_child(
        "a_greenlet_being_killed_that_kills_itself_goes_on_dying",
        || {
            let log: Log = Log::default();
            let l = log.clone();
            let main = current::<()>();
            let g = Greenlet::new(move |()| {
                let _k = KillSelfOnDrop(l);
                main.switch(());
            });
            g.switch(());
            g.kill();
            assert!(g.done());
            assert_eq!(*log.borrow(), ["self kill returned, dead false"]);
            // Not being killed, the running greenlet still may not kill
            // itself: that is a plain panic, as documented.
            let g = Greenlet::new(|()| {
                let r = panic::catch_unwind(AssertUnwindSafe(|| current::<()>().kill()));
                assert!(r.is_err());
            });
            g.switch(());
            assert!(g.done());
        },
    );
}

/// The main greenlet kills G; G's destructor kills main, which waits for
/// G: nothing happens (the main greenlet cannot be killed at all, and a
/// panic there would abort the process).
#[test]
fn the_victim_killing_the_waiting_main_greenlet_does_nothing() {
    in_child(
        "the_victim_killing_the_waiting_main_greenlet_does_nothing",
        || {
            let log: Log = Log::default();
            let main = current::<()>();
            let (l, m) = (log.clone(), main.clone());
            let g = Greenlet::new(move |()| {
                let _k = KillOnDrop {
                    target: m.clone(),
                    who: "g kills main",
                    log: l,
                };
                m.switch(());
            });
            g.switch(());
            g.kill();
            assert!(g.done());
            assert_eq!(
                *log.borrow(),
                ["g kills main: kill returned, target dead false"]
            );
        },
    );
}

/// Tries to switch (and try_switch) to a greenlet when dropped, catching
/// the unwind that a killed greenlet's switch raises.
struct SwitchOnDrop {
    target: Greenlet<()>,
    log: Log,
}

impl Drop for SwitchOnDrop {
    fn drop(&mut self) {
        let s = panic::catch_unwind(AssertUnwindSafe(|| self.target.switch(())));
        let t = panic::catch_unwind(AssertUnwindSafe(|| self.target.try_switch(())));
        let plain = |e: &Box<dyn std::any::Any + Send>| e.is::<String>() || e.is::<&str>();
        push(
            &self.log,
            format!(
                "switch refused {} {}, try_switch refused {} {}",
                s.is_err(),
                s.as_ref().err().is_some_and(plain),
                t.is_err(),
                t.as_ref().err().is_some_and(plain),
            ),
        );
    }
}

/// A greenlet being killed cannot switch, not to its killer, not even to
/// itself (which would otherwise return at once): the
/// switch raises the kill's unwind again, which the destructor may catch;
/// the killer is not woken by it.
#[test]
fn a_destructor_run_by_a_kill_cannot_switch_to_the_killer_or_anywhere() {
    let log: Log = Log::default();
    let drops = DropCounter::default();
    let (l, d) = (log.clone(), drops.clone());
    let g1 = Greenlet::new(move |()| {
        let me = current::<()>();
        let other = Greenlet::new(|()| ());
        let (l2, d2) = (l.clone(), d.clone());
        let g2 = Greenlet::new(move |()| {
            let _guard = d2.guard();
            let _a = SwitchOnDrop {
                target: me,
                log: l2.clone(),
            };
            let _b = SwitchOnDrop {
                target: other,
                log: l2.clone(),
            };
            let _c = SwitchOnDrop {
                target: current::<()>(),
                log: l2,
            };
            current::<()>().parent().unwrap().switch(());
        });
        g2.switch(());
        g2.kill();
        push(&l, format!("g1: kill returned, g2 dead {}", g2.done()));
    });
    g1.switch(());
    assert!(g1.done());
    assert_eq!(
        *log.borrow(),
        [
            "switch refused true false, try_switch refused true false",
            "switch refused true false, try_switch refused true false",
            "switch refused true false, try_switch refused true false",
            "g1: kill returned, g2 dead true",
        ]
    );
    assert_eq!(drops.get(), 1);
}

/// A destructor run by a kill may create greenlets, kill them, drop them,
/// and re-parent them onto its killer; all of it works.
#[test]
fn a_destructor_run_by_a_kill_may_create_kill_drop_and_reparent_greenlets() {
    struct Busy {
        killer: Greenlet<()>,
        drops: DropCounter,
        log: Log,
    }
    impl Drop for Busy {
        fn drop(&mut self) {
            let g = self.drops.guard();
            let unstarted = Greenlet::new(move |()| drop(g));
            let g = self.drops.guard();
            let killed = Greenlet::new(move |()| drop(g));
            killed.kill();
            drop(unstarted);
            let g = self.drops.guard();
            let orphan = Greenlet::new(move |()| drop(g));
            orphan.set_parent(&self.killer).unwrap();
            push(
                &self.log,
                format!(
                    "busy: killed dead {}, orphan parent is killer {}",
                    killed.done(),
                    orphan.parent().unwrap() == self.killer
                ),
            );
            ORPHAN.with(|o| *o.borrow_mut() = Some(orphan));
        }
    }
    thread_local! {
        static ORPHAN: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
    }
    let log: Log = Log::default();
    let drops = DropCounter::default();
    let main = current::<()>();
    let (l, d) = (log.clone(), drops.clone());
    let g = Greenlet::new(move |()| {
        let _b = Busy {
            killer: main.clone(),
            drops: d,
            log: l,
        };
        main.switch(());
    });
    g.switch(());
    g.kill();
    assert_eq!(drops.get(), 2, "the unstarted and the killed closures");
    assert_eq!(
        *log.borrow(),
        ["busy: killed dead true, orphan parent is killer true"]
    );
    // The orphan, made inside the dead greenlet, returns to main.
    let orphan = ORPHAN.with(|o| o.borrow_mut().take()).unwrap();
    orphan.switch(());
    assert!(orphan.done());
    assert_eq!(drops.get(), 3);
}

/// A greenlet's return value lives on its stack until the receiver takes
/// it: with stack pooling off, that stack is unmapped once the greenlet is
/// dead, so the value must be taken first.
#[test]
fn a_return_value_is_taken_before_the_dead_greenlets_stack_is_freed() {
    in_child(
        "a_return_value_is_taken_before_the_dead_greenlets_stack_is_freed",
        || {
            let old = corostack::stack::set_pool_capacity(0);
            for i in 0..4u64 {
                // Returned to main (its parent), and passed to an unstarted
                // greenlet (made the parent) as its first input.
                let g = Greenlet::new(move |x: [u64; 8]| [x[0] + i; 8]);
                assert_eq!(g.switch([1; 8]), [1 + i; 8]);
                let p = Greenlet::new(|x: [u64; 8]| [x[7] * 2; 8]);
                let c = Greenlet::new(|x: [u64; 8]| [x[3] + 1; 8]);
                c.set_parent(&p).unwrap();
                assert_eq!(c.switch([i; 8]), [(i + 1) * 2; 8]);
            }
            corostack::stack::set_pool_capacity(old);
        },
    );
}

/// A greenlet killed while suspended inside a `Coroutine`'s body (which it
/// resumed) or inside `on_stack`: the unwind runs through the foreign
/// stack's frames, crosses back onto the greenlet's own, and every
/// destructor on both runs once.
#[test]
fn a_kill_unwinds_through_a_coroutine_or_on_stack_inside_the_greenlet() {
    use corostack::{Coroutine, DefaultStack};
    let drops = DropCounter::default();
    let main = current::<()>();
    let (d, m) = (drops.clone(), main.clone());
    let in_coroutine = Greenlet::new(move |()| {
        let _outer = d.guard();
        let (d2, m2) = (d.clone(), m.clone());
        let mut co = Coroutine::<(), (), ()>::new(move |_, ()| {
            let _inner = d2.guard();
            m2.switch(());
            unreachable!("killed while suspended");
        });
        co.resume(());
        unreachable!("killed while suspended");
    });
    in_coroutine.switch(());
    assert_eq!(drops.get(), 0);
    in_coroutine.kill();
    assert!(in_coroutine.done());
    assert_eq!(drops.get(), 2);

    let (d, m) = (drops.clone(), main.clone());
    let in_on_stack = Greenlet::new(move |()| {
        let _outer = d.guard();
        let stack = DefaultStack::new(256 * 1024).unwrap();
        let d2 = d.clone();
        corostack::on_stack(stack, move || {
            let _inner = d2.guard();
            m.switch(());
            unreachable!("killed while suspended");
        });
        unreachable!("killed while suspended");
    });
    in_on_stack.switch(());
    assert_eq!(drops.get(), 2);
    drop(in_on_stack);
    assert_eq!(drops.get(), 4);
}

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic::panic_any(String::from("drop panicked"));
    }
}

/// The panic of a destructor that a kill runs outside an unwind (an
/// unstarted greenlet's closure, dropped) reaches the killer, whose `kill`
/// panics with it; a killer that is unwinding already drops it instead (a
/// second panic there would abort).
#[test]
fn a_panic_in_a_killed_closure_reaches_the_killer_unless_it_is_unwinding() {
    let p = PanicOnDrop;
    let g = Greenlet::new(move |()| drop(p));
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.kill())).unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "drop panicked");
    assert!(g.done());

    // The killer unwinds (its own panic) when it drops the last handle.
    let p = PanicOnDrop;
    let victim = Greenlet::new(move |()| drop(p));
    let g = Greenlet::new(move |()| {
        let _v = victim;
        panic::panic_any(String::from("the killer's own panic"));
    });
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.switch(()))).unwrap_err();
    assert_eq!(
        err.downcast_ref::<String>().unwrap(),
        "the killer's own panic"
    );
    assert!(g.done());
}

/// A greenlet that drops its own last handle while it runs goes on; once
/// it switches away nothing can reach it, so it is leaked (its destructors
/// never run, its stack stays mapped), as `mem::forget` would.
#[test]
fn a_greenlet_that_drops_its_own_last_handle_and_leaves_is_leaked() {
    // In a child: the leak is the point, and LeakSanitizer must not see it.
    let name = "a_greenlet_that_drops_its_own_last_handle_and_leaves_is_leaked";
    in_child_with(name, &util::leaks_allowed(), leaked_greenlet);
}

fn leaked_greenlet() {
    let drops = DropCounter::default();
    let g_slot: Rc<RefCell<Option<Greenlet<()>>>> = Rc::default();
    let x_slot: Rc<RefCell<Option<Greenlet<()>>>> = Rc::default();
    let main = current::<()>();
    let (d, gs, xs, m) = (drops.clone(), g_slot.clone(), x_slot.clone(), main.clone());
    let g = Greenlet::new(move |()| {
        let _guard = d.guard();
        // Our handles: the slot's, and x's parent link. Both go.
        xs.borrow().as_ref().unwrap().set_parent(&m).unwrap();
        drop(gs.borrow_mut().take());
        m.switch(());
        unreachable!("nothing can switch back");
    });
    // x returns into g, its parent, which starts with x's value.
    let x = Greenlet::new(|()| ());
    x.set_parent(&g).unwrap();
    *g_slot.borrow_mut() = Some(g);
    *x_slot.borrow_mut() = Some(x.clone());
    x.switch(());
    assert!(x.done());
    assert!(g_slot.borrow().is_none());
    assert_eq!(drops.get(), 0, "leaked: its guard is never dropped");
    // Everything else goes on as usual.
    let h = Greenlet::new(|v: u8| v + 1);
    assert_eq!(h.switch(1), 2);
}
