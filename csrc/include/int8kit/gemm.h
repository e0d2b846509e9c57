// uint8 activations x packed int8 weights, exact int32 accumulation, fused epilogues.
//
// For every path (scalar, AVX2, AVX-512 VNNI) and every thread count, the results are
// bit-identical:
//   acc[m,n] = sum_k (a[m,k] - a_zp[m]) * w[n,k]                       (exact int32)
//   s32: C[m,n] = acc[m,n]
//   f32: y = fmaf(float(acc), a_scale[m] * w_scale[n], bias ? bias[n] : 0); relu: y > 0 ? y : 0
//   u8:  C[m,n] = nearbyint(clamp(fmaf(y, out_inv_scale, out_zp), 0, 255))  (half to even),
//        the same formula as activation quantization (quantize.h), so a uint8 output
//        handed to the next layer equals quantizing the float output.
// Per-row parameters use a stride: stride 0 means one value for all rows (per tensor).
#pragma once

#include <cstdint>

#include "int8kit/isa.h"
#include "int8kit/pack.h"

namespace int8kit {

enum class OutKind : int { s32 = 0, f32 = 1, u8 = 2 };

struct GemmArgs {
  int64_t M = 0;
  const uint8_t* A = nullptr;  // [M, K], row stride lda
  int64_t lda = 0;
  const int32_t* a_zp = nullptr;  // in [0, 255]
  int64_t a_zp_stride = 0;
  PackedView B;
  OutKind out = OutKind::s32;
  void* C = nullptr;  // int32_t*, float* or uint8_t* [M, N], row stride ldc (elements)
  int64_t ldc = 0;
  // f32 and u8 epilogues
  const float* a_scale = nullptr;
  int64_t a_scale_stride = 0;
  const float* w_scale = nullptr;  // per output column (stride 1) or per tensor (stride 0)
  int64_t w_scale_stride = 1;
  const float* bias = nullptr;  // [N] or null
  bool relu = false;
  // u8 epilogue
  float out_inv_scale = 1.f;
  int32_t out_zp = 0;
};

// Validates the arguments (throws std::invalid_argument) and runs on the active path with
// up to nthreads threads (nthreads < 1 means 1).
void gemm(const GemmArgs& args, int nthreads);

// Same, forcing one path (throws std::runtime_error if the CPU cannot run it).
void gemm_with_isa(const GemmArgs& args, int nthreads, Isa isa);

}  // namespace int8kit
