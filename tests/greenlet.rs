//! Greenlets and generators: every rule of the module docs, the example
//! programs, and random switch graphs.

mod util;

#[path = "../examples/baozi.rs"]
mod baozi;
#[path = "../examples/greenlet.rs"]
mod greenlet_example;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::greenlet::{Greenlet, SwitchError, current};
use corostack::{Generator, Yielder};
use proptest::prelude::*;
use util::{DropCounter, capture};

#[test]
fn the_greenlet_example_prints_12_56_34_78() {
    let lines = capture(|emit| greenlet_example::run(move |l| emit(l)));
    assert_eq!(lines, ["12", "56", "34", "78"]);
}

#[test]
fn the_baozi_example_prints_the_seeds_output() {
    let lines = capture(|emit| baozi::run(move |l| emit(l)));
    let mut expected = vec!["--->starting eating baozi...".to_string(); 2];
    for n in 1..=5 {
        expected.push(format!("[c1] is eating baozi {n}"));
        expected.push(format!("[c2] is eating baozi {n}"));
        expected.push(format!("[producer] is making baozi {n}"));
    }
    assert_eq!(lines, expected);
}

#[test]
fn values_pass_both_ways() {
    let main = current::<i32>();
    let g = Greenlet::new(move |a: i32| {
        let b = main.switch(a * 2);
        let c = main.switch(b * 3);
        c * 5
    });
    assert!(!g.started());
    assert_eq!(g.switch(1), 2);
    assert!(g.started() && !g.done());
    assert_eq!(g.switch(10), 30);
    assert_eq!(g.switch(7), 35);
    assert!(g.done());
}

#[test]
fn a_return_value_goes_to_the_parent() {
    // main creates outer; outer creates inner (inner's parent is outer).
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let outer = Greenlet::new(move |x: u32| {
        let inner = Greenlet::new(|y: u32| y + 100);
        assert_eq!(inner.parent().unwrap(), current::<u32>());
        // inner returns into its parent: this switch returns its value.
        let from_inner = inner.switch(x);
        l.borrow_mut().push(from_inner);
        from_inner + 1
    });
    assert!(outer.parent().unwrap().is_main());
    assert_eq!(outer.switch(1), 102);
    assert_eq!(*log.borrow(), [101]);
}

#[test]
fn a_dead_parent_hands_the_value_on_to_its_parent() {
    let child_slot: Rc<RefCell<Option<Greenlet<u32>>>> = Rc::default();
    let slot = child_slot.clone();
    let parent = Greenlet::new(move |x: u32| {
        // The child's parent is this greenlet, which returns at once.
        *slot.borrow_mut() = Some(Greenlet::new(|y: u32| y * 2));
        x
    });
    assert_eq!(parent.switch(5), 5);
    assert!(parent.done());
    let child = child_slot.borrow_mut().take().unwrap();
    // The child's return skips its dead parent and reaches main.
    assert_eq!(child.switch(21), 42);
}

#[test]
fn a_panic_goes_to_the_parent_with_its_payload() {
    let g = Greenlet::new(|_: u8| -> u8 { panic::panic_any(String::from("boom in greenlet")) });
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.switch(0))).unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "boom in greenlet");
    assert!(g.done());
    // Panic of a grandchild whose parent died: reaches main.
    let slot: Rc<RefCell<Option<Greenlet<u8>>>> = Rc::default();
    let s = slot.clone();
    let p = Greenlet::new(move |x: u8| {
        *s.borrow_mut() = Some(Greenlet::new(|_: u8| -> u8 { panic!("grandchild") }));
        x
    });
    p.switch(1);
    let child = slot.borrow_mut().take().unwrap();
    let err = panic::catch_unwind(AssertUnwindSafe(|| child.switch(0))).unwrap_err();
    assert_eq!(*err.downcast_ref::<&str>().unwrap(), "grandchild");
}

#[test]
fn kill_unwinds_the_stack_and_returns() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let main = current::<()>();
    let reached_end = Rc::new(RefCell::new(false));
    let r = reached_end.clone();
    let g = Greenlet::new(move |()| {
        let _a = d.guard();
        let _b = d.guard();
        main.switch(());
        *r.borrow_mut() = true;
    });
    g.switch(());
    assert_eq!(drops.get(), 0);
    g.kill();
    assert_eq!(drops.get(), 2, "both guards on the greenlet's stack");
    assert!(g.done());
    assert!(!*reached_end.borrow());
    g.kill(); // killing a dead greenlet does nothing
    let err = g.try_switch(()).unwrap_err();
    assert!(matches!(err, SwitchError::Dead(())));
    assert!(err.to_string().contains("dead greenlet"), "{err}");
}

/// A handle remembers the gate of the last switch it made, so that the
/// next one compares two addresses; once the target waits for another
/// type, a switch of the old type must still be refused.
#[test]
fn a_remembered_gate_does_not_let_a_switch_of_the_old_type_through() {
    let main = current::<u32>();
    let back = main.clone();
    let h = Greenlet::new(move |_s: String| {
        back.switch(7);
        String::new()
    });
    let g = Greenlet::new(move |x: u32| {
        let y = main.switch(x + 1); // g waits for a u32
        h.switch(format!("{y}")); // g waits for a String
        0
    });
    assert_eq!(g.switch(1), 2);
    assert_eq!(g.switch(5), 7, "g went on to h, which came back here");
    match g.try_switch(3) {
        Err(SwitchError::WrongType { value, expected }) => {
            assert_eq!(value, 3);
            assert!(expected.contains("String"), "{expected}");
        }
        other => panic!(
            "expected a type mismatch, got {:?}",
            other.map_err(|e| e.to_string())
        ),
    }
}

#[test]
fn dropping_the_last_handle_kills_a_suspended_greenlet() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let main = current::<()>();
    let g = Greenlet::new(move |()| {
        let _a = d.guard();
        main.switch(());
    });
    g.switch(());
    let g2 = g.clone();
    drop(g);
    assert_eq!(drops.get(), 0, "a handle is still alive");
    drop(g2);
    assert_eq!(drops.get(), 1);
    // An unstarted greenlet: its closure is dropped.
    let guard = drops.guard();
    let unstarted = Greenlet::new(move |()| drop(guard));
    drop(unstarted);
    assert_eq!(drops.get(), 2);
}

#[test]
fn a_killed_greenlet_that_catches_the_unwind_cannot_switch_again() {
    let main = current::<u32>();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let g = Greenlet::new(move |_: u32| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| main.switch(1)));
        l.borrow_mut().push(format!("caught {}", caught.is_err()));
        let again = panic::catch_unwind(AssertUnwindSafe(|| main.switch(2)));
        l.borrow_mut().push(format!("again {}", again.is_err()));
        3
    });
    assert_eq!(g.switch(0), 1);
    g.kill();
    assert!(g.done());
    assert_eq!(*log.borrow(), ["caught true", "again true"]);
}

/// A killed greenlet that kills another while it unwinds (a destructor
/// drops the last handle of a suspended one) comes back from that kill
/// still killed: a switch it tries afterwards panics, even to a target its
/// handle has switched to before (whose gate the handle remembers).
#[test]
fn a_killed_greenlet_stays_killed_after_killing_another_while_unwinding() {
    struct Guard {
        victim: Option<Greenlet<()>>,
        other: Greenlet<()>,
        log: Rc<RefCell<Vec<String>>>,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            drop(self.victim.take()); // kills the victim from here
            let switched = panic::catch_unwind(AssertUnwindSafe(|| self.other.switch(())));
            self.log
                .borrow_mut()
                .push(format!("switch refused {}", switched.is_err()));
        }
    }
    let main = current::<()>();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let g = Greenlet::new(move |()| {
        let me = current::<()>();
        let me2 = me.clone();
        let victim = Greenlet::new(move |()| me.switch(()));
        victim.switch(());
        let other = Greenlet::new(move |()| {
            loop {
                me2.switch(());
            }
        });
        // Twice, so that the handle remembers the gate `other` waits at.
        other.switch(());
        other.switch(());
        let _guard = Guard {
            victim: Some(victim),
            other,
            log: l,
        };
        main.switch(());
    });
    g.switch(());
    g.kill();
    assert!(g.done());
    assert_eq!(*log.borrow(), ["switch refused true"]);
}

#[test]
fn set_parent_refuses_a_cycle() {
    let a = Greenlet::new(|x: u8| x);
    let b = Greenlet::new(|x: u8| x);
    b.set_parent(&a).unwrap();
    let err = a.set_parent(&b).unwrap_err();
    assert!(matches!(err, SwitchError::Cycle));
    assert!(err.to_string().contains("own ancestor"));
    assert!(a.set_parent(&a).is_err());
    // b's return now goes to a, which starts with it and returns it to main.
    assert_eq!(b.switch(9), 9);
    assert!(a.done() && b.done());
}

#[test]
fn a_type_mismatch_is_reported() {
    let r = Greenlet::new(|()| {
        // Main waits in `r.switch(())`, for a (): a u32 is refused, and
        // comes back in the error.
        let main_as_u32 = current::<u32>().parent().unwrap();
        let err = main_as_u32.try_switch(5).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SwitchError::WrongType { value: 5, .. }),
            "{msg}"
        );
        assert!(msg.contains("waits for a ()"), "{msg}");
    });
    r.switch(());
    assert!(r.done());
}

#[test]
fn a_return_value_of_the_wrong_type_for_the_parent_panics_there() {
    let slot: Rc<RefCell<Option<Greenlet<u8>>>> = Rc::default();
    let s = slot.clone();
    let main = current::<String>();
    let p = Greenlet::new(move |_: String| {
        // The child's parent is p, which then waits for a String.
        *s.borrow_mut() = Some(Greenlet::new(|x: u8| x));
        main.switch("made".into())
    });
    assert_eq!(p.switch(String::new()), "made");
    let child = slot.borrow_mut().take().unwrap();
    // The child returns a u8 into p, which waits for a String: p's switch
    // panics, p dies of it, and the panic reaches p's parent, main.
    let err = panic::catch_unwind(AssertUnwindSafe(|| child.switch(1))).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("return value went to its parent"), "{msg}");
    assert!(msg.contains("waits for a alloc::string::String"), "{msg}");
    assert!(child.done() && p.done());
}

#[test]
fn main_cannot_be_killed_and_a_greenlet_cannot_kill_itself() {
    let main = current::<()>();
    let err = panic::catch_unwind(AssertUnwindSafe(|| main.kill())).unwrap_err();
    assert!(
        err.downcast_ref::<&str>()
            .unwrap()
            .contains("cannot kill itself")
    );
    let g = Greenlet::new(|()| {
        let me = current::<()>();
        let e = panic::catch_unwind(AssertUnwindSafe(|| me.kill())).unwrap_err();
        assert!(
            e.downcast_ref::<&str>()
                .unwrap()
                .contains("cannot kill itself")
        );
    });
    g.switch(());
    assert!(g.done());
}

#[inline(never)]
fn greenlet_backtrace_marker() -> String {
    let g = Greenlet::new(|()| {
        let inner = Greenlet::new(|()| {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            // Hand the text out through a thread-local: greenlets pass ().
            LAST_BT.with(|b| *b.borrow_mut() = bt);
        });
        inner.switch(());
    });
    g.switch(());
    LAST_BT.with(|b| b.take())
}

thread_local! {
    static LAST_BT: RefCell<String> = const { RefCell::new(String::new()) };
}

#[test]
fn a_backtrace_inside_a_greenlet_reaches_the_switchers() {
    let bt = greenlet_backtrace_marker();
    assert_eq!(bt.matches("trampoline").count(), 2, "{bt}");
    assert!(bt.contains("greenlet_backtrace_marker"), "{bt}");
    assert!(
        bt.contains("a_backtrace_inside_a_greenlet_reaches_the_switchers"),
        "{bt}"
    );
}

#[test]
fn a_generator_closes_early_when_dropped() {
    let drops = DropCounter::default();
    let d = drops.clone();
    let mut g: Generator<Option<u32>, u32> =
        Generator::new(move |y: &Yielder<Option<u32>, u32>| {
            let _guard = d.guard();
            let mut total = 0;
            loop {
                if let Some(v) = y.suspend(total) {
                    total += v;
                }
            }
        });
    assert_eq!(g.next(), Some(0)); // primes
    assert_eq!(g.send(Some(5)), Some(5));
    assert_eq!(g.next(), Some(5)); // next sends None
    assert_eq!(g.send(Some(2)), Some(7));
    drop(g);
    assert_eq!(drops.get(), 1);
    // A finite generator ends its iteration and stays ended.
    let mut three = Generator::<(), u8>::new(|y| (0..3).for_each(|i| y.suspend(i)));
    assert_eq!(three.by_ref().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(three.done());
    assert_eq!(three.next(), None);
}

/// One step of a random switch script: switch to greenlet `to` (0 is the
/// main greenlet) passing `value`.
#[derive(Debug, Clone, Copy)]
struct Hop {
    to: usize,
    value: u64,
}

/// Shared by every participant of a scripted run.
struct Script {
    hops: Vec<Hop>,
    next: usize,
    log: Vec<(usize, u64)>,
    handles: Vec<Greenlet<u64>>,
}

const END: u64 = u64::MAX;

/// What a participant does each time it gets control: log what it got,
/// then make the next hop (or end the run by switching to main).
fn play(me: usize, script: &Rc<RefCell<Script>>, mut got: u64) {
    loop {
        let (target, value) = {
            let mut s = script.borrow_mut();
            if got == END {
                return;
            }
            s.log.push((me, got));
            match s.hops.get(s.next).copied() {
                Some(hop) => {
                    s.next += 1;
                    (s.handles[hop.to].clone(), hop.value)
                }
                None if me == 0 => return,
                None => (s.handles[0].clone(), END),
            }
        };
        got = target.switch(value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 16 } else { 128 }))]

    /// Random switch graphs among N greenlets: every value arrives where
    /// the script says, in order, and every greenlet is freed afterwards.
    #[test]
    fn random_switch_graphs_deliver_every_value(
        n in 1usize..6,
        raw in prop::collection::vec((0usize..6, 0u64..1000), 1..80),
    ) {
        let hops: Vec<Hop> = raw.iter().map(|&(to, value)| Hop { to: to % (n + 1), value }).collect();
        let script = Rc::new(RefCell::new(Script {
            hops: hops.clone(), next: 1, log: Vec::new(), handles: vec![current::<u64>()],
        }));
        let drops = DropCounter::default();
        for id in 1..=n {
            let s = script.clone();
            let guard = drops.guard();
            let g = Greenlet::new(move |first: u64| {
                let _guard = guard;
                play(id, &s, first);
                END
            });
            script.borrow_mut().handles.push(g);
        }
        // Main makes the first hop, then plays like everyone else.
        let first = script.borrow().handles[hops[0].to].clone();
        let got = first.switch(hops[0].value);
        drop(first);
        play(0, &script, got);
        let expected: Vec<(usize, u64)> = hops.iter().map(|h| (h.to, h.value)).collect();
        let log = script.borrow().log.clone();
        prop_assert_eq!(log, expected);
        // Drop every handle: suspended greenlets are killed, unstarted ones
        // dropped, so every guard is released.
        let handles = std::mem::take(&mut script.borrow_mut().handles);
        drop(handles);
        prop_assert_eq!(drops.get(), n);
    }
}

#[test]
fn switch_error_debug_names_the_variant_not_the_message() {
    let dead = Greenlet::new(|n: u32| n);
    dead.switch(1);
    let err = dead.try_switch(7).unwrap_err();
    assert_eq!(format!("{err:?}"), "Dead(..)");
    assert!(
        format!("{err}").contains("dead greenlet"),
        "Display keeps the message"
    );

    // A greenlet waiting for a String, reached through a handle of u8s.
    let as_u8: Rc<RefCell<Option<Greenlet<u8>>>> = Rc::default();
    let slot = as_u8.clone();
    let waits = Greenlet::new(move |s: String| {
        *slot.borrow_mut() = Some(current::<u8>());
        // The parent's handle only: a temporary handle of this greenlet
        // held across the switch would keep it alive (a cycle, leaked).
        let parent = current::<String>().parent().unwrap();
        parent.switch(s)
    });
    waits.switch(String::new());
    let err = as_u8.borrow().as_ref().unwrap().try_switch(5).unwrap_err();
    assert_eq!(
        format!("{err:?}"),
        format!(
            "WrongType {{ expected: {:?}, .. }}",
            std::any::type_name::<String>()
        )
    );
    as_u8.borrow_mut().take();

    let cycle = Greenlet::new(|n: u8| n);
    let err = cycle.set_parent(&cycle).unwrap_err();
    assert_eq!(format!("{err:?}"), "Cycle");
}

#[test]
// The hash is the greenlet's identity, which its interior state (what the
// lint sees) never changes.
#[allow(clippy::mutable_key_type)]
fn greenlets_hash_as_they_compare() {
    use std::collections::HashSet;
    let a = Greenlet::new(|n: u8| n);
    let b = Greenlet::new(|n: u8| n);
    let set: HashSet<Greenlet<u8>> = [a.clone(), a.clone(), b.clone()].into_iter().collect();
    assert_eq!(set.len(), 2);
    assert!(set.contains(&a) && set.contains(&b));
    assert!(!set.contains(&current::<u8>()));
}

#[test]
fn generators_are_fused() {
    fn fused<I: std::iter::FusedIterator>(_: &I) {}
    let mut g = Generator::new(|y: &Yielder<(), u8>| y.suspend(1));
    fused(&g);
    assert_eq!(g.next(), Some(1));
    assert_eq!((g.next(), g.next(), g.next()), (None, None, None));
}
