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
// Weight formats (rows = output features, K = input features, K % 32 == 0 for q8/q4):
//   f32  : float  [N, K]
//   bf16 : bf16   [N, K]            (converted to float in registers)
//   q8   : GGML Q8_0 blocks (fp16 d, 32 int8 q: w = d * q) regrouped in tiles of 4 rows (see below)
//   q4   : GGML Q4_1 blocks (fp16 d and m, 32 4-bit q: w = d * q + m) regrouped likewise
// Activations are float32 [M, K]; for q8/q4 weights each row is quantised to int8 blocks of 32
// (as llama.cpp's Q8 activations), per row, so that too is row-invariant.
//
// Built at first use by torch.utils.cpp_extension with -march=native (see __init__.py); the AVX2
// paths are used where the compiler targets AVX2, a scalar path elsewhere (same results per row
// within one build, which is all row invariance needs).
//
// Files: common.h (vector helpers, the thread pool), linear.cpp (the matrix products and their
// weight tiles), layer_ops.cpp (norms, SiLU, rotary embedding + KV store), attention.cpp,
// module.cpp (the Python bindings).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>  // not torch/extension.h: this builds in a third of the time

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PARADEC_AVX2 1
#else
#define PARADEC_AVX2 0
#endif

namespace py = pybind11;

namespace paradec {

constexpr int QK = 32;  // quantisation block

// ---------------------------------------------------------------------------------------------
// small vector helpers
// ---------------------------------------------------------------------------------------------
#if PARADEC_AVX2
inline float hsum(__m256 v) {
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

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// One exp used everywhere a softmax or SiLU needs it, so scalar tails match vector lanes.
inline void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if PARADEC_AVX2
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

// ---------------------------------------------------------------------------------------------
// dot products: one (weight row, activation row) pair; the only arithmetic a linear layer does
// ---------------------------------------------------------------------------------------------
inline float dot_f32(const float* w, const float* x, int64_t K) {
  int64_t k = 0;
  float tail = 0.f;
#if PARADEC_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  for (; k < K; ++k) tail += w[k] * x[k];
  return hsum(_mm256_add_ps(a0, a1)) + tail;
#else
  for (; k < K; ++k) tail += w[k] * x[k];
  return tail;
#endif
}

inline float dot_bf16(const uint16_t* w, const float* x, int64_t K) {
  int64_t k = 0;
  float tail = 0.f;
#if PARADEC_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    a0 = _mm256_fmadd_ps(load_bf16(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(load_bf16(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  for (; k < K; ++k) tail += bf16_to_float(w[k]) * x[k];
  return hsum(_mm256_add_ps(a0, a1)) + tail;
#else
  for (; k < K; ++k) tail += bf16_to_float(w[k]) * x[k];
  return tail;
#endif
}

inline int64_t grain_for(int64_t work_per_item) {
  // chunks of ~32k multiply-adds: small enough to balance, large enough that claiming one is noise
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

// A thread pool whose jobs never wait for a thread that is not running. OpenMP (at::parallel_for)
// splits a job into one part per thread and ends it at a barrier, so a thread the OS has switched
// out stalls every job until it runs again: on a machine with other work, one forward (~150 jobs)
// took 1.2 s instead of 10 ms. Here the caller and the workers claim chunks from a shared counter;
// the caller waits only for chunks already claimed, and a worker that wakes late finds none left.
class Pool {
 public:
  template <class F>
  void run(int64_t n, int64_t grain, const F& fn) {
    const int threads = std::max(1, at::get_num_threads());
    std::unique_lock<std::mutex> busy(run_, std::try_to_lock);  // another thread's job runs: do this one alone
    if (threads == 1 || n <= grain || !busy.owns_lock()) {
      fn(0, n);
      return;
    }
    ensure(threads - 1);
    std::function<void(int64_t, int64_t)> body(fn);
    job_ = &body;
    total_ = n;
    grain_ = grain;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
    next_.store(gen << 40, std::memory_order_relaxed);  // the generation rides in the counter's high bits
    generation_.store(gen, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(m_);
    }
    cv_.notify_all();
    work(gen);
    while (done_.load(std::memory_order_acquire) < n) _mm_pause_or_yield();
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  static inline void _mm_pause_or_yield() {
#if PARADEC_AVX2
    _mm_pause();
#else
    std::this_thread::yield();
#endif
  }

  void work(uint64_t gen) {
    for (;;) {
      uint64_t cur = next_.load(std::memory_order_acquire);
      int64_t start;
      do {
        if ((cur >> 40) != gen) return;  // a later job: not ours to touch
        start = int64_t(cur & ((uint64_t(1) << 40) - 1));
        if (start >= total_) return;
      } while (!next_.compare_exchange_weak(cur, cur + uint64_t(grain_), std::memory_order_acq_rel));
      const int64_t end = std::min(total_, start + grain_);
      (*job_)(start, end);
      done_.fetch_add(end - start, std::memory_order_release);
    }
  }

  void ensure(int workers) {
    if (pid_ != getpid()) {  // a forked child has none of the parent's threads: forget them, never join
      (void)new std::vector<std::thread>(std::move(workers_));
      workers_.clear();
      pid_ = getpid();
    }
    if (int(workers_.size()) == workers) return;
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      uint64_t gen = seen;
      for (int spin = 0; spin < 20000 && (gen = generation_.load(std::memory_order_acquire)) == seen; ++spin)
        _mm_pause_or_yield();  // a forward's jobs come microseconds apart: spin a little before sleeping
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

  std::vector<std::thread> workers_;
  pid_t pid_ = getpid();
  std::mutex run_, m_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<uint64_t> generation_{0}, next_{0};
  std::atomic<int64_t> done_{0};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t total_ = 0, grain_ = 1;
};

Pool& pool();  // the one pool of the process (module.cpp)

template <class F>
inline void parallel(int64_t n, int64_t grain, const F& fn) {
  pool().run(n, grain, fn);
}

}  // namespace paradec
