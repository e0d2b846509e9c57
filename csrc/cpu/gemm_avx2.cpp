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

#include "epilogue_ref.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

constexpr int kRowsPerTile = 2;

// Epilogue inputs for one panel, copied out so that a partial last panel never reads
// w_scale or bias past column N-1 (colsum itself is padded to the full panel).
struct PanelParams {
  alignas(32) int32_t colsum[kPanel];
  alignas(32) float w_scale[kPanel];
  alignas(32) float bias[kPanel];
  int64_t n0 = 0;  // first output column of the panel
  int ncols = 0;   // valid columns in the panel (1..16)
};

void load_panel_params(const GemmArgs& g, int64_t p, PanelParams* pp) {
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

// Zero-point correction, epilogue and store for one output row of one panel.
void finish_row(const GemmArgs& g, const PanelParams& pp, int64_t m, __m256i raw0,
                __m256i raw1) {
  // raw - zp * colsum, wrapping modulo 2^32 like correct_acc().
  const __m256i zp = _mm256_set1_epi32(g.a_zp[m * g.a_zp_stride]);
  const __m256i* cs = reinterpret_cast<const __m256i*>(pp.colsum);
  const __m256i acc0 = _mm256_sub_epi32(raw0, _mm256_mullo_epi32(zp, _mm256_load_si256(cs)));
  const __m256i acc1 = _mm256_sub_epi32(raw1, _mm256_mullo_epi32(zp, _mm256_load_si256(cs + 1)));
  const int64_t off = m * g.ldc + pp.n0;

  if (g.out == OutKind::s32) {
    store16(static_cast<int32_t*>(g.C) + off, pp.ncols, acc0, acc1, [](int32_t* d, __m256i v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), v);
    });
    return;
  }

  // y = fma(float(acc), a_scale * w_scale, bias): the scale product is rounded first,
  // exactly as dequant_one() does. A missing bias is +0, as there.
  const __m256 as = _mm256_set1_ps(g.a_scale[m * g.a_scale_stride]);
  const __m256 s0 = _mm256_mul_ps(as, _mm256_load_ps(pp.w_scale));
  const __m256 s1 = _mm256_mul_ps(as, _mm256_load_ps(pp.w_scale + 8));
  __m256 y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0), s0, _mm256_load_ps(pp.bias));
  __m256 y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), s1, _mm256_load_ps(pp.bias + 8));
  if (g.relu) {
    // maxps returns its second operand unless the first is greater: -0 and NaN give +0.
    y0 = _mm256_max_ps(y0, _mm256_setzero_ps());
    y1 = _mm256_max_ps(y1, _mm256_setzero_ps());
  }

  if (g.out == OutKind::f32) {
    store16(static_cast<float*>(g.C) + off, pp.ncols, y0, y1,
            [](float* d, __m256 v) { _mm256_storeu_ps(d, v); });
    return;
  }

  // u8: as requant_one(): fma(y, 1/out_scale, zp), clamp to [0, 255] with t first (NaN ->
  // 0), then round half to even (cvtps2dq under the default rounding mode).
  const __m256 inv = _mm256_set1_ps(g.out_inv_scale);
  const __m256 ozp = _mm256_set1_ps(static_cast<float>(g.out_zp));
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.f);
  __m256i q[2];
  const __m256 y[2] = {y0, y1};
  for (int h = 0; h < 2; ++h) {
    const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(y[h], inv, ozp), lo), hi);
    q[h] = _mm256_cvtps_epi32(t);
  }
  // Values are already in [0, 255], so the saturating packs only narrow. packs works per
  // 128-bit lane; the permute puts the 16 int16 back in column order.
  const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
  const __m128i bytes =
      _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
  uint8_t* dst = static_cast<uint8_t*>(g.C) + off;
  if (pp.ncols == kPanel) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), bytes);
  } else {
    alignas(16) uint8_t tmp[kPanel];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), bytes);
    std::memcpy(dst, tmp, pp.ncols);
  }
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
