// AVX2 depthwise conv: 16 channels per step, taps in pairs, exact int32.
//
// vpmaddubsw would saturate, so products are formed by vpmaddwd on int16 pairs: the
// activations of two taps of one channel go into one int32 lane (tap 2i in the low half,
// tap 2i+1 in the high half, both zero-extended), the weights likewise (sign-extended,
// packed once per call), and vpmaddwd gives a0*w0 + a1*w1 per channel, exactly. An odd
// last tap pairs with a zero weight. The epilogue is the GEMM's (epilogue_avx2.h), on 16
// channels at a time, so it matches the scalar oracle bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_kernels.h"
#include "epilogue_avx2.h"

namespace int8kit::detail {
namespace {

constexpr int64_t kChannels = 16;  // per step: two ymm of int32 lanes

// 8 activation bytes of tap a in the low int16 of each lane, of tap b in the high one.
inline __m256i pair8(const uint8_t* a, const uint8_t* b) {
  const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)));
  const __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
  return _mm256_or_si256(lo, _mm256_slli_epi32(hi, 16));
}

// Weights of tap pairs as int32 lanes (w[2i][c] low, w[2i+1][c] high): [pairs][cw].
std::vector<int32_t> pack_pairs(const ConvView& wt, int64_t cw) {
  const int64_t taps = wt.p.kh * wt.p.kw, pairs = (taps + 1) / 2;
  std::vector<int32_t> out(static_cast<size_t>(pairs * cw), 0);
  for (int64_t i = 0; i < pairs; ++i)
    for (int64_t c = 0; c < std::min(cw, wt.p.in_channels); ++c) {
      const int32_t w0 = wt.dw_plain[2 * i * wt.cp + c];
      const int32_t w1 = 2 * i + 1 < taps ? wt.dw_plain[(2 * i + 1) * wt.cp + c] : 0;
      out[i * cw + c] = static_cast<int32_t>((static_cast<uint32_t>(w0) & 0xFFFF) |
                                             (static_cast<uint32_t>(w1) << 16));
    }
  return out;
}

// Tap pointers of output pixel (n, y, x); step: how far each moves per output column
// while all taps stay inside horizontally (0 for taps in a padding row).
void set_taps(const DwJob& j, int64_t n, int64_t y, int64_t x, const uint8_t** tap,
              int64_t* step) {
  const ConvParams& p = j.a->wt.p;
  for (int64_t kh = 0; kh < p.kh; ++kh) {
    const int64_t ih = y * p.stride_h - p.pad_h + kh * p.dil_h;
    const bool row_in = ih >= 0 && ih < j.a->h;
    for (int64_t kw = 0; kw < p.kw; ++kw) {
      tap[kh * p.kw + kw] = dw_tap(j, n, ih, x * p.stride_w - p.pad_w + kw * p.dil_w);
      step[kh * p.kw + kw] = row_in ? p.stride_w * p.in_channels : 0;
    }
  }
}

// One output pixel m, all channels. tap[] has an even count (the spare one reads the
// zero-point row, against zero weights). The last block of a channel count that 16 does
// not divide reads its bytes from a copy, so no load passes the end of x.
void pixel(const DwJob& j, const std::vector<PanelParams>& pp, const int32_t* wpair,
           int64_t cw, const uint8_t* const* tap, int64_t pairs, int64_t m) {
  const int64_t C = j.a->wt.p.in_channels;
  for (int64_t b = 0; b * kChannels < C; ++b) {
    const int64_t c0 = b * kChannels;
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    const int32_t* w = wpair + c0;
    if (c0 + kChannels <= C) {
      for (int64_t i = 0; i < pairs; ++i, w += cw) {
        const uint8_t* a = tap[2 * i] + c0;
        const uint8_t* b2 = tap[2 * i + 1] + c0;
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(pair8(a, b2), _mm256_loadu_si256(
                                                              reinterpret_cast<const __m256i*>(w))));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(pair8(a + 8, b2 + 8), _mm256_loadu_si256(
                                                              reinterpret_cast<const __m256i*>(w + 8))));
      }
    } else {
      alignas(16) uint8_t ta[kChannels] = {}, tb[kChannels] = {};
      for (int64_t i = 0; i < pairs; ++i, w += cw) {
        std::memcpy(ta, tap[2 * i] + c0, static_cast<size_t>(C - c0));
        std::memcpy(tb, tap[2 * i + 1] + c0, static_cast<size_t>(C - c0));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(pair8(ta, tb), _mm256_loadu_si256(
                                                              reinterpret_cast<const __m256i*>(w))));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(pair8(ta + 8, tb + 8), _mm256_loadu_si256(
                                                              reinterpret_cast<const __m256i*>(w + 8))));
      }
    }
    finish_row(j.epi, pp[static_cast<size_t>(b)], m, acc0, acc1);
  }
}

}  // namespace

void depthwise_rows_avx2(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvParams& p = j.a->wt.p;
  const int64_t C = p.in_channels, taps = p.kh * p.kw, pairs = (taps + 1) / 2;
  const int64_t cw = (C + kChannels - 1) / kChannels * kChannels;
  const std::vector<int32_t> wpair = pack_pairs(j.a->wt, cw);
  std::vector<PanelParams> pp(static_cast<size_t>(cw / kChannels));
  for (size_t b = 0; b < pp.size(); ++b) load_panel_params(j.epi, static_cast<int64_t>(b), &pp[b]);
  std::vector<const uint8_t*> tap(static_cast<size_t>(2 * pairs), j.zprow);
  std::vector<int64_t> step(static_cast<size_t>(2 * pairs), 0);
  // Output columns whose taps all fall inside the image horizontally: [x_lo, x_hi).
  const int64_t x_lo = std::min<int64_t>(j.ow, (p.pad_w + p.stride_w - 1) / p.stride_w);
  const int64_t right = j.a->w - 1 + p.pad_w - (p.kw - 1) * p.dil_w;  // needs x*sw <= right
  const int64_t x_hi =
      std::max<int64_t>(x_lo, std::min<int64_t>(j.ow, right < 0 ? 0 : right / p.stride_w + 1));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / j.oh, y = r % j.oh;
    for (int64_t x = 0; x < j.ow; ++x) {
      const bool inside = x > x_lo && x < x_hi;  // stepped from the previous column
      if (inside)
        for (int64_t t = 0; t < taps; ++t) tap[t] += step[t];
      else
        set_taps(j, n, y, x, tap.data(), step.data());
      pixel(j, pp, wpair.data(), cw, tap.data(), pairs, r * j.ow + x);
    }
  }
}

}  // namespace int8kit::detail
