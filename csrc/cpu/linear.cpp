// Fused float-input linear: activation quantization and GEMM in one call (see linear.h).
#include "int8kit/linear.h"

#include <stdexcept>
#include <vector>

#include "int8kit/quantize.h"

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

void check(const LinearArgs& a) {
  if (a.M < 0) throw std::invalid_argument("M must be >= 0");
  if (a.M > 0 && a.x == nullptr) throw std::invalid_argument("x is null");
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

}  // namespace

bool linear_dynamic_f32(const LinearArgs& a, bool per_row, float* y, int nthreads) {
  check(a);
  if (a.M == 0) return true;
  const int64_t K = a.B.k, nparams = per_row ? a.M : 1;
  Scratch& s = scratch(a.M * K, nparams);
  if (!quantize_dynamic_u8(a.x, a.M, K, K, per_row, s.q.data(), K, s.scale.data(),
                           s.zp.data(), nthreads))
    return false;
  GemmArgs g = gemm_args(a, s.q.data(), OutKind::f32, y);
  g.a_zp = s.zp.data();
  g.a_zp_stride = per_row ? 1 : 0;
  g.a_scale = s.scale.data();
  g.a_scale_stride = per_row ? 1 : 0;
  gemm(g, nthreads);
  return true;
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
