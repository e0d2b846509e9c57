// The scalar conv oracle (direct loops, int64, plain weights) and the scalar depthwise
// kernel (direct loops over the packed plain layout).
#include <vector>

#include "conv_kernels.h"
#include "epilogue_ref.h"

namespace int8kit {

void conv2d_reference(const ConvArgs& a, const ConvParams& p, const int8_t* w) {
  int64_t oh, ow;
  conv_output_size(p, a.h, a.w, &oh, &ow);
  const int64_t icg = p.in_channels / p.groups, ocg = p.out_channels / p.groups;
  const GemmArgs epi = detail::conv_epilogue_args(a, p.out_channels);
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t y = 0; y < oh; ++y)
      for (int64_t x = 0; x < ow; ++x) {
        const int64_t m = (n * oh + y) * ow + x;
        for (int64_t oc = 0; oc < p.out_channels; ++oc) {
          const int64_t g = oc / ocg;
          int64_t acc = 0;
          for (int64_t kh = 0; kh < p.kh; ++kh)
            for (int64_t kw = 0; kw < p.kw; ++kw) {
              const int64_t ih = y * p.stride_h - p.pad_h + kh * p.dil_h;
              const int64_t iw = x * p.stride_w - p.pad_w + kw * p.dil_w;
              if (ih < 0 || ih >= a.h || iw < 0 || iw >= a.w) continue;  // reads x_zp: 0
              const uint8_t* px = a.x + ((n * a.h + ih) * a.w + iw) * p.in_channels + g * icg;
              for (int64_t ic = 0; ic < icg; ++ic)
                acc += (int64_t(px[ic]) - a.x_zp) *
                       int64_t(w[((oc * icg + ic) * p.kh + kh) * p.kw + kw]);
            }
          detail::store_one(epi, m, oc, static_cast<int32_t>(acc));
        }
      }
}

namespace detail {

void depthwise_rows_scalar(const DwJob& j, int64_t r0, int64_t r1) {
  const ConvArgs& a = *j.a;
  const ConvParams& p = a.wt.p;
  const int64_t c_n = p.in_channels, taps = p.kh * p.kw, cp = a.wt.cp;
  std::vector<const uint8_t*> tap(static_cast<size_t>(taps));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / j.oh, y = r % j.oh;
    for (int64_t x = 0; x < j.ow; ++x) {
      for (int64_t kh = 0; kh < p.kh; ++kh)
        for (int64_t kw = 0; kw < p.kw; ++kw)
          tap[kh * p.kw + kw] = dw_tap(j, n, y * p.stride_h - p.pad_h + kh * p.dil_h,
                                       x * p.stride_w - p.pad_w + kw * p.dil_w);
      const int64_t m = r * j.ow + x;
      for (int64_t c = 0; c < c_n; ++c) {
        uint32_t raw = 0;  // wraps like the vector paths; the corrected value is exact
        for (int64_t t = 0; t < taps; ++t)
          raw += uint32_t(tap[t][c]) * uint32_t(int32_t(a.wt.dw_plain[t * cp + c]));
        store_one(j.epi, m, c, correct_acc(j.epi, m, c, static_cast<int32_t>(raw)));
      }
    }
  }
}

}  // namespace detail
}  // namespace int8kit
