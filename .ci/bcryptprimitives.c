/* bcryptprimitives.dll for Wine 8.0, which lacks it: Rust's std imports
 * ProcessPrng from it (Windows 10 and later), so without this DLL every
 * Rust program fails to load under that Wine (exit code 53). .ci/cross
 * builds it into the Wine prefix's system32. ProcessPrng fills the buffer
 * from the system's preferred generator and, as documented, always
 * returns TRUE. */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG);
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
