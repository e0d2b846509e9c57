// AVX-VNNI GEMM: vpdpbusd on ymm registers (VEX encoding), for CPUs that have VNNI but
// not AVX-512 (Intel's client cores since Alder Lake, some Atom and Xeon E parts).
//
// vpdpbusd multiplies unsigned activation bytes by signed weight bytes and adds groups of
// four into int32 lanes without saturating, so the packed layout is used as it is: one
// 64-byte k-group of a panel is two ymm of 8 columns each, already in column order.
// Micro-kernel: MR rows x NP 16-column panels, 2 * MR * NP <= 12 accumulators, plus 2
// weight vectors and 1 broadcast: 15 of the 16 ymm registers. Up to 6 rows take one panel;
// fewer rows take more panels, so that there are still 12 independent vpdpbusd chains:
// each waits on its own last result (5 cycles), and GEMV on one panel at a time (2 chains)
// ran 1.6-1.7x slower (1 and 2 rows of 768^2). The epilogue is the AVX2 path's.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "epilogue_avx2.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

constexpr int kMaxRows = 6;
constexpr int kMaxAcc = 12;  // accumulators: 2 per row and panel

// Panels per tile for a tile of mr rows: as many as keep 12 accumulators.
constexpr int panels_for_rows(int mr) { return std::max(1, kMaxAcc / (2 * mr)); }

// acc += dot4(a_u8, w_s8) per int32 lane. "{vex}" pins the AVX-VNNI encoding: the EVEX
// form of the same mnemonic needs AVX-512 and would fault on the CPUs this path is for.
inline void dpbusd(__m256i& acc, __m256i a, __m256i w) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w));
}

// The 4 activation bytes of k-group grp of a row, in every lane. PARTIAL (the last group
// when K % 4 != 0) reads no byte past k.
template <bool PARTIAL>
__attribute__((always_inline)) inline __m256i row_group(const uint8_t* row, int64_t grp,
                                                        int64_t k) {
  const int64_t k0 = grp * kKGroup;
  const size_t bytes = PARTIAL ? static_cast<size_t>(std::min<int64_t>(kKGroup, k - k0)) : 4;
  int32_t v = 0;
  std::memcpy(&v, row + k0, bytes);
  return _mm256_set1_epi32(v);
}

// acc[r * NP + j] += the products of k-group grp of each row with the weights of panel j,
// at w[j] (two ymm of 8 columns). Registers: 12 accumulators, the 2 weights of one panel,
// and the broadcasts. One or two rows keep theirs across the panels; more rows (then at
// most 2 panels) broadcast again per panel (a load, vpbroadcastd), so that one is live.
// Inlined: a call would take acc's address, and GCC then keeps it in memory.
template <int MR, int NP, bool PARTIAL>
__attribute__((always_inline)) inline void group(__m256i (&acc)[MR * NP][2],
                                                 const uint8_t* const (&a)[MR], int64_t grp,
                                                 int64_t k, const int8_t* const (&w)[NP]) {
  constexpr bool keep = MR <= 2;
  __m256i av[keep ? MR : 1];
  if constexpr (keep)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) av[r] = row_group<PARTIAL>(a[r], grp, k);
  const int64_t off = grp * (kPanel * kKGroup);
#pragma GCC unroll 8
  for (int j = 0; j < NP; ++j) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + off));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + off + 32));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256i ar = keep ? av[r] : row_group<PARTIAL>(a[r], grp, k);
      dpbusd(acc[r * NP + j][0], ar, w0);
      dpbusd(acc[r * NP + j][1], ar, w1);
    }
  }
}

// MR rows starting at m, NP panels from p, full K, epilogue included. Every loop over rows
// and panels is unrolled with constant indices, so GCC keeps the accumulators in registers.
template <int MR, int NP>
void tile(const GemmArgs& g, const PanelParams* pp, int64_t p, int64_t m) {
  const int64_t full_groups = g.B.k / kKGroup;
  const uint8_t* a[MR];
  const int8_t* w[NP];
  __m256i acc[MR * NP][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) a[r] = g.A + (m + r) * g.lda;
#pragma GCC unroll 8
  for (int j = 0; j < NP; ++j) w[j] = g.B.panel(p + j);
#pragma GCC unroll 16
  for (int i = 0; i < MR * NP; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t grp = 0; grp < full_groups; ++grp)
    group<MR, NP, false>(acc, a, grp, g.B.k, w);
  if (full_groups < g.B.k_groups)  // K % 4 != 0: A rows end at column K-1
    group<MR, NP, true>(acc, a, full_groups, g.B.k, w);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j)
      finish_row(g, pp[j], m + r, acc[r * NP + j][0], acc[r * NP + j][1]);
}

using TileFn = void (*)(const GemmArgs&, const PanelParams*, int64_t, int64_t);

// tile<MR, NP>, or null where 2 * MR * NP would pass the 12 accumulators (never called,
// and not compiled).
template <int MR, int NP>
constexpr TileFn tile_or_null() {
  if constexpr (2 * MR * NP <= kMaxAcc)
    return &tile<MR, NP>;
  else
    return nullptr;
}

template <int MR, int... NPs>
constexpr std::array<TileFn, kMaxAcc / 2> tiles_of_rows(std::integer_sequence<int, NPs...>) {
  return {tile_or_null<MR, NPs + 1>()...};
}

template <int... MRs>
constexpr auto make_tiles(std::integer_sequence<int, MRs...>) {
  return std::array<std::array<TileFn, kMaxAcc / 2>, sizeof...(MRs)>{
      tiles_of_rows<MRs + 1>(std::make_integer_sequence<int, kMaxAcc / 2>{})...};
}

const auto kTiles = make_tiles(std::make_integer_sequence<int, kMaxRows>{});  // [MR-1][NP-1]

}  // namespace

void gemm_block_avxvnni(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  // Row blocks keep the A rows being reused (MC x K) within about half of L2.
  const int64_t mc =
      std::max<int64_t>(kMaxRows, ((int64_t(1) << 20) / g.B.k) / kMaxRows * kMaxRows);
  PanelParams pp[kMaxAcc / 2];
  for (int64_t mb = m0; mb < m1; mb += mc) {
    const int64_t me = std::min(m1, mb + mc);
    // Panels per step: what the block's widest tile takes (a block of 1 to 5 rows is one
    // tile, with several panels).
    const int widest = panels_for_rows(static_cast<int>(std::min<int64_t>(kMaxRows, me - mb)));
    for (int64_t p = p0; p < p1; p += widest) {
      const int np = static_cast<int>(std::min<int64_t>(widest, p1 - p));
      for (int j = 0; j < np; ++j) load_panel_params(g, p + j, &pp[j]);
      for (int64_t m = mb; m < me; m += kMaxRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, me - m));
        const int fit = std::min(np, panels_for_rows(mr));
        for (int q = 0; q < np; q += fit) {
          const int nq = std::min(fit, np - q);
          kTiles[mr - 1][nq - 1](g, pp + q, p + q, m);
        }
      }
    }
  }
}

}  // namespace int8kit::detail
