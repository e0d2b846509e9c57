// AVX-512 activation quantization: min/max scan with a NaN/Inf flag, and the quantize
// loop; bit-identical to quantize_ref.cpp.
#include <immintrin.h>

#include "kernels.h"

namespace int8kit::detail {

MinMax minmax_avx512(const float* x, int64_t n) {
  __m512 lo = _mm512_set1_ps(x[0]), hi = lo;
  // |x| == Inf or NaN  <=>  not (|x| <= FLT_MAX); an ordered compare is false for NaN.
  const __m512 big = _mm512_set1_ps(3.402823466e38f);
  __mmask16 bad = 0;
  int64_t i = 0;
  // Four independent min/max chains: one chain is bound by vminps latency (4 cycles).
  __m512 lo1 = lo, hi1 = hi, lo2 = lo, hi2 = hi, lo3 = lo, hi3 = hi;
  for (; i + 64 <= n; i += 64) {
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    const __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
    lo = _mm512_min_ps(lo, v0), hi = _mm512_max_ps(hi, v0);
    lo1 = _mm512_min_ps(lo1, v1), hi1 = _mm512_max_ps(hi1, v1);
    lo2 = _mm512_min_ps(lo2, v2), hi2 = _mm512_max_ps(hi2, v2);
    lo3 = _mm512_min_ps(lo3, v3), hi3 = _mm512_max_ps(hi3, v3);
    const __m512 m01 = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    const __m512 m23 = _mm512_max_ps(_mm512_abs_ps(v2), _mm512_abs_ps(v3));
    // NaN must reach the compare: vmaxps returns its second operand when either is NaN,
    // so test each pair's operands separately where a NaN could be dropped.
    bad |= _mm512_cmp_ps_mask(m01, big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(m23, big, _CMP_NLE_UQ) |
           _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v2, _CMP_UNORD_Q);
  }
  lo = _mm512_min_ps(_mm512_min_ps(lo, lo1), _mm512_min_ps(lo2, lo3));
  hi = _mm512_max_ps(_mm512_max_ps(hi, hi1), _mm512_max_ps(hi2, hi3));
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
    bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(v), big, _CMP_NLE_UQ);
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(lo, m, x + i);  // unused lanes repeat lo
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, _mm512_mask_mov_ps(hi, m, v));
    bad |= _mm512_mask_cmp_ps_mask(m, _mm512_abs_ps(v), big, _CMP_NLE_UQ);
  }
  return {_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), bad == 0};
}

namespace {

inline __m128i quantize16(__m512 v, __m512 inv, __m512 zp) {
  __m512 t = _mm512_fmadd_ps(v, inv, zp);
  t = _mm512_max_ps(t, _mm512_setzero_ps());  // t first: NaN -> 0, as the scalar
  t = _mm512_min_ps(t, _mm512_set1_ps(255.f));
  return _mm512_cvtepi32_epi8(
      _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace

void quantize_u8_avx512(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  const __m512 z = _mm512_set1_ps(static_cast<float>(zp));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // 4 vectors per iteration keeps the FP pipes busy
    for (int j = 0; j < 4; ++j)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i + 16 * j),
                       quantize16(_mm512_loadu_ps(x + i + 16 * j), inv, z));
  }
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), quantize16(_mm512_loadu_ps(x + i), inv, z));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m128i v = quantize16(_mm512_maskz_loadu_ps(m, x + i), inv, z);
    _mm_mask_storeu_epi8(q + i, m, v);
  }
}

}  // namespace int8kit::detail
