// pybind11 bindings for conv2d: buffer checks, GIL release, calls into conv.h. Friendly
// argument validation lives in python/int8kit/conv_ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "aligned_array.h"
#include "checked_array.h"
#include "int8kit/conv.h"

namespace py = pybind11;
using int8kit::bind::checked;
using int8kit::bind::single;
using namespace int8kit;

namespace {

// (in, out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups)
ConvParams params_of(const std::array<int64_t, 11>& v) {
  ConvParams p;
  p.in_channels = v[0];
  p.out_channels = v[1];
  p.kh = v[2];
  p.kw = v[3];
  p.stride_h = v[4];
  p.stride_w = v[5];
  p.pad_h = v[6];
  p.pad_w = v[7];
  p.dil_h = v[8];
  p.dil_w = v[9];
  p.groups = v[10];
  validate_conv_params(p);
  return p;
}

ConvView view_of(const py::handle& obj) {
  auto buf = checked<uint8_t>(obj, "packed", 1);
  return view_conv_packed(buf.data(), static_cast<size_t>(buf.shape(0)));
}

// Fills the input, output and epilogue fields shared by conv2d and the reference.
void fill_args(ConvArgs& c, const ConvParams& p, const py::handle& x_obj, int32_t x_zp,
               const py::handle& out_obj, float x_scale, const py::handle& w_scale_obj,
               const py::handle& bias_obj, bool relu, float out_inv_scale, int32_t out_zp) {
  auto x = checked<uint8_t>(x_obj, "x", 4);
  c.n = x.shape(0);
  c.h = x.shape(1);
  c.w = x.shape(2);
  if (x.shape(3) != p.in_channels)
    throw py::value_error("x must be NHWC with " + std::to_string(p.in_channels) +
                          " channels in the last dimension, got " +
                          std::to_string(x.shape(3)));
  c.x = x.data();
  c.x_zp = x_zp;
  int64_t oh, ow;
  conv_output_size(p, c.h, c.w, &oh, &ow);
  if (!py::isinstance<py::array>(out_obj)) throw py::type_error("out must be a numpy array");
  py::array out = py::reinterpret_borrow<py::array>(out_obj);
  if (bind::has_dtype<int32_t>(out)) {
    c.out = OutKind::s32;
    c.y = checked<int32_t>(out, "out", 4).mutable_data();
  } else if (bind::has_dtype<float>(out)) {
    c.out = OutKind::f32;
    c.y = checked<float>(out, "out", 4).mutable_data();
  } else if (bind::has_dtype<uint8_t>(out)) {
    c.out = OutKind::u8;
    c.y = checked<uint8_t>(out, "out", 4).mutable_data();
  } else {
    throw py::type_error("out must have dtype int32, float32 or uint8");
  }
  if (out.shape(0) != c.n || out.shape(1) != oh || out.shape(2) != ow ||
      out.shape(3) != p.out_channels)
    throw py::value_error("out must have shape [" + std::to_string(c.n) + ", " +
                          std::to_string(oh) + ", " + std::to_string(ow) + ", " +
                          std::to_string(p.out_channels) + "]");
  if (bind::overlaps(out, x))
    throw py::value_error("out must not overlap x (the conv reads x as it writes out)");
  if (c.out == OutKind::s32) return;
  c.x_scale = x_scale;
  auto ws = checked<float>(w_scale_obj, "w_scale", 1);
  if (ws.shape(0) != 1 && ws.shape(0) != p.out_channels)
    throw py::value_error("w_scale must have length 1 or " + std::to_string(p.out_channels));
  c.w_scale = ws.data();
  c.w_scale_stride = ws.shape(0) == 1 ? 0 : 1;
  if (!bias_obj.is_none()) {
    auto bias = checked<float>(bias_obj, "bias", 1);
    if (bias.shape(0) != p.out_channels)
      throw py::value_error("bias must have length " + std::to_string(p.out_channels));
    c.bias = bias.data();
  }
  c.relu = relu;
  c.out_inv_scale = out_inv_scale;
  c.out_zp = out_zp;
}

// A new aligned NHWC output of dtype dt for the uint8 NHWC x (fill_args checks the rest).
py::array new_output(const py::handle& x_obj, const ConvParams& p, const py::dtype& dt) {
  auto x = checked<uint8_t>(x_obj, "x", 4);
  int64_t oh, ow;
  conv_output_size(p, x.shape(1), x.shape(2), &oh, &ow);
  return bind::aligned_empty({x.shape(0), oh, ow, p.out_channels}, dt);
}

// The op of a statically quantized conv layer: uint8 NHWC x with the layer's calibrated
// input parameters, into a new NHWC output (float32, or uint8 requantized when out_u8).
// One call, so that a layer costs little Python beyond the kernel.
py::array conv2d_static_py(const py::handle& x_obj, const py::handle& packed,
                           const py::handle& w_scale, const py::handle& bias,
                           const py::handle& in_scale, const py::handle& in_zp, bool relu,
                           bool out_u8, float out_inv_scale, int32_t out_zp, int nthreads) {
  ConvArgs c;
  c.wt = view_of(packed);
  py::array y = new_output(x_obj, c.wt.p,
                           out_u8 ? py::dtype::of<uint8_t>() : py::dtype::of<float>());
  fill_args(c, c.wt.p, x_obj, single<int32_t>(in_zp, "in_zero_point"), y,
            single<float>(in_scale, "in_scale"), w_scale, bias, relu, out_inv_scale, out_zp);
  {
    py::gil_scoped_release nogil;
    conv2d_with_isa(c, nthreads, active_isa());
  }
  return y;
}

py::dict info_of(const ConvView& v) {
  py::dict d;
  d["in_channels"] = v.p.in_channels;
  d["out_channels"] = v.p.out_channels;
  d["kernel_size"] = py::make_tuple(v.p.kh, v.p.kw);
  d["stride"] = py::make_tuple(v.p.stride_h, v.p.stride_w);
  d["padding"] = py::make_tuple(v.p.pad_h, v.p.pad_w);
  d["dilation"] = py::make_tuple(v.p.dil_h, v.p.dil_w);
  d["groups"] = v.p.groups;
  d["layout"] = v.layout == ConvLayout::depthwise ? "depthwise" : "gemm";
  return d;
}

}  // namespace

void bind_conv(py::module_& m) {
  m.def("conv_packed_size_bytes", [](const std::array<int64_t, 11>& v) {
    return conv_packed_size_bytes(params_of(v));
  });
  m.def("pack_conv_weight", [](const py::handle& w_obj, const std::array<int64_t, 11>& v,
                               const py::handle& out_obj) {
    const ConvParams p = params_of(v);
    auto w = checked<int8_t>(w_obj, "weight", 4);
    if (w.shape(0) != p.out_channels || w.shape(1) != p.in_channels / p.groups ||
        w.shape(2) != p.kh || w.shape(3) != p.kw)
      throw py::value_error("weight must have shape [out_channels, in_channels/groups, KH, KW]");
    auto out = checked<uint8_t>(out_obj, "out", 1);
    if (static_cast<size_t>(out.shape(0)) != conv_packed_size_bytes(p))
      throw py::value_error("out must hold conv_packed_size_bytes(params) bytes");
    const int8_t* src = w.data();
    uint8_t* dst = out.mutable_data();
    py::gil_scoped_release nogil;
    pack_conv_weight(src, p, dst);
  });
  m.def("conv_packed_info", [](const py::handle& buf) { return info_of(view_of(buf)); });
  m.def("unpack_conv_weight", [](const py::handle& buf, const py::handle& out_obj) {
    const ConvView v = view_of(buf);
    auto out = checked<int8_t>(out_obj, "out", 4);
    const ConvParams& p = v.p;
    if (out.shape(0) != p.out_channels || out.shape(1) != p.in_channels / p.groups ||
        out.shape(2) != p.kh || out.shape(3) != p.kw)
      throw py::value_error("out must have shape [OC, IC/groups, KH, KW]");
    unpack_conv_weight(v, out.mutable_data());
  });
  // out: a numpy array to write, or a dtype for a new one (made here: a separate call costs
  // as much as a small conv). Returns out.
  m.def("conv2d", [](const py::handle& x, int32_t x_zp, const py::handle& packed,
                     const py::handle& out_obj, float x_scale, const py::handle& w_scale,
                     const py::handle& bias, bool relu, float out_inv_scale, int32_t out_zp,
                     int nthreads, const std::string& isa) {
    ConvArgs c;
    c.wt = view_of(packed);
    const py::object out_arg = py::reinterpret_borrow<py::object>(out_obj);
    py::array out = py::isinstance<py::array>(out_arg)
                        ? py::reinterpret_borrow<py::array>(out_arg)
                        : new_output(x, c.wt.p, py::dtype::from_args(out_arg));
    fill_args(c, c.wt.p, x, x_zp, out, x_scale, w_scale, bias, relu, out_inv_scale, out_zp);
    const Isa path = isa.empty() ? active_isa() : parse_isa(isa);
    {
      py::gil_scoped_release nogil;
      conv2d_with_isa(c, nthreads, path);
    }
    return out;
  });
  m.def("conv2d_static", &conv2d_static_py, py::arg("x"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("in_scale"), py::arg("in_zero_point"),
        py::arg("relu"), py::arg("out_u8"), py::arg("out_inv_scale"),
        py::arg("out_zero_point"), py::arg("threads"),
        "uint8 NHWC x -> new float32 (or requantized uint8) NHWC output, with the layer's "
        "input parameters as one-element arrays");
  m.def("conv2d_dynamic_f32", [](const py::handle& x_obj, bool x_nhwc, const py::handle& packed,
                                 const py::handle& w_scale_obj, const py::handle& bias_obj,
                                 bool relu, const py::handle& out_obj, bool out_nhwc,
                                 int nthreads, const std::string& isa, float x_scale,
                                 int32_t x_zero_point, float out_inv_scale, int32_t out_zp) {
    ConvDynamicArgs d;
    d.fixed_scale = x_scale, d.fixed_zp = x_zero_point;
    d.wt = view_of(packed);
    const ConvParams& p = d.wt.p;
    auto x = checked<float>(x_obj, "x", 4);
    const int64_t xc = x.shape(x_nhwc ? 3 : 1);
    if (xc != p.in_channels)
      throw py::value_error("x has " + std::to_string(xc) + " channels, expected " +
                            std::to_string(p.in_channels));
    d.n = x.shape(0), d.h = x.shape(x_nhwc ? 1 : 2), d.w = x.shape(x_nhwc ? 2 : 3);
    d.x = x.data(), d.x_nhwc = x_nhwc;
    int64_t oh, ow;
    conv_output_size(p, d.h, d.w, &oh, &ow);
    // A uint8 out array asks for the requantized output (NHWC only).
    d.out_u8 = py::isinstance<py::array_t<uint8_t>>(out_obj);
    if (d.out_u8 && !out_nhwc) throw py::value_error("a uint8 out must be NHWC (out_nhwc)");
    auto out = d.out_u8 ? py::array(checked<uint8_t>(out_obj, "out", 4))
                        : py::array(checked<float>(out_obj, "out", 4));
    const std::array<int64_t, 4> want =
        out_nhwc ? std::array<int64_t, 4>{d.n, oh, ow, p.out_channels}
                 : std::array<int64_t, 4>{d.n, p.out_channels, oh, ow};
    for (int i = 0; i < 4; ++i)
      if (out.shape(i) != want[i]) throw py::value_error("out has the wrong shape");
    d.y = out.mutable_data(), d.y_nhwc = out_nhwc;
    d.out_inv_scale = out_inv_scale, d.out_zp = out_zp;
    auto ws = checked<float>(w_scale_obj, "w_scale", 1);
    if (ws.shape(0) != 1 && ws.shape(0) != p.out_channels)
      throw py::value_error("w_scale must have length 1 or " + std::to_string(p.out_channels));
    d.w_scale = ws.data(), d.w_scale_stride = ws.shape(0) == 1 ? 0 : 1;
    if (!bias_obj.is_none()) {
      auto bias = checked<float>(bias_obj, "bias", 1);
      if (bias.shape(0) != p.out_channels)
        throw py::value_error("bias must have length " + std::to_string(p.out_channels));
      d.bias = bias.data();
    }
    d.relu = relu;
    const Isa path = isa.empty() ? active_isa() : parse_isa(isa);
    float scale = 0.f;
    int32_t zp = 0;
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = conv2d_dynamic_f32(d, nthreads, path, &scale, &zp);
    }
    return py::make_tuple(ok, scale, zp);
  }, py::arg("x"), py::arg("x_nhwc"), py::arg("packed"), py::arg("w_scale"), py::arg("bias"),
        py::arg("relu"), py::arg("out"), py::arg("out_nhwc"), py::arg("threads"),
        py::arg("isa") = "", py::arg("x_scale") = 0.f, py::arg("x_zero_point") = 0,
        py::arg("out_inv_scale") = 1.f, py::arg("out_zero_point") = 0,
        "float x -> float out in one call: range scan, quantize with the layout change, conv; "
        "x_scale > 0 quantizes with (x_scale, x_zero_point) instead of the measured range; a "
        "uint8 NHWC out is requantized with (out_inv_scale, out_zero_point)");
  m.def("conv2d_reference", [](const py::handle& x, int32_t x_zp, const py::handle& w_obj,
                               const std::array<int64_t, 11>& v, const py::handle& out,
                               float x_scale, const py::handle& w_scale, const py::handle& bias,
                               bool relu, float out_inv_scale, int32_t out_zp) {
    const ConvParams p = params_of(v);
    auto w = checked<int8_t>(w_obj, "weight", 4);
    if (w.shape(0) != p.out_channels || w.shape(1) != p.in_channels / p.groups ||
        w.shape(2) != p.kh || w.shape(3) != p.kw)
      throw py::value_error("weight must have shape [out_channels, in_channels/groups, KH, KW]");
    ConvArgs c;
    fill_args(c, p, x, x_zp, out, x_scale, w_scale, bias, relu, out_inv_scale, out_zp);
    if (c.x_zp < 0 || c.x_zp > 255) throw py::value_error("x_zero_point must be in [0, 255]");
    const int8_t* wp = w.data();
    py::gil_scoped_release nogil;
    conv2d_reference(c, p, wp);
  });
}
