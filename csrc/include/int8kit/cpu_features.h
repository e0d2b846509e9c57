// What the CPU and the OS support, read once from CPUID and XGETBV.
#pragma once

namespace int8kit {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_vnni = false;
  bool avx_vnni = false;
  // AMX tiles with int8 dot products, usable: the CPU has them, XCR0 enables the tile
  // state and Linux granted this process the tile data (arch_prctl, asked for once).
  bool amx_int8 = false;
  bool os_ymm = false;  // XCR0 enables the ymm state (required for AVX2)
  bool os_zmm = false;  // XCR0 enables the opmask and zmm state (required for AVX-512)
};

// Detected once, on first use; safe to call from any thread.
const CpuFeatures& cpu_features();

}  // namespace int8kit
