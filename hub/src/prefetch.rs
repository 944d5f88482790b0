//! A cache hint for the hub's own records (a ready task's record, a turn
//! before the scheduler reads it). The hint for a coroutine's stack is the
//! core's [`Coroutine::prefetch`](corostack::Coroutine::prefetch).

/// Asks the CPU to bring the cache line holding `addr` closer, ahead of a
/// read. A hint only: it reads nothing the program can see and never
/// faults, whatever the address; on other architectures it does nothing.
#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch changes no register, flag or memory, and faults on
    // no address.
    unsafe {
        core::arch::asm!(
            "prefetcht0 [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a prefetch changes no register, flag or memory, and faults on
    // no address.
    unsafe {
        core::arch::asm!(
            "prfm pldl1keep, [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly),
        )
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = addr;
}
