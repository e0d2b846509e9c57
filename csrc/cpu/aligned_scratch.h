// Internal: a grow-only scratch buffer whose start is 64-byte aligned (one cache line, and
// aligned for every vector load). Contents are not kept when it grows, nor zeroed.
#pragma once

#include <cstdint>
#include <memory>

namespace int8kit::detail {

template <typename T>
class AlignedScratch {
 public:
  // At least n elements, starting on a 64-byte boundary.
  T* get(int64_t n) {
    if (n > capacity_) {
      buf_.reset(new T[static_cast<size_t>(n) + 64 / sizeof(T)]);
      capacity_ = n;
    }
    const auto addr = reinterpret_cast<uintptr_t>(buf_.get());
    return buf_.get() + (64 - addr % 64) % 64 / sizeof(T);
  }

 private:
  std::unique_ptr<T[]> buf_;
  int64_t capacity_ = 0;
};

}  // namespace int8kit::detail
