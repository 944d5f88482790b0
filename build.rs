//! Stops the build early, with a clear message, on a target whose context
//! switch `arch/` does not provide.

use std::env;

/// The targets whose `arch/` module exists, and how each is tested.
const SUPPORTED: &[(&str, &str, &str)] = &[
    ("x86_64", "linux", "tested natively"),
    ("aarch64", "linux", "tested under QEMU (qemu-aarch64)"),
    ("x86", "linux", "tested under QEMU (qemu-i386)"),
    ("riscv64", "linux", "tested under QEMU (qemu-riscv64)"),
    ("arm", "linux", "tested under QEMU (qemu-arm)"),
    // ELFv2 little-endian only: big-endian powerpc64 (ELFv1, function
    // descriptors) has no switch here.
    ("powerpc64", "linux", "tested under QEMU (qemu-ppc64le)"),
    ("x86_64", "windows", "tested under Wine"),
];

/// The first part of the target triple for an architecture (`target_arch`
/// names the ISA; the triple names the extensions or the CPU it requires).
fn triple_arch(arch: &str) -> &str {
    match arch {
        "riscv64" => "riscv64gc",
        "x86" => "i686",
        "arm" => "armv7",
        "powerpc64" => "powerpc64le",
        other => other,
    }
}

/// The last part of the target triple: the ABI, which for 32-bit ARM also
/// names the floating-point calling convention (hard-float: arguments in
/// VFP registers).
fn triple_env(arch: &str) -> &str {
    match arch {
        "arm" => "gnueabihf",
        _ => "gnu",
    }
}

/// The whole triple of a supported (architecture, system).
fn triple(arch: &str, os: &str) -> String {
    match os {
        "windows" => format!("{arch}-pc-windows-gnu"),
        _ => format!("{}-unknown-{os}-{}", triple_arch(arch), triple_env(arch)),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // The benchmark peers that build for this target, as cfgs for the
    // benches and examples (`cfg(peer_corosensei)`, `cfg(peer_context)`):
    // one place beside Cargo.toml's target-specific dev-dependencies, which
    // say why each is left out where it is, and must match these.
    println!("cargo::rustc-check-cfg=cfg(peer_corosensei, peer_context)");
    if arch != "arm" {
        println!("cargo::rustc-cfg=peer_corosensei");
    }
    if !matches!(arch.as_str(), "riscv64" | "powerpc64") {
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
    if !SUPPORTED.iter().any(|&(a, o, _)| a == arch && o == os) {
        let list: Vec<String> = SUPPORTED
            .iter()
            .map(|&(a, o, how)| format!("{} ({how})", triple(a, o)))
            .collect();
        panic!(
            "corostack does not support the target {arch}-{os}: its context switch is written \
             by hand for each architecture, and exists only for: {}",
            list.join(", ")
        );
    }
}
