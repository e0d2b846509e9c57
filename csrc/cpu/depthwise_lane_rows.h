// Depthwise conv on AVX2-width vectors by "lane rows", shared by the AVX2 and AVX-VNNI
// paths (each includes this file in its own translation unit, compiled with its flags;
// everything here has internal linkage). 16 channels per step, exact int32.
//
// One int32 lane holds a channel's activations from R input rows dil_h apart, the weights
// that channel's taps of R kernel rows likewise, and one instruction sums the R products:
// - AVX2 (PairLanes, R = 2): int16 halves and vpmaddwd + vpaddd. vpmaddubsw would
//   saturate (255*127*2 > 32767); vpmaddwd on zero-extended bytes is exact.
// - AVX-VNNI (QuadLanes, R = 4): bytes and vpdpbusd, which does not saturate.
// Kernel rows missing from the last group (3 rows in a quad) get zero weights.
//
// Interleaving costs shuffles, so it is done once per group of input rows, not per tap: a
// lane row holds, for every input column of R image rows (horizontal padding written out
// as the zero point), the lanes of all channels. It is built once and read by every
// output row and tap that needs it, from a small cache of recent lane rows; where the
// groups have rows to spare, the next output rows reuse the cached lane rows through
// weights shifted by a row (3x3, stride 1: one build per two output rows, pairs and quads
// alike). The inner loop is
// then loads and multiply-adds only: per 8 channels of a 3x3 pixel, 6 vpmaddwd + 6 vpaddd
// (pairs) or 3 vpdpbusd (quads).
//
// The accumulators start at -x_zp * (sum of the channel's taps); the epilogue is the
// GEMM's (epilogue_avx2.h) per element, on 16 channels with the block's constants kept in
// registers, so the result is bit-identical to the scalar oracle.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "aligned_scratch.h"
#include "conv_kernels.h"
#include "epilogue_avx2.h"

namespace int8kit::detail {
namespace {

constexpr int64_t kCh = 16;  // channels per step: two ymm of int32 lanes

struct Layout {
  int64_t C, cw;    // channels, and rounded up to kCh
  int64_t groups;   // groups of R kernel rows
  int64_t shifts;   // weight placements: the spare rows of the groups, R * groups - KH, + 1
  int64_t x0, x1;   // the output columns this layout covers (a chunk of the row)
  int64_t ncols;    // lane-row columns: the padded input columns their taps read, from
                    // padded column x0 * stride_w
  int64_t row_gap;  // input rows grouped: dil_h apart
};

template <class Lanes>
Layout layout(const DwJob& j) {
  const ConvParams& p = j.a->wt.p;
  Layout L;
  L.C = p.in_channels;
  L.cw = (L.C + kCh - 1) / kCh * kCh;
  L.groups = (p.kh + Lanes::kRows - 1) / Lanes::kRows;
  L.shifts = Lanes::kRows * L.groups - p.kh + 1;
  L.x0 = L.x1 = L.ncols = 0;  // set per chunk of columns (depthwise_lane_rows)
  L.row_gap = p.dil_h;
  return L;
}

// Weights by (shift s, group i, column kx): kernel row R*i + k in byte/half k + s of the
// lane, [shifts][groups][kw][cw] (zero past C and where no kernel row falls).
template <class Lanes>
std::vector<int32_t> pack_weights(const ConvView& wt, const Layout& L) {
  const ConvParams& p = wt.p;
  constexpr int R = Lanes::kRows;
  const int64_t per_shift = L.groups * p.kw * L.cw;
  std::vector<int32_t> out(static_cast<size_t>(L.shifts * per_shift), 0);
  for (int64_t s = 0; s < L.shifts; ++s)
    for (int64_t i = 0; i < L.groups; ++i)
      for (int64_t kx = 0; kx < p.kw; ++kx)
        for (int64_t c = 0; c < L.C; ++c) {
          int8_t w[R] = {};
          for (int k = 0; k < R; ++k) {
            const int64_t kh = R * i + k - s;
            if (kh >= 0 && kh < p.kh) w[k] = wt.dw_plain[(kh * p.kw + kx) * wt.cp + c];
          }
          out[s * per_shift + (i * p.kw + kx) * L.cw + c] = Lanes::pack(w);
        }
  return out;
}

// The lane row of input rows top, top + gap, ... of image n: ncols x cw int32 lanes, from
// padded column x0 * stride_w.
template <class Lanes>
void build_lane_row(const DwJob& j, const Layout& L, int64_t n, int64_t top, int32_t* out) {
  constexpr int R = Lanes::kRows;
  const int64_t first = L.x0 * j.a->wt.p.stride_w - j.a->wt.p.pad_w;  // input column
  alignas(16) uint8_t tmp[R][kCh];
  for (int64_t pc = 0; pc < L.ncols; ++pc) {
    const uint8_t* row[R];
    for (int k = 0; k < R; ++k) row[k] = dw_tap(j, n, top + k * L.row_gap, first + pc);
    int32_t* dst = out + pc * L.cw;
    for (int64_t c0 = 0; c0 < L.cw; c0 += kCh) {
      __m128i v[R];
      for (int k = 0; k < R; ++k) {
        if (c0 + kCh <= L.C) {
          v[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[k] + c0));
        } else {  // the last channels: no byte past C (the end of x) is read
          std::memset(tmp[k], 0, kCh);
          std::memcpy(tmp[k], row[k] + c0, static_cast<size_t>(L.C - c0));
          v[k] = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp[k]));
        }
      }
      Lanes::interleave16(v, reinterpret_cast<__m256i*>(dst + c0));
    }
  }
}

// The last few lane rows built, reused while they are still needed.
template <class Lanes>
class LaneRows {
 public:
  LaneRows(const DwJob& j, const Layout& L, int64_t slots)
      : j_(j), L_(L), keys_(static_cast<size_t>(slots), Key{-1, 0}), age_(keys_.size(), 0) {
    // Not zeroed: a slot is written whole before it is read.
    base_ = buf_.get(slots * L.ncols * L.cw);
  }
  // The lane row starting at input row top, or null if it is not cached.
  const int32_t* find(int64_t n, int64_t top) {
    for (size_t s = 0; s < keys_.size(); ++s)
      if (keys_[s].n == n && keys_[s].top == top) {
        age_[s] = ++clock_;
        return slot(s);
      }
    return nullptr;
  }
  const int32_t* get(int64_t n, int64_t top) {
    if (const int32_t* hit = find(n, top)) return hit;
    const size_t oldest = static_cast<size_t>(std::min_element(age_.begin(), age_.end()) -
                                              age_.begin());
    build_lane_row<Lanes>(j_, L_, n, top, slot(oldest));
    keys_[oldest] = Key{n, top};
    age_[oldest] = ++clock_;
    return slot(oldest);
  }

 private:
  struct Key {
    int64_t n, top;
  };
  int32_t* slot(size_t s) { return base_ + static_cast<int64_t>(s) * L_.ncols * L_.cw; }
  const DwJob& j_;
  const Layout& L_;
  std::vector<Key> keys_;
  std::vector<int64_t> age_;
  int64_t clock_ = 0;
  AlignedScratch<int32_t> buf_;
  int32_t* base_;
};

// Per 16-channel block: the accumulators' start and the epilogue's constants.
struct BlockEpi {
  __m256i init[2];  // -x_zp * (sum of the channel's taps), wrapping like correct_acc()
  Epi16 epi;
};

BlockEpi block_epi(const DwJob& j, int64_t b) {
  PanelParams pp;
  load_panel_params(j.epi, b, &pp);
  BlockEpi e;
  const uint32_t zp = static_cast<uint32_t>(j.a->x_zp);
  alignas(32) int32_t v[kCh];
  for (int64_t c = 0; c < kCh; ++c)
    v[c] = static_cast<int32_t>(0u - zp * static_cast<uint32_t>(pp.colsum[c]));
  e.init[0] = _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
  e.init[1] = _mm256_load_si256(reinterpret_cast<const __m256i*>(v + 8));
  e.epi = epi16(j.epi, pp, j.epi.out == OutKind::s32 ? 0.f : *j.epi.a_scale);
  return e;
}

// One output row, every channel, every column. Everything the loop reads is in locals:
// the stores go through may-alias vector types, after which GCC would reload any field it
// reads through a reference.
struct RowArgs {
  const int32_t* const* act;      // lane rows, one per group of kernel rows
  const int32_t* w;               // weights, [groups][kw] x cw
  const BlockEpi* epi;            // per 16-channel block
  int64_t blocks, groups, kw, cw, sw, dw;  // sw, dw: column steps in int32
  int64_t ow, ldc;
  void* out;                      // output pixel 0 of this row
};

template <class Lanes, int GROUPS, int KW, OutKind OUT, bool RELU>
void row_block(const RowArgs& ra) {
  using T = std::conditional_t<OUT == OutKind::s32, int32_t,
                               std::conditional_t<OUT == OutKind::f32, float, uint8_t>>;
  const int64_t groups = GROUPS ? GROUPS : ra.groups, kw = KW ? KW : ra.kw;
  const int64_t cw = ra.cw, sw = ra.sw, dw = ra.dw, ow = ra.ow, ldc = ra.ldc;
  const int64_t blocks = ra.blocks;
  const int32_t* const w = ra.w;
  const BlockEpi* const epi = ra.epi;
  const int32_t* const* const act = ra.act;
  T* out = static_cast<T*>(ra.out);
  for (int64_t x = 0; x < ow; ++x) {
    for (int64_t b = 0; b < blocks; ++b) {
      const BlockEpi& e = epi[b];
      const int64_t c0 = b * kCh;
      __m256i acc0 = e.init[0], acc1 = e.init[1];
#pragma GCC unroll 4
      for (int64_t i = 0; i < groups; ++i) {
        const int32_t* a = act[i] + x * sw + c0;
#pragma GCC unroll 8
        for (int64_t kx = 0; kx < kw; ++kx) {
          const __m256i* av = reinterpret_cast<const __m256i*>(a + kx * dw);
          const __m256i* wv = reinterpret_cast<const __m256i*>(w + (i * kw + kx) * cw + c0);
          acc0 = Lanes::mac(acc0, _mm256_load_si256(av), _mm256_loadu_si256(wv));
          acc1 = Lanes::mac(acc1, _mm256_load_si256(av + 1), _mm256_loadu_si256(wv + 1));
        }
      }
      store_epi16<OUT, RELU>(e.epi, out + x * ldc + b * kCh, acc0, acc1);
    }
  }
}

using RowBlockFn = void (*)(const RowArgs&);

template <class Lanes, int GROUPS, int KW>
RowBlockFn row_block_for(const GemmArgs& g) {
  switch (g.out) {
    case OutKind::s32: return row_block<Lanes, GROUPS, KW, OutKind::s32, false>;
    case OutKind::f32:
      return g.relu ? row_block<Lanes, GROUPS, KW, OutKind::f32, true>
                    : row_block<Lanes, GROUPS, KW, OutKind::f32, false>;
    case OutKind::u8:
      return g.relu ? row_block<Lanes, GROUPS, KW, OutKind::u8, true>
                    : row_block<Lanes, GROUPS, KW, OutKind::u8, false>;
  }
  return row_block<Lanes, GROUPS, KW, OutKind::s32, false>;
}

// Cached lane rows: enough for the rows one output row reads and those the next ones reread.
inline int64_t lane_row_slots(const Layout& L) { return 2 * L.groups + 2; }

// About this many bytes per lane row: wide rows go in chunks of output columns, so that
// the cache stays small (its slots hold whole lane rows) whatever the image width.
constexpr int64_t kLaneRowBytes = int64_t(128) << 10;

// Output rows [r0, r1) of the flattened (n, oh) index, output columns [L.x0, L.x1).
template <class Lanes>
void lane_rows_chunk(const DwJob& j, const Layout& L, const std::vector<int32_t>& w,
                     const std::vector<BlockEpi>& epi, int64_t r0, int64_t r1) {
  const ConvParams& p = j.a->wt.p;
  const int64_t per_shift = L.groups * p.kw * L.cw;
  LaneRows<Lanes> rows(j, L, lane_row_slots(L));
  std::vector<const int32_t*> lrow(static_cast<size_t>(L.groups));
  const RowBlockFn fn = p.kh == 3 && p.kw == 3 && L.groups == 1
                            ? row_block_for<Lanes, 1, 3>(j.epi)
                        : p.kh == 3 && p.kw == 3 && L.groups == 2
                            ? row_block_for<Lanes, 2, 3>(j.epi)
                            : row_block_for<Lanes, 0, 0>(j.epi);
  const size_t esz = j.epi.out == OutKind::u8 ? 1 : 4;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / j.oh, top = (r % j.oh) * p.stride_h - p.pad_h;
    // The kernel can also start s rows into cached lane rows (those at top - s rows), with
    // the weights shifted to match: at 3x3 stride 1, output row y + 1 rereads row y's
    // lane rows (quads: one group; pairs: both groups). Otherwise the lane rows at top.
    int64_t shift = 0;
    for (int64_t s = 1; s < L.shifts && shift == 0; ++s) {
      bool all = true;
      for (int64_t i = 0; i < L.groups && all; ++i)
        all = (lrow[i] = rows.find(n, top + (Lanes::kRows * i - s) * L.row_gap)) != nullptr;
      if (all) shift = s;
    }
    if (shift == 0)
      for (int64_t i = 0; i < L.groups; ++i)
        lrow[i] = rows.get(n, top + Lanes::kRows * i * L.row_gap);
    RowArgs ra;
    ra.act = lrow.data();
    ra.w = w.data() + shift * per_shift, ra.epi = epi.data();
    ra.blocks = static_cast<int64_t>(epi.size());
    ra.groups = L.groups, ra.kw = p.kw, ra.cw = L.cw;
    ra.sw = p.stride_w * L.cw, ra.dw = p.dil_w * L.cw, ra.ow = L.x1 - L.x0, ra.ldc = j.epi.ldc;
    ra.out = static_cast<char*>(j.epi.C) + (r * j.ow + L.x0) * j.epi.ldc * esz;
    fn(ra);
  }
}

// Lane rows hold every padded column from a chunk's first tap to its last, so a kernel
// spread over many columns (a large dilation) needs slots * span * channels * 4 bytes
// even for a chunk of one output column. Past this bound (per thread) the scalar kernel,
// which needs no cache, runs instead: a 33-tap kernel with dilation 4096 on 4096 channels
// asked for 8.6 GB.
constexpr int64_t kMaxLaneCacheBytes = int64_t(16) << 20;

template <class Lanes>
void depthwise_lane_rows(const DwJob& j, int64_t r0, int64_t r1) {
  // A lane row's spare rows (at most kRows - 1) are read past the windows: see DwPrepFn.
  static_assert(Lanes::kRows - 1 <= kDwRowsPastWindows, "bands would end too soon");
  const ConvParams& p = j.a->wt.p;
  Layout L = layout<Lanes>(j);
  const int64_t span = (p.kw - 1) * p.dil_w + 1;
  if (lane_row_slots(L) * span * L.cw * static_cast<int64_t>(sizeof(int32_t)) >
      kMaxLaneCacheBytes)
    return depthwise_rows_scalar(j, r0, r1);
  const std::vector<int32_t> w = pack_weights<Lanes>(j.a->wt, L);
  std::vector<BlockEpi> epi;
  for (int64_t b = 0; b < L.cw / kCh; ++b) epi.push_back(block_epi(j, b));
  const int64_t per_col = p.stride_w * L.cw * static_cast<int64_t>(sizeof(int32_t));
  const int64_t chunk = std::max<int64_t>(1, kLaneRowBytes / per_col);
  for (int64_t x0 = 0; x0 < j.ow; x0 += chunk) {
    L.x0 = x0, L.x1 = std::min(j.ow, x0 + chunk);
    L.ncols = (L.x1 - L.x0 - 1) * p.stride_w + (p.kw - 1) * p.dil_w + 1;
    lane_rows_chunk<Lanes>(j, L, w, epi, r0, r1);
  }
}

}  // namespace
}  // namespace int8kit::detail
