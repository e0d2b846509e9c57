// Internal: value checks on epilogue arguments, shared by the GEMM and conv drivers.
// Scales must be finite and > 0, a bias finite: checked in C++, where it costs a pass over
// a few hundred floats, rather than by several numpy reductions per call in Python.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace int8kit::detail {

// Branch-free scans that the compiler vectorizes (NaN fails every comparison): the
// QuantLinear GEMV checks its weight scales and bias on every call, and the plain loops
// below took ~1 us for 2 x 768 floats, a tenth of the call. They only find the index.
constexpr float kFloatMax = 3.4028234663852886e38f;

inline bool any_not_scale(const float* v, int64_t n) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(v[i] > 0.f) | !(v[i] <= kFloatMax);
  return bad != 0;
}

inline bool any_not_finite(const float* v, int64_t n) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(v[i] >= -kFloatMax) | !(v[i] <= kFloatMax);
  return bad != 0;
}

inline void check_scales(const float* s, int64_t n, const char* name) {
  if (!any_not_scale(s, n)) return;
  for (int64_t i = 0; i < n; ++i)
    if (!(std::isfinite(s[i]) && s[i] > 0.f))
      throw std::invalid_argument(std::string(name) + " must be finite and > 0, got " +
                                  std::to_string(s[i]) + " at index " + std::to_string(i));
}

inline void check_finite(const float* v, int64_t n, const char* name) {
  if (!any_not_finite(v, n)) return;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw std::invalid_argument(std::string(name) + " must be finite (it contains NaN or " +
                                  "Inf at index " + std::to_string(i) + ")");
}

}  // namespace int8kit::detail
