// AVX2 depthwise conv: kernel rows in pairs, 16 channels per step, exact int32.
//
// vpmaddubsw would saturate, so products come from vpmaddwd on int16 pairs: one int32
// lane holds a channel's activations from two input rows dil_h apart (zero-extended, the
// upper row low), the weights hold that channel's taps of two kernel rows likewise, and
// vpmaddwd gives a0*w0 + a1*w1, exactly. An odd last kernel row pairs with zero weights.
//
// Widening costs shuffles, so it is done once per pair of input rows, not per tap: a
// "pair row" holds, for every input column of one image row pair (horizontal padding
// written out as the zero point), the 32-bit lanes for all channels. Each is built once
// and read by every output row and tap that needs it (3x3 stride 1: 2 output rows x 3
// taps), from a small cache of recent pair rows. The inner loop is then loads, vpmaddwd
// and vpaddd only: 6 of each per 8 channels of a 3x3 output pixel.
//
// The accumulators start at -x_zp * (sum of the channel's taps); the epilogue is the
// GEMM's (epilogue_avx2.h) per element, on 16 channels with the block's constants kept in
// registers, so the result is bit-identical to the scalar oracle.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "conv_kernels.h"
#include "epilogue_avx2.h"

namespace int8kit::detail {
namespace {

constexpr int64_t kCh = 16;  // channels per step: two ymm of int32 lanes

struct Layout {
  int64_t C, cw;         // channels, and rounded up to kCh
  int64_t pairs;         // kernel row pairs
  int64_t ncols;         // pair-row columns: the padded input columns the taps read
  int64_t row_gap;       // input rows paired: dil_h apart
};

// Weights by (kernel row pair i, column kx): int32 lanes w[2i][kx] | w[2i+1][kx] << 16,
// [pairs][kw][cw] (zero past C and for the missing row of an odd kernel).
std::vector<int32_t> pack_weights(const ConvView& wt, const Layout& L) {
  const ConvParams& p = wt.p;
  std::vector<int32_t> out(static_cast<size_t>(L.pairs * p.kw * L.cw), 0);
  for (int64_t i = 0; i < L.pairs; ++i)
    for (int64_t kx = 0; kx < p.kw; ++kx)
      for (int64_t c = 0; c < L.C; ++c) {
        const int32_t w0 = wt.dw_plain[(2 * i * p.kw + kx) * wt.cp + c];
        const int32_t w1 =
            2 * i + 1 < p.kh ? wt.dw_plain[((2 * i + 1) * p.kw + kx) * wt.cp + c] : 0;
        out[(i * p.kw + kx) * L.cw + c] = static_cast<int32_t>(
            (static_cast<uint32_t>(w0) & 0xFFFF) | (static_cast<uint32_t>(w1) << 16));
      }
  return out;
}

// The pair row of input rows (top, top + gap) of image n: ncols x cw int32 lanes.
void build_pair_row(const DwJob& j, const Layout& L, int64_t n, int64_t top, int32_t* out) {
  const int64_t pad_w = j.a->wt.p.pad_w;
  alignas(16) uint8_t ta[kCh], tb[kCh];
  for (int64_t pc = 0; pc < L.ncols; ++pc) {
    const uint8_t* ra = dw_tap(j, n, top, pc - pad_w);
    const uint8_t* rb = dw_tap(j, n, top + L.row_gap, pc - pad_w);
    int32_t* dst = out + pc * L.cw;
    for (int64_t c0 = 0; c0 < L.cw; c0 += kCh) {
      __m128i a, b;
      if (c0 + kCh <= L.C) {
        a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ra + c0));
        b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rb + c0));
      } else {  // the last channels: no byte past C (the end of x) is read
        std::memset(ta, 0, kCh), std::memset(tb, 0, kCh);
        std::memcpy(ta, ra + c0, static_cast<size_t>(L.C - c0));
        std::memcpy(tb, rb + c0, static_cast<size_t>(L.C - c0));
        a = _mm_load_si128(reinterpret_cast<const __m128i*>(ta));
        b = _mm_load_si128(reinterpret_cast<const __m128i*>(tb));
      }
      __m256i* d = reinterpret_cast<__m256i*>(dst + c0);
      _mm256_store_si256(d, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)));
      _mm256_store_si256(d + 1, _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)));
    }
  }
}

// The last few pair rows built, reused while they are still needed.
class PairRows {
 public:
  PairRows(const DwJob& j, const Layout& L, int64_t slots)
      : j_(j), L_(L), keys_(static_cast<size_t>(slots), Key{-1, 0}), age_(keys_.size(), 0) {
    const int64_t per = L.ncols * L.cw;
    buf_.resize(static_cast<size_t>(slots * per + 8));
    base_ = buf_.data() + ((32 - reinterpret_cast<uintptr_t>(buf_.data()) % 32) % 32) / 4;
  }
  const int32_t* get(int64_t n, int64_t top) {
    size_t oldest = 0;
    for (size_t s = 0; s < keys_.size(); ++s) {
      if (keys_[s].n == n && keys_[s].top == top) {
        age_[s] = ++clock_;
        return slot(s);
      }
      if (age_[s] < age_[oldest]) oldest = s;
    }
    build_pair_row(j_, L_, n, top, slot(oldest));
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
  std::vector<int32_t> buf_;
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
  const int32_t* const* act;      // pair rows
  const int32_t* w;               // weights, [pairs][kw] x cw
  const BlockEpi* epi;            // per 16-channel block
  int64_t blocks, pairs, kw, cw, sw, dw;  // sw, dw: column steps in int32
  int64_t ow, ldc;
  void* out;                      // output pixel 0 of this row
};

template <int PAIRS, int KW, OutKind OUT, bool RELU>
void row_block(const RowArgs& ra) {
  using T = std::conditional_t<OUT == OutKind::s32, int32_t,
                               std::conditional_t<OUT == OutKind::f32, float, uint8_t>>;
  const int64_t pairs = PAIRS ? PAIRS : ra.pairs, kw = KW ? KW : ra.kw;
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
      for (int64_t i = 0; i < pairs; ++i) {
        const int32_t* a = act[i] + x * sw + c0;
#pragma GCC unroll 8
        for (int64_t kx = 0; kx < kw; ++kx) {
          const __m256i* av = reinterpret_cast<const __m256i*>(a + kx * dw);
          const __m256i* wv = reinterpret_cast<const __m256i*>(w + (i * kw + kx) * cw + c0);
          acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_load_si256(av),
                                                          _mm256_loadu_si256(wv)));
          acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_load_si256(av + 1),
                                                          _mm256_loadu_si256(wv + 1)));
        }
      }
      store_epi16<OUT, RELU>(e.epi, out + x * ldc + b * kCh, acc0, acc1);
    }
  }
}

using RowBlockFn = void (*)(const RowArgs&);

template <int PAIRS, int KW>
RowBlockFn row_block_for(const GemmArgs& g) {
  switch (g.out) {
    case OutKind::s32: return row_block<PAIRS, KW, OutKind::s32, false>;
    case OutKind::f32:
      return g.relu ? row_block<PAIRS, KW, OutKind::f32, true>
                    : row_block<PAIRS, KW, OutKind::f32, false>;
    case OutKind::u8:
      return g.relu ? row_block<PAIRS, KW, OutKind::u8, true>
                    : row_block<PAIRS, KW, OutKind::u8, false>;
  }
  return row_block<PAIRS, KW, OutKind::s32, false>;
}

}  // namespace

void depthwise_rows_avx2(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  Layout L;
  L.C = p.in_channels;
  L.cw = (L.C + kCh - 1) / kCh * kCh;
  L.pairs = (p.kh + 1) / 2;
  L.ncols = (j.ow - 1) * p.stride_w + (p.kw - 1) * p.dil_w + 1;
  L.row_gap = p.dil_h;
  const std::vector<int32_t> w = pack_weights(a.wt, L);
  std::vector<BlockEpi> epi;
  for (int64_t b = 0; b < L.cw / kCh; ++b) epi.push_back(block_epi(j, b));
  // Enough slots that the rows one output row reads and those the next ones reread are
  // all kept (stride 1: 2 of the 4 rows a 3x3 kernel's two output rows read are shared).
  PairRows rows(j, L, 2 * L.pairs + 2);
  std::vector<const int32_t*> prow(static_cast<size_t>(L.pairs));
  const RowBlockFn fn = p.kh == 3 && p.kw == 3 ? row_block_for<2, 3>(j.epi)
                                               : row_block_for<0, 0>(j.epi);
  const size_t esz = j.epi.out == OutKind::u8 ? 1 : 4;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / j.oh, y = r % j.oh;
    for (int64_t i = 0; i < L.pairs; ++i)
      prow[i] = rows.get(n, y * p.stride_h - p.pad_h + 2 * i * p.dil_h);
    RowArgs ra;
    ra.act = prow.data();
    ra.w = w.data(), ra.epi = epi.data(), ra.blocks = static_cast<int64_t>(epi.size());
    ra.pairs = L.pairs, ra.kw = p.kw, ra.cw = L.cw;
    ra.sw = p.stride_w * L.cw, ra.dw = p.dil_w * L.cw, ra.ow = j.ow, ra.ldc = j.epi.ldc;
    ra.out = static_cast<char*>(j.epi.C) + r * j.ow * j.epi.ldc * esz;
    fn(ra);
  }
}

}  // namespace int8kit::detail
