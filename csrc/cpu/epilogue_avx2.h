// The AVX2-width epilogue shared by the AVX2 and AVX-VNNI GEMM paths: per-panel column
// parameters, then zero-point correction, dequantize / requantize and store of one output
// row of a 16-column panel given as two ymm of int32 sums in column order. The arithmetic
// per element is epilogue_ref.h's. Everything here has internal linkage: the two kernel
// files are compiled with different ISA flags, so they must not share one copy.
#pragma once

#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace int8kit::detail {
namespace {

// Epilogue inputs for one panel, copied out so that a partial last panel never reads
// w_scale or bias past column N-1 (colsum itself is padded to the full panel).
struct PanelParams {
  alignas(32) int32_t colsum[kPanel];
  alignas(32) float w_scale[kPanel];
  alignas(32) float bias[kPanel];
  int64_t n0 = 0;  // first output column of the panel
  int ncols = 0;   // valid columns in the panel (1..16)
};

inline void load_panel_params(const GemmArgs& g, int64_t p, PanelParams* pp) {
  pp->n0 = p * kPanel;
  const int64_t left = g.B.n - pp->n0;
  pp->ncols = static_cast<int>(left < kPanel ? left : kPanel);
  std::memcpy(pp->colsum, g.B.colsum + pp->n0, sizeof(pp->colsum));
  for (int c = 0; c < kPanel; ++c) {
    const bool valid = c < pp->ncols && g.out != OutKind::s32;
    pp->w_scale[c] = valid ? g.w_scale[(pp->n0 + c) * g.w_scale_stride] : 0.f;
    pp->bias[c] = valid && g.bias ? g.bias[pp->n0 + c] : 0.f;
  }
}

// Stores n (1..16) of the 16 elements in v0 (elements 0-7) and v1 (8-15).
template <typename T, typename V, typename StoreFn>
inline void store16(T* dst, int n, V v0, V v1, StoreFn store) {
  if (n == kPanel) {
    store(dst, v0);
    store(dst + 8, v1);
  } else {
    alignas(32) T tmp[kPanel];
    store(tmp, v0);
    store(tmp + 8, v1);
    std::memcpy(dst, tmp, n * sizeof(T));
  }
}

// The epilogue's constants for 16 columns of one row, in registers. A caller that stores
// many rows with the same constants (depthwise: one block of channels) makes them once.
struct Epi16 {
  __m256 scale[2];  // a_scale * w_scale: the product rounded first, as dequant_one() does
  __m256 bias[2];   // a missing bias is +0, as there
  __m256 inv, ozp;  // u8: 1 / out_scale and the output zero point
  int ncols;        // valid columns (1..16)
};

inline Epi16 epi16(const GemmArgs& g, const PanelParams& pp, float a_scale) {
  Epi16 e;
  const __m256 as = _mm256_set1_ps(a_scale);
  for (int h = 0; h < 2; ++h) {
    e.scale[h] = _mm256_mul_ps(as, _mm256_load_ps(pp.w_scale + 8 * h));
    e.bias[h] = _mm256_load_ps(pp.bias + 8 * h);
  }
  e.inv = _mm256_set1_ps(g.out_inv_scale);
  e.ozp = _mm256_set1_ps(static_cast<float>(g.out_zp));
  e.ncols = pp.ncols;
  return e;
}

// Epilogue and store of 16 columns (e.ncols of them) at dst, given the zero-point-
// corrected sums in column order. T: int32_t, float or uint8_t, as OUT says.
template <OutKind OUT, bool RELU, typename T>
inline void store_epi16(const Epi16& e, T* dst, __m256i acc0, __m256i acc1) {
  if constexpr (OUT == OutKind::s32) {
    store16(dst, e.ncols, acc0, acc1, [](int32_t* d, __m256i v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), v);
    });
  } else {
    // y = fma(float(acc), scale, bias)
    __m256 y[2] = {_mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0), e.scale[0], e.bias[0]),
                   _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), e.scale[1], e.bias[1])};
    if constexpr (RELU)  // maxps returns its second operand unless the first is greater:
      for (auto& v : y) v = _mm256_max_ps(v, _mm256_setzero_ps());  // -0 and NaN give +0
    if constexpr (OUT == OutKind::f32) {
      store16(dst, e.ncols, y[0], y[1], [](float* d, __m256 v) { _mm256_storeu_ps(d, v); });
    } else {
      // As requant_one(): fma(y, 1/out_scale, zp), clamp to [0, 255] with t first (NaN ->
      // 0), then round half to even (cvtps2dq under the default rounding mode).
      __m256i q[2];
      for (int h = 0; h < 2; ++h)
        q[h] = _mm256_cvtps_epi32(_mm256_min_ps(
            _mm256_max_ps(_mm256_fmadd_ps(y[h], e.inv, e.ozp), _mm256_setzero_ps()),
            _mm256_set1_ps(255.f)));
      // Values are already in [0, 255], so the saturating packs only narrow. packs works
      // per 128-bit lane; the permute puts the 16 int16 back in column order.
      const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
      const __m128i bytes =
          _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
      if (e.ncols == kPanel) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), bytes);
      } else {
        alignas(16) uint8_t tmp[kPanel];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), bytes);
        std::memcpy(dst, tmp, static_cast<size_t>(e.ncols));
      }
    }
  }
}

// Zero-point correction, epilogue and store for one output row of one panel. Not inlined:
// in the GEMM tiles, its code after the K loop made GCC spill accumulators inside it.
inline __attribute__((noinline)) void finish_row(const GemmArgs& g, const PanelParams& pp,
                                                  int64_t m, __m256i raw0, __m256i raw1) {
  // raw - zp * colsum, wrapping modulo 2^32 like correct_acc().
  const __m256i zp = _mm256_set1_epi32(g.a_zp[m * g.a_zp_stride]);
  const __m256i* cs = reinterpret_cast<const __m256i*>(pp.colsum);
  const __m256i acc0 = _mm256_sub_epi32(raw0, _mm256_mullo_epi32(zp, _mm256_load_si256(cs)));
  const __m256i acc1 = _mm256_sub_epi32(raw1, _mm256_mullo_epi32(zp, _mm256_load_si256(cs + 1)));
  const int64_t off = m * g.ldc + pp.n0;
  if (g.out == OutKind::s32) {
    Epi16 e;
    e.ncols = pp.ncols;
    return store_epi16<OutKind::s32, false>(e, static_cast<int32_t*>(g.C) + off, acc0, acc1);
  }
  const Epi16 e = epi16(g, pp, g.a_scale[m * g.a_scale_stride]);
  if (g.out == OutKind::f32) {
    float* dst = static_cast<float*>(g.C) + off;
    return g.relu ? store_epi16<OutKind::f32, true>(e, dst, acc0, acc1)
                  : store_epi16<OutKind::f32, false>(e, dst, acc0, acc1);
  }
  uint8_t* dst = static_cast<uint8_t*>(g.C) + off;
  return g.relu ? store_epi16<OutKind::u8, true>(e, dst, acc0, acc1)
                : store_epi16<OutKind::u8, false>(e, dst, acc0, acc1);
}

}  // namespace
}  // namespace int8kit::detail
