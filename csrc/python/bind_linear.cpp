// pybind11 bindings for the fused float-input linear (linear.h): buffer checks, output
// allocation, GIL release. The modules in python/int8kit/nn call these on every forward,
// so they take numpy views the modules cache and allocate the output here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "aligned_array.h"
#include "checked_array.h"
#include "dlpack_io.h"
#include "int8kit/linear.h"

namespace py = pybind11;
using int8kit::bind::checked;
using int8kit::bind::single;
using namespace int8kit;

namespace {

// The packed weight, per-column scales and bias, checked against each other.
LinearArgs weight_args(const py::handle& packed_obj, const py::handle& w_scale_obj,
                       const py::handle& bias_obj, bool relu) {
  LinearArgs a;
  auto buf = checked<uint8_t>(packed_obj, "packed", 1);
  a.B = view_packed(buf.data(), static_cast<size_t>(buf.shape(0)));
  auto ws = checked<float>(w_scale_obj, "w_scale", 1);
  if (ws.shape(0) != 1 && ws.shape(0) != a.B.n)
    throw py::value_error("w_scale must have length 1 or N=" + std::to_string(a.B.n));
  a.w_scale = ws.data();
  a.w_scale_stride = ws.shape(0) == 1 ? 0 : 1;
  if (!bias_obj.is_none()) {
    auto bias = checked<float>(bias_obj, "bias", 1);
    if (bias.shape(0) != a.B.n)
      throw py::value_error("bias must have length N=" + std::to_string(a.B.n));
    a.bias = bias.data();
  }
  a.relu = relu;
  return a;
}

// x [M, K] and the weight arguments, checked against each other.
LinearArgs linear_args(const py::handle& x_obj, const py::handle& packed_obj,
                       const py::handle& w_scale_obj, const py::handle& bias_obj, bool relu) {
  LinearArgs a = weight_args(packed_obj, w_scale_obj, bias_obj, relu);
  auto x = checked<float>(x_obj, "x", 2);
  if (x.shape(1) != a.B.k)
    throw py::value_error("x has K=" + std::to_string(x.shape(1)) +
                          " columns but the packed weight expects K=" + std::to_string(a.B.k));
  a.x = x.data();
  a.M = x.shape(0);
  return a;
}

py::array linear_dynamic_py(const py::handle& x, const py::handle& packed,
                            const py::handle& w_scale, const py::handle& bias, bool per_row,
                            bool relu, int nthreads) {
  const LinearArgs a = linear_args(x, packed, w_scale, bias, relu);
  auto y = bind::aligned_empty<float>({a.M, a.B.n});
  float* yp = y.mutable_data();
  bool finite;
  {
    py::gil_scoped_release nogil;
    finite = linear_dynamic_f32(a, per_row, yp, nthreads);
  }
  if (!finite) throw py::value_error("x contains NaN or Inf; cannot quantize activations");
  return std::move(y);
}

// linear_dynamic on a torch tensor x [..., K] passed as a DLPack capsule (QuantLinear's
// eager path; see dlpack_io.h): a capsule holding the float32 output [..., N], or None when
// x is not a compact float32 CPU tensor whose last dimension is K, so that the module's
// checked path converts it or says what is wrong.
py::object linear_dynamic_dlpack_py(const py::handle& x_capsule, const py::handle& packed,
                                    const py::handle& w_scale, const py::handle& bias,
                                    bool per_row, bool relu, int nthreads) {
  bind::Rows<float> x;
  if (!bind::dl_rows(x_capsule, x)) return py::none();
  LinearArgs a = weight_args(packed, w_scale, bias, relu);
  if (x.cols != a.B.k) return py::none();
  a.x = x.data;
  a.M = x.rows;
  std::vector<int64_t> shape = x.lead;
  shape.push_back(a.B.n);
  bind::Output<float> y(std::move(shape));
  bool finite;
  {
    py::gil_scoped_release nogil;
    finite = linear_dynamic_f32(a, per_row, y.data(), nthreads);
  }
  if (!finite) throw py::value_error("x contains NaN or Inf; cannot quantize activations");
  return y.release();
}

// One quantization of x for several layers: [packed...], [w_scale...], [bias or None...].
py::list linear_dynamic_multi_py(const py::handle& x, const py::sequence& packed,
                                 const py::sequence& w_scale, const py::sequence& bias,
                                 bool per_row, int nthreads) {
  const size_t n = packed.size();
  if (n == 0 || w_scale.size() != n || bias.size() != n)
    throw py::value_error("packed, w_scale and bias must be lists of one equal length >= 1");
  std::vector<LinearArgs> layers;
  std::vector<py::array_t<float>> ys;
  std::vector<float*> yp;
  for (size_t i = 0; i < n; ++i) {
    layers.push_back(linear_args(x, packed[i], w_scale[i], bias[i], false));
    ys.push_back(bind::aligned_empty<float>({layers[i].M, layers[i].B.n}));
    yp.push_back(ys.back().mutable_data());
  }
  bool finite;
  {
    py::gil_scoped_release nogil;
    finite = linear_dynamic_f32_multi(layers.data(), static_cast<int>(n), per_row, yp.data(),
                                      nthreads);
  }
  if (!finite) throw py::value_error("x contains NaN or Inf; cannot quantize activations");
  py::list out;
  for (auto& y : ys) out.append(y);
  return out;
}

py::array linear_static_py(const py::handle& x, const py::handle& packed,
                           const py::handle& w_scale, const py::handle& bias,
                           const py::handle& in_scale_obj, const py::handle& in_zp_obj, bool relu,
                           bool out_u8, float out_inv_scale, int32_t out_zp, int nthreads) {
  const LinearArgs a = linear_args(x, packed, w_scale, bias, relu);
  const float in_scale = single<float>(in_scale_obj, "in_scale");
  const int32_t in_zp = single<int32_t>(in_zp_obj, "in_zero_point");
  py::array y = bind::aligned_empty({a.M, a.B.n}, out_u8 ? py::dtype::of<uint8_t>()
                                                            : py::dtype::of<float>());
  void* yp = y.mutable_data();
  bool finite;
  {
    py::gil_scoped_release nogil;
    finite = linear_static(a, in_scale, in_zp, out_u8 ? OutKind::u8 : OutKind::f32, yp,
                           out_inv_scale, out_zp, nthreads);
  }
  if (!finite) throw py::value_error("x contains NaN or Inf; cannot quantize it");
  return y;
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("linear_dynamic", &linear_dynamic_py, py::arg("x"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("per_row"), py::arg("relu"),
        py::arg("threads"),
        "float32 [M, N] from float32 x [M, K]: dynamic uint8 quantization + GEMM, fused");
  m.def("linear_dynamic_dlpack", &linear_dynamic_dlpack_py, py::arg("x"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("per_row"), py::arg("relu"),
        py::arg("threads"),
        "linear_dynamic on a DLPack capsule of a float32 CPU tensor [..., K]: a capsule of "
        "the output [..., N], or None when x is not a compact float32 CPU tensor with K "
        "columns");
  m.def("linear_dynamic_multi", &linear_dynamic_multi_py, py::arg("x"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("per_row"), py::arg("threads"),
        "[float32 [M, N_i]] from float32 x [M, K] and several packed weights: x quantized "
        "once (attention's q, k, v), each output as linear_dynamic's");
  m.def("linear_static", &linear_static_py, py::arg("x"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("in_scale"), py::arg("in_zero_point"),
        py::arg("relu"), py::arg("out_u8"), py::arg("out_inv_scale"),
        py::arg("out_zero_point"), py::arg("threads"),
        "float32 (or requantized uint8) [M, N] from float32 x [M, K] with fixed input "
        "parameters: quantization + GEMM, fused");
}
