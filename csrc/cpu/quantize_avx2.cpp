// AVX2 activation quantization: the min/max scan and fp32 -> uint8, bit-identical to the
// scalar oracle in quantize_ref.cpp.
#include <immintrin.h>

#include "kernels.h"

namespace int8kit::detail {
namespace {

inline float hmin(__m256 v) {
  __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_min_ps(x, _mm_movehl_ps(x, x));
  x = _mm_min_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// All-ones lanes where v is NaN or +-Inf: !(|v| < inf), true when unordered.
inline __m256 not_finite(__m256 v) {
  const __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
  return _mm256_cmp_ps(abs, _mm256_set1_ps(__builtin_inff()), _CMP_NLT_UQ);
}

// The first x[i] that compares equal to zero (there is one when this is called).
float first_zero(const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const int mask = _mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps(), _CMP_EQ_OQ));
    if (mask) return x[i + __builtin_ctz(static_cast<unsigned>(mask))];
  }
  for (; i < n; ++i)
    if (x[i] == 0.f) return x[i];
  return 0.f;
}

}  // namespace

MinMax minmax_avx2(const float* x, int64_t n) {
  if (n < 16) return minmax_scalar(x, n);
  // Two independent accumulator pairs hide the min/max latency. Each lane applies the
  // scalar's update rule (minps(v, lo) = v < lo ? v : lo) to its own subsequence.
  __m256 lo0 = _mm256_loadu_ps(x), lo1 = _mm256_loadu_ps(x + 8);
  __m256 hi0 = lo0, hi1 = lo1;
  __m256 bad = _mm256_or_ps(not_finite(lo0), not_finite(lo1));
  int64_t i = 16;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    lo0 = _mm256_min_ps(v0, lo0);
    hi0 = _mm256_max_ps(v0, hi0);
    lo1 = _mm256_min_ps(v1, lo1);
    hi1 = _mm256_max_ps(v1, hi1);
    bad = _mm256_or_ps(bad, _mm256_or_ps(not_finite(v0), not_finite(v1)));
  }
  if (i + 8 <= n) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo0 = _mm256_min_ps(v, lo0);
    hi0 = _mm256_max_ps(v, hi0);
    bad = _mm256_or_ps(bad, not_finite(v));
    i += 8;
  }
  float lo = hmin(_mm256_min_ps(lo0, lo1));
  float hi = hmax(_mm256_max_ps(hi0, hi1));
  bool finite = _mm256_movemask_ps(bad) == 0;
  if (i < n) {
    const MinMax t = minmax_scalar(x + i, n - i);
    lo = t.lo < lo ? t.lo : lo;
    hi = t.hi > hi ? t.hi : hi;
    finite = finite && t.finite;
  }
  // Without NaN the min and max values do not depend on order, except the sign of a zero:
  // the scalar scan keeps the first of equal values, so -0 vs +0 is decided by which zero
  // comes first. Look it up to match bit for bit (post-ReLU data: found within a few reads).
  if (lo == 0.f) lo = first_zero(x, n);
  if (hi == 0.f) hi = first_zero(x, n);
  return {lo, hi, finite};
}

void quantize_u8_avx2(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.f);
  const __m256 vzp = _mm256_set1_ps(static_cast<float>(zp));
  // Same steps as the scalar: fma(x, inv, zp), clamp to [0, 255] in float with t first (so
  // NaN -> 0), round half to even (cvtps2dq, default rounding mode).
  auto quant8 = [&](const float* p) {
    __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(p), inv, vzp);
    t = _mm256_min_ps(_mm256_max_ps(t, zero), top);
    return _mm256_cvtps_epi32(t);
  };

  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = quant8(x + i), b = quant8(x + i + 8);
    const __m256i c = quant8(x + i + 16), d = quant8(x + i + 24);
    // The packs work per 128-bit lane, leaving 4-byte groups in the order
    // a0 b0 c0 d0 a1 b1 c1 d1 (a0 = a[0..3], a1 = a[4..7]); the permute restores a0 a1 b0 ...
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256i a = quant8(x + i);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(w16, w16));
  }
  if (i < n) quantize_u8_scalar(x + i, n - i, inv_scale, zp, q + i);
}

}  // namespace int8kit::detail
