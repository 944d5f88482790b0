//! Stackful coroutines for Rust, with a context switch written by hand in
//! `core::arch::asm!` for x86_64, aarch64, i686, riscv64, armv7, powerpc64le
//! and s390x (Linux; powerpc64le from Rust 1.95, where `asm!` on PowerPC is
//! stable).
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
//! The layers: `arch/` holds the per-architecture switch (the only asm);
//! [`stack`] the stacks; [`coroutine`] the safe API on top of them.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
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
mod trap;

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
pub use stack::DefaultStack;
#[cfg(feature = "std")]
pub use stack::SliceStack;
pub use stack::Stack;
