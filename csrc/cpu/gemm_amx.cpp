// The GEMM block on Intel AMX (tdpbusd: uint8 x int8 tiles into int32 tiles, exact).
//
// The packed weight is already in AMX's B-tile layout: a panel holds 16 columns, and each
// k-group of 4 is one 64-byte row of 16 x 4 bytes, so 16 consecutive k-groups of a panel
// (64 values of K) form one 16 x 64-byte B tile, loaded with a stride of 64 bytes. A tiles
// are 16 rows x 64 bytes of K, read straight from A with its row stride.
//
// A block runs in 32 x 32 output steps (2 A tiles x 2 B tiles -> 4 int32 accumulator
// tiles), or 16-row / 16-column steps at the edges. The accumulators are stored to a small
// int32 buffer, where the last K % 64 values (fewer than 16 k-groups) are added with
// AVX-512 VNNI, the zero point is corrected with the column sums and the epilogue of
// epilogue_avx512.h runs, so every output is bit for bit the scalar oracle's. Rows left
// over (fewer than 16) and weights with K < 64 take the AVX-512 VNNI kernel.
#include <immintrin.h>

#include <cstdint>

#include "epilogue_avx512.h"
#include "k_group_avx512.h"
#include "kernels.h"

namespace int8kit::detail {
namespace {

constexpr int kTileRows = 16;
constexpr int kTileBytes = 64;                  // bytes of K per A-tile row
constexpr int kGroupsPerTile = kTileBytes / 4;  // k-groups per B tile
constexpr int64_t kRowsOuterMinRows = 256;  // see gemm_block_amx

// ldtilecfg's 64-byte operand, palette 1: every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: accumulators (C[i][j] = rows i, panel j), 4-5: A, 6-7: B.
struct TileScope {
  TileScope() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = kTileBytes;
      cfg.rows[t] = kTileRows;
    }
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
};

// acc[r][c]: int32 sums of rows m .. m+16*MI and panels p .. p+NJ over the first kt * 64
// values of K, stored row-major with 32 columns per row.
template <int MI, int NJ>
void tile_step(const GemmArgs& g, int64_t m, int64_t p, int64_t kt, int32_t (*acc)[32]) {
  const uint8_t* a = g.A + m * g.lda;
  const int8_t* b = g.B.panel(p);
  const int64_t stride = g.B.panel_bytes();
  _tile_zero(0);
  if (NJ > 1) _tile_zero(1);
  if (MI > 1) _tile_zero(2);
  if (MI > 1 && NJ > 1) _tile_zero(3);
  for (int64_t t = 0; t < kt; ++t) {
    const int64_t k0 = t * kTileBytes;
    _tile_loadd(4, a + k0, g.lda);
    _tile_loadd(6, b + t * kGroupsPerTile * 64, 64);
    _tile_dpbusd(0, 4, 6);
    if (NJ > 1) {
      _tile_loadd(7, b + stride + t * kGroupsPerTile * 64, 64);
      _tile_dpbusd(1, 4, 7);
    }
    if (MI > 1) {
      _tile_loadd(5, a + kTileRows * g.lda + k0, g.lda);
      _tile_dpbusd(2, 5, 6);
      if (NJ > 1) _tile_dpbusd(3, 5, 7);
    }
  }
  constexpr int64_t ld = 32 * sizeof(int32_t);
  _tile_stored(0, &acc[0][0], ld);
  if (NJ > 1) _tile_stored(1, &acc[0][16], ld);
  if (MI > 1) _tile_stored(2, &acc[16][0], ld);
  if (MI > 1 && NJ > 1) _tile_stored(3, &acc[16][16], ld);
}

// Adds K's last groups (from group g0 on) to the stored accumulators with VNNI, corrects
// the zero point and stores the epilogue of rows m .. m+rows, panels p .. p+panels.
void finish(const GemmArgs& g, int64_t m, int rows, int64_t p, int panels, int64_t g0,
            int32_t (*acc)[32]) {
  for (int j = 0; j < panels; ++j) {
    const int64_t n0 = (p + j) * 16;
    const int64_t valid = g.B.n - n0;
    const __mmask16 mask = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    const __m512i colsum = _mm512_loadu_si512(g.B.colsum + n0);
    const __m512 bias = g.out != OutKind::s32 ? epi_bias16(g, n0, mask) : _mm512_setzero_ps();
    const int8_t* b = g.B.panel(p + j);
    for (int i = 0; i < rows; ++i) {
      const int64_t row = m + i;
      __m512i sum = _mm512_loadu_si512(&acc[i][16 * j]);
      const uint8_t* a = g.A + row * g.lda;
      for (int64_t grp = g0; grp < g.B.k_groups; ++grp)
        sum = _mm512_dpbusd_epi32(sum, broadcast_group(a, grp, g.B.k),
                                  _mm512_loadu_si512(b + grp * 64));
      const __m512i zp = _mm512_set1_epi32(g.a_zp[row * g.a_zp_stride]);
      const __m512i corrected = _mm512_sub_epi32(sum, _mm512_mullo_epi32(zp, colsum));
      const __m512 s =
          g.out != OutKind::s32 ? epi_scale16(g, row, n0, mask) : _mm512_setzero_ps();
      epi_store16(g, row * g.ldc + n0, mask, corrected, s, bias);
    }
  }
}

}  // namespace

void gemm_block_amx(const GemmArgs& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t kt = g.B.k / kTileBytes;  // whole 64-byte K steps
  const int64_t m_amx = m0 + (m1 - m0) / kTileRows * kTileRows;
  if (kt == 0 || m_amx == m0) return gemm_block_avx512vnni(g, m0, m1, p0, p1);
  {
    TileScope tiles;
    alignas(64) int32_t acc[32][32];
    const int64_t g0 = kt * kGroupsPerTile;
    auto step = [&](int64_t m, int64_t p) {
      const bool two_rows = m + 32 <= m_amx, two_panels = p + 1 < p1;
      if (two_rows && two_panels) tile_step<2, 2>(g, m, p, kt, acc);
      else if (two_rows) tile_step<2, 1>(g, m, p, kt, acc);
      else if (two_panels) tile_step<1, 2>(g, m, p, kt, acc);
      else tile_step<1, 1>(g, m, p, kt, acc);
      finish(g, m, two_rows ? 32 : 16, p, two_panels ? 2 : 1, g0, acc);
    };
    // Rows outer for tall blocks: 32 rows of A stay in L1 across every panel pair while the
    // weight streams in order, which the prefetchers follow (A/B, 1 thread: 1024^3 1.6x,
    // 512x1024^2 1.35x, 2048^3 1.17x); panels outer for short ones, where each panel pair
    // stays in L1 over all the rows (128x768x3072: rows outer was 0.79x).
    if (m_amx - m0 >= kRowsOuterMinRows) {
      for (int64_t m = m0; m < m_amx; m += 32)
        for (int64_t p = p0; p < p1; p += 2) step(m, p);
    } else {
      for (int64_t p = p0; p < p1; p += 2)
        for (int64_t m = m0; m < m_amx; m += 32) step(m, p);
    }
  }
  if (m_amx < m1) gemm_block_avx512vnni(g, m_amx, m1, p0, p1);
}

int tile_rows_amx(int64_t) { return 32; }
int tile_panels_amx(int64_t) { return 2; }

}  // namespace int8kit::detail
