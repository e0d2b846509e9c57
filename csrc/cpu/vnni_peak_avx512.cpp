// The machine's int8 ceiling: a tight loop of independent vpdpbusd, as a yardstick for
// the benchmarks (results are reported as a fraction of it).
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "int8kit/isa.h"
#include "int8kit/peak.h"
#include "thread_pool.h"

namespace int8kit {

namespace {

// 12 independent chains hide vpdpbusd's latency; one iteration is 12 instructions. Named
// variables (not an array) so the accumulators stay in registers.
__attribute__((noinline)) int32_t vpdpbusd_loop(int64_t iters) {
  const __m512i x = _mm512_set1_epi32(0x01010101), y = _mm512_set1_epi32(0x01020304);
  // Distinct start values so the compiler cannot merge identical chains.
  __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2),
          a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5),
          a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7), a8 = _mm512_set1_epi32(8),
          a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm512_dpbusd_epi32(a0, x, y);
    a1 = _mm512_dpbusd_epi32(a1, x, y);
    a2 = _mm512_dpbusd_epi32(a2, x, y);
    a3 = _mm512_dpbusd_epi32(a3, x, y);
    a4 = _mm512_dpbusd_epi32(a4, x, y);
    a5 = _mm512_dpbusd_epi32(a5, x, y);
    a6 = _mm512_dpbusd_epi32(a6, x, y);
    a7 = _mm512_dpbusd_epi32(a7, x, y);
    a8 = _mm512_dpbusd_epi32(a8, x, y);
    a9 = _mm512_dpbusd_epi32(a9, x, y);
    a10 = _mm512_dpbusd_epi32(a10, x, y);
    a11 = _mm512_dpbusd_epi32(a11, x, y);
  }
  __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                               _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
  s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
  return _mm512_reduce_add_epi32(s);
}

}  // namespace

// int8 operations per second (2 per multiply-add) over nthreads threads, each running
// `iters` iterations of 12 vpdpbusd (64 multiply-adds each).
double vnni_peak_ops_per_second(int nthreads, int64_t iters) {
  if (!isa_supported(Isa::avx512_vnni))
    throw std::runtime_error("this CPU has no AVX-512 VNNI; the VNNI peak cannot be measured");
  if (nthreads < 1) nthreads = 1;
  std::vector<double> secs(nthreads);
  std::atomic<int32_t> sink{0};
  vpdpbusd_loop(iters / 10 + 1);  // warm up the clocks
  detail::parallel_for(nthreads, [&](int tid) {
    const auto t0 = std::chrono::steady_clock::now();
    sink += vpdpbusd_loop(iters);
    secs[tid] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  double slowest = 0;
  for (double s : secs) slowest = s > slowest ? s : slowest;
  return double(nthreads) * double(iters) * 12.0 * 64.0 * 2.0 / slowest;
}

}  // namespace int8kit
