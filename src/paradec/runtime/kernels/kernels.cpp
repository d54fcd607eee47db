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

namespace {

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

Pool& pool() {
  static Pool p;
  return p;
}

template <class F>
inline void parallel(int64_t n, int64_t grain, const F& fn) {
  pool().run(n, grain, fn);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// linear: y[M, N] = x[M, K] @ W^T (+ bias)
// ---------------------------------------------------------------------------------------------
// Float weights (f32, bf16) are turned into float32 in registers, 32 at a time, and multiplied
// with float32 activations. Each (output n, row r) pair owns one 8-lane accumulator that gets, per
// 32-weight chunk, the same four FMAs in the same order, then one horizontal sum: the same
// arithmetic whatever M is and however the rows are tiled.

namespace {

struct F32W {
  const float* w;
  int64_t K;
#if PARADEC_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const float* p = w + n * K + c * QK;
    for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return w[n * K + k]; }
};

struct BF16W {
  const uint16_t* w;
  int64_t K;
#if PARADEC_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const uint16_t* p = w + n * K + c * QK;
    for (int j = 0; j < 4; ++j) v[j] = load_bf16(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return bf16_to_float(w[n * K + k]); }
};

// Outputs n0 .. n0+NT-1 for rows r0 .. r0+RT-1.
template <int NT, int RT, class W>
inline void tile(const W& wt, int64_t n0, int64_t r0, const float* x, int64_t K, int64_t N, const float* bias, float* y) {
  const int64_t chunks = K / QK;
#if PARADEC_AVX2
  __m256 acc[NT][RT];
  for (int i = 0; i < NT; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_ps();
  __m256 v[4];
  for (int64_t c = 0; c < chunks; ++c)
    for (int i = 0; i < NT; ++i) {
      wt.load(n0 + i, c, v);
      for (int r = 0; r < RT; ++r) {
        const float* xr = x + (r0 + r) * K + c * QK;
        for (int j = 0; j < 4; ++j) acc[i][r] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xr + 8 * j), acc[i][r]);
      }
    }
#endif
  for (int i = 0; i < NT; ++i)
    for (int r = 0; r < RT; ++r) {
#if PARADEC_AVX2
      float s = hsum(acc[i][r]);
      const int64_t from = chunks * QK;
#else
      float s = 0.f;
      const int64_t from = 0;
#endif
      for (int64_t k = from; k < K; ++k) s += wt.at(n0 + i, k) * x[(r0 + r) * K + k];
      y[(r0 + r) * N + n0 + i] = bias ? s + bias[n0 + i] : s;
    }
}

// Outputs [n0, n1) in tiles of NT, rows [r0, r1) in tiles of RT (smaller tiles at the edges).
template <int NT, int RT, class W>
void block(const W& wt, int64_t n0, int64_t n1, int64_t r0, int64_t r1, const float* x, int64_t K, int64_t N,
           const float* bias, float* y) {
  for (int64_t n = n0; n < n1; n += NT) {
    if (n + NT > n1) {
      for (int64_t i = n; i < n1; ++i) block<1, RT>(wt, i, i + 1, r0, r1, x, K, N, bias, y);
      break;
    }
    int64_t r = r0;
    for (; r + RT <= r1; r += RT) tile<NT, RT>(wt, n, r, x, K, N, bias, y);
    for (; r < r1; ++r) tile<NT, 1>(wt, n, r, x, K, N, bias, y);
  }
}

constexpr int64_t NT = 4;   // outputs per thread work item (and per tile when M <= 2)
constexpr int64_t RB = 64;  // rows per block: a block's activations stay in cache while a thread's outputs pass

template <class W>
void gemm(const W& wt, int64_t M, int64_t N, int64_t K, const float* x, const float* bias, float* y) {
  parallel((N + NT - 1) / NT, grain_for(K * std::min(M, RB) * NT), [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * NT, n1 = std::min(N, t1 * NT);
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      if (r1 - r0 == 1) block<4, 1>(wt, n0, n1, r0, r1, x, K, N, bias, y);
      else if (r1 - r0 == 2) block<4, 2>(wt, n0, n1, r0, r1, x, K, N, bias, y);
      else block<2, 4>(wt, n0, n1, r0, r1, x, K, N, bias, y);
    }
  });
}

// Quantised weights (q8, q4) are multiplied with int8 activations, as llama.cpp does: each row
// of x is quantised per 32-block (d = max|x| / 127, q = round(x / d)), the block dot products are
// exact integer sums, and each (output, row) accumulator gets per block one FMA with the scale
// d_w * d_x, in block order. On AVX2 this costs ~2.5x fewer instructions per weight than
// converting the weights to float, which matters most for one-row steps.
struct QAct {
  std::vector<int8_t> q;    // [M, K]
  std::vector<float> d, s;  // [M, NBP]: scale, scale * sum(q) (the q4 minimum's partner); zero-padded
  int64_t K, nb, nbp;       // chunks, chunks rounded up to whole groups of 8

  QAct(const float* x, int64_t M, int64_t K_)
      : q(M * K_), K(K_), nb(K_ / QK), nbp((K_ / QK + 7) / 8 * 8) {
    d.assign(M * nbp, 0.f);
    s.assign(M * nbp, 0.f);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + r * K + b * QK;
        float amax = 0.f;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        int32_t sum = 0;
        for (int j = 0; j < QK; ++j) {
          const int v = std::min(127, std::max(-127, static_cast<int>(std::nearbyint(xb[j] * inv))));
          q[r * K + b * QK + j] = static_cast<int8_t>(v);
          sum += v;
        }
        d[r * nbp + b] = scale;
        s[r * nbp + b] = scale * float(sum);
      }
  }
};

// Quantised weights come in tiles of 4 output rows (see weights.py, which packs them): per group
// of 8 chunks of 32 weights,
//   q4: [d: 4 x 8 f16][m: 4 x 8 f16][q: chunk-major, 4 rows x 16 bytes each]   w = d * q + m
//   q8: [d: 4 x 8 f16][q: chunk-major, 4 rows x 32 bytes each]                 w = d * q
// (the last group may hold fewer than 8 chunks; its d/m slots are zero-padded). A tile is one
// contiguous stream, and a group's scales load as vectors: 8 chunks at once.
inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

struct Q8T {
  static constexpr int64_t QB = QK, HDR = 64;
  static constexpr bool has_min = false;
#if PARADEC_AVX2
  // (|w|, w) for the sign trick: maddubs multiplies unsigned by signed bytes
  static inline void load(const uint8_t* q, __m256i& a, __m256i& sgn) {
    sgn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    a = _mm256_sign_epi8(sgn, sgn);
  }
  static inline __m256i signed_x(__m256i x, __m256i sgn) { return _mm256_sign_epi8(x, sgn); }
#endif
  static inline int32_t idot(const uint8_t* q, const int8_t* x) {
    int32_t acc = 0;
    for (int j = 0; j < QK; ++j) acc += int32_t(static_cast<int8_t>(q[j])) * int32_t(x[j]);
    return acc;
  }
};

struct Q4T {
  static constexpr int64_t QB = QK / 2, HDR = 128;
  static constexpr bool has_min = true;
#if PARADEC_AVX2
  static inline void load(const uint8_t* q, __m256i& a, __m256i&) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    a = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
  }
  static inline __m256i signed_x(__m256i x, __m256i) { return x; }
#endif
  static inline int32_t idot(const uint8_t* q, const int8_t* x) {
    int32_t acc = 0;
    for (int j = 0; j < QK / 2; ++j) acc += int32_t(q[j] & 0x0F) * int32_t(x[j]) + int32_t(q[j] >> 4) * int32_t(x[j + 16]);
    return acc;
  }
};

template <class W>
struct Tiles {
  const uint8_t* w;
  int64_t K, nb, ng;
  static constexpr int64_t GROUP = W::HDR + 8 * 4 * W::QB;  // bytes of a full group
  Tiles(const uint8_t* w_, int64_t K_) : w(w_), K(K_), nb(K_ / QK), ng((K_ / QK + 7) / 8) {}
  int64_t tile_bytes() const { return (nb / 8) * GROUP + (nb % 8 ? W::HDR + (nb % 8) * 4 * W::QB : 0); }
};

// Outputs 4t .. 4t+3 (those below N) for rows r0 .. r0+RT-1. Per (output, row) one accumulator gets,
// group by group, the minimum term (q4: 8 chunk lanes at once), then one FMA per chunk in order.
template <int RT, class W>
inline void qtile(const Tiles<W>& T, int64_t t, int64_t r0, const QAct& xa, int64_t N, const float* bias, float* y) {
  const uint8_t* tile = T.w + t * T.tile_bytes();
  const int64_t K = xa.K, nbp = xa.nbp;
#if PARADEC_AVX2
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[4][RT];
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_ps();
  alignas(32) float sc[4][RT][8];
  for (int64_t g = 0; g < T.ng; ++g) {
    const uint8_t* G = tile + g * Tiles<W>::GROUP;
    const int64_t cg = std::min<int64_t>(8, T.nb - 8 * g);
    for (int i = 0; i < 4; ++i) {
      const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(G + 16 * i)));
      for (int r = 0; r < RT; ++r) _mm256_store_ps(sc[i][r], _mm256_mul_ps(dv, _mm256_loadu_ps(xa.d.data() + (r0 + r) * nbp + 8 * g)));
      if (W::has_min) {
        const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(G + 64 + 16 * i)));
        for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xa.s.data() + (r0 + r) * nbp + 8 * g), acc[i][r]);
      }
    }
    const uint8_t* Q = G + W::HDR;
    for (int64_t c = 0; c < cg; ++c) {
      __m256i xv[RT];
      for (int r = 0; r < RT; ++r) xv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa.q.data() + (r0 + r) * K + (8 * g + c) * QK));
      for (int i = 0; i < 4; ++i) {
        __m256i a, sgn;
        W::load(Q + (c * 4 + i) * W::QB, a, sgn);
        for (int r = 0; r < RT; ++r) {
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, W::signed_x(xv[r], sgn)), ones);
          acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&sc[i][r][c]), acc[i][r]);
        }
      }
    }
  }
  for (int i = 0; i < 4 && 4 * t + i < N; ++i)
    for (int r = 0; r < RT; ++r) {
      const float v = hsum(acc[i][r]);
      y[(r0 + r) * N + 4 * t + i] = bias ? v + bias[4 * t + i] : v;
    }
#else
  for (int i = 0; i < 4 && 4 * t + i < N; ++i)
    for (int r = 0; r < RT; ++r) {
      float v = 0.f;
      for (int64_t g = 0; g < T.ng; ++g) {
        const uint8_t* G = tile + g * Tiles<W>::GROUP;
        for (int64_t c = 0; c < std::min<int64_t>(8, T.nb - 8 * g); ++c) {
          const int64_t b = 8 * g + c;
          const float scale = f16(G + 16 * i + 2 * c) * xa.d[(r0 + r) * nbp + b];
          v += scale * float(W::idot(G + W::HDR + (c * 4 + i) * W::QB, xa.q.data() + (r0 + r) * K + b * QK));
          if (W::has_min) v += f16(G + 64 + 16 * i + 2 * c) * xa.s[(r0 + r) * nbp + b];
        }
      }
      y[(r0 + r) * N + 4 * t + i] = bias ? v + bias[4 * t + i] : v;
    }
#endif
}

template <class W>
void qgemm(const Tiles<W>& T, int64_t M, int64_t N, const float* x, const float* bias, float* y) {
  const QAct xa(x, M, T.K);
  parallel((N + 3) / 4, grain_for(T.K * std::min(M, RB)), [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) qtile<2>(T, t, r, xa, N, bias, y);
        if (r < r1) qtile<1>(T, t, r, xa, N, bias, y);
      }
    }
  });
}

}  // namespace

// Rows idx of a tiled q8/q4 matrix as float32 [len(idx), K]: the embedding lookup of a quantised table.
template <class W>
static void rows_of(const Tiles<W>& T, const int64_t* idx, int64_t n, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* tile = T.w + (idx[r] / 4) * T.tile_bytes();
    const int64_t i = idx[r] % 4;
    for (int64_t b = 0; b < T.nb; ++b) {
      const uint8_t* G = tile + (b / 8) * Tiles<W>::GROUP;
      const int64_t c = b % 8;
      const float d = f16(G + 16 * i + 2 * c), m = W::has_min ? f16(G + 64 + 16 * i + 2 * c) : 0.f;
      const uint8_t* q = G + W::HDR + (c * 4 + i) * W::QB;
      float* o = out + r * T.K + b * QK;
      for (int j = 0; j < QK; ++j) {
        if (W::has_min) {
          const int v = j < 16 ? (q[j] & 0x0F) : (q[j - 16] >> 4);
          o[j] = float(v) * d + m;
        } else {
          o[j] = float(static_cast<int8_t>(q[j])) * d;
        }
      }
    }
  }
}

at::Tensor dequant_rows(at::Tensor w, const std::string& fmt, int64_t K, at::Tensor idx) {
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.is_contiguous(), "idx must be contiguous int64");
  auto out = at::empty({idx.numel(), K}, at::kFloat);
  if (fmt == "q8") rows_of(Tiles<Q8T>(w.data_ptr<uint8_t>(), K), idx.data_ptr<int64_t>(), idx.numel(), out.data_ptr<float>());
  else if (fmt == "q4") rows_of(Tiles<Q4T>(w.data_ptr<uint8_t>(), K), idx.data_ptr<int64_t>(), idx.numel(), out.data_ptr<float>());
  else TORCH_CHECK(false, "dequant_rows takes q8 or q4 tiles, got ", fmt);
  return out;
}

// n: output features (for tiled formats w has one row per 4 of them)
at::Tensor linear(at::Tensor x, const std::string& fmt, at::Tensor w, int64_t N, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(fmt == "q4" || fmt == "q8" || w.size(0) == N, "weight has ", w.size(0), " rows, expected ", N);
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous matrix");
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  if (fmt == "f32") {
    TORCH_CHECK(w.scalar_type() == at::kFloat, "f32 weight must be float32");
    const F32W wt{w.data_ptr<float>(), K};
    py::gil_scoped_release no_gil;
    gemm(wt, M, N, K, xp, bp, yp);
  } else if (fmt == "bf16") {
    TORCH_CHECK(w.scalar_type() == at::kBFloat16, "bf16 weight must be bfloat16");
    const BF16W wt{reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), K};
    py::gil_scoped_release no_gil;
    gemm(wt, M, N, K, xp, bp, yp);
  } else if (fmt == "q8") {
    const Tiles<Q8T> T(w.data_ptr<uint8_t>(), K);
    TORCH_CHECK(w.scalar_type() == at::kByte && K % QK == 0 && w.size(1) == T.tile_bytes() && 4 * w.size(0) >= N,
                "q8 needs uint8 tiles of K = ", K);
    py::gil_scoped_release no_gil;
    qgemm(T, M, N, xp, bp, yp);
  } else if (fmt == "q4") {
    const Tiles<Q4T> T(w.data_ptr<uint8_t>(), K);
    TORCH_CHECK(w.scalar_type() == at::kByte && K % QK == 0 && w.size(1) == T.tile_bytes() && 4 * w.size(0) >= N,
                "q4 needs uint8 tiles of K = ", K);
    py::gil_scoped_release no_gil;
    qgemm(T, M, N, xp, bp, yp);
  } else {
    TORCH_CHECK(false, "unknown weight format ", fmt);
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// norms and activations
// ---------------------------------------------------------------------------------------------
static void rmsnorm_row(const float* x, const float* w, float eps, float* y, int64_t D) {
  float ss = 0.f;
  int64_t k = 0;
#if PARADEC_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; k + 8 <= D; k += 8) {
    __m256 v = _mm256_loadu_ps(x + k);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  ss = hsum(acc);
#endif
  for (; k < D; ++k) ss += x[k] * x[k];
  const float inv = 1.f / std::sqrt(ss / float(D) + eps);
  for (int64_t i = 0; i < D; ++i) y[i] = w[i] * (x[i] * inv);
}

// y = rmsnorm(x) * w, per row
at::Tensor rmsnorm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be contiguous float");
  const int64_t D = x.size(-1), M = x.numel() / D;
  auto y = at::empty_like(x);
  for (int64_t r = 0; r < M; ++r) rmsnorm_row(x.data_ptr<float>() + r * D, w.data_ptr<float>(), float(eps), y.data_ptr<float>() + r * D, D);
  return y;
}

// h += delta (in place); returns rmsnorm(h) * w: the residual add fused with the next norm
at::Tensor add_rmsnorm(at::Tensor h, at::Tensor delta, at::Tensor w, double eps) {
  TORCH_CHECK(h.is_contiguous() && delta.is_contiguous() && h.sizes() == delta.sizes(), "h and delta must match");
  const int64_t D = h.size(-1), M = h.numel() / D;
  float* hp = h.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  for (int64_t i = 0; i < M * D; ++i) hp[i] += dp[i];
  auto y = at::empty_like(h);
  for (int64_t r = 0; r < M; ++r) rmsnorm_row(hp + r * D, w.data_ptr<float>(), float(eps), y.data_ptr<float>() + r * D, D);
  return y;
}

// [M, 2I] (gate | up) -> [M, I]: silu(gate) * up
at::Tensor silu_mul(at::Tensor gu) {
  TORCH_CHECK(gu.is_contiguous() && gu.dim() == 2, "gate_up must be contiguous [M, 2I]");
  const int64_t M = gu.size(0), I = gu.size(1) / 2;
  auto y = at::empty({M, I}, gu.options());
  std::vector<float> e(I);
  for (int64_t r = 0; r < M; ++r) {
    const float* g = gu.data_ptr<float>() + r * 2 * I;
    const float* u = g + I;
    float* out = y.data_ptr<float>() + r * I;
    for (int64_t i = 0; i < I; ++i) e[i] = -g[i];
    exp_inplace(e.data(), I);
    for (int64_t i = 0; i < I; ++i) out[i] = g[i] / (1.f + e[i]) * u[i];
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// rotary embedding + KV store
// ---------------------------------------------------------------------------------------------
// qkv: [M, (H + 2 Hkv) * D] (q heads, k heads, v heads); cos/sin: [P, D/2]; pos: [M] positions;
// caches[seq]: [layers, 2, Hkv, cap, D] float or bf16; rows[r] = (seq, slot): where row r's k/v go.
// Rotation as transformers' rotate_half: x1 = x[:D/2], x2 = x[D/2:] -> (x1 c - x2 s, x2 c + x1 s).
// Returns q [M, H, D] rotated.
template <typename T>
static inline void store(T* dst, const float* src, int64_t D);
template <>
inline void store<float>(float* dst, const float* src, int64_t D) { std::memcpy(dst, src, D * sizeof(float)); }
template <>
inline void store<at::BFloat16>(at::BFloat16* dst, const float* src, int64_t D) {
  for (int64_t i = 0; i < D; ++i) dst[i] = at::BFloat16(src[i]);  // round to nearest even
}

static void rope_row(const float* x, const float* c, const float* s, int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    out[i] = x[i] * c[i] - x[i + h] * s[i];
    out[i + h] = x[i + h] * c[i] + x[i] * s[i];
  }
}

at::Tensor rope_store(at::Tensor qkv, int64_t H, int64_t Hkv, at::Tensor cos, at::Tensor sin,
                         at::Tensor pos, std::vector<at::Tensor> caches, at::Tensor rows, int64_t layer) {
  const int64_t M = qkv.size(0), D = cos.size(1) * 2;
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(1) == (H + 2 * Hkv) * D, "qkv has the wrong shape");
  auto q = at::empty({M, H, D}, qkv.options());
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* rp = rows.data_ptr<int64_t>();  // [M, 2]
  std::vector<float> tmp(D);
  for (int64_t r = 0; r < M; ++r) {
    const float* row = qkv.data_ptr<float>() + r * (H + 2 * Hkv) * D;
    const float* c = cos.data_ptr<float>() + pp[r] * (D / 2);
    const float* s = sin.data_ptr<float>() + pp[r] * (D / 2);
    for (int64_t h = 0; h < H; ++h) rope_row(row + h * D, c, s, D, q.data_ptr<float>() + (r * H + h) * D);
    at::Tensor& cache = caches[rp[2 * r]];
    const int64_t cap = cache.size(3), slot = rp[2 * r + 1];
    TORCH_CHECK(slot >= 0 && slot < cap, "KV slot ", slot, " outside the cache (capacity ", cap, ")");
    for (int64_t g = 0; g < Hkv; ++g) {
      rope_row(row + (H + g) * D, c, s, D, tmp.data());
      const int64_t koff = (((layer * 2 + 0) * Hkv + g) * cap + slot) * D;
      const int64_t voff = (((layer * 2 + 1) * Hkv + g) * cap + slot) * D;
      const float* v = row + (H + Hkv + g) * D;
      if (cache.scalar_type() == at::kFloat) {
        store<float>(cache.data_ptr<float>() + koff, tmp.data(), D);
        store<float>(cache.data_ptr<float>() + voff, v, D);
      } else {
        store<at::BFloat16>(cache.data_ptr<at::BFloat16>() + koff, tmp.data(), D);
        store<at::BFloat16>(cache.data_ptr<at::BFloat16>() + voff, v, D);
      }
    }
  }
  return q;
}

// ---------------------------------------------------------------------------------------------
// attention over each row's visible keys
// ---------------------------------------------------------------------------------------------
// q: [M, H, D]; caches[seq]: [layers, 2, Hkv, cap, D]; seq: [M]; start, prefix: [M] (cache slots
// start..prefix-1 visible; start > 0 only under a sliding window); extra: [M, E] more visible slots
// in ascending order, -1 = none.
// Keys are visited prefix first, then extra, whatever M is: the arithmetic for a row is that of
// plain decoding of the same token.
// One key's score: 8-lane FMAs over D in order, then a fixed reduction tree
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the tree four keys reduced together also give,
// so a key scores the same bits whether it is read alone or in a group of four.
template <typename T>
inline const float* as_float(const T* p, int64_t D, float* buf);
template <>
inline const float* as_float<float>(const float* p, int64_t, float*) { return p; }
template <>
inline const float* as_float<at::BFloat16>(const at::BFloat16* p, int64_t D, float* buf) {
  for (int64_t i = 0; i < D; ++i) buf[i] = static_cast<float>(p[i]);
  return buf;
}

#if PARADEC_AVX2
template <typename T>
inline __m256 load8(const T* p);
template <>
inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <>
inline __m256 load8<at::BFloat16>(const at::BFloat16* p) { return load_bf16(reinterpret_cast<const uint16_t*>(p)); }

inline __m256 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {  // lanes 0..3 of the result: the 4 sums
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm256_add_ps(t, _mm256_permute2f128_ps(t, t, 1));
}
#endif

template <typename T>
static void key_scores(const float* q, const T* K, const int64_t* slots, int64_t n, int64_t D, float scale, float* out) {
  int64_t j = 0;
#if PARADEC_AVX2
  if (D % 8 == 0) {
    for (; j + 4 <= n; j += 4) {
      const T* k[4] = {K + slots[j] * D, K + slots[j + 1] * D, K + slots[j + 2] * D, K + slots[j + 3] * D};
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int i = 0; i < 4; ++i) a[i] = _mm256_fmadd_ps(qv, load8<T>(k[i] + d), a[i]);
      }
      alignas(32) float sums[8];
      _mm256_store_ps(sums, reduce4(a[0], a[1], a[2], a[3]));
      for (int i = 0; i < 4; ++i) out[j + i] = sums[i] * scale;
    }
    for (; j < n; ++j) {
      const T* k = K + slots[j] * D;
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8<T>(k + d), a);
      const __m256 z = _mm256_setzero_ps();
      out[j] = _mm256_cvtss_f32(reduce4(a, z, z, z)) * scale;
    }
    return;
  }
#endif
  float buf[1024];
  for (; j < n; ++j) {
    const float* k = as_float<T>(K + slots[j] * D, std::min<int64_t>(D, 1024), buf);
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s = std::fma(q[d], k[d], s);
    out[j] = s * scale;
  }
}

// out[d] = sum_j p[j] v_j[d], keys in order, 64 dimensions at a time in registers.
template <typename T>
static void weighted_values(const float* p, const T* V, const int64_t* slots, int64_t n, int64_t D, float* out) {
  int64_t d0 = 0;
#if PARADEC_AVX2
  for (; d0 + 64 <= D; d0 += 64) {
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const T* v = V + slots[j] * D + d0;
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, load8<T>(v + 8 * i), acc[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + d0 + 8 * i, acc[i]);
  }
#endif
  for (int64_t d = d0; d < D; ++d) {
    float s = 0.f;
    for (int64_t j = 0; j < n; ++j) s = std::fma(p[j], static_cast<float>(V[slots[j] * D + d]), s);
    out[d] = s;
  }
}

template <typename T>
static void attend_one(const float* q, const T* K, const T* V, const int64_t* slots, int64_t n, int64_t D, float scale,
                       float* out, std::vector<float>& p) {
  p.resize(n);
  key_scores<T>(q, K, slots, n, D, scale, p.data());
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, p[j]);
  for (int64_t j = 0; j < n; ++j) p[j] -= mx;
  exp_inplace(p.data(), n);
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += p[j];
  weighted_values<T>(p.data(), V, slots, n, D, out);
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < D; ++i) out[i] *= inv;
}

at::Tensor attention(at::Tensor q, std::vector<at::Tensor> caches, at::Tensor seq, at::Tensor start,
                        at::Tensor prefix, at::Tensor extra, int64_t layer, double scale) {
  const int64_t M = q.size(0), H = q.size(1), D = q.size(2), E = extra.size(1);
  TORCH_CHECK(q.is_contiguous() && q.scalar_type() == at::kFloat, "q must be contiguous float [M, H, D]");
  auto out = at::empty_like(q);
  const int64_t* sp = seq.data_ptr<int64_t>();
  const int64_t* st = start.data_ptr<int64_t>();
  const int64_t* pp = prefix.data_ptr<int64_t>();
  const int64_t* ep = extra.data_ptr<int64_t>();
  py::gil_scoped_release no_gil;
  parallel(M * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> slots;
    std::vector<float> p;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / H, h = t % H;
      const at::Tensor& cache = caches[sp[r]];
      const int64_t Hkv = cache.size(2), cap = cache.size(3), g = h / (H / Hkv);
      slots.clear();
      for (int64_t j = st[r]; j < pp[r]; ++j) slots.push_back(j);
      for (int64_t e = 0; e < E && ep[r * E + e] >= 0; ++e) slots.push_back(ep[r * E + e]);
      const int64_t koff = ((layer * 2 + 0) * Hkv + g) * cap * D, voff = ((layer * 2 + 1) * Hkv + g) * cap * D;
      const float* qp = q.data_ptr<float>() + (r * H + h) * D;
      float* op = out.data_ptr<float>() + (r * H + h) * D;
      if (cache.scalar_type() == at::kFloat)
        attend_one<float>(qp, cache.data_ptr<float>() + koff, cache.data_ptr<float>() + voff, slots.data(), slots.size(), D,
                          float(scale), op, p);
      else
        attend_one<at::BFloat16>(qp, cache.data_ptr<at::BFloat16>() + koff, cache.data_ptr<at::BFloat16>() + voff,
                                 slots.data(), slots.size(), D, float(scale), op, p);
    }
  });
  return out;
}

bool has_avx2() { return PARADEC_AVX2; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("linear", &linear, "y = x @ W^T (+ bias) for f32/bf16/q8/q4 weights");
  mod.def("dequant_rows", &dequant_rows, "rows of a q8/q4 tiled matrix as float32");
  mod.def("rmsnorm", &rmsnorm);
  mod.def("add_rmsnorm", &add_rmsnorm);
  mod.def("silu_mul", &silu_mul);
  mod.def("rope_store", &rope_store);
  mod.def("attention", &attention);
  mod.def("has_avx2", &has_avx2);
}
