// AVX-512 VNNI depthwise conv: 64 channels per step, exact int32.
//
// vpdpbusd sums four byte products per int32 lane, but depthwise needs one product per
// channel. So one 64-byte load of activations (channels c..c+63, no shuffles) meets four
// weight vectors, the r-th keeping only the weights of channels with index % 4 == r (the
// packed "expanded" layout): accumulator r then holds, in lane j, channel 4j+r's sum, the
// zero weight bytes cancelling the other three channels. After all taps the four
// accumulators are transposed back to channel order (8 permutes per 64 channels per pixel)
// and go through the shared vector epilogue.
//
// 3x3 kernels at stride 1 and 2 mostly go to depthwise3x3_avx512.cpp instead, which needs
// 3 vpdpbusd per 16 channels of a pixel where this layout needs 4 per 16 per tap.
#include <immintrin.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "depthwise_avx512.h"

namespace int8kit::detail {
namespace dw512 {

int64_t narrow_last_block(int64_t C) {
  const int64_t rem = C % kDwBlock;
  return C > kDwBlock && (rem == 16 || rem == 32) ? rem : 0;
}

namespace {

// One tap of one pixel vector in the expanded layout: acc[r] += av . w[r], r = 0..3.
__attribute__((always_inline)) inline void dot_expanded(__m512i* acc, __m512i av,
                                                        const __m512i* w) {
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) dpbusd(acc[r], av, w[r]);
}

// The 4 expanded weight vectors of one tap.
__attribute__((always_inline)) inline void load_expanded(const int8_t* wt, __m512i* w) {
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) w[r] = _mm512_loadu_si512(wt + 64 * r);
}

// acc[r] lane j = channel 4j + r  ->  out[v] lane i = channel 16v + i.
inline void to_channel_order(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i* out) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i q0 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i q1 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  const __m512i t01l = _mm512_permutex2var_epi32(a0, lo, a1);
  const __m512i t01h = _mm512_permutex2var_epi32(a0, hi, a1);
  const __m512i t23l = _mm512_permutex2var_epi32(a2, lo, a3);
  const __m512i t23h = _mm512_permutex2var_epi32(a2, hi, a3);
  out[0] = _mm512_permutex2var_epi64(t01l, q0, t23l);
  out[1] = _mm512_permutex2var_epi64(t01l, q1, t23l);
  out[2] = _mm512_permutex2var_epi64(t01h, q0, t23h);
  out[3] = _mm512_permutex2var_epi64(t01h, q1, t23h);
}

template <OutKind OUT, bool RELU>
__attribute__((always_inline)) inline void finish_pixel(const GemmArgs& e, const BlockEpi& be,
                                                        int64_t off, __m512i a0, __m512i a1,
                                                        __m512i a2, __m512i a3) {
  __m512i out[4];
  to_channel_order(a0, a1, a2, a3, out);
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    if (!be.m[v]) break;
    epi_store16_t<OUT, RELU>(e, off + 16 * v, be.m[v], _mm512_sub_epi32(out[v], be.zpcs[v]),
                             be.s[v], be.bias[v]);
  }
}

// u8 epilogue inputs of one block in the accumulators' own order (acc[r] lane j holds
// channel c0 + 4j + r): the zero-point correction as where the accumulators start, the
// scales and the bias. With them the u8 path needs no transpose back to channel order (8
// permutes per pixel and block); one byte shuffle after the packs restores it.
struct alignas(64) ModEpi {
  __m512i acc0[4];
  __m512 s[4], bias[4];
};

// The ModEpi of 64 lanes whose lane i is channel c0 + i % span (span 64 for a plain
// block), computed as load_block_epi and epi_scale16 do (int32 products wrap alike;
// a_scale * w_scale rounded once); zeros past the last channel.
ModEpi mod_epi(const DwJob& j, int64_t c0, int64_t span) {
  const ConvArgs& a = *j.a;
  const GemmArgs& e = j.epi;
  const int64_t C = a.wt.p.in_channels;
  ModEpi out;
  for (int r = 0; r < 4; ++r) {
    alignas(64) int32_t z[16];
    alignas(64) float sc[16], bi[16];
    for (int l = 0; l < 16; ++l) {
      const int64_t c = c0 + (4 * l + r) % span;
      const bool in = c < C;
      const uint32_t zc =
          static_cast<uint32_t>(a.x_zp) * static_cast<uint32_t>(in ? e.B.colsum[c] : 0);
      z[l] = static_cast<int32_t>(0u - zc);
      sc[l] = in ? e.a_scale[0] * e.w_scale[c * e.w_scale_stride] : 0.f;
      bi[l] = in && e.bias ? e.bias[c] : 0.f;
    }
    out.acc0[r] = _mm512_load_si512(z);
    out.s[r] = _mm512_load_ps(sc);
    out.bias[r] = _mm512_load_ps(bi);
  }
  return out;
}

std::vector<ModEpi> mod_epis(const DwJob& j) {
  std::vector<ModEpi> out;
  for (int64_t b = 0; b < j.a->wt.cp / kDwBlock; ++b) out.push_back(mod_epi(j, b * kDwBlock, 64));
  return out;
}

// The u8 bytes of one pixel in channel order, from accumulators that started at me.acc0.
template <bool RELU>
__attribute__((always_inline)) inline __m512i u8_bytes_mod(const GemmArgs& e, const ModEpi& me,
                                                           const __m512i* acc) {
  // Byte 4r + a of 128-bit lane L holds channel 16L + 4a + r.
  const __m512i p = u8_packed<RELU>(e, acc, me.s, me.bias);
  const __m512i order = _mm512_set4_epi32(0x0F0B0703, 0x0E0A0602, 0x0D090501, 0x0C080400);
  return _mm512_shuffle_epi8(p, order);
}

template <bool RELU>
__attribute__((always_inline)) inline void finish_u8_mod(const GemmArgs& e, const ModEpi& me,
                                                         __mmask64 lmask, int64_t off,
                                                         const __m512i* acc) {
  _mm512_mask_storeu_epi8(static_cast<uint8_t*>(e.C) + off, lmask, u8_bytes_mod<RELU>(e, me, acc));
}

// PX output pixels of one row and one channel block. Tap t of pixel i reads
// tap[t] + i * step[t] (step 0 for taps in the padding). PX * 4 accumulators give enough
// independent vpdpbusd chains to hide its latency.
// Kept out of line: inlined into the row loop, GCC spills the accumulators.
template <int PX, bool FULL, OutKind OUT, bool RELU>
__attribute__((noinline)) void pixels(const BlockEpi& be, const GemmArgs& e,
                                                  const uint8_t* const* tap,
                                                  const int64_t* step, int64_t taps,
                                                  const int8_t* wb, __mmask64 lmask,
                                                  int64_t off, int64_t C, const ModEpi* me) {
  __m512i acc[PX][4];  // u8: starting at -zp * tap sums (see ModEpi)
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
      acc[i][r] = OUT == OutKind::u8 ? me->acc0[r] : _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    __m512i w[4];
    load_expanded(wb + t * 4 * kDwBlock, w);
#pragma GCC unroll 8
    for (int i = 0; i < PX; ++i) {
      const uint8_t* src = tap[t] + i * step[t];
      dot_expanded(acc[i], FULL ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi8(lmask, src), w);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i) {
    if constexpr (OUT == OutKind::u8)
      finish_u8_mod<RELU>(e, *me, lmask, off + i * C, acc[i]);
    else
      finish_pixel<OUT, RELU>(e, be, off + i * C, acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
}

constexpr int kGenPx = 6;  // the general kernel: 24 accumulators, 4 weights, 1 activation

using PixelsFn = decltype(&pixels<1, true, OutKind::u8, false>);

// pixels<px, FULL> for 1 <= px < kGenPx.
template <OutKind OUT, bool RELU, int... I>
PixelsFn pixels_rest_impl(bool full, int64_t px, std::integer_sequence<int, I...>) {
  static constexpr PixelsFn fns[2][sizeof...(I)] = {{pixels<I + 1, false, OUT, RELU>...},
                                                    {pixels<I + 1, true, OUT, RELU>...}};
  return fns[full][px - 1];
}

template <OutKind OUT, bool RELU>
PixelsFn pixels_rest(bool full, int64_t px) {
  return pixels_rest_impl<OUT, RELU>(full, px, std::make_integer_sequence<int, kGenPx - 1>{});
}

// A last block with 16 or 32 of its 64 channels would leave 3/4 or 1/2 of every vector
// idle. Inside the row, P = 64 / w pixels of it then share a vector (lane i: pixel i / w,
// channel c0 + i % w), gathered by P loads of w bytes: a tap costs 4 vpdpbusd per P pixels
// instead of per pixel. Its expanded weights and epilogue inputs, in that lane order, are
// built once per call.
struct NarrowTail {
  int64_t w = 0, P = 1, c0 = 0;  // w == 0: the last block is not narrow
  std::vector<int8_t> wexp;      // [taps][4][64] as dw_expanded, lane i -> channel c0 + i % w
  ModEpi me;                     // u8 output
  BlockEpi be;                   // other outputs
};

NarrowTail narrow_tail(const DwJob& j) {
  const ConvView& wt = j.a->wt;
  const int64_t C = wt.p.in_channels, rem = narrow_last_block(C), taps = wt.p.kh * wt.p.kw;
  NarrowTail t;
  if (rem == 0) return t;
  t.w = rem, t.P = kDwBlock / rem, t.c0 = C - rem;
  t.wexp.assign(static_cast<size_t>(taps * 4 * kDwBlock), 0);
  for (int64_t tap = 0; tap < taps; ++tap)
    for (int64_t i = 0; i < kDwBlock; ++i)
      t.wexp[(tap * 4 + i % 4) * kDwBlock + i] = wt.dw_plain[tap * wt.cp + t.c0 + i % rem];
  if (j.epi.out == OutKind::u8)
    t.me = mod_epi(j, t.c0, rem);
  else
    load_super_epi(j.epi, j.a->x_zp, t.c0, rem, &t.be);
  return t;
}

// PX vectors of P pixels each (see NarrowTail), from tap pointers at the first pixel.
template <int PX, int P, OutKind OUT, bool RELU>
__attribute__((noinline)) void tail_pixels(const GemmArgs& e, const NarrowTail& nt,
                                           const uint8_t* const* tap, const int64_t* step,
                                           int64_t taps, int64_t off, int64_t C) {
  constexpr int64_t W = kDwBlock / P;
  __m512i acc[PX][4];
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
      acc[i][r] = OUT == OutKind::u8 ? nt.me.acc0[r] : _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    __m512i w[4];
    load_expanded(nt.wexp.data() + t * 4 * kDwBlock, w);
    const int64_t st = step[t];
#pragma GCC unroll 8
    for (int i = 0; i < PX; ++i) {
      const uint8_t* src = tap[t] + i * P * st;
      __m512i av;
      if constexpr (P == 2) {
        av = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + st)), 1);
      } else {
        auto load128 = [&](int q) {
          return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + q * st));
        };
        av = _mm512_castsi128_si512(load128(0));
        av = _mm512_inserti32x4(av, load128(1), 1);
        av = _mm512_inserti32x4(av, load128(2), 2);
        av = _mm512_inserti32x4(av, load128(3), 3);
      }
      dot_expanded(acc[i], av, w);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i) {
    const int64_t o = off + i * P * C;  // pixel q of vector i at o + q * C
    if constexpr (OUT == OutKind::u8) {
      const __m512i bytes = u8_bytes_mod<RELU>(e, nt.me, acc[i]);
      uint8_t* y = static_cast<uint8_t*>(e.C) + o;
      const __mmask64 one = (__mmask64(1) << W) - 1;
#pragma GCC unroll 4
      for (int q = 0; q < P; ++q)  // the store shifted so that lanes q*W.. land at pixel q
        _mm512_mask_storeu_epi8(y + q * (C - W), one << (q * W), bytes);
    } else {
      __m512i out[4];
      to_channel_order(acc[i][0], acc[i][1], acc[i][2], acc[i][3], out);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        epi_store16_t<OUT, RELU>(e, o + 16 * v / W * C + 16 * v % W, nt.be.m[v],
                                 _mm512_sub_epi32(out[v], nt.be.zpcs[v]), nt.be.s[v],
                                 nt.be.bias[v]);
    }
  }
}

using TailPixelsFn = decltype(&tail_pixels<1, 2, OutKind::u8, false>);

// tail_pixels<vecs, P> for 1 <= vecs <= kGenPx, P = 2 or 4.
template <OutKind OUT, bool RELU, int... I>
TailPixelsFn tail_pixels_impl(int64_t P, int64_t vecs, std::integer_sequence<int, I...>) {
  static constexpr TailPixelsFn fns[2][sizeof...(I)] = {{tail_pixels<I + 1, 2, OUT, RELU>...},
                                                        {tail_pixels<I + 1, 4, OUT, RELU>...}};
  return fns[P == 4][vecs - 1];
}

template <OutKind OUT, bool RELU>
TailPixelsFn tail_pixels_for(int64_t P, int64_t vecs) {
  return tail_pixels_impl<OUT, RELU>(P, vecs, std::make_integer_sequence<int, kGenPx>{});
}

// Scratch for one output row: tap pointers and their per-pixel steps.
struct RowScratch {
  std::vector<const uint8_t*> tap;
  std::vector<int64_t> step;
};

// Sets tap pointers (and steps) for output pixel (n, y, x), channel block c0.
inline void set_taps(const DwJob& j, int64_t n, int64_t y, int64_t x, int64_t c0,
                     RowScratch& rs) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  for (int64_t kh = 0; kh < p.kh; ++kh) {
    const int64_t ih = y * p.stride_h - p.pad_h + kh * p.dil_h;
    const bool row_in = ih >= 0 && ih < a.h;
    for (int64_t kw = 0; kw < p.kw; ++kw) {
      const int64_t t = kh * p.kw + kw;
      rs.tap[t] = dw_tap(j, n, ih, x * p.stride_w - p.pad_w + kw * p.dil_w) + c0;
      rs.step[t] = row_in ? p.stride_w * p.in_channels : 0;  // used where columns are inside
    }
  }
}

// One output row, one channel block. Columns [x_lo, x_hi) read no horizontal padding, so
// their tap pointers advance by a fixed step; the rest are computed one by one.
template <OutKind OUT, bool RELU>
__attribute__((noinline)) void row_block(const DwJob& j, int64_t r, int64_t b, int64_t x_lo,
                                         int64_t x_hi, RowScratch& rs, const ModEpi* mods,
                                         const NarrowTail& nt) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  const GemmArgs& e = j.epi;
  const int64_t C = p.in_channels, taps = p.kh * p.kw;
  const int64_t n = r / j.oh, y = r % j.oh;
  const int64_t c0 = b * kDwBlock, left = C - c0;
  const __mmask64 lmask = left >= 64 ? ~__mmask64(0) : ((__mmask64(1) << left) - 1);
  BlockEpi be;
  const ModEpi* me = OUT == OutKind::u8 ? mods + b : nullptr;
  if constexpr (OUT != OutKind::u8) load_block_epi(e, a.x_zp, c0, left, &be);
  const int8_t* wb = a.wt.dw_expanded + b * taps * 4 * kDwBlock;
  const int64_t row_off = r * j.ow * C + c0;
  int64_t x = 0;
  for (; x < std::min(x_lo, j.ow); ++x) {
    set_taps(j, n, y, x, c0, rs);
    pixels<1, false, OUT, RELU>(be, e, rs.tap.data(), rs.step.data(), taps, wb, lmask,
                                row_off + x * C, C, me);
  }
  if (nt.w && c0 == nt.c0 && x + nt.P <= x_hi) {  // the narrow last block, inside the row
    set_taps(j, n, y, x, c0, rs);
    const int64_t P = nt.P;
    for (; x + P <= x_hi; ) {
      const int64_t vecs = std::min<int64_t>(kGenPx, (x_hi - x) / P);
      tail_pixels_for<OUT, RELU>(P, vecs)(e, nt, rs.tap.data(), rs.step.data(), taps,
                                          row_off + x * C, C);
      for (int64_t t = 0; t < taps; ++t) rs.tap[t] += vecs * P * rs.step[t];
      x += vecs * P;
    }
  } else if (x < x_hi) {
    set_taps(j, n, y, x, c0, rs);
    const bool full = left >= 64;
    const auto fn = full ? pixels<kGenPx, true, OUT, RELU> : pixels<kGenPx, false, OUT, RELU>;
    for (; x + kGenPx <= x_hi; x += kGenPx) {
      fn(be, e, rs.tap.data(), rs.step.data(), taps, wb, lmask, row_off + x * C, C, me);
      for (int64_t t = 0; t < taps; ++t) rs.tap[t] += kGenPx * rs.step[t];
    }
    // The last inside pixels in one call: one pixel per call would leave only 4 vpdpbusd
    // chains, each waiting on the last.
    if (x < x_hi) {
      pixels_rest<OUT, RELU>(full, x_hi - x)(be, e, rs.tap.data(), rs.step.data(), taps, wb,
                                             lmask, row_off + x * C, C, me);
      x = x_hi;
    }
  }
  for (; x < j.ow; ++x) {
    set_taps(j, n, y, x, c0, rs);
    pixels<1, false, OUT, RELU>(be, e, rs.tap.data(), rs.step.data(), taps, wb, lmask,
                                row_off + x * C, C, me);
  }
}

using RowBlockFn = void (*)(const DwJob&, int64_t, int64_t, int64_t, int64_t, RowScratch&,
                            const ModEpi*, const NarrowTail&);

RowBlockFn row_block_for(const GemmArgs& e) {
  switch (e.out) {
    case OutKind::s32: return row_block<OutKind::s32, false>;
    case OutKind::f32: return e.relu ? row_block<OutKind::f32, true> : row_block<OutKind::f32, false>;
    case OutKind::u8: return e.relu ? row_block<OutKind::u8, true> : row_block<OutKind::u8, false>;
  }
  return row_block<OutKind::s32, false>;
}

}  // namespace
}  // namespace dw512

void depthwise_rows_avx512vnni(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  using namespace dw512;
  if (built_columns_apply(p)) return depthwise3x3_rows(j, r0, r1);
  const int64_t taps = p.kh * p.kw, blocks = a.wt.cp / kDwBlock;
  RowScratch rs{std::vector<const uint8_t*>(static_cast<size_t>(taps)),
                std::vector<int64_t>(static_cast<size_t>(taps))};
  // Output columns whose taps all fall inside the image horizontally: [x_lo, x_hi).
  const int64_t x_lo = std::min<int64_t>(j.ow, (p.pad_w + p.stride_w - 1) / p.stride_w);
  const int64_t right = a.w - 1 + p.pad_w - (p.kw - 1) * p.dil_w;  // needs x*sw <= right
  const int64_t x_hi =
      std::max<int64_t>(x_lo, std::min<int64_t>(j.ow, right < 0 ? 0 : right / p.stride_w + 1));
  const RowBlockFn fn = row_block_for(j.epi);
  const std::vector<ModEpi> mods = j.epi.out == OutKind::u8 ? mod_epis(j) : std::vector<ModEpi>{};
  const NarrowTail nt = narrow_tail(j);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t b = 0; b < blocks; ++b) fn(j, r, b, x_lo, x_hi, rs, mods.data(), nt);
}

}  // namespace int8kit::detail
