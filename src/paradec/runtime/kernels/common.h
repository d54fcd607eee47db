// paradec's CPU kernels: the few operations a decoder layer needs, written so that every row's
// result depends only on that row's inputs (never on how many rows share the call).
//
// That property ("row invariance") is what makes a verification forward over k draft rows give
// bit-identical logits to k one-row steps of plain decoding, in every weight format:
//   - each output element is one dot product computed by the same code path whatever the block
//     shape (tiles only decide which dot products run next to each other, never their order);
//   - attention walks one row's visible keys in a fixed order (cached prefix, then its block rows),
//     so a draft node sees exactly the arithmetic plain decoding did for the same token.
//
// Instruction-set paths, chosen when the library is compiled (build.py compiles with -march=native;
// the tests also compile the narrower variants this machine can run and check each one):
//   PD_AVX512 (AVX-512 F/BW/VL), with PD_VNNI512 (vpdpbusd) or without it (vpmaddubsw + vpmaddwd);
//   PD_AVX2 (AVX2 + FMA + F16C); scalar C++ elsewhere.
// The integer (quantised) kernels give the same bits on every path (quant.h says how). The float
// kernels (linear.cpp: AVX2 code on AVX-512 machines too) and attention (AVX-512 scores and value
// sums) are row-invariant on each path, but two paths may round differently.
//
// The library has a plain C interface (api.cpp) called through ctypes: no torch headers, so it
// compiles in seconds with any C++17 compiler.
//
// Files: common.h (vector helpers, the thread pool), quant.h + qlinear.cpp (quantised formats and
// their matrix products), linear.cpp (float matrix products), layer_ops.cpp (norms, SiLU, rotary
// embedding + KV store), attention.cpp, forward.cpp (a whole stack of decoder layers in one call),
// api.cpp (the C interface).

#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define PD_AVX2 1
#else
#define PD_AVX2 0
#endif

#if PD_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PD_AVX512 1
#else
#define PD_AVX512 0
#endif

#if PD_AVX512 && defined(__AVX512VNNI__)
#define PD_VNNI512 1
#else
#define PD_VNNI512 0
#endif

namespace paradec {

// The path this build runs, as the tests and `paradec cost-curve` name it.
inline const char* isa_name() {
  if (PD_VNNI512) return "avx512-vnni";
  if (PD_AVX512) return "avx512bw";
  if (PD_AVX2) return "avx2";
  return "scalar";
}

// An error raised inside a kernel: the C interface turns it into a nonzero return and a message.
struct Error : std::exception {
  std::string what_;
  explicit Error(std::string w) : what_(std::move(w)) {}
  const char* what() const noexcept override { return what_.c_str(); }
};

inline void check(bool ok, const std::string& message) {
  if (!ok) throw Error(message);
}

// ---------------------------------------------------------------------------------------------
// small vector helpers
// ---------------------------------------------------------------------------------------------
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even (as torch does)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE half -> float, exact, for the scalar path (the vector paths use F16C)
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = float(man) * (1.0f / 16777216.0f);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if PD_AVX2
  return _cvtsh_ss(h);
#else
  return half_to_float(h);
#endif
}

#if PD_AVX2
inline float hsum(__m256 v) {  // ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

inline __m256 load_bf16(const uint16_t* p) {  // 8 bf16 -> 8 float
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// exp(x) for 8 lanes (Cephes-style range reduction + degree-5 polynomial), |rel err| ~ 2e-7.
inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(0x7f)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}
#endif

// One exp used everywhere a softmax or SiLU needs it, so scalar tails match vector lanes.
inline void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if PD_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    _mm256_storeu_ps(buf, exp8(_mm256_loadu_ps(buf)));
    std::memcpy(x + i, buf, (n - i) * sizeof(float));
  }
#else
  for (; i < n; ++i) x[i] = std::exp(x[i]);
#endif
}

inline int64_t grain_for(int64_t work_per_item) {
  // chunks of ~32k multiply-adds: small enough to balance, large enough that claiming one is noise
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// ---------------------------------------------------------------------------------------------
// the thread pool
// ---------------------------------------------------------------------------------------------
// A pool whose jobs never wait for a thread that is not running. OpenMP splits a job into one part
// per thread and ends it at a barrier, so a thread the OS has switched out stalls every job until
// it runs again: on a machine with other work, one forward (~150 jobs) took 1.2 s instead of 10 ms.
// Here the caller and the workers claim chunks from a shared counter; the caller waits only for
// chunks already claimed, and a worker that wakes late finds none left.
//
// The counter carries the job's generation in its high bits, and a claim is one compare-exchange on
// it, so a claim can only succeed for the job the counter currently belongs to. A new job first
// closes the counter (a new generation with no chunk left), then sets the job's fields, then opens
// it: a worker still looking at the previous job can neither claim a chunk of the new one with the
// previous job's bounds nor count one into the new job's `done`.
class Pool {
 public:
  // threads: workers + the caller; cpus: where to pin them (empty: no pinning)
  explicit Pool(int threads = 1, std::vector<int> cpus = {}) : threads_(std::max(1, threads)), cpus_(std::move(cpus)) {}

  int threads() const { return threads_; }

  // Change the number of threads (and where they run); waits for a running job to end.
  void resize(int threads, std::vector<int> cpus = {}) {
    std::lock_guard<std::mutex> busy(run_);
    if (threads == threads_ && cpus == cpus_) return;
    stop();
    threads_ = std::max(1, threads);
    cpus_ = std::move(cpus);
  }

  template <class F>
  void run(int64_t n, int64_t grain, const F& fn) {
    std::unique_lock<std::mutex> busy(run_, std::try_to_lock);  // another thread's job runs: do this one alone
    if (threads_ == 1 || n <= grain || !busy.owns_lock()) {
      fn(0, n);
      return;
    }
    ensure();
    std::function<void(int64_t, int64_t)> body(fn);
    const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
    next_.store((gen << kShift) | kClosed, std::memory_order_release);  // close: nothing to claim yet
    job_ = &body;
    total_.store(n, std::memory_order_relaxed);
    grain_.store(grain, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    next_.store(gen << kShift, std::memory_order_release);  // open: chunks from 0
    generation_.store(gen, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(m_);
    }
    cv_.notify_all();
    work(gen);
    while (done_.load(std::memory_order_acquire) < n) cpu_relax();
  }

  ~Pool() { stop(); }

 private:
  static constexpr int kShift = 40;
  static constexpr uint64_t kMask = (uint64_t(1) << kShift) - 1, kClosed = kMask;

  void work(uint64_t gen) {
    for (;;) {
      uint64_t cur = next_.load(std::memory_order_acquire);
      int64_t start, total, grain;
      do {
        if ((cur >> kShift) != gen || (cur & kMask) == kClosed) return;  // not ours, or not open yet
        start = int64_t(cur & kMask);
        total = total_.load(std::memory_order_relaxed);  // written before the counter opened
        grain = grain_.load(std::memory_order_relaxed);
        if (start >= total) return;
      } while (!next_.compare_exchange_weak(cur, cur + uint64_t(grain), std::memory_order_acq_rel));
      const int64_t end = std::min(total, start + grain);
      (*job_)(start, end);
      done_.fetch_add(end - start, std::memory_order_release);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
  }

  void ensure() {
    if (pid_ != getpid()) {  // a forked child has none of the parent's threads: forget them, never join
      (void)new std::vector<std::thread>(std::move(workers_));
      workers_.clear();
      pid_ = getpid();
    }
    if (int(workers_.size()) == threads_ - 1) return;
    stop();
    if (!cpus_.empty()) pin(cpus_[0]);  // the caller takes part: it runs on the first cpu
    for (int i = 0; i < threads_ - 1; ++i) {
      const int cpu = cpus_.empty() ? -1 : cpus_[(i + 1) % cpus_.size()];
      workers_.emplace_back([this, cpu] {
        if (cpu >= 0) pin(cpu);
        loop();
      });
    }
  }

  static void pin(int cpu) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort: a refused pin is no error
#else
    (void)cpu;
#endif
  }

  void loop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      uint64_t gen = seen;
      for (int spin = 0; spin < 20000 && (gen = generation_.load(std::memory_order_acquire)) == seen; ++spin)
        cpu_relax();  // a forward's jobs come microseconds apart: spin a little before sleeping
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
        if (stop_) return;
        gen = generation_.load(std::memory_order_acquire);
      }
      seen = gen;
      work(gen);
    }
  }

  int threads_;
  std::vector<int> cpus_;
  std::vector<std::thread> workers_;
  pid_t pid_ = getpid();
  std::mutex run_, m_;
  std::condition_variable cv_;
  bool stop_ = false;
  // the claim counter, the done counter and the job's fields each on their own cache line
  alignas(64) std::atomic<uint64_t> next_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> total_{0}, grain_{1};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
};

// The pool the calling thread's kernels use: the process's shared pool, or one this thread was
// given (a draft model and its target can each have their own cores).
Pool& pool();

template <class F>
inline void parallel(int64_t n, int64_t grain, const F& fn) {
  pool().run(n, grain, fn);
}

}  // namespace paradec
