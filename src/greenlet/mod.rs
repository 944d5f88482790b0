//! Greenlets: coroutines that switch explicitly to any other, passing a
//! value, as Python's `greenlet` does.
//!
//! ```
//! use corostack::greenlet::{Greenlet, current};
//!
//! let main = current::<String>();
//! let echo = Greenlet::new(move |first: String| {
//!     let second = main.switch(format!("{first}!"));
//!     format!("{second}?")
//! });
//! assert_eq!(echo.switch("hi".into()), "hi!");
//! // The body returns: its value goes to its parent, the main greenlet.
//! assert_eq!(echo.switch("so".into()), "so?");
//! assert!(echo.done());
//! ```
//!
//! # The model
//!
//! Every thread has an implicit *main* greenlet: whatever runs outside any
//! greenlet. [`Greenlet::new`] creates one, suspended and not started,
//! whose *parent* is the greenlet that created it. [`Greenlet::switch`]
//! transfers control to a greenlet at once, with one context switch and
//! no scheduler in between: an unstarted one starts with `f(value)`, a
//! suspended one sees its own pending `switch` return `value`. When `f`
//! returns, its value goes to its parent as if the parent had been switched
//! to (a dead parent hands it on to its own parent); when `f` panics, the
//! parent's pending `switch` panics with the same payload.
//!
//! # Types
//!
//! A greenlet is suspended inside a `switch::<T>` (or, before it starts,
//! waits for its body's input `T`); a switch into it must carry that `T`.
//! The handle's type says what its body takes; [`current`] and
//! [`Greenlet::parent`] give handles of the type the caller names. Any
//! mismatch is found before the switch and reported as a [`SwitchError`]
//! (or, when a body's return value cannot go to its parent, as a panic
//! there), never undefined behaviour.
//!
//! # Killing
//!
//! [`Greenlet::kill`] unwinds a greenlet's stack, so every destructor on it
//! runs, and comes back once the greenlet is dead. Dropping the last handle
//! of a started, suspended greenlet (or of one never started: its closure
//! is dropped) does the same, as Python does with `GreenletExit`. A parent
//! link counts as a handle. A body may catch the unwind with
//! `catch_unwind`, but every `switch` (and `try_switch`) it makes
//! afterwards panics again at once: a greenlet that a kill reached never
//! runs anything but its own unwinding, and its death goes back to its
//! killer, whatever its parent.
//!
//! The killer waits for that death, and only that death wakes it. The
//! destructors a kill runs may still re-enter this module; each way is
//! either carried out or refused, never lets the killer go on early:
//!
//! - **kill** another greenlet, or **drop** its last handle: it is killed
//!   from there, the destructor waiting in turn, and so on down a chain of
//!   kills.
//! - **kill a greenlet that waits in a kill** (the killer, or any killer up
//!   the chain; the main greenlet too), or **drop its last handle**: that
//!   greenlet waits for the caller's death, so the kill cannot happen now
//!   and does nothing; `kill` returns at once and the waiting greenlet goes
//!   on once its victim is dead (if its last handle went, it runs without
//!   one, see below).
//! - **kill itself**: the kill is under way, so it does nothing.
//! - **switch** anywhere (the killer included): panics with the kill's
//!   unwind, which the destructor may catch; nothing switches.
//! - **create** greenlets, **set_parent**, **parent**, **current**,
//!   [`running_id`]: work as anywhere.
//!
//! A panic that escapes a destructor while it runs during an unwind (a
//! kill's or a panic's) aborts the process, as anywhere in Rust: a
//! destructor that may run during a kill must catch what it calls that may
//! panic, a switch included. A panic raised outside an unwind while a kill
//! runs (the drop of an unstarted greenlet's closure, or a body that caught
//! the unwind and then panics) reaches the killer: its `kill` (or the drop
//! of its handle) panics with it, unless the killer is unwinding already,
//! in which case it is dropped. "Unwinding" is what
//! [`std::thread::panicking`] says, and it counts the thread's unwinds, not
//! the greenlet's: while any greenlet of the thread is suspended in the
//! middle of an unwind, it is true in all of them.
//!
//! A greenlet that drops its own last handle while it runs goes on; if it
//! then switches away with no handle made since (by [`current`], or
//! [`Greenlet::parent`] from a child) nothing can reach it: it is leaked,
//! its stack and everything on it, as `mem::forget` would. Handles are
//! reference counts, so greenlets that hold each other and nothing else (a
//! suspended greenlet with a handle to another on its stack, whose parent
//! link is the first) are leaked when the last handle from outside goes,
//! as a cycle of `Rc`s is: kill one of them to break the cycle.
//!
//! # Threat model
//!
//! A greenlet layer is one per thread: the running greenlet, a pointer in
//! a thread-local, and the thread's main greenlet. What may be running
//! when an entry point is called, and what happens then:
//!
//! - **The main greenlet's stack** (the thread's own) or **a greenlet's
//!   stack**: every entry point works as documented.
//! - **A `Coroutine`'s stack, or an `on_stack` / `maybe_grow` segment**,
//!   entered from a greenlet: the greenlet layer does not see those
//!   switches, so the greenlet that entered them is the running one, and a
//!   switch from there suspends it with the foreign frames on top (they are
//!   borrowed by the greenlet's own frames below, so they stay alive). It
//!   resumes where it left, and a kill unwinds through those frames and back
//!   onto its own stack. A scheduler that suspends its tasks from inside
//!   them must not suspend a task while a greenlet other than the one it
//!   resumed runs (see [`running_id`]).
//! - **A destructor run by a kill** (or by the drop of a last handle): on
//!   the victim's stack, which is the running greenlet and is marked
//!   killed; see [Killing](self#killing) for what it may do.
//! - **A thread-local destructor at thread exit**: on the thread's stack,
//!   the main greenlet running. The layer's own thread-locals have no
//!   destructor (but one that frees the main greenlet once nothing refers
//!   to it, and a use after it makes a fresh one), so whatever the order in
//!   which thread-locals are destroyed, a handle dropped then kills its
//!   greenlet as anywhere (its destructors run during thread exit, with
//!   whatever thread-locals are left: see [Thread-locals](self#thread-locals)
//!   for borrows of those), and every entry point works.
//! - **Another thread**: does not compile (see [Threads](self#threads)).
//!
//! ## Thread-locals
//!
//! A greenlet that switches away inside `KEY.with(|d| ...)` keeps the
//! borrow `d` in its suspended frames, which `LocalKey::with` does not
//! allow for (rust-lang/unsafe-code-guidelines issue 602). The thread's
//! exit hook that finishes suspended [`Coroutine`](crate::Coroutine)s
//! before the thread-locals die (see
//! [its threat model](crate::coroutine#thread-locals)) does not reach
//! greenlets: a suspended greenlet is killed at thread exit only when its
//! last handle goes, by whichever thread-local destructor drops it, after
//! `KEY`'s perhaps, and a leaked greenlet (a `mem::forget`-ten handle, a
//! cycle) is never killed. So the rule is stricter than for coroutines: a
//! greenlet may switch away inside `KEY.with` (or lend a borrow from it to
//! a scoped thread and switch away) only if it is dead (returned, or
//! killed by ordinary code) before the thread ends. What the layer
//! promises at thread exit is its own machinery's (the bullet above), not
//! the validity of borrows its greenlets hold. A greenlet switched to or
//! killed from a coroutine's unwind that the exit hook runs works as
//! anywhere (`tests/thread_exit.rs`).
//!
//! Entry point by entry point: [`Greenlet::new`], [`current`],
//! [`running_id`], [`Greenlet::parent`], [`Greenlet::set_parent`] and the
//! queries never switch; [`Greenlet::switch`] and
//! [`Greenlet::try_switch`] switch unless refused (a dead target, a wrong
//! type, a killer that waits, or a caller a kill reached); `kill` and the
//! drop of a last handle switch into the victim and come back when it is
//! dead, or do nothing as listed above; a greenlet's return or panic
//! switches to its nearest live ancestor, or, if a kill reached it, to its
//! killer.
//!
//! # Lifetimes and variance
//!
//! A value passed by a switch, a body's input and its return value all
//! stay on a greenlet's stack for as long as it likes, past the call that
//! passed them, and a body outlives the call that created it: so the body
//! and `T` must be `'static` everywhere: [`Greenlet::new`],
//! [`Greenlet::switch`], [`current`] and [`Greenlet::parent`] require it,
//! and no handle of a non-`'static` type can be made. A short-lived
//! reference cannot be switched in:
//!
//! ```compile_fail,E0597
//! use corostack::greenlet::Greenlet;
//! let keep = Greenlet::new(|r: &'static u32| r);
//! let short = 7u32;
//! keep.switch(&short); // `short` does not live long enough
//! ```
//!
//! nor captured by a body:
//!
//! ```compile_fail,E0597
//! let short = 7u32;
//! let r = &short;
//! let g = corostack::greenlet::Greenlet::new(move |()| assert_eq!(*r, 7));
//! g.switch(());
//! ```
//!
//! nor named in a handle to the running greenlet:
//!
//! ```compile_fail
//! fn smuggle<'a>(short: &'a u32) {
//!     // `&'a u32` must outlive 'static.
//!     let main = corostack::greenlet::current::<&'a u32>();
//! }
//! ```
//!
//! `Greenlet<T>` is invariant in `T`: its handle remembers a gate that
//! admitted a `T` (so that the next switch compares two addresses), and a
//! handle coerced to a supertype would pass values of that supertype
//! through the remembered gate. With `for<'a> fn(&'a u32)` coerced to
//! `fn(&'static u32)`, a function that keeps its argument forever would
//! reach a body that calls it with a short-lived reference. Neither that
//! coercion nor a lifetime's shrinking or growing compiles:
//!
//! ```compile_fail,E0308
//! use corostack::greenlet::Greenlet;
//! fn coerce(g: Greenlet<for<'a> fn(&'a u32)>) -> Greenlet<fn(&'static u32)> {
//!     g
//! }
//! ```
//!
//! ```compile_fail
//! use corostack::greenlet::Greenlet;
//! fn shrink<'a>(g: Greenlet<&'static u32>) -> Greenlet<&'a u32> {
//!     g
//! }
//! ```
//!
//! [`SwitchError<T>`] only gives back a value the caller owned: it is
//! covariant in `T`, as any container of a value is.
//!
//! # Threads
//!
//! Handles are neither `Send` nor `Sync`: a greenlet belongs to the thread
//! that created it, and switching to one from another thread does not
//! compile.
//!
//! ```compile_fail
//! let g = corostack::greenlet::Greenlet::new(|x: u32| x);
//! std::thread::spawn(move || g.switch(1));
//! ```

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;

mod error;
mod gate;

pub use error::SwitchError;
use gate::{DEAD, FRESH, Gate, GateOf, KILLING};

use crate::arch;
use crate::context::{self, Enter, Tsan, addr, take};
use crate::coroutine::Marker;
use crate::sanitizer::{AsanPeer, Fiber};
use crate::stack::{DefaultStack, Stack};

/// Where a greenlet is in its life. Whether a started greenlet is running
/// or suspended is not stored: it runs exactly when `CURRENT` points at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    NotStarted,
    Started,
    Dead,
}

/// The fields a switch touches, first in every [`Core`] so that `CURRENT`
/// can point at them.
#[repr(C)]
struct Hot {
    /// The saved stack pointer while suspended or not started.
    sp: Cell<usize>,
    /// What a switch into this greenlet must carry (see [`Gate`]).
    gate: Cell<&'static Gate>,
    /// The greenlet that killed this one, once the kill reached the body
    /// (null until then): later switches panic again. While it is set and
    /// this greenlet runs, `CURRENT` carries the [`SLOW`] bit. The killer
    /// waits in `kill_core` until this greenlet is dead, which keeps it
    /// alive.
    killed_by: Cell<*const Core>,
    /// Where a switch into this greenlet writes the switcher's sp: the
    /// link word at the top of its stack, which unwinders follow (for the
    /// main greenlet, a word of its own that nothing reads).
    link: Cell<*mut usize>,
}

/// The low bit of `CURRENT` (cores are aligned, so it is free): a switch
/// from the running greenlet must take the slow path, because a kill has
/// reached it (see `Hot::killed_by`), or because the thread has not used
/// greenlets yet (`CURRENT` is then null with this bit). One test of a
/// register on the fast path, no load.
const SLOW: usize = 1;

/// One greenlet, untyped: the typed [`Greenlet`] handles point at it.
#[repr(C)]
struct Core {
    /// What a switch touches; first, see [`Hot`].
    hot: Hot,
    life: Cell<Life>,
    /// Whether its body was called (a greenlet killed before it ran, or
    /// whose start was refused, has only dropped its closure).
    ran: Cell<bool>,
    parent: RefCell<Option<Handle>>,
    /// Our stack, given back (to the pool) once the greenlet is dead.
    stack: RefCell<Option<DefaultStack>>,
    /// Handles (including parent links) alive; at zero it is killed.
    handles: Cell<usize>,
    /// Is this the thread's implicit main greenlet?
    main: bool,
    /// The main greenlet's link word (see [`Hot::link`]).
    scratch: Cell<usize>,
    /// This greenlet's ThreadSanitizer fiber (empty without it).
    fiber: Fiber,
    /// This greenlet's stack bounds, for AddressSanitizer (empty without
    /// it): known at creation, or for the main greenlet learned when it is
    /// first left.
    asan: AsanPeer,
}

impl Drop for Core {
    fn drop(&mut self) {
        if !self.main {
            self.fiber.destroy();
        }
    }
}

thread_local! {
    /// The running greenlet's core (its [`Hot`] part), with the [`SLOW`]
    /// bit; null with that bit until the thread's first use. A raw pointer,
    /// so that a switch costs no reference counting: the running
    /// greenlet's core is kept alive by its own first frame (`entry` holds
    /// an `Rc` to it), or, for the main greenlet, by `MAIN`.
    ///
    /// Like `MAIN` and `MAILBOX`, it has no destructor, so it is there for
    /// every thread-local destructor at thread exit, whatever the order in
    /// which they run: a greenlet killed by one can always switch.
    static CURRENT: Cell<*const Hot> = const { Cell::new(ptr::without_provenance(SLOW)) };
    /// The thread's implicit main greenlet (from `Rc::into_raw`), null
    /// before the thread's first use; owned by `MAIN_OWNER`, or leaked.
    static MAIN: Cell<*const Core> = const { Cell::new(ptr::null()) };
    /// Frees the main greenlet's core at thread exit, if nothing needs it
    /// any more (see [`MainOwner`]).
    static MAIN_OWNER: MainOwner = const { MainOwner };
}

/// Frees the thread's main greenlet at thread exit.
struct MainOwner;

impl Drop for MainOwner {
    fn drop(&mut self) {
        let main = MAIN.with(Cell::get);
        if main.is_null() || running_ptr() != main {
            return;
        }
        // SAFETY: a non-null MAIN came from Rc::into_raw and still holds
        // its count (released only here).
        let main = unsafe { Rc::from_raw(main) };
        if Rc::strong_count(&main) == 1 {
            // Nothing else refers to it (a live greenlet would, through its
            // parent chain): free it, and let a later use (a thread-local
            // destructor that runs after this one) start over.
            MAIN.with(|m| m.set(ptr::null()));
            CURRENT.with(|c| c.set(ptr::without_provenance(SLOW)));
            drop(main);
        } else {
            // Greenlets still refer to it, and thread-local destructors
            // that run later may kill them, switching from it: it is
            // leaked, so that `CURRENT` stays valid to the end.
            let _ = Rc::into_raw(main);
        }
    }
}

/// The running greenlet's core.
#[inline(always)]
fn running_ptr() -> *const Core {
    let p = CURRENT.with(Cell::get).map_addr(|a| a & !SLOW);
    if p.is_null() { first_use() } else { p.cast() }
}

/// The thread's first use of greenlets: the main greenlet is running.
#[cold]
fn first_use() -> *const Core {
    let main = MAIN.with(Cell::get);
    let main = if main.is_null() { new_main() } else { main };
    set_running(main);
    main
}

/// Makes the thread's main greenlet, owned by `MAIN_OWNER`; or, if that
/// is already destroyed (a thread-local destructor at thread exit uses
/// greenlets after it), leaked.
#[cold]
fn new_main() -> *const Core {
    let main = Rc::new(Core {
        hot: Hot {
            sp: Cell::new(0),
            gate: Cell::new(&FRESH),
            killed_by: Cell::new(ptr::null()),
            link: Cell::new(ptr::null_mut()),
        },
        life: Cell::new(Life::Started),
        ran: Cell::new(true),
        parent: RefCell::new(None),
        stack: RefCell::new(None),
        handles: Cell::new(0),
        main: true,
        scratch: Cell::new(0),
        fiber: Fiber::current(),
        asan: AsanPeer::default(),
    });
    main.hot.link.set(main.scratch.as_ptr());
    let main = Rc::into_raw(main);
    MAIN.with(|m| m.set(main));
    // Registers the owner's destructor; after it ran, nobody frees `main`.
    let _ = MAIN_OWNER.try_with(|_| ());
    main
}

/// A new reference to the running greenlet's core.
fn running() -> Rc<Core> {
    let ptr = running_ptr();
    // SAFETY: `CURRENT` always points at the live core of the running
    // greenlet, which came from an Rc.
    unsafe {
        Rc::increment_strong_count(ptr);
        Rc::from_raw(ptr)
    }
}

/// Makes `core` the running greenlet.
#[inline(always)]
fn set_running(core: *const Core) {
    CURRENT.with(|c| c.set(core.cast()));
}

/// Marks the running greenlet `me` as reached by a kill from `killer`:
/// from now on its switches take the slow path, which panics again.
fn mark_killed(me: &Core, killer: *const Core) {
    me.hot.killed_by.set(killer);
    retag(me);
}

/// Puts the [`SLOW`] bit on `CURRENT` if the running greenlet `me` has been
/// killed (after `kill_core` brings it back from killing another).
fn retag(me: &Core) {
    if !me.hot.killed_by.get().is_null() {
        let p = ptr::from_ref(me).cast::<Hot>().map_addr(|a| a | SLOW);
        CURRENT.with(|c| c.set(p));
    }
}

/// Whether `core` is the running greenlet.
fn is_running(core: &Core) -> bool {
    ptr::eq(running_ptr(), core)
}

/// Whether `core` is a greenlet reached by a kill (running, or waiting in
/// a kill of its own; a killed greenlet cannot be suspended otherwise).
fn is_killed(core: &Core) -> bool {
    !core.hot.killed_by.get().is_null()
}

/// Whether `core` is suspended in `kill_core`, waiting for its victim to
/// die. Only its victim's death may wake it.
///
/// While a greenlet waits, only greenlets that a kill reached can run
/// (its victim, their victims, ...: a killed greenlet cannot switch), so
/// the waiting greenlets form one chain, each waiting for the next, that
/// ends at the running greenlet: a greenlet that waits always waits for
/// the caller's death, directly or through that chain.
fn waits_in_kill(core: &Core) -> bool {
    ptr::eq(core.hot.gate.get(), &KILLING) && !is_running(core)
}

/// A counted reference to a greenlet: when the last one goes, a started,
/// suspended greenlet is killed.
struct Handle(Rc<Core>);

impl Handle {
    fn new(core: Rc<Core>) -> Handle {
        core.handles.set(core.handles.get() + 1);
        Handle(core)
    }
}

impl Clone for Handle {
    fn clone(&self) -> Handle {
        Handle::new(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let n = self.0.handles.get() - 1;
        self.0.handles.set(n);
        if n == 0 && self.0.life.get() != Life::Dead && !self.0.main {
            drop_last(&self.0);
        }
    }
}

/// The last handle of a live greenlet other than a main one is gone: kill
/// it, unless it is running (it goes on; if it then switches away with no
/// handle made again, nothing can reach it and it is leaked, as
/// `mem::forget` would) or waits in a kill of its own (it waits for the
/// caller's death, see [`waits_in_kill`]: it goes on once its victim is
/// dead, as a running greenlet with no handle).
#[cold]
#[inline(never)]
fn drop_last(core: &Core) {
    if !is_running(core) && !waits_in_kill(core) {
        kill_core(core);
    }
}

/// What a switch carries. The common case, a value, costs nothing extra:
/// the switch's word is the address of the sender's `ManuallyDrop<T>` (never
/// 0). Everything else travels as a [`Mail`] in the thread's mailbox, and
/// the switch's word is 0.
enum Kind {
    /// The address of a `ManuallyDrop<T>` of the type the receiver expects
    /// (0 for "nothing": a kill's acknowledgement).
    Value(usize),
    Panic(Box<dyn Any + Send>),
    /// Unwind: the killer, which waits in `kill_core` until we are dead.
    Kill(*const Core),
}

/// A message that is not a plain value.
struct Mail {
    kind: Kind,
    /// Set by a greenlet's last switch: its core, so that the receiver
    /// frees its stack, does not link to it, and drops this reference.
    died: Option<Rc<Core>>,
}

thread_local! {
    /// The one mail in flight: posted just before a switch with word 0,
    /// taken right after it. `ManuallyDrop`, so that it has no destructor
    /// (see `CURRENT`); it is empty whenever no switch is under way.
    static MAILBOX: Cell<ManuallyDrop<Option<Mail>>> =
        const { Cell::new(ManuallyDrop::new(None)) };
}

/// Posts `mail` for the receiver of the next switch.
fn post(mail: Mail) {
    let old = MAILBOX.with(|m| m.replace(ManuallyDrop::new(Some(mail))));
    debug_assert!(old.is_none(), "a mail posted over another");
}

/// Takes the mail of the switch that just arrived with word 0, and links
/// to its sender unless that one died. A dead sender's core comes back in
/// the mail: its stack may still hold the value it sent, so the caller
/// takes that first, then hands the core to [`bury`].
fn collect(me: &Core, from: usize) -> Mail {
    let mail = ManuallyDrop::into_inner(MAILBOX.with(Cell::take))
        .unwrap_or_else(|| internal_error("a switch without its mail"));
    if mail.died.is_none() {
        link(me, from);
    }
    mail
}

/// Frees a dead greenlet's stack (back to the pool) and drops the
/// reference to its core that its last switch sent (which may drop the
/// last handle of another greenlet, and kill it).
fn bury(dead: Option<Rc<Core>>) {
    if let Some(dead) = dead {
        let stack = dead.stack.borrow_mut().take();
        drop(stack);
    }
}

/// [`bury`] for a greenlet about to start, which must not unwind before its
/// body's `catch_unwind`: a panic (of a kill that the drop runs) comes back.
#[cold]
#[inline(never)]
fn bury_caught(dead: Rc<Core>) -> std::thread::Result<()> {
    panic::catch_unwind(AssertUnwindSafe(|| bury(Some(dead))))
}

/// A broken invariant of this module, found where going on could corrupt
/// memory: report it and abort.
#[cold]
fn internal_error(what: &str) -> ! {
    eprintln!("corostack: internal error in greenlet: {what}");
    std::process::abort()
}

/// The payload with which a killed greenlet's stack unwinds.
struct GreenletExit;

/// A handle to a greenlet of the current thread whose body takes and
/// returns a `T`. Cheap to clone; see the [module docs](self).
///
/// ```
/// use corostack::greenlet::{Greenlet, current};
///
/// // A greenlet that echoes back what it is sent, doubled, until 0.
/// let main = current::<u32>();
/// let doubler = Greenlet::new(move |mut n: u32| {
///     while n != 0 {
///         n = main.switch(n * 2); // to main, and wait for the next n
///     }
///     0
/// });
/// assert_eq!(doubler.switch(3), 6);
/// assert_eq!(doubler.switch(5), 10);
/// assert_eq!(doubler.switch(0), 0); // it returned into its parent, here
/// assert!(doubler.done());
/// ```
pub struct Greenlet<T> {
    handle: Handle,
    /// A gate of the target's that admitted a `T` before (null at first):
    /// the fast path's check is then one compare of addresses. Any
    /// address one type's gate has stands for that type only.
    seen: Cell<*const Gate>,
    _marker: Marker<T, T>,
}

impl<T> Greenlet<T> {
    /// A typed handle to `handle`'s greenlet.
    fn from_handle(handle: Handle) -> Self {
        Greenlet {
            handle,
            seen: Cell::new(ptr::null()),
            _marker: PhantomData,
        }
    }
}

impl<T> Clone for Greenlet<T> {
    fn clone(&self) -> Self {
        Greenlet {
            handle: self.handle.clone(),
            seen: self.seen.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Greenlet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.handle.0;
        f.debug_struct("Greenlet")
            .field("main", &core.main)
            .field("life", &core.life.get())
            .field("running", &is_running(core))
            .finish()
    }
}

impl<T> PartialEq for Greenlet<T> {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.handle.0, &other.handle.0)
    }
}

impl<T> Eq for Greenlet<T> {}

/// By identity, as [`PartialEq`]: every handle of one greenlet hashes
/// alike, whatever its type, and a greenlet's state (which changes behind
/// `&self`) never changes its hash, so it is a sound key of a `HashSet`
/// (clippy's `mutable_key_type`, which sees the cells inside, is a false
/// alarm here).
impl<T> Hash for Greenlet<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        ptr::hash(Rc::as_ptr(&self.handle.0), state)
    }
}

/// The greenlet running now (the thread's main greenlet outside any other),
/// as a handle whose switches carry a `T` (checked when they happen).
///
/// ```
/// use corostack::greenlet::{Greenlet, current};
///
/// assert!(current::<()>().is_main());
/// let inner = Greenlet::new(|()| assert!(!current::<()>().is_main()));
/// inner.switch(());
/// ```
pub fn current<T: 'static>() -> Greenlet<T> {
    Greenlet::from_handle(Handle::new(running()))
}

/// An identity of the greenlet running now on this thread (the thread's
/// main greenlet outside any other), stable for as long as that greenlet
/// lives; not a handle, so it keeps nothing alive.
///
/// For schedulers that suspend their tasks from inside the task's own
/// code: a greenlet started by a task runs on a stack of its own, and
/// suspending the task from there would leave the greenlet layer pointing
/// at a stack that another task then runs over. Such a scheduler records
/// the identity where it resumes its tasks and refuses to suspend one when
/// the identity differs (the hub does so, with a panic).
///
/// ```
/// use corostack::greenlet::{Greenlet, running_id};
///
/// let outside = running_id();
/// let inside = Greenlet::new(|_: usize| running_id()).switch(0);
/// assert_ne!(outside, inside);
/// assert_eq!(outside, running_id());
/// ```
#[inline]
pub fn running_id() -> usize {
    running_ptr().addr()
}

impl<T: 'static> Greenlet<T> {
    /// Creates a greenlet that will run `f` on a pooled [`DefaultStack`];
    /// it starts at the first switch to it. Its parent is the greenlet
    /// running now.
    ///
    /// # Panics
    /// When no stack can be mapped (the message says why).
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(T) -> T + 'static,
    {
        Self::with_stack(DefaultStack::default(), f)
    }

    /// Like [`new`](Greenlet::new), on the given stack.
    ///
    /// Only a [`DefaultStack`], unlike [`Coroutine::with_stack`](crate::Coroutine::with_stack),
    /// which takes any [`Stack`]: a greenlet's handles are typed by what
    /// its body takes, not by its stack, and a dead greenlet's stack is
    /// given back by whichever greenlet receives its death, so the greenlet
    /// layer keeps one stack type; and a greenlet has no owner that could
    /// vouch for a stack without a guard (a [`SliceStack`](crate::SliceStack)).
    ///
    /// # Panics
    /// When the closure does not fit in the stack (see
    /// [`Coroutine::with_stack`](crate::Coroutine::with_stack)).
    pub fn with_stack<F>(stack: DefaultStack, f: F) -> Self
    where
        F: FnOnce(T) -> T + 'static,
    {
        crate::stack::install_overflow_handler();
        let (closure, sp) = crate::context::place_closure(
            &stack,
            f,
            (mem::size_of::<F>(), mem::align_of::<F>()),
            entry::<T, F>,
        );
        let asan = AsanPeer::default();
        asan.set((stack.limit(), stack.top() - stack.limit()));
        let core = Rc::new(Core {
            hot: Hot {
                sp: Cell::new(sp),
                gate: Cell::new(GateOf::<T>::GATE),
                killed_by: Cell::new(ptr::null()),
                link: Cell::new(ptr::with_exposed_provenance_mut(
                    closure - arch::LINK_OFFSET,
                )),
            },
            life: Cell::new(Life::NotStarted),
            ran: Cell::new(false),
            parent: RefCell::new(Some(Handle::new(running()))),
            stack: RefCell::new(Some(stack)),
            handles: Cell::new(0),
            main: false,
            scratch: Cell::new(0),
            fiber: Fiber::create(),
            asan,
        });
        Greenlet::from_handle(Handle::new(core))
    }

    /// Transfers control to this greenlet now, passing `value`; returns
    /// the value passed by whatever switches back to the caller.
    ///
    /// Switching to the running greenlet returns `value` at once (unless a
    /// kill has reached it: then this panics, as every switch it makes).
    ///
    /// # Panics
    /// With the [`SwitchError`]'s message when the switch is impossible
    /// (see [`try_switch`](Greenlet::try_switch)); with the payload of a
    /// child that panicked and had the caller as its parent; and, in a
    /// greenlet being killed, with the kill's own unwinding payload.
    #[inline]
    pub fn switch(&self, value: T) -> T {
        match self.try_switch(value) {
            Ok(v) => v,
            Err(e) => panic!("corostack: {e}"),
        }
    }

    /// Like [`switch`](Greenlet::switch), but an impossible switch (a dead
    /// target, or one waiting for another type) gives the value back in a
    /// [`SwitchError`] instead of panicking.
    ///
    /// ```
    /// use corostack::greenlet::{Greenlet, SwitchError};
    ///
    /// let double = Greenlet::new(|n: u32| n * 2);
    /// assert_eq!(double.try_switch(21).unwrap(), 42); // it ran and returned here
    /// assert!(matches!(double.try_switch(1), Err(SwitchError::Dead(1))));
    /// ```
    ///
    /// # Errors
    /// [`SwitchError::Dead`] when the target has finished, panicked or been
    /// killed; [`SwitchError::WrongType`] when it waits in a switch of
    /// another type, or its body takes another type. Both carry `value`
    /// back. The panics of [`switch`](Greenlet::switch) other than these
    /// remain.
    #[inline]
    pub fn try_switch(&self, value: T) -> Result<T, SwitchError<T>> {
        // The fast path: the target waits for a `T` (which also says that
        // it is not dead: that gate admits no type), it is not us, and we
        // may leave (no SLOW bit: we were not killed, and this is not the
        // thread's first use).
        let me = CURRENT.with(Cell::get);
        let target = &*self.handle.0;
        let slow = me.addr() & SLOW != 0;
        if !ptr::eq(target.hot.gate.get(), self.seen.get()) | slow | ptr::eq(me, &target.hot) {
            return self.try_switch_slow(value);
        }
        // SAFETY: without the SLOW bit, CURRENT points at the live core of
        // the running greenlet (see CURRENT).
        let me = unsafe { &*me.cast::<Core>() };
        let value = ManuallyDrop::new(value);
        Ok(switch_to::<T>(me, target, addr(&value)))
    }

    /// Everything `try_switch` does not do inline: the thread's first use,
    /// a switch to the running greenlet, a killed caller, a gate not seen
    /// before, and the errors.
    #[cold]
    #[inline(never)]
    fn try_switch_slow(&self, value: T) -> Result<T, SwitchError<T>> {
        // SAFETY: the running greenlet's core is alive (see CURRENT).
        let me = unsafe { &*running_ptr() };
        let target = &*self.handle.0;
        // A greenlet a kill reached makes no switch at all, not even one to
        // itself.
        if is_killed(me) {
            panic::resume_unwind(Box::new(GreenletExit));
        }
        if ptr::eq(me, target) {
            return Ok(value);
        }
        if let Err(e) = check_target::<T>(target) {
            return Err(e.with_value(value));
        }
        self.seen.set(target.hot.gate.get());
        let value = ManuallyDrop::new(value);
        Ok(switch_to::<T>(me, target, addr(&value)))
    }

    /// The greenlet's parent (`None` for a main greenlet), as a handle of
    /// this greenlet's type.
    pub fn parent(&self) -> Option<Greenlet<T>> {
        let parent = self.handle.0.parent.borrow();
        parent.as_ref().map(|h| Greenlet::from_handle(h.clone()))
    }

    /// Makes `parent` this greenlet's parent: where its return value or
    /// panic goes.
    ///
    /// ```
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    /// use corostack::greenlet::Greenlet;
    ///
    /// // `collector` receives what `worker` returns, instead of main.
    /// let got = Rc::new(Cell::new(0));
    /// let seen = got.clone();
    /// let collector = Greenlet::new(move |n: u32| {
    ///     seen.set(n);
    ///     n
    /// });
    /// let worker = Greenlet::new(|n: u32| n + 1);
    /// worker.set_parent(&collector).unwrap();
    /// assert_eq!(worker.switch(41), 42); // collector returned it to main
    /// assert_eq!(got.get(), 42);
    /// assert!(collector.set_parent(&worker).is_err()); // a cycle
    /// ```
    ///
    /// # Errors
    /// [`SwitchError::Cycle`] when `self` is `parent` or one of its
    /// ancestors.
    pub fn set_parent<U>(&self, parent: &Greenlet<U>) -> Result<(), SwitchError<()>> {
        let mut p = Some(parent.handle.clone());
        while let Some(h) = p {
            if Rc::ptr_eq(&h.0, &self.handle.0) {
                return Err(SwitchError::Cycle);
            }
            p = h.0.parent.borrow().clone();
        }
        let old = self.handle.0.parent.replace(Some(parent.handle.clone()));
        drop(old);
        Ok(())
    }
}

impl<T> Greenlet<T> {
    /// Whether the greenlet has returned, panicked or been killed.
    pub fn done(&self) -> bool {
        self.handle.0.life.get() == Life::Dead
    }

    /// Whether a switch has run the body (a main greenlet always has):
    /// false before the first switch into it, and stays false for a
    /// greenlet killed before that (whose closure was only dropped),
    /// although it is then [`done`](Greenlet::done).
    pub fn started(&self) -> bool {
        self.handle.0.ran.get()
    }

    /// Whether this is the thread's implicit main greenlet.
    pub fn is_main(&self) -> bool {
        self.handle.0.main
    }

    /// Unwinds the greenlet's stack (every destructor on it runs), marks
    /// it dead and returns. An unstarted greenlet's closure is dropped.
    /// Killing a dead greenlet does nothing.
    ///
    /// ```
    /// use corostack::greenlet::{Greenlet, current};
    ///
    /// let main = current::<()>();
    /// let g = Greenlet::new(move |()| {
    ///     let _goodbye = std::fs::File::open("/dev/null").unwrap(); // closed by the kill
    ///     main.switch(());
    ///     unreachable!("killed while suspended");
    /// });
    /// g.switch(());
    /// g.kill();
    /// assert!(g.done());
    /// ```
    ///
    /// Two kills that cannot be carried out return at once and do nothing
    /// (see [Killing](self#killing)): of the running greenlet when a kill
    /// has reached it already (it is dying), and of a greenlet that waits
    /// in a `kill` of its own (it waits for the caller to die).
    ///
    /// # Panics
    /// When called on the running greenlet (not being killed) or on a main
    /// greenlet (not waiting in a kill), which cannot be unwound from
    /// outside.
    pub fn kill(&self) {
        let core = &self.handle.0;
        if core.life.get() == Life::Dead {
        } else if is_running(core) {
            if !is_killed(core) {
                panic!("corostack: a greenlet cannot kill itself; return instead");
            }
        } else if waits_in_kill(core) {
        } else if core.main {
            panic!("corostack: the main greenlet cannot be killed");
        } else {
            kill_core(core);
        }
    }
}

/// Checks that a switch carrying a `T` may enter `target`.
#[inline(always)]
fn check_target<T: 'static>(target: &Core) -> Result<(), SwitchError<()>> {
    if target.life.get() == Life::Dead {
        return Err(SwitchError::Dead(()));
    }
    let gate = target.hot.gate.get();
    if !gate.admits::<T>() {
        return Err(SwitchError::WrongType {
            value: (),
            expected: (gate.name)(),
        });
    }
    Ok(())
}

/// Switches from `me` (running) to `target` with the word `arg` (a
/// value's address, or 0 with a posted mail); returns the `T` that
/// whoever switches back to `me` brings, or raises the panic or kill it
/// brings instead.
#[inline(always)]
fn switch_to<T: 'static>(me: &Core, target: &Core, arg: usize) -> T {
    // A greenlet mostly waits for the type it waited for last time: the
    // gate then stays as it is (as with `link`, a read spares a store).
    if !ptr::eq(me.hot.gate.get(), GateOf::<T>::GATE) {
        me.hot.gate.set(GateOf::<T>::GATE);
    }
    let (back, from) = raw_switch(me, target, arg);
    if back != 0 {
        link(me, from);
        // SAFETY: the sender checked that we expect a `T` (we set our
        // gate before switching away) and sent the address of a
        // ManuallyDrop<T> it will not touch again.
        unsafe { take::<T>(back) }
    } else {
        receive_mail(me, from)
    }
}

/// The one context switch: `me` suspends, `target` runs. Returns the word
/// and the sp of whoever switches back.
#[inline(always)]
fn raw_switch(me: &Core, target: &Core, arg: usize) -> (usize, usize) {
    set_running(target);
    #[cfg(feature = "asan")]
    ASAN_PREV.with(|p| p.set(me));
    let enter = Enter {
        bounds: Some(target.asan.get()),
        tsan: Tsan::To(target.fiber),
    };
    // SAFETY: `target` is suspended or not started (checked by the caller:
    // not dead, not running), so its `sp` is a suspended context that only
    // this switch resumes, on a stack its core keeps alive. Our own sp goes
    // into our core, which stays alive while we are suspended: nobody frees
    // a suspended core but through a kill, which resumes it first.
    let back = unsafe { context::switch(arg, target.hot.sp.get(), me.hot.sp.as_ptr(), enter) };
    learn_switcher(back.bounds);
    (back.word, back.from)
}

#[cfg(feature = "asan")]
thread_local! {
    /// The greenlet that made the last switch (null if it was dying), so
    /// that its stack's bounds, which ASan reports on arrival, are learned.
    static ASAN_PREV: Cell<*const Core> = const { Cell::new(ptr::null()) };
}

/// Remembers the bounds of the stack of the greenlet that switched to us,
/// as ASan reported them on arrival.
#[inline(always)]
fn learn_switcher(bounds: (usize, usize)) {
    #[cfg(feature = "asan")]
    {
        let prev = ASAN_PREV.with(Cell::get);
        // SAFETY: a greenlet that switched and is not dying is suspended,
        // so its core is alive.
        if let Some(prev) = unsafe { prev.as_ref() } {
            prev.asan.set(bounds);
        }
    }
    #[cfg(not(feature = "asan"))]
    let _ = bounds;
}

/// Points our stack's link word at the switcher's sp, for unwinders.
#[inline(always)]
fn link(me: &Core, from: usize) {
    let link = me.hot.link.get();
    // SAFETY: `link` is the link word at the top of our own stack, which
    // is alive while we run, or the main greenlet's `scratch`, alive with
    // its core; nothing holds a reference into either. Switchers mostly
    // switch from the same depth of their stacks (a loop, a scheduler), so
    // the word mostly holds `from` already: reading it spares a store.
    unsafe {
        if link.read() != from {
            link.write(from);
        }
    }
}

/// The slow path of `switch_to`: a value from a greenlet that just died,
/// a panic, or a kill.
#[cold]
#[inline(never)]
fn receive_mail<T: 'static>(me: &Core, from: usize) -> T {
    let mail = collect(me, from);
    match mail.kind {
        Kind::Value(v) => {
            // SAFETY: as in `switch_to`: the sender checked our type. A
            // dead sender's stack, where the value is, is freed only after.
            let value = unsafe { take::<T>(v) };
            bury(mail.died);
            value
        }
        Kind::Panic(payload) => {
            bury(mail.died);
            panic::resume_unwind(payload)
        }
        Kind::Kill(killer) => {
            mark_killed(me, killer);
            panic::resume_unwind(Box::new(GreenletExit))
        }
    }
}

/// Switches into `target` to unwind it, and waits until it is dead.
///
/// The killer's core must stay alive, and its stack where it is, until the
/// victim's last switch comes back to it (the victim holds it as a raw
/// pointer, `killed_by`): so nothing but that death may wake it. While it
/// waits its gate is [`KILLING`], which admits no value; `kill` and the
/// drop of a last handle leave a waiting greenlet alone; and every other
/// greenlet that runs meanwhile is itself killed, so it cannot switch, and
/// its own death goes to its killer, not to its parent.
fn kill_core(target: &Core) {
    let me_ptr = running_ptr();
    // SAFETY: the running greenlet's core is alive (see CURRENT).
    let me = unsafe { &*me_ptr };
    me.hot.gate.set(&KILLING);
    post(Mail {
        kind: Kind::Kill(me_ptr),
        died: None,
    });
    let (back, from) = raw_switch(me, target, 0);
    // A killer that was itself killed (it kills from a destructor while it
    // unwinds) comes back without the SLOW bit: put it back.
    retag(me);
    let mail = collect(me, from);
    let victims_death = back == 0
        && matches!(mail.kind, Kind::Value(0) | Kind::Panic(_))
        && mail.died.as_deref().is_some_and(|d| ptr::eq(d, target));
    if !victims_death {
        internal_error("a killer was woken before its victim died");
    }
    bury(mail.died);
    match mail.kind {
        Kind::Panic(payload) if !std::thread::panicking() => panic::resume_unwind(payload),
        _ => {}
    }
}

/// The first function on a greenlet's stack (see `Coroutine`'s `entry`).
///
/// # Safety
/// Only the arch trampoline calls it, as `Greenlet::with_stack` arranged.
unsafe extern "C" fn entry<T: 'static, F: FnOnce(T) -> T>(
    msg: usize,
    from: usize,
    data: usize,
) -> ! {
    // The closure stays where `with_stack` wrote it until the call or the
    // drop that consumes it (every move of a large closure would be a copy
    // on this stack, which `place_closure` could not count).
    let f = ptr::with_exposed_provenance_mut::<F>(data);
    let call = move |input: T| {
        // SAFETY: `with_stack` wrote an F at `f`; this or `drop_f`
        // consumes it, once.
        (unsafe { ptr::read(f) })(input)
    };
    let drop_f = move || {
        // SAFETY: as for `call`.
        unsafe { ptr::drop_in_place(f) }
    };
    learn_switcher(context::arrive());
    let me = running();
    me.life.set(Life::Started);
    let (first, sender) = if msg != 0 {
        link(&me, from);
        (Kind::Value(msg), None)
    } else {
        let mail = collect(&me, from);
        (mail.kind, mail.died)
    };
    let outcome = match first {
        Kind::Value(v) => {
            // SAFETY: the sender checked that we expect a T (our input
            // type) and sent the address of a ManuallyDrop<T>, on its stack,
            // which a dead sender's `bury` frees only after.
            let input = unsafe { take::<T>(v) };
            // Only then may that stack go (outside the body's closure, which
            // stays as lean as it was for the switches it makes).
            match sender.map_or(Ok(()), bury_caught) {
                Ok(()) => {
                    me.ran.set(true);
                    panic::catch_unwind(AssertUnwindSafe(|| call(input)))
                }
                Err(p) => panic::catch_unwind(AssertUnwindSafe(|| {
                    drop(input);
                    drop_f()
                }))
                .and(Err(p)),
            }
        }
        Kind::Kill(killer) => {
            // A kill comes from a live greenlet: nothing to bury.
            debug_assert!(sender.is_none());
            mark_killed(&me, killer);
            panic::catch_unwind(AssertUnwindSafe(drop_f)).and(Err(Box::new(GreenletExit)))
        }
        Kind::Panic(payload) => panic::catch_unwind(AssertUnwindSafe(|| {
            bury(sender);
            drop_f()
        }))
        .and(Err(payload)),
    };
    me.life.set(Life::Dead);
    me.hot.gate.set(&DEAD);
    let killer = Some(me.hot.killed_by.get()).filter(|k| !k.is_null());
    let (target, kind, value) = match (outcome, killer) {
        // Killed: back to the killer, whatever the body did with the
        // unwind (a value it returned anyway is dropped).
        (Err(p), Some(killer)) if p.is::<GreenletExit>() => (killer, Kind::Value(0), None),
        (Err(p), Some(killer)) => (killer, Kind::Panic(p), None),
        // Nothing unwinds here, on the first frame of an `extern "C"`
        // function: a value nobody takes is dropped in a `catch_unwind`,
        // and a panic of its drop goes where the body's would.
        (Ok(r), Some(killer)) => match panic::catch_unwind(AssertUnwindSafe(move || drop(r))) {
            Ok(()) => (killer, Kind::Value(0), None),
            Err(p) => (killer, Kind::Panic(p), None),
        },
        (Ok(r), None) => {
            let target = live_ancestor(&me);
            // SAFETY: our parent chain keeps the ancestor alive.
            match check_target::<T>(unsafe { &*target }) {
                Ok(()) => (target, Kind::Value(0), Some(ManuallyDrop::new(r))),
                Err(e) => match panic::catch_unwind(AssertUnwindSafe(move || drop(r))) {
                    Ok(()) => {
                        let msg =
                            format!("corostack: a greenlet's return value went to its parent: {e}");
                        (target, Kind::Panic(Box::new(msg)), None)
                    }
                    Err(p) => (target, Kind::Panic(p), None),
                },
            }
        }
        (Err(p), None) => (live_ancestor(&me), Kind::Panic(p), None),
    };
    let kind = match (&value, kind) {
        (Some(v), _) => Kind::Value(addr(v)),
        (None, kind) => kind,
    };
    // Nothing that needs dropping may stay on this stack, which is never
    // unwound: our core goes in the mail (the receiver frees our stack and
    // drops it); the target is a raw pointer, kept alive by our parent
    // chain or, for a killer, by its waiting in `kill_core`.
    post(Mail {
        kind,
        died: Some(me),
    });
    // SAFETY: as just said, the target's core is alive.
    let target = unsafe { &*target };
    let sp = target.hot.sp.get();
    set_running(target);
    // We are dying: the target learns no bounds of ours.
    #[cfg(feature = "asan")]
    ASAN_PREV.with(|p| p.set(ptr::null()));
    let enter = Enter {
        bounds: Some(target.asan.get()),
        tsan: Tsan::To(target.fiber),
    };
    // The link a receiver reads `from` through (every receiver does; the
    // mail says we died, so none keeps it): a word of this dying frame,
    // which stays mapped until the receiver buries us. Nothing of ours is
    // saved (`leave_for_good`).
    let mut scratch = 0usize;
    // SAFETY: `sp` is the context of a live (not dead, not running)
    // greenlet, suspended in a switch or not started; nothing resumes the
    // dead greenlet we leave (our stack is finished for good: it goes back
    // to the pool).
    unsafe { context::leave_for_good(0, sp, &mut scratch, enter) }
}

/// The nearest ancestor that is not dead (the main greenlet at worst).
fn live_ancestor(core: &Core) -> *const Core {
    let mut p = core.parent.borrow().as_ref().map(|h| Rc::as_ptr(&h.0));
    while let Some(c) = p {
        // SAFETY: each core keeps its parent alive through its handle,
        // and `core` is alive.
        let c = unsafe { &*c };
        if c.life.get() != Life::Dead {
            return c;
        }
        p = c.parent.borrow().as_ref().map(|h| Rc::as_ptr(&h.0));
    }
    unreachable!("corostack: the main greenlet never dies")
}
