// Edge copies (or the whole padded copy) for implicit-GEMM conv windows: see conv_windows.h.
#include "conv_windows.h"

#include <algorithm>
#include <cstring>

#include "aligned_scratch.h"
#include "thread_pool.h"

namespace int8kit::detail {
namespace {

// Padded columns [col0, col1) of padded row prow of image n into dst: x's bytes where the
// row and column fall inside x, the zero point elsewhere.
void fill_row(const ConvArgs& a, int64_t n, int64_t prow, int64_t col0, int64_t col1,
              uint8_t* dst) {
  const ConvParams& p = a.wt.p;
  const int64_t c = p.in_channels, ih = prow - p.pad_h;
  const int zp = static_cast<uint8_t>(a.x_zp);
  if (ih < 0 || ih >= a.h) {
    std::memset(dst, zp, static_cast<size_t>((col1 - col0) * c));
    return;
  }
  const int64_t in0 = std::clamp(p.pad_w, col0, col1), in1 = std::clamp(p.pad_w + a.w, col0, col1);
  std::memset(dst, zp, static_cast<size_t>((in0 - col0) * c));
  std::memcpy(dst + (in0 - col0) * c, a.x + ((n * a.h + ih) * a.w + in0 - p.pad_w) * c,
              static_cast<size_t>((in1 - in0) * c));
  std::memset(dst + (in1 - col0) * c, zp, static_cast<size_t>((col1 - in1) * c));
}

}  // namespace

void ConvWindows::prepare(const ConvArgs& a, int64_t oh, int64_t ow, int nthreads) {
  const ConvParams& p = a.wt.p;
  c_ = p.in_channels, h_ = a.h, sh_ = p.stride_h, sw_ = p.stride_w, ph_ = p.pad_h, pw_ = p.pad_w;
  x_ = a.x;
  padded_ = nullptr;
  strip_ = top_ = bottom_ = nullptr;
  hp_ = a.h + 2 * p.pad_h;
  const int64_t wp = a.w + 2 * p.pad_w;
  const int64_t ext_h = (p.kh - 1) * p.dil_h + 1, ext_w = (p.kw - 1) * p.dil_w + 1;
  // Output pixels whose window lies inside x: the rows and columns [lo, hi).
  auto inside = [](int64_t pad, int64_t stride, int64_t ext, int64_t size, int64_t out,
                   int64_t* lo, int64_t* hi) {
    *lo = std::min(out, (pad + stride - 1) / stride);
    const int64_t last = size - ext + pad;  // the window at x * stride fits: x * stride <= last
    *hi = last < 0 ? 0 : std::min(out, last / stride + 1);
  };
  inside(p.pad_w, sw_, ext_w, a.w, ow, &x_lo_, &x_hi_);
  inside(p.pad_h, sh_, ext_h, a.h, oh, &y_lo_, &y_hi_);
  left_w_ = x_lo_ > 0 ? (x_lo_ - 1) * sw_ + ext_w : 0;
  right0_ = x_hi_ * sw_;
  const int64_t right_w = x_hi_ < ow ? (ow - 1) * sw_ + ext_w - right0_ : 0;
  top_h_ = y_lo_ > 0 ? (y_lo_ - 1) * sh_ + ext_h : 0;
  bottom0_ = y_hi_ * sh_;
  bottom_h_ = y_hi_ < oh ? (oh - 1) * sh_ + ext_h - bottom0_ : 0;
  strip_w_ = left_w_ + right_w;
  const int64_t strip_w = strip_w_, strip_rows = strip_w > 0 ? hp_ : 0;
  // Pixels copied per image each way; the edges only when they copy at most half as much.
  const int64_t edge_px = strip_rows * strip_w + (top_h_ + bottom_h_) * a.w;
  const bool edges = x_lo_ < x_hi_ && y_lo_ < y_hi_ && strip_w <= a.w && 2 * edge_px <= hp_ * wp;

  // Rows to write per image, each one job: (region, row).
  const int64_t per_image = edges ? strip_rows + top_h_ + bottom_h_ : hp_;
  if (edges) {
    row_px_ = a.w;
    const int64_t row = a.w * c_;
    // A strip row uses strip_w of a row's a.w pixels: the strips of images_per_strip_
    // images sit side by side in the same rows.
    images_per_strip_ = strip_w > 0 ? a.w / strip_w : 1;
    const int64_t strip_blocks = (a.n + images_per_strip_ - 1) / images_per_strip_;
    const int64_t rows = strip_blocks * strip_rows + a.n * (top_h_ + bottom_h_);
    strip_ = fit_scratch(buf_, static_cast<size_t>(rows * row));
    top_ = strip_ + strip_blocks * strip_rows * row;
    bottom_ = top_ + a.n * top_h_ * row;
  } else {
    row_px_ = wp;
    if (per_image * wp == 0 || (hp_ == a.h && wp == a.w)) {  // nothing to pad: x itself
      padded_ = a.x;
      return;
    }
    padded_ = fit_scratch(buf_, static_cast<size_t>(a.n * hp_ * wp * c_));
  }
  if (per_image == 0) return;
  const int64_t jobs = a.n * per_image;
  const int64_t bytes = a.n * (edges ? edge_px : hp_ * wp) * c_;
  // Split from 32 KB per thread: otherwise the other threads wait out this copy.
  const int nt = static_cast<int>(std::clamp<int64_t>(bytes >> 15, 1, std::max(nthreads, 1)));
  uint8_t* const padded = buf_.data();  // when !edges
  parallel_for(nt, [&](int tid) {
    for (int64_t j = jobs * tid / nt; j < jobs * (tid + 1) / nt; ++j) {
      const int64_t n = j / per_image, r = j % per_image;
      if (!edges) {
        fill_row(a, n, r, 0, wp, padded + (n * hp_ + r) * wp * c_);
      } else if (r < strip_rows) {
        uint8_t* dst = strip_ + ((n / images_per_strip_ * hp_ + r) * a.w +
                                 n % images_per_strip_ * strip_w) * c_;
        fill_row(a, n, r, 0, left_w_, dst);
        fill_row(a, n, r, right0_, right0_ + right_w, dst + left_w_ * c_);
      } else if (r < strip_rows + top_h_) {
        const int64_t t = r - strip_rows;
        fill_row(a, n, t, p.pad_w, p.pad_w + a.w, top_ + (n * top_h_ + t) * a.w * c_);
      } else {
        const int64_t b = r - strip_rows - top_h_;
        fill_row(a, n, bottom0_ + b, p.pad_w, p.pad_w + a.w,
                 bottom_ + (n * bottom_h_ + b) * a.w * c_);
      }
    }
  });
}

}  // namespace int8kit::detail
