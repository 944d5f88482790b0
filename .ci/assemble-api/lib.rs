//! Instantiates the core's and the hub's public API for `.ci/assemble`
//! (the core's alone on Windows, where the hub does not build yet):
//! each `#[no_mangle]` function below is exported from the static library,
//! so everything it reaches is compiled to the target's machine code and
//! assembled. Nothing here is meant to run (though it would).

#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
#[cfg(unix)]
use std::time::Duration;

use corostack::bridge::AsyncCoroutine;
use corostack::scoped::ScopedCoroutine;
use corostack::stack::{self, MIN_STACK_SIZE};
use corostack::{
    Coroutine, CoroutineResult, DefaultStack, Generator, SliceStack, Yielder, maybe_grow, on_stack,
    remaining_stack,
};
#[cfg(unix)]
use corostack_hub as hub;

#[path = "../../examples/baozi.rs"]
mod baozi;
#[cfg(unix)]
#[path = "../../hub/examples/echo_client.rs"]
mod echo_client;
#[cfg(unix)]
#[path = "../../hub/examples/echo_server.rs"]
mod echo_server;
#[cfg(unix)]
#[path = "../../hub/examples/gevent_sleep.rs"]
mod gevent_sleep;
#[path = "../../examples/greenlet.rs"]
mod greenlet;

/// The core: coroutines on both kinds of stack, generators, greenlets,
/// scoped coroutines, the async bridge, on_stack and maybe_grow, the pool
/// and the overflow handler.
#[unsafe(no_mangle)]
pub extern "C" fn corostack_assemble_core(x: u64) -> u64 {
    stack::install_overflow_handler();
    let mut co = Coroutine::new(|y: &Yielder<u64, u64>, mut v: u64| {
        for _ in 0..3 {
            v = y.suspend(v + 1);
        }
        y.on_parent_stack(|| v * 2)
    });
    let mut sum = 0;
    while let CoroutineResult::Yield(v) = co.resume(black_box(x)) {
        sum += v;
    }
    co.prefetch(true);
    let stack = co.into_stack();
    let mut again = Coroutine::<(), (), u64, DefaultStack>::with_stack(stack, |_, ()| 7);
    sum += again.resume(()).as_return().unwrap_or(0);
    // SAFETY: a fresh boxed slice of MIN_STACK_SIZE bytes, used by one
    // coroutine at a time.
    let slice = unsafe { SliceStack::new(vec![0u8; MIN_STACK_SIZE].into_boxed_slice()) };
    let mut on_slice = Coroutine::<(), u64, (), SliceStack>::with_stack(slice, |y, ()| {
        y.suspend(1);
    });
    sum += on_slice.resume(()).as_yield().unwrap_or(0);
    on_slice.force_unwind();
    let mut g = Generator::new(|y: &Yielder<(), u64>| {
        for i in 0..3 {
            y.suspend(i);
        }
    });
    while let Some(v) = g.send(()) {
        sum += v;
    }
    let local = 5u64;
    let scoped = ScopedCoroutine::new(|y: &Yielder<(), u64>, ()| {
        y.suspend(local);
    });
    sum += scoped.scope(|co| co.resume(()).as_yield().unwrap_or(0));
    sum += on_stack(DefaultStack::new(MIN_STACK_SIZE).unwrap(), || 3);
    sum += maybe_grow(16 * 1024, 64 * 1024, || {
        remaining_stack().unwrap_or(0) as u64 & 1
    });
    let fut = AsyncCoroutine::new(|y| y.block_on(async { 9u64 }));
    sum += poll_ready(fut).unwrap_or(0);
    baozi::run(|line| {
        black_box(line);
    });
    greenlet::run(|line| {
        black_box(line);
    });
    stack::trim_pool();
    sum
}

/// Polls `fut` once with a no-op waker.
fn poll_ready<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A trap's recovery, as a signal handler would do it: the registers
/// written into the handler's `ucontext_t` per system (on Windows, a
/// vectored exception handler's `CONTEXT`).
///
/// # Safety
/// `ucontext` is the third argument of a running `SA_SIGINFO` handler (on
/// Windows, the `ContextRecord` of the exception being handled).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn corostack_assemble_trap(ucontext: *mut core::ffi::c_void) -> bool {
    let co = Coroutine::<(), (), u64>::new(|_, ()| 1);
    let handler = co.trap_handler();
    // SAFETY: as the caller promises.
    if unsafe { handler.context_in_bounds(ucontext) } {
        // SAFETY: as the caller promises; the coroutine is alive.
        let regs = unsafe { handler.setup_trap_handler(|| 2) };
        // SAFETY: as the caller promises.
        unsafe { regs.write_to(ucontext) };
        return true;
    }
    black_box(co);
    false
}

/// The hub: tasks, timers, channels, events, semaphores, sockets (TCP and
/// UDP), the blocking pool, remotes and block_on.
#[cfg(unix)]
#[unsafe(no_mangle)]
pub extern "C" fn corostack_assemble_hub() -> u64 {
    hub::Builder::new().stack_size(64 * 1024).run(|| {
        gevent_sleep::run(|line| {
            black_box(line);
        });
        let (tx, rx) = hub::sync::bounded::<u64>(4);
        let event = hub::sync::Event::new();
        let sem = hub::sync::Semaphore::new(1);
        let t = hub::spawn(move || {
            let _permit = sem.acquire();
            tx.send(1).ok();
        });
        event.set();
        event.wait();
        let mut sum = rx.recv().unwrap_or(0);
        t.join().ok();
        hub::sleep(Duration::from_millis(1));
        hub::yield_now();
        sum += hub::timeout(Duration::from_millis(5), || 2).unwrap_or(0);
        let later = hub::call_later(Duration::from_millis(1), || {});
        later.cancel();
        sum += hub::spawn_blocking(|| 3);
        sum += hub::block_on(async { 4 });
        let remote = hub::remote();
        black_box(remote.spawn(|| 5u64));
        if let Ok(listener) = hub::net::TcpListener::bind("127.0.0.1:0") {
            let addr = listener.local_addr().unwrap();
            hub::spawn(move || echo_server::serve(listener));
            let mut line = Some("hi\n".to_owned());
            echo_client::run(
                &addr.to_string(),
                || line.take(),
                |l| {
                    black_box(l);
                },
            )
            .ok();
        }
        if let Ok(udp) = hub::net::UdpSocket::bind("127.0.0.1:0") {
            let mut buf = [0u8; 8];
            udp.send_to(b"x", udp.local_addr().unwrap()).ok();
            sum += udp.recv(&mut buf).unwrap_or(0) as u64;
        }
        sum
    })
}
