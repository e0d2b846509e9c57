#include "thread_pool.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace int8kit::detail {
namespace {

constexpr int kMaxThreads = 256;
constexpr auto kSpinTime = std::chrono::microseconds(30);

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Spins up to kSpinTime until pred() holds; returns whether it did.
template <typename Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return pred();
  }
}

class Pool {
 public:
  void run(int nthreads, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> caller(run_mutex_, std::try_to_lock);
    if (!caller.owns_lock() || nthreads <= 1) {
      for (int t = 0; t < nthreads; ++t) fn(t);
      return;
    }
    grow(nthreads - 1);
    const int nworkers = static_cast<int>(workers_.size());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_threads_ = nthreads;
      remaining_.store(nworkers, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load() > 0) work_cv_.notify_all();
    fn(0);
    if (!spin_until([&] { return remaining_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
    }
  }

 private:
  void grow(int nworkers) {
    while (static_cast<int>(workers_.size()) < nworkers && workers_.size() < kMaxThreads) {
      const int tid = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, tid, seen = generation_.load()] { loop(tid, seen); });
    }
  }

  void loop(int tid, uint64_t seen) {
    for (;;) {
      auto fresh = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1);
        work_cv_.wait(lock, fresh);
        sleepers_.fetch_sub(1);
      }
      seen = generation_.load(std::memory_order_acquire);
      if (tid < job_threads_) (*job_)(tid);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<int> sleepers_{0};
  const std::function<void(int)>* job_ = nullptr;
  int job_threads_ = 0;
  std::vector<std::thread> workers_;
};

// Leaked on purpose: workers stay parked until the process exits, and a forked child
// (whose copy has no live workers) gets a fresh pool.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (!p) {
    static std::mutex create_mutex;
    std::lock_guard<std::mutex> lock(create_mutex);
    p = g_pool.load();
    if (!p) {
      p = new Pool();
      g_pool.store(p, std::memory_order_release);
    }
  }
  return *p;
}

// torch's OpenMP runtime, when the process has one loaded. Running our parallel regions on
// its thread team means no second set of threads competing for the same cores, and threads
// that torch's last op left spinning start at once (a sleeping thread can take
// milliseconds to wake on a virtual machine).
struct Gomp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;
  int (*max_threads)() = nullptr;  // omp_get_max_threads: torch.set_num_threads sets it
};

int find_libgomp(dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name == nullptr || std::strstr(name, "libgomp") == nullptr) return 0;
  void* lib = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return 0;
  auto* gomp = static_cast<Gomp*>(out);
  gomp->parallel = reinterpret_cast<decltype(Gomp::parallel)>(dlsym(lib, "GOMP_parallel"));
  gomp->max_threads =
      reinterpret_cast<decltype(Gomp::max_threads)>(dlsym(lib, "omp_get_max_threads"));
  return gomp->parallel != nullptr;  // stop at the first usable one
}

// Looked up on each call until found (torch may be imported after our first call), then
// kept. INT8KIT_THREADS=own always uses our pool.
const Gomp* loaded_gomp() {
  static std::atomic<bool> found{false};
  static Gomp gomp;
  static const bool own = [] {
    const char* env = std::getenv("INT8KIT_THREADS");
    return env != nullptr && std::string(env) == "own";
  }();
  if (own) return nullptr;
  if (found.load(std::memory_order_acquire)) return &gomp;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!found.load() && dl_iterate_phdr(find_libgomp, &gomp) != 0) found.store(true);
  return found.load() ? &gomp : nullptr;
}

struct GompJob {
  const std::function<void(int)>* fn;
  int nthreads;
  std::atomic<int> next{0};
};

// Each team member claims tids until none are left, so a team smaller than asked for (a
// nested region, OMP limits) still runs every tid.
void gomp_trampoline(void* data) {
  auto* job = static_cast<GompJob*>(data);
  for (int t = job->next.fetch_add(1); t < job->nthreads; t = job->next.fetch_add(1))
    (*job->fn)(t);
}

// The first exception any tid throws, kept to rethrow on the caller's thread once every
// tid is done: one escaping a worker would end the process (std::terminate), and one
// unwinding the caller's frame while workers still use it would corrupt memory.
class FirstError {
 public:
  void keep(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!first_) first_ = std::move(e);
  }
  void rethrow() {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
};

void run_team(int nthreads, const std::function<void(int)>& fn) {
  if (const Gomp* gomp = loaded_gomp()) {
    // libgomp ends the threads that a smaller team leaves out and creates them again for
    // a bigger one. Regions of different sizes back to back (quantize on 6 threads, then
    // the GEMM on 16) paid that every call: QuantLinear 128x3072x768 took 536 us on 16
    // cores against 160 for its two parts. So a region asks for at least torch's thread
    // count, the team torch's own ops use, and the members past nthreads find no tid.
    const int team = gomp->max_threads ? std::max(nthreads, gomp->max_threads()) : nthreads;
    GompJob job{&fn, nthreads};
    gomp->parallel(gomp_trampoline, &job, static_cast<unsigned>(team), 0);
    return;
  }
  pool().run(nthreads, fn);
}

}  // namespace

void parallel_for(int nthreads, const std::function<void(int)>& fn) {
  if (nthreads > kMaxThreads) nthreads = kMaxThreads;
  if (nthreads <= 1) {
    fn(0);
    return;
  }
  FirstError error;
  run_team(nthreads, [&](int tid) {
    try {
      fn(tid);
    } catch (...) {
      error.keep(std::current_exception());
    }
  });
  error.rethrow();
}

void parallel_tiles(int nthreads, int64_t count,
                    const std::function<void(int, int64_t)>& fn) {
  const int nt = static_cast<int>(std::clamp<int64_t>(std::min(nthreads, kMaxThreads), 1,
                                                      std::max<int64_t>(count, 1)));
  if (nt == 1) {
    for (int64_t t = 0; t < count; ++t) fn(0, t);
    return;
  }
  struct alignas(64) Share {  // a cache line each: claims on one never slow another
    std::atomic<int64_t> next;
    int64_t end;
  };
  Share local[8];  // on the stack for the usual few threads: small GEMMs feel a malloc
  std::unique_ptr<Share[]> heap(nt > 8 ? new Share[nt] : nullptr);
  Share* share = nt > 8 ? heap.get() : local;
  for (int i = 0; i < nt; ++i) {
    share[i].next.store(count * i / nt, std::memory_order_relaxed);
    share[i].end = count * (i + 1) / nt;
  }
  parallel_for(nt, [&](int tid) {
    for (int k = 0; k < nt; ++k) {
      Share& s = share[(tid + k) % nt];
      for (int64_t t = s.next.fetch_add(1, std::memory_order_relaxed); t < s.end;
           t = s.next.fetch_add(1, std::memory_order_relaxed))
        fn(tid, t);
    }
  });
}

const char* threading_backend() { return loaded_gomp() ? "openmp (shared with torch)" : "int8kit pool"; }

}  // namespace int8kit::detail
