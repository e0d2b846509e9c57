// AVX-VNNI depthwise conv: lane rows of byte quads through vpdpbusd on ymm
// (depthwise_lane_rows.h), for CPUs with VNNI but not AVX-512.
#include "depthwise_lane_rows.h"

namespace int8kit::detail {
namespace {

struct QuadLanes {
  static constexpr int kRows = 4;
  static int32_t pack(const int8_t (&w)[4]) {
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= static_cast<uint32_t>(static_cast<uint8_t>(w[k])) << (8 * k);
    return static_cast<int32_t>(v);
  }
  // 16 channels of rows a, b, c, d -> lanes of bytes (a, b, c, d), in channel order.
  static void interleave16(const __m128i (&v)[4], __m256i* dst) {
    const __m128i ab_lo = _mm_unpacklo_epi8(v[0], v[1]), ab_hi = _mm_unpackhi_epi8(v[0], v[1]);
    const __m128i cd_lo = _mm_unpacklo_epi8(v[2], v[3]), cd_hi = _mm_unpackhi_epi8(v[2], v[3]);
    _mm256_store_si256(dst, _mm256_set_m128i(_mm_unpackhi_epi16(ab_lo, cd_lo),
                                             _mm_unpacklo_epi16(ab_lo, cd_lo)));
    _mm256_store_si256(dst + 1, _mm256_set_m128i(_mm_unpackhi_epi16(ab_hi, cd_hi),
                                                 _mm_unpacklo_epi16(ab_hi, cd_hi)));
  }
  // "{vex}" pins the AVX-VNNI encoding (the EVEX form needs AVX-512).
  static __m256i mac(__m256i acc, __m256i a, __m256i w) {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w));
    return acc;
  }
};

}  // namespace

void depthwise_rows_avxvnni(const DwJob& j, int64_t r0, int64_t r1) {
  depthwise_lane_rows<QuadLanes>(j, r0, r1);
}

}  // namespace int8kit::detail
