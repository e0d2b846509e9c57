// Packed int8 weights: the layout every GEMM path reads.
//
// A buffer starts with a PackedHeader, then int32 column sums (one per padded column),
// then the weights. Columns are grouped in panels of kPanel (16: one zmm of int32 lanes),
// K is padded to a multiple of kKGroup (4: one vpdpbusd group). Within a panel, each K
// group is 64 contiguous bytes: column c's four bytes at [4c, 4c+4). Padding is zero, so
// padded columns and padded K contribute nothing.
#pragma once

#include <cstddef>
#include <cstdint>

namespace int8kit {

constexpr int kPanel = 16;
constexpr int kKGroup = 4;
constexpr uint32_t kPackedMagic = 0x38494B50;  // "PKI8"
constexpr uint32_t kPackedVersion = 1;
// Largest K for which sum_k (a - za) * w cannot overflow int32: 255 * 128 * K < 2^31.
constexpr int64_t kMaxK = 65793;

struct PackedHeader {
  uint32_t magic;
  uint32_t version;
  int64_t n;         // output channels (rows of the [N, K] weight)
  int64_t k;         // reduction length
  int64_t k_groups;  // ceil(k / 4)
  int64_t n_panels;  // ceil(n / 16)
  uint64_t nbytes;   // total buffer size, header included
  uint8_t reserved[16];
};
static_assert(sizeof(PackedHeader) == 64, "header is one cache line");

// A validated, read-only view of a packed buffer.
struct PackedView {
  int64_t n = 0, k = 0, k_groups = 0, n_panels = 0;
  const int32_t* colsum = nullptr;  // length n_panels * 16
  const int8_t* weights = nullptr;  // n_panels panels of k_groups * 64 bytes
  int64_t panel_bytes() const { return k_groups * 64; }
  const int8_t* panel(int64_t p) const { return weights + p * panel_bytes(); }
};

size_t packed_size_bytes(int64_t n, int64_t k);
// Packs w[N, K] (row stride ldw) into out (packed_size_bytes(n, k) bytes, 64-byte aligned
// preferred). Throws std::invalid_argument for n < 1, k < 1 or k > kMaxK.
void pack_weight(const int8_t* w, int64_t n, int64_t k, int64_t ldw, uint8_t* out);
// Checks magic, version, sizes and nbytes; throws std::invalid_argument if anything is off.
PackedView view_packed(const uint8_t* buf, size_t nbytes);
// Unpacks back to int8 [N, K] (for inspection and tests).
void unpack_weight(const PackedView& b, int8_t* w_out);

}  // namespace int8kit
