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

// 12 independent chains hide vpdpbusd's latency; one iteration is 12 instructions.
__attribute__((noinline)) int32_t vpdpbusd_loop(int64_t iters) {
  __m512i acc[12];
  for (auto& a : acc) a = _mm512_setzero_si512();
  const __m512i x = _mm512_set1_epi32(0x01010101), y = _mm512_set1_epi32(0x01020304);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& a : acc) a = _mm512_dpbusd_epi32(a, x, y);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]),
                     "+v"(acc[5]), "+v"(acc[6]), "+v"(acc[7]), "+v"(acc[8]), "+v"(acc[9]),
                     "+v"(acc[10]), "+v"(acc[11]));
  }
  __m512i s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
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
