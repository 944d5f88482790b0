//! Many live coroutines: `examples/million.rs` at 100,000 (10,000 under
//! emulation), each on a guard-paged 64 KiB stack, within 8 KiB of resident
//! memory each and, where the kernel honours `MADV_GUARD_INSTALL`, without
//! a kernel mapping per stack.

mod util;

#[path = "../examples/million.rs"]
mod million;

// Not under Wine: Wine keeps each stack as three Linux mappings (the
// reserved page, the guard pages, the committed part, which differ in
// protection), and vm.max_map_count (65530 by default) stops it near
// 22,000 stacks.
#[cfg_attr(
    windows,
    ignore = "Wine maps each stack as three Linux mappings: vm.max_map_count"
)]
#[test]
fn a_hundred_thousand_live_coroutines_fit_in_8_kib_each() {
    let count = util::scaled(100_000, 10_000);
    let report = million::run(count);
    assert_eq!(report.count, count);
    // Resident memory counts the tool as well under AddressSanitizer (its
    // shadow memory) and under qemu-user (the emulator's own bookkeeping).
    assert!(
        cfg!(feature = "asan") || util::emulated() || report.rss_per_coroutine <= 8192.0,
        "{:.0} resident bytes per coroutine: {report:?}",
        report.rss_per_coroutine
    );
    if !util::emulated() {
        // qemu-user ignores MADV_GUARD_INSTALL, so stacks fall back to
        // mprotect there and cost two mappings each; natively they merge.
        assert!(report.mappings < 1_000, "{report:?}");
    }
}
