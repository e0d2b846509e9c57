// Internal: scratch buffers reused across calls. AlignedScratch: grow-only, its start
// 64-byte aligned (one cache line, and aligned for every vector load); contents are not
// kept when it grows, nor zeroed. fit_scratch: sizes a reused std::vector.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace int8kit::detail {

// At least n elements in v (a buffer reused across calls, often thread_local), kept while
// it grows. One far larger than n (over 4x and 16 MB) is freed first, contents lost: else
// one huge call would pin its memory to the thread for good.
template <typename T>
T* fit_scratch(std::vector<T>& v, size_t n) {
  if (v.capacity() / 4 > n && v.capacity() * sizeof(T) > (size_t(16) << 20))
    std::vector<T>().swap(v);
  if (v.size() < n) v.resize(n);
  return v.data();
}

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
