// Internal: where parallel work runs. If the process has torch's OpenMP runtime (libgomp)
// loaded, on its thread team, so int8kit never adds a second set of threads next to
// torch's. Otherwise on a small fork-safe pool of our own, whose workers spin for a few
// tens of microseconds after a job and then sleep, so they never hold a core for long.
#pragma once

#include <functional>

namespace int8kit::detail {

// Runs fn(tid) for tid in [0, nthreads), the caller doing tid 0, and returns when all are
// done. fn must not throw. When the pool is already busy (another thread's call, or a
// nested call) the tids run one after another on the caller's thread instead, which
// gives the same result because work is split by tid alone.
void parallel_for(int nthreads, const std::function<void(int tid)>& fn);

// "openmp (shared with torch)" or "int8kit pool", for `int8kit info`.
const char* threading_backend();

}  // namespace int8kit::detail
