// AVX2 depthwise conv: 32 channels per step, exact int32.
//
// Activation bytes are zero-extended and weights sign-extended to int32 lanes; vpmaddwd
// then gives a*w + 0*(sign bits) = a*w per lane, exact (vpmaddubsw would saturate). The
// epilogue is the scalar one of epilogue_ref.h, so it is bit-identical by construction.
#include <immintrin.h>

#include <vector>

#include "conv_kernels.h"
#include "epilogue_ref.h"

namespace int8kit::detail {
namespace {

inline __m256i widen_u8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline __m256i widen_s8(const int8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

}  // namespace

void depthwise_rows_avx2(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  const int64_t C = p.in_channels, taps = p.kh * p.kw, cp = a.wt.cp;
  const int8_t* wp = a.wt.dw_plain;
  std::vector<const uint8_t*> tp(static_cast<size_t>(taps));
  alignas(32) int32_t raw[32];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / j.oh, y = r % j.oh;
    for (int64_t x = 0; x < j.ow; ++x) {
      for (int64_t kh = 0; kh < p.kh; ++kh)
        for (int64_t kw = 0; kw < p.kw; ++kw)
          tp[kh * p.kw + kw] = dw_tap(j, n, y * p.stride_h - p.pad_h + kh * p.dil_h,
                                      x * p.stride_w - p.pad_w + kw * p.dil_w);
      const int64_t m = r * j.ow + x;
      int64_t c = 0;
      for (; c + 32 <= C; c += 32) {
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
                          _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t t = 0; t < taps; ++t)
          for (int q = 0; q < 4; ++q)
            acc[q] = _mm256_add_epi32(
                acc[q], _mm256_madd_epi16(widen_u8(tp[t] + c + 8 * q), widen_s8(wp + t * cp + c + 8 * q)));
        for (int q = 0; q < 4; ++q) _mm256_store_si256(reinterpret_cast<__m256i*>(raw + 8 * q), acc[q]);
        for (int i = 0; i < 32; ++i) store_one(j.epi, m, c + i, correct_acc(j.epi, m, c + i, raw[i]));
      }
      for (; c < C; ++c) {  // channel tail, scalar
        uint32_t s = 0;
        for (int64_t t = 0; t < taps; ++t) s += uint32_t(tp[t][c]) * uint32_t(int32_t(wp[t * cp + c]));
        store_one(j.epi, m, c, correct_acc(j.epi, m, c, static_cast<int32_t>(s)));
      }
    }
  }
}

}  // namespace int8kit::detail
