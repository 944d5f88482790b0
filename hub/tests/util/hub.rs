//! Helpers for the hub's soundness tests (included with
//! `#[path = "util/hub.rs"] mod hub_util;` beside `mod util;`): run a scenario in a child
//! process with a watchdog, so that a crash, an abort or a hang of the
//! scenario fails its test instead of the whole suite.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a child run produced.
#[derive(Debug)]
pub struct ChildRun {
    /// The exit code, `None` if a signal ended it (or the watchdog did).
    pub code: Option<i32>,
    /// Whether the watchdog killed it (a hang).
    pub hung: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ChildRun {
    /// Everything it printed.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// ASan's options with leak reports off, for a child that leaks by design.
fn leaks_allowed() -> String {
    let asan = std::env::var("ASAN_OPTIONS").unwrap_or_default();
    format!("{asan}:detect_leaks=0")
}

/// Runs `f` in a child process (this test binary again, running only the
/// test `test_name`), killed after `limit`; in that child, runs `f`.
/// Returns what the child did (in the child, `None`).
pub fn in_child(test_name: &str, limit: Duration, f: impl FnOnce()) -> Option<ChildRun> {
    if crate::util::child_role().as_deref() == Some(test_name) {
        f();
        return None;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match std::env::var_os("COROSTACK_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(crate::util::CHILD_ROLE, test_name)
        // The scenarios end runs that leak on purpose (a straggler's stack
        // left mapped after the shutdown deadline, a watchdog's kill):
        // LeakSanitizer, in the ASan run, is told not to report them.
        .env("ASAN_OPTIONS", leaks_allowed())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let limit = if crate::util::emulated() {
        limit * 10
    } else {
        limit
    };
    let (status, hung) = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break (status, false);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().expect("wait for the child"), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Some(ChildRun {
        code: status.code(),
        hung,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    })
}

/// Runs `f` in a child process and asserts that it passed: no crash, no
/// abort, no hang, no failed assertion.
pub fn passes_in_child(test_name: &str, f: impl FnOnce()) {
    if let Some(run) = in_child(test_name, Duration::from_secs(60), f) {
        assert_passed(&run);
    }
}

/// Asserts that a child run passed: no crash, no abort, no hang, no
/// failed assertion; the message shows its output.
pub fn assert_passed(run: &ChildRun) {
    assert!(
        !run.hung && run.code == Some(0),
        "the scenario failed in its child process ({}):\n{}",
        if run.hung {
            "hung".to_string()
        } else {
            format!("exit code {:?}", run.code)
        },
        run.output()
    );
}

/// This process's address space, in bytes (`VmSize` of
/// `/proc/self/status`: Linux).
pub fn vm_size() -> u64 {
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
pub fn limit_address_space(room: Option<usize>) {
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
pub fn cannot_limit() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
        || crate::util::emulated()
        || vm_size() > 1u64 << 40
}
