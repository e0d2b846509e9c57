// Internal: per-row dynamic quantization of a row range, shared by quantize_dynamic_u8 and
// the fused linear driver (which quantizes each row block just before its GEMM tiles).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace int8kit::detail {

// Rows [r0, r1) of x (row stride ldx) into q (row stride ldq), one (scale, zp) per row in
// scale[m], zp[m]. Returns false at the first row holding NaN or Inf (rest unspecified).
bool quantize_rows_u8(const KernelTable& kt, const float* x, int64_t r0, int64_t r1, int64_t K,
                      int64_t ldx, uint8_t* q, int64_t ldq, float* scale, int32_t* zp);

}  // namespace int8kit::detail
