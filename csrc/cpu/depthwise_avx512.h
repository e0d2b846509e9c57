// What the two AVX-512 VNNI depthwise kernels share: depthwise_avx512.cpp (any kernel,
// weights expanded per channel) and depthwise3x3_avx512.cpp (3x3 from built columns).
// Include only from files compiled with the AVX-512 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "conv_kernels.h"
#include "epilogue_avx512.h"

namespace int8kit::detail::dw512 {

inline void dpbusd(__m512i& acc, __m512i a, __m512i w) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
}

inline __mmask16 mask16(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// Per-block epilogue inputs, in channel order: zp * tap sums, scales, bias, masks.
struct BlockEpi {
  __mmask16 m[4];
  __m512i zpcs[4];
  __m512 s[4], bias[4];
};

inline void load_block_epi(const GemmArgs& e, int32_t x_zp, int64_t c0, int64_t left,
                           BlockEpi* be) {
  const __m512i zp = _mm512_set1_epi32(x_zp);
  for (int v = 0; v < 4; ++v) {
    be->m[v] = mask16(left - 16 * v);
    be->zpcs[v] = _mm512_mullo_epi32(zp, _mm512_loadu_si512(e.B.colsum + c0 + 16 * v));
    be->s[v] = be->bias[v] = _mm512_setzero_ps();
    if (e.out != OutKind::s32) {
      be->s[v] = epi_scale16(e, 0, c0 + 16 * v, be->m[v]);
      be->bias[v] = epi_bias16(e, c0 + 16 * v, be->m[v]);
    }
  }
}

// epi_store16_t's u8 arithmetic, lane for lane, on 4 vectors of accumulators that already
// hold the zero-point correction, packed to bytes: byte 4r + a of 128-bit lane L comes from
// lane 4L + a of vector r.
template <bool RELU>
__attribute__((always_inline)) inline __m512i u8_packed(const GemmArgs& e, const __m512i* acc,
                                                        const __m512* s, const __m512* bias) {
  __m512i q[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), s[r], bias[r]);
    if constexpr (RELU) y = _mm512_max_ps(y, _mm512_setzero_ps());
    // The clamp at 0 is left to the saturating packs below (see requant16_s32).
    q[r] = requant16_s32(y, _mm512_set1_ps(e.out_inv_scale),
                         _mm512_set1_ps(static_cast<float>(e.out_zp)));
  }
  // q <= 255: the saturating packs map q < 0 to 0 and are exact above.
  return _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]), _mm512_packus_epi32(q[2], q[3]));
}

// The channels of a narrow last block: 16 or 32 left after full blocks, else 0.
int64_t narrow_last_block(int64_t C);

// Epilogue inputs for w = 64 / P channels from c0 repeated P times: lane i is channel
// c0 + i % w.
void load_super_epi(const GemmArgs& e, int32_t x_zp, int64_t c0, int64_t w, BlockEpi* be);

// Whether depthwise3x3_rows computes p (3x3, dilation 1, stride 1 or 2, with exceptions).
bool built_columns_apply(const ConvParams& p);

// Output rows [r0, r1) of the flattened (n, oh) index, when built_columns_apply.
void depthwise3x3_rows(const DwJob& j, int64_t r0, int64_t r1);

}  // namespace int8kit::detail::dw512
