//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::process::{Command, Output};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Whether the tests run under emulation (qemu-user), where everything is
/// 10 to 50 times slower: heavy loops scale down, checks stay the same.
pub fn emulated() -> bool {
    std::env::var_os("COROSTACK_EMULATED").is_some()
}

/// Whether the tests run under valgrind (its preloaded library is in
/// `LD_PRELOAD`), which tracks stack memory itself: a stack's bytes below
/// its stack pointer read as undefined there.
pub fn under_valgrind() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
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
    run_child_with(test_name, role, &[])
}

/// The environment for a child that leaks on purpose (what it checks is a
/// designed leak): LeakSanitizer, in the ASan run, is told not to report.
pub fn leaks_allowed() -> [(&'static str, String); 1] {
    let asan = std::env::var("ASAN_OPTIONS").unwrap_or_default();
    [("ASAN_OPTIONS", format!("{asan}:detect_leaks=0"))]
}

/// [`run_child`], with more environment variables for the child.
pub fn run_child_with(test_name: &str, role: &str, env: &[(&str, String)]) -> Output {
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
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("spawn the child test process")
}

/// Runs `scenario` in a child process playing `name` (the test's own
/// name), and asserts that the child exited cleanly and printed `DONE`.
pub fn passes_in_child(name: &str, scenario: fn()) {
    if child_role().as_deref() == Some(name) {
        scenario();
        println!("DONE");
        return;
    }
    let out = run_child_with(name, name, &leaks_allowed());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("DONE"),
        "the child running {name} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
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

/// A thread-local's value that knows when it was dropped: a read after
/// its drop reports it and aborts (the process-wide flag, not the value,
/// tells, so the report does not depend on the freed bytes); the read of
/// its `Vec` that follows is what valgrind sees.
pub struct Tracked {
    dropped: &'static AtomicBool,
    data: Vec<u64>,
}

impl Tracked {
    pub fn new(dropped: &'static AtomicBool) -> Tracked {
        Tracked {
            dropped,
            data: vec![1, 2, 3],
        }
    }

    /// Reads the value; aborts if it was dropped.
    pub fn read(&self) -> u64 {
        if self.dropped.load(Ordering::SeqCst) {
            eprintln!("READ A DROPPED THREAD-LOCAL");
            let sum: u64 = std::hint::black_box(self.data.iter().sum());
            eprintln!("(it summed to {sum})");
            std::process::abort();
        }
        self.data.iter().sum()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Reads its thread-local when dropped (by the unwind of the body that
/// holds it), and counts that it did.
pub struct ReadOnDrop<'a>(pub &'a Tracked, pub &'static AtomicUsize);

impl Drop for ReadOnDrop<'_> {
    fn drop(&mut self) {
        assert_eq!(self.0.read(), 6);
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `$body` in a child process (this test binary again, running only
/// this test) and asserts that it finished normally: no crash, no abort.
#[allow(unused_macros)] // used by some of the test crates that include this module
macro_rules! child_test {
    ($(#[$m:meta])* $name:ident, $body:block) => {
        $(#[$m])*
        #[test]
        fn $name() {
            if util::child_role().as_deref() == Some(stringify!($name)) {
                // A function of its own, so that a `return` in the body (a
                // check skipped where it cannot run) still finishes the child.
                fn body() $body
                body();
                println!("CHILD-FINISHED");
                return;
            }
            let out = util::run_child(stringify!($name), stringify!($name));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains("CHILD-FINISHED"),
                "the child did not finish normally: {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                out.status
            );
        }
    };
}

/// The type of an `SA_SIGINFO` signal handler.
#[cfg(unix)]
pub type FaultHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Maps `len` bytes, leaked (the callers are child processes that end
/// soon), and makes them the calling thread's alternate signal stack;
/// returns their start.
#[cfg(unix)]
pub fn set_alt_stack(len: usize) -> usize {
    use std::ptr;
    // SAFETY: a fresh anonymous mapping, which becomes the thread's
    // alternate stack and is never unmapped.
    unsafe {
        let map = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let alt = libc::stack_t {
            ss_sp: map,
            ss_flags: 0,
            ss_size: len,
        };
        assert_eq!(libc::sigaltstack(&alt, ptr::null_mut()), 0);
        map as usize
    }
}

/// Installs `handler` for SIGSEGV and SIGBUS, on an alternate signal stack
/// of this thread's (256 KiB, leaked: the callers are child processes that
/// end soon). Installed after the crate's overflow handler, it takes
/// precedence over it.
#[cfg(unix)]
pub fn install_fault_handler(handler: FaultHandler) {
    use std::ptr;
    set_alt_stack(256 * 1024);
    // SAFETY: sigaction with a handler of the SA_SIGINFO type.
    unsafe {
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            assert_eq!(libc::sigaction(sig, &action, ptr::null_mut()), 0);
        }
    }
}
