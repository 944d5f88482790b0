//! Reports a coroutine stack overflow instead of a bare segmentation fault.
//!
//! Every coroutine stack has a guard (one page in practice) directly below its usable part,
//! recorded in the registry of `guards.rs`; the SIGSEGV and SIGBUS handler set up by [`install`]
//! looks the fault address up there: a fault inside a guard
//! prints one line to stderr and aborts, like std's "thread 'main' has overflowed its stack",
//!
//! ```text
//! corostack: coroutine stack overflow (stack of 65536 bytes; the fault hit its guard page at 0x7f3a5c1ff000), aborting
//! ```
//!
//! and any other fault goes on to the handler that was installed before ours (normally std's,
//! which reports overflows of thread stacks and otherwise lets the default action kill the process).
//!
//! The handler runs on the thread's alternate signal stack (std's, or one that [`install`] maps).
//! std takes that stack away before the thread-locals' destructors run (a spawned thread's when
//! its closure returns, the main thread's when `main` does): the thread-exit hook's unwinds get
//! a stack of their own ([`ExitAltStack`]); a coroutine that some other thread-local destructor
//! resumes has none, and its overflow dies by a bare SIGSEGV, as an overflow of the thread's own
//! stack does there.

use libc::{c_int, c_void, siginfo_t};
use std::cell::Cell;
use std::ptr::{self, null_mut};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering::*};

use super::guards::lookup;
use super::os::page_size;

/// Makes [`install`] set up the handler once per process.
static INSTALL: Once = Once::new();
/// The handlers in place before ours (`sa_sigaction`), for SIGSEGV and SIGBUS.
static PREV_HANDLER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// The `sa_flags` of those previous handlers.
static PREV_FLAGS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// The type of an `SA_SIGINFO` signal handler.
type Action = extern "C" fn(c_int, *mut siginfo_t, *mut c_void);

thread_local! {
    /// Whether [`install`] already ran on this thread.
    static INSTALLED: Cell<bool> = const { Cell::new(false) };
    /// The alternate signal stack [`install`] mapped for this thread, if it had none.
    static ALT_STACK: AltStack = const { AltStack { map: Cell::new((0, 0)) } };
}

/// Installs the SIGSEGV and SIGBUS handler once per process, and makes sure the calling thread
/// has an alternate signal stack to run it on (a thread that overflowed its stack has no stack
/// left for the handler). std gives one to the main thread and to the threads it spawns; a
/// thread without one gets one here, freed when the thread exits. Call this on every thread
/// before it runs a coroutine; after the first call on a thread, it is one thread-local check.
#[inline]
pub(crate) fn install() {
    if !INSTALLED.get() {
        install_slow();
    }
}

/// The first [`install`] on a thread.
#[cold]
#[inline(never)]
fn install_slow() {
    INSTALLED.set(true);
    INSTALL.call_once(|| {
        // Cache the page size before the handler can need it.
        page_size();
        for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            // SAFETY: all-zero is a valid sigaction (SIG_DFL, no flags, empty mask), and
            // sigaction only reads and writes the structs passed. Saving the previous handler
            // before installing ours means the handler never sees it unset.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, ptr::null(), &mut action);
                PREV_HANDLER[i].store(action.sa_sigaction, Release);
                PREV_FLAGS[i].store(action.sa_flags as usize, Release);
                action = std::mem::zeroed();
                action.sa_sigaction = handler as Action as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigaction(sig, &action, ptr::null_mut());
            }
        }
    });
    ensure_alt_stack();
}

/// Gives the calling thread an alternate signal stack if it has none (see [`install`]).
fn ensure_alt_stack() {
    if let Some((map, len)) = map_alt_stack() {
        // The exiting thread cannot record the mapping (its `ALT_STACK` is gone): no alternate
        // stack then, rather than one that nothing frees.
        if ALT_STACK.try_with(|alt| alt.map.set((map, len))).is_err() {
            free_alt_stack(map, len);
        }
    }
}

/// Maps an alternate signal stack (a guard page below it) and makes it the calling thread's, if
/// the thread has none; returns the mapping (start, length) that the caller frees with
/// [`free_alt_stack`].
fn map_alt_stack() -> Option<(usize, usize)> {
    // SAFETY: all-zero is a valid stack_t.
    let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new stack, sigaltstack only writes the current one into `old`.
    if unsafe { libc::sigaltstack(ptr::null(), &mut old) } != 0
        || old.ss_flags & libc::SS_DISABLE == 0
    {
        return None;
    }
    let page = page_size();
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel lacks.
    #[cfg(target_os = "linux")]
    let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    // Other systems have no such entry: their SIGSTKSZ is the minimum.
    #[cfg(not(target_os = "linux"))]
    let min = 0;
    let size = (64 * 1024)
        .max(libc::SIGSTKSZ)
        .max(min)
        .next_multiple_of(page);
    let len = page + size;
    let (prot, flags) = (
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
    );
    // SAFETY: a new anonymous mapping at an address of the kernel's choice touches no existing
    // memory.
    let map = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
    if map == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the mapping is ours and not shared: its lowest page becomes the stack's guard, or,
    // if that fails, it is unmapped again.
    if unsafe { libc::mprotect(map, page, libc::PROT_NONE) } != 0 {
        // SAFETY: as above; nothing uses it yet.
        unsafe { libc::munmap(map, len) };
        return None;
    }
    let stack = libc::stack_t {
        ss_sp: map.wrapping_byte_add(page),
        ss_flags: 0,
        ss_size: size,
    };
    // SAFETY: the stack is mapped, writable, and this thread's until `free_alt_stack`, which
    // disables it before unmapping it.
    unsafe { libc::sigaltstack(&stack, ptr::null_mut()) };
    Some((map as usize, len))
}

/// Frees a mapping made by [`map_alt_stack`] on this thread, disabling it first if it is still
/// the thread's alternate stack.
fn free_alt_stack(map: usize, len: usize) {
    // SAFETY: the mapping is this thread's own. If it is still the thread's alternate stack, it
    // is disabled first (and is not in use: the caller is not a signal handler), so no signal is
    // ever delivered onto unmapped memory.
    unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(ptr::null(), &mut current);
        if (map..map + len).contains(&(current.ss_sp as usize)) {
            let disable = libc::stack_t {
                ss_sp: null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&disable, ptr::null_mut());
        }
        libc::munmap(map as *mut c_void, len);
    }
}

/// An alternate signal stack for the thread's exit hook (`thread_exit`), which unwinds
/// suspended coroutines while the thread-locals are destroyed: by then std has taken the
/// thread's own alternate stack away (a spawned thread's when its closure returned, the main
/// thread's when `main` did), and an overflow in a destructor that the hook runs would die as a
/// bare SIGSEGV, the kernel having nowhere to run the handler. While this value lives the thread
/// has an alternate stack (a new one, if it had none and the handler is installed), which its
/// drop frees.
pub(crate) struct ExitAltStack(Option<(usize, usize)>);

impl ExitAltStack {
    /// Maps one if the process has the handler and the thread has no alternate stack.
    pub(crate) fn ensure() -> ExitAltStack {
        ExitAltStack(INSTALL.is_completed().then(map_alt_stack).flatten())
    }
}

impl Drop for ExitAltStack {
    fn drop(&mut self) {
        if let Some((map, len)) = self.0 {
            free_alt_stack(map, len);
        }
    }
}

/// An alternate signal stack mapped by [`install`]; dropping it at thread exit frees it.
struct AltStack {
    /// Start (the guard page) and length of the mapping, or `(0, 0)` for none.
    map: Cell<(usize, usize)>,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let (map, len) = self.map.get();
        if map != 0 {
            free_alt_stack(map, len);
        }
    }
}

/// The SIGSEGV and SIGBUS handler: reports a fault in a registered guard and aborts, and passes
/// any other fault to the previous handler. Async-signal-safe: no allocation, locks or `fmt`.
extern "C" fn handler(sig: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler, and si_addr is the
    // fault address for SIGSEGV and SIGBUS.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if code > 0
        && let Some(stack_size) = lookup(addr)
    {
        report(stack_size, addr);
    }
    let i = usize::from(sig == libc::SIGBUS);
    let (prev, flags) = (
        PREV_HANDLER[i].load(Acquire),
        PREV_FLAGS[i].load(Acquire) as c_int,
    );
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // A fault re-executes after the handler returns and then meets the default action; a
        // signal sent with kill() is raised again (it stays blocked until the handler returns).
        if prev == libc::SIG_IGN && code <= 0 {
            return;
        }
        // SAFETY: all-zero is SIG_DFL with an empty mask; sigaction and raise are
        // async-signal-safe.
        unsafe {
            libc::sigaction(sig, &std::mem::zeroed(), ptr::null_mut());
            if code <= 0 {
                libc::raise(sig);
            }
        }
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler's sa_sigaction is such a function, and it gets the
        // arguments the kernel gave us, as if it had been called directly.
        unsafe { std::mem::transmute::<usize, Action>(prev)(sig, info, context) };
    } else {
        // SAFETY: without SA_SIGINFO, sa_sigaction is a plain `void handler(int)`.
        unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(prev)(sig) };
    }
}

/// Writes the overflow message for a fault at `addr` to stderr and aborts. Async-signal-safe.
fn report(stack_size: usize, addr: usize) -> ! {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"corostack: coroutine stack overflow (stack of ");
    line.push_num(stack_size, 10);
    line.push(b" bytes; the fault hit its guard page at 0x");
    line.push_num(addr, 16);
    line.push(b"), aborting\n");
    let mut rest = &line.buf[..line.len];
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer; write is async-signal-safe.
        let written = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if written <= 0 {
            break;
        }
        rest = &rest[written as usize..];
    }
    // SAFETY: abort is async-signal-safe and has no preconditions.
    unsafe { libc::abort() }
}

/// A line of fixed capacity, built without allocating; text past the end is dropped.
struct Line {
    /// The bytes written so far, then unused space.
    buf: [u8; 192],
    /// How many bytes of `buf` are written.
    len: usize,
}

impl Line {
    /// Appends `bytes`.
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if let Some(dst) = self.buf.get_mut(self.len) {
                *dst = byte;
                self.len += 1;
            }
        }
    }

    /// Appends `n` in base `radix` (10 or 16), lower case, without a prefix.
    fn push_num(&mut self, mut n: usize, radix: usize) {
        let (mut digits, mut start) = ([0u8; 64], 64);
        loop {
            start -= 1;
            digits[start] = b"0123456789abcdef"[n % radix];
            n /= radix;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::guards::{register, unregister};
    use super::*;
    use std::ffi::OsStr;
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the environment of a child process: each test then runs its child role.
    const CHILD: &str = "COROSTACK_OVERFLOW_TEST_CHILD";

    /// Whether this process is a child started by [`run_child`].
    fn in_child() -> bool {
        std::env::var_os(CHILD).is_some()
    }

    /// The page size.
    fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }

    /// Maps `guard_pages` guard pages with `usable` writable bytes above them; returns the
    /// lowest address. The guard is installed like `stack.rs` does it: with
    /// `madvise(MADV_GUARD_INSTALL)` if `advise` and the advice really installs a guard (it does
    /// not under qemu-user), else with `mprotect(PROT_NONE)`. The mapping is leaked.
    fn map_stack(guard_pages: usize, usable: usize, advise: bool) -> usize {
        let guard = guard_pages * page();
        let (prot, flags) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        // SAFETY: a fresh anonymous mapping; madvise and mprotect only change pages of it, and
        // write() only reads one byte of it, failing with EFAULT if that byte is guarded.
        unsafe {
            let map = libc::mmap(ptr::null_mut(), guard + usable, prot, flags, -1, 0);
            assert_ne!(map, libc::MAP_FAILED);
            let mut pipe = [0; 2];
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let advised = advise
                && libc::madvise(map, guard, 102 /* MADV_GUARD_INSTALL */) == 0
                && libc::write(pipe[1], map, 1) == -1;
            eprintln!(
                "guard installed with {}",
                if advised { "madvise" } else { "mprotect" }
            );
            libc::close(pipe[0]);
            libc::close(pipe[1]);
            if !advised {
                assert_eq!(libc::mprotect(map, guard, libc::PROT_NONE), 0);
            }
            map as usize
        }
    }

    /// The calling thread's alternate signal stack.
    fn alt_stack() -> libc::stack_t {
        // SAFETY: all-zero is a valid stack_t; sigaltstack only writes the current one into it.
        unsafe {
            let mut alt: libc::stack_t = std::mem::zeroed();
            assert_eq!(libc::sigaltstack(ptr::null(), &mut alt), 0);
            alt
        }
    }

    /// Announces `addr` on stderr (for the parent to compare with the message), then writes to it.
    fn fault_at(addr: usize) -> ! {
        eprintln!("faulting at {addr:#x}");
        // SAFETY: not sound, on purpose: `addr` is in a PROT_NONE page, so this write faults.
        unsafe { ptr::write_volatile(addr as *mut u64, 1) };
        unreachable!("the write to {addr:#x} did not fault");
    }

    /// Never returns: recurses until the stack overflows.
    #[allow(unconditional_recursion)]
    fn recurse(depth: usize) -> usize {
        let mut frame = [depth as u8; 512];
        std::hint::black_box(&mut frame);
        recurse(depth + 1) + frame[7] as usize
    }

    /// Runs the test `name` of this module alone in a child process of this test binary, and
    /// checks that it died by `signal` (or, for `None`, exited successfully) within two minutes;
    /// returns its stderr. Where the binary cannot be executed directly (an aarch64 test binary
    /// under qemu-user without binfmt_misc: exec fails with ENOEXEC, or, from a static binary, the
    /// child exits with 127), it runs under qemu-user instead: `COROSTACK_RUNNER` (which
    /// `.ci/cross` sets: qemu-user's name is not always the arch's, `qemu-ppc64le` for
    /// powerpc64le), else `qemu-<arch>`.
    fn run_child(name: &str, signal: Option<c_int>) -> String {
        let exe = std::env::current_exe().unwrap();
        let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
        let qemu = std::env::var("COROSTACK_RUNNER")
            .unwrap_or_else(|_| format!("qemu-{}", std::env::consts::ARCH));
        for runner in [None, Some(qemu.as_str())] {
            let mut command = Command::new(runner.map_or(exe.as_os_str(), OsStr::new));
            command.args(runner.map(|_| &exe)).arg(&test);
            command
                .args(["--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1");
            let spawned = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
            let mut child = match spawned {
                Err(e) if runner.is_none() && e.raw_os_error() == Some(libc::ENOEXEC) => continue,
                spawned => spawned.expect("cannot run the child"),
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            let status = loop {
                match child.try_wait().unwrap() {
                    Some(status) => break status,
                    None if Instant::now() > deadline => {
                        let _ = child.kill();
                        panic!("child {test} still runs after two minutes");
                    }
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            if runner.is_none() && status.code() == Some(127) {
                continue;
            }
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            let (died_by, ok) = (status.signal(), status.success());
            assert!(
                died_by == signal && (signal.is_some() || ok),
                "child {test}: {status:?}, stderr:\n{stderr}"
            );
            return stderr;
        }
        panic!("cannot run {}, not even under {qemu}", exe.display());
    }

    /// The address the child announced with [`fault_at`].
    fn announced(stderr: &str) -> &str {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("faulting at "))
            .expect("no fault address")
    }

    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn fault_in_a_guard_is_reported() {
        if in_child() {
            let guard = map_stack(1, 64 * 1024, true);
            register(guard, page(), 64 * 1024);
            install();
            fault_at(guard + page() - 8);
        }
        let stderr = run_child("fault_in_a_guard_is_reported", Some(libc::SIGABRT));
        let mut at = announced(&stderr).to_owned();
        // s390x reports a fault's address to the page only (the kernel's
        // si_addr is the translation-exception identification's page,
        // `__FAIL_ADDR_MASK`): the report names the guard page's start.
        if cfg!(target_arch = "s390x") {
            let addr = usize::from_str_radix(at.trim_start_matches("0x"), 16).unwrap();
            at = format!("{:#x}", addr & !(page() - 1));
        }
        let expected = format!(
            "corostack: coroutine stack overflow (stack of 65536 bytes; the fault hit its guard page at {at}), aborting\n",
        );
        assert!(stderr.contains(&expected), "{stderr}");
    }

    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn fault_in_a_longer_guard_is_reported() {
        if in_child() {
            let guard = map_stack(3, 64 * 1024, false);
            register(guard, 3 * page(), 131072);
            install();
            fault_at(guard + 2 * page() + 16);
        }
        let stderr = run_child("fault_in_a_longer_guard_is_reported", Some(libc::SIGABRT));
        assert!(
            stderr.contains("coroutine stack overflow (stack of 131072 bytes"),
            "{stderr}"
        );
        assert!(stderr.contains(announced(&stderr)), "{stderr}");
    }

    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn other_faults_are_passed_on() {
        if in_child() {
            let guard = map_stack(1, 64 * 1024, true);
            register(guard, page(), 64 * 1024);
            install();
            let other = map_stack(1, page(), false);
            fault_at(other + 8);
        }
        let stderr = run_child("other_faults_are_passed_on", Some(libc::SIGSEGV));
        assert!(!stderr.contains("coroutine stack overflow"), "{stderr}");
    }

    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn unregistered_guards_are_passed_on() {
        if in_child() {
            let guard = map_stack(1, 64 * 1024, true);
            register(guard, page(), 64 * 1024);
            unregister(guard);
            install();
            fault_at(guard + 8);
        }
        let stderr = run_child("unregistered_guards_are_passed_on", Some(libc::SIGSEGV));
        assert!(!stderr.contains("coroutine stack overflow"), "{stderr}");
    }

    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn std_still_reports_thread_stack_overflows() {
        if in_child() {
            install();
            recurse(0);
        }
        let stderr = run_child(
            "std_still_reports_thread_stack_overflows",
            Some(libc::SIGABRT),
        );
        assert!(stderr.contains("has overflowed its stack"), "{stderr}");
        assert!(!stderr.contains("coroutine stack overflow"), "{stderr}");
    }

    /// A real overflow, with the stack pointer in the guard, on a thread that has no alternate
    /// signal stack until `install` maps one: a pthread running on a registered, guarded stack.
    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn overflow_on_a_thread_without_alt_stack_is_reported() {
        /// The thread: installs, checks it now has an alternate stack, and overflows.
        extern "C" fn overflow(_: *mut c_void) -> *mut c_void {
            install();
            assert_eq!(
                alt_stack().ss_flags & libc::SS_DISABLE,
                0,
                "install gave no alternate stack"
            );
            recurse(0);
            null_mut()
        }
        if in_child() {
            let usable = 256 * 1024;
            let guard = map_stack(1, usable, true);
            register(guard, page(), usable);
            // SAFETY: the attributes are initialised before use, and the thread's stack is a
            // mapping of `usable` writable bytes that is never unmapped.
            unsafe {
                let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                let mut thread: libc::pthread_t = std::mem::zeroed();
                assert_eq!(libc::pthread_attr_init(&mut attr), 0);
                let stack = (guard + page()) as *mut c_void;
                assert_eq!(libc::pthread_attr_setstack(&mut attr, stack, usable), 0);
                assert_eq!(
                    libc::pthread_create(&mut thread, &attr, overflow, null_mut()),
                    0
                );
                libc::pthread_join(thread, null_mut());
            }
            unreachable!("the thread did not overflow");
        }
        let stderr = run_child(
            "overflow_on_a_thread_without_alt_stack_is_reported",
            Some(libc::SIGABRT),
        );
        assert!(stderr.contains("corostack: coroutine stack overflow (stack of 262144 bytes; the fault hit its guard page at 0x"), "{stderr}");
    }

    /// The alternate stack `install` maps on a thread that had none is unmapped when it exits.
    #[test]
    #[cfg_attr(
        feature = "asan",
        ignore = "AddressSanitizer handles SIGSEGV and thread stacks itself"
    )]
    fn alt_stack_is_freed_at_thread_exit() {
        /// The thread: returns the alternate stack `install` gave it.
        extern "C" fn run(_: *mut c_void) -> *mut c_void {
            assert_ne!(
                alt_stack().ss_flags & libc::SS_DISABLE,
                0,
                "a new pthread has no alternate stack"
            );
            install();
            install();
            let alt = alt_stack();
            assert_eq!(
                alt.ss_flags & libc::SS_DISABLE,
                0,
                "install gave no alternate stack"
            );
            alt.ss_sp
        }
        if !in_child() {
            // In a child, so that no other test maps memory where the stack was.
            return assert_eq!(run_child("alt_stack_is_freed_at_thread_exit", None), "");
        }
        let mut sp = null_mut();
        // SAFETY: default attributes; `sp` receives the thread's return value.
        unsafe {
            let mut thread: libc::pthread_t = std::mem::zeroed();
            assert_eq!(
                libc::pthread_create(&mut thread, ptr::null(), run, null_mut()),
                0
            );
            assert_eq!(libc::pthread_join(thread, &mut sp), 0);
        }
        let mut resident = 0u8;
        // SAFETY: mincore only writes one byte per page of the range into `resident`.
        let rc = unsafe { libc::mincore(sp, page(), &mut resident) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (rc, errno),
            (-1, Some(libc::ENOMEM)),
            "the alternate stack is still mapped"
        );
    }

    #[test]
    fn table_registers_and_forgets_guards() {
        install(); // sets the page size that `lookup` needs
        let (page, n) = (page(), 20_000);
        // Addresses that are not canonical, so no real guard of this process is among them.
        #[cfg(target_pointer_width = "64")]
        let base = 0x7000_0000_0000_0000;
        // A 32-bit address space has no such addresses: a range reserved
        // here (PROT_NONE) for the test instead, where no real guard can lie.
        #[cfg(target_pointer_width = "32")]
        let (reserved, reserved_len) = {
            let len = (n * 8 + 1) * page;
            // SAFETY: a fresh anonymous mapping, at an address of the
            // kernel's choosing; nothing else sees it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            (p, len)
        };
        #[cfg(target_pointer_width = "32")]
        let base = reserved as usize + page;
        let guard = |i: usize| base + i * 8 * page;
        let len = |i: usize| (1 + i % 3) * page;
        for i in 0..n {
            register(guard(i), len(i), (1000 + i) * page);
        }
        for i in 0..n {
            assert_eq!(lookup(guard(i)), Some((1000 + i) * page));
            assert_eq!(lookup(guard(i) + len(i) - 1), Some((1000 + i) * page));
            assert_eq!(lookup(guard(i) + len(i)), None);
            assert_eq!(lookup(guard(i) - 1), None);
        }
        (0..n).step_by(2).for_each(|i| unregister(guard(i)));
        for i in 0..n {
            assert_eq!(
                lookup(guard(i) + 8),
                (i % 2 == 1).then_some((1000 + i) * page)
            );
        }
        (0..n)
            .step_by(2)
            .for_each(|i| register(guard(i), len(i), (5000 + i) * page));
        for i in 0..n {
            let size = if i % 2 == 0 { 5000 + i } else { 1000 + i } * page;
            assert_eq!(lookup(guard(i) + len(i) / 2), Some(size));
            unregister(guard(i));
            assert_eq!(lookup(guard(i) + len(i) / 2), None);
        }
        // SAFETY: the mapping made above, which nothing refers to any more.
        #[cfg(target_pointer_width = "32")]
        assert_eq!(unsafe { libc::munmap(reserved, reserved_len) }, 0);
    }

    #[test]
    fn numbers_are_formatted_by_hand() {
        let mut line = Line {
            buf: [0; 192],
            len: 0,
        };
        line.push(b"a ");
        line.push_num(0, 10);
        line.push(b" ");
        line.push_num(65536, 10);
        line.push(b" ");
        line.push_num(usize::MAX, 16);
        line.push(b" ");
        #[cfg(target_pointer_width = "64")]
        let (addr, expected) = (
            0x7f3a_5c1f_f000,
            &b"a 0 65536 ffffffffffffffff 7f3a5c1ff000"[..],
        );
        #[cfg(target_pointer_width = "32")]
        let (addr, expected) = (0xb7f3_c000, &b"a 0 65536 ffffffff b7f3c000"[..]);
        line.push_num(addr, 16);
        assert_eq!(&line.buf[..line.len], expected);
        (0..100).for_each(|_| line.push(b"xyz"));
        assert_eq!(line.len, 192);
    }
}
