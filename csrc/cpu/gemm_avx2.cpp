// AVX2 GEMM: uint8 activations x packed int8 weights, exact int32 accumulation.
//
// AVX2 has no vpdpbusd, and vpmaddubsw saturates its int16 pair sums (255*127*2 > 32767),
// so this path multiplies in int16: vpmaddwd forms exact int32 sums of pairs, 16
// multiply-adds per instruction. Widening bytes to int16 costs shuffles, so it is done
// once per operand and reused, as a BLAS packs its blocks:
// - a block of A rows is zero-extended into int16 rows (reused by every panel), and
// - each 16-column weight panel is sign-extended into k-pair order: per pair of k, one
//   ymm holds columns 0-7 as (w[c][k], w[c][k+1]) and the next columns 8-15 (reused by
//   every row of the block).
// The micro-kernel then needs no shuffle at all: per pair of k, 2 weight loads and, per
// row, a 32-bit broadcast load, 2 vpmaddwd and 2 vpaddd; 6 rows x 16 columns = 12
// accumulators + 2 weights + broadcast + product = 16 ymm. Sums land in column order.
//
// With few rows, widening a whole panel would cost about as much as using it, so those
// take a direct kernel that widens weight bytes on the fly (2 rows x 16 columns).
// Every step is exact or wraps modulo 2^32, so the result equals the scalar oracle's.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "aligned_scratch.h"
#include "epilogue_avx2.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

// 4 bytes from any address (A rows have no alignment).
inline uint32_t load32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// ---- Direct kernel (few rows) ---------------------------------------------------------

// Four activation bytes -> int16 lanes a0 a1 a2 a3 a0 a1 a2 a3 ... (zero-extended).
inline __m256i widen_a4(uint32_t four_bytes) {
  return _mm256_unpacklo_epi8(_mm256_set1_epi32(static_cast<int>(four_bytes)),
                              _mm256_setzero_si256());
}

// One K group for MR rows: acc[r][q] += pair sums of column quad q (columns 4q..4q+3).
// 16 packed bytes (4 columns x 4 k) widen to one ymm; vpmaddwd gives per column two
// partial sums (k0+k1, k2+k3), folded into one only at the end.
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

// MR (1 or 2) rows starting at m, one panel, full K, epilogue included. 8 accumulators,
// 4 weights, 2 activations, product and zero: 16 ymm.
template <int MR>
void direct_tile(const GemmArgs& g, const PanelParams& pp, const int8_t* panel, int64_t m) {
  const int64_t K = g.B.k;
  const int64_t full_groups = K / kKGroup;
  const uint8_t* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = g.A + (m + r) * g.lda;

  __m256i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_si256();

  for (int64_t grp = 0; grp < full_groups; ++grp) {
    __m256i av[MR];
    for (int r = 0; r < MR; ++r) av[r] = widen_a4(load32(a[r] + grp * kKGroup));
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

void direct_block(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  PanelParams pp;
  for (int64_t p = p0; p < p1; ++p) {
    load_panel_params(g, p, &pp);
    const int8_t* panel = g.B.panel(p);
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) direct_tile<2>(g, pp, panel, m);
    if (m < m1) direct_tile<1>(g, pp, panel, m);
  }
}

// ---- Widened kernel --------------------------------------------------------------------

constexpr int kRows = 6;
// kAvx2WidenRows (12): below it, the direct kernel is faster. Widening a panel costs about
// what one 6-row tile spends on it (even at 11 rows of 768x768; 12 rows 1.03x).
// int16 A rows per block: about this many bytes, in L2 beside the widened panel. Larger
// blocks widen each panel fewer times (K = 3072: 192 KB -> 512 KB, 1.10x).
constexpr int64_t kRowBlockBytes = int64_t(512) << 10;

// Rows [m0, m1) of A zero-extended to int16, kpad (= 4 * k_groups) per row, zero past K.
void widen_rows(const GemmArgs& g, int64_t m0, int64_t m1, int64_t kpad, int16_t* out) {
  const int64_t K = g.B.k;
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* src = g.A + m * g.lda;
    int16_t* dst = out + (m - m0) * kpad;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                         _mm256_cvtepu8_epi16(
                             _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
    for (; k < K; ++k) dst[k] = src[k];
    for (; k < kpad; ++k) dst[k] = 0;
  }
}

// One packed panel (k_groups groups of 16 columns x 4 k) sign-extended to k-pair order:
// out[64 * grp + 0..31] = pair 2*grp (columns 0-7, then 8-15), out[.. + 32..63] = pair
// 2*grp + 1.
void widen_panel(const int8_t* panel, int64_t k_groups, int16_t* out) {
  // Within one 16-byte column quad widened to int16, 32-bit unit 2c holds column c's
  // (k0, k1) and unit 2c+1 its (k2, k3): gather the even units low, the odd ones high.
  const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t grp = 0; grp < k_groups; ++grp) {
    const int8_t* src = panel + grp * (kPanel * kKGroup);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_permutevar8x32_epi32(
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * i))),
          even_odd);
    __m256i* dst = reinterpret_cast<__m256i*>(out + grp * 64);
    _mm256_store_si256(dst + 0, _mm256_permute2x128_si256(q[0], q[1], 0x20));  // k01, c0-7
    _mm256_store_si256(dst + 1, _mm256_permute2x128_si256(q[2], q[3], 0x20));  // k01, c8-15
    _mm256_store_si256(dst + 2, _mm256_permute2x128_si256(q[0], q[1], 0x31));  // k23, c0-7
    _mm256_store_si256(dst + 3, _mm256_permute2x128_si256(q[2], q[3], 0x31));  // k23, c8-15
  }
}

// MR rows of widened A (row stride kpad) times one widened panel, epilogue included.
template <int MR>
void wide_tile(const GemmArgs& g, const PanelParams& pp, const int16_t* a16, int64_t kpad,
               const int16_t* w16, int64_t m) {
  __m256i acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t k = 0; k < kpad; k += 2) {
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w16 + 16 * k));
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w16 + 16 * k + 16));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi32(static_cast<int>(load32(a16 + r * kpad + k)));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, w0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, w1));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) finish_row(g, pp, m + r, acc[r][0], acc[r][1]);
}

using WideTileFn = void (*)(const GemmArgs&, const PanelParams&, const int16_t*, int64_t,
                            const int16_t*, int64_t);
constexpr WideTileFn kWideTiles[kRows] = {&wide_tile<1>, &wide_tile<2>, &wide_tile<3>,
                                          &wide_tile<4>, &wide_tile<5>, &wide_tile<6>};

void wide_block(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  thread_local AlignedScratch<int16_t> a_scratch, w_scratch;  // one pair per thread
  const int64_t kpad = g.B.k_groups * kKGroup;
  const int64_t mc = std::max<int64_t>(kRows, kRowBlockBytes / (2 * kpad) / kRows * kRows);
  int16_t* a16 = a_scratch.get(std::min(mc, m1 - m0) * kpad);
  int16_t* w16 = w_scratch.get(kpad * kPanel);
  PanelParams pp;
  for (int64_t mb = m0; mb < m1; mb += mc) {
    const int64_t me = std::min(m1, mb + mc);
    widen_rows(g, mb, me, kpad, a16);
    for (int64_t p = p0; p < p1; ++p) {
      load_panel_params(g, p, &pp);
      widen_panel(g.B.panel(p), g.B.k_groups, w16);
      for (int64_t m = mb; m < me; m += kRows)
        kWideTiles[std::min<int64_t>(kRows, me - m) - 1](g, pp, a16 + (m - mb) * kpad, kpad,
                                                         w16, m);
    }
  }
}

}  // namespace

int tile_rows_avx2(int64_t) { return kRows; }

void gemm_block_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  if (m1 - m0 < kAvx2WidenRows)
    direct_block(g, m0, m1, p0, p1);
  else
    wide_block(g, m0, m1, p0, p1);
}

}  // namespace int8kit::detail
