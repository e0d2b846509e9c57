// Internal: where an implicit-GEMM conv reads each output pixel's window.
//
// The GEMM gathers a pixel's K bytes as runs at fixed offsets from the window's first byte,
// so every window must sit in memory with one row stride and the padding written out.
// A copy of all of x with its padding does that, but costs a pass over x before any
// compute (7% of ResNet-18's 64@56 conv at batch 1 on 2 threads, x cold). Instead, pixels
// whose window lies inside x read x in place, and only the edge pixels read small copies
// laid out with x's own row stride (w * c bytes):
//   - strips: for every padded row, the padded columns the left and right edge pixels
//     read, side by side in a row of that stride (which holds several images' strips);
//   - top and bottom bands: the padded rows the first and last output rows read, x's
//     width only (their pixels' columns lie inside x).
// On small images the strips and bands would cost as much as the whole copy: there it
// makes the padded copy and reads only that. Where that copy would dwarf x and y (padding
// up to 65536), conv.cpp does not use the implicit GEMM (conv_uses_implicit_gemm).
#pragma once

#include <cstdint>
#include <vector>

#include "int8kit/conv.h"

namespace int8kit::detail {

class ConvWindows {
 public:
  // Copies what the windows of output [oh, ow] need (up to nthreads threads); the buffers
  // are reused by the next call of the same object.
  void prepare(const ConvArgs& a, int64_t oh, int64_t ow, int nthreads);

  // Pixels per row of the layout every window is read in: taps are (i * dil_h * row_pixels
  // + j * dil_w) * c bytes from the window's first byte.
  int64_t row_pixels() const { return row_px_; }

  // The first byte (channel 0, tap (0, 0)) of output pixel (n, y, x)'s window.
  const uint8_t* at(int64_t n, int64_t y, int64_t x) const {
    if (padded_) return padded_ + ((n * hp_ + y * sh_) * row_px_ + x * sw_) * c_;
    if (x < x_lo_ || x >= x_hi_) {
      const int64_t col = x < x_lo_ ? x * sw_ : left_w_ + x * sw_ - right0_;
      return strip_ + ((n / images_per_strip_ * hp_ + y * sh_) * row_px_ +
                       n % images_per_strip_ * strip_w_ + col) * c_;
    }
    if (y < y_lo_) return top_ + ((n * top_h_ + y * sh_) * row_px_ + x * sw_ - pw_) * c_;
    if (y >= y_hi_)
      return bottom_ + ((n * bottom_h_ + y * sh_ - bottom0_) * row_px_ + x * sw_ - pw_) * c_;
    return x_ + ((n * h_ + y * sh_ - ph_) * row_px_ + x * sw_ - pw_) * c_;
  }

 private:
  const uint8_t* x_ = nullptr;
  const uint8_t* padded_ = nullptr;  // set: the whole padded copy, read alone
  uint8_t* strip_ = nullptr;  // these three in buf_
  uint8_t* top_ = nullptr;
  uint8_t* bottom_ = nullptr;
  int64_t c_ = 0, h_ = 0, hp_ = 0, row_px_ = 0, sh_ = 1, sw_ = 1, ph_ = 0, pw_ = 0;
  int64_t x_lo_ = 0, x_hi_ = 0, y_lo_ = 0, y_hi_ = 0;  // pixels read in place: [lo, hi)
  int64_t left_w_ = 0, right0_ = 0, strip_w_ = 0;      // strips: padded columns
  int64_t images_per_strip_ = 1;                       // images side by side in strip rows
  int64_t top_h_ = 0, bottom0_ = 0, bottom_h_ = 0;     // bands: padded rows
  std::vector<uint8_t> buf_;
};

}  // namespace int8kit::detail
