//! What keeping the floating-point control state per context would cost.
//!
//! corostack's switch does not save MXCSR and the x87 control word (x86_64),
//! FPCR (aarch64), fcsr's rounding mode (riscv64), FPSCR (armv7), FPSCR's
//! control fields (powerpc64le) or FPC (s390x); see the
//! top comment of `arch/x86_64.rs`. A switch that kept them would add, per
//! switch: save ours, load theirs. This bench measures, in one run
//! (`cargo bench --bench fp_control`):
//!
//! - `fp_control/empty`: an empty `asm!` block (the loop alone);
//! - `fp_control/save`: saving only (x86_64: `stmxcsr`, `fnstcw`);
//! - `fp_control/save_load`: what one switch would add (x86_64: `stmxcsr`,
//!   `fnstcw`, `ldmxcsr`, `fldcw`; aarch64: `mrs`/`str`, `ldr`/`msr fpcr`;
//!   riscv64: `frrm`/`sd`, `ld`/`fsrm`; armv7: `vmrs`/`str`, `ldr`/`vmsr
//!   fpscr`; powerpc64le: `mffs`/`stfd`, `lfd`/`mtfsf`; s390x: `stfpc`,
//!   `lfpc`);
//! - on x86_64, `fp_control/save_load_mxcsr_only` and `.._x87_only`: the
//!   two halves of `save_load` apart;
//! - `round_trip/plain`: a corostack round trip (two switches), for scale;
//! - `round_trip/save_load_per_switch`: the same round trip with the
//!   save/load sequence run once on each side just before it switches, as
//!   a switch that kept the state would (two sequences per round trip).
//!
//! The state loaded is the state saved from the running thread, as between
//! two contexts that did not change it (the common case).

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::hint::black_box;

use corostack::{Coroutine, CoroutineResult};
use criterion::{Criterion, criterion_group, criterion_main};

/// Where a switch would keep the control state: ours (saved) and theirs
/// (loaded), as the two contexts' stacks would hold them.
#[repr(C, align(16))]
struct Slots {
    ours: [u64; 2],
    theirs: [u64; 2],
}

impl Slots {
    /// Both slots hold the running thread's current control state.
    fn current() -> Slots {
        let mut slots = Slots {
            ours: [0; 2],
            theirs: [0; 2],
        };
        save(&mut slots);
        slots.theirs = slots.ours;
        slots
    }
}

/// A named part of the save/load sequence, benchmarked on its own.
type Part = (&'static str, fn(&mut Slots));

/// Nothing, but as an `asm!` block that the compiler cannot remove.
#[inline(always)]
fn empty(slots: &mut Slots) {
    // SAFETY: an empty asm block; it only "uses" the pointer.
    unsafe { core::arch::asm!("/* {0} */", in(reg) slots, options(nostack, preserves_flags)) };
}

// The same instructions on 32-bit x86 (i686), whose ABI keeps the same
// state callee-saved.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves MXCSR and the x87 control word into `slots.ours`.
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 4 + 2 bytes into `slots.ours`, which has 16.
        unsafe {
            asm!(
                "stmxcsr [{p}]",
                "fnstcw [{p} + 4]",
                p = in(reg) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add.
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid MXCSR and control word, read
        // from this thread by `Slots::current`.
        unsafe {
            asm!(
                "stmxcsr [{p}]",
                "fnstcw [{p} + 4]",
                "ldmxcsr [{p} + 16]",
                "fldcw [{p} + 20]",
                p = in(reg) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// Half of [`save_load`]: MXCSR alone.
    #[inline(always)]
    fn save_load_mxcsr(slots: &mut Slots) {
        // SAFETY: as in `save_load`.
        unsafe {
            asm!(
                "stmxcsr [{p}]",
                "ldmxcsr [{p} + 16]",
                p = in(reg) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// The other half of [`save_load`]: the x87 control word alone.
    #[inline(always)]
    fn save_load_x87(slots: &mut Slots) {
        // SAFETY: as in `save_load`.
        unsafe {
            asm!(
                "fnstcw [{p} + 4]",
                "fldcw [{p} + 20]",
                p = in(reg) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// Parts of [`save_load`], benchmarked on their own too.
    pub const PARTS: &[super::Part] = &[
        ("save_load_mxcsr_only", save_load_mxcsr),
        ("save_load_x87_only", save_load_x87),
    ];
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves FPCR into `slots.ours`.
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 8 bytes into `slots.ours`, which has 16.
        unsafe {
            asm!(
                "mrs {t}, fpcr",
                "str {t}, [{p}]",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add.
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid FPCR, read from this thread by
        // `Slots::current`.
        unsafe {
            asm!(
                "mrs {t}, fpcr",
                "str {t}, [{p}]",
                "ldr {t}, [{p}, #16]",
                "msr fpcr, {t}",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// FPCR is the whole state: no parts to measure apart.
    pub const PARTS: &[super::Part] = &[];
}

#[cfg(target_arch = "riscv64")]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves frm, fcsr's rounding mode (what a switch would keep per
    /// context; fflags, the accrued exceptions, are the thread's), into
    /// `slots.ours`.
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 8 bytes into `slots.ours`, which has 16.
        unsafe {
            asm!(
                "frrm {t}",
                "sd {t}, 0({p})",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add.
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid frm, read from this thread by
        // `Slots::current`.
        unsafe {
            asm!(
                "frrm {t}",
                "sd {t}, 0({p})",
                "ld {t}, 16({p})",
                "fsrm {t}",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// frm is the whole state: no parts to measure apart.
    pub const PARTS: &[super::Part] = &[];
}

#[cfg(target_arch = "arm")]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves FPSCR into `slots.ours`: its control bits (rounding mode,
    /// flush-to-zero, default NaN, the trap enables) are what a switch
    /// would keep per context; one word holds them with the flags.
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 4 bytes into `slots.ours`, which has 16.
        unsafe {
            asm!(
                "vmrs {t}, fpscr",
                "str {t}, [{p}]",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add.
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid FPSCR, read from this thread by
        // `Slots::current`.
        unsafe {
            asm!(
                "vmrs {t}, fpscr",
                "str {t}, [{p}]",
                "ldr {t}, [{p}, #16]",
                "vmsr fpscr, {t}",
                p = in(reg) slots.ours.as_mut_ptr(),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// FPSCR is the whole state: no parts to measure apart.
    pub const PARTS: &[super::Part] = &[];
}

#[cfg(target_arch = "powerpc64")]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves FPSCR (through an FPR: `mffs` is the only way to read it on
    /// POWER8, the target's baseline) into `slots.ours`. What a switch would
    /// keep per context is its control part: the exception enables (field
    /// 6: VE, OE, UE, ZE) and XE, NI and the rounding mode RN (field 7),
    /// the fields ELFv2 makes limited-access with DRN, the decimal rounding
    /// mode in the upper word, which a switch would keep too (one more
    /// `mtfsf`, left out: no Rust code uses decimal floating point); the
    /// status bits are the thread's.
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 8 bytes into `slots.ours`, which has 16; the base
        // register is never r0 (which a D-form address reads as 0).
        unsafe {
            asm!(
                "mffs {f}",
                "stfd {f}, 0({p})",
                p = in(reg_nonzero) slots.ours.as_mut_ptr(),
                f = out(freg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add
    /// (`mtfsf 0x03` writes fields 6 and 7 only).
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid FPSCR, read from this thread by
        // `Slots::current`, and only its control fields are written back.
        unsafe {
            asm!(
                "mffs {f}",
                "stfd {f}, 0({p})",
                "lfd {f}, 16({p})",
                "mtfsf 0x03, {f}",
                p = in(reg_nonzero) slots.ours.as_mut_ptr(),
                f = out(freg) _,
                options(nostack, preserves_flags),
            )
        };
    }

    /// FPSCR's control fields are the whole state: no parts to measure
    /// apart.
    pub const PARTS: &[super::Part] = &[];
}

#[cfg(target_arch = "s390x")]
mod imp {
    use super::Slots;
    use core::arch::asm;

    /// Saves the floating-point control register (FPC: the exception
    /// masks and the rounding modes, which the s390x ELF ABI keeps across
    /// calls, beside the flags and the data-exception code, which are the
    /// thread's) into `slots.ours` (`stfpc`: its 4 bytes).
    #[inline(always)]
    pub fn save(slots: &mut Slots) {
        // SAFETY: stores 4 bytes into `slots.ours`, which has 16; the base
        // register is never r0 (which a base field reads as 0).
        unsafe {
            asm!(
                "stfpc 0({p})",
                p = in(reg_addr) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// Saves ours, then loads theirs: what one switch would add (`lfpc`).
    #[inline(always)]
    pub fn save_load(slots: &mut Slots) {
        // SAFETY: `ours` and `theirs` are 16 bytes each and adjacent
        // (repr(C)); `theirs` holds a valid FPC (no reserved bit set), read
        // from this thread by `Slots::current`.
        unsafe {
            asm!(
                "stfpc 0({p})",
                "lfpc 16({p})",
                p = in(reg_addr) slots.ours.as_mut_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    /// FPC is the whole state: no parts to measure apart.
    pub const PARTS: &[super::Part] = &[];
}

use imp::{PARTS, save, save_load};

fn fp_control(c: &mut Criterion) {
    let mut g = c.benchmark_group("fp_control");
    let mut slots = Slots::current();
    g.bench_function("empty", |b| b.iter(|| empty(black_box(&mut slots))));
    g.bench_function("save", |b| b.iter(|| save(black_box(&mut slots))));
    g.bench_function("save_load", |b| b.iter(|| save_load(black_box(&mut slots))));
    for &(name, part) in PARTS {
        g.bench_function(name, |b| b.iter(|| part(black_box(&mut slots))));
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");

    let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
        loop {
            x = y.suspend(black_box(x));
        }
    });
    g.bench_function("plain", |b| {
        b.iter(|| match co.resume(black_box(1)) {
            CoroutineResult::Yield(v) => v,
            CoroutineResult::Return(()) => unreachable!(),
        })
    });

    // Each side keeps its slots on its own stack, as a switch would.
    let mut co = Coroutine::<u64, u64, ()>::new(|y, mut x| {
        let mut slots = Slots::current();
        loop {
            save_load(black_box(&mut slots));
            x = y.suspend(black_box(x));
        }
    });
    let mut slots = Slots::current();
    g.bench_function("save_load_per_switch", |b| {
        b.iter(|| {
            save_load(black_box(&mut slots));
            match co.resume(black_box(1)) {
                CoroutineResult::Yield(v) => v,
                CoroutineResult::Return(()) => unreachable!(),
            }
        })
    });

    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = fp_control, round_trip
}
criterion_main!(benches);
