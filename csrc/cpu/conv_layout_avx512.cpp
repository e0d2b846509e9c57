// AVX-512 layout changes around the conv kernels, on 16x16 float tiles (masked at the
// edges): NCHW float -> NHWC uint8 with the quantize formula of quantize_avx512.cpp (bit
// for bit), and NHWC float -> NCHW float for the output.
#include <immintrin.h>

#include <algorithm>

#include "conv_kernels.h"

namespace int8kit::detail {
namespace {

// In place: r[i] lane j <-> r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows: 2x2 blocks of single floats
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 2x2 blocks of float pairs
    for (int k = 0; k < 2; ++k) {
      r[i + k] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + k]), _mm512_castps_pd(t[i + 2 + k])));
      r[i + 2 + k] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + k]), _mm512_castps_pd(t[i + 2 + k])));
    }
  }
  for (int i = 0; i < 16; i += 8) {  // 128-bit lanes: 2x2 blocks of 4x4 tiles
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0x88);
      t[i + 4 + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0xDD);
    }
  }
  for (int k = 0; k < 8; ++k) {  // 256-bit halves
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
  }
  // The in-lane unpacks leave columns 1 and 2 of each group of four swapped.
  __m512 o[16];
  static constexpr int kMap[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
  for (int i = 0; i < 16; ++i) o[i] = r[kMap[i]];
  for (int i = 0; i < 16; ++i) r[i] = o[i];
}

inline __mmask16 mask16(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// Loads rows [0, rows) of a 16-column tile (row stride ld, `cols` valid columns); zeros elsewhere.
inline void load_tile(const float* src, int64_t ld, int64_t rows, int64_t cols, __m512 r[16]) {
  const __mmask16 m = mask16(cols);
  for (int i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * ld) : _mm512_setzero_ps();
}

}  // namespace

void nchw_to_nhwc_u8_avx512(const float* x, int64_t c, int64_t hw, int64_t p0, int64_t p1,
                            float inv_scale, int32_t zp, uint8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale), z = _mm512_set1_ps(static_cast<float>(zp));
  __m512 r[16];
  for (int64_t p = p0; p < p1; p += 16) {
    const int64_t np = std::min<int64_t>(16, p1 - p);
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, c - c0);
      load_tile(x + c0 * hw + p, hw, nc, np, r);
      transpose16(r);
      const __mmask16 m = mask16(nc);
      for (int i = 0; i < np; ++i) {
        __m512 t = _mm512_fmadd_ps(r[i], inv, z);
        t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(255.f));
        const __m512i v = _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_mask_cvtepi32_storeu_epi8(q + (p + i) * c + c0, m, v);
      }
    }
  }
}

void nhwc_to_nchw_f32_avx512(const float* y, int64_t c, int64_t hw, int64_t p0, int64_t p1,
                             float* out) {
  __m512 r[16];
  for (int64_t p = p0; p < p1; p += 16) {
    const int64_t np = std::min<int64_t>(16, p1 - p);
    const __mmask16 m = mask16(np);
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, c - c0);
      load_tile(y + p * c + c0, c, np, nc, r);
      transpose16(r);
      for (int i = 0; i < nc; ++i) _mm512_mask_storeu_ps(out + (c0 + i) * hw + p, m, r[i]);
    }
  }
}

}  // namespace int8kit::detail
