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
//!   is in a per-thread circular intrusive list: its `Node` lives at the
//!   top of its own stack, above its first frame (written there with the
//!   closure by `Coroutine::with_stack`: one word, the stack's lowest
//!   address), which a forgotten coroutine never frees; its link word is
//!   right below it. The entry links it when the body starts and unlinks
//!   it when the body ends: about two dozen instructions per coroutine
//!   life, nothing per switch. `force_reset` and a trap, which abandon the
//!   frames, unlink it first.
//! - At the thread's first coroutine start, the thread's *exit hook* is
//!   registered: the first use of a thread-local of this module whose
//!   destructor is the hook. std registers a thread-local's destructor
//!   when the thread first uses it, and runs them last registered, first
//!   run (on glibc, one `__cxa_thread_atexit_impl` call per thread-local,
//!   run in that order by glibc; in a statically linked program, from
//!   std's own list under one pthread key, in the same order:
//!   `tests/thread_exit.rs` pins it, natively and in CI's static builds).
//!   So the hook runs before the destructor of every thread-local that the
//!   thread used before the hook was registered, and after those first
//!   used later. [`rearm`] registers it again (the next of 16 such
//!   thread-locals), so that it also runs before the thread-locals used so
//!   far.
//! - On Windows a TLS callback of this module runs the hook before std's
//!   callback runs any thread-local destructor (see `windows` below): the
//!   registrations' order does not hold there.
//! - The hook (once per thread: a later registration finds the work done)
//!   unwinds every listed coroutine that is suspended on its own stack, in
//!   place, forgotten or not, with the forced unwind a drop runs (not
//!   where a drop would: see `Coroutine`'s threat model): its destructors
//!   run and a `std::thread::scope` in it joins its threads while those
//!   thread-locals are alive. The hook takes the node out of the list and
//!   marks it; the entry then drops the body's ending itself (the hook
//!   does not know its type). A handle still alive then finds its
//!   coroutine done. A panic that escapes that unwind aborts the process
//!   with a message (as a panic from a thread-local destructor does), and
//!   so does a resume or drop of the coroutine through its handle during
//!   that unwind, by its destructors or by code they run (another
//!   coroutine, a scheduler's loop): the handle is not borrowed then (the
//!   hook, not the handle, runs it), and the hook cannot tell who did it.
//!   The hook does not look at `thread::panicking()`, which counts the
//!   thread's unwinds, not a coroutine's (it is true inside an `exit`
//!   called from a panic hook): a forced unwind is a nested unwind on the
//!   coroutine's stack, which Rust allows, and only that of a coroutine
//!   suspended in a destructor run by its own unwind aborts (Rust's rule),
//!   as its drop would.
//! - Left alone (documented in `Coroutine`'s threat model): a coroutine
//!   suspended inside an `on_stack`/`maybe_grow` segment, or with less
//!   than `context::ENTRY_RESERVE` of its stack left, one that is
//!   running (`process::exit` from inside a body), a `SendAsyncCoroutine`
//!   (its contract already forbids thread-local borrows across a suspend),
//!   and coroutines started after the hook ran: they are finished or
//!   leaked as without this module. Where std runs no thread-local
//!   destructor (the main thread of a statically linked glibc program at
//!   `exit`), the hook does not run either, and nothing of the thread dies.
//!
//! A consumer that leaks suspended coroutines on purpose (the hub after
//! `shutdown_timeout`) has them unwound by the hook at thread exit, like
//! any forgotten coroutine of the thread (if the hook runs before the
//! consumer's own exit guard: the hub's aborts first unless a `rearm`
//! came after the leak), long after the consumer that ran them is gone:
//! their destructors must not reach it (the hub's guards check that their
//! hub still runs on the thread). One of them suspended in the middle of
//! an unwind (a killed coroutine whose destructors wait) ends the process
//! when the hook's forced unwind reaches it: that unwind escapes a
//! destructor during unwinding, which Rust aborts ("panic in a destructor
//! during cleanup"), before any thread-local its frames borrow dies.

use std::cell::Cell;
use std::mem::{self, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use crate::arch;
use crate::context::{self, Enter, Tsan};
use crate::sanitizer::Fiber;

/// A coroutine's entry in its thread's list: the head of what
/// `Coroutine::with_stack` stores at the top of the coroutine's stack
/// (right above its first frame, where the link word says), written once
/// there (its `limit` only), linked while the body lives. Frames never
/// reach it, and it does not move.
#[repr(C)]
pub(crate) struct Node {
    /// First, so that the node's address (the closure's, which the entry
    /// holds) is that of its links: no address to compute when it links
    /// them.
    links: Links,
    /// The lowest address of the coroutine's stack; 0 for a coroutine left
    /// out of the list, [`HOOK_FINISHES`] for one the hook unwinds.
    limit: Cell<usize>,
    /// The coroutine's ThreadSanitizer fiber (empty without it).
    fiber: Fiber,
}

/// The two links of a circular list whose head is the thread's [`LIST`]:
/// set by [`link`], uninitialised before (so a coroutine's creation writes
/// one word of its node).
#[repr(C)]
struct Links {
    prev: Cell<MaybeUninit<*const Links>>,
    next: Cell<MaybeUninit<*const Links>>,
}

impl Links {
    /// Links these links to themselves: a one-element circle, which
    /// [`unlink`] leaves as it is.
    fn link_to_self(&self) {
        let me = ptr::from_ref(self);
        self.prev.set(MaybeUninit::new(me));
        self.next.set(MaybeUninit::new(me));
    }
}

/// `Node::limit` of a coroutine that the exit hook took out of the list to
/// unwind it: its entry drops its ending itself (nobody takes it).
const HOOK_FINISHES: usize = usize::MAX;

impl Node {
    /// The node of a new coroutine on a stack whose lowest address is
    /// `limit`.
    #[inline(always)]
    pub(crate) fn new(limit: usize, fiber: Fiber) -> Node {
        Node {
            limit: Cell::new(limit),
            links: Links {
                prev: Cell::new(MaybeUninit::uninit()),
                next: Cell::new(MaybeUninit::uninit()),
            },
            fiber,
        }
    }

    /// The node of the coroutine whose link word is `link`.
    ///
    /// # Safety
    /// `link` is the link word of a live coroutine made by
    /// `Coroutine::with_stack`.
    #[inline(always)]
    pub(crate) unsafe fn at<'a>(link: *mut usize) -> &'a Node {
        // SAFETY: the node begins where the frames end, `LINK_OFFSET`
        // above the link word (see `context::link_word`), alive with the
        // stack.
        unsafe { &*ptr::with_exposed_provenance::<Node>(link.addr() + arch::LINK_OFFSET) }
    }

    /// The node whose links are at `links`.
    ///
    /// # Safety
    /// `links` are those of a listed node (not the list's head).
    unsafe fn of<'a>(links: *const Links) -> &'a Node {
        // SAFETY: `links` is the node's first field (`repr(C)`).
        unsafe { &*links.byte_sub(mem::offset_of!(Node, links)).cast::<Node>() }
    }

    /// Leaves the coroutine out of the list (before it starts, or once its
    /// frames are abandoned): its links point at themselves, so that an
    /// [`unlink`] of it changes nothing and needs no check of its own.
    pub(crate) fn unlist(&self) {
        self.limit.set(0);
        self.links.link_to_self();
    }

    /// The coroutine's link word.
    fn link_word(&self) -> *mut usize {
        context::link_word(ptr::from_ref(self).expose_provenance())
    }

    /// Whether the hook can unwind the coroutine: it is suspended on its
    /// own stack (its saved sp lies in its stack, below this node, its
    /// frames' top), with room left there for the forced unwind (the
    /// stack that `context::ENTRY_RESERVE` counts for one; with less, the
    /// unwind would hit the guard page, as a drop would). A running
    /// coroutine's link word holds its resumer's sp, which is never on the
    /// coroutine's own stack (nothing runs there while the coroutine waits
    /// in a resume of its own; a coroutine cannot resume itself).
    fn unwindable(&self) -> bool {
        // SAFETY: the link word is a word of the coroutine's stack, which
        // stays mapped while the node is listed.
        let sp = unsafe { self.link_word().read() };
        let low = self.limit.get().saturating_add(context::ENTRY_RESERVE);
        (low..ptr::from_ref(self).addr()).contains(&sp)
    }
}

/// Where this thread is in its life, as far as coroutines are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No coroutine has started on this thread yet: no hook.
    Unhooked,
    /// The hook is registered.
    Hooked,
    /// The hook ran (or runs): the thread is ending.
    Exiting,
}

thread_local! {
    /// This thread's phase. No destructor (a `const` `Cell` of a `Copy`
    /// type), so it is there for every thread-local destructor.
    static PHASE: Cell<Phase> = const { Cell::new(Phase::Unhooked) };
    /// The head of this thread's circular list of nodes: its links point
    /// at itself when the list is empty, and are null before the thread's
    /// first coroutine start (which registers the hook). No destructor
    /// either.
    static LIST: Head = const {
        Head {
            links: Links {
                prev: Cell::new(MaybeUninit::new(ptr::null())),
                next: Cell::new(MaybeUninit::new(ptr::null())),
            },
            this: Cell::new(ptr::null()),
        }
    };
}

/// The head of a thread's list: its links, and their address once they
/// are initialised (null before), which a start loads rather than
/// computes (one load, where the address of a thread-local is the thread
/// pointer's load and an addition), and tests for the thread's first
/// start.
struct Head {
    links: Links,
    this: Cell<*const Links>,
}

/// This thread's list head.
#[inline(always)]
fn head() -> *const Links {
    LIST.with(|list| ptr::from_ref(&list.links))
}

/// Links `node` into this thread's list, registering the exit hook at the
/// thread's first coroutine start. A node left out of the list
/// ([`Node::unlist`]) is not linked: its coroutine's entry does not call
/// this (a constant of its type), so the start tests nothing for it.
///
/// # Safety
/// `node` stays where it is, alive, until [`unlink`] is called with it on
/// this thread; it was not left out of the list.
#[inline(always)]
pub(crate) unsafe fn link(node: &Node) {
    debug_assert_ne!(node.limit.get(), 0, "a node left out of the list");
    let mut head = LIST.with(|list| list.this.get());
    if head.is_null() {
        head = hook();
    }
    // SAFETY: the head is this thread's, alive, and initialised (`this`
    // is set): its links point at nodes or at itself.
    let first = unsafe { (*head).next.get().assume_init() };
    let links = &node.links;
    links.prev.set(MaybeUninit::new(head));
    links.next.set(MaybeUninit::new(first));
    // SAFETY: `first` is the head or a listed node's links, alive (the
    // callers' promise for each).
    unsafe {
        (*first).prev.set(MaybeUninit::new(links));
        (*head).next.set(MaybeUninit::new(links));
    }
}

/// Takes `node` out of this thread's list (if it is listed); returns
/// whether the exit hook had taken it out to unwind it, in which case the
/// caller drops its own ending. A node left out of the list (`unlist`) or
/// taken out by the hook is linked to itself, which this leaves as it is:
/// no check needed.
///
/// # Safety
/// `node` was linked by [`link`] on this thread, or left out by
/// [`Node::unlist`], and not unlinked since (but by the hook, or by
/// `unlist`, which leave it linked to itself).
#[inline(always)]
pub(crate) unsafe fn unlink(node: &Node) -> bool {
    let links = &node.links;
    // SAFETY: a linked node's links were set by `link` (and by the unlinks
    // of its neighbours since); they point at live links.
    unsafe {
        let (prev, next) = (
            links.prev.get().assume_init(),
            links.next.get().assume_init(),
        );
        (*prev).next.set(MaybeUninit::new(next));
        (*next).prev.set(MaybeUninit::new(prev));
    }
    node.limit.get() == HOOK_FINISHES
}

/// Takes out of this thread's list the coroutine whose frames are being
/// abandoned (`force_reset`, a trap), if it is listed.
///
/// # Safety
/// `link` is the link word of a started, unfinished coroutine of this
/// thread that is not running, or that trapped.
pub(crate) unsafe fn unlink_abandoned(link: *mut usize) {
    // SAFETY: as the caller promises: its node is linked (unless left out).
    unsafe {
        let node = Node::at(link);
        let _ = unlink(node);
        node.unlist();
    }
}

/// Registers this thread's exit hook again, now, so that it runs before
/// the destructor of every thread-local this thread has used so far (see
/// the threat model of [`Coroutine`](crate::coroutine#thread-locals)):
/// call it after the first use of the thread-locals that your coroutines
/// hold borrows of across a suspend. Each call uses one of 16
/// registrations a thread has (its first coroutine start uses one): call
/// it once per thread, not per coroutine.
///
/// Returns whether the hook is registered: `false` once the thread has
/// used all 16, and once the hook has run (during thread-local
/// destruction).
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
    // The list is left as it is: a thread's first coroutine start, which
    // finds it uninitialised, registers the hook again after this call
    // (the thread-locals used in between count as used before it).
    PHASE.set(Phase::Hooked);
    register()
}

/// Whether this thread is ending: its exit hook has run or runs now (it
/// is unwinding the thread's suspended coroutines, or has). A scheduler
/// whose tasks the hook unwinds asks it before suspending a task into its
/// loop, which nothing will run again (the hub panics there instead).
///
/// ```
/// assert!(!corostack::thread_exit::is_exiting());
/// ```
#[must_use]
#[inline]
pub fn is_exiting() -> bool {
    PHASE.get() == Phase::Exiting
}

/// Makes this thread's list empty (its head linked to itself, and its
/// address in `this`) if it is not initialised yet; returns the head.
fn init_list() -> *const Links {
    let head = head();
    // SAFETY: this thread's head, alive; its links are initialised.
    unsafe {
        if (*head).next.get().assume_init().is_null() {
            (*head).next.set(MaybeUninit::new(head));
            (*head).prev.set(MaybeUninit::new(head));
        }
    }
    LIST.with(|list| list.this.set(head));
    head
}

/// The thread's first coroutine start: registers the hook; returns the
/// empty list's head.
#[cold]
#[inline(never)]
fn hook() -> *const Links {
    // Once, whether or not the C library has the function: a thread
    // without it is not asked again at every start. Also after a `rearm`
    // (which leaves the list uninitialised): the registration that counts
    // is the last one, and the first start must be one of them.
    let head = init_list();
    if PHASE.get() != Phase::Exiting {
        PHASE.set(Phase::Hooked);
        register();
    }
    head
}

/// How many times a thread can register the hook: its first coroutine
/// start, and `rearm` calls after it (one each).
const REGISTRATIONS: usize = 16;

/// One registration of the exit hook: a thread-local of the crate's own
/// whose destructor runs [`at_thread_exit`]. std registers a thread-local's
/// destructor when the thread first uses it, and runs them last
/// registered, first run (on glibc through `__cxa_thread_atexit_impl`, one
/// call per thread-local; where that function is missing, statically
/// linked programs included, from std's own list under one pthread key, in
/// the same order), so the first use of one of these is what registers the
/// hook, in std's order, whatever its mechanism.
struct Registration;

impl Drop for Registration {
    fn drop(&mut self) {
        at_thread_exit();
    }
}

/// The thread-locals that [`register`] uses, one per registration
/// (`thread_local!` makes each a `LocalKey`, registered at most once a
/// thread).
macro_rules! registrations {
    ($($key:ident)*) => {
        thread_local! {
            $(static $key: Registration = const { Registration };)*
        }
        /// The keys in the order [`register`] uses them.
        static KEYS: [&std::thread::LocalKey<Registration>; REGISTRATIONS] = [$(&$key),*];
    };
}

registrations!(R0 R1 R2 R3 R4 R5 R6 R7 R8 R9 R10 R11 R12 R13 R14 R15);

thread_local! {
    /// How many of [`KEYS`] this thread has used. No destructor.
    static USED: Cell<usize> = const { Cell::new(0) };
}

/// Registers the hook again, now (the next unused key's first use); false
/// once the thread has used all [`REGISTRATIONS`], or when thread-local
/// destruction has already passed that key.
fn register() -> bool {
    #[cfg(windows)]
    windows::enable();
    let used = USED.get();
    let Some(key) = KEYS.get(used) else {
        return false;
    };
    USED.set(used + 1);
    key.try_with(|_| ()).is_ok()
}

/// The one-line report and abort of a panic that escaped the unwind of a
/// coroutine that the exit hook finishes.
#[cold]
pub(crate) fn panicked_in_hook() -> ! {
    eprintln!(
        "corostack: a panic escaped the unwind of a coroutine suspended at thread exit \
         (from one of its destructors); aborting"
    );
    std::process::abort();
}

/// The exit hook: finishes this thread's suspended coroutines (run by
/// the destructor of the thread's last registration, in std's order).
fn at_thread_exit() {
    // `try_with`: on Windows a registration's destructor can run after
    // std has destroyed `PHASE` (key-based thread-locals die in the
    // process's key order), when the callback has done the work already.
    if PHASE.try_with(Cell::get) != Ok(Phase::Hooked) {
        // A registration made earlier than the one that ran first (or,
        // on Windows, any: the callback ran the hook).
        return;
    }
    PHASE.set(Phase::Exiting);
    if panic::catch_unwind(AssertUnwindSafe(finish_suspended)).is_err() {
        panicked_in_hook();
    }
}

/// Unwinds every listed coroutine suspended on its own stack, until none
/// is left (the unwinds may start, suspend or finish other coroutines).
fn finish_suspended() {
    // Whatever `thread::panicking()` says: it counts the thread's unwinds,
    // not this stack's. True here when the thread calls `exit` from a
    // panic hook or from a destructor during an unwind (the hook runs
    // inside `exit`), or while any coroutine or greenlet of the thread is
    // suspended in the middle of its own unwind. A forced unwind is a
    // nested unwind on the coroutine's own stack, caught by its entry,
    // which Rust allows; only for a coroutine suspended in a destructor
    // run by its own unwind does it escape that destructor, and the
    // process aborts by Rust's rule, as that coroutine's drop would.
    // std has taken the thread's alternate signal stack away by now: an
    // overflow in a destructor that the unwinds run gets one to be
    // reported from (mapped for the first unwind, freed after the last).
    let mut alt_stack = None;
    while let Some(node) = first_suspended() {
        alt_stack.get_or_insert_with(crate::stack::alt_stack_for_exit);
        let (link, limit) = (node.link_word(), node.limit.get());
        let enter = Enter {
            bounds: Some((limit, ptr::from_ref(node).addr() - limit)),
            tsan: Tsan::Resume(node.fiber),
        };
        // Out of the list now, linked to itself (so that its entry's
        // unlink changes nothing); seeing the mark, its entry drops its own
        // ending (of a type only it knows) when the unwind is over.
        // SAFETY: listed on this thread.
        let _ = unsafe { unlink(node) };
        node.limit.set(HOOK_FINISHES);
        node.links.link_to_self();
        // SAFETY: the coroutine is suspended on its own stack (checked),
        // alive (listed), and resumed by nothing else now: its handle, if
        // any, is not running (we are, on this thread). The word 0 asks its
        // pending suspend to unwind, as `Coroutine`'s drop does; its entry
        // unlinks the node and comes back with 0 once the body is finished.
        let back = unsafe { context::switch(0, link.read(), link, enter) };
        if back.word != 0 || node.limit.get() != 0 {
            // Not its entry's last switch (which clears the mark): its
            // handle resumed or dropped it (the switch came here, where
            // its link word pointed) while the hook, not the handle, was
            // running it; which code did is not known: its destructors,
            // or code they ran (another coroutine, a scheduler's loop, a
            // greenlet). Its frames are in the middle of that call:
            // nothing can go on.
            eprintln!(
                "corostack: a coroutine that the thread's exit hook was unwinding was resumed \
                 or dropped through its handle during that unwind (by its destructors, or by \
                 code they ran, such as a scheduler's loop); aborting"
            );
            std::process::abort();
        }
        // SAFETY: the link word of the finished coroutine's stack; the
        // dead sp there marks it done for its handle, which then neither
        // resumes nor unwinds it again, nor takes its ending (dropped).
        unsafe { link.write(arch::dead_sp()) };
    }
}

/// The first listed coroutine suspended on its own stack.
fn first_suspended() -> Option<&'static Node> {
    let head = init_list();
    // SAFETY: the list's links are initialised and point at live links:
    // the head's, or those of listed nodes, alive until their coroutine
    // finishes, which the caller waits for before looking again.
    unsafe {
        let mut n = (*head).next.get().assume_init();
        while n != head {
            let node = Node::of(n);
            if node.unwindable() {
                return Some(node);
            }
            n = (*n).next.get().assume_init();
        }
    }
    None
}

/// Windows: the hook runs from a TLS callback of the crate's own, before
/// std's.
///
/// std's thread-local destructors run from its TLS callback in section
/// `.CRT$XLB`. On `x86_64-pc-windows-gnu`, which has no `#[thread_local]`,
/// they are key-based and run in the process-wide order of their keys'
/// creation (newest first), not in the thread's order of first use, so a
/// registration (a thread-local of [`KEYS`]) cannot order the hook before
/// the thread-locals that the thread's coroutines borrow. The loader runs
/// the TLS callbacks in the order of their sections' names (the linkers
/// sort `.CRT$XL*` by name: MinGW's `SORT(.CRT$XL*)`, MSVC's grouped
/// sections), so this one, in `.CRT$XLAB`, between the C runtime's start
/// marker `.CRT$XLA` and std's `.CRT$XLB`, runs first: the hook runs before
/// the destructor of every thread-local of the thread, whenever it was
/// first used. The registrations stay (their destructors find the work
/// done) and so does [`rearm`], which is not needed there.
#[cfg(windows)]
mod windows {
    use core::ffi::c_void;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{PHASE, Phase};

    /// `DLL_PROCESS_DETACH` and `DLL_THREAD_DETACH` (winnt.h): the reasons
    /// std's callback runs the thread-local destructors for, the first for
    /// the thread that ends the process.
    const DETACH: [u32; 2] = [0, 3];

    /// Whether any thread of the process has registered the hook: until
    /// then the callback touches no thread-local (a key-based one would be
    /// allocated for every ending thread).
    static USED: AtomicBool = AtomicBool::new(false);

    unsafe extern "C" {
        /// The C runtime's TLS directory: the linker keeps the callbacks
        /// only when something refers to it.
        #[link_name = "_tls_used"]
        static TLS_USED: u8;
    }

    /// The callback's slot, in the section the loader reads callbacks from.
    #[unsafe(link_section = ".CRT$XLAB")]
    #[used]
    static CALLBACK: unsafe extern "system" fn(*mut c_void, u32, *mut c_void) = callback;

    /// Makes sure the linker keeps the TLS directory and [`CALLBACK`], and
    /// lets the callback look at the threads' phases (at a registration).
    pub(super) fn enable() {
        USED.store(true, Ordering::Relaxed);
        // SAFETY: one-byte reads of two statics (a symbol of the C runtime
        // that every Windows program has, and ours); volatile so that the
        // references stay.
        unsafe {
            core::ptr::from_ref(&TLS_USED).read_volatile();
            core::ptr::from_ref(&CALLBACK).read_volatile();
        }
    }

    /// Runs the hook of an ending thread whose hook is registered.
    ///
    /// # Safety
    /// Called by the loader only, as a TLS callback.
    unsafe extern "system" fn callback(_module: *mut c_void, reason: u32, _: *mut c_void) {
        if DETACH.contains(&reason)
            && USED.load(Ordering::Relaxed)
            && PHASE.try_with(core::cell::Cell::get) == Ok(Phase::Hooked)
        {
            super::at_thread_exit();
        }
    }
}
