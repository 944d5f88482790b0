//! A model-based test of kills whose destructors re-enter the hub: random
//! programs of tasks, each holding a value whose destructor runs a random
//! list of hub calls (kill another task or itself, spawn, sleep, join,
//! drop a handle, time out a sleep), while the main task sleeps, kills and joins at random,
//! and the end of `run` kills the rest. Every run must end (the whole
//! proptest runs in a child process with a watchdog, so a hang, a crash or
//! an abort fails it), every destructor must run exactly once, and every
//! join must report what happened: the value if the body and its own
//! destructor got to the end, `Killed` otherwise.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use corostack_hub::{self as hub, JoinError, JoinHandle, KillHandle};
use proptest::prelude::*;
use util::DropCounter;

/// What a destructor does, in order.
#[derive(Debug, Clone, Copy)]
enum Cleanup {
    /// Kills task `i % n` (itself included), waiting for its death.
    Kill(usize),
    /// Spawns a short task and detaches it.
    Spawn,
    /// Sleeps this many milliseconds (0: yields).
    Sleep(u64),
    /// Joins task `i % n` if its handle is still there and it was spawned
    /// after this one (joins go one way: no cycle of joins).
    Join(usize),
    /// Drops task `i % n`'s handle (detaches it).
    DropHandle(usize),
    /// Kills the task whose destructor this is.
    KillSelf,
    /// A `timeout` of this many milliseconds around a longer sleep.
    Timeout(u64),
}

/// What the main task does, in order, before it returns.
#[derive(Debug, Clone, Copy)]
enum Step {
    Sleep(u64),
    Kill(usize),
    Join(usize),
    DropHandle(usize),
}

/// One task: the sleeps of its body, whether it then panics (its
/// destructor then runs during that unwind), and its destructor's program.
#[derive(Debug, Clone)]
struct TaskProgram {
    body: Vec<u64>,
    panics: bool,
    cleanup: Vec<Cleanup>,
}

fn cleanup() -> impl Strategy<Value = Cleanup> {
    prop_oneof![
        (0usize..8).prop_map(Cleanup::Kill),
        Just(Cleanup::Spawn),
        (0u64..3).prop_map(Cleanup::Sleep),
        (0usize..8).prop_map(Cleanup::Join),
        (0usize..8).prop_map(Cleanup::DropHandle),
        Just(Cleanup::KillSelf),
        (0u64..3).prop_map(Cleanup::Timeout),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..4).prop_map(Step::Sleep),
        (0usize..8).prop_map(Step::Kill),
        (0usize..8).prop_map(Step::Join),
        (0usize..8).prop_map(Step::DropHandle),
    ]
}

fn task() -> impl Strategy<Value = TaskProgram> {
    (
        proptest::collection::vec(0u64..4, 0..3),
        proptest::bool::weighted(0.25),
        proptest::collection::vec(cleanup(), 0..4),
    )
        .prop_map(|(body, panics, cleanup)| TaskProgram {
            body,
            panics,
            cleanup,
        })
}

/// The state the tasks share.
#[derive(Default)]
struct World {
    handles: RefCell<Vec<Option<JoinHandle<usize>>>>,
    kills: RefCell<Vec<KillHandle>>,
    /// What each join saw.
    joined: RefCell<Vec<Vec<Outcome>>>,
    /// Whether each task's body and destructor got to their end.
    completed: Vec<Cell<bool>>,
    /// Whether each task's body raised its own panic.
    panicked: Vec<Cell<bool>>,
    /// Each task's destructor (counted when the value holding it drops).
    drops: Vec<DropCounter>,
    /// Tasks spawned by destructors, and their drops.
    children: Cell<usize>,
    child_drops: DropCounter,
}

impl World {
    fn n(&self) -> usize {
        self.completed.len()
    }

    /// Joins task `j` if its handle is still there, recording the result.
    fn join(&self, j: usize) {
        let h = self.handles.borrow_mut()[j].take();
        if let Some(h) = h {
            let r = match h.join() {
                Ok(v) => Outcome::Value(v),
                Err(JoinError::Killed) => Outcome::Killed,
                Err(e) => Outcome::Panicked(e.panic_message().unwrap_or_default().to_string()),
            };
            self.joined.borrow_mut()[j].push(r);
        }
    }
}

/// How a task ended, as a join sees it.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Value(usize),
    Killed,
    Panicked(String),
}

/// The value whose drop runs a task's destructor program.
struct Cleaner {
    world: Rc<World>,
    me: usize,
    program: Vec<Cleanup>,
    _counted: util::DropGuard,
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        let w = &self.world;
        let n = w.n();
        for &c in &self.program {
            match c {
                Cleanup::Kill(j) => {
                    let k = w.kills.borrow()[j % n].clone();
                    k.kill();
                }
                Cleanup::KillSelf => {
                    let k = w.kills.borrow()[self.me].clone();
                    k.kill();
                }
                Cleanup::Spawn => {
                    w.children.set(w.children.get() + 1);
                    let g = w.child_drops.guard();
                    drop(hub::spawn(move || {
                        let _g = g;
                        hub::sleep(Duration::from_millis(1));
                    }));
                }
                Cleanup::Sleep(ms) => hub::sleep(Duration::from_millis(ms)),
                Cleanup::Join(j) if j % n > self.me => w.join(j % n),
                Cleanup::Join(_) => {}
                Cleanup::DropHandle(j) => drop(w.handles.borrow_mut()[j % n].take()),
                Cleanup::Timeout(ms) => {
                    // It fires, or, while the hub cannot tell whether this
                    // task unwinds (another coroutine's unwind is parked),
                    // fires late: the sleep may end first (see the
                    // scheduler's "Raising"). Either way it returns.
                    let _ = hub::timeout(Duration::from_millis(ms), || {
                        hub::sleep(Duration::from_millis(ms + 20))
                    });
                }
            }
        }
    }
}

/// Runs one program and checks it.
fn check(tasks: Vec<TaskProgram>, main: Vec<Step>) {
    let n = tasks.len();
    let world = Rc::new(World {
        joined: RefCell::new(vec![Vec::new(); n]),
        completed: (0..n).map(|_| Cell::new(false)).collect(),
        panicked: (0..n).map(|_| Cell::new(false)).collect(),
        drops: (0..n).map(|_| DropCounter::default()).collect(),
        ..World::default()
    });
    let w = world.clone();
    hub::Builder::new()
        .shutdown_timeout(Some(Duration::from_secs(20)))
        .run(move || {
            for (i, t) in tasks.into_iter().enumerate() {
                let w2 = w.clone();
                // Captured, so that a task killed before it starts runs its
                // destructor too (when its closure is dropped).
                let cleaner = Cleaner {
                    world: w2.clone(),
                    me: i,
                    program: t.cleanup,
                    _counted: w2.drops[i].guard(),
                };
                let h = hub::spawn(move || {
                    let cleaner = cleaner;
                    for ms in t.body {
                        hub::sleep(Duration::from_millis(ms));
                    }
                    if t.panics {
                        w2.panicked[i].set(true);
                        panic!("task {i}");
                    }
                    drop(cleaner);
                    w2.completed[i].set(true);
                    i * 10
                });
                w.kills.borrow_mut().push(h.kill_handle());
                w.handles.borrow_mut().push(Some(h));
            }
            for s in main {
                match s {
                    Step::Sleep(ms) => hub::sleep(Duration::from_millis(ms)),
                    Step::Kill(j) => {
                        let k = w.kills.borrow()[j % n].clone();
                        // It waits for the death, except of a victim that
                        // may be unwinding from its own panic (a suspect).
                        k.kill();
                    }
                    Step::Join(j) => w.join(j % n),
                    Step::DropHandle(j) => drop(w.handles.borrow_mut()[j % n].take()),
                }
            }
        });
    for i in 0..n {
        assert_eq!(world.drops[i].get(), 1, "task {i}'s destructor ran once");
        let expected = if world.completed[i].get() {
            Outcome::Value(i * 10)
        } else if world.panicked[i].get() {
            Outcome::Panicked(format!("task {i}"))
        } else {
            Outcome::Killed
        };
        for r in &world.joined.borrow()[i] {
            assert_eq!(*r, expected, "task {i}'s join saw what happened");
        }
    }
    assert_eq!(world.child_drops.get(), world.children.get());
    world.handles.borrow_mut().clear();
    world.kills.borrow_mut().clear();
}

#[test]
fn destructors_that_re_enter_the_hub_while_killed() {
    hub_util::passes_in_child("destructors_that_re_enter_the_hub_while_killed", || {
        let cases = if util::emulated() { 16 } else { 128 };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
        let strategy = (
            proptest::collection::vec(task(), 1..6),
            proptest::collection::vec(step(), 0..8),
        );
        runner
            .run(&strategy, |(tasks, main)| {
                if std::env::var_os("HUB_MODEL_TRACE").is_some() {
                    eprintln!("CASE {tasks:?} {main:?}");
                }
                check(tasks, main);
                Ok(())
            })
            .unwrap();
    });
}

/// Cases the model once found, kept.
#[test]
fn recorded_cases() {
    use Cleanup as C;
    let t = |body: &[u64], cleanup: &[Cleanup]| TaskProgram {
        body: body.to_vec(),
        panics: false,
        cleanup: cleanup.to_vec(),
    };
    hub_util::passes_in_child("recorded_cases", || {
        check(
            vec![
                t(&[3, 2], &[C::Sleep(2), C::KillSelf, C::Sleep(0)]),
                t(&[0], &[C::Spawn]),
                t(&[0, 0], &[C::Kill(2), C::DropHandle(1), C::Join(7)]),
                t(&[3], &[C::Kill(2), C::Spawn, C::KillSelf]),
            ],
            vec![Step::DropHandle(4), Step::Kill(5)],
        );
    });
}
