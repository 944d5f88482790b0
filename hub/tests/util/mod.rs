//! Helpers shared by the hub's integration tests (a copy of what they use
//! of the core's `tests/util/mod.rs`: the hub's tests do not reach into the
//! core's test files).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::process::{Command, Output};
use std::rc::Rc;

/// The message of a caught panic (a `String` or a `&str` payload; empty
/// for any other).
pub fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Whether the tests run under emulation (qemu-user), where everything is
/// 10 to 50 times slower: heavy loops scale down, checks stay the same.
pub fn emulated() -> bool {
    std::env::var_os("COROSTACK_EMULATED").is_some()
}

/// `native` normally, `emulated` under qemu-user.
pub fn scaled(native: usize, emulated_count: usize) -> usize {
    if emulated() { emulated_count } else { native }
}

/// Counts how many times values made by it were dropped.
#[derive(Clone, Default)]
pub struct DropCounter(Rc<Cell<usize>>);

impl DropCounter {
    /// A new value whose drop this counter counts.
    pub fn guard(&self) -> DropGuard {
        DropGuard(self.0.clone())
    }

    /// Drops counted so far.
    pub fn get(&self) -> usize {
        self.0.get()
    }
}

/// Bumps its counter once when dropped.
pub struct DropGuard(Rc<Cell<usize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// The environment variable that tells a re-executed test binary which
/// child role to play.
pub const CHILD_ROLE: &str = "COROSTACK_TEST_CHILD";

/// Runs this test binary again as a child process playing `role`, running
/// only the test `test_name`, and returns its output. Under qemu-user the
/// child runs through `$COROSTACK_RUNNER`, since the sandbox has no binfmt.
pub fn run_child(test_name: &str, role: &str) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match std::env::var_os("COROSTACK_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .output()
        .expect("spawn the child test process")
}

/// The child role this process was started for, if any.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// Runs an example's `run` (which hands each line it prints to a sink) and
/// returns the lines.
pub fn capture(run: impl FnOnce(Rc<dyn Fn(String)>)) -> Vec<String> {
    let lines = Rc::new(RefCell::new(Vec::new()));
    let sink = lines.clone();
    run(Rc::new(move |l| sink.borrow_mut().push(l)));
    lines.take()
}
