// CPUID + XGETBV, read once. A feature counts only if the OS also saves its register
// state (XCR0), otherwise using it would fault.
#include "int8kit/cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define INT8KIT_X86 1
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace int8kit {
namespace {

#if INT8KIT_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  // xgetbv with ecx = 0, written as bytes so no ISA flag is needed to assemble it.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux hands out AMX's 8 KB of tile state per process, on request; without it the
// first tile instruction faults.
bool os_grants_amx_tiles() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr long kXtiledata = 18;         // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  uint64_t xcr0 = 0;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __cpuid(1, a, b, c, d);
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  if (osxsave) {
    xcr0 = read_xcr0();
    f.os_ymm = (xcr0 & 0x6) == 0x6;              // SSE + AVX state
    f.os_zmm = f.os_ymm && (xcr0 & 0xe0) == 0xe0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b & (1u << 5)) && f.os_ymm;
    f.avx512f = (b & (1u << 16)) && f.os_zmm;
    f.avx512dq = (b & (1u << 17)) && f.os_zmm;
    f.avx512bw = (b & (1u << 30)) && f.os_zmm;
    f.avx512vl = (b & (1u << 31)) && f.os_zmm;
    f.avx512_vnni = (c & (1u << 11)) && f.os_zmm;
    const bool amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
    const bool os_tiles = (xcr0 & (uint64_t(3) << 17)) == (uint64_t(3) << 17);  // cfg, data
    f.amx_int8 = amx_tile && amx_int8 && os_tiles && f.os_zmm && os_grants_amx_tiles();
    __cpuid_count(7, 1, a, b, c, d);
    f.avx_vnni = (a & (1u << 4)) && f.os_ymm;
  }
  f.fma = f.fma && f.os_ymm;
  return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace int8kit
