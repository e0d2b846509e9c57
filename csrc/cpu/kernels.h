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
// Implicit-GEMM activations (conv without im2col): row m of A is n_seg runs of seg_len
// bytes (a multiple of 4), run s starting at rows[m] + seg_off[s]; n_seg * seg_len == K.
struct GatheredA {
  const uint8_t* const* rows;  // one pointer per row of the GemmArgs (A and lda unused)
  const int64_t* seg_off;
  int64_t n_seg;
  int64_t seg_len;
};
using GemmGatherBlockFn = void (*)(const GemmArgs& args, const GatheredA& a, int64_t m0,
                                   int64_t m1, int64_t p0, int64_t p1);
using MinMaxFn = MinMax (*)(const float* x, int64_t n);
// q[i] = clamp(nearbyint(fmaf(x[i], inv_scale, zp)), 0, 255)
using QuantizeFn = void (*)(const float* x, int64_t n, float inv_scale, int32_t zp,
                            uint8_t* q);

struct KernelTable {
  GemmBlockFn gemm_block;
  MinMaxFn minmax;
  QuantizeFn quantize_u8;
  GemmGatherBlockFn gemm_gather_block = nullptr;  // paths without one use im2col
  // The micro-kernel's row count for a tile of `panels` panels over all columns, so that
  // the driver's row tiles are whole multiples of it; null: 8.
  int (*tile_rows)(int64_t panels) = nullptr;
  // Its panel count for such a tile: column splits in whole multiples of it keep every
  // part on full-width tiles, without a narrow tail; null: 3.
  int (*tile_panels)(int64_t panels) = nullptr;
  // Rows a block needs for the kernel to run at its rate (AVX2 widens each panel once per
  // block); the driver cuts no shorter row tiles where it can; 0: any.
  int64_t min_tile_rows = 0;
};

void gemm_block_scalar(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
MinMax minmax_scalar(const float*, int64_t);
void quantize_u8_scalar(const float*, int64_t, float, int32_t, uint8_t*);

#if INT8KIT_HAVE_X86_KERNELS
void gemm_block_avx2(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
int tile_rows_avx2(int64_t panels);
// Below this many rows in a block, the AVX2 kernel takes its direct path (see gemm_avx2.cpp).
constexpr int64_t kAvx2WidenRows = 12;
void gemm_block_avxvnni(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
MinMax minmax_avx2(const float*, int64_t);
void quantize_u8_avx2(const float*, int64_t, float, int32_t, uint8_t*);

void gemm_block_avx512vnni(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
void gemm_gather_block_avx512vnni(const GemmArgs&, const GatheredA&, int64_t, int64_t, int64_t,
                                  int64_t);
MinMax minmax_avx512(const float*, int64_t);
int tile_rows_avx512vnni(int64_t panels);
int tile_panels_avx512vnni(int64_t panels);
void quantize_u8_avx512(const float*, int64_t, float, int32_t, uint8_t*);

void gemm_block_amx(const GemmArgs&, int64_t, int64_t, int64_t, int64_t);
int tile_rows_amx(int64_t panels);
int tile_panels_amx(int64_t panels);
#endif

const KernelTable& kernels_for(Isa isa);

// Whether the path's conv and quantization kernels are the AVX-512 ones: amx_int8 differs
// from avx512_vnni only in the GEMM.
inline bool runs_avx512_kernels(Isa isa) {
  return isa == Isa::avx512_vnni || isa == Isa::amx_int8;
}

// Cache blocking shared by the GEMM driver and the AVX-512 kernel: a packed weight up to
// 1 MB stays in L2 (2 MB per core on the CPUs this targets) beside the rows of A.
constexpr int64_t kSmallRowBlockBytes = int64_t(64) << 10;
constexpr int64_t kLargeRowBlockBytes = int64_t(1) << 20;
constexpr int64_t kL2WeightBytes = int64_t(1) << 20;
inline bool weight_fits_l2(const PackedView& b) {
  return b.n_panels * b.panel_bytes() <= kL2WeightBytes;
}

}  // namespace int8kit::detail
