// Picks the kernel path once, lets INT8KIT_ISA or set_active_isa() lower it, and maps a
// path to its kernel table.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "int8kit/cpu_features.h"
#include "kernels.h"

namespace int8kit {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx_vnni: return "avx_vnni";
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::amx_int8: return "amx_int8";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx_vnni") return Isa::avx_vnni;
  if (name == "avx512_vnni") return Isa::avx512_vnni;
  if (name == "amx_int8") return Isa::amx_int8;
  throw std::invalid_argument("unknown kernel path '" + name +
                              "'; expected one of: scalar, avx2, avx_vnni, avx512_vnni, "
                              "amx_int8");
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::scalar: return true;
#if INT8KIT_HAVE_X86_KERNELS
    case Isa::avx2: return f.avx2 && f.fma;
    case Isa::avx_vnni: return f.avx2 && f.fma && f.avx_vnni;
    case Isa::avx512_vnni: return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq &&
                                  f.avx512_vnni;
    case Isa::amx_int8: return isa_supported(Isa::avx512_vnni) && f.amx_int8;
#else
    default: (void)f; return false;
#endif
  }
  return false;
}

Isa best_supported_isa() {
  if (isa_supported(Isa::amx_int8)) return Isa::amx_int8;
  if (isa_supported(Isa::avx512_vnni)) return Isa::avx512_vnni;
  if (isa_supported(Isa::avx_vnni)) return Isa::avx_vnni;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

namespace {

std::mutex g_mutex;
std::atomic<int> g_isa{-1};
std::string g_reason;

void require_supported(Isa isa, const char* source) {
  if (!isa_supported(isa))
    throw std::runtime_error(std::string(source) + " asks for kernel path '" + isa_name(isa) +
                             "', which this CPU (or build) cannot run; the best available is '" +
                             isa_name(best_supported_isa()) + "'");
}

}  // namespace

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v >= 0) return static_cast<Isa>(v);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_isa.load() >= 0) return static_cast<Isa>(g_isa.load());
  Isa isa = best_supported_isa();
  g_reason = std::string("best path this CPU supports");
  if (const char* env = std::getenv("INT8KIT_ISA"); env && *env) {
    try {
      isa = parse_isa(env);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("INT8KIT_ISA=") + env + ": " + e.what());
    }
    require_supported(isa, "INT8KIT_ISA");
    g_reason = std::string("forced by INT8KIT_ISA=") + env;
  }
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
  return isa;
}

std::string active_isa_reason() {
  active_isa();
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_reason;
}

void set_active_isa(Isa isa) {
  require_supported(isa, "set_active_isa");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_reason = std::string("set by set_active_isa('") + isa_name(isa) + "')";
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

namespace detail {

const KernelTable& kernels_for(Isa isa) {
  static const KernelTable scalar{gemm_block_scalar, minmax_scalar, quantize_u8_scalar};
#if INT8KIT_HAVE_X86_KERNELS
  static const KernelTable avx2{gemm_block_avx2, minmax_avx2, quantize_u8_avx2, nullptr,
                                tile_rows_avx2, nullptr, kAvx2WidenRows};
  static const KernelTable avx_vnni{gemm_block_avxvnni, minmax_avx2, quantize_u8_avx2};
  static const KernelTable avx512{gemm_block_avx512vnni, minmax_avx512, quantize_u8_avx512,
                                  gemm_gather_block_avx512vnni, tile_rows_avx512vnni,
                                  tile_panels_avx512vnni};
  // AMX for the GEMM; conv's implicit GEMM (gathered rows) and the rest stay on AVX-512.
  static const KernelTable amx{gemm_block_amx, minmax_avx512, quantize_u8_avx512,
                               gemm_gather_block_avx512vnni, tile_rows_amx, tile_panels_amx};
  if (isa == Isa::amx_int8) return amx;
  if (isa == Isa::avx512_vnni) return avx512;
  if (isa == Isa::avx_vnni) return avx_vnni;
  if (isa == Isa::avx2) return avx2;
#endif
  (void)isa;
  return scalar;
}

}  // namespace detail
}  // namespace int8kit
