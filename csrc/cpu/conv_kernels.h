// Internal: the per-ISA depthwise kernels and what they share. conv.cpp picks one by path.
#pragma once

#include <cstdint>
#include <functional>

#include "int8kit/conv.h"
#include "int8kit/gemm.h"

namespace int8kit::detail {

// The conv epilogue in GemmArgs form, for the whole NHWC output (row stride out_channels;
// group offsets are added by the caller). Shared by the fast paths and the scalar oracle.
GemmArgs conv_epilogue_args(const ConvArgs& a, int64_t out_channels);

// One depthwise call, validated. `epi` carries the epilogue in GemmArgs form (per-tensor
// activation parameters, B.colsum = per-channel tap sums, B.n = channels, C = y, ldc = C)
// so the scalar epilogue of epilogue_ref.h applies unchanged.
struct DwJob {
  const ConvArgs* a;
  int64_t oh, ow;
  const uint8_t* zprow;  // >= cp + 64 bytes of x_zp: what padded taps read
  GemmArgs epi;
  int64_t x_row0 = 0;  // a->x starts at this row of the flattened (n, ih) (banded input)
};

// Computes output rows [r0, r1) of the flattened (n, oh) index.
using DepthwiseRowsFn = void (*)(const DwJob& job, int64_t r0, int64_t r1);

// True when conv2d runs a (its shape, parameters and output kind) as an implicit GEMM on
// this path, reading a copy of x with the padding written out. A caller that already holds
// x in that form (border = x_zp) can pass it as an (h + 2*pad_h) x (w + 2*pad_w) input
// with the view's padding set to 0. False where that copy would dwarf x and y.
bool conv_uses_implicit_gemm(const ConvArgs& a, Isa isa);

// Start of the input pixel a tap reads, or zprow when the tap falls in the padding.
inline const uint8_t* dw_tap(const DwJob& j, int64_t n, int64_t ih, int64_t iw) {
  const ConvArgs& a = *j.a;
  if (ih < 0 || ih >= a.h || iw < 0 || iw >= a.w) return j.zprow;
  return a.x + ((n * a.h + ih - j.x_row0) * a.w + iw) * a.wt.p.in_channels;
}

void depthwise_rows_scalar(const DwJob&, int64_t, int64_t);

// Depthwise conv2d whose input is produced band by band: before a thread computes output
// rows [r0, r1) of one image (flattened (n, oh) index), prep(r0, r1, &row0) returns an
// NHWC uint8 buffer laid out as args.x would be from its flattened (n, ih) row row0 on,
// holding at least the input rows those output rows' windows read. The kernels may also
// read the image's next kDwRowsPastWindows * dil_h rows (with zero weights: the lane-row
// kernels' spare rows), so the buffer must span them too, garbage or not. Each thread
// calls prep from its own thread, so a thread_local buffer keeps the bands private and hot
// in cache. args.x is not read.
constexpr int64_t kDwRowsPastWindows = 3;
using DwPrepFn = std::function<const uint8_t*(int64_t r0, int64_t r1, int64_t* row0)>;
void conv2d_depthwise_banded(const ConvArgs& args, int nthreads, Isa isa, const DwPrepFn& prep);
// Layout changes for conv2d_dynamic_f32, over pixels [p0, p1) of one image of hw pixels:
// q[p][c] = quantize(x[c][p]) (quantize_u8's formula), and out[c][p] = y[p][c].
#if INT8KIT_HAVE_X86_KERNELS
void nchw_to_nhwc_u8_avx512(const float* x, int64_t c, int64_t hw, int64_t p0, int64_t p1,
                            float inv_scale, int32_t zp, uint8_t* q);
void nhwc_to_nchw_f32_avx512(const float* y, int64_t c, int64_t hw, int64_t p0, int64_t p1,
                             float* out);
#endif

#if INT8KIT_HAVE_X86_KERNELS
void depthwise_rows_avx2(const DwJob&, int64_t, int64_t);
void depthwise_rows_avxvnni(const DwJob&, int64_t, int64_t);
void depthwise_rows_avx512vnni(const DwJob&, int64_t, int64_t);
#endif

}  // namespace int8kit::detail
