//! Thread exit: finishing a thread's suspended coroutines while its
//! thread-locals are still alive.
//!
//! # The hazard
//!
//! A body that suspends inside `KEY.with(|d| ...)` keeps a borrow of the
//! thread-local `KEY` in a suspended frame. `LocalKey::with` relies on its
//! closure ending before the thread does; a suspended coroutine breaks
//! that. At thread exit `KEY`'s destructor runs, and afterwards either the
//! coroutine's drop (from another thread-local's destructor) unwinds the
//! body, whose destructors read `d`, or, for a `mem::forget`-ten coroutine,
//! a scoped thread the body lent `d` to goes on reading it: both read a
//! dropped value (rust-lang/unsafe-code-guidelines issue 602: Rust has no
//! sound story for stack switching and thread-locals yet).
//!
//! # What this module does (design note)
//!
//! - Every started, unfinished [`Coroutine`](crate::Coroutine) of a thread
//!   is in a per-thread intrusive list: its [`Node`] lives in the first
//!   frame of its own stack (`coroutine::entry`), which a forgotten
//!   coroutine never frees, and holds what is needed to unwind it without
//!   its handle (its link word, its stack's lowest address, a type-erased
//!   drop of its ending). Linked when the body starts, unlinked when it
//!   ends: a few stores per coroutine life, nothing per switch.
//! - At the thread's first coroutine start, the thread's *exit hook* is
//!   registered with glibc's `__cxa_thread_atexit_impl`, the function that
//!   Rust's std uses for thread-local destructors on Linux. glibc runs
//!   those callbacks last registered, first run; std registers one per
//!   thread-local, when the thread first uses it (not one for all of them:
//!   `tests/thread_exit.rs` pins this). So the hook runs before the
//!   destructor of every thread-local that the thread used before the hook
//!   was registered, and after those first used later. [`rearm`] registers
//!   it again, so that it also runs before the thread-locals used so far.
//! - The hook (once per thread: a later registration finds the work done)
//!   unwinds every listed coroutine that is suspended on its own stack, in
//!   place, forgotten or not, as a drop would: its destructors run and a
//!   `std::thread::scope` in it joins its threads while those
//!   thread-locals are alive. A handle still alive then finds its
//!   coroutine done. A panic that escapes that unwind aborts the process
//!   with a message (as a panic from a thread-local destructor does).
//! - Left alone (documented in `Coroutine`'s threat model): a coroutine
//!   suspended inside an `on_stack`/`maybe_grow` segment, one that is
//!   running (`process::exit` from inside a body), a `SendAsyncCoroutine`
//!   (its contract already forbids thread-local borrows across a suspend),
//!   coroutines started after the hook ran, and every thread where
//!   `__cxa_thread_atexit_impl` is missing (musl, glibc before 2.18): they
//!   are finished or leaked as without this module.
//!
//! A consumer that leaks suspended coroutines on purpose (the hub after
//! `shutdown_timeout`) gets this for free: the hook unwinds them at thread
//! exit, like any forgotten coroutine of the thread.

use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::arch;
use crate::context::{self, Enter, Tsan, spare_word};
use crate::sanitizer::Fiber;

/// A started, unfinished coroutine in its thread's list. It lives in the
/// first frame of the coroutine's own stack, from the body's start to its
/// end, and does not move.
pub(crate) struct Node {
    prev: Cell<*const Node>,
    next: Cell<*const Node>,
    /// The coroutine's link word (its own sp while it is suspended).
    link: *mut usize,
    /// The bounds of the coroutine's stack: its lowest address, and an
    /// address above all its frames.
    limit: usize,
    top: usize,
    /// The coroutine's ThreadSanitizer fiber (empty without it).
    fiber: Fiber,
    /// Drops the coroutine's `Ending` at the address its finished body
    /// left in the spare word.
    drop_ending: unsafe fn(usize),
}

impl Node {
    /// A node for the coroutine with this link word and stack limit.
    #[inline(always)]
    pub(crate) fn new(
        link: *mut usize,
        (limit, top): (usize, usize),
        fiber: Fiber,
        drop_ending: unsafe fn(usize),
    ) -> Node {
        Node {
            prev: Cell::new(ptr::null()),
            next: Cell::new(ptr::null()),
            link,
            limit,
            top,
            fiber,
            drop_ending,
        }
    }

    /// Whether the coroutine is suspended on its own stack: its saved sp
    /// lies in its stack, below this node (its first frame). A running
    /// coroutine's link word holds its resumer's sp, which is never on the
    /// coroutine's own stack (nothing runs there while the coroutine waits
    /// in a resume of its own; a coroutine cannot resume itself).
    fn suspended_here(&self) -> bool {
        // SAFETY: the link word is a word of the coroutine's stack, which
        // stays mapped while the node is listed (see `Node`).
        let sp = unsafe { self.link.read() };
        (self.limit..ptr::from_ref(self).addr()).contains(&sp)
    }
}

/// Where this thread is in its life, as far as coroutines are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No coroutine has started on this thread yet: no hook.
    Unhooked,
    /// The hook is registered (or cannot be: no `__cxa_thread_atexit_impl`).
    Hooked,
    /// The hook ran (or runs): the thread is ending.
    Exiting,
}

thread_local! {
    /// This thread's phase. No destructor (a `const` `Cell` of a `Copy`
    /// type), so it is there for every thread-local destructor.
    static PHASE: Cell<Phase> = const { Cell::new(Phase::Unhooked) };
    /// The first node of this thread's list (null when empty). No
    /// destructor either.
    static HEAD: Cell<*const Node> = const { Cell::new(ptr::null()) };
}

/// Links `node` into this thread's list, registering the exit hook at the
/// thread's first coroutine start.
///
/// # Safety
/// `node` stays where it is, alive, until [`unlink`] is called with it on
/// this thread.
#[inline(always)]
pub(crate) unsafe fn link(node: &Node) {
    if PHASE.get() == Phase::Unhooked {
        hook();
    }
    let head = HEAD.get();
    node.next.set(head);
    // SAFETY: listed nodes are alive (the caller's promise for each).
    if let Some(head) = unsafe { head.as_ref() } {
        head.prev.set(node);
    }
    HEAD.set(node);
}

/// Takes `node` out of this thread's list.
///
/// # Safety
/// `node` was linked by [`link`] on this thread and not unlinked since.
#[inline(always)]
pub(crate) unsafe fn unlink(node: &Node) {
    let (prev, next) = (node.prev.get(), node.next.get());
    // SAFETY: listed nodes are alive.
    match unsafe { prev.as_ref() } {
        Some(prev) => prev.next.set(next),
        None => HEAD.set(next),
    }
    // SAFETY: as above.
    if let Some(next) = unsafe { next.as_ref() } {
        next.prev.set(prev);
    }
}

/// Takes out of this thread's list the coroutine whose frames are being
/// abandoned (`force_reset`, a trap), if it is listed: its node's address
/// is in the spare word of its stack (see `coroutine::entry`), which this
/// clears.
///
/// # Safety
/// `link` is the link word of a started, unfinished coroutine of this
/// thread that is not running, or that trapped.
pub(crate) unsafe fn unlink_abandoned(link: *mut usize) {
    let word = spare_word(link);
    // SAFETY: the spare word of a live coroutine's stack; while the body
    // lives it holds its node's address, or 0.
    let node = unsafe { word.read() };
    if node != 0 {
        // SAFETY: a listed node, alive in the abandoned frames until now.
        unsafe {
            unlink(&*ptr::with_exposed_provenance::<Node>(node));
            word.write(0);
        }
    }
}

/// Registers this thread's exit hook again, now, so that it runs before
/// the destructor of every thread-local this thread has used so far (see
/// the threat model of [`Coroutine`](crate::coroutine#thread-locals)):
/// call it after the first use of the thread-locals that your coroutines
/// hold borrows of across a suspend. Each call costs one small allocation,
/// kept until the thread ends: call it once per thread, not per coroutine.
///
/// Returns whether the hook is registered: `false` where the C library
/// lacks `__cxa_thread_atexit_impl` (musl, glibc before 2.18), and once the
/// hook has run (during thread-local destruction).
///
/// ```
/// use std::cell::RefCell;
/// thread_local!(static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) });
///
/// std::thread::spawn(|| {
///     NAMES.with(|n| n.borrow_mut().push("first".into())); // first use
///     assert!(corostack::thread_exit::rearm());
///     // ... coroutines that suspend inside NAMES.with ...
/// })
/// .join()
/// .unwrap();
/// ```
pub fn rearm() -> bool {
    if PHASE.get() == Phase::Exiting {
        return false;
    }
    PHASE.set(Phase::Hooked);
    register()
}

/// The thread's first coroutine start: registers the hook.
#[cold]
#[inline(never)]
fn hook() {
    // Once, whether or not the C library has the function: a thread
    // without it is not asked again at every start.
    PHASE.set(Phase::Hooked);
    register();
}

/// `__cxa_thread_atexit_impl(func, obj, dso_symbol)`.
type AtExitImpl =
    unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, *mut c_void) -> i32;

/// Registers [`at_thread_exit`] with glibc; false without the function.
fn register() -> bool {
    /// The function's address: 0 not looked up yet, 1 absent.
    static IMPL: AtomicUsize = AtomicUsize::new(0);
    /// An address inside this crate's object, so that the C library knows
    /// which object the callback belongs to (and keeps it loaded).
    static ANCHOR: u8 = 0;
    let mut f = IMPL.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no
        // other precondition.
        let found =
            unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__cxa_thread_atexit_impl".as_ptr()) };
        f = if found.is_null() { 1 } else { found.addr() };
        IMPL.store(f, Ordering::Relaxed);
    }
    if f == 1 {
        return false;
    }
    // SAFETY: `f` is glibc's `__cxa_thread_atexit_impl` (found by its
    // name), whose signature is `AtExitImpl`.
    let f = unsafe { std::mem::transmute::<usize, AtExitImpl>(f) };
    let anchor = ptr::from_ref(&ANCHOR).cast_mut().cast();
    // SAFETY: the callback takes no argument that could dangle; the anchor
    // is a static of this object.
    unsafe { f(at_thread_exit, ptr::null_mut(), anchor) == 0 }
}

/// The exit hook: finishes this thread's suspended coroutines.
unsafe extern "C" fn at_thread_exit(_: *mut c_void) {
    if PHASE.get() == Phase::Exiting {
        // A registration made earlier than the one that ran first.
        return;
    }
    PHASE.set(Phase::Exiting);
    if panic::catch_unwind(AssertUnwindSafe(finish_suspended)).is_err() {
        eprintln!(
            "corostack: a panic escaped the unwind of a coroutine suspended at thread exit \
             (from one of its destructors); aborting"
        );
        std::process::abort();
    }
}

/// Unwinds every listed coroutine suspended on its own stack, until none
/// is left (the unwinds may start, suspend or finish other coroutines).
fn finish_suspended() {
    while let Some(node) = first_suspended() {
        if std::thread::panicking() {
            // A coroutine of this thread is suspended inside a destructor
            // run by its own panic: a forced unwind now would abort anyway.
            eprintln!(
                "corostack: at thread exit, a coroutine is suspended in the middle of an \
                 unwind, so the thread's suspended coroutines cannot be unwound before its \
                 thread-locals are destroyed; aborting"
            );
            std::process::abort();
        }
        // What the unwind needs, read before the node's frame goes.
        let (link, fiber, drop_ending) = (node.link, node.fiber, node.drop_ending);
        let enter = Enter {
            bounds: Some((node.limit, node.top - node.limit)),
            tsan: Tsan::Resume(fiber),
        };
        // SAFETY: the coroutine is suspended on its own stack (checked),
        // alive (listed), and resumed by nothing else now: its handle, if
        // any, is not running (we are, on this thread). The word 0 asks its
        // pending suspend to unwind, as `Coroutine`'s drop does; its entry
        // unlinks the node and comes back with 0 once the body is finished.
        let back = unsafe { context::switch(0, link.read(), link, enter) };
        debug_assert_eq!(back.word, 0, "a coroutine being unwound yielded");
        // SAFETY: the finished body left the address of its ending in the
        // spare word; the dead sp in the link word marks it done for its
        // handle, which then neither resumes nor unwinds it again.
        unsafe {
            let ending = spare_word(link).read();
            link.write(arch::dead_sp());
            drop_ending(ending);
        }
    }
}

/// The first listed coroutine suspended on its own stack.
fn first_suspended() -> Option<&'static Node> {
    let mut n = HEAD.get();
    // SAFETY: listed nodes are alive, and stay so until their coroutine
    // finishes, which the caller waits for before looking again.
    while let Some(node) = unsafe { n.as_ref() } {
        if node.suspended_here() {
            return Some(node);
        }
        n = node.next.get();
    }
    None
}
