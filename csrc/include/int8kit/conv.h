// Conv2d on uint8 NHWC activations x packed int8 weights, exact int32 accumulation, with the
// GEMM's fused epilogues (see gemm.h; the activation parameters are per tensor here):
//   acc[n,oh,ow,oc] = sum_{kh,kw,ic} (x[n,ih,iw,g*ICg+ic] - x_zp) * w[oc,ic,kh,kw]
// where ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw, and an (ih, iw) outside the image
// reads x_zp (zero padding of the real-valued input), so padded taps contribute 0.
// Every path (scalar, AVX2, AVX-512 VNNI) and every thread count gives identical bits.
#pragma once

#include <cstddef>
#include <cstdint>

#include "int8kit/gemm.h"
#include "int8kit/isa.h"
#include "int8kit/pack.h"

namespace int8kit {

struct ConvParams {
  int64_t in_channels = 0, out_channels = 0;
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;
};

// Packed conv weight layouts. gemm: one pack.h buffer per group for the [OC/G, KH*KW*IC/G]
// matrix with K ordered (kh, kw, ic), matching an NHWC im2col row. depthwise (groups ==
// in == out channels): per-channel tap sums, a plain [KH*KW][Cp] copy, and the AVX-512
// layout [Cp/64][KH*KW][4][64] where row r of a tap keeps only bytes with index % 4 == r.
enum class ConvLayout : uint32_t { gemm = 0, depthwise = 1 };

constexpr uint32_t kConvMagic = 0x38434B49;  // "IKC8"
constexpr uint32_t kConvVersion = 1;
constexpr int64_t kDwBlock = 64;  // depthwise channels per AVX-512 block

struct ConvHeader {
  uint32_t magic, version;
  uint32_t layout, reserved0;
  int64_t ic, oc, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  uint64_t nbytes;       // whole buffer, header included
  uint64_t group_bytes;  // gemm: bytes per group (64-aligned); depthwise: Cp
  uint8_t reserved[8];
};
static_assert(sizeof(ConvHeader) == 128, "two cache lines");

// A validated, read-only view of a packed conv weight.
struct ConvView {
  ConvParams p;
  ConvLayout layout = ConvLayout::gemm;
  const uint8_t* base = nullptr;
  uint64_t group_bytes = 0;
  // depthwise only
  int64_t cp = 0;                       // channels padded to kDwBlock
  const int32_t* dw_colsum = nullptr;   // [cp]
  const int8_t* dw_plain = nullptr;     // [KH*KW][cp]
  const int8_t* dw_expanded = nullptr;  // [cp/64][KH*KW][4][64]
  PackedView group(int64_t g) const;    // gemm only
};

// Throws std::invalid_argument naming the bad parameter.
void validate_conv_params(const ConvParams& p);
bool conv_is_depthwise(const ConvParams& p);
// Output size for an H x W input; throws if the (dilated) kernel does not fit.
void conv_output_size(const ConvParams& p, int64_t h, int64_t w, int64_t* oh, int64_t* ow);

size_t conv_packed_size_bytes(const ConvParams& p);
// Packs w[OC, IC/G, KH, KW] (contiguous) into out (conv_packed_size_bytes(p) bytes).
void pack_conv_weight(const int8_t* w, const ConvParams& p, uint8_t* out);
// Checks magic, version, parameters and sizes; throws std::invalid_argument if off.
ConvView view_conv_packed(const uint8_t* buf, size_t nbytes);
// The inverse of pack_conv_weight: w[OC, IC/G, KH, KW] (contiguous) from a packed view.
void unpack_conv_weight(const ConvView& v, int8_t* w);

struct ConvArgs {
  int64_t n = 0, h = 0, w = 0;     // input [n, h, w, in_channels] uint8, contiguous
  const uint8_t* x = nullptr;
  int32_t x_zp = 0;                // in [0, 255]
  ConvView wt;
  OutKind out = OutKind::s32;
  void* y = nullptr;               // [n, oh, ow, out_channels], contiguous
  float x_scale = 1.f;             // f32 / u8 epilogues
  const float* w_scale = nullptr;  // [out_channels] (stride 1) or one value (stride 0)
  int64_t w_scale_stride = 1;
  const float* bias = nullptr;     // [out_channels] or null
  bool relu = false;
  float out_inv_scale = 1.f;       // u8 epilogue
  int32_t out_zp = 0;
};

// Validates and runs on the active path (or a forced one) with up to nthreads threads.
void conv2d(const ConvArgs& args, int nthreads);
void conv2d_with_isa(const ConvArgs& args, int nthreads, Isa isa);

// Dynamic conv on float activations (what QuantConv2d runs): measures x's range per tensor
// (torch.ao's MinMax rule, as quantize_dynamic_u8), quantizes x to uint8 NHWC in the same
// pass that changes its layout, and runs conv2d with the f32 epilogue, writing y in the
// layout asked for. Bit-identical to quantize_dynamic_u8 + layout change + conv2d.
struct ConvDynamicArgs {
  int64_t n = 0, h = 0, w = 0;
  const float* x = nullptr;        // [n, C, h, w] contiguous, or [n, h, w, C] if x_nhwc
  bool x_nhwc = false;
  ConvView wt;
  const float* w_scale = nullptr;  // as ConvArgs
  int64_t w_scale_stride = 1;
  const float* bias = nullptr;
  bool relu = false;
  void* y = nullptr;               // [n, OC, oh, ow] contiguous, or [n, oh, ow, OC] if y_nhwc
  bool y_nhwc = false;
  // out_u8: y is uint8 [n, oh, ow, OC] (y_nhwc must be set), requantized as conv2d does
  // with (out_inv_scale, out_zp); else float32.
  bool out_u8 = false;
  float out_inv_scale = 1.f;
  int32_t out_zp = 0;
  // Static quantization: fixed_scale > 0 quantizes x with (fixed_scale, fixed_zp), the
  // calibrated input parameters, instead of parameters from x's measured range.
  float fixed_scale = 0.f;
  int32_t fixed_zp = 0;
};
// Returns false (y unspecified) if x holds NaN or Inf; the activation parameters used go
// to *x_scale, *x_zp. With out_u8 and fixed parameters: a static layer's float input to
// its uint8 output in one call.
bool conv2d_dynamic_f32(const ConvDynamicArgs& d, int nthreads, Isa isa, float* x_scale,
                        int32_t* x_zp);

// The scalar oracle: direct loops in int64 over the plain weight w[OC, IC/G, KH, KW];
// args.wt is ignored. The epilogue is epilogue_ref.h's.
void conv2d_reference(const ConvArgs& args, const ConvParams& p, const int8_t* w);

}  // namespace int8kit
