// Internal: an activation row's k-group as AVX-512 VNNI takes it (include it only from
// *_avx512*.cpp and *_amx.cpp files).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "int8kit/pack.h"

namespace int8kit::detail {

// The 4 activation bytes of k-group `grp` of a row, broadcast to 16 lanes, reading no byte
// past K (the last group of a K that 4 does not divide is zero-filled).
inline __m512i broadcast_group(const uint8_t* row, int64_t grp, int64_t k) {
  const int64_t k0 = grp * kKGroup;
  int32_t v = 0;
  if (k0 + kKGroup <= k) {
    std::memcpy(&v, row + k0, kKGroup);
  } else {
    std::memcpy(&v, row + k0, static_cast<size_t>(k - k0));
  }
  return _mm512_set1_epi32(v);
}

}  // namespace int8kit::detail
