// pybind11 bindings: buffer checks, GIL release, calls into the C++ API. No logic here;
// argument meaning and friendly validation live in python/int8kit/ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "aligned_array.h"
#include "checked_array.h"
#include "dlpack_io.h"
#include "int8kit/cpu_features.h"
#include "int8kit/gemm.h"
#include "int8kit/isa.h"
#include "int8kit/linear.h"
#include "int8kit/pack.h"
#include "int8kit/peak.h"
#include "int8kit/quantize.h"
#include "../cpu/thread_pool.h"

namespace py = pybind11;
using int8kit::bind::checked;
using int8kit::bind::per_index;
using namespace int8kit;

namespace {

PackedView view_of(const py::handle& obj) {
  auto buf = checked<uint8_t>(obj, "packed", 1);
  return view_packed(buf.data(), static_cast<size_t>(buf.shape(0)));
}

py::dict cpu_info() {
  const CpuFeatures& f = cpu_features();
  py::dict features;
  features["avx2"] = f.avx2;
  features["fma"] = f.fma;
  features["avx512f"] = f.avx512f;
  features["avx512bw"] = f.avx512bw;
  features["avx512vl"] = f.avx512vl;
  features["avx512dq"] = f.avx512dq;
  features["avx512_vnni"] = f.avx512_vnni;
  features["avx_vnni"] = f.avx_vnni;
  features["amx_int8"] = f.amx_int8;
  features["os_ymm"] = f.os_ymm;
  features["os_zmm"] = f.os_zmm;
  py::list supported;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx_vnni, Isa::avx512_vnni, Isa::amx_int8})
    if (isa_supported(isa)) supported.append(isa_name(isa));
  py::dict info;
  info["features"] = features;
  info["supported_paths"] = supported;
  info["best_path"] = isa_name(best_supported_isa());
  info["threading"] = detail::threading_backend();
  return info;
}

// out: a numpy array to write, or a dtype (int32, float32, uint8) for a new aligned array
// (allocated here: a separate call to make it costs ~1 us of a ~6 us GEMV). Returns out.
py::array gemm_py(const py::handle& a_obj, const py::handle& a_zp_obj,
                  const py::handle& packed_obj, const py::handle& out_obj,
                  const py::handle& a_scale_obj, const py::handle& w_scale_obj,
                  const py::handle& bias_obj, bool relu, float out_inv_scale, int32_t out_zp,
                  int nthreads, const std::string& isa) {
  GemmArgs g;
  g.B = view_of(packed_obj);
  auto a = checked<uint8_t>(a_obj, "a", 2);
  g.M = a.shape(0);
  if (a.shape(1) != g.B.k)
    throw py::value_error("a has K=" + std::to_string(a.shape(1)) +
                          " columns but the packed weight expects K=" + std::to_string(g.B.k));
  g.A = a.data();
  g.lda = g.B.k;
  std::tie(g.a_zp, g.a_zp_stride) = per_index<int32_t>(a_zp_obj, "a_zero_point", g.M);
  const py::object out_arg = py::reinterpret_borrow<py::object>(out_obj);
  py::array out = py::isinstance<py::array>(out_arg)
                      ? py::reinterpret_borrow<py::array>(out_arg)
                      : bind::aligned_empty({g.M, g.B.n}, py::dtype::from_args(out_arg));
  if (bind::has_dtype<int32_t>(out)) {
    g.out = OutKind::s32;
    g.C = checked<int32_t>(out, "out", 2).mutable_data();
  } else if (bind::has_dtype<float>(out)) {
    g.out = OutKind::f32;
    g.C = checked<float>(out, "out", 2).mutable_data();
  } else if (bind::has_dtype<uint8_t>(out)) {
    g.out = OutKind::u8;
    g.C = checked<uint8_t>(out, "out", 2).mutable_data();
  } else {
    throw py::type_error("out must have dtype int32, float32 or uint8");
  }
  if (out.shape(0) != g.M || out.shape(1) != g.B.n)
    throw py::value_error("out must have shape [" + std::to_string(g.M) + ", " +
                          std::to_string(g.B.n) + "]");
  if (bind::overlaps(out, a) || bind::overlaps(out, py::reinterpret_borrow<py::array>(packed_obj)))
    throw py::value_error("out must not overlap a or packed (the GEMM reads them as it writes)");
  g.ldc = g.B.n;
  if (g.out != OutKind::s32) {
    std::tie(g.a_scale, g.a_scale_stride) = per_index<float>(a_scale_obj, "a_scale", g.M);
    std::tie(g.w_scale, g.w_scale_stride) = per_index<float>(w_scale_obj, "w_scale", g.B.n);
    if (!bias_obj.is_none()) {
      auto bias = checked<float>(bias_obj, "bias", 1);
      if (bias.shape(0) != g.B.n)
        throw py::value_error("bias must have length N=" + std::to_string(g.B.n));
      g.bias = bias.data();
    }
    g.relu = relu;
    g.out_inv_scale = out_inv_scale;
    g.out_zp = out_zp;
  }
  const Isa path = isa.empty() ? active_isa() : parse_isa(isa);
  {
    py::gil_scoped_release nogil;
    gemm_with_isa(g, nthreads, path);
  }
  return out;
}

// gemm with int32 output on a torch uint8 tensor a [M, K] passed as a DLPack capsule
// (ops.gemm_s32's common call; dlpack_io.h says why): a capsule of the output [M, N], or
// None when a is not a compact 2-D uint8 CPU tensor with K columns, so that ops' checked
// path converts it or says what is wrong.
py::object gemm_s32_dlpack_py(const py::handle& a_capsule, int32_t a_zp,
                              const py::handle& packed_obj, int nthreads) {
  if (a_zp < 0 || a_zp > 255) throw py::value_error("a_zero_point must be in [0, 255]");
  bind::Rows<uint8_t> a;
  if (!bind::dl_rows(a_capsule, a) || a.lead.size() != 1) return py::none();
  GemmArgs g;
  g.B = view_of(packed_obj);
  if (a.cols != g.B.k) return py::none();
  g.M = a.rows;
  g.A = a.data;
  g.lda = g.B.k;
  g.a_zp = &a_zp;
  g.a_zp_stride = 0;
  bind::Output<int32_t> out({g.M, g.B.n});
  g.out = OutKind::s32;
  g.C = out.data();
  g.ldc = g.B.n;
  {
    py::gil_scoped_release nogil;
    gemm_with_isa(g, nthreads, active_isa());
  }
  return out.release();
}

}  // namespace

void bind_conv(pybind11::module_& m);
void bind_linear(pybind11::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "int8kit native kernels (use int8kit.ops, not this module)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.attr("PANEL") = kPanel;
  m.attr("MAX_K") = kMaxK;
  m.def("cpu_info", &cpu_info);
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("active_isa_reason", &active_isa_reason);
  m.def("set_isa", [](const std::string& name) { set_active_isa(parse_isa(name)); });
  m.def("packed_size_bytes", &packed_size_bytes);
  m.def("empty", [](const std::vector<py::ssize_t>& shape, const py::object& dtype) {
          return bind::aligned_empty(shape, py::dtype::from_args(dtype));
        }, py::arg("shape"), py::arg("dtype"),
        "An uninitialized array whose data starts on a 64-byte cache line");
  m.def("pack_weight", [](const py::handle& w_obj, const py::handle& out_obj) {
    auto w = checked<int8_t>(w_obj, "weight", 2);
    auto out = checked<uint8_t>(out_obj, "out", 1);
    const int64_t n = w.shape(0), k = w.shape(1);
    if (static_cast<size_t>(out.shape(0)) != packed_size_bytes(n, k))
      throw py::value_error("out must hold packed_size_bytes(N, K) bytes");
    const int8_t* src = w.data();
    uint8_t* dst = out.mutable_data();
    py::gil_scoped_release nogil;
    pack_weight(src, n, k, k, dst);
  });
  m.def("packed_info", [](const py::handle& buf) {
    const PackedView v = view_of(buf);
    py::dict d;
    d["n"] = v.n;
    d["k"] = v.k;
    d["k_groups"] = v.k_groups;
    d["n_panels"] = v.n_panels;
    return d;
  });
  m.def("unpack_weight", [](const py::handle& buf, const py::handle& out_obj) {
    const PackedView v = view_of(buf);
    auto out = checked<int8_t>(out_obj, "out", 2);
    if (out.shape(0) != v.n || out.shape(1) != v.k)
      throw py::value_error("out must have shape [N, K]");
    unpack_weight(v, out.mutable_data());
  });
  m.def("gemm", &gemm_py, py::arg("a"), py::arg("a_zero_point"), py::arg("packed"),
        py::arg("out"), py::arg("a_scale"), py::arg("w_scale"), py::arg("bias"),
        py::arg("relu"), py::arg("out_inv_scale"), py::arg("out_zero_point"),
        py::arg("threads"), py::arg("isa"));
  m.def("gemm_s32_dlpack", &gemm_s32_dlpack_py, py::arg("a"), py::arg("a_zero_point"),
        py::arg("packed"), py::arg("threads"),
        "int32 [M, N] from a DLPack capsule of a uint8 CPU tensor [M, K] (a capsule), or "
        "None when a is not a compact 2-D uint8 CPU tensor with K columns");
  m.def("quantize_dynamic_u8", [](const py::handle& x_obj, bool per_row, const py::handle& q_obj,
                                  const py::handle& scale_obj, const py::handle& zp_obj,
                                  int nthreads) {
    auto x = checked<float>(x_obj, "x", 2);
    auto q = checked<uint8_t>(q_obj, "q", 2);
    const int64_t M = x.shape(0), K = x.shape(1);
    if (q.shape(0) != M || q.shape(1) != K) throw py::value_error("q must have x's shape");
    const int64_t nparams = per_row ? M : 1;
    auto scale = checked<float>(scale_obj, "scale", 1);
    auto zp = checked<int32_t>(zp_obj, "zero_point", 1);
    if (scale.shape(0) != nparams || zp.shape(0) != nparams)
      throw py::value_error("scale and zero_point must have length " + std::to_string(nparams));
    const float* xp = x.data();
    uint8_t* qp = q.mutable_data();
    float* sp = scale.mutable_data();
    int32_t* zpp = zp.mutable_data();
    py::gil_scoped_release nogil;
    return quantize_dynamic_u8(xp, M, K, K, per_row, qp, K, sp, zpp, nthreads);
  });
  m.def("quantize_u8", [](const py::handle& x_obj, float scale, int32_t zp,
                          const py::handle& q_obj, bool check_finite) {
    auto x = checked<float>(x_obj, "x", 1);
    auto q = checked<uint8_t>(q_obj, "q", 1);
    if (q.shape(0) != x.shape(0)) throw py::value_error("q must have x's length");
    const float* xp = x.data();
    uint8_t* qp = q.mutable_data();
    const int64_t n = x.shape(0);
    py::gil_scoped_release nogil;
    if (check_finite) return quantize_u8_checked(xp, n, scale, zp, qp);
    quantize_u8(xp, n, scale, zp, qp);
    return true;
  }, py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("q"),
     py::arg("check_finite") = false,
     "q = quantize(x); with check_finite, False (q untouched) if x holds NaN or Inf");
  m.def("minmax", [](const py::handle& x_obj) {
    auto x = checked<float>(x_obj, "x", 1);
    const MinMax mm = minmax_f32(x.data(), x.shape(0));
    return py::make_tuple(mm.lo, mm.hi, mm.finite);
  });
  m.def("choose_qparams_u8", [](float lo, float hi) {
    float s;
    int32_t z;
    choose_qparams_u8(lo, hi, &s, &z);
    return py::make_tuple(s, z);
  });
  m.def("vnni_peak_ops_per_second", [](int nthreads, int64_t iters) {
    py::gil_scoped_release nogil;
    return vnni_peak_ops_per_second(nthreads, iters);
  });
  // For tests: a parallel region in which tid `throwing_tid` throws.
  m.def("_parallel_error_probe", [](int nthreads, int throwing_tid) {
    py::gil_scoped_release nogil;
    detail::parallel_for(nthreads, [&](int tid) {
      if (tid == throwing_tid) throw std::runtime_error("thrown by tid " + std::to_string(tid));
    });
  });
  bind_conv(m);
  bind_linear(m);
}
