// Internal: epilogue_ref.h for 16 int32 lanes with AVX-512, bit for bit (include it only
// from *_avx512*.cpp files). Same order of operations as the scalar form: the scale
// product a_scale * w_scale rounded first, one fma with the bias, ReLU as max with +0,
// then requantization as fma(y, 1/out_scale, zp), clamped to [0, 255], rounded half even.
#pragma once

#include <immintrin.h>

#include "epilogue_ref.h"

namespace int8kit::detail {

// a_scale[m] * w_scale[n0 .. n0+16) (masked lanes read nothing).
inline __m512 epi_scale16(const GemmArgs& g, int64_t m, int64_t n0, __mmask16 mask) {
  const __m512 ws = g.w_scale_stride == 0 ? _mm512_set1_ps(g.w_scale[0])
                                          : _mm512_maskz_loadu_ps(mask, g.w_scale + n0);
  return _mm512_mul_ps(_mm512_set1_ps(g.a_scale[m * g.a_scale_stride]), ws);
}

inline __m512 epi_bias16(const GemmArgs& g, int64_t n0, __mmask16 mask) {
  return g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n0) : _mm512_setzero_ps();
}

// Stores the epilogue of a corrected accumulator at element offset `off` of g.C; OUT and
// RELU fixed at compile time (hot loops), g.out and g.relu ignored.
template <OutKind OUT, bool RELU>
inline void epi_store16_t(const GemmArgs& g, int64_t off, __mmask16 mask, __m512i acc,
                          __m512 s, __m512 bias) {
  if constexpr (OUT == OutKind::s32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(g.C) + off, mask, acc);
    return;
  } else {
    __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, bias);
    if constexpr (RELU) y = _mm512_max_ps(y, _mm512_setzero_ps());
    if constexpr (OUT == OutKind::f32) {
      _mm512_mask_storeu_ps(static_cast<float*>(g.C) + off, mask, y);
    } else {
      __m512 t = _mm512_fmadd_ps(y, _mm512_set1_ps(g.out_inv_scale),
                                 _mm512_set1_ps(static_cast<float>(g.out_zp)));
      t = _mm512_max_ps(t, _mm512_setzero_ps());  // t first: NaN -> 0, as the scalar
      t = _mm512_min_ps(t, _mm512_set1_ps(255.f));
      const __m512i q = _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm512_mask_cvtepi32_storeu_epi8(static_cast<uint8_t*>(g.C) + off, mask, q);
    }
  }
}

// 64 bytes in order from four vectors of 16 int32 lanes, each <= 255 (negative lanes and
// INT_MIN saturate to 0): the packs work per 128-bit lane (lane L gets elements 4L..4L+3 of
// each vector), and one dword permute restores the order.
inline __m512i pack64_u8(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i p = _mm512_packus_epi16(_mm512_packus_epi32(a, b), _mm512_packus_epi32(c, d));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_epi32(order, p);
}

// The uint8 requantization of y as int32 lanes for pack64_u8: fma(y, 1/out_scale, zp),
// rounded half even, with only the upper clamp done in float. min with 255 first lets a
// NaN through; it converts to INT_MIN, and the saturating packs turn that (and every
// negative) into 0, exactly as clamping at 0 first would.
inline __m512i requant16_s32(__m512 y, __m512 inv_scale, __m512 zp) {
  const __m512 t = _mm512_min_ps(_mm512_set1_ps(255.f), _mm512_fmadd_ps(y, inv_scale, zp));
  return _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The same with the output kind and ReLU read from g.
inline void epi_store16(const GemmArgs& g, int64_t off, __mmask16 mask, __m512i acc, __m512 s,
                        __m512 bias) {
  switch (g.out) {
    case OutKind::s32: return epi_store16_t<OutKind::s32, false>(g, off, mask, acc, s, bias);
    case OutKind::f32:
      return g.relu ? epi_store16_t<OutKind::f32, true>(g, off, mask, acc, s, bias)
                    : epi_store16_t<OutKind::f32, false>(g, off, mask, acc, s, bias);
    case OutKind::u8:
      return g.relu ? epi_store16_t<OutKind::u8, true>(g, off, mask, acc, s, bias)
                    : epi_store16_t<OutKind::u8, false>(g, off, mask, acc, s, bias);
  }
}

}  // namespace int8kit::detail
