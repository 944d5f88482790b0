//! Running code on a chosen stack: [`on_stack`], and [`maybe_grow`], which
//! moves to a fresh stack only when the current one runs low.
//!
//! # How `maybe_grow` knows the remaining stack
//!
//! The remaining stack is the stack pointer minus the lowest usable address
//! of the stack it lies in. Each thread caches one range, `[lo, hi)`, that
//! is known to be the usable part of a live stack, so the fast path is one
//! thread-local read and two compares. On a miss (the stack pointer is
//! outside the cached range) the slow path finds the stack, in this order:
//!
//! 1. the stacks that [`on_stack`] (and so [`maybe_grow`]) runs code on right
//!    now on this thread: each call records its range for its duration;
//! 2. the thread's own stack, from `pthread_getattr_np` (read once per
//!    thread), as stacker does; on Windows from the TEB;
//! 3. a [`DefaultStack`] (a [`Coroutine`](crate::Coroutine)'s, say): every
//!    `DefaultStack` registers its guard page with the overflow reporter,
//!    so the pages below the stack pointer are looked up there, nearest
//!    first, up to [`PROBE_BYTES`] below it. Such a range stays cached but is
//!    re-checked against the registry on each use (one hash probe), since the
//!    stack may have been unmapped and its addresses reused meanwhile.
//!
//! A stack found nowhere (a [`SliceStack`](crate::SliceStack) outside
//! `on_stack`, a foreign fiber, a `DefaultStack` whose stack pointer is more
//! than [`PROBE_BYTES`] above its guard) counts as having no room, so
//! `maybe_grow` moves to a fresh stack: correct, only slower.
//!
//! # Invariant of the cache
//!
//! The cache never names the range of an `on_stack` call that has returned
//! (or unwound): when a call ends, it removes its range from the list of
//! step 1, and if the cache holds that range it is replaced by the range
//! cached when the call began, if that one is still known to be live, else
//! emptied. A call's range stays in the list while its body is suspended (a
//! coroutine that suspends inside `on_stack`): its stack is then still
//! borrowed by the suspended frames, so it is still alive and used by
//! nothing else.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::thread;

use crate::context::{self, Enter, Tsan};
use crate::stack::{DefaultStack, MAX_STACK_SIZE, MIN_STACK_SIZE, Stack, page_size};

/// How far below the stack pointer the slow path looks for the guard page
/// of a [`DefaultStack`]: 4 MiB, so a lookup probes at most 1024 pages (of
/// 4 KiB) in the registry, a few microseconds.
pub(crate) const PROBE_BYTES: usize = 4 << 20;

/// A range `[lo, hi)` known to be the usable part of a stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Known {
    lo: usize,
    hi: usize,
    /// 0: trusted for as long as it is cached (the thread's stack, or a
    /// live `on_stack` call's). Otherwise the address of the registered
    /// guard page below `lo`, re-checked on each use.
    guard: usize,
}

/// The empty range: nothing is inside it.
const UNKNOWN: Known = Known {
    lo: 0,
    hi: 0,
    guard: 0,
};

thread_local! {
    /// The cached range (see the module docs).
    static CURRENT: Cell<Known> = const { Cell::new(UNKNOWN) };
    /// The thread's own stack, `None` until first read; `(0, 0)` if unknown.
    static THREAD_STACK: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    /// The `on_stack` calls that began on this thread and have not ended.
    static ACTIVE: RefCell<Vec<Active>> = const { RefCell::new(Vec::new()) };
    /// The sequence number of this thread's next `on_stack` call.
    static NEXT_SEQ: Cell<u64> = const { Cell::new(0) };
}

/// A running `on_stack` call: its stack's range, and its sequence number
/// on the thread where it began.
#[derive(Clone, Copy, Debug)]
struct Active {
    lo: usize,
    hi: usize,
    seq: u64,
}

/// An address in the caller's frame: the stack pointer, give or take the
/// frame (a red zone absorbs the difference).
#[inline(always)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    ptr::addr_of!(marker).addr()
}

/// How many bytes of stack remain below the caller's frame, if the stack it
/// runs on is known (as [`maybe_grow`] finds it): on the
/// thread's own stack, inside [`on_stack`] and [`maybe_grow`], and inside a
/// [`Coroutine`](crate::Coroutine) on a [`DefaultStack`]. `None` elsewhere.
///
/// ```
/// let here = corostack::remaining_stack().expect("the thread's stack is known");
/// corostack::on_stack(corostack::DefaultStack::new(256 * 1024).unwrap(), || {
///     let there = corostack::remaining_stack().unwrap();
///     assert!(there < 256 * 1024 && there > 200 * 1024, "{there} {here}");
/// });
/// ```
#[inline]
pub fn remaining_stack() -> Option<usize> {
    let sp = stack_pointer();
    let k = CURRENT.get();
    if k.guard == 0 && k.lo <= sp && sp < k.hi {
        return Some(sp - k.lo);
    }
    remaining_slow(sp)
}

/// Calls `f` directly where at least `red_zone` bytes of the current stack
/// remain below the caller, else on a fresh stack of `stack_size` bytes
/// (a [`DefaultStack`] from the thread's pool), and returns its value: the
/// semantics of stacker's function of the same name. A panic in `f`
/// propagates to the caller with its payload.
///
/// The remaining stack is known on the main thread, on spawned threads,
/// inside [`on_stack`] and `maybe_grow`, and inside coroutines on a
/// [`DefaultStack`]; where it is not known (a [`SliceStack`] outside
/// `on_stack`, a foreign stack), `maybe_grow` always moves to a fresh stack.
/// On the fast path (enough room, and the thread's own stack or an
/// `on_stack` stack) the check is one thread-local read and two compares;
/// inside a coroutine it adds one lookup in the registry of guard pages.
///
/// `stack_size` is clamped to [`MIN_STACK_SIZE`]..=[`MAX_STACK_SIZE`].
///
/// # State it keeps
/// Per thread, and nothing global: the range of the stack it last found
/// (the fast path's cache), the thread's own stack range (read once with
/// `pthread_getattr_np`), and the list of running [`on_stack`] calls. The
/// new stacks come from the thread's pool of free [`DefaultStack`]s (see
/// [`set_pool_capacity`](crate::stack::set_pool_capacity)). Coroutine
/// stacks are found in the process-wide registry of guard pages that the
/// overflow reporter keeps anyway.
///
/// ```
/// // A recursion that never overflows, however deep.
/// fn depth(n: u64) -> u64 {
///     if n == 0 {
///         return 0;
///     }
///     corostack::maybe_grow(64 * 1024, 1024 * 1024, || depth(n - 1) + 1)
/// }
/// assert_eq!(depth(100_000), 100_000);
/// ```
///
/// # Panics
/// When `f` panics, and when a new stack cannot be mapped (the message says
/// why).
///
/// [`SliceStack`]: crate::SliceStack
#[inline]
pub fn maybe_grow<R, F: FnOnce() -> R>(red_zone: usize, stack_size: usize, f: F) -> R {
    let sp = stack_pointer();
    let k = CURRENT.get();
    if k.guard == 0 && k.lo.saturating_add(red_zone) <= sp && sp < k.hi {
        return f();
    }
    if remaining_slow(sp).is_some_and(|room| room >= red_zone) {
        f()
    } else {
        grow(stack_size, f)
    }
}

/// Runs `f` on a fresh [`DefaultStack`] of `stack_size` bytes.
#[inline(never)]
fn grow<R, F: FnOnce() -> R>(stack_size: usize, f: F) -> R {
    let size = stack_size.clamp(MIN_STACK_SIZE, MAX_STACK_SIZE);
    let stack = match DefaultStack::new(size) {
        Ok(stack) => stack,
        Err(e) => panic!("corostack: maybe_grow cannot allocate a stack: {e}"),
    };
    on_stack(stack, f)
}

/// The remaining stack below `sp` when the cache missed or holds a range
/// that must be re-checked; caches what it finds.
#[cold]
#[inline(never)]
fn remaining_slow(sp: usize) -> Option<usize> {
    let k = CURRENT.get();
    let inside = |lo: usize, hi: usize| lo <= sp && sp < hi;
    if k.guard != 0 && inside(k.lo, k.hi) && still_registered(k) {
        return Some(sp - k.lo);
    }
    let found = find_stack(sp);
    if found == UNKNOWN {
        return None;
    }
    CURRENT.set(found);
    Some(sp - found.lo)
}

/// Whether the guard `k.guard` is still registered with the layout `k`.
fn still_registered(k: Known) -> bool {
    crate::stack::guards::guard_at(k.guard) == Some((k.lo - k.guard, k.hi - k.lo))
}

/// The stack that `sp` lies in (steps 1 to 3 of the module docs).
fn find_stack(sp: usize) -> Known {
    let inside = |&(lo, hi): &(usize, usize)| lo <= sp && sp < hi;
    let active = ACTIVE
        .try_with(|a| a.borrow().iter().rev().map(|e| (e.lo, e.hi)).find(inside))
        .ok()
        .flatten();
    if let Some((lo, hi)) = active {
        return Known { lo, hi, guard: 0 };
    }
    let (lo, hi) = thread_stack();
    if inside(&(lo, hi)) {
        return Known { lo, hi, guard: 0 };
    }
    let page = page_size();
    let mut guard = sp & !(page - 1);
    for _ in 0..PROBE_BYTES / page {
        guard = match guard.checked_sub(page) {
            Some(g) if g != 0 => g,
            _ => break,
        };
        if let Some((len, size)) = crate::stack::guards::guard_at(guard) {
            // The nearest guard below `sp` is its stack's own, if `sp` is
            // in a registered stack at all.
            let (lo, hi) = (guard + len, guard + len + size);
            if inside(&(lo, hi)) {
                return Known { lo, hi, guard };
            }
            break;
        }
    }
    UNKNOWN
}

/// The calling thread's own stack, `[lowest usable address, top)`, read
/// once per thread from the system (`stack::thread_stack`); `(0, 0)` if
/// that fails. On Windows the system reports the stack that runs (the
/// TEB's fields, which the switch keeps in step), whichever it is: read
/// on every call there, never kept, and a report of a `DefaultStack` (its
/// reservation's start is a registered guard) left to step 3, which
/// re-checks it on each use.
fn thread_stack() -> (usize, usize) {
    if let Some(range) = THREAD_STACK.get() {
        return range;
    }
    let range = match crate::stack::thread_stack() {
        Some((reserved, lo, hi)) if crate::stack::guards::guard_at(reserved).is_none() => (lo, hi),
        _ => (0, 0),
    };
    if !crate::stack::REPORTS_RUNNING_STACK {
        THREAD_STACK.set(Some(range));
    }
    range
}

/// What `on_stack` leaves for the code it runs on the other stack.
struct Call<F, R> {
    f: ManuallyDrop<F>,
    result: Option<thread::Result<R>>,
    /// The link word at the top of the other stack (see `arch/`).
    link: *mut usize,
}

/// Runs `f` on `stack` and returns its value; a panic in `f` propagates to
/// the caller with its payload. The stack is dropped when `f` has
/// finished (a [`DefaultStack`] goes back to the thread's pool, so the
/// next call takes it from there).
///
/// The stack is taken by value so that it outlives every frame on it,
/// whatever safe code does: a body that suspends inside `on_stack` (in a
/// [`Coroutine`](crate::Coroutine)) keeps its frames there, and if that
/// coroutine is then forgotten, the stack is forgotten with it, never
/// unmapped or reused under them. (A stack that was only borrowed could be
/// freed by its owner, a thread-local at thread exit say, while a scoped
/// thread still reads those frames.)
///
/// Inside `f`, [`remaining_stack`] and [`maybe_grow`] know the new stack.
/// A backtrace taken inside `f` continues into the caller's frames.
///
/// ```
/// use corostack::{DefaultStack, Stack};
///
/// let stack = DefaultStack::new(64 * 1024).unwrap();
/// let (limit, top) = (stack.limit(), stack.top());
/// let on_it = corostack::on_stack(stack, || {
///     let local = 0u8;
///     let addr = &local as *const u8 as usize;
///     limit <= addr && addr < top
/// });
/// assert!(on_it);
/// ```
///
/// A borrowed stack is not a [`Stack`]:
///
/// ```compile_fail
/// let mut stack = corostack::DefaultStack::new(64 * 1024).unwrap();
/// corostack::on_stack(&mut stack, || ());
/// ```
///
/// # Panics
/// When `f` panics, with its payload.
pub fn on_stack<S: Stack, R, F: FnOnce() -> R>(stack: S, f: F) -> R {
    crate::stack::install_overflow_handler();
    let (lo, hi) = (stack.limit(), stack.top());
    let (prev, seq) = enter(lo, hi);
    /// Ends the record of the call however `f` ends.
    struct Leave(usize, usize, u64, Known);
    impl Drop for Leave {
        fn drop(&mut self) {
            leave(self.0, self.1, self.2, self.3);
        }
    }
    let _leave = Leave(lo, hi, seq, prev);
    let info = crate::arch::StackInfo::new(hi, lo, || stack.guard_size());
    // SAFETY: `Stack` promises that [limit, top) is writable memory that
    // nothing else uses, with top 16-aligned; we own the stack, and drop it
    // only once the body has finished with it (or never, if this frame is
    // suspended and forgotten).
    unsafe { run_at(hi, (lo, hi - lo), info, f) }
}

/// Runs `f` on a fresh context whose first frame lies below `top`, on the
/// stack whose bounds (for ASan) are `bounds` and that `info` describes
/// (for Windows), and returns its value; a
/// panic in `f` propagates with its payload. The one mechanism behind
/// [`on_stack`] and [`Yielder::on_parent_stack`](crate::Yielder::on_parent_stack).
///
/// # Safety
/// `top` is 16-aligned, and the memory below it, as deep as `f` goes, is
/// writable memory of a stack that nothing else uses until this returns.
pub(crate) unsafe fn run_at<R, F: FnOnce() -> R>(
    top: usize,
    bounds: (usize, usize),
    info: crate::arch::StackInfo,
    f: F,
) -> R {
    let link = context::link_word(top);
    let mut call = Call {
        f: ManuallyDrop::new(f),
        result: None,
        link,
    };
    let data = ptr::from_mut(&mut call).expose_provenance();
    // SAFETY: as the caller promises.
    let sp = unsafe { context::init(top, run::<F, R>, data, info) };
    let other = Enter {
        bounds: Some(bounds),
        tsan: Tsan::Stay,
    };
    // SAFETY: `sp` is the fresh context just laid out, resumed only here;
    // `link` is the link word inside its first frame. `run` switches back
    // exactly once, when `f` has returned or panicked, and never expects
    // to be resumed.
    unsafe { context::switch(0, sp, link, other) };
    match call.result.take() {
        Some(Ok(r)) => r,
        Some(Err(payload)) => panic::resume_unwind(payload),
        None => unreachable!("corostack: on_stack's body switched back without a result"),
    }
}

/// The first function on `on_stack`'s stack: runs the closure, catching a
/// panic, leaves the result in the caller's `Call`, and switches back.
///
/// # Safety
/// Only the trampoline calls it, with `data` the exposed address of the
/// `Call<F, R>` that `on_stack` keeps alive and does not touch until this
/// switches back.
unsafe extern "C" fn run<F: FnOnce() -> R, R>(_arg: usize, _from: usize, data: usize) -> ! {
    let caller = context::arrive();
    let call = ptr::with_exposed_provenance_mut::<Call<F, R>>(data);
    // The closure is moved out of the caller's `Call` only into the call
    // itself: each move of a large closure would be a copy on this stack.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `call` is live and ours until we switch back (see
        // above); the closure is taken out once, straight into the call.
        (unsafe { ManuallyDrop::take(&mut (*call).f) })()
    }));
    // SAFETY: as above; `result` was None, so nothing is lost.
    let link = unsafe {
        (*call).result = Some(result);
        (*call).link
    };
    let back = Enter {
        bounds: Some(caller),
        tsan: Tsan::Stay,
    };
    // SAFETY: the link word holds the sp that `on_stack` left while
    // switching here; it is suspended in that switch. Nothing of ours
    // needs dropping: this frame is abandoned, never resumed.
    unsafe { context::leave_for_good(0, *link, link, back) }
}

/// Records `[lo, hi)` as the stack of a running `on_stack` call and caches
/// it; returns the range cached before, and the call's sequence number.
fn enter(lo: usize, hi: usize) -> (Known, u64) {
    let seq = NEXT_SEQ.get();
    NEXT_SEQ.set(seq + 1);
    let entry = Active { lo, hi, seq };
    let prev = match ACTIVE.try_with(|a| a.borrow_mut().push(entry)) {
        Ok(()) => CURRENT.replace(Known { lo, hi, guard: 0 }),
        // The thread is exiting and has dropped its list: cache nothing.
        Err(_) => CURRENT.replace(UNKNOWN),
    };
    (prev, seq)
}

/// Ends the record of the call `seq` on `[lo, hi)`; restores `prev` into
/// the cache if the cache still holds this call's range and `prev` is
/// still live. (A call that began on another thread, in a body that
/// migrated, is in no list here; see [`forget_since`].)
fn leave(lo: usize, hi: usize, seq: u64, prev: Known) {
    let _ = ACTIVE.try_with(|a| {
        let mut a = a.borrow_mut();
        if let Some(i) = a
            .iter()
            .rposition(|e| e.seq == seq && (e.lo, e.hi) == (lo, hi))
        {
            a.remove(i);
        }
    });
    if CURRENT.get() != (Known { lo, hi, guard: 0 }) {
        return;
    }
    let live = prev.guard != 0 // re-checked on use
        || prev == UNKNOWN
        || Some((prev.lo, prev.hi)) == THREAD_STACK.get()
        || ACTIVE
            .try_with(|a| a.borrow().iter().any(|e| (e.lo, e.hi) == (prev.lo, prev.hi)))
            .unwrap_or(false);
    CURRENT.set(if live { prev } else { UNKNOWN });
}

/// A mark of this thread's `on_stack` calls, for [`forget_since`].
pub(crate) fn mark() -> u64 {
    NEXT_SEQ.get()
}

/// Forgets the `on_stack` calls that began on this thread since `mark` and
/// have not ended: a body that may move to another thread (a
/// [`SendAsyncCoroutine`](crate::bridge::SendAsyncCoroutine)) calls this
/// after each resume, since a call suspended inside it may end on another
/// thread, which cannot remove it from this thread's list; its stack could
/// then be freed and its addresses reused while this thread still trusted
/// the range. A forgotten call's stack is unknown to `maybe_grow` (which
/// then grows) unless it is a registered `DefaultStack`.
pub(crate) fn forget_since(mark: u64) {
    let _ = ACTIVE.try_with(|a| {
        let mut a = a.borrow_mut();
        let current = CURRENT.get();
        a.retain(|e| {
            let keep = e.seq < mark;
            if !keep
                && current
                    == (Known {
                        lo: e.lo,
                        hi: e.hi,
                        guard: 0,
                    })
            {
                CURRENT.set(UNKNOWN);
            }
            keep
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SliceStack;
    use crate::bridge::{AsyncCoroutine, SendAsyncCoroutine};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn active() -> usize {
        ACTIVE.with_borrow(|a| a.len())
    }

    /// Whether the cache trusts a range other than this thread's stack.
    fn trusts_another_range() -> bool {
        let k = CURRENT.get();
        k.guard == 0 && k != UNKNOWN && Some((k.lo, k.hi)) != THREAD_STACK.get()
    }

    #[test]
    fn a_suspended_on_stack_call_stays_listed_on_its_thread() {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let mut task = AsyncCoroutine::new(move |y| {
            // SAFETY: the frames on it are a few KiB at most.
            let s = unsafe { SliceStack::new(vec![0u8; 64 * 1024].into_boxed_slice()) };
            on_stack(s, || {
                y.block_on(rx).unwrap();
                remaining_stack()
            })
        });
        assert_eq!(poll(&mut task), Poll::Pending);
        assert_eq!(active(), 1);
        tx.send(()).unwrap();
        let Poll::Ready(remaining) = poll(&mut task) else {
            panic!("the body should finish");
        };
        assert!(remaining.is_some_and(|r| r < 64 * 1024));
        assert_eq!(active(), 0);
        assert!(!trusts_another_range());
    }

    #[test]
    fn a_body_that_moves_threads_inside_on_stack_is_forgotten_here() {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        // SAFETY: the body holds a receiver and a SliceStack across its
        // block_on, both Send.
        let mut task = unsafe {
            SendAsyncCoroutine::new(move |y| {
                // (SAFETY: the frames on the SliceStack are a few KiB.)
                let s = SliceStack::new(vec![0u8; 64 * 1024].into_boxed_slice());
                on_stack(s, || {
                    y.block_on(rx).unwrap();
                    remaining_stack()
                })
            })
        };
        assert_eq!(poll(&mut task), Poll::Pending);
        assert_eq!(active(), 0, "the suspended call is forgotten here");
        assert!(!trusts_another_range());
        let remaining = std::thread::spawn(move || {
            tx.send(()).unwrap();
            let out = futures::executor::block_on(task);
            assert_eq!(active(), 0);
            assert!(!trusts_another_range());
            out
        })
        .join()
        .unwrap();
        // On the other thread the SliceStack is unknown: no guard, and not
        // in that thread's list; except on Windows, where the TEB, switched
        // with the stack, describes it.
        assert_eq!(remaining.is_some(), cfg!(windows), "{remaining:?}");
    }

    #[test]
    fn dropping_a_body_suspended_inside_on_stack_unwinds_both_stacks() {
        use std::rc::Rc;
        let drops = Rc::new(Cell::new(0));
        struct Count(Rc<Cell<u32>>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let d = drops.clone();
        let mut task = AsyncCoroutine::new(move |y| {
            let _outer = Count(d.clone());
            let s = DefaultStack::new(64 * 1024).unwrap();
            on_stack(s, || {
                let _inner = Count(d.clone());
                y.block_on(std::future::pending::<()>());
            });
        });
        assert_eq!(poll(&mut task), Poll::Pending);
        assert_eq!(active(), 1);
        drop(task);
        assert_eq!(drops.get(), 2, "the frames on both stacks were dropped");
        assert_eq!(active(), 0);
        assert!(!trusts_another_range());
    }
}
