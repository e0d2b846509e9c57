// Float-input linear layers in one call: the activations are quantized into a per-thread
// scratch buffer, then the GEMM runs with its fused epilogue. At small M the separate
// steps (and their per-call allocations) cost more than the arithmetic.
//
// Results are bit-identical to the two-step route on every path: quantize_dynamic_u8 (or
// quantize_u8 with fixed parameters) followed by gemm with the same arguments.
#pragma once

#include <cstdint>

#include "int8kit/gemm.h"
#include "int8kit/pack.h"

namespace int8kit {

struct LinearArgs {
  const float* x = nullptr;  // [M, K] contiguous, K = B.k
  int64_t M = 0;
  PackedView B;
  const float* w_scale = nullptr;  // per output column (stride 1) or per tensor (stride 0)
  int64_t w_scale_stride = 1;
  const float* bias = nullptr;  // [N] or null
  bool relu = false;
};

// y[M, N] = dequantize(quantize(x) @ w.T) + bias (optional ReLU), x quantized to uint8 per
// row or per tensor with parameters measured on the fly. Returns false, y unspecified, if
// x holds NaN or Inf.
bool linear_dynamic_f32(const LinearArgs& a, bool per_row, float* y, int nthreads);

// n layers that read the same x (attention's q, k and v projections): x is quantized once
// and each layer i writes ys[i]. Every layer must have the same x, M and K. Bit-identical
// to n linear_dynamic_f32 calls.
bool linear_dynamic_f32_multi(const LinearArgs* layers, int n, bool per_row, float* const* ys,
                              int nthreads);

// x quantized with fixed input parameters; out is f32 (y: float*) or u8 (y: uint8_t*,
// requantized with out_inv_scale and out_zp). Returns false, y unspecified, if x holds
// NaN or Inf (they would otherwise quantize silently to 0 or 255).
bool linear_static(const LinearArgs& a, float in_scale, int32_t in_zp, OutKind out, void* y,
                   float out_inv_scale, int32_t out_zp, int nthreads);

// quantize_u8 after a NaN/Inf scan: returns false, q untouched, if x holds NaN or Inf.
bool quantize_u8_checked(const float* x, int64_t n, float scale, int32_t zp, uint8_t* q);

}  // namespace int8kit
