// AVX-512 VNNI depthwise 3x3, stride 1 or 2, dilation 1: a whole kernel column per vpdpbusd.
// For each input column (padding included) and 64-channel block, the bytes of input rows
// y-1, y, y+1 and a zero are interleaved into one dword per channel (8 unpacks); the
// weights hold taps (0,kw) (1,kw) (2,kw) and a zero byte likewise, so output pixel x needs
// 3 vpdpbusd per 16 channels (built columns x, x+1, x+2). The unpacks scramble channels:
// vector v, dword 4L+k holds channel 16L+4v+k. Accumulators stay in that order; the u8
// epilogue runs in it (vpackus restores channel order), the others transpose first.
//
// C = 8, 16, 32 would leave most of each vector idle, so P = 64 / C adjacent pixels share
// one: the 64-byte window at pixel q holds channel i % C of pixel q + i / C in byte i
// ("channel" i above). Output vector X (pixels P*X .. P*X+P-1) then needs the windows at
// padded columns P*X + kw, and weights and epilogue inputs repeat every C lanes. A window
// crosses pixels, so the input rows are first copied into rows padded with zero points.
//
// Stride 2 reads built columns 2x, 2x+1, 2x+2 for output pixel x. Super-pixels then copy
// each input row in two phases, even padded columns then odd ones: the taps of P adjacent
// output pixels become P adjacent pixels of one phase (kw = 0: even window X, kw = 1: odd
// window X, kw = 2: even window X shifted by one pixel), as in the stride-1 case.
//
// At stride 1 the columns hold four rows, y-1 .. y+2, in place of the zero byte: output
// row y reads them with taps (w0, w1, w2, 0), row y+1 with (0, w0, w1, w2), so each build
// serves two output rows (see build_col4).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "depthwise_avx512.h"

namespace int8kit::detail {
namespace dw512 {

void load_super_epi(const GemmArgs& e, int32_t x_zp, int64_t c0, int64_t w, BlockEpi* be) {
  alignas(64) int32_t cs[64];
  alignas(64) float ws[64], bias[64];
  GemmArgs r = e;
  for (int i = 0; i < 64; ++i) {
    const int64_t c = c0 + (i & (w - 1));  // i % w, w a power of 2
    cs[i] = e.B.colsum[c];
    if (e.out != OutKind::s32 && e.w_scale_stride != 0) ws[i] = e.w_scale[c];
    if (e.out != OutKind::s32 && e.bias) bias[i] = e.bias[c];
  }
  r.B.colsum = cs;
  if (e.w_scale_stride != 0) r.w_scale = ws;
  if (e.bias) r.bias = bias;
  load_block_epi(r, x_zp, 0, 64, be);
}

namespace {

// The 4x4 transpose of 128-bit chunks (an involution): scrambled <-> channel order.
inline void xpose128(const __m512i* in, __m512i* out) {
  const __m512i t0 = _mm512_shuffle_i32x4(in[0], in[1], 0x44);  // a0 a1 b0 b1
  const __m512i t1 = _mm512_shuffle_i32x4(in[0], in[1], 0xEE);  // a2 a3 b2 b3
  const __m512i t2 = _mm512_shuffle_i32x4(in[2], in[3], 0x44);  // c0 c1 d0 d1
  const __m512i t3 = _mm512_shuffle_i32x4(in[2], in[3], 0xEE);  // c2 c3 d2 d3
  out[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);  // a0 b0 c0 d0
  out[1] = _mm512_shuffle_i32x4(t0, t2, 0xDD);  // a1 b1 c1 d1
  out[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);  // a2 b2 c2 d2
  out[3] = _mm512_shuffle_i32x4(t1, t3, 0xDD);  // a3 b3 c3 d3
}

// Epilogue inputs for a block in scrambled order (u8 path). The zero-point correction is
// where the accumulators start: acc0 = -zp * tap sums.
struct BlockEpiS {
  __m512i acc0[4];
  __m512 s[4], bias[4];
};

inline void scramble_epi(const BlockEpi& be, BlockEpiS* bs) {
  xpose128(be.zpcs, bs->acc0);
  for (int v = 0; v < 4; ++v) bs->acc0[v] = _mm512_sub_epi32(_mm512_setzero_si512(), bs->acc0[v]);
  __m512i t[4], u[4];
  for (int v = 0; v < 4; ++v) t[v] = _mm512_castps_si512(be.s[v]);
  xpose128(t, u);
  for (int v = 0; v < 4; ++v) bs->s[v] = _mm512_castsi512_ps(u[v]);
  for (int v = 0; v < 4; ++v) t[v] = _mm512_castps_si512(be.bias[v]);
  xpose128(t, u);
  for (int v = 0; v < 4; ++v) bs->bias[v] = _mm512_castsi512_ps(u[v]);
}

// One row's 64 bytes of a column, bytes past lmask zero unless FULL.
template <bool FULL>
inline __m512i load_row(const uint8_t* r, __mmask64 lmask) {
  return FULL ? _mm512_loadu_si512(r) : _mm512_maskz_loadu_epi8(lmask, r);
}

// The 4 vectors of one column: byte k of each dword from row k (a, b, c, d).
inline void interleave_col(__m512i a, __m512i b, __m512i c, __m512i d, __m512i* dst) {
  const __m512i ablo = _mm512_unpacklo_epi8(a, b), abhi = _mm512_unpackhi_epi8(a, b);
  const __m512i cdlo = _mm512_unpacklo_epi8(c, d), cdhi = _mm512_unpackhi_epi8(c, d);
  _mm512_store_si512(dst + 0, _mm512_unpacklo_epi16(ablo, cdlo));
  _mm512_store_si512(dst + 1, _mm512_unpackhi_epi16(ablo, cdlo));
  _mm512_store_si512(dst + 2, _mm512_unpacklo_epi16(abhi, cdhi));
  _mm512_store_si512(dst + 3, _mm512_unpackhi_epi16(abhi, cdhi));
}

// Builds the 4 interleaved vectors of one column from its 3 row pointers and a zero byte.
template <bool FULL>
inline void build_col(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, __mmask64 lmask,
                      __m512i* dst) {
  interleave_col(load_row<FULL>(r0, lmask), load_row<FULL>(r1, lmask),
                 load_row<FULL>(r2, lmask), _mm512_setzero_si512(), dst);
}

// build_col with a fourth row in the dwords' last byte: output row y reads it with taps
// (w0, w1, w2, 0), row y + 1 with taps (0, w0, w1, w2), so one build serves two rows.
template <bool FULL = true>
inline void build_col4(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2,
                       const uint8_t* r3, __m512i* dst, __mmask64 lmask = ~__mmask64(0)) {
  interleave_col(load_row<FULL>(r0, lmask), load_row<FULL>(r1, lmask),
                 load_row<FULL>(r2, lmask), load_row<FULL>(r3, lmask), dst);
}

// Lanes hold pixels of w channels each (w = 64 / pixels per vector); in the output, pixel q
// of the vector starts at off + q * (w + gap). gap = 0 when the vector's channels are all of
// the conv's (contiguous pixels), else the channels that other blocks hold (w >= 16 then).
template <OutKind OUT, bool RELU>
__attribute__((always_inline)) inline void finish3(const GemmArgs& e, const BlockEpi& be,
                                                   const BlockEpiS& bs, __mmask64 lmask,
                                                   int64_t off, int64_t w, int64_t gap,
                                                   const __m512i* acc) {
  if constexpr (OUT == OutKind::u8) {
    const __m512i p = u8_packed<RELU>(e, acc, bs.s, bs.bias);  // lane L: channels 16L..16L+15
    uint8_t* y = static_cast<uint8_t*>(e.C) + off;
    if (gap == 0) {
      _mm512_mask_storeu_epi8(y, lmask, p);
    } else {  // pixel q's w bytes land at y + q * (w + gap): the store shifted by q * gap
      const __mmask64 one = (__mmask64(1) << w) - 1;
      for (int64_t q = 0; q * w < 64; ++q)
        if (const __mmask64 m = lmask & (one << (q * w)))
          _mm512_mask_storeu_epi8(y + q * gap, m, p);
    }
  } else {
    __m512i out[4];
    xpose128(acc, out);
    // Vector v starts 16 * v / w pixels in; w is a power of 2, and a shift, where a
    // division cost 12 idiv per 16 vectors (float output 2.3x slower than uint8).
    const int log2_w = __builtin_ctzll(static_cast<uint64_t>(w));
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      if (!be.m[v]) break;
      epi_store16_t<OUT, RELU>(e, off + 16 * v + ((16 * v) >> log2_w) * gap, be.m[v],
                               _mm512_sub_epi32(out[v], be.zpcs[v]), be.s[v], be.bias[v]);
    }
  }
}

// Dwords S .. S+15 of the pair (a, b): the window S/4 channels past a's, for built columns.
template <int S>
inline __m512i shift_dw(__m512i a, __m512i b) {
  if constexpr (S == 0) return a;
  else if constexpr (S == 16) return b;
  else return _mm512_alignr_epi32(b, a, S);
}

// PX output vectors from built columns, stored at off + i*ostep. SH == 0: vector i reads
// columns col[i*P + kw] (P: the pixels per vector, or the stride). S == 2 with SH > 0:
// col[2i] and col[2i + 1] are the even and odd phase windows of vector i (kw = 0 and 1;
// kw = 2 is the even window shifted by one pixel, as below). S == 1, SH > 0 (super-pixels
// of C = 4*SH >= 16 channels): col[i] is the window at padded column P*i, and the window
// kw pixels on is col[i], col[i+1] shifted by kw*C bytes; C is a multiple of 16, so the
// shift moves whole 128-bit lanes, and the unpacks' scrambled order survives it.
template <int PX, int SH, int S, OutKind OUT, bool RELU>
__attribute__((noinline)) void pixels3(const GemmArgs& e, const BlockEpi& be,
                                       const BlockEpiS& bs, const __m512i* col, int64_t P,
                                       const __m512i* w, __mmask64 lmask, int64_t off,
                                       int64_t ostep, int64_t lane_w, int64_t gap) {
  __m512i acc[PX][4];  // u8: starting at -zp * tap sums (the correction, see BlockEpiS)
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
      acc[i][v] = OUT == OutKind::u8 ? bs.acc0[v] : _mm512_setzero_si512();
  if constexpr (SH == 0) {
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m512i wv = _mm512_load_si512(w + kw * 4 + v);
#pragma GCC unroll 8
        for (int i = 0; i < PX; ++i)
          dpbusd(acc[i][v], _mm512_load_si512(col + (i * P + kw) * 4 + v), wv);
      }
  } else {  // a: the (even) window of vector i, b: that of vector i + 1
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m512i w0 = _mm512_load_si512(w + v), w1 = _mm512_load_si512(w + 4 + v),
                    w2 = _mm512_load_si512(w + 8 + v);
      __m512i a = _mm512_load_si512(col + v);
#pragma GCC unroll 8
      for (int i = 0; i < PX; ++i) {
        const __m512i b = _mm512_load_si512(col + S * (i + 1) * 4 + v);
        dpbusd(acc[i][v], a, w0);
        dpbusd(acc[i][v],
               S == 2 ? _mm512_load_si512(col + (2 * i + 1) * 4 + v) : shift_dw<SH>(a, b), w1);
        dpbusd(acc[i][v], shift_dw<S == 2 ? SH : 2 * SH>(a, b), w2);
        a = b;
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < PX; ++i)
    finish3<OUT, RELU>(e, be, bs, lmask, off + i * ostep, lane_w, gap, acc[i]);
}

// Built columns row_block3 holds at once (16 KB, within L1 with the rows they come from):
// a row of 224 pixels built whole ran 1.2x slower (dw64@224).
constexpr int64_t kMaxCols = 64;
constexpr int kPx = 4;  // output vectors per pixels3 call in a row's main loop

// One output row, one block: builds the s * (ow - 1) + 3 columns the row reads (stride s),
// then the pixels, in chunks of at most kMaxCols columns (a multiple of kPx pixels). With
// pair (stride 1), rows r and r + 1 from the same columns (see build_col4).
template <OutKind OUT, bool RELU>
__attribute__((noinline)) void row_block3(const DwJob& j, int64_t r, bool pair, int64_t b,
                                          const __m512i* wpk, __m512i* cols) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  const GemmArgs& e = j.epi;
  const int64_t C = p.in_channels, s = p.stride_w;
  const int64_t n = r / j.oh, y = r % j.oh;
  const int64_t c0 = b * kDwBlock, left = C - c0;
  const __mmask64 lmask = left >= 64 ? ~__mmask64(0) : ((__mmask64(1) << left) - 1);
  BlockEpi be;
  load_block_epi(e, a.x_zp, c0, left, &be);
  BlockEpiS bs;
  if constexpr (OUT == OutKind::u8) scramble_epi(be, &bs);
  const uint8_t* rp[4];
  int64_t rs[4];
  for (int k = 0; k < 4; ++k) {  // the fourth row is read with zero taps unless pair
    const int64_t ih = y * s - p.pad_h + k;
    const bool in = ih >= 0 && ih < a.h;
    rp[k] = in ? dw_tap(j, n, ih, 0) + c0 : j.zprow + c0;
    rs[k] = in ? C : 0;
  }
  const uint8_t* zp = j.zprow + c0;
  const __m512i* w = wpk + b * 12;
  __m512i w_next[12];  // taps (0, w0, w1, w2): row r + 1
  if (pair)
    for (int i = 0; i < 12; ++i) w_next[i] = _mm512_slli_epi32(_mm512_load_si512(w + i), 8);
  const int64_t row_off = r * j.ow * C + c0;
  const int64_t chunk =
      s * (j.ow - 1) + 3 <= kMaxCols ? j.ow : ((kMaxCols - 3) / s + 1) / kPx * kPx;
  for (int64_t x0 = 0; x0 < j.ow; x0 += chunk) {
    const int64_t x1 = std::min(j.ow, x0 + chunk);
    for (int64_t cc = 0; cc < s * (x1 - x0 - 1) + 3; ++cc) {  // padded column s*x0 + cc
      const int64_t ix = s * x0 + cc - p.pad_w;
      const bool in = ix >= 0 && ix < a.w;
      const uint8_t* q0 = in ? rp[0] + ix * rs[0] : zp;
      const uint8_t* q1 = in ? rp[1] + ix * rs[1] : zp;
      const uint8_t* q2 = in ? rp[2] + ix * rs[2] : zp;
      __m512i* dst = cols + cc * 4;
      if (pair) {
        const uint8_t* q3 = in ? rp[3] + ix * rs[3] : zp;
        if (left >= 64)
          build_col4<true>(q0, q1, q2, q3, dst);
        else
          build_col4<false>(q0, q1, q2, q3, dst, lmask);
      } else if (left >= 64) {
        build_col<true>(q0, q1, q2, lmask, dst);
      } else {
        build_col<false>(q0, q1, q2, lmask, dst);
      }
    }
    for (int k = 0; k <= pair; ++k) {
      const __m512i* wk = k ? w_next : w;
      const int64_t off = row_off + k * j.ow * C;
      int64_t x = x0;
      for (; x + kPx <= x1; x += kPx)
        pixels3<kPx, 0, 1, OUT, RELU>(e, be, bs, cols + (x - x0) * s * 4, s, wk, lmask,
                                      off + x * C, C, 64, 0);
      for (; x < x1; ++x)
        pixels3<1, 0, 1, OUT, RELU>(e, be, bs, cols + (x - x0) * s * 4, s, wk, lmask,
                                    off + x * C, C, 64, 0);
    }
  }
}

// Output rows [r0, r1) of the w = 64 / P channels from c0 (P > 1), P pixels per vector:
// ceil(ow / P) vectors per row, the last one partial when P does not divide ow (masked
// stores of its valid pixels). Either the conv has exactly w channels (c0 = 0), or they
// are the narrow tail (w = 16 or 32) of a wider one, whose other blocks go one pixel per
// vector. w >= 16 builds the windows at padded columns P*X only (SH = w/4, see pixels3),
// w = 8 those at P*X + kw. Stride S = 2 (w >= 16 only) builds the even and odd phase
// windows at phase pixel P*X (a conv of w channels only; see built_columns_apply).
template <int SH, int S, OutKind OUT, bool RELU>
void super_rows3(const DwJob& j, int64_t r0, int64_t r1, int64_t P, int64_t c0,
                 const __m512i* w, __m512i* cols) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  const GemmArgs& e = j.epi;
  const int64_t C = p.in_channels, lw = 64 / P, gap = C - lw;
  const int64_t nx = (j.ow + P - 1) / P, full = j.ow / P;
  static_assert(S == 1 || SH > 0, "stride 2 needs super-pixels of 16 or 32 channels");
  // Padded rows of S phases of P*(nx+1) pixels of lw channels hold every window read: NS
  // input row slots (an input row is copied once while the output rows move down) and a
  // row of zero points. Stride 1 goes two output rows at a time (see build_col4), reading
  // 4 input rows; stride 2 one row, reading 3.
  constexpr int NS = S == 1 ? 4 : 3;
  const int64_t phase = 64 * (nx + 1), len = S * phase;
  std::vector<uint8_t> pad(static_cast<size_t>((NS + 1) * len), static_cast<uint8_t>(a.x_zp));
  int64_t held[NS];  // flattened (n, ih) of each slot
  std::fill_n(held, NS, -1);
  BlockEpi be;
  load_super_epi(e, a.x_zp, c0, lw, &be);
  BlockEpiS bs;
  if constexpr (OUT == OutKind::u8) scramble_epi(be, &bs);
  const int64_t tail_bytes = (j.ow - full * P) * lw;  // valid bytes of the partial vector
  BlockEpi tail = be;
  for (int v = 0; v < 4; ++v) tail.m[v] = mask16(tail_bytes - 16 * v);
  const __mmask64 all = ~__mmask64(0), tail_mask = (__mmask64(1) << tail_bytes) - 1;
  const int64_t cstep = SH ? S : P;  // built columns per output vector
  __m512i w_next[12];  // taps (0, w0, w1, w2): the second row of a pair (stride 1)
  if constexpr (S == 1)
    for (int i = 0; i < 12; ++i) w_next[i] = _mm512_slli_epi32(_mm512_load_si512(w + i), 8);
  const int64_t row_lines = (a.w * C + 63) / 64;
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / j.oh, y = r % j.oh;
    const bool pair = S == 1 && r + 1 < r1 && y + 1 < j.oh;
    const uint8_t* q[4];
    for (int k = 0; k < 3 + pair; ++k) {
      const int64_t ih = y * S - p.pad_h + k, slot = ih % NS;
      q[k] = pad.data() + (ih >= 0 && ih < a.h ? slot : NS) * len;
      if (ih < 0 || ih >= a.h || held[slot] == n * a.h + ih) continue;
      const uint8_t* src = dw_tap(j, n, ih, 0) + c0;
      uint8_t* row = pad.data() + slot * len;
      if constexpr (S == 2) {  // padded column pc to pixel pc / 2 of phase pc % 2
        constexpr int64_t kLw = 4 * SH;
        const int64_t xend = std::min(a.w, 2 * P * (nx + 1) - p.pad_w);  // past: unread
        for (int64_t x = 0; x < xend; ++x) {
          const int64_t pc = x + p.pad_w;
          std::memcpy(row + (pc & 1) * phase + (pc >> 1) * kLw, src + x * C, kLw);
        }
      } else if (gap == 0) {
        std::copy_n(src, a.w * C, row + p.pad_w * lw);
      } else {
        for (int64_t x = 0; x < a.w; ++x) std::memcpy(row + (p.pad_w + x) * lw, src + x * C, lw);
      }
      held[slot] = n * a.h + ih;
    }
    if (!pair) q[3] = pad.data() + NS * len;  // read with a zero tap
    // Stride 1: the two input rows the next step adds, fetched line by line while this
    // step's columns are built. With cold caches their copy otherwise waits on L3
    // (dw32@112 in rotation with the peers, batch 1 and 8: 1.07-1.15x); at stride 2 it
    // cost 3-7%. Contiguous rows only (gap 0).
    const int64_t step = pair ? 2 : 1, ih_next = y + 2 + step - p.pad_h;
    const bool fetch = S == 1 && gap == 0 && r + step < r1 && y + step < j.oh;
    const uint8_t* next[2] = {};
    for (int k = 0; k < 2; ++k)
      if (fetch && ih_next + k >= 0 && ih_next + k < a.h) next[k] = dw_tap(j, n, ih_next + k, 0);
    auto fetch_next = [&](int64_t line) {
      for (int k = 0; k < 2; ++k)
        if (next[k] && line < row_lines) _mm_prefetch(next[k] + line * 64, _MM_HINT_T0);
    };
    if constexpr (S == 2) {  // even window X at cols[2X], odd window X at cols[2X + 1]
      for (int64_t m = 0; m <= 2 * nx; ++m) {
        const int64_t off = m % 2 * phase + m / 2 * 64;
        build_col<true>(q[0] + off, q[1] + off, q[2] + off, all, cols + m * 4);
      }
    } else if constexpr (SH > 0) {
      for (int64_t x = 0; x <= nx; ++x) {  // windows at padded columns P*x
        fetch_next(x);
        build_col4(q[0] + x * 64, q[1] + x * 64, q[2] + x * 64, q[3] + x * 64, cols + x * 4);
      }
    } else {
      for (int64_t cc = 0; cc < P * (nx - 1) + 3; ++cc) {
        if ((cc & (P - 1)) == 0) fetch_next(cc / P);
        if ((cc & (P - 1)) < 3)  // columns P*x + kw only (P is a power of 2: no division)
          build_col4(q[0] + cc * lw, q[1] + cc * lw, q[2] + cc * lw, q[3] + cc * lw,
                     cols + cc * 4);
      }
    }
    for (int64_t k = 0; k < step; ++k) {
      const __m512i* wk = k ? w_next : w;
      // Output vector x starts at row_off + x * vstep.
      const int64_t row_off = (r + k) * j.ow * C + c0, vstep = P * C;
      int64_t x = 0;
      for (; x + kPx <= full; x += kPx)
        pixels3<kPx, SH, S, OUT, RELU>(e, be, bs, cols + x * cstep * 4, P, wk, all,
                                       row_off + x * vstep, vstep, lw, gap);
      for (; x < full; ++x)
        pixels3<1, SH, S, OUT, RELU>(e, be, bs, cols + x * cstep * 4, P, wk, all,
                                     row_off + x * vstep, vstep, lw, gap);
      if (tail_bytes)
        pixels3<1, SH, S, OUT, RELU>(e, tail, bs, cols + x * cstep * 4, P, wk, tail_mask,
                                     row_off + x * vstep, vstep, lw, gap);
    }
    r += step;
  }
}

// Output rows per pass when a narrow tail follows the full blocks: the tail's few input
// rows are then still in cache, and its setup (padded rows, epilogue lanes) is amortized.
constexpr int64_t kTailRows = 8;

// Rows [r0, r1): P > 1 as above; P == 1 goes block by block, one pixel per vector, except
// a narrow last block of tail_w = 16 or 32 channels, which goes P = 64 / tail_w pixels per
// vector (one pixel per vector would leave 3/4 or 1/2 of each vector idle). Stride S.
template <int S, OutKind OUT, bool RELU>
void rows3(const DwJob& j, int64_t r0, int64_t r1, int64_t P, int64_t tail_w, const __m512i* w,
           __m512i* cols) {
  if (P == 2) return super_rows3<8, S, OUT, RELU>(j, r0, r1, P, 0, w, cols);
  if (P == 4) return super_rows3<4, S, OUT, RELU>(j, r0, r1, P, 0, w, cols);
  if constexpr (S == 1)
    if (P == 8) return super_rows3<0, S, OUT, RELU>(j, r0, r1, P, 0, w, cols);
  const int64_t blocks = j.a->wt.cp / kDwBlock, full = tail_w ? blocks - 1 : blocks;
  const __m512i* tail_wts = w + full * 12;
  for (int64_t c = r0; c < r1; c += kTailRows) {
    const int64_t ce = std::min(r1, c + kTailRows);
    for (int64_t r = c; r < ce;) {  // stride 1: two rows of one image at a time
      const bool pair = S == 1 && r + 1 < ce && r % j.oh + 1 < j.oh;
      for (int64_t b = 0; b < full; ++b) row_block3<OUT, RELU>(j, r, pair, b, w, cols);
      r += pair ? 2 : 1;
    }
    if constexpr (S == 1) {  // stride 2 has no narrow tail here (see built_columns_apply)
      if (tail_w == 32) super_rows3<8, S, OUT, RELU>(j, c, ce, 2, full * kDwBlock, tail_wts, cols);
      if (tail_w == 16) super_rows3<4, S, OUT, RELU>(j, c, ce, 4, full * kDwBlock, tail_wts, cols);
    }
  }
}

using Rows3Fn = void (*)(const DwJob&, int64_t, int64_t, int64_t, int64_t, const __m512i*,
                         __m512i*);

template <int S>
Rows3Fn rows3_for(const GemmArgs& e) {
  switch (e.out) {
    case OutKind::s32: return rows3<S, OutKind::s32, false>;
    case OutKind::f32:
      return e.relu ? rows3<S, OutKind::f32, true> : rows3<S, OutKind::f32, false>;
    case OutKind::u8: return e.relu ? rows3<S, OutKind::u8, true> : rows3<S, OutKind::u8, false>;
  }
  return rows3<S, OutKind::s32, false>;
}

// Weights of block b, column kw, vector v: dword 4L+k = channel c0 + (16L+4v+k) % span
// (span = 64, or the lane width w of super-pixels, for the last block tail_span; a power
// of 2), bytes (w[0][kw], w[1][kw], w[2][kw], 0) of that channel (dw_plain is zero past C).
void pack_w3(const ConvView& wt, int64_t span, int64_t tail_span, __m512i* out) {
  const int64_t blocks = wt.cp / kDwBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t sb = b == blocks - 1 ? tail_span : span;
    for (int kw = 0; kw < 3; ++kw)
      for (int v = 0; v < 4; ++v) {
        alignas(64) int8_t buf[64];
        for (int L = 0; L < 4; ++L)
          for (int k = 0; k < 4; ++k) {
            const int64_t c = b * kDwBlock + ((16 * L + 4 * v + k) & (sb - 1));
            int8_t* d = buf + 4 * (4 * L + k);
            for (int kh = 0; kh < 3; ++kh) d[kh] = wt.dw_plain[(kh * 3 + kw) * wt.cp + c];
            d[3] = 0;
          }
        out[(b * 3 + kw) * 4 + v] = _mm512_load_si512(buf);
      }
  }
}

// Pixels per vector of the built-column kernels: 64 / C for C = 8, 16, 32 (then one
// block), else 1.
int64_t pixels_per_vector(int64_t C) { return C >= 8 && C < 64 && 64 % C == 0 ? 64 / C : 1; }

}  // namespace

// 3x3, dilation 1, stride 1, or stride 2 unless C = 8 or the last block has 16 or 32 of
// several blocks' channels (those went 1.03-1.25x slower than the general kernel, which
// reads all of a pixel's channels at once: dw96 at 112 and 56 pixels).
bool built_columns_apply(const ConvParams& p) {
  const int64_t C = p.in_channels;
  const bool s2 = pixels_per_vector(C) <= 4 && narrow_last_block(C) == 0;
  return p.kh == 3 && p.kw == 3 && p.dil_h == 1 && p.dil_w == 1 && p.stride_h == p.stride_w &&
         (p.stride_w == 1 || (p.stride_w == 2 && s2));
}

void depthwise3x3_rows(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvView& wt = j.a->wt;
  const int64_t C = wt.p.in_channels, blocks = wt.cp / kDwBlock, s = wt.p.stride_w;
  const int64_t P = pixels_per_vector(C);
  const int64_t tail_w = narrow_last_block(C);  // goes 64 / tail_w pixels per vector
  // Columns built: s * (ow - 1) + 3 when P == 1, fewer otherwise.
  const int64_t ncol = s * (P * ((j.ow + P - 1) / P) + 2);
  struct alignas(64) Z { int8_t b[64]; };
  std::vector<Z> wbuf(static_cast<size_t>(blocks * 12)), cbuf(static_cast<size_t>(ncol * 4));
  __m512i* wpk = reinterpret_cast<__m512i*>(wbuf.data());
  __m512i* cols = reinterpret_cast<__m512i*>(cbuf.data());
  pack_w3(wt, 64 / P, tail_w ? tail_w : 64 / P, wpk);
  (s == 1 ? rows3_for<1>(j.epi) : rows3_for<2>(j.epi))(j, r0, r1, P, tail_w, wpk, cols);
}

}  // namespace dw512
}  // namespace int8kit::detail
