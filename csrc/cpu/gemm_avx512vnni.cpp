// AVX-512 VNNI GEMM: a register-blocked micro-kernel of MR rows x NP panels (16 columns
// each) built on vpdpbusd, which multiplies unsigned activation bytes by signed weight
// bytes and adds groups of four into int32 lanes without saturating.
//
// Each k-group: NP weight vectors are loaded once and reused by MR broadcast activation
// dwords, so the 8x48 tile issues 24 vpdpbusd per 3 loads + 8 broadcasts. Accumulators
// stay in registers for the whole K; the epilogue is applied straight from them.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "epilogue_avx512.h"
#include "k_group_avx512.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

constexpr int kMaxRows = 8;
constexpr int kMaxPanels = 6;

// acc += dot4(a_u8, w_s8) per int32 lane. Written as inline asm because GCC 12 wraps the
// intrinsic's tied operand in register copies and stack spills (measured: ~40% of peak).
inline void dpbusd(__m512i& acc, __m512i a, __m512i w) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
}

struct Tile {
  const GemmArgs& g;
  const GatheredA* gather;  // null: A rows are g.lda apart
  int64_t m;                // first row
  int64_t p;                // first panel
  bool first = false;       // first of its panel group's tiles in the row block
  const int8_t* pf_next = nullptr;  // a panel of the next panel group, to prefetch into L2
};

// Corrects the MR x NP accumulators of a tile (acc[i * NP + j]: row m0 + i, columns
// n0 + 16j ..) by a_zp * colsum where the zero point is per row (see init), applies the
// epilogue and stores the valid columns. The column parameters (colsum, weight scales,
// bias) are loaded once per tile, and the scale product once when the activation scale is
// per tensor; the arithmetic per element is epilogue_ref.h's. uint8 rows go out 64 bytes
// per store (requant16_s32 + pack64_u8: 6 vector ops per 16 outputs where the clamp at 0
// and a narrowing store per strip took 9; ResNet-18's 64@56 3x3 conv spent 11% of its time
// here). The output kind is fixed at compile time, chosen once per tile. Kept out of line:
// inlined into the tile kernels, GCC spills the accumulators in the main loop.
template <int MR, int NP, OutKind OUT, bool RELU>
__attribute__((noinline)) void store_tile(const GemmArgs& g, int64_t m0, int64_t n0,
                                          const __m512i* acc) {
  constexpr bool fp = OUT != OutKind::s32;
  __mmask16 mask[NP];
  __m512i colsum[NP];
  __m512 ws[NP], bias[NP], s[NP];
  const __m512 as0 = _mm512_set1_ps(g.a_scale ? g.a_scale[0] : 0.f);
#pragma GCC unroll 8
  for (int j = 0; j < NP; ++j) {
    const int64_t valid = g.B.n - (n0 + 16 * j);
    mask[j] = valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? 0 : __mmask16((1u << valid) - 1);
    colsum[j] = _mm512_loadu_si512(g.B.colsum + n0 + 16 * j);  // padded to 16, always safe
    ws[j] = !fp ? _mm512_setzero_ps()
            : g.w_scale_stride == 0 ? _mm512_set1_ps(g.w_scale[0])
                                    : _mm512_maskz_loadu_ps(mask[j], g.w_scale + n0 + 16 * j);
    bias[j] = fp ? epi_bias16(g, n0 + 16 * j, mask[j]) : _mm512_setzero_ps();
    s[j] = fp ? _mm512_mul_ps(as0, ws[j]) : _mm512_setzero_ps();
  }
  const bool row_zp = g.a_zp_stride != 0, row_scale = fp && g.a_scale_stride != 0;
  const int64_t valid_bytes = std::min<int64_t>(g.B.n - n0, 16 * NP);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const int64_t m = m0 + i;
    const __m512i zp_m = _mm512_set1_epi32(g.a_zp[m * g.a_zp_stride]);
    const __m512 as_m = _mm512_set1_ps(fp ? g.a_scale[m * g.a_scale_stride] : 0.f);
    __m512i q[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) {
      const __m512i corrected =
          row_zp ? _mm512_sub_epi32(acc[i * NP + j], _mm512_mullo_epi32(zp_m, colsum[j]))
                 : acc[i * NP + j];
      const int64_t off = m * g.ldc + n0 + 16 * j;
      if constexpr (OUT == OutKind::u8) {
        __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(corrected),
                                   row_scale ? _mm512_mul_ps(as_m, ws[j]) : s[j], bias[j]);
        if constexpr (RELU) y = _mm512_max_ps(y, _mm512_setzero_ps());
        q[j] = requant16_s32(y, _mm512_set1_ps(g.out_inv_scale),
                             _mm512_set1_ps(static_cast<float>(g.out_zp)));
      } else {
        epi_store16_t<OUT, RELU>(g, off, mask[j], corrected,
                                 row_scale ? _mm512_mul_ps(as_m, ws[j]) : s[j], bias[j]);
      }
    }
    if constexpr (OUT == OutKind::u8) {
      uint8_t* y = static_cast<uint8_t*>(g.C) + m * g.ldc + n0;
      const __m512i z = _mm512_setzero_si512();
#pragma GCC unroll 2
      for (int j = 0; j < NP; j += 4) {
        const int64_t left = valid_bytes - 16 * j;
        if (left <= 0) break;
        const __mmask64 bytes = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
        _mm512_mask_storeu_epi8(y + 16 * j, bytes,
                                pack64_u8(q[j], j + 1 < NP ? q[j + 1] : z,
                                          j + 2 < NP ? q[j + 2] : z, j + 3 < NP ? q[j + 3] : z));
      }
    }
  }
}

// acc[i][j] += the products of `groups` k-groups: row i's 4 bytes of group grp at
// row[i] + 4*grp, panel j's weights at b + j*stride + 64*grp. Every loop but the k-group
// loop is unrolled with constant indices, so GCC keeps acc and row in registers.
// The first tile of a panel group reads its weights from L3 or memory (the tiles after it
// find them in L1/L2). PF prefetches them kPrefetchGroups k-groups (2 KB per panel) ahead:
// with the weight cold after other work, 128x768x3072 and 128x3072x768 run 5% faster
// (A/B in the Linear bench's own interleaved harness) and ResNet-18's 3x3 convs 2-3% at
// batch 1; hot loops are unchanged. Prefetch never faults, so running past the panel's
// end is harmless.
constexpr int64_t kPrefetchGroups = 32;

// The tiles after the first find their weights in cache and have load slots to spare:
// each of the first few brings one panel of the next panel group into L2 (Prefetch::next,
// one line per k-group), so that group's first tile does not wait on L3 either (A/B, the
// weight evicted before each call, 1 thread: 32x768^2 1.09x, 64x4096^2 1.06x, ResNet-18's
// 512@7 conv 1.05-1.09x; the rest within 2%).
enum class Prefetch { none, own, next };

template <int MR, int NP, Prefetch PF = Prefetch::none>
inline void accumulate(__m512i (&acc)[MR][NP], const uint8_t* const (&row)[MR],
                       const int8_t* b, int64_t stride, int64_t groups,
                       const int8_t* next = nullptr) {
  for (int64_t grp = 0; grp < groups; ++grp) {
    if constexpr (PF == Prefetch::own) {
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(b + j * stride + (grp + kPrefetchGroups) * 64),
                     _MM_HINT_T0);
    } else if constexpr (PF == Prefetch::next) {
      _mm_prefetch(reinterpret_cast<const char*>(next + grp * 64), _MM_HINT_T1);
    }
    __m512i w[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) w[j] = _mm512_loadu_si512(b + j * stride + grp * 64);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t v;
      std::memcpy(&v, row[i] + grp * kKGroup, sizeof(v));
      const __m512i av = _mm512_set1_epi32(v);
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) dpbusd(acc[i][j], av, w[j]);
    }
  }
}

// Accumulators start at -a_zp * colsum when the zero point is per tensor, so store_tile
// has no correction to make (int32 wraps alike either way); at 0 when it is per row.
template <int MR, int NP>
inline void init(__m512i (&acc)[MR][NP], const GemmArgs& g, int64_t p) {
  const __m512i zp = _mm512_set1_epi32(g.a_zp_stride == 0 ? g.a_zp[0] : 0);
#pragma GCC unroll 8
  for (int j = 0; j < NP; ++j) {
    const __m512i start = _mm512_sub_epi32(
        _mm512_setzero_si512(),
        _mm512_mullo_epi32(zp, _mm512_loadu_si512(g.B.colsum + (p + j) * kPanel)));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[i][j] = start;
  }
}

template <int MR, int NP>
inline void store(const GemmArgs& g, int64_t m, int64_t p, const __m512i (&acc)[MR][NP]) {
  // A copy, not &acc[0][0]: taking acc's address keeps it in memory in the main loop.
  __m512i a[MR * NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) a[i * NP + j] = acc[i][j];
  const int64_t n0 = p * kPanel;
  switch (g.out) {
    case OutKind::s32: return store_tile<MR, NP, OutKind::s32, false>(g, m, n0, a);
    case OutKind::f32:
      return g.relu ? store_tile<MR, NP, OutKind::f32, true>(g, m, n0, a)
                    : store_tile<MR, NP, OutKind::f32, false>(g, m, n0, a);
    case OutKind::u8:
      return g.relu ? store_tile<MR, NP, OutKind::u8, true>(g, m, n0, a)
                    : store_tile<MR, NP, OutKind::u8, false>(g, m, n0, a);
  }
}

// One MR x (NP*16) output tile over the full K.
template <int MR, int NP>
void tile_kernel(const Tile& t) {
  const GemmArgs& g = t.g;
  const int64_t full_groups = g.B.k / kKGroup;
  const int64_t stride = g.B.panel_bytes();
  const int8_t* b = g.B.panel(t.p);
  __m512i acc[MR][NP];
  init(acc, g, t.p);
  const uint8_t* row[MR];
  if (t.gather) {  // implicit GEMM: K is runs of seg_len bytes, each at its own offset
    const GatheredA& ga = *t.gather;
    const int64_t groups = ga.seg_len / kKGroup;
    for (int64_t s = 0; s < ga.n_seg; ++s) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) row[i] = ga.rows[t.m + i] + ga.seg_off[s];
      if (t.first)
        accumulate<MR, NP, Prefetch::own>(acc, row, b + s * groups * 64, stride, groups);
      else if (t.pf_next)
        accumulate<MR, NP, Prefetch::next>(acc, row, b + s * groups * 64, stride, groups,
                                           t.pf_next + s * groups * 64);
      else
        accumulate(acc, row, b + s * groups * 64, stride, groups);
    }
    store(g, t.m, t.p, acc);
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) row[i] = g.A + (t.m + i) * g.lda;
  if (t.first)
    accumulate<MR, NP, Prefetch::own>(acc, row, b, stride, full_groups);
  else if (t.pf_next)
    accumulate<MR, NP, Prefetch::next>(acc, row, b, stride, full_groups, t.pf_next);
  else
    accumulate(acc, row, b, stride, full_groups);
  if (full_groups < g.B.k_groups) {  // K % 4 != 0: one partial group
    __m512i w[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) w[j] = _mm512_loadu_si512(b + j * stride + full_groups * 64);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = broadcast_group(row[i], full_groups, g.B.k);
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) dpbusd(acc[i][j], av, w[j]);
    }
  }
  store(g, t.m, t.p, acc);
}

using TileFn = void (*)(const Tile&);

template <int MR, int... NPs>
constexpr auto row_of(std::integer_sequence<int, NPs...>) {
  return std::array<TileFn, sizeof...(NPs)>{&tile_kernel<MR, NPs + 1>...};
}

template <int... MRs>
constexpr auto make_table(std::integer_sequence<int, MRs...>) {
  return std::array<std::array<TileFn, kMaxPanels>, sizeof...(MRs)>{
      row_of<MRs + 1>(std::make_integer_sequence<int, kMaxPanels>{})...};
}

// kTiles[MR-1][NP-1]; only the shapes that fit in 32 zmm registers are ever called.
const auto kTiles = make_table(std::make_integer_sequence<int, kMaxRows>{});

// Widest panel step for a given row count: 8x3 (24 accumulators) for full tiles, wider for
// the few-row case so there are still enough independent accumulator chains.
inline int panels_for_rows(int mr) { return mr <= 2 ? 6 : (mr <= 4 ? 4 : 3); }

}  // namespace

namespace {

// A panel count that 4 divides but 3 does not (64, 128, 256 columns: conv's usual widths)
// runs as 6x4 tiles instead of 8x3 plus a narrow 8x1 or 8x2 tail.
bool six_by_four(int64_t panels) { return panels % 3 != 0 && panels % 4 == 0; }

void run_block(const GemmArgs& g, const GatheredA* gather, int64_t m0, int64_t m1, int64_t p0,
               int64_t p1) {
  // Row blocks of A, reused across every column of the block. A packed weight that fits
  // in L2 is cheap to stream again, so the rows are kept to ~64 KB (in L1 and L2 next to
  // B: 1024x384x1536 went 75% -> 83% of peak, 1024^3 91% -> 95%, A/B in one process);
  // a larger weight comes from memory, so blocks of ~1 MB of rows share each pass over it.
  const int64_t block_bytes = weight_fits_l2(g.B) ? kSmallRowBlockBytes : kLargeRowBlockBytes;
  const bool by4 = six_by_four(p1 - p0);
  const int rows = by4 ? 6 : kMaxRows;
  // Whole tiles per block: a block of 56 rows in 6-row tiles left a 2-row tile, at about
  // half the speed, in every block (r18_128@28, K = 1152).
  const int64_t mc = std::max<int64_t>(rows, (block_bytes / g.B.k) / rows * rows);
  auto fit = [by4](int mr) { return by4 && mr <= 6 ? 4 : panels_for_rows(mr); };
  for (int64_t mb = m0; mb < m1; mb += mc) {
    const int64_t me = std::min(m1, mb + mc);
    // A block of one row tile (M <= 8: GEMV, small-batch linear) streams its weight once,
    // sequentially, which the hardware prefetcher follows: its own prefetches only cost
    // issue slots (A/B, 1 thread: 1x768^2 hot 1.14x, weight evicted 1.02x; M = 8 +-1%).
    const bool one_tile = me - mb <= rows;
    const int widest = fit(static_cast<int>(std::min<int64_t>(me - mb, rows)));
    for (int64_t p = p0; p < p1; p += widest) {
      const int np = static_cast<int>(std::min<int64_t>(widest, p1 - p));
      const int64_t next_p = p + widest < p1 ? p + widest : (me < m1 ? p0 : p1);
      const int64_t next_np = std::min<int64_t>(widest, p1 - next_p);
      for (int64_t m = mb; m < me; m += rows) {
        const int mr = static_cast<int>(std::min<int64_t>(rows, me - m));
        const int np_fit = std::min(np, fit(mr));
        const int64_t r = (m - mb) / rows - 1;  // which panel of the next group to prefetch
        const int8_t* pf = r >= 0 && r < next_np ? g.B.panel(next_p + r) : nullptr;
        for (int64_t q = p; q < p + np; q += np_fit) {
          const int npq = static_cast<int>(std::min<int64_t>(np_fit, p + np - q));
          const bool first = m == mb && !one_tile;
          kTiles[mr - 1][npq - 1](Tile{g, gather, m, q, first, q == p ? pf : nullptr});
        }
      }
    }
  }
}

}  // namespace

int tile_rows_avx512vnni(int64_t panels) { return six_by_four(panels) ? 6 : kMaxRows; }
int tile_panels_avx512vnni(int64_t panels) { return six_by_four(panels) ? 4 : 3; }

void gemm_block_avx512vnni(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  run_block(g, nullptr, m0, m1, p0, p1);
}

void gemm_gather_block_avx512vnni(const GemmArgs& g, const GatheredA& a, int64_t m0, int64_t m1,
                                  int64_t p0, int64_t p1) {
  run_block(g, &a, m0, m1, p0, p1);
}

}  // namespace int8kit::detail
