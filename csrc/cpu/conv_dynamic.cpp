// conv2d_dynamic_f32: float activations in, float (or requantized uint8) out, one C++
// call. The range scan, the quantize fused with the NCHW -> NHWC change, and the NHWC ->
// NCHW output copy used to be separate numpy/torch passes around conv2d (at dw128@56 they
// cost more than the kernel).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "aligned_scratch.h"
#include "conv_kernels.h"
#include "kernels.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

using detail::fit_scratch;

constexpr int64_t kMinElemsPerThread = int64_t(1) << 16;
constexpr int64_t kPixBlock = 64;  // pixels per unit of the layout passes

int threads_for(int64_t elems, int nthreads) {
  return static_cast<int>(std::clamp<int64_t>(elems / kMinElemsPerThread, 1, std::max(nthreads, 1)));
}

std::pair<int64_t, int64_t> split(int64_t n, int64_t parts, int64_t i, int64_t align) {
  return {n * i / parts / align * align, i + 1 == parts ? n : n * (i + 1) / parts / align * align};
}

// Scalar forms of the layout passes (paths without AVX-512), through a small staging tile
// so the quantizer is the path's own (all paths' quantizers are bit-identical).
void nchw_to_nhwc_u8_generic(const detail::KernelTable& kt, const float* x, int64_t c,
                             int64_t hw, int64_t p0, int64_t p1, float inv, int32_t zp,
                             uint8_t* q) {
  std::vector<float> tile(static_cast<size_t>(c * kPixBlock));
  for (int64_t p = p0; p < p1; p += kPixBlock) {
    const int64_t np = std::min(kPixBlock, p1 - p);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < np; ++i) tile[i * c + ch] = x[ch * hw + p + i];
    kt.quantize_u8(tile.data(), np * c, inv, zp, q + p * c);
  }
}

void nhwc_to_nchw_f32_generic(const float* y, int64_t c, int64_t hw, int64_t p0, int64_t p1,
                              float* out) {
  for (int64_t p = p0; p < p1; p += 16)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = p; i < std::min(p + 16, p1); ++i) out[ch * hw + i] = y[i * c + ch];
}

// Runs fn(image, p0, p1) over all images' pixel blocks on up to nt threads.
template <typename Fn>
void over_pixels(int64_t n, int64_t hw, int nt, Fn fn) {
  const int64_t per = (hw + kPixBlock - 1) / kPixBlock, units = n * per;
  nt = static_cast<int>(std::min<int64_t>(nt, units));
  detail::parallel_for(nt, [&](int tid) {
    const auto [u0, u1] = split(units, nt, tid, 1);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t img = u / per, b = u % per;
      fn(img, b * kPixBlock, std::min(hw, (b + 1) * kPixBlock));
    }
  });
}

}  // namespace

bool conv2d_dynamic_f32(const ConvDynamicArgs& d, int nthreads, Isa isa, float* x_scale,
                        int32_t* x_zp) {
  const ConvParams& p = d.wt.p;
  nthreads = std::max(nthreads, 1);  // as gemm: < 1 means 1
  int64_t oh, ow;
  conv_output_size(p, d.h, d.w, &oh, &ow);
  if (d.n == 0) return true;
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("kernel path '") + isa_name(isa) +
                             "' cannot run on this CPU");
  if (d.x == nullptr || d.y == nullptr) throw std::invalid_argument("x or y is null");
  if (d.out_u8 && !d.y_nhwc) throw std::invalid_argument("a uint8 output must be NHWC");
  const detail::KernelTable& kt = detail::kernels_for(isa);
  const bool v512 = detail::runs_avx512_kernels(isa);
  const int64_t c = p.in_channels, hw = d.h * d.w, total = d.n * c * hw;
  const int nt = threads_for(total, nthreads);

  // The range (and, for fixed parameters too, the NaN/Inf check): one flat scan.
  std::vector<MinMax> part(static_cast<size_t>(nt));
  detail::parallel_for(nt, [&](int tid) {
    const auto [b, e] = split(total, nt, tid, 64);
    part[tid] = b < e ? kt.minmax(d.x + b, e - b) : MinMax{0.f, 0.f, true};
  });
  MinMax all = part[0];
  for (const MinMax& m : part)
    all = {std::min(all.lo, m.lo), std::max(all.hi, m.hi), all.finite && m.finite};
  if (!all.finite) return false;
  if (d.fixed_scale > 0.f) {
    if (!std::isfinite(d.fixed_scale) || d.fixed_zp < 0 || d.fixed_zp > 255)
      throw std::invalid_argument("fixed input parameters need a finite scale > 0 and a "
                                  "zero point in [0, 255]");
    *x_scale = d.fixed_scale, *x_zp = d.fixed_zp;
  } else {
    choose_qparams_u8(all.lo, all.hi, x_scale, x_zp);
  }
  const float inv = 1.f / *x_scale;
  const int32_t zp = *x_zp;

  // Per-thread scratch reused across calls: fresh multi-MB buffers cost page faults.
  // Thread-local to the calling thread: hand workers pointers, never these names.
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> ybuf;
  const int64_t oc = p.out_channels, ohw = oh * ow, ytotal = d.n * oc * ohw;
  ConvArgs a;
  a.n = d.n, a.h = d.h, a.w = d.w, a.x_zp = zp, a.wt = d.wt;
  a.out = d.out_u8 ? OutKind::u8 : OutKind::f32;
  a.y = d.y_nhwc ? d.y : fit_scratch(ybuf, static_cast<size_t>(ytotal));
  a.x_scale = *x_scale, a.out_inv_scale = d.out_inv_scale, a.out_zp = d.out_zp;
  a.w_scale = d.w_scale, a.w_scale_stride = d.w_scale_stride, a.bias = d.bias, a.relu = d.relu;
  // Quantizes pixels [p0, p1) of image img to NHWC: pixel p goes to qi + (p - p0) * c.
  const auto quantize_pixels = [&](int64_t img, int64_t p0, int64_t p1, uint8_t* qi) {
    if (d.x_nhwc) return kt.quantize_u8(d.x + (img * hw + p0) * c, (p1 - p0) * c, inv, zp, qi);
    const float* x = d.x + img * c * hw + p0;  // pixel p0 as pixel 0 (channel stride hw)
#if INT8KIT_HAVE_X86_KERNELS
    if (v512) return detail::nchw_to_nhwc_u8_avx512(x, c, hw, 0, p1 - p0, inv, zp, qi);
#endif
    nchw_to_nhwc_u8_generic(kt, x, c, hw, 0, p1 - p0, inv, zp, qi);
  };

  if (d.wt.layout == ConvLayout::depthwise) {
    // Each thread quantizes the input rows of its output band just before the depthwise
    // kernel reads them, into its own buffer: the uint8 tensor never goes through memory.
    static std::atomic<uint64_t> calls{0};
    const uint64_t id = ++calls;
    const int64_t row = d.w * c;
    detail::conv2d_depthwise_banded(a, nthreads, isa, [&](int64_t r0, int64_t r1, int64_t* row0) {
      thread_local std::vector<uint8_t> band;  // input rows [first, done) of img
      thread_local int64_t img = -1, first = 0, done = 0;
      thread_local uint64_t call = 0;  // ... for this call
      const int64_t n = r0 / oh, y0 = r0 % oh, y1 = (r1 - 1) % oh;
      const int64_t lo = std::max<int64_t>(0, y0 * p.stride_h - p.pad_h);
      const int64_t hi =
          std::max(lo, std::min(d.h, y1 * p.stride_h - p.pad_h + (p.kh - 1) * p.dil_h + 1));
      // Rows [hi, end) are read with zero weights (DwPrepFn): room, not values.
      const int64_t end =
          std::max(hi, std::min(d.h, hi + detail::kDwRowsPastWindows * p.dil_h));
      const auto bytes = [&](int64_t rows) { return static_cast<size_t>(rows * row); };
      if (call != id || img != n || done <= lo || lo < first) {  // nothing to keep
        img = n, first = done = lo, call = id;
        fit_scratch(band, bytes(end - lo));
      } else {  // the rows this band shares with the last one move to the front
        std::memmove(band.data(), band.data() + bytes(lo - first), bytes(done - lo));
        first = lo;
        if (band.size() < bytes(end - lo)) band.resize(bytes(end - lo));
      }
      if (done < hi) quantize_pixels(n, done * d.w, hi * d.w, band.data() + bytes(done - first));
      done = std::max(done, hi);
      *row0 = n * d.h + first;
      return static_cast<const uint8_t*>(band.data());
    });
  } else if (p.kh == 1 && p.kw == 1 && p.pad_h == 0 && p.pad_w == 0 &&
             (p.stride_h > 1 || p.stride_w > 1)) {
    // A strided 1x1 conv reads only the pixels (oy*sh, ox*sw): quantize just those into a
    // compact [n, oh, ow, C] tensor, and run a 1x1 stride-1 conv (a plain GEMM) on it.
    uint8_t* const q = fit_scratch(qbuf, static_cast<size_t>(d.n * ohw * c));
    const int64_t rows = d.n * oh;
    const int nq = static_cast<int>(std::clamp<int64_t>(rows * ow * c / kMinElemsPerThread, 1,
                                                        std::min<int64_t>(nt, rows)));
    detail::parallel_for(nq, [&](int tid) {
      thread_local std::vector<uint8_t> line;  // this worker's quantized input row (NCHW x)
      const auto [r0, r1] = split(rows, nq, tid, 1);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / oh, y = (r % oh) * p.stride_h;
        uint8_t* out = q + r * ow * c;
        if (d.x_nhwc) {
          for (int64_t ox = 0; ox < ow; ++ox)
            kt.quantize_u8(d.x + ((img * d.h + y) * d.w + ox * p.stride_w) * c, c, inv, zp,
                           out + ox * c);
          continue;
        }
        uint8_t* const src = fit_scratch(line, static_cast<size_t>(d.w * c));
        quantize_pixels(img, y * d.w, (y + 1) * d.w, src);
        for (int64_t ox = 0; ox < ow; ++ox)
          std::memcpy(out + ox * c, src + ox * p.stride_w * c, static_cast<size_t>(c));
      }
    });
    a.x = q, a.h = oh, a.w = ow;
    a.wt.p.stride_h = a.wt.p.stride_w = 1;
    conv2d_with_isa(a, nthreads, isa);
  } else if ((p.pad_h || p.pad_w) && detail::conv_uses_implicit_gemm(a, isa)) {
    // The implicit GEMM reads a padded input: quantize straight into one, border = zp,
    // and run the conv on it with no padding (the same sums).
    const int64_t hp = d.h + 2 * p.pad_h, wp = d.w + 2 * p.pad_w;
    uint8_t* const q = fit_scratch(qbuf, static_cast<size_t>(d.n * hp * wp * c));
    const int64_t rows = d.n * hp;
    const int nq = static_cast<int>(std::min<int64_t>(nt, rows));
    detail::parallel_for(nq, [&](int tid) {
      const auto [r0, r1] = split(rows, nq, tid, 1);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / hp, y = r % hp - p.pad_h;
        uint8_t* row = q + r * wp * c;
        if (y < 0 || y >= d.h) {
          std::memset(row, zp, static_cast<size_t>(wp * c));
          continue;
        }
        std::memset(row, zp, static_cast<size_t>(p.pad_w * c));
        std::memset(row + (p.pad_w + d.w) * c, zp, static_cast<size_t>((wp - d.w - p.pad_w) * c));
        // Pixel (y, x) goes to column pad_w + x of padded row r.
        quantize_pixels(img, y * d.w, (y + 1) * d.w, row + p.pad_w * c);
      }
    });
    a.x = q, a.h = hp, a.w = wp;
    a.wt.p.pad_h = a.wt.p.pad_w = 0;
    conv2d_with_isa(a, nthreads, isa);
  } else {
    // The pointer is taken here: inside the workers, `qbuf` would name their own
    // (empty) thread_local copy, not this thread's.
    uint8_t* const q = fit_scratch(qbuf, static_cast<size_t>(total));
    over_pixels(d.n, hw, nt, [&](int64_t img, int64_t p0, int64_t p1) {
      quantize_pixels(img, p0, p1, q + (img * hw + p0) * c);
    });
    a.x = q;
    conv2d_with_isa(a, nthreads, isa);
  }
  if (!d.y_nhwc) {
    const float* y = ybuf.data();
    over_pixels(d.n, ohw, threads_for(ytotal, nthreads), [&](int64_t img, int64_t p0, int64_t p1) {
      const float* yi = y + img * oc * ohw;
      float* out = static_cast<float*>(d.y) + img * oc * ohw;
#if INT8KIT_HAVE_X86_KERNELS
      if (v512) return detail::nhwc_to_nchw_f32_avx512(yi, oc, ohw, p0, p1, out);
#endif
      nhwc_to_nchw_f32_generic(yi, oc, ohw, p0, p1, out);
    });
  }
  return true;
}

}  // namespace int8kit
