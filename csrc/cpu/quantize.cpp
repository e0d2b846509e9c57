// Activation quantization front end: parameter choice and the split over threads. The
// per-ISA min/max scan and quantize loops come from the kernel table.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "quantize_rows.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

constexpr int64_t kMinElemsPerThread = int64_t(1) << 16;

int threads_for(int64_t elems, int nthreads, int64_t rows) {
  const int64_t by_work = std::max<int64_t>(1, elems / kMinElemsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min({int64_t(nthreads), by_work, rows})));
}

}  // namespace

namespace detail {

bool quantize_rows_u8(const KernelTable& kt, const float* x, int64_t r0, int64_t r1, int64_t K,
                      int64_t ldx, uint8_t* q, int64_t ldq, float* scale, int32_t* zp) {
  for (int64_t m = r0; m < r1; ++m) {
    const MinMax mm = kt.minmax(x + m * ldx, K);
    if (!mm.finite) return false;
    choose_qparams_u8(mm.lo, mm.hi, &scale[m], &zp[m]);
    kt.quantize_u8(x + m * ldx, K, 1.f / scale[m], zp[m], q + m * ldq);
  }
  return true;
}

}  // namespace detail

MinMax minmax_f32(const float* x, int64_t n) {
  if (n < 1) throw std::invalid_argument("cannot measure the range of an empty tensor");
  return detail::kernels_for(active_isa()).minmax(x, n);
}

void quantize_u8(const float* x, int64_t n, float scale, int32_t zp, uint8_t* q) {
  if (!(scale > 0.f) || !std::isfinite(scale)) throw std::invalid_argument("scale must be finite and > 0");
  if (zp < 0 || zp > 255) throw std::invalid_argument("zero_point must be in [0, 255]");
  detail::kernels_for(active_isa()).quantize_u8(x, n, 1.f / scale, zp, q);
}

bool quantize_dynamic_u8(const float* x, int64_t M, int64_t K, int64_t ldx, bool per_row,
                         uint8_t* q, int64_t ldq, float* scale, int32_t* zp, int nthreads) {
  if (M < 0 || K < 1) throw std::invalid_argument("quantize_dynamic_u8 needs M >= 0 and K >= 1");
  if (ldx < K || ldq < K) throw std::invalid_argument("row strides must be >= K");
  if (M == 0) return true;
  const detail::KernelTable& kt = detail::kernels_for(active_isa());
  const int nt = threads_for(M * K, nthreads, M);
  std::atomic<bool> finite{true};
  if (per_row) {
    detail::parallel_for(nt, [&](int tid) {
      const int64_t r0 = M * tid / nt, r1 = M * (tid + 1) / nt;
      if (!detail::quantize_rows_u8(kt, x, r0, r1, K, ldx, q, ldq, scale, zp))
        finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
  }
  // Per tensor on contiguous rows: one flat range split by elements, so short rows (conv
  // activations are [pixels, C]) cost no per-row call and reduction (was ~4x slower).
  const bool flat = ldx == K && ldq == K;
  const int ntf = flat ? threads_for(M * K, nthreads, M * K / 4096 + 1) : nt;
  auto range = [&](int tid, int64_t* b, int64_t* e) {  // flat element range of thread tid
    const int64_t n = M * K;
    *b = n * tid / ntf / 64 * 64;
    *e = tid + 1 == ntf ? n : n * (tid + 1) / ntf / 64 * 64;
  };
  std::vector<MinMax> part(ntf, MinMax{0.f, 0.f, true});
  std::vector<char> used(ntf, 0);
  detail::parallel_for(ntf, [&](int tid) {
    if (flat) {
      int64_t b, e;
      range(tid, &b, &e);
      if (b < e) part[tid] = kt.minmax(x + b, e - b), used[tid] = 1;
      return;
    }
    const int64_t r0 = M * tid / nt, r1 = M * (tid + 1) / nt;
    MinMax acc = kt.minmax(x + r0 * ldx, K);
    for (int64_t m = r0 + 1; m < r1; ++m) {
      const MinMax mm = kt.minmax(x + m * ldx, K);
      acc = {std::min(acc.lo, mm.lo), std::max(acc.hi, mm.hi), acc.finite && mm.finite};
    }
    part[tid] = acc, used[tid] = 1;
  });
  MinMax all = part[0];
  for (int i = 0; i < ntf; ++i)
    if (used[i])
      all = {std::min(all.lo, part[i].lo), std::max(all.hi, part[i].hi),
             all.finite && part[i].finite};
  if (!all.finite) return false;
  choose_qparams_u8(all.lo, all.hi, &scale[0], &zp[0]);
  const float inv = 1.f / scale[0];
  const int32_t z = zp[0];
  detail::parallel_for(ntf, [&](int tid) {
    if (flat) {
      int64_t b, e;
      range(tid, &b, &e);
      if (b < e) kt.quantize_u8(x + b, e - b, inv, z, q + b);
      return;
    }
    for (int64_t m = M * tid / nt; m < M * (tid + 1) / nt; ++m)
      kt.quantize_u8(x + m * ldx, K, inv, z, q + m * ldq);
  });
  return true;
}

}  // namespace int8kit
