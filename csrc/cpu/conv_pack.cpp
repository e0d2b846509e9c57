// Conv parameters, packed conv weights (both layouts of conv.h) and their verification.
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "int8kit/conv.h"

namespace int8kit {
namespace {

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

ConvParams params_of(const ConvHeader& h) {
  ConvParams p;
  p.in_channels = h.ic;
  p.out_channels = h.oc;
  p.kh = h.kh;
  p.kw = h.kw;
  p.stride_h = h.sh;
  p.stride_w = h.sw;
  p.pad_h = h.ph;
  p.pad_w = h.pw;
  p.dil_h = h.dh;
  p.dil_w = h.dw;
  p.groups = h.groups;
  return p;
}

int64_t group_k(const ConvParams& p) { return p.kh * p.kw * (p.in_channels / p.groups); }

}  // namespace

void validate_conv_params(const ConvParams& p) {
  require(p.in_channels >= 1, "in_channels must be >= 1");
  require(p.out_channels >= 1, "out_channels must be >= 1");
  require(p.kh >= 1 && p.kw >= 1, "kernel_size must be >= 1");
  require(p.stride_h >= 1 && p.stride_w >= 1, "stride must be >= 1");
  require(p.pad_h >= 0 && p.pad_w >= 0, "padding must be >= 0");
  require(p.dil_h >= 1 && p.dil_w >= 1, "dilation must be >= 1");
  require(p.groups >= 1, "groups must be >= 1");
  require(p.in_channels % p.groups == 0 && p.out_channels % p.groups == 0,
          "in_channels (" + std::to_string(p.in_channels) + ") and out_channels (" +
              std::to_string(p.out_channels) + ") must be divisible by groups (" +
              std::to_string(p.groups) + ")");
  // Bounds that keep every size computation far from int64 overflow.
  require(p.in_channels <= (1 << 24) && p.out_channels <= (1 << 24) && p.kh <= 4096 &&
              p.kw <= 4096 && p.stride_h <= 4096 && p.stride_w <= 4096 && p.pad_h <= 65536 &&
              p.pad_w <= 65536 && p.dil_h <= 4096 && p.dil_w <= 4096,
          "conv parameters are out of the supported range");
  require(group_k(p) <= kMaxK,
          "KH*KW*in_channels/groups = " + std::to_string(group_k(p)) + " exceeds the largest K (" +
              std::to_string(kMaxK) + ") for which the int32 accumulator cannot overflow");
}

bool conv_is_depthwise(const ConvParams& p) {
  return p.groups > 1 && p.in_channels == p.groups && p.out_channels == p.groups;
}

void conv_output_size(const ConvParams& p, int64_t h, int64_t w, int64_t* oh, int64_t* ow) {
  const int64_t eh = p.dil_h * (p.kh - 1) + 1, ew = p.dil_w * (p.kw - 1) + 1;
  require(h >= 1 && w >= 1, "input height and width must be >= 1");
  require(h + 2 * p.pad_h >= eh && w + 2 * p.pad_w >= ew,
          "input " + std::to_string(h) + "x" + std::to_string(w) +
              " (padded) is smaller than the dilated kernel " + std::to_string(eh) + "x" +
              std::to_string(ew));
  *oh = (h + 2 * p.pad_h - eh) / p.stride_h + 1;
  *ow = (w + 2 * p.pad_w - ew) / p.stride_w + 1;
}

size_t conv_packed_size_bytes(const ConvParams& p) {
  validate_conv_params(p);
  if (conv_is_depthwise(p)) {
    const int64_t cp = round_up(p.in_channels, kDwBlock), taps = p.kh * p.kw;
    return sizeof(ConvHeader) + 4 * cp + taps * cp + 4 * taps * cp;
  }
  const int64_t gb = round_up(packed_size_bytes(p.out_channels / p.groups, group_k(p)), 64);
  return sizeof(ConvHeader) + p.groups * gb;
}

void pack_conv_weight(const int8_t* w, const ConvParams& p, uint8_t* out) {
  const size_t nbytes = conv_packed_size_bytes(p);
  std::memset(out, 0, nbytes);
  ConvHeader h{};
  h.magic = kConvMagic;
  h.version = kConvVersion;
  h.ic = p.in_channels;
  h.oc = p.out_channels;
  h.kh = p.kh;
  h.kw = p.kw;
  h.sh = p.stride_h;
  h.sw = p.stride_w;
  h.ph = p.pad_h;
  h.pw = p.pad_w;
  h.dh = p.dil_h;
  h.dw = p.dil_w;
  h.groups = p.groups;
  h.nbytes = nbytes;
  const int64_t taps = p.kh * p.kw;
  if (conv_is_depthwise(p)) {
    h.layout = static_cast<uint32_t>(ConvLayout::depthwise);
    const int64_t cp = round_up(p.in_channels, kDwBlock);
    h.group_bytes = static_cast<uint64_t>(cp);
    std::memcpy(out, &h, sizeof(h));
    int32_t* colsum = reinterpret_cast<int32_t*>(out + sizeof(ConvHeader));
    int8_t* plain = reinterpret_cast<int8_t*>(colsum + cp);
    int8_t* expanded = plain + taps * cp;
    for (int64_t c = 0; c < p.in_channels; ++c) {
      int32_t sum = 0;
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = w[c * taps + t];  // w[c, 0, kh, kw] with t = kh*KW + kw
        sum += v;
        plain[t * cp + c] = v;
        const int64_t b = c / kDwBlock, r = c % kDwBlock;
        expanded[((b * taps + t) * 4 + r % 4) * kDwBlock + r] = v;
      }
      colsum[c] = sum;
    }
    return;
  }
  h.layout = static_cast<uint32_t>(ConvLayout::gemm);
  const int64_t ocg = p.out_channels / p.groups, icg = p.in_channels / p.groups;
  const int64_t k = group_k(p);
  h.group_bytes = round_up(packed_size_bytes(ocg, k), 64);
  std::memcpy(out, &h, sizeof(h));
  std::vector<int8_t> mat(static_cast<size_t>(ocg * k));
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t j = 0; j < ocg; ++j)
      for (int64_t ic = 0; ic < icg; ++ic)
        for (int64_t t = 0; t < taps; ++t)  // K ordered (kh, kw, ic), like an NHWC patch
          mat[j * k + t * icg + ic] = w[((g * ocg + j) * icg + ic) * taps + t];
    pack_weight(mat.data(), ocg, k, k, out + sizeof(ConvHeader) + g * h.group_bytes);
  }
}

void unpack_conv_weight(const ConvView& v, int8_t* w) {
  const ConvParams& p = v.p;
  const int64_t taps = p.kh * p.kw;
  if (v.layout == ConvLayout::depthwise) {
    for (int64_t c = 0; c < p.in_channels; ++c)
      for (int64_t t = 0; t < taps; ++t) w[c * taps + t] = v.dw_plain[t * v.cp + c];
    return;
  }
  const int64_t ocg = p.out_channels / p.groups, icg = p.in_channels / p.groups;
  const int64_t k = group_k(p);
  std::vector<int8_t> mat(static_cast<size_t>(ocg * k));
  for (int64_t g = 0; g < p.groups; ++g) {
    unpack_weight(v.group(g), mat.data());
    for (int64_t j = 0; j < ocg; ++j)
      for (int64_t ic = 0; ic < icg; ++ic)
        for (int64_t t = 0; t < taps; ++t)
          w[((g * ocg + j) * icg + ic) * taps + t] = mat[j * k + t * icg + ic];
  }
}

ConvView view_conv_packed(const uint8_t* buf, size_t nbytes) {
  require(buf != nullptr && nbytes >= sizeof(ConvHeader),
          "packed conv weight buffer is too small to hold a header");
  ConvHeader h;
  std::memcpy(&h, buf, sizeof(h));
  require(h.magic == kConvMagic, "buffer is not an int8kit packed conv weight (bad magic)");
  require(h.version == kConvVersion,
          "packed conv weight has layout version " + std::to_string(h.version) +
              ", this build reads version " + std::to_string(kConvVersion));
  ConvView v;
  v.p = params_of(h);
  validate_conv_params(v.p);
  const bool dw = conv_is_depthwise(v.p);
  require(h.layout == static_cast<uint32_t>(dw ? ConvLayout::depthwise : ConvLayout::gemm) &&
              h.nbytes == conv_packed_size_bytes(v.p) && h.nbytes == nbytes,
          "packed conv weight header is inconsistent with its size");
  v.layout = static_cast<ConvLayout>(h.layout);
  v.base = buf;
  v.group_bytes = h.group_bytes;
  if (dw) {
    v.cp = round_up(v.p.in_channels, kDwBlock);
    require(h.group_bytes == static_cast<uint64_t>(v.cp), "packed conv weight header is corrupt");
    v.dw_colsum = reinterpret_cast<const int32_t*>(buf + sizeof(ConvHeader));
    v.dw_plain = reinterpret_cast<const int8_t*>(v.dw_colsum + v.cp);
    v.dw_expanded = v.dw_plain + v.p.kh * v.p.kw * v.cp;
  } else {
    // Checked before group() reads a header at base + g * group_bytes: a corrupt value
    // would send it outside the buffer.
    const int64_t ocg = v.p.out_channels / v.p.groups;
    const int64_t gb = round_up(static_cast<int64_t>(packed_size_bytes(ocg, group_k(v.p))), 64);
    require(h.group_bytes == static_cast<uint64_t>(gb),
            "packed conv weight header is corrupt");
    for (int64_t g = 0; g < v.p.groups; ++g) {
      const PackedView gv = v.group(g);
      require(gv.n == v.p.out_channels / v.p.groups && gv.k == group_k(v.p),
              "packed conv weight group " + std::to_string(g) + " has the wrong shape");
    }
  }
  return v;
}

PackedView ConvView::group(int64_t g) const {
  const int64_t k = p.kh * p.kw * (p.in_channels / p.groups);
  const uint8_t* gb = base + sizeof(ConvHeader) + g * group_bytes;
  return view_packed(gb, packed_size_bytes(p.out_channels / p.groups, k));
}

}  // namespace int8kit
