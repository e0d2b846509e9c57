// Internal: the per-ISA kernel entry points and the table that dispatch picks from.
#pragma once

#include <cstdint>

#include "int8kit/gemm.h"
#include "int8kit/isa.h"
#include "int8kit/quantize.h"

namespace int8kit::detail {

// Computes output rows [m0, m1) and column panels [p0, p1) (columns 16*p0 .. min(16*p1, N))
// over the full K, epilogue included. Arguments are already validated.
using GemmBlockFn = void (*)(const GemmArgs& args, int64_t m0, int64_t m1, int64_t p0,
                             int64_t p1);
using MinMaxFn = MinMax (*)(const float* x, int64_t n);
// q[i] = clamp(nearbyint(fmaf(x[i], inv_scale, zp)), 0, 255)
using QuantizeFn = void (*)(const float* x, int64_t n, float inv_scale, int32_t zp,
                            uint8_t* q);

struct KernelTable {
  GemmBlockFn gemm_block;
  MinMaxFn minmax;
  QuantizeFn quantize_u8;
};

void gemm_block_scalar(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
MinMax minmax_scalar(const float*, int64_t);
void quantize_u8_scalar(const float*, int64_t, float, int32_t, uint8_t*);

#if INT8KIT_HAVE_X86_KERNELS
void gemm_block_avx2(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
MinMax minmax_avx2(const float*, int64_t);
void quantize_u8_avx2(const float*, int64_t, float, int32_t, uint8_t*);

void gemm_block_avx512vnni(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
MinMax minmax_avx512(const float*, int64_t);
void quantize_u8_avx512(const float*, int64_t, float, int32_t, uint8_t*);
#endif

const KernelTable& kernels_for(Isa isa);

}  // namespace int8kit::detail
