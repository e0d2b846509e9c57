// Internal to the bindings: numpy argument checks that raise TypeError / ValueError naming
// the argument, shared by every bind_*.cpp file.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

namespace int8kit::bind {

namespace py = pybind11;

// Whether arr holds T: the same dtype object, or an equal one (an array that was pickled,
// as multiprocessing and joblib do, carries its own copy; a non-native byte order is not
// equal).
template <typename T>
bool has_dtype(const py::array& arr) {
  const py::dtype want = py::dtype::of<T>();
  return arr.dtype().is(want) || arr.dtype().equal(want);
}

// Whether the bytes of two C-contiguous arrays overlap: the kernels read their inputs
// while they write the output, so an output over an input gives garbage.
inline bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// Checks dtype, rank and C-contiguity.
template <typename T>
py::array_t<T> checked(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array");
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<T>(arr))
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(arr.dtype())));
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(arr.ndim()) + "-D");
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  return py::reinterpret_borrow<py::array_t<T>>(arr);
}

// A per-row (or per-column) parameter: length 1 (stride 0) or `n` (stride 1).
template <typename T>
std::pair<const T*, int64_t> per_index(const py::handle& obj, const char* name, int64_t n) {
  auto a = checked<T>(obj, name, 1);
  if (a.shape(0) == 1) return {a.data(), 0};
  if (a.shape(0) == n) return {a.data(), 1};
  throw py::value_error(std::string(name) + " must have length 1 or " + std::to_string(n) +
                        ", got " + std::to_string(a.shape(0)));
}

// A one-element parameter array (the modules' input_scale / input_zero_point buffers, read
// at each call so that in-place updates show).
template <typename T>
T single(const py::handle& obj, const char* name) {
  auto a = checked<T>(obj, name, 1);
  if (a.shape(0) != 1) throw py::value_error(std::string(name) + " must have length 1");
  return a.data()[0];
}

}  // namespace int8kit::bind
