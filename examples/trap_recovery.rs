//! What trap recovery costs, corostack beside corosensei in one run: taking
//! a coroutine's trap handler, and a whole recovered overflow (a coroutine
//! on a 64 KiB stack recurses into its guard; the SIGSEGV handler, the
//! embedder's, sends it back; `resume` returns 42; the stack is taken back
//! for the next round).
//!
//! ```text
//! cargo run --release --example trap_recovery
//! ```
//!
//! Prints one line a figure: `<what> <crate> ns=<median of 7 runs>`.

#![warn(clippy::undocumented_unsafe_blocks)]

// Unix: the embedder's handler is a SIGSEGV handler (sigaction,
// sigaltstack, ucontext_t).
#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("trap_recovery: the example's handler is a Unix signal handler");
}

#[cfg(unix)]
mod unix {
    use std::cell::Cell;
    use std::hint::black_box;
    use std::ptr;
    use std::time::Instant;

    /// The trap handler the signal handler serves now.
    #[derive(Clone, Copy)]
    enum Trap {
        None,
        Corostack(corostack::CoroutineTrapHandler<u32>),
        #[cfg(target_arch = "x86_64")]
        Corosensei(corosensei::trap::CoroutineTrapHandler<u32>),
    }

    thread_local! {
        static TRAP: Cell<Trap> = const { Cell::new(Trap::None) };
    }

    extern "C" fn on_fault(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: an SA_SIGINFO handler's third argument.
        let in_bounds =
            |t: &corostack::CoroutineTrapHandler<u32>| unsafe { t.context_in_bounds(uc) };
        match TRAP.get() {
            Trap::Corostack(trap) if in_bounds(&trap) => {
                // SAFETY: the coroutine's own code faulted (a recursion that
                // holds nothing), and this handler runs on an alternate stack.
                unsafe { trap.setup_trap_handler(|| 42).write_to(uc) };
            }
            #[cfg(target_arch = "x86_64")]
            Trap::Corosensei(trap)
                // SAFETY: as above (x86_64: rsp).
                if trap.stack_ptr_in_bounds(unsafe {
                    (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSP as usize] as usize
                }) =>
            {
                // SAFETY: as above; corosensei leaves writing the registers to
                // its user.
                unsafe {
                    let regs = trap.setup_trap_handler(|| 42);
                    let gregs = &mut (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
                    gregs[libc::REG_RIP as usize] = regs.rip as i64;
                    gregs[libc::REG_RSP as usize] = regs.rsp as i64;
                    gregs[libc::REG_RBP as usize] = regs.rbp as i64;
                    gregs[libc::REG_RDI as usize] = regs.rdi as i64;
                    gregs[libc::REG_RSI as usize] = regs.rsi as i64;
                }
            }
            // SAFETY: abort has no preconditions.
            _ => unsafe { libc::abort() },
        }
    }

    /// The crate's own overflow handler first (if built with it), then ours,
    /// for SIGSEGV and SIGBUS, on an alternate stack of this thread's.
    fn install() {
        corostack::stack::install_overflow_handler();
        // SAFETY: a fresh anonymous mapping for the alternate stack, kept for
        // the process's life, and sigaction with an SA_SIGINFO handler.
        unsafe {
            let size = 256 * 1024;
            let (prot, flags) = (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            );
            let map = libc::mmap(ptr::null_mut(), size, prot, flags, -1, 0);
            assert_ne!(map, libc::MAP_FAILED);
            let alt = libc::stack_t {
                ss_sp: map,
                ss_flags: 0,
                ss_size: size,
            };
            assert_eq!(libc::sigaltstack(&alt, ptr::null_mut()), 0);
            for sig in [libc::SIGSEGV, libc::SIGBUS] {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as extern "C" fn(_, _, _) as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                assert_eq!(libc::sigaction(sig, &action, ptr::null_mut()), 0);
            }
        }
    }

    /// A recursion that only a full stack stops.
    #[inline(never)]
    fn recurse(n: u64) -> u64 {
        let pad = black_box([n; 16]);
        if pad[3] == u64::MAX {
            return 0;
        }
        1 + black_box(recurse(pad[3] + 1))
    }

    /// The median of 7 runs of `f`, which returns ns per iteration.
    fn median(mut f: impl FnMut() -> f64) -> f64 {
        let mut runs: Vec<f64> = (0..7).map(|_| f()).collect();
        runs.sort_by(f64::total_cmp);
        runs[3]
    }

    const STACK: usize = 64 * 1024;

    fn corostack_recoveries(n: u32) -> f64 {
        use corostack::{Coroutine, DefaultStack, Yielder};
        let mut stack = DefaultStack::new(STACK).unwrap();
        let start = Instant::now();
        for _ in 0..n {
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| recurse(0) as u32);
            TRAP.set(Trap::Corostack(co.trap_handler()));
            assert_eq!(co.resume(()).as_return(), Some(42));
            stack = co.into_stack();
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    }

    #[cfg(target_arch = "x86_64")]
    fn corosensei_recoveries(n: u32) -> f64 {
        use corosensei::stack::DefaultStack;
        use corosensei::{Coroutine, Yielder};
        let mut stack = DefaultStack::new(STACK).unwrap();
        let start = Instant::now();
        for _ in 0..n {
            let mut co = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| recurse(0) as u32);
            TRAP.set(Trap::Corosensei(co.trap_handler()));
            assert!(matches!(
                co.resume(()),
                corosensei::CoroutineResult::Return(42)
            ));
            stack = co.into_stack();
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    }

    pub(crate) fn main() {
        install();
        const N: u32 = 10_000_000;
        let co = corostack::Coroutine::<(), (), u32>::new(|_, ()| 0);
        let ns = median(|| {
            let start = Instant::now();
            for _ in 0..N {
                black_box(black_box(&co).trap_handler());
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        });
        println!("trap_handler corostack ns={ns:.2}");
        #[cfg(target_arch = "x86_64")]
        {
            let co = corosensei::Coroutine::<(), (), u32>::new(|_, ()| 0);
            let ns = median(|| {
                let start = Instant::now();
                for _ in 0..N {
                    black_box(black_box(&co).trap_handler());
                }
                start.elapsed().as_nanos() as f64 / f64::from(N)
            });
            println!("trap_handler corosensei ns={ns:.2}");
        }
        const RECOVERIES: u32 = 2_000;
        for _ in 0..3 {
            // Alternating, so that both see the same machine.
            println!(
                "recovered_overflow corostack ns={:.0}",
                median(|| corostack_recoveries(RECOVERIES))
            );
            #[cfg(target_arch = "x86_64")]
            println!(
                "recovered_overflow corosensei ns={:.0}",
                median(|| corosensei_recoveries(RECOVERIES))
            );
        }
    }
}
