//! Adversarial tests of the stacks carved from one reservation (one mmap,
//! guards in one `process_madvise`), of the pool that gives its older half
//! back in one `munmap` a run, and of its thread-exit owner: safe code
//! only, as a user of the public API would write it (the harness uses
//! `unsafe` only to observe: reads into a guard through a pipe, a word
//! written and read back per page of a free stack, `fork`, `setrlimit`).
//!
//! Each test names the wrong implementation it catches. Crashing cases run
//! in a child process (see `child_test!`).
//!
//! Unix only: the reservations, the batched `munmap` and the pool's
//! give-back they attack are the Unix stack code's (Windows reserves each
//! stack with `VirtualAlloc`), and the harness observes with `fork`,
//! `setrlimit`, `mlockall` and `getrusage`.
#![cfg(unix)]

#[macro_use]
mod util;

use std::cell::RefCell;
use std::hint::black_box;
use std::io;
use std::sync::mpsc;
use std::thread;

use corostack::stack::{MIN_STACK_SIZE, raise_pool_capacity, set_pool_capacity, trim_pool};
use corostack::{Coroutine, DefaultStack, Stack, Yielder};

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Whether a read() into `addr` fails with EFAULT (a guard: the kernel
/// checks the access for us, no fault in our code).
fn faults(addr: usize) -> bool {
    let mut fds = [0; 2];
    // SAFETY: plain pipe calls; the read targets `addr`, which the kernel
    // checks (EFAULT) rather than our code touching it.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
        let n = libc::read(fds[0], addr as *mut libc::c_void, 1);
        let errno = io::Error::last_os_error().raw_os_error();
        libc::close(fds[0]);
        libc::close(fds[1]);
        n == -1 && errno == Some(libc::EFAULT)
    }
}

/// Every page of the stack's guard faults.
fn guarded<S: Stack>(s: &S) -> bool {
    let (g, p) = (s.guard_size(), page());
    assert!(g >= p, "a DefaultStack has a guard");
    (0..g / p).all(|i| faults(s.limit() - g + i * p))
}

/// Writes `tag` into the lowest and the highest word of a free stack (it
/// is ours: nothing runs on it).
fn fill(s: &DefaultStack, tag: u64) {
    for a in [s.limit(), s.top() - 8] {
        // SAFETY: [limit, top) is the free stack's own writable memory.
        unsafe { (a as *mut u64).write_volatile(tag) };
    }
}

/// Checks what `fill` wrote (a stack that shares its ends with another
/// reads another tag) and reads every fourth page (a page unmapped under a
/// live stack faults: the child dies; reading an untouched page maps the
/// zero page, no memory).
fn check(s: &DefaultStack, tag: u64) {
    for a in [s.limit(), s.top() - 8] {
        // SAFETY: as in `fill`.
        let v = unsafe { (a as *const u64).read_volatile() };
        assert_eq!(v, tag, "the stack at {:#x}", s.limit());
    }
    for a in (s.limit()..s.top()).step_by(4 * page()) {
        // SAFETY: as in `fill`.
        black_box(unsafe { (a as *const u64).read_volatile() });
    }
}

/// No two stacks (guards included) overlap.
fn disjoint(stacks: &[(DefaultStack, u64)]) {
    let mut ranges: Vec<(usize, usize)> = stacks
        .iter()
        .map(|(s, _)| (s.limit() - s.guard_size(), s.top()))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {:#x?} and {:#x?}", w[0], w[1]);
    }
}

// ===========================================================================
// 1. Every carved stack keeps its own guard, no two overlap, and no unmap
// (a full pool's half, trim_pool, set_pool_capacity, the reservation's
// rest released, stacks dropped on another thread) touches a live one.
//
// Catches: guards installed on the wrong part of a stride (its top, or
// only the first stride's), a carve off by a stride (two stacks sharing
// pages, or a stack's top over its neighbour's guard), the rest's unmap
// covering handed-out strides, a run merged across a gap (a live stack
// between two pooled ones unmapped with them).
// ===========================================================================

child_test!(carved_stacks_are_guarded_disjoint_and_stay_mapped, {
    let sizes = [
        64 * 1024,
        64 * 1024 + 1,
        MIN_STACK_SIZE,
        256 * 1024,
        1 << 20,
    ];
    let mut live: Vec<(DefaultStack, u64)> = Vec::new();
    let mut tag = 0x5eed_0000_0000u64;
    for round in 0..6usize {
        for (k, &size) in sizes.iter().enumerate() {
            // Enough of one size in a row to cross several doublings.
            for _ in 0..(20 + 25 * round) / (1 + k / 2) {
                let s = DefaultStack::new(size).unwrap();
                fill(&s, tag);
                live.push((s, tag));
                tag += 1;
            }
        }
        // The reservation's rest given back while stacks carved from it
        // are live.
        if round % 2 == 0 {
            trim_pool();
        }
        // Give back every third: to the pool, which fills and gives its
        // older half back in runs, between stacks that stay live.
        let mut i = 0;
        live.retain(|_| {
            i += 1;
            i % 3 != round % 3
        });
        // Another thread's stacks (of the same reservation) dropped there,
        // its pool trimmed while ours are live.
        let theirs: Vec<DefaultStack> = (0..30)
            .map(|j| DefaultStack::new(sizes[j % sizes.len()]).unwrap())
            .collect();
        let mine: Vec<DefaultStack> = (0..30)
            .map(|j| DefaultStack::new(sizes[j % sizes.len()]).unwrap())
            .collect();
        thread::spawn(move || {
            let made: Vec<DefaultStack> = (0..40)
                .map(|_| DefaultStack::new(64 * 1024).unwrap())
                .collect();
            drop(theirs);
            drop(made);
            if round % 2 == 0 {
                trim_pool();
            } else {
                set_pool_capacity(0);
            }
        })
        .join()
        .unwrap();
        for (j, s) in mine.into_iter().enumerate() {
            if j % 2 == 0 {
                fill(&s, tag);
                live.push((s, tag));
                tag += 1;
            }
        }
        match round {
            1 => trim_pool(),
            3 => {
                let old = set_pool_capacity(0);
                set_pool_capacity(old);
            }
            4 => {
                let old = raise_pool_capacity(500);
                set_pool_capacity(old);
            }
            _ => {}
        }
        disjoint(&live);
        for (s, t) in &live {
            assert!(guarded(s), "the stack at {:#x} has no guard", s.limit());
            check(s, *t);
        }
    }
    // Each runs a coroutine that fills most of it, and gives it back.
    for (s, _) in live.drain(..) {
        let size = s.size();
        let mut co = Coroutine::with_stack(s, move |y: &Yielder<(), usize>, ()| {
            let v = black_box(vec![0u8; 0]);
            y.suspend(size + v.len());
            touch_deep((size / 2).min(48 * 1024))
        });
        assert_eq!(co.resume(()).as_yield(), Some(size));
        assert!(co.resume(()).as_return().is_some());
        let s = co.into_stack();
        assert!(guarded(&s));
    }
});

/// Uses `bytes` of stack (measured by the addresses of its frames' locals,
/// whatever their size in this build), in frames of at least 512 bytes.
#[inline(never)]
fn touch_deep(bytes: usize) -> usize {
    let here = black_box([0u8; 16]);
    deeper(here.as_ptr() as usize, bytes)
}

#[inline(never)]
fn deeper(start: usize, bytes: usize) -> usize {
    let pad = black_box([1u8; 512]);
    if start - pad.as_ptr() as usize >= bytes {
        return pad[0] as usize;
    }
    black_box(deeper(start, bytes)) + pad[5] as usize
}

// ===========================================================================
// 2. Live coroutines between stacks that another thread drops, pools,
// gives back by halves, trims and unmaps: they must keep their frames.
//
// Catches: a run of back-to-back stacks that swallows the live stacks
// between pooled ones (merging by stride rather than by exact adjacency),
// the reservation's rest released over handed-out strides, a pool that
// unmaps what another thread's pool holds.
// ===========================================================================

child_test!(
    live_coroutines_survive_their_neighbours_being_unmapped_elsewhere,
    {
        // Reservations of 1, 2 ... 64 strides used up, then 73 of one of
        // 128: the last stacks share a reservation with its unused rest.
        const N: usize = 200;
        let size = 128 * 1024;
        trim_pool();
        // Back to back from the reservation: even ones run coroutines here,
        // odd ones go to another thread.
        let stacks: Vec<DefaultStack> = (0..N).map(|_| DefaultStack::new(size).unwrap()).collect();
        let mut cos = Vec::new();
        let (tx, rx) = mpsc::channel::<DefaultStack>();
        for (i, s) in stacks.into_iter().enumerate() {
            if i % 2 == 1 {
                tx.send(s).unwrap();
                continue;
            }
            let mut co = Coroutine::with_stack(s, move |y: &Yielder<(), u64>, ()| {
                // Frames that fill the whole stack but its last pages, read
                // back after the neighbours went.
                let words = black_box([i as u64 * 7919; 4 * 1024]);
                y.suspend(words[17]);
                words
                    .iter()
                    .map(|&w| w / (i as u64 * 7919).max(1))
                    .sum::<u64>()
            });
            assert_eq!(co.resume(()).as_yield(), Some(i as u64 * 7919));
            cos.push((i, co));
        }
        drop(tx);
        let other = thread::spawn(move || {
            // The reservation's rest given back, around live coroutines.
            trim_pool();
            // Into a pool of capacity 64: it fills, then gives halves back.
            let mut got: Vec<DefaultStack> = rx.iter().collect();
            assert_eq!(got.len(), N / 2);
            // Dropped in a scrambled order, runs as they come.
            got.sort_by_key(|s| (s.limit() / 4096).wrapping_mul(2654435761) % 1009);
            drop(got);
            // New stacks carved meanwhile, dropped, and everything given back.
            let made: Vec<DefaultStack> =
                (0..100).map(|_| DefaultStack::new(size).unwrap()).collect();
            drop(made);
            set_pool_capacity(0);
            trim_pool();
        });
        other.join().unwrap();
        for (i, mut co) in cos {
            let expect = if i == 0 { 0 } else { 4 * 1024 };
            assert_eq!(
                co.resume(()).as_return(),
                Some(expect as u64),
                "coroutine {i}"
            );
        }
    }
);

// ===========================================================================
// 3. A shrunk capacity holds: after raise_pool_capacity(300) and 300 stacks
// pooled, set_pool_capacity(64) keeps 64, later drops never keep more
// than 64, set_pool_capacity(0) keeps none. DefaultStack::live counts.
//
// Catches: a `room` (the fast path's bound) not recomputed when the
// capacity drops below the vector's allocation (the fast path would keep
// 300), a give-back that unmaps the wrong count, a pool that leaks what it
// gives back.
// ===========================================================================

child_test!(a_shrunk_pool_keeps_no_more_than_its_capacity, {
    let base = DefaultStack::live();
    thread::spawn(move || {
        let held = || DefaultStack::live() - base;
        let old = raise_pool_capacity(300);
        assert_eq!(old, corostack::stack::POOL_CAPACITY);
        let v: Vec<DefaultStack> = (0..300).map(|_| DefaultStack::default()).collect();
        drop(v);
        assert_eq!(held(), 300);
        assert_eq!(set_pool_capacity(old), 300);
        assert_eq!(held(), old);
        // 64 from the pool, 136 new; dropped through the fast path.
        let v: Vec<DefaultStack> = (0..200).map(|_| DefaultStack::default()).collect();
        assert_eq!(held(), 200);
        drop(v);
        assert!(held() <= old, "the pool keeps {} of capacity {old}", held());
        assert!(
            held() >= old / 2,
            "a full pool keeps its newer half: {}",
            held()
        );
        // Coroutines too (their stacks through into_stack and drop).
        for _ in 0..3 * old {
            let mut co = Coroutine::<(), (), ()>::new(|_, ()| {});
            assert!(co.resume(()).as_return().is_some());
            drop(co.into_stack());
        }
        assert!(held() <= old);
        assert_eq!(set_pool_capacity(0), old);
        assert_eq!(held(), 0);
        drop(DefaultStack::default());
        assert_eq!(held(), 0, "capacity 0 keeps nothing");
        set_pool_capacity(old);
    })
    .join()
    .unwrap();
    assert_eq!(
        DefaultStack::live(),
        base,
        "the thread's pool is unmapped at exit"
    );
});

// ===========================================================================
// 4. Thread exit in every order against the pool's owner (a const
// thread-local without destructor, emptied by another's): coroutines and
// stacks dropped from thread-local destructors that run before it and
// after it, suspended coroutines kept in thread-locals until the end, a
// thread whose first pool use is in a thread-local destructor. No crash,
// nothing read after free (valgrind), and every mapping unmapped when the
// threads are gone.
//
// Catches: a pool that keeps stacks given after its owner ran (leaked:
// live() stays up), a pool freed while still reachable (valgrind), an
// owner never registered when the first use is during thread exit
// (leak).
// ===========================================================================

type Co = Coroutine<(), (), ()>;

struct Holder(RefCell<Vec<Co>>);

impl Drop for Holder {
    fn drop(&mut self) {
        // Drop the kept coroutines (suspended ones unwind here, or the
        // exit hook did already), then make, run and drop new ones.
        self.0.borrow_mut().clear();
        for _ in 0..5 {
            let mut co = Co::new(|y, ()| y.suspend(()));
            assert!(co.resume(()).as_yield().is_some());
            drop(co);
            drop(DefaultStack::new(128 * 1024).unwrap());
        }
    }
}

thread_local! {
    static EARLY: Holder = const { Holder(RefCell::new(Vec::new())) };
    static LATE: Holder = const { Holder(RefCell::new(Vec::new())) };
    static ONLY_AT_EXIT: Holder = const { Holder(RefCell::new(Vec::new())) };
}

fn suspended() -> Co {
    let mut co = Co::new(|y, ()| {
        let v = vec![1u8; 100];
        y.suspend(());
        black_box(v);
    });
    assert!(co.resume(()).as_yield().is_some());
    co
}

child_test!(stacks_dropped_in_any_thread_exit_order_are_all_unmapped, {
    let base = DefaultStack::live();
    let mut threads = Vec::new();
    for n in 0..4 {
        threads.push(thread::spawn(move || {
            // Registered before the pool's owner: destroyed after it.
            EARLY.with(|_| ());
            for _ in 0..10 + n {
                drop(suspended());
            }
            EARLY.with(|h| h.0.borrow_mut().extend((0..5).map(|_| suspended())));
            // Registered after it: destroyed before it.
            LATE.with(|h| h.0.borrow_mut().extend((0..5).map(|_| suspended())));
            // Coroutines forgotten: the hook unwinds them, their stacks stay.
            if n == 3 {
                std::mem::forget(suspended());
            }
        }));
        // A thread that never pools until its thread-locals die.
        threads.push(thread::spawn(|| ONLY_AT_EXIT.with(|_| ())));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        DefaultStack::live(),
        base + 1,
        "every stack but the forgotten coroutine's is unmapped when its thread ends"
    );
});

// ===========================================================================
// 5. fork: a stride carved in the parent and never touched before the
// fork, handed out in the child, still has its guard there (guard markers
// of a mapping with no page faulted in are copied only if the kernel
// treats the mapping as having page tables to copy).
//
// Catches: guards that do not survive fork (a reservation whose guard
// markers live only in page tables that fork does not copy).
// ===========================================================================

child_test!(a_forked_child_s_carved_stacks_keep_their_guards, {
    // A stride of its own (no other test in this process uses it).
    let size = 320 * 1024;
    // Reservations of 1 and 2 strides, used up, then one of 4: the fourth
    // stack is its top stride, the three below it are free, their guards
    // installed here, nothing of them touched.
    let held: Vec<DefaultStack> = (0..4).map(|_| DefaultStack::new(size).unwrap()).collect();
    // SAFETY: the child only allocates stacks, checks them and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // The three free strides, carved in the child.
        let fresh: Vec<DefaultStack> = (0..3).map(|_| DefaultStack::new(size).unwrap()).collect();
        let mut ok = held.iter().all(guarded) && fresh.iter().all(guarded);
        for s in fresh {
            let mut co = Coroutine::with_stack(s, |_: &Yielder<(), ()>, ()| touch_deep(200 * 1024));
            ok &= co.resume(()).as_return().is_some();
        }
        // SAFETY: ends the forked child without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "a guard is missing in the forked child (status {status:#x})"
    );
    assert!(held.iter().all(guarded));
    // And here, the same strides carved.
    let fresh: Vec<DefaultStack> = (0..3).map(|_| DefaultStack::new(size).unwrap()).collect();
    assert!(fresh.iter().all(guarded));
});

// ===========================================================================
// 6. An address-space limit (RLIMIT_AS): stacks are made until a clear
// OutOfMemory, close to the limit (the reservation's doubling must fall
// back), never a crash; and an idle reservation (strides reserved, none
// handed out) must not make a stack of another size fail.
//
// Catches: a reservation that stops handing out stacks when its doubling
// fails (an OutOfMemory far from the limit), and one whose idle rest is
// kept when a stack of another size needs the room.
// ===========================================================================

/// valgrind and qemu-user manage the address space themselves (an
/// address-space limit or a lock of future mappings would hit theirs):
/// the tests that change it say so and finish at once there.
fn address_space_is_managed() -> bool {
    if util::under_valgrind() || util::emulated() {
        println!("skipped: valgrind or qemu-user");
        return true;
    }
    false
}

/// The process's address space now, from /proc/self/status (VmSize).
fn vm_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Makes and gives back one stack of 1 MiB first (warming up what stacks
/// and their error path need, which reads /proc), then limits the address
/// space to `headroom` above what is in use.
fn warm_then_limit_to(headroom: usize) {
    drop(DefaultStack::new(1 << 20).unwrap());
    trim_pool();
    limit_address_space(headroom);
}

fn limit_address_space(headroom: usize) {
    let limit = (vm_size() + headroom) as libc::rlim_t;
    let r = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a plain setrlimit of our own process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) }, 0);
}

child_test!(
    #[cfg_attr(
        feature = "asan",
        ignore = "ASan's own mappings fail under an address-space limit or a lock"
    )]
    stacks_are_made_up_to_an_address_space_limit,
    {
        if address_space_is_managed() {
            return;
        }
        let mib = 1 << 20;
        warm_then_limit_to(200 * mib);
        let mut stacks = Vec::new();
        let err = loop {
            match DefaultStack::new(mib) {
                Ok(s) => stacks.push(s),
                Err(e) => break e,
            }
            assert!(stacks.len() < 1000, "the limit is not enforced");
        };
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
        // 200 MiB of room: strides of 1 MiB + the guard; some goes to malloc.
        assert!(
            stacks.len() >= 170,
            "only {} stacks before {err}",
            stacks.len()
        );
        // Given back, they can be made again.
        drop(stacks);
        trim_pool();
        let again: Vec<DefaultStack> = (0..150).map(|_| DefaultStack::new(mib).unwrap()).collect();
        drop(again);
    }
);

child_test!(
    #[cfg_attr(
        feature = "asan",
        ignore = "ASan's own mappings fail under an address-space limit or a lock"
    )]
    an_idle_reservation_does_not_make_another_size_fail,
    {
        if address_space_is_managed() {
            return;
        }
        let mib = 1 << 20;
        warm_then_limit_to(200 * mib);
        // 65 stacks of 1 MiB: reservations of 1, 2, 4 ... 32 strides used up,
        // then one of 64 strides with 62 left idle (about 63 MiB).
        let held: Vec<DefaultStack> = (0..65).map(|_| DefaultStack::new(mib).unwrap()).collect();
        // About 200 - 129 = 71 MiB left, of which malloc takes a little: a
        // stack of 100 MiB fits only in the idle rest's room.
        let big = DefaultStack::new(100 * mib);
        assert!(
            big.is_ok(),
            "a 100 MiB stack fails while about 63 MiB of address space are reserved, idle: {}",
            big.unwrap_err()
        );
        drop(held);
    }
);

// ===========================================================================
// 7. Odd sizes through the public API: a clear error or a working stack.
//
// Catches: a size that overflows the stride computation (usize::MAX, the
// largest accepted size), a size not a page multiple carved unaligned.
// ===========================================================================

child_test!(odd_sizes_are_an_error_or_a_working_guarded_stack, {
    for size in [
        0,
        1,
        MIN_STACK_SIZE - 1,
        usize::MAX,
        usize::MAX / 2,
        corostack::stack::MAX_STACK_SIZE + 1,
    ] {
        let e = DefaultStack::new(size).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{size}: {e}");
    }
    for size in [
        MIN_STACK_SIZE,
        MIN_STACK_SIZE + 1,
        100_001,
        MIN_STACK_SIZE + 3 * page() - 1,
        corostack::stack::MAX_STACK_SIZE,
    ] {
        match DefaultStack::new(size) {
            Ok(s) => {
                assert!(s.size() >= size && s.size() % page() == 0, "{size}");
                assert!(guarded(&s), "{size}");
                let mut co =
                    Coroutine::with_stack(s, |_: &Yielder<(), ()>, ()| touch_deep(16 * 1024));
                assert!(co.resume(()).as_return().is_some());
                let s = co.into_stack();
                assert!(guarded(&s), "{size}");
            }
            // OutOfMemory from the kernel; valgrind refuses 128 GiB with
            // EINVAL (InvalidInput): a clear error either way.
            Err(e) => assert!(
                e.to_string().contains("cannot map a coroutine stack"),
                "{size}: {e}"
            ),
        }
    }
});

// ===========================================================================
// 8. An overflow on a carved stack hits its own guard, between live
// neighbours carved from the same reservation (with the overflow handler:
// its message names the stack's size and an address in its guard).
//
// Catches: a stride whose guard is missing or misplaced (the overflow
// would run through the neighbour below and fault in its guard, or not at
// all).
// ===========================================================================

#[cfg(feature = "overflow-handler")]
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = black_box([n; 64]);
    1 + black_box(recurse(pad[3] + 1))
}

#[cfg(feature = "overflow-handler")]
#[test]
fn an_overflow_on_a_carved_stack_hits_its_own_guard() {
    const ROLE: &str = "an_overflow_on_a_carved_stack_hits_its_own_guard";
    let size = 96 * 1024;
    if util::child_role().as_deref() == Some(ROLE) {
        corostack::stack::install_overflow_handler();
        let stacks: Vec<DefaultStack> = (0..7).map(|_| DefaultStack::new(size).unwrap()).collect();
        let mut cos: Vec<Coroutine<(), (), (), DefaultStack>> = Vec::new();
        for (i, s) in stacks.into_iter().enumerate() {
            println!(
                "STACK {i} {:#x} {:#x}",
                s.limit() - s.guard_size(),
                s.limit()
            );
            let mut co = Coroutine::with_stack(s, move |y: &Yielder<(), ()>, ()| {
                if i == 3 {
                    black_box(recurse(0));
                }
                y.suspend(());
            });
            if i != 3 {
                assert!(co.resume(()).as_yield().is_some());
            }
            cos.push(co);
        }
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        cos[3].resume(());
        unreachable!("no overflow");
    }
    let out = util::run_child(ROLE, ROLE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = stdout
        .lines()
        .find(|l| l.starts_with("STACK 3 "))
        .expect("stack 3's range");
    let mut parts = line
        .split_whitespace()
        .skip(2)
        .map(|h| usize::from_str_radix(&h[2..], 16).unwrap());
    let (lo, hi) = (parts.next().unwrap(), parts.next().unwrap());
    assert_overflow_hit(&stdout, &stderr, size, lo..hi);
}

/// Asserts that the child's stderr holds the overflow report for a stack of
/// `size` bytes, with the fault's address inside `guard`.
#[cfg(feature = "overflow-handler")]
fn assert_overflow_hit(stdout: &str, stderr: &str, size: usize, guard: std::ops::Range<usize>) {
    let prefix = format!(
        "corostack: coroutine stack overflow (stack of {size} bytes; the fault hit its guard page at 0x"
    );
    let at = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no overflow message: {stdout}{stderr}"));
    let at = usize::from_str_radix(at.split(')').next().unwrap(), 16).unwrap();
    assert!(
        guard.contains(&at),
        "the fault at {at:#x} is not in the guard {guard:#x?}: {stdout}{stderr}"
    );
}

// ===========================================================================
// 9. fork while another thread holds the reservation's lock (it maps and
// guards a new reservation at every stack, each of another size): the
// child, where that lock stays taken forever, still makes guarded stacks,
// and does not hang.
//
// Catches: a reservation behind a lock that is waited for (the child
// would hang: the test fails after 20 s), a child that uses a
// reservation half set up by the thread that forked away.
//
// Not under qemu-user: there a child forked while another guest thread
// maps and unmaps hung in 2 of 40 runs (qemu-s390x 7.2), on a path where
// the crate takes no lock it could wait for (the reservation's is only
// tried, the guard table is lock-free): qemu-user's fork is not safe with
// a thread in a system call. Natively it runs 100 forks.
// ===========================================================================

child_test!(
    a_child_forked_while_the_reservation_is_taken_makes_stacks,
    {
        use std::sync::Arc;
        if util::emulated() {
            println!("skipped: qemu-user (a child forked while another thread maps may hang)");
            return;
        }
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            thread::spawn(move || {
                // Nothing pooled: every stack comes from a new reservation.
                set_pool_capacity(0);
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    drop(DefaultStack::new(MIN_STACK_SIZE + (k % 7) * page()).unwrap());
                    k += 1;
                }
            })
        };
        for _ in 0..util::scaled(100, 10) {
            // SAFETY: the child allocates stacks, checks them, and _exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let stacks: Vec<DefaultStack> = (0..4)
                    .map(|i| DefaultStack::new(64 * 1024 + i * page()).unwrap())
                    .collect();
                let ok = stacks.iter().all(guarded);
                // SAFETY: ends the forked child without running the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 3 }) };
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut status = 0;
            loop {
                // SAFETY: polls our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                assert_eq!(r, 0);
                if Instant::now() > deadline {
                    // SAFETY: our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("the forked child hangs");
                }
                thread::sleep(Duration::from_millis(1));
            }
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the forked child failed (status {status:#x})"
            );
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    }
);

// ===========================================================================
// 10. The trampoline enters the body by a jump with a hand-written return
// address: unwinders must still go from the body, through the trampoline's
// frame, to whoever resumed the coroutine last (its link), for a backtrace
// and for a panic, also after the coroutine was suspended and resumed by
// another function, and during the forced unwind of a drop.
//
// Catches: a return address or CFA rule that leads unwinders anywhere but
// the current resumer's switch frame (a backtrace that stops at the
// trampoline, loops, or shows the first resumer: checked by pushing 0 as
// the return address, which fails both backtrace tests). The panic test
// checks the other path (the entry catches the body's panic, the resumer
// of the moment rethrows it): one that the first resumer, or nobody,
// receives.
// ===========================================================================

type Bt = Coroutine<(), (), String>;

#[inline(never)]
fn first_resumer(co: &mut Bt) {
    assert!(black_box(co.resume(())).as_yield().is_some());
}

#[inline(never)]
fn second_resumer(co: &mut Bt) -> String {
    black_box(co.resume(())).as_return().unwrap()
}

#[inline(never)]
fn captured_in_the_body() -> String {
    std::backtrace::Backtrace::force_capture().to_string()
}

/// The index of the first frame line whose function name ends in `name`.
fn frame(bt: &str, name: &str) -> Option<usize> {
    bt.lines().position(|l| l.trim_end().ends_with(name))
}

#[test]
fn a_backtrace_after_a_second_resume_reaches_the_second_resumer() {
    let mut co = Bt::new(|y, ()| {
        y.suspend(());
        black_box(captured_in_the_body())
    });
    first_resumer(&mut co);
    let bt = second_resumer(&mut co);
    let (inside, resumer, test) = (
        frame(&bt, "captured_in_the_body"),
        frame(&bt, "second_resumer"),
        frame(
            &bt,
            "a_backtrace_after_a_second_resume_reaches_the_second_resumer",
        ),
    );
    assert!(
        inside.is_some() && inside < resumer && resumer < test,
        "the backtrace does not reach the second resumer:\n{bt}"
    );
    assert!(
        frame(&bt, "first_resumer").is_none(),
        "a resumer that has returned:\n{bt}"
    );
}

#[inline(never)]
fn dropper(co: Bt) {
    drop(black_box(co));
}

#[test]
fn a_backtrace_in_the_forced_unwind_of_a_drop_reaches_the_dropper() {
    struct Capture(std::rc::Rc<RefCell<String>>);
    impl Drop for Capture {
        fn drop(&mut self) {
            *self.0.borrow_mut() = captured_in_the_body();
        }
    }
    let got = std::rc::Rc::new(RefCell::new(String::new()));
    let cap = Capture(got.clone());
    let mut co = Bt::new(move |y, ()| {
        let _cap = cap;
        y.suspend(());
        String::new()
    });
    first_resumer(&mut co);
    dropper(co);
    let bt = got.borrow().clone();
    let (inside, dropper_at) = (frame(&bt, "captured_in_the_body"), frame(&bt, "dropper"));
    assert!(
        inside.is_some() && inside < dropper_at,
        "the backtrace does not reach the dropper:\n{bt}"
    );
}

#[test]
fn a_panic_after_a_second_resume_reaches_the_second_resumer() {
    let mut co = Bt::new(|y, ()| {
        y.suspend(());
        std::panic::panic_any(0x5eedu32)
    });
    first_resumer(&mut co);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| second_resumer(&mut co)))
        .unwrap_err();
    assert_eq!(err.downcast_ref::<u32>(), Some(&0x5eed));
}

// ===========================================================================
// 11. A process that locks its future mappings (mlockall(MCL_FUTURE), as
// real-time programs do): every new mapping is populated (and locked) at
// once, and guard advice is refused on locked mappings. A reservation
// then populates all its strides, fails to install their guards, and is
// unmapped; if the next stack tries again, every stack populates a whole
// reservation (up to 256 MiB) to use one stride. Stacks must stay guarded,
// and cost about their own pages (after one reservation tried, at most).
//
// Catches: a reservation retried at every stack after its guards were
// refused (here 20 stacks of 64 KiB cost over 50,000 page faults, 2,580 a
// stack, the 128 strides of the doubled reservation, where their own pages
// are 20 a stack).
// ===========================================================================

/// Minor page faults of this process so far.
fn minor_faults() -> libc::c_long {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u.ru_minflt
    }
}

child_test!(
    #[cfg_attr(
        feature = "asan",
        ignore = "ASan's own mappings fail under an address-space limit or a lock"
    )]
    stacks_under_mlockall_cost_their_own_pages,
    {
        if address_space_is_managed() {
            return;
        }
        let size = 64 * 1024;
        // Reservations of 1, 2 ... 64 strides, used up: the next doubles.
        let held: Vec<DefaultStack> = (0..127).map(|_| DefaultStack::new(size).unwrap()).collect();
        // SAFETY: locks the process's future mappings; undone below.
        if unsafe { libc::mlockall(libc::MCL_FUTURE) } != 0 {
            // Without CAP_IPC_LOCK and a large RLIMIT_MEMLOCK there is nothing
            // to check: say so in the output.
            println!("skipped: mlockall: {}", io::Error::last_os_error());
            return;
        }
        let before = minor_faults();
        let stacks: Vec<DefaultStack> = (0..20).map(|_| DefaultStack::new(size).unwrap()).collect();
        let faults = minor_faults() - before;
        // SAFETY: undoes the mlockall above.
        unsafe { libc::munlockall() };
        // A stack's own pages: (64 KiB + the 16 KiB guard) / 4 KiB = 20.
        let own = (size + 4 * page()) / page();
        // One reservation may be tried (the doubled one, 128 strides, all
        // populated) before the refusal is known; then about their own pages.
        assert!(
            faults <= (128 * own + 20 * own * 4) as libc::c_long,
            "20 stacks of {own} pages cost {faults} page faults under mlockall(MCL_FUTURE)"
        );
        for s in stacks {
            assert!(guarded(&s));
            let mut co = Coroutine::with_stack(s, |_: &Yielder<(), ()>, ()| touch_deep(16 * 1024));
            assert!(co.resume(()).as_return().is_some());
        }
        drop(held);
    }
);

// ===========================================================================
// 12. Sizes that alternate, in runs of four (reservations of 1, 2 and 4
// strides, three of the last left over at each change of size), with
// pooling off: the address space stays flat.
//
// Catches: a change of stride that forgets the unused rest of the
// reservation before (three strides of address space leaked at every
// change: 600 MiB over this loop).
// ===========================================================================

child_test!(alternating_sizes_leak_no_address_space, {
    if address_space_is_managed() {
        return;
    }
    thread::spawn(|| {
        set_pool_capacity(0);
        let sizes = [1 << 20, (1 << 20) + 64 * 1024];
        let run = |size: usize| {
            let stacks: Vec<DefaultStack> =
                (0..4).map(|_| DefaultStack::new(size).unwrap()).collect();
            assert!(stacks.iter().all(guarded));
        };
        run(sizes[0]);
        run(sizes[1]);
        let before = vm_size();
        for i in 0..200 {
            run(sizes[i % 2]);
        }
        let grown = vm_size().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "the address space grew by {} MiB",
            grown >> 20
        );
    })
    .join()
    .unwrap();
});

// ===========================================================================
// 13. The pool's slot under churn: a random mix of default stacks, stacks
// of other sizes, coroutines from `Coroutine::new` with a closure of 192
// KiB (fits the default size only: `place_closure_known` skips the check),
// capacity changes (0 included), trims, `into_stack`, bodies that panic,
// closures whose drop panics, and unwinds and destructors that drop and
// make other coroutines and stacks while their own are being given back.
// After every step: no two live stacks overlap, every default stack and
// every coroutine's stack has the default size (the body finds its own
// stack's bounds with `remaining_stack`), and every live stack and body
// still reads what it wrote. Three threads at once (one registry, one
// reservation, three pools).
//
// Catches: a stack handed out twice (a slow path that stages a mapping
// the slot still holds, a `spill` that keeps a copy: two owners, whose
// tags or frames overwrite each other), a `DefaultStack::default` that
// serves a pooled stack of another size (the closure then lands below the
// stack: the body's bounds are wrong, or a neighbour's tags are
// overwritten, or a fault), a stack unmapped while live (a fault), a
// registry lookup that misses a live stack (`remaining_stack` is `None`).
// ===========================================================================

/// A coroutine whose body reports its stack's limit (the first yield),
/// then checks its closure's 192 KiB and a local on every resume.
type Big = Coroutine<(), usize, (), DefaultStack>;

/// A xorshift generator (deterministic per seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Words of the big closure's capture: 192 KiB, which fits a default
/// stack (with its copies and the entry's reserve) and no smaller one.
const BIG_WORDS: usize = 24 * 1024;

/// `Coroutine::new` with a 192 KiB capture; `panic_at`: the resume that
/// panics (0: never). Returns it started (its limit read).
fn big(tag: u64, panic_at: usize) -> (Big, usize) {
    let data = Box::new([tag; BIG_WORDS]);
    let data = *data;
    let mut co = Big::new(move |y: &Yielder<(), usize>, ()| {
        let local = black_box([!tag; 64]);
        let sp = local.as_ptr() as usize;
        let room = corostack::remaining_stack().expect("a coroutine's DefaultStack is found");
        let default = corostack::stack::DEFAULT_STACK_SIZE;
        // The closure (192 KiB) and its copies lie above: a default stack
        // has more than that left, less than all of it.
        assert!(
            room < default - BIG_WORDS * 8 && room > default / 4,
            "the body's stack has {room} bytes left: not a default stack"
        );
        // `remaining_stack` measures from its own frame, a little below
        // `local`: the limit is the page below.
        y.suspend((sp - room) & !(page() - 1));
        for n in 2.. {
            assert!(
                data.iter().all(|&w| w == tag),
                "the capture was overwritten"
            );
            assert!(
                black_box(&local).iter().all(|&w| w == !tag),
                "a frame was overwritten"
            );
            assert!(n != panic_at, "a body that panics");
            y.suspend(0);
        }
    });
    let limit = co.resume(()).as_yield().expect("the first yield");
    (co, limit)
}

/// Makes and drops coroutines and stacks of every kind (from destructors
/// and unwinds, while another stack is being given back).
///
/// Its coroutine's closure is small: a destructor may run on a
/// coroutine's stack, which a debug build's copies of 192 KiB would
/// overflow.
fn churn_a_little(rng: &mut Rng) {
    let mut co = Coroutine::<(), (), ()>::new(|y, ()| {
        let room = corostack::remaining_stack().unwrap();
        assert!(room > corostack::stack::DEFAULT_STACK_SIZE / 2, "{room}");
        y.suspend(());
    });
    assert!(co.resume(()).as_yield().is_some());
    let s = DefaultStack::new(64 * 1024).unwrap();
    let d = DefaultStack::default();
    match rng.below(3) {
        0 => drop((s, co, d)),
        1 => drop((d, s, co)),
        _ => drop((co, d, s)),
    }
}

/// Made by `churn_a_little` and friends from a destructor: in a closure
/// never started (dropped with its coroutine), in a body's unwind.
struct ChurnOnDrop(u64, bool);

impl Drop for ChurnOnDrop {
    fn drop(&mut self) {
        churn_a_little(&mut Rng(self.0 | 1));
        if self.1 && !thread::panicking() {
            panic!("a closure whose drop panics");
        }
    }
}

fn pool_churn(seed: u64, steps: usize) {
    let default = corostack::stack::DEFAULT_STACK_SIZE;
    let mut rng = Rng(seed);
    // Free stacks with their tags, and started coroutines with their
    // stack's limit.
    let mut stacks: Vec<(DefaultStack, u64)> = Vec::new();
    let mut cos: Vec<(Big, usize)> = Vec::new();
    let sizes = [64 * 1024, 128 * 1024, default, default + 64 * 1024];
    for step in 0..steps {
        match rng.below(14) {
            0 | 1 => {
                let s = DefaultStack::default();
                assert_eq!(s.size(), default, "step {step}");
                let tag = rng.next();
                fill(&s, tag);
                stacks.push((s, tag));
            }
            2 => {
                let s = DefaultStack::new(sizes[rng.below(sizes.len())]).unwrap();
                let tag = rng.next();
                fill(&s, tag);
                stacks.push((s, tag));
            }
            3 | 4 if !stacks.is_empty() => {
                let (s, tag) = stacks.swap_remove(rng.below(stacks.len()));
                check(&s, tag);
                drop(s);
            }
            5 | 6 => cos.push(big(rng.next(), if rng.below(4) == 0 { 3 } else { 0 })),
            7 if !cos.is_empty() => {
                let (mut co, limit) = cos.swap_remove(rng.below(cos.len()));
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    co.resume(());
                }))
                .is_err();
                if panicked || rng.below(2) == 0 {
                    // Done (by a panic) or suspended (unwound here): its
                    // stack comes back, of the default size.
                    let s = co.into_stack();
                    assert_eq!((s.size(), s.limit()), (default, limit), "step {step}");
                    let tag = rng.next();
                    fill(&s, tag);
                    stacks.push((s, tag));
                } else {
                    cos.push((co, limit));
                }
            }
            8 if !cos.is_empty() => {
                // Its unwind drops it; the rest stay.
                let (co, _) = cos.swap_remove(rng.below(cos.len()));
                drop(co);
            }
            9 => {
                let old = set_pool_capacity(rng.below(4));
                if rng.below(2) == 0 {
                    set_pool_capacity(old);
                }
            }
            10 => {
                raise_pool_capacity(rng.below(8));
            }
            11 => trim_pool(),
            12 => {
                // A body whose unwind drops other coroutines and stacks
                // (and makes new ones) while its own stack is given back.
                let inner: Vec<(Big, usize)> =
                    (0..rng.below(3)).map(|_| big(rng.next(), 0)).collect();
                let s = DefaultStack::new(sizes[rng.below(sizes.len())]).unwrap();
                let guard = ChurnOnDrop(rng.next(), false);
                let mut co = Coroutine::<(), (), ()>::new(move |y, ()| {
                    let _keep = (inner, s, guard);
                    y.suspend(());
                });
                assert!(co.resume(()).as_yield().is_some());
                drop(co);
            }
            _ => {
                // A coroutine never started whose closure's drop churns
                // (and panics, half of the time).
                let guard = ChurnOnDrop(rng.next(), rng.below(2) == 0);
                let co = Coroutine::<(), (), ()>::new(move |_, ()| drop(guard));
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(co)));
            }
        }
        // The invariants: live stacks disjoint (guards included), each
        // with what it was given.
        let mut ranges: Vec<(usize, usize)> = stacks
            .iter()
            .map(|(s, _)| (s.limit() - s.guard_size(), s.top()))
            .chain(
                cos.iter()
                    .map(|&(_, limit)| (limit - 4 * page(), limit + default)),
            )
            .collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "step {step}: overlap {:#x?} {:#x?}",
                w[0],
                w[1]
            );
        }
        if step % 16 == 0 {
            stacks.iter().for_each(|(s, tag)| check(s, *tag));
        }
    }
    for (mut co, _) in cos {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            co.resume(());
        }));
    }
    stacks.iter().for_each(|(s, tag)| check(s, *tag));
}

child_test!(the_pool_s_slot_hands_out_each_stack_once_and_of_its_size, {
    let base = DefaultStack::live();
    // Quiet: the bodies and closures that panic on purpose.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.to_string();
        if !msg.contains("a body that panics") && !msg.contains("a closure whose drop panics") {
            hook(info);
        }
    }));
    let steps = util::scaled(1500, 200);
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(move || pool_churn(0x9E37_79B9_7F4A_7C15 ^ (t + 1), steps))
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = std::panic::take_hook();
    assert_eq!(
        DefaultStack::live(),
        base,
        "every stack unmapped at thread exit"
    );
});

// ===========================================================================
// 14. A coroutine whose drop panics (the unwind it forces ends in a panic:
// a closure never started whose drop panics, a body that catches the
// forced unwind and panics) still gives its stack back.
//
// Catches: a `Drop for Coroutine` that resumes the body's panic before it
// drops the stack (the stack, pooled or not, is leaked: `live` stays up).
// ===========================================================================

/// Panics when dropped, unless already panicking.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("a drop that panics");
        }
    }
}

child_test!(a_coroutine_whose_drop_panics_gives_its_stack_back, {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("a drop that panics") {
            hook(info);
        }
    }));
    thread::spawn(|| {
        // Nothing pooled: `live` counts the stacks not given back.
        set_pool_capacity(0);
        let base = DefaultStack::live();
        let drop_panics = |co: Coroutine<(), (), ()>| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(co))).is_err()
        };
        let guard = PanicOnDrop;
        let co = Coroutine::<(), (), ()>::new(move |_, ()| drop(guard));
        assert!(drop_panics(co), "the closure's drop panics");
        assert_eq!(
            DefaultStack::live(),
            base,
            "the stack of a coroutine whose closure's drop panicked"
        );
        let mut co = Coroutine::<(), (), ()>::new(|y, ()| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| y.suspend(())));
            assert!(caught.is_err(), "the forced unwind");
            drop(PanicOnDrop);
        });
        assert!(co.resume(()).as_yield().is_some());
        assert!(drop_panics(co), "the body panics in its unwind");
        assert_eq!(
            DefaultStack::live(),
            base,
            "the stack of a coroutine whose unwind ended in a panic"
        );
    })
    .join()
    .unwrap();
});

// ===========================================================================
// 15. The registry under churn: three threads make and drop stacks of
// mixed sizes (not all whole pages), and coroutines on them that find
// their own stack with `remaining_stack`, while a coroutine on another
// thread overflows: the handler still finds that guard (its slot is not
// taken, moved or unregistered by the others' registrations and
// tombstones) and reports the stack's size, rounded to pages.
//
// Catches: a claim that is not atomic (two registrations in one slot:
// one of them is lost, or its sizes are another's), an unregister that
// removes another key, a lookup that stops at a tombstone or at a slot
// being filled, sizes packed wrongly for sizes that are not whole units.
// ===========================================================================

/// Makes and drops stacks and coroutines of mixed sizes until the process
/// ends, checking that each coroutine's stack is found.
#[cfg(feature = "overflow-handler")]
fn registry_churn(seed: u64) {
    let mut rng = Rng(seed);
    let sizes = [MIN_STACK_SIZE, 70_000, 64 * 1024, 200_000, 1 << 20, 3 << 20];
    let mut held: Vec<DefaultStack> = Vec::new();
    loop {
        let size = sizes[rng.below(sizes.len())];
        let s = DefaultStack::new(size).unwrap();
        let (lo, hi) = (s.limit(), s.top());
        let mut co = Coroutine::with_stack(s, move |_: &Yielder<(), ()>, ()| {
            let here = black_box(0u8);
            let sp = &here as *const u8 as usize;
            let room = corostack::remaining_stack().expect("a DefaultStack is found");
            assert!(
                lo <= sp && sp < hi && room <= sp - lo,
                "{room} {sp:#x} {lo:#x}"
            );
        });
        assert!(co.resume(()).as_return().is_some());
        held.push(co.into_stack());
        if held.len() > 40 || rng.below(3) == 0 {
            let n = rng.below(held.len() + 1);
            held.drain(..n);
        }
        if rng.below(50) == 0 {
            trim_pool();
        }
    }
}

#[cfg(feature = "overflow-handler")]
#[test]
fn an_overflow_is_reported_while_other_threads_churn_the_registry() {
    const ROLE: &str = "an_overflow_is_reported_while_other_threads_churn_the_registry";
    // Not a whole number of pages: the stack has 200,704 bytes (4 KiB
    // pages) or 245,760 (16 or 64 KiB).
    let size = 200_000;
    if util::child_role().as_deref() == Some(ROLE) {
        corostack::stack::install_overflow_handler();
        for t in 0..3 {
            thread::spawn(move || registry_churn(0x2545_F491_4F6C_DD1D ^ t));
        }
        thread::sleep(std::time::Duration::from_millis(200));
        let s = DefaultStack::new(size).unwrap();
        println!(
            "STACK {:#x} {:#x} {}",
            s.limit() - s.guard_size(),
            s.limit(),
            s.size()
        );
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        let mut co = Coroutine::with_stack(s, |_: &Yielder<(), ()>, ()| {
            // Churn the registry a little more from the doomed stack.
            thread::sleep(std::time::Duration::from_millis(50));
            black_box(recurse(0));
        });
        co.resume(());
        unreachable!("no overflow");
    }
    let out = util::run_child(ROLE, ROLE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("STACK ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no stack: {stdout}{stderr}"));
    let mut parts = line.split_whitespace();
    let mut hex = || usize::from_str_radix(&parts.next().unwrap()[2..], 16).unwrap();
    let (lo, hi) = (hex(), hex());
    let rounded: usize = parts.next().unwrap().parse().unwrap();
    assert_eq!(rounded, size.next_multiple_of(page()));
    assert_overflow_hit(&stdout, &stderr, rounded, lo..hi);
}
