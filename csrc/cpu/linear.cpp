// Fused float-input linear: activation quantization and GEMM in one call (see linear.h).
#include "int8kit/linear.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <vector>

#include "arg_checks.h"
#include "int8kit/quantize.h"
#include "kernels.h"
#include "quantize_rows.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

// The quantized activations and their parameters live in buffers owned by the calling
// thread: no allocation per call once they have grown, and concurrent callers (the GIL
// is released) never share one.
struct Scratch {
  std::vector<uint8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> zp;
};

Scratch& scratch(int64_t q_bytes, int64_t nparams) {
  thread_local Scratch s;
  if (static_cast<int64_t>(s.q.size()) < q_bytes) s.q.resize(q_bytes);
  if (static_cast<int64_t>(s.scale.size()) < nparams) {
    s.scale.resize(nparams);
    s.zp.resize(nparams);
  }
  return s;
}

// Checked here, before any work: the fused route calls the kernels directly, without
// gemm()'s checks (a NaN bias raised at M = 8 and came out as NaN at M = 2000).
void check(const LinearArgs& a) {
  if (a.M < 0) throw std::invalid_argument("M must be >= 0");
  if (a.M > 0 && a.x == nullptr) throw std::invalid_argument("x is null");
  if (a.B.weights == nullptr) throw std::invalid_argument("packed weight is empty");
  if (a.w_scale == nullptr) throw std::invalid_argument("w_scale is null");
  detail::check_scales(a.w_scale, a.w_scale_stride == 0 ? 1 : a.B.n, "w_scale");
  if (a.bias != nullptr) detail::check_finite(a.bias, a.B.n, "bias");
}

GemmArgs gemm_args(const LinearArgs& a, const uint8_t* q, OutKind out, void* y) {
  GemmArgs g;
  g.M = a.M;
  g.A = q;
  g.lda = a.B.k;
  g.B = a.B;
  g.out = out;
  g.C = y;
  g.ldc = a.B.n;
  g.w_scale = a.w_scale;
  g.w_scale_stride = a.w_scale_stride;
  g.bias = a.bias;
  g.relu = a.relu;
  return g;
}

// Rows per block of the fused per-row path. Small blocks (uint8 rows about 24 KB, in L1
// when the tiles read them; outputs written a few rows at a time) while the whole weight
// stays in L2 between blocks; when it cannot, blocks as tall as the GEMM's own row
// blocking (~512 KB of A), so the weight is streamed from memory as rarely as before.
int64_t rows_per_block(int64_t K, int64_t N) {
  const int64_t small = std::max<int64_t>(16, (int64_t(24) << 10) / K / 8 * 8);
  if (K * N <= (int64_t(1) << 20)) return small;
  return std::max<int64_t>(small, (int64_t(512) << 10) / K / 8 * 8);
}

// Per-row dynamic linear with quantization fused into the GEMM's row loop: threads claim
// row blocks, quantize them and run every column of every layer on those rows, so
// quantization is split over the threads with the GEMM and its uint8 rows never leave
// cache. Each output row depends on its own row alone, so the split changes no result.
bool fused_rows(const LinearArgs* layers, int n, float* const* ys, Scratch& s, int nthreads,
                int64_t rb) {
  const detail::KernelTable& kt = detail::kernels_for(active_isa());
  const LinearArgs& a = layers[0];
  const int64_t K = a.B.k, nblocks = (a.M + rb - 1) / rb;
  std::vector<GemmArgs> g;
  for (int i = 0; i < n; ++i) {
    g.push_back(gemm_args(layers[i], s.q.data(), OutKind::f32, ys[i]));
    g.back().a_zp = s.zp.data();
    g.back().a_zp_stride = 1;
    g.back().a_scale = s.scale.data();
    g.back().a_scale_stride = 1;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> finite{true};
  const int nt = static_cast<int>(std::clamp<int64_t>(nthreads, 1, nblocks));
  detail::parallel_for(nt, [&](int) {
    for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < nblocks;
         b = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t m0 = b * rb, m1 = std::min(a.M, m0 + rb);
      if (!detail::quantize_rows_u8(kt, a.x, m0, m1, K, K, s.q.data(), K, s.scale.data(),
                                    s.zp.data())) {
        finite.store(false, std::memory_order_relaxed);
        return;
      }
      for (const GemmArgs& gi : g) kt.gemm_block(gi, m0, m1, 0, gi.B.n_panels);
    }
  });
  return finite.load();
}

void check_shared_input(const LinearArgs* layers, int n) {
  if (n < 1) throw std::invalid_argument("at least one layer is needed");
  for (int i = 0; i < n; ++i) {
    check(layers[i]);
    if (layers[i].x != layers[0].x || layers[i].M != layers[0].M ||
        layers[i].B.k != layers[0].B.k)
      throw std::invalid_argument("the layers must share one input x [M, K]");
  }
}

}  // namespace

bool linear_dynamic_f32_multi(const LinearArgs* layers, int n, bool per_row, float* const* ys,
                              int nthreads) {
  check_shared_input(layers, n);
  const LinearArgs& a = layers[0];
  if (a.M == 0) return true;
  const int64_t K = a.B.k, nparams = per_row ? a.M : 1;
  Scratch& s = scratch(a.M * K, nparams);
  // Enough row blocks that threads share them evenly; below that (small M) the GEMM
  // driver's column split keeps every thread busy and each streams only part of the weight.
  int64_t n_total = 0;
  for (int i = 0; i < n; ++i) n_total += layers[i].B.n;
  // A kernel that widens each weight panel once per call (AVX2: min_tile_rows) gets
  // blocks of 16 times its minimum, which keeps that under 3% (AVX2, 1024^3: blocks of 24
  // rows ran 1.18x slower than the GEMM on quantized input).
  const detail::KernelTable& kt = detail::kernels_for(active_isa());
  const int64_t rb = std::max(rows_per_block(K, n_total), 16 * kt.min_tile_rows);
  if (per_row && a.M / rb >= 4 * std::max(1, nthreads)) return fused_rows(layers, n, ys, s, nthreads, rb);
  if (!quantize_dynamic_u8(a.x, a.M, K, K, per_row, s.q.data(), K, s.scale.data(),
                           s.zp.data(), nthreads))
    return false;
  for (int i = 0; i < n; ++i) {
    GemmArgs g = gemm_args(layers[i], s.q.data(), OutKind::f32, ys[i]);
    g.a_zp = s.zp.data();
    g.a_zp_stride = per_row ? 1 : 0;
    g.a_scale = s.scale.data();
    g.a_scale_stride = per_row ? 1 : 0;
    gemm(g, nthreads);
  }
  return true;
}

bool linear_dynamic_f32(const LinearArgs& a, bool per_row, float* y, int nthreads) {
  return linear_dynamic_f32_multi(&a, 1, per_row, &y, nthreads);
}

bool linear_static(const LinearArgs& a, float in_scale, int32_t in_zp, OutKind out, void* y,
                   float out_inv_scale, int32_t out_zp, int nthreads) {
  check(a);
  if (out == OutKind::s32) throw std::invalid_argument("linear_static outputs f32 or u8");
  if (a.M == 0) return true;
  Scratch& s = scratch(a.M * a.B.k, 0);
  if (!quantize_u8_checked(a.x, a.M * a.B.k, in_scale, in_zp, s.q.data())) return false;
  GemmArgs g = gemm_args(a, s.q.data(), out, y);
  g.a_zp = &in_zp;  // stride 0: one value for every row
  g.a_scale = &in_scale;
  g.out_inv_scale = out_inv_scale;
  g.out_zp = out_zp;
  gemm(g, nthreads);
  return true;
}

bool quantize_u8_checked(const float* x, int64_t n, float scale, int32_t zp, uint8_t* q) {
  if (n == 0) return true;
  if (!minmax_f32(x, n).finite) return false;
  quantize_u8(x, n, scale, zp, q);
  return true;
}

}  // namespace int8kit
