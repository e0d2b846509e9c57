// AVX-512 activation quantization: min/max scan with a NaN/Inf flag, and the quantize
// loop; bit-identical to quantize_ref.cpp.
#include <immintrin.h>

#include <cmath>

#include "epilogue_avx512.h"
#include "kernels.h"

namespace int8kit::detail {

MinMax minmax_avx512(const float* x, int64_t n) {
  __m512 lo = _mm512_set1_ps(x[0]), hi = lo;
  // Inf shows in the final lo or hi; NaN must be looked for, since vminps/vmaxps drop it
  // when it is the first operand: an unordered compare of two vectors flags a NaN in either.
  __mmask16 nan = 0;
  int64_t i = 0;
  // Four independent min/max chains: one chain is bound by vminps latency (4 cycles).
  __m512 lo1 = lo, hi1 = hi, lo2 = lo, hi2 = hi, lo3 = lo, hi3 = hi;
  for (; i + 64 <= n; i += 64) {
    __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
    // One load per vector: left alone, GCC folds each load into min, max and compare alike
    // (10 loads per 4 vectors), and the loop is bound by the load ports.
    __asm__("" : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3));
    lo = _mm512_min_ps(lo, v0), hi = _mm512_max_ps(hi, v0);
    lo1 = _mm512_min_ps(lo1, v1), hi1 = _mm512_max_ps(hi1, v1);
    lo2 = _mm512_min_ps(lo2, v2), hi2 = _mm512_max_ps(hi2, v2);
    lo3 = _mm512_min_ps(lo3, v3), hi3 = _mm512_max_ps(hi3, v3);
    nan |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v3, _CMP_UNORD_Q);
  }
  lo = _mm512_min_ps(_mm512_min_ps(lo, lo1), _mm512_min_ps(lo2, lo3));
  hi = _mm512_max_ps(_mm512_max_ps(hi, hi1), _mm512_max_ps(hi2, hi3));
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(lo, m, x + i);  // unused lanes repeat lo
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, _mm512_mask_mov_ps(hi, m, v));
    nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
  }
  const float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
  return {l, h, nan == 0 && std::isfinite(l) && std::isfinite(h)};
}

namespace {

inline __m128i quantize16(__m512 v, __m512 inv, __m512 zp) {
  const __m512i q = requant16_s32(v, inv, zp);
  return _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512()));
}

}  // namespace

void quantize_u8_avx512(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  const __m512 z = _mm512_set1_ps(static_cast<float>(zp));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(q + i, pack64_u8(requant16_s32(_mm512_loadu_ps(x + i), inv, z),
                                         requant16_s32(_mm512_loadu_ps(x + i + 16), inv, z),
                                         requant16_s32(_mm512_loadu_ps(x + i + 32), inv, z),
                                         requant16_s32(_mm512_loadu_ps(x + i + 48), inv, z)));
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), quantize16(_mm512_loadu_ps(x + i), inv, z));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m128i v = quantize16(_mm512_maskz_loadu_ps(m, x + i), inv, z);
    _mm_mask_storeu_epi8(q + i, m, v);
  }
}

}  // namespace int8kit::detail
