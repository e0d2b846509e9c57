// Weight packing into panels of 16 columns x K groups of 4, with column sums.
#include "int8kit/pack.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace int8kit {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_dims(int64_t n, int64_t k) {
  if (n < 1) throw std::invalid_argument("weight must have at least one row (N >= 1), got N=" +
                                         std::to_string(n));
  if (k < 1) throw std::invalid_argument("weight must have at least one column (K >= 1), got K=" +
                                         std::to_string(k));
  if (k > kMaxK)
    throw std::invalid_argument("K=" + std::to_string(k) + " exceeds the largest K (" +
                                std::to_string(kMaxK) +
                                ") for which the int32 accumulator cannot overflow");
}

}  // namespace

size_t packed_size_bytes(int64_t n, int64_t k) {
  check_dims(n, k);
  const int64_t panels = ceil_div(n, kPanel), groups = ceil_div(k, kKGroup);
  return sizeof(PackedHeader) + panels * kPanel * sizeof(int32_t) + panels * groups * 64;
}

void pack_weight(const int8_t* w, int64_t n, int64_t k, int64_t ldw, uint8_t* out) {
  const size_t nbytes = packed_size_bytes(n, k);
  if (ldw < k) throw std::invalid_argument("weight row stride must be >= K");
  std::memset(out, 0, nbytes);
  PackedHeader h{};
  h.magic = kPackedMagic;
  h.version = kPackedVersion;
  h.n = n;
  h.k = k;
  h.k_groups = ceil_div(k, kKGroup);
  h.n_panels = ceil_div(n, kPanel);
  h.nbytes = nbytes;
  std::memcpy(out, &h, sizeof(h));
  int32_t* colsum = reinterpret_cast<int32_t*>(out + sizeof(PackedHeader));
  int8_t* packed = reinterpret_cast<int8_t*>(colsum + h.n_panels * kPanel);
  for (int64_t col = 0; col < n; ++col) {
    const int64_t p = col / kPanel, c = col % kPanel;
    int8_t* panel = packed + p * h.k_groups * 64;
    int32_t sum = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      const int8_t v = w[col * ldw + kk];
      panel[(kk / kKGroup) * 64 + c * kKGroup + kk % kKGroup] = v;
      sum += v;
    }
    colsum[col] = sum;
  }
}

PackedView view_packed(const uint8_t* buf, size_t nbytes) {
  if (buf == nullptr || nbytes < sizeof(PackedHeader))
    throw std::invalid_argument("packed weight buffer is too small to hold a header");
  PackedHeader h;
  std::memcpy(&h, buf, sizeof(h));
  if (h.magic != kPackedMagic)
    throw std::invalid_argument("buffer is not an int8kit packed weight (bad magic)");
  if (h.version != kPackedVersion)
    throw std::invalid_argument("packed weight has layout version " + std::to_string(h.version) +
                                ", this build reads version " + std::to_string(kPackedVersion));
  if (h.n < 1 || h.k < 1 || h.k > kMaxK || h.k_groups != ceil_div(h.k, kKGroup) ||
      h.n_panels != ceil_div(h.n, kPanel) || h.nbytes != packed_size_bytes(h.n, h.k) ||
      h.nbytes != nbytes)
    throw std::invalid_argument("packed weight header is inconsistent with its size");
  PackedView v;
  v.n = h.n;
  v.k = h.k;
  v.k_groups = h.k_groups;
  v.n_panels = h.n_panels;
  v.colsum = reinterpret_cast<const int32_t*>(buf + sizeof(PackedHeader));
  v.weights = reinterpret_cast<const int8_t*>(v.colsum + v.n_panels * kPanel);
  return v;
}

void unpack_weight(const PackedView& b, int8_t* w_out) {
  for (int64_t col = 0; col < b.n; ++col) {
    const int8_t* panel = b.panel(col / kPanel);
    const int64_t c = col % kPanel;
    for (int64_t kk = 0; kk < b.k; ++kk)
      w_out[col * b.k + kk] = panel[(kk / kKGroup) * 64 + c * kKGroup + kk % kKGroup];
  }
}

}  // namespace int8kit
