// Internal: a small fork-safe thread pool. Workers spin for a few tens of microseconds
// after a job (cheap back-to-back calls) and then sleep, so they never steal a core for
// long from whatever runs next.
#pragma once

#include <functional>

namespace int8kit::detail {

// Runs fn(tid) for tid in [0, nthreads), the caller doing tid 0, and returns when all are
// done. fn must not throw. When the pool is already busy (another thread's call, or a
// nested call) the tids run one after another on the caller's thread instead, which
// gives the same result because work is split by tid alone.
void parallel_for(int nthreads, const std::function<void(int tid)>& fn);

}  // namespace int8kit::detail
