//! Stackful coroutines for Rust, with a context switch written by hand in
//! `core::arch::asm!` for x86_64, aarch64, i686, riscv64, armv7, powerpc64le
//! and s390x (Linux), and x86_64 on Windows (Rust 1.95 or later, see the
//! README's supported targets).
//!
//! A [`Coroutine`] runs a closure on its own guard-paged, pooled stack
//! ([`DefaultStack`], or any [`Stack`]). The closure can suspend itself
//! from any depth of its call tree with [`Yielder::suspend`], handing a
//! value out and receiving the next [`Coroutine::resume`]'s value in.
//!
//! ```
//! use corostack::{Coroutine, CoroutineResult};
//!
//! // A running total: each resume sends a number in, each suspend hands
//! // the sum so far out.
//! let mut total = Coroutine::new(|yielder, mut n: u64| {
//!     let mut sum = 0;
//!     while n != 0 {
//!         sum += n;
//!         n = yielder.suspend(sum);
//!     }
//!     sum
//! });
//! assert_eq!(total.resume(3), CoroutineResult::Yield(3));
//! assert_eq!(total.resume(4), CoroutineResult::Yield(7));
//! assert_eq!(total.resume(0), CoroutineResult::Return(7));
//! ```
//!
//! # Which type for which job
//!
//! - A function that suspends anywhere in its call tree, values passed both
//!   ways: [`Coroutine`] and its [`Yielder`].
//! - A Python-style generator (`next`, `send`): [`Generator`]; a
//!   `Coroutine<(), Y, ()>` is an [`Iterator`] too.
//! - A body that borrows from the caller (what `Coroutine`'s `'static`
//!   bounds refuse, error E0521 or E0597):
//!   [`ScopedCoroutine`](scoped::ScopedCoroutine).
//! - Symmetric switching, any coroutine to any other, with parents and
//!   kills (Python's greenlet): [`greenlet::Greenlet`].
//! - Synchronous code that awaits futures, itself a future:
//!   [`bridge::AsyncCoroutine`].
//! - Deep recursion: run a closure on a stack of its own with [`on_stack`],
//!   or only when the current one runs low with [`maybe_grow`].
//! - A VM or a JIT whose guest code may overflow or fault: trap recovery,
//!   the [`trap`] module.
//! - Stacks: [`DefaultStack`] (guard-paged, pooled), [`SliceStack`] (memory
//!   you own), or your own [`Stack`].
//! - A scheduler with sleeps, sockets, channels and kills (gevent): the
//!   `corostack-hub` crate, built on this one's public API.
//!
//! The layers: `arch/` holds the per-architecture switch (the only asm);
//! [`stack`] the stacks; [`coroutine`] the safe API on top of them.
//!
//! # Names
//!
//! - Where a coroutine is in its life is asked with `done()` on every kind
//!   (`Coroutine`, `Scoped`, `Generator`, `AsyncCoroutine`, `Greenlet`, and
//!   the hub's join handles) and `started()` where a caller can tell
//!   (`Coroutine`, `Scoped`, `Greenlet`): corosensei's names, kept so that
//!   code moves over unchanged. Every other yes-or-no
//!   question is `is_*`, as in std ([`Greenlet::is_main`](greenlet::Greenlet::is_main)).
//! - Type parameters come in one order: what goes in, what comes out,
//!   what the body returns, the stack (`Coroutine<Input, Yield, Return, S>`,
//!   `Yielder<Input, Yield>`, `Generator<Input, Yield, S>`).
//! - `as_yield`, `as_return`, `force_unwind`, `force_reset`, `trap_handler`,
//!   `on_parent_stack`: corosensei's names and meanings.
//!
//! # Features
//!
#![cfg_attr(
    feature = "document-features",
    doc = document_features::document_features!()
)]
#![cfg_attr(
    not(feature = "document-features"),
    doc = "`std` (default), `overflow-handler`, `asan` and `tsan`: their docs are \
           the comments of `[features]` in `Cargo.toml` (a build with the \
           `document-features` feature lists them here)."
)]
//!
//! # Moving over from corosensei
//!
//! The names and meanings are corosensei's where the job is the same:
//! `Coroutine`, `CoroutineResult` (`as_yield`, `as_return`), `Yielder`
//! (`suspend`, `on_parent_stack`), `resume`, `started`, `done`,
//! `force_unwind`, `force_reset`, `into_stack`, `trap_handler`,
//! `CoroutineTrapHandler` (`setup_trap_handler`, `stack_ptr_in_bounds`),
//! `ScopedCoroutine` (`new`, `with_stack`, `scope`, `into_stack`),
//! `DefaultStack::new(size)`. What differs, and why:
//!
//! | corosensei | corostack | why |
//! |---|---|---|
//! | `Return: 'static` | `Return` may borrow | it comes out after the body's frames are gone |
//! | `scope(\|mut co\| co.as_mut().resume(x))` with a `ScopedCoroutineRef` | `scope(\|co\| co.resume(x))` with a `&mut` [`Scoped`](scoped::Scoped); [`scope_into_stack`](scoped::ScopedCoroutine::scope_into_stack) gives the stack back | a plain `&mut` reborrows by itself |
//! | `Stack`: `base()` and `limit()` as `StackPointer`, TEB fields | [`Stack`]: `top()`, `limit()` and `guard_size()` as `usize` | the TEB fields come from the stack's bounds on Windows; the guard's size lets a handler tell an overflow from another fault |
//! | `MIN_STACK_SIZE` 4 KiB | [`MIN_STACK_SIZE`](stack::MIN_STACK_SIZE) 32 KiB (64 KiB on powerpc64le, riscv64, s390x and Windows) | every size a constructor accepts runs a coroutine and can unwind it when dropped |
//! | `TrapHandlerRegs` with each architecture's registers as fields, set by the embedder | [`TrapHandlerRegs`]: `pc`, `sp` and `args` everywhere, and [`write_to`](TrapHandlerRegs::write_to) a `ucontext_t`; [`context_in_bounds`](CoroutineTrapHandler::context_in_bounds) | one signal handler for every architecture |
//! | features `default-stack`, `unwind` | `std` (both) | |
//! | Windows, macOS, Linux; many architectures | Linux on x86_64, aarch64, riscv64, armv7, i686, powerpc64le, s390x; Windows on x86_64 (MinGW, tested under Wine); macOS and FreeBSD assembled | |
//! | a `DefaultStack` mapped for each coroutine | [`DefaultStack`]s pooled per thread | no system call for a coroutine in the steady state |

#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_errors_doc
)]

mod arch;
#[cfg(feature = "std")]
pub mod bridge;
mod context;
pub mod coroutine;
#[cfg(feature = "std")]
pub mod generator;
#[cfg(feature = "std")]
pub mod greenlet;
#[cfg(feature = "std")]
mod grow;
mod sanitizer;
#[cfg(feature = "std")]
pub mod scoped;
pub mod stack;
#[cfg(feature = "std")]
pub mod thread_exit;
#[cfg(feature = "std")]
pub mod trap;

pub use coroutine::{Coroutine, CoroutineResult, Yielder};
#[cfg(feature = "std")]
pub use trap::{CoroutineTrapHandler, TrapHandlerRegs};

/// The README's examples, run as doc tests so that what it shows compiles
/// and works.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
#[cfg(feature = "std")]
pub use generator::Generator;
#[cfg(feature = "std")]
pub use grow::{maybe_grow, on_stack, remaining_stack};
#[cfg(feature = "std")]
pub use scoped::ScopedCoroutine;
#[cfg(feature = "std")]
pub use stack::DefaultStack;
#[cfg(feature = "std")]
pub use stack::SliceStack;
pub use stack::Stack;
