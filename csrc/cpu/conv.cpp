// Conv2d driver: validation, the choice of path, im2col tiles, and the split over threads.
//
// Paths: depthwise (groups == in == out channels) -> a direct per-ISA kernel over output
// rows. Everything else is a GEMM per group on [pixels, KH*KW*IC/G] rows:
// - a 1x1 stride-1 unpadded conv reads the NHWC input in place (row stride C, group
//   offset g*C/G);
// - on paths with a gathered-row kernel (AVX-512), an implicit GEMM: each row is a few
//   runs of input bytes read in place from x, or for edge pixels from small copies with
//   the padding written out (conv_windows.h), unless such copies could dwarf x and y
//   (huge padding). Without one, a strided 1x1 conv runs one output row at a time (row
//   stride sw*C);
// - otherwise rows are gathered into a per-thread im2col tile (padding filled with the
//   activation zero point), sized to stay in L2, for the path's block kernel.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "aligned_scratch.h"
#include "arg_checks.h"
#include "conv_kernels.h"
#include "conv_windows.h"
#include "kernels.h"
#include "thread_pool.h"

namespace int8kit {
namespace {

using detail::DwJob;

// Below this many multiply-adds per thread, another thread costs more than it saves.
constexpr int64_t kMinMacsPerThread = int64_t(1) << 19;
constexpr int64_t kIm2colTileBytes = int64_t(192) << 10;  // per thread, well inside L2
// Implicit GEMM scratch (the padded copy of x) always allowed: cheap however padded.
constexpr double kPadCopyFloorBytes = double(1 << 20);
// K from which the AMX path convolves by im2col + AMX GEMM (see conv_uses_implicit_gemm).
constexpr int64_t kAmxIm2colMinK = 256;
constexpr int64_t kPanelsPerUnit = 3;  // the GEMM's widest tile, where the path has no tile_panels

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

std::pair<int64_t, int64_t> split(int64_t n, int64_t parts, int64_t i) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

detail::DepthwiseRowsFn depthwise_for(Isa isa) {
#if INT8KIT_HAVE_X86_KERNELS
  if (detail::runs_avx512_kernels(isa)) return detail::depthwise_rows_avx512vnni;
  if (isa == Isa::avx_vnni) return detail::depthwise_rows_avxvnni;
  if (isa == Isa::avx2) return detail::depthwise_rows_avx2;
#endif
  (void)isa;
  return detail::depthwise_rows_scalar;
}

void validate(const ConvArgs& a, int64_t* oh, int64_t* ow) {
  if (a.wt.base == nullptr) throw std::invalid_argument("packed conv weight is empty");
  if (a.n < 0) throw std::invalid_argument("batch size must be >= 0");
  conv_output_size(a.wt.p, a.h, a.w, oh, ow);
  const int64_t c = a.wt.p.in_channels;
  if (a.n > 0 && (a.h * a.w > (int64_t(1) << 40) / c / a.n ||
                  *oh * *ow > (int64_t(1) << 40) / a.wt.p.out_channels / a.n))
    throw std::invalid_argument("conv input or output is too large");
  if (a.n == 0) return;
  if (a.x == nullptr) throw std::invalid_argument("x is null");
  if (a.y == nullptr) throw std::invalid_argument("output is null");
  if (a.x_zp < 0 || a.x_zp > 255)
    throw std::invalid_argument("x_zero_point must be in [0, 255] for uint8 activations, got " +
                                std::to_string(a.x_zp));
  if (a.out != OutKind::s32) {
    if (!(std::isfinite(a.x_scale) && a.x_scale > 0.f))
      throw std::invalid_argument("x_scale must be finite and > 0");
    if (a.w_scale == nullptr) throw std::invalid_argument("w_scale is null");
    const int64_t oc = a.wt.p.out_channels;
    detail::check_scales(a.w_scale, a.w_scale_stride == 0 ? 1 : oc, "w_scale");
    if (a.bias != nullptr) detail::check_finite(a.bias, oc, "bias");
  }
  if (a.out == OutKind::u8 && !(std::isfinite(a.out_inv_scale) && a.out_inv_scale > 0.f))
    throw std::invalid_argument("output scale must be finite and > 0");
  if (a.out == OutKind::u8 && (a.out_zp < 0 || a.out_zp > 255))
    throw std::invalid_argument("output zero point must be in [0, 255]");
}

size_t out_elem_size(OutKind k) { return k == OutKind::u8 ? 1 : 4; }

// Gathers the im2col rows [m0, m1) of group g into buf (row stride ldb).
void im2col(const ConvArgs& a, int64_t oh, int64_t ow, int64_t g, int64_t m0, int64_t m1,
            uint8_t* buf, int64_t ldb) {
  const ConvParams& p = a.wt.p;
  const int64_t c = p.in_channels, icg = c / p.groups;
  const uint8_t zp = static_cast<uint8_t>(a.x_zp);
  // One group, no dilation: a kernel row's taps are one contiguous run of NHWC bytes.
  const bool run = p.groups == 1 && p.dil_w == 1;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = m / (oh * ow), r = m % (oh * ow), y = r / ow, x = r % ow;
    uint8_t* dst = buf + (m - m0) * ldb;
    for (int64_t kh = 0; kh < p.kh; ++kh) {
      const int64_t ih = y * p.stride_h - p.pad_h + kh * p.dil_h;
      const bool row_in = ih >= 0 && ih < a.h;
      const uint8_t* src_row = a.x + (n * a.h + (row_in ? ih : 0)) * a.w * c + g * icg;
      const int64_t iw0 = x * p.stride_w - p.pad_w;
      if (run && row_in && iw0 >= 0 && iw0 + p.kw <= a.w) {  // the kw taps are adjacent
        std::memcpy(dst, src_row + iw0 * c, static_cast<size_t>(p.kw * c));
        dst += p.kw * c;
        continue;
      }
      for (int64_t kw = 0; kw < p.kw; ++kw, dst += icg) {
        const int64_t iw = x * p.stride_w - p.pad_w + kw * p.dil_w;
        if (row_in && iw >= 0 && iw < a.w)
          std::memcpy(dst, src_row + iw * c, static_cast<size_t>(icg));
        else
          std::memset(dst, zp, static_cast<size_t>(icg));
      }
    }
  }
}

// The K runs of an implicit GEMM over rows of row_px pixels: one per kernel row
// when its kw taps are adjacent NHWC bytes (one group, no horizontal dilation), else one
// per tap. Empty when a run is not whole groups of 4 bytes (such convs use im2col).
std::vector<int64_t> implicit_runs(const ConvParams& p, int64_t row_px, int64_t* run_len) {
  const int64_t c = p.in_channels, icg = c / p.groups;
  std::vector<int64_t> off;
  if (p.groups == 1 && p.dil_w == 1 && (p.kw * c) % kKGroup == 0) {
    for (int64_t kh = 0; kh < p.kh; ++kh) off.push_back(kh * p.dil_h * row_px * c);
    *run_len = p.kw * c;
  } else if (icg % kKGroup == 0) {
    for (int64_t kh = 0; kh < p.kh; ++kh)
      for (int64_t kw = 0; kw < p.kw; ++kw)
        off.push_back((kh * p.dil_h * row_px + kw * p.dil_w) * c);
    *run_len = icg;
  }
  return off;
}

void run_gemm(const ConvArgs& a, int64_t oh, int64_t ow, int nthreads, Isa isa) {
  const ConvParams& p = a.wt.p;
  const int64_t G = p.groups, c = p.in_channels, icg = c / G, ocg = p.out_channels / G;
  const int64_t k = p.kh * p.kw * icg, M = a.n * oh * ow;
  const bool pointwise = p.kh == 1 && p.kw == 1 && p.pad_h == 0 && p.pad_w == 0;
  const bool direct = pointwise && p.stride_h == 1 && p.stride_w == 1;
  // Implicit GEMM where the path has one: activation rows are read in place, from x or
  // from its edge copies (im2col would copy every input byte KH*KW times).
  const detail::GemmGatherBlockFn gather = detail::kernels_for(isa).gemm_gather_block;
  int64_t run_len = 0;
  const bool implicit = detail::conv_uses_implicit_gemm(a, isa);
  // Otherwise a strided 1x1 conv reads one output row's pixels in place, as rows
  // lda = sw*C apart: one GEMM per output row, no gather.
  const bool strided = pointwise && !direct && !implicit;
  // The calling thread's (its copies are reused by its next call); workers get a pointer,
  // since the name would be their own thread_local.
  thread_local detail::ConvWindows caller_windows;
  detail::ConvWindows* const windows = &caller_windows;
  if (implicit) windows->prepare(a, oh, ow, nthreads);
  const std::vector<int64_t> runs =
      implicit ? implicit_runs(p, windows->row_pixels(), &run_len) : std::vector<int64_t>{};
  std::vector<PackedView> views(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) views[g] = a.wt.group(g);
  const detail::GemmBlockFn block = detail::kernels_for(isa).gemm_block;
  const GemmArgs base = detail::conv_epilogue_args(a, a.wt.p.out_channels);
  const int64_t ldb = round_up(k, 64);

  const int64_t macs = M * k * p.out_channels;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, macs / kMinMacsPerThread));
  const detail::KernelTable& kt = detail::kernels_for(isa);
  const int64_t unit_panels = kt.tile_panels ? kt.tile_panels(views[0].n_panels) : kPanelsPerUnit;
  const int64_t n_units = ceil_div(views[0].n_panels, unit_panels);
  // Row tiles: cache-sized im2col buffers, a multiple of nt of them when there are enough
  // rows; with few rows, each tile's columns are split instead, and where that still
  // leaves threads idle, the rows are cut finer too (16 threads, 512 channels @ 7x7,
  // batch 8: one 392-row tile of 8 column units had kept half the threads idle).
  const int64_t mt0 = direct || implicit ? 512 : std::clamp<int64_t>(kIm2colTileBytes / ldb / 8 * 8, 8, 1024);
  int64_t tiles = ceil_div(M, mt0);
  if (tiles * G >= nt)
    tiles = round_up(tiles * G, nt) / G;
  else if (tiles * G * n_units < nt)  // fewer units than threads: cut the rows finer
    tiles = std::min(ceil_div(M, 8), ceil_div(nt, G * n_units));
  const int64_t mt = strided ? ow : round_up(ceil_div(M, std::max<int64_t>(tiles, 1)), 8);
  tiles = ceil_div(M, mt);
  const int64_t nsplit =
      tiles * G >= nt ? 1 : std::min<int64_t>(n_units, ceil_div(nt, tiles * G));
  const int64_t units = G * tiles * nsplit;
  const size_t esz = out_elem_size(a.out);

  // Units go to threads in contiguous shares, late threads' work taken by the others.
  std::vector<int64_t> built_by(static_cast<size_t>(nt), -1);  // per tid: (g, tile) in buf
  detail::parallel_tiles(static_cast<int>(nt), units, [&](int tid, int64_t u) {
    thread_local std::vector<uint8_t> buf;           // this worker's im2col rows
    thread_local std::vector<const uint8_t*> rowptr;  // or its implicit-GEMM row starts
    int64_t& built = built_by[tid];
    const int64_t gt = u / nsplit, s = u % nsplit, g = gt / tiles, t = gt % tiles;
    const int64_t m0 = t * mt, m1 = std::min(M, m0 + mt);
    GemmArgs ga = base;
    ga.B = views[g];
    ga.M = m1 - m0;
    if (direct) {
      ga.A = a.x + m0 * c + g * icg;
      ga.lda = c;
    } else if (strided) {  // tile t is output row t of the flattened (n, oh)
      const int64_t n = t / oh, ih = (t % oh) * p.stride_h;
      ga.A = a.x + (n * a.h + ih) * a.w * c + g * icg;
      ga.lda = p.stride_w * c;
    } else if (implicit) {
      rowptr.resize(static_cast<size_t>(ga.M));
      int64_t n = m0 / (oh * ow), y = m0 % (oh * ow) / ow, x = m0 % ow;
      for (int64_t m = m0; m < m1; ++m) {  // (n, y, x) of output pixel m, stepped
        rowptr[m - m0] = windows->at(n, y, x) + g * icg;
        if (++x == ow) x = 0, y = y + 1 == oh ? (++n, 0) : y + 1;
      }
    } else {
      if (built != gt) {
        im2col(a, oh, ow, g, m0, m1, detail::fit_scratch(buf, static_cast<size_t>(mt * ldb)), ldb);
        built = gt;
      }
      ga.A = buf.data();
      ga.lda = ldb;
    }
    ga.C = static_cast<char*>(a.y) + (m0 * p.out_channels + g * ocg) * esz;
    if (ga.out != OutKind::s32) ga.w_scale = a.w_scale + g * ocg * a.w_scale_stride;
    if (ga.bias) ga.bias = a.bias + g * ocg;
    const auto [v0, v1] = split(n_units, nsplit, s);
    const int64_t p0 = v0 * unit_panels, p1 = std::min(v1 * unit_panels, ga.B.n_panels);
    if (p0 >= p1) return;
    if (implicit)
      gather(ga, detail::GatheredA{rowptr.data(), runs.data(), static_cast<int64_t>(runs.size()),
                                   run_len},
             0, ga.M, p0, p1);
    else
      block(ga, 0, ga.M, p0, p1);
  });
}

// Output rows per prep call: at least 4, and about 256 KB of uint8 input rows (in L2 when
// the kernel reads them). Each call re-packs weights and re-copies its first input rows:
// 4-row bands cost 1.2x at 32 channels @ 112^2 (64 KB bands 1.08x).
constexpr int64_t kDwBandRows = 4;
constexpr int64_t kDwBandBytes = int64_t(256) << 10;

void run_depthwise(const ConvArgs& a, int64_t oh, int64_t ow, int nthreads, Isa isa,
                   const detail::DwPrepFn* prep = nullptr) {
  const ConvParams& p = a.wt.p;
  std::vector<uint8_t> zprow(static_cast<size_t>(a.wt.cp + 64), static_cast<uint8_t>(a.x_zp));
  DwJob job{&a, oh, ow, zprow.data(), detail::conv_epilogue_args(a, a.wt.p.out_channels)};
  job.epi.B.colsum = a.wt.dw_colsum;
  job.epi.B.n = p.in_channels;
  const int64_t rows = a.n * oh;
  const int64_t macs = rows * ow * p.in_channels * p.kh * p.kw;
  const int64_t nt = std::max<int64_t>(
      1, std::min<int64_t>({int64_t(nthreads), rows, macs / (kMinMacsPerThread / 4)}));
  const detail::DepthwiseRowsFn fn = depthwise_for(isa);
  detail::parallel_for(static_cast<int>(nt), [&](int tid) {
    const auto [r0, r1] = split(rows, nt, tid);
    if (!prep) {
      if (r0 < r1) fn(job, r0, r1);
      return;
    }
    ConvArgs la = a;  // this thread's input buffer
    DwJob lj = job;
    lj.a = &la;
    const int64_t band = std::max<int64_t>(
        kDwBandRows, kDwBandBytes / std::max<int64_t>(1, a.w * p.in_channels * p.stride_h));
    for (int64_t b0 = r0; b0 < r1;) {  // bands never cross an image
      const int64_t b1 = std::min({r1, b0 + band, (b0 / oh + 1) * oh});
      la.x = (*prep)(b0, b1, &lj.x_row0);
      fn(lj, b0, b1);
      b0 = b1;
    }
  });
}

}  // namespace

void conv2d_with_isa(const ConvArgs& a, int nthreads, Isa isa) {
  nthreads = std::max(nthreads, 1);  // as gemm: < 1 means 1
  int64_t oh, ow;
  validate(a, &oh, &ow);
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("kernel path '") + isa_name(isa) +
                             "' cannot run on this CPU");
  if (a.n == 0) return;
  if (a.wt.layout == ConvLayout::depthwise)
    run_depthwise(a, oh, ow, nthreads, isa);
  else
    run_gemm(a, oh, ow, nthreads, isa);
}

namespace detail {

bool conv_uses_implicit_gemm(const ConvArgs& a, Isa isa) {
  const ConvParams& p = a.wt.p;
  const bool direct = p.kh == 1 && p.kw == 1 && p.pad_h == 0 && p.pad_w == 0 &&
                      p.stride_h == 1 && p.stride_w == 1;
  if (conv_is_depthwise(p) || direct || kernels_for(isa).gemm_gather_block == nullptr)
    return false;
  // AMX's GEMM on im2col tiles beats the VNNI implicit GEMM once K is a few tiles deep
  // (1 thread, batch 1: ResNet-18's 3x3 convs 1.7-2.8x), not on a 1x1 conv's K = 64 (0.83x)
  // nor where K % 64 leaves a tail for its VNNI finish (the digits CNN's K = 288: 0.6x).
  const int64_t k = p.kh * p.kw * (p.in_channels / p.groups);
  if (isa == Isa::amx_int8 && k >= kAmxIm2colMinK && k % 64 == 0) return false;
  int64_t run_len = 0;
  if (implicit_runs(p, 1, &run_len).empty()) return false;
  // Its scratch, at most the whole padded x, may be up to 4x the bytes of x and y: ordinary
  // padding stays far below (a 3x3 pad 1 on 2x2 pixels: 4x of x alone), while padding up
  // to 65536 would have it copy mostly zero points into GBs. im2col's scratch is a tile.
  int64_t oh, ow;
  conv_output_size(p, a.h, a.w, &oh, &ow);
  using D = double;  // these products can pass int64
  const D c = D(p.in_channels), oc = D(p.out_channels) * D(out_elem_size(a.out));
  const D padded = D(a.n) * D(a.h + 2 * p.pad_h) * D(a.w + 2 * p.pad_w) * c;
  const D xy = D(a.n) * (D(a.h) * D(a.w) * c + D(oh) * D(ow) * oc);
  return padded <= std::max(kPadCopyFloorBytes, 4 * xy);
}

GemmArgs conv_epilogue_args(const ConvArgs& a, int64_t out_channels) {
  GemmArgs g;
  g.a_zp = &a.x_zp;
  g.a_scale = &a.x_scale;
  g.w_scale = a.w_scale;
  g.w_scale_stride = a.w_scale_stride;
  g.bias = a.bias;
  g.relu = a.relu;
  g.out = a.out;
  g.out_inv_scale = a.out_inv_scale;
  g.out_zp = a.out_zp;
  g.C = a.y;
  g.ldc = out_channels;
  return g;
}
void conv2d_depthwise_banded(const ConvArgs& a, int nthreads, Isa isa, const DwPrepFn& prep) {
  if (a.wt.layout != ConvLayout::depthwise)
    throw std::invalid_argument("conv2d_depthwise_banded needs a depthwise weight");
  int64_t oh, ow;
  ConvArgs v = a;
  static const uint8_t kDummy = 0;
  if (v.x == nullptr) v.x = &kDummy;  // validate() wants a pointer; prep provides the data
  validate(v, &oh, &ow);
  nthreads = std::max(nthreads, 1);
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("kernel path '") + isa_name(isa) +
                             "' cannot run on this CPU");
  if (a.n == 0) return;
  run_depthwise(v, oh, ow, nthreads, isa, &prep);
}
}  // namespace detail

void conv2d(const ConvArgs& a, int nthreads) { conv2d_with_isa(a, nthreads, active_isa()); }

}  // namespace int8kit
