// AVX-VNNI GEMM: vpdpbusd on ymm registers (VEX encoding), for CPUs that have VNNI but
// not AVX-512 (Intel's client cores since Alder Lake, some Atom and Xeon E parts).
//
// vpdpbusd multiplies unsigned activation bytes by signed weight bytes and adds groups of
// four into int32 lanes without saturating, so the packed layout is used as it is: one
// 64-byte k-group of a panel is two ymm of 8 columns each, already in column order.
// Micro-kernel: up to 6 rows x one 16-column panel = 12 accumulators, plus 2 weight
// vectors and 1 broadcast: 15 of the 16 ymm registers. The epilogue is the AVX2 path's.
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

// acc += dot4(a_u8, w_s8) per int32 lane. "{vex}" pins the AVX-VNNI encoding: the EVEX
// form of the same mnemonic needs AVX-512 and would fault on the CPUs this path is for.
inline void dpbusd(__m256i& acc, __m256i a, __m256i w) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w));
}

// The 4 activation bytes of k-group grp of a row, in every lane, reading no byte past k.
inline __m256i broadcast_group(const uint8_t* row, int64_t grp, int64_t k) {
  const int64_t k0 = grp * kKGroup;
  int32_t v = 0;
  std::memcpy(&v, row + k0, static_cast<size_t>(std::min<int64_t>(kKGroup, k - k0)));
  return _mm256_set1_epi32(v);
}

// acc[r] += the products of k-group grp of each row with its weights at w (two ymm of 8
// columns). Each row's broadcast is used at once, so only one is live: 12 accumulators +
// 2 weights + 1 broadcast fit the 16 registers.
template <int MR, bool PARTIAL>
inline void group(__m256i (&acc)[MR][2], const uint8_t* const (&a)[MR], int64_t grp,
                  int64_t k, const int8_t* w) {
  const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    int32_t v;
    if constexpr (!PARTIAL) std::memcpy(&v, a[r] + grp * kKGroup, sizeof(v));
    const __m256i av = PARTIAL ? broadcast_group(a[r], grp, k) : _mm256_set1_epi32(v);
    dpbusd(acc[r][0], av, w0);
    dpbusd(acc[r][1], av, w1);
  }
}

// MR rows starting at m, one panel, full K, epilogue included. Every loop over rows is
// unrolled with constant indices, so GCC keeps the accumulators in registers.
template <int MR>
void tile(const GemmArgs& g, const PanelParams& pp, const int8_t* panel, int64_t m) {
  const int64_t full_groups = g.B.k / kKGroup;
  const uint8_t* a[MR];
  __m256i acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    a[r] = g.A + (m + r) * g.lda;
    acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  }
  for (int64_t grp = 0; grp < full_groups; ++grp)
    group<MR, false>(acc, a, grp, g.B.k, panel + grp * (kPanel * kKGroup));
  if (full_groups < g.B.k_groups)  // K % 4 != 0: A rows end at column K-1
    group<MR, true>(acc, a, full_groups, g.B.k, panel + full_groups * (kPanel * kKGroup));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) finish_row(g, pp, m + r, acc[r][0], acc[r][1]);
}

template <int... MRs>
constexpr auto make_tiles(std::integer_sequence<int, MRs...>) {
  using Fn = void (*)(const GemmArgs&, const PanelParams&, const int8_t*, int64_t);
  return std::array<Fn, sizeof...(MRs)>{&tile<MRs + 1>...};
}

const auto kTiles = make_tiles(std::make_integer_sequence<int, kMaxRows>{});

}  // namespace

void gemm_block_avxvnni(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  // Row blocks keep the A rows being reused (MC x K) within about half of L2.
  const int64_t mc = std::max<int64_t>(kMaxRows, ((int64_t(1) << 20) / g.B.k) / kMaxRows * kMaxRows);
  PanelParams pp;
  for (int64_t mb = m0; mb < m1; mb += mc) {
    const int64_t me = std::min(m1, mb + mc);
    for (int64_t p = p0; p < p1; ++p) {
      load_panel_params(g, p, &pp);
      const int8_t* panel = g.B.panel(p);
      for (int64_t m = mb; m < me; m += kMaxRows)
        kTiles[std::min<int64_t>(kMaxRows, me - m) - 1](g, pp, panel, m);
    }
  }
}

}  // namespace int8kit::detail
