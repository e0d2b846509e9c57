// Validation, the split of the output over threads, and the call into the chosen path.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "arg_checks.h"
#include "kernels.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

// Below this many multiply-adds per thread, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerThread = int64_t(1) << 20;
// ... unless the weight is big: a few rows (GEMV) then wait on streaming it from L3, and
// threads that each stream a part go faster (2 threads, 1x768^2 QuantLinear after other
// work: 29 -> 21 us). A weight this small per thread stays 1 thread: it is likely in L2.
constexpr int64_t kMinWeightBytesPerThread = int64_t(1) << 18;
// Columns are handed out in units of the widest micro-kernel (3 panels = 48 columns).
constexpr int64_t kPanelsPerUnit = 3;
constexpr int64_t kRowsPerUnit = 8;
// Enough tiles that a late thread costs little, few enough that claiming them is free.
constexpr int64_t kTilesPerThread = 16;
// Column tiles are fewer and wider: a thread then streams long runs of adjacent panels,
// which its prefetches follow (2 threads, 16 -> 4 per thread: 128x768x3072 1.08-1.14x,
// 64x768x3072 1.17x, 8x768x3072 1.0-1.2x).
constexpr int64_t kColumnTilesPerThread = 4;

void validate(const GemmArgs& g) {
  if (g.M < 0) throw std::invalid_argument("M must be >= 0");
  if (g.B.weights == nullptr) throw std::invalid_argument("packed weight is empty");
  if (g.M == 0) return;
  if (g.A == nullptr) throw std::invalid_argument("a is null");
  if (g.lda < g.B.k) throw std::invalid_argument("a row stride must be >= K");
  if (g.C == nullptr) throw std::invalid_argument("output is null");
  if (g.ldc < g.B.n) throw std::invalid_argument("output row stride must be >= N");
  if (g.a_zp == nullptr) throw std::invalid_argument("a_zero_point is null");
  const int64_t nzp = g.a_zp_stride == 0 ? 1 : g.M;
  for (int64_t i = 0; i < nzp; ++i) {
    const int32_t z = g.a_zp[i * g.a_zp_stride];
    if (z < 0 || z > 255)
      throw std::invalid_argument("a_zero_point must be in [0, 255] for uint8 activations, got " +
                                  std::to_string(z));
  }
  if (g.out != OutKind::s32) {
    if (g.a_scale == nullptr) throw std::invalid_argument("a_scale is null");
    if (g.w_scale == nullptr) throw std::invalid_argument("w_scale is null");
    detail::check_scales(g.a_scale, g.a_scale_stride == 0 ? 1 : g.M, "a_scale");
    detail::check_scales(g.w_scale, g.w_scale_stride == 0 ? 1 : g.B.n, "w_scale");
    if (g.bias != nullptr) detail::check_finite(g.bias, g.B.n, "bias");
  }
  if (g.out == OutKind::u8 && !(std::isfinite(g.out_inv_scale) && g.out_inv_scale > 0.f))
    throw std::invalid_argument("output scale must be finite and > 0");
  if (g.out == OutKind::u8 && (g.out_zp < 0 || g.out_zp > 255))
    throw std::invalid_argument("output zero point must be in [0, 255]");
}

}  // namespace

void gemm_with_isa(const GemmArgs& g, int nthreads, Isa isa) {
  validate(g);
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("kernel path '") + isa_name(isa) +
                             "' cannot run on this CPU");
  if (g.M == 0) return;
  const detail::KernelTable& kt = detail::kernels_for(isa);
  const detail::GemmBlockFn block = kt.gemm_block;

  // The output is cut into tiles (column units x row blocks) that each thread takes from
  // its own share first, then from the others' (parallel_tiles), so a thread that starts
  // late (a sleeping core, another runtime's spinning threads) just takes fewer tiles
  // instead of holding everyone up. Each tile is computed whole by one thread, so the
  // result does not depend on who took what.
  const int64_t n_units = (g.B.n_panels + kPanelsPerUnit - 1) / kPanelsPerUnit;
  const int64_t m_units = (g.M + kRowsPerUnit - 1) / kRowsPerUnit;
  const int64_t macs = g.M * g.B.n * g.B.k;
  const int64_t by_work =
      std::max(macs / kMinMacsPerThread, g.B.n * g.B.k / kMinWeightBytesPerThread);
  const int64_t nt =
      std::max<int64_t>(1, std::min<int64_t>({nthreads, by_work, n_units * m_units}));
  if (nt == 1) {
    block(g, 0, g.M, 0, g.B.n_panels);
    return;
  }
  // About kTilesPerThread tiles each (kColumnTilesPerThread of columns). A weight that
  // fits in L2 is cheap to re-read: then, with rows enough, tiles are row ranges over all
  // columns, so each thread keeps its own A rows hot (2 threads, 1024x384x1536: 60% ->
  // 89% of peak; 512x1024^2: 86% -> 97%).
  // Otherwise columns first (a thread then streams only its own part of the weight), rows
  // only when there are too few column units; but once A is taller than the kernel's own
  // row blocks (~1 MB), tiles are also cut at those, or every column tile would stream all
  // of A from memory again (2 threads, 2048^3: 90% -> 94% of peak; 1024x2048^2: 90 -> 95%).
  const int64_t want = nt * kTilesPerThread, want_cols = nt * kColumnTilesPerThread;
  const bool fits = detail::weight_fits_l2(g.B);
  const bool rows_first = fits && m_units >= want;
  const int64_t block_units =
      std::max<int64_t>(1, detail::kLargeRowBlockBytes / g.B.k / kRowsPerUnit);
  const int64_t row_blocks = fits ? 1 : (m_units + block_units - 1) / block_units;
  const int64_t n_tiles =
      rows_first ? 1 : std::min(n_units, std::max<int64_t>(1, want_cols / row_blocks));
  // Column tiles are also cut into row tiles, for balance, when their part of the weight
  // stays in L2 for the next row tile (as weight_fits_l2); otherwise each row tile would
  // stream it from memory again.
  const int64_t col_tile_bytes =
      (n_units + n_tiles - 1) / n_tiles * kPanelsPerUnit * g.B.panel_bytes();
  const int64_t want_rows = col_tile_bytes <= detail::kL2WeightBytes ? want : want_cols;
  int64_t m_tiles = row_blocks > 1 ? std::min(m_units, row_blocks)
                                    : std::min(m_units, std::max<int64_t>(1, want_rows / n_tiles));
  // No shorter tiles than the kernel wants (AVX2, 2 threads, 32x768^2: 8-row tiles took its
  // slower direct path).
  if (kt.min_tile_rows > 0)
    m_tiles = std::min(m_tiles, std::max<int64_t>(1, g.M / kt.min_tile_rows));
  // Row tiles over all columns (rows_first) start at multiples of the micro-kernel's rows
  // (6 for AVX-512's 6x4 tiles; a remainder would run as a narrow, slower micro-tile in
  // every tile) and are spread evenly, their sizes differing by one such unit at most (2
  // threads, 1024^3: 92% -> 95% of peak; 256x1024^2: 78% -> 96%).
  const int64_t unit = rows_first && kt.tile_rows ? kt.tile_rows(g.B.n_panels) : kRowsPerUnit;
  const int64_t row_units = (g.M + unit - 1) / unit;
  const int64_t rows_per_tile = (m_units + m_tiles - 1) / m_tiles * kRowsPerUnit;
  const int64_t tiles_n = n_tiles;  // spread evenly, sizes differing by one unit at most
  const int64_t tiles_m =
      rows_first ? std::min(row_units, m_tiles) : (g.M + rows_per_tile - 1) / rows_per_tile;
  auto row_range = [&](int64_t um, int64_t* m0, int64_t* m1) {
    if (rows_first) {
      *m0 = std::min(g.M, unit * (um * row_units / tiles_m));
      *m1 = std::min(g.M, unit * ((um + 1) * row_units / tiles_m));
    } else {
      *m0 = um * rows_per_tile;
      *m1 = std::min(*m0 + rows_per_tile, g.M);
    }
  };
  detail::parallel_tiles(static_cast<int>(nt), tiles_n * tiles_m, [&](int, int64_t t) {
    // Neighbouring tiles go to one thread: the row tiles of one column tile, so its part
    // of the weight stays in L2; but when the weight is cut at the kernel's row blocks
    // (it cannot stay in L2), the column tiles of one row block, so that block of A does
    // (2 threads, 2048x1024x4096: 0.97x -> 1.00x of the shared-counter order).
    const bool by_rows = row_blocks > 1;
    const int64_t un = by_rows ? t % tiles_n : t / tiles_m;
    const int64_t um = by_rows ? t / tiles_n : t % tiles_m;
    const int64_t p0 = un * n_units / tiles_n * kPanelsPerUnit;        // adjacent: B stays
    const int64_t p1 = std::min((un + 1) * n_units / tiles_n * kPanelsPerUnit, g.B.n_panels);
    int64_t m0, m1;
    row_range(um, &m0, &m1);
    if (m0 < m1) block(g, m0, m1, p0, p1);
  });
}

void gemm(const GemmArgs& g, int nthreads) { gemm_with_isa(g, nthreads, active_isa()); }

}  // namespace int8kit
