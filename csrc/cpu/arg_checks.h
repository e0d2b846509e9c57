// Internal: value checks on epilogue arguments, shared by the GEMM and conv drivers.
// Scales must be finite and > 0, a bias finite: checked in C++, where it costs a pass over
// a few hundred floats, rather than by several numpy reductions per call in Python.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace int8kit::detail {

inline void check_scales(const float* s, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i)
    if (!(std::isfinite(s[i]) && s[i] > 0.f))
      throw std::invalid_argument(std::string(name) + " must be finite and > 0, got " +
                                  std::to_string(s[i]) + " at index " + std::to_string(i));
}

inline void check_finite(const float* v, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw std::invalid_argument(std::string(name) + " must be finite (it contains NaN or " +
                                  "Inf at index " + std::to_string(i) + ")");
}

}  // namespace int8kit::detail
