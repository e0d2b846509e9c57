// Internal: where parallel work runs. If the process has torch's OpenMP runtime (libgomp)
// loaded, on its thread team, so int8kit never adds a second set of threads next to
// torch's. Otherwise on a small fork-safe pool of our own, whose workers spin for a few
// tens of microseconds after a job and then sleep, so they never hold a core for long.
#pragma once

#include <cstdint>
#include <functional>

namespace int8kit::detail {

// Runs fn(tid) for tid in [0, nthreads), the caller doing tid 0, and returns when all are
// done. If fn throws (std::bad_alloc), the other tids still run to their end and the first
// exception is rethrown here, on the caller's thread. When the pool is already busy
// (another thread's call, or a nested call) the tids run one after another on the
// caller's thread instead, which gives the same result because work is split by tid alone.
void parallel_for(int nthreads, const std::function<void(int tid)>& fn);

// Runs fn(tid, tile) for every tile in [0, count) on up to nthreads threads. Thread tid
// first takes, in order, the tiles of its own contiguous share (neighbouring tiles share
// activation rows or weight columns, which then stay in one core's cache), then helps the
// others through what is left of theirs, so a thread that starts late costs little. Which
// thread runs a tile varies; fn must give the same result either way.
void parallel_tiles(int nthreads, int64_t count,
                    const std::function<void(int tid, int64_t tile)>& fn);

// "openmp (shared with torch)" or "int8kit pool", for `int8kit info`.
const char* threading_backend();

}  // namespace int8kit::detail
