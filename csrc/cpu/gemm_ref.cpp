// Scalar GEMM: the oracle every other path is checked against. Plain loops over the
// packed layout, exact int64 accumulation.
#include <cstring>

#include "epilogue_ref.h"
#include "kernels.h"

namespace int8kit::detail {

void gemm_block_scalar(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const PackedView& b = g.B;
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* a = g.A + m * g.lda;
    const int64_t zp = g.a_zp[m * g.a_zp_stride];
    for (int64_t p = p0; p < p1; ++p) {
      int64_t acc[kPanel] = {0};
      const int8_t* panel = b.panel(p);
      for (int64_t grp = 0; grp < b.k_groups; ++grp) {
        const int8_t* w = panel + grp * (kPanel * kKGroup);
        for (int j = 0; j < kKGroup; ++j) {
          const int64_t k = grp * kKGroup + j;
          if (k >= b.k) break;
          const int64_t av = static_cast<int64_t>(a[k]) - zp;
          for (int c = 0; c < kPanel; ++c) acc[c] += av * w[c * kKGroup + j];
        }
      }
      const int64_t n_end = (p + 1) * kPanel < b.n ? (p + 1) * kPanel : b.n;
      for (int64_t n = p * kPanel; n < n_end; ++n)
        store_one(g, m, n, static_cast<int32_t>(acc[n - p * kPanel]));
    }
  }
}

}  // namespace int8kit::detail
