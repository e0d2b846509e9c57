#include "thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
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

}  // namespace

void parallel_for(int nthreads, const std::function<void(int)>& fn) {
  if (nthreads > kMaxThreads) nthreads = kMaxThreads;
  if (nthreads <= 1) {
    fn(0);
    return;
  }
  pool().run(nthreads, fn);
}

}  // namespace int8kit::detail
