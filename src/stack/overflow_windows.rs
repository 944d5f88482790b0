//! Reports a coroutine stack overflow on Windows instead of the bare
//! `STATUS_STACK_OVERFLOW` exit: a vectored exception handler, added once
//! per process by [`install`], looks the fault up in the guard registry
//! (`guards.rs`); a fault in a coroutine stack's guard prints the same line
//! as on Unix and aborts,
//!
//! ```text
//! corostack: coroutine stack overflow (stack of 65536 bytes; the fault hit its guard page at 0x7f3a5c1ff000), aborting
//! ```
//!
//! and every other exception goes on to the handlers after it (std's, the
//! program's, the system's). The handler runs on the stack that overflowed:
//! Windows keeps the last guard pages of a stack for that (the
//! `DefaultStack` layout in `os_windows.rs`), and [`install`] asks for the
//! same on the thread's own stack with `SetThreadStackGuarantee`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Once;

use windows_sys::Win32::Foundation::{
    EXCEPTION_ACCESS_VIOLATION, EXCEPTION_GUARD_PAGE, EXCEPTION_STACK_OVERFLOW,
};
use windows_sys::Win32::Storage::FileSystem::WriteFile;
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE};
use windows_sys::Win32::System::Diagnostics::Debug::{
    AddVectoredExceptionHandler, EXCEPTION_CONTINUE_SEARCH, EXCEPTION_POINTERS,
};
use windows_sys::Win32::System::Threading::SetThreadStackGuarantee;

use super::guards::lookup;
use super::os::page_size;

/// Makes [`install`] add the handler once per process.
static INSTALL: Once = Once::new();

thread_local! {
    /// Whether [`install`] already ran on this thread.
    static INSTALLED: Cell<bool> = const { Cell::new(false) };
}

/// The stack the handler may need beyond a faulting frame on the thread's
/// own stack (std's overflow report runs there too).
const THREAD_GUARANTEE: u32 = 16 * 1024;

/// Adds the vectored exception handler once per process, and sets this
/// thread's stack guarantee (once per thread).
#[inline]
pub(crate) fn install() {
    if !INSTALLED.get() {
        install_slow();
    }
}

/// The first [`install`] on a thread.
#[cold]
#[inline(never)]
fn install_slow() {
    INSTALLED.set(true);
    INSTALL.call_once(|| {
        // Cache the page size before the handler can need it.
        page_size();
        // SAFETY: `handler` has the signature the system calls; first in
        // the chain (1), so that it sees an overflow before any other.
        unsafe { AddVectoredExceptionHandler(1, Some(handler)) };
    });
    let mut guarantee = THREAD_GUARANTEE;
    // SAFETY: reads and writes the one u32; it only ever raises the
    // thread's guarantee (a smaller request than the current one fails
    // and changes nothing).
    unsafe { SetThreadStackGuarantee(&mut guarantee) };
}

/// The vectored exception handler: an overflow or an access violation in
/// a registered guard is reported, and the process aborts; anything else
/// goes on to the next handler.
unsafe extern "system" fn handler(info: *mut EXCEPTION_POINTERS) -> i32 {
    // SAFETY: the system passes a valid EXCEPTION_POINTERS.
    let (record, context) = unsafe { (&*(*info).ExceptionRecord, &*(*info).ContextRecord) };
    let fault = match record.ExceptionCode {
        EXCEPTION_STACK_OVERFLOW | EXCEPTION_ACCESS_VIOLATION | EXCEPTION_GUARD_PAGE => {
            // The address accessed where the record has it (access
            // violations, and overflows as Windows raises them), else the
            // stack pointer, which an overflow leaves in the guard.
            if record.NumberParameters >= 2 {
                record.ExceptionInformation[1]
            } else {
                context.Rsp as usize
            }
        }
        _ => return EXCEPTION_CONTINUE_SEARCH,
    };
    if let Some(stack_size) = lookup(fault) {
        report(stack_size, fault);
    }
    EXCEPTION_CONTINUE_SEARCH
}

/// Writes the overflow message for a fault at `addr` to stderr and aborts,
/// with nothing but a buffer on the stack (no allocation, no lock).
fn report(stack_size: usize, addr: usize) -> ! {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    let _ = writeln!(
        line,
        "corostack: coroutine stack overflow (stack of {stack_size} bytes; the fault hit its \
         guard page at {addr:#x}), aborting"
    );
    // SAFETY: the buffer is valid for `len` bytes; WriteFile writes to the
    // standard error handle (or fails harmlessly if there is none).
    unsafe {
        WriteFile(
            GetStdHandle(STD_ERROR_HANDLE),
            line.buf.as_ptr(),
            line.len as u32,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    std::process::abort()
}

/// A line of fixed capacity; text past the end is dropped.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
