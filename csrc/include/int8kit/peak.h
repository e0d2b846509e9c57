// The machine's measured int8 ceiling, for benchmarks.
#pragma once

#include <cstdint>

namespace int8kit {

// int8 operations per second (2 per multiply-add) of a tight vpdpbusd loop on nthreads
// threads. Throws std::runtime_error on CPUs without AVX-512 VNNI.
double vnni_peak_ops_per_second(int nthreads, int64_t iters);

}  // namespace int8kit
