// CPUID + XGETBV, read once. A feature counts only if the OS also saves its register
// state (XCR0), otherwise using it would fault.
#include "int8kit/cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define INT8KIT_X86 1
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

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __cpuid(1, a, b, c, d);
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
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
