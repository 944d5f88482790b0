//! A model check of the `Coroutine` life cycle: random sequences of create,
//! resume, drop and `into_stack` over several coroutines and reused stacks,
//! each body following a random script of suspends, returns and panics,
//! checked step by step against a small reference model: every value
//! delivered, every destructor run exactly once, stacks reused, and a
//! resume of a finished coroutine always a clear panic.

mod util;

use std::panic::{self, AssertUnwindSafe};

use corostack::stack::MIN_STACK_SIZE;
use corostack::{Coroutine, CoroutineResult, DefaultStack, Stack};
use proptest::prelude::*;
use util::DropCounter;

/// One step of a body's script.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `suspend(v + input)`; the next input follows.
    Yield(u32),
    /// Return `v + input`.
    Return(u32),
    /// Panic with `v`.
    Panic(u32),
}

/// An operation on slot `i` (modulo the number of slots).
#[derive(Debug, Clone)]
enum Op {
    /// Create a coroutine in the slot (dropping what was there), on a
    /// stack from the reuse list if `reuse` and one is there.
    Create {
        slot: usize,
        script: Vec<Step>,
        reuse: bool,
    },
    Resume {
        slot: usize,
        input: u32,
    },
    Drop {
        slot: usize,
    },
    IntoStack {
        slot: usize,
    },
}

const SLOTS: usize = 4;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u32..1000).prop_map(Step::Yield),
        1 => (0u32..1000).prop_map(Step::Return),
        1 => (0u32..1000).prop_map(Step::Panic),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..SLOTS, prop::collection::vec(step(), 0..6), any::<bool>())
            .prop_map(|(slot, script, reuse)| Op::Create { slot, script, reuse }),
        6 => (0..SLOTS, 0u32..1000).prop_map(|(slot, input)| Op::Resume { slot, input }),
        1 => (0..SLOTS).prop_map(|slot| Op::Drop { slot }),
        1 => (0..SLOTS).prop_map(|slot| Op::IntoStack { slot }),
    ]
}

/// The model of one coroutine: its script, how far it got, and whether it
/// has finished.
struct Model {
    script: Vec<Step>,
    pc: usize,
    started: bool,
    done: bool,
}

type Co = Coroutine<u32, u32, u32>;

fn make(script: Vec<Step>, guard: util::DropGuard, stack: DefaultStack) -> Co {
    Coroutine::with_stack(stack, move |y, mut input| {
        let _guard = guard;
        for s in script {
            match s {
                Step::Yield(v) => input = y.suspend(v + input),
                Step::Return(v) => return v + input,
                Step::Panic(v) => panic::panic_any(v),
            }
        }
        input
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 24 } else { 200 }))]

    #[test]
    fn the_life_cycle_follows_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let drops = DropCounter::default();
        let mut expected_drops = 0usize;
        let mut cos: Vec<Option<(Co, Model)>> = (0..SLOTS).map(|_| None).collect();
        let mut spare_stacks: Vec<DefaultStack> = Vec::new();
        // What the model says a dropped (or into_stack'ed) coroutine adds
        // to the destructor count: its guard, unless it already finished.
        let retire = |m: &Model| usize::from(!m.done);
        for op in ops {
            match op {
                Op::Create { slot, script, reuse } => {
                    let stack = match spare_stacks.pop() {
                        Some(s) if reuse => s,
                        other => {
                            spare_stacks.extend(other);
                            DefaultStack::new((2 * MIN_STACK_SIZE).max(64 * 1024)).unwrap()
                        }
                    };
                    let co = make(script.clone(), drops.guard(), stack);
                    if let Some((old, m)) = cos[slot].take() {
                        expected_drops += retire(&m);
                        drop(old);
                    }
                    cos[slot] = Some((co, Model { script, pc: 0, started: false, done: false }));
                }
                Op::Resume { slot, input } => {
                    let Some((co, m)) = cos[slot].as_mut() else { continue };
                    let got = panic::catch_unwind(AssertUnwindSafe(|| co.resume(input)));
                    if m.done {
                        let err = got.expect_err("resuming a finished coroutine must panic");
                        let msg = err.downcast_ref::<&str>().copied().unwrap_or_default();
                        prop_assert!(msg.contains("already finished"), "{}", msg);
                        continue;
                    }
                    m.started = true;
                    match m.script.get(m.pc).copied() {
                        Some(Step::Yield(v)) => {
                            prop_assert_eq!(got.unwrap(), CoroutineResult::Yield(v + input));
                            m.pc += 1;
                        }
                        Some(Step::Return(v)) => {
                            prop_assert_eq!(got.unwrap(), CoroutineResult::Return(v + input));
                            m.done = true;
                            expected_drops += 1;
                        }
                        Some(Step::Panic(v)) => {
                            let err = got.expect_err("the body panics");
                            prop_assert_eq!(err.downcast_ref::<u32>(), Some(&v));
                            m.done = true;
                            expected_drops += 1;
                        }
                        None => {
                            prop_assert_eq!(got.unwrap(), CoroutineResult::Return(input));
                            m.done = true;
                            expected_drops += 1;
                        }
                    }
                    prop_assert_eq!(co.started(), m.started);
                    prop_assert_eq!(co.done(), m.done);
                }
                Op::Drop { slot } => {
                    if let Some((co, m)) = cos[slot].take() {
                        expected_drops += retire(&m);
                        drop(co);
                    }
                }
                Op::IntoStack { slot } => {
                    if let Some((co, m)) = cos[slot].take() {
                        expected_drops += retire(&m);
                        let stack = co.into_stack();
                        prop_assert!(stack.top() > stack.limit());
                        spare_stacks.push(stack);
                    }
                }
            }
            prop_assert_eq!(drops.get(), expected_drops);
        }
        for (co, m) in cos.into_iter().flatten() {
            expected_drops += retire(&m);
            drop(co);
        }
        prop_assert_eq!(drops.get(), expected_drops);
    }
}
