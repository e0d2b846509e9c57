// Validation, the split of the output over threads, and the call into the chosen path.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

// Below this many multiply-adds per thread, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerThread = int64_t(1) << 20;
// Columns are handed out in units of the widest micro-kernel (3 panels = 48 columns).
constexpr int64_t kPanelsPerUnit = 3;
constexpr int64_t kRowsPerUnit = 8;

void validate(const GemmArgs& g) {
  if (g.M < 0) throw std::invalid_argument("M must be >= 0");
  if (g.B.weights == nullptr) throw std::invalid_argument("packed weight is empty");
  if (g.M == 0) return;
  if (g.A == nullptr) throw std::invalid_argument("a is null");
  if (g.lda < g.B.k) throw std::invalid_argument("a row stride must be >= K");
  if (g.C == nullptr) throw std::invalid_argument("output is null");
  if (g.ldc < g.B.n) throw std::invalid_argument("output row stride must be >= N");
  if (g.a_zp == nullptr) throw std::invalid_argument("a_zero_point is null");
  const int64_t nzp = g.a_zp_stride == 0 ? 1 : g.M;
  for (int64_t i = 0; i < nzp; ++i) {
    const int32_t z = g.a_zp[i * g.a_zp_stride];
    if (z < 0 || z > 255)
      throw std::invalid_argument("a_zero_point must be in [0, 255] for uint8 activations, got " +
                                  std::to_string(z));
  }
  if (g.out != OutKind::s32) {
    if (g.a_scale == nullptr) throw std::invalid_argument("a_scale is null");
    if (g.w_scale == nullptr) throw std::invalid_argument("w_scale is null");
  }
  if (g.out == OutKind::u8 && !(std::isfinite(g.out_inv_scale) && g.out_inv_scale > 0.f))
    throw std::invalid_argument("output scale must be finite and > 0");
  if (g.out == OutKind::u8 && (g.out_zp < 0 || g.out_zp > 255))
    throw std::invalid_argument("output zero point must be in [0, 255]");
}

// Splits [0, n) into `parts` near-equal contiguous ranges; returns range i.
std::pair<int64_t, int64_t> split(int64_t n, int64_t parts, int64_t i) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

}  // namespace

void gemm_with_isa(const GemmArgs& g, int nthreads, Isa isa) {
  validate(g);
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("kernel path '") + isa_name(isa) +
                             "' cannot run on this CPU");
  if (g.M == 0) return;
  const detail::GemmBlockFn block = detail::kernels_for(isa).gemm_block;

  const int64_t n_units = (g.B.n_panels + kPanelsPerUnit - 1) / kPanelsPerUnit;
  const int64_t m_units = (g.M + kRowsPerUnit - 1) / kRowsPerUnit;
  const int64_t macs = g.M * g.B.n * g.B.k;
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, macs / kMinMacsPerThread));
  nt = std::min(nt, n_units * m_units);
  // Prefer splitting columns (each thread streams its own weights); split rows only when
  // there are too few column units to go round.
  const int64_t tn = std::min(nt, n_units), tm = nt / tn;
  detail::parallel_for(static_cast<int>(tn * tm), [&](int tid) {
    const auto [u0, u1] = split(n_units, tn, tid % tn);
    const auto [r0, r1] = split(m_units, tm, tid / tn);
    const int64_t p0 = u0 * kPanelsPerUnit, p1 = std::min(u1 * kPanelsPerUnit, g.B.n_panels);
    const int64_t m0 = r0 * kRowsPerUnit, m1 = std::min(r1 * kRowsPerUnit, g.M);
    if (p0 < p1 && m0 < m1) block(g, m0, m1, p0, p1);
  });
}

void gemm(const GemmArgs& g, int nthreads) { gemm_with_isa(g, nthreads, active_isa()); }

}  // namespace int8kit
