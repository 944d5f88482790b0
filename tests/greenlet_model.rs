//! A model-based test of greenlets whose destructors re-enter the API.
//!
//! Random programs: greenlets whose bodies switch among each other, kill,
//! drop handles, create greenlets, re-parent them, return and panic, and
//! whose one destructor each (a guard on the body's stack, or in the
//! closure of one never started) does the same at random points, run by a
//! kill, by the drop of a last handle, or by an ordinary return. Every run
//! must end without a crash with every destructor run exactly once, and
//! every value or panic must reach the greenlet that a simple reference
//! model predicts (the switch's target, or a dying body's nearest live
//! ancestor), every `set_parent` must succeed or refuse a cycle as the
//! model says, and a switch to a dead greenlet must be refused.
//!
//! `MODEL_TRACE=1 cargo test --test greenlet_model -- --nocapture` prints
//! each program and every step it takes.

mod util;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use corostack::greenlet::{Greenlet, SwitchError, current};
use proptest::prelude::*;

/// One step of a program. Indices are taken modulo the number of
/// greenlets made so far (0 is the main greenlet).
#[derive(Debug, Clone, Copy)]
enum Op {
    Switch(usize, u64),
    Kill(usize),
    /// Drops the table's handle of a greenlet (never the main one's).
    Drop(usize),
    Create,
    SetParent(usize, usize),
    /// A body returns this value (ignored in a destructor and in main).
    Return(u64),
    /// A body panics with this number (ignored as `Return` is).
    Panic(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..16, 0u64..1000).prop_map(|(t, v)| Op::Switch(t, v)),
        2 => (0usize..16).prop_map(Op::Kill),
        2 => (0usize..16).prop_map(Op::Drop),
        2 => Just(Op::Create),
        1 => (0usize..16, 0usize..16).prop_map(|(a, b)| Op::SetParent(a, b)),
        1 => (0u64..1000).prop_map(Op::Return),
        2 => (0u64..1000).prop_map(Op::Panic),
    ]
}

/// What arrives at a greenlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Value(u64),
    Panic(u64),
}

/// The value with which a body tells main that the program is over.
const END: u64 = u64::MAX;

/// Where a guard's destructor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// A body, or a destructor it runs itself (before returning): may
    /// switch; a kill reaching it unwinds it.
    Normal,
    /// A destructor run by a kill's unwind: every switch panics.
    Killed,
    /// The closure of a greenlet that never started, dropped because it
    /// is killed or because a panic reached it: no switches tried.
    Unstarted,
}

struct World {
    table: RefCell<Vec<Option<Greenlet<u64>>>>,
    script: Vec<Op>,
    next: Cell<usize>,
    /// The destructor programs, one picked per greenlet.
    dtor_programs: Vec<Vec<Op>>,
    max: usize,
    drops: RefCell<Vec<usize>>,
    /// The reference model: each greenlet's parent, and whether it is dead
    /// (or certain to die before anything that asks).
    parent: RefCell<Vec<Option<usize>>>,
    dead: RefCell<Vec<bool>>,
    started: RefCell<Vec<bool>>,
    /// The greenlet whose handle each suspended greenlet holds on its
    /// stack (the target of its pending switch), for the leak check.
    holds: RefCell<Vec<Option<usize>>>,
    /// The delivery in flight: who must receive what next.
    expect: Cell<Option<(usize, Delivery)>>,
}

impl World {
    fn next_op(&self) -> Option<Op> {
        let i = self.next.get();
        self.next.set(i + 1);
        self.script.get(i).copied()
    }

    fn len(&self) -> usize {
        self.table.borrow().len()
    }

    fn handle(&self, i: usize) -> Option<Greenlet<u64>> {
        self.table.borrow()[i].clone()
    }

    /// The nearest ancestor of `me` that is not dead, by the model.
    fn live_ancestor(&self, me: usize) -> usize {
        let parent = self.parent.borrow();
        let dead = self.dead.borrow();
        let mut p = parent[me];
        while let Some(i) = p {
            if !dead[i] {
                return i;
            }
            p = parent[i];
        }
        panic!("no live ancestor of {me}: main never dies");
    }

    /// Whether `x` is `y` or one of its ancestors, by the model.
    fn is_ancestor_or_self(&self, x: usize, y: usize) -> bool {
        let parent = self.parent.borrow();
        let mut p = Some(y);
        while let Some(i) = p {
            if i == x {
                return true;
            }
            p = parent[i];
        }
        false
    }

    /// `me` receives `d`: it must be the delivery in flight, for `me`.
    fn deliver(&self, me: usize, d: Delivery) {
        let expected = self.expect.take();
        assert_eq!(
            expected,
            Some((me, d)),
            "greenlet {me} received {d:?}, the model expected {expected:?}"
        );
    }

    /// Makes sure that the running greenlet `me` has a handle in the table
    /// before it leaves, so that it is never leaked (a greenlet that
    /// leaves with no handle at all is: see the module docs).
    fn keep(&self, me: usize) {
        if me != 0 && self.table.borrow()[me].is_none() {
            let h = current::<u64>();
            self.table.borrow_mut()[me] = Some(h);
        }
    }
}

fn panic_number(payload: &(dyn Any + Send)) -> Option<u64> {
    payload
        .downcast_ref::<String>()
        .and_then(|s| s.strip_prefix("model panic "))
        .map(|n| n.parse().unwrap())
}

/// A greenlet's one destructor: counts itself, then runs its program.
struct Guard {
    world: Rc<World>,
    me: usize,
    program: usize,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let w = self.world.clone();
        let me = self.me;
        w.drops.borrow_mut()[me] += 1;
        let started = w.started.borrow()[me];
        let ctx = if !started {
            Ctx::Unstarted
        } else if std::thread::panicking() {
            Ctx::Killed
        } else {
            Ctx::Normal
        };
        // A panic that reaches a greenlet before it starts passes through
        // it to its own live ancestor, once this closure is dropped.
        let passing = match w.expect.get() {
            Some((to, Delivery::Panic(n))) if to == me && ctx == Ctx::Unstarted => {
                w.expect.set(None);
                Some(n)
            }
            _ => None,
        };
        if ctx != Ctx::Normal {
            w.dead.borrow_mut()[me] = true;
        }
        let program = w.dtor_programs[self.program % w.dtor_programs.len()].clone();
        for op in program {
            perform(&w, me, op, ctx);
        }
        if let Some(n) = passing {
            let to = w.live_ancestor(me);
            w.expect.set(Some((to, Delivery::Panic(n))));
        }
    }
}

/// Does `op` as greenlet `me` in `ctx`. Returns what main or a body must
/// do next: `Some(d)` when the body is to end (return or panic).
fn perform(w: &Rc<World>, me: usize, op: Op, ctx: Ctx) -> Option<Delivery> {
    let n = w.len();
    if std::env::var_os("MODEL_TRACE").is_some() {
        eprintln!("{me} {ctx:?}: {op:?}");
    }
    match op {
        Op::Switch(to, v) => {
            if ctx == Ctx::Unstarted {
                return None;
            }
            let to = to % n;
            let h = w.handle(to)?;
            switch(w, me, &h, to, v, ctx);
        }
        Op::Kill(x) => {
            let x = x % n;
            let h = w.handle(x)?;
            let r = panic::catch_unwind(AssertUnwindSafe(|| h.kill()));
            match r {
                Ok(()) => {
                    if h.done() {
                        w.dead.borrow_mut()[x] = true;
                    }
                    if ctx == Ctx::Normal {
                        // Only a greenlet waiting in a kill (none waits
                        // while a body runs) survives a kill from a body.
                        assert!(h.done(), "{me} killed {x}, which lives");
                    }
                }
                Err(p) => {
                    // Refused: the running greenlet not being killed, or
                    // the main greenlet; with a plain message.
                    let msg = p
                        .downcast_ref::<&str>()
                        .copied()
                        .unwrap_or_else(|| panic!("{me} killing {x} panicked with a payload"));
                    assert!(
                        (x == me && msg.contains("kill itself"))
                            || (x == 0 && msg.contains("main greenlet cannot be killed")),
                        "{me} killing {x}: {msg}"
                    );
                    assert!(ctx != Ctx::Killed || x == 0, "{msg}");
                }
            }
        }
        Op::Drop(x) => {
            let x = x % n;
            if x != 0 {
                let h = w.table.borrow_mut()[x].take();
                drop(h);
            }
        }
        Op::Create => {
            if n < w.max {
                create(w, me);
            }
        }
        Op::SetParent(x, y) => {
            let (x, y) = (x % n, y % n);
            let (Some(hx), Some(hy)) = (w.handle(x), w.handle(y)) else {
                return None;
            };
            let cycle = w.is_ancestor_or_self(x, y);
            match hx.set_parent(&hy) {
                Ok(()) => {
                    assert!(!cycle, "set_parent({x}, {y}) made a cycle");
                    w.parent.borrow_mut()[x] = Some(y);
                }
                Err(SwitchError::Cycle) => assert!(cycle, "set_parent({x}, {y}) refused"),
                Err(e) => panic!("set_parent: {e}"),
            }
        }
        Op::Return(v) if ctx == Ctx::Normal && me != 0 => return Some(Delivery::Value(v)),
        Op::Panic(v) if ctx == Ctx::Normal && me != 0 => return Some(Delivery::Panic(v)),
        Op::Return(_) | Op::Panic(_) => {}
    }
    None
}

/// Switches from `me` to `to` (through `h`) with `v`, and checks what
/// comes back against the model.
fn switch(w: &Rc<World>, me: usize, h: &Greenlet<u64>, to: usize, v: u64, ctx: Ctx) {
    if ctx == Ctx::Killed {
        // A greenlet a kill reached cannot switch: the switch raises the
        // kill's unwind again, and the model's delivery is untouched.
        // A failed check here runs during an unwind, where a panic aborts:
        // say why first.
        let r = panic::catch_unwind(AssertUnwindSafe(|| h.try_switch(v)));
        let Err(p) = r else {
            eprintln!("greenlet {me}, being killed, switched to {to}");
            std::process::abort();
        };
        assert!(panic_number(&*p).is_none());
        return;
    }
    w.keep(me);
    let before = w.expect.replace(Some((to, Delivery::Value(v))));
    assert_eq!(before, None, "a delivery was still in flight");
    let held = w.holds.borrow_mut()[me].replace(to);
    let r = panic::catch_unwind(AssertUnwindSafe(|| h.try_switch(v)));
    w.holds.borrow_mut()[me] = held;
    match r {
        Ok(Ok(got)) => w.deliver(me, Delivery::Value(got)),
        Ok(Err(SwitchError::Dead(back))) => {
            assert_eq!(back, v);
            assert!(w.dead.borrow()[to], "{me} -> {to}: refused as dead");
            w.expect.set(None);
        }
        Ok(Err(e)) => panic!("{me} -> {to}: {e}"),
        Err(p) => match panic_number(&*p) {
            Some(n) => w.deliver(me, Delivery::Panic(n)),
            None => {
                // A kill reached us while suspended: unwind, after
                // noting that we die.
                w.dead.borrow_mut()[me] = true;
                panic::resume_unwind(p);
            }
        },
    }
}

fn create(w: &Rc<World>, creator: usize) {
    let id = w.len();
    w.parent.borrow_mut().push(Some(creator));
    w.dead.borrow_mut().push(false);
    w.started.borrow_mut().push(false);
    w.holds.borrow_mut().push(None);
    w.drops.borrow_mut().push(0);
    let guard = Guard {
        world: w.clone(),
        me: id,
        program: id,
    };
    let g = Greenlet::new(move |first: u64| body(guard, first));
    w.table.borrow_mut().push(Some(g));
}

/// A greenlet's body: plays the script.
fn body(guard: Guard, first: u64) -> u64 {
    let w = guard.world.clone();
    let me = guard.me;
    w.started.borrow_mut()[me] = true;
    w.deliver(me, Delivery::Value(first));
    loop {
        let Some(op) = w.next_op() else {
            // The program is over: back to main, which cleans up.
            let main = w.handle(0).unwrap();
            switch(&w, me, &main, 0, END, Ctx::Normal);
            unreachable!("main never switches back after the end");
        };
        if let Some(end) = perform(&w, me, op, Ctx::Normal) {
            // The guard goes first (its destructor may still switch).
            drop(guard);
            w.dead.borrow_mut()[me] = true;
            let to = w.live_ancestor(me);
            w.expect.set(Some((to, end)));
            return match end {
                Delivery::Value(v) => v,
                Delivery::Panic(n) => panic::panic_any(format!("model panic {n}")),
            };
        }
    }
}

/// Keeps the panics that the programs make on purpose (and the refusals
/// they provoke) out of the output; any other panic is printed as usual.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("");
            let expected = [
                "model panic ",
                "kill itself",
                "main greenlet cannot be killed",
            ];
            if !expected.iter().any(|e| msg.contains(e)) {
                default(info);
            }
        }));
    });
}

fn run(script: Vec<Op>, dtor_programs: Vec<Vec<Op>>, max: usize) {
    quiet_expected_panics();
    if std::env::var_os("MODEL_TRACE").is_some() {
        eprintln!("---- run {script:?} {dtor_programs:?} {max}");
    }
    let w = Rc::new(World {
        table: RefCell::new(vec![Some(current::<u64>())]),
        script,
        next: Cell::new(0),
        dtor_programs,
        max,
        drops: RefCell::new(vec![0]),
        parent: RefCell::new(vec![None]),
        dead: RefCell::new(vec![false]),
        started: RefCell::new(vec![true]),
        holds: RefCell::new(vec![None]),
        expect: Cell::new(None),
    });
    // Main plays the script too, until it is over or a body says so.
    while let Some(op) = w.next_op() {
        if let Op::Switch(to, v) = op {
            let to = to % w.len();
            let Some(h) = w.handle(to) else { continue };
            w.expect.set(Some((to, Delivery::Value(v))));
            match panic::catch_unwind(AssertUnwindSafe(|| h.try_switch(v))) {
                Ok(Ok(END)) => {
                    w.deliver(0, Delivery::Value(END));
                    break;
                }
                Ok(Ok(got)) => w.deliver(0, Delivery::Value(got)),
                Ok(Err(SwitchError::Dead(_))) => {
                    assert!(w.dead.borrow()[to]);
                    w.expect.set(None);
                }
                Ok(Err(e)) => panic!("0 -> {to}: {e}"),
                Err(p) => {
                    let n = panic_number(&*p).expect("main only receives model panics");
                    w.deliver(0, Delivery::Panic(n));
                }
            }
        } else {
            perform(&w, 0, op, Ctx::Normal);
        }
    }
    // Clean up: kill every greenlet the table reaches (through parent
    // links too) and drop the handles; destructors may make more (up to
    // the limit): repeat until none.
    loop {
        let mut handles: Vec<_> = w.table.borrow_mut()[1..]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        if handles.is_empty() {
            break;
        }
        let mut i = 0;
        while i < handles.len() {
            if let Some(p) = handles[i].parent()
                && !p.is_main()
                && !handles.contains(&p)
            {
                handles.push(p);
            }
            i += 1;
        }
        for h in &handles {
            h.kill();
        }
        drop(handles);
    }
    assert_eq!(w.expect.get(), None, "a delivery never arrived");
    check_drops(&w);
    w.table.borrow_mut().clear();
}

/// Every destructor ran once, but for greenlets leaked in a cycle of
/// references (as with `Rc`: a greenlet suspended with another's handle on
/// its stack, the target of its pending switch, while that one's parent
/// link, directly or through dead parents, holds it): each greenlet still
/// alive must be held by another in that set, or nothing would hold it and
/// it would have been killed. A
/// leaked greenlet's destructor has not run, or has started and is
/// suspended in it.
fn check_drops(w: &World) {
    let drops = w.drops.borrow();
    let parent = w.parent.borrow();
    let holds = w.holds.borrow();
    let dead = w.dead.borrow();
    let n = drops.len();
    for x in 1..n {
        assert!(
            drops[x] <= 1,
            "greenlet {x}'s destructor ran {} times: {drops:?}",
            drops[x]
        );
        assert!(
            drops[x] == 1 || !dead[x],
            "greenlet {x} is dead, and its destructor never ran: {drops:?}"
        );
    }
    // The cores still alive: the leaked greenlets, and, transitively, the
    // cores they keep: a handle one holds on its stack, and every core's
    // parent link (a dead greenlet keeps its parent for its children's
    // returns, so a chain of dead parents can close a cycle too).
    let mut alive: Vec<bool> = (0..n).map(|i| i != 0 && !dead[i]).collect();
    loop {
        let mut grew = false;
        for i in 1..n {
            if !alive[i] {
                continue;
            }
            let held = [(!dead[i]).then_some(holds[i]).flatten(), parent[i]];
            for t in held.into_iter().flatten() {
                if t != 0 && !alive[t] {
                    alive[t] = true;
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    for x in (1..n).filter(|&x| !dead[x]) {
        let held =
            (1..n).any(|y| alive[y] && (parent[y] == Some(x) || (!dead[y] && holds[y] == Some(x))));
        assert!(
            held,
            "greenlet {x} is alive, and no leaked greenlet holds it: \
             drops {drops:?}, dead {dead:?}, parents {parent:?}, holds {holds:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 24 } else { 512 }))]

    #[test]
    fn destructors_that_reenter_the_api_run_once_and_deliveries_match_the_model(
        script in prop::collection::vec(op(), 1..60),
        dtors in prop::collection::vec(prop::collection::vec(op(), 0..4), 1..6),
        max in 2usize..10,
    ) {
        run(script, dtors, max);
    }
}

/// A few fixed programs, so that the interesting paths are always taken.
#[test]
fn fixed_programs() {
    use Op::*;
    // A kill whose victim's destructor kills the killer and drops its
    // handle (mutual kill), both from a body and from main.
    run(
        vec![
            Create,
            Create,
            Switch(1, 5),
            Switch(2, 6),
            Kill(2),
            Return(1),
        ],
        vec![vec![Kill(1), Drop(1), Kill(0)]],
        4,
    );
    // A destructor run by an ordinary return that switches away, and is
    // killed there.
    run(
        vec![Create, Switch(1, 1), Create, Return(3), Switch(1, 2)],
        vec![vec![Switch(0, 9)], vec![Create, SetParent(2, 0), Drop(1)]],
        5,
    );
    // A panic passing through a greenlet that never started.
    run(
        vec![Create, Create, SetParent(2, 1), Switch(2, 4), Panic(7)],
        vec![vec![Create, Kill(3)]],
        5,
    );
}
