// Internal: the scalar epilogue, written once. Vector paths use it for tails and must
// reproduce it bit for bit (fma, then the same clamp and round-half-even).
#pragma once

#include <cmath>
#include <cstdint>

#include "int8kit/gemm.h"

namespace int8kit::detail {

inline float dequant_one(const GemmArgs& g, int64_t m, int64_t n, int32_t acc) {
  const float s = g.a_scale[m * g.a_scale_stride] * g.w_scale[n * g.w_scale_stride];
  float y = std::fma(static_cast<float>(acc), s, g.bias ? g.bias[n] : 0.f);
  if (g.relu) y = y > 0.f ? y : 0.f;
  return y;
}

// The same formula as activation quantization (quantize.h, torch's order): the zero point
// is added before rounding, so a uint8 output handed to the next layer equals quantizing
// the float output with that layer's input parameters, bit for bit.
inline uint8_t requant_one(const GemmArgs& g, float y) {
  float t = std::fma(y, g.out_inv_scale, static_cast<float>(g.out_zp));
  t = t > 0.f ? t : 0.f;  // NaN maps to 0, as vmaxps(t, 0) does
  t = t < 255.f ? t : 255.f;
  return static_cast<uint8_t>(std::nearbyint(t));
}

// Applies the epilogue to one corrected accumulator and stores it.
inline void store_one(const GemmArgs& g, int64_t m, int64_t n, int32_t acc) {
  switch (g.out) {
    case OutKind::s32:
      static_cast<int32_t*>(g.C)[m * g.ldc + n] = acc;
      break;
    case OutKind::f32:
      static_cast<float*>(g.C)[m * g.ldc + n] = dequant_one(g, m, n, acc);
      break;
    case OutKind::u8:
      static_cast<uint8_t*>(g.C)[m * g.ldc + n] = requant_one(g, dequant_one(g, m, n, acc));
      break;
  }
}

// raw - a_zp[m] * colsum[n], with int32 wrap-around (the true value fits by the K bound).
inline int32_t correct_acc(const GemmArgs& g, int64_t m, int64_t n, int32_t raw) {
  const uint32_t zp = static_cast<uint32_t>(g.a_zp[m * g.a_zp_stride]);
  return static_cast<int32_t>(static_cast<uint32_t>(raw) -
                              zp * static_cast<uint32_t>(g.B.colsum[n]));
}

}  // namespace int8kit::detail
