// AVX2 GEMM: uint8 activations x packed int8 weights, exact int32 accumulation.
//
// AVX2 has no vpdpbusd, and vpmaddubsw saturates its int16 pair sums (255*127*2 > 32767),
// so this path widens instead: weight bytes are sign-extended to int16 (vpmovsxbw) and the
// four activation bytes of a K group are zero-extended to int16 and repeated across the
// register; vpmaddwd then forms exact int32 sums of pairs. For 16 packed bytes (4 columns
// x 4 k) one vpmaddwd gives, per column, two partial sums (k0+k1 and k2+k3). Those pair
// partials are accumulated over all of K and folded into one sum per column only at the
// end. Every step is exact or wraps modulo 2^32, so the result equals the scalar oracle's.
//
// Micro-kernel: 2 rows x one 16-column panel = 8 accumulators, plus 4 weight, 2 activation,
// 1 product and 1 zero register: 16 ymm registers, no spills. (3 rows would need 17: 12
// accumulators + 3 activations + weight + product, and GCC then spills accumulators on
// every K step; measured no faster. Per K group the 2-row kernel spends 4 vpmovsxbw +
// 2 vpunpcklbw + 8 vpmaddwd + 8 vpaddd on 128 multiply-adds, close to the 3-row ratio.)
#include <immintrin.h>

#include <cstring>

#include "epilogue_avx2.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

constexpr int kRowsPerTile = 2;

// Four activation bytes -> int16 lanes a0 a1 a2 a3 a0 a1 a2 a3 ... (zero-extended).
inline __m256i widen_a4(uint32_t four_bytes) {
  return _mm256_unpacklo_epi8(_mm256_set1_epi32(static_cast<int>(four_bytes)),
                              _mm256_setzero_si256());
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One K group for MR rows: acc[r][q] += pair sums of column quad q (columns 4q..4q+3).
template <int MR>
inline void madd_group(const int8_t* w, const __m256i (&a)[MR], __m256i (&acc)[MR][4]) {
  for (int q = 0; q < 4; ++q) {
    const __m256i wq =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * q)));
    for (int r = 0; r < MR; ++r)
      acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(wq, a[r]));
  }
}

// Folds pair partials of two column quads into 8 column sums in column order.
// hadd gives, per 128-bit lane, [x0 x1 y0 y1] | [x2 x3 y2 y3] (xi = column i of the first
// quad); swapping the middle 64-bit pieces restores 0..7.
inline __m256i fold_pairs(__m256i quad_lo, __m256i quad_hi) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(quad_lo, quad_hi), 0xD8);
}

// MR rows starting at m, one panel, full K, epilogue included.
template <int MR>
void tile(const GemmArgs& g, const PanelParams& pp, const int8_t* panel, int64_t m) {
  const int64_t K = g.B.k;
  const int64_t full_groups = K / kKGroup;
  const uint8_t* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = g.A + (m + r) * g.lda;

  __m256i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_si256();

  for (int64_t grp = 0; grp < full_groups; ++grp) {
    __m256i av[MR];
    for (int r = 0; r < MR; ++r) av[r] = widen_a4(load_u32(a[r] + grp * kKGroup));
    madd_group<MR>(panel + grp * (kPanel * kKGroup), av, acc);
  }
  if (full_groups * kKGroup < K) {
    // Partial last group: A rows end at column K-1, so copy the 1-3 remaining bytes into
    // a zeroed word (the packed weights are zero there anyway).
    const int64_t k0 = full_groups * kKGroup;
    __m256i av[MR];
    for (int r = 0; r < MR; ++r) {
      uint32_t v = 0;
      for (int64_t j = 0; j < K - k0; ++j) v |= static_cast<uint32_t>(a[r][k0 + j]) << (8 * j);
      av[r] = widen_a4(v);
    }
    madd_group<MR>(panel + full_groups * (kPanel * kKGroup), av, acc);
  }

  for (int r = 0; r < MR; ++r)
    finish_row(g, pp, m + r, fold_pairs(acc[r][0], acc[r][1]), fold_pairs(acc[r][2], acc[r][3]));
}

}  // namespace

void gemm_block_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  PanelParams pp;
  for (int64_t p = p0; p < p1; ++p) {
    load_panel_params(g, p, &pp);
    const int8_t* panel = g.B.panel(p);
    int64_t m = m0;
    for (; m + kRowsPerTile <= m1; m += kRowsPerTile) tile<kRowsPerTile>(g, pp, panel, m);
    static_assert(kRowsPerTile == 2, "the row tail below is a single row");
    if (m < m1) tile<1>(g, pp, panel, m);
  }
}

}  // namespace int8kit::detail
