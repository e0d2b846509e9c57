// Internal to the bindings: torch tensors in and out through DLPack capsules, without numpy.
//
// Why: between a model's layers, with torch's numpy bridge out of cache, `x.numpy()` and
// `torch.from_numpy(y)` cost ~5 us and ~2.5 us per call, as much as an M = 1 GEMM;
// `torch._C._to_dlpack(x)` and `torch._C._from_dlpack(capsule)` cost ~1 us each (measured
// in the Linear benchmark's rotation). The extension does not build against torch, so it
// reads the capsule through the DLPack ABI, declared here from the DLPack specification
// (the unversioned `DLManagedTensor` in a capsule named "dltensor").
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

namespace int8kit::bind {

namespace py = pybind11;

struct DLDevice {
  int32_t device_type;  // 1: CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

constexpr const char* kDLCapsuleName = "dltensor";

// DLPack's code and bits for the element types the bindings exchange.
template <typename T>
constexpr DLDataType dl_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, uint8_t> ||
                std::is_same_v<T, int32_t>);
  if constexpr (std::is_same_v<T, float>) return {2, 32, 1};
  if constexpr (std::is_same_v<T, uint8_t>) return {1, 8, 1};
  return {0, 32, 1};
}

// A CPU tensor of T [..., cols] in compact row-major order, seen as rows x cols.
template <typename T>
struct Rows {
  const T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<int64_t> lead;  // the leading dimensions (shape without its last)
};

// The capsule's tensor as Rows<T>, or false when it is something else (another device,
// dtype, a non-compact layout, a 0-d tensor): the caller then takes its checked path,
// which names what is wrong. The capsule is only borrowed: the caller keeps it alive, and
// its destructor (torch's) releases the tensor.
template <typename T>
bool dl_rows(const py::handle& capsule, Rows<T>& out) {
  if (!PyCapsule_IsValid(capsule.ptr(), kDLCapsuleName)) return false;
  const auto* mt =
      static_cast<const DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), kDLCapsuleName));
  const DLTensor& t = mt->dl_tensor;
  constexpr DLDataType want = dl_type<T>();
  if (t.device.device_type != 1 || t.dtype.code != want.code || t.dtype.bits != want.bits ||
      t.dtype.lanes != 1 || t.ndim < 1)
    return false;
  int64_t numel = 1;
  for (int32_t d = 0; d < t.ndim; ++d)
    if (t.shape[d] < 0 || __builtin_mul_overflow(numel, t.shape[d], &numel)) return false;
  // Compact row-major strides, checked from the last dimension; a dimension of size 1 is
  // never stepped, and a tensor with no elements is never read.
  int64_t expected = 1;
  for (int32_t d = t.ndim - 1; d >= 0 && numel > 0 && t.strides != nullptr; --d) {
    if (t.shape[d] != 1 && t.strides[d] != expected) return false;
    expected *= t.shape[d];  // no overflow: bounded by numel
  }
  int64_t rows = 1;  // may exceed numel when the last dimension is 0
  for (int32_t d = 0; d < t.ndim - 1; ++d)
    if (__builtin_mul_overflow(rows, t.shape[d], &rows)) return false;
  out.data = reinterpret_cast<const T*>(static_cast<const char*>(t.data) + t.byte_offset);
  out.cols = t.shape[t.ndim - 1];
  out.rows = rows;
  out.lead.assign(t.shape, t.shape + t.ndim - 1);
  return true;
}

// A new CPU tensor of T and `shape` (uninitialized, 64-byte aligned) in a "dltensor"
// capsule that torch._C._from_dlpack adopts; freed by whoever ends up owning it.
template <typename T>
class Output {
 public:
  explicit Output(std::vector<int64_t> shape) : owned_(new Owned) {
    size_t bytes = sizeof(T);
    for (int64_t d : shape)
      if (d < 0 || __builtin_mul_overflow(bytes, static_cast<size_t>(d), &bytes))
        throw std::bad_alloc();
    const size_t rounded = (bytes + kAlign) / kAlign * kAlign;  // never 0
    owned_->data = std::aligned_alloc(kAlign, rounded);
    if (owned_->data == nullptr) throw std::bad_alloc();
    owned_->shape = std::move(shape);
    DLTensor& t = owned_->managed.dl_tensor;
    t.data = owned_->data;
    t.device = {1, 0};
    t.ndim = static_cast<int32_t>(owned_->shape.size());
    t.dtype = dl_type<T>();
    t.shape = owned_->shape.data();
    t.strides = nullptr;
    t.byte_offset = 0;
    owned_->managed.manager_ctx = owned_.get();
    owned_->managed.deleter = [](DLManagedTensor* self) {
      delete static_cast<Owned*>(self->manager_ctx);
    };
  }

  T* data() const { return static_cast<T*>(owned_->data); }

  // Hands the tensor to a capsule; a capsule that nobody consumed frees it when collected.
  py::object release() {
    PyObject* cap = PyCapsule_New(&owned_->managed, kDLCapsuleName, [](PyObject* c) {
      if (PyCapsule_IsValid(c, kDLCapsuleName)) {  // still named "dltensor": not consumed
        auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, kDLCapsuleName));
        mt->deleter(mt);
      }
    });
    if (cap == nullptr) throw py::error_already_set();
    owned_.release();
    return py::reinterpret_steal<py::object>(cap);
  }

 private:
  static constexpr size_t kAlign = 64;  // as aligned_array.h's outputs
  struct Owned {
    DLManagedTensor managed{};
    std::vector<int64_t> shape;
    void* data = nullptr;
    ~Owned() { std::free(data); }
  };
  std::unique_ptr<Owned> owned_;
};

}  // namespace int8kit::bind
