//! Stops the build early, with a clear message, on a target whose context
//! switch `arch/` does not provide.

use std::env;

/// The targets whose `arch/` module exists (`target_arch`, `target_os`,
/// the triple), and how each is tested.
const SUPPORTED: &[(&str, &str, &str, &str)] = &[
    (
        "x86_64",
        "linux",
        "x86_64-unknown-linux-gnu",
        "tested natively",
    ),
    (
        "aarch64",
        "linux",
        "aarch64-unknown-linux-gnu",
        "tested under QEMU (qemu-aarch64)",
    ),
    (
        "x86",
        "linux",
        "i686-unknown-linux-gnu",
        "tested under QEMU (qemu-i386)",
    ),
    (
        "riscv64",
        "linux",
        "riscv64gc-unknown-linux-gnu",
        "tested under QEMU (qemu-riscv64)",
    ),
    (
        "arm",
        "linux",
        "armv7-unknown-linux-gnueabihf",
        "tested under QEMU (qemu-arm)",
    ),
    // ELFv2 little-endian only: big-endian powerpc64 (ELFv1, function
    // descriptors) has no switch here.
    (
        "powerpc64",
        "linux",
        "powerpc64le-unknown-linux-gnu",
        "tested under QEMU (qemu-ppc64le)",
    ),
    // Big-endian: the one such target that runs here.
    (
        "s390x",
        "linux",
        "s390x-unknown-linux-gnu",
        "tested under QEMU (qemu-s390x)",
    ),
    // Built to objects in CI (the assembler runs), never run: no machine
    // of CI's can.
    (
        "x86_64",
        "macos",
        "x86_64-apple-darwin",
        "assembled in CI, not run",
    ),
    (
        "aarch64",
        "macos",
        "aarch64-apple-darwin",
        "assembled in CI, not run",
    ),
    (
        "x86_64",
        "freebsd",
        "x86_64-unknown-freebsd",
        "assembled in CI, not run",
    ),
    // The MinGW ABI: the test suite runs under Wine.
    (
        "x86_64",
        "windows",
        "x86_64-pc-windows-gnu",
        "tested under Wine",
    ),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // The benchmark peers that build for this target, as cfgs for the
    // benches and examples (`cfg(peer_corosensei)`, `cfg(peer_context)`):
    // one place beside Cargo.toml's target-specific dev-dependencies, which
    // say why each is left out where it is, and must match these.
    println!("cargo::rustc-check-cfg=cfg(peer_corosensei, peer_context)");
    if !matches!(arch.as_str(), "arm" | "s390x") {
        println!("cargo::rustc-cfg=peer_corosensei");
    }
    if !matches!(arch.as_str(), "riscv64" | "powerpc64" | "s390x") {
        println!("cargo::rustc-cfg=peer_context");
    }
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").unwrap_or_default();
    // powerpc64 is supported little-endian only (the ELFv2 ABI); the
    // others exist in one byte order.
    let arch = if arch == "powerpc64" && endian != "little" {
        format!("{arch} ({endian}-endian)")
    } else {
        arch
    };
    if !SUPPORTED.iter().any(|&(a, o, _, _)| a == arch && o == os) {
        let list: Vec<String> = SUPPORTED
            .iter()
            .map(|&(_, _, triple, how)| format!("{triple} ({how})"))
            .collect();
        panic!(
            "corostack does not support the target {arch}-{os}: its context switch is written \
             by hand for each architecture, and its stacks and trap recovery for each system, \
             and exist only for: {}",
            list.join(", ")
        );
    }
}
