// float32 -> uint8 activation quantization, as in the numerics contract:
//   q = clamp(nearbyint(fmaf(x, 1.f / scale, zp)), 0, 255)     (round half to even)
// which is torch's order (FBGEMM's quantize_per_tensor): the zero point is added before
// rounding, so results agree with torch.quantize_per_tensor value for value.
// Dynamic parameters follow torch.ao's MinMaxObserver for quint8, per tensor affine:
//   lo = min(min(x), 0), hi = max(max(x), 0)
//   scale = max((hi - lo) / 255.f, FLT_EPSILON);  zp = clamp(0 - nearbyint(lo / scale), 0, 255)
#pragma once

#include <cstdint>

#include "int8kit/isa.h"

namespace int8kit {

struct MinMax {
  float lo, hi;
  bool finite;  // false if any NaN or Inf was seen
};

// Min and max of x[0..n) (n >= 1), with a NaN/Inf flag.
MinMax minmax_f32(const float* x, int64_t n);
// scale and zero point for uint8 from a measured range (the formula above); throws
// std::invalid_argument when max(hi, 0) - min(lo, 0) overflows float32.
void choose_qparams_u8(float lo, float hi, float* scale, int32_t* zp);
// Quantizes x[0..n) with fixed parameters.
void quantize_u8(const float* x, int64_t n, float scale, int32_t zp, uint8_t* q);

// Dynamic quantization of x[M, K] (row stride ldx) into q[M, K] (row stride ldq).
// per_row: one (scale, zp) per row, written to scale[m], zp[m]; else one for the whole
// tensor, written to scale[0], zp[0]. Returns false (and leaves q unspecified) if x holds
// NaN or Inf. Runs on the active path with up to nthreads threads.
bool quantize_dynamic_u8(const float* x, int64_t M, int64_t K, int64_t ldx, bool per_row,
                         uint8_t* q, int64_t ldq, float* scale, int32_t* zp, int nthreads);

}  // namespace int8kit
