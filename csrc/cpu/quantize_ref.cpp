// Scalar activation quantization (oracle), and the shared parameter formula.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "kernels.h"

namespace int8kit {

void choose_qparams_u8(float lo, float hi, float* scale, int32_t* zp) {
  lo = lo < 0.f ? lo : 0.f;
  hi = hi > 0.f ? hi : 0.f;
  if (!std::isfinite(hi - lo)) {  // finite values, but a range no float32 scale spans
    char msg[128];
    std::snprintf(msg, sizeof(msg), "x: its range [%g, %g] is too wide for a float32 scale "
                  "(max - min must be at most 3.4e38)", lo, hi);
    throw std::invalid_argument(msg);
  }
  float s = (hi - lo) / 255.f;
  s = s > FLT_EPSILON ? s : FLT_EPSILON;
  float z = 0.f - std::nearbyint(lo / s);
  z = z < 0.f ? 0.f : (z > 255.f ? 255.f : z);
  *scale = s;
  *zp = static_cast<int32_t>(z);
}

namespace detail {

MinMax minmax_scalar(const float* x, int64_t n) {
  float lo = x[0], hi = x[0];
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    finite = finite && std::isfinite(v);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  return {lo, hi, finite};
}

void quantize_u8_scalar(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  const float z = static_cast<float>(zp);
  for (int64_t i = 0; i < n; ++i) {
    // torch's order (FBGEMM's quantize): the zero point is added before rounding, so ties
    // round to even in the quantized domain. Clamping in float first is equivalent (0 and
    // 255 are integers) and keeps huge values and NaN (-> 0) away from the int conversion.
    float t = std::fma(x[i], inv_scale, z);
    t = t > 0.f ? t : 0.f;
    t = t < 255.f ? t : 255.f;
    q[i] = static_cast<uint8_t>(std::nearbyint(t));
  }
}

}  // namespace detail
}  // namespace int8kit
