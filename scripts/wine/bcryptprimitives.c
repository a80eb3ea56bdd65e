/* Wine 8.0's bcryptprimitives.dll lacks ProcessPrng, which Rust's std
 * imports for its random numbers (HashMap seeds). This stand-in DLL, placed
 * beside a test executable, provides it by forwarding to advapi32's
 * SystemFunction036 (RtlGenRandom). Only for running tests under Wine. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
