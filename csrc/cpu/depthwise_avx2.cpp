// AVX2 depthwise conv: lane rows of int16 pairs through vpmaddwd (depthwise_lane_rows.h).
#include "depthwise_lane_rows.h"

namespace int8kit::detail {
namespace {

struct PairLanes {
  static constexpr int kRows = 2;
  // w[0] in the low int16 (sign-extended), w[1] in the high one.
  static int32_t pack(const int8_t (&w)[2]) {
    return static_cast<int32_t>((static_cast<uint32_t>(int32_t{w[0]}) & 0xFFFF) |
                                (static_cast<uint32_t>(int32_t{w[1]}) << 16));
  }
  // 16 channels of rows a, b -> lanes (a zero-extended low, b high), in channel order.
  static void interleave16(const __m128i (&v)[2], __m256i* dst) {
    _mm256_store_si256(dst, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v[0], v[1])));
    _mm256_store_si256(dst + 1, _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v[0], v[1])));
  }
  static __m256i mac(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
  }
};

}  // namespace

void depthwise_rows_avx2(const DwJob& j, int64_t r0, int64_t r1) {
  depthwise_lane_rows<PairLanes>(j, r0, r1);
}

}  // namespace int8kit::detail
