//! What the hand-written switch in `arch/` must guarantee: every
//! callee-saved register survives, unwind info reaches the resumer, and an
//! overflow hits the guard page and is reported.

mod util;

use std::backtrace::Backtrace;
use std::hint::black_box;

use corostack::{Coroutine, CoroutineResult, DefaultStack, Yielder};

/// Calls `f(arg)` with every callee-saved register set to a known pattern
/// derived from `seed`, and returns a bit mask of the registers that did
/// not hold their pattern after `f` returned (0 when all survived).
///
/// `f` is an ordinary `extern "C"` function, so the ABI obliges it to
/// preserve these registers: if a context switch inside it lost one, the
/// mask shows which.
fn call_with_patterns(seed: u64, f: extern "C" fn(*mut ()), arg: *mut ()) -> u64 {
    let mask: u64;
    // SAFETY: the block saves every callee-saved register it overwrites on
    // the stack and restores it before it ends, keeps the stack 16-aligned
    // at the call, and declares everything the call may clobber.
    #[cfg(all(target_arch = "x86_64", not(windows)))]
    unsafe {
        std::arch::asm!(
            // Save the callee-saved registers we are about to overwrite
            // (six pushes keep rsp 16-aligned for the call).
            "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
            // Load the pattern: seed + 1 .. seed + 6.
            "lea rbx, [rax + 1]", "lea rbp, [rax + 2]", "lea r12, [rax + 3]",
            "lea r13, [rax + 4]", "lea r14, [rax + 5]", "lea r15, [rax + 6]",
            // Keep the seed where the callee must preserve it too: on our stack.
            "push rax", "sub rsp, 8",
            "call rcx",
            "add rsp, 8", "pop rax",
            // Compare, setting bit i when register i lost its pattern.
            "xor ecx, ecx",
            "lea rdx, [rax + 1]", "cmp rbx, rdx", "setne dl", "movzx edx, dl", "or rcx, rdx",
            "lea rdx, [rax + 2]", "cmp rbp, rdx", "setne dl", "movzx edx, dl", "shl edx, 1", "or rcx, rdx",
            "lea rdx, [rax + 3]", "cmp r12, rdx", "setne dl", "movzx edx, dl", "shl edx, 2", "or rcx, rdx",
            "lea rdx, [rax + 4]", "cmp r13, rdx", "setne dl", "movzx edx, dl", "shl edx, 3", "or rcx, rdx",
            "lea rdx, [rax + 5]", "cmp r14, rdx", "setne dl", "movzx edx, dl", "shl edx, 4", "or rcx, rdx",
            "lea rdx, [rax + 6]", "cmp r15, rdx", "setne dl", "movzx edx, dl", "shl edx, 5", "or rcx, rdx",
            "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
            inout("rax") seed => _,
            inout("rcx") f => mask,
            in("rdi") arg,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above. The Microsoft x64 ABI's callee-saved registers:
    // rbx, rbp, rdi, rsi, r12 to r15 (bits 0 to 7) and xmm6 to xmm15 (bits
    // 8 to 17, their low 64 bits patterned); 160 bytes of xmm saves and
    // the 32-byte shadow space keep rsp 16-aligned at the call.
    #[cfg(all(target_arch = "x86_64", windows))]
    unsafe {
        std::arch::asm!(
            // Save the general registers we overwrite (eight pushes), then
            // the xmm registers, the seed, and the shadow space.
            "push rbx", "push rbp", "push rdi", "push rsi",
            "push r12", "push r13", "push r14", "push r15",
            "sub rsp, 176",
            "movdqu [rsp + 0], xmm6", "movdqu [rsp + 16], xmm7", "movdqu [rsp + 32], xmm8",
            "movdqu [rsp + 48], xmm9", "movdqu [rsp + 64], xmm10", "movdqu [rsp + 80], xmm11",
            "movdqu [rsp + 96], xmm12", "movdqu [rsp + 112], xmm13", "movdqu [rsp + 128], xmm14",
            "movdqu [rsp + 144], xmm15", "mov [rsp + 160], rax",
            // The pattern: seed + 1 .. seed + 18.
            "lea rbx, [rax + 1]", "lea rbp, [rax + 2]", "lea rdi, [rax + 3]", "lea rsi, [rax + 4]",
            "lea r12, [rax + 5]", "lea r13, [rax + 6]", "lea r14, [rax + 7]", "lea r15, [rax + 8]",
            "lea rdx, [rax + 9]", "movq xmm6, rdx", "lea rdx, [rax + 10]", "movq xmm7, rdx",
            "lea rdx, [rax + 11]", "movq xmm8, rdx", "lea rdx, [rax + 12]", "movq xmm9, rdx",
            "lea rdx, [rax + 13]", "movq xmm10, rdx", "lea rdx, [rax + 14]", "movq xmm11, rdx",
            "lea rdx, [rax + 15]", "movq xmm12, rdx", "lea rdx, [rax + 16]", "movq xmm13, rdx",
            "lea rdx, [rax + 17]", "movq xmm14, rdx", "lea rdx, [rax + 18]", "movq xmm15, rdx",
            "sub rsp, 32",
            "call r10",
            "add rsp, 32",
            "mov rax, [rsp + 160]",
            // Compare, setting bit i when register i lost its pattern.
            "xor ecx, ecx",
            "lea rdx, [rax + 1]", "cmp rbx, rdx", "setne dl", "movzx edx, dl", "or rcx, rdx",
            "lea rdx, [rax + 2]", "cmp rbp, rdx", "setne dl", "movzx edx, dl", "shl edx, 1", "or rcx, rdx",
            "lea rdx, [rax + 3]", "cmp rdi, rdx", "setne dl", "movzx edx, dl", "shl edx, 2", "or rcx, rdx",
            "lea rdx, [rax + 4]", "cmp rsi, rdx", "setne dl", "movzx edx, dl", "shl edx, 3", "or rcx, rdx",
            "lea rdx, [rax + 5]", "cmp r12, rdx", "setne dl", "movzx edx, dl", "shl edx, 4", "or rcx, rdx",
            "lea rdx, [rax + 6]", "cmp r13, rdx", "setne dl", "movzx edx, dl", "shl edx, 5", "or rcx, rdx",
            "lea rdx, [rax + 7]", "cmp r14, rdx", "setne dl", "movzx edx, dl", "shl edx, 6", "or rcx, rdx",
            "lea rdx, [rax + 8]", "cmp r15, rdx", "setne dl", "movzx edx, dl", "shl edx, 7", "or rcx, rdx",
            "lea rdx, [rax + 9]", "movq r8, xmm6", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 8", "or rcx, rdx",
            "lea rdx, [rax + 10]", "movq r8, xmm7", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 9", "or rcx, rdx",
            "lea rdx, [rax + 11]", "movq r8, xmm8", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 10", "or rcx, rdx",
            "lea rdx, [rax + 12]", "movq r8, xmm9", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 11", "or rcx, rdx",
            "lea rdx, [rax + 13]", "movq r8, xmm10", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 12", "or rcx, rdx",
            "lea rdx, [rax + 14]", "movq r8, xmm11", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 13", "or rcx, rdx",
            "lea rdx, [rax + 15]", "movq r8, xmm12", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 14", "or rcx, rdx",
            "lea rdx, [rax + 16]", "movq r8, xmm13", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 15", "or rcx, rdx",
            "lea rdx, [rax + 17]", "movq r8, xmm14", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 16", "or rcx, rdx",
            "lea rdx, [rax + 18]", "movq r8, xmm15", "cmp r8, rdx", "setne dl", "movzx edx, dl", "shl edx, 17", "or rcx, rdx",
            // Restore what we saved.
            "movdqu xmm6, [rsp + 0]", "movdqu xmm7, [rsp + 16]", "movdqu xmm8, [rsp + 32]",
            "movdqu xmm9, [rsp + 48]", "movdqu xmm10, [rsp + 64]", "movdqu xmm11, [rsp + 80]",
            "movdqu xmm12, [rsp + 96]", "movdqu xmm13, [rsp + 112]", "movdqu xmm14, [rsp + 128]",
            "movdqu xmm15, [rsp + 144]",
            "add rsp, 176",
            "pop r15", "pop r14", "pop r13", "pop r12",
            "pop rsi", "pop rdi", "pop rbp", "pop rbx",
            inout("rax") seed => _,
            inout("rcx") arg => mask,
            in("r10") f,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above: x19 to x29 and d8 to d15 are stored on the stack
    // (160 bytes keep sp 16-aligned) and reloaded before the block ends.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!(
            // Save the callee-saved registers we are about to overwrite.
            "sub sp, sp, #192",
            "stp x19, x20, [sp, #0]", "stp x21, x22, [sp, #16]", "stp x23, x24, [sp, #32]",
            "stp x25, x26, [sp, #48]", "stp x27, x28, [sp, #64]", "stp x29, x30, [sp, #80]",
            "stp d8, d9, [sp, #96]", "stp d10, d11, [sp, #112]",
            "stp d12, d13, [sp, #128]", "stp d14, d15, [sp, #144]",
            "str x9, [sp, #160]",
            // Load the pattern: seed + 1 .. seed + 11 into x19..x29,
            // seed + 12 .. seed + 19 into d8..d15 (as raw bits).
            "add x19, x9, #1", "add x20, x9, #2", "add x21, x9, #3", "add x22, x9, #4",
            "add x23, x9, #5", "add x24, x9, #6", "add x25, x9, #7", "add x26, x9, #8",
            "add x27, x9, #9", "add x28, x9, #10", "add x29, x9, #11",
            "add x10, x9, #12", "fmov d8, x10", "add x10, x9, #13", "fmov d9, x10",
            "add x10, x9, #14", "fmov d10, x10", "add x10, x9, #15", "fmov d11, x10",
            "add x10, x9, #16", "fmov d12, x10", "add x10, x9, #17", "fmov d13, x10",
            "add x10, x9, #18", "fmov d14, x10", "add x10, x9, #19", "fmov d15, x10",
            "blr x11",
            "ldr x9, [sp, #160]",
            // Compare, setting bit i when register i lost its pattern.
            "mov x11, #0",
            "add x10, x9, #1", "cmp x19, x10", "cset x12, ne", "orr x11, x11, x12",
            "add x10, x9, #2", "cmp x20, x10", "cset x12, ne", "orr x11, x11, x12, lsl #1",
            "add x10, x9, #3", "cmp x21, x10", "cset x12, ne", "orr x11, x11, x12, lsl #2",
            "add x10, x9, #4", "cmp x22, x10", "cset x12, ne", "orr x11, x11, x12, lsl #3",
            "add x10, x9, #5", "cmp x23, x10", "cset x12, ne", "orr x11, x11, x12, lsl #4",
            "add x10, x9, #6", "cmp x24, x10", "cset x12, ne", "orr x11, x11, x12, lsl #5",
            "add x10, x9, #7", "cmp x25, x10", "cset x12, ne", "orr x11, x11, x12, lsl #6",
            "add x10, x9, #8", "cmp x26, x10", "cset x12, ne", "orr x11, x11, x12, lsl #7",
            "add x10, x9, #9", "cmp x27, x10", "cset x12, ne", "orr x11, x11, x12, lsl #8",
            "add x10, x9, #10", "cmp x28, x10", "cset x12, ne", "orr x11, x11, x12, lsl #9",
            "add x10, x9, #11", "cmp x29, x10", "cset x12, ne", "orr x11, x11, x12, lsl #10",
            "add x10, x9, #12", "fmov x13, d8", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #11",
            "add x10, x9, #13", "fmov x13, d9", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #12",
            "add x10, x9, #14", "fmov x13, d10", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #13",
            "add x10, x9, #15", "fmov x13, d11", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #14",
            "add x10, x9, #16", "fmov x13, d12", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #15",
            "add x10, x9, #17", "fmov x13, d13", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #16",
            "add x10, x9, #18", "fmov x13, d14", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #17",
            "add x10, x9, #19", "fmov x13, d15", "cmp x13, x10", "cset x12, ne", "orr x11, x11, x12, lsl #18",
            // Restore what we saved.
            "ldp x19, x20, [sp, #0]", "ldp x21, x22, [sp, #16]", "ldp x23, x24, [sp, #32]",
            "ldp x25, x26, [sp, #48]", "ldp x27, x28, [sp, #64]", "ldp x29, x30, [sp, #80]",
            "ldp d8, d9, [sp, #96]", "ldp d10, d11, [sp, #112]",
            "ldp d12, d13, [sp, #128]", "ldp d14, d15, [sp, #144]",
            "add sp, sp, #192",
            inout("x9") seed => _,
            inout("x11") f => mask,
            in("x0") arg,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above: the block pushes ebx, ebp, esi and edi and pops
    // them before it ends, and aligns esp to 16 for the call itself (the
    // old esp kept on the aligned stack), the argument pushed as i386's
    // cdecl wants.
    #[cfg(target_arch = "x86")]
    unsafe {
        // 32-bit registers: a pattern from both halves of the seed.
        let seed32 = (seed ^ (seed >> 32)) as u32;
        let mask32: u32;
        std::arch::asm!(
            // Save the callee-saved registers we are about to overwrite.
            "push ebx", "push ebp", "push esi", "push edi",
            // Align esp to 16 below them, keeping the old esp and the seed
            // there (where the callee must preserve them too), then the
            // argument, so that esp is 16-aligned at the call.
            "mov ebx, esp", "and esp, -16",
            "push ebx", "push eax", "sub esp, 4", "push edx",
            // Load the pattern: seed + 1 .. seed + 4.
            "lea ebx, [eax + 1]", "lea ebp, [eax + 2]", "lea esi, [eax + 3]", "lea edi, [eax + 4]",
            "call ecx",
            "add esp, 8", "pop eax",
            // Compare, setting bit i when register i lost its pattern.
            "xor ecx, ecx",
            "lea edx, [eax + 1]", "cmp ebx, edx", "setne dl", "movzx edx, dl", "or ecx, edx",
            "lea edx, [eax + 2]", "cmp ebp, edx", "setne dl", "movzx edx, dl", "shl edx, 1", "or ecx, edx",
            "lea edx, [eax + 3]", "cmp esi, edx", "setne dl", "movzx edx, dl", "shl edx, 2", "or ecx, edx",
            "lea edx, [eax + 4]", "cmp edi, edx", "setne dl", "movzx edx, dl", "shl edx, 3", "or ecx, edx",
            // Back to the old esp, and restore what we saved.
            "pop esp",
            "pop edi", "pop esi", "pop ebp", "pop ebx",
            inout("eax") seed32 => _,
            inout("ecx") f => mask32,
            in("edx") arg,
            clobber_abi("C"),
        );
        mask = u64::from(mask32);
    }
    // SAFETY: as above: ra, s0 to s11 and fs0 to fs11 are stored on the
    // stack (208 bytes keep sp 16-aligned) and reloaded before the block
    // ends.
    #[cfg(target_arch = "riscv64")]
    unsafe {
        std::arch::asm!(
            // Save the callee-saved registers we are about to overwrite,
            // ra (the call below writes it), and the seed.
            "addi sp, sp, -208",
            "sd s0, 0(sp)", "sd s1, 8(sp)", "sd s2, 16(sp)", "sd s3, 24(sp)",
            "sd s4, 32(sp)", "sd s5, 40(sp)", "sd s6, 48(sp)", "sd s7, 56(sp)",
            "sd s8, 64(sp)", "sd s9, 72(sp)", "sd s10, 80(sp)", "sd s11, 88(sp)",
            "fsd fs0, 96(sp)", "fsd fs1, 104(sp)", "fsd fs2, 112(sp)", "fsd fs3, 120(sp)",
            "fsd fs4, 128(sp)", "fsd fs5, 136(sp)", "fsd fs6, 144(sp)", "fsd fs7, 152(sp)",
            "fsd fs8, 160(sp)", "fsd fs9, 168(sp)", "fsd fs10, 176(sp)", "fsd fs11, 184(sp)",
            "sd ra, 192(sp)", "sd t3, 200(sp)",
            // Load the pattern: seed + 1 .. seed + 12 into s0..s11,
            // seed + 13 .. seed + 24 into fs0..fs11 (as raw bits).
            "addi s0, t3, 1", "addi s1, t3, 2", "addi s2, t3, 3", "addi s3, t3, 4",
            "addi s4, t3, 5", "addi s5, t3, 6", "addi s6, t3, 7", "addi s7, t3, 8",
            "addi s8, t3, 9", "addi s9, t3, 10", "addi s10, t3, 11", "addi s11, t3, 12",
            "addi t5, t3, 13", "fmv.d.x fs0, t5", "addi t5, t3, 14", "fmv.d.x fs1, t5",
            "addi t5, t3, 15", "fmv.d.x fs2, t5", "addi t5, t3, 16", "fmv.d.x fs3, t5",
            "addi t5, t3, 17", "fmv.d.x fs4, t5", "addi t5, t3, 18", "fmv.d.x fs5, t5",
            "addi t5, t3, 19", "fmv.d.x fs6, t5", "addi t5, t3, 20", "fmv.d.x fs7, t5",
            "addi t5, t3, 21", "fmv.d.x fs8, t5", "addi t5, t3, 22", "fmv.d.x fs9, t5",
            "addi t5, t3, 23", "fmv.d.x fs10, t5", "addi t5, t3, 24", "fmv.d.x fs11, t5",
            "jalr t4",
            "ld t3, 200(sp)",
            // Compare, setting bit i when register i lost its pattern.
            "li t4, 0",
            "addi t5, t3, 1", "xor t5, t5, s0", "snez t5, t5", "slli t5, t5, 0", "or t4, t4, t5",
            "addi t5, t3, 2", "xor t5, t5, s1", "snez t5, t5", "slli t5, t5, 1", "or t4, t4, t5",
            "addi t5, t3, 3", "xor t5, t5, s2", "snez t5, t5", "slli t5, t5, 2", "or t4, t4, t5",
            "addi t5, t3, 4", "xor t5, t5, s3", "snez t5, t5", "slli t5, t5, 3", "or t4, t4, t5",
            "addi t5, t3, 5", "xor t5, t5, s4", "snez t5, t5", "slli t5, t5, 4", "or t4, t4, t5",
            "addi t5, t3, 6", "xor t5, t5, s5", "snez t5, t5", "slli t5, t5, 5", "or t4, t4, t5",
            "addi t5, t3, 7", "xor t5, t5, s6", "snez t5, t5", "slli t5, t5, 6", "or t4, t4, t5",
            "addi t5, t3, 8", "xor t5, t5, s7", "snez t5, t5", "slli t5, t5, 7", "or t4, t4, t5",
            "addi t5, t3, 9", "xor t5, t5, s8", "snez t5, t5", "slli t5, t5, 8", "or t4, t4, t5",
            "addi t5, t3, 10", "xor t5, t5, s9", "snez t5, t5", "slli t5, t5, 9", "or t4, t4, t5",
            "addi t5, t3, 11", "xor t5, t5, s10", "snez t5, t5", "slli t5, t5, 10", "or t4, t4, t5",
            "addi t5, t3, 12", "xor t5, t5, s11", "snez t5, t5", "slli t5, t5, 11", "or t4, t4, t5",
            "addi t5, t3, 13", "fmv.x.d t6, fs0", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 12", "or t4, t4, t5",
            "addi t5, t3, 14", "fmv.x.d t6, fs1", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 13", "or t4, t4, t5",
            "addi t5, t3, 15", "fmv.x.d t6, fs2", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 14", "or t4, t4, t5",
            "addi t5, t3, 16", "fmv.x.d t6, fs3", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 15", "or t4, t4, t5",
            "addi t5, t3, 17", "fmv.x.d t6, fs4", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 16", "or t4, t4, t5",
            "addi t5, t3, 18", "fmv.x.d t6, fs5", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 17", "or t4, t4, t5",
            "addi t5, t3, 19", "fmv.x.d t6, fs6", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 18", "or t4, t4, t5",
            "addi t5, t3, 20", "fmv.x.d t6, fs7", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 19", "or t4, t4, t5",
            "addi t5, t3, 21", "fmv.x.d t6, fs8", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 20", "or t4, t4, t5",
            "addi t5, t3, 22", "fmv.x.d t6, fs9", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 21", "or t4, t4, t5",
            "addi t5, t3, 23", "fmv.x.d t6, fs10", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 22", "or t4, t4, t5",
            "addi t5, t3, 24", "fmv.x.d t6, fs11", "xor t5, t5, t6", "snez t5, t5",
            "slli t5, t5, 23", "or t4, t4, t5",
            // Restore what we saved.
            "ld s0, 0(sp)", "ld s1, 8(sp)", "ld s2, 16(sp)", "ld s3, 24(sp)",
            "ld s4, 32(sp)", "ld s5, 40(sp)", "ld s6, 48(sp)", "ld s7, 56(sp)",
            "ld s8, 64(sp)", "ld s9, 72(sp)", "ld s10, 80(sp)", "ld s11, 88(sp)",
            "fld fs0, 96(sp)", "fld fs1, 104(sp)", "fld fs2, 112(sp)", "fld fs3, 120(sp)",
            "fld fs4, 128(sp)", "fld fs5, 136(sp)", "fld fs6, 144(sp)", "fld fs7, 152(sp)",
            "fld fs8, 160(sp)", "fld fs9, 168(sp)", "fld fs10, 176(sp)", "fld fs11, 184(sp)",
            "ld ra, 192(sp)",
            "addi sp, sp, 208",
            inout("t3") seed => _,
            inout("t4") f => mask,
            in("a0") arg,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above: r4 to r11, lr and d8 to d15 are pushed (100
    // bytes, and the seed's 4 keep sp 8-aligned for the call, as AAPCS
    // requires) and popped before the block ends. r6 and r11 (which LLVM
    // reserves, so they cannot be operands) are saved and restored by the
    // block like the others.
    #[cfg(target_arch = "arm")]
    unsafe {
        // 32-bit registers: a pattern from both halves of the seed.
        let seed32 = (seed ^ (seed >> 32)) as u32;
        let mask32: u32;
        std::arch::asm!(
            // Save the callee-saved registers we are about to overwrite,
            // lr (the call below writes it), and the seed.
            "push {{r4-r11, lr}}",
            "vpush {{d8-d15}}",
            "push {{r1}}",
            // Load the pattern: seed + 1 .. seed + 8 into r4..r11, and
            // into d8..d15 the 64 bits (seed + 9 .. seed + 16) in the low
            // word and its complement in the high word.
            "add r4, r1, #1", "add r5, r1, #2", "add r6, r1, #3", "add r7, r1, #4",
            "add r8, r1, #5", "add r9, r1, #6", "add r10, r1, #7", "add r11, r1, #8",
            "add r3, r1, #9", "mvn r12, r3", "vmov d8, r3, r12",
            "add r3, r1, #10", "mvn r12, r3", "vmov d9, r3, r12",
            "add r3, r1, #11", "mvn r12, r3", "vmov d10, r3, r12",
            "add r3, r1, #12", "mvn r12, r3", "vmov d11, r3, r12",
            "add r3, r1, #13", "mvn r12, r3", "vmov d12, r3, r12",
            "add r3, r1, #14", "mvn r12, r3", "vmov d13, r3, r12",
            "add r3, r1, #15", "mvn r12, r3", "vmov d14, r3, r12",
            "add r3, r1, #16", "mvn r12, r3", "vmov d15, r3, r12",
            "blx r2",
            "pop {{r1}}",
            // Compare, setting bit i when register i lost its pattern:
            // r4..r11 are bits 0 to 7, d8..d15 bits 8 to 15 (either half).
            "mov r2, #0",
            "add r3, r1, #1", "cmp r4, r3", "orrne r2, r2, #1",
            "add r3, r1, #2", "cmp r5, r3", "orrne r2, r2, #2",
            "add r3, r1, #3", "cmp r6, r3", "orrne r2, r2, #4",
            "add r3, r1, #4", "cmp r7, r3", "orrne r2, r2, #8",
            "add r3, r1, #5", "cmp r8, r3", "orrne r2, r2, #16",
            "add r3, r1, #6", "cmp r9, r3", "orrne r2, r2, #32",
            "add r3, r1, #7", "cmp r10, r3", "orrne r2, r2, #64",
            "add r3, r1, #8", "cmp r11, r3", "orrne r2, r2, #128",
            "vmov r3, r12, d8", "sub r3, r3, r1", "cmp r3, #9", "orrne r2, r2, #0x100",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #9", "orrne r2, r2, #0x100",
            "vmov r3, r12, d9", "sub r3, r3, r1", "cmp r3, #10", "orrne r2, r2, #0x200",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #10", "orrne r2, r2, #0x200",
            "vmov r3, r12, d10", "sub r3, r3, r1", "cmp r3, #11", "orrne r2, r2, #0x400",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #11", "orrne r2, r2, #0x400",
            "vmov r3, r12, d11", "sub r3, r3, r1", "cmp r3, #12", "orrne r2, r2, #0x800",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #12", "orrne r2, r2, #0x800",
            "vmov r3, r12, d12", "sub r3, r3, r1", "cmp r3, #13", "orrne r2, r2, #0x1000",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #13", "orrne r2, r2, #0x1000",
            "vmov r3, r12, d13", "sub r3, r3, r1", "cmp r3, #14", "orrne r2, r2, #0x2000",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #14", "orrne r2, r2, #0x2000",
            "vmov r3, r12, d14", "sub r3, r3, r1", "cmp r3, #15", "orrne r2, r2, #0x4000",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #15", "orrne r2, r2, #0x4000",
            "vmov r3, r12, d15", "sub r3, r3, r1", "cmp r3, #16", "orrne r2, r2, #0x8000",
            "mvn r12, r12", "sub r12, r12, r1", "cmp r12, #16", "orrne r2, r2, #0x8000",
            // Restore what we saved.
            "vpop {{d8-d15}}",
            "pop {{r4-r11, lr}}",
            inout("r1") seed32 => _,
            inout("r2") f => mask32,
            in("r0") arg,
            clobber_abi("C"),
        );
        mask = u64::from(mask32);
    }
    // SAFETY: as above: r2, r14 to r31, f14 to f31, v20 to v31 and cr2 to
    // cr4 are stored in a frame of our own (544 bytes, 16-aligned, with a
    // back chain and the 32-byte header ELFv2 gives a callee) and reloaded
    // before the block ends; what the callee left in them is written into
    // `seen` (61 doublewords), which the block is given a pointer to.
    #[cfg(target_arch = "powerpc64")]
    unsafe {
        // What the callee left: r14..r31, f14..f31 (raw bits), v20..v31 (both
        // doublewords of each), and the condition register.
        let mut seen = [0u64; 61];
        // cr2, cr3 and cr4 get the nibbles s + 2, s + 3 and s + 4 of the
        // seed's second byte s (one pattern per side, and per field).
        let s = (seed >> 8) & 0xf;
        let nibble = |field: u64| (s + field) & 0xf;
        let cr = (nibble(2) << 20) | (nibble(3) << 16) | (nibble(4) << 12);
        std::arch::asm!(
            // Our frame: the back chain (stdu), r2 in the TOC save
            // doubleword, the nonvolatile registers and the condition
            // register; the seed and `seen` where the callee must
            // preserve them too.
            "stdu 1, -544(1)",
            "std 2, 24(1)",
            "mfcr 0", "std 0, 512(1)",
            "std 9, 528(1)", "std 8, 536(1)",
            "std 14, 32(1)", "std 15, 40(1)", "std 16, 48(1)", "std 17, 56(1)",
            "std 18, 64(1)", "std 19, 72(1)", "std 20, 80(1)", "std 21, 88(1)",
            "std 22, 96(1)", "std 23, 104(1)", "std 24, 112(1)", "std 25, 120(1)",
            "std 26, 128(1)", "std 27, 136(1)", "std 28, 144(1)", "std 29, 152(1)",
            "std 30, 160(1)", "std 31, 168(1)",
            "stfd 14, 176(1)", "stfd 15, 184(1)", "stfd 16, 192(1)", "stfd 17, 200(1)",
            "stfd 18, 208(1)", "stfd 19, 216(1)", "stfd 20, 224(1)", "stfd 21, 232(1)",
            "stfd 22, 240(1)", "stfd 23, 248(1)", "stfd 24, 256(1)", "stfd 25, 264(1)",
            "stfd 26, 272(1)", "stfd 27, 280(1)", "stfd 28, 288(1)", "stfd 29, 296(1)",
            "stfd 30, 304(1)", "stfd 31, 312(1)",
            "li 11, 320",
            "stvx 20, 1, 11", "addi 11, 11, 16", "stvx 21, 1, 11", "addi 11, 11, 16",
            "stvx 22, 1, 11", "addi 11, 11, 16", "stvx 23, 1, 11", "addi 11, 11, 16",
            "stvx 24, 1, 11", "addi 11, 11, 16", "stvx 25, 1, 11", "addi 11, 11, 16",
            "stvx 26, 1, 11", "addi 11, 11, 16", "stvx 27, 1, 11", "addi 11, 11, 16",
            "stvx 28, 1, 11", "addi 11, 11, 16", "stvx 29, 1, 11", "addi 11, 11, 16",
            "stvx 30, 1, 11", "addi 11, 11, 16", "stvx 31, 1, 11", "addi 11, 11, 16",
            // Load the pattern: seed + 1 .. seed + 18 into r14..r31,
            // seed + 19 .. seed + 36 into f14..f31 (as raw bits, mtvsrd
            // writes doubleword 0 of vs14..vs31, which is f14..f31),
            // seed + 37 .. seed + 48 into both doublewords of v20..v31
            // (vs52..vs63), and the nibbles into cr2..cr4 (field mask
            // 0x38).
            "addi 14, 9, 1", "addi 15, 9, 2", "addi 16, 9, 3", "addi 17, 9, 4",
            "addi 18, 9, 5", "addi 19, 9, 6", "addi 20, 9, 7", "addi 21, 9, 8",
            "addi 22, 9, 9", "addi 23, 9, 10", "addi 24, 9, 11", "addi 25, 9, 12",
            "addi 26, 9, 13", "addi 27, 9, 14", "addi 28, 9, 15", "addi 29, 9, 16",
            "addi 30, 9, 17", "addi 31, 9, 18",
            "addi 11, 9, 19", "mtvsrd 14, 11", "addi 11, 9, 20", "mtvsrd 15, 11",
            "addi 11, 9, 21", "mtvsrd 16, 11", "addi 11, 9, 22", "mtvsrd 17, 11",
            "addi 11, 9, 23", "mtvsrd 18, 11", "addi 11, 9, 24", "mtvsrd 19, 11",
            "addi 11, 9, 25", "mtvsrd 20, 11", "addi 11, 9, 26", "mtvsrd 21, 11",
            "addi 11, 9, 27", "mtvsrd 22, 11", "addi 11, 9, 28", "mtvsrd 23, 11",
            "addi 11, 9, 29", "mtvsrd 24, 11", "addi 11, 9, 30", "mtvsrd 25, 11",
            "addi 11, 9, 31", "mtvsrd 26, 11", "addi 11, 9, 32", "mtvsrd 27, 11",
            "addi 11, 9, 33", "mtvsrd 28, 11", "addi 11, 9, 34", "mtvsrd 29, 11",
            "addi 11, 9, 35", "mtvsrd 30, 11", "addi 11, 9, 36", "mtvsrd 31, 11",
            "addi 11, 9, 37", "mtvsrd 52, 11", "xxpermdi 52, 52, 52, 0",
            "addi 11, 9, 38", "mtvsrd 53, 11", "xxpermdi 53, 53, 53, 0",
            "addi 11, 9, 39", "mtvsrd 54, 11", "xxpermdi 54, 54, 54, 0",
            "addi 11, 9, 40", "mtvsrd 55, 11", "xxpermdi 55, 55, 55, 0",
            "addi 11, 9, 41", "mtvsrd 56, 11", "xxpermdi 56, 56, 56, 0",
            "addi 11, 9, 42", "mtvsrd 57, 11", "xxpermdi 57, 57, 57, 0",
            "addi 11, 9, 43", "mtvsrd 58, 11", "xxpermdi 58, 58, 58, 0",
            "addi 11, 9, 44", "mtvsrd 59, 11", "xxpermdi 59, 59, 59, 0",
            "addi 11, 9, 45", "mtvsrd 60, 11", "xxpermdi 60, 60, 60, 0",
            "addi 11, 9, 46", "mtvsrd 61, 11", "xxpermdi 61, 61, 61, 0",
            "addi 11, 9, 47", "mtvsrd 62, 11", "xxpermdi 62, 62, 62, 0",
            "addi 11, 9, 48", "mtvsrd 63, 11", "xxpermdi 63, 63, 63, 0",
            "mtcrf 0x38, 10",
            // Call f(arg) through its global entry point (r12 = f).
            "mtctr 12", "bctrl",
            // Our TOC pointer back, and `seen`.
            "ld 2, 24(1)",
            "ld 8, 536(1)",
            // Write down what the callee left in each register.
            "std 14, 0(8)", "std 15, 8(8)", "std 16, 16(8)", "std 17, 24(8)",
            "std 18, 32(8)", "std 19, 40(8)", "std 20, 48(8)", "std 21, 56(8)",
            "std 22, 64(8)", "std 23, 72(8)", "std 24, 80(8)", "std 25, 88(8)",
            "std 26, 96(8)", "std 27, 104(8)", "std 28, 112(8)", "std 29, 120(8)",
            "std 30, 128(8)", "std 31, 136(8)",
            "stfd 14, 144(8)", "stfd 15, 152(8)", "stfd 16, 160(8)", "stfd 17, 168(8)",
            "stfd 18, 176(8)", "stfd 19, 184(8)", "stfd 20, 192(8)", "stfd 21, 200(8)",
            "stfd 22, 208(8)", "stfd 23, 216(8)", "stfd 24, 224(8)", "stfd 25, 232(8)",
            "stfd 26, 240(8)", "stfd 27, 248(8)", "stfd 28, 256(8)", "stfd 29, 264(8)",
            "stfd 30, 272(8)", "stfd 31, 280(8)",
            "li 11, 288",
            "stxvd2x 52, 8, 11", "addi 11, 11, 16", "stxvd2x 53, 8, 11", "addi 11, 11, 16",
            "stxvd2x 54, 8, 11", "addi 11, 11, 16", "stxvd2x 55, 8, 11", "addi 11, 11, 16",
            "stxvd2x 56, 8, 11", "addi 11, 11, 16", "stxvd2x 57, 8, 11", "addi 11, 11, 16",
            "stxvd2x 58, 8, 11", "addi 11, 11, 16", "stxvd2x 59, 8, 11", "addi 11, 11, 16",
            "stxvd2x 60, 8, 11", "addi 11, 11, 16", "stxvd2x 61, 8, 11", "addi 11, 11, 16",
            "stxvd2x 62, 8, 11", "addi 11, 11, 16", "stxvd2x 63, 8, 11", "addi 11, 11, 16",
            "mfcr 11", "std 11, 480(8)",
            // Restore what we saved.
            "ld 14, 32(1)", "ld 15, 40(1)", "ld 16, 48(1)", "ld 17, 56(1)",
            "ld 18, 64(1)", "ld 19, 72(1)", "ld 20, 80(1)", "ld 21, 88(1)",
            "ld 22, 96(1)", "ld 23, 104(1)", "ld 24, 112(1)", "ld 25, 120(1)",
            "ld 26, 128(1)", "ld 27, 136(1)", "ld 28, 144(1)", "ld 29, 152(1)",
            "ld 30, 160(1)", "ld 31, 168(1)",
            "lfd 14, 176(1)", "lfd 15, 184(1)", "lfd 16, 192(1)", "lfd 17, 200(1)",
            "lfd 18, 208(1)", "lfd 19, 216(1)", "lfd 20, 224(1)", "lfd 21, 232(1)",
            "lfd 22, 240(1)", "lfd 23, 248(1)", "lfd 24, 256(1)", "lfd 25, 264(1)",
            "lfd 26, 272(1)", "lfd 27, 280(1)", "lfd 28, 288(1)", "lfd 29, 296(1)",
            "lfd 30, 304(1)", "lfd 31, 312(1)",
            "li 11, 320",
            "lvx 20, 1, 11", "addi 11, 11, 16", "lvx 21, 1, 11", "addi 11, 11, 16",
            "lvx 22, 1, 11", "addi 11, 11, 16", "lvx 23, 1, 11", "addi 11, 11, 16",
            "lvx 24, 1, 11", "addi 11, 11, 16", "lvx 25, 1, 11", "addi 11, 11, 16",
            "lvx 26, 1, 11", "addi 11, 11, 16", "lvx 27, 1, 11", "addi 11, 11, 16",
            "lvx 28, 1, 11", "addi 11, 11, 16", "lvx 29, 1, 11", "addi 11, 11, 16",
            "lvx 30, 1, 11", "addi 11, 11, 16", "lvx 31, 1, 11", "addi 11, 11, 16",
            "ld 0, 512(1)", "mtcrf 0x38, 0",
            "addi 1, 1, 544",
            in("r9") seed,
            in("r8") seen.as_mut_ptr(),
            in("r10") cr,
            in("r12") f,
            in("r3") arg,
            clobber_abi("C"),
        );
        // Set bit i when register i lost its pattern: r14..r31 are bits 0
        // to 17, f14..f31 bits 18 to 35, v20..v31 bits 36 to 47, cr2..cr4
        // bits 48 to 50.
        let mut m = 0u64;
        for i in 0..18 {
            if seen[i] != seed + 1 + i as u64 {
                m |= 1 << i;
            }
            if seen[18 + i] != seed + 19 + i as u64 {
                m |= 1 << (18 + i);
            }
        }
        for i in 0..12 {
            let want = seed + 37 + i as u64;
            if seen[36 + 2 * i] != want || seen[37 + 2 * i] != want {
                m |= 1 << (36 + i);
            }
        }
        for (bit, field) in (2..5).enumerate() {
            if (seen[60] >> (28 - 4 * field)) & 0xf != nibble(field) {
                m |= 1 << (48 + bit);
            }
        }
        mask = m;
    }
    // SAFETY: as above: r6 to r13 and f8 to f15 are stored in a frame of
    // our own (304 bytes, 8-aligned, whose lowest 160 are the register save
    // area the ABI gives the callee) and reloaded before the block ends;
    // what the callee left in them is written into `seen` (16 doublewords),
    // which the block is given a pointer to.
    #[cfg(target_arch = "s390x")]
    unsafe {
        // What the callee left: r6..r13, then f8..f15 (raw bits).
        let mut seen = [0u64; 16];
        std::arch::asm!(
            // Our frame: the callee's save area, then r6..r13 (r11 is the
            // frame pointer, which asm! cannot name: saved here all the
            // same), f8..f15, the seed and `seen`, which the callee must
            // preserve too.
            "lay %r15, -304(%r15)",
            "stmg %r6, %r13, 160(%r15)",
            "std %f8, 224(%r15)", "std %f9, 232(%r15)", "std %f10, 240(%r15)",
            "std %f11, 248(%r15)", "std %f12, 256(%r15)", "std %f13, 264(%r15)",
            "std %f14, 272(%r15)", "std %f15, 280(%r15)",
            "stg %r5, 288(%r15)", "stg %r3, 296(%r15)",
            // Load the pattern: seed + 1 .. seed + 8 into r6..r13, seed + 9
            // .. seed + 16 into f8..f15 (as raw bits, through r0).
            "la %r6, 1(%r5)", "la %r7, 2(%r5)", "la %r8, 3(%r5)", "la %r9, 4(%r5)",
            "la %r10, 5(%r5)", "la %r11, 6(%r5)", "la %r12, 7(%r5)", "la %r13, 8(%r5)",
            "la %r0, 9(%r5)", "ldgr %f8, %r0", "la %r0, 10(%r5)", "ldgr %f9, %r0",
            "la %r0, 11(%r5)", "ldgr %f10, %r0", "la %r0, 12(%r5)", "ldgr %f11, %r0",
            "la %r0, 13(%r5)", "ldgr %f12, %r0", "la %r0, 14(%r5)", "ldgr %f13, %r0",
            "la %r0, 15(%r5)", "ldgr %f14, %r0", "la %r0, 16(%r5)", "ldgr %f15, %r0",
            // Call f(arg).
            "basr %r14, %r1",
            // Write down what the callee left in each register.
            "lg %r3, 296(%r15)",
            "stmg %r6, %r13, 0(%r3)",
            "std %f8, 64(%r3)", "std %f9, 72(%r3)", "std %f10, 80(%r3)", "std %f11, 88(%r3)",
            "std %f12, 96(%r3)", "std %f13, 104(%r3)", "std %f14, 112(%r3)", "std %f15, 120(%r3)",
            // Restore what we saved.
            "lmg %r6, %r13, 160(%r15)",
            "ld %f8, 224(%r15)", "ld %f9, 232(%r15)", "ld %f10, 240(%r15)",
            "ld %f11, 248(%r15)", "ld %f12, 256(%r15)", "ld %f13, 264(%r15)",
            "ld %f14, 272(%r15)", "ld %f15, 280(%r15)",
            "la %r15, 304(%r15)",
            in("r5") seed,
            in("r3") seen.as_mut_ptr(),
            in("r1") f,
            in("r2") arg,
            clobber_abi("C"),
        );
        // Set bit i when register i lost its pattern: r6..r13 are bits 0
        // to 7, f8..f15 bits 8 to 15.
        let mut m = 0u64;
        for (i, &v) in seen.iter().enumerate() {
            if v != seed + 1 + i as u64 {
                m |= 1 << i;
            }
        }
        mask = m;
    }
    mask
}

type Regs = Coroutine<(), u64, u64>;

extern "C" fn resume_it(co: *mut ()) {
    // SAFETY: the test passes a live `&mut Regs` as `co`.
    let co = unsafe { &mut *(co as *mut Regs) };
    black_box(co.resume(()));
}

extern "C" fn suspend_it(y: *mut ()) {
    // SAFETY: the body passes its live `&Yielder` as `y`.
    let y = unsafe { &*(y as *const Yielder<(), u64>) };
    y.suspend(0);
}

#[test]
fn every_callee_saved_register_survives_a_switch() {
    // The body holds one pattern in every callee-saved register while it
    // suspends; the resumer holds another while it resumes. Each checks
    // its own after the switch back.
    let mut co: Regs = Coroutine::new(|y, ()| {
        let mask = call_with_patterns(0x5eed_0000_0000_0100, suspend_it, y as *const _ as *mut ());
        y.suspend(mask);
        mask
    });
    let co_ptr = &mut co as *mut Regs as *mut ();
    // First resume: the body starts, loads its pattern, and suspends.
    let resumer_mask = call_with_patterns(0x00dd_ba11_0000_0200, resume_it, co_ptr);
    assert_eq!(
        resumer_mask, 0,
        "the resumer lost callee-saved registers (bit mask)"
    );
    // Second resume: the body's suspend returns and it checks its pattern.
    match co.resume(()) {
        CoroutineResult::Yield(body_mask) => {
            assert_eq!(
                body_mask, 0,
                "the body lost callee-saved registers (bit mask)"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[inline(never)]
fn resumer_marker_for_backtrace() -> String {
    let mut co =
        Coroutine::<(), (), String>::new(|_, ()| black_box(captured_inside_the_coroutine()));
    black_box(co.resume(()).as_return().unwrap())
}

#[inline(never)]
fn captured_inside_the_coroutine() -> String {
    Backtrace::force_capture().to_string()
}

#[test]
fn a_backtrace_inside_a_coroutine_reaches_the_resumer() {
    let bt = resumer_marker_for_backtrace();
    // The index of the first frame line whose function name ends in `name`.
    let frame = |name: &str| bt.lines().position(|l| l.trim_end().ends_with(name));
    let inside = frame("captured_inside_the_coroutine");
    let trampoline = frame("trampoline");
    let resumer = frame("resumer_marker_for_backtrace");
    let test_fn = frame("a_backtrace_inside_a_coroutine_reaches_the_resumer");
    assert!(
        inside.is_some() && trampoline.is_some() && resumer.is_some() && test_fn.is_some(),
        "backtrace does not cross into the resumer:\n{bt}"
    );
    assert!(
        inside < trampoline && trampoline < resumer && resumer < test_fn,
        "{bt}"
    );
}

#[test]
fn a_backtrace_through_nested_coroutines_reaches_the_thread() {
    let mut outer = Coroutine::<(), (), String>::new(|_, ()| {
        let mut inner = Coroutine::<(), (), String>::new(|_, ()| captured_inside_the_coroutine());
        inner.resume(()).as_return().unwrap()
    });
    let bt = outer.resume(()).as_return().unwrap();
    assert_eq!(bt.matches("trampoline").count(), 2, "{bt}");
    assert!(
        bt.contains("a_backtrace_through_nested_coroutines_reaches_the_thread"),
        "{bt}"
    );
}

/// Recurses until the stack runs out.
#[allow(unconditional_recursion)]
#[inline(never)]
fn overflow(depth: u64) -> u64 {
    let buf = black_box([depth; 64]);
    overflow(depth + 1) + buf[63]
}

// Unix: the child dies by SIGABRT (signals); on Windows, see
// `overflowing_a_coroutine_stack_raises_windows_stack_overflow`.
#[cfg(unix)]
#[test]
#[cfg_attr(
    not(feature = "overflow-handler"),
    ignore = "the report is the overflow-handler feature's (off by default)"
)]
fn overflowing_a_coroutine_stack_is_reported_and_aborts() {
    const ROLE: &str = "overflow";
    if util::child_role().as_deref() == Some(ROLE) {
        let stack = DefaultStack::new(64 * 1024).unwrap();
        let mut co = Coroutine::<(), (), u64>::with_stack(stack, |_, ()| overflow(0));
        co.resume(());
        unreachable!("the overflow must abort the process");
    }
    let out = util::run_child("overflowing_a_coroutine_stack_is_reported_and_aborts", ROLE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{:?}\n{stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("coroutine stack overflow"))
        .unwrap_or_else(|| panic!("no overflow message in:\n{stderr}"));
    assert!(
        line.contains("65536"),
        "the message should name the stack size: {line}"
    );
}

// Unix: the child dies by a signal.
#[cfg(unix)]
#[test]
#[cfg_attr(
    feature = "asan",
    ignore = "AddressSanitizer reports thread stack overflows itself"
)]
fn a_thread_stack_overflow_is_still_reported_by_std() {
    const ROLE: &str = "thread-overflow";
    if util::child_role().as_deref() == Some(ROLE) {
        // Make sure our handler is installed, then overflow the thread.
        drop(Coroutine::<(), (), ()>::new(|_, ()| ()));
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| overflow(0));
        let _ = t.unwrap().join();
        unreachable!("the overflow must abort the process");
    }
    let out = util::run_child("a_thread_stack_overflow_is_still_reported_by_std", ROLE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.signal().is_some(), "{:?}\n{stderr}", out.status);
    assert!(!stderr.contains("coroutine stack overflow"), "{stderr}");
    if !util::emulated() {
        // qemu-user reports the thread's overflow as a plain SIGSEGV.
        assert!(stderr.contains("has overflowed its stack"), "{stderr}");
    }
}

/// Windows, with the overflow handler: the same one-line report as on
/// Unix, then an abort.
#[cfg(windows)]
#[test]
#[cfg_attr(
    not(feature = "overflow-handler"),
    ignore = "the report is the overflow-handler feature's (off by default)"
)]
fn overflowing_a_coroutine_stack_is_reported_and_aborts_on_windows() {
    const ROLE: &str = "overflow-reported";
    if util::child_role().as_deref() == Some(ROLE) {
        let stack = DefaultStack::new(64 * 1024).unwrap();
        let mut co = Coroutine::<(), (), u64>::with_stack(stack, |_, ()| overflow(0));
        co.resume(());
        unreachable!("the overflow must abort the process");
    }
    let out = util::run_child(
        "overflowing_a_coroutine_stack_is_reported_and_aborts_on_windows",
        ROLE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{:?}\n{stderr}", out.status);
    let line = stderr
        .lines()
        .find(|l| l.contains("corostack: coroutine stack overflow (stack of 65536 bytes"))
        .unwrap_or_else(|| panic!("no overflow message in:\n{stderr}"));
    assert!(line.ends_with("), aborting"), "{line}");
}

/// Windows, without the overflow handler: an overflow of a coroutine's
/// stack is the system's own stack overflow (the TEB's fields describe the
/// coroutine's stack, and its guard pages are laid out as a thread's), so
/// the process ends with `STATUS_STACK_OVERFLOW`, as std's threads do;
/// never an access violation somewhere else, or a silent corruption.
#[cfg(all(windows, not(feature = "overflow-handler")))]
#[test]
fn overflowing_a_coroutine_stack_raises_windows_stack_overflow() {
    const ROLE: &str = "overflow";
    if util::child_role().as_deref() == Some(ROLE) {
        let stack = DefaultStack::new(64 * 1024).unwrap();
        let mut co = Coroutine::<(), (), u64>::with_stack(stack, |_, ()| overflow(0));
        co.resume(());
        unreachable!("the overflow must end the process");
    }
    let out = util::run_child(
        "overflowing_a_coroutine_stack_raises_windows_stack_overflow",
        ROLE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    const STATUS_STACK_OVERFLOW: u32 = 0xC000_00FD;
    assert_eq!(
        out.status.code().map(|c| c as u32),
        Some(STATUS_STACK_OVERFLOW),
        "{:?}\n{stderr}",
        out.status
    );
}

/// Windows: with the crate's vectored exception handler in place, a
/// thread's own overflow is passed on (the crate's handler claims only
/// faults in a coroutine's guard): Windows then has std report it and end
/// the process; Wine 8.0 ends the overflowing thread alone, which std's
/// join reports as a thread that terminated unexpectedly. Either way, no
/// coroutine overflow is reported.
#[cfg(windows)]
#[test]
fn a_thread_stack_overflow_is_still_reported_by_std_on_windows() {
    const ROLE: &str = "thread-overflow";
    if util::child_role().as_deref() == Some(ROLE) {
        // Make sure our handler is installed, then overflow the thread.
        drop(Coroutine::<(), (), ()>::new(|_, ()| ()));
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| overflow(0));
        let _ = t.unwrap().join();
        unreachable!("the overflow must end the process");
    }
    let out = util::run_child(
        "a_thread_stack_overflow_is_still_reported_by_std_on_windows",
        ROLE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(!stderr.contains("coroutine stack overflow"), "{stderr}");
    assert!(
        stderr.contains("has overflowed its stack")
            || stderr.contains("threads should not terminate unexpectedly"),
        "{stderr}"
    );
}
